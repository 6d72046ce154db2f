"""The Python module against two endpoints on loopback: the same end-to-end
run as the Rust and C tests, plus Python's own contract (types, exceptions,
context managers, interruptible waits)."""

import itertools
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import sipbridge

# The tests' conferences mix at 16 kHz; calls between endpoints negotiate Opus.
RATE = 16000
FRAME = RATE // 50
_ports = itertools.count(0)


def endpoint(**kwargs) -> sipbridge.Endpoint:
    base = 26000 + (os.getpid() % 40) * 100 + next(_ports) % 5 * 20
    return sipbridge.Endpoint("127.0.0.1:0", rtp_ports=(base, base + 19), sample_rate=RATE, **kwargs)


def wait_event(ep: sipbridge.Endpoint, kind: str, timeout: float = 5.0, **fields) -> sipbridge.Event:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        event = ep.next_event(timeout=deadline - time.monotonic())
        if event is not None and event.kind == kind and all(getattr(event, k) == v for k, v in fields.items()):
            return event
    raise AssertionError(f"no {kind} event with {fields}")


def tone(freq: float, start: int, n: int = FRAME) -> np.ndarray:
    t = (np.arange(n) + start) / RATE
    return (8000 * np.sin(2 * np.pi * freq * t)).astype(np.int16)


def power(samples: np.ndarray, freq: float) -> float:
    spectrum = np.abs(np.fft.rfft(samples.astype(np.float64))) / len(samples)
    bin_ = int(round(freq * len(samples) / RATE))
    return float(spectrum[bin_ - 2 : bin_ + 3].max() ** 2)


def play_and_listen(local: sipbridge.LocalParticipant, freq: float, seconds: float) -> np.ndarray:
    heard = []
    local.write(tone(freq, 0, 2 * FRAME))
    for i in range(int(seconds * 50)):
        local.write(tone(freq, (i + 2) * FRAME), timeout=1.0)
        heard.append(local.read_frame(timeout=1.0))
    return np.concatenate(heard)


def test_dial_hear_each_other_mute_and_hang_up():
    with endpoint() as bridge, endpoint() as caller:
        room = bridge.create_conference("room1")
        at_bridge = room.add_local()
        out = caller.create_conference("out")
        at_caller = out.add_local()

        leg = out.dial(bridge.room_uri("room1"))
        assert wait_event(caller, "answered").participant == leg.id
        joined = wait_event(bridge, "participant_joined", participant_kind="inbound")
        assert joined.conference == "room1" and "sip:out@" in joined.remote

        result = {}
        listener = threading.Thread(target=lambda: result.update(b=play_and_listen(at_bridge, 1300, 1.5)))
        listener.start()
        heard_by_caller = play_and_listen(at_caller, 500, 1.5)
        listener.join()
        c, b = heard_by_caller[-RATE:], result["b"][-RATE:]
        assert heard_by_caller.dtype == np.int16 and len(heard_by_caller) % FRAME == 0
        assert power(c, 1300) > 100 * power(c, 500), "the caller hears the bridge's tone, not its own"
        assert power(b, 500) > 100 * power(b, 1300), "the bridge hears the caller's tone, not its own"

        inbound = room.participant(joined.participant)
        info = inbound.info()
        assert info.kind == "inbound" and info.state == "connected" and info.packets_received > 50
        inbound.mute()
        inbound.set_volume(-3.0)
        info = inbound.info()
        assert info.muted and abs(info.volume_db + 3.0) < 1e-6
        assert {p.id for p in room.participants()} == {at_bridge.id, joined.participant}

        leg.send_dtmf("7#")
        assert wait_event(bridge, "dtmf", participant=joined.participant).digit == "7"
        assert wait_event(bridge, "dtmf").digit == "#"
        with pytest.raises(sipbridge.InvalidArgumentError):
            leg.send_dtmf("x")

        leg.hangup()
        assert wait_event(caller, "participant_left").reason == "local_hangup"
        left = wait_event(bridge, "participant_left")
        assert left.reason == "remote_hangup" and left.packets_received > 50
        with pytest.raises(sipbridge.NotFoundError):
            leg.info()


def test_conference_mix_feed_holds_everyone():
    with endpoint() as ep:
        room = ep.create_conference("mix")
        mix = room.mixed_audio()
        a, b = room.add_local(), room.add_local()
        frames = []
        for i in range(60):
            a.write(tone(700, i * FRAME), timeout=1.0)
            b.write(tone(1900, i * FRAME), timeout=1.0)
            frames.append(mix.read_frame(timeout=1.0))
        heard = np.concatenate(frames)[-RATE // 2 :]
        assert power(heard, 700) > 1e5 and power(heard, 1900) > 1e5


def test_noise_suppression_quiets_a_noisy_talker():
    with endpoint() as ep:
        with pytest.raises(sipbridge.InvalidArgumentError):
            ep.create_conference("narrow").set_noise_suppression()
        room = ep.create_conference("wide", sample_rate=48000)
        talker, listener = room.add_local(), room.add_local()
        noise = np.random.default_rng(5).integers(-1024, 1024, size=48000 * 4).astype(np.int16)

        def heard_power(offset: int) -> float:
            frames = []
            for i in range(100):
                talker.write(noise[(offset + i) * 960 : (offset + i + 1) * 960], timeout=1.0)
                frames.append(listener.read_frame(timeout=1.0))
            # A tick that missed the talker's frame (a busy machine) gives an
            # all-zero one: the median of the others.
            powers = [p for p in (np.mean(f.astype(np.float64) ** 2) for f in frames[50:]) if p > 0]
            assert len(powers) >= 10, f"only {len(powers)} of 50 frames carried the talker"
            return float(np.median(powers))

        plain = heard_power(0)
        talker.participant.set_noise_suppression(True)
        assert talker.participant.info().noise_suppression
        cleaned = heard_power(100)
        # RNNoise takes 5-10 dB off steady white noise (it is made for speech
        # in noise); without it nothing changes.
        assert 10 * np.log10(plain / cleaned) > 3, (plain, cleaned)
        room.set_noise_suppression(False)
        assert not talker.participant.info().noise_suppression


def test_talking_events_and_policy():
    with endpoint() as ep:
        room = ep.create_conference("talk")
        with pytest.raises(sipbridge.InvalidArgumentError):
            room.set_talker_policy(start_dbov=-60.0, stop_dbov=-30.0)
        room.set_talker_policy(max_talkers=2, hang_ms=200)
        talker, listener = room.add_local(), room.add_local()
        for i in range(25):
            talker.write(tone(500, i * FRAME), timeout=1.0)
            listener.write(np.zeros(FRAME, dtype=np.int16), timeout=1.0)
            listener.read_frame(timeout=1.0)
        assert talker.participant.info().talking
        event = wait_event(ep, "talking", participant=talker.id)
        assert event.talking is True


def test_context_managers_clean_up():
    with endpoint() as ep:
        with ep.create_conference("scoped") as room:
            with room.add_local() as local:
                assert local.participant.info().kind == "local"
            assert room.participants() == []
        assert ep.conferences() == []
    assert ep.stopped
    with pytest.raises(sipbridge.StoppedError):
        ep.create_conference("late")


def test_errors_are_exceptions_of_the_hierarchy():
    with endpoint() as ep:
        room = ep.create_conference("r")
        with pytest.raises(sipbridge.AlreadyExistsError):
            ep.create_conference("r")
        with pytest.raises(sipbridge.NotFoundError):
            ep.conference("missing")
        with pytest.raises(sipbridge.InvalidArgumentError):
            room.dial("not a uri")
        with pytest.raises(sipbridge.InvalidArgumentError):
            room.dial(ep.room_uri("x"), username="alice")  # a password too, or neither
        with pytest.raises(sipbridge.InvalidArgumentError):
            room.dial(ep.room_uri("x"), username="", password="secret")
        with pytest.raises(sipbridge.NotFoundError):
            room.participant(10**9)
        local = room.add_local()
        with pytest.raises(sipbridge.InvalidArgumentError):
            local.participant.set_volume(float("nan"))
        with pytest.raises(sipbridge.NotFoundError):
            local.participant.hold()  # only SIP calls can be held
        with pytest.raises(sipbridge.NotFoundError):
            local.participant.set_codec("PCMA")  # only SIP calls change codec
        with pytest.raises(sipbridge.InvalidArgumentError):
            local.participant.set_codec("GSM")
        with pytest.raises(sipbridge.NotFoundError):
            local.participant.transfer("sip:carol@127.0.0.1:5070")
        with pytest.raises(sipbridge.InvalidArgumentError):
            local.participant.transfer("not a uri")
        with pytest.raises(TypeError):
            local.write("not audio")  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            local.write(np.zeros(10, dtype=np.float32))  # type: ignore[arg-type]
        with pytest.raises(sipbridge.InvalidArgumentError):
            local.read_frame(timeout=-1)
        with pytest.raises(sipbridge.TimeoutError):
            room.mixed_audio().read_frame(timeout=0)
        local.write([0] * FRAME)  # plain sequences work too
        with pytest.raises(sipbridge.InvalidArgumentError):
            sipbridge.Endpoint("nonsense")
        with pytest.raises(TypeError):
            sipbridge.Endpoint(5060)  # type: ignore[arg-type]
        with pytest.raises(sipbridge.InvalidArgumentError, match="certificate"):
            sipbridge.Endpoint("127.0.0.1:0", tls_listen="127.0.0.1:0")
        assert ep.tls_address is None
        assert issubclass(sipbridge.NotFoundError, sipbridge.SipBridgeError)


def test_a_room_that_requires_authentication_admits_only_users():
    with endpoint() as bridge, endpoint() as caller:
        bridge.add_user("alice", "secret")
        room = bridge.create_conference("members")
        room.set_require_authentication()
        out = caller.create_conference("out")
        out.dial(bridge.room_uri("members"))
        assert wait_event(caller, "dial_failed").status == 401
        out.dial(bridge.room_uri("members"), username="alice", password="wrong")
        assert wait_event(caller, "dial_failed").status == 401
        out.dial(bridge.room_uri("members"), username="alice", password="secret")
        wait_event(caller, "answered")
        assert len(room.participants()) == 1
        bridge.remove_user("alice")
        with pytest.raises(sipbridge.NotFoundError):
            bridge.remove_user("alice")


def test_unknown_room_fails_the_dial_with_404():
    with endpoint(create_rooms_on_demand=False) as bridge, endpoint() as caller:
        out = caller.create_conference("out")
        out.dial(bridge.room_uri("nosuch"))
        failed = wait_event(caller, "dial_failed")
        assert (failed.status, failed.status_reason) == (404, "Not Found")


def test_blocking_waits_release_the_gil_and_stop_on_ctrl_c():
    with endpoint() as ep:
        ticks = []
        ticker = threading.Thread(target=lambda: [ticks.append(time.sleep(0.01)) for _ in range(20)])
        ticker.start()
        assert ep.next_event(timeout=0.3) is None, "nothing happened, so the wait timed out"
        ticker.join()
        assert len(ticks) == 20, "another Python thread ran while next_event waited"

        threading.Timer(0.3, lambda: os.kill(os.getpid(), signal.SIGINT)).start()
        started = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            while True:
                ep.next_event(timeout=None)
        assert time.monotonic() - started < 3


def test_python_example_runs_and_hears_the_bot():
    example = Path(__file__).resolve().parent.parent / "examples" / "quickstart.py"
    done = subprocess.run([sys.executable, str(example), "--seconds", "2"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "the caller heard the bot's 440 Hz tone" in done.stdout


def test_prompts_play_to_everyone_or_one_and_report_their_end(tmp_path: Path):
    import wave

    # A WAV file at 8 kHz: 0.4 s of 500 Hz, played into a 16 kHz room.
    path = tmp_path / "prompt.wav"
    samples = (8000 * np.sin(2 * np.pi * 500 * np.arange(3200) / 8000)).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(samples.tobytes())
    with endpoint() as ep:
        room = ep.create_conference("prompts")
        a, b = room.add_local(), room.add_local()
        welcome = sipbridge.Playback.wav_file(path)
        id_ = room.play(welcome)
        heard = [np.concatenate([x.read_frame(timeout=1.0) for _ in range(30)]) for x in (a, b)]
        for h in heard:
            loud = np.flatnonzero(np.abs(h) > 100)
            assert abs((loud[-1] - loud[0] + 1) - 6400) < 60, "0.4 s at 16 kHz"
            assert power(h, 500) > 1e5
        event = wait_event(ep, "playback_finished", playback=id_)
        assert event.completed and event.participant is None

        beep = sipbridge.Playback.tone([1000.0], 0.2, level_dbov=-20.0)
        id_ = room.play(beep, participant=b.id)
        to_a = np.concatenate([a.read_frame(timeout=1.0) for _ in range(20)])
        to_b = np.concatenate([b.read_frame(timeout=1.0) for _ in range(20)])
        assert not to_a.any() and power(to_b, 1000) > 1e5
        assert wait_event(ep, "playback_finished", playback=id_).participant == b.id

        id_ = room.play(sipbridge.Playback.pcm(np.full(RATE * 10, 1000, dtype=np.int16)))
        room.stop_playback(id_)
        assert wait_event(ep, "playback_finished", playback=id_).completed is False
        with pytest.raises(sipbridge.InvalidArgumentError):
            sipbridge.Playback.tone([1000.0], 0.2, level_dbov=3.0)
        with pytest.raises(sipbridge.InvalidArgumentError):
            sipbridge.Playback.wav_file(tmp_path / "missing.wav")


def test_recording_writes_the_mix_to_a_wav_file(tmp_path: Path):
    import wave

    path = tmp_path / "call.wav"
    with endpoint() as ep:
        room = ep.create_conference("recorded")
        talker, listener = room.add_local(), room.add_local()
        room.start_recording(path, per_participant=True)
        assert wait_event(ep, "recording_started", participant=None).path == str(path)
        for i in range(40):
            talker.write(tone(700, i * FRAME), timeout=1.0)
            listener.read_frame(timeout=1.0)
        room.pause_recording()
        room.resume_recording()
        room.stop_recording()
        assert wait_event(ep, "recording_stopped", participant=None).frames_dropped == 0
        with pytest.raises(sipbridge.NotFoundError):
            room.stop_recording()
    with wave.open(str(path), "rb") as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (RATE, 1, 2)
        mix = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    assert len(mix) > RATE // 2 and power(mix, 700) > 1e5
    assert (tmp_path / f"call-{talker.id}.wav").exists() and (tmp_path / f"call-{listener.id}.wav").exists()


def test_pin_moderators_and_policy_actions():
    # Ports of their own (43900-43947): SIP on the 21st of each block.
    def policy_endpoint(base: int) -> sipbridge.Endpoint:
        return sipbridge.Endpoint(f"127.0.0.1:{base + 20}", rtp_ports=(base, base + 19), sample_rate=RATE)

    with policy_endpoint(43900) as bridge, policy_endpoint(43924) as caller:
        room = bridge.create_conference("pin")
        room.set_policy(pin="1234", moderator_pin="42", mute_on_join=True)
        assert room.policy.pin == "1234" and room.policy.max_participants is None
        assert "1234" not in repr(room.policy), "PINs stay out of reprs"
        narrow = bridge.create_conference("narrow")
        narrow.set_policy(codecs=["PCMU", "G722"])
        assert narrow.policy.codecs == ["PCMU", "G722"] and room.policy.codecs is None
        with pytest.raises(sipbridge.InvalidArgumentError):
            narrow.set_policy(codecs=["speex"])
        out = caller.create_conference("out")
        leg = out.dial(bridge.room_uri("pin"))
        wait_event(caller, "answered", participant=leg.id)
        inbound = room.participant(wait_event(bridge, "participant_joined", participant_kind="inbound").participant)
        assert inbound.info().admission == "entering_pin"
        leg.send_dtmf("9#")
        assert wait_event(bridge, "pin_rejected", participant=inbound.id).tries_left == 2
        leg.send_dtmf("42#")
        assert wait_event(bridge, "pin_accepted", participant=inbound.id).moderator
        wait_event(bridge, "moderator_joined", participant=inbound.id)
        info = inbound.info()
        assert info.moderator and info.admission == "admitted" and not info.muted

        local = room.add_local()
        assert local.participant.info().muted, "a non-moderator joins muted"
        assert wait_event(bridge, "muted", participant=local.id).muted, "joining muted is an event"
        room.mute_all(False)
        assert wait_event(bridge, "muted", participant=local.id).muted is False
        local.participant.set_deaf()
        assert local.participant.info().deaf

        room.lock()
        assert wait_event(bridge, "locked").locked
        with pytest.raises(sipbridge.LockedError):
            room.add_local()
        room.unlock()
        room.set_policy(max_participants=2)
        with pytest.raises(sipbridge.FullError):
            room.add_local()

        inbound.kick()
        assert wait_event(bridge, "participant_left", participant=inbound.id).reason == "kicked"
        room.end()
        wait_event(bridge, "conference_ended")
        assert wait_event(bridge, "participant_left", participant=local.id).reason == "conference_ended"
        wait_event(bridge, "conference_empty", conference="pin")


def test_rooms_callers_create_take_the_endpoints_room_policy():
    policy = sipbridge.ConferencePolicy(pin="77", mute_on_join=True, max_participants=1)
    assert policy.pin == "77" and policy.mute_on_join and policy.pin_timeout == 20.0
    with pytest.raises(sipbridge.InvalidArgumentError):
        sipbridge.ConferencePolicy(pin="12x")
    with pytest.raises(TypeError):
        sipbridge.ConferencePolicy(colour="red")  # type: ignore[call-arg]
    # Ports of their own (43950-43997): SIP on the 21st of each block.
    bridge = sipbridge.Endpoint("127.0.0.1:43970", rtp_ports=(43950, 43969), sample_rate=RATE, room_policy=policy)
    caller = sipbridge.Endpoint("127.0.0.1:43994", rtp_ports=(43974, 43993), sample_rate=RATE)
    with bridge, caller:
        out = caller.create_conference("out")
        leg = out.dial(bridge.room_uri("lobby"))
        wait_event(caller, "answered", participant=leg.id)
        joined = wait_event(bridge, "participant_joined", conference="lobby")
        lobby = bridge.conference("lobby")
        assert lobby.policy.pin == "77" and lobby.participant(joined.participant).info().admission == "entering_pin"
        leg.send_dtmf("77#")
        wait_event(bridge, "pin_accepted", participant=joined.participant)
        assert wait_event(bridge, "muted", participant=joined.participant).muted
        second = out.dial(bridge.room_uri("lobby"))
        assert wait_event(caller, "dial_failed", participant=second.id).status == 486, "the room holds one"
        # With an announcement, the caller is answered, hears it apart, and is hung up.
        lobby.set_policy(max_participants=1, full_prompt=sipbridge.Playback.tone([600.0], 0.5))
        third = out.dial(bridge.room_uri("lobby"))
        wait_event(caller, "answered", participant=third.id)
        turned = wait_event(bridge, "participant_joined", conference="lobby")
        assert lobby.participant(turned.participant).info().admission == "turned_away"
        assert wait_event(bridge, "participant_left", participant=turned.participant).reason == "room_full"
        # The app's own rooms start without a policy; one can be given whole.
        room = bridge.create_conference("own")
        assert room.policy.pin is None
        room.set_policy(policy)
        assert room.policy.max_participants == 1
        with pytest.raises(sipbridge.InvalidArgumentError):
            room.set_policy(policy, locked=True)


def test_a_tap_a_whisper_and_a_breakout_room():
    with sipbridge.Endpoint("127.0.0.1:0", rtp_ports=(46900, 46919), sample_rate=RATE) as ep:
        main, side = ep.create_conference("main"), ep.create_conference("side")
        supervisor, agent, customer = main.add_local(), main.add_local(), main.add_local()
        peer = side.add_local()
        tones = [(supervisor, 1000), (agent, 0), (customer, 0), (peer, 600)]

        def talk(frames: int = 10) -> list[np.ndarray]:
            heard: list[list[np.ndarray]] = [[] for _ in tones]
            for i in range(frames + 3):
                for local, freq in tones:
                    local.write(tone(freq, i * FRAME), timeout=1.0)
                for frames_heard, (local, _) in zip(heard, tones):
                    frames_heard.append(local.read_frame(timeout=1.0))
            # The first frames may have been mixed before the last change.
            return [np.concatenate(h[3:]) for h in heard]

        with supervisor.participant.tap() as tap:
            talk()
            frames = [tap.read_frame(timeout=1.0) for _ in range(10)]
            assert [t for _, t, _ in frames] == [frames[0][1] + i * FRAME for i in range(10)]
            assert frames[-1][2], "talking"
            assert power(np.concatenate([f for f, _, _ in frames]), 1000) > 1e5
            with pytest.raises(sipbridge.AlreadyExistsError):
                supervisor.participant.tap()

        supervisor.participant.set_heard_only_by([agent.id])
        heard = talk()
        assert power(heard[1], 1000) > 1e5 and power(heard[2], 1000) < 1.0, "a whisper to the agent only"
        supervisor.participant.set_heard_only_by(None)

        main.move_participant(agent.id, side)
        event = wait_event(ep, "participant_moved", participant=agent.id)
        assert event.conference == "side" and event.moved_from == "main"
        heard = talk()
        assert power(heard[1], 600) > 1e5 and power(heard[1], 1000) < 1.0, "the agent hears the side room"
        assert sorted(side.move_all_to(main)) == sorted([agent.id, peer.id])
