//! [`NftDataplane`]: the [`Dataplane`] contract over a [`Kernel`].
//!
//! - `sync_full` replaces our table of every family in one transaction (`add table`, `delete
//!   table`, then everything): it adopts whatever an earlier run or anyone else left in our
//!   table, and deletes our table of a family no longer handled. Nothing outside our tables is
//!   touched.
//! - `apply` renders only the changed service ports and writes their difference
//!   ([`FamilyState::plan`]) for both families in one transaction; an empty change set writes
//!   nothing; changed settings mean a full sync.
//! - nf_tables transactions are atomic: a failed one changes nothing in the kernel. The shadow
//!   (what `trace` reads) stays as it was and the next call is a full sync.
//! - After a successful incremental sync, conntrack entries of UDP flows to removed endpoints
//!   are deleted, and so are the "black hole" entries of UDP ports that just got endpoints.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use svcroute_core::conntrack::stale_flows_per_family;
use svcroute_core::dataplane::{ApplyReport, Capabilities, SyncKind};
use svcroute_core::decide::Packet;
use svcroute_core::model::{IpFamily, ProxyConfig};
use svcroute_core::select::ResolvedServicePort;
use svcroute_core::{ChangeSet, Dataplane, DataplaneError, Decision, Desired, TraceError};

use crate::kernel::{Kernel, KernelError};
use crate::names;
use crate::ruleset::Table;
use crate::state::{FamilyState, PortChanges, PortRun};
use crate::trace;
use crate::transaction::{Command, Transaction};
use crate::{parallel, render};

const BACKEND: &str = "nft";

/// Tuning of the backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// The name of our table in each family (default [`names::TABLE`]).
    pub table: String,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            table: names::TABLE.to_string(),
        }
    }
}

/// What the dataplane believes the kernel holds.
#[derive(Debug, Default)]
struct Shadow {
    config: Option<Arc<ProxyConfig>>,
    families: BTreeMap<IpFamily, FamilyState>,
}

/// The nftables dataplane. See the crate and module docs.
#[derive(Debug)]
pub struct NftDataplane {
    kernel: Box<dyn Kernel>,
    options: Options,
    shadow: Shadow,
    needs_full_sync: bool,
    conntrack_error: Option<String>,
}

fn kernel_error(operation: &str, e: KernelError) -> DataplaneError {
    match e {
        KernelError::Io { tool, source } => DataplaneError::Io {
            backend: BACKEND,
            operation: format!("{operation}: {tool}"),
            source,
        },
        KernelError::Failed {
            tool,
            status,
            stderr,
        } => DataplaneError::Kernel {
            backend: BACKEND,
            operation: format!("{operation}: {tool}"),
            message: format!("{status}: {stderr}"),
            retryable: false,
        },
        KernelError::Unreadable { .. } => DataplaneError::OutOfSync {
            backend: BACKEND,
            message: e.to_string(),
        },
        KernelError::Fake(message) => DataplaneError::Kernel {
            backend: BACKEND,
            operation: operation.to_string(),
            message,
            retryable: false,
        },
    }
}

/// The objects of every service port in `family`, gathered for [`FamilyState::from_runs`].
/// Ports render independently, so large states render on every core: threads take pieces
/// of the ports as they go, and gather their objects while they are hot in their cache.
fn render_ports(desired: &Desired, family: IpFamily) -> Vec<PortRun> {
    const PORTS_PER_PIECE: usize = 512;
    let config = desired.config();
    let ports: Vec<&Arc<ResolvedServicePort>> = desired.ports().collect();
    parallel::fold_pieces(
        &ports,
        PORTS_PER_PIECE,
        PortRun::default,
        |run, ports| {
            for port in ports {
                if let Some(objects) = render::port_objects(config, port, family) {
                    run.push(port.name.clone(), objects);
                }
            }
        },
        |mut run| {
            run.sort();
            run
        },
    )
}

/// The full state of one family under `desired`.
pub fn desired_state(desired: &Desired, family: IpFamily) -> FamilyState {
    FamilyState::from_runs(
        render::skeleton(desired.config(), family),
        render_ports(desired, family),
    )
}

/// The transaction of a full sync to `states`: each family's table is deleted (created first,
/// so the deletion cannot fail) and, when handled, written again.
pub fn full_transaction(table: &str, states: &BTreeMap<IpFamily, FamilyState>) -> Transaction {
    let mut tx = Transaction::new(table);
    for family in IpFamily::ALL {
        tx.push(family, Command::AddTable { comment: None });
        tx.push(family, Command::DeleteTable);
        if let Some(state) = states.get(&family) {
            state.write_full(&mut tx);
        }
    }
    tx
}

/// An incremental sync: the transaction for a change set, and what each family records once
/// the kernel took it.
#[derive(Debug)]
pub struct Plan {
    /// The transaction (empty when nothing changes in the kernel).
    pub transaction: Transaction,
    rendered: Vec<(IpFamily, PortChanges)>,
}

impl Plan {
    /// Renders the changed ports of every family in `states` and plans their difference.
    pub fn new(
        table: &str,
        states: &BTreeMap<IpFamily, FamilyState>,
        desired: &Desired,
        changes: &ChangeSet,
    ) -> Self {
        let config = desired.config();
        let mut transaction = Transaction::new(table);
        let mut rendered = Vec::new();
        for (family, state) in states {
            let mut family_changes: PortChanges = changes
                .changes()
                .iter()
                .map(|c| {
                    let objects = c
                        .current
                        .as_ref()
                        .and_then(|p| render::port_objects(config, p, *family));
                    (c.name.clone(), objects)
                })
                .collect();
            state.plan(&mut family_changes, &mut transaction);
            rendered.push((*family, family_changes));
        }
        Plan {
            transaction,
            rendered,
        }
    }

    /// Records in `states` that the kernel holds the planned result.
    pub fn commit(self, states: &mut BTreeMap<IpFamily, FamilyState>) {
        for (family, family_changes) in self.rendered {
            if let Some(state) = states.get_mut(&family) {
                state.commit(family_changes);
            }
        }
    }
}

/// The full state of every family `desired` handles. Families are built at the same time:
/// the smaller one fills the cores while the other one merges its runs.
pub fn desired_states(desired: &Desired) -> BTreeMap<IpFamily, FamilyState> {
    let families: Vec<IpFamily> = IpFamily::ALL
        .into_iter()
        .filter(|f| desired.config().handles(*f))
        .collect();
    std::thread::scope(|scope| {
        let handles: Vec<_> = families
            .iter()
            .map(|f| (*f, scope.spawn(|| desired_state(desired, *f))))
            .collect();
        handles
            .into_iter()
            .map(|(f, h)| {
                // A panicking renderer is a bug; re-raise it rather than lose a family.
                (f, h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            })
            .collect()
    })
}

/// The full transaction for `desired` (what `sync_full` writes), without running it.
pub fn render_full(table: &str, desired: &Desired) -> Transaction {
    full_transaction(table, &desired_states(desired))
}

/// `table` without what `nft -j` does not list: table and chain comments, the protocol of
/// endpoint maps.
fn without_comments(table: &Table) -> Table {
    let mut t = table.clone();
    t.comment = None;
    for chain in t.chains.values_mut() {
        chain.comment = None;
    }
    for set in t.sets.values_mut() {
        set.decl.protocol = None;
    }
    t
}

impl NftDataplane {
    /// A dataplane programming `kernel` with the default options.
    pub fn new(kernel: Box<dyn Kernel>) -> Self {
        NftDataplane::with_options(kernel, Options::default())
    }

    /// A dataplane programming `kernel`.
    pub fn with_options(kernel: Box<dyn Kernel>, options: Options) -> Self {
        NftDataplane {
            kernel,
            options,
            shadow: Shadow::default(),
            needs_full_sync: false,
            conntrack_error: None,
        }
    }

    /// The table of `family` as programmed (what `trace` reads), if any.
    pub fn table(&self, family: IpFamily) -> Option<&Table> {
        self.shadow.families.get(&family).map(FamilyState::table)
    }

    /// The last conntrack cleanup failure, if the last sync had one (rules were still
    /// programmed; stale UDP flows may linger until they time out).
    pub fn conntrack_error(&self) -> Option<&str> {
        self.conntrack_error.as_deref()
    }

    /// Compares our tables in the kernel with the shadow: `OutOfSync` naming the first family
    /// that differs (someone else modified or deleted our table). A `sync_full` repairs it.
    pub fn verify(&mut self) -> Result<(), DataplaneError> {
        for family in IpFamily::ALL {
            let live = self
                .kernel
                .list_table(family, &self.options.table)
                .map_err(|e| kernel_error("nft list table", e))?;
            // nft's JSON leaves table and chain comments out: compare without them.
            let programmed = self.table(family).map(without_comments);
            if live.map(|t| without_comments(&t)) != programmed {
                return Err(DataplaneError::OutOfSync {
                    backend: BACKEND,
                    message: format!(
                        "table {} {} differs from what svcroute programmed",
                        crate::ruleset::family_name(family),
                        self.options.table
                    ),
                });
            }
        }
        Ok(())
    }

    fn run(&mut self, operation: &str, tx: &Transaction) -> Result<usize, DataplaneError> {
        let bytes = tx.text().len();
        match self.kernel.run(tx) {
            Ok(()) => Ok(bytes),
            Err(e) => {
                self.needs_full_sync = true;
                Err(kernel_error(operation, e))
            }
        }
    }

    fn incremental(
        &mut self,
        desired: &Desired,
        changes: &ChangeSet,
    ) -> Result<ApplyReport, DataplaneError> {
        let plan = Plan::new(&self.options.table, &self.shadow.families, desired, changes);
        let tx = &plan.transaction;
        let bytes = if tx.is_empty() {
            0
        } else {
            self.run("nft -f (incremental)", tx)?
        };
        let writes = usize::from(!tx.is_empty());
        plan.commit(&mut self.shadow.families);
        self.clean_conntrack(changes);
        Ok(ApplyReport {
            writes,
            bytes,
            service_ports: changes.len(),
        })
    }

    fn clean_conntrack(&mut self, changes: &ChangeSet) {
        let stale = stale_flows_per_family(changes, self.shadow.families.keys().copied());
        self.conntrack_error = stale
            .iter()
            .filter_map(|(family, flows)| self.kernel.delete_conntrack(*family, flows).err())
            .last()
            .map(|e| e.to_string());
    }
}

#[async_trait]
impl Dataplane for NftDataplane {
    fn capabilities(&self) -> Capabilities {
        Capabilities::full(BACKEND)
    }

    async fn apply(
        &mut self,
        desired: &Desired,
        changes: &ChangeSet,
    ) -> Result<ApplyReport, DataplaneError> {
        let programmed = self.shadow.config.as_deref();
        match SyncKind::for_apply(changes, desired, self.needs_full_sync, programmed) {
            SyncKind::Nothing => Ok(ApplyReport::default()),
            SyncKind::Full => self.sync_full(desired).await,
            SyncKind::Incremental => self.incremental(desired, changes),
        }
    }

    async fn sync_full(&mut self, desired: &Desired) -> Result<ApplyReport, DataplaneError> {
        let states = desired_states(desired);
        let tx = full_transaction(&self.options.table, &states);
        let bytes = self.run("nft -f (full sync)", &tx)?;
        self.shadow = Shadow {
            config: Some(desired.config_arc().clone()),
            families: states,
        };
        self.needs_full_sync = false;
        Ok(ApplyReport {
            writes: 1,
            bytes,
            service_ports: desired.ports().count(),
        })
    }

    async fn cleanup(&mut self) -> Result<(), DataplaneError> {
        let mut tx = Transaction::new(&self.options.table);
        for family in IpFamily::ALL {
            tx.push(family, Command::AddTable { comment: None });
            tx.push(family, Command::DeleteTable);
        }
        self.run("nft -f (cleanup)", &tx)?;
        self.shadow = Shadow::default();
        Ok(())
    }

    fn trace(&self, packet: &Packet) -> Result<Decision, TraceError> {
        let Some(config) = self.shadow.config.as_deref() else {
            return Ok(Decision::simple(svcroute_core::Verdict::NoMatch));
        };
        trace::trace_table(
            config,
            self.table(IpFamily::of(&packet.destination)),
            packet,
        )
    }
}
