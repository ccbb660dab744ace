//! The audit log at the front door: what a request tells about itself (address, request id,
//! user agent), the sink that batches events of attempts that changed nothing, the retention
//! task, and the query routes `GET /admin/audit-logs` (an organization's chain, `OrgOwner`)
//! and `GET /admin/cluster/audit-logs` (the cluster chain, operator).

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::access::{Caller, ClientAddr};
use super::{ApiError, ApiState};
use crate::audit::{
    self, ActorRef, AuditContext, AuditDraft, ChainHead, EventOutcome, Filter, Params,
    PrincipalType, PrunedRun, Resource, ResourceType, Verb, CLUSTER_CHAIN,
};
use crate::auth::Principal;
use crate::control::{Command, ControlPlane};
use crate::policy::Target;

/// Header carrying a client's request id; echoed on every response.
pub const REQUEST_ID_HEADER: &str = "x-request-id";
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
/// Events returned by one page when the query does not say.
pub const DEFAULT_AUDIT_PAGE_EVENTS: usize = 100;
/// Most events one page may return.
pub const MAX_AUDIT_PAGE_EVENTS: usize = 1_000;
/// Longest value of a text filter.
pub const MAX_AUDIT_FILTER_BYTES: usize = 256;

/// What a request tells about itself, read once by the authentication middleware.
#[derive(Clone, Debug)]
pub struct RequestInfo {
    /// The client's address.
    pub source_ip: Option<String>,
    /// The client's `X-Request-Id` (printable, at most [`audit::MAX_REQUEST_ID_BYTES`]) or
    /// a fresh UUID.
    pub request_id: String,
    /// The client's `User-Agent`, cut to [`audit::MAX_USER_AGENT_BYTES`].
    pub user_agent: Option<String>,
    /// This node.
    pub node_id: u64,
    /// What the request's path names last, when its route ends in a parameter (an index
    /// name, a key or member id): the resource of the attempt, for the event of a refusal.
    pub resource_hint: Option<String>,
}

impl RequestInfo {
    /// Reads the request's headers and address.
    pub fn new(headers: &HeaderMap, addr: Option<ClientAddr>, node_id: u64) -> Self {
        let request_id = headers
            .get(REQUEST_ID_HEADER)
            .and_then(|v| v.to_str().ok())
            .filter(|v| {
                !v.is_empty()
                    && v.len() <= audit::MAX_REQUEST_ID_BYTES
                    && v.bytes().all(|b| b.is_ascii_graphic())
            })
            .map(str::to_string)
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let user_agent = headers
            .get(axum::http::header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(|v| audit::truncate(v, audit::MAX_USER_AGENT_BYTES));
        Self {
            source_ip: addr.map(|ClientAddr(ip)| ip.to_string()),
            request_id,
            user_agent,
            node_id,
            resource_hint: None,
        }
    }

    /// The same, naming `resource` (a request path's last parameter: an index name, a key
    /// or member id) as what a refusal aimed at, cut to [`audit::MAX_AUDIT_TEXT_BYTES`].
    pub fn with_resource_hint(mut self, resource: Option<&str>) -> Self {
        self.resource_hint = resource.map(|r| audit::truncate(r, audit::MAX_AUDIT_TEXT_BYTES));
        self
    }

    /// The context of an event about `operation` by `actor`, stamped now.
    pub fn context(&self, operation: &str, actor: ActorRef) -> AuditContext {
        AuditContext {
            id: uuid::Uuid::new_v4().to_string(),
            time: audit::now(),
            operation: operation.to_string(),
            actor,
            source_ip: self.source_ip.clone(),
            request_id: Some(self.request_id.clone()),
            user_agent: self.user_agent.clone(),
            node_id: self.node_id,
        }
    }
}

/// The actor an authenticated principal is.
pub fn actor_of(principal: &Principal) -> ActorRef {
    match principal {
        Principal::Operator { token_id } => ActorRef::operator(token_id),
        Principal::Member(m) => ActorRef::member(m.kind, &m.id, &m.organization_id),
        Principal::ApiKey(k) => ActorRef {
            principal_type: PrincipalType::ApiKey,
            principal_id: k.id.clone(),
            // Resolved from the key's project at apply.
            organization_id: None,
            name_hint: None,
        },
    }
}

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

/// Query of the audit-log routes.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    organization_id: Option<String>,
    start_time: Option<String>,
    end_time: Option<String>,
    action: Option<String>,
    operation: Option<String>,
    resource_type: Option<String>,
    resource_id: Option<String>,
    actor: Option<String>,
    outcome: Option<String>,
    limit: Option<usize>,
    pagination_token: Option<String>,
    /// Start after this sequence (a position in the chain, for `conifer audit verify`);
    /// instead of a `pagination_token`.
    after_sequence: Option<u64>,
}

fn text_filter(field: &str, value: Option<String>) -> Result<Option<String>, ApiError> {
    match value {
        Some(v) if v.len() > MAX_AUDIT_FILTER_BYTES => Err(ApiError::invalid(format!(
            "'{field}' is limited to {MAX_AUDIT_FILTER_BYTES} bytes"
        ))),
        other => Ok(other),
    }
}

/// A filter whose value must be one of `allowed` (the vocabulary's values).
fn choice_filter(
    field: &str,
    value: Option<String>,
    allowed: &[&str],
) -> Result<Option<String>, ApiError> {
    match text_filter(field, value)? {
        Some(v) if !allowed.contains(&v.as_str()) => Err(ApiError::invalid(format!(
            "'{field}' is {v:?}; it is one of {}",
            allowed.join(", ")
        ))),
        other => Ok(other),
    }
}

fn time_filter(field: &str, value: Option<String>) -> Result<Option<String>, ApiError> {
    value
        .map(|v| {
            audit::normalize_time(&v).ok_or_else(|| {
                ApiError::invalid(format!("'{field}' must be an RFC 3339 time, got {v:?}"))
            })
        })
        .transpose()
}

impl AuditQuery {
    fn into_parts(self) -> Result<(Filter, usize, Start), ApiError> {
        let limit = self.limit.unwrap_or(DEFAULT_AUDIT_PAGE_EVENTS);
        if !(1..=MAX_AUDIT_PAGE_EVENTS).contains(&limit) {
            return Err(ApiError::invalid(format!(
                "'limit' must be between 1 and {MAX_AUDIT_PAGE_EVENTS}, got {limit}"
            )));
        }
        let token =
            text_filter("pagination_token", self.pagination_token)?.filter(|t| !t.is_empty());
        let start = match (token, self.after_sequence) {
            (Some(_), Some(_)) => {
                return Err(ApiError::invalid(
                    "give 'pagination_token' or 'after_sequence', not both",
                ))
            }
            (Some(token), None) => Start::Token(token),
            (None, Some(sequence)) => Start::After(sequence),
            (None, None) => Start::After(0),
        };
        let outcome = choice_filter("outcome", self.outcome, &["success", "failure"])?;
        let action = choice_filter("action", self.action, &Verb::ALL.map(Verb::as_str))?;
        let resource_type = choice_filter(
            "resource_type",
            self.resource_type,
            &ResourceType::ALL.map(ResourceType::as_str),
        )?;
        let filter = Filter {
            start_time: time_filter("start_time", self.start_time)?,
            end_time: time_filter("end_time", self.end_time)?,
            action,
            operation: text_filter("operation", self.operation)?,
            resource_type,
            resource_id: text_filter("resource_id", self.resource_id)?,
            actor: text_filter("actor", self.actor)?,
            outcome,
        };
        Ok((filter, limit, start))
    }
}

/// `GET /admin/audit-logs`: one organization's events, oldest first, filtered and paged
/// (`OrgOwner` of that organization, or the operator). The caller's own organization unless
/// `organization_id` names another.
pub async fn list(
    State(state): State<ApiState>,
    caller: Caller,
    Query(query): Query<AuditQuery>,
) -> Result<Json<Value>, ApiError> {
    let organization_id = match query.organization_id.clone() {
        Some(id) => text_filter("organization_id", Some(id))?.unwrap_or_default(),
        None => super::admin::home_organization(&state, &caller)?,
    };
    caller.authorize(Target::Organization(&organization_id))?;
    let parts = query.into_parts()?;
    // Everything below reads this node's replica once it has caught up with the leader, so
    // an organization or event acknowledged through any node is found.
    state.control.linearizable_barrier().await?;
    // The operator still reads the chain of a deleted organization (its deletion is the
    // chain's last event).
    let operator = matches!(caller.principal.as_ref(), Principal::Operator { .. });
    let known = state.control.read(|s| {
        let chain_kept = operator && s.audit.chains.contains_key(&organization_id);
        s.organizations.contains_key(&organization_id) || chain_kept
    });
    if !known {
        return Err(ApiError::not_found(format!(
            "organization '{organization_id}' not found"
        )));
    }
    page(&state, &organization_id, parts)
}

/// `GET /admin/cluster/audit-logs`: the cluster chain (operator tokens, signing keys,
/// sign-ins of unknown names, overflow summaries), filtered and paged (operator only).
pub async fn list_cluster(
    State(state): State<ApiState>,
    caller: Caller,
    Query(query): Query<AuditQuery>,
) -> Result<Json<Value>, ApiError> {
    caller.authorize(Target::Cluster)?;
    if query.organization_id.is_some() {
        return Err(ApiError::invalid(
            "the cluster chain takes no 'organization_id'; use /admin/audit-logs",
        ));
    }
    let parts = query.into_parts()?;
    state.control.linearizable_barrier().await?;
    page(&state, CLUSTER_CHAIN, parts)
}

/// What a page token is bound to: the chain and every filter, as 16 hex digits of their
/// SHA-256, so a token only continues the listing that issued it.
fn page_scope(chain_id: &str, filter: &Filter) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(format!("{chain_id}\0{filter:?}").as_bytes());
    hex::encode(&digest[..8])
}

/// Where a page starts.
enum Start {
    /// After a sequence given as such.
    After(u64),
    /// Where an earlier page's token says.
    Token(String),
}

/// The sequence to continue after from `token` (`<sequence>.<scope>`), refused when it was
/// issued for another chain or other filters.
fn page_after(token: &str, scope: &str) -> Result<u64, ApiError> {
    let foreign = || {
        ApiError::invalid(format!(
            "'pagination_token' {token:?} is not one this API gave"
        ))
    };
    let (sequence, issued_for) = token.split_once('.').ok_or_else(foreign)?;
    let sequence = sequence.parse::<u64>().map_err(|_| foreign())?;
    if issued_for != scope {
        return Err(ApiError::invalid(
            "'pagination_token' was issued for another organization_id or other filters: send \
             the organization and filters of the first page with every page",
        ));
    }
    Ok(sequence)
}

/// One page of chain `chain_id` as this node's replica holds it (callers catch up with the
/// leader first).
fn page(
    state: &ApiState,
    chain_id: &str,
    (filter, limit, start): (Filter, usize, Start),
) -> Result<Json<Value>, ApiError> {
    let scope = page_scope(chain_id, &filter);
    let after = match start {
        Start::After(sequence) => sequence,
        Start::Token(token) => page_after(&token, &scope)?,
    };
    let (events, pruned, next, head, chain) = state.control.read(|s| {
        let Some(chain) = s.audit.chains.get(chain_id) else {
            let empty = crate::audit::Chain::default();
            return (
                Vec::new(),
                Vec::new(),
                None,
                ChainHead::from(&empty),
                json!({}),
            );
        };
        let mut events = Vec::new();
        let mut next = None;
        for event in chain.events_after(after) {
            if events.len() == limit {
                next = events.last().map(|e: &crate::audit::AuditEvent| e.sequence);
                break;
            }
            if filter.matches(event) {
                events.push(event.clone());
            }
        }
        // The pruned runs this page spans (also one reaching back before it: refusals read
        // on an earlier page may have been pruned since), for a reader verifying page by page.
        let pruned: Vec<PrunedRun> = chain
            .pruned_overlapping(after, next.unwrap_or(u64::MAX))
            .cloned()
            .collect();
        let facts = json!({
            "events_retained": chain.events.len(),
            "refusals_retained": chain.refusals.len(),
            "refusals_pruned": chain.refusals_pruned,
            "over_budget": chain.over_budget(),
        });
        (events, pruned, next, ChainHead::from(chain), facts)
    });
    let organization_id = (chain_id != CLUSTER_CHAIN).then_some(chain_id);
    let mut chain_json = json!({
        "organization_id": organization_id,
        "anchor_sequence": head.anchor_sequence,
        "anchor_hash": head.anchor_hash,
        "anchor_change_hash": head.anchor_change_hash,
        "head_sequence": head.head_sequence,
        "head_hash": head.head_hash,
        "head_change_hash": head.head_change_hash,
    });
    if let (Some(out), Some(facts)) = (chain_json.as_object_mut(), chain.as_object()) {
        out.extend(facts.clone());
    }
    Ok(Json(json!({
        "data": events,
        "pruned": pruned,
        "pagination": { "next": next.map(|s: u64| format!("{s}.{scope}")) },
        "chain": chain_json,
    })))
}
