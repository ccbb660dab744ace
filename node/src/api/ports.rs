//! Index ports: on a node given `--index-port-range`, every index that holds a port gets a
//! listener on the client port's IP and that port, serving the data plane and `/health`
//! ([`super::index_port_routes`]) with the same TLS (or plain HTTP under `--dev-http`),
//! connection rules and authorization.
//! The listener stamps each request with its index's shard group, and
//! [`Router::resolve`](crate::dataplane::Router::resolve) sends the call to that index. An
//! index host is then `<IP>:<port>`, which clients reach with no DNS (Pinecone Local's
//! scheme).

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use super::conn::ConnectionTable;
use crate::control::ControlPlane;

/// How often the listeners follow the control state (indexes created and deleted).
pub const INDEX_PORT_SYNC_MS: u64 = 250;
/// How often a port that cannot be bound is reported again.
pub const INDEX_PORT_BIND_WARN_MS: u64 = 60_000;

/// Most ports an index port range holds (each open one is a listening socket on every
/// node).
pub const MAX_INDEX_PORTS: u16 = 4_096;
/// Lowest port an index port range may start at: below are the privileged ports.
pub const MIN_INDEX_PORT: u16 = 1_024;

/// Parses `FIRST-LAST` (inclusive): FIRST ≤ LAST, FIRST ≥ [`MIN_INDEX_PORT`], at most
/// [`MAX_INDEX_PORTS`] ports.
pub fn parse_range(text: &str) -> Result<(u16, u16), String> {
    let bad = |why: &str| {
        format!("--index-port-range is {text:?}: {why}; expected FIRST-LAST, e.g. 7500-7599")
    };
    let (first, last) = text.trim().split_once('-').ok_or_else(|| bad("no '-'"))?;
    let port = |p: &str| {
        p.trim()
            .parse::<u16>()
            .map_err(|_| bad("not a port number"))
    };
    let (first, last) = (port(first)?, port(last)?);
    if first > last {
        return Err(bad("FIRST is above LAST"));
    }
    if first < MIN_INDEX_PORT {
        return Err(bad(&format!("ports below {MIN_INDEX_PORT} are privileged")));
    }
    if last - first >= MAX_INDEX_PORTS {
        return Err(bad(&format!("at most {MAX_INDEX_PORTS} ports")));
    }
    Ok((first, last))
}

/// Keeps one listener on `ip` per index port in the control state, until the process ends:
/// opens the ports of new indexes within [`INDEX_PORT_SYNC_MS`] and closes those of deleted
/// ones. Each listener stamps its requests with its index's shard group, so a connection
/// opened to a deleted index never reaches the index that takes its port next (it gets
/// 404 until it closes). Ports in `own_ports` (this node's client and cluster ports) are
/// never opened.
pub async fn serve_index_ports(
    ip: IpAddr,
    own_ports: Vec<u16>,
    control: ControlPlane,
    certs: Arc<crate::tls::reload::Certificates>,
    app: axum::Router,
    connections: Arc<ConnectionTable>,
    kind: super::access::Listener,
) {
    let mut open: HashMap<u16, (u64, JoinHandle<()>)> = HashMap::new();
    let mut unbindable: HashMap<u16, Instant> = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_millis(INDEX_PORT_SYNC_MS));
    loop {
        tick.tick().await;
        let wanted: BTreeMap<u16, u64> = control.read(|s| {
            s.indexes
                .values()
                .filter_map(|i| i.port.map(|port| (port, i.group_id)))
                .collect()
        });
        open.retain(|port, (group, task)| {
            let keep = wanted.get(port) == Some(group) && !task.is_finished();
            if !keep {
                task.abort();
                tracing::info!(port, group, "index port closed");
            }
            keep
        });
        unbindable.retain(|port, _| wanted.contains_key(port));
        for (port, group) in wanted {
            if open.contains_key(&port) || own_ports.contains(&port) {
                continue;
            }
            match TcpListener::bind(SocketAddr::new(ip, port)).await {
                Ok(listener) => {
                    tracing::info!(%ip, port, group, "index port open");
                    unbindable.remove(&port);
                    let serving = super::serve(
                        listener,
                        certs.clone(),
                        app.clone(),
                        connections.clone(),
                        Some(group),
                        kind,
                    );
                    open.insert(port, (group, tokio::spawn(serving)));
                }
                Err(e) => {
                    let warn_every = Duration::from_millis(INDEX_PORT_BIND_WARN_MS);
                    if unbindable
                        .get(&port)
                        .is_none_or(|at| at.elapsed() >= warn_every)
                    {
                        tracing::warn!(%ip, port, "cannot open index port: {e}; retrying");
                        unbindable.insert(port, Instant::now());
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse_and_refuse_what_they_should() {
        assert_eq!(parse_range("15100-15199"), Ok((15100, 15199)));
        assert_eq!(parse_range(" 9000 - 9000 "), Ok((9000, 9000)));
        assert_eq!(parse_range("2000-6095"), Ok((2000, 6095)));
        for bad in [
            "",
            "15100",
            "15199-15100",
            "0-10",
            "80-90",
            "a-b",
            "1-70000",
            "1-2-3",
            "2000-6096",
        ] {
            assert!(parse_range(bad).is_err(), "{bad:?} accepted");
        }
    }
}
