//! Linearizability of one register per key, checked with the Wing–Gong / Lowe search
//! (the algorithm of Knossos and Porcupine): find an order of the operations that respects
//! real time (an operation that completed before another was invoked comes first) in which
//! every result is what a single register would have answered. Operations with an unknown
//! outcome may take effect at any point after their invocation, or not at all.

use std::collections::{BTreeMap, HashSet};

use serde_json::Value;

use crate::chaos::history::{EventType, Op};

/// Longest search (linearization attempts) per key before the key is reported as unchecked.
pub const MAX_SEARCH_STEPS_PER_KEY: u64 = 2_000_000;

/// What one operation does to, or saw of, the register.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum RegisterOp {
    /// Set the value.
    Write(i64),
    /// Clear the value; `found` says whether the value was set (None: not observed).
    Delete { found: Option<bool> },
    /// Set the value if it is set; `found` says whether it was (None: not observed).
    Update { value: i64, found: Option<bool> },
    /// Observed the value (None: no value).
    Read(Option<i64>),
}

impl RegisterOp {
    /// Applies the operation to `state`; None when its observed result contradicts `state`.
    fn step(&self, state: Option<i64>) -> Option<Option<i64>> {
        match *self {
            RegisterOp::Write(v) => Some(Some(v)),
            RegisterOp::Delete { found } => match found {
                Some(f) if f != state.is_some() => None,
                _ => Some(None),
            },
            RegisterOp::Update { value, found } => match (found, state) {
                (Some(f), s) if f != s.is_some() => None,
                (_, Some(_)) => Some(Some(value)),
                (_, None) => Some(None),
            },
            RegisterOp::Read(seen) => (seen == state).then_some(state),
        }
    }
}

/// How a history operation maps onto the register model. Adding a workload operation to the
/// linearizability check is one arm here.
pub fn register_op(op: &Op) -> Option<RegisterOp> {
    let ok = op.outcome == EventType::Ok;
    let int = |v: &Value| v.as_i64();
    let found = || {
        if ok {
            op.output["found"].as_bool()
        } else {
            None
        }
    };
    match op.f.as_str() {
        "write" => Some(RegisterOp::Write(int(&op.input["value"])?)),
        "create-key" | "create-project" => Some(RegisterOp::Write(1)),
        "delete" | "delete-key" | "delete-project" => Some(RegisterOp::Delete { found: found() }),
        "update" => Some(RegisterOp::Update {
            value: int(&op.input["value"])?,
            found: found(),
        }),
        "read" | "query" | "get-key" | "get-project" if ok => {
            Some(RegisterOp::Read(int(&op.output["value"])))
        }
        _ => None,
    }
}

/// The verdict on one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Some order explains every result.
    Linearizable,
    /// No order does: after the longest prefix the search could linearize, this operation
    /// (history index of its invocation) could not be placed.
    Violation { stuck_at_invoke_index: u64 },
    /// The search gave up after [`MAX_SEARCH_STEPS_PER_KEY`].
    Unchecked,
}

struct Entry {
    op: usize,
    is_call: bool,
    prev: usize,
    next: usize,
}

/// Checks the operations of one key (failed operations and reads of unknown outcome must
/// already be left out; `ops` are `(invoke_index, complete_index, op)` with `u64::MAX` for
/// an unknown completion).
pub fn check_register(ops: &[(u64, u64, RegisterOp)]) -> Verdict {
    if ops.is_empty() {
        return Verdict::Linearizable;
    }
    // Entries: a call and a return per operation, in history order; index 0 is the head.
    let mut points: Vec<(u64, bool, usize)> = Vec::with_capacity(ops.len() * 2);
    for (i, (inv, comp, _)) in ops.iter().enumerate() {
        points.push((*inv, true, i));
        points.push((*comp, false, i));
    }
    // Calls before returns at equal positions (only unknown completions share u64::MAX).
    points.sort_by_key(|(at, is_call, op)| (*at, !*is_call, *op));
    let n = points.len();
    let mut entries: Vec<Entry> = Vec::with_capacity(n + 1);
    entries.push(Entry {
        op: usize::MAX,
        is_call: false,
        prev: usize::MAX,
        next: 1,
    });
    let mut return_of = vec![0usize; ops.len()];
    for (k, (_, is_call, op)) in points.iter().enumerate() {
        let pos = k + 1;
        entries.push(Entry {
            op: *op,
            is_call: *is_call,
            prev: pos - 1,
            next: if pos == n { usize::MAX } else { pos + 1 },
        });
        if !*is_call {
            return_of[*op] = pos;
        }
    }
    let words = ops.len().div_ceil(64);
    let mut linearized = vec![0u64; words];
    let mut cache: HashSet<(Vec<u64>, Option<i64>)> = HashSet::new();
    let mut stack: Vec<(usize, Option<i64>)> = Vec::new();
    let mut state: Option<i64> = None;
    let mut cursor = entries[0].next;
    let mut steps = 0u64;
    let mut deepest: (usize, u64) = (0, 0);

    let lift = |entries: &mut Vec<Entry>, call: usize, ret: usize| {
        for pos in [call, ret] {
            let (prev, next) = (entries[pos].prev, entries[pos].next);
            entries[prev].next = next;
            if next != usize::MAX {
                entries[next].prev = prev;
            }
        }
    };
    let unlift = |entries: &mut Vec<Entry>, call: usize, ret: usize| {
        for pos in [ret, call] {
            let (prev, next) = (entries[pos].prev, entries[pos].next);
            entries[prev].next = pos;
            if next != usize::MAX {
                entries[next].prev = pos;
            }
        }
    };

    while entries[0].next != usize::MAX {
        steps += 1;
        if steps > MAX_SEARCH_STEPS_PER_KEY {
            return Verdict::Unchecked;
        }
        if cursor == usize::MAX {
            // Only reachable if every remaining entry is a call that cannot be placed and no
            // return forces a backtrack: treat like reaching a return.
            match stack.pop() {
                None => break,
                Some((call, prev_state)) => {
                    let op = entries[call].op;
                    unlift(&mut entries, call, return_of[op]);
                    linearized[op / 64] &= !(1 << (op % 64));
                    state = prev_state;
                    cursor = entries[call].next;
                    continue;
                }
            }
        }
        let (is_call, op) = (entries[cursor].is_call, entries[cursor].op);
        if is_call {
            if let Some(next_state) = ops[op].2.step(state) {
                let mut with = linearized.clone();
                with[op / 64] |= 1 << (op % 64);
                if cache.insert((with.clone(), next_state)) {
                    stack.push((cursor, state));
                    linearized = with;
                    state = next_state;
                    lift(&mut entries, cursor, return_of[op]);
                    cursor = entries[0].next;
                    continue;
                }
            }
            cursor = entries[cursor].next;
        } else {
            // A return reached before its operation was placed: undo the last placement.
            // The operation that could not be placed after the longest prefix is the one
            // reported.
            if stack.len() >= deepest.0 {
                deepest = (stack.len(), ops[op].0);
            }
            let Some((call, prev_state)) = stack.pop() else {
                return Verdict::Violation {
                    stuck_at_invoke_index: deepest.1,
                };
            };
            let op = entries[call].op;
            unlift(&mut entries, call, return_of[op]);
            linearized[op / 64] &= !(1 << (op % 64));
            state = prev_state;
            cursor = entries[call].next;
        }
    }
    if entries[0].next == usize::MAX {
        Verdict::Linearizable
    } else {
        Verdict::Violation {
            stuck_at_invoke_index: deepest.1,
        }
    }
}

/// One key's verdict, for the report.
#[derive(Clone, Debug, serde::Serialize)]
pub struct KeyResult {
    /// The key.
    pub key: String,
    /// Operations checked.
    pub ops: usize,
    /// `linearizable`, `violation` or `unchecked`.
    pub verdict: String,
    /// History index where the search got stuck (violations).
    pub at_index: Option<u64>,
}

/// The linearizability check of one schedule: counts, and the keys that did not pass.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct LinearizabilityReport {
    /// Keys checked.
    pub keys: usize,
    /// Operations checked.
    pub ops: usize,
    /// Keys no order explains.
    pub violations: Vec<KeyResult>,
    /// Keys the search gave up on.
    pub unchecked: Vec<KeyResult>,
}

/// Checks every key of `ops` and keeps the keys that did not pass.
pub fn check(ops: &[Op]) -> LinearizabilityReport {
    let results = check_all(ops);
    LinearizabilityReport {
        keys: results.len(),
        ops: results.iter().map(|k| k.ops).sum(),
        violations: results
            .iter()
            .filter(|k| k.verdict == "violation")
            .cloned()
            .collect(),
        unchecked: results
            .iter()
            .filter(|k| k.verdict == "unchecked")
            .cloned()
            .collect(),
    }
}

/// Checks every key of `ops` (grouped by `key`, filtered through [`register_op`]).
pub fn check_all(ops: &[Op]) -> Vec<KeyResult> {
    let mut by_key: BTreeMap<String, Vec<(u64, u64, RegisterOp)>> = BTreeMap::new();
    for op in ops {
        if op.outcome == EventType::Fail {
            continue;
        }
        let (Some(key), Some(reg)) = (op.key.as_ref(), register_op(op)) else {
            continue;
        };
        by_key
            .entry(key.clone())
            .or_default()
            .push((op.invoke_index, op.complete_index, reg));
    }
    by_key
        .into_iter()
        .map(|(key, ops)| {
            let verdict = check_register(&ops);
            let (name, at) = match verdict {
                Verdict::Linearizable => ("linearizable", None),
                Verdict::Violation {
                    stuck_at_invoke_index,
                } => ("violation", Some(stuck_at_invoke_index)),
                Verdict::Unchecked => ("unchecked", None),
            };
            KeyResult {
                key,
                ops: ops.len(),
                verdict: name.to_string(),
                at_index: at,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use RegisterOp::*;

    #[test]
    fn sequential_history_is_linearizable() {
        let ops = vec![
            (0, 1, Write(1)),
            (2, 3, Read(Some(1))),
            (4, 5, Delete { found: None }),
            (6, 7, Read(None)),
        ];
        assert_eq!(check_register(&ops), Verdict::Linearizable);
    }

    #[test]
    fn stale_read_after_acknowledged_write_is_a_violation() {
        let ops = vec![(0, 1, Write(1)), (2, 3, Write(2)), (4, 5, Read(Some(1)))];
        assert_eq!(
            check_register(&ops),
            Verdict::Violation {
                stuck_at_invoke_index: 4
            }
        );
    }

    #[test]
    fn concurrent_write_may_order_either_way() {
        // write 2 overlaps both reads: read 1 then read 2 is fine, read 2 then read 1 is not.
        let ok = vec![
            (0, 1, Write(1)),
            (2, 9, Write(2)),
            (3, 4, Read(Some(1))),
            (5, 6, Read(Some(2))),
        ];
        assert_eq!(check_register(&ok), Verdict::Linearizable);
        let bad = vec![
            (0, 1, Write(1)),
            (2, 9, Write(2)),
            (3, 4, Read(Some(2))),
            (5, 6, Read(Some(1))),
        ];
        assert!(matches!(check_register(&bad), Verdict::Violation { .. }));
    }

    #[test]
    fn unknown_write_may_take_effect_late_or_never() {
        let late = vec![
            (0, u64::MAX, Write(7)),
            (1, 2, Read(None)),
            (3, 4, Read(Some(7))),
        ];
        assert_eq!(check_register(&late), Verdict::Linearizable);
        let never = vec![(0, u64::MAX, Write(7)), (1, 2, Read(None))];
        assert_eq!(check_register(&never), Verdict::Linearizable);
        let undone = vec![
            (0, u64::MAX, Write(7)),
            (1, 2, Read(Some(7))),
            (3, 4, Read(None)),
        ];
        assert!(matches!(check_register(&undone), Verdict::Violation { .. }));
    }

    #[test]
    fn delete_and_update_report_what_they_found() {
        let ok = vec![
            (
                0,
                1,
                Update {
                    value: 3,
                    found: Some(false),
                },
            ),
            (2, 3, Write(1)),
            (
                4,
                5,
                Update {
                    value: 3,
                    found: Some(true),
                },
            ),
            (6, 7, Read(Some(3))),
            (8, 9, Delete { found: Some(true) }),
            (10, 11, Delete { found: Some(false) }),
        ];
        assert_eq!(check_register(&ok), Verdict::Linearizable);
        let bad = vec![(0, 1, Write(1)), (2, 3, Delete { found: Some(false) })];
        assert!(matches!(check_register(&bad), Verdict::Violation { .. }));
    }
}
