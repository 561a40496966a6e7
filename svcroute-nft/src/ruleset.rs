//! The nftables objects svcroute programs, as typed values: tables of chains, sets and maps,
//! rules made of the few statements svcroute emits. [`crate::render`] builds them,
//! [`crate::transaction`] prints them as `nft -f` text, [`crate::json`] reads them back from
//! `nft -j list table`, and [`crate::trace`] interprets them. Anything else nftables can say
//! has no representation here, so reading a table that holds it fails loudly.

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;
use svcroute_core::model::{IpFamily, Protocol};

/// `ip` or `ip6`: the nftables family of a table (also the payload protocol of its rules).
pub fn family_name(family: IpFamily) -> &'static str {
    match family {
        IpFamily::IPv4 => "ip",
        IpFamily::IPv6 => "ip6",
    }
}

/// The address datatype of a family: `ipv4_addr` or `ipv6_addr`.
pub fn addr_type(family: IpFamily) -> &'static str {
    match family {
        IpFamily::IPv4 => "ipv4_addr",
        IpFamily::IPv6 => "ipv6_addr",
    }
}

/// A value a rule computes from the packet (the left side of a match, a lookup key).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Expr {
    /// `ip saddr` / `ip6 saddr`.
    Saddr,
    /// `ip daddr` / `ip6 daddr`.
    Daddr,
    /// `meta l4proto`.
    L4Proto,
    /// `th dport`: the destination port of any transport header.
    ThDport,
    /// `tcp dport`.
    TcpDport,
    /// `meta mark & MASK`.
    MarkAnd(u32),
    /// `fib saddr type`.
    FibSaddrType,
    /// `fib daddr type`.
    FibDaddrType,
    /// `ct state`.
    CtState,
    /// `ct status`.
    CtStatus,
    /// `numgen random mod N offset O`: a number in `O..O+N`. With `N` = 1 it is the constant
    /// `O`, which nft accepts inside a lookup key where it refuses a literal (the ClientIP
    /// affinity ID of an endpoint).
    Numgen {
        /// N.
        modulus: u32,
        /// O (nft prints it as a signed 32-bit number: keep it below 2^31).
        offset: u32,
    },
    /// `A . B . C`: a concatenation (a set or map key).
    Concat(Vec<Expr>),
}

/// A constant: the right side of a match, a part of a set element.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Value {
    /// An address.
    Addr(IpAddr),
    /// A network (`10.0.0.0/8`).
    Net(IpNet),
    /// A transport protocol (`tcp`).
    Proto(Protocol),
    /// A port (`inet_service`).
    Port(u16),
    /// An integer (numgen slot, mark).
    Int(u32),
    /// `local` (a `fib ... type`).
    Local,
    /// `new` (a `ct state`).
    New,
    /// `dnat` (a `ct status` bit).
    Dnat,
}

/// What a match compares against.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Operand {
    /// A constant.
    Value(Value),
    /// `@set`: membership in a named set.
    Set(String),
}

/// A verdict.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Verdict {
    /// `accept`.
    Accept,
    /// `drop`.
    Drop,
    /// `return`.
    Return,
    /// `jump CHAIN`.
    Jump(String),
    /// `goto CHAIN`.
    Goto(String),
}

impl Verdict {
    /// The chain it enters, if any.
    pub fn target(&self) -> Option<&str> {
        match self {
            Verdict::Jump(c) | Verdict::Goto(c) => Some(c),
            _ => None,
        }
    }
}

/// How a rule changes the packet mark.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MarkOp {
    /// `meta mark set meta mark | BITS`.
    Or(u32),
    /// `meta mark set meta mark ^ BITS`.
    Xor(u32),
}

/// One statement of a rule.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Stmt {
    /// `LEFT RIGHT` or `LEFT != RIGHT`: the rule goes on only when it holds.
    Match {
        /// What is read from the packet.
        left: Expr,
        /// `!=` instead of equality / membership.
        negate: bool,
        /// A constant or `@set`.
        right: Operand,
    },
    /// `KEY vmap @MAP`: the verdict stored for the key; no verdict when it is absent.
    Vmap {
        /// The lookup key.
        key: Expr,
        /// The verdict map.
        map: String,
    },
    /// Changes the packet mark.
    Mark(MarkOp),
    /// `update @SET { KEY }`: adds or refreshes a dynamic set element.
    Update {
        /// The dynamic set.
        set: String,
        /// The key stored.
        key: Expr,
    },
    /// `dnat to ADDR:PORT`.
    DnatTo(SocketAddr),
    /// `dnat ip addr . port to numgen random mod N map @MAP`: DNAT to the endpoint stored in
    /// slot `random mod N`; no verdict when the slot is empty.
    DnatNumgen {
        /// N.
        modulus: u32,
        /// The map of slot → `addr . port`.
        map: String,
    },
    /// `masquerade fully-random`.
    Masquerade,
    /// `reject` (ICMP port unreachable, TCP reset).
    Reject,
    /// A verdict.
    Verdict(Verdict),
}

/// A rule: statements in order, and an optional comment.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Rule {
    /// The statements.
    pub stmts: Vec<Stmt>,
    /// `comment "..."` (escaped with [`crate::names::comment`]).
    pub comment: Option<String>,
}

impl Rule {
    /// A rule without comment.
    pub fn new(stmts: Vec<Stmt>) -> Self {
        Rule {
            stmts,
            comment: None,
        }
    }

    /// The chains its verdicts enter.
    pub fn chains(&self) -> impl Iterator<Item = &str> {
        self.stmts.iter().filter_map(|s| match s {
            Stmt::Verdict(v) => v.target(),
            _ => None,
        })
    }

    /// The sets and maps it looks up or updates.
    pub fn sets(&self) -> impl Iterator<Item = &str> {
        self.stmts.iter().filter_map(|s| match s {
            Stmt::Match {
                right: Operand::Set(name),
                ..
            }
            | Stmt::Vmap { map: name, .. }
            | Stmt::Update { set: name, .. }
            | Stmt::DnatNumgen { map: name, .. } => Some(name.as_str()),
            _ => None,
        })
    }

    /// The same rule with a comment.
    pub fn with_comment(mut self, comment: String) -> Self {
        self.comment = Some(comment);
        self
    }
}

/// A base chain's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ChainType {
    /// `type filter`.
    Filter,
    /// `type nat`.
    Nat,
}

/// A netfilter hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Hook {
    /// `prerouting`.
    Prerouting,
    /// `input`.
    Input,
    /// `forward`.
    Forward,
    /// `output`.
    Output,
    /// `postrouting`.
    Postrouting,
}

impl Hook {
    /// The nftables keyword.
    pub fn name(self) -> &'static str {
        match self {
            Hook::Prerouting => "prerouting",
            Hook::Input => "input",
            Hook::Forward => "forward",
            Hook::Output => "output",
            Hook::Postrouting => "postrouting",
        }
    }
}

/// Where a base chain is attached (policy is always `accept`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BaseHook {
    /// Filter or nat.
    pub kind: ChainType,
    /// The hook.
    pub hook: Hook,
    /// The priority (lower runs first; nat prerouting/output DNAT is -100).
    pub priority: i32,
}

/// A chain.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Chain {
    /// Set for base chains.
    pub hook: Option<BaseHook>,
    /// The chain's comment.
    pub comment: Option<String>,
    /// Its rules, in order.
    pub rules: Vec<Rule>,
}

/// One component of a set's key (or of a map's data).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyType {
    /// `ipv4_addr` / `ipv6_addr`.
    Addr,
    /// `inet_proto`.
    Proto,
    /// `inet_service`.
    Service,
    /// An integer produced by `numgen` (declared `typeof numgen random mod 2`): the slot of
    /// an endpoint map, or an endpoint's ClientIP affinity ID.
    Slot,
}

/// What a set maps its keys to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SetKind {
    /// A plain set.
    Set,
    /// A verdict map.
    VerdictMap,
    /// A map to `addr . port` (DNAT targets).
    EndpointMap,
}

/// A set's declaration.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SetDecl {
    /// Set or map kind.
    pub kind: SetKind,
    /// The key's components (several = a concatenation).
    pub key: Vec<KeyType>,
    /// `flags interval`: elements may be networks.
    pub interval: bool,
    /// `flags dynamic,timeout; timeout Ns`: filled by `update` statements, elements expire.
    pub timeout: Option<u32>,
    /// `size N`: the most elements (dynamic sets; nft gives them 65,535 unless told).
    pub size: Option<u32>,
    /// For endpoint maps: the protocol of the rules using the map. nft 1.0.6 declares the
    /// map `typeof ... ip daddr . PROTO dport` and refuses rules of another protocol (or
    /// `th dport`) once the map is in the kernel. `nft -j` does not list it (`None` when read
    /// back); without it the declaration uses `th dport`.
    pub protocol: Option<Protocol>,
    /// The set's comment.
    pub comment: Option<String>,
}

/// What an element maps to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ElemValue {
    /// A verdict (verdict maps).
    Verdict(Verdict),
    /// An endpoint (endpoint maps).
    Endpoint(SocketAddr),
}

/// An element's key: one value per key component.
pub type ElemKey = Vec<Value>;

/// One element: its value (maps) and comment.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Element {
    /// The value, for maps.
    pub value: Option<ElemValue>,
    /// The element's comment.
    pub comment: Option<String>,
}

/// A named set or map and its elements.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Set {
    /// The declaration.
    pub decl: SetDecl,
    /// Static elements (dynamic sets hold none that svcroute tracks).
    pub elements: BTreeMap<ElemKey, Element>,
}

/// One family's table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    /// The family.
    pub family: IpFamily,
    /// The table's comment.
    pub comment: Option<String>,
    /// Chains by name.
    pub chains: BTreeMap<String, Chain>,
    /// Sets and maps by name.
    pub sets: BTreeMap<String, Set>,
}

impl Table {
    /// An empty table.
    pub fn new(family: IpFamily) -> Self {
        Table {
            family,
            comment: None,
            chains: BTreeMap::new(),
            sets: BTreeMap::new(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// nft text

/// `"text"` for a comment escaped already.
fn quoted(out: &mut String, text: &str) {
    out.push('"');
    out.push_str(text);
    out.push('"');
}

impl Expr {
    /// `numgen random mod N` (offset 0): a slot of an endpoint map.
    pub fn numgen(modulus: u32) -> Self {
        Expr::Numgen { modulus, offset: 0 }
    }

    /// `numgen random mod 1 offset ID`: always `ID`.
    pub fn constant(id: u32) -> Self {
        Expr::Numgen {
            modulus: 1,
            offset: id,
        }
    }

    /// Writes the expression as nft text for a rule of `family`.
    pub fn write(&self, family: IpFamily, out: &mut String) {
        let fam = family_name(family);
        match self {
            Expr::Saddr => {
                let _ = write!(out, "{fam} saddr");
            }
            Expr::Daddr => {
                let _ = write!(out, "{fam} daddr");
            }
            Expr::L4Proto => out.push_str("meta l4proto"),
            Expr::ThDport => out.push_str("th dport"),
            Expr::TcpDport => out.push_str("tcp dport"),
            Expr::MarkAnd(mask) => {
                let _ = write!(out, "meta mark & {mask:#x}");
            }
            Expr::FibSaddrType => out.push_str("fib saddr type"),
            Expr::FibDaddrType => out.push_str("fib daddr type"),
            Expr::CtState => out.push_str("ct state"),
            Expr::CtStatus => out.push_str("ct status"),
            Expr::Numgen { modulus, offset } => {
                let _ = write!(out, "numgen random mod {modulus}");
                if *offset != 0 {
                    let _ = write!(out, " offset {offset}");
                }
            }
            Expr::Concat(parts) => {
                for (i, p) in parts.iter().enumerate() {
                    if i > 0 {
                        out.push_str(" . ");
                    }
                    p.write(family, out);
                }
            }
        }
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Addr(a) => write!(f, "{a}"),
            Value::Net(n) => write!(f, "{n}"),
            Value::Proto(p) => f.write_str(p.lower()),
            Value::Port(p) => write!(f, "{p}"),
            Value::Int(i) => write!(f, "{i}"),
            Value::Local => f.write_str("local"),
            Value::New => f.write_str("new"),
            Value::Dnat => f.write_str("dnat"),
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Accept => f.write_str("accept"),
            Verdict::Drop => f.write_str("drop"),
            Verdict::Return => f.write_str("return"),
            Verdict::Jump(c) => write!(f, "jump {c}"),
            Verdict::Goto(c) => write!(f, "goto {c}"),
        }
    }
}

/// `ip6 daddr` values of a socket address are printed `[addr]:port` in `dnat to`.
fn write_endpoint(out: &mut String, e: &SocketAddr, dnat: bool) {
    match (e, dnat) {
        (SocketAddr::V4(v4), _) => {
            let _ = write!(
                out,
                "{}{}{}",
                v4.ip(),
                if dnat { ":" } else { " . " },
                v4.port()
            );
        }
        (SocketAddr::V6(v6), true) => {
            let _ = write!(out, "[{}]:{}", v6.ip(), v6.port());
        }
        (SocketAddr::V6(v6), false) => {
            let _ = write!(out, "{} . {}", v6.ip(), v6.port());
        }
    }
}

impl Stmt {
    /// Writes the statement as nft text for a rule of `family`.
    pub fn write(&self, family: IpFamily, out: &mut String) {
        match self {
            Stmt::Match {
                left,
                negate,
                right,
            } => {
                left.write(family, out);
                out.push(' ');
                if *negate {
                    out.push_str("!= ");
                } else if matches!(left, Expr::MarkAnd(_)) {
                    out.push_str("== ");
                }
                match right {
                    Operand::Value(v) => {
                        let _ = write!(out, "{v}");
                    }
                    Operand::Set(s) => {
                        out.push('@');
                        out.push_str(s);
                    }
                }
            }
            Stmt::Vmap { key, map } => {
                key.write(family, out);
                let _ = write!(out, " vmap @{map}");
            }
            Stmt::Mark(MarkOp::Or(bits)) => {
                let _ = write!(out, "meta mark set meta mark | {bits:#x}");
            }
            Stmt::Mark(MarkOp::Xor(bits)) => {
                let _ = write!(out, "meta mark set meta mark ^ {bits:#x}");
            }
            Stmt::Update { set, key } => {
                let _ = write!(out, "update @{set} {{ ");
                key.write(family, out);
                out.push_str(" }");
            }
            Stmt::DnatTo(e) => {
                out.push_str("dnat to ");
                write_endpoint(out, e, true);
            }
            Stmt::DnatNumgen { modulus, map } => {
                let _ = write!(
                    out,
                    "dnat {} addr . port to numgen random mod {modulus} map @{map}",
                    family_name(family)
                );
            }
            Stmt::Masquerade => out.push_str("masquerade fully-random"),
            Stmt::Reject => out.push_str("reject"),
            Stmt::Verdict(v) => {
                let _ = write!(out, "{v}");
            }
        }
    }
}

impl Rule {
    /// Writes the rule as nft text (statements, then the comment).
    pub fn write(&self, family: IpFamily, out: &mut String) {
        for (i, s) in self.stmts.iter().enumerate() {
            if i > 0 {
                out.push(' ');
            }
            s.write(family, out);
        }
        if let Some(c) = &self.comment {
            out.push_str(" comment ");
            quoted(out, c);
        }
    }

    /// The rule as nft text.
    pub fn text(&self, family: IpFamily) -> String {
        let mut s = String::new();
        self.write(family, &mut s);
        s
    }
}

impl KeyType {
    /// The `type` keyword of this component in `family`.
    fn type_name(self, family: IpFamily) -> &'static str {
        match self {
            KeyType::Addr => addr_type(family),
            KeyType::Proto => "inet_proto",
            KeyType::Service => "inet_service",
            KeyType::Slot => "integer",
        }
    }
}

impl SetDecl {
    /// The body of the declaration: `{ type ...; flags ...; timeout ...; comment "..."; }`.
    pub fn write_body(&self, family: IpFamily, out: &mut String) {
        out.push_str("{ ");
        if self.key.contains(&KeyType::Slot) {
            // numgen yields a plain integer: only `typeof` can declare such a key.
            out.push_str("typeof ");
            for (i, k) in self.key.iter().enumerate() {
                if i > 0 {
                    out.push_str(" . ");
                }
                match k {
                    KeyType::Addr => {
                        let _ = write!(out, "{} saddr", family_name(family));
                    }
                    KeyType::Proto => out.push_str("meta l4proto"),
                    KeyType::Service => out.push_str("th dport"),
                    KeyType::Slot => out.push_str("numgen random mod 2"),
                }
            }
            match self.kind {
                SetKind::EndpointMap => {
                    let proto = self.protocol.map_or("th", Protocol::lower);
                    let _ = write!(out, " : {} daddr . {proto} dport", family_name(family));
                }
                SetKind::VerdictMap => out.push_str(" : verdict"),
                SetKind::Set => {}
            }
        } else {
            out.push_str("type ");
            for (i, k) in self.key.iter().enumerate() {
                if i > 0 {
                    out.push_str(" . ");
                }
                out.push_str(k.type_name(family));
            }
            match self.kind {
                SetKind::Set => {}
                SetKind::VerdictMap => out.push_str(" : verdict"),
                SetKind::EndpointMap => {
                    let _ = write!(out, " : {} . inet_service", addr_type(family));
                }
            }
        }
        out.push_str("; ");
        match (self.interval, self.timeout) {
            (true, _) => out.push_str("flags interval; "),
            (false, Some(t)) => {
                let _ = write!(out, "flags dynamic,timeout; timeout {t}s; ");
            }
            (false, None) => {}
        }
        if let Some(size) = self.size {
            let _ = write!(out, "size {size}; ");
        }
        if let Some(c) = &self.comment {
            out.push_str("comment ");
            quoted(out, c);
            out.push_str("; ");
        }
        out.push('}');
    }

    /// `set` or `map`.
    pub fn keyword(&self) -> &'static str {
        match self.kind {
            SetKind::Set => "set",
            SetKind::VerdictMap | SetKind::EndpointMap => "map",
        }
    }
}

/// Writes one element: `KEY [comment "..."] [: VALUE]`.
pub fn write_element(out: &mut String, key: &[Value], elem: &Element) {
    for (i, v) in key.iter().enumerate() {
        if i > 0 {
            out.push_str(" . ");
        }
        let _ = write!(out, "{v}");
    }
    if let Some(c) = &elem.comment {
        out.push_str(" comment ");
        quoted(out, c);
    }
    match &elem.value {
        None => {}
        Some(ElemValue::Verdict(v)) => {
            let _ = write!(out, " : {v}");
        }
        Some(ElemValue::Endpoint(e)) => {
            out.push_str(" : ");
            write_endpoint(out, e, false);
        }
    }
}

/// Writes a base chain's spec: `{ type filter hook input priority -1; policy accept; }`,
/// with the comment of any chain.
pub fn write_chain_spec(out: &mut String, chain: &Chain) {
    if chain.hook.is_none() && chain.comment.is_none() {
        return;
    }
    out.push_str(" { ");
    if let Some(h) = &chain.hook {
        let kind = match h.kind {
            ChainType::Filter => "filter",
            ChainType::Nat => "nat",
        };
        let _ = write!(
            out,
            "type {kind} hook {} priority {}; policy accept; ",
            h.hook.name(),
            h.priority
        );
    }
    if let Some(c) = &chain.comment {
        out.push_str("comment ");
        quoted(out, c);
        out.push_str("; ");
    }
    out.push('}');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_print_as_nft_text() {
        let rule = Rule::new(vec![
            Stmt::Match {
                left: Expr::Daddr,
                negate: false,
                right: Operand::Value(Value::Addr("10.96.0.10".parse().unwrap())),
            },
            Stmt::Match {
                left: Expr::ThDport,
                negate: false,
                right: Operand::Value(Value::Port(80)),
            },
            Stmt::Match {
                left: Expr::Saddr,
                negate: true,
                right: Operand::Set("pod-cidrs".into()),
            },
            Stmt::Verdict(Verdict::Jump("mark-for-masquerade".into())),
        ])
        .with_comment("ns/web:http".into());
        assert_eq!(
            rule.text(IpFamily::IPv4),
            "ip daddr 10.96.0.10 th dport 80 ip saddr != @pod-cidrs jump mark-for-masquerade comment \"ns/web:http\""
        );
        let dnat = Rule::new(vec![
            Stmt::Match {
                left: Expr::L4Proto,
                negate: false,
                right: Operand::Value(Value::Proto(Protocol::Tcp)),
            },
            Stmt::DnatNumgen {
                modulus: 3,
                map: "svc-X-ep".into(),
            },
        ]);
        assert_eq!(
            dnat.text(IpFamily::IPv6),
            "meta l4proto tcp dnat ip6 addr . port to numgen random mod 3 map @svc-X-ep"
        );
        let mark = Rule::new(vec![
            Stmt::Match {
                left: Expr::MarkAnd(0x4000),
                negate: false,
                right: Operand::Value(Value::Int(0)),
            },
            Stmt::Verdict(Verdict::Return),
        ]);
        assert_eq!(mark.text(IpFamily::IPv4), "meta mark & 0x4000 == 0 return");
        let to = Rule::new(vec![Stmt::DnatTo("[fd00::1]:80".parse().unwrap())]);
        assert_eq!(to.text(IpFamily::IPv6), "dnat to [fd00::1]:80");
    }

    #[test]
    fn declarations_and_elements_print_as_nft_text() {
        let decl = SetDecl {
            kind: SetKind::EndpointMap,
            key: vec![KeyType::Slot],
            interval: false,
            timeout: None,
            size: None,
            protocol: None,
            comment: Some("ns/web:http".into()),
        };
        let mut s = String::new();
        decl.write_body(IpFamily::IPv4, &mut s);
        assert_eq!(
            s,
            "{ typeof numgen random mod 2 : ip daddr . th dport; comment \"ns/web:http\"; }"
        );
        let vmap = SetDecl {
            kind: SetKind::VerdictMap,
            key: vec![KeyType::Addr, KeyType::Proto, KeyType::Service],
            interval: false,
            timeout: None,
            size: None,
            protocol: None,
            comment: None,
        };
        s.clear();
        vmap.write_body(IpFamily::IPv6, &mut s);
        assert_eq!(
            s,
            "{ type ipv6_addr . inet_proto . inet_service : verdict; }"
        );
        s.clear();
        write_element(
            &mut s,
            &[Value::Int(0)],
            &Element {
                value: Some(ElemValue::Endpoint("[fd00::2]:8080".parse().unwrap())),
                comment: None,
            },
        );
        assert_eq!(s, "0 : fd00::2 . 8080");
    }
}
