//! The only I/O of the backend: feeding `iptables-restore`, reading `iptables-save`, deleting
//! conntrack entries. [`SystemKernel`] runs the real tools; [`FakeKernel`] keeps an in-memory
//! model with the same restore semantics, for tests.

mod fake;
mod system;

use std::fmt;
use std::net::IpAddr;

use svcroute_core::model::{IpFamily, Protocol};
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

/// Conntrack entries to delete: UDP flows whose original destination (and port) match and,
/// when given, whose replies come from `reply_source` (the endpoint it was DNATed to).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConntrackFlows {
    /// The protocol (UDP: TCP and SCTP connections end by themselves).
    pub protocol: Protocol,
    /// Original destination address (a service IP), if filtered on.
    pub original_destination: Option<IpAddr>,
    /// Original destination port (a service port or NodePort), if filtered on.
    pub original_port: Option<u16>,
    /// Reply source (the endpoint), if filtered on.
    pub reply_source: Option<IpAddr>,
}

impl fmt::Display for ConntrackFlows {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.protocol.lower())?;
        if let Some(d) = self.original_destination {
            write!(f, " dst {d}")?;
        }
        if let Some(p) = self.original_port {
            write!(f, " dport {p}")?;
        }
        if let Some(r) = self.reply_source {
            write!(f, " reply-src {r}")?;
        }
        Ok(())
    }
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
