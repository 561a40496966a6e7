//! `trace --backend iptables|nft --live`: packets traced through the rules this node's kernel
//! holds now, not through rules rendered from the objects.
//!
//! The rules of a family are read the first time a packet of that family is traced, then
//! reused: every packet of a run sees the same snapshot. A family that cannot be read fails
//! its packets (exit status 1), not the run.
//!
//! - iptables ([`open`]): `iptables-save`, parsed and compiled into a tracer.
//! - nft ([`open_nft`]): svcroute's tables of the family (the common table `svcroute` and its
//!   shards `svcroute-N`, each read with `nft -j list table`), traced with
//!   `svcroute_nft::trace::trace`; no table means no match.

use std::sync::OnceLock;

use svcroute_core::model::{IpFamily, ProxyConfig};
use svcroute_core::{Decision, Packet, Verdict};
use svcroute_iptables::SystemKernel;
use svcroute_iptables::kernel::Kernel;
use svcroute_iptables::parse::parse_save;
use svcroute_iptables::trace::Tracer as RulesTracer;
use svcroute_nft::kernel::list_ours;
use svcroute_nft::ruleset::{Table, family_name};
use svcroute_nft::{SystemKernel as NftKernel, names};

use crate::backend::{Backend, BackendKind, TraceFailure, Tracer};
use crate::error::{KernelTool, kernel_hint};
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
                kernel_hint(KernelTool::Iptables, &message)
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

/// The `nft` backend answering from svcroute's tables in this node's kernel, with the
/// settings' `config` (its node IPs are what `fib daddr type local` matches).
pub fn open_nft(kernel: NftKernel, config: &ProxyConfig) -> Backend<'_> {
    Backend::new(
        BackendKind::Nft,
        Box::new(LiveTables {
            kernel,
            config,
            ipv4: OnceLock::new(),
            ipv6: OnceLock::new(),
        }),
    )
}

/// svcroute's nftables tables in the kernel, read per family on first use (none: the family
/// has no table).
struct LiveTables<'a> {
    kernel: NftKernel,
    config: &'a ProxyConfig,
    ipv4: OnceLock<Result<Vec<Table>, TraceFailure>>,
    ipv6: OnceLock<Result<Vec<Table>, TraceFailure>>,
}

impl LiveTables<'_> {
    /// Reads our tables of `family`.
    fn load(&self, family: IpFamily) -> Result<Vec<Table>, TraceFailure> {
        // Reading needs `&mut`; the kernel handle is only a namespace name.
        let mut kernel = self.kernel.clone();
        match list_ours(&mut kernel, names::TABLE, family) {
            Ok(tables) => Ok(tables.into_iter().map(|(_, t)| t).collect()),
            Err(e) => {
                let message = e.to_string();
                Err(TraceFailure::Rules(format!(
                    "cannot read this node's tables {} {}*: {message}{}",
                    family_name(family),
                    names::TABLE,
                    kernel_hint(KernelTool::Nft, &message)
                )))
            }
        }
    }
}

impl Tracer for LiveTables<'_> {
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
            Ok(tables) => {
                let tables: Vec<&Table> = tables.iter().collect();
                Ok(svcroute_nft::trace::trace(self.config, &tables, packet)?)
            }
            Err(e) => Err(e.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nft_tables_that_cannot_be_read_fail_their_packets() {
        let config = ProxyConfig::default();
        // The namespace does not exist: `nft` cannot run there.
        let kernel = NftKernel::new().in_netns("svcroute-cli-no-such-namespace");
        let backend = open_nft(kernel, &config);
        assert_eq!(backend.kind, BackendKind::Nft);
        let packet: Packet = "10.0.0.1 10.96.0.1:80/tcp".parse().unwrap();
        let err = backend.trace(&packet).unwrap_err().to_string();
        assert!(
            err.starts_with("cannot read this node's tables ip svcroute*: "),
            "{err}"
        );
        // The failure is remembered: every packet of the family sees the same snapshot.
        assert_eq!(backend.trace(&packet).unwrap_err().to_string(), err);
        let v6: Packet = "fd00::1 [fd00:10:96::1]:80/tcp".parse().unwrap();
        let err6 = backend.trace(&v6).unwrap_err().to_string();
        assert!(
            err6.starts_with("cannot read this node's tables ip6 svcroute*: "),
            "{err6}"
        );
    }
}
