//! svcroute's side of a kernel test: the core state and the iptables dataplane programming
//! the node namespace; its live trace is `iptables-save` → `parse_save` → `Tracer`, which the
//! test bed's checks ([`LiveProxy`]) compare with real traffic and the core's decision.

use svcroute_core::dataplane::ApplyReport;
use svcroute_core::decide::{Decision, Packet};
use svcroute_core::model::IpFamily;
use svcroute_core::watch::WatchEvent;
use svcroute_core::{Dataplane, Desired, State};
use svcroute_iptables::IptablesDataplane;
use svcroute_iptables::parse::parse_save;
use svcroute_iptables::trace::Tracer;
use svcroute_testbed::{LiveProxy, Topology, node_config};

use super::netns::IptablesNode;

/// The core state and the dataplane programming the node namespace.
pub struct Proxy {
    state: State,
    dataplane: IptablesDataplane,
    runtime: tokio::runtime::Runtime,
}

impl Proxy {
    /// Feeds `objects` to a fresh core state and programs the node through a fresh dataplane
    /// (`sync_full`), as a proxy does when it starts.
    pub fn start(topo: &Topology, objects: &[WatchEvent]) -> Proxy {
        let mut state = State::new(node_config()).expect("valid settings");
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
}

impl LiveProxy for Proxy {
    fn desired(&self) -> &Desired {
        self.state.desired()
    }

    /// Traces `packet` through the node's `iptables-save` dump.
    fn trace_live(&self, topo: &Topology, packet: &Packet) -> Decision {
        let dump = topo.save(IpFamily::of(&packet.destination));
        let ruleset = parse_save(&dump)
            .unwrap_or_else(|e| panic!("cannot parse the node's iptables-save: {e}\n{dump}"));
        let tracer = Tracer::new(&ruleset)
            .unwrap_or_else(|e| panic!("cannot trace the node's rules: {e}\n{dump}"));
        tracer
            .trace(self.state.desired().config(), packet)
            .unwrap_or_else(|e| panic!("cannot trace {packet}: {e}\n{dump}"))
    }

    fn dump(&self, topo: &Topology, family: IpFamily) -> (String, String) {
        ("iptables-save of the node".to_string(), topo.save(family))
    }
}
