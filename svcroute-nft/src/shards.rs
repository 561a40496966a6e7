//! A family's tables: the common table, which holds every filter hook and masquerading, and
//! the shards, which split the service ports among them and hold their nat hooks, frontend
//! maps and chains.
//!
//! Why shards: whenever a transaction adds a rule or a `jump`/`goto` element (an endpoint
//! leaving or joining changes the `numgen random mod N` rule of its port), the kernel
//! re-validates at commit every chain reachable from the base chains of that table. In one
//! table of 5,000 services × 50 endpoints that walk is most of a change's cost (34 ms); in a
//! shard of 1,000 the change takes 3–4 ms. Finding a set by name walks the table's list of
//! sets too, so a full sync gains as well. Every new connection runs the nat chains of the
//! shards in turn, a hash lookup or two each (the shard's frontends, then its NodePorts
//! before any `fib` lookup), so shards should not be much smaller: at 2,048 ports a change
//! takes 10 ms, at 512 as long as at 1,024.
//!
//! A family of no more ports than one shard holds is a single table: the common table is its
//! only shard and holds both skeletons and every part of every port. A service's ports all go
//! to the shard its name hashes to. Their nat chains run in turn
//! (at the same hook and priority, in the kernel's order): each looks up its own frontend
//! maps only, frontends are unique to one service ([`svcroute_core`] rejects a second claim),
//! and the first DNAT ends the hook's nat chains. The number of shards is chosen at each full
//! sync from the number of ports; a family that grows past twice its shards' share asks for
//! a full sync, which deals its ports out again ([`FamilyTables::needs_more_shards`]).

use std::sync::Arc;

use svcroute_core::model::{IpFamily, ProxyConfig, ServiceName};
use svcroute_core::select::{ResolvedServicePort, ServicePortName};
use svcroute_core::{ChangeSet, Desired};

use crate::names;
use crate::parallel;
use crate::render::{self, PortParts};
use crate::ruleset::Table;
use crate::state::{PortChanges, PortRun, TableState};
use crate::transaction::{TableId, Transaction};

/// Service ports one shard should hold at most, by default; a family of more is split.
pub const PORTS_PER_SHARD: usize = 1024;

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

/// The changed ports of `changes` rendered in `family` under `config`.
pub fn part_changes(config: &ProxyConfig, changes: &ChangeSet, family: IpFamily) -> PartChanges {
    let render = |p: &Arc<ResolvedServicePort>| render::port_objects(config, p, family);
    (changes.changes().iter())
        .map(|c| (c.name.clone(), c.current.as_ref().and_then(render)))
        .collect()
}

/// One family's tables as programmed.
#[derive(Debug, Clone)]
pub struct FamilyTables {
    common: TableState,
    /// Empty when the common table is the only shard.
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
        // The tables' runs per thread: the common table's, then each shard's (none when the
        // common table is the only shard).
        let tables = if count == 1 { 1 } else { 1 + count };
        let runs = parallel::fold_pieces(
            &ports,
            PORTS_PER_PIECE,
            || (0..tables).map(|_| PortRun::default()).collect::<Vec<_>>(),
            |runs, ports| {
                for port in ports {
                    let Some(parts) = render::port_objects(config, port, family) else {
                        continue;
                    };
                    if tables == 1 {
                        runs[0].push(port.name.clone(), parts.merged());
                    } else {
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
        let mut by_table: Vec<Vec<PortRun>> = (0..tables).map(|_| Vec::new()).collect();
        for thread in runs {
            for (table_runs, run) in by_table.iter_mut().zip(thread) {
                table_runs.push(run);
            }
        }
        let mut by_table = by_table.into_iter();
        let common_runs = by_table.next().unwrap_or_default();
        let shard_runs: Vec<(usize, Vec<PortRun>)> = by_table.enumerate().collect();
        let common_skeleton = if tables == 1 {
            render::single_table_skeleton(config, family)
        } else {
            render::common_skeleton(config, family)
        };
        // Large families: the common table (every hairpin pair) on one thread, the shards on
        // the other.
        let (common, shards) = parallel::join(
            ports.len() >= 1024,
            || TableState::from_runs(table, common_skeleton, common_runs),
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

    /// The number of shards (1 when the common table is the only one).
    pub fn shards(&self) -> usize {
        self.shards.len().max(1)
    }

    /// The number of this family's service ports once `changes` are applied (every port of
    /// the family has objects in the common table).
    pub fn ports_after(&self, changes: &ChangeSet) -> usize {
        let family = self.family();
        changes
            .changes()
            .iter()
            .fold(self.common.port_count(), |n, c| {
                let was = self.common.holds(&c.name);
                let will = (c.current.as_ref()).is_some_and(|p| p.family(family).is_some());
                (n + usize::from(will)).saturating_sub(usize::from(was))
            })
    }

    /// Whether `ports` service ports of this family are more than twice what the shards
    /// should hold: a full sync then deals them out to more shards.
    pub fn needs_more_shards(&self, ports: usize) -> bool {
        let share = self.per_shard.max(1).saturating_mul(self.shards());
        ports > share.saturating_mul(2) && self.shards() < shard_count(ports, self.per_shard)
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
            if self.shards.is_empty() {
                plan.common.push((name, parts.map(PortParts::merged)));
                continue;
            }
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
    use std::collections::BTreeSet;

    use svcroute_conformance::objects::{ServiceBuilder, SliceBuilder, ep};
    use svcroute_core::State;
    use svcroute_core::model::ProxyConfig;

    use super::*;
    use crate::names::PortNames;
    use crate::ruleset::{ElemValue, Verdict};

    const V4: IpFamily = IpFamily::IPv4;

    /// A core state with services `web0..web{n-1}`, each with one port and two endpoints.
    fn state(n: u8) -> State {
        let config = ProxyConfig {
            cluster_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
            ..ProxyConfig::default()
        };
        let mut state = State::new(config).unwrap();
        for i in 0..n {
            let name = format!("web{i}");
            let svc = ServiceBuilder::new("default", &name)
                .cluster_ip(&format!("10.96.0.{}", 10 + i))
                .port("http", 80, "TCP");
            state.apply(svc.apply()).unwrap();
            state.apply(slice(&name, &[1, 2])).unwrap();
        }
        state.take_changes();
        state
    }

    fn slice(service: &str, endpoints: &[u8]) -> svcroute_core::watch::WatchEvent {
        let slice = SliceBuilder::ipv4("default", &format!("{service}-1"), service)
            .port("http", 8080, "TCP");
        let slice = endpoints
            .iter()
            .fold(slice, |s, e| s.endpoint(ep(&format!("10.244.1.{e}"))));
        slice.apply()
    }

    #[test]
    fn each_service_lives_in_the_shard_its_name_hashes_to() {
        let state = state(12);
        let tables = FamilyTables::build(state.desired(), V4, "t", 3);
        assert_eq!(tables.shards(), 4);
        let all: Vec<(&TableId, &Table)> = tables.tables().collect();
        assert_eq!(&*all[0].0.name, "t");
        for port in state.desired().ports() {
            let shard = shard_of(&port.name.service, 4);
            let (id, table) = all[1 + shard];
            assert_eq!(*id.name, names::shard_table("t", shard));
            let svc = PortNames::new(&port.name).endpoints(port.internal_traffic_policy);
            assert!(table.chains.contains_key(&svc), "{svc} in {}", id.name);
            let targets: BTreeSet<&ElemValue> = table.sets[names::SERVICE_IPS]
                .elements
                .values()
                .filter_map(|e| e.value.as_ref())
                .collect();
            assert!(targets.contains(&ElemValue::Verdict(Verdict::Goto(svc))));
        }
        let common = all[0].1;
        assert_eq!(common.sets[names::CLUSTER_IPS].elements.len(), 12);
        assert!(!common.chains.keys().any(|c| c.starts_with("svc-")));
    }

    #[test]
    fn a_change_writes_to_its_shard_and_the_common_table_only() {
        let mut state = state(12);
        let mut tables = FamilyTables::build(state.desired(), V4, "t", 3);
        state.apply(slice("web5", &[1, 2, 3])).unwrap();
        let changes = state.take_changes();
        let parts = part_changes(state.desired().config(), &changes, V4);
        let mut tx = Transaction::new();
        let plan = tables.plan(parts, &mut tx);
        let written: BTreeSet<&str> = tx.commands.iter().map(|(t, _)| &*t.name).collect();
        let shard = shard_of(&ServiceName::new("default", "web5"), 4);
        let shard_name = names::shard_table("t", shard);
        let expected = BTreeSet::from(["t", shard_name.as_str()]);
        // The hairpin pair goes to the common table, the endpoint to the shard.
        assert_eq!(written, expected, "{}", tx.text());
        tables.commit(plan);
        let rebuilt = FamilyTables::build(state.desired(), V4, "t", 3);
        let now: Vec<(&TableId, &Table)> = tables.tables().collect();
        assert_eq!(now, rebuilt.tables().collect::<Vec<_>>());
    }

    #[test]
    fn a_family_one_shard_holds_is_one_table() {
        let state = state(3);
        let tables = FamilyTables::build(state.desired(), V4, "t", 3);
        assert_eq!(tables.shards(), 1);
        let all: Vec<(&TableId, &Table)> = tables.tables().collect();
        assert_eq!(all.len(), 1);
        let table = all[0].1;
        for chain in [
            names::NAT_PREROUTING,
            names::FILTER_INPUT,
            names::NAT_POSTROUTING,
        ] {
            assert!(table.chains.contains_key(chain), "{chain}");
        }
        assert_eq!(table.sets[names::SERVICE_IPS].elements.len(), 3);
        assert_eq!(table.sets[names::CLUSTER_IPS].elements.len(), 3);
    }

    #[test]
    fn families_that_outgrow_their_shards_ask_for_more() {
        let state = state(4);
        let tables = FamilyTables::build(state.desired(), V4, "t", 2);
        assert_eq!(tables.shards(), 2);
        assert!(!tables.needs_more_shards(8));
        assert!(tables.needs_more_shards(9));
        assert!(!tables.needs_more_shards(0));
        let huge = FamilyTables::build(state.desired(), V4, "t", usize::MAX);
        assert!(!huge.needs_more_shards(usize::MAX));
    }

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
            counts[shard_of(&ServiceName::new("ns", format!("svc-{i}")), 8)] += 1;
        }
        assert!(counts.iter().all(|c| (800..1200).contains(c)), "{counts:?}");
        let web = ServiceName::new("default", "web");
        assert_eq!(shard_of(&web, 1), 0);
        assert_eq!(shard_of(&web, 8), shard_of(&web, 8));
    }
}
