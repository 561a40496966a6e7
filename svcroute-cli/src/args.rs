//! The command line: global options (input, node settings, output) and the subcommands.
//!
//! Every global option works before or after the subcommand (`global = true`). Node settings
//! are named after kube-proxy's flags; the same settings can come from a `--config` file (see
//! [`CONFIG_HELP`]), and flags override it.

use std::net::IpAddr;
use std::path::PathBuf;

use clap::{ArgGroup, Args, Parser, Subcommand, ValueEnum};

use crate::backend::BackendChoice;
use crate::settings::{parse_cidr, parse_family, parse_label, parse_nodeport_addresses};

/// Text appended to `--help`: the config file keys and exit statuses.
pub const CONFIG_HELP: &str = "\
CONFIG FILE (--config FILE, YAML or JSON; flags override it)
  Keys follow kube-proxy's KubeProxyConfiguration where one exists, so a kube-proxy config file
  can be given as is (its other keys are ignored; unknown keys are an error):
    key (or alternative)          value               flag
    nodeName | hostnameOverride   string              --node-name
    nodeIPs | nodeIP              list or \"a,b\"       --node-ip
    nodeLabels                    map or \"k=v,...\"    --node-labels
    clusterCIDRs | clusterCIDR    list or \"a,b\"       --cluster-cidr
    masqueradeAll                 bool                --masquerade-all       (or iptables.masqueradeAll)
    masqueradeBit                 0..=31              --masquerade-bit       (or iptables.masqueradeBit)
    nodePortAddresses             list or \"a,b\"       --nodeport-addresses   (CIDRs, or [primary])
    localhostNodePorts            bool                --localhost-nodeports  (or iptables.localhostNodePorts)
    serviceCIDRs | serviceCIDR    list or \"a,b\"       --service-cidr
    ipFamilies                    list or \"a,b\"       --ip-families          (IPv4, IPv6)

INPUT
  Objects as `kubectl get ... -o yaml|json` prints them: single objects, Lists (`kind: List`,
  `ServiceList`, ...), multi-document YAML, JSON. Kinds read: Service (v1), EndpointSlice
  (discovery.k8s.io/v1), Node (v1); others are skipped with a warning. An invalid object is
  reported on stderr (`error: Service ns/name: field: problem`) and the others still route.

EXIT STATUS
  0  success (invalid objects are reported but tolerated unless --strict)
  1  --strict and an object was rejected; `trace --backend all` found backends disagreeing;
     a packet could not be traced; `apply` or `cleanup` could not read or program the kernel
  2  invalid command line, settings or config file; unreadable or unparseable input

BACKENDS (--backend)
  reference  the core's decision (trace only)
  memory     the conformance suite's in-memory dataplane (trace only)
  iptables   kube-proxy's iptables chains, written with `iptables-restore --noflush`
             (every command; --iptables-mode picks the tools)
  nft        svcroute's own nftables tables `ip svcroute`, `ip6 svcroute` (and shards
             `svcroute-N` beyond 1,024 service ports), written in one atomic `nft -f -`
             transaction (every command)
  all        every backend above side by side (trace only)";

/// `svcroute`: plan and trace Kubernetes Service routing for one node.
#[derive(Debug, Parser)]
#[command(
    name = "svcroute",
    version,
    about = "Plan, trace and program Kubernetes Service routing for one node, from kubectl output.",
    long_about = "Plan, trace and program Kubernetes Service routing for one node, from kubectl \
        output.\n\n\
        Reads Services, EndpointSlices and Nodes (-f), resolves them exactly as kube-proxy \
        would on the node described by the node settings, and prints the routing of every \
        service port (`plan`), the fate of given packets (`trace`) or the rules a dataplane \
        backend writes (`render`); `apply` and `cleanup` program this node's kernel.",
    after_long_help = CONFIG_HELP
)]
pub struct Cli {
    /// Options shared by every subcommand.
    #[command(flatten)]
    pub global: GlobalArgs,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Options every subcommand accepts, before or after its name.
#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// Read objects from FILE (YAML or JSON); a directory reads its *.yaml, *.yml and *.json;
    /// `-` reads stdin. Repeatable.
    #[arg(short = 'f', long = "filename", value_name = "FILE", global = true)]
    pub files: Vec<PathBuf>,
    /// Exit with status 1 if any object was rejected (`apply` then writes nothing).
    #[arg(long, global = true)]
    pub strict: bool,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = OutputFormat::Text, global = true)]
    pub output: OutputFormat,
    /// This node's settings.
    #[command(flatten)]
    pub node: NodeArgs,
}

/// The node and proxy settings, named after kube-proxy's flags.
#[derive(Debug, Default, Args)]
#[command(next_help_heading = "Node settings (override --config)")]
pub struct NodeArgs {
    /// Read node settings from FILE (YAML or JSON; keys listed in --help).
    #[arg(long, value_name = "FILE", global = true)]
    pub config: Option<PathBuf>,
    /// This node's name (default `node`); endpoints with this nodeName are local.
    #[arg(
        long,
        visible_alias = "hostname-override",
        value_name = "NAME",
        global = true
    )]
    pub node_name: Option<String>,
    /// A node IP; the first of each family is the primary. Repeatable or comma-separated.
    #[arg(
        long = "node-ip",
        value_name = "IP",
        value_delimiter = ',',
        global = true
    )]
    pub node_ips: Vec<IpAddr>,
    /// This node's labels, `k=v,...` (a Node object of this name replaces them).
    #[arg(long, value_name = "K=V,...", value_delimiter = ',', value_parser = parse_label, global = true)]
    pub node_labels: Vec<(String, String)>,
    /// Pod CIDR whose traffic counts as local (the local-traffic detector). Repeatable or
    /// comma-separated.
    #[arg(long = "cluster-cidr", value_name = "CIDR", value_delimiter = ',', value_parser = parse_cidr, global = true)]
    pub cluster_cidrs: Vec<ipnet::IpNet>,
    /// Masquerade all ClusterIP traffic (`--masquerade-all=false` turns a config's off).
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true,
          default_missing_value = "true", global = true)]
    pub masquerade_all: Option<bool>,
    /// Bit of the packet mark that requests masquerade (default 14: 0x4000).
    #[arg(long, visible_alias = "iptables-masquerade-bit", value_name = "N",
          value_parser = clap::value_parser!(u8).range(0..=31), global = true)]
    pub masquerade_bit: Option<u8>,
    /// Node addresses that accept NodePorts: CIDRs, or `primary` (default: all node IPs).
    #[arg(long, value_name = "CIDR,...|primary", value_parser = parse_nodeport_addresses, global = true)]
    pub nodeport_addresses: Option<svcroute_core::model::NodePortAddresses>,
    /// Whether NodePorts answer on 127.0.0.1 (IPv4 only; default true).
    #[arg(
        long,
        visible_alias = "iptables-localhost-nodeports",
        value_name = "BOOL",
        global = true
    )]
    pub localhost_nodeports: Option<bool>,
    /// Service CIDR: unallocated addresses in it are dropped. Repeatable or comma-separated.
    #[arg(long = "service-cidr", value_name = "CIDR", value_delimiter = ',', value_parser = parse_cidr, global = true)]
    pub service_cidrs: Vec<ipnet::IpNet>,
    /// IP families to program (default: IPv4,IPv6). Repeatable or comma-separated.
    #[arg(long, value_name = "IPv4,IPv6", value_delimiter = ',', value_parser = parse_family, global = true)]
    pub ip_families: Vec<svcroute_core::model::IpFamily>,
}

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// Human-readable.
    Text,
    /// JSON (plan, render: one list; trace: one object per packet, one per line; apply,
    /// cleanup: one object).
    Json,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print the resolved routing of this node: one entry per service port and IP family.
    Plan,
    /// Explain what happens to packets arriving at this node.
    Trace(TraceArgs),
    /// Print what a dataplane backend writes for the objects into a kernel holding none of its
    /// rules (touches no kernel).
    Render(RenderArgs),
    /// Program this node's kernel with the objects' routing (needs root).
    Apply(ApplyArgs),
    /// Remove everything svcroute programmed with a backend from this node's kernel: iptables,
    /// every chain with kube-proxy's names; nft, svcroute's tables (needs root; reads no
    /// objects).
    Cleanup(CleanupArgs),
}

/// A dataplane backend that writes rules (`render`, `apply`, `cleanup`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RulesBackend {
    /// kube-proxy's iptables chains, written with `iptables-restore --noflush`.
    Iptables,
    /// svcroute's nftables tables (`ip svcroute`, `ip6 svcroute` and their shards
    /// `svcroute-N`), written with `nft -f -`.
    Nft,
}

impl RulesBackend {
    /// The name `--backend` takes.
    pub fn name(self) -> &'static str {
        match self {
            RulesBackend::Iptables => "iptables",
            RulesBackend::Nft => "nft",
        }
    }
}

/// `--iptables-mode`: which iptables tools read and program the kernel.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum IptablesModeArg {
    /// The flavour of the system's `iptables` (`iptables --version`), as kube-proxy picks it.
    #[default]
    Auto,
    /// iptables over nf_tables (`iptables-nft-restore`, ...).
    Nft,
    /// The legacy x_tables interface (`iptables-legacy-restore`, ...).
    Legacy,
}

/// `svcroute render`.
#[derive(Debug, Args)]
pub struct RenderArgs {
    /// Whose rules to print.
    #[arg(long, value_enum)]
    pub backend: RulesBackend,
}

/// `svcroute apply`.
#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// Which backend programs the kernel.
    #[arg(long, value_enum)]
    pub backend: RulesBackend,
    /// Print what would be written and write nothing (iptables: the payloads computed against
    /// the kernel's current rules; nft: the full-sync transaction, which replaces our tables
    /// whatever they hold).
    #[arg(long)]
    pub dry_run: bool,
    /// Which iptables tools program the kernel (iptables only; default auto).
    #[arg(long, value_enum, value_name = "MODE")]
    pub iptables_mode: Option<IptablesModeArg>,
}

/// `svcroute cleanup`.
#[derive(Debug, Args)]
pub struct CleanupArgs {
    /// Whose rules to remove.
    #[arg(long, value_enum)]
    pub backend: RulesBackend,
    /// Which iptables tools program the kernel (iptables only; default auto).
    #[arg(long, value_enum, value_name = "MODE")]
    pub iptables_mode: Option<IptablesModeArg>,
}

/// `svcroute trace`.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("what").required(true).args(["from", "packets"])))]
pub struct TraceArgs {
    /// Source address of the packet.
    #[arg(long, value_name = "SRC", requires = "to")]
    pub from: Option<String>,
    /// Destination of the packet: `ADDR:PORT[/tcp|udp|sctp]`, IPv6 as `[ADDR]:PORT` (TCP by
    /// default).
    #[arg(long, value_name = "DST:PORT[/PROTO]", requires = "from")]
    pub to: Option<String>,
    /// Trace every packet in FILE (`-` = stdin): one `SRC DST:PORT/PROTO` per line; `#`
    /// comments and blank lines are skipped.
    #[arg(long, value_name = "FILE|-", conflicts_with_all = ["from", "to"])]
    pub packets: Option<PathBuf>,
    /// Which backend traces: the core's reference decision, a dataplane after a full sync
    /// (on a fake kernel: nothing is touched), or all of them side by side (exit status 1 when
    /// they disagree).
    #[arg(long, value_enum, default_value_t = BackendChoice::Reference)]
    pub backend: BackendChoice,
    /// Trace through the rules this node's kernel holds now (needs `--backend iptables`,
    /// read with `iptables-save`, or `--backend nft`, read with `nft -j list table`; and
    /// root). Objects (-f) are then optional: they only name the service a packet is
    /// addressed to; the node settings still give the node IPs.
    #[arg(long)]
    pub live: bool,
    /// With --live --backend iptables: which iptables tools read the kernel (default auto).
    #[arg(long, value_enum, value_name = "MODE", requires = "live")]
    pub iptables_mode: Option<IptablesModeArg>,
}
