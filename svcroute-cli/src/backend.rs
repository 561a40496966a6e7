//! The backends `svcroute trace` can consult.
//!
//! - `reference`: the core's [`decide()`], the decision every backend must reproduce.
//! - `memory`: the conformance crate's in-memory `MemoryDataplane`, programmed by
//!   `sync_full(desired)` and then traced through what it programmed
//!   ([`Dataplane::trace`]).
//! - `iptables`: the `svcroute-iptables` dataplane on its in-memory `FakeKernel`, the same
//!   way; nothing touches this node's kernel. `trace --live` instead traces the rules this
//!   node's kernel holds ([`crate::live`]).
//! - `nft`: the `svcroute-nft` dataplane on its in-memory `FakeKernel`, likewise (`--live`:
//!   the tables this node's kernel holds).
//!
//! Adding a backend is one variant in [`BackendKind`] (with its name) and one arm in [`open`];
//! any [`Dataplane`] is programmed and traced through [`programmed`].

use clap::ValueEnum;
use svcroute_conformance::memory::MemoryDataplane;
use svcroute_core::dataplane::Dataplane;
use svcroute_core::{Decision, Desired, Packet, TraceError, decide};
use svcroute_iptables::IptablesDataplane;
use svcroute_nft::NftDataplane;
use thiserror::Error;

use crate::error::CliError;

/// `--backend`: one backend, or all of them side by side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BackendChoice {
    /// The core's reference decision.
    Reference,
    /// The in-memory dataplane after a full sync.
    Memory,
    /// The iptables dataplane after a full sync into a fake kernel (with --live: the rules
    /// this node's kernel holds).
    Iptables,
    /// The nftables dataplane after a full sync into a fake kernel (with --live: the tables
    /// this node's kernel holds).
    Nft,
    /// Every backend, compared.
    All,
}

impl BackendChoice {
    /// The backends this choice consults.
    pub fn kinds(self) -> Vec<BackendKind> {
        match self {
            BackendChoice::Reference => vec![BackendKind::Reference],
            BackendChoice::Memory => vec![BackendKind::Memory],
            BackendChoice::Iptables => vec![BackendKind::Iptables],
            BackendChoice::Nft => vec![BackendKind::Nft],
            BackendChoice::All => BackendKind::ALL.to_vec(),
        }
    }
}

/// One backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    /// The core's reference decision.
    Reference,
    /// The conformance crate's in-memory dataplane.
    Memory,
    /// kube-proxy's iptables chains.
    Iptables,
    /// svcroute's nftables tables.
    Nft,
}

impl BackendKind {
    /// Every backend, in display order.
    pub const ALL: [BackendKind; 4] = [
        BackendKind::Reference,
        BackendKind::Memory,
        BackendKind::Iptables,
        BackendKind::Nft,
    ];

    /// The name `--backend` and the JSON output use.
    pub fn name(self) -> &'static str {
        match self {
            BackendKind::Reference => "reference",
            BackendKind::Memory => "memory",
            BackendKind::Iptables => "iptables",
            BackendKind::Nft => "nft",
        }
    }
}

/// Why a backend could not answer for a packet.
#[derive(Debug, Clone, Error)]
pub enum TraceFailure {
    /// The backend's tracer failed on what it holds.
    #[error(transparent)]
    Trace(#[from] TraceError),
    /// The rules to trace could not be read (`trace --live`).
    #[error("{0}")]
    Rules(String),
}

/// Something that answers what happens to a packet.
pub trait Tracer {
    /// The decision for `packet`.
    fn trace(&self, packet: &Packet) -> Result<Decision, TraceFailure>;
}

/// An opened backend, ready to trace.
pub struct Backend<'a> {
    /// Which backend.
    pub kind: BackendKind,
    tracer: Box<dyn Tracer + 'a>,
}

impl<'a> Backend<'a> {
    /// A backend answering through `tracer`.
    pub fn new(kind: BackendKind, tracer: Box<dyn Tracer + 'a>) -> Self {
        Backend { kind, tracer }
    }

    /// The decision for `packet`.
    pub fn trace(&self, packet: &Packet) -> Result<Decision, TraceFailure> {
        self.tracer.trace(packet)
    }
}

/// Opens a backend on the desired state.
pub fn open(kind: BackendKind, desired: &Desired) -> Result<Backend<'_>, CliError> {
    let tracer: Box<dyn Tracer + '_> = match kind {
        BackendKind::Reference => Box::new(Reference(desired)),
        BackendKind::Memory => programmed(kind, Box::new(MemoryDataplane::new()), desired)?,
        BackendKind::Iptables => programmed(
            kind,
            Box::new(IptablesDataplane::new(Box::new(
                svcroute_iptables::FakeKernel::new(),
            ))),
            desired,
        )?,
        BackendKind::Nft => programmed(
            kind,
            Box::new(NftDataplane::new(Box::new(svcroute_nft::FakeKernel::new()))),
            desired,
        )?,
    };
    Ok(Backend::new(kind, tracer))
}

/// The core's reference decision.
struct Reference<'a>(&'a Desired);

impl Tracer for Reference<'_> {
    fn trace(&self, packet: &Packet) -> Result<Decision, TraceFailure> {
        Ok(decide(self.0, packet))
    }
}

/// A dataplane that programmed the desired state; traces interpret what it programmed.
struct Programmed(Box<dyn Dataplane>);

impl Tracer for Programmed {
    fn trace(&self, packet: &Packet) -> Result<Decision, TraceFailure> {
        Ok(self.0.trace(packet)?)
    }
}

/// A single-threaded runtime for a backend's async calls.
pub fn runtime(backend: &'static str) -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .map_err(|source| CliError::Runtime { backend, source })
}

/// Programs `desired` into `dataplane` with a full sync, on a single-threaded runtime.
fn programmed(
    kind: BackendKind,
    mut dataplane: Box<dyn Dataplane>,
    desired: &Desired,
) -> Result<Box<dyn Tracer>, CliError> {
    runtime(kind.name())?
        .block_on(dataplane.sync_full(desired))
        .map_err(|source| CliError::Backend {
            backend: kind.name(),
            source,
        })?;
    Ok(Box::new(Programmed(dataplane)))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use svcroute_core::dataplane::{ApplyReport, Capabilities, DataplaneError};
    use svcroute_core::model::ProxyConfig;
    use svcroute_core::{ChangeSet, Decision};

    use super::*;

    /// A dataplane that remembers the last full sync and traces it with the reference.
    struct FakeDataplane(Option<Desired>);

    #[async_trait::async_trait]
    impl Dataplane for FakeDataplane {
        fn capabilities(&self) -> Capabilities {
            Capabilities {
                name: "fake",
                families: Vec::new(),
                protocols: Vec::new(),
                session_affinity: true,
                source_ranges: true,
                incremental: false,
            }
        }
        async fn apply(
            &mut self,
            desired: &Desired,
            _changes: &ChangeSet,
        ) -> Result<ApplyReport, DataplaneError> {
            self.sync_full(desired).await
        }
        async fn sync_full(&mut self, desired: &Desired) -> Result<ApplyReport, DataplaneError> {
            self.0 = Some(desired.clone());
            Ok(ApplyReport::default())
        }
        async fn cleanup(&mut self) -> Result<(), DataplaneError> {
            self.0 = None;
            Ok(())
        }
        fn trace(&self, packet: &Packet) -> Result<Decision, TraceError> {
            self.0
                .as_ref()
                .map(|d| decide(d, packet))
                .ok_or_else(|| TraceError::Inconsistent("not synced".into()))
        }
    }

    #[test]
    fn programmed_dataplanes_trace_after_a_full_sync() {
        let desired = Desired::new(Arc::new(ProxyConfig::default()));
        let tracer =
            programmed(BackendKind::Memory, Box::new(FakeDataplane(None)), &desired).unwrap();
        let packet: Packet = "10.0.0.1 10.96.0.1:80/tcp".parse().unwrap();
        assert_eq!(tracer.trace(&packet).unwrap().verdict.name(), "no-match");
    }

    #[test]
    fn all_means_every_backend() {
        assert_eq!(BackendChoice::All.kinds(), BackendKind::ALL);
        assert_eq!(
            BackendChoice::Iptables.kinds(),
            [BackendKind::Iptables],
            "one variant per backend"
        );
        assert_eq!(BackendChoice::Nft.kinds(), [BackendKind::Nft]);
        let names: Vec<&str> = BackendKind::ALL.iter().map(|k| k.name()).collect();
        assert_eq!(names, ["reference", "memory", "iptables", "nft"]);
        // Every backend `all` consults can be chosen on its own, under the same name.
        for kind in BackendKind::ALL {
            let choice = BackendChoice::from_str(kind.name(), false).unwrap();
            assert_eq!(choice.kinds(), [kind]);
        }
    }

    #[test]
    fn the_iptables_backend_traces_its_fake_kernel() {
        let desired = Desired::new(Arc::new(ProxyConfig::default()));
        let backend = open(BackendKind::Iptables, &desired).unwrap();
        let packet: Packet = "10.0.0.1 10.96.0.1:80/tcp".parse().unwrap();
        assert_eq!(backend.trace(&packet).unwrap().verdict.name(), "no-match");
    }

    #[test]
    fn the_nft_backend_traces_its_fake_kernel() {
        let desired = Desired::new(Arc::new(ProxyConfig::default()));
        let backend = open(BackendKind::Nft, &desired).unwrap();
        assert_eq!(backend.kind.name(), "nft");
        let packet: Packet = "10.0.0.1 10.96.0.1:80/tcp".parse().unwrap();
        assert_eq!(backend.trace(&packet).unwrap().verdict.name(), "no-match");
    }
}
