//! Rust SDK for Conifer.
//!
//! Today: the admin REST API over TLS with the cluster CA — sign-in (password or client
//! credentials), organizations, members, service accounts, projects, project members, API
//! keys, operator tokens, signing keys and the cluster. The `conifer` CLI's admin commands
//! are built on it. [`grpc`]: the Pinecone data plane over gRPC. Both go straight to the
//! nodes or through an HTTP CONNECT proxy ([`Proxy`]: explicit, or `HTTPS_PROXY` /
//! `NO_PROXY` from the environment, with basic authentication), and may present a client
//! certificate ([`ClientIdentity`]); [`Transport`] holds all three settings.

use std::time::Duration;

pub mod grpc;
pub mod proxy;

pub use proxy::Proxy;

/// HTTP methods of [`AdminClient::data`] and [`AdminClient::call`].
pub use reqwest::Method;

use serde_json::{json, Value};

/// Timeout of one admin request.
pub const REQUEST_TIMEOUT_MS: u64 = 30_000;

/// How a client reaches the nodes: the CA it trusts besides the system's trust store and
/// Mozilla's roots, the client certificate it presents, and the proxy it goes through.
#[derive(Clone, Debug, Default)]
pub struct Transport {
    /// A CA certificate (PEM) to trust, e.g. the cluster CA; a bundle of several is all
    /// trusted (both CAs during a rotation).
    pub ca_pem: Option<Vec<u8>>,
    /// A client certificate to present (to nodes started with `serve --client-ca`).
    pub identity: Option<ClientIdentity>,
    /// Where connections go.
    pub proxy: Proxy,
}

/// A client certificate chain (PEM, leaf first) and its private key (PEM). On a node with
/// a client CA, it authenticates as the service account one of its names is bound to.
#[derive(Clone)]
pub struct ClientIdentity {
    /// The certificate chain.
    pub cert_pem: Vec<u8>,
    /// The private key.
    pub key_pem: Vec<u8>,
}

impl std::fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientIdentity").finish_non_exhaustive()
    }
}

/// Errors of the SDK.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The request did not complete (connection, TLS, timeout): what failed, in one line.
    #[error("{0}")]
    Transport(String),
    /// The URL or request could not be built (e.g. a URL without `https://`).
    #[error("{0}")]
    Request(String),
    /// The CA certificate, or the client certificate and its key, given are not usable PEM.
    #[error("{0}")]
    Certificate(String),
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

/// The header naming the index of a data-plane call sent to a node's client port (instead
/// of the index's own host).
pub const INDEX_HEADER: &str = "X-Conifer-Index";

impl From<reqwest::Error> for ClientError {
    /// One line: where, and the innermost cause (reqwest repeats the URL down its chain).
    fn from(e: reqwest::Error) -> Self {
        let mut cause: &dyn std::error::Error = &e;
        while let Some(inner) = cause.source() {
            cause = inner;
        }
        let url = e
            .url()
            .map(|u| format!("{}://{}", u.scheme(), u.authority()))
            .unwrap_or_default();
        if e.is_builder() {
            return ClientError::Request(format!(
                "the node URL is not usable ({cause}): give it as https://HOST:PORT"
            ));
        }
        let hint = if e.is_timeout() {
            "no answer in time"
        } else if cause.to_string().contains("tunnel") {
            "the HTTP CONNECT proxy refused the tunnel: check its address, user and password \
             (--proxy, CONIFER_PROXY, HTTPS_PROXY) and that it allows CONNECT to this port"
        } else if cause.to_string().contains("certificate") {
            "TLS verification failed: is --ca-cert (or --bootstrap) the CA of this node's certificate?"
        } else {
            "is a node listening there? check --api-url (or --bootstrap)"
        };
        ClientError::Transport(format!("cannot reach {url}: {cause} ({hint})"))
    }
}

/// A client of one node's client port: the admin API with a bearer token, the index and
/// data-plane API with an API key ([`AdminClient::with_api_key`]).
pub struct AdminClient {
    base: String,
    token: Option<String>,
    api_key: Option<String>,
    project: Option<String>,
    http: reqwest::Client,
}

/// The header naming the project of an index or data-plane call made without an API key
/// (which implies its own project): with a bearer token or a client certificate.
pub const PROJECT_HEADER: &str = "X-Project-Id";

/// `text` as one URL path segment (percent-encoded).
pub fn segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// An `Option` field of a JSON body: present only when set.
fn put(body: &mut Value, field: &str, value: Option<Value>) {
    if let Some(v) = value {
        body[field] = v;
    }
}

impl AdminClient {
    /// A client of `api_url` (`https://host:port`, or `http://` for a node under
    /// `serve --dev-http`) trusting `ca_pem` (the cluster CA) besides the system's trust store
    /// and Mozilla's roots, authenticating with the bearer `token` (an operator token, or a
    /// token from [`AdminClient::login`] / [`AdminClient::client_credentials`]); `None` for
    /// the sign-in calls only.
    pub fn new(
        api_url: &str,
        ca_pem: Option<&[u8]>,
        token: Option<&str>,
    ) -> Result<Self, ClientError> {
        let transport = Transport {
            ca_pem: ca_pem.map(<[u8]>::to_vec),
            ..Transport::default()
        };
        Self::with_transport(api_url, &transport, token)
    }

    /// [`AdminClient::new`] over `transport`: its CA, client certificate (which alone
    /// authenticates as its service account when `token` is `None`) and proxy.
    pub fn with_transport(
        api_url: &str,
        transport: &Transport,
        token: Option<&str>,
    ) -> Result<Self, ClientError> {
        let http = reqwest::Client::builder().timeout(Duration::from_millis(REQUEST_TIMEOUT_MS));
        let mut http = transport.proxy.configure(http)?;
        if let Some(ca_pem) = &transport.ca_pem {
            // Every certificate of a bundle: during a CA rotation clients trust both CAs.
            let cas = reqwest::Certificate::from_pem_bundle(ca_pem)
                .map_err(|e| ClientError::Certificate(format!("the CA certificate: {e}")))?;
            if cas.is_empty() {
                return Err(ClientError::Certificate(
                    "the CA certificate file holds no certificate".into(),
                ));
            }
            for ca in cas {
                http = http.add_root_certificate(ca);
            }
        }
        if let Some(identity) = &transport.identity {
            let pem = [identity.cert_pem.as_slice(), b"\n", &identity.key_pem].concat();
            let identity = reqwest::Identity::from_pem(&pem).map_err(|e| {
                ClientError::Certificate(format!("the client certificate and key: {e}"))
            })?;
            http = http.identity(identity);
        }
        let http = http.build()?;
        Ok(Self {
            base: api_url.trim_end_matches('/').to_string(),
            token: token.map(String::from),
            api_key: None,
            project: None,
            http,
        })
    }

    /// The same client naming `project` in the `X-Project-Id` header of every call (what an
    /// index or data-plane call made with a token or a client certificate needs).
    pub fn with_project(mut self, project: &str) -> Self {
        self.project = Some(project.to_string());
        self
    }

    /// The node URL calls go to (`https://host:port`).
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// The same client authenticating with the API key `key` (`Api-Key` header), the
    /// credential of the index and data-plane calls, instead of a bearer token.
    pub fn with_api_key(mut self, key: &str) -> Self {
        self.api_key = Some(key.to_string());
        self.token = None;
        self
    }

    /// The same client authenticating with `token`.
    pub fn with_token(mut self, token: &str) -> Self {
        self.token = Some(token.to_string());
        self
    }

    /// Sends `method path` with an optional JSON body and returns the JSON answer.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, ClientError> {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(body) = body {
            req = req.json(&body);
        }
        self.send(req).await
    }

    async fn send(&self, mut req: reqwest::RequestBuilder) -> Result<Value, ClientError> {
        if let Some(token) = &self.token {
            req = req.bearer_auth(token);
        }
        if let Some(key) = &self.api_key {
            req = req.header("Api-Key", key);
        }
        if let Some(project) = &self.project {
            req = req.header(PROJECT_HEADER, project);
        }
        let resp = req.send().await?;
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

    async fn get(&self, path: &str) -> Result<Value, ClientError> {
        self.call(reqwest::Method::GET, path, None).await
    }

    async fn post(&self, path: &str, body: Value) -> Result<Value, ClientError> {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }

    async fn patch(&self, path: &str, body: Value) -> Result<Value, ClientError> {
        self.call(reqwest::Method::PATCH, path, Some(body)).await
    }

    async fn delete(&self, path: &str) -> Result<(), ClientError> {
        self.call(reqwest::Method::DELETE, path, None)
            .await
            .map(drop)
    }

    async fn list(&self, path: &str) -> Result<Vec<Value>, ClientError> {
        Ok(self.get(path).await?["data"]
            .as_array()
            .cloned()
            .unwrap_or_default())
    }

    /// `GET /indexes`: the project's indexes (Pinecone's index models).
    pub async fn list_indexes(&self) -> Result<Vec<Value>, ClientError> {
        Ok(self.get("/indexes").await?["indexes"]
            .as_array()
            .cloned()
            .unwrap_or_default())
    }

    /// `POST /indexes` with Pinecone's body (`name`, `dimension`, `metric`, `spec`, …): the
    /// index model.
    pub async fn create_index(&self, body: Value) -> Result<Value, ClientError> {
        self.post("/indexes", body).await
    }

    /// `GET /indexes/{name}`: the index model (`host`, `status`, …).
    pub async fn describe_index(&self, name: &str) -> Result<Value, ClientError> {
        self.get(&format!("/indexes/{}", segment(name))).await
    }

    /// `PATCH /indexes/{name}` (`deletion_protection`, `tags`): the index model.
    pub async fn configure_index(&self, name: &str, body: Value) -> Result<Value, ClientError> {
        self.patch(&format!("/indexes/{}", segment(name)), body)
            .await
    }

    /// `POST /indexes/{name}/rotate-key`: starts a rotation of the index's data key (202);
    /// the index model, whose `encryption.rotation` shows the progress.
    pub async fn rotate_index_key(&self, name: &str) -> Result<Value, ClientError> {
        self.call(
            reqwest::Method::POST,
            &format!("/indexes/{}/rotate-key", segment(name)),
            None,
        )
        .await
    }

    /// `DELETE /indexes/{name}`.
    pub async fn delete_index(&self, name: &str) -> Result<(), ClientError> {
        self.delete(&format!("/indexes/{}", segment(name))).await
    }

    /// `DELETE /indexes/{name}?delete_backups=true`: the index and its backups and
    /// collections.
    pub async fn delete_index_and_backups(&self, name: &str) -> Result<(), ClientError> {
        self.delete(&format!("/indexes/{}?delete_backups=true", segment(name)))
            .await
    }

    /// `POST /indexes/{name}/backups` (`name`, `description`): the backup model, status
    /// `Initializing` until written.
    pub async fn create_backup(&self, index: &str, body: Value) -> Result<Value, ClientError> {
        self.post(&format!("/indexes/{}/backups", segment(index)), body)
            .await
    }

    /// `GET /backups`, or `GET /indexes/{index}/backups`: every backup, page by page.
    pub async fn list_backups(&self, index: Option<&str>) -> Result<Vec<Value>, ClientError> {
        let path = match index {
            Some(index) => format!("/indexes/{}/backups", segment(index)),
            None => "/backups".to_string(),
        };
        self.all_pages(&path).await
    }

    /// `GET /backups/{id}`.
    pub async fn describe_backup(&self, id: &str) -> Result<Value, ClientError> {
        self.get(&format!("/backups/{}", segment(id))).await
    }

    /// `DELETE /backups/{id}`.
    pub async fn delete_backup(&self, id: &str) -> Result<(), ClientError> {
        self.delete(&format!("/backups/{}", segment(id))).await
    }

    /// `POST /backups/{id}/create-index` (`name`, `tags`, `deletion_protection`,
    /// `replicas`, `hnsw`): `{restore_job_id, index_id}`.
    pub async fn create_index_from_backup(
        &self,
        id: &str,
        body: Value,
    ) -> Result<Value, ClientError> {
        self.post(&format!("/backups/{}/create-index", segment(id)), body)
            .await
    }

    /// `GET /restore-jobs`: every restore job, page by page.
    pub async fn list_restore_jobs(&self) -> Result<Vec<Value>, ClientError> {
        self.all_pages("/restore-jobs").await
    }

    /// `GET /restore-jobs/{id}`: status, `percent_complete`, records restored.
    pub async fn describe_restore_job(&self, id: &str) -> Result<Value, ClientError> {
        self.get(&format!("/restore-jobs/{}", segment(id))).await
    }

    /// `POST /collections` (`name`, `source`): the collection model.
    pub async fn create_collection(&self, name: &str, source: &str) -> Result<Value, ClientError> {
        self.post("/collections", json!({"name": name, "source": source}))
            .await
    }

    /// `GET /collections`.
    pub async fn list_collections(&self) -> Result<Vec<Value>, ClientError> {
        Ok(self.get("/collections").await?["collections"]
            .as_array()
            .cloned()
            .unwrap_or_default())
    }

    /// `GET /collections/{name}`.
    pub async fn describe_collection(&self, name: &str) -> Result<Value, ClientError> {
        self.get(&format!("/collections/{}", segment(name))).await
    }

    /// `DELETE /collections/{name}`.
    pub async fn delete_collection(&self, name: &str) -> Result<(), ClientError> {
        self.delete(&format!("/collections/{}", segment(name)))
            .await
    }

    /// Every item of a Pinecone list (`data`, `pagination.next`), following its pages.
    async fn all_pages(&self, path: &str) -> Result<Vec<Value>, ClientError> {
        let mut items = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = match &token {
                None => self.get(&format!("{path}?limit=100")).await?,
                Some(t) => {
                    self.get(&format!("{path}?limit=100&paginationToken={}", segment(t)))
                        .await?
                }
            };
            items.extend(page["data"].as_array().cloned().unwrap_or_default());
            match page["pagination"]["next"].as_str() {
                Some(next) => token = Some(next.to_string()),
                None => return Ok(items),
            }
        }
    }

    /// A data-plane call (`/vectors/upsert`, `/query`, `/namespaces`, …) on `index`,
    /// sent to this node's client port with the [`INDEX_HEADER`]: the JSON answer.
    pub async fn data(
        &self,
        index: &str,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, ClientError> {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .header(INDEX_HEADER, index);
        if let Some(body) = body {
            req = req.json(&body);
        }
        self.send(req).await
    }

    /// `POST /auth/login`: `{access_token, token_type, expires_in}` for a user.
    pub async fn login(&self, email: &str, password: &str) -> Result<Value, ClientError> {
        self.post(
            "/auth/login",
            json!({ "email": email, "password": password }),
        )
        .await
    }

    /// `POST /auth/password`: a user's new password, set with the current one; answers a
    /// token for the new one (every earlier token stops working).
    pub async fn change_password(
        &self,
        email: &str,
        password: &str,
        new_password: &str,
    ) -> Result<Value, ClientError> {
        self.post(
            "/auth/password",
            json!({ "email": email, "password": password, "new_password": new_password }),
        )
        .await
    }

    /// `POST /oauth/token`: `{access_token, token_type, expires_in}` for a service account.
    pub async fn client_credentials(
        &self,
        client_id: &str,
        client_secret: &str,
    ) -> Result<Value, ClientError> {
        self.post(
            "/oauth/token",
            json!({ "grant_type": "client_credentials", "client_id": client_id,
                    "client_secret": client_secret }),
        )
        .await
    }

    /// `GET /admin/organizations`.
    pub async fn list_organizations(&self) -> Result<Vec<Value>, ClientError> {
        self.list("/admin/organizations").await
    }

    /// `POST /admin/organizations` (operator).
    pub async fn create_organization(&self, name: &str) -> Result<Value, ClientError> {
        self.post("/admin/organizations", json!({ "name": name }))
            .await
    }

    /// `GET /admin/organizations/{id}`.
    pub async fn get_organization(&self, id: &str) -> Result<Value, ClientError> {
        self.get(&format!("/admin/organizations/{id}")).await
    }

    /// `PATCH /admin/organizations/{id}`: rename.
    pub async fn rename_organization(&self, id: &str, name: &str) -> Result<Value, ClientError> {
        self.patch(
            &format!("/admin/organizations/{id}"),
            json!({ "name": name }),
        )
        .await
    }

    /// `DELETE /admin/organizations/{id}`.
    pub async fn delete_organization(&self, id: &str) -> Result<(), ClientError> {
        self.delete(&format!("/admin/organizations/{id}")).await
    }

    /// `GET /admin/organizations/{id}/members`.
    pub async fn list_members(&self, org: &str) -> Result<Vec<Value>, ClientError> {
        self.list(&format!("/admin/organizations/{org}/members"))
            .await
    }

    /// `POST /admin/organizations/{id}/members`: creates a user who signs in with `password`.
    pub async fn create_member(
        &self,
        org: &str,
        email: &str,
        name: Option<&str>,
        role: &str,
        password: &str,
    ) -> Result<Value, ClientError> {
        let mut body = json!({ "email": email, "role": role, "password": password });
        put(&mut body, "name", name.map(|n| json!(n)));
        self.post(&format!("/admin/organizations/{org}/members"), body)
            .await
    }

    /// `PATCH /admin/organizations/{id}/members/{user_id}`: role and/or password.
    pub async fn update_member(
        &self,
        org: &str,
        user_id: &str,
        role: Option<&str>,
        password: Option<&str>,
    ) -> Result<Value, ClientError> {
        let mut body = json!({});
        put(&mut body, "role", role.map(|r| json!(r)));
        put(&mut body, "password", password.map(|p| json!(p)));
        self.patch(
            &format!("/admin/organizations/{org}/members/{user_id}"),
            body,
        )
        .await
    }

    /// `DELETE /admin/organizations/{id}/members/{user_id}`.
    pub async fn remove_member(&self, org: &str, user_id: &str) -> Result<(), ClientError> {
        self.delete(&format!("/admin/organizations/{org}/members/{user_id}"))
            .await
    }

    /// `GET /admin/organizations/{id}/service-accounts`.
    pub async fn list_service_accounts(&self, org: &str) -> Result<Vec<Value>, ClientError> {
        self.list(&format!("/admin/organizations/{org}/service-accounts"))
            .await
    }

    /// `POST /admin/organizations/{id}/service-accounts`: the answer holds `client_secret`,
    /// shown only here.
    pub async fn create_service_account(
        &self,
        org: &str,
        name: &str,
        role: Option<&str>,
    ) -> Result<Value, ClientError> {
        let mut body = json!({ "name": name });
        put(&mut body, "role", role.map(|r| json!(r)));
        self.post(
            &format!("/admin/organizations/{org}/service-accounts"),
            body,
        )
        .await
    }

    /// `PATCH /admin/service-accounts/{id}`: name and/or role.
    pub async fn update_service_account(
        &self,
        id: &str,
        name: Option<&str>,
        role: Option<&str>,
    ) -> Result<Value, ClientError> {
        let mut body = json!({});
        put(&mut body, "name", name.map(|n| json!(n)));
        put(&mut body, "role", role.map(|r| json!(r)));
        self.patch(&format!("/admin/service-accounts/{id}"), body)
            .await
    }

    /// `PUT /admin/service-accounts/{id}/certificate-names` (the operator's): the names of
    /// the client certificates that authenticate as the account, replacing the earlier
    /// ones (empty unbinds them all).
    pub async fn set_service_account_certificate_names(
        &self,
        id: &str,
        names: &[String],
    ) -> Result<Value, ClientError> {
        self.call(
            reqwest::Method::PUT,
            &format!("/admin/service-accounts/{id}/certificate-names"),
            Some(json!({ "certificate_names": names })),
        )
        .await
    }

    /// `POST /admin/service-accounts/{id}/rotate-secret`: the new `client_secret`.
    pub async fn rotate_service_account_secret(&self, id: &str) -> Result<Value, ClientError> {
        self.post(
            &format!("/admin/service-accounts/{id}/rotate-secret"),
            json!({}),
        )
        .await
    }

    /// `DELETE /admin/service-accounts/{id}`.
    pub async fn delete_service_account(&self, id: &str) -> Result<(), ClientError> {
        self.delete(&format!("/admin/service-accounts/{id}")).await
    }

    /// `POST /admin/projects`.
    pub async fn create_project(&self, name: &str) -> Result<Value, ClientError> {
        self.post("/admin/projects", json!({ "name": name })).await
    }

    /// `POST /admin/projects` with customer-managed encryption: every index of the project
    /// gets its data key from the AWS KMS key `cmek_key_arn`.
    pub async fn create_cmek_project(
        &self,
        name: &str,
        cmek_key_arn: &str,
    ) -> Result<Value, ClientError> {
        self.post(
            "/admin/projects",
            json!({ "name": name, "cmek_key_arn": cmek_key_arn }),
        )
        .await
    }

    /// `PATCH /admin/projects/{id}` `{"cmek_key_arn"}`: turns customer-managed encryption on
    /// for the indexes created from now on (it cannot be turned off or moved to another
    /// key).
    pub async fn set_project_cmek(
        &self,
        id: &str,
        cmek_key_arn: &str,
    ) -> Result<Value, ClientError> {
        self.patch(
            &format!("/admin/projects/{id}"),
            json!({ "cmek_key_arn": cmek_key_arn }),
        )
        .await
    }

    /// `GET /admin/projects`: the `data` array.
    pub async fn list_projects(&self) -> Result<Vec<Value>, ClientError> {
        self.list("/admin/projects").await
    }

    /// `GET /admin/projects/{id}`.
    pub async fn get_project(&self, id: &str) -> Result<Value, ClientError> {
        self.get(&format!("/admin/projects/{id}")).await
    }

    /// `PATCH /admin/projects/{id}`: rename.
    pub async fn rename_project(&self, id: &str, name: &str) -> Result<Value, ClientError> {
        self.patch(&format!("/admin/projects/{id}"), json!({ "name": name }))
            .await
    }

    /// `PATCH /admin/projects/{id}`: whether the project's data plane requires a client
    /// certificate (mutual TLS).
    pub async fn set_project_client_certificates(
        &self,
        id: &str,
        required: bool,
    ) -> Result<Value, ClientError> {
        self.patch(
            &format!("/admin/projects/{id}"),
            json!({ "require_client_certificate": required }),
        )
        .await
    }

    /// `DELETE /admin/projects/{id}`.
    pub async fn delete_project(&self, id: &str) -> Result<(), ClientError> {
        self.delete(&format!("/admin/projects/{id}")).await
    }

    /// `GET /admin/projects/{id}/members`.
    pub async fn list_project_members(&self, project: &str) -> Result<Vec<Value>, ClientError> {
        self.list(&format!("/admin/projects/{project}/members"))
            .await
    }

    /// `POST /admin/projects/{id}/members`: `who` is `user_id`, `email` or
    /// `service_account_id`, naming the principal.
    pub async fn add_project_member(
        &self,
        project: &str,
        who: (&str, &str),
        role: &str,
    ) -> Result<Value, ClientError> {
        let mut body = json!({ "role": role });
        body[who.0] = json!(who.1);
        self.post(&format!("/admin/projects/{project}/members"), body)
            .await
    }

    /// `PATCH /admin/projects/{id}/members/{principal_id}`.
    pub async fn set_project_member_role(
        &self,
        project: &str,
        principal_id: &str,
        role: &str,
    ) -> Result<Value, ClientError> {
        self.patch(
            &format!("/admin/projects/{project}/members/{principal_id}"),
            json!({ "role": role }),
        )
        .await
    }

    /// `DELETE /admin/projects/{id}/members/{principal_id}`.
    pub async fn remove_project_member(
        &self,
        project: &str,
        principal_id: &str,
    ) -> Result<(), ClientError> {
        self.delete(&format!("/admin/projects/{project}/members/{principal_id}"))
            .await
    }

    /// `POST /admin/projects/{id}/api-keys`: returns `{key, value}`; `value` is shown only here.
    pub async fn create_api_key(
        &self,
        project_id: &str,
        name: &str,
        roles: &[&str],
    ) -> Result<Value, ClientError> {
        self.post(
            &format!("/admin/projects/{project_id}/api-keys"),
            json!({ "name": name, "roles": roles }),
        )
        .await
    }

    /// `GET /admin/projects/{id}/api-keys`.
    pub async fn list_api_keys(&self, project_id: &str) -> Result<Vec<Value>, ClientError> {
        self.list(&format!("/admin/projects/{project_id}/api-keys"))
            .await
    }

    /// `GET /admin/projects/{id}/private-endpoints`.
    pub async fn list_private_endpoints(
        &self,
        project_id: &str,
    ) -> Result<Vec<Value>, ClientError> {
        self.list(&format!(
            "/admin/projects/{}/private-endpoints",
            segment(project_id)
        ))
        .await
    }

    /// `POST /admin/projects/{id}/private-endpoints`: a private endpoint binding the
    /// project's data plane to the private listener and/or client sources in `allowed_cidrs`.
    pub async fn create_private_endpoint(
        &self,
        project_id: &str,
        name: &str,
        private_listener: bool,
        allowed_cidrs: &[String],
    ) -> Result<Value, ClientError> {
        self.post(
            &format!("/admin/projects/{}/private-endpoints", segment(project_id)),
            json!({
                "name": name,
                "private_listener": private_listener,
                "allowed_cidrs": allowed_cidrs,
            }),
        )
        .await
    }

    /// `GET /admin/private-endpoints/{id}`.
    pub async fn get_private_endpoint(&self, id: &str) -> Result<Value, ClientError> {
        self.get(&format!("/admin/private-endpoints/{}", segment(id)))
            .await
    }

    /// `DELETE /admin/private-endpoints/{id}`.
    pub async fn delete_private_endpoint(&self, id: &str) -> Result<(), ClientError> {
        self.delete(&format!("/admin/private-endpoints/{}", segment(id)))
            .await
    }

    /// `GET /admin/api-keys/{id}`.
    pub async fn get_api_key(&self, id: &str) -> Result<Value, ClientError> {
        self.get(&format!("/admin/api-keys/{id}")).await
    }

    /// `PATCH /admin/api-keys/{id}`: name and/or roles.
    pub async fn update_api_key(
        &self,
        id: &str,
        name: Option<&str>,
        roles: Option<&[&str]>,
    ) -> Result<Value, ClientError> {
        let mut body = json!({});
        put(&mut body, "name", name.map(|n| json!(n)));
        put(&mut body, "roles", roles.map(|r| json!(r)));
        self.patch(&format!("/admin/api-keys/{id}"), body).await
    }

    /// `DELETE /admin/api-keys/{id}`.
    pub async fn delete_api_key(&self, id: &str) -> Result<(), ClientError> {
        self.delete(&format!("/admin/api-keys/{id}")).await
    }

    /// `GET /admin/operator-tokens`.
    pub async fn list_operator_tokens(&self) -> Result<Vec<Value>, ClientError> {
        self.list("/admin/operator-tokens").await
    }

    /// `POST /admin/operator-tokens`: `{id, value}`, the value shown only here.
    pub async fn create_operator_token(&self) -> Result<Value, ClientError> {
        self.post("/admin/operator-tokens", json!({})).await
    }

    /// `POST /admin/operator-tokens/{id}/rotate`: the replacement `{id, value}`.
    pub async fn rotate_operator_token(&self, id: &str) -> Result<Value, ClientError> {
        self.post(&format!("/admin/operator-tokens/{id}/rotate"), json!({}))
            .await
    }

    /// `DELETE /admin/operator-tokens/{id}`.
    pub async fn delete_operator_token(&self, id: &str) -> Result<(), ClientError> {
        self.delete(&format!("/admin/operator-tokens/{id}")).await
    }

    /// `POST /admin/signing-keys/rotate`.
    pub async fn rotate_signing_key(&self) -> Result<Value, ClientError> {
        self.post("/admin/signing-keys/rotate", json!({})).await
    }

    /// `POST /admin/cluster/members/{id}/promote`: makes a learner a voter.
    pub async fn promote_cluster_member(&self, id: u64) -> Result<(), ClientError> {
        self.call(
            reqwest::Method::POST,
            &format!("/admin/cluster/members/{id}/promote"),
            None,
        )
        .await
        .map(drop)
    }

    /// `DELETE /admin/cluster/members/{id}[?force=true]`: removes a node; 412 naming the
    /// indexes whose last reachable replica it holds, unless `force`.
    pub async fn remove_cluster_member(&self, id: u64, force: bool) -> Result<(), ClientError> {
        let query = if force { "?force=true" } else { "" };
        self.delete(&format!("/admin/cluster/members/{id}{query}"))
            .await
    }

    /// `POST /admin/cluster/snapshot`: every Raft group of the node takes a snapshot now.
    pub async fn snapshot(&self) -> Result<(), ClientError> {
        self.call(reqwest::Method::POST, "/admin/cluster/snapshot", None)
            .await
            .map(drop)
    }

    /// `GET /admin/cluster`.
    pub async fn cluster(&self) -> Result<Value, ClientError> {
        self.get("/admin/cluster").await
    }

    /// `GET /admin/cluster/root-keys`: the root key's version, the rotation in progress,
    /// deletions waiting to be shredded, and each member's keyring versions.
    pub async fn root_keys(&self) -> Result<Value, ClientError> {
        self.get("/admin/cluster/root-keys").await
    }

    /// `POST /admin/cluster/root-keys/rotate`: starts a root key rotation (202); answers the
    /// root key's state as [`AdminClient::root_keys`].
    pub async fn rotate_root_key(&self) -> Result<Value, ClientError> {
        self.call(
            reqwest::Method::POST,
            "/admin/cluster/root-keys/rotate",
            None,
        )
        .await
    }

    /// One page of audit events: `GET /admin/audit-logs` (an organization's chain) or, with
    /// `cluster`, `GET /admin/cluster/audit-logs`, with `query` as its parameters
    /// (`organization_id`, `start_time`, `end_time`, `action`, `resource_type`, `actor`,
    /// `outcome`, `limit`, `pagination_token`). Answers `{data, pagination: {next}, chain}`.
    pub async fn audit_logs(
        &self,
        cluster: bool,
        query: &[(String, String)],
    ) -> Result<Value, ClientError> {
        let path = if cluster {
            "/admin/cluster/audit-logs"
        } else {
            "/admin/audit-logs"
        };
        let req = self.http.get(format!("{}{path}", self.base)).query(query);
        self.send(req).await
    }
}
