//! The real kernel: `iptables-restore` / `iptables-save` / `conntrack` processes.

use std::io::Write as _;
use std::process::{Command, Stdio};

use svcroute_core::model::IpFamily;

use super::{ConntrackFlows, Kernel, KernelError};

/// Which iptables flavour programs the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IptablesMode {
    /// iptables over nf_tables (`iptables-nft`, Debian's default).
    Nft,
    /// The legacy x_tables interface (`iptables-legacy`).
    Legacy,
}

impl IptablesMode {
    /// `nft` / `legacy`.
    pub fn as_str(self) -> &'static str {
        match self {
            IptablesMode::Nft => "nft",
            IptablesMode::Legacy => "legacy",
        }
    }

    /// Parses `nft` / `legacy`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "nft" => Some(IptablesMode::Nft),
            "legacy" => Some(IptablesMode::Legacy),
            _ => None,
        }
    }

    /// The mode of the system's default `iptables` (what `iptables --version` reports), as
    /// kube-proxy and the iptables-wrapper decide it. Falls back to nft when the version
    /// says neither.
    pub fn detect() -> Result<Self, KernelError> {
        let output = Command::new("iptables")
            .arg("--version")
            .output()
            .map_err(|source| KernelError::Io {
                tool: "iptables --version".to_string(),
                source,
            })?;
        let text = String::from_utf8_lossy(&output.stdout);
        Ok(if text.contains("legacy") {
            IptablesMode::Legacy
        } else {
            IptablesMode::Nft
        })
    }
}

/// Programs this node's kernel through the iptables tools of one mode
/// (`iptables-nft-restore`, `ip6tables-legacy-save`, ...), waiting up to `wait_seconds` for
/// the xtables lock.
#[derive(Debug, Clone)]
pub struct SystemKernel {
    mode: IptablesMode,
    wait_seconds: u32,
    netns: Option<String>,
}

fn tool(family: IpFamily, mode: IptablesMode, verb: &str) -> String {
    let base = match family {
        IpFamily::IPv4 => "iptables",
        IpFamily::IPv6 => "ip6tables",
    };
    format!("{base}-{}-{verb}", mode.as_str())
}

/// Runs `program args`, feeding `stdin`; returns stdout. Output is drained while input is
/// written, so large listings cannot deadlock the pipe.
fn run(program: &str, args: &[&str], stdin: Option<&str>) -> Result<String, KernelError> {
    let name = format!("{program} {}", args.join(" "));
    let io = |source| KernelError::Io {
        tool: name.clone(),
        source,
    };
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(io)?;
    let writer = match (stdin, child.stdin.take()) {
        (Some(input), Some(mut pipe)) => {
            let input = input.to_string();
            Some(std::thread::spawn(move || pipe.write_all(input.as_bytes())))
        }
        _ => None,
    };
    let output = child.wait_with_output().map_err(io)?;
    if let Some(writer) = writer {
        // A write error means the tool exited early; its status says why.
        let _ = writer.join();
    }
    if output.status.success() {
        return Ok(String::from_utf8_lossy(&output.stdout).into_owned());
    }
    let stderr = String::from_utf8_lossy(&output.stderr).trim().to_string();
    let retryable = stderr.contains("xtables lock") || stderr.contains("temporarily unavailable");
    Err(KernelError::Failed {
        tool: name,
        status: output.status.to_string(),
        stderr: stderr.chars().take(2000).collect(),
        retryable,
    })
}

impl SystemKernel {
    /// A kernel driven through `mode`'s tools.
    pub fn new(mode: IptablesMode) -> Self {
        SystemKernel {
            mode,
            wait_seconds: 5,
            netns: None,
        }
    }

    /// Runs every tool inside the named network namespace (`ip netns exec NAME ...`): how
    /// tests and benchmarks program a namespace instead of the host.
    pub fn in_netns(mut self, name: impl Into<String>) -> Self {
        self.netns = Some(name.into());
        self
    }

    /// Runs `program args` here or in the namespace.
    fn run(
        &self,
        program: &str,
        args: &[&str],
        stdin: Option<&str>,
    ) -> Result<String, KernelError> {
        match &self.netns {
            None => run(program, args, stdin),
            Some(ns) => {
                let mut full = vec!["netns", "exec", ns.as_str(), program];
                full.extend_from_slice(args);
                run("ip", &full, stdin)
            }
        }
    }

    /// A kernel driven through the system default's mode ([`IptablesMode::detect`]).
    pub fn detect() -> Result<Self, KernelError> {
        Ok(SystemKernel::new(IptablesMode::detect()?))
    }

    /// The mode in use.
    pub fn mode(&self) -> IptablesMode {
        self.mode
    }

    /// Sets how long to wait for the xtables lock.
    pub fn with_wait_seconds(mut self, seconds: u32) -> Self {
        self.wait_seconds = seconds;
        self
    }
}

impl Kernel for SystemKernel {
    fn restore(&mut self, family: IpFamily, payload: &str) -> Result<(), KernelError> {
        let wait = self.wait_seconds.to_string();
        self.run(
            &tool(family, self.mode, "restore"),
            &["--noflush", "-w", &wait],
            Some(payload),
        )
        .map(|_| ())
    }

    fn save(&mut self, family: IpFamily) -> Result<String, KernelError> {
        let program = tool(family, self.mode, "save");
        let mut out = self.run(&program, &["-t", "filter"], None)?;
        out.push_str(&self.run(&program, &["-t", "nat"], None)?);
        Ok(out)
    }

    fn delete_conntrack(
        &mut self,
        family: IpFamily,
        flows: &[ConntrackFlows],
    ) -> Result<(), KernelError> {
        for flow in flows {
            let args = flow.delete_args(family);
            let refs: Vec<&str> = args.iter().map(String::as_str).collect();
            match self.run("conntrack", &refs, None) {
                Ok(_) => {}
                // conntrack exits 1 when nothing matched: nothing to clean.
                Err(KernelError::Failed { stderr, .. })
                    if stderr.contains("0 flow entries have been deleted") => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn is_nft(&self) -> bool {
        self.mode == IptablesMode::Nft
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tool_names_follow_family_and_mode() {
        assert_eq!(
            tool(IpFamily::IPv4, IptablesMode::Nft, "restore"),
            "iptables-nft-restore"
        );
        assert_eq!(
            tool(IpFamily::IPv6, IptablesMode::Legacy, "save"),
            "ip6tables-legacy-save"
        );
    }

    #[test]
    fn a_missing_tool_is_an_io_error() {
        let err = run("svcroute-no-such-tool", &[], Some("x")).unwrap_err();
        assert!(matches!(err, KernelError::Io { .. }), "{err}");
    }

    #[test]
    fn failures_carry_stderr() {
        let err = run("sh", &["-c", "echo boom >&2; exit 3"], None).unwrap_err();
        assert!(err.to_string().contains("boom"), "{err}");
    }
}
