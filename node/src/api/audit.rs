//! The audit log at the front door: what a request tells about itself (address, request id,
//! user agent), the actor a principal is, and the query routes `GET /admin/audit-logs` (an organization's chain, `OrgOwner`)
//! and `GET /admin/cluster/audit-logs` (the cluster chain, operator).

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::access::{Caller, ClientAddr};
use super::{ApiError, ApiState};
use crate::audit::{
    self, ActorRef, AuditContext, ChainHead, Filter, PrincipalType, PrunedRun, ResourceType, Verb,
    CLUSTER_CHAIN,
};
use crate::auth::Principal;
use crate::policy::Target;

/// Header carrying a client's request id; echoed on every response.
pub const REQUEST_ID_HEADER: &str = "x-request-id";
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
    /// When the authentication middleware received the request: where the data plane's
    /// `server-timing` spans `receive` and `total` start.
    pub arrived: std::time::Instant,
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
            arrived: std::time::Instant::now(),
        }
    }

    /// The same, received at `arrived`.
    pub fn with_arrival(mut self, arrived: std::time::Instant) -> Self {
        self.arrived = arrived;
        self
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
        Principal::Member(m) => ActorRef::member(m.kind.into(), &m.id, &m.organization_id),
        Principal::ApiKey(k) => ActorRef {
            principal_type: PrincipalType::ApiKey,
            principal_id: k.id.clone(),
            // Resolved from the key's project at apply.
            organization_id: None,
            name_hint: None,
        },
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
