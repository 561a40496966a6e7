//! UDP conntrack entries a change makes stale. UDP has no connection end: a flow DNATed to an
//! endpoint that is gone keeps going there until its entry expires, and a flow that hit a port
//! while it had no endpoint keeps its un-DNATed entry. Every backend deletes these after a sync.

use std::fmt;
use std::net::IpAddr;

use crate::change::ChangeSet;
use crate::model::{IpFamily, Protocol};
use crate::select::ResolvedServicePort;

/// Conntrack entries to delete: UDP flows whose original destination (and port) match and,
/// when given, whose replies come from `reply_source` (the endpoint it was DNATed to).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConntrackFlows {
    /// The protocol (UDP: TCP and SCTP connections end by themselves).
    pub protocol: Protocol,
    /// Original destination address (a service IP), if filtered on.
    pub original_destination: Option<IpAddr>,
    /// Original destination port (a service port or NodePort), if filtered on.
    pub original_port: Option<u16>,
    /// Reply source (the endpoint), if filtered on.
    pub reply_source: Option<IpAddr>,
}

impl fmt::Display for ConntrackFlows {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.protocol.lower())?;
        if let Some(d) = self.original_destination {
            write!(f, " dst {d}")?;
        }
        if let Some(p) = self.original_port {
            write!(f, " dport {p}")?;
        }
        if let Some(r) = self.reply_source {
            write!(f, " reply-src {r}")?;
        }
        Ok(())
    }
}

impl ConntrackFlows {
    /// The arguments of `conntrack` deleting these entries in `family`.
    pub fn delete_args(&self, family: IpFamily) -> Vec<String> {
        let mut args: Vec<String> = vec![
            "-D".into(),
            "-f".into(),
            match family {
                IpFamily::IPv4 => "ipv4".into(),
                IpFamily::IPv6 => "ipv6".into(),
            },
            "-p".into(),
            self.protocol.lower().into(),
        ];
        if let Some(d) = self.original_destination {
            args.extend(["--orig-dst".into(), d.to_string()]);
        }
        if let Some(p) = self.original_port {
            args.extend(["--orig-port-dst".into(), p.to_string()]);
        }
        if let Some(r) = self.reply_source {
            args.extend(["--reply-src".into(), r.to_string()]);
        }
        args
    }
}

/// The UDP conntrack entries a change makes stale, per family.
pub fn stale_flows(changes: &ChangeSet, family: IpFamily) -> Vec<ConntrackFlows> {
    let frontends = |port: &ResolvedServicePort| -> (Vec<IpAddr>, Option<u16>) {
        let Some(fam) = port.family(family) else {
            return (Vec::new(), None);
        };
        let mut ips = vec![fam.cluster_ip];
        ips.extend(fam.external_ips.iter().copied());
        ips.extend(fam.load_balancer_ips.iter().copied());
        (ips, port.node_port)
    };
    let mut flows = Vec::new();
    for change in changes.changes() {
        if change.name.protocol != Protocol::Udp {
            continue;
        }
        if let Some(previous) = &change.previous {
            let (ips, node_port) = frontends(previous);
            for endpoint in change.removed_endpoints(family) {
                for ip in &ips {
                    flows.push(ConntrackFlows {
                        protocol: Protocol::Udp,
                        original_destination: Some(*ip),
                        original_port: Some(previous.port),
                        reply_source: Some(endpoint.ip()),
                    });
                }
                if let Some(np) = node_port {
                    flows.push(ConntrackFlows {
                        protocol: Protocol::Udp,
                        original_destination: None,
                        original_port: Some(np),
                        reply_source: Some(endpoint.ip()),
                    });
                }
            }
        }
        if let Some(current) = &change.current
            && change.became_active(family)
        {
            // Flows that hit the port while it had no endpoint hold a conntrack entry without
            // DNAT: delete them so the next packet is routed.
            let (ips, node_port) = frontends(current);
            for ip in ips {
                flows.push(ConntrackFlows {
                    protocol: Protocol::Udp,
                    original_destination: Some(ip),
                    original_port: Some(current.port),
                    reply_source: None,
                });
            }
            if let Some(np) = node_port {
                flows.push(ConntrackFlows {
                    protocol: Protocol::Udp,
                    original_destination: None,
                    original_port: Some(np),
                    reply_source: None,
                });
            }
        }
    }
    flows.sort();
    flows.dedup();
    flows
}

/// [`stale_flows`] for each of `families`, leaving out families with none.
pub fn stale_flows_per_family(
    changes: &ChangeSet,
    families: impl IntoIterator<Item = IpFamily>,
) -> Vec<(IpFamily, Vec<ConntrackFlows>)> {
    families
        .into_iter()
        .map(|f| (f, stale_flows(changes, f)))
        .filter(|(_, flows)| !flows.is_empty())
        .collect()
}
