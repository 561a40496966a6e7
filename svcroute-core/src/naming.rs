//! Names derived from service ports by hashing, never from raw user strings: kube-proxy's
//! hashes, so every backend names a service port the same way (`TCOU7JCQXEZGVUNU` is
//! kube-dns's `dns` UDP port on every node, whichever proxy wrote it).

use sha2::{Digest, Sha256};

use crate::select::ServicePortName;

/// RFC 4648 base32 of the first 10 bytes (16 characters), as Go's `base32.StdEncoding`
/// prints the start of a longer input.
fn base32_16(bytes: &[u8; 32]) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut out = String::with_capacity(16);
    for chunk in bytes[..10].chunks(5) {
        let mut bits: u64 = 0;
        for b in chunk {
            bits = (bits << 8) | u64::from(*b);
        }
        for i in (0..8).rev() {
            let index = ((bits >> (i * 5)) & 31) as usize;
            out.push(char::from(ALPHABET[index]));
        }
    }
    out
}

fn hash16(parts: &[&str]) -> String {
    let mut hasher = Sha256::new();
    for p in parts {
        hasher.update(p.as_bytes());
    }
    base32_16(&hasher.finalize().into())
}

/// kube-proxy's `portProtoHash`: sha256 of `namespace/name:port` + lower-case protocol.
pub fn port_hash(name: &ServicePortName) -> String {
    hash16(&[&name.to_string(), name.protocol.lower()])
}

/// [`port_hash`] of a service port already printed as `namespace/name:port`.
pub fn port_hash_of(text: &str, name: &ServicePortName) -> String {
    hash16(&[text, name.protocol.lower()])
}

/// kube-proxy's endpoint hash: sha256 of `namespace/name:port` (as [`port_hash_of`] is given
/// it), the lower-case protocol and the endpoint as `ip:port` (`[ip]:port` for IPv6).
pub fn endpoint_hash(text: &str, name: &ServicePortName, endpoint: &str) -> String {
    hash16(&[text, name.protocol.lower(), endpoint])
}
