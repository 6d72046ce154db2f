//! Frame-by-frame sample-rate conversion between a leg's codec rate and its
//! conference's mixing rate, with rubato's synchronous FFT resampler.
//!
//! Built when a leg joins (rubato allocates its FFT plans then); `process`
//! runs in the mixer tick and does not allocate.

use rubato::audioadapter_buffers::direct::InterleavedSlice;
use rubato::{Fft, FixedSync, Resampler};

/// The rates a conference can mix at, and codecs run at.
pub const SUPPORTED_RATES: [u32; 3] = [8000, 16000, 48000];

/// Converts 20 ms frames from one rate to another.
pub struct FrameResampler {
    inner: Fft<f32>,
    input: Box<[f32]>,
    output: Box<[f32]>,
}

/// A resampler could not be built for these rates.
#[derive(Debug, thiserror::Error)]
#[error("cannot resample {from} Hz to {to} Hz: {reason}")]
pub struct ResampleError {
    from: u32,
    to: u32,
    reason: String,
}

impl FrameResampler {
    pub fn new(from: u32, to: u32) -> Result<Self, ResampleError> {
        let error = |reason: String| ResampleError { from, to, reason };
        if !SUPPORTED_RATES.contains(&from) || !SUPPORTED_RATES.contains(&to) {
            return Err(error("unsupported rate".into()));
        }
        let frame_in = from as usize / 50;
        // One FFT block per 20 ms frame: the delay is half a block (10 ms),
        // and both sides keep exactly a frame per call.
        let inner =
            Fft::new(from as usize, to as usize, frame_in, 1, FixedSync::Both).map_err(|e| error(e.to_string()))?;
        if inner.input_frames_next() != frame_in || inner.output_frames_next() != to as usize / 50 {
            return Err(error("frame sizes do not line up".into()));
        }
        Ok(Self {
            input: vec![0.0; frame_in].into_boxed_slice(),
            output: vec![0.0; to as usize / 50].into_boxed_slice(),
            inner,
        })
    }

    /// Samples of delay the conversion adds, at the output rate.
    pub fn delay(&self) -> usize {
        self.inner.output_delay()
    }

    /// Converts one frame; `input` and `out` are 20 ms long at their rates.
    pub fn process(&mut self, input: &[i16], out: &mut [i16]) {
        for (f, s) in self.input.iter_mut().zip(input) {
            *f = *s as f32;
        }
        let frames_in = self.input.len();
        let frames_out = self.output.len();
        let converted = match (
            InterleavedSlice::new(&self.input[..], 1, frames_in),
            InterleavedSlice::new_mut(&mut self.output[..], 1, frames_out),
        ) {
            (Ok(input), Ok(mut output)) => self.inner.process_into_buffer(&input, &mut output, None).is_ok(),
            _ => false,
        };
        if !converted {
            out.fill(0);
            return;
        }
        for (o, f) in out.iter_mut().zip(self.output.iter()) {
            *o = f.round().clamp(i16::MIN as f32, i16::MAX as f32) as i16;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sine(rate: u32, freq: f64, n: usize, start: usize) -> Vec<i16> {
        (start..start + n)
            .map(|i| (8000.0 * (2.0 * std::f64::consts::PI * freq * i as f64 / rate as f64).sin()) as i16)
            .collect()
    }

    /// Runs one second through `from`→`to` and checks the tone comes out at
    /// the right pitch and level, compared with the ideal tone shifted by the
    /// resampler's delay.
    fn check(from: u32, to: u32, freq: f64) {
        let mut r = FrameResampler::new(from, to).unwrap();
        let (fin, fout) = (from as usize / 50, to as usize / 50);
        let mut out = Vec::new();
        for k in 0..50 {
            let mut frame = vec![0i16; fout];
            r.process(&sine(from, freq, fin, k * fin), &mut frame);
            out.extend(frame);
        }
        let delay = r.delay();
        let ideal = sine(to, freq, out.len(), 0);
        let (mut err, mut power) = (0f64, 0f64);
        for i in to as usize / 10..out.len() {
            let d = out[i] as f64 - ideal[i - delay] as f64;
            err += d * d;
            power += (ideal[i - delay] as f64).powi(2);
        }
        let snr = 10.0 * (power / err).log10();
        assert!(snr > 30.0, "{from}->{to} at {freq} Hz: SNR {snr:.1} dB");
    }

    #[test]
    fn every_rate_pair_keeps_a_tone_clean() {
        for (from, to) in [(8000, 48000), (48000, 8000), (16000, 48000), (48000, 16000), (8000, 16000), (16000, 8000)] {
            check(from, to, 440.0);
        }
    }

    #[test]
    fn downsampling_removes_what_the_lower_rate_cannot_carry() {
        let mut r = FrameResampler::new(48000, 8000).unwrap();
        let mut peak = 0;
        for k in 0..20 {
            let mut frame = [0i16; 160];
            r.process(&sine(48000, 6000.0, 960, k * 960), &mut frame);
            if k > 2 {
                peak = peak.max(frame.iter().map(|s| s.unsigned_abs()).max().unwrap());
            }
        }
        assert!(peak < 400, "6 kHz leaked into 8 kHz audio at {peak}");
    }

    #[test]
    fn unsupported_rates_are_refused() {
        assert!(FrameResampler::new(44100, 48000).is_err());
    }
}
