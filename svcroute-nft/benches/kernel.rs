//! Applies the benchmark workloads to a real kernel, inside network namespaces this binary
//! creates and deletes: a cold full sync, then one-endpoint changes (wall time and
//! transaction bytes: an endpoint out and back, which changes the pool's size, and an
//! endpoint moved to another address), and first-packet latency: new TCP connections per second to one
//! service with few or many services programmed. Needs root, `ip` and `nft` (see
//! `BENCHMARKS.md`).
//!
//! ```text
//! cargo bench -p svcroute-nft --bench kernel                 # every sync workload
//! cargo bench -p svcroute-nft --bench kernel -- 5000x50      # workloads whose id matches
//! cargo bench -p svcroute-nft --bench kernel -- --latency    # connections/s, 10 vs 10,000
//! cargo bench -p svcroute-nft --bench kernel -- --nft-only   # changes with `nft -f` only
//! cargo bench -p svcroute-nft --bench kernel -- --ports-per-shard=1024 ...  # other shards
//! ```
//!
//! Changes start once the kernel has settled after the full sync (it frees the objects of a
//! large transaction in the background for a while), so they measure a node in steady state.
//!
//! For `--latency` both namespace pairs (10 and 10,000 services) exist at once and their
//! rounds alternate. The binary runs itself inside the namespaces as a TCP server
//! (`--serve ADDR`) and as the client (`--connect ADDR COUNT`), so neither side is slower
//! than the dataplane it measures.

#[allow(dead_code)]
#[path = "../../svcroute-core/benches/common/mod.rs"]
mod common;
#[path = "../../svcroute-core/benches/common/kernel.rs"]
mod kernel_bench;

use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use svcroute_core::model::api;
use svcroute_core::watch::Event;
use svcroute_core::{Dataplane, State};
use svcroute_nft::{NftDataplane, Options, SystemKernel};

use common::Workload;
use kernel_bench::Netns;

const WORKLOADS: [Workload; 6] = [
    Workload::new(100, 10),
    Workload::new(1_000, 10),
    Workload::new(5_000, 10),
    Workload::new(10_000, 10),
    Workload::new(5_000, 50),
    Workload::new(10_000, 50),
];

/// Endpoint changes measured per workload.
const CHANGES: usize = 21;

/// How long the kernel gets to settle after a full sync before changes are measured.
const SETTLE: Duration = Duration::from_secs(3);

/// Runs `program` in the namespace; panics when it fails.
fn run_in(ns: &Netns, program: &str, args: &[&str]) {
    let ok = Command::new("ip")
        .args(["netns", "exec", &ns.0, program])
        .args(args)
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "{program} {args:?} failed in {}", ns.0);
}

fn sync(w: Workload, nft_only: bool, options: &Options, runtime: &tokio::runtime::Runtime) {
    let ns = Netns::new(format!("svcroute-nftbench-{}", std::process::id()));
    let mut state = w.build_state();
    let mut kernel = SystemKernel::new().in_netns(ns.0.clone());
    if nft_only {
        kernel = kernel.nft_only();
    }
    let mut dp = NftDataplane::with_options(Box::new(kernel), options.clone());

    let start = Instant::now();
    let report = runtime
        .block_on(dp.sync_full(state.desired()))
        .expect("full sync");
    let full = start.elapsed();
    std::thread::sleep(SETTLE);

    let mut changes = |change| {
        kernel_bench::endpoint_changes(&w, &mut state, change, CHANGES, |desired, changes| {
            runtime
                .block_on(dp.apply(desired, changes))
                .expect("apply")
                .bytes
        })
    };
    let (out, back) = changes(kernel_bench::EndpointChange::Readiness);
    let (moved, _) = changes(kernel_bench::EndpointChange::Address);
    println!(
        "{:>9}: full sync {:>6.2} s, {:>10} B; endpoint out: {}; endpoint back: {}; \
         endpoint moved: {}",
        w.id(),
        full.as_secs_f64(),
        report.bytes,
        out,
        back,
        moved,
    );
}

/// The probe service: ClusterIP 10.96.255.254:80 → the pod's 10.99.0.2:8080.
fn probe_objects() -> (api::Service, api::EndpointSlice) {
    let service = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "probe", "namespace": "bench"},
        "spec": {"clusterIP": "10.96.255.254", "ports": [{"name": "http", "port": 80}]}
    }))
    .expect("probe service");
    let slice = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "probe-1", "namespace": "bench",
                     "labels": {"kubernetes.io/service-name": "probe"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["10.99.0.2"], "conditions": {"ready": true}}],
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]
    }))
    .expect("probe slice");
    (service, slice)
}

/// A node namespace programmed with the probe service and `services` others, a pod
/// namespace running the probe's server, joined by a veth pair.
struct LatencyBed {
    node: Netns,
    _pod: Netns,
    server: Child,
    _dataplane: NftDataplane,
}

impl Drop for LatencyBed {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}

impl LatencyBed {
    fn new(
        tag: &str,
        services: usize,
        options: &Options,
        runtime: &tokio::runtime::Runtime,
    ) -> Self {
        let pid = std::process::id();
        let node = Netns::new(format!("svcroute-nftlat-{tag}-node-{pid}"));
        let pod = Netns::new(format!("svcroute-nftlat-{tag}-pod-{pid}"));
        let (node_if, pod_if) = (format!("svl{tag}-n"), format!("svl{tag}-p"));
        let ok = Command::new("ip")
            .args(["link", "add", &node_if, "netns", &node.0, "type", "veth"])
            .args(["peer", "name", &pod_if, "netns", &pod.0])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "cannot create the veth pair");
        run_in(
            &node,
            "ip",
            &["addr", "add", "10.99.0.1/24", "dev", &node_if],
        );
        run_in(&node, "ip", &["link", "set", &node_if, "up"]);
        run_in(&node, "ip", &["link", "set", "lo", "up"]);
        run_in(
            &node,
            "ip",
            &["route", "add", "10.96.0.0/12", "dev", &node_if],
        );
        run_in(&node, "sysctl", &["-qw", "net.ipv4.tcp_tw_reuse=1"]);
        run_in(&pod, "ip", &["addr", "add", "10.99.0.2/24", "dev", &pod_if]);
        run_in(&pod, "ip", &["link", "set", &pod_if, "up"]);
        run_in(&pod, "ip", &["link", "set", "lo", "up"]);

        let w = Workload::new(services, 10);
        let mut state: State = w.build_state();
        let (service, slice) = probe_objects();
        state.apply(Event::Apply(service)).expect("probe service");
        state.apply(Event::Apply(slice)).expect("probe slice");
        state.take_changes();
        let kernel = SystemKernel::new().in_netns(node.0.clone());
        let mut dataplane = NftDataplane::with_options(Box::new(kernel), options.clone());
        runtime
            .block_on(dataplane.sync_full(state.desired()))
            .expect("full sync");

        let me = std::env::current_exe().expect("own path");
        let server = Command::new("ip")
            .args(["netns", "exec", &pod.0])
            .arg(&me)
            .args(["--serve", "10.99.0.2:8080"])
            .spawn()
            .expect("server");
        std::thread::sleep(Duration::from_millis(300));
        LatencyBed {
            node,
            _pod: pod,
            server,
            _dataplane: dataplane,
        }
    }

    /// One round: connections per second from the node to the probe service.
    fn round(&self) -> f64 {
        const COUNT: &str = "4000";
        let me = std::env::current_exe().expect("own path");
        let out = Command::new("ip")
            .args(["netns", "exec", &self.node.0])
            .arg(&me)
            .args(["--connect", "10.96.255.254:80", COUNT])
            .stderr(Stdio::inherit())
            .output()
            .expect("client");
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("client prints connections per second")
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Connections per second with 10 and with 10,000 services programmed: both beds exist at
/// once and their rounds alternate, so a slower moment of the machine hits both alike.
fn latency(options: &Options, runtime: &tokio::runtime::Runtime) -> (f64, f64) {
    const ROUNDS: usize = 21;
    let few = LatencyBed::new("a", 10, options, runtime);
    let many = LatencyBed::new("b", 10_000, options, runtime);
    let (mut few_rates, mut many_rates) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        few_rates.push(few.round());
        many_rates.push(many.round());
    }
    (median(few_rates), median(many_rates))
}

/// `--serve ADDR`: accepts connections and closes them, forever.
fn serve(addr: &str) {
    let listener = TcpListener::bind(addr).expect("bind");
    for stream in listener.incoming() {
        drop(stream);
    }
}

/// `--connect ADDR COUNT`: opens COUNT connections one after the other, waits for the
/// server's close on each, prints connections per second.
fn connect(addr: &str, count: usize) {
    let addr: SocketAddr = addr.parse().expect("address");
    let start = Instant::now();
    let mut buf = [0u8; 1];
    for _ in 0..count {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).expect("connect");
        let _ = s.read(&mut buf);
    }
    println!("{:.0}", count as f64 / start.elapsed().as_secs_f64());
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    match args.first().map(String::as_str) {
        Some("--serve") => return serve(&args[1]),
        Some("--connect") => return connect(&args[1], args[2].parse().expect("count")),
        _ => {}
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("tokio runtime");
    let mut options = Options::default();
    if let Some(n) = args
        .iter()
        .find_map(|a| a.strip_prefix("--ports-per-shard="))
    {
        options.ports_per_shard = n.parse().expect("--ports-per-shard=N");
    }
    if args.iter().any(|a| a == "--latency") {
        let (few, many) = latency(&options, &runtime);
        println!(
            "first-packet (median of alternating rounds): {few:.0} connections/s with 10 \
             services, {many:.0} with 10,000: ratio {:.3}",
            many / few
        );
        return;
    }
    let filters: Vec<&String> = args.iter().filter(|a| !a.starts_with("--")).collect();
    let nft_only = args.iter().any(|a| a == "--nft-only");
    let path = if nft_only {
        "nft -f only"
    } else {
        "netlink fast path"
    };
    println!(
        "nft kernel sync, {CHANGES} changes per workload, {path}, {} service ports per shard",
        options.ports_per_shard
    );
    for w in WORKLOADS {
        if filters.is_empty() || filters.iter().any(|f| w.id() == **f) {
            sync(w, nft_only, &options, &runtime);
        }
    }
}
