//! Convergence: once faults are healed, every replica of a shard reaches the same applied
//! index with the same record digest per namespace.

use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::Value;

use crate::Cluster;

/// Longest the replicas may take to converge after healing.
pub const CONVERGENCE_TIMEOUT_MS: u64 = 30_000;

/// One replica's state as it reported it.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct ReplicaState {
    /// Node holding the replica.
    pub node: u64,
    /// Applied index of the state the digests were taken from.
    pub applied_index: u64,
    /// (namespace, record count, digest), by namespace.
    pub namespaces: Vec<(String, u64, String)>,
}

/// What the convergence check found.
#[derive(Clone, Debug, Serialize)]
pub struct ConvergenceReport {
    /// Shard group checked.
    pub group: u64,
    /// Whether all replicas agreed.
    pub converged: bool,
    /// Replicas at the same applied index with different records: a violation.
    pub diverged: bool,
    /// The last states seen.
    pub replicas: Vec<ReplicaState>,
}

fn replica_state(node: u64, info: &Value, group: u64) -> Option<ReplicaState> {
    let shard = info["shards"]
        .as_array()?
        .iter()
        .find(|s| s["group_id"].as_u64() == Some(group))?;
    let namespaces = shard["namespaces"]
        .as_array()?
        .iter()
        .map(|ns| {
            (
                ns["name"].as_str().unwrap_or_default().to_string(),
                ns["records"].as_u64().unwrap_or_default(),
                ns["digest"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    Some(ReplicaState {
        node,
        applied_index: shard["state_applied_index"].as_u64()?,
        namespaces,
    })
}

/// Polls the replicas of shard `group` on `nodes` until they agree or the time is up.
pub async fn check(cluster: &Cluster, group: u64, nodes: &[u64]) -> ConvergenceReport {
    let deadline = Instant::now() + Duration::from_millis(CONVERGENCE_TIMEOUT_MS);
    let mut report = ConvergenceReport {
        group,
        converged: false,
        diverged: false,
        replicas: Vec::new(),
    };
    loop {
        let mut states = Vec::new();
        for &node in nodes {
            let url = cluster.url(node, "/admin/cluster?digest=true");
            let info = cluster
                .http
                .get(url)
                .bearer_auth(cluster.admin_token())
                .send()
                .await;
            if let Ok(resp) = info {
                if let Ok(info) = resp.json::<Value>().await {
                    if let Some(state) = replica_state(node, &info, group) {
                        states.push(state);
                    }
                }
            }
        }
        let complete = states.len() == nodes.len();
        let same_index = states
            .windows(2)
            .all(|w| w[0].applied_index == w[1].applied_index);
        if complete && same_index {
            report.converged = states
                .windows(2)
                .all(|w| w[0].namespaces == w[1].namespaces);
            report.diverged = !report.converged;
            report.replicas = states;
            return report;
        }
        report.replicas = states;
        if Instant::now() > deadline {
            return report;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
