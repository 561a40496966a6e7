//! Packet-flow tables: what must happen to a packet, checked against the core's reference
//! decision and a backend's `trace`.
//!
//! A [`FlowCase`] names a packet and its expected fate ([`Expect`]). A [`Scenario`] bundles
//! the proxy's settings, the watch events describing the cluster and the cases. The runners
//! build a [`State`] from the events, program a [`Dataplane`] and compare, case by case,
//! three answers with [`Decision::equivalent`]:
//!
//! 1. the expectation written in the table,
//! 2. the core's reference [`decide()`],
//! 3. the backend's [`Dataplane::trace`].
//!
//! Every mismatch is reported with the case's name ([`FlowFailure`]).
//!
//! # Expectations
//!
//! - A DNAT case lists the endpoint set; each endpoint has probability `1/n`.
//! - `masquerade` says whether the packet is masqueraded on its way to *every* endpoint.
//!   The hairpin branch — an endpoint reaching itself through the service, i.e. the endpoint
//!   whose IP is the packet's source — is always masqueraded, as every dataplane's endpoint
//!   chain does (`-s <endpoint IP> -j KUBE-MARK-MASQ`); the expected decision derives that
//!   branch's flag on its own, so a table never spells it out.
//! - `affinity_timeout_seconds` is the ClientIP session-affinity timeout of a DNAT case.
//!
//! # Tables as text
//!
//! [`parse_flows`] reads one case per line, `name | packet | expect | flags`:
//!
//! ```
//! use svcroute_conformance::flow::{parse_flows, Expect};
//!
//! // name | packet | expect | flags (a `#` starts a comment line)
//! let cases = parse_flows("
//!     pod source                | 10.244.0.5 10.96.0.10:80      | 10.244.1.1:8080 10.244.2.1:8080 |
//!     node source               | 192.168.0.10 10.96.0.10:80    | 10.244.1.1:8080 10.244.2.1:8080 | masq affinity=10800
//!     undefined port            | 10.244.0.5 10.96.0.10:81/udp  | REJECT                          |
//!     IPv6                      | fd00::5 [fd00:96::1]:80/sctp  | NO-MATCH                        |
//! ").unwrap();
//! assert_eq!(cases.len(), 4);
//! assert!(cases[1].masquerade);
//! assert_eq!(cases[2].expect, Expect::Reject);
//! ```

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use svcroute_core::dataplane::Capabilities;
use svcroute_core::decide::{Packet, WeightedEndpoint};
use svcroute_core::model::{IpFamily, ProxyConfig, ValidationError};
use svcroute_core::watch::WatchEvent;
use svcroute_core::{Dataplane, Decision, Desired, State, TraceError, Verdict, decide};

/// The expected fate of a packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    /// DNAT to one of these endpoints, uniformly at random.
    Endpoints(Vec<SocketAddr>),
    /// Refused (ICMP unreachable / TCP reset).
    Reject,
    /// Silently dropped.
    Drop,
    /// Explicitly accepted (health-check NodePort).
    Accept,
    /// Not a service packet.
    NoMatch,
}

impl fmt::Display for Expect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expect::Endpoints(eps) => {
                let list: Vec<String> = eps.iter().map(ToString::to_string).collect();
                write!(f, "{}", list.join(" "))
            }
            Expect::Reject => f.write_str("REJECT"),
            Expect::Drop => f.write_str("DROP"),
            Expect::Accept => f.write_str("ACCEPT"),
            Expect::NoMatch => f.write_str("NO-MATCH"),
        }
    }
}

/// One row of a packet-flow table.
#[derive(Debug, Clone, PartialEq)]
pub struct FlowCase {
    /// What the row checks, in words; failures quote it.
    pub name: String,
    /// The packet.
    pub packet: Packet,
    /// What must happen to it.
    pub expect: Expect,
    /// Whether the packet is masqueraded on its way to every endpoint (DNAT only; the hairpin
    /// branch is masqueraded regardless, see the module docs).
    pub masquerade: bool,
    /// ClientIP session-affinity timeout (DNAT only).
    pub affinity_timeout_seconds: Option<u32>,
}

impl FlowCase {
    /// A case without masquerade or affinity.
    pub fn new(name: impl Into<String>, packet: Packet, expect: Expect) -> Self {
        FlowCase {
            name: name.into(),
            packet,
            expect,
            masquerade: false,
            affinity_timeout_seconds: None,
        }
    }

    /// The same case with masquerade set to `masquerade`.
    pub fn with_masquerade(mut self, masquerade: bool) -> Self {
        self.masquerade = masquerade;
        self
    }

    /// The same case with a session-affinity timeout.
    pub fn with_affinity(mut self, seconds: u32) -> Self {
        self.affinity_timeout_seconds = Some(seconds);
        self
    }

    /// Checks the row itself: masquerade and affinity only make sense for DNAT, and a DNAT
    /// row needs at least one endpoint.
    pub fn validate(&self) -> Result<(), String> {
        match &self.expect {
            Expect::Endpoints(eps) if eps.is_empty() => Err(format!(
                "case {:?}: a DNAT expectation needs endpoints",
                self.name
            )),
            Expect::Endpoints(_) => Ok(()),
            _ if self.masquerade || self.affinity_timeout_seconds.is_some() => Err(format!(
                "case {:?}: masquerade and affinity apply only to DNAT expectations",
                self.name
            )),
            _ => Ok(()),
        }
    }

    /// The decision this row expects, in the core's terms.
    pub fn expected_decision(&self) -> Decision {
        let verdict = match &self.expect {
            Expect::Endpoints(eps) => {
                let probability = 1.0 / eps.len().max(1) as f64;
                let mut weighted: Vec<WeightedEndpoint> = eps
                    .iter()
                    .map(|e| WeightedEndpoint {
                        endpoint: *e,
                        probability,
                        masquerade: self.masquerade || e.ip() == self.packet.source,
                    })
                    .collect();
                weighted.sort_by_key(|w| w.endpoint);
                let masquerade = weighted.iter().any(|w| w.masquerade);
                return Decision {
                    verdict: Verdict::Dnat(weighted),
                    masquerade,
                    affinity_timeout_seconds: self.affinity_timeout_seconds,
                };
            }
            Expect::Reject => Verdict::Reject,
            Expect::Drop => Verdict::Drop,
            Expect::Accept => Verdict::Accept,
            Expect::NoMatch => Verdict::NoMatch,
        };
        Decision::simple(verdict)
    }
}

/// A line of a flow table that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("flow table line {line}: {message}")]
pub struct FlowParseError {
    /// 1-based line number within the table text.
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

/// Reads an endpoint list or verdict keyword (`REJECT`, `DROP`, `ACCEPT`, `NO-MATCH`).
pub fn parse_expect(text: &str) -> Result<Expect, String> {
    let text = text.trim();
    match text {
        "REJECT" => return Ok(Expect::Reject),
        "DROP" => return Ok(Expect::Drop),
        "ACCEPT" => return Ok(Expect::Accept),
        "NO-MATCH" => return Ok(Expect::NoMatch),
        _ => {}
    }
    let eps = text
        .split(|c: char| c.is_whitespace() || c == ',')
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<SocketAddr>()
                .map_err(|_| format!("{s:?} is not an endpoint ADDR:PORT ([addr]:port for IPv6)"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if eps.is_empty() {
        return Err("empty expectation".to_string());
    }
    Ok(Expect::Endpoints(eps))
}

/// Reads a flow table: one case per line as `name | SRC DST:PORT[/proto] | expect | flags`.
///
/// Blank lines and lines starting with `#` are skipped. `expect` is an endpoint list or one of
/// `REJECT`, `DROP`, `ACCEPT`, `NO-MATCH`; `flags` (optional) holds `masq` and/or
/// `affinity=SECONDS`.
pub fn parse_flows(table: &str) -> Result<Vec<FlowCase>, FlowParseError> {
    let mut cases = Vec::new();
    for (i, raw) in table.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let err = |message: String| FlowParseError {
            line: i + 1,
            message,
        };
        let fields: Vec<&str> = line.split('|').map(str::trim).collect();
        if !(3..=4).contains(&fields.len()) {
            return Err(err(format!(
                "expected `name | packet | expect | flags`, got {} fields",
                fields.len()
            )));
        }
        if fields[0].is_empty() {
            return Err(err("the case has no name".to_string()));
        }
        let packet: Packet = fields[1].parse().map_err(|e| err(format!("{e}")))?;
        let expect = parse_expect(fields[2]).map_err(err)?;
        let mut case = FlowCase::new(fields[0], packet, expect);
        for flag in fields
            .get(3)
            .copied()
            .unwrap_or_default()
            .split_whitespace()
        {
            if flag == "masq" {
                case.masquerade = true;
            } else if let Some(secs) = flag.strip_prefix("affinity=") {
                let secs = secs
                    .parse()
                    .map_err(|_| err(format!("bad affinity timeout {secs:?}")))?;
                case.affinity_timeout_seconds = Some(secs);
            } else {
                return Err(err(format!(
                    "unknown flag {flag:?} (expected masq, affinity=N)"
                )));
            }
        }
        case.validate().map_err(err)?;
        cases.push(case);
    }
    Ok(cases)
}

/// A scenario that could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScenarioError {
    /// Its flow table is malformed.
    #[error("scenario {scenario}: {source}")]
    Flows {
        /// The scenario.
        scenario: String,
        /// The problem.
        #[source]
        source: FlowParseError,
    },
    /// A literal (address, network) in its settings is malformed.
    #[error("scenario {scenario}: bad literal {literal:?}")]
    Literal {
        /// The scenario.
        scenario: String,
        /// The text that did not parse.
        literal: String,
    },
}

/// A cluster, the proxy's settings and the packets to check against them.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// Short identifier (a Rust identifier for the built-in ones).
    pub name: String,
    /// What the scenario is about and where its expectations come from.
    pub description: String,
    /// The proxy's settings.
    pub config: ProxyConfig,
    /// The watch events describing the cluster, applied in order; every one must be accepted.
    pub objects: Vec<WatchEvent>,
    /// The packets and what must happen to them.
    pub flows: Vec<FlowCase>,
}

impl Scenario {
    /// An empty scenario.
    pub fn new(name: impl Into<String>, config: ProxyConfig) -> Self {
        Scenario {
            name: name.into(),
            description: String::new(),
            config,
            objects: Vec::new(),
            flows: Vec::new(),
        }
    }

    /// Sets the description.
    pub fn describe(mut self, text: &str) -> Self {
        self.description = text.trim().to_string();
        self
    }

    /// Adds a watch event.
    pub fn object(mut self, event: impl Into<WatchEvent>) -> Self {
        self.objects.push(event.into());
        self
    }

    /// Adds a case.
    pub fn flow(mut self, case: FlowCase) -> Self {
        self.flows.push(case);
        self
    }

    /// Adds the cases of a text table (see [`parse_flows`]).
    pub fn flows(mut self, table: &str) -> Result<Self, ScenarioError> {
        let cases = parse_flows(table).map_err(|source| ScenarioError::Flows {
            scenario: self.name.clone(),
            source,
        })?;
        self.flows.extend(cases);
        Ok(self)
    }

    /// The core state after applying every object, with its changes taken (so
    /// [`State::desired`] is complete).
    pub fn state(&self) -> Result<State, FlowFailure> {
        let setup = |message: String| FlowFailure::Setup {
            scenario: self.name.clone(),
            message,
        };
        let mut state = State::new(self.config.clone())
            .map_err(|e| setup(format!("invalid proxy settings: {e}")))?;
        for (i, event) in self.objects.iter().enumerate() {
            state
                .apply(event.clone())
                .map_err(|e: ValidationError| setup(format!("object #{i} was rejected: {e}")))?;
        }
        state.take_changes();
        Ok(state)
    }

    /// The full desired routing of the scenario.
    pub fn desired(&self) -> Result<Desired, FlowFailure> {
        Ok(self.state()?.desired().clone())
    }

    /// An empty desired state under the scenario's settings (what a freshly started proxy
    /// programs before its first list completes).
    pub fn empty_desired(&self) -> Desired {
        Desired::new(Arc::new(self.config.clone()))
    }
}

/// One case whose answers disagree.
#[derive(Debug, Clone)]
pub struct FlowMismatch {
    /// The case's name.
    pub case: String,
    /// The packet.
    pub packet: Packet,
    /// What the table expects.
    pub expected: Decision,
    /// What the core's reference decision says.
    pub reference: Decision,
    /// What the backend's trace says; `None` when no backend was traced for this case.
    pub backend: Option<Result<Decision, TraceError>>,
    /// Whether the backend's answer is compared without the affinity timeout (the backend
    /// does not implement session affinity).
    pub ignore_affinity: bool,
}

impl FlowMismatch {
    /// Whether the core agrees with the table.
    pub fn reference_matches(&self) -> bool {
        self.reference.equivalent(&self.expected)
    }

    /// Whether the backend (if traced) agrees with the table.
    pub fn backend_matches(&self) -> bool {
        match &self.backend {
            None => true,
            Some(Ok(d)) => equivalent_masked(d, &self.expected, self.ignore_affinity),
            Some(Err(_)) => false,
        }
    }
}

impl fmt::Display for FlowMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mark = |ok: bool| if ok { "ok" } else { "MISMATCH" };
        writeln!(f, "case {:?} ({}):", self.case, self.packet)?;
        writeln!(f, "    expected:  {}", describe_decision(&self.expected))?;
        writeln!(
            f,
            "    reference: {}  [{}]",
            describe_decision(&self.reference),
            mark(self.reference_matches())
        )?;
        match &self.backend {
            None => writeln!(f, "    backend:   (not traced)"),
            Some(Ok(d)) => writeln!(
                f,
                "    backend:   {}  [{}]",
                describe_decision(d),
                mark(self.backend_matches())
            ),
            Some(Err(e)) => writeln!(f, "    backend:   error: {e}  [MISMATCH]"),
        }
    }
}

/// Why a flow run failed.
#[derive(Debug, Clone)]
pub enum FlowFailure {
    /// The scenario could not be set up (invalid object, dataplane error, bad table).
    Setup {
        /// The scenario.
        scenario: String,
        /// What went wrong.
        message: String,
    },
    /// Some cases disagree.
    Mismatches {
        /// The scenario.
        scenario: String,
        /// How many cases were checked.
        checked: usize,
        /// Every disagreeing case.
        mismatches: Vec<FlowMismatch>,
    },
}

impl fmt::Display for FlowFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FlowFailure::Setup { scenario, message } => {
                write!(f, "scenario {scenario}: setup failed: {message}")
            }
            FlowFailure::Mismatches {
                scenario,
                checked,
                mismatches,
            } => {
                let core = mismatches.iter().filter(|m| !m.reference_matches()).count();
                let backend = mismatches.iter().filter(|m| !m.backend_matches()).count();
                writeln!(
                    f,
                    "scenario {scenario}: {} of {checked} cases disagree \
                     (reference wrong in {core}, backend wrong in {backend}):",
                    mismatches.len()
                )?;
                for m in mismatches {
                    write!(f, "{m}")?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for FlowFailure {}

/// How a backend's trace of one packet can be compared with the reference.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Comparability {
    /// The backend does not program this kind of packet (family, protocol or source ranges it
    /// does not support): its answer is not compared.
    Skip,
    /// Compare; without the affinity timeout when `ignore_affinity`.
    Compare {
        /// The backend has no session affinity.
        ignore_affinity: bool,
    },
}

/// Decides whether a backend with `caps` can be held to the reference for `packet`.
pub fn comparability(caps: &Capabilities, desired: &Desired, packet: &Packet) -> Comparability {
    let family = IpFamily::of(&packet.destination);
    if !caps.families.contains(&family) || !caps.protocols.contains(&packet.protocol) {
        return Comparability::Skip;
    }
    if !caps.source_ranges {
        let firewalled = desired.ports().any(|p| {
            p.family(family).is_some_and(|f| {
                f.firewall_allowed_sources.is_some()
                    && f.load_balancer_ips.contains(&packet.destination)
            })
        });
        if firewalled {
            return Comparability::Skip;
        }
    }
    Comparability::Compare {
        ignore_affinity: !caps.session_affinity,
    }
}

/// [`Decision::equivalent`], optionally ignoring the affinity timeout.
pub fn equivalent_masked(a: &Decision, b: &Decision, ignore_affinity: bool) -> bool {
    if ignore_affinity {
        let mut a = a.clone();
        let mut b = b.clone();
        a.affinity_timeout_seconds = None;
        b.affinity_timeout_seconds = None;
        a.equivalent(&b)
    } else {
        a.equivalent(b)
    }
}

/// Checks `flows` against the reference decision under `desired` and, when given, against the
/// backend's trace. Returns the number of cases checked.
pub fn check_flows(
    scenario: &str,
    desired: &Desired,
    dataplane: Option<&dyn Dataplane>,
    flows: &[FlowCase],
) -> Result<usize, FlowFailure> {
    let caps = dataplane.map(|dp| dp.capabilities());
    let mut mismatches = Vec::new();
    for case in flows {
        if let Err(message) = case.validate() {
            return Err(FlowFailure::Setup {
                scenario: scenario.to_string(),
                message,
            });
        }
        let expected = case.expected_decision();
        let reference = decide(desired, &case.packet);
        let (backend, ignore_affinity) = match (dataplane, &caps) {
            (Some(dp), Some(caps)) => match comparability(caps, desired, &case.packet) {
                Comparability::Skip => (None, false),
                Comparability::Compare { ignore_affinity } => {
                    (Some(dp.trace(&case.packet)), ignore_affinity)
                }
            },
            _ => (None, false),
        };
        let m = FlowMismatch {
            case: case.name.clone(),
            packet: case.packet,
            expected,
            reference,
            backend,
            ignore_affinity,
        };
        if !m.reference_matches() || !m.backend_matches() {
            mismatches.push(m);
        }
    }
    if mismatches.is_empty() {
        Ok(flows.len())
    } else {
        Err(FlowFailure::Mismatches {
            scenario: scenario.to_string(),
            checked: flows.len(),
            mismatches,
        })
    }
}

/// Checks a scenario's table against the core's reference decision only.
pub fn check_reference(scenario: &Scenario) -> Result<usize, FlowFailure> {
    let desired = scenario.desired()?;
    check_flows(&scenario.name, &desired, None, &scenario.flows)
}

/// Programs `dp` with the scenario (one `sync_full` of its desired state) and returns that
/// desired state.
pub async fn program(dp: &mut dyn Dataplane, scenario: &Scenario) -> Result<Desired, FlowFailure> {
    let desired = scenario.desired()?;
    dp.sync_full(&desired)
        .await
        .map_err(|e| FlowFailure::Setup {
            scenario: scenario.name.clone(),
            message: format!("sync_full failed: {e}"),
        })?;
    Ok(desired)
}

/// A current-thread tokio runtime, as the conformance suite drives dataplanes.
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread().build()
}

/// Programs `dp` with `scenario` through `sync_full`, then checks every case against both the
/// core's reference decision and `dp.trace`, reporting every mismatch by case name.
///
/// Drives the dataplane on its own current-thread tokio runtime, so it must not be called from
/// inside a runtime; async callers use [`program`] and [`check_flows`].
pub fn run_flows(dp: &mut dyn Dataplane, scenario: &Scenario) -> Result<(), FlowFailure> {
    let rt = runtime().map_err(|e| FlowFailure::Setup {
        scenario: scenario.name.clone(),
        message: format!("cannot start a tokio runtime: {e}"),
    })?;
    let desired = rt.block_on(program(dp, scenario))?;
    check_flows(&scenario.name, &desired, Some(&*dp), &scenario.flows).map(|_| ())
}

/// A one-line rendering of a decision: `DNAT{a:80, b:80*} masq affinity=10800`, where `*`
/// marks masqueraded branches and each endpoint has probability `1/n` unless shown.
pub fn describe_decision(d: &Decision) -> String {
    let mut out = match &d.verdict {
        Verdict::Dnat(eps) => {
            let n = eps.len().max(1) as f64;
            let list: Vec<String> = eps
                .iter()
                .map(|w| {
                    let mut s = w.endpoint.to_string();
                    if w.masquerade {
                        s.push('*');
                    }
                    if (w.probability - 1.0 / n).abs() > 1e-6 {
                        s.push_str(&format!("(p={:.4})", w.probability));
                    }
                    s
                })
                .collect();
            format!("DNAT{{{}}}", list.join(", "))
        }
        Verdict::Reject => "REJECT".to_string(),
        Verdict::Drop => "DROP".to_string(),
        Verdict::Accept => "ACCEPT".to_string(),
        Verdict::NoMatch => "NO-MATCH".to_string(),
    };
    if d.masquerade {
        out.push_str(" masq");
    }
    if let Some(t) = d.affinity_timeout_seconds {
        out.push_str(&format!(" affinity={t}"));
    }
    out
}
