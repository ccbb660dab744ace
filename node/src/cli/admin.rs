//! The CLI's admin commands (`conifer project create`, `conifer key create --role
//! DataPlaneViewer`, …): each is one call of the `conifer-client` SDK against any node,
//! printed as a table or as JSON.

use std::io::BufRead;
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Args, Subcommand, ValueEnum};
use conifer_client::AdminClient;
use serde_json::Value;
use std::time::Duration;

/// How results are printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// Aligned columns.
    Table,
    /// The API's JSON, pretty-printed.
    Json,
}

/// Where and as whom admin commands connect.
#[derive(Args, Debug, Clone)]
pub struct Connection {
    /// URL of any node's client port, e.g. https://127.0.0.1:7443 [default: from --bootstrap].
    #[arg(long, env = "CONIFER_API_URL", global = true)]
    pub api_url: Option<String>,
    /// CA certificate the nodes' client certificates chain to, trusted besides the system's
    /// [default: from --bootstrap].
    #[arg(long, env = "CONIFER_CA_CERT", global = true)]
    pub ca_cert: Option<PathBuf>,
    /// Bearer token: an operator token, or one printed by `conifer login` / `conifer token`
    /// [default: the operator token in --bootstrap].
    #[arg(long, env = "CONIFER_TOKEN", global = true, hide_env_values = true)]
    pub token: Option<String>,
    /// A node's bootstrap.json, for the URL, CA and operator token.
    #[arg(long, env = "CONIFER_BOOTSTRAP", global = true)]
    pub bootstrap: Option<PathBuf>,
    /// HTTP CONNECT proxy to reach the nodes through: http://[user:password@]host:port, or
    /// `direct` for none [default: HTTPS_PROXY / ALL_PROXY, except NO_PROXY hosts].
    #[arg(long, env = "CONIFER_PROXY", global = true, hide_env_values = true)]
    pub proxy: Option<String>,
    /// Client certificate flags.
    #[command(flatten)]
    pub certificate: ClientCertificateArgs,
    /// Output format.
    #[arg(long, value_enum, default_value_t = OutputFormat::Table, global = true)]
    pub output: OutputFormat,
}

/// The client certificate a command presents (both connection flag sets).
#[derive(Args, Debug, Clone, Default)]
pub struct ClientCertificateArgs {
    /// Client certificate (PEM) to present. On nodes started with --client-ca it
    /// authenticates as the service account one of its names is bound to, with no other
    /// credential; a project that requires client certificates refuses its data plane
    /// without one.
    #[arg(
        long,
        env = "CONIFER_CLIENT_CERT",
        global = true,
        requires = "client_key"
    )]
    pub client_cert: Option<PathBuf>,
    /// Private key (PEM) of --client-cert.
    #[arg(
        long,
        env = "CONIFER_CLIENT_KEY",
        global = true,
        requires = "client_cert"
    )]
    pub client_key: Option<PathBuf>,
}

impl ClientCertificateArgs {
    /// The certificate and key read from their files, if given.
    fn identity(&self) -> anyhow::Result<Option<conifer_client::ClientIdentity>> {
        let (Some(cert), Some(key)) = (&self.client_cert, &self.client_key) else {
            return Ok(None);
        };
        let read = |path: &PathBuf| {
            std::fs::read(path).with_context(|| format!("reading {}", path.display()))
        };
        Ok(Some(conifer_client::ClientIdentity {
            cert_pem: read(cert)?,
            key_pem: read(key)?,
        }))
    }

    /// Whether a client certificate is given.
    pub fn is_set(&self) -> bool {
        self.client_cert.is_some()
    }
}

macro_rules! admin_args {
    ($(#[$doc:meta])* $name:ident, $command:ty, $examples:literal) => {
        $(#[$doc])*
        #[derive(Args, Debug)]
        #[command(after_help = concat!("Examples:\n", $examples))]
        pub struct $name {
            /// Connection flags.
            #[command(flatten)]
            pub connection: Connection,
            /// The command.
            #[command(subcommand)]
            pub command: $command,
        }
    };
}

admin_args!(
    /// Flags of `conifer org`.
    OrgArgs, OrgCommand,
    "  conifer org list\n  conifer org rename --name acme");
admin_args!(
    /// Flags of `conifer member`.
    MemberArgs, MemberCommand,
    "  conifer member create --email ana@example.com --role OrgOwner   # asks for the password\n  conifer member list\n  conifer member update --user-id <id> --role OrgMember\n  conifer member remove --user-id <id>");
admin_args!(
    /// Flags of `conifer service-account`.
    ServiceAccountArgs, ServiceAccountCommand,
    "  conifer service-account create --name deployer --role OrgManager   # client secret shown once\n  conifer service-account rotate-secret --id <id>");
admin_args!(
    /// Flags of `conifer project`.
    ProjectArgs, ProjectCommand,
    "  conifer project create --name search\n  conifer project create --name vault --cmek-key-arn arn:aws:kms:us-east-1:111122223333:key/<id>\n  conifer project set-cmek --id <id> --key-arn arn:aws:kms:…\n  conifer project list\n  conifer project delete --id <id>");
admin_args!(
    /// Flags of `conifer project-member`.
    ProjectMemberArgs, ProjectMemberCommand,
    "  conifer project-member add --project <id> --email ana@example.com --role ProjectEditor\n  conifer project-member list --project <id>");
admin_args!(
    /// Flags of `conifer key`.
    KeyArgs, KeyCommand,
    "  conifer key create --project <id> --name ci --role DataPlaneViewer   # the key shown once\n  conifer key list --project <id>\n  conifer key delete --id <id>");
admin_args!(
    /// Flags of `conifer private-endpoint`.
    PrivateEndpointArgs, PrivateEndpointCommand,
    "  conifer private-endpoint create --project <id> --name vpc --private-listener\n  conifer private-endpoint create --project <id> --name office --allow-cidr 10.20.0.0/16\n  conifer private-endpoint list --project <id>\n  conifer private-endpoint delete --id <id>");
admin_args!(
    /// Flags of `conifer operator-token`.
    OperatorTokenArgs, OperatorTokenCommand,
    "  conifer operator-token create\n  conifer operator-token rotate --id <id>");
admin_args!(
    /// Flags of `conifer signing-key`.
    SigningKeyArgs, SigningKeyCommand,
    "  conifer signing-key rotate");
admin_args!(
    /// Flags of `conifer cluster`.
    ClusterArgs, ClusterCommand,
    "  conifer cluster members\n  conifer cluster add --id 4 --ca-dir ca/ --host 10.0.0.4 --out node-4-tls/   # prints the serve command\n  conifer cluster promote --id 4   # a node started with serve --join ADDR --learner\n  conifer cluster remove --id 4\n  conifer cluster describe --output json");

admin_args!(
    /// Flags of `conifer keys`.
    KeysArgs, KeysCommand,
    "  conifer keys status\n  conifer keys rotate-root   # waits with a progress bar until the old version is retired everywhere\n  conifer keys rotate-root --no-wait");

/// `conifer keys …`: the cluster's root key (local keyring).
#[derive(Subcommand, Debug)]
pub enum KeysCommand {
    /// The root key: version, rotation in progress, deletions waiting to be shredded, and
    /// each member's keyring versions.
    Status,
    /// Re-wrap every project key and node data key under a new root key version, then
    /// retire the old version on every member (every member must be reachable).
    RotateRoot {
        /// Return once the rotation is recorded instead of waiting for it to finish.
        #[arg(long)]
        no_wait: bool,
        /// Longest wait, in seconds, before giving up (the rotation carries on).
        #[arg(long, default_value_t = 600)]
        timeout_s: u64,
    },
}

/// `conifer org …`.
#[derive(Subcommand, Debug)]
pub enum OrgCommand {
    /// Organizations the caller sees.
    List,
    /// One organization.
    Get {
        /// Organization id [default: the first listed].
        #[arg(long)]
        id: Option<String>,
    },
    /// Create an organization (operator).
    Create {
        /// Name.
        #[arg(long)]
        name: String,
    },
    /// Rename an organization.
    Rename {
        /// Organization id [default: the first listed].
        #[arg(long)]
        id: Option<String>,
        /// New name.
        #[arg(long)]
        name: String,
    },
    /// Delete an organization that has no projects.
    Delete {
        /// Organization id.
        #[arg(long)]
        id: String,
    },
}

/// `conifer member …` (organization members, i.e. users).
#[derive(Subcommand, Debug)]
pub enum MemberCommand {
    /// Members of the organization.
    List {
        /// Organization id [default: the first listed].
        #[arg(long)]
        org: Option<String>,
    },
    /// Create a user who signs in with a password.
    Create {
        /// Organization id [default: the first listed].
        #[arg(long)]
        org: Option<String>,
        /// Sign-in email.
        #[arg(long)]
        email: String,
        /// Display name [default: the email].
        #[arg(long)]
        name: Option<String>,
        /// OrgOwner, OrgManager, OrgBillingAdmin or OrgMember.
        #[arg(long, default_value = "OrgMember")]
        role: String,
        /// Initial password [default: read from standard input].
        #[arg(long, env = "CONIFER_PASSWORD", hide_env_values = true)]
        password: Option<String>,
    },
    /// Change a user's organization role and/or password.
    Update {
        /// Organization id [default: the first listed].
        #[arg(long)]
        org: Option<String>,
        /// The user's id.
        #[arg(long)]
        user_id: String,
        /// New organization role.
        #[arg(long)]
        role: Option<String>,
        /// New password (signs the user out everywhere).
        #[arg(long, env = "CONIFER_PASSWORD", hide_env_values = true)]
        password: Option<String>,
    },
    /// Remove a user (their tokens stop working on every node within a second).
    Remove {
        /// Organization id [default: the first listed].
        #[arg(long)]
        org: Option<String>,
        /// The user's id.
        #[arg(long)]
        user_id: String,
    },
}

/// `conifer service-account …`.
#[derive(Subcommand, Debug)]
pub enum ServiceAccountCommand {
    /// Service accounts of the organization.
    List {
        /// Organization id [default: the first listed].
        #[arg(long)]
        org: Option<String>,
    },
    /// Create a service account; prints its client secret once.
    Create {
        /// Organization id [default: the first listed].
        #[arg(long)]
        org: Option<String>,
        /// Name.
        #[arg(long)]
        name: String,
        /// Organization role [default: OrgMember].
        #[arg(long)]
        role: Option<String>,
    },
    /// Rename a service account and/or change its role.
    Update {
        /// Its id (= client id).
        #[arg(long)]
        id: String,
        /// New name.
        #[arg(long)]
        name: Option<String>,
        /// New organization role.
        #[arg(long)]
        role: Option<String>,
    },
    /// Bind the names of client certificates (of the nodes' --client-ca) to a service
    /// account, which they then authenticate as; replaces the names bound before, and no
    /// --certificate-name unbinds them all (operator only).
    SetCertificateNames {
        /// Its id (= client id).
        #[arg(long)]
        id: String,
        /// A name the certificate carries: a DNS, email or URI SAN, or its common name
        /// (repeatable).
        #[arg(long = "certificate-name", value_name = "NAME")]
        certificate_names: Vec<String>,
    },
    /// Replace the client secret; prints the new one once.
    RotateSecret {
        /// Its id (= client id).
        #[arg(long)]
        id: String,
    },
    /// Delete a service account.
    Delete {
        /// Its id (= client id).
        #[arg(long)]
        id: String,
    },
}

/// `conifer project …`.
#[derive(Subcommand, Debug)]
pub enum ProjectCommand {
    /// Projects the caller sees.
    List,
    /// Create a project (a user or service account creating it becomes its owner).
    Create {
        /// Name, unique in the organization.
        #[arg(long)]
        name: String,
        /// Customer-managed encryption: every index of the project gets its data key from
        /// this AWS KMS key (its ARN), which the cluster's nodes must be allowed to use.
        #[arg(long, value_name = "ARN")]
        cmek_key_arn: Option<String>,
    },
    /// Turn on customer-managed encryption for the indexes created from now on: their data
    /// keys come from the AWS KMS key ARN. It cannot be turned off or moved to another key.
    SetCmek {
        /// Project id.
        #[arg(long)]
        id: String,
        /// The KMS key's ARN (arn:aws:kms:REGION:ACCOUNT:key/ID).
        #[arg(long, value_name = "ARN")]
        key_arn: String,
    },
    /// One project.
    Get {
        /// Project id.
        #[arg(long)]
        id: String,
    },
    /// Rename a project.
    Rename {
        /// Project id.
        #[arg(long)]
        id: String,
        /// New name.
        #[arg(long)]
        name: String,
    },
    /// Require a client certificate (mutual TLS) for the project's data plane, or stop
    /// requiring it: once required, an API key or token alone is refused there, and the
    /// certificate's service account must have access to the project too.
    ClientCertificates {
        /// Project id.
        #[arg(long)]
        id: String,
        /// `required` or `optional`.
        #[arg(value_parser = ["required", "optional"])]
        setting: String,
    },
    /// Delete a project with no indexes, and its keys and memberships.
    Delete {
        /// Project id.
        #[arg(long)]
        id: String,
    },
}

/// `conifer project-member …`.
#[derive(Subcommand, Debug)]
pub enum ProjectMemberCommand {
    /// Members of a project.
    List {
        /// Project id.
        #[arg(long)]
        project: String,
    },
    /// Give a user or service account a role in a project.
    Add {
        /// Project id.
        #[arg(long)]
        project: String,
        /// The user, by id.
        #[arg(long, group = "who")]
        user_id: Option<String>,
        /// The user, by email.
        #[arg(long, group = "who")]
        email: Option<String>,
        /// The service account, by id.
        #[arg(long, group = "who")]
        service_account_id: Option<String>,
        /// ProjectOwner, ProjectManager or ProjectMember.
        #[arg(long)]
        role: String,
    },
    /// Change a member's project role.
    SetRole {
        /// Project id.
        #[arg(long)]
        project: String,
        /// The member's user or service-account id.
        #[arg(long)]
        principal_id: String,
        /// The new role.
        #[arg(long)]
        role: String,
    },
    /// Remove a member from a project.
    Remove {
        /// Project id.
        #[arg(long)]
        project: String,
        /// The member's user or service-account id.
        #[arg(long)]
        principal_id: String,
    },
}

/// `conifer key …` (API keys).
#[derive(Subcommand, Debug)]
pub enum KeyCommand {
    /// API keys of a project.
    List {
        /// Project id.
        #[arg(long)]
        project: String,
    },
    /// Create an API key; prints its value once.
    Create {
        /// Project id.
        #[arg(long)]
        project: String,
        /// Name.
        #[arg(long)]
        name: String,
        /// A role (repeat for several): ProjectEditor (default), ProjectViewer,
        /// ControlPlaneEditor, ControlPlaneViewer, DataPlaneEditor, DataPlaneViewer.
        #[arg(long = "role")]
        roles: Vec<String>,
    },
    /// One API key.
    Get {
        /// Key id.
        #[arg(long)]
        id: String,
    },
    /// Rename a key and/or replace its roles.
    Update {
        /// Key id.
        #[arg(long)]
        id: String,
        /// New name.
        #[arg(long)]
        name: Option<String>,
        /// New roles (repeat for several; replaces all).
        #[arg(long = "role")]
        roles: Vec<String>,
    },
    /// Delete (revoke) an API key.
    Delete {
        /// Key id.
        #[arg(long)]
        id: String,
    },
}

/// `conifer private-endpoint …`.
#[derive(Subcommand, Debug)]
pub enum PrivateEndpointCommand {
    /// Private endpoints of a project.
    List {
        /// Project id.
        #[arg(long)]
        project: String,
    },
    /// Create a private endpoint: from then on the project's data plane answers only
    /// calls that satisfy one of its private endpoints (the API key still required).
    Create {
        /// Project id.
        #[arg(long)]
        project: String,
        /// Name, unique in the project.
        #[arg(long)]
        name: String,
        /// Calls must arrive on a node's private listener (serve --private-api-addr).
        #[arg(long)]
        private_listener: bool,
        /// Calls must come from this source range, e.g. 10.20.0.0/16 (repeat for several).
        #[arg(long = "allow-cidr", value_name = "CIDR")]
        allowed_cidrs: Vec<String>,
    },
    /// One private endpoint.
    Get {
        /// Private endpoint id.
        #[arg(long)]
        id: String,
    },
    /// Delete a private endpoint.
    Delete {
        /// Private endpoint id.
        #[arg(long)]
        id: String,
    },
}

/// `conifer operator-token …`.
#[derive(Subcommand, Debug)]
pub enum OperatorTokenCommand {
    /// Operator tokens (ids only).
    List,
    /// Create another operator token; prints its value once.
    Create,
    /// Replace an operator token; prints the new value once.
    Rotate {
        /// Token id.
        #[arg(long)]
        id: String,
    },
    /// Revoke an operator token (not the last, unless a user is an OrgOwner).
    Delete {
        /// Token id.
        #[arg(long)]
        id: String,
    },
}

/// `conifer signing-key …`.
#[derive(Subcommand, Debug)]
pub enum SigningKeyCommand {
    /// Sign new tokens with a new key; tokens of the key before stay valid until they expire.
    Rotate,
}

/// `conifer cluster …`.
#[derive(Subcommand, Debug)]
pub enum ClusterCommand {
    /// Members, leader and shard replicas as seen by the node.
    Describe,
    /// The members: id, addresses, voter or learner, leader.
    Members,
    /// Prepare a new node: issue its certificate from the cluster CA and print the
    /// `conifer serve` command that joins it (as a learner; promote it once it caught up).
    Add {
        /// The new node's id: never one a node had before (ids are not reused).
        #[arg(long)]
        id: u64,
        /// Directory of the cluster CA (ca.pem, ca-key.pem).
        #[arg(long)]
        ca_dir: PathBuf,
        /// Host names or IPs the node is reached by (repeatable); the first is its address.
        #[arg(long = "host", required = true)]
        hosts: Vec<String>,
        /// Where to write its certificate (node.pem, node-key.pem, ca.pem).
        #[arg(long)]
        out: PathBuf,
        /// Domain of index hosts: adds the SAN *.<domain>.
        #[arg(long, default_value = super::DEFAULT_DOMAIN)]
        domain: String,
    },
    /// Make a learner (a node started with `serve --join ADDR --learner`) a voter.
    Promote {
        /// Node id.
        #[arg(long)]
        id: u64,
    },
    /// Remove a node from the cluster (refused while it holds the last reachable replica
    /// of an index, naming them, unless --force).
    Remove {
        /// Node id.
        #[arg(long)]
        id: u64,
        /// Remove it even so: those indexes report Disabled until deleted.
        #[arg(long)]
        force: bool,
    },
    /// Ask every Raft group of the node to take a snapshot now (e.g. before a restart).
    Snapshot,
    /// Every member's certificates (node, cluster CA, client port, client CA): subject,
    /// issuer, expiry, days left, and a warning within the nodes'
    /// --cert-expiry-warning-days; files a node refused at its last reload; members that
    /// cannot be reached.
    Status,
}

/// Flags of `conifer login`.
#[derive(Args, Debug)]
pub struct LoginArgs {
    /// Connection flags.
    #[command(flatten)]
    pub connection: Connection,
    /// Sign-in email.
    #[arg(long)]
    pub email: String,
    /// Password [default: read from standard input].
    #[arg(long, env = "CONIFER_PASSWORD", hide_env_values = true)]
    pub password: Option<String>,
}

/// Flags of `conifer password`.
#[derive(Args, Debug)]
pub struct PasswordArgs {
    /// Connection flags.
    #[command(flatten)]
    pub connection: Connection,
    /// Sign-in email.
    #[arg(long)]
    pub email: String,
    /// Current password [default: read from standard input].
    #[arg(long, env = "CONIFER_PASSWORD", hide_env_values = true)]
    pub password: Option<String>,
    /// New password [default: read from standard input].
    #[arg(long, env = "CONIFER_NEW_PASSWORD", hide_env_values = true)]
    pub new_password: Option<String>,
}

/// Flags of `conifer token`.
#[derive(Args, Debug)]
pub struct TokenArgs {
    /// Connection flags.
    #[command(flatten)]
    pub connection: Connection,
    /// Client id (the service account's id).
    #[arg(long)]
    pub client_id: String,
    /// Client secret [default: read from standard input].
    #[arg(long, env = "CONIFER_CLIENT_SECRET", hide_env_values = true)]
    pub client_secret: Option<String>,
}

/// `value`, else a secret typed at the terminal without echo ([`secret_from_terminal`]).
fn secret_or_stdin(value: Option<String>, what: &str) -> anyhow::Result<String> {
    match value {
        Some(v) => Ok(v),
        None => secret_from_terminal(what),
    }
}

/// Reads a secret: typed at the terminal without echo (rpassword) when standard input is
/// one, else one line of standard input (a pipe).
pub(super) fn secret_from_terminal(what: &str) -> anyhow::Result<String> {
    use std::io::IsTerminal;
    let line = if std::io::stdin().is_terminal() {
        rpassword::prompt_password(format!("{what}: ")).context("reading from the terminal")?
    } else {
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line)?;
        line
    };
    let line = line.trim_end_matches(['\r', '\n']).to_string();
    if line.is_empty() {
        bail!(super::exit::Usage(format!(
            "no {what} given: give its flag or environment variable (see --help), or type it \
             at the prompt"
        )));
    }
    Ok(line)
}

/// A client of the node at `api_url` (else `--bootstrap`'s), trusting `ca_cert` (else
/// `--bootstrap`'s; none: the system's trust store), presenting `certificate`'s client
/// certificate if given, with no other credential yet, and the parsed bootstrap file.
pub(super) fn endpoint(
    api_url: Option<String>,
    ca_cert: Option<PathBuf>,
    bootstrap: Option<&std::path::Path>,
    proxy: Option<&str>,
    certificate: &ClientCertificateArgs,
) -> anyhow::Result<(AdminClient, Option<Value>)> {
    let proxy = match proxy {
        Some(text) => text
            .parse::<conifer_client::Proxy>()
            .map_err(|e| super::exit::Usage(e.to_string()))?,
        None => conifer_client::Proxy::Environment,
    };
    let boot: Option<Value> = match bootstrap {
        Some(path) => Some(
            serde_json::from_slice(
                &std::fs::read(path).with_context(|| format!("reading {}", path.display()))?,
            )
            .with_context(|| format!("parsing {}", path.display()))?,
        ),
        None => None,
    };
    let from_boot = |field: &str| {
        boot.as_ref()
            .and_then(|b| b[field].as_str())
            .map(String::from)
    };
    let Some(url) = api_url.or_else(|| from_boot("api_url")) else {
        bail!(super::exit::Usage(
            "no node URL: give --api-url (or CONIFER_API_URL, or --bootstrap)".into()
        ));
    };
    // No CA named: the node's client certificate chains to one the system already trusts
    // (`serve --client-tls-cert`, or the cluster CA after `conifer certs trust`).
    let ca_pem = match ca_cert.or_else(|| from_boot("ca_cert").map(PathBuf::from)) {
        Some(ca) => Some(std::fs::read(&ca).with_context(|| format!("reading {}", ca.display()))?),
        None => None,
    };
    let transport = conifer_client::Transport {
        ca_pem,
        identity: certificate.identity()?,
        proxy,
    };
    Ok((AdminClient::with_transport(&url, &transport, None)?, boot))
}

pub(super) fn client(c: &Connection, need_token: bool) -> anyhow::Result<AdminClient> {
    let (client, boot) = endpoint(
        c.api_url.clone(),
        c.ca_cert.clone(),
        c.bootstrap.as_deref(),
        c.proxy.as_deref(),
        &c.certificate,
    )?;
    let token = c.token.clone().or_else(|| {
        boot.as_ref()
            .and_then(|b| b["admin_token"].as_str())
            .map(String::from)
    });
    match token {
        Some(token) => Ok(client.with_token(&token)),
        // The client certificate authenticates as its service account.
        None if need_token && !c.certificate.is_set() => {
            bail!(
                "no credential: give --token (or CONIFER_TOKEN, or --bootstrap), or a \
                 client certificate (--client-cert, --client-key)"
            )
        }
        None => Ok(client),
    }
}

/// Columns shown for a list, by the kind of object; for other rows (query matches,
/// records, namespaces) every field of the rows in first-seen order.
fn columns(rows: &[Value]) -> Vec<String> {
    let first = rows.first();
    let has = |field: &str| first.is_some_and(|r| r.get(field).is_some());
    let known: &[&str] = if has("backup_id") && has("source_index_name") {
        &[
            "backup_id",
            "name",
            "source_index_name",
            "status",
            "record_count",
            "size_bytes",
            "created_at",
        ]
    } else if has("restore_job_id") {
        &[
            "restore_job_id",
            "backup_id",
            "target_index_name",
            "status",
            "percent_complete",
            "records_restored",
            "created_at",
        ]
    } else if has("environment") && has("status") && !has("host") {
        &[
            "name",
            "source",
            "status",
            "vector_count",
            "size",
            "dimension",
        ]
    } else if has("principal_type") {
        &["principal_id", "principal_type", "role", "created_at"]
    } else if has("email") {
        &["id", "email", "name", "role", "created_at"]
    } else if has("client_id") {
        &["id", "name", "role", "created_at"]
    } else if has("roles") {
        &["id", "name", "roles", "created_at"]
    } else if has("organization_id") && has("max_pods") {
        &["id", "name", "organization_id", "created_at"]
    } else if has("created_at") {
        &["id", "name", "created_at"]
    } else if has("cluster_addr") {
        &["id", "role", "leader", "api_addr", "cluster_addr"]
    } else if has("dimension") && has("host") {
        &[
            "name",
            "dimension",
            "metric",
            "host",
            "state",
            "deletion_protection",
        ]
    } else {
        // Query matches, records, namespaces: the identifying fields first, then every
        // other field seen in the rows.
        let mut cols: Vec<String> = ["id", "name", "score"]
            .into_iter()
            .filter(|c| rows.iter().any(|r| r.get(c).is_some()))
            .map(String::from)
            .collect();
        for row in rows {
            for key in row.as_object().into_iter().flat_map(|o| o.keys()) {
                if !cols.contains(key) {
                    cols.push(key.clone());
                }
            }
        }
        return cols;
    };
    known.iter().map(|c| c.to_string()).collect()
}

/// A value as one table cell: strings bare, lists of scalars comma-separated, objects and
/// nested lists as compact JSON.
fn cell(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        Value::Array(items) if items.iter().all(|i| !i.is_object() && !i.is_array()) => {
            items.iter().map(cell).collect::<Vec<_>>().join(",")
        }
        other => other.to_string(),
    }
}

/// A table without borders, columns two spaces apart, wrapped to the terminal's width.
fn table(header: Vec<String>, rows: Vec<Vec<String>>) -> comfy_table::Table {
    let mut table = comfy_table::Table::new();
    table
        .load_preset(comfy_table::presets::NOTHING)
        .set_content_arrangement(comfy_table::ContentArrangement::Dynamic);
    if !header.is_empty() {
        table.set_header(header);
    }
    for row in rows {
        table.add_row(row);
    }
    for column in table.column_iter_mut() {
        column.set_padding((0, 2));
    }
    table
}

pub(super) fn print_table<C: AsRef<str>>(rows: &[Value], cols: &[C]) {
    let cells = rows
        .iter()
        .map(|r| cols.iter().map(|c| cell(&r[c.as_ref()])).collect())
        .collect();
    let header = cols.iter().map(|c| c.as_ref().to_uppercase()).collect();
    println!("{}", trim_lines(&table(header, cells).to_string()));
}

/// Without the padding at the ends of lines.
fn trim_lines(text: &str) -> String {
    text.lines()
        .map(str::trim_end)
        .collect::<Vec<_>>()
        .join("\n")
}

/// An object's fields as (name, cell) pairs, nested objects flattened to `outer.inner`.
fn fields(prefix: &str, map: &serde_json::Map<String, Value>, out: &mut Vec<Vec<String>>) {
    for (k, v) in map {
        let name = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match v {
            Value::Object(inner) if !inner.is_empty() => fields(&name, inner, out),
            _ => out.push(vec![name, cell(v)]),
        }
    }
}

/// Prints `value`: with `--output json` as the API's JSON; else a list as a table, an
/// object as a table of its fields (nested ones as `outer.inner`).
pub fn print(format: OutputFormat, value: &Value) {
    if format == OutputFormat::Json {
        println!(
            "{}",
            serde_json::to_string_pretty(value).unwrap_or_default()
        );
        return;
    }
    match value {
        Value::Array(rows) if rows.is_empty() => println!("(none)"),
        Value::Array(rows) => print_table(rows, &columns(rows)),
        Value::Object(map) => {
            let mut rows = Vec::new();
            fields("", map, &mut rows);
            println!("{}", trim_lines(&table(Vec::new(), rows).to_string()));
        }
        Value::Null => println!("done"),
        other => println!("{other}"),
    }
}

/// `conifer cluster add`: checks `id` is not a member, issues the node certificate into
/// `out`, and prints the command that starts the node and joins it through a member.
async fn add_node(
    c: &AdminClient,
    id: u64,
    ca_dir: &std::path::Path,
    hosts: Vec<String>,
    out: &std::path::Path,
    domain: String,
) -> anyhow::Result<()> {
    use crate::tls::{self, LeafKind};
    if id == 0 {
        bail!(super::data::Usage("--id must be at least 1".into()));
    }
    let cluster = c.cluster().await?;
    let members = cluster["members"].as_array().cloned().unwrap_or_default();
    if members.iter().any(|m| m["id"] == id) {
        bail!(super::data::Usage(format!(
            "node {id} is a member already: give the new node an id no node had before"
        )));
    }
    let join = members
        .iter()
        .find(|m| m["leader"] == true)
        .or(members.first())
        .and_then(|m| m["cluster_addr"].as_str())
        .context("the cluster reported no member to join through")?
        .to_string();
    let address = hosts[0].clone();
    let kind = LeafKind::Node {
        id,
        hosts,
        domain: Some(domain),
    };
    super::issue_node_certificate(ca_dir, out, kind, tls::LEAF_VALIDITY_DAYS)?;
    eprintln!(
        "issued node-{id}'s certificate in {}; on the new machine (with that directory), run:",
        out.display()
    );
    println!(
        "conifer serve --data-dir <DATA_DIR> --keyring <KEYRING_OUTSIDE_DATA_DIR> --node-id {id} \\\n  --tls-dir {} --api-addr {address}:7443 --cluster-addr {address}:7444 --join {join} --learner",
        out.display()
    );
    eprintln!(
        "(the keyring file need not exist: the node receives the cluster's root key into it \
         when it joins)"
    );
    eprintln!("then, once it has caught up: conifer cluster promote --id {id}");
    Ok(())
}

async fn default_org(client: &AdminClient, org: Option<String>) -> anyhow::Result<String> {
    if let Some(org) = org {
        return Ok(org);
    }
    client
        .list_organizations()
        .await?
        .first()
        .and_then(|o| o["id"].as_str())
        .map(String::from)
        .context("no organization visible to this credential; give --org")
}

fn roles_or_none(roles: &[String]) -> Option<Vec<&str>> {
    (!roles.is_empty()).then(|| roles.iter().map(String::as_str).collect())
}

/// Every admin command, run against the connection given.
#[derive(Subcommand, Debug)]
pub enum Admin {
    /// Sign in as a user; prints a bearer token (use it as CONIFER_TOKEN).
    Login(LoginArgs),
    /// Change your own password (signs you out everywhere; prints a new token).
    Password(PasswordArgs),
    /// Sign in as a service account (client credentials); prints a bearer token.
    Token(TokenArgs),
    /// Organizations.
    Org(OrgArgs),
    /// Organization members (users).
    Member(MemberArgs),
    /// Service accounts.
    ServiceAccount(ServiceAccountArgs),
    /// Projects.
    Project(ProjectArgs),
    /// Members of a project and their roles.
    ProjectMember(ProjectMemberArgs),
    /// API keys.
    Key(KeyArgs),
    /// Private endpoints of projects: their data plane on the private listener and/or
    /// from allowed source ranges only.
    PrivateEndpoint(PrivateEndpointArgs),
    /// Operator (break-glass) tokens.
    OperatorToken(OperatorTokenArgs),
    /// Keys that sign bearer tokens.
    SigningKey(SigningKeyArgs),
    /// The cluster.
    Cluster(ClusterArgs),
    /// The root key: status and rotation.
    Keys(KeysArgs),
    /// The audit log: list, export as JSON lines, verify the hash chain.
    Audit(super::audit::AuditArgs),
}

/// Runs an admin command and prints its result.
pub async fn run(admin: Admin) -> anyhow::Result<()> {
    let (format, value) = match admin {
        Admin::Audit(a) => return super::audit::run(a).await,
        Admin::Login(a) => {
            let c = client(&a.connection, false)?;
            let password = secret_or_stdin(a.password, "password")?;
            (a.connection.output, c.login(&a.email, &password).await?)
        }
        Admin::Password(a) => {
            let c = client(&a.connection, false)?;
            let password = secret_or_stdin(a.password, "current password")?;
            let new_password = secret_or_stdin(a.new_password, "new password")?;
            (
                a.connection.output,
                c.change_password(&a.email, &password, &new_password)
                    .await?,
            )
        }
        Admin::Token(a) => {
            let c = client(&a.connection, false)?;
            let secret = secret_or_stdin(a.client_secret, "client secret")?;
            (
                a.connection.output,
                c.client_credentials(&a.client_id, &secret).await?,
            )
        }
        Admin::Org(a) => {
            let c = client(&a.connection, true)?;
            let v = match a.command {
                OrgCommand::List => Value::Array(c.list_organizations().await?),
                OrgCommand::Get { id } => c.get_organization(&default_org(&c, id).await?).await?,
                OrgCommand::Create { name } => c.create_organization(&name).await?,
                OrgCommand::Rename { id, name } => {
                    c.rename_organization(&default_org(&c, id).await?, &name)
                        .await?
                }
                OrgCommand::Delete { id } => {
                    c.delete_organization(&id).await?;
                    Value::Null
                }
            };
            (a.connection.output, v)
        }
        Admin::Member(a) => {
            let c = client(&a.connection, true)?;
            let v = match a.command {
                MemberCommand::List { org } => {
                    Value::Array(c.list_members(&default_org(&c, org).await?).await?)
                }
                MemberCommand::Create {
                    org,
                    email,
                    name,
                    role,
                    password,
                } => {
                    let org = default_org(&c, org).await?;
                    let password = secret_or_stdin(password, "password")?;
                    c.create_member(&org, &email, name.as_deref(), &role, &password)
                        .await?
                }
                MemberCommand::Update {
                    org,
                    user_id,
                    role,
                    password,
                } => {
                    let org = default_org(&c, org).await?;
                    c.update_member(&org, &user_id, role.as_deref(), password.as_deref())
                        .await?
                }
                MemberCommand::Remove { org, user_id } => {
                    c.remove_member(&default_org(&c, org).await?, &user_id)
                        .await?;
                    Value::Null
                }
            };
            (a.connection.output, v)
        }
        Admin::ServiceAccount(a) => {
            let c = client(&a.connection, true)?;
            let v = match a.command {
                ServiceAccountCommand::List { org } => Value::Array(
                    c.list_service_accounts(&default_org(&c, org).await?)
                        .await?,
                ),
                ServiceAccountCommand::Create { org, name, role } => {
                    let org = default_org(&c, org).await?;
                    c.create_service_account(&org, &name, role.as_deref())
                        .await?
                }
                ServiceAccountCommand::Update { id, name, role } => {
                    c.update_service_account(&id, name.as_deref(), role.as_deref())
                        .await?
                }
                ServiceAccountCommand::SetCertificateNames {
                    id,
                    certificate_names,
                } => {
                    c.set_service_account_certificate_names(&id, &certificate_names)
                        .await?
                }
                ServiceAccountCommand::RotateSecret { id } => {
                    c.rotate_service_account_secret(&id).await?
                }
                ServiceAccountCommand::Delete { id } => {
                    c.delete_service_account(&id).await?;
                    Value::Null
                }
            };
            (a.connection.output, v)
        }
        Admin::Project(a) => {
            let c = client(&a.connection, true)?;
            let v = match a.command {
                ProjectCommand::List => Value::Array(c.list_projects().await?),
                ProjectCommand::Create {
                    name,
                    cmek_key_arn: None,
                } => c.create_project(&name).await?,
                ProjectCommand::Create {
                    name,
                    cmek_key_arn: Some(arn),
                } => c.create_cmek_project(&name, &arn).await?,
                ProjectCommand::SetCmek { id, key_arn } => {
                    c.set_project_cmek(&id, &key_arn).await?
                }
                ProjectCommand::Get { id } => c.get_project(&id).await?,
                ProjectCommand::Rename { id, name } => c.rename_project(&id, &name).await?,
                ProjectCommand::ClientCertificates { id, setting } => {
                    c.set_project_client_certificates(&id, setting == "required")
                        .await?
                }
                ProjectCommand::Delete { id } => {
                    c.delete_project(&id).await?;
                    Value::Null
                }
            };
            (a.connection.output, v)
        }
        Admin::ProjectMember(a) => {
            let c = client(&a.connection, true)?;
            let v = match a.command {
                ProjectMemberCommand::List { project } => {
                    Value::Array(c.list_project_members(&project).await?)
                }
                ProjectMemberCommand::Add {
                    project,
                    user_id,
                    email,
                    service_account_id,
                    role,
                } => {
                    let who = match (&user_id, &email, &service_account_id) {
                        (Some(id), _, _) => ("user_id", id.as_str()),
                        (_, Some(e), _) => ("email", e.as_str()),
                        (_, _, Some(id)) => ("service_account_id", id.as_str()),
                        _ => bail!("give --user-id, --email or --service-account-id"),
                    };
                    c.add_project_member(&project, who, &role).await?
                }
                ProjectMemberCommand::SetRole {
                    project,
                    principal_id,
                    role,
                } => {
                    c.set_project_member_role(&project, &principal_id, &role)
                        .await?
                }
                ProjectMemberCommand::Remove {
                    project,
                    principal_id,
                } => {
                    c.remove_project_member(&project, &principal_id).await?;
                    Value::Null
                }
            };
            (a.connection.output, v)
        }
        Admin::Key(a) => {
            let c = client(&a.connection, true)?;
            let v = match a.command {
                KeyCommand::List { project } => Value::Array(c.list_api_keys(&project).await?),
                KeyCommand::Create {
                    project,
                    name,
                    roles,
                } => {
                    let roles = roles_or_none(&roles).unwrap_or_else(|| vec!["ProjectEditor"]);
                    c.create_api_key(&project, &name, &roles).await?
                }
                KeyCommand::Get { id } => c.get_api_key(&id).await?,
                KeyCommand::Update { id, name, roles } => {
                    let roles = roles_or_none(&roles);
                    c.update_api_key(&id, name.as_deref(), roles.as_deref())
                        .await?
                }
                KeyCommand::Delete { id } => {
                    c.delete_api_key(&id).await?;
                    Value::Null
                }
            };
            (a.connection.output, v)
        }
        Admin::PrivateEndpoint(a) => {
            let c = client(&a.connection, true)?;
            let v = match a.command {
                PrivateEndpointCommand::List { project } => {
                    Value::Array(c.list_private_endpoints(&project).await?)
                }
                PrivateEndpointCommand::Create {
                    project,
                    name,
                    private_listener,
                    allowed_cidrs,
                } => {
                    c.create_private_endpoint(&project, &name, private_listener, &allowed_cidrs)
                        .await?
                }
                PrivateEndpointCommand::Get { id } => c.get_private_endpoint(&id).await?,
                PrivateEndpointCommand::Delete { id } => {
                    c.delete_private_endpoint(&id).await?;
                    Value::Null
                }
            };
            (a.connection.output, v)
        }
        Admin::OperatorToken(a) => {
            let c = client(&a.connection, true)?;
            let v = match a.command {
                OperatorTokenCommand::List => Value::Array(c.list_operator_tokens().await?),
                OperatorTokenCommand::Create => c.create_operator_token().await?,
                OperatorTokenCommand::Rotate { id } => c.rotate_operator_token(&id).await?,
                OperatorTokenCommand::Delete { id } => {
                    c.delete_operator_token(&id).await?;
                    Value::Null
                }
            };
            (a.connection.output, v)
        }
        Admin::SigningKey(a) => {
            let c = client(&a.connection, true)?;
            let v = match a.command {
                SigningKeyCommand::Rotate => c.rotate_signing_key().await?,
            };
            (a.connection.output, v)
        }
        Admin::Cluster(a) => {
            let c = client(&a.connection, true)?;
            let v = match a.command {
                ClusterCommand::Describe => c.cluster().await?,
                ClusterCommand::Add {
                    id,
                    ca_dir,
                    hosts,
                    out,
                    domain,
                } => {
                    add_node(&c, id, &ca_dir, hosts, &out, domain).await?;
                    return Ok(());
                }
                ClusterCommand::Members => c.cluster().await?["members"].clone(),
                ClusterCommand::Status => cluster_status(&a.connection, &c).await?,
                ClusterCommand::Promote { id } => {
                    c.promote_cluster_member(id).await?;
                    eprintln!("node {id} is a voter");
                    return Ok(());
                }
                ClusterCommand::Remove { id, force } => {
                    c.remove_cluster_member(id, force).await?;
                    eprintln!("node {id} removed");
                    return Ok(());
                }
                ClusterCommand::Snapshot => {
                    c.snapshot().await?;
                    eprintln!("snapshots requested");
                    return Ok(());
                }
            };
            (a.connection.output, v)
        }
        Admin::Keys(a) => {
            let c = client(&a.connection, true)?;
            let v = match a.command {
                KeysCommand::Status => c.root_keys().await?,
                KeysCommand::RotateRoot { no_wait, timeout_s } => {
                    let started = c.rotate_root_key().await?;
                    let to = started["rotation"]["to_version"].as_u64().unwrap_or(0);
                    eprintln!("root key rotation to version {to} started");
                    if no_wait {
                        started
                    } else {
                        wait_for_rotation(&c, to, Duration::from_secs(timeout_s)).await?
                    }
                }
            };
            (a.connection.output, v)
        }
    };
    print(format, &value);
    Ok(())
}

/// `conifer cluster status`: one row per certificate of every member (asked at its own
/// client port, with this command's credentials), one per refused reload, one per member
/// that cannot be reached.
async fn cluster_status(connection: &Connection, c: &AdminClient) -> anyhow::Result<Value> {
    let here = c.cluster().await?;
    let scheme = if c.base_url().starts_with("http://") {
        "http"
    } else {
        "https"
    };
    let mut rows = Vec::new();
    for member in here["members"].as_array().cloned().unwrap_or_default() {
        let id = member["id"].as_u64().unwrap_or_default();
        let node = format!("node-{id}");
        let info = if here["node_id"].as_u64() == Some(id) {
            Ok(here.clone())
        } else {
            let mut to_member = connection.clone();
            to_member.api_url = Some(format!(
                "{scheme}://{}",
                member["api_addr"].as_str().unwrap_or_default()
            ));
            match client(&to_member, true) {
                Ok(m) => m.cluster().await.map_err(anyhow::Error::from),
                Err(e) => Err(e),
            }
        };
        let info = match info {
            Ok(info) => info,
            Err(e) => {
                rows.push(serde_json::json!({
                    "node": node, "node_id": id, "status": format!("unreachable: {e}"),
                }));
                continue;
            }
        };
        for cert in info["certificates"].as_array().cloned().unwrap_or_default() {
            rows.push(serde_json::json!({
                "node": node,
                "node_id": id,
                "role": cert["role"],
                "subject": cert["subject"],
                "issuer": cert["issuer"],
                "not_after": cert["not_after"],
                "days_left": cert["days_left"],
                "status": cert["warning"].as_str().unwrap_or("ok"),
            }));
        }
        if let Some(refused) = info["certificate_reload"]["refused"].as_str() {
            rows.push(serde_json::json!({
                "node": node,
                "node_id": id,
                "role": "reload",
                "status": format!("new certificate files refused (the node keeps its own): {refused}"),
            }));
        }
    }
    Ok(Value::Array(rows))
}

/// Follows a root key rotation to version `to` with a progress bar (project keys
/// re-wrapped) until it is finished and every member holds no older version; answers the
/// final state. A failing step is shown as it is retried; past `timeout` it gives up (the
/// rotation carries on in the cluster).
async fn wait_for_rotation(c: &AdminClient, to: u64, timeout: Duration) -> anyhow::Result<Value> {
    let bar = indicatif::ProgressBar::new(0);
    bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} root key rotation [{bar:30}] {pos}/{len} project keys re-wrapped, {msg} ({elapsed})",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let state = c.root_keys().await?;
        let rotation = &state["rotation"];
        let retired_everywhere = state["nodes"].as_array().is_some_and(|nodes| {
            nodes.iter().all(|n| {
                n["versions"]
                    .as_array()
                    .is_some_and(|v| v.iter().all(|v| v["version"].as_u64() >= Some(to)))
            })
        });
        if rotation.is_null() && state["current_version"].as_u64() >= Some(to) {
            if retired_everywhere {
                bar.finish_and_clear();
                eprintln!(
                    "root key version {to} is current; older versions are retired on every member"
                );
                return Ok(state);
            }
            bar.set_message("retiring older versions on every member");
        } else if !rotation.is_null() {
            bar.set_length(rotation["project_keys_total"].as_u64().unwrap_or(0));
            bar.set_position(rotation["project_keys_rewrapped"].as_u64().unwrap_or(0));
            bar.set_message(match state["last_error"].as_str() {
                Some(e) => format!("retrying: {e}"),
                None => "in progress".to_string(),
            });
        }
        if std::time::Instant::now() >= deadline {
            bar.abandon();
            bail!(
                "the rotation to root key version {to} has not finished after {} s; it carries \
                 on — follow it with `conifer keys status`",
                timeout.as_secs()
            );
        }
        bar.tick();
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
