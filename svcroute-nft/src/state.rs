//! What one of our tables holds, split by owner: the fixed skeleton, each service port's
//! chains and maps, and the elements service ports put into the shared sets and maps. It
//! writes the full transaction of a sync, and plans an incremental one as the difference a set
//! of changed service ports makes: chains of unchanged ports are never mentioned, and maps and
//! sets change element by element.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use svcroute_core::select::ServicePortName;

use crate::parallel::join;
use crate::render::{self, PortObjects};
use crate::ruleset::{Chain, ElemKey, Element, Rule, Set, SetKind, Table};
use crate::slots;
use crate::transaction::{Command, TableId, Transaction};

/// Changed service ports and their new objects in one family (`None`: gone from it).
pub type PortChanges = Vec<(ServicePortName, Option<PortObjects>)>;

/// A key of a shared set or map: the set, and the element's key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct SharedKey {
    set: &'static str,
    key: ElemKey,
}

impl SharedKey {
    fn new(set: &'static str, key: ElemKey) -> Self {
        SharedKey { set, key }
    }
}

/// One service port's element for a shared key.
type Contribution = (Arc<ServicePortName>, Element);

/// Adds (or replaces) `name`'s element in contributions sorted by port name.
fn contribute(
    contributions: &mut Vec<Contribution>,
    name: &Arc<ServicePortName>,
    element: Element,
) {
    match contributions.binary_search_by(|(n, _)| (**n).cmp(&**name)) {
        Ok(i) => contributions[i].1 = element,
        Err(i) => contributions.insert(i, (Arc::clone(name), element)),
    }
}

/// The contributions to one shared set, gathered by a [`PortRun`].
#[derive(Debug)]
struct SharedBucket {
    set: &'static str,
    /// Each contribution's key and its index in `contributions`. Sorting these small pairs
    /// rather than the contributions keeps the sort cheap; the index keeps equal keys in the
    /// order their contributions came.
    keys: Vec<(ElemKey, usize)>,
    /// Taken when grouped by key.
    contributions: Vec<Option<Contribution>>,
}

impl SharedBucket {
    /// The bucket of `set` in `buckets` (created if needed).
    fn of<'a>(buckets: &'a mut Vec<SharedBucket>, set: &'static str) -> &'a mut SharedBucket {
        // Set names are the constants of `names`: compare the pointers first.
        let same = |b: &SharedBucket| std::ptr::eq(b.set, set) || b.set == set;
        let i = match buckets.iter().position(same) {
            Some(i) => i,
            None => {
                buckets.push(SharedBucket {
                    set,
                    keys: Vec::new(),
                    contributions: Vec::new(),
                });
                buckets.len() - 1
            }
        };
        &mut buckets[i]
    }

    fn add(&mut self, key: ElemKey, name: &Arc<ServicePortName>, element: Element) {
        self.keys.push((key, self.contributions.len()));
        self.contributions.push(Some((Arc::clone(name), element)));
    }

    /// Appends the contributions of a later run of ports.
    fn append(&mut self, other: SharedBucket) {
        let offset = self.contributions.len();
        self.keys
            .extend(other.keys.into_iter().map(|(key, i)| (key, offset + i)));
        self.contributions.extend(other.contributions);
    }

    /// Sorts the keys and groups their contributions.
    fn group(mut self) -> Grouped {
        // Stable: runs sorted already are merged.
        self.keys.sort();
        let mut programmed = Vec::with_capacity(self.keys.len());
        let mut firsts = Vec::with_capacity(self.keys.len());
        let mut others = Vec::new();
        for run in self.keys.chunk_by(|a, b| a.0 == b.0) {
            let key = run[0].0;
            let mut all = run
                .iter()
                .filter_map(|(_, index)| self.contributions.get_mut(*index).and_then(Option::take));
            let Some((first, element)) = all.next() else {
                continue;
            };
            let Some(second) = all.next() else {
                programmed.push((key, element));
                firsts.push((key, first));
                continue;
            };
            // Several: sorted by port name, a port's last element counting.
            let mut sorted = vec![(first, element)];
            for (name, other) in std::iter::once(second).chain(all) {
                contribute(&mut sorted, &name, other);
            }
            let mut sorted = sorted.into_iter();
            let Some((first, element)) = sorted.next() else {
                continue;
            };
            programmed.push((key, element));
            firsts.push((key, first));
            others.push((SharedKey::new(self.set, key), sorted.collect()));
        }
        Grouped {
            set: self.set,
            programmed,
            firsts,
            others,
        }
    }
}

/// The contributions to one shared set, grouped by key.
struct Grouped {
    set: &'static str,
    /// The programmed element of every key, sorted by key.
    programmed: Vec<(ElemKey, Element)>,
    /// The port of every key's programmed element, sorted by key.
    firsts: Vec<(ElemKey, Arc<ServicePortName>)>,
    /// The other contributions of keys with several, sorted by key and port name.
    others: Vec<(SharedKey, Vec<Contribution>)>,
}

/// Service ports gathered for a [`TableState`]: render threads each gather theirs while the
/// objects are hot in their cache, and sort them (sorted runs merge fast; see
/// [`TableState::from_runs`]).
#[derive(Debug, Default)]
pub struct PortRun {
    records: Vec<(Arc<ServicePortName>, PortRecord)>,
    chains: Vec<(String, Chain)>,
    sets: Vec<(String, Set)>,
    buckets: Vec<SharedBucket>,
}

impl PortRun {
    /// Adds a port's objects (port names are distinct across the runs of a state).
    pub fn push(&mut self, name: ServicePortName, objects: PortObjects) {
        let name = Arc::new(name);
        self.records
            .push((Arc::clone(&name), PortRecord::of(&objects)));
        self.chains.extend(objects.chains);
        self.sets.extend(objects.sets);
        for (set, key, element) in objects.elements {
            SharedBucket::of(&mut self.buckets, set).add(key, &name, element);
        }
    }

    /// Appends another run: sorted runs stay sorted pieces, merged when the maps are built.
    fn append(&mut self, other: PortRun) {
        self.records.extend(other.records);
        self.chains.extend(other.chains);
        self.sets.extend(other.sets);
        for bucket in other.buckets {
            match self.buckets.iter_mut().find(|b| b.set == bucket.set) {
                Some(mine) => mine.append(bucket),
                None => self.buckets.push(bucket),
            }
        }
    }

    /// Sorts what was gathered.
    pub fn sort(&mut self) {
        self.chains.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        self.sets.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        for bucket in &mut self.buckets {
            bucket.keys.sort_unstable();
        }
    }
}

impl FromIterator<(ServicePortName, PortObjects)> for PortRun {
    /// Gathers and sorts the objects of ports with distinct names.
    fn from_iter<I: IntoIterator<Item = (ServicePortName, PortObjects)>>(ports: I) -> Self {
        let mut run = PortRun::default();
        for (name, objects) in ports {
            run.push(name, objects);
        }
        run.sort();
        run
    }
}

/// States of this many ports or more are built on two threads.
const PARALLEL_PORTS: usize = 1024;

/// One programmed table and who contributed what.
#[derive(Debug, Clone)]
pub struct TableState {
    /// Which table.
    id: TableId,
    /// Shared with the full transaction that writes it ([`Command::AddContents`]); the first
    /// change after that transaction is gone modifies it in place.
    table: Arc<Table>,
    ports: BTreeMap<Arc<ServicePortName>, PortRecord>,
    /// The port whose element is programmed for each shared key, set by set (every shared set
    /// is in the skeleton): the first contributor by name.
    shared: BTreeMap<&'static str, BTreeMap<ElemKey, Arc<ServicePortName>>>,
    /// The other contributions, sorted by port name, of the keys that have several (endpoint
    /// IPs and ClusterIPs may), kept for when the programmed one goes.
    contested: BTreeMap<SharedKey, Vec<Contribution>>,
}

/// What one service port owns: the names of its chains and sets (their bodies live in the
/// table only) and the shared keys it contributes to.
#[derive(Debug, Clone, Default)]
struct PortRecord {
    chains: Vec<String>,
    sets: Vec<String>,
    shared: Vec<SharedKey>,
}

impl PortRecord {
    fn of(objects: &PortObjects) -> Self {
        PortRecord {
            chains: objects.chains.iter().map(|(n, _)| n.clone()).collect(),
            sets: objects.sets.iter().map(|(n, _)| n.clone()).collect(),
            shared: (objects.elements.iter())
                .map(|(set, key, _)| SharedKey::new(set, *key))
                .collect(),
        }
    }
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
    fn into_transaction(self, table: &TableId, tx: &mut Transaction) {
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
            tx.push(table, command);
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

impl TableState {
    /// The state of table `name` holding `skeleton` and every port's objects (`ports` have
    /// distinct names).
    pub fn new(name: &str, skeleton: Table, ports: Vec<(ServicePortName, PortObjects)>) -> Self {
        TableState::from_runs(name, skeleton, vec![ports.into_iter().collect()])
    }

    /// The state holding `skeleton` and the ports of `runs` (distinct names).
    ///
    /// The maps are built by merging the runs ([`PortRun::sort`]ed runs merge fastest), a
    /// fraction of the cost of inserting their entries one by one (which made most of a full
    /// render). Large states build the table's maps and the shared keys' on two threads.
    pub fn from_runs(name: &str, skeleton: Table, runs: Vec<PortRun>) -> Self {
        // Into the first run: moving it would be the biggest copy.
        let mut runs = runs.into_iter();
        let mut all = runs.next().unwrap_or_default();
        for run in runs {
            all.append(run);
        }
        let PortRun {
            records,
            mut chains,
            mut sets,
            buckets,
        } = all;
        let Table {
            family,
            comment,
            chains: fixed_chains,
            sets: fixed_sets,
        } = skeleton;
        chains.extend(fixed_chains);
        sets.extend(fixed_sets);
        let parallel = records.len() >= PARALLEL_PORTS;
        let ((chains, sets, ports), grouped) = join(
            parallel,
            || {
                let chains: BTreeMap<String, Chain> = BTreeMap::from_iter(chains);
                let sets: BTreeMap<String, Set> = BTreeMap::from_iter(sets);
                (chains, sets, BTreeMap::from_iter(records))
            },
            || {
                buckets
                    .into_iter()
                    .map(SharedBucket::group)
                    .collect::<Vec<_>>()
            },
        );
        let (mut programmed, mut firsts, mut contested) = (vec![], vec![], vec![]);
        for g in grouped {
            programmed.push((g.set, g.programmed));
            firsts.push((g.set, g.firsts));
            contested.extend(g.others);
        }
        let (programmed, shared) = join(
            parallel,
            || {
                let maps = programmed.into_iter();
                maps.map(|(set, p)| (set, BTreeMap::from_iter(p)))
                    .collect::<Vec<_>>()
            },
            || {
                let maps = firsts.into_iter();
                maps.map(|(set, f)| (set, BTreeMap::from_iter(f)))
                    .collect::<BTreeMap<_, _>>()
            },
        );
        let mut table = Table {
            family,
            comment,
            chains,
            sets,
        };
        for (set, mut elements) in programmed {
            if let Some(target) = table.sets.get_mut(set) {
                target.elements.append(&mut elements);
            }
        }
        TableState {
            id: TableId::new(family, name),
            table: Arc::new(table),
            ports,
            shared,
            contested: BTreeMap::from_iter(contested),
        }
    }

    /// The table as programmed.
    pub fn table(&self) -> &Table {
        &self.table
    }

    /// Whether service port `name` has objects here.
    pub fn holds(&self, name: &ServicePortName) -> bool {
        self.ports.contains_key(name)
    }

    /// The number of service ports with objects here.
    pub fn port_count(&self) -> usize {
        self.ports.len()
    }

    /// Which table.
    pub fn id(&self) -> &TableId {
        &self.id
    }

    /// Appends the commands writing this whole table from scratch (after its deletion): the
    /// table, then its contents ([`Command::AddContents`], sharing the table).
    pub fn write_full(&self, tx: &mut Transaction) {
        let comment = self.table.comment.clone();
        tx.push(&self.id, Command::AddTable { comment });
        tx.push(&self.id, Command::AddContents(Arc::clone(&self.table)));
    }

    /// Appends the commands that turn this table into the one where each port of `changes` has
    /// its new objects (`None`: the port is gone from this family). The endpoint maps of
    /// `changes` are first renumbered to keep the slots programmed ([`slots::keep`]), so pass
    /// the same `changes` to [`TableState::commit`] once the kernel accepted the transaction;
    /// nothing changes here until then.
    pub fn plan(&self, changes: &mut PortChanges, tx: &mut Transaction) {
        for objects in changes.iter_mut().filter_map(|(_, new)| new.as_mut()) {
            self.keep_slots(objects);
            self.keep_tombstones(objects);
            self.keep_affinity_ids(objects);
        }
        let mut phases = Phases::default();
        let (no_record, no_objects) = (PortRecord::default(), PortObjects::default());
        for (name, new) in changes.iter() {
            let old = self.ports.get(name).unwrap_or(&no_record);
            let new = new.as_ref().unwrap_or(&no_objects);
            let redeclared = self.redeclared_sets(old, new);
            self.plan_chains(old, new, &redeclared, &mut phases);
            self.plan_sets(old, new, &mut phases);
        }
        for (shared_key, contributions) in &self.changed_shared(changes) {
            let before = self.programmed(shared_key);
            let after = contributions.first().map(|(_, e)| e);
            if before == after {
                continue;
            }
            let SharedKey { set, key } = *shared_key;
            if before.is_some() {
                phases.delete_shared.push(Command::DeleteElements {
                    set: set.to_string(),
                    keys: vec![key],
                });
            }
            if let Some(element) = after {
                phases.add_shared.push(Command::AddElements {
                    set: set.to_string(),
                    elements: vec![(key, element.clone())],
                });
            }
        }
        phases.into_transaction(&self.id, tx);
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

    /// Keeps the lookup rules of endpoints that left a ClientIP-affinity endpoint chain, their
    /// `sep-E` chains emptied ("tombstones": a `jump` to an empty chain returns), so that an
    /// endpoint going out or coming back rewrites its own chain and the pick chain, not one
    /// rule per endpoint. The chain is written anew (the tombstones go) when an endpoint joins
    /// that has no lookup rule yet, when tombstones would outnumber live endpoints, or when
    /// anything else in it changed.
    fn keep_tombstones(&self, objects: &mut PortObjects) {
        let owned: BTreeSet<String> = objects.chains.iter().map(|(n, _)| n.clone()).collect();
        let mut tombstones: Vec<(String, Chain)> = Vec::new();
        for (name, chain) in &mut objects.chains {
            let Some(programmed) = self.table.chains.get(name) else {
                continue;
            };
            let live: BTreeSet<&str> = chain
                .rules
                .iter()
                .filter_map(|r| render::affinity_lookup(r).map(|(t, _)| t))
                .collect();
            let kept: BTreeSet<&str> = programmed
                .rules
                .iter()
                .filter_map(|r| render::affinity_lookup(r).map(|(t, _)| t))
                .collect();
            let others = |c: &Chain| -> Vec<Rule> {
                let rules = c.rules.iter();
                rules
                    .filter(|r| render::affinity_lookup(r).is_none())
                    .cloned()
                    .collect()
            };
            let departed: Vec<&str> = kept.difference(&live).copied().collect();
            let keep = !departed.is_empty()
                && live.is_subset(&kept)
                && departed.len() <= live.len()
                && departed.iter().all(|d| !owned.contains(*d))
                && others(chain) == others(programmed);
            if !keep {
                continue;
            }
            for dead in departed {
                let comment = self.table.chains.get(dead).and_then(|c| c.comment.clone());
                if !tombstones.iter().any(|(n, _)| n == dead) {
                    let empty = Chain {
                        hook: None,
                        comment,
                        rules: Vec::new(),
                    };
                    tombstones.push((dead.to_string(), empty));
                }
            }
            chain.rules = programmed.rules.clone();
        }
        objects.chains.extend(tombstones);
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
        if rendered.is_empty() {
            return;
        }
        // What the programmed chains of the port record, or look up (a tombstone revived).
        let mut known: BTreeMap<&str, u32> = BTreeMap::new();
        for (name, _) in &objects.chains {
            let Some(old) = self.table.chains.get(name) else {
                continue;
            };
            known.extend(old.rules.iter().filter_map(render::affinity_lookup));
            if let Some(id) = render::chain_affinity_id(old) {
                known.insert(name, id);
            }
        }
        let programmed: BTreeMap<&String, u32> = rendered
            .iter()
            .filter_map(|(name, _)| known.get(name.as_str()).map(|id| (*name, *id)))
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

    /// Every contribution, sorted by port name, to each shared key a port of `changes`
    /// contributes to before or after the changes, as it is after them (empty: none left).
    fn changed_shared(&self, changes: &PortChanges) -> BTreeMap<SharedKey, Vec<Contribution>> {
        let mut out: BTreeMap<SharedKey, Vec<Contribution>> = BTreeMap::new();
        let no_record = PortRecord::default();
        for (name, new) in changes {
            let old = self.ports.get(name).unwrap_or(&no_record);
            let new_elements = new.iter().flat_map(|objects| &objects.elements);
            let new_keys = new_elements
                .clone()
                .map(|(set, key, _)| SharedKey::new(set, *key));
            for shared_key in old.shared.iter().copied().chain(new_keys) {
                out.entry(shared_key)
                    .or_insert_with(|| self.contributions(&shared_key))
                    .retain(|(n, _)| **n != *name);
            }
            let arc = Arc::new(name.clone());
            for (set, key, element) in new_elements {
                if let Some(contributions) = out.get_mut(&SharedKey::new(set, *key)) {
                    contribute(contributions, &arc, element.clone());
                }
            }
        }
        out
    }

    /// Every contribution to a shared key, sorted by port name.
    fn contributions(&self, shared_key: &SharedKey) -> Vec<Contribution> {
        let Some(first) = self.first(shared_key) else {
            return Vec::new();
        };
        let first = self
            .programmed(shared_key)
            .map(|element| (Arc::clone(first), element.clone()));
        let others = self.contested.get(shared_key).into_iter().flatten();
        first.into_iter().chain(others.cloned()).collect()
    }

    /// The port whose element is programmed for a shared key.
    fn first(&self, shared_key: &SharedKey) -> Option<&Arc<ServicePortName>> {
        self.shared.get(shared_key.set)?.get(&shared_key.key)
    }

    /// The programmed element of a shared key (its first contributor's).
    fn programmed(&self, shared_key: &SharedKey) -> Option<&Element> {
        self.first(shared_key)?;
        let set = self.table.sets.get(shared_key.set)?;
        set.elements.get(&shared_key.key)
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
                    // An empty chain (an affinity tombstone coming back) needs no flush.
                    if !previous.rules.is_empty() {
                        phases.flush_chains.push(Command::FlushChain(name.clone()));
                    }
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
                        elements: set.elements.iter().map(|(k, e)| (*k, e.clone())).collect(),
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
                        .map(|(k, _)| *k)
                        .collect();
                    let added: Vec<(ElemKey, Element)> = set
                        .elements
                        .iter()
                        .filter(|(k, e)| previous.elements.get(*k) != Some(*e))
                        .map(|(k, e)| (*k, e.clone()))
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

    /// Records that the kernel now holds the result of [`TableState::plan`] for `changes`.
    pub fn commit(&mut self, changes: PortChanges) {
        let shared = self.changed_shared(&changes);
        let table = Arc::make_mut(&mut self.table);
        for (name, new) in changes {
            if let Some(old) = self.ports.remove(&name) {
                for chain in &old.chains {
                    table.chains.remove(chain);
                }
                for set in &old.sets {
                    table.sets.remove(set);
                }
            }
            let Some(objects) = new else {
                continue;
            };
            let record = PortRecord::of(&objects);
            table.chains.extend(objects.chains);
            table.sets.extend(objects.sets);
            self.ports.insert(Arc::new(name), record);
        }
        for (shared_key, contributions) in shared {
            self.store(shared_key, contributions);
        }
    }

    /// Records the contributions to a shared key: the first one's element is programmed.
    fn store(&mut self, shared_key: SharedKey, contributions: Vec<Contribution>) {
        let table = Arc::make_mut(&mut self.table);
        let target = table.sets.get_mut(shared_key.set);
        let mut contributions = contributions.into_iter();
        match contributions.next() {
            Some((first, element)) => {
                if let Some(target) = target {
                    target.elements.insert(shared_key.key, element);
                }
                (self.shared.entry(shared_key.set).or_default()).insert(shared_key.key, first);
            }
            None => {
                if let Some(target) = target {
                    target.elements.remove(&shared_key.key);
                }
                if let Some(set) = self.shared.get_mut(shared_key.set) {
                    set.remove(&shared_key.key);
                }
            }
        }
        let others: Vec<Contribution> = contributions.collect();
        if others.is_empty() {
            self.contested.remove(&shared_key);
        } else {
            self.contested.insert(shared_key, others);
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
    use crate::apply::full_transaction;
    use crate::kernel::{FakeKernel, Kernel};
    use crate::names::{PortNames, TABLE, endpoint_map};
    use crate::ruleset::{ElemValue, Value, Verdict};
    use crate::shards::{FamilyTables, PORTS_PER_SHARD, part_changes};
    use svcroute_core::model::IpFamily;

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

    /// One node with service `default/web`: the core's state, the IPv4 tables' shadow and the
    /// fake kernel holding them.
    struct Node {
        core: State,
        family: FamilyTables,
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
            let family = FamilyTables::build(core.desired(), V4, TABLE, PORTS_PER_SHARD);
            let mut kernel = FakeKernel::new();
            let states = BTreeMap::from([(V4, family.clone())]);
            kernel.run(&full_transaction(&[], &states)).unwrap();
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
            let port_changes = part_changes(self.core.desired().config(), &changes, V4);
            let mut tx = Transaction::new();
            let plan = self.family.plan(port_changes, &mut tx);
            if let Err(e) = self.kernel.run(&tx) {
                panic!("{e}\n{}", tx.text());
            }
            self.family.commit(plan);
            for (id, table) in self.family.tables() {
                assert_eq!(
                    self.kernel.table(V4, &id.name).as_ref(),
                    Some(table),
                    "the kernel holds the shadow"
                );
            }
            tx
        }

        fn map(&self) -> String {
            endpoint_map(
                &PortNames::new(&self.port).endpoints(svcroute_core::model::TrafficPolicy::Cluster),
            )
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
            (Value::Int(slot).into(), element)
        }

        /// The endpoints of the endpoint map in slot order (none without the map); checks
        /// the slots are 0..N-1.
        fn slots(&self) -> Vec<u8> {
            let map = self.map();
            let mut sets = self.family.tables().filter_map(|(_, t)| t.sets.get(&map));
            let Some(set) = sets.next() else {
                return Vec::new();
            };
            (0u32..)
                .zip(&set.elements)
                .map(|(slot, (key, element))| {
                    assert_eq!(key, &ElemKey::from(Value::Int(slot)), "slots are dense");
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
                keys: slots.iter().map(|s| Value::Int(*s).into()).collect(),
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

    /// The chains of `node`'s IPv4 tables, by name.
    fn chains(node: &Node) -> BTreeMap<String, Chain> {
        let tables = node.family.tables();
        tables.flat_map(|(_, t)| t.chains.clone()).collect()
    }

    /// The endpoint chains `svc-H`'s affinity lookups jump to, in order.
    fn lookups(node: &Node) -> Vec<String> {
        let svc =
            PortNames::new(&node.port).endpoints(svcroute_core::model::TrafficPolicy::Cluster);
        let chains = chains(node);
        let rules = chains
            .get(&svc)
            .map(|c| c.rules.clone())
            .unwrap_or_default();
        rules
            .iter()
            .filter_map(|r| render::affinity_lookup(r).map(|(t, _)| t.to_string()))
            .collect()
    }

    fn sep(node: &Node, i: u8) -> String {
        PortNames::new(&node.port).sep(&node.port, &address(i))
    }

    #[test]
    fn an_affinity_endpoint_that_leaves_keeps_its_lookup_until_tombstones_outnumber_the_rest() {
        let fifty: Vec<u8> = (1..=50).collect();
        let mut node = Node::start(true, &fifty);
        let all = lookups(&node);
        assert_eq!(all.len(), 50);
        // One out: its chain is emptied, the lookups stay; under a kilobyte.
        let without_25: Vec<u8> = (1..=50).filter(|i| *i != 25).collect();
        let out = node.update(&without_25).text();
        assert!(out.len() <= 1024, "{} bytes\n{out}", out.len());
        assert_eq!(lookups(&node), all);
        assert!(chains(&node)[&sep(&node, 25)].rules.is_empty());
        // Back: its chain is refilled, nothing else rewritten.
        let back = node.update(&fifty).text();
        assert!(back.len() <= 1024, "{} bytes\n{back}", back.len());
        eprintln!(
            "affinity, one endpoint of 50: out {} bytes, back {} bytes\n{out}{back}",
            out.len(),
            back.len()
        );
        assert_eq!(lookups(&node), all);
        assert_eq!(chains(&node)[&sep(&node, 25)].rules.len(), 2);
        // A new endpoint: the chain is written anew, tombstones gone.
        let mut more = without_25.clone();
        more.push(51);
        node.update(&more);
        assert_eq!(lookups(&node).len(), 50);
        assert!(!chains(&node).contains_key(&sep(&node, 25)));
        // Half of them out at once: more tombstones than live endpoints, a fresh chain.
        let few: Vec<u8> = (1..=20).collect();
        node.update(&few);
        assert_eq!(lookups(&node).len(), 20);
        assert!(chains(&node).values().all(|c| !c.rules.is_empty()));
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
        let state = TableState::new(
            "t",
            Table::new(svcroute_core::model::IpFamily::IPv4),
            vec![(name(), objects(&[("sep-A", 5), ("sep-B", 6)]))],
        );
        let mut changes: PortChanges = vec![(name(), Some(objects(&[("sep-B", 5), ("sep-C", 6)])))];
        state.plan(&mut changes, &mut Transaction::new());
        let planned = changes[0].1.as_ref().unwrap();
        assert_eq!(
            ids(planned),
            [("sep-B".to_string(), 6), ("sep-C".to_string(), 7)]
        );
        // Nothing to keep: the rendered IDs stay.
        let mut changes: PortChanges = vec![(name(), Some(objects(&[("sep-A", 5), ("sep-D", 9)])))];
        state.plan(&mut changes, &mut Transaction::new());
        assert_eq!(
            ids(changes[0].1.as_ref().unwrap()),
            [("sep-A".to_string(), 5), ("sep-D".to_string(), 9)]
        );
    }
}
