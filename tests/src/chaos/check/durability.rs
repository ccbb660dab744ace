//! Durability: after the faults are healed, every acknowledged write is still there unless
//! a later write, update or delete of the same key may have replaced it.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::chaos::history::{EventType, Op};

/// Operations that change a vector's value.
const MUTATIONS: &[&str] = &["write", "update", "delete"];

/// An acknowledged write missing after healing.
#[derive(Clone, Debug, Serialize)]
pub struct Lost {
    /// Vector id.
    pub key: String,
    /// Value whose write was acknowledged.
    pub value: i64,
    /// History index of the acknowledgement.
    pub ack_index: u64,
    /// What the final read found instead.
    pub found: Option<i64>,
}

/// What the durability check found.
#[derive(Clone, Debug, Default, Serialize)]
pub struct DurabilityReport {
    /// Acknowledged writes checked.
    pub acknowledged_writes: usize,
    /// Acknowledged writes that had been superseded (not expected to survive).
    pub superseded: usize,
    /// Acknowledged writes lost.
    pub lost: Vec<Lost>,
    /// Keys with no successful final read (not checked).
    pub keys_without_final_read: Vec<String>,
}

/// Compares acknowledged writes with `final_values` (key → value found by a linearizable
/// read after healing, None for absent).
pub fn check(ops: &[Op], final_values: &BTreeMap<String, Option<i64>>) -> DurabilityReport {
    let mut report = DurabilityReport::default();
    let mut by_key: BTreeMap<&str, Vec<&Op>> = BTreeMap::new();
    for op in ops {
        if MUTATIONS.contains(&op.f.as_str()) && op.outcome != EventType::Fail {
            if let Some(key) = &op.key {
                by_key.entry(key).or_default().push(op);
            }
        }
    }
    for (key, mutations) in by_key {
        let acked: Vec<&&Op> = mutations
            .iter()
            .filter(|o| o.f == "write" && o.outcome == EventType::Ok)
            .collect();
        if acked.is_empty() {
            continue;
        }
        let Some(found) = final_values.get(key) else {
            report.keys_without_final_read.push(key.to_string());
            continue;
        };
        for w in acked {
            report.acknowledged_writes += 1;
            let Some(value) = w.input["value"].as_i64() else {
                continue;
            };
            if *found == Some(value) {
                continue;
            }
            // Another mutation may be ordered after this write if it had not completed
            // before the write was invoked (unknown outcomes never complete).
            let replaced = mutations
                .iter()
                .any(|o| o.invoke_index != w.invoke_index && o.complete_index > w.invoke_index);
            if replaced {
                report.superseded += 1;
            } else {
                report.lost.push(Lost {
                    key: key.to_string(),
                    value,
                    ack_index: w.complete_index,
                    found: *found,
                });
            }
        }
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn op(f: &str, key: &str, value: i64, inv: u64, comp: u64, outcome: EventType) -> Op {
        Op {
            process: "c0".into(),
            node: Some(1),
            f: f.into(),
            key: Some(key.into()),
            input: json!({ "value": value }),
            output: json!(null),
            outcome,
            invoke_index: inv,
            complete_index: comp,
            invoke_ms: inv as f64,
            complete_ms: comp as f64,
            answered_ms: Some(comp as f64),
            error: None,
        }
    }

    #[test]
    fn an_acknowledged_write_missing_at_the_end_is_lost() {
        let ops = vec![op("write", "a", 1, 0, 1, EventType::Ok)];
        let finals = BTreeMap::from([("a".to_string(), None)]);
        let report = check(&ops, &finals);
        assert_eq!(report.lost.len(), 1);
        assert_eq!(report.lost[0].value, 1);
    }

    #[test]
    fn a_later_or_concurrent_mutation_supersedes_a_write() {
        let ops = vec![
            op("write", "a", 1, 0, 3, EventType::Ok),
            op("delete", "a", 0, 2, u64::MAX, EventType::Info),
            op("write", "b", 5, 4, 5, EventType::Ok),
            op("write", "b", 6, 6, 7, EventType::Fail),
        ];
        let finals = BTreeMap::from([("a".to_string(), None), ("b".to_string(), Some(5))]);
        let report = check(&ops, &finals);
        assert!(report.lost.is_empty(), "{report:?}");
        assert_eq!(report.superseded, 1);
        assert_eq!(report.acknowledged_writes, 2);
    }

    #[test]
    fn a_mutation_finished_before_the_write_does_not_excuse_it() {
        let ops = vec![
            op("delete", "a", 0, 0, 1, EventType::Ok),
            op("write", "a", 1, 2, 3, EventType::Ok),
        ];
        let finals = BTreeMap::from([("a".to_string(), None)]);
        assert_eq!(check(&ops, &finals).lost.len(), 1);
    }
}
