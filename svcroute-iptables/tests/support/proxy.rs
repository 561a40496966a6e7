//! svcroute's side of a kernel test: the core state, the dataplane programming the node
//! namespace, and the checks that what the kernel did to real traffic equals both the trace
//! of the kernel's own rules (`iptables-save` → `parse_save` → `Tracer`) and the core's
//! reference decision.

use std::collections::BTreeSet;
use std::net::SocketAddr;

use svcroute_conformance::flow::describe_decision;
use svcroute_core::dataplane::ApplyReport;
use svcroute_core::decide::{Decision, Packet, Verdict, decide};
use svcroute_core::model::{IpFamily, ProxyConfig};
use svcroute_core::watch::WatchEvent;
use svcroute_core::{Dataplane, State};
use svcroute_iptables::IptablesDataplane;
use svcroute_iptables::parse::parse_save;
use svcroute_iptables::trace::Tracer;

use super::netns::{Host, NODE_NAME, Reply, Request, SERVER_PORT, Topology};

/// The settings describing the test node (see [`super::netns`]).
pub fn config() -> ProxyConfig {
    let ip = |s: &str| s.parse().expect("IP literal");
    let net = |s: &str| s.parse().expect("CIDR literal");
    ProxyConfig {
        node_name: NODE_NAME.to_string(),
        node_ips: vec![ip("192.168.50.1"), ip("fd00:50::1")],
        cluster_cidrs: vec![net("10.244.0.0/24"), net("fd00:244::/64")],
        service_cidrs: vec![net("10.96.0.0/16"), net("fd00:96::/108")],
        ..ProxyConfig::default()
    }
}

/// The core state and the dataplane programming the node namespace.
pub struct Proxy {
    state: State,
    dataplane: IptablesDataplane,
    runtime: tokio::runtime::Runtime,
}

/// One packet as seen by the kernel, the trace and the core.
struct Observation {
    packet: Packet,
    replies: Vec<Reply>,
    traced: Decision,
    reference: Decision,
    dump: String,
}

impl Observation {
    fn describe(&self) -> String {
        format!(
            "packet {}\n  replies      {:?}\n  kernel trace {}\n  core decides {}",
            self.packet,
            self.replies,
            describe_decision(&self.traced),
            describe_decision(&self.reference)
        )
    }

    /// Fails with everything known about the packet, the kernel's rules included.
    fn fail(&self, what: &str) -> ! {
        panic!(
            "{what}\n{}\n--- iptables-save of the node ---\n{}",
            self.describe(),
            self.dump
        )
    }

    fn check_trace(&self) {
        if !self.traced.equivalent(&self.reference) {
            self.fail("the trace of the kernel's rules differs from the core's decision");
        }
    }
}

/// The endpoints a decision DNATs to (empty if it does not DNAT).
pub fn dnat_endpoints(decision: &Decision) -> BTreeSet<SocketAddr> {
    match &decision.verdict {
        Verdict::Dnat(endpoints) => endpoints.iter().map(|e| e.endpoint).collect(),
        _ => BTreeSet::new(),
    }
}

impl Proxy {
    /// Feeds `objects` to a fresh core state and programs the node through a fresh dataplane
    /// (`sync_full`), as a proxy does when it starts.
    pub fn start(topo: &Topology, objects: &[WatchEvent]) -> Proxy {
        let mut state = State::new(config()).expect("valid settings");
        for object in objects {
            state
                .apply(object.clone())
                .unwrap_or_else(|e| panic!("object rejected: {e}"));
        }
        state.take_changes();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("tokio runtime");
        let mut dataplane = IptablesDataplane::new(Box::new(topo.kernel()));
        runtime
            .block_on(dataplane.sync_full(state.desired()))
            .unwrap_or_else(|e| panic!("sync_full: {e}"));
        Proxy {
            state,
            dataplane,
            runtime,
        }
    }

    /// Feeds `objects` to the state and writes the change set incrementally
    /// (`Dataplane::apply`).
    pub fn update(&mut self, objects: &[WatchEvent]) -> ApplyReport {
        for object in objects {
            self.state
                .apply(object.clone())
                .unwrap_or_else(|e| panic!("object rejected: {e}"));
        }
        let changes = self.state.take_changes();
        self.runtime
            .block_on(self.dataplane.apply(self.state.desired(), &changes))
            .unwrap_or_else(|e| panic!("apply: {e}"))
    }

    /// Removes every rule of ours (`Dataplane::cleanup`).
    pub fn cleanup(&mut self) {
        self.runtime
            .block_on(self.dataplane.cleanup())
            .unwrap_or_else(|e| panic!("cleanup: {e}"));
    }

    /// The dataplane.
    pub fn dataplane(&self) -> &IptablesDataplane {
        &self.dataplane
    }

    /// The packet the node sees for `request` from `from`.
    pub fn packet(from: &Host, request: &Request) -> Packet {
        Packet {
            source: from.ip(request.family()),
            destination: request.destination.ip(),
            port: request.destination.port(),
            protocol: request.protocol,
        }
    }

    /// Traces `packet` through the node's live rules and asks the core.
    fn trace(&self, topo: &Topology, packet: Packet) -> (Decision, Decision, String) {
        let dump = topo.save(IpFamily::of(&packet.destination));
        let ruleset = parse_save(&dump)
            .unwrap_or_else(|e| panic!("cannot parse the node's iptables-save: {e}\n{dump}"));
        let tracer = Tracer::new(&ruleset)
            .unwrap_or_else(|e| panic!("cannot trace the node's rules: {e}\n{dump}"));
        let traced = tracer
            .trace(self.state.desired().config(), &packet)
            .unwrap_or_else(|e| panic!("cannot trace {packet}: {e}\n{dump}"));
        (traced, decide(self.state.desired(), &packet), dump)
    }

    /// Sends `request` from `from` and traces its packet.
    fn observe(&self, topo: &Topology, from: &Host, request: &Request) -> Observation {
        let packet = Proxy::packet(from, request);
        let (traced, reference, dump) = self.trace(topo, packet);
        let replies = topo.send(from, request);
        assert_eq!(replies.len(), request.count, "one line per attempt");
        Observation {
            packet,
            replies,
            traced,
            reference,
            dump,
        }
    }

    /// The endpoints the replies came from; fails if an attempt got no answer.
    fn reached(topo: &Topology, seen: &Observation) -> BTreeSet<SocketAddr> {
        if !seen.replies.iter().all(|r| matches!(r, Reply::From(_))) {
            seen.fail("an attempt got no answer");
        }
        let family = IpFamily::of(&seen.packet.destination);
        seen.replies
            .iter()
            .map(|r| topo.endpoint_of(r, family))
            .collect()
    }

    /// Checks that `request` from `from` reaches exactly the pods `expected` (over all its
    /// attempts), and that the trace of the node's rules and the core's decision both DNAT
    /// to exactly those endpoints. Returns the decision.
    pub fn expect_endpoints(
        &self,
        topo: &Topology,
        from: &Host,
        request: Request,
        expected: &[&str],
    ) -> Decision {
        let seen = self.observe(topo, from, &request);
        seen.check_trace();
        let family = request.family();
        let expected: BTreeSet<SocketAddr> = expected
            .iter()
            .map(|name| SocketAddr::new(topo.pod(name).ip(family), SERVER_PORT))
            .collect();
        if dnat_endpoints(&seen.traced) != expected {
            seen.fail(&format!("the trace does not DNAT to exactly {expected:?}"));
        }
        let reached = Proxy::reached(topo, &seen);
        if reached != expected {
            seen.fail(&format!(
                "the kernel reached {reached:?}, the trace says {expected:?}"
            ));
        }
        seen.traced
    }

    /// Checks that every attempt of `request` from `from` is answered by one and the same
    /// endpoint among those of the trace, and that the trace has ClientIP affinity. Returns
    /// that endpoint.
    pub fn expect_sticky(&self, topo: &Topology, from: &Host, request: Request) -> SocketAddr {
        let seen = self.observe(topo, from, &request);
        seen.check_trace();
        if seen.traced.affinity_timeout_seconds.is_none() {
            seen.fail("the trace has no session affinity");
        }
        let reached = Proxy::reached(topo, &seen);
        let [endpoint] = reached.iter().copied().collect::<Vec<_>>()[..] else {
            seen.fail(&format!(
                "one client reached several endpoints: {reached:?}"
            ));
        };
        if !dnat_endpoints(&seen.traced).contains(&endpoint) {
            seen.fail(&format!("{endpoint} is not an endpoint of the trace"));
        }
        endpoint
    }

    /// Checks that no attempt of `request` from `from` gets an answer (each is `Refused` for
    /// `Verdict::Reject`, a `Timeout` for `Verdict::Drop`), and that the trace and the core
    /// say `verdict`.
    pub fn expect_no_answer(
        &self,
        topo: &Topology,
        from: &Host,
        request: Request,
        verdict: Verdict,
    ) {
        let wanted = match verdict {
            Verdict::Reject => Reply::Refused,
            Verdict::Drop => Reply::Timeout,
            other => panic!("{other:?} is answered"),
        };
        let seen = self.observe(topo, from, &request);
        seen.check_trace();
        if seen.traced.verdict != verdict {
            seen.fail(&format!("the trace should say {}", verdict.name()));
        }
        if seen.replies.iter().any(|r| *r != wanted) {
            seen.fail(&format!("every attempt should end in {wanted:?}"));
        }
    }
}
