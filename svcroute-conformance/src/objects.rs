//! Builders for the Kubernetes API objects scenarios are made of.
//!
//! They produce the API shape ([`svcroute_core::model::api`]) exactly as `kubectl` would print
//! it, so a scenario exercises the core's validation as well as its routing. Every builder is
//! infallible: addresses stay strings until the core validates them.
//!
//! ```
//! use svcroute_conformance::objects::{ServiceBuilder, SliceBuilder, ep};
//!
//! let svc = ServiceBuilder::new("default", "web")
//!     .cluster_ip("10.96.0.10")
//!     .port("http", 80, "TCP")
//!     .build();
//! let slice = SliceBuilder::ipv4("default", "web-abc", "web")
//!     .port("http", 8080, "TCP")
//!     .endpoint(ep("10.244.1.1").on("node-b"))
//!     .build();
//! assert_eq!(svc.spec.cluster_ips, vec!["10.96.0.10".to_string()]);
//! assert_eq!(slice.endpoints.len(), 1);
//! ```

use svcroute_core::model::api;
use svcroute_core::model::{LABEL_HOSTNAME, LABEL_SERVICE_NAME, LABEL_ZONE};
use svcroute_core::watch::{Event, WatchEvent};

/// Builds a `v1/Service`.
#[derive(Debug, Clone)]
pub struct ServiceBuilder {
    svc: api::Service,
}

impl ServiceBuilder {
    /// A Service with no type (ClusterIP), no address and no port yet.
    pub fn new(namespace: &str, name: &str) -> Self {
        ServiceBuilder {
            svc: api::Service {
                metadata: api::ObjectMeta::named(Some(namespace), name),
                ..api::Service::default()
            },
        }
    }

    /// Sets `spec.type` (`ClusterIP`, `NodePort`, `LoadBalancer`, `ExternalName`).
    pub fn kind(mut self, type_: &str) -> Self {
        self.svc.spec.type_ = Some(type_.to_string());
        self
    }

    /// `type: NodePort`.
    pub fn node_port_type(self) -> Self {
        self.kind("NodePort")
    }

    /// `type: LoadBalancer`.
    pub fn load_balancer(self) -> Self {
        self.kind("LoadBalancer")
    }

    /// `type: ExternalName` with `spec.externalName`.
    pub fn external_name(mut self, target: &str) -> Self {
        self.svc.spec.external_name = Some(target.to_string());
        self.kind("ExternalName")
    }

    /// A single-stack ClusterIP: sets `clusterIP` and `clusterIPs`.
    pub fn cluster_ip(self, ip: &str) -> Self {
        self.cluster_ips(&[ip])
    }

    /// One ClusterIP per family, primary first; `ipFamilies` follows the addresses.
    pub fn cluster_ips(mut self, ips: &[&str]) -> Self {
        self.svc.spec.cluster_ip = ips.first().map(|s| s.to_string());
        self.svc.spec.cluster_ips = ips.iter().map(|s| s.to_string()).collect();
        self.svc.spec.ip_families = ips
            .iter()
            .map(|s| if s.contains(':') { "IPv6" } else { "IPv4" }.to_string())
            .collect();
        self
    }

    /// `clusterIP: None` (headless).
    pub fn headless(mut self) -> Self {
        self.svc.spec.cluster_ip = Some("None".to_string());
        self.svc.spec.cluster_ips = vec!["None".to_string()];
        self
    }

    /// Adds a port (`name` empty for a single unnamed port).
    pub fn port(mut self, name: &str, port: i64, protocol: &str) -> Self {
        self.svc.spec.ports.push(api::ServicePort {
            name: (!name.is_empty()).then(|| name.to_string()),
            protocol: Some(protocol.to_string()),
            port: Some(port),
            ..api::ServicePort::default()
        });
        self
    }

    /// Adds a port with a NodePort.
    pub fn node_port(mut self, name: &str, port: i64, protocol: &str, node_port: i64) -> Self {
        self = self.port(name, port, protocol);
        if let Some(last) = self.svc.spec.ports.last_mut() {
            last.node_port = Some(node_port);
        }
        self
    }

    /// Adds an entry to `spec.externalIPs`.
    pub fn external_ip(mut self, ip: &str) -> Self {
        self.svc.spec.external_ips.push(ip.to_string());
        self
    }

    fn ingress(mut self, ip: &str, mode: Option<&str>) -> Self {
        let status = self
            .svc
            .status
            .get_or_insert_with(api::ServiceStatus::default);
        let lb = status
            .load_balancer
            .get_or_insert_with(api::LoadBalancerStatus::default);
        lb.ingress.push(api::LoadBalancerIngress {
            ip: Some(ip.to_string()),
            hostname: None,
            ip_mode: mode.map(str::to_string),
        });
        self
    }

    /// Adds a VIP-mode `status.loadBalancer.ingress` address.
    pub fn lb_ingress(self, ip: &str) -> Self {
        self.ingress(ip, None)
    }

    /// Adds an `ipMode: Proxy` ingress address (never programmed by a proxy).
    pub fn lb_ingress_proxy_mode(self, ip: &str) -> Self {
        self.ingress(ip, Some("Proxy"))
    }

    /// Adds an entry to `spec.loadBalancerSourceRanges`.
    pub fn source_range(mut self, cidr: &str) -> Self {
        self.svc
            .spec
            .load_balancer_source_ranges
            .push(cidr.to_string());
        self
    }

    /// `externalTrafficPolicy: Local`.
    pub fn external_policy_local(mut self) -> Self {
        self.svc.spec.external_traffic_policy = Some("Local".to_string());
        self
    }

    /// `internalTrafficPolicy: Local`.
    pub fn internal_policy_local(mut self) -> Self {
        self.svc.spec.internal_traffic_policy = Some("Local".to_string());
        self
    }

    /// `spec.healthCheckNodePort`.
    pub fn health_check_node_port(mut self, port: i64) -> Self {
        self.svc.spec.health_check_node_port = Some(port);
        self
    }

    /// `sessionAffinity: ClientIP`, with `timeoutSeconds` when given.
    pub fn client_ip_affinity(mut self, timeout_seconds: Option<i64>) -> Self {
        self.svc.spec.session_affinity = Some("ClientIP".to_string());
        self.svc.spec.session_affinity_config =
            timeout_seconds.map(|t| api::SessionAffinityConfig {
                client_ip: Some(api::ClientIpConfig {
                    timeout_seconds: Some(t),
                }),
            });
        self
    }

    /// Legacy `spec.topologyKeys`.
    pub fn topology_keys(mut self, keys: &[&str]) -> Self {
        self.svc.spec.topology_keys = keys.iter().map(|k| k.to_string()).collect();
        self
    }

    /// `spec.trafficDistribution`.
    pub fn traffic_distribution(mut self, value: &str) -> Self {
        self.svc.spec.traffic_distribution = Some(value.to_string());
        self
    }

    /// Adds a label.
    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.svc
            .metadata
            .labels
            .insert(key.to_string(), value.to_string());
        self
    }

    /// Adds an annotation.
    pub fn annotation(mut self, key: &str, value: &str) -> Self {
        self.svc
            .metadata
            .annotations
            .insert(key.to_string(), value.to_string());
        self
    }

    /// The Service.
    pub fn build(self) -> api::Service {
        self.svc
    }

    /// An `Apply` event for the Service.
    pub fn apply(self) -> WatchEvent {
        Event::Apply(self.svc).into()
    }
}

/// Builds one `endpoints[]` entry of an EndpointSlice. Start with [`ep`].
#[derive(Debug, Clone)]
pub struct EndpointBuilder {
    ep: api::Endpoint,
}

/// An endpoint at `ip` with every condition unset (ready, serving, not terminating).
pub fn ep(ip: &str) -> EndpointBuilder {
    EndpointBuilder {
        ep: api::Endpoint {
            addresses: vec![ip.to_string()],
            ..api::Endpoint::default()
        },
    }
}

impl EndpointBuilder {
    /// `nodeName`.
    pub fn on(mut self, node: &str) -> Self {
        self.ep.node_name = Some(node.to_string());
        self
    }

    /// `zone`.
    pub fn zone(mut self, zone: &str) -> Self {
        self.ep.zone = Some(zone.to_string());
        self
    }

    /// `hostname` (informational, as StatefulSets set it).
    pub fn hostname(mut self, hostname: &str) -> Self {
        self.ep.hostname = Some(hostname.to_string());
        self
    }

    /// `conditions.ready`.
    pub fn ready(mut self, ready: bool) -> Self {
        self.ep.conditions.ready = Some(ready);
        self
    }

    /// `conditions.serving`.
    pub fn serving(mut self, serving: bool) -> Self {
        self.ep.conditions.serving = Some(serving);
        self
    }

    /// `conditions.terminating`.
    pub fn terminating(mut self, terminating: bool) -> Self {
        self.ep.conditions.terminating = Some(terminating);
        self
    }

    /// A pod shutting down but still answering: ready false, serving true, terminating true.
    pub fn terminating_serving(self) -> Self {
        self.ready(false).serving(true).terminating(true)
    }

    /// A pod shutting down and no longer answering: all three conditions false but terminating.
    pub fn terminating_not_serving(self) -> Self {
        self.ready(false).serving(false).terminating(true)
    }

    /// A pod that is not ready and not terminating (failing its readiness probe).
    pub fn not_ready(self) -> Self {
        self.ready(false).serving(false).terminating(false)
    }

    /// `hints.forZones`.
    pub fn zone_hints(mut self, zones: &[&str]) -> Self {
        let hints = self
            .ep
            .hints
            .get_or_insert_with(api::EndpointHints::default);
        hints.for_zones = zones
            .iter()
            .map(|z| api::NamedHint {
                name: z.to_string(),
            })
            .collect();
        self
    }

    /// `hints.forNodes`.
    pub fn node_hints(mut self, nodes: &[&str]) -> Self {
        let hints = self
            .ep
            .hints
            .get_or_insert_with(api::EndpointHints::default);
        hints.for_nodes = nodes
            .iter()
            .map(|n| api::NamedHint {
                name: n.to_string(),
            })
            .collect();
        self
    }

    /// Adds a `deprecatedTopology` entry (node labels copied by old EndpointSlice controllers).
    pub fn deprecated_topology(mut self, key: &str, value: &str) -> Self {
        self.ep
            .deprecated_topology
            .insert(key.to_string(), value.to_string());
        self
    }

    /// The endpoint.
    pub fn build(self) -> api::Endpoint {
        self.ep
    }
}

/// Builds a `discovery.k8s.io/v1` EndpointSlice.
#[derive(Debug, Clone)]
pub struct SliceBuilder {
    slice: api::EndpointSlice,
}

impl SliceBuilder {
    /// A slice of `address_type` (`IPv4`, `IPv6` or `FQDN`) labelled as belonging to `service`.
    pub fn new(namespace: &str, name: &str, service: &str, address_type: &str) -> Self {
        let mut metadata = api::ObjectMeta::named(Some(namespace), name);
        metadata
            .labels
            .insert(LABEL_SERVICE_NAME.to_string(), service.to_string());
        SliceBuilder {
            slice: api::EndpointSlice {
                metadata,
                address_type: Some(address_type.to_string()),
                ..api::EndpointSlice::default()
            },
        }
    }

    /// An IPv4 slice.
    pub fn ipv4(namespace: &str, name: &str, service: &str) -> Self {
        Self::new(namespace, name, service, "IPv4")
    }

    /// An IPv6 slice.
    pub fn ipv6(namespace: &str, name: &str, service: &str) -> Self {
        Self::new(namespace, name, service, "IPv6")
    }

    /// Adds a port (`name` empty for the unnamed port).
    pub fn port(mut self, name: &str, port: i64, protocol: &str) -> Self {
        self.slice.ports.push(api::EndpointPort {
            name: Some(name.to_string()),
            port: Some(port),
            protocol: Some(protocol.to_string()),
            app_protocol: None,
        });
        self
    }

    /// Adds an endpoint.
    pub fn endpoint(mut self, endpoint: EndpointBuilder) -> Self {
        self.slice.endpoints.push(endpoint.build());
        self
    }

    /// Adds a label.
    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.slice
            .metadata
            .labels
            .insert(key.to_string(), value.to_string());
        self
    }

    /// The slice.
    pub fn build(self) -> api::EndpointSlice {
        self.slice
    }

    /// An `Apply` event for the slice.
    pub fn apply(self) -> WatchEvent {
        Event::Apply(self.slice).into()
    }
}

/// Builds a `v1/Node`.
#[derive(Debug, Clone)]
pub struct NodeBuilder {
    node: api::Node,
}

/// A Node named `name`, labelled with its host name.
pub fn node(name: &str) -> NodeBuilder {
    let mut metadata = api::ObjectMeta::named(None, name);
    metadata
        .labels
        .insert(LABEL_HOSTNAME.to_string(), name.to_string());
    NodeBuilder {
        node: api::Node { metadata },
    }
}

impl NodeBuilder {
    /// Adds a label.
    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.node
            .metadata
            .labels
            .insert(key.to_string(), value.to_string());
        self
    }

    /// Sets `topology.kubernetes.io/zone`.
    pub fn zone(self, zone: &str) -> Self {
        self.label(LABEL_ZONE, zone)
    }

    /// The Node.
    pub fn build(self) -> api::Node {
        self.node
    }

    /// An `Apply` event for the Node.
    pub fn apply(self) -> WatchEvent {
        Event::Apply(self.node).into()
    }
}
