//! The reference decision: what must happen to one packet arriving at this node.
//!
//! Every backend's `trace` must answer exactly this. The order of checks mirrors how the
//! dataplanes see a packet:
//! 1. source-range firewall on load-balancer IPs (DROP before any DNAT);
//! 2. service frontends: ClusterIP, externalIPs, LB IPs, then NodePorts on accepted node
//!    addresses (REJECT when the service has no endpoint, DROP when a Local policy finds none);
//! 3. other ports of a known ClusterIP are REJECTed; unallocated addresses inside the service
//!    CIDRs are DROPped;
//! 4. TCP to a health-check NodePort on a node address is ACCEPTed;
//! 5. anything else is not a service packet (`NoMatch`).

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::change::Desired;
use crate::model::{IpFamily, Protocol, ProxyConfig};
use crate::select::masquerade::{ExternalPath, InternalMasquerade};
use crate::select::{FamilyRouting, NoEndpointVerdict, ResolvedServicePort};

/// A packet as it arrives at the node (or leaves a local process).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Packet {
    /// Source address. Node-originated when it is one of the node's IPs or loopback.
    pub source: IpAddr,
    /// Destination address.
    pub destination: IpAddr,
    /// Destination port.
    pub port: u16,
    /// Transport protocol.
    pub protocol: Protocol,
}

impl fmt::Display for Packet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}/{}",
            self.source,
            SocketAddr::new(self.destination, self.port),
            self.protocol.lower()
        )
    }
}

/// Error parsing a packet line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid packet {input:?}: {reason} (expected `SRC DST:PORT[/tcp|udp|sctp]`)")]
pub struct PacketParseError {
    /// The text given.
    pub input: String,
    /// What is wrong.
    pub reason: &'static str,
}

impl Packet {
    /// Parses the destination part: `DST:PORT[/proto]`, IPv6 as `[addr]:port`; TCP by default.
    pub fn parse_destination(s: &str) -> Result<(IpAddr, u16, Protocol), &'static str> {
        let (addr, proto) = match s.rsplit_once('/') {
            Some((a, p)) => (a, Protocol::parse(p).ok_or("unknown protocol")?),
            None => (s, Protocol::Tcp),
        };
        let sock: SocketAddr = addr.parse().map_err(|_| "destination is not ADDR:PORT")?;
        if sock.port() == 0 {
            return Err("port 0");
        }
        Ok((sock.ip(), sock.port(), proto))
    }

    /// Whether source and destination are of different families (no dataplane sees such a packet).
    pub fn is_mixed_family(&self) -> bool {
        IpFamily::of(&self.source) != IpFamily::of(&self.destination)
    }
}

impl FromStr for Packet {
    type Err = PacketParseError;

    /// Parses `SRC DST:PORT[/proto]`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason| PacketParseError {
            input: s.chars().take(120).collect(),
            reason,
        };
        let mut parts = s.split_whitespace();
        let (Some(src), Some(dst), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err(err("expected two fields"));
        };
        let source: IpAddr = src
            .parse()
            .map_err(|_| err("source is not an IP address"))?;
        let (destination, port, protocol) = Packet::parse_destination(dst).map_err(err)?;
        let p = Packet {
            source,
            destination,
            port,
            protocol,
        };
        if p.is_mixed_family() {
            return Err(err("source and destination are of different families"));
        }
        Ok(p)
    }
}

/// One endpoint a packet may be DNATed to.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct WeightedEndpoint {
    /// The endpoint.
    pub endpoint: SocketAddr,
    /// The chance a new connection picks it.
    pub probability: f64,
    /// Whether the packet is masqueraded when this endpoint is picked (differs from the other
    /// endpoints only for hairpin traffic: an endpoint reaching itself).
    pub masquerade: bool,
}

/// What happens to the packet.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Verdict {
    /// DNAT to one of these endpoints (sorted by address).
    Dnat(Vec<WeightedEndpoint>),
    /// Refused (ICMP unreachable / TCP reset).
    Reject,
    /// Silently dropped.
    Drop,
    /// Explicitly accepted (health-check NodePort).
    Accept,
    /// Not a service packet: left alone.
    NoMatch,
}

impl Verdict {
    /// Lower-case name: `dnat`, `reject`, `drop`, `accept`, `no-match`.
    pub fn name(&self) -> &'static str {
        match self {
            Verdict::Dnat(_) => "dnat",
            Verdict::Reject => "reject",
            Verdict::Drop => "drop",
            Verdict::Accept => "accept",
            Verdict::NoMatch => "no-match",
        }
    }
}

/// The decision for one packet.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    /// The verdict.
    pub verdict: Verdict,
    /// Whether the packet is masqueraded (for DNAT: on any of its endpoints).
    pub masquerade: bool,
    /// ClientIP session affinity timeout, when the service port has affinity and the packet is
    /// DNATed: later packets from the same source keep their endpoint this long.
    pub affinity_timeout_seconds: Option<u32>,
}

/// Probabilities closer than this are the same (iptables prints ten decimals).
pub const PROBABILITY_TOLERANCE: f64 = 1e-6;

impl Decision {
    /// A decision without DNAT.
    pub fn simple(verdict: Verdict) -> Self {
        Decision {
            verdict,
            masquerade: false,
            affinity_timeout_seconds: None,
        }
    }

    /// Equality with probabilities compared within [`PROBABILITY_TOLERANCE`]; endpoint order
    /// does not matter.
    pub fn equivalent(&self, other: &Decision) -> bool {
        if self.masquerade != other.masquerade
            || self.affinity_timeout_seconds != other.affinity_timeout_seconds
        {
            return false;
        }
        match (&self.verdict, &other.verdict) {
            (Verdict::Dnat(a), Verdict::Dnat(b)) => {
                let mut a = a.clone();
                let mut b = b.clone();
                a.sort_by_key(|e| e.endpoint);
                b.sort_by_key(|e| e.endpoint);
                a.len() == b.len()
                    && a.iter().zip(&b).all(|(x, y)| {
                        x.endpoint == y.endpoint
                            && x.masquerade == y.masquerade
                            && (x.probability - y.probability).abs() < PROBABILITY_TOLERANCE
                    })
            }
            (a, b) => a == b,
        }
    }
}

/// How the packet reached a service port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Path {
    /// Through the ClusterIP: internal traffic policy.
    Internal,
    /// Through a NodePort, externalIP or LB IP: external traffic policy.
    External,
}

/// Which kind of frontend a packet was addressed to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum FrontendKind {
    /// A ClusterIP (internal traffic policy).
    ClusterIP,
    /// An externalIP (external traffic policy).
    ExternalIP,
    /// A load-balancer ingress IP (external traffic policy).
    LoadBalancer,
    /// A NodePort on an accepted node address (external traffic policy).
    NodePort,
}

impl FrontendKind {
    /// The API-style name: `ClusterIP`, `ExternalIP`, `LoadBalancer`, `NodePort`.
    pub fn as_str(self) -> &'static str {
        match self {
            FrontendKind::ClusterIP => "ClusterIP",
            FrontendKind::ExternalIP => "ExternalIP",
            FrontendKind::LoadBalancer => "LoadBalancer",
            FrontendKind::NodePort => "NodePort",
        }
    }
}

/// What a packet hit, before any endpoint is chosen: the first half of [`decide()`], public so
/// tools can explain a decision without re-deriving it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Match<'a> {
    /// A load-balancer IP whose source ranges exclude the source: dropped.
    Firewalled(&'a ResolvedServicePort),
    /// A frontend of a service port.
    Frontend(&'a ResolvedServicePort, FrontendKind),
    /// A known ClusterIP on a port or protocol it does not serve: rejected.
    ClusterIpOtherPort(&'a ResolvedServicePort),
    /// An address inside a service CIDR that no service holds: dropped.
    ServiceCidr(IpNet),
    /// A health-check NodePort on a node address: accepted.
    HealthCheck(&'a ResolvedServicePort),
    /// Not a service packet.
    Nothing,
}

/// Finds what `packet` hits, in the order the module docs give.
pub fn locate<'a>(desired: &'a Desired, packet: &Packet) -> Match<'a> {
    let config = desired.config();
    let family = IpFamily::of(&packet.destination);
    if packet.is_mixed_family() || !config.handles(family) {
        return Match::Nothing;
    }
    let dst = packet.destination;
    let ports = || {
        desired
            .ports()
            .map(|p| &**p)
            .filter(|p| p.name.protocol == packet.protocol)
    };

    // 1. Load-balancer source ranges are enforced before DNAT, endpoints or not.
    for port in ports().filter(|p| p.port == packet.port) {
        if let Some(fam) = port.family(family)
            && let Some(allowed) = &fam.firewall_allowed_sources
            && fam.load_balancer_ips.contains(&dst)
            && !allowed.iter().any(|n| n.contains(&packet.source))
        {
            return Match::Firewalled(port);
        }
    }

    // 2. Service frontends; NodePorts come last, as KUBE-NODEPORTS is the last rule of
    //    KUBE-SERVICES.
    let mut node_port_hit = None;
    for port in ports() {
        let Some(fam) = port.family(family) else {
            continue;
        };
        if port.port == packet.port {
            if fam.cluster_ip == dst {
                return Match::Frontend(port, FrontendKind::ClusterIP);
            }
            if fam.external_ips.contains(&dst) {
                return Match::Frontend(port, FrontendKind::ExternalIP);
            }
            if fam.load_balancer_ips.contains(&dst) {
                return Match::Frontend(port, FrontendKind::LoadBalancer);
            }
        }
        if port.node_port == Some(packet.port) && node_port_hit.is_none() {
            node_port_hit = Some(port);
        }
    }
    if let Some(port) = node_port_hit
        && config.accepts_nodeport_on(dst)
    {
        return Match::Frontend(port, FrontendKind::NodePort);
    }

    // 3. Known ClusterIP, undefined port: refused. Unallocated service-CIDR address: dropped.
    if let Some(port) = desired
        .ports()
        .find(|p| p.family(family).is_some_and(|f| f.cluster_ip == dst))
    {
        return Match::ClusterIpOtherPort(port);
    }
    if let Some(net) = config.service_cidrs.iter().find(|c| c.contains(&dst)) {
        return Match::ServiceCidr(*net);
    }

    // 4. Health-check NodePorts are open on node addresses.
    if packet.protocol == Protocol::Tcp
        && config.is_node_address(dst)
        && let Some(port) = desired
            .ports()
            .find(|p| p.health_check_node_port == Some(packet.port) && p.family(family).is_some())
    {
        return Match::HealthCheck(port);
    }
    Match::Nothing
}

/// The reference decision for `packet` under `desired`.
pub fn decide(desired: &Desired, packet: &Packet) -> Decision {
    match locate(desired, packet) {
        Match::Frontend(port, kind) => {
            let path = match kind {
                FrontendKind::ClusterIP => Path::Internal,
                _ => Path::External,
            };
            match port.family(IpFamily::of(&packet.destination)) {
                Some(fam) => route(desired.config(), port, fam, packet, path),
                None => Decision::simple(Verdict::NoMatch),
            }
        }
        Match::Firewalled(_) | Match::ServiceCidr(_) => Decision::simple(Verdict::Drop),
        Match::ClusterIpOtherPort(_) => Decision::simple(Verdict::Reject),
        Match::HealthCheck(_) => Decision::simple(Verdict::Accept),
        Match::Nothing => Decision::simple(Verdict::NoMatch),
    }
}

/// Picks the endpoint set for a packet that hit a frontend of `port`, and its masquerade.
fn route(
    config: &ProxyConfig,
    port: &ResolvedServicePort,
    fam: &FamilyRouting,
    packet: &Packet,
    path: Path,
) -> Decision {
    if !fam.has_any_endpoints {
        return Decision::simple(Verdict::Reject);
    }
    let src = packet.source;
    let (endpoints, masquerade) = match path {
        Path::Internal => (
            fam.endpoints(port.internal_traffic_policy),
            InternalMasquerade::for_config(config).applies(src),
        ),
        Path::External => {
            let ext = ExternalPath::for_source(config, port.external_traffic_policy, src);
            (fam.endpoints(ext.endpoints), ext.masquerade)
        }
    };
    if endpoints.is_empty() {
        return Decision::simple(match fam.when_empty() {
            NoEndpointVerdict::Reject => Verdict::Reject,
            NoEndpointVerdict::Drop => Verdict::Drop,
        });
    }
    let probability = 1.0 / endpoints.len() as f64;
    let weighted: Vec<WeightedEndpoint> = endpoints
        .iter()
        .map(|e| WeightedEndpoint {
            endpoint: *e,
            probability,
            // Hairpin: an endpoint reaching itself through the service is always masqueraded.
            masquerade: masquerade || e.ip() == src,
        })
        .collect();
    Decision {
        masquerade: weighted.iter().any(|w| w.masquerade),
        verdict: Verdict::Dnat(weighted),
        affinity_timeout_seconds: port.affinity_timeout,
    }
}

pub mod paths;

#[cfg(test)]
mod tests;
