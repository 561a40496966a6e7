//! What the backends' kernel bench binaries share: a network namespace that deletes itself,
//! and the one-endpoint change loop (the changed endpoint goes out and comes back, each apply
//! timed end to end with the bytes it wrote). Include it next to `common` with `#[path]`.

use std::process::Command;
use std::time::{Duration, Instant};

use svcroute_core::watch::Event;
use svcroute_core::{ChangeSet, Desired, State};

use crate::common::{Workload, flip_first_endpoint};

/// A network namespace deleted on drop.
pub struct Netns(pub String);

impl Netns {
    /// Creates `name` (deleting a leftover of that name first). Panics without root.
    pub fn new(name: String) -> Self {
        let _ = Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(std::process::Stdio::null())
            .status();
        let ok = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "cannot create network namespace {name} (root needed)");
        Netns(name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// `median ms (max ms), bytes` of timed applies.
fn summary(samples: &[(Duration, usize)]) -> String {
    let times: Vec<Duration> = samples.iter().map(|s| s.0).collect();
    let max = times.iter().max().map_or(0.0, |d| d.as_secs_f64() * 1e3);
    format!(
        "{:>6.1} ms (max {:>6.1}), {:>5} B",
        median(times).as_secs_f64() * 1e3,
        max,
        samples.iter().map(|s| s.1).max().unwrap_or(0)
    )
}

/// What happens to the changed endpoint.
#[derive(Debug, Clone, Copy)]
pub enum EndpointChange {
    /// It turns not ready (out of the pool), then ready again: the pool's size changes.
    Readiness,
    /// It moves to another address, then back (a pod replaced): the pool keeps its size.
    Address,
}

/// Applies `count` one-endpoint changes of `w` through `apply` (which returns the bytes it
/// wrote): even ones change the endpoint, odd ones change it back. Returns the summaries of
/// both directions.
pub fn endpoint_changes(
    w: &Workload,
    state: &mut State,
    change: EndpointChange,
    count: usize,
    mut apply: impl FnMut(&Desired, &ChangeSet) -> usize,
) -> (String, String) {
    let original = w.slice(w.changed_index());
    let flipped = match change {
        EndpointChange::Readiness => flip_first_endpoint(&original),
        EndpointChange::Address => {
            let mut moved = original.clone();
            if let Some(ep) = moved.endpoints.first_mut() {
                // Outside the workload's pod addresses (10.64.0.0/10 from .256 up).
                ep.addresses = vec!["10.127.255.254".to_string()];
            }
            moved
        }
    };
    let mut removals = Vec::new();
    let mut additions = Vec::new();
    for i in 0..count {
        let slice = if i % 2 == 0 {
            flipped.clone()
        } else {
            original.clone()
        };
        let start = Instant::now();
        state.apply(Event::Apply(slice)).expect("valid slice");
        let changes = state.take_changes();
        let bytes = apply(state.desired(), &changes);
        let sample = (start.elapsed(), bytes);
        if i % 2 == 0 {
            removals.push(sample);
        } else {
            additions.push(sample);
        }
    }
    (summary(&removals), summary(&additions))
}
