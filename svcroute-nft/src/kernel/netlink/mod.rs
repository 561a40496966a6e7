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
use svcroute_core::model::IpFamily;

use crate::kernel::KernelError;
use crate::transaction::{Command, Transaction};
use message::{F_ACK, F_REQUEST, Message, parse_replies};

pub use encode::Unsupported;

/// `NFNL_MSG_BATCH_BEGIN` / `NFNL_MSG_BATCH_END`.
const BATCH_BEGIN: u16 = 16;
const BATCH_END: u16 = 17;

/// Batches above this size go through `nft -f`: a netlink datagram must fit the socket's
/// send buffer (208 KiB by default).
const MAX_BATCH: usize = 64 * 1024;

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
pub struct KnownSets(HashMap<(IpFamily, String), bool>);

impl KnownSets {
    /// Whether `set` of `family` is known to hold plain elements.
    pub fn is_plain(&self, family: IpFamily, set: &str) -> bool {
        self.0.get(&(family, set.to_string())) == Some(&true)
    }

    /// Records what a committed transaction created and deleted.
    pub fn record(&mut self, tx: &Transaction) {
        for (family, command) in &tx.commands {
            match command {
                Command::DeleteTable => self.0.retain(|(f, _), _| f != family),
                Command::AddSet { name, decl } => {
                    self.0.insert((*family, name.clone()), !decl.interval);
                }
                Command::DeleteSet { name, .. } => {
                    self.0.remove(&(*family, name.clone()));
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
    for (i, (family, command)) in tx.commands.iter().enumerate() {
        let s = seq.wrapping_add(1 + i as u32);
        // Only the last message asks for an acknowledgement: errors are always reported.
        let ack = if i + 1 == tx.commands.len() { F_ACK } else { 0 };
        let plain = |set: &str| sets.is_plain(*family, set);
        batch.extend(encode::command(
            &tx.table, *family, command, s, ack, &plain,
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
                        let mut one = Transaction::new(&tx.table);
                        one.commands.push(tx.commands[i].clone());
                        one.text().trim_end().to_string()
                    })
                    .unwrap_or_else(|| "commit".to_string());
                Err(KernelError::Failed {
                    tool: TOOL.to_string(),
                    status: format!("errno {errno}"),
                    stderr: format!("{what}: {}", io::Error::from_raw_os_error(errno)),
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
