//! RTCP (RFC 3550 §6): compound packets read in place and written into a
//! caller's buffer, per-source receiver statistics (Appendix A.1, A.3, A.8),
//! round-trip time (§6.4.1) and an E-model MOS estimate (ITU-T G.107).
//!
//! Sans-IO like the rest of the media layer: every time is passed in. Wall
//! clock times are 64-bit NTP timestamps (`ntp_from_system_time`); packet
//! arrival for jitter is in RTP timestamp units. Parsing and writing never
//! allocate, so both may run on the media thread.

use std::iter::{FusedIterator, Map};
use std::slice::ChunksExact;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Errors reading or writing RTCP.
#[derive(Debug, thiserror::Error, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RtcpError {
    #[error("packet too short")]
    TooShort,
    #[error("not RTCP version 2")]
    BadVersion,
    #[error("length field disagrees with the packet")]
    BadLength,
    #[error("bad padding")]
    BadPadding,
    #[error("buffer too small for the packet")]
    BufferTooSmall,
    #[error("CNAME longer than 255 bytes")]
    CnameTooLong,
}

const SR: u8 = 200;
const RR: u8 = 201;
const SDES: u8 = 202;
const BYE: u8 = 203;
const SDES_CNAME: u8 = 1;
const REPORT_BLOCK_LEN: usize = 24;
/// SSRC, NTP timestamp, RTP timestamp, packet and octet counts.
const SENDER_INFO_LEN: usize = 24;

/// Whether a datagram on a muxed RTP/RTCP port is RTCP (RFC 5761 §4): RTCP
/// packet types 192–223 fall where RTP would have marker set and payload type
/// 64–95, which RFC 5761 keeps free of RTP payload types.
pub fn is_rtcp(datagram: &[u8]) -> bool {
    datagram.len() >= 2 && datagram[0] >> 6 == 2 && (192..=223).contains(&datagram[1])
}

/// One report block (RFC 3550 §6.4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReportBlock {
    /// The source this block reports on.
    pub ssrc: u32,
    /// Packets lost since the previous report, in 1/256.
    pub fraction_lost: u8,
    /// Packets lost since the start, 24-bit signed: duplicates can make it negative.
    pub cumulative_lost: i32,
    /// Extended highest sequence number: wraps in the high 16 bits.
    pub highest_sequence: u32,
    /// Interarrival jitter in RTP timestamp units.
    pub jitter: u32,
    /// Middle 32 bits of the NTP timestamp of the last SR received, or 0.
    pub last_sr: u32,
    /// Delay from receiving that SR to sending this block, in 1/65536 s.
    pub delay_since_last_sr: u32,
}

impl ReportBlock {
    /// Reads 24 bytes; the caller has checked the length.
    fn read(b: &[u8]) -> Self {
        Self {
            ssrc: be32(b, 0),
            fraction_lost: b[4],
            // Shifting the 24 bits to the top and back sign-extends them.
            cumulative_lost: (be32(b, 4) << 8) as i32 >> 8,
            highest_sequence: be32(b, 8),
            jitter: be32(b, 12),
            last_sr: be32(b, 16),
            delay_since_last_sr: be32(b, 20),
        }
    }

    /// Writes 24 bytes; the caller has checked the length.
    fn write(&self, b: &mut [u8]) {
        // Appendix A.3: clamp rather than wrap a count that does not fit 24 bits.
        let lost = self.cumulative_lost.clamp(-0x80_0000, 0x7f_ffff) as u32 & 0xff_ffff;
        put32(b, 0, self.ssrc);
        put32(b, 4, (u32::from(self.fraction_lost) << 24) | lost);
        put32(b, 8, self.highest_sequence);
        put32(b, 12, self.jitter);
        put32(b, 16, self.last_sr);
        put32(b, 20, self.delay_since_last_sr);
    }
}

/// The report blocks of an SR or RR, read one by one as they are iterated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReportBlocks<'a>(&'a [u8]);

impl<'a> IntoIterator for ReportBlocks<'a> {
    type Item = ReportBlock;
    type IntoIter = Map<ChunksExact<'a, u8>, fn(&'a [u8]) -> ReportBlock>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.chunks_exact(REPORT_BLOCK_LEN).map(ReportBlock::read)
    }
}

/// The SSRCs a BYE names, read one by one as they are iterated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByeSsrcs<'a>(&'a [u8]);

impl<'a> IntoIterator for ByeSsrcs<'a> {
    type Item = u32;
    type IntoIter = Map<ChunksExact<'a, u8>, fn(&'a [u8]) -> u32>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.chunks_exact(4).map(|b| be32(b, 0))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SenderReport<'a> {
    pub ssrc: u32,
    pub ntp_timestamp: u64,
    pub rtp_timestamp: u32,
    pub packet_count: u32,
    pub octet_count: u32,
    pub reports: ReportBlocks<'a>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReceiverReport<'a> {
    pub ssrc: u32,
    pub reports: ReportBlocks<'a>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bye<'a> {
    pub ssrcs: ByeSsrcs<'a>,
}

/// One packet of a compound packet, borrowed from the datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RtcpPacket<'a> {
    SenderReport(SenderReport<'a>),
    ReceiverReport(ReceiverReport<'a>),
    Bye(Bye<'a>),
    /// SDES, APP, feedback and anything else, which we only skip.
    Other {
        packet_type: u8,
    },
}

/// The packets of a compound RTCP datagram, in order. Yields an error and
/// then stops at the first malformed packet, since its length field cannot
/// be trusted to find the next one.
///
/// RFC 3550 A.2's rule that a compound starts with SR or RR is not enforced:
/// reduced-size RTCP (RFC 5506) peers send feedback alone.
#[derive(Debug, Clone)]
pub struct RtcpPackets<'a> {
    rest: &'a [u8],
    /// Until the first packet is read, so an empty datagram is an error.
    first: bool,
}

impl<'a> RtcpPackets<'a> {
    pub fn new(datagram: &'a [u8]) -> Self {
        Self { rest: datagram, first: true }
    }

    fn read_packet(&mut self) -> Result<RtcpPacket<'a>, RtcpError> {
        let header = self.rest.get(..4).ok_or(RtcpError::TooShort)?;
        if header[0] >> 6 != 2 {
            return Err(RtcpError::BadVersion);
        }
        let len = (usize::from(u16::from_be_bytes([header[2], header[3]])) + 1) * 4;
        let packet = self.rest.get(..len).ok_or(RtcpError::BadLength)?;
        self.rest = &self.rest[len..];
        let mut body = &packet[4..];
        if header[0] & 0x20 != 0 {
            let padding = usize::from(packet[len - 1]);
            if padding == 0 || padding > body.len() {
                return Err(RtcpError::BadPadding);
            }
            body = &body[..body.len() - padding];
        }
        let count = usize::from(header[0] & 0x1f);
        Ok(match header[1] {
            SR => {
                let info = body.get(..SENDER_INFO_LEN).ok_or(RtcpError::BadLength)?;
                let reports = body.get(SENDER_INFO_LEN..SENDER_INFO_LEN + count * REPORT_BLOCK_LEN);
                let reports = reports.ok_or(RtcpError::BadLength)?;
                RtcpPacket::SenderReport(SenderReport {
                    ssrc: be32(info, 0),
                    ntp_timestamp: (u64::from(be32(info, 4)) << 32) | u64::from(be32(info, 8)),
                    rtp_timestamp: be32(info, 12),
                    packet_count: be32(info, 16),
                    octet_count: be32(info, 20),
                    reports: ReportBlocks(reports),
                })
            }
            RR => {
                let ssrc = body.get(..4).ok_or(RtcpError::BadLength)?;
                let reports = body.get(4..4 + count * REPORT_BLOCK_LEN).ok_or(RtcpError::BadLength)?;
                RtcpPacket::ReceiverReport(ReceiverReport { ssrc: be32(ssrc, 0), reports: ReportBlocks(reports) })
            }
            BYE => RtcpPacket::Bye(Bye { ssrcs: ByeSsrcs(body.get(..count * 4).ok_or(RtcpError::BadLength)?) }),
            packet_type => RtcpPacket::Other { packet_type },
        })
    }
}

impl<'a> Iterator for RtcpPackets<'a> {
    type Item = Result<RtcpPacket<'a>, RtcpError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() && !self.first {
            return None;
        }
        self.first = false;
        let packet = self.read_packet();
        if packet.is_err() {
            self.rest = &[];
        }
        Some(packet)
    }
}

impl FusedIterator for RtcpPackets<'_> {}

/// The sender information of an SR we write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SenderInfo {
    pub ntp_timestamp: u64,
    /// The RTP timestamp matching `ntp_timestamp`, so the peer can sync streams.
    pub rtp_timestamp: u32,
    pub packet_count: u32,
    pub octet_count: u32,
}

/// Writes a compound packet into `buf` and returns its length: an SR when
/// `sender` is given (we sent RTP since the last report), else an RR, with
/// `report` as its only block, then an SDES with our CNAME, as RFC 3550 §6.1
/// requires of every compound.
pub fn write_report(
    buf: &mut [u8],
    ssrc: u32,
    sender: Option<SenderInfo>,
    report: Option<ReportBlock>,
    cname: &str,
) -> Result<usize, RtcpError> {
    let cname = cname.as_bytes();
    let cname_len = u8::try_from(cname.len()).map_err(|_| RtcpError::CnameTooLong)?;
    let report_len = 8 + sender.map_or(0, |_| SENDER_INFO_LEN - 4) + report.map_or(0, |_| REPORT_BLOCK_LEN);
    // SSRC, item type and length, the text, then at least one zero byte that
    // ends the item list, padded to a 32-bit boundary (§6.5).
    let chunk_len = (4 + 2 + cname.len() + 1).next_multiple_of(4);
    let total = report_len + 4 + chunk_len;
    let buf = buf.get_mut(..total).ok_or(RtcpError::BufferTooSmall)?;

    let (packet_type, mut at) = if sender.is_some() { (SR, 28) } else { (RR, 8) };
    write_header(buf, report.is_some().into(), packet_type, report_len);
    put32(buf, 4, ssrc);
    if let Some(info) = sender {
        put32(buf, 8, (info.ntp_timestamp >> 32) as u32);
        put32(buf, 12, info.ntp_timestamp as u32);
        put32(buf, 16, info.rtp_timestamp);
        put32(buf, 20, info.packet_count);
        put32(buf, 24, info.octet_count);
    }
    if let Some(block) = report {
        block.write(&mut buf[at..at + REPORT_BLOCK_LEN]);
        at += REPORT_BLOCK_LEN;
    }

    let sdes = &mut buf[at..];
    write_header(sdes, 1, SDES, 4 + chunk_len);
    put32(sdes, 4, ssrc);
    sdes[8] = SDES_CNAME;
    sdes[9] = cname_len;
    sdes[10..10 + cname.len()].copy_from_slice(cname);
    sdes[10 + cname.len()..].fill(0);
    Ok(total)
}

/// Writes a BYE for `ssrc` into `buf` and returns its length. A BYE goes last
/// in a compound (§6.1): write it right after `write_report`'s output.
pub fn write_bye(buf: &mut [u8], ssrc: u32) -> Result<usize, RtcpError> {
    let buf = buf.get_mut(..8).ok_or(RtcpError::BufferTooSmall)?;
    write_header(buf, 1, BYE, 8);
    put32(buf, 4, ssrc);
    Ok(8)
}

/// `len` is the whole packet's length in bytes, a multiple of 4.
fn write_header(buf: &mut [u8], count: u8, packet_type: u8, len: usize) {
    buf[0] = 0x80 | count;
    buf[1] = packet_type;
    buf[2..4].copy_from_slice(&((len / 4 - 1) as u16).to_be_bytes());
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn put32(b: &mut [u8], at: usize, value: u32) {
    b[at..at + 4].copy_from_slice(&value.to_be_bytes());
}

/// Seconds from the NTP epoch (1900) to the Unix epoch (1970).
const NTP_UNIX_OFFSET: u64 = 2_208_988_800;

/// The 64-bit NTP timestamp of `t`: seconds since 1900 in the high half
/// (wrapping in 2036 as NTP does), the binary fraction in the low half.
pub fn ntp_from_system_time(t: SystemTime) -> u64 {
    // A clock before 1970 is broken; any value keeps the arithmetic going.
    let since_unix = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let seconds = (since_unix.as_secs() + NTP_UNIX_OFFSET) & 0xffff_ffff;
    let fraction = (u64::from(since_unix.subsec_nanos()) << 32) / 1_000_000_000;
    (seconds << 32) | fraction
}

/// The middle 32 bits of an NTP timestamp (16.16 fixed-point seconds): the
/// form of LSR and of the times RTT is computed from.
pub fn ntp_middle_32(ntp_timestamp: u64) -> u32 {
    (ntp_timestamp >> 16) as u32
}

/// RTT from a report block (§6.4.1): `arrival`, `last_sr` and
/// `delay_since_last_sr` all in 1/65536 s, `arrival` as `ntp_middle_32` of the
/// time the block came in. None when the peer has had no SR from us
/// (`last_sr` 0) or the result is negative, which only clock trouble or a
/// bogus block produce.
pub fn round_trip_time(arrival: u32, last_sr: u32, delay_since_last_sr: u32) -> Option<Duration> {
    let units = arrival.wrapping_sub(last_sr).wrapping_sub(delay_since_last_sr);
    (last_sr != 0 && (units as i32) >= 0).then(|| Duration::from_nanos((u64::from(units) * 1_000_000_000) >> 16))
}

/// How many of our recent SRs a report block may refer back to. SRs go out
/// seconds apart, so a block naming an older one is stale.
const REMEMBERED_SRS: usize = 4;

/// Round-trip time to one peer from the report blocks it sends about us.
#[derive(Debug, Clone)]
pub struct RttEstimator {
    our_ssrc: u32,
    /// `ntp_middle_32` of the SRs we sent last, so blocks naming anything else
    /// (a stale or forged LSR) are ignored. 0 is free: LSR 0 means "no SR".
    sent: [u32; REMEMBERED_SRS],
    next_slot: usize,
}

impl RttEstimator {
    pub fn new(our_ssrc: u32) -> Self {
        Self { our_ssrc, sent: [0; REMEMBERED_SRS], next_slot: 0 }
    }

    /// Whether a report block is about what we send.
    pub fn is_about_us(&self, block: &ReportBlock) -> bool {
        block.ssrc == self.our_ssrc
    }

    /// Call with the NTP timestamp of every SR we send.
    pub fn on_sender_report_sent(&mut self, ntp_timestamp: u64) {
        self.sent[self.next_slot] = ntp_middle_32(ntp_timestamp);
        self.next_slot = (self.next_slot + 1) % REMEMBERED_SRS;
    }

    /// Call with every report block received, and the NTP time it arrived;
    /// returns the new RTT when the block is about us and names an SR we sent.
    pub fn on_report_block(&self, block: &ReportBlock, arrival_ntp: u64) -> Option<Duration> {
        if block.ssrc != self.our_ssrc || !self.sent.contains(&block.last_sr) {
            return None;
        }
        round_trip_time(ntp_middle_32(arrival_ntp), block.last_sr, block.delay_since_last_sr)
    }
}

/// A sequence jump of this many packets or more is a gap too big to be loss
/// (Appendix A.1)...
const MAX_DROPOUT: u16 = 3000;
/// ...and one back by up to this many is a late or duplicate packet.
const MAX_MISORDER: u16 = 100;

/// What we hold of the last SR from the source, for LSR and DLSR.
#[derive(Debug, Clone, Copy)]
struct LastSenderReport {
    ntp_middle: u32,
    arrival_middle: u32,
}

/// Reception statistics for one source (RFC 3550 Appendix A.1, A.3, A.8),
/// from which our SR/RR report blocks about it are made. Never allocates.
#[derive(Debug, Clone, Default)]
pub struct ReceiverStats {
    ssrc: u32,
    /// None until the first packet.
    max_seq: Option<u16>,
    /// Sequence wraps, times 2^16 (A.1's `cycles`); 64 bits so it never overflows.
    cycles: u64,
    base_seq: u16,
    /// The sequence number that confirms a restart: the one after a big jump.
    bad_seq: Option<u16>,
    received: u64,
    expected_prior: u64,
    received_prior: u64,
    /// Arrival minus RTP timestamp of the previous packet.
    transit: Option<u32>,
    /// In timestamp units; A.8's floating-point form, which cannot overflow.
    jitter: f64,
    last_sr: Option<LastSenderReport>,
}

impl ReceiverStats {
    pub fn new(ssrc: u32) -> Self {
        Self { ssrc, ..Self::default() }
    }

    /// Call for every RTP packet from the source. `arrival` is the local
    /// receive time in RTP timestamp units (wrapping), for jitter.
    pub fn on_packet(&mut self, sequence: u16, rtp_timestamp: u32, arrival: u32) {
        let Some(max_seq) = self.max_seq else {
            self.restart(sequence);
            self.count(rtp_timestamp, arrival);
            return;
        };
        let ahead = sequence.wrapping_sub(max_seq);
        if ahead < MAX_DROPOUT {
            if sequence < max_seq {
                self.cycles += 1 << 16;
            }
            self.max_seq = Some(sequence);
        } else if ahead <= MAX_MISORDER.wrapping_neg() {
            // A big jump: once two packets in a row agree, the sender restarted
            // (new stream, lost state), so start afresh instead of counting the
            // jump as thousands of lost packets. A lone stray packet is ignored.
            if self.bad_seq != Some(sequence) {
                self.bad_seq = Some(sequence.wrapping_add(1));
                return;
            }
            self.restart(sequence);
        }
        self.count(rtp_timestamp, arrival);
    }

    fn restart(&mut self, sequence: u16) {
        *self = Self { last_sr: self.last_sr, ..Self::new(self.ssrc) };
        self.base_seq = sequence;
        self.max_seq = Some(sequence);
    }

    fn count(&mut self, rtp_timestamp: u32, arrival: u32) {
        self.received += 1;
        let transit = arrival.wrapping_sub(rtp_timestamp);
        if let Some(previous) = self.transit {
            let d = f64::from((transit.wrapping_sub(previous) as i32).unsigned_abs());
            self.jitter += (d - self.jitter) / 16.0;
        }
        self.transit = Some(transit);
    }

    /// Call with every SR from the source and the NTP time it arrived, so our
    /// report blocks carry LSR and DLSR for the sender's RTT.
    pub fn on_sender_report(&mut self, ntp_timestamp: u64, arrival_ntp: u64) {
        self.last_sr = Some(LastSenderReport {
            ntp_middle: ntp_middle_32(ntp_timestamp),
            arrival_middle: ntp_middle_32(arrival_ntp),
        });
    }

    /// Packets expected so far: the span of sequence numbers seen.
    pub fn packets_expected(&self) -> u64 {
        match self.max_seq {
            Some(max_seq) => self.cycles + u64::from(max_seq) + 1 - u64::from(self.base_seq),
            None => 0,
        }
    }

    /// Expected minus received; negative when duplicates arrived.
    pub fn cumulative_lost(&self) -> i64 {
        self.packets_expected() as i64 - self.received as i64
    }

    /// Cumulative loss in percent, 0 when nothing is expected or duplicates outnumber losses.
    pub fn cumulative_loss_percent(&self) -> f64 {
        match self.packets_expected() {
            0 => 0.0,
            expected => (self.cumulative_lost().max(0) as f64 * 100.0 / expected as f64).min(100.0),
        }
    }

    /// Interarrival jitter in milliseconds, given the RTP clock rate (8000 for G.722 too).
    pub fn jitter_ms(&self, clock_rate: u32) -> f64 {
        self.jitter * 1000.0 / f64::from(clock_rate.max(1))
    }

    /// The report block for our next SR or RR, or None before any packet came.
    /// Starts a new interval for the fraction lost (A.3), so call it once per
    /// report sent; `now_ntp` is the time the report goes out, for DLSR.
    pub fn report_block(&mut self, now_ntp: u64) -> Option<ReportBlock> {
        let max_seq = self.max_seq?;
        let expected = self.packets_expected();
        let expected_interval = expected - self.expected_prior;
        let received_interval = self.received - self.received_prior;
        self.expected_prior = expected;
        self.received_prior = self.received;
        let fraction_lost = match expected_interval.checked_sub(received_interval) {
            // All of an interval lost would be 256: the field tops out at 255.
            Some(lost) if lost > 0 => u8::try_from((lost << 8) / expected_interval).unwrap_or(u8::MAX),
            _ => 0,
        };
        let (last_sr, delay_since_last_sr) = match self.last_sr {
            Some(sr) => {
                let delay = ntp_middle_32(now_ntp).wrapping_sub(sr.arrival_middle);
                // The clock stepped back since the SR came: say no delay rather than ~18 hours.
                (sr.ntp_middle, if (delay as i32) < 0 { 0 } else { delay })
            }
            None => (0, 0),
        };
        Some(ReportBlock {
            ssrc: self.ssrc,
            fraction_lost,
            cumulative_lost: self.cumulative_lost().clamp(-0x80_0000, 0x7f_ffff) as i32,
            highest_sequence: (self.cycles + u64::from(max_seq)) as u32,
            jitter: self.jitter as u32,
            last_sr,
            delay_since_last_sr,
        })
    }
}

/// E-model constants of a codec (ITU-T G.113 Appendix I), on G.107's
/// narrowband scale.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CodecImpairment {
    /// Equipment impairment factor Ie: the codec's own distortion.
    pub ie: f64,
    /// Packet-loss robustness factor Bpl: higher means loss hurts less.
    pub bpl: f64,
}

/// The E-model constants for a codec by its SDP encoding name (case-insensitive),
/// or None for a name with no entry (telephone-event, comfort noise).
///
/// G.711: G.113 Appendix I, with PLC (Ie 0, Bpl 25.1); the jitter buffer's
/// waveform concealment stands in for G.711 Appendix I. G.722 and Opus are
/// wideband, and G.113 rates them on the wideband scale (G.722 at 64 kbit/s:
/// Ie,wb 13 on a scale up to R 129), which does not carry over to this
/// narrowband formula. Ie 0 says they are at least as clear as G.711; Bpl 20
/// is an approximation near the 19 G.113 gives G.729A, another frame codec
/// with its own concealment. It errs cautious for Opus, whose FEC does better.
pub fn codec_impairment(encoding_name: &str) -> Option<CodecImpairment> {
    let is = |name: &str| encoding_name.eq_ignore_ascii_case(name);
    if is("PCMU") || is("PCMA") {
        Some(CodecImpairment { ie: 0.0, bpl: 25.1 })
    } else if is("G722") || is("opus") {
        Some(CodecImpairment { ie: 0.0, bpl: 20.0 })
    } else {
        None
    }
}

/// Estimated listening MOS from the E-model (ITU-T G.107, simplified):
/// R = 93.2 − Id − Ie,eff with default R0 − Is, no advantage factor and
/// random loss (BurstR 1); MOS from R per G.107 Annex B, kept within 1–4.5.
/// `one_way_delay_ms` is mouth to ear: half the RTT plus jitter buffer and
/// codec delay.
pub fn estimated_mos(codec_ie: f64, codec_bpl: f64, packet_loss_percent: f64, one_way_delay_ms: f64) -> f64 {
    // `max` and the comparisons map NaN to 0, so garbage in gives a number out.
    let delay = one_way_delay_ms.max(0.0);
    let delay_impairment = 0.024 * delay + if delay > 177.3 { 0.11 * (delay - 177.3) } else { 0.0 };
    let loss_impairment = if packet_loss_percent > 0.0 {
        let loss = packet_loss_percent.min(100.0);
        (95.0 - codec_ie) * loss / (loss + codec_bpl)
    } else {
        0.0
    };
    let r = 93.2 - delay_impairment - codec_ie - loss_impairment;
    if r <= 0.0 {
        1.0
    } else if r >= 100.0 {
        4.5
    } else {
        // The cubic dips just below 1 for small R; keep MOS monotone in R.
        (1.0 + 0.035 * r + r * (r - 60.0) * (100.0 - r) * 7e-6).max(1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An SR with one block, an RR with none, an SDES and a BYE, per the RFC 3550 §6.4 layout.
    #[rustfmt::skip]
    const COMPOUND: [u8; 88] = [
        0x81, 200, 0, 12,                          // V=2, RC=1, SR, 13 words
        0x12, 0x34, 0x56, 0x78,                    // SSRC
        0xe8, 0x8e, 0x6c, 0x00, 0x80, 0, 0, 0,     // NTP
        0x00, 0x01, 0xe2, 0x40,                    // RTP timestamp 123456
        0, 0, 0, 100,                              // packet count
        0, 0, 0x3e, 0x80,                          // octet count 16000
        0xde, 0xad, 0xbe, 0xef,                    // block: SSRC
        0x40, 0xff, 0xff, 0xfe,                    // 64/256 lost, cumulative -2
        0, 1, 0, 5,                                // one wrap, sequence 5
        0, 0, 0, 42,                               // jitter
        0x6c, 0x00, 0x80, 0x00,                    // LSR
        0, 1, 0, 0,                                // DLSR 1 s
        0xa0, 201, 0, 2, 0, 0, 0, 7, 0, 0, 0, 4,   // RR with 4 bytes of padding
        0x81, 202, 0, 2, 0, 0, 0, 7, 1, 1, b'x', 0, // SDES CNAME "x"
        0x82, 203, 0, 2, 0, 0, 0, 7, 0, 0, 0, 8,   // BYE of 7 and 8
    ];

    fn parse_all(data: &[u8]) -> Vec<Result<RtcpPacket<'_>, RtcpError>> {
        RtcpPackets::new(data).collect()
    }

    #[test]
    fn compound_fields() {
        let packets = parse_all(&COMPOUND);
        assert_eq!(packets.len(), 4);
        let Ok(RtcpPacket::SenderReport(sr)) = packets[0] else { panic!("{:?}", packets[0]) };
        assert_eq!(sr.ssrc, 0x1234_5678);
        assert_eq!(sr.ntp_timestamp, 0xe88e_6c00_8000_0000);
        assert_eq!((sr.rtp_timestamp, sr.packet_count, sr.octet_count), (123_456, 100, 16_000));
        let blocks: Vec<_> = sr.reports.into_iter().collect();
        let expected = ReportBlock {
            ssrc: 0xdead_beef,
            fraction_lost: 64,
            cumulative_lost: -2,
            highest_sequence: 0x1_0005,
            jitter: 42,
            last_sr: 0x6c00_8000,
            delay_since_last_sr: 0x1_0000,
        };
        assert_eq!(blocks, [expected]);
        let Ok(RtcpPacket::ReceiverReport(rr)) = packets[1] else { panic!("{:?}", packets[1]) };
        assert_eq!((rr.ssrc, rr.reports.into_iter().len()), (7, 0));
        assert_eq!(packets[2], Ok(RtcpPacket::Other { packet_type: 202 }));
        let Ok(RtcpPacket::Bye(bye)) = packets[3] else { panic!("{:?}", packets[3]) };
        assert_eq!(bye.ssrcs.into_iter().collect::<Vec<_>>(), [7, 8]);
        assert!(is_rtcp(&COMPOUND));
    }

    #[test]
    fn demultiplexing() {
        assert!(is_rtcp(&[0x80, 201]));
        assert!(is_rtcp(&[0x8f, 205, 0, 2]));
        assert!(!is_rtcp(&[0x80, 0x80 | 8, 0, 0]));
        assert!(!is_rtcp(&[0x80, 224]));
        assert!(!is_rtcp(&[0x40, 200]));
        assert!(!is_rtcp(&[0x80]));
    }

    #[test]
    fn malformed_packets() {
        assert_eq!(parse_all(&[]), [Err(RtcpError::TooShort)]);
        assert_eq!(parse_all(&[0x40, 201, 0, 1, 0, 0, 0, 0]), [Err(RtcpError::BadVersion)]);
        assert_eq!(parse_all(&[0x80, 201, 0, 2, 0, 0, 0, 0]), [Err(RtcpError::BadLength)]);
        // One report block announced, none present.
        assert_eq!(parse_all(&[0x81, 201, 0, 1, 0, 0, 0, 0]), [Err(RtcpError::BadLength)]);
        assert_eq!(parse_all(&[0xa0, 201, 0, 1, 0, 0, 0, 9]), [Err(RtcpError::BadPadding)]);
        assert_eq!(parse_all(&[0xa0, 201, 0, 0]), [Err(RtcpError::BadPadding)]);
        // A bad packet ends the walk even if more bytes follow.
        let mut data = [0u8; 12];
        data[..4].copy_from_slice(&[0x80, 201, 0, 7]);
        assert_eq!(parse_all(&data), [Err(RtcpError::BadLength)]);
    }

    #[test]
    fn random_and_truncated_input_never_panics() {
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut random = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let walk = |data: &[u8]| {
            let mut results = 0;
            for packet in RtcpPackets::new(data) {
                results += 1;
                match packet {
                    Ok(RtcpPacket::SenderReport(SenderReport { reports, .. }))
                    | Ok(RtcpPacket::ReceiverReport(ReceiverReport { reports, .. })) => {
                        reports.into_iter().for_each(drop)
                    }
                    Ok(RtcpPacket::Bye(bye)) => bye.ssrcs.into_iter().for_each(drop),
                    _ => {}
                }
            }
            // Every packet consumes at least 4 bytes, or ends the walk.
            assert!(results <= data.len() / 4 + 1);
        };
        let mut data = [0u8; 256];
        for _ in 0..20_000 {
            let len = random() as usize % data.len();
            data.iter_mut().for_each(|b| *b = random() as u8);
            // Mostly plausible headers, so the parser gets past the first checks.
            data[0] = 0x80 | (data[0] & 0x3f);
            data[1] = 200 + data[1] % 6;
            data[2] = 0;
            data[3] %= 16;
            walk(&data[..len]);
        }
        let boundaries = [52, 64, 76, 88];
        for len in 0..COMPOUND.len() {
            let packets = parse_all(&COMPOUND[..len]);
            let complete = boundaries.iter().filter(|&&b| b <= len).count();
            assert_eq!(packets.iter().filter(|p| p.is_ok()).count(), complete, "truncated to {len}");
            assert_eq!(packets.last().unwrap().is_err(), !boundaries.contains(&len), "truncated to {len}");
        }
        for bit in 0..COMPOUND.len() * 8 {
            let mut flipped = COMPOUND;
            flipped[bit / 8] ^= 1 << (bit % 8);
            walk(&flipped);
        }
    }

    #[test]
    fn write_then_parse() {
        let info =
            SenderInfo { ntp_timestamp: 0x0102_0304_0506_0708, rtp_timestamp: 9, packet_count: 10, octet_count: 11 };
        let block = ReportBlock {
            ssrc: 5,
            fraction_lost: 3,
            cumulative_lost: -0x80_0000,
            highest_sequence: 70_000,
            jitter: 12,
            last_sr: 13,
            delay_since_last_sr: 14,
        };
        let mut buf = [0xffu8; 128];
        let len = write_report(&mut buf, 99, Some(info), Some(block), "leg@host").unwrap();
        let bye_len = write_bye(&mut buf[len..], 99).unwrap();
        // SR 52, SDES 4 + 4 + 2 + 8 + 1 padded to 20.
        assert_eq!((len, bye_len), (72, 8));
        let packets = parse_all(&buf[..len + bye_len]);
        let Ok(RtcpPacket::SenderReport(sr)) = packets[0] else { panic!("{:?}", packets[0]) };
        assert_eq!((sr.ssrc, sr.ntp_timestamp, sr.rtp_timestamp), (99, info.ntp_timestamp, 9));
        assert_eq!((sr.packet_count, sr.octet_count), (10, 11));
        assert_eq!(sr.reports.into_iter().collect::<Vec<_>>(), [block]);
        assert_eq!(&buf[52..72], b"\x81\xca\x00\x04\x00\x00\x00\x63\x01\x08leg@host\x00\x00");
        let Ok(RtcpPacket::Bye(bye)) = packets[2] else { panic!("{:?}", packets[2]) };
        assert_eq!(bye.ssrcs.into_iter().collect::<Vec<_>>(), [99]);

        let len = write_report(&mut buf, 7, None, None, "abc").unwrap();
        assert_eq!(len, 8 + 16);
        let Ok(RtcpPacket::ReceiverReport(rr)) = parse_all(&buf[..len])[0] else { panic!() };
        assert_eq!((rr.ssrc, rr.reports.into_iter().len()), (7, 0));

        assert_eq!(write_report(&mut buf[..23], 7, None, None, "abc"), Err(RtcpError::BufferTooSmall));
        assert_eq!(write_report(&mut buf, 7, None, None, &"x".repeat(256)), Err(RtcpError::CnameTooLong));
        assert_eq!(write_bye(&mut buf[..7], 7), Err(RtcpError::BufferTooSmall));
    }

    #[test]
    fn jitter_follows_appendix_a8() {
        let mut stats = ReceiverStats::new(1);
        // Transit times 1000, 1010, 1000, 1020: differences 10, 10, 20.
        for (seq, (ts, arrival)) in [(0, 1000), (160, 1170), (320, 1320), (480, 1500)].into_iter().enumerate() {
            stats.on_packet(seq as u16, ts, arrival);
        }
        // J += (|D| - J) / 16 three times from 0.
        let j = [10.0, 10.0, 20.0].iter().fold(0.0, |j: f64, d| j + (d - j) / 16.0);
        assert!((j - 2.385_253_906_25).abs() < 1e-12);
        assert!((stats.jitter_ms(8000) - j / 8.0).abs() < 1e-12);
        assert_eq!(stats.report_block(0).unwrap().jitter, 2);
    }

    #[test]
    fn loss_across_sequence_wrap() {
        let mut stats = ReceiverStats::new(1);
        for seq in (65_530..=65_535).chain(0..=5).filter(|&s| s != 2) {
            stats.on_packet(seq, 0, 0);
        }
        assert_eq!((stats.packets_expected(), stats.cumulative_lost()), (12, 1));
        let block = stats.report_block(0).unwrap();
        assert_eq!((block.highest_sequence, block.cumulative_lost), (65_536 + 5, 1));
        // A late duplicate from before the wrap counts as received, as in A.1.
        stats.on_packet(65_534, 0, 0);
        assert_eq!((stats.packets_expected(), stats.cumulative_lost()), (12, 0));
    }

    #[test]
    fn fraction_lost_per_interval() {
        let mut stats = ReceiverStats::new(1);
        assert_eq!(stats.report_block(0), None);
        for seq in (0..100).filter(|s| s % 10 != 3) {
            stats.on_packet(seq, 0, 0);
        }
        let block = stats.report_block(0).unwrap();
        assert_eq!((block.fraction_lost, block.cumulative_lost), (25, 10)); // 10 · 256 / 100
        assert!((stats.cumulative_loss_percent() - 10.0).abs() < 1e-9);
        for seq in 100..200 {
            stats.on_packet(seq, 0, 0);
        }
        let block = stats.report_block(0).unwrap();
        assert_eq!((block.fraction_lost, block.cumulative_lost, block.highest_sequence), (0, 10, 199));
    }

    #[test]
    fn restarted_source_is_not_loss() {
        let mut stats = ReceiverStats::new(1);
        (100..200).for_each(|seq| stats.on_packet(seq, 0, 0));
        stats.on_packet(20_000, 0, 0); // a stray packet is ignored...
        assert_eq!((stats.packets_expected(), stats.cumulative_lost()), (100, 0));
        (40_000..40_050).for_each(|seq| stats.on_packet(seq, 0, 0)); // ...a new run restarts
        assert_eq!((stats.packets_expected(), stats.cumulative_lost()), (49, 0));
        assert_eq!(stats.report_block(0).unwrap().highest_sequence, 40_049);
    }

    #[test]
    fn round_trip_from_lsr_and_dlsr() {
        let sent = 0xe88e_6c00_0000_0000;
        let sent_middle = ntp_middle_32(sent);
        let mut rtt = RttEstimator::new(42);
        rtt.on_sender_report_sent(sent);
        // The peer held our SR 0.5 s; the block arrives 0.6 s after we sent it.
        let arrival = sent + ((0x8000 + 6554) << 16);
        let mut block =
            ReportBlock { ssrc: 42, last_sr: sent_middle, delay_since_last_sr: 0x8000, ..Default::default() };
        let measured = rtt.on_report_block(&block, arrival).unwrap();
        assert!(measured.abs_diff(Duration::from_millis(100)) < Duration::from_micros(20), "{measured:?}");
        block.ssrc = 43;
        assert_eq!(rtt.on_report_block(&block, arrival), None);
        block.ssrc = 42;
        block.last_sr = sent_middle + 1;
        assert_eq!(rtt.on_report_block(&block, arrival), None);
        assert_eq!(round_trip_time(100, 0, 0), None);
        assert_eq!(round_trip_time(100, 90, 20), None);
        assert_eq!(round_trip_time(5, u32::MAX - 10, 0), Some(Duration::from_nanos((16 * 1_000_000_000) >> 16)));

        // Our side of the exchange: the block we send carries the peer's LSR and DLSR.
        let mut stats = ReceiverStats::new(7);
        stats.on_packet(1, 0, 0);
        stats.on_sender_report(sent, arrival);
        // Our report goes out 1.25 s after their SR came.
        let block = stats.report_block(arrival + (0x1_4000 << 16)).unwrap();
        assert_eq!((block.last_sr, block.delay_since_last_sr), (sent_middle, 0x1_4000));
    }

    #[test]
    fn ntp_time() {
        let t = UNIX_EPOCH + Duration::from_millis(1500);
        assert_eq!(ntp_from_system_time(t), ((NTP_UNIX_OFFSET + 1) << 32) | 0x8000_0000);
        assert_eq!(ntp_middle_32(0x1234_5678_9abc_def0), 0x5678_9abc);
    }

    #[test]
    fn mos_estimates() {
        let g711 = codec_impairment("pcmu").unwrap();
        assert_eq!(codec_impairment("PCMA"), Some(g711));
        assert_eq!(codec_impairment("telephone-event"), None);
        let clean = estimated_mos(g711.ie, g711.bpl, 0.0, 0.0);
        assert!((4.35..4.45).contains(&clean), "{clean}");
        let lossy = estimated_mos(g711.ie, g711.bpl, 10.0, 0.0);
        assert!(lossy < 3.6, "{lossy}");
        let mut previous = clean;
        for tenths in 1..=1000 {
            let mos = estimated_mos(g711.ie, g711.bpl, f64::from(tenths) / 10.0, 20.0);
            assert!(mos <= previous && (1.0..=4.5).contains(&mos), "{tenths}: {mos}");
            previous = mos;
        }
        assert!(estimated_mos(0.0, 25.1, 0.0, 300.0) < estimated_mos(0.0, 25.1, 0.0, 100.0));
        assert_eq!(estimated_mos(0.0, 25.1, 0.0, f64::INFINITY), 1.0);
        assert!(estimated_mos(0.0, 25.1, f64::NAN, f64::NAN).is_finite());
    }
}
