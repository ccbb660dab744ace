//! Private endpoints of a project (Pinecone's "Private Endpoints", self-hosted): each binds
//! the project's data plane to the nodes' private listener (`serve --private-api-addr`)
//! and/or to client source addresses in CIDR ranges. Once a project has one, a data-plane
//! call is served only when it satisfies at least one of them ([`ControlState::private_access`]);
//! API keys are still required on the private path. The control plane (index management,
//! administration) stays reachable as before. Audited as the seed's `private-endpoints`.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::audit::project_org;
use super::state::{check_new, not_found, ControlState, Outcome, Output, Rejection};
use crate::audit::{Params, Resource, ResourceType, Verb};

/// Most private endpoints one project may hold.
pub const MAX_PRIVATE_ENDPOINTS_PER_PROJECT: usize = 20;
/// Most CIDR ranges one private endpoint may allow.
pub const MAX_ALLOWED_CIDRS: usize = 64;

/// A private endpoint of a project.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrivateEndpoint {
    /// Stable id (`pe-…`), the audit log's resource id.
    pub id: String,
    /// The project whose data plane it admits.
    pub project_id: String,
    /// Name, unique within the project.
    pub name: String,
    /// Whether calls must arrive on a node's private listener.
    pub private_listener: bool,
    /// Source ranges calls must come from (canonical CIDR text); empty: any source.
    pub allowed_cidrs: Vec<String>,
    /// Creation time, RFC 3339.
    pub created_at: String,
}

impl PrivateEndpoint {
    /// Whether a call that arrived on the private listener (or not) from `source` satisfies
    /// this endpoint.
    pub fn admits(&self, on_private_listener: bool, source: Option<IpAddr>) -> bool {
        if self.private_listener && !on_private_listener {
            return false;
        }
        self.allowed_cidrs.is_empty()
            || source.is_some_and(|ip| {
                let ip = canonical_ip(ip);
                self.allowed_cidrs
                    .iter()
                    .filter_map(|c| c.parse::<IpNet>().ok())
                    .any(|net| net.contains(&ip))
            })
    }

    /// What the endpoint requires, in words (for refusals and listings).
    pub fn rule(&self) -> String {
        let mut parts = Vec::new();
        if self.private_listener {
            parts.push("the private listener".to_string());
        }
        if !self.allowed_cidrs.is_empty() {
            parts.push(format!("sources in {}", self.allowed_cidrs.join(", ")));
        }
        format!("'{}' ({})", self.name, parts.join(", from "))
    }
}

/// An IPv4-mapped IPv6 address as the IPv4 address it is (a dual-stack listener reports
/// IPv4 clients so).
fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// An IPv4-mapped IPv6 range (`::ffff:10.0.0.0/104`) as the IPv4 range it is, since
/// clients are matched by their IPv4 address ([`canonical_ip`]).
fn canonical_net(net: IpNet) -> IpNet {
    match net {
        IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.network().to_ipv4_mapped() {
            Some(v4) => ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96)
                .map(IpNet::V4)
                .unwrap_or(net),
            None => net,
        },
        other => other,
    }
}

/// Parses CIDR ranges (`10.0.0.0/8`, `2001:db8::/32`; a bare address is its /32 or /128;
/// an IPv4-mapped IPv6 range or address becomes the IPv4 one)
/// into their canonical text, network address first. At most [`MAX_ALLOWED_CIDRS`].
pub fn parse_cidrs(texts: &[String]) -> Result<Vec<String>, String> {
    if texts.len() > MAX_ALLOWED_CIDRS {
        return Err(format!(
            "{} CIDR ranges given; a private endpoint allows at most {MAX_ALLOWED_CIDRS}",
            texts.len()
        ));
    }
    let mut out: Vec<String> = Vec::new();
    for text in texts {
        let net = match text.trim().parse::<IpNet>() {
            Ok(net) => canonical_net(net.trunc()),
            Err(_) => match text.trim().parse::<IpAddr>().map(canonical_ip) {
                Ok(ip) => IpNet::from(ip),
                Err(_) => {
                    return Err(format!(
                        "{text:?} is not a CIDR range: give it as ADDRESS/PREFIX, e.g. \
                         10.0.0.0/8 or 2001:db8::/32"
                    ))
                }
            },
        };
        let canonical = net.to_string();
        if !out.contains(&canonical) {
            out.push(canonical);
        }
    }
    Ok(out)
}

/// A change of a private endpoint.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum PrivateEndpointCommand {
    /// Create a private endpoint.
    Create(PrivateEndpoint),
    /// Delete a private endpoint.
    Delete {
        /// The endpoint.
        id: String,
    },
}

/// Why a data-plane call was refused by its project's private endpoints.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrivateRefusal(pub String);

impl ControlState {
    /// Applies a private-endpoint command; on rejection nothing changes.
    pub(super) fn apply_private_endpoint(&mut self, command: PrivateEndpointCommand) -> Outcome {
        match command {
            PrivateEndpointCommand::Create(endpoint) => {
                if !self.projects.contains_key(&endpoint.project_id) {
                    return Err(not_found("project", &endpoint.project_id));
                }
                if !endpoint.private_listener && endpoint.allowed_cidrs.is_empty() {
                    return Err(Rejection::Invalid(
                        "a private endpoint needs the private listener, allowed CIDR ranges, \
                         or both"
                            .into(),
                    ));
                }
                let existing = self.private_endpoints_of(&endpoint.project_id);
                let taken = if self.private_endpoint(&endpoint.id).is_some() {
                    Some(format!(
                        "private endpoint id '{}' already exists",
                        endpoint.id
                    ))
                } else {
                    existing.iter().any(|e| e.name == endpoint.name).then(|| {
                        format!(
                            "the project already has a private endpoint named '{}'",
                            endpoint.name
                        )
                    })
                };
                check_new(
                    taken,
                    existing.len(),
                    MAX_PRIVATE_ENDPOINTS_PER_PROJECT,
                    "project",
                    "private endpoints",
                )?;
                self.private_endpoints.insert(
                    (endpoint.project_id.clone(), endpoint.id.clone()),
                    endpoint.clone(),
                );
                Ok(Output::PrivateEndpoint(endpoint))
            }
            PrivateEndpointCommand::Delete { id } => {
                let Some(project) = self.private_endpoint(&id).map(|e| e.project_id.clone()) else {
                    return Err(not_found("private endpoint", &id));
                };
                self.private_endpoints.remove(&(project, id));
                Ok(Output::Done)
            }
        }
    }

    /// The private endpoints of a project, by id: one range of the map (every data-plane
    /// call asks, so it reads the project's entries only).
    pub fn private_endpoints_of(&self, project_id: &str) -> Vec<&PrivateEndpoint> {
        self.private_endpoints
            .range((project_id.to_string(), String::new())..)
            .take_while(|((project, _), _)| project == project_id)
            .map(|(_, e)| e)
            .collect()
    }

    /// The private endpoint `id`, of whichever project (an admin lookup: a scan).
    pub fn private_endpoint(&self, id: &str) -> Option<&PrivateEndpoint> {
        self.private_endpoints.values().find(|e| e.id == id)
    }

    /// Whether project `project_id` admits a data-plane call that arrived on the private
    /// listener (or not) from `source`: always when it has no private endpoint, else when
    /// one of them admits it. The refusal names every rule and what the call was.
    pub fn private_access(
        &self,
        project_id: &str,
        on_private_listener: bool,
        source: Option<IpAddr>,
    ) -> Result<(), PrivateRefusal> {
        let endpoints = self.private_endpoints_of(project_id);
        if endpoints.is_empty()
            || endpoints
                .iter()
                .any(|e| e.admits(on_private_listener, source))
        {
            return Ok(());
        }
        let project = self
            .projects
            .get(project_id)
            .map_or(project_id, |p| p.name.as_str());
        let rules: Vec<String> = endpoints.iter().map(|e| e.rule()).collect();
        let listener = if on_private_listener {
            "the private listener"
        } else {
            "the public listener"
        };
        let from = source.map_or_else(|| "an unknown source".to_string(), |ip| ip.to_string());
        Err(PrivateRefusal(format!(
            "project '{project}' serves its data plane only through its private endpoints: {}; \
             this call came to {listener} from {from}",
            rules.join("; ")
        )))
    }
}

/// The audit description of a private-endpoint command (the state before it): the seed's
/// `private-endpoints` resource, by id.
pub(super) fn describe(state: &ControlState, command: &PrivateEndpointCommand) -> Resource {
    let endpoint = match command {
        PrivateEndpointCommand::Create(e) => Some(e.clone()),
        PrivateEndpointCommand::Delete { id } => state.private_endpoint(id).cloned(),
    };
    let (verb, id) = match command {
        PrivateEndpointCommand::Create(e) => (Verb::Create, e.id.as_str()),
        PrivateEndpointCommand::Delete { id } => (Verb::Delete, id.as_str()),
    };
    let mut resource = Resource::new(verb, ResourceType::PrivateEndpoints, Some(id)).id(Some(id));
    if let Some(e) = endpoint {
        resource = resource
            .named(Some(&e.name))
            .in_org(project_org(state, &e.project_id).as_deref())
            .params(
                Params::default()
                    .with("project_id", e.project_id.as_str())
                    .with("name", e.name.as_str())
                    .with("private_listener", e.private_listener)
                    .with("allowed_cidrs", e.allowed_cidrs.clone()),
            );
    }
    resource
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(name: &str, listener: bool, cidrs: &[&str]) -> PrivateEndpoint {
        PrivateEndpoint {
            id: format!("pe-{name}"),
            project_id: "p1".into(),
            name: name.into(),
            private_listener: listener,
            allowed_cidrs: cidrs.iter().map(|c| c.to_string()).collect(),
            created_at: String::new(),
        }
    }

    #[test]
    fn cidrs_parse_to_their_networks() {
        let parsed = parse_cidrs(&[
            "10.1.2.3/8".into(),
            "127.0.0.2".into(),
            "2001:db8::1/32".into(),
            "10.0.0.0/8".into(),
        ])
        .unwrap();
        assert_eq!(parsed, ["10.0.0.0/8", "127.0.0.2/32", "2001:db8::/32"]);
        let mapped = parse_cidrs(&["::ffff:10.1.0.0/112".into(), "::ffff:10.9.9.9".into()]);
        assert_eq!(mapped.unwrap(), ["10.1.0.0/16", "10.9.9.9/32"]);
        for bad in ["10.0.0.0/33", "nope", "10.0.0/8", ""] {
            assert!(parse_cidrs(&[bad.into()]).is_err(), "{bad:?} accepted");
        }
        let many: Vec<String> = (0..=MAX_ALLOWED_CIDRS)
            .map(|i| format!("10.0.0.{i}"))
            .collect();
        assert!(parse_cidrs(&many).is_err());
    }

    #[test]
    fn a_project_reads_its_own_endpoints_only() {
        let mut state = ControlState::default();
        for (project, name) in [("p1", "a"), ("p10", "b"), ("p1", "c"), ("p0", "d")] {
            let mut e = endpoint(name, true, &[]);
            e.project_id = project.into();
            state
                .private_endpoints
                .insert((project.into(), e.id.clone()), e);
        }
        let names = |p: &str| -> Vec<String> {
            state
                .private_endpoints_of(p)
                .iter()
                .map(|e| e.name.clone())
                .collect()
        };
        assert_eq!(names("p1"), ["a", "c"]);
        assert_eq!(names("p10"), ["b"]);
        assert!(names("p").is_empty());
        assert_eq!(
            state
                .private_endpoint("pe-d")
                .map(|e| e.project_id.as_str()),
            Some("p0")
        );
        assert!(state.private_access("p2", false, None).is_ok());
        assert!(state.private_access("p1", false, None).is_err());
    }

    #[test]
    fn an_endpoint_admits_its_listener_and_its_sources_only() {
        let ip = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        let listener = endpoint("vpc", true, &[]);
        assert!(listener.admits(true, ip("127.0.0.9")));
        assert!(!listener.admits(false, ip("127.0.0.9")));
        let office = endpoint("office", false, &["127.0.0.4/31"]);
        assert!(office.admits(false, ip("127.0.0.5")));
        assert!(office.admits(false, ip("::ffff:127.0.0.4")));
        assert!(!office.admits(false, ip("127.0.0.6")));
        assert!(!office.admits(false, None));
        let both = endpoint("both", true, &["127.0.0.4/31"]);
        assert!(both.admits(true, ip("127.0.0.4")));
        assert!(!both.admits(false, ip("127.0.0.4")));
        assert!(!both.admits(true, ip("127.0.0.6")));
        assert_eq!(
            both.rule(),
            "'both' (the private listener, from sources in 127.0.0.4/31)"
        );
    }
}
