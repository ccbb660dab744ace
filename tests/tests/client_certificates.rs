//! Client certificates (issue 18 item 2) on real nodes started with `--client-ca`: a
//! certificate from the client CA authenticates as the service account one of its names is
//! bound to (over REST, gRPC and the CLI, with no other credential); a project that
//! requires client certificates refuses its data plane to an API key alone on every node;
//! unbinding the name or deleting the account revokes the certificate within the lease; a
//! certificate from another CA, an expired one or a node certificate fails the handshake.

use conifer_client::{grpc, ClientIdentity, Transport};
use conifer_node::tls::{self, LeafKind, Validity};
use conifer_proto::pinecone::{UpsertRequest, Vector};
use conifer_tests::{grpc_request, measure_revocation, until, Cluster, ClusterOptions};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

/// Binds `names` to service account `id` as the operator: (status, body).
async fn bind(c: &Cluster, id: &str, names: Value) -> (StatusCode, Value) {
    c.operator_call(
        Method::PUT,
        &format!("/admin/service-accounts/{id}/certificate-names"),
        Some(json!({ "certificate_names": names })),
    )
    .await
}

/// Creates a service account named `name` with `certificate_names`, a `ProjectManager`
/// of the cluster's project when `member`: its id.
async fn account(c: &Cluster, name: &str, certificate_names: &[&str], member: bool) -> String {
    let org = c.organization_id();
    let (status, body) = c
        .operator_call(
            Method::POST,
            &format!("/admin/organizations/{org}/service-accounts"),
            Some(json!({ "name": name })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["certificate_names"], json!([]), "{body}");
    let id = body["id"].as_str().unwrap().to_string();
    if !certificate_names.is_empty() {
        let (status, body) = bind(c, &id, json!(certificate_names)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(
            body["certificate_names"],
            json!(certificate_names),
            "{body}"
        );
    }
    if member {
        let (status, body) = c
            .operator_call(
                Method::POST,
                &format!("/admin/projects/{}/members", c.project_id()),
                Some(json!({ "service_account_id": id, "role": "ProjectManager" })),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    id
}

/// Upserts one record into `docs` through node `via` with `http`'s client certificate (if
/// any) and `key` (if any; without one the project is named by header): (status, body).
async fn upsert(
    c: &Cluster,
    http: &reqwest::Client,
    via: u64,
    key: Option<&str>,
    id: &str,
) -> (StatusCode, Value) {
    let mut request = http
        .post(c.url(via, "/vectors/upsert"))
        .header("X-Conifer-Index", "docs")
        .json(&json!({ "vectors": [{ "id": id, "values": [1.0, 0.5, 0.0] }] }));
    request = match key {
        Some(key) => request.header("Api-Key", key),
        None => request.header("X-Project-Id", c.project_id()),
    };
    let resp = request.send().await.expect("upsert sent");
    let status = resp.status();
    (status, resp.json().await.unwrap_or(Value::Null))
}

fn message(body: &Value) -> String {
    body["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_certificate_authenticates_as_its_service_account_and_a_project_can_require_one() {
    let c = Cluster::start_with(ClusterOptions {
        nodes: 3,
        client_ca: true,
        ..ClusterOptions::default()
    })
    .await
    .unwrap();
    let key = c.api_key();
    c.create_index(1, &key, "docs", 3, "cosine").await.unwrap();
    let (cert, cert_key) = c
        .client_certificate("etl-loader", Validity::days_from_now(1))
        .unwrap();
    let etl = c.client_with_certificate(&cert, &cert_key).unwrap();

    // Bound to nothing yet: the certificate alone is no credential.
    let etl_id = account(&c, "etl", &[], true).await;
    let (status, body) = upsert(&c, &etl, 1, None, "a").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert!(
        message(&body).contains("'etl-loader'")
            && message(&body).contains("authenticates as no service account"),
        "{body}"
    );
    // Without a certificate and without a credential: still 401.
    let (status, _) = upsert(&c, &c.http, 1, None, "a").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // Binding names is the operator's: not even the organization's owner may (the names
    // are the cluster's client CA's, one namespace for every organization).
    let org = c.organization_id();
    let (status, body) = c.operator_call(Method::POST,
        &format!("/admin/organizations/{org}/members"),
        Some(json!({ "email": "owner@example.test", "role": "OrgOwner", "password": "a-good-long-password" })),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let login: Value = c
        .http
        .post(c.url(1, "/auth/login"))
        .json(&json!({ "email": "owner@example.test", "password": "a-good-long-password" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = login["access_token"].as_str().unwrap().to_string();
    let refused = c
        .http
        .put(c.url(
            1,
            &format!("/admin/service-accounts/{etl_id}/certificate-names"),
        ))
        .bearer_auth(token)
        .json(&json!({ "certificate_names": ["etl-loader"] }))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);

    // Bound: it authenticates as the account on every node, with no API key.
    let (status, body) = bind(&c, &etl_id, json!(["etl-loader"])).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["certificate_names"], json!(["etl-loader"]));
    for via in 1..=3 {
        let (status, body) = until(StatusCode::OK, || upsert(&c, &etl, via, None, "a")).await;
        assert_eq!(status, StatusCode::OK, "node {via}: {body}");
    }
    let stats: Value = etl
        .post(c.url(3, "/describe_index_stats"))
        .header("X-Conifer-Index", "docs")
        .header("X-Project-Id", c.project_id())
        .json(&json!({}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stats["dimension"], 3, "{stats}");

    // A name is bound to one account; an account holds at most 10 names.
    let other = account(&c, "other", &["outsider"], false).await;
    let (status, body) = bind(&c, &other, json!(["etl-loader"])).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(message(&body).contains(&etl_id), "{body}");
    let eleven: Vec<String> = (0..11).map(|i| format!("n{i}")).collect();
    let (status, body) = bind(&c, &other, json!(eleven)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    for bad in ["", " padded", "tab\there"] {
        let (status, body) = bind(&c, &other, json!([bad])).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad:?}: {body}");
    }

    // The project requires client certificates: an API key alone is refused on every node,
    // over REST and gRPC; the key with the certificate, and the certificate alone, pass.
    let (status, body) = c
        .operator_call(
            Method::PATCH,
            &format!("/admin/projects/{}", c.project_id()),
            Some(json!({ "require_client_certificate": true })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["require_client_certificate"], true, "{body}");
    for via in 1..=3 {
        let (status, body) = until(StatusCode::FORBIDDEN, || {
            upsert(&c, &c.http, via, Some(&key), "b")
        })
        .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "node {via}: {body}");
        assert!(
            message(&body).contains("requires a client certificate"),
            "{body}"
        );
        let (status, body) = upsert(&c, &etl, via, Some(&key), "b").await;
        assert_eq!(
            status,
            StatusCode::OK,
            "node {via}: key and certificate: {body}"
        );
        let (status, body) = upsert(&c, &etl, via, None, "b").await;
        assert_eq!(
            status,
            StatusCode::OK,
            "node {via}: certificate alone: {body}"
        );
    }
    let mut grpc = c.grpc_data(2).await.unwrap();
    let request = UpsertRequest {
        vectors: vec![Vector {
            id: "g".into(),
            values: vec![0.0, 1.0, 0.0],
            ..Vector::default()
        }],
        ..UpsertRequest::default()
    };
    let refused = grpc
        .upsert(grpc_request(request, &key, "docs"))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    assert!(refused.message().contains("requires a client certificate"));
    // The control plane is not the data plane: describing the index needs no certificate.
    let described = c
        .http
        .get(c.url(1, "/indexes/docs"))
        .header("Api-Key", &key)
        .send()
        .await
        .unwrap();
    assert_eq!(described.status(), StatusCode::OK);
    // A certificate whose account has no access to the project does not satisfy the rule.
    let (outsider_cert, outsider_key) = c
        .client_certificate("outsider", Validity::days_from_now(1))
        .unwrap();
    let outsider = c
        .client_with_certificate(&outsider_cert, &outsider_key)
        .unwrap();
    let (status, body) = upsert(&c, &outsider, 1, Some(&key), "c").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(message(&body).contains("may not call"), "{body}");

    // Revocation: unbinding the name, then (bound again) deleting the account, stops the
    // certificate on every node within the lease.
    let probe = |via: u64| {
        let etl = etl.clone();
        let c = &c;
        async move { upsert(c, &etl, via, None, "r").await.0.as_u16() }
    };
    let unbind = async {
        let (status, body) = bind(&c, &etl_id, json!([])).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    };
    let unbound =
        measure_revocation(&[1, 2, 3], "unbound certificate name", 200, probe, unbind).await;
    let rebind = bind(&c, &etl_id, json!(["etl-loader"])).await;
    assert_eq!(rebind.0, StatusCode::OK, "{}", rebind.1);
    let delete = async {
        let (status, body) = c
            .operator_call(
                Method::DELETE,
                &format!("/admin/service-accounts/{etl_id}"),
                None,
            )
            .await;
        assert!(status.is_success(), "{status} {body}");
    };
    let deleted =
        measure_revocation(&[1, 2, 3], "deleted service account", 200, probe, delete).await;
    println!("longest accepted delays: unbound {unbound:?}, deleted {deleted:?}");

    // The requirement lifted: the API key alone works again.
    let (status, body) = c
        .operator_call(
            Method::PATCH,
            &format!("/admin/projects/{}", c.project_id()),
            Some(json!({ "require_client_certificate": false })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = until(StatusCode::OK, || upsert(&c, &c.http, 3, Some(&key), "d")).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // Each change was audited as the seed's service account and project updates.
    let (events, _) = c.audit_chain(1, Some(&c.organization_id())).await.unwrap();
    let text = serde_json::to_string(&events).unwrap();
    assert!(
        text.contains("certificate_names"),
        "no certificate_names in the audit log"
    );
    assert!(
        text.contains("require_client_certificate"),
        "no require_client_certificate in the audit log"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn certificates_the_client_ca_did_not_issue_or_that_expired_fail_the_handshake() {
    let c = Cluster::start_with(ClusterOptions {
        nodes: 1,
        client_ca: true,
        ..ClusterOptions::default()
    })
    .await
    .unwrap();
    let key = c.api_key();
    c.create_index(1, &key, "docs", 3, "cosine").await.unwrap();
    let id = account(&c, "loader", &["loader"], true).await;
    assert!(!id.is_empty());

    // A certificate of another CA with a bound name, the cluster CA's own node certificate,
    // and an expired certificate of the client CA: no TLS session at all.
    let foreign = tempfile::tempdir().unwrap();
    tls::generate_ca(foreign.path(), "foreign").unwrap();
    tls::issue_leaf(
        foreign.path(),
        foreign.path(),
        "loader",
        LeafKind::Client {
            name: "loader".into(),
        },
        Validity::days_from_now(1),
    )
    .unwrap();
    let read = |path: std::path::PathBuf| std::fs::read(path).unwrap();
    let now = time::OffsetDateTime::now_utc();
    let expired = c
        .client_certificate(
            "loader",
            Validity {
                not_before: now - time::Duration::days(2),
                not_after: now - time::Duration::days(1),
            },
        )
        .unwrap();
    let node_tls = &c.nodes[0].tls_dir;
    let refused = [
        (
            "another CA's certificate",
            read(foreign.path().join("loader.pem")),
            read(foreign.path().join("loader-key.pem")),
        ),
        (
            "a node certificate of the cluster CA",
            read(node_tls.join(tls::NODE_CERT)),
            read(node_tls.join(tls::NODE_KEY)),
        ),
        ("an expired certificate", expired.0, expired.1),
    ];
    for (what, cert, cert_key) in refused {
        let http = c.client_with_certificate(&cert, &cert_key).unwrap();
        let answer = http
            .post(c.url(1, "/vectors/upsert"))
            .header("X-Conifer-Index", "docs")
            .header("Api-Key", &key)
            .json(&json!({ "vectors": [{ "id": "x", "values": [1.0, 0.0, 0.0] }] }))
            .send()
            .await;
        assert!(answer.is_err(), "{what} was accepted: {answer:?}");
    }
    // Without a certificate the port still serves API keys (certificates are optional).
    let (status, body) = upsert(&c, &c.http, 1, Some(&key), "k").await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // The Rust client's gRPC data plane with the certificate alone.
    let (cert, cert_key) = c
        .client_certificate("loader", Validity::days_from_now(1))
        .unwrap();
    let transport = Transport {
        ca_pem: Some(std::fs::read(c.ca_dir.join(tls::CA_CERT)).unwrap()),
        identity: Some(ClientIdentity {
            cert_pem: cert.clone(),
            key_pem: cert_key.clone(),
        }),
        ..Transport::default()
    };
    let mut data = grpc::connect(&c.url(1, ""), &transport, None, Some("docs"))
        .await
        .unwrap();
    let mut request = tonic::Request::new(UpsertRequest {
        vectors: vec![Vector {
            id: "grpc".into(),
            values: vec![0.0, 0.0, 1.0],
            ..Vector::default()
        }],
        ..UpsertRequest::default()
    });
    request
        .metadata_mut()
        .insert("x-project-id", c.project_id().parse().unwrap());
    let upserted = data.upsert(request).await.unwrap().into_inner();
    assert_eq!(upserted.upserted_count, 1);

    // The CLI with --client-cert and --project-id, no API key and no token.
    let files = tempfile::tempdir().unwrap();
    std::fs::write(files.path().join("loader.pem"), &cert).unwrap();
    std::fs::write(files.path().join("loader-key.pem"), &cert_key).unwrap();
    let out = std::process::Command::new(conifer_tests::conifer_bin())
        .args(["index", "describe", "docs", "--output", "json", "--api-url"])
        .arg(c.url(1, ""))
        .arg("--ca-cert")
        .arg(c.ca_dir.join(tls::CA_CERT))
        .arg("--client-cert")
        .arg(files.path().join("loader.pem"))
        .arg("--client-key")
        .arg(files.path().join("loader-key.pem"))
        .args(["--project-id", &c.project_id()])
        .env_remove("CONIFER_API_KEY")
        .env_remove("CONIFER_BOOTSTRAP")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let described: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(described["name"], "docs", "{described}");
}
