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
#[command(next_help_heading = "Connection")]
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
    /// HTTP CONNECT proxy to reach the nodes through: http://[user:password@]host:port, or
    /// `direct` for none [default: HTTPS_PROXY / ALL_PROXY, except NO_PROXY hosts].
    #[arg(long, env = "CONIFER_PROXY", global = true, hide_env_values = true)]
    pub proxy: Option<String>,
    /// Client certificate flags.
    #[command(flatten)]
    pub certificate: super::admin::ClientCertificateArgs,
    /// Project id of the index, for calls made with a client certificate and no API key
    /// (an API key implies its project).
    #[arg(long, env = "CONIFER_PROJECT_ID", global = true)]
    pub project_id: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = OutputFormat::Table, global = true)]
    pub output: OutputFormat,
}

impl DataConnection {
    pub(super) fn client(&self) -> anyhow::Result<AdminClient> {
        let (client, boot) = endpoint(
            self.api_url.clone(),
            self.ca_cert.clone(),
            self.bootstrap.as_deref(),
            self.proxy.as_deref(),
            &self.certificate,
        )?;
        let key = match (
            &self.api_key,
            boot.as_ref().and_then(|b| b["api_key"].as_str()),
        ) {
            (Some(key), _) => key.clone(),
            (None, Some(key)) => key.to_string(),
            // The client certificate authenticates as its service account.
            (None, None) if self.certificate.is_set() => {
                let Some(project) = &self.project_id else {
                    bail!(super::exit::Usage(
                        "a client certificate without an API key needs the index's project: \
                         give --project-id (or CONIFER_PROJECT_ID)"
                            .into()
                    ));
                };
                return Ok(client.with_project(project));
            }
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
    #[command(after_help = "Example:
  conifer index create docs --dimension 384 --metric cosine --tag team=search")]
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
    /// Delete an index and every record in it (its backups and collections are kept unless
    /// --delete-backups).
    Delete {
        /// Index name.
        name: String,
        /// Also delete the index's backups and collections.
        #[arg(long)]
        delete_backups: bool,
    },
    /// Re-encrypt an index under a new data key, in the background while it serves, with a
    /// progress bar of the replicas done; the old key is dropped once every replica is.
    RotateKey {
        /// Index name.
        name: String,
        /// Return once the rotation started instead of waiting for it to finish.
        #[arg(long)]
        no_wait: bool,
        /// Longest wait, in seconds, before giving up (the rotation carries on).
        #[arg(long, default_value_t = 600)]
        timeout_s: u64,
    },
}

pub(super) fn parse_tag(text: &str) -> Result<(String, String), String> {
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
  conifer vectors delete --index docs --id doc-1")]
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
    /// Apache Parquet (columns as for CSV; `values` a list of floats).
    Parquet,
}

/// `conifer vectors …`.
#[derive(Subcommand, Debug)]
pub enum VectorsCommand {
    /// Upsert records from a file in batches, with progress; failed records go to a file
    /// to resume from.
    #[command(after_help = "Examples:
  conifer vectors upsert --index docs --file records.jsonl --namespace n
  conifer vectors upsert --index docs --file records.csv --batch-size 500
  producer | conifer vectors upsert --index docs --file -

Files:
  JSON lines (.jsonl, .ndjson, or -): one record a line,
    {\"id\": \"a\", \"values\": [0.1, 0.2], \"metadata\": {\"genre\": \"drama\"}}
  CSV (.csv): a header row with id, values (a JSON array), optional metadata (a JSON
    object); any other column is a metadata field, a number or boolean when it is one as
    JSON writes it (12, -0.5, true; not 007).
  Parquet (.parquet): the same columns; values a list of floats, metadata a struct or
    JSON text.

Records the server refuses are isolated (the rest of their batch is sent) and written, as
the file held them, to FILE.failed.jsonl or FILE.failed.csv (Parquet's as JSON lines,
standard input's to stdin.failed.jsonl). An error that is not about the records (wrong key,
missing index, no node) stops the upload and writes the records not sent there too. Fix
them and upsert that file to resume.")]
    Upsert {
        /// Index name.
        #[arg(long)]
        index: String,
        /// JSON lines, CSV or Parquet file; `-` reads JSON lines from standard input.
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
    /// The index's namespaces and their record counts, in pages.
    List {
        /// Index name.
        #[arg(long)]
        index: String,
        /// Namespaces per page.
        #[arg(long)]
        limit: Option<u32>,
        /// Continue from this pagination token.
        #[arg(long)]
        pagination_token: Option<String>,
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
    serde_json::from_str(text)
        .map_err(|e| Usage(format!("--{flag} is not valid JSON ({e}): {text}")).into())
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
                bail!(Usage(
                    "nothing to change: give --deletion-protection or --tag".into()
                ));
            }
            c.configure_index(&name, body).await?
        }
        IndexCommand::Delete {
            name,
            delete_backups,
        } => {
            if delete_backups {
                c.delete_index_and_backups(&name).await?;
            } else {
                c.delete_index(&name).await?;
            }
            eprintln!("deleted index {name}");
            return Ok(());
        }
        IndexCommand::RotateKey {
            name,
            no_wait,
            timeout_s,
        } => {
            let started = c.rotate_index_key(&name).await?;
            let to = started["encryption"]["data_key_version"]
                .as_u64()
                .unwrap_or(0);
            eprintln!("index {name}: re-encrypting under data key version {to}");
            if no_wait {
                started
            } else {
                wait_rotated(&c, &name, std::time::Duration::from_secs(timeout_s)).await?
            }
        }
    };
    print(args.connection.output, &value);
    Ok(())
}

/// Follows an index key rotation with a progress bar (replicas re-sealed out of all) until
/// the older data key versions are dropped; answers the index then.
async fn wait_rotated(
    c: &AdminClient,
    name: &str,
    timeout: std::time::Duration,
) -> anyhow::Result<Value> {
    let bar = indicatif::ProgressBar::new(0);
    bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} re-encrypting [{bar:30}] {pos}/{len} replicas re-sealed ({elapsed})",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let index = c.describe_index(name).await?;
        let rotation = &index["encryption"]["rotation"];
        if rotation.is_null() {
            bar.finish_and_clear();
            eprintln!(
                "index {name}: every replica is sealed under data key version {}; the older \
                 versions are dropped",
                index["encryption"]["data_key_version"]
            );
            return Ok(index);
        }
        bar.set_length(rotation["replicas"].as_u64().unwrap_or(0));
        bar.set_position(rotation["replicas_resealed"].as_u64().unwrap_or(0));
        if std::time::Instant::now() >= deadline {
            bar.abandon();
            bail!(
                "index {name} is still re-encrypting after {} s; it carries on — follow it \
                 with `conifer index describe {name}`",
                timeout.as_secs()
            );
        }
        bar.tick();
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
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
                bail!(Usage(format!(
                    "--batch-size is {batch_size}; it must be 1 to {MAX_UPSERT_BATCH}"
                )));
            }
            let format =
                format.unwrap_or_else(|| match file.extension().and_then(|e| e.to_str()) {
                    Some("csv") => FileFormat::Csv,
                    Some("parquet") => FileFormat::Parquet,
                    _ => FileFormat::Jsonl,
                });
            let failed = failed.unwrap_or_else(|| {
                let mut name = if file == Path::new("-") {
                    "stdin".into()
                } else {
                    file.clone().into_os_string()
                };
                name.push(match format {
                    FileFormat::Csv => ".failed.csv",
                    // Parquet's failed records are written as JSON lines.
                    FileFormat::Jsonl | FileFormat::Parquet => ".failed.jsonl",
                });
                PathBuf::from(name)
            });
            let upload = Upload {
                client: &c,
                index: &index,
                namespace: &namespace,
                batch_size,
                output,
            };
            return upload.run(&file, format, failed).await;
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
            let by_id = id.clone();
            match (vector, id) {
                (Some(v), _) => body["vector"] = parse_json("vector", &v)?,
                (None, Some(id)) => body["id"] = json!(id),
                (None, None) => bail!(Usage("give --vector or --id".into())),
            }
            if let Some(f) = filter {
                body["filter"] = parse_json("filter", &f)?;
            }
            let answer = c.data(&index, Method::POST, "/query", Some(body)).await?;
            let none = answer["matches"].as_array().is_none_or(Vec::is_empty);
            if let (true, Some(id)) = (none, by_id) {
                // Pinecone answers a query by a missing id with no matches, not an error.
                eprintln!("no matches: is there a record {id:?} in this namespace?");
            }
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
            let missing: Vec<&String> = ids
                .iter()
                .filter(|id| answer["vectors"].get(id.as_str()).is_none())
                .collect();
            if !missing.is_empty() {
                eprintln!("not found: {missing:?}");
            }
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
                bail!(Usage("give --id, --filter or --all".into()));
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
        NamespaceCommand::List {
            index,
            limit,
            pagination_token,
        } => {
            let mut query = form_urlencoded::Serializer::new(String::new());
            if let Some(l) = limit {
                query.append_pair("limit", &l.to_string());
            }
            if let Some(t) = &pagination_token {
                query.append_pair("paginationToken", t);
            }
            let path = format!("/namespaces?{}", query.finish());
            let answer = c.data(&index, Method::GET, &path, None).await?;
            if args.connection.output == OutputFormat::Json {
                answer
            } else {
                if let Some(next) = answer["pagination"]["next"].as_str() {
                    eprintln!("more: --pagination-token {next}");
                }
                Value::Array(answer["namespaces"].as_array().cloned().unwrap_or_default())
            }
        }
        NamespaceCommand::Describe { index, name } => {
            let path = format!("/namespaces/{}", namespace_segment(&name));
            c.data(&index, Method::GET, &path, None).await?
        }
        NamespaceCommand::Delete { index, name } => {
            let path = format!("/namespaces/{}", namespace_segment(&name));
            c.data(&index, Method::DELETE, &path, None).await?;
            eprintln!("deleted namespace {name:?}");
            return Ok(());
        }
    };
    print(args.connection.output, &value);
    Ok(())
}

/// A namespace as a path segment: the default namespace ("") by Pinecone's name for it.
fn namespace_segment(name: &str) -> String {
    match name {
        "" => "__default__".into(),
        name => conifer_client::segment(name),
    }
}

/// One record read from an upsert file, with where it came from.
struct Line {
    /// 1-based line number in the file.
    number: usize,
    /// The record, in the API's JSON (camelCase).
    record: Value,
    /// The record as the file held it, for the failed file.
    raw: Raw,
}

/// A record as the file held it.
#[derive(Clone)]
enum Raw {
    /// A JSON line, as it was.
    Text(String),
    /// A CSV row, as it was.
    Row(csv::StringRecord),
}

/// What a source yields: a record, or a line that is not one (written to the failed file
/// as it was, with why).
enum Item {
    Record(Line),
    Unreadable(usize, Raw, String),
}

/// The records of an upsert file, read one at a time.
enum Source {
    Jsonl {
        lines: Box<dyn BufRead>,
        number: usize,
        bytes: u64,
    },
    Csv {
        reader: csv::Reader<std::fs::File>,
        headers: csv::StringRecord,
    },
    Parquet {
        rows: parquet::record::reader::RowIter<'static>,
        number: usize,
        total: u64,
    },
}

impl Source {
    fn open(file: &Path, format: FileFormat) -> anyhow::Result<Self> {
        let stdin = file == Path::new("-");
        Ok(match format {
            FileFormat::Jsonl => Source::Jsonl {
                lines: if stdin {
                    Box::new(std::io::BufReader::new(std::io::stdin()))
                } else {
                    Box::new(std::io::BufReader::new(
                        std::fs::File::open(file)
                            .with_context(|| format!("opening {}", file.display()))?,
                    ))
                },
                number: 0,
                bytes: 0,
            },
            FileFormat::Csv if stdin => bail!(Usage(
                "CSV is read from a file, not from standard input".into()
            )),
            FileFormat::Csv => {
                let mut reader = csv::ReaderBuilder::new()
                    .flexible(true)
                    .from_path(file)
                    .with_context(|| format!("opening {}", file.display()))?;
                let headers = reader
                    .headers()
                    .with_context(|| format!("{}: the header row", file.display()))?
                    .clone();
                for needed in ["id", "values"] {
                    if !headers.iter().any(|h| h == needed) {
                        bail!("{}: no {needed:?} column in the header row", file.display());
                    }
                }
                Source::Csv { reader, headers }
            }
            FileFormat::Parquet if stdin => {
                bail!(Usage(
                    "Parquet is read from a file, not from standard input".into()
                ))
            }
            FileFormat::Parquet => {
                use parquet::file::reader::FileReader;
                let opened = std::fs::File::open(file)
                    .with_context(|| format!("opening {}", file.display()))?;
                let reader = parquet::file::reader::SerializedFileReader::new(opened)
                    .with_context(|| format!("{}: not a Parquet file", file.display()))?;
                let metadata = reader.metadata().file_metadata();
                let columns: Vec<String> = metadata
                    .schema()
                    .get_fields()
                    .iter()
                    .map(|f| f.name().to_string())
                    .collect();
                for needed in ["id", "values"] {
                    if !columns.iter().any(|c| c == needed) {
                        bail!(
                            "{}: no {needed:?} column (it has {columns:?})",
                            file.display()
                        );
                    }
                }
                let total = u64::try_from(metadata.num_rows()).unwrap_or(0);
                Source::Parquet {
                    rows: parquet::record::reader::RowIter::from_file_into(Box::new(reader)),
                    number: 0,
                    total,
                }
            }
        })
    }

    /// The progress bar's length: bytes of the file, or rows of a Parquet file.
    fn total(&self, file: &Path) -> Option<u64> {
        match self {
            Source::Parquet { total, .. } => Some(*total),
            _ if file == Path::new("-") => None,
            _ => std::fs::metadata(file).map(|m| m.len()).ok(),
        }
    }

    /// How far the file is read, in the unit of [`Source::total`].
    fn position(&self) -> u64 {
        match self {
            Source::Jsonl { bytes, .. } => *bytes,
            Source::Csv { reader, .. } => reader.position().byte(),
            Source::Parquet { number, .. } => *number as u64,
        }
    }

    /// The next record or unreadable line; `None` at the end.
    fn next(&mut self) -> anyhow::Result<Option<Item>> {
        match self {
            Source::Jsonl {
                lines,
                number,
                bytes,
            } => loop {
                let mut text = String::new();
                let n = lines.read_line(&mut text).context("reading the file")?;
                if n == 0 {
                    return Ok(None);
                }
                *bytes += n as u64;
                *number += 1;
                let text = text.trim_end_matches(['\r', '\n']).to_string();
                if text.trim().is_empty() {
                    continue;
                }
                let parsed = match serde_json::from_str::<Value>(&text) {
                    Ok(Value::Object(object)) => record(object),
                    Ok(_) => Err("not a JSON object".into()),
                    Err(e) => Err(format!("not JSON: {e}")),
                };
                let number = *number;
                return Ok(Some(match parsed {
                    Ok(record) => Item::Record(Line {
                        number,
                        record,
                        raw: Raw::Text(text),
                    }),
                    Err(why) => Item::Unreadable(number, Raw::Text(text), why),
                }));
            },
            Source::Csv { reader, headers } => {
                let mut row = csv::StringRecord::new();
                let more = reader.read_record(&mut row).context("reading the file")?;
                if !more {
                    return Ok(None);
                }
                let number = row.position().map_or(0, |p| p.line() as usize);
                Ok(Some(match csv_record(headers, &row) {
                    Ok(record) => Item::Record(Line {
                        number,
                        record,
                        raw: Raw::Row(row),
                    }),
                    Err(why) => Item::Unreadable(number, Raw::Row(row), why),
                }))
            }
            Source::Parquet { rows, number, .. } => {
                let Some(row) = rows.next() else {
                    return Ok(None);
                };
                *number += 1;
                let number = *number;
                let row = row.with_context(|| format!("reading row {number}"))?;
                let columns = row.to_json_value();
                let text = columns.to_string();
                Ok(Some(match parquet_record(columns) {
                    Ok(record) => Item::Record(Line {
                        number,
                        raw: Raw::Text(record.to_string()),
                        record,
                    }),
                    Err(why) => Item::Unreadable(number, Raw::Text(text), why),
                }))
            }
        }
    }
}

/// The failed file: created at the first failure, in the input's format (JSON lines, or
/// CSV with the input's header row), so that it can be fixed and given to `upsert` again.
struct FailedFile {
    path: PathBuf,
    headers: Option<csv::StringRecord>,
    out: Option<csv::Writer<std::fs::File>>,
    text: Option<std::io::BufWriter<std::fs::File>>,
    count: usize,
    /// Each reason, how many records failed for it, and the first one's line.
    reasons: Vec<(String, usize, usize)>,
}

impl FailedFile {
    fn new(path: PathBuf, headers: Option<csv::StringRecord>) -> Self {
        Self {
            path,
            headers,
            out: None,
            text: None,
            count: 0,
            reasons: Vec::new(),
        }
    }

    /// Writes `raw` (as the file held it, from line `number`) and counts `reason`; flushed
    /// at once, so an interrupted upload keeps what failed so far.
    fn add(&mut self, number: usize, raw: &Raw, reason: &str) -> anyhow::Result<()> {
        let create = || {
            std::fs::File::create(&self.path)
                .with_context(|| format!("creating {}", self.path.display()))
        };
        match raw {
            Raw::Text(text) => {
                if self.text.is_none() {
                    self.text = Some(std::io::BufWriter::new(create()?));
                }
                if let Some(out) = self.text.as_mut() {
                    writeln!(out, "{text}")?;
                    out.flush()?;
                }
            }
            Raw::Row(row) => {
                if self.out.is_none() {
                    let mut out = csv::WriterBuilder::new()
                        .flexible(true)
                        .from_writer(create()?);
                    if let Some(headers) = &self.headers {
                        out.write_record(headers)?;
                    }
                    self.out = Some(out);
                }
                if let Some(out) = self.out.as_mut() {
                    out.write_record(row)?;
                    out.flush()?;
                }
            }
        }
        self.count += 1;
        match self.reasons.iter_mut().find(|(r, _, _)| r == reason) {
            Some((_, n, _)) => *n += 1,
            None => self.reasons.push((reason.to_string(), 1, number)),
        }
        Ok(())
    }
}

/// An upsert of a file's records in batches.
struct Upload<'a> {
    client: &'a AdminClient,
    index: &'a str,
    namespace: &'a str,
    batch_size: usize,
    output: OutputFormat,
}

/// Whether an upsert that failed with `e` may succeed when sent again.
fn is_momentary(e: &ClientError) -> bool {
    match e {
        ClientError::Transport(_) => true,
        ClientError::Api { status, .. } => matches!(status, 429 | 502 | 503 | 504),
        ClientError::Certificate(_) | ClientError::Request(_) => false,
    }
}

/// Whether `e` refuses these records themselves (a record the server finds invalid, a
/// request too large), so that other records may still pass; every other error (wrong
/// key, missing index, no node, server failing) stops the upload.
fn refuses_records(e: &ClientError) -> bool {
    matches!(e, ClientError::Api { status, .. } if matches!(status, 400 | 413 | 422))
}

impl Upload<'_> {
    async fn run(
        &self,
        file: &Path,
        format: FileFormat,
        failed_path: PathBuf,
    ) -> anyhow::Result<()> {
        let mut source = Source::open(file, format)?;
        let headers = match &source {
            Source::Csv { headers, .. } => Some(headers.clone()),
            Source::Jsonl { .. } | Source::Parquet { .. } => None,
        };
        let mut failed = FailedFile::new(failed_path, headers);
        let bar = match source.total(file) {
            Some(total) => indicatif::ProgressBar::new(total).with_style(
                indicatif::ProgressStyle::with_template("{bar:40} {percent:>3}% {msg} eta {eta}")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            ),
            None => indicatif::ProgressBar::new_spinner(),
        };
        let (mut upserted, mut read) = (0usize, 0usize);
        let mut stopped: Option<(usize, ClientError)> = None;
        let not_sent = "not sent: the upload stopped";
        loop {
            // A batch of records, and the lines among them that are not records; what fails
            // is written in the file's order.
            let (mut batch, mut failures) = (Vec::with_capacity(self.batch_size), Vec::new());
            let mut exhausted = false;
            while batch.len() < self.batch_size {
                match source.next()? {
                    Some(Item::Record(line)) => batch.push(line),
                    Some(Item::Unreadable(number, raw, why)) => failures.push((number, raw, why)),
                    None => {
                        exhausted = true;
                        break;
                    }
                }
                read += 1;
            }
            if stopped.is_none() && !batch.is_empty() {
                match self.send_isolating(&batch).await {
                    Ok((n, refused)) => {
                        upserted += n;
                        failures.extend(refused);
                    }
                    Err(e) => stopped = Some((batch[0].number, e)),
                }
            }
            if stopped.is_some() {
                let unsent = batch
                    .iter()
                    .map(|l| (l.number, l.raw.clone(), not_sent.into()));
                failures.extend(unsent);
            }
            failures.sort_by_key(|f| f.0);
            for (number, raw, why) in &failures {
                failed.add(*number, raw, why)?;
            }
            bar.set_position(source.position());
            bar.set_message(format!("{upserted} records upserted"));
            if exhausted {
                break;
            }
        }
        bar.finish_and_clear();
        let target = if self.namespace.is_empty() {
            self.index.to_string()
        } else {
            format!("{} (namespace {:?})", self.index, self.namespace)
        };
        eprintln!("upserted {upserted} of {read} records into {target}");
        for (reason, n, first) in &failed.reasons {
            eprintln!("  {n} failed (first at line {first}): {reason}");
        }
        if failed.count > 0 {
            eprintln!(
                "the {} records that failed are in {}: fix them and rerun with --file {}",
                failed.count,
                failed.path.display(),
                failed.path.display()
            );
        } else {
            let _ = std::fs::remove_file(&failed.path);
        }
        if self.output == OutputFormat::Json {
            print(
                OutputFormat::Json,
                &json!({
                    "upserted": upserted,
                    "read": read,
                    "failed": failed.count,
                    "failed_file": (failed.count > 0).then(|| failed.path.display().to_string()),
                }),
            );
        }
        match stopped {
            Some((line, e)) => {
                let hint = match &e {
                    ClientError::Api { status: 404, .. } => {
                        " (create the index first: conifer index create)"
                    }
                    _ => "",
                };
                Err(anyhow::Error::new(e).context(format!("stopped at line {line}{hint}")))
            }
            None if failed.count > 0 => Err(PartialUpsert {
                failed: failed.count,
            }
            .into()),
            None => Ok(()),
        }
    }

    /// Sends `batch`; when the server refuses records of it (400, 413), halves it until
    /// each refused record is alone, and sends the rest: how many were upserted, and the
    /// refused ones with why. `Err`: an error that stops the upload (nothing of `batch` is
    /// counted then).
    async fn send_isolating(
        &self,
        batch: &[Line],
    ) -> Result<(usize, Vec<(usize, Raw, String)>), ClientError> {
        let (mut upserted, mut refused) = (0, Vec::new());
        let mut parts = vec![batch];
        while let Some(part) = parts.pop() {
            match self.send(part).await {
                Ok(()) => upserted += part.len(),
                Err(e) if refuses_records(&e) && part.len() > 1 => {
                    let (a, b) = part.split_at(part.len() / 2);
                    parts.push(b);
                    parts.push(a);
                }
                Err(e) if refuses_records(&e) => {
                    refused.push((part[0].number, part[0].raw.clone(), e.to_string()))
                }
                Err(e) => return Err(e),
            }
        }
        Ok((upserted, refused))
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

pub use super::exit::Usage;

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

/// A CSV row as a record: `id`, `values` (a JSON array), optional `metadata` (a JSON
/// object; empty means none); any other column is a metadata field — a number or boolean
/// when it is one as JSON writes it (`12`, `-0.5`, `true`; not `007`), else a string;
/// empty cells are left out.
fn csv_record(headers: &csv::StringRecord, row: &csv::StringRecord) -> Result<Value, String> {
    if row.len() != headers.len() {
        return Err(format!(
            "{} fields where the header row has {}",
            row.len(),
            headers.len()
        ));
    }
    let mut object = Map::new();
    let mut metadata = Map::new();
    for (header, field) in headers.iter().zip(row.iter()) {
        match header {
            "id" => {
                object.insert("id".into(), json!(field));
            }
            "values" => match serde_json::from_str::<Value>(field) {
                Ok(v @ Value::Array(_)) => {
                    object.insert("values".into(), v);
                }
                _ => return Err("column \"values\" is not a JSON array".into()),
            },
            "metadata" if field.trim().is_empty() => {}
            "metadata" => match serde_json::from_str::<Value>(field) {
                Ok(Value::Object(m)) => metadata.extend(m),
                _ => return Err("column \"metadata\" is not a JSON object".into()),
            },
            _ if field.is_empty() => {}
            _ => {
                let value = match serde_json::from_str::<Value>(field) {
                    Ok(v @ (Value::Number(_) | Value::Bool(_))) => v,
                    _ => json!(field),
                };
                metadata.insert(header.to_string(), value);
            }
        }
    }
    if !metadata.is_empty() {
        object.insert("metadata".into(), Value::Object(metadata));
    }
    record(object)
}

/// A Parquet row (its columns as JSON) as a record: `id`, `values` (a list of floats),
/// optional `metadata` (a struct, or a JSON object in a string) and `sparse_values`; any
/// other non-null column is a metadata field.
fn parquet_record(columns: Value) -> Result<Value, String> {
    let Value::Object(columns) = columns else {
        return Err("not a row of columns".into());
    };
    let mut object = Map::new();
    let mut metadata = Map::new();
    for (name, value) in columns {
        match (name.as_str(), value) {
            (_, Value::Null) => {}
            ("id" | "values", v) => {
                object.insert(name, v);
            }
            ("sparse_values" | "sparseValues", v) => {
                object.insert("sparseValues".into(), v);
            }
            ("metadata", Value::Object(m)) => metadata.extend(m),
            ("metadata", Value::String(text)) if text.trim().is_empty() => {}
            ("metadata", Value::String(text)) => match serde_json::from_str::<Value>(&text) {
                Ok(Value::Object(m)) => metadata.extend(m),
                _ => return Err("column \"metadata\" is not a JSON object".into()),
            },
            ("metadata", _) => {
                return Err("column \"metadata\" is not a struct or JSON text".into())
            }
            (_, v) => {
                metadata.insert(name, v);
            }
        }
    }
    if !metadata.is_empty() {
        object.insert("metadata".into(), Value::Object(metadata));
    }
    record(object)
}
