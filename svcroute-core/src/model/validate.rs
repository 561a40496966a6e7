//! Shared field checks: names, addresses, ports, list sizes.

use std::net::IpAddr;

use ipnet::IpNet;

use super::{IpFamily, ObjectKind, Problem, Protocol, ValidationError};

/// Longest DNS-1123 label (namespaces, port names, Service names).
pub const MAX_LABEL: usize = 63;
/// Longest DNS-1123 subdomain (EndpointSlice and Node names).
pub const MAX_SUBDOMAIN: usize = 253;

/// Names the object being validated, so every error can say which one it is about.
pub(crate) struct Ctx {
    pub kind: ObjectKind,
    pub object: String,
}

impl Ctx {
    pub fn new(kind: ObjectKind, namespace: Option<&str>, name: Option<&str>) -> Self {
        let name = name.filter(|n| !n.is_empty()).unwrap_or("?");
        let object = match namespace {
            Some(ns) => format!("{ns}/{name}"),
            None => name.to_string(),
        };
        Ctx { kind, object }
    }

    pub fn err(&self, field: impl Into<String>, problem: Problem) -> ValidationError {
        ValidationError {
            kind: self.kind,
            object: self.object.clone(),
            field: field.into(),
            problem,
        }
    }

    pub fn ip(&self, field: &str, value: &str) -> Result<IpAddr, ValidationError> {
        value
            .trim()
            .parse()
            .map_err(|_| self.err(field, Problem::InvalidIp(truncated(value))))
    }

    pub fn ip_of(
        &self,
        field: &str,
        value: &str,
        family: IpFamily,
    ) -> Result<IpAddr, ValidationError> {
        let ip = self.ip(field, value)?;
        if IpFamily::of(&ip) != family {
            return Err(self.err(
                field,
                Problem::WrongFamily {
                    value: ip.to_string(),
                    expected: family,
                },
            ));
        }
        Ok(ip)
    }

    pub fn cidr(&self, field: &str, value: &str) -> Result<IpNet, ValidationError> {
        let value = value.trim();
        let net: Result<IpNet, _> = value.parse();
        match net {
            Ok(n) => Ok(n.trunc()),
            // A bare address is accepted as a host route, as Kubernetes' own parsing does.
            Err(_) => value
                .parse::<IpAddr>()
                .map(IpNet::from)
                .map_err(|_| self.err(field, Problem::InvalidCidr(truncated(value)))),
        }
    }

    pub fn port(&self, field: &str, value: i64) -> Result<u16, ValidationError> {
        match u16::try_from(value) {
            Ok(p) if p != 0 => Ok(p),
            _ => Err(self.err(field, Problem::PortOutOfRange(value))),
        }
    }

    pub fn protocol(&self, field: &str, value: Option<&str>) -> Result<Protocol, ValidationError> {
        match value {
            None | Some("") => Ok(Protocol::Tcp),
            Some(s) => match s {
                "TCP" => Ok(Protocol::Tcp),
                "UDP" => Ok(Protocol::Udp),
                "SCTP" => Ok(Protocol::Sctp),
                _ => Err(self.err(field, Problem::UnknownProtocol(truncated(s)))),
            },
        }
    }

    pub fn max_len<T>(&self, field: &str, list: &[T], max: usize) -> Result<(), ValidationError> {
        if list.len() > max {
            return Err(self.err(
                field,
                Problem::TooMany {
                    len: list.len(),
                    max,
                },
            ));
        }
        Ok(())
    }

    /// A DNS-1123 label: lower-case alphanumerics and '-', starting and ending alphanumeric.
    pub fn dns_label(&self, field: &str, value: &str) -> Result<(), ValidationError> {
        self.name_syntax(field, value, MAX_LABEL, false, "DNS-1123 label")
    }

    /// A DNS-1123 subdomain: dot-separated labels, at most 253 characters.
    pub fn dns_subdomain(&self, field: &str, value: &str) -> Result<(), ValidationError> {
        self.name_syntax(field, value, MAX_SUBDOMAIN, true, "DNS-1123 subdomain")
    }

    fn name_syntax(
        &self,
        field: &str,
        value: &str,
        max: usize,
        dots: bool,
        what: &'static str,
    ) -> Result<(), ValidationError> {
        if value.is_empty() {
            return Err(self.err(field, Problem::Missing));
        }
        if value.len() > max {
            return Err(self.err(
                field,
                Problem::TooLong {
                    len: value.len(),
                    max,
                },
            ));
        }
        let ok = value.split('.').all(|part| {
            let b = part.as_bytes();
            !b.is_empty()
                && b.len() <= MAX_LABEL
                && b.iter()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
                && b[0] != b'-'
                && b[b.len() - 1] != b'-'
        }) && (dots || !value.contains('.'));
        if !ok {
            return Err(self.err(
                field,
                Problem::InvalidName {
                    value: truncated(value),
                    what,
                },
            ));
        }
        Ok(())
    }

    /// A label key: optional DNS subdomain prefix and '/', then a name of at most 63
    /// alphanumerics, '-', '_' or '.', starting and ending alphanumeric.
    pub fn label_key(&self, field: &str, value: &str) -> Result<(), ValidationError> {
        let (prefix, name) = match value.rsplit_once('/') {
            Some((p, n)) => (Some(p), n),
            None => (None, value),
        };
        if let Some(p) = prefix {
            self.dns_subdomain(field, p)?;
        }
        let b = name.as_bytes();
        let ok = !b.is_empty()
            && b.len() <= MAX_LABEL
            && b.iter()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
            && b[0].is_ascii_alphanumeric()
            && b[b.len() - 1].is_ascii_alphanumeric();
        if !ok {
            return Err(self.err(
                field,
                Problem::InvalidName {
                    value: truncated(value),
                    what: "label key",
                },
            ));
        }
        Ok(())
    }

    /// A string no longer than `max`.
    pub fn short(&self, field: &str, value: &str, max: usize) -> Result<(), ValidationError> {
        if value.len() > max {
            return Err(self.err(
                field,
                Problem::TooLong {
                    len: value.len(),
                    max,
                },
            ));
        }
        Ok(())
    }
}

/// Keeps error messages bounded even for absurd input.
pub(crate) fn truncated(s: &str) -> String {
    const MAX: usize = 80;
    if s.len() <= MAX {
        return s.to_string();
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}
