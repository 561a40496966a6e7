//! Endpoint selection: internal traffic policy, hairpin, terminating endpoints, topology hints
//! and legacy topologyKeys.

use svcroute_core::model::{LABEL_HOSTNAME, LABEL_ZONE};

use super::{slice4, standard_config, web};
use crate::flow::{Scenario, ScenarioError};
use crate::objects::{EndpointBuilder, ServiceBuilder, ep, node};
use crate::strategies::LABEL_RACK;

/// iTP=Local: ClusterIP traffic reaches only this node's endpoints; none here means DROP.
pub fn internal_policy_local() -> Result<Scenario, ScenarioError> {
    Scenario::new("internal_policy_local", standard_config())
        .describe(
            "internalTrafficPolicy: Local sends ClusterIP traffic to KUBE-SVL (local endpoints \
             only). With endpoints only elsewhere the filter table DROPs (\"has no local \
             endpoints\"); with none at all it REJECTs. External destinations keep eTP.",
        )
        .object(web("itp", "10.96.0.80").internal_policy_local().apply())
        .object(slice4(
            "itp",
            vec![ep("10.244.0.80").on("node-a"), ep("10.244.1.80").on("node-b")],
        ))
        .object(web("itp-remote", "10.96.0.81").internal_policy_local().apply())
        .object(slice4("itp-remote", vec![ep("10.244.1.81").on("node-b")]))
        .object(web("itp-none", "10.96.0.82").internal_policy_local().apply())
        .object(
            ServiceBuilder::new("default", "itp-np")
                .node_port_type()
                .cluster_ip("10.96.0.83")
                .node_port("http", 80, "TCP", 30083)
                .internal_policy_local()
                .apply(),
        )
        .object(slice4("itp-np", vec![ep("10.244.1.83").on("node-b")]))
        .flows(
            "
            pod reaches only local endpoints        | 10.244.0.5 10.96.0.80:80            | 10.244.0.80:8080 |
            node source: local, masqueraded         | 192.168.0.10 10.96.0.80:80          | 10.244.0.80:8080 | masq
            only remote endpoints: dropped          | 10.244.0.5 10.96.0.81:80            | DROP |
            no endpoints at all: refused            | 10.244.0.5 10.96.0.82:80            | REJECT |
            ClusterIP of a NodePort Service         | 10.244.0.5 10.96.0.83:80            | DROP |
            its NodePort uses all endpoints         | 203.0.113.50 192.168.0.10:30083     | 10.244.1.83:8080 | masq
            ",
        )
}

/// Hairpin: an endpoint reaching itself through the Service is masqueraded on its own branch.
pub fn hairpin() -> Result<Scenario, ScenarioError> {
    Scenario::new("hairpin", standard_config())
        .describe(
            "Each endpoint chain masquerades traffic whose source is that endpoint (`-s <ep> -j \
             KUBE-MARK-MASQ`), so a pod reaching itself through its Service sees the node as the \
             peer. Only that endpoint's branch is masqueraded: the flow runner marks the branch \
             whose address is the packet's source, so these rows carry no `masq` flag unless \
             every branch is masqueraded.",
        )
        .object(
            ServiceBuilder::new("default", "echo")
                .node_port_type()
                .cluster_ip("10.96.0.120")
                .node_port("http", 80, "TCP", 30120)
                .external_policy_local()
                .apply(),
        )
        .object(slice4(
            "echo",
            vec![ep("10.244.0.120").on("node-a"), ep("10.244.1.120").on("node-b")],
        ))
        .object(web("host-echo", "10.96.0.121").apply())
        .object(slice4(
            "host-echo",
            vec![ep("192.168.0.10").on("node-a"), ep("10.244.1.121").on("node-b")],
        ))
        .flows(
            "
            endpoint reaching itself                | 10.244.0.120 10.96.0.120:80         | 10.244.0.120:8080 10.244.1.120:8080 |
            remote endpoint reaching itself         | 10.244.1.120 10.96.0.120:80         | 10.244.0.120:8080 10.244.1.120:8080 |
            endpoint via its eTP=Local NodePort     | 10.244.0.120 192.168.0.10:30120     | 10.244.0.120:8080 10.244.1.120:8080 |
            another pod: no masquerade at all       | 10.244.0.5 10.96.0.120:80           | 10.244.0.120:8080 10.244.1.120:8080 |
            host-network endpoint reaching itself   | 192.168.0.10 10.96.0.121:80         | 192.168.0.10:8080 10.244.1.121:8080 | masq
            ",
        )
}

/// Terminating endpoints (KEP-1669): serving ones are used when nothing is ready, per policy.
pub fn terminating_fallback() -> Result<Scenario, ScenarioError> {
    Scenario::new("terminating_fallback", standard_config())
        .describe(
            "CategorizeEndpoints uses ready endpoints; when a policy has none it falls back to \
             serving-and-terminating ones, separately for the cluster and the local set (the \
             local fallback applies when no local endpoint is ready). Terminating endpoints \
             that no longer serve are never used.",
        )
        .object(web("rollout", "10.96.0.130").apply())
        .object(slice4(
            "rollout",
            vec![
                ep("10.244.1.130").on("node-b").terminating_serving(),
                ep("10.244.2.130").on("node-c").terminating_not_serving(),
            ],
        ))
        .object(web("mixed", "10.96.0.131").apply())
        .object(slice4(
            "mixed",
            vec![
                ep("10.244.1.131").on("node-b"),
                ep("10.244.2.131").on("node-c").terminating_serving(),
            ],
        ))
        .object(
            ServiceBuilder::new("default", "local-term")
                .node_port_type()
                .cluster_ip("10.96.0.132")
                .node_port("http", 80, "TCP", 30132)
                .external_policy_local()
                .apply(),
        )
        .object(slice4(
            "local-term",
            vec![
                ep("10.244.0.132").on("node-a").terminating_serving(),
                ep("10.244.1.132").on("node-b").ready(true),
            ],
        ))
        .object(web("drained", "10.96.0.133").apply())
        .object(slice4(
            "drained",
            vec![ep("10.244.1.133").on("node-b").terminating_not_serving()],
        ))
        .object(web("itp-term", "10.96.0.134").internal_policy_local().apply())
        .object(slice4(
            "itp-term",
            vec![
                ep("10.244.0.134").on("node-a").terminating_serving(),
                ep("10.244.1.134").on("node-b"),
            ],
        ))
        .flows(
            "
            nothing ready: the serving terminating  | 10.244.0.5 10.96.0.130:80           | 10.244.1.130:8080 |
            ready endpoints win over terminating    | 10.244.0.5 10.96.0.131:80           | 10.244.1.131:8080 |
            eTP=Local external: local terminating   | 203.0.113.50 192.168.0.10:30132     | 10.244.0.132:8080 |
            eTP=Local pod: the ready remote one     | 10.244.0.5 192.168.0.10:30132       | 10.244.1.132:8080 |
            its ClusterIP: the ready one            | 10.244.0.5 10.96.0.132:80           | 10.244.1.132:8080 |
            terminating, not serving: refused       | 10.244.0.5 10.96.0.133:80           | REJECT |
            iTP=Local: the local terminating one    | 10.244.0.5 10.96.0.134:80           | 10.244.0.134:8080 |
            ",
        )
}

/// A terminating endpoint whose `serving` condition is unset defers to `ready`.
pub fn terminating_serving_unset() -> Result<Scenario, ScenarioError> {
    Scenario::new("terminating_serving_unset", standard_config())
        .describe(
            "discovery/v1 documents `serving`: \"If nil, consumers should defer to the ready \
             condition.\" svcroute follows the API contract (and DESIGN §3): a not-ready, \
             terminating endpoint with serving unset is not serving, so it is no fallback and the \
             service is refused. (kube-proxy's EndpointSliceCache reads nil as true instead; the \
             EndpointSlice controller always sets the field, so this only matters for hand-written \
             slices.) A serving terminating endpoint is a fallback; a not-ready endpoint that is \
             not terminating is never used.",
        )
        .object(web("unset", "10.96.0.135").apply())
        .object(slice4(
            "unset",
            vec![
                ep("10.244.1.135")
                    .on("node-b")
                    .ready(false)
                    .terminating(true),
            ],
        ))
        .object(web("not-terminating", "10.96.0.136").apply())
        .object(slice4(
            "not-terminating",
            vec![ep("10.244.1.136").on("node-b").ready(false)],
        ))
        .flows(
            "
            serving unset defers to ready: refused  | 10.244.0.5 10.96.0.135:80           | REJECT |
            not ready and not terminating: refused  | 10.244.0.5 10.96.0.136:80           | REJECT |
            ",
        )
}

/// Topology-aware routing through zone and node hints.
pub fn zone_hints() -> Result<Scenario, ScenarioError> {
    Scenario::new("zone_hints", standard_config())
        .describe(
            "Cluster endpoints are filtered to those hinted for this node's zone (zone-a) only \
             when every ready endpoint has a zone hint and one names zone-a; node hints \
             (PreferSameNode) likewise, and win when they apply. Local (eTP=Local) sets are \
             never filtered. Unready endpoints do not count.",
        )
        .object(web("hinted", "10.96.0.140").apply())
        .object(slice4(
            "hinted",
            vec![
                ep("10.244.1.140").on("node-b").zone_hints(&["zone-a"]),
                ep("10.244.2.140").on("node-c").zone_hints(&["zone-a"]),
                ep("10.244.3.140").on("node-d").zone_hints(&["zone-b"]),
                ep("10.244.4.140").on("node-e").not_ready(),
            ],
        ))
        .object(web("partly-hinted", "10.96.0.141").apply())
        .object(slice4(
            "partly-hinted",
            vec![
                ep("10.244.1.141").on("node-b").zone_hints(&["zone-a"]),
                ep("10.244.3.141").on("node-d"),
            ],
        ))
        .object(web("other-zones", "10.96.0.142").apply())
        .object(slice4(
            "other-zones",
            vec![
                ep("10.244.1.142").on("node-b").zone_hints(&["zone-b"]),
                ep("10.244.3.142").on("node-d").zone_hints(&["zone-c"]),
            ],
        ))
        .object(
            ServiceBuilder::new("default", "hints-local")
                .node_port_type()
                .cluster_ip("10.96.0.143")
                .node_port("http", 80, "TCP", 30143)
                .external_policy_local()
                .apply(),
        )
        .object(slice4(
            "hints-local",
            vec![
                ep("10.244.0.143").on("node-a").zone_hints(&["zone-b"]),
                ep("10.244.1.143").on("node-b").zone_hints(&["zone-a"]),
            ],
        ))
        .object(
            web("same-node", "10.96.0.144")
                .traffic_distribution("PreferSameNode")
                .apply(),
        )
        .object(slice4(
            "same-node",
            vec![
                ep("10.244.0.144")
                    .on("node-a")
                    .zone_hints(&["zone-a"])
                    .node_hints(&["node-a"]),
                ep("10.244.1.144")
                    .on("node-b")
                    .zone_hints(&["zone-a"])
                    .node_hints(&["node-b"]),
            ],
        ))
        .object(
            web("node-hints-elsewhere", "10.96.0.145")
                .traffic_distribution("PreferSameNode")
                .apply(),
        )
        .object(slice4(
            "node-hints-elsewhere",
            vec![
                ep("10.244.1.145")
                    .on("node-b")
                    .zone_hints(&["zone-a"])
                    .node_hints(&["node-b"]),
                ep("10.244.2.145")
                    .on("node-c")
                    .zone_hints(&["zone-b"])
                    .node_hints(&["node-c"]),
            ],
        ))
        .flows(
            "
            only endpoints hinted for zone-a        | 10.244.0.5 10.96.0.140:80           | 10.244.1.140:8080 10.244.2.140:8080 |
            an unhinted endpoint disables the filter | 10.244.0.5 10.96.0.141:80          | 10.244.1.141:8080 10.244.3.141:8080 |
            no hint for zone-a disables the filter  | 10.244.0.5 10.96.0.142:80           | 10.244.1.142:8080 10.244.3.142:8080 |
            eTP=Local external ignores hints        | 203.0.113.50 192.168.0.10:30143     | 10.244.0.143:8080 |
            the cluster set is filtered for pods    | 10.244.0.5 192.168.0.10:30143       | 10.244.1.143:8080 |
            PreferSameNode: this node's endpoint    | 10.244.0.5 10.96.0.144:80           | 10.244.0.144:8080 |
            node hints elsewhere: zone hints apply  | 10.244.0.5 10.96.0.145:80           | 10.244.1.145:8080 |
            ",
        )
}

/// Nodes with zone and rack labels, for legacy topologyKeys.
fn topology_nodes(s: Scenario) -> Scenario {
    s.object(
        node("node-a")
            .zone("zone-a")
            .label(LABEL_RACK, "r1")
            .apply(),
    )
    .object(
        node("node-b")
            .zone("zone-a")
            .label(LABEL_RACK, "r2")
            .apply(),
    )
    .object(
        node("node-c")
            .zone("zone-b")
            .label(LABEL_RACK, "r1")
            .apply(),
    )
}

/// An endpoint on `node`, with the node's labels also copied into `deprecatedTopology` (as
/// the EndpointSlice controller of the topologyKeys era did for hostname and zone).
fn on_node(ip: &str, node: &str) -> EndpointBuilder {
    let (zone, rack) = match node {
        "node-a" => ("zone-a", "r1"),
        "node-b" => ("zone-a", "r2"),
        _ => ("zone-b", "r1"),
    };
    ep(ip)
        .on(node)
        .deprecated_topology(LABEL_HOSTNAME, node)
        .deprecated_topology(LABEL_ZONE, zone)
        .deprecated_topology(LABEL_RACK, rack)
}

const KEYS: [&str; 3] = [LABEL_HOSTNAME, LABEL_ZONE, "*"];

/// Legacy `spec.topologyKeys` (Kubernetes 1.17–1.21): the first key whose value matches this
/// node's selects the endpoints; `*` selects all; no match means no endpoints.
pub fn legacy_topology_keys() -> Result<Scenario, ScenarioError> {
    topology_nodes(Scenario::new("legacy_topology_keys", standard_config()))
        .describe(
            "FilterTopologyEndpoint: for each key in order, the endpoints whose topology value \
             for it equals this node's are used if there are any; `*` takes all; if no key \
             matches, the Service has no endpoints for this node and is REJECTed. Endpoint \
             topology comes from the endpoint's node labels (also in deprecatedTopology here), \
             or deprecatedTopology alone when the endpoint names no node.",
        )
        .object(web("by-host", "10.96.0.150").topology_keys(&KEYS).apply())
        .object(slice4(
            "by-host",
            vec![
                on_node("10.244.0.150", "node-a"),
                on_node("10.244.1.150", "node-b"),
                on_node("10.244.2.150", "node-c"),
            ],
        ))
        .object(web("by-zone", "10.96.0.151").topology_keys(&KEYS).apply())
        .object(slice4(
            "by-zone",
            vec![on_node("10.244.1.151", "node-b"), on_node("10.244.2.151", "node-c")],
        ))
        .object(web("any", "10.96.0.152").topology_keys(&KEYS).apply())
        .object(slice4("any", vec![on_node("10.244.2.152", "node-c")]))
        .object(web("zone-only", "10.96.0.153").topology_keys(&[LABEL_ZONE]).apply())
        .object(slice4("zone-only", vec![on_node("10.244.2.153", "node-c")]))
        .object(web("rack", "10.96.0.154").topology_keys(&[LABEL_RACK]).apply())
        .object(slice4(
            "rack",
            vec![on_node("10.244.1.154", "node-b"), on_node("10.244.2.154", "node-c")],
        ))
        .object(web("deprecated", "10.96.0.155").topology_keys(&[LABEL_ZONE]).apply())
        .object(slice4(
            "deprecated",
            vec![
                ep("10.244.5.155").deprecated_topology(LABEL_ZONE, "zone-a"),
                ep("10.244.6.155").deprecated_topology(LABEL_ZONE, "zone-b"),
            ],
        ))
        .flows(
            "
            hostname key: this node's endpoint      | 10.244.0.5 10.96.0.150:80           | 10.244.0.150:8080 |
            zone key when none is on this node      | 10.244.0.5 10.96.0.151:80           | 10.244.1.151:8080 |
            * when neither host nor zone match      | 10.244.0.5 10.96.0.152:80           | 10.244.2.152:8080 |
            no key matches: no endpoints            | 10.244.0.5 10.96.0.153:80           | REJECT |
            a custom node label                     | 10.244.0.5 10.96.0.154:80           | 10.244.2.154:8080 |
            deprecatedTopology without a node name  | 10.244.0.5 10.96.0.155:80           | 10.244.5.155:8080 |
            ",
        )
}

/// topologyKeys pick among ready endpoints only.
pub fn legacy_topology_keys_ready_only() -> Result<Scenario, ScenarioError> {
    topology_nodes(Scenario::new("legacy_topology_keys_ready_only", standard_config()))
        .describe(
            "In Kubernetes 1.17–1.21 kube-proxy routed only to ready endpoints; topologyKeys \
             narrowed that set and never brought unready endpoints back (1.21 filtered by \
             topology, then kept `IsReady()` endpoints). A `*` or a matching key must therefore \
             never select an unready endpoint.",
        )
        .object(web("any-ready", "10.96.0.156").topology_keys(&["*"]).apply())
        .object(slice4(
            "any-ready",
            vec![
                on_node("10.244.1.156", "node-b"),
                on_node("10.244.2.156", "node-c").not_ready(),
            ],
        ))
        .object(web("host-ready", "10.96.0.157").topology_keys(&KEYS).apply())
        .object(slice4(
            "host-ready",
            vec![
                on_node("10.244.0.157", "node-a"),
                on_node("10.244.0.158", "node-a").not_ready(),
                on_node("10.244.1.157", "node-b"),
            ],
        ))
        .flows(
            "
            * selects only ready endpoints          | 10.244.0.5 10.96.0.156:80           | 10.244.1.156:8080 |
            hostname: only this node's ready ones   | 10.244.0.5 10.96.0.157:80           | 10.244.0.157:8080 |
            ",
        )
}
