//! The whole svcroute conformance suite against the nftables backend on its fake kernel: every
//! scenario's flows traced through the programmed ruleset, and the four backend properties.

use async_trait::async_trait;
use svcroute_conformance::Backend;
use svcroute_core::dataplane::{ApplyReport, Capabilities};
use svcroute_core::decide::Packet;
use svcroute_core::model::{IpFamily, ProxyConfig};
use svcroute_core::{ChangeSet, Dataplane, DataplaneError, Decision, Desired, TraceError};
use svcroute_nft::{FakeKernel, NftDataplane, names};

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
            .map(|f| format!("# {f:?}\n{:#?}\n", dp.kernel.table(*f, names::TABLE)))
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
