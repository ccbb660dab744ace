//! Certificates and TLS configuration.
//!
//! - `conifer certs` and first-start bootstrap create a cluster CA, node certificates
//!   (SAN `node-<id>` plus the node's host names and IPs and the wildcard `*.<domain>` of
//!   index hosts; server and client auth) and client certificates, all with rcgen.
//! - The client port serves TLS 1.2 and 1.3 with the node certificate (ALPN h2, http/1.1),
//!   restricted by a [`TlsPolicy`] (`serve --tls-min-version`, `--tls-cipher-suites`): AEAD
//!   suites only, AES-256-GCM first, in the server's order of preference. With a client CA
//!   (`serve --client-ca`) it also asks for a client certificate, optional at the handshake;
//!   one that does not chain to that CA, or is expired, fails the handshake. A verified
//!   certificate's names ([`certificate_names`]) authenticate it as the service account
//!   bound to one of them ([`crate::auth::authenticate_certificate`]).
//! - The cluster port requires a client certificate chaining to the cluster CA; the handler
//!   of every internal RPC then checks that the certificate names the node the RPC claims
//!   to come from ([`peer_node_ids`]). Outgoing channels pin the peer's name `node-<id>`.

use std::fs;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use conifer_raft::{NodeId, NodeInfo};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use time::OffsetDateTime;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::crypto::write_private_file;

pub mod peer;
pub mod reload;

/// CA certificate file name.
pub const CA_CERT: &str = "ca.pem";
/// CA private key file name (only where certificates are issued).
pub const CA_KEY: &str = "ca-key.pem";
/// Node certificate file name.
pub const NODE_CERT: &str = "node.pem";
/// Node private key file name.
pub const NODE_KEY: &str = "node-key.pem";
/// Validity of a generated CA.
pub const CA_VALIDITY_DAYS: i64 = 3650;
/// Validity of a generated node or client certificate.
pub const LEAF_VALIDITY_DAYS: i64 = 825;
/// Time allowed for a TLS handshake on either port.
pub const TLS_HANDSHAKE_TIMEOUT_MS: u64 = 10_000;

/// Errors creating or loading certificates.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file concerned.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// rcgen failed to build or sign a certificate.
    #[error("certificate generation: {0}")]
    Generate(#[from] rcgen::Error),
    /// A PEM file holds no usable certificate or key.
    #[error("{0}")]
    Invalid(String),
    /// rustls rejected the configuration.
    #[error("tls configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// A private key file could not be written.
    #[error(transparent)]
    Write(#[from] crate::crypto::CryptoError),
}

fn read(path: &Path) -> Result<String, TlsError> {
    fs::read_to_string(path).map_err(|source| TlsError::Io {
        path: path.into(),
        source,
    })
}

fn write_public(path: &Path, text: &str) -> Result<(), TlsError> {
    fs::write(path, text).map_err(|source| TlsError::Io {
        path: path.into(),
        source,
    })
}

/// The DNS name every node certificate carries and peers pin: `node-<id>`.
pub fn node_name(id: NodeId) -> String {
    format!("node-{id}")
}

/// DNS SAN every node certificate also carries: a joining node, which does not yet know
/// the id of the member it contacts, verifies that member against this name.
pub const ANY_NODE_NAME: &str = "conifer-node";

/// Creates a new cluster CA (`ca.pem`, `ca-key.pem` with mode 0600) in `dir`.
pub fn generate_ca(dir: &Path, cluster_name: &str) -> Result<(), TlsError> {
    fs::create_dir_all(dir).map_err(|source| TlsError::Io {
        path: dir.into(),
        source,
    })?;
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(
        DnType::CommonName,
        format!("Conifer cluster CA ({cluster_name})"),
    );
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = OffsetDateTime::now_utc() - time::Duration::hours(1);
    params.not_after = OffsetDateTime::now_utc() + time::Duration::days(CA_VALIDITY_DAYS);
    let cert = params.self_signed(&key)?;
    write_public(&dir.join(CA_CERT), &cert.pem())?;
    write_private_file(&dir.join(CA_KEY), key.serialize_pem().as_bytes())?;
    Ok(())
}

/// What a leaf certificate is for.
pub enum LeafKind {
    /// A node: `node-<id>` plus hosts; server and client authentication.
    Node {
        /// The node id named in the SAN.
        id: NodeId,
        /// Extra host names / IP addresses the node is reached by.
        hosts: Vec<String>,
        /// Domain of index hosts; `*.<domain>` is added when set.
        domain: Option<String>,
    },
    /// A client of the API or of the admin CLI: client authentication only.
    Client {
        /// Common name of the client.
        name: String,
    },
}

/// Validity window of a leaf certificate.
pub struct Validity {
    /// Start of validity.
    pub not_before: OffsetDateTime,
    /// End of validity.
    pub not_after: OffsetDateTime,
}

impl Validity {
    /// From an hour ago until `days` from now.
    pub fn days_from_now(days: i64) -> Self {
        let now = OffsetDateTime::now_utc();
        Self {
            not_before: now - time::Duration::hours(1),
            not_after: now + time::Duration::days(days),
        }
    }
}

/// Issues a leaf certificate signed by the CA in `ca_dir`, writing `<stem>.pem` and
/// `<stem>-key.pem` (0600) into `out_dir`.
pub fn issue_leaf(
    ca_dir: &Path,
    out_dir: &Path,
    stem: &str,
    kind: LeafKind,
    validity: Validity,
) -> Result<(), TlsError> {
    fs::create_dir_all(out_dir).map_err(|source| TlsError::Io {
        path: out_dir.into(),
        source,
    })?;
    let ca_key = KeyPair::from_pem(&read(&ca_dir.join(CA_KEY))?)?;
    let issuer = Issuer::from_ca_cert_pem(&read(&ca_dir.join(CA_CERT))?, ca_key)?;
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    match kind {
        LeafKind::Node { id, hosts, domain } => {
            dn.push(DnType::CommonName, node_name(id));
            let mut sans = vec![
                SanType::DnsName(node_name(id).try_into()?),
                SanType::DnsName(ANY_NODE_NAME.try_into()?),
            ];
            for host in hosts {
                match host.parse::<IpAddr>() {
                    Ok(ip) => sans.push(SanType::IpAddress(ip)),
                    Err(_) => sans.push(SanType::DnsName(host.try_into()?)),
                }
            }
            if let Some(domain) = domain {
                sans.push(SanType::DnsName(format!("*.{domain}").try_into()?));
                // Index hosts on the private listener (`<index>-<tag>.private.<domain>`).
                let private = crate::dataplane::router::PRIVATE_SUBDOMAIN;
                sans.push(SanType::DnsName(
                    format!("*.{private}.{domain}").try_into()?,
                ));
            }
            params.subject_alt_names = sans;
            params.extended_key_usages = vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ];
        }
        LeafKind::Client { name } => {
            dn.push(DnType::CommonName, name.clone());
            params.subject_alt_names = vec![SanType::DnsName(name.try_into()?)];
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        }
    }
    params.distinguished_name = dn;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.not_before = validity.not_before;
    params.not_after = validity.not_after;
    let cert = params.signed_by(&key, &issuer)?;
    write_public(&out_dir.join(format!("{stem}.pem")), &cert.pem())?;
    write_private_file(
        &out_dir.join(format!("{stem}-key.pem")),
        key.serialize_pem().as_bytes(),
    )?;
    Ok(())
}

/// A TLS protocol version the client port may accept.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum TlsVersion {
    /// TLS 1.2 (RFC 5246), AEAD suites with ECDHE only.
    V1_2,
    /// TLS 1.3 (RFC 8446).
    V1_3,
}

impl TlsVersion {
    fn rustls(self) -> &'static rustls::SupportedProtocolVersion {
        match self {
            TlsVersion::V1_2 => &rustls::version::TLS12,
            TlsVersion::V1_3 => &rustls::version::TLS13,
        }
    }

    fn of(suite: &rustls::SupportedCipherSuite) -> Self {
        match suite {
            rustls::SupportedCipherSuite::Tls12(_) => TlsVersion::V1_2,
            rustls::SupportedCipherSuite::Tls13(_) => TlsVersion::V1_3,
        }
    }
}

impl std::fmt::Display for TlsVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TlsVersion::V1_2 => "1.2",
            TlsVersion::V1_3 => "1.3",
        })
    }
}

/// The cipher suites of the client port by default, in the server's order of preference:
/// TLS 1.3 first, AES-256-GCM before AES-128-GCM before ChaCha20-Poly1305 (all AEAD; TLS
/// 1.2 suites with ECDHE key exchange, for an ECDSA or an RSA certificate).
pub const DEFAULT_CIPHER_SUITES: [&str; 9] = [
    "TLS13_AES_256_GCM_SHA384",
    "TLS13_AES_128_GCM_SHA256",
    "TLS13_CHACHA20_POLY1305_SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
];

/// What the client port and index ports accept: the lowest TLS version and the cipher
/// suites in the server's order of preference (the client's order is ignored, so a client
/// offering AES-256-GCM gets it). Never below TLS 1.2; only AEAD suites exist to choose.
#[derive(Clone, Debug)]
pub struct TlsPolicy {
    min_version: TlsVersion,
    suites: Vec<rustls::SupportedCipherSuite>,
}

impl Default for TlsPolicy {
    fn default() -> Self {
        Self::new("1.2", None).expect("the default TLS policy is valid")
    }
}

impl TlsPolicy {
    /// The policy of `--tls-min-version` (`1.2` or `1.3`) and `--tls-cipher-suites` (names
    /// separated by commas, most preferred first; `None`: those of [`DEFAULT_CIPHER_SUITES`]
    /// of the versions accepted). A
    /// TLS 1.3 suite may also be given by its RFC 8446 name (`TLS_AES_256_GCM_SHA384`).
    /// Refused, with the reason: another version, an unknown or repeated suite, or a
    /// version accepted without a suite of its own.
    pub fn new(min_version: &str, suites: Option<&str>) -> Result<Self, String> {
        let min_version = match min_version.trim() {
            "1.2" => TlsVersion::V1_2,
            "1.3" => TlsVersion::V1_3,
            other => {
                return Err(format!(
                    "--tls-min-version {other}: give 1.2 or 1.3 (TLS 1.0 and 1.1 are never \
                     accepted)"
                ))
            }
        };
        let defaults = suites.is_none();
        let names: Vec<String> = match suites {
            None => DEFAULT_CIPHER_SUITES
                .iter()
                .map(|n| n.to_string())
                .collect(),
            Some(list) => list
                .split(',')
                .map(|n| n.trim().to_ascii_uppercase())
                .filter(|n| !n.is_empty())
                .collect(),
        };
        let known = rustls::crypto::ring::ALL_CIPHER_SUITES;
        let mut chosen: Vec<rustls::SupportedCipherSuite> = Vec::new();
        for name in &names {
            let suite = known
                .iter()
                .find(|s| {
                    let own = s.suite().as_str().unwrap_or_default();
                    own == name || own.replacen("TLS13_", "TLS_", 1) == *name
                })
                .ok_or_else(|| {
                    format!(
                        "--tls-cipher-suites: unknown suite {name}; known: {}",
                        DEFAULT_CIPHER_SUITES.join(", ")
                    )
                })?;
            if chosen.iter().any(|c| c.suite() == suite.suite()) {
                return Err(format!("--tls-cipher-suites names {name} twice"));
            }
            if TlsVersion::of(suite) >= min_version {
                chosen.push(*suite);
            } else if !defaults {
                return Err(format!(
                    "--tls-cipher-suites: {name} is a TLS {} suite, below --tls-min-version \
                     {min_version}",
                    TlsVersion::of(suite)
                ));
            }
        }
        let policy = Self {
            min_version,
            suites: chosen,
        };
        for version in policy.versions() {
            if !policy.suites.iter().any(|s| TlsVersion::of(s) == version) {
                return Err(format!(
                    "--tls-cipher-suites has no TLS {version} suite, yet TLS {version} is \
                     accepted (--tls-min-version {min_version}): add one{}",
                    if version == TlsVersion::V1_2 {
                        ", or give --tls-min-version 1.3"
                    } else {
                        ""
                    }
                ));
            }
        }
        Ok(policy)
    }

    /// The versions accepted, newest first.
    pub fn versions(&self) -> Vec<TlsVersion> {
        [TlsVersion::V1_3, TlsVersion::V1_2]
            .into_iter()
            .filter(|v| *v >= self.min_version)
            .collect()
    }

    /// The suites' names, most preferred first.
    pub fn suite_names(&self) -> Vec<&'static str> {
        self.suites
            .iter()
            .map(|s| s.suite().as_str().unwrap_or("?"))
            .collect()
    }

    /// One line for the startup log: versions and suites.
    pub fn describe(&self) -> String {
        let versions: Vec<String> = self.versions().iter().map(|v| format!("TLS {v}")).collect();
        format!(
            "{} only; cipher suites in the server's order of preference: {}",
            versions.join(" and "),
            self.suite_names().join(", ")
        )
    }

    fn server_builder(
        &self,
    ) -> Result<rustls::ConfigBuilder<rustls::ServerConfig, rustls::WantsVerifier>, TlsError> {
        let provider = rustls::crypto::CryptoProvider {
            cipher_suites: self.suites.clone(),
            ..rustls::crypto::ring::default_provider()
        };
        let versions: Vec<_> = self
            .versions()
            .into_iter()
            .map(TlsVersion::rustls)
            .collect();
        Ok(
            rustls::ServerConfig::builder_with_provider(Arc::new(provider))
                .with_protocol_versions(&versions)?,
        )
    }
}

/// The trust anchors of a client CA file (`serve --client-ca`): every certificate of the PEM
/// bundle, so that an old and a new CA can be trusted together while clients move from one
/// to the other; `Invalid` if it holds none or one is not a usable CA certificate.
pub fn client_ca_roots(pem: &str) -> Result<rustls::RootCertStore, TlsError> {
    let certs = pem_certs(pem, "the client CA file")?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in certs {
        roots
            .add(cert)
            .map_err(|e| TlsError::Invalid(format!("client CA: {e}")))?;
    }
    Ok(roots)
}

/// Every certificate of the PEM text `pem`; `Invalid` naming `what` when it does not parse
/// or holds none.
pub(crate) fn pem_certs(
    pem: &str,
    what: &str,
) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, TlsError> {
    let certs = rustls_pemfile::certs(&mut pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Invalid(format!("{what}: {e}")))?;
    if certs.is_empty() {
        return Err(TlsError::Invalid(format!("{what} holds no certificate")));
    }
    Ok(certs)
}

/// The private key of the PEM text `pem`; `Invalid` naming `what` when it holds none.
pub(crate) fn pem_key(
    pem: &str,
    what: &str,
) -> Result<rustls::pki_types::PrivateKeyDer<'static>, TlsError> {
    rustls_pemfile::private_key(&mut pem.as_bytes())
        .map_err(|e| TlsError::Invalid(format!("{what}: {e}")))?
        .ok_or_else(|| TlsError::Invalid(format!("{what} holds no private key")))
}

/// The names a client certificate (DER, the leaf) carries, in order and without repeats:
/// its DNS, email and URI subject alternative names, then its subject's common names —
/// what a service account's `certificate_names` are compared with (exactly). Empty for
/// bytes that are not a certificate.
pub fn certificate_names(leaf: &[u8]) -> Vec<String> {
    match x509_parser::parse_x509_certificate(leaf) {
        Ok((_, cert)) => names_of(&cert),
        Err(_) => Vec::new(),
    }
}

/// [`certificate_names`] of a parsed certificate.
fn names_of(cert: &x509_parser::certificate::X509Certificate<'_>) -> Vec<String> {
    use x509_parser::extensions::GeneralName;
    let mut names: Vec<String> = Vec::new();
    let mut add = |name: &str| {
        if !name.is_empty() && !names.iter().any(|n| n == name) {
            names.push(name.to_string());
        }
    };
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(n) | GeneralName::RFC822Name(n) | GeneralName::URI(n) => {
                    add(n)
                }
                _ => {}
            }
        }
    }
    for cn in cert.subject().iter_common_name() {
        if let Ok(text) = cn.as_str() {
            add(text);
        }
    }
    names
}

/// What a client certificate the client port verified says: the names it carries
/// ([`certificate_names`]) and the end of its validity.
#[derive(Clone, Debug)]
pub struct PresentedCertificate {
    /// Its DNS, email and URI SANs, then its subject's common names.
    pub names: Vec<String>,
    /// End of validity, seconds since the epoch (checked again on every request of a
    /// connection that outlives it).
    pub not_after_unix: i64,
}

/// The facts of a client certificate (DER, the leaf) that the handshake verified; `Err`
/// saying why it authenticates no one when it does not declare client authentication as
/// an extended key usage (rustls accepts a certificate that declares no usage at all;
/// Conifer requires the declaration), or does not parse.
pub fn presented_certificate(leaf: &[u8]) -> Result<PresentedCertificate, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(leaf)
        .map_err(|e| format!("the client certificate does not parse: {e}"))?;
    let client_auth = matches!(cert.extended_key_usage(), Ok(Some(eku)) if eku.value.client_auth);
    if !client_auth {
        return Err(
            "the client certificate does not declare client authentication (extended key \
             usage clientAuth), so it authenticates no one"
                .into(),
        );
    }
    Ok(PresentedCertificate {
        names: names_of(&cert),
        not_after_unix: cert.validity().not_after.timestamp(),
    })
}

/// rustls configuration of a client port presenting `cert_pem` (a chain, leaf first) and
/// `key_pem` under `policy`, ALPN h2 and http/1.1, asking for a client certificate from
/// `client_ca_pem` (optional at the handshake; one that does not verify fails it) when
/// given; `Invalid` naming what is missing or unreadable.
pub fn client_port_config(
    cert_pem: &str,
    key_pem: &str,
    policy: &TlsPolicy,
    client_ca_pem: Option<&str>,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let certs = pem_certs(cert_pem, "the certificate file")?;
    let key = pem_key(key_pem, "the key file")?;
    if policy.versions().contains(&TlsVersion::V1_2) {
        let signer = rustls::crypto::ring::default_provider()
            .key_provider
            .load_private_key(key.clone_key())?;
        let algorithm = signer.algorithm();
        if !policy.suites.iter().any(|s| {
            TlsVersion::of(s) == TlsVersion::V1_2 && s.usable_for_signature_algorithm(algorithm)
        }) {
            return Err(TlsError::Invalid(format!(
                "TLS 1.2 is accepted but no TLS 1.2 suite of --tls-cipher-suites works with \
                 the certificate's {algorithm:?} key: add a TLS_ECDHE_{algorithm:?}_WITH_… \
                 suite, or give --tls-min-version 1.3"
            )));
        }
    }
    let builder = policy.server_builder()?;
    let builder = match client_ca_pem {
        None => builder.with_no_client_auth(),
        Some(pem) => {
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(client_ca_roots(pem)?),
                Arc::new(rustls::crypto::ring::default_provider()),
            )
            .allow_unauthenticated()
            .build()
            .map_err(|e| TlsError::Invalid(format!("client CA: {e}")))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    config.ignore_client_order = true;
    Ok(Arc::new(config))
}

/// [`client_port_config`] from the files `cert` and `key` (`serve --client-tls-cert` and
/// `--client-tls-key`) and `client_ca` (`serve --client-ca`); `Invalid` if the key file is
/// readable by every user (mode o+r).
pub fn load_client_port_config(
    cert: &Path,
    key: &Path,
    policy: &TlsPolicy,
    client_ca: Option<&Path>,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    check_key_mode(key)?;
    let client_ca = client_ca.map(read).transpose()?;
    client_port_config(&read(cert)?, &read(key)?, policy, client_ca.as_deref()).map_err(|e| match e
    {
        TlsError::Invalid(what) => {
            TlsError::Invalid(format!("{} / {}: {what}", cert.display(), key.display()))
        }
        other => other,
    })
}

/// `Invalid` if the private key file `key` is readable by every user (mode o+r).
pub(crate) fn check_key_mode(key: &Path) -> Result<(), TlsError> {
    use std::os::unix::fs::PermissionsExt;
    let mode = fs::metadata(key)
        .map_err(|source| TlsError::Io {
            path: key.to_path_buf(),
            source,
        })?
        .permissions()
        .mode();
    if mode & 0o004 != 0 {
        return Err(TlsError::Invalid(format!(
            "{} is readable by every user (mode {:o}): chmod o-r it",
            key.display(),
            mode & 0o777
        )));
    }
    Ok(())
}

/// A node's TLS material as PEM text, as read once: the join path (before the node runs)
/// and tools use it; the running node's certificates are [`reload::Certificates`].
#[derive(Clone)]
pub struct NodeTls {
    /// The cluster CA certificate.
    pub ca_pem: String,
    /// The node certificate.
    pub cert_pem: String,
    /// The node private key.
    pub key_pem: String,
    /// Source address of outgoing cluster connections: the address the cluster port listens
    /// on, so peers see a node come from the address they know it by (and a firewall rule
    /// between two addresses cuts exactly that link). `None`: the system chooses.
    pub source_ip: Option<IpAddr>,
}

impl NodeTls {
    /// Loads `ca.pem`, `node.pem` and `node-key.pem` from `dir`.
    pub fn load(dir: &Path) -> Result<Self, TlsError> {
        Ok(Self {
            ca_pem: read(&dir.join(CA_CERT))?,
            cert_pem: read(&dir.join(NODE_CERT))?,
            key_pem: read(&dir.join(NODE_KEY))?,
            source_ip: None,
        })
    }

    /// A lazily-connected mutual-TLS channel to `target`'s cluster port, pinning `node-<target>`.
    pub fn cluster_channel(&self, target: NodeId, node: &NodeInfo) -> Result<Channel, String> {
        self.channel_to(&node.cluster_addr, &node_name(target))
    }

    /// A lazily-connected mutual-TLS channel to any member's cluster port at `addr`.
    pub fn join_channel(&self, addr: &str) -> Result<Channel, String> {
        self.channel_to(addr, ANY_NODE_NAME)
    }

    fn channel_to(&self, addr: &str, server_name: &str) -> Result<Channel, String> {
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca_pem))
            .identity(Identity::from_pem(&self.cert_pem, &self.key_pem))
            .domain_name(server_name);
        Ok(peer_endpoint("https", addr)?
            .tls_config(tls)
            .map_err(|e| format!("tls config: {e}"))?
            .connect_timeout(Duration::from_millis(CLUSTER_CONNECT_TIMEOUT_MS))
            .tcp_nodelay(true)
            .local_address(self.source_ip)
            .connect_lazy())
    }
}

/// The settings of every channel to a peer's cluster port at `addr` (`scheme://addr`): the
/// call timeout, and the HTTP/2 keepalive that notices a dead peer. The connect timeout
/// ([`CLUSTER_CONNECT_TIMEOUT_MS`]) is the connector's: inside it, a connection that could
/// not be made is a `tonic::ConnectError` (the call was never sent), which tonic's own
/// timeout around a custom connector is not.
pub(crate) fn peer_endpoint(scheme: &str, addr: &str) -> Result<Endpoint, String> {
    let endpoint = Endpoint::from_shared(format!("{scheme}://{addr}"))
        .map_err(|e| format!("bad cluster address {addr:?}: {e}"))?
        .timeout(Duration::from_millis(CLUSTER_RPC_TIMEOUT_MS))
        .http2_keep_alive_interval(PEER_KEEPALIVE_INTERVAL)
        .keep_alive_timeout(PEER_KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true);
    // The chaos harness's unsafe mode: channels that never notice a dead peer (the
    // keepalive of the node's earlier releases, 10 s + 5 s), which its failover checker
    // must catch.
    #[cfg(feature = "failpoints")]
    let endpoint = if fail::eval("conifer::peer::slow_keepalive", |_| ()).is_some() {
        endpoint
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5))
    } else {
        endpoint
    };
    Ok(endpoint)
}

/// Time allowed to connect to a peer's cluster port.
pub const CLUSTER_CONNECT_TIMEOUT_MS: u64 = 2_000;
/// Time allowed for one internal RPC (snapshot chunks included).
pub const CLUSTER_RPC_TIMEOUT_MS: u64 = 30_000;
/// How often each end of a node-to-node connection sends an HTTP/2 PING, busy or idle.
pub const PEER_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(1);
/// How long a PING may go unanswered before its connection is closed and every call on it
/// fails unanswered (`PeerFailure::Unanswered`). With [`PEER_KEEPALIVE_INTERVAL`], a peer
/// cut off by a partition, paused or gone without closing its connections is noticed within
/// 3 s — the bound on a call forwarded to it, instead of [`CLUSTER_RPC_TIMEOUT_MS`]. The
/// margin over a loopback round trip keeps a node whose cores are busy from being taken
/// for dead.
pub const PEER_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(2);

/// The node ids named `node-<id>` in the DNS SANs of the first (leaf) certificate.
pub fn peer_node_ids(certs: &[rustls::pki_types::CertificateDer<'_>]) -> Vec<NodeId> {
    let Some(leaf) = certs.first() else {
        return Vec::new();
    };
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(leaf.as_ref()) else {
        return Vec::new();
    };
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|name| match name {
            x509_parser::extensions::GeneralName::DNSName(dns) => {
                dns.strip_prefix("node-")?.parse().ok()
            }
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_policy_is_tls_12_and_13_with_aes_256_gcm_first() {
        let policy = TlsPolicy::default();
        assert_eq!(policy.versions(), [TlsVersion::V1_3, TlsVersion::V1_2]);
        assert_eq!(policy.suite_names(), DEFAULT_CIPHER_SUITES);
        assert!(policy.describe().starts_with(
            "TLS 1.3 and TLS 1.2 only; cipher suites in the server's order of \
                          preference: TLS13_AES_256_GCM_SHA384, TLS13_AES_128_GCM_SHA256"
        ));
    }

    #[test]
    fn tls_13_alone_keeps_the_default_tls_13_suites() {
        let policy = TlsPolicy::new("1.3", None).unwrap();
        assert_eq!(policy.versions(), [TlsVersion::V1_3]);
        assert_eq!(policy.suite_names(), DEFAULT_CIPHER_SUITES[..3]);
    }

    #[test]
    fn tls_12_suites_must_fit_the_certificate_key() {
        let key = KeyPair::generate().unwrap(); // ECDSA P-256
        let cert = CertificateParams::new(vec!["node-1".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let rsa_only = TlsPolicy::new(
            "1.2",
            Some("TLS13_AES_256_GCM_SHA384,TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384"),
        )
        .unwrap();
        let refused = client_port_config(&cert.pem(), &key.serialize_pem(), &rsa_only, None);
        assert!(
            matches!(&refused, Err(TlsError::Invalid(m)) if m.contains("TLS_ECDHE_ECDSA_WITH")),
            "{:?}",
            refused.err()
        );
        let default = TlsPolicy::default();
        assert!(client_port_config(&cert.pem(), &key.serialize_pem(), &default, None).is_ok());
    }

    #[test]
    fn a_certificates_names_are_its_sans_then_its_common_name() {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["etl".to_string()]).unwrap();
        params
            .subject_alt_names
            .push(SanType::Rfc822Name("ops@example.test".try_into().unwrap()));
        params
            .subject_alt_names
            .push(SanType::URI("spiffe://conifer/etl".try_into().unwrap()));
        params
            .subject_alt_names
            .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "etl");
        dn.push(DnType::OrganizationName, "not a name");
        params.distinguished_name = dn;
        let cert = params.self_signed(&key).unwrap();
        assert_eq!(
            certificate_names(cert.der()),
            ["etl", "ops@example.test", "spiffe://conifer/etl"]
        );
        assert!(certificate_names(b"not a certificate").is_empty());
    }

    #[test]
    fn a_client_ca_file_must_hold_certificates() {
        assert!(matches!(
            client_ca_roots("nothing here"),
            Err(TlsError::Invalid(m)) if m.contains("no certificate")
        ));
        let dir = tempfile::tempdir().unwrap();
        generate_ca(dir.path(), "old").unwrap();
        let old = read(&dir.path().join(CA_CERT)).unwrap();
        generate_ca(dir.path(), "new").unwrap();
        let new = read(&dir.path().join(CA_CERT)).unwrap();
        assert_eq!(client_ca_roots(&format!("{old}{new}")).unwrap().len(), 2);
    }

    #[test]
    fn a_policy_takes_rfc_names_in_the_given_order() {
        let policy = TlsPolicy::new(
            "1.3",
            Some("tls_chacha20_poly1305_sha256, TLS13_AES_256_GCM_SHA384"),
        )
        .unwrap();
        assert_eq!(policy.versions(), [TlsVersion::V1_3]);
        assert_eq!(
            policy.suite_names(),
            ["TLS13_CHACHA20_POLY1305_SHA256", "TLS13_AES_256_GCM_SHA384"]
        );
    }

    #[test]
    fn a_policy_that_cannot_hold_is_refused_with_its_reason() {
        let refused = |min: &str, suites: Option<&str>| TlsPolicy::new(min, suites).unwrap_err();
        assert!(refused("1.1", None).contains("give 1.2 or 1.3"));
        assert!(refused("1.0", None).contains("never"));
        assert!(refused("1.2", Some("TLS_RSA_WITH_AES_256_CBC_SHA")).contains("unknown suite"));
        assert!(refused(
            "1.2",
            Some("TLS13_AES_256_GCM_SHA384,TLS_AES_256_GCM_SHA384")
        )
        .contains("twice"));
        assert!(
            refused("1.3", Some("TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384"))
                .contains("below --tls-min-version 1.3")
        );
        assert!(refused("1.2", Some("TLS13_AES_256_GCM_SHA384")).contains("no TLS 1.2 suite"));
        assert!(
            refused("1.2", Some("TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384"))
                .contains("no TLS 1.3 suite")
        );
        assert!(refused("1.2", Some(" , ")).contains("no TLS 1.3 suite"));
    }
}
