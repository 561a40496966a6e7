//! One atomic `nft -f` transaction: typed commands on our tables, printed as nft text.
//! Both families go into the same transaction, so the kernel switches them together.

use std::fmt::Write as _;
use std::sync::Arc;

use svcroute_core::model::IpFamily;

use crate::ruleset::{
    Chain, ElemKey, Element, Rule, Set, SetDecl, Table, TextOut, family_name, write_chain_spec_to,
    write_element_to,
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
    /// Everything a table holds, added to the (existing, empty) table of its family: exactly
    /// the commands of [`contents_commands`], printed straight from the table. A full sync
    /// writes its tables this way, sharing them with the shadow instead of copying every
    /// chain, set and element into commands.
    AddContents(Arc<Table>),
}

/// Elements per `add element` line: nft handles long lines, the kernel's netlink buffer does
/// not always (large inline element lists fail with ENOBUFS in JSON; text is split too).
const ELEMENTS_PER_LINE: usize = 1000;

/// A table of ours: its family and name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TableId {
    /// The family.
    pub family: IpFamily,
    /// The name.
    pub name: Arc<str>,
}

impl TableId {
    /// Table `name` of `family`.
    pub fn new(family: IpFamily, name: &str) -> Self {
        TableId {
            family,
            name: name.into(),
        }
    }
}

/// An ordered list of commands applied atomically.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Transaction {
    /// The commands, in order, each on its table.
    pub commands: Vec<(TableId, Command)>,
}

impl Transaction {
    /// An empty transaction.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a command on `table`.
    pub fn push(&mut self, table: &TableId, command: Command) {
        self.commands.push((table.clone(), command));
    }

    /// Whether there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.commands.is_empty()
    }

    /// The transaction as `nft -f` input.
    pub fn text(&self) -> String {
        let mut out = String::with_capacity(self.text_size_hint());
        for (table, command) in &self.commands {
            Line::new(&mut out, table.family, &table.name).command(command);
        }
        out
    }

    /// About the size of [`Transaction::text`], to allocate it once.
    fn text_size_hint(&self) -> usize {
        self.commands
            .iter()
            .map(|(_, command)| match command {
                Command::AddContents(table) => contents_size_hint(table),
                _ => 96,
            })
            .sum()
    }
}

/// The commands that write everything `table` holds into an existing empty table, in an order
/// the kernel accepts: chains exist (empty) before verdicts point at them, sets exist (with
/// their elements) before rules use them, rules come last.
pub fn contents_commands(table: &Table) -> Vec<Command> {
    let mut commands = Vec::new();
    for (name, chain) in &table.chains {
        commands.push(Command::AddChain {
            name: name.clone(),
            chain: Chain {
                hook: chain.hook,
                comment: chain.comment.clone(),
                rules: Vec::new(),
            },
        });
    }
    for (name, set) in &table.sets {
        commands.push(Command::AddSet {
            name: name.clone(),
            decl: set.decl.clone(),
        });
        if !set.elements.is_empty() {
            commands.push(Command::AddElements {
                set: name.clone(),
                elements: set.elements.iter().map(|(k, e)| (*k, e.clone())).collect(),
            });
        }
    }
    for (name, chain) in &table.chains {
        commands.extend(chain.rules.iter().map(|rule| Command::AddRule {
            chain: name.clone(),
            rule: rule.clone(),
        }));
    }
    commands
}

/// About the size of the text of `table`'s contents.
fn contents_size_hint(table: &Table) -> usize {
    ContentItem::all(table)
        .iter()
        .map(ContentItem::size_hint)
        .sum()
}

/// Writes commands on table `table` of `family` as lines of nft text.
struct Line<'a> {
    out: TextOut<'a>,
    family: IpFamily,
    table: &'a str,
}

impl<'a> Line<'a> {
    fn new(out: &'a mut String, family: IpFamily, table: &'a str) -> Self {
        Line {
            out: TextOut::new(out),
            family,
            table,
        }
    }

    /// Starts a line: `VERB OBJECT FAMILY TABLE NAME` (`NAME` when not empty).
    fn start(&mut self, verb: &str, object: &str, name: &str) {
        self.out.push_str(verb);
        self.out.push(' ');
        self.out.push_str(object);
        self.out.push(' ');
        self.out.push_str(family_name(self.family));
        self.out.push(' ');
        self.out.push_str(self.table);
        if !name.is_empty() {
            self.out.push(' ');
            self.out.push_str(name);
        }
    }

    fn command(&mut self, command: &Command) {
        match command {
            Command::AddTable { comment } => {
                self.start("add", "table", "");
                if let Some(c) = comment {
                    let _ = write!(self.out, " {{ comment \"{c}\"; }}");
                }
                self.out.push('\n');
            }
            Command::DeleteTable => {
                self.start("delete", "table", "");
                self.out.push('\n');
            }
            Command::AddChain { name, chain } => self.add_chain(name, chain),
            Command::FlushChain(name) => {
                self.start("flush", "chain", name);
                self.out.push('\n');
            }
            Command::DeleteChain(name) => {
                self.start("delete", "chain", name);
                self.out.push('\n');
            }
            Command::AddRule { chain, rule } => self.add_rule(chain, rule),
            Command::AddSet { name, decl } => self.add_set(name, decl),
            Command::DeleteSet { name, map } => {
                self.start("delete", if *map { "map" } else { "set" }, name);
                self.out.push('\n');
            }
            Command::AddElements { set, elements } => {
                self.elements("add", set, elements.iter().map(|(k, e)| (k, e)));
            }
            Command::DeleteElements { set, keys } => {
                let none = Element::default();
                self.elements("delete", set, keys.iter().map(|k| (k, &none)));
            }
            Command::AddContents(table) => self.contents(table),
        }
    }

    fn add_chain(&mut self, name: &str, chain: &Chain) {
        self.start("add", "chain", name);
        write_chain_spec_to(&mut self.out, chain);
        self.out.push('\n');
    }

    fn add_rule(&mut self, chain: &str, rule: &Rule) {
        self.start("add", "rule", chain);
        self.out.push(' ');
        rule.write_to(self.family, &mut self.out);
        self.out.push('\n');
    }

    fn add_set(&mut self, name: &str, decl: &SetDecl) {
        self.start("add", decl.keyword(), name);
        self.out.push(' ');
        decl.write_body_to(self.family, &mut self.out);
        self.out.push('\n');
    }

    /// `VERB element F T SET { ELEM, ... }`, [`ELEMENTS_PER_LINE`] elements a line.
    fn elements<'e>(
        &mut self,
        verb: &str,
        set: &str,
        elements: impl Iterator<Item = (&'e ElemKey, &'e Element)>,
    ) {
        let mut elements = elements.peekable();
        while elements.peek().is_some() {
            self.start(verb, "element", set);
            self.out.push_str(" { ");
            for (i, (key, elem)) in elements.by_ref().take(ELEMENTS_PER_LINE).enumerate() {
                if i > 0 {
                    self.out.push_str(", ");
                }
                write_element_to(&mut self.out, key, elem);
            }
            self.out.push_str(" }\n");
        }
    }

    /// The text of [`contents_commands`]. A large table is written in pieces on every core,
    /// concatenated in order.
    fn contents(&mut self, table: &Table) {
        let items = ContentItem::all(table);
        let total: usize = items.iter().map(ContentItem::size_hint).sum();
        let threads = if total < PARALLEL_TEXT_BYTES {
            1
        } else {
            std::thread::available_parallelism().map_or(1, usize::from)
        };
        if threads == 1 {
            for item in &items {
                self.item(item);
            }
            return;
        }
        let (family, table_name) = (self.family, self.table);
        let write_run = |run: &[ContentItem]| {
            let mut out =
                String::with_capacity(run.iter().map(ContentItem::size_hint).sum::<usize>());
            let mut line = Line::new(&mut out, family, table_name);
            for item in run {
                line.item(item);
            }
            drop(line);
            out
        };
        let runs = split_by_size(&items, threads);
        let Some((first, rest)) = runs.split_first() else {
            return;
        };
        std::thread::scope(|scope| {
            let handles: Vec<_> = rest
                .iter()
                .map(|run| scope.spawn(move || write_run(run)))
                .collect();
            // This thread writes the first run in place.
            for item in *first {
                self.item(item);
            }
            for handle in handles {
                // A panicking writer is a bug; re-raise it rather than lose text.
                let text = handle
                    .join()
                    .unwrap_or_else(|e| std::panic::resume_unwind(e));
                self.out.push_str(&text);
            }
        });
    }

    fn item(&mut self, item: &ContentItem) {
        match item {
            ContentItem::Chain(name, chain) => self.add_chain(name, chain),
            ContentItem::Set(name, set) => {
                self.add_set(name, &set.decl);
                self.elements("add", name, set.elements.iter());
            }
            ContentItem::Rules(name, chain) => {
                for rule in &chain.rules {
                    self.add_rule(name, rule);
                }
            }
        }
    }
}

/// Tables whose text is about this size or more are written on every core.
const PARALLEL_TEXT_BYTES: usize = 1 << 20;

/// One piece of a table's contents, in text order: chains, then sets with their elements,
/// then every chain's rules.
enum ContentItem<'a> {
    Chain(&'a str, &'a Chain),
    Set(&'a str, &'a Set),
    Rules(&'a str, &'a Chain),
}

impl<'a> ContentItem<'a> {
    fn all(table: &'a Table) -> Vec<ContentItem<'a>> {
        let chains = table.chains.iter();
        let sets = table.sets.iter();
        chains
            .clone()
            .map(|(n, c)| ContentItem::Chain(n, c))
            .chain(sets.map(|(n, s)| ContentItem::Set(n, s)))
            .chain(chains.map(|(n, c)| ContentItem::Rules(n, c)))
            .collect()
    }

    /// About the size of its text.
    fn size_hint(&self) -> usize {
        match self {
            ContentItem::Chain(..) => 96,
            ContentItem::Set(_, set) => 160 + 48 * set.elements.len(),
            ContentItem::Rules(_, chain) => 128 * chain.rules.len(),
        }
    }
}

/// `items` cut into at most `n` runs of about the same text size.
fn split_by_size<'a, 'b>(items: &'b [ContentItem<'a>], n: usize) -> Vec<&'b [ContentItem<'a>]> {
    let total: usize = items.iter().map(ContentItem::size_hint).sum();
    let target = total.div_ceil(n.max(1)).max(1);
    let mut runs = Vec::with_capacity(n);
    let (mut start, mut size) = (0, 0);
    for (i, item) in items.iter().enumerate() {
        size += item.size_hint();
        if size >= target {
            runs.push(&items[start..=i]);
            (start, size) = (i + 1, 0);
        }
    }
    if start < items.len() {
        runs.push(&items[start..]);
    }
    runs
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ruleset::{
        BaseHook, ChainType, ElemValue, Hook, KeyType, SetKind, Stmt, Value, Verdict,
    };
    use svcroute_core::model::Protocol;

    #[test]
    fn commands_print_one_per_line() {
        let mut tx = Transaction::new();
        tx.push(
            &TableId::new(IpFamily::IPv4, "svcroute"),
            Command::AddTable { comment: None },
        );
        tx.push(
            &TableId::new(IpFamily::IPv4, "svcroute"),
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
            &TableId::new(IpFamily::IPv4, "svcroute"),
            Command::AddRule {
                chain: "nat-prerouting".into(),
                rule: Rule::new(vec![Stmt::Verdict(Verdict::Jump("services".into()))]),
            },
        );
        tx.push(
            &TableId::new(IpFamily::IPv6, "svcroute"),
            Command::AddElements {
                set: "service-ips".into(),
                elements: vec![(
                    ElemKey::new(&[
                        Value::Addr("fd00::10".parse().unwrap()),
                        Value::Proto(Protocol::Udp),
                        Value::Port(53),
                    ])
                    .unwrap(),
                    Element {
                        value: Some(ElemValue::Verdict(Verdict::Goto("svc-X".into()))),
                        comment: Some("kube-system/kube-dns:dns".into()),
                    },
                )],
            },
        );
        tx.push(
            &TableId::new(IpFamily::IPv6, "svcroute"),
            Command::DeleteElements {
                set: "cluster-ips".into(),
                keys: vec![ElemKey::from([Value::Addr("fd00::11".parse().unwrap())])],
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

    /// A table with `maps` endpoint maps of `endpoints` elements, each used by a chain.
    fn table(maps: u32, endpoints: u32) -> Table {
        let mut table = Table::new(IpFamily::IPv6);
        for m in 0..maps {
            let map = format!("svc-{m}-ep");
            let elements = (0..endpoints)
                .map(|e| {
                    let endpoint = format!("[fd00::{m:x}:{e:x}]:8080").parse().unwrap();
                    let element = Element {
                        value: Some(ElemValue::Endpoint(endpoint)),
                        comment: (e == 0).then(|| format!("ns/svc-{m}:http")),
                    };
                    (ElemKey::from(Value::Int(e)), element)
                })
                .collect();
            let decl = SetDecl {
                kind: SetKind::EndpointMap,
                key: vec![KeyType::Slot],
                interval: false,
                timeout: None,
                size: None,
                protocol: Some(Protocol::Tcp),
                comment: Some(format!("ns/svc-{m}:http cluster endpoints")),
            };
            table.sets.insert(map.clone(), Set { decl, elements });
            let rule = Rule::new(vec![Stmt::DnatNumgen {
                modulus: endpoints,
                map,
            }]);
            let chain = Chain {
                hook: None,
                comment: Some(format!("ns/svc-{m}:http")),
                rules: vec![rule],
            };
            table.chains.insert(format!("svc-{m}"), chain);
        }
        table
    }

    #[test]
    fn contents_print_as_their_commands() {
        // Small and large (written on several threads when there are cores to spare).
        for (maps, endpoints) in [(3, 2), (100, 1100)] {
            let table = table(maps, endpoints);
            let mut expanded = Transaction::new();
            for command in contents_commands(&table) {
                expanded.push(&TableId::new(IpFamily::IPv6, "t"), command);
            }
            let mut contents = Transaction::new();
            contents.push(
                &TableId::new(IpFamily::IPv6, "t"),
                Command::AddContents(Arc::new(table)),
            );
            let text = contents.text();
            assert_eq!(text, expanded.text());
            assert_eq!(
                text.lines()
                    .filter(|l| l.starts_with("add element"))
                    .count(),
                usize::try_from(maps * endpoints.div_ceil(1000)).unwrap()
            );
        }
    }
}
