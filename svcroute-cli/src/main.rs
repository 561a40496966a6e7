//! `svcroute`: plan, trace and program Kubernetes Service routing for one node, from objects
//! as `kubectl get -o yaml|json` prints them.
//!
//! ```text
//! svcroute --config examples/node.yaml plan -f examples/cluster.yaml
//! svcroute --config examples/node.yaml trace -f examples/cluster.yaml --from 10.244.1.5 --to 10.96.0.100:80
//! svcroute --config examples/node.yaml trace -f examples/cluster.yaml --packets examples/packets.txt -o json
//! svcroute --config examples/node.yaml render --backend iptables -f examples/cluster.yaml
//! svcroute --config examples/node.yaml apply --backend iptables -f examples/cluster.yaml
//! svcroute --config examples/node.yaml trace --backend iptables --live --packets examples/packets.txt
//! svcroute cleanup --backend iptables
//! svcroute --config examples/node.yaml render --backend nft -f examples/cluster.yaml
//! svcroute --config examples/node.yaml apply --backend nft -f examples/cluster.yaml
//! svcroute --config examples/node.yaml trace --backend nft --live --packets examples/packets.txt
//! svcroute cleanup --backend nft
//! ```
//!
//! Flow: [`args`] (command line) → [`settings`] (flags + `--config` → `ProxyConfig`) →
//! [`input`] (files → API objects) → [`cluster`] (objects → core `State`) → [`plan`],
//! [`trace`] (through a [`backend`], or the [`live`] rules), [`render`] or [`apply`] → stdout;
//! warnings and rejected objects go to stderr.

#![forbid(unsafe_code)]

mod apply;
mod args;
mod backend;
mod cluster;
mod error;
mod input;
mod live;
mod output;
mod plan;
mod render;
mod settings;
mod trace;

use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::process::ExitCode;

use clap::Parser;
use svcroute_core::model::ProxyConfig;
use svcroute_core::{Desired, Packet};

use args::{Cli, Command, GlobalArgs, IptablesModeArg, OutputFormat, RulesBackend, TraceArgs};
use backend::BackendChoice;
use cluster::Cluster;
use error::{CliError, EXIT_PROBLEMS};
use input::Loaded;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) if e.is_broken_pipe() => ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(io::stderr(), "error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// Runs the command; returns the exit status.
fn run(cli: &Cli) -> Result<u8, CliError> {
    let global = &cli.global;
    let config = settings::resolve(&global.node)?;
    check_usage(cli)?;
    let cluster = load(global, &cli.command, config)?;
    let desired = cluster.state.desired();
    let refused = global.strict && cluster.rejected > 0;

    let stdout = io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    let mut status = 0;
    match &cli.command {
        Command::Plan => {
            let entries = plan::plan(desired);
            match global.output {
                OutputFormat::Json => output::write_json_pretty(&mut out, &entries)?,
                OutputFormat::Text => plan::write_text(&mut out, desired.config(), &entries)?,
            }
        }
        Command::Trace(args) => {
            status = run_trace(&mut out, global.output, desired, args)?;
        }
        Command::Render(args) => {
            render::write(
                &mut out,
                global.output,
                &render::render(args.backend, desired),
            )?;
        }
        // --strict with rejected objects: nothing is written (reported below).
        Command::Apply(args) if refused && !args.dry_run => {}
        Command::Apply(args) => apply::apply(&mut out, global.output, desired, args)?,
        Command::Cleanup(args) => apply::cleanup(&mut out, global.output, args)?,
    }
    out.flush()?;
    if refused {
        let nothing = match &cli.command {
            Command::Apply(args) if !args.dry_run => ": nothing applied",
            _ => "",
        };
        let _ = writeln!(
            io::stderr(),
            "error: {} object(s) rejected (--strict){nothing}",
            cluster.rejected
        );
        status = EXIT_PROBLEMS;
    }
    Ok(status)
}

/// Usage errors clap cannot see.
fn check_usage(cli: &Cli) -> Result<(), CliError> {
    let iptables_mode_needs_iptables = |backend: RulesBackend, mode: Option<IptablesModeArg>| {
        if backend != RulesBackend::Iptables && mode.is_some() {
            return Err(CliError::Usage(format!(
                "--iptables-mode picks the iptables tools: it does not apply to --backend {}",
                backend.name()
            )));
        }
        Ok(())
    };
    let args = match &cli.command {
        Command::Trace(args) => args,
        Command::Apply(args) => {
            return iptables_mode_needs_iptables(args.backend, args.iptables_mode);
        }
        Command::Cleanup(args) => {
            return iptables_mode_needs_iptables(args.backend, args.iptables_mode);
        }
        _ => return Ok(()),
    };
    if args.live && !matches!(args.backend, BackendChoice::Iptables | BackendChoice::Nft) {
        return Err(CliError::Usage(
            "--live traces the rules this node's kernel holds: it needs --backend iptables or \
             --backend nft"
                .into(),
        ));
    }
    if args.live && args.backend == BackendChoice::Nft && args.iptables_mode.is_some() {
        return Err(CliError::Usage(
            "--iptables-mode picks the iptables tools: it does not apply to --backend nft".into(),
        ));
    }
    if let Some(p) = &args.packets
        && p.as_os_str() == "-"
        && cli.global.files.iter().any(|f| f.as_os_str() == "-")
    {
        return Err(CliError::Usage(
            "stdin cannot hold both objects (-f -) and packets (--packets -)".into(),
        ));
    }
    Ok(())
}

/// The state of the objects given with -f. `cleanup` reads none, and `trace --live` may be
/// given none (the live rules are the truth): they get an empty state, without warnings.
fn load(global: &GlobalArgs, command: &Command, config: ProxyConfig) -> Result<Cluster, CliError> {
    let reads_objects = !matches!(command, Command::Cleanup(_));
    let optional = matches!(command, Command::Trace(args) if args.live);
    if !reads_objects || (optional && global.files.is_empty()) {
        return cluster::build(config, Loaded::default(), &mut io::sink());
    }
    if global.files.is_empty() {
        return Err(CliError::Usage(
            "no input: give objects with -f FILE (a directory, or - for stdin)".into(),
        ));
    }
    let loaded = input::load(&global.files)?;
    cluster::build(config, loaded, &mut io::stderr())
}

/// `svcroute trace`; returns the exit status.
fn run_trace(
    out: &mut dyn Write,
    format: OutputFormat,
    desired: &Desired,
    args: &TraceArgs,
) -> Result<u8, CliError> {
    let backends = if args.live && args.backend == BackendChoice::Nft {
        vec![live::open_nft(
            svcroute_nft::SystemKernel::new(),
            desired.config(),
        )]
    } else if args.live {
        let kernel = apply::system_kernel(args.iptables_mode.unwrap_or_default())?;
        vec![live::open(kernel, desired.config())]
    } else {
        args.backend
            .kinds()
            .into_iter()
            .map(|kind| backend::open(kind, desired))
            .collect::<Result<Vec<_>, _>>()?
    };
    let run = trace::TraceRun {
        format,
        desired,
        backends: &backends,
        compare: args.backend == BackendChoice::All,
    };
    let mut summary = trace::TraceSummary::default();
    let mut bad_lines = 0;
    match (&args.packets, &args.from, &args.to) {
        (Some(path), _, _) => {
            let name = input::display_name(path);
            let read_err = |source| CliError::Read {
                path: name.clone(),
                source,
            };
            let mut reader: Box<dyn BufRead> = if path.as_os_str() == "-" {
                Box::new(io::stdin().lock())
            } else {
                Box::new(BufReader::new(File::open(path).map_err(read_err)?))
            };
            trace::for_each_line(&mut reader, &name, |line, text| {
                match text.parse::<Packet>() {
                    Ok(packet) => trace::trace_one(out, &run, &packet, &mut summary)?,
                    Err(e) => {
                        bad_lines += 1;
                        let _ = writeln!(io::stderr(), "error: {name}:{line}: {e}");
                    }
                }
                Ok(())
            })?;
        }
        (None, Some(from), Some(to)) => {
            let packet: Packet = format!("{from} {to}")
                .parse()
                .map_err(|e| CliError::Usage(format!("{e}")))?;
            trace::trace_one(out, &run, &packet, &mut summary)?;
        }
        _ => {
            return Err(CliError::Usage(
                "give --from SRC --to DST:PORT, or --packets FILE".into(),
            ));
        }
    }
    if summary.disagreements > 0 {
        let _ = writeln!(
            io::stderr(),
            "error: backends disagree on {} of {} packet(s)",
            summary.disagreements,
            summary.packets
        );
    }
    let problems = summary.errors + summary.disagreements + bad_lines;
    Ok(if problems > 0 { EXIT_PROBLEMS } else { 0 })
}
