//! `svcroute render`: the payloads a backend writes for the objects into a kernel holding none
//! of its rules. Nothing is read from or written to a kernel; `apply --dry-run` prints its
//! payloads the same way.
//!
//! - iptables: one `iptables-restore --noflush` payload per IP family the settings handle.
//! - nft: one `nft -f -` transaction holding both families (`family` is `null`): the
//!   full-sync transaction, which replaces our table of each family whatever it holds.
//!
//! Text: per payload, a comment naming the command it is for (`# iptables-restore
//! --noflush`, `# nft -f -`), then the payload; payloads are separated by a blank line. JSON:
//! a list of `{"family", "tool", "payload"}`.

use std::io::Write;

use serde::Serialize;
use svcroute_core::Desired;
use svcroute_core::model::IpFamily;
use svcroute_iptables::kernel::IptablesMode;
use svcroute_nft::transaction::Transaction;

use crate::args::{OutputFormat, RulesBackend};
use crate::output::write_json_pretty;

/// One payload: a family's (iptables) or both families' (nft).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Payload {
    /// `IPv4` or `IPv6`; `None` (`null`) when it holds both (nft).
    pub family: Option<IpFamily>,
    /// The program that takes it on stdin: `iptables-restore`, `ip6tables-restore`, a mode's
    /// own (`iptables-nft-restore`), all with `--noflush`; or `nft` (with `-f -`).
    pub tool: String,
    /// The tool's arguments, for the text form's comment (`--noflush`, `-f -`).
    #[serde(skip)]
    pub args: &'static str,
    /// The payload.
    pub payload: String,
}

/// The command `nft` payloads are for, after `nft`.
pub const NFT_ARGS: &str = "-f -";

/// The name of an iptables tool: `iptables-save`, `ip6tables-restore`, or with a mode
/// `iptables-nft-restore`, `ip6tables-legacy-save`.
pub fn tool(family: IpFamily, mode: Option<IptablesMode>, verb: &str) -> String {
    let base = match family {
        IpFamily::IPv4 => "iptables",
        IpFamily::IPv6 => "ip6tables",
    };
    match mode {
        Some(mode) => format!("{base}-{}-{verb}", mode.as_str()),
        None => format!("{base}-{verb}"),
    }
}

/// Names each `(family, payload)` with the restore tool of `mode` (the generic one if `None`).
pub fn payloads(families: Vec<(IpFamily, String)>, mode: Option<IptablesMode>) -> Vec<Payload> {
    families
        .into_iter()
        .map(|(family, payload)| Payload {
            family: Some(family),
            tool: tool(family, mode, "restore"),
            args: "--noflush",
            payload,
        })
        .collect()
}

/// The one payload of an nftables transaction (both families, for `nft -f -`).
pub fn nft_payload(transaction: &Transaction) -> Vec<Payload> {
    vec![Payload {
        family: None,
        tool: "nft".to_string(),
        args: NFT_ARGS,
        payload: transaction.text(),
    }]
}

/// What `backend` writes for `desired` into a kernel without its rules.
pub fn render(backend: RulesBackend, desired: &Desired) -> Vec<Payload> {
    match backend {
        // Without the nf_tables chain-cache workaround: the payload does not depend on the
        // flavour of the kernel it is fed to.
        RulesBackend::Iptables => {
            payloads(svcroute_iptables::apply::render_full(desired, false), None)
        }
        // The full sync does not depend on what the kernel holds: this is what `apply` runs.
        RulesBackend::Nft => nft_payload(&svcroute_nft::apply::render_full(
            desired,
            &svcroute_nft::Options::default(),
        )),
    }
}

/// Writes payloads as text or JSON (see the module docs).
pub fn write(
    out: &mut dyn Write,
    format: OutputFormat,
    payloads: &[Payload],
) -> std::io::Result<()> {
    if format == OutputFormat::Json {
        return write_json_pretty(out, &payloads);
    }
    for (i, p) in payloads.iter().enumerate() {
        if i > 0 {
            writeln!(out)?;
        }
        writeln!(out, "# {} {}", p.tool, p.args)?;
        out.write_all(p.payload.as_bytes())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tool_names() {
        assert_eq!(tool(IpFamily::IPv4, None, "restore"), "iptables-restore");
        assert_eq!(
            tool(IpFamily::IPv6, Some(IptablesMode::Legacy), "save"),
            "ip6tables-legacy-save"
        );
    }

    #[test]
    fn text_names_the_tool_before_each_payload() {
        let p = payloads(
            vec![
                (IpFamily::IPv4, "*nat\nCOMMIT\n".to_string()),
                (IpFamily::IPv6, "*filter\nCOMMIT\n".to_string()),
            ],
            None,
        );
        let mut out = Vec::new();
        write(&mut out, OutputFormat::Text, &p).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "# iptables-restore --noflush\n*nat\nCOMMIT\n\n\
             # ip6tables-restore --noflush\n*filter\nCOMMIT\n"
        );
    }

    #[test]
    fn nft_is_one_transaction_for_both_families() {
        use std::sync::Arc;
        use svcroute_core::model::ProxyConfig;

        let desired = Desired::new(Arc::new(ProxyConfig::default()));
        let p = render(RulesBackend::Nft, &desired);
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].family, None);
        assert!(p[0].payload.starts_with("add table ip svcroute\n"));
        assert!(p[0].payload.contains("\nadd table ip6 svcroute\n"));
        let mut out = Vec::new();
        write(&mut out, OutputFormat::Text, &p).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text, format!("# nft -f -\n{}", p[0].payload));
        let mut json = Vec::new();
        write(&mut json, OutputFormat::Json, &p).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(
            v,
            serde_json::json!([{"family": null, "tool": "nft", "payload": p[0].payload}])
        );
    }
}
