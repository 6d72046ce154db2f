#!/usr/bin/env bash
# The speech-quality benchmark: reference speech (human, from Debian's
# alsa-utils package), calls through
# the bridge on an impaired loopback network (benches/quality.rs), PESQ scores
# (ITU-T P.862 / P.862.2, the pesq package). Prints a Markdown table; the
# files it scored stay in target/quality/.
set -euo pipefail
cd "$(dirname "$0")/.."
out=target/quality
mkdir -p "$out"
# speech.py fetches alsa-utils with `apt-get download`, which needs package lists.
[ -d "$out/alsa-utils" ] || apt-get update -qq
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install --quiet "pesq==0.0.4" scipy numpy "cmake>=3.20"
export PATH="$PWD/.venv/bin:$PATH"
.venv/bin/python benches/quality/speech.py "$out"
cargo bench --quiet --bench quality -- "$out"
.venv/bin/python benches/quality/score.py "$out"
cat "$out/noise_suppression.json"
