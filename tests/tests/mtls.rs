//! The cluster port refuses peers whose certificate does not chain to the cluster CA, is
//! expired, or names another node than the one the request claims to come from.

use std::path::Path;
use std::time::Duration;

use conifer_node::tls::{self, LeafKind, NodeTls, Validity};
use conifer_proto::internal::internal_client::InternalClient;
use conifer_proto::internal::{RaftKind, RaftRequest};
use conifer_raft::NodeInfo;
use conifer_tests::Cluster;
use time::OffsetDateTime;

fn node_cert(ca_dir: &Path, out: &Path, id: u64, validity: Validity) -> NodeTls {
    let kind = LeafKind::Node {
        id,
        hosts: vec!["127.0.0.1".into()],
        domain: None,
    };
    tls::issue_leaf(ca_dir, out, "node", kind, validity).unwrap();
    std::fs::copy(ca_dir.join(tls::CA_CERT), out.join(tls::CA_CERT)).unwrap();
    NodeTls::load(out).unwrap()
}

/// Sends a Raft message for a group that does not exist, claiming to be `from`, to node 1.
async fn probe(cluster: &Cluster, identity: &NodeTls, from: u64) -> Result<(), tonic::Status> {
    let target = NodeInfo {
        cluster_addr: cluster.nodes[0].cluster_addr.clone(),
        api_addr: String::new(),
    };
    let channel = identity.cluster_channel(1, &target).unwrap();
    let mut client = InternalClient::new(channel);
    let request = RaftRequest {
        group_id: 999,
        from_node: from,
        kind: RaftKind::Vote as i32,
        payload: vec![],
    };
    tokio::time::timeout(Duration::from_secs(10), client.raft(request))
        .await
        .expect("probe timed out")
        .map(|_| ())
}

/// The request never reached a handler: neither the dispatcher's NotFound nor the SAN
/// check's PermissionDenied, but a transport failure.
fn assert_refused_at_handshake(status: &tonic::Status) {
    assert!(
        !matches!(
            status.code(),
            tonic::Code::NotFound | tonic::Code::PermissionDenied | tonic::Code::Ok
        ),
        "expected a transport-level refusal, got {status:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn cluster_port_refuses_wrong_ca_expired_and_mismatched_san() {
    let cluster = Cluster::start(1).await.unwrap();
    let scratch = tempfile::tempdir().unwrap();

    // Control: a valid certificate for node 7 claiming node 7 passes authentication and
    // reaches dispatch, which reports the unknown group.
    let good = node_cert(
        &cluster.ca_dir,
        &scratch.path().join("good"),
        7,
        Validity::days_from_now(1),
    );
    let status = probe(&cluster, &good, 7).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound, "{status:?}");

    // The same valid certificate claiming to be node 1: refused.
    let status = probe(&cluster, &good, 1).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    assert!(
        status.message().contains("claims to come from node 1"),
        "{status:?}"
    );

    // A certificate from another CA: the TLS handshake fails, nothing is dispatched.
    let other_ca = scratch.path().join("other-ca");
    tls::generate_ca(&other_ca, "intruder").unwrap();
    let mut foreign = node_cert(
        &other_ca,
        &scratch.path().join("foreign"),
        1,
        Validity::days_from_now(1),
    );
    // Trust the real CA so only the *client* certificate is wrong.
    foreign.ca_pem = std::fs::read_to_string(cluster.ca_dir.join(tls::CA_CERT)).unwrap();
    let status = probe(&cluster, &foreign, 1).await.unwrap_err();
    assert_refused_at_handshake(&status);

    // An expired certificate from the right CA, for the right node: refused at the handshake.
    let now = OffsetDateTime::now_utc();
    let expired_validity = Validity {
        not_before: now - time::Duration::days(10),
        not_after: now - time::Duration::days(1),
    };
    let expired = node_cert(
        &cluster.ca_dir,
        &scratch.path().join("expired"),
        1,
        expired_validity,
    );
    let status = probe(&cluster, &expired, 1).await.unwrap_err();
    assert_refused_at_handshake(&status);

    // A client certificate (no node SAN) from the right CA: authenticated by TLS, refused by SAN.
    tls::issue_leaf(
        &cluster.ca_dir,
        &scratch.path().join("client"),
        "client",
        LeafKind::Client {
            name: "operator-laptop".into(),
        },
        Validity::days_from_now(1),
    )
    .unwrap();
    let client_tls = NodeTls {
        ca_pem: std::fs::read_to_string(cluster.ca_dir.join(tls::CA_CERT)).unwrap(),
        cert_pem: std::fs::read_to_string(scratch.path().join("client/client.pem")).unwrap(),
        key_pem: std::fs::read_to_string(scratch.path().join("client/client-key.pem")).unwrap(),
        source_ip: None,
    };
    let status = probe(&cluster, &client_tls, 1).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");

    // The client port serves TLS with the node certificate: a client trusting the CA connects.
    let resp = cluster
        .http
        .get(cluster.url(1, "/health"))
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success());
}
