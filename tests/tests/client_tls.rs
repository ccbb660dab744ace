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
