//! The typed validation error every bad input becomes.

use std::fmt;

use thiserror::Error;

use super::IpFamily;

/// The kind of object a [`ValidationError`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ObjectKind {
    /// A `v1/Service`.
    Service,
    /// A `discovery.k8s.io/v1` EndpointSlice.
    EndpointSlice,
    /// A `v1/Node`.
    Node,
    /// The proxy's own settings.
    ProxyConfig,
}

impl fmt::Display for ObjectKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ObjectKind::Service => "Service",
            ObjectKind::EndpointSlice => "EndpointSlice",
            ObjectKind::Node => "Node",
            ObjectKind::ProxyConfig => "proxy settings",
        })
    }
}

/// A problem with one field of one object.
///
/// Displayed as `Service default/web: spec.ports[0].port: port 0 is out of range 1..=65535`.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{kind} {object}: {field}: {problem}")]
pub struct ValidationError {
    /// Which kind of object.
    pub kind: ObjectKind,
    /// The object, as `namespace/name` (or `name` for cluster-scoped objects, `?` if unnamed).
    pub object: String,
    /// The field path, as in the API (`spec.ports[0].port`).
    pub field: String,
    /// What is wrong.
    pub problem: Problem,
}

/// What is wrong with a field.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Problem {
    /// A required field is missing or empty.
    #[error("required field is missing")]
    Missing,
    /// Not an IP address.
    #[error("{0:?} is not a valid IP address")]
    InvalidIp(String),
    /// Not a CIDR.
    #[error("{0:?} is not a valid CIDR")]
    InvalidCidr(String),
    /// An address of the wrong family.
    #[error("{value} is not an {expected} address")]
    WrongFamily {
        /// The address as given.
        value: String,
        /// The family the field requires.
        expected: IpFamily,
    },
    /// A port outside 1..=65535.
    #[error("port {0} is out of range 1..=65535")]
    PortOutOfRange(i64),
    /// A value given twice where it must be unique.
    #[error("duplicate value {0:?}")]
    Duplicate(String),
    /// An unknown protocol.
    #[error("unknown protocol {0:?} (expected TCP, UDP or SCTP)")]
    UnknownProtocol(String),
    /// A value outside an enumeration.
    #[error("unsupported value {value:?} (expected {expected})")]
    Unsupported {
        /// The value as given.
        value: String,
        /// The accepted values.
        expected: &'static str,
    },
    /// A string longer than the API allows.
    #[error("{len} characters, over the limit of {max}")]
    TooLong {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A list longer than the API (or svcroute's sanity limit) allows.
    #[error("{len} entries, over the limit of {max}")]
    TooMany {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A name that is not a valid DNS label / subdomain / label key.
    #[error("{value:?} is not a valid {what}")]
    InvalidName {
        /// The name as given.
        value: String,
        /// Which syntax it must follow.
        what: &'static str,
    },
    /// A number outside its allowed range.
    #[error("{value} is out of range {min}..={max}")]
    OutOfRange {
        /// The value as given.
        value: i64,
        /// Smallest allowed.
        min: i64,
        /// Largest allowed.
        max: i64,
    },
    /// Forbidden in combination with another field.
    #[error("forbidden: {0}")]
    Forbidden(&'static str),
    /// Claims a frontend another service already owns.
    #[error("{frontend} is already used by {owner}")]
    Conflict {
        /// The frontend, e.g. `10.0.0.1:80/TCP` or `nodePort 30080/TCP`.
        frontend: String,
        /// The service that owns it.
        owner: String,
    },
}
