//! What the client port speaks and how clients come to trust it: `serve --dev-http` (plain
//! HTTP on loopback only, index hosts with the `http://` scheme), `serve --client-tls-cert /
//! --client-tls-key` (a certificate of the operator's beside the node certificate), and
//! `conifer certs trust` (the system trust store and a combined bundle).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use conifer_node::tls::{self, LeafKind, Validity};
use conifer_tests::{conifer_bin, free_port, free_port_range};
use serde_json::{json, Value};

/// One `conifer serve` on 127.0.0.1 with the flags a test gives, SIGKILLed on drop.
struct Serve {
    child: Child,
    data_dir: PathBuf,
    log: PathBuf,
    /// Client port.
    api: u16,
    /// Cluster port.
    cluster: u16,
    /// First of its 4 index ports.
    ports: u16,
}

impl Serve {
    /// Starts `conifer serve --data-dir DIR/data` on free loopback ports (client, cluster,
    /// and 4 index ports) with `args` besides.
    fn start(dir: &Path, args: &[&str]) -> Self {
        let (api, cluster, ports) = (free_port(), free_port(), free_port_range(4));
        let data_dir = dir.join("data");
        let log = dir.join("serve.log");
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new(conifer_bin())
            .arg("serve")
            .arg("--data-dir")
            .arg(&data_dir)
            .arg("--api-addr")
            .arg(format!("127.0.0.1:{api}"))
            .arg("--cluster-addr")
            .arg(format!("127.0.0.1:{cluster}"))
            .arg("--index-port-range")
            .arg(format!("{ports}-{}", ports + 3))
            .args(args)
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap();
        Self {
            child,
            data_dir,
            log,
            api,
            cluster,
            ports,
        }
    }

    /// Waits (60 s) for the CA the node creates on its first start: its PEM.
    async fn wait_ca(&self) -> Vec<u8> {
        let ca = self.data_dir.join("tls").join(tls::CA_CERT);
        let deadline = Instant::now() + Duration::from_secs(60);
        while !ca.exists() {
            assert!(Instant::now() < deadline, "no CA:\n{}", self.log());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        std::fs::read(&ca).unwrap()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits (60 s) until `client` gets 200 from `url`/health and bootstrap.json exists:
    /// its contents.
    async fn wait_serving(&mut self, client: &reqwest::Client, url: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        let boot = self.data_dir.join("bootstrap.json");
        while Instant::now() < deadline {
            assert!(
                self.child.try_wait().unwrap().is_none(),
                "serve exited:\n{}",
                self.log()
            );
            if let Ok(resp) = client.get(format!("{url}/health")).send().await {
                if resp.status() == 200 && boot.exists() {
                    return serde_json::from_slice(&std::fs::read(&boot).unwrap()).unwrap();
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!("not serving at {url} in 60 s:\n{}", self.log());
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `conifer serve` with `args` to its exit (it should refuse them): its output.
fn serve_refused(dir: &Path, args: &[&str]) -> Output {
    let output = Command::new(conifer_bin())
        .arg("serve")
        .arg("--data-dir")
        .arg(dir.join("refused"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!output.status.success(), "serve {args:?} was not refused");
    output
}

/// A client trusting only `ca_pem` besides the system's store.
fn client_trusting(ca_pem: &[u8]) -> reqwest::Client {
    reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem).unwrap())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// Creates a 2-dimension index `name` through `url` with `key`: its host, once it reports
/// Ready.
async fn create_index(client: &reqwest::Client, url: &str, key: &str, name: &str) -> String {
    let resp = client
        .post(format!("{url}/indexes"))
        .header("Api-Key", key)
        .json(&json!({"name": name, "dimension": 2, "metric": "cosine",
                      "spec": {"serverless": {"cloud": "aws", "region": "us-east-1"}}}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201, "{}", resp.text().await.unwrap());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let index: Value = client
            .get(format!("{url}/indexes/{name}"))
            .header("Api-Key", key)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if index["status"]["ready"] == true {
            return index["host"].as_str().unwrap().to_string();
        }
        assert!(Instant::now() < deadline, "index not ready: {index}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Upserts one record at `base` (an index host with its scheme) and fetches it back
/// (waiting for the index port to open): the fetched record.
async fn upsert_and_fetch(client: &reqwest::Client, base: &str, key: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let upsert = client
            .post(format!("{base}/vectors/upsert"))
            .header("Api-Key", key)
            .json(&json!({"vectors": [{"id": "a", "values": [0.5, 0.25]}]}))
            .send()
            .await;
        match upsert {
            Ok(resp) => {
                assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
                break;
            }
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("upsert at {base}: {e}"),
        }
    }
    let fetched: Value = client
        .get(format!("{base}/vectors/fetch?ids=a"))
        .header("Api-Key", key)
        .header("X-Conifer-Read-Consistency", "linearizable")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    fetched["vectors"]["a"].clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn dev_http_serves_plain_http_on_loopback_only() {
    let dir = tempfile::tempdir().unwrap();
    for addr in ["0.0.0.0:7443", "[::]:7443"] {
        let refused = serve_refused(dir.path(), &["--dev-http", "--api-addr", addr]);
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert!(stderr.contains("loopback"), "{addr}: {stderr}");
    }

    let mut serve = Serve::start(dir.path(), &["--dev-http"]);
    let (api_addr, ports) = (format!("127.0.0.1:{}", serve.api), serve.ports);
    let plain = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let url = format!("http://{api_addr}");
    let boot = serve.wait_serving(&plain, &url).await;
    assert_eq!(boot["api_url"], url);
    assert!(
        serve.log().contains("DEVELOPMENT MODE (--dev-http)"),
        "{}",
        serve.log()
    );
    let key = boot["api_key"].as_str().unwrap();

    let host = create_index(&plain, &url, key, "docs").await;
    assert_eq!(host, format!("http://127.0.0.1:{ports}"));
    let record = upsert_and_fetch(&plain, &host, key).await;
    assert_eq!(record["values"], json!([0.5, 0.25]));

    // Plain HTTP means no TLS: a TLS client cannot talk to the port.
    let ca = std::fs::read(boot["ca_cert"].as_str().unwrap()).unwrap();
    let tls_attempt = client_trusting(&ca)
        .get(format!("https://{api_addr}/health"))
        .send()
        .await;
    assert!(
        tls_attempt.is_err(),
        "a TLS handshake succeeded on --dev-http"
    );
    // Credentials are still checked.
    let resp = plain
        .get(format!("{host}/vectors/fetch?ids=a"))
        .header("Api-Key", "pcsk_wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
}

#[tokio::test(flavor = "multi_thread")]
async fn client_port_presents_the_operators_certificate() {
    let dir = tempfile::tempdir().unwrap();
    // A "corporate" CA the cluster knows nothing of, and a certificate for 127.0.0.1.
    let corp = dir.path().join("corp");
    tls::generate_ca(&corp, "corporate").unwrap();
    let kind = LeafKind::Node {
        id: 1,
        hosts: vec!["127.0.0.1".into()],
        domain: None,
    };
    tls::issue_leaf(
        &corp,
        &corp,
        "client-port",
        kind,
        Validity::days_from_now(30),
    )
    .unwrap();
    let cert = corp.join("client-port.pem");
    let key_file = corp.join("client-port-key.pem");
    let (cert, key_file) = (cert.to_str().unwrap(), key_file.to_str().unwrap());

    // A key every user can read is refused.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(key_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let refused = serve_refused(
        dir.path(),
        &["--client-tls-cert", cert, "--client-tls-key", key_file],
    );
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("readable by every user"), "{stderr}");
    std::fs::set_permissions(key_file, std::fs::Permissions::from_mode(0o600)).unwrap();

    let mut serve = Serve::start(
        dir.path(),
        &["--client-tls-cert", cert, "--client-tls-key", key_file],
    );
    let api_addr = format!("127.0.0.1:{}", serve.api);
    let corp_client = client_trusting(&std::fs::read(corp.join(tls::CA_CERT)).unwrap());
    let url = format!("https://{api_addr}");
    let boot = serve.wait_serving(&corp_client, &url).await;
    assert_eq!(
        boot["ca_cert"],
        Value::Null,
        "bootstrap.json names the cluster CA, which the client port no longer chains to"
    );
    let key = boot["api_key"].as_str().unwrap();
    let host = create_index(&corp_client, &url, key, "docs").await;
    let record = upsert_and_fetch(&corp_client, &format!("https://{host}"), key).await;
    assert_eq!(record["values"], json!([0.5, 0.25]));

    // The cluster CA (the node certificate's) no longer verifies the client port.
    let cluster_ca = std::fs::read(serve.data_dir.join("tls").join(tls::CA_CERT)).unwrap();
    let wrong = client_trusting(&cluster_ca)
        .get(format!("{url}/health"))
        .send()
        .await;
    assert!(
        wrong.is_err(),
        "the client port verified with the cluster CA"
    );

    // The CLI with no CA named trusts the system store (which lacks the corporate CA):
    // refused; with --ca-cert the corporate CA: served.
    let cli = |extra: &[&str]| {
        Command::new(conifer_bin())
            .args(["project", "list", "--api-url", &url, "--token"])
            .arg(boot["admin_token"].as_str().unwrap())
            .args(extra)
            .output()
            .unwrap()
    };
    let untrusted = cli(&[]);
    assert!(!untrusted.status.success());
    let trusted = cli(&["--ca-cert", corp.join(tls::CA_CERT).to_str().unwrap()]);
    assert!(
        trusted.status.success(),
        "{}",
        String::from_utf8_lossy(&trusted.stderr)
    );
    assert!(String::from_utf8_lossy(&trusted.stdout).contains("default"));
}

/// Runs `conifer certs trust` with `args`: its output.
fn trust(args: &[&str]) -> Output {
    Command::new(conifer_bin())
        .args(["certs", "trust"])
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn certs_trust_writes_one_bundle_of_the_system_cas_and_the_cluster_ca() {
    let dir = tempfile::tempdir().unwrap();
    let (ca_a, ca_b) = (dir.path().join("a"), dir.path().join("b"));
    tls::generate_ca(&ca_a, "cluster-a").unwrap();
    tls::generate_ca(&ca_b, "system-b").unwrap();
    // A stand-in for the system bundle: one CA of its own.
    let system = dir.path().join("system.pem");
    std::fs::copy(ca_b.join(tls::CA_CERT), &system).unwrap();
    let bundle = dir.path().join("bundle.pem");
    let ca_a_pem = ca_a.join(tls::CA_CERT);
    let args = [
        "--no-system",
        "--ca-cert",
        ca_a_pem.to_str().unwrap(),
        "--system-bundle",
        system.to_str().unwrap(),
        "--bundle",
        bundle.to_str().unwrap(),
    ];
    for _ in 0..2 {
        let out = trust(&args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        let bundle = bundle.canonicalize().unwrap();
        assert!(
            stdout.starts_with(&format!(
                "export SSL_CERT_FILE={b} REQUESTS_CA_BUNDLE={b} ",
                b = bundle.display()
            )),
            "{stdout}"
        );
    }
    // Twice run, each CA once: the system's first, then the cluster's.
    let text = std::fs::read_to_string(&bundle).unwrap();
    let certs: Vec<_> = rustls_pemfile::certs(&mut text.as_bytes())
        .collect::<Result<_, _>>()
        .unwrap();
    let der = |path: &Path| {
        rustls_pemfile::certs(&mut std::fs::read(path).unwrap().as_slice())
            .next()
            .unwrap()
            .unwrap()
    };
    assert_eq!(certs, vec![der(&system), der(&ca_a_pem)]);

    // A node certificate is not a CA: refused, naming why.
    let kind = LeafKind::Node {
        id: 1,
        hosts: vec![],
        domain: None,
    };
    tls::issue_leaf(&ca_a, &ca_a, "node", kind, Validity::days_from_now(1)).unwrap();
    let node_pem = ca_a.join(tls::NODE_CERT);
    let out = trust(&["--no-system", "--ca-cert", node_pem.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not a CA certificate"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The system store itself: after `conifer certs trust`, curl and the `conifer` CLI reach the
/// node with no CA named; after `--remove`, they fail again. Needs root and Debian's
/// update-ca-certificates (it changes the machine's trust store for the test's duration).
#[tokio::test(flavor = "multi_thread")]
async fn certs_trust_installs_the_ca_into_the_system_store() {
    let root = Command::new("id").arg("-u").output().unwrap();
    let has_tool = Command::new("sh")
        .args(["-c", "command -v update-ca-certificates"])
        .status()
        .unwrap()
        .success();
    if String::from_utf8_lossy(&root.stdout).trim() != "0" || !has_tool {
        eprintln!("skipped: needs root and update-ca-certificates");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut serve = Serve::start(dir.path(), &[]);
    let url = format!("https://127.0.0.1:{}", serve.api);
    let ca = serve.wait_ca().await;
    let boot = serve.wait_serving(&client_trusting(&ca), &url).await;
    let bootstrap = serve.data_dir.join("bootstrap.json");
    let curl = || {
        Command::new("curl")
            .args([
                "-sf",
                "-o",
                "/dev/null",
                "--max-time",
                "5",
                &format!("{url}/health"),
            ])
            .status()
            .unwrap()
            .success()
    };
    let cli = || {
        Command::new(conifer_bin())
            .args(["project", "list", "--api-url", &url, "--token"])
            .arg(boot["admin_token"].as_str().unwrap())
            .output()
            .unwrap()
            .status
            .success()
    };
    assert!(
        !curl(),
        "curl trusted the new cluster CA before `certs trust`"
    );
    assert!(!cli());

    /// Takes the CA out of the system store however the test ends.
    struct Untrust(PathBuf);
    impl Drop for Untrust {
        fn drop(&mut self) {
            let _ = trust(&["--remove", "--bootstrap", self.0.to_str().unwrap()]);
        }
    }
    let untrust = Untrust(bootstrap.clone());
    let out = trust(&["--bootstrap", bootstrap.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(curl(), "curl did not trust the CA after `certs trust`");
    assert!(cli(), "the CLI did not trust the CA after `certs trust`");
    let bundle = serve.data_dir.join("tls").join("ca-bundle.pem");
    assert!(bundle.exists());

    drop(untrust);
    assert!(
        !curl(),
        "curl still trusted the CA after `certs trust --remove`"
    );
    assert!(!bundle.exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn advertise_addr_names_the_node_in_hosts_members_and_certificate() {
    let dir = tempfile::tempdir().unwrap();
    // Index hosts need one host to report: an unspecified listen address needs --advertise-addr.
    let refused = serve_refused(
        dir.path(),
        &[
            "--api-addr",
            "0.0.0.0:7443",
            "--index-port-range",
            "7600-7609",
        ],
    );
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("--advertise-addr"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    for bad in ["node:7443", "bad_name", "0.0.0.0"] {
        let refused = serve_refused(dir.path(), &["--advertise-addr", bad]);
        assert!(
            String::from_utf8_lossy(&refused.stderr).contains("--advertise-addr"),
            "{bad}"
        );
    }

    let mut serve = Serve::start(dir.path(), &["--advertise-addr", "localhost"]);
    let (api, ports) = (serve.api, serve.ports);
    let cluster = serve.cluster;
    let client = client_trusting(&serve.wait_ca().await);
    // The advertised name is in the default certificate: TLS verifies against it.
    let url = format!("https://localhost:{api}");
    let boot = serve.wait_serving(&client, &url).await;
    assert_eq!(boot["api_url"], url);
    let key = boot["api_key"].as_str().unwrap();
    let host = create_index(&client, &url, key, "docs").await;
    assert_eq!(host, format!("localhost:{ports}"));
    let record = upsert_and_fetch(&client, &format!("https://{host}"), key).await;
    assert_eq!(record["values"], json!([0.5, 0.25]));
    let cluster_info: Value = client
        .get(format!("{url}/admin/cluster"))
        .bearer_auth(boot["admin_token"].as_str().unwrap())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        cluster_info["members"][0]["api_addr"],
        format!("localhost:{api}")
    );
    assert_eq!(
        cluster_info["members"][0]["cluster_addr"],
        format!("localhost:{cluster}")
    );
}
