//! Families and protocols: dual-stack, single-family proxies, UDP and SCTP, and Services that
//! get no rules at all.

use svcroute_core::model::{IpFamily, LABEL_HEADLESS, LABEL_SERVICE_PROXY_NAME};
use svcroute_core::watch::WatchEvent;

use super::{slice4, slice6, standard_config, web};
use crate::flow::{Scenario, ScenarioError};
use crate::objects::{ServiceBuilder, SliceBuilder, ep};

fn dual_objects() -> Vec<WatchEvent> {
    vec![
        ServiceBuilder::new("default", "dual")
            .node_port_type()
            .cluster_ips(&["10.96.0.160", "fd00:96::160"])
            .node_port("http", 80, "TCP", 30160)
            .apply(),
        slice4(
            "dual",
            vec![
                ep("10.244.1.160").on("node-b"),
                ep("10.244.2.160").on("node-c"),
            ],
        ),
        slice6("dual", vec![ep("fd00:10:244:1::160").on("node-b")]),
    ]
}

/// Dual-stack Services: each family uses its own ClusterIP and its own slices.
pub fn dual_stack() -> Result<Scenario, ScenarioError> {
    let mut s = Scenario::new("dual_stack", standard_config()).describe(
        "One proxier per family: each uses the Service's ClusterIP of its family and the \
         EndpointSlices of its addressType. A family without endpoints REJECTs even when the \
         other has some; a single-stack Service ignores slices of the other family.",
    );
    s.objects.extend(dual_objects());
    s.object(
        web("v6-primary", "fd00:96::161")
            .cluster_ips(&["fd00:96::161", "10.96.0.161"])
            .apply(),
    )
    .object(slice6("v6-primary", vec![ep("fd00:10:244:2::161").on("node-c")]))
    .object(web("single-v4", "10.96.0.162").apply())
    .object(slice4("single-v4", vec![ep("10.244.1.162").on("node-b")]))
    .object(slice6("single-v4", vec![ep("fd00:10:244:1::162").on("node-b")]))
    .flows(
        "
        IPv4 ClusterIP                          | 10.244.0.5 10.96.0.160:80           | 10.244.1.160:8080 10.244.2.160:8080 |
        IPv6 ClusterIP                          | fd00:10:244::5 [fd00:96::160]:80    | [fd00:10:244:1::160]:8080 |
        IPv6 node source is masqueraded         | fd00:1::10 [fd00:96::160]:80        | [fd00:10:244:1::160]:8080 | masq
        IPv4 NodePort                           | 203.0.113.50 192.168.0.10:30160     | 10.244.1.160:8080 10.244.2.160:8080 | masq
        IPv6 NodePort                           | 2001:db8::50 [fd00:1::10]:30160     | [fd00:10:244:1::160]:8080 | masq
        IPv6-primary Service over IPv6          | fd00:10:244::5 [fd00:96::161]:80    | [fd00:10:244:2::161]:8080 |
        its IPv4 side has no endpoints          | 10.244.0.5 10.96.0.161:80           | REJECT |
        single-stack ignores IPv6 slices        | 10.244.0.5 10.96.0.162:80           | 10.244.1.162:8080 |
        ",
    )
}

/// A proxy that handles IPv4 only leaves IPv6 alone entirely.
pub fn ipv4_only_proxy() -> Result<Scenario, ScenarioError> {
    let mut config = standard_config();
    config.ip_families = vec![IpFamily::IPv4];
    let mut s = Scenario::new("ipv4_only_proxy", config).describe(
        "A single-stack (IPv4) kube-proxy programs nothing for IPv6: dual-stack Services work \
         over IPv4 only, and IPv6 service addresses are neither routed nor dropped.",
    );
    s.objects.extend(dual_objects());
    s.flows(
        "
        IPv4 still works                        | 10.244.0.5 10.96.0.160:80           | 10.244.1.160:8080 10.244.2.160:8080 |
        IPv6 ClusterIP is not handled           | fd00:10:244::5 [fd00:96::160]:80    | NO-MATCH |
        IPv6 NodePort is not handled            | 2001:db8::50 [fd00:1::10]:30160     | NO-MATCH |
        IPv6 service CIDR is not handled        | fd00:10:244::5 [fd00:96::99]:80     | NO-MATCH |
        ",
    )
}

/// UDP and SCTP Services, and the protocol as part of the service-port key.
pub fn udp_and_sctp() -> Result<Scenario, ScenarioError> {
    Scenario::new("udp_and_sctp", standard_config())
        .describe(
            "The protocol is part of the service-port key: 53/UDP and 53/TCP are distinct ports \
             with their own endpoints; SCTP works like the others, NodePorts included.",
        )
        .object(
            ServiceBuilder::new("default", "dns")
                .cluster_ip("10.96.0.170")
                .port("dns", 53, "UDP")
                .port("dns-tcp", 53, "TCP")
                .apply(),
        )
        .object(
            SliceBuilder::ipv4("default", "dns-v4", "dns")
                .port("dns", 5353, "UDP")
                .port("dns-tcp", 5353, "TCP")
                .endpoint(ep("10.244.1.170").on("node-b"))
                .endpoint(ep("10.244.2.170").on("node-c"))
                .apply(),
        )
        .object(
            ServiceBuilder::new("default", "sig")
                .node_port_type()
                .cluster_ip("10.96.0.171")
                .node_port("sig", 9000, "SCTP", 30171)
                .apply(),
        )
        .object(
            SliceBuilder::ipv4("default", "sig-v4", "sig")
                .port("sig", 9000, "SCTP")
                .endpoint(ep("10.244.1.171").on("node-b"))
                .apply(),
        )
        .object(
            ServiceBuilder::new("default", "syslog")
                .node_port_type()
                .cluster_ip("10.96.0.172")
                .node_port("syslog", 514, "UDP", 30172)
                .apply(),
        )
        .object(
            SliceBuilder::ipv4("default", "syslog-v4", "syslog")
                .port("syslog", 514, "UDP")
                .endpoint(ep("10.244.1.172").on("node-b"))
                .apply(),
        )
        .flows(
            "
            DNS over UDP                            | 10.244.0.5 10.96.0.170:53/udp       | 10.244.1.170:5353 10.244.2.170:5353 |
            DNS over TCP                            | 10.244.0.5 10.96.0.170:53/tcp       | 10.244.1.170:5353 10.244.2.170:5353 |
            SCTP to the DNS port is refused         | 10.244.0.5 10.96.0.170:53/sctp      | REJECT |
            SCTP ClusterIP                          | 10.244.0.5 10.96.0.171:9000/sctp    | 10.244.1.171:9000 |
            SCTP NodePort                           | 203.0.113.50 192.168.0.10:30171/sctp | 10.244.1.171:9000 | masq
            TCP to the SCTP NodePort                | 203.0.113.50 192.168.0.10:30171/tcp | NO-MATCH |
            UDP NodePort                            | 203.0.113.50 192.168.0.10:30172/udp | 10.244.1.172:514 | masq
            UDP to the SCTP ClusterIP port          | 10.244.0.5 10.96.0.171:9000/udp     | REJECT |
            ",
        )
}

/// Headless and ExternalName Services, and Services of another proxy, get no rules.
pub fn headless_and_external_name() -> Result<Scenario, ScenarioError> {
    let mut config = standard_config();
    // Without service CIDRs nothing is dropped as unallocated, so "no rules" shows as NO-MATCH.
    config.service_cidrs.clear();
    Scenario::new("headless_and_external_name", config)
        .describe(
            "The change tracker builds no service port for clusterIP None or type ExternalName, \
             whatever else the Service says (externalIPs included); Services labelled \
             service.kubernetes.io/service-proxy-name belong to another proxy.",
        )
        .object(
            ServiceBuilder::new("default", "headless")
                .headless()
                .port("http", 80, "TCP")
                .external_ip("203.0.113.180")
                .apply(),
        )
        .object(
            SliceBuilder::ipv4("default", "headless-v4", "headless")
                .label(LABEL_HEADLESS, "")
                .port("http", 8080, "TCP")
                .endpoint(ep("10.244.1.180").on("node-b"))
                .apply(),
        )
        .object(
            ServiceBuilder::new("default", "alias")
                .external_name("db.example.com")
                .port("http", 80, "TCP")
                .external_ip("203.0.113.181")
                .apply(),
        )
        .object(
            web("other-proxy", "10.96.0.182")
                .label(LABEL_SERVICE_PROXY_NAME, "someone-else")
                .apply(),
        )
        .object(slice4("other-proxy", vec![ep("10.244.1.182").on("node-b")]))
        .flows(
            "
            a headless Service's pod directly       | 10.244.0.5 10.244.1.180:8080        | NO-MATCH |
            a headless Service's externalIP         | 203.0.113.50 203.0.113.180:80       | NO-MATCH |
            an ExternalName Service's externalIP    | 203.0.113.50 203.0.113.181:80       | NO-MATCH |
            a Service of another proxy              | 10.244.0.5 10.96.0.182:80           | NO-MATCH |
            ",
        )
}
