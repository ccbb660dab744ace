//! Revocation: once the revocation of a credential (deleting an API key, a user or a service
//! account, or removing a project membership) is acknowledged at `t`, no node accepts the
//! credential for a request invoked after `t + bound`.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::chaos::history::{EventType, Op};
use crate::chaos::workload::CredentialKind;

/// A revoked credential accepted after the bound.
#[derive(Clone, Debug, Serialize)]
pub struct Accepted {
    /// The credential's history key (key, user or service-account id; `membership:<user>`).
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
    /// Credentials whose revocation was acknowledged.
    pub revoked_credentials: usize,
    /// Of those, by kind (`api-key`, `user`, `membership`, `service-account`).
    pub revoked_by_kind: BTreeMap<String, usize>,
    /// Uses of revoked credentials invoked after their revocation was acknowledged.
    pub uses_after_revocation: usize,
    /// Of those, invoked after the bound and refused.
    pub refused_after_bound: usize,
    /// Longest delay seen between an acknowledged revocation and a use still accepted.
    pub max_accepted_delay_ms: f64,
    /// Uses accepted after the bound: violations.
    pub accepted_after_bound: Vec<Accepted>,
}

/// Checks the `use-credential` operations against the acknowledged revocations.
pub fn check(ops: &[Op], bound_ms: f64) -> RevocationReport {
    let mut report = RevocationReport {
        bound_ms,
        ..RevocationReport::default()
    };
    let mut revoked: BTreeMap<&str, f64> = BTreeMap::new();
    for o in ops.iter().filter(|o| o.outcome == EventType::Ok) {
        let (Some(kind), Some(key)) = (CredentialKind::of_revoking_op(&o.f), o.key.as_deref())
        else {
            continue;
        };
        if revoked.insert(key, o.complete_ms).is_none() {
            *report
                .revoked_by_kind
                .entry(kind.name().to_string())
                .or_insert(0) += 1;
        }
    }
    report.revoked_credentials = revoked.len();
    for op in ops.iter().filter(|o| o.f == "use-credential") {
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
            answered_ms: Some(done),
            error: None,
        }
    }

    #[test]
    fn acceptance_within_the_bound_is_measured_and_after_it_is_a_violation() {
        let ops = vec![
            op("delete-key", 100.0, 110.0, None),
            op("use-credential", 300.0, 301.0, Some(true)),
            op("use-credential", 900.0, 901.0, Some(false)),
            op("use-credential", 1500.0, 1501.0, Some(true)),
        ];
        let report = check(&ops, 1000.0);
        assert_eq!(report.revoked_credentials, 1);
        assert_eq!(report.revoked_by_kind["api-key"], 1);
        assert_eq!(report.uses_after_revocation, 3);
        assert_eq!(report.accepted_after_bound.len(), 1);
        assert_eq!(report.accepted_after_bound[0].after_ms, 1390.0);
        assert_eq!(report.max_accepted_delay_ms, 1390.0);
    }

    #[test]
    fn refusals_after_the_bound_are_counted() {
        let ops = vec![
            op("delete-key", 0.0, 10.0, None),
            op("use-credential", 2000.0, 2001.0, Some(false)),
        ];
        let report = check(&ops, 1000.0);
        assert!(report.accepted_after_bound.is_empty());
        assert_eq!(report.refused_after_bound, 1);
    }

    #[test]
    fn every_kind_of_revocation_starts_the_clock_and_uses_before_it_do_not_count() {
        let mut ops = Vec::new();
        for (i, f) in [
            "delete-user",
            "delete-membership",
            "delete-service-account",
            "create-user",
        ]
        .into_iter()
        .enumerate()
        {
            let key = format!("c{i}");
            let mut revoke = op(f, 100.0, 110.0, None);
            revoke.key = Some(key.clone());
            let mut before = op("use-credential", 50.0, 60.0, Some(true));
            before.key = Some(key.clone());
            let mut late = op("use-credential", 1200.0, 1201.0, Some(true));
            late.key = Some(key);
            ops.extend([revoke, before, late]);
        }
        let report = check(&ops, 1000.0);
        // `create-user` revokes nothing; the three others each do.
        assert_eq!(report.revoked_credentials, 3);
        for kind in ["user", "membership", "service-account"] {
            assert_eq!(report.revoked_by_kind[kind], 1, "{kind}");
        }
        assert_eq!(report.uses_after_revocation, 3);
        assert_eq!(report.accepted_after_bound.len(), 3);
    }
}
