//! The in-memory "kernel": named tables of keyed elements, changed only by atomic
//! transactions, with a write counter and fault injection.
//!
//! Its model is nftables: a table holds sets, verdict maps and chains; a transaction is
//! applied whole or not at all; one transaction is one kernel write.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};

use ipnet::IpNet;
use svcroute_core::model::Protocol;

/// A global address set of a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SetName {
    /// Pod CIDRs of the family: the local-traffic detector (empty without one).
    PodCidrs,
    /// Addresses traffic from which is node-originated (`fib saddr type local`): the node's
    /// addresses and loopback.
    LocalAddresses,
    /// Destinations on which NodePorts answer.
    NodePortAddresses,
    /// Service CIDRs: unallocated addresses in them are dropped.
    ServiceCidrs,
}

impl fmt::Display for SetName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SetName::PodCidrs => "pod-cidrs",
            SetName::LocalAddresses => "local-addresses",
            SetName::NodePortAddresses => "nodeport-addresses",
            SetName::ServiceCidrs => "service-cidrs",
        })
    }
}

/// The key of one element of a table.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Key {
    /// A global address set.
    Set(SetName),
    /// A chain, by name.
    Chain(String),
    /// Load-balancer source-range firewall: `daddr . proto . dport → goto chain`, consulted
    /// before DNAT.
    Firewall(IpAddr, Protocol, u16),
    /// Service dispatch: `daddr . proto . dport → goto chain`.
    Service(IpAddr, Protocol, u16),
    /// NodePort dispatch, for destinations in the NodePort address set:
    /// `proto . dport → goto chain`.
    NodePort(Protocol, u16),
    /// A ClusterIP (with the hash of the service port that owns the element): traffic to it
    /// that no service port took is rejected.
    ClusterIp(IpAddr, String),
    /// A health-check NodePort (TCP, on local addresses), with its owner's hash: accepted.
    HealthCheck(u16, String),
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Key::Set(s) => write!(f, "set {s}"),
            Key::Chain(c) => write!(f, "chain {c}"),
            Key::Firewall(ip, p, port) => write!(f, "firewall {ip} . {} . {port}", p.lower()),
            Key::Service(ip, p, port) => write!(f, "service {ip} . {} . {port}", p.lower()),
            Key::NodePort(p, port) => write!(f, "nodeport {} . {port}", p.lower()),
            Key::ClusterIp(ip, owner) => write!(f, "cluster-ip {ip} ({owner})"),
            Key::HealthCheck(port, owner) => write!(f, "health-check tcp . {port} ({owner})"),
        }
    }
}

/// What a rule matches on (all of a rule's matches must hold).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Match {
    /// The source is in a global set.
    SrcInSet(SetName),
    /// The source is not in a global set.
    SrcNotInSet(SetName),
    /// The source is in one of these networks.
    SrcIn(Vec<IpNet>),
    /// The source is exactly this address.
    SrcIs(IpAddr),
}

impl fmt::Display for Match {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Match::SrcInSet(s) => write!(f, "saddr @{s}"),
            Match::SrcNotInSet(s) => write!(f, "saddr != @{s}"),
            Match::SrcIn(nets) => {
                let list: Vec<String> = nets.iter().map(ToString::to_string).collect();
                write!(f, "saddr {{ {} }}", list.join(", "))
            }
            Match::SrcIs(ip) => write!(f, "saddr {ip}"),
        }
    }
}

/// What a rule does when it matches.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Action {
    /// Continue in another chain, never coming back.
    Goto(String),
    /// Leave this chain: the packet continues past the hook that called it.
    Return,
    /// Set the masquerade mark and continue with the next rule.
    MarkMasquerade,
    /// Rewrite the destination: final.
    Dnat(SocketAddr),
    /// Pick one of these chains uniformly at random (`numgen random mod N vmap`).
    RandomGoto(Vec<String>),
    /// Session affinity: a source seen within `timeout` seconds in the chain's affinity set
    /// goes to `chain` again. Depends on history, so a trace never takes it, but it tells the
    /// trace the timeout.
    AffinityGoto {
        /// The endpoint chain the source was sent to before.
        chain: String,
        /// Seconds a source is remembered.
        timeout: u32,
    },
    /// Refuse: final.
    Reject,
    /// Drop: final.
    Drop,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Goto(c) => write!(f, "goto {c}"),
            Action::Return => f.write_str("return"),
            Action::MarkMasquerade => f.write_str("mark-masquerade"),
            Action::Dnat(a) => write!(f, "dnat to {a}"),
            Action::RandomGoto(chains) => write!(f, "numgen random {{ {} }}", chains.join(", ")),
            Action::AffinityGoto { chain, timeout } => {
                write!(f, "saddr @affinity-{chain} timeout {timeout}s goto {chain}")
            }
            Action::Reject => f.write_str("reject"),
            Action::Drop => f.write_str("drop"),
        }
    }
}

/// One rule of a chain.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Rule {
    /// Conditions, all of which must hold.
    pub matches: Vec<Match>,
    /// What happens then.
    pub action: Action,
}

impl Rule {
    /// A rule with no condition.
    pub fn always(action: Action) -> Self {
        Rule {
            matches: Vec::new(),
            action,
        }
    }

    /// A rule with one condition.
    pub fn when(m: Match, action: Action) -> Self {
        Rule {
            matches: vec![m],
            action,
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for m in &self.matches {
            write!(f, "{m} ")?;
        }
        write!(f, "{}", self.action)
    }
}

/// The value of one element.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Value {
    /// The members of an address set.
    Nets(Vec<IpNet>),
    /// The rules of a chain.
    Rules(Vec<Rule>),
    /// A verdict-map entry: `goto` this chain.
    Goto(String),
    /// A set element without value.
    Present,
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Nets(nets) => {
                let list: Vec<String> = nets.iter().map(ToString::to_string).collect();
                write!(f, "{{ {} }}", list.join(", "))
            }
            Value::Rules(rules) => {
                f.write_str("{")?;
                for r in rules {
                    write!(f, "\n        {r}")?;
                }
                f.write_str("\n    }")
            }
            Value::Goto(c) => write!(f, "goto {c}"),
            Value::Present => f.write_str("present"),
        }
    }
}

/// A table: its elements by key.
pub type Table = BTreeMap<Key, Value>;

/// Renders a table as normalised text (elements in key order).
pub fn render_table(name: &str, table: &Table) -> String {
    let mut out = format!("table {name} {{\n");
    for (k, v) in table {
        out.push_str(&format!("    {k} => {v}\n"));
    }
    out.push_str("}\n");
    out
}

/// One operation of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Creates the table, or replaces all of its contents.
    ReplaceTable {
        /// The table.
        table: String,
        /// Its new contents.
        contents: Table,
    },
    /// Deletes the table; fails if it does not exist.
    DeleteTable {
        /// The table.
        table: String,
    },
    /// Adds or replaces one element; fails if the table does not exist.
    Put {
        /// The table.
        table: String,
        /// The element.
        key: Key,
        /// Its value.
        value: Value,
    },
    /// Deletes one element; fails if it does not exist.
    Delete {
        /// The table.
        table: String,
        /// The element.
        key: Key,
    },
}

/// A failed kernel write.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KernelError {
    /// Fault injection made this write fail.
    #[error("injected failure of write #{0}")]
    Injected(usize),
    /// The transaction names a missing table.
    #[error("no such table {0}")]
    NoSuchTable(String),
    /// The transaction deletes a missing element.
    #[error("table {table}: no such element {key}")]
    NoSuchElement {
        /// The table.
        table: String,
        /// The element, rendered.
        key: String,
    },
}

#[derive(Debug, Default)]
struct KernelState {
    tables: BTreeMap<String, Table>,
    writes: usize,
    /// Writes to let through before the failures start.
    skip: usize,
    fail_next: usize,
}

/// The in-memory kernel. Cloning gives another handle on the same kernel, so a test can
/// inspect what a dataplane wrote, or start a second dataplane on a kernel a first one left
/// behind (adoption).
#[derive(Debug, Clone, Default)]
pub struct MemoryKernel {
    inner: Arc<Mutex<KernelState>>,
}

impl MemoryKernel {
    /// An empty kernel.
    pub fn new() -> Self {
        MemoryKernel::default()
    }

    fn lock(&self) -> MutexGuard<'_, KernelState> {
        // A panic while holding the lock cannot leave the state half-written: commits build
        // the new tables aside and swap them in.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Applies one transaction atomically: all operations or none. Counts one write, whether
    /// it succeeds or not.
    pub fn commit(&self, ops: &[Op]) -> Result<(), KernelError> {
        let mut state = self.lock();
        state.writes += 1;
        if state.skip > 0 {
            state.skip -= 1;
        } else if state.fail_next > 0 {
            state.fail_next -= 1;
            return Err(KernelError::Injected(state.writes));
        }
        let mut tables = state.tables.clone();
        for op in ops {
            match op {
                Op::ReplaceTable { table, contents } => {
                    tables.insert(table.clone(), contents.clone());
                }
                Op::DeleteTable { table } => {
                    tables
                        .remove(table)
                        .ok_or_else(|| KernelError::NoSuchTable(table.clone()))?;
                }
                Op::Put { table, key, value } => {
                    tables
                        .get_mut(table)
                        .ok_or_else(|| KernelError::NoSuchTable(table.clone()))?
                        .insert(key.clone(), value.clone());
                }
                Op::Delete { table, key } => {
                    tables
                        .get_mut(table)
                        .ok_or_else(|| KernelError::NoSuchTable(table.clone()))?
                        .remove(key)
                        .ok_or_else(|| KernelError::NoSuchElement {
                            table: table.clone(),
                            key: key.to_string(),
                        })?;
                }
            }
        }
        state.tables = tables;
        Ok(())
    }

    /// Write attempts so far (failed ones included).
    pub fn writes(&self) -> usize {
        self.lock().writes
    }

    /// Makes the next `n` writes fail without changing anything; `0` disarms.
    pub fn fail_next_writes(&self, n: usize) {
        self.fail_writes_after(0, n);
    }

    /// Lets `skip` writes through, then makes `n` fail; `n == 0` disarms.
    pub fn fail_writes_after(&self, skip: usize, n: usize) {
        let mut state = self.lock();
        state.skip = if n == 0 { 0 } else { skip };
        state.fail_next = n;
    }

    /// A copy of one table.
    pub fn table(&self, name: &str) -> Option<Table> {
        self.lock().tables.get(name).cloned()
    }

    /// Whether a table exists.
    pub fn has_table(&self, name: &str) -> bool {
        self.lock().tables.contains_key(name)
    }

    /// Names of every table, ours or not.
    pub fn table_names(&self) -> Vec<String> {
        self.lock().tables.keys().cloned().collect()
    }

    /// Renders the named tables that exist, in the order given.
    pub fn render(&self, names: &[&str]) -> String {
        let state = self.lock();
        names
            .iter()
            .filter_map(|n| state.tables.get(*n).map(|t| render_table(n, t)))
            .collect()
    }
}
