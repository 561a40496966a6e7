//! The Kubernetes API shape of the objects svcroute reads.
//!
//! These structs deserialize exactly what `kubectl get -o yaml|json` prints (field names as in
//! the API, `camelCase`), keeping only the fields Service routing needs; unknown fields are
//! ignored. Every field is optional, as in the API: the validated forms in
//! [`super::service`], [`super::slice`] and [`super::node`] decide what is required.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};

/// Reads an explicit `null` as the field's default, as the API server does (kubectl prints
/// `endpoints: null` for an empty EndpointSlice).
fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

/// `metadata` of any object.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectMeta {
    /// `metadata.name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `metadata.namespace`; Nodes have none, namespaced objects default to `default`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// `metadata.labels`.
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub labels: BTreeMap<String, String>,
    /// `metadata.annotations`.
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub annotations: BTreeMap<String, String>,
}

impl ObjectMeta {
    /// Metadata carrying only a name (and a namespace, for namespaced objects).
    pub fn named(namespace: Option<&str>, name: &str) -> Self {
        ObjectMeta {
            name: Some(name.to_string()),
            namespace: namespace.map(str::to_string),
            ..ObjectMeta::default()
        }
    }
}

/// A `v1/Service`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Service {
    /// `metadata`.
    #[serde(default, deserialize_with = "null_as_default")]
    pub metadata: ObjectMeta,
    /// `spec`.
    #[serde(default, deserialize_with = "null_as_default")]
    pub spec: ServiceSpec,
    /// `status`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<ServiceStatus>,
}

/// `Service.spec`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    /// `spec.type`: ClusterIP (default), NodePort, LoadBalancer or ExternalName.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub type_: Option<String>,
    /// `spec.clusterIP`: an address, `None` (headless) or empty.
    #[serde(default, rename = "clusterIP", skip_serializing_if = "Option::is_none")]
    pub cluster_ip: Option<String>,
    /// `spec.clusterIPs`: one address per family; the first equals `clusterIP`.
    #[serde(
        default,
        deserialize_with = "null_as_default",
        rename = "clusterIPs",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub cluster_ips: Vec<String>,
    /// `spec.ipFamilies`.
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub ip_families: Vec<String>,
    /// `spec.ports`.
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub ports: Vec<ServicePort>,
    /// `spec.externalIPs`.
    #[serde(
        default,
        deserialize_with = "null_as_default",
        rename = "externalIPs",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub external_ips: Vec<String>,
    /// `spec.externalName` (ExternalName services only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_name: Option<String>,
    /// `spec.loadBalancerIP` (deprecated; ignored for routing, only status counts).
    #[serde(
        default,
        rename = "loadBalancerIP",
        skip_serializing_if = "Option::is_none"
    )]
    pub load_balancer_ip: Option<String>,
    /// `spec.loadBalancerSourceRanges`: CIDRs allowed to reach the LB IPs.
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub load_balancer_source_ranges: Vec<String>,
    /// `spec.externalTrafficPolicy`: Cluster (default) or Local.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_traffic_policy: Option<String>,
    /// `spec.internalTrafficPolicy`: Cluster (default) or Local.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub internal_traffic_policy: Option<String>,
    /// `spec.healthCheckNodePort` (eTP=Local LoadBalancers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check_node_port: Option<i64>,
    /// `spec.sessionAffinity`: None (default) or ClientIP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_affinity: Option<String>,
    /// `spec.sessionAffinityConfig`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_affinity_config: Option<SessionAffinityConfig>,
    /// `spec.topologyKeys` (Kubernetes 1.17–1.21, still used by edge routers).
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub topology_keys: Vec<String>,
    /// `spec.trafficDistribution`: PreferClose, PreferSameZone or PreferSameNode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic_distribution: Option<String>,
}

/// One entry of `Service.spec.ports`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServicePort {
    /// `name`: required when the service has several ports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `protocol`: TCP (default), UDP or SCTP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// `port`: the service port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<i64>,
    /// `targetPort`: a number or a name; resolved by the EndpointSlice controller, so unused here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_port: Option<serde_json_like::IntOrString>,
    /// `nodePort`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_port: Option<i64>,
    /// `appProtocol` (informational).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_protocol: Option<String>,
}

/// Small helper types shaped like the API's JSON values.
pub mod serde_json_like {
    use serde::{Deserialize, Serialize};

    /// The API's `IntOrString`.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(untagged)]
    pub enum IntOrString {
        /// A number.
        Int(i64),
        /// A name.
        String(String),
    }
}

/// `spec.sessionAffinityConfig`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionAffinityConfig {
    /// `clientIP`.
    #[serde(default, rename = "clientIP", skip_serializing_if = "Option::is_none")]
    pub client_ip: Option<ClientIpConfig>,
}

/// `spec.sessionAffinityConfig.clientIP`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClientIpConfig {
    /// `timeoutSeconds`: 1..=86400, default 10800.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<i64>,
}

/// `Service.status`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceStatus {
    /// `status.loadBalancer`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_balancer: Option<LoadBalancerStatus>,
}

/// `status.loadBalancer`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LoadBalancerStatus {
    /// `status.loadBalancer.ingress`.
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub ingress: Vec<LoadBalancerIngress>,
}

/// One `status.loadBalancer.ingress` entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LoadBalancerIngress {
    /// `ip`: the ingress address (entries with only a hostname are not routed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    /// `hostname`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// `ipMode`: VIP (default) or Proxy; Proxy entries are not programmed (KEP-1860).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_mode: Option<String>,
}

/// A `discovery.k8s.io/v1` EndpointSlice.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointSlice {
    /// `metadata`; the label `kubernetes.io/service-name` names the owning service.
    #[serde(default, deserialize_with = "null_as_default")]
    pub metadata: ObjectMeta,
    /// `addressType`: IPv4, IPv6 or FQDN.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address_type: Option<String>,
    /// `endpoints`.
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub endpoints: Vec<Endpoint>,
    /// `ports`.
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub ports: Vec<EndpointPort>,
}

/// One entry of `EndpointSlice.endpoints`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    /// `addresses`: only the first is used, as upstream does.
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub addresses: Vec<String>,
    /// `conditions`.
    #[serde(default, deserialize_with = "null_as_default")]
    pub conditions: EndpointConditions,
    /// `nodeName`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    /// `zone`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    /// `hints`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hints: Option<EndpointHints>,
    /// `deprecatedTopology`: node labels, used by legacy `topologyKeys`.
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub deprecated_topology: BTreeMap<String, String>,
    /// `hostname` (informational).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
}

/// `endpoints[].conditions`; unset ready means true, unset serving means ready, unset
/// terminating means false.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointConditions {
    /// `ready`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready: Option<bool>,
    /// `serving`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serving: Option<bool>,
    /// `terminating`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub terminating: Option<bool>,
}

/// `endpoints[].hints`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointHints {
    /// `forZones`.
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub for_zones: Vec<NamedHint>,
    /// `forNodes` (PreferSameNode).
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub for_nodes: Vec<NamedHint>,
}

/// A `{name: ...}` hint entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamedHint {
    /// The zone or node name.
    #[serde(default, deserialize_with = "null_as_default")]
    pub name: String,
}

/// One entry of `EndpointSlice.ports`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointPort {
    /// `name`: matched against the service port name (empty = unnamed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `port`: ports with no number are skipped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<i64>,
    /// `protocol`: TCP (default), UDP or SCTP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// `appProtocol` (informational).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_protocol: Option<String>,
}

/// A `v1/Node`: only its name and labels matter for routing (topology).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Node {
    /// `metadata`.
    #[serde(default, deserialize_with = "null_as_default")]
    pub metadata: ObjectMeta,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explicit_nulls_read_as_absent() {
        let s: EndpointSlice = serde_json::from_str(
            r#"{"metadata": {"name": "s", "labels": null}, "addressType": "IPv4",
                "endpoints": null, "ports": null}"#,
        )
        .unwrap();
        assert!(s.endpoints.is_empty() && s.ports.is_empty());
        let svc: Service = serde_json::from_str(
            r#"{"metadata": null, "spec": {"ports": [{"port": 80}], "externalIPs": null,
                "sessionAffinityConfig": null}, "status": null}"#,
        )
        .unwrap();
        assert_eq!(svc.spec.ports.len(), 1);
        let ep: Endpoint = serde_json::from_str(
            r#"{"addresses": ["10.0.0.1"], "conditions": null, "hints": null}"#,
        )
        .unwrap();
        assert_eq!(ep.conditions, EndpointConditions::default());
    }
}
