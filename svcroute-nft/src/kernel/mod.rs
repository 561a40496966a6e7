//! The only I/O of the backend: running one atomic transaction, reading our tables back with
//! `nft -j list table`, deleting conntrack entries. [`SystemKernel`] runs the real tools (and
//! writes the transactions of endpoint changes as nf_tables netlink batches itself);
//! [`FakeKernel`] keeps an in-memory ruleset with the kernel's transaction semantics, for tests.

mod fake;
mod netlink;
mod system;

use std::fmt;

use svcroute_core::conntrack::ConntrackFlows;
use svcroute_core::model::IpFamily;
use thiserror::Error;

pub use fake::FakeKernel;
pub use system::SystemKernel;

use crate::names;
use crate::ruleset::Table;
use crate::transaction::Transaction;

/// A kernel tool failure.
#[derive(Debug, Error)]
pub enum KernelError {
    /// The tool ran and failed.
    #[error("{tool} exited with {status}: {stderr}")]
    Failed {
        /// The tool (`nft`, `conntrack`).
        tool: String,
        /// Its exit status.
        status: String,
        /// What it printed on stderr (trimmed).
        stderr: String,
    },
    /// The tool could not be started or talked to.
    #[error("{tool}: {source}")]
    Io {
        /// The tool.
        tool: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The kernel's table holds something svcroute does not understand.
    #[error("cannot read table {family}: {message}")]
    Unreadable {
        /// `ip` or `ip6`.
        family: &'static str,
        /// What was not understood.
        message: String,
    },
    /// The fake kernel rejected the transaction, or a failure was injected.
    #[error("fake kernel: {0}")]
    Fake(String),
}

/// What the backend needs from the kernel.
pub trait Kernel: Send + Sync + fmt::Debug {
    /// Runs `tx` as one atomic transaction (`nft -f -`): all of it or nothing. Returns the
    /// size of its text (`tx.text().len()`), which a full sync's caller would otherwise write
    /// a second time to count.
    fn run(&mut self, tx: &Transaction) -> Result<usize, KernelError>;

    /// The names of every table of `family` (ours and anyone else's).
    fn table_names(&mut self, family: IpFamily) -> Result<Vec<String>, KernelError>;

    /// Table `table` of `family` as the kernel holds it, `None` when there is none.
    fn list_table(&mut self, family: IpFamily, table: &str) -> Result<Option<Table>, KernelError>;

    /// Deletes conntrack entries (of `family`) matching each filter; none matching is fine.
    fn delete_conntrack(
        &mut self,
        family: IpFamily,
        flows: &[ConntrackFlows],
    ) -> Result<(), KernelError>;
}

/// Our tables of `family` as the kernel holds them: the common table named `table` first (if
/// it exists), then its shards in order, each with its name.
pub fn list_ours(
    kernel: &mut dyn Kernel,
    table: &str,
    family: IpFamily,
) -> Result<Vec<(String, Table)>, KernelError> {
    let mut ours: Vec<String> = (kernel.table_names(family)?.into_iter())
        .filter(|n| names::is_ours(table, n))
        .collect();
    // The common table first, then shards by number.
    ours.sort_by_key(|n| (n.len(), n.clone()));
    let mut out = Vec::with_capacity(ours.len());
    for name in ours {
        if let Some(t) = kernel.list_table(family, &name)? {
            out.push((name, t));
        }
    }
    Ok(out)
}
