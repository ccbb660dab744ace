//! The CLI's backup commands: `conifer backup …`, `conifer restore-job …` and
//! `conifer collection …`, with a project API key like the index commands. Writing a
//! backup and restoring one are followed with a progress display until they end.

use std::time::{Duration, Instant};

use anyhow::bail;
use clap::{Args, Subcommand};
use conifer_client::AdminClient;
use serde_json::{json, Value};

use super::admin::print;
use super::data::{DataConnection, Switch};

/// How long `backup create` and `backup restore` wait by default before they give up
/// (the job carries on).
pub const DEFAULT_WAIT_S: u64 = 3_600;

/// Flags of `conifer backup`.
#[derive(Args, Debug)]
#[command(after_help = "Examples:
  conifer backup create docs --name nightly
  conifer backup list --index docs
  conifer backup restore 6f1c… --name docs-restored --replicas 1 --hnsw-m 16
  conifer backup delete 6f1c…")]
pub struct BackupArgs {
    /// Connection flags.
    #[command(flatten)]
    pub connection: DataConnection,
    /// The command.
    #[command(subcommand)]
    pub command: BackupCommand,
}

/// `conifer backup …`.
#[derive(Subcommand, Debug)]
pub enum BackupCommand {
    /// Back up an index (a consistent copy at one point of its history, taken while it
    /// serves) and wait until the backup is ready.
    Create {
        /// The index.
        index: String,
        /// A name for the backup (at most 45 characters).
        #[arg(long)]
        name: Option<String>,
        /// A description.
        #[arg(long)]
        description: Option<String>,
        /// Return at once instead of waiting for the backup to be ready.
        #[arg(long)]
        no_wait: bool,
        /// Longest wait, in seconds (the backup carries on).
        #[arg(long, default_value_t = DEFAULT_WAIT_S)]
        timeout_s: u64,
    },
    /// The project's backups (of one index, also after it was deleted, with --index).
    List {
        /// Only the backups of this index.
        #[arg(long)]
        index: Option<String>,
    },
    /// One backup: status, records, size, log position, record-set digest.
    Describe {
        /// Backup id.
        id: String,
    },
    /// Delete a backup and its files.
    Delete {
        /// Backup id.
        id: String,
    },
    /// Create a new index from a backup, in another configuration if asked, and follow the
    /// restore job with a progress bar. The whole backup is checked first: a damaged one is
    /// refused and nothing is created.
    Restore {
        /// Backup id.
        id: String,
        /// Name of the new index.
        #[arg(long)]
        name: String,
        /// Replicas of the new index's shard (1 to 3; default: as many as the cluster has,
        /// up to 3).
        #[arg(long)]
        replicas: Option<u32>,
        /// HNSW graph degree M of the new index.
        #[arg(long)]
        hnsw_m: Option<u32>,
        /// HNSW efConstruction of the new index.
        #[arg(long)]
        hnsw_ef_construction: Option<u32>,
        /// HNSW efSearch of the new index.
        #[arg(long)]
        hnsw_ef_search: Option<u32>,
        /// Deletion protection of the new index.
        #[arg(long, value_enum)]
        deletion_protection: Option<Switch>,
        /// A tag KEY=VALUE of the new index (repeatable).
        #[arg(long = "tag", value_parser = super::data::parse_tag)]
        tags: Vec<(String, String)>,
        /// Return once the job started instead of following it.
        #[arg(long)]
        no_wait: bool,
        /// Longest wait, in seconds (the job carries on).
        #[arg(long, default_value_t = DEFAULT_WAIT_S)]
        timeout_s: u64,
    },
}

/// Flags of `conifer restore-job`.
#[derive(Args, Debug)]
#[command(after_help = "Examples:
  conifer restore-job list
  conifer restore-job describe 2b9e…")]
pub struct RestoreJobArgs {
    /// Connection flags.
    #[command(flatten)]
    pub connection: DataConnection,
    /// The command.
    #[command(subcommand)]
    pub command: RestoreJobCommand,
}

/// `conifer restore-job …`.
#[derive(Subcommand, Debug)]
pub enum RestoreJobCommand {
    /// The project's restore jobs.
    List,
    /// One restore job: status, percent complete, records restored, error.
    Describe {
        /// Restore job id.
        id: String,
    },
}

/// Flags of `conifer collection`.
#[derive(Args, Debug)]
#[command(after_help = "Examples:
  conifer collection create docs-2026 --source docs
  conifer collection list
  conifer index create … (with spec source_collection through the API) ")]
pub struct CollectionArgs {
    /// Connection flags.
    #[command(flatten)]
    pub connection: DataConnection,
    /// The command.
    #[command(subcommand)]
    pub command: CollectionCommand,
}

/// `conifer collection …`.
#[derive(Subcommand, Debug)]
pub enum CollectionCommand {
    /// Copy an index into a named collection and wait until it is ready.
    Create {
        /// Collection name: lowercase letters, digits and '-', at most 45 characters.
        name: String,
        /// The index to copy.
        #[arg(long)]
        source: String,
        /// Return at once instead of waiting for the collection to be ready.
        #[arg(long)]
        no_wait: bool,
    },
    /// The project's collections.
    List,
    /// One collection.
    Describe {
        /// Collection name.
        name: String,
    },
    /// Delete a collection and its files.
    Delete {
        /// Collection name.
        name: String,
    },
}

/// Whether a failed poll may succeed when asked again: the node was unavailable (503,
/// 429) or could not be reached.
fn transient(e: &conifer_client::ClientError) -> bool {
    matches!(
        e,
        conifer_client::ClientError::Transport(_)
            | conifer_client::ClientError::Api {
                status: 429 | 503,
                ..
            }
    )
}

fn spinner(template: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
    bar.set_style(
        indicatif::ProgressStyle::with_template(template)
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
    );
    bar
}

/// Polls a backup (or collection, through `describe`) until it leaves `Initializing`;
/// fails when it failed or `timeout` passed.
async fn wait_written<F, Fut>(what: &str, timeout: Duration, describe: F) -> anyhow::Result<Value>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<Value, conifer_client::ClientError>>,
{
    let bar = spinner("{spinner} writing {msg} ({elapsed})");
    bar.set_message(what.to_string());
    let what = what.to_string();
    let deadline = Instant::now() + timeout;
    loop {
        let current = match describe().await {
            Ok(current) => current,
            Err(e) if transient(&e) && Instant::now() < deadline => {
                bar.set_message(format!("{what} (a node is busy: {e}; asking again)"));
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            Err(e) => {
                bar.abandon();
                bail!("{e}; {what} carries on — follow it with `conifer backup describe`");
            }
        };
        match current["status"].as_str() {
            Some("Ready") => {
                bar.finish_and_clear();
                eprintln!(
                    "{what} ready: {} records, {} bytes",
                    current["record_count"]
                        .as_u64()
                        .or(current["vector_count"].as_u64())
                        .unwrap_or(0),
                    current["size_bytes"]
                        .as_u64()
                        .or(current["size"].as_u64())
                        .unwrap_or(0)
                );
                return Ok(current);
            }
            Some("Initializing") => {}
            _ => {
                bar.abandon();
                bail!(
                    "{what} failed: {}",
                    current["error"].as_str().unwrap_or("no reason given")
                );
            }
        }
        if Instant::now() >= deadline {
            bar.abandon();
            bail!(
                "{what} is still being written after {} s; it carries on",
                timeout.as_secs()
            );
        }
        bar.tick();
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Follows restore job `id` with a progress bar of records restored until it ends.
async fn follow_restore(c: &AdminClient, id: &str, timeout: Duration) -> anyhow::Result<Value> {
    let bar = indicatif::ProgressBar::new(0);
    bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} restoring [{bar:30}] {pos}/{len} records ({percent}%, {elapsed})",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let deadline = Instant::now() + timeout;
    loop {
        let job = match c.describe_restore_job(id).await {
            Ok(job) => job,
            Err(e) if transient(&e) && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            Err(e) => {
                bar.abandon();
                bail!(
                    "{e}; restore job {id} carries on — follow it with `conifer restore-job \
                     describe {id}`"
                );
            }
        };
        bar.set_length(job["records_total"].as_u64().unwrap_or(0));
        bar.set_position(job["records_restored"].as_u64().unwrap_or(0));
        match job["status"].as_str() {
            Some("Completed") => {
                bar.finish_and_clear();
                eprintln!(
                    "index {} restored: {} records",
                    job["target_index_name"].as_str().unwrap_or_default(),
                    job["records_restored"]
                );
                return Ok(job);
            }
            Some("Pending") => {}
            _ => {
                bar.abandon();
                bail!(
                    "restore job {id} failed (its index was removed): {}",
                    job["error"].as_str().unwrap_or("no reason given")
                );
            }
        }
        if Instant::now() >= deadline {
            bar.abandon();
            bail!(
                "restore job {id} is still running after {} s; it carries on — follow it with \
                 `conifer restore-job describe {id}`",
                timeout.as_secs()
            );
        }
        bar.tick();
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The columns of `backup list`.
fn backup_row(b: &Value) -> Value {
    json!({
        "backup_id": b["backup_id"],
        "name": b["name"],
        "source_index_name": b["source_index_name"],
        "status": b["status"],
        "record_count": b["record_count"],
        "size_bytes": b["size_bytes"],
        "created_at": b["created_at"],
    })
}

/// Runs `conifer backup …`.
pub async fn run_backup(args: BackupArgs) -> anyhow::Result<()> {
    let c = args.connection.client()?;
    let value = match args.command {
        BackupCommand::Create {
            index,
            name,
            description,
            no_wait,
            timeout_s,
        } => {
            let mut body = json!({});
            if let Some(name) = name {
                body["name"] = json!(name);
            }
            if let Some(description) = description {
                body["description"] = json!(description);
            }
            let created = c.create_backup(&index, body).await?;
            let id = created["backup_id"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            if no_wait {
                created
            } else {
                let what = format!("backup {id} of index {index}");
                wait_written(&what, Duration::from_secs(timeout_s), || {
                    c.describe_backup(&id)
                })
                .await?
            }
        }
        BackupCommand::List { index } => Value::Array(
            c.list_backups(index.as_deref())
                .await?
                .iter()
                .map(backup_row)
                .collect(),
        ),
        BackupCommand::Describe { id } => c.describe_backup(&id).await?,
        BackupCommand::Delete { id } => {
            c.delete_backup(&id).await?;
            eprintln!("deleted backup {id}");
            return Ok(());
        }
        BackupCommand::Restore {
            id,
            name,
            replicas,
            hnsw_m,
            hnsw_ef_construction,
            hnsw_ef_search,
            deletion_protection,
            tags,
            no_wait,
            timeout_s,
        } => {
            let mut body = json!({"name": name});
            if let Some(n) = replicas {
                body["replicas"] = json!(n);
            }
            let mut hnsw = serde_json::Map::new();
            for (key, value) in [
                ("m", hnsw_m),
                ("ef_construction", hnsw_ef_construction),
                ("ef_search", hnsw_ef_search),
            ] {
                if let Some(v) = value {
                    hnsw.insert(key.into(), json!(v));
                }
            }
            if !hnsw.is_empty() {
                body["hnsw"] = Value::Object(hnsw);
            }
            if let Some(p) = deletion_protection {
                body["deletion_protection"] = json!(format!("{p:?}").to_lowercase());
            }
            if !tags.is_empty() {
                body["tags"] =
                    Value::Object(tags.into_iter().map(|(k, v)| (k, json!(v))).collect());
            }
            let started = c.create_index_from_backup(&id, body).await?;
            let job = started["restore_job_id"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            eprintln!("restore job {job}: creating index {name} from backup {id}");
            if no_wait {
                started
            } else {
                follow_restore(&c, &job, Duration::from_secs(timeout_s)).await?
            }
        }
    };
    print(args.connection.output, &value);
    Ok(())
}

/// Runs `conifer restore-job …`.
pub async fn run_restore_job(args: RestoreJobArgs) -> anyhow::Result<()> {
    let c = args.connection.client()?;
    let value = match args.command {
        RestoreJobCommand::List => Value::Array(c.list_restore_jobs().await?),
        RestoreJobCommand::Describe { id } => c.describe_restore_job(&id).await?,
    };
    print(args.connection.output, &value);
    Ok(())
}

/// Runs `conifer collection …`.
pub async fn run_collection(args: CollectionArgs) -> anyhow::Result<()> {
    let c = args.connection.client()?;
    let value = match args.command {
        CollectionCommand::Create {
            name,
            source,
            no_wait,
        } => {
            let created = c.create_collection(&name, &source).await?;
            if no_wait {
                created
            } else {
                let what = format!("collection {name}");
                wait_written(&what, Duration::from_secs(DEFAULT_WAIT_S), || {
                    c.describe_collection(&name)
                })
                .await?
            }
        }
        CollectionCommand::List => Value::Array(c.list_collections().await?),
        CollectionCommand::Describe { name } => c.describe_collection(&name).await?,
        CollectionCommand::Delete { name } => {
            c.delete_collection(&name).await?;
            eprintln!("deleted collection {name}");
            return Ok(());
        }
    };
    print(args.connection.output, &value);
    Ok(())
}
