//! Combining the paths a backend's tracer followed into one [`Decision`]. A tracer forks a
//! packet at every random choice (a `statistic` cascade, a `numgen` map) and follows each
//! path to its end; the decision is consistent only when every path ends the same way, and
//! then DNAT paths to the same endpoint add up.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use crate::dataplane::TraceError;
use crate::decide::{Decision, PROBABILITY_TOLERANCE, Packet, Verdict, WeightedEndpoint};

/// How one traced path ended.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum PathEnd {
    /// Dropped.
    Drop,
    /// Rejected.
    Reject,
    /// Explicitly accepted without DNAT.
    Accept,
    /// Untouched.
    NoMatch,
    /// DNATed to `endpoint`.
    Dnat {
        /// The endpoint.
        endpoint: SocketAddr,
        /// Whether the path masqueraded it.
        masquerade: bool,
        /// The session-affinity timeout the path recorded, if any.
        affinity: Option<u32>,
    },
}

impl PathEnd {
    fn name(&self) -> &'static str {
        match self {
            PathEnd::Drop => "drop",
            PathEnd::Reject => "reject",
            PathEnd::Accept => "accept",
            PathEnd::NoMatch => "no-match",
            PathEnd::Dnat { .. } => "dnat",
        }
    }
}

/// One traced path: its probability and how it ended.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TracedPath {
    /// The chance a new connection takes this path.
    pub probability: f64,
    /// How it ended.
    pub end: PathEnd,
}

/// Merges the paths of `packet` into one decision, or says why they do not make one:
/// probabilities not summing to 1, paths ending differently, an endpoint masqueraded on some
/// paths only, DNAT paths differing in affinity.
pub fn combine(packet: &Packet, paths: &[TracedPath]) -> Result<Decision, TraceError> {
    let inconsistent = |why: String| TraceError::Inconsistent(format!("packet {packet}: {why}"));
    let total: f64 = paths.iter().map(|p| p.probability).sum();
    if (total - 1.0).abs() > PROBABILITY_TOLERANCE {
        return Err(inconsistent(format!("path probabilities sum to {total}")));
    }
    let mut kinds: Vec<&'static str> = paths.iter().map(|p| p.end.name()).collect();
    kinds.sort_unstable();
    kinds.dedup();
    match kinds.as_slice() {
        ["dnat"] => {}
        [_] => {
            return Ok(Decision::simple(match paths.first().map(|p| p.end) {
                Some(PathEnd::Drop) => Verdict::Drop,
                Some(PathEnd::Reject) => Verdict::Reject,
                Some(PathEnd::Accept) => Verdict::Accept,
                _ => Verdict::NoMatch,
            }));
        }
        [] => return Err(inconsistent("no path".to_string())),
        _ => {
            return Err(inconsistent(format!(
                "paths end in different verdicts: {}",
                kinds.join(", ")
            )));
        }
    }

    let mut endpoints: BTreeMap<SocketAddr, (f64, bool)> = BTreeMap::new();
    let mut affinity: Option<Option<u32>> = None;
    for path in paths {
        let PathEnd::Dnat {
            endpoint,
            masquerade,
            affinity: path_affinity,
        } = path.end
        else {
            continue;
        };
        let entry = endpoints.entry(endpoint).or_insert((0.0, masquerade));
        if entry.1 != masquerade {
            return Err(inconsistent(format!(
                "endpoint {endpoint} is masqueraded on some paths only"
            )));
        }
        entry.0 += path.probability;
        match affinity {
            Some(seen) if seen != path_affinity => {
                let show = |a: Option<u32>| a.map_or("none".to_string(), |t| format!("{t}s"));
                return Err(inconsistent(format!(
                    "DNAT paths differ in affinity ({} and {})",
                    show(seen),
                    show(path_affinity)
                )));
            }
            _ => affinity = Some(path_affinity),
        }
    }
    let weighted: Vec<WeightedEndpoint> = endpoints
        .into_iter()
        .map(|(endpoint, (probability, masquerade))| WeightedEndpoint {
            endpoint,
            probability,
            masquerade,
        })
        .collect();
    Ok(Decision {
        masquerade: weighted.iter().any(|w| w.masquerade),
        verdict: Verdict::Dnat(weighted),
        affinity_timeout_seconds: affinity.flatten(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dnat(ep: &str, p: f64, masquerade: bool, affinity: Option<u32>) -> TracedPath {
        TracedPath {
            probability: p,
            end: PathEnd::Dnat {
                endpoint: ep.parse().unwrap(),
                masquerade,
                affinity,
            },
        }
    }

    #[test]
    fn paths_merge_or_explain_why_not() {
        let packet: Packet = "10.0.0.5 10.96.0.1:80/tcp".parse().unwrap();
        let d = combine(
            &packet,
            &[
                dnat("10.1.0.1:80", 0.25, true, None),
                dnat("10.1.0.1:80", 0.25, true, None),
                dnat("10.1.0.2:80", 0.5, false, None),
            ],
        )
        .unwrap();
        let Verdict::Dnat(eps) = &d.verdict else {
            panic!("{d:?}")
        };
        assert_eq!(eps.len(), 2);
        assert!((eps[0].probability - 0.5).abs() < 1e-9 && d.masquerade);

        let drop = TracedPath {
            probability: 0.5,
            end: PathEnd::Drop,
        };
        let err = combine(&packet, &[drop, dnat("10.1.0.1:80", 0.5, false, None)]);
        assert!(matches!(err, Err(TraceError::Inconsistent(m)) if m.contains("different")));
        let err = combine(
            &packet,
            &[
                dnat("10.1.0.1:80", 0.5, true, None),
                dnat("10.1.0.1:80", 0.5, false, None),
            ],
        );
        assert!(matches!(err, Err(TraceError::Inconsistent(m)) if m.contains("some paths")));
        let err = combine(
            &packet,
            &[
                dnat("10.1.0.1:80", 0.5, true, Some(5)),
                dnat("10.1.0.2:80", 0.5, true, None),
            ],
        );
        assert!(matches!(err, Err(TraceError::Inconsistent(m)) if m.contains("affinity")));
        assert!(combine(&packet, &[dnat("10.1.0.1:80", 0.7, true, None)]).is_err());
        let sticky = combine(&packet, &[dnat("10.1.0.1:80", 1.0, false, Some(30))]).unwrap();
        assert_eq!(sticky.affinity_timeout_seconds, Some(30));
    }
}
