//! G.722 wideband audio at 64 kbit/s (ITU-T G.722 mode 1), written from the
//! Recommendation's description of the algorithm.
//!
//! The transmit quadrature mirror filter (QMF) splits 16 kHz audio into a
//! lower and a higher sub-band at 8 kHz each. Each band is coded by adaptive
//! differential PCM (ADPCM): the lower band with 6 bits a sample, the higher
//! with 2. One byte carries a code of each, the higher band's 2 bits on top
//! (the RFC 3551 payload layout). The decoder repeats the encoder's adaptation
//! and joins the bands again with the receive QMF.
//!
//! Names follow the Recommendation: its blocks in capitals (QUANTL, LOGSCL,
//! UPPOL2, ...) and its variables (DETL, NBL, AL1, ...). The arithmetic is its
//! 16-bit fixed point, saturating where it saturates, so the ADPCM matches the
//! Recommendation's test sequences bit for bit. Nothing here allocates: the
//! mixer calls it in its real-time tick.

/// The QMF coefficients h0..h23, scaled by 2^13; both QMFs use them.
const QMF_COEFFS: [i32; 24] = [
    3, -11, -11, 53, 12, -156, 32, 362, -210, -805, 951, 3876, 3876, 951, -805, -210, 362, 32, -156, 12, 53, -11, -11,
    3,
];

/// QUANTL's decision levels: magnitude interval MIL (1..=30) starts at
/// `Q6[MIL - 1] * DETL >> 12`.
const Q6: [i32; 30] = [
    0, 35, 72, 110, 150, 190, 233, 276, 323, 370, 422, 473, 530, 587, 650, 714, 786, 858, 940, 1023, 1121, 1219, 1339,
    1458, 1612, 1765, 1980, 2195, 2557, 2919,
];

/// QUANTL's 6-bit code for a positive difference, by MIL - 1.
const ILP: [u8; 30] = [
    61, 60, 59, 58, 57, 56, 55, 54, 53, 52, 51, 50, 49, 48, 47, 46, 45, 44, 43, 42, 41, 40, 39, 38, 37, 36, 35, 34, 33,
    32,
];

/// QUANTL's 6-bit code for a negative difference, by MIL - 1.
const ILN: [u8; 30] =
    [63, 62, 31, 30, 29, 28, 27, 26, 25, 24, 23, 22, 21, 20, 19, 18, 17, 16, 15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4];

/// INVQBL's 6-bit output levels, by MIL - 1, in the units of `Q6`.
const QQ6: [i32; 30] = [
    17, 54, 91, 130, 170, 211, 254, 300, 347, 396, 447, 501, 558, 618, 682, 750, 822, 899, 982, 1072, 1170, 1279, 1399,
    1535, 1689, 1873, 2088, 2376, 2738, 3101,
];

/// RIL4: the magnitude of each 4-bit code IL4 (the 6-bit code's top four
/// bits). Codes 1..=7 are negative and 8..=14 positive, each from the outermost
/// level in; 0 and 15 are the zero level.
const RIL4: [usize; 16] = [0, 7, 6, 5, 4, 3, 2, 1, 7, 6, 5, 4, 3, 2, 1, 0];

/// INVQAL's 4-bit output levels, by RIL4 magnitude.
const QQ4: [i32; 8] = [0, 150, 323, 530, 786, 1121, 1612, 2557];

/// LOGSCL's steps of the log scale factor NBL, by RIL4 magnitude.
const WL: [i32; 8] = [-60, -30, 58, 172, 334, 538, 1198, 3042];

/// QUANTH's decision level between the higher band's inner and outer levels.
const Q2: i32 = 564;

/// INVQAH's output levels for the inner (MIH = 1) and outer (MIH = 2) level.
const QQ2: [i32; 2] = [202, 926];

/// LOGSCH's steps of the log scale factor NBH, inner and outer level.
const WH: [i32; 2] = [-214, 798];

/// ILB: 2048 * 2^(i/32), the mantissa of the scale factors in SCALEL/SCALEH.
const ILB: [i32; 32] = [
    2048, 2093, 2139, 2186, 2233, 2282, 2332, 2383, 2435, 2489, 2543, 2599, 2656, 2714, 2774, 2834, 2896, 2960, 3025,
    3091, 3158, 3228, 3298, 3371, 3444, 3520, 3597, 3676, 3756, 3838, 3922, 4008,
];

/// INVQBL by 6-bit code: the signed output level, times 8 (the
/// Recommendation's `<< 3`) for the Q15 multiply by DETL.
const INVQBL: [i16; 64] = invqbl_table();

const fn invqbl_table() -> [i16; 64] {
    // Codes 0..=3 are never sent; they decode like 63, the smallest negative level.
    let mut table = [(-QQ6[0] * 8) as i16; 64];
    let mut mil = 0;
    while mil < 30 {
        table[ILP[mil] as usize] = (QQ6[mil] * 8) as i16;
        table[ILN[mil] as usize] = (-QQ6[mil] * 8) as i16;
        mil += 1;
    }
    table
}

/// Clamps to 16 bits, the Recommendation's saturation.
fn saturate(x: i32) -> i16 {
    x.clamp(i16::MIN.into(), i16::MAX.into()) as i16
}

/// The Q15 product of two 16-bit values, saturated.
fn mul(a: i16, b: i16) -> i16 {
    saturate((i32::from(a) * i32::from(b)) >> 15)
}

/// LIMIT: the band signals are 15-bit.
fn limit(x: i16) -> i16 {
    x.clamp(-16384, 16383)
}

/// QUANTL: the 6-bit code of the lower band's difference `el`.
fn quantl(el: i16, detl: i16) -> u8 {
    // The Recommendation takes -EL - 1 (ones' complement) as the magnitude of
    // a negative EL; it fits 16 bits even for -32768.
    let wd = i32::from(if el < 0 { !el } else { el });
    let detl = i32::from(detl);
    // MIL - 1: how many of the decision levels above the first one WD reaches.
    let mil = Q6[1..].iter().take_while(|&&q| wd >= (q * detl) >> 12).count();
    if el < 0 {
        ILN[mil]
    } else {
        ILP[mil]
    }
}

/// QUANTH: the 2-bit code of the higher band's difference `eh`: bit 1 set
/// for a positive difference, bit 0 set for the inner level.
fn quanth(eh: i16, deth: i16) -> u8 {
    let wd = i32::from(if eh < 0 { !eh } else { eh });
    let inner = wd < (Q2 * i32::from(deth)) >> 12;
    (u8::from(eh >= 0) << 1) | u8::from(inner)
}

/// SCALEL and SCALEH: the linear scale factor, 2^(NB/2048) times the band's
/// minimum. NB's top bits are the exponent and the next five index the
/// mantissa ILB; `shift` sets the minimum, at NB = 0: DETL 32, DETH 8.
fn scale_factor(nb: i16, shift: u32) -> i16 {
    let nb = i32::from(nb);
    let mantissa = ILB[((nb >> 6) & 31) as usize];
    (((mantissa << (nb >> 11)) >> shift) << 2) as i16
}

/// What one sub-band's ADPCM keeps from sample to sample: the quantiser scale
/// factor and the adaptive predictor (two poles, six zeros). The encoder's
/// and the decoder's copies stay equal as long as every code arrives.
#[derive(Clone, Debug)]
struct Band {
    /// Log scale factor NBL / NBH.
    nb: i16,
    /// Quantiser scale factor DETL / DETH, from `nb`.
    det: i16,
    /// Pole coefficients AL1, AL2 (Q14).
    a: [i16; 2],
    /// Zero coefficients BL1..BL6 (Q14).
    b: [i16; 6],
    /// Past quantised differences DLT1..DLT6, newest first.
    d: [i16; 6],
    /// Past partially reconstructed signals PLT1, PLT2.
    p: [i16; 2],
    /// Past reconstructed signals RLT1, RLT2.
    r: [i16; 2],
    /// The zero section's share of the prediction (SZL).
    sz: i16,
    /// The prediction of the next sample (SL).
    s: i16,
}

impl Band {
    /// The reset state: all zero but the scale factor, at its minimum.
    const fn new(det: i16) -> Self {
        Self { nb: 0, det, a: [0; 2], b: [0; 6], d: [0; 6], p: [0; 2], r: [0; 2], sz: 0, s: 0 }
    }

    /// SUBTRA and QUANTL: the lower band's code for the sample `xl`.
    fn encode_low(&mut self, xl: i16) -> u8 {
        let ilr = quantl(xl.saturating_sub(self.s), self.det);
        self.adapt_low(ilr);
        ilr
    }

    /// SUBTRA and QUANTH: the higher band's code for the sample `xh`.
    fn encode_high(&mut self, xh: i16) -> u8 {
        let ih = quanth(xh.saturating_sub(self.s), self.det);
        self.adapt_high(ih);
        ih
    }

    /// INVQBL, RECONS and LIMIT: the lower band's sample for the 6-bit code
    /// `ilr` (mode 1 uses all six bits).
    fn decode_low(&mut self, ilr: u8) -> i16 {
        let dl = mul(self.det, INVQBL[usize::from(ilr)]);
        let rl = limit(self.s.saturating_add(dl));
        self.adapt_low(ilr);
        rl
    }

    /// The higher band's sample for the 2-bit code `ih`: its reconstructed
    /// signal, through LIMIT.
    fn decode_high(&mut self, ih: u8) -> i16 {
        limit(self.adapt_high(ih))
    }

    /// INVQAL, LOGSCL and SCALEL, then the predictor: the lower band's
    /// adaptation to the code `ilr`, the same in encoder and decoder.
    fn adapt_low(&mut self, ilr: u8) {
        // Only the top four bits drive the adaptation, so it stays in step
        // when the lowest bits carry data instead (modes 2 and 3).
        let il4 = usize::from(ilr >> 2);
        let magnitude = RIL4[il4];
        let level = (QQ4[magnitude] << 3) as i16;
        // INVQAL scales with DETL from before this sample.
        let dlt = mul(self.det, if il4 < 8 { -level } else { level });
        // LOGSCL: NBL leaks by 2^-7 and steps by WL, down for small codes
        // and up for large ones.
        self.nb = (i32::from(mul(self.nb, 32512)) + WL[magnitude]).clamp(0, 18432) as i16;
        self.det = scale_factor(self.nb, 8);
        self.adapt_predictor(dlt);
    }

    /// INVQAH, LOGSCH and SCALEH, then the predictor: the higher band's
    /// adaptation to the code `ih`. Returns the reconstructed signal.
    fn adapt_high(&mut self, ih: u8) -> i16 {
        let outer = usize::from(ih & 1 == 0);
        let level = (QQ2[outer] << 3) as i16;
        let dh = mul(self.det, if ih < 2 { -level } else { level });
        self.nb = (i32::from(mul(self.nb, 32512)) + WH[outer]).clamp(0, 22528) as i16;
        self.det = scale_factor(self.nb, 10);
        self.adapt_predictor(dh)
    }

    /// The predictor's update with the quantised difference `dt`: PARREC,
    /// RECONS, UPPOL2, UPPOL1, UPZERO, DELAYA, FILTEP, FILTEZ and PREDIC.
    /// Returns the reconstructed signal.
    fn adapt_predictor(&mut self, dt: i16) -> i16 {
        // PARREC and RECONS: the partially (zero section only) and the fully
        // reconstructed signal.
        let p0 = dt.saturating_add(self.sz);
        let r0 = self.s.saturating_add(dt);

        // UPPOL2 and UPPOL1: sign-sign steps on the pole coefficients, with
        // leakage, kept inside the stability triangle |AL2| <= 3/4,
        // |AL1| <= 15/16 - AL2.
        let same_sign_p1 = (p0 < 0) == (self.p[0] < 0);
        let same_sign_p2 = (p0 < 0) == (self.p[1] < 0);
        // AL2 steps by 2^-7 towards sgn(p0 p2) and by f(AL1) 2^-7 against
        // sgn(p0 p1), where f(AL1) = 4 AL1 saturates at |AL1| = 1/2.
        let four_a1 = saturate(i32::from(self.a[0]) << 2);
        let coupling = i32::from(if same_sign_p1 { four_a1.saturating_neg() } else { four_a1 } >> 7);
        let step2 = if same_sign_p2 { 128 } else { -128 };
        let a2 = (coupling + step2 + i32::from(mul(self.a[1], 32512))).clamp(-12288, 12288);
        // AL1 steps by 3 * 2^-8 towards sgn(p0 p1).
        let step1 = if same_sign_p1 { 192 } else { -192 };
        let bound = 15360 - a2;
        let a1 = (step1 + i32::from(mul(self.a[0], 32640))).clamp(-bound, bound);
        self.a = [a1 as i16, a2 as i16];

        // UPZERO: each zero steps towards agreeing in sign with the
        // difference it multiplied, and leaks; no step when DLT is 0.
        let step = if dt == 0 { 0 } else { 128 };
        for (b, &d) in self.b.iter_mut().zip(&self.d) {
            let leaked = mul(*b, 32640);
            *b = if (dt < 0) == (d < 0) { leaked.saturating_add(step) } else { leaked.saturating_sub(step) };
        }

        // DELAYA
        self.d.copy_within(0..5, 1);
        self.d[0] = dt;
        self.p = [p0, self.p[0]];
        self.r = [r0, self.r[0]];

        // FILTEZ, summed from the oldest tap (the order matters once it saturates).
        let mut sz: i16 = 0;
        for (&b, &d) in self.b.iter().zip(&self.d).rev() {
            sz = sz.saturating_add(mul(d.saturating_add(d), b));
        }
        self.sz = sz;
        // FILTEP
        let spl = mul(self.r[0].saturating_add(self.r[0]), self.a[0])
            .saturating_add(mul(self.r[1].saturating_add(self.r[1]), self.a[1]));
        // PREDIC
        self.s = spl.saturating_add(self.sz);
        r0
    }
}

/// The two sub-band ADPCM coders without the QMFs: what the Recommendation's
/// digital test sequences (Appendix II) exercise.
#[derive(Clone, Debug)]
struct Adpcm {
    low: Band,
    high: Band,
}

impl Adpcm {
    /// The reset state: DETL 32 and DETH 8, everything else zero.
    const fn new() -> Self {
        Self { low: Band::new(32), high: Band::new(8) }
    }

    /// The byte for one lower- and one higher-band sample.
    fn encode(&mut self, xl: i16, xh: i16) -> u8 {
        (self.high.encode_high(xh) << 6) | self.low.encode_low(xl)
    }

    /// The lower- and higher-band samples for one byte.
    fn decode(&mut self, code: u8) -> (i16, i16) {
        (self.low.decode_low(code & 0x3f), self.high.decode_high(code >> 6))
    }
}

/// G.722 encoder: 16 kHz 16-bit PCM to 64 kbit/s.
#[derive(Clone, Debug)]
pub struct G722Encoder {
    /// The transmit QMF's last 24 input samples, newest first.
    x: [i32; 24],
    adpcm: Adpcm,
}

impl Default for G722Encoder {
    fn default() -> Self {
        Self::new()
    }
}

impl G722Encoder {
    /// An encoder in the Recommendation's reset state.
    pub fn new() -> Self {
        Self { x: [0; 24], adpcm: Adpcm::new() }
    }

    /// Encodes `pcm` into `out`, one byte per two samples, and returns the
    /// bytes written: as many as both slices hold (an odd last sample is
    /// dropped).
    pub fn encode(&mut self, pcm: &[i16], out: &mut [u8]) -> usize {
        let n = (pcm.len() / 2).min(out.len());
        for (pair, code) in pcm.chunks_exact(2).zip(&mut out[..n]) {
            let (xl, xh) = self.split(pair[0], pair[1]);
            *code = self.adpcm.encode(xl, xh);
        }
        n
    }

    /// The transmit QMF: the lower- and higher-band samples for the next two
    /// input samples.
    fn split(&mut self, first: i16, second: i16) -> (i16, i16) {
        self.x.copy_within(0..22, 2);
        self.x[1] = first.into();
        self.x[0] = second.into();
        // xA: the even taps, over the newer sample of each pair; xB: the odd
        // taps, over the older one.
        let (mut xa, mut xb) = (0, 0);
        for (h, x) in QMF_COEFFS.chunks_exact(2).zip(self.x.chunks_exact(2)) {
            xa += h[0] * x[0];
            xb += h[1] * x[1];
        }
        // The taps sum to 2^13, so >> 14 takes 16-bit input to the bands'
        // 15-bit scale, keeping its two bits below the Recommendation's 14.
        // No LIMIT to 15 bits here, as in spandsp, which made our vectors. (The
        // ITU's C code has one: the two differ only for input loud enough to
        // take a band past 15 bits.) SUBTRA saturates instead.
        (saturate((xa + xb) >> 14), saturate((xa - xb) >> 14))
    }
}

/// G.722 decoder: 64 kbit/s to 16 kHz 16-bit PCM.
#[derive(Clone, Debug)]
pub struct G722Decoder {
    /// The receive QMF's last 12 pairs of band difference xd and sum xs,
    /// newest first.
    x: [i32; 24],
    adpcm: Adpcm,
}

impl Default for G722Decoder {
    fn default() -> Self {
        Self::new()
    }
}

impl G722Decoder {
    /// A decoder in the Recommendation's reset state.
    pub fn new() -> Self {
        Self { x: [0; 24], adpcm: Adpcm::new() }
    }

    /// Decodes `data` into `out`, two samples per byte, and returns the
    /// samples written: as many as both slices hold.
    pub fn decode(&mut self, data: &[u8], out: &mut [i16]) -> usize {
        let n = data.len().min(out.len() / 2);
        for (&code, pair) in data[..n].iter().zip(out.chunks_exact_mut(2)) {
            let (rl, rh) = self.adpcm.decode(code);
            pair.copy_from_slice(&self.join(rl, rh));
        }
        2 * n
    }

    /// Decodes `data` into the lower- and higher-band signals, one sample of
    /// each per byte, without the receive QMF; returns the bytes decoded: as
    /// many as all three slices hold. [`synthesize`](Self::synthesize) makes
    /// the output from them, so that concealment can work on the bands.
    pub fn decode_bands(&mut self, data: &[u8], low: &mut [i16], high: &mut [i16]) -> usize {
        let n = data.len().min(low.len()).min(high.len());
        for ((&code, rl), rh) in data[..n].iter().zip(low.iter_mut()).zip(high.iter_mut()) {
            (*rl, *rh) = self.adpcm.decode(code);
        }
        n
    }

    /// The receive QMF over band signals: two output samples per pair of
    /// `low` and `high` samples; returns the samples written: as many as all
    /// three slices hold.
    pub fn synthesize(&mut self, low: &[i16], high: &[i16], out: &mut [i16]) -> usize {
        let n = low.len().min(high.len()).min(out.len() / 2);
        for ((&rl, &rh), pair) in low[..n].iter().zip(high).zip(out.chunks_exact_mut(2)) {
            pair.copy_from_slice(&self.join(rl, rh));
        }
        2 * n
    }

    /// The receive QMF: two output samples from a lower- and a higher-band
    /// sample.
    fn join(&mut self, rl: i16, rh: i16) -> [i16; 2] {
        let (rl, rh) = (i32::from(rl), i32::from(rh));
        self.x.copy_within(0..22, 2);
        self.x[0] = rl - rh;
        self.x[1] = rl + rh;
        let (mut first, mut second) = (0, 0);
        for (h, x) in QMF_COEFFS.chunks_exact(2).zip(self.x.chunks_exact(2)) {
            first += h[0] * x[0];
            second += h[1] * x[1];
        }
        // Each half of the taps sums to 2^12 and the bands carry the signal at
        // half scale, so >> 11 restores it. Past full scale it saturates
        // rather than wrapping round.
        [saturate(first >> 11), saturate(second >> 11)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The words of an Appendix II test sequence. Its ASCII lines hold sixteen
    /// 16-bit words in hex and a checksum byte that makes the sum of the
    /// line's characters 0 modulo 256; lines starting "/*" are comments.
    fn itu_words(text: &str) -> Vec<u16> {
        let mut words = Vec::new();
        for line in text.lines().filter(|line| !line.starts_with("/*")) {
            assert_eq!(line.len(), 66, "line {line:?}");
            let (hex, checksum) = line.split_at(64);
            let sum = hex.bytes().map(u32::from).sum::<u32>() + u32::from_str_radix(checksum, 16).unwrap();
            assert_eq!(sum % 256, 0, "checksum of {line:?}");
            words.extend((0..64).step_by(4).map(|i| u16::from_str_radix(&hex[i..i + 4], 16).unwrap()));
        }
        words
    }

    // In the test sequences bit 0 of every word is the reset input: set, the
    // coder is reset and the expected output word is 0x0001. Samples are the
    // 15-bit band signals in the upper bits, codes the top byte.

    #[test]
    fn itu_encoder_sequence_t1c2_gives_t2r2() {
        let input = itu_words(include_str!("../../tests/vectors/g722/itu/T1C2.XMT"));
        let expected = itu_words(include_str!("../../tests/vectors/g722/itu/T2R2.COD"));
        assert_eq!(input.len(), expected.len());
        let mut adpcm = Adpcm::new();
        let mut coded = 0;
        for (i, (&x, &cod)) in input.iter().zip(&expected).enumerate() {
            if x & 1 == 1 {
                adpcm = Adpcm::new();
                assert_eq!(cod, 1, "word {i}");
                continue;
            }
            // The QMF is bypassed: the same sample goes to both bands.
            let sample = (x as i16) >> 1;
            assert_eq!(u16::from(adpcm.encode(sample, sample)) << 8, cod, "word {i}");
            coded += 1;
        }
        assert_eq!(coded, 768);
    }

    #[test]
    fn itu_decoder_sequence_t2r2_gives_t3l2_and_t3h2() {
        let input = itu_words(include_str!("../../tests/vectors/g722/itu/T2R2.COD"));
        let low = itu_words(include_str!("../../tests/vectors/g722/itu/T3L2.RC1"));
        let high = itu_words(include_str!("../../tests/vectors/g722/itu/T3H2.RC0"));
        assert!(input.len() == low.len() && input.len() == high.len());
        let mut adpcm = Adpcm::new();
        let mut decoded = 0;
        for (i, ((&cod, &rl), &rh)) in input.iter().zip(&low).zip(&high).enumerate() {
            if cod & 1 == 1 {
                adpcm = Adpcm::new();
                assert_eq!((rl, rh), (1, 1), "word {i}");
                continue;
            }
            let (ours_low, ours_high) = adpcm.decode((cod >> 8) as u8);
            assert_eq!(((ours_low << 1) as u16, (ours_high << 1) as u16), (rl, rh), "word {i}");
            decoded += 1;
        }
        assert_eq!(decoded, 768);
    }

    fn samples(bytes: &[u8]) -> Vec<i16> {
        bytes.chunks_exact(2).map(|b| i16::from_le_bytes([b[0], b[1]])).collect()
    }

    // The spandsp vectors were made in 20 ms calls: 320 samples, 160 bytes.

    #[test]
    fn encoder_matches_spandsp() {
        let pcm = samples(include_bytes!("../../tests/vectors/g722/input-16k.raw"));
        let expected = include_bytes!("../../tests/vectors/g722/encoded-64k.g722");
        let mut encoder = G722Encoder::new();
        let mut encoded = vec![0; expected.len()];
        for (frame, out) in pcm.chunks(320).zip(encoded.chunks_mut(160)) {
            assert_eq!(encoder.encode(frame, out), 160);
        }
        let first_difference = encoded.iter().zip(expected).position(|(a, b)| a != b);
        assert_eq!(first_difference, None);
    }

    #[test]
    fn decoder_matches_spandsp_but_saturates_where_it_wraps() {
        let encoded = include_bytes!("../../tests/vectors/g722/encoded-64k.g722");
        let expected = samples(include_bytes!("../../tests/vectors/g722/decoded-16k.raw"));
        let mut decoder = G722Decoder::new();
        let mut decoded = vec![0; expected.len()];
        for (frame, out) in encoded.chunks(160).zip(decoded.chunks_mut(320)) {
            assert_eq!(decoder.decode(frame, out), 320);
        }
        let mut wrapped = 0;
        for (i, (&ours, &theirs)) in decoded.iter().zip(&expected).enumerate() {
            if ours != theirs {
                // spandsp keeps an overloaded sample's low 16 bits, which flips its sign.
                let saturated = (ours == i16::MAX && theirs < 0) || (ours == i16::MIN && theirs >= 0);
                assert!(saturated, "sample {i}: ours {ours}, spandsp {theirs}");
                wrapped += 1;
            }
        }
        // All in the full-scale segments of the input.
        assert_eq!(wrapped, 305);
    }

    #[test]
    fn decoder_takes_any_bytes() {
        // Payloads come from the network: every code, in any order, must
        // decode without overflow (which would panic in debug builds).
        let mut bytes: Vec<u8> = (0..=255).collect();
        let mut state = 1u32;
        bytes.extend((0..8000).map(|_| {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (state >> 24) as u8
        }));
        let mut decoder = G722Decoder::new();
        let mut out = [0; 512];
        for chunk in bytes.chunks(256) {
            assert_eq!(decoder.decode(chunk, &mut out), 2 * chunk.len());
        }
    }

    #[test]
    fn decoding_by_bands_is_decoding() {
        let encoded = include_bytes!("../../tests/vectors/g722/encoded-64k.g722");
        let (mut whole, mut banded) = (G722Decoder::new(), G722Decoder::new());
        let (mut expected, mut out) = ([0; 320], [0; 320]);
        let (mut low, mut high) = ([0; 160], [0; 160]);
        for frame in encoded.chunks(160) {
            let n = whole.decode(frame, &mut expected);
            let bands = banded.decode_bands(frame, &mut low, &mut high);
            assert_eq!(banded.synthesize(&low[..bands], &high[..bands], &mut out), n);
            assert_eq!(out[..n], expected[..n]);
        }
    }

    #[test]
    fn tone_round_trip_keeps_20_db_snr() {
        let tone: Vec<i16> = (0..16000)
            .map(|n| (10000.0 * (2.0 * std::f64::consts::PI * 1000.0 * n as f64 / 16000.0).sin()) as i16)
            .collect();
        let mut encoded = vec![0; tone.len() / 2];
        let mut decoded = vec![0; tone.len()];
        assert_eq!(G722Encoder::new().encode(&tone, &mut encoded), encoded.len());
        assert_eq!(G722Decoder::new().decode(&encoded, &mut decoded), decoded.len());
        // The two QMFs delay the signal by 22 samples; skip the first 100 ms,
        // while the adaptation settles.
        const DELAY: usize = 22;
        let (mut signal, mut noise) = (0.0, 0.0);
        for (&x, &y) in tone[1600..].iter().zip(&decoded[1600 + DELAY..]) {
            signal += f64::from(x).powi(2);
            noise += (f64::from(x) - f64::from(y)).powi(2);
        }
        let snr = 10.0 * (signal / noise).log10();
        assert!(snr > 20.0, "SNR {snr:.1} dB");
    }
}
