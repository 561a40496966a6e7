//! `trace --backend iptables --live`: packets traced through the rules this node's kernel
//! holds now, not through rules rendered from the objects.
//!
//! The rules of a family are read (`iptables-save`), parsed and compiled into a tracer the
//! first time a packet of that family is traced, then reused: every packet of a run sees the
//! same snapshot. A family that cannot be read fails its packets (exit status 1), not the run.

use std::sync::OnceLock;

use svcroute_core::model::{IpFamily, ProxyConfig};
use svcroute_core::{Decision, Packet, Verdict};
use svcroute_iptables::SystemKernel;
use svcroute_iptables::kernel::Kernel;
use svcroute_iptables::parse::parse_save;
use svcroute_iptables::trace::Tracer as RulesTracer;

use crate::backend::{Backend, BackendKind, TraceFailure, Tracer};
use crate::error::kernel_hint;
use crate::render::tool;

/// The `iptables` backend answering from this node's kernel, with the settings' `config` (its
/// node IPs are what `-m addrtype --dst-type LOCAL` matches).
pub fn open(kernel: SystemKernel, config: &ProxyConfig) -> Backend<'_> {
    Backend::new(
        BackendKind::Iptables,
        Box::new(LiveRules {
            kernel,
            config,
            ipv4: OnceLock::new(),
            ipv6: OnceLock::new(),
        }),
    )
}

/// The kernel's rules, read per family on first use.
struct LiveRules<'a> {
    kernel: SystemKernel,
    config: &'a ProxyConfig,
    ipv4: OnceLock<Result<RulesTracer, TraceFailure>>,
    ipv6: OnceLock<Result<RulesTracer, TraceFailure>>,
}

impl LiveRules<'_> {
    /// Reads, parses and compiles the rules of `family`.
    fn load(&self, family: IpFamily) -> Result<RulesTracer, TraceFailure> {
        // `save` needs `&mut`; the kernel handle is only a tool name and options.
        let mut kernel = self.kernel.clone();
        let text = kernel.save(family).map_err(|e| {
            let message = e.to_string();
            TraceFailure::Rules(format!(
                "cannot read this node's {family} rules: {message}{}",
                kernel_hint(&message)
            ))
        })?;
        let ruleset = parse_save(&text).map_err(|e| {
            TraceFailure::Rules(format!(
                "cannot parse this node's {family} rules ({} output): {e}",
                tool(family, Some(kernel.mode()), "save")
            ))
        })?;
        Ok(RulesTracer::new(&ruleset)?)
    }
}

impl Tracer for LiveRules<'_> {
    fn trace(&self, packet: &Packet) -> Result<Decision, TraceFailure> {
        if packet.is_mixed_family() {
            return Ok(Decision::simple(Verdict::NoMatch));
        }
        let family = IpFamily::of(&packet.destination);
        let slot = match family {
            IpFamily::IPv4 => &self.ipv4,
            IpFamily::IPv6 => &self.ipv6,
        };
        match slot.get_or_init(|| self.load(family)) {
            Ok(tracer) => Ok(tracer.trace(self.config, packet)?),
            Err(e) => Err(e.clone()),
        }
    }
}
