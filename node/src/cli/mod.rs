//! The `conifer` command line: `serve`, `certs`, `policy`, and the admin commands of
//! [`admin`] (`project`, `key`, `member`, …).

pub mod admin;
pub mod audit;
pub mod backup;
pub mod data;
pub mod exit;
pub mod trust;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::node::{BackupStoreConfig, ClientTransport, Keyring, ServeConfig};
use crate::shard::engine::EngineConfig;
use crate::tls::{self, LeafKind, Validity};

/// Default client port address.
pub const DEFAULT_API_ADDR: &str = "127.0.0.1:7443";
/// Default cluster port address.
pub const DEFAULT_CLUSTER_ADDR: &str = "127.0.0.1:7444";
/// Default domain of index host names.
pub const DEFAULT_DOMAIN: &str = "svc.conifer.localhost";

/// Conifer: a self-hosted, secure vector database cluster.
#[derive(Parser)]
#[command(name = "conifer", version, about, after_help = exit::HELP)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Commands,
    /// Which log events to print, in tracing's filter syntax (e.g. `debug`,
    /// `info,openraft=warn`) [default: RUST_LOG, else info,openraft=warn].
    #[arg(long, global = true, env = "CONIFER_LOG_LEVEL")]
    pub log_level: Option<String>,
    /// How log lines look: `text` (colours only on a terminal) or `json` (one object a line).
    #[arg(long, global = true, env = "CONIFER_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// The log format (`--log-format`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines; ANSI colours only when stderr is a terminal.
    Text,
    /// One JSON object per line (timestamp, level, target, fields).
    Json,
}

/// Default log filter when neither `--log-level` nor `RUST_LOG` is given.
pub const DEFAULT_LOG_FILTER: &str = "info,openraft=warn";

impl Cli {
    /// Starts logging to stderr as `--log-level` and `--log-format` say; an unparsable
    /// filter is an error naming it.
    pub fn init_logging(&self) -> Result<(), String> {
        use std::io::IsTerminal;
        let filter = match &self.log_level {
            Some(level) => tracing_subscriber::EnvFilter::try_new(level)
                .map_err(|e| format!("--log-level {level:?}: {e}"))?,
            None => tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG_FILTER)),
        };
        let logs = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr);
        let started = match self.log_format {
            LogFormat::Text => logs.with_ansi(std::io::stderr().is_terminal()).try_init(),
            LogFormat::Json => logs.json().try_init(),
        };
        started.map_err(|e| format!("starting logs: {e}"))
    }
}

/// The subcommands.
// Parsed once per process: boxing `serve`'s flags would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
pub enum Commands {
    /// Run a node. With only --data-dir, bootstraps a single-node cluster on first start.
    Serve(ServeArgs),
    /// Create the cluster CA, node certificates and client certificates.
    #[command(subcommand)]
    Certs(CertsCommand),
    /// Print the permission matrix (operation × role) as a Markdown table.
    Policy,
    /// Indexes of a project (with its API key): create, list, describe, configure, delete.
    Index(data::IndexArgs),
    /// Records of an index: upsert from a file, query, fetch, list, delete.
    Vectors(data::VectorsArgs),
    /// Namespaces of an index: list, describe, delete.
    Namespace(data::NamespaceArgs),
    /// Backups of indexes: create, list, describe, delete, restore into a new index.
    Backup(backup::BackupArgs),
    /// Restore jobs (creating indexes from backups and collections): list, describe.
    RestoreJob(backup::RestoreJobArgs),
    /// Collections (named copies of indexes): create, list, describe, delete.
    Collection(backup::CollectionArgs),
    /// Administration through any node's client port.
    #[command(flatten)]
    Admin(admin::Admin),
}

/// Flags of `conifer serve`. Each is also a key of the configuration file (`--config`,
/// TOML, the flag's name without `--`), which ranks below `CONIFER_*` environment variables
/// and flags: default < file < environment < flag.
#[derive(Args, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
#[command(after_help = "Examples:
  conifer serve --data-dir conifer-data --index-port-range 7500-7599
  conifer serve --config /etc/conifer/node.toml --print-config
  conifer serve --data-dir conifer-dev --dev-http --api-addr 127.0.0.1:7080 --cluster-addr 127.0.0.1:7081

A configuration file holds the same settings, e.g.:
  data-dir = \"/var/lib/conifer\"
  api-addr = \"10.0.0.5:7443\"
  index-port-range = \"7500-7599\"")]
pub struct ServeArgs {
    /// A TOML file of serve settings, each a flag's name (e.g. `index-port-range =
    /// "7500-7599"`); environment variables and flags override it.
    #[arg(long, env = "CONIFER_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Print the settings in effect (defaults, file, environment and flags merged) as TOML
    /// and exit.
    #[arg(long)]
    #[serde(skip)]
    pub print_config: bool,
    /// Data directory (created with mode 0700); required, here or in --config.
    #[arg(long, env = "CONIFER_DATA_DIR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    /// Node id: unique in the cluster, never reused.
    #[arg(long, env = "CONIFER_NODE_ID", default_value_t = 1)]
    pub node_id: u64,
    /// Client port (REST + gRPC over TLS): IP:PORT or HOST:PORT (resolved at start);
    /// 0.0.0.0:PORT listens on every address.
    #[arg(long, env = "CONIFER_API_ADDR", default_value = DEFAULT_API_ADDR)]
    pub api_addr: String,
    /// Cluster port (mutual TLS between nodes): IP:PORT or HOST:PORT.
    #[arg(long, env = "CONIFER_CLUSTER_ADDR", default_value = DEFAULT_CLUSTER_ADDR)]
    pub cluster_addr: String,
    /// A second client listener, IP:PORT, for projects' private endpoints: the same API
    /// and TLS as the client port (and, with --index-port-range, each index's port on this
    /// IP too), reported as indexes' `private_host`. A project whose private endpoint
    /// names the private listener serves its data plane only here.
    #[arg(long, env = "CONIFER_PRIVATE_API_ADDR", value_name = "IP:PORT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub private_api_addr: Option<String>,
    /// Host name or IP (no port) by which clients and other nodes reach this node, when it
    /// differs from the listen addresses (e.g. they are 0.0.0.0, or behind NAT): members
    /// and index hosts are reported with it, and the default certificate carries it.
    #[arg(long, env = "CONIFER_ADVERTISE_ADDR", value_name = "HOST")]
    pub advertise_addr: Option<String>,
    /// Directory holding ca.pem, node.pem and node-key.pem [default: DATA_DIR/tls, generated on bootstrap].
    #[arg(long, env = "CONIFER_TLS_DIR")]
    pub tls_dir: Option<PathBuf>,
    /// The local keyring — the root key that wraps the node's data key — as a file outside
    /// the data directory (created 0600 on first start; refused when other users may open
    /// it), so that a copy of the data directory alone decrypts nothing.
    /// [default: DATA_DIR/keyring.json, which only a single node may use; see
    /// --insecure-keyring-in-data-dir]
    #[arg(long, env = "CONIFER_KEYRING", value_name = "PATH")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keyring: Option<PathBuf>,
    /// Keep the keyring in the data directory on a node that joins a cluster: whoever copies
    /// the data directory (a backup, a disk snapshot, a volume) can then decrypt everything
    /// in it. Refused by default; a single bootstrapping node keeps it there unless --keyring
    /// says otherwise, and says so at start.
    #[arg(long, env = "CONIFER_INSECURE_KEYRING_IN_DATA_DIR")]
    pub insecure_keyring_in_data_dir: bool,
    /// The root key is this AWS KMS key (its ARN) instead of a local keyring: the node data
    /// key and every project key are wrapped by KMS, so revoking the node's access to the
    /// key stops its indexes within --key-cache-ttl-ms (the control plane, whose key is
    /// unwrapped at start, keeps running; the node does not start again without the key).
    /// Give every node the same key.
    /// Credentials and region come from the standard AWS chain (environment, ~/.aws, instance
    /// or task role).
    #[arg(long, env = "CONIFER_ROOT_KEY_KMS", value_name = "ARN", conflicts_with_all = ["keyring", "insecure_keyring_in_data_dir"])]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub root_key_kms: Option<String>,
    /// Where AWS KMS is reached instead of its public regional endpoint (a VPC endpoint, a
    /// KMS-compatible server); AWS_ENDPOINT_URL_KMS does the same.
    #[arg(long, env = "CONIFER_KMS_ENDPOINT", value_name = "URL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kms_endpoint: Option<String>,
    /// How long an unwrapped project or index key stays in memory, in milliseconds (500 to
    /// 86,400,000): the bound within which a revoked root or project key stops the indexes
    /// under it on this node.
    #[arg(long, env = "CONIFER_KEY_CACHE_TTL_MS", default_value_t = crate::crypto::DEFAULT_KEY_CACHE_TTL_MS)]
    pub key_cache_ttl_ms: u64,
    /// Cluster address of any member: join that cluster instead of bootstrapping one.
    #[arg(long, env = "CONIFER_JOIN")]
    pub join: Option<String>,
    /// When joining, stay a learner (promote later with POST /admin/cluster/members/{id}/promote).
    #[arg(long, requires = "join")]
    pub learner: bool,
    /// Certificate chain (PEM, leaf first) the client port and index ports present instead
    /// of the node certificate, e.g. from a corporate CA or ACME. The cluster port keeps the
    /// node certificate. Needs --client-tls-key.
    #[arg(long, env = "CONIFER_CLIENT_TLS_CERT", requires = "client_tls_key")]
    pub client_tls_cert: Option<PathBuf>,
    /// Private key (PEM) of --client-tls-cert; refused if every user can read it.
    #[arg(long, env = "CONIFER_CLIENT_TLS_KEY", requires = "client_tls_cert")]
    pub client_tls_key: Option<PathBuf>,
    /// Client CA (PEM; several certificates are all trusted, as during a CA rotation): the
    /// client port, the private listener and index ports ask for a client certificate
    /// (optional) and accept one this CA issued; it authenticates as the service account
    /// one of its names is bound to (certificate_names). Issue them with `conifer certs
    /// client`.
    #[arg(long, env = "CONIFER_CLIENT_CA", conflicts_with = "dev_http")]
    pub client_ca: Option<PathBuf>,
    /// Days before a certificate's expiry (node, cluster CA, client port, client CA) from
    /// which /admin/cluster, `conifer cluster status` and the log warn about it. Renewed
    /// files are picked up without a restart (on change, or SIGHUP).
    #[arg(long, env = "CONIFER_CERT_EXPIRY_WARNING_DAYS", default_value_t = crate::tls::reload::DEFAULT_EXPIRY_WARNING_DAYS)]
    pub cert_expiry_warning_days: u32,
    /// Lowest TLS version the client port and index ports accept: 1.2 or 1.3. TLS 1.0 and
    /// 1.1 are never accepted.
    #[arg(long, env = "CONIFER_TLS_MIN_VERSION", default_value = "1.2")]
    pub tls_min_version: String,
    /// Cipher suites the client port and index ports accept, separated by commas, most
    /// preferred first (the server's order wins over the client's). Default: AES-256-GCM,
    /// then AES-128-GCM, then ChaCha20-Poly1305, TLS 1.3 before 1.2 (all AEAD):
    /// TLS13_AES_256_GCM_SHA384, TLS13_AES_128_GCM_SHA256, TLS13_CHACHA20_POLY1305_SHA256,
    /// TLS_ECDHE_{ECDSA,RSA}_WITH_AES_256_GCM_SHA384, ..._AES_128_GCM_SHA256,
    /// ..._CHACHA20_POLY1305_SHA256.
    #[arg(long, env = "CONIFER_TLS_CIPHER_SUITES", value_name = "SUITES")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cipher_suites: Option<String>,
    /// Development only: the client port and index ports speak plain HTTP (HTTP/1.1 and
    /// h2c gRPC, no TLS), for tools that cannot be given a CA. Refused unless --api-addr is
    /// a loopback address; the cluster port keeps mutual TLS.
    #[arg(long, env = "CONIFER_DEV_HTTP", conflicts_with = "client_tls_cert")]
    pub dev_http: bool,
    /// Domain of index hosts: <index>-<project>.<domain> (needs DNS, or the
    /// X-Conifer-Index header); used when --index-port-range is not given.
    #[arg(long, env = "CONIFER_DOMAIN", default_value = DEFAULT_DOMAIN)]
    pub domain: String,
    /// Give each index its own client port from FIRST-LAST (e.g. 15100-15199) and report
    /// its host as <client IP>:<port>, which needs no DNS. Give every node the same range.
    #[arg(long, env = "CONIFER_INDEX_PORT_RANGE", value_name = "FIRST-LAST")]
    pub index_port_range: Option<String>,
    /// Records in a namespace from which it is searched with HNSW instead of exactly.
    #[arg(long, env = "CONIFER_HNSW_MIN_RECORDS", default_value_t = EngineConfig::default().hnsw_min_records)]
    pub hnsw_min_records: usize,
    /// HNSW graph degree (M).
    #[arg(long, env = "CONIFER_HNSW_M", default_value_t = EngineConfig::default().hnsw_m)]
    pub hnsw_m: usize,
    /// HNSW efConstruction.
    #[arg(long, env = "CONIFER_HNSW_EF_CONSTRUCTION", default_value_t = EngineConfig::default().hnsw_ef_construction)]
    pub hnsw_ef_construction: usize,
    /// HNSW efSearch (raised to twice top_k for larger top_k).
    #[arg(long, env = "CONIFER_HNSW_EF_SEARCH", default_value_t = EngineConfig::default().hnsw_ef_search)]
    pub hnsw_ef_search: usize,
    /// Lifetime of the bearer tokens this node issues, in seconds (1 to 86400).
    #[arg(long, env = "CONIFER_TOKEN_TTL_S", default_value_t = crate::auth::token::DEFAULT_TOKEN_TTL_S)]
    pub token_ttl_s: u64,
    /// How long audit events are kept, in seconds (default 90 days; at least 1). Give every
    /// node the same value: the group-0 leader's applies.
    #[arg(long, env = "CONIFER_AUDIT_RETENTION_S", default_value_t = crate::audit::DEFAULT_AUDIT_RETENTION_S)]
    pub audit_retention_s: u64,
    /// Most events of refused attempts and failed sign-ins waiting on this node to be
    /// recorded (1 to 1,000,000); past it they are dropped, counted and summarized.
    #[arg(long, env = "CONIFER_AUDIT_QUEUE_EVENTS", default_value_t = crate::control::audit_sink::DEFAULT_AUDIT_QUEUE_EVENTS)]
    pub audit_queue_events: usize,
    /// Most records one project holds over all its indexes (at least 1). Give every node the
    /// same value: it is checked where an upsert is accepted.
    #[arg(long, env = "CONIFER_MAX_RECORDS_PER_PROJECT", default_value_t = crate::dataplane::router::DEFAULT_MAX_RECORDS_PER_PROJECT)]
    pub max_records_per_project: u64,
    /// Directory of the backup store (default: `backups` beside the data directory's
    /// contents, `DATA_DIR/backups`). In a cluster, every node must see the same directory
    /// (a shared file system): the node that writes a backup and the one that restores it
    /// may differ. Ignored with --backup-s3-bucket.
    #[arg(long, env = "CONIFER_BACKUP_DIR")]
    pub backup_dir: Option<PathBuf>,
    /// Keep backups in this S3 bucket (AWS S3 or any S3-compatible service) instead of a
    /// directory; credentials from the standard AWS chain.
    #[arg(long, env = "CONIFER_BACKUP_S3_BUCKET")]
    pub backup_s3_bucket: Option<String>,
    /// Key prefix of every backup object in the bucket.
    #[arg(
        long,
        env = "CONIFER_BACKUP_S3_PREFIX",
        default_value = "",
        requires = "backup_s3_bucket"
    )]
    pub backup_s3_prefix: String,
    /// Region of the bucket (default: the AWS chain's, else us-east-1).
    #[arg(long, env = "CONIFER_BACKUP_S3_REGION", requires = "backup_s3_bucket")]
    pub backup_s3_region: Option<String>,
    /// Endpoint of an S3-compatible service (MinIO, Ceph, a VPC endpoint), as a URL.
    #[arg(
        long,
        env = "CONIFER_BACKUP_S3_ENDPOINT",
        requires = "backup_s3_bucket"
    )]
    pub backup_s3_endpoint: Option<String>,
    /// Most bytes of backups and collections one project holds in the backup store (at
    /// least 1). Give every node the same value.
    #[arg(long, env = "CONIFER_MAX_BACKUP_BYTES_PER_PROJECT", default_value_t = crate::control::backups::DEFAULT_MAX_BACKUP_BYTES_PER_PROJECT)]
    pub max_backup_bytes_per_project: u64,
    /// Bytes of records gathered into each backup chunk before it is sealed and stored
    /// (64 KiB to 64 MiB): larger chunks mean fewer objects, smaller ones finer restore
    /// progress and less memory per job.
    #[arg(long, env = "CONIFER_BACKUP_CHUNK_BYTES", default_value_t = crate::backup::archive::DEFAULT_CHUNK_BYTES)]
    pub backup_chunk_bytes: usize,
}

/// Shortest `--key-cache-ttl-ms`.
pub const MIN_KEY_CACHE_TTL_MS: u64 = 500;
/// Longest `--key-cache-ttl-ms` (one day).
pub const MAX_KEY_CACHE_TTL_MS: u64 = 86_400_000;

impl ServeArgs {
    /// Layers the configuration file (`--config`) under what `matches` (the `serve`
    /// subcommand's) got from the environment and flags: every setting whose value is
    /// clap's default is taken from the file when the file has it. An unknown key or a value
    /// of the wrong type is an error naming it.
    pub fn with_config_file(self, matches: &clap::ArgMatches) -> Result<Self, String> {
        use figment::providers::{Format, Serialized, Toml};
        let Some(path) = self.config.clone() else {
            return Ok(self);
        };
        if !path.exists() {
            return Err(format!("--config {}: no such file", path.display()));
        }
        let print_config = self.print_config;
        let mut given = serde_json::to_value(&self).map_err(|e| e.to_string())?;
        if let Some(fields) = given.as_object_mut() {
            fields.retain(|key, _| {
                let id = key.replace('-', "_");
                !matches!(
                    matches.value_source(&id),
                    None | Some(clap::parser::ValueSource::DefaultValue)
                )
            });
        }
        let mut merged: Self = figment::Figment::from(Serialized::defaults(&self))
            .merge(Toml::file_exact(&path))
            .merge(Serialized::defaults(given))
            .extract()
            .map_err(|e| format!("--config {}: {e}", path.display()))?;
        merged.config = Some(path);
        merged.print_config = print_config;
        Ok(merged)
    }

    /// The settings as the TOML a configuration file holds; the settings not set (TOML
    /// has no null) follow as comments.
    pub fn to_toml(&self) -> Result<String, String> {
        let mut text = toml::to_string(self).map_err(|e| e.to_string())?;
        let all = serde_json::to_value(self).map_err(|e| e.to_string())?;
        let unset: Vec<&String> = all
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(_, v)| v.is_null())
            .map(|(k, _)| k)
            .collect();
        for key in unset {
            text.push_str(&format!("# {key} = (not set)\n"));
        }
        Ok(text)
    }

    /// Validates the flags into a [`ServeConfig`].
    pub fn into_config(self) -> Result<ServeConfig, String> {
        let Some(data_dir) = self.data_dir else {
            return Err("no data directory: give --data-dir (or data-dir in --config)".into());
        };
        if self.node_id == 0 {
            return Err("--node-id must be at least 1".into());
        }
        let max_ttl = crate::auth::token::MAX_TOKEN_TTL_S;
        if !(1..=max_ttl).contains(&self.token_ttl_s) {
            return Err(format!(
                "--token-ttl-s is {}; it must be 1 to {max_ttl}",
                self.token_ttl_s
            ));
        }
        let index_ports = self
            .index_port_range
            .as_deref()
            .map(crate::api::ports::parse_range)
            .transpose()?;
        let api_addr = crate::api::parse_addr("api-addr", &self.api_addr)?;
        let advertise_host = self
            .advertise_addr
            .as_deref()
            .map(parse_advertised_host)
            .transpose()?;
        let cluster_addr = crate::api::parse_addr("cluster-addr", &self.cluster_addr)?;
        let private_api_addr = self
            .private_api_addr
            .as_deref()
            .map(|a| crate::api::parse_addr("private-api-addr", a))
            .transpose()?;
        if let Some(private) = private_api_addr {
            if private.ip().is_unspecified() {
                return Err(format!(
                    "--private-api-addr {private} listens on every address, the public ones \
                     too: give the one private IP it is for"
                ));
            }
            if private.ip().to_canonical() == api_addr.ip().to_canonical()
                || api_addr.ip().is_unspecified()
            {
                return Err(format!(
                    "--private-api-addr {private} shares its IP with --api-addr {api_addr}: a \
                     private listener needs an address of its own, so that index ports can \
                     open on both"
                ));
            }
        }
        if let Some((first, last)) = index_ports {
            let mut own = vec![
                ("--api-addr", api_addr.port()),
                ("--cluster-addr", cluster_addr.port()),
            ];
            own.extend(private_api_addr.map(|a| ("--private-api-addr", a.port())));
            for (flag, port) in own {
                if (first..=last).contains(&port) {
                    return Err(format!(
                        "--index-port-range {first}-{last} holds the port of {flag} ({port})"
                    ));
                }
            }
        }
        // Flags that go together, checked here too: clap checks them only among flags,
        // and they may come from the configuration file or the environment.
        if self.client_tls_cert.is_some() != self.client_tls_key.is_some() {
            return Err("--client-tls-cert and --client-tls-key go together: give both".into());
        }
        if self.dev_http && self.client_tls_cert.is_some() {
            return Err("--dev-http serves no TLS: it takes no --client-tls-cert".into());
        }
        if self.dev_http && self.client_ca.is_some() {
            return Err(
                "--dev-http serves no TLS, so no client certificates: it takes no --client-ca"
                    .into(),
            );
        }
        if self.learner && self.join.is_none() {
            return Err("--learner applies to a node that joins: give --join too".into());
        }
        if self.root_key_kms.is_some()
            && (self.keyring.is_some() || self.insecure_keyring_in_data_dir)
        {
            return Err(
                "--root-key-kms replaces the local keyring: give no --keyring nor \
                        --insecure-keyring-in-data-dir"
                    .into(),
            );
        }
        if let Some(endpoint) = &self.kms_endpoint {
            if !(endpoint.starts_with("https://") || endpoint.starts_with("http://")) {
                return Err(format!(
                    "--kms-endpoint {endpoint} is not a URL (https://host[:port])"
                ));
            }
        }
        let keyring = match &self.keyring {
            _ if self.root_key_kms.is_some() => {
                let arn = self.root_key_kms.clone().unwrap_or_default();
                crate::crypto::kms::key_region(&arn)
                    .map_err(|reason| format!("--root-key-kms: {reason}"))?;
                Keyring::Kms(arn)
            }
            Some(path) => {
                let absolute = |p: &std::path::Path| {
                    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
                };
                if absolute(path).starts_with(absolute(&data_dir)) {
                    return Err(format!(
                        "--keyring {} is inside the data directory {}: give a path outside it \
                         (another disk or mount), so that a copy of the data directory is not a \
                         copy of the data",
                        path.display(),
                        data_dir.display()
                    ));
                }
                if path.exists() {
                    crate::crypto::check_private_mode(path).map_err(|e| e.to_string())?;
                }
                Keyring::File(path.clone())
            }
            None if self.join.is_some() && !self.insecure_keyring_in_data_dir => {
                return Err(
                    "a node that joins a cluster keeps its keyring outside the data directory: \
                     give --keyring PATH (or --insecure-keyring-in-data-dir to keep it in \
                     DATA_DIR/keyring.json, where a copy of the data directory is a copy of the \
                     data)"
                        .into(),
                );
            }
            None => Keyring::InDataDir,
        };
        let tls_policy =
            crate::tls::TlsPolicy::new(&self.tls_min_version, self.tls_cipher_suites.as_deref())?;
        if let (Some(cert), Some(key)) = (&self.client_tls_cert, &self.client_tls_key) {
            // Before anything is created on disk.
            crate::tls::load_client_port_config(cert, key, &tls_policy, self.client_ca.as_deref())
                .map_err(|e| e.to_string())?;
        }
        if let Some(ca) = &self.client_ca {
            let pem = std::fs::read_to_string(ca)
                .map_err(|e| format!("--client-ca {}: {e}", ca.display()))?;
            crate::tls::client_ca_roots(&pem)
                .map_err(|e| format!("--client-ca {}: {e}", ca.display()))?;
        }
        let client_transport = match (self.dev_http, self.client_tls_cert, self.client_tls_key) {
            (true, _, _) if !api_addr.ip().is_loopback() => {
                return Err(format!(
                    "--dev-http serves plain HTTP and is refused on {api_addr}: it is for \
                     loopback addresses only (127.0.0.0/8, ::1); give clients the CA \
                     (`conifer certs trust`) or a certificate they trust (--client-tls-cert)"
                ))
            }
            (true, _, _) if private_api_addr.is_some_and(|a| !a.ip().is_loopback()) => {
                return Err(format!(
                    "--dev-http serves plain HTTP, on the private listener too, and is refused \
                     on --private-api-addr {}: it is for loopback addresses only",
                    private_api_addr.map(|a| a.to_string()).unwrap_or_default()
                ))
            }
            (true, _, _) if advertise_host.is_some() => {
                return Err("--dev-http is for one machine: it takes no --advertise-addr".into())
            }
            (true, _, _) => ClientTransport::DevHttp,
            (false, Some(cert), Some(key)) => ClientTransport::Certificate { cert, key },
            _ => ClientTransport::NodeCertificate,
        };
        for (flag, addr) in [("--api-addr", api_addr), ("--cluster-addr", cluster_addr)] {
            if addr.ip().is_unspecified() && advertise_host.is_none() {
                return Err(format!(
                    "{flag} {addr} listens on every address and has no one IP to report to \
                     clients and peers (members, index hosts, bootstrap.json); give \
                     --advertise-addr HOST, the name or IP they reach this node by"
                ));
            }
        }
        if self.max_records_per_project == 0 {
            return Err("--max-records-per-project must be at least 1".into());
        }
        let chunks = crate::backup::archive::CHUNK_BYTES_RANGE;
        if !chunks.contains(&self.backup_chunk_bytes) {
            return Err(format!(
                "--backup-chunk-bytes is {}; it must be {} to {}",
                self.backup_chunk_bytes,
                chunks.start(),
                chunks.end()
            ));
        }
        if self.max_backup_bytes_per_project == 0 {
            return Err("--max-backup-bytes-per-project must be at least 1".into());
        }
        let backup_store = match self.backup_s3_bucket {
            Some(bucket) => {
                if bucket.is_empty() {
                    return Err("--backup-s3-bucket is empty".into());
                }
                BackupStoreConfig::S3(crate::backup::s3::S3Location {
                    bucket,
                    prefix: self.backup_s3_prefix,
                    region: self.backup_s3_region,
                    endpoint: self.backup_s3_endpoint,
                })
            }
            None => BackupStoreConfig::Dir(
                self.backup_dir
                    .clone()
                    .unwrap_or_else(|| data_dir.join("backups")),
            ),
        };
        if self.audit_retention_s == 0 {
            return Err("--audit-retention-s must be at least 1".into());
        }
        if !(MIN_KEY_CACHE_TTL_MS..=MAX_KEY_CACHE_TTL_MS).contains(&self.key_cache_ttl_ms) {
            return Err(format!(
                "--key-cache-ttl-ms is {}; it must be {MIN_KEY_CACHE_TTL_MS} to \
                 {MAX_KEY_CACHE_TTL_MS}",
                self.key_cache_ttl_ms
            ));
        }
        let max_queue = crate::control::audit_sink::MAX_AUDIT_QUEUE_EVENTS;
        if !(1..=max_queue).contains(&self.audit_queue_events) {
            return Err(format!(
                "--audit-queue-events is {}; it must be 1 to {max_queue}",
                self.audit_queue_events
            ));
        }
        Ok(ServeConfig {
            audit_retention_s: self.audit_retention_s,
            audit_queue_events: self.audit_queue_events,
            node_id: self.node_id,
            keyring,
            kms_endpoint: self.kms_endpoint,
            key_cache_ttl_ms: self.key_cache_ttl_ms,
            data_dir,
            api_addr,
            private_api_addr,
            advertise_host,
            cluster_addr,
            tls_dir: self.tls_dir,
            client_transport,
            tls_policy,
            client_ca: self.client_ca,
            cert_expiry_warning_days: self.cert_expiry_warning_days,
            join: self.join,
            learner: self.learner,
            domain: self.domain,
            max_records_per_project: self.max_records_per_project,
            backup_store,
            max_backup_bytes_per_project: self.max_backup_bytes_per_project,
            backup_chunk_bytes: self.backup_chunk_bytes,
            index_ports,
            token_ttl_s: self.token_ttl_s,
            engine: EngineConfig {
                hnsw_min_records: self.hnsw_min_records.max(1),
                hnsw_m: self.hnsw_m.clamp(4, 128),
                hnsw_ef_construction: self.hnsw_ef_construction.clamp(8, 4096),
                hnsw_ef_search: self.hnsw_ef_search.clamp(8, 4096),
                ..EngineConfig::default()
            },
        })
    }
}

/// Checks `--advertise-addr`: an IP (IPv6 given bare or in brackets) or a DNS host name,
/// without a port; IPv6 is returned in brackets, ready for `host:port`.
fn parse_advertised_host(text: &str) -> Result<String, String> {
    let bare = text.trim_start_matches('[').trim_end_matches(']');
    match bare.parse::<std::net::IpAddr>() {
        Ok(ip) if ip.is_unspecified() => {
            return Err(format!(
                "--advertise-addr {text}: the unspecified address reaches no node"
            ))
        }
        Ok(std::net::IpAddr::V6(v6)) => return Ok(format!("[{v6}]")),
        Ok(ip) => return Ok(ip.to_string()),
        Err(_) => {}
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    };
    if text.len() > 253 || !text.split('.').all(label_ok) {
        return Err(format!(
            "--advertise-addr {text:?}: expected a host name or an IP, without a port"
        ));
    }
    Ok(text.to_ascii_lowercase())
}

/// `conifer certs …`.
#[derive(Subcommand)]
pub enum CertsCommand {
    /// Create a cluster CA (ca.pem, ca-key.pem) in --out.
    Ca {
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
        /// Name shown in the CA's subject.
        #[arg(long, default_value = "conifer")]
        name: String,
    },
    /// Issue a node certificate (node.pem, node-key.pem, plus a copy of ca.pem) into --out.
    Node {
        /// Directory of the CA (ca.pem, ca-key.pem).
        #[arg(long)]
        ca_dir: PathBuf,
        /// Node id; the certificate carries the SAN node-<id>.
        #[arg(long)]
        id: u64,
        /// Extra host names or IP addresses (repeatable).
        #[arg(long = "host")]
        hosts: Vec<String>,
        /// Domain of index hosts: adds the SAN *.<domain>.
        #[arg(long, default_value = DEFAULT_DOMAIN)]
        domain: String,
        /// Days of validity.
        #[arg(long, default_value_t = tls::LEAF_VALIDITY_DAYS)]
        days: i64,
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
    },
    /// Issue a client certificate (<name>.pem, <name>-key.pem) into --out. Issued by the
    /// client CA (`serve --client-ca`), it authenticates as the service account its name is
    /// bound to (`conifer service-account set-certificate-names --id ID --certificate-name
    /// NAME`).
    #[command(after_help = "Examples:
  conifer certs ca --out client-ca --name clients
  conifer certs client --ca-dir client-ca --name etl-loader --days 90 --out certs
  conifer service-account set-certificate-names --id ID --certificate-name etl-loader")]
    Client {
        /// Directory of the CA (ca.pem, ca-key.pem): the client CA.
        #[arg(long)]
        ca_dir: PathBuf,
        /// Client name (its common name and DNS SAN, and the file names): letters, digits,
        /// '.', '-' and '_'.
        #[arg(long)]
        name: String,
        /// Days of validity.
        #[arg(long, default_value_t = tls::LEAF_VALIDITY_DAYS)]
        days: i64,
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
    },
    /// Trust the cluster CA: install it into the system trust store (Debian's
    /// update-ca-certificates; needs root) and write a bundle of the system's CAs plus it,
    /// printing the SSL_CERT_FILE / REQUESTS_CA_BUNDLE line for clients that read one.
    Trust(trust::TrustArgs),
}

/// Issues a node certificate (`node.pem`, `node-key.pem`) from the CA in `ca_dir` into
/// `out`, valid `days`, with a copy of the CA's `ca.pem` beside it (what `serve --tls-dir`
/// reads): `certs node` and `cluster add`.
pub(crate) fn issue_node_certificate(
    ca_dir: &std::path::Path,
    out: &std::path::Path,
    kind: LeafKind,
    days: i64,
) -> anyhow::Result<()> {
    tls::issue_leaf(ca_dir, out, "node", kind, Validity::days_from_now(days))?;
    if ca_dir.join(tls::CA_CERT) != out.join(tls::CA_CERT) {
        std::fs::copy(ca_dir.join(tls::CA_CERT), out.join(tls::CA_CERT))?;
    }
    Ok(())
}

/// Runs a `certs` subcommand.
pub fn run_certs(command: CertsCommand) -> anyhow::Result<()> {
    match command {
        CertsCommand::Ca { out, name } => {
            tls::generate_ca(&out, &name)?;
            println!(
                "created {} and {}",
                out.join(tls::CA_CERT).display(),
                out.join(tls::CA_KEY).display()
            );
        }
        CertsCommand::Node {
            ca_dir,
            id,
            hosts,
            domain,
            days,
            out,
        } => {
            if id == 0 {
                anyhow::bail!("--id must be at least 1");
            }
            let mut hosts = hosts;
            for default in ["localhost", "127.0.0.1"] {
                if !hosts.iter().any(|h| h == default) {
                    hosts.push(default.to_string());
                }
            }
            let kind = LeafKind::Node {
                id,
                hosts,
                domain: Some(domain),
            };
            issue_node_certificate(&ca_dir, &out, kind, days)?;
            println!(
                "issued {} for node-{id}",
                out.join(tls::NODE_CERT).display()
            );
        }
        CertsCommand::Client {
            ca_dir,
            name,
            days,
            out,
        } => {
            let shaped = name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
            if name.is_empty() || name.len() > 253 || !shaped || name.starts_with('.') {
                anyhow::bail!(exit::Usage(format!(
                    "--name {name:?}: give 1 to 253 letters, digits, '.', '-' or '_' (not \
                     starting with '.'), as in a DNS name"
                )));
            }
            if days < 1 {
                anyhow::bail!(exit::Usage("--days must be at least 1".into()));
            }
            tls::issue_leaf(
                &ca_dir,
                &out,
                &name,
                LeafKind::Client { name: name.clone() },
                Validity::days_from_now(days),
            )?;
            println!(
                "issued {} (key {}), valid {days} days\n\
                 bind its name to a service account so that it authenticates as it:\n  \
                 conifer service-account set-certificate-names --id ACCOUNT_ID --certificate-name {name}",
                out.join(format!("{name}.pem")).display(),
                out.join(format!("{name}-key.pem")).display()
            );
        }
        CertsCommand::Trust(args) => trust::run(args)?,
    }
    Ok(())
}
