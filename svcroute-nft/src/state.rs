//! What one family's table holds, split by owner: the fixed skeleton, each service port's
//! chains and maps, and the elements service ports put into the shared sets and maps. It
//! writes the full transaction of a sync, and plans an incremental one as the difference a set
//! of changed service ports makes: chains of unchanged ports are never mentioned, and maps and
//! sets change element by element.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use svcroute_core::model::IpFamily;
use svcroute_core::select::ServicePortName;

use crate::render::{self, PortObjects};
use crate::ruleset::{Chain, ElemKey, Element, Rule, SetKind, Table};
use crate::slots;
use crate::transaction::{Command, Transaction};

/// Changed service ports and their new objects in one family (`None`: gone from it).
pub type PortChanges = Vec<(ServicePortName, Option<PortObjects>)>;

/// A key of a shared set or map.
type SharedKey = (&'static str, ElemKey);

/// The elements service ports contribute for one shared key, sorted by port name.
type Contributions = Vec<(Arc<ServicePortName>, Element)>;

fn contribute(contributions: &mut Contributions, name: &Arc<ServicePortName>, element: Element) {
    match contributions.binary_search_by(|(n, _)| (**n).cmp(&**name)) {
        Ok(i) => contributions[i].1 = element,
        Err(i) => contributions.insert(i, (name.clone(), element)),
    }
}

fn withdraw(contributions: &mut Contributions, name: &ServicePortName) {
    contributions.retain(|(n, _)| **n != *name);
}

/// One family's programmed table and who contributed what.
#[derive(Debug, Clone)]
pub struct FamilyState {
    table: Table,
    ports: BTreeMap<Arc<ServicePortName>, PortRecord>,
    /// Every service port's element per shared key, sorted by port name; the first is
    /// programmed. (Most keys have one contributor; endpoint IPs and ClusterIPs may have more.)
    shared: HashMap<SharedKey, Contributions>,
}

/// What one service port owns: the names of its chains and sets (their bodies live in the
/// table only) and the shared keys it contributes to.
#[derive(Debug, Clone, Default)]
struct PortRecord {
    chains: Vec<String>,
    sets: Vec<String>,
    shared: Vec<SharedKey>,
}

/// The commands of an incremental sync, by phase: the kernel checks references at every
/// command, so objects are created before anything points at them and deleted after nothing
/// does any more.
#[derive(Debug, Default)]
struct Phases {
    add_chains: Vec<Command>,
    delete_shared: Vec<Command>,
    flush_chains: Vec<Command>,
    delete_sets: Vec<Command>,
    owned_elements: Vec<Command>,
    add_rules: Vec<Command>,
    add_shared: Vec<Command>,
    delete_chains: Vec<Command>,
}

impl Phases {
    fn into_transaction(self, family: IpFamily, tx: &mut Transaction) {
        for command in [
            self.add_chains,
            self.delete_shared,
            self.flush_chains,
            self.delete_sets,
            self.owned_elements,
            self.add_rules,
            self.add_shared,
            self.delete_chains,
        ]
        .into_iter()
        .flatten()
        {
            tx.push(family, command);
        }
    }
}

fn add_rules(out: &mut Vec<Command>, name: &str, chain: &Chain) {
    out.extend(chain.rules.iter().map(|rule| Command::AddRule {
        chain: name.to_string(),
        rule: rule.clone(),
    }));
}

fn declare_chain(name: &str, chain: &Chain) -> Command {
    Command::AddChain {
        name: name.to_string(),
        chain: Chain {
            hook: chain.hook,
            comment: chain.comment.clone(),
            rules: Vec::new(),
        },
    }
}

/// Whether a rule of `chain` refers to `set`.
fn uses_set(chain: &Chain, set: &str) -> bool {
    chain.rules.iter().flat_map(Rule::sets).any(|s| s == set)
}

fn is_map(kind: SetKind) -> bool {
    kind != SetKind::Set
}

impl FamilyState {
    /// The state holding `skeleton` and every port's objects.
    pub fn new(skeleton: Table, ports: Vec<(ServicePortName, PortObjects)>) -> Self {
        let mut state = FamilyState {
            table: skeleton,
            ports: BTreeMap::new(),
            shared: HashMap::new(),
        };
        for (name, objects) in ports {
            state.insert(Arc::new(name), objects);
        }
        // Every key is new: program them all in one pass.
        for ((set, key), contributions) in &state.shared {
            if let (Some(target), Some((_, element))) =
                (state.table.sets.get_mut(*set), contributions.first())
            {
                target.elements.insert(key.clone(), element.clone());
            }
        }
        state
    }

    /// The table as programmed.
    pub fn table(&self) -> &Table {
        &self.table
    }

    /// The family.
    pub fn family(&self) -> IpFamily {
        self.table.family
    }

    /// Appends the commands writing this whole table from scratch (after its deletion).
    pub fn write_full(&self, tx: &mut Transaction) {
        let family = self.family();
        let table = &self.table;
        tx.push(
            family,
            Command::AddTable {
                comment: table.comment.clone(),
            },
        );
        // Chains exist (empty) before verdicts point at them; sets exist before rules use
        // them; rules come last.
        for (name, chain) in &table.chains {
            tx.push(family, declare_chain(name, chain));
        }
        for (name, set) in &table.sets {
            tx.push(
                family,
                Command::AddSet {
                    name: name.clone(),
                    decl: set.decl.clone(),
                },
            );
            if !set.elements.is_empty() {
                tx.push(
                    family,
                    Command::AddElements {
                        set: name.clone(),
                        elements: set
                            .elements
                            .iter()
                            .map(|(k, e)| (k.clone(), e.clone()))
                            .collect(),
                    },
                );
            }
        }
        let mut rules = Vec::new();
        for (name, chain) in &table.chains {
            add_rules(&mut rules, name, chain);
        }
        for command in rules {
            tx.push(family, command);
        }
    }

    /// Appends the commands that turn this table into the one where each port of `changes` has
    /// its new objects (`None`: the port is gone from this family). The endpoint maps of
    /// `changes` are first renumbered to keep the slots programmed ([`slots::keep`]), so pass
    /// the same `changes` to [`FamilyState::commit`] once the kernel accepted the transaction;
    /// nothing changes here until then.
    pub fn plan(&self, changes: &mut PortChanges, tx: &mut Transaction) {
        for objects in changes.iter_mut().filter_map(|(_, new)| new.as_mut()) {
            self.keep_slots(objects);
            self.keep_affinity_ids(objects);
        }
        let mut phases = Phases::default();
        let (no_record, no_objects) = (PortRecord::default(), PortObjects::default());
        let mut new_shared: BTreeMap<SharedKey, Contributions> = BTreeMap::new();
        for (name, new) in changes.iter() {
            let old = self.ports.get(name).unwrap_or(&no_record);
            let new = new.as_ref().unwrap_or(&no_objects);
            let redeclared = self.redeclared_sets(old, new);
            self.plan_chains(old, new, &redeclared, &mut phases);
            self.plan_sets(old, new, &mut phases);
            let new_keys = new.elements.iter().map(|(set, key, _)| (*set, key.clone()));
            for shared_key in old.shared.iter().cloned().chain(new_keys) {
                new_shared
                    .entry(shared_key.clone())
                    .or_insert_with(|| self.shared.get(&shared_key).cloned().unwrap_or_default())
                    .retain(|(n, _)| **n != *name);
            }
            let arc = Arc::new(name.clone());
            for (set, key, element) in &new.elements {
                if let Some(contributions) = new_shared.get_mut(&(*set, key.clone())) {
                    contribute(contributions, &arc, element.clone());
                }
            }
        }
        for (key, contributions) in &new_shared {
            let before = self.programmed(key);
            let after = contributions.first().map(|(_, e)| e);
            if before == after {
                continue;
            }
            let (set, elem_key) = key;
            if before.is_some() {
                phases.delete_shared.push(Command::DeleteElements {
                    set: set.to_string(),
                    keys: vec![elem_key.clone()],
                });
            }
            if let Some(element) = after {
                phases.add_shared.push(Command::AddElements {
                    set: set.to_string(),
                    elements: vec![(elem_key.clone(), element.clone())],
                });
            }
        }
        phases.into_transaction(self.family(), tx);
    }

    /// Renumbers the endpoint maps of `objects` so that endpoints keep the slots they have in
    /// the programmed maps of the same name.
    fn keep_slots(&self, objects: &mut PortObjects) {
        for (name, set) in &mut objects.sets {
            if let Some(previous) = self.table.sets.get(name) {
                slots::keep(previous, set);
            }
        }
    }

    /// Gives the endpoint chains of `objects` that are programmed already the affinity IDs
    /// they have (their clients' entries keep matching); new ones take their rendered ID, or
    /// the next free one. Only a collision of hashed IDs within a port makes them differ.
    fn keep_affinity_ids(&self, objects: &mut PortObjects) {
        let rendered: Vec<(&String, u32)> = objects
            .chains
            .iter()
            .filter_map(|(name, chain)| render::chain_affinity_id(chain).map(|id| (name, id)))
            .collect();
        let programmed: BTreeMap<&String, u32> = rendered
            .iter()
            .filter_map(|(name, _)| {
                let old = self.table.chains.get(*name)?;
                render::chain_affinity_id(old).map(|id| (*name, id))
            })
            .collect();
        if rendered
            .iter()
            .all(|(name, id)| programmed.get(name).is_none_or(|old| old == id))
        {
            return;
        }
        let kept = rendered
            .iter()
            .filter_map(|(name, _)| programmed.get(name).map(|id| ((*name).clone(), *id)));
        let new = rendered
            .iter()
            .filter(|(name, _)| !programmed.contains_key(name))
            .map(|(name, id)| ((*name).clone(), *id));
        let ids = render::affinity_ids(kept.chain(new));
        render::renumber_affinity(objects, &ids);
    }

    /// The port's sets whose declaration changes (they are deleted and created again).
    fn redeclared_sets<'a>(&self, old: &'a PortRecord, new: &PortObjects) -> BTreeSet<&'a str> {
        old.sets
            .iter()
            .filter(|name| {
                let before = self.table.sets.get(*name).map(|s| &s.decl);
                new.sets
                    .iter()
                    .any(|(n, s)| n == *name && Some(&s.decl) != before)
            })
            .map(String::as_str)
            .collect()
    }

    fn programmed(&self, key: &SharedKey) -> Option<&Element> {
        self.shared.get(key).and_then(|c| c.first()).map(|(_, e)| e)
    }

    /// Chains whose rules changed, or that use a set declared anew (deleting it needs the
    /// chain flushed first), are flushed and refilled.
    fn plan_chains(
        &self,
        old: &PortRecord,
        new: &PortObjects,
        redeclared: &BTreeSet<&str>,
        phases: &mut Phases,
    ) {
        let old_chains: BTreeMap<&String, &Chain> = old
            .chains
            .iter()
            .filter_map(|n| self.table.chains.get(n).map(|c| (n, c)))
            .collect();
        let new_names: BTreeSet<&String> = new.chains.iter().map(|(n, _)| n).collect();
        for (name, chain) in &new.chains {
            match old_chains.get(name) {
                None => {
                    phases.add_chains.push(declare_chain(name, chain));
                    add_rules(&mut phases.add_rules, name, chain);
                }
                Some(previous)
                    if previous.rules != chain.rules
                        || redeclared.iter().any(|set| uses_set(previous, set)) =>
                {
                    phases.flush_chains.push(Command::FlushChain(name.clone()));
                    add_rules(&mut phases.add_rules, name, chain);
                }
                Some(_) => {}
            }
        }
        for name in old_chains.keys().filter(|n| !new_names.contains(*n)) {
            phases
                .flush_chains
                .push(Command::FlushChain((*name).clone()));
            phases
                .delete_chains
                .push(Command::DeleteChain((*name).clone()));
        }
    }

    fn plan_sets(&self, old: &PortRecord, new: &PortObjects, phases: &mut Phases) {
        let old_sets: BTreeMap<&String, _> = old
            .sets
            .iter()
            .filter_map(|n| self.table.sets.get(n).map(|s| (n, s)))
            .collect();
        let new_names: BTreeSet<&String> = new.sets.iter().map(|(n, _)| n).collect();
        for (name, set) in &new.sets {
            let create = |phases: &mut Phases| {
                phases.owned_elements.push(Command::AddSet {
                    name: name.clone(),
                    decl: set.decl.clone(),
                });
                if !set.elements.is_empty() {
                    phases.owned_elements.push(Command::AddElements {
                        set: name.clone(),
                        elements: set
                            .elements
                            .iter()
                            .map(|(k, e)| (k.clone(), e.clone()))
                            .collect(),
                    });
                }
            };
            match old_sets.get(name) {
                None => create(phases),
                Some(previous) if previous.decl != set.decl => {
                    phases.delete_sets.push(Command::DeleteSet {
                        name: name.clone(),
                        map: is_map(previous.decl.kind),
                    });
                    create(phases);
                }
                Some(previous) => {
                    let gone: Vec<ElemKey> = previous
                        .elements
                        .iter()
                        .filter(|(k, e)| set.elements.get(*k) != Some(*e))
                        .map(|(k, _)| k.clone())
                        .collect();
                    let added: Vec<(ElemKey, Element)> = set
                        .elements
                        .iter()
                        .filter(|(k, e)| previous.elements.get(*k) != Some(*e))
                        .map(|(k, e)| (k.clone(), e.clone()))
                        .collect();
                    if !gone.is_empty() {
                        phases.owned_elements.push(Command::DeleteElements {
                            set: name.clone(),
                            keys: gone,
                        });
                    }
                    if !added.is_empty() {
                        phases.owned_elements.push(Command::AddElements {
                            set: name.clone(),
                            elements: added,
                        });
                    }
                }
            }
        }
        for (name, set) in old_sets.iter().filter(|(n, _)| !new_names.contains(*n)) {
            phases.delete_sets.push(Command::DeleteSet {
                name: (*name).clone(),
                map: is_map(set.decl.kind),
            });
        }
    }

    /// Records that the kernel now holds the result of [`FamilyState::plan`] for `changes`.
    pub fn commit(&mut self, changes: PortChanges) {
        let mut touched = Vec::new();
        for (name, new) in changes {
            self.remove(&name, &mut touched);
            if let Some(objects) = new {
                touched.extend(self.insert(Arc::new(name), objects).iter().cloned());
            }
        }
        touched.sort();
        touched.dedup();
        self.program_shared(touched);
    }

    fn remove(&mut self, name: &ServicePortName, touched: &mut Vec<SharedKey>) {
        let Some(old) = self.ports.remove(name) else {
            return;
        };
        for chain in &old.chains {
            self.table.chains.remove(chain);
        }
        for set in &old.sets {
            self.table.sets.remove(set);
        }
        for shared_key in old.shared {
            if let Some(contributions) = self.shared.get_mut(&shared_key) {
                withdraw(contributions, name);
            }
            touched.push(shared_key);
        }
    }

    /// Records a port's objects; returns the shared keys it contributes to.
    fn insert(&mut self, name: Arc<ServicePortName>, objects: PortObjects) -> &[SharedKey] {
        let mut record = PortRecord::default();
        for (chain, body) in objects.chains {
            record.chains.push(chain.clone());
            self.table.chains.insert(chain, body);
        }
        for (set, body) in objects.sets {
            record.sets.push(set.clone());
            self.table.sets.insert(set, body);
        }
        for (set, key, element) in objects.elements {
            let shared_key = (set, key);
            contribute(
                self.shared.entry(shared_key.clone()).or_default(),
                &name,
                element,
            );
            record.shared.push(shared_key);
        }
        &self
            .ports
            .entry(name)
            .insert_entry(record)
            .into_mut()
            .shared
    }

    /// Writes the programmed element of every touched shared key into the table.
    fn program_shared(&mut self, touched: Vec<SharedKey>) {
        for key in touched {
            let element = self.programmed(&key).cloned();
            if element.is_none() {
                self.shared.remove(&key);
            }
            let (set, elem_key) = key;
            if let Some(target) = self.table.sets.get_mut(set) {
                match element {
                    Some(e) => {
                        target.elements.insert(elem_key, e);
                    }
                    None => {
                        target.elements.remove(&elem_key);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use svcroute_conformance::objects::{ServiceBuilder, SliceBuilder, ep};
    use svcroute_core::State;
    use svcroute_core::model::ProxyConfig;
    use svcroute_core::watch::WatchEvent;

    use super::*;
    use crate::apply::{desired_state, full_transaction};
    use crate::kernel::{FakeKernel, Kernel};
    use crate::names::{PortNames, TABLE, endpoint_map};
    use crate::render;
    use crate::ruleset::{ElemValue, Value, Verdict};

    const V4: IpFamily = IpFamily::IPv4;

    fn config() -> ProxyConfig {
        ProxyConfig {
            cluster_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
            ..ProxyConfig::default()
        }
    }

    fn address(i: u8) -> SocketAddr {
        SocketAddr::from(([10, 244, 1, i], 8080))
    }

    fn service(affinity: bool) -> WatchEvent {
        let svc = ServiceBuilder::new("default", "web")
            .cluster_ip("10.96.0.10")
            .port("http", 80, "TCP");
        let svc = if affinity {
            svc.client_ip_affinity(None)
        } else {
            svc
        };
        svc.apply()
    }

    /// The slice of `default/web`: endpoints `10.244.1.i:8080`, in the order given.
    fn slice(endpoints: &[u8]) -> WatchEvent {
        endpoints
            .iter()
            .fold(
                SliceBuilder::ipv4("default", "web-1", "web").port("http", 8080, "TCP"),
                |slice, i| slice.endpoint(ep(&address(*i).ip().to_string())),
            )
            .apply()
    }

    /// One node with service `default/web`: the core's state, the IPv4 table's shadow and the
    /// fake kernel holding it.
    struct Node {
        core: State,
        family: FamilyState,
        kernel: FakeKernel,
        port: ServicePortName,
        affinity: bool,
    }

    impl Node {
        /// A node programmed with one full sync.
        fn start(affinity: bool, endpoints: &[u8]) -> Node {
            let mut core = State::new(config()).unwrap();
            core.apply(service(affinity)).unwrap();
            core.apply(slice(endpoints)).unwrap();
            core.take_changes();
            let family = desired_state(core.desired(), V4);
            let mut kernel = FakeKernel::new();
            let states = BTreeMap::from([(V4, family.clone())]);
            kernel.run(&full_transaction(TABLE, &states)).unwrap();
            let port = core.desired().ports().next().unwrap().name.clone();
            Node {
                core,
                family,
                kernel,
                port,
                affinity,
            }
        }

        /// Gives `default/web` these endpoints with one incremental sync; returns its
        /// transaction, which the fake kernel took.
        fn update(&mut self, endpoints: &[u8]) -> Transaction {
            self.core.apply(slice(endpoints)).unwrap();
            let changes = self.core.take_changes();
            let config = self.core.desired().config();
            let mut port_changes: PortChanges = changes
                .changes()
                .iter()
                .map(|c| {
                    let objects = c
                        .current
                        .as_ref()
                        .and_then(|p| render::port_objects(config, p, V4));
                    (c.name.clone(), objects)
                })
                .collect();
            let mut tx = Transaction::new(TABLE);
            self.family.plan(&mut port_changes, &mut tx);
            if let Err(e) = self.kernel.run(&tx) {
                panic!("{e}\n{}", tx.text());
            }
            self.family.commit(port_changes);
            assert_eq!(
                self.kernel.table(V4, TABLE).as_ref(),
                Some(self.family.table()),
                "the kernel holds the shadow"
            );
            tx
        }

        fn map(&self) -> String {
            endpoint_map(&PortNames::new(&self.port).svc)
        }

        /// What the endpoint map holds for endpoint `i`.
        fn value(&self, i: u8) -> ElemValue {
            if self.affinity {
                let sep = PortNames::new(&self.port).sep(&self.port, &address(i));
                ElemValue::Verdict(Verdict::Goto(sep))
            } else {
                ElemValue::Endpoint(address(i))
            }
        }

        fn element(&self, slot: u32, i: u8) -> (ElemKey, Element) {
            let element = Element {
                value: Some(self.value(i)),
                comment: None,
            };
            (vec![Value::Int(slot)], element)
        }

        /// The endpoints of the endpoint map in slot order (none without the map); checks
        /// the slots are 0..N-1.
        fn slots(&self) -> Vec<u8> {
            let Some(set) = self.family.table().sets.get(&self.map()) else {
                return Vec::new();
            };
            (0u32..)
                .zip(&set.elements)
                .map(|(slot, (key, element))| {
                    assert_eq!(key, &vec![Value::Int(slot)], "slots are dense");
                    (0..=u8::MAX)
                        .find(|i| element.value.as_ref() == Some(&self.value(*i)))
                        .unwrap()
                })
                .collect()
        }

        /// The commands of `tx` on the endpoint map.
        fn map_commands(&self, tx: &Transaction) -> Vec<Command> {
            let map = self.map();
            tx.commands
                .iter()
                .map(|(_, command)| command)
                .filter(|command| match command {
                    Command::AddElements { set, .. } | Command::DeleteElements { set, .. } => {
                        *set == map
                    }
                    _ => false,
                })
                .cloned()
                .collect()
        }

        fn delete(&self, slots: &[u32]) -> Command {
            Command::DeleteElements {
                set: self.map(),
                keys: slots.iter().map(|s| vec![Value::Int(*s)]).collect(),
            }
        }

        fn add(&self, elements: &[(u32, u8)]) -> Command {
            Command::AddElements {
                set: self.map(),
                elements: elements.iter().map(|(s, i)| self.element(*s, *i)).collect(),
            }
        }
    }

    fn sorted(mut endpoints: Vec<u8>) -> Vec<u8> {
        endpoints.sort_unstable();
        endpoints
    }

    #[test]
    fn removing_a_middle_endpoint_moves_the_last_one_into_its_slot() {
        for affinity in [false, true] {
            let mut node = Node::start(affinity, &[1, 2, 3, 4, 5]);
            assert_eq!(node.slots(), [1, 2, 3, 4, 5]);
            let tx = node.update(&[1, 2, 4, 5]);
            assert_eq!(
                node.map_commands(&tx),
                [node.delete(&[2, 4]), node.add(&[(2, 5)])],
                "affinity: {affinity}\n{}",
                tx.text()
            );
            assert_eq!(node.slots(), [1, 2, 5, 4]);
        }
    }

    #[test]
    fn adding_an_endpoint_appends_a_slot() {
        for affinity in [false, true] {
            let mut node = Node::start(affinity, &[1, 2, 3]);
            let tx = node.update(&[0, 1, 2, 3]);
            assert_eq!(node.map_commands(&tx), [node.add(&[(3, 0)])]);
            assert_eq!(node.slots(), [1, 2, 3, 0]);
        }
    }

    #[test]
    fn removing_the_endpoint_of_the_last_slot_deletes_one_element() {
        for affinity in [false, true] {
            let mut node = Node::start(affinity, &[1, 2, 3]);
            let tx = node.update(&[1, 2]);
            assert_eq!(node.map_commands(&tx), [node.delete(&[2])]);
            assert_eq!(node.slots(), [1, 2]);
        }
    }

    #[test]
    fn a_replaced_endpoint_takes_the_slot_it_frees() {
        for affinity in [false, true] {
            let mut node = Node::start(affinity, &[1, 2, 3]);
            let tx = node.update(&[1, 3, 9]);
            assert_eq!(
                node.map_commands(&tx),
                [node.delete(&[1]), node.add(&[(1, 9)])]
            );
            assert_eq!(node.slots(), [1, 9, 3]);
        }
    }

    #[test]
    fn many_changes_at_once_keep_slots_dense_and_every_endpoint() {
        let steps: [&[u8]; 8] = [
            &[1, 2, 3, 4, 5, 6, 7, 8],
            &[2, 4, 6, 8, 10, 12],
            &[1, 2, 3],
            &[3, 4, 5, 6, 7, 8, 9, 10, 11, 12],
            &[12],
            &[],
            &[5, 6, 7],
            &[7, 20, 21, 22, 23, 5],
        ];
        for affinity in [false, true] {
            let mut node = Node::start(affinity, &[1, 2, 3, 4]);
            for endpoints in steps {
                let before = node.slots();
                node.update(endpoints);
                let after = node.slots();
                assert_eq!(sorted(after.clone()), sorted(endpoints.to_vec()));
                // Survivors move only to fill a slot below the new count.
                for (slot, i) in before.iter().enumerate() {
                    if let Some(now) = after.iter().position(|e| e == i) {
                        assert!(now == slot || now < slot && slot >= after.len());
                    }
                }
            }
        }
    }

    /// The transaction text of one endpoint change in a service of 50 endpoints.
    fn one_change_of_fifty(endpoints: &[u8]) -> String {
        let fifty: Vec<u8> = (1..=50).collect();
        let mut node = Node::start(false, &fifty);
        node.update(endpoints).text()
    }

    #[test]
    fn one_endpoint_change_of_fifty_writes_under_a_kilobyte() {
        let without_25: Vec<u8> = (1..=50).filter(|i| *i != 25).collect();
        let removal = one_change_of_fifty(&without_25);
        let with_51: Vec<u8> = (1..=51).collect();
        let addition = one_change_of_fifty(&with_51);
        eprintln!(
            "one endpoint of 50: removal {} bytes, addition {} bytes\n{removal}{addition}",
            removal.len(),
            addition.len()
        );
        assert!(removal.len() <= 1024, "{removal}");
        assert!(addition.len() <= 1024, "{addition}");
        // The hairpin element, the endpoint chain's two rules (its `mod N` changed) and the
        // three endpoint-map elements of the removal (one line per command).
        assert_eq!(removal.lines().count(), 6, "{removal}");
        assert_eq!(addition.lines().count(), 5, "{addition}");
    }
}

#[cfg(test)]
mod affinity_ids {
    use svcroute_core::model::{Protocol, ServiceName};

    use super::*;
    use crate::render::{affinity_key, chain_affinity_id};
    use crate::ruleset::{Operand, Stmt, Verdict};

    fn name() -> ServicePortName {
        ServicePortName {
            service: ServiceName::new("ns", "web"),
            port_name: String::new(),
            protocol: Protocol::Tcp,
        }
    }

    /// `svc-H` looking up each `(sep, id)` and the `sep` chains recording them.
    fn objects(endpoints: &[(&str, u32)]) -> PortObjects {
        let lookups = endpoints
            .iter()
            .map(|(sep, id)| {
                Rule::new(vec![
                    Stmt::Match {
                        left: affinity_key(*id),
                        negate: false,
                        right: Operand::Set("aff-H".into()),
                    },
                    Stmt::Verdict(Verdict::Goto(sep.to_string())),
                ])
            })
            .collect();
        let mut chains = vec![(
            "svc-H".to_string(),
            Chain {
                rules: lookups,
                ..Chain::default()
            },
        )];
        for (sep, id) in endpoints {
            let update = Rule::new(vec![Stmt::Update {
                set: "aff-H".into(),
                key: affinity_key(*id),
            }]);
            chains.push((
                sep.to_string(),
                Chain {
                    rules: vec![update],
                    ..Chain::default()
                },
            ));
        }
        PortObjects {
            chains,
            ..PortObjects::default()
        }
    }

    fn ids(objects: &PortObjects) -> Vec<(String, u32)> {
        let by_chain: BTreeMap<&str, &Chain> = objects
            .chains
            .iter()
            .map(|(n, c)| (n.as_str(), c))
            .collect();
        let mut out = Vec::new();
        for rule in &by_chain["svc-H"].rules {
            let Stmt::Match { left, .. } = &rule.stmts[0] else {
                unreachable!()
            };
            let sep = rule.chains().next().unwrap().to_string();
            let updated = chain_affinity_id(by_chain[sep.as_str()]).unwrap();
            assert_eq!(left, &affinity_key(updated), "lookup and update agree");
            out.push((sep, updated));
        }
        out
    }

    #[test]
    fn endpoints_keep_their_affinity_id_while_they_exist() {
        // A and B collided: B took 6. A goes; B is rendered with 5 now but keeps 6, and a
        // new C whose hashed ID is 6 takes 7.
        let state = FamilyState::new(
            Table::new(IpFamily::IPv4),
            vec![(name(), objects(&[("sep-A", 5), ("sep-B", 6)]))],
        );
        let mut changes: PortChanges = vec![(name(), Some(objects(&[("sep-B", 5), ("sep-C", 6)])))];
        state.plan(&mut changes, &mut Transaction::new("t"));
        let planned = changes[0].1.as_ref().unwrap();
        assert_eq!(
            ids(planned),
            [("sep-B".to_string(), 6), ("sep-C".to_string(), 7)]
        );
        // Nothing to keep: the rendered IDs stay.
        let mut changes: PortChanges = vec![(name(), Some(objects(&[("sep-A", 5), ("sep-D", 9)])))];
        state.plan(&mut changes, &mut Transaction::new("t"));
        assert_eq!(
            ids(changes[0].1.as_ref().unwrap()),
            [("sep-A".to_string(), 5), ("sep-D".to_string(), 9)]
        );
    }
}
