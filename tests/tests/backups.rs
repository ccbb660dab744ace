//! Backups, restore jobs and collections against real clusters: a round trip into another
//! configuration equal record for record, a backup taken under concurrent writes holding
//! exactly one log position's records, damaged and foreign backups refused before anything
//! is created, and a restore whose node is killed mid-job.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use conifer_tests::{Cluster, ClusterOptions};
use reqwest::Method;
use serde_json::{json, Value};

const GENRES: [&str; 3] = ["drama", "comedy", "news"];

/// A call with the bootstrap project's editor key: (status, body).
async fn call(
    c: &Cluster,
    via: u64,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    call_as(c, &c.api_key(), via, method, path, body).await
}

/// A call with API key `key`: (status, body).
async fn call_as(
    c: &Cluster,
    key: &str,
    via: u64,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut r = c
        .http
        .request(method, c.url(via, path))
        .header("Api-Key", key);
    if let Some(b) = body {
        r = r.json(&b);
    }
    let resp = r.send().await.expect("request sent");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// A deterministic vector of `dim` values for record `i` (seeded by `salt`).
fn vector(i: u64, salt: u64, dim: usize) -> Vec<f32> {
    let mut x = i.wrapping_mul(6364136223846793005).wrapping_add(salt | 1);
    (0..dim)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            ((x % 20_000) as f32 / 10_000.0) - 1.0 + 1e-3
        })
        .collect()
}

/// Upserts `records` (id, values, metadata) into `namespace` of `index` in batches; the
/// log positions of the batches, in order.
async fn upsert(
    c: &Cluster,
    index: &str,
    namespace: &str,
    records: &[(String, Vec<f32>, Value)],
) -> Vec<u64> {
    upsert_as(c, &c.api_key(), index, namespace, records).await
}

/// [`upsert`] with API key `key`.
async fn upsert_as(
    c: &Cluster,
    key: &str,
    index: &str,
    namespace: &str,
    records: &[(String, Vec<f32>, Value)],
) -> Vec<u64> {
    let mut lsns = Vec::new();
    for batch in records.chunks(200) {
        let vectors: Vec<Value> = batch
            .iter()
            .map(|(id, values, metadata)| json!({"id": id, "values": values, "metadata": metadata}))
            .collect();
        let resp = c
            .data(1, key, index, Method::POST, "/vectors/upsert")
            .json(&json!({"vectors": vectors, "namespace": namespace}))
            .send()
            .await
            .unwrap();
        assert_eq!(
            resp.status().as_u16(),
            200,
            "{}",
            resp.text().await.unwrap()
        );
        lsns.push(
            resp.headers()["x-pinecone-request-lsn"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap(),
        );
    }
    lsns
}

/// Polls `path` until `done(body)`, at most `secs` seconds; the last body.
async fn wait_for(
    c: &Cluster,
    via: u64,
    path: &str,
    secs: u64,
    done: impl Fn(&Value) -> bool,
) -> Value {
    wait_for_as(c, &c.api_key(), via, path, secs, done).await
}

/// [`wait_for`] with API key `key`.
async fn wait_for_as(
    c: &Cluster,
    key: &str,
    via: u64,
    path: &str,
    secs: u64,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let (status, body) = call_as(c, key, via, Method::GET, path, None).await;
        if status == 200 && done(&body) {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "{path} after {secs} s: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Starts a backup of `index` and waits until it is ready; its description.
async fn backup(c: &Cluster, index: &str) -> Value {
    backup_as(c, &c.api_key(), index).await
}

/// [`backup`] with API key `key`.
async fn backup_as(c: &Cluster, key: &str, index: &str) -> Value {
    let (status, created) = call_as(
        c,
        key,
        1,
        Method::POST,
        &format!("/indexes/{index}/backups"),
        Some(json!({"name": "nightly", "description": "test backup"})),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["status"], "Initializing", "{created}");
    let id = created["backup_id"].as_str().unwrap().to_string();
    wait_for_as(c, key, 1, &format!("/backups/{id}"), 60, |b| {
        b["status"] == "Ready"
    })
    .await
}

/// Every record of `namespace` in `index` through node `via`: id → (values, metadata).
async fn records(
    c: &Cluster,
    via: u64,
    index: &str,
    namespace: &str,
) -> BTreeMap<String, (Vec<f32>, Value)> {
    let mut ids = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let mut path = format!("/vectors/list?namespace={namespace}&limit=100");
        if let Some(t) = &token {
            path.push_str(&format!("&paginationToken={t}"));
        }
        let resp = c
            .data(via, &c.api_key(), index, Method::GET, &path)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200);
        let page: Value = resp.json().await.unwrap();
        for v in page["vectors"].as_array().unwrap() {
            ids.push(v["id"].as_str().unwrap().to_string());
        }
        token = page["pagination"]["next"].as_str().map(String::from);
        if token.is_none() {
            break;
        }
    }
    let mut out = BTreeMap::new();
    for chunk in ids.chunks(100) {
        let query: String = chunk.iter().map(|id| format!("ids={id}&")).collect();
        let resp = c
            .data(
                via,
                &c.api_key(),
                index,
                Method::GET,
                &format!("/vectors/fetch?{query}namespace={namespace}"),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200);
        let fetched: Value = resp.json().await.unwrap();
        for (id, v) in fetched["vectors"].as_object().unwrap() {
            let values = v["values"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect();
            out.insert(id.clone(), (values, v["metadata"].clone()));
        }
    }
    out
}

/// Each namespace's (records, digest) of `index` as the replica on node `via` reports it.
async fn digests(c: &Cluster, via: u64, group: u64) -> BTreeMap<String, (u64, String)> {
    let info: Value = c
        .http
        .get(c.url(via, "/admin/cluster?digest=true"))
        .bearer_auth(c.admin_token())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let shard = info["shards"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["group_id"] == group)
        .unwrap_or_else(|| panic!("node {via} holds no replica of group {group}: {info}"));
    shard["namespaces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|ns| {
            (
                ns["name"].as_str().unwrap().to_string(),
                (
                    ns["records"].as_u64().unwrap(),
                    ns["digest"].as_str().unwrap().to_string(),
                ),
            )
        })
        .collect()
}

/// The nodes holding a replica of shard group `group`.
async fn holders(c: &Cluster, group: u64) -> Vec<u64> {
    let mut out = Vec::new();
    for node in &c.nodes {
        let info = c.cluster_info(node.id).await.unwrap();
        if info["shards"]
            .as_array()
            .is_some_and(|shards| shards.iter().any(|s| s["group_id"] == group))
        {
            out.push(node.id);
        }
    }
    out
}

fn group_of(index_description: &Value, backups_id: &str) -> u64 {
    index_description[backups_id]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no {backups_id} in {index_description}"))
}

/// Top-10 ids of `vector` in `namespace` of `index`.
async fn top10(c: &Cluster, index: &str, namespace: &str, vector: &[f32]) -> Vec<String> {
    let resp = c
        .data(1, &c.api_key(), index, Method::POST, "/query")
        .json(&json!({"vector": vector, "topK": 10, "namespace": namespace}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let v: Value = resp.json().await.unwrap();
    v["matches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_backup_restores_into_another_replica_count_and_hnsw_setting_equal_record_for_record() {
    let c = Cluster::start_with(ClusterOptions {
        nodes: 3,
        args: ["--backup-chunk-bytes", "65536", "--hnsw-min-records", "500"]
            .map(String::from)
            .to_vec(),
        ..ClusterOptions::default()
    })
    .await
    .unwrap();
    let dim = 16;
    c.create_index(1, &c.api_key(), "src", dim as u32, "euclidean")
        .await
        .unwrap();
    let make = |ns: &str, n: u64| -> Vec<(String, Vec<f32>, Value)> {
        (0..n)
            .map(|i| {
                (
                    format!("{ns}-{i}"),
                    vector(i, ns.len() as u64, dim),
                    json!({"genre": GENRES[i as usize % 3], "year": 1990 + i % 30,
                           "score": i as f64 / 7.0, "tags": [format!("t{}", i % 5)], "ok": i % 2 == 0}),
                )
            })
            .collect()
    };
    let (a, b) = (make("alpha", 2_000), make("beta", 700));
    upsert(&c, "src", "alpha", &a).await;
    upsert(&c, "src", "beta", &b).await;
    let resp = c
        .data(1, &c.api_key(), "src", Method::POST, "/namespaces")
        .json(&json!({"name": "empty"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 201);

    let backup = backup(&c, "src").await;
    assert_eq!(backup["record_count"], 2_700, "{backup}");
    assert_eq!(backup["namespace_count"], 3, "{backup}");
    assert_eq!(backup["dimension"], dim, "{backup}");
    assert_eq!(backup["metric"], "euclidean", "{backup}");
    assert!(
        backup["size_bytes"].as_u64().unwrap() > 2_700 * dim as u64 * 4,
        "{backup}"
    );
    let id = backup["backup_id"].as_str().unwrap();
    let chunks = std::fs::read_dir(cluster_folder(&c).join(c.project_id()).join(id))
        .unwrap()
        .flatten()
        .map(|attempt| std::fs::read_dir(attempt.path()).unwrap().count())
        .sum::<usize>();
    assert!(chunks >= 4, "several chunks and a manifest: {chunks} files");
    // Listed per index and per project; the 2026-07 shape has no dimension and answers 200.
    let (_, listed) = call(&c, 2, Method::GET, "/indexes/src/backups", None).await;
    assert_eq!(listed["data"][0]["backup_id"], id, "{listed}");

    let (status, started) = call(
        &c,
        2,
        Method::POST,
        &format!("/backups/{id}/create-index"),
        Some(
            json!({"name": "dst", "replicas": 1, "tags": {"from": "backup"},
                    "hnsw": {"m": 8, "ef_construction": 64, "ef_search": 64}}),
        ),
    )
    .await;
    assert_eq!(status, 202, "{started}");
    let job_id = started["restore_job_id"].as_str().unwrap();
    let job = wait_for(&c, 3, &format!("/restore-jobs/{job_id}"), 120, |j| {
        j["status"] != "Pending"
    })
    .await;
    assert_eq!(job["status"], "Completed", "{job}");
    assert_eq!(job["percent_complete"], 100.0, "{job}");
    assert_eq!(job["records_restored"], 2_700, "{job}");
    assert_eq!(job["target_index_name"], "dst", "{job}");
    let (_, dst) = call(&c, 1, Method::GET, "/indexes/dst", None).await;
    assert_eq!(dst["status"]["ready"], true, "{dst}");
    assert_eq!(dst["tags"]["from"], "backup", "{dst}");

    // Another configuration: one replica (the source has three).
    let src_group = group_of(&backup, "source_index_id");
    let dst_group = group_of(&started, "index_id");
    assert_eq!(holders(&c, src_group).await.len(), 3);
    let dst_holders = holders(&c, dst_group).await;
    assert_eq!(dst_holders.len(), 1, "{dst_holders:?}");

    // Equal record for record: ids, values bit for bit, metadata; and equal digests.
    for ns in ["alpha", "beta", "empty"] {
        let (from, to) = (
            records(&c, 1, "src", ns).await,
            records(&c, 2, "dst", ns).await,
        );
        assert_eq!(from.len(), to.len(), "{ns}");
        for (id, (values, metadata)) in &from {
            let (v, m) = &to[id];
            let bits = |x: &[f32]| x.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(values), bits(v), "{ns}/{id}");
            assert_eq!(metadata, m, "{ns}/{id}");
        }
    }
    let source_digests = digests(&c, 1, src_group).await;
    assert_eq!(source_digests, digests(&c, dst_holders[0], dst_group).await);
    assert_eq!(source_digests["alpha"].0, 2_000);

    // Same recall against exact search (both graphs, different parameters).
    let mut hits = (0, 0);
    for q in 0..20u64 {
        let query = vector(10_000 + q, 99, dim);
        let mut exact: Vec<(f32, &String)> = a
            .iter()
            .map(|(id, v, _)| {
                (
                    v.iter().zip(&query).map(|(x, y)| (x - y) * (x - y)).sum(),
                    id,
                )
            })
            .collect();
        exact.sort_by(|x, y| x.0.total_cmp(&y.0));
        let truth: BTreeSet<&String> = exact.iter().take(10).map(|(_, id)| *id).collect();
        for (index, hit) in [("src", &mut hits.0), ("dst", &mut hits.1)] {
            *hit += top10(&c, index, "alpha", &query)
                .await
                .iter()
                .filter(|id| truth.contains(id))
                .count();
        }
    }
    assert!(
        hits.0 >= 190 && hits.1 >= 190,
        "recall@10 of 200: source {}, restored {}",
        hits.0,
        hits.1
    );

    // Audited with the seed's backup events.
    let (_, events) = call(&c, 1, Method::GET, "/backups", None).await;
    assert_eq!(events["data"].as_array().unwrap().len(), 1);
    let page = c
        .audit_page(1, Some(&c.organization_id()), "resource_type=backup")
        .await
        .unwrap();
    let created = page["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["event"]["action"] == "create")
        .unwrap_or_else(|| panic!("no backup create event: {page}"));
    assert_eq!(created["event"]["resource_id"], "nightly", "{created}");

    // Deleting the source keeps its backup; deleting the backup removes its files.
    let (status, _) = call(&c, 1, Method::DELETE, "/indexes/src", None).await;
    assert_eq!(status, 202);
    let (status, kept) = call(&c, 1, Method::GET, &format!("/backups/{id}"), None).await;
    assert_eq!((status, &kept["status"]), (200, &json!("Ready")), "{kept}");
    let (status, _) = call(&c, 1, Method::DELETE, &format!("/backups/{id}"), None).await;
    assert_eq!(status, 202);
    assert!(!cluster_folder(&c).join(c.project_id()).join(id).exists());
    let (status, _) = call(&c, 1, Method::GET, &format!("/backups/{id}"), None).await;
    assert_eq!(status, 404);
}

/// The cluster's folder of the shared backup directory (named by the cluster's id).
fn cluster_folder(c: &Cluster) -> std::path::PathBuf {
    let mut folders: Vec<_> = std::fs::read_dir(c.backup_dir())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(folders.len(), 1, "one cluster folder: {folders:?}");
    folders.pop().unwrap()
}

/// A way to damage a backup's files.
type Damage<'a> = Box<dyn Fn() + 'a>;

/// The backup's attempt folder in the shared store.
fn attempt_dir(c: &Cluster, backup_id: &str) -> std::path::PathBuf {
    let dir = cluster_folder(c).join(c.project_id()).join(backup_id);
    let mut attempts: Vec<_> = std::fs::read_dir(&dir).unwrap().flatten().collect();
    assert_eq!(attempts.len(), 1, "one attempt in {}", dir.display());
    attempts.pop().unwrap().path()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_damaged_truncated_or_foreign_backup_is_refused_before_anything_is_created() {
    let c = Cluster::start_with(ClusterOptions {
        nodes: 1,
        args: ["--backup-chunk-bytes", "65536"].map(String::from).to_vec(),
        ..ClusterOptions::default()
    })
    .await
    .unwrap();
    let dim = 32;
    c.create_index(1, &c.api_key(), "src", dim as u32, "cosine")
        .await
        .unwrap();
    let rows: Vec<_> = (0..1_500)
        .map(|i| (format!("r{i}"), vector(i, 7, dim), json!({"i": i})))
        .collect();
    upsert(&c, "src", "", &rows).await;
    let first = backup(&c, "src").await;
    let other = backup(&c, "src").await;
    let (a, b) = (
        attempt_dir(&c, first["backup_id"].as_str().unwrap()),
        attempt_dir(&c, other["backup_id"].as_str().unwrap()),
    );
    let restore = |name: &'static str| {
        let c = &c;
        let id = first["backup_id"].as_str().unwrap().to_string();
        async move {
            call(
                c,
                1,
                Method::POST,
                &format!("/backups/{id}/create-index"),
                Some(json!({"name": name})),
            )
            .await
        }
    };
    let chunk = a.join("chunk-000001");
    let good = std::fs::read(&chunk).unwrap();
    let manifest = a.join("manifest");
    let good_manifest = std::fs::read(&manifest).unwrap();
    let mut flipped = good.clone();
    flipped[good.len() / 2] ^= 0x01;
    let cases: Vec<(&str, Damage, &str)> = vec![
        (
            "one byte",
            Box::new(|| std::fs::write(&chunk, &flipped).unwrap()),
            "chunk 1",
        ),
        (
            "truncated",
            Box::new(|| std::fs::write(&chunk, &good[..good.len() - 100]).unwrap()),
            "truncated",
        ),
        (
            "missing",
            Box::new(|| std::fs::remove_file(&chunk).unwrap()),
            "missing",
        ),
        (
            "another backup's chunk",
            Box::new(|| {
                std::fs::copy(b.join("chunk-000001"), &chunk).unwrap();
            }),
            "chunk 1",
        ),
        (
            "another backup's manifest",
            Box::new(|| {
                std::fs::copy(b.join("manifest"), &manifest).unwrap();
            }),
            "manifest",
        ),
    ];
    for (what, damage, named) in cases {
        damage();
        let (status, body) = restore("never").await;
        assert_eq!(status, 412, "{what}: {body}");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(named), "{what}: {message}");
        let (_, listed) = call(&c, 1, Method::GET, "/indexes", None).await;
        assert_eq!(
            listed["indexes"].as_array().unwrap().len(),
            1,
            "{what}: {listed}"
        );
        let (_, jobs) = call(&c, 1, Method::GET, "/restore-jobs", None).await;
        assert!(
            jobs["data"].as_array().unwrap().is_empty(),
            "{what}: {jobs}"
        );
        std::fs::write(&chunk, &good).unwrap();
        std::fs::write(&manifest, &good_manifest).unwrap();
    }
    // Whole again, it restores.
    let (status, body) = restore("whole").await;
    assert_eq!(status, 202, "{body}");
    let job = body["restore_job_id"].as_str().unwrap();
    let done = wait_for(&c, 1, &format!("/restore-jobs/{job}"), 60, |j| {
        j["status"] != "Pending"
    })
    .await;
    assert_eq!(done["status"], "Completed", "{done}");
    // A name already taken is refused.
    let (status, body) = restore("src").await;
    assert_eq!(status, 409, "{body}");

    // A backup whose index is deleted before it is written ends (ready or failed), never
    // stays pending.
    c.create_index(1, &c.api_key(), "brief", dim as u32, "cosine")
        .await
        .unwrap();
    upsert(&c, "brief", "", &rows[..200]).await;
    let (status, created) = call(&c, 1, Method::POST, "/indexes/brief/backups", None).await;
    assert_eq!(status, 201, "{created}");
    let (status, _) = call(&c, 1, Method::DELETE, "/indexes/brief", None).await;
    assert_eq!(status, 202);
    let id = created["backup_id"].as_str().unwrap();
    let ended = wait_for(&c, 1, &format!("/backups/{id}"), 30, |b| {
        b["status"] != "Initializing"
    })
    .await;
    match ended["status"].as_str() {
        Some("Ready") => assert_eq!(ended["record_count"], 200, "{ended}"),
        _ => assert!(
            ended["error"]
                .as_str()
                .unwrap_or_default()
                .contains("deleted"),
            "{ended}"
        ),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_backup_taken_while_four_clients_upsert_holds_exactly_one_log_positions_records() {
    let c = Cluster::start(3).await.unwrap();
    let dim = 8;
    c.create_index(1, &c.api_key(), "busy", dim as u32, "cosine")
        .await
        .unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..4u64 {
        let (http, url, key, stop) = (
            c.http.clone(),
            c.url(w % 3 + 1, "/vectors/upsert"),
            c.api_key(),
            stop.clone(),
        );
        writers.push(tokio::spawn(async move {
            // (log position, [(id, first value)]) of every acknowledged batch; ids repeat, so
            // later batches overwrite earlier ones.
            let mut acked: Vec<(u64, Vec<(String, f32)>)> = Vec::new();
            let mut seq = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let batch: Vec<(String, f32)> = (0..20)
                    .map(|k| {
                        (
                            format!("w{w}-{}", (seq * 20 + k) % 300),
                            (seq * 20 + k) as f32 + 1.0,
                        )
                    })
                    .collect();
                seq += 1;
                let vectors: Vec<Value> = batch
                    .iter()
                    .map(|(id, first)| {
                        let mut v = vec![0.5f32; dim];
                        v[0] = *first;
                        json!({"id": id, "values": v})
                    })
                    .collect();
                let resp = http
                    .post(&url)
                    .header("Api-Key", &key)
                    .header("X-Conifer-Index", "busy")
                    .json(&json!({"vectors": vectors}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(resp.status().as_u16(), 200);
                let lsn: u64 = resp.headers()["x-pinecone-request-lsn"]
                    .to_str()
                    .unwrap()
                    .parse()
                    .unwrap();
                acked.push((lsn, batch));
            }
            acked
        }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (status, created) = call(
        &c,
        2,
        Method::POST,
        "/indexes/busy/backups",
        Some(json!({})),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let id = created["backup_id"].as_str().unwrap().to_string();
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut history = Vec::new();
    for w in writers {
        history.extend(w.await.unwrap());
    }
    let ready = wait_for(&c, 1, &format!("/backups/{id}"), 60, |b| {
        b["status"] == "Ready"
    })
    .await;
    let position = ready["log_position"].as_u64().unwrap();
    history.sort_by_key(|(lsn, _)| *lsn);
    assert!(
        history.first().unwrap().0 < position && position < history.last().unwrap().0,
        "the backup was taken while the writes went on: position {position}, writes {}..{}",
        history.first().unwrap().0,
        history.last().unwrap().0
    );
    // The state after exactly the batches up to the backup's log position.
    let mut expected: BTreeMap<String, f32> = BTreeMap::new();
    for (_, batch) in history.iter().filter(|(lsn, _)| *lsn <= position) {
        for (id, first) in batch {
            expected.insert(id.clone(), *first);
        }
    }
    let (status, started) = call(
        &c,
        3,
        Method::POST,
        &format!("/backups/{id}/create-index"),
        Some(json!({"name": "snapshot"})),
    )
    .await;
    assert_eq!(status, 202, "{started}");
    let job = started["restore_job_id"].as_str().unwrap();
    let done = wait_for(&c, 1, &format!("/restore-jobs/{job}"), 60, |j| {
        j["status"] != "Pending"
    })
    .await;
    assert_eq!(done["status"], "Completed", "{done}");
    let restored = records(&c, 1, "snapshot", "").await;
    assert_eq!(
        restored.len(),
        expected.len(),
        "record count at position {position}"
    );
    assert_eq!(ready["record_count"], expected.len() as u64);
    for (id, first) in &expected {
        let (values, _) = restored
            .get(id)
            .unwrap_or_else(|| panic!("{id} missing at position {position}"));
        // Cosine indexes keep the values as sent: the first one names the batch.
        assert_eq!(
            values[0], *first,
            "{id} holds another batch's write than position {position}'s"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restore_whose_node_is_killed_resumes_elsewhere_and_is_never_queryable_half_done() {
    let mut c = Cluster::start_with(ClusterOptions {
        nodes: 3,
        args: ["--backup-chunk-bytes", "65536"].map(String::from).to_vec(),
        // Each restored chunk takes a second more: time to stop the runner mid-job.
        env: vec![(
            "FAILPOINTS".into(),
            "conifer::restore::after_chunk=return(1000)".into(),
        )],
        ..ClusterOptions::default()
    })
    .await
    .unwrap();
    let dim = 32;
    c.create_index(1, &c.api_key(), "src", dim as u32, "cosine")
        .await
        .unwrap();
    let rows: Vec<_> = (0..3_000)
        .map(|i| (format!("r{i}"), vector(i, 3, dim), json!({"i": i})))
        .collect();
    upsert(&c, "src", "", &rows).await;
    let backup = backup(&c, "src").await;
    let id = backup["backup_id"].as_str().unwrap();
    let (status, started) = call(
        &c,
        1,
        Method::POST,
        &format!("/backups/{id}/create-index"),
        Some(json!({"name": "dst"})),
    )
    .await;
    assert_eq!(status, 202, "{started}");
    let job_path = format!(
        "/restore-jobs/{}",
        started["restore_job_id"].as_str().unwrap()
    );
    let running = wait_for(&c, 1, &job_path, 60, |j| {
        j["percent_complete"].as_f64().unwrap_or(0.0) > 0.0 && j["runner_node"].is_u64()
    })
    .await;
    let victim = running["runner_node"].as_u64().unwrap();
    assert!(
        running["percent_complete"].as_f64().unwrap() < 100.0,
        "{running}"
    );
    c.node(victim).kill();
    let survivor = (1..=3).find(|n| *n != victim).unwrap();

    // Until the job completes, the new index refuses every data-plane call on every node
    // that is up; then it serves every record.
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut refused = 0;
    let finished = loop {
        // A node may briefly refuse while the control plane elects a new leader.
        let (status, job) = call(&c, survivor, Method::GET, &job_path, None).await;
        if status == 200 && job["status"] != "Pending" {
            break job;
        }
        for via in (1..=3).filter(|n| *n != victim) {
            let resp = c
                .data(via, &c.api_key(), "dst", Method::POST, "/query")
                .json(&json!({"vector": vector(1, 3, dim), "topK": 3}))
                .send()
                .await
                .unwrap();
            let status = resp.status().as_u16();
            let (job_status, again) = call(&c, survivor, Method::GET, &job_path, None).await;
            if job_status == 200 && again["status"] == "Pending" {
                assert_eq!(
                    status, 503,
                    "the half-restored index answered a query: {again}"
                );
                refused += 1;
            }
        }
        assert!(Instant::now() < deadline, "restore did not end: {job}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert!(refused > 0);
    println!("runner node {victim} killed at {running}; the job ended as {finished}");
    match finished["status"].as_str() {
        // Completed with its first runner dead: another node resumed it.
        Some("Completed") => {
            let (_, stats) = {
                let resp = c
                    .data(
                        survivor,
                        &c.api_key(),
                        "dst",
                        Method::GET,
                        "/describe_index_stats",
                    )
                    .send()
                    .await
                    .unwrap();
                (resp.status(), resp.json::<Value>().await.unwrap())
            };
            assert_eq!(stats["totalVectorCount"], 3_000, "{stats}");
        }
        // Failing cleanly is allowed: then the half index is gone.
        _ => {
            let (status, _) = call(&c, survivor, Method::GET, "/indexes/dst", None).await;
            assert_eq!(status, 404, "a failed restore left its index: {finished}");
        }
    }

    // The new index deleted mid-restore: the job fails, naming that, and the backup can be
    // deleted afterwards. The killed node first comes back: a new index's shard group is
    // initialized by its lowest replica's node, which may be the dead one.
    c.node(victim).spawn().unwrap();
    c.wait_serving(victim).await.unwrap();
    let (status, started) = call(
        &c,
        survivor,
        Method::POST,
        &format!("/backups/{id}/create-index"),
        Some(json!({"name": "doomed"})),
    )
    .await;
    assert_eq!(status, 202, "{started}");
    let doomed = format!(
        "/restore-jobs/{}",
        started["restore_job_id"].as_str().unwrap()
    );
    wait_for(&c, survivor, &doomed, 60, |j| {
        j["percent_complete"].as_f64().unwrap_or(0.0) > 0.0
    })
    .await;
    let (status, _) = call(&c, survivor, Method::DELETE, "/indexes/doomed", None).await;
    assert_eq!(status, 202);
    let ended = wait_for(&c, survivor, &doomed, 60, |j| j["status"] != "Pending").await;
    assert_eq!(ended["status"], "Failed", "{ended}");
    assert!(
        ended["error"]
            .as_str()
            .unwrap_or_default()
            .contains("deleted"),
        "{ended}"
    );
    let (status, body) = call(
        &c,
        survivor,
        Method::DELETE,
        &format!("/backups/{id}"),
        None,
    )
    .await;
    assert_eq!(status, 202, "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cmek_projects_backups_in_s3_restore_and_are_refused_once_its_key_is_denied_or_it_is_deleted(
) {
    use conifer_tests::kms::Moto;
    let moto = Moto::start(true).unwrap();
    let arn = moto.create_key().unwrap();
    let bucket = "conifer-backups";
    moto.run(&["create-bucket", bucket]).unwrap();
    let c = Cluster::start_with(ClusterOptions {
        nodes: 3,
        env: moto.node.env(),
        args: vec![
            "--kms-endpoint".into(),
            moto.endpoint.clone(),
            "--backup-s3-bucket".into(),
            bucket.into(),
            "--backup-s3-endpoint".into(),
            moto.endpoint.clone(),
            "--backup-s3-prefix".into(),
            "cluster-a".into(),
            "--backup-chunk-bytes".into(),
            "65536".into(),
        ],
        ..ClusterOptions::default()
    })
    .await
    .unwrap();
    let (status, project) = c
        .operator_call(
            Method::POST,
            "/admin/projects",
            Some(json!({"name": "cmek", "cmek_key_arn": arn})),
        )
        .await;
    assert_eq!(status.as_u16(), 201, "{project}");
    let project_id = project["id"].as_str().unwrap().to_string();
    let key = c.key_in(&project_id, &["ProjectEditor"]).await.unwrap();
    let dim = 16;
    c.create_index(1, &key, "secret", dim as u32, "cosine")
        .await
        .unwrap();
    let marker = "S3-PLAINTEXT-MARKER";
    let rows: Vec<_> = (0..1_500)
        .map(|i| {
            (
                format!("doc-{i}"),
                vector(i, 5, dim),
                json!({"note": format!("{marker} {i}")}),
            )
        })
        .collect();
    upsert_as(&c, &key, "secret", "", &rows).await;
    let backup = backup_as(&c, &key, "secret").await;
    let id = backup["backup_id"].as_str().unwrap().to_string();
    assert_eq!(backup["record_count"], 1_500, "{backup}");

    // In the bucket under the prefix, sealed: no record's text in any object.
    // Under the prefix, in the cluster's folder: cluster-a/<cluster>/<project>/<backup>/….
    let objects = moto
        .run(&["objects", bucket, "cluster-a/", marker])
        .unwrap();
    let ours = format!("/{project_id}/{id}/");
    let keys: Vec<&str> = objects["keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .filter(|k| k.contains(&ours))
        .collect();
    assert!(keys.len() >= 3, "{objects}");
    assert!(
        objects["containing"].as_array().unwrap().is_empty(),
        "{objects}"
    );

    // Restored from S3 into another configuration, equal record for record.
    let (status, started) = call_as(
        &c,
        &key,
        2,
        Method::POST,
        &format!("/backups/{id}/create-index"),
        Some(json!({"name": "restored", "replicas": 1, "hnsw": {"m": 8}})),
    )
    .await;
    assert_eq!(status, 202, "{started}");
    let job = format!(
        "/restore-jobs/{}",
        started["restore_job_id"].as_str().unwrap()
    );
    let done = wait_for_as(&c, &key, 1, &job, 120, |j| j["status"] != "Pending").await;
    assert_eq!(done["status"], "Completed", "{done}");
    let dst_group = group_of(&started, "index_id");
    let src_group = group_of(&backup, "source_index_id");
    let holder = holders(&c, dst_group).await;
    assert_eq!(holder.len(), 1);
    assert_eq!(
        digests(&c, 1, src_group).await,
        digests(&c, holder[0], dst_group).await
    );

    // The project's KMS key denied: the backup cannot be opened, nothing is created.
    moto.deny().unwrap();
    let (status, refused) = call_as(
        &c,
        &key,
        1,
        Method::POST,
        &format!("/backups/{id}/create-index"),
        Some(json!({"name": "never"})),
    )
    .await;
    assert_eq!(status, 412, "{refused}");
    assert!(
        refused["error"]["message"].as_str().unwrap().contains(&arn),
        "the refusal names the key: {refused}"
    );
    let (_, listed) = call_as(&c, &key, 1, Method::GET, "/indexes", None).await;
    assert_eq!(listed["indexes"].as_array().unwrap().len(), 2, "{listed}");
    moto.allow().unwrap();

    // Deleting the project deletes its backups: gone from the control plane and the bucket.
    for index in ["secret", "restored"] {
        let path = format!("/indexes/{index}");
        let (status, body) = call_as(&c, &key, 1, Method::DELETE, &path, None).await;
        assert_eq!(status, 202, "{body}");
    }
    let (status, body) = c
        .operator_call(
            Method::DELETE,
            &format!("/admin/projects/{project_id}"),
            None,
        )
        .await;
    assert_eq!(status.as_u16(), 202, "{body}");
    let objects = moto.run(&["objects", bucket, "cluster-a/"]).unwrap();
    assert!(
        !objects["keys"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .any(|k| k.contains(&project_id)),
        "{objects}"
    );
}
