//! The only I/O of the backend: feeding `iptables-restore`, reading `iptables-save`, deleting
//! conntrack entries. [`SystemKernel`] runs the real tools; [`FakeKernel`] keeps an in-memory
//! model with the same restore semantics, for tests.

mod fake;
mod system;

use std::fmt;

pub use svcroute_core::conntrack::ConntrackFlows;
use svcroute_core::model::IpFamily;
use thiserror::Error;

pub use fake::FakeKernel;
pub use system::{IptablesMode, SystemKernel};

/// A kernel tool failure.
#[derive(Debug, Error)]
pub enum KernelError {
    /// The tool ran and failed.
    #[error("{tool} exited with {status}: {stderr}")]
    Failed {
        /// The tool (`iptables-restore`, `ip6tables-save`, `conntrack`).
        tool: String,
        /// Its exit status.
        status: String,
        /// What it printed on stderr (trimmed).
        stderr: String,
        /// Whether retrying may help (the xtables lock was held).
        retryable: bool,
    },
    /// The tool could not be started.
    #[error("{tool}: {source}")]
    Io {
        /// The tool.
        tool: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The fake kernel rejected the payload, or a failure was injected.
    #[error("fake kernel: {0}")]
    Fake(String),
}

/// What the backend needs from the kernel.
pub trait Kernel: Send + Sync + fmt::Debug {
    /// Feeds `payload` to `iptables-restore --noflush` (`ip6tables-restore` for IPv6). Each
    /// table's `COMMIT` is atomic; on failure, tables committed before the failing one stay.
    fn restore(&mut self, family: IpFamily, payload: &str) -> Result<(), KernelError>;

    /// The `filter` and `nat` tables as `iptables-save` prints them.
    fn save(&mut self, family: IpFamily) -> Result<String, KernelError>;

    /// Deletes conntrack entries (of `family`) matching each filter; none matching is fine.
    fn delete_conntrack(
        &mut self,
        family: IpFamily,
        flows: &[ConntrackFlows],
    ) -> Result<(), KernelError>;

    /// Whether `iptables-restore` is the nf_tables flavour (its `--noflush` restore needs the
    /// chain-cache workaround of `crate::payload`).
    fn is_nft(&self) -> bool;
}
