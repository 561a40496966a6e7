//! Criterion benchmarks of [`svcroute_core::State`] (see `BENCHMARKS.md` at the workspace root).
//!
//! - `full_build/<services>x<endpoints>`: a fresh state, every Service and EndpointSlice
//!   applied, then `take_changes()`.
//! - `one_slice_change/<services>x<endpoints>`: a built state; one EndpointSlice update (the
//!   first endpoint's readiness flips, alternately on and off, so every iteration is a real
//!   change) followed by `take_changes()`.
//!
//! Input objects are built outside the timed part; applying (and so dropping) them is timed, as
//! a watcher hands over owned objects.

// Each bench binary uses only part of the shared generator.
#[allow(dead_code)]
mod common;

use std::time::Duration;

use criterion::{BatchSize, Criterion, SamplingMode, criterion_group, criterion_main};
use svcroute_core::watch::Event;
use svcroute_core::{ChangeSet, State};

use common::{WORKLOADS, Workload, config, flip_first_endpoint};

/// Fresh state, all objects applied, changes taken.
fn full_build(c: &mut Criterion) {
    let mut group = c.benchmark_group("full_build");
    group
        .sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(4));
    for w in WORKLOADS {
        let (services, slices) = w.objects();
        let expected_ports = w.services;
        group.bench_function(w.id(), |b| {
            b.iter_batched(
                || (services.clone(), slices.clone()),
                |(services, slices)| {
                    let mut state = State::new(config()).expect("valid config");
                    for svc in services {
                        state.apply(Event::Apply(svc)).expect("valid Service");
                    }
                    for slice in slices {
                        state
                            .apply(Event::Apply(slice))
                            .expect("valid EndpointSlice");
                    }
                    let changes = state.take_changes();
                    // Dropping the state and change set is not timed.
                    (state, changes)
                },
                BatchSize::PerIteration,
            );
        });
        // Checked outside the timing: every Service yielded its one port.
        let mut state = w.build_state();
        assert_eq!(state.desired().len(), expected_ports, "{}", w.id());
        assert_eq!(state.stats().endpoints, w.endpoint_count(), "{}", w.id());
        assert!(state.take_changes().is_empty());
    }
    group.finish();
}

/// Applies `slice` and takes the changes.
fn change(state: &mut State, slice: svcroute_core::model::api::EndpointSlice) -> ChangeSet {
    state
        .apply(Event::Apply(slice))
        .expect("valid EndpointSlice");
    state.take_changes()
}

/// Asserts that applying `slice` to `state` changes exactly one service port, of the Service
/// the workload modifies.
fn assert_one_change(
    w: &Workload,
    state: &mut State,
    slice: svcroute_core::model::api::EndpointSlice,
) {
    let changes = change(state, slice);
    assert_eq!(
        changes.len(),
        1,
        "{}: one slice update must change exactly one port",
        w.id()
    );
    assert_eq!(
        changes.changes()[0].name.service.name,
        common::service_name(w.changed_index()),
        "{}",
        w.id()
    );
}

/// Built state; one slice updated, then `take_changes()`.
fn one_slice_change(c: &mut Criterion) {
    let mut group = c.benchmark_group("one_slice_change");
    group
        .sample_size(30)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    for w in WORKLOADS {
        let mut state = w.build_state();
        let original = w.slice(w.changed_index());
        let flipped = flip_first_endpoint(&original);
        // Checked outside the timing: each version, applied after the other, is one change.
        for _ in 0..2 {
            assert_one_change(&w, &mut state, flipped.clone());
            assert_one_change(&w, &mut state, original.clone());
        }
        // The state now holds `original`, so the first timed apply is `flipped`.
        let versions = [flipped, original];
        let mut next = 0usize;
        group.bench_function(w.id(), |b| {
            b.iter_batched(
                || {
                    let slice = versions[next % 2].clone();
                    next += 1;
                    slice
                },
                |slice| change(&mut state, slice),
                BatchSize::SmallInput,
            );
        });
        // Whatever the number of timed iterations, the alternation still holds: the next
        // version to apply differs from the stored one.
        assert_one_change(&w, &mut state, versions[next % 2].clone());
    }
    group.finish();
}

criterion_group!(benches, full_build, one_slice_change);
criterion_main!(benches);
