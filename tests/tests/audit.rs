//! The audit log on real nodes: every audited action produces exactly one event with every
//! field right (validated against `docs/audit/event.schema.json`), denied and failed attempts
//! are recorded, no secret appears in any event, queries filter and page, export and
//! `conifer audit verify` work and catch an edited event, retention purges keep the chain
//! verifiable, and a leader killed during a burst leaves actions and events one to one on
//! every node.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use conifer_node::audit::{AuditEvent, ChainHead, Verifier};
use conifer_tests::{Cluster, ClusterOptions};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

const PASSWORD: &str = "a-good-long-password";
const USER_AGENT: &str = "conifer-audit-test/1.0";

fn org(c: &Cluster) -> String {
    c.bootstrap["organization_id"].as_str().unwrap().to_string()
}

/// Sends one request through node `via` with `auth` (`Authorization: Bearer` or `Api-Key:`),
/// a fixed user agent and request id `request_id`; returns the status and JSON body.
async fn send(
    c: &Cluster,
    via: u64,
    auth: &str,
    method: Method,
    path: &str,
    body: Option<Value>,
    request_id: &str,
) -> (StatusCode, Value) {
    let mut b = c
        .http
        .request(method, c.url(via, path))
        .header("User-Agent", USER_AGENT)
        .header("X-Request-Id", request_id);
    b = match auth.strip_prefix("key:") {
        Some(key) => b.header("Api-Key", key),
        None if auth.is_empty() => b,
        None => b.bearer_auth(auth),
    };
    if let Some(body) = body {
        b = b.json(&body);
    }
    let resp = b.send().await.expect("request sent");
    let status = resp.status();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// `method path` (no body) through node 1 as the operator with request id `request_id`;
/// the answer, which must be a success.
async fn as_operator(c: &Cluster, method: Method, path: &str, request_id: &str) -> Value {
    let (status, answer) = send(c, 1, &c.admin_token(), method, path, None, request_id).await;
    assert!(status.is_success(), "{path}: {status} {answer}");
    answer
}

/// A one-node cluster whose node has `variable` set to `value`.
async fn one_node_with(variable: &str, value: &str) -> Cluster {
    Cluster::start_with(ClusterOptions {
        nodes: 1,
        env: vec![(variable.into(), value.into())],
        ..ClusterOptions::default()
    })
    .await
    .unwrap()
}

/// Creates projects `<prefix>0` … through node 1 as the operator, each request with
/// request id `request_id`.
async fn create_projects(c: &Cluster, prefix: &str, n: usize, request_id: &str) {
    for i in 0..n {
        let body = json!({"name": format!("{prefix}{i}")});
        let (status, answer) = send(
            c,
            1,
            &c.admin_token(),
            Method::POST,
            "/admin/projects",
            Some(body),
            request_id,
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{answer}");
    }
}

/// Every event of a chain through node `via`, read page by page, and the chain's head.
async fn all_events(c: &Cluster, via: u64, chain: Option<&str>) -> (Vec<Value>, Value) {
    c.audit_chain(via, chain).await.expect("audit chain")
}

/// Recomputes a chain from its events and the replicated head.
fn verify(events: &[Value], head: &Value) -> Result<u64, String> {
    let head: ChainHead = serde_json::from_value(head.clone()).map_err(|e| e.to_string())?;
    let mut verifier = Verifier::anchored(&head);
    for event in events {
        let event: AuditEvent = serde_json::from_value(event.clone()).map_err(|e| e.to_string())?;
        verifier.push(&event).map_err(|e| e.to_string())?;
    }
    verifier.finish(&head).map_err(|e| e.to_string())
}

fn schema() -> jsonschema::Validator {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docs/audit/event.schema.json"
    );
    let text = std::fs::read_to_string(path).expect("docs/audit/event.schema.json");
    let schema: Value = serde_json::from_str(&text).expect("schema is JSON");
    jsonschema::options()
        .should_validate_formats(true)
        .build(&schema)
        .expect("schema compiles")
}

fn assert_valid(validator: &jsonschema::Validator, event: &Value) {
    let errors: Vec<String> = validator
        .iter_errors(event)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "event {event} breaks the schema: {errors:?}"
    );
}

/// Waits until the chain holds at least `n` events matching `pred` (batched events arrive
/// within a second).
async fn wait_for(c: &Cluster, chain: Option<&str>, n: usize, pred: impl Fn(&Value) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (events, _) = all_events(c, 1, chain).await;
        let found = events.iter().filter(|e| pred(e)).count();
        if found >= n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "only {found} of {n} expected events arrived"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Whether event `e` is of Conifer's operation `operation` with `result`.
fn operation_is(e: &Value, operation: &str, result: &str) -> bool {
    e["event"]["operation"] == operation && e["event"]["outcome"]["result"] == result
}

/// What one request must have recorded: its request id, Conifer's operation, the seed's
/// action, resource type and resource id (`null`: none), the result and the error code.
struct Expected {
    rid: String,
    operation: &'static str,
    action: &'static str,
    resource_type: &'static str,
    resource_id: Value,
    result: &'static str,
    code: Option<&'static str>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_audited_action_records_one_event_with_every_field() {
    let c = Cluster::start(1).await.unwrap();
    let op = c.admin_token();
    let org_id = org(&c);
    let mut secrets: Vec<String> = vec![op.clone(), c.api_key(), PASSWORD.into()];
    // Every request whose event must exist exactly once in the organization's chain, with
    // the seed's vocabulary for it (Pinecone's security page, its audit tables).
    let mut expected: Vec<Expected> = Vec::new();
    let mut step = 0;
    let mut next_id = || {
        step += 1;
        format!("req-{step}")
    };
    macro_rules! act {
        ($auth:expr, $method:expr, $path:expr, $body:expr, $operation:expr,
         ($action:expr, $rtype:expr, $resource_id:expr), $status:expr) => {{
            let rid = next_id();
            let (status, body) = send(&c, 1, $auth, $method, &$path, $body, &rid).await;
            assert_eq!(status.as_u16(), $status, "{} {}: {body}", $operation, $path);
            let (result, code) = if status.is_success() {
                ("success", None)
            } else {
                (
                    "failure",
                    Some(body["error"]["code"].as_str().unwrap_or("?")),
                )
            };
            let code: Option<&'static str> = code.map(|c| &*String::leak(c.to_string()));
            expected.push(Expected {
                rid,
                operation: $operation,
                action: $action,
                resource_type: $rtype,
                resource_id: $resource_id,
                result,
                code,
            });
            body
        }};
    }

    let project = act!(
        &op,
        Method::POST,
        "/admin/projects",
        Some(json!({"name": "audited"})),
        "project.create",
        ("create", "project", json!("audited")),
        201
    );
    let pid = project["id"].as_str().unwrap().to_string();
    act!(
        &op,
        Method::PATCH,
        format!("/admin/projects/{pid}"),
        Some(json!({"name": "audited-2"})),
        "project.update",
        ("update", "project", json!("audited-2")),
        200
    );
    let key = act!(
        &op,
        Method::POST,
        format!("/admin/projects/{pid}/api-keys"),
        Some(json!({"name": "ci", "roles": ["ProjectEditor"]})),
        "api_key.create",
        ("create", "api-key", Value::Null),
        201
    );
    let kid = key["key"]["id"]
        .as_str()
        .or(key["id"].as_str())
        .unwrap()
        .to_string();
    expected.last_mut().unwrap().resource_id = json!(kid);
    let key_value = key["value"].as_str().unwrap().to_string();
    secrets.push(key_value.clone());
    act!(
        &op,
        Method::PATCH,
        format!("/admin/api-keys/{kid}"),
        Some(json!({"roles": ["ProjectEditor", "DataPlaneViewer"]})),
        "api_key.update",
        ("update", "api-key", json!(kid)),
        200
    );
    let user = act!(
        &op,
        Method::POST,
        format!("/admin/organizations/{org_id}/members"),
        Some(json!({"email": "ann@example.test", "role": "OrgMember", "password": PASSWORD})),
        "organization.member.create",
        ("create", "user", json!(["ann@example.test"])),
        201
    );
    let uid = user["id"].as_str().unwrap().to_string();
    act!(
        &op,
        Method::PATCH,
        format!("/admin/organizations/{org_id}/members/{uid}"),
        Some(json!({"role": "OrgManager"})),
        "organization.member.update",
        (
            "update",
            "user",
            json!({"user": "ann@example.test", "role": "OrgManager"})
        ),
        200
    );
    act!(
        &op,
        Method::POST,
        format!("/admin/projects/{pid}/members"),
        Some(json!({"user_id": uid, "role": "ProjectMember"})),
        "project.member.add",
        ("create", "user", json!(["ann@example.test"])),
        201
    );
    act!(
        &op,
        Method::PATCH,
        format!("/admin/projects/{pid}/members/{uid}"),
        Some(json!({"role": "ProjectManager"})),
        "project.member.update",
        (
            "update",
            "user",
            json!({"user": "ann@example.test", "role": "ProjectManager"})
        ),
        200
    );
    act!(
        &op,
        Method::DELETE,
        format!("/admin/projects/{pid}/members/{uid}"),
        None,
        "project.member.remove",
        (
            "delete",
            "user",
            json!({"user": "ann@example.test", "project": "audited-2"})
        ),
        202
    );

    // Sign-ins: a good one, a wrong password, an unknown email (cluster chain).
    let login = act!(
        "",
        Method::POST,
        "/auth/login",
        Some(json!({"email": "ann@example.test", "password": PASSWORD})),
        "auth.login",
        ("login", "user", json!("ann@example.test")),
        200
    );
    secrets.push(login["access_token"].as_str().unwrap().to_string());
    // The user changes their password (the event is the change; the answer a new token).
    let changed = act!(
        "",
        Method::POST,
        "/auth/password",
        Some(json!({"email": "ann@example.test", "password": PASSWORD,
            "new_password": "another-good-password"})),
        "auth.password",
        ("update", "user", json!("ann@example.test")),
        200
    );
    let user_token = changed["access_token"].as_str().unwrap().to_string();
    secrets.push(user_token.clone());
    secrets.push("another-good-password".into());
    act!(
        "",
        Method::POST,
        "/auth/login",
        Some(json!({"email": "ann@example.test", "password": "not-the-password"})),
        "auth.login",
        ("login", "user", json!("ann@example.test")),
        401
    );
    let (status, _) = send(
        &c,
        1,
        "",
        Method::POST,
        "/auth/login",
        Some(json!({"email": "nobody@example.test", "password": "whatever-it-is"})),
        "unknown",
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // A manager may not read the audit log: denied, and the denial is an event.
    act!(
        &user_token,
        Method::GET,
        "/admin/audit-logs",
        None,
        "audit_log.read",
        ("read", "audit-log", Value::Null),
        403
    );

    // Service accounts.
    let sa = act!(
        &op,
        Method::POST,
        format!("/admin/organizations/{org_id}/service-accounts"),
        Some(json!({"name": "robot"})),
        "service_account.create",
        ("create", "service-account", Value::Null),
        201
    );
    let sa_id = sa["client_id"].as_str().unwrap().to_string();
    expected.last_mut().unwrap().resource_id = json!(sa_id);
    let sa_secret = sa["client_secret"].as_str().unwrap().to_string();
    secrets.push(sa_secret.clone());
    let token = act!(
        "",
        Method::POST,
        "/oauth/token",
        Some(
            json!({"grant_type": "client_credentials", "client_id": sa_id, "client_secret": sa_secret})
        ),
        "auth.token",
        ("login", "service-account", json!(sa_id)),
        200
    );
    secrets.push(token["access_token"].as_str().unwrap().to_string());
    act!(
        "",
        Method::POST,
        "/oauth/token",
        Some(
            json!({"grant_type": "client_credentials", "client_id": sa_id, "client_secret": "wrong"})
        ),
        "auth.token",
        ("login", "service-account", json!(sa_id)),
        401
    );
    let rotated = act!(
        &op,
        Method::POST,
        format!("/admin/service-accounts/{sa_id}/rotate-secret"),
        None,
        "service_account.rotate_secret",
        ("update", "service-account", json!(sa_id)),
        200
    );
    secrets.push(rotated["client_secret"].as_str().unwrap().to_string());
    act!(
        &op,
        Method::PATCH,
        format!("/admin/service-accounts/{sa_id}"),
        Some(json!({"name": "robot-2"})),
        "service_account.update",
        ("update", "service-account", json!(sa_id)),
        200
    );
    act!(
        &op,
        Method::DELETE,
        format!("/admin/service-accounts/{sa_id}"),
        None,
        "service_account.delete",
        ("delete", "service-account", json!(sa_id)),
        202
    );

    // Indexes, through the project's key; a protected index refuses deletion (a failure).
    let k = format!("key:{key_value}");
    act!(
        &k,
        Method::POST,
        "/indexes",
        Some(
            json!({"name": "audited-idx", "dimension": 4, "metric": "cosine",
            "deletion_protection": "enabled",
            "spec": {"serverless": {"cloud": "aws", "region": "us-east-1"}}})
        ),
        "index.create",
        ("create", "index", json!("audited-idx")),
        201
    );
    act!(
        &k,
        Method::DELETE,
        "/indexes/audited-idx",
        None,
        "index.delete",
        ("delete", "index", json!("audited-idx")),
        403
    );
    // The API says FORBIDDEN (Pinecone's answer); the event keeps the state machine's reason.
    expected.last_mut().unwrap().code = Some("FAILED_PRECONDITION");
    act!(
        &k,
        Method::PATCH,
        "/indexes/audited-idx",
        Some(json!({"deletion_protection": "disabled"})),
        "index.configure",
        ("update", "index", json!("audited-idx")),
        200
    );
    // The seed's backup events: named by the backup's name.
    let backup = act!(
        &k,
        Method::POST,
        "/indexes/audited-idx/backups",
        Some(json!({"name": "audited-backup"})),
        "backup.create",
        ("create", "backup", json!("audited-backup")),
        201
    );
    let backup_id = backup["backup_id"].as_str().unwrap().to_string();
    act!(
        &k,
        Method::DELETE,
        format!("/backups/{backup_id}"),
        None,
        "backup.delete",
        ("delete", "backup", json!("audited-backup")),
        202
    );
    act!(
        &k,
        Method::DELETE,
        "/indexes/audited-idx",
        None,
        "index.delete",
        ("delete", "index", json!("audited-idx")),
        202
    );

    act!(
        &op,
        Method::PATCH,
        format!("/admin/organizations/{org_id}"),
        Some(json!({"name": "renamed-org"})),
        "organization.update",
        ("update", "organization", json!("renamed-org")),
        200
    );
    act!(
        &op,
        Method::DELETE,
        format!("/admin/api-keys/{kid}"),
        None,
        "api_key.delete",
        ("delete", "api-key", json!(kid)),
        202
    );
    act!(
        &op,
        Method::DELETE,
        format!("/admin/organizations/{org_id}/members/{uid}"),
        None,
        "organization.member.remove",
        ("delete", "user", json!("ann@example.test")),
        202
    );
    act!(
        &op,
        Method::DELETE,
        format!("/admin/projects/{pid}"),
        None,
        "project.delete",
        ("delete", "project", json!("audited-2")),
        202
    );

    // Cluster chain: operator tokens and signing keys.
    let spare = as_operator(&c, Method::POST, "/admin/operator-tokens", "tok-1").await;
    secrets.push(spare["value"].as_str().unwrap().to_string());
    let spare_id = spare["id"].as_str().unwrap();
    let rotate = format!("/admin/operator-tokens/{spare_id}/rotate");
    let rotated = as_operator(&c, Method::POST, &rotate, "tok-3").await;
    secrets.push(rotated["value"].as_str().unwrap().to_string());
    let delete = format!("/admin/operator-tokens/{}", rotated["id"].as_str().unwrap());
    as_operator(&c, Method::DELETE, &delete, "tok-2").await;
    as_operator(&c, Method::POST, "/admin/signing-keys/rotate", "sk-1").await;

    // Batched events arrive within a second.
    wait_for(&c, Some(&org_id), 2, |e| {
        e["event"]["outcome"]["error_code"] == "UNAUTHENTICATED"
    })
    .await;
    wait_for(&c, Some(&org_id), 1, |e| {
        operation_is(e, "audit_log.read", "failure")
    })
    .await;
    wait_for(&c, None, 1, |e| operation_is(e, "auth.login", "failure")).await;

    let validator = schema();
    let (events, head) = all_events(&c, 1, Some(&org_id)).await;
    let (cluster_events, cluster_head) = all_events(&c, 1, None).await;
    for e in events.iter().chain(&cluster_events) {
        assert_valid(&validator, e);
    }
    let by_request: BTreeMap<&str, Vec<&Value>> =
        events.iter().fold(BTreeMap::new(), |mut m, e| {
            if let Some(r) = e["request_id"].as_str() {
                m.entry(r).or_insert_with(Vec::new).push(e);
            }
            m
        });
    for x in &expected {
        let found = by_request.get(x.rid.as_str()).cloned().unwrap_or_default();
        assert_eq!(
            found.len(),
            1,
            "{} ({}) has {} events: {found:?}",
            x.rid,
            x.operation,
            found.len()
        );
        let e = found[0];
        assert_eq!(e["event"]["operation"], x.operation, "{e}");
        assert_eq!(e["event"]["action"], x.action, "{e}");
        assert_eq!(e["event"]["resource_type"], x.resource_type, "{e}");
        assert_eq!(e["event"]["resource_id"], x.resource_id, "{e}");
        assert_eq!(e["event"]["outcome"]["result"], x.result, "{e}");
        assert_eq!(e["event"]["outcome"]["error_code"].as_str(), x.code, "{e}");
        assert_eq!(e["client"]["userAgent"], USER_AGENT, "{e}");
        assert_eq!(e["source_ip"], "127.0.0.1", "{e}");
        assert_eq!(e["node_id"], 1, "{e}");
        assert_eq!(e["organization_id"], org_id.as_str(), "{e}");
        assert!(
            e["event"]["time"].as_str().unwrap().starts_with("20"),
            "{e}"
        );
    }
    // Spot checks of actors, names and parameters.
    let first = |rid: &str| by_request[rid][0];
    let created = first("req-1");
    assert_eq!(created["actor"]["principal_type"], "operator");
    assert_eq!(created["event"]["resource_uid"], pid.as_str());
    assert_eq!(created["event"]["resource_name"], "audited");
    assert_eq!(created["organization_name"], "default");
    let key_created = first("req-3");
    assert_eq!(
        key_created["event"]["parameters"]["roles"],
        json!(["ProjectEditor"])
    );
    assert_eq!(
        key_created["event"]["parameters"]["project_id"],
        pid.as_str()
    );
    let bad_login = events
        .iter()
        .find(|e| operation_is(e, "auth.login", "failure"))
        .unwrap();
    assert_eq!(bad_login["actor"]["principal_id"], uid.as_str());
    assert_eq!(bad_login["actor"]["principal_name"], "ann@example.test");
    let denied = events
        .iter()
        .find(|e| operation_is(e, "audit_log.read", "failure"))
        .unwrap();
    assert_eq!(denied["actor"]["principal_type"], "user");
    assert_eq!(
        denied["event"]["outcome"]["error_code"],
        "PERMISSION_DENIED"
    );
    let index_created = events
        .iter()
        .find(|e| operation_is(e, "index.create", "success"))
        .unwrap();
    assert_eq!(index_created["actor"]["principal_type"], "api_key");
    assert_eq!(index_created["actor"]["principal_name"], "ci");
    assert_eq!(index_created["event"]["parameters"]["dimension"], 4);
    let renamed = events
        .iter()
        .find(|e| operation_is(e, "organization.update", "success"))
        .unwrap();
    assert_eq!(renamed["event"]["parameters"]["name"], "renamed-org");
    let unknown = cluster_events
        .iter()
        .find(|e| operation_is(e, "auth.login", "failure"))
        .unwrap();
    assert_eq!(unknown["organization_id"], Value::Null);
    assert_eq!(unknown["actor"]["principal_name"], "nobody@example.test");
    for (rid, action) in [
        ("tok-1", "operator_token.create"),
        ("tok-2", "operator_token.delete"),
        ("tok-3", "operator_token.rotate"),
        ("sk-1", "signing_key.rotate"),
    ] {
        let n = cluster_events
            .iter()
            .filter(|e| e["request_id"] == rid && e["event"]["operation"] == action)
            .count();
        assert_eq!(n, 1, "{rid} {action}");
    }
    let token_events: Vec<(&Value, &Value, &Value)> = cluster_events
        .iter()
        .filter(|e| {
            ["tok-1", "tok-2", "tok-3", "sk-1"].contains(&e["request_id"].as_str().unwrap_or(""))
        })
        .map(|e| {
            (
                &e["request_id"],
                &e["event"]["action"],
                &e["event"]["resource_type"],
            )
        })
        .collect();
    for (rid, action, rtype) in [
        ("tok-1", "create", "operator-token"),
        ("tok-2", "delete", "operator-token"),
        ("tok-3", "update", "operator-token"),
        ("sk-1", "create", "signing-key"),
    ] {
        assert!(
            token_events.contains(&(&json!(rid), &json!(action), &json!(rtype))),
            "{rid}: {token_events:?}"
        );
    }
    let bootstrap = cluster_events
        .iter()
        .chain(&events)
        .find(|e| e["event"]["operation"] == "cluster.bootstrap")
        .expect("the bootstrap is recorded");
    assert_eq!(
        (
            &bootstrap["event"]["action"],
            &bootstrap["event"]["resource_type"]
        ),
        (&json!("create"), &json!("organization"))
    );

    // No secret, nor a digest of one, anywhere.
    let text = serde_json::to_string(&(&events, &cluster_events)).unwrap();
    for secret in &secrets {
        assert!(
            !text.contains(secret.as_str()),
            "a secret appears in the audit log"
        );
    }
    for field in ["secret_sha256", "password_phc", "secret_hex", "argon2"] {
        assert!(!text.contains(field), "{field} appears in the audit log");
    }

    assert_eq!(verify(&events, &head), Ok(events.len() as u64));
    assert_eq!(
        verify(&cluster_events, &cluster_head),
        Ok(cluster_events.len() as u64)
    );

    // Filters and pagination.
    let query = |q: &str| {
        let path = format!("/admin/audit-logs?{q}");
        let op = op.clone();
        let c = &c;
        async move { send(c, 1, &op, Method::GET, &path, None, "q").await }
    };
    let (_, page) = query("operation=api_key.create").await;
    assert_eq!(page["data"].as_array().unwrap().len(), 1);
    // The seed's queries: by action, resource type and resource id.
    let (_, page) = query("action=create&resource_type=api-key").await;
    assert_eq!(page["data"].as_array().unwrap().len(), 1);
    assert_eq!(page["data"][0]["event"]["resource_id"], kid.as_str());
    let (_, page) = query(&format!(
        "resource_type=api-key&resource_id={kid}&limit=1000"
    ))
    .await;
    let key_actions: Vec<&str> = page["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"]["action"].as_str().unwrap())
        .collect();
    assert_eq!(key_actions, ["create", "update", "delete"]);
    // An email finds the user's events whether the id is the email, a list of emails or
    // an object naming the user.
    let (_, page) = query("resource_type=user&resource_id=ann@example.test&limit=1000").await;
    let user_events = page["data"].as_array().unwrap();
    for action in ["create", "update", "delete", "login"] {
        assert!(
            user_events.iter().any(|e| e["event"]["action"] == action),
            "no {action} event for the user in {user_events:?}"
        );
    }
    assert!(user_events
        .iter()
        .any(|e| e["event"]["resource_id"].is_array()));
    assert!(user_events
        .iter()
        .any(|e| e["event"]["resource_id"].is_object()));
    let (_, page) = query("action=delete&resource_type=project&resource_id=audited-2").await;
    assert_eq!(page["data"].as_array().unwrap().len(), 1);
    let (_, page) = query("outcome=failure&limit=1000").await;
    let failures = page["data"].as_array().unwrap();
    assert!(
        failures.len() >= 4
            && failures
                .iter()
                .all(|e| e["event"]["outcome"]["result"] == "failure")
    );
    let (_, page) = query("resource_type=service-account&actor=operator").await;
    assert!(page["data"]
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e["event"]["resource_type"] == "service-account"));
    assert_eq!(page["data"].as_array().unwrap().len(), 4);
    let (_, page) = query("start_time=2999-01-01T00:00:00Z").await;
    assert!(page["data"].as_array().unwrap().is_empty());
    let middle = events[events.len() / 2]["event"]["time"]
        .as_str()
        .unwrap()
        .to_string();
    let (_, page) = query(&format!("end_time={middle}&limit=1000")).await;
    assert!(page["data"]
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e["event"]["time"].as_str().unwrap() < middle.as_str()));
    let mut paged = Vec::new();
    let mut token = String::new();
    loop {
        let (status, page) = query(&format!("limit=7&pagination_token={token}")).await;
        assert_eq!(status, StatusCode::OK);
        assert!(page["data"].as_array().unwrap().len() <= 7);
        paged.extend(
            page["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["id"].clone()),
        );
        match page["pagination"]["next"].as_str() {
            Some(next) => token = next.to_string(),
            None => break,
        }
    }
    let ids: Vec<Value> = events.iter().map(|e| e["id"].clone()).collect();
    assert_eq!(paged[..ids.len()], ids[..]);
    // A page token continues only the listing that issued it.
    let (_, first) = query("limit=2&outcome=success").await;
    let token = first["pagination"]["next"].as_str().unwrap().to_string();
    let (status, _) = query(&format!("limit=2&outcome=success&pagination_token={token}")).await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = query(&format!("limit=2&outcome=failure&pagination_token={token}")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("issued for another organization_id or other filters"),
        "{body}"
    );
    for bad in [
        "limit=0",
        "limit=1001",
        "start_time=yesterday",
        "outcome=maybe",
        "pagination_token=x",
        "colour=red",
    ] {
        let (status, body) = query(bad).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
    }
    // A deleted organization's chain, its deletion last, stays readable by the operator.
    let (status, created) = send(
        &c,
        1,
        &op,
        Method::POST,
        "/admin/organizations",
        Some(json!({"name": "short-lived"})),
        "org-1",
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let gone = created["id"].as_str().unwrap().to_string();
    let (status, _) = send(
        &c,
        1,
        &op,
        Method::DELETE,
        &format!("/admin/organizations/{gone}"),
        None,
        "org-2",
    )
    .await;
    assert!(status.is_success());
    let (gone_events, gone_head) = all_events(&c, 1, Some(&gone)).await;
    let seen: Vec<(&Value, &Value, &Value, &Value)> = gone_events
        .iter()
        .map(|e| {
            let e = &e["event"];
            (
                &e["operation"],
                &e["action"],
                &e["resource_type"],
                &e["resource_id"],
            )
        })
        .collect();
    // The seed's "delete org" row: action delete, resource type organization, resource id
    // the deleted organization's name.
    let org = json!("organization");
    let name = &created["name"];
    assert_eq!(
        seen,
        [
            (&json!("organization.create"), &json!("create"), &org, name),
            (&json!("organization.delete"), &json!("delete"), &org, name),
        ]
    );
    assert_eq!(verify(&gone_events, &gone_head), Ok(2));

    // A project key never reads the audit log; the cluster chain is the operator's.
    let (status, _) = send(
        &c,
        1,
        &format!("key:{}", c.api_key()),
        Method::GET,
        "/admin/audit-logs",
        None,
        "x",
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

fn cli(c: &Cluster, args: &[&str]) -> std::process::Output {
    cli_via(c, 1, args)
}

fn cli_via(c: &Cluster, node: u64, args: &[&str]) -> std::process::Output {
    std::process::Command::new(conifer_tests::conifer_bin())
        .args(args)
        .args(["--api-url", &c.url(node, ""), "--token", &c.admin_token()])
        .arg("--ca-cert")
        .arg(c.ca_dir.join("ca.pem"))
        .output()
        .expect("conifer runs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_and_verify_catch_an_edited_event() {
    let c = Cluster::start(1).await.unwrap();
    create_projects(&c, "p", 30, "x").await;
    let verified = cli(&c, &["audit", "verify"]);
    let stdout = String::from_utf8_lossy(&verified.stdout);
    assert!(
        verified.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&verified.stderr)
    );
    assert!(stdout.contains("intact: 31 event(s)"), "{stdout}");

    let export = cli(&c, &["audit", "export"]);
    assert!(
        export.status.success(),
        "{}",
        String::from_utf8_lossy(&export.stderr)
    );
    let text = String::from_utf8(export.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 31);
    assert!(String::from_utf8_lossy(&export.stderr).contains("exported 31 audit event(s)"));
    let since = cli(
        &c,
        &[
            "audit",
            "export",
            "--operation",
            "project.create",
            "--since",
            "2000-01-01T00:00:00Z",
        ],
    );
    assert_eq!(String::from_utf8_lossy(&since.stdout).lines().count(), 30);

    let file = c.dir.path().join("events.jsonl");
    std::fs::write(&file, &text).unwrap();
    let ok = cli(&c, &["audit", "verify", "--file", file.to_str().unwrap()]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );

    // Edit one event behind the log's back: its hash no longer matches.
    let mut edited: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
    let mut event: Value = serde_json::from_str(&edited[12]).unwrap();
    let sequence = event["sequence"].as_u64().unwrap();
    event["event"]["resource_name"] = json!("not-what-happened");
    edited[12] = event.to_string();
    std::fs::write(&file, edited.join("\n")).unwrap();
    let broken = cli(&c, &["audit", "verify", "--file", file.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&broken.stderr);
    assert!(!broken.status.success());
    assert!(
        stderr.contains(&format!("chain broken at sequence {sequence}")),
        "{stderr}"
    );

    // Edited and re-hashed: the next event's link breaks instead.
    let hash = conifer_node::audit::event_hash(&serde_json::from_value(event.clone()).unwrap());
    event["hash"] = json!(hash);
    edited[12] = event.to_string();
    std::fs::write(&file, edited.join("\n")).unwrap();
    let broken = cli(&c, &["audit", "verify", "--file", file.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&broken.stderr);
    assert!(!broken.status.success());
    assert!(
        stderr.contains(&format!("chain broken at sequence {}", sequence + 1)),
        "{stderr}"
    );

    // The last event edited and re-hashed: the cluster's copy disagrees.
    let mut tail: Value = serde_json::from_str(lines[30]).unwrap();
    tail["event"]["resource_name"] = json!("tail-edit");
    tail["hash"] = json!(conifer_node::audit::event_hash(
        &serde_json::from_value(tail.clone()).unwrap()
    ));
    let mut edited: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
    edited[30] = tail.to_string();
    std::fs::write(&file, edited.join("\n")).unwrap();
    let broken = cli(&c, &["audit", "verify", "--file", file.to_str().unwrap()]);
    assert!(!broken.status.success());
    assert!(String::from_utf8_lossy(&broken.stderr).contains("differs from the cluster"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_purges_old_events_and_the_chain_still_verifies() {
    let c = one_node_with("CONIFER_AUDIT_RETENTION_S", "3").await;
    let org_id = org(&c);
    create_projects(&c, "old", 5, "old").await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (events, head) = all_events(&c, 1, Some(&org_id)).await;
        let old_left = events.iter().filter(|e| e["request_id"] == "old").count();
        let purge = events
            .iter()
            .find(|e| e["event"]["operation"] == "audit_log.purge");
        if old_left == 0 {
            let purge = purge.expect("the purge is recorded in the chain");
            assert_eq!(purge["actor"]["principal_type"], "system");
            assert!(
                purge["event"]["parameters"]["purged_events"]
                    .as_u64()
                    .unwrap()
                    >= 1
            );
            assert!(head["anchor_sequence"].as_u64().unwrap() >= 6, "{head}");
            assert_eq!(verify(&events, &head), Ok(events.len() as u64));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "events older than 3 s were not purged: {head}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_killed_during_a_burst_leaves_actions_and_events_one_to_one() {
    let mut c = Cluster::start(3).await.unwrap();
    let op = c.admin_token();
    let org_id = org(&c);
    let project = c.bootstrap["project_id"].as_str().unwrap().to_string();
    let leader = c.wait_leader(1, None).await.unwrap();
    let others: Vec<u64> = (1..=3).filter(|n| *n != leader).collect();

    let mut tasks = Vec::new();
    for worker in 0..4u64 {
        let http = c.http.clone();
        let urls: Vec<String> = (1..=3).map(|n| c.url(n, "")).collect();
        let op = op.clone();
        let project = project.clone();
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in 0..40u64 {
                let url = &urls[((worker + i) % 3) as usize];
                let resp = http
                    .post(format!("{url}/admin/projects/{project}/api-keys"))
                    .bearer_auth(&op)
                    .json(&json!({"name": format!("burst-{worker}-{i}")}))
                    .send()
                    .await;
                if let Ok(resp) = resp {
                    if resp.status() == StatusCode::CREATED {
                        let body: Value = resp.json().await.unwrap_or(Value::Null);
                        let id = body["key"]["id"].as_str().or(body["id"].as_str());
                        acked.push(id.unwrap_or_default().to_string());
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            acked
        }));
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    c.node(leader).kill();
    let mut acked = BTreeSet::new();
    for t in tasks {
        acked.extend(t.await.unwrap());
    }
    assert!(
        acked.len() > 40,
        "too few writes acknowledged: {}",
        acked.len()
    );
    c.wait_leader(others[0], Some(leader)).await.unwrap();

    let mut heads = Vec::new();
    for node in &others {
        let (events, head) = all_events(&c, *node, Some(&org_id)).await;
        assert_eq!(
            verify(&events, &head),
            Ok(events.len() as u64),
            "node {node}"
        );
        let created: Vec<String> = events
            .iter()
            .filter(|e| operation_is(e, "api_key.create", "success"))
            .map(|e| e["event"]["resource_id"].as_str().unwrap().to_string())
            .collect();
        let distinct: BTreeSet<String> = created.iter().cloned().collect();
        assert_eq!(
            distinct.len(),
            created.len(),
            "node {node}: a key has two events"
        );
        let (_, keys) = send(
            &c,
            *node,
            &op,
            Method::GET,
            &format!("/admin/projects/{project}/api-keys"),
            None,
            "list",
        )
        .await;
        let existing: BTreeSet<String> = keys["data"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|k| k["name"].as_str().unwrap_or_default().starts_with("burst-"))
            .map(|k| k["id"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(
            distinct, existing,
            "node {node}: keys and their events differ"
        );
        assert!(
            acked.is_subset(&existing),
            "node {node}: an acknowledged key is missing"
        );
        heads.push(head);
    }
    assert_eq!(heads[0], heads[1], "the nodes disagree on the chain head");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_edited_on_one_replica_fails_verify_through_that_node_only() {
    let mut c = Cluster::start(3).await.unwrap();
    // Node 3 comes back with its stored copy of the next event it appends edited after
    // chaining (what someone with access to its disk would do).
    c.node(3).kill();
    c.node(3).env.push((
        "FAILPOINTS".into(),
        "conifer::audit::edit_stored_event=1*return".into(),
    ));
    c.node(3).spawn().unwrap();
    c.wait_serving(3).await.unwrap();
    create_projects(&c, "after-tamper", 1, "t").await;
    let org_id = org(&c);
    let deadline = Instant::now() + Duration::from_secs(10);
    let edited = loop {
        let (events, _) = all_events(&c, 3, Some(&org_id)).await;
        if let Some(e) = events
            .iter()
            .find(|e| e["actor"]["principal_name"] == "edited-behind-the-cluster's-back")
        {
            break e.clone();
        }
        assert!(Instant::now() < deadline, "node 3 never edited an event");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let sequence = edited["sequence"].as_u64().unwrap();

    let clean = cli_via(&c, 1, &["audit", "verify"]);
    assert!(
        clean.status.success(),
        "{}",
        String::from_utf8_lossy(&clean.stderr)
    );
    let tampered = cli_via(&c, 3, &["audit", "verify"]);
    let stderr = String::from_utf8_lossy(&tampered.stderr);
    assert!(!tampered.status.success(), "verify through node 3 passed");
    assert!(
        stderr.contains(&format!("chain broken at sequence {sequence}"))
            && stderr.contains("edited"),
        "{stderr}"
    );
    // The replicated head is the same everywhere: only recomputing the events finds it.
    let (_, head1) = all_events(&c, 1, Some(&org_id)).await;
    let (_, head3) = all_events(&c, 3, Some(&org_id)).await;
    assert_eq!(head1, head3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_refusals_overflows_the_queue_into_a_counted_summary() {
    let c = one_node_with("CONIFER_AUDIT_QUEUE_EVENTS", "1").await;
    let org_id = org(&c);
    let key = c.api_key();
    const FLOOD: usize = 400;
    let mut tasks = Vec::new();
    // Each worker from its own address: the refusals of one key from one address are
    // recorded at a bounded rate (the rest summarized), which is not what this test is about.
    for worker in 0..50u8 {
        let http = c
            .client_from(std::net::IpAddr::from([127, 0, 3, worker + 1]))
            .unwrap();
        let (url, key) = (c.url(1, "/admin/projects"), key.clone());
        tasks.push(tokio::spawn(async move {
            let mut refused = 0;
            for i in 0..FLOOD / 50 {
                let resp = http
                    .get(&url)
                    .header("Api-Key", &key)
                    .header("X-Request-Id", format!("flood-{worker}-{i}"))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(resp.status(), StatusCode::FORBIDDEN);
                refused += 1;
            }
            refused
        }));
    }
    let mut refused = 0;
    for t in tasks {
        refused += t.await.unwrap();
    }
    assert_eq!(refused, FLOOD);
    // Every refusal is either an event or counted in an overflow summary.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (events, _) = all_events(&c, 1, Some(&org_id)).await;
        let recorded = events
            .iter()
            .filter(|e| {
                e["request_id"]
                    .as_str()
                    .is_some_and(|r| r.starts_with("flood-"))
            })
            .count();
        let (cluster_events, _) = all_events(&c, 1, None).await;
        let summarized: u64 = cluster_events
            .iter()
            .filter(|e| e["event"]["operation"] == "audit_log.overflow")
            .map(|e| e["event"]["parameters"]["dropped_events"].as_u64().unwrap())
            .sum();
        let info = c.cluster_info(1).await.unwrap();
        let dropped = info["audit_events_dropped"].as_u64().unwrap();
        if recorded as u64 + summarized == FLOOD as u64 {
            assert_eq!(summarized, dropped, "the metric and the summaries disagree");
            assert!(
                dropped > 0,
                "a queue of one event never overflowed under {FLOOD} refusals"
            );
            assert!(recorded > 0);
            let overflow = cluster_events
                .iter()
                .find(|e| e["event"]["operation"] == "audit_log.overflow")
                .unwrap();
            assert_eq!(overflow["actor"]["principal_type"], "system");
            assert_eq!(
                overflow["event"]["outcome"]["error_code"],
                "RESOURCE_EXHAUSTED"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{recorded} recorded + {summarized} summarized != {FLOOD} refusals (metric {dropped})"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
