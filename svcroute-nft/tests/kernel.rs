//! The nftables backend on a real kernel: svcroute programs a "node" network namespace through
//! `nft -f`, pods and an external client send real TCP and UDP traffic through it, and every
//! check compares three things: the endpoints that actually answered, the trace of our table
//! as the kernel lists it (`nft -j list table` → `trace_table`), and the core's reference
//! decision. After every sync, `NftDataplane::verify` checks that the kernel holds exactly
//! what the dataplane believes it programmed.
//!
//! Needs root, `ip`, `python3`, `nft`, `conntrack` and iptables-nft (foreign rules); without
//! them each test prints SKIPPED and passes (see `svcroute_testbed::Backend::skip`). The
//! topology is `svcroute-testbed`'s: endpoints `ep1` and `ep2` are on this node, `ep3` is
//! labelled as on another node (so traffic policies are observable) although it is attached
//! to this one.

mod support;
#[allow(dead_code)]
#[path = "../../svcroute-core/benches/common/mod.rs"]
mod workload;

use std::time::Instant;

use svcroute_conformance::objects::{ServiceBuilder, ep};
use svcroute_core::decide::Verdict;
use svcroute_core::model::{IpFamily, Protocol};
use svcroute_core::watch::WatchEvent;
use svcroute_nft::kernel::list_ours;
use svcroute_nft::names;
use svcroute_nft::ruleset::{ElemKey, ElemValue, Value, Verdict as NftVerdict, family_name};
use svcroute_testbed::{
    ALL, LOCAL, LiveProxy as _, NODE_NAME, Reply, Request, SERVER_PORT, SHORT, Topology,
    endpoint_slice, service, tcp, udp,
};

use support::netns::{NFT, NftNode as _};
use support::proxy::Proxy;

const TCP: Protocol = Protocol::Tcp;
const UDP: Protocol = Protocol::Udp;
const V4: IpFamily = IpFamily::IPv4;
const V6: IpFamily = IpFamily::IPv6;

/// A cold sync of thousands of services, each with every endpoint, on a node that has no
/// table yet: one transaction, read back equal to what was programmed (`verify`), and the
/// first and the last service answer. (IPv4 only: listing and reading a table of this size back
/// costs about a second per family.)
#[test]
fn cold_sync_of_thousands_of_services_on_a_fresh_node() {
    const SERVICES: usize = 2500;
    let Some(topo) = Topology::new(&NFT, "cold_sync_of_thousands_of_services_on_a_fresh_node")
    else {
        return;
    };
    assert!(topo.our_tables(V4).is_empty(), "a fresh node");
    let mut objects = Vec::new();
    for i in 0..SERVICES {
        let name = format!("web{i}");
        let ip = format!("10.96.{}.{}", 10 + i / 250, i % 250 + 1);
        objects.push(service(&name, &[&ip]).apply());
        objects.push(topo.slice(&name, V4, ALL));
    }
    let started = Instant::now();
    // `start` verifies: the table, read back from the kernel, equals the programmed one.
    let mut proxy = Proxy::start(&topo, &objects);
    eprintln!(
        "cold sync of {SERVICES} services, verified: {:?}",
        started.elapsed()
    );
    let tables = proxy.dataplane().tables(V4);
    assert!(tables.len() > 2, "the services are split over shards");
    let frontends: usize = (tables.iter())
        .filter_map(|(_, t)| t.sets.get(names::SERVICE_IPS))
        .map(|s| s.elements.len())
        .sum();
    assert_eq!(frontends, SERVICES);
    let client = topo.pod("client");
    for dst in ["10.96.10.1:80", "10.96.19.250:80"] {
        proxy.expect_endpoints(&topo, client, tcp(dst), ALL);
    }
}

/// ClusterIP over IPv4, TCP and UDP: a pod and the node itself reach every endpoint.
#[test]
fn cluster_ip_ipv4() {
    let Some(topo) = Topology::new(&NFT, "cluster_ip_ipv4") else {
        return;
    };
    let proxy = Proxy::start(
        &topo,
        &[
            service("web", &["10.96.0.10"])
                .port("dns", 53, "UDP")
                .apply(),
            topo.slice("web", V4, ALL),
        ],
    );
    let client = topo.pod("client");
    proxy.expect_endpoints(&topo, client, tcp("10.96.0.10:80"), ALL);
    proxy.expect_endpoints(&topo, client, udp("10.96.0.10:53"), ALL);
    // From the node itself (source 192.168.50.1): masqueraded, same endpoints.
    proxy.expect_endpoints(&topo, &topo.node, tcp("10.96.0.10:80"), ALL);
}

/// ClusterIP over IPv6, TCP and UDP: a pod and the node itself reach every endpoint.
#[test]
fn cluster_ip_ipv6() {
    let Some(topo) = Topology::new(&NFT, "cluster_ip_ipv6") else {
        return;
    };
    let proxy = Proxy::start(
        &topo,
        &[
            service("web", &["fd00:96::10"])
                .port("dns", 53, "UDP")
                .apply(),
            topo.slice("web", V6, ALL),
        ],
    );
    let client = topo.pod("client");
    proxy.expect_endpoints(&topo, client, tcp("[fd00:96::10]:80"), ALL);
    proxy.expect_endpoints(&topo, client, udp("[fd00:96::10]:53"), ALL);
    proxy.expect_endpoints(&topo, &topo.node, tcp("[fd00:96::10]:80"), ALL);
}

/// NodePort, eTP=Cluster: the external client reaches every endpoint over both families, and
/// so does the node from 127.0.0.1 (localhost NodePorts; the node has `route_localnet=1`).
#[test]
fn node_port_cluster_policy() {
    let Some(topo) = Topology::new(&NFT, "node_port_cluster_policy") else {
        return;
    };
    let proxy = Proxy::start(
        &topo,
        &[
            ServiceBuilder::new("default", "np")
                .node_port_type()
                .cluster_ips(&["10.96.0.30", "fd00:96::30"])
                .node_port("http", 80, "TCP", 30030)
                .apply(),
            topo.slice("np", V4, ALL),
            topo.slice("np", V6, ALL),
        ],
    );
    // eTP=Cluster: the external client reaches every endpoint, remote ones included.
    proxy.expect_endpoints(&topo, &topo.ext, tcp("192.168.50.1:30030"), ALL);
    proxy.expect_endpoints(&topo, &topo.ext, tcp("[fd00:50::1]:30030"), ALL);
    // The node itself, on its own address and on loopback (masqueraded).
    proxy.expect_endpoints(&topo, &topo.node, tcp("192.168.50.1:30030"), ALL);
    proxy.expect_endpoints(&topo, &topo.node_loopback, tcp("127.0.0.1:30030"), ALL);
}

/// NodePort, eTP=Local: the external client reaches only this node's endpoints; pods and the
/// node itself reach all.
#[test]
fn node_port_local_policy() {
    let Some(topo) = Topology::new(&NFT, "node_port_local_policy") else {
        return;
    };
    let proxy = Proxy::start(
        &topo,
        &[
            ServiceBuilder::new("default", "local")
                .node_port_type()
                .cluster_ips(&["10.96.0.40", "fd00:96::40"])
                .node_port("http", 80, "TCP", 30040)
                .external_policy_local()
                .apply(),
            topo.slice("local", V4, ALL),
            topo.slice("local", V6, ALL),
        ],
    );
    // External clients reach the local endpoints only (and keep their address).
    proxy.expect_endpoints(&topo, &topo.ext, tcp("192.168.50.1:30040"), LOCAL);
    proxy.expect_endpoints(&topo, &topo.ext, tcp("[fd00:50::1]:30040"), LOCAL);
    // Pods short-circuit to every endpoint; the node's own traffic is masqueraded to all.
    let client = topo.pod("client");
    proxy.expect_endpoints(&topo, client, tcp("192.168.50.1:30040"), ALL);
    proxy.expect_endpoints(&topo, client, tcp("[fd00:50::1]:30040"), ALL);
    proxy.expect_endpoints(&topo, &topo.node, tcp("192.168.50.1:30040"), ALL);
}

/// iTP=Local: a pod reaches only this node's endpoints; with none here, nothing.
#[test]
fn internal_policy_local() {
    let Some(topo) = Topology::new(&NFT, "internal_policy_local") else {
        return;
    };
    let proxy = Proxy::start(
        &topo,
        &[
            service("itp", &["10.96.0.50"])
                .internal_policy_local()
                .apply(),
            topo.slice("itp", V4, ALL),
            service("itp-remote", &["10.96.0.51"])
                .internal_policy_local()
                .apply(),
            topo.slice("itp-remote", V4, &["ep3"]),
        ],
    );
    let client = topo.pod("client");
    proxy.expect_endpoints(&topo, client, tcp("10.96.0.50:80"), LOCAL);
    // Endpoints only on other nodes: dropped.
    let remote = Request::new(TCP, "10.96.0.51:80", 1).timeout(SHORT);
    proxy.expect_no_answer(&topo, client, remote, Verdict::Drop);
}

/// externalIPs: the external client and a pod reach every endpoint.
#[test]
fn external_ips() {
    let Some(topo) = Topology::new(&NFT, "external_ips") else {
        return;
    };
    let proxy = Proxy::start(
        &topo,
        &[
            service("ext", &["10.96.0.60", "fd00:96::60"])
                .external_ip("203.0.113.60")
                .external_ip("2001:db8::60")
                .apply(),
            topo.slice("ext", V4, ALL),
            topo.slice("ext", V6, ALL),
        ],
    );
    proxy.expect_endpoints(&topo, &topo.ext, tcp("203.0.113.60:80"), ALL);
    proxy.expect_endpoints(&topo, &topo.ext, tcp("[2001:db8::60]:80"), ALL);
    let client = topo.pod("client");
    proxy.expect_endpoints(&topo, client, tcp("203.0.113.60:80"), ALL);
}

/// LB IPs with loadBalancerSourceRanges: the allowed client gets through, the other is
/// dropped; the NodePort is not filtered.
#[test]
fn load_balancer_source_ranges() {
    let Some(topo) = Topology::new(&NFT, "load_balancer_source_ranges") else {
        return;
    };
    let proxy = Proxy::start(
        &topo,
        &[
            ServiceBuilder::new("default", "lb")
                .load_balancer()
                .cluster_ips(&["10.96.0.70", "fd00:96::70"])
                .node_port("http", 80, "TCP", 30070)
                .lb_ingress("198.51.100.70")
                .lb_ingress("2001:db8:70::70")
                .source_range("192.168.50.2/32")
                .source_range("fd00:50::2/128")
                .apply(),
            topo.slice("lb", V4, ALL),
            topo.slice("lb", V6, ALL),
        ],
    );
    // The allowed client gets through; the other address of the LAN gets nothing.
    for lb in ["198.51.100.70:80", "[2001:db8:70::70]:80"] {
        proxy.expect_endpoints(&topo, &topo.ext, tcp(lb), ALL);
        let denied = Request::new(TCP, lb, 1).timeout(SHORT);
        proxy.expect_no_answer(&topo, &topo.ext_other, denied, Verdict::Drop);
    }
    // Source ranges filter the LB IPs only, not the NodePort.
    proxy.expect_endpoints(&topo, &topo.ext_other, tcp("192.168.50.1:30070"), ALL);
}

/// Hairpin: a pod reaches itself through its Service, masqueraded on its own branch only.
#[test]
fn hairpin() {
    let Some(topo) = Topology::new(&NFT, "hairpin") else {
        return;
    };
    let proxy = Proxy::start(
        &topo,
        &[
            service("echo", &["10.96.0.80", "fd00:96::80"]).apply(),
            topo.slice("echo", V4, LOCAL),
            topo.slice("echo", V6, LOCAL),
        ],
    );
    let ep1 = topo.pod("ep1");
    for (family, dst) in [(V4, "10.96.0.80:80"), (V6, "[fd00:96::80]:80")] {
        // ep1 reaches itself (and ep2) through its own Service.
        let decision = proxy.expect_endpoints(&topo, ep1, tcp(dst), LOCAL);
        // Only its own branch is masqueraded (or the reply would bypass the node).
        let Verdict::Dnat(endpoints) = &decision.verdict else {
            panic!("{decision:?}");
        };
        for endpoint in endpoints {
            let own = endpoint.endpoint.ip() == ep1.ip(family);
            assert_eq!(endpoint.masquerade, own, "{endpoint:?}");
        }
    }
}

/// ClientIP affinity: each client keeps one endpoint over all its connections.
#[test]
fn session_affinity_client_ip() {
    let Some(topo) = Topology::new(&NFT, "session_affinity_client_ip") else {
        return;
    };
    let proxy = Proxy::start(
        &topo,
        &[
            service("sticky", &["10.96.0.90", "fd00:96::90"])
                .client_ip_affinity(None)
                .apply(),
            topo.slice("sticky", V4, ALL),
            topo.slice("sticky", V6, ALL),
        ],
    );
    for dst in ["10.96.0.90:80", "[fd00:96::90]:80"] {
        for client in [topo.pod("client"), topo.pod("ep3"), &topo.node] {
            proxy.expect_sticky(&topo, client, Request::new(TCP, dst, 24));
        }
    }
    // An endpoint leaves (an incremental sync empties its chain and keeps its lookup): the
    // clients still stick, to the endpoints that remain, and it comes back.
    let mut proxy = proxy;
    for endpoints in [LOCAL, ALL] {
        proxy.update(&[topo.slice("sticky", V4, endpoints)]);
        for client in [topo.pod("client"), topo.pod("ep3"), &topo.node] {
            proxy.expect_sticky(&topo, client, Request::new(TCP, "10.96.0.90:80", 12));
        }
    }
}

/// No endpoints, or a port the Service lacks: refused at once; an unallocated service IP:
/// dropped.
#[test]
fn no_endpoints_reject() {
    let Some(topo) = Topology::new(&NFT, "no_endpoints_reject") else {
        return;
    };
    let proxy = Proxy::start(
        &topo,
        &[
            service("empty", &["10.96.0.100", "fd00:96::100"])
                .port("dns", 53, "UDP")
                .apply(),
            service("web", &["10.96.0.101"]).apply(),
            topo.slice("web", V4, ALL),
        ],
    );
    let client = topo.pod("client");
    // ECONNREFUSED proves the reject: a drop would time out. IPv4 is refused at once; over
    // IPv6 the kernel's TCP does not act on the ICMPv6 error answering the first SYN and is
    // refused on the retransmission, after 1 s (see the iptables kernel tests).
    let refused = [
        Request::new(TCP, "10.96.0.100:80", 3),
        Request::new(TCP, "[fd00:96::100]:80", 1),
        Request::new(UDP, "10.96.0.100:53", 3),
        Request::new(UDP, "[fd00:96::100]:53", 3),
        // A port the ClusterIP does not serve.
        Request::new(TCP, "10.96.0.101:81", 3),
    ];
    for request in refused {
        proxy.expect_no_answer(&topo, client, request, Verdict::Reject);
    }
    // A service-CIDR address no Service holds: dropped.
    let unallocated = Request::new(TCP, "10.96.0.99:80", 1).timeout(SHORT);
    proxy.expect_no_answer(&topo, client, unallocated, Verdict::Drop);
}

/// Services spread over many shards (a shard per service port) route exactly like one table:
/// a new connection passes the nat chains of every shard until one DNATs it, the filter
/// hooks and masquerading of the common table apply to all of them, and a change to one
/// service is written to its shard incrementally.
#[test]
fn services_spread_over_shards_route_like_one_table() {
    let Some(topo) = Topology::new(&NFT, "services_spread_over_shards_route_like_one_table") else {
        return;
    };
    let options = svcroute_nft::Options {
        ports_per_shard: 1,
        ..svcroute_nft::Options::default()
    };
    let mut proxy = Proxy::start_with(
        &topo,
        &[
            service("web", &["10.96.0.110", "fd00:96::110"]).apply(),
            topo.slice("web", V4, ALL),
            topo.slice("web", V6, ALL),
            ServiceBuilder::new("default", "local")
                .node_port_type()
                .cluster_ips(&["10.96.0.111"])
                .node_port("http", 80, "TCP", 30111)
                .external_policy_local()
                .apply(),
            topo.slice("local", V4, ALL),
            ServiceBuilder::new("default", "lb")
                .load_balancer()
                .cluster_ips(&["10.96.0.112"])
                .node_port("http", 80, "TCP", 30112)
                .lb_ingress("198.51.100.112")
                .source_range("192.168.50.2/32")
                .apply(),
            topo.slice("lb", V4, ALL),
            service("sticky", &["10.96.0.113"])
                .client_ip_affinity(None)
                .apply(),
            topo.slice("sticky", V4, ALL),
            service("echo", &["10.96.0.114"]).apply(),
            topo.slice("echo", V4, LOCAL),
            service("empty", &["10.96.0.115"]).apply(),
        ],
        options,
    );
    let shards = topo.our_tables(V4).len() - 1;
    assert!(shards >= 4, "{shards} shards");
    let client = topo.pod("client");
    proxy.expect_endpoints(&topo, client, tcp("10.96.0.110:80"), ALL);
    proxy.expect_endpoints(&topo, client, tcp("[fd00:96::110]:80"), ALL);
    proxy.expect_endpoints(&topo, &topo.ext, tcp("192.168.50.1:30111"), LOCAL);
    proxy.expect_endpoints(&topo, &topo.ext, tcp("198.51.100.112:80"), ALL);
    let denied = Request::new(TCP, "198.51.100.112:80", 1).timeout(SHORT);
    proxy.expect_no_answer(&topo, &topo.ext_other, denied, Verdict::Drop);
    proxy.expect_endpoints(&topo, &topo.ext_other, tcp("192.168.50.1:30112"), ALL);
    proxy.expect_sticky(&topo, client, Request::new(TCP, "10.96.0.113:80", 16));
    // Hairpin: masqueraded by the common table on ep1's own branch only.
    let decision = proxy.expect_endpoints(&topo, topo.pod("ep1"), tcp("10.96.0.114:80"), LOCAL);
    let Verdict::Dnat(endpoints) = &decision.verdict else {
        panic!("{decision:?}");
    };
    assert!(endpoints.iter().any(|e| e.masquerade) && endpoints.iter().any(|e| !e.masquerade));
    // Refused in the common table: no endpoints, an undefined port; another shard's ClusterIP
    // does not make an unallocated address of the service CIDR any less dropped.
    for refused in ["10.96.0.115:80", "10.96.0.110:81"] {
        proxy.expect_no_answer(
            &topo,
            client,
            Request::new(TCP, refused, 1),
            Verdict::Reject,
        );
    }
    let unallocated = Request::new(TCP, "10.96.0.99:80", 1).timeout(SHORT);
    proxy.expect_no_answer(&topo, client, unallocated, Verdict::Drop);
    // An incremental change of one service (`update` verifies every table).
    let report = proxy.update(&[topo.slice("web", V4, LOCAL)]);
    assert_eq!(report.service_ports, 1, "{report:?}");
    proxy.expect_endpoints(&topo, client, tcp("10.96.0.110:80"), LOCAL);
}

/// Removing the endpoint of a live UDP flow (applied incrementally) deletes its conntrack
/// entry: the flow's next datagram, from the same source port, reaches a remaining endpoint
/// although the removed one still answers.
#[test]
fn udp_endpoint_removal_flushes_conntrack() {
    let Some(topo) = Topology::new(&NFT, "udp_endpoint_removal_flushes_conntrack") else {
        return;
    };
    let mut proxy = Proxy::start(
        &topo,
        &[
            ServiceBuilder::new("default", "dns")
                .cluster_ips(&["10.96.0.53", "fd00:96::53"])
                .port("dns", 53, "UDP")
                .apply(),
            topo.slice("dns", V4, ALL),
            topo.slice("dns", V6, ALL),
        ],
    );
    let client = topo.pod("client");
    for (family, dst) in [(V4, "10.96.0.53:53"), (V6, "[fd00:96::53]:53")] {
        proxy.expect_endpoints(&topo, client, udp(dst), ALL);
        // A flow from a fixed source port sticks to one endpoint (its conntrack entry).
        let fixed = Request::new(UDP, dst, 5).source_port(40053);
        let replies = topo.send(client, &fixed);
        let Some(Reply::From(gone)) = replies.first().cloned() else {
            panic!("{dst}: no answer: {replies:?}");
        };
        assert!(
            replies.iter().all(|r| *r == Reply::From(gone.clone())),
            "{dst}: one flow, several endpoints: {replies:?}"
        );
        // Its endpoint leaves the slice (its server keeps running).
        let remaining: Vec<&str> = ALL.iter().copied().filter(|p| *p != gone).collect();
        let report = proxy.update(&[topo.slice("dns", family, &remaining)]);
        assert_eq!(report.writes, 1, "{report:?}");
        assert_eq!(proxy.dataplane().conntrack_error(), None);
        // The same flow now reaches a remaining endpoint: its stale entry was deleted.
        let replies = topo.send(client, &fixed);
        assert!(
            replies
                .iter()
                .all(|r| matches!(r, Reply::From(name) if remaining.contains(&name.as_str()))),
            "{dst} from port 40053 after {gone} was removed (remaining {remaining:?}): {replies:?}"
        );
        proxy.expect_endpoints(&topo, client, udp(dst), &remaining);
    }
}

/// Stable endpoint slots on the real kernel: taking out the endpoint of slot 0 moves the one of
/// the last slot into it (its element deleted and added again in one transaction, which the
/// kernel needs), and an endpoint coming back takes a new last slot; plain and ClientIP-affinity
/// services keep answering from exactly their endpoints.
#[test]
fn endpoints_keep_their_slots() {
    let Some(topo) = Topology::new(&NFT, "endpoints_keep_their_slots") else {
        return;
    };
    let mut proxy = Proxy::start(
        &topo,
        &[
            service("web", &["10.96.0.10"]).apply(),
            topo.slice("web", V4, ALL),
            service("sticky", &["10.96.0.90"])
                .client_ip_affinity(None)
                .apply(),
            topo.slice("sticky", V4, ALL),
        ],
    );
    let client = topo.pod("client");
    let endpoint = |pod: &str| {
        let ip = topo.pod(pod).ip(V4);
        Some(ElemValue::Endpoint(std::net::SocketAddr::new(
            ip,
            SERVER_PORT,
        )))
    };
    // The endpoints web's map holds, slot by slot, as the kernel lists them.
    let web_slots = || {
        let (_, chain) = frontend_chain(&topo, V4, "10.96.0.10", 80);
        let (_, map) = topo
            .our_set(V4, &names::endpoint_map(&chain))
            .expect("web's endpoint map");
        map.elements
            .iter()
            .map(|(slot, element)| (*slot, element.value.clone()))
            .collect::<Vec<_>>()
    };
    let slot = |i: u32| svcroute_nft::ruleset::ElemKey::from(Value::Int(i));
    assert_eq!(
        web_slots(),
        [
            (slot(0), endpoint("ep1")),
            (slot(1), endpoint("ep2")),
            (slot(2), endpoint("ep3"))
        ]
    );

    proxy.update(&[
        topo.slice("web", V4, &["ep2", "ep3"]),
        topo.slice("sticky", V4, &["ep2", "ep3"]),
    ]);
    assert_eq!(
        web_slots(),
        [(slot(0), endpoint("ep3")), (slot(1), endpoint("ep2"))]
    );
    proxy.expect_endpoints(&topo, client, tcp("10.96.0.10:80"), &["ep2", "ep3"]);
    proxy.expect_sticky(&topo, client, Request::new(TCP, "10.96.0.90:80", 8));

    proxy.update(&[topo.slice("web", V4, ALL), topo.slice("sticky", V4, ALL)]);
    assert_eq!(
        web_slots(),
        [
            (slot(0), endpoint("ep3")),
            (slot(1), endpoint("ep2")),
            (slot(2), endpoint("ep1"))
        ]
    );
    proxy.expect_endpoints(&topo, client, tcp("10.96.0.10:80"), ALL);
    proxy.expect_sticky(&topo, client, Request::new(TCP, "10.96.0.90:80", 8));
}

/// Every kind of object: affinity, no endpoints, an LB with source ranges, eTP=Local and a
/// health-check NodePort, in both families; the first three objects are a Service and its
/// slices.
fn every_kind_of_object() -> Vec<WatchEvent> {
    let here = |ip: &str| ep(ip).on(NODE_NAME);
    vec![
        service("web", &["10.96.0.10", "fd00:96::10"])
            .client_ip_affinity(Some(60))
            .apply(),
        endpoint_slice("web", V4, [here("10.244.0.11"), here("10.244.0.12")]),
        endpoint_slice("web", V6, [here("fd00:244::11")]),
        service("empty", &["10.96.0.20", "fd00:96::20"]).apply(),
        ServiceBuilder::new("default", "lb")
            .load_balancer()
            .cluster_ips(&["10.96.0.30", "fd00:96::30"])
            .node_port("http", 80, "TCP", 30030)
            .lb_ingress("198.51.100.30")
            .lb_ingress("2001:db8::30")
            .source_range("192.168.50.0/24")
            .source_range("fd00:50::/64")
            .external_policy_local()
            .health_check_node_port(31030)
            .apply(),
        endpoint_slice("lb", V4, [here("10.244.0.11")]),
        endpoint_slice("lb", V6, [here("fd00:244::11")]),
    ]
}

/// Another program's nftables tables: one in the `inet` family named like ours, one of each
/// of our families with another name.
const FOREIGN_NFT: &str = "\
table inet svcroute {
    set blocked { type ipv4_addr; elements = { 192.0.2.1 } }
    chain input { type filter hook input priority 0; policy accept; ip saddr @blocked drop; }
}
table ip not-svcroute {
    chain forward { type filter hook forward priority 0; policy accept; counter accept comment \"foreign\"; }
}
table ip6 svcroute6 {
    chain prerouting { type nat hook prerouting priority -100; policy accept; }
}
";

/// Rules another program installed with iptables-nft, in both tables, for both families.
const FOREIGN_IPTABLES: &str = "\
*filter
:DOCKER - [0:0]
-A FORWARD -m comment --comment foreign -j ACCEPT
-A DOCKER -m comment --comment foreign -j RETURN
COMMIT
*nat
:DOCKER - [0:0]
-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER
-A DOCKER -m comment --comment foreign -j RETURN
COMMIT
";

/// The rules and user-defined chains of an `iptables-save` dump, sorted, counters and the
/// header's timestamps dropped.
fn iptables_rules(dump: &str) -> Vec<String> {
    let mut table = "";
    let mut out = Vec::new();
    for line in dump.lines() {
        if let Some(name) = line.strip_prefix('*') {
            table = name;
        } else if let Some(chain) = line.strip_prefix(':') {
            let name = chain.split_whitespace().next().unwrap_or_default();
            out.push(format!("{table} :{name}"));
        } else if line.starts_with("-A ") {
            out.push(format!("{table} {line}"));
        }
    }
    out.sort();
    out
}

/// Our tables of a small cluster (one per family: the common table is the only shard), as
/// `nft list tables` prints them.
fn our_tables() -> Vec<String> {
    IpFamily::ALL
        .iter()
        .map(|f| format!("table {} {}", family_name(*f), names::TABLE))
        .collect()
}

/// `cleanup` deletes our tables and nothing else: another program's nftables tables (one
/// of them called `inet svcroute`) and its iptables-nft rules survive a sync and the cleanup,
/// byte for byte.
#[test]
fn cleanup_removes_only_our_tables() {
    let Some(topo) = Topology::node_only(&NFT, "cleanup_removes_only_our_tables") else {
        return;
    };
    topo.nft(FOREIGN_NFT);
    for family in IpFamily::ALL {
        topo.iptables_restore(family, FOREIGN_IPTABLES);
    }
    let ruleset = topo.ruleset();
    let tables = topo.tables();
    let iptables = IpFamily::ALL.map(|f| iptables_rules(&topo.iptables_save(f)));
    assert!(
        tables.contains(&"table inet svcroute".to_string()),
        "{tables:?}"
    );

    let mut proxy = Proxy::start(&topo, &every_kind_of_object());
    let mut with_ours = tables.clone();
    with_ours.extend(our_tables());
    with_ours.sort();
    assert_eq!(topo.tables(), with_ours, "a sync adds our tables only");
    for (i, family) in IpFamily::ALL.into_iter().enumerate() {
        assert_eq!(
            iptables_rules(&topo.iptables_save(family)),
            iptables[i],
            "{family:?}: a sync must not touch iptables rules"
        );
    }

    proxy.cleanup();
    for family in IpFamily::ALL {
        assert_eq!(
            topo.our_table(family),
            None,
            "{family:?}: left after cleanup"
        );
    }
    assert_eq!(topo.tables(), tables, "cleanup deletes our tables only");
    assert_eq!(
        topo.ruleset(),
        ruleset,
        "cleanup leaves every other table as it was"
    );
    for (i, family) in IpFamily::ALL.into_iter().enumerate() {
        assert_eq!(
            iptables_rules(&topo.iptables_save(family)),
            iptables[i],
            "{family:?}: foreign iptables rules lost"
        );
    }
    // Cleaning up again, with nothing of ours left, is fine.
    proxy.cleanup();
    assert_eq!(topo.tables(), tables);
}

/// A restarted proxy adopts the tables of the previous run: a fresh dataplane's `sync_full`
/// over existing (and meddled-with) tables leaves exactly our tables of each family, equal to
/// its own shadow, and traffic flows; a restart with fewer objects deletes what is gone.
#[test]
fn a_restart_adopts_the_existing_tables() {
    let Some(topo) = Topology::new(&NFT, "a_restart_adopts_the_existing_tables") else {
        return;
    };
    let objects = every_kind_of_object();
    let _first = Proxy::start(&topo, &objects);
    // Someone adds to our table in between: a chain, a rule, an element.
    topo.nft(&format!(
        "add chain ip {t} intruder\n\
         add rule ip {t} intruder counter accept\n\
         add element ip {t} {cips} {{ 10.96.99.99 }}\n",
        t = names::TABLE,
        cips = names::CLUSTER_IPS
    ));

    // A restart: a fresh dataplane replaces the table with its own.
    let mut restarted = Proxy::start(&topo, &objects);
    assert_eq!(topo.tables(), our_tables(), "exactly our tables");
    for family in IpFamily::ALL {
        let live = topo.our_table(family).expect("our table");
        assert!(!live.chains.contains_key("intruder"), "{family:?}");
    }
    // `start` checked with `verify` that the kernel's tables equal the new dataplane's
    // shadow; it still holds after reading them back once more.
    assert!(restarted.dataplane().verify().is_ok());
    let cips = &topo.our_table(V4).expect("our table").sets[names::CLUSTER_IPS];
    assert!(
        !cips.elements.contains_key(&ElemKey::from([Value::Addr(
            "10.96.99.99".parse().expect("IP")
        )])),
        "the foreign element survived the restart"
    );
    let client = topo.pod("client");
    restarted.expect_sticky(&topo, client, Request::new(TCP, "10.96.0.10:80", 8));

    // A restart that no longer has the LoadBalancer: its chains and sets go.
    let chains = |tables: Vec<(String, svcroute_nft::Table)>| -> usize {
        tables.iter().map(|(_, t)| t.chains.len()).sum()
    };
    let before = chains(topo.our_tables(V4));
    let mut fewer = Proxy::start(&topo, &objects[..4]);
    assert_eq!(topo.tables(), our_tables());
    let after = chains(topo.our_tables(V4));
    assert!(after < before);
    let programmed = fewer.dataplane().tables(V4);
    assert_eq!(
        after,
        programmed
            .iter()
            .map(|(_, t)| t.chains.len())
            .sum::<usize>()
    );
    let (_, frontends) = topo.our_set(V4, names::SERVICE_IPS).expect("frontends");
    assert!(
        !frontends
            .elements
            .keys()
            .any(|k| k.values()[0] == Value::Addr("198.51.100.30".parse().expect("IP"))),
        "the LB IP is still routed"
    );
    fewer.expect_sticky(&topo, client, Request::new(TCP, "10.96.0.10:80", 8));
}

/// The table and chain the ClusterIP frontend `ip:port/TCP` goes to, as the kernel's tables
/// say.
fn frontend_chain(topo: &Topology, family: IpFamily, ip: &str, port: u16) -> (String, String) {
    let (table, frontends) = topo.our_set(family, names::SERVICE_IPS).expect("frontends");
    let key = ElemKey::new(&[
        Value::Addr(ip.parse().expect("IP literal")),
        Value::Proto(TCP),
        Value::Port(port),
    ])
    .expect("short key");
    match frontends.elements.get(&key) {
        Some(element) => match &element.value {
            Some(ElemValue::Verdict(NftVerdict::Goto(chain))) => (table, chain.clone()),
            other => panic!("{ip}:{port} maps to {other:?}"),
        },
        None => panic!("{ip}:{port} is not in {}", names::SERVICE_IPS),
    }
}

/// Atomicity: someone else deletes a chain our next incremental sync must rewrite; that sync
/// (changes in both families and a new service) fails as a whole, leaving the kernel exactly as
/// it was, and the next sync is a full one that repairs everything.
#[test]
fn a_failed_sync_changes_nothing_and_the_next_sync_repairs() {
    let Some(topo) = Topology::new(
        &NFT,
        "a_failed_sync_changes_nothing_and_the_next_sync_repairs",
    ) else {
        return;
    };
    let mut proxy = Proxy::start(
        &topo,
        &[
            service("web", &["10.96.0.10", "fd00:96::10"]).apply(),
            topo.slice("web", V4, LOCAL),
            topo.slice("web", V6, LOCAL),
            service("other", &["10.96.0.11"]).apply(),
            topo.slice("other", V4, ALL),
        ],
    );
    let client = topo.pod("client");
    proxy.expect_endpoints(&topo, client, tcp("10.96.0.10:80"), LOCAL);

    // Someone deletes web's IPv4 endpoint chain (and the map element pointing at it).
    let (shard, chain) = frontend_chain(&topo, V4, "10.96.0.10", 80);
    topo.nft(&format!(
        "delete element ip {t} {ips} {{ 10.96.0.10 . tcp . 80 }}\n\
         flush chain ip {t} {chain}\n\
         delete chain ip {t} {chain}\n",
        t = shard,
        ips = names::SERVICE_IPS,
    ));
    let tampered = topo.ruleset();
    assert!(
        proxy.dataplane().verify().is_err(),
        "verify sees the change"
    );

    // web gets a third endpoint in both families (its chains' numgen changes: flushed and
    // refilled), and a new service appears: one transaction, refused at `flush chain`.
    let err = proxy
        .try_update(&[
            topo.slice("web", V4, ALL),
            topo.slice("web", V6, ALL),
            service("fresh", &["10.96.0.12", "fd00:96::12"]).apply(),
            topo.slice("fresh", V4, &["ep3"]),
            topo.slice("fresh", V6, &["ep3"]),
        ])
        .expect_err("the incremental sync needs the deleted chain");
    let message = err.to_string();
    assert!(message.contains(&chain), "{message}");
    assert_eq!(
        topo.ruleset(),
        tampered,
        "a failed transaction changes nothing"
    );
    let cips = &topo.our_table(V6).expect("our table").sets[names::CLUSTER_IPS];
    assert!(
        !cips.elements.contains_key(&ElemKey::from([Value::Addr(
            "fd00:96::12".parse().expect("IP")
        )])),
        "half of the failed transaction is in the kernel"
    );

    // The next change makes a full sync, which repairs the table (`update` verifies).
    let report = proxy.update(&[service("later", &["10.96.0.13"]).apply()]);
    assert_eq!(report.writes, 1);
    assert_eq!(
        report.service_ports, 4,
        "a full sync writes every service port"
    );
    for dst in ["10.96.0.10:80", "[fd00:96::10]:80"] {
        proxy.expect_endpoints(&topo, client, tcp(dst), ALL);
    }
    proxy.expect_endpoints(&topo, client, tcp("[fd00:96::12]:80"), &["ep3"]);
    // Incremental syncs work again.
    let report = proxy.update(&[topo.slice("fresh", V4, LOCAL)]);
    assert_eq!(report.service_ports, 1, "{report:?}");
    proxy.expect_endpoints(&topo, client, tcp("10.96.0.12:80"), LOCAL);
}

/// Atomicity of one `nft -f` transaction: a full sync's text (our tables of both families
/// deleted and written again with other services) followed by one invalid command changes
/// nothing at all; our tables still equal what the dataplane programmed.
#[test]
fn an_invalid_command_rolls_back_the_whole_transaction() {
    let Some(topo) =
        Topology::node_only(&NFT, "an_invalid_command_rolls_back_the_whole_transaction")
    else {
        return;
    };
    let objects = every_kind_of_object();
    let mut proxy = Proxy::start(&topo, &objects[..4]);
    let before = topo.ruleset();
    // The transaction a sync of every object would write, then a verdict to no chain.
    let other = Proxy::render_full(&objects);
    let script = format!(
        "{other}add element ip {t} {ips} {{ 10.96.0.99 . tcp . 80 : goto no-such-chain }}\n",
        t = names::TABLE,
        ips = names::SERVICE_IPS,
    );
    let err = topo
        .try_nft(&script)
        .expect_err("a verdict to a missing chain is refused");
    assert!(err.contains("no-such-chain"), "{err}");
    assert_eq!(topo.ruleset(), before, "nothing of the transaction applied");
    proxy.verify();
    // Without the invalid command, the same text applies.
    topo.nft(&other);
    assert_ne!(topo.ruleset(), before);
    assert!(proxy.dataplane().verify().is_err());
    // And a sync_full puts our state back.
    proxy.sync_full();
    assert_eq!(topo.ruleset(), before);
}

/// The netlink fast path writes exactly what `nft -f` would: two node namespaces take the same
/// full sync and then the same incremental transactions, one through the default kernel
/// (netlink whenever it can encode them), one through `nft -f` only. After every step both
/// kernels list equal tables. The steps run on every kind of service the benchmark workload
/// has: an endpoint out and back (the slot count changes), an endpoint
/// moved to another address, all endpoints gone and back, the service deleted and re-added.
#[test]
fn the_netlink_fast_path_writes_what_nft_would() {
    use svcroute_core::watch::Event;
    use svcroute_nft::Kernel as _;
    use svcroute_nft::apply::{Plan, desired_states, full_transaction};

    const SERVICES: usize = 62;
    // One service of each kind (see the workload's generator): plain ClusterIP, dual-stack,
    // topology hints, NodePort, LoadBalancer with Local policy, UDP, ClientIP affinity,
    // LoadBalancer with Cluster policy.
    const KINDS: [usize; 8] = [0, 3, 5, 7, 11, 13, 17, 61];
    let test = "the_netlink_fast_path_writes_what_nft_would";
    let (Some(fast), Some(reference)) = (
        Topology::node_only(&NFT, test),
        Topology::node_only(&NFT, test),
    ) else {
        return;
    };
    let mut fast_kernel = fast.kernel();
    let mut nft_kernel = reference.kernel().nft_only();
    let w = workload::Workload::new(SERVICES, 4);
    let mut state = w.build_state();
    state.take_changes();
    let mut states = desired_states(state.desired(), &svcroute_nft::Options::default());
    let full = full_transaction(&[], &states);
    fast_kernel.run(&full).expect("full sync");
    nft_kernel.run(&full).expect("full sync");

    let mut steps = 0;
    let mut step = |state: &mut svcroute_core::State, events: Vec<WatchEvent>, what: &str| {
        for e in events {
            state.apply(e).expect("valid event");
        }
        let changes = state.take_changes();
        let plan = Plan::new(&states, state.desired(), &changes);
        fast_kernel
            .run(&plan.transaction)
            .unwrap_or_else(|e| panic!("{what}: {e}\n{}", plan.transaction.text()));
        nft_kernel.run(&plan.transaction).expect("nft -f");
        let text = plan.transaction.text();
        plan.commit(&mut states);
        for family in [V4, V6] {
            assert_eq!(
                list_ours(&mut fast_kernel, names::TABLE, family).expect("list"),
                list_ours(&mut nft_kernel, names::TABLE, family).expect("list"),
                "{what}: {family:?}\n{text}"
            );
        }
        steps += 1;
    };
    for i in KINDS {
        let original = w.slice(i);
        let flipped = workload::flip_first_endpoint(&original);
        let mut moved = original.clone();
        moved.endpoints[1].addresses = vec![format!("10.200.{}.{}", i / 200, i % 200 + 1)];
        let mut empty = original.clone();
        empty.endpoints.clear();
        let service = w.service(i);
        let events = [
            ("endpoint out", vec![Event::Apply(flipped).into()]),
            ("endpoint back", vec![Event::Apply(original.clone()).into()]),
            ("endpoint moved", vec![Event::Apply(moved).into()]),
            ("no endpoints", vec![Event::Apply(empty).into()]),
            (
                "endpoints back",
                vec![Event::Apply(original.clone()).into()],
            ),
            (
                "service deleted",
                vec![Event::Delete(service.clone()).into()],
            ),
            (
                "service re-added",
                vec![Event::Apply(service).into(), Event::Apply(original).into()],
            ),
        ];
        for (what, events) in events {
            step(&mut state, events, &format!("service {i}: {what}"));
        }
    }
    eprintln!(
        "{steps} incremental transactions, {} through netlink",
        fast_kernel.netlink_batches()
    );
    assert!(
        fast_kernel.netlink_batches() >= steps / 2,
        "most incremental transactions go through netlink"
    );
}
