#!/usr/bin/env python3
"""Score the quality benchmark's recordings with PESQ.

Usage: score.py RESULTS_DIR

Reads RESULTS_DIR/results.json, a list of cases such as
  {"case": "opus 10% loss", "mode": "wb", "reference": "speech_16k.wav",
   "degraded": "opus-loss10.wav", "delay_ms": 61.2, "jitter_buffer_ms": 40,
   "lost": 50, "concealed": 51, "recovered": 40, ...}
with paths relative to RESULTS_DIR; only case, mode, reference and degraded
are required. mode "nb" scores with ITU-T P.862 at 8 kHz, "wb" with P.862.2
at 16 kHz. Prints a Markdown table, writes it to RESULTS_DIR/results.md and
writes every case with its score to RESULTS_DIR/scores.json.

Needs numpy, scipy and pesq (PyPI "pesq").
"""

import json
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
from pesq import PesqError, pesq
from scipy.io import wavfile
from scipy.signal import correlate, resample_poly

MODE_RATES = {"nb": 8000, "wb": 16000}
# The degraded recording may start this much later than the reference
# (jitter buffer, codec look-ahead, resampler delay).
MAX_LAG_S = 0.5


def read_wav(path: Path) -> tuple[np.ndarray, int]:
    """Mono float samples (full scale = 1) and the sample rate."""
    rate, samples = wavfile.read(path)
    if np.issubdtype(samples.dtype, np.integer):
        samples = samples / (np.iinfo(samples.dtype).max + 1)
    if samples.ndim == 2:
        samples = samples.mean(axis=1)
    return samples.astype(np.float64), rate


def resample(signal: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    ratio = Fraction(to_rate, from_rate)
    if ratio == 1:
        return signal
    return resample_poly(signal, ratio.numerator, ratio.denominator)


def find_lag(reference: np.ndarray, degraded: np.ndarray, rate: int) -> int:
    """How many samples later the degraded signal starts, 0 to MAX_LAG_S.

    Correlates amplitude envelopes rather than waveforms, so a codec's phase
    changes or a polarity flip do not hide the match. PESQ does its own fine
    alignment afterwards; this only has to get the utterances to overlap.
    """
    ref_envelope = np.abs(reference) - np.mean(np.abs(reference))
    deg_envelope = np.abs(degraded) - np.mean(np.abs(degraded))
    # correlation[k] = sum over n of deg[n + k] * ref[n], for k from -(len(ref) - 1).
    correlation = correlate(deg_envelope, ref_envelope, mode="full", method="fft")
    zero_lag = len(reference) - 1
    max_lag = min(int(MAX_LAG_S * rate), len(degraded) - 1)
    return int(np.argmax(correlation[zero_lag : zero_lag + max_lag + 1]))


def fit_to(signal: np.ndarray, length: int) -> np.ndarray:
    """Trim or zero-pad at the end to the given length."""
    if len(signal) >= length:
        return signal[:length]
    return np.concatenate([signal, np.zeros(length - len(signal))])


def describe_error(error: Exception) -> str:
    # pesq's own errors carry their message as bytes.
    message = error.args[0] if error.args else ""
    if isinstance(message, bytes):
        message = message.decode(errors="replace")
    else:
        message = str(error)
    return f"{type(error).__name__}: {message}" if message else type(error).__name__


def score_case(results_dir: Path, case: dict) -> dict:
    """PESQ and the alignment used, or the error that stopped it."""
    mode = case["mode"]
    if mode not in MODE_RATES:
        return {"pesq_error": f"unknown mode {mode!r}, expected nb or wb"}
    rate = MODE_RATES[mode]
    try:
        reference, ref_rate = read_wav(results_dir / case["reference"])
        degraded, deg_rate = read_wav(results_dir / case["degraded"])
        reference = resample(reference, ref_rate, rate)
        degraded = resample(degraded, deg_rate, rate)
        lag = find_lag(reference, degraded, rate)
        degraded = fit_to(degraded[lag:], len(reference))
        # pesq 0.0.4 fails on an all-zero signal with a bare "cannot convert
        # float NaN to integer"; a leg that sent no audio deserves a clearer word.
        if not np.any(degraded):
            return {"pesq_error": "degraded recording is silent"}
        score = pesq(rate, reference, degraded, mode)
    except (PesqError, OSError, ValueError) as error:
        return {"pesq_error": describe_error(error)}
    return {"pesq": round(float(score), 3), "alignment_ms": round(lag * 1000 / rate, 1)}


def cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.1f}"
    # A "|" would end the Markdown cell.
    return str(value).replace("|", "\\|")


def markdown_table(scored: list[dict]) -> str:
    """One row per case name; a case run several times (loss cases, each with
    its own loss pattern) shows the mean PESQ, its range and mean counters."""
    lines = [
        "| case | PESQ (mode) | delay ms | jitter buffer ms | lost/concealed/recovered packets |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    names = list(dict.fromkeys(case["case"] for case in scored))
    for name in names:
        runs = [case for case in scored if case["case"] == name]
        first = runs[0]
        scores = [case["pesq"] for case in runs if "pesq" in case]
        if not scores:
            quality = f"error: {first['pesq_error']}"
        elif len(runs) == 1:
            quality = f"{scores[0]:.2f} ({first['mode']})"
        else:
            failed = len(runs) - len(scores)
            spread = f"{min(scores):.2f}–{max(scores):.2f} over {len(scores)} runs"
            quality = f"{np.mean(scores):.2f} ({first['mode']}; {spread}" + (f", {failed} failed)" if failed else ")")

        def mean(key: str) -> str:
            values = [case[key] for case in runs if case.get(key) is not None]
            return str(round(float(np.mean(values)))) if values else "-"

        packets = "/".join(mean(key) for key in ("lost", "concealed", "recovered"))
        row = [cell(name), cell(quality), cell(first.get("delay_ms")), cell(first.get("jitter_buffer_ms")), packets]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    results_dir = Path(sys.argv[1])
    cases = json.loads((results_dir / "results.json").read_text())

    scored = [{**case, **score_case(results_dir, case)} for case in cases]

    table = markdown_table(scored)
    print(table, end="")
    (results_dir / "results.md").write_text(table)
    (results_dir / "scores.json").write_text(json.dumps(scored, indent=2) + "\n")


if __name__ == "__main__":
    main()
