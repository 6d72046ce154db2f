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
    /// The header extension's profile and data (RFC 3550 §5.3.1), empty when none.
    pub extension_profile: u16,
    pub extension: &'a [u8],
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
        let (mut extension_profile, mut extension_range) = (0, 0..0);
        if extension {
            let header = data.get(start..start + 4).ok_or(RtpError::TooShort)?;
            extension_profile = u16::from_be_bytes([header[0], header[1]]);
            let len = 4 * u16::from_be_bytes([header[2], header[3]]) as usize;
            extension_range = start + 4..start + 4 + len;
            start += 4 + len;
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
            extension_profile,
            extension: &data[extension_range],
        })
    }

    /// The client-to-mixer audio level (RFC 6464) carried in one-byte header
    /// extension element `id` (RFC 8285): the voice-activity flag and the
    /// level in -dBov (0 loudest, 127 silence).
    pub fn audio_level(&self, id: u8) -> Option<(bool, u8)> {
        const ONE_BYTE_PROFILE: u16 = 0xBEDE;
        if self.extension_profile != ONE_BYTE_PROFILE {
            return None;
        }
        let mut at = 0;
        while at < self.extension.len() {
            let byte = self.extension[at];
            let element = byte >> 4;
            if element == 0 {
                // Padding between elements.
                at += 1;
                continue;
            }
            if element == 15 {
                return None;
            }
            let len = (byte & 0x0f) as usize + 1;
            let data = self.extension.get(at + 1..at + 1 + len)?;
            if element == id {
                return Some((data[0] & 0x80 != 0, data[0] & 0x7f));
            }
            at += 1 + len;
        }
        None
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
                payload: &[1, 2, 3],
                extension_profile: 0,
                extension: &[],
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
    fn the_audio_level_extension_is_read() {
        // One-byte elements: id 2 (2 bytes), padding, id 1 = audio level (V, 42 -dBov).
        let mut p = vec![0x90, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3];
        p.extend_from_slice(&[0xbe, 0xde, 0, 2, 0x21, 9, 9, 0, 0x10, 0x80 | 42, 0, 0]);
        p.extend_from_slice(&[5, 6]);
        let parsed = RtpPacket::parse(&p).unwrap();
        assert_eq!(parsed.payload, &[5, 6]);
        assert_eq!(parsed.audio_level(1), Some((true, 42)));
        assert_eq!(parsed.audio_level(3), None);
        // A two-byte-header extension (RFC 8285 §4.3) is not read as one-byte elements.
        p[12..14].copy_from_slice(&[0x10, 0x00]);
        assert_eq!(RtpPacket::parse(&p).unwrap().audio_level(1), None);
        // An element running past the extension is ignored, not read beyond it.
        let mut short = vec![0x90, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3, 0xbe, 0xde, 0, 1, 0x13, 1, 2, 3];
        assert_eq!(RtpPacket::parse(&short).unwrap().audio_level(1), None);
        short[16] = 0x10;
        assert_eq!(RtpPacket::parse(&short).unwrap().audio_level(1), Some((false, 1)));
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
