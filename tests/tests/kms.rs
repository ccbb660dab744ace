//! Keys in AWS KMS, against moto's KMS server on 127.0.0.1 with IAM enforcement, on 3-node
//! clusters:
//! - the root key in KMS (`serve --root-key-kms ARN`): node data keys and project keys are
//!   wrapped by KMS and no keyring exists; when KMS refuses the nodes (their IAM policy
//!   removed) every index answers FAILED_PRECONDITION (412) naming the key within the key
//!   cache's lifetime, and when KMS does not answer (the server stopped) UNAVAILABLE (503);
//!   once access is back the indexes serve again, every record present, without a restart;
//! - a project's customer-managed key (CMEK): its indexes' data keys are made by the
//!   project's KMS key; losing it stops that project's indexes only, and the setting cannot
//!   be turned off or moved to another key.

use std::time::{Duration, Instant};

use conifer_tests::kms::Moto;
use conifer_tests::{Cluster, ClusterOptions};
use reqwest::Method;
use serde_json::{json, Value};

/// Lifetime of unwrapped keys in these tests (`--key-cache-ttl-ms`).
const TTL_MS: u64 = 2_000;
/// How long past the lifetime a refusal may take to show here: the expiry check's pass
/// (250 ms), the poll of three nodes, and a loaded machine.
const SLACK_MS: u64 = 3_000;

const RECORDS: usize = 25;

async fn stats(cluster: &Cluster, node: u64, key: &str, index: &str) -> (u16, Value) {
    let resp = cluster
        .data(node, key, index, Method::POST, "/describe_index_stats")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// Polls every node until `done(status, body)` holds on all of them; returns the time it
/// took, or panics after `within`.
async fn until_every_node(
    cluster: &Cluster,
    (key, index): (&str, &str),
    within: Duration,
    what: &str,
    done: impl Fn(u16, &Value) -> bool,
) -> Duration {
    let started = Instant::now();
    loop {
        let mut last = Vec::new();
        for node in 1..=3 {
            let (status, body) = stats(cluster, node, key, index).await;
            if !done(status, &body) {
                last.push(format!("node {node}: {status} {body}"));
            }
        }
        if last.is_empty() {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "{what} within {within:?}: {}",
            last.join("; ")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until every node refuses the index with `status` and `code`, naming the key `arn`,
/// within the key cache's lifetime plus [`SLACK_MS`]; returns how long it took.
async fn refused_everywhere(
    cluster: &Cluster,
    target: (&str, &str),
    arn: &str,
    (status, code): (u16, &str),
    what: &str,
) -> Duration {
    until_every_node(
        cluster,
        target,
        Duration::from_millis(TTL_MS + SLACK_MS),
        what,
        |got, body| got == status && body["error"]["code"] == code && names_key(body, arn),
    )
    .await
}

/// Waits (30 s) until every node serves the index with every record; returns how long it
/// took.
async fn serving_everywhere(cluster: &Cluster, target: (&str, &str), what: &str) -> Duration {
    until_every_node(cluster, target, Duration::from_secs(30), what, all_there).await
}

fn all_there(status: u16, body: &Value) -> bool {
    status == 200 && body["totalVectorCount"] == RECORDS
}

async fn upsert(cluster: &Cluster, key: &str, index: &str) {
    let vectors: Vec<Value> = (0..RECORDS)
        .map(|i| json!({"id": format!("r{i}"), "values": [1.0, i as f32, 0.5, 0.25]}))
        .collect();
    let resp = cluster
        .data(1, key, index, Method::POST, "/vectors/upsert")
        .json(&json!({ "vectors": vectors }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
}

fn names_key(body: &Value, arn: &str) -> bool {
    body["error"]["message"]
        .as_str()
        .is_some_and(|m| m.contains(arn))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_root_key_in_kms_seals_the_cluster_and_losing_it_stops_the_indexes_until_it_is_back() {
    let moto = Moto::start(true).unwrap();
    let arn = moto.create_key().unwrap();
    let mut args = moto.root_args(&arn);
    args.extend(["--key-cache-ttl-ms".to_string(), TTL_MS.to_string()]);
    let mut cluster = Cluster::start_with(ClusterOptions {
        nodes: 3,
        env: moto.node.env(),
        args,
        ..ClusterOptions::default()
    })
    .await
    .unwrap();
    let key = cluster.api_key();

    // No keyring anywhere; every node data key is wrapped by KMS.
    for node in 1..=3 {
        let data_dir = cluster.node(node).data_dir.clone();
        assert!(!data_dir.join("keyring.json").exists());
        assert!(!data_dir.with_extension("keyring.json").exists());
        let wrapped: Value =
            serde_json::from_slice(&std::fs::read(data_dir.join("data-key.json")).unwrap())
                .unwrap();
        assert_eq!(wrapped["provider"], "aws-kms", "node {node}: {wrapped}");
    }

    cluster
        .create_index(1, &key, "vault", 4, "cosine")
        .await
        .unwrap();
    upsert(&cluster, &key, "vault").await;
    serving_everywhere(&cluster, (&key, "vault"), "replicated").await;

    // KMS refuses the nodes: 412 naming the key, on every node, within the bound.
    moto.deny().unwrap();
    let took = refused_everywhere(
        &cluster,
        (&key, "vault"),
        &arn,
        (412, "FAILED_PRECONDITION"),
        "refused after deny",
    )
    .await;
    eprintln!("access denied → every node refuses the index after {took:?}");
    // The control plane is sealed by the node keys, unwrapped at start: it still answers.
    let resp = cluster
        .http
        .get(cluster.url(2, "/indexes"))
        .header("Api-Key", &key)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);

    // Access restored: the index serves again, every record there, without a restart.
    moto.allow().unwrap();
    let took = serving_everywhere(&cluster, (&key, "vault"), "serving after allow").await;
    eprintln!("access restored → every node serves after {took:?}");

    // KMS does not answer: 503 naming the key; back when it answers again.
    moto.pause().unwrap();
    let took = refused_everywhere(
        &cluster,
        (&key, "vault"),
        &arn,
        (503, "UNAVAILABLE"),
        "refused while paused",
    )
    .await;
    eprintln!("KMS unreachable → every node refuses the index after {took:?}");
    moto.resume().unwrap();
    serving_everywhere(&cluster, (&key, "vault"), "serving after resume").await;
    let fetched: Value = cluster
        .data(3, &key, "vault", Method::GET, "/vectors/fetch?ids=r7")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(fetched["vectors"]["r7"]["values"][1], 7.0, "{fetched}");
}

async fn patch_project(cluster: &Cluster, project: &str, body: Value) -> (u16, Value) {
    let resp = cluster
        .http
        .patch(cluster.url(2, &format!("/admin/projects/{project}")))
        .bearer_auth(cluster.admin_token())
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cmek_project_stops_alone_when_its_key_is_refused_and_serves_again_when_it_is_back() {
    let moto = Moto::start(true).unwrap();
    let arn = moto.create_key().unwrap();
    let other_arn = moto.create_key().unwrap();
    let cluster = Cluster::start_with(ClusterOptions {
        nodes: 3,
        env: moto.node.env(),
        args: vec![
            "--kms-endpoint".into(),
            moto.endpoint.clone(),
            "--key-cache-ttl-ms".into(),
            TTL_MS.to_string(),
        ],
        ..ClusterOptions::default()
    })
    .await
    .unwrap();
    let token = cluster.admin_token();

    // A key that is not an ARN is refused before anything is asked of KMS.
    let resp = cluster
        .http
        .post(cluster.url(1, "/admin/projects"))
        .bearer_auth(&token)
        .json(&json!({"name": "bad", "cmek_key_arn": "alias/mine"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    let resp = cluster
        .http
        .post(cluster.url(1, "/admin/projects"))
        .bearer_auth(&token)
        .json(&json!({"name": "cmek", "cmek_key_arn": arn}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 201);
    let project: Value = resp.json().await.unwrap();
    assert_eq!(project["force_encryption_with_cmek"], true, "{project}");
    assert_eq!(project["cmek_key_arn"], arn.as_str());
    let project_id = project["id"].as_str().unwrap().to_string();
    let cmek_key = cluster
        .key_in(&project_id, &["ProjectEditor"])
        .await
        .unwrap();
    let plain_key = cluster.api_key();

    // The CLI creates a CMEK project, and turns CMEK on for an existing one.
    let boot = cluster.nodes[0].data_dir.join("bootstrap.json");
    let cli = |args: &[&str]| -> Value {
        let out = std::process::Command::new(conifer_tests::conifer_bin())
            .args(args)
            .args(["--output", "json", "--bootstrap"])
            .arg(&boot)
            .output()
            .expect("run conifer");
        assert!(
            out.status.success(),
            "conifer {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let from_cli = cli(&[
        "project",
        "create",
        "--name",
        "cli-cmek",
        "--cmek-key-arn",
        &arn,
    ]);
    assert_eq!(from_cli["cmek_key_arn"], arn.as_str(), "{from_cli}");
    let plain_then_cmek = cli(&["project", "create", "--name", "cli-later"]);
    assert_eq!(plain_then_cmek["force_encryption_with_cmek"], false);
    let id = plain_then_cmek["id"].as_str().unwrap();
    let turned_on = cli(&["project", "set-cmek", "--id", id, "--key-arn", &other_arn]);
    assert_eq!(turned_on["force_encryption_with_cmek"], true, "{turned_on}");
    assert_eq!(turned_on["cmek_key_arn"], other_arn.as_str());

    // Once on, it stays on, with its key.
    let (status, body) = patch_project(
        &cluster,
        &project_id,
        json!({"force_encryption_with_cmek": false}),
    )
    .await;
    assert_eq!(status, 412, "{body}");
    let (status, body) =
        patch_project(&cluster, &project_id, json!({"cmek_key_arn": other_arn})).await;
    assert_eq!(status, 412, "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("cannot be changed"));

    let described = cluster
        .create_index(1, &cmek_key, "secret", 4, "cosine")
        .await
        .unwrap();
    assert_eq!(
        described["encryption"]["customer_managed"], true,
        "{described}"
    );
    assert_eq!(described["encryption"]["key"], arn.as_str());
    assert_eq!(described["encryption"]["key_state"], "available");
    let described = cluster
        .create_index(1, &plain_key, "plain", 4, "cosine")
        .await
        .unwrap();
    assert_eq!(
        described["encryption"]["customer_managed"], false,
        "{described}"
    );
    upsert(&cluster, &cmek_key, "secret").await;
    upsert(&cluster, &plain_key, "plain").await;
    for (key, index) in [(&cmek_key, "secret"), (&plain_key, "plain")] {
        serving_everywhere(&cluster, (key, index), "replicated").await;
    }

    // KMS refuses the nodes the project's key: its index stops, naming the key, within the
    // bound; the other project's index serves throughout.
    moto.deny().unwrap();
    let took = refused_everywhere(
        &cluster,
        (&cmek_key, "secret"),
        &arn,
        (412, "FAILED_PRECONDITION"),
        "the CMEK index refused after deny",
    )
    .await;
    eprintln!("CMEK key denied → the project's index refused on every node after {took:?}");
    until_every_node(
        &cluster,
        (&plain_key, "plain"),
        Duration::from_secs(5),
        "the other project serving",
        all_there,
    )
    .await;
    let described: Value = cluster
        .http
        .get(cluster.url(1, "/indexes/secret"))
        .header("Api-Key", &cmek_key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        described["encryption"]["key_state"], "unavailable",
        "{described}"
    );
    // A new CMEK project on a key KMS refuses is refused too.
    let resp = cluster
        .http
        .post(cluster.url(1, "/admin/projects"))
        .bearer_auth(&token)
        .json(&json!({"name": "cmek-2", "cmek_key_arn": other_arn}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 412);

    // Access back: it serves again without a restart, every record there.
    moto.allow().unwrap();
    let took = serving_everywhere(
        &cluster,
        (&cmek_key, "secret"),
        "the CMEK index serving after allow",
    )
    .await;
    eprintln!("CMEK key allowed again → the index serves on every node after {took:?}");

    // KMS does not answer: the CMEK index answers 503 naming its key; the other project
    // (under the local keyring) serves; both serve once KMS answers again.
    moto.pause().unwrap();
    let took = refused_everywhere(
        &cluster,
        (&cmek_key, "secret"),
        &arn,
        (503, "UNAVAILABLE"),
        "the CMEK index refused while KMS hangs",
    )
    .await;
    eprintln!("KMS unreachable → the CMEK index refused on every node after {took:?}");
    until_every_node(
        &cluster,
        (&plain_key, "plain"),
        Duration::from_secs(5),
        "the other project serving while KMS hangs",
        all_there,
    )
    .await;
    moto.resume().unwrap();
    serving_everywhere(
        &cluster,
        (&cmek_key, "secret"),
        "the CMEK index serving after KMS answers again",
    )
    .await;

    // Each node recorded the key going and coming back in the organization's audit chain,
    // and the CMEK setting with its key.
    let org = project["organization_id"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    let events = loop {
        let (events, _) = cluster.audit_chain(1, Some(&org)).await.unwrap();
        let of = |operation: &str| {
            events
                .iter()
                .filter(|e| {
                    e["event"]["operation"] == operation && e["event"]["resource_id"] == "secret"
                })
                .count()
        };
        // Every node: denied and back, unreachable and back.
        if of("index.key_unavailable") >= 6 && of("index.key_available") >= 6 {
            break events;
        }
        assert!(
            Instant::now() < deadline,
            "key events of every node: {} unavailable, {} available",
            of("index.key_unavailable"),
            of("index.key_available")
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let mut codes = std::collections::BTreeSet::new();
    for e in events
        .iter()
        .filter(|e| e["event"]["operation"] == "index.key_unavailable")
    {
        codes.insert(
            e["event"]["outcome"]["error_code"]
                .as_str()
                .unwrap()
                .to_string(),
        );
        assert_eq!(e["event"]["parameters"]["key"], arn.as_str(), "{e}");
        assert_eq!(e["actor"]["principal_type"], "system", "{e}");
        // Kept like a change, never pruned to make room for refusals.
        assert_eq!(e["class"], "change", "{e}");
    }
    assert_eq!(
        codes.into_iter().collect::<Vec<_>>(),
        ["FAILED_PRECONDITION", "UNAVAILABLE"],
        "denied, then unreachable"
    );
    assert!(
        events
            .iter()
            .any(|e| e["event"]["operation"] == "project.create"
                && e["event"]["parameters"]["cmek_key_arn"] == arn.as_str()),
        "the CMEK project's creation names its key"
    );
}
