//! The audit log: who did what, when, from where, and whether it worked.
//!
//! Events live in the control-plane state (group 0), so they are replicated with it and
//! every node answers queries from its own replica. A control-plane change is proposed as
//! [`Command::Audited`](crate::control::Command::Audited): applying that one log entry both
//! performs the change (or rejects it) and appends its event, with the outcome, so no change
//! exists without its event and no event without its attempt. Denied attempts and failed
//! sign-ins change nothing; nodes queue them and propose them in batches
//! ([`crate::api::audit::AuditSink`]) so that a flood of failures cannot stall the control
//! plane.
//!
//! Each organization's events form a chain: event `n` carries the hash of event `n - 1`
//! (`prev_hash`) and its own `hash`, the SHA-256 of its JSON form with `hash` empty (see
//! [`event_hash`]). Cluster-level events (operator tokens, signing keys, sign-in failures of
//! unknown emails, batch overflows) form the chain [`CLUSTER_CHAIN`]. The head of every chain
//! is part of the replicated state; [`Verifier`] recomputes a chain from its events and names
//! the first broken link. Retention purges are replicated commands that record, in the chain,
//! how many events they removed and the hash the remaining chain starts from.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::control::identity::IdentityCommand;
use crate::control::state::{Command, ControlState, MemberKind, Rejection};

/// Default time an event is kept: 90 days.
pub const DEFAULT_AUDIT_RETENTION_S: u64 = 90 * 86_400;
/// Most refusal events (denied attempts, failed sign-ins and their summaries: everything
/// [`EventClass::Refusal`]) one chain keeps; past it the oldest refusal is pruned ahead of its
/// retention, leaving a [`PrunedRun`] that keeps the chain's links verifiable. Events of
/// changes are never pruned for room.
pub const MAX_REFUSAL_EVENTS_PER_CHAIN: usize = 100_000;
/// Events of changes one chain holds before it reports itself over budget
/// ([`Chain::over_budget`], shown by `/admin/cluster` and logged): a warning to the operator,
/// never a reason to drop an event before its retention ends.
pub const CHANGE_EVENTS_BUDGET_PER_CHAIN: usize = 1_000_000;
/// The chain of events that belong to no organization.
pub const CLUSTER_CHAIN: &str = "_cluster";
/// Longest user agent kept; longer ones are cut at a character boundary.
pub const MAX_USER_AGENT_BYTES: usize = 256;
/// Longest request id accepted from a client; longer or non-printable ones are replaced.
pub const MAX_REQUEST_ID_BYTES: usize = 128;
/// Longest text kept in any other free-form field (names tried at sign-in, reasons).
pub const MAX_AUDIT_TEXT_BYTES: usize = 512;
/// Most events one batch of denied or failed attempts may carry.
pub const MAX_AUDIT_BATCH_EVENTS: usize = 500;
/// `prev_hash` of a chain's first event.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Who acted, as the schema names kinds of principal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PrincipalType {
    /// A user signed in with a password.
    User,
    /// A project's API key.
    ApiKey,
    /// A service account (client credentials).
    ServiceAccount,
    /// The operator token.
    Operator,
    /// Conifer itself (retention purges, overflow summaries).
    System,
}

/// What was done, in the seed's vocabulary (`event.action`: Pinecone's security page):
/// `create`, `update`, `delete` and `login`, plus `read` for a refused list or describe.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verb {
    /// Something was created (an organization, member, project, index, key…).
    Create,
    /// Something was changed (renamed, a role, a setting, a rotated secret).
    Update,
    /// Something was deleted or removed.
    Delete,
    /// A principal signed in.
    Login,
    /// Something was listed or described (recorded only when refused).
    Read,
}

impl Verb {
    /// Every verb.
    pub const ALL: [Verb; 5] = [
        Verb::Create,
        Verb::Update,
        Verb::Delete,
        Verb::Login,
        Verb::Read,
    ];

    /// The value of `event.action`.
    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Create => "create",
            Verb::Update => "update",
            Verb::Delete => "delete",
            Verb::Login => "login",
            Verb::Read => "read",
        }
    }
}

/// What kind of object was acted on, in the seed's vocabulary (`event.resource_type`):
/// `organization`, `user`, `project`, `index`, `api-key` as the seed names them (`backup`
/// and `private-endpoints` come with those features), and in the same spelling the kinds
/// the seed does not list.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ResourceType {
    /// An organization.
    Organization,
    /// A user: an organization member or a project member who is a user.
    User,
    /// A project.
    Project,
    /// An index.
    Index,
    /// An API key.
    ApiKey,
    /// A service account (also as a project member).
    ServiceAccount,
    /// An operator token.
    OperatorToken,
    /// A token-signing key.
    SigningKey,
    /// An audit-log chain (retention purges, dropped events).
    AuditLog,
    /// The cluster (refused cluster operations).
    Cluster,
}

impl ResourceType {
    /// Every resource type.
    pub const ALL: [ResourceType; 10] = [
        ResourceType::Organization,
        ResourceType::User,
        ResourceType::Project,
        ResourceType::Index,
        ResourceType::ApiKey,
        ResourceType::ServiceAccount,
        ResourceType::OperatorToken,
        ResourceType::SigningKey,
        ResourceType::AuditLog,
        ResourceType::Cluster,
    ];

    /// The value of `event.resource_type`.
    pub fn as_str(self) -> &'static str {
        match self {
            ResourceType::Organization => "organization",
            ResourceType::User => "user",
            ResourceType::Project => "project",
            ResourceType::Index => "index",
            ResourceType::ApiKey => "api-key",
            ResourceType::ServiceAccount => "service-account",
            ResourceType::OperatorToken => "operator-token",
            ResourceType::SigningKey => "signing-key",
            ResourceType::AuditLog => "audit-log",
            ResourceType::Cluster => "cluster",
        }
    }

    /// The project-member resource of a principal kind: users are `user` (the seed's
    /// "invite project member"), service accounts `service-account`.
    pub fn of_member(kind: MemberKind) -> Self {
        match kind {
            MemberKind::User => ResourceType::User,
            MemberKind::ServiceAccount => ResourceType::ServiceAccount,
        }
    }
}

/// The actor as the proposer knows it; names are resolved from the state at apply.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActorRef {
    /// Kind of principal.
    pub principal_type: PrincipalType,
    /// Its id (empty when a sign-in named no known principal).
    pub principal_id: String,
    /// The organization it belongs to, if any (API keys: their project's).
    pub organization_id: Option<String>,
    /// The name to report when the principal is not in the state (an unknown email tried
    /// at sign-in).
    pub name_hint: Option<String>,
}

impl From<MemberKind> for PrincipalType {
    fn from(kind: MemberKind) -> Self {
        match kind {
            MemberKind::User => PrincipalType::User,
            MemberKind::ServiceAccount => PrincipalType::ServiceAccount,
        }
    }
}

impl ActorRef {
    /// Conifer itself.
    pub fn system() -> Self {
        Self {
            principal_type: PrincipalType::System,
            principal_id: "conifer".into(),
            organization_id: None,
            name_hint: None,
        }
    }

    /// The operator token `token_id`.
    pub fn operator(token_id: &str) -> Self {
        Self {
            principal_type: PrincipalType::Operator,
            principal_id: token_id.into(),
            organization_id: None,
            name_hint: None,
        }
    }

    /// A user or service account of `organization_id`.
    pub fn member(kind: MemberKind, id: &str, organization_id: &str) -> Self {
        Self {
            principal_type: kind.into(),
            principal_id: id.into(),
            organization_id: Some(organization_id.into()),
            name_hint: None,
        }
    }

    /// The same actor, named `name` should the state no longer know it.
    pub fn with_name_hint(mut self, name: &str) -> Self {
        self.name_hint = Some(name.into());
        self
    }
}

/// What the node that received a request knows about it, carried in the command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditContext {
    /// The event's id (a UUID chosen by the proposer).
    pub id: String,
    /// When the request was received ([`timestamp`] format).
    pub time: String,
    /// What was attempted: the operation's name in the permission matrix (`project.create`),
    /// or Conifer's own (`cluster.bootstrap`, `audit_log.purge`, `audit_log.overflow`).
    pub operation: String,
    /// Who attempted it.
    pub actor: ActorRef,
    /// The client's address.
    pub source_ip: Option<String>,
    /// The request's id (`X-Request-Id`, or one the node chose).
    pub request_id: Option<String>,
    /// The client's `User-Agent`.
    pub user_agent: Option<String>,
    /// The node that received the request.
    pub node_id: u64,
}

impl AuditContext {
    /// The context of something Conifer does on its own on node `node_id` (bootstrap,
    /// retention purges, overflow summaries): no client address, request id or user agent.
    pub fn internal(operation: &str, actor: ActorRef, node_id: u64) -> Self {
        Self {
            id: uuid::Uuid::new_v4().to_string(),
            time: now(),
            operation: operation.into(),
            actor,
            source_ip: None,
            request_id: None,
            user_agent: None,
            node_id,
        }
    }
}

/// An event's parameters: a flat JSON object. Stored in Raft entries and snapshots as JSON
/// text (bincode cannot carry arbitrary JSON), shown as an object.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Params(pub BTreeMap<String, Value>);

impl Params {
    /// Adds `key: value`.
    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.0.insert(key.to_string(), value.into());
        self
    }

    /// Adds `key: value` when `value` is given.
    pub fn with_some<V: Into<Value>>(self, key: &str, value: Option<V>) -> Self {
        match value {
            Some(v) => self.with(key, v),
            None => self,
        }
    }
}

/// Serializes `value` as itself in JSON and as JSON text in bincode (which cannot carry
/// arbitrary JSON).
fn serialize_as_json_text<T: Serialize, S: Serializer>(
    value: &T,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    if serializer.is_human_readable() {
        value.serialize(serializer)
    } else {
        serde_json::to_string(value)
            .map_err(serde::ser::Error::custom)?
            .serialize(serializer)
    }
}

/// The inverse of [`serialize_as_json_text`].
fn deserialize_as_json_text<'de, T: serde::de::DeserializeOwned, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<T, D::Error> {
    if deserializer.is_human_readable() {
        T::deserialize(deserializer)
    } else {
        let text = String::deserialize(deserializer)?;
        serde_json::from_str(&text).map_err(serde::de::Error::custom)
    }
}

impl Serialize for Params {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serialize_as_json_text(&self.0, serializer)
    }
}

impl<'de> Deserialize<'de> for Params {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserialize_as_json_text(deserializer).map(Params)
    }
}

/// Any JSON value (the seed's `resource_id`: a name, a list of emails, `{user, role}`),
/// stored as JSON text in Raft entries and snapshots.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JsonValue(pub Value);

impl Serialize for JsonValue {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serialize_as_json_text(&self.0, serializer)
    }
}

impl<'de> Deserialize<'de> for JsonValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserialize_as_json_text(deserializer).map(JsonValue)
    }
}

impl JsonValue {
    /// Whether this value is `text`, holds it in a list, or holds it as a field of an
    /// object (`{user, role}` matches the user's email): how `resource_id` filters match.
    pub fn mentions(&self, text: &str) -> bool {
        match &self.0 {
            Value::String(s) => s == text,
            Value::Array(items) => items.iter().any(|v| v.as_str() == Some(text)),
            Value::Object(fields) => fields.values().any(|v| v.as_str() == Some(text)),
            _ => false,
        }
    }
}

/// The client software that made the request.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Client {
    /// Its `User-Agent` header.
    #[serde(rename = "userAgent")]
    pub user_agent: Option<String>,
}

/// Who acted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    /// The principal's id.
    pub principal_id: String,
    /// Its name: a user's email, a key's or service account's name, `operator`.
    pub principal_name: String,
    /// Its kind.
    pub principal_type: PrincipalType,
    /// A name for people: a user's display name, else the principal name.
    pub display_name: String,
}

/// Whether it worked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventOutcome {
    /// `success` or `failure`.
    pub result: String,
    /// Why it failed.
    pub reason: Option<String>,
    /// The error code the client received (`PERMISSION_DENIED`, `NOT_FOUND`, …).
    pub error_code: Option<String>,
}

impl EventOutcome {
    /// It worked.
    pub fn success() -> Self {
        Self {
            result: "success".into(),
            reason: None,
            error_code: None,
        }
    }

    /// It failed with `error_code` because of `reason`.
    pub fn failure(error_code: &str, reason: &str) -> Self {
        Self {
            result: "failure".into(),
            reason: Some(truncate(reason, MAX_AUDIT_TEXT_BYTES)),
            error_code: Some(error_code.into()),
        }
    }

    /// The outcome of a command the state machine rejected.
    pub fn rejected(rejection: &Rejection) -> Self {
        Self::failure(rejection.error_code(), &rejection.to_string())
    }
}

/// What happened.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventBody {
    /// When ([`timestamp`] format, UTC, milliseconds).
    pub time: String,
    /// What was done, in the seed's vocabulary ([`Verb`]): `create`, `update`, `delete`,
    /// `login` (and `read` for refused reads).
    pub action: String,
    /// Conifer's finer name of the operation attempted (`api_key.create`, `auth.login`,
    /// `project.member.add`, …).
    pub operation: String,
    /// Kind of object acted on, in the seed's vocabulary ([`ResourceType`]).
    pub resource_type: String,
    /// What the seed's tables name for the object: an organization's, project's or index's
    /// name, an API key's id, a user's email, a list of emails for members created, `{user,
    /// role}` for a role change, `{user, project}` for a project member removed.
    pub resource_id: Option<JsonValue>,
    /// Conifer's id of the object (an organization's, project's, user's or key's UUID).
    pub resource_uid: Option<String>,
    /// Its name.
    pub resource_name: Option<String>,
    /// Whether it worked.
    pub outcome: EventOutcome,
    /// What was asked for, without secrets.
    pub parameters: Params,
}

/// One audit event, in the schema of `docs/audit/event.schema.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// Unique id.
    pub id: String,
    /// The organization whose chain holds the event (`null`: the cluster chain).
    pub organization_id: Option<String>,
    /// Its name when the event was recorded.
    pub organization_name: Option<String>,
    /// The client software.
    pub client: Client,
    /// Who acted.
    pub actor: Actor,
    /// What happened.
    pub event: EventBody,
    /// The client's address.
    pub source_ip: Option<String>,
    /// The request's id.
    pub request_id: Option<String>,
    /// The node that received the request.
    pub node_id: u64,
    /// Position in the chain, from 1.
    pub sequence: u64,
    /// Whether it records a change (kept for its retention) or a refusal (prunable).
    pub class: EventClass,
    /// `hash` of the previous event of the chain ([`GENESIS_HASH`] for the first).
    pub prev_hash: String,
    /// `hash` of the last event of a change before this one ([`GENESIS_HASH`] when none):
    /// the changes' own chain, which still links across pruned refusals, so no change can
    /// be passed off as a pruned refusal.
    pub prev_change_hash: String,
    /// SHA-256 of this event's JSON with `hash` empty, hex.
    pub hash: String,
}

impl AuditEvent {
    /// The chain the event belongs to.
    pub fn chain_id(&self) -> &str {
        self.organization_id.as_deref().unwrap_or(CLUSTER_CHAIN)
    }
}

/// The hash an event must carry: SHA-256 over its compact JSON serialization (fields in
/// schema order, parameter keys sorted) with `hash` set to the empty string. `prev_hash` is
/// inside what is hashed, which links the chain.
pub fn event_hash(event: &AuditEvent) -> String {
    let mut unhashed = event.clone();
    unhashed.hash.clear();
    // Serializing plain data to JSON cannot fail.
    let bytes = serde_json::to_vec(&unhashed).unwrap_or_default();
    hex::encode(Sha256::digest(&bytes))
}

/// Milliseconds since the epoch as the fixed-width UTC text events carry
/// (`2026-11-29T04:05:06.789Z`), so that text order is time order.
pub fn timestamp(ms_since_epoch: u64) -> String {
    let nanos = i128::from(ms_since_epoch) * 1_000_000;
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

/// Now, as [`timestamp`] text.
pub fn now() -> String {
    timestamp(now_ms())
}

/// Milliseconds since the epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Parses RFC 3339 text (any offset or precision) into [`timestamp`] text.
pub fn normalize_time(text: &str) -> Option<String> {
    let t =
        time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()?;
    let ms = t.unix_timestamp_nanos() / 1_000_000;
    u64::try_from(ms).ok().map(timestamp)
}

/// `text` cut to at most `max` bytes at a character boundary.
pub fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

/// What an attempt did to what, as read from the command and the state before it applied.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resource {
    /// What was done (the event's `action`).
    pub action: Verb,
    /// Kind of object.
    pub resource_type: ResourceType,
    /// What the seed names for it ([`EventBody::resource_id`]).
    pub resource_id: Option<JsonValue>,
    /// Conifer's id of it.
    pub resource_uid: Option<String>,
    /// Its name.
    pub resource_name: Option<String>,
    /// The organization it belongs to, when known.
    pub organization_id: Option<String>,
    /// What was asked for, without secrets.
    pub parameters: Params,
}

impl Resource {
    /// `action` done to a `kind` whose Conifer id is `uid`.
    pub fn new(action: Verb, kind: ResourceType, uid: Option<&str>) -> Self {
        Self {
            action,
            resource_type: kind,
            resource_id: None,
            resource_uid: uid.map(str::to_string),
            resource_name: None,
            organization_id: None,
            parameters: Params::default(),
        }
    }

    /// The same, with the seed's `resource_id` (when known).
    pub fn id(mut self, id: Option<impl Into<Value>>) -> Self {
        self.resource_id = id.map(|v| JsonValue(v.into()));
        self
    }

    /// The same, named `name`.
    pub fn named(mut self, name: Option<&str>) -> Self {
        self.resource_name = name.map(str::to_string);
        self
    }

    /// The same, in organization `org`.
    pub fn in_org(mut self, org: Option<&str>) -> Self {
        self.organization_id = org.map(str::to_string);
        self
    }

    /// The same, with `parameters`.
    pub fn params(mut self, parameters: Params) -> Self {
        self.parameters = parameters;
        self
    }
}

/// An event the node drafted without a state change (a denied attempt, a failed sign-in,
/// an overflow summary), proposed in a batch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditDraft {
    /// Who, when, where.
    pub context: AuditContext,
    /// What it aimed at.
    pub resource: Resource,
    /// How it ended.
    pub outcome: EventOutcome,
}

fn roles_param<T: Serialize>(roles: &[T]) -> Value {
    serde_json::to_value(roles).unwrap_or(Value::Null)
}

fn project_org(state: &ControlState, project_id: &str) -> Option<String> {
    state
        .projects
        .get(project_id)
        .map(|p| p.organization_id.clone())
}

fn member_name(state: &ControlState, kind: MemberKind, id: &str) -> Option<String> {
    match kind {
        MemberKind::User => state.users.get(id).map(|u| u.email.clone()),
        MemberKind::ServiceAccount => state.service_accounts.get(id).map(|a| a.name.clone()),
    }
}

fn principal_kind(state: &ControlState, id: &str) -> Option<MemberKind> {
    if state.users.contains_key(id) {
        Some(MemberKind::User)
    } else if state.service_accounts.contains_key(id) {
        Some(MemberKind::ServiceAccount)
    } else {
        None
    }
}

/// How the seed names a member in `resource_id`: a user by email, a service account (which
/// the seed does not list) by its id.
fn member_handle(state: &ControlState, kind: MemberKind, id: &str) -> String {
    match kind {
        MemberKind::User => member_name(state, kind, id).unwrap_or_else(|| id.to_string()),
        MemberKind::ServiceAccount => id.to_string(),
    }
}

/// The field naming a member in an object `resource_id` (`{user, role}`).
fn member_field(kind: MemberKind) -> &'static str {
    match kind {
        MemberKind::User => "user",
        MemberKind::ServiceAccount => "service_account",
    }
}

/// What `command` does to what, read from the state before it applies, in the seed's
/// vocabulary (its tables give `action`, `resource_type` and `resource_id` for each row).
/// Secrets (hashes, keys) never become parameters.
pub fn describe(state: &ControlState, command: &Command) -> Resource {
    use ResourceType as T;
    use Verb as V;
    match command {
        Command::Bootstrap {
            organization,
            project,
            api_key,
            ..
        } => Resource::new(V::Create, T::Organization, Some(&organization.id))
            .id(Some(organization.name.as_str()))
            .named(Some(&organization.name))
            .in_org(Some(&organization.id))
            .params(
                Params::default()
                    .with("project_id", project.id.as_str())
                    .with("project_name", project.name.as_str())
                    .with("api_key_id", api_key.id.as_str()),
            ),
        Command::CreateProject { project, owner } => {
            Resource::new(V::Create, T::Project, Some(&project.id))
                .id(Some(project.name.as_str()))
                .named(Some(&project.name))
                .in_org(Some(&project.organization_id))
                .params(
                    Params::default()
                        .with("name", project.name.as_str())
                        .with("max_pods", project.max_pods)
                        .with(
                            "force_encryption_with_cmek",
                            project.force_encryption_with_cmek,
                        )
                        .with_some("owner_id", owner.as_ref().map(|o| o.principal_id.as_str())),
                )
        }
        Command::UpdateProject {
            id,
            name,
            max_pods,
            force_encryption_with_cmek,
        } => {
            let mut resource = project_resource(state, V::Update, id);
            // A rename is recorded under the new name, as the seed's organization rename is.
            if let Some(name) = name {
                resource = resource.id(Some(name.as_str()));
            }
            resource.params(
                Params::default()
                    .with_some("name", name.as_deref())
                    .with_some("max_pods", *max_pods)
                    .with_some("force_encryption_with_cmek", *force_encryption_with_cmek),
            )
        }
        Command::DeleteProject { id } => project_resource(state, V::Delete, id),
        Command::CreateApiKey(key) => Resource::new(V::Create, T::ApiKey, Some(&key.id))
            .id(Some(key.id.as_str()))
            .named(Some(&key.name))
            .in_org(project_org(state, &key.project_id).as_deref())
            .params(
                Params::default()
                    .with("project_id", key.project_id.as_str())
                    .with("name", key.name.as_str())
                    .with("roles", roles_param(&key.roles)),
            ),
        Command::DeleteApiKey { id } => key_resource(state, V::Delete, id),
        Command::UpdateApiKey { id, name, roles } => {
            let mut resource = key_resource(state, V::Update, id);
            resource.parameters = resource
                .parameters
                .with_some("name", name.as_deref())
                .with_some("roles", roles.as_ref().map(|r| roles_param(r)));
            resource
        }
        Command::CreateOrganization(org) => {
            Resource::new(V::Create, T::Organization, Some(&org.id))
                .id(Some(org.name.as_str()))
                .named(Some(&org.name))
                .in_org(Some(&org.id))
                .params(Params::default().with("name", org.name.as_str()))
        }
        Command::RenameOrganization { id, name } => org_resource(state, V::Update, id)
            .id(Some(name.as_str()))
            .params(Params::default().with("name", name.as_str())),
        Command::DeleteOrganization { id } => org_resource(state, V::Delete, id),
        Command::Identity(identity) => describe_identity(state, identity),
        Command::CreateIndex { index, .. } => {
            index_resource(state, V::Create, &index.project_id, &index.name).params(
                Params::default()
                    .with("project_id", index.project_id.as_str())
                    .with("dimension", index.dimension)
                    .with("metric", index.metric.as_str())
                    .with("vector_type", index.vector_type.as_str())
                    .with("deletion_protection", index.deletion_protection),
            )
        }
        Command::ConfigureIndex {
            project_id,
            name,
            deletion_protection,
            tags_json,
        } => index_resource(state, V::Update, project_id, name).params(
            Params::default()
                .with("project_id", project_id.as_str())
                .with_some("deletion_protection", *deletion_protection)
                .with_some(
                    "tags",
                    tags_json
                        .as_deref()
                        .and_then(|t| serde_json::from_str::<Value>(t).ok()),
                ),
        ),
        Command::DeleteIndex { project_id, name } => {
            index_resource(state, V::Delete, project_id, name)
                .params(Params::default().with("project_id", project_id.as_str()))
        }
        Command::MarkIndexReady { group_id } => {
            let index = state.index_of_group(*group_id);
            let resource = match index {
                Some(i) => index_resource(state, V::Update, &i.project_id, &i.name),
                None => Resource::new(V::Update, T::Index, None),
            };
            resource.params(Params::default().with("group_id", *group_id))
        }
        Command::SignIn { principal_id, kind } => {
            let org = match kind {
                MemberKind::User => state.users.get(principal_id).map(|u| &u.organization_id),
                MemberKind::ServiceAccount => state
                    .service_accounts
                    .get(principal_id)
                    .map(|a| &a.organization_id),
            };
            Resource::new(V::Login, ResourceType::of_member(*kind), Some(principal_id))
                .id(Some(member_handle(state, *kind, principal_id)))
                .named(member_name(state, *kind, principal_id).as_deref())
                .in_org(org.map(String::as_str))
        }
        Command::Audited { .. } | Command::RecordAudit(_) | Command::PurgeAudit { .. } => {
            Resource::new(V::Update, T::AuditLog, None)
        }
        Command::Membership(record) => describe_membership(record),
    }
}

/// A membership change: the cluster, named by the node changed (as a refused promote or
/// remove names it), on the cluster chain.
fn describe_membership(record: &crate::control::membership::MembershipRecord) -> Resource {
    use crate::control::membership::MemberChange;
    let node = record.node_id.to_string();
    let (verb, params) = match &record.change {
        MemberChange::Join {
            cluster_addr,
            api_addr,
            voter,
        } => (
            Verb::Create,
            Params::default()
                .with("cluster_addr", cluster_addr.as_str())
                .with("api_addr", api_addr.as_str())
                .with("voter", *voter),
        ),
        MemberChange::Promote => (Verb::Update, Params::default()),
        MemberChange::Remove { force } => (Verb::Delete, Params::default().with("force", *force)),
    };
    Resource::new(verb, ResourceType::Cluster, Some(&node))
        .id(Some(node.as_str()))
        .params(params.with("node_id", record.node_id))
}

fn project_resource(state: &ControlState, action: Verb, id: &str) -> Resource {
    let project = state.projects.get(id);
    Resource::new(action, ResourceType::Project, Some(id))
        .id(project.map(|p| p.name.as_str()))
        .named(project.map(|p| p.name.as_str()))
        .in_org(project.map(|p| p.organization_id.as_str()))
}

fn key_resource(state: &ControlState, action: Verb, id: &str) -> Resource {
    let key = state.api_keys.get(id);
    let org = key.and_then(|k| project_org(state, &k.project_id));
    Resource::new(action, ResourceType::ApiKey, Some(id))
        .id(Some(id))
        .named(key.map(|k| k.name.as_str()))
        .in_org(org.as_deref())
        .params(Params::default().with_some("project_id", key.map(|k| k.project_id.as_str())))
}

fn org_resource(state: &ControlState, action: Verb, id: &str) -> Resource {
    let name = state.organizations.get(id).map(|o| o.name.as_str());
    Resource::new(action, ResourceType::Organization, Some(id))
        .id(name)
        .named(name)
        .in_org(Some(id))
}

fn index_resource(state: &ControlState, action: Verb, project_id: &str, name: &str) -> Resource {
    Resource::new(action, ResourceType::Index, None)
        .id(Some(name))
        .named(Some(name))
        .in_org(project_org(state, project_id).as_deref())
}

/// A user of an organization, named by email in `resource_id` (the seed's "delete org
/// member"; callers replace it for the rows that name more).
fn user_resource(state: &ControlState, action: Verb, id: &str) -> Resource {
    let user = state.users.get(id);
    Resource::new(action, ResourceType::User, Some(id))
        .id(user.map(|u| u.email.as_str()))
        .named(user.map(|u| u.email.as_str()))
        .in_org(user.map(|u| u.organization_id.as_str()))
}

fn account_resource(state: &ControlState, action: Verb, id: &str) -> Resource {
    let account = state.service_accounts.get(id);
    Resource::new(action, ResourceType::ServiceAccount, Some(id))
        .id(Some(id))
        .named(account.map(|a| a.name.as_str()))
        .in_org(account.map(|a| a.organization_id.as_str()))
}

/// A project membership: a `user` (or `service-account`) resource; `resource_id` is set by
/// the caller to the seed's form of its row.
fn membership_resource(
    state: &ControlState,
    action: Verb,
    project_id: &str,
    principal_id: &str,
    kind: Option<MemberKind>,
) -> Resource {
    let kind = kind.or_else(|| principal_kind(state, principal_id));
    Resource::new(
        action,
        ResourceType::of_member(kind.unwrap_or(MemberKind::User)),
        Some(principal_id),
    )
    .named(
        kind.and_then(|k| member_name(state, k, principal_id))
            .as_deref(),
    )
    .in_org(project_org(state, project_id).as_deref())
    .params(
        Params::default()
            .with("project_id", project_id)
            .with_some("member_type", kind.map(MemberKind::as_str)),
    )
}

fn describe_identity(state: &ControlState, command: &IdentityCommand) -> Resource {
    use IdentityCommand as C;
    use ResourceType as T;
    use Verb as V;
    match command {
        C::CreateUser(user) => Resource::new(V::Create, T::User, Some(&user.id))
            .id(Some(serde_json::json!([user.email])))
            .named(Some(&user.email))
            .in_org(Some(&user.organization_id))
            .params(
                Params::default()
                    .with("email", user.email.as_str())
                    .with("name", user.name.as_str())
                    .with("role", user.role.as_str()),
            ),
        C::SetUserRole { id, role } => {
            let email = state.users.get(id).map(|u| u.email.clone());
            user_resource(state, V::Update, id)
                .id(Some(
                    serde_json::json!({"user": email, "role": role.as_str()}),
                ))
                .params(Params::default().with("role", role.as_str()))
        }
        C::SetUserPassword { id, .. } => user_resource(state, V::Update, id),
        C::DeleteUser { id } => user_resource(state, V::Delete, id),
        C::CreateServiceAccount(account) => {
            Resource::new(V::Create, T::ServiceAccount, Some(&account.id))
                .id(Some(account.id.as_str()))
                .named(Some(&account.name))
                .in_org(Some(&account.organization_id))
                .params(
                    Params::default()
                        .with("name", account.name.as_str())
                        .with("role", account.role.as_str()),
                )
        }
        C::UpdateServiceAccount { id, name, role } => account_resource(state, V::Update, id)
            .params(
                Params::default()
                    .with_some("name", name.as_deref())
                    .with_some("role", role.map(|r| r.as_str())),
            ),
        C::RotateServiceAccountSecret { id, .. } => account_resource(state, V::Update, id),
        C::DeleteServiceAccount { id } => account_resource(state, V::Delete, id),
        C::AddProjectMember(member) => {
            let handle = member_handle(state, member.kind, &member.principal_id);
            let mut resource = membership_resource(
                state,
                V::Create,
                &member.project_id,
                &member.principal_id,
                Some(member.kind),
            )
            .id(Some(serde_json::json!([handle])));
            resource.parameters = resource
                .parameters
                .with("member_type", member.kind.as_str())
                .with("role", member.role.as_str());
            resource
        }
        C::SetProjectMemberRole {
            project_id,
            principal_id,
            role,
        } => {
            let mut resource =
                membership_resource(state, V::Update, project_id, principal_id, None);
            let kind = principal_kind(state, principal_id).unwrap_or(MemberKind::User);
            resource = resource.id(Some(serde_json::json!({
                member_field(kind): member_handle(state, kind, principal_id),
                "role": role.as_str(),
            })));
            resource.parameters = resource.parameters.with("role", role.as_str());
            resource
        }
        C::RemoveProjectMember {
            project_id,
            principal_id,
        } => {
            let kind = principal_kind(state, principal_id).unwrap_or(MemberKind::User);
            let project = state.projects.get(project_id).map(|p| p.name.clone());
            membership_resource(state, V::Delete, project_id, principal_id, None).id(Some(
                serde_json::json!({
                    member_field(kind): member_handle(state, kind, principal_id),
                    "project": project,
                }),
            ))
        }
        C::CreateOperatorToken(token) => {
            Resource::new(V::Create, T::OperatorToken, Some(&token.id)).id(Some(token.id.as_str()))
        }
        C::RotateOperatorToken { old_id, new } => {
            Resource::new(V::Update, T::OperatorToken, Some(old_id))
                .id(Some(old_id.as_str()))
                .params(Params::default().with("new_id", new.id.as_str()))
        }
        C::DeleteOperatorToken { id } => {
            Resource::new(V::Delete, T::OperatorToken, Some(id)).id(Some(id.as_str()))
        }
        C::RotateSigningKey(key) => {
            Resource::new(V::Create, T::SigningKey, Some(&key.id)).id(Some(key.id.as_str()))
        }
    }
}

/// The actor's (principal name, display name) as the state knows them.
pub fn actor_names(state: &ControlState, actor: &ActorRef) -> Option<(String, String)> {
    let id = actor.principal_id.as_str();
    match actor.principal_type {
        PrincipalType::User => state
            .users
            .get(id)
            .map(|u| (u.email.clone(), u.name.clone())),
        PrincipalType::ServiceAccount => state
            .service_accounts
            .get(id)
            .map(|a| (a.name.clone(), a.name.clone())),
        PrincipalType::ApiKey => state
            .api_keys
            .get(id)
            .map(|k| (k.name.clone(), k.name.clone())),
        PrincipalType::Operator => Some(("operator".into(), "Operator token".into())),
        PrincipalType::System => Some(("conifer".into(), "Conifer".into())),
    }
}

/// The actor of an event, named from the state, else from the proposer's hint (a batched
/// event may apply after its principal was deleted).
fn resolve_actor(state: &ControlState, actor: &ActorRef) -> Actor {
    let (principal_name, display_name) = actor_names(state, actor).unwrap_or_else(|| {
        let hint = actor
            .name_hint
            .as_deref()
            .map(|h| truncate(h, MAX_AUDIT_TEXT_BYTES))
            .unwrap_or_default();
        (hint.clone(), hint)
    });
    let display_name = if display_name.is_empty() {
        principal_name.clone()
    } else {
        display_name
    };
    Actor {
        principal_id: actor.principal_id.clone(),
        principal_name,
        principal_type: actor.principal_type,
        display_name,
    }
}

/// A draft event built from its parts; the chain fills in `sequence` and the hashes.
pub fn build_event(
    state: &ControlState,
    context: &AuditContext,
    resource: Resource,
    outcome: EventOutcome,
) -> AuditEvent {
    let actor_org = context.actor.organization_id.clone().or_else(|| {
        // An API key belongs to its project's organization.
        (context.actor.principal_type == PrincipalType::ApiKey)
            .then(|| state.api_keys.get(&context.actor.principal_id))
            .flatten()
            .and_then(|k| project_org(state, &k.project_id))
    });
    let organization_id = resource
        .organization_id
        .clone()
        .or(actor_org)
        .filter(|org| state.organizations.contains_key(org));
    let organization_name = organization_id
        .as_ref()
        .and_then(|id| state.organizations.get(id))
        .map(|o| o.name.clone());
    AuditEvent {
        id: context.id.clone(),
        organization_id,
        organization_name,
        client: Client {
            user_agent: context.user_agent.clone(),
        },
        actor: resolve_actor(state, &context.actor),
        event: EventBody {
            time: context.time.clone(),
            action: resource.action.as_str().to_string(),
            operation: context.operation.clone(),
            resource_type: resource.resource_type.as_str().to_string(),
            resource_id: resource.resource_id,
            resource_uid: resource.resource_uid,
            resource_name: resource.resource_name,
            outcome,
            parameters: resource.parameters,
        },
        source_ip: context.source_ip.clone(),
        request_id: context.request_id.clone(),
        node_id: context.node_id,
        sequence: 0,
        class: EventClass::Change,
        prev_hash: String::new(),
        prev_change_hash: String::new(),
        hash: String::new(),
    }
}

/// What an event records, which decides how long it is kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventClass {
    /// An attempt to change something (accepted or rejected by the state machine), a sign-in,
    /// a retention purge: kept for the whole retention period.
    Change,
    /// An attempt that changed nothing and was refused before it reached the state machine
    /// (denied, unauthenticated, a failed sign-in) or a summary of such attempts: kept up to
    /// [`MAX_REFUSAL_EVENTS_PER_CHAIN`] per chain.
    Refusal,
}

/// Consecutive events removed from the middle of a chain (refusals pruned for room): what a
/// verifier needs to step over them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrunedRun {
    /// The first sequence removed.
    pub first_sequence: u64,
    /// The last sequence removed.
    pub last_sequence: u64,
    /// The `prev_hash` the first removed event carried (the hash of the event before it).
    pub prev_hash: String,
    /// The hash of the last removed event (the `prev_hash` of the event after it).
    pub last_hash: String,
}

/// One organization's (or the cluster's) chain of events.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chain {
    /// The events kept, by sequence.
    pub events: BTreeMap<u64, AuditEvent>,
    /// Sequences of the kept refusal events, oldest first.
    pub refusals: VecDeque<u64>,
    /// Runs of pruned refusals between kept events, by first sequence.
    pub pruned: BTreeMap<u64, PrunedRun>,
    /// Sequence of the last event ever appended (0 before any).
    pub head_sequence: u64,
    /// Hash of the last event ever appended ([`GENESIS_HASH`] before any).
    pub head_hash: String,
    /// Hash of the last event of a change ever appended ([`GENESIS_HASH`] before any).
    pub head_change_hash: String,
    /// Sequence of the last event removed from the front (by retention, or a pruned refusal
    /// that had nothing kept before it); 0 when none was.
    pub anchor_sequence: u64,
    /// Hash of that event: the `prev_hash` the first kept event (or run) must carry.
    pub anchor_hash: String,
    /// Hash of the last event of a change at or before the anchor: the `prev_change_hash`
    /// the first kept event after it must carry.
    pub anchor_change_hash: String,
    /// Refusal events pruned for room, before their retention ran out.
    pub refusals_pruned: u64,
}

impl Default for Chain {
    fn default() -> Self {
        Self {
            events: BTreeMap::new(),
            refusals: VecDeque::new(),
            pruned: BTreeMap::new(),
            head_sequence: 0,
            head_hash: GENESIS_HASH.into(),
            head_change_hash: GENESIS_HASH.into(),
            anchor_sequence: 0,
            anchor_hash: GENESIS_HASH.into(),
            anchor_change_hash: GENESIS_HASH.into(),
            refusals_pruned: 0,
        }
    }
}

impl Chain {
    /// Events of changes kept.
    pub fn changes(&self) -> usize {
        self.events.len() - self.refusals.len()
    }

    /// Whether the chain holds more events of changes than [`CHANGE_EVENTS_BUDGET_PER_CHAIN`].
    pub fn over_budget(&self) -> bool {
        self.changes() > CHANGE_EVENTS_BUDGET_PER_CHAIN
    }

    /// The kept events with a sequence above `after`, in order.
    pub fn events_after(&self, after: u64) -> impl Iterator<Item = &AuditEvent> {
        self.events
            .range(after.saturating_add(1)..)
            .map(|(_, event)| event)
    }

    /// The pruned runs that cover a sequence after `after` and start no later than `until`,
    /// in order.
    pub fn pruned_overlapping(&self, after: u64, until: u64) -> impl Iterator<Item = &PrunedRun> {
        let reaching_in = self
            .pruned
            .range(..=after)
            .next_back()
            .map(|(_, run)| run)
            .filter(|run| run.last_sequence > after);
        let starting_in = self
            .pruned
            .range(after.saturating_add(1)..=until.max(after.saturating_add(1)))
            .map(|(_, run)| run);
        reaching_in.into_iter().chain(starting_in)
    }

    /// Removes the oldest kept item (event, or a run at the front) and moves the anchor past
    /// it; returns the events removed.
    fn drop_oldest(&mut self) -> u64 {
        let Some((&sequence, _)) = self.events.first_key_value() else {
            return 0;
        };
        if let Some(removed) = self.events.remove(&sequence) {
            if self.refusals.front() == Some(&sequence) {
                self.refusals.pop_front();
            }
            self.anchor_change_hash = match removed.class {
                EventClass::Change => removed.hash.clone(),
                EventClass::Refusal => removed.prev_change_hash,
            };
            self.anchor_sequence = removed.sequence;
            self.anchor_hash = removed.hash;
        }
        1 + self.fold_front_runs()
    }

    /// Folds runs that now start right after the anchor into it; returns the events they
    /// stood for.
    fn fold_front_runs(&mut self) -> u64 {
        let mut folded = 0;
        while let Some(run) = self.pruned.remove(&(self.anchor_sequence + 1)) {
            folded += run.last_sequence - run.first_sequence + 1;
            self.anchor_sequence = run.last_sequence;
            self.anchor_hash = run.last_hash;
        }
        folded
    }

    /// Prunes the oldest kept refusal, joining the runs beside it.
    fn prune_oldest_refusal(&mut self) {
        let Some(sequence) = self.refusals.pop_front() else {
            return;
        };
        let Some(event) = self.events.remove(&sequence) else {
            return;
        };
        self.refusals_pruned += 1;
        let mut run = PrunedRun {
            first_sequence: sequence,
            last_sequence: sequence,
            prev_hash: event.prev_hash,
            last_hash: event.hash,
        };
        let before = self
            .pruned
            .range(..sequence)
            .next_back()
            .filter(|(_, r)| r.last_sequence + 1 == sequence)
            .map(|(first, _)| *first);
        if let Some(earlier) = before.and_then(|first| self.pruned.remove(&first)) {
            run.first_sequence = earlier.first_sequence;
            run.prev_hash = earlier.prev_hash;
        }
        if let Some(later) = self.pruned.remove(&(sequence + 1)) {
            run.last_sequence = later.last_sequence;
            run.last_hash = later.last_hash;
        }
        self.pruned.insert(run.first_sequence, run);
        self.fold_front_runs();
    }
}

/// Every chain, by organization id (or [`CLUSTER_CHAIN`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditLog {
    /// The chains.
    pub chains: BTreeMap<String, Chain>,
}

impl AuditLog {
    /// Appends `event` of `class` to its chain, filling in its sequence and hashes; returns
    /// the sequence. A refusal past [`MAX_REFUSAL_EVENTS_PER_CHAIN`] prunes the chain's oldest
    /// refusal; nothing prunes an event of a change.
    pub fn append(&mut self, mut event: AuditEvent, class: EventClass) -> u64 {
        let chain_id = event.chain_id().to_string();
        let chain = self.chains.entry(chain_id.clone()).or_default();
        event.sequence = chain.head_sequence + 1;
        event.class = class;
        event.prev_hash = chain.head_hash.clone();
        event.prev_change_hash = chain.head_change_hash.clone();
        event.hash = event_hash(&event);
        chain.head_sequence = event.sequence;
        chain.head_hash = event.hash.clone();
        if class == EventClass::Change {
            chain.head_change_hash = event.hash.clone();
        }
        // Tests: someone edits this replica's copy of the event after it was chained, which
        // `conifer audit verify` through this node must catch.
        #[cfg(feature = "failpoints")]
        if fail::eval("conifer::audit::edit_stored_event", |_| ()).is_some() {
            event.actor.principal_name = "edited-behind-the-cluster's-back".into();
        }
        let sequence = event.sequence;
        chain.events.insert(sequence, event);
        match class {
            EventClass::Refusal => {
                chain.refusals.push_back(sequence);
                if chain.refusals.len() > MAX_REFUSAL_EVENTS_PER_CHAIN {
                    chain.prune_oldest_refusal();
                }
            }
            EventClass::Change => {
                if chain.changes() == CHANGE_EVENTS_BUDGET_PER_CHAIN + 1 {
                    tracing::warn!(
                        chain = chain_id,
                        "audit chain holds more than {CHANGE_EVENTS_BUDGET_PER_CHAIN} events of \
                         changes; they are kept for their retention (memory grows): shorten \
                         the retention or export and archive"
                    );
                }
            }
        }
        sequence
    }

    /// Removes every event older than `before` ([`timestamp`] text) from every chain;
    /// returns (chain id, events removed) for the chains it touched.
    pub fn purge_before(&mut self, before: &str) -> Vec<(String, u64)> {
        let mut touched = Vec::new();
        for (id, chain) in &mut self.chains {
            let mut removed = 0u64;
            while chain
                .events
                .first_key_value()
                .is_some_and(|(_, e)| e.event.time.as_str() < before)
            {
                removed += chain.drop_oldest();
            }
            if removed > 0 {
                touched.push((id.clone(), removed));
            }
        }
        touched
    }

    /// The oldest kept event's time over all chains.
    pub fn oldest_time(&self) -> Option<&str> {
        self.chains
            .values()
            .filter_map(|c| c.events.first_key_value())
            .map(|(_, e)| e.event.time.as_str())
            .min()
    }

    /// Chains holding more events of changes than their budget.
    pub fn chains_over_budget(&self) -> Vec<&str> {
        self.chains
            .iter()
            .filter(|(_, c)| c.over_budget())
            .map(|(id, _)| id.as_str())
            .collect()
    }
}

/// A query over one chain.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    /// Earliest time, inclusive ([`timestamp`] text).
    pub start_time: Option<String>,
    /// Latest time, exclusive.
    pub end_time: Option<String>,
    /// Exact action (the seed's verb).
    pub action: Option<String>,
    /// Exact operation (Conifer's name).
    pub operation: Option<String>,
    /// Exact resource type.
    pub resource_type: Option<String>,
    /// The seed's resource id: the value itself, one of its list, or a field of its object.
    pub resource_id: Option<String>,
    /// Actor id or name.
    pub actor: Option<String>,
    /// `success` or `failure`.
    pub outcome: Option<String>,
}

impl Filter {
    /// Whether `event` passes.
    pub fn matches(&self, event: &AuditEvent) -> bool {
        let time = event.event.time.as_str();
        self.start_time.as_deref().is_none_or(|t| time >= t)
            && self.end_time.as_deref().is_none_or(|t| time < t)
            && self
                .action
                .as_deref()
                .is_none_or(|a| event.event.action == a)
            && self
                .operation
                .as_deref()
                .is_none_or(|o| event.event.operation == o)
            && self
                .resource_type
                .as_deref()
                .is_none_or(|r| event.event.resource_type == r)
            && self.resource_id.as_deref().is_none_or(|r| {
                event
                    .event
                    .resource_id
                    .as_ref()
                    .is_some_and(|id| id.mentions(r))
            })
            && self
                .actor
                .as_deref()
                .is_none_or(|a| event.actor.principal_id == a || event.actor.principal_name == a)
            && self
                .outcome
                .as_deref()
                .is_none_or(|o| event.event.outcome.result == o)
    }
}

/// The replicated facts about a chain that a verifier checks events against.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainHead {
    /// Sequence of the last event removed by retention or eviction (0: none).
    pub anchor_sequence: u64,
    /// Its hash: what the first kept event's `prev_hash` must be.
    pub anchor_hash: String,
    /// The changes' chain at the anchor ([`Chain::anchor_change_hash`]).
    pub anchor_change_hash: String,
    /// Sequence of the last event.
    pub head_sequence: u64,
    /// Its hash.
    pub head_hash: String,
    /// Hash of the last event of a change.
    pub head_change_hash: String,
}

impl From<&Chain> for ChainHead {
    fn from(chain: &Chain) -> Self {
        Self {
            anchor_sequence: chain.anchor_sequence,
            anchor_hash: chain.anchor_hash.clone(),
            anchor_change_hash: chain.anchor_change_hash.clone(),
            head_sequence: chain.head_sequence,
            head_hash: chain.head_hash.clone(),
            head_change_hash: chain.head_change_hash.clone(),
        }
    }
}

/// The first broken link of a chain.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("chain broken at sequence {sequence} (event {event_id}): {problem}")]
pub struct BrokenLink {
    /// Sequence of the first event that does not verify (or the expected one, when missing).
    pub sequence: u64,
    /// Its id (empty when the event is missing).
    pub event_id: String,
    /// What is wrong.
    pub problem: String,
}

/// Verifies a whole retained chain as read through a node: its `events` and pruned `runs`
/// (each in sequence order, as pages list them) against `head`, the facts of its first
/// page. Events and runs past that head (appended while the pages were read) are left out.
/// Returns the events checked, or the first broken link.
pub fn verify_chain(
    head: &ChainHead,
    events: &[AuditEvent],
    runs: &[PrunedRun],
) -> Result<u64, BrokenLink> {
    let mut verifier = Verifier::anchored(head);
    let mut runs = runs
        .iter()
        .filter(|r| r.first_sequence <= head.head_sequence)
        .peekable();
    for event in events.iter().filter(|e| e.sequence <= head.head_sequence) {
        while let Some(run) = runs.next_if(|r| r.first_sequence < event.sequence) {
            verifier.push_pruned(run)?;
        }
        verifier.push(event)?;
    }
    for run in runs {
        verifier.push_pruned(run)?;
    }
    verifier.finish(head)
}

/// Recomputes a chain event by event.
#[derive(Debug)]
pub struct Verifier {
    expected_sequence: Option<u64>,
    expected_prev_hash: Option<String>,
    /// The hash of the last change seen: the next event's `prev_change_hash`.
    expected_change_hash: Option<String>,
    checked: u64,
    pruned: u64,
}

impl Verifier {
    /// A verifier for events that follow `anchor` (sequence, hash), or for a stretch of a
    /// chain that starts anywhere when `None` (an export with a time range).
    pub fn new(anchor: Option<(u64, String)>) -> Self {
        Self {
            expected_sequence: anchor.as_ref().map(|(s, _)| s + 1),
            expected_prev_hash: anchor.map(|(_, h)| h),
            expected_change_hash: None,
            checked: 0,
            pruned: 0,
        }
    }

    /// A verifier for a whole retained chain: its events must follow `head`'s anchor.
    pub fn anchored(head: &ChainHead) -> Self {
        let mut verifier = Self::new(Some((head.anchor_sequence, head.anchor_hash.clone())));
        verifier.expected_change_hash = Some(head.anchor_change_hash.clone());
        verifier
    }

    /// Checks the next event.
    pub fn push(&mut self, event: &AuditEvent) -> Result<(), BrokenLink> {
        let broken = |problem: String| BrokenLink {
            sequence: event.sequence,
            event_id: event.id.clone(),
            problem,
        };
        if let Some(expected) = self.expected_sequence {
            if event.sequence != expected {
                return Err(BrokenLink {
                    sequence: expected,
                    event_id: String::new(),
                    problem: format!(
                        "expected sequence {expected}, found {} (events missing or reordered)",
                        event.sequence
                    ),
                });
            }
        }
        if let Some(expected) = &self.expected_prev_hash {
            if &event.prev_hash != expected {
                return Err(broken(format!(
                    "prev_hash {} does not match the previous event's hash {expected}",
                    event.prev_hash
                )));
            }
        }
        let computed = event_hash(event);
        if computed != event.hash {
            return Err(broken(format!(
                "stored hash {} but the event's content hashes to {computed} (edited)",
                event.hash
            )));
        }
        if let Some(expected) = &self.expected_change_hash {
            if &event.prev_change_hash != expected {
                return Err(broken(format!(
                    "prev_change_hash {} does not match the last change's hash {expected} (an \
                     event of a change is missing)",
                    event.prev_change_hash
                )));
            }
        }
        self.expected_sequence = Some(event.sequence + 1);
        self.expected_prev_hash = Some(event.hash.clone());
        self.expected_change_hash = Some(match event.class {
            EventClass::Change => event.hash.clone(),
            EventClass::Refusal => event.prev_change_hash.clone(),
        });
        self.checked += 1;
        Ok(())
    }

    /// Steps over a run of pruned refusals: it must start where the chain stands and carry
    /// the hash the chain stands at. A run that also covers events already checked (they
    /// were pruned while a reader went page by page) is stepped over from where the chain
    /// stands; one wholly behind it is ignored. Runs never hold a change, so the changes'
    /// chain checked at the next change (or the head) catches a change passed off as one.
    pub fn push_pruned(&mut self, run: &PrunedRun) -> Result<(), BrokenLink> {
        let broken = |problem: String| BrokenLink {
            sequence: run.first_sequence,
            event_id: String::new(),
            problem,
        };
        if run.last_sequence < run.first_sequence {
            return Err(broken("a pruned run ends before it starts".into()));
        }
        if let Some(expected) = self.expected_sequence {
            if run.last_sequence < expected {
                return Ok(());
            }
            if run.first_sequence < expected {
                self.pruned += run.last_sequence + 1 - expected;
                self.expected_sequence = Some(run.last_sequence + 1);
                self.expected_prev_hash = Some(run.last_hash.clone());
                return Ok(());
            }
            if run.first_sequence != expected {
                return Err(broken(format!(
                    "expected sequence {expected}, found a pruned run from {} (events missing \
                     or reordered)",
                    run.first_sequence
                )));
            }
        }
        if let Some(expected) = &self.expected_prev_hash {
            if &run.prev_hash != expected {
                return Err(broken(format!(
                    "the pruned run's prev_hash {} does not match the previous event's hash \
                     {expected}",
                    run.prev_hash
                )));
            }
        }
        self.expected_sequence = Some(run.last_sequence + 1);
        self.expected_prev_hash = Some(run.last_hash.clone());
        self.pruned += run.last_sequence - run.first_sequence + 1;
        Ok(())
    }

    /// Pruned events stepped over so far.
    pub fn pruned(&self) -> u64 {
        self.pruned
    }

    /// Events checked so far.
    pub fn checked(&self) -> u64 {
        self.checked
    }

    /// Checks that the events seen end at the replicated head.
    pub fn finish(&self, head: &ChainHead) -> Result<u64, BrokenLink> {
        let last = self.expected_sequence.map_or(0, |s| s - 1);
        let last_hash = self.expected_prev_hash.as_deref().unwrap_or(GENESIS_HASH);
        let last_change = self.expected_change_hash.as_deref();
        if last_change.is_some_and(|h| h != head.head_change_hash) {
            return Err(BrokenLink {
                sequence: head.head_sequence,
                event_id: String::new(),
                problem: format!(
                    "the last change seen hashes to {}, but the replicated head's last change is \
                     {} (an event of a change is missing)",
                    last_change.unwrap_or_default(),
                    head.head_change_hash
                ),
            });
        }
        if last != head.head_sequence || last_hash != head.head_hash {
            return Err(BrokenLink {
                sequence: head.head_sequence,
                event_id: String::new(),
                problem: format!(
                    "the events end at sequence {last} with hash {last_hash}, but the replicated head is sequence {} with hash {}",
                    head.head_sequence, head.head_hash
                ),
            });
        }
        Ok(self.checked)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn context(id: &str, time_ms: u64) -> AuditContext {
        AuditContext {
            id: id.into(),
            time: timestamp(time_ms),
            operation: "project.create".into(),
            actor: ActorRef {
                principal_type: PrincipalType::Operator,
                principal_id: "op".into(),
                organization_id: None,
                name_hint: None,
            },
            source_ip: Some("127.0.0.1".into()),
            request_id: Some("r".into()),
            user_agent: Some("test".into()),
            node_id: 1,
        }
    }

    fn log_with(n: u64) -> (ControlState, AuditLog) {
        let state = crate::control::state::tests::bootstrapped();
        let mut log = AuditLog::default();
        for i in 0..n {
            let resource = Resource::new(Verb::Create, ResourceType::Project, Some("p0"))
                .id(Some("search"))
                .in_org(Some("o1"));
            let event = build_event(
                &state,
                &context(&format!("e{i}"), 1_000 * (i + 1)),
                resource,
                EventOutcome::success(),
            );
            log.append(event, EventClass::Change);
        }
        (state, log)
    }

    /// Verifies a chain as a reader of its pages does: kept events and pruned runs in
    /// sequence order.
    fn verify(chain: &Chain) -> Result<u64, BrokenLink> {
        let events: Vec<AuditEvent> = chain.events.values().cloned().collect();
        let runs: Vec<PrunedRun> = chain.pruned_overlapping(0, u64::MAX).cloned().collect();
        verify_chain(&ChainHead::from(chain), &events, &runs)
    }

    #[test]
    fn timestamps_are_fixed_width_and_sort_as_times() {
        assert_eq!(timestamp(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(timestamp(1_234), "1970-01-01T00:00:01.234Z");
        assert!(timestamp(9_999) < timestamp(10_000));
        assert_eq!(
            normalize_time("2026-11-29T05:00:00+01:00").as_deref(),
            Some("2026-11-29T04:00:00.000Z")
        );
        assert_eq!(normalize_time("yesterday"), None);
    }

    #[test]
    fn a_chain_links_every_event_to_the_previous_one() {
        let (_, log) = log_with(5);
        let chain = &log.chains["o1"];
        assert_eq!(chain.head_sequence, 5);
        assert_eq!(chain.events[&1].prev_hash, GENESIS_HASH);
        for pair in chain.events.values().collect::<Vec<_>>().windows(2) {
            assert_eq!(pair[1].prev_hash, pair[0].hash);
            assert_eq!(pair[1].sequence, pair[0].sequence + 1);
        }
        assert_eq!(verify(chain), Ok(5));
    }

    #[test]
    fn an_edited_event_is_named_as_the_first_broken_link() {
        let (_, mut log) = log_with(5);
        let chain = log.chains.get_mut("o1").unwrap();
        chain.events.get_mut(&3).unwrap().actor.principal_name = "someone-else".into();
        let broken = verify(chain).unwrap_err();
        assert_eq!(broken.sequence, 3);
        assert_eq!(broken.event_id, "e2");
        assert!(broken.problem.contains("edited"), "{broken}");
    }

    #[test]
    fn a_rehashed_edit_breaks_the_next_link_and_a_dropped_event_is_found() {
        let (_, mut log) = log_with(5);
        let mut edited = log.chains["o1"].clone();
        let second = edited.events.get_mut(&2).unwrap();
        second.event.outcome = EventOutcome::failure("X", "y");
        second.hash = event_hash(second);
        let broken = verify(&edited).unwrap_err();
        assert_eq!((broken.sequence, broken.event_id.as_str()), (3, "e2"));

        let chain = log.chains.get_mut("o1").unwrap();
        chain.events.remove(&4);
        let broken = verify(chain).unwrap_err();
        assert_eq!(broken.sequence, 4);
        assert!(broken.problem.contains("missing"), "{broken}");
    }

    #[test]
    fn a_truncated_tail_disagrees_with_the_replicated_head() {
        let (_, mut log) = log_with(4);
        let chain = log.chains.get_mut("o1").unwrap();
        let head = ChainHead::from(&*chain);
        chain.events.pop_last();
        let mut v = Verifier::new(Some((0, GENESIS_HASH.into())));
        for e in chain.events.values() {
            v.push(e).unwrap();
        }
        assert!(v.finish(&head).is_err());
    }

    #[test]
    fn purging_keeps_the_rest_of_the_chain_verifiable_from_its_anchor() {
        let (_, mut log) = log_with(6);
        let touched = log.purge_before(&timestamp(3_500));
        assert_eq!(touched, vec![("o1".to_string(), 3)]);
        let chain = &log.chains["o1"];
        assert_eq!(chain.events.len(), 3);
        assert_eq!(chain.anchor_sequence, 3);
        assert_eq!(verify(chain), Ok(3));
        assert_eq!(log.oldest_time(), Some(timestamp(4_000).as_str()));
    }

    #[test]
    fn parameters_survive_bincode_and_json_and_the_hash_with_them() {
        let (state, mut log) = log_with(0);
        let resource = Resource::new(Verb::Update, ResourceType::User, Some("k"))
            .id(Some(
                serde_json::json!({"user": "ana@example.com", "role": "OrgOwner"}),
            ))
            .in_org(Some("o1"))
            .params(
                Params::default()
                    .with("roles", roles_param(&["ProjectEditor"]))
                    .with("name", "ci"),
            );
        log.append(
            build_event(&state, &context("e", 1), resource, EventOutcome::success()),
            EventClass::Change,
        );
        let event = log.chains["o1"].events[&1].clone();
        let via_bincode: AuditEvent =
            bincode::deserialize(&bincode::serialize(&event).unwrap()).unwrap();
        let via_json: AuditEvent =
            serde_json::from_str(&serde_json::to_string(&event).unwrap()).unwrap();
        assert_eq!(via_bincode, event);
        assert_eq!(via_json, event);
        assert_eq!(event_hash(&via_json), event.hash);
    }

    #[test]
    fn filters_select_by_every_field() {
        let (_, log) = log_with(3);
        let chain = &log.chains["o1"];
        let count = |f: Filter| chain.events.values().filter(|e| f.matches(e)).count();
        assert_eq!(count(Filter::default()), 3);
        let from_two = Filter {
            start_time: Some(timestamp(2_000)),
            ..Filter::default()
        };
        assert_eq!(count(from_two), 2);
        let before_two = Filter {
            end_time: Some(timestamp(2_000)),
            ..Filter::default()
        };
        assert_eq!(count(before_two), 1);
        let other_action = Filter {
            action: Some("delete".into()),
            ..Filter::default()
        };
        assert_eq!(count(other_action), 0);
        let other_operation = Filter {
            operation: Some("project.delete".into()),
            ..Filter::default()
        };
        assert_eq!(count(other_operation), 0);
        let by_actor = Filter {
            actor: Some("operator".into()),
            outcome: Some("success".into()),
            action: Some("create".into()),
            operation: Some("project.create".into()),
            resource_type: Some("project".into()),
            resource_id: Some("search".into()),
            ..Filter::default()
        };
        assert_eq!(count(by_actor), 3);
        let other_id = Filter {
            resource_id: Some("sear".into()),
            ..Filter::default()
        };
        assert_eq!(count(other_id), 0);
    }

    #[test]
    fn refusals_past_their_cap_are_pruned_and_changes_never_are() {
        let (state, mut log) = log_with(0);
        let event = |id: &str| {
            let mut e = build_event(
                &state,
                &context(id, 5),
                Resource::new(Verb::Create, ResourceType::Project, None).in_org(Some("o1")),
                EventOutcome::success(),
            );
            e.id = id.into();
            e
        };
        // A change, a flood of refusals with changes among them, and a change at the end.
        log.append(event("first-change"), EventClass::Change);
        let flood = MAX_REFUSAL_EVENTS_PER_CHAIN as u64 + 1_000;
        for i in 0..flood {
            let class = if i % 10_000 == 5 {
                EventClass::Change
            } else {
                EventClass::Refusal
            };
            log.append(event(&format!("e{i}")), class);
        }
        log.append(event("last-change"), EventClass::Change);
        let chain = &log.chains["o1"];
        let refusals: std::collections::HashSet<u64> = chain.refusals.iter().copied().collect();
        let changes: Vec<&str> = chain
            .events
            .values()
            .filter(|e| !refusals.contains(&e.sequence))
            .map(|e| e.id.as_str())
            .collect();
        assert!(chain
            .events
            .values()
            .all(|e| (e.class == EventClass::Refusal) == refusals.contains(&e.sequence)));
        // Every change is still there, in order; refusals are at their cap.
        let expected_changes = 2 + flood.div_ceil(10_000) as usize;
        assert_eq!(changes.len(), expected_changes, "{changes:?}");
        assert_eq!(changes.first(), Some(&"first-change"));
        assert_eq!(changes.last(), Some(&"last-change"));
        assert_eq!(chain.refusals.len(), MAX_REFUSAL_EVENTS_PER_CHAIN);
        assert_eq!(
            chain.refusals_pruned,
            flood - (expected_changes as u64 - 2) - MAX_REFUSAL_EVENTS_PER_CHAIN as u64
        );
        // The oldest refusals went first; the first change is still the front, so nothing
        // folded into the anchor.
        assert_eq!(chain.anchor_sequence, 0);
        assert!(!chain.pruned.is_empty());
        // The chain verifies across the pruned runs, and a tampered run is caught.
        assert_eq!(verify(chain), Ok(chain.events.len() as u64));
        let mut tampered = chain.clone();
        let first = *tampered.pruned.keys().next().unwrap();
        tampered.pruned.get_mut(&first).unwrap().last_hash = GENESIS_HASH.into();
        assert!(verify(&tampered).is_err());
        // A change passed off as a pruned run breaks the changes' chain at the next change,
        // and at the head when it was the last.
        for hidden in ["e5", "last-change"] {
            let mut forged = chain.clone();
            let victim = forged
                .events
                .values()
                .find(|e| e.id == hidden)
                .cloned()
                .unwrap();
            forged.events.remove(&victim.sequence);
            forged.pruned.insert(
                victim.sequence,
                PrunedRun {
                    first_sequence: victim.sequence,
                    last_sequence: victim.sequence,
                    prev_hash: victim.prev_hash.clone(),
                    last_hash: victim.hash.clone(),
                },
            );
            let broken = verify(&forged).unwrap_err();
            assert!(
                broken.problem.contains("change is missing"),
                "{hidden}: {broken}"
            );
        }
        // Retention later removes the front; the runs there fold into the anchor.
        let mut purged = chain.clone();
        assert_eq!(
            purged.drop_oldest(),
            1 + 5,
            "the first change and the run of five after it"
        );
        assert_eq!(purged.anchor_sequence, 6);
        assert_eq!(verify(&purged), Ok(purged.events.len() as u64));
    }
}
