//! Rendering (pure): the settings become the fixed chains and sets of a family's common table
//! ([`common_skeleton`]) and of each of its shards ([`shard_skeleton`]); each resolved service
//! port becomes its own chains and maps plus elements in the shared sets and maps, split
//! between the common table and its shard ([`port_objects`]). The layout is drawn in the
//! crate docs.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ipnet::IpNet;
use svcroute_core::model::{IpFamily, Protocol, ProxyConfig, TrafficPolicy};
use svcroute_core::select::{FamilyRouting, NoEndpointVerdict, ResolvedServicePort};

use crate::names::{self, PortNames, affinity_id, endpoint_map};
use crate::ruleset::{
    BaseHook, Chain, ChainType, ElemKey, ElemValue, Element, Expr, Hook, KeyType, MarkOp, Operand,
    Rule, Set, SetDecl, SetKind, Stmt, Table, Value, Verdict, endpoint_text,
};

/// What one service port contributes to one table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PortObjects {
    /// Chains it owns (`svc-H`, `svl-H`, `ext-H`, `fw-H`, `sep-E`).
    pub chains: Vec<(String, Chain)>,
    /// Sets and maps it owns (endpoint maps, affinity sets), with their elements.
    pub sets: Vec<(String, Set)>,
    /// Elements it adds to the shared sets and maps: (set, key, element).
    pub elements: Vec<(&'static str, ElemKey, Element)>,
}

/// What one service port contributes to a family's tables.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PortParts {
    /// To the common table: its `fw-H` chain and its elements in the filter hooks' sets and
    /// maps ([`names::in_common_table`]).
    pub common: PortObjects,
    /// To the table of its shard: everything else.
    pub shard: PortObjects,
}

impl PortParts {
    /// Both parts in one, for a family whose common table is its only shard.
    pub fn merged(self) -> PortObjects {
        let PortParts {
            mut common,
            mut shard,
        } = self;
        common.chains.append(&mut shard.chains);
        common.sets.append(&mut shard.sets);
        common.elements.append(&mut shard.elements);
        common
    }
}

fn rule(stmts: Vec<Stmt>) -> Rule {
    Rule::new(stmts)
}

fn is(left: Expr, right: Value) -> Stmt {
    Stmt::Match {
        left,
        negate: false,
        right: Operand::Value(right),
    }
}

fn is_not(left: Expr, right: Value) -> Stmt {
    Stmt::Match {
        left,
        negate: true,
        right: Operand::Value(right),
    }
}

fn in_set(left: Expr, set: &str) -> Stmt {
    Stmt::Match {
        left,
        negate: false,
        right: Operand::Set(set.to_string()),
    }
}

fn jump(chain: &str) -> Stmt {
    Stmt::Verdict(Verdict::Jump(chain.to_string()))
}

fn goto(chain: &str) -> Stmt {
    Stmt::Verdict(Verdict::Goto(chain.to_string()))
}

fn ct_new() -> Stmt {
    is(Expr::CtState, Value::New)
}

/// `daddr . meta l4proto . th dport`: the key of the frontend maps.
fn frontend_key() -> Expr {
    Expr::Concat(vec![Expr::Daddr, Expr::L4Proto, Expr::ThDport])
}

/// `meta l4proto . th dport`: the key of the NodePort maps.
fn node_port_key() -> Expr {
    Expr::Concat(vec![Expr::L4Proto, Expr::ThDport])
}

fn base(kind: ChainType, hook: Hook, priority: i32, rules: Vec<Rule>) -> Chain {
    Chain {
        hook: Some(BaseHook {
            kind,
            hook,
            priority,
        }),
        comment: None,
        rules,
    }
}

fn regular(rules: Vec<Rule>) -> Chain {
    Chain {
        hook: None,
        comment: None,
        rules,
    }
}

fn set_decl(kind: SetKind, key: Vec<KeyType>, comment: &str) -> SetDecl {
    SetDecl {
        kind,
        key,
        interval: false,
        timeout: None,
        size: None,
        protocol: None,
        comment: Some(comment.to_string()),
    }
}

fn interval_set(comment: &str, nets: impl IntoIterator<Item = IpNet>) -> Set {
    Set {
        decl: SetDecl {
            interval: true,
            ..set_decl(SetKind::Set, vec![KeyType::Addr], comment)
        },
        elements: nets
            .into_iter()
            .map(|n| (ElemKey::from(Value::Net(n.trunc())), Element::default()))
            .collect(),
    }
}

/// A network as nft lists it back: host bits cleared, a single host as a plain address.
fn net_value(net: IpNet) -> Value {
    let net = net.trunc();
    if net.prefix_len() == net.max_prefix_len() {
        Value::Addr(net.addr())
    } else {
        Value::Net(net)
    }
}

fn empty_set(decl: SetDecl) -> Set {
    Set {
        decl,
        elements: Default::default(),
    }
}

fn in_family(family: IpFamily) -> impl Fn(&&IpNet) -> bool {
    move |n| IpFamily::of(&n.addr()) == family
}

/// The NodePort address filter as `(statements before the lookup, nodeport-ips elements)`:
/// every local address but loopback (`fib daddr type local`), or the listed networks
/// ([`ProxyConfig::nodeport_networks`]).
fn node_port_gate(config: &ProxyConfig, family: IpFamily) -> (Vec<Stmt>, BTreeSet<IpNet>) {
    if let Some(nets) = config.nodeport_networks(family) {
        return (vec![in_set(Expr::Daddr, names::NODEPORT_IPS)], nets);
    }
    let mut gate = vec![is(Expr::FibDaddrType, Value::Local)];
    match family {
        IpFamily::IPv4 if config.localhost_nodeports => {}
        IpFamily::IPv4 => gate.push(is_not(
            Expr::Daddr,
            net_value(IpNet::new_assert(
                IpAddr::V4(Ipv4Addr::new(127, 0, 0, 0)),
                8,
            )),
        )),
        IpFamily::IPv6 => gate.push(is_not(
            Expr::Daddr,
            Value::Addr(IpAddr::V6(Ipv6Addr::LOCALHOST)),
        )),
    }
    (gate, BTreeSet::new())
}

fn pod_cidrs(config: &ProxyConfig, family: IpFamily) -> Set {
    let nets = config
        .cluster_cidrs
        .iter()
        .filter(in_family(family))
        .copied();
    interval_set("local pod CIDRs", nets)
}

fn node_port_ips_set(nets: BTreeSet<IpNet>) -> Set {
    interval_set("addresses NodePorts are open on", nets)
}

fn frontend_map(comment: &str) -> Set {
    let key = vec![KeyType::Addr, KeyType::Proto, KeyType::Service];
    empty_set(set_decl(SetKind::VerdictMap, key, comment))
}

fn node_port_map(comment: &str) -> Set {
    let key = vec![KeyType::Proto, KeyType::Service];
    empty_set(set_decl(SetKind::VerdictMap, key, comment))
}

fn table_of(
    family: IpFamily,
    comment: &str,
    chains: Vec<(&str, Chain)>,
    sets: Vec<(&str, Set)>,
) -> Table {
    Table {
        family,
        comment: Some(comment.to_string()),
        chains: chains
            .into_iter()
            .map(|(n, c)| (n.to_string(), c))
            .collect(),
        sets: sets.into_iter().map(|(n, s)| (n.to_string(), s)).collect(),
    }
}

/// The fixed chains and sets of a family's common table, from the settings alone: every
/// filter hook (firewall, no-endpoint verdicts, undefined ClusterIP ports, unallocated service
/// IPs, health-check NodePorts) and masquerading. It holds no per-port chain but the `fw-H`
/// firewalls, so adding to its verdict maps re-validates little at commit.
pub fn common_skeleton(config: &ProxyConfig, family: IpFamily) -> Table {
    let mark = config.masquerade_mark();
    let (gate, node_port_ips) = node_port_gate(config, family);
    let checks = |node_ports: bool| {
        let mut rules = vec![rule(vec![ct_new(), jump(names::SERVICE_ENDPOINTS_CHECK)])];
        if node_ports {
            rules.push(rule(vec![ct_new(), jump(names::NODEPORT_ENDPOINTS_CHECK)]));
        }
        rules.push(rule(vec![ct_new(), jump(names::CLUSTER_IPS_CHECK)]));
        rules
    };
    let mut input = checks(true);
    input.push(rule(vec![
        is(Expr::FibDaddrType, Value::Local),
        in_set(Expr::TcpDport, names::HEALTH_CHECK_PORTS),
        Stmt::Verdict(Verdict::Accept),
    ]));
    let firewall = || vec![rule(vec![ct_new(), jump(names::FIREWALL_CHECK)])];
    let mut node_port_check = gate;
    node_port_check.push(Stmt::Vmap {
        key: node_port_key(),
        map: names::NO_ENDPOINT_NODEPORTS.into(),
    });

    let chains = vec![
        (
            names::FILTER_PREROUTING,
            base(ChainType::Filter, Hook::Prerouting, -110, firewall()),
        ),
        (
            names::FILTER_OUTPUT_PRE_DNAT,
            base(ChainType::Filter, Hook::Output, -110, firewall()),
        ),
        (
            names::FILTER_INPUT,
            base(ChainType::Filter, Hook::Input, -1, input),
        ),
        (
            names::FILTER_FORWARD,
            base(ChainType::Filter, Hook::Forward, -1, checks(false)),
        ),
        (
            names::FILTER_OUTPUT,
            base(ChainType::Filter, Hook::Output, -1, checks(true)),
        ),
        (
            names::NAT_POSTROUTING,
            base(
                ChainType::Nat,
                Hook::Postrouting,
                100,
                vec![rule(vec![jump(names::MASQUERADING)])],
            ),
        ),
        (
            names::FIREWALL_CHECK,
            regular(vec![rule(vec![Stmt::Vmap {
                key: frontend_key(),
                map: names::FIREWALL_IPS.into(),
            }])]),
        ),
        (
            names::SERVICE_ENDPOINTS_CHECK,
            regular(vec![rule(vec![Stmt::Vmap {
                key: frontend_key(),
                map: names::NO_ENDPOINT_SERVICES.into(),
            }])]),
        ),
        (
            names::NODEPORT_ENDPOINTS_CHECK,
            regular(vec![rule(node_port_check)]),
        ),
        (
            names::CLUSTER_IPS_CHECK,
            regular(vec![
                rule(vec![in_set(Expr::Daddr, names::CLUSTER_IPS), Stmt::Reject])
                    .with_comment("undefined port of a ClusterIP".into()),
                rule(vec![
                    in_set(Expr::Daddr, names::SERVICE_CIDRS),
                    Stmt::Verdict(Verdict::Drop),
                ])
                .with_comment("unallocated service IP".into()),
            ]),
        ),
        (names::REJECT_CHAIN, regular(vec![rule(vec![Stmt::Reject])])),
        (
            names::MASQUERADING,
            regular(vec![
                rule(vec![
                    is(Expr::CtStatus, Value::Dnat),
                    in_set(Expr::Concat(vec![Expr::Saddr, Expr::Daddr]), names::HAIRPIN),
                    jump(names::MARK_FOR_MASQUERADE),
                ])
                .with_comment("hairpin: an endpoint reaching itself".into()),
                rule(vec![
                    is(Expr::MarkAnd(mark), Value::Int(0)),
                    Stmt::Verdict(Verdict::Return),
                ]),
                rule(vec![Stmt::Mark(MarkOp::Xor(mark))]),
                rule(vec![Stmt::Masquerade]).with_comment("service traffic requiring SNAT".into()),
            ]),
        ),
        (names::MARK_FOR_MASQUERADE, mark_for_masquerade(config)),
    ];

    let service_cidrs = config.service_cidrs.iter().filter(in_family(family));
    let sets = vec![
        (
            names::CLUSTER_IPS,
            empty_set(set_decl(
                SetKind::Set,
                vec![KeyType::Addr],
                "ClusterIPs: other ports are rejected",
            )),
        ),
        (
            names::SERVICE_CIDRS,
            interval_set("service CIDRs", service_cidrs.copied()),
        ),
        (names::NODEPORT_IPS, node_port_ips_set(node_port_ips)),
        (
            names::HAIRPIN,
            empty_set(set_decl(
                SetKind::Set,
                vec![KeyType::Addr, KeyType::Addr],
                "endpoint . endpoint: hairpin traffic is masqueraded",
            )),
        ),
        (
            names::HEALTH_CHECK_PORTS,
            empty_set(set_decl(
                SetKind::Set,
                vec![KeyType::Service],
                "health-check NodePorts",
            )),
        ),
        (
            names::FIREWALL_IPS,
            frontend_map("load-balancer IPs with source ranges"),
        ),
        (
            names::NO_ENDPOINT_SERVICES,
            frontend_map("frontends without usable endpoints"),
        ),
        (
            names::NO_ENDPOINT_NODEPORTS,
            node_port_map("NodePorts without usable endpoints"),
        ),
    ];
    table_of(
        family,
        "svcroute service routing; managed by svcroute, do not edit",
        chains,
        sets,
    )
}

/// The fixed chains and sets of a family whose common table is also its only shard: both
/// skeletons in one table (what they share, `mark-for-masquerade` and `nodeport-ips`, is the
/// same in both).
pub fn single_table_skeleton(config: &ProxyConfig, family: IpFamily) -> Table {
    let mut table = common_skeleton(config, family);
    let shard = shard_skeleton(config, family);
    for (name, chain) in shard.chains {
        table.chains.entry(name).or_insert(chain);
    }
    for (name, set) in shard.sets {
        table.sets.entry(name).or_insert(set);
    }
    table
}

fn mark_for_masquerade(config: &ProxyConfig) -> Chain {
    regular(vec![rule(vec![Stmt::Mark(MarkOp::Or(
        config.masquerade_mark(),
    ))])])
}

/// The fixed chains and sets of one of a family's shard tables, from the settings alone: the
/// nat hooks that DNAT service traffic, dispatching through the shard's own frontend maps to
/// the chains of its service ports. Each shard holds a share of the service ports, so that a
/// change re-validates only its shard's chains at commit.
pub fn shard_skeleton(config: &ProxyConfig, family: IpFamily) -> Table {
    let (gate, node_port_ips) = node_port_gate(config, family);
    // The shard's own NodePorts first: a hash lookup, where the gate may be a route lookup.
    let mut node_ports = vec![in_set(node_port_key(), names::NODEPORT_KEYS)];
    node_ports.extend(gate);
    node_ports.push(Stmt::Vmap {
        key: node_port_key(),
        map: names::SERVICE_NODEPORTS.into(),
    });
    let dispatch = || vec![rule(vec![jump(names::SERVICES)])];
    let chains = vec![
        (
            names::NAT_PREROUTING,
            base(ChainType::Nat, Hook::Prerouting, -100, dispatch()),
        ),
        (
            names::NAT_OUTPUT,
            base(ChainType::Nat, Hook::Output, -100, dispatch()),
        ),
        (
            names::SERVICES,
            regular(vec![
                rule(vec![Stmt::Vmap {
                    key: frontend_key(),
                    map: names::SERVICE_IPS.into(),
                }]),
                rule(node_ports),
            ]),
        ),
        (names::MARK_FOR_MASQUERADE, mark_for_masquerade(config)),
    ];
    let sets = vec![
        (names::POD_CIDRS, pod_cidrs(config, family)),
        (names::NODEPORT_IPS, node_port_ips_set(node_port_ips)),
        (names::SERVICE_IPS, frontend_map("service frontends")),
        (names::SERVICE_NODEPORTS, node_port_map("NodePorts")),
        (
            names::NODEPORT_KEYS,
            empty_set(set_decl(
                SetKind::Set,
                vec![KeyType::Proto, KeyType::Service],
                "the keys of service-nodeports",
            )),
        ),
    ];
    table_of(
        family,
        "svcroute service routing, a shard of the service ports; managed by svcroute, do not \
         edit",
        chains,
        sets,
    )
}

/// The elements of an endpoint map: slot `i` holds the `i`-th value.
fn slots(values: impl Iterator<Item = ElemValue>) -> BTreeMap<ElemKey, Element> {
    let mut elements = BTreeMap::new();
    for (slot, value) in (0..).zip(values) {
        let element = Element {
            value: Some(value),
            comment: None,
        };
        elements.insert(Value::Int(slot).into(), element);
    }
    elements
}

/// Builds one service port's objects in one family.
struct PortRenderer<'a> {
    config: &'a ProxyConfig,
    port: &'a ResolvedServicePort,
    fam: &'a FamilyRouting,
    names: PortNames,
    protocol: Protocol,
    out: PortParts,
}

impl PortRenderer<'_> {
    /// Adds an element to a shared set or map of the table that holds `set`.
    fn shared(&mut self, set: &'static str, key: ElemKey, element: Element) {
        let objects = if names::in_common_table(set) {
            &mut self.out.common
        } else {
            &mut self.out.shard
        };
        objects.elements.push((set, key, element));
    }

    fn element(&mut self, set: &'static str, key: ElemKey, value: Option<ElemValue>) {
        let element = Element {
            value,
            comment: None,
        };
        self.shared(set, key, element);
    }

    /// A frontend-map element `ip . proto . port`, commented with the service port.
    fn frontend(&mut self, set: &'static str, ip: IpAddr, note: &str, verdict: Verdict) {
        let key = ElemKey::from((ip, self.protocol, self.port.port));
        let element = Element {
            value: Some(ElemValue::Verdict(verdict)),
            comment: Some([&self.names.display, " ", note].concat()),
        };
        self.shared(set, key, element);
    }

    fn node_port(&mut self, set: &'static str, node_port: u16, verdict: Verdict) {
        let key = ElemKey::from([Value::Proto(self.protocol), Value::Port(node_port)]);
        let element = Element {
            value: Some(ElemValue::Verdict(verdict)),
            comment: Some([&self.names.display, " node port"].concat()),
        };
        self.shared(set, key, element);
    }

    /// Adds a chain of the port's shard.
    fn chain(&mut self, name: String, comment: String, rules: Vec<Rule>) {
        self.out.shard.chains.push((
            name,
            Chain {
                hook: None,
                comment: Some(comment),
                rules,
            },
        ));
    }

    fn refusal(when: NoEndpointVerdict) -> Verdict {
        match when {
            NoEndpointVerdict::Reject => Verdict::Goto(names::REJECT_CHAIN.into()),
            NoEndpointVerdict::Drop => Verdict::Drop,
        }
    }

    fn firewall(&mut self) {
        let Some(allowed) = &self.fam.firewall_allowed_sources else {
            return;
        };
        if self.fam.load_balancer_ips.is_empty() {
            return;
        }
        let mut rules: Vec<Rule> = allowed
            .iter()
            .map(|n| {
                rule(vec![
                    is(Expr::Saddr, net_value(*n)),
                    Stmt::Verdict(Verdict::Return),
                ])
            })
            .collect();
        rules.push(
            rule(vec![Stmt::Verdict(Verdict::Drop)]).with_comment(format!(
                "{} other traffic to loadbalancer IP",
                self.names.display
            )),
        );
        let fw = self.names.fw();
        // In the common table, with the filter hooks.
        self.out.common.chains.push((
            fw.clone(),
            Chain {
                hook: None,
                comment: Some(format!("{} loadbalancer source ranges", self.names.display)),
                rules,
            },
        ));
        for ip in self.fam.load_balancer_ips.clone() {
            self.frontend(
                names::FIREWALL_IPS,
                ip,
                "loadbalancer IP",
                Verdict::Goto(fw.clone()),
            );
        }
    }

    /// ClusterIP traffic; returns the policy of the endpoint chain it goes to, if any.
    fn internal(&mut self) -> Option<TrafficPolicy> {
        let cluster_ip = self.fam.cluster_ip;
        self.element(names::CLUSTER_IPS, Value::Addr(cluster_ip).into(), None);
        let policy = self.port.internal_traffic_policy;
        if self.fam.has_any_endpoints && !self.fam.endpoints(policy).is_empty() {
            let target = self.names.endpoints(policy);
            self.frontend(
                names::SERVICE_IPS,
                cluster_ip,
                "cluster IP",
                Verdict::Goto(target),
            );
            Some(policy)
        } else {
            let verdict = Self::refusal(self.fam.when_empty());
            self.frontend(
                names::NO_ENDPOINT_SERVICES,
                cluster_ip,
                "cluster IP",
                verdict,
            );
            None
        }
    }

    /// The no-endpoint verdict for every external frontend.
    fn refuse_external(&mut self, when: NoEndpointVerdict) {
        let verdict = Self::refusal(when);
        for (ip, note) in self.fam.external_frontends() {
            self.frontend(names::NO_ENDPOINT_SERVICES, ip, note, verdict.clone());
        }
        if let Some(np) = self.port.node_port {
            self.node_port(names::NO_ENDPOINT_NODEPORTS, np, verdict);
        }
    }

    /// External traffic (externalIPs, LB IPs, NodePort); returns the policies of the endpoint
    /// chains it uses.
    fn external(&mut self) -> Vec<TrafficPolicy> {
        let frontends = self.fam.external_frontends();
        if frontends.is_empty() && self.port.node_port.is_none() {
            return Vec::new();
        }
        if !self.fam.has_any_endpoints {
            self.refuse_external(NoEndpointVerdict::Reject);
            return Vec::new();
        }
        let display = self.names.display.clone();
        let svc = self.names.endpoints(TrafficPolicy::Cluster);
        let has_cluster = !self.fam.cluster().is_empty();
        let has_local = !self.fam.endpoints(TrafficPolicy::Local).is_empty();
        let mut rules = Vec::new();
        let mut used = Vec::new();
        match self.port.external_traffic_policy {
            TrafficPolicy::Cluster => {
                if !has_cluster {
                    self.refuse_external(self.fam.when_empty());
                    return Vec::new();
                }
                rules.push(
                    rule(vec![jump(names::MARK_FOR_MASQUERADE)]).with_comment(format!(
                        "masquerade traffic for {display} external destinations"
                    )),
                );
                rules.push(rule(vec![goto(&svc)]));
                used.push(TrafficPolicy::Cluster);
            }
            TrafficPolicy::Local => {
                if has_cluster {
                    // Pods short-circuit to every endpoint, keeping their source; node
                    // sources are masqueraded and may use every endpoint too.
                    rules.push(
                        rule(vec![in_set(Expr::Saddr, names::POD_CIDRS), goto(&svc)]).with_comment(
                            format!("pod traffic for {display} external destinations"),
                        ),
                    );
                    rules.push(
                        rule(vec![
                            is(Expr::FibSaddrType, Value::Local),
                            jump(names::MARK_FOR_MASQUERADE),
                        ])
                        .with_comment(format!(
                            "masquerade LOCAL traffic for {display} external destinations"
                        )),
                    );
                    rules.push(rule(vec![is(Expr::FibSaddrType, Value::Local), goto(&svc)]));
                    used.push(TrafficPolicy::Cluster);
                }
                if has_local {
                    let svl = self.names.endpoints(TrafficPolicy::Local);
                    rules.push(rule(vec![goto(&svl)]));
                    used.push(TrafficPolicy::Local);
                } else {
                    // Everything else finds no local endpoint: dropped by the filter checks.
                    self.refuse_external(NoEndpointVerdict::Drop);
                }
            }
        }
        let ext = self.names.ext();
        self.chain(ext.clone(), [&display, " external traffic"].concat(), rules);
        for (ip, note) in frontends {
            self.frontend(names::SERVICE_IPS, ip, note, Verdict::Goto(ext.clone()));
        }
        if let Some(np) = self.port.node_port {
            self.node_port(names::SERVICE_NODEPORTS, np, Verdict::Goto(ext));
            let key = [Value::Proto(self.protocol), Value::Port(np)];
            self.element(names::NODEPORT_KEYS, key.into(), None);
        }
        used
    }

    /// The ClusterIP masquerade rule at the top of the internal endpoint chain.
    fn internal_masquerade(&self) -> Option<Rule> {
        let mut stmts = vec![
            is(Expr::Daddr, Value::Addr(self.fam.cluster_ip)),
            is(Expr::ThDport, Value::Port(self.port.port)),
        ];
        if !self.config.masquerade_all {
            if !self.config.has_local_detector() {
                return None;
            }
            stmts.push(Stmt::Match {
                left: Expr::Saddr,
                negate: true,
                right: Operand::Set(names::POD_CIDRS.into()),
            });
        }
        stmts.push(jump(names::MARK_FOR_MASQUERADE));
        Some(rule(stmts))
    }

    fn l4proto(&self) -> Stmt {
        is(Expr::L4Proto, Value::Proto(self.protocol))
    }

    /// An endpoint chain (`svc-H` / `svl-H`) and its endpoint map: masquerade, affinity,
    /// random pick.
    fn endpoint_chain(
        &mut self,
        policy: TrafficPolicy,
        internal: bool,
        ids: &BTreeMap<SocketAddr, u32>,
    ) {
        let chain = self.names.endpoints(policy);
        let endpoints = self.fam.endpoints(policy);
        let which = match policy {
            TrafficPolicy::Cluster => "cluster",
            TrafficPolicy::Local => "local",
        };
        let comment = [&self.names.display, " ", which, " endpoints"].concat();
        let mut rules = Vec::new();
        if internal && let Some(r) = self.internal_masquerade() {
            rules.push(r);
        }
        let map = endpoint_map(&chain);
        let n = u32::try_from(endpoints.len()).unwrap_or(u32::MAX);
        let (kind, elements) = if self.port.affinity_timeout.is_some() {
            let seps: Vec<String> = endpoints
                .iter()
                .map(|e| self.names.sep(&self.port.name, e))
                .collect();
            // `jump`: an endpoint that left keeps its lookup rule for a while, its chain
            // emptied, and an empty chain returns here (see `TableState::keep_tombstones`).
            for (sep, e) in seps.iter().zip(endpoints) {
                rules.push(rule(vec![
                    in_set(affinity_key(ids[e]), &self.names.aff()),
                    jump(sep),
                ]));
            }
            // The random pick in a chain of its own: a new endpoint count rewrites one rule.
            let pick = names::pick_chain(&chain);
            rules.push(rule(vec![goto(&pick)]));
            let pick_rules = vec![rule(vec![Stmt::Vmap {
                key: Expr::numgen(n),
                map: map.clone(),
            }])];
            self.chain(pick, [&comment, " pick"].concat(), pick_rules);
            let targets = seps
                .into_iter()
                .map(|sep| ElemValue::Verdict(Verdict::Goto(sep)));
            (SetKind::VerdictMap, slots(targets))
        } else {
            rules.push(rule(vec![
                self.l4proto(),
                Stmt::DnatNumgen {
                    modulus: n,
                    map: map.clone(),
                },
            ]));
            let targets = endpoints.iter().map(|e| ElemValue::Endpoint(*e));
            (SetKind::EndpointMap, slots(targets))
        };
        self.out.shard.sets.push((
            map,
            Set {
                decl: SetDecl {
                    protocol: (kind == SetKind::EndpointMap).then_some(self.protocol),
                    ..set_decl(kind, vec![KeyType::Slot], &comment)
                },
                elements,
            },
        ));
        self.chain(chain, comment, rules);
    }

    /// The chain of one endpoint of a service with session affinity: it records the client
    /// in the port's affinity set under the endpoint's `id`, then DNATs.
    fn affinity_endpoint(&mut self, endpoint: &SocketAddr, id: u32) {
        let sep = self.names.sep(&self.port.name, endpoint);
        let rules = vec![
            rule(vec![Stmt::Update {
                set: self.names.aff(),
                key: affinity_key(id),
            }]),
            rule(vec![self.l4proto(), Stmt::DnatTo(*endpoint)]),
        ];
        let text = endpoint_text(endpoint);
        self.chain(sep, [&self.names.display, " -> ", &text].concat(), rules);
    }

    /// The port's affinity set: `client . endpoint ID`, refreshed by each new connection.
    fn affinity_set(&mut self, timeout: u32) {
        self.out.shard.sets.push((
            self.names.aff(),
            empty_set(SetDecl {
                kind: SetKind::Set,
                key: vec![KeyType::Addr, KeyType::Slot],
                interval: false,
                timeout: Some(timeout),
                size: Some(AFFINITY_SET_SIZE),
                protocol: None,
                comment: Some([&self.names.display, " ClientIP affinity"].concat()),
            }),
        ));
    }

    fn render(mut self) -> PortParts {
        // Every element: ClusterIP, frontends, NodePorts, hairpin pairs, health check.
        let frontends = self.fam.external_ips.len() + 2 * self.fam.load_balancer_ips.len();
        let endpoints = self.fam.endpoints(TrafficPolicy::Cluster).len()
            + self.fam.endpoints(TrafficPolicy::Local).len();
        self.out.common.elements.reserve(2 + endpoints);
        self.out.shard.elements.reserve(2 + frontends);
        self.firewall();
        let internal = self.internal();
        let external = self.external();
        // `svc-H` before `svl-H`.
        let policies: Vec<(TrafficPolicy, bool)> = [TrafficPolicy::Cluster, TrafficPolicy::Local]
            .into_iter()
            .map(|policy| (policy, internal == Some(policy)))
            .filter(|(policy, is_internal)| *is_internal || external.contains(policy))
            .collect();
        let mut reachable: Vec<SocketAddr> = Vec::with_capacity(endpoints);
        for (policy, _) in &policies {
            reachable.extend_from_slice(self.fam.endpoints(*policy));
        }
        reachable.sort_unstable();
        reachable.dedup();
        let ids = match self.port.affinity_timeout {
            Some(_) => affinity_ids(reachable.iter().map(|e| {
                let id = affinity_id(&self.names.sep(&self.port.name, e));
                (*e, id)
            })),
            None => BTreeMap::new(),
        };
        for (policy, is_internal) in policies {
            self.endpoint_chain(policy, is_internal, &ids);
        }
        if let Some(timeout) = self.port.affinity_timeout
            && !reachable.is_empty()
        {
            self.affinity_set(timeout);
            for (e, id) in &ids {
                self.affinity_endpoint(e, *id);
            }
        }
        let mut ips: Vec<IpAddr> = reachable.iter().map(SocketAddr::ip).collect();
        ips.sort_unstable();
        ips.dedup();
        for ip in ips {
            self.element(
                names::HAIRPIN,
                [Value::Addr(ip), Value::Addr(ip)].into(),
                None,
            );
        }
        if let Some(hc) = self.port.health_check_node_port {
            self.element(names::HEALTH_CHECK_PORTS, Value::Port(hc).into(), None);
        }
        self.out
    }
}

/// The declared size of an affinity set: how many `client . endpoint` entries it holds at
/// most (nft would give a dynamic set 65,535).
pub const AFFINITY_SET_SIZE: u32 = 1 << 20;

/// `ip saddr . numgen random mod 1 offset ID`: the key of an affinity set (nft refuses a
/// literal inside a lookup key; a numgen of modulus 1 is always its offset).
pub fn affinity_key(id: u32) -> Expr {
    Expr::Concat(vec![Expr::Saddr, Expr::constant(id)])
}

/// The affinity IDs of a port's endpoints, from each endpoint's hashed ID (`wanted`, in
/// endpoint order): a collision takes the next free value (below 2^31).
pub fn affinity_ids<K: Ord>(wanted: impl IntoIterator<Item = (K, u32)>) -> BTreeMap<K, u32> {
    let mut taken = BTreeSet::new();
    let mut out = BTreeMap::new();
    for (key, id) in wanted {
        let mut id = id & 0x7fff_ffff;
        while !taken.insert(id) {
            id = (id + 1) & 0x7fff_ffff;
        }
        out.insert(key, id);
    }
    out
}

/// The affinity ID an endpoint chain records its clients under (the offset in the key of
/// its `update` statement), if it is one.
pub fn chain_affinity_id(chain: &Chain) -> Option<u32> {
    chain
        .rules
        .iter()
        .flat_map(|r| &r.stmts)
        .find_map(|s| match s {
            Stmt::Update { key, .. } => key_affinity_id(key),
            _ => None,
        })
}

/// The endpoint chain and affinity ID a rule of an endpoint chain jumps to when the client is
/// in the port's affinity set under that ID (`saddr . ID @aff-H jump sep-E`), if it is one.
pub fn affinity_lookup(rule: &Rule) -> Option<(&str, u32)> {
    match rule.stmts.as_slice() {
        [
            Stmt::Match {
                left,
                negate: false,
                right: Operand::Set(_),
            },
            Stmt::Verdict(Verdict::Jump(target)),
        ] => key_affinity_id(left).map(|id| (target.as_str(), id)),
        _ => None,
    }
}

fn key_affinity_id(key: &Expr) -> Option<u32> {
    match key {
        Expr::Concat(parts) => match parts.as_slice() {
            [Expr::Saddr, Expr::Numgen { modulus: 1, offset }] => Some(*offset),
            _ => None,
        },
        _ => None,
    }
}

/// Gives the endpoint chains of `objects` the affinity IDs `ids` (by chain name), in their
/// `update` statements and in the lookups that go to them.
pub fn renumber_affinity(objects: &mut PortObjects, ids: &BTreeMap<String, u32>) {
    for (name, chain) in &mut objects.chains {
        for rule in &mut chain.rules {
            let target = rule.chains().next().map(str::to_string);
            for stmt in &mut rule.stmts {
                let (key, chain) = match stmt {
                    Stmt::Update { key, .. } => (key, Some(name.as_str())),
                    Stmt::Match {
                        left,
                        right: Operand::Set(_),
                        ..
                    } => (left, target.as_deref()),
                    _ => continue,
                };
                if key_affinity_id(key).is_some()
                    && let Some(id) = chain.and_then(|c| ids.get(c))
                {
                    *key = affinity_key(*id);
                }
            }
        }
    }
}

/// What `port` contributes in `family`; `None` when the port has no address of the family.
pub fn port_objects(
    config: &ProxyConfig,
    port: &ResolvedServicePort,
    family: IpFamily,
) -> Option<PortParts> {
    let fam = port.family(family)?;
    let renderer = PortRenderer {
        config,
        port,
        fam,
        names: PortNames::new(&port.name),
        protocol: port.name.protocol,
        out: PortParts::default(),
    };
    Some(renderer.render())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn affinity_ids_bump_collisions_in_order() {
        let ids = affinity_ids([
            ("a", 5),
            ("b", 5),
            ("c", 6),
            ("d", 0x7fff_ffff),
            ("e", 0x7fff_ffff),
        ]);
        let got: Vec<u32> = ["a", "b", "c", "d", "e"].iter().map(|k| ids[k]).collect();
        assert_eq!(got, [5, 6, 7, 0x7fff_ffff, 0]);
    }
}
