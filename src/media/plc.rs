//! Loss concealment and comfort noise for codecs that have neither (G.711, G.722).
//!
//! [`WaveformPlc`] fills lost frames by repeating the last pitch period, after
//! ITU-T G.711 Appendix I. [`parse_cn`], [`ComfortNoiseGenerator`] and
//! [`write_cn`] handle RFC 3389 comfort noise. Storage is allocated by the
//! constructors; every other function runs in the mixer tick and never
//! allocates, locks or blocks.
//!
//! Levels are in dBov against a full-scale square wave (±32767, so RMS 32767):
//! a full-scale sine is at -3 dBov. RFC 3389 §3.1 puts 0 dBov for μ-law at a
//! square wave of ±8031 in 14-bit units (±32124 in 16-bit), 0.17 dB lower, which
//! is well inside the 1 dB step of the level byte.

/// RMS of the 0 dBov reference.
const FULL_SCALE: f64 = 32767.0;

/// Concealment by pitch-period repetition, after ITU-T G.711 Appendix I, at any
/// rate from 8 to 48 kHz (its 8 kHz constants scale with the rate) and for any
/// frame length.
///
/// Call [`good_frame`](Self::good_frame) with every decoded frame and
/// [`conceal`](Self::conceal) for every lost one, in play order. The first 10 ms
/// of a loss repeat the last pitch period, the next 10 ms the last two and from
/// then on the last three (repeating one period for long sounds buzzy); the
/// output is attenuated by 20% per 10 ms after the first 10 ms and is silent from
/// 60 ms on.
///
/// One difference from Appendix I: it delays its output by 3.75 ms so that, when
/// a loss starts, it can cross-fade the last quarter period it has not yet
/// played into the repeated signal. A mixer tick cannot afford that delay, so
/// here the join is smoothed on the synthetic side: the first quarter period of
/// the repeated signal is offset by the step the real signal would have made,
/// and the offset fades out.
#[derive(Debug)]
pub struct WaveformPlc {
    /// Samples in 10 ms, the unit in which the repetition grows and fades.
    block: usize,
    pitch_min: usize,
    pitch_max: usize,
    /// Samples at the end of the history matched against earlier ones to find the pitch.
    corr_len: usize,
    /// Stride, in lags and samples, of the coarse pitch search.
    coarse_step: usize,
    /// How much longer the cross-fade back into received audio gets per 10 ms lost.
    fade_in_step: usize,
    /// The samples played most recently (received or concealed), oldest first.
    history: Box<[i16]>,
    /// `history` as it was when the current loss started; the repeated periods are its end.
    source: Box<[f32]>,
    pitch: usize,
    /// Length of the stretch at the end of `source` being repeated: 1, 2, then 3 periods.
    cycle_len: usize,
    /// Position in that stretch of the next synthetic sample.
    cycle_pos: usize,
    /// After the stretch grew, the old one still fading out: its length, position,
    /// and how many samples of the fade are done.
    fading: Option<(usize, usize, usize)>,
    /// Last received sample minus the one a period before it; see the type docs.
    join_error: f32,
    /// Samples concealed in the current loss; 0 while audio is received.
    lost: usize,
}

/// Appendix I's floor on a candidate's energy in the pitch search (250 over its
/// 80 coarse samples), so that a nearly silent stretch does not look like a
/// perfect match.
const MIN_CANDIDATE_POWER: f32 = 250.0 / 80.0;

impl WaveformPlc {
    /// A concealer for audio at `sample_rate`, clamped to 8–48 kHz so that the
    /// pitch range is never empty and the history stays small.
    pub fn new(sample_rate: u32) -> Self {
        let rate = sample_rate.clamp(8000, 48000) as usize;
        let ms = |n: usize| n * rate / 1000;
        let (pitch_min, pitch_max) = (ms(5), ms(15));
        // Three periods of the longest pitch and the quarter period cross-faded
        // before them: 390 samples (48.75 ms) at 8 kHz, as in Appendix I.
        let history_len = 3 * pitch_max + pitch_max / 4;
        Self {
            block: ms(10),
            pitch_min,
            pitch_max,
            corr_len: ms(20),
            coarse_step: rate / 4000,
            fade_in_step: ms(4),
            history: vec![0; history_len].into_boxed_slice(),
            source: vec![0.0; history_len].into_boxed_slice(),
            pitch: pitch_min,
            cycle_len: pitch_min,
            cycle_pos: 0,
            fading: None,
            join_error: 0.0,
            lost: 0,
        }
    }

    /// Takes a received frame. The first one after a loss is cross-faded in from
    /// the continuing synthetic signal over a quarter period plus 4 ms per 10 ms
    /// lost after the first, at most 10 ms, so that there is no click.
    pub fn good_frame(&mut self, pcm: &mut [i16]) {
        if pcm.is_empty() {
            return;
        }
        if self.lost > 0 {
            let gain = self.gain();
            let blocks_lost = self.lost.div_ceil(self.block);
            let len = (self.overlap() + (blocks_lost - 1) * self.fade_in_step).min(self.block).min(pcm.len());
            for (i, sample) in pcm[..len].iter_mut().enumerate() {
                let weight = (i + 1) as f32 / len as f32;
                let synthetic = if gain > 0.0 { self.next_synthetic() } else { 0.0 };
                *sample = saturate(weight * f32::from(*sample) + (1.0 - weight) * gain * synthetic);
            }
            self.lost = 0;
        }
        self.remember(pcm);
    }

    /// Fills `out` in place of a lost frame.
    pub fn conceal(&mut self, out: &mut [i16]) {
        if out.is_empty() {
            return;
        }
        if self.lost == 0 {
            self.start_loss();
        }
        for sample in out.iter_mut() {
            let gain = self.gain();
            // Past 60 ms the output is silence and `lost` stops counting, which
            // keeps it bounded however long the loss lasts.
            *sample = if gain > 0.0 { saturate(gain * self.next_synthetic()) } else { 0 };
        }
        self.remember(out);
    }

    fn start_loss(&mut self) {
        for (s, &h) in self.source.iter_mut().zip(self.history.iter()) {
            *s = f32::from(h);
        }
        self.pitch = self.find_pitch();
        self.cycle_len = self.pitch;
        self.cycle_pos = 0;
        self.fading = None;
        let last = self.source.len() - 1;
        self.join_error = self.source[last] - self.source[last - self.pitch];
    }

    /// The lag, within 5–15 ms, at which the last 20 ms of the history best
    /// match what came before by normalized cross-correlation. Every
    /// `coarse_step`th lag is tried on every `coarse_step`th sample, then the lags
    /// around the best one on every sample. Ties go to the shorter lag: a signal
    /// periodic in P is periodic in 2P too.
    fn find_pitch(&self) -> usize {
        let end = self.source.len();
        let target = &self.source[end - self.corr_len..];
        let score = |lag: usize, step: usize| {
            let candidate = &self.source[end - self.corr_len - lag..end - lag];
            let (mut corr, mut energy) = (0.0f32, 0.0f32);
            for (&c, &t) in candidate.iter().zip(target).step_by(step) {
                corr += c * t;
                energy += c * c;
            }
            let floor = MIN_CANDIDATE_POWER * (self.corr_len / step) as f32;
            corr / energy.max(floor).sqrt()
        };
        let best_of = |lags: &mut dyn Iterator<Item = usize>, step: usize| {
            let mut best = (self.pitch_min, f32::NEG_INFINITY);
            for lag in lags {
                let s = score(lag, step);
                if s > best.1 {
                    best = (lag, s);
                }
            }
            best.0
        };
        let coarse = best_of(&mut (self.pitch_min..=self.pitch_max).step_by(self.coarse_step), self.coarse_step);
        let low = coarse.saturating_sub(self.coarse_step - 1).max(self.pitch_min);
        let high = (coarse + self.coarse_step - 1).min(self.pitch_max);
        best_of(&mut (low..=high), 1)
    }

    /// The next sample of the repeated signal, unattenuated, counted as concealed.
    fn next_synthetic(&mut self) -> f32 {
        if (self.lost == self.block || self.lost == 2 * self.block) && self.cycle_len < 3 * self.pitch {
            // Grow the stretch by a period. Positions a whole number of periods
            // apart are in phase, so the new one continues where the old one was.
            self.fading = Some((self.cycle_len, self.cycle_pos, 0));
            self.cycle_len += self.pitch;
            self.cycle_pos %= self.pitch;
        }
        let mut x = self.cycle_sample(self.cycle_len, self.cycle_pos);
        self.cycle_pos = (self.cycle_pos + 1) % self.cycle_len;
        if let Some((len, pos, done)) = self.fading {
            let overlap = self.overlap();
            let weight = (done + 1) as f32 / overlap as f32;
            x = weight * x + (1.0 - weight) * self.cycle_sample(len, pos);
            self.fading = (done + 1 < overlap).then_some((len, (pos + 1) % len, done + 1));
        }
        let overlap = self.overlap();
        if self.lost < overlap {
            x += self.join_error * (overlap - self.lost) as f32 / overlap as f32;
        }
        self.lost += 1;
        x
    }

    /// Sample `pos` of the last `len` samples of `source` played over and over.
    /// So that the end leads into the start, the last quarter period fades into
    /// the samples just before the stretch, which lead into its first sample.
    fn cycle_sample(&self, len: usize, pos: usize) -> f32 {
        let start = self.source.len() - len;
        let x = self.source[start + pos];
        match (pos + self.overlap()).checked_sub(len) {
            Some(i) => {
                let weight = (i + 1) as f32 / self.overlap() as f32;
                (1.0 - weight) * x + weight * self.source[start - (len - pos)]
            }
            None => x,
        }
    }

    /// Appendix I's cross-fade length: a quarter period.
    fn overlap(&self) -> usize {
        self.pitch / 4
    }

    /// Appendix I's attenuation at the current point of the loss.
    fn gain(&self) -> f32 {
        let past_first_block = self.lost.saturating_sub(self.block) as f32 / self.block as f32;
        (1.0 - 0.2 * past_first_block).max(0.0)
    }

    fn remember(&mut self, frame: &[i16]) {
        let len = self.history.len();
        if frame.len() >= len {
            self.history.copy_from_slice(&frame[frame.len() - len..]);
        } else {
            self.history.copy_within(frame.len().., 0);
            self.history[len - frame.len()..].copy_from_slice(frame);
        }
    }
}

/// Rounds to the nearest sample value; `as` saturates out-of-range values.
fn saturate(x: f32) -> i16 {
    x.round() as i16
}

/// The most reflection coefficients kept from a CN payload; RFC 3389 §3 lets a
/// receiver drop the higher orders.
pub const CN_MAX_ORDER: usize = 10;

/// What an RFC 3389 comfort-noise payload describes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ComfortNoiseParams {
    level: u8,
    order: usize,
    reflection: [f32; CN_MAX_ORDER],
}

impl ComfortNoiseParams {
    /// Noise level in -dBov: 0 is the loudest, 127 the quietest.
    pub fn level(&self) -> u8 {
        self.level
    }

    /// Reflection coefficients of the all-pole model of the noise spectrum,
    /// lowest order first, each in (-1, 1); empty for white noise.
    pub fn reflection_coefficients(&self) -> &[f32] {
        &self.reflection[..self.order]
    }
}

/// Parses an RFC 3389 comfort-noise payload: the level byte, then optionally one
/// quantized reflection coefficient per byte. `None` when it is empty or the
/// level byte has its reserved top bit set.
pub fn parse_cn(payload: &[u8]) -> Option<ComfortNoiseParams> {
    let (&level, indices) = payload.split_first()?;
    if level > 127 {
        return None;
    }
    let mut params = ComfortNoiseParams { level, order: 0, reflection: [0.0; CN_MAX_ORDER] };
    let used = &indices[..indices.len().min(CN_MAX_ORDER)];
    // Index 255 is reserved (§3.2). A model using it cannot be read, so keep just
    // the level, as receivers of the level-only format do (§2).
    if used.contains(&255) {
        return Some(params);
    }
    for (k, &n) in params.reflection.iter_mut().zip(used) {
        // §3.2: k = 258 (N - 127) / 32768, so N = 0..=254 covers ±0.99994.
        *k = 258.0 * (f32::from(n) - 127.0) / 32768.0;
    }
    params.order = used.len();
    Some(params)
}

/// The level of `pcm` in -dBov (its RMS against the full-scale square wave),
/// rounded and clamped to 0..=127 as the CN level byte is; 127 for silence.
pub fn level_dbov(pcm: &[i16]) -> u8 {
    let energy: f64 = pcm.iter().map(|&s| f64::from(s) * f64::from(s)).sum();
    let mean_square = energy / pcm.len().max(1) as f64;
    // Silence gives +inf here, which the clamp turns into 127.
    let level = -10.0 * (mean_square / (FULL_SCALE * FULL_SCALE)).log10();
    level.round().clamp(0.0, 127.0) as u8
}

/// Writes a CN payload describing `pcm` into `out`: just the level byte, a model
/// of order 0, which RFC 3389 §3.3 allows. Returns its length: 1, or 0 when
/// `out` is empty.
pub fn write_cn(pcm: &[i16], out: &mut [u8]) -> usize {
    match out.first_mut() {
        Some(level) => {
            *level = level_dbov(pcm);
            1
        }
        None => 0,
    }
}

/// Comfort noise as a peer's CN payloads describe it: white noise at their level,
/// shaped by their reflection coefficients through an all-pole filter.
///
/// The filter is a normalized lattice (Gray and Markel): each stage rotates its
/// two signals by the angle whose sine is the coefficient, so it puts out no more
/// energy than it is fed, whatever the coefficients and however they change, and
/// its steady-state gain is 1, so the noise fed in is already at the target
/// level. With extreme coefficients (poles next to the unit circle) the output
/// takes very long to reach that level, and what the filter has stored comes out
/// no louder than it went in.
#[derive(Debug, Clone)]
pub struct ComfortNoiseGenerator {
    order: usize,
    /// Sine and cosine of each stage's rotation: the reflection coefficient k and √(1 - k²).
    sin: [f64; CN_MAX_ORDER],
    cos: [f64; CN_MAX_ORDER],
    /// Target RMS.
    rms: f64,
    /// Backward signals of the lattice stages at the previous sample.
    state: [f64; CN_MAX_ORDER + 1],
    /// xorshift32 state, never 0.
    rng: u32,
}

impl ComfortNoiseGenerator {
    /// Silent until the first [`set`](Self::set). Give each leg its own `seed`
    /// so that noise from several legs does not add up coherently in the mix.
    pub fn new(seed: u32) -> Self {
        Self {
            order: 0,
            sin: [0.0; CN_MAX_ORDER],
            cos: [1.0; CN_MAX_ORDER],
            rms: 0.0,
            state: [0.0; CN_MAX_ORDER + 1],
            rng: seed.max(1),
        }
    }

    /// Switches to the noise `params` describe.
    pub fn set(&mut self, params: ComfortNoiseParams) {
        let k = params.reflection_coefficients();
        for (m, &km) in k.iter().enumerate() {
            self.sin[m] = f64::from(km);
            self.cos[m] = (1.0 - self.sin[m] * self.sin[m]).sqrt();
        }
        self.order = k.len();
        let rms = FULL_SCALE * 10f64.powf(-f64::from(params.level) / 20.0);
        // The state holds noise at the old level; rescaling it makes the new
        // level take effect at once instead of after the old noise rings out.
        if self.rms > 0.0 {
            let ratio = rms / self.rms;
            self.state.iter_mut().for_each(|s| *s *= ratio);
        }
        self.rms = rms;
    }

    /// Fills `out` with the next stretch of noise.
    pub fn generate(&mut self, out: &mut [i16]) {
        // Uniform noise on [-1, 1) has power 1/3.
        let excitation_gain = self.rms * 3f64.sqrt() / 2f64.powi(31);
        for sample in out.iter_mut() {
            // xorshift32: cheap, allocation-free and reproducible.
            self.rng ^= self.rng << 13;
            self.rng ^= self.rng >> 17;
            self.rng ^= self.rng << 5;
            let mut forward = excitation_gain * f64::from(self.rng as i32);
            for m in (0..self.order).rev() {
                let backward = self.state[m];
                self.state[m + 1] = self.sin[m] * forward + self.cos[m] * backward;
                forward = self.cos[m] * forward - self.sin[m] * backward;
            }
            self.state[0] = forward;
            *sample = forward.round() as i16;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sine(rate: u32, freq: f64, amplitude: f64, len: usize) -> Vec<i16> {
        let w = 2.0 * std::f64::consts::PI * freq / f64::from(rate);
        (0..len).map(|n| (amplitude * (w * n as f64).sin()).round() as i16).collect()
    }

    fn dot(a: &[i16], b: &[i16]) -> f64 {
        a.iter().zip(b).map(|(&x, &y)| f64::from(x) * f64::from(y)).sum()
    }

    fn max_step(pcm: &[i16]) -> i32 {
        pcm.windows(2).map(|w| (i32::from(w[1]) - i32::from(w[0])).abs()).max().unwrap_or(0)
    }

    /// What is played of `sent`, in `frame`-sample frames, when the frames in `lost` are lost.
    fn play(rate: u32, sent: &[i16], frame: usize, lost: &[usize]) -> Vec<i16> {
        let mut plc = WaveformPlc::new(rate);
        let mut played = sent.to_vec();
        for (i, chunk) in played.chunks_mut(frame).enumerate() {
            if lost.contains(&i) {
                plc.conceal(chunk);
            } else {
                plc.good_frame(chunk);
            }
        }
        played
    }

    fn check_one_lost_frame(rate: u32, freq: f64, frame: usize) {
        let sent = sine(rate, freq, 8000.0, 12 * frame);
        let played = play(rate, &sent, frame, &[8]);
        let (lost, truth) = (&played[8 * frame..9 * frame], &sent[8 * frame..9 * frame]);
        let correlation = dot(lost, truth) / (dot(lost, lost) * dot(truth, truth)).sqrt();
        assert!(correlation > 0.9, "correlation {correlation} at {rate} Hz, {freq} Hz, {frame}-sample frames");
        let (natural, joins) = (max_step(&sent), max_step(&played));
        assert!(f64::from(joins) <= 1.5 * f64::from(natural), "step {joins} against {natural}");
    }

    #[test]
    fn a_lost_frame_of_a_sine_is_continued_without_a_click() {
        check_one_lost_frame(8000, 200.0, 160);
        check_one_lost_frame(16000, 200.0, 320);
    }

    #[test]
    fn frames_and_periods_need_not_line_up() {
        // Periods of 44.4 and 58.4 samples at 8 kHz, 88.9 and 51.6 at 16 kHz.
        check_one_lost_frame(8000, 180.0, 160);
        check_one_lost_frame(8000, 200.0, 110);
        check_one_lost_frame(8000, 137.0, 77);
        check_one_lost_frame(16000, 180.0, 320);
        check_one_lost_frame(16000, 310.0, 250);
    }

    #[test]
    fn the_repeated_stretch_grows_from_one_period_to_three() {
        let mut plc = WaveformPlc::new(8000);
        plc.good_frame(&mut sine(8000, 200.0, 8000.0, 400));
        for periods in [1, 1, 2, 2, 3, 3, 3] {
            plc.conceal(&mut [0; 40]); // 5 ms
            assert_eq!(plc.cycle_len, periods * plc.pitch);
        }
    }

    #[test]
    fn joins_stay_smooth_when_the_signal_is_not_periodic() {
        // Three harmonics of a pitch swinging 150 ± 94 Hz five times a second, so
        // that no period repeats exactly and each join has something to smooth.
        let voice = |n: usize| {
            let t = n as f64 / 8000.0;
            let phase = 2.0 * std::f64::consts::PI * (150.0 * t + 3.0 * (2.0 * std::f64::consts::PI * 5.0 * t).sin());
            (6000.0 * phase.sin() + 3000.0 * (2.0 * phase).sin() + 1500.0 * (3.0 * phase + 1.0).sin()).round() as i16
        };
        for offset in (0..400).step_by(37) {
            let sent: Vec<i16> = (offset..offset + 12 * 160).map(voice).collect();
            for lost in [&[8][..], &[8, 9]] {
                let (natural, joins) = (max_step(&sent), max_step(&play(8000, &sent, 160, lost)));
                assert!(f64::from(joins) <= 1.5 * f64::from(natural), "step {joins} against {natural}");
            }
        }
    }

    #[test]
    fn a_long_loss_fades_to_silence_and_audio_fades_back_in() {
        for (rate, frame) in [(8000, 160), (16000, 320)] {
            let sent = sine(rate, 200.0, 8000.0, 16 * frame);
            let played = play(rate, &sent, frame, &[5, 6, 7, 8, 9, 10, 11]);
            let energy = |i: usize| dot(&played[i * frame..(i + 1) * frame], &played[i * frame..(i + 1) * frame]);
            assert!(energy(6) < energy(5) && energy(7) < energy(6));
            // Silent from 60 ms (3 frames) into the loss.
            assert!(played[8 * frame..12 * frame].iter().all(|&s| s == 0));
            assert!(max_step(&played) <= max_step(&sent) * 3 / 2);
            assert_eq!(played[13 * frame..], sent[13 * frame..]);
        }
    }

    #[test]
    fn silence_in_silence_out() {
        let mut plc = WaveformPlc::new(8000);
        let mut frame = [0i16; 160];
        plc.conceal(&mut frame);
        assert!(frame.iter().all(|&s| s == 0), "before any audio");
        plc.good_frame(&mut [0; 160]);
        plc.conceal(&mut frame);
        assert!(frame.iter().all(|&s| s == 0));
    }

    #[test]
    fn odd_rates_and_lengths_do_not_panic() {
        for rate in [0, 8000, 11025, 16000, 48000, u32::MAX] {
            let mut plc = WaveformPlc::new(rate);
            let mut long = sine(8000, 440.0, 30000.0, 5000);
            plc.good_frame(&mut long);
            plc.conceal(&mut []);
            plc.conceal(&mut [0; 1]);
            plc.good_frame(&mut []);
            plc.conceal(&mut long);
            plc.good_frame(&mut [i16::MAX; 3]);
            plc.conceal(&mut [0; 7]);
            plc.good_frame(&mut long);
        }
    }

    #[test]
    fn cn_payloads_parse_as_rfc_3389_says() {
        let level_only = parse_cn(&[40]).unwrap();
        assert_eq!(level_only.level(), 40);
        assert!(level_only.reflection_coefficients().is_empty());

        let p = parse_cn(&[127, 127, 0, 254, 191]).unwrap();
        assert_eq!(p.level(), 127);
        let expected = [0.0, -32766.0 / 32768.0, 32766.0 / 32768.0, 258.0 * 64.0 / 32768.0];
        assert_eq!(p.reflection_coefficients().len(), expected.len());
        for (k, e) in p.reflection_coefficients().iter().zip(expected) {
            assert!((k - e).abs() < 1e-6, "{k} for {e}");
        }

        assert_eq!(parse_cn(&[]), None);
        assert_eq!(parse_cn(&[128]), None, "reserved top bit");
        assert!(parse_cn(&[50, 127, 255]).unwrap().reflection_coefficients().is_empty(), "reserved index");
        assert_eq!(parse_cn(&[50; 20]).unwrap().reflection_coefficients().len(), CN_MAX_ORDER);
    }

    fn rms_dbov(pcm: &[i16]) -> f64 {
        10.0 * (dot(pcm, pcm) / pcm.len() as f64 / (FULL_SCALE * FULL_SCALE)).log10()
    }

    #[test]
    fn comfort_noise_has_the_level_and_shape_it_was_given() {
        for payload in [&[30u8][..], &[50], &[70], &[50, 189], &[50, 189, 100, 140]] {
            let mut generator = ComfortNoiseGenerator::new(7);
            generator.set(parse_cn(payload).unwrap());
            let mut out = vec![0; 8000];
            generator.generate(&mut out); // past the filter's start-up
            generator.generate(&mut out);
            let level = -f64::from(payload[0]);
            assert!((rms_dbov(&out) - level).abs() < 2.0, "{} dBov for {level}", rms_dbov(&out));
            if payload.len() == 2 {
                // One coefficient k makes y[n] = x[n] - k y[n-1], whose lag-1 correlation is -k.
                let lag1 = dot(&out[1..], &out[..out.len() - 1]) / dot(&out, &out);
                assert!((lag1 + 258.0 * 62.0 / 32768.0).abs() < 0.05, "lag-1 correlation {lag1}");
            }
        }
    }

    #[test]
    fn extreme_reflection_coefficients_stay_bounded() {
        let models: [&[u8]; 5] = [&[0; 10], &[254; 10], &[0, 254, 0, 254, 0, 254, 0, 254, 0, 254], &[254], &[20; 10]];
        let mut generator = ComfortNoiseGenerator::new(1);
        let mut second = [0i16; 8000];
        // Each model for three seconds, straight after another or after white
        // noise: what the filter stores never comes out much louder than asked for.
        for model in [&[][..], models[0], models[1], models[2], &[], models[3], models[4], models[0], &[]] {
            let payload = [&[20u8][..], model].concat();
            generator.set(parse_cn(&payload).unwrap());
            for _ in 0..3 {
                generator.generate(&mut second);
                assert!(generator.state.iter().all(|s| s.is_finite()));
                assert!(rms_dbov(&second) < -20.0 + 3.0, "{} dBov after {payload:?}", rms_dbov(&second));
            }
        }
    }

    #[test]
    fn write_cn_round_trips_the_measured_level() {
        for amplitude in [0.0, 3.0, 100.0, 5000.0, 32767.0] {
            let frame = sine(8000, 440.0, amplitude, 160);
            let mut payload = [0u8; 4];
            assert_eq!(write_cn(&frame, &mut payload), 1);
            assert_eq!(parse_cn(&payload[..1]).unwrap().level(), level_dbov(&frame));
        }
        assert_eq!(level_dbov(&[]), 127);
        assert_eq!(level_dbov(&[0; 160]), 127);
        assert_eq!(level_dbov(&[i16::MIN; 160]), 0);
        assert_eq!(level_dbov(&sine(8000, 400.0, 32767.0, 160)), 3, "a full-scale sine");
        assert_eq!(write_cn(&[1000; 160], &mut []), 0);
    }
}
