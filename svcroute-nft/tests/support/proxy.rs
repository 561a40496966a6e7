//! svcroute's side of a kernel test: the core state and the nftables dataplane programming
//! the node namespace. Every sync is followed by `NftDataplane::verify` (the kernel's tables
//! equal what the dataplane believes it programmed). The live trace reads our tables back from
//! the kernel (`nft -j list table`) and traces it with `trace`, which the test bed's
//! checks ([`LiveProxy`]) compare with real traffic and the core's decision.

use std::sync::{Arc, Mutex, PoisonError};
use svcroute_core::dataplane::ApplyReport;
use svcroute_core::decide::{Decision, Packet};
use svcroute_core::model::IpFamily;
use svcroute_core::watch::WatchEvent;
use svcroute_core::{Dataplane, DataplaneError, Desired, State};

use svcroute_core::conntrack::ConntrackFlows;
use svcroute_nft::trace::trace;
use svcroute_nft::transaction::Transaction;
use svcroute_nft::{Kernel, KernelError, NftDataplane, Options, SystemKernel, Table};
use svcroute_testbed::{LiveProxy, Topology, node_config};

use super::netns::NftNode;

/// The node's kernel, remembering the text of the last transaction it ran (for failure
/// messages).
#[derive(Debug)]
struct Recording {
    kernel: SystemKernel,
    last: Arc<Mutex<String>>,
}

impl Kernel for Recording {
    fn run(&mut self, tx: &Transaction) -> Result<usize, KernelError> {
        *self.last.lock().unwrap_or_else(PoisonError::into_inner) = tx.text();
        self.kernel.run(tx)
    }

    fn table_names(&mut self, family: IpFamily) -> Result<Vec<String>, KernelError> {
        self.kernel.table_names(family)
    }

    fn list_table(&mut self, family: IpFamily, table: &str) -> Result<Option<Table>, KernelError> {
        self.kernel.list_table(family, table)
    }

    fn delete_conntrack(
        &mut self,
        family: IpFamily,
        flows: &[ConntrackFlows],
    ) -> Result<(), KernelError> {
        self.kernel.delete_conntrack(family, flows)
    }
}

/// The core state and the dataplane programming the node namespace.
pub struct Proxy {
    state: State,
    dataplane: NftDataplane,
    runtime: tokio::runtime::Runtime,
    last_transaction: Arc<Mutex<String>>,
}

impl Proxy {
    /// Feeds `objects` to a fresh core state and programs the node through a fresh dataplane
    /// (`sync_full`), as a proxy does when it starts; checks that the kernel holds what it
    /// programmed.
    pub fn start(topo: &Topology, objects: &[WatchEvent]) -> Proxy {
        Proxy::start_with(topo, objects, Options::default())
    }

    /// [`Proxy::start`] with a dataplane of these options.
    pub fn start_with(topo: &Topology, objects: &[WatchEvent], options: Options) -> Proxy {
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
        let last_transaction = Arc::new(Mutex::new(String::new()));
        let kernel = Recording {
            kernel: topo.kernel(),
            last: last_transaction.clone(),
        };
        let mut proxy = Proxy {
            state,
            dataplane: NftDataplane::with_options(Box::new(kernel), options),
            runtime,
            last_transaction,
        };
        proxy.sync_full();
        proxy
    }

    /// The text of the transaction a `sync_full` of `objects` writes (not run).
    pub fn render_full(objects: &[WatchEvent]) -> String {
        let mut state = State::new(node_config()).expect("valid settings");
        for object in objects {
            state
                .apply(object.clone())
                .unwrap_or_else(|e| panic!("object rejected: {e}"));
        }
        let options = svcroute_nft::Options::default();
        svcroute_nft::apply::render_full(state.desired(), &options).text()
    }

    /// Writes the whole state again (`Dataplane::sync_full`); checks that the kernel holds
    /// what it programmed.
    pub fn sync_full(&mut self) -> ApplyReport {
        let report = self
            .runtime
            .block_on(self.dataplane.sync_full(self.state.desired()))
            .unwrap_or_else(|e| panic!("sync_full: {e}\n{}", self.last_transaction()));
        self.verify();
        report
    }

    /// Feeds `objects` to the state and writes the change set (`Dataplane::apply`), returning
    /// what the dataplane said; the kernel is not checked.
    pub fn try_update(&mut self, objects: &[WatchEvent]) -> Result<ApplyReport, DataplaneError> {
        for object in objects {
            self.state
                .apply(object.clone())
                .unwrap_or_else(|e| panic!("object rejected: {e}"));
        }
        let changes = self.state.take_changes();
        self.runtime
            .block_on(self.dataplane.apply(self.state.desired(), &changes))
    }

    /// Feeds `objects` to the state and writes the change set (`Dataplane::apply`); checks
    /// that the kernel holds what it programmed.
    pub fn update(&mut self, objects: &[WatchEvent]) -> ApplyReport {
        let report = self
            .try_update(objects)
            .unwrap_or_else(|e| panic!("apply: {e}\n{}", self.last_transaction()));
        self.verify();
        report
    }

    /// Panics unless our tables in the kernel equal what the dataplane programmed
    /// (`NftDataplane::verify`).
    pub fn verify(&mut self) {
        if let Err(e) = self.dataplane.verify() {
            panic!("after a successful sync: {e}");
        }
    }

    /// Removes our tables (`Dataplane::cleanup`).
    pub fn cleanup(&mut self) {
        self.runtime
            .block_on(self.dataplane.cleanup())
            .unwrap_or_else(|e| panic!("cleanup: {e}"));
    }

    /// The text of the last transaction the dataplane ran, titled, for failure messages (cut
    /// after 200 lines).
    pub fn last_transaction(&self) -> String {
        let text = self
            .last_transaction
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let lines: Vec<&str> = text.lines().collect();
        let shown = lines.len().min(200);
        format!(
            "--- the last transaction ({} lines) ---\n{}",
            lines.len(),
            lines[..shown].join("\n")
        )
    }

    /// The dataplane.
    pub fn dataplane(&mut self) -> &mut NftDataplane {
        &mut self.dataplane
    }
}

impl LiveProxy for Proxy {
    fn desired(&self) -> &Desired {
        self.state.desired()
    }

    /// Traces `packet` through our tables of its family as `nft -j list table` shows them.
    fn trace_live(&self, topo: &Topology, packet: &Packet) -> Decision {
        let tables = topo.our_tables(IpFamily::of(&packet.destination));
        let tables: Vec<&Table> = tables.iter().map(|(_, t)| t).collect();
        trace(self.state.desired().config(), &tables, packet).unwrap_or_else(|e| {
            panic!(
                "cannot trace {packet} through the node's tables: {e}\n{}",
                topo.ruleset()
            )
        })
    }

    fn dump(&self, topo: &Topology, _family: IpFamily) -> (String, String) {
        ("nft list ruleset of the node".to_string(), topo.ruleset())
    }
}
