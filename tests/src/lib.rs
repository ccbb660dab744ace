//! The cluster fixture: starts real `conifer` processes on loopback with real TLS, and
//! gives tests a REST client that trusts the cluster CA.
//!
//! Every integration test builds on [`Cluster`]; none copies process setup. Processes are
//! killed when the fixture is dropped. [`chaos`] is the chaos harness built on it.

pub mod abuse;
pub mod chaos;
pub mod kms;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use conifer_node::tls::{self, LeafKind, Validity};
use serde_json::Value;

/// Longest a node may take to report `serving`.
pub const NODE_READY_TIMEOUT: Duration = Duration::from_secs(60);

/// The `conifer` binary under test: `$CONIFER_BIN`, or `conifer` in the profile directory
/// of the running executable (a test in `deps/`, or `conifer-chaos` beside it).
pub fn conifer_bin() -> PathBuf {
    if let Ok(path) = std::env::var("CONIFER_BIN") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe.parent().expect("executable dir");
    let dir = if dir.ends_with("deps") {
        dir.parent().expect("target profile dir")
    } else {
        dir
    };
    dir.join("conifer")
}

/// A loopback port free at the time of the call, and never handed out before in this
/// process.
pub fn free_port() -> u16 {
    free_port_on("127.0.0.1")
}

/// Ports nodes listen on: below the kernel's ephemeral range (32768 and up here), which
/// outgoing connections draw from. A port taken from that range could be handed to some
/// connection's source port while its node was down, and the restarted node failed to bind
/// it ("Address already in use"). Below the compat suite's (20000 up to that range).
const NODE_PORTS: std::ops::Range<u16> = 10_000..20_000;

/// Ports handed out by [`free_port_on`] and [`free_port_range`] in this process. A port
/// is free when it is picked but nothing holds it until a node binds it, so a second pick
/// (another node of the same cluster, an index port range picked before the cluster
/// starts) could land on it; no port is handed out twice.
static HANDED_OUT: std::sync::Mutex<std::collections::BTreeSet<u16>> =
    std::sync::Mutex::new(std::collections::BTreeSet::new());

/// Claims `ports` if none was handed out before and each binds on `host` now.
fn claim(host: &str, ports: std::ops::Range<u16>) -> bool {
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    if handed_out.range(ports.clone()).next().is_some()
        || !ports
            .clone()
            .all(|port| TcpListener::bind((host, port)).is_ok())
    {
        return false;
    }
    handed_out.extend(ports);
    true
}

/// The first of `n` consecutive ports of [`NODE_PORTS`] free on 127.0.0.1 at the time of
/// the call and never handed out before in this process (an index port range).
pub fn free_port_range(n: u16) -> u16 {
    use rand::Rng;
    let mut rng = rand::thread_rng();
    loop {
        let first = rng.gen_range(NODE_PORTS.start..NODE_PORTS.end - n);
        if claim("127.0.0.1", first..first + n) {
            return first;
        }
    }
}

/// `conifer serve` of a new node on loopback, outside the cluster fixture: data directory
/// `dir/data`, free client and cluster ports, and no `FAILPOINTS` or `CONIFER_KEYRING`
/// inherited from the test's environment. Tests add their flags and spawn or run it.
pub fn serve_command(dir: &Path) -> Command {
    let mut cmd = Command::new(conifer_bin());
    cmd.arg("serve")
        .arg("--data-dir")
        .arg(dir.join("data"))
        .arg("--api-addr")
        .arg(format!("127.0.0.1:{}", free_port()))
        .arg("--cluster-addr")
        .arg(format!("127.0.0.1:{}", free_port()))
        .env_remove("FAILPOINTS")
        .env_remove("CONIFER_KEYRING")
        .stdin(Stdio::null());
    cmd
}

/// A spawned process SIGKILLed and reaped when dropped, so a test that fails midway leaves
/// no node running.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A port of [`NODE_PORTS`] free on address `host` at the time of the call.
pub fn free_port_on(host: &str) -> u16 {
    use rand::Rng;
    let mut rng = rand::thread_rng();
    loop {
        let port = rng.gen_range(NODE_PORTS);
        if claim(host, port..port + 1) {
            return port;
        }
    }
}

/// How [`Cluster::start_with`] starts its nodes.
#[derive(Clone, Debug, Default)]
pub struct ClusterOptions {
    /// Number of nodes (node 1 bootstraps, the others join as voters).
    pub nodes: usize,
    /// Give node `id` its own address `127.0.0.{10 + id}` (both ports, and the source of its
    /// peer connections) instead of sharing 127.0.0.1, so links can be cut one by one.
    pub distinct_hosts: bool,
    /// Extra environment of every node process (e.g. `FAILPOINTS`).
    pub env: Vec<(String, String)>,
    /// Extra `serve` arguments of every node; with `--root-key-kms` the nodes get no
    /// `--keyring`.
    pub args: Vec<String>,
    /// (public IP, private IP): every node's client and cluster ports on the public IP and
    /// a private listener (`--private-api-addr`) on the private IP, both IPs in its
    /// certificate.
    pub private_listener: Option<(String, String)>,
    /// Create a client CA (`Cluster::client_ca_dir`, apart from the cluster CA) and start
    /// every node with `--client-ca` naming it.
    pub client_ca: bool,
}

/// The loopback address of node `id` when nodes have distinct hosts.
pub fn node_host(id: u64) -> String {
    format!("127.0.0.{}", 10 + id)
}

/// One node process of the fixture.
pub struct NodeProc {
    /// Node id.
    pub id: u64,
    /// Data directory.
    pub data_dir: PathBuf,
    /// TLS directory (ca.pem, node.pem, node-key.pem).
    pub tls_dir: PathBuf,
    /// Client port address.
    pub api_addr: String,
    /// Cluster port address.
    pub cluster_addr: String,
    /// Cluster address to join (None for the bootstrapping node).
    pub join: Option<String>,
    /// Join as learner.
    pub learner: bool,
    /// Extra environment of the process.
    pub env: Vec<(String, String)>,
    /// Extra `serve` arguments.
    pub args: Vec<String>,
    /// The private listener's address, when it has one.
    pub private_addr: Option<String>,
    child: Option<Child>,
}

impl NodeProc {
    /// Starts (or restarts) the process.
    pub fn spawn(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.data_dir.with_extension("log"))
            .context("node log file")?;
        let mut cmd = Command::new(conifer_bin());
        cmd.arg("serve")
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--node-id")
            .arg(self.id.to_string())
            .arg("--api-addr")
            .arg(&self.api_addr)
            .arg("--cluster-addr")
            .arg(&self.cluster_addr)
            .arg("--tls-dir")
            .arg(&self.tls_dir)
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        if !self.args.iter().any(|a| a == "--root-key-kms") {
            // Beside the data directory, not in it (a joining node refuses that).
            cmd.arg("--keyring")
                .arg(self.data_dir.with_extension("keyring.json"));
        }
        if let Some(join) = &self.join {
            cmd.arg("--join").arg(join);
            if self.learner {
                cmd.arg("--learner");
            }
        }
        self.child = Some(
            cmd.spawn()
                .with_context(|| format!("spawning {}", conifer_bin().display()))?,
        );
        Ok(())
    }

    /// SIGKILLs the process and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Sends `signal` (e.g. `STOP`, `CONT`) to the process, if it runs.
    pub fn signal(&self, signal: &str) -> anyhow::Result<()> {
        if let Some(pid) = self.pid() {
            let status = Command::new("kill")
                .arg(format!("-{signal}"))
                .arg(pid.to_string())
                .status()
                .context("running kill")?;
            anyhow::ensure!(status.success(), "kill -{signal} {pid} failed");
        }
        Ok(())
    }

    /// Whether the process is running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// The node's log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data_dir.with_extension("log")).unwrap_or_default()
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A cluster of real `conifer` processes on loopback.
pub struct Cluster {
    /// Root of every node's files.
    pub dir: tempfile::TempDir,
    /// Directory of the cluster CA.
    pub ca_dir: PathBuf,
    /// The nodes, by index (node id = index + 1).
    pub nodes: Vec<NodeProc>,
    /// The contents of node 1's bootstrap.json.
    pub bootstrap: Value,
    /// HTTP client trusting the cluster CA.
    pub http: reqwest::Client,
    /// How the nodes are started.
    pub options: ClusterOptions,
    /// Directory of the client CA (`ClusterOptions::client_ca`).
    pub client_ca_dir: Option<PathBuf>,
    /// The highest node id given out.
    last_id: u64,
}

impl Cluster {
    /// Starts `n` nodes: node 1 bootstraps, the others join through it as voters.
    pub async fn start(n: usize) -> anyhow::Result<Self> {
        Self::start_with(ClusterOptions {
            nodes: n,
            ..ClusterOptions::default()
        })
        .await
    }

    /// Starts a cluster as `options` say.
    pub async fn start_with(options: ClusterOptions) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let ca_dir = dir.path().join("ca");
        tls::generate_ca(&ca_dir, "test")?;
        let mut options = options;
        let client_ca_dir = if options.client_ca {
            let client_ca_dir = dir.path().join("client-ca");
            tls::generate_ca(&client_ca_dir, "test clients")?;
            options.args.extend([
                "--client-ca".to_string(),
                client_ca_dir.join(tls::CA_CERT).display().to_string(),
            ]);
            Some(client_ca_dir)
        } else {
            None
        };
        let mut cluster = Self {
            dir,
            ca_dir: ca_dir.clone(),
            nodes: Vec::new(),
            bootstrap: Value::Null,
            http: reqwest::Client::new(),
            options: options.clone(),
            client_ca_dir,
            last_id: 0,
        };
        cluster.add_node(false).await?;
        let boot = std::fs::read_to_string(cluster.nodes[0].data_dir.join("bootstrap.json"))?;
        cluster.bootstrap = serde_json::from_str(&boot)?;
        let ca_pem = std::fs::read(ca_dir.join(tls::CA_CERT))?;
        cluster.http = reqwest::Client::builder()
            // The cluster CA only: no system store to load for each of many clients.
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(&ca_pem)?)
            .timeout(Duration::from_secs(30))
            .http1_only()
            .build()?;
        for _ in 1..options.nodes {
            cluster.add_node(false).await?;
        }
        Ok(cluster)
    }

    /// Issues a certificate for the next node id and starts it (joining unless it is the first).
    pub async fn add_node(&mut self, learner: bool) -> anyhow::Result<u64> {
        // Ids are never reused, also after a node was retired.
        self.last_id += 1;
        let id = self.last_id;
        let host = match (&self.options.private_listener, self.options.distinct_hosts) {
            (Some((public, _)), _) => public.clone(),
            (None, true) => node_host(id),
            (None, false) => "127.0.0.1".to_string(),
        };
        let private = self
            .options
            .private_listener
            .as_ref()
            .map(|(_, private)| format!("{private}:{}", free_port_on(private)));
        let mut hosts = vec![host.clone()];
        hosts.extend(
            self.options
                .private_listener
                .as_ref()
                .map(|(_, private)| private.clone()),
        );
        let mut args = self.options.args.clone();
        if let Some(private) = &private {
            args.extend(["--private-api-addr".to_string(), private.clone()]);
        }
        // One backup store for the whole cluster (as a shared directory would be), unless
        // the options choose another.
        if !args
            .iter()
            .any(|a| a == "--backup-dir" || a == "--backup-s3-bucket")
        {
            args.extend([
                "--backup-dir".to_string(),
                self.backup_dir().display().to_string(),
            ]);
        }
        let tls_dir = self.dir.path().join(format!("tls-{id}"));
        let kind = LeafKind::Node {
            id,
            hosts,
            domain: Some("svc.test.localhost".into()),
        };
        tls::issue_leaf(
            &self.ca_dir,
            &tls_dir,
            "node",
            kind,
            Validity::days_from_now(30),
        )?;
        std::fs::copy(self.ca_dir.join(tls::CA_CERT), tls_dir.join(tls::CA_CERT))?;
        let join = self.nodes.first().map(|n| n.cluster_addr.clone());
        let mut node = NodeProc {
            id,
            data_dir: self.dir.path().join(format!("node-{id}")),
            tls_dir,
            api_addr: format!("{host}:{}", free_port_on(&host)),
            cluster_addr: format!("{host}:{}", free_port_on(&host)),
            join,
            learner,
            env: self.options.env.clone(),
            args,
            private_addr: private,
            child: None,
        };
        node.spawn()?;
        self.nodes.push(node);
        self.wait_serving(id).await?;
        Ok(id)
    }

    /// The backup store every node shares (`--backup-dir`), unless the options name another.
    pub fn backup_dir(&self) -> PathBuf {
        self.dir.path().join("backups")
    }

    /// The node with id `id`.
    pub fn node(&mut self, id: u64) -> &mut NodeProc {
        self.nodes
            .iter_mut()
            .find(|n| n.id == id)
            .unwrap_or_else(|| panic!("no node {id} in the fixture"))
    }

    /// Stops node `id` and drops it from the fixture (after it was removed from the cluster).
    pub fn retire(&mut self, id: u64) {
        self.nodes.retain(|n| n.id != id);
    }

    /// `https://<api_addr>` of node `id`.
    pub fn url(&self, id: u64, path: &str) -> String {
        let node = self
            .nodes
            .iter()
            .find(|n| n.id == id)
            .unwrap_or_else(|| panic!("no node {id} in the fixture"));
        format!("https://{}{path}", node.api_addr)
    }

    /// The operator token.
    pub fn admin_token(&self) -> String {
        self.bootstrap["admin_token"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Waits until node `id` answers `/health` with `serving`.
    pub async fn wait_serving(&mut self, id: u64) -> anyhow::Result<()> {
        let deadline = Instant::now() + NODE_READY_TIMEOUT;
        let client = ca_client(&self.ca_dir)?;
        loop {
            let url = self.url(id, "/health");
            if let Ok(resp) = client.get(&url).send().await {
                if resp.status().is_success() {
                    return Ok(());
                }
            }
            if !self.node(id).is_running() {
                bail!("node {id} exited before serving:\n{}", self.node(id).log());
            }
            if Instant::now() > deadline {
                bail!(
                    "node {id} not serving after {NODE_READY_TIMEOUT:?}:\n{}",
                    self.node(id).log()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `GET /admin/cluster` through node `id`.
    pub async fn cluster_info(&self, id: u64) -> anyhow::Result<Value> {
        let resp = self
            .http
            .get(self.url(id, "/admin/cluster"))
            .bearer_auth(self.admin_token())
            .send()
            .await?;
        if !resp.status().is_success() {
            bail!("GET /admin/cluster on node {id}: {}", resp.status());
        }
        Ok(resp.json().await?)
    }

    /// Waits until node `via` reports a leader, and returns its id.
    pub async fn wait_leader(&self, via: u64, not: Option<u64>) -> anyhow::Result<u64> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(info) = self.cluster_info(via).await {
                if let Some(leader) = info["leader_id"].as_u64() {
                    if Some(leader) != not {
                        return Ok(leader);
                    }
                }
            }
            if Instant::now() > deadline {
                bail!("no leader seen through node {via}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Cluster {
    /// A field of bootstrap.json (empty when missing).
    fn bootstrapped(&self, field: &str) -> String {
        self.bootstrap[field]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// The default project's API key from bootstrap.
    pub fn api_key(&self) -> String {
        self.bootstrapped("api_key")
    }

    /// The default project's id from bootstrap.
    pub fn project_id(&self) -> String {
        self.bootstrapped("project_id")
    }

    /// The default organization's id from bootstrap.
    pub fn organization_id(&self) -> String {
        self.bootstrapped("organization_id")
    }

    /// Creates a project and a key with `roles` in it, returning (project id, key value).
    pub async fn project_with_key(
        &self,
        name: &str,
        roles: &[&str],
    ) -> anyhow::Result<(String, String)> {
        let project: Value = self
            .http
            .post(self.url(1, "/admin/projects"))
            .bearer_auth(self.admin_token())
            .json(&serde_json::json!({ "name": name }))
            .send()
            .await?
            .json()
            .await?;
        let id = project["id"].as_str().context("project id")?.to_string();
        let key = self.key_in(&id, roles).await?;
        Ok((id, key))
    }

    /// Creates a key with `roles` in project `project_id`, returning its value.
    pub async fn key_in(&self, project_id: &str, roles: &[&str]) -> anyhow::Result<String> {
        let created: Value = self
            .http
            .post(self.url(1, &format!("/admin/projects/{project_id}/api-keys")))
            .bearer_auth(self.admin_token())
            .json(&serde_json::json!({ "name": "test", "roles": roles }))
            .send()
            .await?
            .json()
            .await?;
        Ok(created["value"].as_str().context("key value")?.to_string())
    }

    /// Creates a dense index through node `via` and waits until every node reports it ready.
    pub async fn create_index(
        &self,
        via: u64,
        key: &str,
        name: &str,
        dimension: u32,
        metric: &str,
    ) -> anyhow::Result<Value> {
        let body = serde_json::json!({
            "name": name, "dimension": dimension, "metric": metric,
            "spec": {"serverless": {"cloud": "aws", "region": "us-east-1"}},
        });
        let resp = self
            .http
            .post(self.url(via, "/indexes"))
            .header("Api-Key", key)
            .json(&body)
            .send()
            .await?;
        anyhow::ensure!(
            resp.status().as_u16() == 201,
            "create index: {} {}",
            resp.status(),
            resp.text().await?
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let mut ready = 0;
            let mut last = Value::Null;
            for node in &self.nodes {
                let url = format!("https://{}/indexes/{name}", node.api_addr);
                if let Ok(resp) = self.http.get(url).header("Api-Key", key).send().await {
                    if let Ok(desc) = resp.json::<Value>().await {
                        if desc["status"]["ready"] == true {
                            ready += 1;
                        }
                        last = desc;
                    }
                }
            }
            if ready == self.nodes.len() {
                return Ok(last);
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "index {name} not ready on every node: {last}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// One page of audit events through node `via` as the operator: an organization's chain
    /// (`org`), or the cluster chain (`None`), with the query string `query`.
    pub async fn audit_page(
        &self,
        via: u64,
        org: Option<&str>,
        query: &str,
    ) -> anyhow::Result<Value> {
        let path = match org {
            Some(org) => format!("/admin/audit-logs?organization_id={org}&{query}"),
            None => format!("/admin/cluster/audit-logs?{query}"),
        };
        let resp = self
            .http
            .get(self.url(via, &path))
            .bearer_auth(self.admin_token())
            .send()
            .await?;
        let status = resp.status();
        let page: Value = resp.json().await.unwrap_or(Value::Null);
        anyhow::ensure!(
            status.is_success(),
            "{path} through node {via}: {status} {page}"
        );
        Ok(page)
    }

    /// Every event of a chain (as [`Cluster::audit_page`]) through node `via`, oldest first,
    /// read page by page, and the chain facts (head, anchor) of the first page.
    pub async fn audit_chain(
        &self,
        via: u64,
        org: Option<&str>,
    ) -> anyhow::Result<(Vec<Value>, Value)> {
        let mut events = Vec::new();
        let mut head = Value::Null;
        let mut after = String::new();
        loop {
            let query = format!("limit=1000&pagination_token={after}");
            let page = self.audit_page(via, org, &query).await?;
            if head.is_null() {
                head = page["chain"].clone();
            }
            events.extend(page["data"].as_array().into_iter().flatten().cloned());
            match page["pagination"]["next"].as_str() {
                Some(next) => after = next.to_string(),
                None => return Ok((events, head)),
            }
        }
    }

    /// A REST client trusting the cluster CA whose connections come from loopback address
    /// `source` (127.0.0.0/8 is all routed to `lo`): to the nodes, another client.
    pub fn client_from(&self, source: std::net::IpAddr) -> anyhow::Result<reqwest::Client> {
        let ca_pem = std::fs::read(self.ca_dir.join(tls::CA_CERT))?;
        Ok(reqwest::Client::builder()
            // The cluster CA only: no system store to load for each of many clients.
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(&ca_pem)?)
            .local_address(source)
            .timeout(Duration::from_secs(30))
            .build()?)
    }

    /// Issues a client certificate named `name` (its common name and DNS SAN) from the
    /// client CA, valid as `validity` says: (certificate PEM, key PEM).
    pub fn client_certificate(
        &self,
        name: &str,
        validity: Validity,
    ) -> anyhow::Result<(Vec<u8>, Vec<u8>)> {
        let ca = self
            .client_ca_dir
            .as_ref()
            .context("the cluster has no client CA (ClusterOptions::client_ca)")?;
        let out = self.dir.path().join("client-certs");
        tls::issue_leaf(
            ca,
            &out,
            name,
            LeafKind::Client { name: name.into() },
            validity,
        )?;
        Ok((
            std::fs::read(out.join(format!("{name}.pem")))?,
            std::fs::read(out.join(format!("{name}-key.pem")))?,
        ))
    }

    /// A REST client trusting the cluster CA that presents the client certificate `cert`
    /// with `key` (PEM) on every connection.
    pub fn client_with_certificate(
        &self,
        cert: &[u8],
        key: &[u8],
    ) -> anyhow::Result<reqwest::Client> {
        let ca_pem = std::fs::read(self.ca_dir.join(tls::CA_CERT))?;
        Ok(reqwest::Client::builder()
            // The cluster CA only: no system store to load for each of many clients.
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(&ca_pem)?)
            .identity(reqwest::Identity::from_pem(&[cert, b"\n", key].concat())?)
            .timeout(Duration::from_secs(30))
            .build()?)
    }

    /// An admin call through node 1 as the operator: (status, body; `Null` when the body
    /// is not JSON).
    pub async fn operator_call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (reqwest::StatusCode, Value) {
        let mut request = self
            .http
            .request(method, self.url(1, path))
            .bearer_auth(self.admin_token());
        if let Some(body) = body {
            request = request.json(&body);
        }
        let resp = request.send().await.expect("admin request sent");
        let status = resp.status();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// A data-plane REST call to index `index` through node `via` (explicit index header).
    pub fn data(
        &self,
        via: u64,
        key: &str,
        index: &str,
        method: reqwest::Method,
        path: &str,
    ) -> reqwest::RequestBuilder {
        self.http
            .request(method, self.url(via, path))
            .header("Api-Key", key)
            .header("X-Conifer-Index", index)
    }
}

/// The answer to a raw gRPC call ([`Cluster::grpc_raw`]).
#[derive(Debug)]
pub struct GrpcAnswer {
    /// HTTP status.
    pub http_status: u16,
    /// `grpc-status` when the node answered trailers-only (every refusal does); `None` for a
    /// reply whose status travels in trailers (a success).
    pub code: Option<tonic::Code>,
    /// `grpc-message`, percent-decoded.
    pub message: String,
}

/// A data-plane gRPC request carrying `message` with the API key and the index named as the
/// metadata Conifer reads (`api-key`, `x-conifer-index`).
pub fn grpc_request<T>(message: T, key: &str, index: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    let metadata = request.metadata_mut();
    metadata.insert("api-key", key.parse().expect("an API key is ASCII"));
    metadata.insert(
        "x-conifer-index",
        index.parse().expect("an index name is ASCII"),
    );
    request
}

impl Cluster {
    /// A typed gRPC client of the Pinecone data plane on node `via`, over TLS trusting the
    /// cluster CA. Calls need `api-key` (and for the index, `x-conifer-index`) metadata.
    pub async fn grpc_data(
        &self,
        via: u64,
    ) -> anyhow::Result<
        conifer_proto::pinecone::vector_service_client::VectorServiceClient<
            tonic::transport::Channel,
        >,
    > {
        self.grpc_data_at(&self.url(via, "")).await
    }

    /// A typed gRPC client of the Pinecone data plane at `url` (`https://<IP>:<port>`: a
    /// node's client port or an index's own port), over TLS trusting the cluster CA.
    pub async fn grpc_data_at(
        &self,
        url: &str,
    ) -> anyhow::Result<
        conifer_proto::pinecone::vector_service_client::VectorServiceClient<
            tonic::transport::Channel,
        >,
    > {
        let ca_pem = std::fs::read(self.ca_dir.join(tls::CA_CERT))?;
        let url = url.to_string();
        let host = url
            .trim_start_matches("https://")
            .rsplit_once(':')
            .map(|(host, _)| host.to_string())
            .unwrap_or_default();
        let tls = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(ca_pem))
            .domain_name(host);
        let channel = tonic::transport::Channel::from_shared(url)?
            .tls_config(tls)?
            .connect()
            .await?;
        Ok(conifer_proto::pinecone::vector_service_client::VectorServiceClient::new(channel))
    }

    /// A gRPC call through node `via` whose HTTP/2 body is exactly `body` (a frame the test
    /// builds, possibly malformed), to `path` (`/VectorService/Upsert`), with `key` and the
    /// index header.
    pub async fn grpc_raw(
        &self,
        via: u64,
        key: &str,
        index: &str,
        path: &str,
        body: Vec<u8>,
    ) -> anyhow::Result<GrpcAnswer> {
        let ca_pem = std::fs::read(self.ca_dir.join(tls::CA_CERT))?;
        let client = reqwest::Client::builder()
            // The cluster CA only: no system store to load for each of many clients.
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(&ca_pem)?)
            .timeout(Duration::from_secs(30))
            .http2_prior_knowledge()
            .build()?;
        let resp = client
            .post(self.url(via, path))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .header("api-key", key)
            .header("x-conifer-index", index)
            .body(body)
            .send()
            .await?;
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let code = header("grpc-status")
            .and_then(|c| c.parse::<i32>().ok())
            .map(tonic::Code::from_i32);
        let message = header("grpc-message").unwrap_or_default();
        let message = percent_decode(&message);
        Ok(GrpcAnswer {
            http_status: resp.status().as_u16(),
            code,
            message,
        })
    }
}

/// `text` with gRPC's percent-encoding of `grpc-message` undone.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Some(b) = text
                .get(i + 1..i + 3)
                .and_then(|hex| u8::from_str_radix(hex, 16).ok())
            {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Calls `probe` until it answers `want` (other nodes apply a change within the
/// control-plane lease), for at most 10 s: the last answer.
pub async fn until<F, Fut>(want: reqwest::StatusCode, mut probe: F) -> (reqwest::StatusCode, Value)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = (reqwest::StatusCode, Value)>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let answer = probe().await;
        if answer.0 == want || Instant::now() > deadline {
            return answer;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// How long revocations take to reach every node: waits until `probe(node)` answers `ok`
/// on each of `nodes`, runs `revoke`, then probes every node until each has refused once.
/// Fails if a probe sent later than `LEASE_MS` after the revocation was acknowledged was
/// accepted, or a refusal is not 401, 403, 404 or the lease's 503; returns the longest
/// accepted delay seen.
pub async fn measure_revocation<P, Fut, R>(
    nodes: &[u64],
    what: &str,
    ok: u16,
    probe: P,
    revoke: R,
) -> Duration
where
    P: Fn(u64) -> Fut,
    Fut: std::future::Future<Output = u16>,
    R: std::future::Future<Output = ()>,
{
    use conifer_node::control::LEASE_MS;
    for &node in nodes {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let status = probe(node).await;
            if status == ok {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: not accepted on node {node} before revocation ({status})"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    revoke.await;
    let acked = Instant::now();
    let mut longest_accepted = Duration::ZERO;
    let mut refused = vec![false; nodes.len()];
    while refused.iter().any(|r| !r) {
        for (i, &node) in nodes.iter().enumerate() {
            let sent = acked.elapsed();
            let status = probe(node).await;
            if status == ok {
                longest_accepted = longest_accepted.max(sent);
                assert!(
                    sent <= Duration::from_millis(LEASE_MS),
                    "{what}: node {node} accepted a probe sent {sent:?} after the revocation was acknowledged"
                );
            } else {
                assert!(
                    matches!(status, 401 | 403 | 404 | 503),
                    "{what}: node {node} answered {status}"
                );
                refused[i] = true;
            }
        }
        assert!(
            acked.elapsed() < Duration::from_secs(10),
            "{what}: still accepted after 10 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    println!("{what}: refused on every node; longest accepted delay {longest_accepted:?}");
    longest_accepted
}

/// A client that trusts the CA in `ca_dir` (used before `Cluster::http` exists).
pub fn ca_client(ca_dir: &Path) -> anyhow::Result<reqwest::Client> {
    let ca_pem = std::fs::read(ca_dir.join(tls::CA_CERT))?;
    Ok(reqwest::Client::builder()
        // The cluster CA only: no system store to load for each of many clients.
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&ca_pem)?)
        .timeout(Duration::from_secs(5))
        .build()?)
}

/// Saved HNSW graph chunks of shard groups (state key tag 0x05 after the group id) in a
/// stopped node's database, and shard-group snapshots.
pub fn saved_graphs_and_snapshots(data_dir: &Path) -> (usize, usize) {
    use conifer_raft::storage::{CF_SNAPSHOTS, CF_STATE};
    let opts = conifer_raft::rocksdb::Options::default();
    let db = conifer_raft::rocksdb::DB::open_cf_for_read_only(
        &opts,
        data_dir.join("db"),
        conifer_raft::storage::COLUMN_FAMILIES,
        false,
    )
    .unwrap();
    let count = |cf: &str, wanted: &dyn Fn(&[u8]) -> bool| {
        db.iterator_cf(
            db.cf_handle(cf).unwrap(),
            conifer_raft::rocksdb::IteratorMode::Start,
        )
        .filter(|item| {
            let (key, _) = item.as_ref().unwrap();
            key.len() > 8 && key[..8] != [0u8; 8] && wanted(key)
        })
        .count()
    };
    (
        count(CF_STATE, &|key: &[u8]| key[8] == 0x05),
        count(CF_SNAPSHOTS, &|_: &[u8]| true),
    )
}
