//! The validated EndpointSlice.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::IpAddr;
use std::sync::Arc;

use super::validate::{Ctx, MAX_LABEL, MAX_SUBDOMAIN};
use super::{
    IpFamily, LABEL_SERVICE_NAME, ObjectKind, Problem, Protocol, ServiceName, ValidationError, api,
};

/// Most endpoints the API allows in one slice.
pub const MAX_ENDPOINTS: usize = 1_000;
/// Most ports the API allows in one slice.
pub const MAX_PORTS: usize = 100;
/// Most hints the API allows per endpoint.
pub const MAX_HINTS: usize = 8;

/// Shares the few distinct node names, zones and hints among all endpoints, so a large
/// cluster stores each string once.
#[derive(Debug, Default)]
pub struct Interner {
    strings: HashSet<Arc<str>>,
    topologies: HashSet<Arc<EndpointTopology>>,
}

impl Interner {
    /// The shared copy of `s`.
    pub fn intern(&mut self, s: &str) -> Arc<str> {
        if let Some(found) = self.strings.get(s) {
            return found.clone();
        }
        let new: Arc<str> = Arc::from(s);
        self.strings.insert(new.clone());
        new
    }

    /// The shared copy of `t` (endpoints of one zone usually carry identical hints).
    pub fn intern_topology(&mut self, t: EndpointTopology) -> Arc<EndpointTopology> {
        if let Some(found) = self.topologies.get(&t) {
            return found.clone();
        }
        let new = Arc::new(t);
        self.topologies.insert(new.clone());
        new
    }
}

/// The rarely set topology fields of an endpoint, kept out of line so the common endpoint
/// stays small.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct EndpointTopology {
    /// `hints.forZones`.
    pub zone_hints: Box<[Arc<str>]>,
    /// `hints.forNodes`.
    pub node_hints: Box<[Arc<str>]>,
    /// `deprecatedTopology` (node labels for legacy `topologyKeys`).
    pub deprecated_topology: BTreeMap<String, String>,
}

/// One port of a slice.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SlicePort {
    /// Name, matched against the service port name (empty = unnamed).
    pub name: String,
    /// Protocol.
    pub protocol: Protocol,
    /// Target port number.
    pub port: u16,
}

/// One endpoint of a slice, with its conditions resolved (ready unset = true, serving unset =
/// ready, terminating unset = false).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EndpointInfo {
    /// Its address (the first of `addresses`).
    pub ip: IpAddr,
    /// `conditions.ready`.
    pub ready: bool,
    /// `conditions.serving`.
    pub serving: bool,
    /// `conditions.terminating`.
    pub terminating: bool,
    /// `nodeName`.
    pub node_name: Option<Arc<str>>,
    /// `zone`.
    pub zone: Option<Arc<str>>,
    /// Hints and `deprecatedTopology`, when the slice gives any.
    pub topology: Option<Arc<EndpointTopology>>,
}

impl EndpointInfo {
    /// `hints.forZones` (empty when unset).
    pub fn zone_hints(&self) -> &[Arc<str>] {
        self.topology
            .as_deref()
            .map(|t| &*t.zone_hints)
            .unwrap_or_default()
    }

    /// `hints.forNodes` (empty when unset).
    pub fn node_hints(&self) -> &[Arc<str>] {
        self.topology
            .as_deref()
            .map(|t| &*t.node_hints)
            .unwrap_or_default()
    }

    /// `deprecatedTopology`, if the slice gives it.
    pub fn deprecated_topology(&self) -> Option<&BTreeMap<String, String>> {
        self.topology
            .as_deref()
            .map(|t| &t.deprecated_topology)
            .filter(|m| !m.is_empty())
    }
}

/// A validated EndpointSlice.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SliceInfo {
    /// The slice's own name.
    pub name: String,
    /// The Service it belongs to (label `kubernetes.io/service-name`).
    pub service: ServiceName,
    /// Address family; `None` for FQDN slices, which routing ignores.
    pub family: Option<IpFamily>,
    /// Ports with a number.
    pub ports: Vec<SlicePort>,
    /// Endpoints.
    pub endpoints: Vec<EndpointInfo>,
}

/// Puts the field path into a failed check's error. Checks run with an empty path and the real
/// one is formatted only on failure, so validating a good slice formats no field names (this
/// runs for every endpoint of every slice update).
fn at<T>(
    result: Result<T, ValidationError>,
    field: impl FnOnce() -> String,
) -> Result<T, ValidationError> {
    result.map_err(|mut e| {
        e.field = field();
        e
    })
}

impl SliceInfo {
    /// Validates a slice as the API shapes it.
    pub fn from_api(
        slice: &api::EndpointSlice,
        interner: &mut Interner,
    ) -> Result<Self, ValidationError> {
        let meta = &slice.metadata;
        let namespace = meta.namespace.as_deref().unwrap_or("default");
        let name = meta.name.as_deref().unwrap_or_default();
        let cx = Ctx::new(ObjectKind::EndpointSlice, Some(namespace), Some(name));
        cx.dns_label("metadata.namespace", namespace)?;
        cx.dns_subdomain("metadata.name", name)?;
        let label_field = || format!("metadata.labels[{LABEL_SERVICE_NAME}]");
        let service = meta
            .labels
            .get(LABEL_SERVICE_NAME)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| cx.err(label_field(), Problem::Missing))?;
        at(cx.dns_label("", service), label_field)?;
        let family = match slice.address_type.as_deref() {
            Some("IPv4") => Some(IpFamily::IPv4),
            Some("IPv6") => Some(IpFamily::IPv6),
            Some("FQDN") => None,
            None => return Err(cx.err("addressType", Problem::Missing)),
            Some(other) => {
                return Err(cx.err(
                    "addressType",
                    Problem::Unsupported {
                        value: super::validate::truncated(other),
                        expected: "IPv4, IPv6 or FQDN",
                    },
                ));
            }
        };
        let mut info = SliceInfo {
            name: name.to_string(),
            service: ServiceName::new(namespace, service.as_str()),
            family,
            ports: Vec::new(),
            endpoints: Vec::new(),
        };
        let Some(family) = family else {
            return Ok(info);
        };

        cx.max_len("ports", &slice.ports, MAX_PORTS)?;
        info.ports.reserve_exact(slice.ports.len());
        let mut names = BTreeSet::new();
        for (i, p) in slice.ports.iter().enumerate() {
            let field = |f: &str| format!("ports[{i}].{f}");
            let pname = p.name.clone().unwrap_or_default();
            if !pname.is_empty() {
                at(cx.dns_label("", &pname), || field("name"))?;
            }
            let protocol = at(cx.protocol("", p.protocol.as_deref()), || field("protocol"))?;
            if !names.insert((pname.clone(), protocol)) {
                return Err(cx.err(field("name"), Problem::Duplicate(pname)));
            }
            // A port without a number means "no port" (upstream skips it).
            let Some(number) = p.port else { continue };
            let port = at(cx.port("", number), || field("port"))?;
            info.ports.push(SlicePort {
                name: pname,
                protocol,
                port,
            });
        }

        cx.max_len("endpoints", &slice.endpoints, MAX_ENDPOINTS)?;
        info.endpoints.reserve_exact(slice.endpoints.len());
        let mut seen = HashSet::with_capacity(slice.endpoints.len());
        for (i, ep) in slice.endpoints.iter().enumerate() {
            let field = |f: &str| format!("endpoints[{i}].{f}");
            let first = ep
                .addresses
                .first()
                .ok_or_else(|| cx.err(field("addresses"), Problem::Missing))?;
            at(cx.max_len("", &ep.addresses, 100), || field("addresses"))?;
            let ip = at(cx.ip_of("", first, family), || field("addresses[0]"))?;
            if !seen.insert(ip) {
                return Err(cx.err(field("addresses[0]"), Problem::Duplicate(ip.to_string())));
            }
            let ready = ep.conditions.ready.unwrap_or(true);
            let mut intern_opt =
                |f: &str, v: &Option<String>, max: usize| -> Result<_, ValidationError> {
                    match v.as_deref().filter(|s| !s.is_empty()) {
                        None => Ok(None),
                        Some(s) => {
                            at(cx.short("", s, max), || field(f))?;
                            Ok(Some(interner.intern(s)))
                        }
                    }
                };
            let node_name = intern_opt("nodeName", &ep.node_name, MAX_SUBDOMAIN)?;
            let zone = intern_opt("zone", &ep.zone, MAX_SUBDOMAIN)?;
            let (zone_hints, node_hints) = match &ep.hints {
                None => (Box::default(), Box::default()),
                Some(h) => {
                    at(cx.max_len("", &h.for_zones, MAX_HINTS), || {
                        field("hints.forZones")
                    })?;
                    at(cx.max_len("", &h.for_nodes, MAX_HINTS), || {
                        field("hints.forNodes")
                    })?;
                    let mut intern_all =
                        |f: &str,
                         hints: &[api::NamedHint]|
                         -> Result<Box<[Arc<str>]>, ValidationError> {
                            hints
                                .iter()
                                .map(|h| {
                                    at(cx.short("", &h.name, MAX_SUBDOMAIN), || field(f))?;
                                    Ok(interner.intern(&h.name))
                                })
                                .collect()
                        };
                    (
                        intern_all("hints.forZones", &h.for_zones)?,
                        intern_all("hints.forNodes", &h.for_nodes)?,
                    )
                }
            };
            let deprecated_topology = if ep.deprecated_topology.is_empty() {
                BTreeMap::new()
            } else {
                cx.max_len(
                    &field("deprecatedTopology"),
                    &ep.deprecated_topology.iter().collect::<Vec<_>>(),
                    64,
                )?;
                for (k, v) in &ep.deprecated_topology {
                    cx.label_key(&field("deprecatedTopology"), k)?;
                    cx.short(&field("deprecatedTopology"), v, MAX_LABEL)?;
                }
                ep.deprecated_topology.clone()
            };
            let topology = (!zone_hints.is_empty()
                || !node_hints.is_empty()
                || !deprecated_topology.is_empty())
            .then(|| {
                interner.intern_topology(EndpointTopology {
                    zone_hints,
                    node_hints,
                    deprecated_topology,
                })
            });
            info.endpoints.push(EndpointInfo {
                ip,
                ready,
                serving: ep.conditions.serving.unwrap_or(ready),
                terminating: ep.conditions.terminating.unwrap_or(false),
                node_name,
                zone,
                topology,
            });
        }
        Ok(info)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slice(v: serde_json::Value) -> Result<SliceInfo, ValidationError> {
        let s: api::EndpointSlice = serde_json::from_value(v).unwrap();
        SliceInfo::from_api(&s, &mut Interner::default())
    }

    #[test]
    fn conditions_default_as_upstream() {
        let s = slice(serde_json::json!({
            "metadata": {"name": "web-abc", "namespace": "ns", "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080}, {"name": "nonum"}],
            "endpoints": [
                {"addresses": ["10.0.0.1"]},
                {"addresses": ["10.0.0.2"], "conditions": {"ready": false}},
                {"addresses": ["10.0.0.3"], "conditions": {"ready": false, "serving": true, "terminating": true}, "nodeName": "n1", "zone": "z"}
            ]
        }))
        .unwrap();
        assert_eq!(s.ports.len(), 1);
        let e = &s.endpoints;
        assert!(e[0].ready && e[0].serving && !e[0].terminating);
        assert!(!e[1].ready && !e[1].serving);
        assert!(!e[2].ready && e[2].serving && e[2].terminating);
        assert_eq!(e[2].node_name.as_deref(), Some("n1"));
    }

    #[test]
    fn bad_slices_are_named() {
        let base = |extra: serde_json::Value| {
            let mut v = serde_json::json!({
                "metadata": {"name": "s", "namespace": "ns", "labels": {"kubernetes.io/service-name": "web"}},
                "addressType": "IPv4",
            });
            for (k, val) in extra.as_object().unwrap() {
                v[k] = val.clone();
            }
            slice(v).unwrap_err().field
        };
        assert_eq!(
            base(serde_json::json!({"endpoints": [{"addresses": []}]})),
            "endpoints[0].addresses"
        );
        assert_eq!(
            base(serde_json::json!({"endpoints": [{"addresses": ["fd00::1"]}]})),
            "endpoints[0].addresses[0]"
        );
        assert_eq!(
            base(serde_json::json!({"ports": [{"port": 0}]})),
            "ports[0].port"
        );
        let unlabelled: api::EndpointSlice = serde_json::from_value(
            serde_json::json!({"metadata": {"name": "s"}, "addressType": "IPv4"}),
        )
        .unwrap();
        assert_eq!(
            SliceInfo::from_api(&unlabelled, &mut Interner::default())
                .unwrap_err()
                .field,
            "metadata.labels[kubernetes.io/service-name]"
        );
    }
}
