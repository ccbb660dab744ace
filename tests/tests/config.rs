//! `conifer serve --config FILE`: a TOML file of serve settings under the environment and
//! flags (default < file < environment < flag), shown by `--print-config`.

use std::process::Command;

/// Runs `conifer serve ARGS --print-config` with `env`: (success, stdout, stderr).
fn print_config(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let out = Command::new(conifer_tests::conifer_bin())
        .arg("serve")
        .args(args)
        .arg("--print-config")
        .env_remove("CONIFER_HNSW_M")
        .env_remove("CONIFER_DATA_DIR")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_config_file_ranks_under_environment_and_flags() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("node.toml");
    std::fs::write(
        &file,
        "data-dir = \"/srv/conifer\"\nindex-port-range = \"7600-7609\"\nhnsw-m = 16\nnode-id = 3\n",
    )
    .unwrap();
    let config = file.to_str().unwrap();

    let (ok, out, err) = print_config(&["--config", config], &[]);
    assert!(ok, "{err}");
    let settings: toml::Table = out.parse().unwrap();
    assert_eq!(settings["data-dir"].as_str(), Some("/srv/conifer"));
    assert_eq!(settings["index-port-range"].as_str(), Some("7600-7609"));
    assert_eq!(settings["hnsw-m"].as_integer(), Some(16));
    assert_eq!(settings["node-id"].as_integer(), Some(3));
    // Defaults fill what the file does not say; every serve setting is printed.
    assert_eq!(settings["api-addr"].as_str(), Some("127.0.0.1:7443"));
    assert!(settings.contains_key("max-records-per-project"), "{out}");

    // The environment overrides the file, and a flag the environment.
    let (ok, out, _) = print_config(&["--config", config], &[("CONIFER_HNSW_M", "20")]);
    assert!(ok);
    assert_eq!(
        out.parse::<toml::Table>().unwrap()["hnsw-m"].as_integer(),
        Some(20)
    );
    let (ok, out, _) = print_config(
        &["--config", config, "--hnsw-m", "24", "--data-dir", "/tmp/x"],
        &[("CONIFER_HNSW_M", "20")],
    );
    assert!(ok);
    let settings: toml::Table = out.parse().unwrap();
    assert_eq!(settings["hnsw-m"].as_integer(), Some(24));
    assert_eq!(settings["data-dir"].as_str(), Some("/tmp/x"));

    // An unknown key, a wrong type and a missing file are errors naming them.
    std::fs::write(&file, "hnsw-mm = 16\n").unwrap();
    let (ok, _, err) = print_config(&["--config", config], &[]);
    assert!(!ok && err.contains("hnsw-mm"), "{err}");
    std::fs::write(&file, "hnsw-m = \"many\"\n").unwrap();
    let (ok, _, err) = print_config(&["--config", config], &[]);
    assert!(!ok && err.contains("hnsw-m"), "{err}");
    let (ok, _, err) = print_config(&["--config", "/nonexistent/node.toml"], &[]);
    assert!(!ok && err.contains("no such file"), "{err}");
}
