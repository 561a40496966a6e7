//! What the iptables backend needs of the test bed's node namespace: its tools, and its
//! iptables-nft rules read and written as `iptables-save` text.

use svcroute_core::model::IpFamily;
use svcroute_iptables::kernel::{IptablesMode, SystemKernel};
use svcroute_testbed::{Backend, Topology, run_in_with_input};

/// The iptables backend: programs the node through iptables-nft and deletes conntrack entries.
pub static IPTABLES: Backend = Backend::new(
    "iptables",
    &[
        "iptables-nft-restore",
        "iptables-nft-save",
        "ip6tables-nft-restore",
        "ip6tables-nft-save",
        "conntrack",
    ],
    "",
);

/// The node namespace's iptables.
pub trait IptablesNode {
    /// The iptables tools of the node namespace.
    fn kernel(&self) -> SystemKernel;

    /// What the node's kernel holds for a family, as `iptables-save` prints it.
    fn save(&self, family: IpFamily) -> String;

    /// Feeds `payload` to `iptables-nft-restore --noflush` in the node namespace.
    fn restore(&self, family: IpFamily, payload: &str);
}

impl IptablesNode for Topology {
    fn kernel(&self) -> SystemKernel {
        SystemKernel::new(IptablesMode::Nft).in_netns(self.node.ns.clone())
    }

    fn save(&self, family: IpFamily) -> String {
        let tool = match family {
            IpFamily::IPv4 => "iptables-nft-save",
            IpFamily::IPv6 => "ip6tables-nft-save",
        };
        self.run_on_node(tool, &[])
    }

    fn restore(&self, family: IpFamily, payload: &str) {
        let tool = match family {
            IpFamily::IPv4 => "iptables-nft-restore",
            IpFamily::IPv6 => "ip6tables-nft-restore",
        };
        run_in_with_input(&self.node.ns, tool, &["--noflush"], payload);
    }
}
