//! `conifer audit list | export | verify`: reading the audit log through any node.
//!
//! `export` streams every matching event as one JSON line on standard output, page by page,
//! with a progress bar on standard error. `verify` recomputes a chain: from the cluster
//! (every retained event, checked against the replicated anchor and head), or from an
//! exported file (every link inside it, and its last event against the cluster's copy).

use std::io::{BufRead, Write};
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use conifer_client::AdminClient;
use serde_json::Value;

use super::admin::{client, print, Connection, OutputFormat};
use crate::audit::{AuditEvent, ChainHead, PrunedRun, Verifier};

/// Events asked for per page by `export` and `verify`.
const PAGE_EVENTS: usize = 1_000;

/// Flags of `conifer audit`.
#[derive(Args, Debug)]
pub struct AuditArgs {
    /// Connection flags.
    #[command(flatten)]
    pub connection: Connection,
    /// The command.
    #[command(subcommand)]
    pub command: AuditCommand,
}

/// Which chain, and which of its events.
#[derive(Args, Debug, Clone, Default)]
pub struct Selection {
    /// Organization [default: the caller's own].
    #[arg(long)]
    pub org: Option<String>,
    /// The cluster chain (operator tokens, signing keys, unknown sign-ins) instead.
    #[arg(long, conflicts_with = "org")]
    pub cluster: bool,
    /// Earliest event time, RFC 3339 (inclusive).
    #[arg(long)]
    pub since: Option<String>,
    /// Latest event time, RFC 3339 (exclusive).
    #[arg(long)]
    pub until: Option<String>,
    /// Only this action, in Pinecone's audit vocabulary: create, update, delete, login
    /// (or read, for refused reads).
    #[arg(long)]
    pub action: Option<String>,
    /// Only this operation, Conifer's finer name (e.g. api_key.delete, project.member.add).
    #[arg(long)]
    pub operation: Option<String>,
    /// Only this resource type (organization, user, project, index, api-key,
    /// service-account, operator-token, signing-key, audit-log, cluster).
    #[arg(long)]
    pub resource_type: Option<String>,
    /// Only events whose resource id is this value, or lists it, or names it in a field
    /// (an index or project name, an API key id, a user's email).
    #[arg(long)]
    pub resource_id: Option<String>,
    /// Only this actor (id or name).
    #[arg(long)]
    pub actor: Option<String>,
    /// Only `success` or `failure`.
    #[arg(long)]
    pub outcome: Option<String>,
}

impl Selection {
    fn query(&self, limit: usize, after: Option<&str>) -> Vec<(String, String)> {
        let fields = [
            ("organization_id", &self.org),
            ("start_time", &self.since),
            ("end_time", &self.until),
            ("action", &self.action),
            ("operation", &self.operation),
            ("resource_type", &self.resource_type),
            ("resource_id", &self.resource_id),
            ("actor", &self.actor),
            ("outcome", &self.outcome),
        ];
        let mut query: Vec<(String, String)> = fields
            .into_iter()
            .filter_map(|(k, v)| v.as_ref().map(|v| (k.to_string(), v.clone())))
            .collect();
        query.push(("limit".into(), limit.to_string()));
        if let Some(token) = after {
            query.push(("pagination_token".into(), token.to_string()));
        }
        query
    }
}

/// `conifer audit …`.
#[derive(Subcommand, Debug)]
pub enum AuditCommand {
    /// One page of events, oldest first.
    List {
        /// Which events.
        #[command(flatten)]
        selection: Selection,
        /// Events on the page (1 to 1000).
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Continue after this token (printed as `next` by the previous page).
        #[arg(long)]
        after: Option<String>,
    },
    /// Every matching event as JSON lines on standard output (progress on standard error).
    Export {
        /// Which events.
        #[command(flatten)]
        selection: Selection,
    },
    /// Recompute a chain's hashes and name the first broken link (exit status 1).
    Verify {
        /// Organization [default: the caller's own].
        #[arg(long)]
        org: Option<String>,
        /// The cluster chain instead.
        #[arg(long, conflicts_with = "org")]
        cluster: bool,
        /// Check an exported file instead of the cluster's events.
        #[arg(long)]
        file: Option<PathBuf>,
    },
}

/// Runs `conifer audit …`.
pub async fn run(args: AuditArgs) -> anyhow::Result<()> {
    let c = client(&args.connection, true)?;
    match args.command {
        AuditCommand::List {
            selection,
            limit,
            after,
        } => {
            let page = c
                .audit_logs(selection.cluster, &selection.query(limit, after.as_deref()))
                .await?;
            if args.connection.output == OutputFormat::Json {
                print(OutputFormat::Json, &page);
            } else {
                print_events(&page);
            }
        }
        AuditCommand::Export { selection } => export(&c, &selection).await?,
        AuditCommand::Verify { org, cluster, file } => {
            let selection = Selection {
                org,
                cluster,
                ..Selection::default()
            };
            let report = match file {
                Some(path) => verify_file(&c, &selection, &path).await?,
                None => verify_cluster(&c, &selection).await?,
            };
            println!("{report}");
        }
    }
    Ok(())
}

fn print_events(page: &Value) {
    let rows: Vec<Value> = page["data"]
        .as_array()
        .map(|events| {
            events
                .iter()
                .map(|e| {
                    serde_json::json!({
                        "sequence": e["sequence"],
                        "time": e["event"]["time"],
                        "action": e["event"]["action"],
                        "operation": e["event"]["operation"],
                        "actor": e["actor"]["principal_name"],
                        "resource": format!(
                            "{} {}",
                            e["event"]["resource_type"].as_str().unwrap_or_default(),
                            match &e["event"]["resource_id"] {
                                Value::String(id) => id.clone(),
                                Value::Null => String::new(),
                                other => other.to_string(),
                            }
                        ),
                        "result": e["event"]["outcome"]["result"],
                        "source_ip": e["source_ip"],
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    if rows.is_empty() {
        println!("(none)");
    } else {
        super::admin::print_table(
            &rows,
            &[
                "sequence",
                "time",
                "action",
                "operation",
                "actor",
                "resource",
                "result",
                "source_ip",
            ],
        );
    }
    if let Some(next) = page["pagination"]["next"].as_str() {
        println!("next: {next}");
    }
}

/// One item of a chain as its pages list it.
enum Item<'a> {
    /// An event, as the node sent it.
    Event(&'a Value),
    /// Refusals pruned for room between two kept events.
    Pruned(PrunedRun),
}

/// Walks every page of `selection`, handing each event and pruned run to `each` in sequence
/// order; returns the chain facts the first page reported.
async fn walk(
    c: &AdminClient,
    selection: &Selection,
    mut each: impl FnMut(Item<'_>, &ChainHead) -> anyhow::Result<()>,
) -> anyhow::Result<ChainHead> {
    let mut after: Option<String> = None;
    let mut head: Option<ChainHead> = None;
    loop {
        let page = c
            .audit_logs(
                selection.cluster,
                &selection.query(PAGE_EVENTS, after.as_deref()),
            )
            .await?;
        let chain_head: &ChainHead = head.get_or_insert(
            serde_json::from_value(page["chain"].clone())
                .context("the node's answer has no chain head")?,
        );
        let pruned: Vec<PrunedRun> =
            serde_json::from_value(page["pruned"].clone()).unwrap_or_default();
        let mut runs = pruned.into_iter().peekable();
        for event in page["data"].as_array().into_iter().flatten() {
            let sequence = event["sequence"].as_u64().unwrap_or(0);
            while let Some(run) = runs.next_if(|r| r.first_sequence < sequence) {
                each(Item::Pruned(run), chain_head)?;
            }
            each(Item::Event(event), chain_head)?;
        }
        for run in runs {
            each(Item::Pruned(run), chain_head)?;
        }
        match page["pagination"]["next"].as_str() {
            Some(next) => after = Some(next.to_string()),
            None => return head.context("no page was read"),
        }
    }
}

async fn export(c: &AdminClient, selection: &Selection) -> anyhow::Result<()> {
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let bar = indicatif::ProgressBar::new(0);
    bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} exporting audit events [{bar:30}] {pos}/{len} scanned, {msg} ({elapsed})",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let mut written = 0u64;
    walk(c, selection, |item, head| {
        bar.set_length(head.head_sequence.saturating_sub(head.anchor_sequence));
        let event = match item {
            Item::Event(event) => event,
            // Written as it is, so that `verify --file` steps over it.
            Item::Pruned(run) => {
                serde_json::to_writer(&mut out, &serde_json::json!({ "pruned": run }))?;
                out.write_all(b"\n")?;
                return Ok(());
            }
        };
        serde_json::to_writer(&mut out, event)?;
        out.write_all(b"\n")?;
        written += 1;
        let sequence = event["sequence"].as_u64().unwrap_or(0);
        bar.set_position(sequence.saturating_sub(head.anchor_sequence));
        bar.set_message(format!("{written} exported"));
        Ok(())
    })
    .await?;
    out.flush()?;
    bar.finish_and_clear();
    eprintln!("exported {written} audit event(s)");
    Ok(())
}

async fn verify_cluster(c: &AdminClient, selection: &Selection) -> anyhow::Result<String> {
    let mut verifier: Option<Verifier> = None;
    let head = walk(c, selection, |item, head| {
        let verifier = verifier.get_or_insert_with(|| Verifier::anchored(head));
        let value = match item {
            Item::Event(value) => value,
            Item::Pruned(run) => {
                if run.first_sequence <= head.head_sequence {
                    verifier.push_pruned(&run)?;
                }
                return Ok(());
            }
        };
        let event: AuditEvent =
            serde_json::from_value(value.clone()).context("an event does not parse")?;
        // Events appended after the first page are past the head it reported.
        if event.sequence <= head.head_sequence {
            verifier.push(&event)?;
        }
        Ok(())
    })
    .await?;
    let verifier = verifier.unwrap_or_else(|| Verifier::anchored(&head));
    let checked = verifier.finish(&head)?;
    Ok(format!(
        "audit chain intact: {checked} event(s) and {} pruned refusal(s) stepped over, sequences \
         {}..={}, head hash {}",
        verifier.pruned(),
        head.anchor_sequence + 1,
        head.head_sequence,
        head.head_hash
    ))
}

/// A pruned-run line of an export.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Pruned {
    pruned: PrunedRun,
}

async fn verify_file(
    c: &AdminClient,
    selection: &Selection,
    path: &PathBuf,
) -> anyhow::Result<String> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut verifier = Verifier::new(None);
    let mut last: Option<AuditEvent> = None;
    for (n, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        if let Ok(Pruned { pruned }) = serde_json::from_str::<Pruned>(&line) {
            verifier.push_pruned(&pruned)?;
            continue;
        }
        let event: AuditEvent = serde_json::from_str(&line)
            .with_context(|| format!("{} line {}: not an audit event", path.display(), n + 1))?;
        verifier.push(&event)?;
        last = Some(event);
    }
    let Some(last) = last else {
        bail!("{} holds no events", path.display());
    };
    // The file's links hold; its last event must also be the cluster's event at that place,
    // or an edit of the tail (re-hashed) would pass.
    let page = c
        .audit_logs(selection.cluster, &{
            let mut query = Selection {
                org: selection.org.clone().or(last.organization_id.clone()),
                ..selection.clone()
            }
            .query(1, None);
            query.push(("after_sequence".into(), (last.sequence - 1).to_string()));
            query
        })
        .await?;
    let theirs = page["data"][0]["hash"].as_str().unwrap_or_default();
    if theirs.is_empty() {
        bail!(
            "the cluster no longer holds event {} (sequence {}) to compare the file's end with",
            last.id,
            last.sequence
        );
    }
    if theirs != last.hash {
        bail!(
            "chain broken at sequence {} (event {}): the file's hash {} differs from the cluster's {theirs}",
            last.sequence,
            last.id,
            last.hash
        );
    }
    Ok(format!(
        "{}: {} event(s) intact, up to sequence {} which matches the cluster",
        path.display(),
        verifier.checked(),
        last.sequence
    ))
}
