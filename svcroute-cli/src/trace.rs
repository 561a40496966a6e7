//! `svcroute trace`: what happens to given packets, per backend.
//!
//! Each packet is traced by every selected backend; the result is written as one JSON object
//! per line, or one readable line (a small block with several backends) per packet.

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::net::IpAddr;

use serde::Serialize;
use svcroute_core::decide::{Match, WeightedEndpoint, locate};
use svcroute_core::select::ResolvedServicePort;
use svcroute_core::{Decision, Desired, Packet, Verdict};

use crate::args::OutputFormat;
use crate::backend::Backend;
use crate::error::CliError;
use crate::output::{write_json_line, yes_no};

/// One decision, as the JSON output shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DecisionJson {
    /// `dnat`, `reject`, `drop`, `accept` or `no-match`.
    pub verdict: &'static str,
    /// The DNAT endpoints (empty for other verdicts).
    pub endpoints: Vec<EndpointJson>,
    /// Whether the packet is masqueraded (on any endpoint).
    pub masquerade: bool,
    /// ClientIP affinity timeout when the packet is DNATed with affinity.
    pub affinity_timeout_seconds: Option<u32>,
}

/// One DNAT endpoint in the JSON output.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EndpointJson {
    /// Its address (IPv6 without brackets).
    pub ip: IpAddr,
    /// Its port.
    pub port: u16,
    /// The chance a new connection picks it.
    pub probability: f64,
    /// Whether the packet is masqueraded when it is picked.
    pub masquerade: bool,
}

impl From<&Decision> for DecisionJson {
    fn from(d: &Decision) -> Self {
        let endpoints = match &d.verdict {
            Verdict::Dnat(eps) => eps
                .iter()
                .map(|e| EndpointJson {
                    ip: e.endpoint.ip(),
                    port: e.endpoint.port(),
                    probability: e.probability,
                    masquerade: e.masquerade,
                })
                .collect(),
            _ => Vec::new(),
        };
        DecisionJson {
            verdict: d.verdict.name(),
            endpoints,
            masquerade: d.masquerade,
            affinity_timeout_seconds: d.affinity_timeout_seconds,
        }
    }
}

/// A backend's answer: a decision or why it could not trace.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Outcome {
    /// The decision.
    Decision(DecisionJson),
    /// The trace failed.
    Error {
        /// What went wrong.
        error: String,
    },
}

/// The result of one packet with one backend (`--backend reference|memory|iptables`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SingleResult {
    /// The packet, as `SRC DST:PORT/proto`.
    pub packet: String,
    /// The backend's answer.
    #[serde(flatten)]
    pub outcome: Outcome,
    /// The service port the packet was addressed to, if any (`namespace/name:port`).
    pub service: Option<String>,
    /// Which frontend of it: `ClusterIP`, `ExternalIP`, `LoadBalancer`, `NodePort`,
    /// `HealthCheckNodePort`.
    pub frontend: Option<&'static str>,
}

/// The result of one packet with every backend (`--backend all`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AllResult {
    /// The packet, as `SRC DST:PORT/proto`.
    pub packet: String,
    /// Each backend's answer, by name.
    pub backends: BTreeMap<&'static str, Outcome>,
    /// Whether every backend gave an equivalent decision.
    pub agree: bool,
    /// The service port the packet was addressed to, if any.
    pub service: Option<String>,
    /// Which frontend of it.
    pub frontend: Option<&'static str>,
}

/// What a run of `trace` found wrong (for the exit status).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TraceSummary {
    /// Packets traced.
    pub packets: usize,
    /// Packets for which a backend failed to trace.
    pub errors: usize,
    /// Packets on which backends disagreed.
    pub disagreements: usize,
}

/// How to trace and show packets.
pub struct TraceRun<'a, 'd> {
    /// Output format.
    pub format: OutputFormat,
    /// The desired state (for naming what a packet is addressed to).
    pub desired: &'d Desired,
    /// The backends, in display order.
    pub backends: &'a [Backend<'d>],
    /// Show every backend side by side and compare them (`--backend all`), even if there
    /// is only one.
    pub compare: bool,
}

/// Traces `packet` through every backend and writes the result.
pub fn trace_one(
    out: &mut dyn Write,
    run: &TraceRun<'_, '_>,
    packet: &Packet,
    summary: &mut TraceSummary,
) -> std::io::Result<()> {
    let TraceRun {
        format,
        desired,
        backends,
        compare,
    } = *run;
    summary.packets += 1;
    let hit = locate(desired, packet);
    let results: Vec<(&'static str, Result<Decision, String>)> = backends
        .iter()
        .map(|b| (b.kind.name(), b.trace(packet).map_err(|e| e.to_string())))
        .collect();
    if results.iter().any(|(_, r)| r.is_err()) {
        summary.errors += 1;
    }
    let outcome = |r: &Result<Decision, String>| match r {
        Ok(d) => Outcome::Decision(d.into()),
        Err(e) => Outcome::Error { error: e.clone() },
    };
    let service = matched_port(&hit).map(|p| p.name.to_string());
    let frontend = matched_frontend(&hit);
    if let ([(_, single)], false) = (results.as_slice(), compare) {
        return match format {
            OutputFormat::Json => write_json_line(
                out,
                &SingleResult {
                    packet: packet.to_string(),
                    outcome: outcome(single),
                    service,
                    frontend,
                },
            ),
            OutputFormat::Text => {
                let text = match single {
                    Ok(d) => decision_text(d, &hit, packet),
                    Err(e) => format!("error: {e}"),
                };
                writeln!(out, "{}: {text}{}", arrow(packet), context(&hit))
            }
        };
    }
    let agree = agree(&results);
    if !agree {
        summary.disagreements += 1;
    }
    match format {
        OutputFormat::Json => write_json_line(
            out,
            &AllResult {
                packet: packet.to_string(),
                backends: results.iter().map(|(n, r)| (*n, outcome(r))).collect(),
                agree,
                service,
                frontend,
            },
        ),
        OutputFormat::Text => {
            let verdict = if agree {
                "backends agree"
            } else {
                "backends DISAGREE"
            };
            writeln!(out, "{}: {verdict}{}", arrow(packet), context(&hit))?;
            let width = results.iter().map(|(n, _)| n.len()).max().unwrap_or(0);
            for (name, r) in &results {
                let text = match r {
                    Ok(d) => decision_text(d, &hit, packet),
                    Err(e) => format!("error: {e}"),
                };
                writeln!(out, "  {name:<width$}  {text}")?;
            }
            Ok(())
        }
    }
}

/// Whether every backend traced and all decisions are equivalent.
fn agree(results: &[(&'static str, Result<Decision, String>)]) -> bool {
    let mut decisions = results.iter().map(|(_, r)| r.as_ref().ok());
    let Some(Some(first)) = decisions.next() else {
        return false;
    };
    decisions.all(|d| d.is_some_and(|d| d.equivalent(first)))
}

/// `SRC -> DST:PORT/proto`.
fn arrow(p: &Packet) -> String {
    format!(
        "{} -> {}/{}",
        p.source,
        std::net::SocketAddr::new(p.destination, p.port),
        p.protocol.lower()
    )
}

/// The readable form of a decision, with the reason for non-DNAT verdicts.
fn decision_text(d: &Decision, hit: &Match<'_>, packet: &Packet) -> String {
    match &d.verdict {
        Verdict::Dnat(eps) => {
            let all_masq = eps.iter().all(|e| e.masquerade);
            let list: Vec<String> = eps
                .iter()
                .map(|e| {
                    let hairpin = if e.masquerade && !all_masq {
                        ", masquerade: hairpin"
                    } else {
                        ""
                    };
                    format!("{} (p={:.3}{hairpin})", e.endpoint, e.probability)
                })
                .collect();
            let masq = if all_masq || !d.masquerade {
                yes_no(d.masquerade).to_string()
            } else {
                let hairpins: Vec<String> = eps
                    .iter()
                    .filter(|e| e.masquerade)
                    .map(|e: &WeightedEndpoint| e.endpoint.to_string())
                    .collect();
                format!("only to {} (hairpin)", hairpins.join(", "))
            };
            let affinity = match d.affinity_timeout_seconds {
                Some(t) => format!("{t}s"),
                None => "none".to_string(),
            };
            format!(
                "DNAT to {}; masquerade: {masq}; affinity: {affinity}",
                list.join(", ")
            )
        }
        Verdict::Reject => format!("REJECT{}", reason_reject(hit, packet)),
        Verdict::Drop => format!("DROP{}", reason_drop(hit)),
        Verdict::Accept => "ACCEPT: health-check NodePort".to_string(),
        Verdict::NoMatch => "no match: not a service packet, left alone".to_string(),
    }
}

/// The service port a match names, if any.
fn matched_port<'a>(m: &Match<'a>) -> Option<&'a ResolvedServicePort> {
    match *m {
        Match::Firewalled(p) | Match::Frontend(p, _) | Match::HealthCheck(p) => Some(p),
        Match::ClusterIpOtherPort(_) | Match::ServiceCidr(_) | Match::Nothing => None,
    }
}

/// The kind of frontend a match names, if any.
fn matched_frontend(m: &Match<'_>) -> Option<&'static str> {
    match m {
        Match::Firewalled(_) => Some("LoadBalancer"),
        Match::Frontend(_, kind) => Some(kind.as_str()),
        Match::HealthCheck(_) => Some("HealthCheckNodePort"),
        _ => None,
    }
}

/// ` (default/web:http via ClusterIP)`, or nothing.
fn context(m: &Match<'_>) -> String {
    match (matched_port(m), matched_frontend(m)) {
        (Some(p), Some(via)) => format!(" ({} via {via})", p.name),
        _ => String::new(),
    }
}

fn reason_reject(m: &Match<'_>, packet: &Packet) -> String {
    match m {
        Match::Frontend(..) => ": the service has no endpoints".to_string(),
        Match::ClusterIpOtherPort(p) => format!(
            ": ClusterIP of {} has no port {}/{}",
            p.name.service,
            packet.port,
            packet.protocol.lower()
        ),
        _ => String::new(),
    }
}

fn reason_drop(m: &Match<'_>) -> String {
    match m {
        Match::Firewalled(_) => ": source not allowed by loadBalancerSourceRanges".to_string(),
        Match::Frontend(..) => {
            ": endpoints exist, but none on this node for its Local traffic policy".to_string()
        }
        Match::ServiceCidr(net) => format!(": unallocated address in service CIDR {net}"),
        _ => String::new(),
    }
}

/// One packet line of a `--packets` file: skipped (blank or comment), or the packet text.
pub fn packet_text(line: &str) -> Option<&str> {
    let text = line.split('#').next().unwrap_or_default().trim();
    (!text.is_empty()).then_some(text)
}

/// Reads packet lines from `reader` (named `name` in errors), calling `each` with the
/// 1-based line number and the packet text of every line that holds one.
pub fn for_each_line(
    reader: &mut dyn BufRead,
    name: &str,
    mut each: impl FnMut(usize, &str) -> Result<(), CliError>,
) -> Result<(), CliError> {
    let mut line = String::new();
    let mut number = 0;
    loop {
        line.clear();
        let read = reader
            .read_line(&mut line)
            .map_err(|source| CliError::Read {
                path: name.to_string(),
                source,
            })?;
        if read == 0 {
            return Ok(());
        }
        number += 1;
        if let Some(text) = packet_text(&line) {
            each(number, text)?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packet_lines_skip_comments_and_blanks() {
        assert_eq!(packet_text("  # a comment"), None);
        assert_eq!(packet_text("   "), None);
        assert_eq!(
            packet_text("10.0.0.1 10.96.0.1:80/tcp  # why"),
            Some("10.0.0.1 10.96.0.1:80/tcp")
        );
    }

    #[test]
    fn agreement_needs_equivalent_decisions_from_every_backend() {
        let dnat = |p: f64| Decision {
            verdict: Verdict::Dnat(vec![WeightedEndpoint {
                endpoint: "10.0.0.1:80".parse().unwrap(),
                probability: p,
                masquerade: false,
            }]),
            masquerade: false,
            affinity_timeout_seconds: None,
        };
        assert!(agree(&[("a", Ok(dnat(1.0))), ("b", Ok(dnat(1.0 - 1e-9)))]));
        assert!(!agree(&[
            ("a", Ok(dnat(1.0))),
            ("b", Ok(Decision::simple(Verdict::Reject)))
        ]));
        assert!(!agree(&[
            ("a", Ok(dnat(1.0))),
            ("b", Err("cannot trace".into()))
        ]));
        assert!(!agree(&[("a", Err("cannot trace".into()))]));
    }

    #[test]
    fn text_of_a_dnat_decision() {
        let packet: Packet = "10.244.1.5 10.96.0.10:80/tcp".parse().unwrap();
        let d = Decision {
            verdict: Verdict::Dnat(vec![
                WeightedEndpoint {
                    endpoint: "10.244.1.5:8080".parse().unwrap(),
                    probability: 0.5,
                    masquerade: true,
                },
                WeightedEndpoint {
                    endpoint: "[fd00::1]:8080".parse().unwrap(),
                    probability: 0.5,
                    masquerade: false,
                },
            ]),
            masquerade: true,
            affinity_timeout_seconds: Some(10800),
        };
        let text = decision_text(&d, &Match::Nothing, &packet);
        assert_eq!(
            text,
            "DNAT to 10.244.1.5:8080 (p=0.500, masquerade: hairpin), [fd00::1]:8080 (p=0.500); \
             masquerade: only to 10.244.1.5:8080 (hairpin); affinity: 10800s"
        );
        assert_eq!(arrow(&packet), "10.244.1.5 -> 10.96.0.10:80/tcp");
    }
}
