//! Chain names and comments. Per-service chains are named exactly as kube-proxy names them
//! (a hash of the service port, never a user string), so `KUBE-SVC-TCOU7JCQXEZGVUNU` is
//! kube-dns on every node, whichever proxy wrote it.

use std::net::SocketAddr;

use svcroute_core::naming::{endpoint_hash, port_hash_of};
use svcroute_core::select::ServicePortName;

/// nat: dispatch of every service frontend (and filter: no-endpoint verdicts of ClusterIPs).
pub const SERVICES: &str = "KUBE-SERVICES";
/// nat: NodePort dispatch (filter: health-check NodePort ACCEPTs).
pub const NODEPORTS: &str = "KUBE-NODEPORTS";
/// nat: marks a packet for masquerade.
pub const MARK_MASQ: &str = "KUBE-MARK-MASQ";
/// nat: masquerades marked packets.
pub const POSTROUTING: &str = "KUBE-POSTROUTING";
/// filter: no-endpoint verdicts of external IPs, LB IPs and NodePorts.
pub const EXTERNAL_SERVICES: &str = "KUBE-EXTERNAL-SERVICES";
/// filter: no-endpoint verdicts of NodePorts, behind the NodePort address filter.
pub const EXTERNAL_NODEPORTS: &str = "KUBE-EXTERNAL-NODEPORTS";
/// filter: undefined ports of ClusterIPs and unallocated service-CIDR addresses.
pub const CLUSTER_IPS: &str = "KUBE-CLUSTER-IPS";
/// filter: load-balancer source ranges.
pub const PROXY_FIREWALL: &str = "KUBE-PROXY-FIREWALL";
/// filter: accepts forwarded service traffic.
pub const FORWARD: &str = "KUBE-FORWARD";
/// nat: marks ClusterIP traffic that does not come from a local pod (several pod CIDRs).
pub const MASQ_NON_POD: &str = "KUBE-MASQ-NON-POD";

/// The fixed chains svcroute owns (besides the per-service ones).
pub const FIXED_CHAINS: [&str; 10] = [
    SERVICES,
    NODEPORTS,
    MARK_MASQ,
    POSTROUTING,
    EXTERNAL_SERVICES,
    EXTERNAL_NODEPORTS,
    CLUSTER_IPS,
    PROXY_FIREWALL,
    FORWARD,
    MASQ_NON_POD,
];

/// Prefixes of the per-service chains (and `KUBE-XLB-` of older kube-proxy releases).
pub const SERVICE_CHAIN_PREFIXES: [&str; 6] = [
    "KUBE-SVC-",
    "KUBE-SVL-",
    "KUBE-EXT-",
    "KUBE-FW-",
    "KUBE-SEP-",
    "KUBE-XLB-",
];

/// Whether svcroute owns a chain of this name: it replaces such chains on a full sync and
/// deletes them on cleanup. Chains of kubelet (`KUBE-MARK-DROP`, `KUBE-FIREWALL`,
/// `KUBE-KUBELET-CANARY`) and of anything else are never touched.
pub fn is_owned_chain(name: &str) -> bool {
    FIXED_CHAINS.contains(&name) || SERVICE_CHAIN_PREFIXES.iter().any(|p| name.starts_with(p))
}

/// The chains of one service port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortChains {
    /// `namespace/name:port`, what kube-proxy hashes.
    name: String,
    /// `namespace/name:port` as kube-proxy prints it in comments, already escaped for a
    /// quoted comment (a few words may follow it inside the quotes).
    pub display: String,
    /// `KUBE-SVC-H`: cluster-policy endpoints.
    pub svc: String,
    /// `KUBE-SVL-H`: local-policy endpoints.
    pub svl: String,
    /// `KUBE-EXT-H`: external traffic.
    pub ext: String,
    /// `KUBE-FW-H`: load-balancer source ranges.
    pub fw: String,
}

impl PortChains {
    /// The chain names of a service port.
    pub fn new(name: &ServicePortName) -> Self {
        let text = name.to_string();
        let hash = port_hash_of(&text, name);
        PortChains {
            display: escape_comment(&text),
            name: text,
            svc: format!("KUBE-SVC-{hash}"),
            svl: format!("KUBE-SVL-{hash}"),
            ext: format!("KUBE-EXT-{hash}"),
            fw: format!("KUBE-FW-{hash}"),
        }
    }

    /// `KUBE-SEP-E`: one endpoint of this port (kube-proxy's hash of port, protocol and
    /// `ip:port`, IPv6 as `[ip]:port`).
    pub fn sep(&self, name: &ServicePortName, endpoint: &SocketAddr) -> String {
        self.sep_of(name, &endpoint.to_string())
    }

    /// [`PortChains::sep`] of an endpoint already printed as `ip:port` / `[ip]:port`.
    pub fn sep_of(&self, name: &ServicePortName, endpoint: &str) -> String {
        format!("KUBE-SEP-{}", endpoint_hash(&self.name, name, endpoint))
    }
}

/// `-m comment --comment "TEXT"`, quoted for iptables-restore (see [`escape_comment`]).
pub fn comment(text: &str) -> String {
    format!("-m comment --comment \"{}\"", escape_comment(text))
}

/// Text made safe inside a double-quoted comment: quotes and backslashes escaped, control
/// characters replaced, cut well under the kernel's 255-byte limit (200 bytes, leaving room
/// for the words rules add after a name).
pub fn escape_comment(text: &str) -> String {
    const LIMIT: usize = 200;
    // Names are DNS labels, so the plain case is the common one: copy it whole.
    let plain = text.len() <= LIMIT
        && !text
            .chars()
            .any(|c| c == '"' || c == '\\' || c.is_control());
    if plain {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len().min(LIMIT));
    for c in text.chars() {
        let piece = match c {
            '"' => "\\\"",
            '\\' => "\\\\",
            c if c.is_control() => " ",
            _ => "",
        };
        let len = if piece.is_empty() {
            c.len_utf8()
        } else {
            piece.len()
        };
        if out.len() + len > LIMIT {
            break;
        }
        if piece.is_empty() {
            out.push(c);
        } else {
            out.push_str(piece);
        }
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
    fn chain_names_equal_kube_proxys() {
        // Values kube-proxy gives these well-known services on every cluster.
        let dns = PortChains::new(&spn("kube-system", "kube-dns", "dns", Protocol::Udp));
        assert_eq!(dns.svc, "KUBE-SVC-TCOU7JCQXEZGVUNU");
        let api = PortChains::new(&spn("default", "kubernetes", "https", Protocol::Tcp));
        assert_eq!(api.svc, "KUBE-SVC-NPX46M4PTMTKRN6Y");
        assert!(dns.ext.starts_with("KUBE-EXT-") && dns.ext.len() == 25);
    }

    #[test]
    fn endpoint_chains_differ_per_endpoint_and_fit_iptables() {
        let name = spn("ns", "web", "", Protocol::Tcp);
        let chains = PortChains::new(&name);
        let a = chains.sep(&name, &"10.0.0.1:80".parse().unwrap());
        let b = chains.sep(&name, &"[fd00::1]:80".parse().unwrap());
        assert_ne!(a, b);
        assert!(a.len() <= 28, "iptables chain names are at most 28 bytes");
    }

    #[test]
    fn comments_are_escaped_and_bounded() {
        assert_eq!(
            comment("a\"b\\c\n"),
            "-m comment --comment \"a\\\"b\\\\c \""
        );
        assert!(comment(&"x".repeat(1000)).len() < 280);
    }

    #[test]
    fn ownership() {
        assert!(is_owned_chain("KUBE-SERVICES"));
        assert!(is_owned_chain("KUBE-SEP-ABC"));
        assert!(!is_owned_chain("KUBE-MARK-DROP"));
        assert!(!is_owned_chain("KUBE-KUBELET-CANARY"));
        assert!(!is_owned_chain("DOCKER"));
    }
}
