//! Service health checks: the HTTP answer kube-proxy serves on every `healthCheckNodePort`.
//!
//! A LoadBalancer Service with `externalTrafficPolicy: Local` gets a `healthCheckNodePort`;
//! on that port of every node the proxy answers any HTTP request with the number of the
//! Service's *ready* endpoints on this node, so a cloud load balancer only sends traffic to
//! nodes that can keep it local. Upstream (`pkg/proxy/healthcheck/service_health.go`):
//!
//! - status **200** when the count is above zero and the proxy itself is healthy, else **503**;
//!   a node holding only terminating (serving, not ready) endpoints answers 503, so the
//!   balancer drains it while the proxy keeps forwarding to them (KEP-1669);
//! - headers `Content-Type: application/json`, `X-Content-Type-Options: nosniff` and
//!   `X-Load-Balancing-Endpoint-Weight: N`;
//! - body `{"service":{"namespace":"NS","name":"NAME"},"localEndpoints":N,"serviceProxyHealthy":B}`
//!   (upstream indents the same JSON over several lines);
//! - any method and any path get that answer.
//!
//! The count is per Service, not per service port: the distinct IPs of the Service's ready
//! local endpoints across all its ports (upstream `EndpointsMap.LocalReadyEndpoints`, which
//! squashes `10.0.0.1:80` and `10.0.0.1:443` into one endpoint). Upstream runs one proxier,
//! hence one count, per IP family; here one server covers both, and a dual-stack Service
//! reports the larger of its two family counts, so a dual-stack pod counts once, not twice.
//!
//! This module is pure: [`health_checks`] (or [`plan`], which also reports port conflicts)
//! computes what to serve from a [`Desired`] state and [`ServiceHealth::response`] the answer.
//! The async server that listens on the ports is [`server::HealthCheckServer`] (feature
//! `health-server`, on by default).

#[cfg(feature = "health-server")]
pub mod server;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::IpAddr;

use crate::change::Desired;
use crate::model::ServiceName;

/// What the health check of one Service reports.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServiceHealth {
    /// The Service.
    pub service: ServiceName,
    /// Its ready endpoints on this node (distinct IPs across its ports).
    pub local_endpoints: usize,
}

/// A Service whose `healthCheckNodePort` another Service already uses. The API server does
/// not allocate one port twice, so this only happens with hand-written objects.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PortConflict {
    /// The port.
    pub port: u16,
    /// The Service that does not get the port.
    pub service: ServiceName,
    /// The Service served on it (the first by namespace/name).
    pub owner: ServiceName,
}

/// Every health check to serve, plus the Services left out by a port conflict.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HealthChecks {
    /// Port to the Service served on it.
    pub ports: BTreeMap<u16, ServiceHealth>,
    /// Services whose port was already taken, by port then name.
    pub conflicts: Vec<PortConflict>,
}

/// The health checks `desired` calls for: port to Service and its local ready endpoint count.
/// When two Services claim one port the first by namespace/name gets it (see [`plan`]).
pub fn health_checks(desired: &Desired) -> BTreeMap<u16, ServiceHealth> {
    plan(desired).ports
}

/// The health checks `desired` calls for, with the port conflicts.
///
/// Only service ports with a `healthCheckNodePort` (validation keeps it only on
/// eTP=Local LoadBalancers) and at least one IP family this proxy handles count; a Service
/// of another family only is not this proxy's to check, as upstream.
pub fn plan(desired: &Desired) -> HealthChecks {
    // Per Service: its port and the distinct local ready IPs of each family.
    let mut services: BTreeMap<&ServiceName, (u16, BTreeSet<IpAddr>, BTreeSet<IpAddr>)> =
        BTreeMap::new();
    for sp in desired.ports() {
        let Some(port) = sp.health_check_node_port else {
            continue;
        };
        if sp.families.is_empty() {
            continue;
        }
        let entry = services
            .entry(&sp.name.service)
            .or_insert_with(|| (port, BTreeSet::new(), BTreeSet::new()));
        for family in &sp.families {
            for ip in &family.local_ready_ips {
                match ip {
                    IpAddr::V4(_) => entry.1.insert(*ip),
                    IpAddr::V6(_) => entry.2.insert(*ip),
                };
            }
        }
    }
    let mut out = HealthChecks::default();
    for (service, (port, v4, v6)) in services {
        if let Some(owner) = out.ports.get(&port) {
            out.conflicts.push(PortConflict {
                port,
                service: service.clone(),
                owner: owner.service.clone(),
            });
            continue;
        }
        let health = ServiceHealth {
            service: service.clone(),
            local_endpoints: v4.len().max(v6.len()),
        };
        out.ports.insert(port, health);
    }
    out.conflicts
        .sort_by(|a, b| (a.port, &a.service).cmp(&(b.port, &b.service)));
    out
}

/// An HTTP response, ready to be written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthResponse {
    /// The status code.
    pub status: u16,
    /// Header names and values, in order (without `Content-Length` and `Connection`, which
    /// [`HealthResponse::to_http`] adds).
    pub headers: Vec<(&'static str, String)>,
    /// The body.
    pub body: String,
}

impl ServiceHealth {
    /// The answer to any request on this Service's health-check port. `proxy_healthy` is the
    /// proxy's own health (upstream: its `/healthz`); an unhealthy proxy answers 503 whatever
    /// the count.
    pub fn response(&self, proxy_healthy: bool) -> HealthResponse {
        let n = self.local_endpoints;
        let mut body = String::with_capacity(128);
        body.push_str(r#"{"service":{"namespace":"#);
        json_string(&mut body, &self.service.namespace);
        body.push_str(r#","name":"#);
        json_string(&mut body, &self.service.name);
        let _ = write!(
            body,
            r#"}},"localEndpoints":{n},"serviceProxyHealthy":{proxy_healthy}}}"#
        );
        HealthResponse {
            status: if n > 0 && proxy_healthy { 200 } else { 503 },
            headers: vec![
                ("Content-Type", "application/json".to_string()),
                ("X-Content-Type-Options", "nosniff".to_string()),
                ("X-Load-Balancing-Endpoint-Weight", n.to_string()),
            ],
            body,
        }
    }
}

impl HealthResponse {
    /// A plain-text error answer (`400 Bad Request`, `431 Request Header Fields Too Large`...).
    pub fn error(status: u16) -> Self {
        HealthResponse {
            status,
            headers: vec![
                ("Content-Type", "text/plain; charset=utf-8".to_string()),
                ("X-Content-Type-Options", "nosniff".to_string()),
            ],
            body: format!("{status} {}", reason(status)),
        }
    }

    /// The reason phrase of the status code.
    pub fn reason(&self) -> &'static str {
        reason(self.status)
    }

    /// The response as HTTP/1.1 bytes, closing the connection. `head_only` leaves the body
    /// out (a `HEAD` request) but keeps its `Content-Length`.
    pub fn to_http(&self, head_only: bool) -> Vec<u8> {
        let mut out = format!("HTTP/1.1 {} {}\r\n", self.status, self.reason());
        for (name, value) in &self.headers {
            let _ = write!(out, "{name}: {value}\r\n");
        }
        let _ = write!(
            out,
            "Content-Length: {}\r\nConnection: close\r\n\r\n",
            self.body.len()
        );
        if !head_only {
            out.push_str(&self.body);
        }
        out.into_bytes()
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "",
    }
}

/// Appends `s` as a JSON string literal.
fn json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// What a request head says, as far as the health check cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestHead {
    /// More bytes are needed.
    Incomplete,
    /// A complete, well-formed head; `head_only` for a `HEAD` request.
    Complete {
        /// The request is `HEAD`: answer without a body.
        head_only: bool,
    },
    /// Not an HTTP/1.x request: answer 400.
    Bad,
}

/// Parses the bytes received so far. Any method and path is accepted; the request line must
/// be `METHOD SP TARGET SP HTTP/1.x` and every header line `name: value` (lines may end in
/// CRLF or LF). Never panics, whatever the input.
pub fn parse_request_head(buf: &[u8]) -> RequestHead {
    let Some(end) = head_end(buf) else {
        return RequestHead::Incomplete;
    };
    let Ok(head) = std::str::from_utf8(&buf[..end]) else {
        return RequestHead::Bad;
    };
    let mut lines = head.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    // Upstream servers skip empty lines before the request line (RFC 9112 2.2).
    let Some(request_line) = lines.by_ref().find(|l| !l.is_empty()) else {
        return RequestHead::Bad;
    };
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return RequestHead::Bad;
    };
    let token = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
    };
    let version_ok = version
        .strip_prefix("HTTP/1.")
        .is_some_and(|minor| minor.len() == 1 && minor.bytes().all(|b| b.is_ascii_digit()));
    if !token(method) || target.is_empty() || !version_ok {
        return RequestHead::Bad;
    }
    for line in lines.filter(|l| !l.is_empty()) {
        match line.split_once(':') {
            Some((name, _)) if token(name) => {}
            _ => return RequestHead::Bad,
        }
    }
    RequestHead::Complete {
        head_only: method == "HEAD",
    }
}

/// The length of the head up to and including its empty line, if complete.
fn head_end(buf: &[u8]) -> Option<usize> {
    // Skip leading empty lines so a stray CRLF does not end the head early.
    let start = buf
        .iter()
        .position(|b| *b != b'\r' && *b != b'\n')
        .unwrap_or(buf.len());
    let rest = &buf[start..];
    rest.windows(2)
        .enumerate()
        .find_map(|(i, w)| match w {
            [b'\n', b'\n'] => Some(i + 2),
            [b'\n', b'\r'] if rest.get(i + 2) == Some(&b'\n') => Some(i + 3),
            _ => None,
        })
        .map(|n| start + n)
}

#[cfg(test)]
mod tests;
