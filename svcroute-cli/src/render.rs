//! `svcroute render`: the payloads a backend writes for the objects into a kernel holding none
//! of its rules, per IP family the settings handle. Nothing is read from or written to a
//! kernel; `apply --dry-run` prints its payloads (read against the live rules) the same way.
//!
//! Text: per family, a `# iptables-restore --noflush` comment naming the tool the payload is
//! for, then the payload; families are separated by a blank line. JSON: a list of
//! `{"family", "tool", "payload"}`.

use std::io::Write;

use serde::Serialize;
use svcroute_core::Desired;
use svcroute_core::model::IpFamily;
use svcroute_iptables::apply::render_full;
use svcroute_iptables::kernel::IptablesMode;

use crate::args::{OutputFormat, RulesBackend};
use crate::output::write_json_pretty;

/// One family's payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Payload {
    /// `IPv4` or `IPv6`.
    pub family: IpFamily,
    /// The program that takes it on stdin (with `--noflush`): `iptables-restore`,
    /// `ip6tables-restore`, or a mode's own (`iptables-nft-restore`).
    pub tool: String,
    /// The payload.
    pub payload: String,
}

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
            family,
            tool: tool(family, mode, "restore"),
            payload,
        })
        .collect()
}

/// What `backend` writes for `desired` into a kernel without its rules.
pub fn render(backend: RulesBackend, desired: &Desired) -> Vec<Payload> {
    match backend {
        // Without the nf_tables chain-cache workaround: the payload does not depend on the
        // flavour of the kernel it is fed to.
        RulesBackend::Iptables => payloads(render_full(desired, false), None),
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
        writeln!(out, "# {} --noflush", p.tool)?;
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
}
