//! External destinations: NodePorts, externalIPs, load balancers, localhost NodePorts,
//! NodePort addresses and health checks.

use ipnet::IpNet;
use svcroute_core::model::NodePortAddresses;
use svcroute_core::watch::WatchEvent;

use super::{slice4, slice6, standard_config, v4, web};
use crate::flow::{Scenario, ScenarioError};
use crate::objects::{ServiceBuilder, ep};

/// NodePort with eTP=Cluster: every node address answers, everything is masqueraded.
pub fn node_port_cluster_policy() -> Result<Scenario, ScenarioError> {
    Scenario::new("node_port_cluster_policy", standard_config())
        .describe(
            "KUBE-NODEPORTS is reached for destinations of type LOCAL; under eTP=Cluster KUBE-EXT \
             always marks for masquerade, whatever the source. Other hosts' addresses, other \
             ports and protocols are not NodePort traffic.",
        )
        .object(
            ServiceBuilder::new("default", "np")
                .node_port_type()
                .cluster_ip("10.96.0.60")
                .node_port("http", 80, "TCP", 30060)
                .apply(),
        )
        .object(slice4(
            "np",
            vec![ep("10.244.0.60").on("node-a"), ep("10.244.1.60").on("node-b")],
        ))
        .flows(
            "
            off-cluster client via the node IP      | 203.0.113.50 192.168.0.10:30060     | 10.244.0.60:8080 10.244.1.60:8080 | masq
            every node address answers              | 203.0.113.50 192.168.1.10:30060     | 10.244.0.60:8080 10.244.1.60:8080 | masq
            pod via the NodePort is masqueraded     | 10.244.0.5 192.168.0.10:30060       | 10.244.0.60:8080 10.244.1.60:8080 | masq
            the node itself is masqueraded          | 192.168.0.10 192.168.0.10:30060     | 10.244.0.60:8080 10.244.1.60:8080 | masq
            ClusterIP from a pod is not             | 10.244.0.5 10.96.0.60:80            | 10.244.0.60:8080 10.244.1.60:8080 |
            another host's address                  | 203.0.113.50 192.168.0.11:30060     | NO-MATCH |
            another port on the node                | 203.0.113.50 192.168.0.10:30061     | NO-MATCH |
            another protocol on the NodePort        | 203.0.113.50 192.168.0.10:30060/udp | NO-MATCH |
            IPv4-only service, IPv6 node address    | 2001:db8::50 [fd00:1::10]:30060     | NO-MATCH |
            service port on the node IP             | 203.0.113.50 192.168.0.10:80        | NO-MATCH |
            ",
        )
}

/// NodePort with eTP=Local: external sources reach local endpoints only and keep their
/// address; pods short-circuit to all endpoints; the node's own traffic is masqueraded to all.
pub fn node_port_local_policy() -> Result<Scenario, ScenarioError> {
    Scenario::new("node_port_local_policy", standard_config())
        .describe(
            "KUBE-EXT under eTP=Local: (1) pod sources → KUBE-SVC unmasqueraded; (2)/(3) \
             `--src-type LOCAL` → masquerade, KUBE-SVC; (4) everything else → KUBE-SVL. Without a \
             local endpoint rule (4) is missing and the filter table DROPs.",
        )
        .object(
            ServiceBuilder::new("default", "local")
                .node_port_type()
                .cluster_ip("10.96.0.70")
                .node_port("http", 80, "TCP", 30070)
                .external_policy_local()
                .apply(),
        )
        .object(slice4(
            "local",
            vec![ep("10.244.0.70").on("node-a"), ep("10.244.1.70").on("node-b")],
        ))
        .object(
            ServiceBuilder::new("default", "remote")
                .node_port_type()
                .cluster_ip("10.96.0.71")
                .node_port("http", 80, "TCP", 30071)
                .external_policy_local()
                .apply(),
        )
        .object(slice4("remote", vec![ep("10.244.1.71").on("node-b")]))
        .flows(
            "
            external client: local endpoints only   | 203.0.113.50 192.168.0.10:30070     | 10.244.0.70:8080 |
            another node forwarding is external     | 192.168.0.11 192.168.0.10:30070     | 10.244.0.70:8080 |
            pod traffic short-circuits to all       | 10.244.3.5 192.168.0.10:30070       | 10.244.0.70:8080 10.244.1.70:8080 |
            node traffic: all, masqueraded          | 192.168.0.10 192.168.0.10:30070     | 10.244.0.70:8080 10.244.1.70:8080 | masq
            node traffic from its other address     | 192.168.1.10 192.168.0.10:30070     | 10.244.0.70:8080 10.244.1.70:8080 | masq
            localhost NodePort from loopback        | 127.0.0.1 127.0.0.1:30070           | 10.244.0.70:8080 10.244.1.70:8080 | masq
            the ClusterIP ignores eTP               | 203.0.113.50 10.96.0.70:80          | 10.244.0.70:8080 10.244.1.70:8080 | masq
            external client, no local endpoint      | 203.0.113.50 192.168.0.10:30071     | DROP |
            pod, no local endpoint                  | 10.244.0.5 192.168.0.10:30071       | 10.244.1.71:8080 |
            node, no local endpoint                 | 192.168.0.10 192.168.0.10:30071     | 10.244.1.71:8080 | masq
            ",
        )
}

/// externalIPs under both external traffic policies.
pub fn external_ips() -> Result<Scenario, ScenarioError> {
    Scenario::new("external_ips", standard_config())
        .describe(
            "externalIPs are external destinations: KUBE-EXT, masquerade under eTP=Cluster, \
             local endpoints for external sources under eTP=Local. An externalIP of the other \
             family than the Service's is ignored.",
        )
        .object(
            web("ext", "10.96.0.90")
                .external_ip("203.0.113.90")
                .external_ip("2001:db8::90")
                .apply(),
        )
        .object(slice4(
            "ext",
            vec![ep("10.244.0.90").on("node-a"), ep("10.244.1.90").on("node-b")],
        ))
        .object(
            web("ext-local", "10.96.0.91")
                .external_ip("203.0.113.91")
                .external_policy_local()
                .apply(),
        )
        .object(slice4(
            "ext-local",
            vec![ep("10.244.0.91").on("node-a"), ep("10.244.1.91").on("node-b")],
        ))
        .flows(
            "
            external client is masqueraded          | 203.0.113.50 203.0.113.90:80        | 10.244.0.90:8080 10.244.1.90:8080 | masq
            pod is masqueraded too (eTP=Cluster)    | 10.244.0.5 203.0.113.90:80          | 10.244.0.90:8080 10.244.1.90:8080 | masq
            node source                             | 192.168.0.10 203.0.113.90:80        | 10.244.0.90:8080 10.244.1.90:8080 | masq
            another port on the externalIP          | 203.0.113.50 203.0.113.90:81        | NO-MATCH |
            another protocol on the externalIP      | 203.0.113.50 203.0.113.90:80/udp    | NO-MATCH |
            IPv6 externalIP of an IPv4 Service      | 2001:db8::50 [2001:db8::90]:80      | NO-MATCH |
            eTP=Local: local endpoint only          | 203.0.113.50 203.0.113.91:80        | 10.244.0.91:8080 |
            eTP=Local from a pod: all               | 10.244.0.5 203.0.113.91:80          | 10.244.0.91:8080 10.244.1.91:8080 |
            eTP=Local from the node: all, masq      | 192.168.0.10 203.0.113.91:80        | 10.244.0.91:8080 10.244.1.91:8080 | masq
            ",
        )
}

/// loadBalancerSourceRanges: allowed and denied sources, the node-in-range rule, and which
/// frontends the ranges filter.
pub fn load_balancer_source_ranges() -> Result<Scenario, ScenarioError> {
    Scenario::new("load_balancer_source_ranges", standard_config())
        .describe(
            "Source ranges filter the LB IPs only (not NodePorts, not the ClusterIP), before \
             DNAT. When the node's primary IP is inside a range, the LB IPs themselves are \
             allowed sources too (VIP-style balancers loop back through the node). ipMode: Proxy \
             ingress addresses are not programmed.",
        )
        .object(
            ServiceBuilder::new("default", "lb")
                .load_balancer()
                .cluster_ip("10.96.0.100")
                .node_port("http", 80, "TCP", 30100)
                .lb_ingress("198.51.100.100")
                .lb_ingress_proxy_mode("198.51.100.101")
                .source_range("203.0.113.0/24")
                .source_range("192.168.0.0/24")
                .apply(),
        )
        .object(slice4(
            "lb",
            vec![ep("10.244.1.100").on("node-b"), ep("10.244.2.100").on("node-c")],
        ))
        .object(
            ServiceBuilder::new("default", "lb-closed")
                .load_balancer()
                .cluster_ip("10.96.0.102")
                .node_port("http", 80, "TCP", 30102)
                .lb_ingress("198.51.100.102")
                .source_range("203.0.113.0/24")
                .apply(),
        )
        .object(slice4("lb-closed", vec![ep("10.244.1.102").on("node-b")]))
        .object(
            ServiceBuilder::new("default", "lb-open")
                .load_balancer()
                .cluster_ip("10.96.0.103")
                .node_port("http", 80, "TCP", 30103)
                .lb_ingress("198.51.100.103")
                .apply(),
        )
        .object(slice4("lb-open", vec![ep("10.244.1.103").on("node-b")]))
        .flows(
            "
            allowed client                          | 203.0.113.50 198.51.100.100:80      | 10.244.1.100:8080 10.244.2.100:8080 | masq
            client outside the ranges is dropped    | 198.18.0.1 198.51.100.100:80        | DROP |
            pod outside the ranges is dropped       | 10.244.0.5 198.51.100.100:80        | DROP |
            node inside a range                     | 192.168.0.10 198.51.100.100:80      | 10.244.1.100:8080 10.244.2.100:8080 | masq
            LB IP as source, node in a range        | 198.51.100.100 198.51.100.100:80    | 10.244.1.100:8080 10.244.2.100:8080 | masq
            ranges do not filter the NodePort       | 198.18.0.1 192.168.0.10:30100       | 10.244.1.100:8080 10.244.2.100:8080 | masq
            ranges do not filter the ClusterIP      | 198.18.0.1 10.96.0.100:80           | 10.244.1.100:8080 10.244.2.100:8080 | masq
            Proxy-mode ingress is not programmed    | 203.0.113.50 198.51.100.101:80      | NO-MATCH |
            another port on the LB IP               | 198.18.0.1 198.51.100.100:443       | NO-MATCH |
            node outside every range is dropped     | 192.168.0.10 198.51.100.102:80      | DROP |
            LB IP as source, node not in a range    | 198.51.100.102 198.51.100.102:80    | DROP |
            allowed client of the closed LB         | 203.0.113.50 198.51.100.102:80      | 10.244.1.102:8080 | masq
            LB without ranges is open               | 198.18.0.1 198.51.100.103:80        | 10.244.1.103:8080 | masq
            ",
        )
}

/// A dual-stack LoadBalancer whose source ranges are all IPv4: svcroute blocks the IPv6 LB IP
/// rather than leaving it open.
pub fn load_balancer_source_ranges_one_family() -> Result<Scenario, ScenarioError> {
    Scenario::new("load_balancer_source_ranges_one_family", standard_config())
        .describe(
            "The API says source ranges restrict the load balancer to the listed clients; an \
             IPv6 client is not among IPv4-only ranges, so svcroute drops it (documented in \
             select::firewall). Upstream kube-proxy filters ranges per family and uses no \
             firewall in a family without ranges, leaving the IPv6 LB IP open to everyone.",
        )
        .object(
            ServiceBuilder::new("default", "dual-lb")
                .load_balancer()
                .cluster_ips(&["10.96.0.110", "fd00:96::110"])
                .node_port("http", 80, "TCP", 30110)
                .lb_ingress("198.51.100.110")
                .lb_ingress("2001:db8:1b::110")
                .source_range("203.0.113.0/24")
                .apply(),
        )
        .object(slice4("dual-lb", vec![ep("10.244.1.110").on("node-b")]))
        .object(slice6("dual-lb", vec![ep("fd00:10:244:1::110").on("node-b")]))
        .flows(
            "
            IPv4 client in the range                | 203.0.113.50 198.51.100.110:80      | 10.244.1.110:8080 | masq
            IPv4 client outside the range           | 198.18.0.1 198.51.100.110:80        | DROP |
            IPv6 LB IP has no IPv6 range: closed    | 2001:db8::50 [2001:db8:1b::110]:80  | DROP |
            ",
        )
}

/// A LoadBalancer restricted only by the legacy source-range annotation: kube-proxy reads
/// `spec.loadBalancerSourceRanges` alone, so the LB IP stays open to everyone.
pub fn load_balancer_source_ranges_annotation() -> Result<Scenario, ScenarioError> {
    Scenario::new("load_balancer_source_ranges_annotation", standard_config())
        .describe(
            "The annotation service.beta.kubernetes.io/load-balancer-source-ranges is read by \
             cloud providers (servicehelpers.GetLoadBalancerSourceRanges) to configure the cloud \
             balancer; kube-proxy builds its firewall from spec.loadBalancerSourceRanges only \
             (newBaseServiceInfo), so with just the annotation it filters nothing. svcroute-core \
             falls back to the annotation; this scenario records the upstream behaviour.",
        )
        .object(
            ServiceBuilder::new("default", "lb-annotated")
                .load_balancer()
                .cluster_ip("10.96.0.104")
                .node_port("http", 80, "TCP", 30104)
                .lb_ingress("198.51.100.104")
                .annotation(
                    "service.beta.kubernetes.io/load-balancer-source-ranges",
                    "203.0.113.0/24",
                )
                .apply(),
        )
        .object(slice4("lb-annotated", vec![ep("10.244.1.104").on("node-b")]))
        .flows(
            "
            client inside the annotated range       | 203.0.113.50 198.51.100.104:80      | 10.244.1.104:8080 | masq
            client outside it is not filtered       | 198.18.0.1 198.51.100.104:80        | 10.244.1.104:8080 | masq
            ",
        )
}

/// A dual-stack NodePort used by the localhost and NodePort-address scenarios.
fn node_port_objects() -> Vec<WatchEvent> {
    vec![
        ServiceBuilder::new("default", "np")
            .node_port_type()
            .cluster_ips(&["10.96.0.190", "fd00:96::190"])
            .node_port("http", 80, "TCP", 30190)
            .apply(),
        slice4("np", vec![ep("10.244.1.190").on("node-b")]),
        slice6("np", vec![ep("fd00:10:244:1::190").on("node-b")]),
    ]
}

fn with_node_port(mut s: Scenario) -> Scenario {
    s.objects.extend(node_port_objects());
    s
}

/// Localhost NodePorts: 127.0.0.0/8 answers when enabled (IPv4 only), `::1` never.
pub fn localhost_node_ports() -> Result<Scenario, ScenarioError> {
    with_node_port(Scenario::new("localhost_node_ports", standard_config()).describe(
        "localhostNodePorts (the iptables default) makes NodePorts answer on 127.0.0.0/8 \
         (route_localnet); IPv6 has no equivalent, so ::1 never answers.",
    ))
    .flows(
        "
        127.0.0.1 answers, masqueraded          | 127.0.0.1 127.0.0.1:30190           | 10.244.1.190:8080 | masq
        all of 127.0.0.0/8 answers              | 127.0.0.1 127.0.0.2:30190           | 10.244.1.190:8080 | masq
        ::1 never answers                       | ::1 [::1]:30190                     | NO-MATCH |
        the IPv6 node address answers           | fd00:1::10 [fd00:1::10]:30190       | [fd00:10:244:1::190]:8080 | masq
        ",
    )
}

/// Localhost NodePorts disabled.
pub fn localhost_node_ports_disabled() -> Result<Scenario, ScenarioError> {
    let mut config = standard_config();
    config.localhost_nodeports = false;
    with_node_port(Scenario::new("localhost_node_ports_disabled", config).describe(
        "With localhostNodePorts off, KUBE-NODEPORTS excludes 127.0.0.0/8; node addresses \
         still answer.",
    ))
    .flows(
        "
        127.0.0.1 does not answer               | 127.0.0.1 127.0.0.1:30190           | NO-MATCH |
        the node IP still answers               | 192.168.0.10 192.168.0.10:30190     | 10.244.1.190:8080 | masq
        ",
    )
}

/// `--nodeport-addresses primary`: only the primary address of each family.
pub fn node_port_addresses_primary() -> Result<Scenario, ScenarioError> {
    let mut config = standard_config();
    config.nodeport_addresses = NodePortAddresses::Primary;
    with_node_port(Scenario::new("node_port_addresses_primary", config).describe(
        "nodePortAddresses: primary (the nftables default) limits NodePorts to the node's \
         primary IP of each family; loopback is never a primary IP.",
    ))
    .flows(
        "
        primary IPv4 answers                    | 203.0.113.50 192.168.0.10:30190     | 10.244.1.190:8080 | masq
        secondary address does not              | 203.0.113.50 192.168.1.10:30190     | NO-MATCH |
        localhost does not                      | 127.0.0.1 127.0.0.1:30190           | NO-MATCH |
        primary IPv6 answers                    | 2001:db8::50 [fd00:1::10]:30190     | [fd00:10:244:1::190]:8080 | masq
        ",
    )
}

/// `--nodeport-addresses` as CIDRs: only node addresses inside them.
pub fn node_port_addresses_cidrs() -> Result<Scenario, ScenarioError> {
    let mut config = standard_config();
    config.nodeport_addresses =
        NodePortAddresses::Cidrs(vec![IpNet::new_assert(v4(192, 168, 1, 0), 24)]);
    with_node_port(Scenario::new("node_port_addresses_cidrs", config).describe(
        "nodePortAddresses as CIDRs: NodePorts answer only on node addresses inside them \
         (one `-d <ip>` rule per matching address instead of `--dst-type LOCAL`).",
    ))
    .flows(
        "
        address inside the CIDR answers         | 203.0.113.50 192.168.1.10:30190     | 10.244.1.190:8080 | masq
        address outside does not                | 203.0.113.50 192.168.0.10:30190     | NO-MATCH |
        IPv6 address outside the CIDRs          | 2001:db8::50 [fd00:1::10]:30190     | NO-MATCH |
        localhost outside the CIDRs             | 127.0.0.1 127.0.0.1:30190           | NO-MATCH |
        ",
    )
}

/// The health-check NodePort of an eTP=Local LoadBalancer is accepted on node addresses.
pub fn health_check_node_port() -> Result<Scenario, ScenarioError> {
    Scenario::new("health_check_node_port", standard_config())
        .describe(
            "eTP=Local LoadBalancers get a healthCheckNodePort that kube-proxy serves itself; \
             the filter table ACCEPTs TCP to it on the node (`KUBE-NODEPORTS ... health check \
             node port -j ACCEPT`). eTP=Cluster Services have none (the API clears it).",
        )
        .object(
            ServiceBuilder::new("default", "lb-local")
                .load_balancer()
                .cluster_ip("10.96.0.200")
                .node_port("http", 80, "TCP", 30200)
                .lb_ingress("198.51.100.200")
                .external_policy_local()
                .health_check_node_port(32200)
                .apply(),
        )
        .object(slice4(
            "lb-local",
            vec![ep("10.244.0.200").on("node-a"), ep("10.244.1.200").on("node-b")],
        ))
        .object(
            ServiceBuilder::new("default", "lb-cluster")
                .load_balancer()
                .cluster_ip("10.96.0.201")
                .node_port("http", 80, "TCP", 30201)
                .lb_ingress("198.51.100.201")
                .health_check_node_port(32201)
                .apply(),
        )
        .object(slice4("lb-cluster", vec![ep("10.244.1.201").on("node-b")]))
        .flows(
            "
            health check on the node IP             | 203.0.113.50 192.168.0.10:32200     | ACCEPT |
            on every node address                   | 203.0.113.50 192.168.1.10:32200     | ACCEPT |
            UDP to the health-check port            | 203.0.113.50 192.168.0.10:32200/udp | NO-MATCH |
            another host's address                  | 203.0.113.50 192.168.0.11:32200     | NO-MATCH |
            IPv4-only Service: no IPv6 health check | 2001:db8::50 [fd00:1::10]:32200     | NO-MATCH |
            LB IP from outside: local endpoint      | 203.0.113.50 198.51.100.200:80      | 10.244.0.200:8080 |
            NodePort from outside: local endpoint   | 203.0.113.50 192.168.0.10:30200     | 10.244.0.200:8080 |
            eTP=Cluster LB has no health check      | 203.0.113.50 192.168.0.10:32201     | NO-MATCH |
            ",
        )
}
