//! The event schema (`docs/audit/event.schema.json`): who acted, what was done to what,
//! how it ended, with the request's context; [`event_hash`] and the timestamp format.
//! Knows no control-plane type: the control plane names actors and organizations from its
//! state and passes them in ([`EventNames`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::{EventClass, CLUSTER_CHAIN, MAX_AUDIT_TEXT_BYTES};

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
/// `organization`, `user`, `project`, `index`, `api-key`, `backup` and `private-endpoints` as the seed names them, and in the same spelling the kinds
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
    /// A project's private endpoint (the seed's `private-endpoints`).
    PrivateEndpoints,
    /// A backup of an index (the seed's `backup`).
    Backup,
    /// A collection of an index (Pinecone's named backup).
    Collection,
}

impl ResourceType {
    /// Every resource type.
    pub const ALL: [ResourceType; 13] = [
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
        ResourceType::PrivateEndpoints,
        ResourceType::Backup,
        ResourceType::Collection,
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
            ResourceType::PrivateEndpoints => "private-endpoints",
            ResourceType::Backup => "backup",
            ResourceType::Collection => "collection",
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

    /// A user or service account (`kind`) of `organization_id`.
    pub fn member(kind: PrincipalType, id: &str, organization_id: &str) -> Self {
        Self {
            principal_type: kind,
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
    let bytes = serde_json::to_vec(&unhashed)
        .expect("an event (strings, numbers and JSON objects with string keys) always serializes");
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

/// Who an event names, as the caller's state knows them.
pub struct EventNames {
    /// The actor's (principal name, display name); `None` when the state no longer knows
    /// the principal (a batched event may apply after it was deleted).
    pub actor: Option<(String, String)>,
    /// The organization whose chain takes the event, (id, name) (`None`: the cluster chain).
    pub organization: Option<(String, String)>,
}

/// The actor of an event: named as the state knows it, else by the proposer's hint.
fn resolve_actor(actor: &ActorRef, names: Option<(String, String)>) -> Actor {
    let (principal_name, display_name) = names.unwrap_or_else(|| {
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

/// A draft event built from its parts and the names its state gives them; the chain fills
/// in `sequence` and the hashes.
pub fn build_event(
    context: &AuditContext,
    resource: Resource,
    outcome: EventOutcome,
    names: EventNames,
) -> AuditEvent {
    let (organization_id, organization_name) = names.organization.unzip();
    AuditEvent {
        id: context.id.clone(),
        organization_id,
        organization_name,
        client: Client {
            user_agent: context.user_agent.clone(),
        },
        actor: resolve_actor(&context.actor, names.actor),
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
