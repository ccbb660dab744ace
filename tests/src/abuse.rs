//! The abuse harness: scenarios in which one client, with an ordinary key or none, tries to
//! deny service to others, get past a limit, or erase the audit history — each run against a
//! real cluster, with the figures it measured and the checks it made.
//!
//! `conifer-abuse` (behind `scripts/abuse/run.sh`) runs every scenario at full scale against
//! a 3-node cluster and writes a report; `tests/tests/abuse.rs` runs each at short scale.
//! Clients take their own loopback source addresses (127.0.x.y, all routed to `lo`), so each
//! scenario's attacker and victim are different sources to the node, and the fixture's own
//! calls (from 127.0.0.1) are neither.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use conifer_node::api::conn::{
    CLIENT_HEADER_READ_TIMEOUT_MS, CLIENT_IDLE_TIMEOUT_MS, MAX_CLIENT_CONNECTIONS_PER_SOURCE,
};
use conifer_node::audit::{verify_chain, AuditEvent, ChainHead, PrunedRun};
use conifer_node::auth::throttle::{
    FREE_FAILED_SIGN_INS, SIGN_IN_BURST_PER_PRINCIPAL, SIGN_IN_INTERVAL_PER_PRINCIPAL_MS,
};
use conifer_node::dataplane::router::PROJECT_COUNT_MAX_AGE_MS;
use conifer_node::tls;
use reqwest::Method;
use serde::Serialize;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::{Cluster, ClusterOptions};

/// How hard a run pushes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scale {
    /// Seconds per scenario: the version in `scripts/test.sh`.
    Short,
    /// The figures of the report (minutes).
    Full,
}

/// Every scenario, in the order a run takes them.
pub const SCENARIOS: &[&str] = &[
    "connections",
    "sign_in_throttle",
    "password_hashing",
    "merged_limits",
    "project_totals",
    "bounded_responses",
    "audit_flood",
    "garbage_keys",
    "unary_frames",
];

/// What one scenario measured and whether its checks held.
#[derive(Debug, Serialize)]
pub struct Outcome {
    /// Its name ([`SCENARIOS`]).
    pub scenario: String,
    /// Whether every check held.
    pub passed: bool,
    /// The figures it measured.
    pub figures: Value,
    /// The checks that failed, as sentences.
    pub failures: Vec<String>,
}

/// Checks collected while a scenario runs.
#[derive(Default)]
struct Checks(Vec<String>);

impl Checks {
    fn check(&mut self, ok: bool, what: impl Into<String>) {
        if !ok {
            self.0.push(what.into());
        }
    }
}

/// The project record total the `project_totals` scenario's cluster runs with
/// (`--max-records-per-project`): small enough to reach in seconds.
pub const SCENARIO_MAX_RECORDS_PER_PROJECT: u64 = 1_000;

/// Starts the 3-node cluster scenario `name` runs against.
pub async fn start(name: &str) -> anyhow::Result<Cluster> {
    let mut options = ClusterOptions {
        nodes: 3,
        ..ClusterOptions::default()
    };
    if name == "project_totals" {
        options.env.push((
            "CONIFER_MAX_RECORDS_PER_PROJECT".into(),
            SCENARIO_MAX_RECORDS_PER_PROJECT.to_string(),
        ));
    }
    Cluster::start_with(options).await
}

/// Runs scenario `name` against `cluster` (started by [`start`]; the default project's key
/// `ProjectEditor`).
pub async fn run(cluster: &mut Cluster, name: &str, scale: Scale) -> anyhow::Result<Outcome> {
    raise_open_files();
    let mut checks = Checks::default();
    let figures = match name {
        "connections" => connections(cluster, scale, &mut checks).await?,
        "sign_in_throttle" => sign_in_throttle(cluster, &mut checks).await?,
        "password_hashing" => password_hashing(cluster, scale, &mut checks).await?,
        "merged_limits" => merged_limits(cluster, scale, &mut checks).await?,
        "project_totals" => project_totals(cluster, &mut checks).await?,
        "bounded_responses" => bounded_responses(cluster, &mut checks).await?,
        "audit_flood" => audit_flood(cluster, scale, &mut checks).await?,
        "garbage_keys" => garbage_keys(cluster, scale, &mut checks).await?,
        "unary_frames" => unary_frames(cluster, &mut checks).await?,
        other => bail!("no scenario {other:?}; the scenarios are {SCENARIOS:?}"),
    };
    Ok(Outcome {
        scenario: name.to_string(),
        passed: checks.0.is_empty(),
        figures,
        failures: checks.0,
    })
}

/// The harness holds thousands of sockets: lift its own open-file limit to the hard one.
fn raise_open_files() {
    let _ = rlimit::increase_nofile_limit(u64::MAX);
}

/// The loopback source `127.0.a.b`.
fn source(a: u8, b: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, a, b))
}

/// The client-port address of node `id`.
fn api_addr(cluster: &Cluster, id: u64) -> anyhow::Result<SocketAddr> {
    let node = cluster
        .nodes
        .iter()
        .find(|n| n.id == id)
        .context("no such node")?;
    Ok(node.api_addr.parse()?)
}

/// A TLS connector trusting the cluster CA.
pub fn tls_connector(cluster: &Cluster) -> anyhow::Result<TlsConnector> {
    let pem = std::fs::read(cluster.ca_dir.join(tls::CA_CERT))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        roots.add(cert?)?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(config)))
}

/// A TLS connection from `from` to `to`, or why not (the node closed it unanswered).
pub async fn open_tls(
    tls: &TlsConnector,
    from: IpAddr,
    to: SocketAddr,
) -> anyhow::Result<TlsStream<TcpStream>> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(from, 0))?;
    let tcp = socket.connect(to).await?;
    let name = rustls::pki_types::ServerName::IpAddress(to.ip().into());
    Ok(tokio::time::timeout(Duration::from_secs(10), tls.connect(name, tcp)).await??)
}

/// Opens `attempts` connections from `from` (64 at a time); returns those the node took.
async fn hold(
    tls: &TlsConnector,
    from: IpAddr,
    to: SocketAddr,
    attempts: usize,
) -> Vec<TlsStream<TcpStream>> {
    let mut held = Vec::new();
    let mut left = attempts;
    while left > 0 {
        let wave = left.min(64);
        left -= wave;
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..wave {
            let tls = tls.clone();
            tasks.spawn(async move { open_tls(&tls, from, to).await });
        }
        while let Some(done) = tasks.join_next().await {
            if let Ok(Ok(stream)) = done {
                held.push(stream);
            }
        }
    }
    held
}

/// Milliseconds, at the `q` quantile of `samples` (sorted here).
fn quantile_ms(samples: &mut [Duration], q: f64) -> u64 {
    if samples.is_empty() {
        return 0;
    }
    samples.sort();
    let i = ((samples.len() - 1) as f64 * q).round() as usize;
    samples[i].as_millis() as u64
}

/// Victim traffic for `duration`: a health check and a query through node `via` every
/// 100 ms; returns (requests, failures, latencies).
async fn victim(
    cluster: &Cluster,
    via: u64,
    from: IpAddr,
    index: &str,
    duration: Duration,
) -> anyhow::Result<(u64, u64, Vec<Duration>)> {
    let client = cluster.client_from(from)?;
    let key = cluster.api_key();
    let (mut sent, mut failed, mut latencies) = (0u64, 0u64, Vec::new());
    let end = Instant::now() + duration;
    while Instant::now() < end {
        let started = Instant::now();
        let health = client.get(cluster.url(via, "/health")).send().await;
        latencies.push(started.elapsed());
        sent += 1;
        if !health.is_ok_and(|r| r.status().is_success()) {
            failed += 1;
        }
        let started = Instant::now();
        let query = client
            .post(cluster.url(via, "/query"))
            .header("Api-Key", &key)
            .header("X-Conifer-Index", index)
            .json(&json!({"vector": [0.1, 0.2, 0.3, 0.4], "topK": 3}))
            .send()
            .await;
        latencies.push(started.elapsed());
        sent += 1;
        if !query.is_ok_and(|r| r.status().is_success()) {
            failed += 1;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok((sent, failed, latencies))
}

/// Upserts `records` (id, values, metadata) into `index` in batches of `per_batch`.
async fn upsert(
    cluster: &Cluster,
    index: &str,
    records: Vec<Value>,
    per_batch: usize,
) -> anyhow::Result<()> {
    for batch in records.chunks(per_batch) {
        let resp = cluster
            .data(
                1,
                &cluster.api_key(),
                index,
                Method::POST,
                "/vectors/upsert",
            )
            .json(&json!({ "vectors": batch }))
            .send()
            .await?;
        anyhow::ensure!(
            resp.status().is_success(),
            "upsert: {} {}",
            resp.status(),
            resp.text().await?
        );
    }
    Ok(())
}

/// A data-plane call's status and JSON body.
async fn call(request: reqwest::RequestBuilder) -> anyhow::Result<(u16, Value)> {
    let resp = request.send().await?;
    let status = resp.status().as_u16();
    let bytes = resp.bytes().await?;
    Ok((
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    ))
}

/// 1. One source holding connections, and slowloris clients, while another client works.
async fn connections(
    cluster: &Cluster,
    scale: Scale,
    checks: &mut Checks,
) -> anyhow::Result<Value> {
    let key = cluster.api_key();
    cluster.create_index(1, &key, "conn", 4, "cosine").await?;
    let to = api_addr(cluster, 1)?;
    let tls = tls_connector(cluster)?;

    // 50 slowloris clients: the request line, then one header byte a second.
    let slow_from = source(5, 2);
    let slow_closed_after = Arc::new(std::sync::Mutex::new(Vec::<Duration>::new()));
    let mut slowloris = tokio::task::JoinSet::new();
    for _ in 0..50 {
        let tls = tls.clone();
        let closed = slow_closed_after.clone();
        slowloris.spawn(async move {
            let Ok(mut stream) = open_tls(&tls, slow_from, to).await else {
                return;
            };
            let opened = Instant::now();
            let _ = stream
                .write_all(b"POST /query HTTP/1.1\r\nHost: conifer\r\nX-Slow: ")
                .await;
            let mut buf = [0u8; 512];
            loop {
                tokio::select! {
                    read = stream.read(&mut buf) => {
                        // An answer (408) or the close: either way the node let go.
                        let _ = read;
                        break;
                    }
                    () = tokio::time::sleep(Duration::from_secs(1)) => {
                        if stream.write_all(b"a").await.is_err() {
                            break;
                        }
                    }
                }
                if opened.elapsed() > Duration::from_secs(90) {
                    return;
                }
            }
            closed
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(opened.elapsed());
        });
    }
    // One source asking for 1,100 connections, then seven more sources asking for their
    // cap each, into the reserve.
    let hog = hold(&tls, source(5, 1), to, 1_100).await;
    let mut fillers = BTreeMap::new();
    let mut held = Vec::new();
    for b in 1..=7u8 {
        let got = hold(&tls, source(6, b), to, MAX_CLIENT_CONNECTIONS_PER_SOURCE).await;
        fillers.insert(format!("127.0.6.{b}"), got.len());
        held.extend(got);
    }
    let info = cluster.cluster_info(1).await?;
    let open_at_peak = info["client_connections"]["open"].as_u64().unwrap_or(0);
    let refused = info["client_connections"]["refused"].as_u64().unwrap_or(0);

    // Meanwhile another client, from its own address.
    let (sent, failed, mut latencies) = victim(
        cluster,
        1,
        source(7, 1),
        "conn",
        Duration::from_millis(CLIENT_HEADER_READ_TIMEOUT_MS + 3_000),
    )
    .await?;
    while slowloris.join_next().await.is_some() {}
    let mut slow = slow_closed_after
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();

    checks.check(
        hog.len() == MAX_CLIENT_CONNECTIONS_PER_SOURCE,
        format!(
            "one source held {} connections; its cap is {MAX_CLIENT_CONNECTIONS_PER_SOURCE}",
            hog.len()
        ),
    );
    checks.check(
        failed == 0,
        format!("{failed} of the other client's {sent} requests failed"),
    );
    let p99 = quantile_ms(&mut latencies, 0.99);
    checks.check(
        p99 <= 2_000,
        format!("the other client's p99 latency was {p99} ms (bound 2,000 ms)"),
    );
    checks.check(
        slow.len() == 50,
        format!(
            "{} of 50 slowloris connections were closed by the node",
            slow.len()
        ),
    );
    let slow_max = quantile_ms(&mut slow, 1.0);
    checks.check(
        slow_max <= CLIENT_HEADER_READ_TIMEOUT_MS + 3_000,
        format!(
            "a slowloris connection was held {slow_max} ms (header timeout \
             {CLIENT_HEADER_READ_TIMEOUT_MS} ms)"
        ),
    );

    // Full scale: the held connections, idle, are closed by the node.
    let mut idle_closed = Value::Null;
    if scale == Scale::Full {
        tokio::time::sleep(Duration::from_millis(CLIENT_IDLE_TIMEOUT_MS + 5_000)).await;
        let open_after = cluster.cluster_info(1).await?["client_connections"]["open"]
            .as_u64()
            .unwrap_or(u64::MAX);
        checks.check(
            open_after < 10,
            format!("{open_after} connections still open after the idle timeout"),
        );
        idle_closed = json!(open_after);
    }
    drop(hog);
    drop(held);
    Ok(json!({
        "hog_source_attempts": 1_100,
        "hog_source_admitted": MAX_CLIENT_CONNECTIONS_PER_SOURCE.min(1_100),
        "filler_sources_admitted": fillers,
        "node_open_at_peak": open_at_peak,
        "node_refused_total": refused,
        "slowloris_connections": 50,
        "slowloris_closed": slow.len(),
        "slowloris_held_max_ms": slow_max,
        "other_client_requests": sent,
        "other_client_failed": failed,
        "other_client_p50_ms": quantile_ms(&mut latencies, 0.5),
        "other_client_p99_ms": p99,
        "open_after_idle_timeout": idle_closed,
    }))
}

/// Signs in as `email` with `password` from `client` through node `via`: the status.
async fn login(
    cluster: &Cluster,
    client: &reqwest::Client,
    via: u64,
    email: &str,
    password: &str,
) -> u16 {
    client
        .post(cluster.url(via, "/auth/login"))
        .json(&json!({"email": email, "password": password}))
        .send()
        .await
        .map_or(0, |r| r.status().as_u16())
}

/// Creates user `email` with `password` in the default organization.
async fn member(cluster: &Cluster, email: &str, password: &str) -> anyhow::Result<()> {
    let org = cluster.organization_id();
    let resp = cluster
        .http
        .post(cluster.url(1, &format!("/admin/organizations/{org}/members")))
        .bearer_auth(cluster.admin_token())
        .json(&json!({"email": email, "password": password, "role": "OrgMember"}))
        .send()
        .await?;
    anyhow::ensure!(
        resp.status().is_success(),
        "creating {email}: {} {}",
        resp.status(),
        resp.text().await?
    );
    Ok(())
}

/// Counts statuses.
fn tally(statuses: &[u16]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for s in statuses {
        *counts.entry(s.to_string()).or_insert(0) += 1;
    }
    counts
}

/// Sends the same sign-in `n` times at once from `client`.
async fn concurrent_logins(
    cluster: &Cluster,
    client: &reqwest::Client,
    emails: Vec<String>,
) -> Vec<u16> {
    let mut tasks = tokio::task::JoinSet::new();
    for email in emails {
        let client = client.clone();
        let url = cluster.url(1, "/auth/login");
        tasks.spawn(async move {
            client
                .post(url)
                .json(&json!({"email": email, "password": "not the password at all"}))
                .send()
                .await
                .map_or(0, |r| r.status().as_u16())
        });
    }
    let mut statuses = Vec::new();
    while let Some(done) = tasks.join_next().await {
        statuses.push(done.unwrap_or(0));
    }
    statuses
}

/// 2. Concurrent guesses, and guesses interleaved with good sign-ins to another account.
async fn sign_in_throttle(cluster: &Cluster, checks: &mut Checks) -> anyhow::Result<Value> {
    let password = "a long enough password";
    for email in [
        "victim1@abuse.test",
        "victim2@abuse.test",
        "attacker@abuse.test",
    ] {
        member(cluster, email, password).await?;
    }
    let free = FREE_FAILED_SIGN_INS as usize;

    // 200 wrong passwords for one account from one address, all at once. (One client: over
    // HTTP/2 a few of its first streams may be refused before it learns the node's stream
    // limit; those come back unanswered, status 0, and were never checked.)
    let burst = cluster.client_from(source(8, 1))?;
    let statuses = concurrent_logins(cluster, &burst, vec!["victim1@abuse.test".into(); 200]).await;
    let checked_same = statuses.iter().filter(|s| **s == 401).count();
    checks.check(
        checked_same <= free + 1 && statuses.iter().all(|s| matches!(s, 0 | 401 | 429)),
        format!(
            "of 200 concurrent guesses at one account, {checked_same} were checked: {:?}",
            tally(&statuses)
        ),
    );

    // The owner, from elsewhere, is held off only while the account's wait runs, then signs
    // in (through the same node, which counted the guesses).
    let owner = cluster.client_from(source(8, 4))?;
    let first_try = login(cluster, &owner, 1, "victim1@abuse.test", password).await;
    let mut owner_status = first_try;
    let waited = Instant::now();
    while owner_status != 200 && waited.elapsed() < Duration::from_secs(20) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        owner_status = login(cluster, &owner, 1, "victim1@abuse.test", password).await;
    }
    checks.check(
        first_try == 429,
        format!("the attacked account was not in a wait: the owner got {first_try}"),
    );
    checks.check(
        owner_status == 200,
        format!("the real owner could not sign in after the wait: {owner_status}"),
    );

    // 200 at once, each at another account, from one address.
    let spread = cluster.client_from(source(8, 3))?;
    let emails = (0..200).map(|i| format!("nobody{i}@abuse.test")).collect();
    let statuses_spread = concurrent_logins(cluster, &spread, emails).await;
    let checked_spread = statuses_spread.iter().filter(|s| **s == 401).count();
    checks.check(
        checked_spread <= free + 1,
        format!("of 200 concurrent guesses at 200 accounts from one address, {checked_spread} were checked"),
    );

    // A guess at the victim, then a good sign-in to the attacker's own account, 40 times.
    let alternating = cluster.client_from(source(8, 2))?;
    let (mut guesses_checked, mut own_ok) = (0, 0);
    let started = Instant::now();
    for _ in 0..40 {
        if login(
            cluster,
            &alternating,
            1,
            "victim2@abuse.test",
            "wrong guess, again",
        )
        .await
            == 401
        {
            guesses_checked += 1;
        }
        if login(cluster, &alternating, 1, "attacker@abuse.test", password).await == 200 {
            own_ok += 1;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The free guesses, the one that starts the waits, and one per wait (1, 2, 4, … s) that
    // ended while the loop ran: if the good sign-ins reset the count, all 40 would be checked.
    let elapsed_s = started.elapsed().as_secs_f64();
    let waits_over = (elapsed_s + 1.0).log2().floor() as usize;
    let bound = free + 1 + waits_over;
    checks.check(
        guesses_checked <= bound,
        format!(
            "{guesses_checked} of 40 guesses interleaved with good sign-ins were checked in \
             {elapsed_s:.1} s (bound {bound}: the good sign-ins must not reset the count)"
        ),
    );

    // A principal signing in per call instead of reusing its token: held to its rate. It
    // signs in until refused (however slow the machine), then a few more times.
    let looper = "looper@abuse.test";
    member(cluster, looper, password).await?;
    let burst = SIGN_IN_BURST_PER_PRINCIPAL.get() as usize;
    let looping = cluster.client_from(source(8, 4))?;
    let loop_started = Instant::now();
    let (mut loop_ok, mut loop_refused, mut loop_without_retry_after) = (0usize, 0usize, 0usize);
    let mut attempts = 0usize;
    while loop_refused < 10 && attempts < burst * 5 {
        attempts += 1;
        let resp = looping
            .post(cluster.url(1, "/auth/login"))
            .json(&json!({"email": looper, "password": password}))
            .send()
            .await?;
        match resp.status().as_u16() {
            200 => loop_ok += 1,
            429 => {
                loop_refused += 1;
                if resp.headers().get("retry-after").is_none() {
                    loop_without_retry_after += 1;
                }
            }
            other => bail!("looping sign-in answered {other}"),
        }
    }
    let loop_s = loop_started.elapsed().as_secs_f64();
    // The burst, and one more per interval the loop ran.
    let loop_bound =
        burst + (loop_s * 1000.0 / SIGN_IN_INTERVAL_PER_PRINCIPAL_MS as f64).ceil() as usize;
    checks.check(
        (burst..=loop_bound).contains(&loop_ok) && loop_refused == 10,
        format!(
            "{attempts} sign-ins of one principal in {loop_s:.1} s: {loop_ok} succeeded (bound \
             {burst}..={loop_bound}), {loop_refused} refused"
        ),
    );
    checks.check(
        loop_without_retry_after == 0,
        format!("{loop_without_retry_after} refused sign-ins had no Retry-After"),
    );

    Ok(json!({
        "looping_sign_ins": attempts,
        "looping_sign_ins_succeeded": loop_ok,
        "looping_sign_ins_refused": loop_refused,
        "looping_seconds": loop_s,
        "concurrent_guesses_one_account": 200,
        "checked_one_account": checked_same,
        "statuses_one_account": tally(&statuses),
        "concurrent_guesses_200_accounts": 200,
        "checked_200_accounts": checked_spread,
        "interleaved_guesses": 40,
        "interleaved_guesses_checked": guesses_checked,
        "interleaved_seconds": elapsed_s,
        "own_sign_ins_succeeded": own_ok,
        "owner_first_try_status": first_try,
        "owner_signed_in_after_ms": waited.elapsed().as_millis() as u64,
    }))
}

/// 3. Bursts of failed sign-ins from many addresses: bounded hashing work and memory.
async fn password_hashing(
    cluster: &Cluster,
    scale: Scale,
    checks: &mut Checks,
) -> anyhow::Result<Value> {
    let pid = cluster.nodes[0].pid().context("node 1 not running")?;
    // Resident memory of node 1, in MiB.
    let rss = || -> anyhow::Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kib| kib / 1024)
            .context("no VmRSS")
    };
    // Warm up: the workers allocate their memory once.
    let warm = cluster.client_from(source(9, 250))?;
    for i in 0..4 {
        let _ = login(
            cluster,
            &warm,
            1,
            &format!("warm{i}@abuse.test"),
            "nope nope nope",
        )
        .await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = rss()?;
    let bursts = if scale == Scale::Full { 5 } else { 2 };
    let mut statuses = Vec::new();
    let mut without_retry_after = 0usize;
    let mut peak = before;
    for burst in 0..bursts {
        // Every client ready before the first request, so the 200 arrive together.
        let clients = (0..200u8)
            .map(|i| Ok((i, cluster.client_from(source(10 + burst, i.max(1)))?)))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let mut tasks = tokio::task::JoinSet::new();
        for (i, client) in clients {
            let url = cluster.url(1, "/auth/login");
            tasks.spawn(async move {
                client
                    .post(url)
                    .json(&json!({"email": format!("ghost{i}@abuse.test"), "password": "nope nope nope"}))
                    .send()
                    .await
                    .map_or((0, None), |r| {
                        let retry_after = r
                            .headers()
                            .get("retry-after")
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_string);
                        (r.status().as_u16(), retry_after)
                    })
            });
        }
        while let Some(done) = tasks.join_next().await {
            let (status, retry_after) = done.unwrap_or((0, None));
            statuses.push(status);
            if status == 429 && retry_after.as_deref() != Some("1") {
                without_retry_after += 1;
            }
            peak = peak.max(rss()?);
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = rss()?;
    let counts = tally(&statuses);
    let refused = counts.get("429").copied().unwrap_or(0);
    checks.check(
        statuses.iter().all(|s| *s == 401 || *s == 429),
        format!("unexpected answers: {counts:?}"),
    );
    checks.check(refused > 0, "no sign-in was refused for a full queue");
    checks.check(
        without_retry_after == 0,
        format!(
            "{without_retry_after} of {refused} refusals for a full queue had no 'Retry-After: 1'"
        ),
    );
    checks.check(
        after.saturating_sub(before) <= 64,
        format!("memory grew from {before} MiB to {after} MiB (bound +64 MiB)"),
    );
    Ok(json!({
        "sign_ins": statuses.len(),
        "statuses": counts,
        "refused_without_retry_after": without_retry_after,
        "rss_before_mib": before,
        "rss_peak_mib": peak,
        "rss_after_mib": after,
    }))
}

/// Sends each of `bodies` to `/vectors/update` of `index`, one after another: the statuses.
async fn updates(
    cluster: &Cluster,
    index: &str,
    bodies: impl Iterator<Item = Value>,
) -> anyhow::Result<Vec<u16>> {
    let mut statuses = Vec::new();
    for body in bodies {
        let request = cluster
            .data(
                1,
                &cluster.api_key(),
                index,
                Method::POST,
                "/vectors/update",
            )
            .json(&body);
        statuses.push(call(request).await?.0);
    }
    Ok(statuses)
}

/// 4. Writes whose merged result would pass a limit.
async fn merged_limits(
    cluster: &Cluster,
    scale: Scale,
    checks: &mut Checks,
) -> anyhow::Result<Value> {
    let key = cluster.api_key();
    cluster.create_index(1, &key, "merge", 4, "cosine").await?;
    let blob = "m".repeat(39 * 1024);
    upsert(
        cluster,
        "merge",
        vec![json!({"id": "r", "values": [1.0, 0.0, 0.0, 0.0]})],
        1,
    )
    .await?;
    let update_statuses = updates(
        cluster,
        "merge",
        (0..5).map(|i| json!({"id": "r", "setMetadata": {format!("f{i}"): blob}})),
    )
    .await?;
    let (_, fetched) =
        call(cluster.data(1, &key, "merge", Method::GET, "/vectors/fetch?ids=r")).await?;
    let stored = fetched["vectors"]["r"]["metadata"].to_string().len();
    checks.check(
        update_statuses[0] == 200 && update_statuses[1..].iter().all(|s| *s == 400),
        format!("five 39 KB updates of one record answered {update_statuses:?}"),
    );
    checks.check(
        stored <= 40 * 1024,
        format!("the record holds {stored} bytes of metadata (limit 40,960)"),
    );

    let n = if scale == Scale::Full { 2_000 } else { 300 };
    let records = (0..n)
        .map(|i| json!({"id": format!("g{i}"), "values": [1.0, 0.5, 0.0, 0.0], "metadata": {"g": 1}}))
        .collect();
    upsert(cluster, "merge", records, 500).await?;
    let filter_statuses = updates(
        cluster,
        "merge",
        (0..3)
            .map(|i| json!({"filter": {"g": {"$eq": 1}}, "setMetadata": {format!("b{i}"): blob}})),
    )
    .await?;
    let (_, sample) =
        call(cluster.data(1, &key, "merge", Method::GET, "/vectors/fetch?ids=g7")).await?;
    let sample_bytes = sample["vectors"]["g7"]["metadata"].to_string().len();
    checks.check(
        filter_statuses[0] == 200 && filter_statuses[1..].iter().all(|s| *s == 400),
        format!("three 39 KB updates by filter answered {filter_statuses:?}"),
    );
    checks.check(
        sample_bytes <= 40 * 1024 && sample["vectors"]["g7"]["metadata"].get("b1").is_none(),
        format!("a record matched by the filter holds {sample_bytes} bytes of metadata"),
    );
    let (status, body) =
        call(cluster.data(1, &key, "merge", Method::POST, "/query").json(
            &json!({"vector": [1.0, 0.5, 0.0, 0.0], "topK": 10_000, "includeMetadata": true}),
        ))
        .await?;
    checks.check(
        status == 400,
        format!("topK 10,000 with metadata answered {status}: {body}"),
    );
    Ok(json!({
        "update_39kb_x5_statuses": update_statuses,
        "record_metadata_bytes_after": stored,
        "records_updated_by_filter": n,
        "update_by_filter_39kb_x3_statuses": filter_statuses,
        "matched_record_metadata_bytes_after": sample_bytes,
        "query_topk_10000_with_metadata_status": status,
    }))
}

/// Records of index `index` as node `via` counts them (`describe_index_stats`).
async fn record_total(cluster: &Cluster, via: u64, index: &str) -> anyhow::Result<u64> {
    let key = cluster.api_key();
    let (status, stats) = call(
        cluster
            .data(via, &key, index, Method::POST, "/describe_index_stats")
            .json(&json!({})),
    )
    .await?;
    anyhow::ensure!(
        status == 200,
        "describe_index_stats of {index}: {status} {stats}"
    );
    stats["totalVectorCount"]
        .as_u64()
        .context("totalVectorCount")
}

/// Upserts `ids` (4-dimensional records) into `index` through node `via`; the status and
/// body of the answer.
async fn upsert_ids(
    cluster: &Cluster,
    via: u64,
    index: &str,
    ids: impl Iterator<Item = String>,
) -> anyhow::Result<(u16, Value)> {
    let vectors: Vec<Value> = ids
        .map(|id| json!({"id": id, "values": [1.0, 0.25, 0.0, 0.5]}))
        .collect();
    call(
        cluster
            .data(
                via,
                &cluster.api_key(),
                index,
                Method::POST,
                "/vectors/upsert",
            )
            .json(&json!({ "vectors": vectors })),
    )
    .await
}

/// 4 (continued). The project's record total holds across its indexes, also when one of
/// them has no replica on the node that checks the upsert: index `totals-a` lives on nodes
/// 1–3, a fourth node joins and holds a replica of `totals-b`, and upserts into `totals-b`
/// go through that fourth node.
async fn project_totals(cluster: &mut Cluster, checks: &mut Checks) -> anyhow::Result<Value> {
    let limit = SCENARIO_MAX_RECORDS_PER_PROJECT;
    let key = cluster.api_key();
    cluster
        .create_index(1, &key, "totals-a", 4, "cosine")
        .await?;
    let fourth = cluster.add_node(false).await?;
    cluster
        .create_index(1, &key, "totals-b", 4, "cosine")
        .await?;
    let hosted_by_fourth = cluster.cluster_info(fourth).await?["shards"]
        .as_array()
        .map_or(0, Vec::len);
    checks.check(
        hosted_by_fourth == 1,
        format!("node {fourth} holds {hosted_by_fourth} shard replicas, not only totals-b's"),
    );
    let in_a = limit * 3 / 5;
    let in_b = limit - in_a;
    let ids = |prefix: &'static str, range: std::ops::Range<u64>| {
        range.map(move |i| format!("{prefix}{i}"))
    };
    let (fill_a, body) = upsert_ids(cluster, 1, "totals-a", ids("a", 0..in_a)).await?;
    anyhow::ensure!(fill_a == 200, "filling totals-a: {fill_a} {body}");
    let (fill_b, body) = upsert_ids(cluster, fourth, "totals-b", ids("b", 0..in_b)).await?;
    anyhow::ensure!(fill_b == 200, "filling totals-b: {fill_b} {body}");
    // Counts of the other indexes may be that old (the filling upserts counted each other
    // as they were before).
    tokio::time::sleep(Duration::from_millis(PROJECT_COUNT_MAX_AGE_MS + 500)).await;

    let (over_b, over_b_body) =
        upsert_ids(cluster, fourth, "totals-b", ids("b", in_b..in_b + 1)).await?;
    let (over_a, over_a_body) =
        upsert_ids(cluster, 1, "totals-a", ids("a", in_a..in_a + 5)).await?;
    let names_limit = |body: &Value| {
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains(&format!("the limit is {limit} per project")))
    };
    checks.check(
        over_b == 400 && names_limit(&over_b_body),
        format!("one record past the project total into totals-b through node {fourth} answered {over_b}: {over_b_body}"),
    );
    checks.check(
        over_a == 400 && names_limit(&over_a_body),
        format!(
            "five records past the project total into totals-a answered {over_a}: {over_a_body}"
        ),
    );
    // Forwarded: the fourth node holds no replica of totals-a.
    let (over_forwarded, over_forwarded_body) =
        upsert_ids(cluster, fourth, "totals-a", ids("a", in_a..in_a + 1)).await?;
    checks.check(
        over_forwarded == 400 && names_limit(&over_forwarded_body),
        format!("one record past the total into totals-a forwarded by node {fourth} answered {over_forwarded}: {over_forwarded_body}"),
    );
    let (rewrite, body) = upsert_ids(cluster, 1, "totals-a", ids("a", 0..10)).await?;
    checks.check(
        rewrite == 200,
        format!("rewriting 10 existing records at the total answered {rewrite}: {body}"),
    );
    let counts_at_limit = (
        record_total(cluster, 1, "totals-a").await?,
        record_total(cluster, fourth, "totals-b").await?,
    );
    checks.check(
        counts_at_limit == (in_a, in_b),
        format!("after the refusals the indexes hold {counts_at_limit:?}, not ({in_a}, {in_b})"),
    );

    // Room made in one index is usable in the other once the count there is renewed.
    let freed = 50;
    let (deleted, body) = call(
        cluster
            .data(1, &key, "totals-a", Method::POST, "/vectors/delete")
            .json(&json!({"ids": ids("a", 0..freed).collect::<Vec<_>>()})),
    )
    .await?;
    anyhow::ensure!(deleted == 200, "delete: {deleted} {body}");
    let waited = Instant::now();
    let reuse = loop {
        let answer = upsert_ids(cluster, fourth, "totals-b", ids("c", 0..freed)).await?;
        if answer.0 == 200 || waited.elapsed() > Duration::from_secs(10) {
            break answer;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    checks.check(
        reuse.0 == 200,
        format!(
            "{freed} records into totals-b after deleting {freed} from totals-a answered {}: {}",
            reuse.0, reuse.1
        ),
    );
    let (after_reuse, after_reuse_body) =
        upsert_ids(cluster, fourth, "totals-b", ids("d", 0..1)).await?;
    checks.check(
        after_reuse == 400 && names_limit(&after_reuse_body),
        format!("one more record at the total again answered {after_reuse}: {after_reuse_body}"),
    );
    let final_counts = (
        record_total(cluster, 1, "totals-a").await?,
        record_total(cluster, fourth, "totals-b").await?,
    );
    checks.check(
        final_counts.0 + final_counts.1 == limit,
        format!("the project ends with {final_counts:?} records, not {limit} in all"),
    );
    Ok(json!({
        "max_records_per_project": limit,
        "shard_replicas_on_the_node_checking_totals_b": hosted_by_fourth,
        "filled": {"totals-a": in_a, "totals-b": in_b},
        "one_past_total_via_node_without_a_replica_of_the_other_index_status": over_b,
        "five_past_total_status": over_a,
        "one_past_total_forwarded_status": over_forwarded,
        "rewrite_at_total_status": rewrite,
        "counts_after_refusals": [counts_at_limit.0, counts_at_limit.1],
        "reuse_after_delete_status": reuse.0,
        "reuse_after_delete_waited_ms": waited.elapsed().as_millis() as u64,
        "one_past_total_again_status": after_reuse,
        "final_counts": [final_counts.0, final_counts.1],
    }))
}

/// 6. Responses that would be hundreds of megabytes.
async fn bounded_responses(cluster: &Cluster, checks: &mut Checks) -> anyhow::Result<Value> {
    let key = cluster.api_key();
    let dimension = 2_000usize;
    cluster
        .create_index(1, &key, "big", dimension as u32, "cosine")
        .await?;
    let blob = "b".repeat(39 * 1024);
    let records: Vec<Value> = (0..200)
        .map(|i| {
            let mut values = vec![0.5f32; dimension];
            values[i % dimension] = 1.0;
            json!({"id": format!("v{i:03}"), "values": values, "metadata": {"k": 1, "blob": blob}})
        })
        .collect();
    upsert(cluster, "big", records, 25).await?;
    let query = |top_k: u32, metadata: bool| {
        cluster
            .data(1, &key, "big", Method::POST, "/query")
            .json(&json!({
                "vector": vec![0.5f32; dimension], "topK": top_k, "includeMetadata": metadata,
            }))
    };
    let (with_data, body_a) = call(query(10_000, true)).await?;
    let (ids_only, body_b) = call(query(10_000, false)).await?;
    let (too_big, body_c) = call(query(1_000, true)).await?;
    let ids: Vec<String> = (0..200).map(|i| format!("ids=v{i:03}")).collect();
    let (fetch_all, body_d) = call(cluster.data(
        1,
        &key,
        "big",
        Method::GET,
        &format!("/vectors/fetch?{}", ids.join("&")),
    ))
    .await?;
    checks.check(
        with_data == 400,
        format!("topK 10,000 with metadata: {with_data} {body_a}"),
    );
    checks.check(
        ids_only == 200 && body_b["matches"].as_array().map_or(0, Vec::len) == 200,
        format!("topK 10,000 without data: {ids_only}"),
    );
    checks.check(
        too_big == 400 && body_c.to_string().contains("4 MiB"),
        format!("a 7.6 MB query result: {too_big} {body_c}"),
    );
    checks.check(
        fetch_all == 400 && body_d.to_string().contains("4 MiB"),
        format!("a 7.6 MB fetch: {fetch_all} {body_d}"),
    );
    // Fetch by metadata pages end before the limit; every record comes once.
    let mut seen = BTreeSet::new();
    let mut pages = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let mut body = json!({"filter": {"k": {"$eq": 1}}, "limit": 100});
        if let Some(t) = &token {
            body["paginationToken"] = json!(t);
        }
        let resp = cluster
            .data(1, &key, "big", Method::POST, "/vectors/fetch_by_metadata")
            .json(&body)
            .send()
            .await?;
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await?;
        anyhow::ensure!(status == 200, "fetch_by_metadata: {status}");
        let page: Value = serde_json::from_slice(&bytes)?;
        let vectors = page["vectors"].as_object().cloned().unwrap_or_default();
        pages.push(json!({"records": vectors.len(), "json_bytes": bytes.len()}));
        for id in vectors.keys() {
            checks.check(seen.insert(id.clone()), format!("{id} came twice"));
        }
        token = page["pagination"]["next"].as_str().map(String::from);
        if token.is_none() || pages.len() > 10 {
            break;
        }
    }
    checks.check(
        seen.len() == 200,
        format!("fetch by metadata returned {} of 200", seen.len()),
    );
    checks.check(
        pages.len() >= 3,
        format!("pages of 100 records of 47 KB were not cut under 4 MiB: {pages:?}"),
    );
    Ok(json!({
        "records": 200,
        "record_bytes_approx": dimension * 4 + 39 * 1024,
        "query_topk_10000_with_metadata": with_data,
        "query_topk_10000_ids_only": ids_only,
        "query_topk_1000_with_metadata": too_big,
        "fetch_200_ids": fetch_all,
        "fetch_by_metadata_pages": pages,
    }))
}

/// Reads a whole chain through node `via` with its pruned runs and verifies it here.
async fn verified_chain(
    cluster: &Cluster,
    via: u64,
    org: &str,
) -> anyhow::Result<(Vec<AuditEvent>, ChainHead, u64)> {
    let mut events: Vec<AuditEvent> = Vec::new();
    let mut runs: Vec<PrunedRun> = Vec::new();
    let mut head: Option<ChainHead> = None;
    let mut after = String::new();
    loop {
        let page = cluster
            .audit_page(
                via,
                Some(org),
                &format!("limit=1000&pagination_token={after}"),
            )
            .await?;
        if head.is_none() {
            head = Some(serde_json::from_value(page["chain"].clone())?);
        }
        events.extend(serde_json::from_value::<Vec<AuditEvent>>(
            page["data"].clone(),
        )?);
        runs.extend(
            serde_json::from_value::<Vec<PrunedRun>>(page["pruned"].clone()).unwrap_or_default(),
        );
        match page["pagination"]["next"].as_str() {
            Some(next) => after = next.to_string(),
            None => break,
        }
    }
    let head = head.context("no page")?;
    let checked = verify_chain(&head, &events, &runs)?;
    Ok((events, head, checked))
}

/// 5. A read-only key looping on a refused admin call.
async fn audit_flood(
    cluster: &Cluster,
    scale: Scale,
    checks: &mut Checks,
) -> anyhow::Result<Value> {
    let org = cluster.organization_id();
    let viewer = cluster
        .key_in(&cluster.project_id(), &["DataPlaneViewer"])
        .await?;
    // Some changes first, so there is history to keep.
    for _ in 0..5 {
        cluster
            .key_in(&cluster.project_id(), &["DataPlaneViewer"])
            .await?;
    }
    let (before, _, _) = verified_chain(cluster, 1, &org).await?;
    let duration = Duration::from_secs(if scale == Scale::Full { 90 } else { 10 });
    let sent = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    // Calls that got no answer (the connection failed under them): the node may or may not
    // have refused (and counted) them.
    let unanswered = Arc::new(AtomicU64::new(0));
    let first_error = Arc::new(std::sync::Mutex::new(None::<String>));
    let mut tasks = tokio::task::JoinSet::new();
    let end = Instant::now() + duration;
    let client = cluster.client_from(source(11, 1))?;
    for _ in 0..8 {
        let (client, viewer) = (client.clone(), viewer.clone());
        let (sent, refused) = (sent.clone(), refused.clone());
        let (unanswered, first_error) = (unanswered.clone(), first_error.clone());
        let url = cluster.url(1, "/indexes");
        tasks.spawn(async move {
            while Instant::now() < end {
                let answer = client
                    .post(&url)
                    .header("Api-Key", &viewer)
                    .json(&json!({"name": "nope", "dimension": 4, "metric": "cosine",
                        "spec": {"serverless": {"cloud": "aws", "region": "us-east-1"}}}))
                    .send()
                    .await;
                sent.fetch_add(1, Ordering::Relaxed);
                match answer {
                    Ok(r) if r.status() == 403 => {
                        refused.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(_) => {}
                    Err(e) => {
                        unanswered.fetch_add(1, Ordering::Relaxed);
                        let mut first = first_error.lock().unwrap_or_else(|p| p.into_inner());
                        first.get_or_insert_with(|| format!("{e:?}"));
                    }
                }
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    let sent = sent.load(Ordering::Relaxed);
    let refused = refused.load(Ordering::Relaxed);
    let unanswered = unanswered.load(Ordering::Relaxed);
    let first_error = first_error
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    // The summaries come at their interval; then everything is in.
    tokio::time::sleep(Duration::from_secs(
        conifer_node::control::audit_sink::REFUSAL_SUMMARY_INTERVAL_S + 3,
    ))
    .await;
    let (after, head, checked) = verified_chain(cluster, 2, &org).await?;
    let by_hash: BTreeSet<&str> = after.iter().map(|e| e.hash.as_str()).collect();
    let lost = before
        .iter()
        .filter(|e| !by_hash.contains(e.hash.as_str()))
        .count();
    let flood: Vec<&AuditEvent> = after
        .iter()
        .filter(|e| e.sequence > before.last().map_or(0, |l| l.sequence))
        .filter(|e| e.event.outcome.error_code.as_deref() == Some("PERMISSION_DENIED"))
        .collect();
    let summarized: u64 = flood
        .iter()
        .filter_map(|e| serde_json::to_value(&e.event.parameters).ok())
        .filter_map(|p| p["summarized_refusals"].as_u64())
        .sum();
    let summaries = flood
        .iter()
        .filter(|e| {
            serde_json::to_value(&e.event.parameters)
                .is_ok_and(|p| p.get("summarized_refusals").is_some())
        })
        .count() as u64;
    let recorded = flood.len() as u64 - summaries;
    checks.check(
        lost == 0,
        format!("{lost} events from before the flood are gone"),
    );
    checks.check(
        refused + unanswered == sent && unanswered * 1000 <= sent,
        format!(
            "{refused} of {sent} attempts were refused and {unanswered} unanswered (bound \
             0.1 %; first: {first_error:?})"
        ),
    );
    // Every refusal the client saw is in the log; an unanswered call may be too.
    checks.check(
        (refused..=refused + unanswered).contains(&(recorded + summarized)),
        format!(
            "{refused} refusals seen and {unanswered} unanswered, but {recorded} recorded one \
             by one and {summarized} in {summaries} summaries"
        ),
    );
    checks.check(
        recorded <= 10 + 6 * (duration.as_secs() / 60 + 1) + 10,
        format!("{recorded} refusals were recorded one by one"),
    );
    Ok(json!({
        "flood_seconds": duration.as_secs(),
        "refused_calls": refused,
        "unanswered_calls": unanswered,
        "first_unanswered_error": first_error,
        "refusals_per_second": refused as f64 / duration.as_secs_f64(),
        "events_before": before.len(),
        "events_before_lost": lost,
        "refusal_events_recorded": recorded,
        "summary_events": summaries,
        "refusals_summarized": summarized,
        "chain_events_after": after.len(),
        "chain_verified_events": checked,
        "chain_head_sequence": head.head_sequence,
    }))
}

/// 7. Garbage credentials at one node while another client works through it.
async fn garbage_keys(
    cluster: &Cluster,
    scale: Scale,
    checks: &mut Checks,
) -> anyhow::Result<Value> {
    let key = cluster.api_key();
    cluster
        .create_index(1, &key, "garbage", 4, "cosine")
        .await?;
    let info = cluster.cluster_info(1).await?;
    let leader = info["leader_id"].as_u64().context("no leader")?;
    let target = (1..=3).find(|id| *id != leader).unwrap_or(2);
    let term_before = info["term"].as_u64().unwrap_or(0);
    let rounds_before = cluster.cluster_info(target).await?["read_index_rounds"]
        .as_u64()
        .context("the node reports no read_index_rounds")?;
    let (_, _, mut baseline) = victim(
        cluster,
        target,
        source(12, 2),
        "garbage",
        Duration::from_secs(3),
    )
    .await?;
    let duration = Duration::from_secs(if scale == Scale::Full { 30 } else { 5 });
    let ca_pem = std::fs::read(cluster.ca_dir.join(tls::CA_CERT))?;
    let flood_client = reqwest::Client::builder()
        // The cluster CA only: no system store to load for each of many clients.
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&ca_pem)?)
        .local_address(source(12, 1))
        .http2_prior_knowledge()
        .timeout(Duration::from_secs(30))
        .build()?;
    let sent = Arc::new(AtomicU64::new(0));
    let unauthenticated = Arc::new(AtomicU64::new(0));
    let accepted = Arc::new(AtomicU64::new(0));
    let statuses = Arc::new(std::sync::Mutex::new(BTreeMap::<u16, u64>::new()));
    let end = Instant::now() + duration;
    let mut tasks = tokio::task::JoinSet::new();
    let workers = if scale == Scale::Full { 64 } else { 16 };
    for worker in 0..workers {
        let client = flood_client.clone();
        let (sent, unauthenticated) = (sent.clone(), unauthenticated.clone());
        let accepted = accepted.clone();
        let statuses = statuses.clone();
        let url = cluster.url(target, "/describe_index_stats");
        tasks.spawn(async move {
            let mut n = 0u64;
            while Instant::now() < end {
                n += 1;
                let garbage = format!("pcsk_{}_{worker}x{n}", uuid::Uuid::new_v4().simple());
                let status = client
                    .post(&url)
                    .header("Api-Key", garbage)
                    .header("X-Conifer-Index", "garbage")
                    .json(&json!({}))
                    .send()
                    .await
                    .map_or(0, |r| r.status().as_u16());
                sent.fetch_add(1, Ordering::Relaxed);
                if status == 401 {
                    unauthenticated.fetch_add(1, Ordering::Relaxed);
                }
                if (200..300).contains(&status) {
                    accepted.fetch_add(1, Ordering::Relaxed);
                }
                *statuses
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .entry(status)
                    .or_insert(0) += 1;
            }
        });
    }
    // The leader's last quorum acknowledgement, sampled through the flood.
    let sampler = {
        let (http, url, token) = (
            cluster.http.clone(),
            cluster.url(leader, "/admin/cluster"),
            cluster.admin_token(),
        );
        tokio::spawn(async move {
            let mut worst = 0u64;
            while Instant::now() < end {
                if let Ok(resp) = http.get(&url).bearer_auth(&token).send().await {
                    if let Ok(info) = resp.json::<Value>().await {
                        worst = worst.max(info["millis_since_quorum_ack"].as_u64().unwrap_or(0));
                    }
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            worst
        })
    };
    let (victim_sent, victim_failed, mut during) =
        victim(cluster, target, source(12, 2), "garbage", duration).await?;
    while tasks.join_next().await.is_some() {}
    let quorum_ack_worst_ms = sampler.await.unwrap_or(0);
    let sent = sent.load(Ordering::Relaxed);
    let unauthenticated = unauthenticated.load(Ordering::Relaxed);
    let accepted = accepted.load(Ordering::Relaxed);
    let after = cluster.cluster_info(target).await?;
    let rounds = after["read_index_rounds"]
        .as_u64()
        .context("the node reports no read_index_rounds")?
        - rounds_before;
    let info = cluster.cluster_info(1).await?;
    let term_after = info["term"].as_u64().unwrap_or(0);
    let p99_before = quantile_ms(&mut baseline, 0.99);
    let p99_during = quantile_ms(&mut during, 0.99);
    // Lease renewals (every LEASE_RENEW_MS) and the catch-ups the rate allows, with room.
    let rounds_bound = duration.as_secs() * (5 + 10) + 20;
    // Every garbage key refused: 401, or (the flood client's own connection trouble) no
    // answer; none accepted.
    checks.check(
        accepted == 0,
        format!("{accepted} garbage keys were accepted"),
    );
    checks.check(
        unauthenticated * 100 >= sent * 95,
        format!("only {unauthenticated} of {sent} garbage keys got their 401"),
    );
    checks.check(
        rounds <= rounds_bound,
        format!("{rounds} read-index rounds for {sent} garbage keys (bound {rounds_bound})"),
    );
    checks.check(
        term_after == term_before && info["leader_id"].as_u64() == Some(leader),
        format!("the leader changed during the flood (term {term_before} -> {term_after})"),
    );
    checks.check(
        victim_failed == 0,
        format!("{victim_failed} of {victim_sent} requests failed"),
    );
    checks.check(
        p99_during <= 2_000,
        format!("the other client's p99 was {p99_during} ms during the flood (bound 2,000 ms)"),
    );
    Ok(json!({
        "flood_seconds": duration.as_secs(),
        "garbage_keys_sent": sent,
        "garbage_keys_answered_401": unauthenticated,
        "garbage_key_statuses": statuses
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(k, v)| (k.to_string(), *v))
            .collect::<BTreeMap<String, u64>>(),
        "garbage_keys_per_second": sent as f64 / duration.as_secs_f64(),
        "read_index_rounds": rounds,
        "read_index_rounds_bound": rounds_bound,
        "catch_ups_refused": after["unknown_credential_catch_ups_refused"],
        "leader_millis_since_quorum_ack_worst": quorum_ack_worst_ms,
        "flood_workers": workers,
        "leader_term_before": term_before,
        "leader_term_after": term_after,
        "other_client_p99_ms_before": p99_before,
        "other_client_p99_ms_during": p99_during,
        "other_client_requests": victim_sent,
        "other_client_failed": victim_failed,
    }))
}

/// 8. A unary gRPC call carrying two messages.
async fn unary_frames(cluster: &Cluster, checks: &mut Checks) -> anyhow::Result<Value> {
    use prost::Message;
    let key = cluster.api_key();
    cluster.create_index(1, &key, "frames", 4, "cosine").await?;
    let one = conifer_proto::pinecone::UpsertRequest {
        vectors: vec![conifer_proto::pinecone::Vector {
            id: "first".into(),
            values: vec![1.0, 0.0, 0.0, 0.0],
            ..Default::default()
        }],
        namespace: String::new(),
    }
    .encode_to_vec();
    let frame = |m: &[u8]| {
        let mut f = vec![0u8];
        f.extend((m.len() as u32).to_be_bytes());
        f.extend_from_slice(m);
        f
    };
    let mut body = frame(&one);
    body.extend(frame(&one));
    let answer = cluster
        .grpc_raw(1, &key, "frames", "/VectorService/Upsert", body)
        .await?;
    let (_, stats) = call(
        cluster
            .data(1, &key, "frames", Method::POST, "/describe_index_stats")
            .json(&json!({})),
    )
    .await?;
    let total = stats["totalVectorCount"].as_u64().unwrap_or(0);
    checks.check(
        answer.code == Some(tonic::Code::InvalidArgument),
        format!("two messages in a unary call: {answer:?}"),
    );
    checks.check(total == 0, format!("{total} records were written"));
    Ok(json!({
        "grpc_status": format!("{:?}", answer.code),
        "message": answer.message,
        "records_written": total,
    }))
}
