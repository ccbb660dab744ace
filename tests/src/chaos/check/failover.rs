//! Failover of writes while a leader is cut off: a write sent to a node on the majority side
//! while a partition isolates a leader (of group 0 or of the schedule's shard) must be
//! answered — applied through the new leader, or refused as unavailable with its outcome
//! unknown — before its client gives up waiting. A node forwards such a write to the leader
//! it knows; the HTTP/2 keepalive of its peer channel notices the cut (within
//! `conifer_node::tls::PEER_KEEPALIVE_INTERVAL + PEER_KEEPALIVE_TIMEOUT`), and a cut-off
//! leader gives up on writes it cannot commit once it has heard from no quorum for an
//! election timeout. A write left unanswered at the client's timeout is a violation; the
//! answer times are reported as measured.

use serde::Serialize;

use crate::chaos::history::{Event, EventType, Op};
use crate::chaos::workload::NO_ANSWER;

/// The faults that cut one leader off from every other node.
pub const ISOLATING_FAULTS: &[&str] = &["isolate-control-leader", "isolate-shard-leader"];
/// The data-plane operations that change the shard (and so go through its leader).
const WRITES: &[&str] = &["write", "delete", "update"];

/// Writes on the majority side during isolations of a leader.
#[derive(Clone, Debug, Default, Serialize)]
pub struct FailoverReport {
    /// Isolations of a leader that were applied.
    pub isolations: usize,
    /// Writes in flight during one (sent before it was healed, answered after it began),
    /// on a node other than the isolated one.
    pub writes: usize,
    /// Of those, applied (answered ok).
    pub applied: usize,
    /// Of those, answered with an error (refused, or unavailable with the outcome unknown).
    pub refused: usize,
    /// Of those, unanswered when the client gave up: the violations.
    pub unanswered: Vec<Unanswered>,
    /// Median time to an answer, over the answered writes (ms).
    pub p50_answer_ms: f64,
    /// 99th percentile of the time to an answer (ms).
    pub p99_answer_ms: f64,
    /// Longest time to an answer (ms).
    pub max_answer_ms: f64,
}

/// A write its client gave up on while a leader was cut off.
#[derive(Clone, Debug, Serialize)]
pub struct Unanswered {
    /// Client.
    pub process: String,
    /// Node it was sent to.
    pub node: Option<u64>,
    /// When it was sent (ms since the run started).
    pub invoke_ms: f64,
    /// The node the fault isolated.
    pub isolated: u64,
}

/// One applied isolation: the node cut off, from injection to heal (ms since the run started).
struct Window {
    isolated: u64,
    from_ms: f64,
    to_ms: f64,
}

/// The windows in which `events` (the nemesis's among them) had a leader isolated.
fn windows(events: &[Event]) -> Vec<Window> {
    let mut windows = Vec::new();
    let mut open: Option<Window> = None;
    for e in events.iter().filter(|e| e.process == "nemesis") {
        if !ISOLATING_FAULTS.contains(&e.f.as_str()) {
            continue;
        }
        match e.kind {
            EventType::Invoke if e.value["applied"].as_bool() == Some(true) => {
                if let Some(isolated) = e.node {
                    open = Some(Window {
                        isolated,
                        from_ms: e.time_ms,
                        to_ms: f64::INFINITY,
                    });
                }
            }
            EventType::Info if e.value["healed"].as_bool() == Some(true) => {
                if let Some(mut w) = open.take() {
                    w.to_ms = e.time_ms;
                    windows.push(w);
                }
            }
            _ => {}
        }
    }
    windows.extend(open);
    windows
}

/// The value at quantile `q` (0..=1) of sorted `values` (nearest rank); 0 when empty.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// Checks the writes of `ops` against the isolations among `events`.
pub fn check(events: &[Event], ops: &[Op]) -> FailoverReport {
    let windows = windows(events);
    let mut report = FailoverReport {
        isolations: windows.len(),
        ..FailoverReport::default()
    };
    let mut answer_ms = Vec::new();
    for op in ops.iter().filter(|o| WRITES.contains(&o.f.as_str())) {
        // In flight at some time during the isolation: sent before it was healed, and not
        // answered before it began (a write sent just before the cut hangs like one sent
        // after it).
        let answered = op.answered_ms.unwrap_or(f64::INFINITY);
        let Some(window) = windows
            .iter()
            .find(|w| op.invoke_ms < w.to_ms && answered > w.from_ms)
        else {
            continue;
        };
        if op.node == Some(window.isolated) {
            continue;
        }
        report.writes += 1;
        let gave_up = op
            .error
            .as_deref()
            .is_some_and(|e| e.starts_with(NO_ANSWER));
        match op.answered_ms {
            Some(at) if !gave_up => {
                answer_ms.push(at - op.invoke_ms);
                if op.outcome == EventType::Ok {
                    report.applied += 1;
                } else {
                    report.refused += 1;
                }
            }
            // Still waiting when the schedule ended, or given up on.
            _ => report.unanswered.push(Unanswered {
                process: op.process.clone(),
                node: op.node,
                invoke_ms: op.invoke_ms,
                isolated: window.isolated,
            }),
        }
    }
    answer_ms.sort_by(f64::total_cmp);
    report.p50_answer_ms = quantile(&answer_ms, 0.5);
    report.p99_answer_ms = quantile(&answer_ms, 0.99);
    report.max_answer_ms = answer_ms.last().copied().unwrap_or(0.0);
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chaos::history::pair;
    use serde_json::{json, Value};

    fn event(index: u64, time_ms: f64, process: &str, kind: EventType, f: &str) -> Event {
        Event {
            index,
            time_ms,
            schedule: 0,
            process: process.into(),
            node: Some(1),
            kind,
            f: f.into(),
            key: Some("k".into()),
            value: Value::Null,
            error: None,
            request_id: None,
        }
    }

    #[test]
    fn writes_on_the_majority_side_are_timed_and_unanswered_ones_reported() {
        let mut isolate = event(
            0,
            100.0,
            "nemesis",
            EventType::Invoke,
            "isolate-shard-leader",
        );
        isolate.node = Some(3);
        isolate.value = json!({ "applied": true });
        let mut heal = event(
            9,
            9_000.0,
            "nemesis",
            EventType::Info,
            "isolate-shard-leader",
        );
        heal.value = json!({ "healed": true });
        let mut answered_late = event(4, 2_900.0, "c0", EventType::Info, "write");
        answered_late.error = Some("503: may or may not have been applied".into());
        let mut gave_up = event(6, 5_300.0, "c1", EventType::Info, "write");
        gave_up.error = Some(format!("{NO_ANSWER}: timed out"));
        let mut on_isolated = event(7, 300.0, "c2", EventType::Invoke, "write");
        on_isolated.node = Some(3);
        let events = vec![
            isolate,
            event(1, 200.0, "c0", EventType::Invoke, "write"),
            event(2, 300.0, "c1", EventType::Invoke, "write"),
            on_isolated,
            answered_late,
            event(5, 3_000.0, "c0", EventType::Invoke, "write"),
            gave_up,
            event(8, 3_400.0, "c0", EventType::Ok, "write"),
            // Answered before the isolation: not counted.
            event(10, 50.0, "c3", EventType::Invoke, "write"),
            event(11, 80.0, "c3", EventType::Ok, "write"),
            // Sent just before the cut, answered after it: counted.
            event(12, 90.0, "c4", EventType::Invoke, "write"),
            event(13, 1_200.0, "c4", EventType::Ok, "write"),
            heal,
        ];
        let report = check(&events, &pair(&events));
        assert_eq!(report.isolations, 1);
        assert_eq!(report.writes, 4, "{report:?}");
        assert_eq!((report.applied, report.refused), (2, 1));
        assert_eq!(report.unanswered.len(), 1);
        assert_eq!(report.unanswered[0].process, "c1");
        assert_eq!(report.unanswered[0].isolated, 3);
        assert_eq!(report.max_answer_ms, 2_700.0);
        // 400, 1,110, 2,700.
        assert_eq!(report.p50_answer_ms, 1_110.0);
    }

    #[test]
    fn an_isolation_that_found_no_leader_opens_no_window() {
        let mut isolate = event(
            0,
            100.0,
            "nemesis",
            EventType::Invoke,
            "isolate-shard-leader",
        );
        isolate.value = json!({ "applied": false });
        let events = vec![isolate, event(1, 200.0, "c0", EventType::Invoke, "write")];
        let report = check(&events, &pair(&events));
        assert_eq!((report.isolations, report.writes), (0, 0));
    }

    #[test]
    fn quantiles_use_the_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&v, 0.5), 50.0);
        assert_eq!(quantile(&v, 0.99), 99.0);
        assert_eq!(quantile(&[], 0.5), 0.0);
    }
}
