//! Real-process cluster tests: leader loss and membership changes.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use conifer_tests::Cluster;
use serde_json::{json, Value};

/// Creates a project through node `via`, retrying while the cluster is unavailable.
/// Returns the id if the creation was acknowledged.
async fn create_project(cluster: &Cluster, via: u64, name: &str) -> Option<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let resp = cluster
            .http
            .post(cluster.url(via, "/admin/projects"))
            .bearer_auth(cluster.admin_token())
            .json(&json!({ "name": name }))
            .send()
            .await;
        match resp {
            Ok(r) if r.status().as_u16() == 201 => {
                let body: Value = r.json().await.ok()?;
                return body["id"].as_str().map(String::from);
            }
            // A retried create whose first attempt committed: the name now exists.
            Ok(r) if r.status().as_u16() == 409 => {
                return project_id_by_name(cluster, via, name).await
            }
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    None
}

async fn project_id_by_name(cluster: &Cluster, via: u64, name: &str) -> Option<String> {
    let resp = cluster
        .http
        .get(cluster.url(via, "/admin/projects"))
        .bearer_auth(cluster.admin_token())
        .send()
        .await;
    let body: Value = resp.ok()?.json().await.ok()?;
    body["data"]
        .as_array()?
        .iter()
        .find(|p| p["name"] == name)
        .and_then(|p| p["id"].as_str().map(String::from))
}

async fn project_ids(cluster: &Cluster, via: u64) -> anyhow::Result<Vec<String>> {
    let resp = cluster
        .http
        .get(cluster.url(via, "/admin/projects"))
        .bearer_auth(cluster.admin_token())
        .send()
        .await?;
    anyhow::ensure!(
        resp.status().is_success(),
        "list on node {via}: {}",
        resp.status()
    );
    let body: Value = resp.json().await?;
    Ok(body["data"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["id"].as_str().map(String::from))
        .collect())
}

/// Waits until every listed node holds exactly `expected` (plus the default project).
async fn wait_converged(
    cluster: &Cluster,
    nodes: &[u64],
    expected: &BTreeSet<String>,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut all_ok = true;
        let mut seen = BTreeMap::new();
        for &id in nodes {
            let ids = project_ids(cluster, id).await.unwrap_or_default();
            let set: BTreeSet<String> = ids.iter().cloned().collect();
            assert_eq!(set.len(), ids.len(), "node {id} lists a project twice");
            let missing: Vec<_> = expected.difference(&set).collect();
            if !missing.is_empty() || set.len() != expected.len() + 1 {
                all_ok = false;
            }
            seen.insert(id, (set.len(), missing.len()));
        }
        if all_ok {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "nodes did not converge: (count, missing) per node {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn control_plane_survives_leader_kill_without_losing_acknowledged_writes(
) -> anyhow::Result<()> {
    let mut cluster = Cluster::start(3).await?;
    let info = cluster.cluster_info(1).await?;
    let voters = info["members"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["role"] == "voter")
        .count();
    assert_eq!(voters, 3, "three voters: {info}");

    let mut acknowledged = BTreeSet::new();
    for round in 0..4 {
        for via in 1..=3 {
            if let Some(id) = create_project(&cluster, via, &format!("before-{round}-{via}")).await
            {
                acknowledged.insert(id);
            }
        }
    }
    assert_eq!(
        acknowledged.len(),
        12,
        "every write through every node is acknowledged"
    );

    let leader = cluster.wait_leader(1, None).await?;
    cluster.node(leader).kill();
    let survivors: Vec<u64> = (1..=3).filter(|&id| id != leader).collect();
    let new_leader = cluster.wait_leader(survivors[0], Some(leader)).await?;
    assert_ne!(new_leader, leader);

    for round in 0..4 {
        for &via in &survivors {
            if let Some(id) = create_project(&cluster, via, &format!("after-{round}-{via}")).await {
                acknowledged.insert(id);
            }
        }
    }
    assert_eq!(
        acknowledged.len(),
        20,
        "writes continue through the survivors"
    );

    cluster.node(leader).spawn()?;
    cluster.wait_serving(leader).await?;
    wait_converged(&cluster, &[1, 2, 3], &acknowledged).await
}

#[tokio::test(flavor = "multi_thread")]
async fn learner_joins_is_promoted_and_a_node_is_removed_while_serving() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(3).await?;
    let mut acknowledged = BTreeSet::new();
    acknowledged.extend(create_project(&cluster, 1, "m-0").await);

    let fourth = cluster.add_node(true).await?;
    let info = cluster.cluster_info(1).await?;
    let role = |info: &Value, id: u64| {
        info["members"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["id"] == id)
            .map(|m| m["role"].clone())
    };
    assert_eq!(role(&info, fourth), Some(json!("learner")), "{info}");
    acknowledged.extend(create_project(&cluster, fourth, "m-1").await);

    let resp = cluster
        .http
        .post(cluster.url(2, &format!("/admin/cluster/members/{fourth}/promote")))
        .bearer_auth(cluster.admin_token())
        .send()
        .await?;
    assert_eq!(resp.status().as_u16(), 200, "{}", resp.text().await?);
    let info = cluster.cluster_info(fourth).await?;
    assert_eq!(role(&info, fourth), Some(json!("voter")), "{info}");
    acknowledged.extend(create_project(&cluster, 3, "m-2").await);

    let resp = cluster
        .http
        .delete(cluster.url(fourth, "/admin/cluster/members/2"))
        .bearer_auth(cluster.admin_token())
        .send()
        .await?;
    assert_eq!(resp.status().as_u16(), 202, "{}", resp.text().await?);
    let info = cluster.cluster_info(1).await?;
    assert_eq!(role(&info, 2), None, "node 2 removed: {info}");
    assert_eq!(info["members"].as_array().unwrap().len(), 3);
    acknowledged.extend(create_project(&cluster, 1, "m-3").await);
    acknowledged.extend(create_project(&cluster, fourth, "m-4").await);
    assert_eq!(
        acknowledged.len(),
        5,
        "every write during membership changes is acknowledged"
    );

    let unknown = cluster
        .http
        .post(cluster.url(1, "/admin/cluster/members/99/promote"))
        .bearer_auth(cluster.admin_token())
        .send()
        .await?;
    assert_eq!(unknown.status().as_u16(), 404);

    // Each change is on the cluster chain, with its outcome: the join by Conifer itself
    // (the leader that admitted the node), promote and remove by the operator, and the
    // refused promote with the code its client received.
    let events: Value = cluster
        .http
        .get(cluster.url(3, "/admin/cluster/audit-logs?limit=1000"))
        .bearer_auth(cluster.admin_token())
        .send()
        .await?
        .json()
        .await?;
    let membership: Vec<&Value> = events["data"]
        .as_array()
        .expect("a page of events")
        .iter()
        .filter(|e| {
            let op = e["event"]["operation"].as_str().unwrap_or_default();
            // Nodes 2 and 3 joined when the cluster started; those joins are not this test's.
            let startup_join = op == "cluster.member.join"
                && e["event"]["resource_id"].as_str() != Some(fourth.to_string().as_str());
            op.starts_with("cluster.member.") && !startup_join
        })
        .collect();
    let joined_at_start: Vec<&Value> = events["data"]
        .as_array()
        .expect("a page of events")
        .iter()
        .filter(|e| {
            e["event"]["operation"] == "cluster.member.join"
                && e["event"]["outcome"]["result"] == "success"
                && e["event"]["parameters"]["voter"] == true
        })
        .collect();
    for node in ["2", "3"] {
        assert!(
            joined_at_start
                .iter()
                .any(|e| e["event"]["resource_id"] == node),
            "node {node}'s join is recorded: {joined_at_start:#?}"
        );
    }
    let summary: Vec<(String, String, String, String, String)> = membership
        .iter()
        .map(|e| {
            let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
            (
                s(&e["event"]["operation"]),
                s(&e["event"]["action"]),
                s(&e["event"]["resource_id"]),
                s(&e["event"]["outcome"]["result"]),
                s(&e["actor"]["principal_type"]),
            )
        })
        .collect();
    let row = |op: &str, action: &str, node: &str, result: &str, actor: &str| {
        (
            op.into(),
            action.into(),
            node.into(),
            result.into(),
            actor.into(),
        )
    };
    let fourth_id = fourth.to_string();
    assert_eq!(
        summary,
        vec![
            row(
                "cluster.member.join",
                "create",
                &fourth_id,
                "success",
                "system"
            ),
            row(
                "cluster.member.promote",
                "update",
                &fourth_id,
                "success",
                "operator"
            ),
            row(
                "cluster.member.remove",
                "delete",
                "2",
                "success",
                "operator"
            ),
            row(
                "cluster.member.promote",
                "update",
                "99",
                "failure",
                "operator"
            ),
        ],
        "{membership:#?}"
    );
    assert_eq!(membership[0]["event"]["parameters"]["voter"], false);
    assert_eq!(membership[2]["event"]["parameters"]["force"], false);
    assert_eq!(membership[3]["event"]["outcome"]["error_code"], "NOT_FOUND");
    wait_converged(&cluster, &[1, 3, fourth], &acknowledged).await
}

#[tokio::test(flavor = "multi_thread")]
async fn lagging_node_catches_up_from_a_streamed_snapshot() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(3).await?;
    let mut acknowledged = BTreeSet::new();
    acknowledged.extend(create_project(&cluster, 1, "early").await);
    let lagging_applied = cluster.cluster_info(3).await?["last_applied_index"]
        .as_u64()
        .unwrap_or(0);
    cluster.node(3).kill();

    // Enough entries for a snapshot (every 1000) and a purge of the log behind it.
    for i in 0..600 {
        let id = create_project(&cluster, 1, &format!("churn-{i}"))
            .await
            .expect("acknowledged create");
        let resp = cluster
            .http
            .delete(cluster.url(2, &format!("/admin/projects/{id}")))
            .bearer_auth(cluster.admin_token())
            .send()
            .await?;
        assert_eq!(resp.status().as_u16(), 202);
    }
    acknowledged.extend(create_project(&cluster, 2, "late").await);
    let leader = cluster.wait_leader(1, None).await?;
    let purged = cluster.cluster_info(leader).await?["purged_index"]
        .as_u64()
        .unwrap_or(0);
    assert!(
        purged > lagging_applied + 1,
        "the leader purged the entries node 3 lacks ({purged} vs {lagging_applied})"
    );

    cluster.node(3).spawn()?;
    cluster.wait_serving(3).await?;
    wait_converged(&cluster, &[1, 2, 3], &acknowledged).await?;
    let info = cluster.cluster_info(3).await?;
    assert!(
        info["snapshot_index"].as_u64().is_some(),
        "node 3 holds a snapshot: {info}"
    );
    Ok(())
}

/// `GET path` on node `via` with the operator token and `x-conifer-read-consistency`.
async fn admin_get(
    cluster: &Cluster,
    via: u64,
    path: &str,
    consistency: &str,
) -> anyhow::Result<(u16, Value)> {
    let resp = cluster
        .http
        .get(cluster.url(via, path))
        .bearer_auth(cluster.admin_token())
        .header("x-conifer-read-consistency", consistency)
        .send()
        .await?;
    let status = resp.status().as_u16();
    Ok((status, resp.json().await.unwrap_or(Value::Null)))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_without_a_majority_stops_checking_credentials_within_its_lease(
) -> anyhow::Result<()> {
    let mut cluster = Cluster::start(3).await?;
    let project = create_project(&cluster, 1, "lease").await.expect("created");
    let path = format!("/admin/projects/{project}");

    // A linearizable read on every node sees a delete acknowledged by another node.
    let (status, body) = admin_get(&cluster, 2, &path, "linearizable").await?;
    assert_eq!(status, 200, "{body}");
    let (status, body) = admin_get(&cluster, 2, &path, "strong").await?;
    assert_eq!(status, 400, "unknown consistency is refused: {body}");
    assert!(
        body.to_string().contains("x-conifer-read-consistency"),
        "{body}"
    );
    let deleted = cluster
        .http
        .delete(cluster.url(1, &path))
        .bearer_auth(cluster.admin_token())
        .send()
        .await?;
    assert_eq!(deleted.status().as_u16(), 202);
    for via in [2, 3] {
        let (status, body) = admin_get(&cluster, via, &path, "linearizable").await?;
        assert_eq!(
            status, 404,
            "node {via} still shows the deleted project: {body}"
        );
    }

    // Node 1 alone cannot renew its lease: within the lease (plus one renewal) it refuses
    // to check credentials, and /health says why.
    cluster.node(2).kill();
    cluster.node(3).kill();
    let killed = Instant::now();
    let bound = Duration::from_millis(
        conifer_node::control::LEASE_MS + 2 * conifer_node::control::LEASE_RENEW_MS,
    );
    let refused = loop {
        let (status, body) = admin_get(&cluster, 1, "/admin/projects", "eventual").await?;
        if status == 503 {
            break body;
        }
        assert!(
            killed.elapsed() < bound,
            "node 1 still checks credentials {:?} after losing its majority",
            killed.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        refused.to_string().contains("cannot check credentials"),
        "{refused}"
    );
    let health: Value = cluster
        .http
        .get(cluster.url(1, "/health"))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(health, json!({"status": "out_of_contact"}));

    // Back in contact, it serves again.
    cluster.node(2).spawn()?;
    cluster.node(3).spawn()?;
    cluster.wait_serving(1).await?;
    let (status, body) = admin_get(&cluster, 1, "/admin/projects", "eventual").await?;
    assert_eq!(status, 200, "{body}");
    Ok(())
}
