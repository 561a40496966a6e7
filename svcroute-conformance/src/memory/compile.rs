//! Rendering: the proxy's settings and each resolved service port become table elements
//! (pure; no kernel access).
//!
//! Per service port and family (`H` = hash of the service port's name):
//!
//! ```text
//! service  clusterIP . proto . port        → goto int-H   (masquerade per settings, then svc-H or svl-H)
//! service  externalIP/LB IP . proto . port → goto ext-H   (masquerade per eTP, then svc-H / svl-H)
//! nodeport proto . nodePort                → goto ext-H
//! firewall LB IP . proto . port            → goto fw-H    (allowed sources return, the rest drop)
//! chain svc-H / svl-H: affinity checks, then numgen random over sep-H-E chains
//! chain sep-H-E: hairpin masquerade, dnat to the endpoint
//! cluster-ip / health-check set elements
//! ```
//!
//! A port without any usable endpoint gets `int-H` / `ext-H` chains that reject.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ipnet::IpNet;
use svcroute_core::model::{IpFamily, NodePortAddresses, ProxyConfig, TrafficPolicy};
use svcroute_core::select::{
    FamilyRouting, NoEndpointVerdict, ResolvedServicePort, ServicePortName,
};

use super::kernel::{Action, Key, Match, Rule, SetName, Table, Value};

/// Our table for a family.
pub(crate) fn table_name(family: IpFamily) -> &'static str {
    match family {
        IpFamily::IPv4 => "svcroute-ip",
        IpFamily::IPv6 => "svcroute-ip6",
    }
}

/// FNV-1a, 64 bits: stable names that never contain user strings.
fn fnv(data: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in data.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The hash naming a service port's chains.
pub(crate) fn port_hash(name: &ServicePortName) -> String {
    format!(
        "{:016x}",
        fnv(&format!(
            "{}/{}/{}/{}",
            name.service.namespace,
            name.service.name,
            name.port_name,
            name.protocol.lower()
        ))
    )
}

fn host_net(ip: IpAddr) -> IpNet {
    IpNet::from(ip)
}

fn loopback_net(family: IpFamily) -> IpNet {
    match family {
        IpFamily::IPv4 => IpNet::new_assert(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 0)), 8),
        IpFamily::IPv6 => IpNet::new_assert(IpAddr::V6(Ipv6Addr::LOCALHOST), 128),
    }
}

/// The intersection of two prefixes (one contains the other, or they are disjoint).
fn intersect(a: &IpNet, b: &IpNet) -> Option<IpNet> {
    if a.contains(b) {
        Some(*b)
    } else if b.contains(a) {
        Some(*a)
    } else {
        None
    }
}

/// The global sets of a family's table.
pub(crate) fn globals(config: &ProxyConfig, family: IpFamily) -> Table {
    let of_family = |net: &&IpNet| IpFamily::of(&net.addr()) == family;
    let node_ips: Vec<IpAddr> = config
        .node_ips
        .iter()
        .copied()
        .filter(|ip| IpFamily::of(ip) == family)
        .collect();
    let non_loopback: Vec<IpAddr> = node_ips
        .iter()
        .copied()
        .filter(|ip| !ip.is_loopback())
        .collect();

    let pods: Vec<IpNet> = config
        .cluster_cidrs
        .iter()
        .filter(of_family)
        .copied()
        .collect();

    let mut local: Vec<IpNet> = node_ips.iter().copied().map(host_net).collect();
    local.push(loopback_net(family));

    // NodePorts answer on node addresses chosen by --nodeport-addresses, and on 127.0.0.0/8
    // (IPv4 only) when localhost NodePorts are on and the addresses allow it.
    let loopback = loopback_net(family);
    let localhost = family == IpFamily::IPv4 && config.localhost_nodeports;
    let mut nodeport: Vec<IpNet> = match &config.nodeport_addresses {
        NodePortAddresses::All => {
            let mut v: Vec<IpNet> = non_loopback.iter().copied().map(host_net).collect();
            if localhost {
                v.push(loopback);
            }
            v
        }
        NodePortAddresses::Primary => node_ips
            .first()
            .filter(|ip| !ip.is_loopback())
            .map(|ip| vec![host_net(*ip)])
            .unwrap_or_default(),
        NodePortAddresses::Cidrs(cidrs) => {
            let mut v: Vec<IpNet> = non_loopback
                .iter()
                .copied()
                .filter(|ip| cidrs.iter().any(|c| c.contains(ip)))
                .map(host_net)
                .collect();
            if localhost {
                v.extend(cidrs.iter().filter_map(|c| intersect(c, &loopback)));
            }
            v
        }
    };
    nodeport.sort();
    nodeport.dedup();

    let services: Vec<IpNet> = config
        .service_cidrs
        .iter()
        .filter(of_family)
        .copied()
        .collect();

    let mut t = Table::new();
    t.insert(Key::Set(SetName::PodCidrs), Value::Nets(pods));
    t.insert(Key::Set(SetName::LocalAddresses), Value::Nets(local));
    t.insert(Key::Set(SetName::NodePortAddresses), Value::Nets(nodeport));
    t.insert(Key::Set(SetName::ServiceCidrs), Value::Nets(services));
    t
}

/// Chain names of one service port in one family.
struct Names {
    hash: String,
    int: String,
    ext: String,
    fw: String,
    svc: String,
    svl: String,
}

impl Names {
    fn new(hash: &str, family: IpFamily) -> Self {
        let f = match family {
            IpFamily::IPv4 => "4",
            IpFamily::IPv6 => "6",
        };
        Names {
            hash: hash.to_string(),
            int: format!("int{f}-{hash}"),
            ext: format!("ext{f}-{hash}"),
            fw: format!("fw{f}-{hash}"),
            svc: format!("svc{f}-{hash}"),
            svl: format!("svl{f}-{hash}"),
        }
    }

    fn sep(&self, endpoint: &SocketAddr) -> String {
        format!(
            "sep-{}-{:08x}",
            self.hash,
            fnv(&format!("{}/{endpoint}", self.hash)) as u32
        )
    }
}

/// The elements one service port contributes, per family it has.
pub(crate) fn port(config: &ProxyConfig, port: &ResolvedServicePort) -> BTreeMap<IpFamily, Table> {
    let hash = port_hash(&port.name);
    port.families
        .iter()
        .filter(|f| config.handles(f.family))
        .map(|fam| (fam.family, family_elements(config, port, fam, &hash)))
        .collect()
}

fn family_elements(
    config: &ProxyConfig,
    port: &ResolvedServicePort,
    fam: &FamilyRouting,
    hash: &str,
) -> Table {
    let names = Names::new(hash, fam.family);
    let proto = port.name.protocol;
    let mut t = Table::new();
    let chain = |t: &mut Table, name: &str, rules: Vec<Rule>| {
        t.insert(Key::Chain(name.to_string()), Value::Rules(rules));
    };

    t.insert(
        Key::ClusterIp(fam.cluster_ip, hash.to_string()),
        Value::Present,
    );
    if let Some(hc) = port.health_check_node_port {
        t.insert(Key::HealthCheck(hc, hash.to_string()), Value::Present);
    }

    // Dispatch.
    t.insert(
        Key::Service(fam.cluster_ip, proto, port.port),
        Value::Goto(names.int.clone()),
    );
    let external: Vec<IpAddr> = fam
        .external_ips
        .iter()
        .chain(fam.load_balancer_ips.iter())
        .copied()
        .collect();
    for ip in &external {
        t.insert(
            Key::Service(*ip, proto, port.port),
            Value::Goto(names.ext.clone()),
        );
    }
    if let Some(np) = port.node_port {
        t.insert(Key::NodePort(proto, np), Value::Goto(names.ext.clone()));
    }
    let has_external = !external.is_empty() || port.node_port.is_some();

    // Source-range firewall, before DNAT, endpoints or not.
    if let Some(allowed) = &fam.firewall_allowed_sources
        && !fam.load_balancer_ips.is_empty()
    {
        for ip in &fam.load_balancer_ips {
            t.insert(
                Key::Firewall(*ip, proto, port.port),
                Value::Goto(names.fw.clone()),
            );
        }
        let mut rules = Vec::new();
        if !allowed.is_empty() {
            rules.push(Rule::when(Match::SrcIn(allowed.clone()), Action::Return));
        }
        rules.push(Rule::always(Action::Drop));
        chain(&mut t, &names.fw, rules);
    }

    if !fam.has_any_endpoints {
        chain(&mut t, &names.int, vec![Rule::always(Action::Reject)]);
        if has_external {
            chain(&mut t, &names.ext, vec![Rule::always(Action::Reject)]);
        }
        return t;
    }

    // Internal (ClusterIP) traffic.
    let mut int = Vec::new();
    if config.masquerade_all {
        int.push(Rule::always(Action::MarkMasquerade));
    } else if config.has_local_detector() {
        int.push(Rule::when(
            Match::SrcNotInSet(SetName::PodCidrs),
            Action::MarkMasquerade,
        ));
    }
    let internal_target = match port.internal_traffic_policy {
        TrafficPolicy::Cluster => &names.svc,
        TrafficPolicy::Local => &names.svl,
    };
    int.push(Rule::always(Action::Goto(internal_target.clone())));
    chain(&mut t, &names.int, int);

    let mut need_svc = port.internal_traffic_policy == TrafficPolicy::Cluster;
    let mut need_svl = port.internal_traffic_policy == TrafficPolicy::Local;

    // External traffic (NodePort, externalIPs, LB IPs).
    if has_external {
        let mut ext = Vec::new();
        match port.external_traffic_policy {
            TrafficPolicy::Cluster => {
                ext.push(Rule::always(Action::MarkMasquerade));
                ext.push(Rule::always(Action::Goto(names.svc.clone())));
            }
            TrafficPolicy::Local => {
                if config.has_local_detector() {
                    // Pods short-circuit to the cluster-wide endpoints, keeping their source.
                    ext.push(Rule::when(
                        Match::SrcInSet(SetName::PodCidrs),
                        Action::Goto(names.svc.clone()),
                    ));
                }
                ext.push(Rule::when(
                    Match::SrcInSet(SetName::LocalAddresses),
                    Action::MarkMasquerade,
                ));
                ext.push(Rule::when(
                    Match::SrcInSet(SetName::LocalAddresses),
                    Action::Goto(names.svc.clone()),
                ));
                ext.push(Rule::always(Action::Goto(names.svl.clone())));
                need_svl = true;
            }
        }
        need_svc = true;
        chain(&mut t, &names.ext, ext);
    }

    let empty_verdict = match fam.when_empty() {
        NoEndpointVerdict::Reject => Action::Reject,
        NoEndpointVerdict::Drop => Action::Drop,
    };
    let endpoint_chain = |t: &mut Table, name: &str, set: Option<&[SocketAddr]>| {
        let eps: &[SocketAddr] = set.unwrap_or_default();
        if eps.is_empty() {
            chain(t, name, vec![Rule::always(empty_verdict.clone())]);
            return;
        }
        let mut rules = Vec::new();
        if let Some(timeout) = port.affinity_timeout {
            for e in eps {
                rules.push(Rule::always(Action::AffinityGoto {
                    chain: names.sep(e),
                    timeout,
                }));
            }
        }
        rules.push(Rule::always(Action::RandomGoto(
            eps.iter().map(|e| names.sep(e)).collect(),
        )));
        chain(t, name, rules);
        for e in eps {
            chain(
                t,
                &names.sep(e),
                vec![
                    Rule::when(Match::SrcIs(e.ip()), Action::MarkMasquerade),
                    Rule::always(Action::Dnat(*e)),
                ],
            );
        }
    };
    if need_svc {
        endpoint_chain(&mut t, &names.svc, fam.cluster_endpoints.as_deref());
    }
    if need_svl {
        endpoint_chain(&mut t, &names.svl, fam.local_endpoints.as_deref());
    }
    t
}
