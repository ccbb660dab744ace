//! Nothing written through the API is stored in plaintext: a marker string sent in project
//! and key names, and in vector ids and metadata, is searched for in every file under the
//! node's data directory, after enough writes that the log has been snapshotted.

use std::path::Path;

use conifer_tests::Cluster;
use reqwest::Method;
use serde_json::{json, Value};

fn files_containing(dir: &Path, needle: &[u8], hits: &mut Vec<String>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files_containing(&path, needle, hits);
        } else if let Ok(bytes) = std::fs::read(&path) {
            if bytes.windows(needle.len()).any(|w| w == needle) {
                hits.push(path.display().to_string());
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn marker_written_through_the_api_never_appears_in_plaintext_on_disk() {
    let mut cluster = Cluster::start(1).await.unwrap();
    let marker = format!("PLAINTEXT-MARKER-{}", uuid::Uuid::new_v4().simple());
    let token = cluster.admin_token();
    let resp = cluster
        .http
        .post(cluster.url(1, "/admin/projects"))
        .bearer_auth(&token)
        .json(&json!({ "name": marker }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 201);
    let project: Value = resp.json().await.unwrap();
    let project_id = project["id"].as_str().unwrap().to_string();
    let resp = cluster
        .http
        .post(cluster.url(1, &format!("/admin/projects/{project_id}/api-keys")))
        .bearer_auth(&token)
        .json(&json!({ "name": format!("{}-key", &marker[..40]) }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 201);
    let key_value = resp.json::<Value>().await.unwrap()["value"]
        .as_str()
        .unwrap()
        .to_string();

    // Shard records: the marker in ids and metadata, in the shard's RocksDB state.
    cluster
        .create_index(1, &key_value, "sealed", 4, "cosine")
        .await
        .unwrap();
    let vectors: Vec<Value> = (0..20)
        .map(|i| json!({"id": format!("{marker}-v{i}"), "values": [1.0, i as f32, 0.5, 0.25], "metadata": {"note": marker}}))
        .collect();
    let resp = cluster
        .data(1, &key_value, "sealed", Method::POST, "/vectors/upsert")
        .json(&json!({ "vectors": vectors }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);

    // Push the log past a snapshot (every 1000 entries) so snapshots are on disk too.
    for i in 0..550 {
        let resp = cluster
            .http
            .post(cluster.url(1, "/admin/projects"))
            .bearer_auth(&token)
            .json(&json!({ "name": format!("{marker}-{i}") }))
            .send()
            .await
            .unwrap();
        let id = resp.json::<Value>().await.unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string();
        let resp = cluster
            .http
            .delete(cluster.url(1, &format!("/admin/projects/{id}")))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 202);
    }

    // The snapshot is built in the background once the log passed the threshold: wait for it
    // (a loaded machine took longer than the requests above).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let info = cluster.cluster_info(1).await.unwrap();
        if info["snapshot_index"].as_u64().is_some_and(|i| i >= 900) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "a snapshot was taken: {info}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }

    // Stop the node so everything it buffered is on disk, then scan.
    let data_dir = cluster.node(1).data_dir.clone();
    cluster.node(1).kill();
    let mut hits = Vec::new();
    files_containing(&data_dir, marker.as_bytes(), &mut hits);
    files_containing(&data_dir, key_value.as_bytes(), &mut hits);
    // The operator token is handed over in bootstrap.json (mode 0600) by design; nowhere else.
    let mut token_hits = Vec::new();
    files_containing(&data_dir, token.as_bytes(), &mut token_hits);
    hits.extend(
        token_hits
            .into_iter()
            .filter(|h| !h.ends_with("/bootstrap.json")),
    );
    assert!(hits.is_empty(), "plaintext found in {hits:?}");

    // Sanity of the scan itself: the data directory holds files, and the node restarts from
    // them with the marker project intact (so the data is there, only encrypted).
    let mut rocksdb_files = Vec::new();
    files_containing(&data_dir, b"rocksdb", &mut rocksdb_files);
    assert!(
        !rocksdb_files.is_empty(),
        "the scan reads the database files"
    );
    cluster.node(1).spawn().unwrap();
    cluster.wait_serving(1).await.unwrap();
    let resp = cluster
        .http
        .get(cluster.url(1, &format!("/admin/projects/{project_id}")))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.json::<Value>().await.unwrap()["name"], marker);
    let fetched: Value = cluster
        .data(
            1,
            &key_value,
            "sealed",
            Method::GET,
            &format!("/vectors/fetch?ids={marker}-v7"),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        fetched["vectors"][format!("{marker}-v7")]["metadata"]["note"],
        marker.as_str()
    );
}

/// Every value of a shard group under `db` opened with the node's own key: (values of group
/// 0 that open, values of other groups that open, values of other groups that do not).
async fn open_with_node_key(data_dir: &Path, keyring: &Path) -> (usize, usize, usize) {
    use conifer_node::crypto::{node_data_key, LocalKeyring};
    use conifer_raft::storage::{CF_RAFT_LOG, CF_SNAPSHOTS, CF_STATE};
    let root = LocalKeyring::open(keyring).unwrap();
    let node_key = node_data_key(data_dir, &root).await.unwrap();
    let storage =
        conifer_raft::NodeStorage::open(&data_dir.join("db"), std::sync::Arc::new(node_key))
            .unwrap();
    let (mut control, mut opened, mut sealed) = (0, 0, 0);
    for cf in [CF_RAFT_LOG, CF_STATE, CF_SNAPSHOTS] {
        let handle = storage.cf(cf).unwrap();
        for item in storage
            .db()
            .iterator_cf(handle, conifer_raft::rocksdb::IteratorMode::Start)
        {
            let (key, value) = item.unwrap();
            let group = u64::from_be_bytes(key[..8].try_into().unwrap());
            let opens = storage.open_value(cf, &key, &value).is_ok();
            match (group, opens) {
                (0, true) => control += 1,
                (0, false) => panic!("a control-plane value under {cf} does not open"),
                (_, true) => opened += 1,
                // Sealed by an index's key set: format byte 2, then the key version (1).
                (_, false) => {
                    assert_eq!(
                        value.get(..5),
                        Some(&[2u8, 0, 0, 0, 1][..]),
                        "a value of group {group} under {cf} is not sealed by index key version 1"
                    );
                    sealed += 1
                }
            }
        }
    }
    (control, opened, sealed)
}

/// Everything of an index — its Raft log entries, records and metadata in the shard's
/// state — is sealed under the index's own data key, not the node's: on every node of a
/// 3-node cluster (two of which received the cluster's root key when they joined), the
/// node's key opens the control plane's values and none of the shard group's, and the
/// restarted nodes still serve the records.
#[tokio::test(flavor = "multi_thread")]
async fn index_data_is_sealed_under_the_index_key_on_every_node() {
    let mut cluster = Cluster::start(3).await.unwrap();
    let key = cluster.api_key();
    cluster
        .create_index(1, &key, "keyed", 4, "cosine")
        .await
        .unwrap();
    let vectors: Vec<Value> = (0..30)
        .map(|i| json!({"id": format!("rec-{i}"), "values": [1.0, i as f32, 0.5, 0.25], "metadata": {"n": i}}))
        .collect();
    let resp = cluster
        .data(1, &key, "keyed", Method::POST, "/vectors/upsert")
        .json(&json!({ "vectors": vectors }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    // Every replica has applied the upsert before the nodes stop.
    for node in 1..=3 {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let stats: Value = cluster
                .data(node, &key, "keyed", Method::POST, "/describe_index_stats")
                .json(&json!({}))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            if stats["totalVectorCount"] == 30 {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "node {node}: {stats}");
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }
    for node in 1..=3 {
        cluster.node(node).kill();
    }
    for node in 1..=3 {
        let data_dir = cluster.node(node).data_dir.clone();
        let keyring = data_dir.with_extension("keyring.json");
        let (control, opened, sealed) = open_with_node_key(&data_dir, &keyring).await;
        assert!(control > 0, "node {node}: the scan reads group 0's values");
        assert!(
            sealed > 0,
            "node {node}: the shard group's values are on disk ({sealed})"
        );
        assert_eq!(
            opened, 0,
            "node {node}: {opened} shard values opened with the node key"
        );
    }
    for node in 1..=3 {
        cluster.node(node).spawn().unwrap();
    }
    for node in 1..=3 {
        cluster.wait_serving(node).await.unwrap();
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let resp = cluster
            .data(2, &key, "keyed", Method::GET, "/vectors/fetch?ids=rec-7")
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        if status == 200 && body["vectors"]["rec-7"]["metadata"]["n"] == 7.0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the restarted cluster serves the records: {status} {body}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// The disk scan of a 3-node cluster: records with marker ids and metadata and known float
/// vectors, enough of them that every replica builds and saves an HNSW graph (and takes the
/// shard snapshot that saves it); after the nodes stop, no file under any node's data
/// directory — RocksDB SSTs, WAL and manifest, Raft logs, snapshots, saved graphs — holds a
/// marker, a record id or a vector's bytes, and the restarted cluster serves the records.
#[tokio::test(flavor = "multi_thread")]
async fn a_three_node_cluster_keeps_no_plaintext_on_disk() {
    const RECORDS: usize = 300;
    let mut cluster = conifer_tests::Cluster::start_with(conifer_tests::ClusterOptions {
        nodes: 3,
        args: vec!["--hnsw-min-records".into(), "100".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    let key = cluster.api_key();
    let marker = format!("DISKSCAN-{}", uuid::Uuid::new_v4().simple());
    cluster
        .create_index(1, &key, "scanned", 4, "euclidean")
        .await
        .unwrap();
    let vector = |i: usize| {
        [
            1.234_567_8 + i as f32,
            -9.876_543,
            3.333_777 * (i + 1) as f32,
            2.468_135,
        ]
    };
    for chunk in (0..RECORDS).collect::<Vec<_>>().chunks(100) {
        let vectors: Vec<Value> = chunk
            .iter()
            .map(|&i| json!({"id": format!("{marker}-id-{i}"), "values": vector(i), "metadata": {"note": marker}}))
            .collect();
        let resp = cluster
            .data(1, &key, "scanned", Method::POST, "/vectors/upsert")
            .json(&json!({ "vectors": vectors }))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200);
    }
    // Every replica builds its graph (the log says so), then saves it at a snapshot.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    for node in 1..=3 {
        let log_path = cluster.node(node).data_dir.with_extension("log");
        while !std::fs::read_to_string(&log_path)
            .unwrap_or_default()
            .contains("vector index rebuilt")
        {
            assert!(
                std::time::Instant::now() < deadline,
                "node {node} built no HNSW graph"
            );
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    for node in 1..=3 {
        cluster.node(node).kill();
    }

    let mut needles: Vec<(String, Vec<u8>)> = vec![("marker".into(), marker.clone().into_bytes())];
    for i in [0, 1, 150, RECORDS - 1] {
        needles.push((format!("id {i}"), format!("{marker}-id-{i}").into_bytes()));
        let bytes: Vec<u8> = vector(i).iter().flat_map(|f| f.to_le_bytes()).collect();
        needles.push((format!("vector {i}"), bytes));
    }
    for node in 1..=3 {
        let data_dir = cluster.node(node).data_dir.clone();
        let mut hits = Vec::new();
        for (what, needle) in &needles {
            let mut found = Vec::new();
            files_containing(&data_dir, needle, &mut found);
            hits.extend(found.into_iter().map(|f| format!("{what} in {f}")));
        }
        assert!(hits.is_empty(), "node {node}: plaintext on disk: {hits:?}");
        let (graph_chunks, snapshots) = conifer_tests::saved_graphs_and_snapshots(&data_dir);
        eprintln!("node {node}: {graph_chunks} saved graph chunk(s), {snapshots} shard snapshot(s) scanned");
        assert!(
            graph_chunks > 0,
            "node {node}: the scan covers a saved HNSW graph"
        );
    }
    // The scan finds what is there in plaintext: node 1's bootstrap.json holds the API key.
    let mut found = Vec::new();
    files_containing(
        &cluster.node(1).data_dir.clone(),
        key.as_bytes(),
        &mut found,
    );
    assert!(
        found.iter().any(|f| f.ends_with("/bootstrap.json")),
        "the scan reads the data directory: {found:?}"
    );

    for node in 1..=3 {
        cluster.node(node).spawn().unwrap();
    }
    for node in 1..=3 {
        cluster.wait_serving(node).await.unwrap();
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let resp = cluster
            .data(3, &key, "scanned", Method::POST, "/query")
            .json(&json!({"vector": vector(150), "topK": 1, "includeMetadata": true}))
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        if status == 200 && body["matches"][0]["id"] == format!("{marker}-id-150") {
            assert_eq!(body["matches"][0]["metadata"]["note"], marker.as_str());
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the restarted cluster answers the query: {status} {body}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}
