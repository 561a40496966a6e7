//! Transaction commands as nf_tables netlink messages, encoded the way `nft` 1.0.6 encodes
//! the same text, so that `nft list` prints what it would have printed after `nft -f`.
//!
//! Only what incremental syncs of service ports write is covered: elements of plain sets and
//! maps, regular chains, and rules made of matches on addresses, ports, `meta l4proto` and
//! `fib saddr type`, set lookups, `numgen` verdict maps, `update`, `dnat` and verdicts.
//! Anything else is [`Unsupported`], and the caller writes the transaction with `nft -f`.

use std::net::{IpAddr, SocketAddr};

use svcroute_core::model::{IpFamily, Protocol};

use super::message::{F_APPEND, F_CREATE, F_REQUEST, Message};
use crate::ruleset::{ElemKey, ElemValue, Element, Expr, Operand, Rule, Stmt, Value, Verdict};
use crate::transaction::Command;

/// A command (or part of one) the netlink path does not encode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsupported(pub &'static str);

type Encoded = Result<(), Unsupported>;

/// `NFNL_SUBSYS_NFTABLES`.
pub const SUBSYS_NFTABLES: u16 = 10;

mod msg {
    pub const NEWCHAIN: u16 = 3;
    pub const DELCHAIN: u16 = 5;
    pub const NEWRULE: u16 = 6;
    pub const DELRULE: u16 = 8;
    pub const DELSET: u16 = 11;
    pub const NEWSETELEM: u16 = 12;
    pub const DELSETELEM: u16 = 14;
}

mod attr {
    pub const TABLE: u16 = 1; // NFTA_{CHAIN,RULE,SET,SET_ELEM_LIST}_TABLE
    pub const CHAIN_NAME: u16 = 3;
    pub const CHAIN_USERDATA: u16 = 12;
    pub const RULE_CHAIN: u16 = 2;
    pub const RULE_EXPRESSIONS: u16 = 4;
    pub const RULE_USERDATA: u16 = 7;
    pub const SET_NAME: u16 = 2;
    pub const ELEM_LIST_SET: u16 = 2;
    pub const ELEM_LIST_ELEMENTS: u16 = 3;
    pub const ELEM_KEY: u16 = 1;
    pub const ELEM_DATA: u16 = 2;
    pub const ELEM_USERDATA: u16 = 6;
    pub const LIST_ELEM: u16 = 1;
    pub const EXPR_NAME: u16 = 1;
    pub const EXPR_DATA: u16 = 2;
    pub const DATA_VALUE: u16 = 1;
    pub const DATA_VERDICT: u16 = 2;
    pub const VERDICT_CODE: u16 = 1;
    pub const VERDICT_CHAIN: u16 = 2;
}

/// Registers: the verdict, the first 16-byte one, and 4-byte ones.
const REG_VERDICT: u32 = 0;
const REG_1: u32 = 1;
const REG_2: u32 = 2;
const REG32_01: u32 = 9;

/// `NFPROTO_IPV4` / `NFPROTO_IPV6`: the `nfgenmsg` family of a table.
pub fn nfproto(family: IpFamily) -> u8 {
    match family {
        IpFamily::IPv4 => 2,
        IpFamily::IPv6 => 10,
    }
}

fn msg_type(kind: u16) -> u16 {
    (SUBSYS_NFTABLES << 8) | kind
}

/// The IANA protocol number (`meta l4proto` values).
fn proto_number(p: Protocol) -> u8 {
    match p {
        Protocol::Tcp => 6,
        Protocol::Udp => 17,
        Protocol::Sctp => 132,
    }
}

/// The bytes of an address.
fn addr_bytes(a: &IpAddr) -> Vec<u8> {
    match a {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}

/// A libnftnl userdata blob holding one comment (type 0, length with the NUL).
fn comment_udata(comment: &str) -> Result<Vec<u8>, Unsupported> {
    let len = u8::try_from(comment.len() + 1).map_err(|_| Unsupported("long comment"))?;
    let mut out = Vec::with_capacity(comment.len() + 3);
    out.push(0);
    out.push(len);
    out.extend_from_slice(comment.as_bytes());
    out.push(0);
    Ok(out)
}

/// One command as a message with sequence number `seq`. `plain_set` tells whether a set of
/// the family holds plain elements (not intervals): only those are encoded.
pub fn command(
    table: &str,
    family: IpFamily,
    command: &Command,
    seq: u32,
    flags: u16,
    plain_set: &dyn Fn(&str) -> bool,
) -> Result<Vec<u8>, Unsupported> {
    let new = |kind: u16, extra: u16| {
        let mut m = Message::new(
            msg_type(kind),
            F_REQUEST | flags | extra,
            seq,
            nfproto(family),
            0,
        );
        m.put_str(attr::TABLE, table);
        m
    };
    let m = match command {
        Command::AddChain { name, chain } => {
            if chain.hook.is_some() {
                return Err(Unsupported("base chain"));
            }
            let mut m = new(msg::NEWCHAIN, F_CREATE);
            m.put_str(attr::CHAIN_NAME, name);
            if let Some(c) = &chain.comment {
                m.put(attr::CHAIN_USERDATA, &comment_udata(c)?);
            }
            m
        }
        Command::FlushChain(name) => {
            let mut m = new(msg::DELRULE, 0);
            m.put_str(attr::RULE_CHAIN, name);
            m
        }
        Command::DeleteChain(name) => {
            let mut m = new(msg::DELCHAIN, 0);
            m.put_str(attr::CHAIN_NAME, name);
            m
        }
        Command::AddRule { chain, rule } => {
            let mut m = new(msg::NEWRULE, F_CREATE | F_APPEND);
            m.put_str(attr::RULE_CHAIN, chain);
            put_rule(&mut m, family, rule)?;
            m
        }
        Command::DeleteSet { name, .. } => {
            let mut m = new(msg::DELSET, 0);
            m.put_str(attr::SET_NAME, name);
            m
        }
        Command::AddElements { set, elements } => {
            if !plain_set(set) {
                return Err(Unsupported("elements of an interval or unknown set"));
            }
            let mut m = new(msg::NEWSETELEM, F_CREATE);
            m.put_str(attr::ELEM_LIST_SET, set);
            m.begin(attr::ELEM_LIST_ELEMENTS);
            for (key, element) in elements {
                put_element(&mut m, key, Some(element))?;
            }
            m.end();
            m
        }
        Command::DeleteElements { set, keys } => {
            if !plain_set(set) {
                return Err(Unsupported("elements of an interval or unknown set"));
            }
            let mut m = new(msg::DELSETELEM, 0);
            m.put_str(attr::ELEM_LIST_SET, set);
            m.begin(attr::ELEM_LIST_ELEMENTS);
            for key in keys {
                put_element(&mut m, key, None)?;
            }
            m.end();
            m
        }
        Command::AddTable { .. } => return Err(Unsupported("add table")),
        Command::DeleteTable => return Err(Unsupported("delete table")),
        Command::AddSet { .. } => return Err(Unsupported("add set")),
        Command::AddContents(_) => return Err(Unsupported("table contents")),
    };
    Ok(m.finish())
}

/// The bytes of one key component; in a concatenation each is padded to 4 bytes.
fn value_bytes(v: &Value) -> Result<Vec<u8>, Unsupported> {
    Ok(match v {
        Value::Addr(a) => addr_bytes(a),
        Value::Proto(p) => vec![proto_number(*p)],
        Value::Port(p) => p.to_be_bytes().to_vec(),
        // numgen slots and other integers are in host byte order.
        Value::Int(i) => i.to_ne_bytes().to_vec(),
        Value::Net(_) => return Err(Unsupported("network in a set element")),
        Value::Local | Value::New | Value::Dnat => {
            return Err(Unsupported("symbolic value in a set element"));
        }
    })
}

fn padded(parts: impl IntoIterator<Item = Vec<u8>>) -> Vec<u8> {
    let mut out = Vec::new();
    for mut p in parts {
        p.resize((p.len() + 3) & !3, 0);
        out.extend_from_slice(&p);
    }
    out
}

fn key_bytes(key: &ElemKey) -> Result<Vec<u8>, Unsupported> {
    let parts = key
        .values()
        .iter()
        .map(value_bytes)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(if parts.len() == 1 {
        parts.into_iter().flatten().collect()
    } else {
        padded(parts)
    })
}

fn endpoint_bytes(e: &SocketAddr) -> Vec<u8> {
    padded([addr_bytes(&e.ip()), e.port().to_be_bytes().to_vec()])
}

fn put_value(m: &mut Message, ty: u16, bytes: &[u8]) {
    m.begin(ty);
    m.put(attr::DATA_VALUE, bytes);
    m.end();
}

fn put_verdict(m: &mut Message, ty: u16, v: &Verdict) {
    let (code, chain): (i32, Option<&str>) = match v {
        Verdict::Accept => (1, None),
        Verdict::Drop => (0, None),
        Verdict::Return => (-5, None),
        Verdict::Jump(c) => (-3, Some(c)),
        Verdict::Goto(c) => (-4, Some(c)),
    };
    m.begin(ty);
    m.begin(attr::DATA_VERDICT);
    m.put(attr::VERDICT_CODE, &code.to_be_bytes());
    if let Some(c) = chain {
        m.put_str(attr::VERDICT_CHAIN, c);
    }
    m.end();
    m.end();
}

fn put_element(m: &mut Message, key: &ElemKey, element: Option<&Element>) -> Encoded {
    m.begin(attr::LIST_ELEM);
    put_value(m, attr::ELEM_KEY, &key_bytes(key)?);
    if let Some(e) = element {
        match &e.value {
            Some(ElemValue::Verdict(v)) => put_verdict(m, attr::ELEM_DATA, v),
            Some(ElemValue::Endpoint(ep)) => put_value(m, attr::ELEM_DATA, &endpoint_bytes(ep)),
            None => {}
        }
        if let Some(c) = &e.comment {
            m.put(attr::ELEM_USERDATA, &comment_udata(c)?);
        }
    }
    m.end();
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Rules

fn put_rule(m: &mut Message, family: IpFamily, rule: &Rule) -> Encoded {
    m.begin(attr::RULE_EXPRESSIONS);
    for stmt in &rule.stmts {
        put_stmt(m, family, stmt)?;
    }
    m.end();
    if let Some(c) = &rule.comment {
        m.put(attr::RULE_USERDATA, &comment_udata(c)?);
    }
    Ok(())
}

/// Opens expression `name`; its attributes follow until [`end_expr`].
fn begin_expr(m: &mut Message, name: &str) {
    m.begin(attr::LIST_ELEM);
    m.put_str(attr::EXPR_NAME, name);
    m.begin(attr::EXPR_DATA);
}

fn end_expr(m: &mut Message) {
    m.end();
    m.end();
}

/// Where an address sits in the network header: (offset, length).
fn addr_field(family: IpFamily, source: bool) -> (u32, u32) {
    match (family, source) {
        (IpFamily::IPv4, true) => (12, 4),
        (IpFamily::IPv4, false) => (16, 4),
        (IpFamily::IPv6, true) => (8, 16),
        (IpFamily::IPv6, false) => (24, 16),
    }
}

const NETWORK_HEADER: u32 = 1;
const TRANSPORT_HEADER: u32 = 2;

fn payload(m: &mut Message, base: u32, offset: u32, len: u32) {
    payload_into(m, REG_1, base, offset, len);
}

fn payload_into(m: &mut Message, dreg: u32, base: u32, offset: u32, len: u32) {
    begin_expr(m, "payload");
    m.put_u32(1, dreg); // NFTA_PAYLOAD_DREG
    m.put_u32(2, base);
    m.put_u32(3, offset);
    m.put_u32(4, len);
    end_expr(m);
}

fn meta_l4proto(m: &mut Message, dreg: u32) {
    begin_expr(m, "meta");
    m.put_u32(2, 16); // NFTA_META_KEY: NFT_META_L4PROTO
    m.put_u32(1, dreg); // NFTA_META_DREG
    end_expr(m);
}

fn cmp(m: &mut Message, negate: bool, data: &[u8]) {
    begin_expr(m, "cmp");
    m.put_u32(1, REG_1); // NFTA_CMP_SREG
    m.put_u32(2, u32::from(negate)); // NFT_CMP_EQ / NFT_CMP_NEQ
    put_value(m, 3, data); // NFTA_CMP_DATA
    end_expr(m);
}

fn bitwise_mask(m: &mut Message, mask: &[u8]) {
    begin_expr(m, "bitwise");
    m.put_u32(1, REG_1); // SREG
    m.put_u32(2, REG_1); // DREG
    m.put_u32(3, mask.len() as u32); // LEN
    put_value(m, 4, mask); // MASK
    put_value(m, 5, &vec![0; mask.len()]); // XOR
    end_expr(m);
}

fn lookup(m: &mut Message, set: &str, dreg: Option<u32>, negate: bool) {
    begin_expr(m, "lookup");
    m.put_u32(2, REG_1); // NFTA_LOOKUP_SREG
    m.put_str(1, set); // NFTA_LOOKUP_SET
    if let Some(d) = dreg {
        m.put_u32(3, d); // NFTA_LOOKUP_DREG
    }
    if negate {
        m.put_u32(5, 1); // NFTA_LOOKUP_FLAGS: NFT_LOOKUP_F_INV
    }
    end_expr(m);
}

fn numgen(m: &mut Message, dreg: u32, modulus: u32, offset: u32) {
    begin_expr(m, "numgen");
    m.put_u32(1, dreg); // NFTA_NG_DREG
    m.put_u32(2, modulus);
    m.put_u32(3, 1); // NFT_NG_RANDOM
    m.put_u32(4, offset);
    end_expr(m);
}

fn immediate_value(m: &mut Message, reg: u32, data: &[u8]) {
    begin_expr(m, "immediate");
    m.put_u32(1, reg);
    put_value(m, 2, data);
    end_expr(m);
}

fn dnat(m: &mut Message, family: IpFamily, proto_reg: u32, flags: Option<u32>) {
    begin_expr(m, "nat");
    m.put_u32(1, 1); // NFT_NAT_DNAT
    m.put_u32(2, u32::from(nfproto(family)));
    m.put_u32(3, REG_1); // NFTA_NAT_REG_ADDR_MIN
    m.put_u32(5, proto_reg); // NFTA_NAT_REG_PROTO_MIN
    if let Some(f) = flags {
        m.put_u32(7, f);
    }
    end_expr(m);
}

/// Loads `expr` into register 1, as `nft` does for a match on it; a concatenation fills the
/// 4-byte registers from there, each part rounded up to 4 bytes.
fn load(m: &mut Message, family: IpFamily, expr: &Expr) -> Encoded {
    match expr {
        Expr::Concat(parts) => {
            let mut at = 0;
            for part in parts {
                if matches!(part, Expr::Concat(_)) {
                    return Err(Unsupported("nested concatenation"));
                }
                load_into(m, family, part, register(at))?;
                at += length(family, part)?.div_ceil(4);
            }
            Ok(())
        }
        _ => load_into(m, family, expr, REG_1),
    }
}

/// The register number nft sends for the 4-byte register `at` words after register 1: a
/// 16-byte register (`NFT_REG_1`...) when it starts one, else `NFT_REG32_xx`.
fn register(at: u32) -> u32 {
    const REG32_00: u32 = 8;
    if at.is_multiple_of(4) {
        REG_1 + at / 4
    } else {
        REG32_00 + at
    }
}

/// How many bytes `expr` loads.
fn length(family: IpFamily, expr: &Expr) -> Result<u32, Unsupported> {
    Ok(match expr {
        Expr::Saddr | Expr::Daddr => addr_field(family, true).1,
        Expr::ThDport => 2,
        Expr::L4Proto => 1,
        Expr::FibSaddrType | Expr::Numgen { .. } => 4,
        _ => return Err(Unsupported("expression in a concatenation")),
    })
}

fn load_into(m: &mut Message, family: IpFamily, expr: &Expr, dreg: u32) -> Encoded {
    match expr {
        Expr::Saddr | Expr::Daddr => {
            let (offset, len) = addr_field(family, matches!(expr, Expr::Saddr));
            payload_into(m, dreg, NETWORK_HEADER, offset, len);
        }
        Expr::ThDport => payload_into(m, dreg, TRANSPORT_HEADER, 2, 2),
        Expr::L4Proto => meta_l4proto(m, dreg),
        Expr::FibSaddrType => {
            begin_expr(m, "fib");
            m.put_u32(1, dreg); // NFTA_FIB_DREG
            m.put_u32(2, 3); // NFT_FIB_RESULT_ADDRTYPE
            m.put_u32(3, 1); // NFTA_FIB_F_SADDR
            end_expr(m);
        }
        Expr::Numgen { modulus, offset } => numgen(m, dreg, *modulus, *offset),
        _ => return Err(Unsupported("expression")),
    }
    Ok(())
}

/// `expr VALUE` / `expr != VALUE`. Networks load only their prefix's whole bytes when the
/// prefix is byte-aligned, else the whole address and a mask (as `nft` does).
fn match_value(m: &mut Message, family: IpFamily, left: &Expr, negate: bool, v: &Value) -> Encoded {
    match (left, v) {
        (Expr::Saddr | Expr::Daddr, Value::Net(net)) => {
            let (offset, len) = addr_field(family, matches!(left, Expr::Saddr));
            let prefix = u32::from(net.prefix_len());
            if prefix == 0 || addr_bytes(&net.addr()).len() as u32 != len {
                return Err(Unsupported("network"));
            }
            let network = addr_bytes(&net.network());
            if prefix % 8 == 0 {
                payload(m, NETWORK_HEADER, offset, prefix / 8);
                cmp(m, negate, &network[..(prefix / 8) as usize]);
            } else {
                payload(m, NETWORK_HEADER, offset, len);
                bitwise_mask(m, &addr_bytes(&net.netmask()));
                cmp(m, negate, &network);
            }
        }
        (Expr::Saddr | Expr::Daddr, Value::Addr(a)) => {
            load(m, family, left)?;
            cmp(m, negate, &addr_bytes(a));
        }
        (Expr::ThDport, Value::Port(p)) => {
            load(m, family, left)?;
            cmp(m, negate, &p.to_be_bytes());
        }
        (Expr::L4Proto, Value::Proto(p)) => {
            load(m, family, left)?;
            cmp(m, negate, &[proto_number(*p)]);
        }
        // `fib ... type local`: RTN_LOCAL, in host byte order.
        (Expr::FibSaddrType, Value::Local) => {
            load(m, family, left)?;
            cmp(m, negate, &2u32.to_ne_bytes());
        }
        _ => return Err(Unsupported("match")),
    }
    Ok(())
}

fn put_stmt(m: &mut Message, family: IpFamily, stmt: &Stmt) -> Encoded {
    match stmt {
        Stmt::Match {
            left,
            negate,
            right: Operand::Value(v),
        } => match_value(m, family, left, *negate, v)?,
        Stmt::Match {
            left,
            negate,
            right: Operand::Set(set),
        } => {
            load(m, family, left)?;
            lookup(m, set, None, *negate);
        }
        Stmt::Vmap {
            key: key @ Expr::Numgen { .. },
            map,
        } => {
            load(m, family, key)?;
            lookup(m, map, Some(REG_VERDICT), false);
        }
        Stmt::Update { set, key } => {
            load(m, family, key)?;
            begin_expr(m, "dynset");
            m.put_str(1, set); // NFTA_DYNSET_SET_NAME
            m.put_u32(3, 1); // NFTA_DYNSET_OP: NFT_DYNSET_OP_UPDATE
            m.put_u32(4, REG_1); // NFTA_DYNSET_SREG_KEY
            end_expr(m);
        }
        Stmt::DnatTo(endpoint) => {
            immediate_value(m, REG_1, &addr_bytes(&endpoint.ip()));
            immediate_value(m, REG_2, &endpoint.port().to_be_bytes());
            // NF_NAT_RANGE_PROTO_SPECIFIED
            dnat(m, family, REG_2, Some(2));
        }
        Stmt::DnatNumgen { modulus, map } => {
            numgen(m, REG_1, *modulus, 0);
            lookup(m, map, Some(REG_1), false);
            // The map's data is `addr . port`: the port follows the address's register.
            let proto_reg = match family {
                IpFamily::IPv4 => REG32_01,
                IpFamily::IPv6 => REG_2,
            };
            dnat(m, family, proto_reg, None);
        }
        Stmt::Verdict(v) => {
            begin_expr(m, "immediate");
            m.put_u32(1, REG_VERDICT);
            put_verdict(m, 2, v);
            end_expr(m);
        }
        Stmt::Vmap { .. } => return Err(Unsupported("verdict map")),
        Stmt::Mark(_) => return Err(Unsupported("mark")),
        Stmt::Masquerade => return Err(Unsupported("masquerade")),
        Stmt::Reject => return Err(Unsupported("reject")),
    }
    Ok(())
}
