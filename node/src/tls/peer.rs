//! Node-to-node connections under the node's reloadable [`Certificates`]: the cluster
//! port's accept loop ([`cluster_incoming`]) and the connector of outgoing channels
//! ([`PeerConnector`]). Each new connection takes the certificate set in use when it is
//! made, so a reloaded node certificate or CA bundle applies from the next connection on.

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tonic::transport::Channel;

use super::reload::Certificates;
use super::TLS_HANDSHAKE_TIMEOUT_MS;

/// Connections that finished their handshake and wait for the gRPC server to take them.
const ACCEPTED_QUEUE: usize = 64;

/// The cluster port's connections: each accepted TCP connection goes through a mutual-TLS
/// handshake with the certificate set in use (a client certificate chaining to the CA
/// bundle required; [`TLS_HANDSHAKE_TIMEOUT_MS`] allowed), and those that complete it are
/// handed to the gRPC server, whose handlers read the peer's certificate
/// (`tonic::Request::peer_certs`). Failed handshakes are logged at debug level.
pub fn cluster_incoming(
    listener: TcpListener,
    certs: Arc<Certificates>,
) -> tokio_stream::wrappers::ReceiverStream<io::Result<tokio_rustls::server::TlsStream<TcpStream>>>
{
    let (tx, rx) = tokio::sync::mpsc::channel(ACCEPTED_QUEUE);
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!("cluster port: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            if tx.is_closed() {
                return;
            }
            let acceptor = TlsAcceptor::from(certs.current().cluster_server.clone());
            let tx = tx.clone();
            tokio::spawn(async move {
                let handshake = tokio::time::timeout(
                    Duration::from_millis(TLS_HANDSHAKE_TIMEOUT_MS),
                    acceptor.accept(tcp),
                );
                match handshake.await {
                    Ok(Ok(tls)) => {
                        let _ = tx.send(Ok(tls)).await;
                    }
                    Ok(Err(e)) => tracing::debug!(%peer, "cluster port: TLS handshake failed: {e}"),
                    Err(_) => tracing::debug!(%peer, "cluster port: TLS handshake timed out"),
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// A lazily-connected channel to the cluster port at `addr` whose connections present the
/// certificate set in use when each is made and expect the peer to be `server_name`
/// (`node-<id>`), leaving from the cluster port's address; keepalive and timeouts as every
/// peer channel's (`super::peer_endpoint`).
pub fn channel(
    certs: &Arc<Certificates>,
    addr: &str,
    server_name: &str,
) -> Result<Channel, String> {
    let connector = PeerConnector::new(certs.clone(), server_name, certs.source_ip())?;
    Ok(super::peer_endpoint("http", addr)?.connect_with_connector_lazy(connector))
}

/// Opens TCP connections to a peer's cluster port from `source_ip` (when set) and runs the
/// mutual-TLS handshake with the certificate set in use, verifying that the peer's
/// certificate names `server_name` (`node-<id>`, or `conifer-node` when joining). For
/// `tonic::transport::Endpoint::connect_with_connector_lazy` with an `http://` URI: the
/// connector supplies the TLS.
#[derive(Clone)]
pub struct PeerConnector {
    certs: Arc<Certificates>,
    server_name: ServerName<'static>,
    source_ip: Option<IpAddr>,
}

impl PeerConnector {
    /// A connector presenting this node's certificates and expecting `server_name`.
    pub fn new(
        certs: Arc<Certificates>,
        server_name: &str,
        source_ip: Option<IpAddr>,
    ) -> Result<Self, String> {
        let server_name = ServerName::try_from(server_name.to_string())
            .map_err(|e| format!("peer name {server_name:?}: {e}"))?;
        Ok(Self {
            certs,
            server_name,
            source_ip,
        })
    }
}

async fn connect_from(addr: SocketAddr, source: Option<IpAddr>) -> io::Result<TcpStream> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(ip) = source.filter(|ip| ip.is_ipv4() == addr.is_ipv4()) {
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    let tcp = socket.connect(addr).await?;
    tcp.set_nodelay(true)?;
    Ok(tcp)
}

impl tower::Service<http::Uri> for PeerConnector {
    type Response = TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let host = uri.host().unwrap_or_default().trim_matches(['[', ']']);
            let port = uri.port_u16().unwrap_or(443);
            let mut last = io::Error::new(
                io::ErrorKind::NotFound,
                format!("{host}:{port} resolves to no address"),
            );
            let mut tcp = None;
            for addr in tokio::net::lookup_host((host, port)).await? {
                match connect_from(addr, this.source_ip).await {
                    Ok(stream) => {
                        tcp = Some(stream);
                        break;
                    }
                    Err(e) => last = e,
                }
            }
            let tcp = tcp.ok_or(last)?;
            let connector = TlsConnector::from(this.certs.current().cluster_client.clone());
            let tls = connector.connect(this.server_name.clone(), tcp).await?;
            Ok(TokioIo::new(tls))
        })
    }
}
