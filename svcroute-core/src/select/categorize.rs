//! Endpoint categorisation per service port and family, as upstream `CategorizeEndpoints`:
//! the cluster-policy set, the local-policy set, their union and whether any endpoint exists.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use crate::model::{EndpointInfo, LABEL_HOSTNAME, LABEL_ZONE, TrafficPolicy};

/// One endpoint of a service port: its address and what the slice said about it.
#[derive(Debug, Clone, Copy)]
pub struct Candidate<'a> {
    /// `ip:port`.
    pub addr: SocketAddr,
    /// The slice's endpoint.
    pub info: &'a EndpointInfo,
}

/// What categorisation needs to know about the service port.
#[derive(Debug, Clone, Copy)]
pub struct PolicyInput<'a> {
    /// `internalTrafficPolicy`.
    pub internal: TrafficPolicy,
    /// `externalTrafficPolicy`.
    pub external: TrafficPolicy,
    /// NodePort, LB IPs or externalIPs exist (in this family).
    pub externally_accessible: bool,
    /// Legacy `spec.topologyKeys`.
    pub topology_keys: &'a [String],
}

impl PolicyInput<'_> {
    /// Whether the cluster-policy set is used: iTP=Cluster, or reachable from outside (eTP=Local
    /// still needs it for pod- and node-originated traffic).
    pub fn uses_cluster(&self) -> bool {
        self.internal != TrafficPolicy::Local || self.externally_accessible
    }

    /// Whether the local-policy set is used.
    pub fn uses_local(&self) -> bool {
        self.internal == TrafficPolicy::Local
            || (self.external == TrafficPolicy::Local && self.externally_accessible)
    }
}

/// Labels of nodes, looked up by name (for legacy `topologyKeys`).
pub trait NodeLabels {
    /// The labels of the named node, if the node is known.
    fn labels_of(&self, node: &str) -> Option<&BTreeMap<String, String>>;
}

impl NodeLabels for BTreeMap<String, BTreeMap<String, String>> {
    fn labels_of(&self, node: &str) -> Option<&BTreeMap<String, String>> {
        self.get(node)
    }
}

/// Where this proxy runs.
#[derive(Clone, Copy)]
pub struct NodeContext<'a> {
    /// This node's name.
    pub name: &'a str,
    /// This node's labels.
    pub labels: &'a BTreeMap<String, String>,
    /// Labels of other nodes.
    pub nodes: &'a dyn NodeLabels,
}

impl NodeContext<'_> {
    fn zone(&self) -> Option<&str> {
        self.labels.get(LABEL_ZONE).map(String::as_str)
    }
}

/// The categorised endpoints of one service port in one family.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Categorized {
    /// Endpoints for cluster-policy traffic; `None` when no traffic uses that policy.
    pub cluster: Option<Vec<SocketAddr>>,
    /// Endpoints for local-policy traffic; `None` when no traffic uses that policy.
    pub local: Option<Vec<SocketAddr>>,
    /// Every endpoint some traffic may reach (union of the two).
    pub all_reachable: Vec<SocketAddr>,
    /// Whether any usable endpoint exists anywhere: false means REJECT, true with an empty
    /// local set means DROP.
    pub has_any: bool,
}

/// How cluster endpoints are filtered by topology.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TopologyMode {
    None,
    SameZone,
    SameNode,
}

/// Categorises `endpoints` (sorted by address) for one service port. `endpoints` must hold one
/// entry per `ip:port`.
pub fn categorize(
    endpoints: &[Candidate<'_>],
    policy: &PolicyInput<'_>,
    node: &NodeContext<'_>,
) -> Categorized {
    if endpoints.is_empty() {
        // Upstream: everything nil and false; keep "used but empty" distinct from "unused".
        return Categorized {
            cluster: policy.uses_cluster().then(Vec::new),
            local: policy.uses_local().then(Vec::new),
            all_reachable: Vec::new(),
            has_any: false,
        };
    }
    let is_local = |c: &Candidate<'_>| c.info.node_name.as_deref() == Some(node.name);
    let serving_terminating = |c: &Candidate<'_>| c.info.serving && c.info.terminating;
    let mut has_any = false;
    let mut mode = TopologyMode::None;

    let cluster = if policy.uses_cluster() {
        let keys = policy.topology_keys;
        let mut list: Vec<SocketAddr> = if !keys.is_empty() {
            legacy_topology(endpoints, |c| c.info.ready, keys, node)
        } else {
            mode = topology_mode(endpoints, node);
            endpoints
                .iter()
                .filter(|c| c.info.ready && available_for_topology(c, mode, node))
                .map(|c| c.addr)
                .collect()
        };
        if list.is_empty() {
            // Fall back to serving, terminating endpoints: ignoring topology hints (upstream),
            // but still inside the legacy topologyKeys, which are a hard restriction.
            list = if keys.is_empty() {
                endpoints
                    .iter()
                    .filter(|c| serving_terminating(c))
                    .map(|c| c.addr)
                    .collect()
            } else {
                legacy_topology(endpoints, serving_terminating, keys, node)
            };
        }
        has_any |= !list.is_empty();
        Some(list)
    } else {
        None
    };

    if !policy.uses_local() {
        let all = cluster.clone().unwrap_or_default();
        return Categorized {
            cluster,
            local: None,
            all_reachable: all,
            has_any,
        };
    }

    let mut local_ready = false;
    let mut local_serving_terminating = false;
    for c in endpoints {
        if c.info.ready {
            has_any = true;
            local_ready |= is_local(c);
        } else if serving_terminating(c) {
            has_any = true;
            local_serving_terminating |= is_local(c);
        }
    }
    let local: Vec<SocketAddr> = if local_ready {
        endpoints
            .iter()
            .filter(|c| is_local(c) && c.info.ready)
            .map(|c| c.addr)
            .collect()
    } else if local_serving_terminating {
        endpoints
            .iter()
            .filter(|c| is_local(c) && serving_terminating(c))
            .map(|c| c.addr)
            .collect()
    } else {
        Vec::new()
    };

    let all_reachable = match &cluster {
        None => local.clone(),
        // Without a topology filter, ready local endpoints are a subset of the cluster set.
        Some(cl)
            if mode == TopologyMode::None && policy.topology_keys.is_empty() && local_ready =>
        {
            cl.clone()
        }
        Some(cl) => {
            let mut union: Vec<SocketAddr> = cl.iter().chain(local.iter()).copied().collect();
            union.sort();
            union.dedup();
            union
        }
    };
    Categorized {
        cluster,
        local: Some(local),
        all_reachable,
        has_any,
    }
}

/// Upstream `topologyModeFromHints`: node hints win when every ready endpoint has one and one
/// names this node; then zone hints likewise; otherwise no filtering.
fn topology_mode(endpoints: &[Candidate<'_>], node: &NodeContext<'_>) -> TopologyMode {
    let zone = node.zone();
    let mut all_node_hints = true;
    let mut for_node = false;
    let mut all_zone_hints = true;
    let mut for_zone = false;
    for c in endpoints.iter().filter(|c| c.info.ready) {
        if c.info.node_hints().is_empty() {
            all_node_hints = false;
        } else if c.info.node_hints().iter().any(|h| &**h == node.name) {
            for_node = true;
        }
        if c.info.zone_hints().is_empty() {
            all_zone_hints = false;
        } else if zone.is_some_and(|z| c.info.zone_hints().iter().any(|h| &**h == z)) {
            for_zone = true;
        }
    }
    if all_node_hints && for_node {
        TopologyMode::SameNode
    } else if all_zone_hints && for_zone {
        TopologyMode::SameZone
    } else {
        TopologyMode::None
    }
}

fn available_for_topology(c: &Candidate<'_>, mode: TopologyMode, node: &NodeContext<'_>) -> bool {
    match mode {
        TopologyMode::None => true,
        TopologyMode::SameNode => c.info.node_hints().iter().any(|h| &**h == node.name),
        TopologyMode::SameZone => node
            .zone()
            .is_some_and(|z| c.info.zone_hints().iter().any(|h| &**h == z)),
    }
}

/// Legacy `topologyKeys` (Kubernetes 1.17–1.21) over the `usable` endpoints: the first key for
/// which some usable endpoint's node has this node's value selects those endpoints; `"*"`
/// selects all usable ones; no match selects none. Unusable endpoints never take part, so a key
/// matched only by unready endpoints falls through to the next key.
fn legacy_topology(
    endpoints: &[Candidate<'_>],
    usable: impl Fn(&Candidate<'_>) -> bool,
    keys: &[String],
    node: &NodeContext<'_>,
) -> Vec<SocketAddr> {
    for key in keys {
        if key == "*" {
            return endpoints
                .iter()
                .filter(|c| usable(c))
                .map(|c| c.addr)
                .collect();
        }
        let Some(mine) = own_label(node, key) else {
            continue;
        };
        let picked: Vec<SocketAddr> = endpoints
            .iter()
            .filter(|c| usable(c) && endpoint_label(c.info, key, node) == Some(mine))
            .map(|c| c.addr)
            .collect();
        if !picked.is_empty() {
            return picked;
        }
    }
    Vec::new()
}

fn own_label<'a>(node: &NodeContext<'a>, key: &str) -> Option<&'a str> {
    if let Some(v) = node.labels.get(key) {
        return Some(v.as_str());
    }
    (key == LABEL_HOSTNAME).then_some(node.name)
}

/// An endpoint's node label: from the Node object if known, else the slice's
/// `deprecatedTopology`, else what the slice itself says (zone, node name).
fn endpoint_label<'a>(ep: &'a EndpointInfo, key: &str, node: &NodeContext<'a>) -> Option<&'a str> {
    let node_labels = ep.node_name.as_deref().and_then(|n| {
        if n == node.name {
            Some(node.labels)
        } else {
            node.nodes.labels_of(n)
        }
    });
    if let Some(v) = node_labels.and_then(|l| l.get(key)) {
        return Some(v.as_str());
    }
    if let Some(v) = ep.deprecated_topology().and_then(|t| t.get(key)) {
        return Some(v.as_str());
    }
    match key {
        LABEL_ZONE => ep.zone.as_deref(),
        LABEL_HOSTNAME => ep.node_name.as_deref(),
        _ => None,
    }
}

#[cfg(test)]
#[path = "categorize_tests.rs"]
mod tests;
