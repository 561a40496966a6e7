//! Services and EndpointSlices pointing at the pods of a [`Topology`].

use svcroute_conformance::objects::{EndpointBuilder, ServiceBuilder, SliceBuilder, ep};
use svcroute_core::model::IpFamily;
use svcroute_core::watch::WatchEvent;

use crate::topology::{SERVER_PORT, Topology};

/// A Service `default/NAME` with one ClusterIP per family and port `http` 80/TCP.
pub fn service(name: &str, cluster_ips: &[&str]) -> ServiceBuilder {
    ServiceBuilder::new("default", name)
        .cluster_ips(cluster_ips)
        .port("http", 80, "TCP")
}

/// The EndpointSlice `default/SERVICE-v4` (or `-v6`) with ports `http` [`SERVER_PORT`]/TCP
/// and `dns` [`SERVER_PORT`]/UDP.
pub fn endpoint_slice(
    service: &str,
    family: IpFamily,
    endpoints: impl IntoIterator<Item = EndpointBuilder>,
) -> WatchEvent {
    let (address_type, suffix) = match family {
        IpFamily::IPv4 => ("IPv4", "v4"),
        IpFamily::IPv6 => ("IPv6", "v6"),
    };
    let name = format!("{service}-{suffix}");
    let port = i64::from(SERVER_PORT);
    endpoints
        .into_iter()
        .fold(
            SliceBuilder::new("default", &name, service, address_type)
                .port("http", port, "TCP")
                .port("dns", port, "UDP"),
            SliceBuilder::endpoint,
        )
        .apply()
}

impl Topology {
    /// The EndpointSlice of `service` for `family` listing `pods` (by name) on their nodes.
    pub fn slice(&self, service: &str, family: IpFamily, pods: &[&str]) -> WatchEvent {
        let endpoints = pods.iter().map(|name| {
            let pod = self.pod(name);
            ep(&pod.ip(family).to_string()).on(pod.node_name)
        });
        endpoint_slice(service, family, endpoints)
    }
}
