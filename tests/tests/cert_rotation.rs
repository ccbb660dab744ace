//! Certificate rotation without a restart (issue 18 item 3), on a running 3-node cluster
//! under a steady load of upserts and queries over REST and gRPC (new connections all the
//! time, so every handshake meets whatever certificates are in place): the cluster CA is
//! rotated — the new CA added to every node's bundle, every node certificate replaced by
//! one of the new CA, the old CA retired — by replacing files and sending SIGHUP, with no
//! failed request; files that do not hold together are refused and the node keeps its
//! certificates; after the old CA is retired a node certificate of it is refused at the
//! cluster port; `/admin/cluster` and `conifer cluster status` show each certificate's
//! expiry and warn within the configured window.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use conifer_client::{grpc, Transport};
use conifer_node::tls::{self, LeafKind, Validity};
use conifer_proto::pinecone::{QueryRequest, UpsertRequest, Vector};
use conifer_tests::{Cluster, ClusterOptions};
use serde_json::{json, Value};

/// Writes `text` to `path` (mode 0600: keys must not be readable by every user) by
/// renaming a complete file into place.
fn replace(path: &Path, text: &[u8]) {
    use std::os::unix::fs::PermissionsExt;
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, text).unwrap();
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A REST client trusting every CA in `bundle` that opens a new connection per request.
fn fresh_client(bundle: &[u8]) -> reqwest::Client {
    let mut builder = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(20));
    for ca in reqwest::Certificate::from_pem_bundle(bundle).unwrap() {
        builder = builder.add_root_certificate(ca);
    }
    builder.build().unwrap()
}

/// `GET /admin/cluster` of node `via` as the operator.
async fn cluster_of(c: &Cluster, http: &reqwest::Client, via: u64) -> Value {
    http.get(c.url(via, "/admin/cluster"))
        .bearer_auth(c.admin_token())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Sends SIGHUP to node `id` and waits until it reports certificate set `generation`.
async fn reload(c: &Cluster, http: &reqwest::Client, id: u64, generation: u64) -> Value {
    c.nodes[id as usize - 1].signal("HUP").unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let info = cluster_of(c, http, id).await;
        if info["certificate_reload"]["generation"] == generation {
            assert!(
                info["certificate_reload"]["refused"].is_null(),
                "node {id}: {info}"
            );
            return info;
        }
        assert!(
            Instant::now() < deadline,
            "node {id} never reached certificate set {generation}: {}",
            info["certificate_reload"]
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The subjects and issuers of node `id`'s certificates of `role`.
fn roles(info: &Value, role: &str) -> Vec<(String, String)> {
    info["certificates"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["role"] == role)
        .map(|c| {
            (
                c["subject"].as_str().unwrap().to_string(),
                c["issuer"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_certificate_of_a_running_cluster_rotates_under_load_without_a_failed_request() {
    let c = Cluster::start_with(ClusterOptions {
        nodes: 3,
        ..ClusterOptions::default()
    })
    .await
    .unwrap();
    let key = c.api_key();
    c.create_index(1, &key, "docs", 3, "cosine").await.unwrap();
    let old_ca = std::fs::read(c.ca_dir.join(tls::CA_CERT)).unwrap();
    let new_ca_dir = c.dir.path().join("ca-2");
    tls::generate_ca(&new_ca_dir, "test, rotated").unwrap();
    let new_ca = std::fs::read(new_ca_dir.join(tls::CA_CERT)).unwrap();
    let both = [old_ca.as_slice(), new_ca.as_slice()].concat();
    // Clients trust both CAs through the rotation, as an operator's clients would be told to
    // before it starts.
    let http = fresh_client(&both);

    // The load: REST upserts and queries through every node in turn, and gRPC upserts and
    // queries on a new channel every few calls.
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let mut load = Vec::new();
    {
        let (http, stop, done, failures) =
            (http.clone(), stop.clone(), done.clone(), failures.clone());
        let urls: Vec<String> = (1..=3).map(|id| c.url(id, "")).collect();
        let key = key.clone();
        load.push(tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let base = &urls[i as usize % 3];
                let upsert = http
                    .post(format!("{base}/vectors/upsert"))
                    .header("Api-Key", &key)
                    .header("X-Conifer-Index", "docs")
                    .json(&json!({ "vectors": [{ "id": format!("r{i}"), "values": [1.0, i as f32, 0.0] }] }));
                let query = http
                    .post(format!("{base}/query"))
                    .header("Api-Key", &key)
                    .header("X-Conifer-Index", "docs")
                    .json(&json!({ "vector": [1.0, 0.0, 0.0], "topK": 3 }));
                for (what, request) in [("upsert", upsert), ("query", query)] {
                    match request.send().await {
                        Ok(r) if r.status().is_success() => {
                            done.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(r) => {
                            let status = r.status();
                            let body = r.text().await.unwrap_or_default();
                            failures
                                .lock()
                                .unwrap()
                                .push(format!("REST {what} via {base}: {status} {body}"));
                        }
                        Err(e) => failures
                            .lock()
                            .unwrap()
                            .push(format!("REST {what} via {base}: {e:?}")),
                    }
                }
                i += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }));
    }
    {
        let (stop, done, failures) = (stop.clone(), done.clone(), failures.clone());
        let urls: Vec<String> = (1..=3).map(|id| c.url(id, "")).collect();
        let transport = Transport {
            ca_pem: Some(both.clone()),
            ..Transport::default()
        };
        let key = key.clone();
        load.push(tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let url = &urls[i as usize % 3];
                let mut data = match grpc::connect(url, &transport, Some(&key), Some("docs")).await
                {
                    Ok(data) => data,
                    Err(e) => {
                        failures
                            .lock()
                            .unwrap()
                            .push(format!("gRPC connect {url}: {e}"));
                        i += 1;
                        continue;
                    }
                };
                for j in 0..3 {
                    let upsert = data
                        .upsert(UpsertRequest {
                            vectors: vec![Vector {
                                id: format!("g{i}-{j}"),
                                values: vec![0.0, 1.0, j as f32],
                                ..Vector::default()
                            }],
                            ..UpsertRequest::default()
                        })
                        .await;
                    let query = data
                        .query(QueryRequest {
                            top_k: 3,
                            vector: vec![0.0, 1.0, 0.0],
                            ..QueryRequest::default()
                        })
                        .await;
                    for (what, outcome) in [("upsert", upsert.err()), ("query", query.err())] {
                        match outcome {
                            None => {
                                done.fetch_add(1, Ordering::Relaxed);
                            }
                            Some(status) => failures
                                .lock()
                                .unwrap()
                                .push(format!("gRPC {what} via {url}: {status:?}")),
                        }
                    }
                }
                i += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Step 1: every node trusts the old and the new CA.
    for id in 1..=3u64 {
        replace(&c.nodes[id as usize - 1].tls_dir.join(tls::CA_CERT), &both);
        let info = reload(&c, &http, id, 2).await;
        assert_eq!(roles(&info, "cluster CA").len(), 2, "node {id}: {info}");
    }

    // Files that do not hold together are refused; the node keeps serving with its set.
    let node1_tls = c.nodes[0].tls_dir.clone();
    let good_key = std::fs::read(node1_tls.join(tls::NODE_KEY)).unwrap();
    let stranger = c.dir.path().join("stranger");
    tls::issue_leaf(
        &new_ca_dir,
        &stranger,
        "node",
        LeafKind::Node {
            id: 1,
            hosts: vec!["127.0.0.1".into()],
            domain: None,
        },
        Validity::days_from_now(30),
    )
    .unwrap();
    replace(
        &node1_tls.join(tls::NODE_KEY),
        &std::fs::read(stranger.join("node-key.pem")).unwrap(),
    );
    c.nodes[0].signal("HUP").unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    let refused = loop {
        let info = cluster_of(&c, &http, 1).await;
        if let Some(reason) = info["certificate_reload"]["refused"].as_str() {
            assert_eq!(info["certificate_reload"]["generation"], 2, "{info}");
            break reason.to_string();
        }
        assert!(
            Instant::now() < deadline,
            "a mismatched key was never refused: {info}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(refused.contains("key"), "{refused}");
    replace(&node1_tls.join(tls::NODE_KEY), &good_key);

    // Step 2: every node certificate is replaced by one of the new CA.
    for id in 1..=3u64 {
        let staged = c.dir.path().join(format!("staged-{id}"));
        tls::issue_leaf(
            &new_ca_dir,
            &staged,
            "node",
            LeafKind::Node {
                id,
                hosts: vec!["127.0.0.1".into()],
                domain: Some("svc.test.localhost".into()),
            },
            Validity::days_from_now(90),
        )
        .unwrap();
        let tls_dir = &c.nodes[id as usize - 1].tls_dir;
        // The key first, then the certificate: in between the node refuses the pair (it
        // may look just then) and keeps its own.
        replace(
            &tls_dir.join(tls::NODE_KEY),
            &std::fs::read(staged.join("node-key.pem")).unwrap(),
        );
        replace(
            &tls_dir.join(tls::NODE_CERT),
            &std::fs::read(staged.join("node.pem")).unwrap(),
        );
        let info = reload(&c, &http, id, 3).await;
        let node = roles(&info, "node");
        assert!(node[0].1.contains("rotated"), "node {id}: {node:?}");
    }

    // A peer still holding a certificate of the old CA: accepted while both are trusted,
    // its session cut when the old CA is retired.
    let old_node = c.dir.path().join("old-node");
    tls::issue_leaf(
        &c.ca_dir,
        &old_node,
        "node",
        LeafKind::Node {
            id: 1,
            hosts: vec!["127.0.0.1".into()],
            domain: None,
        },
        Validity::days_from_now(30),
    )
    .unwrap();
    let read = |name: &str| std::fs::read_to_string(old_node.join(name)).unwrap();
    let held = tls::NodeTls {
        ca_pem: String::from_utf8(both.clone()).unwrap(),
        cert_pem: read("node.pem"),
        key_pem: read("node-key.pem"),
        source_ip: None,
    }
    .cluster_channel(
        2,
        &conifer_raft::NodeInfo {
            cluster_addr: c.nodes[1].cluster_addr.clone(),
            api_addr: String::new(),
        },
    )
    .unwrap();
    assert_eq!(probe_raft(&held).await, tonic::Code::NotFound);

    // Step 3: the old CA is retired.
    for id in 1..=3u64 {
        replace(
            &c.nodes[id as usize - 1].tls_dir.join(tls::CA_CERT),
            &new_ca,
        );
        let info = reload(&c, &http, id, 4).await;
        assert_eq!(roles(&info, "cluster CA").len(), 1, "node {id}: {info}");
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await.unwrap();
    }
    let failures = failures.lock().unwrap().clone();
    let done = done.load(Ordering::Relaxed);
    println!(
        "{done} requests answered during the rotation, {} failed",
        failures.len()
    );
    assert!(failures.is_empty(), "failed requests: {failures:#?}");
    assert!(done > 100, "too little load: {done} requests");
    // The held channel's session was cut; it reconnects with the old certificate, refused.
    let code = probe_raft(&held).await;
    assert!(
        !matches!(code, tonic::Code::NotFound | tonic::Code::Ok),
        "a session of the retired CA stayed open: {code:?}"
    );

    // Every replica converged after the last step: peers replicate over connections made
    // with the new certificates alone.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut digests = std::collections::BTreeMap::new();
        for id in 1..=3u64 {
            let info: Value = http
                .get(c.url(id, "/admin/cluster?digest=true"))
                .bearer_auth(c.admin_token())
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            for shard in info["shards"].as_array().unwrap() {
                for ns in shard["namespaces"].as_array().unwrap() {
                    digests
                        .entry((shard["group_id"].to_string(), ns["name"].to_string()))
                        .or_insert_with(Vec::new)
                        .push(ns["digest"].clone());
                }
            }
        }
        let converged = !digests.is_empty()
            && digests
                .values()
                .all(|d| d.len() == 3 && d.iter().all(|x| *x == d[0]));
        if converged {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "replicas did not converge: {digests:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        c.nodes
            .iter()
            .any(|n| n.log().contains("certificates reloaded (SIGHUP)")),
        "no reload was made by SIGHUP"
    );

    // A client that trusts only the old CA no longer gets a session on the client port, and
    // a node certificate of the old CA gets none on the cluster port.
    let old_only = fresh_client(&old_ca);
    assert!(old_only.get(c.url(2, "/health")).send().await.is_err());
    assert!(
        !cluster_port_accepts(&c, 2, &old_node, &new_ca).await,
        "the cluster port accepted a node certificate of the retired CA"
    );
    let new_node = c.nodes[0].tls_dir.clone();
    assert!(
        cluster_port_accepts(&c, 2, &new_node, &new_ca).await,
        "the cluster port refused node 1's new certificate"
    );
}

/// A mutual-TLS session with node `id`'s cluster port presenting the node certificate in
/// `dir` (node.pem, node-key.pem), trusting `ca`: a handshake, then an HTTP/2 preface
/// answered by the server's first frame; `None` when the port refuses it.
async fn open_cluster_session(
    c: &Cluster,
    id: u64,
    dir: &Path,
    ca: &[u8],
) -> Option<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut &ca[..]) {
        roots.add(cert.unwrap()).unwrap();
    }
    let pem = |name: &str| std::fs::read(dir.join(name)).unwrap();
    let chain: Vec<_> = rustls_pemfile::certs(&mut &pem("node.pem")[..])
        .map(Result::unwrap)
        .collect();
    let key = rustls_pemfile::private_key(&mut &pem("node-key.pem")[..])
        .unwrap()
        .unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_client_auth_cert(chain, key)
    .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(&c.nodes[id as usize - 1].cluster_addr)
        .await
        .unwrap();
    let name = rustls::pki_types::ServerName::try_from(tls::node_name(id)).unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .ok()?;
    // With TLS 1.3 the server judges the client's certificate after the client's side of
    // the handshake is done: its verdict arrives with the first read.
    tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .ok()?;
    let mut frame = [0u8; 9];
    match tokio::time::timeout(Duration::from_secs(10), tls.read_exact(&mut frame)).await {
        Ok(Ok(_)) => Some(tls),
        _ => None,
    }
}

/// Whether node `id`'s cluster port accepts a new session with the certificate in `dir`.
async fn cluster_port_accepts(c: &Cluster, id: u64, dir: &Path, ca: &[u8]) -> bool {
    open_cluster_session(c, id, dir, ca).await.is_some()
}

/// An internal call on `channel` claiming to come from node 1 for a group that does not
/// exist: `NotFound` when it reaches the dispatcher (the session and its certificate were
/// accepted), a transport failure when the connection was refused or cut.
async fn probe_raft(channel: &tonic::transport::Channel) -> tonic::Code {
    use conifer_proto::internal::internal_client::InternalClient;
    use conifer_proto::internal::{RaftKind, RaftRequest};
    let request = RaftRequest {
        group_id: 999,
        from_node: 1,
        kind: RaftKind::Vote as i32,
        payload: vec![],
    };
    match tokio::time::timeout(
        Duration::from_secs(10),
        InternalClient::new(channel.clone()).raft(request),
    )
    .await
    {
        Ok(Ok(_)) => tonic::Code::Ok,
        Ok(Err(status)) => status.code(),
        Err(_) => tonic::Code::DeadlineExceeded,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn cluster_status_shows_each_certificates_expiry_and_warns_within_the_window() {
    // The fixture's node certificates are valid 30 days: inside a 45-day window.
    let c = Cluster::start_with(ClusterOptions {
        nodes: 2,
        args: vec!["--cert-expiry-warning-days".into(), "45".into()],
        ..ClusterOptions::default()
    })
    .await
    .unwrap();
    let info = cluster_of(&c, &c.http, 2).await;
    let node = info["certificates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|cert| cert["role"] == "node")
        .cloned()
        .unwrap();
    let days = node["days_left"].as_i64().unwrap();
    assert!((28..=30).contains(&days), "{node}");
    assert!(
        node["warning"].as_str().unwrap().contains("expires in"),
        "{node}"
    );
    let ca = info["certificates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|cert| cert["role"] == "cluster CA")
        .cloned()
        .unwrap();
    assert!(ca["warning"].is_null(), "{ca}");

    let boot = c.nodes[0].data_dir.join("bootstrap.json");
    let out = std::process::Command::new(conifer_tests::conifer_bin())
        .args(["cluster", "status", "--bootstrap"])
        .arg(&boot)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for id in [1, 2] {
        assert!(
            stdout.contains(&format!("node-{id}")),
            "node {id} missing: {stdout}"
        );
    }
    assert!(stdout.contains("expires in"), "{stdout}");
    let out = std::process::Command::new(conifer_tests::conifer_bin())
        .args(["cluster", "status", "--output", "json", "--bootstrap"])
        .arg(&boot)
        .output()
        .unwrap();
    let rows: Value = serde_json::from_slice(&out.stdout).unwrap();
    let nodes: Vec<u64> = rows
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["role"] == "node")
        .map(|r| r["node_id"].as_u64().unwrap())
        .collect();
    assert_eq!(nodes.len(), 2, "{rows}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_client_ca_rotates_without_a_restart() {
    let c = Cluster::start_with(ClusterOptions {
        nodes: 1,
        client_ca: true,
        ..ClusterOptions::default()
    })
    .await
    .unwrap();
    let key = c.api_key();
    c.create_index(1, &key, "docs", 3, "cosine").await.unwrap();
    let client_ca_dir = c.client_ca_dir.clone().unwrap();
    let client_ca_file = client_ca_dir.join(tls::CA_CERT);
    let old_ca = std::fs::read(&client_ca_file).unwrap();
    let old_cert = c
        .client_certificate("old-client", Validity::days_from_now(1))
        .unwrap();
    let new_ca_dir = c.dir.path().join("client-ca-2");
    tls::generate_ca(&new_ca_dir, "test clients, rotated").unwrap();
    tls::issue_leaf(
        &new_ca_dir,
        &new_ca_dir,
        "new-client",
        LeafKind::Client {
            name: "new-client".into(),
        },
        Validity::days_from_now(1),
    )
    .unwrap();
    let new_cert = (
        std::fs::read(new_ca_dir.join("new-client.pem")).unwrap(),
        std::fs::read(new_ca_dir.join("new-client-key.pem")).unwrap(),
    );
    let with = |cert: &(Vec<u8>, Vec<u8>)| c.client_with_certificate(&cert.0, &cert.1).unwrap();
    // A handshake either completes (any HTTP answer) or fails.
    let handshakes = |http: reqwest::Client| {
        let url = c.url(1, "/indexes");
        let key = key.clone();
        async move { http.get(url).header("Api-Key", key).send().await.is_ok() }
    };
    assert!(handshakes(with(&old_cert)).await);
    assert!(!handshakes(with(&new_cert)).await);

    // Both CAs, then the new one alone: each picked up on SIGHUP.
    let both = [
        old_ca.as_slice(),
        &std::fs::read(new_ca_dir.join(tls::CA_CERT)).unwrap(),
    ]
    .concat();
    replace(&client_ca_file, &both);
    let info = reload(&c, &c.http, 1, 2).await;
    assert_eq!(roles(&info, "client CA").len(), 2, "{info}");
    assert!(handshakes(with(&old_cert)).await);
    assert!(handshakes(with(&new_cert)).await);
    replace(
        &client_ca_file,
        &std::fs::read(new_ca_dir.join(tls::CA_CERT)).unwrap(),
    );
    reload(&c, &c.http, 1, 3).await;
    assert!(!handshakes(with(&old_cert)).await);
    assert!(handshakes(with(&new_cert)).await);

    // A client CA that holds the cluster CA is refused; the node keeps its own.
    replace(
        &client_ca_file,
        &std::fs::read(c.ca_dir.join(tls::CA_CERT)).unwrap(),
    );
    c.nodes[0].signal("HUP").unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let info = cluster_of(&c, &c.http, 1).await;
        if let Some(refused) = info["certificate_reload"]["refused"].as_str() {
            assert!(refused.contains("holds the cluster CA"), "{refused}");
            assert_eq!(info["certificate_reload"]["generation"], 3, "{info}");
            break;
        }
        assert!(Instant::now() < deadline, "never refused: {info}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(handshakes(with(&new_cert)).await);
}
