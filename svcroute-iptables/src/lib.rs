//! kube-proxy's iptables dataplane for svcroute.
//!
//! [`IptablesDataplane`] programs the core's decision as the chains a kube-proxy user knows,
//! one ruleset per IP family (`iptables-restore` for IPv4, `ip6tables-restore` for IPv6),
//! writes only what changed, and traces packets through the rules it programmed (or through an
//! `iptables-save` dump of a live node).
//!
//! # Layout
//!
//! `H` is kube-proxy's hash of the service port (`KUBE-SVC-H` has the same name kube-proxy
//! gives it); `E` hashes the service port and one endpoint.
//!
//! ```text
//! nat    PREROUTING, OUTPUT  -j KUBE-SERVICES
//!        POSTROUTING         -j KUBE-POSTROUTING
//! nat    KUBE-SERVICES       -d CLUSTER-IP -p P --dport PORT       -j KUBE-SVC-H | KUBE-SVL-H
//!                            -d EXTERNAL-IP|LB-IP -p P --dport PORT -j KUBE-EXT-H
//!                            (last) -m addrtype --dst-type LOCAL   -j KUBE-NODEPORTS
//! nat    KUBE-NODEPORTS      -p P --dport NODEPORT                 -j KUBE-EXT-H
//! nat    KUBE-EXT-H          eTP=Cluster: mark for masquerade, -j KUBE-SVC-H
//!                            eTP=Local:   pods -j KUBE-SVC-H; node sources masquerade and
//!                                         -j KUBE-SVC-H; the rest -j KUBE-SVL-H
//! nat    KUBE-SVC-H/SVL-H    ClusterIP masquerade rule, `recent --rcheck` affinity rules,
//!                            `statistic --mode random --probability 1/(n-i)` cascade
//! nat    KUBE-SEP-E          -s ENDPOINT -j KUBE-MARK-MASQ (hairpin); [recent --set] DNAT
//! nat    KUBE-MARK-MASQ      MARK --or-mark M;  KUBE-POSTROUTING: MASQUERADE --random-fully
//! filter INPUT, FORWARD, OUTPUT -m conntrack --ctstate NEW -j KUBE-PROXY-FIREWALL,
//!                            KUBE-SERVICES, KUBE-EXTERNAL-SERVICES; INPUT -j KUBE-NODEPORTS;
//!                            FORWARD -j KUBE-FORWARD
//! filter KUBE-PROXY-FIREWALL conntrack original destination LB-IP:PORT -j KUBE-FW-H
//! filter KUBE-FW-H           allowed sources RETURN, the rest DROP
//! filter KUBE-SERVICES       no endpoints: -d CLUSTER-IP --dport PORT REJECT (DROP for a
//!                            Local policy without local endpoints); last -j KUBE-CLUSTER-IPS
//! filter KUBE-CLUSTER-IPS    -d CLUSTER-IP REJECT (undefined ports); -d SERVICE-CIDR DROP
//! filter KUBE-EXTERNAL-SERVICES  the same verdicts for external IPs, LB IPs and (through
//!                            KUBE-EXTERNAL-NODEPORTS) NodePorts
//! filter KUBE-NODEPORTS      ACCEPT tcp to health-check NodePorts
//! filter KUBE-FORWARD        DROP INVALID; ACCEPT marked and RELATED,ESTABLISHED
//! ```
//!
//! Differences from kube-proxy, all to match the core's reference decision: the source-range
//! firewall lives in the filter table and matches the conntrack original destination, so it
//! drops before anything else whether or not the packet was DNATed; undefined ports of a
//! ClusterIP are rejected and unallocated service-CIDR addresses dropped (as kube-proxy's
//! nftables mode does); no-endpoint NodePorts honour `--nodeport-addresses`.
//!
//! # Incremental writes
//!
//! The shadow records each chain's rules. A sync touches a per-service chain only when its
//! rules changed (rule by rule when that is shorter than rewriting it: taking one endpoint out
//! of a cascade is often a single `-D`), deletes chains that disappeared, and edits the shared
//! top-level chains rule by rule (`-D` and `-I` at the sorted position), so a change to one
//! service costs the same payload whatever the number of services.

#![forbid(unsafe_code)]

pub mod apply;
pub mod kernel;
pub mod names;
pub mod parse;
pub mod payload;
pub mod render;
pub mod ruleset;
pub mod trace;

pub use apply::{IptablesDataplane, Options};
pub use kernel::{FakeKernel, Kernel, KernelError, SystemKernel};
pub use ruleset::{Ruleset, TableName};
