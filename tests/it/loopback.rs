//! Two endpoints in one process calling each other over loopback.

use std::time::Duration;

use sipbridge::{Account, CodecKind, Endpoint, EndpointConfig, Event, LeaveReason, ParticipantKind, RegistrationState};

use crate::common::{assert_hear_each_other, endpoint, registration, rtp_range, wait_event, FRAME, RATE};

const WAIT: Duration = Duration::from_secs(5);

fn joined(kind: ParticipantKind) -> impl FnMut(&Event) -> Option<sipbridge::ParticipantId> {
    move |e| match e {
        Event::ParticipantJoined { participant, kind: k, .. } if *k == kind => Some(*participant),
        _ => None,
    }
}

fn left(e: &Event) -> Option<LeaveReason> {
    match e {
        Event::ParticipantLeft { reason, .. } => Some(*reason),
        _ => None,
    }
}

#[test]
fn dial_out_hear_each_other_and_hang_up() {
    let bridge = endpoint();
    let caller = endpoint();
    let bridge_room = bridge.create_conference("room1").unwrap();
    let at_bridge = bridge_room.add_local().unwrap();
    let out = caller.create_conference("out").unwrap();
    let at_caller = out.add_local().unwrap();

    let leg = out.dial(&bridge.room_uri("room1")).unwrap();
    wait_event(&caller, WAIT, |e| matches!(e, Event::Answered { .. }).then_some(()));
    let outbound = wait_event(&caller, WAIT, joined(ParticipantKind::Outbound));
    assert_eq!(outbound, leg.id());
    let inbound = wait_event(&bridge, WAIT, joined(ParticipantKind::Inbound));
    let info = bridge_room.participant(inbound).unwrap().info().unwrap();
    assert_eq!(info.kind, ParticipantKind::Inbound);
    assert!(info.remote.unwrap().contains("sip:out@"), "From carries the dialling conference");

    assert_hear_each_other(at_caller, at_bridge);

    let stats = out.participant(leg.id()).unwrap().info().unwrap();
    assert!(stats.packets_received > 50 && stats.packets_sent > 50, "{stats:?}");

    leg.hangup().unwrap();
    assert_eq!(wait_event(&caller, WAIT, left), LeaveReason::LocalHangup);
    assert_eq!(wait_event(&bridge, WAIT, left), LeaveReason::RemoteHangup);
    assert!(leg.info().is_err(), "a handle on a participant that left reports it");
    assert_eq!(bridge_room.participants().unwrap().len(), 1, "only the local participant is left");
}

#[test]
fn unknown_room_is_refused_when_rooms_are_not_created_on_demand() {
    let bridge = Endpoint::start(EndpointConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        sample_rate: RATE,
        rtp_ports: rtp_range(),
        create_rooms_on_demand: false,
        ..Default::default()
    })
    .unwrap();
    let caller = endpoint();
    let out = caller.create_conference("out").unwrap();
    out.dial(&bridge.room_uri("nosuchroom")).unwrap();
    let failure = wait_event(&caller, WAIT, |e| match e {
        Event::DialFailed { status, reason, .. } => Some((*status, reason.clone())),
        _ => None,
    });
    assert_eq!(failure, (404, "Not Found".to_string()));
    assert!(out.participants().unwrap().is_empty());
    assert!(bridge.conferences().is_empty());
}

#[test]
fn no_common_codec_is_refused_with_488() {
    let bridge = Endpoint::start(EndpointConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        sample_rate: RATE,
        rtp_ports: rtp_range(),
        codecs: vec![CodecKind::Pcma],
        ..Default::default()
    })
    .unwrap();
    let caller = Endpoint::start(EndpointConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        sample_rate: RATE,
        rtp_ports: rtp_range(),
        codecs: vec![CodecKind::Pcmu],
        ..Default::default()
    })
    .unwrap();
    let out = caller.create_conference("out").unwrap();
    out.dial(&bridge.room_uri("room")).unwrap();
    let status = wait_event(&caller, WAIT, |e| match e {
        Event::DialFailed { status, .. } => Some(*status),
        _ => None,
    });
    assert_eq!(status, 488);
}

#[test]
fn destroying_a_conference_hangs_up_its_legs() {
    let bridge = endpoint();
    let caller = endpoint();
    let out = caller.create_conference("out").unwrap();
    out.dial(&bridge.room_uri("doomed")).unwrap();
    wait_event(&bridge, WAIT, joined(ParticipantKind::Inbound));
    wait_event(&caller, WAIT, joined(ParticipantKind::Outbound));
    bridge.conference("doomed").unwrap().destroy().unwrap();
    assert_eq!(wait_event(&bridge, WAIT, left), LeaveReason::ConferenceDestroyed);
    assert_eq!(wait_event(&caller, WAIT, left), LeaveReason::RemoteHangup);
    assert!(bridge.conference("doomed").is_err());
    assert!(bridge.conferences().is_empty());
}

#[test]
fn stopping_an_endpoint_sends_bye_and_refuses_further_calls() {
    let bridge = endpoint();
    let caller = endpoint();
    let out = caller.create_conference("out").unwrap();
    out.dial(&bridge.room_uri("room")).unwrap();
    wait_event(&bridge, WAIT, joined(ParticipantKind::Inbound));
    caller.stop();
    assert_eq!(wait_event(&bridge, WAIT, left), LeaveReason::RemoteHangup);
    assert!(matches!(out.dial(&bridge.room_uri("room")), Err(sipbridge::Error::Stopped)));
    assert!(matches!(caller.create_conference("x"), Err(sipbridge::Error::Stopped)));
}

#[test]
fn cancel_while_ringing() {
    // A UAS that only rings: a bare socket that answers 180 and never 200.
    let phone = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    phone.set_read_timeout(Some(WAIT)).unwrap();
    let caller = endpoint();
    let out = caller.create_conference("out").unwrap();
    let leg = out.dial(&format!("sip:bob@{}", phone.local_addr().unwrap())).unwrap();
    let mut buf = [0u8; 4096];
    let (n, from) = phone.recv_from(&mut buf).unwrap();
    let invite = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(invite.starts_with("INVITE sip:bob@"));
    let ringing = response_to(&invite, "180 Ringing", ";tag=phone");
    phone.send_to(ringing.as_bytes(), from).unwrap();
    wait_event(&caller, WAIT, |e| matches!(e, Event::Ringing { .. }).then_some(()));
    leg.hangup().unwrap();
    let (n, _) = phone.recv_from(&mut buf).unwrap();
    let cancel = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(cancel.starts_with("CANCEL sip:bob@"), "{cancel}");
    phone.send_to(response_to(&cancel, "200 OK", ";tag=phone").as_bytes(), from).unwrap();
    phone.send_to(response_to(&invite, "487 Request Terminated", ";tag=phone").as_bytes(), from).unwrap();
    let status = wait_event(&caller, WAIT, |e| match e {
        Event::DialFailed { status, .. } => Some(*status),
        _ => None,
    });
    assert_eq!(status, 487);
    let (n, _) = phone.recv_from(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("ACK sip:bob@"), "the 487 is ACKed");
}

/// A response to `request` with its Via, From, To (plus `to_tag`), Call-ID and CSeq.
fn response_to(request: &str, status: &str, to_tag: &str) -> String {
    let mut out = format!("SIP/2.0 {status}\r\n");
    for line in request.split("\r\n").skip(1).take_while(|l| !l.is_empty()) {
        let name = line.split(':').next().unwrap_or("").to_ascii_lowercase();
        match name.as_str() {
            "via" | "from" | "call-id" | "cseq" => out.push_str(&format!("{line}\r\n")),
            "to" => out.push_str(&format!("{line}{to_tag}\r\n")),
            _ => {}
        }
    }
    out.push_str("Content-Length: 0\r\n\r\n");
    out
}

#[test]
fn rtp_ports_are_given_back_when_a_leg_ends() {
    // Room for exactly one RTP port on the bridge.
    let base = *rtp_range().start();
    let bridge = Endpoint::start(EndpointConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        sample_rate: RATE,
        rtp_ports: base..=base + 1,
        ..Default::default()
    })
    .unwrap();
    let caller = endpoint();
    let out = caller.create_conference("out").unwrap();
    let first = out.dial(&bridge.room_uri("room")).unwrap();
    wait_event(&bridge, WAIT, joined(ParticipantKind::Inbound));
    wait_event(&caller, WAIT, joined(ParticipantKind::Outbound));

    // While the port is in use, a second call is refused with 503.
    out.dial(&bridge.room_uri("room")).unwrap();
    let status = wait_event(&caller, WAIT, |e| match e {
        Event::DialFailed { status, .. } => Some(*status),
        _ => None,
    });
    assert_eq!(status, 503);

    first.hangup().unwrap();
    wait_event(&bridge, WAIT, left);
    // The leg is freed off the mixer thread within a tick or two.
    std::thread::sleep(Duration::from_millis(200));
    out.dial(&bridge.room_uri("room")).unwrap();
    wait_event(&bridge, WAIT, joined(ParticipantKind::Inbound));
}

#[test]
fn failed_dials_do_not_upset_the_mixer_s_room_bookkeeping() {
    // A dial that fails never reached the mixer; forgetting it must not make
    // the control side think the mixer has room it does not have.
    let refusing = Endpoint::start(EndpointConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        sample_rate: RATE,
        rtp_ports: rtp_range(),
        create_rooms_on_demand: false,
        ..Default::default()
    })
    .unwrap();
    let ep = endpoint();
    let room = ep.create_conference("busy").unwrap();
    // Everyone is mixed here, not only the loudest talkers.
    room.set_talker_policy(sipbridge::TalkerPolicy { max_talkers: 0, ..Default::default() }).unwrap();
    let mut first = room.add_local().unwrap();
    for _ in 0..3 {
        room.dial(&refusing.room_uri("nobody")).unwrap();
        wait_event(&ep, WAIT, |e| matches!(e, Event::DialFailed { .. }).then_some(()));
    }
    // Past the conference's first storage (8): everyone must still be mixed.
    let mut locals: Vec<_> = (0..9).map(|_| room.add_local().unwrap()).collect();
    let mut frame = vec![0i16; FRAME];
    let tone = vec![1000i16; FRAME];
    for _ in 0..5 {
        first.write_all(&tone, Some(WAIT)).unwrap();
        for l in locals.iter_mut() {
            l.write_all(&tone, Some(WAIT)).unwrap();
        }
    }
    let last = locals.last_mut().unwrap();
    last.read_frame(&mut frame, Some(WAIT)).expect("the last participant is in the mix");
    first.read_frame(&mut frame, Some(WAIT)).unwrap();
    // Once the frames carry everyone, it hears the nine others at 1000 each.
    while first.read_frame(&mut frame, Some(Duration::from_millis(50))).is_ok() && frame[0] == 0 {}
    assert_eq!(frame[0], 9000, "first hears the other nine");
}

#[test]
fn the_api_can_be_used_from_inside_an_async_runtime() {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let bridge = endpoint();
        let caller = endpoint();
        let out = caller.create_conference("out").unwrap();
        out.dial(&bridge.room_uri("room")).unwrap();
        wait_event(&bridge, WAIT, joined(ParticipantKind::Inbound));
        drop(caller);
        drop(bridge);
    });
}

#[test]
fn room_names_with_spaces_and_symbols_travel_escaped() {
    let bridge = endpoint();
    let caller = endpoint();
    let room = bridge.create_conference("math.room 7 <b>").unwrap();
    let out = caller.create_conference("caller.one; two").unwrap();
    out.dial(&bridge.room_uri("math.room 7 <b>")).unwrap();
    let conference = wait_event(&bridge, WAIT, |e| match e {
        Event::ParticipantJoined { conference, kind: ParticipantKind::Inbound, .. } => Some(conference.clone()),
        _ => None,
    });
    assert_eq!(conference, "math.room 7 <b>");
    assert_eq!(room.participants().unwrap().len(), 1);
    wait_event(&caller, WAIT, joined(ParticipantKind::Outbound));
}

#[test]
fn a_room_a_caller_created_ends_when_it_empties_but_an_app_room_stays() {
    let bridge = endpoint();
    let caller = endpoint();
    bridge.create_conference("kept").unwrap();
    let out = caller.create_conference("out").unwrap();
    let a = out.dial(&bridge.room_uri("made-by-caller")).unwrap();
    let b = out.dial(&bridge.room_uri("kept")).unwrap();
    for _ in 0..2 {
        wait_event(&bridge, WAIT, joined(ParticipantKind::Inbound));
    }
    assert_eq!(bridge.conferences(), vec!["kept".to_string(), "made-by-caller".to_string()]);
    a.hangup().unwrap();
    b.hangup().unwrap();
    let gone = wait_event(&bridge, WAIT, |e| match e {
        Event::ConferenceDestroyed { conference } => Some(conference.clone()),
        _ => None,
    });
    assert_eq!(gone, "made-by-caller");
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(bridge.conferences(), vec!["kept".to_string()]);
}

#[test]
fn digits_sent_to_a_participant_arrive_as_dtmf_events() {
    let bridge = endpoint();
    let caller = endpoint();
    let out = caller.create_conference("out").unwrap();
    let leg = out.dial(&bridge.room_uri("ivr")).unwrap();
    wait_event(&caller, WAIT, joined(ParticipantKind::Outbound));
    let inbound = wait_event(&bridge, WAIT, joined(ParticipantKind::Inbound));
    leg.send_dtmf("12#").unwrap();
    assert!(matches!(leg.send_dtmf("1x"), Err(sipbridge::Error::InvalidArgument(_))));
    let mut digits = String::new();
    while digits.len() < 3 {
        let (participant, digit, duration_ms) = wait_event(&bridge, WAIT, |e| match e {
            Event::Dtmf { participant, digit, duration_ms, .. } => Some((*participant, *digit, *duration_ms)),
            _ => None,
        });
        assert_eq!(participant, inbound);
        assert_eq!(duration_ms, 100);
        digits.push(digit);
    }
    assert_eq!(digits, "12#");
    // A local participant has no RTP to carry digits.
    let local = out.add_local().unwrap();
    assert!(matches!(local.participant().send_dtmf("1"), Err(sipbridge::Error::InvalidArgument(_))));
}

#[test]
fn a_leg_that_sends_no_rtp_times_out_and_is_hung_up() {
    let bridge = Endpoint::start(EndpointConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        sample_rate: RATE,
        rtp_ports: rtp_range(),
        media_timeout: Some(Duration::from_millis(300)),
        hang_up_on_media_timeout: true,
        ..Default::default()
    })
    .unwrap();
    // A bare SIP client whose SDP names a port that never sends.
    let phone = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    phone.set_read_timeout(Some(WAIT)).unwrap();
    let me = phone.local_addr().unwrap();
    let sdp = format!(
        "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio {} RTP/AVP 0\r\n",
        me.port() + 1
    );
    let invite = format!(
        "INVITE sip:quiet@{bridge} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bKquiet\r\nFrom: <sip:phone@{me}>;tag=p1\r\nTo: <sip:quiet@{bridge}>\r\nCall-ID: quiet-1\r\nCSeq: 1 INVITE\r\nContact: <sip:phone@{me}>\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
        sdp.len(),
        bridge = bridge.local_addr()
    );
    phone.send_to(invite.as_bytes(), bridge.local_addr()).unwrap();
    let mut buf = [0u8; 4096];
    let ok = loop {
        let (n, _) = phone.recv_from(&mut buf).unwrap();
        let text = String::from_utf8_lossy(&buf[..n]).to_string();
        if text.starts_with("SIP/2.0 200") {
            break text;
        }
    };
    let to = ok.split("\r\n").find(|l| l.starts_with("To: ")).unwrap().to_string();
    let ack = format!(
        "ACK sip:quiet@{bridge} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bKquietack\r\nFrom: <sip:phone@{me}>;tag=p1\r\n{to}\r\nCall-ID: quiet-1\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n",
        bridge = bridge.local_addr()
    );
    phone.send_to(ack.as_bytes(), bridge.local_addr()).unwrap();
    let participant = wait_event(&bridge, WAIT, joined(ParticipantKind::Inbound));
    let timed_out = wait_event(&bridge, WAIT, |e| match e {
        Event::MediaTimeout { participant, .. } => Some(*participant),
        _ => None,
    });
    assert_eq!(timed_out, participant);
    assert_eq!(wait_event(&bridge, WAIT, left), LeaveReason::Timeout);
    let bye = loop {
        let (n, _) = phone.recv_from(&mut buf).unwrap();
        let text = String::from_utf8_lossy(&buf[..n]).to_string();
        if !text.starts_with("SIP/2.0") {
            break text;
        }
    };
    assert!(bye.starts_with("BYE sip:phone@"), "{bye}");
}

/// One endpoint keeps an account registered with another's built-in
/// registrar: a wrong password is reported and the right one registers;
/// the registrar's dial to the account's AOR reaches the account's room
/// through the registered Contact; un-registering removes the binding.
#[test]
fn an_account_registered_with_another_endpoint_receives_its_calls() {
    let registrar = endpoint();
    registrar.add_user("alice", "secret").unwrap();
    let member = endpoint();
    let account = Account {
        aor: "sip:alice@sipbridge".into(),
        registrar: Some(format!("sip:127.0.0.1:{}", registrar.local_addr().port())),
        password: Some("wrong".into()),
        room: "desk".into(),
        ..Default::default()
    };
    let wrong = member.register_account(account.clone()).unwrap();
    let state = wait_event(&member, WAIT, registration(wrong));
    assert!(matches!(state, RegistrationState::Failed { status: 401, .. }), "{state:?}");
    member.unregister_account(wrong).unwrap();
    assert_eq!(wait_event(&member, WAIT, registration(wrong)), RegistrationState::Unregistered);

    let id = member.register_account(Account { password: Some("secret".into()), ..account }).unwrap();
    assert_eq!(wait_event(&member, WAIT, registration(id)), RegistrationState::Registered { expires: 3600 });
    let contact = format!("sip:alice@127.0.0.1:{}", member.local_addr().port());
    assert_eq!(registrar.registrations("alice"), [contact]);

    let room = registrar.create_conference("call").unwrap();
    let leg = room.dial("sip:alice@sipbridge").unwrap();
    let conference = wait_event(&member, WAIT, |e| match e {
        Event::ParticipantJoined { conference, kind: ParticipantKind::Inbound, .. } => Some(conference.clone()),
        _ => None,
    });
    assert_eq!(conference, "desk");
    leg.hangup().unwrap();
    assert_eq!(wait_event(&member, WAIT, left), LeaveReason::RemoteHangup);

    member.unregister_account(id).unwrap();
    assert_eq!(wait_event(&member, WAIT, registration(id)), RegistrationState::Unregistered);
    assert!(registrar.registrations("alice").is_empty());
    assert!(member.unregister_account(id).is_err());
}

/// A blind transfer between three endpoints: the bridge asks a phone
/// (REFER) to call a third endpoint instead; the phone's app accepts, the
/// phone dials it into its own room and reports progress (NOTIFY); once it
/// is answered, the bridge hangs up its leg. A refused REFER leaves the call.
#[test]
fn a_participant_is_transferred_by_refer() {
    let (bridge, phone, target) = (endpoint(), endpoint(), endpoint());
    let room = bridge.create_conference("room").unwrap();
    let desk = phone.create_conference("desk").unwrap();
    let leg = room.dial(&phone.room_uri("desk")).unwrap();
    wait_event(&bridge, WAIT, joined(ParticipantKind::Outbound));
    let at_phone = wait_event(&phone, WAIT, joined(ParticipantKind::Inbound));
    let requested = |e: &Event| match e {
        Event::TransferRequested { participant, target, .. } => Some((*participant, target.clone())),
        _ => None,
    };
    let progress = |e: &Event| match e {
        Event::TransferProgress { status, done, .. } => Some((*status, *done)),
        _ => None,
    };

    leg.transfer(&target.room_uri("elsewhere")).unwrap();
    let (asked, uri) = wait_event(&phone, WAIT, requested);
    assert_eq!((asked, uri.as_str()), (at_phone, target.room_uri("elsewhere").as_str()));
    desk.participant(asked).unwrap().reject_transfer().unwrap();
    assert_eq!(wait_event(&bridge, WAIT, progress), (603, true));
    assert!(leg.info().is_ok(), "a refused transfer leaves the call up");

    let sales = target.room_uri("sales");
    leg.transfer(&sales).unwrap();
    let (asked, uri) = wait_event(&phone, WAIT, requested);
    assert_eq!(uri, sales);
    desk.participant(asked).unwrap().accept_transfer().unwrap();
    wait_event(&target, WAIT, joined(ParticipantKind::Inbound));
    let mut seen = Vec::new();
    while seen.last().is_none_or(|(_, done)| !done) {
        seen.push(wait_event(&bridge, WAIT, progress));
    }
    assert_eq!(seen.first(), Some(&(100, false)), "{seen:?}");
    assert_eq!(seen.last(), Some(&(200, true)), "{seen:?}");
    assert_eq!(wait_event(&bridge, WAIT, left), LeaveReason::Transferred);
    assert_eq!(wait_event(&phone, WAIT, left), LeaveReason::RemoteHangup, "the bridge's leg hung up");
    assert_eq!(desk.participants().unwrap().len(), 1, "the phone's room now holds the transfer target");
}
