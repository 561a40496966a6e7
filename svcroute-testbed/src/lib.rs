//! The real-kernel test bed of svcroute's dataplane backends (a dev-dependency; never
//! published).
//!
//! A backend's `tests/kernel.rs` builds a [`Topology`] of network namespaces, programs the node
//! namespace through its dataplane, sends real TCP and UDP traffic through it, and checks with
//! [`LiveProxy`] that three things agree: the endpoints that actually answered, the backend's
//! trace of the rules the kernel holds (read back from the kernel), and the core's reference
//! decision.
//!
//! ```text
//!  pod namespaces (ep1 ep2 ep3 client)      node namespace                  ext namespace
//!  eth0 10.244.0.N/32 fd00:244::N/128 ─── vpI 10.244.0.1 fd00:244::1
//!  default via 10.244.0.1 / fd00:244::1     10.244.0.N/32 dev vpI (host routes)
//!                                           lan0 192.168.50.1/24 ───────── eth0 192.168.50.2/24
//!                                                fd00:50::1/64                  192.168.50.3/24
//!                                           default via 192.168.50.2            fd00:50::2/64
//!                                                                               fd00:50::3/64
//! ```
//!
//! The external namespace routes the service CIDRs, `203.0.113.0/24` (externalIPs),
//! `198.51.100.0/24` (LB IPs) and `2001:db8::/32` via the node. Every endpoint pod answers on
//! port [`SERVER_PORT`], TCP and UDP, both families, with its own name. `ep1` and `ep2` are on
//! this node ([`NODE_NAME`]); `ep3` is labelled as on another node ([`REMOTE_NODE`]) although
//! it is attached to this one, so traffic policies are observable. Every namespace name starts
//! with `svrk<pid>-<counter>-`, and [`Topology`]'s `Drop` kills the servers and deletes the
//! namespaces, also when a test panics. Traffic never leaves the namespaces.
//!
//! The tests need root, `ip`, `python3` and the tools of the backend ([`Backend`]); without
//! them each test prints a loud SKIPPED and passes, or fails when
//! `SVCROUTE_REQUIRE_KERNEL_TESTS=1` is set (CI on a root runner).
//!
//! - [`mod@run`]: running commands, in a namespace or not.
//! - [`skip`]: what a backend needs and the skip policy ([`Backend`]).
//! - [`topology`]: the namespaces, their hosts and servers ([`Topology`], [`Host`]).
//! - [`traffic`]: client attempts and what they got ([`Request`], [`Reply`]).
//! - [`objects`]: Services and EndpointSlices pointing at the pods.
//! - [`check`]: the three-way checks ([`LiveProxy`]) and the node's settings
//!   ([`node_config`]).

#![forbid(unsafe_code)]

pub mod check;
pub mod objects;
pub mod run;
pub mod skip;
pub mod topology;
pub mod traffic;

pub use check::{LiveProxy, dnat_endpoints, node_config};
pub use objects::{endpoint_slice, service};
pub use run::{run, run_in, run_in_with_input, try_run_in_with_input};
pub use skip::Backend;
pub use topology::{ALL, Host, LOCAL, NODE_NAME, REMOTE_NODE, SERVER_PORT, Topology};
pub use traffic::{MANY, Reply, Request, SHORT, tcp, udp};
