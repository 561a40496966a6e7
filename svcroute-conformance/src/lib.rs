//! # svcroute-conformance
//!
//! The conformance suite every svcroute dataplane backend runs as a dev-dependency — ours
//! (iptables, nftables, IPVS, eBPF) and third-party ones alike.
//!
//! - [`flow`]: packet-flow tables ([`flow::FlowCase`], [`flow::Expect`], [`flow::Scenario`])
//!   and [`flow::run_flows`], which checks each case against both the core's reference
//!   decision and a backend's `trace`, reporting every mismatch by case name.
//! - [`scenarios`]: built-in scenarios with expectations written by hand from Kubernetes
//!   (upstream kube-proxy) semantics — never computed by the core.
//! - [`objects`]: builders for the Services, EndpointSlices and Nodes scenarios are made of.
//! - [`strategies`]: proptest strategies for clusters, event sequences and packets.
//! - [`properties`]: the [`properties::Backend`] harness trait and the four backend
//!   properties of DESIGN §5.2.
//! - [`memory`]: [`memory::MemoryDataplane`], an in-memory reference dataplane with an
//!   independent tracer, on which the whole suite runs in CI.
//!
//! ## Using it from a backend
//!
//! Implement [`properties::Backend`] for a harness type (building the dataplane on its fake
//! kernel), then expand [`conformance_tests!`] in an integration test:
//!
//! ```
//! // tests/conformance.rs of a backend crate. Here the "backend" wraps the in-memory
//! // dataplane; a real one builds its dataplane on its own fake kernel.
//! use svcroute_conformance::memory::{MemoryDataplane, MemoryKernel};
//! use svcroute_conformance::properties::Backend;
//! use svcroute_core::model::ProxyConfig;
//!
//! struct MyBackend;
//!
//! impl Backend for MyBackend {
//!     type Dp = MemoryDataplane;
//!     fn name() -> &'static str {
//!         "my-backend"
//!     }
//!     fn new(_config: &ProxyConfig) -> MemoryDataplane {
//!         MemoryDataplane::with_kernel(MemoryKernel::new())
//!     }
//!     fn snapshot(dp: &MemoryDataplane) -> String {
//!         dp.snapshot()
//!     }
//!     fn kernel_writes(dp: &MemoryDataplane) -> usize {
//!         dp.kernel().writes()
//!     }
//!     fn fail_next_writes(dp: &mut MemoryDataplane, n: usize) {
//!         dp.kernel().fail_next_writes(n)
//!     }
//! }
//!
//! svcroute_conformance::conformance_tests!(MyBackend);
//! # fn main() {
//! #     // In a test crate the macro's tests run under `cargo test`; here, run one by hand.
//! #     svcroute_conformance::properties::assert_scenario::<MyBackend>(
//! #         svcroute_conformance::scenarios::hairpin(),
//! #     );
//! # }
//! ```
//!
//! That yields one `#[test]` per built-in scenario and one per property, each property
//! running 1,000 proptest cases unless `PROPTEST_CASES` says otherwise. Dataplanes are driven
//! on a current-thread tokio runtime the suite creates itself, so the tests are plain
//! `#[test]` functions.

#![forbid(unsafe_code)]

pub mod flow;
pub mod memory;
pub mod objects;
pub mod properties;
pub mod scenarios;
pub mod strategies;

pub use flow::{Expect, FlowCase, FlowFailure, Scenario, run_flows};
pub use properties::Backend;

/// Expands to the whole conformance suite for a backend harness type implementing
/// [`properties::Backend`]: a module `conformance` with one `#[test]` per built-in scenario
/// (`conformance::scenario::<name>`) and one per property (`conformance::property::<name>`).
///
/// The type must be nameable from a child module of the invocation site (a `use`d name or a
/// crate path). Invoke it once per test file.
#[macro_export]
macro_rules! conformance_tests {
    ($backend:ty) => {
        #[allow(unused_imports)]
        mod conformance {
            use super::*;

            /// The backend under test.
            pub type UnderTest = $backend;

            $crate::__scenario_tests! {
                cluster_ip_masquerade,
                cluster_ip_masquerade_all,
                cluster_ip_without_local_detector,
                ipv6_statefulset,
                session_affinity_client_ip,
                no_endpoints_reject,
                undefined_port_reject,
                unallocated_service_ip_drop,
                node_port_cluster_policy,
                node_port_local_policy,
                internal_policy_local,
                external_ips,
                load_balancer_source_ranges,
                load_balancer_source_ranges_one_family,
                load_balancer_source_ranges_annotation,
                hairpin,
                terminating_fallback,
                terminating_serving_unset,
                zone_hints,
                legacy_topology_keys,
                legacy_topology_keys_ready_only,
                dual_stack,
                ipv4_only_proxy,
                udp_and_sctp,
                headless_and_external_name,
                localhost_node_ports,
                localhost_node_ports_disabled,
                node_port_addresses_primary,
                node_port_addresses_cidrs,
                health_check_node_port,
            }

            /// One test per property of DESIGN §5.2.
            mod property {
                #[test]
                fn trace_matches_reference() {
                    $crate::properties::assert_ok($crate::properties::trace_matches_reference::<
                        super::UnderTest,
                    >());
                }

                #[test]
                fn incremental_matches_full() {
                    $crate::properties::assert_ok($crate::properties::incremental_matches_full::<
                        super::UnderTest,
                    >());
                }

                #[test]
                fn empty_changes_write_nothing() {
                    $crate::properties::assert_ok(
                        $crate::properties::empty_changes_write_nothing::<super::UnderTest>(),
                    );
                }

                #[test]
                fn failed_writes_recover() {
                    $crate::properties::assert_ok($crate::properties::failed_writes_recover::<
                        super::UnderTest,
                    >());
                }
            }
        }
    };
}

/// Implementation detail of [`conformance_tests!`]: one test per named built-in scenario,
/// plus a test that the list covers [`scenarios::NAMES`].
#[doc(hidden)]
#[macro_export]
macro_rules! __scenario_tests {
    ($($name:ident),* $(,)?) => {
        /// One test per built-in scenario.
        mod scenario {
            $(
                #[test]
                fn $name() {
                    $crate::properties::assert_scenario::<super::UnderTest>(
                        $crate::scenarios::$name(),
                    );
                }
            )*

            #[test]
            fn every_builtin_scenario_has_a_test() {
                let listed: &[&str] = &[$(stringify!($name)),*];
                assert_eq!(listed, $crate::scenarios::NAMES);
            }
        }
    };
}
