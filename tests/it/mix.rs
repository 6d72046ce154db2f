//! Three callers, three tones, one room: each hears the other two and not itself.

use std::time::Duration;

use sipbridge::{Event, ParticipantKind, FRAME_SAMPLES};

use crate::common::{endpoint, play_and_listen, tone_power, wait_event};

const TONES: [f64; 3] = [440.0, 1000.0, 1780.0];

#[test]
fn three_callers_hear_the_other_two_and_the_app_hears_all() {
    let bridge = endpoint();
    let room = bridge.create_conference("mix").unwrap();
    let mut mixed = room.mixed_audio().unwrap();
    let uri = bridge.room_uri("mix");

    let mut callers = Vec::new();
    for i in 0..3 {
        let caller = endpoint();
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
    let mut frame = vec![0i16; FRAME_SAMPLES];
    while mix.len() < 8000 * 2 {
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
    let tail = &mix[mix.len() - 8000..];
    for f in TONES {
        assert!(tone_power(tail, f) > 1e5, "the app's mix holds {f} Hz");
    }
}
