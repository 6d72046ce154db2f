//! Codecs behind one small trait, so the mixer never names a codec.
//!
//! G.711 (ITU-T G.711 μ-law and A-law) is done by hand: decoding is a
//! 256-entry table built at compile time, encoding the standard segment search.

use super::g722::{G722Decoder, G722Encoder};
use super::plc::WaveformPlc;

/// The codecs sipbridge negotiates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CodecKind {
    Pcmu,
    Pcma,
    /// G.722 at 64 kbit/s: 16 kHz audio on an 8 kHz RTP clock (RFC 3551 §4.5.2).
    G722,
    /// Opus (RFC 7587), mono at 48 kHz.
    Opus,
}

impl CodecKind {
    pub const ALL: [CodecKind; 4] = [CodecKind::Opus, CodecKind::G722, CodecKind::Pcmu, CodecKind::Pcma];

    /// The name in SDP's rtpmap.
    pub fn encoding_name(self) -> &'static str {
        match self {
            CodecKind::Pcmu => "PCMU",
            CodecKind::Pcma => "PCMA",
            CodecKind::G722 => "G722",
            CodecKind::Opus => "opus",
        }
    }

    /// Looks a codec up by its SDP name (case-insensitive).
    pub fn from_encoding_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.encoding_name().eq_ignore_ascii_case(name))
    }

    /// The RTP timestamp rate.
    pub fn clock_rate(self) -> u32 {
        match self {
            CodecKind::Opus => 48000,
            _ => 8000,
        }
    }

    /// The rate of the audio the codec carries.
    pub fn sample_rate(self) -> u32 {
        match self {
            CodecKind::G722 => 16000,
            CodecKind::Opus => 48000,
            _ => 8000,
        }
    }

    /// The channel count SDP's rtpmap names: Opus is always signalled as
    /// stereo (RFC 7587 §7), even when both sides send mono.
    pub fn rtpmap_channels(self) -> Option<u8> {
        (self == CodecKind::Opus).then_some(2)
    }

    /// The RFC 3551 static payload type, or a dynamic one for Opus.
    pub fn default_payload_type(self) -> u8 {
        match self {
            CodecKind::Pcmu => 0,
            CodecKind::Pcma => 8,
            CodecKind::G722 => 9,
            CodecKind::Opus => 111,
        }
    }

    pub fn from_static_payload_type(pt: u8) -> Option<Self> {
        match pt {
            0 => Some(CodecKind::Pcmu),
            8 => Some(CodecKind::Pcma),
            9 => Some(CodecKind::G722),
            _ => None,
        }
    }

    /// Samples in one 20 ms frame at the codec's audio rate.
    pub fn frame_samples(self) -> usize {
        self.sample_rate() as usize / 50
    }

    /// Whether the codec conceals loss itself (else the jitter buffer's
    /// waveform PLC does): Opus natively, G.722 in its sub-bands (see [`G722`]).
    pub fn has_native_plc(self) -> bool {
        matches!(self, CodecKind::Opus | CodecKind::G722)
    }

    /// Whether each frame is coded on its own, so that a decoder may start
    /// at any packet of a running encoder: G.711's, but not G.722's ADPCM or
    /// Opus's predictors, whose first packets from a running encoder a fresh
    /// decoder would decode wrong.
    pub fn frames_are_independent(self) -> bool {
        matches!(self, CodecKind::Pcmu | CodecKind::Pcma)
    }

    /// Whether the decoder may skip packets and pick up again later without
    /// a glitch; G.722's ADPCM state would be out of step for 200 ms.
    pub fn can_skip_decoding(self) -> bool {
        !matches!(self, CodecKind::G722)
    }

    /// A fresh coder for one leg. Called when a leg joins, never in the tick.
    pub fn new_coder(self, opus: &OpusSettings) -> Result<Box<dyn AudioCodec>, CodecError> {
        Ok(match self {
            CodecKind::Pcmu => Box::new(G711::<true>),
            CodecKind::Pcma => Box::new(G711::<false>),
            CodecKind::G722 => Box::new(G722::new()),
            CodecKind::Opus => Box::new(Opus::new(opus)?),
        })
    }
}

/// A codec could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("codec setup failed: {0}")]
pub struct CodecError(String);

/// How Opus legs encode; the app sets it, the peer's fmtp narrows it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OpusSettings {
    /// Target bit rate in bit/s (6000..=510000).
    pub bitrate: u32,
    /// Encoder complexity, 0 (cheapest) to 10 (best).
    pub complexity: u8,
    /// In-band FEC, sent when the peer also says useinbandfec=1.
    pub fec: bool,
    /// Discontinuous transmission in silence, used when the peer says usedtx=1.
    pub dtx: bool,
    /// The highest audio rate the peer wants (its maxplaybackrate); the
    /// encoder's bandwidth stays under half of it.
    pub max_playback_rate: u32,
    /// Loss the encoder plans its FEC for, in percent.
    pub expected_loss_percent: u8,
}

impl Default for OpusSettings {
    fn default() -> Self {
        Self {
            bitrate: 32000,
            complexity: 5,
            fec: true,
            dtx: false,
            max_playback_rate: 48000,
            expected_loss_percent: 10,
        }
    }
}

/// One leg's encoder and decoder. Implementations must not allocate in any
/// method: the mixer calls them in its tick.
pub trait AudioCodec: Send {
    fn kind(&self) -> CodecKind;
    /// Decodes `payload` into `out`, returning the samples written (0 when
    /// the payload is not valid for the codec).
    fn decode(&mut self, payload: &[u8], out: &mut [i16]) -> usize;
    /// Fills `out` in place of lost audio, when the codec has its own
    /// concealment; false leaves it to the caller.
    fn conceal(&mut self, _out: &mut [i16]) -> bool {
        false
    }
    /// Rebuilds the lost audio just before `next_payload` from the in-band
    /// FEC that payload carries; false when it carries none.
    fn recover(&mut self, _next_payload: &[u8], _out: &mut [i16]) -> bool {
        false
    }
    /// Encodes `pcm` into `out`, returning the bytes written; 0 means send
    /// nothing this time (Opus DTX, or an encoder error).
    fn encode(&mut self, pcm: &[i16], out: &mut [u8]) -> usize;
    /// Tells the encoder how much of what it sends is being lost, in percent,
    /// for codecs whose redundancy follows it (Opus in-band FEC).
    fn plan_for_loss(&mut self, _percent: u8) {}
    /// Makes this coder's encoder continue exactly where `other`'s stands
    /// (same codec, same settings), so that a leg moving from a shared
    /// encoder to its own sends one unbroken stream. False when they differ.
    fn continue_encoding_from(&mut self, other: &dyn AudioCodec) -> bool;
    fn as_any(&self) -> &dyn std::any::Any;
    /// The samples `payload` holds, for a caller that skips decoding it (a
    /// silent listener) and must still keep time; `None` when it cannot tell
    /// (see [`CodecKind::can_skip_decoding`]).
    fn samples_without_decoding(&self, _payload: &[u8]) -> Option<usize> {
        None
    }
    /// What the encoded audio depends on besides the input: coders with
    /// equal keys turn the same audio into the same payloads.
    fn encoder_key(&self) -> EncoderKey {
        EncoderKey { kind: self.kind(), opus: None }
    }
}

/// Identifies interchangeable encoders: the codec and, for Opus, the
/// settings it was built with (the loss plan then follows the peers' reports).
/// Every leg sends 20 ms packets, so the packet time is the same for all.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EncoderKey {
    pub kind: CodecKind,
    pub opus: Option<OpusSettings>,
}

impl EncoderKey {
    /// A fresh coder that encodes as the key says.
    pub fn new_coder(&self) -> Result<Box<dyn AudioCodec>, CodecError> {
        self.kind.new_coder(&self.opus.unwrap_or_default())
    }
}

/// G.711; `ULAW` picks μ-law (PCMU) over A-law (PCMA).
#[derive(Debug, Clone, Copy, Default)]
pub struct G711<const ULAW: bool>;

impl<const ULAW: bool> AudioCodec for G711<ULAW> {
    fn kind(&self) -> CodecKind {
        if ULAW {
            CodecKind::Pcmu
        } else {
            CodecKind::Pcma
        }
    }

    fn decode(&mut self, payload: &[u8], out: &mut [i16]) -> usize {
        let table = if ULAW { &ULAW_TO_LINEAR } else { &ALAW_TO_LINEAR };
        let n = payload.len().min(out.len());
        for (o, b) in out[..n].iter_mut().zip(payload) {
            *o = table[*b as usize];
        }
        n
    }

    fn encode(&mut self, pcm: &[i16], out: &mut [u8]) -> usize {
        let n = pcm.len().min(out.len());
        for (o, s) in out[..n].iter_mut().zip(pcm) {
            *o = if ULAW { linear_to_ulaw(*s) } else { linear_to_alaw(*s) };
        }
        n
    }

    fn samples_without_decoding(&self, payload: &[u8]) -> Option<usize> {
        Some(payload.len())
    }

    fn continue_encoding_from(&mut self, other: &dyn AudioCodec) -> bool {
        // Stateless.
        other.as_any().is::<Self>()
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// G.722 at 64 kbit/s, written by hand (`media::g722`): the crates that offer
/// it either allocate per frame or start from the wrong reset state.
///
/// Lost audio is concealed in the two 8 kHz sub-bands, as G.722 Appendix IV
/// does, rather than in the 16 kHz output: the waveform PLC continues each
/// band and the decoder's own receive QMF joins them, so its history stays
/// continuous through the gap, and the pitch search does better on the lower
/// band than on the full band. On human speech at 3-20% loss this scored up
/// to 0.05 PESQ-WB above concealing the output.
///
/// The ADPCM state is kept as the last packet left it. The encoder's moves on
/// in the gap, so the decoder is out of step for about 200 ms after it (the
/// predictor forgets with a 32 ms time constant), which costs about 0.25
/// PESQ-WB at 10% loss. None of the fixes tried won any of that back:
/// re-encoding the concealed bands into the state (Appendix III), resetting
/// or leaking the predictor, or taking its memories from the concealed signal
/// (Appendix IV). Re-encoding only helps with a waveform right through the
/// last ~10 ms of the gap, which extrapolation does not give.
pub struct G722 {
    encoder: G722Encoder,
    decoder: G722Decoder,
    low_plc: WaveformPlc,
    high_plc: WaveformPlc,
}

/// Band samples handled at a time by G.722 decoding and concealment: 20 ms,
/// so the band buffers can live on the stack.
const G722_BAND_CHUNK: usize = 160;

impl G722 {
    pub fn new() -> Self {
        Self {
            encoder: G722Encoder::new(),
            decoder: G722Decoder::new(),
            low_plc: WaveformPlc::new(8000),
            high_plc: WaveformPlc::new(8000),
        }
    }
}

impl Default for G722 {
    fn default() -> Self {
        Self::new()
    }
}

impl AudioCodec for G722 {
    fn kind(&self) -> CodecKind {
        CodecKind::G722
    }

    fn decode(&mut self, payload: &[u8], out: &mut [i16]) -> usize {
        // Each byte holds two 16 kHz samples; a payload too big for `out` is cut.
        let payload = &payload[..payload.len().min(out.len() / 2)];
        let mut written = 0;
        for codes in payload.chunks(G722_BAND_CHUNK) {
            let (mut low, mut high) = ([0i16; G722_BAND_CHUNK], [0i16; G722_BAND_CHUNK]);
            let n = self.decoder.decode_bands(codes, &mut low, &mut high);
            // The concealers learn the bands, and fade them in after a loss.
            self.low_plc.good_frame(&mut low[..n]);
            self.high_plc.good_frame(&mut high[..n]);
            written += self.decoder.synthesize(&low[..n], &high[..n], &mut out[written..]);
        }
        written
    }

    fn conceal(&mut self, out: &mut [i16]) -> bool {
        for chunk in out.chunks_mut(2 * G722_BAND_CHUNK) {
            let n = chunk.len() / 2;
            let (mut low, mut high) = ([0i16; G722_BAND_CHUNK], [0i16; G722_BAND_CHUNK]);
            self.low_plc.conceal(&mut low[..n]);
            self.high_plc.conceal(&mut high[..n]);
            let written = self.decoder.synthesize(&low[..n], &high[..n], chunk);
            // An odd sample out has no band pair; the jitter buffer never asks for one.
            chunk[written..].fill(0);
        }
        true
    }

    fn encode(&mut self, pcm: &[i16], out: &mut [u8]) -> usize {
        let pcm = &pcm[..pcm.len().min(out.len() * 2)];
        self.encoder.encode(pcm, out)
    }

    fn continue_encoding_from(&mut self, other: &dyn AudioCodec) -> bool {
        match other.as_any().downcast_ref::<Self>() {
            Some(other) => {
                // Plain arrays: copied in place, no allocation.
                self.encoder.clone_from(&other.encoder);
                true
            }
            None => false,
        }
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// A libopus encoder (mono, 48 kHz) whose state lives in memory we own.
/// audiopus's encoder keeps its state behind a private pointer; opus.h
/// documents the state as position independent and freely copyable, and
/// copying it is what lets a leg leave a shared encoder without a click.
struct OpusEncoder {
    state: Box<[OpusStateChunk]>,
}

/// Storage for libopus state, aligned as malloc would align it.
#[derive(Clone, Copy)]
#[repr(C, align(16))]
struct OpusStateChunk([u8; 16]);

impl OpusEncoder {
    fn new() -> Result<Self, CodecError> {
        use audiopus::ffi;
        // SAFETY: a pure size query.
        let size = unsafe { ffi::opus_encoder_get_size(1) };
        if size <= 0 {
            return Err(CodecError("libopus gave no encoder size".into()));
        }
        let chunks = (size as usize).div_ceil(std::mem::size_of::<OpusStateChunk>());
        let mut encoder = Self { state: vec![OpusStateChunk([0; 16]); chunks].into_boxed_slice() };
        // SAFETY: the state is at least opus_encoder_get_size(1) bytes, aligned.
        let rc = unsafe { ffi::opus_encoder_init(encoder.raw(), 48000, 1, ffi::OPUS_APPLICATION_VOIP) };
        encoder.check(rc)?;
        Ok(encoder)
    }

    fn raw(&mut self) -> *mut audiopus::ffi::OpusEncoder {
        self.state.as_mut_ptr().cast()
    }

    fn check(&self, rc: i32) -> Result<i32, CodecError> {
        if rc < 0 {
            return Err(CodecError(audiopus::ErrorCode::from(rc).to_string()));
        }
        Ok(rc)
    }

    /// One of the `OPUS_SET_*` requests that take an int.
    fn set(&mut self, request: i32, value: i32) -> Result<(), CodecError> {
        // SAFETY: an initialised state; every request this file sends takes one opus_int32.
        let rc = unsafe { audiopus::ffi::opus_encoder_ctl(self.raw(), request, value) };
        self.check(rc).map(drop)
    }

    fn encode(&mut self, pcm: &[i16], out: &mut [u8]) -> Result<usize, CodecError> {
        let (frame, room) = (pcm.len() as i32, out.len().min(i32::MAX as usize) as i32);
        // SAFETY: libopus reads `frame` samples from `pcm` and writes at most
        // `room` bytes to `out`; it rejects frame sizes it does not take.
        let rc = unsafe { audiopus::ffi::opus_encode(self.raw(), pcm.as_ptr(), frame, out.as_mut_ptr(), room) };
        self.check(rc).map(|n| n as usize)
    }

    fn copy_from(&mut self, other: &Self) {
        self.state.copy_from_slice(&other.state);
    }
}

/// Opus, mono at 48 kHz, through libopus (audiopus).
pub struct Opus {
    encoder: OpusEncoder,
    decoder: audiopus::coder::Decoder,
    /// In-band FEC is on, so the peer's reported loss steers it.
    fec: bool,
    settings: OpusSettings,
}

impl Opus {
    pub fn new(settings: &OpusSettings) -> Result<Self, CodecError> {
        use audiopus::ffi;
        use audiopus::{Channels, SampleRate};
        let mut encoder = OpusEncoder::new()?;
        encoder.set(ffi::OPUS_SET_BITRATE_REQUEST, settings.bitrate.clamp(6000, 510_000) as i32)?;
        encoder.set(ffi::OPUS_SET_COMPLEXITY_REQUEST, settings.complexity.min(10) as i32)?;
        encoder.set(ffi::OPUS_SET_INBAND_FEC_REQUEST, settings.fec as i32)?;
        if settings.fec {
            encoder.set(ffi::OPUS_SET_PACKET_LOSS_PERC_REQUEST, settings.expected_loss_percent.min(100) as i32)?;
        }
        encoder.set(ffi::OPUS_SET_DTX_REQUEST, settings.dtx as i32)?;
        let bandwidth = match settings.max_playback_rate {
            0..=8000 => ffi::OPUS_BANDWIDTH_NARROWBAND,
            8001..=12000 => ffi::OPUS_BANDWIDTH_MEDIUMBAND,
            12001..=16000 => ffi::OPUS_BANDWIDTH_WIDEBAND,
            16001..=24000 => ffi::OPUS_BANDWIDTH_SUPERWIDEBAND,
            _ => ffi::OPUS_BANDWIDTH_FULLBAND,
        };
        encoder.set(ffi::OPUS_SET_MAX_BANDWIDTH_REQUEST, bandwidth)?;
        let error = |e: audiopus::Error| CodecError(e.to_string());
        let decoder = audiopus::coder::Decoder::new(SampleRate::Hz48000, Channels::Mono).map_err(error)?;
        Ok(Self { encoder, decoder, fec: settings.fec, settings: *settings })
    }

    fn decode_packet(&mut self, payload: Option<&[u8]>, out: &mut [i16], fec: bool) -> Option<usize> {
        let packet = match payload {
            Some(p) => Some(audiopus::packet::Packet::try_from(p).ok()?),
            None => None,
        };
        let signals = audiopus::MutSignals::try_from(out).ok()?;
        self.decoder.decode(packet, signals, fec).ok()
    }
}

impl AudioCodec for Opus {
    fn kind(&self) -> CodecKind {
        CodecKind::Opus
    }

    fn decode(&mut self, payload: &[u8], out: &mut [i16]) -> usize {
        self.decode_packet(Some(payload), out, false).unwrap_or(0)
    }

    fn conceal(&mut self, out: &mut [i16]) -> bool {
        // libopus wants whole 2.5 ms units for concealment.
        let n = out.len() / 120 * 120;
        n > 0 && self.decode_packet(None, &mut out[..n], false).is_some()
    }

    fn recover(&mut self, next_payload: &[u8], out: &mut [i16]) -> bool {
        let n = out.len() / 120 * 120;
        n > 0 && self.decode_packet(Some(next_payload), &mut out[..n], true).is_some()
    }

    fn encode(&mut self, pcm: &[i16], out: &mut [u8]) -> usize {
        match self.encoder.encode(pcm, out) {
            // One or two bytes is a DTX frame: nothing worth sending.
            Ok(n) if n > 2 => n,
            _ => 0,
        }
    }

    fn plan_for_loss(&mut self, percent: u8) {
        // FEC costs the primary encoding bits: at 10% planned loss a 32 kbit/s
        // stream loses about half a PESQ point on a clean network, so plan for
        // the loss the peer reports instead of a fixed guess. Failing to set
        // it leaves the previous plan, which is still a valid encoding.
        if self.fec {
            let _ = self.encoder.set(audiopus::ffi::OPUS_SET_PACKET_LOSS_PERC_REQUEST, percent.min(100) as i32);
        }
    }

    fn samples_without_decoding(&self, payload: &[u8]) -> Option<usize> {
        // The decoder takes a skipped stretch as it takes a gap.
        let packet = audiopus::packet::Packet::try_from(payload).ok()?;
        audiopus::packet::nb_samples(packet, audiopus::SampleRate::Hz48000).ok()
    }

    fn encoder_key(&self) -> EncoderKey {
        EncoderKey { kind: CodecKind::Opus, opus: Some(self.settings) }
    }

    fn continue_encoding_from(&mut self, other: &dyn AudioCodec) -> bool {
        match other.as_any().downcast_ref::<Self>() {
            // The settings live in the state too, but only equal keys share.
            Some(other) if other.encoder_key() == self.encoder_key() => {
                self.encoder.copy_from(&other.encoder);
                true
            }
            _ => false,
        }
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

const ULAW_BIAS: i32 = 0x84;
const ULAW_CLIP: i32 = 32635;

/// μ-law encoding (G.711 §3, the bias-and-segment form of the reference code).
pub fn linear_to_ulaw(sample: i16) -> u8 {
    let mut s = sample as i32;
    let sign = if s < 0 {
        s = -s;
        0x80
    } else {
        0
    };
    s = s.min(ULAW_CLIP) + ULAW_BIAS;
    let exponent = (31 - (s as u32).leading_zeros()).saturating_sub(7).min(7) as i32;
    let mantissa = (s >> (exponent + 3)) & 0x0f;
    !((sign | (exponent << 4) | mantissa) as u8)
}

pub const fn ulaw_to_linear(code: u8) -> i16 {
    let u = !code;
    let exponent = ((u >> 4) & 0x07) as i32;
    let mantissa = (u & 0x0f) as i32;
    let magnitude = (((mantissa << 3) + ULAW_BIAS) << exponent) - ULAW_BIAS;
    if u & 0x80 != 0 {
        -magnitude as i16
    } else {
        magnitude as i16
    }
}

/// A-law encoding (G.711 §2).
pub fn linear_to_alaw(sample: i16) -> u8 {
    let s = sample as i32;
    let (sign, magnitude) = if s >= 0 { (0xd5, s) } else { (0x55, -s - 1) };
    let magnitude = magnitude.min(32767);
    let code = if magnitude < 256 {
        (magnitude >> 4) as u8
    } else {
        let exponent = (31 - (magnitude as u32).leading_zeros()) as i32 - 7;
        let mantissa = (magnitude >> (exponent + 3)) & 0x0f;
        ((exponent << 4) | mantissa) as u8
    };
    code ^ sign
}

pub const fn alaw_to_linear(code: u8) -> i16 {
    let a = code ^ 0x55;
    let exponent = ((a >> 4) & 0x07) as i32;
    let mantissa = (a & 0x0f) as i32;
    let magnitude = if exponent == 0 { (mantissa << 4) + 8 } else { ((mantissa << 4) + 0x108) << (exponent - 1) };
    if a & 0x80 != 0 {
        magnitude as i16
    } else {
        -magnitude as i16
    }
}

const fn table(ulaw: bool) -> [i16; 256] {
    let mut t = [0i16; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = if ulaw { ulaw_to_linear(i as u8) } else { alaw_to_linear(i as u8) };
        i += 1;
    }
    t
}

static ULAW_TO_LINEAR: [i16; 256] = table(true);
static ALAW_TO_LINEAR: [i16; 256] = table(false);

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether the FEC in packet `lost + 1` rebuilds packet `lost` differently
    /// from plain concealment, i.e. whether the encoder put any FEC in it.
    fn opus_carries_fec(plan: Option<u8>) -> bool {
        let settings = OpusSettings { fec: true, expected_loss_percent: 20, ..Default::default() };
        let mut encoder = Opus::new(&settings).unwrap();
        if let Some(percent) = plan {
            encoder.plan_for_loss(percent);
        }
        let packets: Vec<Vec<u8>> = (0..30)
            .map(|i| {
                // A voice-like tone that glides, so concealment cannot guess it.
                let pcm: Vec<i16> = (0..960)
                    .map(|n| {
                        let t = (i * 960 + n) as f32 / 48000.0;
                        ((t * (900.0 + 400.0 * t) * std::f32::consts::TAU).sin() * 8000.0) as i16
                    })
                    .collect();
                let mut buf = [0u8; 1275];
                let n = encoder.encode(&pcm, &mut buf);
                buf[..n].to_vec()
            })
            .collect();
        let lost = 25;
        let (mut concealing, mut recovering) = (Opus::new(&settings).unwrap(), Opus::new(&settings).unwrap());
        let mut out = [0i16; 960];
        for packet in &packets[..lost] {
            concealing.decode(packet, &mut out);
            recovering.decode(packet, &mut out);
        }
        let (mut concealed, mut recovered) = ([0i16; 960], [0i16; 960]);
        assert!(concealing.conceal(&mut concealed));
        assert!(recovering.recover(&packets[lost + 1], &mut recovered));
        concealed != recovered
    }

    #[test]
    fn opus_fec_follows_the_loss_the_peer_reports() {
        assert!(opus_carries_fec(None), "the initial plan (20%) sends FEC");
        assert!(!opus_carries_fec(Some(0)), "a peer that loses nothing gets no FEC");
        assert!(opus_carries_fec(Some(15)));
    }

    #[test]
    fn known_values() {
        // Reference points from the G.711 tables.
        assert_eq!(linear_to_ulaw(0), 0xff);
        assert_eq!(linear_to_ulaw(-1), 0x7f);
        assert_eq!(linear_to_ulaw(i16::MAX), 0x80);
        assert_eq!(linear_to_ulaw(i16::MIN), 0x00);
        assert_eq!(ulaw_to_linear(0x80), 32124);
        assert_eq!(ulaw_to_linear(0x00), -32124);
        assert_eq!(linear_to_alaw(0), 0xd5);
        assert_eq!(linear_to_alaw(i16::MAX), 0xaa);
        assert_eq!(linear_to_alaw(i16::MIN), 0x2a);
        assert_eq!(alaw_to_linear(0xd5), 8);
        assert_eq!(alaw_to_linear(0xaa), 32256);
        assert_eq!(alaw_to_linear(0x2a), -32256);
    }

    #[test]
    fn every_code_round_trips() {
        for code in 0..=255u8 {
            assert_eq!(linear_to_alaw(alaw_to_linear(code)), code, "A-law {code:#x}");
            // μ-law has two zeros (0x7f and 0xff); both decode to 0, which encodes as 0xff.
            if code != 0x7f {
                assert_eq!(linear_to_ulaw(ulaw_to_linear(code)), code, "μ-law {code:#x}");
            }
        }
    }

    #[test]
    fn quantisation_error_is_bounded() {
        for s in (i16::MIN..=i16::MAX).step_by(7) {
            for (encode, decode) in
                [(linear_to_ulaw as fn(i16) -> u8, ulaw_to_linear as fn(u8) -> i16), (linear_to_alaw, alaw_to_linear)]
            {
                let back = decode(encode(s)) as i32;
                let err = (back - s as i32).abs();
                // Segment step is at most 1024 (half-step error 512) at the top.
                assert!(err <= 1024 && (s.unsigned_abs() > 4096 || err <= 130), "{s} -> {back}");
            }
        }
    }

    #[test]
    fn trait_codec_round_trip() {
        for kind in [CodecKind::Pcmu, CodecKind::Pcma] {
            let mut coder = kind.new_coder(&OpusSettings::default()).unwrap();
            let pcm: Vec<i16> = (0..160).map(|i| ((i as f32 * 0.3).sin() * 10000.0) as i16).collect();
            let mut bytes = [0u8; 160];
            assert_eq!(coder.encode(&pcm, &mut bytes), 160);
            let mut back = [0i16; 160];
            assert_eq!(coder.decode(&bytes, &mut back), 160);
            for (a, b) in pcm.iter().zip(back) {
                assert!((*a as i32 - b as i32).abs() < 400);
            }
        }
    }

    /// A voiced-like test signal at 16 kHz: a 160 Hz pitch and three harmonics.
    fn voice_16k(len: usize) -> Vec<i16> {
        (0..len)
            .map(|n| {
                let phase = 2.0 * std::f64::consts::PI * 160.0 * n as f64 / 16000.0;
                (5000.0 * phase.sin() + 2500.0 * (2.0 * phase).sin() + 1200.0 * (3.0 * phase + 1.0).sin()
                    - 600.0 * (5.0 * phase).sin())
                .round() as i16
            })
            .collect()
    }

    fn g722_packets(pcm: &[i16]) -> Vec<[u8; 160]> {
        let mut coder = G722::new();
        pcm.chunks_exact(320)
            .map(|frame| {
                let mut packet = [0u8; 160];
                assert_eq!(coder.encode(frame, &mut packet), 160);
                packet
            })
            .collect()
    }

    #[test]
    fn g722_decodes_as_its_decoder_does_while_nothing_is_lost() {
        let encoded = include_bytes!("../../tests/vectors/g722/encoded-64k.g722");
        let (mut coder, mut decoder) = (G722::new(), G722Decoder::new());
        let (mut ours, mut expected) = ([0i16; 320], [0i16; 320]);
        for packet in encoded.chunks(160) {
            let n = decoder.decode(packet, &mut expected);
            assert_eq!(coder.decode(packet, &mut ours), n);
            assert_eq!(ours[..n], expected[..n]);
        }
    }

    #[test]
    fn g722_conceals_a_lost_packet_in_its_bands() {
        let packets = g722_packets(&voice_16k(320 * 40));
        let (mut clean, mut lossy) = (G722::new(), G722::new());
        let (mut heard, mut played) = (Vec::new(), Vec::new());
        for (i, packet) in packets.iter().enumerate() {
            let (mut a, mut b) = ([0i16; 320], [0i16; 320]);
            clean.decode(packet, &mut a);
            if i == 20 {
                assert!(lossy.conceal(&mut b));
            } else {
                lossy.decode(packet, &mut b);
            }
            heard.extend_from_slice(&a);
            played.extend_from_slice(&b);
        }
        let dot = |x: &[i16], y: &[i16]| x.iter().zip(y).map(|(&p, &q)| f64::from(p) * f64::from(q)).sum::<f64>();
        // The lost 20 ms continue the voice...
        let (lost, truth) = (&played[20 * 320..21 * 320], &heard[20 * 320..21 * 320]);
        let correlation = dot(lost, truth) / (dot(lost, lost) * dot(truth, truth)).sqrt();
        assert!(correlation > 0.9, "correlation {correlation}");
        // ...without a click at either end...
        let max_step = |pcm: &[i16]| pcm.windows(2).map(|w| (i32::from(w[1]) - i32::from(w[0])).abs()).max().unwrap();
        let (natural, joins) = (max_step(&heard[10 * 320..]), max_step(&played[19 * 320..23 * 320]));
        assert!(f64::from(joins) <= 1.5 * f64::from(natural), "step {joins} against {natural}");
        // ...and the decoder, which the gap put out of step, is back in step
        // with the encoder 200 ms after it.
        let (after, truth) = (&played[31 * 320..], &heard[31 * 320..]);
        let noise: f64 = after.iter().zip(truth).map(|(&p, &q)| (f64::from(p) - f64::from(q)).powi(2)).sum();
        let snr = 10.0 * (dot(truth, truth) / noise.max(1.0)).log10();
        assert!(snr > 30.0, "SNR {snr:.1} dB after the loss");
    }
}
