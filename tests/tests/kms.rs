//! The root key in AWS KMS (`serve --root-key-kms ARN`), against moto's KMS server on
//! 127.0.0.1 with IAM enforcement: a 3-node cluster wraps its node data keys and project
//! keys with KMS and keeps no keyring; when KMS refuses the nodes (their IAM policy
//! removed) every index answers FAILED_PRECONDITION (412) naming the key within the key
//! cache's lifetime, and when KMS does not answer (the server stopped) UNAVAILABLE (503);
//! once access is back the indexes serve again, every record present, without a restart.

use std::time::{Duration, Instant};

use conifer_tests::kms::Moto;
use conifer_tests::{Cluster, ClusterOptions};
use reqwest::Method;
use serde_json::{json, Value};

/// Lifetime of unwrapped keys in these tests (`--key-cache-ttl-ms`).
const TTL_MS: u64 = 2_000;
/// How long past the lifetime a refusal may take to show: the reconciler's pass, and a KMS
/// call that hangs until its timeout.
const SLACK_MS: u64 = 12_000;

const RECORDS: usize = 25;

async fn stats(cluster: &Cluster, node: u64, key: &str) -> (u16, Value) {
    let resp = cluster
        .data(node, key, "vault", Method::POST, "/describe_index_stats")
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
    key: &str,
    within: Duration,
    what: &str,
    done: impl Fn(u16, &Value) -> bool,
) -> Duration {
    let started = Instant::now();
    loop {
        let mut last = Vec::new();
        for node in 1..=3 {
            let (status, body) = stats(cluster, node, key).await;
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
    let vectors: Vec<Value> = (0..RECORDS)
        .map(|i| json!({"id": format!("r{i}"), "values": [1.0, i as f32, 0.5, 0.25]}))
        .collect();
    let resp = cluster
        .data(1, &key, "vault", Method::POST, "/vectors/upsert")
        .json(&json!({ "vectors": vectors }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let all_there =
        |status: u16, body: &Value| status == 200 && body["totalVectorCount"] == RECORDS;
    until_every_node(
        &cluster,
        &key,
        Duration::from_secs(30),
        "replicated",
        all_there,
    )
    .await;

    // KMS refuses the nodes: 412 naming the key, on every node, within the bound.
    moto.deny().unwrap();
    let bound = Duration::from_millis(TTL_MS + SLACK_MS);
    let took = until_every_node(
        &cluster,
        &key,
        bound,
        "refused after deny",
        |status, body| {
            status == 412 && body["error"]["code"] == "FAILED_PRECONDITION" && names_key(body, &arn)
        },
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
    let took = until_every_node(
        &cluster,
        &key,
        Duration::from_secs(30),
        "serving after allow",
        all_there,
    )
    .await;
    eprintln!("access restored → every node serves after {took:?}");

    // KMS does not answer: 503 naming the key; back when it answers again.
    moto.pause().unwrap();
    let took = until_every_node(
        &cluster,
        &key,
        bound,
        "refused while paused",
        |status, body| {
            status == 503 && body["error"]["code"] == "UNAVAILABLE" && names_key(body, &arn)
        },
    )
    .await;
    eprintln!("KMS unreachable → every node refuses the index after {took:?}");
    moto.resume().unwrap();
    until_every_node(
        &cluster,
        &key,
        Duration::from_secs(30),
        "serving after resume",
        all_there,
    )
    .await;
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
