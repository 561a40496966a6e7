//! The errors that stop a run, and the exit status each one maps to.

use std::io;

use svcroute_core::dataplane::DataplaneError;
use svcroute_core::model::ValidationError;
use thiserror::Error;

/// Exit status: the run completed but found problems (`--strict` rejections, backend
/// disagreement, packets that could not be traced).
pub const EXIT_PROBLEMS: u8 = 1;
/// Exit status: invalid usage, settings or unreadable input.
pub const EXIT_USAGE: u8 = 2;

/// Anything that stops `svcroute` before it has done its job.
#[derive(Debug, Error)]
pub enum CliError {
    /// A file or stdin could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file (`<stdin>` for standard input).
        path: String,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// A file is not valid YAML or JSON.
    #[error("{path}{}: cannot parse: {message}", document.map(|d| format!(": document {d}")).unwrap_or_default())]
    Parse {
        /// The file (`<stdin>` for standard input).
        path: String,
        /// The 1-based document that failed, when it could be told.
        document: Option<usize>,
        /// What the parser said.
        message: String,
    },
    /// A `--config` file holds an invalid setting.
    #[error("config {path}: {key}: {message}")]
    Config {
        /// The config file.
        path: String,
        /// The key, as a path (`iptables.masqueradeBit`, `nodeIPs[1]`).
        key: String,
        /// What is wrong.
        message: String,
    },
    /// The settings, once merged, are invalid.
    #[error("{error} (set by {hint})")]
    Settings {
        /// The core's verdict on the settings.
        error: Box<ValidationError>,
        /// Which flag or config key sets the field.
        hint: String,
    },
    /// The command line is invalid in a way clap cannot check.
    #[error("{0}")]
    Usage(String),
    /// A backend failed to program its state before tracing.
    #[error("backend {backend}: {source}")]
    Backend {
        /// The backend.
        backend: &'static str,
        /// Its error.
        #[source]
        source: DataplaneError,
    },
    /// The async runtime a backend needs could not start.
    #[error("cannot start the runtime for backend {backend}: {source}")]
    Runtime {
        /// The backend.
        backend: &'static str,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// This node's kernel could not be read or programmed (`apply`, `cleanup`), or its
    /// iptables flavour could not be told (`--iptables-mode auto`).
    #[error("{action}: {source}{hint}")]
    Kernel {
        /// What svcroute was doing (`apply --backend iptables`, `cleanup --backend nft`).
        action: &'static str,
        /// The backend's or tool's error (it quotes the tool's stderr).
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
        /// A likely cure, or empty ([`kernel_hint`]).
        hint: &'static str,
    },
    /// Writing the output failed.
    #[error("cannot write output: {0}")]
    Output(#[source] io::Error),
}

/// The tools a backend drives to read and program the kernel, for [`kernel_hint`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelTool {
    /// `iptables-save`, `iptables-restore` and their IPv6 and mode flavours.
    Iptables,
    /// `nft`.
    Nft,
}

/// A likely cure for a failure of `tool`, from its message: ` (run as root ...)` when the
/// tool was denied, ` (is iptables installed?)` or ` (is nft installed?)` when it was not
/// found; otherwise empty.
pub fn kernel_hint(tool: KernelTool, message: &str) -> &'static str {
    let message = message.to_lowercase();
    let denied = message.contains("permission denied")
        || message.contains("must be root")
        || message.contains("operation not permitted");
    match tool {
        KernelTool::Iptables if denied => {
            " (run svcroute as root: reading and writing iptables rules needs CAP_NET_ADMIN)"
        }
        KernelTool::Iptables if message.contains("no such file or directory") => {
            " (is iptables installed?)"
        }
        KernelTool::Nft if denied => {
            " (run svcroute as root: reading and writing nftables tables needs CAP_NET_ADMIN)"
        }
        // Only the tool itself missing: nft reports a missing table or kernel feature as
        // `Error: No such file or directory` too.
        KernelTool::Nft
            if message.contains("no such file or directory (os error 2)")
                || message.contains("exec of \"nft\" failed") =>
        {
            " (is nft installed?)"
        }
        _ => "",
    }
}

impl CliError {
    /// The process exit status this error maps to.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Backend { .. }
            | CliError::Runtime { .. }
            | CliError::Kernel { .. }
            | CliError::Output(_) => EXIT_PROBLEMS,
            _ => EXIT_USAGE,
        }
    }

    /// A failure of `tool` while doing `action`, with its [`kernel_hint`].
    pub fn kernel(
        tool: KernelTool,
        action: &'static str,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        let hint = kernel_hint(tool, &source.to_string());
        CliError::Kernel {
            action,
            source: Box::new(source),
            hint,
        }
    }

    /// Whether the error is a closed pipe on stdout (`svcroute plan | head`), which ends the
    /// run quietly.
    pub fn is_broken_pipe(&self) -> bool {
        matches!(self, CliError::Output(e) if e.kind() == io::ErrorKind::BrokenPipe)
    }
}

impl From<io::Error> for CliError {
    /// Only output errors are converted implicitly; reads name their file.
    fn from(e: io::Error) -> Self {
        CliError::Output(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_errors_suggest_a_cure() {
        let denied = io::Error::new(
            io::ErrorKind::PermissionDenied,
            "iptables-save v1.8.9 (nf_tables): Could not fetch rule set generation id: \
             Permission denied (you must be root)",
        );
        let e = CliError::kernel(KernelTool::Iptables, "apply --backend iptables", denied);
        assert_eq!(e.exit_code(), EXIT_PROBLEMS);
        let text = e.to_string();
        assert!(
            text.starts_with("apply --backend iptables: iptables-save"),
            "{text}"
        );
        assert!(text.ends_with("needs CAP_NET_ADMIN)"), "{text}");
        assert_eq!(
            kernel_hint(KernelTool::Iptables, "iptables-restore: line 3 failed"),
            ""
        );
        assert_eq!(
            kernel_hint(
                KernelTool::Iptables,
                "iptables-nft-save: No such file or directory (os error 2)"
            ),
            " (is iptables installed?)"
        );
    }

    #[test]
    fn nft_errors_suggest_a_cure() {
        let denied = "nft: nft -f (full sync): nft -f - failed: exit status: 1: Error: Could \
                      not process rule: Operation not permitted";
        assert!(
            kernel_hint(KernelTool::Nft, denied).contains("nftables tables needs CAP_NET_ADMIN")
        );
        assert_eq!(
            kernel_hint(
                KernelTool::Nft,
                "nft: nft -f (full sync): nft -f -: No such file or directory (os error 2)"
            ),
            " (is nft installed?)"
        );
        assert_eq!(
            kernel_hint(
                KernelTool::Nft,
                "ip netns exec ns nft -f - exited with exit status: 255: exec of \"nft\" \
                 failed: No such file or directory"
            ),
            " (is nft installed?)"
        );
        // nft's own ENOENT (a missing table or kernel feature) is no missing tool.
        assert_eq!(
            kernel_hint(
                KernelTool::Nft,
                "nft -f - exited with exit status: 1: Error: Could not process rule: No such \
                 file or directory"
            ),
            ""
        );
    }
}
