//! The four backend properties of DESIGN §5.2, generic over a [`Backend`] harness, and the
//! scenario runner.
//!
//! - [`trace_matches_reference`] (a): for every generated packet, the backend's trace equals
//!   the core's reference decision.
//! - [`incremental_matches_full`] (b): any sequence of incremental applies
//!   (`State::take_changes` → `Dataplane::apply`) ends in the same snapshot and the same traces
//!   as one `sync_full` of the final desired state into a fresh dataplane. It also checks the
//!   core: invalid objects are rejected without effect, and the state reached incrementally
//!   equals the state rebuilt from scratch from the surviving objects.
//! - [`empty_changes_write_nothing`] (c): an empty change set — including changes undone before
//!   the sync — writes nothing to the kernel.
//! - [`failed_writes_recover`] (d): with injected kernel-write failures, a failed call leaves
//!   the shadow unchanged (traces equal those before it) and one repair `sync_full` converges
//!   to the full-sync snapshot.
//!
//! Each runs [`cases`] proptest cases (1,000 unless `PROPTEST_CASES` says otherwise) on a
//! current-thread tokio runtime and returns a [`PropertyFailure`] naming the minimal failing
//! input. Use them through [`crate::conformance_tests!`].

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::sync::Arc;

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestCaseError, TestRunner};
use svcroute_core::decide::Packet;
use svcroute_core::model::{Problem, ProxyConfig, api};
use svcroute_core::watch::{Event, WatchEvent};
use svcroute_core::{ChangeSet, Dataplane, Decision, Desired, State, TraceError, decide};

use crate::flow::{
    Comparability, FlowFailure, Scenario, ScenarioError, check_flows, comparability,
    describe_decision, equivalent_masked, runtime,
};
use crate::strategies::{self, Cluster, Expectation, Step};

/// How the conformance suite builds and inspects one backend.
///
/// Implement it in the backend's tests (with the backend's fake kernel) and invoke
/// [`crate::conformance_tests!`] with the implementing type.
pub trait Backend {
    /// The dataplane under test.
    type Dp: Dataplane;

    /// The backend's name, for messages.
    fn name() -> &'static str;

    /// A fresh dataplane on a fresh fake kernel. `config` is the proxy's initial settings
    /// (the dataplane learns later ones from `Desired::config`).
    fn new(config: &ProxyConfig) -> Self::Dp;

    /// The programmed kernel state, normalised so that equal routing states render equally
    /// (e.g. sorted rules, no generation counters).
    fn snapshot(dp: &Self::Dp) -> String;

    /// Kernel write operations so far (transactions, restore calls, netlink requests),
    /// attempted ones included.
    fn kernel_writes(dp: &Self::Dp) -> usize;

    /// Makes the next `n` kernel writes fail; `0` disarms pending failures.
    fn fail_next_writes(dp: &mut Self::Dp, n: usize);

    /// Makes `n` kernel writes fail after `skip` more succeed (to fail, say, only the IPv6
    /// half of an update). Returns whether the backend supports it; the default supports only
    /// `skip == 0`.
    fn fail_writes_after(dp: &mut Self::Dp, skip: usize, n: usize) -> bool {
        if skip == 0 {
            Self::fail_next_writes(dp, n);
            true
        } else {
            false
        }
    }
}

/// A property that does not hold (or could not run).
#[derive(Debug, Clone)]
pub struct PropertyFailure {
    /// The backend.
    pub backend: &'static str,
    /// The property.
    pub property: &'static str,
    /// What failed, with the minimal failing input.
    pub message: String,
}

impl fmt::Display for PropertyFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "backend {}: property {} failed: {}",
            self.backend, self.property, self.message
        )
    }
}

impl std::error::Error for PropertyFailure {}

/// Cases per property: `PROPTEST_CASES` if set, else 1,000.
pub fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(1_000)
}

/// The proptest settings the properties run with: [`cases`] cases, no failure-persistence
/// files (failures print their minimal input instead), other `PROPTEST_*` variables honoured.
pub fn proptest_config() -> ProptestConfig {
    ProptestConfig {
        cases: cases(),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

type Outcome = Result<(), TestCaseError>;

fn fail(message: impl Into<String>) -> TestCaseError {
    TestCaseError::fail(message.into())
}

fn run_property<S, F>(
    backend: &'static str,
    property: &'static str,
    strategy: S,
    test: F,
) -> Result<(), PropertyFailure>
where
    S: Strategy,
    S::Value: fmt::Debug,
    F: Fn(S::Value) -> Outcome,
{
    let failure = |message: String| PropertyFailure {
        backend,
        property,
        message,
    };
    let mut runner = TestRunner::new(proptest_config());
    runner
        .run(&strategy, test)
        .map_err(|e| failure(e.to_string()))
}

/// Panics with the failure, for use in `#[test]` functions.
pub fn assert_ok<E: fmt::Display>(result: Result<(), E>) {
    if let Err(e) = result {
        panic!("{e}");
    }
}

// ---------------------------------------------------------------------------------------------
// Driving a dataplane.

fn rt() -> Result<tokio::runtime::Runtime, TestCaseError> {
    runtime().map_err(|e| fail(format!("cannot start a tokio runtime: {e}")))
}

fn sync_full<D: Dataplane>(rt: &tokio::runtime::Runtime, dp: &mut D, desired: &Desired) -> Outcome {
    rt.block_on(dp.sync_full(desired))
        .map(|_| ())
        .map_err(|e| fail(format!("sync_full failed: {e}")))
}

fn apply<D: Dataplane>(
    rt: &tokio::runtime::Runtime,
    dp: &mut D,
    desired: &Desired,
    changes: &ChangeSet,
) -> Outcome {
    rt.block_on(dp.apply(desired, changes))
        .map(|_| ())
        .map_err(|e| fail(format!("apply of {} changes failed: {e}", changes.len())))
}

fn empty_desired(config: &ProxyConfig) -> Desired {
    Desired::new(Arc::new(config.clone()))
}

fn traces<D: Dataplane>(dp: &D, packets: &[Packet]) -> Vec<Result<Decision, TraceError>> {
    packets.iter().map(|p| dp.trace(p)).collect()
}

fn same_trace(a: &Result<Decision, TraceError>, b: &Result<Decision, TraceError>) -> bool {
    match (a, b) {
        (Ok(a), Ok(b)) => a.equivalent(b),
        (Err(a), Err(b)) => a == b,
        _ => false,
    }
}

fn show(t: &Result<Decision, TraceError>) -> String {
    match t {
        Ok(d) => describe_decision(d),
        Err(e) => format!("error: {e}"),
    }
}

/// Checks the backend's trace of every packet against the reference decision.
fn check_against_reference<D: Dataplane>(
    dp: &D,
    desired: &Desired,
    packets: &[Packet],
    when: &str,
) -> Outcome {
    let caps = dp.capabilities();
    for p in packets {
        let Comparability::Compare { ignore_affinity } = comparability(&caps, desired, p) else {
            continue;
        };
        let reference = decide(desired, p);
        let traced = dp.trace(p);
        let ok = matches!(&traced, Ok(d) if equivalent_masked(d, &reference, ignore_affinity));
        if !ok {
            return Err(fail(format!(
                "{when}: packet {p}: reference {} but backend {}",
                describe_decision(&reference),
                show(&traced)
            )));
        }
    }
    Ok(())
}

/// Ports that differ between two desired states, for messages.
fn desired_diff(a: &Desired, b: &Desired) -> String {
    let mut out = Vec::new();
    if a.config() != b.config() {
        out.push("settings differ".to_string());
    }
    let names: std::collections::BTreeSet<_> =
        a.ports().chain(b.ports()).map(|p| p.name.clone()).collect();
    for name in names {
        match (a.port(&name), b.port(&name)) {
            (Some(x), Some(y)) if x == y => {}
            (Some(x), Some(y)) => out.push(format!("{name}: {x:?}\n    versus {y:?}")),
            (Some(_), None) => out.push(format!("{name}: only in the incremental state")),
            (None, Some(_)) => out.push(format!("{name}: only in the rebuilt state")),
            (None, None) => {}
        }
    }
    out.join("\n  ")
}

// ---------------------------------------------------------------------------------------------
// A model of what the state must hold.

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    Service,
    Slice,
    Node,
}

fn namespaced_key(meta: &api::ObjectMeta) -> String {
    format!(
        "{}/{}",
        meta.namespace.as_deref().unwrap_or("default"),
        meta.name.as_deref().unwrap_or_default()
    )
}

/// The last accepted version of every object, tracked from the results of `State::apply`, and
/// replayed into a fresh state to cross-check the incremental one.
#[derive(Debug, Clone)]
struct Model {
    config: ProxyConfig,
    services: BTreeMap<String, api::Service>,
    slices: BTreeMap<String, api::EndpointSlice>,
    nodes: BTreeMap<String, api::Node>,
    relisting: HashMap<Kind, HashSet<String>>,
}

/// What feeding an event did.
#[derive(Debug, Clone, PartialEq)]
enum Fed {
    /// Accepted; the object's previous accepted version (for an undo).
    Accepted(Option<Box<WatchEvent>>),
    /// Rejected.
    Rejected,
}

fn check_expectation(
    event: &WatchEvent,
    expect: Expectation,
    result: &Result<(), svcroute_core::model::ValidationError>,
) -> Outcome {
    match (expect, result) {
        (Expectation::Valid, Err(e)) if !matches!(e.problem, Problem::Conflict { .. }) => {
            Err(fail(format!(
                "a valid object was rejected: {e}\n  event: {event:?}"
            )))
        }
        (Expectation::Invalid, Ok(())) => {
            Err(fail(format!("an invalid object was accepted: {event:?}")))
        }
        _ => Ok(()),
    }
}

impl Model {
    fn new(config: ProxyConfig) -> Self {
        Model {
            config,
            services: BTreeMap::new(),
            slices: BTreeMap::new(),
            nodes: BTreeMap::new(),
            relisting: HashMap::new(),
        }
    }

    fn feed(
        &mut self,
        state: &mut State,
        event: &WatchEvent,
        expect: Expectation,
    ) -> Result<Fed, TestCaseError> {
        let result = state.apply(event.clone());
        check_expectation(event, expect, &result)?;
        let accepted = result.is_ok();
        let fed = match event {
            WatchEvent::Service(e) => track(
                &mut self.services,
                &mut self.relisting,
                Kind::Service,
                e,
                accepted,
                |s| namespaced_key(&s.metadata),
            ),
            WatchEvent::EndpointSlice(e) => track(
                &mut self.slices,
                &mut self.relisting,
                Kind::Slice,
                e,
                accepted,
                |s| namespaced_key(&s.metadata),
            ),
            WatchEvent::Node(e) => track(
                &mut self.nodes,
                &mut self.relisting,
                Kind::Node,
                e,
                accepted,
                |n| n.metadata.name.clone().unwrap_or_default(),
            ),
        };
        Ok(fed)
    }

    /// A fresh state holding exactly the surviving objects, with its changes taken.
    fn rebuild(&self) -> Result<Desired, TestCaseError> {
        let mut state =
            State::new(self.config.clone()).map_err(|e| fail(format!("settings rejected: {e}")))?;
        let events = self
            .nodes
            .values()
            .cloned()
            .map(|n| WatchEvent::from(Event::Apply(n)))
            .chain(
                self.services
                    .values()
                    .cloned()
                    .map(|s| Event::Apply(s).into()),
            )
            .chain(
                self.slices
                    .values()
                    .cloned()
                    .map(|s| Event::Apply(s).into()),
            );
        for event in events {
            state.apply(event.clone()).map_err(|e| {
                fail(format!(
                    "replaying an accepted object failed: {e}\n  event: {event:?}"
                ))
            })?;
        }
        state.take_changes();
        Ok(state.desired().clone())
    }
}

fn track<K: Clone>(
    map: &mut BTreeMap<String, K>,
    relisting: &mut HashMap<Kind, HashSet<String>>,
    kind: Kind,
    event: &Event<K>,
    accepted: bool,
    key: impl Fn(&K) -> String,
) -> Fed
where
    WatchEvent: From<Event<K>>,
{
    let undo = |previous: Option<&K>, obj: &K| -> Option<Box<WatchEvent>> {
        Some(Box::new(match previous {
            Some(p) => Event::Apply(p.clone()).into(),
            None => Event::Delete(obj.clone()).into(),
        }))
    };
    match event {
        Event::Apply(obj) | Event::InitApply(obj) => {
            let k = key(obj);
            if matches!(event, Event::InitApply(_)) {
                relisting.entry(kind).or_default().insert(k.clone());
            }
            if !accepted {
                return Fed::Rejected;
            }
            let previous = map.insert(k, obj.clone());
            Fed::Accepted(undo(previous.as_ref(), obj))
        }
        Event::Delete(obj) => {
            if !accepted {
                return Fed::Rejected;
            }
            let previous = map.remove(&key(obj));
            Fed::Accepted(previous.map(|p| Box::new(Event::Apply(p).into())))
        }
        Event::Init => {
            relisting.insert(kind, HashSet::new());
            Fed::Accepted(None)
        }
        Event::InitDone => {
            let seen = relisting.remove(&kind).unwrap_or_default();
            map.retain(|k, _| seen.contains(k));
            Fed::Accepted(None)
        }
    }
}

/// A state and model holding a generated cluster (every object must be accepted).
fn load(cluster: &Cluster) -> Result<(State, Model), TestCaseError> {
    let mut state = State::new(cluster.config.clone())
        .map_err(|e| fail(format!("generated settings rejected: {e}")))?;
    let mut model = Model::new(cluster.config.clone());
    for event in cluster.events() {
        model.feed(&mut state, &event, Expectation::Valid)?;
    }
    Ok((state, model))
}

// ---------------------------------------------------------------------------------------------
// Scenarios.

/// Runs a scenario against backend `B`: programs a fresh dataplane with `sync_full` and checks
/// every case against the table, the reference and the trace; then programs another fresh
/// dataplane incrementally, one object per `apply`, and checks it reaches the same snapshot and
/// the same answers; finally checks `cleanup` leaves the kernel as a fresh one.
pub fn run_scenario<B: Backend>(scenario: &Scenario) -> Result<(), FlowFailure> {
    let setup = |message: String| FlowFailure::Setup {
        scenario: scenario.name.clone(),
        message: format!("[{}] {message}", B::name()),
    };
    let rt = runtime().map_err(|e| setup(format!("cannot start a tokio runtime: {e}")))?;

    let desired = scenario.desired()?;
    let mut full = B::new(&scenario.config);
    rt.block_on(full.sync_full(&desired))
        .map_err(|e| setup(format!("sync_full failed: {e}")))?;
    check_flows(&scenario.name, &desired, Some(&full), &scenario.flows)?;

    let mut incremental = B::new(&scenario.config);
    rt.block_on(incremental.sync_full(&scenario.empty_desired()))
        .map_err(|e| setup(format!("initial empty sync_full failed: {e}")))?;
    let mut state = State::new(scenario.config.clone())
        .map_err(|e| setup(format!("invalid proxy settings: {e}")))?;
    for (i, event) in scenario.objects.iter().enumerate() {
        state
            .apply(event.clone())
            .map_err(|e| setup(format!("object #{i} was rejected: {e}")))?;
        let changes = state.take_changes();
        rt.block_on(incremental.apply(state.desired(), &changes))
            .map_err(|e| setup(format!("apply after object #{i} failed: {e}")))?;
    }
    check_flows(
        &format!("{} (programmed incrementally)", scenario.name),
        state.desired(),
        Some(&incremental),
        &scenario.flows,
    )?;
    let (a, b) = (B::snapshot(&full), B::snapshot(&incremental));
    if a != b {
        return Err(setup(format!(
            "incremental programming ends in another state than sync_full:\n--- sync_full\n{a}\n--- incremental\n{b}"
        )));
    }

    rt.block_on(full.cleanup())
        .map_err(|e| setup(format!("cleanup failed: {e}")))?;
    let fresh = B::snapshot(&B::new(&scenario.config));
    let left = B::snapshot(&full);
    if left != fresh {
        return Err(setup(format!("cleanup left state behind:\n{left}")));
    }
    Ok(())
}

/// [`run_scenario`] on a built-in scenario constructor's result, panicking on failure (for
/// `#[test]` functions).
pub fn assert_scenario<B: Backend>(scenario: Result<Scenario, ScenarioError>) {
    match scenario {
        Err(e) => panic!("{e}"),
        Ok(s) => assert_ok(run_scenario::<B>(&s)),
    }
}

// ---------------------------------------------------------------------------------------------
// (a) trace ≡ reference.

/// (a) For every generated cluster and packet, `trace` equals the reference decision after
/// one `sync_full`.
pub fn trace_matches_reference<B: Backend>() -> Result<(), PropertyFailure> {
    run_property(
        B::name(),
        "trace_matches_reference",
        strategies::cluster_with_packets(),
        |(cluster, packets)| {
            let rt = rt()?;
            let (mut state, _) = load(&cluster)?;
            state.take_changes();
            let desired = state.desired().clone();
            let mut dp = B::new(&cluster.config);
            sync_full(&rt, &mut dp, &desired)?;
            check_against_reference(&dp, &desired, &packets, "after sync_full")
        },
    )
}

// ---------------------------------------------------------------------------------------------
// (b) incremental ≡ full.

/// Drives `steps` through state and dataplane; after each sync the traces must equal the
/// reference. `on_sync` may inject faults around each apply.
struct Driver<'a, B: Backend> {
    rt: tokio::runtime::Runtime,
    state: State,
    model: Model,
    dp: B::Dp,
    packets: &'a [Packet],
    /// The desired state as of the previous `take_changes`.
    last: Desired,
}

/// Checks that `changes` is exactly the difference between `before` and `after`: every
/// changed port appears once with its previous and current value, nothing else appears, and
/// a settings change is flagged.
fn check_change_set(before: &Desired, after: &Desired, changes: &ChangeSet) -> Outcome {
    let mut listed = std::collections::BTreeSet::new();
    for c in changes.changes() {
        if !listed.insert(c.name.clone()) {
            return Err(fail(format!(
                "core: {} appears twice in one change set",
                c.name
            )));
        }
        let previous = before.port(&c.name);
        let current = after.port(&c.name);
        if c.previous.as_deref() != previous.map(|p| &**p) {
            return Err(fail(format!(
                "core: change of {} has previous {:?} but the last change set left {:?}",
                c.name, c.previous, previous
            )));
        }
        if c.current.as_deref() != current.map(|p| &**p) {
            return Err(fail(format!(
                "core: change of {} has current {:?} but desired() holds {:?}",
                c.name, c.current, current
            )));
        }
        if previous == current {
            return Err(fail(format!(
                "core: {} is listed as changed but did not change",
                c.name
            )));
        }
    }
    let names: std::collections::BTreeSet<_> = before
        .ports()
        .chain(after.ports())
        .map(|p| p.name.clone())
        .collect();
    for name in names {
        if before.port(&name) != after.port(&name) && !listed.contains(&name) {
            return Err(fail(format!(
                "core: {name} changed but is missing from the change set"
            )));
        }
    }
    if before.config() != after.config() && !changes.config_changed() {
        return Err(fail(
            "core: the settings changed but the change set does not say so",
        ));
    }
    Ok(())
}

impl<'a, B: Backend> Driver<'a, B> {
    fn start(cluster: &Cluster, packets: &'a [Packet]) -> Result<Self, TestCaseError> {
        let rt = rt()?;
        let mut dp = B::new(&cluster.config);
        sync_full(&rt, &mut dp, &empty_desired(&cluster.config))?;
        let (state, model) = load(cluster)?;
        let mut d = Driver {
            rt,
            state,
            model,
            dp,
            packets,
            last: empty_desired(&cluster.config),
        };
        d.sync()?;
        Ok(d)
    }

    /// Takes the pending changes, checks them against the previous desired state and
    /// returns them with the new desired state.
    fn take(&mut self) -> Result<(ChangeSet, Desired), TestCaseError> {
        let changes = self.state.take_changes();
        let desired = self.state.desired().clone();
        check_change_set(&self.last, &desired, &changes)?;
        self.last = desired.clone();
        Ok((changes, desired))
    }

    fn sync(&mut self) -> Outcome {
        let (changes, desired) = self.take()?;
        apply(&self.rt, &mut self.dp, &desired, &changes)?;
        check_against_reference(
            &self.dp,
            &desired,
            self.packets,
            "after an incremental apply",
        )
    }

    fn step(&mut self, step: &Step) -> Outcome {
        match step {
            Step::Event { event, expect } => {
                self.model.feed(&mut self.state, event, *expect)?;
                Ok(())
            }
            Step::SetConfig(config) => {
                self.state
                    .set_config(config.clone())
                    .map_err(|e| fail(format!("generated settings rejected: {e}")))?;
                self.model.config = config.clone();
                Ok(())
            }
            Step::Sync => self.sync(),
        }
    }

    /// The final checks: the state equals the rebuilt one; the dataplane equals a fresh one
    /// programmed with one `sync_full`, in snapshot and traces.
    fn finish(&mut self) -> Outcome {
        self.sync()?;
        let desired = self.state.desired().clone();
        let rebuilt = self.model.rebuild()?;
        if rebuilt != desired {
            return Err(fail(format!(
                "core: the state reached incrementally differs from the state rebuilt from the \
                 surviving objects:\n  {}",
                desired_diff(&desired, &rebuilt)
            )));
        }
        let mut fresh = B::new(desired.config());
        sync_full(&self.rt, &mut fresh, &desired)?;
        let (a, b) = (B::snapshot(&self.dp), B::snapshot(&fresh));
        if a != b {
            return Err(fail(format!(
                "incremental applies end in another state than one sync_full:\n--- incremental\n{a}\n--- sync_full\n{b}"
            )));
        }
        for (p, (x, y)) in self.packets.iter().zip(
            traces(&self.dp, self.packets)
                .iter()
                .zip(traces(&fresh, self.packets).iter()),
        ) {
            if !same_trace(x, y) {
                return Err(fail(format!(
                    "packet {p}: incremental dataplane traces {} but the fully synced one {}",
                    show(x),
                    show(y)
                )));
            }
        }
        check_against_reference(&fresh, &desired, self.packets, "after the final sync_full")
    }
}

/// (b) Any sequence of events and incremental applies ends in the same snapshot and traces as
/// one `sync_full` of the final desired state into a fresh dataplane (and the core's state
/// equals the one rebuilt from the surviving objects).
pub fn incremental_matches_full<B: Backend>() -> Result<(), PropertyFailure> {
    run_property(
        B::name(),
        "incremental_matches_full",
        strategies::cluster_with_steps(12, true),
        |(cluster, steps, packets)| {
            let mut d = Driver::<B>::start(&cluster, &packets)?;
            for step in &steps {
                d.step(step)?;
            }
            d.finish()
        },
    )
}

// ---------------------------------------------------------------------------------------------
// (c) empty change sets write nothing.

/// (c) An empty change set writes nothing: neither the one right after a sync, nor one whose
/// changes were all undone before `take_changes` (which the core must coalesce to nothing).
pub fn empty_changes_write_nothing<B: Backend>() -> Result<(), PropertyFailure> {
    let strategy = (
        strategies::cluster(),
        vec(strategies::object_change(), 0..10),
        vec(strategies::invalid_event(), 0..3),
    );
    run_property(
        B::name(),
        "empty_changes_write_nothing",
        strategy,
        |(cluster, noise, invalid)| {
            let rt = rt()?;
            let (mut state, mut model) = load(&cluster)?;
            state.take_changes();
            let desired = state.desired().clone();
            let mut dp = B::new(&cluster.config);
            sync_full(&rt, &mut dp, &desired)?;
            let writes = B::kernel_writes(&dp);
            let snapshot = B::snapshot(&dp);

            let check_nothing = |dp: &mut B::Dp, state: &mut State, when: &str| -> Outcome {
                let changes = state.take_changes();
                if !changes.is_empty() {
                    let names: Vec<String> = changes
                        .changes()
                        .iter()
                        .map(|c| c.name.to_string())
                        .collect();
                    return Err(fail(format!(
                        "core: {when}, take_changes is not empty (config changed: {}, ports: {names:?})",
                        changes.config_changed()
                    )));
                }
                let report = rt
                    .block_on(dp.apply(state.desired(), &changes))
                    .map_err(|e| fail(format!("{when}: empty apply failed: {e}")))?;
                let now = B::kernel_writes(dp);
                if now != writes || report.writes != 0 {
                    return Err(fail(format!(
                        "{when}: an empty change set wrote to the kernel ({} writes counted, {} reported)",
                        now - writes,
                        report.writes
                    )));
                }
                if B::snapshot(dp) != snapshot {
                    return Err(fail(format!(
                        "{when}: an empty change set changed the programmed state"
                    )));
                }
                Ok(())
            };
            check_nothing(&mut dp, &mut state, "right after a full sync")?;

            let mut undo = Vec::new();
            for event in &noise {
                if let Fed::Accepted(Some(inverse)) =
                    model.feed(&mut state, event, Expectation::Unknown)?
                {
                    undo.push(inverse);
                }
            }
            for event in &invalid {
                model.feed(&mut state, event, Expectation::Invalid)?;
            }
            for inverse in undo.iter().rev() {
                let result = state.apply((**inverse).clone());
                if let Err(e) = result {
                    return Err(fail(format!(
                        "core: undoing an accepted change was rejected: {e}\n  event: {inverse:?}"
                    )));
                }
            }
            check_nothing(
                &mut dp,
                &mut state,
                "after changes that were undone before the sync",
            )
        },
    )
}

// ---------------------------------------------------------------------------------------------
// (d) failed writes.

/// One sync's fault plan: writes to let through, writes to fail, and whether the first repair
/// attempt fails too.
#[derive(Debug, Clone, Copy)]
pub struct Fault {
    /// Writes that succeed before the failures.
    pub skip: usize,
    /// Writes that fail (0 = no fault this time).
    pub fail: usize,
    /// Whether the first repair `sync_full` fails as well.
    pub fail_repair: bool,
}

fn fault() -> impl Strategy<Value = Fault> {
    (
        0usize..=1,
        prop_oneof![1 => Just(0usize), 3 => 1usize..=2],
        prop::bool::weighted(0.3),
    )
        .prop_map(|(skip, fail, fail_repair)| Fault {
            skip,
            fail,
            fail_repair,
        })
}

impl<B: Backend> Driver<'_, B> {
    /// Like `sync`, with `fault` injected: a failed apply must leave the traces as they were;
    /// one repair `sync_full` must then converge.
    fn faulty_sync(&mut self, fault: Fault) -> Outcome {
        let (changes, desired) = self.take()?;
        let armed = fault.fail > 0 && B::fail_writes_after(&mut self.dp, fault.skip, fault.fail);
        let before = traces(&self.dp, self.packets);
        let result = self.rt.block_on(self.dp.apply(&desired, &changes));
        B::fail_next_writes(&mut self.dp, 0);
        match result {
            Ok(_) => check_against_reference(&self.dp, &desired, self.packets, "after an apply"),
            Err(e) => {
                if !armed {
                    return Err(fail(format!("apply failed without an injected fault: {e}")));
                }
                self.unchanged(&before, "a failed apply")?;
                if fault.fail_repair && B::fail_writes_after(&mut self.dp, 0, 1) {
                    let repair = self.rt.block_on(self.dp.sync_full(&desired));
                    B::fail_next_writes(&mut self.dp, 0);
                    if repair.is_err() {
                        self.unchanged(&before, "a failed repair sync_full")?;
                    }
                }
                sync_full(&self.rt, &mut self.dp, &desired)?;
                let mut fresh = B::new(desired.config());
                sync_full(&self.rt, &mut fresh, &desired)?;
                let (a, b) = (B::snapshot(&self.dp), B::snapshot(&fresh));
                if a != b {
                    return Err(fail(format!(
                        "one repair sync_full did not converge:\n--- repaired\n{a}\n--- fresh sync_full\n{b}"
                    )));
                }
                check_against_reference(
                    &self.dp,
                    &desired,
                    self.packets,
                    "after the repair sync_full",
                )
            }
        }
    }

    fn unchanged(&self, before: &[Result<Decision, TraceError>], what: &str) -> Outcome {
        let after = traces(&self.dp, self.packets);
        for (p, (x, y)) in self.packets.iter().zip(before.iter().zip(after.iter())) {
            if !same_trace(x, y) {
                return Err(fail(format!(
                    "{what} changed the shadow: packet {p} traced {} before and {} after",
                    show(x),
                    show(y)
                )));
            }
        }
        Ok(())
    }
}

/// (d) With injected kernel-write failures, a failed apply (or repair) leaves the shadow
/// unchanged, and one repair `sync_full` converges to the full-sync snapshot.
pub fn failed_writes_recover<B: Backend>() -> Result<(), PropertyFailure> {
    let strategy = (strategies::cluster_with_steps(10, true), vec(fault(), 1..6));
    run_property(
        B::name(),
        "failed_writes_recover",
        strategy,
        |((cluster, steps, packets), faults)| {
            let mut d = Driver::<B>::start(&cluster, &packets)?;
            let mut next = 0usize;
            let mut plan = || {
                let f = faults[next % faults.len()];
                next += 1;
                f
            };
            for step in steps.iter().chain(std::iter::once(&Step::Sync)) {
                match step {
                    Step::Sync => d.faulty_sync(plan())?,
                    other => d.step(other)?,
                }
            }
            d.finish()
        },
    )
}
