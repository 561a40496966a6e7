//! Follows a packet through the nftables ruleset svcroute programs, and answers with core's
//! [`Decision`].
//!
//! [`trace`] interprets [`Table`]s generically, statement by statement, starting from their base
//! chains: it relies on no chain or set name, only on hooks, priorities and what the rules say.
//! Anything it cannot interpret is an error ([`TraceError::Unsupported`] or
//! [`TraceError::Inconsistent`], naming the chain and the rule), never skipped or guessed.
//!
//! # Semantics
//!
//! The packet is the first of a new connection: `ct state new` holds, every dynamic set
//! (`timeout`) is empty, the mark starts at 0. `numgen random mod N` forks the walk into N
//! branches of equal probability, each with its own mark, destination, masquerade and affinity.
//!
//! The path mirrors the iptables backend's tracer, so both backends answer alike:
//!
//! 1. A packet whose source is a node address or loopback ([`ProxyConfig::is_node_address`])
//!    is node-originated: it runs the base chains of the `output` hook (filter -110, nat -100,
//!    filter -1, in priority order). Any other packet runs the `prerouting` hook's.
//! 2. Per branch, on the possibly DNATed destination: when it is a node address, the `input`
//!    hook's chains; otherwise the `forward` hook's, except for node-originated packets (their
//!    filtering was done in `output`).
//! 3. Every surviving branch then runs the `postrouting` hook's chains, DNATed-to-local ones
//!    included (the iptables tracer's nat `POSTROUTING` step, which is where the reference
//!    decides masquerade).
//!
//! Within a hook, the base chains of every table run in priority order (ties in the order the
//! tables are given, then by name); a chain's jumps and lookups stay in its table. `accept` ends the current
//! base chain only; `drop` and `reject` end the packet. `jump` returns to the next rule,
//! `goto` returns to the caller's caller; `return` or the end of a regular chain returns, the
//! end of a base chain is its `accept` policy. `dnat` and `masquerade` end their nat base
//! chain, and, as in the kernel, later nat chains of a hook are skipped once that hook's
//! translation is done. DNAT is allowed only in nat chains of `prerouting` and `output`,
//! masquerade only in nat chains of `postrouting`.
//!
//! Matches: `fib saddr|daddr type local` is the iptables tracer's `addrtype LOCAL`: the
//! address is a node address or loopback. `ct status dnat` holds once the branch was DNATed.
//! `tcp dport` on a non-TCP packet, like any payload expression whose protocol is absent, makes
//! the rule fail whether negated or not. A lookup in a set compares component-wise; networks
//! of interval sets contain addresses. `update @S { ip saddr }` on a set with a timeout makes
//! the branch sticky for that timeout (ClientIP affinity).
//!
//! A branch ends as DROP/REJECT, as DNAT to an endpoint (masqueraded when it reached a
//! `masquerade`), as ACCEPT (a filter chain accepted it while not DNATed: health-check
//! NodePorts), or as no match. The branches must agree: all DNAT (per-endpoint probabilities
//! summed, masquerade and affinity equal on every path to an endpoint), or all the same other
//! verdict; anything else is [`TraceError::Inconsistent`].

use std::cell::Cell;
use std::net::{IpAddr, SocketAddr};

use svcroute_core::dataplane::TraceError;
use svcroute_core::decide::paths::{self, PathEnd, TracedPath};
use svcroute_core::decide::{Decision, Packet, Verdict};
use svcroute_core::model::{IpFamily, Protocol, ProxyConfig};

use crate::ruleset::{
    self as nft, BaseHook, Chain, ChainType, ElemKey, ElemValue, Element, Expr, Hook, KeyType,
    MarkOp, Operand, Rule, Set, SetKind, Stmt, Table, Value, family_name,
};

/// Deepest nesting of `jump`/`goto` followed from a base chain (nf_tables allows 16 jumps);
/// deeper means a loop.
pub const MAX_DEPTH: usize = 64;

/// Most branches one trace may fork into (`numgen` forks once per slot).
pub const MAX_BRANCHES: usize = 1 << 16;

/// Follows `packet`, a new connection, through those of `tables` that are of its family (our
/// common table and shards, or any set of tables), and answers what the ruleset does with it.
/// `config` says which addresses are the node's (node-originated traffic, `fib ... type
/// local`).
///
/// A mixed-family packet, or one of a family without tables, matches nothing
/// ([`Verdict::NoMatch`]). See the module docs for the semantics.
pub fn trace(
    config: &ProxyConfig,
    tables: &[&Table],
    packet: &Packet,
) -> Result<Decision, TraceError> {
    if packet.is_mixed_family() {
        return Ok(Decision::simple(Verdict::NoMatch));
    }
    let family = IpFamily::of(&packet.destination);
    let tables: Vec<&Table> = tables
        .iter()
        .copied()
        .filter(|t| t.family == family)
        .collect();
    if tables.is_empty() {
        return Ok(Decision::simple(Verdict::NoMatch));
    }
    let walk = Walk {
        tables,
        family,
        config,
        packet,
        forks: Cell::new(1),
    };
    walk.run()
}

// ---------------------------------------------------------------------------------------------
// Walk state
// ---------------------------------------------------------------------------------------------

/// One possible path of the packet.
#[derive(Debug, Clone)]
struct Branch {
    /// The chance of this path.
    probability: f64,
    /// The packet mark.
    mark: u32,
    /// The destination after DNAT.
    dnat: Option<SocketAddr>,
    /// Reached `masquerade`.
    masquerade: bool,
    /// A filter chain accepted the packet while it was not DNATed.
    accepted: bool,
    /// The timeout of the affinity set an `update` recorded the source in.
    affinity: Option<u32>,
}

impl Branch {
    /// The path this branch traced, ending in `end`.
    fn ends(&self, end: PathEnd) -> TracedPath {
        TracedPath {
            probability: self.probability,
            end,
        }
    }
}

/// What a rule, once its statements ran, tells its chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow<'a> {
    /// No verdict (a match failed, a lookup missed, or the rule ran to its end): next rule.
    Next,
    Accept,
    Drop,
    Reject,
    Return,
    Jump(&'a str),
    Goto(&'a str),
    /// DNAT or masquerade done: the nat base chain ends.
    Nat,
}

/// What one statement tells its rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step<'a> {
    /// Go on with the next statement.
    Continue,
    /// The rule is over.
    Done(Flow<'a>),
}

/// How a walk through a chain ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Exit {
    /// Fell off the end or returned.
    Continue,
    Accept,
    Drop,
    Reject,
    /// DNAT or masquerade done.
    Nat,
}

/// A value read from the packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Datum {
    /// This value.
    Is(Value),
    /// A value equal to no constant svcroute writes (`fib` type other than local, `ct status`
    /// without `dnat`).
    Other,
    /// The expression cannot be evaluated (`tcp dport` of a UDP packet): the rule fails.
    Absent,
}

/// The base chain a walk started from, and its table (where its jumps and lookups go).
#[derive(Debug, Clone, Copy)]
struct Base<'a> {
    table: &'a Table,
    name: &'a str,
    hook: BaseHook,
}

/// The rule being evaluated, for checks and error messages.
#[derive(Debug, Clone, Copy)]
struct At<'a> {
    base: Base<'a>,
    chain: &'a str,
    index: usize,
    rule: &'a Rule,
    family: IpFamily,
}

impl At<'_> {
    fn describe(&self, why: &str) -> String {
        format!(
            "{} chain {} rule {} `{}` (from base chain {}): {why}",
            family_name(self.family),
            self.chain,
            self.index,
            self.rule.text(self.family),
            self.base.name
        )
    }

    fn unsupported(&self, why: &str) -> TraceError {
        TraceError::Unsupported(self.describe(why))
    }

    fn inconsistent(&self, why: &str) -> TraceError {
        TraceError::Inconsistent(self.describe(why))
    }

    /// Fails unless the rule runs under a nat base chain of one of `hooks`.
    fn require_nat(&self, what: &str, hooks: &[Hook]) -> Result<(), TraceError> {
        if self.base.hook.kind == ChainType::Nat && hooks.contains(&self.base.hook.hook) {
            return Ok(());
        }
        let hooks: Vec<&str> = hooks.iter().map(|h| h.name()).collect();
        Err(self.inconsistent(&format!(
            "{what} outside a nat chain of the {} hook",
            hooks.join(" or ")
        )))
    }
}

/// A trace in progress.
struct Walk<'a> {
    /// The tables of the packet's family.
    tables: Vec<&'a Table>,
    family: IpFamily,
    config: &'a ProxyConfig,
    packet: &'a Packet,
    /// Branches created so far.
    forks: Cell<usize>,
}

impl<'a> Walk<'a> {
    fn destination(&self, b: &Branch) -> IpAddr {
        b.dnat.map_or(self.packet.destination, |a| a.ip())
    }

    fn port(&self, b: &Branch) -> u16 {
        b.dnat.map_or(self.packet.port, |a| a.port())
    }

    /// Whether `ip` counts as local (`fib ... type local`, `addrtype LOCAL`).
    fn local(&self, ip: IpAddr) -> bool {
        self.config.is_node_address(ip)
    }

    // -----------------------------------------------------------------------------------------
    // Hooks

    /// The packet path (see the module docs), then the branches combined.
    fn run(&self) -> Result<Decision, TraceError> {
        let node_originated = self.local(self.packet.source);
        let start = Branch {
            probability: 1.0,
            mark: 0,
            dnat: None,
            masquerade: false,
            accepted: false,
            affinity: None,
        };
        let mut outcomes = Vec::new();
        let first = if node_originated {
            Hook::Output
        } else {
            Hook::Prerouting
        };
        let routed = self.run_hook(first, vec![start], &mut outcomes)?;

        let (mut to_input, mut to_forward, mut passing) = (Vec::new(), Vec::new(), Vec::new());
        for branch in routed {
            let to_local = self.local(self.destination(&branch));
            match (node_originated, to_local) {
                (_, true) => to_input.push(branch),
                (false, false) => to_forward.push(branch),
                // Filtered in the output hook already.
                (true, false) => passing.push(branch),
            }
        }
        passing.extend(self.run_hook(Hook::Input, to_input, &mut outcomes)?);
        passing.extend(self.run_hook(Hook::Forward, to_forward, &mut outcomes)?);

        for branch in self.run_hook(Hook::Postrouting, passing, &mut outcomes)? {
            let end = match branch.dnat {
                Some(endpoint) => PathEnd::Dnat {
                    endpoint,
                    masquerade: branch.masquerade,
                    affinity: branch.affinity,
                },
                None if branch.accepted => PathEnd::Accept,
                None => PathEnd::NoMatch,
            };
            outcomes.push(branch.ends(end));
        }
        paths::combine(self.packet, &outcomes)
    }

    /// The base chains of `hook` in every table, in priority order (ties: in table order,
    /// then by name: the order they are gathered in, kept by the stable sort).
    fn base_chains(&self, hook: Hook) -> Vec<(Base<'a>, &'a Chain)> {
        let mut chains: Vec<(Base<'a>, &'a Chain)> = Vec::new();
        for table in self.tables.iter().copied() {
            for (name, chain) in &table.chains {
                if let Some(h) = chain.hook.filter(|h| h.hook == hook) {
                    let base = Base {
                        table,
                        name,
                        hook: h,
                    };
                    chains.push((base, chain));
                }
            }
        }
        chains.sort_by_key(|(base, _)| base.hook.priority);
        chains
    }

    /// Whether the translation a nat chain of `hook` would do is done already.
    fn nat_done(hook: Hook, b: &Branch) -> bool {
        match hook {
            Hook::Prerouting | Hook::Output => b.dnat.is_some(),
            Hook::Postrouting => b.masquerade,
            Hook::Input | Hook::Forward => false,
        }
    }

    /// Runs every base chain of `hook` on `branches`; those dropped or rejected go to
    /// `outcomes`, the others are returned.
    fn run_hook(
        &self,
        hook: Hook,
        branches: Vec<Branch>,
        outcomes: &mut Vec<TracedPath>,
    ) -> Result<Vec<Branch>, TraceError> {
        let mut live = branches;
        for (base, chain) in self.base_chains(hook) {
            let (name, base_hook) = (base.name, base.hook);
            let mut next = Vec::with_capacity(live.len());
            for branch in live {
                if base_hook.kind == ChainType::Nat && Self::nat_done(hook, &branch) {
                    next.push(branch);
                    continue;
                }
                let mut exits = Vec::new();
                self.run_chain(base, name, chain, branch, 0, &mut exits)?;
                for (mut branch, exit) in exits {
                    match exit {
                        Exit::Drop => outcomes.push(branch.ends(PathEnd::Drop)),
                        Exit::Reject => outcomes.push(branch.ends(PathEnd::Reject)),
                        Exit::Accept => {
                            if base_hook.kind == ChainType::Filter && branch.dnat.is_none() {
                                branch.accepted = true;
                            }
                            next.push(branch);
                        }
                        Exit::Continue | Exit::Nat => next.push(branch),
                    }
                }
            }
            live = next;
        }
        Ok(live)
    }

    // -----------------------------------------------------------------------------------------
    // Chains and rules

    /// Walks `chain`, pushing every branch's exit to `out`.
    fn run_chain(
        &self,
        base: Base<'a>,
        name: &'a str,
        chain: &'a Chain,
        branch: Branch,
        depth: usize,
        out: &mut Vec<(Branch, Exit)>,
    ) -> Result<(), TraceError> {
        let mut active = vec![branch];
        for (index, rule) in chain.rules.iter().enumerate() {
            if active.is_empty() {
                break;
            }
            let at = At {
                base,
                chain: name,
                index,
                rule,
                family: self.family,
            };
            let mut next = Vec::with_capacity(active.len());
            for branch in active {
                for (branch, flow) in self.run_rule(&at, branch)? {
                    match flow {
                        Flow::Next => next.push(branch),
                        Flow::Accept => out.push((branch, Exit::Accept)),
                        Flow::Drop => out.push((branch, Exit::Drop)),
                        Flow::Reject => out.push((branch, Exit::Reject)),
                        Flow::Nat => out.push((branch, Exit::Nat)),
                        Flow::Return => out.push((branch, Exit::Continue)),
                        Flow::Jump(to) => {
                            let mut sub = Vec::new();
                            self.enter(&at, to, branch, depth + 1, &mut sub)?;
                            for (branch, exit) in sub {
                                match exit {
                                    Exit::Continue => next.push(branch),
                                    _ => out.push((branch, exit)),
                                }
                            }
                        }
                        // The target's return is this chain's return.
                        Flow::Goto(to) => self.enter(&at, to, branch, depth + 1, out)?,
                    }
                }
            }
            active = next;
        }
        out.extend(active.into_iter().map(|b| (b, Exit::Continue)));
        Ok(())
    }

    /// Enters chain `to` from the rule `at` (a `jump` or `goto`).
    fn enter(
        &self,
        at: &At<'a>,
        to: &'a str,
        branch: Branch,
        depth: usize,
        out: &mut Vec<(Branch, Exit)>,
    ) -> Result<(), TraceError> {
        if depth > MAX_DEPTH {
            return Err(
                at.inconsistent(&format!("chains nested deeper than {MAX_DEPTH} (a loop?)"))
            );
        }
        let Some((name, chain)) = at.base.table.chains.get_key_value(to) else {
            return Err(at.inconsistent(&format!("jump or goto to missing chain {to}")));
        };
        if chain.hook.is_some() {
            return Err(at.inconsistent(&format!("jump or goto to base chain {to}")));
        }
        self.run_chain(at.base, name, chain, branch, depth, out)
    }

    /// Runs the statements of a rule: every resulting branch and how its rule ended.
    fn run_rule(&self, at: &At<'a>, branch: Branch) -> Result<Vec<(Branch, Flow<'a>)>, TraceError> {
        let mut pending = vec![branch];
        let mut done = Vec::new();
        for stmt in &at.rule.stmts {
            if pending.is_empty() {
                break;
            }
            let mut next = Vec::with_capacity(pending.len());
            for branch in pending {
                for (branch, step) in self.statement(at, stmt, branch)? {
                    match step {
                        Step::Continue => next.push(branch),
                        Step::Done(flow) => done.push((branch, flow)),
                    }
                }
            }
            pending = next;
        }
        done.extend(pending.into_iter().map(|b| (b, Flow::Next)));
        Ok(done)
    }

    // -----------------------------------------------------------------------------------------
    // Statements

    /// Runs one statement on `b`: every resulting branch (numgen forks) and its step.
    fn statement(
        &self,
        at: &At<'a>,
        stmt: &'a Stmt,
        b: Branch,
    ) -> Result<Vec<(Branch, Step<'a>)>, TraceError> {
        match stmt {
            Stmt::Match {
                left,
                negate,
                right,
            } => self.stmt_match(at, left, *negate, right, b),
            Stmt::Vmap { key, map } => self.stmt_vmap(at, key, map, b),
            Stmt::Mark(op) => Ok(vec![Self::stmt_mark(*op, b)]),
            Stmt::Update { set, key } => self.stmt_update(at, set, key, b).map(|s| vec![s]),
            Stmt::DnatTo(to) => self.stmt_dnat_to(at, *to, b).map(|s| vec![s]),
            Stmt::DnatNumgen { modulus, map } => self.stmt_dnat_numgen(at, *modulus, map, b),
            Stmt::Masquerade => Self::stmt_masquerade(at, b).map(|s| vec![s]),
            Stmt::Reject => Ok(vec![(b, Step::Done(Flow::Reject))]),
            Stmt::Verdict(v) => Ok(vec![(b, Step::Done(verdict_flow(v)))]),
        }
    }

    /// `LEFT [!=] VALUE` or `LEFT [!=] @SET`.
    fn stmt_match(
        &self,
        at: &At<'a>,
        left: &Expr,
        negate: bool,
        right: &'a Operand,
        b: Branch,
    ) -> Result<Vec<(Branch, Step<'a>)>, TraceError> {
        let alternatives = self.read(at, left, &b)?;
        let count = alternatives.len();
        let mut out = Vec::with_capacity(count);
        for (datums, weight) in alternatives {
            let branch = self.fork(&b, weight, count)?;
            let holds = if datums.contains(&Datum::Absent) {
                None
            } else {
                Some(match right {
                    Operand::Value(value) => {
                        let [datum] = datums.as_slice() else {
                            return Err(at.unsupported("a concatenation compared with a constant"));
                        };
                        compare(left, *datum, value, self.family)
                            .map_err(|why| at.unsupported(&why))?
                    }
                    Operand::Set(name) => {
                        let set = self.set(at, name, SetKind::Set)?;
                        self.lookup(at, name, set, left, &datums)?.is_some()
                    }
                })
            };
            let step = match holds {
                Some(holds) if holds != negate => Step::Continue,
                _ => Step::Done(Flow::Next),
            };
            out.push((branch, step));
        }
        Ok(out)
    }

    /// `KEY vmap @MAP`: the element's verdict, or no verdict when the key is absent.
    fn stmt_vmap(
        &self,
        at: &At<'a>,
        key: &Expr,
        map: &'a str,
        b: Branch,
    ) -> Result<Vec<(Branch, Step<'a>)>, TraceError> {
        let set = self.set(at, map, SetKind::VerdictMap)?;
        let alternatives = self.read(at, key, &b)?;
        let count = alternatives.len();
        let mut out = Vec::with_capacity(count);
        for (datums, weight) in alternatives {
            let branch = self.fork(&b, weight, count)?;
            let element = if datums.contains(&Datum::Absent) {
                None
            } else {
                self.lookup(at, map, set, key, &datums)?
            };
            let flow = match element {
                None => Flow::Next,
                Some(Element {
                    value: Some(ElemValue::Verdict(v)),
                    ..
                }) => verdict_flow(v),
                Some(_) => {
                    return Err(at.inconsistent(&format!(
                        "an element of verdict map @{map} holds no verdict"
                    )));
                }
            };
            out.push((branch, Step::Done(flow)));
        }
        Ok(out)
    }

    /// `meta mark set meta mark | BITS` / `^ BITS`.
    fn stmt_mark(op: MarkOp, mut b: Branch) -> (Branch, Step<'a>) {
        match op {
            MarkOp::Or(bits) => b.mark |= bits,
            MarkOp::Xor(bits) => b.mark ^= bits,
        }
        (b, Step::Continue)
    }

    /// `update @SET { ip saddr . numgen random mod 1 offset ID }` (or `{ ip saddr }`): the
    /// branch is sticky for the set's timeout.
    fn stmt_update(
        &self,
        at: &At<'a>,
        name: &'a str,
        key: &Expr,
        mut b: Branch,
    ) -> Result<(Branch, Step<'a>), TraceError> {
        let set = self.set(at, name, SetKind::Set)?;
        let Some(timeout) = set.decl.timeout else {
            return Err(at.unsupported(&format!("update of @{name}, which has no timeout")));
        };
        let affinity_key = match key {
            Expr::Saddr => true,
            Expr::Concat(parts) => matches!(
                parts.as_slice(),
                [Expr::Saddr, Expr::Numgen { modulus: 1, .. }]
            ),
            _ => false,
        };
        if !affinity_key || key_types(key).ok().as_deref() != Some(set.decl.key.as_slice()) {
            return Err(at.unsupported(
                "only `update @SET { ip saddr [. numgen random mod 1 offset ID] }` of a set of \
                 that type (ClientIP affinity)",
            ));
        }
        match b.affinity {
            Some(other) if other != timeout => {
                return Err(at.inconsistent(&format!(
                    "affinity timeouts differ on one path ({other} and {timeout} seconds)"
                )));
            }
            _ => b.affinity = Some(timeout),
        }
        Ok((b, Step::Continue))
    }

    /// `dnat to ADDR:PORT`.
    fn stmt_dnat_to(
        &self,
        at: &At<'a>,
        to: SocketAddr,
        b: Branch,
    ) -> Result<(Branch, Step<'a>), TraceError> {
        at.require_nat("dnat", &[Hook::Prerouting, Hook::Output])?;
        self.dnat(at, to, b)
    }

    /// `dnat ip addr . port to numgen random mod N map @MAP`: one branch per slot; an empty
    /// slot gives no verdict.
    fn stmt_dnat_numgen(
        &self,
        at: &At<'a>,
        modulus: u32,
        map: &'a str,
        b: Branch,
    ) -> Result<Vec<(Branch, Step<'a>)>, TraceError> {
        at.require_nat("dnat", &[Hook::Prerouting, Hook::Output])?;
        let set = self.set(at, map, SetKind::EndpointMap)?;
        let key = Expr::numgen(modulus);
        let mut out = Vec::new();
        for (datums, weight) in self.read(at, &key, &b)? {
            let branch = self.fork(&b, weight, modulus as usize)?;
            match self.lookup(at, map, set, &key, &datums)? {
                None => out.push((branch, Step::Done(Flow::Next))),
                Some(Element {
                    value: Some(ElemValue::Endpoint(to)),
                    ..
                }) => out.push(self.dnat(at, *to, branch)?),
                Some(_) => {
                    return Err(at.inconsistent(&format!(
                        "an element of endpoint map @{map} holds no endpoint"
                    )));
                }
            }
        }
        Ok(out)
    }

    /// DNATs `b` to `to`: the nat chain is done.
    fn dnat(
        &self,
        at: &At<'a>,
        to: SocketAddr,
        mut b: Branch,
    ) -> Result<(Branch, Step<'a>), TraceError> {
        if IpFamily::of(&to.ip()) != self.family || to.port() == 0 {
            return Err(at.inconsistent(&format!(
                "dnat to {to}, not an address and port of this family"
            )));
        }
        b.dnat = Some(to);
        Ok((b, Step::Done(Flow::Nat)))
    }

    /// `masquerade`: the branch is masqueraded, the nat chain is done.
    fn stmt_masquerade(at: &At<'a>, mut b: Branch) -> Result<(Branch, Step<'a>), TraceError> {
        at.require_nat("masquerade", &[Hook::Postrouting])?;
        b.masquerade = true;
        Ok((b, Step::Done(Flow::Nat)))
    }

    // -----------------------------------------------------------------------------------------
    // Expressions and sets

    /// A copy of `b` taking `weight` of its probability, counted as a fork when one branch
    /// becomes `count`.
    fn fork(&self, b: &Branch, weight: f64, count: usize) -> Result<Branch, TraceError> {
        if count > 1 {
            let forks = self.forks.get() + 1;
            if forks > MAX_BRANCHES {
                return Err(TraceError::Unsupported(format!(
                    "packet {}: more than {MAX_BRANCHES} numgen branches",
                    self.packet
                )));
            }
            self.forks.set(forks);
        }
        let mut branch = b.clone();
        branch.probability *= weight;
        Ok(branch)
    }

    /// The values `expr` may have for `b`, with their chances: one for everything but
    /// `numgen` (one per slot); a concatenation has one component per part.
    fn read(
        &self,
        at: &At<'a>,
        expr: &Expr,
        b: &Branch,
    ) -> Result<Vec<(Vec<Datum>, f64)>, TraceError> {
        let scalar = |d: Datum| Ok(vec![(vec![d], 1.0)]);
        match expr {
            Expr::Saddr => scalar(Datum::Is(Value::Addr(self.packet.source))),
            Expr::Daddr => scalar(Datum::Is(Value::Addr(self.destination(b)))),
            Expr::L4Proto => scalar(Datum::Is(Value::Proto(self.packet.protocol))),
            Expr::ThDport => scalar(Datum::Is(Value::Port(self.port(b)))),
            Expr::TcpDport => scalar(if self.packet.protocol == Protocol::Tcp {
                Datum::Is(Value::Port(self.port(b)))
            } else {
                Datum::Absent
            }),
            Expr::MarkAnd(mask) => scalar(Datum::Is(Value::Int(b.mark & mask))),
            Expr::FibSaddrType => scalar(self.fib_type(self.packet.source)),
            Expr::FibDaddrType => scalar(self.fib_type(self.destination(b))),
            Expr::CtState => scalar(Datum::Is(Value::New)),
            Expr::CtStatus => scalar(if b.dnat.is_some() {
                Datum::Is(Value::Dnat)
            } else {
                Datum::Other
            }),
            Expr::Numgen { modulus: 0, .. } => Err(at.inconsistent("numgen random mod 0")),
            Expr::Numgen { modulus, offset } => {
                let weight = 1.0 / f64::from(*modulus);
                Ok((0..*modulus)
                    .map(|slot| {
                        let value = offset.wrapping_add(slot);
                        (vec![Datum::Is(Value::Int(value))], weight)
                    })
                    .collect())
            }
            Expr::Concat(parts) => {
                let mut out = vec![(Vec::new(), 1.0)];
                for part in parts {
                    let options = self.read(at, part, b)?;
                    let mut next = Vec::with_capacity(out.len() * options.len());
                    for (prefix, w) in &out {
                        for (datums, v) in &options {
                            let mut key: Vec<Datum> = prefix.clone();
                            key.extend_from_slice(datums);
                            next.push((key, w * v));
                        }
                    }
                    out = next;
                }
                Ok(out)
            }
        }
    }

    fn fib_type(&self, ip: IpAddr) -> Datum {
        if self.local(ip) {
            Datum::Is(Value::Local)
        } else {
            Datum::Other
        }
    }

    /// The set or map `name`, which must be of `kind`.
    fn set(&self, at: &At<'a>, name: &str, kind: SetKind) -> Result<&'a Set, TraceError> {
        let Some(set) = at.base.table.sets.get(name) else {
            return Err(at.inconsistent(&format!("missing set or map @{name}")));
        };
        if set.decl.kind != kind {
            return Err(at.unsupported(&format!(
                "@{name} is a {:?}, used as a {kind:?}",
                set.decl.kind
            )));
        }
        Ok(set)
    }

    /// Looks `datums` (the value of `key`) up in `set`: the matching element, if any. Dynamic
    /// sets are empty for a new client.
    fn lookup(
        &self,
        at: &At<'a>,
        name: &str,
        set: &'a Set,
        key: &Expr,
        datums: &[Datum],
    ) -> Result<Option<&'a Element>, TraceError> {
        let types = key_types(key).map_err(|why| at.unsupported(&why))?;
        if types != set.decl.key {
            return Err(at.inconsistent(&format!(
                "key `{}` does not fit @{name}, of type {:?}",
                expr_text(key, self.family),
                set.decl.key
            )));
        }
        if set.decl.timeout.is_some() {
            return Ok(None);
        }
        let exact: Option<Vec<Value>> = datums
            .iter()
            .map(|d| match d {
                Datum::Is(v) => Some(*v),
                Datum::Other | Datum::Absent => None,
            })
            .collect();
        let Some(exact) = exact else {
            return Ok(None);
        };
        if let Some(element) = ElemKey::new(&exact).and_then(|key| set.elements.get(&key)) {
            return Ok(Some(element));
        }
        if !set.decl.interval {
            return Ok(None);
        }
        for (elem_key, element) in &set.elements {
            let elem_key = elem_key.values();
            if elem_key.len() != types.len() {
                return Err(at.inconsistent(&format!(
                    "an element of @{name} has {} components, its type {}",
                    elem_key.len(),
                    types.len()
                )));
            }
            let mut all = true;
            for ((value, component), kind) in exact.iter().zip(elem_key.iter()).zip(&types) {
                if !fits(*kind, component) {
                    return Err(at.inconsistent(&format!(
                        "element component {component} of @{name} is not a {kind:?}"
                    )));
                }
                all &= value_matches(Datum::Is(*value), component);
            }
            if all {
                return Ok(Some(element));
            }
        }
        Ok(None)
    }
}

/// The chain flow of a verdict.
fn verdict_flow(v: &nft::Verdict) -> Flow<'_> {
    match v {
        nft::Verdict::Accept => Flow::Accept,
        nft::Verdict::Drop => Flow::Drop,
        nft::Verdict::Return => Flow::Return,
        nft::Verdict::Jump(to) => Flow::Jump(to),
        nft::Verdict::Goto(to) => Flow::Goto(to),
    }
}

fn expr_text(expr: &Expr, family: IpFamily) -> String {
    let mut s = String::new();
    expr.write(family, &mut s);
    s
}

/// The key type of each component of `expr`, as a set lookup key.
fn key_types(expr: &Expr) -> Result<Vec<KeyType>, String> {
    let one = |k| Ok(vec![k]);
    match expr {
        Expr::Saddr | Expr::Daddr => one(KeyType::Addr),
        Expr::L4Proto => one(KeyType::Proto),
        Expr::ThDport | Expr::TcpDport => one(KeyType::Service),
        Expr::Numgen { .. } => one(KeyType::Slot),
        Expr::Concat(parts) => {
            let mut out = Vec::with_capacity(parts.len());
            for part in parts {
                out.extend(key_types(part)?);
            }
            Ok(out)
        }
        Expr::MarkAnd(_)
        | Expr::FibSaddrType
        | Expr::FibDaddrType
        | Expr::CtState
        | Expr::CtStatus => Err(format!("{expr:?} as a set key")),
    }
}

/// Whether `value` is a value of key type `kind` (networks are addresses of interval sets).
fn fits(kind: KeyType, value: &Value) -> bool {
    matches!(
        (kind, value),
        (KeyType::Addr, Value::Addr(_) | Value::Net(_))
            | (KeyType::Proto, Value::Proto(_))
            | (KeyType::Service, Value::Port(_))
            | (KeyType::Slot, Value::Int(_))
    )
}

/// Whether a datum equals a constant (an address: is inside a network).
fn value_matches(datum: Datum, value: &Value) -> bool {
    match (datum, value) {
        (Datum::Is(Value::Addr(a)), Value::Net(n)) => n.contains(&a),
        (Datum::Is(d), v) => d == *v,
        (Datum::Other | Datum::Absent, _) => false,
    }
}

/// `LEFT VALUE`: whether it holds, or why the comparison makes no sense.
fn compare(left: &Expr, datum: Datum, value: &Value, family: IpFamily) -> Result<bool, String> {
    let sensible = match (left, value) {
        (Expr::Saddr | Expr::Daddr, Value::Addr(a)) => IpFamily::of(a) == family,
        (Expr::Saddr | Expr::Daddr, Value::Net(n)) => IpFamily::of(&n.addr()) == family,
        (Expr::L4Proto, Value::Proto(_))
        | (Expr::ThDport | Expr::TcpDport, Value::Port(_))
        | (Expr::MarkAnd(_), Value::Int(_))
        | (Expr::FibSaddrType | Expr::FibDaddrType, Value::Local)
        | (Expr::CtState, Value::New)
        | (Expr::CtStatus, Value::Dnat)
        | (Expr::Numgen { .. }, Value::Int(_)) => true,
        _ => false,
    };
    if !sensible {
        return Err(format!(
            "`{}` compared with {value}",
            expr_text(left, family)
        ));
    }
    Ok(value_matches(datum, value))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ruleset::{SetDecl, Verdict as V};
    use std::collections::BTreeMap;
    use svcroute_core::decide::WeightedEndpoint;

    // -----------------------------------------------------------------------------------------
    // Building tables by hand

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn addr(s: &str) -> Value {
        Value::Addr(ip(s))
    }

    fn net(s: &str) -> Value {
        Value::Net(s.parse().unwrap())
    }

    fn is(left: Expr, right: Value) -> Stmt {
        Stmt::Match {
            left,
            negate: false,
            right: Operand::Value(right),
        }
    }

    fn is_not(left: Expr, right: Value) -> Stmt {
        Stmt::Match {
            left,
            negate: true,
            right: Operand::Value(right),
        }
    }

    fn in_set(left: Expr, set: &str) -> Stmt {
        Stmt::Match {
            left,
            negate: false,
            right: Operand::Set(set.into()),
        }
    }

    fn not_in_set(left: Expr, set: &str) -> Stmt {
        Stmt::Match {
            left,
            negate: true,
            right: Operand::Set(set.into()),
        }
    }

    fn vmap(key: Expr, map: &str) -> Stmt {
        Stmt::Vmap {
            key,
            map: map.into(),
        }
    }

    fn jump(chain: &str) -> Stmt {
        Stmt::Verdict(V::Jump(chain.into()))
    }

    fn goto(chain: &str) -> Stmt {
        Stmt::Verdict(V::Goto(chain.into()))
    }

    fn tcp() -> Stmt {
        is(Expr::L4Proto, Value::Proto(Protocol::Tcp))
    }

    fn ct_new() -> Stmt {
        is(Expr::CtState, Value::New)
    }

    /// `ip daddr . meta l4proto . th dport`
    fn dst_key() -> Expr {
        Expr::Concat(vec![Expr::Daddr, Expr::L4Proto, Expr::ThDport])
    }

    /// `meta l4proto . th dport`
    fn port_key() -> Expr {
        Expr::Concat(vec![Expr::L4Proto, Expr::ThDport])
    }

    fn triple(a: &str, port: u16) -> Vec<Value> {
        vec![addr(a), Value::Proto(Protocol::Tcp), Value::Port(port)]
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

    struct Builder {
        table: Table,
    }

    impl Builder {
        fn base(
            &mut self,
            name: &str,
            kind: ChainType,
            hook: Hook,
            priority: i32,
            rules: Vec<Vec<Stmt>>,
        ) {
            self.table.chains.insert(
                name.into(),
                Chain {
                    hook: Some(BaseHook {
                        kind,
                        hook,
                        priority,
                    }),
                    comment: None,
                    rules: rules.into_iter().map(Rule::new).collect(),
                },
            );
        }

        fn chain(&mut self, name: &str, rules: Vec<Vec<Stmt>>) {
            self.table.chains.insert(
                name.into(),
                Chain {
                    hook: None,
                    comment: None,
                    rules: rules.into_iter().map(Rule::new).collect(),
                },
            );
        }

        fn set(&mut self, name: &str, decl: SetDecl) {
            self.table.sets.insert(
                name.into(),
                Set {
                    decl,
                    elements: BTreeMap::new(),
                },
            );
        }

        fn elem(&mut self, set: &str, key: Vec<Value>, value: Option<ElemValue>) {
            self.table.sets.get_mut(set).unwrap().elements.insert(
                ElemKey::new(&key).unwrap(),
                Element {
                    value,
                    comment: None,
                },
            );
        }

        fn verdict(&mut self, set: &str, key: Vec<Value>, v: V) {
            self.elem(set, key, Some(ElemValue::Verdict(v)));
        }

        /// `svc-H`-like chain: masquerade non-pod ClusterIP traffic, then numgen DNAT.
        fn endpoints_chain(
            &mut self,
            name: &str,
            cluster_ip: Option<(&str, u16)>,
            endpoints: &[&str],
        ) {
            let mut rules = Vec::new();
            if let Some((cip, port)) = cluster_ip {
                rules.push(vec![
                    is(Expr::Daddr, addr(cip)),
                    is(Expr::ThDport, Value::Port(port)),
                    not_in_set(Expr::Saddr, "pod-cidrs"),
                    jump("mark-for-masquerade"),
                ]);
            }
            if let [one] = endpoints {
                rules.push(vec![tcp(), Stmt::DnatTo(one.parse().unwrap())]);
            } else {
                let map = format!("{name}-ep");
                rules.push(vec![
                    tcp(),
                    Stmt::DnatNumgen {
                        modulus: endpoints.len() as u32,
                        map: map.clone(),
                    },
                ]);
                self.set(&map, decl(SetKind::EndpointMap, vec![KeyType::Slot]));
                for (slot, e) in endpoints.iter().enumerate() {
                    self.elem(
                        &map,
                        vec![Value::Int(slot as u32)],
                        Some(ElemValue::Endpoint(e.parse().unwrap())),
                    );
                }
            }
            self.chain(name, rules);
            for e in endpoints {
                let e: SocketAddr = e.parse().unwrap();
                self.elem(
                    "hairpin",
                    vec![Value::Addr(e.ip()), Value::Addr(e.ip())],
                    None,
                );
            }
        }
    }

    /// The fixed layout of the module brief, with empty sets.
    fn layout() -> Builder {
        use ChainType::{Filter, Nat};
        let mut b = Builder {
            table: Table::new(IpFamily::IPv4),
        };
        let checks = || {
            vec![
                vec![ct_new(), jump("service-endpoints-check")],
                vec![ct_new(), jump("nodeport-endpoints-check")],
                vec![ct_new(), jump("cluster-ips-check")],
            ]
        };
        b.base(
            "filter-prerouting",
            Filter,
            Hook::Prerouting,
            -110,
            vec![vec![ct_new(), jump("firewall-check")]],
        );
        b.base(
            "filter-output-pre-dnat",
            Filter,
            Hook::Output,
            -110,
            vec![vec![ct_new(), jump("firewall-check")]],
        );
        b.chain(
            "firewall-check",
            vec![vec![vmap(dst_key(), "firewall-ips")]],
        );
        b.base(
            "nat-prerouting",
            Nat,
            Hook::Prerouting,
            -100,
            vec![vec![jump("services")]],
        );
        b.base(
            "nat-output",
            Nat,
            Hook::Output,
            -100,
            vec![vec![jump("services")]],
        );
        b.chain(
            "services",
            vec![
                vec![vmap(dst_key(), "service-ips")],
                vec![
                    is(Expr::FibDaddrType, Value::Local),
                    is_not(Expr::Daddr, net("127.0.0.0/8")),
                    vmap(port_key(), "service-nodeports"),
                ],
            ],
        );
        b.chain(
            "mark-for-masquerade",
            vec![vec![Stmt::Mark(MarkOp::Or(0x4000))]],
        );
        let mut input = checks();
        input.push(vec![
            is(Expr::FibDaddrType, Value::Local),
            in_set(Expr::TcpDport, "health-check-ports"),
            Stmt::Verdict(V::Accept),
        ]);
        b.base("filter-input", Filter, Hook::Input, -1, input);
        b.base("filter-forward", Filter, Hook::Forward, -1, checks());
        b.base("filter-output", Filter, Hook::Output, -1, checks());
        b.chain(
            "service-endpoints-check",
            vec![vec![vmap(dst_key(), "no-endpoint-services")]],
        );
        b.chain(
            "nodeport-endpoints-check",
            vec![vec![
                is(Expr::FibDaddrType, Value::Local),
                is_not(Expr::Daddr, net("127.0.0.0/8")),
                vmap(port_key(), "no-endpoint-nodeports"),
            ]],
        );
        b.chain(
            "cluster-ips-check",
            vec![
                vec![in_set(Expr::Daddr, "cluster-ips"), Stmt::Reject],
                vec![in_set(Expr::Daddr, "service-cidrs"), Stmt::Verdict(V::Drop)],
            ],
        );
        b.chain("reject-chain", vec![vec![Stmt::Reject]]);
        b.base(
            "nat-postrouting",
            Nat,
            Hook::Postrouting,
            100,
            vec![vec![jump("masquerading")]],
        );
        b.chain(
            "masquerading",
            vec![
                vec![
                    is(Expr::CtStatus, Value::Dnat),
                    in_set(Expr::Concat(vec![Expr::Saddr, Expr::Daddr]), "hairpin"),
                    jump("mark-for-masquerade"),
                ],
                vec![
                    is(Expr::MarkAnd(0x4000), Value::Int(0)),
                    Stmt::Verdict(V::Return),
                ],
                vec![Stmt::Mark(MarkOp::Xor(0x4000))],
                vec![Stmt::Masquerade],
            ],
        );

        use KeyType::{Addr, Proto, Service};
        for name in ["firewall-ips", "service-ips", "no-endpoint-services"] {
            b.set(name, decl(SetKind::VerdictMap, vec![Addr, Proto, Service]));
        }
        for name in ["service-nodeports", "no-endpoint-nodeports"] {
            b.set(name, decl(SetKind::VerdictMap, vec![Proto, Service]));
        }
        b.set("cluster-ips", decl(SetKind::Set, vec![Addr]));
        for name in ["service-cidrs", "pod-cidrs"] {
            let mut d = decl(SetKind::Set, vec![Addr]);
            d.interval = true;
            b.set(name, d);
        }
        b.set("hairpin", decl(SetKind::Set, vec![Addr, Addr]));
        b.set("health-check-ports", decl(SetKind::Set, vec![Service]));
        b.elem("pod-cidrs", vec![net("10.244.0.0/16")], None);
        b.elem("service-cidrs", vec![net("10.96.0.0/16")], None);
        b
    }

    /// The layout with a few services:
    /// - `web`: ClusterIP 10.96.0.10:80, NodePort 30080, two endpoints, eTP Cluster;
    /// - `loc`: ClusterIP 10.96.0.20:80, LB IP 203.0.113.20:80, eTP Local, one local endpoint
    ///   of two;
    /// - `empty`: ClusterIP 10.96.0.30:80 without endpoints (reject); LB IP 203.0.113.40:80 of
    ///   an eTP Local service without local endpoints (drop);
    /// - `fw`: LB IP 203.0.113.50:80, source ranges 10.0.0.0/8, one endpoint;
    /// - a health-check NodePort 32000;
    /// - `sticky`: ClusterIP 10.96.0.60:80, ClientIP affinity 10800 s, two endpoints;
    /// - `gap`: ClusterIP 10.96.0.70:80 whose numgen map lacks slot 1 (the next rule DNATs).
    fn fixture() -> Table {
        let mut b = layout();
        // web
        b.verdict(
            "service-ips",
            triple("10.96.0.10", 80),
            V::Goto("svc-WEB".into()),
        );
        b.verdict(
            "service-nodeports",
            vec![Value::Proto(Protocol::Tcp), Value::Port(30080)],
            V::Goto("ext-WEB".into()),
        );
        b.elem("cluster-ips", vec![addr("10.96.0.10")], None);
        b.endpoints_chain(
            "svc-WEB",
            Some(("10.96.0.10", 80)),
            &["10.244.1.1:8080", "10.244.1.2:8080"],
        );
        b.chain(
            "ext-WEB",
            vec![vec![jump("mark-for-masquerade")], vec![goto("svc-WEB")]],
        );

        // loc
        b.verdict(
            "service-ips",
            triple("10.96.0.20", 80),
            V::Goto("svc-LOC".into()),
        );
        b.verdict(
            "service-ips",
            triple("203.0.113.20", 80),
            V::Goto("ext-LOC".into()),
        );
        b.elem("cluster-ips", vec![addr("10.96.0.20")], None);
        b.endpoints_chain(
            "svc-LOC",
            Some(("10.96.0.20", 80)),
            &["10.244.1.3:80", "10.244.2.4:80"],
        );
        b.endpoints_chain("svl-LOC", None, &["10.244.1.3:80"]);
        b.chain(
            "ext-LOC",
            vec![
                vec![in_set(Expr::Saddr, "pod-cidrs"), goto("svc-LOC")],
                vec![
                    is(Expr::FibSaddrType, Value::Local),
                    jump("mark-for-masquerade"),
                ],
                vec![is(Expr::FibSaddrType, Value::Local), goto("svc-LOC")],
                vec![goto("svl-LOC")],
            ],
        );

        // empty
        b.elem("cluster-ips", vec![addr("10.96.0.30")], None);
        b.verdict(
            "no-endpoint-services",
            triple("10.96.0.30", 80),
            V::Goto("reject-chain".into()),
        );
        b.verdict("no-endpoint-services", triple("203.0.113.40", 80), V::Drop);

        // fw
        b.verdict(
            "firewall-ips",
            triple("203.0.113.50", 80),
            V::Goto("fw-FW".into()),
        );
        b.chain(
            "fw-FW",
            vec![
                vec![is(Expr::Saddr, net("10.0.0.0/8")), Stmt::Verdict(V::Return)],
                vec![Stmt::Verdict(V::Drop)],
            ],
        );
        b.verdict(
            "service-ips",
            triple("203.0.113.50", 80),
            V::Goto("ext-FW".into()),
        );
        b.chain(
            "ext-FW",
            vec![vec![jump("mark-for-masquerade")], vec![goto("svc-FW")]],
        );
        b.endpoints_chain("svc-FW", None, &["10.244.1.5:80"]);

        // health check
        b.elem("health-check-ports", vec![Value::Port(32000)], None);

        // sticky
        b.verdict(
            "service-ips",
            triple("10.96.0.60", 80),
            V::Goto("svc-STK".into()),
        );
        b.elem("cluster-ips", vec![addr("10.96.0.60")], None);
        b.set("svc-STK-ep", decl(SetKind::VerdictMap, vec![KeyType::Slot]));
        let mut rules = vec![vec![
            is(Expr::Daddr, addr("10.96.0.60")),
            is(Expr::ThDport, Value::Port(80)),
            not_in_set(Expr::Saddr, "pod-cidrs"),
            jump("mark-for-masquerade"),
        ]];
        let mut d = decl(SetKind::Set, vec![KeyType::Addr, KeyType::Slot]);
        d.timeout = Some(10800);
        d.size = Some(1 << 20);
        b.set("aff-STK", d);
        for (slot, (sep, endpoint)) in [("sep-A", "10.244.1.6:80"), ("sep-B", "10.244.1.7:80")]
            .into_iter()
            .enumerate()
        {
            let id = 1000 + slot as u32;
            rules.push(vec![
                in_set(crate::render::affinity_key(id), "aff-STK"),
                goto(sep),
            ]);
            b.verdict(
                "svc-STK-ep",
                vec![Value::Int(slot as u32)],
                V::Goto(sep.into()),
            );
            b.chain(
                sep,
                vec![
                    vec![Stmt::Update {
                        set: "aff-STK".into(),
                        key: crate::render::affinity_key(id),
                    }],
                    vec![tcp(), Stmt::DnatTo(endpoint.parse().unwrap())],
                ],
            );
        }
        rules.push(vec![vmap(Expr::numgen(2), "svc-STK-ep")]);
        b.chain("svc-STK", rules);

        // gap
        b.verdict(
            "service-ips",
            triple("10.96.0.70", 80),
            V::Goto("svc-GAP".into()),
        );
        b.elem("cluster-ips", vec![addr("10.96.0.70")], None);
        b.endpoints_chain("svc-GAP", None, &["10.244.1.8:80", "10.244.1.9:80"]);
        b.table
            .sets
            .get_mut("svc-GAP-ep")
            .unwrap()
            .elements
            .remove(&ElemKey::from([Value::Int(1)]));
        b.table
            .chains
            .get_mut("svc-GAP")
            .unwrap()
            .rules
            .push(Rule::new(vec![
                tcp(),
                Stmt::DnatTo("10.244.1.9:80".parse().unwrap()),
            ]));
        b.table
    }

    fn config() -> ProxyConfig {
        ProxyConfig {
            node_ips: vec![ip("192.168.0.10")],
            cluster_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
            service_cidrs: vec!["10.96.0.0/16".parse().unwrap()],
            // The fixture's NodePort rule excludes 127.0.0.0/8, as decide() does then.
            localhost_nodeports: false,
            ..ProxyConfig::default()
        }
    }

    fn tables(table: Table) -> BTreeMap<IpFamily, Table> {
        BTreeMap::from([(table.family, table)])
    }

    fn run(tables: &BTreeMap<IpFamily, Table>, packet: &str) -> Result<Decision, TraceError> {
        let tables: Vec<&Table> = tables.values().collect();
        trace(&config(), &tables, &packet.parse().unwrap())
    }

    fn dnat(endpoints: &[(&str, f64, bool)], affinity: Option<u32>) -> Decision {
        let weighted: Vec<WeightedEndpoint> = endpoints
            .iter()
            .map(|(e, probability, masquerade)| WeightedEndpoint {
                endpoint: e.parse().unwrap(),
                probability: *probability,
                masquerade: *masquerade,
            })
            .collect();
        Decision {
            masquerade: weighted.iter().any(|w| w.masquerade),
            verdict: Verdict::Dnat(weighted),
            affinity_timeout_seconds: affinity,
        }
    }

    #[track_caller]
    fn check(tables: &BTreeMap<IpFamily, Table>, packet: &str, expected: &Decision) {
        let got = run(tables, packet).unwrap_or_else(|e| panic!("{packet}: {e}"));
        assert!(
            got.equivalent(expected),
            "{packet}:\n got      {got:?}\n expected {expected:?}"
        );
    }

    fn simple(v: Verdict) -> Decision {
        Decision::simple(v)
    }

    fn web(masq: [bool; 2]) -> Decision {
        dnat(
            &[
                ("10.244.1.1:8080", 0.5, masq[0]),
                ("10.244.1.2:8080", 0.5, masq[1]),
            ],
            None,
        )
    }

    // -----------------------------------------------------------------------------------------
    // Tests

    #[test]
    fn cluster_ip_dnat_and_masquerade() {
        let t = tables(fixture());
        // From a pod: no masquerade.
        check(&t, "10.244.9.9 10.96.0.10:80", &web([false, false]));
        // From outside the pod CIDRs: masqueraded.
        check(&t, "172.16.0.1 10.96.0.10:80", &web([true, true]));
        // From the node itself (output hook), and from loopback.
        check(&t, "192.168.0.10 10.96.0.10:80", &web([true, true]));
        check(&t, "127.0.0.1 10.96.0.10:80", &web([true, true]));
        // Other protocol: the vmap key misses, the ClusterIP rejects.
        check(&t, "10.244.9.9 10.96.0.10:80/udp", &simple(Verdict::Reject));
    }

    #[test]
    fn hairpin_masquerades_the_endpoint_reaching_itself() {
        let t = tables(fixture());
        check(&t, "10.244.1.1 10.96.0.10:80", &web([true, false]));
        check(&t, "10.244.1.2 10.96.0.10:80", &web([false, true]));
    }

    #[test]
    fn node_ports_through_fib_local() {
        let t = tables(fixture());
        check(&t, "172.16.0.1 192.168.0.10:30080", &web([true, true]));
        check(&t, "10.244.9.9 192.168.0.10:30080", &web([true, true]));
        check(&t, "192.168.0.10 192.168.0.10:30080", &web([true, true]));
        // Not a node address, loopback excluded by the rule: nothing.
        check(
            &t,
            "172.16.0.1 192.168.0.99:30080",
            &simple(Verdict::NoMatch),
        );
        check(&t, "127.0.0.1 127.0.0.1:30080", &simple(Verdict::NoMatch));
    }

    #[test]
    fn external_traffic_policy_local_paths() {
        let t = tables(fixture());
        let cluster = |masq| {
            dnat(
                &[("10.244.1.3:80", 0.5, masq), ("10.244.2.4:80", 0.5, masq)],
                None,
            )
        };
        // Pod -> LB IP: the cluster endpoints, unmasqueraded.
        check(&t, "10.244.9.9 203.0.113.20:80", &cluster(false));
        // Node -> LB IP: the cluster endpoints, masqueraded.
        check(&t, "192.168.0.10 203.0.113.20:80", &cluster(true));
        // External -> LB IP: the local endpoint only, source kept.
        check(
            &t,
            "172.16.0.1 203.0.113.20:80",
            &dnat(&[("10.244.1.3:80", 1.0, false)], None),
        );
        // External -> ClusterIP: internal policy, masqueraded.
        check(&t, "172.16.0.1 10.96.0.20:80", &cluster(true));
    }

    #[test]
    fn firewall_drops_or_allows() {
        let t = tables(fixture());
        check(&t, "172.16.0.1 203.0.113.50:80", &simple(Verdict::Drop));
        check(&t, "192.168.0.10 203.0.113.50:80", &simple(Verdict::Drop));
        check(
            &t,
            "10.1.2.3 203.0.113.50:80",
            &dnat(&[("10.244.1.5:80", 1.0, true)], None),
        );
    }

    #[test]
    fn no_endpoints_reject_or_drop() {
        let t = tables(fixture());
        check(&t, "10.244.9.9 10.96.0.30:80", &simple(Verdict::Reject));
        check(&t, "192.168.0.10 10.96.0.30:80", &simple(Verdict::Reject));
        check(&t, "172.16.0.1 203.0.113.40:80", &simple(Verdict::Drop));
    }

    #[test]
    fn cluster_ip_checks() {
        let t = tables(fixture());
        // Undefined port of a ClusterIP.
        check(&t, "10.244.9.9 10.96.0.10:81", &simple(Verdict::Reject));
        check(&t, "192.168.0.10 10.96.0.10:81", &simple(Verdict::Reject));
        // Unallocated service-CIDR address.
        check(&t, "10.244.9.9 10.96.5.5:80", &simple(Verdict::Drop));
        // Elsewhere.
        check(&t, "10.244.9.9 8.8.8.8:53/udp", &simple(Verdict::NoMatch));
    }

    #[test]
    fn health_check_ports_are_accepted() {
        let t = tables(fixture());
        check(
            &t,
            "172.16.0.1 192.168.0.10:32000",
            &simple(Verdict::Accept),
        );
        check(
            &t,
            "192.168.0.10 192.168.0.10:32000",
            &simple(Verdict::Accept),
        );
        // `tcp dport` fails on UDP; other addresses are not local.
        check(
            &t,
            "172.16.0.1 192.168.0.10:32000/udp",
            &simple(Verdict::NoMatch),
        );
        check(
            &t,
            "172.16.0.1 192.168.0.99:32000",
            &simple(Verdict::NoMatch),
        );
    }

    #[test]
    fn affinity_timeout_is_reported() {
        let t = tables(fixture());
        check(
            &t,
            "10.244.9.9 10.96.0.60:80",
            &dnat(
                &[("10.244.1.6:80", 0.5, false), ("10.244.1.7:80", 0.5, false)],
                Some(10800),
            ),
        );
    }

    #[test]
    fn missing_numgen_slot_falls_through() {
        let t = tables(fixture());
        check(
            &t,
            "10.244.9.9 10.96.0.70:80",
            &dnat(
                &[("10.244.1.8:80", 0.5, false), ("10.244.1.9:80", 0.5, false)],
                None,
            ),
        );
    }

    #[test]
    fn mixed_family_and_missing_tables_match_nothing() {
        let t = tables(fixture());
        check(&t, "fd00::1 [fd00::2]:80", &simple(Verdict::NoMatch));
        let mixed = Packet {
            source: ip("10.0.0.1"),
            destination: ip("fd00::1"),
            port: 80,
            protocol: Protocol::Tcp,
        };
        let all: Vec<&Table> = t.values().collect();
        assert_eq!(trace(&config(), &all, &mixed), Ok(simple(Verdict::NoMatch)));
        check(
            &BTreeMap::new(),
            "10.0.0.1 10.96.0.10:80",
            &simple(Verdict::NoMatch),
        );
    }

    #[test]
    fn jump_to_missing_chain_is_inconsistent() {
        let mut table = fixture();
        table.chains.get_mut("ext-WEB").unwrap().rules[1] = Rule::new(vec![goto("svc-GONE")]);
        let t = tables(table);
        match run(&t, "172.16.0.1 192.168.0.10:30080") {
            Err(TraceError::Inconsistent(m)) => {
                assert!(
                    m.contains("ext-WEB rule 1") && m.contains("svc-GONE"),
                    "{m}"
                )
            }
            other => panic!("{other:?}"),
        }
        // Other packets do not reach it.
        check(&t, "10.244.9.9 10.96.0.10:80", &web([false, false]));
    }

    #[test]
    fn deep_recursion_is_an_error() {
        let mut b = layout();
        b.chain("loop", vec![vec![jump("loop")]]);
        b.table
            .chains
            .get_mut("services")
            .unwrap()
            .rules
            .insert(0, Rule::new(vec![jump("loop")]));
        let t = tables(b.table);
        match run(&t, "10.244.9.9 10.96.0.10:80") {
            Err(TraceError::Inconsistent(m)) => assert!(m.contains("deeper than"), "{m}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn mixed_outcomes_are_inconsistent() {
        let mut table = fixture();
        // Slot 1 of svc-GAP now falls through to a drop.
        table.chains.get_mut("svc-GAP").unwrap().rules[1] = Rule::new(vec![Stmt::Verdict(V::Drop)]);
        match run(&tables(table), "10.244.9.9 10.96.0.70:80") {
            Err(TraceError::Inconsistent(m)) => assert!(m.contains("different verdicts"), "{m}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn masquerade_must_agree_per_endpoint() {
        let mut b = layout();
        b.verdict(
            "service-ips",
            triple("10.96.0.80", 80),
            V::Goto("svc-X".into()),
        );
        // Slot 0 marks, slot 1 does not, both reach the same endpoint.
        b.set("svc-X-ep", decl(SetKind::VerdictMap, vec![KeyType::Slot]));
        b.verdict("svc-X-ep", vec![Value::Int(0)], V::Goto("mark-then".into()));
        b.verdict("svc-X-ep", vec![Value::Int(1)], V::Goto("plain".into()));
        b.chain("svc-X", vec![vec![vmap(Expr::numgen(2), "svc-X-ep")]]);
        b.chain(
            "mark-then",
            vec![vec![jump("mark-for-masquerade")], vec![goto("plain")]],
        );
        b.chain(
            "plain",
            vec![vec![Stmt::DnatTo("10.244.1.1:80".parse().unwrap())]],
        );
        match run(&tables(b.table), "10.244.9.9 10.96.0.80:80") {
            Err(TraceError::Inconsistent(m)) => assert!(m.contains("some paths only"), "{m}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn nonsense_is_refused() {
        // A port compared with an address.
        let mut b = layout();
        b.table.chains.get_mut("services").unwrap().rules.insert(
            0,
            Rule::new(vec![
                is(Expr::Daddr, Value::Port(80)),
                Stmt::Verdict(V::Drop),
            ]),
        );
        match run(&tables(b.table), "10.244.9.9 10.96.0.10:80") {
            Err(TraceError::Unsupported(m)) => assert!(m.contains("services rule 0"), "{m}"),
            other => panic!("{other:?}"),
        }

        // An endpoint map used as a verdict map.
        let mut b = layout();
        b.endpoints_chain("svc-E", None, &["10.244.1.1:80", "10.244.1.2:80"]);
        b.chain("svc-V", vec![vec![vmap(Expr::numgen(2), "svc-E-ep")]]);
        b.verdict(
            "service-ips",
            triple("10.96.0.10", 80),
            V::Goto("svc-V".into()),
        );
        match run(&tables(b.table), "10.244.9.9 10.96.0.10:80") {
            Err(TraceError::Unsupported(m)) => assert!(m.contains("svc-V rule 0"), "{m}"),
            other => panic!("{other:?}"),
        }

        // DNAT in a filter chain; masquerade in prerouting.
        for stmt in [
            Stmt::DnatTo("10.244.1.1:80".parse().unwrap()),
            Stmt::Masquerade,
        ] {
            let mut b = layout();
            b.table
                .chains
                .get_mut("firewall-check")
                .unwrap()
                .rules
                .insert(0, Rule::new(vec![stmt]));
            match run(&tables(b.table), "10.244.9.9 10.96.0.10:80") {
                Err(TraceError::Inconsistent(m)) => {
                    assert!(m.contains("firewall-check rule 0"), "{m}")
                }
                other => panic!("{other:?}"),
            }
        }

        // A missing set.
        let mut b = layout();
        b.table.sets.remove("service-ips");
        assert!(matches!(
            run(&tables(b.table), "10.244.9.9 10.96.0.10:80"),
            Err(TraceError::Inconsistent(_))
        ));
    }

    #[test]
    fn affinity_must_agree() {
        let mut table = fixture();
        // sep-B also records its clients in a set of another timeout.
        let mut other = table.sets["aff-STK"].clone();
        other.decl.timeout = Some(60);
        table.sets.insert("aff-OTHER".into(), other);
        let update = Rule::new(vec![Stmt::Update {
            set: "aff-OTHER".into(),
            key: crate::render::affinity_key(7),
        }]);
        table
            .chains
            .get_mut("sep-B")
            .unwrap()
            .rules
            .insert(0, update);
        match run(&tables(table), "10.244.9.9 10.96.0.60:80") {
            Err(TraceError::Inconsistent(m)) => assert!(m.contains("affinity"), "{m}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn base_chains_run_in_priority_order_and_accept_ends_only_its_chain() {
        let mut b = layout();
        b.verdict(
            "service-ips",
            triple("10.96.0.10", 80),
            V::Goto("svc-WEB".into()),
        );
        b.endpoints_chain("svc-WEB", None, &["10.244.1.1:8080"]);
        // An earlier filter chain accepting does not stop the nat chain.
        b.base(
            "early",
            ChainType::Filter,
            Hook::Prerouting,
            -300,
            vec![vec![Stmt::Verdict(V::Accept)]],
        );
        let t = tables(b.table);
        check(
            &t,
            "10.244.9.9 10.96.0.10:80",
            &dnat(&[("10.244.1.1:8080", 1.0, false)], None),
        );
    }
}
