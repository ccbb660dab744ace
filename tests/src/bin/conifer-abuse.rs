//! `conifer-abuse`: runs the abuse scenarios ([`conifer_tests::abuse`]) against a real
//! 3-node cluster and writes `report.json` and `report.md` with the figures each measured.
//! Exit status: 0 when every check held, 1 when one failed, 2 when the harness failed.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use conifer_tests::abuse::{self, Outcome, Scale, SCENARIOS};

#[derive(Parser, Debug)]
#[command(about = "Abuse scenarios against a real 3-node Conifer cluster, with figures")]
struct Args {
    /// Directory for report.json and report.md.
    #[arg(long)]
    out: PathBuf,
    /// `full` for the report's figures (minutes), `short` for a quick pass.
    #[arg(long, value_enum, default_value = "full")]
    scale: Scale,
    /// Only these scenarios (comma-separated; default: all).
    #[arg(long, value_delimiter = ',')]
    scenario: Vec<String>,
}

fn markdown(outcomes: &[Outcome], scale: Scale, seconds: u64) -> String {
    // `scripts/abuse/run.sh` builds the node and the harness with one profile.
    let build = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    let mut md = format!(
        "# Abuse harness report\n\nScale `{scale:?}`, a fresh 3-node cluster per scenario \
         ({build} build, this 2-core machine), {seconds} s in all. Each scenario's figures as measured; \
         `passed` means every check held. Produced by `scripts/abuse/run.sh`; the limits are \
         in [abuse.md](abuse.md).\n"
    );
    for o in outcomes {
        let _ = write!(
            md,
            "\n## {} — {}\n\n| figure | value |\n|---|---|\n",
            o.scenario,
            if o.passed { "passed" } else { "FAILED" }
        );
        if let Some(figures) = o.figures.as_object() {
            for (name, value) in figures {
                let _ = writeln!(md, "| {name} | `{value}` |");
            }
        }
        for failure in &o.failures {
            let _ = writeln!(md, "\n- failed: {failure}");
        }
    }
    md
}

fn main() -> ExitCode {
    let args = Args::parse();
    let selected: Vec<String> = if args.scenario.is_empty() {
        SCENARIOS.iter().map(|s| s.to_string()).collect()
    } else {
        args.scenario.clone()
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("conifer-abuse: {e}");
            return ExitCode::from(2);
        }
    };
    let started = Instant::now();
    let result: anyhow::Result<Vec<Outcome>> = runtime.block_on(async {
        std::fs::create_dir_all(&args.out)?;
        let mut outcomes = Vec::new();
        for name in &selected {
            // A cluster per scenario: each starts from the same state.
            eprintln!("==> scenario {name} ({:?})", args.scale);
            let mut cluster = abuse::start(name).await?;
            let outcome = abuse::run(&mut cluster, name, args.scale).await?;
            eprintln!(
                "    {}: {}",
                if outcome.passed { "passed" } else { "FAILED" },
                outcome.figures
            );
            for failure in &outcome.failures {
                eprintln!("    failed: {failure}");
            }
            outcomes.push(outcome);
        }
        Ok(outcomes)
    });
    let outcomes = match result {
        Ok(o) => o,
        Err(e) => {
            eprintln!("conifer-abuse: {e:#}");
            return ExitCode::from(2);
        }
    };
    let seconds = started.elapsed().as_secs();
    let json =
        serde_json::json!({ "scale": args.scale, "seconds": seconds, "scenarios": outcomes });
    let written = std::fs::write(
        args.out.join("report.json"),
        serde_json::to_string_pretty(&json).unwrap_or_default(),
    )
    .and_then(|()| {
        std::fs::write(
            args.out.join("report.md"),
            markdown(&outcomes, args.scale, seconds),
        )
    });
    if let Err(e) = written {
        eprintln!("conifer-abuse: writing the report: {e}");
        return ExitCode::from(2);
    }
    if outcomes.iter().all(|o| o.passed) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
