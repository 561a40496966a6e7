//! The fast path for incremental transactions: nf_tables netlink on a long-lived socket.
//!
//! `nft -f` reads every chain and set of the ruleset before it writes anything (its cache),
//! and closing its socket after a transaction that freed objects waits for an RCU grace
//! period: on a 5,000 × 50 table one endpoint change costs 100–170 ms that way. The
//! transactions of endpoint changes only touch elements, regular chains and their rules, so
//! [`Session::run`] encodes those itself ([`encode`]) and sends them as one nfnetlink batch,
//! which the kernel applies atomically exactly like `nft -f`. A transaction holding anything
//! else is [`encode::Unsupported`] and goes through `nft -f`.

mod encode;
mod message;

use std::collections::HashMap;
use std::io;

use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_NETFILTER};

use crate::kernel::KernelError;
use crate::transaction::{Command, TableId, Transaction};
use message::{F_ACK, F_REQUEST, Message, parse_replies};

pub use encode::Unsupported;

/// `NFNL_MSG_BATCH_BEGIN` / `NFNL_MSG_BATCH_END`.
const BATCH_BEGIN: u16 = 16;
const BATCH_END: u16 = 17;

/// Batches above this size go through `nft -f`: a netlink datagram must fit the socket's
/// send buffer (208 KiB by default). It also keeps every attribute of a batch that is sent
/// under 64 KiB, the most an attribute's 16-bit length can say.
const MAX_BATCH: usize = 60 * 1024;

const TOOL: &str = "netlink";

/// A netlink socket to nf_tables, and what it knows of our sets.
#[derive(Debug)]
pub struct Session {
    socket: Socket,
    seq: u32,
}

/// Which sets of our tables hold plain elements (`true`) or intervals (`false`), learnt from
/// the transactions that created them. Element changes of a set it does not know go through
/// `nft -f`.
#[derive(Debug, Default, Clone)]
pub struct KnownSets(HashMap<(TableId, String), bool>);

impl KnownSets {
    /// Whether `set` of `table` is known to hold plain elements.
    pub fn is_plain(&self, table: &TableId, set: &str) -> bool {
        self.0.get(&(table.clone(), set.to_string())) == Some(&true)
    }

    /// Records what a committed transaction created and deleted.
    pub fn record(&mut self, tx: &Transaction) {
        for (table, command) in &tx.commands {
            match command {
                Command::DeleteTable => self.0.retain(|(t, _), _| t != table),
                Command::AddSet { name, decl } => {
                    self.0.insert((table.clone(), name.clone()), !decl.interval);
                }
                Command::DeleteSet { name, .. } => {
                    self.0.remove(&(table.clone(), name.clone()));
                }
                Command::AddContents(contents) => {
                    for (name, set) in &contents.sets {
                        self.0
                            .insert((table.clone(), name.clone()), !set.decl.interval);
                    }
                }
                _ => {}
            }
        }
    }

    /// Forgets everything (after a failure the kernel's state is not known).
    pub fn clear(&mut self) {
        self.0.clear();
    }
}

fn io_error(source: io::Error) -> KernelError {
    KernelError::Io {
        tool: TOOL.to_string(),
        source,
    }
}

/// `tx` as one nfnetlink batch starting at sequence `seq`: the batch, and the sequence
/// number of each command's message.
pub fn encode_batch(
    tx: &Transaction,
    seq: u32,
    sets: &KnownSets,
) -> Result<(Vec<u8>, Vec<u32>), Unsupported> {
    let mut batch = Message::new(BATCH_BEGIN, F_REQUEST, seq, 0, encode::SUBSYS_NFTABLES).finish();
    let mut seqs = Vec::with_capacity(tx.commands.len());
    for (i, (table, command)) in tx.commands.iter().enumerate() {
        let s = seq.wrapping_add(1 + i as u32);
        // Only the last message asks for an acknowledgement: errors are always reported.
        let ack = if i + 1 == tx.commands.len() { F_ACK } else { 0 };
        let plain = |set: &str| sets.is_plain(table, set);
        batch.extend(encode::command(
            &table.name,
            table.family,
            command,
            s,
            ack,
            &plain,
        )?);
        seqs.push(s);
        if batch.len() > MAX_BATCH {
            return Err(Unsupported("large transaction"));
        }
    }
    let end = seq.wrapping_add(1 + tx.commands.len() as u32);
    batch.extend(Message::new(BATCH_END, F_REQUEST, end, 0, encode::SUBSYS_NFTABLES).finish());
    Ok((batch, seqs))
}

impl Session {
    /// A socket in the current network namespace, or in the named one.
    pub fn open(netns: Option<&str>) -> Result<Self, KernelError> {
        let socket = match netns {
            None => new_socket(),
            Some(name) => in_netns(name, new_socket),
        }
        .map_err(io_error)?;
        Ok(Session { socket, seq: 1 })
    }

    /// Runs `tx` as one batch. `Ok(None)`: done. `Ok(Some(_))`: the transaction needs
    /// `nft -f` (nothing was sent).
    pub fn run(
        &mut self,
        tx: &Transaction,
        sets: &KnownSets,
    ) -> Result<Option<Unsupported>, KernelError> {
        let (batch, seqs) = match encode_batch(tx, self.seq, sets) {
            Ok(b) => b,
            Err(why) => return Ok(Some(why)),
        };
        let begin = self.seq;
        self.seq = self.seq.wrapping_add(tx.commands.len() as u32 + 2);
        self.socket.send(&batch, 0).map_err(io_error)?;
        let last = seqs.last().copied().unwrap_or(begin);
        match self.replies(begin, last)? {
            None => Ok(None),
            Some((seq, errno)) => {
                let what = seqs
                    .iter()
                    .position(|s| *s == seq)
                    .map(|i| {
                        let mut one = Transaction::new();
                        one.commands.push(tx.commands[i].clone());
                        one.text().trim_end().to_string()
                    })
                    .unwrap_or_else(|| "commit".to_string());
                Err(KernelError::Failed {
                    tool: TOOL.to_string(),
                    status: format!("errno {errno}"),
                    stderr: super::system::bounded(&format!(
                        "{}: {what}",
                        io::Error::from_raw_os_error(errno)
                    )),
                })
            }
        }
    }

    /// Reads the kernel's replies to the batch `begin..=last`: the first error, if any. The
    /// kernel handles a batch inside `send`, so every reply is queued once it returns.
    fn replies(&mut self, begin: u32, last: u32) -> Result<Option<(u32, i32)>, KernelError> {
        let mut first_error = None;
        let mut acked = false;
        let mut buf = vec![0u8; 64 * 1024];
        self.socket.set_non_blocking(true).map_err(io_error)?;
        loop {
            let n = match self.socket.recv(&mut &mut buf[..], 0) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(io_error(e)),
            };
            for reply in parse_replies(&buf[..n]) {
                let ours = reply.seq.wrapping_sub(begin) <= last.wrapping_sub(begin);
                if !ours {
                    continue;
                }
                if reply.error != 0 && first_error.is_none() {
                    first_error = Some((reply.seq, -reply.error));
                }
                acked |= reply.seq == last;
            }
        }
        self.socket.set_non_blocking(false).map_err(io_error)?;
        match (first_error, acked) {
            (Some(e), _) => Ok(Some(e)),
            (None, true) => Ok(None),
            (None, false) => Err(io_error(io::Error::other(
                "the kernel did not acknowledge the batch",
            ))),
        }
    }
}

fn new_socket() -> io::Result<Socket> {
    let mut socket = Socket::new(NETLINK_NETFILTER)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    Ok(socket)
}

/// Runs `f` on a thread that entered network namespace `name` (`/run/netns/NAME`); a
/// socket keeps the namespace it was created in.
fn in_netns<T: Send>(name: &str, f: impl FnOnce() -> io::Result<T> + Send) -> io::Result<T> {
    let ns = std::fs::File::open(format!("/run/netns/{name}"))?;
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(io::Error::from)?;
                f()
            })
            .join()
            .unwrap_or_else(|e| std::panic::resume_unwind(e))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ruleset::{Chain, ElemValue, Element, SetDecl, SetKind, Stmt, Value, Verdict};
    use crate::transaction::Command;
    use svcroute_core::model::IpFamily;

    const V4: IpFamily = IpFamily::IPv4;

    fn set_decl(interval: bool) -> SetDecl {
        SetDecl {
            kind: SetKind::Set,
            key: vec![crate::ruleset::KeyType::Addr],
            interval,
            timeout: None,
            size: None,
            protocol: None,
            comment: None,
        }
    }

    fn known() -> KnownSets {
        let mut tx = Transaction::new();
        for (name, interval) in [("plain", false), ("ranges", true)] {
            tx.push(
                &TableId::new(V4, "t"),
                Command::AddSet {
                    name: name.into(),
                    decl: set_decl(interval),
                },
            );
        }
        let mut sets = KnownSets::default();
        sets.record(&tx);
        sets
    }

    fn add(set: &str) -> Command {
        Command::AddElements {
            set: set.into(),
            elements: vec![(
                Value::Addr("10.0.0.1".parse().unwrap()).into(),
                Element::default(),
            )],
        }
    }

    /// (type, flags, seq) of each message of a batch.
    fn headers(batch: &[u8]) -> Vec<(u16, u16, u32)> {
        let mut out = Vec::new();
        let mut at = 0;
        while at < batch.len() {
            let len = u32::from_ne_bytes(batch[at..at + 4].try_into().unwrap()) as usize;
            let ty = u16::from_ne_bytes(batch[at + 4..at + 6].try_into().unwrap());
            let flags = u16::from_ne_bytes(batch[at + 6..at + 8].try_into().unwrap());
            let seq = u32::from_ne_bytes(batch[at + 8..at + 12].try_into().unwrap());
            out.push((ty, flags, seq));
            at += len;
        }
        out
    }

    #[test]
    fn a_batch_is_framed_and_only_its_last_command_asks_for_an_ack() {
        let mut tx = Transaction::new();
        tx.push(&TableId::new(V4, "t"), Command::FlushChain("svc-a".into()));
        tx.push(
            &TableId::new(V4, "t"),
            Command::AddRule {
                chain: "svc-a".into(),
                rule: crate::ruleset::Rule::new(vec![Stmt::Verdict(Verdict::Drop)]),
            },
        );
        tx.push(&TableId::new(V4, "t"), add("plain"));
        let (batch, seqs) = encode_batch(&tx, 100, &known()).unwrap();
        assert_eq!(seqs, vec![101, 102, 103]);
        let h = headers(&batch);
        assert_eq!(h.len(), 5);
        assert_eq!(h[0], (BATCH_BEGIN, message::F_REQUEST, 100));
        assert_eq!(h[1].0, (10 << 8) | 8, "flush = NFT_MSG_DELRULE");
        assert_eq!(h[1].1 & message::F_ACK, 0);
        assert_eq!(h[2].0, (10 << 8) | 6, "NFT_MSG_NEWRULE");
        assert_eq!(
            h[2].1,
            message::F_REQUEST | message::F_CREATE | message::F_APPEND
        );
        assert_eq!(h[3].0, (10 << 8) | 12, "NFT_MSG_NEWSETELEM");
        assert_ne!(
            h[3].1 & message::F_ACK,
            0,
            "the last command is acknowledged"
        );
        assert_eq!(h[4], (BATCH_END, message::F_REQUEST, 104));
    }

    #[test]
    fn what_the_encoder_does_not_cover_goes_to_nft() {
        let sets = known();
        let unsupported = |command: Command| {
            let mut tx = Transaction::new();
            tx.push(&TableId::new(V4, "t"), command);
            encode_batch(&tx, 1, &sets).err()
        };
        assert!(unsupported(add("plain")).is_none());
        // Intervals need start/end elements; unknown sets may be intervals.
        assert!(unsupported(add("ranges")).is_some());
        assert!(unsupported(add("unknown")).is_some());
        assert!(unsupported(Command::AddTable { comment: None }).is_some());
        assert!(unsupported(Command::DeleteTable).is_some());
        assert!(
            unsupported(Command::AddSet {
                name: "s".into(),
                decl: set_decl(false),
            })
            .is_some()
        );
        let base = Chain {
            hook: Some(crate::ruleset::BaseHook {
                kind: crate::ruleset::ChainType::Nat,
                hook: crate::ruleset::Hook::Output,
                priority: -100,
            }),
            ..Chain::default()
        };
        assert!(
            unsupported(Command::AddChain {
                name: "c".into(),
                chain: base,
            })
            .is_some()
        );
        let rule = |stmts| Command::AddRule {
            chain: "c".into(),
            rule: crate::ruleset::Rule::new(stmts),
        };
        assert!(unsupported(rule(vec![Stmt::Masquerade])).is_some());
        assert!(unsupported(rule(vec![Stmt::Reject])).is_some());
        let long = crate::ruleset::Rule::new(vec![Stmt::Verdict(Verdict::Accept)])
            .with_comment("x".repeat(300));
        assert!(
            unsupported(Command::AddRule {
                chain: "c".into(),
                rule: long,
            })
            .is_some()
        );
        // A verdict element with a comment is fine.
        assert!(
            unsupported(Command::AddElements {
                set: "plain".into(),
                elements: vec![(
                    Value::Addr("10.0.0.2".parse().unwrap()).into(),
                    Element {
                        value: Some(ElemValue::Verdict(Verdict::Goto("c".into()))),
                        comment: Some("ns/a:http".into()),
                    },
                )],
            })
            .is_none()
        );
    }

    #[test]
    fn sets_are_forgotten_with_their_table() {
        let mut sets = known();
        let t = TableId::new(V4, "t");
        assert!(sets.is_plain(&t, "plain"));
        assert!(!sets.is_plain(&t, "ranges"));
        assert!(!sets.is_plain(&TableId::new(IpFamily::IPv6, "t"), "plain"));
        assert!(!sets.is_plain(&TableId::new(V4, "t-0"), "plain"));
        let mut tx = Transaction::new();
        tx.push(&t, Command::DeleteTable);
        sets.record(&tx);
        assert!(!sets.is_plain(&t, "plain"));
    }
}
