//! Memory per endpoint of a built [`svcroute_core::State`] (see `BENCHMARKS.md`).
//!
//! Two measures, each workload in a fresh child process so nothing freed by one run is counted
//! by the next:
//! - **heap**: bytes the State holds on the heap, exactly, from a counting global allocator
//!   (requested sizes; the allocator's per-allocation overhead is not included, so the live
//!   allocation count is reported too);
//! - **RSS**: the growth of anonymous resident memory (`RssAnon`), allocator overhead and free
//!   space included.
//!
//! Objects are generated and applied one at a time and changes are taken every 256 Services,
//! so the input objects and change sets are dropped as they go: what remains is the state.
//!
//! - `cargo bench -p svcroute-core --bench memory`: the 10,000×10 and 5,000×50 workloads
//!   (and, for reference, 100×10 and 1,000×10).
//! - Without `--bench` (as `cargo test --benches` runs it): a quick check on 100×10.
//! - `memory --child <id>`: measures one workload in this process and prints one line.
//! - `memory --leak <id>`: builds one workload and leaks the state, for an exact heap count
//!   under `valgrind --leak-check=full` or `heaptrack` (the leaked bytes are the state's).

// The counting allocator below needs `unsafe impl GlobalAlloc`; it only forwards to the system
// allocator and adds atomic counters. Nothing else in this crate uses unsafe code.
#![allow(unsafe_code)]

// Each bench binary uses only part of the shared generator.
#[allow(dead_code)]
mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::process::{Command, ExitCode};
use std::sync::atomic::{AtomicUsize, Ordering};

use common::{WORKLOADS, Workload};

/// Target from the issue: bytes of memory per endpoint.
const TARGET_BYTES_PER_ENDPOINT: f64 = 300.0;

/// Live heap bytes and live allocations.
static LIVE_BYTES: AtomicUsize = AtomicUsize::new(0);
static LIVE_ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

/// The system allocator, counting what is live.
struct Counting;

// SAFETY: every method forwards to `System` with the caller's arguments unchanged, so the
// caller's guarantees carry over; the counters have no effect on the memory handed out.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as is (see above).
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            LIVE_BYTES.fetch_add(layout.size(), Ordering::Relaxed);
            LIVE_ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded as is (see above).
        unsafe { System.dealloc(ptr, layout) };
        LIVE_BYTES.fetch_sub(layout.size(), Ordering::Relaxed);
        LIVE_ALLOCATIONS.fetch_sub(1, Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded as is (see above).
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            LIVE_BYTES.fetch_add(new_size, Ordering::Relaxed);
            LIVE_BYTES.fetch_sub(layout.size(), Ordering::Relaxed);
        }
        new
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn live() -> (usize, usize) {
    (
        LIVE_BYTES.load(Ordering::Relaxed),
        LIVE_ALLOCATIONS.load(Ordering::Relaxed),
    )
}

/// One workload's measurement.
struct Report {
    workload: Workload,
    rss_delta: u64,
    heap_delta: usize,
    allocations: usize,
    endpoints: usize,
    service_ports: usize,
}

impl Report {
    fn heap_per_endpoint(&self) -> f64 {
        self.heap_delta as f64 / self.endpoints as f64
    }

    fn rss_per_endpoint(&self) -> f64 {
        self.rss_delta as f64 / self.endpoints as f64
    }

    /// `id rss_delta heap_delta allocations endpoints service_ports`, as a child prints it.
    fn line(&self) -> String {
        format!(
            "{} {} {} {} {} {}",
            self.workload.id(),
            self.rss_delta,
            self.heap_delta,
            self.allocations,
            self.endpoints,
            self.service_ports
        )
    }

    fn parse(line: &str) -> Option<Self> {
        let mut it = line.split_whitespace();
        let workload = find(it.next()?)?;
        Some(Report {
            workload,
            rss_delta: it.next()?.parse().ok()?,
            heap_delta: it.next()?.parse().ok()?,
            allocations: it.next()?.parse().ok()?,
            endpoints: it.next()?.parse().ok()?,
            service_ports: it.next()?.parse().ok()?,
        })
    }
}

/// The workload named `id` (e.g. `10000x10`).
fn find(id: &str) -> Option<Workload> {
    WORKLOADS.into_iter().find(|w| w.id() == id)
}

/// Anonymous resident memory of this process, in bytes.
fn rss_anon() -> Result<u64, String> {
    let status = std::fs::read_to_string("/proc/self/status")
        .map_err(|e| format!("/proc/self/status: {e}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("RssAnon:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .ok_or_else(|| "no RssAnon in /proc/self/status".to_string())
}

/// Builds `w` in this process and measures it.
fn measure(w: Workload) -> Result<Report, String> {
    // Warm the allocator and lazily initialised runtime state outside the measurement.
    drop(Workload::new(10, 10).build_state());
    let before = rss_anon()?;
    let (heap_before, allocations_before) = live();
    let state = w.build_state();
    let (heap_after, allocations_after) = live();
    let after = rss_anon()?;
    let stats = state.stats();
    let report = Report {
        workload: w,
        rss_delta: after.saturating_sub(before),
        heap_delta: heap_after.saturating_sub(heap_before),
        allocations: allocations_after.saturating_sub(allocations_before),
        endpoints: stats.endpoints,
        service_ports: stats.service_ports,
    };
    drop(state);
    Ok(report)
}

/// Measures `w` in a fresh child process.
fn measure_in_child(w: Workload) -> Result<Report, String> {
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let out = Command::new(exe)
        .args(["--child", &w.id()])
        .output()
        .map_err(|e| format!("spawning the {} child: {e}", w.id()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!(
            "{} child failed ({}): {}{}",
            w.id(),
            out.status,
            stdout,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Report::parse(stdout.trim())
        .ok_or_else(|| format!("{}: unreadable child output {stdout:?}", w.id()))
}

fn run(args: &[String]) -> Result<(), String> {
    let workload_arg = |i: usize| -> Result<Workload, String> {
        let id = args.get(i).ok_or("missing workload id")?;
        find(id).ok_or_else(|| format!("unknown workload {id}"))
    };
    if let Some(i) = args.iter().position(|a| a == "--child") {
        println!("{}", measure(workload_arg(i + 1)?)?.line());
        return Ok(());
    }
    if let Some(i) = args.iter().position(|a| a == "--leak") {
        let state = workload_arg(i + 1)?.build_state();
        println!("{:?}", state.stats());
        std::mem::forget(state);
        return Ok(());
    }
    let full = args.iter().any(|a| a == "--bench");
    let workloads: Vec<Workload> = if full {
        WORKLOADS.to_vec()
    } else {
        vec![WORKLOADS[0]]
    };
    println!(
        "{:<10} {:>10} {:>14} {:>13} {:>13} {:>11} {:>8}",
        "workload", "endpoints", "service ports", "heap B/ep", "allocs/ep", "RSS B/ep", "target"
    );
    let mut missed = Vec::new();
    for w in workloads {
        let r = measure_in_child(w)?;
        if r.endpoints != w.endpoint_count() || r.service_ports != w.services {
            return Err(format!(
                "{}: state holds {} endpoints and {} service ports, expected {} and {}",
                w.id(),
                r.endpoints,
                r.service_ports,
                w.endpoint_count(),
                w.services
            ));
        }
        let verdict = if r.heap_per_endpoint() <= TARGET_BYTES_PER_ENDPOINT {
            "pass"
        } else {
            missed.push(w.id());
            "MISS"
        };
        println!(
            "{:<10} {:>10} {:>14} {:>13.1} {:>13.2} {:>11.1} {:>8}",
            w.id(),
            r.endpoints,
            r.service_ports,
            r.heap_per_endpoint(),
            r.allocations as f64 / r.endpoints as f64,
            r.rss_per_endpoint(),
            verdict
        );
    }
    if !missed.is_empty() {
        println!(
            "target of {TARGET_BYTES_PER_ENDPOINT} B/endpoint missed by: {}",
            missed.join(", ")
        );
    }
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("memory: {e}");
            ExitCode::FAILURE
        }
    }
}
