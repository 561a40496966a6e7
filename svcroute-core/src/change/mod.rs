//! What changed since the last sync ([`ChangeSet`]) and the full read-only view ([`Desired`]).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;

use crate::model::{IpFamily, Protocol, ProxyConfig, ServiceName};
use crate::select::{ResolvedServicePort, ServicePortName};

/// The full desired routing of this node: every resolved service port plus the settings.
///
/// Cheap to clone (shared ports). Ordered by [`ServicePortName`], so iteration is deterministic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desired {
    config: Arc<ProxyConfig>,
    ports: BTreeMap<ServicePortName, Arc<ResolvedServicePort>>,
}

impl Desired {
    /// An empty desired state for these settings.
    pub fn new(config: Arc<ProxyConfig>) -> Self {
        Desired {
            config,
            ports: BTreeMap::new(),
        }
    }

    /// The proxy's settings.
    pub fn config(&self) -> &ProxyConfig {
        &self.config
    }

    /// Shared handle to the settings.
    pub fn config_arc(&self) -> &Arc<ProxyConfig> {
        &self.config
    }

    /// Every service port, in key order.
    pub fn ports(&self) -> impl Iterator<Item = &Arc<ResolvedServicePort>> {
        self.ports.values()
    }

    /// One service port.
    pub fn port(&self, name: &ServicePortName) -> Option<&Arc<ResolvedServicePort>> {
        self.ports.get(name)
    }

    /// The ports of one Service, in key order.
    pub fn ports_of_service<'a>(
        &'a self,
        service: &'a ServiceName,
    ) -> impl Iterator<Item = &'a Arc<ResolvedServicePort>> + 'a {
        // Keys order by service first, and the empty TCP port name is the smallest of a service.
        let first = ServicePortName {
            service: service.clone(),
            port_name: String::new(),
            protocol: Protocol::Tcp,
        };
        self.ports
            .range(first..)
            .take_while(move |(k, _)| k.service == *service)
            .map(|(_, v)| v)
    }

    /// Number of service ports.
    pub fn len(&self) -> usize {
        self.ports.len()
    }

    /// Whether there are no service ports.
    pub fn is_empty(&self) -> bool {
        self.ports.is_empty()
    }

    pub(crate) fn insert(
        &mut self,
        port: Arc<ResolvedServicePort>,
    ) -> Option<Arc<ResolvedServicePort>> {
        self.ports.insert(port.name.clone(), port)
    }

    pub(crate) fn remove(&mut self, name: &ServicePortName) -> Option<Arc<ResolvedServicePort>> {
        self.ports.remove(name)
    }

    pub(crate) fn set_config(&mut self, config: Arc<ProxyConfig>) {
        self.config = config;
    }
}

/// One service port that changed: its value before (as last handed out) and now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The service port.
    pub name: ServicePortName,
    /// What the previous change set left programmed; `None` if the port is new.
    pub previous: Option<Arc<ResolvedServicePort>>,
    /// What to program now; `None` if the port is gone.
    pub current: Option<Arc<ResolvedServicePort>>,
}

impl Change {
    /// Endpoints of `family` reachable before and not any more: their conntrack entries are
    /// stale (what UDP cleanup needs).
    pub fn removed_endpoints(&self, family: IpFamily) -> Vec<SocketAddr> {
        let before = self.previous.as_ref().and_then(|p| p.family(family));
        let after = self.current.as_ref().and_then(|p| p.family(family));
        let Some(before) = before else {
            return Vec::new();
        };
        let now: BTreeSet<&SocketAddr> = after
            .map(|a| a.all_reachable.iter().collect())
            .unwrap_or_default();
        before
            .all_reachable
            .iter()
            .filter(|e| !now.contains(e))
            .copied()
            .collect()
    }

    /// Whether the port went from no endpoint to some in `family`: "black hole" conntrack entries
    /// created while it had none must be flushed.
    pub fn became_active(&self, family: IpFamily) -> bool {
        let had = self
            .previous
            .as_ref()
            .and_then(|p| p.family(family))
            .is_some_and(|f| !f.all_reachable.is_empty());
        let has = self
            .current
            .as_ref()
            .and_then(|p| p.family(family))
            .is_some_and(|f| !f.all_reachable.is_empty());
        !had && has
    }
}

/// The coalesced changes since the last `State::take_changes()`, in key order.
///
/// A port changed several times appears once; a port changed and changed back does not appear.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChangeSet {
    changes: Vec<Change>,
    config_changed: bool,
}

impl ChangeSet {
    pub(crate) fn new(mut changes: Vec<Change>, config_changed: bool) -> Self {
        changes.sort_by(|a, b| a.name.cmp(&b.name));
        ChangeSet {
            changes,
            config_changed,
        }
    }

    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty() && !self.config_changed
    }

    /// Number of changed service ports.
    pub fn len(&self) -> usize {
        self.changes.len()
    }

    /// Every change, in key order.
    pub fn changes(&self) -> &[Change] {
        &self.changes
    }

    /// Ports to create or update, in key order.
    pub fn upserts(&self) -> impl Iterator<Item = &Arc<ResolvedServicePort>> {
        self.changes.iter().filter_map(|c| c.current.as_ref())
    }

    /// Ports to delete (their last programmed value), in key order.
    pub fn removals(&self) -> impl Iterator<Item = &Arc<ResolvedServicePort>> {
        self.changes
            .iter()
            .filter(|c| c.current.is_none())
            .filter_map(|c| c.previous.as_ref())
    }

    /// Whether the proxy settings changed: backends should do a full sync.
    pub fn config_changed(&self) -> bool {
        self.config_changed
    }

    /// UDP endpoints no longer reachable, per (service frontend IP, port) — what conntrack
    /// cleanup deletes: for each changed UDP port of `family`, the endpoints removed.
    pub fn stale_udp_endpoints(&self, family: IpFamily) -> Vec<(ServicePortName, SocketAddr)> {
        self.changes
            .iter()
            .filter(|c| c.name.protocol == Protocol::Udp)
            .flat_map(|c| {
                c.removed_endpoints(family)
                    .into_iter()
                    .map(move |e| (c.name.clone(), e))
            })
            .collect()
    }
}
