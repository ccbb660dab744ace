//! The clients of a chaos run. Data clients write, update, delete, fetch and query a few
//! vector ids per schedule through the node assigned to them; the key client creates API
//! keys, reads them back, uses them, deletes them, and then probes every node with the
//! deleted key; it also creates, reads and deletes projects. Every operation is recorded as invoke → ok / fail / info.
//!
//! Adding an operation: a variant of [`DataOp`] and its request in [`DataClient::run_op`];
//! the checkers learn about it through their own mapping (e.g. `check::linear::register_op`).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use super::history::{Entry, EventType, Recorder};

/// Namespace the data clients use.
pub const NAMESPACE: &str = "chaos";
/// Dimension of the schedule's index.
pub const DIMENSION: usize = 4;
/// Header asking for a linearizable read.
pub const CONSISTENCY_HEADER: &str = "x-conifer-read-consistency";
/// Longest a client waits for one answer; after that the outcome is unknown.
pub const CLIENT_TIMEOUT_MS: u64 = 5_000;
/// When the key client probes every node with a key after its deletion was acknowledged
/// (ms after): densely at first, to measure how soon nodes refuse it, then past the bound.
pub const PROBE_OFFSETS_MS: &[u64] = &[0, 50, 200, 600, 1_100, 1_600, 2_200, 3_200];
/// How long a key lives before its client deletes it.
pub const KEY_LIFETIME_MS: u64 = 1_500;
/// Pause between two key cycles.
pub const KEY_CYCLE_PAUSE_MS: u64 = 300;
/// Words of the 503 a node answers while it cannot check credentials (its lease ran out).
pub const LEASE_REFUSAL: &str = "cannot check credentials";

/// What a client needs to reach the cluster.
#[derive(Clone)]
pub struct Endpoints {
    /// HTTP client trusting the cluster CA (with [`CLIENT_TIMEOUT_MS`]).
    pub http: reqwest::Client,
    /// `https://host:port` of every node, by node id - 1.
    pub nodes: Vec<String>,
    /// Operator token.
    pub admin_token: String,
    /// Data-plane key of the project holding the index.
    pub api_key: String,
    /// Project of the index (keys are created there).
    pub project_id: String,
    /// The schedule's index.
    pub index: String,
}

impl Endpoints {
    fn url(&self, node: u64, path: &str) -> String {
        format!("{}{path}", self.nodes[(node - 1) as usize])
    }
}

/// How an HTTP exchange ended, for the history.
enum Outcome {
    Ok(Value),
    Fail(String),
    Unknown(String),
}

/// Classifies an answer. Nothing changed when the request was refused (4xx), when no
/// connection could be made, or when the node could not check the credential (its lease
/// had run out: authentication comes before anything else). Other 5xx answers and errors
/// after the request was sent may hide a change (a write can commit after its node gave up
/// waiting), so their outcome is unknown.
async fn classify(result: reqwest::Result<reqwest::Response>) -> (Option<StatusCode>, Outcome) {
    match result {
        Err(e) if e.is_connect() => (None, Outcome::Fail(format!("not connected: {e}"))),
        Err(e) => (None, Outcome::Unknown(e.to_string())),
        Ok(resp) => {
            let status = resp.status();
            let body: Value = resp.json().await.unwrap_or(Value::Null);
            if status.is_success() {
                (Some(status), Outcome::Ok(body))
            } else {
                let message = format!("{status}: {}", body["error"]["message"]);
                if status.is_client_error() || message.contains(LEASE_REFUSAL) {
                    (Some(status), Outcome::Fail(message))
                } else {
                    (Some(status), Outcome::Unknown(message))
                }
            }
        }
    }
}

/// Records the completion of an operation.
fn complete(recorder: &Recorder, mut entry: Entry, outcome: Outcome) {
    let kind = match outcome {
        Outcome::Ok(value) => {
            entry.value = value;
            EventType::Ok
        }
        Outcome::Fail(e) => {
            entry.error = Some(e);
            EventType::Fail
        }
        Outcome::Unknown(e) => {
            entry.error = Some(e);
            EventType::Info
        }
    };
    recorder.record(kind, entry);
}

/// The value a vector carries in its metadata (`v`), from a fetch or query answer.
fn value_of(metadata: &Value) -> Option<i64> {
    metadata["v"].as_f64().map(|v| v as i64)
}

/// The data-plane operations.
#[derive(Clone, Copy, Debug)]
pub enum DataOp {
    /// Upsert the id with a new unique value.
    Write,
    /// Linearizable fetch.
    Read,
    /// Delete the id.
    Delete,
    /// Set the value in metadata if the id exists.
    Update,
    /// Linearizable query filtered to the id.
    Query,
}

impl DataOp {
    fn pick(rng: &mut StdRng) -> Self {
        match rng.gen_range(0..100) {
            0..=34 => DataOp::Write,
            35..=59 => DataOp::Read,
            60..=69 => DataOp::Delete,
            70..=79 => DataOp::Update,
            _ => DataOp::Query,
        }
    }

    fn name(self) -> &'static str {
        match self {
            DataOp::Write => "write",
            DataOp::Read => "read",
            DataOp::Delete => "delete",
            DataOp::Update => "update",
            DataOp::Query => "query",
        }
    }
}

/// One data-plane client.
pub struct DataClient {
    /// Process name in the history.
    pub process: String,
    /// Node it talks to.
    pub node: u64,
    /// Ids it operates on.
    pub keys: Vec<String>,
    /// Source of unique values (shared by all clients).
    pub values: Arc<AtomicI64>,
    /// Where to send requests.
    pub endpoints: Endpoints,
    /// The history.
    pub recorder: Recorder,
}

impl DataClient {
    /// Runs random operations until `stop` is set.
    pub async fn run(self, seed: u64, stop: Arc<AtomicBool>) {
        let mut rng = StdRng::seed_from_u64(seed);
        while !stop.load(Ordering::Relaxed) {
            let op = DataOp::pick(&mut rng);
            let key = self.keys[rng.gen_range(0..self.keys.len())].clone();
            self.run_op(op, &key).await;
            tokio::time::sleep(Duration::from_millis(rng.gen_range(5..40))).await;
        }
    }

    fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.endpoints
            .http
            .request(method, self.endpoints.url(self.node, path))
            .header("Api-Key", &self.endpoints.api_key)
            .header("X-Conifer-Index", &self.endpoints.index)
    }

    /// Runs one operation on `key` and records it.
    pub async fn run_op(&self, op: DataOp, key: &str) {
        let value = matches!(op, DataOp::Write | DataOp::Update)
            .then(|| self.values.fetch_add(1, Ordering::Relaxed));
        let mut entry = Entry {
            process: self.process.clone(),
            node: Some(self.node),
            f: op.name().into(),
            key: Some(key.to_string()),
            value: json!({ "value": value }),
            error: None,
        };
        self.recorder.record(EventType::Invoke, entry.clone());
        entry.value = Value::Null;
        let v = value.unwrap_or_default();
        // (method, path, body, linearizable read)
        let (method, path, body, linearizable) = match op {
            DataOp::Write => (
                Method::POST,
                "/vectors/upsert".to_string(),
                Some(json!({
                    "namespace": NAMESPACE,
                    "vectors": [{
                        "id": key,
                        "values": [1.0, (v % 97) as f32 / 97.0, 0.5, 0.25],
                        "metadata": { "v": v, "k": key },
                    }],
                })),
                false,
            ),
            DataOp::Read => (
                Method::GET,
                format!("/vectors/fetch?ids={key}&namespace={NAMESPACE}"),
                None,
                true,
            ),
            DataOp::Delete => (
                Method::POST,
                "/vectors/delete".to_string(),
                Some(json!({ "namespace": NAMESPACE, "ids": [key] })),
                false,
            ),
            DataOp::Update => (
                Method::POST,
                "/vectors/update".to_string(),
                Some(json!({ "namespace": NAMESPACE, "id": key, "setMetadata": { "v": v } })),
                false,
            ),
            DataOp::Query => (
                Method::POST,
                "/query".to_string(),
                Some(json!({
                    "namespace": NAMESPACE,
                    "vector": [1.0, 0.5, 0.5, 0.25],
                    "topK": 1,
                    "filter": { "k": { "$eq": key } },
                    "includeMetadata": true,
                })),
                true,
            ),
        };
        let mut request = self.request(method, &path);
        if linearizable {
            request = request.header(CONSISTENCY_HEADER, "linearizable");
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let outcome = match classify(request.send().await).await.1 {
            Outcome::Ok(body) => Outcome::Ok(match op {
                DataOp::Write | DataOp::Delete => Value::Null,
                DataOp::Read => json!({ "value": value_of(&body["vectors"][key]["metadata"]) }),
                DataOp::Update => {
                    json!({ "found": body["matchedRecords"].as_u64().map(|n| n > 0) })
                }
                DataOp::Query => json!({ "value": value_of(&body["matches"][0]["metadata"]) }),
            }),
            other => other,
        };
        complete(&self.recorder, entry, outcome);
    }
}

/// The client that creates, checks, uses and revokes API keys.
pub struct KeyClient {
    /// Process name in the history.
    pub process: String,
    /// Node it creates and deletes through (so that it keeps cycling while another node is
    /// cut off, and revokes keys that node has not heard of).
    pub node: u64,
    /// Number of nodes.
    pub nodes: u64,
    /// Where to send requests.
    pub endpoints: Endpoints,
    /// The history.
    pub recorder: Recorder,
}

impl KeyClient {
    /// Cycles until `stop` is set: create a key (through its node) → get → use; delete the
    /// oldest live key once it is [`KEY_LIFETIME_MS`] old (through its node) → get (through
    /// any node), while every node is probed with the deleted key in the background; and
    /// every other cycle a project's create → get → delete → get. Keys live a while before
    /// they are deleted, so a node cut off in between knows a key the others revoked.
    pub async fn run(self, seed: u64, stop: Arc<AtomicBool>) {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut n = 0u64;
        let mut probes = Vec::new();
        let mut live: VecDeque<(String, String, tokio::time::Instant)> = VecDeque::new();
        while !stop.load(Ordering::Relaxed) {
            n += 1;
            if let Some((id, value)) = self.create(self.node, &format!("chaos-{seed}-{n}")).await {
                self.get(Object::Key, self.node, &id).await;
                let via = rng.gen_range(1..=self.nodes);
                use_key(
                    &self.endpoints,
                    &self.recorder,
                    &self.process,
                    via,
                    &id,
                    &value,
                )
                .await;
                live.push_back((id, value, tokio::time::Instant::now()));
            }
            let lifetime = Duration::from_millis(KEY_LIFETIME_MS);
            if live
                .front()
                .is_some_and(|(_, _, born)| born.elapsed() >= lifetime)
            {
                let (id, value, _) = live.pop_front().expect("checked above");
                self.revoke(n, &id, &value, &mut probes).await;
                self.get(Object::Key, rng.gen_range(1..=self.nodes), &id)
                    .await;
            }
            if n.is_multiple_of(2) {
                self.project_cycle(&mut rng, &format!("chaos-{seed}-{n}"))
                    .await;
            }
            probes.retain(|p: &tokio::task::JoinHandle<()>| !p.is_finished());
            tokio::time::sleep(Duration::from_millis(KEY_CYCLE_PAUSE_MS)).await;
        }
        for (id, value, _) in live {
            self.revoke(n, &id, &value, &mut probes).await;
        }
        for probe in probes {
            let _ = probe.await;
        }
    }

    /// Deletes key `id` through this client's node and probes every node with it in the
    /// background, at [`PROBE_OFFSETS_MS`] after the answer.
    async fn revoke(
        &self,
        n: u64,
        id: &str,
        value: &str,
        probes: &mut Vec<tokio::task::JoinHandle<()>>,
    ) {
        self.delete(Object::Key, self.node, id).await;
        for node in 1..=self.nodes {
            let (endpoints, recorder) = (self.endpoints.clone(), self.recorder.clone());
            let (id, value) = (id.to_string(), value.to_string());
            let process = format!("{}-{n}-{id}-probe-{node}", self.process);
            probes.push(tokio::spawn(async move {
                let deleted = tokio::time::Instant::now();
                for offset_ms in PROBE_OFFSETS_MS {
                    tokio::time::sleep_until(deleted + Duration::from_millis(*offset_ms)).await;
                    use_key(&endpoints, &recorder, &process, node, &id, &value).await;
                }
            }));
        }
    }

    fn admin(&self, method: Method, node: u64, path: &str) -> reqwest::RequestBuilder {
        self.endpoints
            .http
            .request(method, self.endpoints.url(node, path))
            .bearer_auth(&self.endpoints.admin_token)
    }

    fn entry(&self, f: &str, node: u64, key: Option<&str>) -> Entry {
        Entry {
            process: self.process.clone(),
            node: Some(node),
            f: f.into(),
            key: key.map(str::to_string),
            ..Entry::default()
        }
    }

    async fn create(&self, node: u64, name: &str) -> Option<(String, String)> {
        let entry = self.entry("create-key", node, None);
        self.recorder.record(EventType::Invoke, entry.clone());
        let path = format!("/admin/projects/{}/api-keys", self.endpoints.project_id);
        let body = json!({ "name": name, "roles": ["DataPlaneViewer"] });
        let sent = self
            .admin(Method::POST, node, &path)
            .json(&body)
            .send()
            .await;
        let created = self.created(entry, classify(sent).await.1)?;
        let id = created["key"]["id"].as_str()?.to_string();
        let value = created["value"].as_str()?.to_string();
        Some((id, value))
    }

    /// Creates a project named `name`; returns its id.
    async fn create_project(&self, node: u64, name: &str) -> Option<String> {
        let entry = self.entry("create-project", node, None);
        self.recorder.record(EventType::Invoke, entry.clone());
        let sent = self
            .admin(Method::POST, node, "/admin/projects")
            .json(&json!({ "name": name }))
            .send()
            .await;
        let created = self.created(entry, classify(sent).await.1)?;
        created["id"].as_str().map(str::to_string)
    }

    /// Records the completion of a create; the object's id (`id` or `key.id` of the answer)
    /// becomes the operation's key. Returns the answer when it succeeded.
    fn created(&self, mut entry: Entry, outcome: Outcome) -> Option<Value> {
        match outcome {
            Outcome::Ok(created) => {
                let id = created["key"]["id"].as_str().or(created["id"].as_str());
                entry.key = id.map(str::to_string);
                self.recorder.record(EventType::Ok, entry);
                Some(created)
            }
            other => {
                complete(&self.recorder, entry, other);
                None
            }
        }
    }

    /// Linearizable describe of `object` `id`: value 1 when it exists, null when not (404).
    async fn get(&self, object: Object, node: u64, id: &str) {
        let entry = self.entry(&format!("get-{}", object.name()), node, Some(id));
        self.recorder.record(EventType::Invoke, entry.clone());
        let sent = self
            .admin(Method::GET, node, &object.path(id))
            .header(CONSISTENCY_HEADER, "linearizable")
            .send()
            .await;
        let outcome = match classify(sent).await {
            (_, Outcome::Ok(_)) => Outcome::Ok(json!({ "value": 1 })),
            (Some(StatusCode::NOT_FOUND), _) => Outcome::Ok(json!({ "value": null })),
            (_, other) => other,
        };
        complete(&self.recorder, entry, outcome);
    }

    /// Deletes `object` `id`: `found` true when it existed, false on 404.
    async fn delete(&self, object: Object, node: u64, id: &str) {
        let entry = self.entry(&format!("delete-{}", object.name()), node, Some(id));
        self.recorder.record(EventType::Invoke, entry.clone());
        let sent = self
            .admin(Method::DELETE, node, &object.path(id))
            .send()
            .await;
        let outcome = match classify(sent).await {
            (_, Outcome::Ok(_)) => Outcome::Ok(json!({ "found": true })),
            (Some(StatusCode::NOT_FOUND), _) => Outcome::Ok(json!({ "found": false })),
            (_, other) => other,
        };
        complete(&self.recorder, entry, outcome);
    }

    /// One project's life: create (through its node) → describe → delete → describe
    /// (through random nodes).
    async fn project_cycle(&self, rng: &mut StdRng, name: &str) {
        let Some(id) = self.create_project(self.node, name).await else {
            return;
        };
        self.get(Object::Project, rng.gen_range(1..=self.nodes), &id)
            .await;
        self.delete(Object::Project, rng.gen_range(1..=self.nodes), &id)
            .await;
        self.get(Object::Project, rng.gen_range(1..=self.nodes), &id)
            .await;
    }
}

/// Control-plane objects the key client manages.
#[derive(Clone, Copy, Debug)]
enum Object {
    Key,
    Project,
}

impl Object {
    fn name(self) -> &'static str {
        match self {
            Object::Key => "key",
            Object::Project => "project",
        }
    }

    fn path(self, id: &str) -> String {
        match self {
            Object::Key => format!("/admin/api-keys/{id}"),
            Object::Project => format!("/admin/projects/{id}"),
        }
    }
}

/// Uses API key `value` (id `id`) on `node` (DescribeIndexStats): `accepted` true on
/// success, false when the node refuses the credential (401, or 503 while it cannot check
/// credentials).
pub async fn use_key(
    endpoints: &Endpoints,
    recorder: &Recorder,
    process: &str,
    node: u64,
    id: &str,
    value: &str,
) {
    let entry = Entry {
        process: process.to_string(),
        node: Some(node),
        f: "use-key".into(),
        key: Some(id.to_string()),
        ..Entry::default()
    };
    recorder.record(EventType::Invoke, entry.clone());
    let sent = endpoints
        .http
        .post(endpoints.url(node, "/describe_index_stats"))
        .header("Api-Key", value)
        .header("X-Conifer-Index", &endpoints.index)
        .json(&json!({}))
        .send()
        .await;
    // Authentication comes first, so any answer but 401 or the lease's 503 means the node
    // accepted the key (a 403, 404 or later 503 came after it did).
    let outcome = match classify(sent).await {
        (None, other) => other,
        (Some(StatusCode::UNAUTHORIZED), _) => Outcome::Ok(json!({ "accepted": false })),
        (_, Outcome::Fail(m)) if m.contains(LEASE_REFUSAL) => {
            Outcome::Ok(json!({ "accepted": false }))
        }
        (Some(status), _) => Outcome::Ok(json!({ "accepted": true, "status": status.as_u16() })),
    };
    complete(recorder, entry, outcome);
}
