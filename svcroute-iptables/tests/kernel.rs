//! The iptables backend on a real kernel: svcroute programs a "node" network namespace
//! through `iptables-nft-restore`, pods and an external client send real TCP and UDP traffic
//! through it, and every check compares three things: the endpoints that actually answered,
//! the trace of the node's own `iptables-save` dump, and the core's reference decision.
//!
//! Needs root, `ip`, `python3`, `iptables-nft`, `ip6tables-nft` and `conntrack`; without
//! them each test prints SKIPPED and passes (see `svcroute_testbed::Backend::skip`). The
//! topology is `svcroute-testbed`'s: endpoints `ep1` and `ep2` are on this node, `ep3` is
//! labelled as on another node (so traffic policies are observable) although it is attached
//! to this one.

mod support;

use svcroute_conformance::objects::{ServiceBuilder, ep};
use svcroute_core::decide::Verdict;
use svcroute_core::model::{IpFamily, Protocol};
use svcroute_testbed::{
    ALL, LOCAL, LiveProxy as _, NODE_NAME, Reply, Request, SHORT, Topology, endpoint_slice,
    service, tcp, udp,
};

use support::netns::{IPTABLES, IptablesNode as _};
use support::proxy::Proxy;

const TCP: Protocol = Protocol::Tcp;
const UDP: Protocol = Protocol::Udp;
const V4: IpFamily = IpFamily::IPv4;
const V6: IpFamily = IpFamily::IPv6;

/// A cold sync big enough for the iptables-nft chain-cache workaround (`-S` in the payload)
/// on a node whose nat table does not exist yet: the built-in chains must still be created.
#[test]
fn cold_sync_with_many_chains_on_a_fresh_node() {
    let Some(topo) = Topology::new(&IPTABLES, "cold_sync_many_chains") else {
        return;
    };
    let mut objects = Vec::new();
    for i in 0..40 {
        let name = format!("web{i}");
        objects.push(service(&name, &[&format!("10.96.1.{}", i + 1)]).apply());
        objects.push(topo.slice(&name, V4, ALL));
    }
    let proxy = Proxy::start(&topo, &objects);
    let payload_chains = topo.save(V4).matches(":KUBE-SEP-").count();
    assert_eq!(
        payload_chains,
        40 * ALL.len(),
        "every endpoint chain programmed"
    );
    let client = topo.pod("client");
    proxy.expect_endpoints(&topo, client, tcp("10.96.1.40:80"), ALL);
}

/// ClusterIP over IPv4, TCP and UDP: a pod and the node itself reach every endpoint.
#[test]
fn cluster_ip_ipv4() {
    let Some(topo) = Topology::new(&IPTABLES, "cluster_ip_ipv4") else {
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
    let Some(topo) = Topology::new(&IPTABLES, "cluster_ip_ipv6") else {
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

/// NodePort, eTP=Cluster: the external client reaches every endpoint over both families.
#[test]
fn node_port_cluster_policy() {
    let Some(topo) = Topology::new(&IPTABLES, "node_port_cluster_policy") else {
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
}

/// NodePort, eTP=Local: the external client reaches only this node's endpoints; pods and the
/// node itself reach all.
#[test]
fn node_port_local_policy() {
    let Some(topo) = Topology::new(&IPTABLES, "node_port_local_policy") else {
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
    let Some(topo) = Topology::new(&IPTABLES, "internal_policy_local") else {
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
    let Some(topo) = Topology::new(&IPTABLES, "external_ips") else {
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
    let Some(topo) = Topology::new(&IPTABLES, "load_balancer_source_ranges") else {
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
    let Some(topo) = Topology::new(&IPTABLES, "hairpin") else {
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
    let Some(topo) = Topology::new(&IPTABLES, "session_affinity_client_ip") else {
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
}

/// No endpoints, or a port the Service lacks: refused at once; an unallocated service IP:
/// dropped.
#[test]
fn no_endpoints_reject() {
    let Some(topo) = Topology::new(&IPTABLES, "no_endpoints_reject") else {
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
    // ECONNREFUSED proves the REJECT: a DROP would time out. IPv4 is refused at once; over
    // IPv6 the kernel's TCP does not act on the ICMPv6 error answering the first SYN (the
    // same with a bare ip6tables REJECT rule) and is refused on the retransmission, after 1 s.
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

/// Removing the endpoint of a live UDP flow (applied incrementally) deletes its conntrack
/// entry: the flow's next datagram, from the same source port, reaches a remaining endpoint
/// although the removed one still answers.
#[test]
fn udp_endpoint_removal_flushes_conntrack() {
    let Some(topo) = Topology::new(&IPTABLES, "udp_endpoint_removal_flushes_conntrack") else {
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
        assert!(report.writes > 0, "{report:?}");
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

/// Rules another program installed, in both tables, for both families.
const FOREIGN: &str = "\
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

/// The rules of an `iptables-save` dump, sorted, each as `TABLE -A CHAIN ...`, plus a
/// `TABLE :CHAIN` line per user-defined chain (counters and comments dropped).
fn rules(dump: &str) -> Vec<String> {
    let mut table = "";
    let mut out = Vec::new();
    for line in dump.lines() {
        if let Some(name) = line.strip_prefix('*') {
            table = name;
        } else if let Some(chain) = line.strip_prefix(':') {
            let mut fields = chain.split_whitespace();
            if let (Some(name), Some("-")) = (fields.next(), fields.next()) {
                out.push(format!("{table} :{name}"));
            }
        } else if line.starts_with("-A ") {
            out.push(format!("{table} {line}"));
        }
    }
    out.sort();
    out
}

/// The rules of built-in `chain` of `table` that jump to one of our chains.
fn hooks<'a>(rules: &'a [String], table: &str, chain: &str) -> Vec<&'a String> {
    let prefix = format!("{table} -A {chain} ");
    rules
        .iter()
        .filter(|r| r.starts_with(&prefix) && r.contains("-j KUBE-"))
        .collect()
}

/// Our chains (`KUBE-*`) of `table` in a `rules` listing.
fn our_chains(rules: &[String], table: &str) -> Vec<String> {
    let prefix = format!("{table} :KUBE-");
    rules
        .iter()
        .filter(|r| r.starts_with(&prefix))
        .map(|r| r[table.len() + 1..].to_string())
        .collect()
}

/// A restarted proxy adopts the rules of the previous run (no duplicate hooks, stale chains
/// deleted), and `cleanup` removes all of ours and only ours.
#[test]
fn cleanup_keeps_foreign_rules_and_a_restart_adopts_ours() {
    let Some(topo) = Topology::node_only(
        &IPTABLES,
        "cleanup_keeps_foreign_rules_and_a_restart_adopts_ours",
    ) else {
        return;
    };
    for family in IpFamily::ALL {
        topo.restore(family, FOREIGN);
    }
    let baseline = IpFamily::ALL.map(|f| rules(&topo.save(f)));
    let here = |ip: &str| ep(ip).on(NODE_NAME);
    // Every kind of chain: NodePort with eTP=Local, LB firewall, affinity, no endpoints.
    let objects = [
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
    ];
    let _first = Proxy::start(&topo, &objects);
    let programmed = IpFamily::ALL.map(|f| rules(&topo.save(f)));

    // A restart: a fresh dataplane finds our rules and rewrites them as they were.
    let _restarted = Proxy::start(&topo, &objects);
    for (i, family) in IpFamily::ALL.into_iter().enumerate() {
        let now = rules(&topo.save(family));
        for line in &baseline[i] {
            assert!(now.contains(line), "{family:?}: foreign rule lost: {line}");
        }
        for (table, chain) in [
            ("nat", "PREROUTING"),
            ("nat", "OUTPUT"),
            ("nat", "POSTROUTING"),
            ("filter", "INPUT"),
            ("filter", "FORWARD"),
            ("filter", "OUTPUT"),
        ] {
            let jumps = hooks(&now, table, chain);
            assert!(
                !jumps.is_empty(),
                "{family:?}: no jump from {table} {chain}"
            );
            assert!(
                jumps.windows(2).all(|w| w[0] != w[1]),
                "{family:?}: duplicate jumps from {table} {chain}: {jumps:#?}"
            );
        }
        assert_eq!(
            now, programmed[i],
            "{family:?}: a restart must leave the same rules"
        );
    }

    // A restart that no longer has the LoadBalancer: its chains go, nothing else stays.
    let mut fewer = Proxy::start(&topo, &objects[..4]);
    for family in IpFamily::ALL {
        let now = rules(&topo.save(family));
        let shadow = fewer
            .dataplane()
            .programmed(family)
            .expect("the family is programmed");
        for table in svcroute_iptables::TableName::ALL {
            let mut expected: Vec<String> = shadow
                .chains(table)
                .into_iter()
                .flat_map(|chains| chains.keys())
                .filter(|name| name.starts_with("KUBE-"))
                .map(|name| format!(":{name}"))
                .collect();
            expected.sort();
            assert_eq!(
                our_chains(&now, table.as_str()),
                expected,
                "{family:?} {table}: the kernel's chains differ from the programmed ones"
            );
        }
    }

    fewer.cleanup();
    for (i, family) in IpFamily::ALL.into_iter().enumerate() {
        let now = rules(&topo.save(family));
        let ours: Vec<&String> = now.iter().filter(|r| r.contains("KUBE-")).collect();
        assert!(ours.is_empty(), "{family:?}: left after cleanup: {ours:#?}");
        assert_eq!(
            now, baseline[i],
            "{family:?}: cleanup must restore the foreign rules"
        );
    }
}
