//! Cutting SIP messages out of a byte stream (TCP, TLS), sans-IO.
//!
//! On a stream a message ends after the blank line that closes its headers
//! plus Content-Length bytes of body, and Content-Length is mandatory
//! (RFC 3261 §18.3). Between messages a peer may send CRLF keep-alives
//! (RFC 5626 §3.5.1): a double CRLF is a ping, answered with a single CRLF.

use super::SipError;

/// The largest message accepted on a stream; a peer that sends more is cut
/// off rather than buffered without bound.
pub const MAX_STREAM_MESSAGE: usize = 65_536;

/// A CRLF keep-alive ping and its pong (RFC 5626 §3.5.1).
pub const KEEPALIVE_PING: &[u8] = b"\r\n\r\n";
pub const KEEPALIVE_PONG: &[u8] = b"\r\n";

/// What the stream carried next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// One whole SIP message, for [`super::UserAgent::handle_message`].
    Message(Vec<u8>),
    /// A keep-alive ping: answer with [`KEEPALIVE_PONG`].
    Ping,
}

/// Buffers what a stream delivers and hands out whole messages.
#[derive(Debug, Default)]
pub struct StreamFramer {
    buffer: Vec<u8>,
}

impl StreamFramer {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends bytes read from the stream.
    pub fn push(&mut self, data: &[u8]) {
        self.buffer.extend_from_slice(data);
    }

    /// The next whole frame, `None` until more bytes arrive. An error means
    /// the stream cannot be framed (no or bad Content-Length, too large):
    /// the connection must be closed, since where the next message starts
    /// is unknown.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, SipError> {
        loop {
            if self.buffer.starts_with(KEEPALIVE_PING) {
                self.buffer.drain(..KEEPALIVE_PING.len());
                return Ok(Some(Frame::Ping));
            }
            // A single CRLF before a message: a pong, or the padding §7.5 allows.
            if self.buffer.len() > 2 && self.buffer.starts_with(b"\r\n") && self.buffer[2] != b'\r' {
                self.buffer.drain(..2);
                continue;
            }
            break;
        }
        if self.buffer.starts_with(b"\r") {
            // The start of a ping or pong whose rest has not arrived.
            return Ok(None);
        }
        let Some(header_end) = self.buffer.windows(4).position(|w| w == b"\r\n\r\n") else {
            if self.buffer.len() > MAX_STREAM_MESSAGE {
                return Err(SipError::Parse("headers longer than a stream message may be".into()));
            }
            return Ok(None);
        };
        let body_start = header_end + 4;
        let length = content_length(&self.buffer[..header_end])?;
        let total = body_start.checked_add(length).filter(|t| *t <= MAX_STREAM_MESSAGE);
        let Some(total) = total else {
            return Err(SipError::Parse(format!("a {length}-byte body is larger than a stream message may be")));
        };
        if self.buffer.len() < total {
            return Ok(None);
        }
        let rest = self.buffer.split_off(total);
        Ok(Some(Frame::Message(std::mem::replace(&mut self.buffer, rest))))
    }
}

/// The Content-Length (or compact `l`) of a header block.
fn content_length(headers: &[u8]) -> Result<usize, SipError> {
    let text = std::str::from_utf8(headers).map_err(|_| SipError::Parse("headers are not UTF-8".into()))?;
    let value = text.split("\r\n").skip(1).find_map(|line| {
        let (name, value) = line.split_once(':')?;
        let name = name.trim();
        (name.eq_ignore_ascii_case("content-length") || name.eq_ignore_ascii_case("l")).then(|| value.trim())
    });
    let value = value.ok_or(SipError::MissingHeader("Content-Length"))?;
    value.parse().map_err(|_| SipError::BadHeader("Content-Length", value.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPTIONS: &[u8] = b"OPTIONS sip:a@b SIP/2.0\r\nCall-ID: x\r\nl: 4\r\n\r\nbody";

    fn frames(framer: &mut StreamFramer) -> Vec<Frame> {
        std::iter::from_fn(|| framer.next_frame().unwrap()).collect()
    }

    #[test]
    fn messages_split_and_joined_anyhow_come_out_whole() {
        let mut stream = Vec::new();
        for _ in 0..3 {
            stream.extend_from_slice(OPTIONS);
        }
        // Every way of cutting the stream in two gives the same three messages.
        for cut in 0..stream.len() {
            let mut framer = StreamFramer::new();
            framer.push(&stream[..cut]);
            let mut out = frames(&mut framer);
            framer.push(&stream[cut..]);
            out.extend(frames(&mut framer));
            assert_eq!(out, vec![Frame::Message(OPTIONS.to_vec()); 3], "cut at {cut}");
        }
    }

    #[test]
    fn keepalive_pings_are_reported_and_pongs_skipped() {
        let mut framer = StreamFramer::new();
        framer.push(b"\r\n\r\n");
        framer.push(b"\r\n");
        framer.push(OPTIONS);
        assert_eq!(frames(&mut framer), vec![Frame::Ping, Frame::Message(OPTIONS.to_vec())]);
        // A ping that arrives a byte at a time is still one ping.
        for byte in KEEPALIVE_PING {
            framer.push(&[*byte]);
        }
        assert_eq!(frames(&mut framer), vec![Frame::Ping]);
    }

    #[test]
    fn unframeable_streams_are_errors() {
        let mut framer = StreamFramer::new();
        framer.push(b"OPTIONS sip:a@b SIP/2.0\r\nCall-ID: x\r\n\r\n");
        assert!(matches!(framer.next_frame(), Err(SipError::MissingHeader("Content-Length"))));
        let mut framer = StreamFramer::new();
        framer.push(b"OPTIONS sip:a@b SIP/2.0\r\nContent-Length: -1\r\n\r\n");
        assert!(matches!(framer.next_frame(), Err(SipError::BadHeader(..))));
        let mut framer = StreamFramer::new();
        framer.push(b"OPTIONS sip:a@b SIP/2.0\r\nContent-Length: 99999999999\r\n\r\n");
        assert!(framer.next_frame().is_err());
        let mut framer = StreamFramer::new();
        framer.push(&vec![b'a'; MAX_STREAM_MESSAGE + 1]);
        assert!(framer.next_frame().is_err(), "endless headers");
    }
}
