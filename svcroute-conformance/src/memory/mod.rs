//! An in-memory reference dataplane.
//!
//! [`MemoryDataplane`] programs a [`MemoryKernel`] — named tables of sets, verdict maps and
//! chains, changed by atomic transactions — much as the nftables backend programs the real
//! kernel: one table per family (`svcroute-ip`, `svcroute-ip6`), dispatch through verdict maps
//! keyed by `daddr . proto . dport`, one chain per traffic class and per endpoint, a
//! `numgen`-style random pick, a pre-DNAT firewall for load-balancer source ranges.
//!
//! Its `trace` interprets the tables it recorded (its shadow of the kernel), independently of
//! the core's reference [`svcroute_core::decide()`]: neither calls nor copies it. That makes it
//! a second implementation against which the reference itself is checked, and the executable
//! example of the [`Dataplane`] contract:
//!
//! - `sync_full` replaces our tables whole (one transaction per family) and deletes our table
//!   of a family no longer handled;
//! - `apply` is incremental: it diffs the elements the changed service ports contributed before
//!   against what they contribute now and writes only that difference, one transaction per
//!   family that changed; an empty change set writes nothing; changed settings mean a full sync;
//! - a failed write leaves the shadow (what `trace` reads) untouched and forces the next call
//!   to be a full sync; the kernel may hold one family's transaction when the other failed,
//!   exactly the state the contract allows until the repair;
//! - `cleanup` deletes only our tables.
//!
//! ```
//! use svcroute_conformance::memory::MemoryDataplane;
//! use svcroute_conformance::scenarios;
//! use svcroute_conformance::flow::run_flows;
//!
//! let scenario = scenarios::cluster_ip_masquerade().unwrap();
//! let mut dp = MemoryDataplane::new();
//! run_flows(&mut dp, &scenario).unwrap();
//! ```

mod compile;
pub mod kernel;
mod trace;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use async_trait::async_trait;
use svcroute_core::dataplane::{ApplyReport, Capabilities, SyncKind};
use svcroute_core::decide::Packet;
use svcroute_core::model::{IpFamily, ProxyConfig};
use svcroute_core::select::ServicePortName;
use svcroute_core::{ChangeSet, Dataplane, DataplaneError, Decision, Desired, TraceError, Verdict};

pub use kernel::{KernelError, MemoryKernel};
use kernel::{Op, Table};

use crate::properties::Backend;

const BACKEND: &str = "memory";

/// What the dataplane believes it programmed: the tables `trace` walks, and each service
/// port's contribution (what an incremental apply diffs against).
#[derive(Debug, Clone, Default)]
struct Shadow {
    config: Option<Arc<ProxyConfig>>,
    tables: BTreeMap<IpFamily, Table>,
    owned: BTreeMap<ServicePortName, BTreeMap<IpFamily, Table>>,
}

/// The in-memory reference dataplane. See the module docs.
#[derive(Debug, Default)]
pub struct MemoryDataplane {
    kernel: MemoryKernel,
    shadow: Shadow,
    needs_full_sync: bool,
}

fn kernel_error(operation: &str, e: KernelError) -> DataplaneError {
    DataplaneError::Kernel {
        backend: BACKEND,
        operation: operation.to_string(),
        message: e.to_string(),
        retryable: false,
    }
}

fn op_bytes(op: &Op) -> usize {
    match op {
        Op::ReplaceTable { table, contents } => kernel::render_table(table, contents).len(),
        Op::DeleteTable { table } => table.len() + 14,
        Op::Put { key, value, .. } => key.to_string().len() + value.to_string().len() + 8,
        Op::Delete { key, .. } => key.to_string().len() + 8,
    }
}

impl MemoryDataplane {
    /// A dataplane on a fresh, empty kernel.
    pub fn new() -> Self {
        MemoryDataplane::default()
    }

    /// A dataplane on an existing kernel (e.g. one an earlier instance programmed).
    pub fn with_kernel(kernel: MemoryKernel) -> Self {
        MemoryDataplane {
            kernel,
            shadow: Shadow::default(),
            needs_full_sync: false,
        }
    }

    /// A handle on its kernel.
    pub fn kernel(&self) -> &MemoryKernel {
        &self.kernel
    }

    /// Our tables as the kernel holds them, normalised.
    pub fn snapshot(&self) -> String {
        self.kernel.render(&[
            compile::table_name(IpFamily::IPv4),
            compile::table_name(IpFamily::IPv6),
        ])
    }

    /// Whether the last write failed and the next call must be a full sync.
    pub fn needs_full_sync(&self) -> bool {
        self.needs_full_sync
    }

    /// Commits each transaction, in order; on the first failure marks the dataplane for a
    /// full sync and returns the error (the shadow is the caller's to leave alone).
    fn commit_all(
        &mut self,
        operation: &str,
        transactions: &[Vec<Op>],
    ) -> Result<ApplyReport, DataplaneError> {
        let mut report = ApplyReport::default();
        for ops in transactions {
            if let Err(e) = self.kernel.commit(ops) {
                self.needs_full_sync = true;
                return Err(kernel_error(operation, e));
            }
            report.writes += 1;
            report.bytes += ops.iter().map(op_bytes).sum::<usize>();
        }
        Ok(report)
    }

    fn full(&mut self, desired: &Desired) -> Result<ApplyReport, DataplaneError> {
        let config = desired.config_arc().clone();
        let mut shadow = Shadow {
            config: Some(config.clone()),
            ..Shadow::default()
        };
        for family in IpFamily::ALL {
            if config.handles(family) {
                shadow
                    .tables
                    .insert(family, compile::globals(&config, family));
            }
        }
        for port in desired.ports() {
            let contribution = compile::port(&config, port);
            for (family, elements) in &contribution {
                if let Some(table) = shadow.tables.get_mut(family) {
                    table.extend(elements.iter().map(|(k, v)| (k.clone(), v.clone())));
                }
            }
            shadow.owned.insert(port.name.clone(), contribution);
        }
        let mut transactions = Vec::new();
        for family in IpFamily::ALL {
            let table = compile::table_name(family).to_string();
            match shadow.tables.get(&family) {
                Some(contents) => transactions.push(vec![Op::ReplaceTable {
                    table,
                    contents: contents.clone(),
                }]),
                None if self.kernel.has_table(&table) => {
                    transactions.push(vec![Op::DeleteTable { table }])
                }
                None => {}
            }
        }
        let mut report = self.commit_all("sync_full", &transactions)?;
        report.service_ports = desired.len();
        self.shadow = shadow;
        self.needs_full_sync = false;
        Ok(report)
    }

    fn incremental(&mut self, changes: &ChangeSet) -> Result<ApplyReport, DataplaneError> {
        let Some(config) = self.shadow.config.clone() else {
            return Err(DataplaneError::OutOfSync {
                backend: BACKEND,
                message: "apply before any full sync".to_string(),
            });
        };
        // Union of what the changed ports contributed before, and contribute now.
        let mut before: BTreeMap<IpFamily, Table> = BTreeMap::new();
        let mut after: BTreeMap<IpFamily, Table> = BTreeMap::new();
        let mut new_owned = Vec::new();
        for change in changes.changes() {
            if let Some(old) = self.shadow.owned.get(&change.name) {
                for (family, elements) in old {
                    before.entry(*family).or_default().extend(elements.clone());
                }
            }
            let now = change
                .current
                .as_ref()
                .map(|p| compile::port(&config, p))
                .unwrap_or_default();
            for (family, elements) in &now {
                after.entry(*family).or_default().extend(elements.clone());
            }
            new_owned.push((change.name.clone(), now));
        }
        let mut per_family: Vec<(IpFamily, Vec<Op>)> = Vec::new();
        for family in IpFamily::ALL {
            if !self.shadow.tables.contains_key(&family) {
                continue;
            }
            let table = compile::table_name(family).to_string();
            let empty = Table::new();
            let old = before.get(&family).unwrap_or(&empty);
            let new = after.get(&family).unwrap_or(&empty);
            let mut ops: Vec<Op> = old
                .keys()
                .filter(|k| !new.contains_key(*k))
                .map(|k| Op::Delete {
                    table: table.clone(),
                    key: k.clone(),
                })
                .collect();
            ops.extend(
                new.iter()
                    .filter(|(k, v)| old.get(*k) != Some(*v))
                    .map(|(k, v)| Op::Put {
                        table: table.clone(),
                        key: k.clone(),
                        value: v.clone(),
                    }),
            );
            if !ops.is_empty() {
                per_family.push((family, ops));
            }
        }
        let transactions: Vec<Vec<Op>> = per_family.iter().map(|(_, ops)| ops.clone()).collect();
        let mut report = self.commit_all("apply", &transactions)?;
        report.service_ports = changes.len();

        // Every write succeeded: the shadow follows.
        for (family, ops) in per_family {
            let Some(table) = self.shadow.tables.get_mut(&family) else {
                continue;
            };
            for op in ops {
                match op {
                    Op::Put { key, value, .. } => {
                        table.insert(key, value);
                    }
                    Op::Delete { key, .. } => {
                        table.remove(&key);
                    }
                    Op::ReplaceTable { .. } | Op::DeleteTable { .. } => {}
                }
            }
        }
        for (name, now) in new_owned {
            if now.is_empty() {
                self.shadow.owned.remove(&name);
            } else {
                self.shadow.owned.insert(name, now);
            }
        }
        Ok(report)
    }

    /// Number of elements our shadow holds, over both families (for tests and diagnostics).
    pub fn element_count(&self) -> usize {
        self.shadow.tables.values().map(BTreeMap::len).sum()
    }

    /// Service ports whose elements the shadow records.
    pub fn programmed_ports(&self) -> BTreeSet<ServicePortName> {
        self.shadow.owned.keys().cloned().collect()
    }
}

#[async_trait]
impl Dataplane for MemoryDataplane {
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
            SyncKind::Full => self.full(desired),
            SyncKind::Incremental => self.incremental(changes),
        }
    }

    async fn sync_full(&mut self, desired: &Desired) -> Result<ApplyReport, DataplaneError> {
        self.full(desired)
    }

    async fn cleanup(&mut self) -> Result<(), DataplaneError> {
        let transactions: Vec<Vec<Op>> = IpFamily::ALL
            .iter()
            .map(|f| compile::table_name(*f).to_string())
            .filter(|t| self.kernel.has_table(t))
            .map(|table| vec![Op::DeleteTable { table }])
            .collect();
        self.commit_all("cleanup", &transactions)?;
        self.shadow = Shadow::default();
        self.needs_full_sync = false;
        Ok(())
    }

    fn trace(&self, packet: &Packet) -> Result<Decision, TraceError> {
        if !trace::same_family(packet) {
            return Ok(Decision::simple(Verdict::NoMatch));
        }
        match self.shadow.tables.get(&IpFamily::of(&packet.destination)) {
            Some(table) => trace::trace(table, packet),
            None => Ok(Decision::simple(Verdict::NoMatch)),
        }
    }
}

/// The conformance harness for [`MemoryDataplane`].
#[derive(Debug, Clone, Copy, Default)]
pub struct MemoryBackend;

impl Backend for MemoryBackend {
    type Dp = MemoryDataplane;

    fn name() -> &'static str {
        BACKEND
    }

    fn new(_config: &ProxyConfig) -> MemoryDataplane {
        MemoryDataplane::new()
    }

    fn snapshot(dp: &MemoryDataplane) -> String {
        dp.snapshot()
    }

    fn kernel_writes(dp: &MemoryDataplane) -> usize {
        dp.kernel.writes()
    }

    fn fail_next_writes(dp: &mut MemoryDataplane, n: usize) {
        dp.kernel.fail_next_writes(n);
    }

    fn fail_writes_after(dp: &mut MemoryDataplane, skip: usize, n: usize) -> bool {
        dp.kernel.fail_writes_after(skip, n);
        true
    }
}
