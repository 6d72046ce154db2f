"""An IVR in front of conference rooms: callers dial a room, type its PIN, get in.

    python examples/ivr.py --listen 0.0.0.0:5060 --room sales --room support --pin 2468

A caller who dials sip:sales@HOST:PORT is answered and hears the PIN prompt
(a tone, or --prompt WAV); it types the PIN and '#'. Three wrong PINs hang
up. Once in, everyone in the room hears the announcement (a tone, or
--announcement WAV) and the callers hear each other. Rooms not listed get
404. It runs until Ctrl-C or SIGTERM, then hangs up every call (BYE).

The PIN dialogue is the conference policy's own (`Conference.set_policy`):
the app only chooses the prompt and reacts to the events. Digits a caller
types once in the room come as "dtmf" events, for menus of your own.
"""

from __future__ import annotations

import argparse
import logging
import signal
from collections.abc import Sequence

import sipbridge

log = logging.getLogger("ivr")

# The tones used when no WAV file is given (the tests listen for them).
PROMPT_HZ = 660.0
ANNOUNCEMENT_HZ = 880.0


def rtp_range(text: str) -> tuple[int, int]:
    low, _, high = text.partition("-")
    return int(low), int(high)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen", default="0.0.0.0:5060", help="SIP address (UDP and TCP), default %(default)s")
    parser.add_argument("--rtp-ports", type=rtp_range, default=(30000, 30999), help="LOW-HIGH, default 30000-30999")
    parser.add_argument("--room", action="append", help="a room callers may dial (repeatable), default: lobby")
    parser.add_argument("--pin", required=True, help="the PIN callers type, then '#'")
    parser.add_argument("--prompt", help="WAV file asking for the PIN (default: a tone)")
    parser.add_argument("--announcement", help="WAV file played into a room when someone joins (default: a tone)")
    parser.add_argument(
        "--sample-rate", type=int, default=16000, choices=(8000, 16000, 48000), help="the rooms' mixing rate (Hz)"
    )
    return parser.parse_args(argv)


def serve(endpoint: sipbridge.Endpoint, rooms: dict[str, sipbridge.Conference], announcement: sipbridge.Playback) -> None:
    """Reports what happens and announces each caller that got in. Runs until interrupted."""
    while True:
        event = endpoint.next_event(timeout=None)  # Ctrl-C raises KeyboardInterrupt here
        if event is None:
            continue
        room_name = event.conference  # always one of `rooms`: no others are created
        if event.kind == "participant_joined":
            log.info("%s: %s answered, asking for the PIN (participant %s)", room_name, event.remote, event.participant)
        elif event.kind == "pin_rejected":
            log.info("%s: participant %s typed a wrong PIN, %s tries left", room_name, event.participant, event.tries_left)
        elif event.kind == "pin_accepted":
            log.info("%s: participant %s is in", room_name, event.participant)
            rooms[room_name].play(announcement)  # everyone in the room, the newcomer too
        elif event.kind == "dtmf":
            log.info("%s: participant %s pressed %s", room_name, event.participant, event.digit)
        elif event.kind == "participant_left":
            log.info("%s: participant %s left (%s)", room_name, event.participant, event.reason)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.prompt:
        prompt = sipbridge.Playback.wav_file(args.prompt)
    else:
        prompt = sipbridge.Playback.tone([PROMPT_HZ], 1.0, level_dbov=-16.0)
    if args.announcement:
        announcement = sipbridge.Playback.wav_file(args.announcement)
    else:
        announcement = sipbridge.Playback.tone([ANNOUNCEMENT_HZ], 0.6, level_dbov=-16.0)

    # SIGTERM (a service manager stopping us) ends the program as Ctrl-C does.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    with sipbridge.Endpoint(
        args.listen, rtp_ports=args.rtp_ports, sample_rate=args.sample_rate, create_rooms_on_demand=False
    ) as endpoint:
        rooms = {}
        for name in args.room or ["lobby"]:
            room = endpoint.create_conference(name)
            # Callers get the prompt, then hear the room only once the PIN is right.
            room.set_policy(pin=args.pin, pin_prompt=prompt)
            rooms[name] = room
            log.info("listening: call %s", endpoint.room_uri(name))
        try:
            serve(endpoint, rooms, announcement)
        except KeyboardInterrupt:
            log.info("stopping: hanging up every call")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
