//! A moto server — a real AWS KMS and IAM API over HTTP on 127.0.0.1 — for the tests of
//! keys in AWS KMS, driven through `tests/kms/moto_fixture.py` (boto3).
//!
//! The venv holding moto is `CONIFER_MOTO_VENV` (default `/var/tmp/conifer-venv-moto`),
//! which `scripts/test.sh` creates from `tests/kms/requirements-moto.txt`. A test that
//! needs it fails, naming the command that creates it, when it is missing.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::Value;

/// The region of the fixture's keys.
pub const REGION: &str = "us-east-1";

/// Credentials of an IAM user of the moto server.
#[derive(Clone, Debug)]
pub struct Credentials {
    /// `AWS_ACCESS_KEY_ID`.
    pub access_key_id: String,
    /// `AWS_SECRET_ACCESS_KEY`.
    pub secret_access_key: String,
}

impl Credentials {
    fn from(value: &Value) -> anyhow::Result<Self> {
        let field = |name: &str| {
            value[name]
                .as_str()
                .map(str::to_string)
                .with_context(|| format!("no {name} in {value}"))
        };
        Ok(Self {
            access_key_id: field("access_key_id")?,
            secret_access_key: field("secret_access_key")?,
        })
    }

    /// The environment a process uses these credentials (and the fixture's region) with.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID".into(), self.access_key_id.clone()),
            (
                "AWS_SECRET_ACCESS_KEY".into(),
                self.secret_access_key.clone(),
            ),
            ("AWS_REGION".into(), REGION.into()),
            // Nothing of the machine's own AWS configuration.
            ("AWS_CONFIG_FILE".into(), "/dev/null".into()),
            ("AWS_SHARED_CREDENTIALS_FILE".into(), "/dev/null".into()),
            ("AWS_EC2_METADATA_DISABLED".into(), "true".into()),
        ]
    }
}

/// A running moto server; killed when dropped.
pub struct Moto {
    child: Child,
    /// `http://127.0.0.1:<port>`.
    pub endpoint: String,
    venv: PathBuf,
    /// With IAM enforcement: the admin's credentials (the fixture's own calls) and the
    /// node user's (Conifer's); without, both are moto's defaults.
    pub admin: Credentials,
    /// The credentials Conifer's nodes use.
    pub node: Credentials,
}

fn venv() -> PathBuf {
    std::env::var_os("CONIFER_MOTO_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/conifer-venv-moto"))
}

fn fixture_script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("kms/moto_fixture.py")
}

impl Moto {
    /// Starts a moto server on a free loopback port. With `enforce_iam`, every request after
    /// the fixture's first three must be signed by an IAM user allowed the action: the
    /// fixture then creates `admin` (allowed everything) and `node` (allowed KMS), whose
    /// policy [`Moto::deny`] and [`Moto::allow`] remove and restore.
    pub fn start(enforce_iam: bool) -> anyhow::Result<Self> {
        let venv = venv();
        let server = venv.join("bin/moto_server");
        if !server.exists() {
            bail!(
                "{} is missing: create it with `scripts/venv.sh {} tests/kms/requirements-moto.txt` \
                 (scripts/test.sh does)",
                server.display(),
                venv.display()
            );
        }
        let port = crate::free_port_on("127.0.0.1");
        let mut cmd = Command::new(&server);
        cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if enforce_iam {
            cmd.env("INITIAL_NO_AUTH_ACTION_COUNT", "3");
        }
        let child = cmd.spawn().context("starting moto_server")?;
        let defaults = Credentials {
            access_key_id: "testing".into(),
            secret_access_key: "testing".into(),
        };
        let mut moto = Self {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
            venv,
            admin: defaults.clone(),
            node: defaults,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                bail!("moto_server did not listen on {port} within 30 s");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        if enforce_iam {
            let users = moto.run(&["setup"])?;
            moto.admin = Credentials::from(&users["admin"])?;
            moto.node = Credentials::from(&users["node"])?;
        }
        Ok(moto)
    }

    /// Runs a fixture command (as the admin) and returns what it printed.
    pub fn run(&self, args: &[&str]) -> anyhow::Result<Value> {
        let out = Command::new(self.venv.join("bin/python"))
            .arg(fixture_script())
            .arg(&self.endpoint)
            .args(args)
            .env("ADMIN_ACCESS_KEY_ID", &self.admin.access_key_id)
            .env("ADMIN_SECRET_ACCESS_KEY", &self.admin.secret_access_key)
            .env("AWS_CONFIG_FILE", "/dev/null")
            .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
            .output()
            .context("running moto_fixture.py")?;
        if !out.status.success() {
            bail!(
                "moto_fixture.py {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(serde_json::from_slice(&out.stdout)?)
    }

    /// Creates a symmetric KMS key; returns its ARN.
    pub fn create_key(&self) -> anyhow::Result<String> {
        let key = self.run(&["create-key"])?;
        key["arn"]
            .as_str()
            .map(str::to_string)
            .with_context(|| format!("no arn in {key}"))
    }

    /// Removes the node user's KMS policy: KMS refuses it from now on.
    pub fn deny(&self) -> anyhow::Result<()> {
        self.run(&["deny", "node"]).map(drop)
    }

    /// Restores the node user's KMS policy.
    pub fn allow(&self) -> anyhow::Result<()> {
        self.run(&["allow", "node"]).map(drop)
    }

    /// Stops the server process (SIGSTOP): connections hang, as for a KMS that cannot be
    /// reached; its keys stay.
    pub fn pause(&self) -> anyhow::Result<()> {
        self.signal("STOP")
    }

    /// Lets a paused server run again (SIGCONT).
    pub fn resume(&self) -> anyhow::Result<()> {
        self.signal("CONT")
    }

    fn signal(&self, name: &str) -> anyhow::Result<()> {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()?;
        anyhow::ensure!(status.success(), "kill -{name} moto_server");
        Ok(())
    }

    /// `serve` arguments making `arn` the root key, reached at this server.
    pub fn root_args(&self, arn: &str) -> Vec<String> {
        vec![
            "--root-key-kms".into(),
            arn.into(),
            "--kms-endpoint".into(),
            self.endpoint.clone(),
        ]
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.resume();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
