"""sipbridge: a SIP multi-party audio conferencing engine.

>>> import sipbridge
>>> with sipbridge.Endpoint("127.0.0.1:5060") as endpoint:
...     room = endpoint.create_conference("standup")
...     alice = room.dial("sip:alice@127.0.0.1:5070")
...     event = endpoint.next_event(timeout=5.0)

Application audio is 8 kHz mono int16 in 20 ms frames of ``FRAME_SAMPLES``
samples, as numpy arrays. Calls that wait release the GIL and stop on Ctrl-C.
"""

from ._native import (
    FRAME_SAMPLES,
    SAMPLE_RATE,
    AlreadyExistsError,
    Conference,
    Endpoint,
    Event,
    FrameReader,
    InvalidArgumentError,
    LocalParticipant,
    NetworkError,
    NotFoundError,
    Participant,
    ParticipantInfo,
    SdpError,
    SipBridgeError,
    SipError,
    StoppedError,
    TimeoutError,
    __version__,
)

__all__ = [
    "FRAME_SAMPLES",
    "SAMPLE_RATE",
    "AlreadyExistsError",
    "Conference",
    "Endpoint",
    "Event",
    "FrameReader",
    "InvalidArgumentError",
    "LocalParticipant",
    "NetworkError",
    "NotFoundError",
    "Participant",
    "ParticipantInfo",
    "SdpError",
    "SipBridgeError",
    "SipError",
    "StoppedError",
    "TimeoutError",
    "__version__",
]
