"""A conference with a bot, and a caller that dials in and listens.

    python examples/quickstart.py [--seconds N]

The bridge's room "lobby" has a local participant (a bot) playing a 440 Hz
tone. A second endpoint calls sip:lobby@... over real SIP and RTP on
loopback, listens through its own local participant, and reports what it
heard. Point a SIP phone at the printed URI to join the lobby yourself.
"""

import argparse

import numpy as np

import sipbridge

RATE = sipbridge.DEFAULT_SAMPLE_RATE  # conferences mix at 48 kHz
FRAME = RATE // 50


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--listen", default="127.0.0.1:0")
    args = parser.parse_args()

    with sipbridge.Endpoint(args.listen, rtp_ports=(34000, 34099)) as bridge, sipbridge.Endpoint(
        "127.0.0.1:0", rtp_ports=(34100, 34199)
    ) as phone:
        lobby = bridge.create_conference("lobby")
        bot = lobby.add_local()
        print("call", bridge.room_uri("lobby"))

        handset = phone.create_conference("handset")
        ear = handset.add_local()
        handset.dial(bridge.room_uri("lobby"))

        heard = []
        t = np.arange(FRAME)
        for i in range(int(args.seconds * 50)):
            bot.write((6000 * np.sin(2 * np.pi * 440 * (t + i * FRAME) / RATE)).astype(np.int16), timeout=1.0)
            bot.read_frame(timeout=1.0)  # what the bot hears; it does not care
            try:
                heard.append(ear.read_frame(timeout=0))
            except sipbridge.TimeoutError:
                pass  # not connected yet
            while (event := bridge.next_event(timeout=0)) is not None:
                print("bridge:", event)

        audio = np.concatenate(heard)[-RATE:].astype(np.float64)
        spectrum = np.abs(np.fft.rfft(audio))
        peak_hz = np.argmax(spectrum) * RATE / len(audio)
        print(f"the caller heard a peak at {peak_hz:.0f} Hz, level {np.sqrt(np.mean(audio ** 2)):.0f} RMS")
        if abs(peak_hz - 440) <= 5 and np.sqrt(np.mean(audio**2)) > 1000:
            print("the caller heard the bot's 440 Hz tone")
            return 0
        print("the caller did not hear the bot")
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
