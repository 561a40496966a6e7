//! The nftables objects svcroute programs, as typed values: tables of chains, sets and maps,
//! rules made of the few statements svcroute emits. [`crate::render`] builds them,
//! [`crate::transaction`] prints them as `nft -f` text, [`crate::json`] reads them back from
//! `nft -j list table`, and [`crate::trace`] interprets them. Anything else nftables can say
//! has no representation here, so reading a table that holds it fails loudly.

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
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

/// A constant: the right side of a match, a part of a set element. Values of different kinds
/// order as the kinds are listed here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
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

impl Value {
    /// The position of its kind in the declaration.
    fn rank(&self) -> u8 {
        match self {
            Value::Addr(_) => 0,
            Value::Net(_) => 1,
            Value::Proto(_) => 2,
            Value::Port(_) => 3,
            Value::Int(_) => 4,
            Value::Local => 5,
            Value::New => 6,
            Value::Dnat => 7,
        }
    }
}

/// An address as a number, IPv4 first: the order of `IpAddr`, compared in one step (sorting
/// element keys is a good part of building a large table).
fn addr_rank(addr: &IpAddr) -> (bool, u128) {
    match addr {
        IpAddr::V4(v4) => (false, u128::from(u32::from(*v4))),
        IpAddr::V6(v6) => (true, u128::from(*v6)),
    }
}

impl Ord for Value {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        match (self, other) {
            (Value::Addr(a), Value::Addr(b)) => addr_rank(a).cmp(&addr_rank(b)),
            (Value::Net(a), Value::Net(b)) => a.cmp(b),
            (Value::Proto(a), Value::Proto(b)) => a.cmp(b),
            (Value::Port(a), Value::Port(b)) => a.cmp(b),
            (Value::Int(a), Value::Int(b)) => a.cmp(b),
            _ => self.rank().cmp(&other.rank()),
        }
    }
}

impl PartialOrd for Value {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
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

/// An element's key: one value per key component (at most [`ElemKey::MAX_LEN`]).
///
/// A table holds hundreds of thousands of keys, so they live inline and packed: each value is
/// a byte naming its kind (in the order of [`Value`]'s kinds, IPv4 before IPv6) followed by
/// its bytes, big-endian. Packed keys order as their values do, and compare, sort and hash
/// as a few integers. Keys too long to pack (three IPv6 networks) cannot be made; svcroute's
/// sets have none.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ElemKey {
    /// The packed values, then zeros (below every kind byte: a key orders before the longer
    /// keys it starts), then their length, read as big-endian words.
    words: [u64; 5],
}

/// The kind bytes of packed values.
mod kind {
    pub const ADDR4: u8 = 1;
    pub const ADDR6: u8 = 2;
    pub const NET4: u8 = 3;
    pub const NET6: u8 = 4;
    pub const PROTO: u8 = 5;
    pub const PORT: u8 = 6;
    pub const INT: u8 = 7;
    pub const LOCAL: u8 = 8;
    pub const NEW: u8 = 9;
    pub const DNAT: u8 = 10;
}

impl ElemKey {
    /// The most components a key has.
    pub const MAX_LEN: usize = 3;

    /// Room for two IPv6 networks, and the length.
    const BYTES: usize = 40;

    fn bytes(&self) -> [u8; ElemKey::BYTES] {
        let mut bytes = [0; ElemKey::BYTES];
        for (chunk, word) in bytes.chunks_exact_mut(8).zip(self.words) {
            chunk.copy_from_slice(&word.to_be_bytes());
        }
        bytes
    }

    fn from_bytes(bytes: [u8; ElemKey::BYTES]) -> Self {
        let mut words = [0; 5];
        for (word, chunk) in words.iter_mut().zip(bytes.chunks_exact(8)) {
            let mut be = [0; 8];
            be.copy_from_slice(chunk);
            *word = u64::from_be_bytes(be);
        }
        ElemKey { words }
    }

    /// The packed values.
    fn packed(bytes: &[u8; ElemKey::BYTES]) -> &[u8] {
        let len = bytes[ElemKey::BYTES - 1];
        &bytes[..usize::from(len)]
    }

    /// A key of `values`; `None` when they are more than [`ElemKey::MAX_LEN`] or too long to
    /// pack.
    pub fn new(values: &[Value]) -> Option<Self> {
        if values.len() > ElemKey::MAX_LEN {
            return None;
        }
        let mut bytes = [0; ElemKey::BYTES];
        for value in values {
            pack(&mut bytes, value)?;
        }
        Some(ElemKey::from_bytes(bytes))
    }

    /// The components, in order.
    pub fn values(&self) -> KeyValues {
        let mut out = KeyValues {
            len: 0,
            values: [Value::Int(0); ElemKey::MAX_LEN],
        };
        for (slot, value) in out.values.iter_mut().zip(self.iter()) {
            *slot = value;
            out.len += 1;
        }
        out
    }

    /// The components, in order, unpacked one at a time.
    pub fn iter(&self) -> impl Iterator<Item = Value> {
        let bytes = self.bytes();
        let mut at = 0;
        std::iter::from_fn(move || {
            let packed = ElemKey::packed(&bytes);
            let (&kind, rest) = packed.get(at..)?.split_first()?;
            let (value, after) = unpack(kind, rest)?;
            at = packed.len() - after.len();
            Some(value)
        })
    }

    /// The number of components.
    pub fn len(&self) -> usize {
        self.values().len()
    }

    /// Whether the key has no component.
    pub fn is_empty(&self) -> bool {
        self.words[4] & 0xff == 0
    }
}

/// Appends a packed value to `bytes` (see [`ElemKey`]); `None` (and no change) when it does
/// not fit.
fn pack(bytes: &mut [u8; ElemKey::BYTES], value: &Value) -> Option<()> {
    let size = match value {
        Value::Addr(IpAddr::V4(_)) => 5,
        Value::Addr(IpAddr::V6(_)) => 17,
        Value::Net(IpNet::V4(_)) => 6,
        Value::Net(IpNet::V6(_)) => 18,
        Value::Proto(_) => 2,
        Value::Port(_) => 3,
        Value::Int(_) => 5,
        Value::Local | Value::New | Value::Dnat => 1,
    };
    let start = usize::from(bytes[ElemKey::BYTES - 1]);
    // The last byte holds the length.
    if start + size >= ElemKey::BYTES {
        return None;
    }
    bytes[ElemKey::BYTES - 1] = u8::try_from(start + size).ok()?;
    let packed = &mut bytes[start..start + size];
    match value {
        Value::Addr(IpAddr::V4(a)) => {
            packed[0] = kind::ADDR4;
            packed[1..].copy_from_slice(&a.octets());
        }
        Value::Addr(IpAddr::V6(a)) => {
            packed[0] = kind::ADDR6;
            packed[1..].copy_from_slice(&a.octets());
        }
        Value::Net(IpNet::V4(n)) => {
            packed[0] = kind::NET4;
            packed[1..5].copy_from_slice(&n.addr().octets());
            packed[5] = n.prefix_len();
        }
        Value::Net(IpNet::V6(n)) => {
            packed[0] = kind::NET6;
            packed[1..17].copy_from_slice(&n.addr().octets());
            packed[17] = n.prefix_len();
        }
        Value::Proto(p) => packed.copy_from_slice(&[kind::PROTO, protocol_rank(*p)]),
        Value::Port(p) => {
            packed[0] = kind::PORT;
            packed[1..].copy_from_slice(&p.to_be_bytes());
        }
        Value::Int(i) => {
            packed[0] = kind::INT;
            packed[1..].copy_from_slice(&i.to_be_bytes());
        }
        Value::Local => packed[0] = kind::LOCAL,
        Value::New => packed[0] = kind::NEW,
        Value::Dnat => packed[0] = kind::DNAT,
    }
    Some(())
}

/// `N` bytes off the front of `bytes`.
fn take<const N: usize>(bytes: &[u8]) -> Option<([u8; N], &[u8])> {
    let (head, rest) = bytes.split_first_chunk::<N>()?;
    Some((*head, rest))
}

/// The value of kind `kind` at the front of `bytes`, and what follows it.
fn unpack(kind: u8, bytes: &[u8]) -> Option<(Value, &[u8])> {
    Some(match kind {
        kind::ADDR4 => {
            let (a, rest) = take::<4>(bytes)?;
            (Value::Addr(Ipv4Addr::from(a).into()), rest)
        }
        kind::ADDR6 => {
            let (a, rest) = take::<16>(bytes)?;
            (Value::Addr(Ipv6Addr::from(a).into()), rest)
        }
        kind::NET4 => {
            let (a, rest) = take::<4>(bytes)?;
            let ([prefix], rest) = take::<1>(rest)?;
            let net = Ipv4Net::new(Ipv4Addr::from(a), prefix).ok()?;
            (Value::Net(net.into()), rest)
        }
        kind::NET6 => {
            let (a, rest) = take::<16>(bytes)?;
            let ([prefix], rest) = take::<1>(rest)?;
            let net = Ipv6Net::new(Ipv6Addr::from(a), prefix).ok()?;
            (Value::Net(net.into()), rest)
        }
        kind::PROTO => {
            let ([p], rest) = take::<1>(bytes)?;
            let protocol = [Protocol::Tcp, Protocol::Udp, Protocol::Sctp]
                .into_iter()
                .find(|q| protocol_rank(*q) == p)?;
            (Value::Proto(protocol), rest)
        }
        kind::PORT => {
            let (p, rest) = take::<2>(bytes)?;
            (Value::Port(u16::from_be_bytes(p)), rest)
        }
        kind::INT => {
            let (i, rest) = take::<4>(bytes)?;
            (Value::Int(u32::from_be_bytes(i)), rest)
        }
        kind::LOCAL => (Value::Local, bytes),
        kind::NEW => (Value::New, bytes),
        kind::DNAT => (Value::Dnat, bytes),
        _ => return None,
    })
}

/// A protocol's place in [`Protocol`]'s order.
fn protocol_rank(protocol: Protocol) -> u8 {
    match protocol {
        Protocol::Tcp => 0,
        Protocol::Udp => 1,
        Protocol::Sctp => 2,
    }
}

impl From<Value> for ElemKey {
    fn from(value: Value) -> Self {
        let mut bytes = [0; ElemKey::BYTES];
        // Any one value fits.
        let _ = pack(&mut bytes, &value);
        ElemKey::from_bytes(bytes)
    }
}

impl From<[Value; 1]> for ElemKey {
    fn from([value]: [Value; 1]) -> Self {
        ElemKey::from(value)
    }
}

impl From<[Value; 2]> for ElemKey {
    fn from([a, b]: [Value; 2]) -> Self {
        let mut bytes = [0; ElemKey::BYTES];
        // Any two values fit.
        let _ = pack(&mut bytes, &a);
        let _ = pack(&mut bytes, &b);
        ElemKey::from_bytes(bytes)
    }
}

impl From<(IpAddr, Protocol, u16)> for ElemKey {
    /// `addr . proto . port`.
    fn from((addr, protocol, port): (IpAddr, Protocol, u16)) -> Self {
        let mut bytes = [0; ElemKey::BYTES];
        // An address, a protocol and a port fit.
        for value in [Value::Addr(addr), Value::Proto(protocol), Value::Port(port)] {
            let _ = pack(&mut bytes, &value);
        }
        ElemKey::from_bytes(bytes)
    }
}

impl fmt::Debug for ElemKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.values().iter()).finish()
    }
}

/// The values of an [`ElemKey`], unpacked.
#[derive(Debug, Clone, Copy)]
pub struct KeyValues {
    len: u8,
    values: [Value; ElemKey::MAX_LEN],
}

impl std::ops::Deref for KeyValues {
    type Target = [Value];

    fn deref(&self) -> &[Value] {
        &self.values[..usize::from(self.len)]
    }
}

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

/// One table of a family.
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

/// nft text being written into a `String`: short pieces (words, numbers, addresses) gather
/// on the stack and reach the string in one copy every few hundred bytes. Most of a full
/// sync's text is such pieces; copying each on its own made most of the time of writing it.
/// Flushes when dropped.
pub(crate) struct TextOut<'a> {
    out: &'a mut String,
    buf: [u8; 256],
    len: usize,
}

impl<'a> TextOut<'a> {
    /// Text appended to `out`.
    pub(crate) fn new(out: &'a mut String) -> Self {
        TextOut {
            out,
            buf: [0; 256],
            len: 0,
        }
    }

    /// Appends `text`.
    pub(crate) fn push_str(&mut self, text: &str) {
        let bytes = text.as_bytes();
        if self.len + bytes.len() > self.buf.len() {
            self.flush();
            if bytes.len() > self.buf.len() {
                self.out.push_str(text);
                return;
            }
        }
        copy_short(&mut self.buf[self.len..], bytes);
        self.len += bytes.len();
    }

    /// Appends `c`.
    pub(crate) fn push(&mut self, c: char) {
        if c.is_ascii() {
            if self.len == self.buf.len() {
                self.flush();
            }
            // An ASCII char is one byte.
            self.buf[self.len] = c as u8;
            self.len += 1;
        } else {
            self.push_str(c.encode_utf8(&mut [0; 4]));
        }
    }

    /// Appends `n` in decimal.
    pub(crate) fn u32(&mut self, n: u32) {
        let digits = n.checked_ilog10().unwrap_or(0) as usize + 1;
        if self.len + digits > self.buf.len() {
            self.flush();
        }
        let mut rest = n;
        for d in self.buf[self.len..self.len + digits].iter_mut().rev() {
            // rest % 10 < 10: the cast cannot truncate.
            *d = b'0' + (rest % 10) as u8;
            rest /= 10;
        }
        self.len += digits;
    }

    /// Appends an IPv4 address as `a.b.c.d` (the most common text of a full sync: octets come
    /// from a table).
    pub(crate) fn ipv4(&mut self, addr: Ipv4Addr) {
        // Four octets of up to three digits, dots, and room to copy three digits each time.
        if self.len + 16 > self.buf.len() {
            self.flush();
        }
        for (i, octet) in addr.octets().into_iter().enumerate() {
            if i > 0 {
                self.buf[self.len] = b'.';
                self.len += 1;
            }
            let [len, digits @ ..] = OCTETS[usize::from(octet)];
            self.buf[self.len..self.len + 3].copy_from_slice(&digits);
            self.len += usize::from(len);
        }
    }

    /// Copies the gathered pieces into the string.
    pub(crate) fn flush(&mut self) {
        // Only whole `str`s and ASCII are gathered: the bytes are always UTF-8.
        match std::str::from_utf8(&self.buf[..self.len]) {
            Ok(text) => self.out.push_str(text),
            Err(_) => self
                .out
                .push_str(&String::from_utf8_lossy(&self.buf[..self.len])),
        }
        self.len = 0;
    }
}

/// The decimal text of every octet: its length, then its digits.
const OCTETS: [[u8; 4]; 256] = {
    let mut table = [[0; 4]; 256];
    let mut n = 0;
    while n < 256 {
        // n < 256: the casts cannot truncate.
        let (a, b, c) = ((n / 100) as u8, (n / 10 % 10) as u8, (n % 10) as u8);
        table[n] = match n {
            0..10 => [1, b'0' + c, 0, 0],
            10..100 => [2, b'0' + b, b'0' + c, 0],
            _ => [3, b'0' + a, b'0' + b, b'0' + c],
        };
        n += 1;
    }
    table
};

/// Copies `src` to the start of `dst`. Short pieces (most of them) are copied by two
/// overlapping moves of a fixed size, which the compiler inlines, rather than by a call to
/// `memcpy`, which cost more than the copy itself.
fn copy_short(dst: &mut [u8], src: &[u8]) {
    fn overlapping<const K: usize>(dst: &mut [u8], src: &[u8]) {
        let n = src.len();
        dst[..K].copy_from_slice(&src[..K]);
        dst[n - K..n].copy_from_slice(&src[n - K..]);
    }
    match src.len() {
        0 => {}
        1 => dst[0] = src[0],
        2..4 => overlapping::<2>(dst, src),
        4..8 => overlapping::<4>(dst, src),
        8..16 => overlapping::<8>(dst, src),
        16..32 => overlapping::<16>(dst, src),
        32..=64 => overlapping::<32>(dst, src),
        n => dst[..n].copy_from_slice(src),
    }
}

impl fmt::Write for TextOut<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.push_str(s);
        Ok(())
    }
}

impl Drop for TextOut<'_> {
    fn drop(&mut self) {
        self.flush();
    }
}

/// `"text"` for a comment escaped already.
fn quoted(out: &mut TextOut<'_>, text: &str) {
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
        self.write_to(family, &mut TextOut::new(out));
    }

    fn write_to(&self, family: IpFamily, out: &mut TextOut<'_>) {
        let fam = family_name(family);
        match self {
            Expr::Saddr => {
                out.push_str(fam);
                out.push_str(" saddr");
            }
            Expr::Daddr => {
                out.push_str(fam);
                out.push_str(" daddr");
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
                out.push_str("numgen random mod ");
                out.u32(*modulus);
                if *offset != 0 {
                    out.push_str(" offset ");
                    out.u32(*offset);
                }
            }
            Expr::Concat(parts) => {
                for (i, p) in parts.iter().enumerate() {
                    if i > 0 {
                        out.push_str(" . ");
                    }
                    p.write_to(family, out);
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
fn write_endpoint(out: &mut TextOut<'_>, e: &SocketAddr, dnat: bool) {
    match (e, dnat) {
        (SocketAddr::V4(v4), _) => {
            out.ipv4(*v4.ip());
            out.push_str(if dnat { ":" } else { " . " });
        }
        (SocketAddr::V6(v6), true) => {
            let _ = write!(out, "[{}]:", v6.ip());
        }
        (SocketAddr::V6(v6), false) => {
            let _ = write!(out, "{} . ", v6.ip());
        }
    }
    out.u32(u32::from(e.port()));
}

/// A socket address as its `Display` prints it (`a.b.c.d:port`, `[v6]:port`), IPv4 without
/// the formatting machinery: a full render names many endpoints.
pub(crate) fn endpoint_text(endpoint: &SocketAddr) -> String {
    match endpoint {
        SocketAddr::V4(_) => {
            let mut text = String::with_capacity(21);
            write_endpoint(&mut TextOut::new(&mut text), endpoint, true);
            text
        }
        SocketAddr::V6(_) => endpoint.to_string(),
    }
}

/// Writes an address as nft prints it (IPv6 in its shortest form).
fn write_addr(out: &mut TextOut<'_>, addr: &IpAddr) {
    match addr {
        IpAddr::V4(v4) => out.ipv4(*v4),
        IpAddr::V6(v6) => {
            let _ = write!(out, "{v6}");
        }
    }
}

/// Writes a value as nft text (the same text as its `Display`, faster).
fn write_value(out: &mut TextOut<'_>, value: &Value) {
    match value {
        Value::Addr(a) => write_addr(out, a),
        Value::Net(n) => {
            write_addr(out, &n.addr());
            out.push('/');
            out.u32(u32::from(n.prefix_len()));
        }
        Value::Port(p) => out.u32(u32::from(*p)),
        Value::Int(i) => out.u32(*i),
        Value::Proto(_) | Value::Local | Value::New | Value::Dnat => {
            let _ = write!(out, "{value}");
        }
    }
}

/// Writes a verdict as nft text.
fn write_verdict(out: &mut TextOut<'_>, verdict: &Verdict) {
    match verdict {
        Verdict::Accept => out.push_str("accept"),
        Verdict::Drop => out.push_str("drop"),
        Verdict::Return => out.push_str("return"),
        Verdict::Jump(c) => {
            out.push_str("jump ");
            out.push_str(c);
        }
        Verdict::Goto(c) => {
            out.push_str("goto ");
            out.push_str(c);
        }
    }
}

impl Stmt {
    /// Writes the statement as nft text for a rule of `family`.
    pub fn write(&self, family: IpFamily, out: &mut String) {
        self.write_to(family, &mut TextOut::new(out));
    }

    fn write_to(&self, family: IpFamily, out: &mut TextOut<'_>) {
        match self {
            Stmt::Match {
                left,
                negate,
                right,
            } => {
                left.write_to(family, out);
                out.push(' ');
                if *negate {
                    out.push_str("!= ");
                } else if matches!(left, Expr::MarkAnd(_)) {
                    out.push_str("== ");
                }
                match right {
                    Operand::Value(v) => write_value(out, v),
                    Operand::Set(s) => {
                        out.push('@');
                        out.push_str(s);
                    }
                }
            }
            Stmt::Vmap { key, map } => {
                key.write_to(family, out);
                out.push_str(" vmap @");
                out.push_str(map);
            }
            Stmt::Mark(MarkOp::Or(bits)) => {
                let _ = write!(out, "meta mark set meta mark | {bits:#x}");
            }
            Stmt::Mark(MarkOp::Xor(bits)) => {
                let _ = write!(out, "meta mark set meta mark ^ {bits:#x}");
            }
            Stmt::Update { set, key } => {
                let _ = write!(out, "update @{set} {{ ");
                key.write_to(family, out);
                out.push_str(" }");
            }
            Stmt::DnatTo(e) => {
                out.push_str("dnat to ");
                write_endpoint(out, e, true);
            }
            Stmt::DnatNumgen { modulus, map } => {
                out.push_str("dnat ");
                out.push_str(family_name(family));
                out.push_str(" addr . port to numgen random mod ");
                out.u32(*modulus);
                out.push_str(" map @");
                out.push_str(map);
            }
            Stmt::Masquerade => out.push_str("masquerade fully-random"),
            Stmt::Reject => out.push_str("reject"),
            Stmt::Verdict(v) => write_verdict(out, v),
        }
    }
}

impl Rule {
    /// Writes the rule as nft text (statements, then the comment).
    pub fn write(&self, family: IpFamily, out: &mut String) {
        self.write_to(family, &mut TextOut::new(out));
    }

    pub(crate) fn write_to(&self, family: IpFamily, out: &mut TextOut<'_>) {
        for (i, s) in self.stmts.iter().enumerate() {
            if i > 0 {
                out.push(' ');
            }
            s.write_to(family, out);
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
        self.write_body_to(family, &mut TextOut::new(out));
    }

    pub(crate) fn write_body_to(&self, family: IpFamily, out: &mut TextOut<'_>) {
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
    let mut out = TextOut::new(out);
    for (i, v) in key.iter().enumerate() {
        if i > 0 {
            out.push_str(" . ");
        }
        write_value(&mut out, v);
    }
    write_element_data(&mut out, elem);
}

/// Writes one element of a table (see [`write_element`]), its key straight from its packed
/// bytes: most of a full sync's text is elements.
pub(crate) fn write_element_to(out: &mut TextOut<'_>, key: &ElemKey, elem: &Element) {
    let bytes = key.bytes();
    let mut rest = ElemKey::packed(&bytes);
    let mut first = true;
    while let Some((&kind, after)) = rest.split_first() {
        if !first {
            out.push_str(" . ");
        }
        first = false;
        rest = match kind {
            kind::ADDR4 => {
                let Some((addr, after)) = take::<4>(after) else {
                    break;
                };
                out.ipv4(Ipv4Addr::from(addr));
                after
            }
            kind::INT => {
                let Some((int, after)) = take::<4>(after) else {
                    break;
                };
                out.u32(u32::from_be_bytes(int));
                after
            }
            _ => {
                let Some((value, after)) = unpack(kind, after) else {
                    break;
                };
                write_value(out, &value);
                after
            }
        };
    }
    write_element_data(out, elem);
}

/// The comment and value of an element.
fn write_element_data(out: &mut TextOut<'_>, elem: &Element) {
    if let Some(c) = &elem.comment {
        out.push_str(" comment ");
        quoted(out, c);
    }
    match &elem.value {
        None => {}
        Some(ElemValue::Verdict(v)) => {
            out.push_str(" : ");
            write_verdict(out, v);
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
    write_chain_spec_to(&mut TextOut::new(out), chain);
}

pub(crate) fn write_chain_spec_to(out: &mut TextOut<'_>, chain: &Chain) {
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

    #[test]
    fn values_order_by_kind_then_value() {
        let v4 = |s: &str| Value::Addr(s.parse().unwrap());
        let sorted = [
            v4("9.255.255.255"),
            v4("10.0.0.1"),
            v4("10.0.0.2"),
            v4("10.0.1.0"),
            v4("::1"),
            v4("fd00::1"),
            Value::Net("10.0.0.0/8".parse().unwrap()),
            Value::Net("10.0.0.0/16".parse().unwrap()),
            Value::Net("fd00::/64".parse().unwrap()),
            Value::Proto(Protocol::Tcp),
            Value::Proto(Protocol::Udp),
            Value::Port(80),
            Value::Port(443),
            Value::Int(0),
            Value::Int(7),
            Value::Local,
            Value::New,
            Value::Dnat,
        ];
        for (i, a) in sorted.iter().enumerate() {
            for (j, b) in sorted.iter().enumerate() {
                assert_eq!(a.cmp(b), i.cmp(&j), "{a} vs {b}");
            }
        }
    }

    #[test]
    fn element_keys_are_their_values_packed() {
        let some: Vec<Value> = vec![
            Value::Addr("10.0.0.1".parse().unwrap()),
            Value::Addr("10.0.1.0".parse().unwrap()),
            Value::Addr("fd00::1".parse().unwrap()),
            Value::Net("10.0.0.0/8".parse().unwrap()),
            Value::Net("fd00::/64".parse().unwrap()),
            Value::Proto(Protocol::Udp),
            Value::Port(443),
            Value::Int(0),
            Value::Dnat,
        ];
        let mut keys: Vec<Vec<Value>> = some.iter().map(|v| vec![*v]).collect();
        for a in &some {
            for b in &some {
                keys.push(vec![*a, *b]);
                for c in some.iter().take(7) {
                    keys.push(vec![*a, *b, *c]);
                }
            }
        }
        // Every key of one or two values packs; some of three do not.
        assert!(
            keys.iter()
                .filter(|k| k.len() < 3)
                .all(|k| ElemKey::new(k).is_some())
        );
        keys.retain(|k| ElemKey::new(k).is_some());
        assert!(keys.len() > 400);
        let packed: Vec<ElemKey> = keys.iter().map(|k| ElemKey::new(k).unwrap()).collect();
        for (key, values) in packed.iter().zip(&keys) {
            assert_eq!(&*key.values(), values.as_slice());
            assert_eq!(key.len(), values.len());
        }
        // Packed keys order as their values.
        for (a, va) in packed.iter().zip(&keys) {
            for (b, vb) in packed.iter().zip(&keys) {
                assert_eq!(a.cmp(b), va.cmp(vb), "{va:?} vs {vb:?}");
            }
        }
        let v6 = Value::Net("fd00::/64".parse().unwrap());
        assert_eq!(ElemKey::new(&[v6, v6, v6]), None, "too long to pack");
        assert_eq!(ElemKey::new(&[Value::Int(1); 4]), None);
        assert!(ElemKey::new(&[]).unwrap().is_empty());
        let ip = "fd00::1".parse().unwrap();
        assert_eq!(
            ElemKey::from((ip, Protocol::Tcp, 80)),
            ElemKey::new(&[
                Value::Addr(ip),
                Value::Proto(Protocol::Tcp),
                Value::Port(80)
            ])
            .unwrap()
        );
        assert_eq!(
            ElemKey::from([v6, v6]).values().as_ref(),
            [v6, v6].as_slice()
        );
    }

    #[test]
    fn packed_keys_print_as_their_values() {
        let v4 = Value::Addr("10.1.200.3".parse().unwrap());
        let v6 = Value::Addr("fd00::1".parse().unwrap());
        let keys = [
            vec![Value::Int(7)],
            vec![v4, v4],
            vec![v6, v6],
            vec![v4, Value::Proto(Protocol::Sctp), Value::Port(8080)],
            vec![Value::Proto(Protocol::Udp), Value::Port(30053)],
            vec![Value::Net("10.64.0.0/10".parse().unwrap())],
            vec![Value::Net("fd00:10::/64".parse().unwrap())],
        ];
        let elem = Element {
            value: Some(ElemValue::Endpoint("10.244.1.2:8080".parse().unwrap())),
            comment: Some("ns/svc:http".into()),
        };
        for key in keys {
            let mut expected = String::new();
            write_element(&mut expected, &key, &elem);
            let mut text = String::new();
            write_element_to(
                &mut TextOut::new(&mut text),
                &ElemKey::new(&key).unwrap(),
                &elem,
            );
            assert_eq!(text, expected);
        }
    }

    #[test]
    fn ipv4_text_is_the_display_text() {
        for octet in 0..=255u8 {
            let addr = Ipv4Addr::new(octet, 255 - octet, octet / 3, 7);
            let mut text = String::new();
            TextOut::new(&mut text).ipv4(addr);
            assert_eq!(text, addr.to_string());
        }
    }

    #[test]
    fn endpoint_text_is_the_display_text() {
        for e in [
            "10.244.1.2:8080",
            "0.0.0.0:0",
            "255.255.255.255:65535",
            "[fd00::1]:80",
        ] {
            let e: SocketAddr = e.parse().unwrap();
            assert_eq!(endpoint_text(&e), e.to_string());
        }
    }

    #[test]
    fn text_out_writes_pieces_of_any_size() {
        let mut expected = String::new();
        let mut out = String::new();
        {
            let mut text = TextOut::new(&mut out);
            for n in [0, 7, 9, 10, 99, 100, 65535, 4_000_000_000, u32::MAX] {
                text.u32(n);
                text.push(' ');
                expected.push_str(&format!("{n} "));
            }
            text.ipv4(Ipv4Addr::new(10, 0, 255, 1));
            expected.push_str("10.0.255.1");
            for len in [
                0, 1, 2, 3, 4, 7, 8, 15, 16, 31, 32, 33, 64, 65, 255, 256, 257, 1000,
            ] {
                let piece: String = (0..len)
                    .map(|i| char::from(b'a' + (i % 26) as u8))
                    .collect();
                text.push_str(&piece);
                expected.push_str(&piece);
            }
            text.push('é');
            expected.push('é');
        }
        assert_eq!(out, expected);
    }
}
