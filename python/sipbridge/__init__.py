"""sipbridge: a SIP multi-party audio conferencing engine.

>>> import sipbridge
>>> with sipbridge.Endpoint("127.0.0.1:5060") as endpoint:
...     room = endpoint.create_conference("standup")
...     alice = room.dial("sip:alice@127.0.0.1:5070")
...     event = endpoint.next_event(timeout=5.0)

Application audio is mono int16 at the conference's rate (48 kHz unless
chosen, see ``Conference.sample_rate``) in 20 ms frames of
``Conference.frame_samples`` samples, as numpy arrays. Calls that wait release the GIL and stop on Ctrl-C.
"""

from ._native import (
    DEFAULT_SAMPLE_RATE,
    AlreadyExistsError,
    Conference,
    ConferencePolicy,
    Endpoint,
    Event,
    FrameReader,
    FullError,
    InvalidArgumentError,
    LocalParticipant,
    LockedError,
    NetworkError,
    NotFoundError,
    Participant,
    ParticipantInfo,
    Playback,
    SdpError,
    SipBridgeError,
    SipError,
    StoppedError,
    Tap,
    TimeoutError,
    __version__,
)

__all__ = [
    "DEFAULT_SAMPLE_RATE",
    "AlreadyExistsError",
    "Conference",
    "ConferencePolicy",
    "Endpoint",
    "Event",
    "FrameReader",
    "FullError",
    "InvalidArgumentError",
    "LocalParticipant",
    "LockedError",
    "NetworkError",
    "NotFoundError",
    "Participant",
    "ParticipantInfo",
    "Playback",
    "SdpError",
    "SipBridgeError",
    "SipError",
    "StoppedError",
    "Tap",
    "TimeoutError",
    "__version__",
]
