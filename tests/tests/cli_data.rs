//! The CLI for the data: `conifer index`, `conifer vectors` (upsert from JSON lines and CSV
//! with a resumable file of failures), `conifer namespace`, `conifer cluster members /
//! promote / remove`, and its exit codes.

use std::path::Path;
use std::process::Command;

use conifer_tests::{free_port, Cluster};
use serde_json::{json, Value};

/// Runs `conifer ARGS --bootstrap BOOT`: (exit code, stdout, stderr).
fn conifer(boot: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(conifer_tests::conifer_bin())
        .args(args)
        .arg("--bootstrap")
        .arg(boot)
        .env_remove("CONIFER_API_KEY")
        .output()
        .expect("run conifer");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `conifer vectors upsert --index docs --file FILE ARGS`: (exit code, stdout, stderr).
fn upsert(boot: &Path, file: &str, args: &[&str]) -> (i32, String, String) {
    let mut all = vec!["vectors", "upsert", "--index", "docs", "--file", file];
    all.extend(args);
    conifer(boot, &all)
}

/// [`conifer`] with `--output json`, which must succeed: the printed JSON.
fn json_of(boot: &Path, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.extend(["--output", "json"]);
    let (code, out, err) = conifer(boot, &all);
    assert_eq!(code, 0, "conifer {args:?}: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("conifer {args:?}: {e}: {out} {err}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cli_covers_indexes_vectors_namespaces_and_members() {
    let mut c = Cluster::start(1).await.unwrap();
    let boot = c.nodes[0].data_dir.join("bootstrap.json");
    let dir = tempfile::tempdir().unwrap();

    // Indexes.
    let created = json_of(
        &boot,
        &[
            "index",
            "create",
            "docs",
            "--dimension",
            "3",
            "--tag",
            "team=search",
        ],
    );
    assert_eq!(created["status"]["ready"], true, "{created}");
    assert_eq!(created["tags"]["team"], "search");
    let (code, table, _) = conifer(&boot, &["index", "list"]);
    assert_eq!(code, 0);
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("NAME"), "{table}");
    assert!(
        lines[1].starts_with("docs") && lines[1].contains("cosine"),
        "{table}"
    );
    let (code, described, _) = conifer(&boot, &["index", "describe", "docs"]);
    assert_eq!(code, 0);
    assert!(
        described.contains("status.ready") && described.contains("tags.team"),
        "{described}"
    );
    let configured = json_of(
        &boot,
        &[
            "index",
            "configure",
            "docs",
            "--deletion-protection",
            "enabled",
        ],
    );
    assert_eq!(configured["deletion_protection"], "enabled");
    let (code, _, err) = conifer(&boot, &["index", "delete", "docs"]);
    assert_eq!(code, 3, "deleting a protected index is a refusal: {err}");
    assert!(
        err.starts_with("error: ") && err.lines().count() == 1,
        "{err}"
    );

    // Upsert from JSON lines: one unreadable line and one of the wrong dimension fail and
    // are written to the failed file; the rest land.
    let jsonl = dir.path().join("records.jsonl");
    let mut text = String::new();
    for i in 0..250 {
        let genre = if i % 2 == 0 { "drama" } else { "comedy" };
        text += &json!({"id": format!("r{i}"), "values": [1.0, i as f64, 0.5],
                        "metadata": {"genre": genre, "year": 2000 + i}})
        .to_string();
        text.push('\n');
        if i == 100 {
            text += "{not json\n";
        }
    }
    text += &json!({"id": "short", "values": [1.0]}).to_string();
    text.push('\n');
    std::fs::write(&jsonl, text).unwrap();
    let jsonl_arg = jsonl.to_str().unwrap();
    let (code, _, err) = upsert(
        &boot,
        jsonl_arg,
        &["--namespace", "n", "--batch-size", "50"],
    );
    assert_eq!(code, 6, "{err}");
    assert!(err.contains("upserted 250 of 252 records"), "{err}");
    let failed = dir.path().join("records.jsonl.failed.jsonl");
    let failed_text = std::fs::read_to_string(&failed).unwrap();
    assert_eq!(
        failed_text.lines().collect::<Vec<_>>(),
        ["{not json", r#"{"id":"short","values":[1.0]}"#]
    );
    // Fixed, the failed file resumes the upload.
    std::fs::write(
        &failed,
        json!({"id": "short", "values": [1.0, 0.0, 0.0]}).to_string(),
    )
    .unwrap();
    let (code, _, err) = upsert(&boot, failed.to_str().unwrap(), &["--namespace", "n"]);
    assert_eq!(code, 0, "{err}");

    // CSV: id, values, and other columns as metadata (numbers parsed, "007" kept a
    // string); a row of the wrong width fails alone and goes to FILE.failed.csv under the
    // header row.
    let csv = dir.path().join("more.csv");
    std::fs::write(
        &csv,
        "id,values,genre,year,code\nc1,\"[0, 1, 0]\",horror,1999,007\nbad,\"[0, 1, 0]\"\n\
         c2,\"[0, 0, 1]\",horror,2001,\n",
    )
    .unwrap();
    let csv_arg = csv.to_str().unwrap();
    let (code, _, err) = upsert(&boot, csv_arg, &["--namespace", "n"]);
    assert_eq!(code, 6, "{err}");
    assert!(err.contains("upserted 2 of 3 records"), "{err}");
    let failed_csv = std::fs::read_to_string(dir.path().join("more.csv.failed.csv")).unwrap();
    assert_eq!(failed_csv, "id,values,genre,year,code\nbad,\"[0, 1, 0]\"\n");

    // An error that is not about the records stops the upload at once: a key that may not
    // write (403) sends one batch, exits 3, and every record is in the failed file.
    let viewer = c
        .key_in(&c.project_id(), &["DataPlaneViewer"])
        .await
        .unwrap();
    let (code, _, err) = upsert(&boot, jsonl_arg, &["--api-key", &viewer]);
    assert_eq!(code, 3, "{err}");
    assert!(
        err.contains("stopped at line 1") && err.contains("403"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(&failed).unwrap().lines().count(),
        252
    );

    // Reads.
    let query = json_of(
        &boot,
        &[
            "vectors",
            "query",
            "--index",
            "docs",
            "--namespace",
            "n",
            "--vector",
            "[0, 1, 0]",
            "--top-k",
            "1",
            "--filter",
            r#"{"year": {"$lt": 2000}}"#,
            "--include-metadata",
        ],
    );
    assert_eq!(query["matches"][0]["id"], "c1", "{query}");
    let metadata = &query["matches"][0]["metadata"];
    assert_eq!(metadata["genre"], "horror", "{query}");
    assert_eq!(metadata["year"].as_f64(), Some(1999.0), "{query}");
    assert_eq!(metadata["code"], "007", "{query}");
    let (code, table, _) = conifer(
        &boot,
        &[
            "vectors",
            "query",
            "--index",
            "docs",
            "--namespace",
            "n",
            "--id",
            "c2",
            "--top-k",
            "2",
        ],
    );
    assert_eq!(code, 0);
    assert!(
        table.lines().next().unwrap().starts_with("ID") && table.contains("c2"),
        "{table}"
    );
    let fetched = json_of(
        &boot,
        &[
            "vectors",
            "fetch",
            "--index",
            "docs",
            "--namespace",
            "n",
            "--id",
            "r7",
            "--id",
            "short",
        ],
    );
    assert_eq!(fetched["vectors"]["r7"]["values"], json!([1.0, 7.0, 0.5]));
    assert_eq!(
        fetched["vectors"]["short"]["values"],
        json!([1.0, 0.0, 0.0])
    );
    let listed = json_of(
        &boot,
        &[
            "vectors",
            "list",
            "--index",
            "docs",
            "--namespace",
            "n",
            "--prefix",
            "c",
        ],
    );
    assert_eq!(listed["vectors"], json!([{"id": "c1"}, {"id": "c2"}]));

    // Namespaces.
    let namespaces = json_of(&boot, &["namespace", "list", "--index", "docs"]);
    assert_eq!(namespaces["namespaces"][0]["name"], "n", "{namespaces}");
    assert_eq!(
        namespaces["namespaces"][0]["record_count"], 253,
        "{namespaces}"
    );
    let (code, _, err) = conifer(
        &boot,
        &[
            "vectors",
            "delete",
            "--index",
            "docs",
            "--namespace",
            "n",
            "--filter",
            r#"{"genre": "comedy"}"#,
        ],
    );
    assert_eq!((code, err.as_str()), (0, "deleted\n"));
    let described = json_of(&boot, &["namespace", "describe", "--index", "docs", "n"]);
    assert_eq!(described["record_count"], 128, "{described}");
    let (code, _, err) = conifer(&boot, &["namespace", "delete", "--index", "docs", "n"]);
    assert_eq!(code, 0, "{err}");

    // Errors: a missing index is a refusal (3), an unreachable node is 4, bad flags 2.
    let (code, _, err) = conifer(&boot, &["index", "describe", "nope"]);
    assert_eq!(code, 3, "{err}");
    assert!(
        err.contains("404") && !err.contains("stack backtrace"),
        "{err}"
    );
    let dead = format!("https://127.0.0.1:{}", free_port());
    let (code, _, err) = conifer(&boot, &["index", "list", "--api-url", &dead]);
    assert_eq!(code, 4, "{err}");
    let (code, _, _) = conifer(&boot, &["vectors", "query", "--index", "docs"]);
    assert_eq!(code, 2);
    // A key of the wrong role is refused: a DataPlaneViewer cannot create indexes.
    let (code, _, err) = conifer(
        &boot,
        &[
            "index",
            "create",
            "other",
            "--dimension",
            "3",
            "--api-key",
            &viewer,
        ],
    );
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("403"), "{err}");

    // Membership: `cluster add` issues a new node's certificate and prints how to start
    // it; an id that is a member already is refused.
    let out = dir.path().join("node-99");
    let ca_dir = c.ca_dir.to_str().unwrap().to_string();
    let add = |id: &str| {
        conifer(
            &boot,
            &[
                "cluster",
                "add",
                "--id",
                id,
                "--ca-dir",
                &ca_dir,
                "--host",
                "127.0.0.9",
                "--out",
                out.to_str().unwrap(),
            ],
        )
    };
    let (code, _, err) = add("1");
    assert_eq!(code, 2, "{err}");
    let (code, command, err) = add("99");
    assert_eq!(code, 0, "{err}");
    let member = c.nodes[0].cluster_addr.clone();
    assert!(
        command.contains("--node-id 99")
            && command.contains(&format!("--join {member} --learner"))
            && command.contains("--api-addr 127.0.0.9:7443"),
        "{command}"
    );
    assert!(out.join("node.pem").exists() && out.join("node-key.pem").exists());

    // Membership: a learner joins, is promoted, listed, and removed.
    let learner = c.add_node(true).await.unwrap();
    let (code, _, err) = conifer(&boot, &["cluster", "promote", "--id", &learner.to_string()]);
    assert_eq!(code, 0, "{err}");
    let members = json_of(&boot, &["cluster", "members"]);
    let row = members
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == learner)
        .cloned()
        .unwrap();
    assert_eq!(row["role"], "voter", "{members}");
    let (code, _, err) = conifer(&boot, &["cluster", "remove", "--id", &learner.to_string()]);
    assert_eq!(code, 0, "{err}");
    let members = json_of(&boot, &["cluster", "members"]);
    assert_eq!(members.as_array().unwrap().len(), 1, "{members}");
}

/// Writes a Parquet file of `rows` (id, values, genre): `id` a string, `values` a list of
/// floats, `genre` an optional string.
fn write_parquet(path: &Path, rows: &[(&str, Vec<f32>, Option<&str>)]) {
    use parquet::data_type::{ByteArray, ByteArrayType, FloatType};
    use parquet::file::writer::SerializedFileWriter;
    let schema = parquet::schema::parser::parse_message_type(
        "message records {
           required binary id (STRING);
           required group values (LIST) { repeated group list { required float element; } }
           optional binary genre (STRING);
         }",
    )
    .unwrap();
    let file = std::fs::File::create(path).unwrap();
    let mut writer = SerializedFileWriter::new(file, schema.into(), Default::default()).unwrap();
    let mut group = writer.next_row_group().unwrap();
    let ids: Vec<ByteArray> = rows.iter().map(|r| ByteArray::from(r.0)).collect();
    let mut column = group.next_column().unwrap().unwrap();
    column
        .typed::<ByteArrayType>()
        .write_batch(&ids, None, None)
        .unwrap();
    column.close().unwrap();
    // A list: every element defined (level 1); repetition 0 starts a row, 1 continues it.
    let values: Vec<f32> = rows.iter().flat_map(|r| r.1.clone()).collect();
    let definitions = vec![1i16; values.len()];
    let repetitions: Vec<i16> = rows
        .iter()
        .flat_map(|r| (0..r.1.len()).map(|i| i16::from(i > 0)))
        .collect();
    let mut column = group.next_column().unwrap().unwrap();
    column
        .typed::<FloatType>()
        .write_batch(&values, Some(&definitions), Some(&repetitions))
        .unwrap();
    column.close().unwrap();
    let genres: Vec<ByteArray> = rows
        .iter()
        .filter_map(|r| r.2.map(ByteArray::from))
        .collect();
    let defined: Vec<i16> = rows.iter().map(|r| i16::from(r.2.is_some())).collect();
    let mut column = group.next_column().unwrap().unwrap();
    column
        .typed::<ByteArrayType>()
        .write_batch(&genres, Some(&defined), None)
        .unwrap();
    column.close().unwrap();
    group.close().unwrap();
    writer.close().unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn vectors_upsert_reads_parquet() {
    let c = Cluster::start(1).await.unwrap();
    let boot = c.nodes[0].data_dir.join("bootstrap.json");
    let dir = tempfile::tempdir().unwrap();
    json_of(&boot, &["index", "create", "docs", "--dimension", "2"]);
    let file = dir.path().join("records.parquet");
    write_parquet(
        &file,
        &[
            ("p1", vec![1.0, 0.0], Some("drama")),
            ("p2", vec![0.0, 1.0], None),
            ("p3", vec![0.5, 0.5, 0.5], Some("wrong dimension")),
        ],
    );
    let (code, _, err) = upsert(&boot, file.to_str().unwrap(), &[]);
    assert_eq!(code, 6, "{err}");
    assert!(err.contains("upserted 2 of 3 records"), "{err}");
    let fetched = json_of(
        &boot,
        &[
            "vectors", "fetch", "--index", "docs", "--id", "p1", "--id", "p2",
        ],
    );
    assert_eq!(fetched["vectors"]["p1"]["values"], json!([1.0, 0.0]));
    assert_eq!(
        fetched["vectors"]["p1"]["metadata"],
        json!({"genre": "drama"})
    );
    assert_eq!(fetched["vectors"]["p2"].get("metadata"), None, "{fetched}");
    // The refused row, as JSON lines: fixed, it resumes the upload.
    let failed = dir.path().join("records.parquet.failed.jsonl");
    let line: Value =
        serde_json::from_str(std::fs::read_to_string(&failed).unwrap().trim()).unwrap();
    assert_eq!(line["id"], "p3");
    std::fs::write(&failed, r#"{"id": "p3", "values": [0.5, 0.5]}"#).unwrap();
    let (code, _, err) = upsert(&boot, failed.to_str().unwrap(), &[]);
    assert_eq!(code, 0, "{err}");
}
