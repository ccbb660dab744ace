//! Private endpoints (issue 18 item 4) on a 3-node cluster whose client and cluster ports
//! are on 127.0.0.3 (public) and whose private listeners (`--private-api-addr`), with their
//! index ports, are on 127.0.0.2: a project with a private endpoint serves its data plane
//! only on the private listener and/or to the source ranges it allows, over REST and gRPC,
//! with its API key still required; the control plane and other projects are untouched;
//! creating and deleting endpoints is audited as the seed's `private-endpoints` events.

use std::net::IpAddr;
use std::time::Duration;

use conifer_tests::{free_port_range, grpc_request, until, Cluster, ClusterOptions};
use reqwest::StatusCode;
use serde_json::{json, Value};

const PUBLIC: &str = "127.0.0.3";
const PRIVATE: &str = "127.0.0.2";

/// A client trusting the cluster CA whose connections leave from `source`.
fn client_from(c: &Cluster, source: &str) -> reqwest::Client {
    let ca = std::fs::read(c.ca_dir.join(conifer_node::tls::CA_CERT)).unwrap();
    reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
        .local_address(source.parse::<IpAddr>().unwrap())
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

/// Upserts one record into `docs` at `base` (`https://host:port`; the index named by
/// header unless `base` is the index's own host) with `key`: (status, body).
async fn upsert(
    http: &reqwest::Client,
    base: &str,
    key: &str,
    own_host: bool,
) -> (StatusCode, Value) {
    let mut request = http
        .post(format!("{base}/vectors/upsert"))
        .header("Api-Key", key)
        .json(&json!({ "vectors": [{ "id": "a", "values": [1.0, 0.0, 0.0] }] }));
    if !own_host {
        request = request.header("X-Conifer-Index", "docs");
    }
    let resp = request.send().await.expect("request sent");
    let status = resp.status();
    (status, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_projects_private_endpoints_bind_its_data_plane() {
    // Two indexes, two ports (a small range rarely holds a node's randomly drawn port).
    let first = free_port_range(2);
    let c = Cluster::start_with(ClusterOptions {
        nodes: 3,
        private_listener: Some((PUBLIC.into(), PRIVATE.into())),
        args: vec![
            "--index-port-range".into(),
            format!("{first}-{}", first + 1),
        ],
        ..ClusterOptions::default()
    })
    .await
    .unwrap();
    let (project, key) = c
        .project_with_key("private", &["ProjectEditor"])
        .await
        .unwrap();
    let (_other, other_key) = c
        .project_with_key("open", &["ProjectEditor"])
        .await
        .unwrap();
    c.create_index(1, &key, "docs", 3, "cosine").await.unwrap();
    c.create_index(1, &other_key, "docs", 3, "cosine")
        .await
        .unwrap();

    // describe_index: the index's host on the private listener, next to its public host.
    let described: Value = c
        .http
        .get(c.url(2, "/indexes/docs"))
        .header("Api-Key", &key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let host = described["host"].as_str().unwrap().to_string();
    let private_host = described["private_host"].as_str().unwrap().to_string();
    assert!(host.starts_with(&format!("{PUBLIC}:")), "{described}");
    assert!(
        private_host.starts_with(&format!("{PRIVATE}:")),
        "{described}"
    );
    assert_eq!(
        host.rsplit_once(':').unwrap().1,
        private_host.rsplit_once(':').unwrap().1,
        "the same index port on both addresses: {described}"
    );

    let node_public = |id: u64| c.url(id, "");
    let node_private = |id: u64| {
        let node = c.nodes.iter().find(|n| n.id == id).unwrap();
        format!("https://{}", node.private_addr.as_deref().unwrap())
    };
    let from_public = client_from(&c, PUBLIC);
    // No private endpoint yet: the public listener serves the data plane.
    let (status, body) = upsert(&from_public, &node_public(2), &key, false).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // Validation: a private endpoint needs a rule; CIDRs must parse; only project owners
    // (and the operator) manage them — an API key, even a ProjectEditor one, may not.
    let path = format!("/admin/projects/{project}/private-endpoints");
    let (status, body) = c
        .operator_call(
            reqwest::Method::POST,
            &path,
            Some(json!({ "name": "none" })),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("needs the private listener"),
        "{body}"
    );
    let (status, body) = c
        .operator_call(
            reqwest::Method::POST,
            &path,
            Some(json!({ "name": "bad", "allowed_cidrs": ["10.0.0.0/33"] })),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let by_key = c
        .http
        .post(c.url(1, &path))
        .header("Api-Key", &key)
        .json(&json!({ "name": "vpc", "private_listener": true }))
        .send()
        .await
        .unwrap();
    assert_eq!(by_key.status(), StatusCode::FORBIDDEN);

    // A private endpoint on the private listener.
    let (status, vpc) = c
        .operator_call(
            reqwest::Method::POST,
            &path,
            Some(json!({ "name": "vpc", "private_listener": true })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{vpc}");
    let vpc_id = vpc["id"].as_str().unwrap().to_string();
    assert!(vpc_id.starts_with("pe-"), "{vpc}");
    let (status, again) = c
        .operator_call(
            reqwest::Method::POST,
            &path,
            Some(json!({ "name": "vpc", "private_listener": true })),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{again}");

    // Every node refuses the project's data plane on its public listener, naming the rule.
    for id in 1..=3 {
        let base = node_public(id);
        let (status, body) = until(StatusCode::FORBIDDEN, || {
            upsert(&from_public, &base, &key, false)
        })
        .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "node {id}: {body}");
        assert_eq!(body["error"]["code"], "PERMISSION_DENIED", "{body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("'vpc' (the private listener)")
                && message.contains("the public listener"),
            "{message}"
        );
    }
    // The index's public host too, and over gRPC.
    let (status, _) = upsert(&from_public, &format!("https://{host}"), &key, true).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let mut grpc = c.grpc_data(1).await.unwrap();
    let request = conifer_proto::pinecone::DescribeIndexStatsRequest::default();
    let refused = grpc
        .describe_index_stats(grpc_request(request, &key, "docs"))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");

    // The private listener serves it, by header and on the index's private host (as an
    // SDK given private_host calls it), and still requires the API key.
    for id in 1..=3 {
        let (status, body) = upsert(&from_public, &node_private(id), &key, false).await;
        assert_eq!(status, StatusCode::OK, "node {id}: {body}");
    }
    let (status, body) = upsert(&from_public, &format!("https://{private_host}"), &key, true).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, _) = upsert(&from_public, &node_private(1), "pcsk_not_a_key", false).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // The control plane stays public; another project's data plane is untouched.
    let describe = c
        .http
        .get(c.url(3, "/indexes/docs"))
        .header("Api-Key", &key)
        .send()
        .await
        .unwrap();
    assert_eq!(describe.status(), StatusCode::OK);
    let (status, body) = upsert(&from_public, &node_public(3), &other_key, false).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // A second endpoint allowing a source range: calls on the public listener from inside
    // it are served, from outside refused naming both rules.
    let (status, office) = c
        .operator_call(
            reqwest::Method::POST,
            &path,
            Some(json!({ "name": "office", "allowed_cidrs": ["127.0.0.5"] })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{office}");
    assert_eq!(office["allowed_cidrs"], json!(["127.0.0.5/32"]));
    let inside = client_from(&c, "127.0.0.5");
    let outside = client_from(&c, "127.0.0.6");
    for id in 1..=3 {
        let base = node_public(id);
        let (status, body) = until(StatusCode::OK, || upsert(&inside, &base, &key, false)).await;
        assert_eq!(status, StatusCode::OK, "node {id}: {body}");
        let (status, body) = upsert(&outside, &node_public(id), &key, false).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "node {id}: {body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("'office' (sources in 127.0.0.5/32)")
                && message.contains("from 127.0.0.6"),
            "{message}"
        );
    }

    // Listing and describing.
    let (status, listed) = c.operator_call(reqwest::Method::GET, &path, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(listed["data"].as_array().unwrap().len(), 2, "{listed}");
    let (status, got) = c
        .operator_call(
            reqwest::Method::GET,
            &format!("/admin/private-endpoints/{vpc_id}"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(got["private_listener"], true, "{got}");

    // Deleting both opens the public listener again.
    let office_id = office["id"].as_str().unwrap().to_string();
    for id in [&vpc_id, &office_id] {
        let (status, body) = c
            .operator_call(
                reqwest::Method::DELETE,
                &format!("/admin/private-endpoints/{id}"),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    }
    for id in 1..=3 {
        let base = node_public(id);
        let (status, body) = until(StatusCode::OK, || upsert(&outside, &base, &key, false)).await;
        assert_eq!(status, StatusCode::OK, "node {id}: {body}");
    }
    let (status, _) = c
        .operator_call(
            reqwest::Method::GET,
            &format!("/admin/private-endpoints/{vpc_id}"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // The CLI: create, list, delete.
    let boot = c.nodes[0].data_dir.join("bootstrap.json");
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(conifer_tests::conifer_bin())
            .args(args)
            .arg("--bootstrap")
            .arg(&boot)
            .args(["--output", "json"])
            .output()
            .expect("run conifer");
        assert!(
            out.status.success(),
            "conifer {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<Value>(&out.stdout).unwrap_or(Value::Null)
    };
    let created = cli(&[
        "private-endpoint",
        "create",
        "--project",
        &project,
        "--name",
        "cli",
        "--private-listener",
        "--allow-cidr",
        "10.20.0.0/16",
    ]);
    assert_eq!(
        created["allowed_cidrs"],
        json!(["10.20.0.0/16"]),
        "{created}"
    );
    let cli_id = created["id"].as_str().unwrap().to_string();
    let listed = cli(&["private-endpoint", "list", "--project", &project]);
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "{listed}");
    cli(&["private-endpoint", "delete", "--id", &cli_id]);

    // Audited with the seed's names: create and delete of `private-endpoints`, by id.
    for (action, expected) in [("create", 3), ("delete", 3)] {
        let (status, page) = c
            .operator_call(
                reqwest::Method::GET,
                &format!("/admin/audit-logs?action={action}&resource_type=private-endpoints"),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{page}");
        let ids: Vec<&str> = page["data"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["event"]["outcome"]["status"] != "failure")
            .filter_map(|e| e["event"]["resource_id"].as_str())
            .collect();
        assert!(
            ids.len() >= expected
                && ids.contains(&vpc_id.as_str())
                && ids.contains(&office_id.as_str()),
            "{action}: {page}"
        );
    }
}
