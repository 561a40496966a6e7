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
// Only the readiness change is measured for iptables (see BENCHMARKS.md).
#[allow(dead_code)]
#[path = "../../svcroute-core/benches/common/kernel.rs"]
mod kernel_bench;

use std::time::Instant;

use svcroute_core::Dataplane;
use svcroute_iptables::kernel::IptablesMode;
use svcroute_iptables::{IptablesDataplane, Options, SystemKernel};

use common::Workload;
use kernel_bench::Netns;

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

    let (out, back) = kernel_bench::endpoint_changes(
        &w,
        &mut state,
        kernel_bench::EndpointChange::Readiness,
        CHANGES,
        |desired, changes| {
            runtime
                .block_on(dp.apply(desired, changes))
                .expect("apply")
                .bytes
        },
    );
    println!(
        "{:>9} {:>6}: full sync {:>6.2} s, {:>10} B; endpoint out: {}; endpoint back: {}",
        w.id(),
        mode.as_str(),
        full.as_secs_f64(),
        report.bytes,
        out,
        back,
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
