//! Input events, shaped like the events a kube-rs `watcher` stream yields, so such a stream can
//! be forwarded one to one.
//!
//! `Init` starts a re-list of one kind, `InitApply` delivers each listed object and `InitDone`
//! ends it: objects of that kind not re-listed since `Init` are deleted.

use crate::model::api;

/// One watch event for objects of type `K` (mirrors `kube::runtime::watcher::Event<K>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event<K> {
    /// An object was added or modified.
    Apply(K),
    /// An object was deleted.
    Delete(K),
    /// A re-list starts.
    Init,
    /// One object of the re-list.
    InitApply(K),
    /// The re-list is complete: prune what it did not contain.
    InitDone,
}

impl<K> Event<K> {
    /// The same event with its object converted.
    pub fn map<T>(self, f: impl FnOnce(K) -> T) -> Event<T> {
        match self {
            Event::Apply(k) => Event::Apply(f(k)),
            Event::Delete(k) => Event::Delete(f(k)),
            Event::Init => Event::Init,
            Event::InitApply(k) => Event::InitApply(f(k)),
            Event::InitDone => Event::InitDone,
        }
    }
}

/// An event of any kind svcroute watches.
// Events are built and consumed once, so boxing the larger variants would only add allocations.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    /// A Service event.
    Service(Event<api::Service>),
    /// An EndpointSlice event.
    EndpointSlice(Event<api::EndpointSlice>),
    /// A Node event.
    Node(Event<api::Node>),
}

impl From<Event<api::Service>> for WatchEvent {
    fn from(e: Event<api::Service>) -> Self {
        WatchEvent::Service(e)
    }
}

impl From<Event<api::EndpointSlice>> for WatchEvent {
    fn from(e: Event<api::EndpointSlice>) -> Self {
        WatchEvent::EndpointSlice(e)
    }
}

impl From<Event<api::Node>> for WatchEvent {
    fn from(e: Event<api::Node>) -> Self {
        WatchEvent::Node(e)
    }
}
