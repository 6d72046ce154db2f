//! Per-participant taps, the listen/talk matrix (listen, whisper, barge) and
//! breakout rooms, checked by what is heard.

use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use sipbridge::{Endpoint, EndpointConfig, Error, Event, LocalParticipant, ParticipantId, ParticipantKind};

use crate::common::{play_and_listen, tone_power, wait_event, FRAME, RATE};

const WAIT: Duration = Duration::from_secs(5);

/// An endpoint with `mixer_threads` mixers and RTP ports of its own in 45000-46999.
fn endpoint_with(mixer_threads: usize) -> Endpoint {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let base = 45000 + NEXT.fetch_add(1, Ordering::Relaxed) % 100 * 20;
    Endpoint::start(EndpointConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        sample_rate: RATE,
        rtp_ports: base..=base + 19,
        mixer_threads,
        ..Default::default()
    })
    .expect("endpoint starts")
}

/// Plays each participant's tone and records what each hears, all at once.
fn round(locals: &mut [&mut LocalParticipant], tones: &[f64], duration: Duration) -> Vec<Vec<i16>> {
    std::thread::scope(|s| {
        let runs: Vec<_> = locals
            .iter_mut()
            .zip(tones)
            .map(|(local, tone)| s.spawn(move || play_and_listen(local, *tone, duration)))
            .collect();
        runs.into_iter().map(|r| r.join().unwrap()).collect()
    })
}

/// Whether the last half of `heard` carries `tone` loudly.
fn hears(heard: &[i16], tone: f64) -> bool {
    tone_power(&heard[heard.len() / 2..], tone) > 1e5
}

#[test]
fn a_tap_delivers_a_participants_own_audio_with_timestamps_and_talking() {
    let endpoint = endpoint_with(1);
    let room = endpoint.create_conference("captions").unwrap();
    let (mut a, mut b) = (room.add_local().unwrap(), room.add_local().unwrap());
    let mut tap = a.participant().tap().unwrap();
    assert!(matches!(a.participant().tap(), Err(Error::AlreadyExists(_))), "one tap at a time");
    let reader = std::thread::spawn(move || {
        let mut frames = Vec::new();
        let mut frame = vec![0i16; FRAME];
        while let Ok(info) = tap.read_frame(&mut frame, Some(Duration::from_millis(300))) {
            frames.push((info, frame.clone()));
        }
        (tap, frames)
    });
    round(&mut [&mut a, &mut b], &[500.0, 1300.0], Duration::from_millis(800));
    a.hangup().unwrap();
    let (tap, frames) = reader.join().unwrap();
    assert!(frames.len() > 30, "{} frames", frames.len());
    for pair in frames.windows(2) {
        assert_eq!(pair[1].0.timestamp, pair[0].0.timestamp + FRAME as u64, "no frame was dropped");
    }
    let middle: Vec<i16> = frames[10..30].iter().flat_map(|(_, f)| f.clone()).collect();
    assert!(tone_power(&middle, 500.0) > 1e5, "its own tone");
    assert!(tone_power(&middle, 500.0) > 1000.0 * tone_power(&middle, 1300.0), "and nobody else's");
    assert!(frames[10..30].iter().all(|(info, _)| info.talking));
    assert_eq!(tap.frames_dropped(), 0);
}

#[test]
fn a_slow_tap_reader_loses_frames_with_an_event_and_the_mix_goes_on() {
    let endpoint = endpoint_with(1);
    let room = endpoint.create_conference("slow").unwrap();
    let (mut a, mut b) = (room.add_local().unwrap(), room.add_local().unwrap());
    let tap = a.participant().tap().unwrap();
    // Nobody reads the tap, which holds one second.
    let heard = round(&mut [&mut a, &mut b], &[500.0, 1300.0], Duration::from_millis(1600));
    assert!(hears(&heard[1], 500.0), "the mix goes on");
    let dropped = wait_event(&endpoint, WAIT, |e| match e {
        Event::TapOverrun { participant, frames_dropped, .. } if *participant == a.id() => Some(*frames_dropped),
        _ => None,
    });
    assert!(dropped > 0 && tap.frames_dropped() >= dropped, "{dropped} {}", tap.frames_dropped());
    // Closed, it can be opened again.
    tap.close();
    let mut again = a.participant().tap().unwrap();
    let mut frame = vec![0i16; FRAME];
    b.write(&[0; FRAME * 5]);
    a.write(&[0; FRAME * 5]);
    assert!(again.read_frame(&mut frame, Some(Duration::from_secs(1))).is_ok());
}

#[test]
fn a_supervisor_listens_whispers_and_barges() {
    let endpoint = endpoint_with(1);
    let room = endpoint.create_conference("support").unwrap();
    let mut customer = room.add_local().unwrap();
    let mut agent = room.add_local().unwrap();
    let mut supervisor = room.add_local().unwrap();
    let (a, b, c) = (500.0, 1300.0, 2100.0);
    let listen = |locals: &mut [&mut LocalParticipant]| round(locals, &[a, b, c], Duration::from_millis(700));

    // Listening in: the supervisor hears both, nobody hears the supervisor.
    supervisor.participant().set_heard_only_by(Some(&[])).unwrap();
    let heard = listen(&mut [&mut customer, &mut agent, &mut supervisor]);
    assert!(hears(&heard[0], b) && !hears(&heard[0], c), "the customer hears the agent only");
    assert!(hears(&heard[1], a) && !hears(&heard[1], c), "the agent hears the customer only");
    assert!(hears(&heard[2], a) && hears(&heard[2], b), "the supervisor hears both");

    // Whispering: the agent hears the supervisor, the customer does not.
    supervisor.participant().set_heard_only_by(Some(&[agent.id()])).unwrap();
    let heard = listen(&mut [&mut customer, &mut agent, &mut supervisor]);
    assert!(hears(&heard[1], c) && hears(&heard[1], a), "the agent hears the whisper and the customer");
    assert!(hears(&heard[0], b) && !hears(&heard[0], c), "the customer hears the agent, not the whisper");

    // Barging in: everyone hears the supervisor.
    supervisor.participant().set_heard_only_by(None).unwrap();
    let heard = listen(&mut [&mut customer, &mut agent, &mut supervisor]);
    assert!(hears(&heard[0], c) && hears(&heard[1], c), "both hear the supervisor");

    let too_many: Vec<ParticipantId> = (0..17).map(ParticipantId).collect();
    assert!(matches!(customer.participant().set_hears_only(Some(&too_many)), Err(Error::InvalidArgument(_))));
}

/// Dials `callee`'s room `name` from room `from` of `caller`, with a local
/// participant there; returns it and the inbound participant at `callee`.
fn call_in(caller: &Endpoint, from: &str, callee: &Endpoint, name: &str) -> (LocalParticipant, ParticipantId) {
    let out = caller.create_conference(from).unwrap();
    let local = out.add_local().unwrap();
    out.dial(&callee.room_uri(name)).unwrap();
    let inbound = wait_event(callee, WAIT, |e| match e {
        Event::ParticipantJoined { participant, kind: ParticipantKind::Inbound, .. } => Some(*participant),
        _ => None,
    });
    (local, inbound)
}

#[test]
fn a_whisper_reaches_an_agent_on_a_call_and_not_the_customer_on_another() {
    let bridge = endpoint_with(1);
    let phones = endpoint_with(1);
    let room = bridge.create_conference("desk").unwrap();
    let mut supervisor = room.add_local().unwrap();
    let (mut customer, _) = call_in(&phones, "customer", &bridge, "desk");
    let (mut agent, agent_leg) = call_in(&phones, "agent", &bridge, "desk");
    supervisor.participant().set_heard_only_by(Some(&[agent_leg])).unwrap();
    let heard = round(&mut [&mut customer, &mut agent, &mut supervisor], &[500.0, 1300.0, 2100.0], WAIT / 3);
    assert!(hears(&heard[1], 2100.0) && hears(&heard[1], 500.0), "the agent hears the whisper and the customer");
    assert!(hears(&heard[0], 1300.0), "the customer hears the agent");
    let tail = &heard[0][heard[0].len() / 2..];
    assert!(tone_power(tail, 2100.0) * 100.0 < tone_power(tail, 1300.0), "but not the whisper");
}

#[test]
fn a_participant_moves_to_a_breakout_room_without_a_gap_and_back() {
    let endpoint = endpoint_with(1);
    let main = endpoint.create_conference("class").unwrap();
    let breakout = endpoint.create_conference("breakout").unwrap();
    let (mut teacher, mut student) = (main.add_local().unwrap(), main.add_local().unwrap());
    let mut peer = breakout.add_local().unwrap();
    let (t, s, p) = (500.0, 900.0, 1300.0);
    let heard = round(&mut [&mut teacher, &mut student, &mut peer], &[t, s, p], Duration::from_millis(500));
    assert!(hears(&heard[1], t) && !hears(&heard[1], p));

    // Moved while its audio flows: every tick still gives it a frame.
    let mut frame = vec![0i16; FRAME];
    while student.read_frame(&mut frame, Some(Duration::ZERO)).is_ok() {}
    let (ticks, _) = endpoint.mixer_ticks();
    let mover = student.id();
    let moved = std::thread::scope(|scope| {
        let run =
            scope.spawn(|| round(&mut [&mut teacher, &mut student, &mut peer], &[t, s, p], Duration::from_secs(1)));
        std::thread::sleep(Duration::from_millis(300));
        main.move_participant(mover, &breakout).unwrap();
        run.join().unwrap()
    });
    let (ticks_after, _) = endpoint.mixer_ticks();
    let mut frames = moved[1].len() / FRAME;
    while student.read_frame(&mut frame, Some(Duration::ZERO)).is_ok() {
        frames += 1;
    }
    assert!(frames as u64 >= ticks_after - ticks, "{frames} frames in {} ticks", ticks_after - ticks);
    assert!(hears(&moved[1], p) && !hears(&moved[1], t), "it hears the breakout room, not the class");
    assert!(hears(&moved[2], s), "and the breakout room hears it");
    let event = wait_event(&endpoint, WAIT, |e| match e {
        Event::ParticipantMoved { participant, from, to } if *participant == mover => Some((from.clone(), to.clone())),
        _ => None,
    });
    assert_eq!(event, ("class".to_string(), "breakout".to_string()));
    assert_eq!(student.participant().info().unwrap().conference, "breakout");
    assert!(main.participant(mover).is_err() && breakout.participant(mover).is_ok());

    // Everyone back.
    assert_eq!(breakout.move_all_to(&main).unwrap().len(), 2);
    let heard = round(&mut [&mut teacher, &mut student, &mut peer], &[t, s, p], Duration::from_millis(600));
    assert!(hears(&heard[1], t) && hears(&heard[1], p), "back in the class, with the peer too");
    assert!(breakout.participants().unwrap().is_empty());
}

#[test]
fn a_caller_moves_between_rooms_on_two_mixer_threads_but_not_to_another_rate() {
    let bridge = endpoint_with(2);
    let phones = endpoint_with(1);
    // The second room goes to the other thread, which has no conference yet.
    let main = bridge.create_conference("main").unwrap();
    let breakout = bridge.create_conference("side").unwrap();
    let wideband = bridge.create_conference_with_rate("wide", 16000).unwrap();
    let mut host = main.add_local().unwrap();
    let mut side = breakout.add_local().unwrap();
    let (mut caller, leg) = call_in(&phones, "caller", &bridge, "main");
    let heard = round(&mut [&mut caller, &mut host, &mut side], &[900.0, 500.0, 1300.0], Duration::from_millis(800));
    assert!(hears(&heard[0], 500.0) && !hears(&heard[0], 1300.0));

    main.move_participant(leg, &breakout).unwrap();
    let heard = round(&mut [&mut caller, &mut host, &mut side], &[900.0, 500.0, 1300.0], Duration::from_millis(800));
    assert!(hears(&heard[0], 1300.0) && !hears(&heard[0], 500.0), "the caller hears the other room");
    assert!(hears(&heard[2], 900.0) && !hears(&heard[1], 900.0), "which hears the caller");

    assert!(matches!(breakout.move_participant(leg, &wideband), Err(Error::InvalidArgument(_))));
    breakout.move_participant(leg, &main).unwrap();
    let heard = round(&mut [&mut caller, &mut host, &mut side], &[900.0, 500.0, 1300.0], Duration::from_millis(800));
    assert!(hears(&heard[0], 500.0) && !hears(&heard[0], 1300.0), "and back");
    let started = Instant::now();
    assert!(main.participant(leg).unwrap().info().unwrap().packets_sent > 0 && started.elapsed() < WAIT);
}
