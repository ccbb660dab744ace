//! Throttling of sign-ins (password logins, password changes and client-credential token
//! requests), per source address and per account named, on each node.
//!
//! An attempt is counted before its secret is checked, under one lock, so attempts sent
//! at once are counted at once: of 200 concurrent wrong passwords from one address, the
//! first [`FREE_FAILED_SIGN_INS`] + 1 are checked and the rest refused unchecked. Once a
//! source or an account has [`FREE_FAILED_SIGN_INS`] failures, each further attempt is
//! followed by a wait that doubles from [`SIGN_IN_BACKOFF_BASE_MS`] up to
//! [`MAX_SIGN_IN_BACKOFF_MS`]; attempts during the wait are refused with 429 and the time
//! left. A success gives back only its own attempt at its source, and clears the account
//! it signed in to (its owner proved the secret): a success on one account never clears
//! another account's failures, nor the source's. Failures are forgotten
//! [`SIGN_IN_FORGET_MS`] after the last attempt and the end of its wait.
//!
//! The per-account count lets an attacker delay the real owner's sign-ins by failing on
//! purpose (at most [`MAX_SIGN_IN_BACKOFF_MS`] at a time); that is the price of bounding
//! guesses from many addresses at one account.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use governor::clock::DefaultClock;
use governor::state::keyed::HashMapStateStore;
use governor::{Quota, RateLimiter};

/// The source a client address counts as, for every per-source limit (sign-ins here,
/// connections in `api::conn`): an IPv4 address, or an IPv6 /64 (what one host is usually
/// given); an IPv4-mapped IPv6 address is its IPv4 address.
pub fn source_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut segments = v6.segments();
                segments[4..].fill(0);
                IpAddr::from(segments)
            }
        },
    }
}

/// Failed sign-ins a source or an account may make before waits start.
pub const FREE_FAILED_SIGN_INS: u32 = 5;
/// The first wait, after the first failure past [`FREE_FAILED_SIGN_INS`]; each further one
/// doubles it.
pub const SIGN_IN_BACKOFF_BASE_MS: u64 = 1_000;
/// Longest wait.
pub const MAX_SIGN_IN_BACKOFF_MS: u64 = 15 * 60_000;
/// Failures are forgotten this long after the last attempt and the end of its wait.
pub const SIGN_IN_FORGET_MS: u64 = 15 * 60_000;
/// Most sources, and most accounts, tracked at once; past it forgotten records go first,
/// then the one with the fewest failures (of those, the oldest): an account under a long
/// guessing run is the last to be forgotten, not the first.
pub const MAX_TRACKED_SIGN_IN_KEYS: usize = 10_000;

#[derive(Clone, Copy, Debug)]
struct Record {
    /// Attempts counted as failures (including those being checked now).
    failures: u32,
    /// No attempt is checked before this.
    blocked_until: Instant,
    /// The last attempt counted.
    last_attempt: Instant,
}

impl Record {
    fn new(now: Instant) -> Self {
        Self {
            failures: 0,
            blocked_until: now,
            last_attempt: now,
        }
    }

    /// No attempt for [`SIGN_IN_FORGET_MS`] after the last one and after its wait ended (so
    /// a client that waits out the longest wait is not forgiven for it).
    fn forgotten(&self, now: Instant) -> bool {
        self.last_attempt.max(self.blocked_until) + Duration::from_millis(SIGN_IN_FORGET_MS) <= now
    }
}

/// The wait after the `n`th failure past the free ones (`n` ≥ 1).
pub fn backoff(n: u32) -> Duration {
    let doubled = SIGN_IN_BACKOFF_BASE_MS.saturating_mul(1u64 << (n - 1).min(32));
    Duration::from_millis(doubled.min(MAX_SIGN_IN_BACKOFF_MS))
}

/// Records of one kind of key, bounded.
struct Table<K>(HashMap<K, Record>);

impl<K: Hash + Eq + Clone> Table<K> {
    /// When `key` may next be checked, if not now.
    fn wait(&self, key: &K, now: Instant) -> Option<Duration> {
        self.0
            .get(key)
            .filter(|r| r.blocked_until > now)
            .map(|r| r.blocked_until - now)
    }

    fn count(&mut self, key: &K, now: Instant) {
        if !self.0.contains_key(key) && self.0.len() >= MAX_TRACKED_SIGN_IN_KEYS {
            self.0.retain(|_, r| !r.forgotten(now));
            if self.0.len() >= MAX_TRACKED_SIGN_IN_KEYS {
                let least = self
                    .0
                    .iter()
                    .min_by_key(|(_, r)| (r.failures, r.last_attempt))
                    .map(|(k, _)| k.clone());
                if let Some(k) = least {
                    self.0.remove(&k);
                }
            }
        }
        let record = self
            .0
            .entry(key.clone())
            .or_insert_with(|| Record::new(now));
        if record.forgotten(now) {
            *record = Record::new(now);
        }
        record.failures += 1;
        record.last_attempt = now;
        if record.failures > FREE_FAILED_SIGN_INS {
            record.blocked_until = now + backoff(record.failures - FREE_FAILED_SIGN_INS);
        }
    }

    /// Gives back one counted attempt of `key`; lifts the wait if no more than the free
    /// failures remain.
    fn refund(&mut self, key: &K) {
        if let Some(record) = self.0.get_mut(key) {
            record.failures = record.failures.saturating_sub(1);
            if record.failures <= FREE_FAILED_SIGN_INS {
                record.blocked_until = record.last_attempt.min(record.blocked_until);
            }
        }
    }
}

impl<K> Default for Table<K> {
    fn default() -> Self {
        Self(HashMap::new())
    }
}

#[derive(Default)]
struct Tables {
    sources: Table<IpAddr>,
    accounts: Table<String>,
}

/// An attempt counted by [`SignInThrottle::admit`]: report how it ended.
#[derive(Debug)]
#[must_use = "an admitted attempt counts as a failure unless reported as a success"]
pub struct Attempt {
    source: IpAddr,
    account: String,
}

/// Sign-in attempts per source and per account, on this node.
#[derive(Default)]
pub struct SignInThrottle {
    tables: Mutex<Tables>,
    refused: AtomicU64,
}

/// The account key of a name as given (email or client id): case does not make another
/// account.
fn account_key(account: &str) -> String {
    account.trim().to_lowercase()
}

impl SignInThrottle {
    /// Counts an attempt from `source` on `account` before it is checked, or refuses it
    /// with the time to wait when the source or the account is in a wait.
    pub fn admit(&self, source: IpAddr, account: &str, now: Instant) -> Result<Attempt, Duration> {
        let source = source_of(source);
        let account = account_key(account);
        let mut tables = self.tables.lock().unwrap_or_else(|e| e.into_inner());
        let wait = [
            tables.sources.wait(&source, now),
            tables.accounts.wait(&account, now),
        ]
        .into_iter()
        .flatten()
        .max();
        if let Some(wait) = wait {
            self.refused.fetch_add(1, Ordering::Relaxed);
            return Err(wait);
        }
        tables.sources.count(&source, now);
        tables.accounts.count(&account, now);
        Ok(Attempt { source, account })
    }

    /// The attempt's secret was right: its own count at the source is given back and the
    /// account's failures are cleared. Nothing else changes.
    pub fn succeeded(&self, attempt: Attempt) {
        let mut tables = self.tables.lock().unwrap_or_else(|e| e.into_inner());
        tables.sources.refund(&attempt.source);
        tables.accounts.0.remove(&attempt.account);
    }

    /// The attempt could not be checked (the node failed, or was saturated): it is given
    /// back at the source and the account.
    pub fn abandoned(&self, attempt: Attempt) {
        let mut tables = self.tables.lock().unwrap_or_else(|e| e.into_inner());
        tables.sources.refund(&attempt.source);
        tables.accounts.refund(&attempt.account);
    }

    /// Attempts refused unchecked since the node started.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Sources and accounts tracked now.
    pub fn tracked(&self) -> (usize, usize) {
        let tables = self.tables.lock().unwrap_or_else(|e| e.into_inner());
        (tables.sources.0.len(), tables.accounts.0.len())
    }
}

/// Catch-ups with the leader (read-index rounds) that requests with unknown credentials may
/// cause per source per second, in a burst of as many: past it, an unknown credential is
/// refused from this node's state without asking the leader (a key created through another
/// node a moment ago may then need a retry).
pub const UNKNOWN_CREDENTIAL_CATCH_UPS_PER_S: NonZeroU32 = NonZeroU32::new(5).unwrap();

/// A rate per source (GCRA, `governor`), for work one source may cause.
pub struct SourceRate {
    limiter: RateLimiter<IpAddr, HashMapStateStore<IpAddr>, DefaultClock>,
    refused: AtomicU64,
}

impl SourceRate {
    /// `per_second` per source, in bursts of as many.
    pub fn per_second(per_second: NonZeroU32) -> Self {
        Self {
            limiter: RateLimiter::hashmap(Quota::per_second(per_second)),
            refused: AtomicU64::new(0),
        }
    }

    /// Whether `ip`'s source may cause one more unit of work now (and counts it).
    pub fn allow(&self, ip: IpAddr) -> bool {
        if self.limiter.len() >= MAX_TRACKED_SIGN_IN_KEYS {
            self.limiter.retain_recent();
        }
        let allowed = self.limiter.len() < MAX_TRACKED_SIGN_IN_KEYS
            && self.limiter.check_key(&source_of(ip)).is_ok();
        if !allowed {
            self.refused.fetch_add(1, Ordering::Relaxed);
        }
        allowed
    }

    /// Units refused since the node started.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
}

/// Successful sign-ins (and password changes) one principal may make at once on a node.
/// Each is a group-0 write and an audit event of a change, kept for the whole retention
/// period, so a client signing in per call instead of reusing its token (valid
/// `--token-ttl-s`) is held to this burst and then one per
/// [`SIGN_IN_INTERVAL_PER_PRINCIPAL_MS`]: at most 60 + 8,640 such events a day per principal
/// per node.
pub const SIGN_IN_BURST_PER_PRINCIPAL: NonZeroU32 = NonZeroU32::new(60).unwrap();
/// After the burst, one more sign-in per principal per this many milliseconds.
pub const SIGN_IN_INTERVAL_PER_PRINCIPAL_MS: u64 = 10_000;

/// A rate per principal (GCRA, `governor`) for successful sign-ins.
pub struct PrincipalRate {
    limiter: RateLimiter<String, HashMapStateStore<String>, DefaultClock>,
    refused: AtomicU64,
}

impl Default for PrincipalRate {
    fn default() -> Self {
        Self::new(
            SIGN_IN_BURST_PER_PRINCIPAL,
            Duration::from_millis(SIGN_IN_INTERVAL_PER_PRINCIPAL_MS),
        )
    }
}

impl PrincipalRate {
    /// `burst` sign-ins per principal at once, then one per `interval`.
    pub fn new(burst: NonZeroU32, interval: Duration) -> Self {
        let quota = Quota::with_period(interval)
            .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
            .allow_burst(burst);
        Self {
            limiter: RateLimiter::hashmap(quota),
            refused: AtomicU64::new(0),
        }
    }

    /// Counts one sign-in of `principal_id` now, or says how long until one is allowed.
    /// While [`MAX_TRACKED_SIGN_IN_KEYS`] principals are tracked with none forgettable,
    /// every principal is refused for a second rather than let the table grow.
    pub fn allow(&self, principal_id: &str) -> Result<(), Duration> {
        if self.limiter.len() >= MAX_TRACKED_SIGN_IN_KEYS {
            self.limiter.retain_recent();
        }
        if self.limiter.len() >= MAX_TRACKED_SIGN_IN_KEYS {
            self.refused.fetch_add(1, Ordering::Relaxed);
            return Err(Duration::from_secs(1));
        }
        self.limiter
            .check_key(&principal_id.to_string())
            .map_err(|not_until| {
                self.refused.fetch_add(1, Ordering::Relaxed);
                not_until.wait_time_from(governor::clock::Clock::now(self.limiter.clock()))
            })
    }

    /// Sign-ins refused since the node started.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, last])
    }

    #[test]
    fn attempts_count_before_they_are_checked() {
        let t = SignInThrottle::default();
        let now = Instant::now();
        // 200 attempts arrive together: none has been checked when the next is admitted.
        let admitted: Vec<Attempt> = (0..200)
            .filter_map(|i| t.admit(ip(1), &format!("user{i}@x.io"), now).ok())
            .collect();
        assert_eq!(admitted.len(), FREE_FAILED_SIGN_INS as usize + 1);
        assert_eq!(t.refused(), 200 - admitted.len() as u64);
        // The wait doubles with each failure past the free ones, up to the cap.
        assert_eq!(backoff(1), Duration::from_millis(SIGN_IN_BACKOFF_BASE_MS));
        assert_eq!(
            backoff(2),
            Duration::from_millis(2 * SIGN_IN_BACKOFF_BASE_MS)
        );
        assert_eq!(backoff(40), Duration::from_millis(MAX_SIGN_IN_BACKOFF_MS));
        let wait = t.admit(ip(1), "someone@x.io", now).unwrap_err();
        assert_eq!(wait, backoff(1));
        let later = now + wait;
        assert!(t.admit(ip(1), "someone@x.io", later).is_ok());
        assert_eq!(
            t.admit(ip(1), "someone@x.io", later).unwrap_err(),
            backoff(2)
        );
    }

    #[test]
    fn a_success_on_another_account_does_not_reset_the_count() {
        let t = SignInThrottle::default();
        let mut now = Instant::now();
        let mut guesses = 0;
        // The attacker alternates a wrong guess at the victim with a good sign-in to their
        // own account, for an hour of simulated time.
        let end = now + Duration::from_secs(3_600);
        while now < end {
            if t.admit(ip(9), "victim@x.io", now).is_ok() {
                guesses += 1;
            }
            if let Ok(own) = t.admit(ip(9), "attacker@x.io", now) {
                t.succeeded(own);
            }
            now += Duration::from_millis(500);
        }
        // Five free, then waits of 1, 2, 4, … s up to 15 min: a handful in an hour, not 7,200.
        assert!(
            (FREE_FAILED_SIGN_INS as usize..=25).contains(&guesses),
            "{guesses} guesses were checked"
        );
    }

    #[test]
    fn many_sources_on_one_account_are_bounded_by_the_account() {
        let t = SignInThrottle::default();
        let now = Instant::now();
        let checked = (0..=255u8)
            .filter(|i| t.admit(ip(*i), "Victim@X.io", now).is_ok())
            .count();
        assert_eq!(checked, FREE_FAILED_SIGN_INS as usize + 1);
        // The owner, once the wait ends, signs in and clears the account; the sources keep
        // their counts.
        let later = now + backoff(1);
        let owner = t
            .admit(ip(200), "victim@x.io", later)
            .expect("after the wait");
        t.succeeded(owner);
        assert!(t.admit(ip(201), "victim@x.io", later).is_ok());
    }

    #[test]
    fn a_source_rate_holds_per_source() {
        let rate = SourceRate::per_second(NonZeroU32::new(5).unwrap());
        let allowed = (0..100).filter(|_| rate.allow(ip(1))).count();
        assert_eq!(allowed, 5);
        assert!(rate.allow(ip(2)), "another source has its own budget");
        assert_eq!(rate.refused(), 95);
    }

    #[test]
    fn a_principal_rate_holds_per_principal_with_the_wait_left() {
        let principals = PrincipalRate::new(NonZeroU32::new(3).unwrap(), Duration::from_secs(20));
        let allowed = (0..10).filter(|_| principals.allow("sa-1").is_ok()).count();
        assert_eq!(allowed, 3);
        let wait = principals.allow("sa-1").unwrap_err();
        assert!(
            wait > Duration::from_secs(10) && wait <= Duration::from_secs(20),
            "one sign-in per 20 s after the burst: wait {wait:?}"
        );
        assert!(
            principals.allow("sa-2").is_ok(),
            "another principal has its own"
        );
        assert_eq!(principals.refused(), 8);
    }

    #[test]
    fn failures_are_forgotten_and_tracking_is_bounded() {
        let t = SignInThrottle::default();
        let now = Instant::now();
        for _ in 0..FREE_FAILED_SIGN_INS {
            let _ = t.admit(ip(1), "a@x.io", now);
        }
        let later = now + Duration::from_millis(SIGN_IN_FORGET_MS);
        for _ in 0..FREE_FAILED_SIGN_INS + 1 {
            assert!(t.admit(ip(1), "a@x.io", later).is_ok());
        }
        // An account under a long guessing run...
        let guessed = (0..30u8)
            .filter(|i| t.admit(ip(100 + i), "victim@x.io", now).is_ok())
            .count();
        assert_eq!(guessed, FREE_FAILED_SIGN_INS as usize + 1);
        for i in 0..(MAX_TRACKED_SIGN_IN_KEYS as u32 + 10) {
            let _ = t.admit(IpAddr::from(i.to_be_bytes()), &format!("b{i}@x.io"), now);
        }
        assert_eq!(
            t.tracked(),
            (MAX_TRACKED_SIGN_IN_KEYS, MAX_TRACKED_SIGN_IN_KEYS)
        );
        // ...is still throttled after 10,000 other names passed through the table.
        assert!(t.admit(ip(250), "victim@x.io", now).is_err());
    }
}
