//! [`IptablesDataplane`]: the [`Dataplane`] contract over a [`Kernel`].
//!
//! - `sync_full` reads our chains back (`iptables-save`), then writes one payload per family
//!   that flushes and refills every chain we want, deletes chains we own but no longer want
//!   (ours from an earlier run, or kube-proxy's), and re-inserts our hooks at the top of the
//!   built-in chains. It adopts whatever an earlier run left and repairs anything half-written.
//! - `apply` renders only the changed service ports and writes their difference
//!   ([`FamilyState::plan`]); an empty change set writes nothing; changed settings mean a full
//!   sync.
//! - A failed restore leaves the shadow (what `trace` reads) as it was and makes the next call
//!   a full sync. iptables commits table by table, so the kernel may briefly hold a new filter
//!   table with an old nat table; the repair sync replaces both.
//! - After a successful incremental sync, conntrack entries of UDP flows to removed endpoints
//!   are deleted, and so are the "black hole" entries of UDP ports that just got endpoints.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use svcroute_core::dataplane::{ApplyReport, Capabilities, SyncKind};
use svcroute_core::decide::Packet;
use svcroute_core::model::{IpFamily, ProxyConfig};
use svcroute_core::select::ResolvedServicePort;
use svcroute_core::{ChangeSet, Dataplane, DataplaneError, Decision, Desired, TraceError, Verdict};

use crate::kernel::{Kernel, KernelError};
use crate::parse;
use crate::payload::FamilyState;
use crate::render;
use crate::ruleset::Ruleset;
use crate::trace::Tracer;
use svcroute_core::conntrack::stale_flows_per_family;

const BACKEND: &str = "iptables";

/// Tuning of the backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// Start large nf_tables payloads with `-S` (see [`crate::payload`]); on by default.
    pub chain_cache_workaround: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            chain_cache_workaround: true,
        }
    }
}

/// One family's programmed rules and the tracer compiled from them on first use.
#[derive(Debug)]
struct Programmed {
    state: FamilyState,
    tracer: OnceLock<Result<Tracer, TraceError>>,
}

impl Programmed {
    fn new(state: FamilyState) -> Self {
        Programmed {
            state,
            tracer: OnceLock::new(),
        }
    }
}

/// What the dataplane believes the kernel holds.
#[derive(Debug, Default)]
struct Shadow {
    config: Option<Arc<ProxyConfig>>,
    families: BTreeMap<IpFamily, Programmed>,
}

/// kube-proxy's iptables dataplane. See the crate and module docs.
#[derive(Debug)]
pub struct IptablesDataplane {
    kernel: Box<dyn Kernel>,
    options: Options,
    shadow: Shadow,
    needs_full_sync: bool,
    conntrack_error: Option<String>,
}

fn kernel_error(operation: &str, e: KernelError) -> DataplaneError {
    match e {
        KernelError::Io { tool, source } => DataplaneError::Io {
            backend: BACKEND,
            operation: format!("{operation}: {tool}"),
            source,
        },
        KernelError::Failed {
            tool,
            status,
            stderr,
            retryable,
        } => DataplaneError::Kernel {
            backend: BACKEND,
            operation: format!("{operation}: {tool}"),
            message: format!("{status}: {stderr}"),
            retryable,
        },
        KernelError::Fake(message) => DataplaneError::Kernel {
            backend: BACKEND,
            operation: operation.to_string(),
            message,
            retryable: false,
        },
    }
}

/// The full state of one family under `desired`. Service ports render independently, so large
/// states render on every core (each thread takes a contiguous run of ports).
pub fn desired_state(desired: &Desired, family: IpFamily) -> FamilyState {
    const PORTS_PER_THREAD: usize = 1024;
    let config = desired.config();
    let ports: Vec<&Arc<ResolvedServicePort>> = desired.ports().collect();
    let threads = std::thread::available_parallelism()
        .map_or(1, usize::from)
        .min(ports.len().div_ceil(PORTS_PER_THREAD))
        .max(1);
    let render_run = |run: &[&Arc<ResolvedServicePort>]| -> Vec<_> {
        run.iter()
            .filter_map(|p| render::port_rules(config, p, family).map(|r| (p.name.clone(), r)))
            .collect()
    };
    let rendered: Vec<Vec<_>> = if threads == 1 {
        vec![render_run(&ports)]
    } else {
        let chunk = ports.len().div_ceil(threads);
        std::thread::scope(|scope| {
            let handles: Vec<_> = ports
                .chunks(chunk)
                .map(|run| scope.spawn(move || render_run(run)))
                .collect();
            // A panicking renderer is a bug; re-raise it rather than lose ports.
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
                .collect()
        })
    };
    let mut state = FamilyState::new(render::skeleton(config, family));
    for (name, rules) in rendered.into_iter().flatten() {
        state.set_port(name, Some(rules));
    }
    state
}

/// The payloads a full sync of `desired` writes into a kernel without any of our rules, per
/// family: what `svcroute render --backend iptables` prints.
pub fn render_full(desired: &Desired, nft_workaround: bool) -> Vec<(IpFamily, String)> {
    IpFamily::ALL
        .iter()
        .filter(|f| desired.config().handles(**f))
        .map(|f| {
            let state = desired_state(desired, *f);
            (*f, state.full_payload(&Ruleset::default(), nft_workaround))
        })
        .collect()
}

impl IptablesDataplane {
    /// A dataplane programming `kernel`.
    pub fn new(kernel: Box<dyn Kernel>) -> Self {
        IptablesDataplane::with_options(kernel, Options::default())
    }

    /// A dataplane programming `kernel`, tuned.
    pub fn with_options(kernel: Box<dyn Kernel>, options: Options) -> Self {
        IptablesDataplane {
            kernel,
            options,
            shadow: Shadow::default(),
            needs_full_sync: false,
            conntrack_error: None,
        }
    }

    /// Whether the last write failed and the next call must be a full sync.
    pub fn needs_full_sync(&self) -> bool {
        self.needs_full_sync
    }

    /// The last conntrack cleanup failure, if the last sync had one (rules were still
    /// programmed; stale UDP flows may linger until they time out).
    pub fn conntrack_error(&self) -> Option<&str> {
        self.conntrack_error.as_deref()
    }

    /// The rules the shadow holds for a family (what `trace` interprets).
    pub fn programmed(&self, family: IpFamily) -> Option<Ruleset> {
        self.shadow.families.get(&family).map(|p| p.state.ruleset())
    }

    fn nft_workaround(&self) -> bool {
        self.options.chain_cache_workaround && self.kernel.is_nft()
    }

    fn read_kernel(&mut self, family: IpFamily) -> Result<Ruleset, DataplaneError> {
        let text = self
            .kernel
            .save(family)
            .map_err(|e| kernel_error("read rules", e))?;
        parse::parse_save(&text).map_err(|e| DataplaneError::OutOfSync {
            backend: BACKEND,
            message: format!("cannot parse iptables-save output: {e}"),
        })
    }

    /// The payloads a full sync of `desired` would write now, per family, without writing
    /// them (`svcroute apply --dry-run`). Reads the kernel.
    pub fn plan_full(
        &mut self,
        desired: &Desired,
    ) -> Result<Vec<(IpFamily, String)>, DataplaneError> {
        let mut out = Vec::new();
        for family in IpFamily::ALL {
            let handled = desired.config().handles(family);
            let existing = match self.read_kernel(family) {
                Ok(existing) => existing,
                Err(_) if !handled => continue,
                Err(e) => return Err(e),
            };
            let payload = if handled {
                desired_state(desired, family).full_payload(&existing, self.nft_workaround())
            } else {
                FamilyState::cleanup_payload(&existing)
            };
            if !payload.is_empty() {
                out.push((family, payload));
            }
        }
        Ok(out)
    }

    fn restore(
        &mut self,
        operation: &str,
        family: IpFamily,
        payload: &str,
        report: &mut ApplyReport,
    ) -> Result<(), DataplaneError> {
        if payload.is_empty() {
            return Ok(());
        }
        report.writes += 1;
        report.bytes += payload.len();
        self.kernel.restore(family, payload).map_err(|e| {
            self.needs_full_sync = true;
            kernel_error(operation, e)
        })
    }

    fn full(&mut self, desired: &Desired) -> Result<ApplyReport, DataplaneError> {
        let mut report = ApplyReport::default();
        let mut families = BTreeMap::new();
        for family in IpFamily::ALL {
            let handled = desired.config().handles(family);
            let existing = match self.read_kernel(family) {
                Ok(existing) => existing,
                // A family we do not program may lack its tools (no ip6tables): nothing of
                // ours can be there to remove.
                Err(_) if !handled => continue,
                Err(e) => {
                    self.needs_full_sync = true;
                    return Err(e);
                }
            };
            if handled {
                let state = desired_state(desired, family);
                let payload = state.full_payload(&existing, self.nft_workaround());
                self.restore("sync_full", family, &payload, &mut report)?;
                families.insert(family, Programmed::new(state));
            } else {
                let payload = FamilyState::cleanup_payload(&existing);
                self.restore("sync_full", family, &payload, &mut report)?;
            }
        }
        report.service_ports = desired.len();
        self.shadow = Shadow {
            config: Some(desired.config_arc().clone()),
            families,
        };
        self.needs_full_sync = false;
        Ok(report)
    }

    fn incremental(&mut self, changes: &ChangeSet) -> Result<ApplyReport, DataplaneError> {
        let Some(config) = self.shadow.config.clone() else {
            return Err(DataplaneError::OutOfSync {
                backend: BACKEND,
                message: "apply before any full sync".to_string(),
            });
        };
        let mut plans = Vec::new();
        for (family, programmed) in &self.shadow.families {
            let updates = changes
                .changes()
                .iter()
                .map(|c| {
                    let rules = c
                        .current
                        .as_ref()
                        .and_then(|p| render::port_rules(&config, p, *family));
                    (c.name.clone(), rules)
                })
                .collect();
            plans.push((
                *family,
                programmed.state.plan(updates, self.nft_workaround()),
            ));
        }
        let mut report = ApplyReport::default();
        for (family, plan) in &plans {
            self.restore("apply", *family, &plan.payload, &mut report)?;
        }
        report.service_ports = changes.len();
        // Every write succeeded: the shadow follows.
        for (family, plan) in plans {
            if let Some(programmed) = self.shadow.families.get_mut(&family) {
                let touched = !plan.payload.is_empty();
                programmed.state.commit(plan);
                if touched {
                    programmed.tracer = OnceLock::new();
                }
            }
        }
        self.clean_conntrack(changes);
        Ok(report)
    }

    fn clean_conntrack(&mut self, changes: &ChangeSet) {
        let stale = stale_flows_per_family(changes, self.shadow.families.keys().copied());
        self.conntrack_error = stale
            .iter()
            .filter_map(|(family, flows)| self.kernel.delete_conntrack(*family, flows).err())
            .last()
            .map(|e| e.to_string());
    }
}

#[async_trait]
impl Dataplane for IptablesDataplane {
    fn capabilities(&self) -> Capabilities {
        Capabilities::full(BACKEND)
    }

    async fn apply(
        &mut self,
        desired: &Desired,
        changes: &ChangeSet,
    ) -> Result<ApplyReport, DataplaneError> {
        let programmed = self.shadow.config.as_deref();
        match SyncKind::for_apply(changes, desired, self.needs_full_sync, programmed) {
            SyncKind::Nothing => Ok(ApplyReport::default()),
            SyncKind::Full => self.full(desired),
            SyncKind::Incremental => self.incremental(changes),
        }
    }

    async fn sync_full(&mut self, desired: &Desired) -> Result<ApplyReport, DataplaneError> {
        self.full(desired)
    }

    async fn cleanup(&mut self) -> Result<(), DataplaneError> {
        // Both families are attempted even when one fails (say, no ip6tables here); the
        // first failure is returned.
        let mut report = ApplyReport::default();
        let mut first_error = None;
        for family in IpFamily::ALL {
            let result = self.read_kernel(family).and_then(|existing| {
                let payload = FamilyState::cleanup_payload(&existing);
                self.restore("cleanup", family, &payload, &mut report)
            });
            if let Err(e) = result {
                first_error.get_or_insert(e);
            }
        }
        if let Some(e) = first_error {
            self.needs_full_sync = true;
            return Err(e);
        }
        self.shadow = Shadow::default();
        self.needs_full_sync = false;
        Ok(())
    }

    fn trace(&self, packet: &Packet) -> Result<Decision, TraceError> {
        if packet.is_mixed_family() {
            return Ok(Decision::simple(Verdict::NoMatch));
        }
        let (Some(config), Some(programmed)) = (
            self.shadow.config.as_deref(),
            self.shadow.families.get(&IpFamily::of(&packet.destination)),
        ) else {
            return Ok(Decision::simple(Verdict::NoMatch));
        };
        let tracer = programmed
            .tracer
            .get_or_init(|| Tracer::new(&programmed.state.ruleset()));
        match tracer {
            Ok(tracer) => tracer.trace(config, packet),
            Err(e) => Err(e.clone()),
        }
    }
}
