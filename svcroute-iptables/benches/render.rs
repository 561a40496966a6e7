//! Criterion benchmarks of rendering (see `BENCHMARKS.md` at the workspace root).
//!
//! - `full_render/<services>x<endpoints>`: both families' full-sync payloads for a resolved
//!   state (what a cold start writes), from `Desired` to text, and the shadow state kept for
//!   incremental syncs (built, not dropped, in the timed part).
//! - `one_endpoint_change/<services>x<endpoints>`: one EndpointSlice update (the first
//!   endpoint's readiness flips) through `take_changes` and the incremental plan of both
//!   families: the per-update cost before the kernel is involved.
//!
//! The payload size of each is printed once, outside the timing.

#[allow(dead_code)]
#[path = "../../svcroute-core/benches/common/mod.rs"]
mod common;

use std::time::Duration;

use criterion::{BatchSize, Criterion, SamplingMode, criterion_group, criterion_main};
use svcroute_core::ChangeSet;
use svcroute_core::model::IpFamily;
use svcroute_core::watch::Event;
use svcroute_iptables::apply::{desired_state, render_full};
use svcroute_iptables::payload::FamilyState;
use svcroute_iptables::render;
use svcroute_iptables::ruleset::Ruleset;

use common::{Workload, flip_first_endpoint};

const WORKLOADS: [Workload; 4] = [
    Workload::new(1_000, 10),
    Workload::new(5_000, 10),
    Workload::new(10_000, 10),
    Workload::new(5_000, 50),
];

fn full_render(c: &mut Criterion) {
    let mut group = c.benchmark_group("full_render");
    group
        .sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(4));
    for w in WORKLOADS {
        let state = w.build_state();
        let desired = state.desired();
        let bytes: usize = render_full(desired, true)
            .iter()
            .map(|(_, p)| p.len())
            .sum();
        eprintln!("full_render/{}: {bytes} bytes", w.id());
        // What a cold full sync computes: each family's state (kept as the shadow, so its
        // drop is not timed) and its payload.
        group.bench_function(w.id(), |b| {
            b.iter_with_large_drop(|| {
                IpFamily::ALL
                    .iter()
                    .map(|f| {
                        let state = desired_state(desired, *f);
                        let payload = state.full_payload(&Ruleset::default(), true);
                        (state, payload)
                    })
                    .collect::<Vec<_>>()
            })
        });
    }
    group.finish();
}

/// Plans every family's incremental sync for `changes` and records it (as `apply` does once
/// the kernel took it); returns the payload bytes.
fn plan(
    states: &mut [(IpFamily, FamilyState)],
    desired: &svcroute_core::Desired,
    changes: &ChangeSet,
) -> usize {
    let config = desired.config();
    states
        .iter_mut()
        .map(|(family, state)| {
            let updates = changes
                .changes()
                .iter()
                .map(|c| {
                    let rules = c
                        .current
                        .as_ref()
                        .and_then(|p| render::port_rules(config, p, *family));
                    (c.name.clone(), rules)
                })
                .collect();
            let plan = state.plan(updates, true);
            let bytes = plan.payload.len();
            state.commit(plan);
            bytes
        })
        .sum()
}

fn one_endpoint_change(c: &mut Criterion) {
    let mut group = c.benchmark_group("one_endpoint_change");
    group
        .sample_size(50)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    for w in WORKLOADS {
        let mut state = w.build_state();
        let mut states: Vec<(IpFamily, FamilyState)> = IpFamily::ALL
            .iter()
            .map(|f| (*f, desired_state(state.desired(), *f)))
            .collect();
        let original = w.slice(w.changed_index());
        let flipped = flip_first_endpoint(&original);
        state
            .apply(Event::Apply(flipped.clone()))
            .expect("valid slice");
        let changes = state.take_changes();
        eprintln!(
            "one_endpoint_change/{}: {} bytes",
            w.id(),
            plan(&mut states, state.desired(), &changes)
        );
        let mut flip = false;
        group.bench_function(w.id(), |b| {
            b.iter_batched(
                || {
                    flip = !flip;
                    if flip {
                        original.clone()
                    } else {
                        flipped.clone()
                    }
                },
                |slice| {
                    state.apply(Event::Apply(slice)).expect("valid slice");
                    let changes = state.take_changes();
                    plan(&mut states, state.desired(), &changes)
                },
                BatchSize::PerIteration,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, full_render, one_endpoint_change);
criterion_main!(benches);
