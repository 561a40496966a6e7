//! Running commands, on the host or inside a namespace (`ip netns exec NS ...`). A command
//! that fails makes the test fail with its stderr, except through
//! [`try_run_in_with_input`].

use std::io::Write as _;
use std::process::{Command, Stdio};

/// Runs a command; panics with its stderr when it fails. Returns stdout.
pub fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        out.status.success(),
        "`{program} {}` failed ({}): {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a command inside a namespace; panics with its stderr when it fails. Returns stdout.
pub fn run_in(ns: &str, program: &str, args: &[&str]) -> String {
    let mut full = vec!["netns", "exec", ns, program];
    full.extend_from_slice(args);
    run("ip", &full)
}

/// Runs a command inside a namespace, feeding `input` on stdin; panics with its stderr when it
/// fails. Returns stdout.
pub fn run_in_with_input(ns: &str, program: &str, args: &[&str], input: &str) -> String {
    try_run_in_with_input(ns, program, args, input)
        .unwrap_or_else(|stderr| panic!("`{program} {}` in {ns} failed: {stderr}", args.join(" ")))
}

/// Runs a command inside a namespace, feeding `input` on stdin: its stdout when it succeeds,
/// its exit status and stderr when it fails (to check that something is refused).
pub fn try_run_in_with_input(
    ns: &str,
    program: &str,
    args: &[&str],
    input: &str,
) -> Result<String, String> {
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, program])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    let mut stdin = child.stdin.take().expect("stdin is piped");
    let input = input.to_string();
    // Written from a thread while the output is drained: large inputs cannot deadlock.
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let out = child.wait_with_output().expect("wait");
    // A write error means the program exited early; its status says why.
    let _ = writer.join();
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Runs `ip -n NS COMMAND` (COMMAND split at spaces).
pub(crate) fn ip(ns: &str, command: &str) {
    let mut args = vec!["-n", ns];
    args.extend(command.split_whitespace());
    run("ip", &args);
}

/// Sets `key=value` sysctls (separated by spaces) inside a namespace.
pub(crate) fn sysctl(ns: &str, settings: &str) {
    let mut args = vec!["-qw"];
    args.extend(settings.split_whitespace());
    run_in(ns, "sysctl", &args);
}
