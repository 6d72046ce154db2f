//! Two user agents on a simulated clock and a simulated lossy network, in the
//! manner of str0m's `progress()` and quinn-proto's `Pair`: no sockets, no sleeps.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::*;

const LATENCY: Duration = Duration::from_millis(10);

struct Agent {
    ua: UserAgent,
    addr: SocketAddr,
    events: Vec<UaEvent>,
}

struct InFlight {
    at: Instant,
    from: SocketAddr,
    to: Peer,
    data: Vec<u8>,
}

/// The network decides which datagrams get lost: `drop(text)` sees each one.
struct Pair {
    now: Instant,
    a: Agent,
    b: Agent,
    flight: Vec<InFlight>,
    drop: Box<dyn FnMut(&str) -> bool>,
    /// Every datagram sent, as text, in order.
    log: Vec<String>,
    /// What `dial` calls over.
    transport: Transport,
    /// When set, stands in for A (a scripted phone): it is given what is
    /// sent to A, and what it returns goes back to B.
    phone: Option<Phone>,
}

/// A scripted peer: what it is sent, as text, and its answer, if any.
type Phone = Box<dyn FnMut(&str) -> Option<String>>;

fn agent(port: u16) -> Agent {
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    Agent {
        ua: UserAgent::new(UaConfig { advertised: addr, tls_port: None, timers: TimerConfig::default() }),
        addr,
        events: Vec::new(),
    }
}

impl Pair {
    fn new() -> Self {
        Self {
            now: Instant::now(),
            a: agent(5061),
            b: agent(5062),
            flight: Vec::new(),
            drop: Box::new(|_| false),
            log: Vec::new(),
            transport: Transport::Udp,
            phone: None,
        }
    }

    fn agent(&mut self, addr: SocketAddr) -> Option<&mut Agent> {
        if addr == self.a.addr {
            Some(&mut self.a)
        } else if addr == self.b.addr {
            Some(&mut self.b)
        } else {
            None
        }
    }

    /// Moves transmits into the network and events into the agents' logs.
    fn collect(&mut self) {
        for side in [true, false] {
            let agent = if side { &mut self.a } else { &mut self.b };
            let from = agent.addr;
            let mut sent = Vec::new();
            while let Some(t) = agent.ua.poll_transmit() {
                sent.push(t);
            }
            while let Some(e) = agent.ua.poll_event() {
                agent.events.push(e);
            }
            for t in sent {
                let text = String::from_utf8_lossy(&t.data).to_string();
                self.log.push(text.clone());
                if !(self.drop)(&text) {
                    self.flight.push(InFlight { at: self.now + LATENCY, from, to: t.destination, data: t.data });
                }
            }
        }
    }

    /// Advances to the next thing that happens: a delivery or a timer.
    fn step(&mut self) -> bool {
        self.collect();
        let next_delivery = self.flight.iter().map(|f| f.at).min();
        let next_timer = [self.a.ua.poll_timeout(), self.b.ua.poll_timeout()].into_iter().flatten().min();
        let Some(at) = [next_delivery, next_timer].into_iter().flatten().min() else { return false };
        self.now = self.now.max(at);
        let now = self.now;
        let (due, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut self.flight).into_iter().partition(|f| f.at <= now);
        self.flight = rest;
        let mut replies = Vec::new();
        for f in due {
            if let (true, Some(phone)) = (f.to.addr == self.a.addr, self.phone.as_mut()) {
                replies.extend(phone(&String::from_utf8_lossy(&f.data)));
                continue;
            }
            if let Some(agent) = self.agent(f.to.addr) {
                agent.ua.handle_message(now, Peer { addr: f.from, ..f.to }, &f.data);
            }
        }
        for reply in replies {
            self.send_from_a(&reply);
        }
        self.a.ua.handle_timeout(now);
        self.b.ua.handle_timeout(now);
        self.collect();
        true
    }

    /// Puts a message from A to B on the network, where it may be lost.
    fn send_from_a(&mut self, text: &str) {
        self.log.push(text.to_string());
        if !(self.drop)(text) {
            let to = Peer::udp(self.b.addr);
            self.flight.push(InFlight { at: self.now + LATENCY, from: self.a.addr, to, data: text.into() });
        }
    }

    /// Runs for `duration` of simulated time.
    fn run_for(&mut self, duration: Duration) {
        let end = self.now + duration;
        while self.now < end {
            let next = [self.flight.iter().map(|f| f.at).min(), self.a.ua.poll_timeout(), self.b.ua.poll_timeout()]
                .into_iter()
                .flatten()
                .min();
            match next {
                Some(at) if at <= end => {
                    self.step();
                }
                _ => {
                    self.now = end;
                    self.collect();
                }
            }
        }
    }

    fn dial(&mut self) -> CallKey {
        self.dial_with(None)
    }

    /// Dials from A with `credentials` to answer challenges with.
    fn dial_with(&mut self, credentials: Option<Credentials>) -> CallKey {
        let target = format!("sip:room@{}", self.b.addr);
        let destination = Peer { transport: self.transport, addr: self.b.addr };
        let call = self.a.ua.dial(&target, destination, "alice", b"v=0\r\n".to_vec(), credentials, self.now).unwrap();
        self.collect();
        call
    }

    /// Answers every re-offer either side has been made and not answered yet.
    fn answer_reoffers(&mut self) {
        let now = self.now;
        for agent in [&mut self.a, &mut self.b] {
            let offers: Vec<CallKey> = agent
                .events
                .iter()
                .filter_map(|e| match e {
                    UaEvent::Reoffer { call, .. } => Some(*call),
                    _ => None,
                })
                .collect();
            for call in offers {
                let _ = agent.ua.answer_reoffer(call, b"v=0\r\na=sendrecv\r\n".to_vec(), now);
            }
        }
        self.collect();
    }

    fn incoming(&self) -> Option<CallKey> {
        self.b.events.iter().find_map(|e| match e {
            UaEvent::IncomingCall { call, .. } => Some(*call),
            _ => None,
        })
    }

    fn count(&self, prefix: &str) -> usize {
        self.log.iter().filter(|m| m.starts_with(prefix)).count()
    }

    /// Sends raw bytes to B as if from A.
    fn inject(&mut self, data: &str) {
        let from = self.a.addr;
        self.b.ua.handle_message(self.now, Peer::udp(from), data.as_bytes());
        self.collect();
    }

    fn responses_to_a(&self) -> Vec<&String> {
        self.log.iter().filter(|m| m.starts_with("SIP/2.0")).collect()
    }
}

/// Answers every incoming call on B at once (ringing first).
fn answer_all(pair: &mut Pair) {
    let calls: Vec<CallKey> = pair
        .b
        .events
        .iter()
        .filter_map(|e| match e {
            UaEvent::IncomingCall { call, .. } => Some(*call),
            _ => None,
        })
        .collect();
    for call in calls {
        let now = pair.now;
        let _ = pair.b.ua.ring(call, now);
        let _ = pair.b.ua.answer(call, b"v=0\r\n".to_vec(), now);
    }
    pair.collect();
}

/// Dials from A, answers on B, and lets the 200 and ACK cross.
fn established(p: &mut Pair) -> CallKey {
    let call = p.dial();
    p.run_for(Duration::from_millis(50));
    answer_all(p);
    p.run_for(Duration::from_millis(50));
    call
}

#[test]
fn call_setup_and_teardown() {
    let mut p = Pair::new();
    let call = p.dial();
    p.run_for(Duration::from_millis(50));
    assert!(p.incoming().is_some());
    assert_eq!(p.count("SIP/2.0 100"), 1);
    answer_all(&mut p);
    p.run_for(Duration::from_millis(50));
    assert!(p.a.events.contains(&UaEvent::Ringing { call }));
    assert!(p.a.events.iter().any(|e| matches!(e, UaEvent::Answered { call: c, .. } if *c == call)));
    assert_eq!(p.count("ACK "), 1);
    // No 2xx retransmission after the ACK.
    p.run_for(Duration::from_secs(5));
    assert_eq!(p.count("SIP/2.0 200"), 1);

    p.a.ua.hangup(call, p.now).unwrap();
    p.collect();
    p.run_for(Duration::from_millis(50));
    let b_call = p.incoming().unwrap();
    assert!(p.b.events.contains(&UaEvent::Ended { call: b_call, reason: EndReason::RemoteHangup }));
    assert!(p.a.events.contains(&UaEvent::Ended { call, reason: EndReason::LocalHangup }));
    assert_eq!(p.count("SIP/2.0 200"), 2, "BYE answered");
    assert_eq!(p.a.ua.call_count() + p.b.ua.call_count(), 0);
    // Every transaction ends once its timers run out.
    p.run_for(Duration::from_secs(40));
    assert_eq!(p.a.ua.transaction_count() + p.b.ua.transaction_count(), 0);
}

#[test]
fn lost_invite_is_retransmitted_by_timer_a() {
    let mut p = Pair::new();
    let mut invites = 0;
    p.drop = Box::new(move |m| {
        if m.starts_with("INVITE") {
            invites += 1;
            return invites == 1;
        }
        false
    });
    p.dial();
    p.run_for(Duration::from_millis(400));
    assert!(p.incoming().is_none());
    p.run_for(Duration::from_millis(200));
    assert!(p.incoming().is_some(), "the retransmission at 500 ms got through");
    assert_eq!(p.b.events.len(), 1);
}

#[test]
fn retransmitted_invite_makes_one_call() {
    let mut p = Pair::new();
    // Drop B's 100 Trying so A keeps retransmitting the INVITE.
    p.drop = Box::new(|m| m.starts_with("SIP/2.0 100"));
    p.dial();
    p.run_for(Duration::from_secs(2));
    assert!(p.count("INVITE ") >= 3);
    let incoming = p.b.events.iter().filter(|e| matches!(e, UaEvent::IncomingCall { .. })).count();
    assert_eq!(incoming, 1);
}

#[test]
fn lost_ack_gets_the_2xx_again_and_is_resent() {
    let mut p = Pair::new();
    let mut acks = 0;
    p.drop = Box::new(move |m| {
        if m.starts_with("ACK ") {
            acks += 1;
            return acks <= 2;
        }
        false
    });
    p.dial();
    p.run_for(Duration::from_millis(50));
    answer_all(&mut p);
    p.run_for(Duration::from_secs(3));
    assert_eq!(p.count("SIP/2.0 200"), 3, "2xx sent, then again at 500 ms and 1.5 s");
    assert_eq!(p.count("ACK "), 3, "each 2xx ACKed");
    p.run_for(Duration::from_secs(40));
    assert!(!p.b.events.iter().any(|e| matches!(e, UaEvent::Ended { .. })), "the call survives");
    assert_eq!(p.count("SIP/2.0 200"), 3);
}

#[test]
fn ack_never_arriving_ends_the_call_with_bye() {
    let mut p = Pair::new();
    p.drop = Box::new(|m| m.starts_with("ACK "));
    p.dial();
    p.run_for(Duration::from_millis(50));
    answer_all(&mut p);
    p.run_for(Duration::from_secs(40));
    let b_call = p.incoming().unwrap();
    assert!(p.b.events.contains(&UaEvent::Ended { call: b_call, reason: EndReason::AckTimeout }));
    assert_eq!(p.count("BYE "), 1);
}

#[test]
fn no_answer_at_all_fails_with_408_after_timer_b() {
    let mut p = Pair::new();
    p.drop = Box::new(|m| m.starts_with("INVITE"));
    let call = p.dial();
    p.run_for(Duration::from_secs(31));
    assert!(p.a.events.is_empty());
    p.run_for(Duration::from_secs(2));
    assert_eq!(p.a.events, vec![UaEvent::Failed { call, status: 408, reason: "Request Timeout".into() }]);
    assert_eq!(p.count("INVITE "), 7, "the original and six retransmissions");
}

#[test]
fn cancel_before_answer() {
    let mut p = Pair::new();
    let call = p.dial();
    p.run_for(Duration::from_millis(50));
    let b_call = p.incoming().unwrap();
    let now = p.now;
    p.b.ua.ring(b_call, now).unwrap();
    p.collect();
    p.run_for(Duration::from_millis(50));
    p.a.ua.hangup(call, p.now).unwrap();
    p.collect();
    p.run_for(Duration::from_millis(100));
    assert_eq!(p.count("CANCEL "), 1);
    assert!(p.b.events.contains(&UaEvent::Ended { call: b_call, reason: EndReason::Cancelled }));
    assert!(p.a.events.contains(&UaEvent::Failed { call, status: 487, reason: "Request Terminated".into() }));
    assert_eq!(p.count("ACK "), 1, "the 487 is ACKed");
    // Answering after the CANCEL is refused.
    assert!(p.b.ua.answer(b_call, Vec::new(), p.now).is_err());
}

#[test]
fn hangup_before_any_provisional_waits_to_cancel() {
    let mut p = Pair::new();
    // Hold back B's 100 so no provisional arrives for a while.
    let mut trying = 0;
    p.drop = Box::new(move |m| {
        if m.starts_with("SIP/2.0 100") {
            trying += 1;
            return trying <= 1;
        }
        false
    });
    let call = p.dial();
    p.a.ua.hangup(call, p.now).unwrap();
    p.collect();
    assert_eq!(p.count("CANCEL "), 0, "no CANCEL before a provisional response (§9.1)");
    p.run_for(Duration::from_secs(2));
    assert_eq!(p.count("CANCEL "), 1);
    assert!(p.a.events.contains(&UaEvent::Failed { call, status: 487, reason: "Request Terminated".into() }));
}

#[test]
fn rejection_is_acked_and_a_retransmitted_final_is_acked_again() {
    let mut p = Pair::new();
    let mut acks = 0;
    p.drop = Box::new(move |m| {
        if m.starts_with("ACK ") {
            acks += 1;
            return acks == 1;
        }
        false
    });
    let call = p.dial();
    p.run_for(Duration::from_millis(50));
    let b_call = p.incoming().unwrap();
    p.b.ua.reject(b_call, 486, p.now);
    p.collect();
    p.run_for(Duration::from_secs(2));
    assert!(p.a.events.contains(&UaEvent::Failed { call, status: 486, reason: "Busy Here".into() }));
    assert_eq!(p.count("SIP/2.0 486"), 2);
    assert_eq!(p.count("ACK "), 2);
}

#[test]
fn lost_bye_is_retransmitted() {
    let mut p = Pair::new();
    let call = established(&mut p);
    let mut byes = 0;
    p.drop = Box::new(move |m| {
        if m.starts_with("BYE ") {
            byes += 1;
            return byes == 1;
        }
        false
    });
    p.a.ua.hangup(call, p.now).unwrap();
    p.collect();
    p.run_for(Duration::from_secs(1));
    assert_eq!(p.count("BYE "), 2);
    let b_call = p.incoming().unwrap();
    assert!(p.b.events.contains(&UaEvent::Ended { call: b_call, reason: EndReason::RemoteHangup }));
}

const OPTIONS: &str = "OPTIONS sip:room@127.0.0.1:5062 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bKopt1\r\nFrom: <sip:a@127.0.0.1>;tag=1\r\nTo: <sip:room@127.0.0.1>\r\nCall-ID: opt-1\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n";

#[test]
fn options_gets_200_with_allow_and_accept() {
    let mut p = Pair::new();
    p.inject(OPTIONS);
    let responses = p.responses_to_a();
    assert_eq!(responses.len(), 1);
    assert!(responses[0].starts_with("SIP/2.0 200"));
    assert!(responses[0].contains("Allow: INVITE, ACK, BYE, CANCEL, OPTIONS, INFO, REGISTER"));
    assert!(responses[0].contains("Accept: application/sdp"));
}

#[test]
fn unsupported_unknown_and_misrouted_requests() {
    let mut p = Pair::new();
    p.inject(&OPTIONS.replace("OPTIONS", "PUBLISH").replace("opt1", "pub1"));
    p.inject(&OPTIONS.replace("OPTIONS", "FROBNICATE").replace("opt1", "frob"));
    p.inject(
        &OPTIONS
            .replace("OPTIONS", "BYE")
            .replace("opt1", "bye1")
            .replace("To: <sip:room@127.0.0.1>", "To: <sip:room@127.0.0.1>;tag=nope"),
    );
    p.inject(&OPTIONS.replace("Max-Forwards: 70", "Max-Forwards: 0").replace("opt1", "mf0"));
    let codes: Vec<&str> = p.responses_to_a().iter().map(|r| &r[8..11]).collect();
    assert_eq!(codes, vec!["405", "501", "481", "483"]);
    assert!(p.responses_to_a()[0].contains("Allow: "));
}

#[test]
fn garbage_never_panics_and_broken_requests_get_400() {
    let mut p = Pair::new();
    for junk in [
        "",
        "\r\n\r\n",
        "hello",
        "INVITE",
        "SIP/2.0 200 OK\r\n\r\n",
        "INVITE sip:x SIP/2.0\r\nVia: broken\r\n\r\n",
        "\u{0}\u{1}\u{2}",
    ] {
        p.inject(junk);
    }
    // Parses, but lacks a Call-ID: answered 400 statelessly.
    p.inject(&OPTIONS.replace("Call-ID: opt-1\r\n", ""));
    // Does not parse (bad CSeq), but the headers to answer with are there.
    p.inject(&OPTIONS.replace("CSeq: 1 OPTIONS", "CSeq: x y z"));
    let codes: Vec<&str> = p.responses_to_a().iter().map(|r| &r[8..11]).collect();
    assert!(codes.iter().all(|c| *c == "400"), "{codes:?}");
    assert!(!codes.is_empty());
    // The agent still works.
    p.inject(OPTIONS);
    assert!(p.responses_to_a().last().unwrap().starts_with("SIP/2.0 200"));
}

#[test]
fn a_second_call_is_not_disturbed_by_the_first_ending() {
    let mut p = Pair::new();
    let first = p.dial();
    let second = p.dial();
    p.run_for(Duration::from_millis(50));
    answer_all(&mut p);
    p.run_for(Duration::from_millis(50));
    p.a.ua.hangup(first, p.now).unwrap();
    p.collect();
    p.run_for(Duration::from_secs(1));
    assert_eq!(p.a.ua.call_count(), 1);
    assert_eq!(p.b.ua.call_count(), 1);
    p.a.ua.hangup(second, p.now).unwrap();
    p.collect();
    p.run_for(Duration::from_secs(1));
    assert_eq!(p.b.ua.call_count(), 0);
}

#[test]
fn an_answer_crossing_the_cancel_is_acked_and_ended_with_bye() {
    let mut p = Pair::new();
    let call = p.dial();
    p.run_for(Duration::from_millis(50));
    let b_call = p.incoming().unwrap();
    let now = p.now;
    p.b.ua.ring(b_call, now).unwrap();
    p.collect();
    p.run_for(Duration::from_millis(15));
    // Both at once: A cancels while B answers.
    p.a.ua.hangup(call, p.now).unwrap();
    p.b.ua.answer(b_call, b"v=0\r\n".to_vec(), p.now).unwrap();
    p.collect();
    p.run_for(Duration::from_secs(1));
    assert_eq!(p.count("CANCEL "), 1);
    assert_eq!(p.count("ACK "), 1);
    assert_eq!(p.count("BYE "), 1);
    assert!(p.a.events.contains(&UaEvent::Failed { call, status: 487, reason: "Request Terminated".into() }));
    assert!(p.b.events.contains(&UaEvent::Ended { call: b_call, reason: EndReason::RemoteHangup }));
    assert_eq!(p.a.ua.call_count() + p.b.ua.call_count(), 0);
}

/// The value of header `name` in a logged message.
fn header<'a>(message: &'a str, name: &str) -> &'a str {
    message
        .split("\r\n")
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(": ")))
        .unwrap_or_else(|| panic!("no {name} in {message}"))
}

/// Builds requests A sends in the dialog B's first 2xx set up: method, CSeq
/// number, Via branch, and an SDP body (or none).
fn in_dialog_requests(p: &Pair) -> impl Fn(&str, u32, &str, &str) -> String {
    let ok = p.log.iter().find(|m| m.starts_with("SIP/2.0 200")).unwrap().clone();
    let (from, to, call_id) =
        (header(&ok, "From").to_string(), header(&ok, "To").to_string(), header(&ok, "Call-ID").to_string());
    move |method, cseq, branch, body| {
        let content_type = if body.is_empty() { "" } else { "Content-Type: application/sdp\r\n" };
        format!(
            "{method} sip:room@127.0.0.1:5062 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5061;branch={branch}\r\nFrom: {from}\r\nTo: {to}\r\nCall-ID: {call_id}\r\nCSeq: {cseq} {method}\r\nMax-Forwards: 70\r\n{content_type}Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
    }
}

#[test]
fn re_invite_is_answered_and_its_ack_stops_the_2xx() {
    let mut p = Pair::new();
    established(&mut p);
    let in_dialog = in_dialog_requests(&p);
    let request = |method: &str, cseq: u32, branch: &str| in_dialog(method, cseq, branch, "");
    p.inject(&request("INVITE", 2, "z9hG4bKreinvite"));
    assert!(p.responses_to_a().last().unwrap().starts_with("SIP/2.0 200"));
    assert!(p.responses_to_a().last().unwrap().contains("v=0"), "the same session description");
    p.inject(&request("ACK", 2, "z9hG4bKreack"));
    let before = p.count("SIP/2.0 200");
    p.run_for(Duration::from_secs(40));
    assert_eq!(p.count("SIP/2.0 200"), before, "no 2xx retransmission after the ACK");
    assert!(!p.b.events.iter().any(|e| matches!(e, UaEvent::Ended { .. })), "the call goes on");
    // An older CSeq is out of order (§12.2.2).
    p.inject(&request("INVITE", 1, "z9hG4bKold"));
    assert!(p.responses_to_a().last().unwrap().starts_with("SIP/2.0 500"));
}

#[test]
fn a_re_invite_with_an_offer_is_answered_by_the_user_or_refused() {
    let mut p = Pair::new();
    established(&mut p);
    let request = in_dialog_requests(&p);
    let hold = "v=0\r\na=sendonly\r\n";
    p.inject(&request("INVITE", 2, "z9hG4bKhold", hold));
    let call =
        p.b.events
            .iter()
            .find_map(|e| match e {
                UaEvent::Reoffer { call, offer } if offer == hold.as_bytes() => Some(*call),
                _ => None,
            })
            .expect("the offer goes to the user");
    let answered =
        |p: &Pair| p.responses_to_a().iter().any(|m| m.starts_with("SIP/2.0 200") && m.contains("CSeq: 2 INVITE"));
    assert!(!answered(&p), "no 2xx before the user answers");
    // Another re-INVITE while that one waits is asked to retry (RFC 3261 §14.2).
    p.inject(&request("INVITE", 3, "z9hG4bKtoosoon", hold));
    let retry = p.responses_to_a().last().unwrap().to_string();
    assert!(retry.starts_with("SIP/2.0 500") && retry.contains("Retry-After"), "{retry}");
    let now = p.now;
    p.b.ua.answer_reoffer(call, b"v=0\r\na=recvonly\r\n".to_vec(), now).unwrap();
    p.collect();
    let answer = p.responses_to_a().last().unwrap().to_string();
    assert!(answer.starts_with("SIP/2.0 200") && answer.contains("a=recvonly"), "{answer}");
    assert!(answer.contains("CSeq: 2 INVITE"), "{answer}");
    p.inject(&request("ACK", 2, "z9hG4bKholdack", ""));
    assert!(matches!(p.b.ua.answer_reoffer(call, Vec::new(), now), Err(SipError::WrongState)), "answered once");

    // A refused offer gets 488 and leaves the call as it was.
    p.inject(&request("INVITE", 4, "z9hG4bKvideo", "v=0\r\nm=video 0 RTP/AVP 96\r\n"));
    p.b.ua.reject_reoffer(call, 488, now).unwrap();
    p.collect();
    assert!(p.responses_to_a().last().unwrap().starts_with("SIP/2.0 488"));
    p.inject(&request("ACK", 4, "z9hG4bKvideo", ""));
    p.run_for(Duration::from_secs(40));
    assert!(!p.b.events.iter().any(|e| matches!(e, UaEvent::Ended { .. })), "the call goes on");
    // Without an offer, a re-INVITE still gets the session description we gave last.
    p.inject(&request("INVITE", 5, "z9hG4bKrefresh", ""));
    let refresh = p.responses_to_a().last().unwrap().to_string();
    assert!(refresh.starts_with("SIP/2.0 200") && refresh.contains("a=recvonly"), "{refresh}");
}

#[test]
fn a_flood_of_provisionals_files_no_extra_timers() {
    let mut p = Pair::new();
    p.dial();
    p.run_for(Duration::from_millis(50));
    let trying = p.log.iter().find(|m| m.starts_with("SIP/2.0 100")).unwrap().clone();
    let before = p.a.ua.filed_timer_count();
    for _ in 0..1000 {
        let (now, from) = (p.now, p.b.addr);
        p.a.ua.handle_message(now, Peer::udp(from), trying.as_bytes());
    }
    assert!(p.a.ua.filed_timer_count() <= before + 1, "{} timers filed", p.a.ua.filed_timer_count());
}

#[test]
fn broken_acks_get_no_response() {
    let mut p = Pair::new();
    p.inject(&OPTIONS.replace("OPTIONS", "ACK").replace("Call-ID: opt-1\r\n", ""));
    p.inject(&OPTIONS.replace("OPTIONS", "ACK").replace("CSeq: 1 ACK", "CSeq: x"));
    assert!(p.responses_to_a().is_empty());
}

#[test]
fn hanging_up_before_the_ack_waits_for_it_to_send_bye() {
    let mut p = Pair::new();
    let mut held = true;
    // Hold back A's first ACK: B hangs up while its 2xx is unacknowledged.
    p.drop = Box::new(move |m| {
        if m.starts_with("ACK ") && held {
            held = false;
            return true;
        }
        false
    });
    let call = p.dial();
    p.run_for(Duration::from_millis(50));
    answer_all(&mut p);
    p.run_for(Duration::from_millis(30));
    let b_call = p.incoming().unwrap();
    p.b.ua.hangup(b_call, p.now).unwrap();
    p.collect();
    assert!(p.b.events.contains(&UaEvent::Ended { call: b_call, reason: EndReason::LocalHangup }));
    assert_eq!(p.count("BYE "), 0, "no BYE before the ACK (§15)");
    p.run_for(Duration::from_secs(2));
    assert_eq!(p.count("BYE "), 1, "the BYE follows the retransmitted 2xx's ACK");
    assert!(p.a.events.contains(&UaEvent::Ended { call, reason: EndReason::RemoteHangup }));
    p.run_for(Duration::from_secs(40));
    assert_eq!(p.b.events.iter().filter(|e| matches!(e, UaEvent::Ended { .. })).count(), 1);
    assert_eq!(p.a.ua.call_count() + p.b.ua.call_count(), 0);
}

#[test]
fn a_callee_bye_during_ringing_ends_the_invite_with_cancel() {
    let mut p = Pair::new();
    let call = p.dial();
    p.run_for(Duration::from_millis(50));
    let b_call = p.incoming().unwrap();
    let now = p.now;
    p.b.ua.ring(b_call, now).unwrap();
    p.collect();
    p.run_for(Duration::from_millis(50));
    // B (misbehaving) sends BYE in the early dialog, built from its 180.
    let ringing = p.log.iter().find(|m| m.starts_with("SIP/2.0 180")).unwrap().clone();
    let bye = format!(
        "BYE sip:alice@127.0.0.1:5061 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5062;branch=z9hG4bKearlybye\r\nFrom: {}\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: 9 BYE\r\nContent-Length: 0\r\n\r\n",
        header(&ringing, "To"),
        header(&ringing, "From"),
        header(&ringing, "Call-ID")
    );
    let (now, from) = (p.now, p.b.addr);
    p.a.ua.handle_message(now, Peer::udp(from), bye.as_bytes());
    p.collect();
    p.run_for(Duration::from_secs(1));
    assert_eq!(p.count("CANCEL "), 1);
    assert!(p.a.events.contains(&UaEvent::Failed { call, status: 487, reason: "Request Terminated".into() }));
    assert!(p.log.iter().all(|m| !m.is_empty()), "no empty datagram is ever sent");
}

/// A call from A that B answers, every ACK lost: B's 2xx.
fn answered_without_ack(p: &mut Pair) -> String {
    p.drop = Box::new(|m| m.starts_with("ACK "));
    p.dial();
    p.run_for(Duration::from_millis(50));
    answer_all(p);
    p.run_for(Duration::from_millis(30));
    p.log.iter().find(|m| m.starts_with("SIP/2.0 200")).unwrap().clone()
}

#[test]
fn a_re_invite_before_the_first_ack_is_asked_to_retry() {
    let mut p = Pair::new();
    let ok = answered_without_ack(&mut p);
    let reinvite = format!(
        "INVITE sip:room@127.0.0.1:5062 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bKearlyre\r\nFrom: {}\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: 2 INVITE\r\nContent-Length: 0\r\n\r\n",
        header(&ok, "From"),
        header(&ok, "To"),
        header(&ok, "Call-ID")
    );
    p.inject(&reinvite);
    let last = p.responses_to_a().last().unwrap().to_string();
    assert!(last.starts_with("SIP/2.0 500") && last.contains("Retry-After: "), "{last}");
}

#[test]
fn a_bye_stops_our_2xx_even_when_its_ack_was_lost() {
    let mut p = Pair::new();
    p.drop = Box::new(|m| m.starts_with("ACK "));
    let call = p.dial();
    p.run_for(Duration::from_millis(50));
    answer_all(&mut p);
    p.run_for(Duration::from_millis(30));
    p.a.ua.hangup(call, p.now).unwrap();
    p.collect();
    p.run_for(Duration::from_millis(100));
    let before = p.count("SIP/2.0 200");
    p.run_for(Duration::from_secs(40));
    assert_eq!(p.count("SIP/2.0 200"), before, "no 2xx retransmissions after the BYE");
}

#[test]
fn a_long_ringing_call_does_not_time_out() {
    let mut p = Pair::new();
    let call = p.dial();
    p.run_for(Duration::from_millis(50));
    let b_call = p.incoming().unwrap();
    let now = p.now;
    p.b.ua.ring(b_call, now).unwrap();
    p.collect();
    p.run_for(Duration::from_secs(60));
    assert!(!p.a.events.iter().any(|e| matches!(e, UaEvent::Failed { .. })), "{:?}", p.a.events);
    let now = p.now;
    p.b.ua.answer(b_call, b"v=0\r\n".to_vec(), now).unwrap();
    p.collect();
    p.run_for(Duration::from_millis(50));
    assert!(p.a.events.iter().any(|e| matches!(e, UaEvent::Answered { call: c, .. } if *c == call)));
}

#[test]
fn sip_info_dtmf_relay_becomes_a_digit() {
    let mut p = Pair::new();
    established(&mut p);
    let ok = p.log.iter().find(|m| m.starts_with("SIP/2.0 200")).unwrap().clone();
    let info = |cseq: u32, content_type: &str, body: &str| {
        format!(
            "INFO sip:room@127.0.0.1:5062 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bKinfo{cseq}\r\nFrom: {}\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: {cseq} INFO\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n{body}",
            header(&ok, "From"),
            header(&ok, "To"),
            header(&ok, "Call-ID"),
            body.len()
        )
    };
    p.inject(&info(2, "application/dtmf-relay", "Signal=7\r\nDuration=120\r\n"));
    p.inject(&info(3, "application/dtmf", "#"));
    p.inject(&info(4, "text/plain", "hello"));
    let codes: Vec<&str> = p.responses_to_a().iter().rev().take(3).map(|r| &r[8..11]).collect();
    assert_eq!(codes, vec!["415", "200", "200"]);
    let b_call = p.incoming().unwrap();
    let digits: Vec<(char, u32)> =
        p.b.events
            .iter()
            .filter_map(|e| match e {
                UaEvent::Dtmf { call, digit, duration_ms } if *call == b_call => Some((*digit, *duration_ms)),
                _ => None,
            })
            .collect();
    assert_eq!(digits, vec![('7', 120), ('#', 250)]);
}

#[test]
fn the_same_invite_on_a_second_branch_gets_482() {
    let mut p = Pair::new();
    p.dial();
    p.run_for(Duration::from_millis(50));
    let invite = p.log.iter().find(|m| m.starts_with("INVITE ")).unwrap().clone();
    let branch = header(&invite, "Via").split("branch=").nth(1).unwrap().split(';').next().unwrap().to_string();
    // The same INVITE, as a forking proxy would deliver it a second time.
    p.inject(&invite.replace(&branch, "z9hG4bKsecondpath"));
    assert!(p.responses_to_a().last().unwrap().starts_with("SIP/2.0 482"));
    assert_eq!(p.b.events.iter().filter(|e| matches!(e, UaEvent::IncomingCall { .. })).count(), 1);
    assert_eq!(p.b.ua.call_count(), 1);
}

/// A response from a callee to `request` (its Via, From, Call-ID and CSeq; To with a tag), with `extra` headers.
fn response_to(request: &str, status: &str, extra: &str) -> String {
    let line = |name: &str| format!("{name}: {}\r\n", header(request, name));
    format!(
        "SIP/2.0 {status}\r\n{}{}To: {};tag=callee\r\n{}{}{extra}Content-Length: 0\r\n\r\n",
        line("Via"),
        line("From"),
        header(request, "To"),
        line("Call-ID"),
        line("CSeq")
    )
}

#[test]
fn a_challenged_invite_is_sent_again_with_credentials_once() {
    let mut a = agent(5061);
    let callee: SocketAddr = "127.0.0.1:5062".parse().unwrap();
    let now = Instant::now();
    let credentials = Credentials { username: "alice".into(), password: "secret".into() };
    let call =
        a.ua.dial("sip:room@127.0.0.1:5062", Peer::udp(callee), "alice", b"v=0\r\n".to_vec(), Some(credentials), now)
            .unwrap();
    let ua = &mut a.ua;
    let sent = |ua: &mut UserAgent| {
        std::iter::from_fn(|| ua.poll_transmit()).map(|t| String::from_utf8(t.data).unwrap()).collect::<Vec<_>>()
    };
    let first = sent(ua).remove(0);
    let challenge = "Proxy-Authenticate: Digest realm=\"pbx\", nonce=\"abc\", qop=\"auth\", algorithm=MD5\r\n";
    ua.handle_message(
        now,
        Peer::udp(callee),
        response_to(&first, "407 Proxy Authentication Required", challenge).as_bytes(),
    );
    let out = sent(ua);
    assert!(out.iter().any(|m| m.starts_with("ACK ") && m.contains("CSeq: 1 ACK")), "the 407 is ACKed: {out:?}");
    let second = out.iter().find(|m| m.starts_with("INVITE ")).expect("the INVITE again").clone();
    assert!(second.contains("CSeq: 2 INVITE"), "{second}");
    assert_ne!(header(&second, "Via"), header(&first, "Via"), "a new transaction");
    let authorization = header(&second, "Proxy-Authorization");
    assert!(authorization.contains("username=\"alice\"") && authorization.contains("realm=\"pbx\""), "{authorization}");
    assert!(authorization.contains("qop=auth, nc=00000001"), "{authorization}");
    // Challenged again (not stale): the credentials were wrong; the call fails.
    ua.handle_message(
        now,
        Peer::udp(callee),
        response_to(&second, "407 Proxy Authentication Required", challenge).as_bytes(),
    );
    let out = sent(ua);
    assert!(!out.iter().any(|m| m.starts_with("INVITE ")), "no third INVITE: {out:?}");
    let events: Vec<UaEvent> = std::iter::from_fn(|| ua.poll_event()).collect();
    assert!(
        events.iter().any(|e| matches!(e, UaEvent::Failed { call: c, status: 407, .. } if *c == call)),
        "{events:?}"
    );
}

#[test]
fn a_register_is_handed_to_the_user_and_answered_with_the_bindings() {
    let mut p = Pair::new();
    let register = |cseq: u32, contact: &str, expires: &str| {
        format!(
            "REGISTER sip:127.0.0.1:5062 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bKreg{cseq}\r\nFrom: <sip:alice@example.com>;tag=r1\r\nTo: <sip:alice@example.com>\r\nCall-ID: reg1\r\nCSeq: {cseq} REGISTER\r\n{contact}{expires}Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
        )
    };
    let contacts =
        "Contact: \"Desk, phone\" <sip:alice@10.0.0.5;transport=udp>;expires=60, <sip:alice@10.0.0.9:5070>;q=0.5\r\n";
    p.inject(&register(1, contacts, "Expires: 300\r\n"));
    let Some(UaEvent::Register(request)) = p.b.events.last().cloned() else { panic!("{:?}", p.b.events) };
    assert_eq!((request.user.as_str(), request.expires, request.cseq), ("alice", Some(300), 1));
    let contact = |uri: &str, expires, q| registrar::RequestedContact { uri: uri.into(), expires, q };
    let expected = vec![
        contact("sip:alice@10.0.0.5;transport=udp", Some(60), None),
        contact("sip:alice@10.0.0.9:5070", None, Some(500)),
    ];
    assert_eq!(request.change, registrar::ContactChange::Contacts(expected));
    let bindings = vec![("sip:alice@10.0.0.9:5070".to_string(), 300)];
    let now = p.now;
    p.b.ua.answer_register(request.key, 200, &bindings, Vec::new(), now).unwrap();
    p.collect();
    let ok = p.responses_to_a().last().unwrap().to_string();
    assert!(ok.starts_with("SIP/2.0 200") && ok.contains("<sip:alice@10.0.0.9:5070>;expires=300"), "{ok}");
    // `*` alone removes all; mixed with contacts it is a bad request.
    p.inject(&register(2, "Contact: *\r\n", "Expires: 0\r\n"));
    let Some(UaEvent::Register(request)) = p.b.events.last().cloned() else { panic!() };
    assert_eq!(request.change, registrar::ContactChange::RemoveAll);
    p.b.ua.answer_register(request.key, 200, &[], Vec::new(), now).unwrap();
    p.inject(&register(3, "Contact: *, <sip:alice@10.0.0.5>\r\n", ""));
    assert!(p.responses_to_a().last().unwrap().starts_with("SIP/2.0 400"));
}

#[test]
fn a_caller_that_stops_refreshing_its_session_timer_is_hung_up() {
    let mut p = Pair::new();
    let invite = |se: u32, branch: &str| {
        format!(
            "INVITE sip:room@127.0.0.1:5062 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5061;branch={branch}\r\nFrom: <sip:a@127.0.0.1>;tag=st\r\nTo: <sip:room@127.0.0.1>\r\nCall-ID: timer-{se}\r\nCSeq: 1 INVITE\r\nContact: <sip:a@127.0.0.1:5061>\r\nSupported: timer\r\nSession-Expires: {se}\r\nMax-Forwards: 70\r\nContent-Type: application/sdp\r\nContent-Length: 5\r\n\r\nv=0\r\n"
        )
    };
    // Shorter than 90 s: 422 with Min-SE.
    p.inject(&invite(30, "z9hG4bKshort"));
    let refused = p.responses_to_a().last().unwrap().to_string();
    assert!(refused.starts_with("SIP/2.0 422") && refused.contains("Min-SE: 90"), "{refused}");

    p.inject(&invite(90, "z9hG4bKtimer"));
    answer_all(&mut p);
    let ok = p.responses_to_a().iter().find(|m| m.starts_with("SIP/2.0 200")).unwrap().to_string();
    assert!(ok.contains("Session-Expires: 90;refresher=uac") && ok.contains("Require: timer"), "{ok}");
    let in_dialog = in_dialog_requests(&p);
    p.inject(&in_dialog("ACK", 1, "z9hG4bKtimerack", ""));
    // A refresh by UPDATE 50 s in restarts the timer: BYE 60 s after it
    // (the interval less min(32 s, a third)), not 60 s after the answer.
    p.run_for(Duration::from_secs(50));
    p.inject(&in_dialog("UPDATE", 2, "z9hG4bKrefresh", ""));
    let refreshed = p.responses_to_a().last().unwrap().to_string();
    assert!(refreshed.starts_with("SIP/2.0 200") && refreshed.contains("Session-Expires: 90"), "{refreshed}");
    p.run_for(Duration::from_secs(55));
    assert_eq!(p.count("BYE "), 0, "refreshed 55 s ago");
    p.run_for(Duration::from_secs(10));
    assert_eq!(p.count("BYE "), 1, "no refresh for 65 s");
    assert!(p.b.events.iter().any(|e| matches!(e, UaEvent::Ended { reason: EndReason::SessionExpired, .. })));
}

#[test]
fn a_ping_reports_the_answer_or_its_absence() {
    let mut a = agent(5061);
    let phone: SocketAddr = "127.0.0.1:5070".parse().unwrap();
    let now = Instant::now();
    let ua = &mut a.ua;
    let key = ua.ping("sip:alice@127.0.0.1:5070", Peer::udp(phone), now).unwrap();
    let options = String::from_utf8(ua.poll_transmit().unwrap().data).unwrap();
    assert!(options.starts_with("OPTIONS sip:alice@127.0.0.1:5070 SIP/2.0"), "{options}");
    ua.handle_message(now, Peer::udp(phone), response_to(&options, "200 OK", "").as_bytes());
    assert_eq!(ua.poll_event(), Some(UaEvent::PingAnswered { key, status: 200 }));
    // Nobody answers the next one: 408 once the transaction gives up (64 T1).
    let key = ua.ping("sip:alice@127.0.0.1:5070", Peer::udp(phone), now).unwrap();
    let mut at = now;
    while let Some(wake) = ua.poll_timeout().filter(|w| *w <= now + Duration::from_secs(40)) {
        at = wake;
        ua.handle_timeout(at);
    }
    assert!(at >= now + Duration::from_secs(32), "gave up at {:?}", at - now);
    assert_eq!(std::iter::from_fn(|| ua.poll_event()).last(), Some(UaEvent::PingAnswered { key, status: 408 }));
}

#[test]
fn calls_over_tcp_name_it_and_are_never_retransmitted() {
    let mut p = Pair::new();
    p.transport = Transport::Tcp;
    let call = established(&mut p);
    let invite = p.log.iter().find(|m| m.starts_with("INVITE")).unwrap().clone();
    assert!(invite.contains("Via: SIP/2.0/TCP 127.0.0.1:5061;"), "{invite}");
    assert!(invite.contains("transport=tcp>"), "our Contact asks for TCP: {invite}");
    let ok = p.log.iter().find(|m| m.starts_with("SIP/2.0 200")).unwrap();
    assert!(ok.contains("<sip:room@127.0.0.1:5062;transport=tcp>"), "so does theirs: {ok}");
    // The callee's 2xx still waits for the ACK (§13.3.1.4); the ACK gets lost
    // only on UDP, so here everything is sent once.
    p.a.ua.hangup(call, p.now).unwrap();
    p.run_for(Duration::from_secs(40));
    for method in ["INVITE ", "ACK ", "BYE "] {
        assert_eq!(p.count(method), 1, "{method}");
    }
    assert_eq!(p.count("SIP/2.0 200"), 2);
    assert_eq!(p.a.ua.transaction_count() + p.b.ua.transaction_count(), 0);
}

#[test]
fn an_unanswered_invite_over_tcp_is_sent_once_and_times_out() {
    let mut p = Pair::new();
    p.transport = Transport::Tcp;
    p.drop = Box::new(|m| m.starts_with("SIP/2.0"));
    let call = p.dial();
    p.run_for(Duration::from_secs(31));
    assert!(p.a.events.is_empty());
    p.run_for(Duration::from_secs(2));
    assert_eq!(p.count("INVITE "), 1, "TCP delivers; no Timer A");
    assert!(p.a.events.contains(&UaEvent::Failed { call, status: 408, reason: "Request Timeout".into() }));
}

#[test]
fn a_request_too_big_for_udp_goes_over_tcp() {
    let mut p = Pair::new();
    let sdp = format!("v=0\r\n{}", "a=x-filler:0123456789abcdef\r\n".repeat(50)).into_bytes();
    let target = format!("sip:room@{}", p.b.addr);
    p.a.ua.dial(&target, Peer::udp(p.b.addr), "alice", sdp, None, p.now).unwrap();
    let invite = p.a.ua.poll_transmit().unwrap();
    assert_eq!(invite.destination, Peer { transport: Transport::Tcp, addr: p.b.addr });
    let text = String::from_utf8(invite.data).unwrap();
    assert!(text.len() > 1300);
    assert!(text.contains("Via: SIP/2.0/TCP "), "the Via says so (§18.1.1)");
    assert!(text.contains(";transport=tcp>"), "and so does the Contact");
    p.a.ua.dial(&target, Peer::udp(p.b.addr), "alice", b"v=0\r\n".to_vec(), None, p.now).unwrap();
    let small = p.a.ua.poll_transmit().unwrap();
    assert_eq!(small.destination.transport, Transport::Udp, "small requests stay on UDP");
}

#[test]
fn transports_named_by_uris() {
    assert_eq!(Transport::of_uri("sips:alice@example.com"), Some(Transport::Tls));
    assert_eq!(Transport::of_uri("<sip:alice@example.com;transport=TCP>"), Some(Transport::Tcp));
    assert_eq!(Transport::of_uri("sip:alice@example.com;lr;transport=tls"), Some(Transport::Tls));
    assert_eq!(Transport::of_uri("sip:alice@example.com:5070"), None);
    assert_eq!(Transport::of_uri("sip:alice@example.com?transport=tcp"), None, "a header, not a parameter");
}

#[test]
fn a_re_invite_of_ours_is_answered_and_acked() {
    let mut p = Pair::new();
    let call = established(&mut p);
    p.a.ua.reoffer(call, b"v=0\r\na=inactive\r\n".to_vec(), p.now).unwrap();
    assert!(matches!(p.a.ua.reoffer(call, b"v=0\r\n".to_vec(), p.now), Err(SipError::WrongState)), "one at a time");
    p.collect();
    p.run_for(Duration::from_millis(50));
    let b_call = p.incoming().unwrap();
    assert!(p.b.events.contains(&UaEvent::Reoffer { call: b_call, offer: b"v=0\r\na=inactive\r\n".to_vec() }));
    p.answer_reoffers();
    p.run_for(Duration::from_millis(50));
    assert!(p.a.events.iter().any(|e| matches!(e, UaEvent::ReofferAnswered { call: c, .. } if *c == call)));
    assert_eq!(p.count("ACK "), 2, "the call's ACK and the re-INVITE's");
    let acks: Vec<&String> = p.log.iter().filter(|m| m.starts_with("ACK ")).collect();
    assert!(acks[1].contains("CSeq: 2 ACK"), "the ACK carries the re-INVITE's CSeq: {}", acks[1]);
    // A second offer is possible once the first is through.
    p.a.ua.reoffer(call, b"v=0\r\na=sendrecv\r\n".to_vec(), p.now).unwrap();
}

#[test]
fn glare_is_answered_491_and_both_offers_go_through_after_the_rfc_waits() {
    let mut p = Pair::new();
    let call = established(&mut p);
    let b_call = p.incoming().unwrap();
    let start = p.now;
    // Both sides offer at once: each INVITE crosses the other's.
    p.a.ua.reoffer(call, b"v=0\r\na=inactive\r\n".to_vec(), p.now).unwrap();
    p.b.ua.reoffer(b_call, b"v=0\r\na=sendonly\r\n".to_vec(), p.now).unwrap();
    p.collect();
    // B did not make the call: it tries again within 2 s; A, owning the Call-ID, after 2.1-4 s.
    let mut sent_at = Vec::new();
    let before = p.count("INVITE ");
    while p.now < start + Duration::from_secs(5) {
        let invites = p.count("INVITE ");
        p.step();
        if p.count("INVITE ") > invites {
            let last = p.log.iter().rev().find(|m| m.starts_with("INVITE ")).unwrap();
            sent_at.push((p.now - start, header(last, "From").contains("alice")));
        }
        p.answer_reoffers();
    }
    assert_eq!(p.count("SIP/2.0 491"), 2, "each side refuses the other's");
    assert_eq!(p.count("INVITE ") - before, 2, "one retry each: {sent_at:?}");
    let (b_retry, a_retry) = (sent_at.iter().find(|s| !s.1).unwrap().0, sent_at.iter().find(|s| s.1).unwrap().0);
    assert!(b_retry <= Duration::from_millis(2100), "{b_retry:?}");
    assert!(a_retry >= Duration::from_millis(2100) && a_retry <= Duration::from_millis(4100), "{a_retry:?}");
    assert!(p.a.events.iter().any(|e| matches!(e, UaEvent::ReofferAnswered { .. })));
    assert!(p.b.events.iter().any(|e| matches!(e, UaEvent::ReofferAnswered { .. })));
}

#[test]
fn a_challenged_bye_is_sent_again_with_the_call_s_credentials() {
    let mut p = Pair::new();
    let credentials = Credentials { username: "alice".into(), password: "secret".into() };
    let call = p.dial_with(Some(credentials));
    p.run_for(Duration::from_millis(50));
    answer_all(&mut p);
    p.run_for(Duration::from_millis(50));
    p.drop = Box::new(|m| m.starts_with("BYE "));
    p.a.ua.hangup(call, p.now).unwrap();
    p.collect();
    let bye = p.log.iter().rev().find(|m| m.starts_with("BYE ")).unwrap().clone();
    let challenge = "WWW-Authenticate: Digest realm=\"pbx\", nonce=\"n1\", qop=\"auth\"\r\n";
    let from = p.b.addr;
    let now = p.now;
    p.a.ua.handle_message(now, Peer::udp(from), response_to(&bye, "401 Unauthorized", challenge).as_bytes());
    p.collect();
    let again = p.log.iter().rev().find(|m| m.starts_with("BYE ")).unwrap().clone();
    assert_ne!(again, bye);
    assert!(header(&again, "Authorization").contains("username=\"alice\""), "{again}");
    let (first_cseq, second_cseq) = (header(&bye, "CSeq"), header(&again, "CSeq"));
    assert_ne!(first_cseq, second_cseq, "a new CSeq for the new transaction");
    // A second challenge that is not stale means wrong credentials: no third BYE.
    p.a.ua.handle_message(now, Peer::udp(from), response_to(&again, "401 Unauthorized", challenge).as_bytes());
    p.collect();
    assert_eq!(p.count("BYE "), 2);
}

#[test]
fn the_caller_refreshes_the_session_and_a_silent_peer_ends_it() {
    let mut p = Pair::new();
    let call = established(&mut p);
    let invite = p.log.iter().find(|m| m.starts_with("INVITE ")).unwrap().clone();
    assert!(header(&invite, "Session-Expires") == "1800", "{invite}");
    let ok = p.log.iter().find(|m| m.starts_with("SIP/2.0 200") && m.contains("INVITE")).unwrap().clone();
    assert!(header(&ok, "Session-Expires").contains("refresher=uac"), "{ok}");
    // Two hours: A refreshes every 900 s, so B never expires the session.
    p.run_for(Duration::from_secs(7200));
    let refreshes = p.count("INVITE ") + p.count("UPDATE ") - 1;
    assert!((7..=9).contains(&refreshes), "{refreshes} refreshes");
    assert!(p.a.ua.call_count() == 1 && p.b.ua.call_count() == 1, "the call is still up");
    assert!(!p.a.events.iter().any(|e| matches!(e, UaEvent::ReofferAnswered { .. })), "refreshes are not reported");
    // B vanishes: A's next refresh goes unanswered and A ends the call.
    p.drop = Box::new(|m| m.starts_with("SIP/2.0"));
    p.run_for(Duration::from_secs(1000));
    assert!(p.a.events.contains(&UaEvent::Ended { call, reason: EndReason::PeerGone }), "{:?}", p.a.events);
}

/// A call from A to B in which B has sent A a REFER to carol: A's call and B's.
fn referred(p: &mut Pair) -> (CallKey, CallKey) {
    let call = established(p);
    let b_call = p.incoming().unwrap();
    p.b.ua.refer(b_call, "sip:carol@127.0.0.1:5070", p.now).unwrap();
    p.collect();
    p.run_for(Duration::from_millis(50));
    (call, b_call)
}

#[test]
fn a_transfer_is_offered_accepted_and_its_progress_notified() {
    let mut p = Pair::new();
    let (call, _) = referred(&mut p);
    let refer = p.log.iter().find(|m| m.starts_with("REFER ")).unwrap().clone();
    assert_eq!(header(&refer, "Refer-To"), "<sip:carol@127.0.0.1:5070>");
    let key =
        p.a.events
            .iter()
            .find_map(|e| match e {
                UaEvent::TransferRequested { call: c, key, target } if *c == call => {
                    assert_eq!(target, "sip:carol@127.0.0.1:5070");
                    Some(*key)
                }
                _ => None,
            })
            .expect("offered to the user");
    let now = p.now;
    p.a.ua.accept_transfer(key, now).unwrap();
    p.collect();
    p.run_for(Duration::from_millis(50));
    assert_eq!(p.count("SIP/2.0 202"), 1);
    let progress = |p: &Pair| -> Vec<(u16, bool)> {
        p.b.events
            .iter()
            .filter_map(|e| match e {
                UaEvent::TransferProgress { status, done, .. } => Some((*status, *done)),
                _ => None,
            })
            .collect()
    };
    assert_eq!(progress(&p), [(100, false)], "the first NOTIFY says it is being tried");
    let now = p.now;
    p.a.ua.notify_transfer(call, 180, now).unwrap();
    p.a.ua.notify_transfer(call, 200, now).unwrap();
    p.collect();
    p.run_for(Duration::from_millis(50));
    assert_eq!(progress(&p), [(100, false), (180, false), (200, true)]);
    let last = p.log.iter().rev().find(|m| m.starts_with("NOTIFY ")).unwrap();
    assert!(header(last, "Subscription-State").starts_with("terminated"), "{last}");
    assert!(last.ends_with("SIP/2.0 200 OK\r\n"), "a sipfrag of the status line: {last}");
    assert!(matches!(p.a.ua.notify_transfer(call, 200, now), Err(SipError::WrongState)), "the subscription is over");
}

#[test]
fn a_refused_transfer_reports_the_refusal() {
    let mut p = Pair::new();
    let (call, b_call) = referred(&mut p);
    let key = p.a.events.iter().find_map(|e| match e {
        UaEvent::TransferRequested { key, .. } => Some(*key),
        _ => None,
    });
    let now = p.now;
    p.a.ua.reject_transfer(key.unwrap(), 603, now).unwrap();
    p.collect();
    p.run_for(Duration::from_millis(50));
    assert!(p.b.events.contains(&UaEvent::TransferProgress { call: b_call, status: 603, done: true }));
    assert!(p.a.ua.notify_transfer(call, 200, now).is_err(), "no subscription after a refusal");
    // A NOTIFY for another event package is not ours to take.
    let notify = format!(
        "NOTIFY sip:alice@127.0.0.1:5061 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5062;branch=z9hG4bKpres\r\nFrom: {}\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: 999999 NOTIFY\r\nEvent: presence\r\nContent-Length: 0\r\n\r\n",
        header(p.log.iter().find(|m| m.starts_with("REFER ")).unwrap(), "From"),
        header(p.log.iter().find(|m| m.starts_with("REFER ")).unwrap(), "To"),
        header(p.log.iter().find(|m| m.starts_with("REFER ")).unwrap(), "Call-ID"),
    );
    let from = p.b.addr;
    p.a.ua.handle_message(now, Peer::udp(from), notify.as_bytes());
    p.collect();
    assert!(p.log.last().unwrap().starts_with("SIP/2.0 489"), "{}", p.log.last().unwrap());
}

#[test]
fn a_re_offer_made_before_the_ack_waits_for_it() {
    let mut p = Pair::new();
    p.dial();
    p.run_for(Duration::from_millis(50));
    answer_all(&mut p);
    let b_call = p.incoming().unwrap();
    // B answered; its 200 is in flight and not ACKed yet.
    p.b.ua.reoffer(b_call, b"v=0\r\na=inactive\r\n".to_vec(), p.now).unwrap();
    p.collect();
    assert_eq!(p.count("INVITE "), 1, "not before the ACK");
    p.run_for(Duration::from_millis(100));
    assert_eq!(p.count("INVITE "), 2, "right after it");
    let acks = p.log.iter().position(|m| m.starts_with("ACK ")).unwrap();
    let reinvite = p.log.iter().rposition(|m| m.starts_with("INVITE ")).unwrap();
    assert!(acks < reinvite);
}

// ----- subscriptions to a room's conference events (RFC 6665, RFC 4575) -----

/// A desk phone's SUBSCRIBE to `room`'s conference events: `to_tag` once
/// the dialog exists, and further headers.
fn subscribe(cseq: u32, to_tag: Option<&str>, extra: &str) -> String {
    let to_tag = to_tag.map(|t| format!(";tag={t}")).unwrap_or_default();
    format!(
        "SUBSCRIBE sip:room@127.0.0.1:5062 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bKsub{cseq}\r\nFrom: <sip:desk@127.0.0.1>;tag=desk\r\nTo: <sip:room@127.0.0.1:5062>{to_tag}\r\nCall-ID: sub-1\r\nCSeq: {cseq} SUBSCRIBE\r\nContact: <sip:desk@127.0.0.1:5061>\r\nMax-Forwards: 70\r\n{extra}Content-Length: 0\r\n\r\n"
    )
}

/// The phone's answer to a request of B's: its Via, From, To, Call-ID and CSeq.
fn answer(request: &str, status: &str) -> String {
    let line = |name: &str| format!("{name}: {}\r\n", header(request, name));
    format!(
        "SIP/2.0 {status}\r\n{}{}{}{}{}Content-Length: 0\r\n\r\n",
        line("Via"),
        line("From"),
        line("To"),
        line("Call-ID"),
        line("CSeq")
    )
}

/// A phone that answers every NOTIFY with `status`.
fn notified_phone(status: &'static str) -> Phone {
    Box::new(move |m: &str| m.starts_with("NOTIFY ").then(|| answer(m, status)))
}

/// A roster of `n` users.
fn roster(n: usize) -> conference_info::ConferenceInfo {
    use conference_info::{EndpointStatus, JoiningMethod, MediaStatus, User};
    let users = (1..=n)
        .map(|i| User {
            entity: format!("sip:user{i}@127.0.0.1"),
            display_text: None,
            moderator: false,
            status: EndpointStatus::Connected,
            joining: JoiningMethod::DialedIn,
            media: MediaStatus::SendRecv,
        })
        .collect();
    conference_info::ConferenceInfo {
        entity: "sip:room@127.0.0.1:5062".into(),
        subject: "room".into(),
        locked: false,
        users,
    }
}

const CONFERENCE: &str = "Event: conference\r\nAccept: application/conference-info+xml\r\n";

/// The phone subscribes with `extra` headers, and B accepts with a roster of `users`.
fn subscribed(p: &mut Pair, extra: &str, users: usize) {
    p.send_from_a(&subscribe(1, None, &format!("{CONFERENCE}{extra}")));
    p.run_for(Duration::from_millis(20));
    let key =
        p.b.events
            .iter()
            .find_map(|e| match e {
                UaEvent::Subscribe { key, request_uri, .. } => {
                    assert_eq!(request_uri, "sip:room@127.0.0.1:5062");
                    Some(*key)
                }
                _ => None,
            })
            .expect("the SUBSCRIBE is handed to the user");
    let now = p.now;
    p.b.ua.accept_subscription(key, "room", roster(users), now).unwrap();
    p.collect();
    p.run_for(Duration::from_millis(50));
}

fn notifies(p: &Pair) -> Vec<&String> {
    p.log.iter().filter(|m| m.starts_with("NOTIFY ")).collect()
}

#[test]
fn a_subscription_gets_the_roster_at_once_then_each_change_as_a_new_version() {
    let mut p = Pair::new();
    p.phone = Some(notified_phone("200 OK"));
    subscribed(&mut p, "Expires: 7200\r\n", 1);
    let ok = p.responses_to_a().into_iter().find(|m| m.starts_with("SIP/2.0 200")).expect("200").clone();
    assert_eq!(header(&ok, "Expires"), "3600", "cut to the longest we grant");
    assert!(header(&ok, "Contact").contains("sip:room@127.0.0.1:5062"), "{ok}");
    let to_tag = header(&ok, "To").split(";tag=").nth(1).expect("a To tag").to_string();
    let first = notifies(&p)[0].clone();
    assert!(first.starts_with("NOTIFY sip:desk@127.0.0.1:5061 SIP/2.0"), "to the subscriber's Contact: {first}");
    assert_eq!(header(&first, "Event"), "conference");
    assert_eq!(header(&first, "Subscription-State"), "active;expires=3600");
    assert_eq!(header(&first, "Content-Type"), "application/conference-info+xml");
    assert!(header(&first, "From").ends_with(&format!(";tag={to_tag}")), "in the dialog of the 200: {first}");
    assert_eq!(header(&first, "To"), "<sip:desk@127.0.0.1>;tag=desk");
    assert!(first.contains("version=\"1\"") && first.contains("<user-count>1</user-count>"), "{first}");
    assert_eq!(p.b.ua.subscription_count("room"), 1);
    assert_eq!(p.b.ua.call_count(), 0, "a subscription is not a call");
    assert!(!p.b.events.iter().any(|e| matches!(e, UaEvent::IncomingCall { .. })));

    let now = p.now;
    p.b.ua.notify_room("room", roster(2), now);
    p.collect();
    p.run_for(Duration::from_millis(50));
    let second = notifies(&p)[1].clone();
    assert!(second.contains("version=\"2\"") && second.contains("<user-count>2</user-count>"), "{second}");
    assert!(second.contains("entity=\"sip:user2@127.0.0.1\""), "{second}");
    let cseq = |m: &str| header(m, "CSeq").split(' ').next().unwrap().parse::<u32>().unwrap();
    assert_eq!(cseq(&second), cseq(&first) + 1);
    // Another room's change is not this subscriber's business.
    p.b.ua.notify_room("elsewhere", roster(5), now);
    p.collect();
    p.run_for(Duration::from_millis(50));
    assert_eq!(notifies(&p).len(), 2);
    assert_eq!(p.count("SIP/2.0 200"), 3, "the 200 to the SUBSCRIBE and the phone's two");
}

#[test]
fn a_lost_notify_is_retransmitted_and_the_changes_meanwhile_go_as_one() {
    let mut p = Pair::new();
    p.phone = Some(notified_phone("200 OK"));
    let mut lost = false;
    p.drop = Box::new(move |m| m.starts_with("NOTIFY ") && !std::mem::replace(&mut lost, true));
    subscribed(&mut p, "", 1);
    let now = p.now;
    // The first NOTIFY is lost and waits to be sent again; the roster changes twice meanwhile.
    p.b.ua.notify_room("room", roster(2), now);
    p.b.ua.notify_room("room", roster(3), now);
    p.collect();
    assert_eq!(notifies(&p).len(), 1, "one NOTIFY in flight at a time");
    p.run_for(Duration::from_secs(2));
    let sent = notifies(&p);
    assert_eq!(sent.len(), 3, "the first, its retransmission (Timer E), then the latest roster: {sent:?}");
    assert_eq!(sent[0], sent[1], "the transaction layer sent the same NOTIFY again");
    assert!(sent[2].contains("version=\"2\"") && sent[2].contains("<user-count>3</user-count>"), "{}", sent[2]);
    assert_eq!(p.b.ua.subscription_count("room"), 1);
}

#[test]
fn a_subscription_is_refreshed_then_ended_by_its_subscriber() {
    let mut p = Pair::new();
    p.phone = Some(notified_phone("200 OK"));
    subscribed(&mut p, "Expires: 600\r\n", 1);
    let ok = p.responses_to_a().into_iter().find(|m| m.starts_with("SIP/2.0 200")).unwrap().clone();
    let tag = header(&ok, "To").split(";tag=").nth(1).unwrap().to_string();
    p.run_for(Duration::from_secs(300));
    p.send_from_a(&subscribe(2, Some(&tag), &format!("{CONFERENCE}Expires: 600\r\n")));
    p.run_for(Duration::from_millis(50));
    let refreshed = p.responses_to_a().into_iter().rfind(|m| m.contains("CSeq: 2 SUBSCRIBE")).unwrap().clone();
    assert!(refreshed.starts_with("SIP/2.0 200") && header(&refreshed, "Expires") == "600", "{refreshed}");
    let after = notifies(&p).last().unwrap().to_string();
    assert_eq!(header(&after, "Subscription-State"), "active;expires=600", "the state again at once");
    assert!(after.contains("version=\"2\""), "{after}");
    // Past the first interval: the refresh keeps it.
    p.run_for(Duration::from_secs(400));
    assert_eq!(p.b.ua.subscription_count("room"), 1);
    assert_eq!(notifies(&p).len(), 2);
    // Expires: 0 ends it, with a last NOTIFY.
    p.send_from_a(&subscribe(3, Some(&tag), &format!("{CONFERENCE}Expires: 0\r\n")));
    p.run_for(Duration::from_millis(50));
    let ended = p.responses_to_a().into_iter().rfind(|m| m.contains("CSeq: 3 SUBSCRIBE")).unwrap().clone();
    assert!(ended.starts_with("SIP/2.0 200") && header(&ended, "Expires") == "0", "{ended}");
    let last = notifies(&p).last().unwrap().to_string();
    assert_eq!(header(&last, "Subscription-State"), "terminated");
    assert!(last.contains("<user-count>1</user-count>"), "with the state: {last}");
    assert_eq!(p.b.ua.subscription_count("room"), 0);
    // The dialog is gone.
    p.send_from_a(&subscribe(4, Some(&tag), &format!("{CONFERENCE}Expires: 600\r\n")));
    p.run_for(Duration::from_millis(50));
    assert!(p.responses_to_a().last().unwrap().starts_with("SIP/2.0 481"));
}

#[test]
fn an_unrefreshed_subscription_expires_with_a_last_notify() {
    let mut p = Pair::new();
    p.phone = Some(notified_phone("200 OK"));
    subscribed(&mut p, "Expires: 60\r\n", 2);
    p.run_for(Duration::from_secs(59));
    assert_eq!(notifies(&p).len(), 1);
    p.run_for(Duration::from_secs(2));
    let sent = notifies(&p);
    assert_eq!(sent.len(), 2, "{sent:?}");
    assert_eq!(header(sent[1], "Subscription-State"), "terminated;reason=timeout");
    assert!(sent[1].contains("version=\"2\""), "{}", sent[1]);
    assert_eq!(p.b.ua.subscription_count("room"), 0);
    p.run_for(Duration::from_secs(60));
    assert_eq!(p.b.ua.poll_timeout(), None, "nothing left to wake for");
}

#[test]
fn a_fetch_gets_one_notify_that_ends_it() {
    let mut p = Pair::new();
    p.phone = Some(notified_phone("200 OK"));
    subscribed(&mut p, "Expires: 0\r\n", 1);
    let sent = notifies(&p);
    assert_eq!(sent.len(), 1);
    assert_eq!(header(sent[0], "Subscription-State"), "terminated;reason=timeout");
    assert!(sent[0].contains("<user-count>1</user-count>"));
    assert_eq!(p.b.ua.subscription_count("room"), 0);
}

#[test]
fn a_notify_refused_with_481_or_never_answered_ends_the_subscription() {
    let mut p = Pair::new();
    p.phone = Some(notified_phone("481 Call/Transaction Does Not Exist"));
    subscribed(&mut p, "", 1);
    assert_eq!(p.b.ua.subscription_count("room"), 0, "the subscriber is gone");
    let now = p.now;
    p.b.ua.notify_room("room", roster(2), now);
    p.collect();
    assert_eq!(notifies(&p).len(), 1, "nothing more goes to it");

    let mut p = Pair::new();
    p.phone = Some(Box::new(|_| None));
    subscribed(&mut p, "", 1);
    p.run_for(Duration::from_secs(31));
    assert_eq!(p.b.ua.subscription_count("room"), 1, "still trying");
    p.run_for(Duration::from_secs(2));
    assert_eq!(p.b.ua.subscription_count("room"), 0, "given up at Timer F");
    assert!(notifies(&p).len() > 5, "retransmitted meanwhile");
}

#[test]
fn subscriptions_the_agent_cannot_take_are_refused() {
    let mut p = Pair::new();
    p.phone = Some(notified_phone("200 OK"));
    let last = |p: &Pair| p.responses_to_a().last().unwrap().to_string();
    p.send_from_a(&subscribe(1, None, "Event: presence\r\n"));
    p.run_for(Duration::from_millis(50));
    assert!(last(&p).starts_with("SIP/2.0 489 Bad Event"), "{}", last(&p));
    assert_eq!(header(&last(&p), "Allow-Events"), "conference, refer");
    p.send_from_a(&subscribe(2, None, "Event: conference\r\nExpires: 30\r\n"));
    p.run_for(Duration::from_millis(50));
    assert!(last(&p).starts_with("SIP/2.0 423 Interval Too Brief"), "{}", last(&p));
    assert_eq!(header(&last(&p), "Min-Expires"), "60");
    p.send_from_a(&subscribe(3, None, "Event: conference\r\nAccept: application/pidf+xml\r\n"));
    p.run_for(Duration::from_millis(50));
    assert!(last(&p).starts_with("SIP/2.0 406"), "{}", last(&p));
    assert!(!p.b.events.iter().any(|e| matches!(e, UaEvent::Subscribe { .. })), "none reached the user");
    // The user knows no such room.
    p.send_from_a(&subscribe(4, None, CONFERENCE));
    p.run_for(Duration::from_millis(50));
    let Some(UaEvent::Subscribe { key, .. }) = p.b.events.last().cloned() else { panic!("{:?}", p.b.events) };
    let now = p.now;
    p.b.ua.reject_subscription(key, 404, Vec::new(), now).unwrap();
    p.collect();
    p.run_for(Duration::from_millis(50));
    assert!(last(&p).starts_with("SIP/2.0 404"), "{}", last(&p));
    assert_eq!(p.b.ua.subscription_count("room"), 0);
    // OPTIONS says which packages we notify.
    p.send_from_a("OPTIONS sip:room@127.0.0.1:5062 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bKopt\r\nFrom: <sip:desk@127.0.0.1>;tag=o\r\nTo: <sip:room@127.0.0.1:5062>\r\nCall-ID: opt-1\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n");
    p.run_for(Duration::from_millis(50));
    assert_eq!(header(&last(&p), "Allow-Events"), "conference, refer");
    assert!(header(&last(&p), "Allow").contains("SUBSCRIBE"));
}

/// The dialog B's 2xx `ok` set up, as B sees it: Call-ID, B's tag, A's tag.
fn dialog_of(ok: &str) -> (String, String, String) {
    let tag = |name| header(ok, name).split(";tag=").nth(1).unwrap().to_string();
    (header(ok, "Call-ID").to_string(), tag("To"), tag("From"))
}

#[test]
fn an_invite_with_replaces_names_the_established_call_it_takes_over() {
    let mut p = Pair::new();
    established(&mut p);
    let b_call = p.incoming().unwrap();
    let ok = p.log.iter().find(|m| m.starts_with("SIP/2.0 200")).unwrap().clone();
    let (call_id, ours, theirs) = dialog_of(&ok);
    let invite = |n: u32, replaces: &str| {
        format!(
            "INVITE sip:room@127.0.0.1:5062 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bKrep{n}\r\nFrom: <sip:carol@127.0.0.1>;tag=carol{n}\r\nTo: <sip:room@127.0.0.1>\r\nCall-ID: replacing-{n}\r\nCSeq: 1 INVITE\r\nContact: <sip:carol@127.0.0.1:5061>\r\nReplaces: {replaces}\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
        )
    };
    let refusals = [
        (format!("{call_id};to-tag={ours};from-tag=someone-else"), "481"),
        (format!("{call_id};from-tag={theirs};to-tag={theirs}"), "481"),
        (format!("no-such-call;to-tag={ours};from-tag={theirs}"), "481"),
        (format!("{call_id};to-tag={ours};from-tag={theirs};early-only"), "486"),
        (format!("{call_id};to-tag={ours}"), "400"),
    ];
    for (n, (replaces, status)) in refusals.iter().enumerate() {
        p.inject(&invite(n as u32, replaces));
        let last = p.responses_to_a().last().unwrap().to_string();
        assert!(last.starts_with(&format!("SIP/2.0 {status}")), "{replaces}: {last}");
    }
    assert_eq!(p.b.events.iter().filter(|e| matches!(e, UaEvent::IncomingCall { .. })).count(), 1);
    // Tags are matched as sent, parameters in any order and case.
    p.inject(&invite(9, &format!("{call_id};From-Tag={theirs};to-tag={ours}")));
    let replaces = p.b.events.iter().find_map(|e| match e {
        UaEvent::IncomingCall { call, replaces, .. } if *call != b_call => Some(*replaces),
        _ => None,
    });
    assert_eq!(replaces, Some(Some(b_call)));
}

#[test]
fn a_second_answer_from_a_forked_invite_is_acked_and_ended_with_bye() {
    let mut p = Pair::new();
    let call = established(&mut p);
    let ok = p.log.iter().find(|m| m.starts_with("SIP/2.0 200")).unwrap().clone();
    let tag = header(&ok, "To").split(";tag=").nth(1).unwrap().to_string();
    let (acks, byes) = (p.count("ACK "), p.count("BYE "));
    // The same 2xx again (its ACK was lost): the ACK again, nothing more.
    let from_b = Peer::udp(p.b.addr);
    p.a.ua.handle_message(p.now, from_b, ok.as_bytes());
    p.collect();
    assert_eq!((p.count("ACK ") - acks, p.count("BYE ") - byes), (1, 0));
    // Another branch's callee answers: its own To tag and Contact.
    let forked = ok.replace(&format!(";tag={tag}"), ";tag=forked").replace("Contact: <sip:", "Contact: <sip:other@");
    assert_ne!(forked, ok);
    p.a.ua.handle_message(p.now, from_b, forked.as_bytes());
    p.collect();
    let sent: Vec<&String> = p.log.iter().rev().take(2).collect();
    let (bye, ack) = (sent[0], sent[1]);
    assert!(ack.starts_with("ACK sip:other@") && header(ack, "To").ends_with(";tag=forked"), "{ack}");
    assert!(bye.starts_with("BYE sip:other@") && header(bye, "To").ends_with(";tag=forked"), "{bye}");
    assert_eq!(header(bye, "Call-ID"), header(&ok, "Call-ID"));
    // That 2xx again (our ACK was lost): the ACK again, not another BYE.
    let (acks, byes) = (p.count("ACK "), p.count("BYE "));
    p.a.ua.handle_message(p.now, from_b, forked.as_bytes());
    p.collect();
    assert_eq!((p.count("ACK ") - acks, p.count("BYE ") - byes), (1, 0));
    // The call itself goes on.
    p.run_for(Duration::from_secs(1));
    assert!(!p.a.events.iter().any(|e| matches!(e, UaEvent::Ended { .. } | UaEvent::Failed { .. })));
    assert_eq!(p.a.ua.call_count(), 1);
    p.a.ua.hangup(call, p.now).unwrap();
}

#[test]
fn a_call_whose_2xx_is_not_acked_yet_cannot_be_replaced() {
    let mut p = Pair::new();
    let ok = answered_without_ack(&mut p);
    let (call_id, ours, theirs) = dialog_of(&ok);
    p.inject(&format!(
        "INVITE sip:room@127.0.0.1:5062 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bKearly\r\nFrom: <sip:carol@127.0.0.1>;tag=carol\r\nTo: <sip:room@127.0.0.1>\r\nCall-ID: replacing\r\nCSeq: 1 INVITE\r\nReplaces: {call_id};to-tag={ours};from-tag={theirs}\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    ));
    assert!(p.responses_to_a().last().unwrap().starts_with("SIP/2.0 481"));
}
