//! [`NftDataplane`]: the [`Dataplane`] contract over a [`Kernel`].
//!
//! - `sync_full` replaces our tables of every family in one transaction (`add table`, `delete
//!   table`, then everything): it adopts whatever an earlier run or anyone else left in our
//!   tables, deletes shards an earlier run had and this one does not, and deletes our tables
//!   of a family no longer handled. Nothing outside our tables is touched.
//! - `apply` renders only the changed service ports and writes their difference
//!   ([`FamilyTables::plan`]) for both families in one transaction; an empty change set writes
//!   nothing; changed settings, or a family that outgrew its shards, mean a full sync.
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
use svcroute_core::{ChangeSet, Dataplane, DataplaneError, Decision, Desired, TraceError};

use crate::kernel::{Kernel, KernelError};
use crate::names;
use crate::ruleset::Table;
use crate::shards::{self, FamilyPlan, FamilyTables};
use crate::trace;
use crate::transaction::{Command, TableId, Transaction};

const BACKEND: &str = "nft";

/// Tuning of the backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// The name of our common table in each family (default [`names::TABLE`]); the shards
    /// are named after it (`svcroute-0`, ...).
    pub table: String,
    /// Service ports a shard should hold (default [`shards::PORTS_PER_SHARD`]): a full sync
    /// makes as many shards as this calls for, and a family that grows past twice as many
    /// gets a full sync into more.
    pub ports_per_shard: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            table: names::TABLE.to_string(),
            ports_per_shard: shards::PORTS_PER_SHARD,
        }
    }
}

/// What the dataplane believes the kernel holds.
#[derive(Debug, Default)]
struct Shadow {
    config: Option<Arc<ProxyConfig>>,
    families: BTreeMap<IpFamily, FamilyTables>,
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

/// The transaction of a full sync to `states`: each of our tables that exists (`existing`) or
/// will be written is deleted (created first, so the deletion cannot fail), then each
/// family's tables are written.
pub fn full_transaction(
    existing: &[TableId],
    states: &BTreeMap<IpFamily, FamilyTables>,
) -> Transaction {
    let mut tx = Transaction::new();
    let written = states.values().flat_map(|s| s.tables().map(|(id, _)| id));
    let mut gone: Vec<&TableId> = existing.iter().chain(written).collect();
    gone.sort();
    gone.dedup();
    for id in gone {
        tx.push(id, Command::AddTable { comment: None });
        tx.push(id, Command::DeleteTable);
    }
    for state in states.values() {
        state.write_full(&mut tx);
    }
    tx
}

/// An incremental sync: the transaction for a change set, and what each family records once
/// the kernel took it.
#[derive(Debug)]
pub struct Plan {
    /// The transaction (empty when nothing changes in the kernel).
    pub transaction: Transaction,
    planned: Vec<(IpFamily, FamilyPlan)>,
}

impl Plan {
    /// Renders the changed ports of every family in `states` and plans their difference.
    pub fn new(
        states: &BTreeMap<IpFamily, FamilyTables>,
        desired: &Desired,
        changes: &ChangeSet,
    ) -> Self {
        let mut transaction = Transaction::new();
        let mut planned = Vec::new();
        for (family, state) in states {
            let family_changes = shards::part_changes(desired.config(), changes, *family);
            let plan = state.plan(family_changes, &mut transaction);
            planned.push((*family, plan));
        }
        Plan {
            transaction,
            planned,
        }
    }

    /// Records in `states` that the kernel holds the planned result.
    pub fn commit(self, states: &mut BTreeMap<IpFamily, FamilyTables>) {
        for (family, plan) in self.planned {
            if let Some(state) = states.get_mut(&family) {
                state.commit(plan);
            }
        }
    }
}

/// The tables of every family `desired` handles. Families are built at the same time: the
/// smaller one fills the cores while the other one merges its runs.
pub fn desired_states(desired: &Desired, options: &Options) -> BTreeMap<IpFamily, FamilyTables> {
    let families: Vec<IpFamily> = IpFamily::ALL
        .into_iter()
        .filter(|f| desired.config().handles(*f))
        .collect();
    let build = |family: IpFamily| {
        FamilyTables::build(desired, family, &options.table, options.ports_per_shard)
    };
    std::thread::scope(|scope| {
        let handles: Vec<_> = families
            .iter()
            .map(|f| (*f, scope.spawn(move || build(*f))))
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

/// The full transaction for `desired`, without running it: what `sync_full` writes on a node
/// that holds at most our common tables (it also deletes the common table of a family not
/// handled; `sync_full` deletes whichever of our tables the kernel lists).
pub fn render_full(desired: &Desired, options: &Options) -> Transaction {
    let common = IpFamily::ALL.map(|f| TableId::new(f, &options.table));
    full_transaction(&common, &desired_states(desired, options))
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

    /// The tables of `family` as programmed (what `trace` reads), the common table first:
    /// none before the first sync or for a family not handled.
    pub fn tables(&self, family: IpFamily) -> Vec<(&TableId, &Table)> {
        self.shadow
            .families
            .get(&family)
            .map(|f| f.tables().collect())
            .unwrap_or_default()
    }

    /// The last conntrack cleanup failure, if the last sync had one (rules were still
    /// programmed; stale UDP flows may linger until they time out).
    pub fn conntrack_error(&self) -> Option<&str> {
        self.conntrack_error.as_deref()
    }

    /// Our tables in the kernel: the common table and the shards of every family.
    fn our_tables(&mut self) -> Result<Vec<TableId>, DataplaneError> {
        let mut ours = Vec::new();
        for family in IpFamily::ALL {
            let names = self
                .kernel
                .table_names(family)
                .map_err(|e| kernel_error("nft list tables", e))?;
            ours.extend(
                (names.iter())
                    .filter(|n| names::is_ours(&self.options.table, n))
                    .map(|n| TableId::new(family, n)),
            );
        }
        Ok(ours)
    }

    /// Compares our tables in the kernel with the shadow: `OutOfSync` naming the first table
    /// that differs, is missing or is left over (someone else modified or deleted our
    /// tables). A `sync_full` repairs it.
    pub fn verify(&mut self) -> Result<(), DataplaneError> {
        let out_of_sync = |id: &TableId, what: &str| DataplaneError::OutOfSync {
            backend: BACKEND,
            message: format!(
                "table {} {} {what}",
                crate::ruleset::family_name(id.family),
                id.name
            ),
        };
        let mut live = self.our_tables()?;
        for family in IpFamily::ALL {
            let programmed: Vec<(TableId, Table)> = self
                .tables(family)
                .into_iter()
                .map(|(id, t)| (id.clone(), without_comments(t)))
                .collect();
            for (id, table) in programmed {
                live.retain(|l| *l != id);
                let listed = self
                    .kernel
                    .list_table(family, &id.name)
                    .map_err(|e| kernel_error("nft list table", e))?;
                // nft's JSON leaves table and chain comments out: compare without them.
                if listed.map(|t| without_comments(&t)) != Some(table) {
                    return Err(out_of_sync(&id, "differs from what svcroute programmed"));
                }
            }
        }
        match live.first() {
            Some(id) => Err(out_of_sync(id, "is left over: svcroute did not program it")),
            None => Ok(()),
        }
    }

    fn run(&mut self, operation: &str, tx: &Transaction) -> Result<usize, DataplaneError> {
        match self.kernel.run(tx) {
            Ok(bytes) => Ok(bytes),
            Err(e) => {
                self.needs_full_sync = true;
                Err(kernel_error(operation, e))
            }
        }
    }

    /// Whether a family outgrows its shards with `changes` ([`FamilyTables::needs_more_shards`]).
    fn outgrown(&self, changes: &ChangeSet) -> bool {
        (self.shadow.families.values())
            .any(|tables| tables.needs_more_shards(tables.ports_after(changes)))
    }

    fn incremental(
        &mut self,
        desired: &Desired,
        changes: &ChangeSet,
    ) -> Result<ApplyReport, DataplaneError> {
        let plan = Plan::new(&self.shadow.families, desired, changes);
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
            SyncKind::Incremental if self.outgrown(changes) => self.sync_full(desired).await,
            SyncKind::Incremental => self.incremental(desired, changes),
        }
    }

    async fn sync_full(&mut self, desired: &Desired) -> Result<ApplyReport, DataplaneError> {
        let existing = self
            .our_tables()
            .inspect_err(|_| self.needs_full_sync = true)?;
        let states = desired_states(desired, &self.options);
        let tx = full_transaction(&existing, &states);
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
        let existing = self.our_tables()?;
        if !existing.is_empty() {
            self.run(
                "nft -f (cleanup)",
                &full_transaction(&existing, &BTreeMap::new()),
            )?;
        }
        self.shadow = Shadow::default();
        Ok(())
    }

    fn trace(&self, packet: &Packet) -> Result<Decision, TraceError> {
        let Some(config) = self.shadow.config.as_deref() else {
            return Ok(Decision::simple(svcroute_core::Verdict::NoMatch));
        };
        let tables = self.tables(IpFamily::of(&packet.destination));
        let tables: Vec<&Table> = tables.into_iter().map(|(_, t)| t).collect();
        trace::trace(config, &tables, packet)
    }
}

#[cfg(test)]
mod tests {
    use svcroute_conformance::objects::{ServiceBuilder, SliceBuilder, ep};
    use svcroute_core::State;
    use svcroute_core::model::ProxyConfig;

    use super::*;
    use crate::kernel::FakeKernel;

    /// A core state with services `web0..web{n-1}`, each with one port and one endpoint.
    fn state(n: u8) -> State {
        let mut state = State::new(ProxyConfig::default()).unwrap();
        for i in 0..n {
            add(&mut state, i);
        }
        state.take_changes();
        state
    }

    fn add(state: &mut State, i: u8) {
        let name = format!("web{i}");
        let svc = ServiceBuilder::new("default", &name)
            .cluster_ip(&format!("10.96.0.{}", 10 + i))
            .port("http", 80, "TCP");
        state.apply(svc.apply()).unwrap();
        let slice = SliceBuilder::ipv4("default", &format!("{name}-1"), &name)
            .port("http", 8080, "TCP")
            .endpoint(ep(&format!("10.244.1.{}", 1 + i)));
        state.apply(slice.apply()).unwrap();
    }

    /// Our IPv4 tables in `kernel`, by name.
    fn ours(kernel: &FakeKernel) -> Vec<String> {
        let names = kernel.tables(IpFamily::IPv4).into_keys();
        names.filter(|n| names::is_ours(names::TABLE, n)).collect()
    }

    fn dataplane(kernel: &FakeKernel, ports_per_shard: usize) -> NftDataplane {
        let options = Options {
            ports_per_shard,
            ..Options::default()
        };
        NftDataplane::with_options(Box::new(kernel.clone()), options)
    }

    fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn a_full_sync_deletes_the_shards_of_an_earlier_run_and_cleanup_every_one() {
        let kernel = FakeKernel::new();
        // Someone else's tables, one of them named like ours but not a shard.
        for name in ["filter", "svcroute-x"] {
            kernel.set_table(IpFamily::IPv4, name, Some(Table::new(IpFamily::IPv4)));
        }
        let state = state(8);
        block_on(dataplane(&kernel, 2).sync_full(state.desired())).unwrap();
        assert_eq!(ours(&kernel).len(), 1 + 4);
        // A restart that wants fewer shards replaces them all.
        let mut restarted = dataplane(&kernel, 4);
        block_on(restarted.sync_full(state.desired())).unwrap();
        assert_eq!(ours(&kernel), ["svcroute", "svcroute-0", "svcroute-1"]);
        restarted.verify().unwrap();
        // A restart where one table is enough.
        let mut restarted = dataplane(&kernel, 8);
        block_on(restarted.sync_full(state.desired())).unwrap();
        assert_eq!(ours(&kernel), ["svcroute"]);
        restarted.verify().unwrap();
        // A shard left over from elsewhere is out of sync.
        kernel.set_table(
            IpFamily::IPv4,
            "svcroute-7",
            Some(Table::new(IpFamily::IPv4)),
        );
        let err = restarted.verify().unwrap_err().to_string();
        assert!(err.contains("svcroute-7"), "{err}");
        block_on(restarted.cleanup()).unwrap();
        assert!(ours(&kernel).is_empty());
        let left: Vec<String> = kernel.tables(IpFamily::IPv4).into_keys().collect();
        assert_eq!(left, ["filter", "svcroute-x"]);
    }

    #[test]
    fn a_family_that_outgrows_its_shards_gets_a_full_sync_into_more() {
        let kernel = FakeKernel::new();
        let mut state = state(2);
        let mut dp = dataplane(&kernel, 2);
        block_on(dp.sync_full(state.desired())).unwrap();
        assert_eq!(ours(&kernel), ["svcroute"], "one shard: the common table");
        // Up to twice the shards' share: incremental syncs into the one table.
        for i in 2..4 {
            add(&mut state, i);
            let changes = state.take_changes();
            let report = block_on(dp.apply(state.desired(), &changes)).unwrap();
            assert_eq!(report.service_ports, 1);
        }
        assert_eq!(ours(&kernel).len(), 1);
        // One more: a full sync deals the five ports out to three shards.
        add(&mut state, 4);
        let changes = state.take_changes();
        let report = block_on(dp.apply(state.desired(), &changes)).unwrap();
        assert_eq!(report.service_ports, 5, "a full sync");
        assert_eq!(ours(&kernel).len(), 1 + 3);
        dp.verify().unwrap();
    }
}
