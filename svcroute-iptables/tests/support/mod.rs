//! The iptables side of the real-kernel tests (`tests/kernel.rs`); the namespaces, traffic
//! and checks are `svcroute-testbed`'s.

pub mod netns;
pub mod proxy;
