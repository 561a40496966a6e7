//! The whole svcroute conformance suite against the nftables backend on its fake kernel: every
//! scenario's flows traced through the programmed ruleset, and the four backend properties.

use async_trait::async_trait;
use std::collections::BTreeSet;
use svcroute_conformance::Backend;
use svcroute_core::dataplane::{ApplyReport, Capabilities};
use svcroute_core::decide::Packet;
use svcroute_core::model::{IpFamily, ProxyConfig};
use svcroute_core::{ChangeSet, Dataplane, DataplaneError, Decision, Desired, TraceError};

use svcroute_nft::ruleset::{ElemValue, Element, Stmt, Verdict as NftVerdict};
use svcroute_nft::{FakeKernel, NftDataplane, Options, Table, names, slots};

/// The dataplane together with a handle on its fake kernel.
#[derive(Debug)]
pub struct Harnessed {
    dp: NftDataplane,
    kernel: FakeKernel,
}

#[async_trait]
impl Dataplane for Harnessed {
    fn capabilities(&self) -> Capabilities {
        self.dp.capabilities()
    }

    async fn apply(
        &mut self,
        desired: &Desired,
        changes: &ChangeSet,
    ) -> Result<ApplyReport, DataplaneError> {
        self.dp.apply(desired, changes).await
    }

    async fn sync_full(&mut self, desired: &Desired) -> Result<ApplyReport, DataplaneError> {
        self.dp.sync_full(desired).await
    }

    async fn cleanup(&mut self) -> Result<(), DataplaneError> {
        self.dp.cleanup().await
    }

    fn trace(&self, packet: &Packet) -> Result<Decision, TraceError> {
        self.dp.trace(packet)
    }
}

/// `table` with the elements of every endpoint map put in a canonical order over its slots.
///
/// Incremental syncs keep endpoints in the slot they have (`svcroute_nft::slots`: a removed
/// endpoint's slot takes the last one) while a full sync numbers them in render order, so the
/// same endpoints may sit in other slots. `numgen random mod N` picks every slot alike, so
/// what routes is each map's (by name) set of slots and the multiset of its elements, not
/// which element is in which slot: this compares exactly that (slots stay as programmed, so a
/// gap or a missing slot still differs). Everything else is compared as the kernel holds it.
fn canonical_slots(mut table: Table) -> Table {
    for set in table.sets.values_mut() {
        if slots::is_slot_map(&set.decl) {
            let elements = std::mem::take(&mut set.elements);
            let mut values: Vec<Element> = elements.values().cloned().collect();
            values.sort_by_key(|e| (e.value.clone(), e.comment.clone()));
            set.elements = elements.into_keys().zip(values).collect();
        }
    }
    table
}

/// `table` without affinity tombstones: an endpoint that left a ClientIP-affinity port keeps
/// its lookup rule for a while, jumping to its emptied chain (which returns at once) instead
/// of the port's chain being rewritten; a full sync writes neither. A rule whose verdict jumps
/// to an empty regular chain does nothing, and an empty chain nothing refers to is never run:
/// both go.
fn without_tombstones(mut table: Table) -> Table {
    let empty: BTreeSet<String> = (table.chains.iter())
        .filter(|(_, c)| c.hook.is_none() && c.rules.is_empty())
        .map(|(n, _)| n.clone())
        .collect();
    for chain in table.chains.values_mut() {
        chain.rules.retain(|rule| {
            !rule
                .stmts
                .iter()
                .any(|s| matches!(s, Stmt::Verdict(NftVerdict::Jump(to)) if empty.contains(to)))
        });
    }
    let referenced: BTreeSet<String> = (table.chains.values())
        .flat_map(|c| c.rules.iter().flat_map(|r| r.chains().map(str::to_string)))
        .chain(table.sets.values().flat_map(|s| {
            s.elements.values().filter_map(|e| match &e.value {
                Some(ElemValue::Verdict(v)) => v.target().map(str::to_string),
                _ => None,
            })
        }))
        .collect();
    table
        .chains
        .retain(|name, _| !empty.contains(name) || referenced.contains(name));
    table
}

/// Every chain, set and element of `a` and `b` (our tables: the fixed chains and sets they
/// share are the same in each, the rest is in one).
fn union(mut a: Table, b: Table) -> Table {
    a.chains.extend(b.chains);
    for (name, set) in b.sets {
        match a.sets.get_mut(&name) {
            Some(mine) => mine.elements.extend(set.elements),
            None => {
                a.sets.insert(name, set);
            }
        }
    }
    a
}

/// The conformance harness, `PORTS_PER_SHARD` service ports to a shard.
pub struct NftBackend<const PORTS_PER_SHARD: usize>;

impl<const PORTS_PER_SHARD: usize> Backend for NftBackend<PORTS_PER_SHARD> {
    type Dp = Harnessed;

    fn name() -> &'static str {
        "nft"
    }

    fn new(_config: &ProxyConfig) -> Harnessed {
        let kernel = FakeKernel::new();
        let options = Options {
            ports_per_shard: PORTS_PER_SHARD,
            ..Options::default()
        };
        Harnessed {
            dp: NftDataplane::with_options(Box::new(kernel.clone()), options),
            kernel,
        }
    }

    /// The union of our tables of each family. How many shards there are depends on the
    /// history (a full sync deals the ports out again, an incremental one keeps the count
    /// until a family outgrows it; one shard is the common table itself), and which shard
    /// holds a service follows from the count; what the tables hold together does not.
    fn snapshot(dp: &Harnessed) -> String {
        let mut out = String::new();
        for family in IpFamily::ALL {
            let mut tables = dp.kernel.tables(family);
            // The common table first: its comment is the union's.
            let common = tables.remove(names::TABLE);
            let shards = (tables.into_iter())
                .filter(|(name, _)| names::is_ours(names::TABLE, name))
                .map(|(_, table)| table);
            let all = common.into_iter().chain(shards).reduce(union);
            let all = all.map(without_tombstones).map(canonical_slots);
            out.push_str(&format!("# {family:?}\n{all:#?}\n"));
        }
        out
    }

    fn kernel_writes(dp: &Harnessed) -> usize {
        dp.kernel.writes()
    }

    fn fail_next_writes(dp: &mut Harnessed, n: usize) {
        dp.kernel.fail_next_writes(n);
    }

    fn fail_writes_after(dp: &mut Harnessed, skip: usize, n: usize) -> bool {
        dp.kernel.fail_writes_after(skip, n);
        true
    }
}

svcroute_conformance::conformance_tests!(NftBackend<{ svcroute_nft::shards::PORTS_PER_SHARD }>);

/// The same with a shard for every service port or two: services spread over many tables.
mod sharded {
    use super::*;

    svcroute_conformance::conformance_tests!(NftBackend<2>);
}
