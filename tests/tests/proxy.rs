//! HTTP CONNECT proxies (issue 18 item 5): the CLI and the Rust client (REST and gRPC) reach
//! a 3-node cluster through a real proxy — Debian's `tinyproxy`, started here on loopback —
//! named explicitly or by `HTTPS_PROXY`, with and without basic authentication; `NO_PROXY`
//! and `--proxy direct` bypass it; a wrong password is a clear error. The proxy's own log
//! shows each tunnel it opened, so a request that silently went straight to the node fails.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use conifer_client::{grpc, AdminClient, Proxy, Transport};
use conifer_proto::pinecone::{QueryRequest, UpsertRequest, Vector};
use conifer_tests::{free_port, Cluster};

/// A `tinyproxy` on 127.0.0.1, logging every CONNECT; killed on drop.
struct Tinyproxy {
    port: u16,
    log: PathBuf,
    child: Child,
    _dir: tempfile::TempDir,
}

/// The user and password of the authenticating proxy.
const USER: &str = "alice";
const PASSWORD: &str = "s3cret";

impl Tinyproxy {
    fn start(basic_auth: bool) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let log = dir.path().join("tinyproxy.log");
        let mut conf = format!(
            "Port {port}\nListen 127.0.0.1\nTimeout 60\nLogFile \"{}\"\nLogLevel Connect\n\
             MaxClients 64\nAllow 127.0.0.1\n",
            log.display()
        );
        if basic_auth {
            conf.push_str(&format!("BasicAuth {USER} {PASSWORD}\n"));
        }
        let conf_path = dir.path().join("tinyproxy.conf");
        std::fs::write(&conf_path, conf).expect("write tinyproxy.conf");
        let child = Command::new("tinyproxy")
            .arg("-d")
            .arg("-c")
            .arg(&conf_path)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("stderr")).expect("stderr file"))
            .spawn()
            .expect("start tinyproxy (scripts/install-deps.sh installs it)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "tinyproxy did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Self {
            port,
            log,
            child,
            _dir: dir,
        }
    }

    /// The proxy's URL, with the credentials when given.
    fn url(&self, credentials: Option<(&str, &str)>) -> String {
        match credentials {
            Some((user, password)) => format!("http://{user}:{password}@127.0.0.1:{}", self.port),
            None => format!("http://127.0.0.1:{}", self.port),
        }
    }

    /// What the proxy logged so far.
    fn log_text(&self) -> String {
        let stderr = self.log.with_file_name("stderr");
        format!(
            "tinyproxy on port {}: log:\n{}\nstderr:\n{}",
            self.port,
            std::fs::read_to_string(&self.log).unwrap_or_default(),
            std::fs::read_to_string(stderr).unwrap_or_default()
        )
    }

    /// Tunnels the proxy established so far to `host` (its log's "Established connection").
    fn tunnels_to(&self, host: &str) -> usize {
        let needle = format!("Established connection to host \"{host}\"");
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(&needle))
            .count()
    }
}

impl Drop for Tinyproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `conifer ARGS` with `--bootstrap BOOT --api-key KEY` and the environment `env`
/// (every proxy variable of the test's own environment removed first): (exit code, stdout,
/// stderr).
fn conifer(boot: &Path, key: &str, args: &[&str], env: &[(&str, String)]) -> (i32, String, String) {
    let mut command = Command::new(conifer_tests::conifer_bin());
    command
        .args(args)
        .arg("--bootstrap")
        .arg(boot)
        .arg("--api-key")
        .arg(key);
    for var in [
        "HTTPS_PROXY",
        "https_proxy",
        "HTTP_PROXY",
        "http_proxy",
        "ALL_PROXY",
        "all_proxy",
        "NO_PROXY",
        "no_proxy",
        "CONIFER_PROXY",
    ] {
        command.env_remove(var);
    }
    for (k, v) in env {
        command.env(k, v);
    }
    let out = command.output().expect("run conifer");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cli_and_the_rust_client_reach_a_cluster_through_a_connect_proxy() {
    let c = Cluster::start(3).await.unwrap();
    let (_project, key) = c
        .project_with_key("proxied", &["ProjectEditor"])
        .await
        .unwrap();
    let boot = c.nodes[0].data_dir.join("bootstrap.json");
    let node_url = c.url(1, "");
    let node_host = node_url
        .trim_start_matches("https://")
        .rsplit_once(':')
        .map(|(h, _)| h.to_string())
        .unwrap();
    let open = Tinyproxy::start(false);
    let authenticating = Tinyproxy::start(true);

    // The CLI, through the proxy named on its command line.
    let (code, out, err) = conifer(
        &boot,
        &key,
        &[
            "index",
            "create",
            "docs",
            "--dimension",
            "3",
            "--proxy",
            &open.url(None),
        ],
        &[],
    );
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        open.tunnels_to(&node_host) >= 1,
        "no tunnel in the proxy's log"
    );

    // Through the one HTTPS_PROXY names, with basic authentication.
    let before = authenticating.tunnels_to(&node_host);
    let with_password = authenticating.url(Some((USER, PASSWORD)));
    let (code, out, err) = conifer(
        &boot,
        &key,
        &["index", "list"],
        &[("HTTPS_PROXY", with_password.clone())],
    );
    assert_eq!(code, 0, "{out}\n{err}\n{}", authenticating.log_text());
    assert!(out.contains("docs"), "{out}");
    assert_eq!(authenticating.tunnels_to(&node_host), before + 1);

    // A wrong password: refused by the proxy, and the error says so without the password.
    let wrong = authenticating.url(Some((USER, "wrong-password")));
    let (code, out, err) = conifer(
        &boot,
        &key,
        &["index", "list"],
        &[("HTTPS_PROXY", wrong.clone())],
    );
    assert_eq!(code, 4, "{out}");
    assert!(err.contains("proxy refused the tunnel"), "{err}");
    assert!(
        !err.contains("wrong-password"),
        "the password leaked: {err}"
    );
    // No credentials at all, named on the command line.
    let (code, _, err) = conifer(
        &boot,
        &key,
        &["index", "list", "--proxy", &authenticating.url(None)],
        &[],
    );
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("proxy refused the tunnel"), "{err}");
    assert_eq!(authenticating.tunnels_to(&node_host), before + 1);

    // NO_PROXY naming the node's address, and `--proxy direct`, bypass a proxy that is not
    // even there (a port nothing listens on).
    let nowhere = format!("http://127.0.0.1:{}", free_port());
    let (code, out, err) = conifer(
        &boot,
        &key,
        &["index", "list"],
        &[
            ("HTTPS_PROXY", nowhere.clone()),
            ("NO_PROXY", node_host.clone()),
        ],
    );
    assert_eq!(code, 0, "NO_PROXY ignored: {out}\n{err}");
    let (code, out, err) = conifer(
        &boot,
        &key,
        &["index", "list", "--proxy", "direct"],
        &[("HTTPS_PROXY", nowhere.clone())],
    );
    assert_eq!(code, 0, "--proxy direct ignored: {out}\n{err}");
    // While the same proxy without NO_PROXY fails: the bypasses above are real.
    let (code, _, err) = conifer(
        &boot,
        &key,
        &["index", "list"],
        &[("HTTPS_PROXY", nowhere.clone())],
    );
    assert_ne!(code, 0, "the dead proxy was not used: {err}");
    // A malformed proxy is a usage error naming the expected form.
    let (code, _, err) = conifer(
        &boot,
        &key,
        &["index", "list", "--proxy", "socks5://127.0.0.1:1080"],
        &[],
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("http://[user:password@]host:port"), "{err}");

    // The Rust client's REST calls, through the authenticating proxy.
    let ca = std::fs::read(c.ca_dir.join(conifer_node::tls::CA_CERT)).unwrap();
    let proxy: Proxy = with_password.parse().unwrap();
    let transport = Transport {
        ca_pem: Some(ca.clone()),
        identity: None,
        proxy,
    };
    let rest = AdminClient::with_transport(&node_url, &transport, None)
        .unwrap()
        .with_api_key(&key);
    let before = authenticating.tunnels_to(&node_host);
    let described = rest.describe_index("docs").await.unwrap();
    assert_eq!(described["dimension"], 3, "{described}");
    assert_eq!(authenticating.tunnels_to(&node_host), before + 1);

    // Its gRPC data plane through the same proxy: an upsert and a query over one tunnel.
    let mut data = grpc::connect(&node_url, &transport, Some(&key), Some("docs"))
        .await
        .unwrap();
    assert_eq!(authenticating.tunnels_to(&node_host), before + 2);
    let upserted = data
        .upsert(UpsertRequest {
            vectors: vec![Vector {
                id: "a".into(),
                values: vec![1.0, 0.0, 0.0],
                ..Vector::default()
            }],
            namespace: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(upserted.upserted_count, 1);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let answer = data
            .query(QueryRequest {
                top_k: 1,
                vector: vec![1.0, 0.0, 0.0],
                ..QueryRequest::default()
            })
            .await
            .unwrap()
            .into_inner();
        if answer.matches.first().is_some_and(|m| m.id == "a") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the upsert never showed: {answer:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(authenticating.tunnels_to(&node_host), before + 2);

    // A wrong password over gRPC: the proxy's refusal (tinyproxy answers 401), named.
    let wrong_proxy = Transport {
        proxy: wrong.parse().unwrap(),
        ..transport.clone()
    };
    let Err(e) = grpc::connect(&node_url, &wrong_proxy, Some(&key), Some("docs")).await else {
        panic!("a tunnel opened with the wrong password");
    };
    let e = e.to_string();
    assert!(e.contains("proxy refused the tunnel"), "{e}");
    assert!(
        e.contains(&format!("127.0.0.1:{}", authenticating.port)),
        "{e}"
    );
    assert!(!e.contains("wrong-password"), "the password leaked: {e}");
}
