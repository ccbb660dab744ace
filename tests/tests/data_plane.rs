//! The data plane on real clusters: writes through one node are readable through every
//! node, losing the shard leader mid-upsert loses no acknowledged record, and bad requests
//! get the status a Pinecone client expects without writing anything.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use conifer_tests::{grpc_request, Cluster};
use reqwest::Method;
use serde_json::{json, Value};

/// The spans of a `server-timing` value (`name;dur=<ms>, …`) by name; every span is a
/// finite, non-negative duration no longer than `total`, which is always there.
fn server_timing(value: &str) -> HashMap<String, f64> {
    let spans: HashMap<String, f64> = value
        .split(", ")
        .map(|part| {
            let (name, dur) = part.split_once(";dur=").expect(value);
            (name.to_string(), dur.parse::<f64>().expect(value))
        })
        .collect();
    let total = spans["total"];
    assert!(
        spans
            .values()
            .all(|d| d.is_finite() && (0.0..=total).contains(d)),
        "{value}"
    );
    spans
}

fn vector(i: usize, dim: usize) -> Vec<f32> {
    // Distinct, well-separated directions: vector i is closest to itself.
    (0..dim)
        .map(|d| (((i * 31 + d * 17) % 97) as f32 / 97.0) + if d == i % dim { 5.0 } else { 0.0 })
        .collect()
}

async fn upsert(
    cluster: &Cluster,
    via: u64,
    key: &str,
    index: &str,
    ids: &[usize],
    dim: usize,
) -> reqwest::Response {
    let vectors: Vec<Value> = ids
        .iter()
        .map(|&i| json!({"id": format!("v{i}"), "values": vector(i, dim), "metadata": {"n": i, "parity": if i % 2 == 0 {"even"} else {"odd"}}}))
        .collect();
    cluster
        .data(via, key, index, Method::POST, "/vectors/upsert")
        .json(&json!({"vectors": vectors, "namespace": "ns"}))
        .send()
        .await
        .expect("upsert request")
}

/// Status of a query on index `guarded` through node 1 with `key`.
async fn query_status(cluster: &Cluster, key: &str, query: &Value) -> u16 {
    let resp = cluster
        .data(1, key, "guarded", Method::POST, "/query")
        .json(query)
        .send()
        .await;
    resp.expect("query request").status().as_u16()
}

async fn stats(cluster: &Cluster, via: u64, key: &str, index: &str) -> Value {
    cluster
        .data(via, key, index, Method::POST, "/describe_index_stats")
        .json(&json!({}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn writes_through_one_node_are_read_through_every_node() {
    let cluster = Cluster::start(3).await.unwrap();
    let key = cluster.api_key();
    let desc = cluster
        .create_index(1, &key, "docs", 16, "cosine")
        .await
        .unwrap();
    assert_eq!(desc["dimension"], 16);
    assert!(
        desc["host"].as_str().unwrap().starts_with("docs-"),
        "{desc}"
    );

    let resp = upsert(&cluster, 2, &key, "docs", &(0..100).collect::<Vec<_>>(), 16).await;
    assert_eq!(resp.status().as_u16(), 200);
    let lsn = resp.headers()["x-pinecone-request-lsn"]
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(resp.json::<Value>().await.unwrap()["upsertedCount"], 100);

    for via in 1..=3 {
        // Read-your-writes: wait on this replica for the upsert's sequence number.
        let resp = cluster
            .data(via, &key, "docs", Method::POST, "/query")
            .header("x-conifer-min-lsn", &lsn)
            .json(&json!({"vector": vector(42, 16), "topK": 3, "namespace": "ns", "includeMetadata": true,
                          "filter": {"parity": "even"}}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200);
        // The in-node split of the query: every replica holds the shard, so it answers.
        let spans = server_timing(resp.headers()["server-timing"].to_str().unwrap());
        for span in [
            "receive", "route", "filter", "search", "lookup", "assemble", "encode",
        ] {
            assert!(spans.contains_key(span), "node {via}: {span} in {spans:?}");
        }
        let body: Value = resp.json().await.unwrap();
        let matches = body["matches"].as_array().unwrap();
        assert_eq!(matches[0]["id"], "v42", "node {via}: {body}");
        assert!(
            matches.iter().all(|m| m["metadata"]["parity"] == "even"),
            "filter honoured on node {via}: {body}"
        );
        assert_eq!(
            stats(&cluster, via, &key, "docs").await["namespaces"]["ns"]["vectorCount"],
            100
        );
    }

    // gRPC answers the same split in its response metadata (no `encode`: tonic encodes the
    // body after the headers).
    let mut grpc = cluster.grpc_data(2).await.unwrap();
    let request = conifer_proto::pinecone::QueryRequest {
        vector: vector(42, 16),
        top_k: 3,
        namespace: "ns".into(),
        ..Default::default()
    };
    let answer = grpc
        .query(grpc_request(request, &key, "docs"))
        .await
        .unwrap();
    let spans = server_timing(
        answer
            .metadata()
            .get("server-timing")
            .unwrap()
            .to_str()
            .unwrap(),
    );
    assert!(
        spans.contains_key("receive")
            && spans.contains_key("route")
            && spans.contains_key("search")
            && !spans.contains_key("filter")
            && !spans.contains_key("encode"),
        "{spans:?}"
    );
    assert_eq!(answer.into_inner().matches[0].id, "v42");

    let resp = cluster
        .data(3, &key, "docs", Method::POST, "/vectors/delete")
        .json(&json!({"ids": ["v1", "v2"], "namespace": "ns"}))
        .send()
        .await
        .unwrap();
    let lsn = resp.headers()["x-pinecone-request-lsn"]
        .to_str()
        .unwrap()
        .to_string();
    let fetched: Value = cluster
        .data(
            1,
            &key,
            "docs",
            Method::GET,
            "/vectors/fetch?ids=v1&ids=v3&namespace=ns",
        )
        .header("x-conifer-min-lsn", &lsn)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: Vec<&String> = fetched["vectors"].as_object().unwrap().keys().collect();
    assert_eq!(ids, vec!["v3"], "{fetched}");

    let resp = cluster
        .http
        .delete(cluster.url(2, "/indexes/docs"))
        .header("Api-Key", &key)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 202);
    // Control-plane reads are served by each node's replica: node 3 sees the delete once it
    // has applied it, within moments.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let resp = cluster
            .http
            .get(cluster.url(3, "/indexes/docs"))
            .header("Api-Key", &key)
            .send()
            .await
            .unwrap();
        if resp.status().as_u16() == 404 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node 3 still describes the deleted index"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until namespace `ns` of `index` holds `expected` records as seen through node `via`,
/// failing with `what` once `deadline` passes.
async fn wait_for_count(
    cluster: &Cluster,
    via: u64,
    key: &str,
    index: &str,
    expected: u64,
    deadline: Instant,
    what: &str,
) {
    loop {
        let count =
            stats(cluster, via, key, index).await["namespaces"]["ns"]["vectorCount"].as_u64();
        if count == Some(expected) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: node {via} holds {count:?} of {expected} records"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn shard_leader(info: &Value) -> Option<u64> {
    info["shards"].as_array()?.first()?["leader_id"].as_u64()
}

#[tokio::test(flavor = "multi_thread")]
async fn killing_the_shard_leader_mid_upsert_loses_no_acknowledged_record() {
    let mut cluster = Cluster::start(3).await.unwrap();
    let key = cluster.api_key();
    cluster
        .create_index(1, &key, "durable", 8, "euclidean")
        .await
        .unwrap();
    let leader = shard_leader(&cluster.cluster_info(1).await.unwrap()).expect("shard leader");
    let survivor = (1..=3).find(|&n| n != leader).unwrap();

    let mut acknowledged = BTreeSet::new();
    let mut batch = 0usize;
    let mut killed = false;
    let deadline = Instant::now() + Duration::from_secs(60);
    while batch < 40 && Instant::now() < deadline {
        if batch == 10 && !killed {
            cluster.node(leader).kill();
            killed = true;
        }
        let ids: Vec<usize> = (batch * 25..batch * 25 + 25).collect();
        let resp = upsert(&cluster, survivor, &key, "durable", &ids, 8).await;
        if resp.status().as_u16() == 200 {
            acknowledged.extend(ids);
            batch += 1;
        } else {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    assert!(
        killed && batch == 40,
        "upserts continue after the shard leader dies ({batch} batches)"
    );

    cluster.node(leader).spawn().unwrap();
    cluster.wait_serving(leader).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    for via in 1..=3 {
        let expected = acknowledged.len() as u64;
        wait_for_count(
            &cluster,
            via,
            &key,
            "durable",
            expected,
            deadline,
            "after the kill",
        )
        .await;
        for chunk in acknowledged.iter().collect::<Vec<_>>().chunks(200) {
            let query: String = chunk.iter().map(|i| format!("ids=v{i}&")).collect();
            let fetched: Value = cluster
                .data(
                    via,
                    &key,
                    "durable",
                    Method::GET,
                    &format!("/vectors/fetch?{query}namespace=ns"),
                )
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            assert_eq!(
                fetched["vectors"].as_object().unwrap().len(),
                chunk.len(),
                "node {via} lost records"
            );
        }
    }
}

/// The shard's Raft indexes on node `via`: (last applied, purged).
async fn shard_indexes(cluster: &Cluster, via: u64) -> (u64, u64) {
    let info = cluster.cluster_info(via).await.unwrap();
    let shard = &info["shards"][0];
    (
        shard["last_applied_index"].as_u64().unwrap_or(0),
        shard["purged_index"].as_u64().unwrap_or(0),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lagging_shard_replica_catches_up_from_a_snapshot_exported_from_rocksdb() {
    let mut cluster = Cluster::start(3).await.unwrap();
    let key = cluster.api_key();
    cluster
        .create_index(1, &key, "lagging", 8, "euclidean")
        .await
        .unwrap();
    let leader = shard_leader(&cluster.cluster_info(1).await.unwrap()).expect("shard leader");
    let lagger = (1..=3).rev().find(|&n| n != leader).unwrap();
    let via = (1..=3).find(|&n| n != lagger).unwrap();
    assert_eq!(
        upsert(
            &cluster,
            via,
            &key,
            "lagging",
            &(0..50).collect::<Vec<_>>(),
            8
        )
        .await
        .status(),
        200
    );
    let (lagger_applied, _) = shard_indexes(&cluster, lagger).await;
    cluster.node(lagger).kill();

    // One Raft entry per request: enough entries for the leader to snapshot and purge its
    // log past everything the stopped replica has.
    for i in 50..1_300 {
        let resp = upsert(&cluster, via, &key, "lagging", &[i], 8).await;
        assert_eq!(resp.status(), 200, "upsert {i}");
    }
    let deleted: Vec<String> = (0..10).map(|i| format!("v{i}")).collect();
    let resp = cluster
        .data(via, &key, "lagging", Method::POST, "/vectors/delete")
        .json(&json!({"ids": deleted, "namespace": "ns"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, purged) = shard_indexes(&cluster, leader).await;
        if purged > lagger_applied {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "leader never purged past {lagger_applied}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    cluster.node(lagger).spawn().unwrap();
    cluster.wait_serving(lagger).await.unwrap();
    let expected = 1_300 - deleted.len() as u64;
    let deadline = Instant::now() + Duration::from_secs(60);
    wait_for_count(
        &cluster,
        lagger,
        &key,
        "lagging",
        expected,
        deadline,
        "restarted replica",
    )
    .await;
    let fetched: Value = cluster
        .data(
            lagger,
            &key,
            "lagging",
            Method::GET,
            "/vectors/fetch?ids=v5&ids=v60&ids=v1299&namespace=ns",
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let vectors = fetched["vectors"].as_object().unwrap();
    assert!(
        !vectors.contains_key("v5"),
        "a record deleted while the replica was down"
    );
    assert_eq!(vectors["v60"]["metadata"]["n"].as_f64(), Some(60.0));
    let values: Vec<f32> = serde_json::from_value(vectors["v1299"]["values"].clone()).unwrap();
    assert_eq!(values, vector(1299, 8));
    let query: Value = cluster
        .data(lagger, &key, "lagging", Method::POST, "/query")
        .json(&json!({"vector": vector(777, 8), "topK": 1, "namespace": "ns"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(query["matches"][0]["id"], "v777");

    // Restarted again, it reads the installed state back from its own RocksDB.
    cluster.node(lagger).kill();
    cluster.node(lagger).spawn().unwrap();
    cluster.wait_serving(lagger).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    wait_for_count(
        &cluster,
        lagger,
        &key,
        "lagging",
        expected,
        deadline,
        "second restart",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn data_plane_refuses_wrong_project_wrong_role_and_bad_input_without_writing() {
    let cluster = Cluster::start(1).await.unwrap();
    let key = cluster.api_key();
    let project = cluster.bootstrap["project_id"]
        .as_str()
        .unwrap()
        .to_string();
    cluster
        .create_index(1, &key, "guarded", 4, "dotproduct")
        .await
        .unwrap();
    upsert(&cluster, 1, &key, "guarded", &[1, 2, 3], 4).await;
    let before = stats(&cluster, 1, &key, "guarded").await;

    let status = |r: reqwest::Response| r.status().as_u16();
    let q = json!({"vector": [1.0, 0.0, 0.0, 0.0], "topK": 1, "namespace": "ns"});
    // Credentials and roles.
    let (_, other) = cluster
        .project_with_key("other", &["ProjectEditor"])
        .await
        .unwrap();
    assert_eq!(query_status(&cluster, &other, &q).await, 404);
    let other_desc = cluster
        .http
        .get(cluster.url(1, "/indexes/guarded"))
        .header("Api-Key", &other)
        .send()
        .await
        .unwrap();
    assert_eq!(
        status(other_desc),
        404,
        "another project's key cannot see the index"
    );
    assert_eq!(query_status(&cluster, "pcsk_bogus", &q).await, 401);
    let no_key = cluster
        .http
        .post(cluster.url(1, "/query"))
        .header("X-Conifer-Index", "guarded")
        .json(&q)
        .send()
        .await
        .unwrap();
    assert_eq!(status(no_key), 401);
    let viewer = cluster
        .key_in(&project, &["DataPlaneViewer"])
        .await
        .unwrap();
    assert_eq!(query_status(&cluster, &viewer, &q).await, 200);
    assert_eq!(
        status(upsert(&cluster, 1, &viewer, "guarded", &[9], 4).await),
        403
    );
    let control_only = cluster
        .key_in(&project, &["ControlPlaneViewer"])
        .await
        .unwrap();
    assert_eq!(query_status(&cluster, &control_only, &q).await, 403);
    let create = json!({"name": "x", "dimension": 4, "spec": {"serverless": {}}});
    let denied = cluster
        .http
        .post(cluster.url(1, "/indexes"))
        .header("Api-Key", &viewer)
        .json(&create)
        .send()
        .await
        .unwrap();
    assert_eq!(status(denied), 403);

    // Limits: at the limit accepted, one past rejected with a message naming it.
    let upsert_raw = |body: Value| {
        cluster
            .data(1, &key, "guarded", Method::POST, "/vectors/upsert")
            .json(&body)
            .send()
    };
    let many: Vec<Value> = (0..1001)
        .map(|i| json!({"id": format!("m{i}"), "values": [1.0, 0.0, 0.0, 0.0]}))
        .collect();
    let resp = upsert_raw(json!({"vectors": many, "namespace": "ns"}))
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    assert!(resp.text().await.unwrap().contains("1000"));
    let long_id = "i".repeat(513);
    for bad in [
        json!({"vectors": [{"id": long_id, "values": [1.0, 0.0, 0.0, 0.0]}]}),
        json!({"vectors": [{"id": "ok", "values": [1.0, 0.0, 0.0, 0.0]}, {"id": "short", "values": [1.0]}]}),
        json!({"vectors": [{"id": "meta", "values": [1.0, 0.0, 0.0, 0.0], "metadata": {"big": "x".repeat(41 * 1024)}}]}),
        json!({"vectors": [{"id": "nested", "values": [1.0, 0.0, 0.0, 0.0], "metadata": {"o": {"p": 1}}}]}),
        json!({"vectors": []}),
        json!({"vectors": [{"id": "", "values": [1.0, 0.0, 0.0, 0.0]}]}),
    ] {
        let resp = upsert_raw(bad.clone()).await.unwrap();
        assert_eq!(resp.status().as_u16(), 400, "{bad}");
    }
    assert_eq!(status(upsert_raw(json!({"vectors": [{"id": "i".repeat(512), "values": [1.0, 0.0, 0.0, 0.0]}], "namespace": "edge"})).await.unwrap()), 200);
    let query_raw = |body: Value| {
        cluster
            .data(1, &key, "guarded", Method::POST, "/query")
            .json(&body)
            .send()
    };
    for bad in [
        json!({"vector": [1.0, 0.0, 0.0, 0.0], "topK": 10001}),
        json!({"vector": [1.0, 0.0, 0.0, 0.0], "topK": 0}),
        json!({"vector": [1.0, 0.0], "topK": 1}),
        json!({"vector": [1.0, 0.0, 0.0, 0.0], "topK": 1, "filter": {"a": {"$regex": "x"}}}),
        json!({"topK": 1}),
    ] {
        assert_eq!(status(query_raw(bad.clone()).await.unwrap()), 400, "{bad}");
    }
    assert_eq!(
        status(
            query_raw(json!({"vector": [1.0, 0.0, 0.0, 0.0], "topK": 10000}))
                .await
                .unwrap()
        ),
        200
    );
    let ids: String = (0..1001).map(|i| format!("ids=x{i}&")).collect();
    assert_eq!(
        status(
            cluster
                .data(
                    1,
                    &key,
                    "guarded",
                    Method::GET,
                    &format!("/vectors/fetch?{ids}")
                )
                .send()
                .await
                .unwrap()
        ),
        400
    );
    let after = stats(&cluster, 1, &key, "guarded").await;
    assert_eq!(
        after["namespaces"]["ns"], before["namespaces"]["ns"],
        "no rejected upsert wrote anything"
    );

    // Index control plane: 400 for a value out of its range, 422 (Pinecone's control-plane
    // spec) for a body of the wrong shape, such as a missing required field.
    for (bad, expected) in [
        (
            json!({"name": "Bad_Name", "dimension": 4, "spec": {"serverless": {}}}),
            400,
        ),
        (
            json!({"name": "n".repeat(46), "dimension": 4, "spec": {"serverless": {}}}),
            400,
        ),
        (
            json!({"name": "okname", "dimension": 20001, "spec": {"serverless": {}}}),
            400,
        ),
        (
            json!({"name": "okname", "dimension": 4, "metric": "hamming", "spec": {"serverless": {}}}),
            400,
        ),
        (json!({"name": "okname", "dimension": 4, "spec": {}}), 400),
        (
            json!({"name": "okname", "dimension": 4, "spec": {"serverless": {"cloud": "aws"}}}),
            422,
        ),
    ] {
        let resp = cluster
            .http
            .post(cluster.url(1, "/indexes"))
            .header("Api-Key", &key)
            .json(&bad)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), expected, "{bad}");
    }
    // The 2026-07 shapes (SDK 10.x): one dense_vector field and a deployment.
    let v2026 = |body: Value| {
        cluster
            .http
            .post(cluster.url(1, "/indexes"))
            .header("Api-Key", &key)
            .header("X-Pinecone-Api-Version", "2026-07")
            .json(&body)
            .send()
    };
    let deployment = json!({"deployment_type": "managed", "cloud": "aws", "region": "us-east-1"});
    for (bad, expected) in [
        (
            json!({"name": "s1", "schema": {"fields": {"a": {"type": "sparse_vector"}}}, "deployment": deployment}),
            400,
        ),
        (
            json!({"name": "s1", "schema": {"fields": {"a": {"type": "dense_vector", "dimension": 4},
                                                   "b": {"type": "dense_vector", "dimension": 4}}}, "deployment": deployment}),
            400,
        ),
        (
            json!({"name": "s1", "schema": {"fields": {"_values": {"type": "dense_vector", "dimension": 4}}}}),
            422,
        ),
        (
            json!({"name": "s1", "schema": {"fields": {"_values": {"type": "dense_vector", "dimension": 4}}},
               "deployment": {"deployment_type": "moon"}}),
            400,
        ),
    ] {
        assert_eq!(
            v2026(bad.clone()).await.unwrap().status().as_u16(),
            expected,
            "{bad}"
        );
    }
    let good = json!({"name": "s1", "schema": {"fields": {"_values": {"type": "dense_vector", "dimension": 4, "metric": "dotproduct"}}},
                      "deployment": deployment});
    let resp = v2026(good).await.unwrap();
    assert_eq!(resp.status().as_u16(), 201);
    let created: Value = resp.json().await.unwrap();
    assert_eq!(created["schema"]["fields"]["_values"]["dimension"], 4);
    assert_eq!(created["deployment"]["deployment_type"], "managed");
    let legacy: Value = cluster
        .http
        .get(cluster.url(1, "/indexes/s1"))
        .header("Api-Key", &key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (legacy["dimension"].clone(), legacy["metric"].clone()),
        (json!(4), json!("dotproduct")),
        "{legacy}"
    );
    assert_eq!(legacy["spec"]["serverless"]["region"], "us-east-1");

    let dup = json!({"name": "guarded", "dimension": 4, "spec": {"serverless": {"cloud": "aws", "region": "r"}}});
    let resp = cluster
        .http
        .post(cluster.url(1, "/indexes"))
        .header("Api-Key", &key)
        .json(&dup)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 409);
    let protect = json!({"deletion_protection": "enabled", "tags": {"team": "search"}});
    let resp = cluster
        .http
        .patch(cluster.url(1, "/indexes/guarded"))
        .header("Api-Key", &key)
        .json(&protect)
        .send()
        .await
        .unwrap();
    let desc: Value = resp.json().await.unwrap();
    assert_eq!(
        (
            desc["deletion_protection"].clone(),
            desc["tags"]["team"].clone()
        ),
        (json!("enabled"), json!("search"))
    );
    let resp = cluster
        .http
        .delete(cluster.url(1, "/indexes/guarded"))
        .header("Api-Key", &key)
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status().as_u16(),
        403,
        "deletion protection refuses the delete"
    );
    let unprotect = json!({"deletion_protection": "disabled"});
    cluster
        .http
        .patch(cluster.url(1, "/indexes/guarded"))
        .header("Api-Key", &key)
        .json(&unprotect)
        .send()
        .await
        .unwrap();
    let resp = cluster
        .http
        .delete(cluster.url(1, "/indexes/guarded"))
        .header("Api-Key", &key)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 202);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_without_a_replica_forwards_data_plane_calls() {
    let mut cluster = Cluster::start(3).await.unwrap();
    let key = cluster.api_key();
    cluster
        .create_index(1, &key, "placed", 8, "cosine")
        .await
        .unwrap();
    let fourth = cluster.add_node(false).await.unwrap();
    let info = cluster.cluster_info(fourth).await.unwrap();
    assert_eq!(
        info["shards"].as_array().unwrap().len(),
        0,
        "node {fourth} holds no replica: {info}"
    );

    let resp = upsert(
        &cluster,
        fourth,
        &key,
        "placed",
        &(0..50).collect::<Vec<_>>(),
        8,
    )
    .await;
    assert_eq!(resp.status().as_u16(), 200);
    let lsn = resp.headers()["x-pinecone-request-lsn"]
        .to_str()
        .unwrap()
        .to_string();
    let resp = cluster
        .data(fourth, &key, "placed", Method::POST, "/query")
        .header("x-conifer-min-lsn", &lsn)
        .json(&json!({"vector": vector(7, 8), "topK": 1, "namespace": "ns"}))
        .send()
        .await
        .unwrap();
    // The split names the forwarded call; the search ran on another node.
    let spans = server_timing(resp.headers()["server-timing"].to_str().unwrap());
    assert!(
        spans.contains_key("forward") && !spans.contains_key("search"),
        "{spans:?}"
    );
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["matches"][0]["id"], "v7", "{body}");
    assert_eq!(
        stats(&cluster, fourth, &key, "placed").await["namespaces"]["ns"]["vectorCount"],
        50
    );
    // Errors from the replica come back with their status.
    let bad = cluster
        .data(fourth, &key, "placed", Method::POST, "/query")
        .json(&json!({"vector": [1.0], "topK": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status().as_u16(), 400);
    let text = bad.text().await.unwrap();
    assert!(
        text.contains("Query vector dimension 1 does not match the dimension of the index 8"),
        "{text}"
    );
}
