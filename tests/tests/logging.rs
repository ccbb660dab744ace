//! Node logs: plain text without ANSI codes when stderr is not a terminal, and one JSON
//! object a line with `--log-format json` (`CONIFER_LOG_FORMAT`).

use conifer_tests::{Cluster, ClusterOptions};
use serde_json::Value;

/// Whether `line` is a log line in the text format (level after the timestamp).
fn is_text_log_line(line: &str) -> bool {
    [" INFO ", " WARN ", " ERROR ", " DEBUG "]
        .iter()
        .any(|level| line.contains(level))
}

#[tokio::test(flavor = "multi_thread")]
async fn logs_are_plain_off_a_terminal_and_json_when_asked() {
    let text = Cluster::start(1).await.unwrap();
    let log = text.nodes[0].log();
    assert!(
        log.lines()
            .any(|l| is_text_log_line(l) && l.contains("node listening")),
        "{log}"
    );
    assert!(
        !log.contains('\u{1b}'),
        "an ANSI escape in a log written to a file:\n{log}"
    );
    drop(text);

    let json = Cluster::start_with(ClusterOptions {
        nodes: 1,
        env: vec![("CONIFER_LOG_FORMAT".into(), "json".into())],
        ..ClusterOptions::default()
    })
    .await
    .unwrap();
    let log = json.nodes[0].log();
    let events: Vec<Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .collect();
    assert!(
        events
            .iter()
            .any(|e| e["level"] == "INFO" && e["fields"]["message"] == "node listening"),
        "{log}"
    );
    assert!(
        events
            .iter()
            .all(|e| e["timestamp"].is_string() && e["target"].is_string()),
        "{log}"
    );
    let text_lines: Vec<&str> = log.lines().filter(|l| is_text_log_line(l)).collect();
    assert!(
        text_lines.is_empty(),
        "text log lines with --log-format json: {text_lines:?}"
    );
}

#[test]
fn an_unparsable_log_level_is_refused_with_its_name() {
    let out = std::process::Command::new(conifer_tests::conifer_bin())
        .args(["--log-level", "info,=[", "policy"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--log-level \"info,=[\""), "{stderr}");
}
