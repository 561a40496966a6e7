//! What the nftables backend needs of the test bed's node namespace: its tools, its `nft`
//! (our tables read back as the backend reads them, raw `nft` commands as another program
//! would run them), and iptables-nft for the rules of "someone else".

use svcroute_core::model::IpFamily;
use svcroute_nft::ruleset::Set;
use svcroute_nft::{Kernel as _, SystemKernel, Table, names};
use svcroute_testbed::{Backend, Topology, run_in_with_input, try_run_in_with_input};

/// The nftables backend: programs the node through `nft` and deletes conntrack entries; the
/// tests install foreign rules with iptables-nft. Its node routes DNATed loopback traffic
/// (`route_localnet`, as kube-proxy sets it), so localhost NodePorts answer.
pub static NFT: Backend = Backend::new(
    "nft",
    &[
        "nft",
        "conntrack",
        "iptables-nft-restore",
        "iptables-nft-save",
        "ip6tables-nft-restore",
        "ip6tables-nft-save",
    ],
    "net.ipv4.conf.all.route_localnet=1",
);

/// The node namespace's nftables.
pub trait NftNode {
    /// The `nft` and `conntrack` of the node namespace.
    fn kernel(&self) -> SystemKernel;

    /// Our common table of `family` as the kernel holds it (`nft -j list table`, read by the
    /// backend's own reader).
    fn our_table(&self, family: IpFamily) -> Option<Table>;

    /// Every table of ours of `family` as the kernel holds it, with its name: the common table
    /// first, then the shards.
    fn our_tables(&self, family: IpFamily) -> Vec<(String, Table)>;

    /// Set `set` of the first of our tables of `family` that has it, with the table's name.
    fn our_set(&self, family: IpFamily, set: &str) -> Option<(String, Set)> {
        self.our_tables(family)
            .into_iter()
            .find_map(|(name, mut t)| t.sets.remove(set).map(|s| (name, s)))
    }

    /// `nft list ruleset` of the node: every table, ours and anyone else's.
    fn ruleset(&self) -> String;

    /// The node's tables, one `table FAMILY NAME` line each, sorted.
    fn tables(&self) -> Vec<String>;

    /// Runs `script` with `nft -f -` in the node, as another program would; panics when nft
    /// refuses it.
    fn nft(&self, script: &str);

    /// Runs `script` with `nft -f -` in the node: nft's stderr when it refuses it.
    fn try_nft(&self, script: &str) -> Result<(), String>;

    /// What the node's iptables-nft holds for a family, as `iptables-save` prints it.
    fn iptables_save(&self, family: IpFamily) -> String;

    /// Feeds `payload` to `iptables-nft-restore --noflush` in the node namespace.
    fn iptables_restore(&self, family: IpFamily, payload: &str);
}

impl NftNode for Topology {
    fn kernel(&self) -> SystemKernel {
        SystemKernel::new().in_netns(self.node.ns.clone())
    }

    fn our_table(&self, family: IpFamily) -> Option<Table> {
        self.kernel()
            .list_table(family, names::TABLE)
            .unwrap_or_else(|e| panic!("cannot read our {family:?} table: {e}"))
    }

    fn our_tables(&self, family: IpFamily) -> Vec<(String, Table)> {
        svcroute_nft::kernel::list_ours(&mut self.kernel(), names::TABLE, family)
            .unwrap_or_else(|e| panic!("cannot read our {family:?} tables: {e}"))
    }

    fn ruleset(&self) -> String {
        self.run_on_node("nft", &["list", "ruleset"])
    }

    fn tables(&self) -> Vec<String> {
        let mut tables: Vec<String> = self
            .run_on_node("nft", &["list", "tables"])
            .lines()
            .map(|l| l.trim().to_string())
            .filter(|l| !l.is_empty())
            .collect();
        tables.sort();
        tables
    }

    fn nft(&self, script: &str) {
        run_in_with_input(&self.node.ns, "nft", &["-f", "-"], script);
    }

    fn try_nft(&self, script: &str) -> Result<(), String> {
        try_run_in_with_input(&self.node.ns, "nft", &["-f", "-"], script).map(|_| ())
    }

    fn iptables_save(&self, family: IpFamily) -> String {
        let tool = match family {
            IpFamily::IPv4 => "iptables-nft-save",
            IpFamily::IPv6 => "ip6tables-nft-save",
        };
        self.run_on_node(tool, &[])
    }

    fn iptables_restore(&self, family: IpFamily, payload: &str) {
        let tool = match family {
            IpFamily::IPv4 => "iptables-nft-restore",
            IpFamily::IPv6 => "ip6tables-nft-restore",
        };
        run_in_with_input(&self.node.ns, tool, &["--noflush"], payload);
    }
}
