//! The client port speaks TLS 1.2 and 1.3 with the node certificate, which is valid for the
//! node's addresses and for index hosts under `*.<domain>`, and for nothing else.

use std::sync::Arc;

use conifer_tests::Cluster;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ProtocolVersion, RootCertStore, SupportedProtocolVersion};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

async fn handshake(
    cluster: &Cluster,
    versions: &[&'static SupportedProtocolVersion],
    name: &str,
) -> Result<ProtocolVersion, String> {
    let ca = std::fs::read(cluster.ca_dir.join("ca.pem")).unwrap();
    let mut roots = RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut ca.as_slice()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    let tcp = TcpStream::connect(&cluster.nodes[0].api_addr)
        .await
        .unwrap();
    let server_name = ServerName::try_from(name.to_string()).unwrap();
    let tls = TlsConnector::from(Arc::new(config))
        .connect(server_name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    tls.get_ref()
        .1
        .protocol_version()
        .ok_or_else(|| "no version negotiated".to_string())
}

#[tokio::test(flavor = "multi_thread")]
async fn client_port_negotiates_tls12_and_tls13_for_its_names_only() {
    let cluster = Cluster::start(1).await.unwrap();
    let v12 = handshake(&cluster, &[&rustls::version::TLS12], "127.0.0.1").await;
    assert_eq!(v12, Ok(ProtocolVersion::TLSv1_2));
    let v13 = handshake(&cluster, &[&rustls::version::TLS13], "node-1").await;
    assert_eq!(v13, Ok(ProtocolVersion::TLSv1_3));
    // Index hosts `<index>-<project>.<domain>` are covered by the wildcard SAN.
    let index_host = handshake(
        &cluster,
        &[&rustls::version::TLS13],
        "docs-a1b2c3.svc.test.localhost",
    )
    .await;
    assert_eq!(index_host, Ok(ProtocolVersion::TLSv1_3));
    let foreign = handshake(&cluster, &[&rustls::version::TLS13], "conifer.example.com").await;
    assert!(
        foreign.is_err_and(|e| e.contains("certificate")),
        "a name outside the certificate is refused"
    );
}

/// What `openssl s_client` printed connecting to `addr` with `args`, and whether it
/// completed a handshake.
fn s_client(addr: &str, args: &[&str]) -> (bool, String) {
    let output = std::process::Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            addr,
            "-servername",
            "node-1",
            "-brief",
        ])
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("openssl (scripts/install-deps.sh installs it)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

/// Asserts the server refused the handshake with a TLS alert (so the client's hello
/// reached it: the refusal is the server's, not the client's own).
fn assert_refused(addr: &str, args: &[&str]) {
    let (ok, text) = s_client(addr, args);
    assert!(!ok, "{args:?} must be refused: {text}");
    assert!(
        text.contains("SSL alert number"),
        "{args:?}: expected the server's alert: {text}"
    );
}

/// Asserts a handshake with `args` completes with `protocol` and `suite`.
fn assert_negotiated(addr: &str, args: &[&str], protocol: &str, suite: &str) {
    let (ok, text) = s_client(addr, args);
    assert!(ok, "{args:?} must be accepted: {text}");
    assert!(
        text.contains(&format!("Protocol version: {protocol}")),
        "{args:?}: {text}"
    );
    assert!(
        text.contains(&format!("Ciphersuite: {suite}")),
        "{args:?}: {text}"
    );
}

/// Sends `bytes` in plaintext and returns what the port answered before it closed the
/// connection; fails if it is not closed within 5 s (the TLS handshake timeout is 10 s).
async fn plaintext(addr: &str, bytes: &[u8]) -> Vec<u8> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(bytes).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(5),
        tcp.read_to_end(&mut answer),
    )
    .await
    .expect("the port closes a plaintext connection at once, never hangs")
    .expect("a clean close (FIN), not a reset");
    answer
}

#[tokio::test(flavor = "multi_thread")]
async fn client_port_accepts_tls12_and_13_with_aes_256_first_and_refuses_the_rest() {
    let cluster = Cluster::start(1).await.unwrap();
    let addr = cluster.nodes[0].api_addr.clone();
    // TLS 1.0 and 1.1, offered by a client that allows them (security level 0).
    assert_refused(&addr, &["-tls1", "-cipher", "DEFAULT:@SECLEVEL=0"]);
    assert_refused(&addr, &["-tls1_1", "-cipher", "DEFAULT:@SECLEVEL=0"]);
    // TLS 1.2 and 1.3: the server's preference (AES-256-GCM) wins over the client's order.
    assert_negotiated(
        &addr,
        &[
            "-tls1_2",
            "-cipher",
            "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384",
        ],
        "TLSv1.2",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
    );
    assert_negotiated(
        &addr,
        &[
            "-tls1_3",
            "-ciphersuites",
            "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384",
        ],
        "TLSv1.3",
        "TLS_AES_256_GCM_SHA384",
    );
    // A TLS 1.2 client offering only CBC (non-AEAD) suites finds none.
    assert_refused(
        &addr,
        &[
            "-tls1_2",
            "-cipher",
            "ECDHE-ECDSA-AES256-SHA384:ECDHE-ECDSA-AES128-SHA",
        ],
    );

    // Plain HTTP gets a 400 saying what the port speaks, then a clean close.
    let answer = plaintext(&addr, b"GET /indexes HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
    assert!(answer.contains("speaks TLS only"), "{answer}");
    // Plaintext gRPC (h2c, HTTP/2 with prior knowledge) is closed the same way.
    let mut h2c = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    h2c.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]); // an empty SETTINGS frame
    let answer = plaintext(&addr, &h2c).await;
    assert!(answer.starts_with(b"HTTP/1.1 400 "));
    // Anything else that is not TLS: closed without an answer.
    assert!(plaintext(&addr, &[0u8; 64]).await.is_empty());
    // And the port still serves TLS afterwards.
    let v13 = handshake(&cluster, &[&rustls::version::TLS13], "node-1").await;
    assert_eq!(v13, Ok(ProtocolVersion::TLSv1_3));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stricter_tls_policy_is_enforced_and_stated_at_startup() {
    let cluster = Cluster::start_with(conifer_tests::ClusterOptions {
        nodes: 1,
        args: [
            "--tls-min-version",
            "1.3",
            "--tls-cipher-suites",
            "TLS_AES_256_GCM_SHA384",
        ]
        .map(String::from)
        .to_vec(),
        ..Default::default()
    })
    .await
    .unwrap();
    let addr = cluster.nodes[0].api_addr.clone();
    assert_refused(&addr, &["-tls1_2"]);
    assert_refused(
        &addr,
        &["-tls1_3", "-ciphersuites", "TLS_AES_128_GCM_SHA256"],
    );
    assert_negotiated(&addr, &["-tls1_3"], "TLSv1.3", "TLS_AES_256_GCM_SHA384");
    let log = cluster.nodes[0].log();
    assert!(
        log.contains(
            "client TLS: TLS 1.3 only; cipher suites in the server's order of preference: \
             TLS13_AES_256_GCM_SHA384"
        ),
        "the policy is stated at startup: {log}"
    );
}
