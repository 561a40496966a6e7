//! Tests of [`resolve_service`]: slice merging, families, ports, frontends and the firewall.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;
use serde_json::{Value, json};

use super::{NoEndpointVerdict, ResolvedServicePort, SelectContext, resolve_service};
use crate::model::slice::Interner;
use crate::model::{IpFamily, ProxyConfig, ServiceInfo, SliceInfo, TrafficPolicy, api};

fn service(spec: Value) -> ServiceInfo {
    service_with_status(spec, Value::Null)
}

fn service_with_status(spec: Value, status: Value) -> ServiceInfo {
    let mut v = json!({"metadata": {"name": "web", "namespace": "ns"}, "spec": spec});
    if !status.is_null() {
        v["status"] = status;
    }
    let svc: api::Service = serde_json::from_value(v).unwrap();
    ServiceInfo::from_api(&svc).unwrap()
}

/// A slice of service `ns/web`.
fn slice(name: &str, address_type: &str, ports: Value, endpoints: Value) -> SliceInfo {
    let v = json!({
        "metadata": {"name": name, "namespace": "ns", "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": address_type,
        "ports": ports,
        "endpoints": endpoints,
    });
    let s: api::EndpointSlice = serde_json::from_value(v).unwrap();
    SliceInfo::from_api(&s, &mut Interner::default()).unwrap()
}

/// A slice with one port `http`/TCP → 8080.
fn http_slice(name: &str, address_type: &str, endpoints: Value) -> SliceInfo {
    slice(
        name,
        address_type,
        json!([{"name": "http", "port": 8080}]),
        endpoints,
    )
}

fn ready(ip: &str) -> Value {
    json!({"addresses": [ip], "nodeName": "remote"})
}

fn terminating(ip: &str) -> Value {
    json!({"addresses": [ip], "nodeName": "remote",
           "conditions": {"ready": false, "serving": true, "terminating": true}})
}

fn resolve_with(
    svc: &ServiceInfo,
    slices: &[&SliceInfo],
    config: &ProxyConfig,
) -> Vec<ResolvedServicePort> {
    let labels = BTreeMap::new();
    let nodes: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    let cx = SelectContext {
        config,
        node_labels: &labels,
        nodes: &nodes,
    };
    resolve_service(svc, slices, &cx)
}

fn resolve(svc: &ServiceInfo, slices: &[&SliceInfo]) -> Vec<ResolvedServicePort> {
    resolve_with(svc, slices, &ProxyConfig::default())
}

fn sa(list: &[&str]) -> Vec<SocketAddr> {
    list.iter().map(|s| s.parse().unwrap()).collect()
}

fn ips(list: &[&str]) -> Vec<IpAddr> {
    list.iter().map(|s| s.parse().unwrap()).collect()
}

/// Parsed and sorted, as the firewall lists them.
fn nets(list: &[&str]) -> Vec<IpNet> {
    let mut v: Vec<IpNet> = list.iter().map(|s| s.parse().unwrap()).collect();
    v.sort();
    v
}

fn web_v4() -> ServiceInfo {
    service(json!({"clusterIP": "10.96.0.10", "ports": [{"name": "http", "port": 80}]}))
}

#[test]
fn slices_are_merged_by_ip_port_and_sorted() {
    let svc = web_v4();
    let a = http_slice(
        "web-a",
        "IPv4",
        json!([ready("10.0.0.3"), ready("10.0.0.1")]),
    );
    let b = http_slice(
        "web-b",
        "IPv4",
        json!([ready("10.0.0.2"), ready("10.0.0.1")]),
    );
    // A third slice maps the same port name to another target port: a distinct ip:port.
    let c = slice(
        "web-c",
        "IPv4",
        json!([{"name": "http", "port": 9090}]),
        json!([ready("10.0.0.1")]),
    );
    let got = resolve(&svc, &[&b, &c, &a]);
    assert_eq!(got.len(), 1);
    let v4 = got[0].family(IpFamily::IPv4).unwrap();
    let want = sa(&[
        "10.0.0.1:8080",
        "10.0.0.1:9090",
        "10.0.0.2:8080",
        "10.0.0.3:8080",
    ]);
    assert_eq!(v4.cluster_endpoints.as_deref(), Some(&want[..]));
    assert_eq!(v4.local_endpoints, None);
    assert_eq!(*v4.all_reachable, *want);
    assert!(v4.has_any_endpoints);
}

#[test]
fn duplicate_ip_port_keeps_the_non_terminating_copy() {
    let svc = web_v4();
    // 10.0.0.1 is a terminating pod in one slice and a new, ready pod reusing its IP in another.
    // Were the terminating copy kept, the cluster set would be only 10.0.0.2 (ready beats
    // terminating), so the set tells which copy won.
    let old = http_slice("web-a", "IPv4", json!([terminating("10.0.0.1")]));
    let new = http_slice(
        "web-b",
        "IPv4",
        json!([ready("10.0.0.1"), ready("10.0.0.2")]),
    );
    let old_last = http_slice("web-c", "IPv4", json!([terminating("10.0.0.1")]));
    let want = sa(&["10.0.0.1:8080", "10.0.0.2:8080"]);
    for order in [
        vec![&old, &new],
        vec![&new, &old],
        vec![&new, &old_last],
        vec![&old_last, &new],
    ] {
        let got = resolve(&svc, &order);
        let v4 = got[0].family(IpFamily::IPv4).unwrap();
        assert_eq!(
            v4.cluster(),
            &want[..],
            "slices {:?}",
            order.iter().map(|s| &s.name).collect::<Vec<_>>()
        );
    }
    // Two terminating copies: still one entry, used as the fallback.
    let got = resolve(&svc, &[&old, &old_last]);
    assert_eq!(
        got[0].family(IpFamily::IPv4).unwrap().cluster(),
        &sa(&["10.0.0.1:8080"])[..]
    );
}

#[test]
fn slices_of_the_other_family_and_fqdn_slices_are_ignored() {
    let svc = web_v4();
    let v4 = http_slice("web-a", "IPv4", json!([ready("10.0.0.1")]));
    let v6 = http_slice("web-b", "IPv6", json!([ready("fd00::1")]));
    let fqdn = http_slice("web-c", "FQDN", json!([{"addresses": ["db.example.com"]}]));
    assert_eq!(fqdn.family, None);
    // An FQDN slice carrying IPv4-looking endpoints (built directly) is still ignored.
    let mut fqdn_ips = http_slice("web-d", "IPv4", json!([ready("10.0.0.9")]));
    fqdn_ips.family = None;
    let got = resolve(&svc, &[&v4, &v6, &fqdn, &fqdn_ips]);
    assert_eq!(got[0].families.len(), 1);
    let fam = &got[0].families[0];
    assert_eq!(fam.family, IpFamily::IPv4);
    assert_eq!(fam.cluster(), &sa(&["10.0.0.1:8080"])[..]);

    // Only other-family slices: the service has no endpoints in its family.
    let got = resolve(&svc, &[&v6, &fqdn_ips]);
    let fam = got[0].family(IpFamily::IPv4).unwrap();
    assert!(!fam.has_any_endpoints);
    assert!(fam.all_reachable.is_empty());
}

#[test]
fn ports_are_matched_by_name_and_protocol() {
    let svc = service(json!({
        "clusterIP": "10.96.0.53",
        "ports": [
            {"name": "dns", "port": 53, "protocol": "UDP"},
            {"name": "dns-tcp", "port": 53, "protocol": "TCP"},
            {"name": "metrics", "port": 9153, "protocol": "TCP"},
        ]
    }));
    let s = slice(
        "web-a",
        "IPv4",
        json!([
            {"name": "dns", "port": 5353, "protocol": "TCP"},
            {"name": "dns", "port": 53, "protocol": "UDP"},
            {"name": "dns-tcp", "port": 1053, "protocol": "TCP"},
            {"name": "metrics", "port": 9999, "protocol": "UDP"},
        ]),
        json!([ready("10.0.0.1")]),
    );
    let got = resolve(&svc, &[&s]);
    let by_name = |n: &str| {
        got.iter()
            .find(|p| p.name.port_name == n)
            .unwrap()
            .family(IpFamily::IPv4)
            .unwrap()
            .clone()
    };
    assert_eq!(by_name("dns").cluster(), &sa(&["10.0.0.1:53"])[..]);
    assert_eq!(by_name("dns-tcp").cluster(), &sa(&["10.0.0.1:1053"])[..]);
    // The slice names `metrics` only for UDP: the TCP service port has no endpoints.
    let metrics = by_name("metrics");
    assert!(metrics.cluster().is_empty());
    assert!(!metrics.has_any_endpoints);
    assert_eq!(metrics.when_empty(), NoEndpointVerdict::Reject);
}

#[test]
fn unnamed_port_matches_unnamed_slice_port() {
    let svc = service(json!({"clusterIP": "10.96.0.10", "ports": [{"port": 80}]}));
    let unnamed = slice(
        "web-a",
        "IPv4",
        json!([{"port": 8080}]),
        json!([ready("10.0.0.1")]),
    );
    let named = slice(
        "web-b",
        "IPv4",
        json!([{"name": "http", "port": 9090}]),
        json!([ready("10.0.0.2")]),
    );
    let got = resolve(&svc, &[&unnamed, &named]);
    assert_eq!(got[0].name.port_name, "");
    assert_eq!(
        got[0].family(IpFamily::IPv4).unwrap().cluster(),
        &sa(&["10.0.0.1:8080"])[..]
    );
}

#[test]
fn dual_stack_gets_one_routing_per_family() {
    let svc = service(json!({
        "clusterIP": "fd00::10",
        "clusterIPs": ["fd00::10", "10.96.0.10"],
        "ipFamilies": ["IPv6", "IPv4"],
        "ports": [{"name": "http", "port": 80}]
    }));
    let v4 = http_slice(
        "web-a",
        "IPv4",
        json!([ready("10.0.0.1"), ready("10.0.0.2")]),
    );
    let v6 = http_slice("web-b", "IPv6", json!([ready("fd00::1")]));
    let got = resolve(&svc, &[&v6, &v4]);
    let port = &got[0];
    // IPv4 first whatever the order of clusterIPs.
    let fams: Vec<IpFamily> = port.families.iter().map(|f| f.family).collect();
    assert_eq!(fams, vec![IpFamily::IPv4, IpFamily::IPv6]);
    let f4 = port.family(IpFamily::IPv4).unwrap();
    let f6 = port.family(IpFamily::IPv6).unwrap();
    assert_eq!(f4.cluster_ip, "10.96.0.10".parse::<IpAddr>().unwrap());
    assert_eq!(f6.cluster_ip, "fd00::10".parse::<IpAddr>().unwrap());
    assert_eq!(f4.cluster(), &sa(&["10.0.0.1:8080", "10.0.0.2:8080"])[..]);
    assert_eq!(f6.cluster(), &sa(&["[fd00::1]:8080"])[..]);

    // A proxy handling only IPv6 resolves only that family.
    let config = ProxyConfig {
        ip_families: vec![IpFamily::IPv6],
        ..ProxyConfig::default()
    };
    let got = resolve_with(&svc, &[&v4, &v6], &config);
    let fams: Vec<IpFamily> = got[0].families.iter().map(|f| f.family).collect();
    assert_eq!(fams, vec![IpFamily::IPv6]);

    // A single-stack service gets no routing in the family it has no ClusterIP in, even when
    // slices of that family exist.
    let got = resolve(&web_v4(), &[&v4, &v6]);
    let fams: Vec<IpFamily> = got[0].families.iter().map(|f| f.family).collect();
    assert_eq!(fams, vec![IpFamily::IPv4]);
}

#[test]
fn external_and_load_balancer_ips_are_split_by_family() {
    let svc = service_with_status(
        json!({
            "type": "LoadBalancer",
            "clusterIP": "10.96.0.10",
            "clusterIPs": ["10.96.0.10", "fd00::10"],
            "ports": [{"name": "http", "port": 80, "nodePort": 30080}],
            "externalIPs": ["192.0.2.1", "2001:db8::1", "192.0.2.2"]
        }),
        json!({"loadBalancer": {"ingress": [{"ip": "203.0.113.1"}, {"ip": "2001:db8::100"}]}}),
    );
    let got = resolve(&svc, &[]);
    let port = &got[0];
    assert_eq!(port.node_port, Some(30080));
    let f4 = port.family(IpFamily::IPv4).unwrap();
    let f6 = port.family(IpFamily::IPv6).unwrap();
    assert_eq!(f4.external_ips, ips(&["192.0.2.1", "192.0.2.2"]));
    assert_eq!(f6.external_ips, ips(&["2001:db8::1"]));
    assert_eq!(f4.load_balancer_ips, ips(&["203.0.113.1"]));
    assert_eq!(f6.load_balancer_ips, ips(&["2001:db8::100"]));
    assert!(f4.externally_accessible && f6.externally_accessible);
    assert_eq!(f4.firewall_allowed_sources, None);

    // Without a NodePort, only the family that has externalIPs is externally accessible.
    let svc = service(json!({
        "clusterIP": "10.96.0.10",
        "clusterIPs": ["10.96.0.10", "fd00::10"],
        "ports": [{"name": "http", "port": 80}],
        "externalIPs": ["2001:db8::1"]
    }));
    let got = resolve(&svc, &[]);
    assert!(!got[0].family(IpFamily::IPv4).unwrap().externally_accessible);
    assert!(got[0].family(IpFamily::IPv6).unwrap().externally_accessible);
}

#[test]
fn external_accessibility_decides_whether_etp_local_is_used() {
    let endpoints = http_slice(
        "web-a",
        "IPv4",
        json!([{"addresses": ["10.0.0.1"], "nodeName": "node"}, ready("10.0.0.2")]),
    );
    // eTP=Local on a NodePort service: both sets are used.
    let svc = service(json!({
        "type": "NodePort", "clusterIP": "10.96.0.10",
        "ports": [{"name": "http", "port": 80, "nodePort": 30080}],
        "externalTrafficPolicy": "Local"
    }));
    let got = resolve(&svc, &[&endpoints]);
    let f = got[0].family(IpFamily::IPv4).unwrap();
    assert_eq!(got[0].external_traffic_policy, TrafficPolicy::Local);
    assert_eq!(
        f.cluster_endpoints.as_deref(),
        Some(&sa(&["10.0.0.1:8080", "10.0.0.2:8080"])[..])
    );
    assert_eq!(
        f.local_endpoints.as_deref(),
        Some(&sa(&["10.0.0.1:8080"])[..])
    );
    assert_eq!(
        f.endpoints(TrafficPolicy::Local),
        &sa(&["10.0.0.1:8080"])[..]
    );

    // iTP=Local on an internal-only service: only the local set is used.
    let svc = service(json!({
        "clusterIP": "10.96.0.10",
        "ports": [{"name": "http", "port": 80}],
        "internalTrafficPolicy": "Local"
    }));
    let got = resolve(&svc, &[&endpoints]);
    let f = got[0].family(IpFamily::IPv4).unwrap();
    assert_eq!(f.cluster_endpoints, None);
    assert_eq!(
        f.endpoints(TrafficPolicy::Local),
        &sa(&["10.0.0.1:8080"])[..]
    );
}

fn lb_with_ranges(ranges: &[&str]) -> ServiceInfo {
    service_with_status(
        json!({
            "type": "LoadBalancer",
            "clusterIP": "10.96.0.10",
            "clusterIPs": ["10.96.0.10", "fd00::10"],
            "ports": [{"name": "http", "port": 80, "nodePort": 30080}],
            "loadBalancerSourceRanges": ranges,
        }),
        json!({"loadBalancer": {"ingress": [{"ip": "203.0.113.1"}, {"ip": "2001:db8::100"}]}}),
    )
}

fn firewall_of(svc: &ServiceInfo, node_ips: &[&str], family: IpFamily) -> Option<Vec<IpNet>> {
    let config = ProxyConfig {
        node_ips: ips(node_ips),
        ..ProxyConfig::default()
    };
    let got = resolve_with(svc, &[], &config);
    got[0]
        .family(family)
        .unwrap()
        .firewall_allowed_sources
        .clone()
}

#[test]
fn firewall_allows_source_ranges_of_the_family() {
    let svc = lb_with_ranges(&["198.51.100.0/24", "2001:db8:1::/48"]);
    // Node primary IP outside the ranges: only the ranges.
    assert_eq!(
        firewall_of(&svc, &["10.1.0.5", "fd01::5"], IpFamily::IPv4),
        Some(nets(&["198.51.100.0/24"]))
    );
    assert_eq!(
        firewall_of(&svc, &["10.1.0.5", "fd01::5"], IpFamily::IPv6),
        Some(nets(&["2001:db8:1::/48"]))
    );
    // No node IPs at all: the same.
    assert_eq!(
        firewall_of(&svc, &[], IpFamily::IPv4),
        Some(nets(&["198.51.100.0/24"]))
    );
}

#[test]
fn firewall_adds_lb_ips_when_the_node_is_inside_a_range() {
    let svc = lb_with_ranges(&["198.51.100.0/24", "2001:db8:1::/48"]);
    // The primary (first) IPv4 is inside; the IPv6 one is not.
    assert_eq!(
        firewall_of(&svc, &["198.51.100.7", "fd01::5"], IpFamily::IPv4),
        Some(nets(&["198.51.100.0/24", "203.0.113.1/32"]))
    );
    assert_eq!(
        firewall_of(&svc, &["198.51.100.7", "fd01::5"], IpFamily::IPv6),
        Some(nets(&["2001:db8:1::/48"]))
    );
    assert_eq!(
        firewall_of(&svc, &["10.1.0.5", "2001:db8:1::9"], IpFamily::IPv6),
        Some(nets(&["2001:db8:1::/48", "2001:db8::100/128"]))
    );
    // Only the primary IP counts: a secondary IPv4 inside the range does not.
    assert_eq!(
        firewall_of(&svc, &["10.1.0.5", "198.51.100.7"], IpFamily::IPv4),
        Some(nets(&["198.51.100.0/24"]))
    );
}

#[test]
fn firewall_with_ranges_only_of_the_other_family_blocks() {
    let svc = lb_with_ranges(&["2001:db8:1::/48"]);
    assert_eq!(
        firewall_of(&svc, &["10.1.0.5"], IpFamily::IPv4),
        Some(Vec::new())
    );
    assert_eq!(
        firewall_of(&svc, &["10.1.0.5"], IpFamily::IPv6),
        Some(nets(&["2001:db8:1::/48"]))
    );
}

#[test]
fn no_firewall_without_ranges_or_without_lb_ips() {
    let svc = lb_with_ranges(&[]);
    assert_eq!(firewall_of(&svc, &["10.1.0.5"], IpFamily::IPv4), None);
    // Ranges but no LB IP in the family (IPv4 ingress only): nothing to guard in IPv6.
    let svc = service_with_status(
        json!({
            "type": "LoadBalancer",
            "clusterIP": "10.96.0.10",
            "clusterIPs": ["10.96.0.10", "fd00::10"],
            "ports": [{"name": "http", "port": 80, "nodePort": 30080}],
            "loadBalancerSourceRanges": ["198.51.100.0/24", "2001:db8:1::/48"],
        }),
        json!({"loadBalancer": {"ingress": [{"ip": "203.0.113.1"}]}}),
    );
    assert_eq!(
        firewall_of(&svc, &["10.1.0.5"], IpFamily::IPv4),
        Some(nets(&["198.51.100.0/24"]))
    );
    assert_eq!(firewall_of(&svc, &["10.1.0.5"], IpFamily::IPv6), None);
}

#[test]
fn headless_and_external_name_get_no_ports() {
    let endpoints = http_slice("web-a", "IPv4", json!([ready("10.0.0.1")]));
    let headless = service(json!({"clusterIP": "None", "ports": [{"name": "http", "port": 80}]}));
    assert!(resolve(&headless, &[&endpoints]).is_empty());
    let external_name = service(json!({
        "type": "ExternalName",
        "externalName": "db.example.com",
        "ports": [{"name": "http", "port": 80}]
    }));
    assert!(resolve(&external_name, &[&endpoints]).is_empty());
}

#[test]
fn service_without_slices_has_no_endpoints() {
    let svc = service(json!({
        "clusterIP": "10.96.0.10",
        "ports": [{"name": "http", "port": 80}, {"name": "https", "port": 443}],
        "sessionAffinity": "ClientIP",
        "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}}
    }));
    let got = resolve(&svc, &[]);
    assert_eq!(got.len(), 2);
    for port in &got {
        assert_eq!(port.affinity_timeout, Some(60));
        assert_eq!(port.name.service.to_string(), "ns/web");
        let f = port.family(IpFamily::IPv4).unwrap();
        assert!(!f.has_any_endpoints);
        assert_eq!(f.cluster_endpoints.as_deref(), Some(&[][..]));
        assert_eq!(f.local_endpoints, None);
        assert!(f.all_reachable.is_empty());
        assert_eq!(f.when_empty(), NoEndpointVerdict::Reject);
    }
    let names: Vec<String> = got.iter().map(|p| p.name.to_string()).collect();
    assert_eq!(names, vec!["ns/web:http", "ns/web:https"]);
    assert_eq!(got[1].port, 443);
}

#[test]
fn local_ready_count_ignores_remote_and_terminating_endpoints() {
    let config = ProxyConfig {
        node_name: "here".into(),
        ..ProxyConfig::default()
    };
    let s = http_slice(
        "web-1",
        "IPv4",
        json!([
            {"addresses": ["10.0.0.1"], "nodeName": "here"},
            {"addresses": ["10.0.0.2"], "nodeName": "here",
             "conditions": {"ready": false, "serving": true, "terminating": true}},
            {"addresses": ["10.0.0.3"], "nodeName": "remote"}
        ]),
    );
    let ports = resolve_with(&web_v4(), &[&s], &config);
    assert_eq!(ports[0].families[0].local_ready_endpoints, 1);
    let only_terminating = http_slice("web-1", "IPv4", json!([terminating("10.0.0.2")]));
    let ports = resolve_with(&web_v4(), &[&only_terminating], &config);
    assert_eq!(ports[0].families[0].local_ready_endpoints, 0);
}

#[test]
fn the_union_shares_the_cluster_list_when_equal() {
    let s = http_slice(
        "web-1",
        "IPv4",
        json!([ready("10.0.0.1"), ready("10.0.0.2")]),
    );
    let ports = resolve(&web_v4(), &[&s]);
    let f = &ports[0].families[0];
    let cluster = f.cluster_endpoints.as_ref().unwrap();
    assert!(std::sync::Arc::ptr_eq(cluster, &f.all_reachable));
}
