//! The validated Service.

use std::collections::BTreeSet;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::validate::{Ctx, MAX_LABEL};
use super::{
    IpFamily, LABEL_SERVICE_PROXY_NAME, ObjectKind, Problem, Protocol, ServiceName, TrafficPolicy,
    ValidationError, api,
};

/// Session affinity timeout Kubernetes defaults to.
pub const DEFAULT_AFFINITY_TIMEOUT: u32 = 10_800;
/// Largest session affinity timeout Kubernetes allows.
pub const MAX_AFFINITY_TIMEOUT: u32 = 86_400;
/// Most `topologyKeys` the API allowed.
pub const MAX_TOPOLOGY_KEYS: usize = 16;
/// Sanity limit on ports, externalIPs, LB ingresses and source ranges of one Service.
pub const MAX_LIST: usize = 1_024;

/// `spec.type`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ServiceType {
    /// Reachable on its ClusterIPs (and externalIPs).
    #[default]
    ClusterIP,
    /// Also reachable on a port of every node.
    NodePort,
    /// Also reachable on load-balancer ingress IPs.
    LoadBalancer,
    /// A DNS alias: no routing at all.
    ExternalName,
}

/// `spec.trafficDistribution`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TrafficDistribution {
    /// Deprecated alias of `PreferSameZone`.
    PreferClose,
    /// Prefer endpoints in this node's zone (through zone hints).
    PreferSameZone,
    /// Prefer endpoints on this node (through node hints), then the zone.
    PreferSameNode,
}

/// One validated port of a Service.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PortSpec {
    /// Port name; empty when the Service has a single unnamed port.
    pub name: String,
    /// Protocol.
    pub protocol: Protocol,
    /// The service port.
    pub port: u16,
    /// The NodePort, if allocated.
    pub node_port: Option<u16>,
}

/// A validated Service: everything routing needs, parsed and checked.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServiceInfo {
    /// Namespace and name.
    pub name: ServiceName,
    /// `spec.type`.
    pub service_type: ServiceType,
    /// ClusterIPs, at most one per family, in `spec.clusterIPs` order. Empty for headless
    /// and ExternalName Services (which get no rules).
    pub cluster_ips: Vec<IpAddr>,
    /// Ports.
    pub ports: Vec<PortSpec>,
    /// `spec.externalIPs`.
    pub external_ips: Vec<IpAddr>,
    /// VIP-mode load-balancer ingress IPs (LoadBalancer Services only; `ipMode: Proxy` skipped).
    pub load_balancer_ips: Vec<IpAddr>,
    /// `spec.loadBalancerSourceRanges`. (The legacy annotation is for cloud providers; kube-proxy
    /// does not read it, and neither does svcroute.)
    pub source_ranges: Vec<IpNet>,
    /// `spec.externalTrafficPolicy`.
    pub external_traffic_policy: TrafficPolicy,
    /// `spec.internalTrafficPolicy`.
    pub internal_traffic_policy: TrafficPolicy,
    /// `spec.healthCheckNodePort`, kept only for eTP=Local LoadBalancers.
    pub health_check_node_port: Option<u16>,
    /// ClientIP session affinity timeout in seconds; `None` without affinity.
    pub affinity_timeout: Option<u32>,
    /// Legacy `spec.topologyKeys`.
    pub topology_keys: Vec<String>,
    /// `spec.trafficDistribution`.
    pub traffic_distribution: Option<TrafficDistribution>,
}

impl ServiceInfo {
    /// Whether another proxy owns this Service (label `service.kubernetes.io/service-proxy-name`).
    pub fn belongs_to_other_proxy(svc: &api::Service) -> bool {
        svc.metadata.labels.contains_key(LABEL_SERVICE_PROXY_NAME)
    }

    /// The ClusterIP of one family, if the Service has one.
    pub fn cluster_ip(&self, family: IpFamily) -> Option<IpAddr> {
        self.cluster_ips
            .iter()
            .copied()
            .find(|ip| IpFamily::of(ip) == family)
    }

    /// Whether the Service gets any rules (not headless, not ExternalName).
    pub fn is_routed(&self) -> bool {
        !self.cluster_ips.is_empty()
    }

    /// Validates a Service as the API shapes it.
    pub fn from_api(svc: &api::Service) -> Result<Self, ValidationError> {
        let meta = &svc.metadata;
        let namespace = meta.namespace.as_deref().unwrap_or("default");
        let cx = Ctx::new(ObjectKind::Service, Some(namespace), meta.name.as_deref());
        let name = meta.name.as_deref().unwrap_or_default();
        cx.dns_label("metadata.namespace", namespace)?;
        // Service names are DNS-1035 labels: they must start with a letter.
        cx.dns_label("metadata.name", name)?;
        if !name.starts_with(|c: char| c.is_ascii_lowercase()) {
            return Err(cx.err(
                "metadata.name",
                Problem::InvalidName {
                    value: name.to_string(),
                    what: "DNS-1035 label",
                },
            ));
        }
        let spec = &svc.spec;
        let service_type = match spec.type_.as_deref() {
            None | Some("") | Some("ClusterIP") => ServiceType::ClusterIP,
            Some("NodePort") => ServiceType::NodePort,
            Some("LoadBalancer") => ServiceType::LoadBalancer,
            Some("ExternalName") => ServiceType::ExternalName,
            Some(other) => {
                return Err(cx.err(
                    "spec.type",
                    Problem::Unsupported {
                        value: super::validate::truncated(other),
                        expected: "ClusterIP, NodePort, LoadBalancer or ExternalName",
                    },
                ));
            }
        };
        let mut info = ServiceInfo {
            name: ServiceName::new(namespace, name),
            service_type,
            cluster_ips: Vec::new(),
            ports: Vec::new(),
            external_ips: Vec::new(),
            load_balancer_ips: Vec::new(),
            source_ranges: Vec::new(),
            external_traffic_policy: TrafficPolicy::Cluster,
            internal_traffic_policy: TrafficPolicy::Cluster,
            health_check_node_port: None,
            affinity_timeout: None,
            topology_keys: Vec::new(),
            traffic_distribution: None,
        };
        if service_type == ServiceType::ExternalName {
            // A DNS alias: kube-proxy builds no service ports for it, whatever else it says.
            return Ok(info);
        }
        info.cluster_ips = cluster_ips(&cx, spec)?;
        let headless = info.cluster_ips.is_empty();
        info.ports = ports(&cx, spec, service_type, headless)?;

        cx.max_len("spec.externalIPs", &spec.external_ips, MAX_LIST)?;
        for (i, ip) in spec.external_ips.iter().enumerate() {
            let ip = cx.ip(&format!("spec.externalIPs[{i}]"), ip)?;
            if !info.external_ips.contains(&ip) {
                info.external_ips.push(ip);
            }
        }
        if service_type == ServiceType::LoadBalancer {
            let ingress = svc
                .status
                .as_ref()
                .and_then(|s| s.load_balancer.as_ref())
                .map(|lb| lb.ingress.as_slice())
                .unwrap_or_default();
            cx.max_len("status.loadBalancer.ingress", ingress, MAX_LIST)?;
            for (i, ing) in ingress.iter().enumerate() {
                let field = format!("status.loadBalancer.ingress[{i}]");
                match ing.ip_mode.as_deref() {
                    None | Some("VIP") => {}
                    Some("Proxy") => continue,
                    Some(other) => {
                        return Err(cx.err(
                            format!("{field}.ipMode"),
                            Problem::Unsupported {
                                value: super::validate::truncated(other),
                                expected: "VIP or Proxy",
                            },
                        ));
                    }
                }
                if let Some(ip) = ing.ip.as_deref().filter(|s| !s.is_empty()) {
                    let ip = cx.ip(&format!("{field}.ip"), ip)?;
                    if !info.load_balancer_ips.contains(&ip) {
                        info.load_balancer_ips.push(ip);
                    }
                }
            }
            info.source_ranges = source_ranges(&cx, svc)?;
        }

        info.external_traffic_policy = policy(
            &cx,
            "spec.externalTrafficPolicy",
            &spec.external_traffic_policy,
        )?;
        info.internal_traffic_policy = policy(
            &cx,
            "spec.internalTrafficPolicy",
            &spec.internal_traffic_policy,
        )?;
        if let Some(hc) = spec.health_check_node_port.filter(|hc| *hc != 0) {
            let hc = cx.port("spec.healthCheckNodePort", hc)?;
            // Only eTP=Local LoadBalancers are health-checked (the API clears it otherwise).
            if service_type == ServiceType::LoadBalancer
                && info.external_traffic_policy == TrafficPolicy::Local
            {
                info.health_check_node_port = Some(hc);
            }
        }
        info.affinity_timeout = affinity(&cx, spec)?;
        info.topology_keys = topology_keys(&cx, spec)?;
        if !info.topology_keys.is_empty() && info.external_traffic_policy == TrafficPolicy::Local {
            return Err(cx.err(
                "spec.topologyKeys",
                Problem::Forbidden("may not be specified when externalTrafficPolicy is Local"),
            ));
        }
        info.traffic_distribution = match spec.traffic_distribution.as_deref() {
            None | Some("") => None,
            Some("PreferClose") => Some(TrafficDistribution::PreferClose),
            Some("PreferSameZone") => Some(TrafficDistribution::PreferSameZone),
            Some("PreferSameNode") => Some(TrafficDistribution::PreferSameNode),
            Some(other) => {
                return Err(cx.err(
                    "spec.trafficDistribution",
                    Problem::Unsupported {
                        value: super::validate::truncated(other),
                        expected: "PreferClose, PreferSameZone or PreferSameNode",
                    },
                ));
            }
        };
        Ok(info)
    }
}

/// `spec.clusterIP` / `spec.clusterIPs` / `spec.ipFamilies`: empty result = headless or unset.
fn cluster_ips(cx: &Ctx, spec: &api::ServiceSpec) -> Result<Vec<IpAddr>, ValidationError> {
    let primary = spec.cluster_ip.as_deref().unwrap_or_default();
    if primary == "None" || (primary.is_empty() && spec.cluster_ips.is_empty()) {
        return Ok(Vec::new());
    }
    cx.max_len("spec.clusterIPs", &spec.cluster_ips, 2)?;
    if let Some(first) = spec.cluster_ips.first()
        && !primary.is_empty()
        && first != primary
    {
        return Err(cx.err(
            "spec.clusterIPs[0]",
            Problem::Forbidden("must equal spec.clusterIP"),
        ));
    }
    let mut ips = Vec::new();
    if spec.cluster_ips.is_empty() {
        ips.push(cx.ip("spec.clusterIP", primary)?);
    } else {
        if spec.cluster_ips.iter().any(|s| s == "None") {
            return Ok(Vec::new());
        }
        for (i, s) in spec.cluster_ips.iter().enumerate() {
            let ip = cx.ip(&format!("spec.clusterIPs[{i}]"), s)?;
            if ips.iter().any(|o| IpFamily::of(o) == IpFamily::of(&ip)) {
                return Err(cx.err(
                    format!("spec.clusterIPs[{i}]"),
                    Problem::Duplicate(format!("{} ClusterIP", IpFamily::of(&ip))),
                ));
            }
            ips.push(ip);
        }
    }
    cx.max_len("spec.ipFamilies", &spec.ip_families, 2)?;
    for (i, fam) in spec.ip_families.iter().enumerate() {
        let field = format!("spec.ipFamilies[{i}]");
        let family = match fam.as_str() {
            "IPv4" => IpFamily::IPv4,
            "IPv6" => IpFamily::IPv6,
            other => {
                return Err(cx.err(
                    field,
                    Problem::Unsupported {
                        value: super::validate::truncated(other),
                        expected: "IPv4 or IPv6",
                    },
                ));
            }
        };
        if let Some(ip) = ips.get(i)
            && IpFamily::of(ip) != family
        {
            let which = if i == 0 && spec.cluster_ips.is_empty() {
                "spec.clusterIP".to_string()
            } else {
                format!("spec.clusterIPs[{i}]")
            };
            return Err(cx.err(
                which,
                Problem::WrongFamily {
                    value: ip.to_string(),
                    expected: family,
                },
            ));
        }
    }
    Ok(ips)
}

fn ports(
    cx: &Ctx,
    spec: &api::ServiceSpec,
    service_type: ServiceType,
    headless: bool,
) -> Result<Vec<PortSpec>, ValidationError> {
    if spec.ports.is_empty() && !headless {
        return Err(cx.err("spec.ports", Problem::Missing));
    }
    cx.max_len("spec.ports", &spec.ports, MAX_LIST)?;
    let mut out: Vec<PortSpec> = Vec::with_capacity(spec.ports.len());
    let mut names = BTreeSet::new();
    let mut seen = BTreeSet::new();
    let mut node_ports = BTreeSet::new();
    for (i, p) in spec.ports.iter().enumerate() {
        let field = |f: &str| format!("spec.ports[{i}].{f}");
        let name = p.name.clone().unwrap_or_default();
        if name.is_empty() {
            if spec.ports.len() > 1 {
                return Err(cx.err(field("name"), Problem::Missing));
            }
        } else {
            cx.dns_label(&field("name"), &name)?;
        }
        if !names.insert(name.clone()) {
            return Err(cx.err(field("name"), Problem::Duplicate(name)));
        }
        let protocol = cx.protocol(&field("protocol"), p.protocol.as_deref())?;
        let port = cx.port(
            &field("port"),
            p.port
                .ok_or_else(|| cx.err(field("port"), Problem::Missing))?,
        )?;
        if !seen.insert((port, protocol)) {
            return Err(cx.err(
                field("port"),
                Problem::Duplicate(format!("{port}/{protocol}")),
            ));
        }
        let node_port = match p.node_port {
            None | Some(0) => None,
            Some(np) => {
                if matches!(service_type, ServiceType::ClusterIP) {
                    return Err(cx.err(
                        field("nodePort"),
                        Problem::Forbidden("may not be used when type is ClusterIP"),
                    ));
                }
                let np = cx.port(&field("nodePort"), np)?;
                if !node_ports.insert((np, protocol)) {
                    return Err(cx.err(
                        field("nodePort"),
                        Problem::Duplicate(format!("{np}/{protocol}")),
                    ));
                }
                Some(np)
            }
        };
        out.push(PortSpec {
            name,
            protocol,
            port,
            node_port,
        });
    }
    Ok(out)
}

fn source_ranges(cx: &Ctx, svc: &api::Service) -> Result<Vec<IpNet>, ValidationError> {
    let ranges = &svc.spec.load_balancer_source_ranges;
    cx.max_len("spec.loadBalancerSourceRanges", ranges, MAX_LIST)?;
    let mut out = ranges
        .iter()
        .enumerate()
        .map(|(i, r)| cx.cidr(&format!("spec.loadBalancerSourceRanges[{i}]"), r))
        .collect::<Result<Vec<_>, _>>()?;
    out.sort();
    out.dedup();
    Ok(out)
}

fn policy(cx: &Ctx, field: &str, value: &Option<String>) -> Result<TrafficPolicy, ValidationError> {
    match value.as_deref() {
        // "Global" is the pre-1.15 spelling of Cluster.
        None | Some("") | Some("Cluster") | Some("Global") => Ok(TrafficPolicy::Cluster),
        Some("Local") => Ok(TrafficPolicy::Local),
        Some(other) => Err(cx.err(
            field,
            Problem::Unsupported {
                value: super::validate::truncated(other),
                expected: "Cluster or Local",
            },
        )),
    }
}

fn affinity(cx: &Ctx, spec: &api::ServiceSpec) -> Result<Option<u32>, ValidationError> {
    match spec.session_affinity.as_deref() {
        None | Some("") | Some("None") => Ok(None),
        Some("ClientIP") => {
            let timeout = spec
                .session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds);
            match timeout {
                None => Ok(Some(DEFAULT_AFFINITY_TIMEOUT)),
                Some(t) if (1..=i64::from(MAX_AFFINITY_TIMEOUT)).contains(&t) => {
                    Ok(u32::try_from(t).ok())
                }
                Some(t) => Err(cx.err(
                    "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
                    Problem::OutOfRange {
                        value: t,
                        min: 1,
                        max: i64::from(MAX_AFFINITY_TIMEOUT),
                    },
                )),
            }
        }
        Some(other) => Err(cx.err(
            "spec.sessionAffinity",
            Problem::Unsupported {
                value: super::validate::truncated(other),
                expected: "None or ClientIP",
            },
        )),
    }
}

fn topology_keys(cx: &Ctx, spec: &api::ServiceSpec) -> Result<Vec<String>, ValidationError> {
    let keys = &spec.topology_keys;
    cx.max_len("spec.topologyKeys", keys, MAX_TOPOLOGY_KEYS)?;
    let mut seen = BTreeSet::new();
    for (i, key) in keys.iter().enumerate() {
        let field = format!("spec.topologyKeys[{i}]");
        if key == "*" {
            if i + 1 != keys.len() {
                return Err(cx.err(field, Problem::Forbidden("\"*\" must be the last key")));
            }
        } else {
            cx.short(&field, key, 253 + 1 + MAX_LABEL)?;
            cx.label_key(&field, key)?;
        }
        if !seen.insert(key.as_str()) {
            return Err(cx.err(field, Problem::Duplicate(key.clone())));
        }
    }
    Ok(keys.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(yaml_json: serde_json::Value) -> api::Service {
        serde_json::from_value(yaml_json).unwrap()
    }

    fn err_field(v: serde_json::Value) -> String {
        ServiceInfo::from_api(&svc(v)).unwrap_err().field
    }

    #[test]
    fn parses_a_dual_stack_load_balancer() {
        let s = svc(serde_json::json!({
            "metadata": {"name": "web", "namespace": "prod"},
            "spec": {
                "type": "LoadBalancer", "clusterIP": "10.96.0.10",
                "clusterIPs": ["10.96.0.10", "fd00::10"], "ipFamilies": ["IPv4", "IPv6"],
                "ports": [{"name": "http", "port": 80, "nodePort": 30080}],
                "externalTrafficPolicy": "Local", "healthCheckNodePort": 32000,
                "loadBalancerSourceRanges": ["192.168.0.0/16"],
                "sessionAffinity": "ClientIP"
            },
            "status": {"loadBalancer": {"ingress": [{"ip": "1.2.3.4"}, {"ip": "5.6.7.8", "ipMode": "Proxy"}]}}
        }));
        let info = ServiceInfo::from_api(&s).unwrap();
        assert_eq!(info.cluster_ips.len(), 2);
        assert_eq!(
            info.load_balancer_ips,
            vec!["1.2.3.4".parse::<IpAddr>().unwrap()]
        );
        assert_eq!(info.ports[0].node_port, Some(30080));
        assert_eq!(info.affinity_timeout, Some(DEFAULT_AFFINITY_TIMEOUT));
        assert_eq!(info.external_traffic_policy, TrafficPolicy::Local);
        assert_eq!(
            info.cluster_ip(IpFamily::IPv6),
            Some("fd00::10".parse().unwrap())
        );
    }

    #[test]
    fn headless_and_external_name_are_not_routed() {
        let h = svc(serde_json::json!({"metadata": {"name": "h"}, "spec": {"clusterIP": "None"}}));
        assert!(!ServiceInfo::from_api(&h).unwrap().is_routed());
        let e = svc(
            serde_json::json!({"metadata": {"name": "e"}, "spec": {"type": "ExternalName", "externalName": "x.example"}}),
        );
        assert!(!ServiceInfo::from_api(&e).unwrap().is_routed());
    }

    #[test]
    fn bad_fields_are_named() {
        let base = |spec: serde_json::Value| serde_json::json!({"metadata": {"name": "s", "namespace": "ns"}, "spec": spec});
        assert_eq!(
            err_field(base(
                serde_json::json!({"clusterIP": "10.0.0.300", "ports": [{"port": 80}]})
            )),
            "spec.clusterIP"
        );
        assert_eq!(
            err_field(base(
                serde_json::json!({"clusterIP": "10.0.0.1", "ipFamilies": ["IPv6"], "ports": [{"port": 80}]})
            )),
            "spec.clusterIP"
        );
        assert_eq!(
            err_field(base(
                serde_json::json!({"clusterIP": "10.0.0.1", "ports": [{"port": 0}]})
            )),
            "spec.ports[0].port"
        );
        assert_eq!(
            err_field(base(
                serde_json::json!({"clusterIP": "10.0.0.1", "ports": [{"port": 70000}]})
            )),
            "spec.ports[0].port"
        );
        assert_eq!(
            err_field(base(
                serde_json::json!({"clusterIP": "10.0.0.1", "ports": [{"name": "a", "port": 80}, {"name": "b", "port": 80}]})
            )),
            "spec.ports[1].port"
        );
        assert_eq!(
            err_field(base(
                serde_json::json!({"clusterIP": "10.0.0.1", "ports": [{"port": 80, "protocol": "ICMP"}]})
            )),
            "spec.ports[0].protocol"
        );
        assert_eq!(
            err_field(base(
                serde_json::json!({"clusterIP": "10.0.0.1", "ports": [{"port": 80}], "topologyKeys": ["*", "a"]})
            )),
            "spec.topologyKeys[0]"
        );
        assert_eq!(
            err_field(base(
                serde_json::json!({"clusterIP": "10.0.0.1", "ports": [{"port": 80}], "sessionAffinity": "ClientIP", "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 86401}}})
            )),
            "spec.sessionAffinityConfig.clientIP.timeoutSeconds"
        );
        let long = "a".repeat(64);
        assert_eq!(ServiceInfo::from_api(&svc(serde_json::json!({"metadata": {"name": long}, "spec": {"clusterIP": "10.0.0.1", "ports": [{"port": 80}]}}))).unwrap_err().field, "metadata.name");
    }
}
