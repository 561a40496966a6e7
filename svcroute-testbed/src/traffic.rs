//! Client attempts ([`Request`]) and what each got ([`Reply`]).

use std::net::SocketAddr;
use std::time::Duration;

use svcroute_core::decide::Packet;
use svcroute_core::model::{IpFamily, Protocol};

use crate::topology::Host;

/// Attempts per reachability check: missing one of three random endpoints in 48 tries has
/// a chance of 3·(2/3)^48 ≈ 10⁻⁸.
pub const MANY: usize = 48;

/// How long to wait for an answer that must not come.
pub const SHORT: Duration = Duration::from_secs(1);

/// What one client attempt got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// The server that answered.
    From(String),
    /// No answer within the timeout.
    Timeout,
    /// `ECONNREFUSED` (a TCP reset or an ICMP port unreachable).
    Refused,
    /// Anything else.
    Error(String),
}

impl Reply {
    /// One line of the client's output.
    pub(crate) fn parse(line: &str) -> Reply {
        match line.trim() {
            "TIMEOUT" => Reply::Timeout,
            "REFUSED" => Reply::Refused,
            l if l.starts_with("ERROR") => Reply::Error(l.to_string()),
            l => Reply::From(l.to_string()),
        }
    }
}

/// Client attempts to make.
#[derive(Debug, Clone, Copy)]
pub struct Request {
    /// TCP connections or UDP exchanges.
    pub protocol: Protocol,
    /// Where to.
    pub destination: SocketAddr,
    /// How many (each from a new source port unless `source_port` is set).
    pub count: usize,
    /// A fixed source port (0: ephemeral).
    pub source_port: u16,
    /// Per-attempt timeout.
    pub timeout: Duration,
}

impl Request {
    /// `count` attempts to `destination` (`IP:PORT` or `[IPv6]:PORT`), 3 s timeout each.
    pub fn new(protocol: Protocol, destination: &str, count: usize) -> Self {
        Request {
            protocol,
            destination: destination
                .parse()
                .unwrap_or_else(|e| panic!("bad destination {destination}: {e}")),
            count,
            source_port: 0,
            timeout: Duration::from_secs(3),
        }
    }

    /// From a fixed source port.
    pub fn source_port(mut self, port: u16) -> Self {
        self.source_port = port;
        self
    }

    /// With another per-attempt timeout.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The family of the destination.
    pub fn family(&self) -> IpFamily {
        IpFamily::of(&self.destination.ip())
    }

    /// The packet the node sees when `from` makes this request.
    pub fn packet_from(&self, from: &Host) -> Packet {
        Packet {
            source: from.ip(self.family()),
            destination: self.destination.ip(),
            port: self.destination.port(),
            protocol: self.protocol,
        }
    }
}

/// [`MANY`] TCP connections to `destination`.
pub fn tcp(destination: &str) -> Request {
    Request::new(Protocol::Tcp, destination, MANY)
}

/// [`MANY`] UDP exchanges with `destination`.
pub fn udp(destination: &str) -> Request {
    Request::new(Protocol::Udp, destination, MANY)
}
