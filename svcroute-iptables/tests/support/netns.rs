//! Network namespaces for the real-kernel tests: a node, endpoint pods running python3
//! servers, a client pod and an external client on "the LAN".
//!
//! ```text
//!  pod namespaces (ep1 ep2 ep3 client)      node namespace                  ext namespace
//!  eth0 10.244.0.N/32 fd00:244::N/128 ─── vpI 10.244.0.1 fd00:244::1
//!  default via 10.244.0.1 / fd00:244::1     10.244.0.N/32 dev vpI (host routes)
//!                                           lan0 192.168.50.1/24 ───────── eth0 192.168.50.2/24
//!                                                fd00:50::1/64                  192.168.50.3/24
//!                                           default via 192.168.50.2            fd00:50::2/64
//!                                                                               fd00:50::3/64
//! ```
//!
//! The external namespace routes the service CIDRs, `203.0.113.0/24` (externalIPs),
//! `198.51.100.0/24` (LB IPs) and `2001:db8::/32` via the node. Every endpoint pod answers on
//! port 8080, TCP and UDP, both families, with its own name. Every namespace name starts
//! with `svrk<pid>-<counter>-`, and [`Topology`]'s `Drop` kills the servers and deletes the
//! namespaces, also when a test panics.

use std::io::{BufRead, BufReader};
use std::net::{IpAddr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use svcroute_core::model::{IpFamily, Protocol};
use svcroute_iptables::kernel::{IptablesMode, SystemKernel};

/// The port every endpoint server listens on (TCP and UDP).
pub const SERVER_PORT: u16 = 8080;

/// The proxy's node name; endpoints placed here are local.
pub const NODE_NAME: &str = "node-a";

/// The node name given to endpoints that are "remote" (physically attached all the same).
pub const REMOTE_NODE: &str = "node-b";

/// The pods: name, last address byte (`10.244.0.N`, `fd00:244::N`), node name in the
/// EndpointSlices, and whether it runs a server.
const PODS: &[(&str, u8, &str, bool)] = &[
    ("ep1", 11, NODE_NAME, true),
    ("ep2", 12, NODE_NAME, true),
    ("ep3", 13, REMOTE_NODE, true),
    ("client", 100, NODE_NAME, false),
];

const TOOLS: &[&str] = &[
    "ip",
    "iptables-nft-restore",
    "iptables-nft-save",
    "ip6tables-nft-restore",
    "ip6tables-nft-save",
    "conntrack",
    "python3",
];

/// Answers every TCP connection and UDP datagram on `[::]:PORT` (both families) with NAME;
/// prints `ready` once listening; exits when its stdin closes (the test process is gone).
const SERVER: &str = r#"
import os, socket, sys, threading
name, port = sys.argv[1].encode(), int(sys.argv[2])
def bound(kind):
    s = socket.socket(socket.AF_INET6, kind)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("::", port))
    return s
tcp, udp = bound(socket.SOCK_STREAM), bound(socket.SOCK_DGRAM)
tcp.listen(512)
def serve_tcp():
    while True:
        conn, _ = tcp.accept()
        try:
            conn.sendall(name)
        except OSError:
            pass
        conn.close()
def serve_udp():
    while True:
        _, peer = udp.recvfrom(2048)
        udp.sendto(name, peer)
for serve in (serve_tcp, serve_udp):
    threading.Thread(target=serve, daemon=True).start()
print("ready", flush=True)
sys.stdin.read()
os._exit(0)
"#;

/// Makes COUNT connections (TCP) or exchanges (connected UDP) to HOST PORT from SRC[:SPORT],
/// printing one line each: the server's answer, TIMEOUT, REFUSED or ERROR <errno>.
const CLIENT: &str = r#"
import socket, sys
proto, host, port, count, timeout, src, sport = sys.argv[1:8]
family = socket.AF_INET6 if ":" in host else socket.AF_INET
kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
for _ in range(int(count)):
    s = socket.socket(family, kind)
    s.settimeout(float(timeout))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind((src, int(sport)))
        s.connect((host, int(port)))
        if proto == "tcp":
            data = b""
            while True:
                chunk = s.recv(256)
                if not chunk:
                    break
                data += chunk
        else:
            s.send(b"hello")
            data = s.recv(256)
        print(data.decode() or "EMPTY", flush=True)
    except socket.timeout:
        print("TIMEOUT", flush=True)
    except ConnectionRefusedError:
        print("REFUSED", flush=True)
    except OSError as e:
        print("ERROR", e.errno, flush=True)
    finally:
        s.close()
"#;

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

/// Runs a command inside a namespace.
pub fn run_in(ns: &str, program: &str, args: &[&str]) -> String {
    let mut full = vec!["netns", "exec", ns, program];
    full.extend_from_slice(args);
    run("ip", &full)
}

/// Runs a command inside a namespace, feeding `input` on stdin.
pub fn run_in_with_input(ns: &str, program: &str, args: &[&str], input: &str) {
    use std::io::Write as _;
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, program])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(input.as_bytes())
        .expect("write stdin");
    let out = child.wait_with_output().expect("wait");
    assert!(
        out.status.success(),
        "`{program}` in {ns} failed: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

/// Runs `ip -n NS COMMAND` (COMMAND split at spaces).
fn ip(ns: &str, command: &str) {
    let mut args = vec!["-n", ns];
    args.extend(command.split_whitespace());
    run("ip", &args);
}

/// Sets `key=value` sysctls (separated by spaces) inside a namespace.
fn sysctl(ns: &str, settings: &str) {
    let mut args = vec!["-qw"];
    args.extend(settings.split_whitespace());
    run_in(ns, "sysctl", &args);
}

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

/// A name prefix no other test of this process (or another process) uses.
fn unique_prefix() -> String {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    format!(
        "svrk{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Why kernel tests cannot run here; `None` when they can.
fn why_skip() -> Option<String> {
    if !is_root() {
        return Some("not running as root".to_string());
    }
    let missing: Vec<&str> = TOOLS.iter().copied().filter(|t| !on_path(t)).collect();
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

/// Whether the test must be skipped; says so loudly on stderr. Set
/// `SVCROUTE_REQUIRE_KERNEL_TESTS=1` to make a skip a failure instead (CI on a root runner).
pub fn skip(test: &str) -> bool {
    static REASON: OnceLock<Option<String>> = OnceLock::new();
    let Some(reason) = REASON.get_or_init(why_skip) else {
        return false;
    };
    if std::env::var_os("SVCROUTE_REQUIRE_KERNEL_TESTS").is_some() {
        panic!("kernel test {test} cannot run: {reason}");
    }
    eprintln!(
        "\n########## SKIPPED kernel test `{test}`: {reason}. These tests need root, ip, \
         iptables-nft, ip6tables-nft, conntrack and python3. ##########\n"
    );
    true
}

/// The python3 interpreter itself (skipping shims such as pyenv's, which cost a shell start).
fn python() -> &'static str {
    static PYTHON: OnceLock<String> = OnceLock::new();
    PYTHON.get_or_init(|| {
        let out = run("python3", &["-c", "import sys; print(sys.executable)"]);
        let path = out.trim();
        if path.is_empty() { "python3" } else { path }.to_string()
    })
}

/// A machine that sends traffic: a namespace and its source address of each family.
#[derive(Debug, Clone)]
pub struct Host {
    /// Short name (`ep1`, `client`, `node`, `ext`, `ext-other`); servers answer with it.
    pub name: String,
    /// Its namespace.
    pub ns: String,
    /// IPv4 address.
    pub v4: IpAddr,
    /// IPv6 address.
    pub v6: IpAddr,
    /// Node name for EndpointSlices (pods only).
    pub node_name: &'static str,
}

impl Host {
    /// Its address of `family`.
    pub fn ip(&self, family: IpFamily) -> IpAddr {
        match family {
            IpFamily::IPv4 => self.v4,
            IpFamily::IPv6 => self.v6,
        }
    }
}

/// What one client attempt got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// The server that answered.
    From(String),
    /// No answer within the timeout.
    Timeout,
    /// `ECONNREFUSED` (a TCP reset or an ICMP port unreachable).
    Refused,
    /// Anything else.
    Error(String),
}

/// Client attempts to make.
#[derive(Debug, Clone, Copy)]
pub struct Request {
    /// TCP connections or UDP exchanges.
    pub protocol: Protocol,
    /// Where to.
    pub destination: SocketAddr,
    /// How many (each from a new source port unless `source_port` is set).
    pub count: usize,
    /// A fixed source port (0: ephemeral).
    pub source_port: u16,
    /// Per-attempt timeout.
    pub timeout: Duration,
}

impl Request {
    /// `count` attempts to `destination` (`IP:PORT` or `[IPv6]:PORT`), 3 s timeout each.
    pub fn new(protocol: Protocol, destination: &str, count: usize) -> Self {
        Request {
            protocol,
            destination: destination
                .parse()
                .unwrap_or_else(|e| panic!("bad destination {destination}: {e}")),
            count,
            source_port: 0,
            timeout: Duration::from_secs(3),
        }
    }

    /// From a fixed source port.
    pub fn source_port(mut self, port: u16) -> Self {
        self.source_port = port;
        self
    }

    /// With another per-attempt timeout.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The family of the destination.
    pub fn family(&self) -> IpFamily {
        IpFamily::of(&self.destination.ip())
    }
}

/// The namespaces of one test, their servers, and the hosts to send from.
pub struct Topology {
    /// The node (whose rules svcroute programs), as a client: its LAN addresses.
    pub node: Host,
    /// Endpoint pods (`ep1`, `ep2`, `ep3`) and the `client` pod.
    pub pods: Vec<Host>,
    /// The external client (`192.168.50.2`, `fd00:50::2`).
    pub ext: Host,
    /// A second external client address in the same namespace (`192.168.50.3`, `fd00:50::3`).
    pub ext_other: Host,
    namespaces: Vec<String>,
    servers: Vec<Child>,
}

impl Topology {
    /// The node, its pods with their servers, and the LAN; `None` (after printing SKIPPED)
    /// when kernel tests cannot run here.
    pub fn new(test: &str) -> Option<Topology> {
        Topology::build(test, true)
    }

    /// The node namespace alone (rules only, no traffic).
    pub fn node_only(test: &str) -> Option<Topology> {
        Topology::build(test, false)
    }

    fn build(test: &str, with_pods: bool) -> Option<Topology> {
        if skip(test) {
            return None;
        }
        let prefix = unique_prefix();
        let host = |name: &str, ns: &str, a: &str, b: &str| Host {
            name: name.to_string(),
            ns: ns.to_string(),
            v4: a.parse().expect("IPv4 literal"),
            v6: b.parse().expect("IPv6 literal"),
            node_name: NODE_NAME,
        };
        let ext_ns = format!("{prefix}-ext");
        // The guard exists before anything is created: a failing step still cleans up.
        let mut topo = Topology {
            node: host(
                "node",
                &format!("{prefix}-node"),
                "192.168.50.1",
                "fd00:50::1",
            ),
            pods: Vec::new(),
            ext: host("ext", &ext_ns, "192.168.50.2", "fd00:50::2"),
            ext_other: host("ext-other", &ext_ns, "192.168.50.3", "fd00:50::3"),
            namespaces: Vec::new(),
            servers: Vec::new(),
        };
        let node = topo.node.ns.clone();
        topo.add_namespace(&node);
        sysctl(
            &node,
            "net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1 \
             net.ipv4.conf.all.send_redirects=0 net.ipv4.conf.default.send_redirects=0",
        );
        if !with_pods {
            return Some(topo);
        }
        topo.add_lan();
        for (i, &(name, n, node_name, _)) in PODS.iter().enumerate() {
            let ns = format!("{prefix}-{name}");
            let (a, b) = (format!("10.244.0.{n}"), format!("fd00:244::{n}"));
            let pod = Host {
                node_name,
                ..host(name, &ns, &a, &b)
            };
            topo.add_pod(&pod, &format!("vp{i}"));
            topo.pods.push(pod);
        }
        topo.start_servers();
        Some(topo)
    }

    /// Creates a namespace (recorded for deletion first), with loopback up and without
    /// IPv6 duplicate address detection, so addresses are usable at once.
    fn add_namespace(&mut self, ns: &str) {
        self.namespaces.push(ns.to_string());
        run("ip", &["netns", "add", ns]);
        ip(ns, "link set lo up");
        sysctl(
            ns,
            "net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0",
        );
    }

    fn add_lan(&mut self) {
        let (node, ext) = (self.node.ns.clone(), self.ext.ns.clone());
        self.add_namespace(&ext);
        ip(
            &node,
            &format!("link add lan0 type veth peer name eth0 netns {ext}"),
        );
        ip(&node, "addr add 192.168.50.1/24 dev lan0");
        ip(&node, "addr add fd00:50::1/64 dev lan0 nodad");
        ip(&node, "link set lan0 up");
        // Node-originated traffic to service IPs needs a route (and picks the LAN address).
        ip(&node, "route add default via 192.168.50.2");
        ip(&node, "-6 route add default via fd00:50::2");
        ip(&ext, "addr add 192.168.50.2/24 dev eth0");
        ip(&ext, "addr add 192.168.50.3/24 dev eth0");
        ip(&ext, "addr add fd00:50::2/64 dev eth0 nodad");
        ip(&ext, "addr add fd00:50::3/64 dev eth0 nodad");
        ip(&ext, "link set eth0 up");
        for net in ["10.96.0.0/16", "203.0.113.0/24", "198.51.100.0/24"] {
            ip(&ext, &format!("route add {net} via 192.168.50.1"));
        }
        for net in ["fd00:96::/108", "2001:db8::/32"] {
            ip(&ext, &format!("-6 route add {net} via fd00:50::1"));
        }
    }

    /// A pod on a routed veth: `/32` and `/128` host routes on the node side, a default route
    /// via the node's gateway address (the same on every veth) on the pod side.
    fn add_pod(&mut self, pod: &Host, veth: &str) {
        let (node, ns) = (self.node.ns.clone(), pod.ns.clone());
        self.add_namespace(&ns);
        let (v4, v6) = (pod.v4, pod.v6);
        ip(
            &node,
            &format!("link add {veth} type veth peer name eth0 netns {ns}"),
        );
        ip(&node, &format!("addr add 10.244.0.1/32 dev {veth}"));
        ip(&node, &format!("addr add fd00:244::1/128 dev {veth} nodad"));
        ip(&node, &format!("link set {veth} up"));
        ip(&node, &format!("route add {v4}/32 dev {veth}"));
        ip(&node, &format!("-6 route add {v6}/128 dev {veth}"));
        ip(&ns, &format!("addr add {v4}/32 dev eth0"));
        ip(&ns, &format!("addr add {v6}/128 dev eth0 nodad"));
        ip(&ns, "link set eth0 up");
        ip(&ns, "route add 10.244.0.1 dev eth0");
        ip(&ns, "route add default via 10.244.0.1 dev eth0");
        ip(&ns, "-6 route add fd00:244::1 dev eth0");
        ip(&ns, "-6 route add default via fd00:244::1 dev eth0");
    }

    /// Starts a server in every endpoint pod and waits (10 s at most) until all listen.
    fn start_servers(&mut self) {
        let (tx, rx) = mpsc::channel();
        let servers: Vec<Host> = PODS
            .iter()
            .filter(|p| p.3)
            .map(|p| self.pod(p.0).clone())
            .collect();
        for pod in &servers {
            let port = SERVER_PORT.to_string();
            let mut child = Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    &pod.ns,
                    python(),
                    "-c",
                    SERVER,
                    &pod.name,
                    &port,
                ])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .expect("start a server");
            let stdout = child.stdout.take().expect("stdout is piped");
            self.servers.push(child);
            let (tx, name) = (tx.clone(), pod.name.clone());
            std::thread::spawn(move || {
                let mut line = String::new();
                let _ = BufReader::new(stdout).read_line(&mut line);
                let _ = tx.send((name, line.trim() == "ready"));
            });
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        for _ in &servers {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok((_, true)) => {}
                Ok((name, false)) => panic!("the server in {name} did not start"),
                Err(_) => panic!("servers not listening after 10 s"),
            }
        }
    }

    /// The pod called `name`.
    pub fn pod(&self, name: &str) -> &Host {
        self.pods
            .iter()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("no pod {name}"))
    }

    /// The iptables tools of the node namespace.
    pub fn kernel(&self) -> SystemKernel {
        SystemKernel::new(IptablesMode::Nft).in_netns(self.node.ns.clone())
    }

    /// What the node's kernel holds for a family, as `iptables-save` prints it.
    pub fn save(&self, family: IpFamily) -> String {
        let tool = match family {
            IpFamily::IPv4 => "iptables-nft-save",
            IpFamily::IPv6 => "ip6tables-nft-save",
        };
        run_in(&self.node.ns, tool, &[])
    }

    /// Feeds `payload` to `iptables-nft-restore --noflush` in the node namespace.
    pub fn restore(&self, family: IpFamily, payload: &str) {
        let tool = match family {
            IpFamily::IPv4 => "iptables-nft-restore",
            IpFamily::IPv6 => "ip6tables-nft-restore",
        };
        run_in_with_input(&self.node.ns, tool, &["--noflush"], payload);
    }

    /// Makes the attempts of `request` from `from`, bound to its address of the
    /// destination's family.
    pub fn send(&self, from: &Host, request: &Request) -> Vec<Reply> {
        let source = from.ip(request.family()).to_string();
        let args = [
            request.protocol.lower().to_string(),
            request.destination.ip().to_string(),
            request.destination.port().to_string(),
            request.count.to_string(),
            request.timeout.as_secs_f64().to_string(),
            source,
            request.source_port.to_string(),
        ];
        let mut full = vec!["-c", CLIENT];
        full.extend(args.iter().map(String::as_str));
        let out = run_in(&from.ns, python(), &full);
        out.lines()
            .map(|line| match line.trim() {
                "TIMEOUT" => Reply::Timeout,
                "REFUSED" => Reply::Refused,
                l if l.starts_with("ERROR") => Reply::Error(l.to_string()),
                l => Reply::From(l.to_string()),
            })
            .collect()
    }

    /// The endpoint address (server port included) of the pod that sent `reply`, in
    /// `family`; panics on anything but an answer.
    pub fn endpoint_of(&self, reply: &Reply, family: IpFamily) -> SocketAddr {
        match reply {
            Reply::From(name) => SocketAddr::new(self.pod(name).ip(family), SERVER_PORT),
            other => panic!("expected an answer, got {other:?}"),
        }
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for server in &mut self.servers {
            let _ = server.kill();
            let _ = server.wait();
        }
        for ns in self.namespaces.iter().rev() {
            match Command::new("ip").args(["netns", "del", ns]).output() {
                Ok(out) if out.status.success() => {}
                Ok(out) => eprintln!(
                    "cannot delete namespace {ns}: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
                Err(e) => eprintln!("cannot delete namespace {ns}: {e}"),
            }
        }
    }
}
