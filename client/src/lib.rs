//! Rust SDK for Conifer.
//!
//! Today: the admin REST API (projects, API keys, cluster membership) over TLS with the
//! cluster CA. The gRPC data plane, client certificates and HTTP CONNECT proxies arrive with
//! the data-plane and network issues.

use std::time::Duration;

use serde_json::{json, Value};

/// Timeout of one admin request.
pub const REQUEST_TIMEOUT_MS: u64 = 30_000;

/// Errors of the SDK.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The request did not complete (connection, TLS, timeout).
    #[error("request failed: {0}")]
    Transport(#[from] reqwest::Error),
    /// The server answered with an error body.
    #[error("{status} {code}: {message}")]
    Api {
        /// HTTP status.
        status: u16,
        /// Pinecone error code.
        code: String,
        /// Server's message.
        message: String,
    },
}

/// A client of one node's admin API.
pub struct AdminClient {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl AdminClient {
    /// A client of `api_url` (`https://host:port`) trusting `ca_pem`, authenticating with
    /// the operator `token`.
    pub fn new(api_url: &str, ca_pem: &[u8], token: &str) -> Result<Self, ClientError> {
        let http = reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(ca_pem)?)
            .timeout(Duration::from_millis(REQUEST_TIMEOUT_MS))
            .build()?;
        Ok(Self {
            base: api_url.trim_end_matches('/').to_string(),
            token: token.to_string(),
            http,
        })
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> Result<Value, ClientError> {
        let resp = req.bearer_auth(&self.token).send().await?;
        let status = resp.status().as_u16();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        if (200..300).contains(&status) {
            return Ok(body);
        }
        Err(ClientError::Api {
            status,
            code: body["error"]["code"]
                .as_str()
                .unwrap_or("UNKNOWN")
                .to_string(),
            message: body["error"]["message"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        })
    }

    /// `POST /admin/projects`.
    pub async fn create_project(&self, name: &str) -> Result<Value, ClientError> {
        self.send(
            self.http
                .post(format!("{}/admin/projects", self.base))
                .json(&json!({ "name": name })),
        )
        .await
    }

    /// `GET /admin/projects`: the `data` array.
    pub async fn list_projects(&self) -> Result<Vec<Value>, ClientError> {
        let body = self
            .send(self.http.get(format!("{}/admin/projects", self.base)))
            .await?;
        Ok(body["data"].as_array().cloned().unwrap_or_default())
    }

    /// `POST /admin/projects/{id}/api-keys`: returns `{key, value}`; `value` is shown only here.
    pub async fn create_api_key(
        &self,
        project_id: &str,
        name: &str,
        roles: &[&str],
    ) -> Result<Value, ClientError> {
        let url = format!("{}/admin/projects/{project_id}/api-keys", self.base);
        self.send(
            self.http
                .post(url)
                .json(&json!({ "name": name, "roles": roles })),
        )
        .await
    }

    /// `GET /admin/cluster`.
    pub async fn cluster(&self) -> Result<Value, ClientError> {
        self.send(self.http.get(format!("{}/admin/cluster", self.base)))
            .await
    }
}
