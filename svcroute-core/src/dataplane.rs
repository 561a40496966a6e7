//! The interface every dataplane backend implements.
//!
//! # Contract
//!
//! A backend turns the core's decision into kernel state, and can explain what it programmed.
//!
//! - **`sync_full(desired)`** programs exactly `desired`, whatever the kernel held before: it
//!   adopts or replaces state left by an earlier run of svcroute, and repairs anything a failed
//!   apply or a third party left behind. It is the first call after start and the repair call.
//! - **`apply(desired, changes)`** programs `changes` incrementally; `desired` is the full state
//!   *after* the changes (for backends that need context). After `apply` returns `Ok`, the
//!   programmed state must equal what `sync_full(desired)` would have produced. An empty change
//!   set must write nothing to the kernel. If `changes.config_changed()`, the backend may fall
//!   back to a full sync.
//! - **Failure.** When `apply` or `sync_full` fails, the backend's shadow of the kernel (what
//!   `trace` interprets) stays as it was before the call, the error says how to recover
//!   ([`ErrorClass`]), and the caller's next call must be `sync_full`. A backend must never
//!   leave half-applied state that routes wrongly: it relies on atomic kernel transactions or
//!   orders writes so every intermediate state is correct.
//! - **`cleanup()`** removes everything this backend owns (chains, tables, maps, devices) and
//!   nothing else, even when the shadow is empty (e.g. in a fresh process after a crash).
//! - **`trace(packet)`** interprets what this backend actually programmed (its rule text, its
//!   ruleset, its IPVS table, its maps) — never the core's plan — and returns the same
//!   [`Decision`] the core's reference [`crate::decide::decide`] returns for that packet. It must
//!   fail with [`TraceError::Unsupported`] on anything it does not understand rather than guess.
//!
//! The trait is object safe: `Box<dyn Dataplane>` works.

use async_trait::async_trait;
use thiserror::Error;

use crate::change::{ChangeSet, Desired};
use crate::decide::{Decision, Packet};
use crate::model::{IpFamily, Protocol, ProxyConfig};

/// What a backend supports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capabilities {
    /// The backend's name, as `--backend` selects it.
    pub name: &'static str,
    /// Families it programs.
    pub families: Vec<IpFamily>,
    /// Protocols it programs.
    pub protocols: Vec<Protocol>,
    /// Whether it implements ClientIP session affinity.
    pub session_affinity: bool,
    /// Whether it enforces load-balancer source ranges.
    pub source_ranges: bool,
    /// Whether `apply` is incremental (otherwise it re-syncs everything).
    pub incremental: bool,
}

impl Capabilities {
    /// A backend named `name` that implements everything: both families, every protocol,
    /// affinity, source ranges, incremental syncs.
    pub fn full(name: &'static str) -> Self {
        Capabilities {
            name,
            families: IpFamily::ALL.to_vec(),
            protocols: Protocol::ALL.to_vec(),
            session_affinity: true,
            source_ranges: true,
            incremental: true,
        }
    }
}

/// How to recover from a [`DataplaneError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Transient (lock held, interrupted): retry the same full sync later.
    Retryable,
    /// The kernel state may differ from the shadow: the next call must be `sync_full`.
    NeedsFullSync,
    /// Retrying cannot help (missing binary, unsupported kernel, no permission).
    Permanent,
}

/// A backend failure.
#[derive(Debug, Error)]
pub enum DataplaneError {
    /// A kernel tool or call failed; `retryable` when the cause is transient.
    #[error("{backend}: {operation} failed: {message}")]
    Kernel {
        /// The backend.
        backend: &'static str,
        /// What it was doing (`iptables-restore`, `nft -f`, ...).
        operation: String,
        /// What the kernel or tool said.
        message: String,
        /// Whether retrying may succeed.
        retryable: bool,
    },
    /// The kernel state no longer matches the shadow (e.g. modified by someone else).
    #[error("{backend}: state out of sync: {message}")]
    OutOfSync {
        /// The backend.
        backend: &'static str,
        /// What differs.
        message: String,
    },
    /// A needed tool, module or feature is missing.
    #[error("{backend}: unsupported: {message}")]
    Unsupported {
        /// The backend.
        backend: &'static str,
        /// What is missing.
        message: String,
    },
    /// I/O error talking to the kernel or a helper process.
    #[error("{backend}: {operation}: {source}")]
    Io {
        /// The backend.
        backend: &'static str,
        /// What it was doing.
        operation: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

impl DataplaneError {
    /// How to recover.
    pub fn class(&self) -> ErrorClass {
        match self {
            DataplaneError::Kernel {
                retryable: true, ..
            } => ErrorClass::Retryable,
            DataplaneError::Kernel { .. } | DataplaneError::OutOfSync { .. } => {
                ErrorClass::NeedsFullSync
            }
            DataplaneError::Io { source, .. } => match source.kind() {
                std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied => {
                    ErrorClass::Permanent
                }
                std::io::ErrorKind::Interrupted | std::io::ErrorKind::WouldBlock => {
                    ErrorClass::Retryable
                }
                _ => ErrorClass::NeedsFullSync,
            },
            DataplaneError::Unsupported { .. } => ErrorClass::Permanent,
        }
    }
}

/// A trace failure.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TraceError {
    /// The programmed state holds something the tracer does not understand.
    #[error("cannot trace: unsupported construct: {0}")]
    Unsupported(String),
    /// The programmed state is inconsistent (e.g. a jump to a missing chain).
    #[error("cannot trace: inconsistent state: {0}")]
    Inconsistent(String),
}

/// What one `apply` or `sync_full` wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ApplyReport {
    /// Kernel write operations (transactions, restore calls, netlink requests).
    pub writes: usize,
    /// Bytes sent to the kernel or its tools.
    pub bytes: usize,
    /// Service ports (re)programmed.
    pub service_ports: usize,
}

/// What one `apply` call must do under the contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncKind {
    /// The change set is empty: write nothing.
    Nothing,
    /// A full sync: the last write failed, the settings changed, or nothing was programmed
    /// under the current settings yet.
    Full,
    /// Program just the changes.
    Incremental,
}

impl SyncKind {
    /// Decides for `apply(desired, changes)` on a backend whose last write failed when
    /// `needs_full_sync`, and whose programmed state was made under `programmed` settings.
    pub fn for_apply(
        changes: &ChangeSet,
        desired: &Desired,
        needs_full_sync: bool,
        programmed: Option<&ProxyConfig>,
    ) -> SyncKind {
        if changes.is_empty() {
            SyncKind::Nothing
        } else if needs_full_sync
            || changes.config_changed()
            || programmed != Some(desired.config())
        {
            SyncKind::Full
        } else {
            SyncKind::Incremental
        }
    }
}

/// A dataplane backend. See the module docs for the contract.
#[async_trait]
pub trait Dataplane: Send + Sync {
    /// What this backend supports.
    fn capabilities(&self) -> Capabilities;

    /// Programs `changes` incrementally; `desired` is the full state after them.
    async fn apply(
        &mut self,
        desired: &Desired,
        changes: &ChangeSet,
    ) -> Result<ApplyReport, DataplaneError>;

    /// Programs exactly `desired`, adopting or replacing whatever is there.
    async fn sync_full(&mut self, desired: &Desired) -> Result<ApplyReport, DataplaneError>;

    /// Removes everything this backend owns, and nothing else.
    async fn cleanup(&mut self) -> Result<(), DataplaneError>;

    /// Follows `packet` through what this backend programmed.
    fn trace(&self, packet: &Packet) -> Result<Decision, TraceError>;
}
