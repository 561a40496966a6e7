//! Applies the benchmark workloads to a real kernel, inside a network namespace this binary
//! creates and deletes: a cold full sync, then one-endpoint changes. Prints wall time and
//! payload bytes (see `BENCHMARKS.md`). Needs root, `ip` and `iptables-nft-restore`.
//!
//! ```text
//! cargo bench -p svcroute-iptables --bench kernel                # every workload
//! cargo bench -p svcroute-iptables --bench kernel -- 10000x10    # workloads whose id matches
//! cargo bench -p svcroute-iptables --bench kernel -- --naive 2000x10
//! cargo bench -p svcroute-iptables --bench kernel -- --legacy
//! ```
//!
//! `--naive` turns off the iptables-nft chain-cache workaround (`svcroute_iptables::payload`)
//! to show what a plain `--noflush` restore costs; `--legacy` uses iptables-legacy.

#[allow(dead_code)]
#[path = "../../svcroute-core/benches/common/mod.rs"]
mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use svcroute_core::Dataplane;
use svcroute_core::watch::Event;
use svcroute_iptables::kernel::IptablesMode;
use svcroute_iptables::{IptablesDataplane, Options, SystemKernel};

use common::{Workload, flip_first_endpoint};

const WORKLOADS: [Workload; 6] = [
    Workload::new(100, 10),
    Workload::new(1_000, 10),
    Workload::new(2_000, 10),
    Workload::new(5_000, 10),
    Workload::new(10_000, 10),
    Workload::new(5_000, 50),
];

/// Endpoint changes measured per workload.
const CHANGES: usize = 9;

/// A network namespace deleted on drop.
struct Netns(String);

impl Netns {
    fn new(name: String) -> Self {
        let ok = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "cannot create network namespace {name} (root needed)");
        Netns(name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn run(w: Workload, mode: IptablesMode, options: Options, runtime: &tokio::runtime::Runtime) {
    let ns = Netns::new(format!("svcroute-bench-{}", std::process::id()));
    let mut state = w.build_state();
    let kernel = SystemKernel::new(mode).in_netns(ns.0.clone());
    let mut dp = IptablesDataplane::with_options(Box::new(kernel), options);

    let start = Instant::now();
    let report = runtime
        .block_on(dp.sync_full(state.desired()))
        .expect("full sync");
    let full = start.elapsed();

    // Even changes take the endpoint out (not ready), odd ones put it back.
    let original = w.slice(w.changed_index());
    let flipped = flip_first_endpoint(&original);
    let mut removals = Vec::new();
    let mut additions = Vec::new();
    for i in 0..CHANGES {
        let slice = if i % 2 == 0 {
            flipped.clone()
        } else {
            original.clone()
        };
        let start = Instant::now();
        state.apply(Event::Apply(slice)).expect("valid slice");
        let changes = state.take_changes();
        let r = runtime
            .block_on(dp.apply(state.desired(), &changes))
            .expect("apply");
        let sample = (start.elapsed(), r.bytes);
        if i % 2 == 0 {
            removals.push(sample);
        } else {
            additions.push(sample);
        }
    }
    let summary = |samples: &[(Duration, usize)]| {
        let times: Vec<Duration> = samples.iter().map(|s| s.0).collect();
        let max = times.iter().max().map_or(0.0, |d| d.as_secs_f64() * 1e3);
        format!(
            "{:>6.1} ms (max {:>6.1}), {:>5} B",
            median(times).as_secs_f64() * 1e3,
            max,
            samples.iter().map(|s| s.1).max().unwrap_or(0)
        )
    };
    println!(
        "{:>9} {:>6}: full sync {:>6.2} s, {:>10} B; endpoint out: {}; endpoint back: {}",
        w.id(),
        mode.as_str(),
        full.as_secs_f64(),
        report.bytes,
        summary(&removals),
        summary(&additions),
    );
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let naive = args.iter().any(|a| a == "--naive");
    let mode = if args.iter().any(|a| a == "--legacy") {
        IptablesMode::Legacy
    } else {
        IptablesMode::Nft
    };
    let filters: Vec<&String> = args.iter().filter(|a| !a.starts_with("--")).collect();
    let options = Options {
        chain_cache_workaround: !naive,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("tokio runtime");
    println!(
        "iptables kernel sync ({}{}), {CHANGES} changes per workload",
        mode.as_str(),
        if naive {
            ", naive: no chain-cache workaround"
        } else {
            ""
        }
    );
    for w in WORKLOADS {
        if filters.is_empty() || filters.iter().any(|f| w.id() == **f) {
            run(w, mode, options, &runtime);
        }
    }
}
