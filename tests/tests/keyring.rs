//! Where the keyring lives (`serve --keyring`): outside the data directory, so a copy of
//! the data directory decrypts nothing. A joining node refuses a keyring in the data
//! directory unless told `--insecure-keyring-in-data-dir`; a keyring path inside the data
//! directory, or a keyring file others may open, is refused before anything is created; a
//! single node that keeps the default says at start what that protects against.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use conifer_tests::{serve_command, KillOnDrop};

fn serve_args(dir: &Path, extra: &[&str]) -> Command {
    let mut cmd = serve_command(dir);
    cmd.args(extra);
    cmd
}

/// `serve` with `extra`, which must refuse to start: its output.
fn refused(dir: &Path, extra: &[&str]) -> Output {
    let out = serve_args(dir, extra).output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "expected a usage refusal: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !dir.join("data").exists(),
        "the data directory was created before the refusal"
    );
    out
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_joining_node_refuses_a_keyring_in_its_data_directory() {
    let dir = tempfile::tempdir().unwrap();
    let out = refused(dir.path(), &["--node-id", "2", "--join", "127.0.0.1:9"]);
    let err = stderr(&out);
    assert!(
        err.contains("--keyring PATH") && err.contains("--insecure-keyring-in-data-dir"),
        "{err}"
    );
}

#[test]
fn a_keyring_inside_the_data_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let inside = dir.path().join("data").join("sub").join("keyring.json");
    let out = refused(dir.path(), &["--keyring", inside.to_str().unwrap()]);
    assert!(
        stderr(&out).contains("is inside the data directory"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_keyring_file_others_may_read_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let keyring = dir.path().join("keyring.json");
    std::fs::write(&keyring, "{}").unwrap();
    std::fs::set_permissions(&keyring, std::fs::Permissions::from_mode(0o640)).unwrap();
    let out = refused(dir.path(), &["--keyring", keyring.to_str().unwrap()]);
    assert!(stderr(&out).contains("chmod 600"), "{}", stderr(&out));
}

/// Starts `serve` with `extra` and waits (60 s) for bootstrap.json; returns stderr so far.
fn bootstraps(dir: &Path, extra: &[&str]) -> String {
    let log = dir.join("serve.log");
    let file = std::fs::File::create(&log).unwrap();
    let mut node = KillOnDrop(
        serve_args(dir, extra)
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap(),
    );
    let boot = dir.join("data").join("bootstrap.json");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !boot.exists() {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        assert!(
            node.0.try_wait().unwrap().is_none(),
            "serve exited:\n{text}"
        );
        assert!(Instant::now() < deadline, "no bootstrap:\n{text}");
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(node);
    std::fs::read_to_string(&log).unwrap()
}

#[test]
fn a_keyring_outside_the_data_directory_is_created_there_private() {
    let dir = tempfile::tempdir().unwrap();
    let keyring = dir.path().join("keys").join("keyring.json");
    std::fs::create_dir(dir.path().join("keys")).unwrap();
    let log = bootstraps(dir.path(), &["--keyring", keyring.to_str().unwrap()]);
    let mode = std::fs::metadata(&keyring).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    assert!(!dir.path().join("data").join("keyring.json").exists());
    assert!(
        !log.contains("the keyring is in the data directory"),
        "{log}"
    );
}

#[test]
fn a_single_node_keeping_the_default_says_what_it_protects_against() {
    let dir = tempfile::tempdir().unwrap();
    let log = bootstraps(dir.path(), &[]);
    assert!(dir.path().join("data").join("keyring.json").exists());
    assert!(
        log.contains("the keyring is in the data directory")
            && log.contains("a copy of the data directory"),
        "{log}"
    );
}
