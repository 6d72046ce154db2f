//! RTP packets (RFC 3550 §5.1), read in place and written into a caller's buffer.
//!
//! By hand because the header is twelve bytes plus optional parts, and the
//! mixer must read and write it without allocating; the RTP crates allocate a
//! packet struct per datagram.

/// Errors reading RTP.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum RtpError {
    #[error("packet too short")]
    TooShort,
    #[error("not RTP version 2")]
    BadVersion,
    #[error("bad padding")]
    BadPadding,
}

/// The fixed RTP header length.
pub const HEADER_LEN: usize = 12;

/// A borrowed view of one RTP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtpPacket<'a> {
    pub marker: bool,
    pub payload_type: u8,
    pub sequence: u16,
    pub timestamp: u32,
    pub ssrc: u32,
    pub payload: &'a [u8],
}

impl<'a> RtpPacket<'a> {
    /// Reads a packet, skipping CSRCs and a header extension, removing padding.
    pub fn parse(data: &'a [u8]) -> Result<Self, RtpError> {
        if data.len() < HEADER_LEN {
            return Err(RtpError::TooShort);
        }
        if data[0] >> 6 != 2 {
            return Err(RtpError::BadVersion);
        }
        let padding = data[0] & 0x20 != 0;
        let extension = data[0] & 0x10 != 0;
        let csrc_count = (data[0] & 0x0f) as usize;
        let mut start = HEADER_LEN + 4 * csrc_count;
        if extension {
            let words = data.get(start + 2..start + 4).ok_or(RtpError::TooShort)?;
            start += 4 + 4 * u16::from_be_bytes([words[0], words[1]]) as usize;
        }
        let mut end = data.len();
        if start > end {
            return Err(RtpError::TooShort);
        }
        if padding {
            let pad = data[end - 1] as usize;
            if pad == 0 || pad > end - start {
                return Err(RtpError::BadPadding);
            }
            end -= pad;
        }
        Ok(Self {
            marker: data[1] & 0x80 != 0,
            payload_type: data[1] & 0x7f,
            sequence: u16::from_be_bytes([data[2], data[3]]),
            timestamp: u32::from_be_bytes([data[4], data[5], data[6], data[7]]),
            ssrc: u32::from_be_bytes([data[8], data[9], data[10], data[11]]),
            payload: &data[start..end],
        })
    }
}

/// Writes a 12-byte header with no CSRCs, extension or padding into `out`.
pub fn write_header(
    out: &mut [u8; HEADER_LEN],
    marker: bool,
    payload_type: u8,
    sequence: u16,
    timestamp: u32,
    ssrc: u32,
) {
    out[0] = 0x80;
    out[1] = (u8::from(marker) << 7) | (payload_type & 0x7f);
    out[2..4].copy_from_slice(&sequence.to_be_bytes());
    out[4..8].copy_from_slice(&timestamp.to_be_bytes());
    out[8..12].copy_from_slice(&ssrc.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_then_parse() {
        let mut packet = [0u8; HEADER_LEN + 3];
        let header: &mut [u8; HEADER_LEN] = (&mut packet[..HEADER_LEN]).try_into().unwrap();
        write_header(header, true, 8, 65535, 0xdead_beef, 42);
        packet[HEADER_LEN..].copy_from_slice(&[1, 2, 3]);
        let p = RtpPacket::parse(&packet).unwrap();
        assert_eq!(
            p,
            RtpPacket {
                marker: true,
                payload_type: 8,
                sequence: 65535,
                timestamp: 0xdead_beef,
                ssrc: 42,
                payload: &[1, 2, 3]
            }
        );
    }

    #[test]
    fn csrc_extension_and_padding_are_skipped() {
        let mut p = vec![0xb1, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3]; // V=2, P, X, CC=1
        p.extend_from_slice(&[9, 9, 9, 9]); // CSRC
        p.extend_from_slice(&[0xbe, 0xde, 0, 1, 7, 7, 7, 7]); // one-word extension
        p.extend_from_slice(&[5, 6, 0, 2]); // payload 5 6, two bytes of padding
        let parsed = RtpPacket::parse(&p).unwrap();
        assert_eq!(parsed.payload, &[5, 6]);
        assert_eq!(parsed.sequence, 1);
    }

    #[test]
    fn garbage_is_rejected() {
        assert_eq!(RtpPacket::parse(&[0x80; 5]), Err(RtpError::TooShort));
        assert_eq!(RtpPacket::parse(&[0x40; 12]), Err(RtpError::BadVersion));
        assert_eq!(RtpPacket::parse(&[0x8f; 12]), Err(RtpError::TooShort));
        let mut padded = [0u8; 13];
        padded[0] = 0xa0;
        padded[12] = 9;
        assert_eq!(RtpPacket::parse(&padded), Err(RtpError::BadPadding));
        assert_eq!(
            RtpPacket::parse(&[0x90, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff]),
            Err(RtpError::TooShort)
        );
    }
}
