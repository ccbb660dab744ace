//! Throttling of failed sign-ins (password logins and client-credential token requests),
//! per source address: after [`MAX_FAILED_SIGN_INS`] failures within
//! [`SIGN_IN_WINDOW_MS`], further attempts from that source get 429 until the window ends,
//! without their password being checked. Other sources are not affected.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Failed sign-ins one source may make per window before it is throttled.
pub const MAX_FAILED_SIGN_INS: u32 = 5;
/// The window over which failures are counted, from the first failure.
pub const SIGN_IN_WINDOW_MS: u64 = 60_000;
/// Most sources tracked at once; past it the oldest windows are forgotten first.
pub const MAX_TRACKED_SOURCES: usize = 10_000;

struct Window {
    started: Instant,
    failures: u32,
}

/// Failed sign-ins per source address, on this node.
#[derive(Default)]
pub struct SignInThrottle {
    windows: Mutex<HashMap<IpAddr, Window>>,
}

impl SignInThrottle {
    fn window() -> Duration {
        Duration::from_millis(SIGN_IN_WINDOW_MS)
    }

    /// `Err(retry_after)` when `source` is throttled at `now`.
    pub fn check(&self, source: IpAddr, now: Instant) -> Result<(), Duration> {
        let windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        match windows.get(&source) {
            Some(w) if w.failures >= MAX_FAILED_SIGN_INS => {
                let ends = w.started + Self::window();
                if ends > now {
                    Err(ends - now)
                } else {
                    Ok(())
                }
            }
            _ => Ok(()),
        }
    }

    /// Counts a failed sign-in from `source` at `now`.
    pub fn record_failure(&self, source: IpAddr, now: Instant) {
        let mut windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        if !windows.contains_key(&source) && windows.len() >= MAX_TRACKED_SOURCES {
            windows.retain(|_, w| w.started + Self::window() > now);
            if windows.len() >= MAX_TRACKED_SOURCES {
                let oldest = windows
                    .iter()
                    .min_by_key(|(_, w)| w.started)
                    .map(|(ip, _)| *ip);
                if let Some(ip) = oldest {
                    windows.remove(&ip);
                }
            }
        }
        let w = windows.entry(source).or_insert(Window {
            started: now,
            failures: 0,
        });
        if w.started + Self::window() <= now {
            *w = Window {
                started: now,
                failures: 0,
            };
        }
        w.failures += 1;
    }

    /// Forgets `source`'s failures after a successful sign-in.
    pub fn record_success(&self, source: IpAddr) {
        let mut windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        windows.remove(&source);
    }

    /// Sources tracked now.
    pub fn tracked(&self) -> usize {
        self.windows.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, last])
    }

    #[test]
    fn a_source_is_throttled_after_the_limit_until_its_window_ends() {
        let t = SignInThrottle::default();
        let start = Instant::now();
        for _ in 0..MAX_FAILED_SIGN_INS - 1 {
            t.record_failure(ip(1), start);
        }
        assert!(t.check(ip(1), start).is_ok());
        t.record_failure(ip(1), start);
        let wait = t.check(ip(1), start).unwrap_err();
        assert_eq!(wait, Duration::from_millis(SIGN_IN_WINDOW_MS));
        // Another source is unaffected.
        assert!(t.check(ip(2), start).is_ok());
        // The window ends.
        let later = start + Duration::from_millis(SIGN_IN_WINDOW_MS);
        assert!(t.check(ip(1), later).is_ok());
        // A new failure then starts a new window rather than re-throttling at once.
        t.record_failure(ip(1), later);
        assert!(t.check(ip(1), later).is_ok());
    }

    #[test]
    fn success_clears_a_source_and_tracking_is_bounded() {
        let t = SignInThrottle::default();
        let now = Instant::now();
        t.record_failure(ip(1), now);
        t.record_success(ip(1));
        assert_eq!(t.tracked(), 0);
        for i in 0..(MAX_TRACKED_SOURCES as u32 + 10) {
            t.record_failure(IpAddr::from(i.to_be_bytes()), now);
        }
        assert_eq!(t.tracked(), MAX_TRACKED_SOURCES);
    }
}
