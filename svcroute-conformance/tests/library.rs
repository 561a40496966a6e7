//! Tests of the suite itself: flow tables, the runner's reporting, the memory kernel and
//! dataplane, and the scenario catalogue.

use std::net::SocketAddr;
use std::sync::Arc;

use svcroute_conformance::flow::{
    Comparability, Expect, FlowCase, FlowFailure, Scenario, check_flows, comparability,
    parse_flows, run_flows, runtime,
};
use svcroute_conformance::memory::kernel::{Key, Op, SetName, Table, Value};
use svcroute_conformance::memory::{MemoryBackend, MemoryDataplane, MemoryKernel};
use svcroute_conformance::objects::{ServiceBuilder, SliceBuilder, ep};
use svcroute_conformance::properties::{Backend, run_scenario};
use svcroute_conformance::scenarios;
use svcroute_core::dataplane::Capabilities;
use svcroute_core::model::{IpFamily, Protocol, ProxyConfig};
use svcroute_core::{Dataplane, Decision, Desired, Packet, State, Verdict};

fn sa(s: &str) -> SocketAddr {
    s.parse().expect("endpoint literal")
}

fn packet(s: &str) -> Packet {
    s.parse().expect("packet literal")
}

#[test]
fn flow_tables_parse_every_field() {
    let cases = parse_flows(
        "
        # comment
        a | 10.0.0.1 10.96.0.1:80      | 10.1.0.1:8080, 10.1.0.2:8080 | masq affinity=60
        b | fd00::1 [fd00::2]:53/udp    | [fd00::3]:53 |
        c | 10.0.0.1 10.96.0.1:81/sctp | DROP
        d | 10.0.0.1 10.96.0.1:82      | ACCEPT |
        e | 10.0.0.1 10.96.0.1:83      | NO-MATCH |
        ",
    )
    .unwrap();
    assert_eq!(cases.len(), 5);
    assert_eq!(cases[0].name, "a");
    assert!(cases[0].masquerade);
    assert_eq!(cases[0].affinity_timeout_seconds, Some(60));
    assert_eq!(
        cases[0].expect,
        Expect::Endpoints(vec![sa("10.1.0.1:8080"), sa("10.1.0.2:8080")])
    );
    assert_eq!(cases[1].packet.protocol, Protocol::Udp);
    assert_eq!(cases[1].expect, Expect::Endpoints(vec![sa("[fd00::3]:53")]));
    assert_eq!(cases[2].expect, Expect::Drop);
    assert_eq!(cases[2].packet.protocol, Protocol::Sctp);
    assert_eq!(cases[3].expect, Expect::Accept);
    assert_eq!(cases[4].expect, Expect::NoMatch);
}

#[test]
fn flow_table_errors_name_the_line() {
    let bad = [
        ("x | 10.0.0.1 10.96.0.1:80", 1),
        ("\n\nx | 10.0.0.1 10.96.0.1:80 | REJECT | masq", 3),
        ("x | 10.0.0.1 10.96.0.1:80 | 10.1.0.1:8080 | sticky", 1),
        ("x | 10.0.0.1 [fd00::1]:80 | REJECT |", 1),
        ("x | 10.0.0.1 10.96.0.1:80 | 10.1.0.1 |", 1),
        (" | 10.0.0.1 10.96.0.1:80 | REJECT |", 1),
        ("x | 10.0.0.1 10.96.0.1:80 | REJECT | affinity=soon", 1),
    ];
    for (table, line) in bad {
        let err = parse_flows(table).unwrap_err();
        assert_eq!(err.line, line, "{table:?}: {err}");
        assert!(
            err.to_string()
                .starts_with(&format!("flow table line {line}:"))
        );
    }
}

#[test]
fn expected_decisions_are_uniform_and_masquerade_the_hairpin_branch() {
    let case = FlowCase::new(
        "hairpin",
        packet("10.244.0.9 10.96.0.1:80"),
        Expect::Endpoints(vec![
            sa("10.244.1.1:80"),
            sa("10.244.0.9:80"),
            sa("10.244.2.1:80"),
        ]),
    );
    let d = case.expected_decision();
    let Verdict::Dnat(eps) = &d.verdict else {
        panic!("not DNAT: {d:?}")
    };
    assert_eq!(eps.len(), 3);
    assert!(eps.windows(2).all(|w| w[0].endpoint < w[1].endpoint));
    for e in eps {
        assert!((e.probability - 1.0 / 3.0).abs() < 1e-9);
        assert_eq!(e.masquerade, e.endpoint == sa("10.244.0.9:80"));
    }
    assert!(
        d.masquerade,
        "a masqueraded branch makes the decision masqueraded"
    );
    assert_eq!(d.affinity_timeout_seconds, None);

    let reject = FlowCase::new("r", packet("10.0.0.1 10.96.0.1:80"), Expect::Reject);
    assert_eq!(
        reject.expected_decision(),
        Decision::simple(Verdict::Reject)
    );
    assert!(reject.clone().with_masquerade(true).validate().is_err());
    assert!(reject.with_affinity(5).validate().is_err());
}

fn one_service() -> Scenario {
    Scenario::new("one", scenarios::standard_config())
        .object(
            ServiceBuilder::new("default", "web")
                .cluster_ip("10.96.0.10")
                .port("http", 80, "TCP")
                .apply(),
        )
        .object(
            SliceBuilder::ipv4("default", "web-1", "web")
                .port("http", 8080, "TCP")
                .endpoint(ep("10.244.1.1"))
                .apply(),
        )
}

#[test]
fn every_mismatch_is_reported_by_name() {
    let scenario = one_service()
        .flows(
            "
            right                | 10.244.0.5 10.96.0.10:80 | 10.244.1.1:8080 |
            wrong masquerade     | 10.244.0.5 10.96.0.10:80 | 10.244.1.1:8080 | masq
            wrong verdict        | 10.244.0.5 10.96.0.10:81 | DROP |
            ",
        )
        .unwrap();
    let mut dp = MemoryDataplane::new();
    let err = run_flows(&mut dp, &scenario).unwrap_err();
    let FlowFailure::Mismatches {
        checked,
        mismatches,
        ..
    } = &err
    else {
        panic!("expected mismatches, got {err}")
    };
    assert_eq!(*checked, 3);
    let names: Vec<&str> = mismatches.iter().map(|m| m.case.as_str()).collect();
    assert_eq!(names, ["wrong masquerade", "wrong verdict"]);
    for m in mismatches {
        assert!(!m.reference_matches());
        assert!(!m.backend_matches());
    }
    let text = err.to_string();
    assert!(text.contains("2 of 3 cases disagree"), "{text}");
    assert!(text.contains("\"wrong verdict\""), "{text}");
    assert!(text.contains("reference: REJECT"), "{text}");
}

#[test]
fn rejected_objects_fail_the_setup() {
    let scenario = Scenario::new("bad", scenarios::standard_config()).object(
        ServiceBuilder::new("default", "web")
            .cluster_ip("10.96.0.300")
            .port("http", 80, "TCP")
            .apply(),
    );
    let err = run_flows(&mut MemoryDataplane::new(), &scenario).unwrap_err();
    assert!(matches!(err, FlowFailure::Setup { .. }), "{err}");
    assert!(err.to_string().contains("spec.clusterIP"), "{err}");
}

#[test]
fn comparability_follows_capabilities() {
    let desired = one_service().desired().unwrap();
    let mut caps = MemoryDataplane::new().capabilities();
    let sctp = packet("10.244.0.5 10.96.0.10:80/sctp");
    let v6 = packet("fd00::5 [fd00:96::1]:80");
    assert_eq!(
        comparability(&caps, &desired, &sctp),
        Comparability::Compare {
            ignore_affinity: false
        }
    );
    caps.protocols = vec![Protocol::Tcp, Protocol::Udp];
    caps.families = vec![IpFamily::IPv4];
    caps.session_affinity = false;
    assert_eq!(comparability(&caps, &desired, &sctp), Comparability::Skip);
    assert_eq!(comparability(&caps, &desired, &v6), Comparability::Skip);
    assert_eq!(
        comparability(&caps, &desired, &packet("10.244.0.5 10.96.0.10:80")),
        Comparability::Compare {
            ignore_affinity: true
        }
    );
}

/// A backend that traces nothing: the runner must blame it, not the reference.
struct Blind;

#[async_trait::async_trait]
impl Dataplane for Blind {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            name: "blind",
            families: IpFamily::ALL.to_vec(),
            protocols: Protocol::ALL.to_vec(),
            session_affinity: true,
            source_ranges: true,
            incremental: false,
        }
    }
    async fn apply(
        &mut self,
        _: &Desired,
        _: &svcroute_core::ChangeSet,
    ) -> Result<svcroute_core::dataplane::ApplyReport, svcroute_core::DataplaneError> {
        Ok(Default::default())
    }
    async fn sync_full(
        &mut self,
        _: &Desired,
    ) -> Result<svcroute_core::dataplane::ApplyReport, svcroute_core::DataplaneError> {
        Ok(Default::default())
    }
    async fn cleanup(&mut self) -> Result<(), svcroute_core::DataplaneError> {
        Ok(())
    }
    fn trace(&self, _: &Packet) -> Result<Decision, svcroute_core::TraceError> {
        Ok(Decision::simple(Verdict::NoMatch))
    }
}

#[test]
fn a_wrong_backend_is_blamed_alone() {
    let scenario = one_service()
        .flows("pod | 10.244.0.5 10.96.0.10:80 | 10.244.1.1:8080 |")
        .unwrap();
    let desired = scenario.desired().unwrap();
    let err = check_flows("one", &desired, Some(&Blind), &scenario.flows).unwrap_err();
    let FlowFailure::Mismatches { mismatches, .. } = err else {
        panic!("expected mismatches")
    };
    assert_eq!(mismatches.len(), 1);
    assert!(mismatches[0].reference_matches());
    assert!(!mismatches[0].backend_matches());
    // Without a backend only the reference is checked.
    assert_eq!(
        check_flows("one", &desired, None, &scenario.flows).unwrap(),
        1
    );
}

#[test]
fn the_catalogue_is_consistent() {
    let names: Vec<&str> = scenarios::ALL.iter().map(|(n, _)| *n).collect();
    assert_eq!(names, scenarios::NAMES);
    let all = scenarios::all().unwrap();
    assert_eq!(all.len(), scenarios::NAMES.len());
    for (s, name) in all.iter().zip(scenarios::NAMES) {
        assert_eq!(s.name, *name);
        assert!(!s.description.is_empty(), "{name} has no description");
        assert!(!s.flows.is_empty(), "{name} has no flows");
        let mut case_names: Vec<&str> = s.flows.iter().map(|c| c.name.as_str()).collect();
        case_names.sort_unstable();
        let before = case_names.len();
        case_names.dedup();
        assert_eq!(before, case_names.len(), "{name} repeats a case name");
        // Every object is accepted by the core.
        s.state().unwrap();
    }
    assert!(scenarios::by_name("hairpin").unwrap().is_ok());
    assert!(scenarios::by_name("nope").is_none());
}

// ---------------------------------------------------------------------------------------------
// Memory kernel.

fn table_with(key: Key, value: Value) -> Table {
    Table::from([(key, value)])
}

#[test]
fn kernel_transactions_are_atomic_and_counted() {
    let k = MemoryKernel::new();
    let key = Key::Chain("c".to_string());
    k.commit(&[Op::ReplaceTable {
        table: "t".to_string(),
        contents: table_with(key.clone(), Value::Present),
    }])
    .unwrap();
    // The second op fails: the first must not stick.
    let err = k
        .commit(&[
            Op::Put {
                table: "t".to_string(),
                key: Key::Chain("d".to_string()),
                value: Value::Present,
            },
            Op::Delete {
                table: "t".to_string(),
                key: Key::Chain("missing".to_string()),
            },
        ])
        .unwrap_err();
    assert!(err.to_string().contains("no such element"), "{err}");
    assert_eq!(k.table("t").unwrap().len(), 1);
    assert_eq!(k.writes(), 2);

    k.fail_writes_after(1, 1);
    let put = |name: &str| Op::Put {
        table: "t".to_string(),
        key: Key::Chain(name.to_string()),
        value: Value::Present,
    };
    k.commit(&[put("e")]).unwrap();
    assert!(k.commit(&[put("f")]).is_err());
    k.commit(&[put("g")]).unwrap();
    let t = k.table("t").unwrap();
    assert!(t.contains_key(&Key::Chain("e".to_string())));
    assert!(!t.contains_key(&Key::Chain("f".to_string())));
    assert_eq!(k.writes(), 5);
    assert!(
        k.commit(&[Op::DeleteTable {
            table: "nope".to_string()
        }])
        .is_err()
    );
}

// ---------------------------------------------------------------------------------------------
// Memory dataplane.

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    runtime().expect("tokio runtime").block_on(f)
}

fn state_with(objects: Vec<svcroute_core::watch::WatchEvent>) -> State {
    let mut state = State::new(scenarios::standard_config()).expect("valid settings");
    for o in objects {
        state.apply(o).expect("valid object");
    }
    state
}

fn two_family_objects() -> Vec<svcroute_core::watch::WatchEvent> {
    vec![
        ServiceBuilder::new("default", "a")
            .cluster_ips(&["10.96.0.1", "fd00:96::1"])
            .port("http", 80, "TCP")
            .apply(),
        SliceBuilder::ipv4("default", "a-4", "a")
            .port("http", 8080, "TCP")
            .endpoint(ep("10.244.1.1"))
            .apply(),
        SliceBuilder::ipv6("default", "a-6", "a")
            .port("http", 8080, "TCP")
            .endpoint(ep("fd00:10:244:1::1"))
            .apply(),
        ServiceBuilder::new("default", "b")
            .cluster_ip("10.96.0.2")
            .port("http", 80, "TCP")
            .apply(),
    ]
}

#[test]
fn apply_writes_only_the_changed_family_and_elements() {
    let mut state = state_with(two_family_objects());
    state.take_changes();
    let mut dp = MemoryDataplane::new();
    block_on(dp.sync_full(state.desired())).unwrap();
    let writes = dp.kernel().writes();
    let v6_before = dp.kernel().table("svcroute-ip6").unwrap();
    let elements_before = dp.element_count();

    // One more IPv4 endpoint for service a.
    state
        .apply(
            SliceBuilder::ipv4("default", "a-4", "a")
                .port("http", 8080, "TCP")
                .endpoint(ep("10.244.1.1"))
                .endpoint(ep("10.244.1.2"))
                .apply(),
        )
        .unwrap();
    let changes = state.take_changes();
    assert_eq!(changes.len(), 1);
    let report = block_on(dp.apply(state.desired(), &changes)).unwrap();
    assert_eq!(report.writes, 1, "only the IPv4 table is written");
    assert_eq!(dp.kernel().writes(), writes + 1);
    assert_eq!(dp.kernel().table("svcroute-ip6").unwrap(), v6_before);
    // The new endpoint chain appears; the service chain changes; nothing else.
    assert_eq!(dp.element_count(), elements_before + 1);

    // Same result as a full sync.
    let mut fresh = MemoryDataplane::new();
    block_on(fresh.sync_full(state.desired())).unwrap();
    assert_eq!(dp.snapshot(), fresh.snapshot());

    // Nothing changed: nothing written.
    let nothing = state.take_changes();
    let report = block_on(dp.apply(state.desired(), &nothing)).unwrap();
    assert_eq!(report.writes, 0);
    assert_eq!(dp.kernel().writes(), writes + 1);
}

#[test]
fn a_failed_apply_keeps_the_shadow_and_forces_a_full_sync() {
    let mut state = state_with(two_family_objects());
    state.take_changes();
    let mut dp = MemoryDataplane::new();
    block_on(dp.sync_full(state.desired())).unwrap();
    let probe = [
        packet("10.244.0.5 10.96.0.1:80"),
        packet("fd00:10:244::5 [fd00:96::1]:80"),
        packet("10.244.0.5 10.96.0.2:80"),
    ];
    let before: Vec<_> = probe.iter().map(|p| dp.trace(p).unwrap()).collect();

    // Remove service a (both families): the IPv4 write succeeds, the IPv6 one fails.
    state
        .apply(svcroute_core::watch::Event::Delete(
            ServiceBuilder::new("default", "a").build(),
        ))
        .unwrap();
    let changes = state.take_changes();
    dp.kernel().fail_writes_after(1, 1);
    let err = block_on(dp.apply(state.desired(), &changes)).unwrap_err();
    assert_eq!(
        err.class(),
        svcroute_core::dataplane::ErrorClass::NeedsFullSync
    );
    assert!(dp.needs_full_sync());
    let after: Vec<_> = probe.iter().map(|p| dp.trace(p).unwrap()).collect();
    assert_eq!(before, after, "the shadow must not move on a failed apply");

    // The next apply, even of nothing new, repairs with a full sync.
    let report = block_on(dp.apply(state.desired(), &changes)).unwrap();
    assert_eq!(report.writes, 2);
    assert!(!dp.needs_full_sync());
    let mut fresh = MemoryDataplane::new();
    block_on(fresh.sync_full(state.desired())).unwrap();
    assert_eq!(dp.snapshot(), fresh.snapshot());
    // 10.96.0.1 is no longer allocated: dropped as an unallocated service address.
    assert_eq!(
        dp.trace(&probe[0]).unwrap(),
        Decision::simple(Verdict::Drop)
    );
}

#[test]
fn sync_full_adopts_stale_state_and_cleanup_removes_only_ours() {
    let kernel = MemoryKernel::new();
    kernel
        .commit(&[Op::ReplaceTable {
            table: "someone-else".to_string(),
            contents: table_with(Key::Set(SetName::PodCidrs), Value::Nets(Vec::new())),
        }])
        .unwrap();
    // A previous run left a table behind with a chain that no longer exists.
    let mut old = MemoryDataplane::with_kernel(kernel.clone());
    let mut state = state_with(two_family_objects());
    state.take_changes();
    block_on(old.sync_full(state.desired())).unwrap();
    kernel
        .commit(&[Op::Put {
            table: "svcroute-ip".to_string(),
            key: Key::Chain("stale".to_string()),
            value: Value::Present,
        }])
        .unwrap();

    let mut adopted = MemoryDataplane::with_kernel(kernel.clone());
    block_on(adopted.sync_full(state.desired())).unwrap();
    let mut fresh = MemoryDataplane::new();
    block_on(fresh.sync_full(state.desired())).unwrap();
    assert_eq!(adopted.snapshot(), fresh.snapshot());

    block_on(adopted.cleanup()).unwrap();
    assert_eq!(kernel.table_names(), ["someone-else"]);
    assert_eq!(adopted.snapshot(), "");
    assert_eq!(
        adopted.trace(&packet("10.244.0.5 10.96.0.2:80")).unwrap(),
        Decision::simple(Verdict::NoMatch)
    );
}

#[test]
fn a_family_no_longer_handled_loses_its_table() {
    let mut state = state_with(two_family_objects());
    state.take_changes();
    let mut dp = MemoryDataplane::new();
    block_on(dp.sync_full(state.desired())).unwrap();
    assert!(dp.kernel().has_table("svcroute-ip6"));

    let mut config = scenarios::standard_config();
    config.ip_families = vec![IpFamily::IPv4];
    state.set_config(config).unwrap();
    let changes = state.take_changes();
    assert!(changes.config_changed());
    block_on(dp.apply(state.desired(), &changes)).unwrap();
    assert!(!dp.kernel().has_table("svcroute-ip6"));
    assert_eq!(
        dp.trace(&packet("fd00:10:244::5 [fd00:96::1]:80")).unwrap(),
        Decision::simple(Verdict::NoMatch)
    );
}

#[test]
fn nothing_is_traced_before_the_first_sync() {
    let dp = MemoryDataplane::new();
    assert_eq!(
        dp.trace(&packet("10.244.0.5 10.96.0.1:80")).unwrap(),
        Decision::simple(Verdict::NoMatch)
    );
    let empty = Desired::new(Arc::new(ProxyConfig::default()));
    let mut dp = MemoryDataplane::new();
    block_on(dp.sync_full(&empty)).unwrap();
    assert!(dp.programmed_ports().is_empty());
}

#[test]
fn the_memory_backend_harness_reports_its_kernel() {
    let config = scenarios::standard_config();
    let mut dp = MemoryBackend::new(&config);
    assert_eq!(MemoryBackend::name(), "memory");
    assert_eq!(MemoryBackend::kernel_writes(&dp), 0);
    MemoryBackend::fail_next_writes(&mut dp, 1);
    let desired = Desired::new(Arc::new(config));
    assert!(block_on(dp.sync_full(&desired)).is_err());
    assert_eq!(MemoryBackend::kernel_writes(&dp), 1);
    assert_eq!(MemoryBackend::snapshot(&dp), "");
    block_on(dp.sync_full(&desired)).unwrap();
    assert!(MemoryBackend::snapshot(&dp).contains("table svcroute-ip {"));
    // The generic scenario runner works on it directly.
    run_scenario::<MemoryBackend>(&scenarios::hairpin().unwrap()).unwrap();
}
