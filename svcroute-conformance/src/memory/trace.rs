//! Walks a packet through the tables the memory dataplane recorded, the way the kernel would:
//! firewall (pre-DNAT) → service / NodePort dispatch and chains (DNAT) → filter checks on what
//! was not DNATed (ClusterIP reject, service-CIDR drop, health-check accept).

use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;
use svcroute_core::decide::{Packet, WeightedEndpoint};
use svcroute_core::model::{IpFamily, Protocol};
use svcroute_core::{Decision, TraceError, Verdict};

use super::kernel::{Action, Key, Match, SetName, Table, Value};

/// Deepest chain nesting a trace follows before calling the tables inconsistent.
const MAX_DEPTH: usize = 32;

/// How a chain walk ended.
enum Outcome {
    /// DNAT: every reachable endpoint with its probability and masquerade flag.
    Dnat(Vec<(SocketAddr, f64, bool)>, Option<u32>),
    Reject,
    Drop,
    /// Returned or fell off the end: the packet goes on unchanged.
    Continue,
}

struct Walker<'a> {
    table: &'a Table,
    packet: &'a Packet,
}

impl Walker<'_> {
    fn set(&self, name: SetName) -> Result<&[IpNet], TraceError> {
        match self.table.get(&Key::Set(name)) {
            Some(Value::Nets(nets)) => Ok(nets),
            Some(other) => Err(TraceError::Inconsistent(format!(
                "set {name} holds {other}"
            ))),
            None => Err(TraceError::Inconsistent(format!("set {name} is missing"))),
        }
    }

    fn in_set(&self, name: SetName, ip: IpAddr) -> Result<bool, TraceError> {
        Ok(self.set(name)?.iter().any(|n| n.contains(&ip)))
    }

    fn chain(&self, name: &str) -> Result<&[super::kernel::Rule], TraceError> {
        match self.table.get(&Key::Chain(name.to_string())) {
            Some(Value::Rules(rules)) => Ok(rules),
            Some(other) => Err(TraceError::Inconsistent(format!(
                "chain {name} holds {other}"
            ))),
            None => Err(TraceError::Inconsistent(format!(
                "jump to missing chain {name}"
            ))),
        }
    }

    fn matches(&self, m: &Match) -> Result<bool, TraceError> {
        let src = self.packet.source;
        Ok(match m {
            Match::SrcInSet(s) => self.in_set(*s, src)?,
            Match::SrcNotInSet(s) => !self.in_set(*s, src)?,
            Match::SrcIn(nets) => nets.iter().any(|n| n.contains(&src)),
            Match::SrcIs(ip) => *ip == src,
        })
    }

    /// Walks `name` with the masquerade mark `masq` and the affinity seen so far.
    fn walk(
        &self,
        name: &str,
        mut masq: bool,
        mut affinity: Option<u32>,
        depth: usize,
    ) -> Result<Outcome, TraceError> {
        if depth > MAX_DEPTH {
            return Err(TraceError::Inconsistent(format!(
                "chain nesting deeper than {MAX_DEPTH} at {name}"
            )));
        }
        for rule in self.chain(name)? {
            let mut hit = true;
            for m in &rule.matches {
                if !self.matches(m)? {
                    hit = false;
                    break;
                }
            }
            if !hit {
                continue;
            }
            match &rule.action {
                Action::MarkMasquerade => masq = true,
                Action::AffinityGoto { timeout, .. } => affinity = Some(*timeout),
                Action::Goto(next) => return self.walk(next, masq, affinity, depth + 1),
                Action::Return => return Ok(Outcome::Continue),
                Action::Reject => return Ok(Outcome::Reject),
                Action::Drop => return Ok(Outcome::Drop),
                Action::Dnat(to) => return Ok(Outcome::Dnat(vec![(*to, 1.0, masq)], affinity)),
                Action::RandomGoto(branches) => {
                    if branches.is_empty() {
                        return Err(TraceError::Inconsistent(format!(
                            "chain {name}: numgen over no branch"
                        )));
                    }
                    let share = 1.0 / branches.len() as f64;
                    let mut all = Vec::new();
                    let mut timeout = affinity;
                    for b in branches {
                        match self.walk(b, masq, affinity, depth + 1)? {
                            Outcome::Dnat(eps, t) => {
                                all.extend(eps.into_iter().map(|(e, p, m)| (e, p * share, m)));
                                timeout = timeout.or(t);
                            }
                            _ => {
                                return Err(TraceError::Unsupported(format!(
                                    "chain {name}: random branch {b} does not DNAT"
                                )));
                            }
                        }
                    }
                    return Ok(Outcome::Dnat(all, timeout));
                }
            }
        }
        Ok(Outcome::Continue)
    }

    fn goto_of(&self, key: &Key) -> Result<Option<&str>, TraceError> {
        match self.table.get(key) {
            None => Ok(None),
            Some(Value::Goto(chain)) => Ok(Some(chain)),
            Some(other) => Err(TraceError::Inconsistent(format!("{key} holds {other}"))),
        }
    }
}

/// Traces `packet` through `table` (the table of the packet's family).
pub(crate) fn trace(table: &Table, packet: &Packet) -> Result<Decision, TraceError> {
    let w = Walker { table, packet };
    let dst = packet.destination;
    let (proto, port) = (packet.protocol, packet.port);

    // 1. Firewall, before DNAT.
    if let Some(fw) = w.goto_of(&Key::Firewall(dst, proto, port))? {
        match w.walk(fw, false, None, 0)? {
            Outcome::Continue => {}
            Outcome::Drop => return Ok(Decision::simple(Verdict::Drop)),
            Outcome::Reject => return Ok(Decision::simple(Verdict::Reject)),
            Outcome::Dnat(..) => {
                return Err(TraceError::Unsupported(format!(
                    "firewall chain {fw} DNATs"
                )));
            }
        }
    }

    // 2. Service dispatch, then NodePorts on NodePort addresses.
    let mut target = w.goto_of(&Key::Service(dst, proto, port))?;
    if target.is_none() && w.in_set(SetName::NodePortAddresses, dst)? {
        target = w.goto_of(&Key::NodePort(proto, port))?;
    }
    if let Some(chain) = target {
        match w.walk(chain, false, None, 0)? {
            Outcome::Dnat(eps, affinity) => {
                let mut weighted: Vec<WeightedEndpoint> = eps
                    .into_iter()
                    .map(|(endpoint, probability, masquerade)| WeightedEndpoint {
                        endpoint,
                        probability,
                        masquerade,
                    })
                    .collect();
                weighted.sort_by_key(|w| w.endpoint);
                return Ok(Decision {
                    masquerade: weighted.iter().any(|w| w.masquerade),
                    verdict: Verdict::Dnat(weighted),
                    affinity_timeout_seconds: affinity,
                });
            }
            Outcome::Reject => return Ok(Decision::simple(Verdict::Reject)),
            Outcome::Drop => return Ok(Decision::simple(Verdict::Drop)),
            Outcome::Continue => {}
        }
    }

    // 3. Filter: what no service port took.
    let cluster_ip = table
        .range(Key::ClusterIp(dst, String::new())..)
        .next()
        .is_some_and(|(k, _)| matches!(k, Key::ClusterIp(ip, _) if *ip == dst));
    if cluster_ip {
        return Ok(Decision::simple(Verdict::Reject));
    }
    if w.in_set(SetName::ServiceCidrs, dst)? {
        return Ok(Decision::simple(Verdict::Drop));
    }
    if proto == Protocol::Tcp && w.in_set(SetName::LocalAddresses, dst)? {
        let health_check = table
            .range(Key::HealthCheck(port, String::new())..)
            .next()
            .is_some_and(|(k, _)| matches!(k, Key::HealthCheck(p, _) if *p == port));
        if health_check {
            return Ok(Decision::simple(Verdict::Accept));
        }
    }
    Ok(Decision::simple(Verdict::NoMatch))
}

/// Whether source and destination share a family (no dataplane sees mixed packets).
pub(crate) fn same_family(packet: &Packet) -> bool {
    IpFamily::of(&packet.source) == IpFamily::of(&packet.destination)
}
