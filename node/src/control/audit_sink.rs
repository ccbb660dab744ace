//! The audit log's tasks on each node: the sink that queues events of attempts that changed
//! nothing (denials, failed sign-ins) and proposes them in batches (`Command::RecordAudit`)
//! at a bounded rate per principal and source, summarizing the excess; and the retention
//! task that, on the group-0 leader, proposes purges of events past their retention.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;

use super::{Command, ControlPlane};
use crate::audit::{
    self, ActorRef, AuditContext, AuditDraft, EventOutcome, Params, Resource, ResourceType, Verb,
    CLUSTER_CHAIN,
};

/// Default for the most events of denied or failed attempts waiting to be proposed on one
/// node (`--audit-queue-events`); past it they are counted and reported in a summary event.
pub const DEFAULT_AUDIT_QUEUE_EVENTS: usize = 10_000;
/// Largest `--audit-queue-events`.
pub const MAX_AUDIT_QUEUE_EVENTS: usize = 1_000_000;
/// Longest a queued event waits for companions before its batch is proposed.
pub const AUDIT_FLUSH_MS: u64 = 200;
/// Refusal events one principal (or, unauthenticated, one claimed name) from one source
/// address may add to the log in a burst, on each node.
pub const REFUSAL_EVENTS_BURST: u32 = 10;
/// Refusal events the same pair may add per minute after its burst; further refusals are
/// counted and recorded as one summary event per pair per [`REFUSAL_SUMMARY_INTERVAL_S`].
pub const REFUSAL_EVENTS_PER_MIN: u32 = 6;
/// Interval between the summary events of refusals past the rate.
pub const REFUSAL_SUMMARY_INTERVAL_S: u64 = 10;
/// Most (principal, source) pairs summarized at once on a node; past it refusals are only
/// counted in the node's overflow event.
pub const MAX_SUMMARIZED_PAIRS: usize = 10_000;
/// Longest interval between checks for events past their retention.
pub const AUDIT_PURGE_MAX_INTERVAL_S: u64 = 60;
/// Refusals of one (principal, source) pair past the rate, waiting for their summary.
struct Suppressed {
    /// The first one, which the summary repeats with the count.
    first: AuditDraft,
    /// How many.
    count: u64,
    /// Time of the last one.
    last_time: String,
}

/// The rate of refusal events per (principal, source) pair and the summaries of the excess.
struct RefusalRate {
    limiter: governor::DefaultKeyedRateLimiter<String>,
    suppressed: Mutex<HashMap<String, Suppressed>>,
    summarized_total: AtomicU64,
}

impl RefusalRate {
    fn new() -> Self {
        let quota = governor::Quota::per_minute(
            NonZeroU32::new(REFUSAL_EVENTS_PER_MIN).unwrap_or(NonZeroU32::MIN),
        )
        .allow_burst(NonZeroU32::new(REFUSAL_EVENTS_BURST).unwrap_or(NonZeroU32::MIN));
        Self {
            limiter: governor::RateLimiter::hashmap(quota),
            suppressed: Mutex::default(),
            summarized_total: AtomicU64::new(0),
        }
    }

    /// The pair a refusal counts against: who it claims or proved to be, and from where.
    fn pair(draft: &AuditDraft) -> String {
        let actor = &draft.context.actor;
        let who = if actor.principal_id.is_empty() {
            actor.name_hint.as_deref().unwrap_or_default()
        } else {
            actor.principal_id.as_str()
        };
        // By source (an IPv6 client rotating addresses in its /64 is one source).
        let source = draft
            .context
            .source_ip
            .as_deref()
            .and_then(|ip| ip.parse::<std::net::IpAddr>().ok())
            .map(|ip| crate::auth::throttle::source_of(ip).to_string())
            .unwrap_or_default();
        format!("{:?}|{who}|{source}", actor.principal_type)
    }

    /// `Some(draft)` when it may be recorded now; otherwise it is counted for the pair's
    /// summary (or, past [`MAX_SUMMARIZED_PAIRS`], returned as `Err` to be counted as
    /// dropped).
    fn admit(&self, draft: AuditDraft) -> Result<Option<AuditDraft>, ()> {
        let pair = Self::pair(&draft);
        if self.limiter.len() >= MAX_SUMMARIZED_PAIRS {
            self.limiter.retain_recent();
        }
        // Past MAX_SUMMARIZED_PAIRS pairs in the limiter, a new pair is summarized at once.
        let tracked = self.limiter.len() < MAX_SUMMARIZED_PAIRS;
        if tracked && self.limiter.check_key(&pair).is_ok() {
            return Ok(Some(draft));
        }
        let mut suppressed = self.suppressed.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(entry) = suppressed.get_mut(&pair) {
            entry.count += 1;
            entry.last_time = draft.context.time;
        } else if suppressed.len() < MAX_SUMMARIZED_PAIRS {
            let last_time = draft.context.time.clone();
            suppressed.insert(
                pair,
                Suppressed {
                    first: draft,
                    count: 1,
                    last_time,
                },
            );
        } else {
            return Err(());
        }
        self.summarized_total.fetch_add(1, Ordering::Relaxed);
        Ok(None)
    }

    /// One summary event per pair with suppressed refusals, emptying the table.
    fn summaries(&self) -> Vec<AuditDraft> {
        let drained: Vec<Suppressed> = {
            let mut suppressed = self.suppressed.lock().unwrap_or_else(|e| e.into_inner());
            suppressed.drain().map(|(_, s)| s).collect()
        };
        drained.into_iter().map(summary).collect()
    }
}

/// The summary of `suppressed`: its first refusal, with the count and the time range in its
/// parameters and its reason.
fn summary(suppressed: Suppressed) -> AuditDraft {
    let Suppressed {
        mut first,
        count,
        last_time,
    } = suppressed;
    let params = std::mem::take(&mut first.resource.parameters)
        .with("summarized_refusals", count)
        .with("first_time", first.context.time.as_str())
        .with("last_time", last_time.as_str());
    first.resource.parameters = params;
    let reason = first.outcome.reason.take().unwrap_or_default();
    first.outcome.reason = Some(audit::truncate(
        &format!(
            "{count} refusal(s) like this one by the same principal from the same address, \
             {} to {last_time}, past the recording rate: {reason}",
            first.context.time
        ),
        audit::MAX_AUDIT_TEXT_BYTES,
    ));
    first.context.id = uuid::Uuid::new_v4().to_string();
    first.context.time = audit::now();
    first
}

/// Where events of attempts that changed nothing wait to be proposed in batches, at a
/// bounded rate per principal and source ([`REFUSAL_EVENTS_BURST`],
/// [`REFUSAL_EVENTS_PER_MIN`]; the excess is summarized as counts).
#[derive(Clone)]
pub struct AuditSink {
    queue: mpsc::Sender<AuditDraft>,
    /// Events dropped since the last summary.
    unreported: Arc<AtomicU64>,
    /// Events dropped since the node started (the metric).
    dropped_total: Arc<AtomicU64>,
    rate: Arc<RefusalRate>,
}

impl AuditSink {
    /// A sink holding at most `capacity` events, whose batches `control` proposes from a
    /// task started here.
    pub fn start(control: ControlPlane, capacity: usize) -> Self {
        let (queue, pending) = mpsc::channel(capacity.max(1));
        let sink = Self {
            queue,
            unreported: Arc::new(AtomicU64::new(0)),
            dropped_total: Arc::new(AtomicU64::new(0)),
            rate: Arc::new(RefusalRate::new()),
        };
        tokio::spawn(flush_batches(pending, control, sink.clone(), capacity));
        sink
    }

    /// Queues `draft` when its pair is within the rate (otherwise it goes into the pair's
    /// next summary); when the queue is full it is dropped and counted.
    pub fn record(&self, draft: AuditDraft) {
        match self.rate.admit(draft) {
            Ok(Some(draft)) => {
                if self.queue.try_send(draft).is_err() {
                    self.count_dropped(1);
                }
            }
            Ok(None) => {}
            Err(()) => self.count_dropped(1),
        }
    }

    /// Refusals this node summarized instead of recording one by one, since it started.
    pub fn summarized_total(&self) -> u64 {
        self.rate.summarized_total.load(Ordering::Relaxed)
    }

    fn count_dropped(&self, n: u64) {
        self.unreported.fetch_add(n, Ordering::Relaxed);
        self.dropped_total.fetch_add(n, Ordering::Relaxed);
    }

    /// Events this node dropped since it started (full queue, or a batch the control plane
    /// did not take).
    pub fn dropped_total(&self) -> u64 {
        self.dropped_total.load(Ordering::Relaxed)
    }
}

async fn flush_batches(
    mut pending: mpsc::Receiver<AuditDraft>,
    control: ControlPlane,
    sink: AuditSink,
    capacity: usize,
) {
    let idle = Duration::from_secs(1);
    let summary_interval = Duration::from_secs(REFUSAL_SUMMARY_INTERVAL_S);
    let mut next_summaries = tokio::time::Instant::now() + summary_interval;
    loop {
        let first = match tokio::time::timeout(idle, pending.recv()).await {
            Ok(Some(draft)) => Some(draft),
            Ok(None) => return,
            Err(_) => None,
        };
        let mut batch: Vec<AuditDraft> = first.into_iter().collect();
        if !batch.is_empty() {
            let deadline = tokio::time::Instant::now() + Duration::from_millis(AUDIT_FLUSH_MS);
            while batch.len() < audit::MAX_AUDIT_BATCH_EVENTS - 1 {
                match tokio::time::timeout_at(deadline, pending.recv()).await {
                    Ok(Some(draft)) => batch.push(draft),
                    _ => break,
                }
            }
        }
        if tokio::time::Instant::now() >= next_summaries {
            next_summaries += summary_interval;
            let summaries = sink.rate.summaries();
            // Summaries are proposed in batches of their own, within the batch limit.
            for chunk in summaries.chunks(audit::MAX_AUDIT_BATCH_EVENTS) {
                if let Err(e) = control.propose(Command::RecordAudit(chunk.to_vec())).await {
                    tracing::warn!("{} refusal summaries not recorded: {e}", chunk.len());
                    sink.count_dropped(chunk.len() as u64);
                }
            }
        }
        let queued = batch.len() as u64;
        let unreported = sink.unreported.swap(0, Ordering::Relaxed);
        if unreported > 0 {
            batch.push(overflow_summary(control.node_id(), unreported, capacity));
        }
        if batch.is_empty() {
            continue;
        }
        if let Err(e) = control.propose(Command::RecordAudit(batch)).await {
            tracing::warn!("audit batch of {queued} event(s) not recorded: {e}");
            sink.count_dropped(queued);
            sink.unreported.fetch_add(unreported, Ordering::Relaxed);
        }
    }
}

fn overflow_summary(node_id: u64, dropped: u64, capacity: usize) -> AuditDraft {
    let context = AuditContext::internal("audit_log.overflow", ActorRef::system(), node_id);
    // Events were lost: a deletion from the log, recorded in the cluster chain.
    let resource = Resource::new(Verb::Delete, ResourceType::AuditLog, None)
        .id(Some(CLUSTER_CHAIN))
        .params(Params::default().with("dropped_events", dropped));
    AuditDraft {
        context,
        resource,
        outcome: EventOutcome::failure(
            "RESOURCE_EXHAUSTED",
            &format!(
                "node {node_id} dropped {dropped} event(s) of denied or failed attempts: more than {capacity} were waiting"
            ),
        ),
    }
}

/// Interval between retention checks for a retention of `retention_s`.
pub fn purge_interval(retention_s: u64) -> Duration {
    Duration::from_secs((retention_s / 4).clamp(1, AUDIT_PURGE_MAX_INTERVAL_S))
}

/// Forever: while this node leads group 0, proposes a purge of the events older than
/// `retention_s` whenever some are kept.
pub async fn keep_retention(control: ControlPlane, retention_s: u64) {
    let interval = purge_interval(retention_s);
    loop {
        tokio::time::sleep(interval).await;
        let leads = control.raft().metrics().borrow().current_leader == Some(control.node_id());
        if !leads {
            continue;
        }
        let cutoff_ms = audit::now_ms().saturating_sub(retention_s.saturating_mul(1_000));
        let before = audit::timestamp(cutoff_ms);
        let due = control.read(|s| s.audit.oldest_time().is_some_and(|t| t < before.as_str()));
        if !due {
            continue;
        }
        let context =
            AuditContext::internal("audit_log.purge", ActorRef::system(), control.node_id());
        if let Err(e) = control
            .propose(Command::PurgeAudit { context, before })
            .await
        {
            tracing::warn!("audit retention purge not applied: {e}");
        }
    }
}
