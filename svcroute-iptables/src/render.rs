//! Rendering (pure): the settings become the fixed chains ([`skeleton`]), each resolved service
//! port becomes its own chains plus rules in the shared chains ([`port_rules`]). The layout is
//! drawn in the crate docs.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::sync::OnceLock;

use ipnet::IpNet;
use svcroute_core::model::{IpFamily, ProxyConfig, TrafficPolicy};
use svcroute_core::select::{
    FamilyRouting, NoEndpointVerdict, ResolvedServicePort, ServicePortName,
};

use crate::names::{self, PortChains, comment};
use crate::ruleset::TableName;

/// A chain svcroute shares between service ports: fixed rules before and after the rules the
/// service ports contribute (which sit in between, sorted).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SharedChain {
    /// Rules before the service rules.
    pub head: Vec<String>,
    /// Rules after the service rules (e.g. the NodePort jump that must stay last).
    pub tail: Vec<String>,
}

/// What the settings alone decide, for one family.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Skeleton {
    /// Rules inserted at the top of built-in chains, in order: (table, built-in chain, rules).
    pub hooks: Vec<(TableName, &'static str, Vec<String>)>,
    /// Our shared chains.
    pub shared: Vec<(TableName, &'static str, SharedChain)>,
}

/// What one service port contributes in one family.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PortRules {
    /// Chains the port owns outright: (table, chain, rules), the rules as iptables-restore
    /// lines `-A CHAIN RULE` (one string per chain, ready to write, keeps a 50,000-endpoint
    /// render to a few allocations per endpoint).
    pub chains: Vec<(TableName, String, String)>,
    /// Rules it adds to shared chains: (table, chain, rule).
    pub shared: Vec<(TableName, &'static str, String)>,
}

/// `ip/32` or `ip/128`.
fn host(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(_) => format!("{ip}/32"),
        IpAddr::V6(_) => format!("{ip}/128"),
    }
}

/// `-m comment --comment "TEXT"` for text escaped already.
fn quoted(text: &str) -> String {
    format!("-m comment --comment \"{text}\"")
}

/// Rules as a chain body: `-A CHAIN RULE` lines.
fn lines(chain: &str, rules: Vec<String>) -> String {
    let mut body = String::with_capacity(rules.iter().map(|r| r.len() + chain.len() + 5).sum());
    for rule in rules {
        body.push_str("-A ");
        body.push_str(chain);
        body.push(' ');
        body.push_str(&rule);
        body.push('\n');
    }
    body
}

fn jump(rule_prefix: &str, target: &str) -> String {
    if rule_prefix.is_empty() {
        format!("-j {target}")
    } else {
        format!("{rule_prefix} -j {target}")
    }
}

/// The rules that send NodePort-eligible destinations to `target`, following
/// `--nodeport-addresses` and localhost NodePorts exactly as
/// [`ProxyConfig::accepts_nodeport_on`] does.
fn nodeport_gates(config: &ProxyConfig, family: IpFamily, note: &str, target: &str) -> Vec<String> {
    let c = comment(note);
    let Some(nets) = config.nodeport_networks(family) else {
        let exclude = match family {
            IpFamily::IPv4 if config.localhost_nodeports => "",
            IpFamily::IPv4 => "! -d 127.0.0.0/8 ",
            IpFamily::IPv6 => "! -d ::1/128 ",
        };
        return vec![format!(
            "{exclude}{c} -m addrtype --dst-type LOCAL -j {target}"
        )];
    };
    nets.iter()
        .map(|n| format!("-d {n} {c} -j {target}"))
        .collect()
}

fn pod_cidrs(config: &ProxyConfig, family: IpFamily) -> Vec<IpNet> {
    config
        .cluster_cidrs
        .iter()
        .filter(|n| IpFamily::of(&n.addr()) == family)
        .copied()
        .collect()
}

/// The fixed chains and hooks of one family.
pub fn skeleton(config: &ProxyConfig, family: IpFamily) -> Skeleton {
    let mark = format!("{:#x}", config.masquerade_mark());
    let new = "-m conntrack --ctstate NEW";
    let hook = |note: &str, target: &str, only_new: bool| {
        let prefix = if only_new {
            format!("{new} {}", comment(note))
        } else {
            comment(note)
        };
        jump(&prefix, target)
    };
    let firewall = hook(
        "kubernetes load balancer firewall",
        names::PROXY_FIREWALL,
        true,
    );
    let services = hook("kubernetes service portals", names::SERVICES, true);
    let external = hook(
        "kubernetes externally-visible service portals",
        names::EXTERNAL_SERVICES,
        true,
    );
    let health = hook(
        "kubernetes health check service ports",
        names::NODEPORTS,
        false,
    );
    let forward = hook("kubernetes forwarding rules", names::FORWARD, false);
    let portals = hook("kubernetes service portals", names::SERVICES, false);
    let postrouting = hook("kubernetes postrouting rules", names::POSTROUTING, false);

    let hooks = vec![
        (
            TableName::Filter,
            "INPUT",
            vec![firewall.clone(), services.clone(), external.clone(), health],
        ),
        (
            TableName::Filter,
            "FORWARD",
            vec![
                firewall.clone(),
                services.clone(),
                external.clone(),
                forward,
            ],
        ),
        (
            TableName::Filter,
            "OUTPUT",
            vec![firewall, services, external],
        ),
        (TableName::Nat, "PREROUTING", vec![portals.clone()]),
        (TableName::Nat, "OUTPUT", vec![portals]),
        (TableName::Nat, "POSTROUTING", vec![postrouting]),
    ];

    let mut shared = vec![
        (
            TableName::Nat,
            names::SERVICES,
            SharedChain {
                head: Vec::new(),
                tail: nodeport_gates(
                    config,
                    family,
                    "kubernetes service nodeports; NOTE: this must be the last rule in this chain",
                    names::NODEPORTS,
                ),
            },
        ),
        (TableName::Nat, names::NODEPORTS, SharedChain::default()),
        (
            TableName::Nat,
            names::MARK_MASQ,
            SharedChain {
                head: vec![format!("-j MARK --or-mark {mark}")],
                tail: Vec::new(),
            },
        ),
        (
            TableName::Nat,
            names::POSTROUTING,
            SharedChain {
                head: vec![
                    format!("-m mark ! --mark {mark}/{mark} -j RETURN"),
                    format!("-j MARK --xor-mark {mark}"),
                    format!(
                        "{} -j MASQUERADE --random-fully",
                        comment("kubernetes service traffic requiring SNAT")
                    ),
                ],
                tail: Vec::new(),
            },
        ),
        (
            TableName::Filter,
            names::PROXY_FIREWALL,
            SharedChain::default(),
        ),
        (
            TableName::Filter,
            names::SERVICES,
            SharedChain {
                head: Vec::new(),
                tail: vec![jump(
                    &comment("undefined ports and unallocated addresses"),
                    names::CLUSTER_IPS,
                )],
            },
        ),
        (
            TableName::Filter,
            names::CLUSTER_IPS,
            SharedChain {
                head: Vec::new(),
                tail: config
                    .service_cidrs
                    .iter()
                    .filter(|n| IpFamily::of(&n.addr()) == family)
                    .map(|n| format!("-d {n} {} -j DROP", comment("unallocated service IP")))
                    .collect(),
            },
        ),
        (
            TableName::Filter,
            names::EXTERNAL_SERVICES,
            SharedChain {
                head: Vec::new(),
                tail: nodeport_gates(
                    config,
                    family,
                    "kubernetes service nodeports",
                    names::EXTERNAL_NODEPORTS,
                ),
            },
        ),
        (
            TableName::Filter,
            names::EXTERNAL_NODEPORTS,
            SharedChain::default(),
        ),
        (TableName::Filter, names::NODEPORTS, SharedChain::default()),
        (
            TableName::Filter,
            names::FORWARD,
            SharedChain {
                head: vec![
                    "-m conntrack --ctstate INVALID -j DROP".to_string(),
                    format!(
                        "{} -m mark --mark {mark}/{mark} -j ACCEPT",
                        comment("kubernetes forwarding rules")
                    ),
                    format!(
                        "{} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
                        comment("kubernetes forwarding conntrack rule")
                    ),
                ],
                tail: Vec::new(),
            },
        ),
    ];
    let pods = pod_cidrs(config, family);
    if !config.masquerade_all && pods.len() > 1 {
        // `! -s` takes one network: with several pod CIDRs, return for each, then mark.
        let mut head: Vec<String> = pods.iter().map(|n| format!("-s {n} -j RETURN")).collect();
        head.push(format!("-j {}", names::MARK_MASQ));
        shared.push((
            TableName::Nat,
            names::MASQ_NON_POD,
            SharedChain {
                head,
                tail: Vec::new(),
            },
        ));
    }
    Skeleton { hooks, shared }
}

/// One endpoint, printed once: its chain name, `ip:port` and `ip/32` texts.
struct EndpointText {
    sep: String,
    addr: String,
    host: String,
}

impl EndpointText {
    fn new(chains: &PortChains, name: &ServicePortName, e: &SocketAddr) -> Self {
        let addr = e.to_string();
        let ip = match e {
            SocketAddr::V4(_) => addr.rsplit_once(':').map_or("", |(ip, _)| ip),
            SocketAddr::V6(_) => addr
                .rsplit_once("]:")
                .map_or("", |(ip, _)| ip.trim_start_matches('[')),
        };
        let host = match e {
            SocketAddr::V4(_) => format!("{ip}/32"),
            SocketAddr::V6(_) => format!("{ip}/128"),
        };
        EndpointText {
            sep: chains.sep_of(name, &addr),
            host,
            addr,
        }
    }
}

/// `1/k` as iptables-restore is given it (`%.10f`, as kube-proxy prints it), for small `k`
/// computed once: printing floats is a large share of a full render.
fn probability(k: usize) -> Cow<'static, str> {
    static TABLE: OnceLock<Vec<String>> = OnceLock::new();
    let table = TABLE.get_or_init(|| {
        (1..=256)
            .map(|k| format!("{:.10}", 1.0 / k as f64))
            .collect()
    });
    match table.get(k.wrapping_sub(1)) {
        Some(p) => Cow::Borrowed(p.as_str()),
        None => Cow::Owned(format!("{:.10}", 1.0 / k as f64)),
    }
}

/// Builds one service port's rules in one family.
struct PortRenderer<'a> {
    config: &'a ProxyConfig,
    port: &'a ResolvedServicePort,
    fam: &'a FamilyRouting,
    chains: PortChains,
    /// `-p P` and `-m P --dport PORT`, split around the comment as kube-proxy writes them.
    proto: &'static str,
    out: PortRules,
}

impl PortRenderer<'_> {
    /// `-m comment --comment "namespace/name:port SUFFIX"` (the name is escaped already).
    fn note(&self, suffix: &str) -> String {
        if suffix.is_empty() {
            format!("-m comment --comment \"{}\"", self.chains.display)
        } else {
            format!("-m comment --comment \"{} {suffix}\"", self.chains.display)
        }
    }

    fn shared(&mut self, table: TableName, chain: &'static str, rule: String) {
        self.out.shared.push((table, chain, rule));
    }

    /// `-d IP/32 -p P -m comment --comment "X NOTE" -m P --dport PORT`
    fn frontend(&self, ip: IpAddr, note: &str) -> String {
        format!(
            "-d {} -p {p} {} -m {p} --dport {}",
            host(ip),
            self.note(note),
            self.port.port,
            p = self.proto
        )
    }

    /// `-p P -m comment --comment "X[ NOTE]" -m P --dport NODEPORT`
    fn node_port(&self, port: u16, note: &str) -> String {
        format!(
            "-p {p} {} -m {p} --dport {port}",
            self.note(note),
            p = self.proto
        )
    }

    fn verdict(when: NoEndpointVerdict) -> (&'static str, &'static str) {
        match when {
            NoEndpointVerdict::Reject => ("REJECT", "has no endpoints"),
            NoEndpointVerdict::Drop => ("DROP", "has no local endpoints"),
        }
    }

    fn firewall(&mut self) {
        let Some(allowed) = &self.fam.firewall_allowed_sources else {
            return;
        };
        if self.fam.load_balancer_ips.is_empty() {
            return;
        }
        let note = self.note("loadbalancer IP");
        for ip in &self.fam.load_balancer_ips {
            let rule = format!(
                "-p {} {note} -m conntrack --ctorigdst {} --ctorigdstport {} -j {}",
                self.proto,
                host(*ip),
                self.port.port,
                self.chains.fw
            );
            self.shared(TableName::Filter, names::PROXY_FIREWALL, rule);
        }
        let mut rules: Vec<String> = allowed
            .iter()
            .map(|n| format!("-s {n} {note} -j RETURN"))
            .collect();
        rules.push(format!(
            "{} -j DROP",
            self.note("other traffic to loadbalancer IP")
        ));
        self.out.chains.push((
            TableName::Filter,
            self.chains.fw.clone(),
            lines(&self.chains.fw, rules),
        ));
    }

    /// ClusterIP traffic; returns the endpoint chain it jumps to, if any.
    fn internal(&mut self) -> Option<String> {
        let cluster_ip = self.fam.cluster_ip;
        // Other ports of this ClusterIP are refused (one rule per service).
        let other = format!(
            "-d {} {} -j REJECT",
            host(cluster_ip),
            comment(&format!("{} has no such port", self.port.name.service))
        );
        self.shared(TableName::Filter, names::CLUSTER_IPS, other);

        let policy = self.port.internal_traffic_policy;
        let target = match policy {
            TrafficPolicy::Cluster => self.chains.svc.clone(),
            TrafficPolicy::Local => self.chains.svl.clone(),
        };
        if self.fam.has_any_endpoints && !self.fam.endpoints(policy).is_empty() {
            let rule = jump(&self.frontend(cluster_ip, "cluster IP"), &target);
            self.shared(TableName::Nat, names::SERVICES, rule);
            Some(target)
        } else {
            let (verdict, note) = Self::verdict(self.fam.when_empty());
            let rule = jump(&self.frontend(cluster_ip, note), verdict);
            self.shared(TableName::Filter, names::SERVICES, rule);
            None
        }
    }

    /// The no-endpoint verdict for every external frontend.
    fn refuse_external(&mut self, when: NoEndpointVerdict) {
        let (verdict, note) = Self::verdict(when);
        for (ip, _) in self.fam.external_frontends() {
            let rule = jump(&self.frontend(ip, note), verdict);
            self.shared(TableName::Filter, names::EXTERNAL_SERVICES, rule);
        }
        if let Some(np) = self.port.node_port {
            let rule = jump(&self.node_port(np, note), verdict);
            self.shared(TableName::Filter, names::EXTERNAL_NODEPORTS, rule);
        }
    }

    /// External traffic (externalIPs, LB IPs, NodePort); returns the endpoint chains it uses.
    fn external(&mut self) -> Vec<String> {
        let frontends = self.fam.external_frontends();
        if frontends.is_empty() && self.port.node_port.is_none() {
            return Vec::new();
        }
        if !self.fam.has_any_endpoints {
            self.refuse_external(NoEndpointVerdict::Reject);
            return Vec::new();
        }
        let display = self.chains.display.clone();
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
                rules.push(jump(
                    &quoted(&format!(
                        "masquerade traffic for {display} external destinations"
                    )),
                    names::MARK_MASQ,
                ));
                rules.push(format!("-j {}", self.chains.svc));
                used.push(self.chains.svc.clone());
            }
            TrafficPolicy::Local => {
                if has_cluster {
                    // Pods short-circuit to every endpoint, keeping their source; node
                    // sources are masqueraded and may use every endpoint too.
                    for net in pod_cidrs(self.config, self.fam.family) {
                        rules.push(format!(
                            "-s {net} {} -j {}",
                            quoted(&format!("pod traffic for {display} external destinations")),
                            self.chains.svc
                        ));
                    }
                    rules.push(format!(
                        "{} -m addrtype --src-type LOCAL -j {}",
                        quoted(&format!(
                            "masquerade LOCAL traffic for {display} external destinations"
                        )),
                        names::MARK_MASQ
                    ));
                    rules.push(format!(
                        "{} -m addrtype --src-type LOCAL -j {}",
                        quoted(&format!(
                            "route LOCAL traffic for {display} external destinations"
                        )),
                        self.chains.svc
                    ));
                    used.push(self.chains.svc.clone());
                }
                if has_local {
                    rules.push(format!("-j {}", self.chains.svl));
                    used.push(self.chains.svl.clone());
                } else {
                    // Everything else finds no local endpoint: dropped by the filter table.
                    self.refuse_external(NoEndpointVerdict::Drop);
                }
            }
        }
        for (ip, note) in frontends {
            let rule = jump(&self.frontend(ip, note), &self.chains.ext);
            self.shared(TableName::Nat, names::SERVICES, rule);
        }
        if let Some(np) = self.port.node_port {
            let rule = jump(&self.node_port(np, ""), &self.chains.ext);
            self.shared(TableName::Nat, names::NODEPORTS, rule);
        }
        self.out.chains.push((
            TableName::Nat,
            self.chains.ext.clone(),
            lines(&self.chains.ext, rules),
        ));
        used
    }

    /// The ClusterIP masquerade rule at the top of the internal endpoint chain.
    fn internal_masquerade(&self) -> Option<String> {
        let frontend = self.frontend(self.fam.cluster_ip, "cluster IP");
        if self.config.masquerade_all {
            return Some(jump(&frontend, names::MARK_MASQ));
        }
        if !self.config.has_local_detector() {
            return None;
        }
        let pods = pod_cidrs(self.config, self.fam.family);
        match pods.as_slice() {
            // The detector knows no pod of this family: every source is a non-pod source.
            [] => Some(jump(&frontend, names::MARK_MASQ)),
            [one] => Some(jump(&format!("! -s {one} {frontend}"), names::MARK_MASQ)),
            _ => Some(jump(&frontend, names::MASQ_NON_POD)),
        }
    }

    /// An endpoint chain (`KUBE-SVC-H` / `KUBE-SVL-H`): masquerade, affinity, random spread.
    fn endpoint_chain(
        &mut self,
        chain: &str,
        endpoints: &[SocketAddr],
        texts: &BTreeMap<SocketAddr, EndpointText>,
        internal: bool,
    ) {
        let display = &self.chains.display;
        let mut body = String::with_capacity(endpoints.len() * 200 + 200);
        if internal && let Some(rule) = self.internal_masquerade() {
            let _ = writeln!(body, "-A {chain} {rule}");
        }
        let eps: Vec<&EndpointText> = endpoints.iter().filter_map(|e| texts.get(e)).collect();
        if let Some(timeout) = self.port.affinity_timeout {
            for e in &eps {
                let _ = writeln!(
                    body,
                    "-A {chain} -m comment --comment \"{display} -> {}\" -m recent --name {} --rcheck --seconds {timeout} --reap -j {}",
                    e.addr, e.sep, e.sep
                );
            }
        }
        let n = eps.len();
        for (i, e) in eps.iter().enumerate() {
            let _ = write!(
                body,
                "-A {chain} -m comment --comment \"{display} -> {}\"",
                e.addr
            );
            if i + 1 < n {
                body.push_str(" -m statistic --mode random --probability ");
                body.push_str(&probability(n - i));
            }
            body.push_str(" -j ");
            body.push_str(&e.sep);
            body.push('\n');
        }
        self.out
            .chains
            .push((TableName::Nat, chain.to_string(), body));
    }

    fn endpoint(&mut self, e: EndpointText) {
        let display = &self.chains.display;
        let affinity = if self.port.affinity_timeout.is_some() {
            format!(" -m recent --name {} --set", e.sep)
        } else {
            String::new()
        };
        let mut body = String::with_capacity(256);
        // Hairpin: an endpoint reaching itself must see the node as the source.
        let _ = writeln!(
            body,
            "-A {} -s {} -m comment --comment \"{display}\" -j {}",
            e.sep,
            e.host,
            names::MARK_MASQ
        );
        let _ = writeln!(
            body,
            "-A {} -p {} -m comment --comment \"{display}\"{affinity} -j DNAT --to-destination {}",
            e.sep, self.proto, e.addr
        );
        self.out.chains.push((TableName::Nat, e.sep, body));
    }

    fn render(mut self) -> PortRules {
        self.firewall();
        let internal = self.internal();
        let external = self.external();
        let mut chains: BTreeSet<String> = internal.iter().cloned().collect();
        chains.extend(external);
        let svc = self.chains.svc.clone();
        let policy_of = |chain: &str| {
            if chain == svc {
                TrafficPolicy::Cluster
            } else {
                TrafficPolicy::Local
            }
        };
        // Each endpoint's chain name is hashed once, whichever chains use it.
        let texts: BTreeMap<SocketAddr, EndpointText> = chains
            .iter()
            .flat_map(|c| self.fam.endpoints(policy_of(c)))
            .map(|e| (*e, EndpointText::new(&self.chains, &self.port.name, e)))
            .collect();
        for chain in &chains {
            let fam = self.fam;
            let eps = fam.endpoints(policy_of(chain));
            let is_internal = internal.as_deref() == Some(chain.as_str());
            self.endpoint_chain(chain, eps, &texts, is_internal);
        }
        for text in texts.into_values() {
            self.endpoint(text);
        }
        if let Some(hc) = self.port.health_check_node_port {
            let rule = format!(
                "-p tcp {} -m tcp --dport {hc} -j ACCEPT",
                comment(&format!(
                    "{} health check node port",
                    self.port.name.service
                ))
            );
            self.shared(TableName::Filter, names::NODEPORTS, rule);
        }
        self.out
    }
}

/// What `port` contributes in `family`; `None` when the port has no address of the family.
pub fn port_rules(
    config: &ProxyConfig,
    port: &ResolvedServicePort,
    family: IpFamily,
) -> Option<PortRules> {
    let fam = port.family(family)?;
    let renderer = PortRenderer {
        config,
        port,
        fam,
        chains: PortChains::new(&port.name),
        proto: port.name.protocol.lower(),
        out: PortRules::default(),
    };
    Some(renderer.render())
}
