#!/usr/bin/env python3
"""Make the reference speech for the quality benchmark.

Usage: speech.py OUT_DIR

Writes mono 16-bit PCM WAVs at 48, 16 and 8 kHz:
  speech_{48k,16k,8k}.wav  human speech at about -26 dBov active speech level
                           over a -70 dBov noise floor, 0.5 s of pause either side
  noisy_{48k,16k,8k}.wav   the same speech plus stationary noise (pink noise
                           and a fan's hum) at 10 dB SNR

The speech is the eight channel-name recordings ("Front left", ...) that
Debian's alsa-utils package ships in /usr/share/sounds/alsa (48 kHz, GPL-2,
freely redistributable): about 12 s of a human voice with pauses, the length
P.862 asks of a test sample. Synthetic speech (espeak-ng) was tried first and
dropped: it scored about 0.3-0.5 PESQ lower than human speech through the same
codec, for reasons of its own. The package is unpacked with `apt-get
download` into OUT_DIR, not installed. Deterministic: the same package version
gives the same files byte for byte.
"""

import subprocess
import sys
import wave
from fractions import Fraction
from pathlib import Path

import numpy as np
from scipy.signal import resample_poly

RECORDINGS = ("Front_Left", "Front_Center", "Front_Right", "Side_Left", "Side_Right", "Rear_Left", "Rear_Center", "Rear_Right")
PAUSE_S = 0.25

MASTER_RATE = 48000
RATES = {"48k": 48000, "16k": 16000, "8k": 8000}
PADDING_S = 0.5
TARGET_LEVEL_DBOV = -26.0
SNR_DB = 10.0
# A quiet room's noise floor under the clean speech. PESQ (wide band above
# all) marks any codec noise in exact digital silence as a gross distortion,
# which real recordings never have; a -70 dBov floor keeps the scores about
# the codec and the network instead.
FLOOR_DBOV = -70.0
FLOOR_SEED = 7
NOISE_SEED = 20261125

FULL_SCALE = 32768.0
# P.56 counts a frame as active when it is within 15.9 dB of the active level.
ACTIVITY_MARGIN_DB = 15.9
LEVEL_FRAME_S = 0.02


def alsa_recordings(out_dir: Path) -> Path:
    """Unpack alsa-utils' sound files into OUT_DIR (once) and return their folder."""
    sounds = out_dir / "alsa-utils" / "usr" / "share" / "sounds" / "alsa"
    if not sounds.is_dir():
        download = out_dir / "alsa-utils-deb"
        download.mkdir(parents=True, exist_ok=True)
        subprocess.run(["apt-get", "download", "alsa-utils"], cwd=download, check=True, capture_output=True)
        deb = next(download.glob("alsa-utils_*.deb"))
        subprocess.run(["dpkg-deb", "-x", str(deb), str(out_dir / "alsa-utils")], check=True)
    return sounds


def read_wav(path: Path) -> tuple[np.ndarray, int]:
    """Float samples (full scale = 1) and the rate of a 16-bit mono WAV."""
    with wave.open(str(path)) as reader:
        rate = reader.getframerate()
        pcm = np.frombuffer(reader.readframes(reader.getnframes()), dtype="<i2")
    return pcm.astype(np.float64) / FULL_SCALE, rate


def resample(signal: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    ratio = Fraction(to_rate, from_rate)
    if ratio == 1:
        return signal.copy()
    return resample_poly(signal, ratio.numerator, ratio.denominator)


def trim_silence(signal: np.ndarray, threshold: float = 1e-2) -> np.ndarray:
    """Cut a recording's own leading and trailing silence so the pauses are exact."""
    loud = np.flatnonzero(np.abs(signal) > threshold)
    return signal[loud[0] : loud[-1] + 1]


def active_level_db(signal: np.ndarray, rate: int) -> float:
    """Active speech level in dBov (0 dBov = RMS of a full-scale square wave).

    A simple stand-in for ITU-T P.56: the mean power of the 20 ms frames that
    lie within 15.9 dB of that mean, found by iterating from all frames.
    """
    frame_len = int(rate * LEVEL_FRAME_S)
    frame_count = len(signal) // frame_len
    frames = signal[: frame_count * frame_len].reshape(frame_count, frame_len)
    frame_power = np.mean(frames**2, axis=1)
    active = frame_power > 0
    for _ in range(50):
        level = np.mean(frame_power[active])
        now_active = frame_power > level * 10 ** (-ACTIVITY_MARGIN_DB / 10)
        if np.array_equal(now_active, active):
            break
        active = now_active
    return 10 * np.log10(level)


def make_noise(length: int, rate: int, seed: int) -> np.ndarray:
    """Stationary noise of the kind RNNoise-style suppressors target: pink
    noise (room/HVAC hiss) plus a fan's blade-pass hum at 120 Hz and harmonics."""
    rng = np.random.default_rng(seed)
    spectrum = rng.standard_normal(length // 2 + 1) + 1j * rng.standard_normal(length // 2 + 1)
    freqs = np.fft.rfftfreq(length, 1 / rate)
    # 1/f power, nothing below 20 Hz (no DC or rumble a telephone path drops anyway).
    shaping = np.where(freqs >= 20, 1 / np.sqrt(np.maximum(freqs, 20)), 0.0)
    pink = np.fft.irfft(spectrum * shaping, n=length)
    pink /= np.sqrt(np.mean(pink**2))

    t = np.arange(length) / rate
    hum = sum(
        amplitude * np.sin(2 * np.pi * freq * t + rng.uniform(0, 2 * np.pi))
        for freq, amplitude in ((120, 1.0), (240, 0.5), (360, 0.25))
    )
    # The hum sits 15 dB under the hiss: audible, but the hiss dominates.
    hum *= 10 ** (-15 / 20) / np.sqrt(np.mean(hum**2))
    return pink + hum


def write_wav(path: Path, signal: np.ndarray, rate: int) -> None:
    pcm = np.clip(np.round(signal * FULL_SCALE), -32768, 32767).astype("<i2")
    with wave.open(str(path), "wb") as writer:
        writer.setnchannels(1)
        writer.setsampwidth(2)
        writer.setframerate(rate)
        writer.writeframes(pcm.tobytes())


def describe(path: Path, signal: np.ndarray, rate: int, levels: str) -> str:
    peak_db = 20 * np.log10(np.max(np.abs(signal)))
    return f"{path}: {rate} Hz, {len(signal) / rate:.2f} s, {levels}, peak {peak_db:.1f} dBFS"


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    out_dir = Path(sys.argv[1])
    out_dir.mkdir(parents=True, exist_ok=True)

    sounds = alsa_recordings(out_dir)
    pause = np.zeros(int(PAUSE_S * MASTER_RATE))
    words = []
    for name in RECORDINGS:
        recording, rate = read_wav(sounds / f"{name}.wav")
        words += [trim_silence(resample(recording, rate, MASTER_RATE)), pause]
    padding = np.zeros(int(PADDING_S * MASTER_RATE))
    speech = np.concatenate([padding, *words[:-1], padding])
    # One noise sample at 48 kHz, resampled, so every rate hears the same noise.
    noise = make_noise(len(speech), MASTER_RATE, NOISE_SEED)

    for suffix, rate in RATES.items():
        clean = resample(speech, MASTER_RATE, rate)
        # Normalise each rate on its own: band-limiting drops some energy.
        clean *= 10 ** ((TARGET_LEVEL_DBOV - active_level_db(clean, rate)) / 20)
        floor = np.random.default_rng(FLOOR_SEED).standard_normal(len(clean))
        clean += floor * 10 ** (FLOOR_DBOV / 20)
        rate_noise = resample(noise, MASTER_RATE, rate)
        # SNR against the active speech level, in the band this rate carries.
        noise_level_db = TARGET_LEVEL_DBOV - SNR_DB
        rate_noise *= 10 ** (noise_level_db / 20) / np.sqrt(np.mean(rate_noise**2))
        noisy = clean + rate_noise

        clean_path = out_dir / f"speech_{suffix}.wav"
        noisy_path = out_dir / f"noisy_{suffix}.wav"
        write_wav(clean_path, clean, rate)
        write_wav(noisy_path, noisy, rate)
        speech_level = f"speech active level {active_level_db(clean, rate):.1f} dBov"
        print(describe(clean_path, clean, rate, speech_level))
        # The noisy file's own "active level" would count the noise as
        # speech, so report its two parts instead.
        noise_level = f"noise {noise_level_db:.1f} dBov RMS (SNR {SNR_DB:.0f} dB)"
        print(describe(noisy_path, noisy, rate, f"{speech_level} + {noise_level}"))


if __name__ == "__main__":
    main()
