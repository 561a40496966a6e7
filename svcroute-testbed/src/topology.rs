//! The namespaces of one test (see the crate docs for the picture), their servers, and the
//! hosts traffic is sent from.

use std::io::{BufRead, BufReader};
use std::net::{IpAddr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use svcroute_core::model::IpFamily;

use crate::run::{ip, run, run_in, sysctl};
use crate::skip::Backend;
use crate::traffic::{Reply, Request};

/// The port every endpoint server listens on (TCP and UDP).
pub const SERVER_PORT: u16 = 8080;

/// The proxy's node name; endpoints placed here are local.
pub const NODE_NAME: &str = "node-a";

/// The node name given to endpoints that are "remote" (physically attached all the same).
pub const REMOTE_NODE: &str = "node-b";

/// Every endpoint pod.
pub const ALL: &[&str] = &["ep1", "ep2", "ep3"];

/// The endpoint pods on this node.
pub const LOCAL: &[&str] = &["ep1", "ep2"];

/// The pods: name, last address byte (`10.244.0.N`, `fd00:244::N`), node name in the
/// EndpointSlices, and whether it runs a server.
const PODS: &[(&str, u8, &str, bool)] = &[
    ("ep1", 11, NODE_NAME, true),
    ("ep2", 12, NODE_NAME, true),
    ("ep3", 13, REMOTE_NODE, true),
    ("client", 100, NODE_NAME, false),
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

/// A name prefix no other test of this process (or another process) uses.
pub(crate) fn unique_prefix() -> String {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    format!(
        "svrk{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
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
    /// Short name (`ep1`, `client`, `node`, `node-lo`, `ext`, `ext-other`); servers answer
    /// with it.
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

/// The namespaces of one test, their servers, and the hosts to send from.
pub struct Topology {
    /// The node (whose rules svcroute programs), as a client: its LAN addresses.
    pub node: Host,
    /// The node as a client from its loopback addresses (`127.0.0.1`, `::1`).
    pub node_loopback: Host,
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
    /// The node, its pods with their servers, and the LAN, for `backend`'s test `test`;
    /// `None` (after printing SKIPPED) when kernel tests cannot run here.
    pub fn new(backend: &Backend, test: &str) -> Option<Topology> {
        Topology::build(backend, test, true)
    }

    /// The node namespace alone (rules only, no traffic).
    pub fn node_only(backend: &Backend, test: &str) -> Option<Topology> {
        Topology::build(backend, test, false)
    }

    fn build(backend: &Backend, test: &str, with_pods: bool) -> Option<Topology> {
        if backend.skip(test) {
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
        let (node_ns, ext_ns) = (format!("{prefix}-node"), format!("{prefix}-ext"));
        // The guard exists before anything is created: a failing step still cleans up.
        let mut topo = Topology {
            node: host("node", &node_ns, "192.168.50.1", "fd00:50::1"),
            node_loopback: host("node-lo", &node_ns, "127.0.0.1", "::1"),
            pods: Vec::new(),
            ext: host("ext", &ext_ns, "192.168.50.2", "fd00:50::2"),
            ext_other: host("ext-other", &ext_ns, "192.168.50.3", "fd00:50::3"),
            namespaces: Vec::new(),
            servers: Vec::new(),
        };
        topo.add_namespace(&node_ns);
        sysctl(
            &node_ns,
            "net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1 \
             net.ipv4.conf.all.send_redirects=0 net.ipv4.conf.default.send_redirects=0",
        );
        if !backend.node_sysctls().trim().is_empty() {
            sysctl(&node_ns, backend.node_sysctls());
        }
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

    /// Runs `program args` in the node namespace; panics when it fails. Returns stdout.
    pub fn run_on_node(&self, program: &str, args: &[&str]) -> String {
        run_in(&self.node.ns, program, args)
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
        out.lines().map(Reply::parse).collect()
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
