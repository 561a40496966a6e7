//! `svcroute apply` and `svcroute cleanup`: programming this node's kernel (root needed).
//!
//! `apply` is one full sync (`Dataplane::sync_full`): it reads the rules the kernel holds,
//! then writes one payload per family that makes our chains exactly the objects' routing,
//! deletes chains we own but no longer want and removes the rules of families the settings do
//! not handle. `--dry-run` prints those payloads instead. `cleanup` is `Dataplane::cleanup`:
//! every chain svcroute owns (kube-proxy's names) and every hook jumping to one is removed.

use std::io::Write;

use serde::Serialize;
use svcroute_core::Desired;
use svcroute_core::dataplane::Dataplane;
use svcroute_iptables::IptablesDataplane;
use svcroute_iptables::kernel::{IptablesMode, SystemKernel};

use crate::args::{ApplyArgs, CleanupArgs, IptablesModeArg, OutputFormat, RulesBackend};
use crate::backend::runtime;
use crate::error::CliError;
use crate::output::write_json_pretty;
use crate::render;

/// What `apply` or `cleanup` did, as `-o json` prints it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    /// `apply` or `cleanup`.
    pub action: &'static str,
    /// The backend (`iptables`).
    pub backend: &'static str,
    /// The tools' flavour: `nft` or `legacy`.
    pub mode: &'static str,
    /// Restore calls (`apply` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub writes: Option<usize>,
    /// Bytes written (`apply` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes: Option<usize>,
    /// Service ports programmed (`apply` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service_ports: Option<usize>,
}

/// The kernel handle for `--iptables-mode` (`auto`: the system `iptables`' flavour).
pub fn system_kernel(mode: IptablesModeArg) -> Result<SystemKernel, CliError> {
    Ok(match mode {
        IptablesModeArg::Auto => SystemKernel::detect()
            .map_err(|e| CliError::kernel("detect the iptables mode (iptables --version)", e))?,
        IptablesModeArg::Nft => SystemKernel::new(IptablesMode::Nft),
        IptablesModeArg::Legacy => SystemKernel::new(IptablesMode::Legacy),
    })
}

/// The dataplane on this node's kernel for `backend`, and the tools' flavour.
fn open(
    backend: RulesBackend,
    mode: IptablesModeArg,
) -> Result<(IptablesDataplane, IptablesMode), CliError> {
    // The only backend that programs a kernel so far.
    match backend {
        RulesBackend::Iptables => {}
    }
    let kernel = system_kernel(mode)?;
    let mode = kernel.mode();
    Ok((IptablesDataplane::new(Box::new(kernel)), mode))
}

/// `svcroute apply`: programs `desired` (or, with `--dry-run`, prints what would be written).
pub fn apply(
    out: &mut dyn Write,
    format: OutputFormat,
    desired: &Desired,
    args: &ApplyArgs,
) -> Result<(), CliError> {
    let (mut dataplane, mode) = open(args.backend, args.iptables_mode)?;
    if args.dry_run {
        let planned = dataplane
            .plan_full(desired)
            .map_err(|e| CliError::kernel("apply --dry-run --backend iptables", e))?;
        render::write(out, format, &render::payloads(planned, Some(mode)))?;
        return Ok(());
    }
    let written = runtime("iptables")?
        .block_on(dataplane.sync_full(desired))
        .map_err(|e| CliError::kernel("apply --backend iptables", e))?;
    match format {
        OutputFormat::Json => write_json_pretty(
            out,
            &Report {
                action: "apply",
                backend: "iptables",
                mode: mode.as_str(),
                writes: Some(written.writes),
                bytes: Some(written.bytes),
                service_ports: Some(written.service_ports),
            },
        )?,
        OutputFormat::Text => writeln!(
            out,
            "iptables ({}): programmed {} service port(s): {} write(s), {} bytes",
            mode.as_str(),
            written.service_ports,
            written.writes,
            written.bytes
        )?,
    }
    Ok(())
}

/// `svcroute cleanup`: removes every chain svcroute owns, and the hooks to them.
pub fn cleanup(
    out: &mut dyn Write,
    format: OutputFormat,
    args: &CleanupArgs,
) -> Result<(), CliError> {
    let (mut dataplane, mode) = open(args.backend, args.iptables_mode)?;
    runtime("iptables")?
        .block_on(dataplane.cleanup())
        .map_err(|e| CliError::kernel("cleanup --backend iptables", e))?;
    match format {
        OutputFormat::Json => write_json_pretty(
            out,
            &Report {
                action: "cleanup",
                backend: "iptables",
                mode: mode.as_str(),
                writes: None,
                bytes: None,
                service_ports: None,
            },
        )?,
        OutputFormat::Text => writeln!(
            out,
            "iptables ({}): removed every svcroute chain and the rules jumping to them",
            mode.as_str()
        )?,
    }
    Ok(())
}
