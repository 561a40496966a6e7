//! `svcroute plan`: the resolved routing of this node, one entry per service port and IP
//! family, as JSON or as readable text.
//!
//! Endpoint sets keep the core's distinction between "this policy is not used" (`null`) and
//! "used, but no endpoint" (`[]`).

use std::io::Write;
use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;
use serde::Serialize;
use svcroute_core::Desired;
use svcroute_core::model::{IpFamily, Protocol, ProxyConfig, TrafficPolicy};
use svcroute_core::select::{FamilyRouting, NoEndpointVerdict, ResolvedServicePort};

use crate::output::join_or;

/// The routing of one service port in one IP family.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PlanEntry {
    /// `namespace/name`.
    pub service: String,
    /// The port's name (empty for a single unnamed port).
    pub port_name: String,
    /// `TCP`, `UDP` or `SCTP`.
    pub protocol: Protocol,
    /// `IPv4` or `IPv6`.
    pub ip_family: IpFamily,
    /// The service port.
    pub port: u16,
    /// The NodePort, if any.
    pub node_port: Option<u16>,
    /// The ClusterIP of this family.
    pub cluster_ip: IpAddr,
    /// Every address or port that leads to this service port.
    pub frontends: Vec<Frontend>,
    /// Endpoints for cluster-policy traffic; `null` when no traffic uses that policy.
    pub cluster_endpoints: Option<Vec<String>>,
    /// Endpoints for local-policy traffic; `null` when no traffic uses that policy.
    pub local_endpoints: Option<Vec<String>>,
    /// Every endpoint some traffic may reach.
    pub all_reachable: Vec<String>,
    /// Whether any usable endpoint exists.
    pub has_any_endpoints: bool,
    /// `reject` when there is no usable endpoint at all, `drop` when endpoints exist but a
    /// policy in use finds none (a Local policy on a node without local endpoints), `null`
    /// otherwise.
    pub when_no_endpoint: Option<NoEndpointVerdict>,
    /// `internalTrafficPolicy`.
    pub internal_traffic_policy: TrafficPolicy,
    /// `externalTrafficPolicy`.
    pub external_traffic_policy: TrafficPolicy,
    /// Whether a NodePort, externalIP or load-balancer IP exists in this family.
    pub externally_accessible: bool,
    /// ClientIP session affinity timeout; `null` without affinity.
    pub affinity_timeout_seconds: Option<u32>,
}

/// One way into a service port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type")]
pub enum Frontend {
    /// The ClusterIP.
    #[serde(rename = "ClusterIP")]
    ClusterIp {
        /// `ip:port`.
        address: String,
    },
    /// An externalIP.
    #[serde(rename = "ExternalIP")]
    ExternalIp {
        /// `ip:port`.
        address: String,
    },
    /// A load-balancer ingress IP.
    LoadBalancer {
        /// `ip:port`.
        address: String,
        /// When set, only these sources may reach it (`loadBalancerSourceRanges`).
        allowed_sources: Option<Vec<IpNet>>,
    },
    /// The NodePort.
    NodePort {
        /// The port.
        port: u16,
        /// The node addresses (of this family) it answers on.
        addresses: Vec<String>,
    },
    /// The health-check NodePort of an `externalTrafficPolicy: Local` LoadBalancer.
    HealthCheckNodePort {
        /// The port.
        port: u16,
    },
}

/// The plan of every service port in `desired`, in key order, one entry per family.
pub fn plan(desired: &Desired) -> Vec<PlanEntry> {
    desired
        .ports()
        .flat_map(|port| {
            port.families
                .iter()
                .map(|fam| entry(desired.config(), port, fam))
                .collect::<Vec<_>>()
        })
        .collect()
}

fn entry(config: &ProxyConfig, port: &ResolvedServicePort, fam: &FamilyRouting) -> PlanEntry {
    let addrs = |v: &[SocketAddr]| v.iter().map(SocketAddr::to_string).collect::<Vec<_>>();
    PlanEntry {
        service: port.name.service.to_string(),
        port_name: port.name.port_name.clone(),
        protocol: port.name.protocol,
        ip_family: fam.family,
        port: port.port,
        node_port: port.node_port,
        cluster_ip: fam.cluster_ip,
        frontends: frontends(config, port, fam),
        cluster_endpoints: fam.cluster_endpoints.as_deref().map(addrs),
        local_endpoints: fam.local_endpoints.as_deref().map(addrs),
        all_reachable: addrs(&fam.all_reachable),
        has_any_endpoints: fam.has_any_endpoints,
        when_no_endpoint: fam.when_no_endpoint(),
        internal_traffic_policy: port.internal_traffic_policy,
        external_traffic_policy: port.external_traffic_policy,
        externally_accessible: fam.externally_accessible,
        affinity_timeout_seconds: port.affinity_timeout,
    }
}

fn frontends(
    config: &ProxyConfig,
    port: &ResolvedServicePort,
    fam: &FamilyRouting,
) -> Vec<Frontend> {
    let at = |ip: IpAddr| SocketAddr::new(ip, port.port).to_string();
    let mut out = vec![Frontend::ClusterIp {
        address: at(fam.cluster_ip),
    }];
    out.extend(
        fam.external_ips
            .iter()
            .map(|ip| Frontend::ExternalIp { address: at(*ip) }),
    );
    out.extend(
        fam.load_balancer_ips
            .iter()
            .map(|ip| Frontend::LoadBalancer {
                address: at(*ip),
                allowed_sources: fam.firewall_allowed_sources.clone(),
            }),
    );
    if let Some(np) = port.node_port {
        out.push(Frontend::NodePort {
            port: np,
            addresses: config
                .nodeport_addresses(fam.family)
                .into_iter()
                .map(|ip| SocketAddr::new(ip, np).to_string())
                .collect(),
        });
    }
    if let Some(hc) = port.health_check_node_port {
        out.push(Frontend::HealthCheckNodePort { port: hc });
    }
    out
}

/// Writes the plan as readable text: a header naming the node, then one block per entry.
pub fn write_text(
    out: &mut dyn Write,
    config: &ProxyConfig,
    entries: &[PlanEntry],
) -> std::io::Result<()> {
    let ips: Vec<String> = config.node_ips.iter().map(IpAddr::to_string).collect();
    writeln!(
        out,
        "node {} ({}): {} service port entries",
        config.node_name,
        join_or(&ips, "no node IPs"),
        entries.len()
    )?;
    for e in entries {
        writeln!(out)?;
        let port_name = if e.port_name.is_empty() {
            String::new()
        } else {
            format!(":{}", e.port_name)
        };
        writeln!(
            out,
            "{}{}  {}/{}  {}",
            e.service, port_name, e.port, e.protocol, e.ip_family
        )?;
        for f in &e.frontends {
            writeln!(out, "  {}", frontend_text(f))?;
        }
        let set = |s: &Option<Vec<String>>| match s {
            None => "- (not used)".to_string(),
            Some(v) => join_or(v, "none"),
        };
        writeln!(out, "  cluster endpoints   {}", set(&e.cluster_endpoints))?;
        writeln!(out, "  local endpoints     {}", set(&e.local_endpoints))?;
        let external = if e.externally_accessible {
            format!(", external {}", e.external_traffic_policy)
        } else {
            String::new()
        };
        writeln!(
            out,
            "  traffic policy      internal {}{}",
            e.internal_traffic_policy, external
        )?;
        let affinity = match e.affinity_timeout_seconds {
            Some(t) => format!("ClientIP, {t}s"),
            None => "none".to_string(),
        };
        writeln!(out, "  session affinity    {affinity}")?;
        match e.when_no_endpoint {
            Some(NoEndpointVerdict::Reject) => {
                writeln!(
                    out,
                    "  no endpoint         REJECT: the service has no usable endpoint"
                )?;
            }
            Some(NoEndpointVerdict::Drop) => writeln!(
                out,
                "  no endpoint         DROP: endpoints exist, but a Local policy finds none on this node"
            )?,
            None => {}
        }
    }
    Ok(())
}

fn frontend_text(f: &Frontend) -> String {
    match f {
        Frontend::ClusterIp { address } => format!("ClusterIP           {address}"),
        Frontend::ExternalIp { address } => format!("ExternalIP          {address}"),
        Frontend::LoadBalancer {
            address,
            allowed_sources,
        } => {
            let allowed = match allowed_sources {
                None => String::new(),
                Some(v) => {
                    let v: Vec<String> = v.iter().map(IpNet::to_string).collect();
                    format!("  (only from {})", join_or(&v, "nowhere"))
                }
            };
            format!("LoadBalancer        {address}{allowed}")
        }
        Frontend::NodePort { port, addresses } => {
            format!(
                "NodePort            {port} on {}",
                join_or(addresses, "no node address")
            )
        }
        Frontend::HealthCheckNodePort { port } => format!("HealthCheckNodePort {port}"),
    }
}
