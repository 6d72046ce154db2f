//! Conference policy end to end: callers dial in over real SIP and RTP,
//! type PINs as RFC 4733 telephone-events, and the tests listen to what
//! each side hears.

use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use sipbridge::{
    Admission, CodecKind, ConferencePolicy, Endpoint, EndpointConfig, Error, Event, LeaveReason, LocalParticipant,
    ParticipantId, ParticipantKind, Playback,
};

use crate::common::{assert_hear_each_other, play_and_listen, tone_power, wait_event, RATE};

const WAIT: Duration = Duration::from_secs(5);
/// Whole periods in the half second the test's hold music lasts, so that
/// its loops add up in phase.
const HOLD_HZ: f64 = 400.0;

/// An endpoint whose SIP and RTP ports lie in 43400-43999, which these
/// tests have to themselves: RTP in the first 20 ports of a block of 24,
/// SIP on the 21st.
fn endpoint() -> Endpoint {
    endpoint_with(ConferencePolicy::default())
}

/// An endpoint whose rooms created by callers get `room_policy`.
fn endpoint_with(room_policy: ConferencePolicy) -> Endpoint {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let base = 43400 + NEXT.fetch_add(1, Ordering::Relaxed) % 25 * 24;
    Endpoint::start(EndpointConfig {
        listen: format!("127.0.0.1:{}", base + 20).parse().unwrap(),
        sample_rate: RATE,
        rtp_ports: base..=base + 19,
        room_policy,
        ..Default::default()
    })
    .expect("endpoint starts")
}

fn joined_inbound(e: &Event) -> Option<ParticipantId> {
    match e {
        Event::ParticipantJoined { participant, kind: ParticipantKind::Inbound, .. } => Some(*participant),
        _ => None,
    }
}

/// Waits until the dial `leg` is answered: digits can be sent from then on.
fn answered(endpoint: &Endpoint, leg: ParticipantId) {
    wait_event(endpoint, WAIT, |e| {
        matches!(e, Event::Answered { participant, .. } if *participant == leg).then_some(())
    });
}

fn left(who: ParticipantId) -> impl FnMut(&Event) -> Option<LeaveReason> {
    move |e| match e {
        Event::ParticipantLeft { participant, reason, .. } if *participant == who => Some(*reason),
        _ => None,
    }
}

/// `a` plays `freq_a` and `b` `freq_b` at once for `duration`; what each
/// heard in the last second.
fn exchange(
    a: &mut LocalParticipant,
    freq_a: f64,
    b: &mut LocalParticipant,
    freq_b: f64,
    duration: Duration,
) -> (Vec<i16>, Vec<i16>) {
    let tail = |v: Vec<i16>| v[v.len().saturating_sub(RATE as usize)..].to_vec();
    std::thread::scope(|s| {
        let other = s.spawn(|| play_and_listen(b, freq_b, duration));
        let heard_by_a = play_and_listen(a, freq_a, duration);
        (tail(heard_by_a), tail(other.join().unwrap()))
    })
}

/// Heard, loudly, as in `assert_hear_each_other`.
fn hears(samples: &[i16], freq: f64) -> bool {
    tone_power(samples, freq) > 1e5
}

/// Not heard: far under what hearing it gives.
fn silent_at(samples: &[i16], freq: f64) -> bool {
    tone_power(samples, freq) < 1e2
}

#[test]
fn a_caller_in_a_pin_room_is_kept_apart_until_its_pin_is_right() {
    let bridge = endpoint();
    let caller = endpoint();
    let room = bridge.create_conference("pin").unwrap();
    room.set_policy(ConferencePolicy { pin: Some("1234".into()), ..Default::default() }).unwrap();
    let mut at_bridge = room.add_local().unwrap();
    let out = caller.create_conference("out").unwrap();
    let mut at_caller = out.add_local().unwrap();
    let leg = out.dial(&bridge.room_uri("pin")).unwrap();
    answered(&caller, leg.id());
    let inbound = wait_event(&bridge, WAIT, joined_inbound);
    assert_eq!(room.participant(inbound).unwrap().info().unwrap().admission, Admission::EnteringPin);

    let (by_caller, by_bridge) = exchange(&mut at_caller, 500.0, &mut at_bridge, 1300.0, Duration::from_millis(1500));
    assert!(silent_at(&by_caller, 1300.0), "the caller heard the room while typing its PIN");
    assert!(silent_at(&by_bridge, 500.0), "the room heard the caller while it typed its PIN");

    leg.send_dtmf("99#").unwrap();
    let tries_left = wait_event(&bridge, WAIT, |e| match e {
        Event::PinRejected { participant, tries_left, .. } if *participant == inbound => Some(*tries_left),
        Event::Dtmf { .. } => panic!("a PIN's digits are not reported"),
        _ => None,
    });
    assert_eq!(tries_left, 2);
    leg.send_dtmf("1234#").unwrap();
    let moderator = wait_event(&bridge, WAIT, |e| match e {
        Event::PinAccepted { participant, moderator, .. } if *participant == inbound => Some(*moderator),
        _ => None,
    });
    assert!(!moderator);
    assert_eq!(room.participant(inbound).unwrap().info().unwrap().admission, Admission::Admitted);
    assert_hear_each_other(at_caller, at_bridge);
}

#[test]
fn three_wrong_pins_hang_the_caller_up() {
    let bridge = endpoint();
    let caller = endpoint();
    let room = bridge.create_conference("strict").unwrap();
    room.set_policy(ConferencePolicy { pin: Some("1234".into()), ..Default::default() }).unwrap();
    let out = caller.create_conference("out").unwrap();
    let leg = out.dial(&bridge.room_uri("strict")).unwrap();
    answered(&caller, leg.id());
    let inbound = wait_event(&bridge, WAIT, joined_inbound);
    leg.send_dtmf("1#2#3#").unwrap();
    let mut tries = Vec::new();
    let reason = wait_event(&bridge, WAIT, |e| match e {
        Event::PinRejected { tries_left, .. } => {
            tries.push(*tries_left);
            None
        }
        Event::ParticipantLeft { participant, reason, .. } if *participant == inbound => Some(*reason),
        _ => None,
    });
    assert_eq!((tries, reason), (vec![2, 1, 0], LeaveReason::PinRejected));
    assert_eq!(wait_event(&caller, WAIT, left(leg.id())), LeaveReason::RemoteHangup);
}

#[test]
fn a_full_room_refuses_with_486_and_a_locked_one_with_403() {
    let bridge = endpoint();
    let caller = endpoint();
    let room = bridge.create_conference("small").unwrap();
    room.set_policy(ConferencePolicy { max_participants: Some(1), ..Default::default() }).unwrap();
    let _first = room.add_local().unwrap();
    assert!(matches!(room.add_local(), Err(Error::Full(_))));
    let out = caller.create_conference("out").unwrap();
    let dial_status = |uri: &str| {
        let leg = out.dial(uri).unwrap();
        wait_event(&caller, WAIT, |e| match e {
            Event::DialFailed { participant, status, .. } if *participant == leg.id() => Some(*status),
            _ => None,
        })
    };
    assert_eq!(dial_status(&bridge.room_uri("small")), 486);

    room.set_policy(ConferencePolicy::default()).unwrap();
    room.lock().unwrap();
    assert!(wait_event(&bridge, WAIT, |e| match e {
        Event::Locked { locked, .. } => Some(*locked),
        _ => None,
    }));
    assert!(room.policy().unwrap().locked);
    assert_eq!(dial_status(&bridge.room_uri("small")), 403);
    assert!(matches!(room.add_local(), Err(Error::Locked(_))));
    room.unlock().unwrap();
    room.add_local().unwrap();
}

#[test]
fn callers_wait_on_hold_for_a_moderator_and_the_conference_ends_when_it_leaves() {
    let bridge = endpoint();
    let caller = endpoint();
    let room = bridge.create_conference("class").unwrap();
    // Half a second of hold music, so that it loops while they wait.
    let hold_music = Playback::tone(&[HOLD_HZ as f32], Duration::from_millis(500), -20.0).unwrap();
    room.set_policy(ConferencePolicy {
        moderator_pin: Some("99".into()),
        hold_music: Some(hold_music),
        wait_for_moderator: true,
        end_when_moderator_leaves: true,
        ..Default::default()
    })
    .unwrap();
    let (mut a, mut b) = (room.add_local().unwrap(), room.add_local().unwrap());
    assert_eq!(a.participant().info().unwrap().admission, Admission::WaitingForModerator);
    let (by_a, by_b) = exchange(&mut a, 1300.0, &mut b, 700.0, Duration::from_millis(1200));
    for (heard, other) in [(&by_a, 700.0), (&by_b, 1300.0)] {
        assert!(hears(heard, HOLD_HZ), "hold music, all along: {}", tone_power(heard, HOLD_HZ));
        assert!(silent_at(heard, other), "heard another participant while waiting");
    }

    let out = caller.create_conference("out").unwrap();
    let mut teacher = out.add_local().unwrap();
    let leg = out.dial(&bridge.room_uri("class")).unwrap();
    answered(&caller, leg.id());
    let inbound = wait_event(&bridge, WAIT, joined_inbound);
    leg.send_dtmf("99#").unwrap();
    let moderator = wait_event(&bridge, WAIT, |e| match e {
        Event::ModeratorJoined { participant, .. } => Some(*participant),
        _ => None,
    });
    assert_eq!(moderator, inbound);
    assert!(room.participant(inbound).unwrap().info().unwrap().moderator);
    assert_eq!(a.participant().info().unwrap().admission, Admission::Admitted);
    let by_teacher = std::thread::scope(|s| {
        s.spawn(|| play_and_listen(&mut b, 700.0, Duration::from_millis(1500)));
        let by_a = s.spawn(|| play_and_listen(&mut a, 1300.0, Duration::from_millis(1500)));
        let by_teacher = play_and_listen(&mut teacher, 500.0, Duration::from_millis(1500));
        let by_a = by_a.join().unwrap();
        let by_a = &by_a[by_a.len() - RATE as usize..];
        assert!(hears(by_a, 700.0) && hears(by_a, 500.0), "a hears b and the moderator once it is there");
        // The hold music (amplitude 3,277) is gone: what is left at its
        // frequency is the other tones' leakage, which concealment of a late
        // packet on a loaded machine spreads past `silent_at`'s bound.
        let hold = tone_power(by_a, HOLD_HZ);
        assert!(hold < 1e4, "and no more hold music: {hold}");
        by_teacher
    });
    let by_teacher = &by_teacher[by_teacher.len() - RATE as usize..];
    assert!(hears(by_teacher, 1300.0) && hears(by_teacher, 700.0), "the moderator hears both");

    leg.hangup().unwrap();
    let mut reasons = Vec::new();
    wait_event(&bridge, WAIT, |e| match e {
        Event::ParticipantLeft { reason, .. } => {
            reasons.push(*reason);
            None
        }
        Event::ConferenceEnded { .. } => Some(()),
        _ => None,
    });
    wait_event(&bridge, WAIT, |e| match e {
        Event::ParticipantLeft { reason, .. } => {
            reasons.push(*reason);
            None
        }
        Event::ConferenceEmpty { conference } if conference == "class" => Some(()),
        _ => None,
    });
    reasons.sort_by_key(|r| *r == LeaveReason::RemoteHangup);
    assert_eq!(reasons, [LeaveReason::ConferenceEnded, LeaveReason::ConferenceEnded, LeaveReason::RemoteHangup]);
}

#[test]
fn mute_all_spares_moderators_and_a_deaf_caller_hears_silence_but_is_heard() {
    let bridge = endpoint();
    let caller = endpoint();
    let room = bridge.create_conference("meeting").unwrap();
    let (mut host, mut guest) = (room.add_local().unwrap(), room.add_local().unwrap());
    host.participant().set_moderator(true).unwrap();
    let out = caller.create_conference("out").unwrap();
    let mut far = out.add_local().unwrap();
    out.dial(&bridge.room_uri("meeting")).unwrap();
    let inbound = wait_event(&bridge, WAIT, joined_inbound);

    room.mute_all(true).unwrap();
    let mut muted = Vec::new();
    while muted.len() < 2 {
        muted.push(wait_event(&bridge, WAIT, |e| match e {
            Event::Muted { participant, muted: true, .. } => Some(*participant),
            _ => None,
        }));
    }
    muted.sort();
    assert_eq!(muted, [guest.id(), inbound]);
    let by_far = std::thread::scope(|s| {
        s.spawn(|| play_and_listen(&mut guest, 1300.0, Duration::from_millis(1500)));
        s.spawn(|| play_and_listen(&mut host, 700.0, Duration::from_millis(1500)));
        play_and_listen(&mut far, 500.0, Duration::from_millis(1500))
    });
    let by_far = &by_far[by_far.len() - RATE as usize..];
    assert!(hears(by_far, 700.0) && silent_at(by_far, 1300.0), "the moderator is heard, the muted guest not");

    room.mute_all(false).unwrap();
    let leg = room.participant(inbound).unwrap();
    leg.set_deaf(true).unwrap();
    assert!(leg.info().unwrap().deaf);
    let (by_far, by_host) = std::thread::scope(|s| {
        s.spawn(|| play_and_listen(&mut guest, 1300.0, Duration::from_millis(1500)));
        let by_host = s.spawn(|| play_and_listen(&mut host, 700.0, Duration::from_millis(1500)));
        let by_far = play_and_listen(&mut far, 500.0, Duration::from_millis(1500));
        (by_far, by_host.join().unwrap())
    });
    let (by_far, by_host) = (&by_far[by_far.len() - RATE as usize..], &by_host[by_host.len() - RATE as usize..]);
    assert!(silent_at(by_far, 700.0) && silent_at(by_far, 1300.0), "the deaf caller hears nothing");
    assert!(hears(by_host, 500.0) && hears(by_host, 1300.0), "and is still heard");

    leg.kick().unwrap();
    assert_eq!(wait_event(&bridge, WAIT, left(inbound)), LeaveReason::Kicked);
}

/// The endpoint's room policy applies to a room a caller's INVITE creates,
/// so its very first caller types the PIN; a room the app creates is open.
#[test]
fn a_room_a_caller_creates_takes_the_endpoint_s_room_policy() {
    let bridge = endpoint_with(ConferencePolicy { pin: Some("77".into()), ..Default::default() });
    let caller = endpoint();
    let out = caller.create_conference("out").unwrap();
    let leg = out.dial(&bridge.room_uri("made-by-caller")).unwrap();
    answered(&caller, leg.id());
    let inbound = wait_event(&bridge, WAIT, joined_inbound);
    let room = bridge.conference("made-by-caller").unwrap();
    assert_eq!(room.policy().unwrap().pin.as_deref(), Some("77"));
    assert_eq!(room.participant(inbound).unwrap().info().unwrap().admission, Admission::EnteringPin);
    leg.send_dtmf("77#").unwrap();
    wait_event(&bridge, WAIT, |e| {
        matches!(e, Event::PinAccepted { participant, .. } if *participant == inbound).then_some(())
    });
    assert_eq!(bridge.create_conference("by-the-app").unwrap().policy().unwrap().pin, None);
}

/// A conference's codec preference overrides the endpoint's: a caller
/// offering Opus first gets PCMU in a room that prefers it, and the room's
/// own dials offer only its codecs.
#[test]
fn a_room_s_codec_preference_picks_its_calls_codec() {
    let (bridge, caller) = (endpoint(), endpoint());
    let room = bridge.create_conference("narrowband").unwrap();
    let codecs = Some(vec![CodecKind::Pcmu, CodecKind::G722]);
    room.set_policy(ConferencePolicy { codecs, ..Default::default() }).unwrap();
    let out = caller.create_conference("out").unwrap();
    let leg = out.dial(&bridge.room_uri("narrowband")).unwrap();
    answered(&caller, leg.id());
    let inbound = wait_event(&bridge, WAIT, joined_inbound);
    assert_eq!(room.participant(inbound).unwrap().info().unwrap().codec, Some(CodecKind::Pcmu));
    assert_eq!(leg.info().unwrap().codec, Some(CodecKind::Pcmu));
    let dialled = room.dial(&caller.room_uri("back")).unwrap();
    answered(&bridge, dialled.id());
    // The callee picks from the room's offer, by its own preference: G.722, not Opus.
    assert_eq!(dialled.info().unwrap().codec, Some(CodecKind::G722), "its dials offer only its codecs");
    assert!(room.set_policy(ConferencePolicy { codecs: Some(Vec::new()), ..Default::default() }).is_err());
}

/// A move is a leave and a join for the rules: a moderator moved in lets
/// waiting participants in, moved out it ends a room that ends with its
/// moderator, and the room it emptied is reported empty. Joining muted is
/// reported too.
#[test]
fn a_moderator_moved_between_rooms_brings_their_rules_along() {
    let bridge = endpoint();
    let (lobby, class) = (bridge.create_conference("lobby").unwrap(), bridge.create_conference("class").unwrap());
    let breakout = bridge.create_conference("breakout").unwrap();
    class
        .set_policy(ConferencePolicy {
            wait_for_moderator: true,
            end_when_moderator_leaves: true,
            mute_on_join: true,
            ..Default::default()
        })
        .unwrap();
    let student = class.add_local().unwrap();
    assert_eq!(student.participant().info().unwrap().admission, Admission::WaitingForModerator);
    let muted = |e: &Event| match e {
        Event::Muted { participant, muted: true, .. } => Some(*participant),
        _ => None,
    };
    assert_eq!(wait_event(&bridge, WAIT, muted), student.id(), "joining muted is reported");
    let teacher = lobby.add_local().unwrap();
    teacher.participant().set_moderator(true).unwrap();

    lobby.move_participant(teacher.id(), &class).unwrap();
    let arrived = wait_event(&bridge, WAIT, |e| match e {
        Event::ModeratorJoined { conference, participant } if conference == "class" => Some(*participant),
        _ => None,
    });
    assert_eq!(arrived, teacher.id());
    wait_event(&bridge, WAIT, |e| {
        matches!(e, Event::ConferenceEmpty { conference } if conference == "lobby").then_some(())
    });
    assert_eq!(student.participant().info().unwrap().admission, Admission::Admitted, "the moderator let it in");

    class.move_participant(teacher.id(), &breakout).unwrap();
    wait_event(&bridge, WAIT, |e| {
        matches!(e, Event::ConferenceEnded { conference } if conference == "class").then_some(())
    });
    assert_eq!(wait_event(&bridge, WAIT, left(student.id())), LeaveReason::ConferenceEnded);
    let in_breakout: Vec<_> = breakout.participants().unwrap().iter().map(|p| p.id).collect();
    assert_eq!(in_breakout, [teacher.id()]);
}

/// Full-room announcement's tone: whole periods in its 2.5 s.
const FULL_HZ: f64 = 600.0;

/// A full room with an announcement answers the next caller, which hears
/// it apart from the room and is hung up; it takes no seat meanwhile.
#[test]
fn a_full_room_announces_itself_to_the_caller_it_turns_away() {
    let bridge = endpoint();
    let caller = endpoint();
    let room = bridge.create_conference("small").unwrap();
    let full = Playback::tone(&[FULL_HZ as f32], Duration::from_millis(2500), -16.0).unwrap();
    room.set_policy(ConferencePolicy { max_participants: Some(1), full_prompt: Some(full), ..Default::default() })
        .unwrap();
    let mut member = room.add_local().unwrap();
    let out = caller.create_conference("out").unwrap();
    let mut far = out.add_local().unwrap();
    let leg = out.dial(&bridge.room_uri("small")).unwrap();
    answered(&caller, leg.id());
    let turned_away = wait_event(&bridge, WAIT, joined_inbound);
    assert_eq!(room.participant(turned_away).unwrap().info().unwrap().admission, Admission::TurnedAway);

    let (by_member, by_far) = exchange(&mut member, 1300.0, &mut far, 500.0, Duration::from_millis(1000));
    assert!(hears(&by_far, FULL_HZ), "the caller hears the announcement: {}", tone_power(&by_far, FULL_HZ));
    assert!(silent_at(&by_far, 1300.0), "and not the room");
    assert!(silent_at(&by_member, 500.0) && silent_at(&by_member, FULL_HZ), "the room hears neither");
    // The caller being turned away holds no seat.
    member.hangup().unwrap();
    let newcomer = room.add_local().expect("the seat the member left is free");

    assert_eq!(wait_event(&bridge, WAIT, left(turned_away)), LeaveReason::RoomFull);
    assert_eq!(wait_event(&caller, WAIT, left(leg.id())), LeaveReason::RemoteHangup);
    assert!(matches!(room.add_local(), Err(Error::Full(_))), "the newcomer fills the room");
    newcomer.hangup().unwrap();
}
