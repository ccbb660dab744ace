//! Coalesced read-index barriers: however many requests on a node need group 0's read
//! index at once (credential checks after a lease lapse, unknown credentials catching up,
//! sign-ins), at most one read index is in flight from the node, and every request that
//! arrived while one was in flight shares the next one.
//!
//! A request may only share a barrier that *started* after it arrived (an earlier read index
//! could miss a write acknowledged just before the request), so a round collects the
//! requests waiting when it starts and answers exactly those.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

/// What one round answers: `Err(reason)` when the barrier failed.
type Answer = Result<(), String>;

/// Runs one barrier.
pub type RunBarrier = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Answer> + Send>> + Send + Sync>;

#[derive(Default)]
struct Rounds {
    /// Whether a driver task is running rounds.
    running: bool,
    /// Requests waiting for the next round.
    waiting: Vec<oneshot::Sender<Answer>>,
    /// Rounds run since the node started.
    rounds: u64,
}

/// One node's coalesced barriers for one Raft group.
#[derive(Clone)]
pub struct Coalesced {
    rounds: Arc<Mutex<Rounds>>,
    run: RunBarrier,
}

impl Coalesced {
    /// Coalesces calls of `run`.
    pub fn new(run: RunBarrier) -> Self {
        Self {
            rounds: Arc::default(),
            run,
        }
    }

    /// Waits for a barrier that started after this call; `Err(reason)` if it failed.
    pub async fn wait(&self) -> Answer {
        let (tx, rx) = oneshot::channel();
        let start_driver = {
            let mut rounds = self.rounds.lock().unwrap_or_else(|e| e.into_inner());
            rounds.waiting.push(tx);
            !std::mem::replace(&mut rounds.running, true)
        };
        if start_driver {
            // A task of its own, so that a caller going away does not strand the others.
            tokio::spawn(drive(self.rounds.clone(), self.run.clone()));
        }
        rx.await
            .unwrap_or_else(|_| Err("the barrier task ended".into()))
    }

    /// Barriers run since the node started.
    pub fn rounds(&self) -> u64 {
        self.rounds.lock().unwrap_or_else(|e| e.into_inner()).rounds
    }
}

/// Marks the driver stopped when it ends without doing so itself (a panicking barrier), so
/// the next caller starts another.
struct Stopped {
    rounds: Arc<Mutex<Rounds>>,
    armed: bool,
}

impl Drop for Stopped {
    fn drop(&mut self) {
        if self.armed {
            self.rounds
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .running = false;
        }
    }
}

async fn drive(rounds: Arc<Mutex<Rounds>>, run: RunBarrier) {
    let mut stopped = Stopped {
        rounds: rounds.clone(),
        armed: true,
    };
    loop {
        let batch = {
            let mut r = rounds.lock().unwrap_or_else(|e| e.into_inner());
            if r.waiting.is_empty() {
                // Under the lock that callers check it with.
                r.running = false;
                stopped.armed = false;
                return;
            }
            r.rounds += 1;
            std::mem::take(&mut r.waiting)
        };
        let answer = run().await;
        for waiter in batch {
            let _ = waiter.send(answer.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn concurrent_waiters_share_rounds_that_start_after_them() {
        let started = Arc::new(AtomicU64::new(0));
        let counter = started.clone();
        let coalesced = Coalesced::new(Arc::new(move || {
            let counter = counter.clone();
            Box::pin(async move {
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(50)).await;
                Ok(())
            })
        }));
        let waiters: Vec<_> = (0..1_000)
            .map(|_| {
                let c = coalesced.clone();
                tokio::spawn(async move { c.wait().await })
            })
            .collect();
        for w in waiters {
            assert_eq!(w.await.unwrap(), Ok(()));
        }
        // The first round took whoever was there; the rest waited for the second.
        let rounds = started.load(Ordering::SeqCst);
        assert!(
            (1..=3).contains(&rounds),
            "{rounds} rounds for 1,000 waiters"
        );
        assert_eq!(coalesced.rounds(), rounds);
        // A later waiter gets a round of its own.
        coalesced.wait().await.unwrap();
        assert_eq!(started.load(Ordering::SeqCst), rounds + 1);
    }

    #[tokio::test]
    async fn a_failed_round_fails_its_waiters_and_the_next_round_runs() {
        let fail = Arc::new(AtomicU64::new(1));
        let flag = fail.clone();
        let coalesced = Coalesced::new(Arc::new(move || {
            let failing = flag.swap(0, Ordering::SeqCst) == 1;
            Box::pin(async move {
                if failing {
                    Err("no leader".to_string())
                } else {
                    Ok(())
                }
            })
        }));
        assert_eq!(coalesced.wait().await, Err("no leader".into()));
        assert_eq!(coalesced.wait().await, Ok(()));
    }
}
