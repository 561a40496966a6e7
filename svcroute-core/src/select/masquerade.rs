//! Which traffic is masqueraded (SNATed to the node), decided once for every backend.
//!
//! - ClusterIP traffic: per [`InternalMasquerade`] (all with `masqueradeAll`; otherwise traffic
//!   not from the local pod CIDRs; never without a local-traffic detector).
//! - External traffic (NodePort, externalIP, LB IP): always under `externalTrafficPolicy:
//!   Cluster`; under `Local`, only node-originated traffic, while pod traffic short-circuits to
//!   the cluster endpoints unmasqueraded ([`ExternalPath`]).
//! - Hairpin: an endpoint reaching itself through its service is always masqueraded, or the
//!   reply would bypass the DNAT.

use std::net::IpAddr;

use ipnet::IpNet;

use crate::model::{ProxyConfig, TrafficPolicy};

/// When traffic to a ClusterIP is masqueraded.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum InternalMasquerade {
    /// `masqueradeAll`: always.
    All,
    /// Unless it comes from these local pod CIDRs (the ClusterCIDR local-traffic detector).
    UnlessFrom(Vec<IpNet>),
    /// No local-traffic detector: never (hairpin aside), as upstream does.
    Never,
}

impl InternalMasquerade {
    /// The rule the settings imply.
    pub fn for_config(config: &ProxyConfig) -> Self {
        if config.masquerade_all {
            InternalMasquerade::All
        } else if config.has_local_detector() {
            InternalMasquerade::UnlessFrom(config.cluster_cidrs.clone())
        } else {
            InternalMasquerade::Never
        }
    }

    /// Whether ClusterIP traffic from `source` is masqueraded.
    pub fn applies(&self, source: IpAddr) -> bool {
        match self {
            InternalMasquerade::All => true,
            InternalMasquerade::UnlessFrom(pods) => !pods.iter().any(|n| n.contains(&source)),
            InternalMasquerade::Never => false,
        }
    }
}

/// How external traffic from one source is handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ExternalPath {
    /// Which endpoint set it goes to.
    pub endpoints: TrafficPolicy,
    /// Whether it is masqueraded.
    pub masquerade: bool,
}

impl ExternalPath {
    /// The path of external traffic from `source` under `policy`.
    pub fn for_source(config: &ProxyConfig, policy: TrafficPolicy, source: IpAddr) -> Self {
        let path = |endpoints, masquerade| ExternalPath {
            endpoints,
            masquerade,
        };
        match policy {
            TrafficPolicy::Cluster => path(TrafficPolicy::Cluster, true),
            // Pod traffic short-circuits to the cluster set, keeping its source.
            TrafficPolicy::Local if config.is_pod_source(source) => {
                path(TrafficPolicy::Cluster, false)
            }
            TrafficPolicy::Local if config.is_node_address(source) => {
                path(TrafficPolicy::Cluster, true)
            }
            TrafficPolicy::Local => path(TrafficPolicy::Local, false),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn internal_rule_follows_settings() {
        let mut c = ProxyConfig::default();
        assert_eq!(
            InternalMasquerade::for_config(&c),
            InternalMasquerade::Never
        );
        assert!(!InternalMasquerade::for_config(&c).applies(ip("8.8.8.8")));
        c.cluster_cidrs = vec!["10.244.0.0/16".parse().unwrap()];
        let rule = InternalMasquerade::for_config(&c);
        assert!(rule.applies(ip("192.168.1.1")));
        assert!(!rule.applies(ip("10.244.3.3")));
        c.masquerade_all = true;
        assert!(InternalMasquerade::for_config(&c).applies(ip("10.244.3.3")));
    }

    #[test]
    fn external_paths() {
        let c = ProxyConfig {
            node_ips: vec![ip("192.168.1.1")],
            cluster_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
            ..ProxyConfig::default()
        };
        let local = |src| ExternalPath::for_source(&c, TrafficPolicy::Local, ip(src));
        assert_eq!(
            local("10.244.1.1"),
            ExternalPath {
                endpoints: TrafficPolicy::Cluster,
                masquerade: false
            }
        );
        assert_eq!(
            local("192.168.1.1"),
            ExternalPath {
                endpoints: TrafficPolicy::Cluster,
                masquerade: true
            }
        );
        assert_eq!(
            local("127.0.0.1"),
            ExternalPath {
                endpoints: TrafficPolicy::Cluster,
                masquerade: true
            }
        );
        assert_eq!(
            local("203.0.113.9"),
            ExternalPath {
                endpoints: TrafficPolicy::Local,
                masquerade: false
            }
        );
        let cluster = ExternalPath::for_source(&c, TrafficPolicy::Cluster, ip("10.244.1.1"));
        assert_eq!(
            cluster,
            ExternalPath {
                endpoints: TrafficPolicy::Cluster,
                masquerade: true
            }
        );
    }
}
