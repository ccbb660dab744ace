//! Crashes where corruption would follow: a node killed (a failpoint's panic aborts it)
//! while it writes its keyring or its wrapped data key — before the new file is renamed
//! into place, or right after — starts again and serves, because each file is written
//! to a temporary file, synced, renamed and the directory synced; and a node killed while
//! it saves an HNSW graph keeps every record and serves queries after its restart.

use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

use conifer_node::crypto::{DATA_KEY_FILE, KEYRING_FILE};
use conifer_tests::{serve_command, Cluster, ClusterOptions, KillOnDrop};
use reqwest::Method;
use serde_json::{json, Value};

/// `conifer serve` of a new single node in `dir`, with `failpoints` (fail-rs syntax) set.
fn serve(dir: &Path, failpoints: Option<&str>) -> KillOnDrop {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("serve.log"))
        .unwrap();
    let mut cmd = serve_command(dir);
    cmd.stdout(log.try_clone().unwrap()).stderr(log);
    if let Some(f) = failpoints {
        cmd.env("FAILPOINTS", f);
    }
    KillOnDrop(cmd.spawn().unwrap())
}

fn log(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("serve.log")).unwrap_or_default()
}

/// Waits (60 s) for the node to die at its failpoint (`name` in its log).
fn wait_crash(child: &mut Child, dir: &Path, name: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(!status.success(), "serve exited cleanly:\n{}", log(dir));
            assert!(
                log(dir).contains(name),
                "died elsewhere than at {name}:\n{}",
                log(dir)
            );
            return;
        }
        assert!(Instant::now() < deadline, "no crash:\n{}", log(dir));
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits (60 s) until the node has bootstrapped (bootstrap.json) and still runs.
fn wait_bootstrapped(child: &mut Child, dir: &Path) {
    let boot = dir.join("data").join("bootstrap.json");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !boot.exists() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "serve exited:\n{}",
            log(dir)
        );
        assert!(Instant::now() < deadline, "no bootstrap:\n{}", log(dir));
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(child.try_wait().unwrap().is_none(), "{}", log(dir));
}

/// Crashes a new node at `failpoints`, checks what is on disk with `after_crash`, then
/// starts it again without failpoints and requires it to bootstrap.
fn crash_then_restart(failpoints: &str, after_crash: impl Fn(&Path)) {
    let dir = tempfile::tempdir().unwrap();
    let mut first = serve(dir.path(), Some(failpoints));
    let name = failpoints.split('=').next().unwrap_or(failpoints);
    wait_crash(&mut first.0, dir.path(), name);
    after_crash(&dir.path().join("data"));
    let mut again = serve(dir.path(), None);
    wait_bootstrapped(&mut again.0, dir.path());
}

#[test]
fn a_crash_before_the_keyring_is_renamed_leaves_no_keyring_and_the_node_starts_again() {
    crash_then_restart("conifer::crypto::write::before_rename=panic", |data| {
        assert!(!data.join(KEYRING_FILE).exists(), "a keyring was renamed");
        assert!(
            data.join(KEYRING_FILE).with_extension("tmp").exists(),
            "the crash came before the keyring's temporary file was written"
        );
        assert!(!data.join(DATA_KEY_FILE).exists());
    });
}

#[test]
fn a_crash_before_the_data_key_is_renamed_keeps_the_keyring_and_the_node_starts_again() {
    crash_then_restart(
        "conifer::crypto::write::before_rename=1*off->panic",
        |data| {
            assert!(data.join(KEYRING_FILE).exists());
            assert!(!data.join(DATA_KEY_FILE).exists(), "a data key was renamed");
        },
    );
}

#[test]
fn a_crash_right_after_the_data_key_is_renamed_keeps_both_and_the_node_starts_again() {
    crash_then_restart(
        "conifer::crypto::write::after_rename=1*off->panic",
        |data| {
            assert!(data.join(KEYRING_FILE).exists());
            assert!(data.join(DATA_KEY_FILE).exists());
        },
    );
}

/// Whether process `pid` has exited (a zombie waiting to be reaped counts as exited).
fn exited(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| {
            stat.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
        .unwrap_or(true)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_while_an_hnsw_graph_is_saved_keeps_every_record() {
    const RECORDS: usize = 60;
    let mut cluster = Cluster::start_with(ClusterOptions {
        nodes: 1,
        env: vec![
            // Past 20 records a namespace is served by HNSW, whose graph is then saved at
            // a snapshot — where the failpoint aborts the node.
            ("CONIFER_HNSW_MIN_RECORDS".into(), "20".into()),
            (
                "FAILPOINTS".into(),
                "conifer::shard::checkpoint::before_stage=panic".into(),
            ),
        ],
        ..ClusterOptions::default()
    })
    .await
    .unwrap();
    let key = cluster.api_key();
    cluster
        .create_index(1, &key, "graph", 4, "cosine")
        .await
        .unwrap();
    let vectors: Vec<Value> = (0..RECORDS)
        .map(|i| json!({"id": format!("r{i}"), "values": [1.0, i as f32, 2.0, (i % 7) as f32]}))
        .collect();
    let resp = cluster
        .data(1, &key, "graph", Method::POST, "/vectors/upsert")
        .json(&json!({"vectors": vectors}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status().as_u16(),
        200,
        "{}",
        resp.text().await.unwrap()
    );

    let pid = cluster.node(1).pid().expect("node 1 runs");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !exited(pid) {
        assert!(
            Instant::now() < deadline,
            "node 1 did not reach the checkpoint failpoint"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let node = cluster.node(1);
    let log = std::fs::read_to_string(node.data_dir.with_extension("log")).unwrap_or_default();
    assert!(
        log.contains("conifer::shard::checkpoint::before_stage"),
        "node 1 died elsewhere than at the checkpoint failpoint:\n{log}"
    );
    node.kill();
    node.env.retain(|(k, _)| k != "FAILPOINTS");
    node.spawn().unwrap();
    cluster.wait_serving(1).await.unwrap();

    let stats: Value = cluster
        .data(1, &key, "graph", Method::POST, "/describe_index_stats")
        .json(&json!({}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stats["totalVectorCount"], RECORDS, "{stats}");
    let found: Value = cluster
        .data(1, &key, "graph", Method::POST, "/query")
        .json(&json!({"id": "r10", "topK": 3}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(found["matches"][0]["id"], "r10", "{found}");
}
