//! Edge cases of the admin REST API on a real node: credentials, unknown ids, malformed
//! bodies and limits each get the right status and Pinecone error body, and change nothing.

use conifer_tests::Cluster;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

struct Api {
    cluster: Cluster,
}

impl Api {
    async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&str>,
    ) -> (StatusCode, Value) {
        let mut req = self.cluster.http.request(method, self.cluster.url(1, path));
        if let Some(token) = token {
            req = req.header("Authorization", format!("Bearer {token}"));
        }
        if let Some(body) = body {
            req = req
                .header("Content-Type", "application/json")
                .body(body.to_string());
        }
        let resp = req.send().await.expect("request");
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn admin(&self, method: Method, path: &str, body: Option<&str>) -> (StatusCode, Value) {
        let token = self.cluster.admin_token();
        self.call(method, path, Some(&token), body).await
    }

    async fn snapshot(&self) -> (Value, Value) {
        let project = self.cluster.bootstrap["project_id"]
            .as_str()
            .unwrap()
            .to_string();
        let (_, projects) = self.admin(Method::GET, "/admin/projects", None).await;
        let (_, keys) = self
            .admin(
                Method::GET,
                &format!("/admin/projects/{project}/api-keys"),
                None,
            )
            .await;
        (projects, keys)
    }
}

fn assert_error(status: StatusCode, body: &Value, want: u16, code: &str) {
    assert_eq!(status.as_u16(), want, "body: {body}");
    assert_eq!(body["status"], want, "body: {body}");
    assert_eq!(body["error"]["code"], code, "body: {body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "body: {body}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_api_rejects_bad_requests_without_writing() {
    let api = Api {
        cluster: Cluster::start(1).await.unwrap(),
    };
    let project = api.cluster.bootstrap["project_id"]
        .as_str()
        .unwrap()
        .to_string();
    let before = api.snapshot().await;
    let create = Some(r#"{"name":"should-not-exist"}"#);

    // Missing, malformed, wrong and oversized credentials: 401.
    let (s, b) = api
        .call(Method::POST, "/admin/projects", None, create)
        .await;
    assert_error(s, &b, 401, "UNAUTHENTICATED");
    let (s, b) = api
        .call(Method::POST, "/admin/projects", Some("not-a-token"), create)
        .await;
    assert_error(s, &b, 401, "UNAUTHENTICATED");
    let api_key = api.cluster.bootstrap["api_key"]
        .as_str()
        .unwrap()
        .to_string();
    let (s, b) = api
        .call(Method::POST, "/admin/projects", Some(&api_key), create)
        .await;
    assert_error(s, &b, 401, "UNAUTHENTICATED");
    let mut forged = api.cluster.admin_token();
    forged.pop();
    forged.push('x');
    let (s, b) = api
        .call(Method::POST, "/admin/projects", Some(&forged), create)
        .await;
    assert_error(s, &b, 401, "UNAUTHENTICATED");
    let huge = format!("cnfop_{}", "a".repeat(10_000));
    let (s, b) = api
        .call(Method::GET, "/admin/projects", Some(&huge), None)
        .await;
    assert_error(s, &b, 401, "UNAUTHENTICATED");
    for (method, path) in [
        (Method::GET, "/admin/cluster".to_string()),
        (Method::GET, "/admin/projects".to_string()),
        (Method::GET, format!("/admin/projects/{project}")),
        (Method::DELETE, format!("/admin/projects/{project}")),
        (Method::GET, format!("/admin/projects/{project}/api-keys")),
        (Method::POST, format!("/admin/projects/{project}/api-keys")),
    ] {
        let (s, b) = api
            .call(method.clone(), &path, None, Some(r#"{"name":"x"}"#))
            .await;
        assert_error(s, &b, 401, "UNAUTHENTICATED");
    }

    // Unknown ids: 404.
    let unknown = "00000000-0000-4000-8000-000000000000";
    for (method, path) in [
        (Method::GET, format!("/admin/projects/{unknown}")),
        (Method::DELETE, format!("/admin/projects/{unknown}")),
        (Method::GET, format!("/admin/projects/{unknown}/api-keys")),
        (Method::GET, format!("/admin/api-keys/{unknown}")),
        (Method::DELETE, format!("/admin/api-keys/{unknown}")),
        (Method::GET, format!("/admin/projects/{}", "z".repeat(500))),
    ] {
        let (s, b) = api.admin(method, &path, None).await;
        assert_error(s, &b, 404, "NOT_FOUND");
    }
    let (s, b) = api
        .admin(
            Method::POST,
            &format!("/admin/projects/{unknown}/api-keys"),
            Some(r#"{"name":"k"}"#),
        )
        .await;
    assert_error(s, &b, 404, "NOT_FOUND");

    // Malformed or invalid bodies: 400 for text that is not JSON or a value out of range,
    // 422 for JSON of the wrong shape (Pinecone's control-plane spec), 413 past the limit.
    for (body, status, code) in [
        ("{not json", 400, "INVALID_ARGUMENT"),
        ("[]", 422, "UNPROCESSABLE_ENTITY"),
        (r#"{"name": 7}"#, 422, "UNPROCESSABLE_ENTITY"),
        (r#"{"name": ""}"#, 400, "INVALID_ARGUMENT"),
        (
            r#"{"name": "x", "unexpected": true}"#,
            422,
            "UNPROCESSABLE_ENTITY",
        ),
        (
            r#"{"name": "x", "max_pods": 100001}"#,
            400,
            "INVALID_ARGUMENT",
        ),
        (
            r#"{"name": "x", "max_pods": -1}"#,
            422,
            "UNPROCESSABLE_ENTITY",
        ),
        (
            r#"{"name": "x", "force_encryption_with_cmek": true}"#,
            400,
            "INVALID_ARGUMENT",
        ),
    ] {
        let (s, b) = api.admin(Method::POST, "/admin/projects", Some(body)).await;
        assert_error(s, &b, status, code);
    }
    let long_name = json!({ "name": "n".repeat(513) }).to_string();
    let (s, b) = api
        .admin(Method::POST, "/admin/projects", Some(&long_name))
        .await;
    assert_error(s, &b, 400, "INVALID_ARGUMENT");
    assert!(
        b["error"]["message"].as_str().unwrap().contains("512"),
        "message names the limit: {b}"
    );
    let keys_path = format!("/admin/projects/{project}/api-keys");
    for (body, status, code) in [
        (r#"{"name":"k","roles":[]}"#, 400, "INVALID_ARGUMENT"),
        (r#"{"name":"k","roles":["Admin"]}"#, 400, "INVALID_ARGUMENT"),
        (
            r#"{"roles":["ProjectEditor"]}"#,
            422,
            "UNPROCESSABLE_ENTITY",
        ),
    ] {
        let (s, b) = api.admin(Method::POST, &keys_path, Some(body)).await;
        assert_error(s, &b, status, code);
    }
    let oversized = json!({ "name": "x".repeat(70 * 1024) }).to_string();
    let (s, b) = api
        .admin(Method::POST, "/admin/projects", Some(&oversized))
        .await;
    assert_error(s, &b, 413, "OUT_OF_RANGE");
    assert!(
        b["error"]["message"].as_str().unwrap().contains("65536"),
        "{b}"
    );

    assert_eq!(
        api.snapshot().await,
        before,
        "no rejected request changed anything"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn project_and_key_lifecycle_shows_secret_once() {
    let api = Api {
        cluster: Cluster::start(1).await.unwrap(),
    };
    let (s, project) = api
        .admin(
            Method::POST,
            "/admin/projects",
            Some(r#"{"name":"search-team","max_pods":5}"#),
        )
        .await;
    assert_eq!(s.as_u16(), 201, "{project}");
    let id = project["id"].as_str().unwrap();
    assert_eq!(project["name"], "search-team");
    assert_eq!(project["max_pods"], 5);
    assert_eq!(project["force_encryption_with_cmek"], false);
    assert_eq!(
        project["organization_id"],
        api.cluster.bootstrap["organization_id"]
    );
    let (s, dup) = api
        .admin(
            Method::POST,
            "/admin/projects",
            Some(r#"{"name":"search-team"}"#),
        )
        .await;
    assert_error(s, &dup, 409, "ALREADY_EXISTS");

    let (s, created) = api
        .admin(
            Method::POST,
            &format!("/admin/projects/{id}/api-keys"),
            Some(r#"{"name":"reader","roles":["DataPlaneViewer"]}"#),
        )
        .await;
    assert_eq!(s.as_u16(), 201, "{created}");
    let value = created["value"].as_str().unwrap();
    assert!(value.starts_with("pcsk_"));
    let key_id = created["key"]["id"].as_str().unwrap();
    assert_eq!(created["key"]["roles"], json!(["DataPlaneViewer"]));
    assert_eq!(created["key"]["project_id"], id);

    let (s, fetched) = api
        .admin(Method::GET, &format!("/admin/api-keys/{key_id}"), None)
        .await;
    assert_eq!(s.as_u16(), 200);
    assert!(
        fetched.get("value").is_none() && !fetched.to_string().contains(value),
        "secret shown only once"
    );
    let (_, listed) = api
        .admin(Method::GET, &format!("/admin/projects/{id}/api-keys"), None)
        .await;
    assert_eq!(listed["data"].as_array().unwrap().len(), 1);
    assert!(!listed.to_string().contains(value));

    let (s, _) = api
        .admin(Method::DELETE, &format!("/admin/api-keys/{key_id}"), None)
        .await;
    assert_eq!(s.as_u16(), 202);
    let (s, b) = api
        .admin(Method::GET, &format!("/admin/api-keys/{key_id}"), None)
        .await;
    assert_error(s, &b, 404, "NOT_FOUND");

    let (_, again) = api
        .admin(
            Method::POST,
            &format!("/admin/projects/{id}/api-keys"),
            Some(r#"{"name":"w"}"#),
        )
        .await;
    assert_eq!(
        again["key"]["roles"],
        json!(["ProjectEditor"]),
        "default role"
    );
    let (s, _) = api
        .admin(Method::DELETE, &format!("/admin/projects/{id}"), None)
        .await;
    assert_eq!(s.as_u16(), 202);
    let (s, b) = api
        .admin(Method::GET, &format!("/admin/projects/{id}"), None)
        .await;
    assert_error(s, &b, 404, "NOT_FOUND");
    let again_id = again["key"]["id"].as_str().unwrap();
    let (s, _) = api
        .admin(Method::GET, &format!("/admin/api-keys/{again_id}"), None)
        .await;
    assert_eq!(s.as_u16(), 404, "a deleted project's keys are gone");

    let (s, b) = api
        .call(Method::POST, "/admin/cluster/snapshot", None, None)
        .await;
    assert_error(s, &b, 401, "UNAUTHENTICATED");
    let (s, _) = api
        .admin(Method::POST, "/admin/cluster/snapshot", None)
        .await;
    assert_eq!(s.as_u16(), 202);
    let mut snapshot_index = None;
    for _ in 0..50 {
        snapshot_index = api.cluster.cluster_info(1).await.unwrap()["snapshot_index"].as_u64();
        if snapshot_index.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(snapshot_index.is_some(), "the triggered snapshot was taken");

    let (s, health) = api.call(Method::GET, "/health", None, None).await;
    assert_eq!((s.as_u16(), health), (200, json!({"status": "serving"})));
}
