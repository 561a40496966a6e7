use std::net::SocketAddr;

use serde_json::json;

use super::*;
use crate::State;
use crate::model::{NodePortAddresses, api};
use crate::watch::Event;

fn cluster(config: ProxyConfig, objects: serde_json::Value) -> State {
    let mut st = State::new(config).unwrap();
    for obj in objects.as_array().unwrap() {
        match obj["kind"].as_str().unwrap() {
            "Service" => st.apply(Event::Apply(
                serde_json::from_value::<api::Service>(obj.clone()).unwrap(),
            )),
            "EndpointSlice" => st.apply(Event::Apply(
                serde_json::from_value::<api::EndpointSlice>(obj.clone()).unwrap(),
            )),
            other => panic!("{other}"),
        }
        .unwrap();
    }
    st.take_changes();
    st
}

fn config() -> ProxyConfig {
    ProxyConfig {
        node_name: "n1".into(),
        node_ips: vec!["192.168.1.1".parse().unwrap(), "fd00::1".parse().unwrap()],
        cluster_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
        service_cidrs: vec!["10.96.0.0/16".parse().unwrap()],
        ..ProxyConfig::default()
    }
}

fn lb_objects(endpoints: &[&str]) -> serde_json::Value {
    let eps: Vec<_> = endpoints
        .iter()
        .map(|ip| json!({"addresses": [ip], "nodeName": "n2"}))
        .collect();
    json!([
        {"kind": "Service", "metadata": {"name": "lb", "namespace": "ns"},
         "spec": {"type": "LoadBalancer", "clusterIP": "10.96.0.10", "ports": [{"port": 80, "nodePort": 30080}],
                  "loadBalancerSourceRanges": ["203.0.113.0/24"]},
         "status": {"loadBalancer": {"ingress": [{"ip": "198.51.100.7"}]}}},
        {"kind": "EndpointSlice", "metadata": {"name": "lb-1", "namespace": "ns", "labels": {"kubernetes.io/service-name": "lb"}},
         "addressType": "IPv4", "ports": [{"port": 8080}], "endpoints": eps}
    ])
}

fn packet(s: &str) -> Packet {
    s.parse().unwrap()
}

#[test]
fn packets_parse_with_defaults_and_brackets() {
    let p = packet("10.0.0.1 10.96.0.1:53/udp");
    assert_eq!((p.port, p.protocol), (53, Protocol::Udp));
    assert_eq!(packet("10.0.0.1 10.96.0.1:80").protocol, Protocol::Tcp);
    let v6 = packet("fd00::5 [fd00:96::a]:8080/sctp");
    assert_eq!(v6.destination, "fd00:96::a".parse::<IpAddr>().unwrap());
    assert_eq!(v6.to_string(), "fd00::5 [fd00:96::a]:8080/sctp");
    for bad in [
        "10.0.0.1",
        "10.0.0.1 10.96.0.1:0",
        "10.0.0.1 [fd00::1]:80",
        "x 10.96.0.1:80",
        "10.0.0.1 10.96.0.1:80/icmp",
        "a b c",
    ] {
        assert!(bad.parse::<Packet>().is_err(), "{bad}");
    }
}

#[test]
fn source_ranges_drop_before_anything_else() {
    let st = cluster(config(), lb_objects(&[]));
    // Denied source: dropped even though the service has no endpoints.
    assert_eq!(
        decide(st.desired(), &packet("8.8.8.8 198.51.100.7:80")).verdict,
        Verdict::Drop
    );
    // Allowed source, no endpoints: refused.
    assert_eq!(
        decide(st.desired(), &packet("203.0.113.9 198.51.100.7:80")).verdict,
        Verdict::Reject
    );
    // Source ranges do not apply to the NodePort.
    assert_eq!(
        decide(st.desired(), &packet("8.8.8.8 192.168.1.1:30080")).verdict,
        Verdict::Reject
    );

    let st = cluster(config(), lb_objects(&["10.244.5.5"]));
    let d = decide(st.desired(), &packet("203.0.113.9 198.51.100.7:80"));
    assert!(matches!(d.verdict, Verdict::Dnat(_)));
    assert!(d.masquerade, "eTP=Cluster external traffic is masqueraded");
}

#[test]
fn node_inside_source_range_allows_lb_ips_as_sources() {
    let mut cfg = config();
    cfg.node_ips[0] = "203.0.113.1".parse().unwrap();
    let st = cluster(cfg, lb_objects(&["10.244.5.5"]));
    assert!(matches!(
        decide(st.desired(), &packet("198.51.100.7 198.51.100.7:80")).verdict,
        Verdict::Dnat(_)
    ));
}

#[test]
fn localhost_nodeports_follow_the_setting_and_never_ipv6() {
    let st = cluster(config(), lb_objects(&["10.244.5.5"]));
    assert!(matches!(
        decide(st.desired(), &packet("127.0.0.1 127.0.0.1:30080")).verdict,
        Verdict::Dnat(_)
    ));
    let mut cfg = config();
    cfg.localhost_nodeports = false;
    let st = cluster(cfg.clone(), lb_objects(&["10.244.5.5"]));
    assert_eq!(
        decide(st.desired(), &packet("127.0.0.1 127.0.0.1:30080")).verdict,
        Verdict::NoMatch
    );
    cfg.nodeport_addresses = NodePortAddresses::Cidrs(vec!["10.0.0.0/8".parse().unwrap()]);
    let st = cluster(cfg, lb_objects(&["10.244.5.5"]));
    assert_eq!(
        decide(st.desired(), &packet("8.8.8.8 192.168.1.1:30080")).verdict,
        Verdict::NoMatch
    );
}

#[test]
fn service_cidr_and_undefined_ports() {
    let st = cluster(config(), lb_objects(&["10.244.5.5"]));
    assert_eq!(
        decide(st.desired(), &packet("10.244.1.1 10.96.0.10:81")).verdict,
        Verdict::Reject
    );
    assert_eq!(
        decide(st.desired(), &packet("10.244.1.1 10.96.0.11:80")).verdict,
        Verdict::Drop
    );
    assert_eq!(
        decide(st.desired(), &packet("10.244.1.1 10.97.0.11:80")).verdict,
        Verdict::NoMatch
    );
}

#[test]
fn hairpin_masquerades_only_the_own_branch() {
    let st = cluster(config(), lb_objects(&["10.244.5.5", "10.244.6.6"]));
    let d = decide(st.desired(), &packet("10.244.5.5 10.96.0.10:80"));
    let Verdict::Dnat(eps) = &d.verdict else {
        panic!("{d:?}")
    };
    let own: SocketAddr = "10.244.5.5:8080".parse().unwrap();
    for e in eps {
        assert_eq!(e.masquerade, e.endpoint == own);
        assert!((e.probability - 0.5).abs() < 1e-9);
    }
    assert!(d.masquerade);
}

#[test]
fn equivalence_ignores_order_and_tiny_probability_differences() {
    let ep = |s: &str, p: f64| WeightedEndpoint {
        endpoint: s.parse().unwrap(),
        probability: p,
        masquerade: false,
    };
    let a = Decision {
        verdict: Verdict::Dnat(vec![ep("1.1.1.1:1", 0.5), ep("2.2.2.2:2", 0.5)]),
        masquerade: false,
        affinity_timeout_seconds: None,
    };
    let b = Decision {
        verdict: Verdict::Dnat(vec![
            ep("2.2.2.2:2", 0.50000001),
            ep("1.1.1.1:1", 0.49999999),
        ]),
        masquerade: false,
        affinity_timeout_seconds: None,
    };
    assert!(a.equivalent(&b));
    let c = Decision {
        verdict: Verdict::Dnat(vec![ep("2.2.2.2:2", 0.6), ep("1.1.1.1:1", 0.4)]),
        masquerade: false,
        affinity_timeout_seconds: None,
    };
    assert!(!a.equivalent(&c));
    assert!(!a.equivalent(&Decision::simple(Verdict::Reject)));
}
