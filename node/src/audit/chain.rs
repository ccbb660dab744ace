//! The chains: one per organization plus the cluster chain, each with its head, its anchor
//! (the last event removed from the front), its events by sequence and its pruned runs of
//! refusals; appending, pruning, retention purges, and the filters of queries.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

use super::*;

/// What an event records, which decides how long it is kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventClass {
    /// An attempt to change something (accepted or rejected by the state machine), a sign-in,
    /// a retention purge: kept for the whole retention period.
    Change,
    /// An attempt that changed nothing and was refused before it reached the state machine
    /// (denied, unauthenticated, a failed sign-in) or a summary of such attempts: kept up to
    /// [`MAX_REFUSAL_EVENTS_PER_CHAIN`] per chain.
    Refusal,
}

/// Consecutive events removed from the middle of a chain (refusals pruned for room): what a
/// verifier needs to step over them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrunedRun {
    /// The first sequence removed.
    pub first_sequence: u64,
    /// The last sequence removed.
    pub last_sequence: u64,
    /// The `prev_hash` the first removed event carried (the hash of the event before it).
    pub prev_hash: String,
    /// The hash of the last removed event (the `prev_hash` of the event after it).
    pub last_hash: String,
}

/// One organization's (or the cluster's) chain of events.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chain {
    /// The events kept, by sequence.
    pub events: BTreeMap<u64, AuditEvent>,
    /// Sequences of the kept refusal events, oldest first.
    pub refusals: VecDeque<u64>,
    /// Runs of pruned refusals between kept events, by first sequence.
    pub pruned: BTreeMap<u64, PrunedRun>,
    /// Sequence of the last event ever appended (0 before any).
    pub head_sequence: u64,
    /// Hash of the last event ever appended ([`GENESIS_HASH`] before any).
    pub head_hash: String,
    /// Hash of the last event of a change ever appended ([`GENESIS_HASH`] before any).
    pub head_change_hash: String,
    /// Sequence of the last event removed from the front (by retention, or a pruned refusal
    /// that had nothing kept before it); 0 when none was.
    pub anchor_sequence: u64,
    /// Hash of that event: the `prev_hash` the first kept event (or run) must carry.
    pub anchor_hash: String,
    /// Hash of the last event of a change at or before the anchor: the `prev_change_hash`
    /// the first kept event after it must carry.
    pub anchor_change_hash: String,
    /// Refusal events pruned for room, before their retention ran out.
    pub refusals_pruned: u64,
}

impl Default for Chain {
    fn default() -> Self {
        Self {
            events: BTreeMap::new(),
            refusals: VecDeque::new(),
            pruned: BTreeMap::new(),
            head_sequence: 0,
            head_hash: GENESIS_HASH.into(),
            head_change_hash: GENESIS_HASH.into(),
            anchor_sequence: 0,
            anchor_hash: GENESIS_HASH.into(),
            anchor_change_hash: GENESIS_HASH.into(),
            refusals_pruned: 0,
        }
    }
}

impl Chain {
    /// Events of changes kept.
    pub fn changes(&self) -> usize {
        self.events.len() - self.refusals.len()
    }

    /// Whether the chain holds more events of changes than [`CHANGE_EVENTS_BUDGET_PER_CHAIN`].
    pub fn over_budget(&self) -> bool {
        self.changes() > CHANGE_EVENTS_BUDGET_PER_CHAIN
    }

    /// The kept events with a sequence above `after`, in order.
    pub fn events_after(&self, after: u64) -> impl Iterator<Item = &AuditEvent> {
        self.events
            .range(after.saturating_add(1)..)
            .map(|(_, event)| event)
    }

    /// The pruned runs that cover a sequence after `after` and start no later than `until`,
    /// in order.
    pub fn pruned_overlapping(&self, after: u64, until: u64) -> impl Iterator<Item = &PrunedRun> {
        let reaching_in = self
            .pruned
            .range(..=after)
            .next_back()
            .map(|(_, run)| run)
            .filter(|run| run.last_sequence > after);
        let starting_in = self
            .pruned
            .range(after.saturating_add(1)..=until.max(after.saturating_add(1)))
            .map(|(_, run)| run);
        reaching_in.into_iter().chain(starting_in)
    }

    /// Removes the oldest kept item (event, or a run at the front) and moves the anchor past
    /// it; returns the events removed.
    pub(super) fn drop_oldest(&mut self) -> u64 {
        let Some((&sequence, _)) = self.events.first_key_value() else {
            return 0;
        };
        if let Some(removed) = self.events.remove(&sequence) {
            if self.refusals.front() == Some(&sequence) {
                self.refusals.pop_front();
            }
            self.anchor_change_hash = match removed.class {
                EventClass::Change => removed.hash.clone(),
                EventClass::Refusal => removed.prev_change_hash,
            };
            self.anchor_sequence = removed.sequence;
            self.anchor_hash = removed.hash;
        }
        1 + self.fold_front_runs()
    }

    /// Folds runs that now start right after the anchor into it; returns the events they
    /// stood for.
    fn fold_front_runs(&mut self) -> u64 {
        let mut folded = 0;
        while let Some(run) = self.pruned.remove(&(self.anchor_sequence + 1)) {
            folded += run.last_sequence - run.first_sequence + 1;
            self.anchor_sequence = run.last_sequence;
            self.anchor_hash = run.last_hash;
        }
        folded
    }

    /// Prunes the oldest kept refusal, joining the runs beside it.
    fn prune_oldest_refusal(&mut self) {
        let Some(sequence) = self.refusals.pop_front() else {
            return;
        };
        let Some(event) = self.events.remove(&sequence) else {
            return;
        };
        self.refusals_pruned += 1;
        let mut run = PrunedRun {
            first_sequence: sequence,
            last_sequence: sequence,
            prev_hash: event.prev_hash,
            last_hash: event.hash,
        };
        let before = self
            .pruned
            .range(..sequence)
            .next_back()
            .filter(|(_, r)| r.last_sequence + 1 == sequence)
            .map(|(first, _)| *first);
        if let Some(earlier) = before.and_then(|first| self.pruned.remove(&first)) {
            run.first_sequence = earlier.first_sequence;
            run.prev_hash = earlier.prev_hash;
        }
        if let Some(later) = self.pruned.remove(&(sequence + 1)) {
            run.last_sequence = later.last_sequence;
            run.last_hash = later.last_hash;
        }
        self.pruned.insert(run.first_sequence, run);
        self.fold_front_runs();
    }
}

/// Every chain, by organization id (or [`CLUSTER_CHAIN`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditLog {
    /// The chains.
    pub chains: BTreeMap<String, Chain>,
}

impl AuditLog {
    /// Appends `event` of `class` to its chain, filling in its sequence and hashes; returns
    /// the sequence. A refusal past [`MAX_REFUSAL_EVENTS_PER_CHAIN`] prunes the chain's oldest
    /// refusal; nothing prunes an event of a change.
    pub fn append(&mut self, mut event: AuditEvent, class: EventClass) -> u64 {
        let chain_id = event.chain_id().to_string();
        let chain = self.chains.entry(chain_id.clone()).or_default();
        event.sequence = chain.head_sequence + 1;
        event.class = class;
        event.prev_hash = chain.head_hash.clone();
        event.prev_change_hash = chain.head_change_hash.clone();
        event.hash = event_hash(&event);
        chain.head_sequence = event.sequence;
        chain.head_hash = event.hash.clone();
        if class == EventClass::Change {
            chain.head_change_hash = event.hash.clone();
        }
        // Tests: someone edits this replica's copy of the event after it was chained, which
        // `conifer audit verify` through this node must catch.
        #[cfg(feature = "failpoints")]
        if fail::eval("conifer::audit::edit_stored_event", |_| ()).is_some() {
            event.actor.principal_name = "edited-behind-the-cluster's-back".into();
        }
        let sequence = event.sequence;
        chain.events.insert(sequence, event);
        match class {
            EventClass::Refusal => {
                chain.refusals.push_back(sequence);
                if chain.refusals.len() > MAX_REFUSAL_EVENTS_PER_CHAIN {
                    chain.prune_oldest_refusal();
                }
            }
            EventClass::Change => {
                if chain.changes() == CHANGE_EVENTS_BUDGET_PER_CHAIN + 1 {
                    tracing::warn!(
                        chain = chain_id,
                        "audit chain holds more than {CHANGE_EVENTS_BUDGET_PER_CHAIN} events of \
                         changes; they are kept for their retention (memory grows): shorten \
                         the retention or export and archive"
                    );
                }
            }
        }
        sequence
    }

    /// Removes every event older than `before` ([`timestamp`] text) from every chain;
    /// returns (chain id, events removed) for the chains it touched.
    pub fn purge_before(&mut self, before: &str) -> Vec<(String, u64)> {
        let mut touched = Vec::new();
        for (id, chain) in &mut self.chains {
            let mut removed = 0u64;
            while chain
                .events
                .first_key_value()
                .is_some_and(|(_, e)| e.event.time.as_str() < before)
            {
                removed += chain.drop_oldest();
            }
            if removed > 0 {
                touched.push((id.clone(), removed));
            }
        }
        touched
    }

    /// The oldest kept event's time over all chains.
    pub fn oldest_time(&self) -> Option<&str> {
        self.chains
            .values()
            .filter_map(|c| c.events.first_key_value())
            .map(|(_, e)| e.event.time.as_str())
            .min()
    }

    /// Chains holding more events of changes than their budget.
    pub fn chains_over_budget(&self) -> Vec<&str> {
        self.chains
            .iter()
            .filter(|(_, c)| c.over_budget())
            .map(|(id, _)| id.as_str())
            .collect()
    }
}

/// A query over one chain.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    /// Earliest time, inclusive ([`timestamp`] text).
    pub start_time: Option<String>,
    /// Latest time, exclusive.
    pub end_time: Option<String>,
    /// Exact action (the seed's verb).
    pub action: Option<String>,
    /// Exact operation (Conifer's name).
    pub operation: Option<String>,
    /// Exact resource type.
    pub resource_type: Option<String>,
    /// The seed's resource id: the value itself, one of its list, or a field of its object.
    pub resource_id: Option<String>,
    /// Actor id or name.
    pub actor: Option<String>,
    /// `success` or `failure`.
    pub outcome: Option<String>,
}

impl Filter {
    /// Whether `event` passes.
    pub fn matches(&self, event: &AuditEvent) -> bool {
        let time = event.event.time.as_str();
        self.start_time.as_deref().is_none_or(|t| time >= t)
            && self.end_time.as_deref().is_none_or(|t| time < t)
            && self
                .action
                .as_deref()
                .is_none_or(|a| event.event.action == a)
            && self
                .operation
                .as_deref()
                .is_none_or(|o| event.event.operation == o)
            && self
                .resource_type
                .as_deref()
                .is_none_or(|r| event.event.resource_type == r)
            && self.resource_id.as_deref().is_none_or(|r| {
                event
                    .event
                    .resource_id
                    .as_ref()
                    .is_some_and(|id| id.mentions(r))
            })
            && self
                .actor
                .as_deref()
                .is_none_or(|a| event.actor.principal_id == a || event.actor.principal_name == a)
            && self
                .outcome
                .as_deref()
                .is_none_or(|o| event.event.outcome.result == o)
    }
}

/// The replicated facts about a chain that a verifier checks events against.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainHead {
    /// Sequence of the last event removed by retention or eviction (0: none).
    pub anchor_sequence: u64,
    /// Its hash: what the first kept event's `prev_hash` must be.
    pub anchor_hash: String,
    /// The changes' chain at the anchor ([`Chain::anchor_change_hash`]).
    pub anchor_change_hash: String,
    /// Sequence of the last event.
    pub head_sequence: u64,
    /// Its hash.
    pub head_hash: String,
    /// Hash of the last event of a change.
    pub head_change_hash: String,
}

impl From<&Chain> for ChainHead {
    fn from(chain: &Chain) -> Self {
        Self {
            anchor_sequence: chain.anchor_sequence,
            anchor_hash: chain.anchor_hash.clone(),
            anchor_change_hash: chain.anchor_change_hash.clone(),
            head_sequence: chain.head_sequence,
            head_hash: chain.head_hash.clone(),
            head_change_hash: chain.head_change_hash.clone(),
        }
    }
}
