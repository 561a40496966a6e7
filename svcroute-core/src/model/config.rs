//! The proxy's own settings: which node this is and how it treats traffic.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::validate::Ctx;
use super::{IpFamily, ObjectKind, Problem, ValidationError};

/// Default masquerade bit: mark 0x4000.
pub const DEFAULT_MASQUERADE_BIT: u8 = 14;

/// Which node addresses accept NodePort traffic (`--nodeport-addresses`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum NodePortAddresses {
    /// Every local address (`addrtype LOCAL`), kube-proxy's iptables default.
    #[default]
    All,
    /// The node's primary IP of each family.
    Primary,
    /// Node addresses inside these CIDRs.
    Cidrs(Vec<IpNet>),
}

/// The proxy's settings, validated (`ProxyConfig::validate`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ProxyConfig {
    /// This node's name (`--hostname-override` / `--node-name`).
    pub node_name: String,
    /// This node's labels; a Node object of the same name replaces them.
    pub node_labels: BTreeMap<String, String>,
    /// This node's IPs; the first of each family is its primary IP.
    pub node_ips: Vec<IpAddr>,
    /// Pod CIDRs whose traffic counts as local (`--cluster-cidr`); empty = no local-traffic
    /// detector, so ClusterIP traffic is never masqueraded unless `masquerade_all`.
    pub cluster_cidrs: Vec<IpNet>,
    /// Masquerade all ClusterIP traffic (`--masquerade-all`).
    pub masquerade_all: bool,
    /// Bit of the packet mark used to request masquerade (`--iptables-masquerade-bit`), 0..=31.
    pub masquerade_bit: u8,
    /// `--nodeport-addresses`.
    pub nodeport_addresses: NodePortAddresses,
    /// Whether NodePorts answer on 127.0.0.0/8 (IPv4 only; never on ::1).
    pub localhost_nodeports: bool,
    /// Service CIDRs: traffic to unallocated addresses in them is dropped.
    pub service_cidrs: Vec<IpNet>,
    /// IP families this proxy programs.
    pub ip_families: Vec<IpFamily>,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            node_name: "node".to_string(),
            node_labels: BTreeMap::new(),
            node_ips: Vec::new(),
            cluster_cidrs: Vec::new(),
            masquerade_all: false,
            masquerade_bit: DEFAULT_MASQUERADE_BIT,
            nodeport_addresses: NodePortAddresses::All,
            localhost_nodeports: true,
            service_cidrs: Vec::new(),
            ip_families: IpFamily::ALL.to_vec(),
        }
    }
}

impl ProxyConfig {
    /// Checks the settings; every problem names its field (by its flag's key).
    pub fn validate(&self) -> Result<(), ValidationError> {
        let cx = Ctx::new(ObjectKind::ProxyConfig, None, Some(&self.node_name));
        cx.dns_subdomain("nodeName", &self.node_name)?;
        super::node::validate_labels(&cx, "nodeLabels", &self.node_labels)?;
        if self.masquerade_bit > 31 {
            return Err(cx.err(
                "masqueradeBit",
                Problem::OutOfRange {
                    value: i64::from(self.masquerade_bit),
                    min: 0,
                    max: 31,
                },
            ));
        }
        if self.ip_families.is_empty() {
            return Err(cx.err("ipFamilies", Problem::Missing));
        }
        cx.max_len("nodeIPs", &self.node_ips, 64)?;
        cx.max_len("clusterCIDRs", &self.cluster_cidrs, 64)?;
        cx.max_len("serviceCIDRs", &self.service_cidrs, 64)?;
        if let NodePortAddresses::Cidrs(c) = &self.nodeport_addresses {
            cx.max_len("nodePortAddresses", c, 64)?;
        }
        if self.nodeport_addresses == NodePortAddresses::Primary && self.node_ips.is_empty() {
            return Err(cx.err(
                "nodePortAddresses",
                Problem::Forbidden("\"primary\" needs at least one node IP"),
            ));
        }
        Ok(())
    }

    /// The packet mark that requests masquerade.
    pub fn masquerade_mark(&self) -> u32 {
        1u32 << self.masquerade_bit
    }

    /// Whether the proxy programs this family.
    pub fn handles(&self, family: IpFamily) -> bool {
        self.ip_families.contains(&family)
    }

    /// The primary (first) node IP of a family.
    pub fn primary_ip(&self, family: IpFamily) -> Option<IpAddr> {
        self.node_ips
            .iter()
            .copied()
            .find(|ip| IpFamily::of(ip) == family)
    }

    /// Whether `ip` is one of this node's own addresses (loopback included), i.e. traffic from
    /// it is node-originated (`--src-type LOCAL`).
    pub fn is_node_address(&self, ip: IpAddr) -> bool {
        ip.is_loopback() || self.node_ips.contains(&ip)
    }

    /// Whether traffic from `ip` comes from a local pod (the ClusterCIDR local-traffic
    /// detector); always false without cluster CIDRs.
    pub fn is_pod_source(&self, ip: IpAddr) -> bool {
        self.cluster_cidrs.iter().any(|c| c.contains(&ip))
    }

    /// Whether a local-traffic detector is configured.
    pub fn has_local_detector(&self) -> bool {
        !self.cluster_cidrs.is_empty()
    }

    /// Whether a packet to `ip` may hit a NodePort: a node address permitted by
    /// `nodeport_addresses`, or 127.0.0.0/8 when localhost NodePorts are on (never `::1`).
    pub fn accepts_nodeport_on(&self, ip: IpAddr) -> bool {
        if ip.is_loopback() {
            return match ip {
                IpAddr::V4(_) => {
                    self.localhost_nodeports
                        && match &self.nodeport_addresses {
                            NodePortAddresses::All => true,
                            NodePortAddresses::Primary => false,
                            NodePortAddresses::Cidrs(c) => c.iter().any(|n| n.contains(&ip)),
                        }
                }
                IpAddr::V6(_) => false,
            };
        }
        match &self.nodeport_addresses {
            NodePortAddresses::All => self.node_ips.contains(&ip),
            NodePortAddresses::Primary => self.primary_ip(IpFamily::of(&ip)) == Some(ip),
            NodePortAddresses::Cidrs(c) => {
                self.node_ips.contains(&ip) && c.iter().any(|n| n.contains(&ip))
            }
        }
    }

    /// The addresses of `family` that accept NodePort traffic: the permitted node IPs, plus
    /// 127.0.0.1 when localhost NodePorts are on.
    pub fn nodeport_addresses(&self, family: IpFamily) -> Vec<IpAddr> {
        let mut out: Vec<IpAddr> = self
            .node_ips
            .iter()
            .copied()
            .filter(|ip| IpFamily::of(ip) == family && self.accepts_nodeport_on(*ip))
            .collect();
        let localhost = IpAddr::from([127, 0, 0, 1]);
        if family == IpFamily::IPv4
            && self.accepts_nodeport_on(localhost)
            && !out.contains(&localhost)
        {
            out.push(localhost);
        }
        out
    }

    /// The networks of `family` NodePorts are open on when `nodeport_addresses` restricts
    /// them, exactly the addresses [`ProxyConfig::accepts_nodeport_on`] accepts: the permitted
    /// node IPs (as host networks) and, with localhost NodePorts, the parts of 127.0.0.0/8 the
    /// CIDRs cover. `None` for [`NodePortAddresses::All`]: every local address but loopback
    /// (IPv4 loopback too when localhost NodePorts are on), which a dataplane matches by
    /// address type rather than by list.
    pub fn nodeport_networks(&self, family: IpFamily) -> Option<BTreeSet<IpNet>> {
        let loopback4 = IpNet::new_assert(IpAddr::from([127, 0, 0, 0]), 8);
        let localhost = family == IpFamily::IPv4 && self.localhost_nodeports;
        let cidrs = match &self.nodeport_addresses {
            NodePortAddresses::All => return None,
            NodePortAddresses::Primary => {
                return Some(
                    self.primary_ip(family)
                        .filter(|ip| !ip.is_loopback())
                        .map(IpNet::from)
                        .into_iter()
                        .collect(),
                );
            }
            NodePortAddresses::Cidrs(cidrs) => cidrs,
        };
        let mut nets: BTreeSet<IpNet> = self
            .node_ips
            .iter()
            .filter(|ip| IpFamily::of(ip) == family && !ip.is_loopback())
            .filter(|ip| cidrs.iter().any(|n| n.contains(*ip)))
            .map(|ip| IpNet::from(*ip))
            .collect();
        if localhost {
            for cidr in cidrs {
                if cidr.contains(&loopback4) {
                    nets.insert(loopback4);
                } else if loopback4.contains(cidr) {
                    nets.insert(cidr.trunc());
                }
            }
        }
        Some(nets)
    }

    /// This node's zone label (`topology.kubernetes.io/zone`), if any.
    pub fn zone(&self) -> Option<&str> {
        self.node_labels.get(super::LABEL_ZONE).map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodeport_networks_hold_exactly_the_accepted_addresses() {
        let probes = [
            "10.0.0.1",
            "192.168.0.1",
            "10.0.0.9",
            "127.0.0.1",
            "127.0.5.5",
            "fd00::1",
            "::1",
        ];
        let settings = [
            NodePortAddresses::Primary,
            NodePortAddresses::Cidrs(vec!["10.0.0.0/8".parse().unwrap()]),
            NodePortAddresses::Cidrs(vec!["0.0.0.0/0".parse().unwrap(), "::/0".parse().unwrap()]),
            NodePortAddresses::Cidrs(vec!["127.0.0.0/16".parse().unwrap()]),
        ];
        for addresses in settings {
            for localhost in [false, true] {
                let c = config(addresses.clone(), localhost);
                for probe in probes {
                    let ip: IpAddr = probe.parse().unwrap();
                    let listed = c
                        .nodeport_networks(IpFamily::of(&ip))
                        .unwrap()
                        .iter()
                        .any(|n| n.contains(&ip));
                    assert_eq!(
                        listed,
                        c.accepts_nodeport_on(ip),
                        "{addresses:?} {localhost} {ip}"
                    );
                }
            }
        }
        assert_eq!(
            config(NodePortAddresses::All, true).nodeport_networks(IpFamily::IPv4),
            None
        );
    }

    fn config(addresses: NodePortAddresses, localhost: bool) -> ProxyConfig {
        ProxyConfig {
            node_ips: vec![
                "10.0.0.1".parse().unwrap(),
                "192.168.0.1".parse().unwrap(),
                "fd00::1".parse().unwrap(),
            ],
            nodeport_addresses: addresses,
            localhost_nodeports: localhost,
            ..ProxyConfig::default()
        }
    }

    fn ips(list: &[&str]) -> Vec<IpAddr> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn nodeport_addresses_follow_the_settings() {
        let all = config(NodePortAddresses::All, true);
        assert_eq!(
            all.nodeport_addresses(IpFamily::IPv4),
            ips(&["10.0.0.1", "192.168.0.1", "127.0.0.1"])
        );
        assert_eq!(all.nodeport_addresses(IpFamily::IPv6), ips(&["fd00::1"]));
        assert!(
            !all.accepts_nodeport_on("::1".parse().unwrap()),
            "never on ::1"
        );
        let no_localhost = config(NodePortAddresses::All, false);
        assert_eq!(
            no_localhost.nodeport_addresses(IpFamily::IPv4),
            ips(&["10.0.0.1", "192.168.0.1"])
        );
        let primary = config(NodePortAddresses::Primary, true);
        assert_eq!(
            primary.nodeport_addresses(IpFamily::IPv4),
            ips(&["10.0.0.1"])
        );
        let cidrs = config(
            NodePortAddresses::Cidrs(vec![
                "192.168.0.0/16".parse().unwrap(),
                "127.0.0.0/8".parse().unwrap(),
            ]),
            true,
        );
        assert_eq!(
            cidrs.nodeport_addresses(IpFamily::IPv4),
            ips(&["192.168.0.1", "127.0.0.1"])
        );
        assert!(cidrs.nodeport_addresses(IpFamily::IPv6).is_empty());
    }

    #[test]
    fn sources_are_classified() {
        let mut c = config(NodePortAddresses::All, true);
        assert!(c.is_node_address("127.0.0.1".parse().unwrap()));
        assert!(c.is_node_address("fd00::1".parse().unwrap()));
        assert!(!c.has_local_detector());
        assert!(!c.is_pod_source("10.244.0.5".parse().unwrap()));
        c.cluster_cidrs = vec!["10.244.0.0/16".parse().unwrap()];
        assert!(c.is_pod_source("10.244.0.5".parse().unwrap()));
        assert_eq!(c.masquerade_mark(), 0x4000);
        assert_eq!(
            c.primary_ip(IpFamily::IPv6),
            Some("fd00::1".parse().unwrap())
        );
    }
}
