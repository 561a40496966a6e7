//! The rules of one IP family, table by table: what we render, what `iptables-save` prints,
//! and what the tracer interprets.

use std::collections::BTreeMap;
use std::fmt;

/// A table svcroute writes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TableName {
    /// `filter`: REJECT / DROP / ACCEPT verdicts, the source-range firewall, forwarding.
    Filter,
    /// `nat`: dispatch, DNAT, masquerade.
    Nat,
}

impl TableName {
    /// Both tables, in the order a payload writes them.
    pub const ALL: [TableName; 2] = [TableName::Filter, TableName::Nat];

    /// The name iptables uses.
    pub fn as_str(self) -> &'static str {
        match self {
            TableName::Filter => "filter",
            TableName::Nat => "nat",
        }
    }

    /// Parses `filter` / `nat`; other tables are not ours.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "filter" => Some(TableName::Filter),
            "nat" => Some(TableName::Nat),
            _ => None,
        }
    }

    /// The built-in chains of the table.
    pub fn builtin_chains(self) -> &'static [&'static str] {
        match self {
            TableName::Filter => &["INPUT", "FORWARD", "OUTPUT"],
            TableName::Nat => &["PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"],
        }
    }

    /// Whether `chain` is a built-in chain of this table.
    pub fn is_builtin(self, chain: &str) -> bool {
        self.builtin_chains().contains(&chain)
    }
}

impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The chains of one table: name → rules, each rule the text after `-A <chain> ` (as we render
/// it, or as `iptables-save` normalises it; the parser and the tracer accept both).
pub type Chains = BTreeMap<String, Vec<String>>;

/// The rules of one family, by table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ruleset {
    /// Tables present; a missing table has no chains of interest.
    pub tables: BTreeMap<TableName, Chains>,
}

impl Ruleset {
    /// The chains of a table (empty when the table is absent).
    pub fn chains(&self, table: TableName) -> Option<&Chains> {
        self.tables.get(&table)
    }

    /// The rules of one chain, if it exists.
    pub fn chain(&self, table: TableName, chain: &str) -> Option<&[String]> {
        self.tables
            .get(&table)
            .and_then(|c| c.get(chain))
            .map(Vec::as_slice)
    }

    /// Number of rules over all tables and chains.
    pub fn rule_count(&self) -> usize {
        self.tables
            .values()
            .flat_map(|chains| chains.values())
            .map(Vec::len)
            .sum()
    }

    /// The ruleset in `iptables-save` format (tables, chain declarations, rules, `COMMIT`),
    /// chains in name order.
    pub fn to_save_format(&self) -> String {
        let mut out = String::new();
        for (table, chains) in &self.tables {
            out.push('*');
            out.push_str(table.as_str());
            out.push('\n');
            for name in chains.keys() {
                let policy = if table.is_builtin(name) {
                    "ACCEPT"
                } else {
                    "-"
                };
                out.push_str(&format!(":{name} {policy} [0:0]\n"));
            }
            for (name, rules) in chains {
                for rule in rules {
                    out.push_str(&format!("-A {name} {rule}\n"));
                }
            }
            out.push_str("COMMIT\n");
        }
        out
    }
}
