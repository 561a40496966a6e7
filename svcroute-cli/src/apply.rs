//! `svcroute apply` and `svcroute cleanup`: programming this node's kernel (root needed).
//!
//! `apply` is one full sync (`Dataplane::sync_full`).
//!
//! - iptables: it reads the rules the kernel holds, then writes one payload per family that
//!   makes our chains exactly the objects' routing, deletes chains we own but no longer want
//!   and removes the rules of families the settings do not handle. `--dry-run` prints those
//!   payloads instead.
//! - nft: one atomic `nft -f -` transaction replaces svcroute's tables of each family (the
//!   common table `ip svcroute` and its shards `ip svcroute-0`, ...) with the objects'
//!   routing, and deletes our tables of a family the settings do not handle and shards no
//!   longer needed; nothing outside those tables is touched. `--dry-run` prints the
//!   transaction without reading the kernel (it then deletes only the tables it writes and
//!   the common tables).
//!
//! `cleanup` is `Dataplane::cleanup`: with iptables, every chain svcroute owns (kube-proxy's
//! names) and every hook jumping to one is removed; with nft, svcroute's tables.

use std::io::Write;

use serde::Serialize;
use svcroute_core::Desired;
use svcroute_core::dataplane::{ApplyReport, Dataplane};
use svcroute_iptables::IptablesDataplane;
use svcroute_iptables::kernel::{IptablesMode, SystemKernel};
use svcroute_nft::NftDataplane;

use crate::args::{ApplyArgs, CleanupArgs, IptablesModeArg, OutputFormat, RulesBackend};
use crate::backend::runtime;
use crate::error::{CliError, KernelTool};
use crate::output::write_json_pretty;
use crate::render;

/// What `apply` or `cleanup` did, as `-o json` prints it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    /// `apply` or `cleanup`.
    pub action: &'static str,
    /// The backend (`iptables`, `nft`).
    pub backend: &'static str,
    /// The iptables tools' flavour, `nft` or `legacy` (iptables only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<&'static str>,
    /// Restore calls or nft transactions (`apply` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub writes: Option<usize>,
    /// Bytes written (`apply` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes: Option<usize>,
    /// Service ports programmed (`apply` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service_ports: Option<usize>,
}

impl Report {
    /// The report of an `apply` that wrote `written`.
    fn applied(backend: RulesBackend, mode: Option<&'static str>, written: &ApplyReport) -> Self {
        Report {
            action: "apply",
            backend: backend.name(),
            mode,
            writes: Some(written.writes),
            bytes: Some(written.bytes),
            service_ports: Some(written.service_ports),
        }
    }

    /// The report of a `cleanup`.
    fn cleaned(backend: RulesBackend, mode: Option<&'static str>) -> Self {
        Report {
            action: "cleanup",
            backend: backend.name(),
            mode,
            writes: None,
            bytes: None,
            service_ports: None,
        }
    }

    /// `iptables (nft)` or `nft`: who did it, as the text lines start.
    fn who(&self) -> String {
        match self.mode {
            Some(mode) => format!("{} ({mode})", self.backend),
            None => self.backend.to_string(),
        }
    }

    /// Writes the report as JSON, or as the one line of text `what` gives.
    fn write(
        &self,
        out: &mut dyn Write,
        format: OutputFormat,
        what: impl FnOnce(&Report) -> String,
    ) -> Result<(), CliError> {
        match format {
            OutputFormat::Json => write_json_pretty(out, self)?,
            OutputFormat::Text => writeln!(out, "{}: {}", self.who(), what(self))?,
        }
        Ok(())
    }
}

/// The `apply` line: `programmed N service port(s): W write(s), B bytes`.
fn programmed_text(report: &Report) -> String {
    format!(
        "programmed {} service port(s): {} write(s), {} bytes",
        report.service_ports.unwrap_or_default(),
        report.writes.unwrap_or_default(),
        report.bytes.unwrap_or_default()
    )
}

/// The kernel handle for `--iptables-mode` (`auto`: the system `iptables`' flavour).
pub fn system_kernel(mode: IptablesModeArg) -> Result<SystemKernel, CliError> {
    Ok(match mode {
        IptablesModeArg::Auto => SystemKernel::detect().map_err(|e| {
            CliError::kernel(
                KernelTool::Iptables,
                "detect the iptables mode (iptables --version)",
                e,
            )
        })?,
        IptablesModeArg::Nft => SystemKernel::new(IptablesMode::Nft),
        IptablesModeArg::Legacy => SystemKernel::new(IptablesMode::Legacy),
    })
}

/// The iptables dataplane on this node's kernel, and the tools' flavour.
fn open_iptables(mode: IptablesModeArg) -> Result<(IptablesDataplane, IptablesMode), CliError> {
    let kernel = system_kernel(mode)?;
    let mode = kernel.mode();
    Ok((IptablesDataplane::new(Box::new(kernel)), mode))
}

/// The nftables dataplane on this node's kernel.
fn open_nft() -> NftDataplane {
    NftDataplane::new(Box::new(svcroute_nft::SystemKernel::new()))
}

/// `svcroute apply`: programs `desired` (or, with `--dry-run`, prints what would be written).
pub fn apply(
    out: &mut dyn Write,
    format: OutputFormat,
    desired: &Desired,
    args: &ApplyArgs,
) -> Result<(), CliError> {
    match args.backend {
        RulesBackend::Iptables => {
            let (mut dataplane, mode) = open_iptables(args.iptables_mode.unwrap_or_default())?;
            if args.dry_run {
                let planned = dataplane.plan_full(desired).map_err(|e| {
                    CliError::kernel(
                        KernelTool::Iptables,
                        "apply --dry-run --backend iptables",
                        e,
                    )
                })?;
                render::write(out, format, &render::payloads(planned, Some(mode)))?;
                return Ok(());
            }
            let written = runtime("iptables")?
                .block_on(dataplane.sync_full(desired))
                .map_err(|e| {
                    CliError::kernel(KernelTool::Iptables, "apply --backend iptables", e)
                })?;
            Report::applied(args.backend, Some(mode.as_str()), &written).write(
                out,
                format,
                programmed_text,
            )
        }
        RulesBackend::Nft => {
            if args.dry_run {
                let tx = svcroute_nft::apply::render_full(desired, &Default::default());
                render::write(out, format, &render::nft_payload(&tx))?;
                return Ok(());
            }
            let written = runtime("nft")?
                .block_on(open_nft().sync_full(desired))
                .map_err(|e| CliError::kernel(KernelTool::Nft, "apply --backend nft", e))?;
            Report::applied(args.backend, None, &written).write(out, format, programmed_text)
        }
    }
}

/// `svcroute cleanup`: removes every chain (iptables) or table (nft) svcroute owns.
pub fn cleanup(
    out: &mut dyn Write,
    format: OutputFormat,
    args: &CleanupArgs,
) -> Result<(), CliError> {
    match args.backend {
        RulesBackend::Iptables => {
            let (mut dataplane, mode) = open_iptables(args.iptables_mode.unwrap_or_default())?;
            runtime("iptables")?
                .block_on(dataplane.cleanup())
                .map_err(|e| {
                    CliError::kernel(KernelTool::Iptables, "cleanup --backend iptables", e)
                })?;
            Report::cleaned(args.backend, Some(mode.as_str())).write(out, format, |_| {
                "removed every svcroute chain and the rules jumping to them".to_string()
            })
        }
        RulesBackend::Nft => {
            runtime("nft")?
                .block_on(open_nft().cleanup())
                .map_err(|e| CliError::kernel(KernelTool::Nft, "cleanup --backend nft", e))?;
            Report::cleaned(args.backend, None)
                .write(out, format, |_| "removed the svcroute tables".to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_name_the_iptables_mode_only() {
        let written = ApplyReport {
            writes: 1,
            bytes: 20,
            service_ports: 3,
        };
        let nft = Report::applied(RulesBackend::Nft, None, &written);
        let mut text = Vec::new();
        nft.write(&mut text, OutputFormat::Text, programmed_text)
            .unwrap();
        assert_eq!(
            String::from_utf8(text).unwrap(),
            "nft: programmed 3 service port(s): 1 write(s), 20 bytes\n"
        );
        assert_eq!(
            serde_json::to_value(&nft).unwrap(),
            serde_json::json!({"action": "apply", "backend": "nft", "writes": 1, "bytes": 20,
                               "service_ports": 3})
        );
        let iptables = Report::cleaned(RulesBackend::Iptables, Some("legacy"));
        assert_eq!(iptables.who(), "iptables (legacy)");
        assert_eq!(
            serde_json::to_value(&iptables).unwrap(),
            serde_json::json!({"action": "cleanup", "backend": "iptables", "mode": "legacy"})
        );
    }
}
