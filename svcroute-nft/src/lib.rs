//! An nftables dataplane for svcroute.
//!
//! [`NftDataplane`] programs the core's decision into private tables that svcroute alone owns:
//! per family (`ip`, `ip6`), one table `svcroute` up to 1,024 service ports (by default), and
//! beyond that a common table `svcroute` plus shards `svcroute-0`, `svcroute-1`, ... that
//! split the service ports between them ([`shards`]). It writes every
//! sync as one atomic transaction holding only what changed, and traces packets through the
//! ruleset it programmed (or through `nft -j list table` of a live node).
//!
//! # Layout
//!
//! `H` is kube-proxy's hash of the service port (the `KUBE-SVC-H` hash of the iptables
//! backend); `E` hashes the service port and one endpoint.
//!
//! ```text
//! common table `svcroute` (a family of up to 1,024 ports: the only table, its shard too)
//! filter prerouting/output  prio -110  ct state new: daddr . l4proto . dport vmap @firewall-ips
//!                                      (LB IP with source ranges -> goto fw-H: allowed
//!                                      sources return, the rest drop)
//! filter input/forward/output prio -1  ct state new: daddr . l4proto . dport vmap
//!                                      @no-endpoint-services, NodePorts vmap
//!                                      @no-endpoint-nodeports (goto reject-chain | drop);
//!                                      daddr @cluster-ips reject (undefined ports);
//!                                      daddr @service-cidrs drop; input: health-check ports
//!                                      accept
//! nat postrouting           prio 100   ct status dnat saddr . daddr @hairpin: mark;
//!                                      marked: clear mark, masquerade fully-random
//!
//! each shard `svcroute-N` (the service ports whose service hashes to N)
//! nat prerouting/output     prio -100  daddr . l4proto . dport vmap @service-ips
//!                                        ClusterIP -> goto svc-H | svl-H;
//!                                        externalIP, LB IP -> goto ext-H
//!                                      l4proto . dport @nodeport-keys, fib daddr type local
//!                                        (or daddr @nodeport-ips): l4proto . dport vmap
//!                                        @service-nodeports -> goto ext-H
//! ext-H                                eTP=Cluster: mark for masquerade, goto svc-H;
//!                                      eTP=Local: pods goto svc-H; node sources masquerade
//!                                      and goto svc-H; the rest goto svl-H
//! svc-H / svl-H                        ClusterIP masquerade rule (daddr CIP dport P, saddr
//!                                      not a pod); dnat ip addr . port to numgen random mod N
//!                                      map @svc-H-ep (slot -> endpoint ip . port)
//!   with ClientIP affinity             saddr . numgen random mod 1 offset ID_E @aff-H
//!                                      jump sep-E (per endpoint); goto svc-H-pick: numgen
//!                                      random mod N vmap @svc-H-ep (slot -> goto sep-E);
//!                                      sep-E: update @aff-H { saddr . numgen random mod 1
//!                                      offset ID_E }, dnat to E
//! ```
//!
//! The shards' nat chains run one after the other at the same hook; each knows only its own
//! services' frontends (a frontend belongs to one service), and the first DNAT ends the hook.
//! Everything every packet passes (the filter hooks) is in the common table, once.
//!
//! Differences from kube-proxy's nftables mode, each to make syncs cost O(changes) in the
//! kernel and in `nft`: endpoints are elements of one map per endpoint chain rather than one
//! chain each (kube-proxy's anonymous per-service `numgen` vmaps load quadratically: 24 s at
//! 10,000 services), and hairpin traffic is recognised in postrouting by the `@hairpin` set of
//! `endpoint . endpoint` pairs instead of a rule per endpoint. Only services with session
//! affinity have per-endpoint chains (an `update` statement needs a chain of its own). Their
//! clients are recorded in one dynamic set per service port, `aff-H` of `saddr . ID` (timeout:
//! the affinity timeout, `size` 2^20), rather than one set per endpoint: the kernel finds a set
//! by walking the table's list of sets, so a full sync of 5,000 services × 50 endpoints costs
//! quadratically in their number. `ID_E` is a 31-bit integer unique within the port (the
//! first bits of `E`, the next free value on a collision, kept while the endpoint exists);
//! nft refuses a constant inside a lookup key, but `numgen random mod 1 offset ID` is always
//! `ID`. A removed endpoint's rule goes, so its entries are never matched again and expire.
//! Names are hashes, never user strings; user strings appear only in escaped comments.
//!
//! # Incremental writes
//!
//! The shadow records each service port's chains, maps and shared elements. A sync mentions a
//! port's chains only when their rules changed (flush and refill: they hold a few rules),
//! changes maps and sets element by element, deletes chains and sets that disappeared after
//! everything pointing at them is gone, and never rewrites a shared chain: taking one endpoint
//! out is a few element lines whatever the number of services. An endpoint that leaves a
//! ClientIP-affinity port leaves its lookup rule behind for a while, its `sep-E` chain emptied
//! (a `jump` to an empty chain returns), so that it too rewrites a few lines rather than one
//! rule per endpoint; the lookups are written anew when a new endpoint joins or when such
//! tombstones would outnumber the live endpoints. Endpoints keep their slot in
//! their port's endpoint map across incremental syncs ([`slots`]), so that taking one out of
//! fifty rewrites three elements of the map rather than refilling it.
//!
//! # Shards
//!
//! When a transaction adds a rule or a `jump`/`goto` element, the kernel re-validates at
//! commit every chain reachable from the base chains of the table it changed. An endpoint that
//! leaves or joins changes its port's `numgen random mod N` rule, so in a single table of
//! 5,000 services that walk would be most of the change's cost; in a shard it covers a
//! thousand services at most. The common table holds no port chain but the load balancers' `fw-H`, so
//! its walks are short too. Full syncs gain as well: the kernel finds sets by walking their
//! table's list of sets.
//!
//! # Writing to the kernel
//!
//! A full sync is written with `nft -f -`. An incremental transaction that holds only element
//! changes of plain sets and maps, regular chains and the rules of service chains is encoded
//! by svcroute itself and sent as one nf_tables netlink batch on a socket kept open
//! ([`SystemKernel`]): the kernel applies it as atomically as `nft -f`, without `nft` reading
//! the whole ruleset first (100 ms and more on a 5,000 × 50 table). One endpoint changing its
//! address then costs under a millisecond at any size. When the change adds or replaces a
//! rule, the kernel re-validates the chains of its shard at commit, which is what bounds that
//! case (see `BENCHMARKS.md`).
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
pub mod shards;
pub mod slots;
pub mod state;
pub mod trace;
pub mod transaction;

pub use apply::{NftDataplane, Options};
pub use kernel::{FakeKernel, Kernel, KernelError, SystemKernel};
pub use ruleset::Table;
