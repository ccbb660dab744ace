//! The history of a chaos run: every operation's invocation and completion, and every fault,
//! in the order they happened, written as JSON lines.
//!
//! A client records `invoke` before it sends a request and `ok` / `fail` / `info` after the
//! answer (`info`: the outcome is unknown — a timeout or an error that does not say whether
//! the change happened). Events carry a global sequence number taken under one lock, so an
//! operation that completed before another was invoked has a smaller completion index than
//! that invocation: the real-time order the checkers need.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// What an event says about its operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventType {
    /// The client is about to send the request.
    Invoke,
    /// The operation happened, with this result.
    Ok,
    /// The operation certainly did not happen.
    Fail,
    /// The outcome is unknown: the operation may or may not have happened.
    Info,
}

/// One line of `history.jsonl`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Event {
    /// Position in the history (0, 1, 2, …).
    pub index: u64,
    /// Milliseconds since the run started.
    pub time_ms: f64,
    /// Which schedule of the run.
    pub schedule: u32,
    /// The client (`c3`), or `nemesis`.
    pub process: String,
    /// Node the request went to (the node a fault hit, for the nemesis).
    pub node: Option<u64>,
    /// Event type.
    #[serde(rename = "type")]
    pub kind: EventType,
    /// Operation (`write`, `read`, `delete`, `update`, `create-key`, `use-credential`, …) or fault.
    pub f: String,
    /// The object operated on: a vector id, an API key id.
    pub key: Option<String>,
    /// The value written, or the value read (completion), as JSON.
    pub value: Value,
    /// Why the operation failed or is unknown.
    pub error: Option<String>,
    /// The `X-Request-Id` the request carried (control-plane operations), which its audit
    /// event must carry too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

/// The shared, append-only history of a run.
#[derive(Clone)]
pub struct Recorder {
    inner: Arc<Mutex<Inner>>,
    started: Instant,
}

struct Inner {
    events: Vec<Event>,
    schedule: u32,
    next_index: u64,
}

/// What a client fills in for one event; [`Recorder::record`] adds index, time and schedule.
#[derive(Clone, Debug, Default)]
pub struct Entry {
    /// The client or `nemesis`.
    pub process: String,
    /// Node addressed.
    pub node: Option<u64>,
    /// Operation or fault name.
    pub f: String,
    /// Object.
    pub key: Option<String>,
    /// Value.
    pub value: Value,
    /// Error text.
    pub error: Option<String>,
    /// Request id sent.
    pub request_id: Option<String>,
}

impl Recorder {
    /// An empty history whose clock starts now.
    pub fn new() -> Self {
        Self {
            inner: Arc::new(Mutex::new(Inner {
                events: Vec::new(),
                schedule: 0,
                next_index: 0,
            })),
            started: Instant::now(),
        }
    }

    /// Marks the events that follow as belonging to schedule `n`.
    pub fn set_schedule(&self, n: u32) {
        self.lock().schedule = n;
    }

    /// Appends an event and returns its index.
    pub fn record(&self, kind: EventType, entry: Entry) -> u64 {
        let mut inner = self.lock();
        let index = inner.next_index;
        inner.next_index += 1;
        let event = Event {
            index,
            time_ms: self.started.elapsed().as_secs_f64() * 1e3,
            schedule: inner.schedule,
            process: entry.process,
            node: entry.node,
            kind,
            f: entry.f,
            key: entry.key,
            value: entry.value,
            error: entry.error,
            request_id: entry.request_id,
        };
        inner.events.push(event);
        index
    }

    /// Removes the events of schedules up to `n` from memory and appends them as JSON lines
    /// to `path` (a long run keeps only the current schedule in memory).
    pub fn flush_jsonl(&self, n: u32, path: &Path) -> anyhow::Result<()> {
        use std::io::Write;
        let flushed: Vec<Event> = {
            let mut inner = self.lock();
            let (done, kept) = std::mem::take(&mut inner.events)
                .into_iter()
                .partition(|e| e.schedule <= n);
            inner.events = kept;
            done
        };
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        let mut out = std::io::BufWriter::new(file);
        for event in &flushed {
            serde_json::to_writer(&mut out, event)?;
            out.write_all(b"\n")?;
        }
        out.flush()?;
        Ok(())
    }

    /// The events of schedule `n`.
    pub fn schedule_events(&self, n: u32) -> Vec<Event> {
        self.lock()
            .events
            .iter()
            .filter(|e| e.schedule == n)
            .cloned()
            .collect()
    }

    /// Milliseconds since the run started.
    pub fn now_ms(&self) -> f64 {
        self.started.elapsed().as_secs_f64() * 1e3
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Default for Recorder {
    fn default() -> Self {
        Self::new()
    }
}

/// An operation assembled from its invocation and completion events.
#[derive(Clone, Debug)]
pub struct Op {
    /// Client.
    pub process: String,
    /// Node addressed.
    pub node: Option<u64>,
    /// Operation name.
    pub f: String,
    /// Object.
    pub key: Option<String>,
    /// Value sent at invocation.
    pub input: Value,
    /// Value returned at completion (`Null` unless ok).
    pub output: Value,
    /// How it completed (`Info` also when it never completed).
    pub outcome: EventType,
    /// History index of the invocation.
    pub invoke_index: u64,
    /// History index of the completion (`u64::MAX` when it never completed).
    pub complete_index: u64,
    /// Times of invocation and completion, in ms since the run started.
    pub invoke_ms: f64,
    /// Completion time (`f64::INFINITY` when unknown).
    pub complete_ms: f64,
    /// When the client had its answer, whatever it said (an unknown outcome included);
    /// `None` when it never completed.
    pub answered_ms: Option<f64>,
    /// Why it failed or is unknown, from its completion.
    pub error: Option<String>,
}

/// Pairs each invocation with its process's next completion. Operations whose outcome is
/// unknown complete at infinity: they may take effect at any time after their invocation.
pub fn pair(events: &[Event]) -> Vec<Op> {
    use std::collections::HashMap;
    let mut open: HashMap<&str, Op> = HashMap::new();
    let mut ops = Vec::new();
    for e in events {
        if e.process == "nemesis" {
            continue;
        }
        match e.kind {
            EventType::Invoke => {
                let op = Op {
                    process: e.process.clone(),
                    node: e.node,
                    f: e.f.clone(),
                    key: e.key.clone(),
                    input: e.value.clone(),
                    output: Value::Null,
                    outcome: EventType::Info,
                    invoke_index: e.index,
                    complete_index: u64::MAX,
                    invoke_ms: e.time_ms,
                    complete_ms: f64::INFINITY,
                    answered_ms: None,
                    error: None,
                };
                if let Some(unfinished) = open.insert(&e.process, op) {
                    ops.push(unfinished);
                }
            }
            kind => {
                if let Some(mut op) = open.remove(e.process.as_str()) {
                    op.outcome = kind;
                    op.answered_ms = Some(e.time_ms);
                    op.error = e.error.clone();
                    if kind != EventType::Info {
                        op.complete_index = e.index;
                        op.complete_ms = e.time_ms;
                    }
                    if kind == EventType::Ok {
                        op.output = e.value.clone();
                        if op.key.is_none() {
                            op.key = e.key.clone();
                        }
                    }
                    ops.push(op);
                }
            }
        }
    }
    ops.extend(open.into_values());
    ops.sort_by_key(|o| o.invoke_index);
    ops
}
