use std::net::SocketAddr;

use serde_json::{Value, json};

use super::*;
use crate::decide::{Packet, Verdict, decide};
use crate::model::{IpFamily, Problem, Protocol, api};

fn service(v: Value) -> api::Service {
    serde_json::from_value(v).unwrap()
}

fn slice(v: Value) -> api::EndpointSlice {
    serde_json::from_value(v).unwrap()
}

fn node(name: &str, zone: &str) -> api::Node {
    serde_json::from_value(
        json!({"metadata": {"name": name, "labels": {"topology.kubernetes.io/zone": zone}}}),
    )
    .unwrap()
}

fn svc(name: &str, ip: &str, port: u16) -> api::Service {
    service(json!({
        "metadata": {"name": name, "namespace": "ns"},
        "spec": {"clusterIP": ip, "ports": [{"name": "p", "port": port, "protocol": "UDP"}]}
    }))
}

fn eps(svc: &str, slice_name: &str, ips: &[&str]) -> api::EndpointSlice {
    let endpoints: Vec<Value> = ips
        .iter()
        .map(|ip| json!({"addresses": [ip], "nodeName": "n2"}))
        .collect();
    slice(json!({
        "metadata": {"name": slice_name, "namespace": "ns", "labels": {"kubernetes.io/service-name": svc}},
        "addressType": "IPv4",
        "ports": [{"name": "p", "port": 8080, "protocol": "UDP"}],
        "endpoints": endpoints
    }))
}

fn state() -> State {
    State::new(ProxyConfig {
        node_name: "n1".into(),
        node_ips: vec!["192.168.1.1".parse().unwrap()],
        cluster_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
        ..ProxyConfig::default()
    })
    .unwrap()
}

fn endpoints_of(state: &State, name: &str) -> Vec<SocketAddr> {
    let port = state
        .desired()
        .ports()
        .find(|p| p.name.service.name == name)
        .expect("service port");
    port.family(IpFamily::IPv4).unwrap().all_reachable.to_vec()
}

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

#[test]
fn first_sync_lists_everything_then_nothing() {
    let mut st = state();
    st.apply(Event::Apply(svc("a", "10.96.0.1", 53))).unwrap();
    st.apply(Event::Apply(svc("b", "10.96.0.2", 53))).unwrap();
    st.apply(Event::Apply(eps("a", "a-1", &["10.244.1.1"])))
        .unwrap();
    let cs = st.take_changes();
    assert_eq!(cs.len(), 2);
    assert_eq!(cs.upserts().count(), 2);
    assert!(cs.changes()[0].name < cs.changes()[1].name, "key order");
    assert_eq!(endpoints_of(&st, "a"), vec![sa("10.244.1.1:8080")]);
    assert!(st.take_changes().is_empty());
}

#[test]
fn changed_twice_is_one_change_and_changed_back_is_none() {
    let mut st = state();
    st.apply(Event::Apply(svc("a", "10.96.0.1", 53))).unwrap();
    st.apply(Event::Apply(eps("a", "a-1", &["10.244.1.1"])))
        .unwrap();
    st.take_changes();

    st.apply(Event::Apply(eps("a", "a-1", &["10.244.1.2"])))
        .unwrap();
    st.apply(Event::Apply(eps("a", "a-1", &["10.244.1.3"])))
        .unwrap();
    let cs = st.take_changes();
    assert_eq!(cs.len(), 1);
    let change = &cs.changes()[0];
    let before = change
        .previous
        .as_ref()
        .unwrap()
        .family(IpFamily::IPv4)
        .unwrap();
    assert_eq!(*before.all_reachable, [sa("10.244.1.1:8080")]);
    assert_eq!(endpoints_of(&st, "a"), vec![sa("10.244.1.3:8080")]);
    // UDP endpoints removed: conntrack cleanup needs them.
    assert_eq!(cs.stale_udp_endpoints(IpFamily::IPv4).len(), 1);

    st.apply(Event::Apply(eps("a", "a-1", &["10.244.1.9"])))
        .unwrap();
    st.apply(Event::Apply(eps("a", "a-1", &["10.244.1.3"])))
        .unwrap();
    assert!(st.take_changes().is_empty(), "changed and changed back");

    // A service deleted and re-created identically is no change either.
    st.apply(Event::Delete(svc("a", "10.96.0.1", 53))).unwrap();
    st.apply(Event::Apply(svc("a", "10.96.0.1", 53))).unwrap();
    assert!(st.take_changes().is_empty());
}

#[test]
fn bad_update_keeps_previous_version_and_others_unaffected() {
    let mut st = state();
    st.apply(Event::Apply(svc("a", "10.96.0.1", 53))).unwrap();
    st.apply(Event::Apply(eps("a", "a-1", &["10.244.1.1"])))
        .unwrap();
    st.take_changes();

    let mut bad = svc("a", "10.96.0.1", 53);
    bad.spec.ports[0].port = Some(0);
    let err = st.apply(Event::Apply(bad)).unwrap_err();
    assert_eq!(err.object, "ns/a");
    assert_eq!(err.field, "spec.ports[0].port");

    let bad_slice = eps("a", "a-1", &["10.244.1.300"]);
    let err = st.apply(Event::Apply(bad_slice)).unwrap_err();
    assert_eq!(err.field, "endpoints[0].addresses[0]");

    st.apply(Event::Apply(svc("b", "10.96.0.2", 53))).unwrap();
    let cs = st.take_changes();
    assert_eq!(cs.len(), 1, "only b is new");
    assert_eq!(endpoints_of(&st, "a"), vec![sa("10.244.1.1:8080")]);
}

#[test]
fn conflicting_frontend_is_rejected_until_released() {
    let mut st = state();
    st.apply(Event::Apply(svc("a", "10.96.0.1", 53))).unwrap();
    let err = st
        .apply(Event::Apply(svc("b", "10.96.0.1", 53)))
        .unwrap_err();
    assert!(matches!(err.problem, Problem::Conflict { .. }), "{err}");
    assert_eq!(err.field, "spec.clusterIPs[0]");
    let frontend = Frontend::Address {
        ip: "10.96.0.1".parse().unwrap(),
        port: 53,
        protocol: Protocol::Udp,
    };
    assert_eq!(
        st.frontend_owner(&frontend),
        Some(&ServiceName::new("ns", "a"))
    );
    // Same address on another port is fine.
    st.apply(Event::Apply(svc("c", "10.96.0.1", 54))).unwrap();
    // Once a releases it, b may take it.
    st.apply(Event::Delete(svc("a", "10.96.0.1", 53))).unwrap();
    st.apply(Event::Apply(svc("b", "10.96.0.1", 53))).unwrap();
    let cs = st.take_changes();
    let names: Vec<_> = cs.upserts().map(|p| p.name.service.name.clone()).collect();
    assert_eq!(names, ["b", "c"]);
}

#[test]
fn deletion_carries_what_was_programmed() {
    let mut st = state();
    st.apply(Event::Apply(svc("a", "10.96.0.1", 53))).unwrap();
    st.apply(Event::Apply(eps("a", "a-1", &["10.244.1.1"])))
        .unwrap();
    st.take_changes();
    st.apply(Event::Delete(svc("a", "10.96.0.1", 53))).unwrap();
    let cs = st.take_changes();
    let removed: Vec<_> = cs.removals().collect();
    assert_eq!(removed.len(), 1);
    assert_eq!(removed[0].name.protocol, Protocol::Udp);
    assert_eq!(
        cs.stale_udp_endpoints(IpFamily::IPv4),
        vec![(removed[0].name.clone(), sa("10.244.1.1:8080"))]
    );
    assert!(st.desired().is_empty());
}

#[test]
fn slices_merge_and_move_between_services() {
    let mut st = state();
    st.apply(Event::Apply(svc("a", "10.96.0.1", 53))).unwrap();
    st.apply(Event::Apply(svc("b", "10.96.0.2", 53))).unwrap();
    st.apply(Event::Apply(eps("a", "s1", &["10.244.1.1"])))
        .unwrap();
    st.apply(Event::Apply(eps("a", "s2", &["10.244.1.2", "10.244.1.1"])))
        .unwrap();
    st.take_changes();
    assert_eq!(
        endpoints_of(&st, "a"),
        vec![sa("10.244.1.1:8080"), sa("10.244.1.2:8080")]
    );

    // s2 now claims to belong to b.
    st.apply(Event::Apply(eps("b", "s2", &["10.244.1.2"])))
        .unwrap();
    let cs = st.take_changes();
    assert_eq!(cs.len(), 2);
    assert_eq!(endpoints_of(&st, "a"), vec![sa("10.244.1.1:8080")]);
    assert_eq!(endpoints_of(&st, "b"), vec![sa("10.244.1.2:8080")]);
}

#[test]
fn relist_prunes_objects_not_listed_again() {
    let mut st = state();
    for e in [
        Event::Init,
        Event::InitApply(svc("a", "10.96.0.1", 53)),
        Event::InitApply(svc("b", "10.96.0.2", 53)),
        Event::InitDone,
    ] {
        st.apply(e).unwrap();
    }
    for e in [
        Event::Init,
        Event::InitApply(eps("a", "a-1", &["10.244.1.1"])),
        Event::InitDone,
    ] {
        st.apply(e).unwrap();
    }
    assert!(st.is_initialized());
    assert_eq!(st.take_changes().len(), 2);

    // Re-list: b is gone, a's slice is gone; an invalid relisted object keeps its old version.
    let mut bad_a = svc("a", "10.96.0.1", 53);
    bad_a.spec.cluster_ip = Some("not-an-ip".into());
    st.apply(Event::<api::Service>::Init).unwrap();
    assert!(st.apply(Event::InitApply(bad_a)).is_err());
    st.apply(Event::<api::Service>::InitDone).unwrap();
    st.apply(Event::<api::EndpointSlice>::Init).unwrap();
    st.apply(Event::<api::EndpointSlice>::InitDone).unwrap();
    let cs = st.take_changes();
    assert_eq!(cs.removals().count(), 1, "b removed");
    assert_eq!(cs.upserts().count(), 1, "a lost its endpoints");
    assert!(endpoints_of(&st, "a").is_empty());
}

#[test]
fn other_proxy_and_headless_slices_are_ignored() {
    let mut st = state();
    let mut mine = svc("a", "10.96.0.1", 53);
    st.apply(Event::Apply(mine.clone())).unwrap();
    st.take_changes();
    mine.metadata.labels.insert(
        crate::model::LABEL_SERVICE_PROXY_NAME.into(),
        "other".into(),
    );
    st.apply(Event::Apply(mine)).unwrap();
    assert_eq!(st.take_changes().removals().count(), 1);

    st.apply(Event::Apply(svc("b", "10.96.0.2", 53))).unwrap();
    let mut headless = eps("b", "b-1", &["10.244.1.1"]);
    headless
        .metadata
        .labels
        .insert(crate::model::LABEL_HEADLESS.into(), String::new());
    st.apply(Event::Apply(headless)).unwrap();
    st.take_changes();
    assert!(endpoints_of(&st, "b").is_empty());
}

#[test]
fn own_node_zone_change_re_resolves_hinted_services() {
    let mut st = state();
    st.apply(Event::Apply(node("n1", "z1"))).unwrap();
    st.apply(Event::Apply(svc("a", "10.96.0.1", 53))).unwrap();
    st.apply(Event::Apply(svc("b", "10.96.0.2", 53))).unwrap();
    st.apply(Event::Apply(slice(json!({
        "metadata": {"name": "a-1", "namespace": "ns", "labels": {"kubernetes.io/service-name": "a"}},
        "addressType": "IPv4",
        "ports": [{"name": "p", "port": 8080, "protocol": "UDP"}],
        "endpoints": [
            {"addresses": ["10.244.1.1"], "zone": "z1", "hints": {"forZones": [{"name": "z1"}]}},
            {"addresses": ["10.244.2.1"], "zone": "z2", "hints": {"forZones": [{"name": "z2"}]}}
        ]
    }))))
    .unwrap();
    st.take_changes();
    assert_eq!(
        st.desired()
            .ports()
            .next()
            .unwrap()
            .family(IpFamily::IPv4)
            .unwrap()
            .cluster(),
        [sa("10.244.1.1:8080")]
    );
    st.apply(Event::Apply(node("n1", "z2"))).unwrap();
    let cs = st.take_changes();
    assert_eq!(cs.len(), 1, "only the hinted service changes");
    assert_eq!(
        st.desired()
            .ports()
            .next()
            .unwrap()
            .family(IpFamily::IPv4)
            .unwrap()
            .cluster(),
        [sa("10.244.2.1:8080")]
    );
    // Another node's labels do not matter without topologyKeys.
    st.apply(Event::Apply(node("n9", "z1"))).unwrap();
    assert!(st.take_changes().is_empty());
}

#[test]
fn settings_change_is_flagged_and_re_resolves() {
    let mut st = state();
    st.apply(Event::Apply(svc("a", "10.96.0.1", 53))).unwrap();
    st.take_changes();
    let mut cfg = st.config().clone();
    cfg.masquerade_all = true;
    st.set_config(cfg).unwrap();
    let cs = st.take_changes();
    assert!(cs.config_changed());
    assert!(!cs.is_empty());
    assert!(st.desired().config().masquerade_all);
    // Changed and changed back before the sync: nothing to do.
    let original = st.config().clone();
    let mut other = original.clone();
    other.masquerade_bit = 5;
    st.set_config(other).unwrap();
    st.set_config(original).unwrap();
    assert!(st.take_changes().is_empty());
    let mut bad = st.config().clone();
    bad.masquerade_bit = 40;
    assert_eq!(st.set_config(bad).unwrap_err().field, "masqueradeBit");
}

#[test]
fn decisions_follow_the_state() {
    let mut st = state();
    st.apply(Event::Apply(svc("a", "10.96.0.1", 53))).unwrap();
    st.take_changes();
    let p: Packet = "10.244.3.3 10.96.0.1:53/udp".parse().unwrap();
    assert_eq!(decide(st.desired(), &p).verdict, Verdict::Reject);
    st.apply(Event::Apply(eps("a", "a-1", &["10.244.1.1", "10.244.1.2"])))
        .unwrap();
    st.take_changes();
    let d = decide(st.desired(), &p);
    let Verdict::Dnat(eps) = &d.verdict else {
        panic!("expected DNAT, got {d:?}")
    };
    assert_eq!(eps.len(), 2);
    assert!(!d.masquerade, "pod source is not masqueraded");
    let from_node: Packet = "192.168.1.1 10.96.0.1:53/udp".parse().unwrap();
    assert!(decide(st.desired(), &from_node).masquerade);
    let wrong_proto: Packet = "10.244.3.3 10.96.0.1:53/tcp".parse().unwrap();
    assert_eq!(
        decide(st.desired(), &wrong_proto).verdict,
        Verdict::Reject,
        "undefined port on a ClusterIP"
    );
}

#[test]
fn going_from_no_endpoint_to_some_is_flagged_for_conntrack_flush() {
    let mut st = state();
    st.apply(Event::Apply(svc("a", "10.96.0.1", 53))).unwrap();
    st.take_changes();
    st.apply(Event::Apply(eps("a", "a-1", &["10.244.1.1"])))
        .unwrap();
    let cs = st.take_changes();
    assert!(cs.changes()[0].became_active(IpFamily::IPv4));
    assert!(
        !cs.changes()[0].became_active(IpFamily::IPv6),
        "no IPv6 family"
    );
    assert!(cs.stale_udp_endpoints(IpFamily::IPv4).is_empty());
}
