//! Identity and access on real nodes: every kind of credential revoked and refused on every
//! node within the lease, sign-in throttling per source address and account, token expiry, signing-key
//! rotation, the decoy password check, cross-project isolation, and the CLI.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use conifer_node::control::LEASE_MS;
use conifer_tests::{Cluster, ClusterOptions};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

const PASSWORD: &str = "a-good-long-password";

/// A credential as a request header.
#[derive(Clone)]
enum Cred {
    Key(String),
    Bearer(String),
}

fn with(b: reqwest::RequestBuilder, cred: &Cred) -> reqwest::RequestBuilder {
    match cred {
        Cred::Key(k) => b.header("Api-Key", k),
        Cred::Bearer(t) => b.bearer_auth(t),
    }
}

async fn operator(c: &Cluster, method: Method, path: &str, body: Option<Value>) -> Value {
    let mut b = c
        .http
        .request(method.clone(), c.url(1, path))
        .bearer_auth(c.admin_token());
    if let Some(body) = body {
        b = b.json(&body);
    }
    let resp = b.send().await.expect("operator request");
    let status = resp.status();
    let v: Value = resp.json().await.unwrap_or(Value::Null);
    assert!(status.is_success(), "{method} {path}: {status} {v}");
    v
}

fn org(c: &Cluster) -> String {
    c.bootstrap["organization_id"].as_str().unwrap().to_string()
}

fn project(c: &Cluster) -> String {
    c.bootstrap["project_id"].as_str().unwrap().to_string()
}

async fn new_user(c: &Cluster, email: &str, role: &str) -> String {
    let u = operator(
        c,
        Method::POST,
        &format!("/admin/organizations/{}/members", org(c)),
        Some(json!({"email": email, "role": role, "password": PASSWORD})),
    )
    .await;
    u["id"].as_str().unwrap().to_string()
}

async fn login_from(
    c: &Cluster,
    http: &reqwest::Client,
    email: &str,
    password: &str,
) -> (StatusCode, Value) {
    let resp = http
        .post(c.url(1, "/auth/login"))
        .json(&json!({"email": email, "password": password}))
        .send()
        .await
        .unwrap();
    let status = resp.status();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn login(c: &Cluster, email: &str) -> String {
    let (status, body) = login_from(c, &c.http, email, PASSWORD).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["access_token"].as_str().unwrap().to_string()
}

async fn sa_token(c: &Cluster, client_id: &str, secret: &str) -> (StatusCode, Value) {
    let resp = c
        .http
        .post(c.url(1, "/oauth/token"))
        .json(&json!({"grant_type": "client_credentials", "client_id": client_id, "client_secret": secret}))
        .send()
        .await
        .unwrap();
    let status = resp.status();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// One check of a credential: `GET path` (with `X-Project-Id` and the index for data-plane
/// paths) answering `ok` means accepted.
struct Probe {
    cred: Cred,
    path: String,
    ok: u16,
}

impl Probe {
    async fn status(&self, c: &Cluster, node: u64) -> u16 {
        let mut b = with(c.http.get(c.url(node, &self.path)), &self.cred);
        if !self.path.starts_with("/admin") {
            b = b
                .header("X-Project-Id", project(c))
                .header("X-Conifer-Index", "guarded");
        }
        b.send().await.map_or(0, |r| r.status().as_u16())
    }
}

/// Waits until `probe` is accepted on every node, runs `revoke` (through node 1), then
/// probes every node until it refuses ([`conifer_tests::measure_revocation`]); the longest
/// accepted delay seen.
async fn revoke_and_measure<F>(c: &Cluster, what: &str, probe: Probe, revoke: F) -> Duration
where
    F: std::future::Future<Output = ()>,
{
    let status = |node| probe.status(c, node);
    conifer_tests::measure_revocation(&[1, 2, 3], what, probe.ok, status, revoke).await
}

#[tokio::test(flavor = "multi_thread")]
async fn every_kind_of_credential_is_refused_on_every_node_after_revocation() {
    let c = Cluster::start(3).await.unwrap();
    let p = project(&c);
    c.create_index(1, &c.api_key(), "guarded", 2, "cosine")
        .await
        .unwrap();
    let stats = "/describe_index_stats".to_string();
    let mut delays = Vec::new();

    // An API key, deleted.
    let key = operator(
        &c,
        Method::POST,
        &format!("/admin/projects/{p}/api-keys"),
        Some(json!({"name": "k"})),
    )
    .await;
    let key_id = key["key"]["id"].as_str().unwrap().to_string();
    let probe = Probe {
        cred: Cred::Key(key["value"].as_str().unwrap().into()),
        path: stats.clone(),
        ok: 200,
    };
    delays.push(
        revoke_and_measure(&c, "deleted API key", probe, async {
            operator(
                &c,
                Method::DELETE,
                &format!("/admin/api-keys/{key_id}"),
                None,
            )
            .await;
        })
        .await,
    );

    // An API key whose roles were narrowed: its create-index right is gone.
    let key = operator(
        &c,
        Method::POST,
        &format!("/admin/projects/{p}/api-keys"),
        Some(json!({"name": "k2"})),
    )
    .await;
    let key_id = key["key"]["id"].as_str().unwrap().to_string();
    let probe = Probe {
        cred: Cred::Key(key["value"].as_str().unwrap().into()),
        path: "/indexes".into(),
        ok: 200,
    };
    delays.push(
        revoke_and_measure(&c, "API key narrowed to DataPlaneViewer", probe, async {
            operator(
                &c,
                Method::PATCH,
                &format!("/admin/api-keys/{key_id}"),
                Some(json!({"roles": ["DataPlaneViewer"]})),
            )
            .await;
        })
        .await,
    );

    // A user, removed from the organization.
    let user = new_user(&c, "gone@example.test", "OrgMember").await;
    let probe = Probe {
        cred: Cred::Bearer(login(&c, "gone@example.test").await),
        path: "/admin/projects".into(),
        ok: 200,
    };
    delays.push(
        revoke_and_measure(&c, "deleted user", probe, async {
            operator(
                &c,
                Method::DELETE,
                &format!("/admin/organizations/{}/members/{user}", org(&c)),
                None,
            )
            .await;
        })
        .await,
    );

    // A user whose password was changed: tokens issued before are refused.
    let user = new_user(&c, "changed@example.test", "OrgMember").await;
    let probe = Probe {
        cred: Cred::Bearer(login(&c, "changed@example.test").await),
        path: "/admin/projects".into(),
        ok: 200,
    };
    delays.push(
        revoke_and_measure(&c, "user whose password changed", probe, async {
            operator(
                &c,
                Method::PATCH,
                &format!("/admin/organizations/{}/members/{user}", org(&c)),
                Some(json!({"password": "another-long-password"})),
            )
            .await;
        })
        .await,
    );

    // A project membership, removed: the project disappears for the user.
    let user = new_user(&c, "member@example.test", "OrgMember").await;
    operator(
        &c,
        Method::POST,
        &format!("/admin/projects/{p}/members"),
        Some(json!({"user_id": user, "role": "ProjectMember"})),
    )
    .await;
    let probe = Probe {
        cred: Cred::Bearer(login(&c, "member@example.test").await),
        path: format!("/admin/projects/{p}"),
        ok: 200,
    };
    delays.push(
        revoke_and_measure(&c, "removed project membership", probe, async {
            operator(
                &c,
                Method::DELETE,
                &format!("/admin/projects/{p}/members/{user}"),
                None,
            )
            .await;
        })
        .await,
    );

    // A service account, deleted; another whose secret was rotated.
    for (what, rotate) in [
        ("deleted service account", false),
        ("service account whose secret rotated", true),
    ] {
        let sa = operator(
            &c,
            Method::POST,
            &format!("/admin/organizations/{}/service-accounts", org(&c)),
            Some(json!({"name": what})),
        )
        .await;
        let id = sa["client_id"].as_str().unwrap().to_string();
        let secret = sa["client_secret"].as_str().unwrap().to_string();
        let (status, token) = sa_token(&c, &id, &secret).await;
        assert_eq!(status, StatusCode::OK, "{token}");
        let probe = Probe {
            cred: Cred::Bearer(token["access_token"].as_str().unwrap().into()),
            path: "/admin/projects".into(),
            ok: 200,
        };
        delays.push(
            revoke_and_measure(&c, what, probe, async {
                if rotate {
                    operator(
                        &c,
                        Method::POST,
                        &format!("/admin/service-accounts/{id}/rotate-secret"),
                        None,
                    )
                    .await;
                } else {
                    operator(
                        &c,
                        Method::DELETE,
                        &format!("/admin/service-accounts/{id}"),
                        None,
                    )
                    .await;
                }
            })
            .await,
        );
        let (status, _) = sa_token(&c, &id, &secret).await;
        assert_eq!(
            status,
            StatusCode::UNAUTHORIZED,
            "{what}: the old secret still signs in"
        );
    }

    // An operator token, revoked (another one stays).
    let spare = operator(&c, Method::POST, "/admin/operator-tokens", None).await;
    let spare_id = spare["id"].as_str().unwrap().to_string();
    let probe = Probe {
        cred: Cred::Bearer(spare["value"].as_str().unwrap().into()),
        path: "/admin/cluster".into(),
        ok: 200,
    };
    delays.push(
        revoke_and_measure(&c, "revoked operator token", probe, async {
            operator(
                &c,
                Method::DELETE,
                &format!("/admin/operator-tokens/{spare_id}"),
                None,
            )
            .await;
        })
        .await,
    );

    let longest = delays.iter().max().unwrap();
    println!(
        "longest accepted delay over every kind of revocation: {longest:?} (bound {LEASE_MS} ms)"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_user_changes_their_own_password_and_old_tokens_stop_working() {
    let c = Cluster::start(1).await.unwrap();
    new_user(&c, "self@example.test", "OrgMember").await;
    let old = login(&c, "self@example.test").await;
    let change = |password: &str, new_password: &str| {
        c.http
            .post(c.url(1, "/auth/password"))
            .json(&json!({"email": "self@example.test", "password": password,
                "new_password": new_password}))
            .send()
    };
    // A wrong current password or a too-short new one changes nothing.
    assert_eq!(
        change("wrong-password!", "new-long-password")
            .await
            .unwrap()
            .status(),
        401
    );
    assert_eq!(change(PASSWORD, "short").await.unwrap().status(), 400);
    let resp = change(PASSWORD, "new-long-password").await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let fresh: Value = resp.json().await.unwrap();
    let fresh = fresh["access_token"].as_str().unwrap().to_string();
    let projects = |token: String| {
        let c = &c;
        async move {
            c.http
                .get(c.url(1, "/admin/projects"))
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(projects(old).await, StatusCode::UNAUTHORIZED);
    assert_eq!(projects(fresh).await, StatusCode::OK);
    let (status, _) = login_from(&c, &c.http, "self@example.test", PASSWORD).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = login_from(&c, &c.http, "self@example.test", "new-long-password").await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread")]
async fn managers_cannot_touch_owners_or_reset_passwords() {
    let c = Cluster::start(1).await.unwrap();
    let org = org(&c);
    new_user(&c, "manager@example.test", "OrgManager").await;
    let owner = new_user(&c, "owner@example.test", "OrgOwner").await;
    let member = new_user(&c, "member@example.test", "OrgMember").await;
    let manager = login(&c, "manager@example.test").await;
    let call = |method: Method, path: String, body: Value| {
        c.http
            .request(method, c.url(1, &path))
            .bearer_auth(&manager)
            .json(&body)
            .send()
    };
    let members = format!("/admin/organizations/{org}/members");
    let status = |r: reqwest::Result<reqwest::Response>| r.unwrap().status().as_u16();
    // Allowed: an ordinary member, and role changes below owner.
    let body = json!({"email": "new@example.test", "role": "OrgMember", "password": PASSWORD});
    assert_eq!(status(call(Method::POST, members.clone(), body).await), 201);
    let body = json!({"role": "OrgBillingAdmin"});
    assert_eq!(
        status(call(Method::PATCH, format!("{members}/{member}"), body).await),
        200
    );
    // Refused: making an owner, changing or removing one, setting anyone's password.
    let body = json!({"email": "boss@example.test", "role": "OrgOwner", "password": PASSWORD});
    assert_eq!(status(call(Method::POST, members.clone(), body).await), 403);
    let body = json!({"role": "OrgOwner"});
    assert_eq!(
        status(call(Method::PATCH, format!("{members}/{member}"), body).await),
        403
    );
    let body = json!({"role": "OrgMember"});
    assert_eq!(
        status(call(Method::PATCH, format!("{members}/{owner}"), body).await),
        403
    );
    assert_eq!(
        status(call(Method::DELETE, format!("{members}/{owner}"), json!({})).await),
        403
    );
    let body = json!({"role": "OrgMember", "password": "taken-over-account"});
    assert_eq!(
        status(call(Method::PATCH, format!("{members}/{member}"), body).await),
        403
    );
    let sa = format!("/admin/organizations/{org}/service-accounts");
    let body = json!({"name": "root", "role": "OrgOwner"});
    assert_eq!(status(call(Method::POST, sa, body).await), 403);
    // Nothing changed: the member is still OrgBillingAdmin and signs in with the old password.
    let listed = operator(&c, Method::GET, &members, None).await;
    let roles: Vec<(&str, &str)> = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| (u["email"].as_str().unwrap(), u["role"].as_str().unwrap()))
        .collect();
    assert!(
        roles.contains(&("member@example.test", "OrgBillingAdmin")),
        "{roles:?}"
    );
    assert!(
        roles.contains(&("owner@example.test", "OrgOwner")),
        "{roles:?}"
    );
    assert!(!roles.iter().any(|(e, _)| *e == "boss@example.test"));
    login(&c, "member@example.test").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn failed_sign_ins_are_throttled_per_source_address_and_per_account() {
    use conifer_node::auth::throttle::{backoff, FREE_FAILED_SIGN_INS};
    let c = Cluster::start(1).await.unwrap();
    new_user(&c, "t@example.test", "OrgMember").await;
    new_user(&c, "u@example.test", "OrgMember").await;
    let attacker = c.client_from(IpAddr::from([127, 0, 0, 2])).unwrap();
    let bystander = c.client_from(IpAddr::from([127, 0, 0, 3])).unwrap();
    // The free failures, and one more, which is checked and starts the first wait.
    for i in 0..=FREE_FAILED_SIGN_INS {
        let (status, body) = login_from(&c, &attacker, "t@example.test", "wrong-password!").await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "attempt {i}: {body}");
    }
    // Throttled now, even with the right password, and with a Retry-After.
    let resp = attacker
        .post(c.url(1, "/auth/login"))
        .json(&json!({"email": "t@example.test", "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=backoff(1).as_secs()).contains(&retry), "{retry}");
    // Client-credential sign-ins from that address are throttled too.
    let resp = attacker
        .post(c.url(1, "/oauth/token"))
        .json(&json!({"grant_type": "client_credentials", "client_id": "x", "client_secret": "y"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    // Another address: to the attacked account only once its wait is over (the refusal
    // checks no password, so this comes well inside the wait); to another account at once.
    let (status, _) = login_from(&c, &bystander, "t@example.test", PASSWORD).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    let (status, body) = login_from(&c, &bystander, "u@example.test", PASSWORD).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    tokio::time::sleep(backoff(1)).await;
    let (status, body) = login_from(&c, &bystander, "t@example.test", PASSWORD).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // Oversized and malformed sign-ins are refused without a password check.
    let (status, _) = login_from(&c, &bystander, &"a".repeat(300), PASSWORD).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let resp = bystander
        .post(c.url(1, "/oauth/token"))
        .json(&json!({"grant_type": "password", "client_id": "x", "client_secret": "y"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test(flavor = "multi_thread")]
async fn tokens_expire_and_survive_exactly_one_signing_key_rotation() {
    let c = Cluster::start_with(ClusterOptions {
        nodes: 1,
        env: vec![("CONIFER_TOKEN_TTL_S".into(), "2".into())],
        ..ClusterOptions::default()
    })
    .await
    .unwrap();
    new_user(&c, "e@example.test", "OrgMember").await;
    let get = |token: String| {
        let c = &c;
        async move {
            let resp = c
                .http
                .get(c.url(1, "/admin/projects"))
                .bearer_auth(token)
                .send()
                .await
                .unwrap();
            let status = resp.status();
            (status, resp.text().await.unwrap_or_default())
        }
    };
    let (_, body) = login_from(&c, &c.http, "e@example.test", PASSWORD).await;
    assert_eq!(body["expires_in"], 2);
    let early = body["access_token"].as_str().unwrap().to_string();
    assert_eq!(get(early.clone()).await.0, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(3_100)).await;
    let (status, text) = get(early).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(text.contains("expired"), "{text}");

    // Rotation: the token of the previous key stays valid, one of a dropped key does not.
    let before = login(&c, "e@example.test").await;
    operator(&c, Method::POST, "/admin/signing-keys/rotate", None).await;
    let after = login(&c, "e@example.test").await;
    assert_eq!(get(before.clone()).await.0, StatusCode::OK);
    assert_eq!(get(after.clone()).await.0, StatusCode::OK);
    operator(&c, Method::POST, "/admin/signing-keys/rotate", None).await;
    let (status, text) = get(before).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(text.contains("unknown key"), "{text}");
    assert_eq!(get(after).await.0, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_email_costs_the_same_password_check_as_a_wrong_password() {
    let c = Cluster::start(1).await.unwrap();
    new_user(&c, "known@example.test", "OrgMember").await;
    // Attempts alternate between the two kinds, each from its own address so the throttle
    // does not interfere.
    let mut known = Vec::new();
    let mut unknown = Vec::new();
    let mut source = 10u8;
    for _ in 0..6 {
        for (email, times) in [
            ("known@example.test", &mut known),
            ("nobody@example.test", &mut unknown),
        ] {
            source += 1;
            let http = c.client_from(IpAddr::from([127, 0, 1, source])).unwrap();
            // Warm the connection so only the sign-in is timed.
            let _ = http.get(c.url(1, "/health")).send().await;
            let start = Instant::now();
            let (status, _) = login_from(&c, &http, email, "not-the-password").await;
            times.push(start.elapsed().as_secs_f64() * 1000.0);
            assert_eq!(status, StatusCode::UNAUTHORIZED);
        }
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (known, unknown) = (median(known), median(unknown));
    println!("median failed sign-in: known email {known:.1} ms, unknown email {unknown:.1} ms");
    // Without the decoy an unknown email would answer in well under a tenth of the time.
    assert!(
        unknown > known * 0.3,
        "an unknown email answers much faster ({unknown:.1} ms vs {known:.1} ms): emails can be enumerated"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn nothing_of_another_project_is_reachable_by_name_or_id() {
    let c = Cluster::start(1).await.unwrap();
    let a = project(&c);
    let key_a = c.api_key();
    let (b, key_b) = c.project_with_key("b", &["ProjectEditor"]).await.unwrap();
    // The same index name in both projects, holding different records.
    c.create_index(1, &key_a, "same", 2, "cosine")
        .await
        .unwrap();
    c.create_index(1, &key_b, "same", 2, "cosine")
        .await
        .unwrap();
    for (key, id) in [(&key_a, "in-a"), (&key_b, "in-b")] {
        let r = c
            .data(1, key, "same", Method::POST, "/vectors/upsert")
            .json(&json!({"vectors": [{"id": id, "values": [0.5, 0.5]}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
    }
    let fetch = |key: &str, header_project: Option<&str>, ids: &str| {
        let mut b = c.data(
            1,
            key,
            "same",
            Method::GET,
            &format!("/vectors/fetch?ids={ids}"),
        );
        if let Some(p) = header_project {
            b = b.header("X-Project-Id", p);
        }
        b.send()
    };
    let resp: Value = fetch(&key_a, None, "in-b")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        resp["vectors"],
        json!({}),
        "A's key sees B's record: {resp}"
    );
    // Naming project B with A's key: 404, as for a project that does not exist.
    let resp = fetch(&key_a, Some(&b), "in-b").await.unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    let resp = fetch(&key_a, Some("00000000-0000-0000-0000-000000000000"), "in-b")
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    // B's index description is not reachable from A.
    let indexes: Value = c
        .http
        .get(c.url(1, "/indexes"))
        .header("Api-Key", &key_a)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(indexes["indexes"].as_array().unwrap().len(), 1);
    assert!(indexes["indexes"][0]["host"]
        .as_str()
        .unwrap()
        .contains(&a[..7]));
    // A member of project A only: project B, its keys and its members are 404 by id.
    let user = new_user(&c, "a-only@example.test", "OrgMember").await;
    operator(
        &c,
        Method::POST,
        &format!("/admin/projects/{a}/members"),
        Some(json!({"user_id": user, "role": "ProjectOwner"})),
    )
    .await;
    let token = login(&c, "a-only@example.test").await;
    let keys_b = operator(
        &c,
        Method::GET,
        &format!("/admin/projects/{b}/api-keys"),
        None,
    )
    .await;
    let key_b_id = keys_b["data"][0]["id"].as_str().unwrap().to_string();
    for path in [
        format!("/admin/projects/{b}"),
        format!("/admin/projects/{b}/api-keys"),
        format!("/admin/projects/{b}/members"),
        format!("/admin/api-keys/{key_b_id}"),
    ] {
        let resp = c
            .http
            .get(c.url(1, &path))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::NOT_FOUND, "{path}");
    }
    let listed: Value = c
        .http
        .get(c.url(1, "/admin/projects"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        [a.as_str()],
        "the listing shows projects the user has no role in"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cli_drives_the_admin_api() {
    let c = Cluster::start(1).await.unwrap();
    let boot = c.nodes[0].data_dir.join("bootstrap.json");
    let run = |args: &[&str], env: &[(&str, &str)]| {
        let out = std::process::Command::new(conifer_tests::conifer_bin())
            .args(args)
            .arg("--bootstrap")
            .arg(&boot)
            .envs(env.iter().copied())
            .output()
            .expect("run conifer");
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        (out.status.success(), stdout, stderr)
    };
    let json_of = |args: &[&str], env: &[(&str, &str)]| -> Value {
        let mut all = args.to_vec();
        all.extend(["--output", "json"]);
        let (ok, out, err) = run(&all, env);
        assert!(ok, "conifer {args:?} failed: {err}");
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
    };
    let project = json_of(&["project", "create", "--name", "from-cli"], &[]);
    let pid = project["id"].as_str().unwrap();
    let key = json_of(
        &[
            "key",
            "create",
            "--project",
            pid,
            "--name",
            "reader",
            "--role",
            "DataPlaneViewer",
        ],
        &[],
    );
    assert_eq!(key["key"]["roles"], json!(["DataPlaneViewer"]));
    assert!(key["value"].as_str().unwrap().starts_with("pcsk_"));
    let (ok, table, _) = run(&["key", "list", "--project", pid], &[]);
    assert!(ok);
    assert!(table.starts_with("ID"), "{table}");
    assert!(
        table.contains("reader") && table.contains("DataPlaneViewer"),
        "{table}"
    );
    let user = json_of(
        &[
            "member",
            "create",
            "--email",
            "cli@example.test",
            "--role",
            "OrgOwner",
        ],
        &[("CONIFER_PASSWORD", PASSWORD)],
    );
    assert_eq!(user["role"], "OrgOwner");
    let token = json_of(
        &["login", "--email", "cli@example.test"],
        &[("CONIFER_PASSWORD", PASSWORD)],
    );
    let token = token["access_token"].as_str().unwrap();
    // The user's token, not the operator's, lists the project (OrgOwners own every project).
    let listed = json_of(&["project", "list", "--token", token], &[]);
    assert!(
        listed.as_array().unwrap().iter().any(|p| p["id"] == pid),
        "{listed}"
    );
    let sa = json_of(
        &[
            "service-account",
            "create",
            "--name",
            "ci",
            "--token",
            token,
        ],
        &[],
    );
    let sa_token = json_of(
        &["token", "--client-id", sa["client_id"].as_str().unwrap()],
        &[(
            "CONIFER_CLIENT_SECRET",
            sa["client_secret"].as_str().unwrap(),
        )],
    );
    assert!(sa_token["access_token"].is_string());
    let (ok, _, err) = run(
        &[
            "project",
            "delete",
            "--id",
            pid,
            "--token",
            "cnfop_wrong_token",
        ],
        &[],
    );
    assert!(!ok && err.contains("401"), "{err}");
    let (ok, out, _) = run(&["project", "delete", "--id", pid], &[]);
    assert!(ok, "{out}");
    let policy = std::process::Command::new(conifer_tests::conifer_bin())
        .arg("policy")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&policy.stdout).contains("| vector.query |"));
}
