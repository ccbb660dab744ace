//! Certificates that change while the node runs. The node certificate and key, the cluster
//! CA bundle (`ca.pem`), the client port's own certificate and key (`--client-tls-cert`,
//! `--client-tls-key`) and the client CA (`--client-ca`) are read again on SIGHUP and when
//! one of the files changes (checked every [`RELOAD_POLL`]); new connections — on the
//! client port, the index ports, the private listener, the cluster port, and to peers —
//! use the new set, and connections already open keep theirs until they close.
//!
//! A set that does not hold together is refused and the node keeps the one it has, logging
//! why (the next change or SIGHUP tries again): a key that does not match its certificate,
//! a node certificate that does not name `node-<id>`, does not chain to the CA bundle or is
//! outside its validity, an unreadable file. So files may be replaced one at a time.
//!
//! A CA rotation is the bundle's business: `ca.pem` may hold several CA certificates, all
//! trusted, so the operator adds the new CA to every node's bundle, then gives every node a
//! certificate of the new CA, then removes the old CA ("retires" it) — at no step does a
//! node refuse a peer it accepted a step before.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use conifer_raft::NodeId;
use rustls::pki_types::UnixTime;
use sha2::{Digest, Sha256};

use super::{
    check_key_mode, client_port_config, peer_node_ids, pem_certs, pem_key, read, TlsError,
    TlsPolicy, CA_CERT, NODE_CERT, NODE_KEY,
};

/// How often the certificate files are checked for a change.
pub const RELOAD_POLL: Duration = Duration::from_secs(2);
/// Default of `serve --cert-expiry-warning-days`: a certificate that expires within this
/// many days is reported with a warning (in `/admin/cluster`, `conifer cluster status` and
/// the log).
pub const DEFAULT_EXPIRY_WARNING_DAYS: u32 = 30;

/// Where a node's certificates live, and what it builds from them.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    /// Directory with `ca.pem` (the cluster CA bundle), `node.pem` and `node-key.pem`.
    pub dir: PathBuf,
    /// The node the certificate must name (`node-<id>`).
    pub node_id: NodeId,
    /// The client port's own chain and key, instead of the node certificate.
    pub client_port: Option<(PathBuf, PathBuf)>,
    /// The client CA bundle.
    pub client_ca: Option<PathBuf>,
    /// The client port's TLS policy.
    pub policy: TlsPolicy,
    /// The client port speaks plain HTTP (`--dev-http`): no client-port configuration.
    pub plain_client_port: bool,
    /// Source address of outgoing cluster connections.
    pub source_ip: Option<IpAddr>,
}

/// What the files held when they were read, and their digest.
struct Contents {
    ca: String,
    cert: String,
    key: String,
    client_port: Option<(String, String)>,
    client_ca: Option<String>,
    /// Of everything read.
    digest: [u8; 32],
    /// Of what the cluster port and peer connections use (CA bundle, node certificate
    /// and key).
    cluster_digest: [u8; 32],
}

/// SHA-256 over `parts`, each with its length (two splits of the same bytes differ).
fn digest_of<'a>(parts: impl IntoIterator<Item = Option<&'a String>>) -> [u8; 32] {
    let mut hash = Sha256::new();
    for part in parts {
        let part = part.map(String::as_bytes).unwrap_or_default();
        hash.update((part.len() as u64).to_le_bytes());
        hash.update(part);
    }
    hash.finalize().into()
}

impl TlsFiles {
    fn read(&self) -> Result<Contents, TlsError> {
        let ca = read(&self.dir.join(CA_CERT))?;
        let cert = read(&self.dir.join(NODE_CERT))?;
        check_key_mode(&self.dir.join(NODE_KEY))?;
        let key = read(&self.dir.join(NODE_KEY))?;
        let client_port = match &self.client_port {
            Some((cert, key)) => {
                super::check_key_mode(key)?;
                Some((read(cert)?, read(key)?))
            }
            None => None,
        };
        let client_ca = self.client_ca.as_deref().map(read).transpose()?;
        let digest = digest_of(
            [Some(&ca), Some(&cert), Some(&key), client_ca.as_ref()]
                .into_iter()
                .chain(client_port.iter().flat_map(|(c, k)| [Some(c), Some(k)])),
        );
        let cluster_digest = digest_of([Some(&ca), Some(&cert), Some(&key)]);
        Ok(Contents {
            ca,
            cert,
            key,
            client_port,
            client_ca,
            digest,
            cluster_digest,
        })
    }
}

/// One certificate a node uses, for the operator: what it is, whom it names and when it
/// expires.
#[derive(Clone, Debug, serde::Serialize)]
pub struct CertificateInfo {
    /// `node`, `cluster CA`, `client port` or `client CA`.
    pub role: &'static str,
    /// The file it was read from.
    pub path: String,
    /// Its subject (RFC 4514).
    pub subject: String,
    /// Its issuer (RFC 4514).
    pub issuer: String,
    /// Start of validity, RFC 3339.
    pub not_before: String,
    /// End of validity, RFC 3339.
    pub not_after: String,
    /// End of validity, seconds since the epoch.
    pub not_after_unix: i64,
}

impl CertificateInfo {
    /// Whole days from `now_unix` until it expires (negative once expired).
    pub fn days_left(&self, now_unix: i64) -> i64 {
        (self.not_after_unix - now_unix).div_euclid(86_400)
    }

    /// What to tell the operator at `now_unix` with a warning window of `window_days`:
    /// `None` while it has more days left than that.
    pub fn warning(&self, now_unix: i64, window_days: u32) -> Option<String> {
        match self.days_left(now_unix) {
            left if left < 0 => Some(format!("expired {}", self.not_after)),
            left if left < i64::from(window_days) => Some(format!(
                "expires in {left} days ({}), within the {window_days}-day warning window",
                self.not_after
            )),
            _ => None,
        }
    }
}

fn describe(role: &'static str, path: &Path, der: &[u8]) -> Option<CertificateInfo> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let validity = cert.validity();
    let rfc3339 = |t: &x509_parser::time::ASN1Time| {
        time::OffsetDateTime::from_unix_timestamp(t.timestamp())
            .ok()
            .and_then(|t| {
                t.format(&time::format_description::well_known::Rfc3339)
                    .ok()
            })
            .unwrap_or_default()
    };
    Some(CertificateInfo {
        role,
        path: path.display().to_string(),
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
        not_before: rfc3339(&validity.not_before),
        not_after: rfc3339(&validity.not_after),
        not_after_unix: validity.not_after.timestamp(),
    })
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// One consistent set of certificates and the TLS configurations built from it.
pub struct TlsSet {
    /// The client port's, index ports' and private listener's configuration; `None` for a
    /// plain-HTTP client port.
    pub client_port: Option<Arc<rustls::ServerConfig>>,
    /// The cluster port's: a client certificate chaining to the CA bundle is required.
    pub cluster_server: Arc<rustls::ServerConfig>,
    /// Outgoing cluster connections': the node certificate, trusting the CA bundle.
    pub cluster_client: Arc<rustls::ClientConfig>,
    /// The check a peer's certificate passes at the cluster port (chained to the CA
    /// bundle, valid, for client authentication): connections opened under an earlier set
    /// are checked against it again when a new set comes in.
    pub peer_check: Arc<dyn rustls::server::danger::ClientCertVerifier>,
    /// Every certificate of the set, for the operator.
    pub certificates: Vec<CertificateInfo>,
    digest: [u8; 32],
    cluster_digest: [u8; 32],
}

impl TlsSet {
    fn build(files: &TlsFiles, contents: Contents) -> Result<Self, TlsError> {
        let in_dir = |name: &str| files.dir.join(name);
        let ca_certs = pem_certs(&contents.ca, &in_dir(CA_CERT).display().to_string())?;
        let mut roots = rustls::RootCertStore::empty();
        for cert in &ca_certs {
            roots
                .add(cert.clone())
                .map_err(|e| TlsError::Invalid(format!("{}: {e}", in_dir(CA_CERT).display())))?;
        }
        let roots = Arc::new(roots);
        let node_pem = in_dir(NODE_CERT).display().to_string();
        let chain = pem_certs(&contents.cert, &node_pem)?;
        let key = pem_key(&contents.key, &in_dir(NODE_KEY).display().to_string())?;
        if !peer_node_ids(&chain).contains(&files.node_id) {
            return Err(TlsError::Invalid(format!(
                "{node_pem} does not name this node (node-{}) in its subject alternative names",
                files.node_id
            )));
        }
        // The node certificate must pass the check its peers make: chained to the bundle,
        // valid now, for client authentication.
        let peer_check =
            rustls::server::WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
                .build()
                .map_err(|e| TlsError::Invalid(format!("cluster CA bundle: {e}")))?;
        peer_check
            .verify_client_cert(&chain[0], &chain[1..], UnixTime::now())
            .map_err(|e| {
                TlsError::Invalid(format!(
                    "{node_pem} would be refused by the cluster's nodes: {e}"
                ))
            })?;
        let mut cluster_server = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(peer_check.clone())
            .with_single_cert(chain.clone(), key.clone_key())?;
        cluster_server.alpn_protocols = vec![b"h2".to_vec()];
        let mut cluster_client = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain.clone(), key)?;
        cluster_client.alpn_protocols = vec![b"h2".to_vec()];

        if let Some(pem) = &contents.client_ca {
            let client_cas = pem_certs(pem, "the client CA")?;
            if client_cas.iter().any(|ca| ca_certs.contains(ca)) {
                return Err(TlsError::Invalid(
                    "the client CA (--client-ca) holds the cluster CA: node certificates would \
                     pass for client certificates; give the clients a CA of their own \
                     (`conifer certs ca`)"
                        .into(),
                ));
            }
        }
        let client_port = match (&contents.client_port, files.plain_client_port) {
            (_, true) => None,
            (Some((cert, key)), false) => Some(client_port_config(
                cert,
                key,
                &files.policy,
                contents.client_ca.as_deref(),
            )?),
            (None, false) => Some(client_port_config(
                &contents.cert,
                &contents.key,
                &files.policy,
                contents.client_ca.as_deref(),
            )?),
        };

        let mut certificates: Vec<CertificateInfo> = Vec::new();
        certificates.extend(describe("node", &in_dir(NODE_CERT), &chain[0]));
        for ca in &ca_certs {
            certificates.extend(describe("cluster CA", &in_dir(CA_CERT), ca));
        }
        if let (Some((cert, _)), Some((path, _))) = (&contents.client_port, &files.client_port) {
            let leaf = pem_certs(cert, &path.display().to_string())?;
            certificates.extend(describe("client port", path, &leaf[0]));
        }
        if let (Some(pem), Some(path)) = (&contents.client_ca, &files.client_ca) {
            for ca in pem_certs(pem, &path.display().to_string())? {
                certificates.extend(describe("client CA", path, &ca));
            }
        }
        Ok(Self {
            client_port,
            cluster_server: Arc::new(cluster_server),
            cluster_client: Arc::new(cluster_client),
            peer_check,
            certificates,
            digest: contents.digest,
            cluster_digest: contents.cluster_digest,
        })
    }
}

/// The outcome of the last reload attempt that found the files changed.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ReloadStatus {
    /// How many sets were installed since the node started (1: the one read at start).
    pub generation: u64,
    /// When the set in use was installed, RFC 3339.
    pub loaded_at: String,
    /// Why the files as they are now were refused, if they were.
    pub refused: Option<String>,
}

/// A node's certificates, reloaded while it runs: always one consistent [`TlsSet`].
pub struct Certificates {
    files: TlsFiles,
    current: RwLock<Arc<TlsSet>>,
    status: Mutex<ReloadStatus>,
    /// Ticks once per installed set whose cluster side (CA bundle, node certificate or
    /// key) changed: peer channels are rebuilt and open peer connections checked again.
    changes: tokio::sync::watch::Sender<u64>,
}

impl Certificates {
    /// Reads and checks the files; `Invalid` naming the first thing that does not hold.
    pub fn load(files: TlsFiles) -> Result<Arc<Self>, TlsError> {
        let set = TlsSet::build(&files, files.read()?)?;
        let (changes, _) = tokio::sync::watch::channel(1);
        Ok(Arc::new(Self {
            files,
            current: RwLock::new(Arc::new(set)),
            status: Mutex::new(ReloadStatus {
                generation: 1,
                loaded_at: crate::now_rfc3339(),
                refused: None,
            }),
            changes,
        }))
    }

    /// Source address of outgoing cluster connections.
    pub fn source_ip(&self) -> Option<IpAddr> {
        self.files.source_ip
    }

    /// The set in use.
    pub fn current(&self) -> Arc<TlsSet> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The last reload's outcome.
    pub fn status(&self) -> ReloadStatus {
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Ticks whenever a new set with another cluster side is installed.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Reads the files again and installs them if they changed and hold together:
    /// `Ok(true)` when a new set is in use, `Ok(false)` when nothing changed, `Err` (the
    /// old set stays) when the new files were refused.
    pub fn reload(&self) -> Result<bool, TlsError> {
        let contents = self.files.read();
        let unchanged = matches!(&contents, Ok(c) if c.digest == self.current().digest);
        if unchanged {
            // The files are the installed set again: nothing is refused any more.
            self.status
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .refused = None;
            return Ok(false);
        }
        let built = contents.and_then(|c| TlsSet::build(&self.files, c));
        let mut status = self.status.lock().unwrap_or_else(|p| p.into_inner());
        match built {
            Ok(set) => {
                let cluster_side = set.cluster_digest != self.current().cluster_digest;
                *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(set);
                status.generation += 1;
                status.loaded_at = crate::now_rfc3339();
                status.refused = None;
                if cluster_side {
                    self.changes.send_replace(status.generation);
                }
                Ok(true)
            }
            Err(e) => {
                status.refused = Some(e.to_string());
                Err(e)
            }
        }
    }

    /// The SIGHUP stream [`Certificates::keep_reloading`] takes: installed first thing at
    /// start, so that a SIGHUP before the node serves does not end the process (the
    /// signal's default action); `None` (logged) where it cannot be installed.
    pub fn hangups() -> Option<tokio::signal::unix::Signal> {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!("no SIGHUP handler ({e}); certificates reload on file changes only");
                None
            }
        }
    }

    /// Reloads on each of `hangups` (SIGHUP, [`Certificates::hangups`]) and whenever the
    /// files change, until the process ends; logs each new set (with the certificates
    /// near expiry within `warning_days`) and each refusal once per distinct reason.
    pub async fn keep_reloading(
        self: Arc<Self>,
        mut hangups: Option<tokio::signal::unix::Signal>,
        warning_days: u32,
    ) {
        let mut poll = tokio::time::interval(RELOAD_POLL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_refusal: Option<String> = None;
        self.warn_near_expiry(warning_days);
        loop {
            let hangup = async {
                match hangups.as_mut() {
                    Some(h) => {
                        h.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            let asked = tokio::select! {
                () = hangup => true,
                _ = poll.tick() => false,
            };
            match self.reload() {
                Ok(true) => {
                    last_refusal = None;
                    let names: Vec<String> = self
                        .current()
                        .certificates
                        .iter()
                        .map(|c| format!("{} {} until {}", c.role, c.subject, c.not_after))
                        .collect();
                    tracing::info!(
                        generation = self.status().generation,
                        "certificates reloaded{}: {}",
                        if asked { " (SIGHUP)" } else { "" },
                        names.join("; ")
                    );
                    self.warn_near_expiry(warning_days);
                }
                Ok(false) => {
                    last_refusal = None;
                    if asked {
                        tracing::info!("SIGHUP: the certificate files are unchanged");
                    }
                }
                Err(e) => {
                    let reason = e.to_string();
                    if asked || last_refusal.as_ref() != Some(&reason) {
                        tracing::error!(
                            "new certificate files refused, the node keeps the ones it has: {reason}"
                        );
                    }
                    last_refusal = Some(reason);
                }
            }
        }
    }

    fn warn_near_expiry(&self, warning_days: u32) {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        for cert in &self.current().certificates {
            if let Some(warning) = cert.warning(now, warning_days) {
                tracing::warn!(
                    role = cert.role,
                    path = %cert.path,
                    "certificate {}: {warning}; renew it and put the new files in place (they \
                     are picked up without a restart)",
                    cert.subject,
                );
            }
        }
    }
}
