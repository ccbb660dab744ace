//! The CLI's index and data commands: `conifer index …`, `conifer vectors …` and
//! `conifer namespace …`. They authenticate with a project's API key (`Api-Key`, as the
//! Pinecone SDKs do) and reach an index through any node's client port with the
//! `X-Conifer-Index` header, so they need neither DNS nor the index's own port.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Subcommand, ValueEnum};
use conifer_client::Method;
use conifer_client::{AdminClient, ClientError};
use serde_json::{json, Map, Value};

use super::admin::{endpoint, print, OutputFormat};

/// Records sent in one upsert request by default (Pinecone's recommended batch).
pub const DEFAULT_UPSERT_BATCH: usize = 100;
/// Most records in one upsert request (Pinecone's limit).
pub const MAX_UPSERT_BATCH: usize = 1_000;
/// Attempts of one batch that meets a momentary refusal (429, 503, no connection).
pub const UPSERT_ATTEMPTS: u32 = 5;
/// Wait before the first retry of a batch; doubled on each further one.
pub const UPSERT_RETRY_FIRST_MS: u64 = 500;
/// How long `index create` waits for the index to be ready.
pub const INDEX_READY_TIMEOUT_S: u64 = 120;

/// Where and with which API key the index and data commands connect.
#[derive(Args, Debug)]
pub struct DataConnection {
    /// URL of any node's client port, e.g. https://127.0.0.1:7443 [default: from --bootstrap].
    #[arg(long, env = "CONIFER_API_URL", global = true)]
    pub api_url: Option<String>,
    /// CA certificate the nodes' client certificates chain to, trusted besides the system's
    /// [default: from --bootstrap].
    #[arg(long, env = "CONIFER_CA_CERT", global = true)]
    pub ca_cert: Option<PathBuf>,
    /// API key of the project [default: CONIFER_API_KEY, else the api_key of --bootstrap,
    /// else asked for without echo].
    #[arg(long, env = "CONIFER_API_KEY", global = true, hide_env_values = true)]
    pub api_key: Option<String>,
    /// A node's bootstrap.json, for the URL, CA and API key.
    #[arg(long, env = "CONIFER_BOOTSTRAP", global = true)]
    pub bootstrap: Option<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = OutputFormat::Table, global = true)]
    pub output: OutputFormat,
}

impl DataConnection {
    fn client(&self) -> anyhow::Result<AdminClient> {
        let (client, boot) = endpoint(
            self.api_url.clone(),
            self.ca_cert.clone(),
            self.bootstrap.as_deref(),
        )?;
        let key = match (
            &self.api_key,
            boot.as_ref().and_then(|b| b["api_key"].as_str()),
        ) {
            (Some(key), _) => key.clone(),
            (None, Some(key)) => key.to_string(),
            (None, None) => super::admin::secret_from_terminal("API key")?,
        };
        Ok(client.with_api_key(&key))
    }
}

/// Flags of `conifer index`.
#[derive(Args, Debug)]
#[command(after_help = "Examples:
  conifer index create docs --dimension 384 --metric cosine --tag team=search
  conifer index list
  conifer index describe docs
  conifer index configure docs --deletion-protection enabled
  conifer index delete docs")]
pub struct IndexArgs {
    /// Connection flags.
    #[command(flatten)]
    pub connection: DataConnection,
    /// The command.
    #[command(subcommand)]
    pub command: IndexCommand,
}

/// The similarity metric of an index.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Metric {
    /// Cosine similarity, scores in [-1, 1].
    Cosine,
    /// Euclidean distance (squared), lower is nearer.
    Euclidean,
    /// Dot product.
    Dotproduct,
}

/// On or off, in Pinecone's words.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Switch {
    /// On.
    Enabled,
    /// Off.
    Disabled,
}

/// `conifer index …`.
#[derive(Subcommand, Debug)]
pub enum IndexCommand {
    /// Create a dense serverless index and wait until it is ready.
    Create {
        /// Index name: lowercase letters, digits and '-', at most 45 characters.
        name: String,
        /// Dimension of its vectors (1 to 20,000).
        #[arg(long)]
        dimension: u32,
        /// Similarity metric.
        #[arg(long, value_enum, default_value_t = Metric::Cosine)]
        metric: Metric,
        /// Refuse deletion until protection is disabled.
        #[arg(long)]
        deletion_protection: bool,
        /// A tag KEY=VALUE (repeatable).
        #[arg(long = "tag", value_parser = parse_tag)]
        tags: Vec<(String, String)>,
        /// Return at once instead of waiting for the index to be ready.
        #[arg(long)]
        no_wait: bool,
    },
    /// The project's indexes.
    List,
    /// One index: its host, dimension, metric, status and record count.
    Describe {
        /// Index name.
        name: String,
    },
    /// Change an index's deletion protection or tags.
    Configure {
        /// Index name.
        name: String,
        /// Deletion protection.
        #[arg(long, value_enum)]
        deletion_protection: Option<Switch>,
        /// A tag KEY=VALUE to set; KEY= removes it (repeatable).
        #[arg(long = "tag", value_parser = parse_tag)]
        tags: Vec<(String, String)>,
    },
    /// Delete an index and every record in it.
    Delete {
        /// Index name.
        name: String,
    },
}

fn parse_tag(text: &str) -> Result<(String, String), String> {
    let (k, v) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?}: expected KEY=VALUE"))?;
    Ok((k.to_string(), v.to_string()))
}

/// Flags of `conifer vectors`.
#[derive(Args, Debug)]
#[command(after_help = "Examples:
  conifer vectors upsert --index docs --file records.jsonl --namespace n
  conifer vectors query --index docs --vector '[0.1, 0.2, 0.3]' --top-k 5 --filter '{\"genre\": \"drama\"}'
  conifer vectors query --index docs --id doc-1 --include-metadata
  conifer vectors fetch --index docs --id doc-1 --id doc-2
  conifer vectors list --index docs --prefix doc-
  conifer vectors delete --index docs --id doc-1

Upsert files: JSON lines (.jsonl, .ndjson: one {\"id\", \"values\", \"metadata\"} object a line)
or CSV (.csv: columns id, values as a JSON array, optional metadata as a JSON object; any
other column becomes a metadata field, a number when it parses as one). Records that fail
are written to FILE.failed.jsonl; rerun upsert with that file to resume.")]
pub struct VectorsArgs {
    /// Connection flags.
    #[command(flatten)]
    pub connection: DataConnection,
    /// The command.
    #[command(subcommand)]
    pub command: VectorsCommand,
}

/// Format of an upsert file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum FileFormat {
    /// One JSON record a line.
    Jsonl,
    /// Comma-separated values with a header row.
    Csv,
}

/// `conifer vectors …`.
#[derive(Subcommand, Debug)]
pub enum VectorsCommand {
    /// Upsert records from a file in batches, with progress; failed records go to a file
    /// to resume from.
    Upsert {
        /// Index name.
        #[arg(long)]
        index: String,
        /// JSON lines or CSV file; `-` reads JSON lines from standard input.
        #[arg(long)]
        file: PathBuf,
        /// File format [default: by extension; JSON lines otherwise].
        #[arg(long, value_enum)]
        format: Option<FileFormat>,
        /// Namespace [default: the default namespace].
        #[arg(long, default_value = "")]
        namespace: String,
        /// Records per request (1 to 1,000).
        #[arg(long, default_value_t = DEFAULT_UPSERT_BATCH)]
        batch_size: usize,
        /// Where to write the records that failed [default: FILE.failed.jsonl].
        #[arg(long)]
        failed: Option<PathBuf>,
    },
    /// The nearest records to a vector, or to a stored record's vector.
    Query {
        /// Index name.
        #[arg(long)]
        index: String,
        /// The query vector as a JSON array.
        #[arg(long, conflicts_with = "id", required_unless_present = "id")]
        vector: Option<String>,
        /// Query with this stored record's vector.
        #[arg(long)]
        id: Option<String>,
        /// How many records (1 to 10,000).
        #[arg(long, default_value_t = 10)]
        top_k: u32,
        /// A metadata filter as JSON, e.g. '{"genre": {"$eq": "drama"}}'.
        #[arg(long)]
        filter: Option<String>,
        /// Namespace.
        #[arg(long, default_value = "")]
        namespace: String,
        /// Include each record's metadata.
        #[arg(long)]
        include_metadata: bool,
        /// Include each record's vector.
        #[arg(long)]
        include_values: bool,
    },
    /// Records by id.
    Fetch {
        /// Index name.
        #[arg(long)]
        index: String,
        /// Record id (repeatable).
        #[arg(long = "id", required = true)]
        ids: Vec<String>,
        /// Namespace.
        #[arg(long, default_value = "")]
        namespace: String,
    },
    /// Record ids, in pages.
    List {
        /// Index name.
        #[arg(long)]
        index: String,
        /// Only ids starting with this.
        #[arg(long)]
        prefix: Option<String>,
        /// Ids per page (1 to 100).
        #[arg(long)]
        limit: Option<u32>,
        /// Continue from this pagination token.
        #[arg(long)]
        pagination_token: Option<String>,
        /// Namespace.
        #[arg(long, default_value = "")]
        namespace: String,
    },
    /// Delete records by id, by filter, or all of a namespace.
    Delete {
        /// Index name.
        #[arg(long)]
        index: String,
        /// Record id (repeatable).
        #[arg(long = "id", conflicts_with_all = ["all", "filter"])]
        ids: Vec<String>,
        /// Every record of the namespace.
        #[arg(long, conflicts_with = "filter")]
        all: bool,
        /// Records matching this metadata filter (JSON).
        #[arg(long)]
        filter: Option<String>,
        /// Namespace.
        #[arg(long, default_value = "")]
        namespace: String,
    },
}

/// Flags of `conifer namespace`.
#[derive(Args, Debug)]
#[command(after_help = "Examples:
  conifer namespace list --index docs
  conifer namespace describe --index docs n
  conifer namespace delete --index docs n")]
pub struct NamespaceArgs {
    /// Connection flags.
    #[command(flatten)]
    pub connection: DataConnection,
    /// The command.
    #[command(subcommand)]
    pub command: NamespaceCommand,
}

/// `conifer namespace …`.
#[derive(Subcommand, Debug)]
pub enum NamespaceCommand {
    /// The index's namespaces and their record counts.
    List {
        /// Index name.
        #[arg(long)]
        index: String,
    },
    /// One namespace's record count.
    Describe {
        /// Index name.
        #[arg(long)]
        index: String,
        /// Namespace name.
        name: String,
    },
    /// Delete a namespace and every record in it.
    Delete {
        /// Index name.
        #[arg(long)]
        index: String,
        /// Namespace name.
        name: String,
    },
}

fn parse_json(flag: &str, text: &str) -> anyhow::Result<Value> {
    serde_json::from_str(text).with_context(|| format!("--{flag} is not valid JSON"))
}

/// Runs `conifer index …`.
pub async fn run_index(args: IndexArgs) -> anyhow::Result<()> {
    let c = args.connection.client()?;
    let value = match args.command {
        IndexCommand::Create {
            name,
            dimension,
            metric,
            deletion_protection,
            tags,
            no_wait,
        } => {
            let mut body = json!({
                "name": name,
                "dimension": dimension,
                "metric": format!("{metric:?}").to_lowercase(),
                "spec": {"serverless": {"cloud": "aws", "region": "us-east-1"}},
                "deletion_protection": if deletion_protection { "enabled" } else { "disabled" },
            });
            if !tags.is_empty() {
                body["tags"] =
                    Value::Object(tags.into_iter().map(|(k, v)| (k, json!(v))).collect());
            }
            let created = c.create_index(body).await?;
            if no_wait {
                created
            } else {
                wait_ready(&c, &name).await?
            }
        }
        IndexCommand::List => Value::Array(
            c.list_indexes()
                .await?
                .into_iter()
                .map(|i| index_row(&i))
                .collect(),
        ),
        IndexCommand::Describe { name } => {
            let mut index = c.describe_index(&name).await?;
            let stats = c
                .data(
                    &name,
                    Method::POST,
                    "/describe_index_stats",
                    Some(json!({})),
                )
                .await?;
            index["total_vector_count"] = stats["totalVectorCount"].clone();
            index
        }
        IndexCommand::Configure {
            name,
            deletion_protection,
            tags,
        } => {
            let mut body = json!({});
            if let Some(p) = deletion_protection {
                body["deletion_protection"] = json!(format!("{p:?}").to_lowercase());
            }
            if !tags.is_empty() {
                body["tags"] =
                    Value::Object(tags.into_iter().map(|(k, v)| (k, json!(v))).collect());
            }
            if body == json!({}) {
                bail!("nothing to change: give --deletion-protection or --tag");
            }
            c.configure_index(&name, body).await?
        }
        IndexCommand::Delete { name } => {
            c.delete_index(&name).await?;
            eprintln!("deleted index {name}");
            return Ok(());
        }
    };
    print(args.connection.output, &value);
    Ok(())
}

/// The columns of `index list`.
fn index_row(index: &Value) -> Value {
    json!({
        "name": index["name"],
        "dimension": index["dimension"],
        "metric": index["metric"],
        "host": index["host"],
        "state": index["status"]["state"],
        "deletion_protection": index["deletion_protection"],
    })
}

/// Polls `describe_index` until the index is ready ([`INDEX_READY_TIMEOUT_S`]).
async fn wait_ready(c: &AdminClient, name: &str) -> anyhow::Result<Value> {
    let deadline = std::time::Instant::now() + Duration::from_secs(INDEX_READY_TIMEOUT_S);
    loop {
        let index = c.describe_index(name).await?;
        if index["status"]["ready"] == true {
            return Ok(index);
        }
        if std::time::Instant::now() > deadline {
            bail!(
                "index {name} not ready after {INDEX_READY_TIMEOUT_S} s: {}",
                index["status"]
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Runs `conifer vectors …`.
pub async fn run_vectors(args: VectorsArgs) -> anyhow::Result<()> {
    let c = args.connection.client()?;
    let output = args.connection.output;
    let value = match args.command {
        VectorsCommand::Upsert {
            index,
            file,
            format,
            namespace,
            batch_size,
            failed,
        } => {
            if !(1..=MAX_UPSERT_BATCH).contains(&batch_size) {
                bail!("--batch-size is {batch_size}; it must be 1 to {MAX_UPSERT_BATCH}");
            }
            let failed = failed.unwrap_or_else(|| {
                let mut name = file.clone().into_os_string();
                name.push(".failed.jsonl");
                PathBuf::from(name)
            });
            let upload = Upload {
                client: &c,
                index: &index,
                namespace: &namespace,
                batch_size,
            };
            return upload.run(&file, format, &failed).await;
        }
        VectorsCommand::Query {
            index,
            vector,
            id,
            top_k,
            filter,
            namespace,
            include_metadata,
            include_values,
        } => {
            let mut body = json!({
                "topK": top_k,
                "namespace": namespace,
                "includeMetadata": include_metadata,
                "includeValues": include_values,
            });
            match (vector, id) {
                (Some(v), _) => body["vector"] = parse_json("vector", &v)?,
                (None, Some(id)) => body["id"] = json!(id),
                (None, None) => bail!("give --vector or --id"),
            }
            if let Some(f) = filter {
                body["filter"] = parse_json("filter", &f)?;
            }
            let answer = c.data(&index, Method::POST, "/query", Some(body)).await?;
            if output == OutputFormat::Json {
                answer
            } else {
                Value::Array(answer["matches"].as_array().cloned().unwrap_or_default())
            }
        }
        VectorsCommand::Fetch {
            index,
            ids,
            namespace,
        } => {
            let mut query = form_urlencoded::Serializer::new(String::new());
            for id in &ids {
                query.append_pair("ids", id);
            }
            query.append_pair("namespace", &namespace);
            let path = format!("/vectors/fetch?{}", query.finish());
            let answer = c.data(&index, Method::GET, &path, None).await?;
            if output == OutputFormat::Json {
                answer
            } else {
                let records = answer["vectors"].as_object().cloned().unwrap_or_default();
                Value::Array(records.into_values().collect())
            }
        }
        VectorsCommand::List {
            index,
            prefix,
            limit,
            pagination_token,
            namespace,
        } => {
            let mut query = form_urlencoded::Serializer::new(String::new());
            query.append_pair("namespace", &namespace);
            if let Some(p) = &prefix {
                query.append_pair("prefix", p);
            }
            if let Some(l) = limit {
                query.append_pair("limit", &l.to_string());
            }
            if let Some(t) = &pagination_token {
                query.append_pair("paginationToken", t);
            }
            let path = format!("/vectors/list?{}", query.finish());
            let answer = c.data(&index, Method::GET, &path, None).await?;
            if output == OutputFormat::Table {
                if let Some(next) = answer["pagination"]["next"].as_str() {
                    eprintln!("more: --pagination-token {next}");
                }
                Value::Array(answer["vectors"].as_array().cloned().unwrap_or_default())
            } else {
                answer
            }
        }
        VectorsCommand::Delete {
            index,
            ids,
            all,
            filter,
            namespace,
        } => {
            let mut body = json!({ "namespace": namespace });
            if all {
                body["deleteAll"] = json!(true);
            } else if let Some(f) = filter {
                body["filter"] = parse_json("filter", &f)?;
            } else if !ids.is_empty() {
                body["ids"] = json!(ids);
            } else {
                bail!("give --id, --filter or --all");
            }
            c.data(&index, Method::POST, "/vectors/delete", Some(body))
                .await?;
            eprintln!("deleted");
            return Ok(());
        }
    };
    print(output, &value);
    Ok(())
}

/// Runs `conifer namespace …`.
pub async fn run_namespace(args: NamespaceArgs) -> anyhow::Result<()> {
    let c = args.connection.client()?;
    let value = match args.command {
        NamespaceCommand::List { index } => {
            let answer = c.data(&index, Method::GET, "/namespaces", None).await?;
            Value::Array(answer["namespaces"].as_array().cloned().unwrap_or_default())
        }
        NamespaceCommand::Describe { index, name } => {
            let path = format!("/namespaces/{}", conifer_client::segment(&name));
            c.data(&index, Method::GET, &path, None).await?
        }
        NamespaceCommand::Delete { index, name } => {
            let path = format!("/namespaces/{}", conifer_client::segment(&name));
            c.data(&index, Method::DELETE, &path, None).await?;
            eprintln!("deleted namespace {name:?}");
            return Ok(());
        }
    };
    print(args.connection.output, &value);
    Ok(())
}

/// One record read from an upsert file, with where it came from.
struct Line {
    /// 1-based line number in the file.
    number: usize,
    /// The record, in the API's JSON (camelCase).
    record: Value,
}

/// An upsert of a file's records in batches.
struct Upload<'a> {
    client: &'a AdminClient,
    index: &'a str,
    namespace: &'a str,
    batch_size: usize,
}

/// Whether an upsert that failed with `e` may succeed when sent again.
fn is_momentary(e: &ClientError) -> bool {
    match e {
        ClientError::Transport(_) => true,
        ClientError::Api { status, .. } => matches!(status, 429 | 502 | 503 | 504),
    }
}

impl Upload<'_> {
    async fn run(
        &self,
        file: &Path,
        format: Option<FileFormat>,
        failed_path: &Path,
    ) -> anyhow::Result<()> {
        let format = format.unwrap_or_else(|| match file.extension().and_then(|e| e.to_str()) {
            Some("csv") => FileFormat::Csv,
            _ => FileFormat::Jsonl,
        });
        let (lines, mut failures) = match (format, file == Path::new("-")) {
            (FileFormat::Jsonl, true) => read_jsonl(std::io::stdin().lock())?,
            (FileFormat::Jsonl, false) => read_jsonl(std::io::BufReader::new(
                std::fs::File::open(file).with_context(|| format!("opening {}", file.display()))?,
            ))?,
            (FileFormat::Csv, true) => bail!("CSV from standard input is not read: give a file"),
            (FileFormat::Csv, false) => read_csv(file)?,
        };
        let total = lines.len() + failures.len();
        let bar = indicatif::ProgressBar::new(total as u64).with_style(
            indicatif::ProgressStyle::with_template(
                "{bar:40} {pos}/{len} records {per_sec} eta {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar.inc(failures.len() as u64);
        let mut upserted = 0usize;
        for batch in lines.chunks(self.batch_size) {
            match self.send(batch).await {
                Ok(()) => upserted += batch.len(),
                Err(e) => {
                    let reason = e.to_string();
                    failures.extend(
                        batch
                            .iter()
                            .map(|l| (l.number, l.record.to_string(), reason.clone())),
                    );
                }
            }
            bar.inc(batch.len() as u64);
        }
        bar.finish_and_clear();
        eprintln!(
            "upserted {upserted} of {total} records into {}{}",
            self.index,
            if self.namespace.is_empty() {
                String::new()
            } else {
                format!(" (namespace {:?})", self.namespace)
            }
        );
        if failures.is_empty() {
            let _ = std::fs::remove_file(failed_path);
            return Ok(());
        }
        failures.sort_by_key(|f| f.0);
        let mut out = std::io::BufWriter::new(
            std::fs::File::create(failed_path)
                .with_context(|| format!("creating {}", failed_path.display()))?,
        );
        let mut reasons: Vec<(String, usize)> = Vec::new();
        for (_, text, reason) in &failures {
            writeln!(out, "{text}")?;
            match reasons.iter_mut().find(|(r, _)| r == reason) {
                Some((_, n)) => *n += 1,
                None => reasons.push((reason.clone(), 1)),
            }
        }
        out.flush()?;
        for (reason, n) in &reasons {
            eprintln!("  {n} failed: {reason}");
        }
        eprintln!(
            "{} records failed (first at line {}); they are in {}: fix them and rerun with --file {}",
            failures.len(),
            failures[0].0,
            failed_path.display(),
            failed_path.display()
        );
        Err(PartialUpsert {
            failed: failures.len(),
        }
        .into())
    }

    /// Sends one batch, retrying momentary refusals ([`UPSERT_ATTEMPTS`]).
    async fn send(&self, batch: &[Line]) -> Result<(), ClientError> {
        let body = json!({
            "vectors": batch.iter().map(|l| l.record.clone()).collect::<Vec<_>>(),
            "namespace": self.namespace,
        });
        let mut wait = Duration::from_millis(UPSERT_RETRY_FIRST_MS);
        let mut attempt = 1;
        loop {
            match self
                .client
                .data(
                    self.index,
                    Method::POST,
                    "/vectors/upsert",
                    Some(body.clone()),
                )
                .await
            {
                Ok(_) => return Ok(()),
                Err(e) if attempt < UPSERT_ATTEMPTS && is_momentary(&e) => {
                    tokio::time::sleep(wait).await;
                    wait *= 2;
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// An upsert that left some records behind: exit code [`super::exit::PARTIAL`].
#[derive(Debug, thiserror::Error)]
#[error("{failed} records were not upserted")]
pub struct PartialUpsert {
    /// How many.
    pub failed: usize,
}

/// Records that could not be read or were refused: (line, the text to write to the failed
/// file — the record as JSON, or the line as it was — and why).
type Unreadable = Vec<(usize, String, String)>;

/// A record object of a file as the API wants it: `sparse_values` accepted for
/// `sparseValues`; an `id` and `values` or `sparseValues` required.
fn record(mut object: Map<String, Value>) -> Result<Value, String> {
    if let Some(sparse) = object.remove("sparse_values") {
        object.insert("sparseValues".into(), sparse);
    }
    if !object.get("id").is_some_and(Value::is_string) {
        return Err("no string \"id\"".into());
    }
    if !object.contains_key("values") && !object.contains_key("sparseValues") {
        return Err("no \"values\"".into());
    }
    Ok(Value::Object(object))
}

/// Reads JSON lines: the records, and the lines that are not records.
fn read_jsonl(reader: impl BufRead) -> anyhow::Result<(Vec<Line>, Unreadable)> {
    let (mut lines, mut bad) = (Vec::new(), Vec::new());
    for (i, text) in reader.lines().enumerate() {
        let text = text.context("reading the file")?;
        if text.trim().is_empty() {
            continue;
        }
        let parsed = match serde_json::from_str::<Value>(&text) {
            Ok(Value::Object(object)) => record(object),
            Ok(_) => Err("not a JSON object".into()),
            Err(e) => Err(format!("not JSON: {e}")),
        };
        match parsed {
            Ok(record) => lines.push(Line {
                number: i + 1,
                record,
            }),
            Err(why) => bad.push((i + 1, text, format!("line {}: {why}", i + 1))),
        }
    }
    Ok((lines, bad))
}

/// Reads a CSV file with a header row: `id`, `values` (a JSON array), optional `metadata`
/// (a JSON object); other columns are metadata fields, numbers when they parse as one.
fn read_csv(path: &Path) -> anyhow::Result<(Vec<Line>, Unreadable)> {
    let mut reader =
        csv::Reader::from_path(path).with_context(|| format!("opening {}", path.display()))?;
    let headers = reader.headers()?.clone();
    for needed in ["id", "values"] {
        if !headers.iter().any(|h| h == needed) {
            bail!("{}: no {needed:?} column in the header row", path.display());
        }
    }
    let (mut lines, mut bad) = (Vec::new(), Vec::new());
    for (i, row) in reader.records().enumerate() {
        let number = i + 2;
        let row = row.with_context(|| format!("{} line {number}", path.display()))?;
        let mut object = Map::new();
        let mut metadata = Map::new();
        let mut why = None;
        for (header, field) in headers.iter().zip(row.iter()) {
            match header {
                "id" => {
                    object.insert("id".into(), json!(field));
                }
                "values" | "metadata" => match serde_json::from_str::<Value>(field) {
                    Ok(Value::Object(m)) if header == "metadata" => metadata.extend(m),
                    Ok(v) if header == "values" => {
                        object.insert("values".into(), v);
                    }
                    _ => why = Some(format!("column {header:?} is not JSON of its kind")),
                },
                _ if field.is_empty() => {}
                _ => {
                    let value = field
                        .parse::<f64>()
                        .ok()
                        .filter(|n| n.is_finite())
                        .map_or_else(|| json!(field), |n| json!(n));
                    metadata.insert(header.to_string(), value);
                }
            }
        }
        if !metadata.is_empty() {
            object.insert("metadata".into(), Value::Object(metadata));
        }
        match why.map_or_else(|| record(object), Err) {
            Ok(record) => lines.push(Line { number, record }),
            Err(why) => bad.push((
                number,
                Value::Object(object_of(&headers, &row)).to_string(),
                format!("line {number}: {why}"),
            )),
        }
    }
    Ok((lines, bad))
}

/// A CSV row as a JSON object of its columns (strings), for the failed file.
fn object_of(headers: &csv::StringRecord, row: &csv::StringRecord) -> Map<String, Value> {
    headers
        .iter()
        .zip(row.iter())
        .map(|(h, f)| (h.to_string(), json!(f)))
        .collect()
}
