//! Node-to-node connections under the node's reloadable [`Certificates`]: the cluster
//! port's accept loop ([`cluster_incoming`]) and the connector of outgoing channels
//! ([`PeerConnector`]). Each new connection takes the certificate set in use when it is
//! made, so a reloaded node certificate or CA bundle applies from the next connection on.

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tonic::transport::Channel;

use super::reload::Certificates;
use super::{CLUSTER_CONNECT_TIMEOUT_MS, TLS_HANDSHAKE_TIMEOUT_MS};

/// Connections that finished their handshake and wait for the gRPC server to take them.
const ACCEPTED_QUEUE: usize = 64;

/// What the handlers of the cluster port know of a connection (a request extension, as
/// tonic's `Connected` puts it there): the peer's verified certificate chain, leaf first.
#[derive(Clone, Debug)]
pub struct PeerConnectInfo {
    /// The chain the peer presented and the handshake verified.
    pub certs: Arc<Vec<CertificateDer<'static>>>,
}

/// A cluster-port connection that is cut (every read and write fails) once a new
/// certificate set no longer trusts its peer's certificate — a retired CA's, say — so
/// that retiring a CA ends the sessions opened under it too. A blocked read notices at the
/// next bytes from the peer, which sends an HTTP/2 PING every second.
pub struct PeerStream {
    inner: tokio_rustls::server::TlsStream<TcpStream>,
    info: PeerConnectInfo,
    cut: Arc<AtomicBool>,
}

impl PeerStream {
    fn check(&self) -> io::Result<()> {
        if self.cut.load(Ordering::Acquire) {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "the peer's certificate is no longer trusted by this node's certificates",
            ));
        }
        Ok(())
    }
}

impl tonic::transport::server::Connected for PeerStream {
    type ConnectInfo = PeerConnectInfo;

    fn connect_info(&self) -> PeerConnectInfo {
        self.info.clone()
    }
}

impl AsyncRead for PeerStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.check()?;
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for PeerStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.check()?;
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The open cluster-port connections, to check again when the certificates change.
type OpenPeers = Arc<Mutex<Vec<(Weak<AtomicBool>, Arc<Vec<CertificateDer<'static>>>)>>>;

/// Cuts every open connection in `open` whose peer chain the set in use no longer
/// verifies, and forgets the connections that have closed.
fn recheck(open: &OpenPeers, certs: &Certificates) {
    let check = certs.current().peer_check.clone();
    let mut open = open.lock().unwrap_or_else(|p| p.into_inner());
    open.retain(|(cut, chain)| {
        let Some(cut) = cut.upgrade() else {
            return false;
        };
        let trusted = chain.split_first().is_some_and(|(leaf, rest)| {
            check
                .verify_client_cert(leaf, rest, UnixTime::now())
                .is_ok()
        });
        if !trusted {
            tracing::warn!(
                peers = ?super::peer_node_ids(chain),
                "a cluster connection's certificate is not trusted by the new certificates: \
                 closing it"
            );
            cut.store(true, Ordering::Release);
            return false;
        }
        true
    });
}

/// The cluster port's connections: each accepted TCP connection goes through a mutual-TLS
/// handshake with the certificate set in use (a client certificate chaining to the CA
/// bundle required; [`TLS_HANDSHAKE_TIMEOUT_MS`] allowed), and those that complete it are
/// handed to the gRPC server as [`PeerStream`]s, whose handlers read the peer's chain
/// ([`PeerConnectInfo`]). When a new set comes in, open connections whose peer it no
/// longer trusts are cut. Failed handshakes are logged at debug level.
pub fn cluster_incoming(
    listener: TcpListener,
    certs: Arc<Certificates>,
) -> tokio_stream::wrappers::ReceiverStream<io::Result<PeerStream>> {
    let (tx, rx) = tokio::sync::mpsc::channel(ACCEPTED_QUEUE);
    let open: OpenPeers = Arc::default();
    let (watched, mut changes) = (open.clone(), certs.subscribe());
    let rechecked = certs.clone();
    tokio::spawn(async move {
        while changes.changed().await.is_ok() {
            recheck(&watched, &rechecked);
        }
    });
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
            let open = open.clone();
            tokio::spawn(async move {
                let handshake = tokio::time::timeout(
                    Duration::from_millis(TLS_HANDSHAKE_TIMEOUT_MS),
                    acceptor.accept(tcp),
                );
                match handshake.await {
                    Ok(Ok(tls)) => {
                        let chain: Vec<CertificateDer<'static>> = tls
                            .get_ref()
                            .1
                            .peer_certificates()
                            .map(|c| c.iter().map(|c| c.clone().into_owned()).collect())
                            .unwrap_or_default();
                        let chain = Arc::new(chain);
                        let cut = Arc::new(AtomicBool::new(false));
                        open.lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push((Arc::downgrade(&cut), chain.clone()));
                        let stream = PeerStream {
                            inner: tls,
                            info: PeerConnectInfo { certs: chain },
                            cut,
                        };
                        let _ = tx.send(Ok(stream)).await;
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
        let connect = async move {
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
        };
        Box::pin(async move {
            tokio::time::timeout(Duration::from_millis(CLUSTER_CONNECT_TIMEOUT_MS), connect)
                .await
                .unwrap_or_else(|_| {
                    Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!(
                            "no connection within {CLUSTER_CONNECT_TIMEOUT_MS} ms (TCP and TLS)"
                        ),
                    ))
                })
        })
    }
}
