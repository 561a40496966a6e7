//! Names of our tables, chains, sets and maps, and comment escaping. Per-service objects are
//! named by kube-proxy's hash of the service port (`svc-TCOU7JCQXEZGVUNU` is kube-dns's `dns`
//! UDP port, the same hash as the iptables backend's `KUBE-SVC-TCOU7JCQXEZGVUNU`), never by
//! user strings; user strings appear only in escaped comments.

use std::net::SocketAddr;

use svcroute_core::model::TrafficPolicy;
use svcroute_core::naming::{endpoint_hash, port_hash_of};
use svcroute_core::select::ServicePortName;

use crate::ruleset::endpoint_text;

/// The default name of our common table (one per family: `ip svcroute`, `ip6 svcroute`); the
/// shards are named after it ([`shard_table`]).
pub const TABLE: &str = "svcroute";

/// filter prerouting, before DNAT: the load-balancer source-range firewall.
pub const FILTER_PREROUTING: &str = "filter-prerouting";
/// filter output, before DNAT: the firewall for locally generated traffic.
pub const FILTER_OUTPUT_PRE_DNAT: &str = "filter-output-pre-dnat";
/// filter input: no-endpoint verdicts, undefined ClusterIP ports, health-check NodePorts.
pub const FILTER_INPUT: &str = "filter-input";
/// filter forward: no-endpoint verdicts and undefined ClusterIP ports.
pub const FILTER_FORWARD: &str = "filter-forward";
/// filter output, after DNAT: the same checks for locally generated traffic.
pub const FILTER_OUTPUT: &str = "filter-output";
/// nat prerouting: DNAT of arriving traffic.
pub const NAT_PREROUTING: &str = "nat-prerouting";
/// nat output: DNAT of locally generated traffic.
pub const NAT_OUTPUT: &str = "nat-output";
/// nat postrouting: masquerade.
pub const NAT_POSTROUTING: &str = "nat-postrouting";
/// Looks the destination up in [`FIREWALL_IPS`].
pub const FIREWALL_CHECK: &str = "firewall-check";
/// Looks the destination up in [`NO_ENDPOINT_SERVICES`].
pub const SERVICE_ENDPOINTS_CHECK: &str = "service-endpoints-check";
/// Looks NodePorts up in [`NO_ENDPOINT_NODEPORTS`].
pub const NODEPORT_ENDPOINTS_CHECK: &str = "nodeport-endpoints-check";
/// Rejects undefined ports of ClusterIPs, drops unallocated service-CIDR addresses.
pub const CLUSTER_IPS_CHECK: &str = "cluster-ips-check";
/// `reject` (verdict maps can only `goto` a chain that rejects).
pub const REJECT_CHAIN: &str = "reject-chain";
/// Dispatches every frontend through [`SERVICE_IPS`] and [`SERVICE_NODEPORTS`].
pub const SERVICES: &str = "services";
/// Masquerades marked traffic and hairpin traffic.
pub const MASQUERADING: &str = "masquerading";
/// Sets the masquerade mark.
pub const MARK_FOR_MASQUERADE: &str = "mark-for-masquerade";

/// Every ClusterIP (other ports are rejected).
pub const CLUSTER_IPS: &str = "cluster-ips";
/// The service CIDRs (unallocated addresses are dropped).
pub const SERVICE_CIDRS: &str = "service-cidrs";
/// The local pod CIDRs (the local-traffic detector).
pub const POD_CIDRS: &str = "pod-cidrs";
/// The node addresses NodePorts are open on, when `nodePortAddresses` restricts them.
pub const NODEPORT_IPS: &str = "nodeport-ips";
/// `endpoint . endpoint` pairs: an endpoint reaching itself through a service.
pub const HAIRPIN: &str = "hairpin";
/// TCP ports of the health-check NodePorts (accepted on node addresses).
pub const HEALTH_CHECK_PORTS: &str = "health-check-ports";
/// `LB IP . proto . port` → `goto fw-H`.
pub const FIREWALL_IPS: &str = "firewall-ips";
/// `IP . proto . port` → `goto svc-H | svl-H | ext-H`.
pub const SERVICE_IPS: &str = "service-ips";
/// `proto . nodePort` → `goto ext-H`.
pub const SERVICE_NODEPORTS: &str = "service-nodeports";
/// `proto . nodePort` of a shard's NodePorts: the nat hooks look a packet up here before
/// asking `fib` whether it is for a node address, which would cost every shard a route lookup
/// for every new connection.
pub const NODEPORT_KEYS: &str = "nodeport-keys";
/// `IP . proto . port` of frontends without usable endpoints → reject or drop.
pub const NO_ENDPOINT_SERVICES: &str = "no-endpoint-services";
/// `proto . nodePort` without usable endpoints → reject or drop.
pub const NO_ENDPOINT_NODEPORTS: &str = "no-endpoint-nodeports";

/// The name of shard `index` of the tables named `table` (`svcroute-0`, `svcroute-1`, ...);
/// `table` itself is the common table.
pub fn shard_table(table: &str, index: usize) -> String {
    format!("{table}-{index}")
}

/// Whether `name` is one of the tables named `table`: the common table or a shard.
pub fn is_ours(table: &str, name: &str) -> bool {
    match name.strip_prefix(table) {
        Some("") => true,
        Some(rest) => rest
            .strip_prefix('-')
            .is_some_and(|i| !i.is_empty() && i.bytes().all(|b| b.is_ascii_digit())),
        None => false,
    }
}

/// Whether shared set `set` lives in the common table (the filter hooks' and masquerading's
/// sets and maps) rather than in every shard (the nat hooks' frontend maps and the sets
/// their port chains read).
pub fn in_common_table(set: &str) -> bool {
    matches!(
        set,
        CLUSTER_IPS
            | SERVICE_CIDRS
            | HAIRPIN
            | HEALTH_CHECK_PORTS
            | FIREWALL_IPS
            | NO_ENDPOINT_SERVICES
            | NO_ENDPOINT_NODEPORTS
    )
}

/// The objects of one service port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortNames {
    /// `namespace/name:port`, what the hashes are made of.
    text: String,
    /// `namespace/name:port` escaped for a comment (words may follow it).
    pub display: String,
    /// `H`, the hash in the names of the port's objects.
    hash: String,
}

impl PortNames {
    /// The names of a service port's objects.
    pub fn new(name: &ServicePortName) -> Self {
        let text = port_text(name);
        let hash = port_hash_of(&text, name);
        PortNames {
            display: comment(&text),
            hash,
            text,
        }
    }

    /// `svc-H` (cluster-policy endpoints) or `svl-H` (local-policy endpoints).
    pub fn endpoints(&self, policy: TrafficPolicy) -> String {
        let prefix = match policy {
            TrafficPolicy::Cluster => "svc-",
            TrafficPolicy::Local => "svl-",
        };
        [prefix, &self.hash].concat()
    }

    /// `ext-H`: external traffic.
    pub fn ext(&self) -> String {
        ["ext-", &self.hash].concat()
    }

    /// `fw-H`: load-balancer source ranges.
    pub fn fw(&self) -> String {
        ["fw-", &self.hash].concat()
    }

    /// `aff-H`: ClientIP affinity, `client . endpoint ID` (see [`affinity_id`]).
    pub fn aff(&self) -> String {
        ["aff-", &self.hash].concat()
    }

    /// `sep-E`: the chain of one endpoint (only services with session affinity have them).
    pub fn sep(&self, name: &ServicePortName, endpoint: &SocketAddr) -> String {
        let hash = endpoint_hash(&self.text, name, &endpoint_text(endpoint));
        ["sep-", &hash].concat()
    }
}

/// `namespace/name:port` (`namespace/name` when the port is unnamed): the text of
/// [`ServicePortName`]'s `Display`, built without the formatting machinery (it is made for
/// every port of every full render).
fn port_text(name: &ServicePortName) -> String {
    let service = &name.service;
    let mut text = String::with_capacity(
        service.namespace.len() + service.name.len() + name.port_name.len() + 2,
    );
    text.push_str(&service.namespace);
    text.push('/');
    text.push_str(&service.name);
    if !name.port_name.is_empty() {
        text.push(':');
        text.push_str(&name.port_name);
    }
    text
}

/// The chain that picks an endpoint at random for an endpoint chain of a service with
/// ClientIP affinity (`svc-H` → `svc-H-pick`).
pub fn pick_chain(chain: &str) -> String {
    [chain, "-pick"].concat()
}

/// The endpoint map of an endpoint chain (`svc-H` → `svc-H-ep`).
pub fn endpoint_map(chain: &str) -> String {
    [chain, "-ep"].concat()
}

/// The ClientIP affinity ID an endpoint chain `sep-E` starts from: the first 31 bits of `E`
/// (base32). IDs tell a port's endpoints apart in its `aff-H` set; render bumps the rare
/// collision within a port to the next free value. Below 2^31, because nft prints a numgen
/// offset as a signed 32-bit number.
pub fn affinity_id(sep: &str) -> u32 {
    let hash = sep.strip_prefix("sep-").unwrap_or(sep);
    let mut bits: u64 = 0;
    for c in hash.bytes().take(7) {
        let value = match c {
            b'A'..=b'Z' => c - b'A',
            b'2'..=b'7' => c - b'2' + 26,
            _ => 0,
        };
        bits = (bits << 5) | u64::from(value);
    }
    // 7 characters are 35 bits: keep the first 31.
    (bits >> 4) as u32 & 0x7fff_ffff
}

/// Text made safe inside an nft comment: nft's quoted strings have no usable escapes, so
/// double quotes become single quotes, backslashes slashes and control characters spaces; cut
/// to 100 bytes, well under nft's 128-byte limit, leaving room for the words rules add.
pub fn comment(text: &str) -> String {
    const LIMIT: usize = 100;
    let mut out = String::with_capacity(text.len().min(LIMIT));
    for c in text.chars() {
        let c = match c {
            '"' => '\'',
            '\\' => '/',
            c if c.is_control() => ' ',
            c => c,
        };
        if out.len() + c.len_utf8() > LIMIT {
            break;
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use svcroute_core::model::{Protocol, ServiceName};

    fn spn(ns: &str, name: &str, port: &str, protocol: Protocol) -> ServicePortName {
        ServicePortName {
            service: ServiceName::new(ns, name),
            port_name: port.to_string(),
            protocol,
        }
    }

    #[test]
    fn names_share_kube_proxys_hash() {
        let dns = PortNames::new(&spn("kube-system", "kube-dns", "dns", Protocol::Udp));
        assert_eq!(
            dns.endpoints(TrafficPolicy::Cluster),
            "svc-TCOU7JCQXEZGVUNU"
        );
        assert_eq!(
            endpoint_map(&dns.endpoints(TrafficPolicy::Local)),
            "svl-TCOU7JCQXEZGVUNU-ep"
        );
        assert_eq!(dns.ext(), "ext-TCOU7JCQXEZGVUNU");
        assert_eq!(dns.fw(), "fw-TCOU7JCQXEZGVUNU");
        let name = spn("ns", "web", "", Protocol::Tcp);
        let names = PortNames::new(&name);
        let a = names.sep(&name, &"10.0.0.1:80".parse().unwrap());
        let b = names.sep(&name, &"[fd00::1]:80".parse().unwrap());
        assert_ne!(a, b);
        assert_eq!(
            names.aff(),
            names
                .endpoints(TrafficPolicy::Cluster)
                .replace("svc-", "aff-")
        );
        assert_ne!(affinity_id(&a), affinity_id(&b));
        assert_eq!(affinity_id("sep-AAAAAAQ"), 1);
        assert_eq!(affinity_id("sep-7777777777777777"), 0x7fff_ffff);
    }

    #[test]
    fn our_tables_are_the_common_table_and_numbered_shards() {
        assert_eq!(shard_table(TABLE, 3), "svcroute-3");
        for ours in ["svcroute", "svcroute-0", "svcroute-17"] {
            assert!(is_ours(TABLE, ours), "{ours}");
        }
        for theirs in [
            "svcroute-",
            "svcroute-x",
            "svcroute-0a",
            "svcroute2",
            "filter",
            "svc",
        ] {
            assert!(!is_ours(TABLE, theirs), "{theirs}");
        }
    }

    #[test]
    fn port_text_is_the_display_text() {
        for name in [
            spn("kube-system", "kube-dns", "dns", Protocol::Udp),
            spn("ns", "web", "", Protocol::Tcp),
        ] {
            assert_eq!(port_text(&name), name.to_string());
        }
    }

    #[test]
    fn comments_are_escaped_and_bounded() {
        assert_eq!(comment("a\"b\\c\n"), "a'b/c ");
        assert_eq!(comment(&"é".repeat(100)).len(), 100);
    }
}
