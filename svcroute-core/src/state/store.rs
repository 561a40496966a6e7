//! Validated objects by key, the EndpointSlice cache (slices grouped by Service) and node labels.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use super::Touched;
use super::frontends::{Frontend, FrontendIndex};
use crate::model::slice::Interner;
use crate::model::{
    LABEL_HEADLESS, NodeInfo, ProxyConfig, ServiceInfo, ServiceName, SliceInfo, ValidationError,
    api,
};

pub(crate) fn service_key(svc: &api::Service) -> String {
    namespaced_key(&svc.metadata)
}

pub(crate) fn slice_key(slice: &api::EndpointSlice) -> String {
    namespaced_key(&slice.metadata)
}

pub(crate) fn node_key(node: &api::Node) -> String {
    node.metadata.name.clone().unwrap_or_default()
}

fn namespaced_key(meta: &api::ObjectMeta) -> String {
    format!(
        "{}/{}",
        meta.namespace.as_deref().unwrap_or("default"),
        meta.name.as_deref().unwrap_or_default()
    )
}

fn key_to_service(key: &str) -> Option<ServiceName> {
    let (ns, name) = key.split_once('/')?;
    Some(ServiceName::new(ns, name))
}

/// The slices of one Service, sorted by name. Most Services have one slice or a few, which a
/// sorted `Vec` holds in a fraction of the memory of a `BTreeMap` (whose first node alone has
/// room for 11 entries) and without a second copy of each name.
#[derive(Default)]
struct SliceGroup(Vec<Arc<SliceInfo>>);

impl SliceGroup {
    fn position(&self, name: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|s| s.name.as_str().cmp(name))
    }

    fn get(&self, name: &str) -> Option<&Arc<SliceInfo>> {
        self.position(name).ok().map(|i| &self.0[i])
    }

    /// Adds the slice, or replaces the one of the same name.
    fn insert(&mut self, slice: Arc<SliceInfo>) {
        match self.position(&slice.name) {
            Ok(i) => self.0[i] = slice,
            Err(i) => self.0.insert(i, slice),
        }
    }

    fn remove(&mut self, name: &str) {
        if let Ok(i) = self.position(name) {
            self.0.remove(i);
        }
    }

    fn values(&self) -> impl Iterator<Item = &Arc<SliceInfo>> {
        self.0.iter()
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

pub(crate) struct Store {
    config: Arc<ProxyConfig>,
    interner: Interner,
    services: HashMap<ServiceName, Arc<ServiceInfo>>,
    /// Slices per Service, by slice name.
    slices: HashMap<ServiceName, SliceGroup>,
    /// The Service each slice (by `namespace/name`) belongs to.
    slice_owner: HashMap<String, ServiceName>,
    /// Labels of every known node (this one included).
    nodes: BTreeMap<String, BTreeMap<String, String>>,
    /// Services using legacy `topologyKeys`: other nodes' labels matter to them.
    topology_services: HashSet<ServiceName>,
    frontends: FrontendIndex,
}

impl Store {
    pub fn new(config: Arc<ProxyConfig>) -> Self {
        Store {
            config,
            interner: Interner::default(),
            services: HashMap::new(),
            slices: HashMap::new(),
            slice_owner: HashMap::new(),
            nodes: BTreeMap::new(),
            topology_services: HashSet::new(),
            frontends: FrontendIndex::default(),
        }
    }

    pub fn config(&self) -> &ProxyConfig {
        &self.config
    }

    pub fn config_arc(&self) -> &Arc<ProxyConfig> {
        &self.config
    }

    pub fn set_config(&mut self, config: Arc<ProxyConfig>) {
        self.config = config;
    }

    /// This node's labels: its Node object's if known, else the configured ones.
    pub fn own_labels(&self) -> &BTreeMap<String, String> {
        self.nodes
            .get(&self.config.node_name)
            .unwrap_or(&self.config.node_labels)
    }

    pub fn node_labels(&self) -> &BTreeMap<String, BTreeMap<String, String>> {
        &self.nodes
    }

    pub fn service(&self, name: &ServiceName) -> Option<&ServiceInfo> {
        self.services.get(name).map(|s| &**s)
    }

    pub fn service_names(&self) -> impl Iterator<Item = &ServiceName> {
        self.services.keys()
    }

    pub fn slices_of(&self, name: &ServiceName) -> Vec<&SliceInfo> {
        self.slices
            .get(name)
            .map(|m| m.values().map(|s| &**s).collect())
            .unwrap_or_default()
    }

    pub fn frontend_owner(&self, frontend: &Frontend) -> Option<&ServiceName> {
        self.frontends.owner(frontend)
    }

    pub fn apply_service(&mut self, svc: &api::Service) -> Result<Touched, ValidationError> {
        if ServiceInfo::belongs_to_other_proxy(svc) {
            return self.delete_service(svc);
        }
        let info = ServiceInfo::from_api(svc)?;
        self.frontends.check(&info)?;
        let name = info.name.clone();
        if self.services.get(&name).is_some_and(|old| **old == info) {
            return Ok(Touched::Nothing);
        }
        let old = self.services.get(&name).cloned();
        self.frontends.replace(old.as_deref(), &info);
        if info.topology_keys.is_empty() {
            self.topology_services.remove(&name);
        } else {
            self.topology_services.insert(name.clone());
        }
        self.services.insert(name.clone(), Arc::new(info));
        Ok(Touched::Services(vec![name]))
    }

    pub fn delete_service(&mut self, svc: &api::Service) -> Result<Touched, ValidationError> {
        let Some(name) = key_to_service(&service_key(svc)) else {
            return Ok(Touched::Nothing);
        };
        Ok(self.remove_service(&name))
    }

    fn remove_service(&mut self, name: &ServiceName) -> Touched {
        match self.services.remove(name) {
            Some(old) => {
                self.frontends.remove(&old);
                self.topology_services.remove(name);
                Touched::Services(vec![name.clone()])
            }
            None => Touched::Nothing,
        }
    }

    pub fn prune_services(&mut self, keep: &HashSet<String>) -> Touched {
        let gone: Vec<ServiceName> = self
            .services
            .keys()
            .filter(|n| !keep.contains(&n.to_string()))
            .cloned()
            .collect();
        let mut touched = Vec::new();
        for name in gone {
            if let Touched::Services(t) = self.remove_service(&name) {
                touched.extend(t);
            }
        }
        Touched::Services(touched)
    }

    pub fn apply_slice(&mut self, slice: &api::EndpointSlice) -> Result<Touched, ValidationError> {
        if slice.metadata.labels.contains_key(LABEL_HEADLESS) {
            return Ok(self.remove_slice(&slice_key(slice)));
        }
        let info = SliceInfo::from_api(slice, &mut self.interner)?;
        let key = slice_key(slice);
        if info.family.is_none() {
            // FQDN slices carry nothing routable.
            return Ok(self.remove_slice(&key));
        }
        let service = info.service.clone();
        let mut touched = Vec::new();
        if let Some(old_owner) = self.slice_owner.get(&key)
            && *old_owner != service
        {
            // The slice moved to another Service: drop it from the old one.
            if let Touched::Services(t) = self.remove_slice(&key) {
                touched.extend(t);
            }
        }
        let group = self.slices.entry(service.clone()).or_default();
        if group.get(&info.name).is_some_and(|old| **old == info) {
            return Ok(Touched::Services(touched));
        }
        group.insert(Arc::new(info));
        self.slice_owner.insert(key, service.clone());
        touched.push(service);
        Ok(Touched::Services(touched))
    }

    pub fn delete_slice(&mut self, slice: &api::EndpointSlice) -> Result<Touched, ValidationError> {
        Ok(self.remove_slice(&slice_key(slice)))
    }

    fn remove_slice(&mut self, key: &str) -> Touched {
        let Some(service) = self.slice_owner.remove(key) else {
            return Touched::Nothing;
        };
        let slice_name = key.split_once('/').map(|(_, n)| n).unwrap_or(key);
        if let Some(group) = self.slices.get_mut(&service) {
            group.remove(slice_name);
            if group.is_empty() {
                self.slices.remove(&service);
            }
        }
        Touched::Services(vec![service])
    }

    pub fn prune_slices(&mut self, keep: &HashSet<String>) -> Touched {
        let gone: Vec<String> = self
            .slice_owner
            .keys()
            .filter(|k| !keep.contains(*k))
            .cloned()
            .collect();
        let mut touched = Vec::new();
        for key in gone {
            if let Touched::Services(t) = self.remove_slice(&key) {
                touched.extend(t);
            }
        }
        Touched::Services(touched)
    }

    pub fn apply_node(&mut self, node: &api::Node) -> Result<Touched, ValidationError> {
        let info = NodeInfo::from_api(node)?;
        if self.nodes.get(&info.name) == Some(&info.labels) {
            return Ok(Touched::Nothing);
        }
        let name = info.name.clone();
        self.nodes.insert(info.name, info.labels);
        Ok(self.node_changed(&name))
    }

    pub fn delete_node(&mut self, node: &api::Node) -> Result<Touched, ValidationError> {
        let name = node_key(node);
        if self.nodes.remove(&name).is_none() {
            return Ok(Touched::Nothing);
        }
        Ok(self.node_changed(&name))
    }

    pub fn prune_nodes(&mut self, keep: &HashSet<String>) -> Touched {
        let gone: Vec<String> = self
            .nodes
            .keys()
            .filter(|k| !keep.contains(*k))
            .cloned()
            .collect();
        let mut all = false;
        for name in &gone {
            self.nodes.remove(name);
            all |= *name == self.config.node_name;
        }
        if all {
            Touched::All
        } else if gone.is_empty() {
            Touched::Nothing
        } else {
            Touched::Services(self.topology_services.iter().cloned().collect())
        }
    }

    /// This node's labels drive topology for every Service; other nodes' labels only matter
    /// to Services using legacy `topologyKeys`.
    fn node_changed(&self, name: &str) -> Touched {
        if name == self.config.node_name {
            Touched::All
        } else {
            Touched::Services(self.topology_services.iter().cloned().collect())
        }
    }

    pub fn stats(&self) -> super::Stats {
        let slices = self.slices.values().map(SliceGroup::len).sum();
        let endpoints = self
            .slices
            .values()
            .flat_map(|g| g.values())
            .map(|s| s.endpoints.len())
            .sum();
        super::Stats {
            services: self.services.len(),
            slices,
            endpoints,
            nodes: self.nodes.len(),
            service_ports: 0,
        }
    }
}
