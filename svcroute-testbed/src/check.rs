//! The three-way checks of a kernel test: for each request, the endpoints that actually
//! answered, the backend's trace of the rules the node's kernel holds, and the core's
//! reference decision must agree. A backend's harness implements [`LiveProxy`] (how to read
//! and trace the live rules); the checks are its provided methods.

use std::collections::BTreeSet;
use std::net::SocketAddr;

use svcroute_conformance::flow::describe_decision;
use svcroute_core::Desired;
use svcroute_core::decide::{Decision, Packet, Verdict, decide};
use svcroute_core::model::{IpFamily, ProxyConfig};

use crate::topology::{Host, NODE_NAME, SERVER_PORT, Topology};
use crate::traffic::{Reply, Request};

/// The settings describing the test node (see the crate docs).
pub fn node_config() -> ProxyConfig {
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

/// The endpoints a decision DNATs to (empty if it does not DNAT).
pub fn dnat_endpoints(decision: &Decision) -> BTreeSet<SocketAddr> {
    match &decision.verdict {
        Verdict::Dnat(endpoints) => endpoints.iter().map(|e| e.endpoint).collect(),
        _ => BTreeSet::new(),
    }
}

/// A proxy programming the node of a [`Topology`], seen from the kernel: what it was told,
/// and the trace of the rules the kernel holds now.
pub trait LiveProxy {
    /// The core's desired state the proxy programmed.
    fn desired(&self) -> &Desired;

    /// Traces `packet` through the rules the node's kernel holds now (read back from the
    /// kernel, never from the proxy's memory); panics, saying why, when they cannot be read
    /// or traced.
    fn trace_live(&self, topo: &Topology, packet: &Packet) -> Decision;

    /// The node's rules of `family` as text, for failure messages, with a title
    /// (`iptables-save of the node`).
    fn dump(&self, topo: &Topology, family: IpFamily) -> (String, String);

    /// Checks that `request` from `from` reaches exactly the pods `expected` (over all its
    /// attempts), and that the trace of the node's rules and the core's decision both DNAT
    /// to exactly those endpoints. Returns the decision.
    fn expect_endpoints(
        &self,
        topo: &Topology,
        from: &Host,
        request: Request,
        expected: &[&str],
    ) -> Decision {
        let seen = observe(self, topo, from, &request);
        seen.check_trace();
        let family = request.family();
        let expected: BTreeSet<SocketAddr> = expected
            .iter()
            .map(|name| SocketAddr::new(topo.pod(name).ip(family), SERVER_PORT))
            .collect();
        if dnat_endpoints(&seen.traced) != expected {
            seen.fail(&format!("the trace does not DNAT to exactly {expected:?}"));
        }
        let reached = seen.reached();
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
    fn expect_sticky(&self, topo: &Topology, from: &Host, request: Request) -> SocketAddr {
        let seen = observe(self, topo, from, &request);
        seen.check_trace();
        if seen.traced.affinity_timeout_seconds.is_none() {
            seen.fail("the trace has no session affinity");
        }
        let reached = seen.reached();
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
    fn expect_no_answer(&self, topo: &Topology, from: &Host, request: Request, verdict: Verdict) {
        let wanted = match verdict {
            Verdict::Reject => Reply::Refused,
            Verdict::Drop => Reply::Timeout,
            other => panic!("{other:?} is answered"),
        };
        let seen = observe(self, topo, from, &request);
        seen.check_trace();
        if seen.traced.verdict != verdict {
            seen.fail(&format!("the trace should say {}", verdict.name()));
        }
        if seen.replies.iter().any(|r| *r != wanted) {
            seen.fail(&format!("every attempt should end in {wanted:?}"));
        }
    }
}

/// One request as seen by the kernel, the trace and the core.
struct Observation<'a, P: ?Sized> {
    proxy: &'a P,
    topo: &'a Topology,
    packet: Packet,
    replies: Vec<Reply>,
    traced: Decision,
    reference: Decision,
}

/// Traces the packet of `request` from `from` and asks the core, then sends it.
fn observe<'a, P: LiveProxy + ?Sized>(
    proxy: &'a P,
    topo: &'a Topology,
    from: &Host,
    request: &Request,
) -> Observation<'a, P> {
    let packet = request.packet_from(from);
    let traced = proxy.trace_live(topo, &packet);
    let reference = decide(proxy.desired(), &packet);
    let replies = topo.send(from, request);
    assert_eq!(replies.len(), request.count, "one line per attempt");
    Observation {
        proxy,
        topo,
        packet,
        replies,
        traced,
        reference,
    }
}

impl<P: LiveProxy + ?Sized> Observation<'_, P> {
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
        let (title, dump) = self
            .proxy
            .dump(self.topo, IpFamily::of(&self.packet.destination));
        panic!("{what}\n{}\n--- {title} ---\n{dump}", self.describe())
    }

    fn check_trace(&self) {
        if !self.traced.equivalent(&self.reference) {
            self.fail("the trace of the kernel's rules differs from the core's decision");
        }
    }

    /// The endpoints the replies came from; fails if an attempt got no answer.
    fn reached(&self) -> BTreeSet<SocketAddr> {
        if !self.replies.iter().all(|r| matches!(r, Reply::From(_))) {
            self.fail("an attempt got no answer");
        }
        let family = IpFamily::of(&self.packet.destination);
        self.replies
            .iter()
            .map(|r| self.topo.endpoint_of(r, family))
            .collect()
    }
}
