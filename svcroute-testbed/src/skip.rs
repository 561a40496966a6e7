//! What a backend's kernel tests need, and the skip policy: without root, a tool, or the right
//! to create network namespaces, each test prints a loud SKIPPED and passes; with
//! `SVCROUTE_REQUIRE_KERNEL_TESTS=1` it fails instead (CI on a root runner).

use std::process::Command;
use std::sync::OnceLock;

use crate::topology::unique_prefix;

/// The tools the test bed itself runs, whatever the backend.
const TESTBED_TOOLS: &[&str] = &["ip", "python3"];

/// A backend under test: its tools and what its node needs. Declare one `static` per test
/// binary (it remembers whether its tests can run here).
///
/// ```
/// use svcroute_testbed::Backend;
///
/// static NFT: Backend = Backend::new("nft", &["nft", "conntrack"], "");
/// assert_eq!(NFT.tools(), ["ip", "python3", "nft", "conntrack"]);
/// ```
#[derive(Debug)]
pub struct Backend {
    name: &'static str,
    tools: &'static [&'static str],
    node_sysctls: &'static str,
    reason: OnceLock<Option<String>>,
}

impl Backend {
    /// The backend `name`, whose tests run `tools` (found on `PATH`) besides `ip` and
    /// `python3`, and whose node namespace gets `node_sysctls` (`key=value` separated by
    /// spaces; may be empty) on top of forwarding, as its proxy would set them.
    pub const fn new(
        name: &'static str,
        tools: &'static [&'static str],
        node_sysctls: &'static str,
    ) -> Self {
        Backend {
            name,
            tools,
            node_sysctls,
            reason: OnceLock::new(),
        }
    }

    /// The backend's name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Every tool its tests need: the test bed's, then the backend's.
    pub fn tools(&self) -> Vec<&'static str> {
        TESTBED_TOOLS.iter().chain(self.tools).copied().collect()
    }

    /// The sysctls its node namespace gets.
    pub fn node_sysctls(&self) -> &'static str {
        self.node_sysctls
    }

    /// Whether `test` must be skipped; says so loudly on stderr. Panics instead when
    /// `SVCROUTE_REQUIRE_KERNEL_TESTS` is set.
    pub fn skip(&self, test: &str) -> bool {
        let Some(reason) = self.reason.get_or_init(|| self.why_skip()) else {
            return false;
        };
        if std::env::var_os("SVCROUTE_REQUIRE_KERNEL_TESTS").is_some() {
            panic!("{} kernel test {test} cannot run: {reason}", self.name);
        }
        eprintln!(
            "\n########## SKIPPED {} kernel test `{test}`: {reason}. These tests need root, {}. \
             ##########\n",
            self.name,
            self.tools().join(", ")
        );
        true
    }

    /// Why kernel tests cannot run here; `None` when they can.
    fn why_skip(&self) -> Option<String> {
        if !is_root() {
            return Some("not running as root".to_string());
        }
        let missing: Vec<&str> = self.tools().into_iter().filter(|t| !on_path(t)).collect();
        if !missing.is_empty() {
            return Some(format!("missing tools: {}", missing.join(", ")));
        }
        // Root inside an unprivileged container cannot create namespaces.
        let probe = format!("{}-probe", unique_prefix());
        match Command::new("ip").args(["netns", "add", &probe]).output() {
            Ok(out) if out.status.success() => {
                let _ = Command::new("ip").args(["netns", "del", &probe]).output();
                None
            }
            Ok(out) => Some(format!(
                "cannot create a network namespace: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )),
            Err(e) => Some(format!("cannot run ip: {e}")),
        }
    }
}

/// Whether the effective user is root.
fn is_root() -> bool {
    // "Uid: real effective saved fs"
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|uid| uid == "0"))
        })
        .unwrap_or(false)
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(tool).is_file()))
}
