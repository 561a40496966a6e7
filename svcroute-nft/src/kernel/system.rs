//! The real kernel: `nft` and `conntrack` processes, and nf_tables netlink for the
//! transactions of incremental syncs ([`super::netlink`]).
//!
//! Every tool runs with `LC_ALL=C`, so the error texts matched here are not translated. A tool
//! that cannot be started is [`KernelError::Io`] (its [`std::io::ErrorKind`] kept: `NotFound`
//! means the tool is not installed); one that exits non-zero is [`KernelError::Failed`] with
//! the first 4 KiB of its stderr. In a network namespace the command is `ip netns exec NAME
//! TOOL ...`: a missing tool is then a failure of `ip` (`exec of "nft" failed`), not an I/O
//! error.

use std::io::Write as _;
use std::process::{Command, Stdio};

use svcroute_core::conntrack::ConntrackFlows;
use svcroute_core::model::IpFamily;

use super::netlink::{KnownSets, Session};
use super::{Kernel, KernelError};
use crate::ruleset::{Table, family_name};
use crate::transaction::Transaction;

/// How much of a failing tool's stderr is kept: a rejected 20 MB transaction can print
/// megabytes of errors, the first ones say what went wrong.
const STDERR_LIMIT: usize = 4096;

/// Programs this node's kernel (or a network namespace's) through `nft` and `conntrack`,
/// and through a netlink socket kept open for the transactions it can encode.
#[derive(Debug, Default)]
pub struct SystemKernel {
    netns: Option<String>,
    /// Write every transaction with `nft -f` (no netlink fast path).
    nft_only: bool,
    /// The fast path's socket, opened on first use.
    netlink: Option<Session>,
    /// Our sets, as the committed transactions declared them.
    sets: KnownSets,
    /// Transactions written through netlink so far.
    netlink_batches: usize,
}

/// A clone programs the same kernel; it opens its own netlink socket when it needs one.
impl Clone for SystemKernel {
    fn clone(&self) -> Self {
        SystemKernel {
            netns: self.netns.clone(),
            nft_only: self.nft_only,
            netlink: None,
            sets: self.sets.clone(),
            netlink_batches: 0,
        }
    }
}

impl SystemKernel {
    /// A kernel driven through the `nft` and `conntrack` found on `PATH`.
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs every tool inside the named network namespace (`ip netns exec NAME ...`): how
    /// tests and benchmarks program a namespace instead of the host.
    pub fn in_netns(mut self, name: impl Into<String>) -> Self {
        self.netns = Some(name.into());
        self
    }

    /// Writes every transaction with `nft -f`, never through the netlink fast path (for
    /// comparisons and benchmarks).
    pub fn nft_only(mut self) -> Self {
        self.nft_only = true;
        self
    }

    /// How many transactions went through the netlink fast path.
    pub fn netlink_batches(&self) -> usize {
        self.netlink_batches
    }

    /// Writes `tx` through netlink when it can be encoded, else with `nft -f`.
    /// Writes `tx`; returns the size of its text.
    fn write(&mut self, tx: &Transaction) -> Result<usize, KernelError> {
        if !self.nft_only {
            if self.netlink.is_none() {
                match Session::open(self.netns.as_deref()) {
                    Ok(session) => self.netlink = Some(session),
                    // No socket (no permission, no namespace file): `nft -f` still works.
                    Err(_) => self.nft_only = true,
                }
            }
            if let Some(session) = &mut self.netlink {
                match session.run(tx, &self.sets) {
                    Ok(None) => {
                        self.netlink_batches += 1;
                        return Ok(tx.text().len());
                    }
                    Ok(Some(_unsupported)) => {}
                    Err(e) => {
                        // A broken socket is reopened next time.
                        if matches!(e, KernelError::Io { .. }) {
                            self.netlink = None;
                        }
                        return Err(e);
                    }
                }
            }
        }
        let text = tx.text();
        let bytes = text.len();
        self.exec("nft", &["-f", "-"], Some(text)).map(|_| bytes)
    }

    /// What `nft --version` prints, trimmed (`nftables v1.0.6 (Lester Gooch #5)`).
    pub fn nft_version(&self) -> Result<String, KernelError> {
        Ok(self.exec("nft", &["--version"], None)?.trim().to_string())
    }

    /// Runs `program args` here or in the namespace.
    fn exec(
        &self,
        program: &str,
        args: &[&str],
        stdin: Option<String>,
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
}

/// Runs `program args`, feeding `stdin`; returns stdout. Output is drained while input is
/// written, so large transactions and listings cannot deadlock the pipes.
fn run(program: &str, args: &[&str], stdin: Option<String>) -> Result<String, KernelError> {
    let name = if args.is_empty() {
        program.to_string()
    } else {
        format!("{program} {}", args.join(" "))
    };
    let io = |source| KernelError::Io {
        tool: name.clone(),
        source,
    };
    let mut child = Command::new(program)
        .args(args)
        .env("LC_ALL", "C")
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
            // Dropping the pipe at the end of the thread closes the tool's stdin.
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
        return Ok(String::from_utf8(output.stdout)
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()));
    }
    Err(KernelError::Failed {
        tool: name,
        status: output.status.to_string(),
        stderr: bounded(String::from_utf8_lossy(&output.stderr).trim()),
    })
}

/// `text` cut to [`STDERR_LIMIT`] bytes (at a character boundary), saying how much was cut.
pub(super) fn bounded(text: &str) -> String {
    if text.len() <= STDERR_LIMIT {
        return text.to_string();
    }
    let mut end = STDERR_LIMIT;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let rest = text.len() - end;
    format!(
        "{} ... [{rest} more bytes]",
        text.get(..end).unwrap_or_default()
    )
}

/// Whether a failed `nft list table` says the table does not exist.
fn is_missing_table(err: &KernelError) -> bool {
    matches!(err, KernelError::Failed { stderr, .. }
        if stderr.starts_with("Error: No such file or directory"))
}

impl Kernel for SystemKernel {
    fn run(&mut self, tx: &Transaction) -> Result<usize, KernelError> {
        if tx.is_empty() {
            return Ok(0);
        }
        let result = self.write(tx);
        match &result {
            Ok(_) => self.sets.record(tx),
            // A refused transaction changed nothing; after an I/O error nobody knows.
            Err(KernelError::Io { .. }) => self.sets.clear(),
            Err(_) => {}
        }
        result
    }

    fn table_names(&mut self, family: IpFamily) -> Result<Vec<String>, KernelError> {
        let fam = family_name(family);
        let json = self.exec("nft", &["-j", "list", "tables", fam], None)?;
        crate::json::parse_table_names(&json, family).map_err(|e| KernelError::Unreadable {
            family: fam,
            message: e.to_string(),
        })
    }

    fn list_table(&mut self, family: IpFamily, table: &str) -> Result<Option<Table>, KernelError> {
        let fam = family_name(family);
        let json = match self.exec("nft", &["-j", "list", "table", fam, table], None) {
            Ok(json) => json,
            Err(e) if is_missing_table(&e) => return Ok(None),
            Err(e) => return Err(e),
        };
        crate::json::parse_table(&json, family).map_err(|e| KernelError::Unreadable {
            family: fam,
            message: e.to_string(),
        })
    }

    fn delete_conntrack(
        &mut self,
        family: IpFamily,
        flows: &[ConntrackFlows],
    ) -> Result<(), KernelError> {
        for flow in flows {
            let args = flow.delete_args(family);
            let refs: Vec<&str> = args.iter().map(String::as_str).collect();
            match self.exec("conntrack", &refs, None) {
                Ok(_) => {}
                // conntrack exits 1 when nothing matched: nothing to clean.
                Err(KernelError::Failed { stderr, .. })
                    if stderr.contains("0 flow entries have been deleted") => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::FakeKernel;
    use crate::ruleset::{
        BaseHook, Chain, ChainType, ElemKey, ElemValue, Element, Expr, Hook, KeyType, Operand,
        Rule, SetDecl, SetKind, Stmt, Value, Verdict,
    };
    use crate::transaction::{Command as Cmd, TableId};
    use svcroute_core::model::Protocol;

    #[test]
    fn a_missing_tool_is_an_io_error_with_its_kind() {
        let err = run("svcroute-no-such-tool", &["-f", "-"], Some("x".into())).unwrap_err();
        match &err {
            KernelError::Io { tool, source } => {
                assert_eq!(tool, "svcroute-no-such-tool -f -");
                assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
            }
            other => panic!("{other}"),
        }
    }

    #[test]
    fn failures_carry_trimmed_bounded_stderr() {
        let err = run("sh", &["-c", "echo '  boom  ' >&2; exit 3"], None).unwrap_err();
        match err {
            KernelError::Failed {
                tool,
                status,
                stderr,
            } => {
                assert_eq!(tool, "sh -c echo '  boom  ' >&2; exit 3");
                assert!(status.contains('3'), "{status}");
                assert_eq!(stderr, "boom");
            }
            other => panic!("{other}"),
        }
        let err = run(
            "sh",
            &["-c", "head -c 100000 /dev/zero | tr '\\0' x >&2; exit 1"],
            None,
        )
        .unwrap_err();
        let KernelError::Failed { stderr, .. } = err else {
            panic!("{err}");
        };
        assert!(stderr.starts_with(&"x".repeat(STDERR_LIMIT)));
        assert!(
            stderr.ends_with(" ... [95904 more bytes]"),
            "{}",
            &stderr[4000..]
        );
    }

    #[test]
    fn stdin_and_stdout_are_piped_whole() {
        // Larger than a pipe buffer both ways.
        let input = "0123456789abcdef\n".repeat(100_000);
        let out = run("cat", &[], Some(input.clone())).unwrap();
        assert_eq!(out, input);
    }

    #[test]
    fn bounded_cuts_at_a_character_boundary() {
        let text = "é".repeat(STDERR_LIMIT);
        let cut = bounded(&text);
        assert!(cut.starts_with(&"é".repeat(STDERR_LIMIT / 2)));
        assert!(cut.ends_with(&format!(" ... [{} more bytes]", STDERR_LIMIT)));
        assert_eq!(bounded("short"), "short");
    }

    #[test]
    fn missing_tables_are_told_from_other_failures() {
        let failed = |stderr: &str| KernelError::Failed {
            tool: "nft".into(),
            status: "exit status: 1".into(),
            stderr: stderr.into(),
        };
        assert!(is_missing_table(&failed(
            "Error: No such file or directory\nlist table ip svcroute\n              ^^^^^^^^"
        )));
        assert!(!is_missing_table(&failed(
            "Cannot open network namespace \"x\": No such file or directory"
        )));
        assert!(!is_missing_table(&failed("Error: Permission denied")));
    }

    #[test]
    fn an_empty_transaction_runs_nothing() {
        // The namespace does not exist: running anything would fail.
        let mut k = SystemKernel::new().in_netns("svcroute-nftk-no-such-namespace");
        k.run(&Transaction::new()).unwrap();
        let err = k.nft_version().unwrap_err();
        let KernelError::Failed { tool, stderr, .. } = err else {
            panic!("{err}");
        };
        assert_eq!(
            tool,
            "ip netns exec svcroute-nftk-no-such-namespace nft --version"
        );
        assert!(stderr.contains("Cannot open network namespace"), "{stderr}");
    }

    // -----------------------------------------------------------------------------------------
    // Against the real kernel, in a scratch network namespace.

    /// Skips a kernel test loudly, or fails it when `SVCROUTE_REQUIRE_KERNEL_TESTS=1`.
    fn skip(why: &str) {
        if std::env::var("SVCROUTE_REQUIRE_KERNEL_TESTS").as_deref() == Ok("1") {
            panic!("kernel test required (SVCROUTE_REQUIRE_KERNEL_TESTS=1) but {why}");
        }
        eprintln!("SKIPPED: svcroute-nft kernel test: {why}");
    }

    fn is_root() -> bool {
        std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|status| {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix("Uid:"))
                    .and_then(|ids| ids.split_whitespace().nth(1).map(|euid| euid == "0"))
            })
            .unwrap_or(false)
    }

    /// A network namespace deleted on drop, also when the test fails.
    struct Netns(String);

    impl Netns {
        fn create() -> Result<Netns, KernelError> {
            let name = format!("svcroute-nftk-{}", std::process::id());
            run("ip", &["netns", "add", &name], None)?;
            Ok(Netns(name))
        }
    }

    impl Drop for Netns {
        fn drop(&mut self) {
            if let Err(e) = run("ip", &["netns", "delete", &self.0], None) {
                eprintln!("could not delete network namespace {}: {e}", self.0);
            }
        }
    }

    fn tx(commands: Vec<(IpFamily, Cmd)>) -> Transaction {
        let mut tx = Transaction::new();
        for (f, c) in commands {
            tx.push(&TableId::new(f, "svcroute-test"), c);
        }
        tx
    }

    /// Table, base chain, regular chain, verdict map with an element, rules; in `family`.
    fn build(family: IpFamily, service_ip: &str, endpoint: &str) -> Vec<(IpFamily, Cmd)> {
        let key = ElemKey::new(&[
            Value::Addr(service_ip.parse().unwrap()),
            Value::Proto(Protocol::Tcp),
            Value::Port(80),
        ])
        .unwrap();
        [
            Cmd::AddTable {
                comment: Some("svcroute kernel test".into()),
            },
            Cmd::AddChain {
                name: "nat-prerouting".into(),
                chain: Chain {
                    hook: Some(BaseHook {
                        kind: ChainType::Nat,
                        hook: Hook::Prerouting,
                        priority: -100,
                    }),
                    ..Chain::default()
                },
            },
            Cmd::AddChain {
                name: "svc-a".into(),
                chain: Chain {
                    comment: Some("ns/a:http".into()),
                    ..Chain::default()
                },
            },
            Cmd::AddSet {
                name: "service-ips".into(),
                decl: SetDecl {
                    kind: SetKind::VerdictMap,
                    key: vec![KeyType::Addr, KeyType::Proto, KeyType::Service],
                    interval: false,
                    timeout: None,
                    size: None,
                    protocol: None,
                    comment: None,
                },
            },
            Cmd::AddElements {
                set: "service-ips".into(),
                elements: vec![(
                    key,
                    Element {
                        value: Some(ElemValue::Verdict(Verdict::Goto("svc-a".into()))),
                        comment: Some("ns/a:http".into()),
                    },
                )],
            },
            Cmd::AddRule {
                chain: "svc-a".into(),
                rule: Rule::new(vec![
                    Stmt::Match {
                        left: Expr::L4Proto,
                        negate: false,
                        right: Operand::Value(Value::Proto(Protocol::Tcp)),
                    },
                    Stmt::DnatTo(endpoint.parse().unwrap()),
                ])
                .with_comment("ns/a:http".into()),
            },
            Cmd::AddRule {
                chain: "nat-prerouting".into(),
                rule: Rule::new(vec![Stmt::Vmap {
                    key: Expr::Concat(vec![Expr::Daddr, Expr::L4Proto, Expr::ThDport]),
                    map: "service-ips".into(),
                }]),
            },
        ]
        .into_iter()
        .map(|c| (family, c))
        .collect()
    }

    /// Transactions both kernels must refuse, changing nothing.
    fn invalid() -> Vec<Vec<(IpFamily, Cmd)>> {
        let v4 = IpFamily::IPv4;
        let prerouting = |priority| BaseHook {
            kind: ChainType::Nat,
            hook: Hook::Prerouting,
            priority,
        };
        vec![
            // A base chain's priority cannot change; a regular chain cannot get a hook.
            vec![(
                v4,
                Cmd::AddChain {
                    name: "nat-prerouting".into(),
                    chain: Chain {
                        hook: Some(prerouting(-99)),
                        ..Chain::default()
                    },
                },
            )],
            vec![(
                v4,
                Cmd::AddChain {
                    name: "svc-a".into(),
                    chain: Chain {
                        hook: Some(prerouting(-100)),
                        ..Chain::default()
                    },
                },
            )],
            // A set's key cannot change.
            vec![(
                v4,
                Cmd::AddSet {
                    name: "service-ips".into(),
                    decl: SetDecl {
                        kind: SetKind::VerdictMap,
                        key: vec![KeyType::Addr],
                        interval: false,
                        timeout: None,
                        size: None,
                        protocol: None,
                        comment: None,
                    },
                },
            )],
            // No jump to a base chain.
            vec![(
                v4,
                Cmd::AddRule {
                    chain: "svc-a".into(),
                    rule: Rule::new(vec![Stmt::Verdict(Verdict::Jump("nat-prerouting".into()))]),
                },
            )],
            // Masquerade reached from prerouting through a verdict-map element.
            vec![
                (
                    v4,
                    Cmd::AddChain {
                        name: "masq".into(),
                        chain: Chain::default(),
                    },
                ),
                (
                    v4,
                    Cmd::AddRule {
                        chain: "masq".into(),
                        rule: Rule::new(vec![Stmt::Masquerade]),
                    },
                ),
                (
                    v4,
                    Cmd::AddElements {
                        set: "service-ips".into(),
                        elements: vec![(
                            ElemKey::new(&[
                                Value::Addr("10.96.0.11".parse().unwrap()),
                                Value::Proto(Protocol::Tcp),
                                Value::Port(80),
                            ])
                            .unwrap(),
                            Element {
                                value: Some(ElemValue::Verdict(Verdict::Jump("masq".into()))),
                                comment: None,
                            },
                        )],
                    },
                ),
            ],
            // A valid command, then a jump to a missing chain.
            vec![
                (
                    v4,
                    Cmd::AddChain {
                        name: "svc-b".into(),
                        chain: Chain::default(),
                    },
                ),
                (
                    v4,
                    Cmd::AddRule {
                        chain: "svc-b".into(),
                        rule: Rule::new(vec![Stmt::Verdict(Verdict::Jump("nope".into()))]),
                    },
                ),
            ],
            // A chain a verdict-map element enters.
            vec![
                (v4, Cmd::FlushChain("svc-a".into())),
                (v4, Cmd::DeleteChain("svc-a".into())),
            ],
            // An existing element with another value.
            vec![(
                v4,
                Cmd::AddElements {
                    set: "service-ips".into(),
                    elements: vec![(
                        ElemKey::new(&[
                            Value::Addr("10.96.0.10".parse().unwrap()),
                            Value::Proto(Protocol::Tcp),
                            Value::Port(80),
                        ])
                        .unwrap(),
                        Element {
                            value: Some(ElemValue::Verdict(Verdict::Accept)),
                            comment: None,
                        },
                    )],
                },
            )],
            // A missing element; a missing set in the other family.
            vec![(
                v4,
                Cmd::DeleteElements {
                    set: "service-ips".into(),
                    keys: vec![
                        ElemKey::new(&[
                            Value::Addr("10.96.0.99".parse().unwrap()),
                            Value::Proto(Protocol::Tcp),
                            Value::Port(80),
                        ])
                        .unwrap(),
                    ],
                },
            )],
            vec![
                (IpFamily::IPv4, Cmd::FlushChain("svc-a".into())),
                (
                    IpFamily::IPv6,
                    Cmd::DeleteSet {
                        name: "nope".into(),
                        map: false,
                    },
                ),
            ],
        ]
    }

    #[test]
    fn kernel_round_trip_in_a_network_namespace() {
        if !is_root() {
            skip("not running as root");
            return;
        }
        match SystemKernel::new().nft_version() {
            Ok(v) => assert!(v.starts_with("nftables v"), "{v}"),
            Err(e) => {
                skip(&format!("no usable nft: {e}"));
                return;
            }
        }
        let ns = match Netns::create() {
            Ok(ns) => ns,
            Err(e) => {
                skip(&format!("cannot create a network namespace: {e}"));
                return;
            }
        };
        let mut real = SystemKernel::new().in_netns(ns.0.clone());
        let fake = FakeKernel::new();
        let mut fake_dp = fake.clone();
        let v4 = IpFamily::IPv4;
        let name = "svcroute-test";
        assert!(real.nft_version().unwrap().starts_with("nftables v"));
        assert_eq!(real.list_table(v4, name).unwrap(), None);

        let mut commands = build(v4, "10.96.0.10", "10.1.0.1:8080");
        commands.extend(build(IpFamily::IPv6, "fd00::10", "[fd00:1::1]:8080"));
        let setup = tx(commands);
        real.run(&setup).unwrap();
        fake_dp.run(&setup).unwrap();
        for family in [v4, IpFamily::IPv6] {
            let listed = real.list_table(family, name).unwrap();
            assert!(listed.is_some());
            assert_eq!(
                listed,
                fake_dp.list_table(family, name).unwrap(),
                "{family:?}"
            );
        }

        let before = real.list_table(v4, name).unwrap();
        let mut text_only = SystemKernel::new().in_netns(ns.0.clone()).nft_only();
        for commands in invalid() {
            let bad = tx(commands);
            let Err(err) = text_only.run(&bad) else {
                panic!("the kernel accepts {}", bad.text());
            };
            let KernelError::Failed { tool, stderr, .. } = &err else {
                panic!("{err}");
            };
            assert_eq!(tool, &format!("ip netns exec {} nft -f -", ns.0));
            assert!(stderr.contains("Error"), "{stderr}");
            assert_eq!(real.list_table(v4, name).unwrap(), before, "{}", bad.text());
            // Through netlink where it encodes the transaction: refused too, nothing applied.
            let Err(err) = real.run(&bad) else {
                panic!("the kernel accepts {} through netlink", bad.text());
            };
            assert!(matches!(err, KernelError::Failed { .. }), "{err}");
            assert!(
                fake_dp.run(&bad).is_err(),
                "the fake accepts {}",
                bad.text()
            );
            assert_eq!(real.list_table(v4, name).unwrap(), before, "{}", bad.text());
            assert_eq!(fake_dp.list_table(v4, name).unwrap(), before);
        }

        // What both accept: the same objects again, and many elements (several `add element`
        // lines, more than a pipe buffer of input).
        let mut again = build(v4, "10.96.0.10", "10.1.0.1:8080");
        again.push((
            v4,
            Cmd::AddElements {
                set: "service-ips".into(),
                elements: (0..3000u16)
                    .map(|i| {
                        (
                            ElemKey::new(&[
                                Value::Addr(
                                    format!("10.97.{}.{}", i / 250, i % 250).parse().unwrap(),
                                ),
                                Value::Proto(Protocol::Udp),
                                Value::Port(1000 + i),
                            ])
                            .unwrap(),
                            Element {
                                value: Some(ElemValue::Verdict(Verdict::Goto("svc-a".into()))),
                                comment: Some(format!("ns/svc-{i}:dns")),
                            },
                        )
                    })
                    .collect(),
            },
        ));
        let again = tx(again);
        real.run(&again).unwrap();
        fake_dp.run(&again).unwrap();
        let listed = real.list_table(v4, name).unwrap();
        assert_eq!(
            listed
                .as_ref()
                .map(|t| t.sets["service-ips"].elements.len()),
            Some(3001)
        );
        assert_eq!(listed, fake_dp.list_table(v4, name).unwrap());

        // Something the model does not represent: the table is unreadable.
        run(
            "ip",
            &[
                "netns",
                "exec",
                &ns.0,
                "nft",
                "add rule ip svcroute-test svc-a counter",
            ],
            None,
        )
        .unwrap();
        match real.list_table(v4, name) {
            Err(KernelError::Unreadable { family, message }) => {
                assert_eq!(family, "ip");
                assert!(!message.is_empty());
            }
            other => panic!("{other:?}"),
        }

        match real.delete_conntrack(
            v4,
            &[ConntrackFlows {
                protocol: Protocol::Udp,
                original_destination: Some("10.96.0.10".parse().unwrap()),
                original_port: Some(53),
                reply_source: None,
            }],
        ) {
            Ok(()) => {}
            Err(KernelError::Failed { stderr, .. }) if stderr.contains("exec of \"conntrack\"") => {
                eprintln!("SKIPPED: conntrack deletion: conntrack is not installed");
            }
            Err(e) => panic!("{e}"),
        }

        let delete = tx(vec![
            (v4, Cmd::DeleteTable),
            (IpFamily::IPv6, Cmd::DeleteTable),
        ]);
        real.run(&delete).unwrap();
        assert_eq!(real.list_table(v4, name).unwrap(), None);
        assert_eq!(real.list_table(IpFamily::IPv6, name).unwrap(), None);
        drop(ns);
    }
}
