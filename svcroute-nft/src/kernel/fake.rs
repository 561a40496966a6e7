//! An in-memory kernel with nf_tables transaction semantics, for tests.
//!
//! A transaction is applied command by command and kept only if every command succeeds and
//! the result passes the commit-time checks; otherwise every change is taken back: all of it
//! or nothing, like `nft -f`. The checks follow what nft 1.0.6 on Linux 6.18 does (probed on a scratch
//! network namespace), with the errno the kernel answers in each error message:
//!
//! - `add table` creates the table or keeps the existing one (the kernel ignores a new
//!   comment: the old one stays); `delete table` of a missing table: ENOENT. Any other
//!   command on a missing table: ENOENT.
//! - `add chain` creates the chain or keeps the existing one when it is identical or the
//!   command has no hook (the comment of an existing chain stays). A different type on an
//!   existing base chain: EEXIST; a different hook or priority, or a hook for an existing
//!   regular chain: EOPNOTSUPP; a nat chain on the forward hook: EOPNOTSUPP.
//! - `flush chain`, `delete chain`, `add rule` on a missing chain: ENOENT. `delete chain` of a
//!   chain that has rules, or that a rule (`jump`/`goto`) or a verdict-map element refers to:
//!   EBUSY. (Linux 6.18 deletes an unreferenced chain together with its rules; nft documents
//!   that the chain must be empty, and this kernel insists on it.)
//! - `add rule` with a `jump`/`goto` to a missing chain: ENOENT, to a base chain: EOPNOTSUPP;
//!   `@name` of a missing set or map (a match, `vmap`, `update`, `dnat ... map`): ENOENT; of
//!   the wrong kind (a match on a map, `vmap` on a set or endpoint map, `dnat ... map` on
//!   anything but a slot-keyed endpoint map) or whose key does not fit the expression:
//!   EINVAL (nft's "datatype mismatch"); `update` of a set without timeout: EOPNOTSUPP.
//!   Addresses must be of the table's family.
//! - `add set|map` creates the set or keeps an identical one: a different kind, key, interval
//!   flag or timeout is EEXIST (the comment of an existing set stays, as in the kernel).
//!   Declarations nft cannot express (a concatenated or plain-set slot key, interval with
//!   timeout) are EINVAL.
//! - `delete set|map` of a missing set: ENOENT; of a set a rule refers to: EBUSY. Deleting a
//!   verdict map releases the chains its elements refer to.
//! - `add element` to a missing set: ENOENT; a key whose components do not match the
//!   declaration (arity, type, family; a prefix without `flags interval`), a missing or
//!   unexpected value: EINVAL; a verdict to a missing chain: ENOENT, to a base chain:
//!   EOPNOTSUPP; an existing key with a different value, or an interval overlapping another
//!   element: EEXIST; an existing key with the same value: kept as it is (old comment too).
//!   Prefixes of interval sets are stored as nft lists them: host bits cleared, a full-length
//!   prefix as a plain address.
//! - `delete element` of a key the set does not hold, or of a missing set: ENOENT.
//! - At commit, every chain reachable from a base chain (through `jump`/`goto` and the
//!   elements of the verdict maps its rules look up) is checked: jumps may nest at most 15
//!   deep and may not loop (EMLINK), `dnat` only runs under nat prerouting/output and
//!   `masquerade` only under nat postrouting (EOPNOTSUPP). Unreachable chains are not
//!   checked, like in the kernel.
//!
//! Interval overlaps are checked for single-component keys only. `list_table` returns what
//! `nft -j list table` shows, as [`crate::json`] reads it: nft 1.0.6 prints no table or chain
//! comments, and the elements of dynamic sets are left out; [`FakeKernel::table`] shows all.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fmt;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use ipnet::IpNet;
use svcroute_core::conntrack::ConntrackFlows;
use svcroute_core::model::IpFamily;

use super::{Kernel, KernelError};
use crate::ruleset::{
    BaseHook, Chain, ChainType, ElemKey, ElemValue, Element, Expr, Hook, KeyType, Operand, Rule,
    SetDecl, SetKind, Stmt, Table, Value, family_name,
};
use crate::transaction::{Command, Transaction, contents_commands};

/// Transactions kept by the log at most (the oldest go first).
const LOG_ENTRIES: usize = 256;
/// Bytes of transaction text kept by the log at most (the last transaction always stays).
const LOG_BYTES: usize = 64 << 20;
/// The kernel's jump stack (`NFT_JUMP_STACK_SIZE`): a path of this many jumps is refused.
const JUMP_STACK: usize = 16;

/// A cheap, cloneable handle on an in-memory nf_tables kernel: keep one clone for inspection
/// and fault injection while the dataplane owns another as `Box<dyn Kernel>`.
#[derive(Clone, Debug, Default)]
pub struct FakeKernel {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Debug, Default)]
struct Inner {
    tables: BTreeMap<(IpFamily, String), Stored>,
    /// `run` calls, failed ones included.
    writes: usize,
    /// Total transaction text of those calls.
    bytes: usize,
    /// `list_table` calls, failed ones included.
    reads: usize,
    /// Successful writes still to let through before the armed failures.
    fail_skip: usize,
    /// Armed write failures.
    fail_count: usize,
    /// Armed read failures.
    read_failures: usize,
    /// The last transactions' text, oldest first.
    log: VecDeque<String>,
    log_bytes: usize,
    conntrack: Vec<(IpFamily, ConntrackFlows)>,
}

impl Inner {
    /// Whether this write is one of the armed failures (consumes it).
    fn take_failure(&mut self) -> bool {
        if self.fail_count == 0 {
            return false;
        }
        if self.fail_skip > 0 {
            self.fail_skip -= 1;
            return false;
        }
        self.fail_count -= 1;
        true
    }

    fn record(&mut self, text: String) {
        self.bytes += text.len();
        self.log_bytes += text.len();
        self.log.push_back(text);
        while self.log.len() > LOG_ENTRIES || (self.log_bytes > LOG_BYTES && self.log.len() > 1) {
            if let Some(old) = self.log.pop_front() {
                self.log_bytes -= old.len();
            }
        }
    }
}

impl FakeKernel {
    /// An empty kernel: no tables in either family, no failures armed.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A test that panicked while holding the lock leaves consistent data (the kernel's own
        // code does not panic): keep using it.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Table `name` of `family` now, `None` when there is none: all of it, where
    /// `list_table` returns what `nft -j list table` shows (no table or chain comments, no
    /// elements in dynamic sets).
    pub fn table(&self, family: IpFamily, name: &str) -> Option<Table> {
        self.lock()
            .tables
            .get(&(family, name.to_string()))
            .map(|s| s.table.clone())
    }

    /// Every table of `family` now, by name: all of each (see [`FakeKernel::table`]).
    pub fn tables(&self, family: IpFamily) -> BTreeMap<String, Table> {
        let inner = self.lock();
        let of_family = inner.tables.iter().filter(|((f, _), _)| *f == family);
        of_family
            .map(|((_, name), s)| (name.clone(), s.table.clone()))
            .collect()
    }

    /// Replaces (`Some`) or deletes (`None`) table `name` of `family` behind the dataplane's
    /// back, as another program (or an administrator) would. Not a write, and not checked.
    pub fn set_table(&self, family: IpFamily, name: &str, table: Option<Table>) {
        let key = (family, name.to_string());
        let mut inner = self.lock();
        match table {
            Some(t) => {
                inner.tables.insert(key, Stored::new(t));
            }
            None => {
                inner.tables.remove(&key);
            }
        }
    }

    /// Number of `run` calls so far, failed ones (injected or rejected) included.
    pub fn writes(&self) -> usize {
        self.lock().writes
    }

    /// Total size of the transaction text (`tx.text().len()`) of those calls.
    pub fn bytes(&self) -> usize {
        self.lock().bytes
    }

    /// Text of the last transaction given to `run`, failed or not.
    pub fn last_transaction(&self) -> Option<String> {
        self.lock().log.back().cloned()
    }

    /// Text of the transactions given to `run`, oldest first, failed ones included. The log
    /// keeps the last 256 transactions and at most 64 MiB of text (always the last one).
    pub fn transactions(&self) -> Vec<String> {
        self.lock().log.iter().cloned().collect()
    }

    /// Forgets the logged transactions (`writes` and `bytes` keep counting).
    pub fn clear_transactions(&self) {
        let mut inner = self.lock();
        inner.log.clear();
        inner.log_bytes = 0;
    }

    /// Conntrack deletions requested so far, in order.
    pub fn conntrack_deletions(&self) -> Vec<(IpFamily, ConntrackFlows)> {
        self.lock().conntrack.clone()
    }

    /// Makes the next `n` `run` calls fail without changing anything (`0` disarms).
    pub fn fail_next_writes(&self, n: usize) {
        self.fail_writes_after(0, n);
    }

    /// Lets `skip` more `run` calls succeed (or fail on their own), then makes the `n`
    /// following ones fail without changing anything.
    pub fn fail_writes_after(&self, skip: usize, n: usize) {
        let mut inner = self.lock();
        inner.fail_skip = skip;
        inner.fail_count = n;
    }

    /// Number of `list_table` calls so far, failed ones included.
    pub fn reads(&self) -> usize {
        self.lock().reads
    }

    /// Makes the next `n` `list_table` calls fail (`0` disarms).
    pub fn fail_next_reads(&self, n: usize) {
        self.lock().read_failures = n;
    }
}

impl Kernel for FakeKernel {
    fn run(&mut self, tx: &Transaction) -> Result<usize, KernelError> {
        let mut inner = self.lock();
        inner.writes += 1;
        let text = tx.text();
        let bytes = text.len();
        inner.record(text);
        if inner.take_failure() {
            return Err(KernelError::Fake("injected failure".to_string()));
        }
        apply_transaction(&mut inner.tables, tx).map_err(KernelError::Fake)?;
        Ok(bytes)
    }

    fn table_names(&mut self, family: IpFamily) -> Result<Vec<String>, KernelError> {
        let mut inner = self.lock();
        inner.reads += 1;
        if inner.read_failures > 0 {
            inner.read_failures -= 1;
            return Err(KernelError::Fake("injected read failure".to_string()));
        }
        let names = inner.tables.keys().filter(|(f, _)| *f == family);
        Ok(names.map(|(_, name)| name.clone()).collect())
    }

    fn list_table(&mut self, family: IpFamily, table: &str) -> Result<Option<Table>, KernelError> {
        let mut inner = self.lock();
        inner.reads += 1;
        if inner.read_failures > 0 {
            inner.read_failures -= 1;
            return Err(KernelError::Fake("injected read failure".to_string()));
        }
        let mut listed = inner
            .tables
            .get(&(family, table.to_string()))
            .map(|s| s.table.clone());
        if let Some(t) = &mut listed {
            as_listed(t);
        }
        Ok(listed)
    }

    fn delete_conntrack(
        &mut self,
        family: IpFamily,
        flows: &[ConntrackFlows],
    ) -> Result<(), KernelError> {
        // Not a rule write: `writes` counts transactions only.
        self.lock()
            .conntrack
            .extend(flows.iter().map(|f| (family, *f)));
        Ok(())
    }
}

/// What `nft -j list table` (nft 1.0.6) shows of a table, as [`crate::json`] reads it: no
/// table or chain comments (its JSON does not print them), no elements in dynamic sets
/// (data-path state the reader leaves out).
fn as_listed(table: &mut Table) {
    table.comment = None;
    for chain in table.chains.values_mut() {
        chain.comment = None;
    }
    for set in table.sets.values_mut() {
        if set.decl.timeout.is_some() {
            set.elements.clear();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Errors

/// The errno a rejection stands for (what nft prints, and its name).
#[derive(Debug, Clone, Copy)]
enum Errno {
    NoEnt,
    Exist,
    Busy,
    OpNotSupp,
    MLink,
    Inval,
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Errno::NoEnt => "No such file or directory (ENOENT)",
            Errno::Exist => "File exists (EEXIST)",
            Errno::Busy => "Device or resource busy (EBUSY)",
            Errno::OpNotSupp => "Operation not supported (EOPNOTSUPP)",
            Errno::MLink => "Too many links (EMLINK)",
            Errno::Inval => "Invalid argument (EINVAL)",
        })
    }
}

/// `why: errno`.
fn reject(errno: Errno, why: impl fmt::Display) -> String {
    format!("{why}: {errno}")
}

/// How a command reads in `nft -f` (without its body): `add rule ip svcroute services`.
fn describe(family: IpFamily, table: &str, command: &Command) -> String {
    let fam = family_name(family);
    match command {
        Command::AddTable { .. } => format!("add table {fam} {table}"),
        Command::DeleteTable => format!("delete table {fam} {table}"),
        Command::AddChain { name, .. } => format!("add chain {fam} {table} {name}"),
        Command::FlushChain(name) => format!("flush chain {fam} {table} {name}"),
        Command::DeleteChain(name) => format!("delete chain {fam} {table} {name}"),
        Command::AddRule { chain, .. } => format!("add rule {fam} {table} {chain}"),
        Command::AddSet { name, decl } => format!("add {} {fam} {table} {name}", decl.keyword()),
        Command::DeleteSet { name, map } => {
            format!(
                "delete {} {fam} {table} {name}",
                if *map { "map" } else { "set" }
            )
        }
        Command::AddElements { set, .. } => format!("add element {fam} {table} {set}"),
        Command::DeleteElements { set, .. } => format!("delete element {fam} {table} {set}"),
        Command::AddContents(_) => format!("add contents of table {fam} {table}"),
    }
}

/// A key as nft prints it: `10.0.0.1 . tcp . 80`.
fn key_text(key: &[Value]) -> String {
    key.iter()
        .map(Value::to_string)
        .collect::<Vec<_>>()
        .join(" . ")
}

// ---------------------------------------------------------------------------------------------
// Transactions

/// A table as the fake kernel holds it, with reference counts of its chains (by rules'
/// `jump`/`goto` and verdict-map elements) and sets (by rules), kept up to date by every
/// command.
#[derive(Debug)]
struct Stored {
    table: Table,
    chain_refs: HashMap<String, usize>,
    set_refs: HashMap<String, usize>,
}

impl Stored {
    fn new(table: Table) -> Self {
        let mut s = Stored {
            table,
            chain_refs: HashMap::new(),
            set_refs: HashMap::new(),
        };
        s.recount();
        s
    }

    fn recount(&mut self) {
        self.chain_refs.clear();
        self.set_refs.clear();
        for chain in self.table.chains.values() {
            for rule in &chain.rules {
                count_rule(&mut self.chain_refs, &mut self.set_refs, rule, true);
            }
        }
        for set in self.table.sets.values() {
            for elem in set.elements.values() {
                count_element(&mut self.chain_refs, elem, true);
            }
        }
    }
}

/// How to take back one change of a transaction (applied in reverse order on failure).
#[derive(Debug)]
enum Undo {
    /// The table was created or deleted: what was there before.
    Table(Option<Stored>),
    ChainAdded(String),
    ChainDeleted(String, Chain),
    RulesFlushed(String, Vec<Rule>),
    RuleAdded(String),
    SetAdded(String),
    SetDeleted(String, crate::ruleset::Set),
    ElementAdded(String, ElemKey),
    ElementDeleted(String, ElemKey, Element),
}

/// One family's table while a transaction runs on it in place.
#[derive(Debug)]
struct Working {
    stored: Option<Stored>,
    undo: Vec<Undo>,
    /// Whether a command may have broken a commit-time rule (added a rule, or a verdict
    /// entering a chain): deleting and emptying cannot.
    validate: bool,
}

impl Working {
    /// Takes back every change, in reverse order.
    fn rollback(&mut self) {
        while let Some(undo) = self.undo.pop() {
            if let Undo::Table(previous) = undo {
                self.stored = previous;
                continue;
            }
            let Some(table) = self.stored.as_mut().map(|s| &mut s.table) else {
                continue;
            };
            match undo {
                Undo::Table(_) => {}
                Undo::ChainAdded(name) => {
                    table.chains.remove(&name);
                }
                Undo::ChainDeleted(name, chain) => {
                    table.chains.insert(name, chain);
                }
                Undo::RulesFlushed(name, rules) => {
                    if let Some(c) = table.chains.get_mut(&name) {
                        c.rules = rules;
                    }
                }
                Undo::RuleAdded(name) => {
                    if let Some(c) = table.chains.get_mut(&name) {
                        c.rules.pop();
                    }
                }
                Undo::SetAdded(name) => {
                    table.sets.remove(&name);
                }
                Undo::SetDeleted(name, set) => {
                    table.sets.insert(name, set);
                }
                Undo::ElementAdded(set, key) => {
                    if let Some(s) = table.sets.get_mut(&set) {
                        s.elements.remove(&key);
                    }
                }
                Undo::ElementDeleted(set, key, elem) => {
                    if let Some(s) = table.sets.get_mut(&set) {
                        s.elements.insert(key, elem);
                    }
                }
            }
        }
        // Failures are rare: counting again is simpler than taking back each count.
        if let Some(s) = &mut self.stored {
            s.recount();
        }
    }
}

fn bump(counts: &mut HashMap<String, usize>, name: &str, up: bool) {
    if up {
        *counts.entry(name.to_string()).or_insert(0) += 1;
    } else if let Some(n) = counts.get_mut(name) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            counts.remove(name);
        }
    }
}

/// The chain an element's verdict enters.
fn element_chain_ref(elem: &Element) -> Option<&str> {
    match &elem.value {
        Some(ElemValue::Verdict(v)) => v.target(),
        _ => None,
    }
}

fn count_rule(
    chain_refs: &mut HashMap<String, usize>,
    set_refs: &mut HashMap<String, usize>,
    rule: &Rule,
    up: bool,
) {
    for c in rule.chains() {
        bump(chain_refs, c, up);
    }
    for s in rule.sets() {
        bump(set_refs, s, up);
    }
}

fn count_element(chain_refs: &mut HashMap<String, usize>, elem: &Element, up: bool) {
    if let Some(c) = element_chain_ref(elem) {
        bump(chain_refs, c, up);
    }
}

/// Runs `tx` on `tables` in place: every command, then the commit-time checks. On failure
/// every change is taken back and the error says why the kernel refuses the transaction.
fn apply_transaction(
    tables: &mut BTreeMap<(IpFamily, String), Stored>,
    tx: &Transaction,
) -> Result<(), String> {
    let mut work: BTreeMap<(IpFamily, String), Working> = BTreeMap::new();
    let result = apply_all(tables, tx, &mut work);
    for (key, mut w) in work {
        if result.is_err() {
            w.rollback();
        }
        if let Some(s) = w.stored {
            tables.insert(key, s);
        }
    }
    result
}

fn apply_all(
    tables: &mut BTreeMap<(IpFamily, String), Stored>,
    tx: &Transaction,
    work: &mut BTreeMap<(IpFamily, String), Working>,
) -> Result<(), String> {
    for (i, (table, command)) in tx.commands.iter().enumerate() {
        let key = (table.family, table.name.to_string());
        let w = work.entry(key).or_insert_with_key(|key| Working {
            stored: tables.remove(key),
            undo: Vec::new(),
            validate: false,
        });
        apply(w, table.family, &table.name, command).map_err(|why| {
            format!(
                "command {} ({}): {why}",
                i + 1,
                describe(table.family, &table.name, command)
            )
        })?;
    }
    // Validation is per table, like the kernel's.
    for ((family, name), w) in work.iter() {
        if let (true, Some(s)) = (w.validate, &w.stored) {
            validate(&s.table)
                .map_err(|why| format!("commit of table {} {name}: {why}", family_name(*family)))?;
        }
    }
    Ok(())
}

/// Applies one command to a family's table, recording how to take it back.
fn apply(
    work: &mut Working,
    family: IpFamily,
    table_name: &str,
    command: &Command,
) -> Result<(), String> {
    if let Command::AddContents(contents) = command {
        // What the text says: one command after the other.
        for inner in contents_commands(contents) {
            apply(work, family, table_name, &inner)
                .map_err(|why| format!("{}: {why}", describe(family, table_name, &inner)))?;
        }
        return Ok(());
    }
    let Working {
        stored,
        undo,
        validate,
    } = work;
    match command {
        Command::AddTable { comment } => {
            if stored.is_none() {
                let mut t = Table::new(family);
                t.comment = comment.clone();
                undo.push(Undo::Table(stored.replace(Stored::new(t))));
            }
            return Ok(());
        }
        Command::DeleteTable => {
            let old = stored
                .take()
                .ok_or_else(|| reject(Errno::NoEnt, "table does not exist"))?;
            undo.push(Undo::Table(Some(old)));
            return Ok(());
        }
        _ => {}
    }
    let Stored {
        table,
        chain_refs,
        set_refs,
    } = stored
        .as_mut()
        .ok_or_else(|| reject(Errno::NoEnt, "table does not exist"))?;
    match command {
        Command::AddTable { .. } | Command::DeleteTable | Command::AddContents(_) => {}
        Command::AddChain { name, chain } => {
            if add_chain(table, name, chain)? {
                undo.push(Undo::ChainAdded(name.clone()));
            }
        }
        Command::FlushChain(name) => {
            let chain = table
                .chains
                .get_mut(name)
                .ok_or_else(|| reject(Errno::NoEnt, format!("chain {name} does not exist")))?;
            let rules = std::mem::take(&mut chain.rules);
            for rule in &rules {
                count_rule(chain_refs, set_refs, rule, false);
            }
            undo.push(Undo::RulesFlushed(name.clone(), rules));
        }
        Command::DeleteChain(name) => {
            let chain = table
                .chains
                .get(name)
                .ok_or_else(|| reject(Errno::NoEnt, format!("chain {name} does not exist")))?;
            if !chain.rules.is_empty() {
                return Err(reject(
                    Errno::Busy,
                    format!("chain {name} still has {} rules", chain.rules.len()),
                ));
            }
            if chain_refs.contains_key(name) {
                let by = chain_referrer(table, name).unwrap_or_else(|| "something".to_string());
                return Err(reject(
                    Errno::Busy,
                    format!("chain {name} is referenced by {by}"),
                ));
            }
            if let Some(old) = table.chains.remove(name) {
                undo.push(Undo::ChainDeleted(name.clone(), old));
            }
        }
        Command::AddRule { chain, rule } => {
            if !table.chains.contains_key(chain) {
                return Err(reject(
                    Errno::NoEnt,
                    format!("chain {chain} does not exist"),
                ));
            }
            check_rule(family, table, rule)
                .map_err(|why| format!("rule \"{}\": {why}", rule.text(family)))?;
            if let Some(c) = table.chains.get_mut(chain) {
                count_rule(chain_refs, set_refs, rule, true);
                c.rules.push(rule.clone());
                undo.push(Undo::RuleAdded(chain.clone()));
                *validate = true;
            }
        }
        Command::AddSet { name, decl } => {
            if add_set(table, name, decl)? {
                undo.push(Undo::SetAdded(name.clone()));
            }
        }
        Command::DeleteSet { name, .. } => {
            // The kernel does not mind `delete set` naming a map or the other way round.
            if !table.sets.contains_key(name) {
                return Err(reject(Errno::NoEnt, format!("set {name} does not exist")));
            }
            if set_refs.contains_key(name) {
                let by = set_referrer(table, name).unwrap_or_else(|| "something".to_string());
                return Err(reject(
                    Errno::Busy,
                    format!("set {name} is referenced by {by}"),
                ));
            }
            if let Some(set) = table.sets.remove(name) {
                for elem in set.elements.values() {
                    count_element(chain_refs, elem, false);
                }
                undo.push(Undo::SetDeleted(name.clone(), set));
            }
        }
        Command::AddElements { set, elements } => {
            let chains = &table.chains;
            let target = table
                .sets
                .get_mut(set)
                .ok_or_else(|| reject(Errno::NoEnt, format!("set {set} does not exist")))?;
            for (key, elem) in elements {
                let element = || format!("element {}", key_text(&key.values()));
                let key = check_key(family, &target.decl, &key.values())
                    .map_err(|why| format!("{}: {why}", element()))?;
                check_value(family, target.decl.kind, elem, chains)
                    .map_err(|why| format!("{}: {why}", element()))?;
                if let Some(existing) = target.elements.get(&key) {
                    if existing.value == elem.value {
                        continue;
                    }
                    return Err(reject(
                        Errno::Exist,
                        format!("{} exists with another value", element()),
                    ));
                }
                if target.decl.interval
                    && let Some(other) = overlapping(&target.elements, &key.values())
                {
                    return Err(reject(
                        Errno::Exist,
                        format!(
                            "{}: interval overlaps with the existing {}",
                            element(),
                            key_text(&other.values())
                        ),
                    ));
                }
                if element_chain_ref(elem).is_some() {
                    *validate = true;
                }
                count_element(chain_refs, elem, true);
                target.elements.insert(key, elem.clone());
                undo.push(Undo::ElementAdded(set.clone(), key));
            }
        }
        Command::DeleteElements { set, keys } => {
            let target = table
                .sets
                .get_mut(set)
                .ok_or_else(|| reject(Errno::NoEnt, format!("set {set} does not exist")))?;
            for key in keys {
                let normal = check_key(family, &target.decl, &key.values()).unwrap_or(*key);
                let removed = target.elements.remove(&normal).ok_or_else(|| {
                    reject(
                        Errno::NoEnt,
                        format!("element {} does not exist", key_text(&key.values())),
                    )
                })?;
                count_element(chain_refs, &removed, false);
                undo.push(Undo::ElementDeleted(set.clone(), normal, removed));
            }
        }
    }
    Ok(())
}

fn hook_text(h: &BaseHook) -> String {
    let kind = match h.kind {
        ChainType::Filter => "filter",
        ChainType::Nat => "nat",
    };
    format!("type {kind} hook {} priority {}", h.hook.name(), h.priority)
}

/// Adds a chain or checks the existing one; whether it created one.
fn add_chain(table: &mut Table, name: &str, chain: &Chain) -> Result<bool, String> {
    if let Some(h) = &chain.hook
        && h.kind == ChainType::Nat
        && h.hook == Hook::Forward
    {
        return Err(reject(Errno::OpNotSupp, "nat chains cannot hook forward"));
    }
    let Some(existing) = table.chains.get(name) else {
        table.chains.insert(
            name.to_string(),
            Chain {
                hook: chain.hook,
                comment: chain.comment.clone(),
                rules: Vec::new(),
            },
        );
        return Ok(true);
    };
    match (&existing.hook, &chain.hook) {
        // No spec, or the same one: the chain stays as it is (its comment too).
        (_, None) => Ok(false),
        (Some(old), Some(new)) if old == new => Ok(false),
        (None, Some(_)) => Err(reject(
            Errno::OpNotSupp,
            format!("regular chain {name} cannot become a base chain"),
        )),
        (Some(old), Some(new)) if old.kind != new.kind => Err(reject(
            Errno::Exist,
            format!("chain {name} exists with {}", hook_text(old)),
        )),
        (Some(old), Some(_)) => Err(reject(
            Errno::OpNotSupp,
            format!("base chain {name} exists with {}", hook_text(old)),
        )),
    }
}

/// Adds a set or checks the existing one; whether it created one.
fn add_set(table: &mut Table, name: &str, decl: &SetDecl) -> Result<bool, String> {
    if decl.key.is_empty() {
        return Err(reject(Errno::Inval, "a set needs a key"));
    }
    let slot_map = decl.key == [KeyType::Slot] && decl.kind != SetKind::Set;
    let affinity = decl.key == [KeyType::Addr, KeyType::Slot] && decl.kind == SetKind::Set;
    if decl.key.contains(&KeyType::Slot) && !slot_map && !affinity {
        return Err(reject(
            Errno::Inval,
            "a numgen integer key is the whole key of a map or follows an address in a set",
        ));
    }
    if decl.interval && decl.timeout.is_some() {
        return Err(reject(
            Errno::Inval,
            "flags interval and timeout cannot be declared together",
        ));
    }
    match table.sets.get(name) {
        None => {
            table.sets.insert(
                name.to_string(),
                crate::ruleset::Set {
                    decl: decl.clone(),
                    elements: BTreeMap::new(),
                },
            );
            Ok(true)
        }
        Some(existing) => {
            let old = &existing.decl;
            if old.kind == decl.kind
                && old.key == decl.key
                && old.interval == decl.interval
                && old.timeout == decl.timeout
                && old.size == decl.size
            {
                // The kernel keeps the old comment.
                Ok(false)
            } else {
                Err(reject(
                    Errno::Exist,
                    format!("set {name} exists with another declaration ({old:?})"),
                ))
            }
        }
    }
}

/// `rule N of chain C` for the first rule or element entering chain `name`.
fn chain_referrer(table: &Table, name: &str) -> Option<String> {
    for (cname, chain) in &table.chains {
        for (i, rule) in chain.rules.iter().enumerate() {
            if rule.chains().any(|t| t == name) {
                return Some(format!("rule {} of chain {cname}", i + 1));
            }
        }
    }
    for (sname, set) in &table.sets {
        for (key, elem) in &set.elements {
            if element_chain_ref(elem) == Some(name) {
                return Some(format!(
                    "element {} of map {sname}",
                    key_text(&key.values())
                ));
            }
        }
    }
    None
}

/// `rule N of chain C` for the first rule using set `name`.
fn set_referrer(table: &Table, name: &str) -> Option<String> {
    table.chains.iter().find_map(|(cname, chain)| {
        chain
            .rules
            .iter()
            .position(|r| r.sets().any(|s| s == name))
            .map(|i| format!("rule {} of chain {cname}", i + 1))
    })
}

fn addr_family(addr: &IpAddr) -> IpFamily {
    match addr {
        IpAddr::V4(_) => IpFamily::IPv4,
        IpAddr::V6(_) => IpFamily::IPv6,
    }
}

fn check_addr(family: IpFamily, addr: &IpAddr) -> Result<(), String> {
    if addr_family(addr) == family {
        Ok(())
    } else {
        Err(reject(
            Errno::Inval,
            format!(
                "address {addr} is not of family {} (datatype mismatch)",
                family_name(family)
            ),
        ))
    }
}

fn type_text(t: KeyType) -> &'static str {
    match t {
        KeyType::Addr => "address",
        KeyType::Proto => "inet_proto",
        KeyType::Service => "inet_service",
        KeyType::Slot => "integer (numgen slot)",
    }
}

fn types_text(types: &[KeyType]) -> String {
    types
        .iter()
        .map(|t| type_text(*t))
        .collect::<Vec<_>>()
        .join(" . ")
}

/// Checks an element key against a declaration; returns it as nft stores it (prefixes of
/// interval sets without host bits, full-length prefixes as addresses).
fn check_key(family: IpFamily, decl: &SetDecl, key: &[Value]) -> Result<ElemKey, String> {
    if key.len() != decl.key.len() {
        return Err(reject(
            Errno::Inval,
            format!(
                "key has {} components, the set's key is {}",
                key.len(),
                types_text(&decl.key)
            ),
        ));
    }
    let mut out = Vec::with_capacity(key.len());
    for (value, ty) in key.iter().zip(&decl.key) {
        let normal = match (ty, value) {
            (KeyType::Addr, Value::Addr(a)) => {
                check_addr(family, a)?;
                *value
            }
            (KeyType::Addr, Value::Net(n)) => {
                check_addr(family, &n.addr())?;
                if !decl.interval {
                    return Err(reject(
                        Errno::Inval,
                        format!("prefix {n} needs a set with flags interval"),
                    ));
                }
                let n = n.trunc();
                if n.prefix_len() == n.max_prefix_len() {
                    Value::Addr(n.addr())
                } else {
                    Value::Net(n)
                }
            }
            (KeyType::Proto, Value::Proto(_))
            | (KeyType::Service, Value::Port(_))
            | (KeyType::Slot, Value::Int(_)) => *value,
            _ => {
                return Err(reject(
                    Errno::Inval,
                    format!("datatype mismatch: {value} is not {}", type_text(*ty)),
                ));
            }
        };
        out.push(normal);
    }
    ElemKey::new(&out).ok_or_else(|| {
        reject(
            Errno::Inval,
            format!("key {} is too long to hold", key_text(&out)),
        )
    })
}

/// Checks an element's value against the kind of its set.
fn check_value(
    family: IpFamily,
    kind: SetKind,
    elem: &Element,
    chains: &BTreeMap<String, Chain>,
) -> Result<(), String> {
    match (kind, &elem.value) {
        (SetKind::Set, None) => Ok(()),
        (SetKind::VerdictMap, Some(ElemValue::Verdict(v))) => match v.target() {
            Some(target) => check_jump(chains, target),
            None => Ok(()),
        },
        (SetKind::EndpointMap, Some(ElemValue::Endpoint(e))) => check_addr(family, &e.ip()),
        (SetKind::Set, Some(_)) => Err(reject(Errno::Inval, "a set element has no value")),
        (_, None) => Err(reject(Errno::Inval, "a map element needs a value")),
        (_, Some(v)) => Err(reject(
            Errno::Inval,
            format!("datatype mismatch: {v:?} is not a value of this map"),
        )),
    }
}

/// A `jump`/`goto` target must exist and be a regular chain.
fn check_jump(chains: &BTreeMap<String, Chain>, target: &str) -> Result<(), String> {
    match chains.get(target) {
        None => Err(reject(
            Errno::NoEnt,
            format!("chain {target} does not exist"),
        )),
        Some(c) if c.hook.is_some() => Err(reject(
            Errno::OpNotSupp,
            format!("cannot jump to base chain {target}"),
        )),
        Some(_) => Ok(()),
    }
}

/// The key types an expression yields, `None` when no set can hold its values.
fn expr_types(expr: &Expr) -> Option<Vec<KeyType>> {
    match expr {
        Expr::Saddr | Expr::Daddr => Some(vec![KeyType::Addr]),
        Expr::L4Proto => Some(vec![KeyType::Proto]),
        Expr::ThDport | Expr::TcpDport => Some(vec![KeyType::Service]),
        Expr::Numgen { .. } => Some(vec![KeyType::Slot]),
        Expr::Concat(parts) => {
            let mut out = Vec::new();
            for p in parts {
                out.extend(expr_types(p)?);
            }
            Some(out)
        }
        Expr::MarkAnd(_)
        | Expr::FibSaddrType
        | Expr::FibDaddrType
        | Expr::CtState
        | Expr::CtStatus => None,
    }
}

/// Looks up `@name` for a rule: it must exist, be of `kind` and have a key `expr` yields.
fn check_lookup<'a>(
    family: IpFamily,
    table: &'a Table,
    name: &str,
    kinds: &[SetKind],
    expr: Option<&Expr>,
) -> Result<&'a SetDecl, String> {
    let set = table
        .sets
        .get(name)
        .ok_or_else(|| reject(Errno::NoEnt, format!("set {name} does not exist")))?;
    let decl = &set.decl;
    if !kinds.contains(&decl.kind) {
        return Err(reject(
            Errno::Inval,
            format!(
                "datatype mismatch: @{name} is a {:?}, expected {kinds:?}",
                decl.kind
            ),
        ));
    }
    if let Some(expr) = expr
        && expr_types(expr).as_deref() != Some(decl.key.as_slice())
    {
        let mut text = String::new();
        expr.write(family, &mut text);
        return Err(reject(
            Errno::Inval,
            format!(
                "datatype mismatch: {text} does not fit the key of @{name} ({})",
                types_text(&decl.key)
            ),
        ));
    }
    Ok(decl)
}

/// Checks a rule about to be added to `table` (its chain exists).
fn check_rule(family: IpFamily, table: &Table, rule: &Rule) -> Result<(), String> {
    for stmt in &rule.stmts {
        match stmt {
            Stmt::Match {
                left,
                right: Operand::Set(name),
                ..
            } => {
                check_lookup(family, table, name, &[SetKind::Set], Some(left))?;
            }
            Stmt::Match {
                left: Expr::Saddr | Expr::Daddr,
                right: Operand::Value(v),
                ..
            } => match v {
                Value::Addr(a) => check_addr(family, a)?,
                Value::Net(n) => check_addr(family, &n.addr())?,
                _ => {
                    return Err(reject(
                        Errno::Inval,
                        format!("datatype mismatch: {v} is not an address"),
                    ));
                }
            },
            Stmt::Match { .. } => {}
            Stmt::Vmap { key, map } => {
                check_lookup(family, table, map, &[SetKind::VerdictMap], Some(key))?;
            }
            Stmt::Update { set, key } => {
                let decl = check_lookup(family, table, set, &[SetKind::Set], Some(key))?;
                if decl.timeout.is_none() {
                    return Err(reject(
                        Errno::OpNotSupp,
                        format!("update needs a dynamic set, @{set} has no timeout"),
                    ));
                }
            }
            Stmt::DnatTo(e) => check_addr(family, &e.ip())?,
            Stmt::DnatNumgen { modulus, map } => {
                if *modulus == 0 {
                    return Err(reject(Errno::Inval, "numgen modulus 0"));
                }
                check_lookup(
                    family,
                    table,
                    map,
                    &[SetKind::EndpointMap],
                    Some(&Expr::numgen(*modulus)),
                )?;
            }
            Stmt::Verdict(v) => {
                if let Some(target) = v.target() {
                    check_jump(&table.chains, target)?;
                }
            }
            Stmt::Mark(_) | Stmt::Masquerade | Stmt::Reject => {}
        }
    }
    Ok(())
}

/// An element of an interval set that overlaps `key` (a single-component key; concatenated
/// interval keys are not checked).
fn overlapping<'a>(elements: &'a BTreeMap<ElemKey, Element>, key: &[Value]) -> Option<&'a ElemKey> {
    let [value] = key else {
        return None;
    };
    let range = addr_range(value)?;
    elements.keys().find(|other| match *other.values() {
        [o] => addr_range(&o).is_some_and(|r| r.0 <= range.1 && range.0 <= r.1),
        _ => false,
    })
}

/// First and last address of an address or prefix, as integers (`None` for other values).
fn addr_range(value: &Value) -> Option<(u128, u128)> {
    let net = match value {
        Value::Addr(a) => IpNet::from(*a),
        Value::Net(n) => *n,
        _ => return None,
    };
    let as_int = |a: IpAddr| match a {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    };
    Some((as_int(net.network()), as_int(net.broadcast())))
}

// ---------------------------------------------------------------------------------------------
// Commit-time validation

/// The chains a chain's rules enter: `jump`/`goto`, and the elements of the verdict maps they
/// look up.
fn successors<'a>(table: &'a Table, chain: &'a Chain) -> Vec<&'a str> {
    let mut out = Vec::new();
    for rule in &chain.rules {
        for stmt in &rule.stmts {
            match stmt {
                Stmt::Verdict(v) => out.extend(v.target()),
                Stmt::Vmap { map, .. } => {
                    if let Some(set) = table.sets.get(map) {
                        out.extend(set.elements.values().filter_map(element_chain_ref));
                    }
                }
                _ => {}
            }
        }
    }
    out
}

/// The longest chain of jumps below `name`; fails past the jump stack (which loops do).
fn height<'a>(
    table: &'a Table,
    name: &'a str,
    depth: usize,
    memo: &mut HashMap<&'a str, usize>,
) -> Result<usize, String> {
    if let Some(h) = memo.get(name) {
        return Ok(*h);
    }
    if depth > JUMP_STACK {
        return Err(reject(
            Errno::MLink,
            format!("jumps nest deeper than {JUMP_STACK} (a loop?) through chain {name}"),
        ));
    }
    let mut h = 0;
    if let Some(chain) = table.chains.get(name) {
        for next in successors(table, chain) {
            h = h.max(1 + height(table, next, depth + 1, memo)?);
        }
    }
    memo.insert(name, h);
    Ok(h)
}

/// The commit-time checks of the chains reachable from base chains.
fn validate(table: &Table) -> Result<(), String> {
    let mut memo = HashMap::new();
    for (name, chain) in &table.chains {
        let Some(hook) = &chain.hook else {
            continue;
        };
        let h = height(table, name, 0, &mut memo)?;
        if h >= JUMP_STACK {
            return Err(reject(
                Errno::MLink,
                format!("jumps from base chain {name} nest {h} deep"),
            ));
        }
        // Every chain reachable from this base chain runs at its hook.
        let mut seen: HashSet<&str> = HashSet::from([name.as_str()]);
        let mut queue: VecDeque<&str> = VecDeque::from([name.as_str()]);
        while let Some(current) = queue.pop_front() {
            let Some(c) = table.chains.get(current) else {
                continue;
            };
            check_hook_stmts(current, c, name, hook)?;
            for next in successors(table, c) {
                if seen.insert(next) {
                    queue.push_back(next);
                }
            }
        }
    }
    Ok(())
}

/// `dnat` runs under nat prerouting/output only, `masquerade` under nat postrouting only.
fn check_hook_stmts(name: &str, chain: &Chain, base: &str, hook: &BaseHook) -> Result<(), String> {
    let nat = hook.kind == ChainType::Nat;
    for rule in &chain.rules {
        for stmt in &rule.stmts {
            let (what, ok) = match stmt {
                Stmt::DnatTo(_) | Stmt::DnatNumgen { .. } => (
                    "dnat",
                    nat && matches!(hook.hook, Hook::Prerouting | Hook::Output),
                ),
                Stmt::Masquerade => ("masquerade", nat && hook.hook == Hook::Postrouting),
                _ => continue,
            };
            if !ok {
                return Err(reject(
                    Errno::OpNotSupp,
                    format!(
                        "chain {name} uses {what} and is reached from base chain {base} ({})",
                        hook_text(hook)
                    ),
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ruleset::{MarkOp, Verdict};
    use crate::transaction::TableId;
    use svcroute_core::model::Protocol;

    const V4: IpFamily = IpFamily::IPv4;
    const V6: IpFamily = IpFamily::IPv6;
    const T: &str = "svcroute";

    fn kernel() -> (FakeKernel, Box<dyn Kernel>) {
        let k = FakeKernel::new();
        (k.clone(), Box::new(k))
    }

    fn addr(s: &str) -> Value {
        Value::Addr(s.parse().unwrap())
    }

    fn net(s: &str) -> Value {
        Value::Net(s.parse().unwrap())
    }

    fn base(kind: ChainType, hook: Hook, priority: i32) -> Chain {
        Chain {
            hook: Some(BaseHook {
                kind,
                hook,
                priority,
            }),
            ..Chain::default()
        }
    }

    fn add_chain(name: &str, chain: Chain) -> Command {
        Command::AddChain {
            name: name.into(),
            chain,
        }
    }

    fn regular(name: &str) -> Command {
        add_chain(name, Chain::default())
    }

    fn rule(chain: &str, stmts: Vec<Stmt>) -> Command {
        Command::AddRule {
            chain: chain.into(),
            rule: Rule::new(stmts),
        }
    }

    fn jump(target: &str) -> Stmt {
        Stmt::Verdict(Verdict::Jump(target.into()))
    }

    fn goto(target: &str) -> Stmt {
        Stmt::Verdict(Verdict::Goto(target.into()))
    }

    fn decl(kind: SetKind, key: Vec<KeyType>) -> SetDecl {
        SetDecl {
            kind,
            key,
            interval: false,
            timeout: None,
            size: None,
            protocol: None,
            comment: None,
        }
    }

    fn service_key() -> Vec<KeyType> {
        vec![KeyType::Addr, KeyType::Proto, KeyType::Service]
    }

    fn add_set(name: &str, decl: SetDecl) -> Command {
        Command::AddSet {
            name: name.into(),
            decl,
        }
    }

    fn elements(set: &str, elements: Vec<(ElemKey, Option<ElemValue>)>) -> Command {
        Command::AddElements {
            set: set.into(),
            elements: elements
                .into_iter()
                .map(|(k, value)| {
                    (
                        k,
                        Element {
                            value,
                            comment: None,
                        },
                    )
                })
                .collect(),
        }
    }

    fn service(ip: &str, port: u16) -> ElemKey {
        ElemKey::new(&[addr(ip), Value::Proto(Protocol::Tcp), Value::Port(port)]).unwrap()
    }

    fn to_chain(target: &str) -> Option<ElemValue> {
        Some(ElemValue::Verdict(Verdict::Goto(target.into())))
    }

    fn endpoint(e: &str) -> Option<ElemValue> {
        Some(ElemValue::Endpoint(e.parse().unwrap()))
    }

    fn delete_elements(set: &str, keys: Vec<ElemKey>) -> Command {
        Command::DeleteElements {
            set: set.into(),
            keys,
        }
    }

    fn tx(family: IpFamily, commands: Vec<Command>) -> Transaction {
        let mut tx = Transaction::new();
        for c in commands {
            tx.push(&TableId::new(family, T), c);
        }
        tx
    }

    fn service_lookup() -> Stmt {
        Stmt::Vmap {
            key: Expr::Concat(vec![Expr::Daddr, Expr::L4Proto, Expr::ThDport]),
            map: "service-ips".into(),
        }
    }

    fn dnat(map: &str) -> Stmt {
        Stmt::DnatNumgen {
            modulus: 1,
            map: map.into(),
        }
    }

    /// A small table shaped like svcroute's: nat-prerouting -> services -(vmap)-> svc-a ->
    /// mark (a rule's jump), svc-b (an element's goto, empty), nat-postrouting masquerades.
    fn setup_commands() -> Vec<Command> {
        vec![
            Command::AddTable {
                comment: Some("svcroute".into()),
            },
            add_chain(
                "nat-prerouting",
                base(ChainType::Nat, Hook::Prerouting, -100),
            ),
            add_chain(
                "nat-postrouting",
                base(ChainType::Nat, Hook::Postrouting, 100),
            ),
            add_chain("filter-forward", base(ChainType::Filter, Hook::Forward, -1)),
            regular("services"),
            regular("svc-a"),
            regular("svc-b"),
            regular("mark"),
            add_set("service-ips", decl(SetKind::VerdictMap, service_key())),
            add_set("svc-a-ep", decl(SetKind::EndpointMap, vec![KeyType::Slot])),
            add_set(
                "cidrs",
                SetDecl {
                    interval: true,
                    ..decl(SetKind::Set, vec![KeyType::Addr])
                },
            ),
            add_set(
                "affinity",
                SetDecl {
                    timeout: Some(10800),
                    protocol: None,
                    ..decl(SetKind::Set, vec![KeyType::Addr])
                },
            ),
            elements(
                "service-ips",
                vec![
                    (service("10.96.0.10", 80), to_chain("svc-a")),
                    (service("10.96.0.11", 80), to_chain("svc-b")),
                ],
            ),
            elements(
                "svc-a-ep",
                vec![(ElemKey::from([Value::Int(0)]), endpoint("10.1.0.1:8080"))],
            ),
            elements("cidrs", vec![(ElemKey::from([net("10.0.0.0/8")]), None)]),
            rule("nat-prerouting", vec![jump("services")]),
            rule("services", vec![service_lookup()]),
            rule(
                "svc-a",
                vec![
                    Stmt::Match {
                        left: Expr::Saddr,
                        negate: false,
                        right: Operand::Set("cidrs".into()),
                    },
                    jump("mark"),
                ],
            ),
            rule(
                "svc-a",
                vec![
                    Stmt::Update {
                        set: "affinity".into(),
                        key: Expr::Saddr,
                    },
                    dnat("svc-a-ep"),
                ],
            ),
            rule("mark", vec![Stmt::Mark(MarkOp::Or(0x4000))]),
            rule("nat-postrouting", vec![Stmt::Masquerade]),
        ]
    }

    fn setup() -> (FakeKernel, Box<dyn Kernel>) {
        let (k, mut dp) = kernel();
        dp.run(&tx(V4, setup_commands())).unwrap();
        (k, dp)
    }

    /// Runs `commands` (IPv4), expects a rejection mentioning `needle`, and no change.
    fn rejected(k: &FakeKernel, dp: &mut Box<dyn Kernel>, commands: Vec<Command>, needle: &str) {
        let before = (k.table(V4, T), k.table(V6, T));
        let text = tx(V4, commands.clone()).text();
        let err = dp.run(&tx(V4, commands)).unwrap_err();
        assert!(matches!(err, KernelError::Fake(_)), "{text}: {err}");
        let msg = err.to_string();
        assert!(msg.contains(needle), "{text}: {msg:?} lacks {needle:?}");
        assert_eq!((k.table(V4, T), k.table(V6, T)), before, "{text} changed");
    }

    fn accepted(dp: &mut Box<dyn Kernel>, commands: Vec<Command>) {
        let text = tx(V4, commands.clone()).text();
        if let Err(e) = dp.run(&tx(V4, commands)) {
            panic!("{text}: {e}");
        }
    }

    #[test]
    fn setup_builds_the_table() {
        let (k, mut dp) = setup();
        let t = k.table(V4, T).unwrap();
        assert_eq!(t.family, V4);
        assert_eq!(t.comment.as_deref(), Some("svcroute"));
        assert_eq!(t.chains.len(), 7);
        assert_eq!(t.chains["svc-a"].rules.len(), 2);
        assert_eq!(t.sets["service-ips"].elements.len(), 2);
        assert_eq!(
            t.chains["nat-prerouting"].hook,
            base(ChainType::Nat, Hook::Prerouting, -100).hook
        );
        let mut listed = t.clone();
        as_listed(&mut listed);
        assert_eq!(dp.list_table(V4, T).unwrap(), Some(listed));
        assert_eq!(dp.list_table(V6, T).unwrap(), None);
        assert_eq!(dp.list_table(V4, "other").unwrap(), None);
        assert_eq!(k.reads(), 3);
    }

    #[test]
    fn add_table_keeps_an_existing_table_and_its_comment() {
        let (k, mut dp) = setup();
        let before = k.table(V4, T);
        accepted(
            &mut dp,
            vec![Command::AddTable {
                comment: Some("new".into()),
            }],
        );
        accepted(&mut dp, vec![Command::AddTable { comment: None }]);
        assert_eq!(k.table(V4, T), before);
        // Created without comment, a later add in the same transaction does not set one.
        dp.run(&tx(
            V6,
            vec![
                Command::AddTable { comment: None },
                Command::AddTable {
                    comment: Some("later".into()),
                },
            ],
        ))
        .unwrap();
        assert_eq!(k.table(V6, T), Some(Table::new(V6)));
    }

    #[test]
    fn delete_table_and_commands_on_a_missing_table() {
        let (k, mut dp) = setup();
        let mut other = tx(V6, vec![Command::DeleteTable]);
        rejected_tx(
            &k,
            &mut dp,
            &mut other,
            "table does not exist: No such file",
        );
        for command in [
            regular("x"),
            Command::FlushChain("x".into()),
            Command::DeleteChain("x".into()),
            rule("x", vec![Stmt::Reject]),
            add_set("s", decl(SetKind::Set, vec![KeyType::Addr])),
            Command::DeleteSet {
                name: "s".into(),
                map: false,
            },
            elements("s", vec![]),
            delete_elements("s", vec![]),
        ] {
            let mut t = tx(V6, vec![command]);
            rejected_tx(&k, &mut dp, &mut t, "ENOENT");
        }
        // Deleting a table deletes everything in it, references included.
        accepted(&mut dp, vec![Command::DeleteTable]);
        assert_eq!(k.table(V4, T), None);
        // Delete and recreate in one transaction: a fresh table.
        dp.run(&tx(V4, setup_commands())).unwrap();
        accepted(
            &mut dp,
            vec![Command::DeleteTable, Command::AddTable { comment: None }],
        );
        assert_eq!(k.table(V4, T), Some(Table::new(V4)));
    }

    /// Like [`rejected`] for a prepared transaction.
    fn rejected_tx(k: &FakeKernel, dp: &mut Box<dyn Kernel>, tx: &mut Transaction, needle: &str) {
        let before = (k.table(V4, T), k.table(V6, T));
        let err = dp.run(tx).unwrap_err();
        assert!(err.to_string().contains(needle), "{}: {err}", tx.text());
        assert_eq!((k.table(V4, T), k.table(V6, T)), before);
    }

    #[test]
    fn add_chain_creates_or_keeps_identical_chains() {
        let (k, mut dp) = setup();
        let before = k.table(V4, T);
        accepted(
            &mut dp,
            vec![
                add_chain(
                    "nat-prerouting",
                    base(ChainType::Nat, Hook::Prerouting, -100),
                ),
                // No spec on a base chain: kept as it is.
                regular("nat-prerouting"),
                regular("services"),
                // The comment of an existing chain stays (the kernel ignores the new one).
                add_chain(
                    "svc-a",
                    Chain {
                        comment: Some("new".into()),
                        ..Chain::default()
                    },
                ),
            ],
        );
        assert_eq!(k.table(V4, T), before);
        rejected(
            &k,
            &mut dp,
            vec![add_chain(
                "nat-prerouting",
                base(ChainType::Nat, Hook::Prerouting, -99),
            )],
            "EOPNOTSUPP",
        );
        rejected(
            &k,
            &mut dp,
            vec![add_chain(
                "nat-prerouting",
                base(ChainType::Nat, Hook::Output, -100),
            )],
            "EOPNOTSUPP",
        );
        rejected(
            &k,
            &mut dp,
            vec![add_chain(
                "nat-prerouting",
                base(ChainType::Filter, Hook::Prerouting, -100),
            )],
            "EEXIST",
        );
        rejected(
            &k,
            &mut dp,
            vec![add_chain(
                "services",
                base(ChainType::Nat, Hook::Prerouting, -100),
            )],
            "regular chain services cannot become a base chain",
        );
        rejected(
            &k,
            &mut dp,
            vec![add_chain("x", base(ChainType::Nat, Hook::Forward, 0))],
            "EOPNOTSUPP",
        );
        // A new chain keeps its comment, not the rules of the command.
        accepted(
            &mut dp,
            vec![add_chain(
                "new",
                Chain {
                    comment: Some("c".into()),
                    rules: vec![Rule::new(vec![Stmt::Reject])],
                    hook: None,
                },
            )],
        );
        let t = k.table(V4, T).unwrap();
        assert_eq!(t.chains["new"].comment.as_deref(), Some("c"));
        assert!(t.chains["new"].rules.is_empty());
    }

    #[test]
    fn commands_on_missing_chains_fail() {
        let (k, mut dp) = setup();
        rejected(
            &k,
            &mut dp,
            vec![Command::FlushChain("nope".into())],
            "command 1 (flush chain ip svcroute nope): chain nope does not exist: No such file or directory (ENOENT)",
        );
        rejected(
            &k,
            &mut dp,
            vec![Command::DeleteChain("nope".into())],
            "ENOENT",
        );
        rejected(
            &k,
            &mut dp,
            vec![rule("nope", vec![Stmt::Reject])],
            "ENOENT",
        );
        // Flushing works and releases references.
        accepted(&mut dp, vec![Command::FlushChain("svc-a".into())]);
        assert!(k.table(V4, T).unwrap().chains["svc-a"].rules.is_empty());
        accepted(
            &mut dp,
            vec![
                Command::FlushChain("mark".into()),
                Command::DeleteChain("mark".into()),
            ],
        );
    }

    #[test]
    fn delete_chain_refuses_busy_chains() {
        let (k, mut dp) = setup();
        rejected(
            &k,
            &mut dp,
            vec![Command::DeleteChain("svc-a".into())],
            "chain svc-a still has 2 rules: Device or resource busy (EBUSY)",
        );
        // Emptied, but still a rule's target.
        rejected(
            &k,
            &mut dp,
            vec![
                Command::FlushChain("mark".into()),
                Command::DeleteChain("mark".into()),
            ],
            "chain mark is referenced by rule 1 of chain svc-a: Device or resource busy",
        );
        // Empty, the target of a verdict-map element.
        rejected(
            &k,
            &mut dp,
            vec![Command::DeleteChain("svc-b".into())],
            "chain svc-b is referenced by element 10.96.0.11 . tcp . 80 of map service-ips",
        );
        // Referenced through a goto too.
        accepted(&mut dp, vec![regular("g"), rule("svc-b", vec![goto("g")])]);
        rejected(&k, &mut dp, vec![Command::DeleteChain("g".into())], "EBUSY");
        // Once the references are gone (in the same transaction), deleting works.
        accepted(
            &mut dp,
            vec![
                Command::FlushChain("svc-b".into()),
                Command::DeleteChain("g".into()),
                delete_elements("service-ips", vec![service("10.96.0.11", 80)]),
                Command::DeleteChain("svc-b".into()),
                Command::FlushChain("svc-a".into()),
                Command::FlushChain("mark".into()),
                Command::DeleteChain("mark".into()),
            ],
        );
        let t = k.table(V4, T).unwrap();
        assert!(!t.chains.contains_key("svc-b") && !t.chains.contains_key("mark"));
        // A base chain may be deleted once empty.
        accepted(
            &mut dp,
            vec![
                Command::FlushChain("nat-postrouting".into()),
                Command::DeleteChain("nat-postrouting".into()),
            ],
        );
    }

    #[test]
    fn add_rule_checks_chains_and_sets_it_refers_to() {
        let (k, mut dp) = setup();
        let cases: Vec<(Vec<Stmt>, &str)> = vec![
            (
                vec![jump("nope")],
                "chain nope does not exist: No such file",
            ),
            (vec![goto("nope")], "ENOENT"),
            (
                vec![jump("nat-postrouting")],
                "cannot jump to base chain nat-postrouting: Operation not supported",
            ),
            (
                vec![Stmt::Match {
                    left: Expr::Saddr,
                    negate: true,
                    right: Operand::Set("nope".into()),
                }],
                "set nope does not exist: No such file",
            ),
            (
                vec![Stmt::Vmap {
                    key: Expr::Daddr,
                    map: "nope".into(),
                }],
                "ENOENT",
            ),
            (vec![dnat("nope")], "ENOENT"),
            (
                vec![Stmt::Update {
                    set: "nope".into(),
                    key: Expr::Saddr,
                }],
                "ENOENT",
            ),
            // Wrong kinds.
            (
                vec![Stmt::Match {
                    left: Expr::Concat(vec![Expr::Daddr, Expr::L4Proto, Expr::ThDport]),
                    negate: false,
                    right: Operand::Set("service-ips".into()),
                }],
                "datatype mismatch: @service-ips is a VerdictMap",
            ),
            (
                vec![Stmt::Vmap {
                    key: Expr::Saddr,
                    map: "cidrs".into(),
                }],
                "EINVAL",
            ),
            (vec![dnat("service-ips")], "EINVAL"),
            (
                vec![Stmt::Update {
                    set: "cidrs".into(),
                    key: Expr::Saddr,
                }],
                "update needs a dynamic set, @cidrs has no timeout: Operation not supported",
            ),
            // Keys that do not fit.
            (
                vec![Stmt::Vmap {
                    key: Expr::Concat(vec![Expr::Daddr, Expr::ThDport]),
                    map: "service-ips".into(),
                }],
                "datatype mismatch: ip daddr . th dport does not fit the key of @service-ips",
            ),
            (
                vec![Stmt::Match {
                    left: Expr::ThDport,
                    negate: false,
                    right: Operand::Set("cidrs".into()),
                }],
                "EINVAL",
            ),
            (
                vec![Stmt::Match {
                    left: Expr::MarkAnd(1),
                    negate: false,
                    right: Operand::Set("cidrs".into()),
                }],
                "EINVAL",
            ),
            // Addresses of the other family.
            (
                vec![Stmt::DnatTo("[fd00::1]:80".parse().unwrap())],
                "address fd00::1 is not of family ip",
            ),
            (
                vec![Stmt::Match {
                    left: Expr::Daddr,
                    negate: false,
                    right: Operand::Value(net("fd00::/64")),
                }],
                "EINVAL",
            ),
            (
                vec![Stmt::Match {
                    left: Expr::Daddr,
                    negate: false,
                    right: Operand::Value(Value::Port(80)),
                }],
                "EINVAL",
            ),
            (
                vec![Stmt::DnatNumgen {
                    modulus: 0,
                    map: "svc-a-ep".into(),
                }],
                "EINVAL",
            ),
        ];
        for (stmts, needle) in cases {
            rejected(&k, &mut dp, vec![rule("svc-b", stmts)], needle);
        }
        let err = dp
            .run(&tx(V4, vec![rule("svc-b", vec![jump("nope")])]))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "fake kernel: command 1 (add rule ip svcroute svc-b): rule \"jump nope\": \
             chain nope does not exist: No such file or directory (ENOENT)"
        );
        // The same kinds of references, well formed.
        accepted(
            &mut dp,
            vec![
                rule(
                    "svc-b",
                    vec![
                        Stmt::Match {
                            left: Expr::Daddr,
                            negate: false,
                            right: Operand::Value(net("10.96.0.0/12")),
                        },
                        Stmt::Update {
                            set: "affinity".into(),
                            key: Expr::Saddr,
                        },
                        Stmt::DnatTo("10.1.0.2:80".parse().unwrap()),
                    ],
                ),
                rule("svc-b", vec![goto("svc-a")]),
            ],
        );
        assert_eq!(k.table(V4, T).unwrap().chains["svc-b"].rules.len(), 2);
    }

    #[test]
    fn add_set_creates_or_keeps_identical_declarations() {
        let (k, mut dp) = setup();
        let before = k.table(V4, T);
        let vmap = decl(SetKind::VerdictMap, service_key());
        accepted(
            &mut dp,
            vec![
                add_set("service-ips", vmap.clone()),
                // The comment of an existing set stays (the kernel ignores the new one).
                add_set(
                    "service-ips",
                    SetDecl {
                        comment: Some("new".into()),
                        ..vmap.clone()
                    },
                ),
            ],
        );
        assert_eq!(k.table(V4, T), before);
        for (other, needle) in [
            (
                SetDecl {
                    kind: SetKind::Set,
                    ..vmap.clone()
                },
                "set service-ips exists with another declaration",
            ),
            (
                decl(SetKind::VerdictMap, vec![KeyType::Addr]),
                "File exists (EEXIST)",
            ),
            (
                SetDecl {
                    interval: true,
                    ..vmap.clone()
                },
                "EEXIST",
            ),
            (
                SetDecl {
                    timeout: Some(5),
                    protocol: None,
                    ..vmap.clone()
                },
                "EEXIST",
            ),
        ] {
            rejected(&k, &mut dp, vec![add_set("service-ips", other)], needle);
        }
        for bad in [
            decl(SetKind::Set, vec![]),
            decl(SetKind::Set, vec![KeyType::Slot]),
            decl(SetKind::EndpointMap, vec![KeyType::Slot, KeyType::Addr]),
            SetDecl {
                interval: true,
                timeout: Some(1),
                protocol: None,
                ..decl(SetKind::Set, vec![KeyType::Addr])
            },
        ] {
            rejected(&k, &mut dp, vec![add_set("new", bad)], "EINVAL");
        }
    }

    #[test]
    fn delete_set_refuses_missing_and_referenced_sets() {
        let (k, mut dp) = setup();
        let delete = |name: &str, map: bool| Command::DeleteSet {
            name: name.into(),
            map,
        };
        rejected(&k, &mut dp, vec![delete("nope", false)], "ENOENT");
        rejected(
            &k,
            &mut dp,
            vec![delete("cidrs", false)],
            "set cidrs is referenced by rule 1 of chain svc-a: Device or resource busy",
        );
        rejected(&k, &mut dp, vec![delete("svc-a-ep", true)], "EBUSY");
        rejected(&k, &mut dp, vec![delete("affinity", false)], "EBUSY");
        rejected(&k, &mut dp, vec![delete("service-ips", true)], "EBUSY");
        // Deleting the verdict map releases the chains its elements enter.
        accepted(
            &mut dp,
            vec![
                Command::FlushChain("services".into()),
                delete("service-ips", true),
                Command::DeleteChain("svc-b".into()),
                Command::FlushChain("svc-a".into()),
                // The kernel does not mind the keyword.
                delete("cidrs", true),
                delete("svc-a-ep", false),
            ],
        );
        let t = k.table(V4, T).unwrap();
        assert_eq!(t.sets.keys().collect::<Vec<_>>(), ["affinity"]);
    }

    #[test]
    fn add_elements_checks_keys_values_and_clashes() {
        let (k, mut dp) = setup();
        let before = k.table(V4, T);
        // Identical elements are fine; an existing element keeps its comment.
        accepted(
            &mut dp,
            vec![
                elements(
                    "service-ips",
                    vec![(service("10.96.0.10", 80), to_chain("svc-a"))],
                ),
                Command::AddElements {
                    set: "service-ips".into(),
                    elements: vec![(
                        service("10.96.0.10", 80),
                        Element {
                            value: to_chain("svc-a"),
                            comment: Some("new".into()),
                        },
                    )],
                },
                elements("cidrs", vec![(ElemKey::from([net("10.0.0.0/8")]), None)]),
            ],
        );
        assert_eq!(k.table(V4, T), before);
        let cases: Vec<(Command, &str)> = vec![
            (
                elements("nope", vec![(ElemKey::from([addr("1.1.1.1")]), None)]),
                "set nope does not exist: No such file",
            ),
            (
                elements(
                    "service-ips",
                    vec![(service("10.96.0.10", 80), to_chain("svc-b"))],
                ),
                "element 10.96.0.10 . tcp . 80 exists with another value: File exists (EEXIST)",
            ),
            (
                elements(
                    "service-ips",
                    vec![
                        (service("10.96.0.12", 80), to_chain("svc-a")),
                        (service("10.96.0.12", 80), to_chain("svc-b")),
                    ],
                ),
                "EEXIST",
            ),
            (
                elements(
                    "svc-a-ep",
                    vec![(ElemKey::from([Value::Int(0)]), endpoint("10.1.0.2:80"))],
                ),
                "EEXIST",
            ),
            (
                elements(
                    "service-ips",
                    vec![(service("10.96.0.12", 80), to_chain("nope"))],
                ),
                "chain nope does not exist: No such file",
            ),
            (
                elements(
                    "service-ips",
                    vec![(service("10.96.0.12", 80), to_chain("nat-prerouting"))],
                ),
                "EOPNOTSUPP",
            ),
            (
                elements(
                    "svc-a-ep",
                    vec![(ElemKey::from([addr("1.2.3.4")]), endpoint("10.1.0.2:80"))],
                ),
                "datatype mismatch: 1.2.3.4 is not integer (numgen slot): Invalid argument (EINVAL)",
            ),
            (
                elements(
                    "service-ips",
                    vec![(ElemKey::from([addr("10.96.0.12")]), to_chain("svc-a"))],
                ),
                "key has 1 components, the set's key is address . inet_proto . inet_service",
            ),
            (
                elements(
                    "service-ips",
                    vec![(
                        ElemKey::new(&[
                            addr("10.96.0.12"),
                            Value::Port(80),
                            Value::Proto(Protocol::Tcp),
                        ])
                        .unwrap(),
                        to_chain("svc-a"),
                    )],
                ),
                "EINVAL",
            ),
            (
                elements(
                    "service-ips",
                    vec![(service("fd00::1", 80), to_chain("svc-a"))],
                ),
                "address fd00::1 is not of family ip",
            ),
            (
                elements(
                    "svc-a-ep",
                    vec![(ElemKey::from([Value::Int(1)]), endpoint("[fd00::1]:80"))],
                ),
                "EINVAL",
            ),
            (
                elements("affinity", vec![(ElemKey::from([net("10.0.0.0/8")]), None)]),
                "prefix 10.0.0.0/8 needs a set with flags interval",
            ),
            (
                elements(
                    "cidrs",
                    vec![(ElemKey::from([addr("1.1.1.1")]), to_chain("svc-a"))],
                ),
                "a set element has no value",
            ),
            (
                elements("service-ips", vec![(service("10.96.0.12", 80), None)]),
                "a map element needs a value",
            ),
            (
                elements(
                    "service-ips",
                    vec![(service("10.96.0.12", 80), endpoint("10.1.0.1:80"))],
                ),
                "EINVAL",
            ),
            (
                elements("cidrs", vec![(ElemKey::from([net("10.1.0.0/16")]), None)]),
                "interval overlaps with the existing 10.0.0.0/8: File exists",
            ),
            (
                elements("cidrs", vec![(ElemKey::from([addr("10.2.3.4")]), None)]),
                "EEXIST",
            ),
            (
                elements("cidrs", vec![(ElemKey::from([net("0.0.0.0/0")]), None)]),
                "EEXIST",
            ),
        ];
        for (command, needle) in cases {
            rejected(&k, &mut dp, vec![command], needle);
        }
        // Prefixes are stored as nft lists them.
        accepted(
            &mut dp,
            vec![elements(
                "cidrs",
                vec![
                    (ElemKey::from([net("11.0.0.1/8")]), None),
                    (ElemKey::from([net("12.0.0.1/32")]), None),
                    (ElemKey::from([addr("13.0.0.1")]), None),
                ],
            )],
        );
        let keys: Vec<ElemKey> = k.table(V4, T).unwrap().sets["cidrs"]
            .elements
            .keys()
            .copied()
            .collect();
        assert_eq!(
            keys,
            [
                ElemKey::from([addr("12.0.0.1")]),
                ElemKey::from([addr("13.0.0.1")]),
                ElemKey::from([net("10.0.0.0/8")]),
                ElemKey::from([net("11.0.0.0/8")]),
            ]
        );
        // The same interval written another way is the same element.
        accepted(
            &mut dp,
            vec![elements(
                "cidrs",
                vec![(ElemKey::from([net("13.0.0.1/32")]), None)],
            )],
        );
        // IPv6 keys in an IPv6 table.
        dp.run(&tx(
            V6,
            vec![
                Command::AddTable { comment: None },
                regular("svc"),
                add_set("service-ips", decl(SetKind::VerdictMap, service_key())),
                elements(
                    "service-ips",
                    vec![(service("fd00::1", 53), to_chain("svc"))],
                ),
            ],
        ))
        .unwrap();
        assert_eq!(
            k.table(V6, T).unwrap().sets["service-ips"].elements.len(),
            1
        );
    }

    #[test]
    fn delete_elements_refuses_missing_keys() {
        let (k, mut dp) = setup();
        rejected(
            &k,
            &mut dp,
            vec![delete_elements(
                "service-ips",
                vec![service("10.9.9.9", 80)],
            )],
            "element 10.9.9.9 . tcp . 80 does not exist: No such file or directory (ENOENT)",
        );
        rejected(
            &k,
            &mut dp,
            vec![delete_elements(
                "nope",
                vec![ElemKey::from([addr("1.1.1.1")])],
            )],
            "set nope does not exist",
        );
        // Twice in one transaction: the second one fails.
        rejected(
            &k,
            &mut dp,
            vec![
                delete_elements("cidrs", vec![ElemKey::from([net("10.0.0.0/8")])]),
                delete_elements("cidrs", vec![ElemKey::from([net("10.0.0.0/8")])]),
            ],
            "command 2 (delete element ip svcroute cidrs)",
        );
        // A subnet of an interval is not an element.
        rejected(
            &k,
            &mut dp,
            vec![delete_elements(
                "cidrs",
                vec![ElemKey::from([net("10.0.0.0/16")])],
            )],
            "ENOENT",
        );
        accepted(
            &mut dp,
            vec![
                elements("cidrs", vec![(ElemKey::from([addr("11.0.0.1")]), None)]),
                delete_elements(
                    "cidrs",
                    vec![
                        ElemKey::from([net("10.0.0.1/8")]),
                        ElemKey::from([net("11.0.0.1/32")]),
                    ],
                ),
                delete_elements("svc-a-ep", vec![ElemKey::from([Value::Int(0)])]),
            ],
        );
        let t = k.table(V4, T).unwrap();
        assert!(t.sets["cidrs"].elements.is_empty());
        assert!(t.sets["svc-a-ep"].elements.is_empty());
    }

    #[test]
    fn transactions_are_atomic() {
        let (k, mut dp) = setup();
        let before = k.table(V4, T);
        // Both families, a failing command in the middle: nothing changes anywhere.
        let mut t = Transaction::new();
        t.push(&TableId::new(V6, T), Command::AddTable { comment: None });
        t.push(&TableId::new(V6, T), regular("svc"));
        t.push(&TableId::new(V4, T), regular("svc-c"));
        t.push(
            &TableId::new(V4, T),
            elements(
                "service-ips",
                vec![(service("10.96.0.20", 80), to_chain("svc-c"))],
            ),
        );
        t.push(&TableId::new(V4, T), Command::DeleteChain("nope".into()));
        t.push(&TableId::new(V4, T), Command::FlushChain("svc-a".into()));
        let err = dp.run(&t).unwrap_err();
        assert!(
            err.to_string().starts_with("fake kernel: command 5 "),
            "{err}"
        );
        assert_eq!(k.table(V4, T), before);
        assert_eq!(k.table(V6, T), None);
        // Without the failing command it all applies.
        t.commands.remove(4);
        dp.run(&t).unwrap();
        assert!(k.table(V6, T).unwrap().chains.contains_key("svc"));
        assert!(k.table(V4, T).unwrap().chains["svc-a"].rules.is_empty());
        // A transaction creating the table and failing later creates nothing.
        let (k2, mut dp2) = kernel();
        let mut commands = setup_commands();
        commands.push(rule("svc-b", vec![jump("nope")]));
        assert!(dp2.run(&tx(V4, commands)).is_err());
        assert_eq!(k2.table(V4, T), None);
    }

    #[test]
    fn commit_checks_what_base_chains_reach() {
        let (k, mut dp) = setup();
        // Masquerade in a chain nothing reaches is fine until a base chain reaches it.
        accepted(
            &mut dp,
            vec![regular("masq"), rule("masq", vec![Stmt::Masquerade])],
        );
        rejected(
            &k,
            &mut dp,
            vec![rule("services", vec![jump("masq")])],
            "commit of table ip svcroute: chain masq uses masquerade and is reached from base \
             chain nat-prerouting (type nat hook prerouting priority -100): Operation not \
             supported (EOPNOTSUPP)",
        );
        // Reached through a verdict-map element.
        rejected(
            &k,
            &mut dp,
            vec![elements(
                "service-ips",
                vec![(service("10.96.0.30", 80), to_chain("masq"))],
            )],
            "chain masq uses masquerade",
        );
        accepted(
            &mut dp,
            vec![
                add_chain(
                    "nat-postrouting",
                    base(ChainType::Nat, Hook::Postrouting, 100),
                ),
                rule("nat-postrouting", vec![jump("masq")]),
            ],
        );
        // DNAT under a filter chain, or under nat postrouting.
        rejected(
            &k,
            &mut dp,
            vec![rule("filter-forward", vec![jump("svc-a")])],
            "chain svc-a uses dnat and is reached from base chain filter-forward",
        );
        rejected(
            &k,
            &mut dp,
            vec![rule(
                "nat-postrouting",
                vec![Stmt::DnatTo("10.1.0.1:80".parse().unwrap())],
            )],
            "EOPNOTSUPP",
        );
        // Loops: fine while unreachable, refused once reachable.
        accepted(
            &mut dp,
            vec![
                regular("l1"),
                regular("l2"),
                rule("l1", vec![jump("l2")]),
                rule("l2", vec![goto("l1")]),
                rule("l1", vec![jump("l1")]),
            ],
        );
        rejected(
            &k,
            &mut dp,
            vec![rule("filter-forward", vec![jump("l1")])],
            "Too many links (EMLINK)",
        );
        // At most 15 nested jumps.
        let mut commands = Vec::new();
        for i in 1..=20 {
            commands.push(regular(&format!("c{i}")));
        }
        for i in 1..20 {
            commands.push(rule(&format!("c{i}"), vec![jump(&format!("c{}", i + 1))]));
        }
        accepted(&mut dp, commands);
        // filter-forward -> c6 -> ... -> c20: 15 jumps.
        accepted(&mut dp, vec![rule("filter-forward", vec![jump("c6")])]);
        rejected(
            &k,
            &mut dp,
            vec![rule("filter-forward", vec![jump("c5")])],
            "jumps from base chain filter-forward nest 16 deep: Too many links",
        );
    }

    #[test]
    fn injected_failures_apply_nothing_and_count() {
        let (k, mut dp) = kernel();
        let t = tx(V4, vec![Command::AddTable { comment: None }]);
        k.fail_next_writes(2);
        for _ in 0..2 {
            let err = dp.run(&t).unwrap_err();
            assert_eq!(err.to_string(), "fake kernel: injected failure");
        }
        assert_eq!(k.table(V4, T), None);
        dp.run(&t).unwrap();
        assert!(k.table(V4, T).is_some());
        assert_eq!(k.writes(), 3);

        k.fail_writes_after(1, 1);
        dp.run(&t).unwrap();
        assert!(dp.run(&t).is_err());
        dp.run(&t).unwrap();

        // Rejected transactions count as letting one through.
        k.fail_writes_after(1, 1);
        assert!(
            dp.run(&tx(V4, vec![Command::DeleteChain("x".into())]))
                .is_err()
        );
        assert_eq!(
            dp.run(&t).unwrap_err().to_string(),
            "fake kernel: injected failure"
        );

        k.fail_next_writes(3);
        k.fail_next_writes(0);
        dp.run(&t).unwrap();
        assert_eq!(k.writes(), 9);
    }

    #[test]
    fn writes_are_logged_and_counted() {
        let (k, mut dp) = kernel();
        assert_eq!(k.last_transaction(), None);
        let first = tx(V4, vec![Command::AddTable { comment: None }]);
        let bad = tx(V4, vec![Command::DeleteChain("x".into())]);
        dp.run(&first).unwrap();
        assert!(dp.run(&bad).is_err());
        assert_eq!(k.writes(), 2);
        assert_eq!(k.bytes(), first.text().len() + bad.text().len());
        assert_eq!(k.last_transaction(), Some(bad.text()));
        assert_eq!(k.transactions(), [first.text(), bad.text()]);
        k.clear_transactions();
        assert!(k.transactions().is_empty());
        assert_eq!(k.writes(), 2);
        // The log is bounded; the counters are not.
        for _ in 0..LOG_ENTRIES + 10 {
            dp.run(&first).unwrap();
        }
        assert_eq!(k.transactions().len(), LOG_ENTRIES);
        assert_eq!(k.writes(), LOG_ENTRIES + 12);
        // Reading is not writing.
        dp.list_table(V4, T).unwrap();
        assert_eq!(k.writes(), LOG_ENTRIES + 12);
    }

    #[test]
    fn set_table_simulates_other_programs() {
        let (k, mut dp) = setup();
        // Someone deletes our table: the next incremental transaction fails, whole.
        k.set_table(V4, T, None);
        assert_eq!(dp.list_table(V4, T).unwrap(), None);
        rejected(
            &k,
            &mut dp,
            vec![rule("svc-b", vec![Stmt::Reject])],
            "table does not exist",
        );
        // Someone edits it: we read their version, and our commands apply to it.
        let mut theirs = Table::new(V4);
        theirs.chains.insert("x".into(), Chain::default());
        k.set_table(V4, T, Some(theirs.clone()));
        assert_eq!(dp.list_table(V4, T).unwrap(), Some(theirs));
        accepted(&mut dp, vec![rule("x", vec![Stmt::Reject])]);
        assert_eq!(k.table(V4, T).unwrap().chains["x"].rules.len(), 1);
        assert_eq!(k.writes(), 3, "set_table is not a write");
        // The returned tables are copies.
        let mut copy = dp.list_table(V4, T).unwrap().unwrap();
        copy.chains.clear();
        assert_eq!(k.table(V4, T).unwrap().chains.len(), 1);
    }

    #[test]
    fn listing_shows_what_nft_json_shows() {
        let (k, mut dp) = setup();
        accepted(
            &mut dp,
            vec![
                elements("affinity", vec![(ElemKey::from([addr("10.1.0.9")]), None)]),
                add_chain(
                    "commented",
                    Chain {
                        comment: Some("c".into()),
                        ..Chain::default()
                    },
                ),
            ],
        );
        let full = k.table(V4, T).unwrap();
        assert_eq!(full.comment.as_deref(), Some("svcroute"));
        assert_eq!(full.chains["commented"].comment.as_deref(), Some("c"));
        assert_eq!(full.sets["affinity"].elements.len(), 1);
        let listed = dp.list_table(V4, T).unwrap().unwrap();
        assert_eq!(listed.comment, None);
        assert_eq!(listed.chains["commented"].comment, None);
        assert!(listed.sets["affinity"].elements.is_empty());
        assert_eq!(listed.sets["cidrs"], full.sets["cidrs"]);
        assert_eq!(listed.chains["svc-a"], full.chains["svc-a"]);
    }

    #[test]
    fn injected_read_failures() {
        let (k, mut dp) = setup();
        k.fail_next_reads(1);
        let err = dp.list_table(V4, T).unwrap_err();
        assert_eq!(err.to_string(), "fake kernel: injected read failure");
        assert!(dp.list_table(V4, T).unwrap().is_some());
        assert_eq!(k.reads(), 2);
    }

    #[test]
    fn conntrack_deletions_are_recorded_not_counted() {
        let (k, mut dp) = kernel();
        let flow = ConntrackFlows {
            protocol: Protocol::Udp,
            original_destination: Some("10.0.0.1".parse().unwrap()),
            original_port: Some(53),
            reply_source: None,
        };
        dp.delete_conntrack(V4, &[flow, flow]).unwrap();
        dp.delete_conntrack(V6, &[]).unwrap();
        assert_eq!(k.conntrack_deletions(), vec![(V4, flow), (V4, flow)]);
        assert_eq!(k.writes(), 0);
    }

    #[test]
    fn families_and_tables_are_separate() {
        let (k, mut dp) = setup();
        assert_eq!(k.table(V6, T), None);
        let mut other = Transaction::new();
        other.push(
            &TableId::new(V4, "other"),
            Command::AddTable { comment: None },
        );
        other.push(&TableId::new(V4, "other"), regular("svc-a"));
        dp.run(&other).unwrap();
        assert_eq!(k.table(V4, "other").unwrap().chains.len(), 1);
        assert_eq!(k.table(V4, T).unwrap().chains.len(), 7);
    }

    /// Random transactions (a fixed pseudo-random sequence): a rejected one leaves the table
    /// exactly as it was, and the reference counts always match the table.
    #[test]
    fn rollback_and_reference_counts_stay_exact() {
        let (k, mut dp) = setup();
        let mut seed: u64 = 0x5eed;
        let mut next = |n: usize| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((seed >> 33) as usize) % n
        };
        let chains = [
            "services", "svc-a", "svc-b", "mark", "x0", "x1", "x2", "nope",
        ];
        let sets = ["service-ips", "cidrs", "x-set", "nope"];
        let (mut accepted_count, mut rejected_count) = (0, 0);
        for _ in 0..3000 {
            let mut commands = Vec::new();
            for _ in 0..1 + next(4) {
                let chain = chains[next(chains.len())].to_string();
                let target = chains[next(chains.len())];
                let set = sets[next(sets.len())].to_string();
                let key = service("10.96.0.10", 80 + next(4) as u16);
                commands.push(match next(11) {
                    0 => regular(&chain),
                    1 => Command::FlushChain(chain),
                    2 => Command::DeleteChain(chain),
                    3 | 4 => rule(&chain, vec![jump(target)]),
                    5 => elements("service-ips", vec![(key, to_chain(target))]),
                    6 => delete_elements("service-ips", vec![key]),
                    7 => add_set("x-set", decl(SetKind::Set, vec![KeyType::Addr])),
                    8 => Command::DeleteSet {
                        name: set,
                        map: false,
                    },
                    9 => rule(
                        &chain,
                        vec![Stmt::Match {
                            left: Expr::Saddr,
                            negate: false,
                            right: Operand::Set("x-set".into()),
                        }],
                    ),
                    _ => {
                        if next(20) == 0 {
                            Command::DeleteTable
                        } else {
                            Command::AddTable { comment: None }
                        }
                    }
                });
            }
            let before = k.table(V4, T);
            match dp.run(&tx(V4, commands)) {
                Ok(_) => accepted_count += 1,
                Err(_) => {
                    rejected_count += 1;
                    assert_eq!(k.table(V4, T), before);
                }
            }
            let inner = k.lock();
            if let Some(stored) = inner.tables.get(&(V4, T.to_string())) {
                let fresh = Stored::new(stored.table.clone());
                assert_eq!(stored.chain_refs, fresh.chain_refs);
                assert_eq!(stored.set_refs, fresh.set_refs);
            }
        }
        assert!(
            accepted_count > 300 && rejected_count > 300,
            "{accepted_count} {rejected_count}"
        );
    }
}
