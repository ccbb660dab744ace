//! Revocation: once the deletion of an API key is acknowledged at `t`, no node accepts the
//! key for a request invoked after `t + bound`.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::chaos::history::{EventType, Op};

/// A deleted key accepted after the bound.
#[derive(Clone, Debug, Serialize)]
pub struct Accepted {
    /// API key id.
    pub key: String,
    /// Node that accepted it.
    pub node: Option<u64>,
    /// Milliseconds between the acknowledged delete and the accepted request's invocation.
    pub after_ms: f64,
    /// History index of the accepted request's invocation.
    pub invoke_index: u64,
}

/// What the revocation check found.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RevocationReport {
    /// The bound checked, in ms.
    pub bound_ms: f64,
    /// Keys whose deletion was acknowledged.
    pub revoked_keys: usize,
    /// Uses of revoked keys invoked after their deletion was acknowledged.
    pub uses_after_revocation: usize,
    /// Of those, invoked after the bound and refused.
    pub refused_after_bound: usize,
    /// Longest delay seen between an acknowledged delete and a use it still accepted.
    pub max_accepted_delay_ms: f64,
    /// Uses accepted after the bound: violations.
    pub accepted_after_bound: Vec<Accepted>,
}

/// Checks the `use-key` operations against the acknowledged `delete-key` operations.
pub fn check(ops: &[Op], bound_ms: f64) -> RevocationReport {
    let mut report = RevocationReport {
        bound_ms,
        ..RevocationReport::default()
    };
    let revoked: BTreeMap<&str, f64> = ops
        .iter()
        .filter(|o| o.f == "delete-key" && o.outcome == EventType::Ok)
        .filter_map(|o| Some((o.key.as_deref()?, o.complete_ms)))
        .collect();
    report.revoked_keys = revoked.len();
    for op in ops.iter().filter(|o| o.f == "use-key") {
        let Some(acked) = op.key.as_deref().and_then(|k| revoked.get(k)) else {
            continue;
        };
        if op.invoke_ms <= *acked {
            continue;
        }
        report.uses_after_revocation += 1;
        let after = op.invoke_ms - acked;
        let accepted = op.outcome == EventType::Ok && op.output["accepted"] == true;
        if accepted {
            report.max_accepted_delay_ms = report.max_accepted_delay_ms.max(after);
        }
        if after > bound_ms {
            if accepted {
                report.accepted_after_bound.push(Accepted {
                    key: op.key.clone().unwrap_or_default(),
                    node: op.node,
                    after_ms: after,
                    invoke_index: op.invoke_index,
                });
            } else if op.outcome == EventType::Ok {
                report.refused_after_bound += 1;
            }
        }
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn op(f: &str, at: f64, done: f64, accepted: Option<bool>) -> Op {
        Op {
            process: "r".into(),
            node: Some(2),
            f: f.into(),
            key: Some("k1".into()),
            input: json!(null),
            output: json!({ "accepted": accepted, "found": true }),
            outcome: EventType::Ok,
            invoke_index: at as u64,
            complete_index: done as u64,
            invoke_ms: at,
            complete_ms: done,
        }
    }

    #[test]
    fn acceptance_within_the_bound_is_measured_and_after_it_is_a_violation() {
        let ops = vec![
            op("delete-key", 100.0, 110.0, None),
            op("use-key", 300.0, 301.0, Some(true)),
            op("use-key", 900.0, 901.0, Some(false)),
            op("use-key", 1500.0, 1501.0, Some(true)),
        ];
        let report = check(&ops, 1000.0);
        assert_eq!(report.revoked_keys, 1);
        assert_eq!(report.uses_after_revocation, 3);
        assert_eq!(report.accepted_after_bound.len(), 1);
        assert_eq!(report.accepted_after_bound[0].after_ms, 1390.0);
        assert_eq!(report.max_accepted_delay_ms, 1390.0);
    }

    #[test]
    fn refusals_after_the_bound_are_counted() {
        let ops = vec![
            op("delete-key", 0.0, 10.0, None),
            op("use-key", 2000.0, 2001.0, Some(false)),
        ];
        let report = check(&ops, 1000.0);
        assert!(report.accepted_after_bound.is_empty());
        assert_eq!(report.refused_after_bound, 1);
    }
}
