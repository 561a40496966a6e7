//! Built-in scenarios: clusters with packet-flow tables whose expectations are written by
//! hand from Kubernetes semantics (upstream kube-proxy, mostly its nftables mode, which the
//! core follows where the modes differ) — never computed by calling the core.
//!
//! Unless a scenario says otherwise it runs on [`standard_config`]: this node is `node-a` in
//! `zone-a`, with addresses `192.168.0.10` (primary), `192.168.1.10` and `fd00:1::10`; pods
//! live in `10.244.0.0/16` and `fd00:10:244::/56` (the local-traffic detector; pods on this
//! node are `10.244.0.x`); Services in `10.96.0.0/16` and `fd00:96::/108`. The sources used
//! throughout:
//!
//! | source | who |
//! |---|---|
//! | `10.244.0.5`, `fd00:10:244::5` | a pod on this node |
//! | `10.244.3.5` | a pod on another node |
//! | `192.168.0.10`, `192.168.1.10`, `fd00:1::10`, `127.0.0.1` | this node |
//! | `192.168.0.11` | another node (external from here) |
//! | `203.0.113.50`, `2001:db8::50` | an off-cluster client |
//! | `198.18.0.1` | a client outside every source range |
//!
//! Endpoints listen on `8080` unless a table says otherwise.
//!
//! Cases where svcroute deliberately differs from upstream kube-proxy, or where it once did, are
//! kept in scenarios of their own (`load_balancer_source_ranges_one_family`,
//! `load_balancer_source_ranges_annotation`, `terminating_serving_unset`,
//! `legacy_topology_keys_ready_only`), whose descriptions say which behaviour and why.

mod cluster_ip;
mod endpoints;
mod external;
mod families;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use svcroute_core::model::{IpFamily, LABEL_ZONE, ProxyConfig};
use svcroute_core::watch::WatchEvent;

use crate::flow::{Scenario, ScenarioError};
use crate::objects::{EndpointBuilder, ServiceBuilder, SliceBuilder};

pub use cluster_ip::{
    cluster_ip_masquerade, cluster_ip_masquerade_all, cluster_ip_without_local_detector,
    ipv6_statefulset, no_endpoints_reject, session_affinity_client_ip, unallocated_service_ip_drop,
    undefined_port_reject,
};
pub use endpoints::{
    hairpin, internal_policy_local, legacy_topology_keys, legacy_topology_keys_ready_only,
    terminating_fallback, terminating_serving_unset, zone_hints,
};
pub use external::{
    external_ips, health_check_node_port, load_balancer_source_ranges,
    load_balancer_source_ranges_annotation, load_balancer_source_ranges_one_family,
    localhost_node_ports, localhost_node_ports_disabled, node_port_addresses_cidrs,
    node_port_addresses_primary, node_port_cluster_policy, node_port_local_policy,
};
pub use families::{dual_stack, headless_and_external_name, ipv4_only_proxy, udp_and_sctp};

/// A built-in scenario constructor.
pub type Constructor = fn() -> Result<Scenario, ScenarioError>;

/// Every built-in scenario, by name, in the order [`NAMES`] lists them.
pub const ALL: &[(&str, Constructor)] = &[
    ("cluster_ip_masquerade", cluster_ip_masquerade),
    ("cluster_ip_masquerade_all", cluster_ip_masquerade_all),
    (
        "cluster_ip_without_local_detector",
        cluster_ip_without_local_detector,
    ),
    ("ipv6_statefulset", ipv6_statefulset),
    ("session_affinity_client_ip", session_affinity_client_ip),
    ("no_endpoints_reject", no_endpoints_reject),
    ("undefined_port_reject", undefined_port_reject),
    ("unallocated_service_ip_drop", unallocated_service_ip_drop),
    ("node_port_cluster_policy", node_port_cluster_policy),
    ("node_port_local_policy", node_port_local_policy),
    ("internal_policy_local", internal_policy_local),
    ("external_ips", external_ips),
    ("load_balancer_source_ranges", load_balancer_source_ranges),
    (
        "load_balancer_source_ranges_one_family",
        load_balancer_source_ranges_one_family,
    ),
    (
        "load_balancer_source_ranges_annotation",
        load_balancer_source_ranges_annotation,
    ),
    ("hairpin", hairpin),
    ("terminating_fallback", terminating_fallback),
    ("terminating_serving_unset", terminating_serving_unset),
    ("zone_hints", zone_hints),
    ("legacy_topology_keys", legacy_topology_keys),
    (
        "legacy_topology_keys_ready_only",
        legacy_topology_keys_ready_only,
    ),
    ("dual_stack", dual_stack),
    ("ipv4_only_proxy", ipv4_only_proxy),
    ("udp_and_sctp", udp_and_sctp),
    ("headless_and_external_name", headless_and_external_name),
    ("localhost_node_ports", localhost_node_ports),
    (
        "localhost_node_ports_disabled",
        localhost_node_ports_disabled,
    ),
    ("node_port_addresses_primary", node_port_addresses_primary),
    ("node_port_addresses_cidrs", node_port_addresses_cidrs),
    ("health_check_node_port", health_check_node_port),
];

/// Names of every built-in scenario (each is also the name of its constructor function).
pub const NAMES: &[&str] = &[
    "cluster_ip_masquerade",
    "cluster_ip_masquerade_all",
    "cluster_ip_without_local_detector",
    "ipv6_statefulset",
    "session_affinity_client_ip",
    "no_endpoints_reject",
    "undefined_port_reject",
    "unallocated_service_ip_drop",
    "node_port_cluster_policy",
    "node_port_local_policy",
    "internal_policy_local",
    "external_ips",
    "load_balancer_source_ranges",
    "load_balancer_source_ranges_one_family",
    "load_balancer_source_ranges_annotation",
    "hairpin",
    "terminating_fallback",
    "terminating_serving_unset",
    "zone_hints",
    "legacy_topology_keys",
    "legacy_topology_keys_ready_only",
    "dual_stack",
    "ipv4_only_proxy",
    "udp_and_sctp",
    "headless_and_external_name",
    "localhost_node_ports",
    "localhost_node_ports_disabled",
    "node_port_addresses_primary",
    "node_port_addresses_cidrs",
    "health_check_node_port",
];

/// Every built-in scenario.
pub fn all() -> Result<Vec<Scenario>, ScenarioError> {
    ALL.iter().map(|(_, make)| make()).collect()
}

/// The built-in scenario called `name`, if there is one.
pub fn by_name(name: &str) -> Option<Result<Scenario, ScenarioError>> {
    ALL.iter().find(|(n, _)| *n == name).map(|(_, make)| make())
}

fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(a, b, c, d))
}

fn v6(segments: [u16; 8]) -> IpAddr {
    let [a, b, c, d, e, f, g, h] = segments;
    IpAddr::V6(Ipv6Addr::new(a, b, c, d, e, f, g, h))
}

/// The node every built-in scenario runs on unless it says otherwise (see the module docs).
pub fn standard_config() -> ProxyConfig {
    ProxyConfig {
        node_name: "node-a".to_string(),
        node_labels: BTreeMap::from([(LABEL_ZONE.to_string(), "zone-a".to_string())]),
        node_ips: vec![
            v4(192, 168, 0, 10),
            v4(192, 168, 1, 10),
            v6([0xfd00, 1, 0, 0, 0, 0, 0, 0x10]),
        ],
        cluster_cidrs: vec![
            IpNet::new_assert(v4(10, 244, 0, 0), 16),
            IpNet::new_assert(v6([0xfd00, 0x10, 0x244, 0, 0, 0, 0, 0]), 56),
        ],
        service_cidrs: vec![
            IpNet::new_assert(v4(10, 96, 0, 0), 16),
            IpNet::new_assert(v6([0xfd00, 0x96, 0, 0, 0, 0, 0, 0]), 108),
        ],
        ip_families: IpFamily::ALL.to_vec(),
        ..ProxyConfig::default()
    }
}

/// A ClusterIP Service `default/name` at `ip` with one port `http` 80/TCP.
fn web(name: &str, ip: &str) -> ServiceBuilder {
    ServiceBuilder::new("default", name)
        .cluster_ip(ip)
        .port("http", 80, "TCP")
}

/// An IPv4 slice `default/<service>-v4` with port `http` 8080/TCP.
fn slice4(service: &str, endpoints: Vec<EndpointBuilder>) -> WatchEvent {
    endpoints
        .into_iter()
        .fold(
            SliceBuilder::ipv4("default", &format!("{service}-v4"), service)
                .port("http", 8080, "TCP"),
            SliceBuilder::endpoint,
        )
        .apply()
}

/// An IPv6 slice `default/<service>-v6` with port `http` 8080/TCP.
fn slice6(service: &str, endpoints: Vec<EndpointBuilder>) -> WatchEvent {
    endpoints
        .into_iter()
        .fold(
            SliceBuilder::ipv6("default", &format!("{service}-v6"), service)
                .port("http", 8080, "TCP"),
            SliceBuilder::endpoint,
        )
        .apply()
}
