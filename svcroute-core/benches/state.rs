//! Criterion benchmarks of [`svcroute_core::State`] (see `BENCHMARKS.md` at the workspace root).
//!
//! - `full_build/<services>x<endpoints>`: a fresh state, every Service and EndpointSlice
//!   applied, then `take_changes()`.
//! - `one_slice_change/<services>x<endpoints>`: a built state; one EndpointSlice update (the
//!   first endpoint's readiness flips, alternately on and off, so every iteration is a real
//!   change) followed by `take_changes()`.
//!
//! Input objects are built outside the timed part; applying (and so dropping) them is timed, as
//! a watcher hands over owned objects. Each input is made just before its iteration
//! (`BatchSize::PerIteration`), one object at a time as from a watcher: preparing a batch of
//! inputs ahead (`SmallInput`) measured the one-slice change ~20% slower, only because glibc then
//! consolidates the freed inputs of the batch inside the timed part.

// Each bench binary uses only part of the shared generator.
#[allow(dead_code)]
mod common;

use std::time::Duration;

use criterion::{BatchSize, Criterion, SamplingMode, criterion_group, criterion_main};
use svcroute_core::model::api;
use svcroute_core::watch::Event;
use svcroute_core::{ChangeSet, State};

use common::{WORKLOADS, Workload, config, flip_first_endpoint};

/// A fresh state with every Service, then every EndpointSlice, applied; changes taken.
fn build(services: Vec<api::Service>, slices: Vec<api::EndpointSlice>) -> (State, ChangeSet) {
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
    (state, changes)
}

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
        // Checked outside the timing: the build yields one change per Service.
        let (_, changes) = build(services.clone(), slices.clone());
        assert_eq!(changes.len(), w.services, "{}", w.id());
        group.bench_function(w.id(), |b| {
            b.iter_batched(
                || (services.clone(), slices.clone()),
                // Dropping the returned state and change set is not timed.
                |(services, slices)| build(services, slices),
                BatchSize::PerIteration,
            );
        });
    }
    group.finish();
}

/// Applies `slice` and takes the changes.
fn change(state: &mut State, slice: api::EndpointSlice) -> ChangeSet {
    state
        .apply(Event::Apply(slice))
        .expect("valid EndpointSlice");
    state.take_changes()
}

/// Asserts that applying `slice` to `state` changes exactly one service port, of the Service
/// the workload modifies.
fn assert_one_change(w: &Workload, state: &mut State, slice: api::EndpointSlice) {
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
        // Checked outside the timing: every Service yielded its one port, every endpoint is
        // stored, and nothing is left pending.
        assert_eq!(state.desired().len(), w.services, "{}", w.id());
        assert_eq!(state.stats().endpoints, w.endpoint_count(), "{}", w.id());
        assert!(state.take_changes().is_empty(), "{}", w.id());
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
                BatchSize::PerIteration,
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
