//! `conifer certs trust`: makes clients trust the cluster CA without hand-made bundles.
//! It installs the CA into the system trust store (Debian's `update-ca-certificates`, which
//! curl, OpenSSL, Go, the `conifer` CLI and most system tools read) and writes one PEM
//! bundle of the system's CAs plus the cluster CA, for clients that read a bundle named by
//! an environment variable instead (Python's `ssl`, requests, httpx, gRPC, Node).

use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};
use clap::Args;
use sha2::{Digest, Sha256};

/// Debian's directory of locally added CA certificates (`*.crt`, read by
/// `update-ca-certificates`).
pub const DEBIAN_LOCAL_CA_DIR: &str = "/usr/local/share/ca-certificates";
/// Debian's bundle of every trusted CA, rebuilt by `update-ca-certificates`.
pub const DEBIAN_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";
/// File name of the combined bundle written beside the CA by default.
pub const BUNDLE_FILE: &str = "ca-bundle.pem";

/// Flags of `conifer certs trust`.
#[derive(Args, Debug)]
#[command(after_help = "Examples:
  sudo conifer certs trust --bootstrap conifer-data/bootstrap.json
  eval \"$(conifer certs trust --no-system --ca-cert conifer-data/tls/ca.pem)\"
  sudo conifer certs trust --remove --ca-cert conifer-data/tls/ca.pem")]
pub struct TrustArgs {
    /// The CA certificate to trust (PEM) [default: ca_cert of --bootstrap].
    #[arg(long, env = "CONIFER_CA_CERT")]
    pub ca_cert: Option<PathBuf>,
    /// A node's bootstrap.json, for its ca_cert.
    #[arg(long, env = "CONIFER_BOOTSTRAP")]
    pub bootstrap: Option<PathBuf>,
    /// Where to write the bundle of the system's CAs plus this one [default: ca-bundle.pem
    /// beside the CA certificate].
    #[arg(long)]
    pub bundle: Option<PathBuf>,
    /// Leave the system trust store alone (needs no root): only write the bundle.
    #[arg(long)]
    pub no_system: bool,
    /// Take the CA out of the system trust store again and delete the bundle.
    #[arg(long, conflicts_with = "no_system")]
    pub remove: bool,
    /// Directory of locally added CA certificates that `update-ca-certificates` reads.
    #[arg(long, default_value = DEBIAN_LOCAL_CA_DIR)]
    pub store_dir: PathBuf,
    /// The system's CA bundle, which the combined bundle starts from.
    #[arg(long, default_value = DEBIAN_CA_BUNDLE)]
    pub system_bundle: PathBuf,
}

/// One CA certificate, checked.
struct CaCertificate {
    pem: String,
    subject: String,
    /// SHA-256 of the DER, hex.
    fingerprint: String,
}

/// Reads `path`: exactly one certificate, and a CA's (basic constraints CA:TRUE).
fn read_ca(path: &Path) -> anyhow::Result<CaCertificate> {
    let pem =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let ders = rustls_pemfile::certs(&mut pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("{}: not PEM", path.display()))?;
    let [der] = ders.as_slice() else {
        bail!(
            "{} holds {} certificates; give the one CA certificate (ca.pem)",
            path.display(),
            ders.len()
        );
    };
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let is_ca = cert
        .basic_constraints()
        .ok()
        .flatten()
        .is_some_and(|bc| bc.value.ca);
    if !is_ca {
        bail!(
            "{} is not a CA certificate (no basic constraints CA:TRUE): give the cluster \
             CA (ca.pem), not a node or client certificate",
            path.display()
        );
    }
    Ok(CaCertificate {
        pem: pem.trim_end().to_string() + "\n",
        subject: cert.subject().to_string(),
        fingerprint: hex::encode(Sha256::digest(der.as_ref())),
    })
}

/// The CA file named by `--ca-cert`, else by `--bootstrap`'s `ca_cert`.
fn ca_path(args: &TrustArgs) -> anyhow::Result<PathBuf> {
    if let Some(path) = &args.ca_cert {
        return Ok(path.clone());
    }
    let Some(boot) = &args.bootstrap else {
        bail!("no CA certificate: give --ca-cert (or CONIFER_CA_CERT, or --bootstrap)");
    };
    let text = std::fs::read(boot).with_context(|| format!("reading {}", boot.display()))?;
    let value: serde_json::Value =
        serde_json::from_slice(&text).with_context(|| format!("parsing {}", boot.display()))?;
    match value["ca_cert"].as_str() {
        Some(path) => Ok(PathBuf::from(path)),
        None => bail!(
            "{} names no ca_cert: the client port presents a certificate of the operator's \
             (--client-tls-cert), which clients trust already",
            boot.display()
        ),
    }
}

/// Runs `update-ca-certificates` with `args`; its output goes to stderr.
fn update_ca_certificates(args: &[&str]) -> anyhow::Result<()> {
    let output = match Command::new("update-ca-certificates").args(args).output() {
        Ok(output) => output,
        Err(e) if e.kind() == ErrorKind::NotFound => bail!(
            "update-ca-certificates not found: install Debian's ca-certificates package, or \
             use --no-system and the bundle"
        ),
        Err(e) => return Err(e).context("running update-ca-certificates"),
    };
    eprint!("{}", String::from_utf8_lossy(&output.stdout));
    if !output.status.success() {
        bail!(
            "update-ca-certificates failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

/// The error of a write to the system store that the user may not make.
fn store_error(e: std::io::Error, path: &Path) -> anyhow::Error {
    if e.kind() == ErrorKind::PermissionDenied {
        anyhow::anyhow!(
            "{}: permission denied: the system trust store needs root (run it with sudo), \
             or give --no-system to write only the bundle",
            path.display()
        )
    } else {
        anyhow::Error::new(e).context(format!("writing {}", path.display()))
    }
}

/// Runs `conifer certs trust`. Prints the environment line (`export SSL_CERT_FILE=…`) on
/// stdout, so that `eval "$(conifer certs trust …)"` applies it, and what it did on stderr.
pub fn run(args: TrustArgs) -> anyhow::Result<()> {
    let path = ca_path(&args)?;
    let ca = read_ca(&path)?;
    let stored = args
        .store_dir
        .join(format!("conifer-{}.crt", &ca.fingerprint[..16]));
    let bundle = match &args.bundle {
        Some(bundle) => bundle.clone(),
        None => path.parent().unwrap_or(Path::new(".")).join(BUNDLE_FILE),
    };
    if args.remove {
        match std::fs::remove_file(&stored) {
            Ok(()) => {
                update_ca_certificates(&["--fresh"])?;
                eprintln!("removed {} from the system trust store", ca.subject);
            }
            Err(e) if e.kind() == ErrorKind::NotFound => {
                eprintln!("{} was not in the system trust store", ca.subject)
            }
            Err(e) => return Err(store_error(e, &stored)),
        }
        match std::fs::remove_file(&bundle) {
            Ok(()) => eprintln!("deleted {}", bundle.display()),
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(e).context(format!("deleting {}", bundle.display())),
        }
        return Ok(());
    }
    if !args.no_system {
        std::fs::create_dir_all(&args.store_dir).map_err(|e| store_error(e, &args.store_dir))?;
        std::fs::write(&stored, &ca.pem).map_err(|e| store_error(e, &stored))?;
        update_ca_certificates(&[])?;
        eprintln!(
            "trusted {} (SHA-256 {}) in the system trust store: {}",
            ca.subject,
            ca.fingerprint,
            stored.display()
        );
    }
    let mut text = match std::fs::read_to_string(&args.system_bundle) {
        Ok(text) => text,
        Err(e) if e.kind() == ErrorKind::NotFound => {
            eprintln!(
                "no system bundle at {}: the bundle holds only this CA",
                args.system_bundle.display()
            );
            String::new()
        }
        Err(e) => return Err(e).context(format!("reading {}", args.system_bundle.display())),
    };
    let flat: String = text.lines().map(str::trim).collect();
    if !flat.contains(&ca_body(&ca.pem)) {
        if !text.is_empty() && !text.ends_with('\n') {
            text.push('\n');
        }
        text.push_str(&ca.pem);
    }
    // Through a new file renamed over the old one: a bundle an earlier `sudo` run left
    // owned by root is replaced by whoever may write the directory.
    let partial = bundle.with_extension(format!("tmp-{}", std::process::id()));
    std::fs::write(&partial, text).with_context(|| format!("writing {}", partial.display()))?;
    std::fs::rename(&partial, &bundle)
        .with_context(|| format!("renaming {} to {}", partial.display(), bundle.display()))?;
    let bundle = std::fs::canonicalize(&bundle)?;
    let ca_file = std::fs::canonicalize(&path)?;
    eprintln!(
        "wrote {}: the system's CAs and this one. For Python (ssl, requests, httpx), gRPC and \
         Node in this shell:",
        bundle.display()
    );
    let b = shell_quote(&bundle.display().to_string());
    println!(
        "export SSL_CERT_FILE={b} REQUESTS_CA_BUNDLE={b} GRPC_DEFAULT_SSL_ROOTS_FILE_PATH={b} \
         NODE_EXTRA_CA_CERTS={}",
        shell_quote(&ca_file.display().to_string())
    );
    Ok(())
}

/// The base64 body of a PEM certificate on one line, to find it in a bundle (its lines
/// joined) whatever its line breaks.
fn ca_body(pem: &str) -> String {
    pem.lines()
        .filter(|l| !l.starts_with("-----"))
        .map(str::trim)
        .collect()
}

/// `text` as one shell word: as it is when it holds only characters no shell treats
/// specially, else in single quotes.
fn shell_quote(text: &str) -> String {
    let plain = !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+:,@%=".contains(c));
    if plain {
        text.to_string()
    } else {
        format!("'{}'", text.replace('\'', "'\\''"))
    }
}
