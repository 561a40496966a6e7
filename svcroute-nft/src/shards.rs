//! A family's tables: the common table, which holds every filter hook and masquerading, and
//! the shards, which split the service ports among them and hold their nat hooks, frontend
//! maps and chains.
//!
//! Why shards: whenever a transaction adds a rule or a `jump`/`goto` element (an endpoint
//! leaving or joining changes the `numgen random mod N` rule of its port), the kernel
//! re-validates at commit every chain reachable from the base chains of that table. In one
//! table of 5,000 services that walk is most of a change's cost; in a shard of 500 it is a
//! tenth. Finding a set by name walks the table's list of sets too, so a full sync gains as
//! well.
//!
//! A service's ports all go to the shard its name hashes to. Their nat chains run in turn
//! (at the same hook and priority, in the kernel's order): each looks up its own frontend
//! maps only, frontends are unique to one service ([`svcroute_core`] rejects a second claim),
//! and the first DNAT ends the hook's nat chains. The number of shards is chosen at each full
//! sync from the number of ports; a family that grows past twice its shards' share asks for
//! a full sync, which deals its ports out again ([`FamilyTables::needs_more_shards`]).

use std::sync::Arc;

use svcroute_core::Desired;
use svcroute_core::model::{IpFamily, ServiceName};
use svcroute_core::select::{ResolvedServicePort, ServicePortName};

use crate::names;
use crate::parallel;
use crate::render::{self, PortParts};
use crate::ruleset::Table;
use crate::state::{PortChanges, PortRun, TableState};
use crate::transaction::{TableId, Transaction};

/// Service ports one shard should hold at most, by default; a family of more is split.
pub const PORTS_PER_SHARD: usize = 512;

/// Shards of a family at most.
const MAX_SHARDS: usize = 256;

/// The number of shards for `ports` service ports, `per_shard` in each.
pub fn shard_count(ports: usize, per_shard: usize) -> usize {
    ports.div_ceil(per_shard.max(1)).clamp(1, MAX_SHARDS)
}

/// The shard of `service` among `count` (FNV-1a of `namespace/name`: stable across runs and
/// builds).
pub fn shard_of(service: &ServiceName, count: usize) -> usize {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let bytes = service
        .namespace
        .bytes()
        .chain([b'/'])
        .chain(service.name.bytes());
    for b in bytes {
        hash = (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    (hash % count.max(1) as u64) as usize
}

/// Changed service ports and their new parts in one family (`None`: gone from it).
pub type PartChanges = Vec<(ServicePortName, Option<PortParts>)>;

/// One family's tables as programmed.
#[derive(Debug, Clone)]
pub struct FamilyTables {
    common: TableState,
    shards: Vec<TableState>,
    /// Service ports the shards should hold at most each.
    per_shard: usize,
}

/// The planned changes of every table of a family, for [`FamilyTables::commit`].
#[derive(Debug)]
pub struct FamilyPlan {
    common: PortChanges,
    shards: Vec<PortChanges>,
}

impl FamilyTables {
    /// The tables of `family` under `desired`, named after `table`, with as many shards as
    /// `per_shard` ports each call for. Ports render on every core: threads take pieces of
    /// them as they go, and gather the objects of each table while they are hot in cache.
    pub fn build(desired: &Desired, family: IpFamily, table: &str, per_shard: usize) -> Self {
        const PORTS_PER_PIECE: usize = 512;
        let config = desired.config();
        let ports: Vec<&Arc<ResolvedServicePort>> = desired
            .ports()
            .filter(|p| p.family(family).is_some())
            .collect();
        let count = shard_count(ports.len(), per_shard);
        // Per thread: the common table's run, then each shard's.
        let runs = parallel::fold_pieces(
            &ports,
            PORTS_PER_PIECE,
            || (0..=count).map(|_| PortRun::default()).collect::<Vec<_>>(),
            |runs, ports| {
                for port in ports {
                    if let Some(parts) = render::port_objects(config, port, family) {
                        let shard = 1 + shard_of(&port.name.service, count);
                        runs[0].push(port.name.clone(), parts.common);
                        runs[shard].push(port.name.clone(), parts.shard);
                    }
                }
            },
            |mut runs| {
                runs.iter_mut().for_each(PortRun::sort);
                runs
            },
        );
        let mut by_table: Vec<Vec<PortRun>> = (0..=count).map(|_| Vec::new()).collect();
        for thread in runs {
            for (table_runs, run) in by_table.iter_mut().zip(thread) {
                table_runs.push(run);
            }
        }
        let mut by_table = by_table.into_iter();
        let common_runs = by_table.next().unwrap_or_default();
        let shard_runs: Vec<(usize, Vec<PortRun>)> = by_table.enumerate().collect();
        // The common table (every hairpin pair) on one thread, the shards on the other.
        let (common, shards) = parallel::join(
            true,
            || TableState::from_runs(table, render::common_skeleton(config, family), common_runs),
            || {
                shard_runs
                    .into_iter()
                    .map(|(i, runs)| {
                        TableState::from_runs(
                            &names::shard_table(table, i),
                            render::shard_skeleton(config, family),
                            runs,
                        )
                    })
                    .collect()
            },
        );
        FamilyTables {
            common,
            shards,
            per_shard,
        }
    }

    /// The family.
    pub fn family(&self) -> IpFamily {
        self.common.id().family
    }

    /// Every table, the common one first, then the shards in order.
    pub fn tables(&self) -> impl Iterator<Item = (&TableId, &Table)> {
        std::iter::once(&self.common)
            .chain(&self.shards)
            .map(|s| (s.id(), s.table()))
    }

    /// The number of shards.
    pub fn shards(&self) -> usize {
        self.shards.len()
    }

    /// Whether `ports` service ports of this family are more than twice what the shards
    /// should hold: a full sync then deals them out to more shards.
    pub fn needs_more_shards(&self, ports: usize) -> bool {
        ports > 2 * self.per_shard.max(1) * self.shards.len()
            && self.shards.len() < shard_count(ports, self.per_shard)
    }

    /// Appends the commands writing every table from scratch (after their deletion).
    pub fn write_full(&self, tx: &mut Transaction) {
        self.common.write_full(tx);
        for shard in &self.shards {
            shard.write_full(tx);
        }
    }

    /// Appends the commands that give each port of `changes` its new parts in every table
    /// ([`TableState::plan`]); pass the plan to [`FamilyTables::commit`] once the kernel took
    /// the transaction.
    pub fn plan(&self, changes: PartChanges, tx: &mut Transaction) -> FamilyPlan {
        let mut plan = FamilyPlan {
            common: Vec::with_capacity(changes.len()),
            shards: vec![Vec::new(); self.shards.len()],
        };
        for (name, parts) in changes {
            let shard = shard_of(&name.service, self.shards.len());
            let (common, ours) = match parts {
                Some(p) => (Some(p.common), Some(p.shard)),
                None => (None, None),
            };
            if let Some(changes) = plan.shards.get_mut(shard) {
                changes.push((name.clone(), ours));
            }
            plan.common.push((name, common));
        }
        for (state, changes) in self.shards.iter().zip(&mut plan.shards) {
            if !changes.is_empty() {
                state.plan(changes, tx);
            }
        }
        self.common.plan(&mut plan.common, tx);
        plan
    }

    /// Records that the kernel holds what `plan` planned.
    pub fn commit(&mut self, plan: FamilyPlan) {
        for (state, changes) in self.shards.iter_mut().zip(plan.shards) {
            if !changes.is_empty() {
                state.commit(changes);
            }
        }
        self.common.commit(plan.common);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_counts_grow_with_the_ports() {
        assert_eq!(shard_count(0, 512), 1);
        assert_eq!(shard_count(512, 512), 1);
        assert_eq!(shard_count(513, 512), 2);
        assert_eq!(shard_count(5000, 512), 10);
        assert_eq!(shard_count(10, 0), 10);
        assert_eq!(shard_count(usize::MAX, 1), MAX_SHARDS);
    }

    #[test]
    fn services_spread_over_the_shards() {
        let mut counts = [0usize; 8];
        for i in 0..8000 {
            counts[shard_of(&ServiceName::new("ns", &format!("svc-{i}")), 8)] += 1;
        }
        assert!(counts.iter().all(|c| (800..1200).contains(c)), "{counts:?}");
        let web = ServiceName::new("default", "web");
        assert_eq!(shard_of(&web, 1), 0);
        assert_eq!(shard_of(&web, 8), shard_of(&web, 8));
    }
}
