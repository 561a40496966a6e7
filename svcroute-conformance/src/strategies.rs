//! proptest strategies: generated clusters, event sequences and packets.
//!
//! Clusters are small (at most [`MAX_SERVICES`] Services, three nodes) so a thousand cases run
//! in seconds, but cover every Service type, single- and dual-stack, both traffic policies,
//! zone and node hints, legacy `topologyKeys`, session affinity, ready / serving / terminating
//! mixes, several slices per Service with duplicate `ip:port`s across them, host-network
//! endpoints, node labels, Services handed to another proxy and headless slices.
//!
//! Every Service index `i` owns its own frontend space (ClusterIPs `10.96.0.1x` /
//! `10.96.1.1x` / `fd00:96::…`, externalIP `203.0.113.1x`, LB IPs `198.51.100.1x`, NodePorts
//! `30000 + 4i + j`, health check `32000 + i`), so generated objects never conflict unless a
//! step does so on purpose ([`Expectation::Unknown`]).
//!
//! This node is `node-a` (`192.168.0.10`, `192.168.1.10`, `fd00:1::10`); pods live in
//! `10.244.0.0/16` and `fd00:10:244::/56`, `10.244.0.x` / `fd00:10:244::x` on this node.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;
use proptest::sample::{Index, select, subsequence};
use svcroute_core::decide::Packet;
use svcroute_core::model::api;
use svcroute_core::model::{
    IpFamily, LABEL_HEADLESS, LABEL_HOSTNAME, LABEL_SERVICE_NAME, LABEL_SERVICE_PROXY_NAME,
    LABEL_ZONE, NodePortAddresses, Protocol, ProxyConfig,
};
use svcroute_core::watch::{Event, WatchEvent};

/// Most Services a generated cluster holds.
pub const MAX_SERVICES: usize = 8;
/// Most EndpointSlices per Service.
pub const MAX_SLICES_PER_SERVICE: usize = 3;
/// This node's name.
pub const THIS_NODE: &str = "node-a";
/// Every node name generated objects use.
pub const NODES: [&str; 3] = ["node-a", "node-b", "node-c"];
/// A label key used by legacy `topologyKeys` scenarios.
pub const LABEL_RACK: &str = "example.com/rack";

const NAMESPACES: [&str; 2] = ["default", "prod"];
/// Port names, each with the protocol it usually has.
const PORT_NAMES: [(&str, Protocol); 5] = [
    ("http", Protocol::Tcp),
    ("dns", Protocol::Udp),
    ("dns-tcp", Protocol::Tcp),
    ("sig", Protocol::Sctp),
    ("metrics", Protocol::Tcp),
];
const PORT_NUMBERS: [i64; 5] = [80, 443, 53, 8080, 9000];
const TARGET_PORTS: [i64; 3] = [8080, 8443, 5353];
const SOURCE_RANGES: [&str; 6] = [
    "203.0.113.0/24",
    "192.168.0.0/24",
    "10.244.0.0/16",
    "198.51.100.0/24",
    "2001:db8::/32",
    "fd00:1::/64",
];
const TOPOLOGY_KEYS: [&[&str]; 5] = [
    &[LABEL_HOSTNAME],
    &[LABEL_ZONE, "*"],
    &[LABEL_HOSTNAME, LABEL_ZONE],
    &["*"],
    &[LABEL_RACK, "*"],
];
/// Endpoint addresses per family, with the node each usually runs on.
const ENDPOINTS_V4: [(&str, &str); 7] = [
    ("10.244.0.2", "node-a"),
    ("10.244.0.3", "node-a"),
    ("10.244.1.2", "node-b"),
    ("10.244.1.3", "node-b"),
    ("10.244.2.2", "node-c"),
    ("192.168.0.10", "node-a"),
    ("192.168.0.11", "node-b"),
];
const ENDPOINTS_V6: [(&str, &str); 6] = [
    ("fd00:10:244::2", "node-a"),
    ("fd00:10:244::3", "node-a"),
    ("fd00:10:244:1::2", "node-b"),
    ("fd00:10:244:2::2", "node-c"),
    ("fd00:1::10", "node-a"),
    ("fd00:1::11", "node-b"),
];

/// The Service name of index `i`.
pub fn service_name(i: usize) -> String {
    format!("svc{i}")
}

/// The namespace of Service index `i` (and of its slices).
pub fn namespace(i: usize) -> &'static str {
    NAMESPACES[i % NAMESPACES.len()]
}

fn family_tag(family: Option<IpFamily>) -> &'static str {
    match family {
        Some(IpFamily::IPv4) => "v4",
        Some(IpFamily::IPv6) => "v6",
        None => "fqdn",
    }
}

/// The name of slice `k` of Service index `i` in `family` (`None` = FQDN).
pub fn slice_name(i: usize, family: Option<IpFamily>, k: usize) -> String {
    format!("svc{i}-{}-{k}", family_tag(family))
}

/// A generated cluster: the proxy's settings and the objects describing the cluster.
#[derive(Debug, Clone)]
pub struct Cluster {
    /// The proxy's settings.
    pub config: ProxyConfig,
    /// Node objects.
    pub nodes: Vec<api::Node>,
    /// Services.
    pub services: Vec<api::Service>,
    /// EndpointSlices.
    pub slices: Vec<api::EndpointSlice>,
}

impl Cluster {
    /// `Apply` events for every object: nodes, then Services, then slices.
    pub fn events(&self) -> Vec<WatchEvent> {
        let nodes = self.nodes.iter().cloned().map(|n| Event::Apply(n).into());
        let services = self
            .services
            .iter()
            .cloned()
            .map(|s| Event::Apply(s).into());
        let slices = self.slices.iter().cloned().map(|s| Event::Apply(s).into());
        nodes.chain(services).chain(slices).collect()
    }
}

/// Whether a step's object must be accepted by the core's validation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expectation {
    /// Valid by construction: accepted, unless it claims a frontend another Service took on
    /// purpose (a `Conflict`).
    Valid,
    /// Invalid by construction: must be rejected, leaving the state as it was.
    Invalid,
    /// May go either way (deliberate frontend conflicts).
    Unknown,
}

/// One step of a generated event sequence.
#[derive(Debug, Clone)]
pub enum Step {
    /// Feeds one watch event to the state.
    Event {
        /// The event.
        event: Box<WatchEvent>,
        /// What validation must say.
        expect: Expectation,
    },
    /// Replaces the proxy's settings.
    SetConfig(ProxyConfig),
    /// Takes the pending changes and applies them to the dataplane.
    Sync,
}

fn ev(event: impl Into<WatchEvent>, expect: Expectation) -> Step {
    Step::Event {
        event: Box::new(event.into()),
        expect,
    }
}

// ---------------------------------------------------------------------------------------------
// Settings and nodes.

/// The proxy's settings for `node-a`: families, node IPs, local-traffic detector,
/// masquerade-all, NodePort addresses, localhost NodePorts, service CIDRs, node labels.
pub fn proxy_config() -> BoxedStrategy<ProxyConfig> {
    let families = prop_oneof![
        1 => Just(vec![IpFamily::IPv4]),
        1 => Just(vec![IpFamily::IPv6]),
        6 => Just(vec![IpFamily::IPv4, IpFamily::IPv6]),
    ];
    let cidrs = prop_oneof![
        4 => Just(vec!["10.244.0.0/16", "fd00:10:244::/56"]),
        1 => Just(vec!["10.244.0.0/16"]),
        1 => Just(vec![]),
    ];
    let nodeport = prop_oneof![
        6 => Just(NodePortAddresses::All),
        2 => Just(NodePortAddresses::Primary),
        1 => Just(vec!["192.168.1.0/24", "fd00:1::/64"]).prop_map(|c| NodePortAddresses::Cidrs(nets(&c))),
        1 => Just(vec!["127.0.0.0/8", "192.168.0.0/24"]).prop_map(|c| NodePortAddresses::Cidrs(nets(&c))),
    ];
    (
        families,
        any::<bool>(),
        cidrs,
        prop::bool::weighted(0.15),
        nodeport,
        prop::bool::weighted(0.7),
        prop::bool::weighted(0.7),
        prop::bool::weighted(0.7),
    )
        .prop_map(
            |(ip_families, secondary, cluster, masq_all, nodeport, localhost, svc_cidrs, zone)| {
                let mut node_ips = vec!["192.168.0.10"];
                if secondary {
                    node_ips.push("192.168.1.10");
                }
                node_ips.push("fd00:1::10");
                let mut node_labels = BTreeMap::new();
                if zone {
                    node_labels.insert(LABEL_ZONE.to_string(), "zone-a".to_string());
                }
                ProxyConfig {
                    node_name: THIS_NODE.to_string(),
                    node_labels,
                    node_ips: ips(&node_ips),
                    cluster_cidrs: nets(&cluster),
                    masquerade_all: masq_all,
                    nodeport_addresses: nodeport,
                    localhost_nodeports: localhost,
                    service_cidrs: if svc_cidrs {
                        nets(&["10.96.0.0/16", "fd00:96::/108"])
                    } else {
                        Vec::new()
                    },
                    ip_families,
                    ..ProxyConfig::default()
                }
            },
        )
        .boxed()
}

fn ips(list: &[&str]) -> Vec<IpAddr> {
    list.iter().filter_map(|s| s.parse().ok()).collect()
}

fn nets(list: &[&str]) -> Vec<ipnet::IpNet> {
    list.iter().filter_map(|s| s.parse().ok()).collect()
}

/// A Node object named `name`, with optional zone and rack labels.
pub fn node_named(name: &'static str) -> BoxedStrategy<api::Node> {
    (
        option::weighted(0.8, select(vec!["zone-a", "zone-b"])),
        option::weighted(0.5, select(vec!["r1", "r2"])),
    )
        .prop_map(move |(zone, rack)| {
            let mut metadata = api::ObjectMeta::named(None, name);
            metadata
                .labels
                .insert(LABEL_HOSTNAME.to_string(), name.to_string());
            if let Some(z) = zone {
                metadata
                    .labels
                    .insert(LABEL_ZONE.to_string(), z.to_string());
            }
            if let Some(r) = rack {
                metadata
                    .labels
                    .insert(LABEL_RACK.to_string(), r.to_string());
            }
            api::Node { metadata }
        })
        .boxed()
}

/// A Node object for any of the three nodes.
pub fn any_node() -> BoxedStrategy<api::Node> {
    select(NODES.to_vec()).prop_flat_map(node_named).boxed()
}

// ---------------------------------------------------------------------------------------------
// Services.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    ClusterIp,
    NodePort,
    LoadBalancer,
    Headless,
    ExternalName,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stack {
    V4,
    V6,
    Dual46,
    Dual64,
}

/// The ClusterIP of Service index `i` in `family` (`alt` picks a second address, so updates
/// can move a Service).
pub fn cluster_ip(i: usize, family: IpFamily, alt: bool) -> String {
    match (family, alt) {
        (IpFamily::IPv4, false) => format!("10.96.0.{}", 10 + i),
        (IpFamily::IPv4, true) => format!("10.96.1.{}", 10 + i),
        (IpFamily::IPv6, false) => format!("fd00:96::{:x}", 16 + i),
        (IpFamily::IPv6, true) => format!("fd00:96::1:{:x}", 16 + i),
    }
}

/// The NodePort of port `j` of Service index `i`.
pub fn node_port(i: usize, j: usize) -> i64 {
    30000 + 4 * i as i64 + j as i64
}

/// The health-check NodePort of Service index `i`.
pub fn health_check_port(i: usize) -> i64 {
    32000 + i as i64
}

fn protocol_strategy() -> BoxedStrategy<Protocol> {
    prop_oneof![3 => Just(Protocol::Tcp), 2 => Just(Protocol::Udp), 1 => Just(Protocol::Sctp)]
        .boxed()
}

/// Service ports: `(name, protocol, port)`, valid together (named when several, distinct
/// `(port, protocol)`).
fn service_ports() -> BoxedStrategy<Vec<(String, Protocol, i64)>> {
    (
        subsequence(PORT_NAMES.to_vec(), 1..=3),
        any::<bool>(),
        protocol_strategy(),
        subsequence(PORT_NUMBERS.to_vec(), 3),
        any::<u64>(),
    )
        .prop_map(|(names, unnamed, proto, numbers, seed)| {
            // Shuffle numbers deterministically from the seed so ports are not always ordered.
            let mut numbers = numbers;
            let n = numbers.len();
            if n > 1 {
                numbers.rotate_left((seed % n as u64) as usize);
            }
            if names.len() == 1 && unnamed {
                return vec![(String::new(), proto, numbers[0])];
            }
            names
                .iter()
                .zip(numbers)
                .map(|((name, p), number)| (name.to_string(), *p, number))
                .collect()
        })
        .boxed()
}

/// A valid Service of index `i`: any type, family mix, policies, affinity, topology.
pub fn service(i: usize) -> BoxedStrategy<api::Service> {
    let kind = prop_oneof![
        3 => Just(Kind::ClusterIp),
        2 => Just(Kind::NodePort),
        3 => Just(Kind::LoadBalancer),
        1 => Just(Kind::Headless),
        1 => Just(Kind::ExternalName),
    ];
    let stack = prop_oneof![
        3 => Just(Stack::V4),
        1 => Just(Stack::V6),
        2 => Just(Stack::Dual46),
        1 => Just(Stack::Dual64),
    ];
    let shape = (
        kind,
        stack,
        any::<bool>(),
        service_ports(),
        vec(prop::bool::weighted(0.85), 3),
    );
    let external = (
        subsequence(vec![0usize, 1], 0..=2),
        vec((0usize..3, 0usize..4), 0..=2),
        subsequence(SOURCE_RANGES.to_vec(), 0..=3),
        prop::bool::weighted(0.4),
        prop::bool::weighted(0.3),
        prop::bool::weighted(0.7),
    );
    let extra = (
        prop_oneof![
            3 => Just(None),
            1 => Just(Some(None)),
            1 => select(vec![1i64, 60, 10_800, 86_400]).prop_map(|t| Some(Some(t))),
        ],
        option::weighted(0.2, select(TOPOLOGY_KEYS.to_vec())),
        option::weighted(
            0.3,
            select(vec!["PreferClose", "PreferSameZone", "PreferSameNode"]),
        ),
        prop::bool::weighted(0.05),
        prop::bool::weighted(0.1),
    );
    (shape, external, extra)
        .prop_map(move |(shape, external, extra)| {
            let (kind, stack, alt, ports, with_node_port) = shape;
            let (ext_ips, ingress, ranges, etp_local, itp_local, with_hc) = external;
            let (affinity, topology, distribution, other_proxy, topology_annotation) = extra;
            let mut spec = api::ServiceSpec {
                type_: Some(
                    match kind {
                        Kind::ClusterIp | Kind::Headless => "ClusterIP",
                        Kind::NodePort => "NodePort",
                        Kind::LoadBalancer => "LoadBalancer",
                        Kind::ExternalName => "ExternalName",
                    }
                    .to_string(),
                ),
                ..api::ServiceSpec::default()
            };
            let families: &[IpFamily] = match stack {
                Stack::V4 => &[IpFamily::IPv4],
                Stack::V6 => &[IpFamily::IPv6],
                Stack::Dual46 => &[IpFamily::IPv4, IpFamily::IPv6],
                Stack::Dual64 => &[IpFamily::IPv6, IpFamily::IPv4],
            };
            match kind {
                Kind::ExternalName => spec.external_name = Some("db.example.com".to_string()),
                Kind::Headless => {
                    spec.cluster_ip = Some("None".to_string());
                    spec.cluster_ips = vec!["None".to_string()];
                }
                _ => {
                    let cips: Vec<String> =
                        families.iter().map(|f| cluster_ip(i, *f, alt)).collect();
                    spec.cluster_ip = cips.first().cloned();
                    spec.cluster_ips = cips;
                    spec.ip_families = families.iter().map(ToString::to_string).collect();
                }
            }
            let has_node_ports = matches!(kind, Kind::NodePort | Kind::LoadBalancer);
            spec.ports = ports
                .iter()
                .enumerate()
                .map(|(j, (name, proto, port))| api::ServicePort {
                    name: (!name.is_empty()).then(|| name.clone()),
                    protocol: Some(proto.as_str().to_string()),
                    port: Some(*port),
                    node_port: (has_node_ports && with_node_port[j]).then(|| node_port(i, j)),
                    ..api::ServicePort::default()
                })
                .collect();
            let ext_pool = [
                format!("203.0.113.{}", 10 + i),
                format!("2001:db8:e::{:x}", 16 + i),
            ];
            spec.external_ips = ext_ips.iter().map(|k| ext_pool[*k].clone()).collect();
            let mut status = None;
            if kind == Kind::LoadBalancer {
                let lb_pool = [
                    format!("198.51.100.{}", 10 + i),
                    format!("2001:db8:1b::{:x}", 16 + i),
                    format!("198.51.100.{}", 100 + i),
                ];
                let entries: Vec<api::LoadBalancerIngress> = ingress
                    .iter()
                    .map(|(k, mode)| api::LoadBalancerIngress {
                        ip: (*mode != 3).then(|| lb_pool[*k].clone()),
                        hostname: (*mode == 3).then(|| "lb.example.com".to_string()),
                        ip_mode: match mode {
                            1 => Some("VIP".to_string()),
                            2 => Some("Proxy".to_string()),
                            _ => None,
                        },
                    })
                    .collect();
                status = Some(api::ServiceStatus {
                    load_balancer: Some(api::LoadBalancerStatus { ingress: entries }),
                });
                spec.load_balancer_source_ranges = ranges.iter().map(|r| r.to_string()).collect();
            }
            if etp_local && topology.is_none() {
                spec.external_traffic_policy = Some("Local".to_string());
                if kind == Kind::LoadBalancer && with_hc {
                    spec.health_check_node_port = Some(health_check_port(i));
                }
            }
            if itp_local {
                spec.internal_traffic_policy = Some("Local".to_string());
            }
            if let Some(timeout) = affinity {
                spec.session_affinity = Some("ClientIP".to_string());
                spec.session_affinity_config = timeout.map(|t| api::SessionAffinityConfig {
                    client_ip: Some(api::ClientIpConfig {
                        timeout_seconds: Some(t),
                    }),
                });
            }
            if let Some(keys) = topology {
                spec.topology_keys = keys.iter().map(|k| k.to_string()).collect();
            }
            spec.traffic_distribution = distribution.map(str::to_string);
            let mut metadata = api::ObjectMeta::named(Some(namespace(i)), &service_name(i));
            if other_proxy {
                metadata.labels.insert(
                    LABEL_SERVICE_PROXY_NAME.to_string(),
                    "other-proxy".to_string(),
                );
            }
            if topology_annotation {
                metadata.annotations.insert(
                    "service.kubernetes.io/topology-mode".to_string(),
                    "Auto".to_string(),
                );
            }
            api::Service {
                metadata,
                spec,
                status,
            }
        })
        .boxed()
}

/// A Service of any index.
pub fn any_service() -> BoxedStrategy<api::Service> {
    (0..MAX_SERVICES).prop_flat_map(service).boxed()
}

/// A Service of index `i` claiming Service `j`'s IPv4 ClusterIP: accepted only while `j` does
/// not hold it.
pub fn conflicting_service() -> BoxedStrategy<api::Service> {
    (0..MAX_SERVICES, 0..MAX_SERVICES)
        .prop_filter("two different services", |(i, j)| i != j)
        .prop_flat_map(|(i, j)| (service(i), Just(j), any::<bool>()))
        .prop_map(|(mut svc, j, alt)| {
            let ip = cluster_ip(j, IpFamily::IPv4, alt);
            svc.spec.type_ = Some("ClusterIP".to_string());
            svc.spec.external_name = None;
            svc.spec.cluster_ip = Some(ip.clone());
            svc.spec.cluster_ips = vec![ip];
            svc.spec.ip_families = vec!["IPv4".to_string()];
            svc.spec.health_check_node_port = None;
            for p in &mut svc.spec.ports {
                p.node_port = None;
            }
            svc.metadata.labels.remove(LABEL_SERVICE_PROXY_NAME);
            svc.status = None;
            svc.spec.load_balancer_source_ranges.clear();
            svc
        })
        .boxed()
}

/// Only the metadata of Service index `i`: enough to delete it.
pub fn service_stub(i: usize) -> api::Service {
    api::Service {
        metadata: api::ObjectMeta::named(Some(namespace(i)), &service_name(i)),
        ..api::Service::default()
    }
}

// ---------------------------------------------------------------------------------------------
// EndpointSlices.

fn conditions() -> BoxedStrategy<api::EndpointConditions> {
    let tri = |none: u32, yes: u32, no: u32| prop_oneof![none => Just(None), yes => Just(Some(true)), no => Just(Some(false))];
    (tri(4, 1, 1), tri(3, 2, 1), tri(4, 1, 1))
        .prop_map(|(ready, serving, terminating)| api::EndpointConditions {
            ready,
            serving,
            terminating,
        })
        .boxed()
}

fn endpoint(ip: &'static str, home: &'static str) -> BoxedStrategy<api::Endpoint> {
    let node = prop_oneof![
        8 => Just(Some(home)),
        1 => Just(None),
        1 => select(NODES.to_vec()).prop_map(Some),
    ];
    let hints = option::weighted(
        0.35,
        (
            subsequence(vec!["zone-a", "zone-b", "zone-c"], 0..=2),
            subsequence(NODES.to_vec(), 0..=2),
        ),
    );
    (
        node,
        conditions(),
        option::weighted(0.6, select(vec!["zone-a", "zone-b"])),
        hints,
        prop::bool::weighted(0.1),
    )
        .prop_map(move |(node, conditions, zone, hints, deprecated)| {
            let mut deprecated_topology = BTreeMap::new();
            if deprecated {
                deprecated_topology
                    .insert(LABEL_ZONE.to_string(), zone.unwrap_or("zone-a").to_string());
                if let Some(n) = node {
                    deprecated_topology.insert(LABEL_HOSTNAME.to_string(), n.to_string());
                }
            }
            api::Endpoint {
                addresses: vec![ip.to_string()],
                conditions,
                node_name: node.map(str::to_string),
                zone: zone.map(str::to_string),
                hints: hints.map(|(zones, nodes)| api::EndpointHints {
                    for_zones: zones
                        .iter()
                        .map(|z| api::NamedHint {
                            name: z.to_string(),
                        })
                        .collect(),
                    for_nodes: nodes
                        .iter()
                        .map(|n| api::NamedHint {
                            name: n.to_string(),
                        })
                        .collect(),
                }),
                deprecated_topology,
                hostname: None,
            }
        })
        .boxed()
}

fn endpoints(family: IpFamily) -> BoxedStrategy<Vec<api::Endpoint>> {
    let pool: Vec<(&'static str, &'static str)> = match family {
        IpFamily::IPv4 => ENDPOINTS_V4.to_vec(),
        IpFamily::IPv6 => ENDPOINTS_V6.to_vec(),
    };
    let n = pool.len();
    prop_oneof![1 => Just(0usize), 6 => 1usize..=4]
        .prop_flat_map(move |count| subsequence(pool.clone(), count.min(n)))
        .prop_flat_map(|picked| {
            picked
                .into_iter()
                .map(|(ip, home)| endpoint(ip, home))
                .collect::<Vec<_>>()
        })
        .boxed()
}

fn slice_ports(mirror: Vec<(String, Protocol)>) -> BoxedStrategy<Vec<api::EndpointPort>> {
    let mut names: Vec<(String, Option<Protocol>)> = PORT_NAMES
        .iter()
        .map(|(n, p)| (n.to_string(), Some(*p)))
        .collect();
    names.push((String::new(), None));
    let random = subsequence(names, 0..=3).boxed();
    // Mostly the Service's own ports (as the EndpointSlice controller writes them), each kept
    // with high probability; otherwise any names.
    let picked = if mirror.is_empty() {
        random
    } else {
        let n = mirror.len();
        let mirrored = vec(prop::bool::weighted(0.9), n)
            .prop_map(move |keep| {
                mirror
                    .iter()
                    .zip(keep)
                    .filter(|(_, k)| *k)
                    .map(|((name, p), _)| (name.clone(), Some(*p)))
                    .collect::<Vec<_>>()
            })
            .boxed();
        prop_oneof![6 => mirrored, 1 => random].boxed()
    };
    (
        picked,
        vec(
            (
                select(TARGET_PORTS.to_vec()),
                protocol_strategy(),
                prop::bool::weighted(0.1),
            ),
            5,
        ),
    )
        .prop_map(|(names, details)| {
            let mut seen = std::collections::BTreeSet::new();
            names
                .iter()
                .zip(details)
                .map(|((name, usual), (port, random_proto, flip))| {
                    let protocol = match usual {
                        Some(p) if !flip => *p,
                        _ => random_proto,
                    };
                    (name.clone(), protocol, port)
                })
                // Validation rejects a repeated (name, protocol).
                .filter(|(name, protocol, _)| seen.insert((name.clone(), *protocol)))
                .map(|(name, protocol, port)| api::EndpointPort {
                    name: Some(name),
                    port: Some(port),
                    protocol: Some(protocol.as_str().to_string()),
                    app_protocol: None,
                })
                .collect()
        })
        .boxed()
}

/// A valid EndpointSlice `k` of Service index `i` (mostly IPv4/IPv6, sometimes FQDN or
/// labelled headless), with any port names.
pub fn slice(i: usize, k: usize) -> BoxedStrategy<api::EndpointSlice> {
    slice_for(i, k, None)
}

/// The `(name, protocol)` of each port of a Service.
fn port_keys(svc: &api::Service) -> Vec<(String, Protocol)> {
    svc.spec
        .ports
        .iter()
        .map(|p| {
            (
                p.name.clone().unwrap_or_default(),
                p.protocol
                    .as_deref()
                    .and_then(Protocol::parse)
                    .unwrap_or(Protocol::Tcp),
            )
        })
        .collect()
}

/// Slice `k` of Service index `i`; when `service` is given its ports mostly mirror the
/// Service's.
pub fn slice_for(
    i: usize,
    k: usize,
    service: Option<&api::Service>,
) -> BoxedStrategy<api::EndpointSlice> {
    let mirror = service.map(port_keys).unwrap_or_default();
    // Mostly a family the Service has a ClusterIP in.
    let own: Vec<Option<IpFamily>> = service
        .map(|svc| {
            svc.spec
                .cluster_ips
                .iter()
                .filter_map(|ip| ip.parse::<IpAddr>().ok())
                .map(|ip| Some(IpFamily::of(&ip)))
                .collect()
        })
        .unwrap_or_default();
    let any_family = prop_oneof![
        12 => Just(Some(IpFamily::IPv4)),
        7 => Just(Some(IpFamily::IPv6)),
        1 => Just(None),
    ]
    .boxed();
    let family = if own.is_empty() {
        any_family
    } else {
        prop_oneof![4 => select(own), 1 => any_family].boxed()
    };
    (
        family,
        prop::bool::weighted(0.03),
        prop::bool::weighted(0.08),
    )
        .prop_flat_map(move |(family, headless, moved)| {
            let eps = match family {
                Some(f) => endpoints(f),
                None => Just(Vec::new()).boxed(),
            };
            (
                Just(family),
                Just(headless),
                Just(moved),
                slice_ports(mirror.clone()),
                eps,
            )
        })
        .prop_map(move |(family, headless, moved, ports, endpoints)| {
            let mut metadata =
                api::ObjectMeta::named(Some(namespace(i)), &slice_name(i, family, k));
            // Sometimes the slice belongs to another Service of the same namespace, so an
            // update of the same slice moves it between Services.
            let owner = if moved { (i + 2) % MAX_SERVICES } else { i };
            metadata
                .labels
                .insert(LABEL_SERVICE_NAME.to_string(), service_name(owner));
            if headless {
                metadata
                    .labels
                    .insert(LABEL_HEADLESS.to_string(), String::new());
            }
            api::EndpointSlice {
                metadata,
                address_type: Some(
                    match family {
                        Some(IpFamily::IPv4) => "IPv4",
                        Some(IpFamily::IPv6) => "IPv6",
                        None => "FQDN",
                    }
                    .to_string(),
                ),
                endpoints,
                ports,
            }
        })
        .boxed()
}

/// A slice of any Service index.
pub fn any_slice() -> BoxedStrategy<api::EndpointSlice> {
    (0..MAX_SERVICES, 0..MAX_SLICES_PER_SERVICE)
        .prop_flat_map(|(i, k)| slice(i, k))
        .boxed()
}

/// Only the metadata of a slice: enough to delete it.
pub fn slice_stub(i: usize, family: Option<IpFamily>, k: usize) -> api::EndpointSlice {
    api::EndpointSlice {
        metadata: api::ObjectMeta::named(Some(namespace(i)), &slice_name(i, family, k)),
        ..api::EndpointSlice::default()
    }
}

// ---------------------------------------------------------------------------------------------
// Clusters.

/// A whole cluster: settings, up to three Node objects, up to [`MAX_SERVICES`] Services and
/// up to [`MAX_SLICES_PER_SERVICE`] slices each. Every object is valid and conflict-free.
pub fn cluster() -> BoxedStrategy<Cluster> {
    let nodes: Vec<BoxedStrategy<Option<api::Node>>> = NODES
        .iter()
        .map(|n| option::weighted(0.6, node_named(n)).boxed())
        .collect();
    let services: Vec<BoxedStrategy<Option<api::Service>>> = (0..MAX_SERVICES)
        .map(|i| option::weighted(0.6, service(i)).boxed())
        .collect();
    (proxy_config(), nodes, services)
        .prop_flat_map(|(config, nodes, services)| {
            // Slices for every index: mirroring the Service's ports when it exists, arbitrary
            // (orphaned until a Service appears) otherwise.
            let slices: Vec<BoxedStrategy<Option<api::EndpointSlice>>> = (0..MAX_SERVICES)
                .flat_map(|i| {
                    let svc = services[i].clone();
                    (0..MAX_SLICES_PER_SERVICE).map(move |k| {
                        let weight = if svc.is_some() { 0.6 } else { 0.15 };
                        option::weighted(weight, slice_for(i, k, svc.as_ref())).boxed()
                    })
                })
                .collect();
            (Just(config), Just(nodes), Just(services), slices)
        })
        .prop_map(|(config, nodes, services, slices)| Cluster {
            config,
            nodes: nodes.into_iter().flatten().collect(),
            services: services.into_iter().flatten().collect(),
            slices: slices.into_iter().flatten().collect(),
        })
        .boxed()
}

// ---------------------------------------------------------------------------------------------
// Invalid objects.

fn routed(mut svc: api::Service) -> api::Service {
    svc.metadata.labels.remove(LABEL_SERVICE_PROXY_NAME);
    if svc.spec.type_.as_deref() == Some("ExternalName") {
        svc.spec.type_ = Some("ClusterIP".to_string());
        svc.spec.external_name = None;
    }
    svc
}

/// A Service that validation must reject (bad port, protocol, address, affinity, topology
/// keys, policy, name or type), keeping the key of a real one where possible.
pub fn invalid_service() -> BoxedStrategy<api::Service> {
    (any_service(), 0usize..8)
        .prop_map(|(svc, how)| {
            let mut svc = routed(svc);
            match how {
                0 => {
                    if let Some(p) = svc.spec.ports.first_mut() {
                        p.port = Some(0);
                    }
                }
                1 => {
                    if let Some(p) = svc.spec.ports.first_mut() {
                        p.protocol = Some("ICMP".to_string());
                    }
                }
                2 => {
                    let bad = "10.96.0.300".to_string();
                    svc.spec.cluster_ip = Some(bad.clone());
                    match svc.spec.cluster_ips.first_mut() {
                        Some(first) => *first = bad,
                        None => svc.spec.cluster_ips = vec![bad],
                    }
                    svc.spec.ip_families.clear();
                }
                3 => {
                    svc.spec.session_affinity = Some("ClientIP".to_string());
                    svc.spec.session_affinity_config = Some(api::SessionAffinityConfig {
                        client_ip: Some(api::ClientIpConfig {
                            timeout_seconds: Some(86_401),
                        }),
                    });
                }
                4 => svc.spec.topology_keys = vec!["*".to_string(), LABEL_HOSTNAME.to_string()],
                5 => svc.spec.external_traffic_policy = Some("Sideways".to_string()),
                6 => svc.metadata.name = Some("Svc_Bad".to_string()),
                _ => svc.spec.type_ = Some("Weird".to_string()),
            }
            // A port must exist for the port corruptions to bite.
            if svc.spec.ports.is_empty() {
                svc.spec.ports.push(api::ServicePort {
                    port: Some(0),
                    ..api::ServicePort::default()
                });
            }
            svc
        })
        .boxed()
}

/// An EndpointSlice that validation must reject.
pub fn invalid_slice() -> BoxedStrategy<api::EndpointSlice> {
    (any_slice(), 0usize..6)
        .prop_map(|(mut slice, how)| {
            slice.metadata.labels.remove(LABEL_HEADLESS);
            match how {
                0 => {
                    slice.metadata.labels.remove(LABEL_SERVICE_NAME);
                }
                1 => slice.address_type = None,
                2 => slice.address_type = Some("IPv5".to_string()),
                3 => slice.metadata.name = Some("Bad_Slice".to_string()),
                4 => {
                    slice.address_type = Some("IPv4".to_string());
                    slice.endpoints.push(api::Endpoint {
                        addresses: vec!["10.244.0.300".to_string()],
                        ..api::Endpoint::default()
                    });
                }
                _ => {
                    if slice.address_type.as_deref() == Some("FQDN") {
                        slice.address_type = Some("IPv4".to_string());
                        slice.endpoints.clear();
                    }
                    slice.ports.push(api::EndpointPort {
                        name: Some("zero".to_string()),
                        port: Some(0),
                        protocol: None,
                        app_protocol: None,
                    });
                }
            }
            slice
        })
        .boxed()
}

/// A Node that validation must reject.
pub fn invalid_node() -> BoxedStrategy<api::Node> {
    (any_node(), any::<bool>())
        .prop_map(|(mut node, bad_name)| {
            if bad_name {
                node.metadata.name = Some("Node_A".to_string());
            } else {
                node.metadata
                    .labels
                    .insert("bad key!".to_string(), "x".to_string());
            }
            node
        })
        .boxed()
}

/// An invalid object of any kind, as an `Apply` event.
pub fn invalid_event() -> BoxedStrategy<WatchEvent> {
    prop_oneof![
        invalid_service().prop_map(|s| WatchEvent::from(Event::Apply(s))),
        invalid_slice().prop_map(|s| WatchEvent::from(Event::Apply(s))),
        invalid_node().prop_map(|n| WatchEvent::from(Event::Apply(n))),
    ]
    .boxed()
}

// ---------------------------------------------------------------------------------------------
// Event sequences.

/// One valid object change: apply or delete a Service, a slice or a Node.
pub fn object_change() -> BoxedStrategy<WatchEvent> {
    let family = prop_oneof![
        Just(Some(IpFamily::IPv4)),
        Just(Some(IpFamily::IPv6)),
        Just(None)
    ];
    prop_oneof![
        4 => any_service().prop_map(|s| WatchEvent::from(Event::Apply(s))),
        1 => (0..MAX_SERVICES).prop_map(|i| WatchEvent::from(Event::Delete(service_stub(i)))),
        5 => any_slice().prop_map(|s| WatchEvent::from(Event::Apply(s))),
        1 => (0..MAX_SERVICES, family, 0..MAX_SLICES_PER_SERVICE)
            .prop_map(|(i, f, k)| WatchEvent::from(Event::Delete(slice_stub(i, f, k)))),
        1 => any_node().prop_map(|n| WatchEvent::from(Event::Apply(n))),
        1 => select(NODES.to_vec()).prop_map(|n| WatchEvent::from(Event::Delete(api::Node { metadata: api::ObjectMeta::named(None, n) }))),
    ]
    .boxed()
}

fn relist() -> BoxedStrategy<Vec<Step>> {
    fn wrap<K>(objects: Vec<K>) -> Vec<Step>
    where
        WatchEvent: From<Event<K>>,
    {
        let mut steps = vec![ev(Event::<K>::Init, Expectation::Valid)];
        steps.extend(
            objects
                .into_iter()
                .map(|o| ev(Event::InitApply(o), Expectation::Valid)),
        );
        steps.push(ev(Event::<K>::InitDone, Expectation::Valid));
        steps
    }
    prop_oneof![
        vec(any_service(), 0..4).prop_map(wrap),
        vec(any_slice(), 0..6).prop_map(wrap),
        vec(any_node(), 0..3).prop_map(wrap),
    ]
    .boxed()
}

fn step_group(with_config: bool) -> BoxedStrategy<Vec<Step>> {
    let base = prop_oneof![
        12 => object_change().prop_map(|e| vec![ev(e, Expectation::Valid)]),
        2 => invalid_event().prop_map(|e| vec![ev(e, Expectation::Invalid)]),
        1 => conflicting_service().prop_map(|s| vec![ev(Event::Apply(s), Expectation::Unknown)]),
        1 => relist(),
        4 => Just(vec![Step::Sync]),
    ];
    if with_config {
        prop_oneof![
            20 => base,
            1 => proxy_config().prop_map(|c| vec![Step::SetConfig(c)]),
        ]
        .boxed()
    } else {
        base.boxed()
    }
}

/// A sequence of steps: valid and invalid object changes, deliberate conflicts, re-lists
/// (`Init` … `InitDone`), settings changes (when `with_config`) and syncs.
pub fn steps(max_groups: usize, with_config: bool) -> BoxedStrategy<Vec<Step>> {
    vec(step_group(with_config), 0..=max_groups)
        .prop_map(|groups| groups.into_iter().flatten().collect())
        .boxed()
}

// ---------------------------------------------------------------------------------------------
// Packets.

/// A packet destination: address, port, protocol.
pub type Destination = (IpAddr, u16, Protocol);

/// Addresses packets are aimed at and come from, gathered from a cluster and its changes.
#[derive(Debug, Clone, Default)]
pub struct Universe {
    /// ClusterIPs with their service ports: `(address, port, protocol)`.
    pub cluster: Vec<Destination>,
    /// externalIPs and LB IPs with their service ports.
    pub external: Vec<Destination>,
    /// NodePorts and health-check ports on node addresses, other hosts and loopback.
    pub node_ports: Vec<Destination>,
    /// Stray destinations: unallocated service addresses, off-cluster hosts, node services.
    pub stray: Vec<Destination>,
    /// IPv4 sources.
    pub sources_v4: Vec<IpAddr>,
    /// IPv6 sources.
    pub sources_v6: Vec<IpAddr>,
}

fn port_u16(p: Option<i64>) -> Option<u16> {
    p.and_then(|p| u16::try_from(p).ok()).filter(|p| *p != 0)
}

fn sorted<T: Ord>(mut v: Vec<T>) -> Vec<T> {
    v.sort();
    v.dedup();
    v
}

impl Universe {
    /// Frontends of `services` (ClusterIPs, externalIPs, LB IPs with their ports; NodePorts
    /// and health-check ports on node addresses, other hosts and loopback), plus stray
    /// addresses in and out of the service CIDRs. Sources: local and remote pods, this node,
    /// another node, loopback, off-cluster clients, endpoints (hairpin), LB IPs.
    pub fn of(
        config: &ProxyConfig,
        services: &[api::Service],
        slices: &[api::EndpointSlice],
    ) -> Self {
        let mut u = Universe::default();
        let parse = |s: &str| s.trim().parse::<IpAddr>().ok();
        let mut node_addrs: Vec<IpAddr> = config.node_ips.clone();
        node_addrs.extend(ips(&["192.168.0.11", "127.0.0.1", "::1"]));
        let mut lb_ips = Vec::new();
        for svc in services {
            let spec = &svc.spec;
            let cluster: Vec<IpAddr> = spec.cluster_ips.iter().filter_map(|s| parse(s)).collect();
            // NodePorts are aimed mostly at addresses of the Service's own families.
            let families: Vec<IpFamily> = cluster.iter().map(IpFamily::of).collect();
            let node_addrs: Vec<IpAddr> = node_addrs
                .iter()
                .copied()
                .filter(|a| families.is_empty() || families.contains(&IpFamily::of(a)))
                .collect();
            let mut external: Vec<IpAddr> =
                spec.external_ips.iter().filter_map(|s| parse(s)).collect();
            if let Some(lb) = svc.status.as_ref().and_then(|s| s.load_balancer.as_ref()) {
                let ingress: Vec<IpAddr> = lb
                    .ingress
                    .iter()
                    .filter_map(|i| i.ip.as_deref().and_then(parse))
                    .collect();
                lb_ips.extend(ingress.iter().copied());
                external.extend(ingress);
            }
            for p in &spec.ports {
                let proto = p
                    .protocol
                    .as_deref()
                    .and_then(Protocol::parse)
                    .unwrap_or(Protocol::Tcp);
                if let Some(port) = port_u16(p.port) {
                    u.cluster.extend(cluster.iter().map(|a| (*a, port, proto)));
                    u.external
                        .extend(external.iter().map(|a| (*a, port, proto)));
                }
                if let Some(np) = port_u16(p.node_port) {
                    u.node_ports
                        .extend(node_addrs.iter().map(|a| (*a, np, proto)));
                }
            }
            if let Some(hc) = port_u16(spec.health_check_node_port) {
                u.node_ports
                    .extend(node_addrs.iter().map(|a| (*a, hc, Protocol::Tcp)));
            }
        }
        u.stray = [
            ("10.96.3.3", 80, Protocol::Tcp),
            ("fd00:96::ffff", 443, Protocol::Tcp),
            ("10.97.0.1", 80, Protocol::Udp),
            ("8.8.8.8", 53, Protocol::Udp),
            ("2001:db8::99", 80, Protocol::Tcp),
            ("192.168.0.10", 22, Protocol::Tcp),
            ("127.0.0.2", 30001, Protocol::Tcp),
            ("fd00:1::10", 30004, Protocol::Udp),
        ]
        .iter()
        .filter_map(|(a, p, proto)| parse(a).map(|a| (a, *p, *proto)))
        .collect();
        let mut sources = ips(&[
            "10.244.0.5",
            "10.244.1.7",
            "fd00:10:244::5",
            "fd00:10:244:1::7",
            "192.168.0.11",
            "fd00:1::11",
            "127.0.0.1",
            "::1",
            "203.0.113.50",
            "8.8.8.8",
            "198.51.100.200",
            "2001:db8::50",
            "2001:db8:ffff::1",
        ]);
        sources.extend(config.node_ips.iter().copied());
        sources.extend(lb_ips);
        for s in slices {
            sources.extend(
                s.endpoints
                    .iter()
                    .filter_map(|e| e.addresses.first().and_then(|a| parse(a))),
            );
        }
        for s in sorted(sources) {
            match IpFamily::of(&s) {
                IpFamily::IPv4 => u.sources_v4.push(s),
                IpFamily::IPv6 => u.sources_v6.push(s),
            }
        }
        u.cluster = sorted(u.cluster);
        u.external = sorted(u.external);
        u.node_ports = sorted(u.node_ports);
        u
    }

    /// The destination lists with their weights, empty ones left out.
    fn weighted(&self) -> Vec<(u32, &[Destination])> {
        [
            (50, self.cluster.as_slice()),
            (20, self.external.as_slice()),
            (22, self.node_ports.as_slice()),
            (8, self.stray.as_slice()),
        ]
        .into_iter()
        .filter(|(_, list)| !list.is_empty())
        .collect()
    }
}

/// Packets aimed at `universe`'s destinations (half at ClusterIPs, then NodePorts, external
/// addresses and strays) from sources of the same family; a few with a shifted port, another
/// protocol or a source of the other family.
pub fn packets(
    universe: Universe,
    len: std::ops::RangeInclusive<usize>,
) -> BoxedStrategy<Vec<Packet>> {
    let u = Arc::new(universe);
    vec((0u32..100, any::<Index>(), any::<Index>(), 0u8..20), len)
        .prop_map(move |picks| {
            let lists = u.weighted();
            let total: u32 = lists.iter().map(|(w, _)| w).sum();
            picks
                .into_iter()
                .filter_map(|(category, d, s, tweak)| {
                    let mut roll = category * total.max(1) / 100;
                    let list = lists.iter().find_map(|(w, list)| {
                        if roll < *w {
                            Some(*list)
                        } else {
                            roll -= w;
                            None
                        }
                    })?;
                    let (dst, mut port, mut protocol) = *d.get(list);
                    let same = IpFamily::of(&dst) == IpFamily::IPv4;
                    let use_v4 = if tweak == 2 { !same } else { same };
                    let pool = if use_v4 { &u.sources_v4 } else { &u.sources_v6 };
                    if pool.is_empty() {
                        return None;
                    }
                    let source = *s.get(pool);
                    match tweak {
                        0 => port = port.checked_add(1).unwrap_or(1),
                        1 => {
                            protocol = match protocol {
                                Protocol::Tcp => Protocol::Udp,
                                Protocol::Udp => Protocol::Sctp,
                                Protocol::Sctp => Protocol::Tcp,
                            }
                        }
                        _ => {}
                    }
                    Some(Packet {
                        source,
                        destination: dst,
                        port,
                        protocol,
                    })
                })
                .collect()
        })
        .boxed()
}

/// A cluster and packets aimed at it.
pub fn cluster_with_packets() -> BoxedStrategy<(Cluster, Vec<Packet>)> {
    cluster()
        .prop_flat_map(|c| {
            let u = Universe::of(&c.config, &c.services, &c.slices);
            (Just(c), packets(u, 1..=48))
        })
        .boxed()
}

fn step_objects(steps: &[Step]) -> (Vec<api::Service>, Vec<api::EndpointSlice>) {
    let mut services = Vec::new();
    let mut slices = Vec::new();
    for step in steps {
        if let Step::Event { event, .. } = step {
            match &**event {
                WatchEvent::Service(Event::Apply(s) | Event::InitApply(s)) => {
                    services.push(s.clone())
                }
                WatchEvent::EndpointSlice(Event::Apply(s) | Event::InitApply(s)) => {
                    slices.push(s.clone())
                }
                _ => {}
            }
        }
    }
    (services, slices)
}

/// A cluster, a sequence of steps and packets aimed at anything either of them defines.
pub fn cluster_with_steps(
    max_groups: usize,
    with_config: bool,
) -> BoxedStrategy<(Cluster, Vec<Step>, Vec<Packet>)> {
    (cluster(), steps(max_groups, with_config))
        .prop_flat_map(|(c, steps)| {
            let (mut services, mut slices) = step_objects(&steps);
            services.extend(c.services.iter().cloned());
            slices.extend(c.slices.iter().cloned());
            let u = Universe::of(&c.config, &services, &slices);
            (Just(c), Just(steps), packets(u, 1..=32))
        })
        .boxed()
}
