//! Which Service owns each frontend. Two Services may not claim the same address, port and
//! protocol (or the same NodePort): the later one is rejected, so every backend sees one
//! unambiguous owner.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};

use crate::model::{ObjectKind, Problem, Protocol, ServiceInfo, ServiceName, ValidationError};

/// Something a packet can be addressed to that leads to a service port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Frontend {
    /// A ClusterIP, externalIP or LB IP with a port.
    Address {
        /// The address.
        ip: IpAddr,
        /// The port.
        port: u16,
        /// The protocol.
        protocol: Protocol,
    },
    /// A NodePort, on every accepted node address.
    NodePort {
        /// The port.
        port: u16,
        /// The protocol.
        protocol: Protocol,
    },
}

impl fmt::Display for Frontend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Frontend::Address { ip, port, protocol } => {
                write!(f, "{}/{}", SocketAddr::new(*ip, *port), protocol)
            }
            Frontend::NodePort { port, protocol } => write!(f, "nodePort {port}/{protocol}"),
        }
    }
}

/// Frontends of a Service, with the field each comes from.
fn frontends_of(info: &ServiceInfo) -> Vec<(Frontend, String)> {
    let mut out = Vec::new();
    if !info.is_routed() {
        return out;
    }
    for (i, p) in info.ports.iter().enumerate() {
        let addr = |ip: IpAddr| Frontend::Address {
            ip,
            port: p.port,
            protocol: p.protocol,
        };
        for (j, ip) in info.cluster_ips.iter().enumerate() {
            out.push((addr(*ip), format!("spec.clusterIPs[{j}]")));
        }
        for (j, ip) in info.external_ips.iter().enumerate() {
            out.push((addr(*ip), format!("spec.externalIPs[{j}]")));
        }
        for (j, ip) in info.load_balancer_ips.iter().enumerate() {
            out.push((addr(*ip), format!("status.loadBalancer.ingress[{j}].ip")));
        }
        if let Some(np) = p.node_port {
            out.push((
                Frontend::NodePort {
                    port: np,
                    protocol: p.protocol,
                },
                format!("spec.ports[{i}].nodePort"),
            ));
        }
    }
    out
}

#[derive(Debug, Default)]
pub(crate) struct FrontendIndex {
    owners: HashMap<Frontend, ServiceName>,
}

impl FrontendIndex {
    /// Fails if `info` claims a frontend another Service owns.
    pub fn check(&self, info: &ServiceInfo) -> Result<(), ValidationError> {
        for (frontend, field) in frontends_of(info) {
            if let Some(owner) = self.owners.get(&frontend)
                && *owner != info.name
            {
                return Err(ValidationError {
                    kind: ObjectKind::Service,
                    object: info.name.to_string(),
                    field,
                    problem: Problem::Conflict {
                        frontend: frontend.to_string(),
                        owner: owner.to_string(),
                    },
                });
            }
        }
        Ok(())
    }

    /// Records `new`'s frontends in place of `old`'s.
    pub fn replace(&mut self, old: Option<&ServiceInfo>, new: &ServiceInfo) {
        if let Some(old) = old {
            self.remove(old);
        }
        for (frontend, _) in frontends_of(new) {
            self.owners.insert(frontend, new.name.clone());
        }
    }

    /// Forgets `info`'s frontends.
    pub fn remove(&mut self, info: &ServiceInfo) {
        for (frontend, _) in frontends_of(info) {
            if self.owners.get(&frontend) == Some(&info.name) {
                self.owners.remove(&frontend);
            }
        }
    }

    pub fn owner(&self, frontend: &Frontend) -> Option<&ServiceName> {
        self.owners.get(frontend)
    }
}
