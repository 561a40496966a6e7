//! An in-memory kernel with `iptables-restore --noflush` semantics, for tests.
//!
//! The semantics follow what iptables-nft 1.8.9 does (checked on a scratch network namespace):
//! each table is committed atomically at its `COMMIT`, and a failure leaves the tables committed
//! before it in place; declaring an existing user chain flushes it, declaring a built-in chain
//! leaves its rules; `-X` refuses built-in, missing, non-empty and referenced chains; `-I N`
//! accepts at most one past the end; `-A`/`-I` refuse a jump to a chain that does not exist.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use svcroute_core::model::IpFamily;

use super::{ConntrackFlows, Kernel, KernelError};
use crate::parse::{self, Command, ParseError, RestoreTable};
use crate::ruleset::{Chains, Ruleset, TableName};

/// Targets that are extensions, not chains (the ones a kube-proxy ruleset may hold).
const STANDARD_TARGETS: &[&str] = &[
    "ACCEPT",
    "DROP",
    "RETURN",
    "REJECT",
    "DNAT",
    "SNAT",
    "MASQUERADE",
    "MARK",
    "LOG",
    "CONNMARK",
    "NOTRACK",
];

/// A cheap, cloneable handle on an in-memory kernel: keep one clone for inspection and fault
/// injection while the dataplane owns another as `Box<dyn Kernel>`.
#[derive(Clone, Debug, Default)]
pub struct FakeKernel {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Debug)]
struct Inner {
    ipv4: Ruleset,
    ipv6: Ruleset,
    /// `restore` calls, failed ones included.
    writes: usize,
    /// Successful writes still to let through before the armed failures.
    fail_skip: usize,
    /// Armed failures.
    fail_count: usize,
    nft: bool,
    conntrack: Vec<(IpFamily, ConntrackFlows)>,
    payloads: Vec<(IpFamily, String)>,
}

impl Default for Inner {
    fn default() -> Self {
        Inner {
            ipv4: empty_ruleset(),
            ipv6: empty_ruleset(),
            writes: 0,
            fail_skip: 0,
            fail_count: 0,
            nft: true,
            conntrack: Vec::new(),
            payloads: Vec::new(),
        }
    }
}

impl Inner {
    fn ruleset_mut(&mut self, family: IpFamily) -> &mut Ruleset {
        match family {
            IpFamily::IPv4 => &mut self.ipv4,
            IpFamily::IPv6 => &mut self.ipv6,
        }
    }

    fn ruleset(&self, family: IpFamily) -> &Ruleset {
        match family {
            IpFamily::IPv4 => &self.ipv4,
            IpFamily::IPv6 => &self.ipv6,
        }
    }

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
}

/// Filter and nat with their built-in chains, empty.
fn empty_ruleset() -> Ruleset {
    let mut rs = Ruleset::default();
    add_builtins(&mut rs);
    rs
}

/// Makes sure both tables and their built-in chains exist.
fn add_builtins(rs: &mut Ruleset) {
    for table in TableName::ALL {
        let chains = rs.tables.entry(table).or_default();
        for name in table.builtin_chains() {
            chains.entry((*name).to_string()).or_default();
        }
    }
}

fn fake_err(message: impl Into<String>) -> KernelError {
    KernelError::Fake(message.into())
}

/// The `-j`/`-g` target of a rule, if any.
fn rule_target(rule: &str) -> Result<Option<String>, ParseError> {
    let tokens = parse::tokenize(rule)?;
    Ok(tokens
        .iter()
        .position(|t| matches!(t.as_str(), "-j" | "--jump" | "-g" | "--goto"))
        .and_then(|i| tokens.get(i + 1).cloned()))
}

/// Checks a rule about to be added to `chain` of `table` (held in `chains`).
fn validate_rule(
    table: TableName,
    chains: &Chains,
    chain: &str,
    rule: &str,
) -> Result<(), KernelError> {
    if !chains.contains_key(chain) {
        return Err(fake_err(format!(
            "{table}: chain '{chain}' does not exist (rule {rule:?})"
        )));
    }
    let target = rule_target(rule).map_err(|e| fake_err(format!("{table}: {rule:?}: {e}")))?;
    if let Some(target) = target
        && !STANDARD_TARGETS.contains(&target.as_str())
        && !chains.contains_key(&target)
    {
        return Err(fake_err(format!(
            "{table}: Chain '{target}' does not exist (rule {rule:?} in {chain})"
        )));
    }
    Ok(())
}

/// Applies one table's commands to a copy of its chains and returns the copy (committed by the
/// caller), or the first error.
fn apply_table(current: &Chains, restore: &RestoreTable) -> Result<Chains, KernelError> {
    let table = restore.table;
    let mut chains = current.clone();
    for command in &restore.commands {
        match command {
            Command::Declare(name) => {
                // iptables-restore --noflush leaves a declared built-in chain's rules alone.
                if !table.is_builtin(name) {
                    chains.insert(name.clone(), Vec::new());
                }
            }
            Command::NewChain(name) => {
                if chains.contains_key(name) {
                    return Err(fake_err(format!(
                        "{table}: -N {name}: Chain already exists"
                    )));
                }
                chains.insert(name.clone(), Vec::new());
            }
            Command::Append { chain, rule } => {
                validate_rule(table, &chains, chain, rule)?;
                if let Some(rules) = chains.get_mut(chain) {
                    rules.push(rule.clone());
                }
            }
            Command::Insert {
                chain,
                position,
                rule,
            } => {
                validate_rule(table, &chains, chain, rule)?;
                if let Some(rules) = chains.get_mut(chain) {
                    if *position == 0 || *position > rules.len() + 1 {
                        return Err(fake_err(format!(
                            "{table}: -I {chain} {position}: Index of insertion too big"
                        )));
                    }
                    rules.insert(position - 1, rule.clone());
                }
            }
            Command::Delete { chain, rule } => {
                let rules = chains.get_mut(chain).ok_or_else(|| {
                    fake_err(format!("{table}: -D {chain}: chain does not exist"))
                })?;
                let index = rules
                    .iter()
                    .position(|r| parse::same_rule(r, rule))
                    .ok_or_else(|| {
                        fake_err(format!(
                            "{table}: -D {chain} {rule}: Bad rule (does a matching rule exist in that chain?)"
                        ))
                    })?;
                rules.remove(index);
            }
            Command::Flush(name) => {
                let rules = chains
                    .get_mut(name)
                    .ok_or_else(|| fake_err(format!("{table}: -F {name}: chain does not exist")))?;
                rules.clear();
            }
            Command::DeleteChain(name) => delete_chain(table, &mut chains, name)?,
            Command::List => {}
        }
    }
    Ok(chains)
}

/// `-X name`, refused like the real tool for built-in, missing, non-empty or referenced
/// chains.
fn delete_chain(table: TableName, chains: &mut Chains, name: &str) -> Result<(), KernelError> {
    let busy = |why: &str| fake_err(format!("{table}: -X {name}: {why}"));
    if table.is_builtin(name) {
        return Err(busy("built-in chain"));
    }
    match chains.get(name) {
        None => return Err(busy("chain does not exist")),
        Some(rules) if !rules.is_empty() => return Err(busy("chain is not empty")),
        Some(_) => {}
    }
    for (other, rules) in chains.iter() {
        for rule in rules {
            if rule_target(rule).ok().flatten().as_deref() == Some(name) {
                return Err(busy(&format!("chain is referenced from {other}")));
            }
        }
    }
    chains.remove(name);
    Ok(())
}

impl FakeKernel {
    /// An empty kernel: filter and nat with their built-in chains, for both families;
    /// nf_tables flavour.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A test that panicked while holding the lock leaves consistent data: keep using it.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Number of `restore` calls so far, failed ones included.
    pub fn writes(&self) -> usize {
        self.lock().writes
    }

    /// Makes the next `n` restores fail, applying nothing (`0` disarms).
    pub fn fail_next_writes(&self, n: usize) {
        self.fail_writes_after(0, n);
    }

    /// Lets `skip` more restores succeed, then makes the `n` following ones fail.
    pub fn fail_writes_after(&self, skip: usize, n: usize) {
        let mut inner = self.lock();
        inner.fail_skip = skip;
        inner.fail_count = n;
    }

    /// The rules of a family now.
    pub fn ruleset(&self, family: IpFamily) -> Ruleset {
        self.lock().ruleset(family).clone()
    }

    /// Replaces a family's rules with a parsed `iptables-save` dump (e.g. foreign rules, or
    /// what a crashed run left); built-in chains are always present.
    pub fn seed(&self, family: IpFamily, save_text: &str) -> Result<(), ParseError> {
        let mut rs = parse::parse_save(save_text)?;
        add_builtins(&mut rs);
        *self.lock().ruleset_mut(family) = rs;
        Ok(())
    }

    /// Every payload given to `restore`, in order (failed ones included).
    pub fn last_payloads(&self) -> Vec<(IpFamily, String)> {
        self.lock().payloads.clone()
    }

    /// Forgets the recorded payloads.
    pub fn clear_payloads(&self) {
        self.lock().payloads.clear();
    }

    /// Conntrack deletions requested so far, in order.
    pub fn conntrack_deletions(&self) -> Vec<(IpFamily, ConntrackFlows)> {
        self.lock().conntrack.clone()
    }

    /// Sets what `is_nft` answers (default `true`).
    pub fn set_nft(&self, nft: bool) {
        self.lock().nft = nft;
    }
}

impl Kernel for FakeKernel {
    fn restore(&mut self, family: IpFamily, payload: &str) -> Result<(), KernelError> {
        let mut inner = self.lock();
        inner.writes += 1;
        inner.payloads.push((family, payload.to_string()));
        if inner.take_failure() {
            return Err(fake_err("injected failure"));
        }
        let (tables, parse_error) = match parse::parse_restore(payload) {
            Ok(tables) => (tables, None),
            Err(e) => (committed_before(payload, e.line), Some(e)),
        };
        let ruleset = inner.ruleset_mut(family);
        for table in &tables {
            let current = ruleset.tables.entry(table.table).or_default();
            *current = apply_table(current, table)?;
        }
        match parse_error {
            Some(e) => Err(fake_err(format!("iptables-restore: {e}"))),
            None => Ok(()),
        }
    }

    fn save(&mut self, family: IpFamily) -> Result<String, KernelError> {
        Ok(self.lock().ruleset(family).to_save_format())
    }

    fn delete_conntrack(
        &mut self,
        family: IpFamily,
        flows: &[ConntrackFlows],
    ) -> Result<(), KernelError> {
        // Not a rule write: `writes` counts restores only.
        self.lock()
            .conntrack
            .extend(flows.iter().map(|f| (family, *f)));
        Ok(())
    }

    fn is_nft(&self) -> bool {
        self.lock().nft
    }
}

/// The tables of `payload` committed before a syntax error at `line`: the real tool commits
/// each table as it reaches its `COMMIT`, so they stay.
fn committed_before(payload: &str, line: usize) -> Vec<RestoreTable> {
    let lines: Vec<&str> = payload.lines().take(line.saturating_sub(1)).collect();
    let Some(last_commit) = lines.iter().rposition(|l| l.trim() == "COMMIT") else {
        return Vec::new();
    };
    let prefix = lines.get(..=last_commit).unwrap_or_default().join("\n");
    parse::parse_restore(&prefix).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const V4: IpFamily = IpFamily::IPv4;

    fn kernel() -> (FakeKernel, Box<dyn Kernel>) {
        let k = FakeKernel::new();
        (k.clone(), Box::new(k))
    }

    fn rules(k: &FakeKernel, table: TableName, chain: &str) -> Option<Vec<String>> {
        k.ruleset(V4).chain(table, chain).map(<[String]>::to_vec)
    }

    #[test]
    fn starts_with_builtin_chains_and_nft() {
        let (k, mut dp) = kernel();
        let rs = k.ruleset(IpFamily::IPv6);
        assert_eq!(rs.rule_count(), 0);
        assert_eq!(
            rs.chains(TableName::Nat)
                .unwrap()
                .keys()
                .collect::<Vec<_>>(),
            ["INPUT", "OUTPUT", "POSTROUTING", "PREROUTING"]
        );
        assert!(dp.is_nft());
        k.set_nft(false);
        assert!(!dp.is_nft());
        let saved = dp.save(V4).unwrap();
        assert!(saved.starts_with("*filter\n:FORWARD ACCEPT [0:0]\n"));
        assert_eq!(parse::parse_save(&saved).unwrap(), k.ruleset(V4));
    }

    #[test]
    fn restore_applies_commands() {
        let (k, mut dp) = kernel();
        dp.restore(
            V4,
            "*filter\n:KUBE-A - [0:0]\n:KUBE-B - [0:0]\n-A KUBE-A -j DROP\n-A KUBE-A -j KUBE-B\n\
             -I KUBE-A -s 1.1.1.1 -j ACCEPT\n-I KUBE-A 4 -j RETURN\n-A INPUT -j KUBE-A\nCOMMIT\n\
             *nat\n-S\n-N KUBE-C\n-A KUBE-C -m comment --comment \"a b\" -j MARK --or-mark 0x4000\nCOMMIT\n",
        )
        .unwrap();
        assert_eq!(
            rules(&k, TableName::Filter, "KUBE-A").unwrap(),
            ["-s 1.1.1.1 -j ACCEPT", "-j DROP", "-j KUBE-B", "-j RETURN"]
        );
        assert_eq!(
            rules(&k, TableName::Nat, "KUBE-C").unwrap(),
            ["-m comment --comment \"a b\" -j MARK --or-mark 0x4000"]
        );
        dp.restore(
            V4,
            "*filter\n-D KUBE-A -j  DROP\n-D INPUT -j KUBE-A\n-F KUBE-A\n-X KUBE-A\n:KUBE-B - [0:0]\nCOMMIT\n",
        )
        .unwrap();
        assert_eq!(rules(&k, TableName::Filter, "KUBE-A"), None);
        assert_eq!(
            rules(&k, TableName::Filter, "KUBE-B").unwrap(),
            Vec::<String>::new()
        );
        assert_eq!(k.writes(), 2);
        assert_eq!(k.last_payloads().len(), 2);
        k.clear_payloads();
        assert!(k.last_payloads().is_empty());
    }

    #[test]
    fn declare_flushes_user_chains_but_not_builtins() {
        let (k, mut dp) = kernel();
        dp.restore(
            V4,
            "*filter\n:KUBE-A - [0:0]\n-A KUBE-A -j DROP\n-A INPUT -j KUBE-A\nCOMMIT\n",
        )
        .unwrap();
        dp.restore(
            V4,
            "*filter\n:KUBE-A - [0:0]\n:INPUT ACCEPT [0:0]\nCOMMIT\n",
        )
        .unwrap();
        assert!(rules(&k, TableName::Filter, "KUBE-A").unwrap().is_empty());
        assert_eq!(
            rules(&k, TableName::Filter, "INPUT").unwrap(),
            ["-j KUBE-A"]
        );
    }

    #[test]
    fn errors_like_the_real_tool() {
        let (k, mut dp) = kernel();
        dp.restore(
            V4,
            "*filter\n:KUBE-A - [0:0]\n:KUBE-E - [0:0]\n-A KUBE-A -j KUBE-E\nCOMMIT\n",
        )
        .unwrap();
        let before = k.ruleset(V4);
        for bad in [
            "*filter\n-A KUBE-A -j KUBE-NOPE\nCOMMIT\n",
            "*filter\n-A KUBE-NOPE -j ACCEPT\nCOMMIT\n",
            "*filter\n-A KUBE-A -g KUBE-NOPE\nCOMMIT\n",
            "*filter\n-X KUBE-E\nCOMMIT\n",
            "*filter\n-X KUBE-A\nCOMMIT\n",
            "*filter\n-X INPUT\nCOMMIT\n",
            "*filter\n-X KUBE-NOPE\nCOMMIT\n",
            "*filter\n-D KUBE-A -j ACCEPT\nCOMMIT\n",
            "*filter\n-D KUBE-NOPE -j ACCEPT\nCOMMIT\n",
            "*filter\n-I KUBE-A 3 -j ACCEPT\nCOMMIT\n",
            "*filter\n-I KUBE-NOPE -j ACCEPT\nCOMMIT\n",
            "*filter\n-N KUBE-A\nCOMMIT\n",
            "*filter\n-N INPUT\nCOMMIT\n",
            "*filter\n-F KUBE-NOPE\nCOMMIT\n",
            "*filter\n-A KUBE-A -j ACCEPT\n",
            "*mangle\nCOMMIT\n",
            // The nat table has no KUBE-A.
            "*nat\n-A KUBE-A -j ACCEPT\nCOMMIT\n",
            // The whole table is atomic: the first command is undone.
            "*filter\n-A KUBE-A -j ACCEPT\n-A KUBE-A -j KUBE-NOPE\nCOMMIT\n",
        ] {
            let err = dp.restore(V4, bad).unwrap_err();
            assert!(matches!(err, KernelError::Fake(_)), "{bad}: {err}");
            assert_eq!(k.ruleset(V4), before, "{bad} changed the rules");
        }
        let err = dp
            .restore(V4, "*filter\n-A KUBE-A -j KUBE-MISSING\nCOMMIT\n")
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("Chain 'KUBE-MISSING' does not exist")
        );
        // -I at one past the end works; standard targets need no chain.
        dp.restore(
            V4,
            "*filter\n-I KUBE-A 2 -j REJECT --reject-with icmp-port-unreachable\nCOMMIT\n\
             *nat\n:KUBE-S - [0:0]\n-A KUBE-S -p tcp -j DNAT --to-destination 1.2.3.4:80\nCOMMIT\n",
        )
        .unwrap();
        assert_eq!(rules(&k, TableName::Filter, "KUBE-A").unwrap().len(), 2);
    }

    #[test]
    fn tables_committed_before_a_failure_stay() {
        let (k, mut dp) = kernel();
        let err = dp.restore(
            V4,
            "*filter\n:KUBE-A - [0:0]\nCOMMIT\n*nat\n-A KUBE-NOPE -j ACCEPT\nCOMMIT\n",
        );
        assert!(err.is_err());
        assert!(rules(&k, TableName::Filter, "KUBE-A").is_some());
        // A syntax error in a later table, too.
        let err = dp.restore(
            V4,
            "*filter\n:KUBE-B - [0:0]\nCOMMIT\n*nat\n:KUBE-C - [0:0]\n-Q nonsense\nCOMMIT\n",
        );
        assert!(err.is_err());
        assert!(rules(&k, TableName::Filter, "KUBE-B").is_some());
        assert!(rules(&k, TableName::Nat, "KUBE-C").is_none());
    }

    #[test]
    fn injected_failures_apply_nothing_and_count() {
        let (k, mut dp) = kernel();
        let payload = "*filter\n:KUBE-A - [0:0]\nCOMMIT\n";
        k.fail_next_writes(2);
        for _ in 0..2 {
            let err = dp.restore(V4, payload).unwrap_err();
            assert_eq!(err.to_string(), "fake kernel: injected failure");
        }
        assert!(rules(&k, TableName::Filter, "KUBE-A").is_none());
        dp.restore(V4, payload).unwrap();
        assert_eq!(k.writes(), 3);
        assert_eq!(k.last_payloads().len(), 3);

        k.fail_writes_after(1, 1);
        dp.restore(V4, payload).unwrap();
        assert!(dp.restore(V4, payload).is_err());
        dp.restore(V4, payload).unwrap();

        k.fail_next_writes(3);
        k.fail_next_writes(0);
        dp.restore(V4, payload).unwrap();
        assert_eq!(k.writes(), 7);
    }

    #[test]
    fn families_are_separate() {
        let (k, mut dp) = kernel();
        dp.restore(IpFamily::IPv6, "*nat\n:KUBE-X - [0:0]\nCOMMIT\n")
            .unwrap();
        assert!(
            k.ruleset(IpFamily::IPv6)
                .chain(TableName::Nat, "KUBE-X")
                .is_some()
        );
        assert!(rules(&k, TableName::Nat, "KUBE-X").is_none());
        assert_eq!(k.last_payloads()[0].0, IpFamily::IPv6);
    }

    #[test]
    fn seed_replaces_state_and_keeps_builtins() {
        let (k, mut dp) = kernel();
        dp.restore(V4, "*filter\n:KUBE-OLD - [0:0]\nCOMMIT\n")
            .unwrap();
        k.seed(
            V4,
            "*nat\n:KUBE-SEP-X - [0:0]\n-A KUBE-SEP-X -j DNAT --to-destination 1.2.3.4:80\nCOMMIT\n\
             *raw\n:PREROUTING ACCEPT [0:0]\nCOMMIT\n",
        )
        .unwrap();
        let rs = k.ruleset(V4);
        assert!(rs.chain(TableName::Filter, "KUBE-OLD").is_none());
        assert!(rs.chain(TableName::Filter, "FORWARD").is_some());
        assert!(rs.chain(TableName::Nat, "POSTROUTING").is_some());
        assert_eq!(rs.rule_count(), 1);
        assert!(k.seed(V4, "*nat\n").is_err());
        assert_eq!(k.ruleset(V4), rs);
        assert_eq!(k.writes(), 1, "seeding is not a write");
    }

    #[test]
    fn conntrack_deletions_are_recorded_not_counted() {
        let (k, mut dp) = kernel();
        let flow = ConntrackFlows {
            protocol: svcroute_core::model::Protocol::Udp,
            original_destination: Some("10.0.0.1".parse().unwrap()),
            original_port: Some(53),
            reply_source: None,
        };
        dp.delete_conntrack(V4, &[flow, flow]).unwrap();
        assert_eq!(k.conntrack_deletions(), vec![(V4, flow), (V4, flow)]);
        assert_eq!(k.writes(), 0);
    }
}
