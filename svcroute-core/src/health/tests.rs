//! Tests of the health-check plan, responses and request parsing.

use serde_json::{Value, json};

use super::*;
use crate::State;
use crate::model::{ProxyConfig, api};
use crate::watch::Event;

fn state() -> State {
    State::new(ProxyConfig {
        node_name: "here".into(),
        ..ProxyConfig::default()
    })
    .unwrap()
}

/// A LoadBalancer Service `ns/NAME` with ports `http` (80) and `https` (443), NodePorts
/// derived from the name's first letter.
fn lb(name: &str, policy: &str, hc: u16, cluster_ips: &[&str]) -> api::Service {
    let node_port = 30000 + 2 * u16::from(name.as_bytes()[0]);
    let families: Vec<&str> = cluster_ips
        .iter()
        .map(|ip| if ip.contains(':') { "IPv6" } else { "IPv4" })
        .collect();
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "ns"},
        "spec": {
            "type": "LoadBalancer",
            "clusterIP": cluster_ips[0],
            "clusterIPs": cluster_ips,
            "ipFamilies": families,
            "externalTrafficPolicy": policy,
            "healthCheckNodePort": hc,
            "ports": [
                {"name": "http", "port": 80, "nodePort": node_port},
                {"name": "https", "port": 443, "nodePort": node_port + 1}
            ]
        }
    }))
    .unwrap()
}

fn ep(ip: &str, node: &str) -> Value {
    json!({"addresses": [ip], "nodeName": node})
}

fn terminating(ip: &str, node: &str) -> Value {
    json!({"addresses": [ip], "nodeName": node,
           "conditions": {"ready": false, "serving": true, "terminating": true}})
}

/// A slice of Service `ns/SVC` for port `port_name` → `target`.
fn slice(
    svc: &str,
    name: &str,
    port_name: &str,
    target: u16,
    endpoints: Value,
) -> Event<api::EndpointSlice> {
    let family = match endpoints[0]["addresses"][0].as_str() {
        Some(ip) if ip.contains(':') => "IPv6",
        _ => "IPv4",
    };
    Event::Apply(
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "ns",
                         "labels": {"kubernetes.io/service-name": svc}},
            "addressType": family,
            "ports": [{"name": port_name, "port": target}],
            "endpoints": endpoints
        }))
        .unwrap(),
    )
}

fn checks(state: &mut State) -> BTreeMap<u16, ServiceHealth> {
    let _ = state.take_changes();
    health_checks(state.desired())
}

fn health(name: &str, n: usize) -> ServiceHealth {
    ServiceHealth {
        service: ServiceName::new("ns", name),
        local_endpoints: n,
    }
}

#[test]
fn cluster_policy_services_have_no_health_check() {
    let mut s = state();
    // The API clears healthCheckNodePort under eTP=Cluster; validation ignores it if set.
    s.apply(Event::Apply(lb("web", "Cluster", 32000, &["10.96.0.1"])))
        .unwrap();
    s.apply(slice(
        "web",
        "web-1",
        "http",
        8080,
        json!([ep("10.0.0.1", "here")]),
    ))
    .unwrap();
    assert!(checks(&mut s).is_empty());
}

#[test]
fn local_ready_endpoints_are_counted_by_ip_across_ports() {
    let mut s = state();
    s.apply(Event::Apply(lb("web", "Local", 32000, &["10.96.0.1"])))
        .unwrap();
    // 10.0.0.1 serves both ports: one endpoint. 10.0.0.2 only https. 10.0.0.3 is remote.
    s.apply(slice(
        "web",
        "web-http",
        "http",
        8080,
        json!([ep("10.0.0.1", "here"), ep("10.0.0.3", "there")]),
    ))
    .unwrap();
    s.apply(slice(
        "web",
        "web-https",
        "https",
        8443,
        json!([ep("10.0.0.1", "here"), ep("10.0.0.2", "here")]),
    ))
    .unwrap();
    assert_eq!(checks(&mut s), BTreeMap::from([(32000, health("web", 2))]));
}

#[test]
fn no_local_ready_endpoint_reports_zero_and_503() {
    let mut s = state();
    s.apply(Event::Apply(lb("web", "Local", 32000, &["10.96.0.1"])))
        .unwrap();
    // A remote ready endpoint and a local terminating one: neither counts (KEP-1669).
    s.apply(slice(
        "web",
        "web-1",
        "http",
        8080,
        json!([ep("10.0.0.3", "there"), terminating("10.0.0.1", "here")]),
    ))
    .unwrap();
    let got = checks(&mut s);
    assert_eq!(got, BTreeMap::from([(32000, health("web", 0))]));
    assert_eq!(got[&32000].response(true).status, 503);

    // No slice at all: the port is still served, with zero.
    let mut s = state();
    s.apply(Event::Apply(lb("web", "Local", 32000, &["10.96.0.1"])))
        .unwrap();
    assert_eq!(checks(&mut s), BTreeMap::from([(32000, health("web", 0))]));
}

#[test]
fn dual_stack_pods_count_once() {
    let mut s = state();
    s.apply(Event::Apply(lb(
        "web",
        "Local",
        32000,
        &["10.96.0.1", "fd00::1"],
    )))
    .unwrap();
    s.apply(slice(
        "web",
        "web-v4",
        "http",
        8080,
        json!([ep("10.0.0.1", "here"), ep("10.0.0.2", "here")]),
    ))
    .unwrap();
    s.apply(slice(
        "web",
        "web-v6",
        "http",
        8080,
        json!([ep("fd00:1::1", "here"), ep("fd00:1::2", "here")]),
    ))
    .unwrap();
    // Two pods with an address of each family: two, not four.
    assert_eq!(checks(&mut s), BTreeMap::from([(32000, health("web", 2))]));
    // The families disagree (a single-stack pod): the larger count.
    s.apply(slice(
        "web",
        "web-v6",
        "http",
        8080,
        json!([
            ep("fd00:1::1", "here"),
            ep("fd00:1::2", "here"),
            ep("fd00:1::3", "here")
        ]),
    ))
    .unwrap();
    assert_eq!(checks(&mut s), BTreeMap::from([(32000, health("web", 3))]));
}

#[test]
fn services_get_their_own_ports_and_conflicts_are_reported() {
    let mut s = state();
    s.apply(Event::Apply(lb("a", "Local", 32000, &["10.96.0.1"])))
        .unwrap();
    s.apply(Event::Apply(lb("b", "Local", 32001, &["10.96.0.2"])))
        .unwrap();
    s.apply(slice(
        "b",
        "b-1",
        "http",
        8080,
        json!([ep("10.0.0.9", "here")]),
    ))
    .unwrap();
    assert_eq!(
        checks(&mut s),
        BTreeMap::from([(32000, health("a", 0)), (32001, health("b", 1))])
    );

    // "c" claims a's port (possible only with hand-written objects): the first name keeps it.
    s.apply(Event::Apply(lb("c", "Local", 32000, &["10.96.0.3"])))
        .unwrap();
    let _ = s.take_changes();
    let plan = plan(s.desired());
    assert_eq!(plan.ports[&32000], health("a", 0));
    assert_eq!(
        plan.conflicts,
        vec![PortConflict {
            port: 32000,
            service: ServiceName::new("ns", "c"),
            owner: ServiceName::new("ns", "a"),
        }]
    );
}

#[test]
fn a_service_of_an_unhandled_family_is_not_checked() {
    let mut s = State::new(ProxyConfig {
        node_name: "here".into(),
        ip_families: vec![crate::model::IpFamily::IPv4],
        ..ProxyConfig::default()
    })
    .unwrap();
    s.apply(Event::Apply(lb("web", "Local", 32000, &["fd00::1"])))
        .unwrap();
    assert!(checks(&mut s).is_empty());
}

#[test]
fn response_is_kube_proxys() {
    let ok = health("web", 3).response(true);
    assert_eq!(ok.status, 200);
    assert_eq!(ok.reason(), "OK");
    assert_eq!(
        ok.headers,
        vec![
            ("Content-Type", "application/json".to_string()),
            ("X-Content-Type-Options", "nosniff".to_string()),
            ("X-Load-Balancing-Endpoint-Weight", "3".to_string()),
        ]
    );
    assert_eq!(
        ok.body,
        r#"{"service":{"namespace":"ns","name":"web"},"localEndpoints":3,"serviceProxyHealthy":true}"#
    );
    let body: Value = serde_json::from_str(&ok.body).unwrap();
    assert_eq!(body["service"]["name"], "web");

    let none = health("web", 0).response(true);
    assert_eq!((none.status, none.reason()), (503, "Service Unavailable"));
    let unhealthy = health("web", 3).response(false);
    assert_eq!(unhealthy.status, 503);
    assert!(
        unhealthy
            .body
            .ends_with(r#""localEndpoints":3,"serviceProxyHealthy":false}"#)
    );

    let escaped = ServiceHealth {
        service: ServiceName::new("n\"s", "a\\b\n"),
        local_endpoints: 1,
    };
    let body: Value = serde_json::from_str(&escaped.response(true).body).unwrap();
    assert_eq!(body["service"]["namespace"], "n\"s");
    assert_eq!(body["service"]["name"], "a\\b\n");
}

#[test]
fn http_bytes() {
    let r = health("web", 1).response(true);
    let full = String::from_utf8(r.to_http(false)).unwrap();
    assert!(full.starts_with("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"));
    assert!(full.contains(&format!("\r\nContent-Length: {}\r\n", r.body.len())));
    assert!(full.contains("\r\nConnection: close\r\n\r\n"));
    assert!(full.ends_with(&r.body));
    let head = String::from_utf8(r.to_http(true)).unwrap();
    assert!(head.ends_with("\r\n\r\n"));
    assert!(head.contains(&format!("Content-Length: {}", r.body.len())));
    let bad = String::from_utf8(HealthResponse::error(400).to_http(false)).unwrap();
    assert!(bad.starts_with("HTTP/1.1 400 Bad Request\r\n"));
    assert!(bad.ends_with("\r\n\r\n400 Bad Request"));
}

#[test]
fn request_heads() {
    use RequestHead::*;
    let get = Complete { head_only: false };
    assert_eq!(parse_request_head(b""), Incomplete);
    assert_eq!(
        parse_request_head(b"GET / HTTP/1.1\r\nHost: x\r\n"),
        Incomplete
    );
    assert_eq!(
        parse_request_head(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
        get
    );
    assert_eq!(parse_request_head(b"GET /healthz HTTP/1.0\n\n"), get);
    assert_eq!(parse_request_head(b"\r\nPOST /x?y HTTP/1.1\r\n\r\n"), get);
    assert_eq!(
        parse_request_head(b"HEAD / HTTP/1.1\r\n\r\n"),
        Complete { head_only: true }
    );
    for bad in [
        &b"GARBAGE\r\n\r\n"[..],
        b"GET / HTTP/2.0\r\n\r\n",
        b"GET  / HTTP/1.1\r\n\r\n",
        b"G(T / HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1\r\nno colon\r\n\r\n",
        b"GET / HTTP/1.1\r\n: empty name\r\n\r\n",
        b"\xff\xfe / HTTP/1.1\r\n\r\n",
    ] {
        assert_eq!(
            parse_request_head(bad),
            Bad,
            "{:?}",
            String::from_utf8_lossy(bad)
        );
    }
}

proptest::proptest! {
    #[test]
    fn parsing_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..256)) {
        let _ = parse_request_head(&bytes);
    }
}
