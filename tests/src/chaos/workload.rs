//! The clients of a chaos run. Data clients write, update, delete, fetch and query a few
//! vector ids per schedule through the node assigned to them; the key clients create
//! credentials of every kind in turn (an API key; a user, signed in, in the project; a
//! user's project membership; a service account, signed in, in the project), use them,
//! revoke them (delete the key, the user, the membership, the service account), and then
//! probe every node with the revoked credential; they also create, read and delete
//! projects. Every operation is recorded as invoke → ok / fail / info.
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
/// How the error of an operation whose client gave up waiting ([`CLIENT_TIMEOUT_MS`]) starts.
pub const NO_ANSWER: &str = "no answer within the client timeout";
/// When the key client probes every node with a key after its deletion was acknowledged
/// (ms after): densely at first, to measure how soon nodes refuse it, then past the bound.
pub const PROBE_OFFSETS_MS: &[u64] = &[0, 50, 200, 600, 1_100, 1_600, 2_200, 3_200];
/// How long a key lives before its client deletes it.
pub const KEY_LIFETIME_MS: u64 = 1_500;
/// Pause between two key cycles.
pub const KEY_CYCLE_PAUSE_MS: u64 = 300;
/// Words of the 503 a node answers while it cannot check credentials (its lease ran out).
pub const LEASE_REFUSAL: &str = "cannot check credentials";
/// Password of the users the key clients create.
const CHAOS_PASSWORD: &str = "chaos-password-1";

/// The kinds of credential the key clients create, use and revoke, in turn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CredentialKind {
    /// An API key (DataPlaneViewer), revoked by deleting it.
    ApiKey,
    /// A user's bearer token, revoked by deleting the user.
    User,
    /// A user's bearer token, revoked by removing the user from the project.
    Membership,
    /// A service account's bearer token, revoked by deleting the account.
    ServiceAccount,
}

impl CredentialKind {
    /// Every kind, in the order the key clients cycle through them.
    pub const ALL: [CredentialKind; 4] = [
        CredentialKind::ApiKey,
        CredentialKind::User,
        CredentialKind::Membership,
        CredentialKind::ServiceAccount,
    ];

    /// The history operation that revokes a credential of this kind.
    pub fn revoking_op(self) -> &'static str {
        match self {
            CredentialKind::ApiKey => "delete-key",
            CredentialKind::User => "delete-user",
            CredentialKind::Membership => "delete-membership",
            CredentialKind::ServiceAccount => "delete-service-account",
        }
    }

    /// The kind a revoking operation revokes.
    pub fn of_revoking_op(f: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.revoking_op() == f)
    }

    /// Its name in reports.
    pub fn name(self) -> &'static str {
        match self {
            CredentialKind::ApiKey => "api-key",
            CredentialKind::User => "user",
            CredentialKind::Membership => "membership",
            CredentialKind::ServiceAccount => "service-account",
        }
    }
}

/// A credential as sent.
#[derive(Clone, Debug)]
pub enum Secret {
    /// An API key value.
    ApiKey(String),
    /// A bearer token (calls name the project in `X-Project-Id`).
    Bearer(String),
}

/// A credential a key client holds until it revokes it.
struct Live {
    kind: CredentialKind,
    /// The history key of its uses and its revocation.
    key: String,
    /// The id in the revoking request's path (key, user or service account).
    target: String,
    secret: Secret,
    born: tokio::time::Instant,
}

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
    /// Project of the index (credentials are created there).
    pub project_id: String,
    /// The organization of that project (users and service accounts are created there).
    pub organization_id: String,
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
        Err(e) if e.is_timeout() => (None, Outcome::Unknown(format!("{NO_ANSWER}: {e}"))),
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
            request_id: None,
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

/// The client that creates, uses and revokes credentials of every kind, and cycles projects.
pub struct KeyClient {
    /// Process name in the history.
    pub process: String,
    /// Node it creates and deletes through (so that it keeps cycling while another node is
    /// cut off, and revokes credentials that node has not heard of).
    pub node: u64,
    /// Number of nodes.
    pub nodes: u64,
    /// Where to send requests.
    pub endpoints: Endpoints,
    /// The history.
    pub recorder: Recorder,
}

impl KeyClient {
    /// Cycles until `stop` is set: create a credential of the next kind (through its node)
    /// and use it; revoke the oldest live one once it is [`KEY_LIFETIME_MS`] old (through its
    /// node) while every node is probed with it in the background; and every other cycle a
    /// project's create → get → delete → get. Credentials live a while before they are
    /// revoked, so a node cut off in between knows one the others revoked.
    pub async fn run(self, seed: u64, stop: Arc<AtomicBool>) {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut n = 0u64;
        let mut probes = Vec::new();
        let mut live: VecDeque<Live> = VecDeque::new();
        while !stop.load(Ordering::Relaxed) {
            n += 1;
            let kind = CredentialKind::ALL[((n + seed) % 4) as usize];
            if let Some(credential) = self
                .issue(kind, &mut rng, &format!("chaos-{seed}-{n}"))
                .await
            {
                live.push_back(credential);
            }
            let lifetime = Duration::from_millis(KEY_LIFETIME_MS);
            if live.front().is_some_and(|c| c.born.elapsed() >= lifetime) {
                let credential = live.pop_front().expect("checked above");
                self.revoke(n, &credential, &mut probes).await;
                if credential.kind == CredentialKind::ApiKey {
                    self.get(Object::Key, rng.gen_range(1..=self.nodes), &credential.key)
                        .await;
                }
            }
            if n.is_multiple_of(2) {
                self.project_cycle(&mut rng, &format!("chaos-{seed}-{n}"))
                    .await;
            }
            probes.retain(|p: &tokio::task::JoinHandle<()>| !p.is_finished());
            tokio::time::sleep(Duration::from_millis(KEY_CYCLE_PAUSE_MS)).await;
        }
        for credential in live {
            self.revoke(n, &credential, &mut probes).await;
        }
        for probe in probes {
            let _ = probe.await;
        }
    }

    /// Creates a credential of `kind` through this client's node (with what it needs: the
    /// user or account, its project membership, a sign-in), reads it back where it can, and
    /// uses it once through a random node.
    async fn issue(&self, kind: CredentialKind, rng: &mut StdRng, name: &str) -> Option<Live> {
        let node = self.node;
        let (key, target, secret) = match kind {
            CredentialKind::ApiKey => {
                let (id, value) = self.create(node, name).await?;
                self.get(Object::Key, node, &id).await;
                (id.clone(), id, Secret::ApiKey(value))
            }
            CredentialKind::User | CredentialKind::Membership => {
                let email = format!("{name}@chaos.test");
                let path = format!(
                    "/admin/organizations/{}/members",
                    self.endpoints.organization_id
                );
                let body = json!({"email": email, "role": "OrgMember", "password": CHAOS_PASSWORD});
                let user = self
                    .step(
                        "create-user",
                        node,
                        None,
                        self.admin(Method::POST, node, &path).json(&body),
                    )
                    .await?;
                let id = user["id"].as_str()?.to_string();
                self.add_member(node, "user_id", &id).await?;
                let login = json!({"email": email, "password": CHAOS_PASSWORD});
                let token = self
                    .step(
                        "login",
                        node,
                        Some(&id),
                        self.anonymous(node, "/auth/login").json(&login),
                    )
                    .await?;
                let token = token["access_token"].as_str()?.to_string();
                let key = if kind == CredentialKind::Membership {
                    format!("membership:{id}")
                } else {
                    id.clone()
                };
                (key, id, Secret::Bearer(token))
            }
            CredentialKind::ServiceAccount => {
                let path = format!(
                    "/admin/organizations/{}/service-accounts",
                    self.endpoints.organization_id
                );
                let account = self
                    .step(
                        "create-service-account",
                        node,
                        None,
                        self.admin(Method::POST, node, &path)
                            .json(&json!({"name": name})),
                    )
                    .await?;
                let id = account["client_id"].as_str()?.to_string();
                let secret = account["client_secret"].as_str()?.to_string();
                self.add_member(node, "service_account_id", &id).await?;
                let grant = json!({"grant_type": "client_credentials", "client_id": id, "client_secret": secret});
                let token = self
                    .step(
                        "issue-token",
                        node,
                        Some(&id),
                        self.anonymous(node, "/oauth/token").json(&grant),
                    )
                    .await?;
                let token = token["access_token"].as_str()?.to_string();
                (id.clone(), id, Secret::Bearer(token))
            }
        };
        let via = rng.gen_range(1..=self.nodes);
        use_credential(
            &self.endpoints,
            &self.recorder,
            &self.process,
            via,
            &key,
            &secret,
        )
        .await;
        Some(Live {
            kind,
            key,
            target,
            secret,
            born: tokio::time::Instant::now(),
        })
    }

    /// Makes the user or service account `id` a ProjectMember of the schedule's project.
    async fn add_member(&self, node: u64, field: &str, id: &str) -> Option<Value> {
        let path = format!("/admin/projects/{}/members", self.endpoints.project_id);
        let mut body = json!({"role": "ProjectMember"});
        body[field] = json!(id);
        self.step(
            "add-member",
            node,
            Some(id),
            self.admin(Method::POST, node, &path).json(&body),
        )
        .await
    }

    /// Sends `request` as operation `f`, recording it; the answer when it succeeded.
    async fn step(
        &self,
        f: &str,
        node: u64,
        key: Option<&str>,
        request: reqwest::RequestBuilder,
    ) -> Option<Value> {
        let mut entry = self.entry(f, node, key);
        self.recorder.record(EventType::Invoke, entry.clone());
        match classify(tagged(request, &entry).send().await).await.1 {
            Outcome::Ok(body) => {
                if entry.key.is_none() {
                    entry.key = body["id"].as_str().map(str::to_string);
                }
                self.recorder.record(EventType::Ok, entry);
                Some(body)
            }
            other => {
                complete(&self.recorder, entry, other);
                None
            }
        }
    }

    /// Revokes `credential` through this client's node and probes every node with it in the
    /// background, at [`PROBE_OFFSETS_MS`] after the answer.
    async fn revoke(
        &self,
        n: u64,
        credential: &Live,
        probes: &mut Vec<tokio::task::JoinHandle<()>>,
    ) {
        let target = &credential.target;
        let path = match credential.kind {
            CredentialKind::ApiKey => Object::Key.path(target),
            CredentialKind::User => format!(
                "/admin/organizations/{}/members/{target}",
                self.endpoints.organization_id
            ),
            CredentialKind::Membership => format!(
                "/admin/projects/{}/members/{target}",
                self.endpoints.project_id
            ),
            CredentialKind::ServiceAccount => format!("/admin/service-accounts/{target}"),
        };
        self.delete_at(
            credential.kind.revoking_op(),
            self.node,
            &credential.key,
            &path,
        )
        .await;
        for node in 1..=self.nodes {
            let (endpoints, recorder) = (self.endpoints.clone(), self.recorder.clone());
            let (key, secret) = (credential.key.clone(), credential.secret.clone());
            let process = format!("{}-{n}-{key}-probe-{node}", self.process);
            probes.push(tokio::spawn(async move {
                let revoked = tokio::time::Instant::now();
                for offset_ms in PROBE_OFFSETS_MS {
                    tokio::time::sleep_until(revoked + Duration::from_millis(*offset_ms)).await;
                    use_credential(&endpoints, &recorder, &process, node, &key, &secret).await;
                }
            }));
        }
    }

    fn anonymous(&self, node: u64, path: &str) -> reqwest::RequestBuilder {
        self.endpoints.http.post(self.endpoints.url(node, path))
    }

    fn admin(&self, method: Method, node: u64, path: &str) -> reqwest::RequestBuilder {
        self.endpoints
            .http
            .request(method, self.endpoints.url(node, path))
            .bearer_auth(&self.endpoints.admin_token)
    }

    /// The history entry of operation `f`, with a fresh request id for its audit event.
    fn entry(&self, f: &str, node: u64, key: Option<&str>) -> Entry {
        Entry {
            process: self.process.clone(),
            node: Some(node),
            f: f.into(),
            key: key.map(str::to_string),
            request_id: Some(uuid::Uuid::new_v4().to_string()),
            ..Entry::default()
        }
    }

    async fn create(&self, node: u64, name: &str) -> Option<(String, String)> {
        let entry = self.entry("create-key", node, None);
        self.recorder.record(EventType::Invoke, entry.clone());
        let path = format!("/admin/projects/{}/api-keys", self.endpoints.project_id);
        let body = json!({ "name": name, "roles": ["DataPlaneViewer"] });
        let sent = tagged(self.admin(Method::POST, node, &path), &entry)
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
        let sent = tagged(self.admin(Method::POST, node, "/admin/projects"), &entry)
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
        self.delete_at(
            &format!("delete-{}", object.name()),
            node,
            id,
            &object.path(id),
        )
        .await;
    }

    /// `DELETE path` as operation `f` on history key `key`: `found` true when it existed,
    /// false on 404.
    async fn delete_at(&self, f: &str, node: u64, key: &str, path: &str) {
        let entry = self.entry(f, node, Some(key));
        self.recorder.record(EventType::Invoke, entry.clone());
        let sent = tagged(self.admin(Method::DELETE, node, path), &entry)
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

/// `request` carrying the request id of its history `entry`.
fn tagged(request: reqwest::RequestBuilder, entry: &Entry) -> reqwest::RequestBuilder {
    match &entry.request_id {
        Some(id) => request.header("X-Request-Id", id),
        None => request,
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

/// Uses `secret` (history key `key`) on `node` (DescribeIndexStats): `accepted` true on
/// success, false when the node refuses the credential — 401 (unknown or revoked), 404 (no
/// role in the project: a removed membership), or 503 while it cannot check credentials.
pub async fn use_credential(
    endpoints: &Endpoints,
    recorder: &Recorder,
    process: &str,
    node: u64,
    key: &str,
    secret: &Secret,
) {
    let entry = Entry {
        process: process.to_string(),
        node: Some(node),
        f: "use-credential".into(),
        key: Some(key.to_string()),
        ..Entry::default()
    };
    recorder.record(EventType::Invoke, entry.clone());
    let request = endpoints
        .http
        .post(endpoints.url(node, "/describe_index_stats"))
        .header("X-Conifer-Index", &endpoints.index)
        .json(&json!({}));
    let request = match secret {
        Secret::ApiKey(value) => request.header("Api-Key", value),
        Secret::Bearer(token) => request
            .bearer_auth(token)
            .header("X-Project-Id", &endpoints.project_id),
    };
    // Authentication and authorization come first, so any other answer means the node
    // accepted the credential (a 403 or a later 503 came after it did).
    let outcome = match classify(request.send().await).await {
        (None, other) => other,
        (Some(StatusCode::UNAUTHORIZED | StatusCode::NOT_FOUND), _) => {
            Outcome::Ok(json!({ "accepted": false }))
        }
        (_, Outcome::Fail(m)) if m.contains(LEASE_REFUSAL) => {
            Outcome::Ok(json!({ "accepted": false }))
        }
        (Some(status), _) => Outcome::Ok(json!({ "accepted": true, "status": status.as_u16() })),
    };
    complete(recorder, entry, outcome);
}
