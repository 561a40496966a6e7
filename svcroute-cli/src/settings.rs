//! Node and proxy settings: a `--config` file and kube-proxy-style flags, merged (flags win)
//! into the core's [`ProxyConfig`].
//!
//! The config file uses the camelCase keys of kube-proxy's `KubeProxyConfiguration` where one
//! exists (listed in [`crate::args::CONFIG_HELP`]), so a real kube-proxy config file is read as
//! is: the kube-proxy keys svcroute has no use for are ignored, any other key is an error (a
//! typo must not silently change the routing). A list-valued key takes a YAML list or a
//! comma-separated string (kube-proxy's `clusterCIDR` is one).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;

use ipnet::IpNet;
use serde_json::{Map, Value};
use svcroute_core::model::{IpFamily, NodePortAddresses, ProxyConfig};

use crate::args::NodeArgs;
use crate::error::CliError;
use crate::input::read_source;

/// `KubeProxyConfiguration` keys that do not affect Service routing decisions; ignored.
const IGNORED_KEYS: &[&str] = &[
    "apiVersion",
    "kind",
    "bindAddress",
    "bindAddressHardFail",
    "healthzBindAddress",
    "metricsBindAddress",
    "enableProfiling",
    "showHiddenMetricsForVersion",
    "clientConnection",
    "featureGates",
    "mode",
    "ipvs",
    "nftables",
    "winkernel",
    "conntrack",
    "configSyncPeriod",
    "portRange",
    "oomScoreAdj",
    "detectLocalMode",
    "detectLocal",
    "logging",
    "linux",
    "windows",
    "windowsRunAsService",
    "syncPeriod",
    "minSyncPeriod",
];

/// Keys of the `iptables:` section svcroute reads; its other keys are ignored.
const IPTABLES_KEYS: &[&str] = &["masqueradeAll", "masqueradeBit", "localhostNodePorts"];

/// Settings from one source; `None` = that source does not set it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PartialSettings {
    /// `nodeName` / `--node-name`.
    pub node_name: Option<String>,
    /// `nodeIPs` / `--node-ip`.
    pub node_ips: Option<Vec<IpAddr>>,
    /// `nodeLabels` / `--node-labels`.
    pub node_labels: Option<BTreeMap<String, String>>,
    /// `clusterCIDRs` / `--cluster-cidr`.
    pub cluster_cidrs: Option<Vec<IpNet>>,
    /// `masqueradeAll` / `--masquerade-all`.
    pub masquerade_all: Option<bool>,
    /// `masqueradeBit` / `--masquerade-bit`.
    pub masquerade_bit: Option<u8>,
    /// `nodePortAddresses` / `--nodeport-addresses`.
    pub nodeport_addresses: Option<NodePortAddresses>,
    /// `localhostNodePorts` / `--localhost-nodeports`.
    pub localhost_nodeports: Option<bool>,
    /// `serviceCIDRs` / `--service-cidr`.
    pub service_cidrs: Option<Vec<IpNet>>,
    /// `ipFamilies` / `--ip-families`.
    pub ip_families: Option<Vec<IpFamily>>,
}

/// Reads `--config` (if given) and the flags, and returns the validated settings.
pub fn resolve(args: &NodeArgs) -> Result<ProxyConfig, CliError> {
    let base = match &args.config {
        Some(path) => load_config(path)?,
        None => PartialSettings::default(),
    };
    let config = base
        .overlay(PartialSettings::from_flags(args))
        .into_config();
    config.validate().map_err(|error| CliError::Settings {
        hint: hint_for(&error.field),
        error: Box::new(error),
    })?;
    Ok(config)
}

/// Reads a config file.
pub fn load_config(path: &Path) -> Result<PartialSettings, CliError> {
    let name = path.display().to_string();
    if name == "-" {
        return Err(CliError::Usage(
            "--config cannot read stdin; give a file".into(),
        ));
    }
    let text = read_source(path)?;
    PartialSettings::from_config_text(&name, &text)
}

/// Which flag and config key set a [`ProxyConfig`] field, by the field name core reports.
fn hint_for(field: &str) -> String {
    const KEYS: &[(&str, &str)] = &[
        ("nodeName", "--node-name / config key nodeName"),
        ("nodeLabels", "--node-labels / config key nodeLabels"),
        ("nodeIPs", "--node-ip / config key nodeIPs"),
        ("clusterCIDRs", "--cluster-cidr / config key clusterCIDRs"),
        (
            "masqueradeBit",
            "--masquerade-bit / config key masqueradeBit",
        ),
        (
            "nodePortAddresses",
            "--nodeport-addresses / config key nodePortAddresses",
        ),
        ("serviceCIDRs", "--service-cidr / config key serviceCIDRs"),
        ("ipFamilies", "--ip-families / config key ipFamilies"),
    ];
    KEYS.iter()
        .find(|(key, _)| field.starts_with(key))
        .map(|(_, hint)| (*hint).to_string())
        .unwrap_or_else(|| "the node settings".to_string())
}

/// `Some(list)` when the list is non-empty: an empty list means "flag not given".
fn non_empty<T: Clone>(v: &[T]) -> Option<Vec<T>> {
    (!v.is_empty()).then(|| v.to_vec())
}

impl PartialSettings {
    /// The settings the flags give.
    pub fn from_flags(args: &NodeArgs) -> Self {
        PartialSettings {
            node_name: args.node_name.clone(),
            node_ips: non_empty(&args.node_ips),
            node_labels: (!args.node_labels.is_empty())
                .then(|| args.node_labels.iter().cloned().collect()),
            cluster_cidrs: non_empty(&args.cluster_cidrs),
            masquerade_all: args.masquerade_all,
            masquerade_bit: args.masquerade_bit,
            nodeport_addresses: args.nodeport_addresses.clone(),
            localhost_nodeports: args.localhost_nodeports,
            service_cidrs: non_empty(&args.service_cidrs),
            ip_families: (!args.ip_families.is_empty()).then(|| dedup(args.ip_families.clone())),
        }
    }

    /// `self` with every setting `over` sets replaced (lists are replaced, not appended).
    pub fn overlay(self, over: PartialSettings) -> Self {
        PartialSettings {
            node_name: over.node_name.or(self.node_name),
            node_ips: over.node_ips.or(self.node_ips),
            node_labels: over.node_labels.or(self.node_labels),
            cluster_cidrs: over.cluster_cidrs.or(self.cluster_cidrs),
            masquerade_all: over.masquerade_all.or(self.masquerade_all),
            masquerade_bit: over.masquerade_bit.or(self.masquerade_bit),
            nodeport_addresses: over.nodeport_addresses.or(self.nodeport_addresses),
            localhost_nodeports: over.localhost_nodeports.or(self.localhost_nodeports),
            service_cidrs: over.service_cidrs.or(self.service_cidrs),
            ip_families: over.ip_families.or(self.ip_families),
        }
    }

    /// The full settings: unset ones take the core's defaults. Not yet validated.
    pub fn into_config(self) -> ProxyConfig {
        let d = ProxyConfig::default();
        ProxyConfig {
            node_name: self.node_name.unwrap_or(d.node_name),
            node_labels: self.node_labels.unwrap_or(d.node_labels),
            node_ips: self.node_ips.unwrap_or(d.node_ips),
            cluster_cidrs: self.cluster_cidrs.unwrap_or(d.cluster_cidrs),
            masquerade_all: self.masquerade_all.unwrap_or(d.masquerade_all),
            masquerade_bit: self.masquerade_bit.unwrap_or(d.masquerade_bit),
            nodeport_addresses: self.nodeport_addresses.unwrap_or(d.nodeport_addresses),
            localhost_nodeports: self.localhost_nodeports.unwrap_or(d.localhost_nodeports),
            service_cidrs: self.service_cidrs.unwrap_or(d.service_cidrs),
            ip_families: self.ip_families.unwrap_or(d.ip_families),
        }
    }

    /// Parses a config file's text (YAML or JSON, one document); `path` names it in errors.
    pub fn from_config_text(path: &str, text: &str) -> Result<Self, CliError> {
        let docs = serde_saphyr::from_multiple::<Value>(text).map_err(|e| CliError::Parse {
            path: path.to_string(),
            document: None,
            message: e.to_string(),
        })?;
        let cx = ConfigCx { path };
        let root = match docs.as_slice() {
            [] => return Ok(PartialSettings::default()),
            [Value::Object(map)] => map,
            [_] => return Err(cx.err("(top level)", "expected a mapping of settings")),
            _ => return Err(cx.err("(top level)", "expected one YAML document, found several")),
        };
        for key in root.keys() {
            let known = matches!(
                key.as_str(),
                "nodeName"
                    | "hostnameOverride"
                    | "nodeIPs"
                    | "nodeIP"
                    | "nodeLabels"
                    | "clusterCIDRs"
                    | "clusterCIDR"
                    | "masqueradeAll"
                    | "masqueradeBit"
                    | "nodePortAddresses"
                    | "localhostNodePorts"
                    | "serviceCIDRs"
                    | "serviceCIDR"
                    | "ipFamilies"
                    | "iptables"
            ) || IGNORED_KEYS.contains(&key.as_str());
            if !known {
                return Err(cx.err(key, "unknown key (see `svcroute --help` for the keys)"));
            }
        }
        let iptables = match root.get("iptables") {
            None | Some(Value::Null) => None,
            Some(Value::Object(m)) => Some(m),
            Some(_) => return Err(cx.err("iptables", "expected a mapping")),
        };
        let mut s = PartialSettings {
            node_name: cx
                .one_of(root, &["nodeName", "hostnameOverride"])?
                .map(|(k, v)| cx.string(k, v))
                .transpose()?,
            node_ips: cx
                .one_of(root, &["nodeIPs", "nodeIP"])?
                .map(|(k, v)| {
                    cx.list(k, v, |s| {
                        s.parse::<IpAddr>()
                            .map_err(|_| format!("{s:?} is not a valid IP address"))
                    })
                })
                .transpose()?,
            node_labels: root
                .get("nodeLabels")
                .map(|v| cx.labels("nodeLabels", v))
                .transpose()?,
            cluster_cidrs: cx
                .one_of(root, &["clusterCIDRs", "clusterCIDR"])?
                .map(|(k, v)| cx.list(k, v, parse_cidr))
                .transpose()?,
            nodeport_addresses: root
                .get("nodePortAddresses")
                .map(|v| {
                    let items = cx.list("nodePortAddresses", v, |s| Ok(s.to_string()))?;
                    parse_nodeport_addresses(&items.join(","))
                        .map_err(|m| cx.err("nodePortAddresses", &m))
                })
                .transpose()?,
            service_cidrs: cx
                .one_of(root, &["serviceCIDRs", "serviceCIDR"])?
                .map(|(k, v)| cx.list(k, v, parse_cidr))
                .transpose()?,
            ip_families: root
                .get("ipFamilies")
                .map(|v| cx.list("ipFamilies", v, parse_family).map(dedup))
                .transpose()?,
            ..PartialSettings::default()
        };
        // Top-level keys win over the `iptables:` section.
        let sections: [(&str, Option<&Map<String, Value>>); 2] =
            [("iptables.", iptables), ("", Some(root))];
        for (prefix, section) in sections {
            let Some(section) = section else { continue };
            for key in IPTABLES_KEYS {
                let Some(v) = section.get(*key).filter(|v| !v.is_null()) else {
                    continue;
                };
                let full = format!("{prefix}{key}");
                match *key {
                    "masqueradeAll" => s.masquerade_all = Some(cx.bool(&full, v)?),
                    "localhostNodePorts" => s.localhost_nodeports = Some(cx.bool(&full, v)?),
                    _ => s.masquerade_bit = Some(cx.masquerade_bit(&full, v)?),
                }
            }
        }
        Ok(s)
    }
}

/// Reads values of a config file, naming the file and key in every error.
struct ConfigCx<'a> {
    path: &'a str,
}

impl ConfigCx<'_> {
    fn err(&self, key: &str, message: &str) -> CliError {
        CliError::Config {
            path: self.path.to_string(),
            key: key.to_string(),
            message: message.to_string(),
        }
    }

    /// The value of whichever of `keys` is set (null counts as unset); an error if several are.
    fn one_of<'m>(
        &self,
        map: &'m Map<String, Value>,
        keys: &[&'static str],
    ) -> Result<Option<(&'static str, &'m Value)>, CliError> {
        let mut found = keys
            .iter()
            .filter_map(|k| map.get(*k).filter(|v| !v.is_null()).map(|v| (*k, v)));
        let first = found.next();
        if let (Some((a, _)), Some((b, _))) = (first, found.next()) {
            return Err(self.err(b, &format!("conflicts with {a}: give only one")));
        }
        Ok(first)
    }

    fn string(&self, key: &str, v: &Value) -> Result<String, CliError> {
        match v {
            Value::String(s) => Ok(s.trim().to_string()),
            _ => Err(self.err(key, "expected a string")),
        }
    }

    fn bool(&self, key: &str, v: &Value) -> Result<bool, CliError> {
        match v {
            Value::Bool(b) => Ok(*b),
            Value::String(s) => parse_bool(s).map_err(|m| self.err(key, &m)),
            _ => Err(self.err(key, "expected true or false")),
        }
    }

    fn masquerade_bit(&self, key: &str, v: &Value) -> Result<u8, CliError> {
        v.as_i64()
            .and_then(|n| u8::try_from(n).ok())
            .filter(|n| *n <= 31)
            .ok_or_else(|| self.err(key, &format!("{v} is not a bit number 0..=31")))
    }

    /// A list given as a YAML list of scalars or as one comma-separated string.
    fn list<T>(
        &self,
        key: &str,
        v: &Value,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Result<Vec<T>, CliError> {
        let items: Vec<(String, String)> = match v {
            Value::String(s) => split_list(s)
                .enumerate()
                .map(|(i, item)| (format!("{key}[{i}]"), item.to_string()))
                .collect(),
            Value::Array(a) => a
                .iter()
                .enumerate()
                .map(|(i, item)| {
                    let k = format!("{key}[{i}]");
                    scalar(item)
                        .map(|s| (k.clone(), s))
                        .ok_or_else(|| self.err(&k, "expected a string"))
                })
                .collect::<Result<_, _>>()?,
            _ => return Err(self.err(key, "expected a list or a comma-separated string")),
        };
        items
            .iter()
            .map(|(k, s)| parse(s.trim()).map_err(|m| self.err(k, &m)))
            .collect()
    }

    /// Labels as a mapping or as `k=v,...`.
    fn labels(&self, key: &str, v: &Value) -> Result<BTreeMap<String, String>, CliError> {
        match v {
            Value::Object(m) => m
                .iter()
                .map(|(k, val)| {
                    scalar(val)
                        .map(|s| (k.clone(), s))
                        .ok_or_else(|| self.err(&format!("{key}[{k}]"), "expected a string value"))
                })
                .collect(),
            Value::String(s) => split_list(s)
                .map(|item| parse_label(item).map_err(|m| self.err(key, &m)))
                .collect(),
            _ => Err(self.err(key, "expected a mapping or \"k=v,...\"")),
        }
    }
}

/// A scalar as text (numbers and booleans as YAML would print them).
fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Non-empty, trimmed items of a comma-separated list.
fn split_list(s: &str) -> impl Iterator<Item = &str> {
    s.split(',').map(str::trim).filter(|s| !s.is_empty())
}

fn dedup(mut families: Vec<IpFamily>) -> Vec<IpFamily> {
    let mut seen = Vec::new();
    families.retain(|f| {
        let new = !seen.contains(f);
        seen.push(*f);
        new
    });
    families
}

/// Parses a CIDR; a bare address is a host route (as Kubernetes parses it); host bits are
/// cleared.
pub fn parse_cidr(s: &str) -> Result<IpNet, String> {
    let s = s.trim();
    s.parse::<IpNet>()
        .map(|n| n.trunc())
        .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| format!("{s:?} is not a valid CIDR"))
}

/// Parses one `KEY=VALUE` label.
pub fn parse_label(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.trim().to_string())),
        _ => Err(format!("{s:?} is not a label KEY=VALUE")),
    }
}

/// Parses an IP family: `IPv4` or `IPv6` (any case).
pub fn parse_family(s: &str) -> Result<IpFamily, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "ipv4" => Ok(IpFamily::IPv4),
        "ipv6" => Ok(IpFamily::IPv6),
        _ => Err(format!("{s:?} is not an IP family (IPv4 or IPv6)")),
    }
}

/// Parses `true` / `false`.
pub fn parse_bool(s: &str) -> Result<bool, String> {
    match s.trim() {
        "true" | "True" | "TRUE" => Ok(true),
        "false" | "False" | "FALSE" => Ok(false),
        _ => Err(format!("{s:?} is not true or false")),
    }
}

/// Parses `--nodeport-addresses`: comma-separated CIDRs, or `primary` alone; empty = all node
/// addresses.
pub fn parse_nodeport_addresses(s: &str) -> Result<NodePortAddresses, String> {
    let items: Vec<&str> = split_list(s).collect();
    if items.is_empty() {
        return Ok(NodePortAddresses::All);
    }
    if items.iter().any(|i| i.eq_ignore_ascii_case("primary")) {
        return if items.len() == 1 {
            Ok(NodePortAddresses::Primary)
        } else {
            Err("\"primary\" cannot be combined with CIDRs".to_string())
        };
    }
    items
        .into_iter()
        .map(parse_cidr)
        .collect::<Result<Vec<_>, _>>()
        .map(NodePortAddresses::Cidrs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(text: &str) -> Result<PartialSettings, CliError> {
        PartialSettings::from_config_text("test.yaml", text)
    }

    #[test]
    fn reads_kube_proxy_style_keys() {
        let s = cfg("apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n\
                     mode: nftables\nhostnameOverride: node-1\nclusterCIDR: 10.244.0.0/16,fd00:10:244::/56\n\
                     iptables:\n  masqueradeAll: true\n  masqueradeBit: 13\n  syncPeriod: 30s\n\
                     nodePortAddresses: [primary]\n")
        .unwrap();
        assert_eq!(s.node_name.as_deref(), Some("node-1"));
        assert_eq!(s.cluster_cidrs.as_ref().map(Vec::len), Some(2));
        assert_eq!(s.masquerade_all, Some(true));
        assert_eq!(s.masquerade_bit, Some(13));
        assert_eq!(s.nodeport_addresses, Some(NodePortAddresses::Primary));
    }

    #[test]
    fn top_level_keys_beat_the_iptables_section() {
        let s = cfg("iptables: {masqueradeBit: 13}\nmasqueradeBit: 12\n").unwrap();
        assert_eq!(s.masquerade_bit, Some(12));
    }

    #[test]
    fn errors_name_the_key() {
        let key = |text: &str| match cfg(text) {
            Err(CliError::Config { key, .. }) => key,
            other => panic!("unexpected {other:?}"),
        };
        assert_eq!(key("nodeIPs: [192.168.0.1, nope]\n"), "nodeIPs[1]");
        assert_eq!(key("masqueradeBit: 40\n"), "masqueradeBit");
        assert_eq!(key("nodeIp: 1.2.3.4\n"), "nodeIp");
        assert_eq!(
            key("nodeName: a\nhostnameOverride: b\n"),
            "hostnameOverride"
        );
        assert_eq!(
            key("nodePortAddresses: [primary, 10.0.0.0/8]\n"),
            "nodePortAddresses"
        );
        assert_eq!(key("ipFamilies: IPv5\n"), "ipFamilies[0]");
    }

    #[test]
    fn flags_override_config() {
        let base = cfg("nodeName: a\nnodeIPs: [10.0.0.1]\nmasqueradeAll: true\n").unwrap();
        let flags = PartialSettings {
            node_name: Some("b".into()),
            masquerade_all: Some(false),
            ..Default::default()
        };
        let c = base.overlay(flags).into_config();
        assert_eq!(c.node_name, "b");
        assert!(!c.masquerade_all);
        assert_eq!(c.node_ips, vec!["10.0.0.1".parse::<IpAddr>().unwrap()]);
    }

    #[test]
    fn value_parsers() {
        assert_eq!(parse_cidr("10.1.2.3/8").unwrap().to_string(), "10.0.0.0/8");
        assert_eq!(parse_cidr("fd00::1").unwrap().to_string(), "fd00::1/128");
        assert!(parse_cidr("10.0.0.0/33").is_err());
        assert_eq!(parse_label("a=b").unwrap(), ("a".into(), "b".into()));
        assert!(parse_label("=b").is_err());
        assert_eq!(
            parse_nodeport_addresses("").unwrap(),
            NodePortAddresses::All
        );
        assert!(parse_family("ipv6").is_ok() && parse_family("v6").is_err());
    }
}
