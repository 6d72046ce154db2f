//! Prompts: audio the application plays into a conference or to one
//! participant (a WAV file, PCM it made, or a tone).
//!
//! Everything that costs work happens here, on the caller's thread: a WAV
//! file is decoded and mixed down to mono when the prompt is made, and
//! resampled to the conference's rate when it is played (rubato's FFT
//! resampler, which takes any pair of rates: the mixer's own resamplers know
//! only 8, 16 and 48 kHz, and files come at 11.025, 22.05, 44.1 kHz too). The
//! mixer then only copies samples out of the finished buffer.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rubato::audioadapter_buffers::owned::InterleavedOwned;
use rubato::Resampler;

/// What can go wrong making or rendering a prompt.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PlaybackError {
    #[error("cannot read WAV file {path}: {source}")]
    Wav { path: String, source: hound::Error },
    #[error("unsupported WAV format: {0}")]
    Format(String),
    #[error("bad tone: {0}")]
    Tone(String),
    #[error("bad PCM prompt: {0}")]
    Pcm(String),
    #[error("cannot resample {from} Hz to {to} Hz: {reason}")]
    Resample { from: u32, to: u32, reason: String },
}

/// The longest prompt accepted, so that a wrong file or argument cannot
/// take all memory (30 minutes of 48 kHz mono is 173 MB).
pub const MAX_PROMPT: Duration = Duration::from_secs(30 * 60);
/// The longest tone: tones are rendered whole, and a dial or busy tone that
/// should last longer is played again.
pub const MAX_TONE: Duration = Duration::from_secs(60);
/// Tones fade in and out over this long, so that they start and end without a click.
const TONE_RAMP: Duration = Duration::from_millis(5);

/// Audio to play: mono PCM at its own rate, or a tone drawn at the rate of
/// the conference it is played in. Cheap to clone: the samples are shared,
/// so an IVR decodes a prompt once and plays it to every caller.
#[derive(Debug, Clone)]
pub struct Playback {
    source: Source,
}

#[derive(Debug, Clone)]
enum Source {
    /// Mono samples at `rate`; `None`: at the conference's rate.
    Pcm {
        samples: Arc<[i16]>,
        rate: Option<u32>,
    },
    Tone {
        frequencies: Vec<f32>,
        duration: Duration,
        level_dbov: f32,
    },
}

impl Playback {
    /// Decodes a WAV file: 8, 16, 24 or 32-bit integer or 32-bit float PCM,
    /// any rate from 4 to 192 kHz, mono or several channels (averaged).
    pub fn wav_file(path: impl AsRef<Path>) -> Result<Self, PlaybackError> {
        let path = path.as_ref();
        let wav_error = |source| PlaybackError::Wav { path: path.display().to_string(), source };
        let reader = hound::WavReader::open(path).map_err(wav_error)?;
        let spec = reader.spec();
        if !(4000..=192_000).contains(&spec.sample_rate) || spec.channels == 0 {
            return Err(PlaybackError::Format(format!("{} Hz, {} channels", spec.sample_rate, spec.channels)));
        }
        let channels = spec.channels as usize;
        if reader.duration() as u64 > spec.sample_rate as u64 * MAX_PROMPT.as_secs() {
            return Err(PlaybackError::Format(format!("longer than {} minutes", MAX_PROMPT.as_secs() / 60)));
        }
        // Everything as floats in [-1, 1), then averaged over the channels.
        let samples: Vec<f32> = match (spec.sample_format, spec.bits_per_sample) {
            (hound::SampleFormat::Float, 32) => reader.into_samples::<f32>().collect::<Result<_, _>>(),
            (hound::SampleFormat::Int, bits @ 8..=32) => {
                let scale = 1.0 / (1u64 << (bits - 1)) as f32;
                reader.into_samples::<i32>().map(|s| s.map(|s| s as f32 * scale)).collect::<Result<_, _>>()
            }
            (format, bits) => return Err(PlaybackError::Format(format!("{bits}-bit {format:?} samples"))),
        }
        .map_err(wav_error)?;
        let mono: Vec<i16> =
            samples.chunks_exact(channels).map(|frame| to_i16(frame.iter().sum::<f32>() / channels as f32)).collect();
        Ok(Self { source: Source::Pcm { samples: mono.into(), rate: Some(spec.sample_rate) } })
    }

    /// PCM from the application: mono, at the rate of the conference it is played in.
    pub fn pcm(samples: impl Into<Arc<[i16]>>) -> Self {
        Self { source: Source::Pcm { samples: samples.into(), rate: None } }
    }

    /// Mono PCM at `sample_rate` (4 to 192 kHz), resampled to the conference's rate.
    pub fn pcm_at_rate(samples: impl Into<Arc<[i16]>>, sample_rate: u32) -> Result<Self, PlaybackError> {
        if !(4000..=192_000).contains(&sample_rate) {
            return Err(PlaybackError::Pcm(format!("a rate of {sample_rate} Hz")));
        }
        Ok(Self { source: Source::Pcm { samples: samples.into(), rate: Some(sample_rate) } })
    }

    /// A tone: the sum of sines at `frequencies` (one to four, e.g. 350 and
    /// 440 Hz for a dial tone), each at `level_dbov` (-60 to -3 dBov; 0 dBov
    /// is a full-scale square wave), lasting `duration` (at most [`MAX_TONE`]).
    pub fn tone(frequencies: &[f32], duration: Duration, level_dbov: f32) -> Result<Self, PlaybackError> {
        let bad = |why: String| Err(PlaybackError::Tone(why));
        if frequencies.is_empty() || frequencies.len() > 4 {
            return bad(format!("{} frequencies; give one to four", frequencies.len()));
        }
        if let Some(f) = frequencies.iter().find(|f| !(f.is_finite() && **f > 0.0 && **f < 20_000.0)) {
            return bad(format!("{f} Hz"));
        }
        if duration.is_zero() || duration > MAX_TONE {
            return bad(format!("{duration:?}; a tone lasts up to {MAX_TONE:?}"));
        }
        if !(level_dbov.is_finite() && (-60.0..=-3.0).contains(&level_dbov)) {
            return bad(format!("{level_dbov} dBov; the level must be -60 to -3 dBov"));
        }
        Ok(Self { source: Source::Tone { frequencies: frequencies.to_vec(), duration, level_dbov } })
    }

    /// The prompt's samples at `rate`, ready for the mixer: shared, not
    /// copied, when the prompt is PCM at that rate already.
    pub fn render(&self, rate: u32) -> Result<Arc<[i16]>, PlaybackError> {
        match &self.source {
            Source::Pcm { samples, rate: None } => Ok(samples.clone()),
            Source::Pcm { samples, rate: Some(from) } if *from == rate => Ok(samples.clone()),
            Source::Pcm { samples, rate: Some(from) } => resample(samples, *from, rate),
            Source::Tone { frequencies, duration, level_dbov } => {
                Ok(render_tone(frequencies, *duration, *level_dbov, rate))
            }
        }
    }
}

fn to_i16(x: f32) -> i16 {
    (x * 32768.0).round().clamp(i16::MIN as f32, i16::MAX as f32) as i16
}

fn render_tone(frequencies: &[f32], duration: Duration, level_dbov: f32, rate: u32) -> Arc<[i16]> {
    // A sine's power is A²/2; 0 dBov is the power of a full-scale square wave.
    let amplitude = std::f64::consts::SQRT_2 * 10f64.powf(level_dbov as f64 / 20.0);
    let len = (duration.as_secs_f64() * rate as f64).round() as usize;
    let ramp = ((TONE_RAMP.as_secs_f64() * rate as f64) as usize).min(len / 2).max(1);
    (0..len)
        .map(|n| {
            let t = n as f64 / rate as f64;
            let sum: f64 = frequencies.iter().map(|f| (2.0 * std::f64::consts::PI * *f as f64 * t).sin()).sum();
            // Raised-cosine fade at both ends.
            let edge = n.min(len - 1 - n);
            let fade =
                if edge < ramp { 0.5 - 0.5 * (std::f64::consts::PI * edge as f64 / ramp as f64).cos() } else { 1.0 };
            to_i16((amplitude * sum * fade) as f32)
        })
        .collect()
}

fn resample(samples: &[i16], from: u32, to: u32) -> Result<Arc<[i16]>, PlaybackError> {
    let error = |reason: String| PlaybackError::Resample { from, to, reason };
    if samples.is_empty() {
        return Ok(Arc::from([]));
    }
    let input: Vec<f32> = samples.iter().map(|s| *s as f32 / 32768.0).collect();
    let len = input.len();
    let input = InterleavedOwned::new_from(input, 1, len).map_err(|e| error(e.to_string()))?;
    let mut resampler = rubato::Fft::<f32>::new(from as usize, to as usize, 1024, 1, rubato::FixedSync::Input)
        .map_err(|e| error(e.to_string()))?;
    // process_all removes the resampler's delay and trims the tail.
    let output = resampler.process_all(&input, len, None).map_err(|e| error(e.to_string()))?;
    Ok(output.take_data().into_iter().map(to_i16).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The level in dBov of the component of `samples` at `freq`: its
    /// amplitude by correlation with a sine and a cosine.
    fn tone_dbov(samples: &[i16], freq: f64, rate: u32) -> f64 {
        let w = 2.0 * std::f64::consts::PI * freq / rate as f64;
        let (mut sin, mut cos) = (0.0, 0.0);
        for (n, x) in samples.iter().enumerate() {
            sin += *x as f64 * (w * n as f64).sin();
            cos += *x as f64 * (w * n as f64).cos();
        }
        let amplitude = 2.0 * sin.hypot(cos) / samples.len() as f64;
        20.0 * (amplitude / std::f64::consts::SQRT_2 / 32768.0).log10()
    }

    fn dbov(samples: &[i16]) -> f64 {
        let power = samples.iter().map(|s| (*s as f64).powi(2)).sum::<f64>() / samples.len() as f64;
        10.0 * (power / (32768.0f64 * 32768.0)).log10()
    }

    fn write_wav(path: &Path, spec: hound::WavSpec, frames: usize, sample: impl Fn(usize, u16) -> f64) {
        let mut writer = hound::WavWriter::create(path, spec).unwrap();
        for n in 0..frames {
            for c in 0..spec.channels {
                let x = sample(n, c);
                match (spec.sample_format, spec.bits_per_sample) {
                    (hound::SampleFormat::Float, _) => writer.write_sample(x as f32).unwrap(),
                    (_, 8) => writer.write_sample((x * 127.0) as i8).unwrap(),
                    (_, bits) => writer.write_sample((x * ((1i64 << (bits - 1)) - 1) as f64) as i32).unwrap(),
                }
            }
        }
        writer.finalize().unwrap();
    }

    #[test]
    fn wav_files_of_any_common_format_become_mono_at_the_conference_rate() {
        let dir = std::env::temp_dir().join(format!("sipbridge-playback-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let formats = [
            (44_100, 2, 16, hound::SampleFormat::Int),
            (16_000, 1, 8, hound::SampleFormat::Int),
            (22_050, 1, 24, hound::SampleFormat::Int),
            (8_000, 2, 32, hound::SampleFormat::Float),
            (48_000, 1, 16, hound::SampleFormat::Int),
        ];
        for (rate, channels, bits, format) in formats {
            let spec = hound::WavSpec { channels, sample_rate: rate, bits_per_sample: bits, sample_format: format };
            let path = dir.join(format!("{rate}-{channels}-{bits}.wav"));
            // One second of 440 Hz at half scale; the second channel is in
            // phase, so the mono mix keeps the level.
            write_wav(&path, spec, rate as usize, |n, _| {
                0.5 * (2.0 * std::f64::consts::PI * 440.0 * n as f64 / rate as f64).sin()
            });
            let prompt = Playback::wav_file(&path).unwrap();
            for to in [8000, 16000, 48000] {
                let pcm = prompt.render(to).unwrap();
                let expected = to as usize;
                assert!(pcm.len().abs_diff(expected) <= 2, "{rate} Hz -> {to} Hz: {} samples", pcm.len());
                // Away from the edges: the tone, at -9 dBov (half scale), and nothing else.
                let middle = &pcm[expected / 4..expected * 3 / 4];
                let level = dbov(middle);
                assert!((level + 9.03).abs() < 0.3, "{rate} Hz {bits}-bit -> {to} Hz: {level:.2} dBov");
                let tone = tone_dbov(middle, 440.0, to);
                assert!((tone - level).abs() < 0.3, "{rate} Hz -> {to} Hz: tone {tone:.2} of {level:.2} dBov");
            }
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bad_files_and_arguments_are_errors() {
        assert!(matches!(Playback::wav_file("/nonexistent/x.wav"), Err(PlaybackError::Wav { .. })));
        let not_wav = std::env::temp_dir().join(format!("sipbridge-not-wav-{}", std::process::id()));
        std::fs::write(&not_wav, b"RIFF but not really").unwrap();
        assert!(Playback::wav_file(&not_wav).is_err());
        std::fs::remove_file(&not_wav).unwrap();
        let second = Duration::from_secs(1);
        assert!(Playback::tone(&[], second, -10.0).is_err());
        assert!(Playback::tone(&[f32::NAN], second, -10.0).is_err());
        assert!(Playback::tone(&[440.0], Duration::ZERO, -10.0).is_err());
        assert!(Playback::tone(&[440.0], MAX_TONE * 2, -10.0).is_err());
        assert!(Playback::tone(&[440.0], second, 0.0).is_err());
        assert!(Playback::pcm_at_rate(vec![0i16; 10], 1000).is_err());
    }

    #[test]
    fn tones_have_their_frequencies_level_and_length_and_fade_in() {
        let prompt = Playback::tone(&[350.0, 440.0], Duration::from_millis(500), -20.0).unwrap();
        let pcm = prompt.render(16000).unwrap();
        assert_eq!(pcm.len(), 8000);
        // Each component at -20 dBov: power A²/2 with A = sqrt(2)·10^(-1)·32768.
        for f in [350.0, 440.0] {
            let level = tone_dbov(&pcm[800..7200], f, 16000);
            assert!((level + 20.0).abs() < 0.3, "{f} Hz at {level:.2} dBov");
        }
        assert_eq!(pcm[0], 0, "it fades in");
        assert!(pcm[pcm.len() - 1].abs() < 50, "and out");
    }

    #[test]
    fn pcm_at_the_conference_rate_is_shared_not_copied() {
        let samples: Arc<[i16]> = (0..960).map(|n| n as i16).collect();
        let prompt = Playback::pcm(samples.clone());
        assert!(Arc::ptr_eq(&prompt.render(48000).unwrap(), &samples));
        let resampled = Playback::pcm_at_rate(samples, 8000).unwrap().render(16000).unwrap();
        assert_eq!(resampled.len(), 1920);
    }
}
