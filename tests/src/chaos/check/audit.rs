//! The audit checker: after a schedule has healed, every acknowledged control-plane action of
//! the history has exactly one successful audit event (matched by the request id the client
//! sent), no event claims success for an action that failed or was never asked for, the
//! organization's chain verifies, and every node holds the same chain head.

use std::collections::BTreeMap;

use anyhow::Context;
use conifer_node::audit::{verify_chain, AuditEvent, ChainHead};
use serde::Serialize;
use serde_json::Value;

use crate::chaos::history::{Event, EventType};
use crate::Cluster;

/// The audit operation a history operation performs (the event's `operation`), for the operations that change the
/// control plane (reads are not audited).
pub fn audited_operation(f: &str) -> Option<&'static str> {
    Some(match f {
        "create-key" => "api_key.create",
        "delete-key" => "api_key.delete",
        "create-project" => "project.create",
        "delete-project" => "project.delete",
        "create-user" => "organization.member.create",
        "delete-user" => "organization.member.remove",
        "add-member" => "project.member.add",
        "delete-membership" => "project.member.remove",
        "create-service-account" => "service_account.create",
        "delete-service-account" => "service_account.delete",
        "login" => "auth.login",
        "issue-token" => "auth.token",
        _ => return None,
    })
}

/// What the audit checker found in one schedule.
#[derive(Clone, Debug, Default, Serialize)]
pub struct AuditReport {
    /// Audited operations of the history that were checked.
    pub actions_checked: usize,
    /// Events of the chain that were checked.
    pub events_checked: usize,
    /// Acknowledged actions without a successful event (request ids).
    pub missing: Vec<String>,
    /// Actions with more than one successful event.
    pub duplicated: Vec<String>,
    /// Successful events whose action failed, was never sent, or is another action.
    pub unexplained: Vec<String>,
    /// Chain verification failures and head disagreements.
    pub chain: Vec<String>,
}

impl AuditReport {
    /// Every mismatch found.
    pub fn violations(&self) -> usize {
        self.missing.len() + self.duplicated.len() + self.unexplained.len() + self.chain.len()
    }
}

/// Whether a completed operation certainly changed something (a create, a delete that found
/// its object, a sign-in).
fn changed(completion: &Event) -> bool {
    completion.kind == EventType::Ok && completion.value["found"] != Value::Bool(false)
}

/// Matches the audited operations of `ops` (one schedule's history) against the `events` of
/// the organization's chain.
pub fn check_events(ops: &[Event], events: &[AuditEvent]) -> AuditReport {
    let mut report = AuditReport {
        events_checked: events.len(),
        ..AuditReport::default()
    };
    let mut successes: BTreeMap<&str, Vec<&AuditEvent>> = BTreeMap::new();
    for e in events
        .iter()
        .filter(|e| e.event.outcome.result == "success")
    {
        if let Some(id) = e.request_id.as_deref() {
            successes.entry(id).or_default().push(e);
        }
    }
    // The completion of each request id of the history (its invocation when it never
    // completed).
    let mut last: BTreeMap<&str, &Event> = BTreeMap::new();
    for op in ops {
        if let Some(id) = op.request_id.as_deref() {
            last.insert(id, op);
        }
    }
    for (id, op) in &last {
        let Some(action) = audited_operation(&op.f) else {
            continue;
        };
        report.actions_checked += 1;
        let found = successes.get(id).map_or(&[][..], |v| &v[..]);
        let label = format!("{id} ({} via node {:?}: {:?})", op.f, op.node, op.kind);
        if found.len() > 1 {
            report.duplicated.push(label.clone());
        }
        if let Some(e) = found.iter().find(|e| e.event.operation != action) {
            report
                .unexplained
                .push(format!("{label}: event says {}", e.event.operation));
        }
        match op.kind {
            EventType::Ok if changed(op) && found.is_empty() => report.missing.push(label),
            EventType::Ok if !changed(op) && !found.is_empty() => report.unexplained.push(format!(
                "{label}: answered 'not found' but recorded a success"
            )),
            // An invocation without a completion (a client stopped mid-request) is of
            // unknown outcome, like `info`; a `fail` said the action did not happen.
            EventType::Fail if !found.is_empty() => report
                .unexplained
                .push(format!("{label}: failed but recorded a success")),
            _ => {}
        }
    }
    for (id, found) in &successes {
        let audited = last
            .get(id)
            .is_some_and(|op| audited_operation(&op.f).is_some());
        let ours = found.iter().any(|e| {
            e.actor.principal_type != conifer_node::audit::PrincipalType::System
                && e.event.operation != "cluster.bootstrap"
        });
        if !audited && ours && is_harness_request(ops, id) {
            report.unexplained.push(format!(
                "{id}: success event of a request that is not an audited action"
            ));
        }
    }
    report
}

fn is_harness_request(ops: &[Event], id: &str) -> bool {
    ops.iter().any(|op| op.request_id.as_deref() == Some(id))
}

/// Reads the organization's chain from every node, verifies it from node 1's copy, compares
/// heads, and matches it against `ops`.
pub async fn check(
    cluster: &Cluster,
    nodes: &[u64],
    organization_id: &str,
    ops: &[Event],
) -> anyhow::Result<AuditReport> {
    let (events, head) = read_chain(cluster, nodes[0], organization_id).await?;
    let mut report = check_events(ops, &events);
    if let Err(broken) = verify_chain(&head, &events, &[]) {
        report.chain.push(format!("node {}: {broken}", nodes[0]));
    }
    // Every other node holds the same event at node 1's head (events appended since, by a
    // late batch of refusals, are not compared).
    for node in &nodes[1..] {
        let theirs = hash_at(cluster, *node, organization_id, head.head_sequence).await?;
        if theirs.as_deref() != Some(head.head_hash.as_str()) {
            report.chain.push(format!(
                "node {node} holds {theirs:?} at sequence {} where node {} holds {}",
                head.head_sequence, nodes[0], head.head_hash
            ));
        }
    }
    Ok(report)
}

/// The hash of event `sequence` as node `node` holds it.
async fn hash_at(
    cluster: &Cluster,
    node: u64,
    org: &str,
    sequence: u64,
) -> anyhow::Result<Option<String>> {
    let after = sequence.saturating_sub(1);
    let query = format!("limit=1&after_sequence={after}");
    let page = cluster.audit_page(node, Some(org), &query).await?;
    Ok(page["data"][0]["hash"].as_str().map(str::to_string))
}

async fn read_chain(
    cluster: &Cluster,
    node: u64,
    org: &str,
) -> anyhow::Result<(Vec<AuditEvent>, ChainHead)> {
    let (values, head) = cluster.audit_chain(node, Some(org)).await?;
    let head: ChainHead = serde_json::from_value(head).context("chain head")?;
    let mut events = Vec::new();
    for value in values {
        let event: AuditEvent = serde_json::from_value(value).context("audit event")?;
        // Events appended after the first page are past the head it reported.
        if event.sequence <= head.head_sequence {
            events.push(event);
        }
    }
    Ok((events, head))
}

#[cfg(test)]
mod tests {
    use super::*;
    use conifer_node::audit::{
        build_event, ActorRef, AuditContext, AuditLog, EventClass, EventOutcome, PrincipalType,
        Resource, ResourceType, Verb,
    };

    fn op(index: u64, kind: EventType, f: &str, rid: &str, value: Value) -> Event {
        Event {
            index,
            time_ms: 0.0,
            schedule: 1,
            process: "k1".into(),
            node: Some(1),
            kind,
            f: f.into(),
            key: None,
            value,
            error: None,
            request_id: Some(rid.into()),
        }
    }

    fn event(log: &mut AuditLog, rid: &str, operation: &str, result: &str) {
        let context = AuditContext {
            id: rid.into(),
            time: conifer_node::audit::timestamp(1),
            operation: operation.into(),
            actor: ActorRef {
                principal_type: PrincipalType::Operator,
                principal_id: "op".into(),
                organization_id: None,
                name_hint: None,
            },
            source_ip: None,
            request_id: Some(rid.into()),
            user_agent: None,
            node_id: 1,
        };
        let outcome = if result == "success" {
            EventOutcome::success()
        } else {
            EventOutcome::failure("NOT_FOUND", "gone")
        };
        log.append(
            build_event(
                &context,
                Resource::new(Verb::Create, ResourceType::ApiKey, None),
                outcome,
                conifer_node::audit::EventNames {
                    actor: Some(("operator".into(), "Operator token".into())),
                    organization: None,
                },
            ),
            EventClass::Change,
        );
    }

    fn events(log: &AuditLog) -> Vec<AuditEvent> {
        log.chains
            .values()
            .flat_map(|c| c.events.values().cloned())
            .collect()
    }

    #[test]
    fn matched_actions_and_events_pass() {
        let mut log = AuditLog::default();
        event(&mut log, "a", "api_key.create", "success");
        event(&mut log, "b", "api_key.delete", "failure");
        let ops = vec![
            op(0, EventType::Invoke, "create-key", "a", Value::Null),
            op(1, EventType::Ok, "create-key", "a", Value::Null),
            op(
                2,
                EventType::Ok,
                "delete-key",
                "b",
                serde_json::json!({"found": false}),
            ),
            op(3, EventType::Info, "create-key", "c", Value::Null),
            op(4, EventType::Ok, "get-key", "d", Value::Null),
        ];
        let report = check_events(&ops, &events(&log));
        assert_eq!(report.violations(), 0, "{report:?}");
        assert_eq!(report.actions_checked, 3);
    }

    #[test]
    fn missing_duplicated_and_unexplained_events_are_reported() {
        let mut log = AuditLog::default();
        event(&mut log, "dup", "api_key.create", "success");
        event(&mut log, "dup", "api_key.create", "success");
        event(&mut log, "failed", "api_key.create", "success");
        event(&mut log, "wrong", "project.delete", "success");
        event(&mut log, "read", "api_key.create", "success");
        let ops = vec![
            op(0, EventType::Ok, "create-key", "acked", Value::Null),
            op(1, EventType::Ok, "create-key", "dup", Value::Null),
            op(2, EventType::Fail, "create-key", "failed", Value::Null),
            op(3, EventType::Ok, "create-key", "wrong", Value::Null),
            op(4, EventType::Ok, "get-key", "read", Value::Null),
        ];
        let report = check_events(&ops, &events(&log));
        assert_eq!(report.missing.len(), 1, "{report:?}");
        assert_eq!(report.duplicated.len(), 1, "{report:?}");
        assert_eq!(report.unexplained.len(), 3, "{report:?}");
    }
}
