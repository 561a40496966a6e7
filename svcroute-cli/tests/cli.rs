//! End-to-end tests of the `svcroute` binary on the bundled examples and on small inputs.

#![allow(
    clippy::unwrap_used,
    reason = "test helpers fail the test on any unexpected error"
)]

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use serde_json::{Value, json};

/// The workspace root: the examples' paths are relative to it.
fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A fresh scratch directory for one test.
fn scratch(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("svcroute-cli-{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

/// The built `svcroute` binary.
const SVCROUTE: &str = env!("CARGO_BIN_EXE_svcroute");

fn svcroute_with_stdin(args: &[&str], stdin: Option<&str>) -> Run {
    run_program(SVCROUTE, args, stdin)
}

/// Runs `program args` in the workspace root.
fn run_program(program: &str, args: &[&str], stdin: Option<&str>) -> Run {
    let mut child = Command::new(program)
        .args(args)
        .current_dir(root())
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    let run = Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
    };
    assert!(
        !run.stderr.contains("panicked"),
        "svcroute panicked: {}",
        run.stderr
    );
    run
}

fn svcroute(args: &[&str]) -> Run {
    svcroute_with_stdin(args, None)
}

const NODE: &str = "examples/node.yaml";
const CLUSTER: &str = "examples/cluster.yaml";
const PACKETS: &str = "examples/packets.txt";

/// `plan -o json` on the example with extra arguments; must succeed.
fn plan_json(extra: &[&str]) -> Vec<Value> {
    let mut args = vec!["--config", NODE, "plan", "-f", CLUSTER, "-o", "json"];
    args.extend_from_slice(extra);
    let run = svcroute(&args);
    assert_eq!(run.code, 0, "stderr: {}", run.stderr);
    serde_json::from_str(&run.stdout).unwrap()
}

/// The entry of one service port and family.
fn entry<'a>(plan: &'a [Value], service: &str, port_name: &str, family: &str) -> &'a Value {
    plan.iter()
        .find(|e| {
            e["service"] == service && e["port_name"] == port_name && e["ip_family"] == family
        })
        .unwrap_or_else(|| panic!("no entry {service}:{port_name} {family}"))
}

fn services(plan: &[Value]) -> Vec<&str> {
    plan.iter()
        .map(|e| e["service"].as_str().unwrap())
        .collect()
}

#[test]
fn plan_json_on_the_example() {
    let run = svcroute(&["--config", NODE, "plan", "-f", CLUSTER, "-o", "json"]);
    assert_eq!(run.code, 0);
    assert_eq!(run.stderr, "", "the example loads without warnings");
    let plan: Vec<Value> = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(plan.len(), 15);

    // The IPv6 StatefulSet service.
    let web = entry(&plan, "default/web", "http", "IPv6");
    assert_eq!(web["protocol"], "TCP");
    assert_eq!(web["port"], 8080);
    assert_eq!(
        web["frontends"],
        json!([{"type": "ClusterIP", "address": "[fd00:10:96::c0a]:8080"}])
    );
    assert_eq!(
        web["cluster_endpoints"],
        json!(["[fd00:10:244:1::a]:8080", "[fd00:10:244:2::b]:8080"])
    );
    assert_eq!(web["local_endpoints"], Value::Null);
    assert_eq!(web["when_no_endpoint"], Value::Null);

    // Three endpoints and ClientIP affinity.
    let myapp = entry(&plan, "default/myapp", "", "IPv4");
    assert_eq!(myapp["cluster_endpoints"].as_array().unwrap().len(), 3);
    assert_eq!(myapp["affinity_timeout_seconds"], 10800);
    assert_eq!(
        entry(&plan, "default/echo", "http", "IPv4")["affinity_timeout_seconds"],
        Value::Null
    );
    assert_eq!(
        entry(&plan, "default/echo-affinity", "http", "IPv4")["affinity_timeout_seconds"],
        3600
    );

    // No endpoints: an empty set in use (not null) and REJECT.
    let noep = entry(&plan, "default/echo-noep", "http", "IPv4");
    assert_eq!(noep["cluster_endpoints"], json!([]));
    assert_eq!(noep["local_endpoints"], Value::Null);
    assert_eq!(noep["has_any_endpoints"], false);
    assert_eq!(noep["when_no_endpoint"], "reject");

    // iTP=Local with the only pod elsewhere: DROP.
    let itl = entry(&plan, "default/echo-internal-local", "http", "IPv4");
    assert_eq!(itl["cluster_endpoints"], Value::Null);
    assert_eq!(itl["local_endpoints"], json!([]));
    assert_eq!(itl["when_no_endpoint"], "drop");
    assert_eq!(itl["internal_traffic_policy"], "Local");

    // externalIPs.
    let ext = entry(&plan, "default/echo-externalip", "http", "IPv4");
    assert!(
        ext["frontends"]
            .as_array()
            .unwrap()
            .contains(&json!({"type": "ExternalIP", "address": "192.168.10.100:80"}))
    );
    assert_eq!(ext["externally_accessible"], true);

    // NodePort eTP=Cluster, dual-stack: one entry per family.
    let np4 = entry(&plan, "default/echo-nodeport", "http", "IPv4");
    let np6 = entry(&plan, "default/echo-nodeport", "http", "IPv6");
    assert_eq!(np4["node_port"], 30080);
    assert!(
        np4["frontends"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["type"] == "NodePort" && f["port"] == 30080)
    );
    assert_eq!(
        np6["cluster_endpoints"],
        json!(["[fd00:10:244:1::20]:8080", "[fd00:10:244:2::21]:8080"])
    );
    assert_eq!(np4["local_endpoints"], Value::Null);

    // NodePort eTP=Local: both sets in use, the local one holds this node's pod.
    let npl = entry(&plan, "default/echo-nodeport-local", "http", "IPv4");
    assert_eq!(npl["external_traffic_policy"], "Local");
    assert_eq!(
        npl["cluster_endpoints"],
        json!(["10.244.1.20:8080", "10.244.2.21:8080"])
    );
    assert_eq!(npl["local_endpoints"], json!(["10.244.1.20:8080"]));
    assert_eq!(npl["when_no_endpoint"], Value::Null);

    // LoadBalancer with source ranges (node-1 inside one, so the LB IP is allowed too).
    let lb = entry(&plan, "default/echo-lb", "http", "IPv4");
    let fronts = lb["frontends"].as_array().unwrap();
    assert!(fronts.contains(&json!({
        "type": "LoadBalancer",
        "address": "203.0.113.10:80",
        "allowed_sources": ["192.168.10.0/24", "198.51.100.0/24", "203.0.113.10/32"]
    })));
    assert!(fronts.contains(&json!({"type": "HealthCheckNodePort", "port": 32000})));

    // Multi-port, UDP.
    assert_eq!(
        entry(&plan, "kube-system/kube-dns", "dns", "IPv4")["protocol"],
        "UDP"
    );

    // Headless and ExternalName get no rules.
    let names = services(&plan);
    assert!(!names.contains(&"default/echo-headless"));
    assert!(!names.contains(&"default/echo-external"));
}

#[test]
fn plan_text_on_the_example() {
    let run = svcroute(&["--config", NODE, "plan", "-f", CLUSTER]);
    assert_eq!(run.code, 0);
    let first = run.stdout.lines().next().unwrap();
    assert_eq!(
        first,
        "node node-1 (192.168.10.11, fd00:192:168:10::11): 15 service port entries"
    );
    assert!(run.stdout.contains(
        "default/web:http  8080/TCP  IPv6\n  ClusterIP           [fd00:10:96::c0a]:8080\n"
    ));
    assert!(run.stdout.contains("REJECT"));
    assert!(run.stdout.contains("DROP"));
}

#[test]
fn global_options_work_before_and_after_the_subcommand() {
    let before = svcroute(&["--config", NODE, "-f", CLUSTER, "-o", "json", "plan"]);
    let after = svcroute(&["plan", "-f", CLUSTER, "--config", NODE, "--output", "json"]);
    assert_eq!(before.code, 0);
    assert_eq!(before.stdout, after.stdout);
    let trace_after = svcroute(&[
        "trace",
        "--from",
        "10.244.1.5",
        "--to",
        "10.96.100.10:80",
        "--config",
        NODE,
        "-f",
        CLUSTER,
    ]);
    let trace_before = svcroute(&[
        "--config",
        NODE,
        "-f",
        CLUSTER,
        "trace",
        "--from",
        "10.244.1.5",
        "--to",
        "10.96.100.10:80",
    ]);
    assert_eq!(trace_after.code, 0);
    assert_eq!(trace_after.stdout, trace_before.stdout);
}

#[test]
fn trace_one_packet_as_json() {
    let run = svcroute(&[
        "--config",
        NODE,
        "trace",
        "-f",
        CLUSTER,
        "--from",
        "10.244.1.5",
        "--to",
        "10.96.100.10:80",
        "-o",
        "json",
    ]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.stdout.lines().count(), 1);
    let v: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(v["packet"], "10.244.1.5 10.96.100.10:80/tcp");
    assert_eq!(v["verdict"], "dnat");
    assert_eq!(v["masquerade"], false);
    assert_eq!(v["affinity_timeout_seconds"], 10800);
    let eps = v["endpoints"].as_array().unwrap();
    assert_eq!(eps.len(), 3);
    for e in eps {
        assert!((e["probability"].as_f64().unwrap() - 1.0 / 3.0).abs() < 1e-9);
        assert_eq!(e["masquerade"], false);
        assert_eq!(e["port"], 8080);
    }
    assert_eq!(eps[0]["ip"], "10.244.1.10");
    assert_eq!(v["service"], "default/myapp");
    assert_eq!(v["frontend"], "ClusterIP");
}

#[test]
fn trace_one_packet_as_text() {
    let run = svcroute(&[
        "--config",
        NODE,
        "trace",
        "-f",
        CLUSTER,
        "--from",
        "10.244.1.5",
        "--to",
        "10.96.100.10:80/tcp",
    ]);
    assert_eq!(run.code, 0);
    assert_eq!(
        run.stdout,
        "10.244.1.5 -> 10.96.100.10:80/tcp: DNAT to 10.244.1.10:8080 (p=0.333), 10.244.2.11:8080 (p=0.333), \
         10.244.2.12:8080 (p=0.333); masquerade: no; affinity: 10800s (default/myapp via ClusterIP)\n"
    );
    // IPv6, from outside the pod CIDRs: masqueraded.
    let run = svcroute(&[
        "--config",
        NODE,
        "trace",
        "-f",
        CLUSTER,
        "--from",
        "2001:db8::1",
        "--to",
        "[fd00:10:96::c0a]:8080",
    ]);
    assert!(
        run.stdout.starts_with(
            "2001:db8::1 -> [fd00:10:96::c0a]:8080/tcp: DNAT to [fd00:10:244:1::a]:8080 (p=0.500)"
        ),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("masquerade: yes"));
}

#[test]
fn trace_rejects_bad_packets_on_the_command_line() {
    let run = svcroute(&[
        "trace",
        "-f",
        CLUSTER,
        "--from",
        "10.0.0.1",
        "--to",
        "[fd00::1]:80",
    ]);
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("different families"), "{}", run.stderr);
    let run = svcroute(&[
        "trace",
        "-f",
        CLUSTER,
        "--from",
        "10.0.0.1",
        "--to",
        "10.96.0.1:80/icmp",
    ]);
    assert_eq!(run.code, 2);
    let run = svcroute(&["trace", "-f", CLUSTER, "--from", "10.0.0.1"]);
    assert_eq!(run.code, 2, "--from needs --to");
}

/// Packet lines of the example (without comments and blank lines).
fn example_packets() -> Vec<String> {
    std::fs::read_to_string(root().join(PACKETS))
        .unwrap()
        .lines()
        .map(|l| l.split('#').next().unwrap().trim().to_string())
        .filter(|l| !l.is_empty())
        .collect()
}

#[test]
fn trace_the_example_packets_as_json() {
    let run = svcroute(&[
        "--config",
        NODE,
        "trace",
        "-f",
        CLUSTER,
        "--packets",
        PACKETS,
        "-o",
        "json",
    ]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let lines: Vec<Value> = run
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let packets = example_packets();
    assert_eq!(lines.len(), packets.len());
    let verdict = |packet: &str| {
        let normal: svcroute_core::Packet = packet.parse().unwrap();
        let line = lines
            .iter()
            .find(|l| l["packet"] == normal.to_string())
            .unwrap_or_else(|| panic!("no output for {packet}"));
        line["verdict"].as_str().unwrap().to_string()
    };
    // Every verdict appears.
    let mut seen: Vec<String> = lines
        .iter()
        .map(|l| l["verdict"].as_str().unwrap().to_string())
        .collect();
    seen.sort();
    seen.dedup();
    assert_eq!(seen, ["accept", "dnat", "drop", "no-match", "reject"]);
    assert_eq!(verdict("10.244.1.50 10.96.0.103:80/tcp"), "reject"); // echo-noep
    assert_eq!(verdict("203.0.113.99 203.0.113.10:80/tcp"), "drop"); // source range
    assert_eq!(verdict("10.244.1.50 10.96.0.107:80/tcp"), "drop"); // iTP Local elsewhere
    assert_eq!(verdict("198.51.100.7 192.168.10.11:32000/tcp"), "accept"); // health check
    // eTP=Local from outside: the local pod only, source kept.
    let local = lines
        .iter()
        .find(|l| l["packet"] == "198.51.100.7 192.168.10.11:30081/tcp")
        .unwrap();
    assert_eq!(
        local["endpoints"],
        json!([{"ip": "10.244.1.20", "port": 8080, "probability": 1.0, "masquerade": false}])
    );
    assert_eq!(local["masquerade"], false);
    // Hairpin: only the endpoint reaching itself is masqueraded.
    let hairpin = lines
        .iter()
        .find(|l| l["packet"] == "10.244.1.20 10.96.0.100:80/tcp")
        .unwrap();
    assert_eq!(hairpin["endpoints"][0]["masquerade"], true);
    assert_eq!(hairpin["endpoints"][1]["masquerade"], false);
}

#[test]
fn trace_packets_from_stdin_reports_bad_lines_and_goes_on() {
    let input =
        "# comment\n10.244.1.5 10.96.100.10:80/tcp\nnot a packet\n\n10.244.1.5 10.96.0.103:80\n";
    let run = svcroute_with_stdin(
        &[
            "--config",
            NODE,
            "trace",
            "-f",
            CLUSTER,
            "--packets",
            "-",
            "-o",
            "json",
        ],
        Some(input),
    );
    assert_eq!(run.code, 1, "a bad line makes the run fail");
    assert!(
        run.stderr.contains("error: <stdin>:3: invalid packet"),
        "{}",
        run.stderr
    );
    let lines: Vec<Value> = run
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[1]["verdict"], "reject");
}

#[test]
fn trace_text_for_many_packets() {
    let run = svcroute(&[
        "--config",
        NODE,
        "trace",
        "-f",
        CLUSTER,
        "--packets",
        PACKETS,
    ]);
    assert_eq!(run.code, 0);
    assert_eq!(run.stdout.lines().count(), example_packets().len());
    assert!(
        run.stdout
            .contains("10.244.1.50 -> 10.96.0.103:80/tcp: REJECT")
    );
    assert!(run.stdout.contains(
        "203.0.113.99 -> 203.0.113.10:80/tcp: DROP: source not allowed by loadBalancerSourceRanges"
    ));
}

#[test]
fn backend_all_agrees_on_the_example() {
    let run = svcroute(&[
        "--config",
        NODE,
        "trace",
        "-f",
        CLUSTER,
        "--packets",
        PACKETS,
        "--backend",
        "all",
        "-o",
        "json",
    ]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let lines: Vec<Value> = run
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), example_packets().len());
    for v in &lines {
        assert_eq!(v["agree"], true, "{v}");
        let backends = v["backends"].as_object().unwrap();
        assert_eq!(
            backends.keys().collect::<Vec<_>>(),
            ["iptables", "memory", "nft", "reference"],
            "{v}"
        );
        assert_eq!(backends["memory"], backends["reference"], "{v}");
        assert!(close(&backends["iptables"], &backends["reference"]), "{v}");
        assert!(close(&backends["nft"], &backends["reference"]), "{v}");
    }
    let text = svcroute(&[
        "--config",
        NODE,
        "trace",
        "-f",
        CLUSTER,
        "--from",
        "10.244.1.5",
        "--to",
        "10.96.100.10:80",
        "--backend",
        "all",
    ]);
    assert_eq!(text.code, 0);
    assert!(
        text.stdout
            .starts_with("10.244.1.5 -> 10.96.100.10:80/tcp: backends agree"),
        "{}",
        text.stdout
    );
    assert!(text.stdout.contains("\n  reference  DNAT to "));
    assert!(text.stdout.contains("\n  memory     DNAT to "));
    assert!(text.stdout.contains("\n  iptables   DNAT to "));
    assert!(text.stdout.contains("\n  nft        DNAT to "));
    // The text form agrees too (exit status 0).
    let text = svcroute(&[
        "--config",
        NODE,
        "trace",
        "-f",
        CLUSTER,
        "--packets",
        PACKETS,
        "--backend",
        "all",
    ]);
    assert_eq!(text.code, 0, "{}{}", text.stdout, text.stderr);
    assert!(!text.stdout.contains("DISAGREE"), "{}", text.stdout);
}

#[test]
fn backend_all_agrees_under_other_settings() {
    for extra in [
        &["--node-name", "node-2"][..],
        &["--masquerade-all"],
        &[
            "--nodeport-addresses",
            "primary",
            "--localhost-nodeports",
            "false",
        ],
        &["--ip-families", "IPv6"],
        &["--cluster-cidr", "10.244.1.0/24"],
    ] {
        let mut args = vec![
            "--config",
            NODE,
            "trace",
            "-f",
            CLUSTER,
            "--packets",
            PACKETS,
            "--backend",
            "all",
            "-o",
            "json",
        ];
        args.extend_from_slice(extra);
        let run = svcroute(&args);
        assert_eq!(run.code, 0, "{extra:?}: {}", run.stderr);
        for line in run.stdout.lines() {
            let v: Value = serde_json::from_str(line).unwrap();
            assert_eq!(v["agree"], true, "{extra:?}: {line}");
        }
    }
}

#[test]
fn memory_backend_matches_the_reference() {
    let memory = svcroute(&[
        "--config",
        NODE,
        "trace",
        "-f",
        CLUSTER,
        "--packets",
        PACKETS,
        "--backend",
        "memory",
        "-o",
        "json",
    ]);
    assert_eq!(memory.code, 0, "{}", memory.stderr);
    let reference = svcroute(&[
        "--config",
        NODE,
        "trace",
        "-f",
        CLUSTER,
        "--packets",
        PACKETS,
        "-o",
        "json",
    ]);
    assert_eq!(memory.stdout, reference.stdout);
}

/// Whether two JSON values are equal, numbers up to 1e-9 (iptables writes probabilities with
/// 10 decimals).
fn close(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            (x.as_f64().unwrap() - y.as_f64().unwrap()).abs() < 1e-9
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| close(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| close(v, w)))
        }
        _ => a == b,
    }
}

/// Two `trace -o json` outputs give the same decisions, line by line.
fn assert_same_decisions(left: &str, right: &str) {
    let parse = |text: &str| -> Vec<Value> {
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let (left, right) = (parse(left), parse(right));
    assert_eq!(left.len(), right.len());
    for (l, r) in left.iter().zip(&right) {
        assert!(close(l, r), "\n{l}\n{r}");
    }
}

#[test]
fn iptables_backend_matches_the_reference() {
    let trace = |backend: &str| {
        let run = svcroute(&[
            "--config",
            NODE,
            "trace",
            "-f",
            CLUSTER,
            "--packets",
            PACKETS,
            "--backend",
            backend,
            "-o",
            "json",
        ]);
        assert_eq!(run.code, 0, "{backend}: {}", run.stderr);
        run.stdout
    };
    // iptables states probabilities with 10 decimals: equal up to that.
    assert_same_decisions(&trace("iptables"), &trace("reference"));
    // A few packets as text, each on its own.
    for (from, to) in [
        ("10.244.1.5", "10.96.100.10:80/tcp"),
        ("203.0.113.99", "203.0.113.10:80/tcp"),
        ("2001:db8::7", "[fd00:192:168:10::11]:30080/tcp"),
        ("10.244.1.50", "10.96.0.10:53/udp"),
    ] {
        let one = |backend: &str| {
            svcroute(&[
                "--config",
                NODE,
                "trace",
                "-f",
                CLUSTER,
                "--from",
                from,
                "--to",
                to,
                "--backend",
                backend,
            ])
        };
        let (iptables, reference) = (one("iptables"), one("reference"));
        assert_eq!(iptables.code, 0, "{to}: {}", iptables.stderr);
        assert_eq!(iptables.stdout, reference.stdout, "{from} {to}");
    }
}

#[test]
fn nft_backend_matches_the_reference() {
    let trace = |backend: &str| {
        let run = svcroute(&[
            "--config",
            NODE,
            "trace",
            "-f",
            CLUSTER,
            "--packets",
            PACKETS,
            "--backend",
            backend,
            "-o",
            "json",
        ]);
        assert_eq!(run.code, 0, "{backend}: {}", run.stderr);
        run.stdout
    };
    let (nft, reference) = (trace("nft"), trace("reference"));
    assert_same_decisions(&nft, &reference);
    // Every example packet gets a decision (no trace error), and every verdict appears.
    let mut verdicts: Vec<String> = nft
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            assert!(v.get("error").is_none(), "{l}");
            v["verdict"].as_str().unwrap().to_string()
        })
        .collect();
    verdicts.sort();
    verdicts.dedup();
    assert_eq!(verdicts, ["accept", "dnat", "drop", "no-match", "reject"]);
    // Under other settings too.
    for extra in [
        &["--node-name", "node-2"][..],
        &["--masquerade-all"],
        &["--ip-families", "IPv6"],
        &["--nodeport-addresses", "primary"],
    ] {
        let with = |backend: &str| {
            let mut args = vec![
                "--config",
                NODE,
                "trace",
                "-f",
                CLUSTER,
                "--packets",
                PACKETS,
                "--backend",
                backend,
                "-o",
                "json",
            ];
            args.extend_from_slice(extra);
            let run = svcroute(&args);
            assert_eq!(run.code, 0, "{backend} {extra:?}: {}", run.stderr);
            run.stdout
        };
        assert_same_decisions(&with("nft"), &with("reference"));
    }
}

/// Renders the bundled example with `backend` and compares it with its golden file
/// (`SVCROUTE_BLESS=1` rewrites the file first); returns the golden text.
fn check_golden(backend: &str, golden_path: &str) -> String {
    let run = svcroute(&[
        "--config",
        NODE,
        "render",
        "--backend",
        backend,
        "-f",
        CLUSTER,
    ]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.stderr, "");
    let path = root().join(golden_path);
    if std::env::var_os("SVCROUTE_BLESS").is_some_and(|v| v == "1") {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &run.stdout).unwrap();
        eprintln!("blessed {golden_path}");
    }
    let golden = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{golden_path}: {e} (SVCROUTE_BLESS=1 writes it)"));
    assert!(
        run.stdout == golden,
        "the rendered payload differs from {golden_path}; if the change is intended, re-run \
         with SVCROUTE_BLESS=1 and review the diff"
    );
    golden
}

/// The payload of the bundled example, as the README's main command renders it.
const GOLDEN: &str = "examples/golden/iptables.txt";

#[test]
fn render_iptables_matches_the_golden_payload() {
    let golden = check_golden("iptables", GOLDEN);
    // One section per family, each a restore payload of both tables.
    assert!(golden.starts_with("# iptables-restore --noflush\n*filter\n"));
    assert!(golden.contains("\n\n# ip6tables-restore --noflush\n*filter\n"));
    assert_eq!(golden.matches("COMMIT\n").count(), 4);
    // kube-dns keeps the chain name kube-proxy gives it.
    assert!(golden.contains(":KUBE-SVC-TCOU7JCQXEZGVUNU - [0:0]"));
}

#[test]
fn render_iptables_as_json() {
    let render = |extra: &[&str]| {
        let mut args = vec![
            "--config",
            NODE,
            "render",
            "--backend",
            "iptables",
            "-f",
            CLUSTER,
        ];
        args.extend_from_slice(extra);
        let run = svcroute(&args);
        assert_eq!(run.code, 0, "{extra:?}: {}", run.stderr);
        run.stdout
    };
    let list: Vec<Value> = serde_json::from_str(&render(&["-o", "json"])).unwrap();
    assert_eq!(list.len(), 2);
    let keys: Vec<(&str, &str)> = list
        .iter()
        .map(|p| (p["family"].as_str().unwrap(), p["tool"].as_str().unwrap()))
        .collect();
    assert_eq!(
        keys,
        [("IPv4", "iptables-restore"), ("IPv6", "ip6tables-restore")]
    );
    // The text form is the same payloads, each after a comment naming its tool.
    let text: Vec<String> = list
        .iter()
        .map(|p| {
            format!(
                "# {} --noflush\n{}",
                p["tool"].as_str().unwrap(),
                p["payload"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(text.join("\n"), render(&[]));
    for p in &list {
        let payload = p["payload"].as_str().unwrap();
        assert!(payload.starts_with("*filter\n") && payload.ends_with("COMMIT\n"));
        assert!(payload.contains("\n*nat\n"));
        assert!(payload.contains("-j KUBE-SERVICES"));
    }
    assert!(
        list[1]["payload"]
            .as_str()
            .unwrap()
            .contains("fd00:10:96::c0a")
    );

    // Only the families the settings handle.
    let v4: Vec<Value> =
        serde_json::from_str(&render(&["-o", "json", "--ip-families", "IPv4"])).unwrap();
    assert_eq!(v4.len(), 1);
    assert_eq!(v4[0], list[0]);
}

/// The nft transaction of the bundled example.
const GOLDEN_NFT: &str = "examples/golden/nft.txt";

#[test]
fn render_nft_matches_the_golden_transaction() {
    let golden = check_golden("nft", GOLDEN_NFT);
    // One transaction for both families, after a comment naming the command: it can be fed
    // to `nft -f` as it is.
    assert!(golden.starts_with("# nft -f -\nadd table ip svcroute\ndelete table ip svcroute\n"));
    assert_eq!(
        golden.lines().filter(|l| l.starts_with('#')).count(),
        1,
        "one comment line"
    );
    assert!(golden.contains("\nadd table ip6 svcroute\ndelete table ip6 svcroute\n"));
    // Only our tables: every command names one of them.
    for line in golden.lines().skip(1) {
        assert!(
            line.contains(" ip svcroute") || line.contains(" ip6 svcroute"),
            "{line}"
        );
    }
    // A small cluster: one table per family (no shards). kube-dns keeps kube-proxy's hash;
    // the IPv6-only service is in the ip6 table.
    assert!(!golden.contains(" svcroute-0 "));
    assert!(golden.contains("add chain ip svcroute svc-TCOU7JCQXEZGVUNU "));
    assert!(golden.contains("fd00:10:96::c0a"));
}

#[test]
fn render_nft_as_json() {
    let render = |extra: &[&str]| {
        let mut args = vec![
            "--config",
            NODE,
            "render",
            "--backend",
            "nft",
            "-f",
            CLUSTER,
        ];
        args.extend_from_slice(extra);
        let run = svcroute(&args);
        assert_eq!(run.code, 0, "{extra:?}: {}", run.stderr);
        run.stdout
    };
    let list: Vec<Value> = serde_json::from_str(&render(&["-o", "json"])).unwrap();
    assert_eq!(list.len(), 1, "one transaction");
    let p = &list[0];
    let mut keys: Vec<&String> = p.as_object().unwrap().keys().collect();
    keys.sort();
    assert_eq!(
        keys,
        ["family", "payload", "tool"],
        "the keys of the iptables payloads"
    );
    assert_eq!(p["family"], Value::Null, "both families");
    assert_eq!(p["tool"], "nft");
    let payload = p["payload"].as_str().unwrap();
    assert_eq!(format!("# nft -f -\n{payload}"), render(&[]));

    // Only the families the settings handle: the other one's table is deleted.
    let v4: Vec<Value> =
        serde_json::from_str(&render(&["-o", "json", "--ip-families", "IPv4"])).unwrap();
    let v4 = v4[0]["payload"].as_str().unwrap();
    assert!(v4.contains("add chain ip svcroute "));
    assert!(!v4.contains("add chain ip6 "));
    assert!(v4.contains("add table ip6 svcroute\ndelete table ip6 svcroute\n"));
}

#[test]
fn kernel_commands_check_their_arguments() {
    // --live reads the kernel's iptables rules or nftables tables: no other backend has any.
    for backend in [None, Some("reference"), Some("memory"), Some("all")] {
        let mut args = vec![
            "--config",
            NODE,
            "trace",
            "-f",
            CLUSTER,
            "--from",
            "10.244.1.5",
            "--to",
            "10.96.100.10:80",
            "--live",
        ];
        if let Some(b) = backend {
            args.extend(["--backend", b]);
        }
        let run = svcroute(&args);
        assert_eq!(run.code, 2, "{backend:?}: {}", run.stderr);
        assert!(
            run.stderr.contains("--live")
                && run.stderr.contains("--backend iptables")
                && run.stderr.contains("--backend nft"),
            "{}",
            run.stderr
        );
        assert_eq!(run.stdout, "");
    }
    for bad in [
        // --iptables-mode only means something with --live.
        &[
            "trace",
            "-f",
            CLUSTER,
            "--from",
            "10.0.0.1",
            "--to",
            "10.96.0.1:80",
            "--backend",
            "iptables",
            "--iptables-mode",
            "nft",
        ][..],
        &["render", "-f", CLUSTER], // --backend is required
        &["render", "-f", CLUSTER, "--backend", "memory"], // no payload
        &["render", "--backend", "iptables"], // no input
        &["apply", "-f", CLUSTER],
        &["apply", "--backend", "iptables"], // no input
        &[
            "apply",
            "-f",
            CLUSTER,
            "--backend",
            "iptables",
            "--iptables-mode",
            "xt",
        ],
        &["cleanup"],
        &["render", "--backend", "nft"], // no input
        &["apply", "--backend", "nft"],  // no input
        &["render", "-f", CLUSTER, "--backend", "nftables"],
        // --iptables-mode picks iptables tools: nft has none.
        &[
            "trace",
            "-f",
            CLUSTER,
            "--from",
            "10.0.0.1",
            "--to",
            "10.96.0.1:80",
            "--backend",
            "nft",
            "--live",
            "--iptables-mode",
            "nft",
        ],
        &[
            "apply",
            "-f",
            CLUSTER,
            "--backend",
            "nft",
            "--iptables-mode",
            "nft",
        ],
        &[
            "apply",
            "-f",
            CLUSTER,
            "--backend",
            "nft",
            "--dry-run",
            "--iptables-mode",
            "auto",
        ],
        &["cleanup", "--backend", "nft", "--iptables-mode", "legacy"],
        // Objects are optional with --live only.
        &[
            "trace",
            "--backend",
            "iptables",
            "--from",
            "10.0.0.1",
            "--to",
            "10.96.0.1:80",
        ],
    ] {
        let run = svcroute(bad);
        assert_eq!(run.code, 2, "{bad:?}: {}", run.stderr);
        assert!(run.stderr.starts_with("error"), "{bad:?}: {}", run.stderr);
        assert_eq!(run.stdout, "", "{bad:?}");
    }
}

#[test]
fn nft_dry_run_prints_the_rendered_transaction() {
    // The full-sync transaction does not depend on what the kernel holds: the dry run needs
    // no kernel (nor root) and prints what `render` prints.
    let render = svcroute(&[
        "--config",
        NODE,
        "render",
        "--backend",
        "nft",
        "-f",
        CLUSTER,
    ]);
    let dry = svcroute(&[
        "--config",
        NODE,
        "apply",
        "--backend",
        "nft",
        "--dry-run",
        "-f",
        CLUSTER,
    ]);
    assert_eq!(dry.code, 0, "{}", dry.stderr);
    assert_eq!(dry.stdout, render.stdout);
}

/// Whether this process runs as root.
fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// A network namespace, deleted when dropped (whatever the test did).
struct Netns(String);

impl Netns {
    /// Creates a namespace with a name no other run uses.
    fn create() -> Result<Netns, String> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or_default();
        let name = format!("svcroute-cli-{}-{nanos}", std::process::id());
        let out = Command::new("ip")
            .args(["netns", "add", &name])
            .output()
            .map_err(|e| format!("ip netns add: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "ip netns add {name}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(Netns(name))
    }

    /// Runs `program args` inside the namespace.
    fn run(&self, program: &str, args: &[&str]) -> Run {
        let mut full = vec!["netns", "exec", self.0.as_str(), program];
        full.extend_from_slice(args);
        run_program("ip", &full, None)
    }

    /// `iptables-save` and `ip6tables-save` inside the namespace, without their comment
    /// lines (they hold the time).
    fn saved(&self) -> String {
        ["iptables-save", "ip6tables-save"]
            .iter()
            .map(|tool| {
                let run = self.run(tool, &[]);
                assert_eq!(run.code, 0, "{tool}: {}", run.stderr);
                run.stdout
                    .lines()
                    .filter(|l| !l.starts_with('#'))
                    .map(|l| format!("{l}\n"))
                    .collect::<String>()
            })
            .collect()
    }
}

impl Netns {
    /// `nft list ruleset` inside the namespace.
    fn nft_ruleset(&self) -> String {
        let run = self.run("nft", &["list", "ruleset"]);
        assert_eq!(run.code, 0, "nft list ruleset: {}", run.stderr);
        run.stdout
    }

    /// Runs `nft -f -` with `input` inside the namespace.
    fn nft(&self, input: &str) {
        let run = run_program(
            "ip",
            &["netns", "exec", self.0.as_str(), "nft", "-f", "-"],
            Some(input),
        );
        assert_eq!(run.code, 0, "nft -f -: {}", run.stderr);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.0])
            .status();
    }
}

/// A test that needs root ran without it: say so loudly, or fail when
/// `SVCROUTE_REQUIRE_KERNEL_TESTS=1` (a root runner must not skip kernel tests).
fn skipped(test: &str, why: &str) {
    if std::env::var("SVCROUTE_REQUIRE_KERNEL_TESTS").as_deref() == Ok("1") {
        panic!("{test} cannot run: {why} (SVCROUTE_REQUIRE_KERNEL_TESTS=1 forbids skipping)");
    }
    eprintln!("\n*** SKIPPED {test}: {why} ***\n");
}

/// `trace --live` of `backend` in `ns` gives the decisions rendered for the same objects,
/// with the objects given or not (then without naming the services).
fn live_traces_match_rendered(ns: &Netns, backend: &str) {
    let trace = [
        "--config",
        NODE,
        "trace",
        "-f",
        CLUSTER,
        "--packets",
        PACKETS,
        "--backend",
        backend,
        "-o",
        "json",
    ];
    let mut live = trace.to_vec();
    live.push("--live");
    let from_kernel = ns.run(SVCROUTE, &live);
    assert_eq!(from_kernel.code, 0, "{}", from_kernel.stderr);
    let rendered = svcroute(&trace);
    assert_eq!(rendered.code, 0, "{}", rendered.stderr);
    assert_same_decisions(&from_kernel.stdout, &rendered.stdout);

    // Without objects: the same decisions, without naming the services.
    let bare = ns.run(
        SVCROUTE,
        &[
            "--config",
            NODE,
            "trace",
            "--packets",
            PACKETS,
            "--backend",
            backend,
            "--live",
            "-o",
            "json",
        ],
    );
    assert_eq!(bare.code, 0, "{}", bare.stderr);
    assert_eq!(bare.stderr, "");
    let strip = |text: &str| -> String {
        text.lines()
            .map(|l| {
                let mut v: Value = serde_json::from_str(l).unwrap();
                let o = v.as_object_mut().unwrap();
                o.remove("service");
                o.remove("frontend");
                format!("{v}\n")
            })
            .collect()
    };
    assert_same_decisions(&strip(&bare.stdout), &strip(&rendered.stdout));
}

#[test]
fn apply_trace_live_and_cleanup_in_a_network_namespace() {
    const TEST: &str = "apply_trace_live_and_cleanup_in_a_network_namespace";
    if !is_root() {
        skipped(
            TEST,
            "needs root (it programs iptables in a scratch network namespace)",
        );
        return;
    }
    let ns = match Netns::create() {
        Ok(ns) => ns,
        Err(e) => {
            skipped(TEST, &format!("cannot create a network namespace: {e}"));
            return;
        }
    };
    let apply = [
        "--config",
        NODE,
        "apply",
        "--backend",
        "iptables",
        "-f",
        CLUSTER,
    ];

    // --dry-run prints the payloads and writes nothing.
    let mut dry = apply.to_vec();
    dry.push("--dry-run");
    let run = ns.run(SVCROUTE, &dry);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout.starts_with("# iptables-"), "{}", run.stdout);
    assert!(run.stdout.contains("\n# ip6tables-"), "{}", run.stdout);
    assert!(run.stdout.contains(":KUBE-SVC-TCOU7JCQXEZGVUNU - [0:0]"));
    let untouched = ns.saved();
    assert!(!untouched.contains("KUBE-"), "--dry-run wrote: {untouched}");

    let run = ns.run(SVCROUTE, &apply);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stdout
            .contains("programmed 14 service port(s): 2 write(s)"),
        "{}",
        run.stdout
    );
    let applied = ns.saved();
    assert!(applied.contains(":KUBE-SERVICES"), "{applied}");
    assert!(applied.contains(":KUBE-SVC-TCOU7JCQXEZGVUNU"), "{applied}");
    assert!(applied.contains("-A PREROUTING") && applied.contains("-j KUBE-SERVICES"));
    assert!(applied.contains("fd00:10:96::c0a"), "IPv6 rules: {applied}");

    // Applying again changes nothing.
    let mut json = apply.to_vec();
    json.extend(["-o", "json"]);
    let run = ns.run(SVCROUTE, &json);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let report: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(report["action"], "apply");
    assert_eq!(report["service_ports"], 14);
    assert_eq!(ns.saved(), applied);

    // The live rules trace like the rules rendered for the same objects.
    live_traces_match_rendered(&ns, "iptables");

    let run = ns.run(SVCROUTE, &["cleanup", "--backend", "iptables"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout.starts_with("iptables ("), "{}", run.stdout);
    let cleaned = ns.saved();
    assert!(!cleaned.contains("KUBE-"), "left behind: {cleaned}");
    assert!(
        !cleaned.lines().any(|l| l.starts_with("-A ")),
        "left behind: {cleaned}"
    );
}

#[test]
fn an_invalid_service_is_reported_and_the_rest_still_routes() {
    let dir = scratch("invalid");
    let bad = dir.join("bad.yaml");
    std::fs::write(
        &bad,
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: broken\n  namespace: default\nspec:\n  clusterIP: 10.96.9.9\n  ports:\n  - port: 0\n",
    )
    .unwrap();
    let bad = bad.to_str().unwrap();
    let run = svcroute(&[
        "--config", NODE, "plan", "-f", CLUSTER, "-f", bad, "-o", "json",
    ]);
    assert_eq!(run.code, 0);
    assert_eq!(
        run.stderr,
        "error: Service default/broken: spec.ports[0].port: port 0 is out of range 1..=65535\n"
    );
    let plan: Vec<Value> = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(plan.len(), 15);
    assert!(!services(&plan).contains(&"default/broken"));

    let strict = svcroute(&[
        "--config", NODE, "plan", "-f", CLUSTER, "-f", bad, "--strict",
    ]);
    assert_eq!(strict.code, 1);
    assert!(
        strict.stdout.contains("default/echo:http"),
        "the plan is still printed"
    );
}

#[test]
fn undecodable_objects_and_other_kinds() {
    let input = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\n---\n\
                 apiVersion: v1\nkind: Service\nmetadata: {name: typo}\nspec: {clusterIP: 10.96.0.5, ports: [{port: eighty}]}\n---\n\
                 apiVersion: v1\nkind: Service\nmetadata: {name: fine}\nspec: {clusterIP: 10.96.0.6, ports: [{port: 80}]}\n";
    let run = svcroute_with_stdin(&["plan", "-f", "-", "-o", "json"], Some(input));
    assert_eq!(run.code, 0);
    let lines: Vec<&str> = run.stderr.lines().collect();
    assert_eq!(lines.len(), 2, "{}", run.stderr);
    assert!(lines[0].starts_with("warning: <stdin>: document 1: skipping Deployment default/web"));
    assert!(lines[1].starts_with(
        "error: Service default/typo: cannot decode (<stdin>: document 2): invalid type"
    ));
    let plan: Vec<Value> = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(services(&plan), ["default/fine"]);
}

#[test]
fn lists_json_and_directories() {
    let dir = scratch("formats");
    // A typed List as the API returns it: items without kind.
    std::fs::write(
        dir.join("a-services.json"),
        r#"{"apiVersion": "v1", "kind": "ServiceList", "metadata": {}, "items": [
            {"metadata": {"name": "api", "namespace": "prod"},
             "spec": {"clusterIP": "10.96.1.1", "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}}
        ]}"#,
    )
    .unwrap();
    // A JSON stream of two objects, one of them a `kind: List` holding a slice.
    std::fs::write(
        dir.join("b-slices.json"),
        r#"{"apiVersion": "v1", "kind": "List", "items": [
             {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
              "metadata": {"name": "api-1", "namespace": "prod", "labels": {"kubernetes.io/service-name": "api"}},
              "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
              "endpoints": [{"addresses": ["10.244.1.7"], "conditions": {"ready": true}, "nodeName": "node-1"}]}]}
           {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-1", "labels": {"topology.kubernetes.io/zone": "a"}}}"#,
    )
    .unwrap();
    // Multi-document YAML with a nested List.
    std::fs::write(
        dir.join("c.yaml"),
        "---\napiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: List\n  items:\n  - apiVersion: v1\n    kind: Service\n    metadata: {name: db, namespace: prod}\n    spec: {clusterIP: 10.96.1.2, ports: [{port: 5432}]}\n---\n# comment only\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\naddressType: IPv4\nmetadata:\n  name: db-1\n  namespace: prod\n  labels: {kubernetes.io/service-name: db}\nports: [{port: 5432}]\nendpoints:\n- addresses: [10.244.2.9]\n",
    )
    .unwrap();
    std::fs::write(dir.join("notes.txt"), "not read").unwrap();
    let run = svcroute(&[
        "plan",
        "--node-name",
        "node-1",
        "-f",
        dir.to_str().unwrap(),
        "-o",
        "json",
    ]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.stderr, "");
    let plan: Vec<Value> = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(services(&plan), ["prod/api", "prod/db"]);
    assert_eq!(plan[0]["cluster_endpoints"], json!(["10.244.1.7:8080"]));
    assert_eq!(plan[1]["cluster_endpoints"], json!(["10.244.2.9:5432"]));
}

#[test]
fn stdin_input_equals_file_input() {
    let text = std::fs::read_to_string(root().join(CLUSTER)).unwrap();
    let from_stdin = svcroute_with_stdin(
        &["--config", NODE, "plan", "-f", "-", "-o", "json"],
        Some(&text),
    );
    let from_file = svcroute(&["--config", NODE, "plan", "-f", CLUSTER, "-o", "json"]);
    assert_eq!(from_stdin.code, 0);
    assert_eq!(from_stdin.stdout, from_file.stdout);
    let twice = svcroute_with_stdin(&["plan", "-f", "-", "-f", "-"], Some(""));
    assert_eq!(twice.code, 2);
}

#[test]
fn unparseable_files_are_named() {
    let dir = scratch("unparseable");
    let path = dir.join("broken.yaml");
    std::fs::write(
        &path,
        "kind: Node\nmetadata: {name: a}\n---\nkind: Service\nmetadata: {name: [x\n",
    )
    .unwrap();
    let run = svcroute(&["plan", "-f", path.to_str().unwrap()]);
    assert_eq!(run.code, 2);
    assert!(
        run.stderr.starts_with(&format!(
            "error: {}: document 2: cannot parse: ",
            path.display()
        )),
        "{}",
        run.stderr
    );
    assert_eq!(run.stderr.lines().count(), 1);

    let json = dir.join("broken.json");
    std::fs::write(&json, "{\"kind\": \"Node\",").unwrap();
    let run = svcroute(&["plan", "-f", json.to_str().unwrap()]);
    assert_eq!(run.code, 2);
    assert!(
        run.stderr.contains("broken.json: cannot parse"),
        "{}",
        run.stderr
    );

    let binary = dir.join("binary.yaml");
    std::fs::write(&binary, [0xff, 0xfe, 0x00, 0x41]).unwrap();
    let run = svcroute(&["plan", "-f", binary.to_str().unwrap()]);
    assert_eq!(run.code, 2);

    let run = svcroute(&["plan", "-f", "does/not/exist.yaml"]);
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("does/not/exist.yaml"));
}

#[test]
fn flags_override_the_config_file() {
    // As node-2, the eTP=Local and iTP=Local services find other local endpoints.
    let plan = plan_json(&["--node-name", "node-2"]);
    let npl = entry(&plan, "default/echo-nodeport-local", "http", "IPv4");
    assert_eq!(npl["local_endpoints"], json!(["10.244.2.21:8080"]));
    let itl = entry(&plan, "default/echo-internal-local", "http", "IPv4");
    assert_eq!(itl["local_endpoints"], json!(["10.244.2.30:8080"]));
    assert_eq!(itl["when_no_endpoint"], Value::Null);

    // Only IPv4: the IPv6-only service disappears.
    let plan = plan_json(&["--ip-families", "IPv4"]);
    assert!(!services(&plan).contains(&"default/web"));
    assert!(plan.iter().all(|e| e["ip_family"] == "IPv4"));

    // NodePorts on the primary IPs only: no localhost.
    let plan = plan_json(&["--nodeport-addresses", "primary"]);
    let np = entry(&plan, "default/echo-nodeport", "http", "IPv4");
    let nodeport = np["frontends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["type"] == "NodePort")
        .unwrap();
    assert_eq!(nodeport["addresses"], json!(["192.168.10.11:30080"]));

    // --masquerade-all changes traces of pod traffic to ClusterIPs.
    let args = [
        "--config",
        NODE,
        "trace",
        "-f",
        CLUSTER,
        "--from",
        "10.244.1.5",
        "--to",
        "10.96.0.100:80",
        "-o",
        "json",
    ];
    let plain: Value = serde_json::from_str(&svcroute(&args).stdout).unwrap();
    assert_eq!(plain["masquerade"], false);
    let mut all_args = args.to_vec();
    all_args.push("--masquerade-all");
    let all: Value = serde_json::from_str(&svcroute(&all_args).stdout).unwrap();
    assert_eq!(all["masquerade"], true);
}

#[test]
fn config_file_alone_and_kube_proxy_keys() {
    let dir = scratch("config");
    let cfg = dir.join("kube-proxy.yaml");
    std::fs::write(
        &cfg,
        "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\nmode: nftables\n\
         hostnameOverride: node-2\nclusterCIDR: 10.244.0.0/16,fd00:10:244::/56\nnodeIPs: 192.168.10.12\n\
         iptables:\n  masqueradeAll: true\n  syncPeriod: 30s\n",
    )
    .unwrap();
    let run = svcroute(&["--config", cfg.to_str().unwrap(), "plan", "-f", CLUSTER]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stdout.starts_with("node node-2 (192.168.10.12):"),
        "{}",
        run.stdout
    );
}

#[test]
fn invalid_settings_exit_with_status_2() {
    let dir = scratch("bad-settings");
    let cfg = dir.join("typo.yaml");
    std::fs::write(&cfg, "nodeName: node-1\nnodeIp: 192.168.10.11\n").unwrap();
    let run = svcroute(&["--config", cfg.to_str().unwrap(), "plan", "-f", CLUSTER]);
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("nodeIp: unknown key"), "{}", run.stderr);
    assert_eq!(run.stdout, "");

    let cfg = dir.join("bad-ip.yaml");
    std::fs::write(&cfg, "nodeIPs: [192.168.10.11, 300.1.1.1]\n").unwrap();
    let run = svcroute(&["--config", cfg.to_str().unwrap(), "plan", "-f", CLUSTER]);
    assert_eq!(run.code, 2);
    assert!(
        run.stderr
            .contains("nodeIPs[1]: \"300.1.1.1\" is not a valid IP address"),
        "{}",
        run.stderr
    );

    let run = svcroute(&["plan", "-f", CLUSTER, "--node-name", "Not_A_Name"]);
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("nodeName"), "{}", run.stderr);

    for bad in [
        &["plan", "-f", CLUSTER, "--cluster-cidr", "10.0.0.0/40"][..],
        &["plan", "-f", CLUSTER, "--masquerade-bit", "32"],
        &["plan", "-f", CLUSTER, "--ip-families", "IPv5"],
        &["plan", "-f", CLUSTER, "--localhost-nodeports", "maybe"],
        &["plan", "-f", CLUSTER, "--nodeport-addresses", "primary"], // no node IP to be primary
        &["plan"],                                                   // no input
        &["--config", "examples/missing.yaml", "plan", "-f", CLUSTER],
    ] {
        let run = svcroute(bad);
        assert_eq!(run.code, 2, "{bad:?}: {}", run.stderr);
        assert!(run.stderr.starts_with("error"), "{bad:?}: {}", run.stderr);
    }
}

#[test]
fn help_documents_the_config_keys() {
    let run = svcroute(&["--help"]);
    assert_eq!(run.code, 0);
    for command in ["plan", "trace", "render", "apply", "cleanup"] {
        assert!(
            run.stdout.contains(&format!("\n  {command} ")),
            "--help lacks {command}"
        );
    }
    let trace = svcroute(&["trace", "--help"]);
    for flag in [
        "--live",
        "--iptables-mode",
        "iptables",
        "- nft:",
        "nft -j list table",
    ] {
        assert!(trace.stdout.contains(flag), "trace --help lacks {flag}");
    }
    for command in ["render", "apply", "cleanup"] {
        let help = svcroute(&[command, "--help"]);
        for backend in ["- iptables:", "- nft:"] {
            assert!(
                help.stdout.contains(backend),
                "{command} --help lacks {backend}"
            );
        }
    }
    assert!(
        run.stdout.contains("\nBACKENDS"),
        "--help lists the backends"
    );
    let apply = svcroute(&["apply", "--help"]);
    assert!(apply.stdout.contains("--dry-run"));
    for key in [
        "hostnameOverride",
        "nodeIPs",
        "clusterCIDR",
        "masqueradeBit",
        "nodePortAddresses",
        "serviceCIDRs",
        "ipFamilies",
    ] {
        assert!(run.stdout.contains(key), "--help lacks {key}");
    }
}

#[test]
fn nft_apply_trace_live_and_cleanup_in_a_network_namespace() {
    const TEST: &str = "nft_apply_trace_live_and_cleanup_in_a_network_namespace";
    if !is_root() {
        skipped(
            TEST,
            "needs root (it programs nftables in a scratch network namespace)",
        );
        return;
    }
    let ns = match Netns::create() {
        Ok(ns) => ns,
        Err(e) => {
            skipped(TEST, &format!("cannot create a network namespace: {e}"));
            return;
        }
    };
    // Someone else's table: svcroute must leave it alone.
    ns.nft(
        "add table inet other\nadd chain inet other input { type filter hook input priority 0; }\n",
    );
    let theirs = ns.nft_ruleset();
    assert!(theirs.contains("table inet other"), "{theirs}");
    let apply = ["--config", NODE, "apply", "--backend", "nft", "-f", CLUSTER];

    // --dry-run prints the transaction and writes nothing.
    let mut dry = apply.to_vec();
    dry.push("--dry-run");
    let run = ns.run(SVCROUTE, &dry);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stdout
            .starts_with("# nft -f -\nadd table ip svcroute\n"),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("\nadd table ip6 svcroute\n"));
    assert_eq!(ns.nft_ruleset(), theirs, "--dry-run wrote");
    // What it prints (like the golden file) is `nft -f` input as it is: nft accepts it.
    let check = run_program(
        "ip",
        &["netns", "exec", ns.0.as_str(), "nft", "-c", "-f", "-"],
        Some(&run.stdout),
    );
    assert_eq!(check.code, 0, "nft -c -f -: {}", check.stderr);
    assert_eq!(ns.nft_ruleset(), theirs, "nft -c wrote");

    let run = ns.run(SVCROUTE, &apply);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stdout
            .starts_with("nft: programmed 14 service port(s): 1 write(s), "),
        "{}",
        run.stdout
    );
    let applied = ns.nft_ruleset();
    assert!(applied.contains("table ip svcroute {"), "{applied}");
    assert!(applied.contains("table ip6 svcroute {"), "{applied}");
    assert!(
        applied.contains("chain svc-TCOU7JCQXEZGVUNU {"),
        "{applied}"
    );
    assert!(applied.contains("fd00:10:96::c0a"), "IPv6 rules: {applied}");
    assert!(applied.contains("table inet other"), "{applied}");
    // No iptables rules were written.
    assert!(!ns.saved().contains("KUBE-"));

    // Applying again writes the same tables.
    let mut json = apply.to_vec();
    json.extend(["-o", "json"]);
    let run = ns.run(SVCROUTE, &json);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let report: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(report["action"], "apply");
    assert_eq!(report["backend"], "nft");
    assert_eq!(report["mode"], Value::Null, "no iptables mode");
    assert_eq!(report["writes"], 1);
    assert_eq!(report["service_ports"], 14);
    assert_eq!(ns.nft_ruleset(), applied);

    // The live tables trace like the tables rendered for the same objects.
    live_traces_match_rendered(&ns, "nft");

    let run = ns.run(SVCROUTE, &["cleanup", "--backend", "nft"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.stdout, "nft: removed the svcroute tables\n");
    assert_eq!(ns.nft_ruleset(), theirs, "cleanup removes our tables only");

    // Cleaning up again is fine; tracing live then finds no table: nothing matches.
    let run = ns.run(SVCROUTE, &["cleanup", "--backend", "nft", "-o", "json"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let report: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(report, json!({"action": "cleanup", "backend": "nft"}));
    let live = [
        "--config",
        NODE,
        "trace",
        "-f",
        CLUSTER,
        "--packets",
        PACKETS,
        "--backend",
        "nft",
        "-o",
        "json",
        "--live",
    ];
    let empty = ns.run(SVCROUTE, &live);
    assert_eq!(empty.code, 0, "{}", empty.stderr);
    for line in empty.stdout.lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["verdict"], "no-match", "{line}");
    }
}
