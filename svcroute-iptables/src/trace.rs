//! Follows a packet through the rules svcroute programs, and answers with core's [`Decision`].
//!
//! [`Tracer::new`] compiles a [`Ruleset`] once: every rule of every owned chain
//! ([`names::is_owned_chain`]: kube-proxy's chain names, not kubelet's) is parsed into a structured form, and anything not understood is
//! an error ([`TraceError::Unsupported`]), never skipped. Our rendering and `iptables-save`'s
//! normalisation parse to the same thing (`-s`/`-d`/`-p` anywhere, `/32` host suffixes,
//! statistic probabilities rounded to the kernel's 31-bit quantum, `recent` options in any order,
//! `--or-mark` as `--set-xmark V/V`, ...).
//!
//! In the built-in chains (`PREROUTING`, `INPUT`, `FORWARD`, `OUTPUT`, `POSTROUTING`) only the
//! rules that jump to an owned chain are ours; every other rule there, and every other chain
//! (kubelet's `KUBE-FIREWALL` included), belongs to other software and is ignored: the trace says what *our* rules do.
//!
//! # Semantics
//!
//! A packet is the first of a new connection (conntrack state `NEW`, no `recent` history).
//! `statistic` rules fork the walk: with probability P the rule matches, otherwise not; both
//! branches are followed, each with its own mark, destination and affinity records.
//!
//! 1. nat `OUTPUT` for node-originated packets (source is a node address or loopback), nat
//!    `PREROUTING` otherwise. `DNAT` ends the walk with a new destination, `ACCEPT` ends it
//!    untouched.
//! 2. Per branch, filter `OUTPUT` (node-originated; then also `INPUT` when the destination is
//!    now a node address), else `INPUT` when the destination is a node address, else `FORWARD`.
//!    `DROP`/`REJECT` decide; `ACCEPT` ends that hook.
//! 3. Per surviving branch, nat `POSTROUTING`: reaching `MASQUERADE` masquerades the branch.
//!
//! A branch ends as DROP/REJECT, as DNAT to an endpoint, as ACCEPT (an owned filter chain
//! accepted a packet that was not DNATed, e.g. a health-check NodePort), or as no match. The
//! branches must agree (all DNAT, or all the same other verdict); affinity is reported when each
//! DNAT branch passed a `recent --rcheck` of the set its endpoint chain `--set`s.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use ipnet::IpNet;
use svcroute_core::dataplane::TraceError;
use svcroute_core::decide::paths::{self, PathEnd, TracedPath};
use svcroute_core::decide::{Decision, Packet, Verdict};
use svcroute_core::model::{IpFamily, Protocol, ProxyConfig};

use crate::ruleset::{Ruleset, TableName};
use crate::{names, parse};

/// Deepest chain nesting followed (kube-proxy's is 6; nf_tables allows 16); deeper means a loop.
const MAX_DEPTH: usize = 32;
/// Most branches one trace may fork into (kube-proxy forks once per endpoint).
const MAX_BRANCHES: usize = 1 << 16;
/// The kernel's statistic probability unit: a rule matches when a 31-bit random number is
/// below `probability * 2^31` (rounded), which is also what iptables-save prints back.
const PROBABILITY_SCALE: f64 = 2_147_483_648.0;

/// An address match: `[!] -s NET`, `[!] -d NET`, `[!] --ctorigdst NET`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct NetMatch {
    net: IpNet,
    negated: bool,
}

impl NetMatch {
    fn matches(&self, ip: IpAddr) -> bool {
        self.net.contains(&ip) != self.negated
    }
}

/// Conntrack states, as bits.
const CT_INVALID: u8 = 1;
const CT_NEW: u8 = 2;
const CT_RELATED: u8 = 4;
const CT_ESTABLISHED: u8 = 8;
const CT_UNTRACKED: u8 = 16;

/// One `-m` match (comments are dropped: they carry no semantics).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Match {
    /// `-m tcp|udp|sctp [--dport N]` (or `-p P --dport N` with the module implied).
    Transport {
        protocol: Protocol,
        dport: Option<u16>,
    },
    /// `-m addrtype [!] --src-type LOCAL [!] --dst-type LOCAL`; `Some(negated)` per side.
    AddrTypeLocal {
        source: Option<bool>,
        destination: Option<bool>,
    },
    /// `-m statistic --mode random --probability P`, P in units of 2^-31.
    Statistic { probability: u32 },
    /// `-m recent --rcheck --seconds T --name N` (`--rsource`, full mask).
    RecentCheck { name: String, seconds: u32 },
    /// `-m recent --set --name N` (`--rsource`, full mask).
    RecentSet { name: String },
    /// `-m mark [!] --mark V[/M]`.
    Mark {
        value: u32,
        mask: u32,
        negated: bool,
    },
    /// `-m conntrack ...`, each part optional.
    Conntrack {
        /// States bits, negated.
        states: Option<(u8, bool)>,
        orig_dst: Option<NetMatch>,
        /// Port, negated.
        orig_dst_port: Option<(u16, bool)>,
    },
}

/// What a rule does when it matches.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    /// `-j KUBE-…`.
    Jump(String),
    Return,
    Accept,
    Drop,
    Reject,
    /// `-j DNAT --to-destination IP:PORT`.
    Dnat(SocketAddr),
    /// `-j MARK`: mark = (mark & !mask) ^ value (`--set-xmark` semantics).
    Mark {
        value: u32,
        mask: u32,
    },
    /// `-j MASQUERADE [--random-fully]`.
    Masquerade,
}

/// A parsed rule. The built-in `-s`/`-d`/`-p` are checked first, as the kernel does, then the
/// matches in order.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    source: Option<NetMatch>,
    destination: Option<NetMatch>,
    protocol: Option<Protocol>,
    matches: Vec<Match>,
    target: Target,
}

/// A rule and its text (for error messages).
#[derive(Debug, Clone)]
struct Entry {
    text: String,
    rule: Rule,
}

/// The rules of one family, compiled for tracing. See the module docs.
#[derive(Debug, Clone, Default)]
pub struct Tracer {
    tables: BTreeMap<TableName, BTreeMap<String, Vec<Entry>>>,
}

fn unsupported(table: TableName, chain: &str, text: &str, why: &str) -> TraceError {
    TraceError::Unsupported(format!("{table} chain {chain}: rule {text:?}: {why}"))
}

impl Tracer {
    /// Compiles `rules`: parses every rule of every `KUBE-` chain, and the rules of the built-in
    /// chains that jump to a `KUBE-` chain (others are not ours and are ignored).
    ///
    /// Fails with [`TraceError::Unsupported`] on any option, match or target it does not
    /// understand, and with [`TraceError::Inconsistent`] on a jump to a missing chain.
    pub fn new(rules: &Ruleset) -> Result<Tracer, TraceError> {
        let mut tables = BTreeMap::new();
        for (&table, chains) in &rules.tables {
            let mut compiled: BTreeMap<String, Vec<Entry>> = BTreeMap::new();
            for (chain, texts) in chains {
                let owned = names::is_owned_chain(chain);
                if !owned && !table.is_builtin(chain) {
                    continue;
                }
                let mut entries = Vec::new();
                for text in texts {
                    if !owned && !jumps_to_owned(text) {
                        continue;
                    }
                    let rule =
                        parse_rule(text).map_err(|why| unsupported(table, chain, text, &why))?;
                    entries.push(Entry {
                        text: text.clone(),
                        rule,
                    });
                }
                compiled.insert(chain.clone(), entries);
            }
            for (chain, entries) in &compiled {
                for entry in entries {
                    if let Target::Jump(to) = &entry.rule.target
                        && !compiled.contains_key(to)
                    {
                        return Err(TraceError::Inconsistent(format!(
                            "{table} chain {chain}: rule {:?} jumps to missing chain {to}",
                            entry.text
                        )));
                    }
                }
            }
            tables.insert(table, compiled);
        }
        Ok(Tracer { tables })
    }

    /// The decision for `packet`, a new connection, under these rules. `config` says which
    /// addresses are the node's (`addrtype LOCAL`, node-originated traffic).
    pub fn trace(&self, config: &ProxyConfig, packet: &Packet) -> Result<Decision, TraceError> {
        if packet.is_mixed_family() {
            return Ok(Decision::simple(Verdict::NoMatch));
        }
        let walk = Walk {
            tracer: self,
            config,
            packet,
            forks: Cell::new(1),
        };
        let node_originated = config.is_node_address(packet.source);
        let start = Branch {
            probability: 1.0,
            mark: 0,
            dnat: None,
            masquerade: false,
            accepted: false,
            rchecks: Vec::new(),
            sets: Vec::new(),
        };
        let mut outcomes: Vec<(Branch, Outcome)> = Vec::new();

        // 1. nat: the service dispatch.
        let nat_hook = if node_originated {
            Hook::NatOutput
        } else {
            Hook::Prerouting
        };
        let mut live = Vec::new();
        for (branch, exit) in walk.run_hook(nat_hook, start)? {
            match exit {
                Exit::Drop => outcomes.push((branch, Outcome::Drop)),
                Exit::Reject => outcomes.push((branch, Outcome::Reject)),
                Exit::Continue | Exit::Accept | Exit::Nat => live.push(branch),
            }
        }

        // 2. filter, on the (possibly DNATed) packet.
        for branch in live {
            let local = config.is_node_address(walk.destination(&branch));
            let hooks: &[Hook] = match (node_originated, local) {
                (true, true) => &[Hook::FilterOutput, Hook::FilterInput],
                (true, false) => &[Hook::FilterOutput],
                (false, true) => &[Hook::FilterInput],
                (false, false) => &[Hook::Forward],
            };
            let mut passing = vec![branch];
            for &hook in hooks {
                let mut next = Vec::new();
                for branch in passing {
                    for (mut branch, exit) in walk.run_hook(hook, branch)? {
                        match exit {
                            Exit::Drop => outcomes.push((branch, Outcome::Drop)),
                            Exit::Reject => outcomes.push((branch, Outcome::Reject)),
                            Exit::Accept => {
                                // Only owned chains are walked: this ACCEPT is ours.
                                branch.accepted |= branch.dnat.is_none();
                                next.push(branch);
                            }
                            Exit::Continue => next.push(branch),
                            Exit::Nat => {
                                return Err(TraceError::Inconsistent(format!(
                                    "NAT target reached in filter {}",
                                    hook.chain()
                                )));
                            }
                        }
                    }
                }
                passing = next;
            }

            // 3. nat POSTROUTING: masquerade.
            for branch in passing {
                for (branch, exit) in walk.run_hook(Hook::Postrouting, branch)? {
                    let outcome = match exit {
                        Exit::Drop => Outcome::Drop,
                        Exit::Reject => Outcome::Reject,
                        Exit::Continue | Exit::Accept | Exit::Nat => match branch.dnat {
                            Some(endpoint) => Outcome::Dnat(endpoint),
                            None if branch.accepted => Outcome::Accept,
                            None => Outcome::NoMatch,
                        },
                    };
                    outcomes.push((branch, outcome));
                }
            }
        }
        combine(packet, outcomes)
    }
}

/// Whether a built-in chain's rule is ours: its `-j`/`-g` target is a `KUBE-` chain. A rule
/// that does not even tokenize is ours only if it mentions a `KUBE-` name (then parsing it
/// reports the problem).
fn jumps_to_owned(text: &str) -> bool {
    match parse::tokenize(text) {
        Ok(tokens) => tokens.windows(2).any(|w| {
            matches!(w[0].as_str(), "-j" | "--jump" | "-g" | "--goto")
                && names::is_owned_chain(&w[1])
        }),
        Err(_) => text.contains("KUBE-"),
    }
}

// ---------------------------------------------------------------------------------------------
// Rule parsing
// ---------------------------------------------------------------------------------------------

/// Options that are not a module's even though they start with `--`.
const GLOBAL_LONG_OPTIONS: &[&str] = &[
    "--source",
    "--destination",
    "--protocol",
    "--match",
    "--jump",
    "--goto",
    "--in-interface",
    "--out-interface",
    "--fragment",
];

struct Tokens<'a> {
    tokens: &'a [String],
    pos: usize,
}

impl<'a> Tokens<'a> {
    fn peek_at(&self, offset: usize) -> Option<&'a str> {
        self.tokens.get(self.pos + offset).map(String::as_str)
    }

    fn next(&mut self) -> Option<&'a str> {
        let t = self.peek_at(0);
        if t.is_some() {
            self.pos += 1;
        }
        t
    }

    /// The value of `option`.
    fn value(&mut self, option: &str) -> Result<&'a str, String> {
        self.next()
            .ok_or_else(|| format!("option {option} needs a value"))
    }

    /// The next option of the current module or target (`[!] --name`), consumed; `None` when
    /// the next token starts something else.
    fn module_option(&mut self) -> Option<(bool, &'a str)> {
        let is_option = |t: Option<&str>| {
            t.is_some_and(|t| t.starts_with("--") && !GLOBAL_LONG_OPTIONS.contains(&t))
        };
        if self.peek_at(0) == Some("!") && is_option(self.peek_at(1)) {
            self.pos += 1;
            return self.next().map(|name| (true, name));
        }
        if is_option(self.peek_at(0)) {
            return self.next().map(|name| (false, name));
        }
        None
    }
}

/// Stores `value` in an option slot that must be empty.
fn set_once<T>(slot: &mut Option<T>, value: T, option: &str) -> Result<(), String> {
    if slot.is_some() {
        return Err(format!("option {option} given twice"));
    }
    *slot = Some(value);
    Ok(())
}

fn not_negated(negated: bool, option: &str) -> Result<(), String> {
    if negated {
        return Err(format!("negated {option} is not supported"));
    }
    Ok(())
}

/// `addr` or `addr/len`, IPv4 or IPv6 (host bits cleared, as iptables does).
fn parse_net(s: &str) -> Result<IpNet, String> {
    let net = if s.contains('/') {
        IpNet::from_str(s).map_err(|_| format!("invalid network {s:?}"))?
    } else {
        IpNet::from(IpAddr::from_str(s).map_err(|_| format!("invalid address {s:?}"))?)
    };
    Ok(net.trunc())
}

fn parse_port(s: &str) -> Result<u16, String> {
    if s.is_empty() || !s.chars().all(|c| c.is_ascii_digit()) {
        return Err(format!("invalid or unsupported port {s:?}"));
    }
    s.parse().map_err(|_| format!("invalid port {s:?}"))
}

/// A 32-bit number, hex (`0x…`) or decimal (iptables would read a leading 0 as octal: refused).
fn parse_u32(s: &str) -> Result<u32, String> {
    let parsed = if let Some(hex) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        u32::from_str_radix(hex, 16).ok()
    } else if s == "0" || (!s.starts_with('0') && s.chars().all(|c| c.is_ascii_digit())) {
        s.parse().ok()
    } else {
        None
    };
    parsed.ok_or_else(|| format!("invalid number {s:?}"))
}

/// `V` or `V/M` (mask defaults to all ones).
fn parse_value_mask(s: &str) -> Result<(u32, u32), String> {
    match s.split_once('/') {
        Some((v, m)) => Ok((parse_u32(v)?, parse_u32(m)?)),
        None => Ok((parse_u32(s)?, u32::MAX)),
    }
}

fn parse_protocol(s: &str) -> Result<Protocol, String> {
    match s {
        "tcp" => Ok(Protocol::Tcp),
        "udp" => Ok(Protocol::Udp),
        "sctp" => Ok(Protocol::Sctp),
        _ => Err(format!("unsupported protocol {s:?}")),
    }
}

/// Parses one rule (the text after `-A CHAIN `); the error says what is not supported.
fn parse_rule(text: &str) -> Result<Rule, String> {
    let tokens = parse::tokenize(text).map_err(|e| e.message)?;
    let mut t = Tokens {
        tokens: &tokens,
        pos: 0,
    };
    let mut source = None;
    let mut destination = None;
    let mut protocol = None;
    let mut matches = Vec::new();
    let mut target = None;
    while let Some(token) = t.next() {
        let (negated, option) = if token == "!" {
            (true, t.next().ok_or("dangling `!`")?)
        } else {
            (false, token)
        };
        match option {
            "-s" | "--source" => {
                let net = parse_net(t.value(option)?)?;
                set_once(&mut source, NetMatch { net, negated }, option)?;
            }
            "-d" | "--destination" => {
                let net = parse_net(t.value(option)?)?;
                set_once(&mut destination, NetMatch { net, negated }, option)?;
            }
            "-p" | "--protocol" => {
                not_negated(negated, option)?;
                set_once(&mut protocol, parse_protocol(t.value(option)?)?, option)?;
            }
            // `-p tcp --dport N` loads the protocol's match implicitly.
            "--dport" | "--destination-port" if protocol.is_some() && !negated => {
                let dport = Some(parse_port(t.value(option)?)?);
                if let Some(protocol) = protocol {
                    matches.push(Match::Transport { protocol, dport });
                }
            }
            "-m" | "--match" => {
                not_negated(negated, option)?;
                let module = t.value(option)?;
                if let Some(m) = parse_module(module, &mut t)? {
                    matches.push(m);
                }
            }
            "-j" | "--jump" => {
                not_negated(negated, option)?;
                let name = t.value(option)?;
                let parsed = parse_target(name, &mut t)?;
                set_once(&mut target, parsed, option)?;
            }
            "-g" | "--goto" => return Err("goto (-g) is not supported".to_string()),
            other => return Err(format!("unsupported option {other:?}")),
        }
    }
    let target = target.ok_or("rule without -j target")?;
    for m in &matches {
        if let Match::Transport { protocol: p, .. } = m
            && protocol != Some(*p)
        {
            return Err(format!("-m {} without -p {}", p.lower(), p.lower()));
        }
    }
    Ok(Rule {
        source,
        destination,
        protocol,
        matches,
        target,
    })
}

/// Parses the options of `-m module`; `None` for a comment.
fn parse_module(module: &str, t: &mut Tokens<'_>) -> Result<Option<Match>, String> {
    let unknown = |option: &str| format!("unsupported option {option} of -m {module}");
    match module {
        "tcp" | "udp" | "sctp" => {
            let protocol = parse_protocol(module)?;
            let mut dport = None;
            while let Some((negated, option)) = t.module_option() {
                match option {
                    "--dport" | "--destination-port" => {
                        not_negated(negated, option)?;
                        set_once(&mut dport, parse_port(t.value(option)?)?, option)?;
                    }
                    _ => return Err(unknown(option)),
                }
            }
            Ok(Some(Match::Transport { protocol, dport }))
        }
        "comment" => {
            let mut comment = None;
            while let Some((negated, option)) = t.module_option() {
                match option {
                    "--comment" => {
                        not_negated(negated, option)?;
                        set_once(&mut comment, t.value(option)?, option)?;
                    }
                    _ => return Err(unknown(option)),
                }
            }
            comment.ok_or("-m comment without --comment")?;
            Ok(None)
        }
        "addrtype" => {
            let (mut source, mut destination) = (None, None);
            while let Some((negated, option)) = t.module_option() {
                let slot = match option {
                    "--src-type" => &mut source,
                    "--dst-type" => &mut destination,
                    _ => return Err(unknown(option)),
                };
                let kind = t.value(option)?;
                if kind != "LOCAL" {
                    return Err(format!("unsupported address type {kind:?}"));
                }
                set_once(slot, negated, option)?;
            }
            if source.is_none() && destination.is_none() {
                return Err("-m addrtype without --src-type or --dst-type".to_string());
            }
            Ok(Some(Match::AddrTypeLocal {
                source,
                destination,
            }))
        }
        "statistic" => {
            let (mut mode, mut probability) = (None, None);
            while let Some((negated, option)) = t.module_option() {
                not_negated(negated, option)?;
                match option {
                    "--mode" => set_once(&mut mode, t.value(option)?, option)?,
                    "--probability" => {
                        let p = t.value(option)?;
                        let p = f64::from_str(p)
                            .ok()
                            .filter(|p| (0.0..=1.0).contains(p))
                            .ok_or_else(|| format!("invalid probability {p:?}"))?;
                        // The kernel's own rounding: both spellings give the same number.
                        let q = (p * PROBABILITY_SCALE).round() as u32;
                        set_once(&mut probability, q, option)?;
                    }
                    _ => return Err(unknown(option)),
                }
            }
            match (mode, probability) {
                (Some("random"), Some(probability)) => Ok(Some(Match::Statistic { probability })),
                _ => Err("-m statistic needs --mode random --probability P".to_string()),
            }
        }
        "recent" => parse_recent(t).map(Some),
        "mark" => {
            let mut mark = None;
            while let Some((negated, option)) = t.module_option() {
                match option {
                    "--mark" => {
                        let (value, mask) = parse_value_mask(t.value(option)?)?;
                        set_once(
                            &mut mark,
                            Match::Mark {
                                value,
                                mask,
                                negated,
                            },
                            option,
                        )?;
                    }
                    _ => return Err(unknown(option)),
                }
            }
            mark.ok_or_else(|| "-m mark without --mark".to_string())
                .map(Some)
        }
        "conntrack" => {
            let (mut states, mut orig_dst, mut orig_dst_port) = (None, None, None);
            while let Some((negated, option)) = t.module_option() {
                match option {
                    "--ctstate" => {
                        let mut bits = 0;
                        for s in t.value(option)?.split(',') {
                            bits |= match s {
                                "INVALID" => CT_INVALID,
                                "NEW" => CT_NEW,
                                "RELATED" => CT_RELATED,
                                "ESTABLISHED" => CT_ESTABLISHED,
                                "UNTRACKED" => CT_UNTRACKED,
                                _ => return Err(format!("unsupported conntrack state {s:?}")),
                            };
                        }
                        set_once(&mut states, (bits, negated), option)?;
                    }
                    "--ctorigdst" => {
                        let net = parse_net(t.value(option)?)?;
                        set_once(&mut orig_dst, NetMatch { net, negated }, option)?;
                    }
                    "--ctorigdstport" => {
                        let port = parse_port(t.value(option)?)?;
                        set_once(&mut orig_dst_port, (port, negated), option)?;
                    }
                    _ => return Err(unknown(option)),
                }
            }
            if states.is_none() && orig_dst.is_none() && orig_dst_port.is_none() {
                return Err("-m conntrack without options".to_string());
            }
            Ok(Some(Match::Conntrack {
                states,
                orig_dst,
                orig_dst_port,
            }))
        }
        _ => Err(format!("unsupported match module {module:?}")),
    }
}

/// `-m recent`: `--rcheck --seconds T [--reap]` or `--set`, with `--name N` and, as
/// iptables-save adds them, `--mask <all ones> --rsource`.
fn parse_recent(t: &mut Tokens<'_>) -> Result<Match, String> {
    let (mut name, mut seconds, mut mask) = (None, None, None);
    let (mut rcheck, mut set, mut reap, mut rsource) = (false, false, false, false);
    let flag = |slot: &mut bool, option: &str| {
        if *slot {
            return Err(format!("option {option} given twice"));
        }
        *slot = true;
        Ok(())
    };
    while let Some((negated, option)) = t.module_option() {
        not_negated(negated, option)?;
        match option {
            "--name" => set_once(&mut name, t.value(option)?, option)?,
            "--seconds" => {
                let s = t.value(option)?;
                let s = parse_u32(s)
                    .ok()
                    .filter(|s| *s > 0)
                    .ok_or_else(|| format!("invalid --seconds {s:?}"))?;
                set_once(&mut seconds, s, option)?;
            }
            "--mask" => set_once(&mut mask, t.value(option)?, option)?,
            "--rcheck" => flag(&mut rcheck, option)?,
            "--set" => flag(&mut set, option)?,
            "--reap" => flag(&mut reap, option)?,
            "--rsource" => flag(&mut rsource, option)?,
            _ => return Err(format!("unsupported option {option} of -m recent")),
        }
    }
    if let Some(mask) = mask {
        let full = match IpAddr::from_str(mask) {
            Ok(IpAddr::V4(m)) => u32::from(m) == u32::MAX,
            Ok(IpAddr::V6(m)) => u128::from(m) == u128::MAX,
            Err(_) => false,
        };
        if !full {
            return Err(format!(
                "unsupported recent --mask {mask:?} (only a full mask)"
            ));
        }
    }
    let name = name.ok_or("-m recent without --name")?.to_string();
    match (rcheck, set, seconds) {
        (true, false, Some(seconds)) => Ok(Match::RecentCheck { name, seconds }),
        (false, true, None) if !reap => Ok(Match::RecentSet { name }),
        _ => Err("-m recent must be `--rcheck --seconds T [--reap]` or `--set`".to_string()),
    }
}

/// Parses `-j name` and its options.
fn parse_target(name: &str, t: &mut Tokens<'_>) -> Result<Target, String> {
    let unknown = |option: &str| format!("unsupported option {option} of -j {name}");
    let target = match name {
        "RETURN" => Target::Return,
        "ACCEPT" => Target::Accept,
        "DROP" => Target::Drop,
        "REJECT" => {
            if let Some((negated, option)) = t.module_option() {
                not_negated(negated, option)?;
                if option != "--reject-with" {
                    return Err(unknown(option));
                }
                let with = t.value(option)?;
                if with != "icmp-port-unreachable" && with != "icmp6-port-unreachable" {
                    return Err(format!("unsupported --reject-with {with:?}"));
                }
            }
            Target::Reject
        }
        "DNAT" => {
            let mut to = None;
            while let Some((negated, option)) = t.module_option() {
                not_negated(negated, option)?;
                if option != "--to-destination" {
                    return Err(unknown(option));
                }
                let value = t.value(option)?;
                let addr = SocketAddr::from_str(value)
                    .ok()
                    .filter(|a| a.port() != 0)
                    .ok_or_else(|| format!("unsupported --to-destination {value:?} (IP:PORT)"))?;
                set_once(&mut to, addr, option)?;
            }
            Target::Dnat(to.ok_or("-j DNAT without --to-destination")?)
        }
        "MARK" => {
            let mut mark = None;
            while let Some((negated, option)) = t.module_option() {
                not_negated(negated, option)?;
                let value = t.value(option)?;
                let (value, mask) = match option {
                    "--or-mark" => {
                        let v = parse_u32(value)?;
                        (v, v)
                    }
                    "--xor-mark" => (parse_u32(value)?, 0),
                    "--and-mark" => (0, !parse_u32(value)?),
                    "--set-xmark" => parse_value_mask(value)?,
                    "--set-mark" => {
                        let (v, m) = parse_value_mask(value)?;
                        (v, m | v)
                    }
                    _ => return Err(unknown(option)),
                };
                set_once(&mut mark, Target::Mark { value, mask }, "MARK option")?;
            }
            mark.ok_or("-j MARK without a mark option")?
        }
        "MASQUERADE" => {
            if let Some((negated, option)) = t.module_option() {
                not_negated(negated, option)?;
                if option != "--random-fully" {
                    return Err(unknown(option));
                }
            }
            Target::Masquerade
        }
        chain if names::is_owned_chain(chain) => Target::Jump(chain.to_string()),
        other => return Err(format!("unsupported target {other:?}")),
    };
    Ok(target)
}

// ---------------------------------------------------------------------------------------------
// Walking
// ---------------------------------------------------------------------------------------------

/// Where a walk starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hook {
    Prerouting,
    NatOutput,
    Postrouting,
    FilterInput,
    Forward,
    FilterOutput,
}

impl Hook {
    fn table(self) -> TableName {
        match self {
            Hook::Prerouting | Hook::NatOutput | Hook::Postrouting => TableName::Nat,
            Hook::FilterInput | Hook::Forward | Hook::FilterOutput => TableName::Filter,
        }
    }

    fn chain(self) -> &'static str {
        match self {
            Hook::Prerouting => "PREROUTING",
            Hook::NatOutput | Hook::FilterOutput => "OUTPUT",
            Hook::Postrouting => "POSTROUTING",
            Hook::FilterInput => "INPUT",
            Hook::Forward => "FORWARD",
        }
    }
}

/// A `recent --rcheck` passed on the way (it never matches a new connection).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Rcheck {
    name: String,
    seconds: u32,
    /// The chain the rule would have jumped to on a hit.
    target: Option<String>,
}

/// One possible path of the packet.
#[derive(Debug, Clone)]
struct Branch {
    probability: f64,
    mark: u32,
    dnat: Option<SocketAddr>,
    masquerade: bool,
    /// An owned filter chain accepted the packet while not DNATed.
    accepted: bool,
    rchecks: Vec<Rcheck>,
    /// `recent --set` names, with the chain that set them.
    sets: Vec<(String, String)>,
}

/// How a walk through a chain ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Exit {
    /// Fell through or RETURNed.
    Continue,
    Accept,
    Drop,
    Reject,
    /// DNAT or MASQUERADE done.
    Nat,
}

/// What one branch amounts to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Drop,
    Reject,
    Dnat(SocketAddr),
    Accept,
    NoMatch,
}

struct Walk<'a> {
    tracer: &'a Tracer,
    config: &'a ProxyConfig,
    packet: &'a Packet,
    /// Branches created so far.
    forks: Cell<usize>,
}

impl Walk<'_> {
    fn destination(&self, b: &Branch) -> IpAddr {
        b.dnat.map_or(self.packet.destination, |a| a.ip())
    }

    fn port(&self, b: &Branch) -> u16 {
        b.dnat.map_or(self.packet.port, |a| a.port())
    }

    fn run_hook(&self, hook: Hook, branch: Branch) -> Result<Vec<(Branch, Exit)>, TraceError> {
        let mut out = Vec::new();
        self.run_chain(hook, hook.chain(), branch, 0, &mut out)?;
        Ok(out)
    }

    /// Walks `chain` (of `hook`'s table), pushing every branch's exit to `out`.
    fn run_chain(
        &self,
        hook: Hook,
        chain: &str,
        branch: Branch,
        depth: usize,
        out: &mut Vec<(Branch, Exit)>,
    ) -> Result<(), TraceError> {
        let table = hook.table();
        if depth > MAX_DEPTH {
            return Err(TraceError::Inconsistent(format!(
                "{table} chain {chain}: jumps nested deeper than {MAX_DEPTH} (a loop?)"
            )));
        }
        let entries = match self.tracer.tables.get(&table).and_then(|c| c.get(chain)) {
            Some(entries) => entries.as_slice(),
            // A table or built-in chain absent from the ruleset holds none of our rules.
            None => &[],
        };
        let mut active = vec![branch];
        for entry in entries {
            if active.is_empty() {
                break;
            }
            let mut next = Vec::new();
            for branch in active {
                for (mut b, matched) in self.evaluate(&entry.rule, chain, branch)? {
                    if !matched {
                        next.push(b);
                        continue;
                    }
                    let wrong_hook = |what: &str| {
                        TraceError::Inconsistent(format!(
                            "{table} chain {chain}: rule {:?}: {what} reached from {table} {}",
                            entry.text,
                            hook.chain()
                        ))
                    };
                    match &entry.rule.target {
                        Target::Jump(to) => {
                            let mut sub = Vec::new();
                            self.run_chain(hook, to, b, depth + 1, &mut sub)?;
                            for (b, exit) in sub {
                                match exit {
                                    Exit::Continue => next.push(b),
                                    _ => out.push((b, exit)),
                                }
                            }
                        }
                        Target::Return => out.push((b, Exit::Continue)),
                        Target::Accept => out.push((b, Exit::Accept)),
                        Target::Drop => out.push((b, Exit::Drop)),
                        Target::Reject => out.push((b, Exit::Reject)),
                        Target::Mark { value, mask } => {
                            b.mark = (b.mark & !mask) ^ value;
                            next.push(b);
                        }
                        Target::Dnat(to) => {
                            if !matches!(hook, Hook::Prerouting | Hook::NatOutput) {
                                return Err(wrong_hook("DNAT"));
                            }
                            if IpFamily::of(&to.ip()) != IpFamily::of(&self.packet.destination) {
                                return Err(wrong_hook("DNAT to another IP family"));
                            }
                            b.dnat = Some(*to);
                            out.push((b, Exit::Nat));
                        }
                        Target::Masquerade => {
                            if hook != Hook::Postrouting {
                                return Err(wrong_hook("MASQUERADE"));
                            }
                            b.masquerade = true;
                            out.push((b, Exit::Nat));
                        }
                    }
                }
            }
            active = next;
        }
        out.extend(active.into_iter().map(|b| (b, Exit::Continue)));
        Ok(())
    }

    /// Evaluates a rule's matches on `branch`: each resulting branch and whether the rule
    /// matched it (`statistic` forks one branch into two).
    fn evaluate(
        &self,
        rule: &Rule,
        chain: &str,
        branch: Branch,
    ) -> Result<Vec<(Branch, bool)>, TraceError> {
        let dst = self.destination(&branch);
        let builtin = rule.source.is_none_or(|m| m.matches(self.packet.source))
            && rule.destination.is_none_or(|m| m.matches(dst))
            && rule.protocol.is_none_or(|p| p == self.packet.protocol);
        let mut pending = vec![(branch, builtin)];
        for m in &rule.matches {
            let mut next = Vec::with_capacity(pending.len());
            for (mut b, ok) in pending {
                if !ok {
                    next.push((b, false));
                    continue;
                }
                match m {
                    Match::Statistic { probability } => {
                        let p = f64::from(*probability) / PROBABILITY_SCALE;
                        if p >= 1.0 {
                            next.push((b, true));
                        } else if p <= 0.0 {
                            next.push((b, false));
                        } else {
                            let forks = self.forks.get() + 1;
                            if forks > MAX_BRANCHES {
                                return Err(TraceError::Unsupported(format!(
                                    "more than {MAX_BRANCHES} statistic branches"
                                )));
                            }
                            self.forks.set(forks);
                            let mut taken = b.clone();
                            taken.probability *= p;
                            b.probability *= 1.0 - p;
                            next.push((taken, true));
                            next.push((b, false));
                        }
                    }
                    Match::RecentCheck { name, seconds } => {
                        // No history: never matches, but affinity was offered.
                        let target = match &rule.target {
                            Target::Jump(to) => Some(to.clone()),
                            _ => None,
                        };
                        b.rchecks.push(Rcheck {
                            name: name.clone(),
                            seconds: *seconds,
                            target,
                        });
                        next.push((b, false));
                    }
                    Match::RecentSet { name } => {
                        b.sets.push((name.clone(), chain.to_string()));
                        next.push((b, true));
                    }
                    other => {
                        let ok = self.pure_match(other, &b);
                        next.push((b, ok));
                    }
                }
            }
            pending = next;
        }
        Ok(pending)
    }

    /// Matches without side effects or forks.
    fn pure_match(&self, m: &Match, b: &Branch) -> bool {
        let local = |ip| self.config.is_node_address(ip);
        match m {
            Match::Transport { protocol, dport } => {
                *protocol == self.packet.protocol && dport.is_none_or(|p| p == self.port(b))
            }
            Match::AddrTypeLocal {
                source,
                destination,
            } => {
                source.is_none_or(|neg| local(self.packet.source) != neg)
                    && destination.is_none_or(|neg| local(self.destination(b)) != neg)
            }
            Match::Mark {
                value,
                mask,
                negated,
            } => ((b.mark & mask) == *value) != *negated,
            Match::Conntrack {
                states,
                orig_dst,
                orig_dst_port,
            } => {
                // A new connection: state NEW; the original tuple is the packet as it came.
                states.is_none_or(|(bits, neg)| (bits & CT_NEW != 0) != neg)
                    && orig_dst.is_none_or(|m| m.matches(self.packet.destination))
                    && orig_dst_port.is_none_or(|(p, neg)| (p == self.packet.port) != neg)
            }
            // Handled by `evaluate`.
            Match::Statistic { .. } | Match::RecentCheck { .. } | Match::RecentSet { .. } => false,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Combining branches
// ---------------------------------------------------------------------------------------------

/// Merges the branches into one decision (see [`paths::combine`]); the affinity is checked
/// over every branch first, as `recent` pairs checks and sets across chains.
fn combine(packet: &Packet, outcomes: Vec<(Branch, Outcome)>) -> Result<Decision, TraceError> {
    let affinity = affinity(&outcomes)
        .map_err(|why| TraceError::Inconsistent(format!("packet {packet}: {why}")))?;
    let traced: Vec<TracedPath> = outcomes
        .iter()
        .map(|(branch, outcome)| TracedPath {
            probability: branch.probability,
            end: match outcome {
                Outcome::Drop => PathEnd::Drop,
                Outcome::Reject => PathEnd::Reject,
                Outcome::Accept => PathEnd::Accept,
                Outcome::NoMatch => PathEnd::NoMatch,
                Outcome::Dnat(endpoint) => PathEnd::Dnat {
                    endpoint: *endpoint,
                    masquerade: branch.masquerade,
                    affinity,
                },
            },
        })
        .collect();
    paths::combine(packet, &traced)
}

/// The affinity timeout of DNAT branches: none when no branch met `recent`; otherwise every
/// branch must have `--set` a name in some chain after passing an `--rcheck` of that name, with
/// the same timeout everywhere, that would have jumped to that very chain.
fn affinity(outcomes: &[(Branch, Outcome)]) -> Result<Option<u32>, String> {
    if outcomes
        .iter()
        .all(|(b, _)| b.rchecks.is_empty() && b.sets.is_empty())
    {
        return Ok(None);
    }
    let mut timeout = None;
    for (branch, outcome) in outcomes {
        let Outcome::Dnat(endpoint) = outcome else {
            continue;
        };
        for check in &branch.rchecks {
            if *timeout.get_or_insert(check.seconds) != check.seconds {
                return Err(format!(
                    "affinity timeouts differ ({} and {} seconds)",
                    timeout.unwrap_or_default(),
                    check.seconds
                ));
            }
        }
        let paired = branch.sets.iter().any(|(name, chain)| {
            branch
                .rchecks
                .iter()
                .any(|c| &c.name == name && c.target.as_deref() == Some(chain.as_str()))
        });
        if !paired {
            return Err(format!(
                "the path to endpoint {endpoint} does not both check and set the affinity \
                 of its endpoint chain"
            ));
        }
    }
    Ok(timeout)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::parse_save;
    use svcroute_core::decide::WeightedEndpoint;

    /// A ruleset as svcroute renders it (restore syntax, built-in chains declared), plus a few
    /// foreign rules (`FOREIGN`, `DOCKER`, docker's MASQUERADE, an ssh ACCEPT) that must be
    /// ignored.
    const OURS_V4: &str = r#"*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:KUBE-PROXY-FIREWALL - [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-EXTERNAL-SERVICES - [0:0]
:KUBE-NODEPORTS - [0:0]
:KUBE-FORWARD - [0:0]
:KUBE-FW-LB - [0:0]
:KUBE-CLUSTER-IPS - [0:0]
:FOREIGN - [0:0]
-A INPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes load balancer firewall" -j KUBE-PROXY-FIREWALL
-A INPUT -m comment --comment "kubernetes health check service ports" -j KUBE-NODEPORTS
-A INPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes externally-visible service portals" -j KUBE-EXTERNAL-SERVICES
-A INPUT -j FOREIGN
-A INPUT -p tcp -m tcp --dport 22 -j ACCEPT
-A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes load balancer firewall" -j KUBE-PROXY-FIREWALL
-A FORWARD -m comment --comment "kubernetes forwarding rules" -j KUBE-FORWARD
-A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes externally-visible service portals" -j KUBE-EXTERNAL-SERVICES
-A OUTPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes load balancer firewall" -j KUBE-PROXY-FIREWALL
-A OUTPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A FOREIGN -j DROP
-A KUBE-PROXY-FIREWALL -m comment --comment "ns/lb:http loadbalancer IP" -p tcp -m conntrack --ctorigdst 5.6.7.8/32 --ctorigdstport 80 -j KUBE-FW-LB
-A KUBE-FW-LB -m comment --comment "ns/lb:http loadbalancer IP" -s 1.2.3.0/24 -j RETURN
-A KUBE-FW-LB -m comment --comment "ns/lb:http loadbalancer IP" -j DROP
-A KUBE-SERVICES -m comment --comment "ns/empty:http has no endpoints" -d 10.96.0.20/32 -p tcp -m tcp --dport 80 -j REJECT
-A KUBE-SERVICES -m comment --comment "kubernetes cluster IPs" -j KUBE-CLUSTER-IPS
-A KUBE-CLUSTER-IPS -m comment --comment "ns/web cluster IP" -d 10.96.0.10/32 -j REJECT
-A KUBE-CLUSTER-IPS -m comment --comment "ns/aff cluster IP" -d 10.96.0.11/32 -j REJECT
-A KUBE-CLUSTER-IPS -m comment --comment "ns/empty cluster IP" -d 10.96.0.20/32 -j REJECT
-A KUBE-CLUSTER-IPS -m comment --comment "service CIDR" -d 10.96.0.0/16 -j DROP
-A KUBE-EXTERNAL-SERVICES -m comment --comment "ns/empty:http has no endpoints" -m addrtype --dst-type LOCAL -p tcp -m tcp --dport 30020 -j REJECT
-A KUBE-NODEPORTS -m comment --comment "ns/local:http health check node port" -p tcp -m tcp --dport 30999 -j ACCEPT
-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP
-A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" -m mark --mark 0x4000/0x4000 -j ACCEPT
-A KUBE-FORWARD -m comment --comment "kubernetes forwarding conntrack rule" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-POSTROUTING - [0:0]
:KUBE-MARK-MASQ - [0:0]
:KUBE-NODEPORTS - [0:0]
:KUBE-EXT-WEB - [0:0]
:KUBE-SVC-WEB - [0:0]
:KUBE-SEP-A - [0:0]
:KUBE-SEP-B - [0:0]
:KUBE-SEP-C - [0:0]
:KUBE-SVC-AFF - [0:0]
:KUBE-SEP-D - [0:0]
:KUBE-SEP-E - [0:0]
:DOCKER - [0:0]
-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER
-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING
-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE
-A DOCKER -i docker0 -j RETURN
-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN
-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000
-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE --random-fully
-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000
-A KUBE-SERVICES -m comment --comment "ns/web:http cluster IP" -d 10.96.0.10/32 -p tcp -m tcp --dport 80 -j KUBE-SVC-WEB
-A KUBE-SERVICES -m comment --comment "ns/aff:http cluster IP" -d 10.96.0.11/32 -p tcp -m tcp --dport 80 -j KUBE-SVC-AFF
-A KUBE-SERVICES -m comment --comment "ns/web:http loadbalancer IP" -d 5.6.7.8/32 -p tcp -m tcp --dport 80 -j KUBE-EXT-WEB
-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must be the last rule in this chain" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS
-A KUBE-NODEPORTS -m comment --comment ns/web:http -p tcp -m tcp --dport 30080 -j KUBE-EXT-WEB
-A KUBE-EXT-WEB -m comment --comment "masquerade traffic for ns/web:http external destinations" -j KUBE-MARK-MASQ
-A KUBE-EXT-WEB -j KUBE-SVC-WEB
-A KUBE-SVC-WEB -m comment --comment "ns/web:http cluster IP" ! -s 10.244.0.0/16 -d 10.96.0.10/32 -p tcp -m tcp --dport 80 -j KUBE-MARK-MASQ
-A KUBE-SVC-WEB -m comment --comment "ns/web:http -> 10.244.1.1:8080" -m statistic --mode random --probability 0.3333333333 -j KUBE-SEP-A
-A KUBE-SVC-WEB -m comment --comment "ns/web:http -> 10.244.1.2:8080" -m statistic --mode random --probability 0.5000000000 -j KUBE-SEP-B
-A KUBE-SVC-WEB -m comment --comment "ns/web:http -> 10.244.2.3:8080" -j KUBE-SEP-C
-A KUBE-SEP-A -m comment --comment ns/web:http -s 10.244.1.1/32 -j KUBE-MARK-MASQ
-A KUBE-SEP-A -m comment --comment ns/web:http -p tcp -m tcp -j DNAT --to-destination 10.244.1.1:8080
-A KUBE-SEP-B -m comment --comment ns/web:http -s 10.244.1.2/32 -j KUBE-MARK-MASQ
-A KUBE-SEP-B -m comment --comment ns/web:http -p tcp -m tcp -j DNAT --to-destination 10.244.1.2:8080
-A KUBE-SEP-C -m comment --comment ns/web:http -s 10.244.2.3/32 -j KUBE-MARK-MASQ
-A KUBE-SEP-C -m comment --comment ns/web:http -p tcp -m tcp -j DNAT --to-destination 10.244.2.3:8080
-A KUBE-SVC-AFF -m comment --comment "ns/aff:http cluster IP" ! -s 10.244.0.0/16 -d 10.96.0.11/32 -p tcp -m tcp --dport 80 -j KUBE-MARK-MASQ
-A KUBE-SVC-AFF -m comment --comment "ns/aff:http -> 10.244.1.4:80" -m recent --name KUBE-SEP-D --rcheck --seconds 10800 --reap -j KUBE-SEP-D
-A KUBE-SVC-AFF -m comment --comment "ns/aff:http -> 192.168.0.10:80" -m recent --name KUBE-SEP-E --rcheck --seconds 10800 --reap -j KUBE-SEP-E
-A KUBE-SVC-AFF -m comment --comment "ns/aff:http -> 10.244.1.4:80" -m statistic --mode random --probability 0.5000000000 -j KUBE-SEP-D
-A KUBE-SVC-AFF -m comment --comment "ns/aff:http -> 192.168.0.10:80" -j KUBE-SEP-E
-A KUBE-SEP-D -m comment --comment ns/aff:http -s 10.244.1.4/32 -j KUBE-MARK-MASQ
-A KUBE-SEP-D -m comment --comment ns/aff:http -p tcp -m recent --name KUBE-SEP-D --set -m tcp -j DNAT --to-destination 10.244.1.4:80
-A KUBE-SEP-E -m comment --comment ns/aff:http -s 192.168.0.10/32 -j KUBE-MARK-MASQ
-A KUBE-SEP-E -m comment --comment ns/aff:http -p tcp -m recent --name KUBE-SEP-E --set -m tcp -j DNAT --to-destination 192.168.0.10:80
COMMIT
"#;

    /// `OURS_V4` after `iptables-restore --noflush` and `iptables-save` (iptables 1.8.9 nft).
    const SAVE_V4: &str = r#"*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:FOREIGN - [0:0]
:KUBE-CLUSTER-IPS - [0:0]
:KUBE-EXTERNAL-SERVICES - [0:0]
:KUBE-FORWARD - [0:0]
:KUBE-FW-LB - [0:0]
:KUBE-NODEPORTS - [0:0]
:KUBE-PROXY-FIREWALL - [0:0]
:KUBE-SERVICES - [0:0]
-A INPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes load balancer firewall" -j KUBE-PROXY-FIREWALL
-A INPUT -m comment --comment "kubernetes health check service ports" -j KUBE-NODEPORTS
-A INPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes externally-visible service portals" -j KUBE-EXTERNAL-SERVICES
-A INPUT -j FOREIGN
-A INPUT -p tcp -m tcp --dport 22 -j ACCEPT
-A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes load balancer firewall" -j KUBE-PROXY-FIREWALL
-A FORWARD -m comment --comment "kubernetes forwarding rules" -j KUBE-FORWARD
-A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes externally-visible service portals" -j KUBE-EXTERNAL-SERVICES
-A OUTPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes load balancer firewall" -j KUBE-PROXY-FIREWALL
-A OUTPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A FOREIGN -j DROP
-A KUBE-CLUSTER-IPS -d 10.96.0.10/32 -m comment --comment "ns/web cluster IP" -j REJECT --reject-with icmp-port-unreachable
-A KUBE-CLUSTER-IPS -d 10.96.0.11/32 -m comment --comment "ns/aff cluster IP" -j REJECT --reject-with icmp-port-unreachable
-A KUBE-CLUSTER-IPS -d 10.96.0.20/32 -m comment --comment "ns/empty cluster IP" -j REJECT --reject-with icmp-port-unreachable
-A KUBE-CLUSTER-IPS -d 10.96.0.0/16 -m comment --comment "service CIDR" -j DROP
-A KUBE-EXTERNAL-SERVICES -p tcp -m comment --comment "ns/empty:http has no endpoints" -m addrtype --dst-type LOCAL -m tcp --dport 30020 -j REJECT --reject-with icmp-port-unreachable
-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP
-A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" -m mark --mark 0x4000/0x4000 -j ACCEPT
-A KUBE-FORWARD -m comment --comment "kubernetes forwarding conntrack rule" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A KUBE-FW-LB -s 1.2.3.0/24 -m comment --comment "ns/lb:http loadbalancer IP" -j RETURN
-A KUBE-FW-LB -m comment --comment "ns/lb:http loadbalancer IP" -j DROP
-A KUBE-NODEPORTS -p tcp -m comment --comment "ns/local:http health check node port" -m tcp --dport 30999 -j ACCEPT
-A KUBE-PROXY-FIREWALL -p tcp -m comment --comment "ns/lb:http loadbalancer IP" -m conntrack --ctorigdst 5.6.7.8 --ctorigdstport 80 -j KUBE-FW-LB
-A KUBE-SERVICES -d 10.96.0.20/32 -p tcp -m comment --comment "ns/empty:http has no endpoints" -m tcp --dport 80 -j REJECT --reject-with icmp-port-unreachable
-A KUBE-SERVICES -m comment --comment "kubernetes cluster IPs" -j KUBE-CLUSTER-IPS
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:DOCKER - [0:0]
:KUBE-EXT-WEB - [0:0]
:KUBE-MARK-MASQ - [0:0]
:KUBE-NODEPORTS - [0:0]
:KUBE-POSTROUTING - [0:0]
:KUBE-SEP-A - [0:0]
:KUBE-SEP-B - [0:0]
:KUBE-SEP-C - [0:0]
:KUBE-SEP-D - [0:0]
:KUBE-SEP-E - [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-SVC-AFF - [0:0]
:KUBE-SVC-WEB - [0:0]
-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER
-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING
-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE
-A DOCKER -i docker0 -j RETURN
-A KUBE-EXT-WEB -m comment --comment "masquerade traffic for ns/web:http external destinations" -j KUBE-MARK-MASQ
-A KUBE-EXT-WEB -j KUBE-SVC-WEB
-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000
-A KUBE-NODEPORTS -p tcp -m comment --comment "ns/web:http" -m tcp --dport 30080 -j KUBE-EXT-WEB
-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN
-A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0
-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE --random-fully
-A KUBE-SEP-A -s 10.244.1.1/32 -m comment --comment "ns/web:http" -j KUBE-MARK-MASQ
-A KUBE-SEP-A -p tcp -m comment --comment "ns/web:http" -m tcp -j DNAT --to-destination 10.244.1.1:8080
-A KUBE-SEP-B -s 10.244.1.2/32 -m comment --comment "ns/web:http" -j KUBE-MARK-MASQ
-A KUBE-SEP-B -p tcp -m comment --comment "ns/web:http" -m tcp -j DNAT --to-destination 10.244.1.2:8080
-A KUBE-SEP-C -s 10.244.2.3/32 -m comment --comment "ns/web:http" -j KUBE-MARK-MASQ
-A KUBE-SEP-C -p tcp -m comment --comment "ns/web:http" -m tcp -j DNAT --to-destination 10.244.2.3:8080
-A KUBE-SEP-D -s 10.244.1.4/32 -m comment --comment "ns/aff:http" -j KUBE-MARK-MASQ
-A KUBE-SEP-D -p tcp -m comment --comment "ns/aff:http" -m recent --set --name KUBE-SEP-D --mask 255.255.255.255 --rsource -m tcp -j DNAT --to-destination 10.244.1.4:80
-A KUBE-SEP-E -s 192.168.0.10/32 -m comment --comment "ns/aff:http" -j KUBE-MARK-MASQ
-A KUBE-SEP-E -p tcp -m comment --comment "ns/aff:http" -m recent --set --name KUBE-SEP-E --mask 255.255.255.255 --rsource -m tcp -j DNAT --to-destination 192.168.0.10:80
-A KUBE-SERVICES -d 10.96.0.10/32 -p tcp -m comment --comment "ns/web:http cluster IP" -m tcp --dport 80 -j KUBE-SVC-WEB
-A KUBE-SERVICES -d 10.96.0.11/32 -p tcp -m comment --comment "ns/aff:http cluster IP" -m tcp --dport 80 -j KUBE-SVC-AFF
-A KUBE-SERVICES -d 5.6.7.8/32 -p tcp -m comment --comment "ns/web:http loadbalancer IP" -m tcp --dport 80 -j KUBE-EXT-WEB
-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must be the last rule in this chain" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS
-A KUBE-SVC-AFF ! -s 10.244.0.0/16 -d 10.96.0.11/32 -p tcp -m comment --comment "ns/aff:http cluster IP" -m tcp --dport 80 -j KUBE-MARK-MASQ
-A KUBE-SVC-AFF -m comment --comment "ns/aff:http -> 10.244.1.4:80" -m recent --rcheck --seconds 10800 --reap --name KUBE-SEP-D --mask 255.255.255.255 --rsource -j KUBE-SEP-D
-A KUBE-SVC-AFF -m comment --comment "ns/aff:http -> 192.168.0.10:80" -m recent --rcheck --seconds 10800 --reap --name KUBE-SEP-E --mask 255.255.255.255 --rsource -j KUBE-SEP-E
-A KUBE-SVC-AFF -m comment --comment "ns/aff:http -> 10.244.1.4:80" -m statistic --mode random --probability 0.50000000000 -j KUBE-SEP-D
-A KUBE-SVC-AFF -m comment --comment "ns/aff:http -> 192.168.0.10:80" -j KUBE-SEP-E
-A KUBE-SVC-WEB ! -s 10.244.0.0/16 -d 10.96.0.10/32 -p tcp -m comment --comment "ns/web:http cluster IP" -m tcp --dport 80 -j KUBE-MARK-MASQ
-A KUBE-SVC-WEB -m comment --comment "ns/web:http -> 10.244.1.1:8080" -m statistic --mode random --probability 0.33333333349 -j KUBE-SEP-A
-A KUBE-SVC-WEB -m comment --comment "ns/web:http -> 10.244.1.2:8080" -m statistic --mode random --probability 0.50000000000 -j KUBE-SEP-B
-A KUBE-SVC-WEB -m comment --comment "ns/web:http -> 10.244.2.3:8080" -j KUBE-SEP-C
COMMIT
"#;

    const OURS_V6: &str = r#"*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:KUBE-SERVICES - [0:0]
-A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A OUTPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A KUBE-SERVICES -m comment --comment "ns/empty:dns has no endpoints" -d fd00:96::20/128 -p udp -m udp --dport 53 -j REJECT --reject-with icmp6-port-unreachable
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-POSTROUTING - [0:0]
:KUBE-MARK-MASQ - [0:0]
:KUBE-SVC-V6 - [0:0]
:KUBE-SEP-V6A - [0:0]
:KUBE-SEP-V6B - [0:0]
-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING
-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN
-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000
-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE --random-fully
-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000
-A KUBE-SERVICES -m comment --comment "ns/v6:dns cluster IP" -d fd00:96::10/128 -p udp -m udp --dport 53 -j KUBE-SVC-V6
-A KUBE-SVC-V6 -m comment --comment "ns/v6:dns cluster IP" ! -s fd00:244::/64 -d fd00:96::10/128 -p udp -m udp --dport 53 -j KUBE-MARK-MASQ
-A KUBE-SVC-V6 -m recent --name KUBE-SEP-V6A --rcheck --seconds 60 --reap -j KUBE-SEP-V6A
-A KUBE-SVC-V6 -m recent --name KUBE-SEP-V6B --rcheck --seconds 60 --reap -j KUBE-SEP-V6B
-A KUBE-SVC-V6 -m statistic --mode random --probability 0.5000000000 -j KUBE-SEP-V6A
-A KUBE-SVC-V6 -j KUBE-SEP-V6B
-A KUBE-SEP-V6A -s fd00:244::5/128 -j KUBE-MARK-MASQ
-A KUBE-SEP-V6A -p udp -m recent --name KUBE-SEP-V6A --set -m udp -j DNAT --to-destination [fd00:244::5]:5353
-A KUBE-SEP-V6B -s fd00:244::6/128 -j KUBE-MARK-MASQ
-A KUBE-SEP-V6B -p udp -m recent --name KUBE-SEP-V6B --set -m udp -j DNAT --to-destination [fd00:244::6]:5353
COMMIT
"#;

    /// `OURS_V6` through `ip6tables-restore --noflush` and `ip6tables-save`.
    const SAVE_V6: &str = r#"*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:KUBE-SERVICES - [0:0]
-A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A OUTPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A KUBE-SERVICES -d fd00:96::20/128 -p udp -m comment --comment "ns/empty:dns has no endpoints" -m udp --dport 53 -j REJECT --reject-with icmp6-port-unreachable
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:KUBE-MARK-MASQ - [0:0]
:KUBE-POSTROUTING - [0:0]
:KUBE-SEP-V6A - [0:0]
:KUBE-SEP-V6B - [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-SVC-V6 - [0:0]
-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING
-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000
-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN
-A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0
-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE --random-fully
-A KUBE-SEP-V6A -s fd00:244::5/128 -j KUBE-MARK-MASQ
-A KUBE-SEP-V6A -p udp -m recent --set --name KUBE-SEP-V6A --mask ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff --rsource -m udp -j DNAT --to-destination [fd00:244::5]:5353
-A KUBE-SEP-V6B -s fd00:244::6/128 -j KUBE-MARK-MASQ
-A KUBE-SEP-V6B -p udp -m recent --set --name KUBE-SEP-V6B --mask ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff --rsource -m udp -j DNAT --to-destination [fd00:244::6]:5353
-A KUBE-SERVICES -d fd00:96::10/128 -p udp -m comment --comment "ns/v6:dns cluster IP" -m udp --dport 53 -j KUBE-SVC-V6
-A KUBE-SVC-V6 ! -s fd00:244::/64 -d fd00:96::10/128 -p udp -m comment --comment "ns/v6:dns cluster IP" -m udp --dport 53 -j KUBE-MARK-MASQ
-A KUBE-SVC-V6 -m recent --rcheck --seconds 60 --reap --name KUBE-SEP-V6A --mask ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff --rsource -j KUBE-SEP-V6A
-A KUBE-SVC-V6 -m recent --rcheck --seconds 60 --reap --name KUBE-SEP-V6B --mask ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff --rsource -j KUBE-SEP-V6B
-A KUBE-SVC-V6 -m statistic --mode random --probability 0.50000000000 -j KUBE-SEP-V6A
-A KUBE-SVC-V6 -j KUBE-SEP-V6B
COMMIT
"#;

    fn config() -> ProxyConfig {
        ProxyConfig {
            node_ips: vec!["192.168.0.10".parse().unwrap(), "fd00::10".parse().unwrap()],
            cluster_cidrs: vec![
                "10.244.0.0/16".parse().unwrap(),
                "fd00:244::/64".parse().unwrap(),
            ],
            ..ProxyConfig::default()
        }
    }

    fn tracer(text: &str) -> Tracer {
        Tracer::new(&parse_save(text).unwrap()).unwrap()
    }

    fn trace(t: &Tracer, packet: &str) -> Decision {
        t.trace(&config(), &packet.parse().unwrap())
            .unwrap_or_else(|e| panic!("{packet}: {e}"))
    }

    fn trace_err(t: &Tracer, packet: &str) -> TraceError {
        t.trace(&config(), &packet.parse().unwrap()).unwrap_err()
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

    fn simple(v: Verdict) -> Decision {
        Decision::simple(v)
    }

    fn assert_decision(t: &Tracer, packet: &str, expected: &Decision) {
        let got = trace(t, packet);
        assert!(
            got.equivalent(expected),
            "{packet}:\n got      {got:?}\n expected {expected:?}"
        );
    }

    const THIRD: f64 = 1.0 / 3.0;

    fn web(masq: [bool; 3]) -> Decision {
        dnat(
            &[
                ("10.244.1.1:8080", THIRD, masq[0]),
                ("10.244.1.2:8080", THIRD, masq[1]),
                ("10.244.2.3:8080", THIRD, masq[2]),
            ],
            None,
        )
    }

    /// The IPv4 expectations, for both syntaxes.
    fn check_v4(t: &Tracer) {
        // ClusterIP, 3 endpoints, from a pod: no masquerade.
        assert_decision(t, "10.244.9.9 10.96.0.10:80", &web([false; 3]));
        // From outside the cluster CIDR: masqueraded.
        assert_decision(t, "172.16.0.1 10.96.0.10:80", &web([true; 3]));
        // From the node itself (nat OUTPUT, filter OUTPUT).
        assert_decision(t, "192.168.0.10 10.96.0.10:80", &web([true; 3]));
        // Hairpin: an endpoint reaching itself is masqueraded, only on that endpoint.
        assert_decision(t, "10.244.1.1 10.96.0.10:80", &web([true, false, false]));
        // Affinity; endpoint E is the node itself (filter INPUT after DNAT).
        assert_decision(
            t,
            "10.244.9.9 10.96.0.11:80",
            &dnat(
                &[
                    ("10.244.1.4:80", 0.5, false),
                    ("192.168.0.10:80", 0.5, false),
                ],
                Some(10800),
            ),
        );
        assert_decision(
            t,
            "192.168.0.10 10.96.0.11:80",
            &dnat(
                &[("10.244.1.4:80", 0.5, true), ("192.168.0.10:80", 0.5, true)],
                Some(10800),
            ),
        );
        // No endpoints: REJECT in filter, forwarded or from the node.
        assert_decision(t, "10.244.9.9 10.96.0.20:80", &simple(Verdict::Reject));
        assert_decision(t, "192.168.0.10 10.96.0.20:80", &simple(Verdict::Reject));
        // Other ports of a ClusterIP are rejected, the rest of the service CIDR dropped.
        assert_decision(t, "10.244.9.9 10.96.0.10:81", &simple(Verdict::Reject));
        assert_decision(t, "10.244.9.9 10.96.0.10:80/udp", &simple(Verdict::Reject));
        assert_decision(t, "10.244.9.9 10.96.5.5:80", &simple(Verdict::Drop));
        // LB IP with source ranges: DNATed first, then dropped by the firewall on the
        // original destination; allowed sources get the service, masqueraded (KUBE-EXT).
        assert_decision(t, "9.9.9.9 5.6.7.8:80", &simple(Verdict::Drop));
        assert_decision(t, "1.2.3.4 5.6.7.8:80", &web([true; 3]));
        // NodePort through addrtype LOCAL.
        assert_decision(t, "172.16.0.1 192.168.0.10:30080", &web([true; 3]));
        assert_decision(t, "172.16.0.1 172.16.0.99:30080", &simple(Verdict::NoMatch));
        assert_decision(t, "172.16.0.1 192.168.0.10:30020", &simple(Verdict::Reject));
        // Health-check NodePort: ACCEPT in INPUT (the foreign DROP after it is not ours).
        assert_decision(t, "172.16.0.1 192.168.0.10:30999", &simple(Verdict::Accept));
        assert_decision(
            t,
            "172.16.0.1 192.168.0.10:30999/udp",
            &simple(Verdict::NoMatch),
        );
        // Not a service packet (docker's rules are not ours).
        assert_decision(t, "172.16.0.1 8.8.8.8:53/udp", &simple(Verdict::NoMatch));
        assert_decision(t, "172.17.0.2 8.8.8.8:53/udp", &simple(Verdict::NoMatch));
        assert_decision(t, "172.16.0.1 192.168.0.10:22", &simple(Verdict::NoMatch));
    }

    fn check_v6(t: &Tracer) {
        let v6 = |masq: [bool; 2]| {
            dnat(
                &[
                    ("[fd00:244::5]:5353", 0.5, masq[0]),
                    ("[fd00:244::6]:5353", 0.5, masq[1]),
                ],
                Some(60),
            )
        };
        assert_decision(t, "fd00:244::9 [fd00:96::10]:53/udp", &v6([false, false]));
        assert_decision(t, "fd00:1::1 [fd00:96::10]:53/udp", &v6([true, true]));
        assert_decision(t, "fd00:244::5 [fd00:96::10]:53/udp", &v6([true, false]));
        assert_decision(t, "fd00::10 [fd00:96::10]:53/udp", &v6([true, true]));
        assert_decision(t, "fd00:244::9 [fd00:96::10]:53", &simple(Verdict::NoMatch));
        assert_decision(
            t,
            "fd00:244::9 [fd00:96::20]:53/udp",
            &simple(Verdict::Reject),
        );
    }

    #[test]
    fn ipv4_our_syntax() {
        check_v4(&tracer(OURS_V4));
    }

    #[test]
    fn ipv4_save_syntax() {
        check_v4(&tracer(SAVE_V4));
    }

    #[test]
    fn ipv6_our_syntax() {
        check_v6(&tracer(OURS_V6));
    }

    #[test]
    fn ipv6_save_syntax() {
        check_v6(&tracer(SAVE_V6));
    }

    /// Our rendering and iptables-save's normalisation compile to identical rules.
    #[test]
    fn both_syntaxes_compile_to_the_same_rules() {
        for (ours, saved) in [(OURS_V4, SAVE_V4), (OURS_V6, SAVE_V6)] {
            let strip = |t: &Tracer| -> BTreeMap<TableName, BTreeMap<String, Vec<Rule>>> {
                t.tables
                    .iter()
                    .map(|(table, chains)| {
                        let chains = chains
                            .iter()
                            .map(|(c, e)| (c.clone(), e.iter().map(|e| e.rule.clone()).collect()))
                            .collect();
                        (*table, chains)
                    })
                    .collect()
            };
            assert_eq!(strip(&tracer(ours)), strip(&tracer(saved)));
        }
    }

    #[test]
    fn equivalent_spellings() {
        let same = |a: &str, b: &str| {
            assert_eq!(parse_rule(a).unwrap(), parse_rule(b).unwrap(), "{a} vs {b}");
        };
        same(
            "-m statistic --mode random --probability 0.3333333333 -j KUBE-SEP-A",
            "-m statistic --mode random --probability 0.33333333349 -j KUBE-SEP-A",
        );
        same(
            "-j MARK --or-mark 0x4000",
            "-j MARK --set-xmark 0x4000/0x4000",
        );
        same(
            "-j MARK --xor-mark 0x4000",
            "-j MARK --set-xmark 0x4000/0x0",
        );
        same(
            "-j MARK --set-mark 0x10",
            "-j MARK --set-xmark 0x10/0xffffffff",
        );
        same(
            "-j MARK --and-mark 0x10",
            "-j MARK --set-xmark 0x0/0xffffffef",
        );
        same(
            "-m mark --mark 16 -j RETURN",
            "-m mark --mark 0x10/0xffffffff -j RETURN",
        );
        same("-j REJECT", "-j REJECT --reject-with icmp-port-unreachable");
        same("-s 10.0.0.1 -j RETURN", "-s 10.0.0.1/32 -j RETURN");
        same("-s 10.1.2.3/16 -j RETURN", "-s 10.1.0.0/16 -j RETURN");
        same(
            "-p tcp --dport 80 -j RETURN",
            "-p tcp -m tcp --dport 80 -j RETURN",
        );
        same(
            "-m comment --comment x -d 10.0.0.1 -p tcp -m tcp --dport 80 -j ACCEPT",
            "-d 10.0.0.1/32 -p tcp -m comment --comment \"x\" -m tcp --dport 80 -j ACCEPT",
        );
        same(
            "-m conntrack --ctorigdst 5.6.7.8/32 --ctorigdstport 80 -j DROP",
            "-m conntrack --ctorigdstport 80 --ctorigdst 5.6.7.8 -j DROP",
        );
        same(
            "-m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT",
            "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
        );
        same(
            "-m recent --name KUBE-SEP-X --rcheck --seconds 10 --reap -j KUBE-SEP-X",
            "-m recent --rcheck --seconds 10 --reap --name KUBE-SEP-X --mask 255.255.255.255 --rsource -j KUBE-SEP-X",
        );
        same(
            "-m recent --name KUBE-SEP-X --set -j ACCEPT",
            "-m recent --set --name KUBE-SEP-X --mask ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff --rsource -j ACCEPT",
        );
        same(
            "-m addrtype ! --dst-type LOCAL -m addrtype --src-type LOCAL -j RETURN",
            "-m addrtype ! --dst-type LOCAL -m addrtype --src-type LOCAL -j RETURN",
        );
    }

    /// One owned chain holding `rule`, reached from PREROUTING.
    fn single(rule: &str) -> Result<Tracer, TraceError> {
        // Built by hand: parse_save would already refuse some of these texts.
        let mut rs = parse_save(
            "*nat\n:PREROUTING ACCEPT [0:0]\n:KUBE-SVC-X - [0:0]\n:KUBE-SVC-Y - [0:0]\n\
             -A PREROUTING -j KUBE-SVC-X\nCOMMIT\n",
        )
        .unwrap();
        let chains = rs.tables.get_mut(&TableName::Nat).unwrap();
        chains.get_mut("KUBE-SVC-X").unwrap().push(rule.to_string());
        Tracer::new(&rs)
    }

    #[test]
    fn unsupported_constructs_are_refused() {
        for rule in [
            "-m physdev --physdev-is-in -j ACCEPT",
            "-p tcp -m tcp --sport 5 -j ACCEPT",
            "-p tcp -m tcp --dport 80:90 -j ACCEPT",
            "-p tcp -m tcp ! --dport 80 -j ACCEPT",
            "-m tcp --dport 80 -j ACCEPT",
            "-p udp -m tcp --dport 80 -j ACCEPT",
            "-i eth0 -j ACCEPT",
            "! -p tcp -j ACCEPT",
            "-p icmp -j ACCEPT",
            "-s example.com -j ACCEPT",
            "-s 10.0.0.0/255.0.0.0 -j ACCEPT",
            "-d 10.0.0.1",
            "-m comment --comment x",
            "-j LOG",
            "-j SNAT --to-source 1.2.3.4",
            "-j FOREIGN",
            "-g KUBE-SVC-Y",
            "-j KUBE-SVC-Y -j KUBE-SVC-Y",
            "-j ACCEPT --bogus",
            "-j REJECT --reject-with tcp-reset",
            "-j DNAT --to-destination 10.0.0.1",
            "-j DNAT --to-destination 10.0.0.1:80-90",
            "-j DNAT --to-destination 10.0.0.1:80 --random",
            "-j MARK --set-xmark 0x1/0x1 --or-mark 0x2",
            "-j MARK",
            "-j MASQUERADE --to-ports 80",
            "-m statistic --mode nth --every 2 -j ACCEPT",
            "-m statistic --mode random --probability 1.5 -j ACCEPT",
            "-m statistic --mode random ! --probability 0.5 -j ACCEPT",
            "-m recent --name X --rcheck --seconds 10 --rdest -j KUBE-SVC-Y",
            "-m recent --name X --rcheck --seconds 10 --mask 255.255.255.0 -j KUBE-SVC-Y",
            "-m recent --name X --rcheck -j KUBE-SVC-Y",
            "-m recent --name X --update --seconds 10 -j KUBE-SVC-Y",
            "-m recent --rcheck --seconds 10 -j KUBE-SVC-Y",
            "-m recent --name X --set --rcheck --seconds 5 -j KUBE-SVC-Y",
            "-m addrtype --dst-type UNICAST -j ACCEPT",
            "-m addrtype --dst-type LOCAL --limit-iface-in -j ACCEPT",
            "-m mark --mark 010 -j ACCEPT",
            "-m conntrack --ctstate DNAT -j ACCEPT",
            "-m conntrack --ctstatus CONFIRMED -j ACCEPT",
            "-m conntrack -j ACCEPT",
            "-m comment --comment \"unterminated -j ACCEPT",
            "! -j ACCEPT",
            "-j ACCEPT !",
            "-m",
        ] {
            match single(rule) {
                Err(TraceError::Unsupported(msg)) => {
                    assert!(msg.contains("KUBE-SVC-X"), "{rule}: {msg}");
                }
                other => panic!("{rule}: expected Unsupported, got {other:?}"),
            }
        }
    }

    #[test]
    fn chains_of_kubelet_and_others_are_not_ours() {
        // kubelet's firewall uses a conntrack state the tracer does not model; it is not ours.
        let text = "*filter\n:INPUT ACCEPT [0:0]\n:KUBE-FIREWALL - [0:0]\n\
                    -A INPUT -j KUBE-FIREWALL\n\
                    -A KUBE-FIREWALL ! -s 127.0.0.0/8 -d 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP\n\
                    COMMIT\n";
        let tracer = Tracer::new(&parse_save(text).unwrap()).unwrap();
        let packet: Packet = "10.0.0.1 127.0.0.1:80".parse().unwrap();
        let decision = tracer.trace(&ProxyConfig::default(), &packet).unwrap();
        assert_eq!(decision.verdict, Verdict::NoMatch);
    }

    #[test]
    fn builtin_rules_jumping_to_owned_chains_must_parse() {
        let text = "*filter\n:INPUT ACCEPT [0:0]\n:KUBE-SVC-X - [0:0]\n-A INPUT -i eth0 -j KUBE-SVC-X\nCOMMIT\n";
        assert!(matches!(
            Tracer::new(&parse_save(text).unwrap()),
            Err(TraceError::Unsupported(m)) if m.contains("INPUT")
        ));
        let text =
            "*filter\n:INPUT ACCEPT [0:0]\n:KUBE-SVC-X - [0:0]\n-A INPUT -g KUBE-SVC-X\nCOMMIT\n";
        assert!(matches!(
            Tracer::new(&parse_save(text).unwrap()),
            Err(TraceError::Unsupported(_))
        ));
    }

    #[test]
    fn jumps_to_missing_chains_are_inconsistent() {
        assert!(matches!(
            single("-j KUBE-SEP-GONE"),
            Err(TraceError::Inconsistent(m)) if m.contains("KUBE-SEP-GONE")
        ));
        let text = "*nat\n:PREROUTING ACCEPT [0:0]\n-A PREROUTING -j KUBE-SERVICES\nCOMMIT\n";
        assert!(matches!(
            Tracer::new(&parse_save(text).unwrap()),
            Err(TraceError::Inconsistent(_))
        ));
    }

    fn nat_tracer(chains: &[&str], rules: &[&str]) -> Tracer {
        let mut text = "*nat\n:PREROUTING ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n".to_string();
        for c in chains {
            text.push_str(&format!(":{c} - [0:0]\n"));
        }
        for r in rules {
            text.push_str(&format!("-A {r}\n"));
        }
        text.push_str("COMMIT\n");
        tracer(&text)
    }

    const PKT: &str = "10.244.9.9 10.96.0.10:80";

    #[test]
    fn loops_are_inconsistent() {
        let t = nat_tracer(
            &["KUBE-SVC-A", "KUBE-SVC-B"],
            &[
                "PREROUTING -j KUBE-SVC-A",
                "KUBE-SVC-A -j KUBE-SVC-B",
                "KUBE-SVC-B -j KUBE-SVC-A",
            ],
        );
        assert!(matches!(trace_err(&t, PKT), TraceError::Inconsistent(_)));
    }

    #[test]
    fn mixed_verdicts_are_inconsistent() {
        // Half the packets DNAT, the other half fall through.
        let t = nat_tracer(
            &["KUBE-SVC-S", "KUBE-SEP-E"],
            &[
                "PREROUTING -j KUBE-SVC-S",
                "KUBE-SVC-S -m statistic --mode random --probability 0.5 -j KUBE-SEP-E",
                "KUBE-SEP-E -j DNAT --to-destination 10.244.1.1:80",
            ],
        );
        assert!(
            matches!(trace_err(&t, PKT), TraceError::Inconsistent(m) if m.contains("no-match"))
        );
        // A zero-probability branch does not count.
        let t = nat_tracer(
            &["KUBE-SVC-S", "KUBE-SEP-E"],
            &[
                "PREROUTING -j KUBE-SVC-S",
                "KUBE-SVC-S -m statistic --mode random --probability 1.00000000000 -j KUBE-SEP-E",
                "KUBE-SEP-E -j DNAT --to-destination 10.244.1.1:80",
            ],
        );
        assert_decision(&t, PKT, &dnat(&[("10.244.1.1:80", 1.0, false)], None));
    }

    #[test]
    fn masquerade_must_agree_per_endpoint() {
        let t = nat_tracer(
            &[
                "KUBE-SVC-S",
                "KUBE-SEP-E",
                "KUBE-MARK-MASQ",
                "KUBE-POSTROUTING",
            ],
            &[
                "PREROUTING -j KUBE-SVC-S",
                "POSTROUTING -j KUBE-POSTROUTING",
                "KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN",
                "KUBE-POSTROUTING -j MASQUERADE",
                "KUBE-MARK-MASQ -j MARK --or-mark 0x4000",
                "KUBE-SVC-S -m statistic --mode random --probability 0.5 -j KUBE-MARK-MASQ",
                "KUBE-SVC-S -j KUBE-SEP-E",
                "KUBE-SEP-E -j DNAT --to-destination 10.244.1.1:80",
            ],
        );
        assert!(
            matches!(trace_err(&t, PKT), TraceError::Inconsistent(m) if m.contains("masquerade"))
        );
    }

    #[test]
    fn affinity_must_be_checked_and_set() {
        // rcheck but no --set in the endpoint chain.
        let t = nat_tracer(
            &["KUBE-SVC-S", "KUBE-SEP-E"],
            &[
                "PREROUTING -j KUBE-SVC-S",
                "KUBE-SVC-S -m recent --name KUBE-SEP-E --rcheck --seconds 10 --reap -j KUBE-SEP-E",
                "KUBE-SVC-S -j KUBE-SEP-E",
                "KUBE-SEP-E -j DNAT --to-destination 10.244.1.1:80",
            ],
        );
        assert!(matches!(trace_err(&t, PKT), TraceError::Inconsistent(_)));
        // --set without rcheck.
        let t = nat_tracer(
            &["KUBE-SVC-S", "KUBE-SEP-E"],
            &[
                "PREROUTING -j KUBE-SVC-S",
                "KUBE-SVC-S -j KUBE-SEP-E",
                "KUBE-SEP-E -m recent --name KUBE-SEP-E --set -j DNAT --to-destination 10.244.1.1:80",
            ],
        );
        assert!(matches!(trace_err(&t, PKT), TraceError::Inconsistent(_)));
        // The rcheck jumps to another chain than the one that sets the name.
        let t = nat_tracer(
            &["KUBE-SVC-S", "KUBE-SEP-E", "KUBE-SEP-OTHER"],
            &[
                "PREROUTING -j KUBE-SVC-S",
                "KUBE-SVC-S -m recent --name KUBE-SEP-E --rcheck --seconds 10 -j KUBE-SEP-OTHER",
                "KUBE-SVC-S -j KUBE-SEP-E",
                "KUBE-SEP-E -m recent --name KUBE-SEP-E --set -j DNAT --to-destination 10.244.1.1:80",
                "KUBE-SEP-OTHER -j DNAT --to-destination 10.244.1.2:80",
            ],
        );
        assert!(matches!(trace_err(&t, PKT), TraceError::Inconsistent(_)));
        // Different timeouts.
        let t = nat_tracer(
            &["KUBE-SVC-S", "KUBE-SEP-A", "KUBE-SEP-B"],
            &[
                "PREROUTING -j KUBE-SVC-S",
                "KUBE-SVC-S -m recent --name KUBE-SEP-A --rcheck --seconds 10 -j KUBE-SEP-A",
                "KUBE-SVC-S -m recent --name KUBE-SEP-B --rcheck --seconds 20 -j KUBE-SEP-B",
                "KUBE-SVC-S -m statistic --mode random --probability 0.5 -j KUBE-SEP-A",
                "KUBE-SVC-S -j KUBE-SEP-B",
                "KUBE-SEP-A -m recent --name KUBE-SEP-A --set -j DNAT --to-destination 10.244.1.1:80",
                "KUBE-SEP-B -m recent --name KUBE-SEP-B --set -j DNAT --to-destination 10.244.1.2:80",
            ],
        );
        assert!(
            matches!(trace_err(&t, PKT), TraceError::Inconsistent(m) if m.contains("timeouts"))
        );
    }

    #[test]
    fn nat_targets_in_the_wrong_place_are_inconsistent() {
        let t = nat_tracer(
            &["KUBE-SVC-X"],
            &["PREROUTING -j KUBE-SVC-X", "KUBE-SVC-X -j MASQUERADE"],
        );
        assert!(matches!(trace_err(&t, PKT), TraceError::Inconsistent(_)));
        let t = nat_tracer(
            &["KUBE-SVC-X"],
            &[
                "POSTROUTING -j KUBE-SVC-X",
                "KUBE-SVC-X -j DNAT --to-destination 10.244.1.1:80",
            ],
        );
        assert!(matches!(trace_err(&t, PKT), TraceError::Inconsistent(_)));
        let t = nat_tracer(
            &["KUBE-SVC-X"],
            &[
                "PREROUTING -j KUBE-SVC-X",
                "KUBE-SVC-X -j DNAT --to-destination [fd00::1]:80",
            ],
        );
        assert!(matches!(trace_err(&t, PKT), TraceError::Inconsistent(_)));
        let t = tracer(
            "*filter\n:FORWARD ACCEPT [0:0]\n:KUBE-SVC-X - [0:0]\n-A FORWARD -j KUBE-SVC-X\n\
             -A KUBE-SVC-X -j DNAT --to-destination 10.244.1.1:80\nCOMMIT\n",
        );
        assert!(matches!(trace_err(&t, PKT), TraceError::Inconsistent(_)));
    }

    #[test]
    fn ruleset_without_tables_and_mixed_families_match_nothing() {
        let t = Tracer::new(&Ruleset::default()).unwrap();
        assert_eq!(trace(&t, PKT), simple(Verdict::NoMatch));
        let packet = Packet {
            source: "10.0.0.1".parse().unwrap(),
            destination: "fd00::1".parse().unwrap(),
            port: 80,
            protocol: Protocol::Tcp,
        };
        assert_eq!(
            tracer(OURS_V4).trace(&config(), &packet).unwrap(),
            simple(Verdict::NoMatch)
        );
    }

    #[test]
    fn marks_and_accept_in_nat() {
        // MARK changes state for later matches; ACCEPT in nat ends the walk without NAT.
        let t = nat_tracer(
            &["KUBE-SVC-X"],
            &[
                "PREROUTING -j KUBE-SVC-X",
                "KUBE-SVC-X -j MARK --set-xmark 0x1/0xffffffff",
                "KUBE-SVC-X -m mark --mark 0x1 -j ACCEPT",
                "KUBE-SVC-X -j DNAT --to-destination 10.244.1.1:80",
            ],
        );
        assert_eq!(trace(&t, PKT), simple(Verdict::NoMatch));
    }

    #[test]
    fn branch_explosion_is_bounded() {
        let mut rules = vec!["PREROUTING -j KUBE-SVC-X".to_string()];
        for _ in 0..20 {
            rules.push(
                "KUBE-SVC-X -m statistic --mode random --probability 0.5 -j MARK --xor-mark 0x1"
                    .to_string(),
            );
        }
        let rules: Vec<&str> = rules.iter().map(String::as_str).collect();
        let t = nat_tracer(&["KUBE-SVC-X"], &rules);
        assert!(matches!(trace_err(&t, PKT), TraceError::Unsupported(_)));
    }
}
