//! Reads a table back from `nft -j list table ip|ip6 NAME` (nft 1.0.6's JSON) into the typed
//! [`Table`] of [`crate::ruleset`].
//!
//! The reader is strict: every object, key and expression must be one that the model
//! represents exactly, otherwise [`parse_table`] fails with a [`JsonError`] naming the object
//! (set, chain, rule) and the construct it did not understand. Nothing is skipped silently;
//! the only things ignored are handles, `metainfo`, the `dynamic` set flag
//! (nft 1.0.6 does not list it), a base chain's `policy accept`, and the elements of dynamic
//! (timeout) sets, which are affinity state the data path adds, not part of the ruleset
//! svcroute programs.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;
use serde_json::{Map, Value as Json};
use svcroute_core::model::{IpFamily, Protocol};

use crate::ruleset::{
    BaseHook, Chain, ChainType, ElemKey, ElemValue, Element, Expr, Hook, KeyType, MarkOp, Operand,
    Rule, Set, SetDecl, SetKind, Stmt, Table, Value, Verdict, addr_type, family_name,
};

/// Why `nft -j` output could not be read into a [`Table`].
#[derive(Debug, thiserror::Error)]
pub enum JsonError {
    /// The text is not JSON at all.
    #[error("nft JSON output is not valid JSON: {0}")]
    Syntax(#[from] serde_json::Error),
    /// The JSON holds something the ruleset model cannot represent exactly.
    #[error("nft JSON output, {at}: {what}")]
    Unsupported {
        /// The object it was found in: `set cluster-ips`, `rule 2 (handle 17) of chain svc-X`
        /// (2: the rule's 0-based position in its chain).
        at: String,
        /// What was not understood, with the JSON in question.
        what: String,
    },
}

/// Reads the output of `nft -j list table FAMILY NAME` (nft 1.0.6): `None` when it holds no
/// table object. Fails on anything the model cannot represent exactly; the elements of
/// dynamic (timeout) sets are left out, being state the data path adds.
pub fn parse_table(json: &str, family: IpFamily) -> Result<Option<Table>, JsonError> {
    let items = nftables_items(json)?;
    let mut reader = Reader {
        family,
        name: String::new(),
        table: None,
    };
    for (index, item) in items.iter().enumerate() {
        reader.item(index, item)?;
    }
    Ok(reader.table)
}

/// The names of the tables of `family` in the output of `nft -j list tables FAMILY`.
pub fn parse_table_names(json: &str, family: IpFamily) -> Result<Vec<String>, JsonError> {
    let items = nftables_items(json)?;
    let mut names = Vec::new();
    for item in items {
        let Some(table) = item.get("table") else {
            continue;
        };
        let name = table.get("name").and_then(Json::as_str);
        let of_family = table.get("family").and_then(Json::as_str) == Some(family_name(family));
        match name {
            Some(name) if of_family => names.push(name.to_string()),
            Some(_) => {}
            None => return Err(unsupported("a table", format!("no name: {table}"))),
        }
    }
    Ok(names)
}

/// The top-level `nftables` list of nft's JSON output.
fn nftables_items(json: &str) -> Result<Vec<Json>, JsonError> {
    let doc: Json = serde_json::from_str(json)?;
    if let Json::Object(mut top) = doc
        && let Some(Json::Array(items)) = top.remove("nftables")
    {
        return Ok(items);
    }
    Err(unsupported(
        "the document",
        "no top-level `nftables` list".into(),
    ))
}

fn unsupported(at: impl Into<String>, what: String) -> JsonError {
    JsonError::Unsupported {
        at: at.into(),
        what,
    }
}

/// A problem found below an object, before the object is named.
type Parse<T> = Result<T, String>;

type Obj = Map<String, Json>;

// ---------------------------------------------------------------------------------------------
// Top level: table, set/map, chain, rule objects

/// The table read so far.
struct Reader {
    family: IpFamily,
    /// The table's name, once its object is read.
    name: String,
    table: Option<Table>,
}

impl Reader {
    fn item(&mut self, index: usize, item: &Json) -> Result<(), JsonError> {
        let at = || format!("item {index} of the `nftables` list");
        let (tag, body) = tagged(item).map_err(|what| unsupported(at(), what))?;
        match tag {
            "metainfo" => Ok(()),
            "table" => self.read_table(body),
            "set" | "map" => self.read_set(tag, body),
            "chain" => self.read_chain(body),
            "rule" => self.read_rule(body),
            other => Err(unsupported(
                at(),
                format!("unknown object `{other}`: {}", show(item)),
            )),
        }
    }

    fn read_table(&mut self, body: &Json) -> Result<(), JsonError> {
        let parse = || -> Parse<(String, Option<String>)> {
            let obj = object(body, "table")?;
            only_keys(
                obj,
                "table",
                &["family", "name", "handle", "comment", "flags"],
            )?;
            check_family(obj, self.family)?;
            if let Some(flags) = obj.get("flags")
                && !strings(flags, "table flags")?.is_empty()
            {
                return Err(format!("table flags {} are not supported", show(flags)));
            }
            let name = string(field(obj, "name", "table")?, "table name")?.to_string();
            Ok((name, optional_string(obj, "comment")?))
        };
        let (name, comment) = parse().map_err(|what| unsupported("table", what))?;
        if self.table.is_some() {
            return Err(unsupported(
                format!("table {name}"),
                format!("a second table object (after table {})", self.name),
            ));
        }
        let mut table = Table::new(self.family);
        table.comment = comment;
        self.name = name;
        self.table = Some(table);
        Ok(())
    }

    /// The table, checking that `obj` (a set, chain or rule) belongs to it.
    fn owner(&mut self, obj: &Obj) -> Parse<&mut Table> {
        check_family(obj, self.family)?;
        let name = string(field(obj, "table", "object")?, "table name")?;
        match &mut self.table {
            Some(table) if name == self.name => Ok(table),
            Some(_) => Err(format!("belongs to table {name}, not {}", self.name)),
            None => Err(format!(
                "belongs to table {name}, which was not listed before it"
            )),
        }
    }

    fn read_set(&mut self, tag: &str, body: &Json) -> Result<(), JsonError> {
        let family = self.family;
        let obj = object(body, tag).map_err(|what| unsupported(tag, what))?;
        let name = required_string(obj, "name", tag).map_err(|what| unsupported(tag, what))?;
        let at = || format!("{tag} {name}");
        let table = self.owner(obj).map_err(|what| unsupported(at(), what))?;
        let set = read_set(tag, obj, family).map_err(|what| unsupported(at(), what))?;
        if table.sets.insert(name.clone(), set).is_some() {
            return Err(unsupported(at(), "listed twice".into()));
        }
        Ok(())
    }

    fn read_chain(&mut self, body: &Json) -> Result<(), JsonError> {
        let obj = object(body, "chain").map_err(|what| unsupported("chain", what))?;
        let name =
            required_string(obj, "name", "chain").map_err(|what| unsupported("chain", what))?;
        let at = || format!("chain {name}");
        let table = self.owner(obj).map_err(|what| unsupported(at(), what))?;
        let chain = read_chain(obj).map_err(|what| unsupported(at(), what))?;
        if table.chains.insert(name.clone(), chain).is_some() {
            return Err(unsupported(at(), "listed twice".into()));
        }
        Ok(())
    }

    fn read_rule(&mut self, body: &Json) -> Result<(), JsonError> {
        let family = self.family;
        let obj = object(body, "rule").map_err(|what| unsupported("rule", what))?;
        let chain_name =
            required_string(obj, "chain", "rule").map_err(|what| unsupported("rule", what))?;
        let handle = obj.get("handle").map(show).unwrap_or_else(|| "?".into());
        let table = self
            .owner(obj)
            .map_err(|what| unsupported(format!("a rule of chain {chain_name}"), what))?;
        let Some(chain) = table.chains.get_mut(&chain_name) else {
            return Err(unsupported(
                format!("rule (handle {handle})"),
                format!("its chain `{chain_name}` was not listed before it"),
            ));
        };
        let at = format!(
            "rule {} (handle {handle}) of chain {chain_name}",
            chain.rules.len()
        );
        let rule = read_rule(obj, family).map_err(|what| unsupported(at, what))?;
        chain.rules.push(rule);
        Ok(())
    }
}

fn check_family(obj: &Obj, family: IpFamily) -> Parse<()> {
    let found = string(field(obj, "family", "object")?, "family")?;
    if found == family_name(family) {
        Ok(())
    } else {
        Err(format!(
            "family `{found}` in a table of family `{}`",
            family_name(family)
        ))
    }
}

// ---------------------------------------------------------------------------------------------
// Sets and maps

fn read_set(tag: &str, obj: &Obj, family: IpFamily) -> Parse<Set> {
    only_keys(
        obj,
        tag,
        &[
            "family", "name", "table", "type", "handle", "comment", "flags", "elem", "timeout",
            "size", "map",
        ],
    )?;
    let decl = set_decl(tag, obj, family)?;
    let elements = match obj.get("elem") {
        // Elements of a dynamic set are what `update` statements added: state, not ruleset.
        Some(_) if decl.timeout.is_some() => BTreeMap::new(),
        Some(elems) => elements(&decl, elems, family)?,
        None => BTreeMap::new(),
    };
    Ok(Set { decl, elements })
}

fn set_decl(tag: &str, obj: &Obj, family: IpFamily) -> Parse<SetDecl> {
    let key = type_names(field(obj, "type", tag)?, "set type")?
        .into_iter()
        .map(|name| key_type(name, family))
        .collect::<Parse<Vec<_>>>()?;
    let kind = set_kind(tag, obj.get("map"), family)?;
    let (interval, timeout_flag) = set_flags(obj.get("flags"))?;
    let timeout = match (timeout_flag, obj.get("timeout")) {
        (true, Some(t)) => Some(integer::<u32>(t, "set timeout")?),
        (false, None) => None,
        (true, None) => return Err("flag `timeout` without a set timeout".into()),
        (false, Some(t)) => return Err(format!("timeout {} without flag `timeout`", show(t))),
    };
    let size = obj
        .get("size")
        .map(|n| integer::<u32>(n, "set size"))
        .transpose()?;
    Ok(SetDecl {
        kind,
        key,
        interval,
        timeout,
        size,
        protocol: None,
        comment: optional_string(obj, "comment")?,
    })
}

fn key_type(name: &str, family: IpFamily) -> Parse<KeyType> {
    match name {
        "inet_proto" => Ok(KeyType::Proto),
        "inet_service" => Ok(KeyType::Service),
        "integer" => Ok(KeyType::Slot),
        _ if name == addr_type(family) => Ok(KeyType::Addr),
        _ => Err(format!(
            "key type `{name}` is not one of {}, inet_proto, inet_service, integer",
            addr_type(family)
        )),
    }
}

/// `set` objects have no `map` key; `map` objects map to `verdict` or `ADDR . inet_service`.
fn set_kind(tag: &str, data: Option<&Json>, family: IpFamily) -> Parse<SetKind> {
    let Some(data) = data else {
        return match tag {
            "set" => Ok(SetKind::Set),
            _ => Err("a map without data type (`map` key)".into()),
        };
    };
    if tag != "map" {
        return Err(format!("a set with a data type {}", show(data)));
    }
    let names = type_names(data, "map data type")?;
    match names.as_slice() {
        ["verdict"] => Ok(SetKind::VerdictMap),
        [addr, "inet_service"] if *addr == addr_type(family) => Ok(SetKind::EndpointMap),
        _ => Err(format!(
            "map data type {} is neither `verdict` nor `{} . inet_service`",
            show(data),
            addr_type(family)
        )),
    }
}

/// `(interval, timeout)`.
fn set_flags(flags: Option<&Json>) -> Parse<(bool, bool)> {
    let mut interval = false;
    let mut timeout = false;
    for flag in flags
        .map(|f| strings(f, "set flags"))
        .transpose()?
        .unwrap_or_default()
    {
        match flag {
            "interval" => interval = true,
            "timeout" => timeout = true,
            "dynamic" => {}
            other => return Err(format!("set flag `{other}` is not supported")),
        }
    }
    Ok((interval, timeout))
}

fn elements(decl: &SetDecl, elems: &Json, family: IpFamily) -> Parse<BTreeMap<ElemKey, Element>> {
    let list = elems
        .as_array()
        .ok_or_else(|| format!("`elem` is not a list: {}", show(elems)))?;
    let mut out = BTreeMap::new();
    for (i, item) in list.iter().enumerate() {
        let (key, elem) = element(decl, item, family).map_err(|e| format!("element {i}: {e}"))?;
        if out.insert(key, elem).is_some() {
            return Err(format!("element {i} {} is listed twice", show(item)));
        }
    }
    Ok(out)
}

/// A set element `KEY` or a map element `[KEY, DATA]`.
fn element(decl: &SetDecl, item: &Json, family: IpFamily) -> Parse<(ElemKey, Element)> {
    let (key, data) = match (decl.kind, item) {
        (SetKind::Set, _) => (item, None),
        (_, Json::Array(pair)) if pair.len() == 2 => (&pair[0], Some(&pair[1])),
        _ => {
            return Err(format!(
                "a map element is not a [key, data] pair: {}",
                show(item)
            ));
        }
    };
    let (key, comment) = elem_key(decl, key, family)?;
    let value = match data {
        Some(data) => Some(elem_value(decl.kind, data, family)?),
        None => None,
    };
    Ok((key, Element { value, comment }))
}

/// The key of an element, and its comment (`{"elem": {"val": KEY, "comment": "..."}}`).
fn elem_key(decl: &SetDecl, v: &Json, family: IpFamily) -> Parse<(ElemKey, Option<String>)> {
    if let Some(elem) = v.get("elem") {
        let obj = object(elem, "elem")?;
        only_keys(obj, "element", &["val", "comment"])?;
        let key = key_values(decl, field(obj, "val", "element")?, family)?;
        return Ok((key, optional_string(obj, "comment")?));
    }
    Ok((key_values(decl, v, family)?, None))
}

/// One value per key component: a plain value, or `{"concat": [...]}` for several.
fn key_values(decl: &SetDecl, v: &Json, family: IpFamily) -> Parse<ElemKey> {
    let parts: Vec<&Json> = match (decl.key.len(), v.get("concat")) {
        (1, _) => vec![v],
        (n, Some(Json::Array(parts))) if parts.len() == n => parts.iter().collect(),
        (n, _) => {
            return Err(format!(
                "key {} is not a concatenation of {n} values",
                show(v)
            ));
        }
    };
    let values: Vec<Value> = decl
        .key
        .iter()
        .zip(parts)
        .map(|(kt, part)| key_value(*kt, decl.interval, part, family))
        .collect::<Parse<_>>()?;
    ElemKey::new(&values).ok_or_else(|| {
        format!(
            "key {} is not supported: more than {} components, or too long",
            show(v),
            ElemKey::MAX_LEN
        )
    })
}

/// One component of a key, read as its declared type. In interval sets addresses are
/// networks: a plain address (nft's listing of a /32 or /128) is a host network.
fn key_value(kt: KeyType, interval: bool, v: &Json, family: IpFamily) -> Parse<Value> {
    match kt {
        KeyType::Addr if interval && v.get("prefix").is_some() => {
            Ok(Value::Net(prefix(v, family)?))
        }
        KeyType::Addr if interval => Ok(Value::Net(IpNet::from(addr(v, family)?))),
        KeyType::Addr => Ok(Value::Addr(addr(v, family)?)),
        KeyType::Proto => Ok(Value::Proto(proto(v)?)),
        KeyType::Service => Ok(Value::Port(integer(v, "port")?)),
        KeyType::Slot => Ok(Value::Int(integer(v, "integer")?)),
    }
}

fn elem_value(kind: SetKind, v: &Json, family: IpFamily) -> Parse<ElemValue> {
    match kind {
        SetKind::VerdictMap => Ok(ElemValue::Verdict(verdict(v)?)),
        SetKind::EndpointMap => Ok(ElemValue::Endpoint(endpoint(v, family)?)),
        SetKind::Set => Err(format!("a set element with data {}", show(v))),
    }
}

/// `{"concat": [ADDR, PORT]}`.
fn endpoint(v: &Json, family: IpFamily) -> Parse<SocketAddr> {
    match v.get("concat").and_then(Json::as_array).map(Vec::as_slice) {
        Some([a, p]) => Ok(SocketAddr::new(addr(a, family)?, integer(p, "port")?)),
        _ => Err(format!("endpoint {} is not `address . port`", show(v))),
    }
}

// ---------------------------------------------------------------------------------------------
// Chains

fn read_chain(obj: &Obj) -> Parse<Chain> {
    only_keys(
        obj,
        "chain",
        &[
            "family", "table", "name", "handle", "type", "hook", "prio", "policy", "comment",
        ],
    )?;
    Ok(Chain {
        hook: base_hook(obj)?,
        comment: optional_string(obj, "comment")?,
        rules: Vec::new(),
    })
}

/// A base chain's type, hook and priority; `None` for a regular chain.
fn base_hook(obj: &Obj) -> Parse<Option<BaseHook>> {
    let Some(kind) = obj.get("type") else {
        return match ["hook", "prio", "policy"]
            .iter()
            .find(|k| obj.contains_key(**k))
        {
            Some(k) => Err(format!("`{k}` without a chain type")),
            None => Ok(None),
        };
    };
    let kind = match string(kind, "chain type")? {
        "filter" => ChainType::Filter,
        "nat" => ChainType::Nat,
        other => return Err(format!("chain type `{other}` is not supported")),
    };
    let hook = match string(field(obj, "hook", "base chain")?, "hook")? {
        "prerouting" => Hook::Prerouting,
        "input" => Hook::Input,
        "forward" => Hook::Forward,
        "output" => Hook::Output,
        "postrouting" => Hook::Postrouting,
        other => return Err(format!("hook `{other}` is not supported")),
    };
    let priority = integer(field(obj, "prio", "base chain")?, "priority")?;
    if let Some(policy) = obj.get("policy")
        && string(policy, "policy")? != "accept"
    {
        return Err(format!(
            "policy {} (only accept is supported)",
            show(policy)
        ));
    }
    Ok(Some(BaseHook {
        kind,
        hook,
        priority,
    }))
}

// ---------------------------------------------------------------------------------------------
// Rules and statements

fn read_rule(obj: &Obj, family: IpFamily) -> Parse<Rule> {
    only_keys(
        obj,
        "rule",
        &["family", "table", "chain", "handle", "expr", "comment"],
    )?;
    let exprs = field(obj, "expr", "rule")?;
    let list = exprs
        .as_array()
        .ok_or_else(|| format!("`expr` is not a list: {}", show(exprs)))?;
    let stmts = list
        .iter()
        .enumerate()
        .map(|(i, s)| stmt(s, family).map_err(|e| format!("statement {i}: {e}")))
        .collect::<Parse<Vec<_>>>()?;
    Ok(Rule {
        stmts,
        comment: optional_string(obj, "comment")?,
    })
}

fn stmt(v: &Json, family: IpFamily) -> Parse<Stmt> {
    let (tag, body) = tagged(v)?;
    match tag {
        "match" => match_stmt(body, family),
        "vmap" => vmap_stmt(body, family),
        "dnat" => dnat_stmt(body, family),
        "mangle" => mangle_stmt(body),
        "set" => update_stmt(body, family),
        "masquerade" => masquerade_stmt(body),
        "reject" => reject_stmt(body, family),
        _ => match verdict_of(tag, body)? {
            Some(verdict) => Ok(Stmt::Verdict(verdict)),
            None => Err(format!("unknown statement `{tag}`: {}", show(v))),
        },
    }
}

/// `{"op": "==" | "!=" | "in", "left": EXPR, "right": VALUE | "@set"}`.
fn match_stmt(body: &Json, family: IpFamily) -> Parse<Stmt> {
    let obj = object(body, "match")?;
    only_keys(obj, "match", &["op", "left", "right"])?;
    let negate = match string(field(obj, "op", "match")?, "match op")? {
        "==" | "in" => false,
        "!=" => true,
        other => return Err(format!("match operator `{other}` is not supported")),
    };
    let left = expr(field(obj, "left", "match")?, family)?;
    let right = operand(&left, field(obj, "right", "match")?, family)?;
    Ok(Stmt::Match {
        left,
        negate,
        right,
    })
}

/// The right side of a match, read as the type of the left side.
fn operand(left: &Expr, v: &Json, family: IpFamily) -> Parse<Operand> {
    if let Some(set) = v.as_str().and_then(|s| s.strip_prefix('@')) {
        return Ok(Operand::Set(set.to_string()));
    }
    let value = match left {
        Expr::Saddr | Expr::Daddr if v.get("prefix").is_some() => Value::Net(prefix(v, family)?),
        Expr::Saddr | Expr::Daddr => Value::Addr(addr(v, family)?),
        Expr::L4Proto => Value::Proto(proto(v)?),
        Expr::ThDport | Expr::TcpDport => Value::Port(integer(v, "port")?),
        Expr::MarkAnd(_) | Expr::Numgen { .. } => Value::Int(integer(v, "integer")?),
        Expr::FibSaddrType | Expr::FibDaddrType => keyword(v, "local", Value::Local)?,
        Expr::CtState => keyword(v, "new", Value::New)?,
        Expr::CtStatus => keyword(v, "dnat", Value::Dnat)?,
        Expr::Concat(_) => {
            return Err(format!(
                "a concatenation compared with {} (not a set)",
                show(v)
            ));
        }
    };
    Ok(Operand::Value(value))
}

/// The one keyword a match may compare with, alone or as a one-item list (`["new"]`).
fn keyword(v: &Json, word: &str, value: Value) -> Parse<Value> {
    match strings(v, "keyword")?.as_slice() {
        [w] if *w == word => Ok(value),
        _ => Err(format!("value {} (only `{word}` is supported)", show(v))),
    }
}

fn vmap_stmt(body: &Json, family: IpFamily) -> Parse<Stmt> {
    let obj = object(body, "vmap")?;
    only_keys(obj, "vmap", &["key", "data"])?;
    Ok(Stmt::Vmap {
        key: expr(field(obj, "key", "vmap")?, family)?,
        map: set_ref(field(obj, "data", "vmap")?)?,
    })
}

/// `dnat to ADDR:PORT`, or `dnat ... to numgen random mod N map @MAP`.
fn dnat_stmt(body: &Json, family: IpFamily) -> Parse<Stmt> {
    let obj = object(body, "dnat")?;
    only_keys(obj, "dnat", &["family", "addr", "port"])?;
    if obj.contains_key("family") {
        check_family(obj, family)?;
    }
    let target = field(obj, "addr", "dnat")?;
    match (target.get("map"), obj.get("port")) {
        (Some(map), None) => {
            let map = object(map, "dnat map")?;
            only_keys(map, "dnat map", &["key", "data"])?;
            let key = field(map, "key", "dnat map")?;
            let Expr::Numgen { modulus, offset: 0 } = expr(key, family)? else {
                return Err(format!("dnat map key {} is not numgen", show(key)));
            };
            Ok(Stmt::DnatNumgen {
                modulus,
                map: set_ref(field(map, "data", "dnat map")?)?,
            })
        }
        (None, Some(port)) => Ok(Stmt::DnatTo(SocketAddr::new(
            addr(target, family)?,
            integer(port, "port")?,
        ))),
        _ => Err(format!(
            "dnat is neither `to ADDR:PORT` nor a numgen map: {}",
            show(body)
        )),
    }
}

/// `meta mark set meta mark | BITS` (or `^`).
fn mangle_stmt(body: &Json) -> Parse<Stmt> {
    let obj = object(body, "mangle")?;
    only_keys(obj, "mangle", &["key", "value"])?;
    meta_mark(field(obj, "key", "mangle")?)?;
    let value = field(obj, "value", "mangle")?;
    let (op, args) = tagged(value)?;
    let bits = match args.as_array().map(Vec::as_slice) {
        Some([mark, bits]) => {
            meta_mark(mark)?;
            integer(bits, "mark bits")?
        }
        _ => {
            return Err(format!(
                "mark value {} is not `meta mark OP BITS`",
                show(value)
            ));
        }
    };
    match op {
        "|" => Ok(Stmt::Mark(MarkOp::Or(bits))),
        "^" => Ok(Stmt::Mark(MarkOp::Xor(bits))),
        _ => Err(format!("mark value {} is neither | nor ^", show(value))),
    }
}

/// `update @SET { KEY }`.
fn update_stmt(body: &Json, family: IpFamily) -> Parse<Stmt> {
    let obj = object(body, "set statement")?;
    only_keys(obj, "set statement", &["op", "elem", "set"])?;
    let op = string(field(obj, "op", "set statement")?, "set op")?;
    if op != "update" {
        return Err(format!("set statement `{op}` (only update is supported)"));
    }
    Ok(Stmt::Update {
        set: set_ref(field(obj, "set", "set statement")?)?,
        key: expr(field(obj, "elem", "set statement")?, family)?,
    })
}

/// `masquerade fully-random`.
fn masquerade_stmt(body: &Json) -> Parse<Stmt> {
    let flags = body
        .get("flags")
        .map(|f| strings(f, "masquerade flags"))
        .transpose()?;
    let only_flags = body.as_object().is_some_and(|o| o.len() == 1);
    match flags.as_deref() {
        Some(["fully-random"]) if only_flags => Ok(Stmt::Masquerade),
        _ => Err(format!(
            "masquerade {} (only `masquerade fully-random` is supported)",
            show(body)
        )),
    }
}

/// Plain `reject`: nft lists it as an ICMP(v6) port unreachable.
fn reject_stmt(body: &Json, family: IpFamily) -> Parse<Stmt> {
    if body.is_null() {
        return Ok(Stmt::Reject);
    }
    let obj = object(body, "reject")?;
    only_keys(obj, "reject", &["type", "expr"])?;
    let icmp = match family {
        IpFamily::IPv4 => "icmp",
        IpFamily::IPv6 => "icmpv6",
    };
    let kind = obj.get("type").and_then(Json::as_str);
    let code = obj.get("expr").and_then(Json::as_str);
    if kind == Some(icmp) && code == Some("port-unreachable") {
        Ok(Stmt::Reject)
    } else {
        Err(format!(
            "reject {} (only `{icmp}` port-unreachable is supported)",
            show(body)
        ))
    }
}

/// `{"accept": null}`, `{"jump": {"target": "x"}}`, ...
fn verdict(v: &Json) -> Parse<Verdict> {
    let (tag, body) = tagged(v)?;
    verdict_of(tag, body)?.ok_or_else(|| format!("unknown verdict {}", show(v)))
}

/// The verdict of a tagged object; `None` when the tag names no verdict.
fn verdict_of(tag: &str, body: &Json) -> Parse<Option<Verdict>> {
    let simple = |verdict| match body {
        Json::Null => Ok(Some(verdict)),
        _ => Err(format!("verdict `{tag}` with argument {}", show(body))),
    };
    let target = || -> Parse<String> {
        let obj = object(body, tag)?;
        only_keys(obj, tag, &["target"])?;
        Ok(string(field(obj, "target", tag)?, "target")?.to_string())
    };
    match tag {
        "accept" => simple(Verdict::Accept),
        "drop" => simple(Verdict::Drop),
        "return" => simple(Verdict::Return),
        "jump" => Ok(Some(Verdict::Jump(target()?))),
        "goto" => Ok(Some(Verdict::Goto(target()?))),
        _ => Ok(None),
    }
}

// ---------------------------------------------------------------------------------------------
// Expressions

fn expr(v: &Json, family: IpFamily) -> Parse<Expr> {
    let (tag, body) = tagged(v)?;
    match tag {
        "payload" => payload(body, family),
        "meta" => match meta_key(body)? {
            "l4proto" => Ok(Expr::L4Proto),
            other => Err(format!("meta `{other}` is not supported here")),
        },
        "&" => mark_and(body),
        "fib" => fib(body),
        "ct" => ct(body),
        "numgen" => numgen(body),
        "concat" => {
            let parts = body
                .as_array()
                .ok_or_else(|| format!("concat {} is not a list", show(body)))?;
            let parts = parts
                .iter()
                .map(|p| expr(p, family))
                .collect::<Parse<Vec<_>>>()?;
            Ok(Expr::Concat(parts))
        }
        _ => Err(format!("unknown expression `{tag}`: {}", show(v))),
    }
}

/// `ip saddr`, `ip6 daddr`, `th dport`, `tcp dport`.
fn payload(body: &Json, family: IpFamily) -> Parse<Expr> {
    let obj = object(body, "payload")?;
    only_keys(obj, "payload", &["protocol", "field"])?;
    let protocol = string(field(obj, "protocol", "payload")?, "payload protocol")?;
    let name = string(field(obj, "field", "payload")?, "payload field")?;
    let fam = family_name(family);
    match (protocol, name) {
        (p, "saddr") if p == fam => Ok(Expr::Saddr),
        (p, "daddr") if p == fam => Ok(Expr::Daddr),
        ("th", "dport") => Ok(Expr::ThDport),
        ("tcp", "dport") => Ok(Expr::TcpDport),
        ("ip" | "ip6", _) if protocol != fam => Err(format!(
            "payload `{protocol} {name}` in a table of family `{fam}`"
        )),
        _ => Err(format!("payload `{protocol} {name}` is not supported")),
    }
}

fn meta_key(body: &Json) -> Parse<&str> {
    let obj = object(body, "meta")?;
    only_keys(obj, "meta", &["key"])?;
    string(field(obj, "key", "meta")?, "meta key")
}

/// `meta mark` exactly.
fn meta_mark(v: &Json) -> Parse<()> {
    match tagged(v)? {
        ("meta", body) if meta_key(body)? == "mark" => Ok(()),
        _ => Err(format!("{} is not `meta mark`", show(v))),
    }
}

/// `meta mark & MASK`.
fn mark_and(body: &Json) -> Parse<Expr> {
    match body.as_array().map(Vec::as_slice) {
        Some([mark, mask]) => {
            meta_mark(mark)?;
            Ok(Expr::MarkAnd(integer(mask, "mark mask")?))
        }
        _ => Err(format!("`&` of {} is not `meta mark & MASK`", show(body))),
    }
}

/// `fib saddr type`, `fib daddr type`.
fn fib(body: &Json) -> Parse<Expr> {
    let obj = object(body, "fib")?;
    only_keys(obj, "fib", &["result", "flags"])?;
    let result = string(field(obj, "result", "fib")?, "fib result")?;
    let flags = strings(field(obj, "flags", "fib")?, "fib flags")?;
    match (result, flags.as_slice()) {
        ("type", ["saddr"]) => Ok(Expr::FibSaddrType),
        ("type", ["daddr"]) => Ok(Expr::FibDaddrType),
        _ => Err(format!("fib {} is not supported", show(body))),
    }
}

/// `ct state`, `ct status`.
fn ct(body: &Json) -> Parse<Expr> {
    let obj = object(body, "ct")?;
    only_keys(obj, "ct", &["key"])?;
    match string(field(obj, "key", "ct")?, "ct key")? {
        "state" => Ok(Expr::CtState),
        "status" => Ok(Expr::CtStatus),
        other => Err(format!("ct `{other}` is not supported")),
    }
}

/// `numgen random mod N` (offset 0): N.
/// `numgen random mod N [offset O]` (nft prints the offset as a signed 32-bit number: only
/// offsets below 2^31 are read).
fn numgen(body: &Json) -> Parse<Expr> {
    let obj = object(body, "numgen")?;
    only_keys(obj, "numgen", &["mode", "mod", "offset"])?;
    let mode = string(field(obj, "mode", "numgen")?, "numgen mode")?;
    if mode != "random" {
        return Err(format!(
            "numgen {} (only `random` is supported)",
            show(body)
        ));
    }
    let offset = match obj.get("offset") {
        Some(o) => integer::<u32>(o, "numgen offset")?,
        None => 0,
    };
    if offset > i32::MAX as u32 {
        return Err(format!("numgen offset {offset} is not below 2^31"));
    }
    let modulus = integer(field(obj, "mod", "numgen")?, "numgen modulus")?;
    Ok(Expr::Numgen { modulus, offset })
}

// ---------------------------------------------------------------------------------------------
// Constants

fn addr(v: &Json, family: IpFamily) -> Parse<IpAddr> {
    let a: IpAddr = string(v, "address")?
        .parse()
        .map_err(|_| format!("{} is not an address", show(v)))?;
    if IpFamily::of(&a) == family {
        Ok(a)
    } else {
        Err(format!(
            "address {a} in a table of family `{}`",
            family_name(family)
        ))
    }
}

/// `{"prefix": {"addr": "10.0.0.0", "len": 8}}`.
fn prefix(v: &Json, family: IpFamily) -> Parse<IpNet> {
    let body = field(object(v, "prefix")?, "prefix", "prefix")?;
    let obj = object(body, "prefix")?;
    only_keys(obj, "prefix", &["addr", "len"])?;
    let a = addr(field(obj, "addr", "prefix")?, family)?;
    let len = integer(field(obj, "len", "prefix")?, "prefix length")?;
    IpNet::new(a, len).map_err(|_| format!("{} is not a valid prefix", show(v)))
}

fn proto(v: &Json) -> Parse<Protocol> {
    v.as_str()
        .and_then(Protocol::parse)
        .filter(|p| v.as_str() == Some(p.lower()))
        .ok_or_else(|| format!("protocol {} is not tcp, udp or sctp", show(v)))
}

/// `"@name"`.
fn set_ref(v: &Json) -> Parse<String> {
    v.as_str()
        .and_then(|s| s.strip_prefix('@'))
        .map(str::to_string)
        .ok_or_else(|| format!("{} is not a named set reference `@name`", show(v)))
}

// ---------------------------------------------------------------------------------------------
// JSON helpers

/// A compact rendering of a JSON value for error messages, cut at 200 bytes.
fn show(v: &Json) -> String {
    const LIMIT: usize = 200;
    let mut s = v.to_string();
    if s.len() > LIMIT {
        let mut end = LIMIT;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push('…');
    }
    s
}

fn object<'a>(v: &'a Json, what: &str) -> Parse<&'a Obj> {
    v.as_object()
        .ok_or_else(|| format!("{what} {} is not an object", show(v)))
}

/// An object with exactly one key, `{"tag": body}`.
fn tagged(v: &Json) -> Parse<(&str, &Json)> {
    match v.as_object() {
        Some(obj) if obj.len() == 1 => obj
            .iter()
            .next()
            .map(|(k, body)| (k.as_str(), body))
            .ok_or_else(|| format!("{} is empty", show(v))),
        _ => Err(format!("{} is not an object with one key", show(v))),
    }
}

/// Fails on any key not in `allowed`: what the reader does not know it cannot represent.
fn only_keys(obj: &Obj, what: &str, allowed: &[&str]) -> Parse<()> {
    match obj.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(key) => Err(format!(
            "{what} has `{key}` = {}, which is not supported",
            obj.get(key).map(show).unwrap_or_default()
        )),
        None => Ok(()),
    }
}

fn field<'a>(obj: &'a Obj, key: &str, what: &str) -> Parse<&'a Json> {
    obj.get(key).ok_or_else(|| format!("{what} has no `{key}`"))
}

fn string<'a>(v: &'a Json, what: &str) -> Parse<&'a str> {
    v.as_str()
        .ok_or_else(|| format!("{what} {} is not a string", show(v)))
}

fn required_string(obj: &Obj, key: &str, what: &str) -> Parse<String> {
    Ok(string(field(obj, key, what)?, key)?.to_string())
}

fn optional_string(obj: &Obj, key: &str) -> Parse<Option<String>> {
    obj.get(key)
        .map(|v| string(v, key).map(str::to_string))
        .transpose()
}

/// A string or a list of strings (nft prints one flag bare, several as a list).
fn strings<'a>(v: &'a Json, what: &str) -> Parse<Vec<&'a str>> {
    match v {
        Json::String(s) => Ok(vec![s.as_str()]),
        Json::Array(items) => items.iter().map(|i| string(i, what)).collect(),
        _ => Err(format!(
            "{what} {} is not a string or list of strings",
            show(v)
        )),
    }
}

/// A type: `"ipv4_addr"`, `["ipv4_addr", "inet_service"]` or `"ipv4_addr . inet_service"`.
fn type_names<'a>(v: &'a Json, what: &str) -> Parse<Vec<&'a str>> {
    match v {
        Json::String(s) => Ok(s.split(" . ").collect()),
        _ => strings(v, what),
    }
}

fn integer<T: TryFrom<i64>>(v: &Json, what: &str) -> Parse<T> {
    v.as_i64()
        .and_then(|n| T::try_from(n).ok())
        .ok_or_else(|| format!("{what} {} is not an integer in range", show(v)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transaction::{Command, TableId, Transaction};

    // -----------------------------------------------------------------------------------------
    // Unit tests on small documents

    const META: &str = r#"{"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}}"#;

    /// A document holding table `t` of `fam` and the given objects.
    fn doc(fam: &str, objects: &[String]) -> String {
        let mut items = vec![
            META.to_string(),
            format!(r#"{{"table": {{"family": "{fam}", "name": "t", "handle": 1}}}}"#),
        ];
        items.extend(objects.iter().cloned());
        format!(r#"{{"nftables": [{}]}}"#, items.join(", "))
    }

    fn chain_json(fam: &str, name: &str) -> String {
        format!(
            r#"{{"chain": {{"family": "{fam}", "table": "t", "name": "{name}", "handle": 2}}}}"#
        )
    }

    fn rule_json(fam: &str, exprs: &str) -> String {
        format!(
            r#"{{"rule": {{"family": "{fam}", "table": "t", "chain": "c", "handle": 3, "expr": [{exprs}]}}}}"#
        )
    }

    fn set_json(fam: &str, tag: &str, name: &str, rest: &str) -> String {
        format!(
            r#"{{"{tag}": {{"family": "{fam}", "name": "{name}", "table": "t", "handle": 4, {rest}}}}}"#
        )
    }

    /// The statements of the one rule in chain `c` of an `ip` (or `ip6`) table.
    fn stmts(fam: &str, exprs: &str) -> Result<Vec<Stmt>, JsonError> {
        let family = if fam == "ip" {
            IpFamily::IPv4
        } else {
            IpFamily::IPv6
        };
        let json = doc(fam, &[chain_json(fam, "c"), rule_json(fam, exprs)]);
        let table = parse_table(&json, family)?.unwrap();
        Ok(table.chains["c"].rules[0].stmts.clone())
    }

    fn stmt4(expr: &str) -> Stmt {
        let mut s = stmts("ip", expr).unwrap();
        assert_eq!(s.len(), 1);
        s.remove(0)
    }

    /// The error message of a rule that must fail.
    fn rule_error(fam: &str, expr: &str) -> String {
        let err = stmts(fam, expr).unwrap_err();
        assert!(matches!(err, JsonError::Unsupported { .. }), "{err:?}");
        err.to_string()
    }

    fn set4(tag: &str, rest: &str) -> Result<Set, JsonError> {
        let json = doc("ip", &[set_json("ip", tag, "s", rest)]);
        Ok(parse_table(&json, IpFamily::IPv4)?.unwrap().sets["s"].clone())
    }

    fn set_error(tag: &str, rest: &str) -> String {
        set4(tag, rest).unwrap_err().to_string()
    }

    fn matching(left: Expr, negate: bool, right: Operand) -> Stmt {
        Stmt::Match {
            left,
            negate,
            right,
        }
    }

    fn val(v: Value) -> Operand {
        Operand::Value(v)
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn net(s: &str) -> Value {
        Value::Net(s.parse().unwrap())
    }

    #[test]
    fn table_names_of_one_family() {
        let json = format!(
            r#"{{"nftables": [{META},
                {{"table": {{"family": "ip", "name": "svcroute", "handle": 1}}}},
                {{"table": {{"family": "ip6", "name": "svcroute", "handle": 2}}}},
                {{"table": {{"family": "ip", "name": "svcroute-0", "handle": 3}}}},
                {{"table": {{"family": "inet", "name": "filter", "handle": 4}}}}]}}"#
        );
        let names = parse_table_names(&json, IpFamily::IPv4).unwrap();
        assert_eq!(names, ["svcroute", "svcroute-0"]);
        assert_eq!(
            parse_table_names(&json, IpFamily::IPv6).unwrap(),
            ["svcroute"]
        );
        let nameless = r#"{"nftables": [{"table": {"family": "ip"}}]}"#;
        assert!(parse_table_names(nameless, IpFamily::IPv4).is_err());
        assert!(parse_table_names("{}", IpFamily::IPv4).is_err());
    }

    #[test]
    fn tables_and_their_absence() {
        let json = format!(r#"{{"nftables": [{META}]}}"#);
        assert_eq!(parse_table(&json, IpFamily::IPv4).unwrap(), None);
        let json = format!(
            r#"{{"nftables": [{META}, {{"table": {{"family": "ip6", "name": "svcroute", "handle": 1, "comment": "owned"}}}}]}}"#
        );
        let table = parse_table(&json, IpFamily::IPv6).unwrap().unwrap();
        assert_eq!(table.family, IpFamily::IPv6);
        assert_eq!(table.comment.as_deref(), Some("owned"));
        assert!(table.chains.is_empty() && table.sets.is_empty());
        // The wrong family, a non-JSON text, a document without `nftables`.
        let err = parse_table(&json, IpFamily::IPv4).unwrap_err().to_string();
        assert!(err.contains("family `ip6`"), "{err}");
        assert!(matches!(
            parse_table("nope", IpFamily::IPv4),
            Err(JsonError::Syntax(_))
        ));
        assert!(parse_table("{}", IpFamily::IPv4).is_err());
    }

    #[test]
    fn unknown_objects_and_keys_fail() {
        let json = doc(
            "ip",
            &[r#"{"counter": {"family": "ip", "name": "x", "table": "t"}}"#.into()],
        );
        let err = parse_table(&json, IpFamily::IPv4).unwrap_err().to_string();
        assert!(err.contains("unknown object `counter`"), "{err}");
        let json = r#"{"nftables": [{"table": {"family": "ip", "name": "t", "handle": 1, "flags": ["dormant"]}}]}"#;
        assert!(parse_table(json, IpFamily::IPv4).is_err());
        // A chain of another table, a rule before its chain.
        let json = doc(
            "ip",
            &[r#"{"chain": {"family": "ip", "table": "other", "name": "c", "handle": 2}}"#.into()],
        );
        let err = parse_table(&json, IpFamily::IPv4).unwrap_err().to_string();
        assert!(
            err.contains("chain c") && err.contains("table other"),
            "{err}"
        );
        let json = doc("ip", &[rule_json("ip", r#"{"accept": null}"#)]);
        let err = parse_table(&json, IpFamily::IPv4).unwrap_err().to_string();
        assert!(err.contains("chain `c`"), "{err}");
    }

    #[test]
    fn chains() {
        let json = doc(
            "ip",
            &[
                r#"{"chain": {"family": "ip", "table": "t", "name": "filter-input", "handle": 14, "type": "filter", "hook": "input", "prio": -1, "policy": "accept"}}"#.into(),
                r#"{"chain": {"family": "ip", "table": "t", "name": "nat-postrouting", "handle": 15, "type": "nat", "hook": "postrouting", "prio": 100, "policy": "accept", "comment": "masq"}}"#.into(),
                r#"{"chain": {"family": "ip", "table": "t", "name": "svc-A", "handle": 16, "comment": "ns/web:http"}}"#.into(),
            ],
        );
        let table = parse_table(&json, IpFamily::IPv4).unwrap().unwrap();
        assert_eq!(
            table.chains["filter-input"].hook,
            Some(BaseHook {
                kind: ChainType::Filter,
                hook: Hook::Input,
                priority: -1
            })
        );
        let post = &table.chains["nat-postrouting"];
        assert_eq!(
            post.hook,
            Some(BaseHook {
                kind: ChainType::Nat,
                hook: Hook::Postrouting,
                priority: 100
            })
        );
        assert_eq!(post.comment.as_deref(), Some("masq"));
        let svc = &table.chains["svc-A"];
        assert_eq!(
            (svc.hook, svc.comment.as_deref()),
            (None, Some("ns/web:http"))
        );

        let drop_policy = doc(
            "ip",
            &[r#"{"chain": {"family": "ip", "table": "t", "name": "in", "handle": 14, "type": "filter", "hook": "input", "prio": 0, "policy": "drop"}}"#.into()],
        );
        let err = parse_table(&drop_policy, IpFamily::IPv4)
            .unwrap_err()
            .to_string();
        assert!(err.contains("chain in") && err.contains("policy"), "{err}");
        let route = doc(
            "ip",
            &[r#"{"chain": {"family": "ip", "table": "t", "name": "r", "handle": 14, "type": "route", "hook": "output", "prio": 0, "policy": "accept"}}"#.into()],
        );
        assert!(parse_table(&route, IpFamily::IPv4).is_err());
    }

    #[test]
    fn rules_keep_order_and_comments() {
        let json = doc(
            "ip",
            &[
                chain_json("ip", "c"),
                rule_json("ip", r#"{"jump": {"target": "a"}}"#),
                r#"{"rule": {"family": "ip", "table": "t", "chain": "c", "handle": 9, "comment": "ns/web:http", "expr": [{"goto": {"target": "b"}}]}}"#.into(),
            ],
        );
        let table = parse_table(&json, IpFamily::IPv4).unwrap().unwrap();
        assert_eq!(
            table.chains["c"].rules,
            vec![
                Rule::new(vec![Stmt::Verdict(Verdict::Jump("a".into()))]),
                Rule::new(vec![Stmt::Verdict(Verdict::Goto("b".into()))])
                    .with_comment("ns/web:http".into()),
            ]
        );
    }

    #[test]
    fn conntrack_and_fib_matches() {
        let new = matching(Expr::CtState, false, val(Value::New));
        assert_eq!(
            stmt4(r#"{"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": "new"}}"#),
            new
        );
        assert_eq!(
            stmt4(r#"{"match": {"op": "==", "left": {"ct": {"key": "state"}}, "right": ["new"]}}"#),
            new
        );
        assert_eq!(
            stmt4(r#"{"match": {"op": "in", "left": {"ct": {"key": "status"}}, "right": "dnat"}}"#),
            matching(Expr::CtStatus, false, val(Value::Dnat))
        );
        assert_eq!(
            stmt4(
                r#"{"match": {"op": "==", "left": {"fib": {"result": "type", "flags": ["daddr"]}}, "right": "local"}}"#
            ),
            matching(Expr::FibDaddrType, false, val(Value::Local))
        );
        assert_eq!(
            stmt4(
                r#"{"match": {"op": "!=", "left": {"fib": {"result": "type", "flags": ["saddr"]}}, "right": "local"}}"#
            ),
            matching(Expr::FibSaddrType, true, val(Value::Local))
        );
        let err = rule_error(
            "ip",
            r#"{"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": ["established", "new"]}}"#,
        );
        assert!(err.contains("rule 0 (handle 3) of chain c"), "{err}");
        assert!(err.contains("statement 0"), "{err}");
        rule_error(
            "ip",
            r#"{"match": {"op": "==", "left": {"ct": {"key": "mark"}}, "right": 1}}"#,
        );
        rule_error(
            "ip",
            r#"{"match": {"op": "==", "left": {"fib": {"result": "oif", "flags": ["daddr"]}}, "right": "lo"}}"#,
        );
    }

    #[test]
    fn address_port_and_mark_matches() {
        let daddr = |right| {
            format!(
                r#"{{"match": {{"op": "==", "left": {{"payload": {{"protocol": "ip", "field": "daddr"}}}}, "right": {right}}}}}"#
            )
        };
        assert_eq!(
            stmt4(&daddr(r#""10.96.0.10""#)),
            matching(Expr::Daddr, false, val(Value::Addr(ip("10.96.0.10"))))
        );
        assert_eq!(
            stmt4(&daddr(r#"{"prefix": {"addr": "10.96.0.0", "len": 12}}"#)),
            matching(Expr::Daddr, false, val(net("10.96.0.0/12")))
        );
        assert_eq!(
            stmt4(&daddr(r#""@cluster-ips""#)),
            matching(Expr::Daddr, false, Operand::Set("cluster-ips".into()))
        );
        assert_eq!(
            stmt4(
                r#"{"match": {"op": "!=", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": "@pod-cidrs"}}"#
            ),
            matching(Expr::Saddr, true, Operand::Set("pod-cidrs".into()))
        );
        assert_eq!(
            stmt4(
                r#"{"match": {"op": "==", "left": {"payload": {"protocol": "th", "field": "dport"}}, "right": 80}}"#
            ),
            matching(Expr::ThDport, false, val(Value::Port(80)))
        );
        assert_eq!(
            stmt4(
                r#"{"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": 443}}"#
            ),
            matching(Expr::TcpDport, false, val(Value::Port(443)))
        );
        assert_eq!(
            stmt4(
                r#"{"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": "tcp"}}"#
            ),
            matching(Expr::L4Proto, false, val(Value::Proto(Protocol::Tcp)))
        );
        assert_eq!(
            stmt4(
                r#"{"match": {"op": "==", "left": {"&": [{"meta": {"key": "mark"}}, 16384]}, "right": 0}}"#
            ),
            matching(Expr::MarkAnd(16384), false, val(Value::Int(0)))
        );
        assert_eq!(
            stmt4(
                r#"{"match": {"op": "==", "left": {"concat": [{"payload": {"protocol": "ip", "field": "saddr"}}, {"payload": {"protocol": "ip", "field": "daddr"}}]}, "right": "@hairpin"}}"#
            ),
            matching(
                Expr::Concat(vec![Expr::Saddr, Expr::Daddr]),
                false,
                Operand::Set("hairpin".into())
            )
        );
        let v6 = stmts(
            "ip6",
            r#"{"match": {"op": "!=", "left": {"payload": {"protocol": "ip6", "field": "saddr"}}, "right": {"prefix": {"addr": "fd00::", "len": 8}}}}"#,
        )
        .unwrap();
        assert_eq!(v6, vec![matching(Expr::Saddr, true, val(net("fd00::/8")))]);

        // Wrong family payload and address, unsupported operators and values.
        let err = rule_error(
            "ip",
            r#"{"match": {"op": "==", "left": {"payload": {"protocol": "ip6", "field": "daddr"}}, "right": "fd00::1"}}"#,
        );
        assert!(
            err.contains("payload `ip6 daddr` in a table of family `ip`"),
            "{err}"
        );
        rule_error("ip", &daddr(r#""fd00::1""#));
        rule_error("ip", &daddr(r#"{"set": ["10.0.0.1", "10.0.0.2"]}"#));
        rule_error("ip", &daddr(r#"{"range": ["10.0.0.1", "10.0.0.2"]}"#));
        rule_error(
            "ip",
            r#"{"match": {"op": "<", "left": {"payload": {"protocol": "th", "field": "dport"}}, "right": 80}}"#,
        );
        rule_error(
            "ip",
            r#"{"match": {"op": "==", "left": {"payload": {"protocol": "udp", "field": "dport"}}, "right": 53}}"#,
        );
        rule_error(
            "ip",
            r#"{"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": "icmp"}}"#,
        );
        rule_error(
            "ip",
            r#"{"match": {"op": "==", "left": {"meta": {"key": "mark"}}, "right": 1}}"#,
        );
        rule_error(
            "ip",
            r#"{"match": {"op": "==", "left": {"payload": {"protocol": "th", "field": "dport"}}, "right": 70000}}"#,
        );
    }

    #[test]
    fn lookups_and_nat() {
        assert_eq!(
            stmt4(
                r#"{"vmap": {"key": {"concat": [{"payload": {"protocol": "ip", "field": "daddr"}}, {"meta": {"key": "l4proto"}}, {"payload": {"protocol": "th", "field": "dport"}}]}, "data": "@service-ips"}}"#
            ),
            Stmt::Vmap {
                key: Expr::Concat(vec![Expr::Daddr, Expr::L4Proto, Expr::ThDport]),
                map: "service-ips".into()
            }
        );
        assert_eq!(
            stmt4(
                r#"{"vmap": {"key": {"numgen": {"mode": "random", "mod": 2, "offset": 0}}, "data": "@svc-C-ep"}}"#
            ),
            Stmt::Vmap {
                key: Expr::numgen(2),
                map: "svc-C-ep".into()
            }
        );
        assert_eq!(
            stmt4(
                r#"{"dnat": {"family": "ip", "addr": {"map": {"key": {"numgen": {"mode": "random", "mod": 3, "offset": 0}}, "data": "@svc-A-ep"}}}}"#
            ),
            Stmt::DnatNumgen {
                modulus: 3,
                map: "svc-A-ep".into()
            }
        );
        assert_eq!(
            stmt4(r#"{"dnat": {"addr": "10.244.1.2", "port": 8080}}"#),
            Stmt::DnatTo("10.244.1.2:8080".parse().unwrap())
        );
        assert_eq!(
            stmts(
                "ip6",
                r#"{"dnat": {"family": "ip6", "addr": "fd00::1", "port": 80}}"#
            )
            .unwrap(),
            vec![Stmt::DnatTo("[fd00::1]:80".parse().unwrap())]
        );
        assert_eq!(
            stmt4(
                r#"{"set": {"op": "update", "elem": {"payload": {"protocol": "ip", "field": "saddr"}}, "set": "@sep-B-aff"}}"#
            ),
            Stmt::Update {
                set: "sep-B-aff".into(),
                key: Expr::Saddr
            }
        );
        assert_eq!(
            stmt4(
                r#"{"set": {"op": "update", "elem": {"concat": [{"payload": {"protocol": "ip", "field": "saddr"}}, {"numgen": {"mode": "random", "mod": 1, "offset": 12345}}]}, "set": "@aff-B"}}"#
            ),
            Stmt::Update {
                set: "aff-B".into(),
                key: crate::render::affinity_key(12345),
            }
        );
        assert_eq!(
            stmt4(
                r#"{"vmap": {"key": {"numgen": {"mode": "random", "mod": 2, "offset": 1}}, "data": "@m"}}"#
            ),
            Stmt::Vmap {
                key: Expr::Numgen {
                    modulus: 2,
                    offset: 1
                },
                map: "m".into(),
            }
        );
        rule_error(
            "ip",
            r#"{"vmap": {"key": {"numgen": {"mode": "random", "mod": 1, "offset": -5}}, "data": "@m"}}"#,
        );
        rule_error(
            "ip",
            r#"{"vmap": {"key": {"numgen": {"mode": "inc", "mod": 2, "offset": 0}}, "data": "@m"}}"#,
        );
        rule_error("ip", r#"{"dnat": {"addr": "10.244.1.2"}}"#);
        rule_error(
            "ip",
            r#"{"dnat": {"addr": "10.244.1.2", "port": 80, "flags": "persistent"}}"#,
        );
        rule_error(
            "ip",
            r#"{"dnat": {"family": "ip6", "addr": "fd00::1", "port": 80}}"#,
        );
        rule_error(
            "ip",
            r#"{"dnat": {"addr": {"map": {"key": {"payload": {"protocol": "ip", "field": "saddr"}}, "data": "@m"}}}}"#,
        );
        rule_error(
            "ip",
            r#"{"set": {"op": "add", "elem": {"payload": {"protocol": "ip", "field": "saddr"}}, "set": "@s"}}"#,
        );
    }

    #[test]
    fn marks_masquerade_reject_and_verdicts() {
        assert_eq!(
            stmt4(
                r#"{"mangle": {"key": {"meta": {"key": "mark"}}, "value": {"|": [{"meta": {"key": "mark"}}, 16384]}}}"#
            ),
            Stmt::Mark(MarkOp::Or(16384))
        );
        assert_eq!(
            stmt4(
                r#"{"mangle": {"key": {"meta": {"key": "mark"}}, "value": {"^": [{"meta": {"key": "mark"}}, 16384]}}}"#
            ),
            Stmt::Mark(MarkOp::Xor(16384))
        );
        assert_eq!(
            stmt4(r#"{"masquerade": {"flags": "fully-random"}}"#),
            Stmt::Masquerade
        );
        assert_eq!(
            stmt4(r#"{"masquerade": {"flags": ["fully-random"]}}"#),
            Stmt::Masquerade
        );
        assert_eq!(
            stmt4(r#"{"reject": {"type": "icmp", "expr": "port-unreachable"}}"#),
            Stmt::Reject
        );
        assert_eq!(stmt4(r#"{"reject": null}"#), Stmt::Reject);
        assert_eq!(
            stmts(
                "ip6",
                r#"{"reject": {"type": "icmpv6", "expr": "port-unreachable"}}"#
            )
            .unwrap(),
            vec![Stmt::Reject]
        );
        for (json, verdict) in [
            (r#"{"accept": null}"#, Verdict::Accept),
            (r#"{"drop": null}"#, Verdict::Drop),
            (r#"{"return": null}"#, Verdict::Return),
            (r#"{"jump": {"target": "x"}}"#, Verdict::Jump("x".into())),
            (r#"{"goto": {"target": "y"}}"#, Verdict::Goto("y".into())),
        ] {
            assert_eq!(stmt4(json), Stmt::Verdict(verdict));
        }
        // Several statements in order.
        assert_eq!(
            stmts(
                "ip",
                r#"{"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": "udp"}}, {"drop": null}"#
            )
            .unwrap(),
            vec![
                matching(Expr::L4Proto, false, val(Value::Proto(Protocol::Udp))),
                Stmt::Verdict(Verdict::Drop)
            ]
        );

        for bad in [
            r#"{"mangle": {"key": {"meta": {"key": "mark"}}, "value": 1}}"#,
            r#"{"mangle": {"key": {"meta": {"key": "mark"}}, "value": {"&": [{"meta": {"key": "mark"}}, 1]}}}"#,
            r#"{"mangle": {"key": {"ct": {"key": "mark"}}, "value": {"|": [{"meta": {"key": "mark"}}, 1]}}}"#,
            r#"{"masquerade": null}"#,
            r#"{"masquerade": {"flags": ["random"]}}"#,
            r#"{"masquerade": {"flags": "fully-random", "port": 1024}}"#,
            r#"{"reject": {"type": "tcp reset"}}"#,
            r#"{"reject": {"type": "icmpx", "expr": "port-unreachable"}}"#,
            r#"{"reject": {"type": "icmp", "expr": "host-unreachable"}}"#,
            r#"{"reject": {"type": "icmpv6", "expr": "port-unreachable"}}"#,
            r#"{"continue": null}"#,
            r#"{"drop": {"target": "x"}}"#,
            r#"{"jump": {"target": "x", "extra": 1}}"#,
        ] {
            rule_error("ip", bad);
        }
    }

    #[test]
    fn unknown_statements_fail_loudly() {
        let err = rule_error(
            "ip",
            r#"{"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": "tcp"}}, {"counter": {"packets": 0, "bytes": 0}}, {"accept": null}"#,
        );
        assert!(err.contains("rule 0 (handle 3) of chain c"), "{err}");
        assert!(
            err.contains("statement 1: unknown statement `counter`"),
            "{err}"
        );
        let err = rule_error("ip", r#"{"log": null}"#);
        assert!(err.contains("unknown statement `log`"), "{err}");
        let err = rule_error(
            "ip",
            r#"{"match": {"op": "==", "left": {"rt": {"key": "nexthop"}}, "right": "10.0.0.1"}}"#,
        );
        assert!(err.contains("unknown expression `rt`"), "{err}");
        rule_error("ip", r#"{"notrack": null}"#);
        rule_error("ip", r#"{"accept": null, "drop": null}"#);
    }

    #[test]
    fn plain_interval_and_concatenated_sets() {
        let s = set4(
            "set",
            r#""type": "ipv4_addr", "comment": "cluster", "flags": ["interval"], "elem": [{"elem": {"val": "10.1.2.3", "comment": "host"}}, {"prefix": {"addr": "10.96.0.0", "len": 12}}, {"elem": {"val": {"prefix": {"addr": "10.0.0.0", "len": 8}}, "comment": "pods"}}]"#,
        )
        .unwrap();
        assert_eq!(
            s.decl,
            SetDecl {
                kind: SetKind::Set,
                key: vec![KeyType::Addr],
                interval: true,
                timeout: None,
                size: None,
                protocol: None,
                comment: Some("cluster".into()),
            }
        );
        let elem = |comment: Option<&str>| Element {
            value: None,
            comment: comment.map(String::from),
        };
        assert_eq!(
            s.elements,
            BTreeMap::from([
                (ElemKey::from([net("10.1.2.3/32")]), elem(Some("host"))),
                (ElemKey::from([net("10.96.0.0/12")]), elem(None)),
                (ElemKey::from([net("10.0.0.0/8")]), elem(Some("pods"))),
            ])
        );

        let s = set4(
            "set",
            r#""type": ["ipv4_addr", "ipv4_addr"], "elem": [{"concat": ["10.244.1.2", "10.244.1.2"]}]"#,
        )
        .unwrap();
        assert_eq!(s.decl.key, vec![KeyType::Addr, KeyType::Addr]);
        let a = Value::Addr(ip("10.244.1.2"));
        assert_eq!(
            s.elements,
            BTreeMap::from([(ElemKey::from([a, a]), elem(None))])
        );

        let s = set4(
            "set",
            r#""type": ["inet_proto", "inet_service"], "elem": [{"concat": ["tcp", 31000]}, {"concat": ["sctp", 5]}]"#,
        )
        .unwrap();
        assert_eq!(
            s.elements.keys().copied().collect::<Vec<_>>(),
            vec![
                ElemKey::from([Value::Proto(Protocol::Tcp), Value::Port(31000)]),
                ElemKey::from([Value::Proto(Protocol::Sctp), Value::Port(5)]),
            ]
        );

        // A plain address outside interval sets stays an address; ip6 prefixes.
        let json = doc(
            "ip6",
            &[
                set_json(
                    "ip6",
                    "set",
                    "s",
                    r#""type": "ipv6_addr", "elem": ["fd00::1"]"#,
                ),
                set_json(
                    "ip6",
                    "set",
                    "i",
                    r#""type": "ipv6_addr", "flags": "interval", "elem": ["fd00::1", {"prefix": {"addr": "fd01::", "len": 64}}]"#,
                ),
            ],
        );
        let table = parse_table(&json, IpFamily::IPv6).unwrap().unwrap();
        assert_eq!(
            table.sets["s"].elements.keys().next(),
            Some(&ElemKey::from([Value::Addr(ip("fd00::1"))]))
        );
        assert_eq!(
            table.sets["i"].elements.keys().copied().collect::<Vec<_>>(),
            vec![
                ElemKey::from([net("fd00::1/128")]),
                ElemKey::from([net("fd01::/64")])
            ]
        );
    }

    #[test]
    fn dynamic_sets_ignore_their_elements() {
        let s = set4(
            "set",
            r#""type": ["ipv4_addr", "integer"], "size": 1048576, "flags": ["timeout"], "timeout": 10800, "elem": [{"elem": {"val": {"concat": ["10.0.0.1", 12345]}, "expires": 10799}}]"#,
        )
        .unwrap();
        assert_eq!(
            s.decl,
            SetDecl {
                kind: SetKind::Set,
                key: vec![KeyType::Addr, KeyType::Slot],
                interval: false,
                timeout: Some(10800),
                size: Some(1048576),
                protocol: None,
                comment: None,
            }
        );
        assert!(s.elements.is_empty());
        let s = set4(
            "set",
            r#""type": "ipv4_addr", "flags": ["dynamic", "timeout"], "timeout": 60"#,
        )
        .unwrap();
        assert_eq!(s.decl.timeout, Some(60));
        assert!(set4("set", r#""type": "ipv4_addr", "flags": ["timeout"]"#).is_err());
        assert!(set4("set", r#""type": "ipv4_addr", "timeout": 60"#).is_err());
    }

    #[test]
    fn verdict_and_endpoint_maps() {
        let m = set4(
            "map",
            r#""type": ["ipv4_addr", "inet_proto", "inet_service"], "map": "verdict", "comment": "frontends", "elem": [[{"concat": ["1.2.3.4", "tcp", 80]}, {"goto": {"target": "fw-A"}}], [{"elem": {"val": {"concat": ["1.2.3.5", "udp", 53]}, "comment": "ns/dns:dns"}}, {"jump": {"target": "svc-B"}}], [{"concat": ["1.2.3.6", "tcp", 1]}, {"drop": null}], [{"concat": ["1.2.3.7", "tcp", 1]}, {"accept": null}], [{"concat": ["1.2.3.8", "tcp", 1]}, {"return": null}]]"#,
        )
        .unwrap();
        assert_eq!(m.decl.kind, SetKind::VerdictMap);
        assert_eq!(m.decl.comment.as_deref(), Some("frontends"));
        let key = |a: &str, p, port| {
            ElemKey::new(&[Value::Addr(ip(a)), Value::Proto(p), Value::Port(port)]).unwrap()
        };
        let verdict = |v| Element {
            value: Some(ElemValue::Verdict(v)),
            comment: None,
        };
        assert_eq!(
            m.elements,
            BTreeMap::from([
                (
                    key("1.2.3.4", Protocol::Tcp, 80),
                    verdict(Verdict::Goto("fw-A".into()))
                ),
                (
                    key("1.2.3.5", Protocol::Udp, 53),
                    Element {
                        value: Some(ElemValue::Verdict(Verdict::Jump("svc-B".into()))),
                        comment: Some("ns/dns:dns".into()),
                    }
                ),
                (key("1.2.3.6", Protocol::Tcp, 1), verdict(Verdict::Drop)),
                (key("1.2.3.7", Protocol::Tcp, 1), verdict(Verdict::Accept)),
                (key("1.2.3.8", Protocol::Tcp, 1), verdict(Verdict::Return)),
            ])
        );

        let m = set4(
            "map",
            r#""type": "integer", "map": "ipv4_addr . inet_service", "elem": [[0, {"concat": ["10.244.1.2", 8080]}], [{"elem": {"val": 1, "comment": "c"}}, {"concat": ["10.244.1.3", 8081]}]]"#,
        )
        .unwrap();
        assert_eq!(
            (m.decl.kind, m.decl.key.as_slice()),
            (SetKind::EndpointMap, [KeyType::Slot].as_slice())
        );
        assert_eq!(
            m.elements,
            BTreeMap::from([
                (
                    ElemKey::from([Value::Int(0)]),
                    Element {
                        value: Some(ElemValue::Endpoint("10.244.1.2:8080".parse().unwrap())),
                        comment: None
                    }
                ),
                (
                    ElemKey::from([Value::Int(1)]),
                    Element {
                        value: Some(ElemValue::Endpoint("10.244.1.3:8081".parse().unwrap())),
                        comment: Some("c".into())
                    }
                ),
            ])
        );

        let json = doc(
            "ip6",
            &[set_json(
                "ip6",
                "map",
                "ep",
                r#""type": "integer", "map": "ipv6_addr . inet_service", "elem": [[0, {"concat": ["fd00::2", 8080]}]]"#,
            )],
        );
        let table = parse_table(&json, IpFamily::IPv6).unwrap().unwrap();
        assert_eq!(
            table.sets["ep"].elements[&ElemKey::from([Value::Int(0)])].value,
            Some(ElemValue::Endpoint("[fd00::2]:8080".parse().unwrap()))
        );
    }

    #[test]
    fn unsupported_sets_fail() {
        let err = set_error("set", r#""type": "ether_addr""#);
        assert!(err.contains("set s") && err.contains("ether_addr"), "{err}");
        let err = set_error("set", r#""type": "ipv6_addr""#);
        assert!(err.contains("ipv6_addr"), "{err}");
        let err = set_error(
            "set",
            r#""type": "ipv4_addr", "flags": ["interval"], "elem": [{"range": ["10.0.0.1", "10.0.0.9"]}]"#,
        );
        assert!(err.contains("set s") && err.contains("element 0"), "{err}");
        let err = set_error("set", r#""type": "ipv4_addr", "flags": ["constant"]"#);
        assert!(err.contains("`constant`"), "{err}");
        let err = set_error("map", r#""type": "integer", "map": "mark""#);
        assert!(err.contains("map s") && err.contains("mark"), "{err}");
        let err = set_error(
            "set",
            r#""type": "ipv4_addr", "elem": [{"elem": {"val": "10.0.0.1", "counter": {"packets": 0, "bytes": 0}}}]"#,
        );
        assert!(err.contains("counter"), "{err}");
        let err = set_error("set", r#""type": "ipv4_addr", "stmt": [{"counter": null}]"#);
        assert!(err.contains("stmt"), "{err}");
        for bad in [
            // A prefix outside an interval set, an address of the other family.
            r#""type": "ipv4_addr", "elem": [{"prefix": {"addr": "10.0.0.0", "len": 8}}]"#,
            r#""type": "ipv4_addr", "elem": ["fd00::1"]"#,
            // Wrong concatenation arity, an unknown protocol, a port out of range.
            r#""type": ["inet_proto", "inet_service"], "elem": [{"concat": ["tcp"]}]"#,
            r#""type": ["inet_proto", "inet_service"], "elem": [{"concat": [47, 1]}]"#,
            r#""type": "inet_service", "elem": [65536]"#,
            r#""type": "ipv4_addr", "map": "verdict""#,
            r#""type": "ipv4_addr", "gc-interval": 10"#,
        ] {
            assert!(set4("set", bad).is_err(), "{bad}");
        }
        for bad in [
            r#""type": "integer""#,
            r#""type": "integer", "map": "ipv6_addr . inet_service""#,
            r#""type": "integer", "map": "verdict", "elem": [0]"#,
            r#""type": "integer", "map": "verdict", "elem": [[0, {"continue": null}]]"#,
            r#""type": "integer", "map": "ipv4_addr . inet_service", "elem": [[0, "10.0.0.1"]]"#,
        ] {
            assert!(set4("map", bad).is_err(), "{bad}");
        }
    }

    // -----------------------------------------------------------------------------------------
    // Round trip through the kernel: text written by `Transaction`, JSON read by `parse_table`

    const ROUND_TRIP_TABLE: &str = "svcroute-jsontest";

    /// A table using every statement, expression, value and set kind svcroute renders, valid
    /// for the kernel: DNAT only in chains reached from nat prerouting/output, masquerade from
    /// nat postrouting, reject from filter input.
    fn sample_table(family: IpFamily) -> Table {
        let v4 = family == IpFamily::IPv4;
        let a = |s4: &str, s6: &str| -> IpAddr { if v4 { ip(s4) } else { ip(s6) } };
        let n = |s4: &str, s6: &str| -> Value { if v4 { net(s4) } else { net(s6) } };
        let base = |kind, hook, priority| {
            Some(BaseHook {
                kind,
                hook,
                priority,
            })
        };
        let set = |key: KeyType| {
            Operand::Set(match key {
                KeyType::Addr => "cluster-ips".into(),
                _ => "pod-cidrs".into(),
            })
        };
        let jump = |c: &str| Stmt::Verdict(Verdict::Jump(c.into()));
        let tcp = matching(Expr::L4Proto, false, val(Value::Proto(Protocol::Tcp)));

        let mut t = Table::new(family);
        t.comment = Some("svcroute round-trip test".into());
        let mut chain = |name: &str, hook, comment: Option<&str>, rules: Vec<Rule>| {
            t.chains.insert(
                name.into(),
                Chain {
                    hook,
                    comment: comment.map(String::from),
                    rules,
                },
            );
        };
        chain(
            "filter-input",
            base(ChainType::Filter, Hook::Input, -1),
            Some("filter input"),
            vec![
                Rule::new(vec![
                    matching(Expr::CtState, false, val(Value::New)),
                    matching(Expr::Daddr, false, set(KeyType::Addr)),
                    matching(Expr::Saddr, true, set(KeyType::Proto)),
                    matching(
                        Expr::Daddr,
                        false,
                        val(Value::Addr(a("10.96.0.10", "fd00::10"))),
                    ),
                    matching(Expr::Saddr, true, val(n("10.0.0.0/8", "fd00::/8"))),
                    matching(Expr::TcpDport, false, val(Value::Port(81))),
                    Stmt::Reject,
                ])
                .with_comment("ns/web:http has no endpoints".into()),
                Rule::new(vec![
                    matching(Expr::FibDaddrType, false, val(Value::Local)),
                    matching(Expr::FibSaddrType, true, val(Value::Local)),
                    matching(Expr::ThDport, false, val(Value::Port(31000))),
                    Stmt::Verdict(Verdict::Drop),
                ]),
                Rule::new(vec![
                    matching(Expr::CtStatus, false, val(Value::Dnat)),
                    Stmt::Verdict(Verdict::Accept),
                ]),
            ],
        );
        chain(
            "nat-prerouting",
            base(ChainType::Nat, Hook::Prerouting, -100),
            None,
            vec![Rule::new(vec![jump("services")])],
        );
        chain(
            "nat-output",
            base(ChainType::Nat, Hook::Output, -100),
            None,
            vec![Rule::new(vec![jump("services")])],
        );
        chain(
            "nat-postrouting",
            base(ChainType::Nat, Hook::Postrouting, 100),
            None,
            vec![Rule::new(vec![jump("masquerading")])],
        );
        chain(
            "masquerading",
            None,
            None,
            vec![
                Rule::new(vec![
                    matching(Expr::MarkAnd(0x4000), false, val(Value::Int(0))),
                    Stmt::Verdict(Verdict::Return),
                ]),
                Rule::new(vec![Stmt::Mark(MarkOp::Xor(0x4000))]),
                Rule::new(vec![Stmt::Masquerade]),
            ],
        );
        chain(
            "mark-for-masquerade",
            None,
            None,
            vec![Rule::new(vec![Stmt::Mark(MarkOp::Or(0x4000))])],
        );
        chain(
            "services",
            None,
            None,
            vec![
                Rule::new(vec![Stmt::Vmap {
                    key: Expr::Concat(vec![Expr::Daddr, Expr::L4Proto, Expr::ThDport]),
                    map: "service-ips".into(),
                }]),
                Rule::new(vec![
                    matching(Expr::FibDaddrType, false, val(Value::Local)),
                    Stmt::Vmap {
                        key: Expr::Concat(vec![Expr::L4Proto, Expr::ThDport]),
                        map: "service-nodeports".into(),
                    },
                ]),
            ],
        );
        chain(
            "svc-AAAA",
            None,
            Some("ns/web:http"),
            vec![
                Rule::new(vec![
                    matching(Expr::Saddr, true, set(KeyType::Proto)),
                    jump("mark-for-masquerade"),
                ]),
                Rule::new(vec![Stmt::Vmap {
                    key: Expr::numgen(2),
                    map: "svc-AAAA-vm".into(),
                }]),
            ],
        );
        chain(
            "sep-AAAA",
            None,
            None,
            vec![
                Rule::new(vec![
                    Stmt::Update {
                        set: "aff-AAAA".into(),
                        key: crate::render::affinity_key(12345),
                    },
                    tcp.clone(),
                    Stmt::DnatTo(SocketAddr::new(
                        a("10.244.1.2", "fd00::1"),
                        if v4 { 8080 } else { 80 },
                    )),
                ])
                .with_comment("ns/web:http endpoint".into()),
            ],
        );
        chain(
            "svc-BBBB",
            None,
            None,
            vec![
                Rule::new(vec![
                    matching(
                        Expr::Concat(vec![Expr::Saddr, Expr::Daddr]),
                        false,
                        Operand::Set("hairpin".into()),
                    ),
                    jump("mark-for-masquerade"),
                ]),
                Rule::new(vec![
                    matching(
                        crate::render::affinity_key(0x7fff_ffff),
                        false,
                        Operand::Set("aff-AAAA".into()),
                    ),
                    Stmt::Verdict(Verdict::Goto("sep-AAAA".into())),
                ]),
                Rule::new(vec![
                    tcp,
                    Stmt::DnatNumgen {
                        modulus: 2,
                        map: "svc-BBBB-ep".into(),
                    },
                ]),
            ],
        );
        chain(
            "fw-CCCC",
            None,
            None,
            vec![Rule::new(vec![Stmt::Verdict(Verdict::Drop)])],
        );

        let decl = |kind, key: Vec<KeyType>, interval, timeout, comment: Option<&str>| SetDecl {
            kind,
            key,
            interval,
            timeout,
            size: None,
            protocol: None,
            comment: comment.map(String::from),
        };
        let plain = |comment: Option<&str>| Element {
            value: None,
            comment: comment.map(String::from),
        };
        let goes = |v: Verdict, comment: Option<&str>| Element {
            value: Some(ElemValue::Verdict(v)),
            comment: comment.map(String::from),
        };
        let ep = |s4: &str, s6: &str, port, comment: Option<&str>| Element {
            value: Some(ElemValue::Endpoint(SocketAddr::new(a(s4, s6), port))),
            comment: comment.map(String::from),
        };
        let tcp = Value::Proto(Protocol::Tcp);
        let udp = Value::Proto(Protocol::Udp);
        let sctp = Value::Proto(Protocol::Sctp);
        let addr = |s4: &str, s6: &str| Value::Addr(a(s4, s6));
        let mut set = |name: &str, decl: SetDecl, elements: Vec<(ElemKey, Element)>| {
            t.sets.insert(
                name.into(),
                Set {
                    decl,
                    elements: elements.into_iter().collect(),
                },
            );
        };
        set(
            "cluster-ips",
            decl(
                SetKind::Set,
                vec![KeyType::Addr],
                true,
                None,
                Some("ClusterIPs"),
            ),
            vec![
                (
                    ElemKey::from([n("10.96.0.10/32", "fd00::10/128")]),
                    plain(Some("ns/web:http cluster IP")),
                ),
                (
                    ElemKey::from([n("10.96.1.0/24", "fd00:1::/64")]),
                    plain(None),
                ),
            ],
        );
        set(
            "pod-cidrs",
            decl(SetKind::Set, vec![KeyType::Addr], true, None, None),
            vec![(
                ElemKey::from([n("10.244.0.0/16", "fd01::/48")]),
                plain(None),
            )],
        );
        set(
            "hairpin",
            decl(
                SetKind::Set,
                vec![KeyType::Addr, KeyType::Addr],
                false,
                None,
                None,
            ),
            vec![(
                ElemKey::from([addr("10.244.1.2", "fd01::2"), addr("10.244.1.2", "fd01::2")]),
                plain(Some("sep-AAAA")),
            )],
        );
        set(
            "aff-AAAA",
            SetDecl {
                size: Some(1 << 20),
                ..decl(
                    SetKind::Set,
                    vec![KeyType::Addr, KeyType::Slot],
                    false,
                    Some(10800),
                    None,
                )
            },
            Vec::new(),
        );
        set(
            "service-ips",
            decl(
                SetKind::VerdictMap,
                vec![KeyType::Addr, KeyType::Proto, KeyType::Service],
                false,
                None,
                Some("frontends"),
            ),
            vec![
                (
                    ElemKey::new(&[addr("10.96.0.10", "fd00::10"), tcp, Value::Port(80)]).unwrap(),
                    goes(
                        Verdict::Goto("svc-AAAA".into()),
                        Some("ns/web:http cluster IP"),
                    ),
                ),
                (
                    ElemKey::new(&[addr("10.96.0.11", "fd00::11"), udp, Value::Port(53)]).unwrap(),
                    goes(Verdict::Jump("svc-BBBB".into()), None),
                ),
                (
                    ElemKey::new(&[addr("10.96.0.12", "fd00::12"), sctp, Value::Port(9)]).unwrap(),
                    goes(Verdict::Goto("fw-CCCC".into()), None),
                ),
                (
                    ElemKey::new(&[addr("10.96.0.13", "fd00::13"), tcp, Value::Port(1)]).unwrap(),
                    goes(Verdict::Drop, None),
                ),
                (
                    ElemKey::new(&[addr("10.96.0.14", "fd00::14"), tcp, Value::Port(2)]).unwrap(),
                    goes(Verdict::Accept, None),
                ),
                (
                    ElemKey::new(&[addr("10.96.0.15", "fd00::15"), tcp, Value::Port(3)]).unwrap(),
                    goes(Verdict::Return, None),
                ),
            ],
        );
        set(
            "service-nodeports",
            decl(
                SetKind::VerdictMap,
                vec![KeyType::Proto, KeyType::Service],
                false,
                None,
                None,
            ),
            vec![(
                ElemKey::from([tcp, Value::Port(31000)]),
                goes(Verdict::Goto("svc-AAAA".into()), None),
            )],
        );
        set(
            "svc-AAAA-vm",
            decl(SetKind::VerdictMap, vec![KeyType::Slot], false, None, None),
            vec![
                (
                    ElemKey::from([Value::Int(0)]),
                    goes(Verdict::Goto("sep-AAAA".into()), Some("slot 0")),
                ),
                (
                    ElemKey::from([Value::Int(1)]),
                    goes(Verdict::Goto("svc-BBBB".into()), None),
                ),
            ],
        );
        set(
            "svc-BBBB-ep",
            decl(
                SetKind::EndpointMap,
                vec![KeyType::Slot],
                false,
                None,
                Some("ns/db:sql"),
            ),
            vec![
                (
                    ElemKey::from([Value::Int(0)]),
                    ep("10.244.1.2", "fd01::2", 8080, Some("ns/db:sql endpoint")),
                ),
                (
                    ElemKey::from([Value::Int(1)]),
                    ep("10.244.2.3", "fd01::3", 5432, None),
                ),
            ],
        );
        t
    }

    /// The commands that create `table`: the table, its sets, its chains, then the elements
    /// (verdict maps name chains) and the rules (which name chains and sets).
    fn create(tx: &mut Transaction, table: &Table) {
        let family = table.family;
        tx.push(
            &TableId::new(family, ROUND_TRIP_TABLE),
            Command::AddTable {
                comment: table.comment.clone(),
            },
        );
        for (name, set) in &table.sets {
            tx.push(
                &TableId::new(family, ROUND_TRIP_TABLE),
                Command::AddSet {
                    name: name.clone(),
                    decl: set.decl.clone(),
                },
            );
        }
        for (name, chain) in &table.chains {
            tx.push(
                &TableId::new(family, ROUND_TRIP_TABLE),
                Command::AddChain {
                    name: name.clone(),
                    chain: chain.clone(),
                },
            );
        }
        for (name, set) in table.sets.iter().filter(|(_, s)| !s.elements.is_empty()) {
            tx.push(
                &TableId::new(family, ROUND_TRIP_TABLE),
                Command::AddElements {
                    set: name.clone(),
                    elements: set.elements.clone().into_iter().collect(),
                },
            );
        }
        for (name, chain) in &table.chains {
            for rule in &chain.rules {
                tx.push(
                    &TableId::new(family, ROUND_TRIP_TABLE),
                    Command::AddRule {
                        chain: name.clone(),
                        rule: rule.clone(),
                    },
                );
            }
        }
    }

    /// Why the kernel round trip cannot run here, if it cannot.
    fn kernel_unavailable() -> Option<String> {
        let uid = std::process::Command::new("id").arg("-u").output();
        match uid {
            Ok(out) if String::from_utf8_lossy(&out.stdout).trim() == "0" => {}
            _ => return Some("needs root".into()),
        }
        let works = |cmd: &str, args: &[&str]| {
            std::process::Command::new(cmd)
                .args(args)
                .output()
                .is_ok_and(|o| o.status.success())
        };
        if !works("nft", &["--version"]) {
            return Some("needs root and `nft` (not found)".into());
        }
        if !works("unshare", &["-n", "true"]) {
            return Some("needs root and `unshare -n` (network namespaces)".into());
        }
        None
    }

    /// Applies `text` with `nft -f -` in a fresh network namespace, then lists `table` in
    /// each of `families`: one JSON document per family.
    fn apply_and_list(text: &str, families: &[IpFamily]) -> Vec<String> {
        use std::io::Write as _;
        use std::process::{Command as Process, Stdio};
        let mut script = String::from("nft -f - || exit 1");
        for family in families {
            script.push_str(&format!(
                " && nft -j list table {} {ROUND_TRIP_TABLE}",
                family_name(*family)
            ));
        }
        let mut child = Process::new("unshare")
            .args(["-n", "sh", "-c", &script])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "nft failed: {}\n--- input ---\n{text}",
            String::from_utf8_lossy(&out.stderr)
        );
        let docs: Vec<String> = String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(String::from)
            .collect();
        assert_eq!(docs.len(), families.len(), "{docs:?}");
        docs
    }

    /// nft 1.0.6 does not list table and chain comments in JSON (its text listing does): the
    /// parsed table must have either none or the original ones; everything else is equal.
    fn assert_round_trip(original: &Table, parsed: &Table) {
        let mut expected = original.clone();
        let mut got = parsed.clone();
        assert!(got.comment.is_none() || got.comment == expected.comment);
        expected.comment = None;
        got.comment = None;
        for (name, chain) in &mut expected.chains {
            if let Some(parsed) = got.chains.get_mut(name) {
                assert!(parsed.comment.is_none() || parsed.comment == chain.comment);
                parsed.comment = None;
            }
            chain.comment = None;
        }
        assert_eq!(
            got.sets.keys().collect::<Vec<_>>(),
            expected.sets.keys().collect::<Vec<_>>()
        );
        for (name, set) in &expected.sets {
            assert_eq!(&got.sets[name], set, "set {name}");
        }
        assert_eq!(
            got.chains.keys().collect::<Vec<_>>(),
            expected.chains.keys().collect::<Vec<_>>()
        );
        for (name, chain) in &expected.chains {
            assert_eq!(&got.chains[name], chain, "chain {name}");
        }
        assert_eq!(got, expected);
    }

    #[test]
    fn kernel_round_trip_both_families() {
        if let Some(why) = kernel_unavailable() {
            if std::env::var("SVCROUTE_REQUIRE_KERNEL_TESTS").as_deref() == Ok("1") {
                panic!("kernel round trip required but unavailable: {why}");
            }
            eprintln!("SKIPPED: json::kernel_round_trip_both_families {why}");
            return;
        }
        let tables = [sample_table(IpFamily::IPv4), sample_table(IpFamily::IPv6)];
        let mut tx = Transaction::new();
        for table in &tables {
            create(&mut tx, table);
        }
        let docs = apply_and_list(&tx.text(), &IpFamily::ALL);
        for (table, doc) in tables.iter().zip(&docs) {
            let parsed = parse_table(doc, table.family)
                .unwrap_or_else(|e| panic!("{e}\n--- json ---\n{doc}"))
                .unwrap();
            assert_round_trip(table, &parsed);
        }
    }
}
