//! The store of validated objects and the change tracker.
//!
//! [`State::apply`] validates one watch event and records which Services it touched; nothing
//! is resolved yet. [`State::take_changes`] resolves just those Services, compares the result
//! with what the previous call handed out and returns the difference as a [`ChangeSet`]; so an
//! object changed twice counts once, and a change undone before the call counts zero.
//! [`State::desired`] is the full view as of the last `take_changes`.

mod frontends;
mod store;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use crate::change::{Change, ChangeSet, Desired};
use crate::model::{ProxyConfig, ServiceName, ValidationError};
use crate::select::{SelectContext, ServicePortName, resolve_service};
use crate::watch::{Event, WatchEvent};

pub use frontends::Frontend;
use store::Store;

/// Which kind of object a re-list is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    Service,
    EndpointSlice,
    Node,
}

/// Counts of what the state holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Services stored.
    pub services: usize,
    /// EndpointSlices stored.
    pub slices: usize,
    /// Endpoints across all stored slices.
    pub endpoints: usize,
    /// Nodes stored.
    pub nodes: usize,
    /// Resolved service ports.
    pub service_ports: usize,
}

/// The proxy's state: objects, pending changes and the desired routing.
pub struct State {
    store: Store,
    /// Services touched since the last `take_changes`.
    dirty: HashSet<ServiceName>,
    /// Everything must be re-resolved (node labels or settings changed).
    all_dirty: bool,
    desired: Desired,
    /// Keys seen since `Init`, per kind being re-listed.
    relisting: HashMap<Kind, HashSet<String>>,
    /// Kinds whose first list is complete.
    listed: HashSet<Kind>,
}

impl State {
    /// A new, empty state. Fails if the settings are invalid.
    pub fn new(config: ProxyConfig) -> Result<Self, ValidationError> {
        config.validate()?;
        let config = Arc::new(config);
        Ok(State {
            store: Store::new(config.clone()),
            dirty: HashSet::new(),
            all_dirty: false,
            desired: Desired::new(config),
            relisting: HashMap::new(),
            listed: HashSet::new(),
        })
    }

    /// Replaces the settings; every service is re-resolved at the next `take_changes`, and
    /// the change set says the settings changed (backends then sync fully).
    pub fn set_config(&mut self, config: ProxyConfig) -> Result<(), ValidationError> {
        config.validate()?;
        if config == *self.store.config() {
            return Ok(());
        }
        self.store.set_config(Arc::new(config));
        self.all_dirty = true;
        Ok(())
    }

    /// The current settings.
    pub fn config(&self) -> &ProxyConfig {
        self.store.config()
    }

    /// Applies one watch event. A bad object is rejected with a typed error naming the object
    /// and field; the previous version of that object stays in force and nothing else changes.
    pub fn apply(&mut self, event: impl Into<WatchEvent>) -> Result<(), ValidationError> {
        match event.into() {
            WatchEvent::Service(e) => self.apply_kind(Kind::Service, e, |s, ev| match ev {
                Upsert(obj) => s.store.apply_service(obj),
                Remove(obj) => s.store.delete_service(obj),
                Key(obj) => Ok(Touched::Key(store::service_key(obj))),
            }),
            WatchEvent::EndpointSlice(e) => {
                self.apply_kind(Kind::EndpointSlice, e, |s, ev| match ev {
                    Upsert(obj) => s.store.apply_slice(obj),
                    Remove(obj) => s.store.delete_slice(obj),
                    Key(obj) => Ok(Touched::Key(store::slice_key(obj))),
                })
            }
            WatchEvent::Node(e) => self.apply_kind(Kind::Node, e, |s, ev| match ev {
                Upsert(obj) => s.store.apply_node(obj),
                Remove(obj) => s.store.delete_node(obj),
                Key(obj) => Ok(Touched::Key(store::node_key(obj))),
            }),
        }
    }

    /// Shared handling of the five event shapes for one kind. `op` performs an upsert or
    /// removal and reports which Services it touched (the `Key` form only computes the key).
    fn apply_kind<K>(
        &mut self,
        kind: Kind,
        event: Event<K>,
        op: impl Fn(&mut Self, Op<'_, K>) -> Result<Touched, ValidationError>,
    ) -> Result<(), ValidationError> {
        match event {
            Event::Apply(obj) => {
                let touched = op(self, Upsert(&obj))?;
                self.mark(touched);
            }
            Event::Delete(obj) => {
                let touched = op(self, Remove(&obj))?;
                self.mark(touched);
            }
            Event::Init => {
                self.relisting.insert(kind, HashSet::new());
            }
            Event::InitApply(obj) => {
                // Record the key even if the object is invalid: its previous version stays.
                if let Ok(Touched::Key(key)) = op(self, Key(&obj)) {
                    self.relisting.entry(kind).or_default().insert(key);
                }
                let touched = op(self, Upsert(&obj))?;
                self.mark(touched);
            }
            Event::InitDone => {
                let seen = self.relisting.remove(&kind).unwrap_or_default();
                let touched = match kind {
                    Kind::Service => self.store.prune_services(&seen),
                    Kind::EndpointSlice => self.store.prune_slices(&seen),
                    Kind::Node => self.store.prune_nodes(&seen),
                };
                self.mark(touched);
                self.listed.insert(kind);
            }
        }
        Ok(())
    }

    fn mark(&mut self, touched: Touched) {
        match touched {
            Touched::Nothing | Touched::Key(_) => {}
            Touched::Services(names) => self.dirty.extend(names),
            Touched::All => self.all_dirty = true,
        }
    }

    /// Whether Services and EndpointSlices have each completed a first list (`InitDone`);
    /// a proxy should not program anything before (upstream waits likewise).
    pub fn is_initialized(&self) -> bool {
        self.listed.contains(&Kind::Service) && self.listed.contains(&Kind::EndpointSlice)
    }

    /// Resolves the Services touched since the last call and returns what changed.
    pub fn take_changes(&mut self) -> ChangeSet {
        let names: Vec<ServiceName> = if self.all_dirty {
            let mut all: HashSet<ServiceName> = self.store.service_names().cloned().collect();
            all.extend(self.desired.ports().map(|p| p.name.service.clone()));
            self.dirty.clear();
            all.into_iter().collect()
        } else {
            self.dirty.drain().collect()
        };
        self.all_dirty = false;
        // Settings changed and changed back before this call are no change.
        let config_changed = self.desired.config() != self.store.config();
        self.desired.set_config(self.store.config_arc().clone());
        let mut changes = Vec::new();
        for name in names {
            resolve_into(&self.store, &mut self.desired, &name, &mut changes);
        }
        ChangeSet::new(changes, config_changed)
    }

    /// The full desired routing as of the last `take_changes`.
    pub fn desired(&self) -> &Desired {
        &self.desired
    }

    /// Who owns a frontend (for diagnostics).
    pub fn frontend_owner(&self, frontend: &Frontend) -> Option<&ServiceName> {
        self.store.frontend_owner(frontend)
    }

    /// Counts of stored objects.
    pub fn stats(&self) -> Stats {
        let mut s = self.store.stats();
        s.service_ports = self.desired.len();
        s
    }
}

/// Re-resolves one Service and records how its ports differ from `desired`, updating it.
fn resolve_into(
    store: &Store,
    desired: &mut Desired,
    name: &ServiceName,
    changes: &mut Vec<Change>,
) {
    let new_ports = match store.service(name) {
        Some(svc) => {
            let slices = store.slices_of(name);
            let cx = SelectContext {
                config: store.config(),
                node_labels: store.own_labels(),
                nodes: store.node_labels(),
            };
            resolve_service(svc, &slices, &cx)
        }
        None => Vec::new(),
    };
    let old_names: Vec<ServicePortName> = desired
        .ports_of_service(name)
        .map(|p| p.name.clone())
        .collect();
    let mut new_names = Vec::with_capacity(new_ports.len());
    for port in new_ports {
        new_names.push(port.name.clone());
        let previous = desired.port(&port.name);
        if previous.is_some_and(|p| **p == port) {
            continue;
        }
        let current = Arc::new(port);
        let previous = desired.insert(current.clone());
        changes.push(Change {
            name: current.name.clone(),
            previous,
            current: Some(current),
        });
    }
    for old in old_names {
        if !new_names.contains(&old)
            && let Some(previous) = desired.remove(&old)
        {
            changes.push(Change {
                name: old,
                previous: Some(previous),
                current: None,
            });
        }
    }
}

/// One operation `apply_kind` asks of a kind's store.
enum Op<'a, K> {
    Upsert(&'a K),
    Remove(&'a K),
    Key(&'a K),
}
use Op::{Key, Remove, Upsert};

/// What an operation on the store touched.
#[derive(Debug)]
pub(crate) enum Touched {
    /// Nothing routing-relevant changed.
    Nothing,
    /// Only the object's key was computed.
    Key(String),
    /// These Services need re-resolving.
    Services(Vec<ServiceName>),
    /// Everything needs re-resolving.
    All,
}

#[cfg(test)]
mod tests;
