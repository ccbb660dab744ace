//! How a client reaches the nodes: directly, or through an HTTP CONNECT proxy (a forward
//! proxy that opens a TCP tunnel; TLS to the node runs inside it end to end, so the proxy
//! sees neither the API key nor the data). REST calls go through reqwest's proxy support
//! and gRPC channels through hyper-util's CONNECT tunnel; both read the environment with
//! the same rules (curl's: `HTTPS_PROXY` / `https_proxy` for `https://` nodes, `HTTP_PROXY`
//! for `http://` ones, `ALL_PROXY` for both, hosts, domains and CIDR ranges in `NO_PROXY`
//! reached directly).

use std::str::FromStr;

use hyper_util::client::proxy::matcher::{Intercept, Matcher};

use crate::ClientError;

/// Where a client's connections to the nodes go.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Proxy {
    /// The proxy the environment names (`HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY`, except
    /// `NO_PROXY` hosts), or none when it names none.
    #[default]
    Environment,
    /// Every node through this proxy, `http://[user:password@]host:port` (basic
    /// authentication when user and password are given, percent-encoded), except the hosts
    /// `NO_PROXY` names.
    Url(String),
    /// Straight to the nodes, whatever the environment says.
    Direct,
}

impl FromStr for Proxy {
    type Err = ClientError;

    /// `direct` (or `none`) for [`Proxy::Direct`], else a proxy URL checked for its shape:
    /// `http://` (the connection to the proxy is plain TCP; what it carries stays TLS), a
    /// host, and a port. The error names the form expected, never the password.
    fn from_str(text: &str) -> Result<Self, ClientError> {
        if matches!(text, "direct" | "none") {
            return Ok(Proxy::Direct);
        }
        let bad = |why: &str| {
            ClientError::Request(format!(
                "the proxy {}: {why}; give it as http://[user:password@]host:port, or `direct`",
                redacted(text)
            ))
        };
        let uri: http::Uri = text.parse().map_err(|_| bad("is not a URL"))?;
        if uri.scheme_str() != Some("http") {
            return Err(bad(
                "must be an http:// proxy (HTTP CONNECT; the tunnel still carries TLS)",
            ));
        }
        if uri.host().is_none_or(str::is_empty) {
            return Err(bad("names no host"));
        }
        if uri.port_u16().is_none() {
            return Err(bad("names no port"));
        }
        if uri.path_and_query().is_some_and(|p| p.as_str() != "/") {
            return Err(bad("has a path"));
        }
        Ok(Proxy::Url(text.to_string()))
    }
}

/// `url` with the password of its user information replaced by `***` (for messages),
/// with or without a scheme (`alice:s3cret@proxy:8888` is a mistake that carries one too).
pub fn redacted(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (format!("{scheme}://"), rest),
        None => (String::new(), url),
    };
    match rest.rsplit_once('@') {
        Some((user_info, host)) => {
            let user = user_info.split(':').next().unwrap_or_default();
            format!("{scheme}{user}:***@{host}")
        }
        None => url.to_string(),
    }
}

/// `NO_PROXY` (or `no_proxy`) from the environment, empty when unset.
fn no_proxy_from_env() -> String {
    std::env::var("NO_PROXY")
        .or_else(|_| std::env::var("no_proxy"))
        .unwrap_or_default()
}

impl Proxy {
    /// The proxy rules as a matcher of destinations.
    pub(crate) fn matcher(&self) -> Matcher {
        match self {
            Proxy::Environment => Matcher::from_env(),
            Proxy::Url(url) => Matcher::builder()
                .all(url.clone())
                .no(no_proxy_from_env())
                .build(),
            Proxy::Direct => Matcher::builder().build(),
        }
    }

    /// The proxy a connection to `node` (a URL) goes through, without its credentials;
    /// `None`: straight to it.
    pub fn route(&self, node: &str) -> Option<String> {
        let uri: http::Uri = node.parse().ok()?;
        self.matcher().intercept(&uri).map(|i| i.uri().to_string())
    }

    /// `builder` configured with these rules (reqwest reads the environment itself).
    pub(crate) fn configure(
        &self,
        builder: reqwest::ClientBuilder,
    ) -> Result<reqwest::ClientBuilder, ClientError> {
        Ok(match self {
            Proxy::Environment => builder,
            Proxy::Url(url) => builder.proxy(
                reqwest::Proxy::all(url.as_str())
                    .map_err(|e| ClientError::Request(format!("the proxy {}: {e}", redacted(url))))?
                    .no_proxy(reqwest::NoProxy::from_string(&no_proxy_from_env())),
            ),
            Proxy::Direct => builder.no_proxy(),
        })
    }
}

/// The basic-authentication header a matched proxy asks for, if its URL carries a user.
pub(crate) fn authorization(intercept: &Intercept) -> Option<http::HeaderValue> {
    intercept.basic_auth().cloned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_urls_are_checked_for_their_shape() {
        assert_eq!("direct".parse::<Proxy>().unwrap(), Proxy::Direct);
        assert_eq!(
            "http://u:p@127.0.0.1:8888".parse::<Proxy>().unwrap(),
            Proxy::Url("http://u:p@127.0.0.1:8888".into())
        );
        for bad in [
            "127.0.0.1:8888",
            "https://127.0.0.1:8888",
            "socks5://127.0.0.1:1080",
            "http://127.0.0.1",
            "http://127.0.0.1:8888/path",
            "not a url",
        ] {
            let e = bad.parse::<Proxy>().unwrap_err().to_string();
            assert!(e.contains("http://[user:password@]host:port"), "{bad}: {e}");
        }
        let e = "https://alice:s3cret@proxy:1"
            .parse::<Proxy>()
            .unwrap_err()
            .to_string();
        assert!(
            !e.contains("s3cret") && e.contains("alice:***@proxy:1"),
            "{e}"
        );
    }

    #[test]
    fn a_password_never_shows_in_an_error_with_or_without_a_scheme() {
        for text in ["alice:s3cret@proxy:8888", "https://alice:s3cret@proxy:8888"] {
            let e = text.parse::<Proxy>().unwrap_err().to_string();
            assert!(
                !e.contains("s3cret") && e.contains("alice:***@proxy:8888"),
                "{e}"
            );
        }
    }

    #[test]
    fn an_explicit_proxy_routes_every_node_and_direct_none() {
        let proxy = Proxy::Url("http://alice:s3cret@127.0.0.1:8888".into());
        assert_eq!(
            proxy.route("https://127.0.0.2:7443").as_deref(),
            Some("http://127.0.0.1:8888/")
        );
        assert_eq!(Proxy::Direct.route("https://127.0.0.2:7443"), None);
        let matched = proxy
            .matcher()
            .intercept(&"https://127.0.0.2:7443".parse().unwrap())
            .unwrap();
        // "alice:s3cret" in base64.
        assert_eq!(authorization(&matched).unwrap(), "Basic YWxpY2U6czNjcmV0");
    }
}
