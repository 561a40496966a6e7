//! Criterion benchmarks of rendering (see `BENCHMARKS.md` at the workspace root).
//!
//! - `full_render/<services>x<endpoints>`: both families' full-sync transaction for a resolved
//!   state (what a cold start writes), from `Desired` to text, and the shadow state kept for
//!   incremental syncs (built, not dropped, in the timed part).
//! - `one_endpoint_change/<services>x<endpoints>`: one EndpointSlice update (the first
//!   endpoint's readiness flips) through `take_changes` and the incremental plan of both
//!   families: the per-update cost before the kernel is involved.
//!
//! The transaction size of each is printed once, outside the timing.

#[allow(dead_code)]
#[path = "../../svcroute-core/benches/common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use criterion::{BatchSize, Criterion, SamplingMode, criterion_group, criterion_main};
use svcroute_core::model::IpFamily;
use svcroute_core::watch::Event;
use svcroute_core::{ChangeSet, Desired};
use svcroute_nft::Options;
use svcroute_nft::apply::{Plan, desired_states, full_transaction};
use svcroute_nft::shards::FamilyTables;

use common::{Workload, flip_first_endpoint};

const WORKLOADS: [Workload; 5] = [
    Workload::new(100, 10),
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
        let options = Options::default();
        let bytes = full_transaction(&[], &desired_states(desired, &options))
            .text()
            .len();
        eprintln!("full_render/{}: {bytes} bytes", w.id());
        group.bench_function(w.id(), |b| {
            b.iter_with_large_drop(|| {
                let states = desired_states(desired, &options);
                let text = full_transaction(&[], &states).text();
                (states, text)
            })
        });
    }
    group.finish();
}

/// Plans every family's incremental sync for `changes` and records it (as `apply` does once
/// the kernel took it); returns the transaction bytes.
fn plan(
    states: &mut BTreeMap<IpFamily, FamilyTables>,
    desired: &Desired,
    changes: &ChangeSet,
) -> usize {
    let plan = Plan::new(states, desired, changes);
    let bytes = plan.transaction.text().len();
    plan.commit(states);
    bytes
}

fn one_endpoint_change(c: &mut Criterion) {
    let mut group = c.benchmark_group("one_endpoint_change");
    group
        .sample_size(50)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    for w in WORKLOADS {
        let mut state = w.build_state();
        let mut states = desired_states(state.desired(), &Options::default());
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
