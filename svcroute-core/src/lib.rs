//! # svcroute-core
//!
//! Kubernetes Service routing decided once, exactly as kube-proxy decides it — synchronous,
//! deterministic and free of I/O, so any dataplane can be plugged in behind it. (The one
//! exception, the health-check server, sits apart in [`health::server`] behind a feature.)
//!
//! ```text
//!  watch events ─► State ─► select ─► ChangeSet ─► Dataplane backend ─► kernel
//! ```
//!
//! - [`model`]: Services, EndpointSlices, Nodes (API shape and validated forms) and the proxy's
//!   settings; bad input becomes a [`model::ValidationError`] naming object and field.
//! - [`watch`]: the input events (shaped like kube-rs watcher events).
//! - [`state`]: the store, EndpointSlice cache and coalescing change tracker ([`State`]).
//! - [`select`]: per service port, frontends and endpoint sets (upstream `CategorizeEndpoints`).
//! - [`change`]: the [`ChangeSet`] a sync applies and the full [`Desired`] view.
//! - [`naming`]: kube-proxy's hashes of service ports and endpoints, for object names.
//! - [`mod@decide`]: the reference decision for one packet, every backend's trace must equal it.
//! - [`conntrack`]: the UDP conntrack entries a change makes stale.
//! - [`dataplane`]: the [`Dataplane`] trait backends implement, with its contract.
//! - [`health`]: the eTP=Local service health checks (`healthCheckNodePort`): what each port
//!   reports, computed from [`Desired`], and (feature `health-server`, on by default) the
//!   async [`health::server::HealthCheckServer`] that serves them over HTTP. The only I/O in
//!   the crate, kept out of everything above.
//!
//! ```
//! use svcroute_core::{State, model::{ProxyConfig, api}, watch::Event, decide::{decide, Packet}};
//!
//! let mut state = State::new(ProxyConfig::default()).unwrap();
//! let svc: api::Service = serde_json::from_str(r#"{"metadata": {"name": "web"},
//!     "spec": {"clusterIP": "10.96.0.1", "ports": [{"port": 80}]}}"#).unwrap();
//! state.apply(Event::Apply(svc)).unwrap();
//! let changes = state.take_changes();
//! assert_eq!(changes.len(), 1);
//! let packet: Packet = "10.0.0.5 10.96.0.1:80/tcp".parse().unwrap();
//! // No endpoints yet: the connection is refused.
//! assert_eq!(decide(state.desired(), &packet).verdict.name(), "reject");
//! ```

#![forbid(unsafe_code)]

pub mod change;
pub mod conntrack;
pub mod dataplane;
pub mod decide;
pub mod health;
pub mod model;
pub mod naming;
pub mod select;
pub mod state;
pub mod watch;

pub use change::{Change, ChangeSet, Desired};
pub use dataplane::{Dataplane, DataplaneError, TraceError};
pub use decide::{Decision, Packet, Verdict, decide};
pub use select::{ResolvedServicePort, ServicePortName};
pub use state::State;
