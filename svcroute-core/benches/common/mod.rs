//! Workload generator shared by the `state` benchmark and the `memory` report.
//!
//! Builds realistic `api::*` objects directly (no JSON, so generation stays cheap): one
//! single-port Service per index, mostly ClusterIP with some NodePort, LoadBalancer (half of them
//! `externalTrafficPolicy: Local`), dual-stack, UDP, ClientIP-affinity and `PreferClose`
//! Services, and one IPv4 EndpointSlice per Service whose endpoints are spread over
//! [`NODES`] nodes in [`ZONES`] zones, with the conditions the EndpointSlice controller sets
//! (a few not ready, a few serving but terminating). Everything is a pure function of the index,
//! so every run sees the same cluster.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};

use svcroute_core::State;
use svcroute_core::model::{LABEL_HOSTNAME, LABEL_SERVICE_NAME, LABEL_ZONE, ProxyConfig, api};
use svcroute_core::watch::Event;

/// Nodes endpoints are spread over.
pub const NODES: usize = 100;
/// Zones the nodes are in (node `n` is in zone `n % ZONES.len()`).
pub const ZONES: [&str; 3] = ["zone-a", "zone-b", "zone-c"];
/// Namespaces the Services are spread over.
pub const NAMESPACES: usize = 40;

/// A cluster size: `services` Services with `endpoints` endpoints each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Workload {
    /// Number of Services (and EndpointSlices).
    pub services: usize,
    /// Endpoints per EndpointSlice.
    pub endpoints: usize,
}

/// The workloads the issue asks for, smallest first.
pub const WORKLOADS: [Workload; 4] = [
    Workload::new(100, 10),
    Workload::new(1_000, 10),
    Workload::new(10_000, 10),
    Workload::new(5_000, 50),
];

/// Node name of node `n`.
pub fn node_name(n: usize) -> String {
    format!("node-{n:03}")
}

/// The proxy's settings for every workload: it runs on `node-000` in `zone-a`, dual-stack.
pub fn config() -> ProxyConfig {
    let node = node_name(0);
    ProxyConfig {
        node_labels: BTreeMap::from([
            (LABEL_HOSTNAME.to_string(), node.clone()),
            (LABEL_ZONE.to_string(), ZONES[0].to_string()),
        ]),
        node_name: node,
        node_ips: vec![
            Ipv4Addr::new(10, 250, 0, 10).into(),
            "fd00:250::10".parse().expect("valid IPv6 literal"),
        ],
        cluster_cidrs: vec!["10.64.0.0/10".parse().expect("valid CIDR literal")],
        ..ProxyConfig::default()
    }
}

impl Workload {
    /// A workload of `services` Services with `endpoints` endpoints each.
    pub const fn new(services: usize, endpoints: usize) -> Self {
        Workload {
            services,
            endpoints,
        }
    }

    /// Benchmark id, e.g. `10000x10`.
    pub fn id(&self) -> String {
        format!("{}x{}", self.services, self.endpoints)
    }

    /// Total number of endpoints.
    pub fn endpoint_count(&self) -> usize {
        self.services * self.endpoints
    }

    /// The index of the Service whose slice the change benchmarks modify: a plain ClusterIP
    /// Service in the middle of the key space.
    pub fn changed_index(&self) -> usize {
        self.services / 2
    }

    /// Service number `i`.
    pub fn service(&self, i: usize) -> api::Service {
        let name = service_name(i);
        let dual_stack = i % 10 == 3;
        let udp = i % 25 == 13;
        let (type_, lb) = if i % 20 == 7 {
            ("NodePort", false)
        } else if i % 50 == 11 {
            ("LoadBalancer", true)
        } else {
            ("ClusterIP", false)
        };
        let local = lb && i % 100 == 11;
        let v4 = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 0)) + 10 + i as u32);
        let mut cluster_ips = vec![v4.to_string()];
        let mut families = vec!["IPv4".to_string()];
        if dual_stack {
            let v6 = Ipv6Addr::from(
                u128::from(
                    "fd00:10:96::"
                        .parse::<Ipv6Addr>()
                        .expect("valid IPv6 literal"),
                ) + 10
                    + i as u128,
            );
            cluster_ips.push(v6.to_string());
            families.push("IPv6".to_string());
        }
        let (port_name, protocol, port) = if udp {
            ("dns", "UDP", 53)
        } else {
            ("http", "TCP", 80)
        };
        let status = lb.then(|| api::ServiceStatus {
            load_balancer: Some(api::LoadBalancerStatus {
                ingress: vec![api::LoadBalancerIngress {
                    ip: Some(
                        Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 0, 0)) + i as u32)
                            .to_string(),
                    ),
                    ..Default::default()
                }],
            }),
        });
        api::Service {
            metadata: api::ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(namespace(i)),
                labels: BTreeMap::from([("app".to_string(), name)]),
                annotations: BTreeMap::new(),
            },
            spec: api::ServiceSpec {
                type_: Some(type_.to_string()),
                cluster_ip: Some(v4.to_string()),
                cluster_ips,
                ip_families: families,
                ports: vec![api::ServicePort {
                    name: Some(port_name.to_string()),
                    protocol: Some(protocol.to_string()),
                    port: Some(port),
                    target_port: Some(api::serde_json_like::IntOrString::Int(port + 8000)),
                    // Distinct per Service: NodePort indices are odd multiples of 5ths, LB even.
                    node_port: (type_ != "ClusterIP").then_some(30_000 + (i / 5) as i64),
                    app_protocol: None,
                }],
                external_traffic_policy: Some(if local { "Local" } else { "Cluster" }.to_string()),
                internal_traffic_policy: Some("Cluster".to_string()),
                health_check_node_port: local.then_some(32_000 + (i / 100) as i64),
                session_affinity: Some(if i % 30 == 17 { "ClientIP" } else { "None" }.to_string()),
                session_affinity_config: (i % 30 == 17).then_some(api::SessionAffinityConfig {
                    client_ip: Some(api::ClientIpConfig {
                        timeout_seconds: Some(10_800),
                    }),
                }),
                traffic_distribution: (i % 10 == 5).then(|| "PreferClose".to_string()),
                ..Default::default()
            },
            status,
        }
    }

    /// The EndpointSlice of Service number `i`.
    pub fn slice(&self, i: usize) -> api::EndpointSlice {
        let name = service_name(i);
        let udp = i % 25 == 13;
        let hints = i % 10 == 5;
        let (port_name, protocol, port) = if udp {
            ("dns", "UDP", 8053)
        } else {
            ("http", "TCP", 8080)
        };
        let endpoints = (0..self.endpoints)
            .map(|j| {
                let g = (i * self.endpoints + j) as u32;
                let node = (i * 7 + j * 17) % NODES;
                let zone = ZONES[node % ZONES.len()];
                // ~2% not ready, ~1% serving but terminating (a rolling update in progress).
                let (ready, serving, terminating) = if g % 53 == 1 {
                    (false, false, false)
                } else if g % 97 == 2 {
                    (false, true, true)
                } else {
                    (true, true, false)
                };
                api::Endpoint {
                    addresses: vec![
                        Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 64, 0, 0)) + 256 + g)
                            .to_string(),
                    ],
                    conditions: api::EndpointConditions {
                        ready: Some(ready),
                        serving: Some(serving),
                        terminating: Some(terminating),
                    },
                    node_name: Some(node_name(node)),
                    zone: Some(zone.to_string()),
                    hints: hints.then(|| api::EndpointHints {
                        for_zones: vec![api::NamedHint {
                            name: zone.to_string(),
                        }],
                        for_nodes: Vec::new(),
                    }),
                    deprecated_topology: BTreeMap::new(),
                    hostname: None,
                }
            })
            .collect();
        api::EndpointSlice {
            metadata: api::ObjectMeta {
                name: Some(format!(
                    "{name}-{:05x}",
                    (i as u64 * 2_654_435_761) % 0x10_0000
                )),
                namespace: Some(namespace(i)),
                labels: BTreeMap::from([
                    (LABEL_SERVICE_NAME.to_string(), name),
                    (
                        "endpointslice.kubernetes.io/managed-by".to_string(),
                        "endpointslice-controller.k8s.io".to_string(),
                    ),
                ]),
                annotations: BTreeMap::new(),
            },
            address_type: Some("IPv4".to_string()),
            endpoints,
            ports: vec![api::EndpointPort {
                name: Some(port_name.to_string()),
                port: Some(port),
                protocol: Some(protocol.to_string()),
                app_protocol: None,
            }],
        }
    }

    /// Every object of the workload: Services, then their slices.
    pub fn objects(&self) -> (Vec<api::Service>, Vec<api::EndpointSlice>) {
        (
            (0..self.services).map(|i| self.service(i)).collect(),
            (0..self.services).map(|i| self.slice(i)).collect(),
        )
    }

    /// A state holding the whole workload, resolved (changes already taken). Objects are
    /// generated and applied one at a time, so no copy of the input is kept.
    pub fn build_state(&self) -> State {
        let mut state = State::new(config()).expect("valid config");
        for i in 0..self.services {
            state
                .apply(Event::Apply(self.service(i)))
                .expect("valid Service");
            state
                .apply(Event::Apply(self.slice(i)))
                .expect("valid EndpointSlice");
            if i % 256 == 255 {
                drop(state.take_changes());
            }
        }
        drop(state.take_changes());
        state
    }
}

/// `slice` with its first endpoint's readiness flipped (ready ⇄ not ready): applying it, then
/// the original, then it again... makes every apply a real change of one service port.
pub fn flip_first_endpoint(slice: &api::EndpointSlice) -> api::EndpointSlice {
    let mut changed = slice.clone();
    if let Some(ep) = changed.endpoints.first_mut() {
        let ready = !ep.conditions.ready.unwrap_or(true);
        ep.conditions = api::EndpointConditions {
            ready: Some(ready),
            serving: Some(ready),
            terminating: Some(false),
        };
    }
    changed
}

/// Name of Service number `i` (a DNS-1035 label).
pub fn service_name(i: usize) -> String {
    format!("svc-{i:05}")
}

/// Namespace of Service number `i`.
pub fn namespace(i: usize) -> String {
    format!("team-{:02}", i % NAMESPACES)
}
