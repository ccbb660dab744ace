//! `conifer-chaos`: runs chaos schedules against real `conifer` nodes and writes the report.
//!
//! It re-executes itself inside a new user + network namespace (`unshare -rn`), where it may
//! cut links between node addresses without root. Exit status: 0 when every checker passed,
//! 1 when one found a violation, 2 when the harness itself failed.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, ExitCode};

use clap::Parser;
use conifer_tests::chaos::nemesis::FAULT_KINDS;
use conifer_tests::chaos::{self, netns, RunConfig};

/// Failpoints of the deliberately unsafe modes the checkers must catch.
const UNSAFE_MODES: &[(&str, &str)] = &[
    // Upserts acknowledged before they are committed: linearizability and durability.
    (
        "ack-before-commit",
        "conifer::write::ack_before_commit=return",
    ),
    // Credentials checked without a lease: the revocation bound.
    ("no-lease", "conifer::auth::ignore_lease=return"),
    // About half the control-plane changes applied without their audit event: the audit
    // checker.
    ("drop-audit-events", "conifer::audit::drop_event=return"),
    // Peers noticed dead only after the old 15 s keepalive, and cut-off leaders that wait
    // out the partition: the failover checker.
    (
        "no-failover",
        "conifer::peer::slow_keepalive=return;raft::propose::no_quorum_check=return",
    ),
];

#[derive(Parser, Debug)]
#[command(about = "Chaos schedules against a real Conifer cluster, with checkers")]
struct Args {
    /// Number of schedules.
    #[arg(long, default_value_t = 1)]
    schedules: u32,
    /// Directory for history.jsonl and summary.json.
    #[arg(long)]
    out: PathBuf,
    /// Seed of the first schedule (default: from the clock; always printed).
    #[arg(long)]
    seed: Option<u64>,
    /// Nodes per cluster (3 to 5).
    #[arg(long, default_value_t = 5)]
    nodes: usize,
    /// Length of each schedule's fault phase, in seconds.
    #[arg(long, default_value_t = 20)]
    duration_s: u64,
    /// Run the nodes in a deliberately unsafe mode (ack-before-commit, no-lease,
    /// drop-audit-events, no-failover) to show the checkers catch it.
    #[arg(long = "unsafe")]
    unsafe_mode: Option<String>,
    /// Failpoints every node starts with (fail-rs syntax, e.g. `raft::apply::before=1%panic`).
    #[arg(long)]
    failpoints: Option<String>,
    /// Only these kinds of fault, comma-separated (default: all), e.g.
    /// `partition-split,isolate-control-leader`.
    #[arg(long, value_delimiter = ',')]
    faults: Vec<String>,
    /// Shortest and longest hold of a fault, in ms (`MIN-MAX`).
    #[arg(long, value_parser = parse_range, default_value = "1000-4000")]
    hold_ms: (u64, u64),
}

fn parse_range(text: &str) -> Result<(u64, u64), String> {
    let (min, max) = text
        .split_once('-')
        .ok_or_else(|| format!("expected MIN-MAX, got {text:?}"))?;
    let min: u64 = min.trim().parse().map_err(|e| format!("{min:?}: {e}"))?;
    let max: u64 = max.trim().parse().map_err(|e| format!("{max:?}: {e}"))?;
    if min > max {
        return Err(format!("{min} is more than {max}"));
    }
    Ok((min, max))
}

fn main() -> ExitCode {
    let args = Args::parse();
    if !netns::inside() {
        let exe = std::env::current_exe().expect("own executable path");
        let err = Command::new("unshare")
            .arg("-rn")
            .arg("--")
            .arg(exe)
            .args(std::env::args_os().skip(1))
            .env(netns::NETNS_ENV, "1")
            .exec();
        eprintln!("cannot enter a new network namespace with `unshare -rn`: {err}");
        return ExitCode::from(2);
    }
    if let Some(unknown) = args
        .faults
        .iter()
        .find(|f| !FAULT_KINDS.contains(&f.as_str()))
    {
        eprintln!(
            "unknown fault kind {unknown:?}; known: {}",
            FAULT_KINDS.join(", ")
        );
        return ExitCode::from(2);
    }
    if !(3..=5).contains(&args.nodes) {
        eprintln!("--nodes must be 3, 4 or 5");
        return ExitCode::from(2);
    }
    let failpoints = match (&args.unsafe_mode, &args.failpoints) {
        (Some(mode), extra) => {
            let Some((_, fp)) = UNSAFE_MODES.iter().find(|(name, _)| name == mode) else {
                let known: Vec<&str> = UNSAFE_MODES.iter().map(|(name, _)| *name).collect();
                eprintln!("unknown unsafe mode {mode:?}; known: {}", known.join(", "));
                return ExitCode::from(2);
            };
            Some(match extra {
                Some(e) => format!("{fp};{e}"),
                None => fp.to_string(),
            })
        }
        (None, extra) => extra.clone(),
    };
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default()
    });
    println!(
        "conifer-chaos: {} schedule(s) on {} nodes, seed {seed} (replay with --seed {seed}), failpoints {:?}",
        args.schedules, args.nodes, failpoints
    );
    let config = RunConfig {
        nodes: args.nodes,
        schedules: args.schedules,
        seed,
        duration_ms: args.duration_s * 1_000,
        failpoints,
        faults: args.faults,
        hold_ms: args.hold_ms,
        out_dir: args.out,
    };
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    match runtime.block_on(chaos::run(&config)) {
        Ok(summary) => {
            println!(
                "conifer-chaos: {} schedules, {} ops ok, {} acknowledged writes: {} lost, {} linearizability violation(s) ({} keys, {} unchecked), {} convergence failure(s), {} revoked-credential accept(s) past {} ms (longest accepted delay {:.0} ms), {} audited action(s) with {} audit mismatch(es), {} root key rotation(s) with {} unsettled, {} write(s) while a leader was cut off: {} unanswered (answered within {:.0} ms at p99, {:.0} ms at most)",
                summary.schedules,
                summary.ops_ok,
                summary.acknowledged_writes,
                summary.lost_acknowledged_writes,
                summary.linearizability_violations,
                summary.linearizability_keys,
                summary.linearizability_unchecked,
                summary.convergence_failures,
                summary.revoked_credential_accepts_past_bound,
                summary.revocation_bound_ms,
                summary.max_accepted_delay_ms,
                summary.audited_actions,
                summary.audit_mismatches,
                summary.root_key_rotations,
                summary.root_key_failures,
                summary.failover_writes,
                summary.failover_unanswered,
                summary.failover_p99_answer_ms,
                summary.failover_max_answer_ms,
            );
            if summary.violations == 0 {
                ExitCode::SUCCESS
            } else {
                println!(
                    "conifer-chaos: {} violation(s); see summary.json",
                    summary.violations
                );
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("conifer-chaos: harness failed: {e:#}");
            ExitCode::from(2)
        }
    }
}
