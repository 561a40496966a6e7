//! What one family holds ([`FamilyState`]) and the `iptables-restore --noflush` payloads that
//! program it: a full sync against whatever the kernel holds, or an incremental one that
//! writes only what changed.
//!
//! Incremental payloads touch a per-service chain only when its rules changed (editing it rule
//! by rule when that is shorter than rewriting it, see `edit_script`), delete chains that
//! disappeared, and edit shared chains rule by rule: `-D` a rule by its text, `-I` a new one at
//! its sorted position. Shared chains keep head rules, sorted service rules, then tail
//! rules, so an incremental sync leaves exactly what a full sync writes.
//!
//! iptables-nft 1.8.9 spends time quadratic in the number of chains a `--noflush` payload
//! names (each command's chain is inserted into a sorted linked list of chains to fetch,
//! `cache_chain_list_insert`): 10,000 services × 3 endpoints take about three minutes. A
//! command naming no chain makes it fetch every chain instead and skip that list; `-S` (list
//! all rules) is such a command and changes nothing. Payloads that name many chains carry it,
//! after their built-in chain commands (see [`FamilyState::full_payload`]): the same restore
//! then takes about three seconds.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt::Write as _;

use svcroute_core::select::ServicePortName;

use crate::names;
use crate::render::{PortRules, SharedChain, Skeleton};
use crate::ruleset::{Chains, Ruleset, TableName};

/// Payloads naming more chains than this start with `-S` on iptables-nft (see module docs).
pub const CHAIN_CACHE_WORKAROUND_THRESHOLD: usize = 64;

type ChainKey = (TableName, String);

/// Everything svcroute programs in one family, with each service port's contribution
/// remembered (what an incremental sync diffs against).
#[derive(Debug, Clone, Default)]
pub struct FamilyState {
    skeleton: Skeleton,
    /// Service rules of each shared chain: rule → number of ports contributing it.
    bodies: BTreeMap<(TableName, &'static str), BTreeMap<String, usize>>,
    /// Each port's contribution, including the chains it owns.
    ports: BTreeMap<ServicePortName, PortRules>,
}

/// The pending result of an incremental sync: its payload, and the contributions to record
/// once the kernel took it.
#[derive(Debug, Default)]
pub struct Plan {
    /// The restore payload; empty when nothing changes.
    pub payload: String,
    updates: Vec<(ServicePortName, Option<PortRules>)>,
}

fn shared_chain<'a>(
    skeleton: &'a Skeleton,
    table: TableName,
    chain: &str,
) -> Option<&'a SharedChain> {
    skeleton
        .shared
        .iter()
        .find(|(t, c, _)| *t == table && *c == chain)
        .map(|(_, _, s)| s)
}

/// Lines of one table's block, in the order iptables-restore needs them.
#[derive(Default)]
struct Block {
    declare: BTreeSet<String>,
    deletes: Vec<String>,
    appends: Vec<String>,
    inserts: Vec<String>,
    remove_chains: BTreeSet<String>,
}

impl Block {
    fn is_empty(&self) -> bool {
        self.declare.is_empty()
            && self.deletes.is_empty()
            && self.appends.is_empty()
            && self.inserts.is_empty()
            && self.remove_chains.is_empty()
    }

    /// Rewrites `chain` with `body` (`-A CHAIN RULE` lines).
    fn append_chain(&mut self, chain: &str, body: &str) {
        self.declare.insert(chain.to_string());
        self.appends.push(body.trim_end().to_string());
    }

    fn write(&self, table: TableName, nft_workaround: bool, out: &mut String) {
        if self.is_empty() {
            return;
        }
        let _ = writeln!(out, "*{table}");
        let named = self.declare.len() + self.remove_chains.len();
        if nft_workaround && named > CHAIN_CACHE_WORKAROUND_THRESHOLD {
            out.push_str("-S\n");
        }
        for chain in self.declare.iter().chain(self.remove_chains.iter()) {
            let _ = writeln!(out, ":{chain} - [0:0]");
        }
        for line in self
            .deletes
            .iter()
            .chain(self.appends.iter())
            .chain(self.inserts.iter())
        {
            out.push_str(line);
            out.push('\n');
        }
        for chain in &self.remove_chains {
            let _ = writeln!(out, "-X {chain}");
        }
        out.push_str("COMMIT\n");
    }
}

/// The rules of a chain body (`-A CHAIN RULE` lines), without the `-A CHAIN ` prefix.
fn rules_of(chain: &str, body: &str) -> Vec<String> {
    body.lines()
        .map(|line| {
            line.strip_prefix("-A ")
                .and_then(|l| l.strip_prefix(chain))
                .map_or(line, str::trim_start)
                .to_string()
        })
        .collect()
}

/// The `-D` and `-I` lines that turn chain `old` into `new` (bodies of `-A CHAIN RULE`
/// lines), keeping their longest common subsequence of rules in place: removing endpoint `k`
/// from a `statistic` cascade changes only the rules before it, and removing the first one
/// changes none but its own. `None` when rules repeat (a `-D` by text would be ambiguous) or
/// the chains are too long to compare cheaply.
fn edit_script(chain: &str, old: &str, new: &str) -> Option<(Vec<String>, Vec<String>)> {
    const MAX_RULES: usize = 512;
    let old = rules_of(chain, old);
    let new = rules_of(chain, new);
    if old.len() > MAX_RULES || new.len() > MAX_RULES {
        return None;
    }
    let unique = |rules: &[String]| rules.iter().collect::<HashSet<_>>().len() == rules.len();
    if !unique(&old) || !unique(&new) {
        return None;
    }
    // lcs[i][j]: longest common subsequence of old[i..] and new[j..].
    let (n, m) = (old.len(), new.len());
    let mut lcs = vec![vec![0u16; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[i][j] = if old[i] == new[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let (mut kept_old, mut kept_new) = (vec![false; n], vec![false; m]);
    let (mut i, mut j) = (0, 0);
    while i < n && j < m {
        if old[i] == new[j] {
            kept_old[i] = true;
            kept_new[j] = true;
            i += 1;
            j += 1;
        } else if lcs[i + 1][j] >= lcs[i][j + 1] {
            i += 1;
        } else {
            j += 1;
        }
    }
    let deletes = old
        .iter()
        .zip(&kept_old)
        .filter(|(_, kept)| !**kept)
        .map(|(rule, _)| format!("-D {chain} {rule}"))
        .collect();
    // In ascending order every rule before position j+1 is already in place.
    let inserts = new
        .iter()
        .zip(&kept_new)
        .enumerate()
        .filter(|(_, (_, kept))| !**kept)
        .map(|(j, (rule, _))| format!("-I {chain} {} {rule}", j + 1))
        .collect();
    Some((deletes, inserts))
}

/// The chain a rule jumps or goes to, if any.
fn rule_target(rule: &str) -> Option<&str> {
    let mut words = rule.split_whitespace();
    while let Some(w) = words.next() {
        if w == "-j" || w == "-g" || w == "--jump" || w == "--goto" {
            return words.next();
        }
    }
    None
}

impl FamilyState {
    /// A state holding only the fixed chains of `skeleton`.
    pub fn new(skeleton: Skeleton) -> Self {
        let bodies = skeleton
            .shared
            .iter()
            .map(|(t, c, _)| ((*t, *c), BTreeMap::new()))
            .collect();
        FamilyState {
            skeleton,
            bodies,
            ports: BTreeMap::new(),
        }
    }

    /// The fixed part.
    pub fn skeleton(&self) -> &Skeleton {
        &self.skeleton
    }

    /// Number of service ports with rules in this family.
    pub fn port_count(&self) -> usize {
        self.ports.len()
    }

    fn remove_contribution(&mut self, name: &ServicePortName) {
        let Some(old) = self.ports.remove(name) else {
            return;
        };
        for (table, chain, rule) in &old.shared {
            if let Some(body) = self.bodies.get_mut(&(*table, *chain))
                && let Some(count) = body.get_mut(rule)
            {
                *count -= 1;
                if *count == 0 {
                    body.remove(rule);
                }
            }
        }
    }

    /// Records what `name` contributes now (`None`: nothing).
    pub fn set_port(&mut self, name: ServicePortName, rules: Option<PortRules>) {
        self.remove_contribution(&name);
        let Some(rules) = rules else {
            return;
        };
        for (table, chain, rule) in &rules.shared {
            if let Some(body) = self.bodies.get_mut(&(*table, *chain)) {
                *body.entry(rule.clone()).or_insert(0) += 1;
            }
        }
        self.ports.insert(name, rules);
    }

    /// The rules of a shared chain in kernel order: head, sorted service rules, tail.
    fn shared_rules(
        &self,
        table: TableName,
        chain: &'static str,
        fixed: &SharedChain,
    ) -> Vec<String> {
        let mut rules = fixed.head.clone();
        if let Some(body) = self.bodies.get(&(table, chain)) {
            rules.extend(body.keys().cloned());
        }
        rules.extend(fixed.tail.iter().cloned());
        rules
    }

    /// Every chain of ours, per table, in kernel order (built-in chains hold our hooks).
    pub fn ruleset(&self) -> Ruleset {
        let mut ruleset = Ruleset::default();
        for (table, builtin, rules) in &self.skeleton.hooks {
            ruleset
                .tables
                .entry(*table)
                .or_default()
                .insert(builtin.to_string(), rules.clone());
        }
        for (table, chain, fixed) in &self.skeleton.shared {
            let rules = self.shared_rules(*table, chain, fixed);
            ruleset
                .tables
                .entry(*table)
                .or_default()
                .insert(chain.to_string(), rules);
        }
        for (table, chain, body) in self.ports.values().flat_map(|p| &p.chains) {
            ruleset
                .tables
                .entry(*table)
                .or_default()
                .insert(chain.clone(), rules_of(chain, body));
        }
        ruleset
    }

    /// The payload that makes the kernel hold exactly this state, whatever it holds now
    /// (`existing`, as `iptables-save` printed it): our chains are declared (which flushes
    /// them) and refilled, chains we own but no longer want are deleted, and our hooks in
    /// the built-in chains are removed and inserted again at the top, in order.
    pub fn full_payload(&self, existing: &Ruleset, nft_workaround: bool) -> String {
        let mut out = String::with_capacity(self.estimated_payload_len());
        for table in TableName::ALL {
            let shared: Vec<(&'static str, &SharedChain)> = self
                .skeleton
                .shared
                .iter()
                .filter(|(t, _, _)| *t == table)
                .map(|(_, c, s)| (*c, s))
                .collect();
            let owned: Vec<(&String, &String)> = self
                .ports
                .values()
                .flat_map(|p| &p.chains)
                .filter(|(t, _, _)| *t == table)
                .map(|(_, c, r)| (c, r))
                .collect();
            let current = existing.chains(table);
            let held: Vec<&String> = current
                .into_iter()
                .flat_map(|chains| chains.keys())
                .filter(|c| names::is_owned_chain(c))
                .collect();
            // Chains of ours the kernel holds but we no longer want (none on a fresh node).
            let stale: Vec<&String> = if held.is_empty() {
                Vec::new()
            } else {
                let wanted: HashSet<&str> = shared
                    .iter()
                    .map(|(c, _)| *c)
                    .chain(owned.iter().map(|(c, _)| c.as_str()))
                    .collect();
                held.into_iter()
                    .filter(|c| !wanted.contains(c.as_str()))
                    .collect()
            };
            let named = shared.len() + owned.len() + stale.len();
            let mut block = Block::default();
            remove_hooks(table, current, &mut block);

            let _ = writeln!(out, "*{table}");
            // Hooks first, with the fixed chains they jump to: on a node where the table does
            // not exist yet, iptables-nft creates built-in chains only for commands that come
            // before `-S` (after it, its complete cache says they are missing).
            for (chain, _) in &shared {
                let _ = writeln!(out, ":{chain} - [0:0]");
            }
            for line in &block.deletes {
                out.push_str(line);
                out.push('\n');
            }
            for (t, builtin, rules) in &self.skeleton.hooks {
                if *t == table {
                    for (i, rule) in rules.iter().enumerate() {
                        let _ = writeln!(out, "-I {builtin} {} {rule}", i + 1);
                    }
                }
            }
            if nft_workaround && named > CHAIN_CACHE_WORKAROUND_THRESHOLD {
                out.push_str("-S\n");
            }
            for chain in owned
                .iter()
                .map(|(c, _)| c.as_str())
                .chain(stale.iter().map(|c| c.as_str()))
            {
                let _ = writeln!(out, ":{chain} - [0:0]");
            }
            let mut append = |chain: &str, rule: &str| {
                out.push_str("-A ");
                out.push_str(chain);
                out.push(' ');
                out.push_str(rule);
                out.push('\n');
            };
            for (chain, fixed) in &shared {
                let body = self.bodies.get(&(table, *chain));
                let rules = fixed
                    .head
                    .iter()
                    .chain(body.into_iter().flat_map(|b| b.keys()))
                    .chain(fixed.tail.iter());
                for rule in rules {
                    append(chain, rule);
                }
            }
            for (_, body) in &owned {
                out.push_str(body);
            }
            for chain in &stale {
                let _ = writeln!(out, "-X {chain}");
            }
            out.push_str("COMMIT\n");
        }
        out
    }

    /// A guess of the full payload's size, to allocate it once.
    fn estimated_payload_len(&self) -> usize {
        let owned: usize = self
            .ports
            .values()
            .flat_map(|p| &p.chains)
            .map(|(_, chain, body)| body.len() + (chain.len() + 4) * (body.len() / 64 + 2))
            .sum();
        let shared: usize = self.bodies.values().map(BTreeMap::len).sum();
        owned + shared * 200 + 4096
    }

    /// Plans an incremental sync: `updates` give the new contribution of every changed port.
    /// Nothing is recorded until [`FamilyState::commit`].
    pub fn plan(
        &self,
        updates: Vec<(ServicePortName, Option<PortRules>)>,
        nft_workaround: bool,
    ) -> Plan {
        let mut blocks: BTreeMap<TableName, Block> = BTreeMap::new();

        // Chains owned by the changed ports: before and after.
        let mut before: BTreeMap<ChainKey, &String> = BTreeMap::new();
        let mut after: BTreeMap<ChainKey, &String> = BTreeMap::new();
        // Shared rules the changed ports touch: count change per rule.
        let mut delta: BTreeMap<(TableName, &'static str), BTreeMap<&str, i64>> = BTreeMap::new();
        for (name, new) in &updates {
            if let Some(old) = self.ports.get(name) {
                for (t, c, rules) in &old.chains {
                    before.insert((*t, c.clone()), rules);
                }
                for (t, c, rule) in &old.shared {
                    *delta.entry((*t, *c)).or_default().entry(rule).or_insert(0) -= 1;
                }
            }
            if let Some(new) = new {
                for (t, c, rules) in &new.chains {
                    after.insert((*t, c.clone()), rules);
                }
                for (t, c, rule) in &new.shared {
                    *delta.entry((*t, *c)).or_default().entry(rule).or_insert(0) += 1;
                }
            }
        }
        for ((table, chain), body) in &after {
            let block = blocks.entry(*table).or_default();
            match before.get(&(*table, chain.clone())) {
                Some(old) if old == body => {}
                // Edit the chain rule by rule when that writes less than rewriting it.
                Some(old) => match edit_script(chain, old, body) {
                    Some((deletes, inserts))
                        if deletes
                            .iter()
                            .chain(&inserts)
                            .map(String::len)
                            .sum::<usize>()
                            < body.len() =>
                    {
                        block.deletes.extend(deletes);
                        block.inserts.extend(inserts);
                    }
                    _ => block.append_chain(chain, body),
                },
                None => block.append_chain(chain, body),
            }
        }
        for (table, chain) in before.keys() {
            if !after.contains_key(&(*table, chain.clone())) {
                blocks
                    .entry(*table)
                    .or_default()
                    .remove_chains
                    .insert(chain.clone());
            }
        }

        for ((table, chain), changes) in &delta {
            let Some(body) = self.bodies.get(&(*table, *chain)) else {
                continue;
            };
            let present = |rule: &str| body.get(rule).copied().unwrap_or(0);
            let removed: BTreeSet<&str> = changes
                .iter()
                .filter(|(rule, d)| present(rule) > 0 && present(rule) as i64 + **d <= 0)
                .map(|(rule, _)| *rule)
                .collect();
            let added: Vec<&str> = changes
                .iter()
                .filter(|(rule, d)| present(rule) == 0 && **d > 0)
                .map(|(rule, _)| *rule)
                .collect();
            if removed.is_empty() && added.is_empty() {
                continue;
            }
            let head = shared_chain(&self.skeleton, *table, chain).map_or(0, |s| s.head.len());
            let block = blocks.entry(*table).or_default();
            for rule in &removed {
                block.deletes.push(format!("-D {chain} {rule}"));
            }
            // Inserted in ascending order, each at its final sorted position.
            for (i, rule) in added.iter().enumerate() {
                let kept_before = body
                    .range::<str, _>((std::ops::Bound::Unbounded, std::ops::Bound::Excluded(*rule)))
                    .filter(|(r, _)| !removed.contains(r.as_str()))
                    .count();
                let position = head + kept_before + i + 1;
                block.inserts.push(format!("-I {chain} {position} {rule}"));
            }
        }

        let mut payload = String::new();
        for (table, block) in &blocks {
            block.write(*table, nft_workaround, &mut payload);
        }
        Plan { payload, updates }
    }

    /// Records a plan the kernel accepted.
    pub fn commit(&mut self, plan: Plan) {
        for (name, rules) in plan.updates {
            self.set_port(name, rules);
        }
    }

    /// The payload that removes everything we own from a kernel holding `existing`.
    pub fn cleanup_payload(existing: &Ruleset) -> String {
        let mut out = String::new();
        for table in TableName::ALL {
            let mut block = Block::default();
            let current = existing.chains(table);
            remove_hooks(table, current, &mut block);
            if let Some(current) = current {
                for chain in current.keys() {
                    if names::is_owned_chain(chain) {
                        block.remove_chains.insert(chain.clone());
                    }
                }
            }
            block.write(table, false, &mut out);
        }
        out
    }
}

/// Deletes every rule of a built-in chain that jumps to a chain we own (ours, or left by an
/// earlier run or by kube-proxy), as `iptables-save` printed it.
fn remove_hooks(table: TableName, current: Option<&Chains>, block: &mut Block) {
    let Some(current) = current else {
        return;
    };
    for builtin in table.builtin_chains() {
        for rule in current.get(*builtin).into_iter().flatten() {
            if rule_target(rule).is_some_and(names::is_owned_chain) {
                block.deletes.push(format!("-D {builtin} {rule}"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(chain: &str, rules: &[&str]) -> String {
        rules.iter().map(|r| format!("-A {chain} {r}\n")).collect()
    }

    #[test]
    fn removing_the_first_endpoint_of_a_cascade_deletes_one_rule() {
        let old = body(
            "KUBE-SVC-X",
            &[
                "-m statistic --mode random --probability 0.3333333333 -j KUBE-SEP-A",
                "-m statistic --mode random --probability 0.5000000000 -j KUBE-SEP-B",
                "-j KUBE-SEP-C",
            ],
        );
        let new = body(
            "KUBE-SVC-X",
            &[
                "-m statistic --mode random --probability 0.5000000000 -j KUBE-SEP-B",
                "-j KUBE-SEP-C",
            ],
        );
        let (deletes, inserts) = edit_script("KUBE-SVC-X", &old, &new).unwrap();
        assert_eq!(
            deletes,
            ["-D KUBE-SVC-X -m statistic --mode random --probability 0.3333333333 -j KUBE-SEP-A"]
        );
        assert!(inserts.is_empty());
        // And back: one insert at the top.
        let (deletes, inserts) = edit_script("KUBE-SVC-X", &new, &old).unwrap();
        assert!(deletes.is_empty());
        assert_eq!(
            inserts,
            ["-I KUBE-SVC-X 1 -m statistic --mode random --probability 0.3333333333 -j KUBE-SEP-A"]
        );
    }

    #[test]
    fn edits_land_every_rule_at_its_place() {
        let old = body("C", &["a", "b", "c", "d"]);
        let new = body("C", &["x", "b", "y", "d", "z"]);
        let (deletes, inserts) = edit_script("C", &old, &new).unwrap();
        assert_eq!(deletes, ["-D C a", "-D C c"]);
        assert_eq!(inserts, ["-I C 1 x", "-I C 3 y", "-I C 5 z"]);
        // Repeated rules cannot be deleted by text unambiguously.
        assert!(edit_script("C", &body("C", &["a", "a"]), &new).is_none());
    }
}
