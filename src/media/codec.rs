//! Codecs behind one small trait, so the mixer never names a codec.
//!
//! G.711 (ITU-T G.711 μ-law and A-law) is done by hand: decoding is a
//! 256-entry table built at compile time, encoding the standard segment search.

/// The codecs sipbridge negotiates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CodecKind {
    Pcmu,
    Pcma,
}

impl CodecKind {
    pub fn encoding_name(self) -> &'static str {
        match self {
            CodecKind::Pcmu => "PCMU",
            CodecKind::Pcma => "PCMA",
        }
    }

    pub fn clock_rate(self) -> u32 {
        8000
    }

    /// The RFC 3551 static payload type.
    pub fn static_payload_type(self) -> u8 {
        match self {
            CodecKind::Pcmu => 0,
            CodecKind::Pcma => 8,
        }
    }

    pub fn from_static_payload_type(pt: u8) -> Option<Self> {
        match pt {
            0 => Some(CodecKind::Pcmu),
            8 => Some(CodecKind::Pcma),
            _ => None,
        }
    }

    /// Samples in one 20 ms frame at the codec's clock rate.
    pub fn frame_samples(self) -> usize {
        self.clock_rate() as usize / 50
    }

    /// A fresh coder for one leg. Called when a leg joins, never in the tick.
    pub fn new_coder(self) -> Box<dyn AudioCodec> {
        match self {
            CodecKind::Pcmu => Box::new(G711::<true>),
            CodecKind::Pcma => Box::new(G711::<false>),
        }
    }
}

/// One leg's encoder and decoder. Implementations must not allocate in
/// `encode` or `decode`: the mixer calls them in its tick.
pub trait AudioCodec: Send {
    fn kind(&self) -> CodecKind;
    /// Decodes `payload` into `out`, returning the samples written.
    fn decode(&mut self, payload: &[u8], out: &mut [i16]) -> usize;
    /// Encodes `pcm` into `out`, returning the bytes written.
    fn encode(&mut self, pcm: &[i16], out: &mut [u8]) -> usize;
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
            let mut coder = kind.new_coder();
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
}
