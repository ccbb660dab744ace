//! The chaos harness: real `conifer` nodes on their own loopback addresses inside a private
//! network namespace, clients recording every operation, a nemesis injecting the faults of a
//! seeded schedule, and checkers judging the history once the faults are healed.
//!
//! One run holds `schedules` schedules. Each gets its own index (so its own shard group),
//! its own vector ids and its own API keys; a fresh cluster is started every
//! [`SCHEDULES_PER_CLUSTER`] schedules. Per schedule: create the index → start the clients →
//! run the nemesis → heal everything → let the clients run on for [`SETTLE_MS`] → stop them
//! → read every id linearizably → check. The run writes `history.jsonl` and `summary.json`.

pub mod check;
pub mod history;
pub mod nemesis;
pub mod netns;
pub mod workload;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use serde::Serialize;

use crate::{Cluster, ClusterOptions};
use check::ScheduleReport;
use history::{pair, Recorder};
use nemesis::{Nemesis, Schedule, Shape};
use workload::{DataClient, DataOp, Endpoints, KeyClient};

/// Schedules run on one cluster before a fresh one is started.
pub const SCHEDULES_PER_CLUSTER: u32 = 10;
/// How long clients keep running after the faults are healed.
pub const SETTLE_MS: u64 = 2_000;
/// Vector ids per schedule (few, so that operations on one id overlap).
pub const KEYS_PER_SCHEDULE: usize = 6;
/// Clients cycling API keys and projects, on nodes 1, 2, 3 (each creates and deletes
/// through its own node, so one on the majority side of any cut keeps revoking keys that
/// the cut-off side has not heard of).
pub const KEY_CLIENTS: u64 = 3;
/// Data clients per node.
pub const DATA_CLIENTS_PER_NODE: u64 = 1;
/// The revocation bound the harness checks: the control-plane lease of every node.
pub const REVOCATION_BOUND_MS: f64 = conifer_node::control::LEASE_MS as f64;

/// What to run.
#[derive(Clone, Debug)]
pub struct RunConfig {
    /// Nodes per cluster (3–5).
    pub nodes: usize,
    /// Number of schedules.
    pub schedules: u32,
    /// Seed of the first schedule; schedule `i` uses `seed + i`.
    pub seed: u64,
    /// Length of each schedule's fault phase, in ms.
    pub duration_ms: u64,
    /// Failpoints every node starts with (the `FAILPOINTS` syntax), e.g. an unsafe mode.
    pub failpoints: Option<String>,
    /// Kinds of fault to inject (empty: all of [`nemesis::FAULT_KINDS`]).
    pub faults: Vec<String>,
    /// Shortest and longest hold of a fault (ms).
    pub hold_ms: (u64, u64),
    /// Where the report goes.
    pub out_dir: PathBuf,
}

/// The summary of a run (`summary.json`).
#[derive(Clone, Debug, Serialize)]
pub struct RunSummary {
    /// Nodes per cluster.
    pub nodes: usize,
    /// First seed.
    pub seed: u64,
    /// Failpoints the nodes ran with.
    pub failpoints: Option<String>,
    /// Kinds of fault the schedules drew from (empty: all).
    pub fault_kinds: Vec<String>,
    /// Schedules run.
    pub schedules: usize,
    /// Operations completed ok / failed / unknown.
    pub ops_ok: usize,
    /// Operations that failed.
    pub ops_fail: usize,
    /// Operations of unknown outcome.
    pub ops_info: usize,
    /// Faults injected, by kind.
    pub faults: BTreeMap<String, usize>,
    /// Acknowledged writes checked for durability.
    pub acknowledged_writes: usize,
    /// Acknowledged writes lost.
    pub lost_acknowledged_writes: usize,
    /// Keys with a linearizability violation.
    pub linearizability_violations: usize,
    /// Keys whose linearizability search gave up.
    pub linearizability_unchecked: usize,
    /// Keys checked for linearizability.
    pub linearizability_keys: usize,
    /// Schedules whose shard replicas did not converge.
    pub convergence_failures: usize,
    /// Revocation bound checked (ms).
    pub revocation_bound_ms: f64,
    /// Revoked credentials.
    pub revoked_credentials: usize,
    /// Of those, by kind.
    pub revoked_by_kind: BTreeMap<String, usize>,
    /// Uses of revoked credentials after their revocation was acknowledged.
    pub uses_after_revocation: usize,
    /// Longest accepted use after an acknowledged revocation (ms).
    pub max_accepted_delay_ms: f64,
    /// Revoked credentials accepted after the bound.
    pub revoked_credential_accepts_past_bound: usize,
    /// Acknowledged control-plane actions matched against audit events.
    pub audited_actions: usize,
    /// Actions without their event, duplicated or unexplained events, broken chains.
    pub audit_mismatches: usize,
    /// Root key rotations finished on one cluster (the most of any of the run's clusters).
    pub root_key_rotations: u64,
    /// Schedules after which the root keys did not settle.
    pub root_key_failures: usize,
    /// Writes sent to the majority side while a leader was cut off.
    pub failover_writes: usize,
    /// Of those, left unanswered at the client's timeout.
    pub failover_unanswered: usize,
    /// Longest time one of them took to be answered (ms).
    pub failover_max_answer_ms: f64,
    /// The 99th percentile of those times within each schedule, at its highest (ms).
    pub failover_p99_answer_ms: f64,
    /// All violations.
    pub violations: usize,
    /// Per-schedule reports.
    pub reports: Vec<ScheduleReport>,
}

impl RunSummary {
    fn from_reports(config: &RunConfig, reports: Vec<ScheduleReport>) -> Self {
        let mut faults = BTreeMap::new();
        for r in &reports {
            for f in &r.faults {
                *faults.entry(f.clone()).or_insert(0) += 1;
            }
        }
        let sum = |f: &dyn Fn(&ScheduleReport) -> usize| reports.iter().map(f).sum::<usize>();
        Self {
            nodes: config.nodes,
            seed: config.seed,
            failpoints: config.failpoints.clone(),
            fault_kinds: config.faults.clone(),
            schedules: reports.len(),
            ops_ok: sum(&|r| r.ops_ok),
            ops_fail: sum(&|r| r.ops_fail),
            ops_info: sum(&|r| r.ops_info),
            faults,
            acknowledged_writes: sum(&|r| r.durability.acknowledged_writes),
            lost_acknowledged_writes: sum(&|r| r.durability.lost.len()),
            linearizability_violations: sum(&|r| r.linearizability_violations()),
            linearizability_unchecked: sum(&|r| r.linearizability_unchecked()),
            linearizability_keys: sum(&|r| r.linearizability.keys),
            convergence_failures: sum(&|r| usize::from(!r.convergence.converged)),
            revocation_bound_ms: REVOCATION_BOUND_MS,
            revoked_credentials: sum(&|r| r.revocation.revoked_credentials),
            revoked_by_kind: reports.iter().fold(BTreeMap::new(), |mut all, r| {
                for (kind, n) in &r.revocation.revoked_by_kind {
                    *all.entry(kind.clone()).or_insert(0) += n;
                }
                all
            }),
            uses_after_revocation: sum(&|r| r.revocation.uses_after_revocation),
            max_accepted_delay_ms: reports
                .iter()
                .map(|r| r.revocation.max_accepted_delay_ms)
                .fold(0.0, f64::max),
            revoked_credential_accepts_past_bound: sum(&|r| {
                r.revocation.accepted_after_bound.len()
            }),
            audited_actions: sum(&|r| r.audit.actions_checked),
            audit_mismatches: sum(&|r| r.audit.violations()),
            root_key_rotations: reports
                .iter()
                .map(|r| r.root_keys.rotations)
                .max()
                .unwrap_or_default(),
            root_key_failures: sum(&|r| usize::from(!r.root_keys.settled)),
            failover_writes: sum(&|r| r.failover.writes),
            failover_unanswered: sum(&|r| r.failover.unanswered.len()),
            failover_max_answer_ms: reports
                .iter()
                .map(|r| r.failover.max_answer_ms)
                .fold(0.0, f64::max),
            failover_p99_answer_ms: reports
                .iter()
                .map(|r| r.failover.p99_answer_ms)
                .fold(0.0, f64::max),
            violations: sum(&|r| r.violations()),
            reports,
        }
    }
}

/// Runs every schedule of `config` and writes the report into its `out_dir`.
pub async fn run(config: &RunConfig) -> anyhow::Result<RunSummary> {
    netns::setup()?;
    std::fs::create_dir_all(&config.out_dir)?;
    let history = config.out_dir.join("history.jsonl");
    let summary_path = config.out_dir.join("summary.json");
    if history.exists() {
        std::fs::remove_file(&history)?;
    }
    let recorder = Recorder::new();
    let mut reports = Vec::new();
    let mut cluster: Option<(Cluster, String, String)> = None;
    let mut outcome = Ok(());
    for n in 0..config.schedules {
        if n % SCHEDULES_PER_CLUSTER == 0 {
            drop(cluster.take());
            cluster = Some(start_cluster(config).await?);
        }
        let (c, project_id, api_key) = cluster.as_mut().expect("a cluster was started");
        recorder.set_schedule(n);
        let seed = config.seed + u64::from(n);
        match run_schedule(config, c, project_id, api_key, &recorder, n, seed).await {
            Ok(report) => {
                println!(
                    "schedule {n} seed {seed}: {} ops ok, {} unknown, faults {:?}: {} violation(s)",
                    report.ops_ok,
                    report.ops_info,
                    report.faults,
                    report.violations()
                );
                reports.push(report);
            }
            Err(e) => {
                outcome = Err(e.context(format!("schedule {n} (seed {seed})")));
            }
        }
        // The report so far is on disk after every schedule, so a long run that is stopped
        // still leaves one.
        recorder.flush_jsonl(n, &history)?;
        let summary = RunSummary::from_reports(config, reports.clone());
        std::fs::write(&summary_path, serde_json::to_string_pretty(&summary)?)?;
        if outcome.is_err() {
            break;
        }
    }
    outcome.map(|()| RunSummary::from_reports(config, reports))
}

/// Starts a cluster on distinct addresses, with a project and a data-plane key for the run.
async fn start_cluster(config: &RunConfig) -> anyhow::Result<(Cluster, String, String)> {
    let env = config
        .failpoints
        .iter()
        .map(|f| ("FAILPOINTS".to_string(), f.clone()))
        .collect();
    let cluster = Cluster::start_with(ClusterOptions {
        nodes: config.nodes,
        distinct_hosts: true,
        env,
        ..ClusterOptions::default()
    })
    .await
    .context("starting the cluster")?;
    let (project, key) = cluster
        .project_with_key("chaos", &["ProjectEditor"])
        .await
        .context("creating the chaos project")?;
    Ok((cluster, project, key))
}

async fn run_schedule(
    config: &RunConfig,
    cluster: &mut Cluster,
    project_id: &str,
    api_key: &str,
    recorder: &Recorder,
    n: u32,
    seed: u64,
) -> anyhow::Result<ScheduleReport> {
    let nodes = config.nodes as u64;
    let shape = Shape {
        faults: config.faults.clone(),
        hold_ms: config.hold_ms,
        ..Shape::new(nodes, config.duration_ms)
    };
    let schedule = Schedule::generate(seed, &shape);
    let index = format!("chaos-{n}");
    let before: BTreeSet<u64> = hosted_groups(cluster)
        .await
        .into_iter()
        .flat_map(|(_, groups)| groups)
        .collect();
    cluster
        .create_index(1, api_key, &index, workload::DIMENSION as u32, "cosine")
        .await?;
    let (group, replicas) = new_shard(cluster, &before).await?;
    let endpoints = Endpoints {
        http: reqwest::Client::builder()
            // The cluster CA only: no system store to load for each of many clients.
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(&std::fs::read(
                cluster.ca_dir.join(conifer_node::tls::CA_CERT),
            )?)?)
            .timeout(Duration::from_millis(workload::CLIENT_TIMEOUT_MS))
            .build()?,
        nodes: cluster
            .nodes
            .iter()
            .map(|n| format!("https://{}", n.api_addr))
            .collect(),
        admin_token: cluster.admin_token(),
        api_key: api_key.to_string(),
        project_id: project_id.to_string(),
        organization_id: cluster.bootstrap["organization_id"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        index: index.clone(),
    };
    let keys: Vec<String> = (0..KEYS_PER_SCHEDULE)
        .map(|k| format!("s{n}-k{k}"))
        .collect();
    let values = Arc::new(AtomicI64::new(i64::from(n) * 1_000_000));
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for c in 0..nodes * DATA_CLIENTS_PER_NODE {
        let client = DataClient {
            process: format!("c{c}"),
            node: c % nodes + 1,
            keys: keys.clone(),
            values: values.clone(),
            endpoints: endpoints.clone(),
            recorder: recorder.clone(),
        };
        clients.push(tokio::spawn(client.run(seed * 100 + c, stop.clone())));
    }
    for k in 0..KEY_CLIENTS.min(nodes) {
        let key_client = KeyClient {
            process: format!("k{k}"),
            node: k % nodes + 1,
            nodes,
            endpoints: endpoints.clone(),
            recorder: recorder.clone(),
        };
        clients.push(tokio::spawn(key_client.run(seed * 100 + k, stop.clone())));
    }

    let mut nemesis = Nemesis::new(
        cluster,
        recorder.clone(),
        group,
        (index.clone(), api_key.to_string()),
    );
    let faults = nemesis.run(&schedule).await;
    let healed = nemesis.heal_all().await;
    faults.context("injecting faults")?;
    healed.context("healing")?;
    tokio::time::sleep(Duration::from_millis(SETTLE_MS)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for client in clients {
        client.await.context("a client task panicked")?;
    }

    // Final reads: linearizable fetches of every id through node 1, retried until answered.
    let reader = DataClient {
        process: "final".into(),
        node: 1,
        keys: keys.clone(),
        values,
        endpoints: endpoints.clone(),
        recorder: recorder.clone(),
    };
    for key in &keys {
        for _ in 0..20 {
            reader.run_op(DataOp::Read, key).await;
            let events = recorder.schedule_events(n);
            if events
                .last()
                .is_some_and(|e| e.kind == history::EventType::Ok)
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    let events = recorder.schedule_events(n);
    let ops = pair(&events);
    let final_values: BTreeMap<String, Option<i64>> = ops
        .iter()
        .filter(|o| o.process == "final" && o.outcome == history::EventType::Ok)
        .filter_map(|o| Some((o.key.clone()?, o.output["value"].as_i64())))
        .collect();
    let convergence = check::convergence::check(cluster, group, &replicas).await;
    let organization_id = cluster.bootstrap["organization_id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let all_nodes: Vec<u64> = cluster.nodes.iter().map(|n| n.id).collect();
    let audit = check::audit::check(cluster, &all_nodes, &organization_id, &events)
        .await
        .context("reading the audit log")?;
    let root_keys = check::root_keys::check(cluster, &(index.clone(), api_key.to_string())).await;
    let count = |kind| ops.iter().filter(|o| o.outcome == kind).count();
    let report = ScheduleReport {
        schedule: n,
        seed,
        faults: schedule
            .steps
            .iter()
            .map(|s| s.fault.name().to_string())
            .collect(),
        ops_ok: count(history::EventType::Ok),
        ops_fail: count(history::EventType::Fail),
        ops_info: count(history::EventType::Info),
        linearizability: check::linear::check(&ops),
        durability: check::durability::check(&ops, &final_values),
        convergence,
        revocation: check::revocation::check(&ops, REVOCATION_BOUND_MS),
        audit,
        root_keys,
        failover: check::failover::check(&events, &ops),
    };
    cluster
        .http
        .delete(cluster.url(1, &format!("/indexes/{index}")))
        .header("Api-Key", api_key)
        .send()
        .await
        .context("deleting the schedule's index")?;
    Ok(report)
}

/// Shard groups hosted on each node: (node, group ids).
async fn hosted_groups(cluster: &Cluster) -> Vec<(u64, Vec<u64>)> {
    let mut hosted = Vec::new();
    for node in &cluster.nodes {
        if let Ok(info) = cluster.cluster_info(node.id).await {
            let groups = info["shards"]
                .as_array()
                .map(|a| a.iter().filter_map(|s| s["group_id"].as_u64()).collect())
                .unwrap_or_default();
            hosted.push((node.id, groups));
        }
    }
    hosted
}

/// The shard group that appeared since `before`, and the nodes hosting its replicas, once
/// every replica has started (min(3, nodes) of them).
async fn new_shard(cluster: &Cluster, before: &BTreeSet<u64>) -> anyhow::Result<(u64, Vec<u64>)> {
    let expected = cluster
        .nodes
        .len()
        .min(conifer_node::api::indexes::SHARD_REPLICAS);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let hosted = hosted_groups(cluster).await;
        let mut by_group: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
        for (node, groups) in &hosted {
            for g in groups.iter().filter(|g| !before.contains(g)) {
                by_group.entry(*g).or_default().push(*node);
            }
        }
        if let Some((group, nodes)) = by_group.into_iter().next_back() {
            if nodes.len() == expected {
                return Ok((group, nodes));
            }
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "the new index's shard did not start on {expected} nodes: {hosted:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
