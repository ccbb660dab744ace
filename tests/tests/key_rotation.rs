//! Root key rotation and crypto-shredding on 3-node clusters with local keyrings:
//! - a rotation whose leader is killed mid-way (a failpoint after the first project key's
//!   re-wrap) is carried on after the restart: every record readable, every keyring holding
//!   only the new version, every node data key wrapped under it, and the cluster starting
//!   again without the old version;
//! - deleting an index starts a rotation on its own; afterwards a copy of a node's data
//!   directory taken before the delete cannot be opened with any node's keyring — its node
//!   data key (which seals the control plane's state, and with it the project and index keys
//!   that seal the index's records, graphs and snapshots) is wrapped under a version no
//!   keyring holds — while the keyring copied with it still opens it.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use conifer_node::crypto::{node_data_key, read_node_data_key, CryptoError, LocalKeyring};
use conifer_tests::{Cluster, ClusterOptions};
use reqwest::Method;
use serde_json::{json, Value};

const RECORDS: usize = 40;
const AFTER_REWRAP: &str = "conifer::root_rotation::after_rewrap";

fn keyring_of(data_dir: &Path) -> PathBuf {
    data_dir.with_extension("keyring.json")
}

/// The root key versions a keyring file holds.
fn versions(keyring: &Path) -> Vec<u32> {
    LocalKeyring::open(keyring)
        .unwrap()
        .summary()
        .versions
        .into_iter()
        .map(|(v, _)| v)
        .collect()
}

async fn root_keys(cluster: &Cluster, via: u64) -> (u16, Value) {
    let resp = cluster
        .http
        .get(cluster.url(via, "/admin/cluster/root-keys"))
        .bearer_auth(cluster.admin_token())
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// Waits (60 s) until the control plane is at root key version `to` with no rotation and
/// no pending deletion, and every member holds only `to` and wraps its data key with it.
async fn until_rotated(cluster: &Cluster, to: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, body) = root_keys(cluster, 1).await;
        let nodes_done = body["nodes"].as_array().is_some_and(|nodes| {
            nodes.len() == cluster.nodes.len()
                && nodes.iter().all(|n| {
                    n["current_version"] == to
                        && n["node_key_version"] == to
                        && n["versions"]
                            .as_array()
                            .is_some_and(|v| v.len() == 1 && v[0]["version"] == to)
                })
        });
        if status == 200
            && body["current_version"] == to
            && body["rotation"].is_null()
            && body["pending_shreds"] == 0
            && nodes_done
        {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "no rotation to version {to} everywhere: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn upsert(cluster: &Cluster, key: &str, index: &str, records: usize) {
    for chunk in (0..records).collect::<Vec<_>>().chunks(100) {
        let vectors: Vec<Value> = chunk
            .iter()
            .map(|i| {
                json!({"id": format!("r{i}"), "values": [1.0, *i as f32, 0.5, 0.25],
                       "metadata": {"n": i}})
            })
            .collect();
        // Retried while the shard elects a leader (a cluster just restarted).
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let resp = cluster
                .data(1, key, index, Method::POST, "/vectors/upsert")
                .json(&json!({ "vectors": vectors }))
                .send()
                .await
                .unwrap();
            let status = resp.status().as_u16();
            if status == 200 {
                break;
            }
            let body = resp.text().await.unwrap_or_default();
            assert!(
                status == 503 && Instant::now() < deadline,
                "upsert into {index}: {status} {body}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

/// Waits (60 s) until every node fetches every record of `index` with its metadata.
async fn every_record_everywhere(cluster: &Cluster, key: &str, index: &str, records: usize) {
    let ids: Vec<String> = (0..records).map(|i| format!("ids=r{i}")).collect();
    let path = format!("/vectors/fetch?{}", ids.join("&"));
    let deadline = Instant::now() + Duration::from_secs(60);
    for node in 1..=cluster.nodes.len() as u64 {
        loop {
            let resp = cluster
                .data(node, key, index, Method::GET, &path)
                .send()
                .await
                .unwrap();
            let status = resp.status().as_u16();
            let body: Value = resp.json().await.unwrap_or(Value::Null);
            let all = body["vectors"].as_object().is_some_and(|v| {
                v.len() == records
                    && (0..records).all(|i| v[&format!("r{i}")]["metadata"]["n"] == i as f64)
            });
            if status == 200 && all {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "node {node} fetches every record of {index}: {status} {}",
                body.to_string().chars().take(400).collect::<String>()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

/// A 3-node cluster started with `options` (nodes forced to 3) holding index `index` (4
/// dimensions) with `records` records on every node; and its API key.
async fn cluster_with_index(
    options: ClusterOptions,
    index: &str,
    metric: &str,
    records: usize,
) -> (Cluster, String) {
    let cluster = Cluster::start_with(ClusterOptions {
        nodes: 3,
        ..options
    })
    .await
    .unwrap();
    let key = cluster.api_key();
    cluster
        .create_index(1, &key, index, 4, metric)
        .await
        .unwrap();
    upsert(&cluster, &key, index, records).await;
    every_record_everywhere(&cluster, &key, index, records).await;
    (cluster, key)
}

/// Waits (60 s) until a node of the cluster died at its failpoint (`what` otherwise), lets
/// the others run 2 s more, then stops them all.
async fn stop_after_a_crash(cluster: &mut Cluster, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while (1..=3).all(|id| cluster.node(id).is_running()) {
        assert!(Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    for id in 1..=3 {
        cluster.node(id).kill();
    }
}

/// Starts every (stopped) node of the cluster again — without the failpoints of its
/// environment when `without_failpoints` — and waits until each serves.
async fn start_all(cluster: &mut Cluster, without_failpoints: bool) {
    for id in 1..=3 {
        let node = cluster.node(id);
        if without_failpoints {
            node.env.clear();
        }
        node.spawn().unwrap();
    }
    for id in 1..=3 {
        cluster.wait_serving(id).await.unwrap();
    }
}

fn operations(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| e["event"]["operation"].as_str().map(String::from))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_root_rotation_killed_midway_resumes_after_the_restart_and_retires_the_old_version() {
    let (mut cluster, key) = cluster_with_index(
        ClusterOptions {
            env: vec![("FAILPOINTS".into(), format!("{AFTER_REWRAP}=panic"))],
            ..ClusterOptions::default()
        },
        "kept",
        "cosine",
        RECORDS,
    )
    .await;
    let token = cluster.admin_token();
    // Four project keys to re-wrap: the leader dies after the first.
    for name in ["second", "third", "fourth"] {
        let resp = cluster
            .http
            .post(cluster.url(1, "/admin/projects"))
            .bearer_auth(&token)
            .json(&json!({ "name": name }))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 201);
    }

    let resp = cluster
        .http
        .post(cluster.url(2, "/admin/cluster/root-keys/rotate"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 202);
    let started: Value = resp.json().await.unwrap();
    assert_eq!(started["rotation"]["to_version"], 2, "{started}");
    assert_eq!(started["rotation"]["reason"], "requested");
    // The leader dies at the failpoint; the next one cannot reach it, so the rotation
    // waits.
    stop_after_a_crash(&mut cluster, &format!("no node reached {AFTER_REWRAP}")).await;
    let crashed = (1..=3)
        .filter(|id| cluster.nodes[*id as usize - 1].log().contains(AFTER_REWRAP))
        .count();
    assert!(crashed >= 1, "a node died at {AFTER_REWRAP}");
    // Mid-way: nothing was retired before the rotation committed.
    for id in 1..=3 {
        let data_dir = cluster.nodes[id - 1].data_dir.clone();
        let held = versions(&keyring_of(&data_dir));
        assert_eq!(held, vec![1, 2], "node {id}'s keyring mid-rotation");
    }

    start_all(&mut cluster, true).await;
    let state = until_rotated(&cluster, 2).await;
    assert_eq!(state["rotations"], 1, "{state}");
    every_record_everywhere(&cluster, &key, "kept", RECORDS).await;
    for id in 1..=3 {
        let data_dir = cluster.nodes[id - 1].data_dir.clone();
        assert_eq!(versions(&keyring_of(&data_dir)), vec![2], "node {id}");
        assert_eq!(read_node_data_key(&data_dir).unwrap().kek_version, 2);
    }
    // Nothing needs the old version: the whole cluster starts again and serves.
    for id in 1..=3 {
        cluster.node(id).kill();
    }
    start_all(&mut cluster, false).await;
    every_record_everywhere(&cluster, &key, "kept", RECORDS).await;
    let (events, _) = cluster.audit_chain(1, None).await.unwrap();
    let ops = operations(&events);
    assert!(
        ops.iter().any(|o| o == "cluster.root_keys.rotate"),
        "{ops:?}"
    );
    let finished = events
        .iter()
        .filter(|e| {
            e["event"]["operation"] == "cluster.root_keys.rotation_finished"
                && e["event"]["outcome"]["result"] == "success"
        })
        .count();
    assert_eq!(finished, 1, "{ops:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn deleting_an_index_shreds_it_for_a_copy_of_a_data_directory_taken_before() {
    const SHREDDED: usize = 150;
    let (mut cluster, key) = cluster_with_index(
        ClusterOptions {
            args: vec!["--hnsw-min-records".into(), "100".into()],
            ..ClusterOptions::default()
        },
        "doomed",
        "euclidean",
        SHREDDED,
    )
    .await;
    // Node 2 saves its graph in a snapshot.
    let resp = cluster
        .http
        .post(cluster.url(2, "/admin/cluster/snapshot"))
        .bearer_auth(cluster.admin_token())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 202);
    tokio::time::sleep(Duration::from_secs(2)).await;

    // A copy of node 2's data directory and keyring, taken while it is stopped.
    let copies = tempfile::tempdir().unwrap();
    let copy = copies.path().join("data");
    let old_keyring = copies.path().join("keyring.json");
    let data_dir = cluster.nodes[1].data_dir.clone();
    cluster.node(2).kill();
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(&data_dir)
        .arg(&copy)
        .status()
        .unwrap();
    assert!(status.success());
    std::fs::copy(keyring_of(&data_dir), &old_keyring).unwrap();
    cluster.node(2).spawn().unwrap();
    cluster.wait_serving(2).await.unwrap();
    // The shard's snapshots are its state (a durable state machine); the copy holds that,
    // its Raft log and the saved graph.
    let (graphs, _) = conifer_tests::saved_graphs_and_snapshots(&copy);
    assert!(graphs > 0, "the copy holds the index's saved HNSW graph");
    let old = LocalKeyring::open(&old_keyring).unwrap();
    node_data_key(&copy, &old)
        .await
        .expect("before the delete, the copy opens with the keyring copied with it");

    let resp = cluster
        .http
        .delete(cluster.url(1, "/indexes/doomed"))
        .header("Api-Key", &key)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 202);
    until_rotated(&cluster, 2).await;

    assert_eq!(read_node_data_key(&copy).unwrap().kek_version, 1);
    for id in 1..=3 {
        let keyring = keyring_of(&cluster.nodes[id - 1].data_dir);
        assert_eq!(versions(&keyring), vec![2], "node {id}");
        let refused = node_data_key(&copy, &LocalKeyring::open(&keyring).unwrap()).await;
        assert!(
            matches!(refused, Err(CryptoError::UnknownKeyVersion(1))),
            "node {id}'s keyring opens the copy: {:?}",
            refused.err()
        );
    }
    // What shredded it is the version retired, no more: the keyring copied with it still
    // opens it.
    assert!(node_data_key(&copy, &old).await.is_ok());

    let org = cluster.organization_id();
    let (events, _) = cluster.audit_chain(1, Some(&org)).await.unwrap();
    let shred = events
        .iter()
        .find(|e| e["event"]["operation"] == "index.shred")
        .unwrap_or_else(|| panic!("no index.shred event: {:?}", operations(&events)));
    assert_eq!(shred["event"]["resource_name"], "doomed", "{shred}");
    assert_eq!(shred["event"]["parameters"]["retired_root_key_version"], 1);
    let (cluster_events, _) = cluster.audit_chain(1, None).await.unwrap();
    let started = cluster_events
        .iter()
        .find(|e| e["event"]["operation"] == "cluster.root_keys.rotate")
        .expect("the rotation is audited");
    assert_eq!(
        started["event"]["parameters"]["reason"], "shredding",
        "{started}"
    );
}

/// How many values of shard groups (not group 0) each column family of a stopped node's
/// database holds, by the index data key version that sealed them (format byte 2, then the
/// version).
fn sealed_versions(data_dir: &Path) -> std::collections::BTreeMap<(String, u32), usize> {
    use conifer_raft::storage::{CF_RAFT_LOG, CF_STATE};
    let db = conifer_raft::rocksdb::DB::open_cf_for_read_only(
        &conifer_raft::rocksdb::Options::default(),
        data_dir.join("db"),
        conifer_raft::storage::COLUMN_FAMILIES,
        false,
    )
    .unwrap();
    let mut counts = std::collections::BTreeMap::new();
    for cf in [CF_STATE, CF_RAFT_LOG] {
        for item in db.iterator_cf(
            db.cf_handle(cf).unwrap(),
            conifer_raft::rocksdb::IteratorMode::Start,
        ) {
            let (key, value) = item.unwrap();
            if key.len() < 8 || key[..8] == [0u8; 8] {
                continue;
            }
            assert_eq!(
                value.first(),
                Some(&2),
                "a shard value not sealed by an index key"
            );
            let version = u32::from_be_bytes(value[1..5].try_into().unwrap());
            *counts.entry((cf.to_string(), version)).or_insert(0) += 1;
        }
    }
    counts
}

async fn describe(cluster: &Cluster, key: &str, via: u64, index: &str) -> Value {
    cluster
        .http
        .get(cluster.url(via, &format!("/indexes/{index}")))
        .header("Api-Key", key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_index_key_rotation_killed_midway_resumes_and_leaves_nothing_under_the_old_key() {
    const BEFORE: usize = 600;
    const AFTER: usize = 650;
    let (mut cluster, key) = cluster_with_index(
        ClusterOptions {
            env: vec![(
                "FAILPOINTS".into(),
                "conifer::index_rotation::after_batch=1*panic".into(),
            )],
            ..ClusterOptions::default()
        },
        "rekeyed",
        "cosine",
        BEFORE,
    )
    .await;

    let resp = cluster
        .http
        .post(cluster.url(1, "/indexes/rekeyed/rotate-key"))
        .header("Api-Key", &key)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 202);
    let started: Value = resp.json().await.unwrap();
    assert_eq!(started["encryption"]["data_key_version"], 2, "{started}");
    assert_eq!(
        started["encryption"]["rotation"]["from_versions"],
        json!([1])
    );

    // Each replica dies after its first re-sealed batch.
    stop_after_a_crash(&mut cluster, "no replica died mid-re-seal").await;
    let midway = (1..=3)
        .map(|id| sealed_versions(&cluster.nodes[id - 1].data_dir))
        .filter(|counts| {
            let state = |v| counts.get(&("state".to_string(), v)).copied().unwrap_or(0);
            state(1) > 0 && state(2) > 0
        })
        .count();
    assert!(
        midway > 0,
        "a replica holds values under both versions after the crash"
    );

    start_all(&mut cluster, true).await;
    // Writes and reads go on while the rotation finishes.
    upsert(&cluster, &key, "rekeyed", AFTER).await;
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let index = describe(&cluster, &key, 2, "rekeyed").await;
        if index["encryption"]["rotation"].is_null() && index["encryption"]["data_key_version"] == 2
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the rotation did not finish: {index}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    every_record_everywhere(&cluster, &key, "rekeyed", AFTER).await;
    for id in 1..=3 {
        cluster.node(id).kill();
    }
    for id in 1..=3 {
        let counts = sealed_versions(&cluster.nodes[id - 1].data_dir);
        assert!(
            counts.keys().all(|(_, v)| *v == 2),
            "node {id} still holds values under data key version 1: {counts:?}"
        );
        assert!(counts.contains_key(&("state".to_string(), 2)), "{counts:?}");
    }
    // Version 1 is gone from the control plane: the cluster starts and serves without it.
    start_all(&mut cluster, false).await;
    every_record_everywhere(&cluster, &key, "rekeyed", AFTER).await;
    let org = cluster.organization_id();
    let (events, _) = cluster.audit_chain(1, Some(&org)).await.unwrap();
    let ops = operations(&events);
    assert!(ops.iter().any(|o| o == "index.rotate_key"), "{ops:?}");
    let retired = events.iter().any(|e| {
        e["event"]["operation"] == "index.key_resealed"
            && e["event"]["parameters"]["older_versions_retired"] == true
    });
    assert!(retired, "{ops:?}");
}
