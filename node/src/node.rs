//! A node's life: open storage, load or create certificates, start Raft group 0, serve the
//! cluster and client ports, and bootstrap a new cluster or join an existing one.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use conifer_proto::internal::internal_server::InternalServer;
use conifer_proto::internal::JoinRequest;
use conifer_raft::log_store::LogStore;
use conifer_raft::network::{NetworkFactory, PeerChannels, MAX_RAFT_MESSAGE_BYTES};
use conifer_raft::state_machine::StateMachineStore;
use conifer_raft::types::CONTROL_GROUP;
use conifer_raft::{GroupRegistry, NodeId, NodeInfo, NodeStorage, Raft};
use serde::Serialize;
use tokio::net::TcpListener;

use crate::api::{self, ApiState};
use crate::auth;
use crate::auth::throttle::{SourceRate, UNKNOWN_CREDENTIAL_CATCH_UPS_PER_S};
use crate::cluster::{InternalService, JOIN_RETRY_MS};
use crate::control::rotation::RootRotator;
use crate::control::state::{ApiKey, ApiKeyRole, OperatorToken, Organization, Project};
use crate::control::{Command, ControlMachine, ControlPlane};
use crate::crypto::kms::Kms;
use crate::crypto::rotation::LocalRoot;
use crate::crypto::{
    node_data_key, write_private_file, KeyCache, KeyProvider, LocalKeyring, RootKeyVersion,
};
use crate::dataplane::router::{Addressing, Router};
use crate::shard::engine::EngineConfig;
use crate::shard::manager::ShardManager;
use crate::tls::{self, LeafKind, NodeTls, Validity};

/// Raft heartbeat period of group 0.
pub const RAFT_HEARTBEAT_MS: u64 = 150;
/// Lower bound of the randomized election timeout.
pub const RAFT_ELECTION_TIMEOUT_MIN_MS: u64 = 800;
/// Upper bound of the randomized election timeout.
pub const RAFT_ELECTION_TIMEOUT_MAX_MS: u64 = 1_600;
/// A snapshot is taken after this many applied entries since the last one.
pub const RAFT_SNAPSHOT_EVERY_ENTRIES: u64 = 1_000;
/// Entries kept in the log behind a snapshot, so slow followers rarely need the snapshot.
pub const RAFT_LOG_KEEP_BEHIND_SNAPSHOT_ENTRIES: u64 = 200;
/// Snapshot chunk size on the wire.
pub const RAFT_SNAPSHOT_CHUNK_BYTES: u64 = 1024 * 1024;
/// Longest the bootstrap waits for the new single-node cluster to elect itself.
pub const BOOTSTRAP_LEADER_TIMEOUT_MS: u64 = 30_000;
/// Name of the credentials file written on bootstrap.
pub const BOOTSTRAP_FILE: &str = "bootstrap.json";

/// Where the local keyring (the root key wrapping the node's data key) lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Keyring {
    /// `DATA_DIR/keyring.json`: protects data at rest from whoever reads the disk without
    /// the data directory (a stray SST, a log), not from a copy of the directory.
    InDataDir,
    /// A file outside the data directory (`--keyring`).
    File(PathBuf),
    /// No local keyring: the root is this AWS KMS key (`--root-key-kms ARN`).
    Kms(String),
}

/// How to run a node (`conifer serve`).
#[derive(Clone, Debug)]
pub struct ServeConfig {
    /// This node's id (unique, never reused).
    pub node_id: NodeId,
    /// Where everything of this node lives.
    pub data_dir: PathBuf,
    /// Where the root key lives.
    pub keyring: Keyring,
    /// Where AWS KMS is reached instead of its regional endpoint (`--kms-endpoint`).
    pub kms_endpoint: Option<String>,
    /// Lifetime of an unwrapped project or index key in memory, in milliseconds.
    pub key_cache_ttl_ms: u64,
    /// Client (REST + gRPC) listen address.
    pub api_addr: SocketAddr,
    /// The private listener (`--private-api-addr`): the client API again, on an address of
    /// its own, for projects' private endpoints.
    pub private_api_addr: Option<SocketAddr>,
    /// Host name or IP clients and peers reach this node by (`--advertise-addr`); `None`:
    /// the IPs of the listen addresses.
    pub advertise_host: Option<String>,
    /// Cluster (mutual-TLS) listen address.
    pub cluster_addr: SocketAddr,
    /// Directory with `ca.pem`, `node.pem`, `node-key.pem`; `None` = `<data_dir>/tls`,
    /// generated on first start of a bootstrapping node.
    pub tls_dir: Option<PathBuf>,
    /// What the client port and index ports speak.
    pub client_transport: ClientTransport,
    /// TLS versions and cipher suites of the client port and index ports.
    pub tls_policy: crate::tls::TlsPolicy,
    /// Days before a certificate's expiry from which it is reported with a warning
    /// (`--cert-expiry-warning-days`).
    pub cert_expiry_warning_days: u32,
    /// The client CA (`--client-ca`, a PEM bundle): client certificates it issued
    /// authenticate as the service accounts their names are bound to. `None`: the client
    /// port asks for no client certificate.
    pub client_ca: Option<PathBuf>,
    /// Cluster address of any member to join; `None` bootstraps a new cluster.
    pub join: Option<String>,
    /// Stay a learner after joining instead of becoming a voter.
    pub learner: bool,
    /// Domain of index host names (`<index>-<project>.<domain>`).
    pub domain: String,
    /// Most records one project holds over all its indexes.
    pub max_records_per_project: u64,
    /// Where backups are kept.
    pub backup_store: BackupStoreConfig,
    /// Most bytes of backups one project holds.
    pub max_backup_bytes_per_project: u64,
    /// Plaintext bytes of records per backup chunk.
    pub backup_chunk_bytes: usize,
    /// Index port range (first, last), inclusive; `None`: index hosts are host names.
    pub index_ports: Option<(u16, u16)>,
    /// Lifetime of issued bearer tokens, in seconds.
    pub token_ttl_s: u64,
    /// How long audit events are kept, in seconds.
    pub audit_retention_s: u64,
    /// Capacity of the queue of refusal and failed sign-in events.
    pub audit_queue_events: usize,
    /// Vector engine tuning.
    pub engine: EngineConfig,
}

/// Where a node keeps backups (`--backup-dir` or `--backup-s3-bucket`).
#[derive(Clone, Debug)]
pub enum BackupStoreConfig {
    /// A directory (shared by every node of a cluster).
    Dir(PathBuf),
    /// An S3-compatible bucket.
    S3(crate::backup::s3::S3Location),
}

impl BackupStoreConfig {
    /// Opens the store (creating the directory).
    pub fn open(&self) -> anyhow::Result<crate::backup::BackupStore> {
        Ok(match self {
            BackupStoreConfig::Dir(dir) => crate::backup::BackupStore::Local(
                crate::backup::LocalDir::open(dir)
                    .with_context(|| format!("opening the backup directory {}", dir.display()))?,
            ),
            BackupStoreConfig::S3(location) => {
                crate::backup::BackupStore::S3(crate::backup::s3::S3Store::new(location.clone()))
            }
        })
    }
}

impl ServeConfig {
    /// The host others reach `listen` by: `--advertise-addr`, else its IP (IPv6 in brackets).
    pub fn advertised_host(&self, listen: SocketAddr) -> String {
        match (&self.advertise_host, listen.ip()) {
            (Some(host), _) => host.clone(),
            (None, std::net::IpAddr::V6(v6)) => format!("[{v6}]"),
            (None, v4) => v4.to_string(),
        }
    }

    /// `host:port` of the client port as clients and peers reach it.
    pub fn advertised_api_addr(&self) -> String {
        format!(
            "{}:{}",
            self.advertised_host(self.api_addr),
            self.api_addr.port()
        )
    }

    /// `host:port` of the cluster port as peers reach it.
    pub fn advertised_cluster_addr(&self) -> String {
        format!(
            "{}:{}",
            self.advertised_host(self.cluster_addr),
            self.cluster_addr.port()
        )
    }
}

/// What the client port and index ports speak (`serve --client-tls-cert`, `--dev-http`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientTransport {
    /// TLS 1.2/1.3 with the node certificate, which chains to the cluster CA.
    NodeCertificate,
    /// TLS 1.2/1.3 with a certificate chain and key of the operator's (PEM files).
    Certificate {
        /// The chain, leaf first.
        cert: PathBuf,
        /// Its private key.
        key: PathBuf,
    },
    /// Plain HTTP on a loopback address (development only; `serve` refuses other addresses).
    DevHttp,
}

impl ClientTransport {
    /// The URL scheme clients use.
    pub fn scheme(&self) -> &'static str {
        match self {
            ClientTransport::DevHttp => "http",
            _ => "https",
        }
    }
}

/// The credentials written to `bootstrap.json` (mode 0600) on first start.
#[derive(Serialize)]
pub struct BootstrapFile {
    /// URL of the client port.
    pub api_url: String,
    /// Path of the cluster CA certificate, which the client port's certificate chains to;
    /// `None` when the client port presents a certificate of the operator's
    /// (`--client-tls-cert`): clients trust its issuer as they already do.
    pub ca_cert: Option<String>,
    /// Operator token (break-glass cluster admin).
    pub admin_token: String,
    /// Default organization.
    pub organization_id: String,
    /// Default project.
    pub project_id: String,
    /// `ProjectEditor` API key of the default project.
    pub api_key: String,
}

fn raft_config() -> anyhow::Result<Arc<openraft::Config>> {
    let config = openraft::Config {
        cluster_name: "conifer".into(),
        heartbeat_interval: RAFT_HEARTBEAT_MS,
        election_timeout_min: RAFT_ELECTION_TIMEOUT_MIN_MS,
        election_timeout_max: RAFT_ELECTION_TIMEOUT_MAX_MS,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(RAFT_SNAPSHOT_EVERY_ENTRIES),
        max_in_snapshot_log_to_keep: RAFT_LOG_KEEP_BEHIND_SNAPSHOT_ENTRIES,
        snapshot_max_chunk_size: RAFT_SNAPSHOT_CHUNK_BYTES,
        ..Default::default()
    };
    Ok(Arc::new(config.validate()?))
}

/// Creates the CA and this node's certificate under `dir` (first start of a bootstrapping node).
fn create_default_certs(dir: &Path, config: &ServeConfig) -> anyhow::Result<()> {
    tls::generate_ca(dir, "conifer")?;
    let mut hosts = vec!["localhost".to_string(), "127.0.0.1".to_string()];
    let private = config.private_api_addr.map(|a| a.ip());
    for ip in [
        Some(config.api_addr.ip()),
        Some(config.cluster_addr.ip()),
        private,
    ]
    .into_iter()
    .flatten()
    {
        if !ip.is_unspecified() && !hosts.contains(&ip.to_string()) {
            hosts.push(ip.to_string());
        }
    }
    if let Some(host) = &config.advertise_host {
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        if !hosts.contains(&host) {
            hosts.push(host);
        }
    }
    let kind = LeafKind::Node {
        id: config.node_id,
        hosts,
        domain: Some(config.domain.clone()),
    };
    tls::issue_leaf(
        dir,
        dir,
        "node",
        kind,
        Validity::days_from_now(tls::LEAF_VALIDITY_DAYS),
    )?;
    Ok(())
}

/// A running node's handles.
pub struct RunningNode {
    /// Raft group 0.
    pub raft: Raft,
    /// The control plane.
    pub control: ControlPlane,
}

/// Open files a node wants: every client connection ([`api::conn::MAX_CLIENT_CONNECTIONS`])
/// plus room for RocksDB's files, peer channels and the cluster port.
pub const MIN_OPEN_FILES: u64 = api::conn::MAX_CLIENT_CONNECTIONS as u64 + 2_048;

/// Raises the process's open-file limit to its hard limit (a fresh Debian session starts at
/// a soft 1,024, less than the client connections a node admits); warns when the hard
/// limit is below [`MIN_OPEN_FILES`].
fn raise_open_files() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) if limit < MIN_OPEN_FILES => tracing::warn!(
            "the open-file limit is {limit} (hard); a node wants {MIN_OPEN_FILES} to hold its \
             client connections: raise it (ulimit -Hn, LimitNOFILE=)"
        ),
        Ok(_) => {}
        Err(e) => tracing::warn!("raising the open-file limit failed: {e}"),
    }
}

/// Starts the node and serves until SIGINT / SIGTERM.
pub async fn run(config: ServeConfig) -> anyhow::Result<()> {
    raise_open_files();
    let node = start(&config).await?;
    wait_for_signal().await;
    tracing::info!("shutting down");
    let _ = node.raft.shutdown().await;
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Starts every part of the node and returns once it is bootstrapped or joined.
pub async fn start(config: &ServeConfig) -> anyhow::Result<RunningNode> {
    // Before anything slow (the keyring, a join): SIGHUP reloads certificates, never ends
    // the process.
    let hangups = tls::reload::Certificates::hangups();
    let data_dir = &config.data_dir;
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    std::fs::set_permissions(data_dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("restricting {}", data_dir.display()))?;

    let tls_dir = config
        .tls_dir
        .clone()
        .unwrap_or_else(|| data_dir.join("tls"));
    let load_tls = || -> anyhow::Result<NodeTls> {
        let mut node_tls = NodeTls::load(&tls_dir)?;
        let cluster_ip = config.cluster_addr.ip();
        node_tls.source_ip = (!cluster_ip.is_unspecified()).then_some(cluster_ip);
        Ok(node_tls)
    };

    // The keyring comes before the certificates a bootstrapping node generates; a joining
    // node has its certificate already (it needs it to receive the cluster's root key).
    let kms = Arc::new(Kms::new(config.kms_endpoint.clone()));
    let (root, keyring): (Arc<dyn KeyProvider>, Option<Arc<LocalKeyring>>) = match &config.keyring {
        Keyring::Kms(arn) => {
            tracing::info!(key = %arn, "the root key is in AWS KMS");
            (Arc::new(kms.key(arn)?), None)
        }
        _ => {
            let keyring = Arc::new(open_keyring(config, load_tls).await?);
            (keyring.clone(), Some(keyring))
        }
    };
    let data_key = node_data_key(data_dir, root.as_ref())
        .await
        .with_context(|| format!("unwrapping the node data key with {}", root.describe()))?;
    let keys = Arc::new(KeyCache::new(
        root,
        kms,
        Duration::from_millis(config.key_cache_ttl_ms),
    ));
    let storage = NodeStorage::open(&data_dir.join("db"), Arc::new(data_key))?
        .with_group_ciphers(keys.clone());

    if !tls_dir.join(tls::NODE_CERT).exists() {
        if config.join.is_some() || config.tls_dir.is_some() {
            bail!(
                "no node certificate in {}: create one with `conifer certs node --id {}`",
                tls_dir.display(),
                config.node_id
            );
        }
        create_default_certs(&tls_dir, config)?;
    }
    let node_tls = load_tls()?;
    let certs = tls::reload::Certificates::load(tls::reload::TlsFiles {
        dir: tls_dir.clone(),
        node_id: config.node_id,
        client_port: match &config.client_transport {
            ClientTransport::Certificate { cert, key } => Some((cert.clone(), key.clone())),
            _ => None,
        },
        client_ca: config.client_ca.clone(),
        policy: config.tls_policy.clone(),
        plain_client_port: config.client_transport == ClientTransport::DevHttp,
        source_ip: node_tls.source_ip,
    })
    .with_context(|| format!("the certificates of {}", tls_dir.display()))?;
    tokio::spawn(
        certs
            .clone()
            .keep_reloading(hangups, config.cert_expiry_warning_days),
    );

    let channel_certs = certs.clone();
    let peers = PeerChannels::new(
        config.node_id,
        Arc::new(move |target, node| {
            tls::peer::channel(&channel_certs, &node.cluster_addr, &tls::node_name(target))
        }),
    );
    // Reloaded certificates: new peer connections present them.
    let mut changes = certs.subscribe();
    let reconnect = peers.clone();
    tokio::spawn(async move {
        while changes.changed().await.is_ok() {
            reconnect.forget_all();
        }
    });
    let registry = GroupRegistry::new(peers.clone());
    let log = LogStore::new(CONTROL_GROUP, storage.clone());
    let sm = StateMachineStore::open(CONTROL_GROUP, storage.clone(), ControlMachine::default())?;
    let handle = sm.handle();
    let network = NetworkFactory::new(CONTROL_GROUP, peers.clone());
    let raft = Raft::new(config.node_id, raft_config()?, network, log, sm).await?;
    registry.insert(CONTROL_GROUP, raft.clone());
    conifer_raft::registry::elect_if_sole_voter(&raft, config.node_id).await;
    let control = ControlPlane::new(raft.clone(), handle, peers.clone());
    tokio::spawn(control.clone().keep_lease());
    let audit =
        crate::control::audit_sink::AuditSink::start(control.clone(), config.audit_queue_events);
    let shards = ShardManager::new(
        config.engine,
        storage.clone(),
        registry.clone(),
        control.clone(),
        raft_config()?,
        keys.clone(),
    );
    let router = Router::new(
        control.clone(),
        shards.clone(),
        Addressing {
            domain: config.domain.clone(),
            api_addr: config.api_addr,
            private_api_addr: config.private_api_addr,
            advertised_host: config.advertised_host(config.api_addr),
            index_ports: config.index_ports,
            plain_http: config.client_transport == ClientTransport::DevHttp,
        },
        config.max_records_per_project,
    );
    let backups = crate::backup::Backups::new(
        router.clone(),
        config.backup_store.open()?,
        config.max_backup_bytes_per_project,
        config.backup_chunk_bytes,
    );
    tracing::info!(store = %backups.store_location(), "backup store");
    tracing::info!(
        simd = crate::shard::native::simd_level(),
        "vector engine distance kernels"
    );
    if config.join.is_some()
        && matches!(&config.backup_store, BackupStoreConfig::Dir(d) if d.starts_with(data_dir))
    {
        tracing::warn!(
            "backups go to {} on this node only: a backup written here cannot be restored \
             through another node; give every node the same --backup-dir on a shared file \
             system, or --backup-s3-bucket",
            backups.store_location()
        );
    }

    let cluster_listener = TcpListener::bind(config.cluster_addr)
        .await
        .with_context(|| format!("binding cluster port {}", config.cluster_addr))?;
    let local_root = keyring.map(|keyring| LocalRoot::new(keyring, data_dir.to_path_buf()));
    let rotator = local_root
        .clone()
        .map(|local| RootRotator::new(control.clone(), local));
    if let Some(rotator) = &rotator {
        tokio::spawn(rotator.clone().run());
    }
    let internal = InternalServer::new(InternalService::new(
        registry.clone(),
        control.clone(),
        router.clone(),
        local_root,
    ))
    .max_decoding_message_size(MAX_RAFT_MESSAGE_BYTES)
    .max_encoding_message_size(MAX_RAFT_MESSAGE_BYTES);
    let cluster_server = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(tls::PEER_KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(tls::PEER_KEEPALIVE_TIMEOUT))
        .add_service(internal);
    let incoming = tls::peer::cluster_incoming(cluster_listener, certs.clone());
    tokio::spawn(async move {
        if let Err(e) = cluster_server.serve_with_incoming(incoming).await {
            tracing::error!("cluster port stopped: {e}");
        }
    });

    let api_listener = TcpListener::bind(config.api_addr)
        .await
        .with_context(|| format!("binding client port {}", config.api_addr))?;
    let connections = Arc::new(api::conn::ConnectionTable::default());
    match &config.client_transport {
        ClientTransport::NodeCertificate => {}
        ClientTransport::Certificate { cert, .. } => {
            tracing::info!(cert = %cert.display(), "client port presents its own certificate");
        }
        ClientTransport::DevHttp => {
            // Also past any log filter: this must not go unnoticed.
            eprintln!(
                "WARNING: --dev-http: {} serves plain HTTP without TLS (development only)",
                config.api_addr
            );
            tracing::warn!(
                api = %config.api_addr,
                "DEVELOPMENT MODE (--dev-http): the client port and index ports speak plain \
                 HTTP without TLS; API keys, tokens and vectors cross loopback unencrypted. \
                 Never use it beyond one machine."
            );
        }
    }
    if config.client_transport != ClientTransport::DevHttp {
        tracing::info!(
            api = %config.api_addr,
            "client TLS: {}",
            config.tls_policy.describe()
        );
    }
    if let Some(ca) = &config.client_ca {
        tracing::info!(
            client_ca = %ca.display(),
            "client certificates: accepted from the client CA, each authenticating as the \
             service account one of its names is bound to"
        );
    }
    let state = ApiState {
        control: control.clone(),
        router,
        signin: Arc::new(api::signin::SignIn::new(config.token_ttl_s)),
        audit: audit.clone(),
        connections: connections.clone(),
        catch_ups: Arc::new(SourceRate::per_second(UNKNOWN_CREDENTIAL_CATCH_UPS_PER_S)),
        keys: keys.clone(),
        rotator,
        certificates: certs.clone(),
        cert_expiry_warning_days: config.cert_expiry_warning_days,
        backups: backups.clone(),
    };
    let own_ports: Vec<u16> = [Some(config.api_addr), Some(config.cluster_addr)]
        .into_iter()
        .chain([config.private_api_addr])
        .flatten()
        .map(|a| a.port())
        .collect();
    let listeners = [(config.api_addr, api::access::Listener::Public)]
        .into_iter()
        .chain(
            config
                .private_api_addr
                .map(|a| (a, api::access::Listener::Private)),
        );
    for (addr, kind) in listeners {
        if let Some((first, last)) = config.index_ports {
            tracing::info!(first, last, ip = %addr.ip(), ?kind, "index ports: each index gets its own port");
            tokio::spawn(api::ports::serve_index_ports(
                addr.ip(),
                own_ports.clone(),
                control.clone(),
                certs.clone(),
                api::index_port_routes(state.clone()),
                connections.clone(),
                kind,
            ));
        }
    }
    if let Some(private) = config.private_api_addr {
        let listener = TcpListener::bind(private)
            .await
            .with_context(|| format!("binding the private listener {private}"))?;
        tracing::info!(%private, "private listener: projects' private endpoints");
        tokio::spawn(api::serve(
            listener,
            certs.clone(),
            api::routes(state.clone()),
            connections.clone(),
            None,
            api::access::Listener::Private,
        ));
    }
    let app = api::routes(state);
    tokio::spawn(api::serve(
        api_listener,
        certs,
        app,
        connections,
        None,
        api::access::Listener::Public,
    ));
    tokio::spawn(crate::control::audit_sink::keep_retention(
        control.clone(),
        config.audit_retention_s,
    ));
    tracing::info!(node = config.node_id, api = %config.api_addr, cluster = %config.cluster_addr, "node listening");

    let me = NodeInfo {
        cluster_addr: config.advertised_cluster_addr(),
        api_addr: config.advertised_api_addr(),
    };
    match &config.join {
        None => bootstrap(config, &raft, &control, &keys, me, &tls_dir).await?,
        Some(addr) => {
            if !raft.is_initialized().await? {
                join(config, &node_tls, addr, me).await?;
            }
        }
    }
    shards.spawn();
    backups.spawn();
    Ok(RunningNode { raft, control })
}

async fn bootstrap(
    config: &ServeConfig,
    raft: &Raft,
    control: &ControlPlane,
    keys: &KeyCache,
    me: NodeInfo,
    tls_dir: &Path,
) -> anyhow::Result<()> {
    if !raft.is_initialized().await? {
        tracing::info!("initializing a new single-node cluster");
        raft.initialize(std::collections::BTreeMap::from([(config.node_id, me)]))
            .await?;
    }
    let path = config.data_dir.join(BOOTSTRAP_FILE);
    if path.exists() {
        return Ok(());
    }
    raft.wait(Some(Duration::from_millis(BOOTSTRAP_LEADER_TIMEOUT_MS)))
        .metrics(|m| m.current_leader.is_some(), "a leader is elected")
        .await
        .context("waiting for the new cluster to elect a leader")?;
    if control.read(|s| !s.organizations.is_empty()) {
        // Bootstrapped before, but the credentials file is gone: never mint a second set.
        tracing::warn!(
            "{} is missing but the cluster is bootstrapped; not recreating it",
            path.display()
        );
        return Ok(());
    }
    let created_at = crate::now_rfc3339();
    let organization = Organization {
        id: uuid::Uuid::new_v4().to_string(),
        name: "default".into(),
        created_at: created_at.clone(),
    };
    let project_id = uuid::Uuid::new_v4().to_string();
    let project = Project {
        key: keys.new_project_key(&project_id).await?,
        id: project_id,
        organization_id: organization.id.clone(),
        name: "default".into(),
        max_pods: 0,
        force_encryption_with_cmek: false,
        cmek_key_arn: None,
        require_client_certificate: false,
        created_at: created_at.clone(),
    };
    let key_secret = auth::new_api_key();
    let api_key = ApiKey {
        id: key_secret.id.clone(),
        project_id: project.id.clone(),
        name: "default".into(),
        roles: vec![ApiKeyRole::ProjectEditor],
        secret_sha256: key_secret.secret_sha256.clone(),
        created_at: created_at.clone(),
    };
    let token_secret = auth::new_operator_token();
    let operator_token = OperatorToken {
        id: token_secret.id.clone(),
        secret_sha256: token_secret.secret_sha256.clone(),
        created_at,
    };
    let file = BootstrapFile {
        api_url: format!(
            "{}://{}",
            config.client_transport.scheme(),
            config.advertised_api_addr()
        ),
        ca_cert: match config.client_transport {
            ClientTransport::Certificate { .. } => None,
            _ => Some(
                std::fs::canonicalize(tls_dir.join(tls::CA_CERT))?
                    .display()
                    .to_string(),
            ),
        },
        admin_token: token_secret.value,
        organization_id: organization.id.clone(),
        project_id: project.id.clone(),
        api_key: key_secret.value,
    };
    let context = crate::audit::AuditContext::internal(
        "cluster.bootstrap",
        crate::audit::ActorRef::operator(&operator_token.id),
        config.node_id,
    );
    control
        .propose_as(
            context,
            Command::Bootstrap {
                organization,
                project,
                api_key,
                operator_token,
                signing_key: auth::token::new_signing_key(),
                cluster_id: uuid::Uuid::new_v4().simple().to_string(),
            },
        )
        .await?;
    write_private_file(&path, &serde_json::to_vec_pretty(&file)?)?;
    tracing::info!("bootstrapped; credentials in {}", path.display());
    Ok(())
}

/// The node's local keyring: the file given (or `DATA_DIR/keyring.json`, with a warning
/// saying what that does not protect against). A node joining a cluster that has no
/// keyring file yet receives the cluster's root key versions from the member it joins
/// through; one that has a file keeps it.
async fn open_keyring(
    config: &ServeConfig,
    load_tls: impl FnOnce() -> anyhow::Result<NodeTls>,
) -> anyhow::Result<LocalKeyring> {
    let path = match &config.keyring {
        Keyring::File(path) => path.clone(),
        Keyring::Kms(_) => bail!("the root key is in AWS KMS: there is no local keyring"),
        Keyring::InDataDir => {
            let path = config.data_dir.join(crate::crypto::KEYRING_FILE);
            let warning = format!(
                "the keyring is in the data directory ({}): data at rest is sealed against \
                 whoever reads the disk without that file, but anyone holding a copy of the \
                 data directory (a backup, a disk snapshot) can decrypt it; give --keyring \
                 PATH on another disk or mount",
                path.display()
            );
            tracing::warn!("{warning}");
            eprintln!("warning: {warning}");
            path
        }
    };
    match &config.join {
        Some(addr) if !path.exists() => {
            let node_tls = load_tls().context(
                "a joining node needs its certificate to receive the cluster's root key",
            )?;
            let (versions, current) = fetch_root_keys(config, &node_tls, addr).await?;
            tracing::info!(
                keyring = %path.display(),
                versions = versions.len(),
                "received the cluster's root key versions"
            );
            Ok(LocalKeyring::adopt(&path, versions, current)?)
        }
        _ => Ok(LocalKeyring::open_or_create_file(&path)?),
    }
}

/// Asks the member at `addr` for the cluster's root key versions (retrying while it cannot
/// be reached).
async fn fetch_root_keys(
    config: &ServeConfig,
    node_tls: &NodeTls,
    addr: &str,
) -> anyhow::Result<(Vec<RootKeyVersion>, u32)> {
    let channel = node_tls.join_channel(addr).map_err(anyhow::Error::msg)?;
    let mut client = conifer_proto::internal::internal_client::InternalClient::new(channel);
    let request = conifer_proto::internal::RootKeysRequest {
        from_node: config.node_id,
    };
    let reply = loop {
        match client.root_keys(request).await {
            Ok(reply) => break reply.into_inner(),
            Err(status)
                if matches!(
                    status.code(),
                    tonic::Code::Unavailable | tonic::Code::DeadlineExceeded
                ) =>
            {
                tracing::info!(
                    "root keys via {addr} not available yet: {}",
                    status.message()
                );
                tokio::time::sleep(Duration::from_millis(JOIN_RETRY_MS)).await;
            }
            Err(status) => bail!(
                "the cluster's root key via {addr} was refused: {}",
                status.message()
            ),
        }
    };
    let versions = reply
        .keys
        .into_iter()
        .map(crate::control::rotation::root_key_from_proto)
        .collect::<Result<Vec<_>, _>>()
        .map_err(anyhow::Error::msg)?;
    Ok((versions, reply.current))
}

async fn join(
    config: &ServeConfig,
    node_tls: &NodeTls,
    addr: &str,
    me: NodeInfo,
) -> anyhow::Result<()> {
    let channel = node_tls.join_channel(addr).map_err(anyhow::Error::msg)?;
    let mut client = conifer_proto::internal::internal_client::InternalClient::new(channel);
    let request = JoinRequest {
        from_node: config.node_id,
        node_id: config.node_id,
        cluster_addr: me.cluster_addr,
        api_addr: me.api_addr,
        promote: !config.learner,
    };
    loop {
        match client.join(request.clone()).await {
            Ok(reply) => {
                let reply = reply.into_inner();
                if let Err(refused) =
                    crate::control::membership::rejection_from_reply(&reply.rejection)
                {
                    bail!("join via {addr} refused: {refused}");
                }
                tracing::info!(leader = reply.leader_id, "joined the cluster");
                return Ok(());
            }
            Err(status)
                if matches!(
                    status.code(),
                    tonic::Code::Unavailable | tonic::Code::DeadlineExceeded
                ) =>
            {
                tracing::info!("join via {addr} not possible yet: {}", status.message());
                tokio::time::sleep(Duration::from_millis(JOIN_RETRY_MS)).await;
            }
            Err(status) => bail!("join via {addr} refused: {}", status.message()),
        }
    }
}
