//! Tests of [`categorize`]: every case of upstream's `TestCategorizeEndpoints` table
//! (kubernetes/kubernetes `pkg/proxy/topology_test.go`), ported by name, the cases the newer
//! table adds (PreferSameNode), then what upstream does not cover (node vs zone hint
//! precedence, terminating fallback around hints, legacy `topologyKeys`). The implementation's
//! reference is upstream `pkg/proxy/topology.go` at 008b3652 (`CategorizeEndpoints` with node
//! hints).
//!
//! Expectations use our convention: a policy that is used but yields nothing is `Some(vec![])`
//! (upstream returns nil there and its test only checks nil in one direction); `None` means no
//! traffic uses the policy. Upstream's derived expectations are applied as upstream's test
//! applies them: `all_reachable` is the cluster set when only it is used, the local set when only
//! it is used, else the listed union; `has_any` is `!all_reachable.is_empty() || only_remote`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use super::{Candidate, Categorized, NodeContext, PolicyInput, categorize};
use crate::model::slice::EndpointTopology;
use crate::model::{EndpointInfo, LABEL_HOSTNAME, LABEL_ZONE, TrafficPolicy};

/// The node the proxy runs on in every case that does not name one.
const THIS_NODE: &str = "this-node";
/// The node remote endpoints run on.
const OTHER_NODE: &str = "other-node";

/// One endpoint of a case, described the way upstream's table does.
#[derive(Clone)]
struct Ep {
    addr: &'static str,
    /// `Some(name)` puts the endpoint on that node; `None` leaves `nodeName` unset.
    node: Option<&'static str>,
    ready: bool,
    serving: bool,
    terminating: bool,
    zone_hints: Vec<&'static str>,
    node_hints: Vec<&'static str>,
    zone: Option<&'static str>,
    deprecated_topology: Vec<(&'static str, &'static str)>,
}

/// A Ready endpoint with no node (upstream: `ready: true`, `isLocal: false`; serving is left
/// false as upstream's literals leave it).
fn ep(addr: &'static str) -> Ep {
    Ep {
        addr,
        node: None,
        ready: true,
        serving: false,
        terminating: false,
        zone_hints: Vec::new(),
        node_hints: Vec::new(),
        zone: None,
        deprecated_topology: Vec::new(),
    }
}

impl Ep {
    /// On [`THIS_NODE`] (upstream `isLocal: true`).
    fn local(self) -> Self {
        self.on(THIS_NODE)
    }
    /// On [`OTHER_NODE`] (upstream `isLocal: false`, with a node name set).
    fn remote(self) -> Self {
        self.on(OTHER_NODE)
    }
    fn on(mut self, node: &'static str) -> Self {
        self.node = Some(node);
        self
    }
    fn unready(mut self) -> Self {
        self.ready = false;
        self
    }
    /// Not ready, serving and terminating: a KEP-1669 fallback endpoint.
    fn serving_terminating(mut self) -> Self {
        self.ready = false;
        self.serving = true;
        self.terminating = true;
        self
    }
    /// Not ready, not serving (upstream `ready: false, serving: false`).
    fn not_serving(mut self) -> Self {
        self.ready = false;
        self.serving = false;
        self
    }
    fn zones(mut self, z: &[&'static str]) -> Self {
        self.zone_hints = z.to_vec();
        self
    }
    fn nodes(mut self, n: &[&'static str]) -> Self {
        self.node_hints = n.to_vec();
        self
    }
    fn in_zone(mut self, z: &'static str) -> Self {
        self.zone = Some(z);
        self
    }
    fn topology(mut self, t: &[(&'static str, &'static str)]) -> Self {
        self.deprecated_topology = t.to_vec();
        self
    }

    fn info(&self) -> EndpointInfo {
        let arcs = |v: &[&str]| v.iter().map(|s| Arc::<str>::from(*s)).collect();
        EndpointInfo {
            ip: self.addr.parse::<SocketAddr>().unwrap().ip(),
            ready: self.ready,
            serving: self.serving,
            terminating: self.terminating,
            node_name: self.node.map(Arc::from),
            zone: self.zone.map(Arc::from),
            topology: Some(Arc::new(EndpointTopology {
                zone_hints: arcs(&self.zone_hints),
                node_hints: arcs(&self.node_hints),
                deprecated_topology: self
                    .deprecated_topology
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            })),
        }
    }
}

/// The service port's policies (upstream `BaseServicePortInfo`).
#[derive(Clone, Copy, Default)]
struct Svc {
    itp_local: bool,
    etp_local: bool,
    /// Upstream `nodePort: 8080`: the port is externally accessible.
    external: bool,
}

const CLUSTER: Svc = Svc {
    itp_local: false,
    etp_local: false,
    external: false,
};

struct Case {
    name: &'static str,
    node_name: &'static str,
    node_labels: Vec<(&'static str, &'static str)>,
    svc: Svc,
    topology_keys: Vec<&'static str>,
    /// Labels of other nodes, as the Node store knows them.
    nodes: Vec<(&'static str, Vec<(&'static str, &'static str)>)>,
    endpoints: Vec<Ep>,
    cluster: Option<Vec<&'static str>>,
    local: Option<Vec<&'static str>>,
    /// Upstream `allEndpoints`: only consulted when both policies are used.
    all: Vec<&'static str>,
    /// Upstream `onlyRemoteEndpoints`: `has_any` although nothing is reachable from here.
    only_remote: bool,
}

/// A case on [`THIS_NODE`] in zone-less defaults; fields are set per case.
fn case(name: &'static str, svc: Svc, endpoints: Vec<Ep>) -> Case {
    Case {
        name,
        node_name: THIS_NODE,
        node_labels: Vec::new(),
        svc,
        topology_keys: Vec::new(),
        nodes: Vec::new(),
        endpoints,
        cluster: None,
        local: None,
        all: Vec::new(),
        only_remote: false,
    }
}

impl Case {
    fn zone(mut self, zone: &'static str) -> Self {
        self.node_labels.push((LABEL_ZONE, zone));
        self
    }
    fn labels(mut self, labels: &[(&'static str, &'static str)]) -> Self {
        self.node_labels.extend_from_slice(labels);
        self
    }
    fn node(mut self, name: &'static str) -> Self {
        self.node_name = name;
        self
    }
    fn keys(mut self, keys: &[&'static str]) -> Self {
        self.topology_keys = keys.to_vec();
        self
    }
    fn known_node(mut self, name: &'static str, labels: &[(&'static str, &'static str)]) -> Self {
        self.nodes.push((name, labels.to_vec()));
        self
    }
    fn cluster(mut self, eps: &[&'static str]) -> Self {
        self.cluster = Some(eps.to_vec());
        self
    }
    fn local(mut self, eps: &[&'static str]) -> Self {
        self.local = Some(eps.to_vec());
        self
    }
    fn all(mut self, eps: &[&'static str]) -> Self {
        self.all = eps.to_vec();
        self
    }
    fn only_remote(mut self) -> Self {
        self.only_remote = true;
        self
    }

    /// Runs the case; `Err` describes every mismatch.
    fn check(&self) -> Result<(), String> {
        let infos: Vec<EndpointInfo> = self.endpoints.iter().map(Ep::info).collect();
        let mut candidates: Vec<Candidate<'_>> = self
            .endpoints
            .iter()
            .zip(&infos)
            .map(|(e, info)| Candidate {
                addr: e.addr.parse().unwrap(),
                info,
            })
            .collect();
        candidates.sort_by_key(|c| c.addr);
        let keys: Vec<String> = self.topology_keys.iter().map(|k| k.to_string()).collect();
        let policy = PolicyInput {
            internal: if self.svc.itp_local {
                TrafficPolicy::Local
            } else {
                TrafficPolicy::Cluster
            },
            external: if self.svc.etp_local {
                TrafficPolicy::Local
            } else {
                TrafficPolicy::Cluster
            },
            externally_accessible: self.svc.external,
            topology_keys: &keys,
        };
        let labels = owned(&self.node_labels);
        let nodes: BTreeMap<String, BTreeMap<String, String>> = self
            .nodes
            .iter()
            .map(|(n, l)| (n.to_string(), owned(l)))
            .collect();
        let node = NodeContext {
            name: self.node_name,
            labels: &labels,
            nodes: &nodes,
        };
        let got = categorize(&candidates, &policy, &node);

        let all = match (&self.cluster, &self.local) {
            (Some(c), None) => c.clone(),
            (None, Some(l)) => l.clone(),
            _ => self.all.clone(),
        };
        let want = Categorized {
            cluster: self.cluster.as_deref().map(addrs),
            local: self.local.as_deref().map(addrs),
            all_reachable: addrs(&all),
            has_any: !all.is_empty() || self.only_remote,
        };
        if got == want {
            Ok(())
        } else {
            Err(format!("{}:\n   got {got:?}\n  want {want:?}", self.name))
        }
    }
}

fn owned(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn addrs(list: &[&str]) -> Vec<SocketAddr> {
    let mut v: Vec<SocketAddr> = list.iter().map(|s| s.parse().unwrap()).collect();
    v.sort();
    v
}

/// Runs every case, reporting all failing cases by name at once.
fn run(cases: &[Case]) {
    let failures: Vec<String> = cases.iter().filter_map(|c| c.check().err()).collect();
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

/// Upstream's table (kubernetes/kubernetes `pkg/proxy/topology_test.go` at 6c039d90,
/// `TestCategorizeEndpoints`), every case, in upstream's order and under upstream's names.
/// Upstream's endpoints are local or not; ours say so through their node name.
fn upstream_cases() -> Vec<Case> {
    let etp_local = Svc {
        etp_local: true,
        external: true,
        ..CLUSTER
    };
    let itp_local_external = Svc {
        itp_local: true,
        external: true,
        ..CLUSTER
    };
    let itp_local = Svc {
        itp_local: true,
        ..CLUSTER
    };
    let both_local = Svc {
        itp_local: true,
        etp_local: true,
        external: true,
    };
    let zoned4 = |local: bool| {
        let mk = |addr, z: &'static str, is_local: bool| {
            let e = ep(addr).zones(&[z]);
            if is_local { e.local() } else { e }
        };
        vec![
            mk("10.1.2.3:80", "zone-a", local),
            mk("10.1.2.4:80", "zone-b", local),
            mk("10.1.2.5:80", "zone-c", false),
            mk("10.1.2.6:80", "zone-a", false),
        ]
    };
    vec![
        case(
            "should use topology since all endpoints have hints, node has a zone label and and there are endpoints for the node's zone",
            CLUSTER,
            zoned4(false),
        )
        .zone("zone-a")
        .cluster(&["10.1.2.3:80", "10.1.2.6:80"]),
        case(
            "externalTrafficPolicy: Local, topology ignored for Local endpoints",
            etp_local,
            zoned4(true),
        )
        .zone("zone-a")
        .cluster(&["10.1.2.3:80", "10.1.2.6:80"])
        .local(&["10.1.2.3:80", "10.1.2.4:80"])
        .all(&["10.1.2.3:80", "10.1.2.4:80", "10.1.2.6:80"]),
        case(
            "internalTrafficPolicy: Local, topology ignored for Local endpoints",
            itp_local_external,
            zoned4(true),
        )
        .zone("zone-a")
        .cluster(&["10.1.2.3:80", "10.1.2.6:80"])
        .local(&["10.1.2.3:80", "10.1.2.4:80"])
        .all(&["10.1.2.3:80", "10.1.2.4:80", "10.1.2.6:80"]),
        case(
            "empty node labels",
            CLUSTER,
            vec![ep("10.1.2.3:80").zones(&["zone-a"])],
        )
        .cluster(&["10.1.2.3:80"]),
        case(
            "empty zone label",
            CLUSTER,
            vec![ep("10.1.2.3:80").zones(&["zone-a"])],
        )
        .zone("")
        .cluster(&["10.1.2.3:80"]),
        case(
            "node in different zone, no endpoint filtering",
            CLUSTER,
            vec![ep("10.1.2.3:80").zones(&["zone-a"])],
        )
        .zone("zone-b")
        .cluster(&["10.1.2.3:80"]),
        case(
            "unready endpoint",
            CLUSTER,
            vec![
                ep("10.1.2.3:80").zones(&["zone-a"]),
                ep("10.1.2.4:80").zones(&["zone-b"]),
                ep("10.1.2.5:80").zones(&["zone-c"]),
                ep("10.1.2.6:80").zones(&["zone-a"]).unready(),
            ],
        )
        .zone("zone-a")
        .cluster(&["10.1.2.3:80"]),
        case(
            "only unready endpoints in same zone (should not filter)",
            CLUSTER,
            vec![
                ep("10.1.2.3:80").zones(&["zone-a"]).unready(),
                ep("10.1.2.4:80").zones(&["zone-b"]),
                ep("10.1.2.5:80").zones(&["zone-c"]),
                ep("10.1.2.6:80").zones(&["zone-a"]).unready(),
            ],
        )
        .zone("zone-a")
        .cluster(&["10.1.2.4:80", "10.1.2.5:80"]),
        case(
            "missing hints, no filtering applied",
            CLUSTER,
            vec![
                ep("10.1.2.3:80").zones(&["zone-a"]),
                ep("10.1.2.4:80").zones(&["zone-b"]),
                ep("10.1.2.5:80"),
                ep("10.1.2.6:80").zones(&["zone-a"]),
            ],
        )
        .zone("zone-a")
        .cluster(&["10.1.2.3:80", "10.1.2.4:80", "10.1.2.5:80", "10.1.2.6:80"]),
        case(
            "multiple hints per endpoint, filtering includes any endpoint with zone included",
            CLUSTER,
            vec![
                ep("10.1.2.3:80").zones(&["zone-a", "zone-b", "zone-c"]),
                ep("10.1.2.4:80").zones(&["zone-b", "zone-c"]),
                ep("10.1.2.5:80").zones(&["zone-b", "zone-d"]),
                ep("10.1.2.6:80").zones(&["zone-c"]),
            ],
        )
        .zone("zone-c")
        .cluster(&["10.1.2.3:80", "10.1.2.4:80", "10.1.2.6:80"]),
        case(
            "conflicting topology and localness require merging allEndpoints",
            etp_local,
            vec![
                ep("10.0.0.0:80").zones(&["zone-a"]).local(),
                ep("10.0.0.1:80").zones(&["zone-b"]).local(),
                ep("10.0.0.2:80").zones(&["zone-a"]).remote(),
                ep("10.0.0.3:80").zones(&["zone-b"]).remote(),
            ],
        )
        .zone("zone-a")
        .cluster(&["10.0.0.0:80", "10.0.0.2:80"])
        .local(&["10.0.0.0:80", "10.0.0.1:80"])
        .all(&["10.0.0.0:80", "10.0.0.1:80", "10.0.0.2:80"]),
        case(
            "internalTrafficPolicy: Local, with empty endpoints",
            itp_local,
            vec![],
        )
        .local(&[]),
        case(
            "internalTrafficPolicy: Local, but all endpoints are remote",
            itp_local,
            vec![ep("10.0.0.0:80").remote(), ep("10.0.0.1:80").remote()],
        )
        .local(&[])
        .only_remote(),
        case(
            "internalTrafficPolicy: Local, all endpoints are local",
            itp_local,
            vec![ep("10.0.0.0:80").local(), ep("10.0.0.1:80").local()],
        )
        .local(&["10.0.0.0:80", "10.0.0.1:80"]),
        case(
            "internalTrafficPolicy: Local, some endpoints are local",
            itp_local,
            vec![ep("10.0.0.0:80").local(), ep("10.0.0.1:80").remote()],
        )
        .local(&["10.0.0.0:80"]),
        case(
            "Cluster traffic policy, endpoints not Ready",
            CLUSTER,
            vec![ep("10.0.0.0:80").unready(), ep("10.0.0.1:80").unready()],
        )
        .cluster(&[]),
        case(
            "Cluster traffic policy, some endpoints are Ready",
            CLUSTER,
            vec![ep("10.0.0.0:80").unready(), ep("10.0.0.1:80")],
        )
        .cluster(&["10.0.0.1:80"]),
        case(
            "Cluster traffic policy, all endpoints are terminating",
            CLUSTER,
            vec![
                ep("10.0.0.0:80").serving_terminating().local(),
                ep("10.0.0.1:80").serving_terminating().remote(),
            ],
        )
        .cluster(&["10.0.0.0:80", "10.0.0.1:80"]),
        case(
            "iTP: Local, eTP: Cluster, some endpoints local",
            itp_local_external,
            vec![ep("10.0.0.0:80").local(), ep("10.0.0.1:80").remote()],
        )
        .cluster(&["10.0.0.0:80", "10.0.0.1:80"])
        .local(&["10.0.0.0:80"])
        .all(&["10.0.0.0:80", "10.0.0.1:80"]),
        case(
            "iTP: Cluster, eTP: Local, some endpoints local",
            etp_local,
            vec![ep("10.0.0.0:80").local(), ep("10.0.0.1:80").remote()],
        )
        .cluster(&["10.0.0.0:80", "10.0.0.1:80"])
        .local(&["10.0.0.0:80"])
        .all(&["10.0.0.0:80", "10.0.0.1:80"]),
        case(
            "iTP: Local, eTP: Local, some endpoints local",
            both_local,
            vec![ep("10.0.0.0:80").local(), ep("10.0.0.1:80").remote()],
        )
        .cluster(&["10.0.0.0:80", "10.0.0.1:80"])
        .local(&["10.0.0.0:80"])
        .all(&["10.0.0.0:80", "10.0.0.1:80"]),
        case(
            "iTP: Local, eTP: Local, all endpoints remote",
            both_local,
            vec![ep("10.0.0.0:80").remote(), ep("10.0.0.1:80").remote()],
        )
        .cluster(&["10.0.0.0:80", "10.0.0.1:80"])
        .local(&[])
        .all(&["10.0.0.0:80", "10.0.0.1:80"]),
        case(
            "iTP: Local, eTP: Local, all endpoints remote and terminating",
            both_local,
            vec![
                ep("10.0.0.0:80").serving_terminating().remote(),
                ep("10.0.0.1:80").serving_terminating().remote(),
            ],
        )
        .cluster(&["10.0.0.0:80", "10.0.0.1:80"])
        .local(&[])
        .all(&["10.0.0.0:80", "10.0.0.1:80"])
        .only_remote(),
        case(
            "iTP: Cluster, eTP: Local, with terminating endpoints",
            etp_local,
            vec![
                ep("10.0.0.0:80").remote(),
                ep("10.0.0.1:80").not_serving().local(),
                ep("10.0.0.2:80").serving_terminating().local(),
                ep("10.0.0.3:80").serving_terminating().remote(),
            ],
        )
        .cluster(&["10.0.0.0:80"])
        .local(&["10.0.0.2:80"])
        .all(&["10.0.0.0:80", "10.0.0.2:80"]),
        case(
            "externalTrafficPolicy ignored if not externally accessible",
            Svc {
                etp_local: true,
                ..CLUSTER
            },
            vec![ep("10.0.0.0:80").remote(), ep("10.0.0.1:80").local()],
        )
        .cluster(&["10.0.0.0:80", "10.0.0.1:80"])
        .all(&["10.0.0.0:80", "10.0.0.1:80"]),
        case(
            "no cluster endpoints for iTP:Local internal-only service",
            itp_local,
            vec![ep("10.0.0.0:80").remote(), ep("10.0.0.1:80").local()],
        )
        .local(&["10.0.0.1:80"])
        .all(&["10.0.0.1:80"]),
    ]
}

/// Cases of the newer upstream table (the one taking a node name, with PreferSameNode from
/// KEP-3015). The kubernetes/kubernetes copy of that table is not in the reference index; these
/// names and expectations come from Antrea's vendored copy (`third_party/proxy`), which tracks
/// it. The `PreferSameTrafficDistribution` gate is taken as on, as it is from GA; the gate-off
/// case ("falls back to same-zone when feature gate disabled") has no counterpart, because
/// svcroute always honours node hints.
fn newer_upstream_cases() -> Vec<Case> {
    let etp_local = Svc {
        etp_local: true,
        external: true,
        ..CLUSTER
    };
    let hinted = |z: &'static str, n: &'static str, addr| ep(addr).zones(&[z]).nodes(&[n]);
    let four = || {
        vec![
            hinted("zone-a", "node-1", "10.1.2.3:80"),
            hinted("zone-b", "node-2", "10.1.2.4:80"),
            hinted("zone-c", "node-3", "10.1.2.5:80"),
            hinted("zone-a", "node-4", "10.1.2.6:80"),
        ]
    };
    vec![
        case("PreferSameNode available", CLUSTER, four())
            .node("node-1")
            .zone("zone-a")
            .cluster(&["10.1.2.3:80"]),
        case(
            "PreferSameNode ignored if some endpoints unhinted",
            CLUSTER,
            vec![
                hinted("zone-a", "node-1", "10.1.2.3:80"),
                ep("10.1.2.4:80"),
                hinted("zone-c", "node-3", "10.1.2.5:80"),
                hinted("zone-a", "node-4", "10.1.2.6:80"),
            ],
        )
        .node("node-1")
        .zone("zone-a")
        .cluster(&["10.1.2.3:80", "10.1.2.4:80", "10.1.2.5:80", "10.1.2.6:80"]),
        case(
            "PreferSameNode falls back to PreferSameZone if no endpoint for node",
            CLUSTER,
            four(),
        )
        .node("node-0")
        .zone("zone-a")
        .cluster(&["10.1.2.3:80", "10.1.2.6:80"]),
        case(
            "externalTrafficPolicy: Local, externally accessible, with empty endpoints",
            etp_local,
            vec![],
        )
        .cluster(&[])
        .local(&[]),
        case(
            "externalTrafficPolicy: Local, externally accessible, but all endpoints are remote",
            etp_local,
            vec![ep("10.0.0.0:80").remote(), ep("10.0.0.1:80").remote()],
        )
        .cluster(&["10.0.0.0:80", "10.0.0.1:80"])
        .local(&[])
        .all(&["10.0.0.0:80", "10.0.0.1:80"]),
        case(
            "externalTrafficPolicy: Local, externally accessible, all endpoints are local",
            etp_local,
            vec![ep("10.0.0.0:80").local(), ep("10.0.0.1:80").local()],
        )
        .cluster(&["10.0.0.0:80", "10.0.0.1:80"])
        .local(&["10.0.0.0:80", "10.0.0.1:80"])
        .all(&["10.0.0.0:80", "10.0.0.1:80"]),
        case(
            "externalTrafficPolicy: Local, externally accessible, some endpoints are local",
            etp_local,
            vec![ep("10.0.0.0:80").local(), ep("10.0.0.1:80").remote()],
        )
        .cluster(&["10.0.0.0:80", "10.0.0.1:80"])
        .local(&["10.0.0.0:80"])
        .all(&["10.0.0.0:80", "10.0.0.1:80"]),
    ]
}

/// Cases upstream's table lacks: node vs zone hint precedence and the fallback around hints.
fn hint_cases() -> Vec<Case> {
    let etp_local = Svc {
        etp_local: true,
        external: true,
        ..CLUSTER
    };
    vec![
        case(
            "node hints win over zone hints that would pick more",
            CLUSTER,
            vec![
                ep("10.0.0.1:80").zones(&["zone-a"]).nodes(&[THIS_NODE]),
                ep("10.0.0.2:80").zones(&["zone-a"]).nodes(&[OTHER_NODE]),
                ep("10.0.0.3:80").zones(&["zone-b"]).nodes(&["third-node"]),
            ],
        )
        .zone("zone-a")
        .cluster(&["10.0.0.1:80"]),
        case(
            "an endpoint hinted for several nodes serves each of them",
            CLUSTER,
            vec![
                ep("10.0.0.1:80").nodes(&[OTHER_NODE, THIS_NODE]),
                ep("10.0.0.2:80").nodes(&[OTHER_NODE]),
            ],
        )
        .cluster(&["10.0.0.1:80"]),
        case(
            "complete node hints for other nodes and incomplete zone hints: no filtering",
            CLUSTER,
            vec![
                ep("10.0.0.1:80").zones(&["zone-a"]).nodes(&[OTHER_NODE]),
                ep("10.0.0.2:80").nodes(&["third-node"]),
            ],
        )
        .zone("zone-a")
        .cluster(&["10.0.0.1:80", "10.0.0.2:80"]),
        case(
            "node hints without a zone label on the node still filter",
            CLUSTER,
            vec![
                ep("10.0.0.1:80").zones(&["zone-a"]).nodes(&[THIS_NODE]),
                ep("10.0.0.2:80").zones(&["zone-a"]).nodes(&[OTHER_NODE]),
            ],
        )
        .cluster(&["10.0.0.1:80"]),
        case(
            "unready endpoints without node hints do not disable node hints",
            CLUSTER,
            vec![
                ep("10.0.0.1:80").nodes(&[THIS_NODE]),
                ep("10.0.0.2:80").nodes(&[OTHER_NODE]),
                ep("10.0.0.3:80").unready(),
                ep("10.0.0.4:80").serving_terminating(),
            ],
        )
        .cluster(&["10.0.0.1:80"]),
        case(
            "node hint naming only an unready endpoint does not select node mode",
            CLUSTER,
            vec![
                ep("10.0.0.1:80").nodes(&[THIS_NODE]).unready(),
                ep("10.0.0.2:80").nodes(&[OTHER_NODE]),
                ep("10.0.0.3:80").nodes(&["third-node"]),
            ],
        )
        .cluster(&["10.0.0.2:80", "10.0.0.3:80"]),
        case(
            "terminating fallback ignores node and zone hints",
            CLUSTER,
            vec![
                ep("10.0.0.1:80")
                    .zones(&["zone-b"])
                    .nodes(&[OTHER_NODE])
                    .serving_terminating(),
                ep("10.0.0.2:80")
                    .zones(&["zone-c"])
                    .nodes(&["third-node"])
                    .serving_terminating(),
                ep("10.0.0.3:80").zones(&["zone-a"]).not_serving(),
            ],
        )
        .zone("zone-a")
        .cluster(&["10.0.0.1:80", "10.0.0.2:80"]),
        case(
            "node hints with eTP=Local merge the node-hinted set and the local set",
            etp_local,
            vec![
                ep("10.0.0.1:80").nodes(&[THIS_NODE]).remote(),
                ep("10.0.0.2:80").nodes(&[OTHER_NODE]).local(),
                ep("10.0.0.3:80").nodes(&[OTHER_NODE]).remote(),
            ],
        )
        .cluster(&["10.0.0.1:80"])
        .local(&["10.0.0.2:80"])
        .all(&["10.0.0.1:80", "10.0.0.2:80"]),
        case(
            "eTP=Local: unready and not-serving endpoints count for nothing",
            etp_local,
            vec![
                ep("10.0.0.1:80").unready().local(),
                ep("10.0.0.2:80").not_serving().remote(),
            ],
        )
        .cluster(&[])
        .local(&[]),
        case(
            "eTP=Local: local ready endpoints are preferred over local terminating ones",
            etp_local,
            vec![
                ep("10.0.0.1:80").local(),
                ep("10.0.0.2:80").serving_terminating().local(),
                ep("10.0.0.3:80").remote(),
            ],
        )
        .cluster(&["10.0.0.1:80", "10.0.0.3:80"])
        .local(&["10.0.0.1:80"])
        .all(&["10.0.0.1:80", "10.0.0.3:80"]),
        case(
            "terminating but not serving endpoints are never used",
            CLUSTER,
            vec![ep("10.0.0.1:80").not_serving().local(), {
                let mut e = ep("10.0.0.2:80").remote();
                e.ready = false;
                e.terminating = true;
                e
            }],
        )
        .cluster(&[]),
    ]
}

/// Legacy `topologyKeys`: ordered keys, `"*"` last means all, the first key some usable
/// endpoint's node matches on wins, no match rejects.
fn topology_key_cases() -> Vec<Case> {
    const RACK: &str = "example.com/rack";
    let zone_a = &[(LABEL_ZONE, "zone-a")];
    let itp_local_external = Svc {
        itp_local: true,
        external: true,
        ..CLUSTER
    };
    // One endpoint on this node, one elsewhere in zone-a, one in zone-b; zones come from the
    // slice's `zone` field because the Node store does not know the other nodes.
    let spread = || {
        vec![
            ep("10.0.0.1:80").local(),
            ep("10.0.0.2:80").remote().in_zone("zone-a"),
            ep("10.0.0.3:80").on("third-node").in_zone("zone-b"),
        ]
    };
    vec![
        case(
            "topologyKeys: hostname first picks this node's endpoints",
            CLUSTER,
            spread(),
        )
        .labels(zone_a)
        .keys(&[LABEL_HOSTNAME, LABEL_ZONE, "*"])
        .cluster(&["10.0.0.1:80"]),
        case(
            "topologyKeys: falls through to the zone when this node has no endpoint",
            CLUSTER,
            spread()[1..].to_vec(),
        )
        .labels(zone_a)
        .keys(&[LABEL_HOSTNAME, LABEL_ZONE, "*"])
        .cluster(&["10.0.0.2:80"]),
        case(
            "topologyKeys: the zone key includes this node's own endpoints",
            CLUSTER,
            spread(),
        )
        .labels(zone_a)
        .keys(&[LABEL_ZONE])
        .cluster(&["10.0.0.1:80", "10.0.0.2:80"]),
        case(
            "topologyKeys: \"*\" last takes every endpoint when no key matches",
            CLUSTER,
            spread()[2..].to_vec(),
        )
        .labels(zone_a)
        .keys(&[LABEL_HOSTNAME, LABEL_ZONE, "*"])
        .cluster(&["10.0.0.3:80"]),
        case(
            "topologyKeys: \"*\" alone takes every ready endpoint",
            CLUSTER,
            vec![ep("10.0.0.1:80").remote(), ep("10.0.0.2:80").unready()],
        )
        .keys(&["*"])
        .cluster(&["10.0.0.1:80"]),
        case(
            "topologyKeys: no key matches, so nothing and REJECT",
            CLUSTER,
            spread()[2..].to_vec(),
        )
        .labels(zone_a)
        .keys(&[LABEL_HOSTNAME, LABEL_ZONE])
        .cluster(&[]),
        case(
            "topologyKeys: a key this node has no label for is skipped",
            CLUSTER,
            vec![
                ep("10.0.0.1:80").remote().topology(&[(RACK, "r1")]),
                ep("10.0.0.2:80").remote().in_zone("zone-a"),
            ],
        )
        .labels(zone_a)
        .keys(&[RACK, LABEL_ZONE])
        .cluster(&["10.0.0.2:80"]),
        case(
            "topologyKeys: labels come from the Node store first",
            CLUSTER,
            vec![
                // The store says rack r1 (ours); the slice's stale topology says r2.
                ep("10.0.0.1:80").on("node-2").topology(&[(RACK, "r2")]),
                // The store says r2; the slice says r1.
                ep("10.0.0.2:80").on("node-3").topology(&[(RACK, "r1")]),
            ],
        )
        .labels(&[(RACK, "r1")])
        .known_node("node-2", &[(RACK, "r1")])
        .known_node("node-3", &[(RACK, "r2")])
        .keys(&[RACK])
        .cluster(&["10.0.0.1:80"]),
        case(
            "topologyKeys: deprecatedTopology when the node is unknown",
            CLUSTER,
            vec![
                ep("10.0.0.1:80").on("node-2").topology(&[(RACK, "r1")]),
                ep("10.0.0.2:80").on("node-3").topology(&[(RACK, "r2")]),
                ep("10.0.0.3:80").on("node-4"),
            ],
        )
        .labels(&[(RACK, "r1")])
        .keys(&[RACK])
        .cluster(&["10.0.0.1:80"]),
        case(
            "topologyKeys: a known node without the label falls back to deprecatedTopology",
            CLUSTER,
            vec![ep("10.0.0.1:80").on("node-2").topology(&[(RACK, "r1")])],
        )
        .labels(&[(RACK, "r1")])
        .known_node("node-2", &[(LABEL_ZONE, "zone-q")])
        .keys(&[RACK])
        .cluster(&["10.0.0.1:80"]),
        case(
            "topologyKeys: Node store zone beats the slice's zone field",
            CLUSTER,
            vec![
                ep("10.0.0.1:80").on("node-2").in_zone("zone-a"),
                ep("10.0.0.2:80").on("node-3").in_zone("zone-b"),
            ],
        )
        .labels(zone_a)
        .known_node("node-2", &[(LABEL_ZONE, "zone-b")])
        .known_node("node-3", &[(LABEL_ZONE, "zone-a")])
        .keys(&[LABEL_ZONE])
        .cluster(&["10.0.0.2:80"]),
        case(
            "topologyKeys: hostname of an unlabelled node is its name",
            CLUSTER,
            vec![ep("10.0.0.1:80").local(), ep("10.0.0.2:80").remote()],
        )
        .keys(&[LABEL_HOSTNAME])
        .cluster(&["10.0.0.1:80"]),
        case(
            "topologyKeys: endpoints without node or zone match no key",
            CLUSTER,
            vec![ep("10.0.0.1:80")],
        )
        .labels(zone_a)
        .keys(&[LABEL_HOSTNAME, LABEL_ZONE])
        .cluster(&[]),
        case(
            "topologyKeys: a key matched only by unready endpoints falls through",
            CLUSTER,
            vec![
                ep("10.0.0.1:80").local().unready(),
                ep("10.0.0.2:80").remote().in_zone("zone-a"),
            ],
        )
        .labels(zone_a)
        .keys(&[LABEL_HOSTNAME, LABEL_ZONE])
        .cluster(&["10.0.0.2:80"]),
        case(
            "topologyKeys: ready endpoints by a later key beat terminating ones by an earlier key",
            CLUSTER,
            vec![
                ep("10.0.0.1:80").local().serving_terminating(),
                ep("10.0.0.2:80").remote().in_zone("zone-a"),
            ],
        )
        .labels(zone_a)
        .keys(&[LABEL_HOSTNAME, LABEL_ZONE])
        .cluster(&["10.0.0.2:80"]),
        case(
            "topologyKeys: terminating fallback stays inside the keys",
            CLUSTER,
            vec![
                ep("10.0.0.1:80").local().serving_terminating(),
                ep("10.0.0.2:80")
                    .remote()
                    .in_zone("zone-a")
                    .serving_terminating(),
                ep("10.0.0.3:80").on("third-node").in_zone("zone-b"),
            ],
        )
        .labels(zone_a)
        .keys(&[LABEL_HOSTNAME, LABEL_ZONE])
        .cluster(&["10.0.0.1:80"]),
        case(
            "topologyKeys: terminating fallback with no match rejects",
            CLUSTER,
            vec![
                ep("10.0.0.1:80")
                    .on("third-node")
                    .in_zone("zone-b")
                    .serving_terminating(),
                ep("10.0.0.2:80")
                    .on("third-node")
                    .in_zone("zone-b")
                    .unready(),
            ],
        )
        .labels(zone_a)
        .keys(&[LABEL_HOSTNAME, LABEL_ZONE])
        .cluster(&[]),
        case(
            "topologyKeys: terminating fallback through \"*\"",
            CLUSTER,
            vec![
                ep("10.0.0.1:80").on("third-node").serving_terminating(),
                ep("10.0.0.2:80").on("third-node").not_serving(),
            ],
        )
        .labels(zone_a)
        .keys(&[LABEL_HOSTNAME, "*"])
        .cluster(&["10.0.0.1:80"]),
        case(
            "topologyKeys override hints",
            CLUSTER,
            vec![
                ep("10.0.0.1:80")
                    .remote()
                    .zones(&["zone-a"])
                    .nodes(&[OTHER_NODE]),
                ep("10.0.0.2:80")
                    .local()
                    .zones(&["zone-a"])
                    .nodes(&[THIS_NODE]),
                ep("10.0.0.3:80")
                    .remote()
                    .zones(&["zone-a"])
                    .nodes(&[OTHER_NODE]),
            ],
        )
        .labels(zone_a)
        .keys(&["*"])
        .cluster(&["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"]),
        case(
            "topologyKeys do not restrict the local set (iTP=Local, NodePort)",
            itp_local_external,
            vec![
                ep("10.0.0.1:80").local(),
                ep("10.0.0.2:80").remote().in_zone("zone-a"),
                ep("10.0.0.3:80").on("third-node").in_zone("zone-b"),
            ],
        )
        .labels(zone_a)
        .keys(&[LABEL_ZONE])
        .cluster(&["10.0.0.1:80", "10.0.0.2:80"])
        .local(&["10.0.0.1:80"])
        .all(&["10.0.0.1:80", "10.0.0.2:80"]),
        case(
            "topologyKeys: no match but iTP=Local with remote endpoints drops rather than rejects",
            itp_local_external,
            vec![ep("10.0.0.1:80").on("third-node").in_zone("zone-b")],
        )
        .labels(zone_a)
        .keys(&[LABEL_ZONE])
        .cluster(&[])
        .local(&[])
        .only_remote(),
    ]
}

#[test]
fn upstream_table() {
    let cases = upstream_cases();
    assert_eq!(cases.len(), 26, "every case of upstream's table");
    run(&cases);
}

#[test]
fn newer_upstream_table() {
    let cases = newer_upstream_cases();
    assert_eq!(cases.len(), 7);
    run(&cases);
}

#[test]
fn hints_and_fallback() {
    run(&hint_cases());
}

#[test]
fn legacy_topology_keys() {
    run(&topology_key_cases());
}

#[test]
fn case_names_are_unique() {
    let mut names: Vec<&str> = upstream_cases()
        .iter()
        .chain(&newer_upstream_cases())
        .chain(&hint_cases())
        .chain(&topology_key_cases())
        .map(|c| c.name)
        .collect();
    let n = names.len();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), n);
}

#[test]
fn policy_use_follows_upstream() {
    let keys: [String; 0] = [];
    let p = |internal, external, externally_accessible| PolicyInput {
        internal,
        external,
        externally_accessible,
        topology_keys: &keys,
    };
    use TrafficPolicy::{Cluster as C, Local as L};
    // (iTP, eTP, externally accessible) -> (uses cluster, uses local)
    for (i, e, x, uc, ul) in [
        (C, C, false, true, false),
        (C, L, false, true, false),
        (L, C, false, false, true),
        (L, L, false, false, true),
        (C, C, true, true, false),
        (C, L, true, true, true),
        (L, C, true, true, true),
        (L, L, true, true, true),
    ] {
        let policy = p(i, e, x);
        assert_eq!(
            (policy.uses_cluster(), policy.uses_local()),
            (uc, ul),
            "iTP={i} eTP={e} external={x}"
        );
    }
}
