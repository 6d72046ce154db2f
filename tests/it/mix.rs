//! Three callers, three tones, one room: each hears the other two and not itself.

use std::time::Duration;

use sipbridge::{CodecKind, Endpoint, EndpointConfig, Event, ParticipantKind};

use crate::common::{endpoint, play_and_listen, rtp_range, tone_frame, tone_power, tone_power_at, wait_event, RATE};

const TONES: [f64; 3] = [440.0, 1000.0, 1780.0];

#[test]
fn three_callers_hear_the_other_two_and_the_app_hears_all() {
    three_callers(&[None, None, None], 8000);
}

/// An Opus, a G.722 and a PCMU caller in a 48 kHz room: the bridge decodes,
/// resamples, mixes and re-encodes each, and RTCP measures every leg.
#[test]
fn callers_with_opus_g722_and_pcmu_hear_each_other_in_a_wideband_room() {
    three_callers(&[Some(CodecKind::Opus), Some(CodecKind::G722), Some(CodecKind::Pcmu)], 48000);
}

/// Runs three callers (each with only `codecs[i]`, or the default list) into
/// a room on a bridge mixing at `bridge_rate`; the callers' own rooms mix at 8 kHz.
fn three_callers(codecs: &[Option<CodecKind>; 3], bridge_rate: u32) {
    let bridge = Endpoint::start(EndpointConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        sample_rate: bridge_rate,
        rtp_ports: rtp_range(),
        ..Default::default()
    })
    .unwrap();
    let room = bridge.create_conference("mix").unwrap();
    let mut mixed = room.mixed_audio().unwrap();
    let uri = bridge.room_uri("mix");

    let mut callers = Vec::new();
    for (i, codec) in codecs.iter().enumerate() {
        let caller = match codec {
            None => endpoint(),
            Some(codec) => Endpoint::start(EndpointConfig {
                listen: "127.0.0.1:0".parse().unwrap(),
                sample_rate: RATE,
                rtp_ports: rtp_range(),
                codecs: vec![*codec],
                ..Default::default()
            })
            .unwrap(),
        };
        let home = caller.create_conference(&format!("caller{i}")).unwrap();
        let local = home.add_local().unwrap();
        home.dial(&uri).unwrap();
        wait_event(&caller, Duration::from_secs(5), |e| {
            matches!(e, Event::ParticipantJoined { kind: ParticipantKind::Outbound, .. }).then_some(())
        });
        callers.push((caller, home, local));
    }
    assert_eq!(room.participants().unwrap().len(), 3);

    let threads: Vec<_> = callers
        .into_iter()
        .enumerate()
        .map(|(i, (caller, home, mut local))| {
            std::thread::spawn(move || {
                let heard = play_and_listen(&mut local, TONES[i], Duration::from_secs(2));
                drop((home, caller));
                heard
            })
        })
        .collect();
    // Meanwhile the app reads the conference mix.
    let mut mix = Vec::new();
    let mut frame = vec![0i16; mixed.frame_samples()];
    while mix.len() < bridge_rate as usize * 2 {
        mixed.read_frame(&mut frame, Some(Duration::from_secs(1))).unwrap();
        mix.extend_from_slice(&frame);
    }
    let heard: Vec<Vec<i16>> = threads.into_iter().map(|t| t.join().unwrap()).collect();

    for (i, h) in heard.iter().enumerate() {
        let tail = &h[h.len().saturating_sub(8000)..];
        let powers: Vec<f64> = TONES.iter().map(|f| tone_power(tail, *f)).collect();
        let others: Vec<f64> = (0..3).filter(|j| *j != i).map(|j| powers[j]).collect();
        for other in &others {
            assert!(*other > 1e5, "caller {i} hears the others loudly: {powers:?}");
            // Own tone at least 30 dB under the others (G.711 noise and mixing leave some).
            assert!(*other > 1000.0 * powers[i], "caller {i} does not hear itself: {powers:?}");
        }
    }
    let tail = &mix[mix.len() - bridge_rate as usize..];
    for f in TONES {
        assert!(tone_power_at(tail, f, bridge_rate) > 1e5, "the app's mix holds {f} Hz");
    }
    for (i, p) in room.participants().unwrap().iter().enumerate() {
        if let Some(codec) = codecs[i] {
            assert_eq!(p.codec, Some(codec));
        }
        assert!(p.packets_received > 50 && p.bytes_received > 0, "{p:?}");
        assert_eq!(p.loss_percent, 0.0, "{p:?}");
        assert!(p.mos.is_some_and(|m| m > 4.0), "{p:?}");
    }
}

/// Writes `frames` of steady noise from `talker` and returns the median
/// power of the last 50 frames `listener` heard (the median: a tick that
/// missed the talker's frame on a loaded machine gives a silent one).
fn noise_heard(
    talker: &mut sipbridge::LocalParticipant,
    listener: &mut sipbridge::LocalParticipant,
    seed: &mut u32,
    frames: usize,
) -> f64 {
    let frame = talker.frame_samples();
    let mut noise = vec![0i16; frame];
    let mut heard = vec![0i16; frame];
    let mut power = Vec::new();
    for _ in 0..frames {
        for s in noise.iter_mut() {
            // xorshift white noise at about -35 dBFS, a background level.
            *seed ^= *seed << 13;
            *seed ^= *seed >> 17;
            *seed ^= *seed << 5;
            *s = (*seed >> 16) as i16 / 32;
        }
        talker.write_all(&noise, Some(Duration::from_secs(1))).unwrap();
        if listener.read_frame(&mut heard, Some(Duration::from_millis(200))).is_ok() {
            power.push(heard.iter().map(|s| (*s as f64).powi(2)).sum::<f64>() / frame as f64);
        }
    }
    let mut last_second = power[power.len().saturating_sub(50)..].to_vec();
    last_second.sort_by(f64::total_cmp);
    last_second[last_second.len() / 2]
}

#[test]
fn noise_suppression_quiets_a_noisy_talker_for_the_others() {
    let ep = Endpoint::start(EndpointConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        rtp_ports: rtp_range(),
        ..Default::default()
    })
    .unwrap();
    let narrow = ep.create_conference_with_rate("narrow", 16000).unwrap();
    let err = narrow.set_noise_suppression(true).unwrap_err();
    assert!(matches!(err, sipbridge::Error::InvalidArgument(_)), "{err}");

    let room = ep.create_conference("room").unwrap();
    assert_eq!(room.sample_rate(), 48000);
    let mut talker = room.add_local().unwrap();
    let mut listener = room.add_local().unwrap();
    let mut seed = 0x2545_f491;
    let plain = noise_heard(&mut talker, &mut listener, &mut seed, 75);

    talker.participant().set_noise_suppression(true).unwrap();
    assert!(talker.participant().info().unwrap().noise_suppression);
    // Two seconds for the network to learn the noise, then one to measure.
    let cleaned = noise_heard(&mut talker, &mut listener, &mut seed, 150);
    let reduction_db = 10.0 * (plain / cleaned).log10();
    // RNNoise takes 5-10 dB off steady white noise (it is made for speech in
    // noise); without it nothing changes.
    assert!(reduction_db > 3.0, "noise only {reduction_db:.1} dB quieter ({plain:.0} -> {cleaned:.0})");

    // The conference's setting reaches everyone, and whoever joins later.
    room.set_noise_suppression(false).unwrap();
    assert!(!talker.participant().info().unwrap().noise_suppression);
    room.set_noise_suppression(true).unwrap();
    let late = room.add_local().unwrap();
    assert!(late.participant().info().unwrap().noise_suppression);
    assert!(listener.participant().info().unwrap().noise_suppression);
}

#[test]
fn talking_is_reported_and_only_the_loudest_talkers_are_mixed() {
    let ep = endpoint();
    let room = ep.create_conference("talk").unwrap();
    room.set_talker_policy(sipbridge::TalkerPolicy { max_talkers: 1, ..Default::default() }).unwrap();
    let bad = sipbridge::TalkerPolicy { start_dbov: -60.0, stop_dbov: -30.0, ..Default::default() };
    assert!(matches!(room.set_talker_policy(bad), Err(sipbridge::Error::InvalidArgument(_))));
    let mut loud = room.add_local().unwrap();
    let mut soft = room.add_local().unwrap();
    let mut listener = room.add_local().unwrap();
    let frame = loud.frame_samples();
    let (mut phase_loud, mut phase_soft) = (0, 0);
    let mut heard = Vec::new();
    // One second of both talking, then the loud one stops.
    for tick in 0..100 {
        let loud_frame = if tick < 50 { tone_frame(440.0, 8000.0, &mut phase_loud) } else { vec![0; frame] };
        loud.write_all(&loud_frame, Some(Duration::from_secs(1))).unwrap();
        soft.write_all(&tone_frame(1000.0, 2000.0, &mut phase_soft), Some(Duration::from_secs(1))).unwrap();
        listener.write_all(&vec![0; frame], Some(Duration::from_secs(1))).unwrap();
        let mut buf = vec![0i16; frame];
        listener.read_frame(&mut buf, Some(Duration::from_secs(1))).unwrap();
        let mut drain = vec![0i16; frame];
        loud.read_frame(&mut drain, Some(Duration::from_secs(1))).unwrap();
        soft.read_frame(&mut drain, Some(Duration::from_secs(1))).unwrap();
        heard.push(buf);
    }
    // While both talk only the louder is mixed; once it stops, the other is.
    let both: Vec<i16> = heard[20..45].concat();
    let after: Vec<i16> = heard[80..].concat();
    assert!(tone_power(&both, 440.0) > 1e6 && tone_power(&both, 1000.0) < 1e3, "first second");
    assert!(tone_power(&after, 1000.0) > 1e5 && tone_power(&after, 440.0) < 1e3, "after");
    // Events: the loud participant started and stopped talking.
    let loud_id = loud.id();
    let mut changes = Vec::new();
    while let Some(event) = ep.try_next_event() {
        if let Event::Talking { participant, talking, .. } = event {
            if participant == loud_id {
                changes.push(talking);
            }
        }
    }
    assert_eq!(changes, vec![true, false]);
    assert!(!loud.participant().info().unwrap().talking);
    assert!(soft.participant().info().unwrap().talking);
}
