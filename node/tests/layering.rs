//! The layering rules of ARCHITECTURE.md, checked: what each room of `conifer-node` (and
//! the raft crate) must not name. A rule is a room (a file or a folder of the crate's
//! sources), the texts its code must not contain, and why. Comment lines are skipped, so a
//! doc may still point at another room; code may not.

use std::path::{Path, PathBuf};

/// One "must not import" rule.
struct Rule {
    /// Files or folders (relative to the workspace root) the rule holds in.
    rooms: &'static [&'static str],
    /// Texts their code must not contain.
    forbidden: &'static [&'static str],
    /// The rule as ARCHITECTURE.md states it.
    why: &'static str,
}

/// Rooms below `api` in the node: everything but the front door, the CLI (a client) and
/// the composition root (`node.rs`, `main.rs`, `lib.rs`).
const BELOW_API: &[&str] = &[
    "node/src/dataplane",
    "node/src/control",
    "node/src/shard",
    "node/src/auth",
    "node/src/audit",
    "node/src/policy.rs",
    "node/src/cluster.rs",
    "node/src/crypto",
    "node/src/tls.rs",
];

const RULES: &[Rule] = &[
    Rule {
        rooms: BELOW_API,
        forbidden: &["crate::api", "axum", "StatusCode", "http::"],
        why: "only `api` knows HTTP; the rooms below it (and the node-to-node server) call \
              down, never into `api`",
    },
    Rule {
        rooms: &[
            "node/src/dataplane",
            "node/src/control",
            "node/src/shard",
            "node/src/auth",
            "node/src/audit",
            "node/src/policy.rs",
        ],
        forbidden: &["tonic::Code", "Status::"],
        why: "failures are domain errors (`DataError`, `ControlError`, `Rejection`); only \
              `api::error` gives a client a gRPC status (and `cluster` its peers)",
    },
    Rule {
        rooms: &["node/src/api"],
        forbidden: &["crate::cluster"],
        why: "`api` calls the rooms that own a change (`control::membership`, `dataplane`), \
              not the node-to-node server",
    },
    Rule {
        rooms: &["node/src/shard", "node/src/control"],
        forbidden: &["crate::dataplane"],
        why: "the state machines know nothing of the data plane that drives them",
    },
    Rule {
        rooms: &[
            "node/src/shard/engine.rs",
            "node/src/shard/faiss_io.rs",
            "node/src/shard/filter.rs",
            "node/src/shard/metadata_index.rs",
        ],
        forbidden: &[
            "crate::control",
            "crate::audit",
            "conifer_raft",
            "crate::shard::machine",
            "crate::shard::manager",
        ],
        why: "the vector engine knows nothing above it: no control-plane type, no Raft",
    },
    Rule {
        rooms: &["node/src/audit"],
        forbidden: &[
            "crate::control",
            "crate::api",
            "crate::dataplane",
            "crate::shard",
            "crate::auth",
        ],
        why: "`audit` is a library (schema, hashing, chains, verifier): it imports nothing \
              from `control` — the control plane describes its commands and names actors",
    },
    Rule {
        rooms: &["node/src/crypto"],
        forbidden: &[
            "crate::control",
            "crate::api",
            "crate::dataplane",
            "crate::shard",
            "crate::auth",
            "crate::audit",
        ],
        why: "`crypto` is the key hierarchy and the ciphers: the control plane keeps its \
              wrapped keys and the shard reconciler loads them, never the other way",
    },
    Rule {
        rooms: &["raft/src"],
        forbidden: &["conifer_node"],
        why: "`conifer-raft` is independent of what its groups replicate",
    },
];

/// The workspace root.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("node/ has a parent")
        .to_path_buf()
}

/// Every `.rs` file under `path` (or `path` itself).
fn sources(path: &Path) -> Vec<PathBuf> {
    if path.is_file() {
        return vec![path.to_path_buf()];
    }
    let mut files = Vec::new();
    let entries = std::fs::read_dir(path)
        .unwrap_or_else(|e| panic!("a rule names {}, which cannot be read: {e}", path.display()));
    for entry in entries {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            files.extend(sources(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    files
}

/// Whether `code` holds `word` where it starts a name: not preceded by a letter, digit or
/// `_` (so `Status::` is found in `tonic::Status::ok` but not in `KeyStatus::Available`).
fn names(code: &str, word: &str) -> bool {
    code.match_indices(word).any(|(at, _)| {
        !code[..at]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_alphanumeric() || c == '_')
    })
}

/// The lines of `text` (1-based numbers) that contain one of `forbidden` outside comments.
fn violations(text: &str, forbidden: &[&str]) -> Vec<(usize, String)> {
    text.lines()
        .enumerate()
        .filter_map(|(i, line)| {
            let code = line.split("//").next().unwrap_or("");
            forbidden
                .iter()
                .find(|f| names(code, f))
                .map(|f| (i + 1, format!("`{f}` in: {}", line.trim())))
        })
        .collect()
}

#[test]
fn every_room_keeps_to_its_layering_rules() {
    let root = root();
    let mut broken = Vec::new();
    for rule in RULES {
        for room in rule.rooms {
            let path = root.join(room);
            assert!(path.exists(), "a rule names {room}, which does not exist");
            for file in sources(&path) {
                let text = std::fs::read_to_string(&file).expect("a readable source file");
                for (line, what) in violations(&text, rule.forbidden) {
                    let shown = file.strip_prefix(&root).unwrap_or(&file).display();
                    broken.push(format!("{shown}:{line}: {what}\n    rule: {}", rule.why));
                }
            }
        }
    }
    assert!(
        broken.is_empty(),
        "layering rules broken:\n{}",
        broken.join("\n")
    );
}

#[test]
fn the_checker_finds_a_forbidden_import_and_skips_comments() {
    let text = "//! See [`crate::api::audit`].\nuse crate::api::ApiError; // why\n/// `axum`\n";
    let found = violations(text, &["crate::api", "axum"]);
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].0, 2);
    assert!(violations("let x = 1; // crate::api", &["crate::api"]).is_empty());
    // A forbidden name inside a longer one is not that name.
    assert!(violations("KeyStatus::Available { version }", &["Status::"]).is_empty());
    assert_eq!(
        violations("Err(Status::internal(m))", &["Status::"]).len(),
        1
    );
    assert_eq!(violations("tonic::Status::ok()", &["Status::"]).len(), 1);
}
