//! The Pinecone data plane over gRPC (`VectorService`, the official SDKs' stubs), over TLS
//! to a node's client port or an index's own port, directly or through an HTTP CONNECT
//! proxy ([`Proxy`]). Every call carries the project's API key (`api-key` metadata) unless
//! a client certificate authenticates instead, and, on a node's client port, the index it
//! is for (`x-conifer-index`).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use conifer_proto::pinecone::vector_service_client::VectorServiceClient;
use hyper_util::client::legacy::connect::proxy::Tunnel;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::proxy::matcher::Matcher;
use hyper_util::rt::TokioIo;
use tonic::metadata::AsciiMetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::proxy::{authorization, redacted, Proxy};
use crate::{ClientError, Transport, REQUEST_TIMEOUT_MS};

/// Time allowed to open a connection (through the proxy: to the proxy, then the tunnel).
pub const CONNECT_TIMEOUT_MS: u64 = 10_000;

/// A `VectorService` client whose calls carry the API key and the index.
pub type DataPlane = VectorServiceClient<InterceptedService<Channel, Credentials>>;

/// Adds `api-key` (and `x-conifer-index`) metadata to every call.
#[derive(Clone)]
pub struct Credentials {
    api_key: Option<AsciiMetadataValue>,
    index: Option<AsciiMetadataValue>,
}

impl tonic::service::Interceptor for Credentials {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(key) = &self.api_key {
            request.metadata_mut().insert("api-key", key.clone());
        }
        if let Some(index) = &self.index {
            request
                .metadata_mut()
                .insert("x-conifer-index", index.clone());
        }
        Ok(request)
    }
}

/// Connects to `url` (`https://host:port`: a node's client port, with `index` naming the
/// index, or the index's own host with `index` `None`) over `transport` (trusting its CA
/// besides the system's roots, presenting its client certificate, through its proxy);
/// calls authenticate with `api_key`, or with the client certificate alone when `None`.
/// Fails with [`ClientError::Transport`] naming the proxy (never its password) when it
/// refuses the tunnel: proxies answer a wrong password with 407 (or, like tinyproxy, 401).
pub async fn connect(
    url: &str,
    transport: &Transport,
    api_key: Option<&str>,
    index: Option<&str>,
) -> Result<DataPlane, ClientError> {
    let proxy = &transport.proxy;
    let metadata = |what: &str, value: &str| {
        AsciiMetadataValue::try_from(value)
            .map_err(|_| ClientError::Request(format!("the {what} is not printable ASCII")))
    };
    let credentials = Credentials {
        api_key: api_key.map(|k| metadata("API key", k)).transpose()?,
        index: index.map(|i| metadata("index name", i)).transpose()?,
    };
    let mut tls = ClientTlsConfig::new().with_native_roots();
    if let Some(ca_pem) = &transport.ca_pem {
        tls = tls.ca_certificate(Certificate::from_pem(ca_pem));
    }
    if let Some(identity) = &transport.identity {
        tls = tls.identity(Identity::from_pem(&identity.cert_pem, &identity.key_pem));
    }
    let endpoint = Endpoint::from_shared(url.to_string())
        .map_err(|e| {
            ClientError::Request(format!(
                "the node URL {url:?} is not usable ({e}): give it as https://HOST:PORT"
            ))
        })?
        .tls_config(tls)
        .map_err(|e| ClientError::Request(format!("TLS configuration: {e}")))?
        .connect_timeout(Duration::from_millis(CONNECT_TIMEOUT_MS))
        .timeout(Duration::from_millis(REQUEST_TIMEOUT_MS));
    let route = proxy.route(url);
    let channel = endpoint
        .connect_with_connector(Connector::new(proxy))
        .await
        .map_err(|e| {
            let mut cause: &dyn std::error::Error = &e;
            let mut text = e.to_string();
            while let Some(inner) = cause.source() {
                text = format!("{text}: {inner}");
                cause = inner;
            }
            let via = route
                .map(|p| format!(" through the proxy {p}"))
                .unwrap_or_default();
            let hint = if text.contains("tunnel error") {
                " (the HTTP CONNECT proxy refused the tunnel: check its address, user and \
                 password — http://user:password@host:port — and that it allows CONNECT to \
                 this port)"
            } else {
                ""
            };
            ClientError::Transport(format!("cannot reach {url}{via}: {text}{hint}"))
        })?;
    Ok(VectorServiceClient::with_interceptor(channel, credentials))
}

/// Opens TCP connections straight to a node or through the CONNECT tunnel of the proxy the
/// rules name for it.
#[derive(Clone)]
struct Connector {
    matcher: std::sync::Arc<Matcher>,
    http: HttpConnector,
}

impl Connector {
    fn new(proxy: &Proxy) -> Self {
        let mut http = HttpConnector::new();
        // The destination is https://: TLS is tonic's, on top of this connection.
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(Duration::from_millis(CONNECT_TIMEOUT_MS)));
        Self {
            matcher: std::sync::Arc::new(proxy.matcher()),
            http,
        }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tower::Service<http::Uri> for Connector {
    type Response = TokioIo<tokio::net::TcpStream>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, dst: http::Uri) -> Self::Future {
        let mut http = self.http.clone();
        let intercept = self.matcher.intercept(&dst);
        Box::pin(async move {
            match intercept {
                None => Ok(tower::Service::call(&mut http, dst).await?),
                Some(proxy) if proxy.uri().scheme_str() != Some("http") => Err(format!(
                    "the proxy {} is not an http:// proxy: this client tunnels gRPC through \
                     HTTP CONNECT only",
                    redacted(&proxy.uri().to_string())
                )
                .into()),
                Some(proxy) => {
                    let mut tunnel = Tunnel::new(proxy.uri().clone(), http);
                    if let Some(auth) = authorization(&proxy) {
                        tunnel = tunnel.with_auth(auth);
                    }
                    tower::Service::call(&mut tunnel, dst).await.map_err(|e| {
                        let cause = std::error::Error::source(&e)
                            .map(|s| format!(" ({s})"))
                            .unwrap_or_default();
                        format!("proxy {}: {e}{cause}", redacted(&proxy.uri().to_string())).into()
                    })
                }
            }
        })
    }
}
