//! The whole svcroute conformance suite against the nftables backend on its fake kernel: every
//! scenario's flows traced through the programmed ruleset, and the four backend properties.

use async_trait::async_trait;
use svcroute_conformance::Backend;
use svcroute_core::dataplane::{ApplyReport, Capabilities};
use svcroute_core::decide::Packet;
use svcroute_core::model::{IpFamily, ProxyConfig};
use svcroute_core::{ChangeSet, Dataplane, DataplaneError, Decision, Desired, TraceError};
use svcroute_nft::ruleset::Element;
use svcroute_nft::{FakeKernel, NftDataplane, Table, names, slots};

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

/// The conformance harness.
pub struct NftBackend;

impl Backend for NftBackend {
    type Dp = Harnessed;

    fn name() -> &'static str {
        "nft"
    }

    fn new(_config: &ProxyConfig) -> Harnessed {
        let kernel = FakeKernel::new();
        Harnessed {
            dp: NftDataplane::new(Box::new(kernel.clone())),
            kernel,
        }
    }

    fn snapshot(dp: &Harnessed) -> String {
        IpFamily::ALL
            .iter()
            .map(|f| {
                let table = dp.kernel.table(*f, names::TABLE).map(canonical_slots);
                format!("# {f:?}\n{table:#?}\n")
            })
            .collect()
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

svcroute_conformance::conformance_tests!(NftBackend);
