//! The backends `svcroute trace` can consult.
//!
//! - `reference`: the core's [`decide()`], the decision every backend must reproduce.
//! - `memory`: the conformance crate's in-memory `MemoryDataplane`, programmed by
//!   `sync_full(desired)` and then traced through what it programmed
//!   ([`Dataplane::trace`]).
//!
//! Adding a backend is one variant in [`BackendKind`] (with its name) and one arm in [`open`];
//! any [`Dataplane`] is programmed and traced through [`programmed`].

use clap::ValueEnum;
use svcroute_conformance::memory::MemoryDataplane;
use svcroute_core::dataplane::Dataplane;
use svcroute_core::{Decision, Desired, Packet, TraceError, decide};

use crate::error::CliError;

/// `--backend`: one backend, or all of them side by side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BackendChoice {
    /// The core's reference decision.
    Reference,
    /// The in-memory dataplane after a full sync.
    Memory,
    /// Every backend, compared.
    All,
}

impl BackendChoice {
    /// The backends this choice consults.
    pub fn kinds(self) -> Vec<BackendKind> {
        match self {
            BackendChoice::Reference => vec![BackendKind::Reference],
            BackendChoice::Memory => vec![BackendKind::Memory],
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
}

impl BackendKind {
    /// Every backend, in display order.
    pub const ALL: [BackendKind; 2] = [BackendKind::Reference, BackendKind::Memory];

    /// The name `--backend` and the JSON output use.
    pub fn name(self) -> &'static str {
        match self {
            BackendKind::Reference => "reference",
            BackendKind::Memory => "memory",
        }
    }
}

/// Something that answers what happens to a packet.
pub trait Tracer {
    /// The decision for `packet`.
    fn trace(&self, packet: &Packet) -> Result<Decision, TraceError>;
}

/// An opened backend, ready to trace.
pub struct Backend<'a> {
    /// Which backend.
    pub kind: BackendKind,
    tracer: Box<dyn Tracer + 'a>,
}

impl Backend<'_> {
    /// The decision for `packet`.
    pub fn trace(&self, packet: &Packet) -> Result<Decision, TraceError> {
        self.tracer.trace(packet)
    }
}

/// Opens a backend on the desired state.
pub fn open(kind: BackendKind, desired: &Desired) -> Result<Backend<'_>, CliError> {
    let tracer: Box<dyn Tracer + '_> = match kind {
        BackendKind::Reference => Box::new(Reference(desired)),
        BackendKind::Memory => programmed(kind, Box::new(MemoryDataplane::new()), desired)?,
    };
    Ok(Backend { kind, tracer })
}

/// The core's reference decision.
struct Reference<'a>(&'a Desired);

impl Tracer for Reference<'_> {
    fn trace(&self, packet: &Packet) -> Result<Decision, TraceError> {
        Ok(decide(self.0, packet))
    }
}

/// A dataplane that programmed the desired state; traces interpret what it programmed.
struct Programmed(Box<dyn Dataplane>);

impl Tracer for Programmed {
    fn trace(&self, packet: &Packet) -> Result<Decision, TraceError> {
        self.0.trace(packet)
    }
}

/// Programs `desired` into `dataplane` with a full sync, on a single-threaded runtime.
fn programmed(
    kind: BackendKind,
    mut dataplane: Box<dyn Dataplane>,
    desired: &Desired,
) -> Result<Box<dyn Tracer>, CliError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .map_err(|source| CliError::Runtime {
            backend: kind.name(),
            source,
        })?;
    runtime
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
    }
}
