//! The authorization matrix on a 3-node cluster: every route of the client port (REST and
//! gRPC) × every kind of principal → exactly the expected status. The expectations are data
//! in this file, written from the documented policy rather than computed from the node's
//! code, and a route of `policy::ROUTES` without an expectation here fails the test.
//!
//! Attempts rotate over the three nodes; what an attempt needs (a fresh project, key, user,
//! index…) is created through the node it is sent to, so it reads its own write.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use conifer_node::policy::ROUTES;
use conifer_proto::pinecone as pb;
use conifer_proto::pinecone::vector_service_client::VectorServiceClient;
use conifer_tests::Cluster;
use reqwest::Method;
use serde_json::{json, Value};
use tonic::transport::{Certificate, Channel, ClientTlsConfig};

// Principals.
const NONE: &str = "no credential";
const BAD_KEY: &str = "malformed API key";
const BAD_BEARER: &str = "malformed bearer token";
const REVOKED: &str = "revoked API key";
const OPERATOR: &str = "operator";
const OO: &str = "user OrgOwner";
const OM: &str = "user OrgManager";
const OB: &str = "user OrgBillingAdmin";
const OMEM: &str = "user OrgMember";
const PO: &str = "user ProjectOwner";
const PM: &str = "user ProjectManager";
const PMEM: &str = "user ProjectMember";
/// A service account that is an OrgManager and a ProjectMember of project A.
const SA: &str = "service account";
const KPE: &str = "key ProjectEditor";
const KPV: &str = "key ProjectViewer";
const KCE: &str = "key ControlPlaneEditor";
const KCV: &str = "key ControlPlaneViewer";
const KDE: &str = "key DataPlaneEditor";
const KDV: &str = "key DataPlaneViewer";
/// A ProjectEditor key of project B.
const KX: &str = "key of another project";

const PRINCIPALS: &[&str] = &[
    NONE, BAD_KEY, BAD_BEARER, REVOKED, OPERATOR, OO, OM, OB, OMEM, PO, PM, PMEM, SA, KPE, KPV,
    KCE, KCV, KDE, KDV, KX,
];
/// Refused with 401 everywhere but public routes.
const UNAUTHENTICATED: &[&str] = &[NONE, BAD_KEY, BAD_BEARER, REVOKED];
/// Members of the organization without a role in project A: A is hidden from them (404).
const NO_ROLE_IN_A: &[&str] = &[OM, OB, OMEM];
/// Also hidden from the other project's key, on index and data routes.
const NOT_IN_A: &[&str] = &[OM, OB, OMEM, KX];

// Allowed principals, by the matrix of docs/security/permissions.md.
const ONLY_OPERATOR: &[&str] = &[OPERATOR];
const ORG_READERS: &[&str] = &[OPERATOR, OO, OM, OB, OMEM, PO, PM, PMEM, SA];
const ORG_OWNERS: &[&str] = &[OPERATOR, OO];
const ORG_ADMINS: &[&str] = &[OPERATOR, OO, OM, SA];
const PROJECT_CREATORS: &[&str] = &[OPERATOR, OO, OM, OMEM, PO, PM, PMEM, SA];
const PROJECT_READERS: &[&str] = &[OPERATOR, OO, PO, PM, PMEM, SA];
const PROJECT_OWNERS: &[&str] = &[OPERATOR, OO, PO];
const INDEX_READERS: &[&str] = &[OO, PO, PM, PMEM, SA, KPE, KPV, KCE, KCV];
const INDEX_WRITERS: &[&str] = &[OO, PO, PM, KPE, KCE];
const DATA_READERS: &[&str] = &[OO, PO, PM, PMEM, SA, KPE, KPV, KDE, KDV];
const DATA_WRITERS: &[&str] = &[OO, PO, PM, KPE, KDE];
const EVERYONE: &[&str] = PRINCIPALS;

/// The index every data-plane attempt addresses, in project A.
const INDEX: &str = "mx";
const DIM: usize = 4;

enum Cred {
    None,
    ApiKey(String),
    Bearer(String),
}

/// Everything the attempts need.
struct World {
    cluster: Cluster,
    org: String,
    project_a: String,
    creds: BTreeMap<&'static str, Cred>,
    /// User or service-account id of each member principal.
    member_ids: BTreeMap<&'static str, String>,
    user_password: String,
    user_email: String,
    sa_client_id: String,
    sa_secret: String,
    spare_key_id: String,
    spare_endpoint_id: String,
    spare_token_id: String,
    spare_user_id: String,
    spare_sa_id: String,
    spare_member_id: String,
    /// A ready backup of [`INDEX`], its collection and a restore job from it.
    spare_backup_id: String,
    spare_collection: String,
    spare_restore_job_id: String,
}

/// One prepared request.
struct Req {
    method: Method,
    path: String,
    body: Option<Value>,
}

fn req(method: Method, path: impl Into<String>, body: Option<Value>) -> Req {
    Req {
        method,
        path: path.into(),
        body,
    }
}

type Prepare = for<'a> fn(
    &'a World,
    u64,
    &'static str,
    bool,
) -> Pin<Box<dyn Future<Output = Req> + Send + 'a>>;

/// One route's expectation.
struct Case {
    method: &'static str,
    route: &'static str,
    allow: &'static [&'static str],
    hidden: &'static [&'static str],
    ok: u16,
    prepare: Prepare,
}

fn uid() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..12].to_string()
}

impl World {
    fn url(&self, via: u64, path: &str) -> String {
        self.cluster.url(via, path)
    }

    async fn operator(&self, via: u64, method: Method, path: &str, body: Option<Value>) -> Value {
        let mut r = self
            .cluster
            .http
            .request(method.clone(), self.url(via, path))
            .bearer_auth(self.cluster.admin_token());
        if let Some(b) = body {
            r = r.json(&b);
        }
        let resp = r.send().await.expect("operator request");
        let status = resp.status();
        let v: Value = resp.json().await.unwrap_or(Value::Null);
        assert!(
            status.is_success(),
            "operator {method} {path}: {status} {v}"
        );
        v
    }

    /// A successful call with the bootstrap project's editor key.
    async fn operator_as_key(
        &self,
        via: u64,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Value {
        let mut r = self
            .cluster
            .http
            .request(method.clone(), self.url(via, path))
            .header("Api-Key", self.cluster.api_key());
        if let Some(b) = body {
            r = r.json(&b);
        }
        let resp = r.send().await.expect("key request");
        let status = resp.status();
        let v: Value = resp.json().await.unwrap_or(Value::Null);
        assert!(status.is_success(), "{method} {path}: {status} {v}");
        v
    }

    async fn fresh_user(&self, via: u64, role: &str) -> String {
        let v = self
            .operator(
                via,
                Method::POST,
                &format!("/admin/organizations/{}/members", self.org),
                Some(json!({"email": format!("{}@fresh.test", uid()), "role": role, "password": "fresh-password-123"})),
            )
            .await;
        v["id"].as_str().unwrap().to_string()
    }

    /// A user who is a ProjectMember of A: a new one when `fresh`, else the spare one.
    async fn member_of_a(&self, via: u64, fresh: bool) -> String {
        if !fresh {
            return self.spare_member_id.clone();
        }
        let id = self.fresh_user(via, "OrgMember").await;
        self.operator(
            via,
            Method::POST,
            &format!("/admin/projects/{}/members", self.project_a),
            Some(json!({"user_id": id, "role": "ProjectMember"})),
        )
        .await;
        id
    }

    /// An operator token's id: a new one when `fresh`, else the spare one.
    async fn operator_token(&self, via: u64, fresh: bool) -> String {
        if !fresh {
            return self.spare_token_id.clone();
        }
        self.operator(via, Method::POST, "/admin/operator-tokens", None)
            .await["id"]
            .as_str()
            .unwrap()
            .to_string()
    }

    async fn fresh_sa(&self, via: u64) -> String {
        let v = self
            .operator(
                via,
                Method::POST,
                &format!("/admin/organizations/{}/service-accounts", self.org),
                Some(json!({"name": uid(), "role": "OrgMember"})),
            )
            .await;
        v["id"].as_str().unwrap().to_string()
    }

    async fn fresh_key(&self, via: u64) -> String {
        let v = self
            .operator(
                via,
                Method::POST,
                &format!("/admin/projects/{}/api-keys", self.project_a),
                Some(json!({"name": uid()})),
            )
            .await;
        v["key"]["id"].as_str().unwrap().to_string()
    }

    /// A private endpoint of project A that admits every loopback source, so that the
    /// data-plane cases stay open while it exists.
    async fn fresh_endpoint(&self, via: u64) -> String {
        let v = self
            .operator(
                via,
                Method::POST,
                &format!("/admin/projects/{}/private-endpoints", self.project_a),
                Some(json!({"name": uid(), "allowed_cidrs": ["127.0.0.0/8"]})),
            )
            .await;
        v["id"].as_str().unwrap().to_string()
    }

    /// A new project in which `principal` holds the role it holds in project A.
    async fn fresh_project_for(&self, via: u64, principal: &str) -> String {
        let v = self
            .operator(
                via,
                Method::POST,
                "/admin/projects",
                Some(json!({"name": uid(), "organization_id": self.org})),
            )
            .await;
        let id = v["id"].as_str().unwrap().to_string();
        let role = match principal {
            PO => Some("ProjectOwner"),
            PM => Some("ProjectManager"),
            PMEM | SA => Some("ProjectMember"),
            _ => None,
        };
        if let Some(role) = role {
            let mut body = json!({"role": role});
            let key = if principal == SA {
                "service_account_id"
            } else {
                "user_id"
            };
            body[key] = json!(self.member_ids[principal]);
            self.operator(
                via,
                Method::POST,
                &format!("/admin/projects/{id}/members"),
                Some(body),
            )
            .await;
        }
        id
    }

    async fn fresh_index(&self, via: u64) -> String {
        let name = format!("i{}", &uid()[..8]);
        let resp = self
            .cluster
            .http
            .post(self.url(via, "/indexes"))
            .header("Api-Key", self.cluster.api_key())
            .json(&json!({"name": name, "dimension": 2, "metric": "cosine",
                "spec": {"serverless": {"cloud": "aws", "region": "us-east-1"}}}))
            .send()
            .await
            .unwrap();
        assert_eq!(
            resp.status().as_u16(),
            201,
            "{}",
            resp.text().await.unwrap()
        );
        name
    }

    /// A backup of [`INDEX`] (pending or ready).
    async fn fresh_backup(&self, via: u64) -> String {
        let resp = self
            .cluster
            .http
            .post(self.url(via, &format!("/indexes/{INDEX}/backups")))
            .header("Api-Key", self.cluster.api_key())
            .json(&json!({"name": uid()}))
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let v: Value = resp.json().await.unwrap_or(Value::Null);
        assert_eq!(status, 201, "{v}");
        v["backup_id"].as_str().unwrap().to_string()
    }

    /// A collection of [`INDEX`].
    async fn fresh_collection(&self, via: u64) -> String {
        let name = format!("c{}", &uid()[..8]);
        let resp = self
            .cluster
            .http
            .post(self.url(via, "/collections"))
            .header("Api-Key", self.cluster.api_key())
            .json(&json!({"name": name, "source": INDEX}))
            .send()
            .await
            .unwrap();
        assert_eq!(
            resp.status().as_u16(),
            201,
            "{}",
            resp.text().await.unwrap()
        );
        name
    }

    async fn fresh_namespace(&self, via: u64) -> String {
        let ns = format!("n{}", uid());
        let resp = self
            .cluster
            .data(
                via,
                &self.cluster.api_key(),
                INDEX,
                Method::POST,
                "/vectors/upsert",
            )
            .json(
                &json!({"vectors": [{"id": "x", "values": [0.1, 0.2, 0.3, 0.4]}], "namespace": ns}),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200);
        ns
    }

    /// Sends `r` as `principal` to node `via`.
    async fn send(&self, via: u64, principal: &str, r: &Req, data_plane: bool) -> (u16, String) {
        let mut b = self
            .cluster
            .http
            .request(r.method.clone(), self.url(via, &r.path));
        match &self.creds[principal] {
            Cred::None => {}
            Cred::ApiKey(k) => b = b.header("Api-Key", k),
            Cred::Bearer(t) => b = b.bearer_auth(t),
        }
        // Every index and data-plane attempt names project A, so another project's key
        // tries to reach into it.
        if data_plane {
            b = b
                .header("X-Project-Id", &self.project_a)
                .header("X-Conifer-Index", INDEX);
        }
        if let Some(body) = &r.body {
            b = b.json(body);
        }
        let resp = b.send().await.expect("request");
        let status = resp.status().as_u16();
        (status, resp.text().await.unwrap_or_default())
    }
}

macro_rules! prep {
    (|$w:ident, $via:ident, $p:ident, $fresh:ident| $body:expr) => {{
        fn f<'a>(
            $w: &'a World,
            $via: u64,
            $p: &'static str,
            $fresh: bool,
        ) -> Pin<Box<dyn Future<Output = Req> + Send + 'a>> {
            let _ = (&$w, &$via, &$p, &$fresh);
            Box::pin(async move { $body })
        }
        f as Prepare
    }};
}

fn case(
    method: &'static str,
    route: &'static str,
    allow: &'static [&'static str],
    hidden: &'static [&'static str],
    ok: u16,
    prepare: Prepare,
) -> Case {
    Case {
        method,
        route,
        allow,
        hidden,
        ok,
        prepare,
    }
}

fn rest_cases() -> Vec<Case> {
    vec![
        case(
            "GET",
            "/health",
            EVERYONE,
            &[],
            200,
            prep!(|w, via, p, fresh| req(Method::GET, "/health", None)),
        ),
        case(
            "POST",
            "/auth/login",
            EVERYONE,
            &[],
            200,
            prep!(|w, via, p, fresh| req(
                Method::POST,
                "/auth/login",
                Some(json!({"email": w.user_email, "password": w.user_password}))
            )),
        ),
        case(
            "POST",
            "/oauth/token",
            EVERYONE,
            &[],
            200,
            prep!(|w, via, p, fresh| req(
                Method::POST,
                "/oauth/token",
                Some(
                    json!({"grant_type": "client_credentials", "client_id": w.sa_client_id,
                "client_secret": w.sa_secret, "audience": "https://api.pinecone.io/"})
                )
            )),
        ),
        case(
            "POST",
            "/auth/password",
            EVERYONE,
            &[],
            200,
            prep!(|w, via, p, fresh| {
                let email = format!("{}@pw.test", uid());
                w.operator(
                    via,
                    Method::POST,
                    &format!("/admin/organizations/{}/members", w.org),
                    Some(json!({"email": email, "role": "OrgMember", "password": w.user_password})),
                )
                .await;
                req(
                    Method::POST,
                    "/auth/password",
                    Some(json!({"email": email, "password": w.user_password,
                        "new_password": "changed-password-1"})),
                )
            }),
        ),
        case(
            "GET",
            "/admin/cluster",
            ONLY_OPERATOR,
            &[],
            200,
            prep!(|w, via, p, fresh| req(Method::GET, "/admin/cluster", None)),
        ),
        // Promoting a voter is a no-op; removing an unknown node is a 404 only the operator gets.
        case(
            "POST",
            "/admin/cluster/members/{id}/promote",
            ONLY_OPERATOR,
            &[],
            200,
            prep!(|w, via, p, fresh| req(Method::POST, "/admin/cluster/members/2/promote", None)),
        ),
        case(
            "DELETE",
            "/admin/cluster/members/{id}",
            ONLY_OPERATOR,
            &[],
            404,
            prep!(|w, via, p, fresh| req(Method::DELETE, "/admin/cluster/members/99", None)),
        ),
        case(
            "POST",
            "/admin/cluster/snapshot",
            ONLY_OPERATOR,
            &[],
            202,
            prep!(|w, via, p, fresh| req(Method::POST, "/admin/cluster/snapshot", None)),
        ),
        case(
            "GET",
            "/admin/cluster/root-keys",
            ONLY_OPERATOR,
            &[],
            200,
            prep!(|w, via, p, fresh| req(Method::GET, "/admin/cluster/root-keys", None)),
        ),
        case(
            "POST",
            "/admin/cluster/root-keys/rotate",
            ONLY_OPERATOR,
            &[],
            202,
            prep!(|w, via, p, fresh| req(Method::POST, "/admin/cluster/root-keys/rotate", None)),
        ),
        case(
            "GET",
            "/admin/operator-tokens",
            ONLY_OPERATOR,
            &[],
            200,
            prep!(|w, via, p, fresh| req(Method::GET, "/admin/operator-tokens", None)),
        ),
        case(
            "POST",
            "/admin/operator-tokens",
            ONLY_OPERATOR,
            &[],
            201,
            prep!(|w, via, p, fresh| req(Method::POST, "/admin/operator-tokens", None)),
        ),
        case(
            "POST",
            "/admin/operator-tokens/{id}/rotate",
            ONLY_OPERATOR,
            &[],
            200,
            prep!(|w, via, p, fresh| {
                let id = w.operator_token(via, fresh).await;
                req(
                    Method::POST,
                    format!("/admin/operator-tokens/{id}/rotate"),
                    None,
                )
            }),
        ),
        case(
            "DELETE",
            "/admin/operator-tokens/{id}",
            ONLY_OPERATOR,
            &[],
            202,
            prep!(|w, via, p, fresh| {
                let id = w.operator_token(via, fresh).await;
                req(Method::DELETE, format!("/admin/operator-tokens/{id}"), None)
            }),
        ),
        case(
            "POST",
            "/admin/signing-keys/rotate",
            ONLY_OPERATOR,
            &[],
            200,
            prep!(|w, via, p, fresh| req(Method::POST, "/admin/signing-keys/rotate", None)),
        ),
        case(
            "POST",
            "/admin/organizations",
            ONLY_OPERATOR,
            &[],
            201,
            prep!(|w, via, p, fresh| req(
                Method::POST,
                "/admin/organizations",
                Some(json!({"name": uid()}))
            )),
        ),
        case(
            "GET",
            "/admin/cluster/audit-logs",
            ONLY_OPERATOR,
            &[],
            200,
            prep!(|w, via, p, fresh| req(Method::GET, "/admin/cluster/audit-logs?limit=1", None)),
        ),
        case(
            "GET",
            "/admin/audit-logs",
            ORG_OWNERS,
            &[],
            200,
            prep!(|w, via, p, fresh| req(
                Method::GET,
                format!("/admin/audit-logs?organization_id={}&limit=1", w.org),
                None
            )),
        ),
        case(
            "GET",
            "/admin/organizations",
            ORG_READERS,
            &[],
            200,
            prep!(|w, via, p, fresh| req(Method::GET, "/admin/organizations", None)),
        ),
        case(
            "GET",
            "/admin/organizations/{id}",
            ORG_READERS,
            &[],
            200,
            prep!(|w, via, p, fresh| req(
                Method::GET,
                format!("/admin/organizations/{}", w.org),
                None
            )),
        ),
        case(
            "PATCH",
            "/admin/organizations/{id}",
            ORG_OWNERS,
            &[],
            200,
            prep!(|w, via, p, fresh| req(
                Method::PATCH,
                format!("/admin/organizations/{}", w.org),
                Some(json!({"name": "default"}))
            )),
        ),
        // The organization still has projects: an authorized delete is refused by the state.
        case(
            "DELETE",
            "/admin/organizations/{id}",
            ORG_OWNERS,
            &[],
            412,
            prep!(|w, via, p, fresh| req(
                Method::DELETE,
                format!("/admin/organizations/{}", w.org),
                None
            )),
        ),
        case(
            "GET",
            "/admin/organizations/{id}/members",
            ORG_ADMINS,
            &[],
            200,
            prep!(|w, via, p, fresh| req(
                Method::GET,
                format!("/admin/organizations/{}/members", w.org),
                None
            )),
        ),
        case(
            "POST",
            "/admin/organizations/{id}/members",
            ORG_ADMINS,
            &[],
            201,
            prep!(|w, via, p, fresh| req(
                Method::POST,
                format!("/admin/organizations/{}/members", w.org),
                Some(
                    json!({"email": format!("{}@new.test", uid()), "role": "OrgMember",
                    "password": "another-password-1"})
                )
            )),
        ),
        case(
            "PATCH",
            "/admin/organizations/{id}/members/{user_id}",
            ORG_ADMINS,
            &[],
            200,
            prep!(|w, via, p, fresh| {
                let id = if fresh {
                    w.fresh_user(via, "OrgMember").await
                } else {
                    w.spare_user_id.clone()
                };
                req(
                    Method::PATCH,
                    format!("/admin/organizations/{}/members/{id}", w.org),
                    Some(json!({"role": "OrgBillingAdmin"})),
                )
            }),
        ),
        case(
            "DELETE",
            "/admin/organizations/{id}/members/{user_id}",
            ORG_ADMINS,
            &[],
            202,
            prep!(|w, via, p, fresh| {
                let id = if fresh {
                    w.fresh_user(via, "OrgMember").await
                } else {
                    w.spare_user_id.clone()
                };
                req(
                    Method::DELETE,
                    format!("/admin/organizations/{}/members/{id}", w.org),
                    None,
                )
            }),
        ),
        case(
            "GET",
            "/admin/organizations/{id}/service-accounts",
            ORG_ADMINS,
            &[],
            200,
            prep!(|w, via, p, fresh| req(
                Method::GET,
                format!("/admin/organizations/{}/service-accounts", w.org),
                None
            )),
        ),
        case(
            "POST",
            "/admin/organizations/{id}/service-accounts",
            ORG_ADMINS,
            &[],
            201,
            prep!(|w, via, p, fresh| req(
                Method::POST,
                format!("/admin/organizations/{}/service-accounts", w.org),
                Some(json!({"name": uid()}))
            )),
        ),
        case(
            "PATCH",
            "/admin/service-accounts/{id}",
            ORG_ADMINS,
            &[],
            200,
            prep!(|w, via, p, fresh| {
                let id = if fresh {
                    w.fresh_sa(via).await
                } else {
                    w.spare_sa_id.clone()
                };
                req(
                    Method::PATCH,
                    format!("/admin/service-accounts/{id}"),
                    Some(json!({"name": uid()})),
                )
            }),
        ),
        case(
            "POST",
            "/admin/service-accounts/{id}/rotate-secret",
            ORG_ADMINS,
            &[],
            200,
            prep!(|w, via, p, fresh| {
                let id = if fresh {
                    w.fresh_sa(via).await
                } else {
                    w.spare_sa_id.clone()
                };
                req(
                    Method::POST,
                    format!("/admin/service-accounts/{id}/rotate-secret"),
                    None,
                )
            }),
        ),
        case(
            "PUT",
            "/admin/service-accounts/{id}/certificate-names",
            ONLY_OPERATOR,
            &[],
            200,
            prep!(|w, via, p, fresh| {
                let id = if fresh {
                    w.fresh_sa(via).await
                } else {
                    w.spare_sa_id.clone()
                };
                req(
                    Method::PUT,
                    format!("/admin/service-accounts/{id}/certificate-names"),
                    Some(json!({"certificate_names": [uid()]})),
                )
            }),
        ),
        case(
            "DELETE",
            "/admin/service-accounts/{id}",
            ORG_ADMINS,
            &[],
            202,
            prep!(|w, via, p, fresh| {
                let id = if fresh {
                    w.fresh_sa(via).await
                } else {
                    w.spare_sa_id.clone()
                };
                req(
                    Method::DELETE,
                    format!("/admin/service-accounts/{id}"),
                    None,
                )
            }),
        ),
        case(
            "POST",
            "/admin/projects",
            PROJECT_CREATORS,
            &[],
            201,
            prep!(|w, via, p, fresh| req(
                Method::POST,
                "/admin/projects",
                Some(json!({"name": uid(), "organization_id": w.org}))
            )),
        ),
        case(
            "GET",
            "/admin/projects",
            ORG_READERS,
            &[],
            200,
            prep!(|w, via, p, fresh| req(Method::GET, "/admin/projects", None)),
        ),
        case(
            "GET",
            "/admin/projects/{id}",
            PROJECT_READERS,
            NO_ROLE_IN_A,
            200,
            prep!(|w, via, p, fresh| req(
                Method::GET,
                format!("/admin/projects/{}", w.project_a),
                None
            )),
        ),
        case(
            "PATCH",
            "/admin/projects/{id}",
            PROJECT_OWNERS,
            NO_ROLE_IN_A,
            200,
            prep!(|w, via, p, fresh| req(
                Method::PATCH,
                format!("/admin/projects/{}", w.project_a),
                Some(json!({"name": "default"}))
            )),
        ),
        case(
            "DELETE",
            "/admin/projects/{id}",
            PROJECT_OWNERS,
            NO_ROLE_IN_A,
            202,
            prep!(|w, via, p, fresh| {
                let id = if fresh {
                    w.fresh_project_for(via, p).await
                } else {
                    w.project_a.clone()
                };
                req(Method::DELETE, format!("/admin/projects/{id}"), None)
            }),
        ),
        case(
            "GET",
            "/admin/projects/{id}/members",
            PROJECT_READERS,
            NO_ROLE_IN_A,
            200,
            prep!(|w, via, p, fresh| req(
                Method::GET,
                format!("/admin/projects/{}/members", w.project_a),
                None
            )),
        ),
        case(
            "POST",
            "/admin/projects/{id}/members",
            PROJECT_OWNERS,
            NO_ROLE_IN_A,
            201,
            prep!(|w, via, p, fresh| {
                let id = w.fresh_user(via, "OrgMember").await;
                req(
                    Method::POST,
                    format!("/admin/projects/{}/members", w.project_a),
                    Some(json!({"user_id": id, "role": "ProjectMember"})),
                )
            }),
        ),
        case(
            "PATCH",
            "/admin/projects/{id}/members/{principal_id}",
            PROJECT_OWNERS,
            NO_ROLE_IN_A,
            200,
            prep!(|w, via, p, fresh| {
                let id = w.member_of_a(via, fresh).await;
                req(
                    Method::PATCH,
                    format!("/admin/projects/{}/members/{id}", w.project_a),
                    Some(json!({"role": "ProjectManager"})),
                )
            }),
        ),
        case(
            "DELETE",
            "/admin/projects/{id}/members/{principal_id}",
            PROJECT_OWNERS,
            NO_ROLE_IN_A,
            202,
            prep!(|w, via, p, fresh| {
                let id = w.member_of_a(via, fresh).await;
                req(
                    Method::DELETE,
                    format!("/admin/projects/{}/members/{id}", w.project_a),
                    None,
                )
            }),
        ),
        case(
            "GET",
            "/admin/projects/{id}/api-keys",
            PROJECT_READERS,
            NO_ROLE_IN_A,
            200,
            prep!(|w, via, p, fresh| req(
                Method::GET,
                format!("/admin/projects/{}/api-keys", w.project_a),
                None
            )),
        ),
        case(
            "POST",
            "/admin/projects/{id}/api-keys",
            PROJECT_OWNERS,
            NO_ROLE_IN_A,
            201,
            prep!(|w, via, p, fresh| req(
                Method::POST,
                format!("/admin/projects/{}/api-keys", w.project_a),
                Some(json!({"name": uid(), "roles": ["DataPlaneViewer"]}))
            )),
        ),
        case(
            "GET",
            "/admin/api-keys/{id}",
            PROJECT_READERS,
            NO_ROLE_IN_A,
            200,
            prep!(|w, via, p, fresh| req(
                Method::GET,
                format!("/admin/api-keys/{}", w.spare_key_id),
                None
            )),
        ),
        case(
            "PATCH",
            "/admin/api-keys/{id}",
            PROJECT_OWNERS,
            NO_ROLE_IN_A,
            200,
            prep!(|w, via, p, fresh| {
                let id = if fresh {
                    w.fresh_key(via).await
                } else {
                    w.spare_key_id.clone()
                };
                req(
                    Method::PATCH,
                    format!("/admin/api-keys/{id}"),
                    Some(json!({"roles": ["ProjectViewer"]})),
                )
            }),
        ),
        case(
            "DELETE",
            "/admin/api-keys/{id}",
            PROJECT_OWNERS,
            NO_ROLE_IN_A,
            202,
            prep!(|w, via, p, fresh| {
                let id = if fresh {
                    w.fresh_key(via).await
                } else {
                    w.spare_key_id.clone()
                };
                req(Method::DELETE, format!("/admin/api-keys/{id}"), None)
            }),
        ),
        case(
            "GET",
            "/admin/projects/{id}/private-endpoints",
            PROJECT_READERS,
            NO_ROLE_IN_A,
            200,
            prep!(|w, via, p, fresh| req(
                Method::GET,
                format!("/admin/projects/{}/private-endpoints", w.project_a),
                None
            )),
        ),
        case(
            "POST",
            "/admin/projects/{id}/private-endpoints",
            PROJECT_OWNERS,
            NO_ROLE_IN_A,
            201,
            prep!(|w, via, p, fresh| req(
                Method::POST,
                format!("/admin/projects/{}/private-endpoints", w.project_a),
                Some(json!({"name": uid(), "allowed_cidrs": ["127.0.0.0/8"]}))
            )),
        ),
        case(
            "GET",
            "/admin/private-endpoints/{id}",
            PROJECT_READERS,
            NO_ROLE_IN_A,
            200,
            prep!(|w, via, p, fresh| req(
                Method::GET,
                format!("/admin/private-endpoints/{}", w.spare_endpoint_id),
                None
            )),
        ),
        case(
            "DELETE",
            "/admin/private-endpoints/{id}",
            PROJECT_OWNERS,
            NO_ROLE_IN_A,
            202,
            prep!(|w, via, p, fresh| {
                let id = if fresh {
                    w.fresh_endpoint(via).await
                } else {
                    w.spare_endpoint_id.clone()
                };
                req(
                    Method::DELETE,
                    format!("/admin/private-endpoints/{id}"),
                    None,
                )
            }),
        ),
        case(
            "POST",
            "/indexes",
            INDEX_WRITERS,
            NOT_IN_A,
            201,
            prep!(|w, via, p, fresh| req(
                Method::POST,
                "/indexes",
                Some(json!({
                "name": format!("c{}", &uid()[..8]), "dimension": 2, "metric": "cosine",
                "spec": {"serverless": {"cloud": "aws", "region": "us-east-1"}}}))
            )),
        ),
        case(
            "GET",
            "/indexes",
            INDEX_READERS,
            NOT_IN_A,
            200,
            prep!(|w, via, p, fresh| req(Method::GET, "/indexes", None)),
        ),
        case(
            "GET",
            "/indexes/{name}",
            INDEX_READERS,
            NOT_IN_A,
            200,
            prep!(|w, via, p, fresh| req(Method::GET, format!("/indexes/{INDEX}"), None)),
        ),
        case(
            "PATCH",
            "/indexes/{name}",
            INDEX_WRITERS,
            NOT_IN_A,
            200,
            prep!(|w, via, p, fresh| req(
                Method::PATCH,
                format!("/indexes/{INDEX}"),
                Some(json!({"tags": {"touched": "yes"}}))
            )),
        ),
        case(
            "POST",
            "/indexes/{name}/rotate-key",
            INDEX_WRITERS,
            NOT_IN_A,
            202,
            prep!(|w, via, p, fresh| {
                let name = if fresh {
                    w.fresh_index(via).await
                } else {
                    INDEX.to_string()
                };
                req(Method::POST, format!("/indexes/{name}/rotate-key"), None)
            }),
        ),
        case(
            "DELETE",
            "/indexes/{name}",
            INDEX_WRITERS,
            NOT_IN_A,
            202,
            prep!(|w, via, p, fresh| {
                let name = if fresh {
                    w.fresh_index(via).await
                } else {
                    INDEX.to_string()
                };
                req(Method::DELETE, format!("/indexes/{name}"), None)
            }),
        ),
        case(
            "POST",
            "/indexes/{name}/backups",
            INDEX_WRITERS,
            NOT_IN_A,
            201,
            prep!(|w, via, p, fresh| req(
                Method::POST,
                format!("/indexes/{INDEX}/backups"),
                Some(json!({"name": "matrix", "description": "an attempt"}))
            )),
        ),
        case(
            "GET",
            "/indexes/{name}/backups",
            INDEX_READERS,
            NOT_IN_A,
            200,
            prep!(|w, via, p, fresh| req(Method::GET, format!("/indexes/{INDEX}/backups"), None)),
        ),
        case(
            "GET",
            "/backups",
            INDEX_READERS,
            NOT_IN_A,
            200,
            prep!(|w, via, p, fresh| req(Method::GET, "/backups?limit=5", None)),
        ),
        case(
            "GET",
            "/backups/{id}",
            INDEX_READERS,
            NOT_IN_A,
            200,
            prep!(|w, via, p, fresh| req(
                Method::GET,
                format!("/backups/{}", w.spare_backup_id),
                None
            )),
        ),
        case(
            "DELETE",
            "/backups/{id}",
            INDEX_WRITERS,
            NOT_IN_A,
            202,
            prep!(|w, via, p, fresh| {
                let id = if fresh {
                    w.fresh_backup(via).await
                } else {
                    w.spare_backup_id.clone()
                };
                req(Method::DELETE, format!("/backups/{id}"), None)
            }),
        ),
        case(
            "POST",
            "/backups/{id}/create-index",
            INDEX_WRITERS,
            NOT_IN_A,
            202,
            prep!(|w, via, p, fresh| req(
                Method::POST,
                format!("/backups/{}/create-index", w.spare_backup_id),
                Some(json!({"name": format!("r{}", &uid()[..8]), "replicas": 1}))
            )),
        ),
        case(
            "GET",
            "/restore-jobs",
            INDEX_READERS,
            NOT_IN_A,
            200,
            prep!(|w, via, p, fresh| req(Method::GET, "/restore-jobs", None)),
        ),
        case(
            "GET",
            "/restore-jobs/{id}",
            INDEX_READERS,
            NOT_IN_A,
            200,
            prep!(|w, via, p, fresh| req(
                Method::GET,
                format!("/restore-jobs/{}", w.spare_restore_job_id),
                None
            )),
        ),
        case(
            "POST",
            "/collections",
            INDEX_WRITERS,
            NOT_IN_A,
            201,
            prep!(|w, via, p, fresh| req(
                Method::POST,
                "/collections",
                Some(json!({"name": format!("c{}", &uid()[..8]), "source": INDEX}))
            )),
        ),
        case(
            "GET",
            "/collections",
            INDEX_READERS,
            NOT_IN_A,
            200,
            prep!(|w, via, p, fresh| req(Method::GET, "/collections", None)),
        ),
        case(
            "GET",
            "/collections/{name}",
            INDEX_READERS,
            NOT_IN_A,
            200,
            prep!(|w, via, p, fresh| req(
                Method::GET,
                format!("/collections/{}", w.spare_collection),
                None
            )),
        ),
        case(
            "DELETE",
            "/collections/{name}",
            INDEX_WRITERS,
            NOT_IN_A,
            202,
            prep!(|w, via, p, fresh| {
                let name = if fresh {
                    w.fresh_collection(via).await
                } else {
                    w.spare_collection.clone()
                };
                req(Method::DELETE, format!("/collections/{name}"), None)
            }),
        ),
        case(
            "POST",
            "/vectors/upsert",
            DATA_WRITERS,
            NOT_IN_A,
            200,
            prep!(|w, via, p, fresh| req(
                Method::POST,
                "/vectors/upsert",
                Some(json!({
                "vectors": [{"id": "v1", "values": [0.1, 0.2, 0.3, 0.4]}], "namespace": "ns"}))
            )),
        ),
        case(
            "POST",
            "/vectors/update",
            DATA_WRITERS,
            NOT_IN_A,
            200,
            prep!(|w, via, p, fresh| req(
                Method::POST,
                "/vectors/update",
                Some(json!({
                "id": "v1", "setMetadata": {"k": 1}, "namespace": "ns"}))
            )),
        ),
        case(
            "POST",
            "/vectors/delete",
            DATA_WRITERS,
            NOT_IN_A,
            200,
            prep!(|w, via, p, fresh| req(
                Method::POST,
                "/vectors/delete",
                Some(json!({
                "ids": ["absent"], "namespace": "ns"}))
            )),
        ),
        case(
            "DELETE",
            "/vectors/delete",
            DATA_WRITERS,
            NOT_IN_A,
            200,
            prep!(|w, via, p, fresh| req(
                Method::DELETE,
                "/vectors/delete",
                Some(json!({
                "ids": ["absent"], "namespace": "ns"}))
            )),
        ),
        case(
            "POST",
            "/query",
            DATA_READERS,
            NOT_IN_A,
            200,
            prep!(|w, via, p, fresh| req(
                Method::POST,
                "/query",
                Some(json!({
                "vector": [0.1, 0.2, 0.3, 0.4], "topK": 3, "namespace": "ns"}))
            )),
        ),
        case(
            "GET",
            "/vectors/fetch",
            DATA_READERS,
            NOT_IN_A,
            200,
            prep!(|w, via, p, fresh| req(Method::GET, "/vectors/fetch?ids=v1&namespace=ns", None)),
        ),
        case(
            "POST",
            "/vectors/fetch_by_metadata",
            DATA_READERS,
            NOT_IN_A,
            200,
            prep!(|w, via, p, fresh| req(
                Method::POST,
                "/vectors/fetch_by_metadata",
                Some(json!({
                "filter": {"k": {"$eq": 1}}, "namespace": "ns"}))
            )),
        ),
        case(
            "GET",
            "/vectors/list",
            DATA_READERS,
            NOT_IN_A,
            200,
            prep!(|w, via, p, fresh| req(Method::GET, "/vectors/list?namespace=ns", None)),
        ),
        case(
            "POST",
            "/describe_index_stats",
            DATA_READERS,
            NOT_IN_A,
            200,
            prep!(|w, via, p, fresh| req(Method::POST, "/describe_index_stats", Some(json!({})))),
        ),
        case(
            "GET",
            "/describe_index_stats",
            DATA_READERS,
            NOT_IN_A,
            200,
            prep!(|w, via, p, fresh| req(Method::GET, "/describe_index_stats", None)),
        ),
        case(
            "GET",
            "/namespaces",
            DATA_READERS,
            NOT_IN_A,
            200,
            prep!(|w, via, p, fresh| req(Method::GET, "/namespaces", None)),
        ),
        case(
            "POST",
            "/namespaces",
            DATA_WRITERS,
            NOT_IN_A,
            201,
            prep!(|w, via, p, fresh| req(
                Method::POST,
                "/namespaces",
                Some(json!({"name": format!("m{}", uid())}))
            )),
        ),
        case(
            "GET",
            "/namespaces/{namespace}",
            DATA_READERS,
            NOT_IN_A,
            200,
            prep!(|w, via, p, fresh| req(Method::GET, "/namespaces/ns", None)),
        ),
        case(
            "DELETE",
            "/namespaces/{namespace}",
            DATA_WRITERS,
            NOT_IN_A,
            200,
            prep!(|w, via, p, fresh| {
                let ns = if fresh {
                    w.fresh_namespace(via).await
                } else {
                    "ns".to_string()
                };
                req(Method::DELETE, format!("/namespaces/{ns}"), None)
            }),
        ),
    ]
}

/// The gRPC methods and who may call them (the same operations as their REST twins).
const GRPC_CASES: &[(&str, &[&str])] = &[
    ("Upsert", DATA_WRITERS),
    ("Update", DATA_WRITERS),
    ("Delete", DATA_WRITERS),
    ("Query", DATA_READERS),
    ("Fetch", DATA_READERS),
    ("FetchByMetadata", DATA_READERS),
    ("List", DATA_READERS),
    ("DescribeIndexStats", DATA_READERS),
    ("ListNamespaces", DATA_READERS),
    ("DescribeNamespace", DATA_READERS),
    ("CreateNamespace", DATA_WRITERS),
    ("DeleteNamespace", DATA_WRITERS),
];

fn expected(case_allow: &[&str], hidden: &[&str], ok: u16, principal: &str, public: bool) -> u16 {
    if public || case_allow.contains(&principal) {
        ok
    } else if UNAUTHENTICATED.contains(&principal) {
        401
    } else if hidden.contains(&principal) {
        404
    } else {
        403
    }
}

async fn build_world() -> World {
    let cluster = Cluster::start(3).await.expect("cluster");
    let project_a = cluster.bootstrap["project_id"]
        .as_str()
        .unwrap()
        .to_string();
    let org = cluster.bootstrap["organization_id"]
        .as_str()
        .unwrap()
        .to_string();
    let mut world = World {
        cluster,
        org: org.clone(),
        project_a: project_a.clone(),
        creds: BTreeMap::new(),
        member_ids: BTreeMap::new(),
        user_password: "matrix-password-1".into(),
        user_email: String::new(),
        sa_client_id: String::new(),
        sa_secret: String::new(),
        spare_key_id: String::new(),
        spare_endpoint_id: String::new(),
        spare_token_id: String::new(),
        spare_user_id: String::new(),
        spare_sa_id: String::new(),
        spare_member_id: String::new(),
        spare_backup_id: String::new(),
        spare_collection: String::new(),
        spare_restore_job_id: String::new(),
    };
    let w = &mut world;
    w.cluster
        .create_index(1, &w.cluster.api_key(), INDEX, DIM as u32, "cosine")
        .await
        .expect("index");
    w.fresh_namespace(1).await;
    let upsert = w
        .cluster
        .data(1, &w.cluster.api_key(), INDEX, Method::POST, "/vectors/upsert")
        .json(&json!({"vectors": [{"id": "v1", "values": [0.1, 0.2, 0.3, 0.4], "metadata": {"k": 1}}], "namespace": "ns"}))
        .send()
        .await
        .unwrap();
    assert_eq!(upsert.status().as_u16(), 200);

    // A ready backup of the index, a collection, and a restore job from the backup.
    w.spare_backup_id = w.fresh_backup(1).await;
    w.spare_collection = w.fresh_collection(1).await;
    let backup_url = format!("/backups/{}", w.spare_backup_id);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let b = w.operator_as_key(1, Method::GET, &backup_url, None).await;
        if b["status"] == "Ready" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "backup not ready: {b}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let job = w
        .operator_as_key(
            1,
            Method::POST,
            &format!("{backup_url}/create-index"),
            Some(json!({"name": "restored", "replicas": 1})),
        )
        .await;
    w.spare_restore_job_id = job["restore_job_id"].as_str().unwrap().to_string();

    // Keys of project A, one per role; one of project B; one revoked.
    for (name, role) in [
        (KPE, "ProjectEditor"),
        (KPV, "ProjectViewer"),
        (KCE, "ControlPlaneEditor"),
        (KCV, "ControlPlaneViewer"),
        (KDE, "DataPlaneEditor"),
        (KDV, "DataPlaneViewer"),
    ] {
        let key = w.cluster.key_in(&project_a, &[role]).await.unwrap();
        w.creds.insert(name, Cred::ApiKey(key));
    }
    let (_, other) = w
        .cluster
        .project_with_key("project-b", &["ProjectEditor"])
        .await
        .unwrap();
    w.creds.insert(KX, Cred::ApiKey(other));
    let revoked = w
        .operator(
            1,
            Method::POST,
            &format!("/admin/projects/{project_a}/api-keys"),
            Some(json!({"name": "doomed"})),
        )
        .await;
    w.operator(
        1,
        Method::DELETE,
        &format!("/admin/api-keys/{}", revoked["key"]["id"].as_str().unwrap()),
        None,
    )
    .await;
    w.creds.insert(
        REVOKED,
        Cred::ApiKey(revoked["value"].as_str().unwrap().to_string()),
    );
    w.creds.insert(NONE, Cred::None);
    w.creds
        .insert(BAD_KEY, Cred::ApiKey("pcsk_not_a_key".into()));
    w.creds
        .insert(BAD_BEARER, Cred::Bearer("not.a.token".into()));
    w.creds
        .insert(OPERATOR, Cred::Bearer(w.cluster.admin_token()));

    // Users, with their organization and project roles, signed in.
    for (name, org_role, project_role) in [
        (OO, "OrgOwner", None),
        (OM, "OrgManager", None),
        (OB, "OrgBillingAdmin", None),
        (OMEM, "OrgMember", None),
        (PO, "OrgMember", Some("ProjectOwner")),
        (PM, "OrgMember", Some("ProjectManager")),
        (PMEM, "OrgMember", Some("ProjectMember")),
    ] {
        let email = format!("{}@matrix.test", name.replace(' ', "-").to_lowercase());
        let user = w
            .operator(
                1,
                Method::POST,
                &format!("/admin/organizations/{org}/members"),
                Some(json!({"email": email, "role": org_role, "password": w.user_password})),
            )
            .await;
        let id = user["id"].as_str().unwrap().to_string();
        if let Some(role) = project_role {
            w.operator(
                1,
                Method::POST,
                &format!("/admin/projects/{project_a}/members"),
                Some(json!({"user_id": id, "role": role})),
            )
            .await;
        }
        let login: Value = w
            .cluster
            .http
            .post(w.url(1, "/auth/login"))
            .json(&json!({"email": email, "password": w.user_password}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let token = login["access_token"]
            .as_str()
            .unwrap_or_else(|| panic!("login: {login}"));
        w.creds.insert(name, Cred::Bearer(token.to_string()));
        w.member_ids.insert(name, id);
        w.user_email = email;
    }
    let sa = w
        .operator(
            1,
            Method::POST,
            &format!("/admin/organizations/{org}/service-accounts"),
            Some(json!({"name": "matrix", "role": "OrgManager"})),
        )
        .await;
    w.sa_client_id = sa["client_id"].as_str().unwrap().to_string();
    w.sa_secret = sa["client_secret"].as_str().unwrap().to_string();
    w.operator(
        1,
        Method::POST,
        &format!("/admin/projects/{project_a}/members"),
        Some(json!({"service_account_id": w.sa_client_id, "role": "ProjectMember"})),
    )
    .await;
    let token: Value = w
        .cluster
        .http
        .post(w.url(1, "/oauth/token"))
        .json(&json!({"grant_type": "client_credentials", "client_id": w.sa_client_id, "client_secret": w.sa_secret}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    w.creds.insert(
        SA,
        Cred::Bearer(token["access_token"].as_str().unwrap().to_string()),
    );
    w.member_ids.insert(SA, w.sa_client_id.clone());

    // Targets for denied attempts, which must exist so a 404 means "hidden".
    w.spare_key_id = w.fresh_key(1).await;
    w.spare_endpoint_id = w.fresh_endpoint(1).await;
    w.spare_token_id = w.operator_token(1, true).await;
    w.spare_user_id = w.fresh_user(1, "OrgMember").await;
    w.spare_sa_id = w.fresh_sa(1).await;
    w.spare_member_id = w.member_of_a(1, true).await;
    // Every node has applied all of it (and refuses the revoked key) within the lease.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    world
}

async fn grpc_client(w: &World, via: u64) -> VectorServiceClient<Channel> {
    let ca = std::fs::read(w.cluster.ca_dir.join("ca.pem")).unwrap();
    let url = w.url(via, "");
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .domain_name("127.0.0.1");
    let channel = Channel::from_shared(url)
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap();
    VectorServiceClient::new(channel)
}

fn with_md<T>(w: &World, principal: &str, message: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(message);
    let md = r.metadata_mut();
    md.insert("x-conifer-index", INDEX.parse().unwrap());
    md.insert("x-project-id", w.project_a.parse().unwrap());
    match &w.creds[principal] {
        Cred::None => {}
        Cred::ApiKey(k) => {
            md.insert("api-key", k.parse().unwrap());
        }
        Cred::Bearer(t) => {
            md.insert("authorization", format!("Bearer {t}").parse().unwrap());
        }
    }
    r
}

#[allow(deprecated)]
async fn grpc_call(
    w: &World,
    client: &mut VectorServiceClient<Channel>,
    method: &str,
    principal: &str,
) -> tonic::Code {
    let code = |r: Result<(), tonic::Status>| r.err().map_or(tonic::Code::Ok, |s| s.code());
    let v = vec![0.1, 0.2, 0.3, 0.4];
    let ns = "ns".to_string();
    match method {
        "Upsert" => code(
            client
                .upsert(with_md(
                    w,
                    principal,
                    pb::UpsertRequest {
                        vectors: vec![pb::Vector {
                            id: "g1".into(),
                            values: v,
                            ..Default::default()
                        }],
                        namespace: ns,
                    },
                ))
                .await
                .map(drop),
        ),
        "Update" => code(
            client
                .update(with_md(
                    w,
                    principal,
                    pb::UpdateRequest {
                        id: "v1".into(),
                        namespace: ns,
                        ..Default::default()
                    },
                ))
                .await
                .map(drop),
        ),
        "Delete" => code(
            client
                .delete(with_md(
                    w,
                    principal,
                    pb::DeleteRequest {
                        ids: vec!["absent".into()],
                        namespace: ns,
                        ..Default::default()
                    },
                ))
                .await
                .map(drop),
        ),
        "Query" => code(
            client
                .query(with_md(
                    w,
                    principal,
                    pb::QueryRequest {
                        vector: v,
                        top_k: 3,
                        namespace: ns,
                        ..Default::default()
                    },
                ))
                .await
                .map(drop),
        ),
        "Fetch" => code(
            client
                .fetch(with_md(
                    w,
                    principal,
                    pb::FetchRequest {
                        ids: vec!["v1".into()],
                        namespace: ns,
                    },
                ))
                .await
                .map(drop),
        ),
        "FetchByMetadata" => code(
            client
                .fetch_by_metadata(with_md(
                    w,
                    principal,
                    pb::FetchByMetadataRequest {
                        namespace: ns,
                        ..Default::default()
                    },
                ))
                .await
                .map(drop),
        ),
        "List" => code(
            client
                .list(with_md(
                    w,
                    principal,
                    pb::ListRequest {
                        namespace: ns,
                        ..Default::default()
                    },
                ))
                .await
                .map(drop),
        ),
        "DescribeIndexStats" => code(
            client
                .describe_index_stats(with_md(
                    w,
                    principal,
                    pb::DescribeIndexStatsRequest::default(),
                ))
                .await
                .map(drop),
        ),
        "ListNamespaces" => code(
            client
                .list_namespaces(with_md(w, principal, pb::ListNamespacesRequest::default()))
                .await
                .map(drop),
        ),
        "DescribeNamespace" => code(
            client
                .describe_namespace(with_md(
                    w,
                    principal,
                    pb::DescribeNamespaceRequest { namespace: ns },
                ))
                .await
                .map(drop),
        ),
        "CreateNamespace" => code(
            client
                .create_namespace(with_md(
                    w,
                    principal,
                    pb::CreateNamespaceRequest {
                        name: format!("g{}", uid()),
                        schema: None,
                    },
                ))
                .await
                .map(drop),
        ),
        "DeleteNamespace" => {
            let target = w.fresh_namespace(1).await;
            tokio::time::sleep(Duration::from_millis(50)).await;
            code(
                client
                    .delete_namespace(with_md(
                        w,
                        principal,
                        pb::DeleteNamespaceRequest { namespace: target },
                    ))
                    .await
                    .map(drop),
            )
        }
        other => panic!("no gRPC case for {other}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_route_answers_every_principal_as_the_matrix_says() {
    let cases = rest_cases();
    // Every route of the node has exactly one expectation here.
    let covered: BTreeSet<(&str, &str)> = cases.iter().map(|c| (c.method, c.route)).collect();
    let grpc_methods: BTreeSet<&str> = GRPC_CASES.iter().map(|(m, _)| *m).collect();
    for (method, path, op) in ROUTES {
        match path.strip_prefix("/VectorService/") {
            Some(m) => assert!(
                grpc_methods.contains(m),
                "gRPC {m} ({op:?}) has no expectation"
            ),
            None => assert!(
                covered.contains(&(*method, *path)),
                "{method} {path} ({op:?}) has no expectation in this test"
            ),
        }
    }
    assert_eq!(cases.len(), covered.len(), "a route is listed twice");

    let world = build_world().await;
    let mut failures = Vec::new();
    let mut attempts = 0u64;
    for c in &cases {
        let public = matches!(
            c.route,
            "/health" | "/auth/login" | "/auth/password" | "/oauth/token"
        );
        for principal in PRINCIPALS {
            let via = attempts % 3 + 1;
            attempts += 1;
            let allowed = public || c.allow.contains(principal);
            let r = (c.prepare)(&world, via, principal, allowed).await;
            let data_plane = !c.route.starts_with("/admin") && !public;
            let (status, body) = world.send(via, principal, &r, data_plane).await;
            let want = expected(c.allow, c.hidden, c.ok, principal, public);
            if status != want {
                failures.push(format!(
                    "{} {} as {principal} via node {via}: got {status}, want {want}: {body}",
                    c.method, c.route
                ));
            }
        }
    }
    for (method, allow) in GRPC_CASES {
        for principal in PRINCIPALS {
            let via = attempts % 3 + 1;
            attempts += 1;
            let mut client = grpc_client(&world, via).await;
            let got = grpc_call(&world, &mut client, method, principal).await;
            let want = match expected(allow, NOT_IN_A, 200, principal, false) {
                200 => tonic::Code::Ok,
                401 => tonic::Code::Unauthenticated,
                403 => tonic::Code::PermissionDenied,
                _ => tonic::Code::NotFound,
            };
            if got != want {
                failures.push(format!(
                    "gRPC {method} as {principal} via node {via}: got {got:?}, want {want:?}"
                ));
            }
        }
    }
    println!("{attempts} attempts, {} mismatches", failures.len());
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
