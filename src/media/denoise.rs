//! Noise suppression of a participant's audio before it is mixed, with
//! nnnoiseless (RNNoise in Rust): 48 kHz, 10 ms frames.

use std::sync::LazyLock;

use nnnoiseless::{DenoiseState, RnnModel};

/// The one sample rate RNNoise works at.
pub const DENOISE_SAMPLE_RATE: u32 = 48_000;

/// The model's weights, shared by every suppressor instead of copied into each.
static MODEL: LazyLock<RnnModel> = LazyLock::new(RnnModel::default);

/// One participant's suppressor, for frames of a fixed size at 48 kHz.
/// Built off the mixer thread; `process` neither allocates nor locks.
pub struct NoiseSuppressor {
    state: Box<DenoiseState<'static>>,
    input: [f32; DenoiseState::FRAME_SIZE],
    output: [f32; DenoiseState::FRAME_SIZE],
}

impl NoiseSuppressor {
    /// A suppressor for mixer frames of `frame_samples` at `sample_rate`, or
    /// `None` when that is not 48 kHz audio in whole 10 ms frames.
    pub fn new(sample_rate: u32, frame_samples: usize) -> Option<Box<Self>> {
        if sample_rate != DENOISE_SAMPLE_RATE || frame_samples % DenoiseState::FRAME_SIZE != 0 {
            return None;
        }
        Some(Box::new(Self {
            state: DenoiseState::with_model(&MODEL),
            input: [0.0; DenoiseState::FRAME_SIZE],
            output: [0.0; DenoiseState::FRAME_SIZE],
        }))
    }

    /// Suppresses noise in `frame` in place (a whole number of 10 ms frames).
    pub fn process(&mut self, frame: &mut [i16]) {
        for chunk in frame.chunks_exact_mut(DenoiseState::FRAME_SIZE) {
            for (x, s) in self.input.iter_mut().zip(chunk.iter()) {
                *x = *s as f32;
            }
            self.state.process_frame(&mut self.output, &self.input);
            for (s, y) in chunk.iter_mut().zip(self.output.iter()) {
                *s = y.round().clamp(i16::MIN as f32, i16::MAX as f32) as i16;
            }
        }
    }
}

/// nnnoiseless's FFT keeps its plans and scratch buffers in thread-locals that
/// it allocates on first use. The mixer thread calls this before its first tick
/// so that no tick ever pays for that allocation.
pub fn prepare_thread() {
    if let Some(mut warm) = NoiseSuppressor::new(DENOISE_SAMPLE_RATE, DenoiseState::FRAME_SIZE) {
        warm.process(&mut [0; DenoiseState::FRAME_SIZE]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn noise(seed: &mut u32) -> i16 {
        // xorshift: deterministic white noise without a dependency, at a
        // background level (about -35 dBFS RMS).
        *seed ^= *seed << 13;
        *seed ^= *seed >> 17;
        *seed ^= *seed << 5;
        (*seed >> 16) as i16 / 32
    }

    fn power(samples: &[i16]) -> f64 {
        samples.iter().map(|s| (*s as f64).powi(2)).sum::<f64>() / samples.len() as f64
    }

    #[test]
    fn only_48_khz_in_whole_10_ms_frames() {
        assert!(NoiseSuppressor::new(48_000, 960).is_some());
        assert!(NoiseSuppressor::new(16_000, 320).is_none());
        assert!(NoiseSuppressor::new(48_000, 500).is_none());
    }

    #[test]
    fn steady_white_noise_is_attenuated() {
        let mut suppressor = NoiseSuppressor::new(48_000, 960).unwrap();
        let mut seed = 0x1234_5678;
        let mut before = 0.0;
        let mut after = 0.0;
        for tick in 0..150 {
            let mut frame: Vec<i16> = (0..960).map(|_| noise(&mut seed)).collect();
            let input = power(&frame);
            suppressor.process(&mut frame);
            // Give the network a second to learn the noise.
            if tick >= 50 {
                before += input;
                after += power(&frame);
            }
        }
        let reduction_db = 10.0 * (before / after).log10();
        assert!(reduction_db > 6.0, "only {reduction_db:.1} dB less noise");
    }
}
