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
        /// What svcroute was doing (`apply --backend iptables`).
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

/// A likely cure for a kernel tool failure, from its message: ` (run as root ...)` when the
/// tool was denied, ` (is iptables installed?)` when it was not found; otherwise empty.
pub fn kernel_hint(message: &str) -> &'static str {
    let message = message.to_lowercase();
    if message.contains("permission denied") || message.contains("must be root") {
        " (run svcroute as root: reading and writing iptables rules needs CAP_NET_ADMIN)"
    } else if message.contains("no such file or directory") {
        " (is iptables installed?)"
    } else {
        ""
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

    /// A kernel failure while doing `action`, with its [`kernel_hint`].
    pub fn kernel(
        action: &'static str,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        let hint = kernel_hint(&source.to_string());
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
        let e = CliError::kernel("apply --backend iptables", denied);
        assert_eq!(e.exit_code(), EXIT_PROBLEMS);
        let text = e.to_string();
        assert!(
            text.starts_with("apply --backend iptables: iptables-save"),
            "{text}"
        );
        assert!(text.ends_with("needs CAP_NET_ADMIN)"), "{text}");
        assert_eq!(kernel_hint("iptables-restore: line 3 failed"), "");
        assert_eq!(
            kernel_hint("iptables-nft-save: No such file or directory (os error 2)"),
            " (is iptables installed?)"
        );
    }
}
