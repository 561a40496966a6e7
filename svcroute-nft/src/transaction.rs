//! One atomic `nft -f` transaction: typed commands on our tables, printed as nft text.
//! Both families go into the same transaction, so the kernel switches them together.

use std::fmt::Write as _;

use svcroute_core::model::IpFamily;

use crate::ruleset::{
    Chain, ElemKey, Element, Rule, SetDecl, family_name, write_chain_spec, write_element,
};

/// One command on table `table` of a family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `add table F T { comment "..."; }` (no-op when it exists).
    AddTable {
        /// The table's comment.
        comment: Option<String>,
    },
    /// `delete table F T`.
    DeleteTable,
    /// `add chain F T NAME [{ spec }]` (rules are added separately).
    AddChain {
        /// The chain's name.
        name: String,
        /// Its hook and comment (its rules are ignored).
        chain: Chain,
    },
    /// `flush chain F T NAME`.
    FlushChain(String),
    /// `delete chain F T NAME` (it must be empty and unreferenced).
    DeleteChain(String),
    /// `add rule F T CHAIN RULE`.
    AddRule {
        /// The chain.
        chain: String,
        /// The rule appended.
        rule: Rule,
    },
    /// `add set|map F T NAME { decl }`.
    AddSet {
        /// The set's name.
        name: String,
        /// Its declaration.
        decl: SetDecl,
    },
    /// `delete set|map F T NAME` (it must be unreferenced).
    DeleteSet {
        /// The set's name.
        name: String,
        /// Whether it is a map (the keyword differs).
        map: bool,
    },
    /// `add element F T SET { ELEM, ... }`.
    AddElements {
        /// The set.
        set: String,
        /// The elements.
        elements: Vec<(ElemKey, Element)>,
    },
    /// `delete element F T SET { KEY, ... }`.
    DeleteElements {
        /// The set.
        set: String,
        /// The keys.
        keys: Vec<ElemKey>,
    },
}

/// Elements per `add element` line: nft handles long lines, the kernel's netlink buffer does
/// not always (large inline element lists fail with ENOBUFS in JSON; text is split too).
const ELEMENTS_PER_LINE: usize = 1000;

/// An ordered list of commands applied atomically.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Transaction {
    /// The table name (the same in both families).
    pub table: String,
    /// The commands, in order, each on the table of its family.
    pub commands: Vec<(IpFamily, Command)>,
}

impl Transaction {
    /// An empty transaction on `table`.
    pub fn new(table: &str) -> Self {
        Transaction {
            table: table.to_string(),
            commands: Vec::new(),
        }
    }

    /// Appends a command.
    pub fn push(&mut self, family: IpFamily, command: Command) {
        self.commands.push((family, command));
    }

    /// Whether there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.commands.is_empty()
    }

    /// The transaction as `nft -f` input.
    pub fn text(&self) -> String {
        let mut out = String::with_capacity(self.commands.len() * 96);
        for (family, command) in &self.commands {
            write_command(&mut out, *family, &self.table, command);
        }
        out
    }
}

fn write_command(out: &mut String, family: IpFamily, table: &str, command: &Command) {
    let fam = family_name(family);
    match command {
        Command::AddTable { comment } => {
            let _ = write!(out, "add table {fam} {table}");
            if let Some(c) = comment {
                let _ = write!(out, " {{ comment \"{c}\"; }}");
            }
            out.push('\n');
        }
        Command::DeleteTable => {
            let _ = writeln!(out, "delete table {fam} {table}");
        }
        Command::AddChain { name, chain } => {
            let _ = write!(out, "add chain {fam} {table} {name}");
            write_chain_spec(out, chain);
            out.push('\n');
        }
        Command::FlushChain(name) => {
            let _ = writeln!(out, "flush chain {fam} {table} {name}");
        }
        Command::DeleteChain(name) => {
            let _ = writeln!(out, "delete chain {fam} {table} {name}");
        }
        Command::AddRule { chain, rule } => {
            let _ = write!(out, "add rule {fam} {table} {chain} ");
            rule.write(family, out);
            out.push('\n');
        }
        Command::AddSet { name, decl } => {
            let _ = write!(out, "add {} {fam} {table} {name} ", decl.keyword());
            decl.write_body(family, out);
            out.push('\n');
        }
        Command::DeleteSet { name, map } => {
            let kind = if *map { "map" } else { "set" };
            let _ = writeln!(out, "delete {kind} {fam} {table} {name}");
        }
        Command::AddElements { set, elements } => {
            for chunk in elements.chunks(ELEMENTS_PER_LINE) {
                let _ = write!(out, "add element {fam} {table} {set} {{ ");
                for (i, (key, elem)) in chunk.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    write_element(out, key, elem);
                }
                out.push_str(" }\n");
            }
        }
        Command::DeleteElements { set, keys } => {
            for chunk in keys.chunks(ELEMENTS_PER_LINE) {
                let _ = write!(out, "delete element {fam} {table} {set} {{ ");
                for (i, key) in chunk.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    write_element(out, key, &Element::default());
                }
                out.push_str(" }\n");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ruleset::{BaseHook, ChainType, ElemValue, Hook, Stmt, Value, Verdict};
    use svcroute_core::model::Protocol;

    #[test]
    fn commands_print_one_per_line() {
        let mut tx = Transaction::new("svcroute");
        tx.push(IpFamily::IPv4, Command::AddTable { comment: None });
        tx.push(
            IpFamily::IPv4,
            Command::AddChain {
                name: "nat-prerouting".into(),
                chain: Chain {
                    hook: Some(BaseHook {
                        kind: ChainType::Nat,
                        hook: Hook::Prerouting,
                        priority: -100,
                    }),
                    comment: None,
                    rules: Vec::new(),
                },
            },
        );
        tx.push(
            IpFamily::IPv4,
            Command::AddRule {
                chain: "nat-prerouting".into(),
                rule: Rule::new(vec![Stmt::Verdict(Verdict::Jump("services".into()))]),
            },
        );
        tx.push(
            IpFamily::IPv6,
            Command::AddElements {
                set: "service-ips".into(),
                elements: vec![(
                    vec![
                        Value::Addr("fd00::10".parse().unwrap()),
                        Value::Proto(Protocol::Udp),
                        Value::Port(53),
                    ],
                    Element {
                        value: Some(ElemValue::Verdict(Verdict::Goto("svc-X".into()))),
                        comment: Some("kube-system/kube-dns:dns".into()),
                    },
                )],
            },
        );
        tx.push(
            IpFamily::IPv6,
            Command::DeleteElements {
                set: "cluster-ips".into(),
                keys: vec![vec![Value::Addr("fd00::11".parse().unwrap())]],
            },
        );
        assert_eq!(
            tx.text(),
            "add table ip svcroute\n\
             add chain ip svcroute nat-prerouting { type nat hook prerouting priority -100; policy accept; }\n\
             add rule ip svcroute nat-prerouting jump services\n\
             add element ip6 svcroute service-ips { fd00::10 . udp . 53 comment \"kube-system/kube-dns:dns\" : goto svc-X }\n\
             delete element ip6 svcroute cluster-ips { fd00::11 }\n"
        );
    }
}
