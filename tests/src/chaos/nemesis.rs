//! Faults: what a schedule injects, generated from a seed so that a run can be replayed.
//!
//! A schedule is a list of steps; each step waits, injects one fault, holds it, and heals
//! it. Targets that depend on the cluster's state at the time (the leader of group 0, the
//! leader of the schedule's shard) are looked up when the step runs. Adding a fault is a new
//! [`Fault`] variant, an arm in [`Fault::pick`] and one in [`Nemesis::inject`].

use std::collections::BTreeSet;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use serde_json::json;

use super::history::{Entry, EventType, Recorder};
use super::netns;
use crate::{node_host, Cluster};

/// One fault.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Fault {
    /// SIGKILL a node (chosen by the seed); restarted when healed.
    KillNode { node: u64 },
    /// SIGKILL the current leader of group 0.
    KillControlLeader,
    /// SIGKILL the current leader of the schedule's shard.
    KillShardLeader,
    /// SIGSTOP a node; SIGCONT when healed.
    PauseNode { node: u64 },
    /// SIGSTOP the current leader of group 0.
    PauseControlLeader,
    /// Cut the current leader of group 0 off from every other node.
    IsolateControlLeader,
    /// Cut the current leader of the schedule's shard off from every other node: writes
    /// sent to the others are forwarded to it until they notice.
    IsolateShardLeader,
    /// Cut the cluster in two: `minority` from the rest.
    Split { minority: Vec<u64> },
    /// Two halves that cannot see each other, and one node that sees both.
    Bridge {
        bridge: u64,
        left: Vec<u64>,
        right: Vec<u64>,
    },
    /// SIGKILL every node, then start them all again.
    RestartAll,
    /// Restart a node with a failpoint that crashes it (aborts the process) at a point where
    /// a crash matters; when healed it is restarted without.
    CrashAtFailpoint { node: u64, failpoint: String },
    /// Join a new node to the cluster (a voter), then remove it from the membership and stop it.
    AddRemoveNode,
    /// Ask a node (chosen by the seed) to rotate the root key: the rotation runs on the
    /// control-plane leader under whatever comes next; nothing to heal.
    RotateRootKey { via: u64 },
    /// Ask a node (chosen by the seed) to rotate the schedule's index's data key: every
    /// replica re-seals its values under whatever comes next; nothing to heal.
    RotateIndexKey { via: u64 },
}

/// The name of every kind of fault (for `--faults`).
pub const FAULT_KINDS: &[&str] = &[
    "kill-node",
    "kill-control-leader",
    "kill-shard-leader",
    "pause-node",
    "pause-control-leader",
    "isolate-control-leader",
    "isolate-shard-leader",
    "partition-split",
    "partition-bridge",
    "restart-all",
    "crash-at-failpoint",
    "add-remove-node",
    "rotate-root-key",
    "rotate-index-key",
];

/// Failpoints a node may be crashed at, with how often each fires once armed (fail-rs
/// syntax; `panic` aborts the process in a node started with failpoints).
pub const CRASH_FAILPOINTS: &[(&str, &str)] = &[
    ("raft::append::before_sync", "10%1*panic"),
    ("raft::apply::before", "10%1*panic"),
    ("raft::snapshot::before_persist", "1*panic"),
    ("raft::snapshot::install::before", "1*panic"),
    // Fire only during a root key rotation (on the control-plane leader) or an index key
    // rotation (on a replica re-sealing its values).
    ("conifer::root_rotation::after_rewrap", "1*panic"),
    ("conifer::index_rotation::after_batch", "1*panic"),
];

impl Fault {
    /// A fault drawn from `rng` for a cluster of `nodes` nodes.
    fn pick(rng: &mut StdRng, nodes: u64) -> Self {
        let all: Vec<u64> = (1..=nodes).collect();
        let any = |rng: &mut StdRng| *all.choose(rng).expect("a cluster has nodes");
        match rng.gen_range(0..14) {
            0 => Fault::KillNode { node: any(rng) },
            1 => Fault::KillControlLeader,
            2 => Fault::KillShardLeader,
            3 => Fault::PauseNode { node: any(rng) },
            4 => Fault::PauseControlLeader,
            5 => Fault::IsolateControlLeader,
            6 => {
                let mut shuffled = all.clone();
                shuffled.shuffle(rng);
                let minority = shuffled[..(nodes as usize - 1) / 2].to_vec();
                Fault::Split { minority }
            }
            7 if nodes >= 5 => {
                let mut shuffled = all.clone();
                shuffled.shuffle(rng);
                let half = (nodes as usize - 1) / 2;
                Fault::Bridge {
                    bridge: shuffled[0],
                    left: shuffled[1..1 + half].to_vec(),
                    right: shuffled[1 + half..].to_vec(),
                }
            }
            7 | 8 => Fault::RestartAll,
            9 => {
                let (failpoint, _) = CRASH_FAILPOINTS.choose(rng).expect("failpoints listed");
                Fault::CrashAtFailpoint {
                    node: any(rng),
                    failpoint: failpoint.to_string(),
                }
            }
            10 => Fault::AddRemoveNode,
            11 => Fault::RotateRootKey { via: any(rng) },
            12 => Fault::RotateIndexKey { via: any(rng) },
            13 => Fault::IsolateShardLeader,
            _ => unreachable!("gen_range(0..14)"),
        }
    }

    /// Short name for the history and the timeline.
    pub fn name(&self) -> &'static str {
        match self {
            Fault::KillNode { .. } => "kill-node",
            Fault::KillControlLeader => "kill-control-leader",
            Fault::KillShardLeader => "kill-shard-leader",
            Fault::PauseNode { .. } => "pause-node",
            Fault::PauseControlLeader => "pause-control-leader",
            Fault::IsolateControlLeader => "isolate-control-leader",
            Fault::IsolateShardLeader => "isolate-shard-leader",
            Fault::Split { .. } => "partition-split",
            Fault::Bridge { .. } => "partition-bridge",
            Fault::RestartAll => "restart-all",
            Fault::CrashAtFailpoint { .. } => "crash-at-failpoint",
            Fault::AddRemoveNode => "add-remove-node",
            Fault::RotateRootKey { .. } => "rotate-root-key",
            Fault::RotateIndexKey { .. } => "rotate-index-key",
        }
    }
}

/// One step of a schedule.
#[derive(Clone, Debug, Serialize)]
pub struct Step {
    /// Quiet time before the fault.
    pub wait_ms: u64,
    /// The fault.
    pub fault: Fault,
    /// How long it is held before it is healed.
    pub hold_ms: u64,
}

/// What schedules are drawn from.
#[derive(Clone, Debug)]
pub struct Shape {
    /// Nodes in the cluster.
    pub nodes: u64,
    /// About how long the faults of one schedule last, waits included (ms).
    pub duration_ms: u64,
    /// Kinds of fault to draw, by [`Fault::name`] (empty: every kind).
    pub faults: Vec<String>,
    /// Shortest and longest time a fault is held (ms).
    pub hold_ms: (u64, u64),
}

impl Shape {
    /// Every kind of fault, each held 1–4 s.
    pub fn new(nodes: u64, duration_ms: u64) -> Self {
        Self {
            nodes,
            duration_ms,
            faults: Vec::new(),
            hold_ms: DEFAULT_HOLD_MS,
        }
    }
}

/// Shortest and longest hold of a fault unless a run asks otherwise (ms).
pub const DEFAULT_HOLD_MS: (u64, u64) = (1_000, 4_000);

/// The faults of one schedule.
#[derive(Clone, Debug, Serialize)]
pub struct Schedule {
    /// The seed it was generated from.
    pub seed: u64,
    /// Its steps, in order.
    pub steps: Vec<Step>,
}

impl Schedule {
    /// The schedule of `seed` with the given shape.
    pub fn generate(seed: u64, shape: &Shape) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut steps = Vec::new();
        let mut total = 0;
        let only = &shape.faults;
        while total < shape.duration_ms {
            let wait_ms = rng.gen_range(500..2_000);
            let fault = (0..10_000)
                .map(|_| Fault::pick(&mut rng, shape.nodes))
                .find(|f| only.is_empty() || only.iter().any(|k| k == f.name()))
                .unwrap_or_else(|| {
                    panic!(
                        "no fault of the kinds {only:?} exists for {} nodes",
                        shape.nodes
                    )
                });
            let step = Step {
                wait_ms,
                fault,
                hold_ms: rng.gen_range(shape.hold_ms.0..=shape.hold_ms.1),
            };
            total += step.wait_ms + step.hold_ms;
            steps.push(step);
        }
        Self { seed, steps }
    }
}

/// What a fault did, so that healing can undo exactly that.
enum Injected {
    Killed(Vec<u64>),
    Paused(Vec<u64>),
    Cut,
    /// Restarted with a crashing failpoint: restart it without.
    Armed(u64),
    /// A node added for the step: remove it again.
    Added(u64),
    Nothing,
}

/// Injects faults into a cluster and heals them.
pub struct Nemesis<'a> {
    cluster: &'a mut Cluster,
    recorder: Recorder,
    shard_group: u64,
    /// The schedule's index and an API key that may rotate its data key.
    index: (String, String),
}

impl<'a> Nemesis<'a> {
    /// A nemesis for `cluster`, whose schedule targets shard group `shard_group` of the
    /// index `index` (its name and an API key that may administer it).
    pub fn new(
        cluster: &'a mut Cluster,
        recorder: Recorder,
        shard_group: u64,
        index: (String, String),
    ) -> Self {
        Self {
            cluster,
            recorder,
            shard_group,
            index,
        }
    }

    fn note(&self, kind: EventType, f: &str, node: Option<u64>, value: serde_json::Value) {
        self.recorder.record(
            kind,
            Entry {
                process: "nemesis".into(),
                node,
                f: f.into(),
                value,
                ..Entry::default()
            },
        );
    }

    /// Runs every step of `schedule`.
    pub async fn run(&mut self, schedule: &Schedule) -> anyhow::Result<()> {
        for step in &schedule.steps {
            tokio::time::sleep(Duration::from_millis(step.wait_ms)).await;
            let injected = self.inject(&step.fault).await?;
            tokio::time::sleep(Duration::from_millis(step.hold_ms)).await;
            self.undo(injected, step.fault.name()).await?;
        }
        Ok(())
    }

    /// Group 0's leader as some reachable node reports it.
    async fn control_leader(&self) -> Option<u64> {
        for node in &self.cluster.nodes {
            if let Ok(info) = self.cluster.cluster_info(node.id).await {
                if let Some(leader) = info["leader_id"].as_u64() {
                    return Some(leader);
                }
            }
        }
        None
    }

    /// The shard's leader as some replica reports it.
    async fn shard_leader(&self) -> Option<u64> {
        for node in &self.cluster.nodes {
            let Ok(info) = self.cluster.cluster_info(node.id).await else {
                continue;
            };
            let shards = info["shards"].as_array().cloned().unwrap_or_default();
            for shard in shards {
                if shard["group_id"].as_u64() == Some(self.shard_group) {
                    if let Some(leader) = shard["leader_id"].as_u64() {
                        return Some(leader);
                    }
                }
            }
        }
        None
    }

    async fn inject(&mut self, fault: &Fault) -> anyhow::Result<Injected> {
        let name = fault.name();
        let leader = match fault {
            Fault::KillControlLeader | Fault::PauseControlLeader | Fault::IsolateControlLeader => {
                self.control_leader().await
            }
            Fault::KillShardLeader | Fault::IsolateShardLeader => self.shard_leader().await,
            _ => None,
        };
        let injected = match fault {
            Fault::KillNode { node } => self.kill(vec![*node]),
            Fault::KillControlLeader | Fault::KillShardLeader => match leader {
                Some(node) => self.kill(vec![node]),
                None => Injected::Nothing,
            },
            Fault::PauseNode { node } => self.pause(vec![*node])?,
            Fault::PauseControlLeader => match leader {
                Some(node) => self.pause(vec![node])?,
                None => Injected::Nothing,
            },
            Fault::IsolateControlLeader | Fault::IsolateShardLeader => match leader {
                Some(node) => {
                    let others: Vec<u64> = self.ids().into_iter().filter(|n| *n != node).collect();
                    cut_between(&[node], &others)?;
                    Injected::Cut
                }
                None => Injected::Nothing,
            },
            Fault::Split { minority } => {
                let rest: Vec<u64> = self
                    .ids()
                    .into_iter()
                    .filter(|n| !minority.contains(n))
                    .collect();
                cut_between(minority, &rest)?;
                Injected::Cut
            }
            Fault::Bridge { left, right, .. } => {
                cut_between(left, right)?;
                Injected::Cut
            }
            Fault::RestartAll => {
                let all = self.ids();
                for id in &all {
                    self.cluster.node(*id).kill();
                }
                self.respawn(&all)?;
                Injected::Nothing
            }
            Fault::CrashAtFailpoint { node, failpoint } => {
                let spec = CRASH_FAILPOINTS
                    .iter()
                    .find(|(name, _)| name == failpoint)
                    .map(|(_, spec)| *spec)
                    .unwrap_or("1*panic");
                let proc = self.cluster.node(*node);
                proc.kill();
                let armed = format!("{failpoint}={spec}");
                let failpoints = match proc.env.iter().position(|(k, _)| k == "FAILPOINTS") {
                    Some(i) => {
                        let (_, old) = proc.env.remove(i);
                        format!("{old};{armed}")
                    }
                    None => armed,
                };
                proc.env.push(("FAILPOINTS".into(), failpoints));
                proc.spawn()?;
                Injected::Armed(*node)
            }
            Fault::RotateRootKey { via } | Fault::RotateIndexKey { via } => {
                let (path, index_key) = match fault {
                    Fault::RotateIndexKey { .. } => (
                        format!("/indexes/{}/rotate-key", self.index.0),
                        Some(self.index.1.clone()),
                    ),
                    _ => ("/admin/cluster/root-keys/rotate".to_string(), None),
                };
                let request = self
                    .cluster
                    .http
                    .post(self.cluster.url(*via, &path))
                    .timeout(Duration::from_secs(10));
                let request = match index_key {
                    Some(key) => request.header("Api-Key", key),
                    None => request.bearer_auth(self.cluster.admin_token()),
                };
                let answer = request.send().await;
                let detail = match answer {
                    Ok(resp) => json!({ "status": resp.status().as_u16() }),
                    Err(e) => json!({ "error": e.to_string() }),
                };
                self.note(EventType::Info, name, Some(*via), detail);
                Injected::Nothing
            }
            Fault::AddRemoveNode => match self.cluster.add_node(false).await {
                Ok(id) => Injected::Added(id),
                Err(e) => {
                    self.note(
                        EventType::Info,
                        name,
                        None,
                        json!({ "error": e.to_string() }),
                    );
                    Injected::Nothing
                }
            },
        };
        let target = match &injected {
            Injected::Killed(n) | Injected::Paused(n) => n.first().copied(),
            Injected::Armed(n) | Injected::Added(n) => Some(*n),
            _ => leader,
        };
        self.note(
            EventType::Invoke,
            name,
            target,
            json!({ "fault": fault, "applied": !matches!(injected, Injected::Nothing)
                || matches!(fault, Fault::RestartAll | Fault::RotateRootKey { .. } | Fault::RotateIndexKey { .. }) }),
        );
        Ok(injected)
    }

    async fn undo(&mut self, injected: Injected, name: &str) -> anyhow::Result<()> {
        let node = match &injected {
            Injected::Killed(n) | Injected::Paused(n) => n.first().copied(),
            Injected::Armed(n) | Injected::Added(n) => Some(*n),
            _ => None,
        };
        let mut detail = json!({ "healed": true });
        match injected {
            Injected::Armed(id) => {
                let env = self.cluster.options.env.clone();
                let proc = self.cluster.node(id);
                detail["crashed"] = json!(!proc.is_running());
                proc.kill();
                proc.env = env;
                self.cluster.node(id).spawn()?;
            }
            Injected::Added(id) => {
                self.remove_member(id).await?;
                self.cluster.retire(id);
            }
            Injected::Killed(nodes) => self.respawn(&nodes)?,
            Injected::Paused(nodes) => {
                for id in nodes {
                    self.cluster.node(id).signal("CONT")?;
                }
            }
            Injected::Cut => netns::heal()?,
            Injected::Nothing => {}
        }
        self.note(EventType::Info, name, node, detail);
        Ok(())
    }

    /// Removes node `id` from the cluster's membership through any node that can do it.
    async fn remove_member(&self, id: u64) -> anyhow::Result<()> {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            for via in self.ids().into_iter().filter(|n| *n != id) {
                let resp = self
                    .cluster
                    .http
                    .delete(
                        self.cluster
                            .url(via, &format!("/admin/cluster/members/{id}")),
                    )
                    .bearer_auth(self.cluster.admin_token())
                    .send()
                    .await;
                // 404: an earlier attempt removed it and its answer was lost.
                if resp.is_ok_and(|r| r.status().is_success() || r.status() == 404) {
                    return Ok(());
                }
            }
            anyhow::ensure!(
                std::time::Instant::now() < deadline,
                "node {id} could not be removed from the cluster"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    fn ids(&self) -> Vec<u64> {
        self.cluster.nodes.iter().map(|n| n.id).collect()
    }

    fn kill(&mut self, nodes: Vec<u64>) -> Injected {
        for id in &nodes {
            self.cluster.node(*id).kill();
        }
        Injected::Killed(nodes)
    }

    fn pause(&mut self, nodes: Vec<u64>) -> anyhow::Result<Injected> {
        for id in &nodes {
            self.cluster.node(*id).signal("STOP")?;
        }
        Ok(Injected::Paused(nodes))
    }

    fn respawn(&mut self, nodes: &[u64]) -> anyhow::Result<()> {
        for id in nodes {
            let node = self.cluster.node(*id);
            if !node.is_running() {
                node.spawn()?;
            }
        }
        Ok(())
    }

    /// Undoes everything: links healed, paused nodes continued, dead nodes started; then
    /// waits until every node serves.
    pub async fn heal_all(&mut self) -> anyhow::Result<()> {
        netns::heal()?;
        let all = self.ids();
        for id in &all {
            self.cluster.node(*id).signal("CONT")?;
        }
        self.respawn(&all)?;
        for id in all {
            self.cluster.wait_serving(id).await?;
        }
        self.note(EventType::Info, "heal-all", None, json!({ "healed": true }));
        Ok(())
    }
}

/// Cuts every link between a node of `a` and a node of `b`.
fn cut_between(a: &[u64], b: &[u64]) -> anyhow::Result<()> {
    let a: BTreeSet<u64> = a.iter().copied().collect();
    for x in &a {
        for y in b.iter().filter(|y| !a.contains(y)) {
            netns::cut(&node_host(*x), &node_host(*y))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_always_gives_the_same_schedule() {
        let a = serde_json::to_string(&Schedule::generate(42, &Shape::new(5, 20_000))).unwrap();
        let b = serde_json::to_string(&Schedule::generate(42, &Shape::new(5, 20_000))).unwrap();
        let c = serde_json::to_string(&Schedule::generate(43, &Shape::new(5, 20_000))).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn every_kind_of_fault_is_drawn_and_listed() {
        let drawn: BTreeSet<&str> = (0..50)
            .flat_map(|seed| Schedule::generate(seed, &Shape::new(5, 30_000)).steps)
            .map(|s| s.fault.name())
            .collect();
        let listed: BTreeSet<&str> = FAULT_KINDS.iter().copied().collect();
        assert_eq!(drawn, listed);
    }

    #[test]
    fn a_schedule_can_be_limited_to_some_kinds_of_fault_and_hold_times() {
        let only = vec!["partition-split".to_string(), "kill-node".to_string()];
        let shape = Shape {
            faults: only.clone(),
            hold_ms: (4_000, 6_000),
            ..Shape::new(5, 60_000)
        };
        let schedule = Schedule::generate(7, &shape);
        assert!(schedule.steps.len() > 5);
        assert!(schedule
            .steps
            .iter()
            .all(|s| only.iter().any(|k| k == s.fault.name())
                && (4_000..=6_000).contains(&s.hold_ms)));
    }

    #[test]
    fn splits_leave_a_majority() {
        for seed in 0..200 {
            for step in Schedule::generate(seed, &Shape::new(5, 20_000)).steps {
                if let Fault::Split { minority } = step.fault {
                    assert!(minority.len() < 3, "{minority:?}");
                }
            }
        }
    }
}
