//! Client connections: how many one source may hold, how long a connection may sit idle or
//! take over its request's headers and body, and the share of the node's connections kept
//! for sources that hold few.
//!
//! A connection is admitted (before its TLS handshake) only while the node serves fewer
//! than [`MAX_CLIENT_CONNECTIONS`], its source holds fewer than
//! [`MAX_CLIENT_CONNECTIONS_PER_SOURCE`], and — once fewer than
//! [`RESERVED_CLIENT_CONNECTIONS`] slots are left — its source holds fewer than
//! [`MAX_RESERVED_CONNECTIONS_PER_SOURCE`]. A refused connection is closed at once, so the
//! accept loop never waits and one client holding connections cannot keep the port from
//! answering others. A source is one IPv4 address, or one IPv6 /64 (what one host is
//! usually given).

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Instant;

pub use crate::auth::throttle::source_of;

/// Most client connections one node serves at once.
pub const MAX_CLIENT_CONNECTIONS: usize = 1024;
/// Most client connections one source (IPv4 address, IPv6 /64) holds at once.
pub const MAX_CLIENT_CONNECTIONS_PER_SOURCE: usize = 128;
/// The last slots of [`MAX_CLIENT_CONNECTIONS`], kept for sources that hold few connections.
pub const RESERVED_CLIENT_CONNECTIONS: usize = 256;
/// Most connections a source may hold and still be given one of the reserved slots.
pub const MAX_RESERVED_CONNECTIONS_PER_SOURCE: usize = 8;
/// Time a connection may stay open with no request in flight (after its handshake, or
/// since its last response) before the node closes it: what bounds an idle HTTP/2
/// connection, or one whose client never completes a request's headers.
pub const CLIENT_IDLE_TIMEOUT_MS: u64 = 60_000;
/// Time an HTTP/1.1 connection may wait for a request's headers: hyper starts it whenever it
/// waits for the next request, so it also closes an idle HTTP/1.1 keep-alive connection.
pub const CLIENT_HEADER_READ_TIMEOUT_MS: u64 = 10_000;
/// Time a client has to send a request's whole body (4 MiB at 140 KB/s), from when the
/// handler starts reading it; past it the request is refused with 408 /
/// `DEADLINE_EXCEEDED`.
pub const CLIENT_BODY_READ_TIMEOUT_MS: u64 = 30_000;
/// Most requests one HTTP/2 connection carries at once (its `SETTINGS_MAX_CONCURRENT_STREAMS`).
pub const MAX_CONCURRENT_STREAMS_PER_CONNECTION: u32 = 64;
/// Time in-flight requests get to finish once an idle connection is being closed.
pub const CLIENT_CLOSE_GRACE_MS: u64 = 10_000;

/// Why a connection was not admitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The node serves [`MAX_CLIENT_CONNECTIONS`].
    NodeFull,
    /// The source holds [`MAX_CLIENT_CONNECTIONS_PER_SOURCE`].
    SourceFull,
    /// Only reserved slots are left and the source holds
    /// [`MAX_RESERVED_CONNECTIONS_PER_SOURCE`] or more.
    ReservedForOthers,
}

#[derive(Default)]
struct Counts {
    total: usize,
    by_source: HashMap<IpAddr, usize>,
}

/// The client connections a node holds, by source.
#[derive(Default)]
pub struct ConnectionTable {
    counts: Mutex<Counts>,
    refused: AtomicU64,
}

impl ConnectionTable {
    /// Admits a connection from `peer`, or says why not. The slot is held until the
    /// returned [`Slot`] drops.
    pub fn admit(self: &Arc<Self>, peer: IpAddr) -> Result<Slot, Refusal> {
        let source = source_of(peer);
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let held = counts.by_source.get(&source).copied().unwrap_or(0);
        let refusal = if counts.total >= MAX_CLIENT_CONNECTIONS {
            Some(Refusal::NodeFull)
        } else if held >= MAX_CLIENT_CONNECTIONS_PER_SOURCE {
            Some(Refusal::SourceFull)
        } else if counts.total >= MAX_CLIENT_CONNECTIONS - RESERVED_CLIENT_CONNECTIONS
            && held >= MAX_RESERVED_CONNECTIONS_PER_SOURCE
        {
            Some(Refusal::ReservedForOthers)
        } else {
            None
        };
        if let Some(refusal) = refusal {
            self.refused.fetch_add(1, Ordering::Relaxed);
            return Err(refusal);
        }
        counts.total += 1;
        *counts.by_source.entry(source).or_insert(0) += 1;
        Ok(Slot {
            table: self.clone(),
            source,
        })
    }

    /// Connections held now, in all.
    pub fn open(&self) -> usize {
        self.counts.lock().unwrap_or_else(|e| e.into_inner()).total
    }

    /// Connections refused since the node started.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
}

/// One admitted connection's place in the [`ConnectionTable`].
pub struct Slot {
    table: Arc<ConnectionTable>,
    source: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut counts = self.table.counts.lock().unwrap_or_else(|e| e.into_inner());
        counts.total -= 1;
        if let Some(held) = counts.by_source.get_mut(&self.source) {
            *held -= 1;
            if *held == 0 {
                counts.by_source.remove(&self.source);
            }
        }
    }
}

/// What a connection is doing, for its idle timer: requests in flight and when the last one
/// started or ended.
pub struct Activity {
    opened: Instant,
    in_flight: AtomicUsize,
    last_change_ms: AtomicU64,
}

impl Activity {
    /// A connection that opens now.
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            opened: Instant::now(),
            in_flight: AtomicUsize::new(0),
            last_change_ms: AtomicU64::new(0),
        })
    }

    fn touch(&self) {
        let ms = self.opened.elapsed().as_millis() as u64;
        self.last_change_ms.fetch_max(ms, Ordering::Relaxed);
    }

    /// When the connection becomes idle too long, if no request starts before then; `None`
    /// while a request is in flight.
    pub fn idle_deadline(&self) -> Option<Instant> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        let last = Duration::from_millis(self.last_change_ms.load(Ordering::Relaxed));
        Some(self.opened + last + Duration::from_millis(CLIENT_IDLE_TIMEOUT_MS))
    }

    /// Waits until the connection has had no request in flight for
    /// [`CLIENT_IDLE_TIMEOUT_MS`].
    pub async fn idle(&self) {
        loop {
            match self.idle_deadline() {
                Some(deadline) if deadline <= Instant::now() => return,
                Some(deadline) => tokio::time::sleep_until(deadline).await,
                // A request is in flight: look again once it could have timed out.
                None => tokio::time::sleep(Duration::from_millis(CLIENT_IDLE_TIMEOUT_MS)).await,
            }
        }
    }
}

/// Counts a request in flight on its connection's [`Activity`] until it drops.
struct InFlight(Arc<Activity>);

impl InFlight {
    fn start(activity: &Arc<Activity>) -> Self {
        activity.in_flight.fetch_add(1, Ordering::AcqRel);
        activity.touch();
        Self(activity.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A service wrapper that keeps a connection's [`Activity`]: each request counts as in
/// flight from its call until its response is ready.
#[derive(Clone)]
pub struct Tracked<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S> Tracked<S> {
    /// `inner`, reporting to `activity`.
    pub fn new(inner: S, activity: Arc<Activity>) -> Self {
        Self { inner, activity }
    }
}

impl<S, R> tower::Service<R> for Tracked<S>
where
    S: tower::Service<R>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: R) -> Self::Future {
        let guard = InFlight::start(&self.activity);
        let future = self.inner.call(request);
        Box::pin(async move {
            let response = future.await;
            drop(guard);
            response
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(a: u8, b: u8) -> IpAddr {
        IpAddr::from([127, 0, a, b])
    }

    #[test]
    fn one_source_is_capped_and_others_keep_the_reserve() {
        let table = Arc::new(ConnectionTable::default());
        let mut held = Vec::new();
        for _ in 0..MAX_CLIENT_CONNECTIONS_PER_SOURCE {
            held.push(table.admit(ip(0, 1)).expect("under the per-source cap"));
        }
        assert_eq!(table.admit(ip(0, 1)).err(), Some(Refusal::SourceFull));
        // Other sources fill the node up to the reserve, each within its cap.
        let mut n = 0u16;
        while table.open() < MAX_CLIENT_CONNECTIONS - RESERVED_CLIENT_CONNECTIONS {
            held.push(table.admit(ip(1, (n / 100) as u8)).expect("room left"));
            n += 1;
        }
        // In the reserve, a source that already holds many is refused, a new one admitted.
        assert_eq!(
            table.admit(ip(1, 0)).err(),
            Some(Refusal::ReservedForOthers)
        );
        for b in 0..RESERVED_CLIENT_CONNECTIONS / MAX_RESERVED_CONNECTIONS_PER_SOURCE {
            for _ in 0..MAX_RESERVED_CONNECTIONS_PER_SOURCE {
                held.push(table.admit(ip(2, b as u8)).expect("a reserved slot"));
            }
        }
        assert_eq!(table.open(), MAX_CLIENT_CONNECTIONS);
        assert_eq!(table.admit(ip(3, 0)).err(), Some(Refusal::NodeFull));
        // Closing frees the slot and the source's count.
        held.clear();
        assert_eq!(table.open(), 0);
        assert!(table.admit(ip(0, 1)).is_ok());
        assert_eq!(table.refused(), 3);
    }

    #[test]
    fn an_ipv6_source_is_its_64_prefix() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(source_of(a), source_of(b));
        assert_ne!(source_of(a), source_of(c));
        let mapped: IpAddr = "::ffff:127.0.0.9".parse().unwrap();
        assert_eq!(source_of(mapped), ip(0, 9));
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_is_idle_only_with_no_request_in_flight() {
        let activity = Activity::new();
        let opened = Instant::now();
        let guard = InFlight::start(&activity);
        assert!(activity.idle_deadline().is_none());
        tokio::time::advance(Duration::from_millis(CLIENT_IDLE_TIMEOUT_MS * 2)).await;
        drop(guard);
        let deadline = activity.idle_deadline().expect("nothing in flight");
        assert!(deadline >= opened + Duration::from_millis(CLIENT_IDLE_TIMEOUT_MS * 3));
        activity.idle().await;
        assert!(Instant::now() >= deadline);
    }
}
