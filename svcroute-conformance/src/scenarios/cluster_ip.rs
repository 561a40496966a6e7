//! ClusterIP behaviour: masquerade, IPv6, affinity, no endpoints, undefined ports, service CIDRs.

use svcroute_core::watch::WatchEvent;

use super::{slice4, standard_config, web};
use crate::flow::{Scenario, ScenarioError};
use crate::objects::{ServiceBuilder, SliceBuilder, ep};

/// `default/web` at `10.96.0.10:80` with three endpoints on other nodes.
fn web_objects() -> Vec<WatchEvent> {
    vec![
        web("web", "10.96.0.10").apply(),
        slice4(
            "web",
            vec![
                ep("10.244.1.1").on("node-b"),
                ep("10.244.2.1").on("node-c"),
                ep("10.244.3.1").on("node-d"),
            ],
        ),
    ]
}

fn with_objects(mut s: Scenario, objects: Vec<WatchEvent>) -> Scenario {
    s.objects.extend(objects);
    s
}

/// ClusterIP with three endpoints: with a cluster-CIDR local-traffic detector, traffic from
/// pods keeps its source while every other source is masqueraded.
pub fn cluster_ip_masquerade() -> Result<Scenario, ScenarioError> {
    let s = Scenario::new("cluster_ip_masquerade", standard_config()).describe(
        "kube-proxy marks ClusterIP traffic for masquerade when it does not come from the \
         cluster CIDR (`! -s <clusterCIDR> -j KUBE-MARK-MASQ` in the service chain); each of the \
         three endpoints is picked with probability 1/3.",
    );
    with_objects(s, web_objects()).flows(
        "
        local pod source is not masqueraded        | 10.244.0.5 10.96.0.10:80      | 10.244.1.1:8080 10.244.2.1:8080 10.244.3.1:8080 |
        pod on another node is not masqueraded     | 10.244.3.5 10.96.0.10:80      | 10.244.1.1:8080 10.244.2.1:8080 10.244.3.1:8080 |
        node source is masqueraded                 | 192.168.0.10 10.96.0.10:80    | 10.244.1.1:8080 10.244.2.1:8080 10.244.3.1:8080 | masq
        another node's address is masqueraded      | 192.168.0.11 10.96.0.10:80    | 10.244.1.1:8080 10.244.2.1:8080 10.244.3.1:8080 | masq
        off-cluster client is masqueraded          | 203.0.113.50 10.96.0.10:80    | 10.244.1.1:8080 10.244.2.1:8080 10.244.3.1:8080 | masq
        loopback source is masqueraded             | 127.0.0.1 10.96.0.10:80       | 10.244.1.1:8080 10.244.2.1:8080 10.244.3.1:8080 | masq
        another protocol on the port is refused    | 10.244.0.5 10.96.0.10:80/udp  | REJECT |
        an address outside the service CIDRs       | 10.244.0.5 10.97.0.10:80      | NO-MATCH |
        ",
    )
}

/// `--masquerade-all`: every ClusterIP packet is masqueraded, pod sources included.
pub fn cluster_ip_masquerade_all() -> Result<Scenario, ScenarioError> {
    let mut config = standard_config();
    config.masquerade_all = true;
    let s = Scenario::new("cluster_ip_masquerade_all", config).describe(
        "With masqueradeAll kube-proxy marks all ClusterIP traffic (`-j KUBE-MARK-MASQ` with no \
         source condition).",
    );
    with_objects(s, web_objects()).flows(
        "
        pod source is masqueraded                  | 10.244.0.5 10.96.0.10:80      | 10.244.1.1:8080 10.244.2.1:8080 10.244.3.1:8080 | masq
        node source is masqueraded                 | 192.168.0.10 10.96.0.10:80    | 10.244.1.1:8080 10.244.2.1:8080 10.244.3.1:8080 | masq
        ",
    )
}

/// No local-traffic detector (no cluster CIDR): ClusterIP traffic is never masqueraded, and
/// eTP=Local has no pod short-circuit; external destinations under eTP=Cluster still are.
pub fn cluster_ip_without_local_detector() -> Result<Scenario, ScenarioError> {
    let mut config = standard_config();
    config.cluster_cidrs.clear();
    let s = Scenario::new("cluster_ip_without_local_detector", config)
        .describe(
            "Without a local-traffic detector kube-proxy writes no ClusterIP masquerade rule and \
             no `-s <podCIDR> -j KUBE-SVC` short-circuit in KUBE-EXT; NodePorts under eTP=Cluster \
             are still always masqueraded.",
        )
        .object(
            ServiceBuilder::new("default", "np")
                .node_port_type()
                .cluster_ip("10.96.0.11")
                .node_port("http", 80, "TCP", 30011)
                .apply(),
        )
        .object(slice4("np", vec![ep("10.244.1.11").on("node-b")]))
        .object(
            ServiceBuilder::new("default", "npl")
                .node_port_type()
                .cluster_ip("10.96.0.12")
                .node_port("http", 80, "TCP", 30012)
                .external_policy_local()
                .apply(),
        )
        .object(slice4(
            "npl",
            vec![
                ep("10.244.0.12").on("node-a"),
                ep("10.244.1.12").on("node-b"),
            ],
        ));
    with_objects(s, web_objects()).flows(
        "
        pod source is not masqueraded              | 10.244.0.5 10.96.0.10:80      | 10.244.1.1:8080 10.244.2.1:8080 10.244.3.1:8080 |
        node source is not masqueraded             | 192.168.0.10 10.96.0.10:80    | 10.244.1.1:8080 10.244.2.1:8080 10.244.3.1:8080 |
        off-cluster client is not masqueraded      | 203.0.113.50 10.96.0.10:80    | 10.244.1.1:8080 10.244.2.1:8080 10.244.3.1:8080 |
        eTP=Cluster NodePort is still masqueraded  | 203.0.113.50 192.168.0.10:30011 | 10.244.1.11:8080 | masq
        eTP=Local: pods are not recognised         | 10.244.0.5 192.168.0.10:30012 | 10.244.0.12:8080 |
        eTP=Local: node sources still are          | 192.168.0.10 192.168.0.10:30012 | 10.244.0.12:8080 10.244.1.12:8080 | masq
        ",
    )
}

/// An IPv6-only ClusterIP on port 8080 in front of two StatefulSet pods.
pub fn ipv6_statefulset() -> Result<Scenario, ScenarioError> {
    Scenario::new("ipv6_statefulset", standard_config())
        .describe(
            "An IPv6 single-stack Service `db/pg` (`fd00:96::20`, port 8080) with StatefulSet \
             pods pg-0 and pg-1; IPv6 endpoints are written `[addr]:port`. Its IPv4 twin address \
             was never allocated, so traffic there is dropped as unallocated.",
        )
        .object(
            ServiceBuilder::new("db", "pg")
                .cluster_ip("fd00:96::20")
                .port("", 8080, "TCP")
                .apply(),
        )
        .object(
            SliceBuilder::ipv6("db", "pg-x7k2p", "pg")
                .port("", 8080, "TCP")
                .endpoint(ep("fd00:10:244:1::5").hostname("pg-0").on("node-b"))
                .endpoint(ep("fd00:10:244:2::5").hostname("pg-1").on("node-c"))
                .apply(),
        )
        .flows(
            "
            pod source reaches both pods           | fd00:10:244::5 [fd00:96::20]:8080     | [fd00:10:244:1::5]:8080 [fd00:10:244:2::5]:8080 |
            node source is masqueraded             | fd00:1::10 [fd00:96::20]:8080         | [fd00:10:244:1::5]:8080 [fd00:10:244:2::5]:8080 | masq
            off-cluster client is masqueraded      | 2001:db8::50 [fd00:96::20]:8080       | [fd00:10:244:1::5]:8080 [fd00:10:244:2::5]:8080 | masq
            undefined port is refused              | fd00:10:244::5 [fd00:96::20]:5432     | REJECT |
            UDP on the service port is refused     | fd00:10:244::5 [fd00:96::20]:8080/udp | REJECT |
            no IPv4 ClusterIP was allocated        | 10.244.0.5 10.96.0.20:8080            | DROP |
            ",
        )
}

/// ClientIP session affinity: the default 10800 s timeout, a configured one, none.
pub fn session_affinity_client_ip() -> Result<Scenario, ScenarioError> {
    Scenario::new("session_affinity_client_ip", standard_config())
        .describe(
            "sessionAffinity: ClientIP keeps a source on its endpoint for timeoutSeconds (API \
             default 10800); the same affinity applies through the NodePort.",
        )
        .object(
            ServiceBuilder::new("default", "sticky")
                .node_port_type()
                .cluster_ip("10.96.0.30")
                .node_port("http", 80, "TCP", 30030)
                .client_ip_affinity(None)
                .apply(),
        )
        .object(slice4(
            "sticky",
            vec![ep("10.244.1.30").on("node-b"), ep("10.244.2.30").on("node-c")],
        ))
        .object(web("brief", "10.96.0.31").client_ip_affinity(Some(60)).apply())
        .object(slice4("brief", vec![ep("10.244.1.31").on("node-b")]))
        .object(web("plain", "10.96.0.32").apply())
        .object(slice4("plain", vec![ep("10.244.1.32").on("node-b")]))
        .flows(
            "
            default timeout is 10800 s             | 10.244.0.5 10.96.0.30:80        | 10.244.1.30:8080 10.244.2.30:8080 | affinity=10800
            the NodePort has the same affinity     | 203.0.113.50 192.168.0.10:30030 | 10.244.1.30:8080 10.244.2.30:8080 | masq affinity=10800
            configured timeout                     | 10.244.0.5 10.96.0.31:80        | 10.244.1.31:8080 | affinity=60
            no affinity without ClientIP           | 10.244.0.5 10.96.0.32:80        | 10.244.1.32:8080 |
            ",
        )
}

/// A Service with no usable endpoint refuses connections on every frontend.
pub fn no_endpoints_reject() -> Result<Scenario, ScenarioError> {
    Scenario::new("no_endpoints_reject", standard_config())
        .describe(
            "A service port with no usable endpoint anywhere is REJECTed on its ClusterIP, \
             NodePort, externalIPs and LB IPs (\"has no endpoints\"), even under eTP=Local — DROP \
             is only for endpoints that exist elsewhere.",
        )
        .object(
            ServiceBuilder::new("default", "empty")
                .node_port_type()
                .cluster_ip("10.96.0.40")
                .node_port("http", 80, "TCP", 30040)
                .external_ip("203.0.113.40")
                .apply(),
        )
        .object(
            ServiceBuilder::new("default", "empty-udp")
                .cluster_ip("10.96.0.41")
                .port("dns", 53, "UDP")
                .apply(),
        )
        .object(
            SliceBuilder::ipv4("default", "empty-udp-v4", "empty-udp")
                .port("dns", 5353, "UDP")
                .apply(),
        )
        .object(web("unready", "10.96.0.42").apply())
        .object(slice4(
            "unready",
            vec![
                ep("10.244.1.42").on("node-b").not_ready(),
                ep("10.244.2.42").on("node-c").terminating_not_serving(),
            ],
        ))
        .object(
            ServiceBuilder::new("default", "local-empty")
                .node_port_type()
                .cluster_ip("10.96.0.43")
                .node_port("http", 80, "TCP", 30043)
                .external_policy_local()
                .apply(),
        )
        .object(
            ServiceBuilder::new("default", "empty-lb")
                .load_balancer()
                .cluster_ip("10.96.0.44")
                .node_port("http", 80, "TCP", 30044)
                .lb_ingress("198.51.100.44")
                .apply(),
        )
        .flows(
            "
            ClusterIP without endpoints             | 10.244.0.5 10.96.0.40:80          | REJECT |
            NodePort without endpoints              | 203.0.113.50 192.168.0.10:30040   | REJECT |
            externalIP without endpoints            | 203.0.113.50 203.0.113.40:80      | REJECT |
            localhost NodePort without endpoints    | 127.0.0.1 127.0.0.1:30040         | REJECT |
            UDP service with an empty slice         | 10.244.0.5 10.96.0.41:53/udp      | REJECT |
            only unready and non-serving endpoints  | 10.244.0.5 10.96.0.42:80          | REJECT |
            eTP=Local with no endpoint anywhere     | 203.0.113.50 192.168.0.10:30043   | REJECT |
            LB IP without endpoints                 | 203.0.113.50 198.51.100.44:80     | REJECT |
            ",
        )
}

/// Traffic to a known ClusterIP on a port or protocol no service port defines is refused.
pub fn undefined_port_reject() -> Result<Scenario, ScenarioError> {
    Scenario::new("undefined_port_reject", standard_config())
        .describe(
            "kube-proxy (nftables) keeps a set of ClusterIPs and REJECTs traffic to them that no \
             service port took (`cluster-ips-check`).",
        )
        .object(
            ServiceBuilder::new("default", "multi")
                .cluster_ip("10.96.0.50")
                .port("http", 80, "TCP")
                .port("dns", 53, "UDP")
                .apply(),
        )
        .object(
            SliceBuilder::ipv4("default", "multi-v4", "multi")
                .port("http", 8080, "TCP")
                .port("dns", 5353, "UDP")
                .endpoint(ep("10.244.1.50").on("node-b"))
                .apply(),
        )
        .flows(
            "
            defined TCP port                        | 10.244.0.5 10.96.0.50:80          | 10.244.1.50:8080 |
            defined UDP port                        | 10.244.0.5 10.96.0.50:53/udp      | 10.244.1.50:5353 |
            undefined port                          | 10.244.0.5 10.96.0.50:81          | REJECT |
            UDP port number over TCP                | 10.244.0.5 10.96.0.50:53          | REJECT |
            TCP port number over UDP                | 10.244.0.5 10.96.0.50:80/udp      | REJECT |
            SCTP                                    | 10.244.0.5 10.96.0.50:80/sctp     | REJECT |
            ",
        )
}

/// Unallocated addresses inside the service CIDRs are dropped; others are not service traffic.
pub fn unallocated_service_ip_drop() -> Result<Scenario, ScenarioError> {
    let s = Scenario::new("unallocated_service_ip_drop", standard_config()).describe(
        "With the service CIDRs known (MultiCIDRServiceAllocator), kube-proxy (nftables) DROPs \
         traffic to addresses in them that no Service holds.",
    );
    with_objects(s, web_objects()).flows(
        "
        allocated ClusterIP                        | 10.244.0.5 10.96.0.10:80          | 10.244.1.1:8080 10.244.2.1:8080 10.244.3.1:8080 |
        unallocated address                        | 10.244.0.5 10.96.0.11:80          | DROP |
        unallocated, any port and protocol         | 10.244.0.5 10.96.255.1:53/udp     | DROP |
        unallocated IPv6 service address           | fd00:10:244::5 [fd00:96::99]:80   | DROP |
        outside the IPv4 service CIDR              | 10.244.0.5 10.97.0.1:80           | NO-MATCH |
        outside the IPv6 service CIDR              | fd00:10:244::5 [fd00:97::1]:80    | NO-MATCH |
        ",
    )
}
