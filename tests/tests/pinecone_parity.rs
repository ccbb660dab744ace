//! Pinecone parity from field reports (issue 13), on real nodes: records validated as
//! Pinecone documents them on every write path with nothing written, queries by a missing id
//! that match nothing, request fields Conifer would not honour refused, errors in Pinecone's
//! shape on every route and transport, pagination tokens bound to what they page, and
//! membership changes that cannot strand an index.

use std::time::Duration;

use conifer_proto::pinecone as pb;
use conifer_tests::Cluster;
use prost::Message;
use reqwest::Method;
use serde_json::{json, Value};

/// Answer of a REST call: status and body (JSON, or the text in a string).
async fn answer(resp: reqwest::Response) -> (u16, Value) {
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap_or_default();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// A data-plane REST call with a JSON body to `index` through node 1.
async fn data(cluster: &Cluster, key: &str, index: &str, path: &str, body: Value) -> (u16, Value) {
    answer(
        cluster
            .data(1, key, index, Method::POST, path)
            .json(&body)
            .send()
            .await
            .unwrap(),
    )
    .await
}

/// A data-plane GET through node 1.
async fn get(cluster: &Cluster, key: &str, index: &str, path: &str) -> (u16, Value) {
    answer(
        cluster
            .data(1, key, index, Method::GET, path)
            .send()
            .await
            .unwrap(),
    )
    .await
}

/// Asserts a refusal in Pinecone's error shape whose message contains `needle`.
fn refused(got: &(u16, Value), status: u16, needle: &str) {
    let (code, body) = got;
    assert_eq!(*code, status, "{body}");
    assert_eq!(body["status"], status, "Pinecone's error body: {body}");
    assert!(body["error"]["code"].is_string(), "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains(needle), "{needle:?} not in {message:?}");
}

/// A one-node cluster with `indexes` (name, dimension, metric) ready, and its project's key.
async fn one_node_with(indexes: &[(&str, u32, &str)]) -> (Cluster, String) {
    let cluster = Cluster::start(1).await.unwrap();
    let key = cluster.api_key();
    for (name, dimension, metric) in indexes {
        cluster
            .create_index(1, &key, name, *dimension, metric)
            .await
            .unwrap();
    }
    (cluster, key)
}

async fn total(cluster: &Cluster, key: &str, index: &str) -> Value {
    data(cluster, key, index, "/describe_index_stats", json!({}))
        .await
        .1["namespaces"]
        .clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn records_are_validated_as_pinecone_documents_them_on_every_write_path() {
    let (cluster, key) = one_node_with(&[("cos", 4, "cosine"), ("dot", 4, "dotproduct")]).await;
    let one = [1.0, 0.0, 0.0, 0.0];
    let ok = data(&cluster, &key, "cos", "/vectors/upsert",
        json!({"namespace": "ns", "vectors": [{"id": "a", "values": one, "metadata": {"big": "x".repeat(30_000)}}]})).await;
    assert_eq!(ok.0, 200, "{}", ok.1);
    let before = total(&cluster, &key, "cos").await;

    let upsert = |v: Value| {
        data(
            &cluster,
            &key,
            "cos",
            "/vectors/upsert",
            json!({"namespace": "ns", "vectors": [v]}),
        )
    };
    refused(&upsert(json!({"id": "zero", "values": [0.0, 0.0, 0.0, 0.0]})).await, 400,
        "Dense vectors must contain at least one non-zero value. Vector ID 'zero' contains only zeros");
    refused(
        &upsert(json!({"id": "café", "values": one})).await,
        400,
        "Vector ID must be ASCII, but got 'café'",
    );
    refused(
        &upsert(json!({"id": "a\u{0}b", "values": one})).await,
        400,
        "Vector ID must not contain null character",
    );
    refused(
        &upsert(json!({"id": "m", "values": one, "metadata": {"$price": 5}})).await,
        400,
        "Metadata field '$price' cannot start with '$'",
    );
    refused(&upsert(json!({"id": "m", "values": one, "metadata": {"price": null}})).await, 400,
        "Metadata value must be a string, number, boolean or list of strings, got 'null' for field 'price'");
    refused(
        &upsert(json!({"id": "m", "values": one, "metadata": {"big": "x".repeat(41_000)}})).await,
        400,
        "which exceeds the limit of 40960 bytes per vector",
    );
    refused(
        &upsert(
            json!({"id": "s", "values": one, "sparseValues": {"indices": [1], "values": [0.5]}}),
        )
        .await,
        400,
        "Index configuration does not support sparse values",
    );
    refused(
        &data(
            &cluster,
            &key,
            "cos",
            "/vectors/upsert",
            json!({"namespace": "café", "vectors": [{"id": "n", "values": one}]}),
        )
        .await,
        400,
        "Namespace must be ASCII",
    );

    // Sparse values on a dotproduct index: unique indices, at least one.
    let dot = |v: Value| {
        data(
            &cluster,
            &key,
            "dot",
            "/vectors/upsert",
            json!({"vectors": [v]}),
        )
    };
    refused(&dot(json!({"id": "d", "values": one, "sparseValues": {"indices": [3, 3], "values": [0.1, 0.2]}})).await,
        400, "Sparse vector indices must be unique");
    refused(
        &dot(json!({"id": "d", "values": one, "sparseValues": {"indices": [], "values": []}}))
            .await,
        400,
        "Sparse vector must contain at least one value",
    );
    assert_eq!(
        dot(json!({"id": "d", "values": one, "sparseValues": {"indices": [3], "values": [0.1]}}))
            .await
            .0,
        200
    );

    // Updates: the same rules, and the merged metadata is checked against the limit.
    let update = |body: Value| data(&cluster, &key, "cos", "/vectors/update", body);
    refused(
        &update(json!({"id": "a", "namespace": "ns", "values": [0.0, 0.0, 0.0, 0.0]})).await,
        400,
        "contains only zeros",
    );
    refused(
        &update(json!({"id": "a", "namespace": "ns", "setMetadata": {"$x": 1}})).await,
        400,
        "cannot start with '$'",
    );
    refused(
        &update(json!({"id": "né", "namespace": "ns", "setMetadata": {"x": 1}})).await,
        400,
        "Vector ID must be ASCII",
    );
    refused(
        &update(json!({"id": "a", "namespace": "ns", "setMetadata": {"more": "y".repeat(20_000)}}))
            .await,
        400,
        "which exceeds the limit of 40960 bytes per vector",
    );
    refused(&update(json!({"filter": {"big": {"$exists": true}}, "namespace": "ns", "setMetadata": {"more": "y".repeat(20_000)}})).await,
        400, "which exceeds the limit of 40960 bytes per vector");
    refused(&update(json!({"filter": {"big": {"$exists": true}}, "namespace": "ns", "setMetadata": {"$x": 1}})).await,
        400, "cannot start with '$'");
    refused(
        &update(json!({"filter": {}, "namespace": "ns", "setMetadata": {"x": 1}})).await,
        400,
        "Update with empty metadata filter is not allowed",
    );
    refused(
        &update(json!({"filter": {"big": {"$exists": true}}, "namespace": "ns", "values": one}))
            .await,
        400,
        "Update by metadata request does not support updating vector values.",
    );
    refused(&update(json!({"id": "a", "namespace": "ns", "sparseValues": {"indices": [1], "values": [1.0]}})).await,
        400, "does not support sparse values");

    // Reads and deletes name ids by the same rules.
    refused(
        &get(
            &cluster,
            &key,
            "cos",
            "/vectors/fetch?ids=caf%C3%A9&namespace=ns",
        )
        .await,
        400,
        "Vector ID must be ASCII",
    );
    refused(
        &data(
            &cluster,
            &key,
            "cos",
            "/vectors/delete",
            json!({"ids": ["café"], "namespace": "ns"}),
        )
        .await,
        400,
        "Vector ID must be ASCII",
    );
    refused(
        &data(
            &cluster,
            &key,
            "cos",
            "/vectors/delete",
            json!({"filter": {}, "namespace": "ns"}),
        )
        .await,
        400,
        "Delete with empty metadata filter is not allowed",
    );
    refused(
        &data(
            &cluster,
            &key,
            "cos",
            "/vectors/delete",
            json!({"ids": ["a"], "deleteAll": true, "namespace": "ns"}),
        )
        .await,
        400,
        "No explicit IDs allowed when delete_all=true",
    );

    // Nothing was written: same counts, the record as it was.
    assert_eq!(total(&cluster, &key, "cos").await, before);
    let (_, fetched) = get(&cluster, &key, "cos", "/vectors/fetch?ids=a&namespace=ns").await;
    let metadata = fetched["vectors"]["a"]["metadata"].as_object().unwrap();
    assert_eq!(metadata.keys().collect::<Vec<_>>(), ["big"], "{metadata:?}");
    assert_eq!(fetched["vectors"]["a"]["values"], json!(one));
    // At the limit is fine: the merged metadata of 40,960 bytes is accepted.
    let room = 40_960
        - json!({"big": "x".repeat(30_000), "more": ""})
            .to_string()
            .len();
    let (status, body) =
        update(json!({"id": "a", "namespace": "ns", "setMetadata": {"more": "y".repeat(room)}}))
            .await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn queries_match_nothing_for_a_missing_id_and_refuse_what_they_would_ignore() {
    let (cluster, key) = one_node_with(&[("cos", 384, "cosine"), ("dot", 4, "dotproduct")]).await;
    let same = vec![0.1f32; 384];
    let (status, _) = data(
        &cluster,
        &key,
        "cos",
        "/vectors/upsert",
        json!({"namespace": "ns", "vectors": [{"id": "a", "values": same}]}),
    )
    .await;
    assert_eq!(status, 200);

    // A missing id (in an existing or a missing namespace) is 200 with nothing matched.
    for namespace in ["ns", "elsewhere"] {
        let (status, body) = data(
            &cluster,
            &key,
            "cos",
            "/query",
            json!({"id": "nope", "topK": 3, "namespace": namespace}),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["matches"], json!([]));
        assert_eq!(body["namespace"], namespace);
    }
    // Identical vectors score exactly 1 at most (cosine is in [-1, 1]).
    let (_, body) = data(
        &cluster,
        &key,
        "cos",
        "/query",
        json!({"vector": same, "topK": 1, "namespace": "ns"}),
    )
    .await;
    let score = body["matches"][0]["score"].as_f64().unwrap();
    assert!(score <= 1.0 && score > 0.9999, "{score}");
    let (_, body) = data(
        &cluster,
        &key,
        "cos",
        "/query",
        json!({"id": "a", "topK": 1, "namespace": "ns"}),
    )
    .await;
    assert!(
        body["matches"][0]["score"].as_f64().unwrap() <= 1.0,
        "{body}"
    );

    refused(
        &data(
            &cluster,
            &key,
            "cos",
            "/query",
            json!({"vector": vec![0.0; 384], "topK": 1}),
        )
        .await,
        400,
        "Query vector must contain at least one non-zero value",
    );
    refused(
        &data(
            &cluster,
            &key,
            "cos",
            "/query",
            json!({"vector": same, "id": "a", "topK": 1}),
        )
        .await,
        400,
        "Cannot provide both 'ID' and 'vector' at the same time",
    );
    let sparse = json!({"indices": [1], "values": [0.5]});
    refused(
        &data(
            &cluster,
            &key,
            "cos",
            "/query",
            json!({"vector": same, "sparseVector": sparse, "topK": 1}),
        )
        .await,
        400,
        "Index configuration does not support sparse values",
    );
    refused(
        &data(
            &cluster,
            &key,
            "dot",
            "/query",
            json!({"vector": [1.0, 0.0, 0.0, 0.0], "sparseVector": sparse, "topK": 1}),
        )
        .await,
        400,
        "'sparseVector'",
    );

    // The same over gRPC, where the request also carries scan_factor / max_candidates.
    let mut grpc = cluster.grpc_data(1).await.unwrap();
    let call = |index: &str, req: pb::QueryRequest| {
        let mut request = tonic::Request::new(req);
        request
            .metadata_mut()
            .insert("api-key", key.parse().unwrap());
        request
            .metadata_mut()
            .insert("x-conifer-index", index.parse().unwrap());
        request
    };
    let missing = grpc
        .query(call(
            "cos",
            pb::QueryRequest {
                id: "nope".into(),
                top_k: 3,
                namespace: "ns".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(missing.matches.is_empty());
    assert_eq!(missing.namespace, "ns");
    for (index, req, needle) in [
        (
            "cos",
            pb::QueryRequest {
                vector: same.clone(),
                top_k: 1,
                sparse_vector: Some(pb::SparseValues {
                    indices: vec![1],
                    values: vec![0.5],
                }),
                ..Default::default()
            },
            "does not support sparse values",
        ),
        (
            "dot",
            pb::QueryRequest {
                vector: vec![1.0, 0.0, 0.0, 0.0],
                top_k: 1,
                sparse_vector: Some(pb::SparseValues {
                    indices: vec![1],
                    values: vec![0.5],
                }),
                ..Default::default()
            },
            "'sparseVector'",
        ),
        (
            "cos",
            pb::QueryRequest {
                vector: same.clone(),
                top_k: 1,
                scan_factor: Some(2.0),
                ..Default::default()
            },
            "'scanFactor'",
        ),
        (
            "cos",
            pb::QueryRequest {
                vector: same.clone(),
                top_k: 1,
                max_candidates: Some(50),
                ..Default::default()
            },
            "'maxCandidates'",
        ),
    ] {
        let status = grpc.query(call(index, req)).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains(needle), "{needle}: {status:?}");
    }
    let zero = grpc
        .upsert({
            let mut r = tonic::Request::new(pb::UpsertRequest {
                vectors: vec![pb::Vector {
                    id: "z".into(),
                    values: vec![0.0; 384],
                    ..Default::default()
                }],
                namespace: "ns".into(),
            });
            r.metadata_mut().insert("api-key", key.parse().unwrap());
            r.metadata_mut()
                .insert("x-conifer-index", "cos".parse().unwrap());
            r
        })
        .await
        .unwrap_err();
    assert_eq!(zero.code(), tonic::Code::InvalidArgument);
    assert!(zero.message().contains("contains only zeros"), "{zero:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn pagination_tokens_only_continue_the_listing_that_issued_them() {
    let (cluster, key) = one_node_with(&[("pages", 2, "euclidean")]).await;
    for ns in ["a", "b"] {
        let vectors: Vec<Value> = (0..10)
            .flat_map(|i| [format!("p{i}"), format!("q{i}")])
            .map(|id| json!({"id": id, "values": [1.0, 2.0], "metadata": {"k": "v"}}))
            .collect();
        let (status, _) = data(
            &cluster,
            &key,
            "pages",
            "/vectors/upsert",
            json!({"namespace": ns, "vectors": vectors}),
        )
        .await;
        assert_eq!(status, 200);
    }
    let (_, first) = get(
        &cluster,
        &key,
        "pages",
        "/vectors/list?namespace=a&prefix=p&limit=3",
    )
    .await;
    let token = first["pagination"]["next"].as_str().unwrap().to_string();
    let (status, next) = get(
        &cluster,
        &key,
        "pages",
        &format!("/vectors/list?namespace=a&prefix=p&limit=3&paginationToken={token}"),
    )
    .await;
    assert_eq!(status, 200, "{next}");
    assert_eq!(next["vectors"][0]["id"], "p3");
    refused(
        &get(
            &cluster,
            &key,
            "pages",
            &format!("/vectors/list?namespace=a&prefix=q&limit=3&paginationToken={token}"),
        )
        .await,
        400,
        "pagination_token was issued for another prefix",
    );
    refused(
        &get(
            &cluster,
            &key,
            "pages",
            &format!("/vectors/list?namespace=b&prefix=p&limit=3&paginationToken={token}"),
        )
        .await,
        400,
        "pagination_token was issued for another index or namespace",
    );
    refused(
        &get(
            &cluster,
            &key,
            "pages",
            &format!("/vectors/list?namespace=a&limit=3&paginationToken={token}"),
        )
        .await,
        400,
        "another prefix",
    );
    refused(
        &get(
            &cluster,
            &key,
            "pages",
            "/vectors/list?namespace=a&prefix=p&paginationToken=bm9wZQ",
        )
        .await,
        400,
        "not a valid pagination token",
    );

    let by_metadata = |filter: Value, token: Option<&str>| {
        let mut body = json!({"namespace": "a", "filter": filter, "limit": 4});
        if let Some(t) = token {
            body["paginationToken"] = json!(t);
        }
        data(&cluster, &key, "pages", "/vectors/fetch_by_metadata", body)
    };
    let (_, page) = by_metadata(json!({"k": "v"}), None).await;
    let token = page["pagination"]["next"].as_str().unwrap().to_string();
    assert_eq!(by_metadata(json!({"k": "v"}), Some(&token)).await.0, 200);
    refused(
        &by_metadata(json!({"k": "w"}), Some(&token)).await,
        400,
        "another filter",
    );
    refused(
        &data(
            &cluster,
            &key,
            "pages",
            "/vectors/fetch_by_metadata",
            json!({"namespace": "a", "filter": {}}),
        )
        .await,
        400,
        "Empty filter provided for fetch by metadata request",
    );

    let (_, spaces) = get(&cluster, &key, "pages", "/namespaces?limit=1").await;
    let token = spaces["pagination"]["next"].as_str().unwrap().to_string();
    refused(
        &get(
            &cluster,
            &key,
            "pages",
            &format!("/namespaces?limit=1&prefix=b&paginationToken={token}"),
        )
        .await,
        400,
        "another prefix",
    );
    // A token of another kind of listing is refused too.
    refused(
        &get(
            &cluster,
            &key,
            "pages",
            &format!("/vectors/list?namespace=&limit=1&paginationToken={token}"),
        )
        .await,
        400,
        "another kind of listing",
    );
}

/// Protobuf field `field` of wire type "length-delimited" holding `bytes`.
fn wrap(field: u8, bytes: &[u8]) -> Vec<u8> {
    let mut out = vec![(field << 3) | 2];
    let mut len = bytes.len();
    loop {
        let byte = (len & 0x7f) as u8;
        len >>= 7;
        if len == 0 {
            out.push(byte);
            break;
        }
        out.push(byte | 0x80);
    }
    out.extend_from_slice(bytes);
    out
}

/// The protobuf frame of a unary gRPC call carrying `payload`.
fn frame(payload: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8];
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn every_error_has_pinecone_shape_on_every_route_and_transport() {
    let (cluster, key) = one_node_with(&[("errs", 4, "cosine")]).await;
    let op = cluster.admin_token();
    let one = [1.0, 0.0, 0.0, 0.0];

    // Over the body limits: JSON naming the limit, not axum's plain text.
    let big =
        json!({"vectors": [{"id": "a", "values": one, "metadata": {"x": "y".repeat(5 << 20)}}]});
    refused(
        &data(&cluster, &key, "errs", "/vectors/upsert", big).await,
        413,
        "4194304 bytes (4 MiB)",
    );
    let admin_big = cluster
        .http
        .post(cluster.url(1, "/admin/projects"))
        .bearer_auth(&op)
        .json(&json!({"name": "x".repeat(70 * 1024)}))
        .send()
        .await
        .unwrap();
    refused(&answer(admin_big).await, 413, "65536 bytes (64 KiB)");
    // A body that is not declared JSON is refused, and nothing is written.
    let plain = cluster
        .data(1, &key, "errs", Method::POST, "/vectors/upsert")
        .header("content-type", "text/plain")
        .body(json!({"vectors": [{"id": "t", "values": one}]}).to_string())
        .send()
        .await
        .unwrap();
    refused(&answer(plain).await, 415, "application/json");
    assert_eq!(total(&cluster, &key, "errs").await, json!({}));
    // axum's own refusals: a method the route does not take, an unknown query parameter.
    let wrong_method = cluster
        .data(1, &key, "errs", Method::GET, "/vectors/upsert")
        .send()
        .await
        .unwrap();
    refused(&answer(wrong_method).await, 405, "");
    refused(
        &get(&cluster, &key, "errs", "/vectors/fetch?ids=a&colour=red").await,
        400,
        "unknown query parameter 'colour'",
    );
    refused(
        &get(&cluster, &key, "errs", "/describe_index_stats?colour=red").await,
        400,
        "takes no query parameters",
    );
    let described = cluster
        .http
        .get(cluster.url(1, "/indexes/errs?colour=red"))
        .header("Api-Key", &key)
        .send()
        .await
        .unwrap();
    refused(&answer(described).await, 400, "takes no query parameters");
    let bad_query = cluster
        .http
        .get(cluster.url(1, "/admin/audit-logs?limit=many"))
        .bearer_auth(&op)
        .send()
        .await
        .unwrap();
    refused(&answer(bad_query).await, 400, "limit");

    // A filter nested past the limit gets the filter's message however deep it goes (the
    // body is built as text: a 1,000-level JSON value would overflow this test's stack).
    let nested = |depth: usize| {
        let filter = format!(
            "{}{{\"n\":{{\"$eq\":1}}}}{}",
            "{\"$and\":[".repeat(depth),
            "]}".repeat(depth)
        );
        let body = format!("{{\"vector\":[1.0,0.0,0.0,0.0],\"topK\":1,\"filter\":{filter}}}");
        let request = cluster
            .data(1, &key, "errs", Method::POST, "/query")
            .header("content-type", "application/json")
            .body(body);
        async move { answer(request.send().await.unwrap()).await }
    };
    refused(&nested(9).await, 400, "nesting deeper than 8 levels");
    refused(&nested(1000).await, 400, "nesting deeper than 8 levels");
    assert_eq!(nested(7).await.0, 200);

    // The control plane: 422 for JSON of the wrong shape, 400 for text that is not JSON.
    let create = |body: String| {
        cluster
            .http
            .post(cluster.url(1, "/indexes"))
            .header("Api-Key", &key)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let (status, body) = answer(create(r#"{"name":"four","dimension":"four","spec":{"serverless":{"cloud":"aws","region":"us-east-1"}}}"#.into()).await.unwrap()).await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (422, &json!("UNPROCESSABLE_ENTITY")),
        "{body}"
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("dimension"),
        "{body}"
    );
    refused(
        &answer(create(r#"{"name": "#.into()).await.unwrap()).await,
        400,
        "JSON",
    );
    let project = cluster
        .http
        .post(cluster.url(1, "/admin/projects"))
        .bearer_auth(&op)
        .json(&json!({"name": 5}))
        .send()
        .await
        .unwrap();
    refused(&answer(project).await, 422, "name");
    let unknown = cluster
        .http
        .post(cluster.url(1, "/admin/projects"))
        .bearer_auth(&op)
        .json(&json!({"name": "p", "colour": "red"}))
        .send()
        .await
        .unwrap();
    refused(&answer(unknown).await, 422, "colour");

    // gRPC: malformed protobuf, invalid UTF-8 and truncated frames are the client's fault.
    let upsert = "/VectorService/Upsert";
    let cases: Vec<(&str, Vec<u8>, tonic::Code, &str)> = vec![
        (
            "malformed protobuf",
            frame(&[0x0a, 0x05, 0x01]),
            tonic::Code::InvalidArgument,
            "malformed request",
        ),
        (
            "invalid UTF-8",
            frame(&[0x12, 0x02, 0xff, 0xfe]),
            tonic::Code::InvalidArgument,
            "malformed request",
        ),
        (
            "trailing bytes",
            frame(&pb::UpsertRequest::default().encode_to_vec())
                .into_iter()
                .chain([0, 0, 0])
                .collect(),
            tonic::Code::InvalidArgument,
            "3 bytes follow",
        ),
        (
            // A unary call carrying two whole messages: neither is applied (the stats
            // checked below stay at zero).
            "two messages",
            {
                let one = pb::UpsertRequest {
                    vectors: vec![pb::Vector {
                        id: "first".into(),
                        values: vec![1.0, 0.0, 0.0, 0.0],
                        ..Default::default()
                    }],
                    namespace: String::new(),
                };
                let mut body = frame(&one.encode_to_vec());
                body.extend(frame(&one.encode_to_vec()));
                body
            },
            tonic::Code::InvalidArgument,
            "a unary call carries one message",
        ),
        (
            "truncated body",
            {
                let mut f = frame(&[0x12, 0x01, b'n']);
                f.truncate(6);
                f
            },
            tonic::Code::InvalidArgument,
            "truncated gRPC frame",
        ),
        (
            "no message",
            Vec::new(),
            tonic::Code::InvalidArgument,
            "no message",
        ),
    ];
    for (what, body, code, needle) in cases {
        let got = cluster
            .grpc_raw(1, &key, "errs", upsert, body)
            .await
            .unwrap();
        assert_eq!(got.code, Some(code), "{what}: {got:?}");
        assert!(got.message.contains(needle), "{what}: {got:?}");
    }
    // A filter 200 levels deep, encoded level by level (a 200-level prost value would
    // overflow this test's stack on drop): prost's decoder refuses it as the client's fault.
    let deep = {
        let mut filter = Vec::new(); // an empty Struct
        for _ in 0..200 {
            let list = wrap(6, &wrap(1, &wrap(5, &filter))); // Value{list: [Value{struct}]}
            let entry = [wrap(1, b"$and"), wrap(2, &list)].concat();
            filter = wrap(1, &entry); // Struct{fields: {"$and": list}}
        }
        let vector: Vec<u8> = one.iter().flat_map(|v| (*v as f32).to_le_bytes()).collect();
        [wrap(3, &filter), vec![0x10, 1], wrap(7, &vector)].concat()
    };
    let got = cluster
        .grpc_raw(1, &key, "errs", "/VectorService/Query", frame(&deep))
        .await
        .unwrap();
    assert_eq!(got.code, Some(tonic::Code::InvalidArgument), "{got:?}");
    assert!(got.message.contains("nesting deeper than"), "{got:?}");
    for path in ["/VectorService/NoSuchMethod", "/pinecone.Other/Query"] {
        let got = cluster
            .grpc_raw(1, &key, "errs", path, frame(&[]))
            .await
            .unwrap();
        assert_eq!(
            got.code,
            Some(tonic::Code::Unimplemented),
            "{path}: {got:?}"
        );
    }
    assert_eq!(
        total(&cluster, &key, "errs").await,
        json!({}),
        "no refused call wrote"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn index_names_tags_and_specs_follow_pinecone_rules() {
    let (cluster, key) = one_node_with(&[]).await;
    let post = |body: Value| {
        cluster
            .http
            .post(cluster.url(1, "/indexes"))
            .header("Api-Key", &key)
            .json(&body)
            .send()
    };
    let spec = json!({"serverless": {"cloud": "aws", "region": "us-east-1"}});
    let index = |tags: Value, spec: Value| json!({"name": "tagged", "dimension": 4, "spec": spec, "tags": tags});
    for (tags, needle) in [
        (
            json!({"team/owner": "a"}),
            "keys must be alphanumeric, '_', or '-'",
        ),
        (json!({"team": "a=b"}), "values must be alphanumeric"),
        (
            Value::Object([("k".repeat(81), json!("a"))].into_iter().collect()),
            "1 to 80 characters",
        ),
        (json!({"team": "v".repeat(121)}), "120 characters"),
    ] {
        refused(
            &answer(post(index(tags, spec.clone())).await.unwrap()).await,
            400,
            needle,
        );
    }
    refused(
        &answer(post(index(json!({"team": 5}), spec.clone())).await.unwrap()).await,
        422,
        "string value",
    );
    for (spec, status, needle) in [
        (
            json!({"serverless": {"cloud": "aws", "region": "r", "source_collection": "c"}}),
            404,
            "collection 'c' not found",
        ),
        (
            json!({"pod": {"environment": "e", "pods": 2}}),
            400,
            "'spec.pod.pods' is 2",
        ),
        (
            json!({"pod": {"environment": "e", "metadata_config": {"indexed": ["a"]}}}),
            400,
            "metadata_config",
        ),
        (
            json!({"serverless": {"cloud": "aws", "region": "r", "read_capacity": {"mode": "Dedicated"}}}),
            400,
            "OnDemand",
        ),
        (
            json!({"serverless": {"cloud": "aws", "region": "r", "colour": "red"}}),
            422,
            "unknown field 'colour'",
        ),
        (
            json!({"serverless": {"cloud": "aws"}}),
            422,
            "'spec.serverless.region' is required",
        ),
    ] {
        refused(
            &answer(post(index(json!({}), spec)).await.unwrap()).await,
            status,
            needle,
        );
    }
    refused(
        &answer(
            post(json!({"name": "Bad_Name", "dimension": 4, "spec": spec}))
                .await
                .unwrap(),
        )
        .await,
        400,
        "Name must consist of lower case alphanumeric characters or '-'",
    );
    let good = json!({"team-a_1": "x;y@z_-.+ w", "empty": ""});
    let (status, created) = answer(post(index(good.clone(), spec.clone())).await.unwrap()).await;
    assert_eq!(status, 201, "{created}");
    let configure = |tags: Value| {
        cluster
            .http
            .patch(cluster.url(1, "/indexes/tagged"))
            .header("Api-Key", &key)
            .json(&json!({"tags": tags}))
            .send()
    };
    refused(
        &answer(configure(json!({"team/owner": "a=b"})).await.unwrap()).await,
        400,
        "keys must be alphanumeric",
    );
    refused(
        &answer(configure(json!({"team": "a=b"})).await.unwrap()).await,
        400,
        "values must be alphanumeric",
    );
    let (status, configured) = answer(configure(json!({"team-a_1": ""})).await.unwrap()).await;
    assert_eq!(status, 200, "{configured}");
    assert_eq!(configured["tags"], json!({"empty": ""}));
}

/// `DELETE /admin/cluster/members/{id}` through node `via`, with `query`; retried while the
/// answer is 503 (an election after a node was killed, a leader that removed itself).
async fn remove(cluster: &Cluster, via: u64, id: u64, query: &str) -> (u16, Value) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let got = answer(
            cluster
                .http
                .delete(cluster.url(via, &format!("/admin/cluster/members/{id}{query}")))
                .bearer_auth(cluster.admin_token())
                .send()
                .await
                .unwrap(),
        )
        .await;
        if got.0 != 503 || std::time::Instant::now() > deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

async fn describe(cluster: &Cluster, via: u64, key: &str, name: &str) -> Value {
    answer(
        cluster
            .http
            .get(cluster.url(via, &format!("/indexes/{name}")))
            .header("Api-Key", key)
            .send()
            .await
            .unwrap(),
    )
    .await
    .1
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_holding_an_index_last_reachable_replica_is_not_removed() {
    let mut cluster = Cluster::start(1).await.unwrap();
    let key = cluster.api_key();
    // "solo" lives on node 1 alone; "pair" on nodes 1 and 2 (placed when node 2 had joined).
    cluster
        .create_index(1, &key, "solo", 4, "cosine")
        .await
        .unwrap();
    cluster.add_node(false).await.unwrap();
    cluster
        .create_index(1, &key, "pair", 4, "cosine")
        .await
        .unwrap();
    cluster.add_node(false).await.unwrap();

    // Node 2 down: removing node 1 would strand both.
    cluster.node(2).kill();
    let got = remove(&cluster, 3, 1, "").await;
    refused(
        &got,
        412,
        "removing node 1 would leave no reachable replica of index(es)",
    );
    let message = got.1["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("'solo'") && message.contains("'pair'"),
        "{message}"
    );

    // Node 2 back: only "solo" is stranded.
    cluster.node(2).spawn().unwrap();
    cluster.wait_serving(2).await.unwrap();
    let got = remove(&cluster, 3, 1, "").await;
    refused(&got, 412, "'solo'");
    assert!(
        !got.1["error"]["message"]
            .as_str()
            .unwrap()
            .contains("'pair'"),
        "{}",
        got.1
    );
    assert_eq!(
        describe(&cluster, 3, &key, "solo").await["status"]["state"],
        "Ready"
    );

    // Forced, node 1 goes; "solo" then reports what it is: Disabled, not Ready.
    let (status, body) = remove(&cluster, 3, 1, "?force=true").await;
    assert_eq!(status, 202, "{body}");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let solo = describe(&cluster, 3, &key, "solo").await;
        if solo["status"] == json!({"ready": false, "state": "Disabled"}) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{solo}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        describe(&cluster, 2, &key, "pair").await["status"]["state"],
        "Ready"
    );
    // With node 2 down too, no member holding "pair" answers: Disabled through node 3.
    cluster.node(2).kill();
    let pair = describe(&cluster, 3, &key, "pair").await;
    assert_eq!(
        pair["status"],
        json!({"ready": false, "state": "Disabled"}),
        "{pair}"
    );
    let (status, _) = answer(
        cluster
            .data(3, &key, "solo", Method::POST, "/query")
            .json(&json!({"vector": [1.0, 0.0, 0.0, 0.0], "topK": 1}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 503);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refused_attempt_is_recorded_with_what_it_aimed_at_in_the_seed_vocabulary() {
    let (cluster, _) = one_node_with(&[("kept", 4, "cosine")]).await;
    let (project, org) = (cluster.project_id(), cluster.organization_id());
    let viewer = cluster
        .key_in(&project, &["ControlPlaneViewer"])
        .await
        .unwrap();
    let denied = cluster
        .http
        .delete(cluster.url(1, "/indexes/kept"))
        .header("Api-Key", &viewer)
        .send()
        .await
        .unwrap();
    assert_eq!(denied.status().as_u16(), 403);
    // Refusals are batched: the event arrives within a second or so.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let event = loop {
        let page = cluster
            .audit_page(
                1,
                Some(&org),
                "outcome=failure&action=delete&resource_type=index&resource_id=kept",
            )
            .await
            .unwrap();
        if let Some(e) = page["data"].as_array().and_then(|d| d.first()) {
            break e.clone();
        }
        assert!(std::time::Instant::now() < deadline, "no refusal event");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(event["event"]["operation"], "index.delete");
    assert_eq!(event["event"]["resource_id"], "kept");
    assert_eq!(event["event"]["outcome"]["error_code"], "PERMISSION_DENIED");
    assert_eq!(event["event"]["parameters"]["target_id"], project.as_str());
    assert_eq!(event["actor"]["principal_type"], "api_key");
}

#[tokio::test(flavor = "multi_thread")]
async fn misshapen_or_ambiguous_requests_are_refused_rather_than_guessed() {
    let (cluster, key) = one_node_with(&[("t", 4, "cosine"), ("u", 4, "dotproduct")]).await;
    let op = cluster.admin_token();
    let send = |method: Method, path: &str, body: &str| {
        cluster
            .http
            .request(method, cluster.url(1, path))
            .header("Api-Key", &key)
            .header("X-Conifer-Index", "t")
            .header("content-type", "application/json")
            .body(body.to_string())
    };
    // A JSON array in place of an object would fill fields by position.
    let spec = r#"{"serverless":{"cloud":"aws","region":"us-east-1"}}"#;
    let array_index = format!(r#"["x2",4,"cosine",{spec},null,null,null]"#);
    refused(
        &answer(
            send(Method::POST, "/indexes", &array_index)
                .send()
                .await
                .unwrap(),
        )
        .await,
        422,
        "JSON object",
    );
    let array_upsert = r#"[[{"id":"seq","values":[1,0,0,0]}],"seqns"]"#;
    refused(
        &answer(
            send(Method::POST, "/vectors/upsert", array_upsert)
                .send()
                .await
                .unwrap(),
        )
        .await,
        400,
        "JSON object",
    );
    let array_project = cluster
        .http
        .post(cluster.url(1, "/admin/projects"))
        .bearer_auth(&op)
        .header("content-type", "application/json")
        .body(r#"["p9"]"#)
        .send()
        .await
        .unwrap();
    refused(&answer(array_project).await, 422, "JSON object");
    // Bodies on routes that take none, and compressed bodies.
    let rotate = cluster
        .http
        .post(cluster.url(1, "/admin/signing-keys/rotate"))
        .bearer_auth(&op)
        .header("content-type", "application/json")
        .body(r#"{"foo":1}"#)
        .send()
        .await
        .unwrap();
    refused(&answer(rotate).await, 400, "takes no request body");
    refused(
        &answer(
            send(Method::DELETE, "/indexes/u", r#"{"foo":1}"#)
                .send()
                .await
                .unwrap(),
        )
        .await,
        400,
        "takes no request body",
    );
    let brotli = send(Method::POST, "/query", r#"{"vector":[1,0,0,0],"topK":1}"#)
        .header("content-encoding", "br");
    refused(
        &answer(brotli.send().await.unwrap()).await,
        415,
        "Content-Encoding",
    );
    // Repeated headers and parameters that name one thing.
    let twice = send(Method::POST, "/query", r#"{"vector":[1,0,0,0],"topK":1}"#)
        .header("Api-Key", "pcsk_bad");
    refused(
        &answer(twice.send().await.unwrap()).await,
        400,
        "header api-key appears 2 times with different values",
    );
    // The same value twice is no ambiguity (SDK 8 sends its API version twice).
    let same_twice = send(Method::POST, "/query", r#"{"vector":[1,0,0,0],"topK":1}"#)
        .header("Api-Key", key.as_str());
    assert_eq!(answer(same_twice.send().await.unwrap()).await.0, 200);
    refused(
        &get(&cluster, &key, "t", "/vectors/list?namespace=a&namespace=b").await,
        400,
        "query parameter 'namespace' is given more than once",
    );
    let version = cluster
        .http
        .get(cluster.url(1, "/indexes"))
        .header("Api-Key", &key)
        .header("X-Pinecone-Api-Version", "garbage")
        .send()
        .await
        .unwrap();
    refused(
        &answer(version).await,
        400,
        "expected a version such as 2025-10",
    );
    // Specs and schemas Conifer would store without honouring.
    for (body, status, needle) in [
        (
            r#"{"name":"v1","dimension":4,"spec":{"serverless":{"cloud":"aws","region":"r","read_capacity":{"mode":"OnDemand","foo":1}}}}"#,
            422,
            "unknown field 'foo'",
        ),
        (
            r#"{"name":"v1","dimension":4,"spec":{"serverless":{"cloud":"aws","region":"r","schema":{"fields":{"a":{"filterable":true}}}}}}"#,
            400,
            "'spec.serverless.schema' is not supported",
        ),
        (
            r#"{"name":"v1","dimension":4,"spec":{"serverless":{"cloud":"aws","region":"r"},"foo":1}}"#,
            422,
            "unknown field 'foo' in 'spec'",
        ),
    ] {
        refused(
            &answer(send(Method::POST, "/indexes", body).send().await.unwrap()).await,
            status,
            needle,
        );
    }
    refused(
        &answer(
            send(
                Method::POST,
                "/namespaces",
                r#"{"name":"ns3","schema":{"fields":{"a":{"filterable":true}}}}"#,
            )
            .send()
            .await
            .unwrap(),
        )
        .await,
        400,
        "'schema' is not supported",
    );
    // Vectors long enough to overflow a score.
    refused(
        &data(
            &cluster,
            &key,
            "u",
            "/vectors/upsert",
            json!({"vectors": [{"id": "big", "values": [3e38, 3e38, 3e38, 3e38]}]}),
        )
        .await,
        400,
        "is too long",
    );
    // A dry run answers as the update would.
    let (status, _) = data(&cluster, &key, "t", "/vectors/upsert",
        json!({"vectors": [{"id": "m", "values": [1.0, 0.0, 0.0, 0.0], "metadata": {"big": "x".repeat(30_000)}}]})).await;
    assert_eq!(status, 200);
    refused(&data(&cluster, &key, "t", "/vectors/update",
        json!({"filter": {"big": {"$exists": true}}, "setMetadata": {"more": "y".repeat(20_000)}, "dryRun": true})).await,
        400, "exceeds the limit of 40960 bytes");
    // A list token of one index does not continue another's listing.
    for index in ["t", "u"] {
        let vectors: Vec<Value> = (0..4)
            .map(|i| json!({"id": format!("p{i}"), "values": [1.0, 2.0, 3.0, 4.0]}))
            .collect();
        assert_eq!(
            data(
                &cluster,
                &key,
                index,
                "/vectors/upsert",
                json!({"vectors": vectors})
            )
            .await
            .0,
            200
        );
    }
    let (_, page) = get(&cluster, &key, "t", "/vectors/list?prefix=p&limit=2").await;
    let token = page["pagination"]["next"].as_str().unwrap().to_string();
    refused(
        &get(
            &cluster,
            &key,
            "u",
            &format!("/vectors/list?prefix=p&limit=2&paginationToken={token}"),
        )
        .await,
        400,
        "another index or namespace",
    );
    // Audit filters take the vocabulary's values only.
    let bogus = cluster
        .http
        .get(cluster.url(1, "/admin/audit-logs?action=bogus"))
        .bearer_auth(&op)
        .send()
        .await
        .unwrap();
    refused(&answer(bogus).await, 400, "'action' is \"bogus\"");
}

/// Field report (LlamaIndex on SDK 9.1): its delete sends `"namespace": null`. In Pinecone's
/// API an explicit `null` for an optional field means the field was left out, on every
/// data-plane body; `null` inside metadata stays refused.
#[tokio::test(flavor = "multi_thread")]
async fn null_for_an_optional_field_means_it_was_left_out() {
    let (c, key) = one_node_with(&[("nulls", 2, "cosine")]).await;
    let upsert = json!({"vectors": [{"id": "a", "values": [1.0, 0.0], "sparseValues": null,
                                     "metadata": null},
                                    {"id": "b", "values": [0.0, 1.0], "metadata": {"g": "x"}}],
                        "namespace": null});
    assert_eq!(
        data(&c, &key, "nulls", "/vectors/upsert", upsert).await.0,
        200
    );
    let query = json!({"vector": [1.0, 0.0], "topK": 1, "namespace": null, "id": null,
                       "includeValues": null, "includeMetadata": null, "filter": null});
    let (status, body) = data(&c, &key, "nulls", "/query", query).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["matches"][0]["id"], "a", "{body}");
    let values = &body["matches"][0]["values"];
    assert!(
        values.as_array().is_none_or(Vec::is_empty),
        "includeValues null is false: {body}"
    );
    let update = json!({"id": "b", "values": null, "namespace": null,
                        "setMetadata": {"g": "y"}, "dryRun": null});
    assert_eq!(
        data(&c, &key, "nulls", "/vectors/update", update).await.0,
        200
    );
    let delete = json!({"ids": ["a"], "deleteAll": null, "namespace": null, "filter": null});
    assert_eq!(
        data(&c, &key, "nulls", "/vectors/delete", delete).await.0,
        200
    );
    let delete = json!({"ids": null, "filter": {"g": {"$eq": "y"}}, "namespace": null});
    assert_eq!(
        data(&c, &key, "nulls", "/vectors/delete", delete).await.0,
        200
    );
    let stats = data(&c, &key, "nulls", "/describe_index_stats", json!({})).await;
    assert_eq!(stats.1["totalVectorCount"], 0, "{}", stats.1);
    // A null metadata value is not a missing field: still refused.
    let upsert = json!({"vectors": [{"id": "c", "values": [1.0, 0.0], "metadata": {"g": null}}]});
    let got = data(&c, &key, "nulls", "/vectors/upsert", upsert).await;
    assert_eq!(got.0, 400, "{}", got.1);
}
