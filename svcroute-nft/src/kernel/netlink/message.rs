//! nfnetlink message framing: a netlink header, the `nfgenmsg` header, then attributes
//! (type-length-value, 4-byte aligned, nested ones flagged `NLA_F_NESTED`). nf_tables reads
//! numeric attributes as big-endian `u32` and strings NUL-terminated.

/// `NLM_F_REQUEST`.
pub const F_REQUEST: u16 = 1;
/// `NLM_F_ACK`.
pub const F_ACK: u16 = 4;
/// `NLM_F_CREATE`.
pub const F_CREATE: u16 = 0x400;
/// `NLM_F_APPEND`.
pub const F_APPEND: u16 = 0x800;
/// `NLMSG_ERROR`: an acknowledgement (error 0) or an error.
pub const MSG_ERROR: u16 = 2;

const NLA_F_NESTED: u16 = 0x8000;
const HEADER_LEN: usize = 16;

fn align(len: usize) -> usize {
    (len + 3) & !3
}

/// One message being built.
#[derive(Debug)]
pub struct Message {
    buf: Vec<u8>,
    /// Offsets of the nested attributes still open.
    open: Vec<usize>,
}

impl Message {
    /// A message of `msg_type` with `flags` and `seq`, whose `nfgenmsg` names `family` and
    /// `res_id` (the subsystem, for batch delimiters).
    pub fn new(msg_type: u16, flags: u16, seq: u32, family: u8, res_id: u16) -> Self {
        let mut buf = Vec::with_capacity(256);
        buf.extend_from_slice(&0u32.to_ne_bytes()); // length, set by `finish`
        buf.extend_from_slice(&msg_type.to_ne_bytes());
        buf.extend_from_slice(&flags.to_ne_bytes());
        buf.extend_from_slice(&seq.to_ne_bytes());
        buf.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel
        buf.push(family);
        buf.push(0); // NFNETLINK_V0
        buf.extend_from_slice(&res_id.to_be_bytes());
        Message {
            buf,
            open: Vec::new(),
        }
    }

    /// Appends attribute `ty` holding `payload`.
    pub fn put(&mut self, ty: u16, payload: &[u8]) {
        let len = 4 + payload.len();
        self.buf.extend_from_slice(&(len as u16).to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(payload);
        self.buf.resize(align(self.buf.len()), 0);
    }

    /// Appends a NUL-terminated string attribute.
    pub fn put_str(&mut self, ty: u16, s: &str) {
        let mut bytes = Vec::with_capacity(s.len() + 1);
        bytes.extend_from_slice(s.as_bytes());
        bytes.push(0);
        self.put(ty, &bytes);
    }

    /// Appends a big-endian `u32` attribute.
    pub fn put_u32(&mut self, ty: u16, value: u32) {
        self.put(ty, &value.to_be_bytes());
    }

    /// Opens nested attribute `ty`; attributes up to the matching [`Message::end`] go in it.
    pub fn begin(&mut self, ty: u16) {
        self.open.push(self.buf.len());
        self.buf.extend_from_slice(&0u16.to_ne_bytes());
        self.buf
            .extend_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
    }

    /// Closes the innermost open nested attribute.
    pub fn end(&mut self) {
        if let Some(start) = self.open.pop() {
            let len = (self.buf.len() - start) as u16;
            self.buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
        }
    }

    /// The finished message (open nests are closed).
    pub fn finish(mut self) -> Vec<u8> {
        while !self.open.is_empty() {
            self.end();
        }
        let len = self.buf.len() as u32;
        self.buf[0..4].copy_from_slice(&len.to_ne_bytes());
        self.buf
    }
}

/// A reply the kernel sent: the sequence number it answers and the error (0 = ack).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reply {
    /// The sequence number of the message answered.
    pub seq: u32,
    /// 0 for an acknowledgement, else a negative errno.
    pub error: i32,
}

/// The `NLMSG_ERROR` replies in `buf` (a datagram of one or more messages); other messages
/// are skipped. A truncated message ends the parse.
pub fn parse_replies(buf: &[u8]) -> Vec<Reply> {
    let mut replies = Vec::new();
    let mut at = 0;
    while at + HEADER_LEN <= buf.len() {
        let word = |i: usize| {
            let b = &buf[at + i..at + i + 4];
            u32::from_ne_bytes([b[0], b[1], b[2], b[3]])
        };
        let len = word(0) as usize;
        let msg_type = u16::from_ne_bytes([buf[at + 4], buf[at + 5]]);
        if len < HEADER_LEN || at + len > buf.len() {
            break;
        }
        // nlmsgerr: the error, then the header of the message it answers (whose seq we
        // read, since some kernels answer a batch failure with the batch's own sequence).
        if msg_type == MSG_ERROR && len >= HEADER_LEN + 4 + HEADER_LEN {
            let error = word(HEADER_LEN) as i32;
            let seq = word(HEADER_LEN + 4 + 8);
            replies.push(Reply { seq, error });
        }
        at += align(len);
    }
    replies
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_are_aligned_and_nests_sized() {
        let mut m = Message::new(0x0a06, F_REQUEST, 7, 2, 0);
        m.put_str(1, "t");
        m.begin(4);
        m.put_u32(1, 0x0102_0304);
        m.end();
        let bytes = m.finish();
        assert_eq!(bytes.len(), 16 + 4 + 8 + 4 + 8);
        assert_eq!(u32::from_ne_bytes(bytes[0..4].try_into().unwrap()), 40);
        // "t\0" padded to 4.
        assert_eq!(&bytes[20..28], &[6, 0, 1, 0, b't', 0, 0, 0][..]);
        // Nested: length 12, type 4 | NLA_F_NESTED.
        assert_eq!(&bytes[28..32], &[12, 0, 4, 0x80][..]);
        assert_eq!(&bytes[36..40], &[1, 2, 3, 4][..]);
    }

    #[test]
    fn replies_carry_the_answered_sequence() {
        let mut ack = Vec::new();
        let mut header = |len: u32, ty: u16, seq: u32| {
            ack.extend_from_slice(&len.to_ne_bytes());
            ack.extend_from_slice(&ty.to_ne_bytes());
            ack.extend_from_slice(&0u16.to_ne_bytes());
            ack.extend_from_slice(&seq.to_ne_bytes());
            ack.extend_from_slice(&0u32.to_ne_bytes());
        };
        header(36, MSG_ERROR, 9);
        ack.extend_from_slice(&(-17i32).to_ne_bytes());
        let mut inner = Vec::new();
        inner.extend_from_slice(&20u32.to_ne_bytes());
        inner.extend_from_slice(&0x0a0cu16.to_ne_bytes());
        inner.extend_from_slice(&0u16.to_ne_bytes());
        inner.extend_from_slice(&5u32.to_ne_bytes());
        inner.extend_from_slice(&0u32.to_ne_bytes());
        ack.extend_from_slice(&inner);
        assert_eq!(parse_replies(&ack), vec![Reply { seq: 5, error: -17 }]);
        assert!(parse_replies(&ack[..20]).is_empty());
    }
}
