//! Verification of a chain from its events: hashes, links (stepping over pruned runs),
//! anchor and head, naming the first broken link.

use super::*;

/// The first broken link of a chain.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("chain broken at sequence {sequence} (event {event_id}): {problem}")]
pub struct BrokenLink {
    /// Sequence of the first event that does not verify (or the expected one, when missing).
    pub sequence: u64,
    /// Its id (empty when the event is missing).
    pub event_id: String,
    /// What is wrong.
    pub problem: String,
}

/// Verifies a whole retained chain as read through a node: its `events` and pruned `runs`
/// (each in sequence order, as pages list them) against `head`, the facts of its first
/// page. Events and runs past that head (appended while the pages were read) are left out.
/// Returns the events checked, or the first broken link.
pub fn verify_chain(
    head: &ChainHead,
    events: &[AuditEvent],
    runs: &[PrunedRun],
) -> Result<u64, BrokenLink> {
    let mut verifier = Verifier::anchored(head);
    let mut runs = runs
        .iter()
        .filter(|r| r.first_sequence <= head.head_sequence)
        .peekable();
    for event in events.iter().filter(|e| e.sequence <= head.head_sequence) {
        while let Some(run) = runs.next_if(|r| r.first_sequence < event.sequence) {
            verifier.push_pruned(run)?;
        }
        verifier.push(event)?;
    }
    for run in runs {
        verifier.push_pruned(run)?;
    }
    verifier.finish(head)
}

/// Recomputes a chain event by event.
#[derive(Debug)]
pub struct Verifier {
    expected_sequence: Option<u64>,
    expected_prev_hash: Option<String>,
    /// The hash of the last change seen: the next event's `prev_change_hash`.
    expected_change_hash: Option<String>,
    checked: u64,
    pruned: u64,
}

impl Verifier {
    /// A verifier for events that follow `anchor` (sequence, hash), or for a stretch of a
    /// chain that starts anywhere when `None` (an export with a time range).
    pub fn new(anchor: Option<(u64, String)>) -> Self {
        Self {
            expected_sequence: anchor.as_ref().map(|(s, _)| s + 1),
            expected_prev_hash: anchor.map(|(_, h)| h),
            expected_change_hash: None,
            checked: 0,
            pruned: 0,
        }
    }

    /// A verifier for a whole retained chain: its events must follow `head`'s anchor.
    pub fn anchored(head: &ChainHead) -> Self {
        let mut verifier = Self::new(Some((head.anchor_sequence, head.anchor_hash.clone())));
        verifier.expected_change_hash = Some(head.anchor_change_hash.clone());
        verifier
    }

    /// Checks the next event.
    pub fn push(&mut self, event: &AuditEvent) -> Result<(), BrokenLink> {
        let broken = |problem: String| BrokenLink {
            sequence: event.sequence,
            event_id: event.id.clone(),
            problem,
        };
        if let Some(expected) = self.expected_sequence {
            if event.sequence != expected {
                return Err(BrokenLink {
                    sequence: expected,
                    event_id: String::new(),
                    problem: format!(
                        "expected sequence {expected}, found {} (events missing or reordered)",
                        event.sequence
                    ),
                });
            }
        }
        if let Some(expected) = &self.expected_prev_hash {
            if &event.prev_hash != expected {
                return Err(broken(format!(
                    "prev_hash {} does not match the previous event's hash {expected}",
                    event.prev_hash
                )));
            }
        }
        let computed = event_hash(event);
        if computed != event.hash {
            return Err(broken(format!(
                "stored hash {} but the event's content hashes to {computed} (edited)",
                event.hash
            )));
        }
        if let Some(expected) = &self.expected_change_hash {
            if &event.prev_change_hash != expected {
                return Err(broken(format!(
                    "prev_change_hash {} does not match the last change's hash {expected} (an \
                     event of a change is missing)",
                    event.prev_change_hash
                )));
            }
        }
        self.expected_sequence = Some(event.sequence + 1);
        self.expected_prev_hash = Some(event.hash.clone());
        self.expected_change_hash = Some(match event.class {
            EventClass::Change => event.hash.clone(),
            EventClass::Refusal => event.prev_change_hash.clone(),
        });
        self.checked += 1;
        Ok(())
    }

    /// Steps over a run of pruned refusals: it must start where the chain stands and carry
    /// the hash the chain stands at. A run that also covers events already checked (they
    /// were pruned while a reader went page by page) is stepped over from where the chain
    /// stands; one wholly behind it is ignored. Runs never hold a change, so the changes'
    /// chain checked at the next change (or the head) catches a change passed off as one.
    pub fn push_pruned(&mut self, run: &PrunedRun) -> Result<(), BrokenLink> {
        let broken = |problem: String| BrokenLink {
            sequence: run.first_sequence,
            event_id: String::new(),
            problem,
        };
        if run.last_sequence < run.first_sequence {
            return Err(broken("a pruned run ends before it starts".into()));
        }
        if let Some(expected) = self.expected_sequence {
            if run.last_sequence < expected {
                return Ok(());
            }
            if run.first_sequence < expected {
                self.pruned += run.last_sequence + 1 - expected;
                self.expected_sequence = Some(run.last_sequence + 1);
                self.expected_prev_hash = Some(run.last_hash.clone());
                return Ok(());
            }
            if run.first_sequence != expected {
                return Err(broken(format!(
                    "expected sequence {expected}, found a pruned run from {} (events missing \
                     or reordered)",
                    run.first_sequence
                )));
            }
        }
        if let Some(expected) = &self.expected_prev_hash {
            if &run.prev_hash != expected {
                return Err(broken(format!(
                    "the pruned run's prev_hash {} does not match the previous event's hash \
                     {expected}",
                    run.prev_hash
                )));
            }
        }
        self.expected_sequence = Some(run.last_sequence + 1);
        self.expected_prev_hash = Some(run.last_hash.clone());
        self.pruned += run.last_sequence - run.first_sequence + 1;
        Ok(())
    }

    /// Pruned events stepped over so far.
    pub fn pruned(&self) -> u64 {
        self.pruned
    }

    /// Events checked so far.
    pub fn checked(&self) -> u64 {
        self.checked
    }

    /// Checks that the events seen end at the replicated head.
    pub fn finish(&self, head: &ChainHead) -> Result<u64, BrokenLink> {
        let last = self.expected_sequence.map_or(0, |s| s - 1);
        let last_hash = self.expected_prev_hash.as_deref().unwrap_or(GENESIS_HASH);
        let last_change = self.expected_change_hash.as_deref();
        if last_change.is_some_and(|h| h != head.head_change_hash) {
            return Err(BrokenLink {
                sequence: head.head_sequence,
                event_id: String::new(),
                problem: format!(
                    "the last change seen hashes to {}, but the replicated head's last change is \
                     {} (an event of a change is missing)",
                    last_change.unwrap_or_default(),
                    head.head_change_hash
                ),
            });
        }
        if last != head.head_sequence || last_hash != head.head_hash {
            return Err(BrokenLink {
                sequence: head.head_sequence,
                event_id: String::new(),
                problem: format!(
                    "the events end at sequence {last} with hash {last_hash}, but the replicated head is sequence {} with hash {}",
                    head.head_sequence, head.head_hash
                ),
            });
        }
        Ok(self.checked)
    }
}
