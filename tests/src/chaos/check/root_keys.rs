//! Keys: once faults are healed, every root key rotation begun during the schedule (asked
//! for by the nemesis, or started by the previous schedule's index deletion) finishes, every
//! member holds only the current root key version and wraps its node data key with it, and
//! a rotation of the schedule's index's data key finishes (every replica re-sealed, the
//! older versions dropped).

use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::Value;

use crate::Cluster;

/// Longest the rotations may take to finish after healing.
pub const ROOT_KEYS_TIMEOUT_MS: u64 = 60_000;

/// What the root key check found.
#[derive(Clone, Debug, Serialize)]
pub struct RootKeysReport {
    /// Whether every rotation finished and every member agrees on the one current version.
    pub settled: bool,
    /// The root key version at the end.
    pub version: u64,
    /// Rotations finished since the cluster began.
    pub rotations: u64,
    /// The last state seen (`GET /admin/cluster/root-keys`).
    pub last: Value,
    /// The schedule's index's data key version at the end.
    pub index_key_version: u64,
    /// Whether no rotation of the index's data key was still running at the end.
    pub index_rotation_settled: bool,
}

fn settled(state: &Value, members: usize) -> bool {
    let version = &state["current_version"];
    state["rotation"].is_null()
        && state["pending_shreds"] == 0
        && state["nodes"].as_array().is_some_and(|nodes| {
            nodes.len() == members
                && nodes.iter().all(|n| {
                    n["current_version"] == *version
                        && n["node_key_version"] == *version
                        && n["versions"]
                            .as_array()
                            .is_some_and(|v| v.len() == 1 && v[0]["version"] == *version)
                })
        })
}

/// Polls `GET /admin/cluster/root-keys` through any node until the root keys settle, then
/// the schedule's index (`index`: its name and an API key) until no rotation of its data key
/// runs, within [`ROOT_KEYS_TIMEOUT_MS`] in all.
pub async fn check(cluster: &Cluster, index: &(String, String)) -> RootKeysReport {
    let deadline = Instant::now() + Duration::from_millis(ROOT_KEYS_TIMEOUT_MS);
    let mut report = root_keys(cluster, deadline).await;
    loop {
        for node in &cluster.nodes {
            let answer = cluster
                .http
                .get(cluster.url(node.id, &format!("/indexes/{}", index.0)))
                .header("Api-Key", &index.1)
                .timeout(Duration::from_secs(10))
                .send()
                .await;
            let Ok(resp) = answer else { continue };
            let Ok(described) = resp.json::<Value>().await else {
                continue;
            };
            report.index_key_version = described["encryption"]["data_key_version"]
                .as_u64()
                .unwrap_or_default();
            report.index_rotation_settled =
                described["encryption"]["rotation"].is_null() && report.index_key_version > 0;
            break;
        }
        if report.index_rotation_settled || Instant::now() >= deadline {
            report.settled &= report.index_rotation_settled;
            return report;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn root_keys(cluster: &Cluster, deadline: Instant) -> RootKeysReport {
    let members = cluster.nodes.len();
    let mut last = Value::Null;
    loop {
        for node in &cluster.nodes {
            let answer = cluster
                .http
                .get(cluster.url(node.id, "/admin/cluster/root-keys"))
                .bearer_auth(cluster.admin_token())
                .timeout(Duration::from_secs(10))
                .send()
                .await;
            let Ok(resp) = answer else { continue };
            if !resp.status().is_success() {
                continue;
            }
            last = resp.json().await.unwrap_or(Value::Null);
            if settled(&last, members) {
                return RootKeysReport {
                    settled: true,
                    version: last["current_version"].as_u64().unwrap_or_default(),
                    rotations: last["rotations"].as_u64().unwrap_or_default(),
                    last,
                    index_key_version: 0,
                    index_rotation_settled: false,
                };
            }
            break;
        }
        if Instant::now() >= deadline {
            return RootKeysReport {
                settled: false,
                version: last["current_version"].as_u64().unwrap_or_default(),
                rotations: last["rotations"].as_u64().unwrap_or_default(),
                last,
                index_key_version: 0,
                index_rotation_settled: false,
            };
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
