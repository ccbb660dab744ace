//! Index ports (`--index-port-range`): each index gets its own client port, its host is
//! `127.0.0.1:<port>` (no DNS), and calls on that port reach that index — over REST and
//! gRPC, for the index's own project only.

use std::time::{Duration, Instant};

use conifer_proto::pinecone as pb;
use conifer_tests::{free_port_range, Cluster, ClusterOptions};
use serde_json::{json, Value};

/// Fetches `id` from `index` through node 1's client port, naming the index by header.
async fn fetch_by_header(cluster: &Cluster, key: &str, index: &str, id: &str) -> Value {
    let path = format!("/vectors/fetch?ids={id}");
    cluster
        .data(1, key, index, reqwest::Method::GET, &path)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Waits until 127.0.0.1:`port` accepts connections (`open`) or refuses them (`!open`):
/// whether it did within 10 s.
async fn wait_port(port: u16, open: bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
            == open
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// [`wait_port`] until it accepts.
async fn wait_open(port: u16) -> bool {
    wait_port(port, true).await
}

/// [`wait_port`] until it refuses.
async fn wait_closed(port: u16) -> bool {
    wait_port(port, false).await
}

/// Sends `GET path` with `key` on a kept-alive HTTP/1.1 connection: the status.
async fn get_on(
    stream: &mut tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    path: &str,
    key: &str,
) -> u16 {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
    let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nApi-Key: {key}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut reader = tokio::io::BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).await.unwrap();
    let status: u16 = line.split(' ').nth(1).unwrap().parse().unwrap();
    let mut length = 0usize;
    loop {
        line.clear();
        reader.read_line(&mut line).await.unwrap();
        if line == "\r\n" {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse().unwrap();
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).await.unwrap();
    status
}

#[tokio::test(flavor = "multi_thread")]
async fn a_connection_to_a_deleted_index_never_reaches_the_index_taking_its_port() {
    let first = free_port_range(1);
    let cluster = Cluster::start_with(ClusterOptions {
        nodes: 1,
        env: vec![(
            "CONIFER_INDEX_PORT_RANGE".into(),
            format!("{first}-{first}"),
        )],
        ..ClusterOptions::default()
    })
    .await
    .unwrap();
    let key = cluster.api_key();
    cluster
        .create_index(1, &key, "old", 3, "cosine")
        .await
        .unwrap();
    assert!(wait_open(first).await);
    let tls = conifer_tests::abuse::tls_connector(&cluster).unwrap();
    let to = std::net::SocketAddr::from(([127, 0, 0, 1], first));
    let mut held = conifer_tests::abuse::open_tls(&tls, [127, 0, 0, 1].into(), to)
        .await
        .unwrap();
    assert_eq!(get_on(&mut held, "/vectors/fetch?ids=a", &key).await, 200);

    let deleted = cluster
        .http
        .delete(cluster.url(1, "/indexes/old"))
        .header("Api-Key", &key)
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 202);
    // The one port of the range goes to the next index; keep the held connection busy
    // meanwhile (an idle one closes after the header-read timeout).
    let creating = async {
        cluster
            .create_index(1, &key, "new", 3, "cosine")
            .await
            .unwrap();
    };
    tokio::pin!(creating);
    loop {
        tokio::select! {
            () = &mut creating => break,
            () = tokio::time::sleep(Duration::from_secs(1)) => {
                assert_eq!(get_on(&mut held, "/health", &key).await, 200);
            }
        }
    }
    assert!(wait_open(first).await);
    let fresh = conifer_tests::abuse::open_tls(&tls, [127, 0, 0, 1].into(), to)
        .await
        .unwrap();
    let mut fresh = fresh;
    assert_eq!(
        get_on(&mut fresh, "/vectors/fetch?ids=a", &key).await,
        200,
        "a new connection reaches 'new'"
    );
    assert_eq!(
        get_on(&mut held, "/vectors/fetch?ids=a", &key).await,
        404,
        "the held connection was to 'old'"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn each_index_has_its_own_port_and_host_without_dns() {
    let first = free_port_range(2);
    let cluster = Cluster::start_with(ClusterOptions {
        nodes: 1,
        env: vec![(
            "CONIFER_INDEX_PORT_RANGE".into(),
            format!("{first}-{}", first + 1),
        )],
        ..ClusterOptions::default()
    })
    .await
    .unwrap();
    let key = cluster.api_key();
    let a = cluster
        .create_index(1, &key, "ports-a", 3, "cosine")
        .await
        .unwrap();
    assert_eq!(a["host"], format!("127.0.0.1:{first}"), "{a}");
    let b = cluster
        .create_index(1, &key, "ports-b", 3, "cosine")
        .await
        .unwrap();
    assert_eq!(b["host"], format!("127.0.0.1:{}", first + 1), "{b}");

    // The range is spent: a third index is refused, naming the range.
    let third = cluster
        .http
        .post(cluster.url(1, "/indexes"))
        .header("Api-Key", &key)
        .json(
            &json!({"name": "ports-c", "dimension": 3, "metric": "cosine",
            "spec": {"serverless": {"cloud": "aws", "region": "us-east-1"}}}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(third.status(), 429);
    let body: Value = third.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains(&format!("index port range {first}-{}", first + 1)),
        "{body}"
    );

    // REST on the index's port, with no index header and no host name: that index.
    assert!(wait_open(first).await && wait_open(first + 1).await);
    let on_port = |path: &str| format!("https://127.0.0.1:{first}{path}");
    let upsert = cluster
        .http
        .post(on_port("/vectors/upsert"))
        .header("Api-Key", &key)
        .json(&json!({"vectors": [{"id": "x", "values": [1.0, 0.0, 0.0]}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(upsert.status(), 200, "{}", upsert.text().await.unwrap());
    let stats: Value = cluster
        .http
        .post(format!(
            "https://127.0.0.1:{}/describe_index_stats",
            first + 1
        ))
        .header("Api-Key", &key)
        .json(&json!({}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        stats["totalVectorCount"], 0,
        "ports-b holds nothing: {stats}"
    );

    // gRPC on the same port (asked until the upsert is applied: reads are eventual).
    let mut grpc = cluster.grpc_data_at(&on_port("")).await.unwrap();
    let mut query = tonic::Request::new(pb::QueryRequest {
        vector: vec![1.0, 0.0, 0.0],
        top_k: 1,
        ..Default::default()
    });
    query.metadata_mut().insert("api-key", key.parse().unwrap());
    let deadline = Instant::now() + Duration::from_secs(10);
    let matches = loop {
        let mut request = tonic::Request::new(query.get_ref().clone());
        *request.metadata_mut() = query.metadata().clone();
        let found = grpc.query(request).await.unwrap().into_inner().matches;
        if !found.is_empty() || Instant::now() > deadline {
            break found;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(matches.first().map(|m| m.id.as_str()), Some("x"));

    // Another project's key gets the same 404 as a missing index, and changes nothing.
    let (_, other_key) = cluster
        .project_with_key("elsewhere", &["ProjectEditor"])
        .await
        .unwrap();
    let foreign = cluster
        .http
        .post(on_port("/vectors/upsert"))
        .header("Api-Key", &other_key)
        .json(&json!({"vectors": [{"id": "y", "values": [1.0, 0.0, 0.0]}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(foreign.status(), 404);
    let unchanged = fetch_by_header(&cluster, &key, "ports-a", "y").await;
    assert_eq!(unchanged["vectors"], json!({}), "{unchanged}");

    // The client port still routes by header, and serves no data plane by port number; an
    // index port serves no control plane.
    let by_header = fetch_by_header(&cluster, &key, "ports-a", "x").await;
    assert!(by_header["vectors"]["x"].is_object(), "{by_header}");
    let admin = cluster
        .http
        .get(on_port("/indexes"))
        .header("Api-Key", &key)
        .send()
        .await
        .unwrap();
    assert_eq!(
        admin.status(),
        404,
        "the control plane is not on index ports"
    );

    // Deleting an index closes its port; the next index takes the lowest free port.
    let deleted = cluster
        .http
        .delete(cluster.url(1, "/indexes/ports-a"))
        .header("Api-Key", &key)
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 202);
    assert!(
        wait_closed(first).await,
        "port {first} still accepts connections"
    );
    // The range goes round: the freed port is given again once the ports after it are.
    let c = cluster
        .create_index(1, &key, "ports-c", 3, "cosine")
        .await
        .unwrap();
    assert_eq!(c["host"], format!("127.0.0.1:{first}"), "{c}");
    assert!(wait_open(first).await);
    // A new connection (the fixture's pooled one to ports-a's port may still be open, and
    // gets 404: its requests are stamped with the deleted index).
    let fresh = conifer_tests::ca_client(&cluster.ca_dir).unwrap();
    let fetched = fresh
        .get(on_port("/vectors/fetch?ids=x"))
        .header("Api-Key", &key)
        .send()
        .await
        .unwrap();
    assert_eq!(fetched.status(), 200);
    let fetched: Value = fetched.json().await.unwrap();
    assert_eq!(
        fetched["vectors"],
        json!({}),
        "ports-c is a new index: {fetched}"
    );
}

/// Runs `conifer serve` with `args`, which it must refuse: its stderr.
fn refused_serve(args: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(conifer_tests::conifer_bin())
        .args(["serve", "--data-dir"])
        .arg(dir.path())
        .args(args)
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            child.kill().unwrap();
            panic!("conifer serve {args:?} started instead of refusing");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn ranges_that_cannot_work_are_refused_at_start() {
    let stderr = refused_serve(&[
        "--api-addr",
        "127.0.0.1:7550",
        "--index-port-range",
        "7500-7599",
    ]);
    assert!(
        stderr.contains("--index-port-range 7500-7599 holds the port of --api-addr (7550)"),
        "{stderr}"
    );
    let stderr = refused_serve(&[
        "--api-addr",
        "0.0.0.0:7443",
        "--index-port-range",
        "7500-7599",
    ]);
    assert!(stderr.contains("has no one IP to report"), "{stderr}");
    let stderr = refused_serve(&["--index-port-range", "80-90"]);
    assert!(stderr.contains("privileged"), "{stderr}");
}

#[test]
fn private_listeners_that_cannot_work_are_refused_at_start() {
    let stderr = refused_serve(&[
        "--api-addr",
        "127.0.0.3:7443",
        "--private-api-addr",
        "0.0.0.0:7445",
    ]);
    assert!(stderr.contains("listens on every address"), "{stderr}");
    let stderr = refused_serve(&[
        "--api-addr",
        "127.0.0.3:7443",
        "--private-api-addr",
        "[::ffff:127.0.0.3]:7445",
    ]);
    assert!(stderr.contains("shares its IP with --api-addr"), "{stderr}");
    let stderr = refused_serve(&[
        "--api-addr",
        "127.0.0.3:7443",
        "--private-api-addr",
        "127.0.0.2:7550",
        "--index-port-range",
        "7500-7599",
    ]);
    assert!(
        stderr.contains("holds the port of --private-api-addr (7550)"),
        "{stderr}"
    );
    // Plain HTTP stays on loopback, the private listener's address included.
    let stderr = refused_serve(&[
        "--dev-http",
        "--api-addr",
        "127.0.0.3:7080",
        "--cluster-addr",
        "127.0.0.3:7081",
        "--private-api-addr",
        "10.99.0.1:7082",
    ]);
    assert!(
        stderr.contains("--dev-http serves plain HTTP, on the private listener too"),
        "{stderr}"
    );
}
