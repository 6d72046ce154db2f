"""The examples, run as users run them and checked by what was heard.

Callers are sipbridge endpoints on loopback whose local participant says a
tone and keeps what it hears; tones are told apart by their power in an FFT.
Everything started here uses ports 49000-50999.
"""

import json
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Optional

import numpy as np
import pytest

import sipbridge

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
RATE = 16000
FRAME = RATE // 50

sys.path.insert(0, str(EXAMPLES))
import ivr  # noqa: E402  (the example, for its tone frequencies)


def tone(freq: float, start: int, n: int = FRAME) -> np.ndarray:
    t = (np.arange(n) + start) / RATE
    return (8000 * np.sin(2 * np.pi * freq * t)).astype(np.int16)


def power(samples: np.ndarray, freq: float) -> float:
    """The power of `freq` in `samples` (Hann window, so that a near tone does not leak in)."""
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples)))) / len(samples)
    bin_ = int(round(freq * len(samples) / RATE))
    return float(spectrum[bin_ - 2 : bin_ + 3].max() ** 2)


def peak_power(samples: np.ndarray, freq: float, window: float = 0.2) -> float:
    """The highest power of `freq` in any `window` seconds: finds a short prompt in a longer recording."""
    n = int(window * RATE)
    return max(power(samples[i : i + n], freq) for i in range(0, len(samples) - n + 1, n // 2))


def wait_event(ep: sipbridge.Endpoint, kind: str, timeout: float = 5.0, **fields) -> sipbridge.Event:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        event = ep.next_event(timeout=deadline - time.monotonic())
        if event is not None and event.kind == kind and all(getattr(event, k) == v for k, v in fields.items()):
            return event
    raise AssertionError(f"no {kind} event with {fields}")


class Phone:
    """A caller: an endpoint whose local participant says a tone and keeps every frame it hears."""

    def __init__(self, sip_port: int, rtp_base: int, freq: float):
        self.endpoint = sipbridge.Endpoint(
            f"127.0.0.1:{sip_port}", rtp_ports=(rtp_base, rtp_base + 19), sample_rate=RATE
        )
        self.handset = self.endpoint.create_conference("handset")
        self.mic = self.handset.add_local()
        self.heard: list[np.ndarray] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._talk_and_listen, args=(freq,), daemon=True)
        self._thread.start()

    def _talk_and_listen(self, freq: float) -> None:
        self.mic.write(tone(freq, 0, 2 * FRAME))
        i = 2
        while not self._stop.is_set():
            self.mic.write(tone(freq, i * FRAME), timeout=1.0)
            self.heard.append(self.mic.read_frame(timeout=1.0))
            i += 1

    def dial(self, uri: str) -> sipbridge.Participant:
        leg = self.handset.dial(uri)
        wait_event(self.endpoint, "answered", participant=leg.id)
        return leg

    def mark(self) -> int:
        return len(self.heard)

    def heard_since(self, mark: int, until: Optional[int] = None) -> np.ndarray:
        return np.concatenate(self.heard[mark:until])

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.endpoint.stop()


class Log:
    """The lines a program writes, read on a thread so that waiting for one can time out."""

    def __init__(self, stream: IO[str]):
        self.lines: "queue.Queue[str]" = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=lambda: [self.lines.put(line) for line in stream], daemon=True).start()

    def expect(self, pattern: str, timeout: float = 10.0) -> re.Match:
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no line matching {pattern!r} in:\n" + "".join(self.seen)) from None
            self.seen.append(line)
            if match := re.search(pattern, line):
                return match


def test_ivr_asks_for_the_pin_admits_and_announces():
    program = subprocess.Popen(
        [sys.executable, str(EXAMPLES / "ivr.py"), "--listen", "127.0.0.1:49010", "--rtp-ports", "49020-49059"]
        + ["--room", "sales", "--room", "support", "--pin", "2468"],
        stderr=subprocess.PIPE,
        text=True,
    )
    log = Log(program.stderr)  # type: ignore[arg-type]
    phones: list[Phone] = []
    try:
        log.expect("listening: call sip:sales@127.0.0.1:49010")
        alice = Phone(49100, 49110, 500.0)
        bob = Phone(49140, 49150, 1300.0)
        phones += [alice, bob]

        # Alice is answered and asked for the PIN; she hears only the prompt.
        start = alice.mark()
        alice_leg = alice.dial("sip:sales@127.0.0.1:49010")
        log.expect("sales: sip:handset@127.0.0.1:49100 answered, asking for the PIN")
        time.sleep(1.5)
        asked = alice.heard_since(start)
        levels = {"prompt": peak_power(asked, ivr.PROMPT_HZ), "early announcement": peak_power(asked, ivr.ANNOUNCEMENT_HZ)}
        print(levels)  # pytest shows what was measured when a check fails
        assert levels["prompt"] > 1e5 and levels["early announcement"] < 1e3, "the PIN prompt, and nothing more"
        alice_leg.send_dtmf("2468#")
        log.expect(r"sales: participant \d+ is in")

        # Bob gets a wrong PIN once: the prompt again. Alice hears nothing of him until he is in.
        bob_leg = bob.dial("sip:sales@127.0.0.1:49010")
        time.sleep(1.0)
        bob_leg.send_dtmf("1111#")
        log.expect(r"sales: participant \d+ typed a wrong PIN, 2 tries left")
        time.sleep(1.0)
        waiting = alice.mark()
        bob_leg.send_dtmf("2468#")
        log.expect(r"sales: participant \d+ is in")
        admitted = alice.mark()
        levels = {
            "prompts to Bob": peak_power(bob.heard_since(0), ivr.PROMPT_HZ),
            "Bob at Alice before his PIN": power(alice.heard_since(waiting - 25, waiting), 1300.0),
        }
        print(levels)
        assert levels["prompts to Bob"] > 1e5, "Bob is asked for the PIN"
        assert levels["Bob at Alice before his PIN"] < 1e3, "Bob is not heard before his PIN"

        # Alice hears the announcement of Bob, then they hear each other.
        time.sleep(2.0)
        a, b = alice.heard_since(alice.mark() - 50), bob.heard_since(bob.mark() - 50)
        levels = {
            "announcement at Alice": peak_power(alice.heard_since(admitted), ivr.ANNOUNCEMENT_HZ),
            "Bob at Alice": power(a, 1300.0),
            "Alice's own tone at Alice": power(a, 500.0),
            "Alice at Bob": power(b, 500.0),
            "Bob's own tone at Bob": power(b, 1300.0),
        }
        print(levels)
        assert levels["announcement at Alice"] > 1e5, "the announcement"
        assert levels["Bob at Alice"] > 1e5 and levels["Alice's own tone at Alice"] < 1e3, "Alice hears Bob"
        assert levels["Alice at Bob"] > 1e5 and levels["Bob's own tone at Bob"] < 1e3, "Bob hears Alice"
    finally:
        program.send_signal(signal.SIGTERM)
        code = program.wait(timeout=10)
        for phone in phones:
            phone.close()
    assert code == 0
    log.expect("stopping: hanging up every call")


def test_classroom_notebook_runs_its_checks_and_measures_talk_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    notebook = nbformat.read(EXAMPLES / "classroom.ipynb", as_version=4)
    monkeypatch.setenv("CLASSROOM_BASE_PORT", "49400")  # the kernel inherits it
    # The notebook checks who heard whom in each phase and raises when wrong:
    # execute() then raises CellExecutionError with the cell's traceback.
    client = nbclient.NotebookClient(notebook, kernel_name="python3", timeout=60)
    client.execute(cwd=str(tmp_path))
    printed = "".join(o.get("text", "") for cell in notebook.cells for o in cell.get("outputs", []))
    print(printed)
    for phase in ("everyone talks", "muted", "in breakout rooms", "back in class"):
        assert any(line.startswith(phase + ":") for line in printed.splitlines()), f"the {phase} check ran"

    results = next(cell for cell in notebook.cells if "results" in cell.metadata.get("tags", []))
    measured = json.loads("".join(o["text"] for o in results.outputs if o["output_type"] == "stream"))
    talk, share = measured["talk_seconds"], measured["share"]
    students = sorted((name for name in share if name != "teacher"), key=lambda name: share[name])
    talk_times = [talk[name] for name in students]
    assert talk["teacher"] > 0 and talk_times[0] > 0
    assert all(a < b for a, b in zip(talk_times, talk_times[1:])), f"more talk, more talk time: {talk}"
    assert any("image/png" in o.get("data", {}) for cell in notebook.cells for o in cell.get("outputs", [])), "a plot"
