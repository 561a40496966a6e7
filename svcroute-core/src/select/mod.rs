//! The routing decision, per service port: frontends, endpoint sets, policies, affinity.
//!
//! This is made once, here; backends never re-derive policy. A [`ResolvedServicePort`] carries,
//! for each IP family the Service has a ClusterIP in (upstream runs one proxier per family),
//! a [`FamilyRouting`] with its frontends and its categorised endpoints; [`masquerade`] says
//! which traffic is masqueraded.

pub mod categorize;
pub mod masquerade;

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::model::{
    IpFamily, PortSpec, Protocol, ProxyConfig, ServiceInfo, ServiceName, SliceInfo, TrafficPolicy,
};
use categorize::{Candidate, Categorized, NodeContext, NodeLabels, PolicyInput, categorize};

/// The key of a service port: (namespace/name, port name, protocol).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ServicePortName {
    /// The Service.
    pub service: ServiceName,
    /// The port's name (empty for a single unnamed port).
    pub port_name: String,
    /// The port's protocol.
    pub protocol: Protocol,
}

impl fmt::Display for ServicePortName {
    /// `namespace/name:port` (`namespace/name` when the port is unnamed), as upstream prints it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.port_name.is_empty() {
            write!(f, "{}", self.service)
        } else {
            write!(f, "{}:{}", self.service, self.port_name)
        }
    }
}

/// What happens to traffic whose policy leaves no endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NoEndpointVerdict {
    /// The service has no usable endpoint anywhere: actively refused.
    Reject,
    /// Endpoints exist but none is usable for a Local policy: silently dropped.
    Drop,
}

/// A sorted, shared list of endpoints.
pub type EndpointList = Arc<[SocketAddr]>;

/// The routing of one service port in one IP family.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FamilyRouting {
    /// The family.
    pub family: IpFamily,
    /// The ClusterIP of this family.
    pub cluster_ip: IpAddr,
    /// externalIPs of this family.
    pub external_ips: Vec<IpAddr>,
    /// Load-balancer ingress IPs of this family (VIP mode).
    pub load_balancer_ips: Vec<IpAddr>,
    /// When `Some`, only these sources may reach the load-balancer IPs (the source ranges of
    /// this family, plus the LB IPs themselves when this node's primary IP is inside a range);
    /// anything else is dropped. `None` = no firewall.
    pub firewall_allowed_sources: Option<Vec<IpNet>>,
    /// NodePort, externalIPs or LB IPs exist in this family.
    pub externally_accessible: bool,
    /// Endpoints for cluster-policy traffic, sorted; `None` when no traffic uses the policy.
    pub cluster_endpoints: Option<EndpointList>,
    /// Endpoints for local-policy traffic, sorted; `None` when no traffic uses the policy.
    pub local_endpoints: Option<EndpointList>,
    /// Every endpoint some traffic may reach, sorted (often the same list as the cluster one).
    pub all_reachable: EndpointList,
    /// Whether any usable endpoint exists.
    pub has_any_endpoints: bool,
    /// Ready endpoints on this node: what the eTP=Local health check reports (200 when above
    /// zero, else 503, so a load balancer drains a node holding only terminating pods).
    pub local_ready_endpoints: usize,
    /// Distinct addresses of those ready endpoints on this node, sorted: what the health check
    /// counts across all ports of the Service (upstream `LocalReadyEndpoints` squashes by IP).
    /// Only filled for health-checked Services (with a `healthCheckNodePort`), else empty.
    pub local_ready_ips: Vec<IpAddr>,
}

impl FamilyRouting {
    /// The endpoints traffic under `policy` goes to (empty when the policy is unused). Which
    /// policy applies depends on the path: `internalTrafficPolicy` for ClusterIP traffic,
    /// [`masquerade::ExternalPath`] for external traffic.
    pub fn endpoints(&self, policy: TrafficPolicy) -> &[SocketAddr] {
        let set = match policy {
            TrafficPolicy::Cluster => &self.cluster_endpoints,
            TrafficPolicy::Local => &self.local_endpoints,
        };
        set.as_deref().unwrap_or_default()
    }

    /// The external frontends (externalIPs, then LB IPs), each with kube-proxy's word for it
    /// in comments: `external IP` or `loadbalancer IP`.
    pub fn external_frontends(&self) -> Vec<(IpAddr, &'static str)> {
        let external = self.external_ips.iter().map(|ip| (*ip, "external IP"));
        let balancers = self
            .load_balancer_ips
            .iter()
            .map(|ip| (*ip, "loadbalancer IP"));
        external.chain(balancers).collect()
    }

    /// Cluster-policy endpoints (empty when unused).
    pub fn cluster(&self) -> &[SocketAddr] {
        self.cluster_endpoints.as_deref().unwrap_or_default()
    }

    /// Whether some traffic to this port finds no endpoint, and what happens to it then:
    /// REJECT when no usable endpoint exists at all, DROP when endpoints exist but a policy in
    /// use (a Local one on a node without local endpoints) finds none; `None` otherwise.
    pub fn when_no_endpoint(&self) -> Option<NoEndpointVerdict> {
        let empty_in_use = |set: &Option<EndpointList>| set.as_ref().is_some_and(|s| s.is_empty());
        if !self.has_any_endpoints {
            Some(NoEndpointVerdict::Reject)
        } else if empty_in_use(&self.local_endpoints) || empty_in_use(&self.cluster_endpoints) {
            Some(NoEndpointVerdict::Drop)
        } else {
            None
        }
    }

    /// What happens to traffic whose chosen endpoint set is empty.
    pub fn when_empty(&self) -> NoEndpointVerdict {
        if self.has_any_endpoints {
            NoEndpointVerdict::Drop
        } else {
            NoEndpointVerdict::Reject
        }
    }
}

/// A service port with everything a dataplane needs to program it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ResolvedServicePort {
    /// Its key.
    pub name: ServicePortName,
    /// The service port number.
    pub port: u16,
    /// The NodePort, if any.
    pub node_port: Option<u16>,
    /// The health-check NodePort (eTP=Local), if any.
    pub health_check_node_port: Option<u16>,
    /// `internalTrafficPolicy`.
    pub internal_traffic_policy: TrafficPolicy,
    /// `externalTrafficPolicy` (only meaningful when externally accessible).
    pub external_traffic_policy: TrafficPolicy,
    /// ClientIP session affinity timeout in seconds, `None` without affinity.
    pub affinity_timeout: Option<u32>,
    /// One entry per family the service has a ClusterIP in and the proxy handles, IPv4 first.
    pub families: Vec<FamilyRouting>,
}

impl ResolvedServicePort {
    /// The routing of one family, if the service has it.
    pub fn family(&self, family: IpFamily) -> Option<&FamilyRouting> {
        self.families.iter().find(|f| f.family == family)
    }
}

/// Everything about the node that selection depends on.
pub struct SelectContext<'a> {
    /// The proxy's settings.
    pub config: &'a ProxyConfig,
    /// This node's effective labels (from its Node object, else the settings).
    pub node_labels: &'a BTreeMap<String, String>,
    /// Labels of all known nodes, for legacy `topologyKeys`.
    pub nodes: &'a dyn NodeLabels,
}

/// Resolves every port of one Service from its slices (any order, any family).
pub fn resolve_service(
    svc: &ServiceInfo,
    slices: &[&SliceInfo],
    cx: &SelectContext<'_>,
) -> Vec<ResolvedServicePort> {
    if !svc.is_routed() {
        return Vec::new();
    }
    let mut slices: Vec<&SliceInfo> = slices.to_vec();
    slices.sort_by(|a, b| a.name.cmp(&b.name));
    svc.ports
        .iter()
        .map(|port| ResolvedServicePort {
            name: ServicePortName {
                service: svc.name.clone(),
                port_name: port.name.clone(),
                protocol: port.protocol,
            },
            port: port.port,
            node_port: port.node_port,
            health_check_node_port: svc.health_check_node_port,
            internal_traffic_policy: svc.internal_traffic_policy,
            external_traffic_policy: svc.external_traffic_policy,
            affinity_timeout: svc.affinity_timeout,
            families: {
                // At most one per ClusterIP; sized up front, as the desired state keeps it.
                let mut families = Vec::with_capacity(svc.cluster_ips.len());
                families.extend(
                    IpFamily::ALL
                        .iter()
                        .filter(|f| cx.config.handles(**f))
                        .filter_map(|f| resolve_family(svc, port, &slices, *f, cx)),
                );
                families
            },
        })
        .collect()
}

fn resolve_family(
    svc: &ServiceInfo,
    port: &PortSpec,
    slices: &[&SliceInfo],
    family: IpFamily,
    cx: &SelectContext<'_>,
) -> Option<FamilyRouting> {
    let cluster_ip = svc.cluster_ip(family)?;
    let of_family = |ips: &[IpAddr]| -> Vec<IpAddr> {
        ips.iter()
            .copied()
            .filter(|ip| IpFamily::of(ip) == family)
            .collect()
    };
    let external_ips = of_family(&svc.external_ips);
    let load_balancer_ips = of_family(&svc.load_balancer_ips);
    let externally_accessible =
        port.node_port.is_some() || !external_ips.is_empty() || !load_balancer_ips.is_empty();
    let firewall_allowed_sources = firewall(svc, family, &load_balancer_ips, cx.config);

    let candidates = merge_endpoints(port, slices, family);
    let is_local_ready = |c: &&Candidate<'_>| {
        c.info.ready && c.info.node_name.as_deref() == Some(cx.config.node_name.as_str())
    };
    let local_ready_endpoints = candidates.iter().filter(is_local_ready).count();
    let mut local_ready_ips = Vec::new();
    if svc.health_check_node_port.is_some() {
        local_ready_ips.extend(
            candidates
                .iter()
                .filter(is_local_ready)
                .map(|c| c.addr.ip()),
        );
        local_ready_ips.sort();
        local_ready_ips.dedup();
    }
    let policy = PolicyInput {
        internal: svc.internal_traffic_policy,
        external: svc.external_traffic_policy,
        externally_accessible,
        topology_keys: &svc.topology_keys,
    };
    let node = NodeContext {
        name: &cx.config.node_name,
        labels: cx.node_labels,
        nodes: cx.nodes,
    };
    let Categorized {
        cluster,
        local,
        all_reachable,
        has_any,
    } = categorize(&candidates, &policy, &node);
    // Shared, exactly sized lists: the union is usually the cluster list itself.
    let cluster: Option<EndpointList> = cluster.map(EndpointList::from);
    let local: Option<EndpointList> = local.map(EndpointList::from);
    let all_reachable = [&cluster, &local]
        .into_iter()
        .flatten()
        .find(|list| ***list == *all_reachable)
        .cloned()
        .unwrap_or_else(|| EndpointList::from(all_reachable));
    Some(FamilyRouting {
        family,
        cluster_ip,
        external_ips,
        load_balancer_ips,
        firewall_allowed_sources,
        externally_accessible,
        cluster_endpoints: cluster,
        local_endpoints: local,
        all_reachable,
        has_any_endpoints: has_any,
        local_ready_endpoints,
        local_ready_ips,
    })
}

/// Source ranges apply to LB IPs only. When the node's primary IP is inside a range, the LB IPs
/// are allowed sources too (VIP-style balancers loop back through the node). Ranges given only
/// for the other family block this family's LB IPs entirely rather than leaving them open.
fn firewall(
    svc: &ServiceInfo,
    family: IpFamily,
    lb_ips: &[IpAddr],
    config: &ProxyConfig,
) -> Option<Vec<IpNet>> {
    if svc.source_ranges.is_empty() || lb_ips.is_empty() {
        return None;
    }
    let mut allowed: Vec<IpNet> = svc
        .source_ranges
        .iter()
        .copied()
        .filter(|n| IpFamily::of(&n.addr()) == family)
        .collect();
    let node_inside = config
        .primary_ip(family)
        .is_some_and(|ip| allowed.iter().any(|n| n.contains(&ip)));
    if node_inside {
        allowed.extend(lb_ips.iter().map(|ip| IpNet::from(*ip)));
    }
    allowed.sort();
    allowed.dedup();
    Some(allowed)
}

/// Merges the endpoints of every slice of the family by `ip:port` (first address only; port
/// matched by name and protocol). A duplicate `ip:port` keeps the non-terminating copy, so a
/// reused pod IP routes to the live pod. Sorted by address.
fn merge_endpoints<'a>(
    port: &PortSpec,
    slices: &[&'a SliceInfo],
    family: IpFamily,
) -> Vec<Candidate<'a>> {
    let mut merged: BTreeMap<SocketAddr, Candidate<'a>> = BTreeMap::new();
    for slice in slices.iter().filter(|s| s.family == Some(family)) {
        let Some(sp) = slice
            .ports
            .iter()
            .find(|p| p.name == port.name && p.protocol == port.protocol)
        else {
            continue;
        };
        for ep in &slice.endpoints {
            let addr = SocketAddr::new(ep.ip, sp.port);
            let cand = Candidate { addr, info: ep };
            merged
                .entry(addr)
                .and_modify(|old| {
                    if old.info.terminating && !ep.terminating {
                        *old = cand;
                    }
                })
                .or_insert(cand);
        }
    }
    merged.into_values().collect()
}

#[cfg(test)]
#[path = "resolve_tests.rs"]
mod tests;
