//! An nftables dataplane for svcroute.
//!
//! [`NftDataplane`] programs the core's decision into one private table per family
//! (`ip svcroute`, `ip6 svcroute`) that svcroute alone owns, writes every sync as one atomic
//! `nft -f -` transaction holding only what changed, and traces packets through the ruleset it
//! programmed (or through `nft -j list table` of a live node).
//!
//! # Layout
//!
//! `H` is kube-proxy's hash of the service port (the `KUBE-SVC-H` hash of the iptables
//! backend); `E` hashes the service port and one endpoint.
//!
//! ```text
//! filter prerouting/output  prio -110  ct state new: daddr . l4proto . dport vmap @firewall-ips
//!                                      (LB IP with source ranges -> goto fw-H: allowed
//!                                      sources return, the rest drop)
//! nat prerouting/output     prio -100  daddr . l4proto . dport vmap @service-ips
//!                                        ClusterIP -> goto svc-H | svl-H;
//!                                        externalIP, LB IP -> goto ext-H
//!                                      fib daddr type local (or daddr @nodeport-ips)
//!                                        l4proto . dport vmap @service-nodeports -> goto ext-H
//! ext-H                                eTP=Cluster: mark for masquerade, goto svc-H;
//!                                      eTP=Local: pods goto svc-H; node sources masquerade
//!                                      and goto svc-H; the rest goto svl-H
//! svc-H / svl-H                        ClusterIP masquerade rule (daddr CIP dport P, saddr
//!                                      not a pod); dnat ip addr . port to numgen random mod N
//!                                      map @svc-H-ep (slot -> endpoint ip . port)
//!   with ClientIP affinity             saddr @sep-E-aff goto sep-E (per endpoint); numgen
//!                                      random mod N vmap @svc-H-ep (slot -> goto sep-E);
//!                                      sep-E: update @sep-E-aff { saddr } (timeout), dnat to E
//! filter input/forward/output prio -1  ct state new: daddr . l4proto . dport vmap
//!                                      @no-endpoint-services, NodePorts vmap
//!                                      @no-endpoint-nodeports (goto reject-chain | drop);
//!                                      daddr @cluster-ips reject (undefined ports);
//!                                      daddr @service-cidrs drop; input: health-check ports
//!                                      accept
//! nat postrouting           prio 100   ct status dnat saddr . daddr @hairpin: mark;
//!                                      marked: clear mark, masquerade fully-random
//! ```
//!
//! Differences from kube-proxy's nftables mode, each to make syncs cost O(changes) in the
//! kernel and in `nft`: endpoints are elements of one map per endpoint chain rather than one
//! chain each (kube-proxy's anonymous per-service `numgen` vmaps load quadratically: 24 s at
//! 10,000 services), and hairpin traffic is recognised in postrouting by the `@hairpin` set of
//! `endpoint . endpoint` pairs instead of a rule per endpoint. Only services with session
//! affinity have per-endpoint chains (an `update` statement needs a chain of its own). Names
//! are hashes, never user strings; user strings appear only in escaped comments.
//!
//! # Incremental writes
//!
//! The shadow records each service port's chains, maps and shared elements. A sync mentions a
//! port's chains only when their rules changed (flush and refill: they hold a few rules),
//! changes maps and sets element by element, deletes chains and sets that disappeared after
//! everything pointing at them is gone, and never rewrites a shared chain: taking one endpoint
//! out is a few element lines whatever the number of services.
//!
//! # Full syncs
//!
//! A full sync renders every service port on every core; each thread gathers and sorts what
//! its ports contribute ([`state::PortRun`]), and the shadow's maps are built by merging the
//! threads' sorted runs. The transaction shares the shadow's tables
//! ([`transaction::Command::AddContents`]) and its text is written straight from them, on
//! every core for large tables. Element keys are packed inline ([`ruleset::ElemKey`]): a
//! table holds hundreds of thousands of them.

#![forbid(unsafe_code)]

pub mod apply;
pub mod json;
pub mod kernel;
pub mod names;
mod parallel;
pub mod render;
pub mod ruleset;
pub mod state;
pub mod trace;
pub mod transaction;

pub use apply::{NftDataplane, Options};
pub use kernel::{FakeKernel, Kernel, KernelError, SystemKernel};
pub use ruleset::Table;
