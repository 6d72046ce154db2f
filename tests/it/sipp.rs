//! Interop with sipp (Debian package sip-tester), a SIP tester nobody here wrote.
//!
//! `.ci/run` installs sipp. Without it these tests fail, unless
//! SIPBRIDGE_SKIP_SIPP=1 says to skip them (for machines that cannot install it).

use std::io::{BufRead, BufReader};
use std::net::UdpSocket;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use sipbridge::{Credentials, Endpoint, EndpointConfig, Event, LeaveReason};

use crate::common::{endpoint, rtp_range, wait_event};

/// Where the sip-tester package puts its RTP captures.
const SIPP_PCAPS: &str = "/usr/share/sip-tester";

fn sipp_available() -> bool {
    if Command::new("sipp").arg("-v").output().is_ok() {
        return true;
    }
    if std::env::var("SIPBRIDGE_SKIP_SIPP").as_deref() == Ok("1") {
        eprintln!("sipp is not installed; skipping as SIPBRIDGE_SKIP_SIPP=1 asks");
        return false;
    }
    panic!("sipp is not installed (apt-get install sip-tester); set SIPBRIDGE_SKIP_SIPP=1 to skip");
}

fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A working directory with `pcap/` holding the package's captures, as the
/// built-in uac_pcap scenario expects.
fn pcap_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sipbridge-sipp-{}", std::process::id()));
    let pcap = dir.join("pcap");
    std::fs::create_dir_all(&pcap).unwrap();
    for name in ["g711a.pcap", "dtmf_2833_1.pcap"] {
        std::fs::copy(PathBuf::from(SIPP_PCAPS).join(name), pcap.join(name)).expect("sip-tester's pcaps");
    }
    dir
}

/// `sipbridge serve` as a child process; its stdout lines arrive on `lines`.
struct Server {
    child: Child,
    lines: mpsc::Receiver<String>,
    /// Every line read so far, in order.
    seen: std::cell::RefCell<Vec<String>>,
    port: u16,
}

impl Server {
    fn start() -> Self {
        Self::start_with(&[])
    }

    /// `sipbridge serve` with `extra` flags.
    fn start_with(extra: &[&str]) -> Self {
        let port = free_udp_port();
        let range = rtp_range();
        let mut child = Command::new(env!("CARGO_BIN_EXE_sipbridge"))
            .args([
                "serve",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--rtp-ports",
                &format!("{}-{}", range.start(), range.end()),
            ])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let (tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let server = Self { child, lines, seen: Default::default(), port };
        server.expect("listening on", Duration::from_secs(5));
        server
    }

    /// Waits for a line containing `text`, returning it.
    fn expect(&self, text: &str, timeout: Duration) -> String {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.borrow_mut().push(line.clone());
                    if line.contains(text) {
                        return line;
                    }
                }
                Err(_) => panic!("sipbridge serve never printed {text:?}"),
            }
        }
    }

    fn terminate(&mut self) -> std::process::ExitStatus {
        let sent = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().unwrap();
        assert!(sent.success());
        self.child.wait().unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs one sipp UAC call (`-sn NAME` or `-sf FILE`) to `target` as
/// `service` (the Request-URI user), with `extra` arguments, on fresh ports.
fn run_uac(target: &str, scenario: [&str; 2], service: &str, extra: &[&str]) -> std::process::Output {
    let (port, media_port) = (free_udp_port().to_string(), free_udp_port().to_string());
    let mut args = vec![scenario[0], scenario[1], target, "-s", service, "-m", "1", "-i", "127.0.0.1", "-p", &port];
    args.extend(["-mp", &media_port, "-timeout", "30s", "-timeout_error", "-nostdin"]);
    args.extend(extra);
    run_sipp(&args, &pcap_dir())
}

fn assert_sipp_succeeded(output: &std::process::Output, what: &str) {
    assert!(
        output.status.success(),
        "sipp {what} failed: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

fn run_sipp(args: &[&str], dir: &PathBuf) -> std::process::Output {
    Command::new("sipp").args(args).current_dir(dir).stdin(Stdio::null()).output().expect("sipp runs")
}

/// Starts sipp as a callee for one call with tests/sipp/`scenario` (or
/// sipp's built-in `uas`), and returns it with the port it listens on, once
/// it has had time to bind.
fn start_uas(scenario: &str) -> (std::thread::JoinHandle<std::process::Output>, u16) {
    let scenario = match scenario {
        "uas" => ["-sn".to_string(), "uas".to_string()],
        file => ["-sf".to_string(), format!("{}/tests/sipp/{file}", env!("CARGO_MANIFEST_DIR"))],
    };
    let (port, dir) = (free_udp_port(), pcap_dir());
    let sipp = std::thread::spawn(move || {
        let port = port.to_string();
        let [option, name] = &scenario;
        run_sipp(&[option, name, "-i", "127.0.0.1", "-p", &port, "-m", "1", "-timeout", "30s", "-nostdin"], &dir)
    });
    std::thread::sleep(Duration::from_millis(300));
    (sipp, port)
}

/// Runs one sipp UAC call into `room` of `server` with `scenario` (`-sn NAME`
/// or `-sf FILE`) and `extra` arguments, checks that sipp succeeded and that the server logged the
/// caller joining and hanging up, and returns the server's "left" line.
fn uac_call(server: &Server, scenario: [&str; 2], room: &str, extra: &[&str]) -> String {
    let output = run_uac(&format!("127.0.0.1:{}", server.port), scenario, room, extra);
    assert_sipp_succeeded(&output, "uac");
    let joined = server.expect(&format!("joined room={room}"), Duration::from_secs(2));
    assert!(joined.contains("kind=Inbound"));
    let left = server.expect(&format!("left room={room}"), Duration::from_secs(2));
    assert!(left.contains("reason=RemoteHangup"), "{left}");
    left
}

/// A counter from a "left" log line, such as `received=236`.
fn count(line: &str, name: &str) -> u64 {
    let value = line.split(&format!("{name}=")).nth(1).and_then(|v| v.split_whitespace().next());
    value.and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("no {name}= in {line}"))
}

#[test]
fn sipp_uac_with_rtp_joins_a_room_and_hangs_up() {
    if !sipp_available() {
        return;
    }
    let mut server = Server::start();
    let left = uac_call(&server, ["-sn", "uac_pcap"], "classroom", &[]);
    // sipp plays the package's g711a.pcap: 236 packets of 30 ms A-law. All must arrive on loopback.
    let received = count(&left, "received");
    assert!(received >= 236, "only {received} RTP packets reached the bridge");
    // Then dtmf_2833_1.pcap: one key press, '1' for 280 ms, in ten packets (three of them end packets).
    let digits: Vec<String> = server.seen.borrow().iter().filter(|l| l.starts_with("dtmf ")).cloned().collect();
    assert_eq!(digits.len(), 1, "{digits:?}");
    assert!(digits[0].contains("digit=1 duration_ms=280"), "{digits:?}");
    let status = server.terminate();
    assert!(status.success(), "serve exits 0 on SIGTERM: {status:?}");
}

/// The same call over TCP (sipp's `-t t1`: one connection): the INVITE, ACK
/// and BYE arrive on it and our answers go back on it.
#[test]
fn sipp_uac_over_tcp_joins_a_room_and_hangs_up() {
    if !sipp_available() {
        return;
    }
    let mut server = Server::start();
    let left = uac_call(&server, ["-sn", "uac_pcap"], "tcp-room", &["-t", "t1"]);
    assert!(count(&left, "received") >= 236, "{left}");
    assert!(server.terminate().success());
}

/// Runs scenario file `tests/sipp/NAME` as one call into `room` of a fresh
/// server (see [`uac_call`]); the server and its "left" line, or None
/// when sipp is missing and may be.
fn scenario_call(name: &str, room: &str) -> Option<(Server, String)> {
    if !sipp_available() {
        return None;
    }
    let server = Server::start();
    let scenario = format!("{}/tests/sipp/{name}", env!("CARGO_MANIFEST_DIR"));
    let left = uac_call(&server, ["-sf", &scenario], room, &[]);
    Some((server, left))
}

#[test]
fn sipp_late_offer_gets_our_offer_and_answers_in_the_ack() {
    let Some((mut server, left)) = scenario_call("uac_late_offer.xml", "late") else { return };
    // The bridge sent its audio to the port the ACK's answer named.
    let sent = count(&left, "sent");
    assert!(sent > 20, "the bridge sent {sent} RTP packets after the ACK");
    assert!(server.terminate().success());
}

/// A caller with a session timer: the 200 and the answer to its UPDATE
/// refresh restate it (sipp checks the headers).
#[test]
fn sipp_session_timer_is_restated_and_refreshed_by_update() {
    let Some((mut server, _)) = scenario_call("uac_session_timer.xml", "timed") else { return };
    assert!(server.terminate().success());
}

/// A caller with a 90 s session timer that never refreshes it: the bridge
/// sends BYE when two thirds of the interval have passed (a third before
/// expiry, at most 32 s: 60 s here), sipp answers it, and the leg leaves
/// the room with reason Timeout.
#[test]
fn sipp_session_timer_expiry_ends_the_call_with_bye() {
    if !sipp_available() {
        return;
    }
    let mut server = Server::start();
    let scenario = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sipp/uac_session_expiry.xml");
    let (port, media_port) = (free_udp_port().to_string(), free_udp_port().to_string());
    let target = format!("127.0.0.1:{}", server.port);
    let mut args = vec!["-sf", scenario, &target, "-s", "expiry", "-m", "1", "-i", "127.0.0.1", "-p", &port];
    args.extend(["-mp", &media_port, "-timeout", "90s", "-timeout_error", "-nostdin"]);
    let started = std::time::Instant::now();
    let output = run_sipp(&args, &pcap_dir());
    let took = started.elapsed();
    assert_sipp_succeeded(&output, "uac whose session expires");
    assert!((Duration::from_secs(58)..Duration::from_secs(63)).contains(&took), "BYE after {took:?}, not 60 s");
    let left = server.expect("left room=expiry", Duration::from_secs(2));
    assert!(left.contains("reason=Timeout"), "{left}");
    assert!(server.terminate().success());
}

/// A phone holds the call with a sendonly re-INVITE and resumes it with a
/// sendrecv one: the answers say recvonly and sendrecv (sipp checks), the
/// server reports both, and sends no audio while the call is held.
#[test]
fn sipp_hold_and_resume_by_re_invite() {
    let Some((mut server, left)) = scenario_call("uac_hold_resume.xml", "hold") else { return };
    let holds: Vec<String> = server.seen.borrow().iter().filter(|l| l.starts_with("hold ")).cloned().collect();
    assert_eq!(holds.len(), 2, "{holds:?}");
    assert!(holds[0].contains("held=true") && holds[1].contains("held=false"), "{holds:?}");
    // About 2 s of the 4 s call were not held: 100 packets of 20 ms, not 200.
    let sent = count(&left, "sent");
    assert!((60..160).contains(&sent), "the bridge sent {sent} RTP packets");
    assert!(server.terminate().success());
}

/// A room that requires authentication: sipp answers the 401 with its own
/// digest code; the right password joins, a wrong one is challenged again
/// and never joins.
#[test]
fn sipp_caller_authenticates_with_digest() {
    if !sipp_available() {
        return;
    }
    let mut server = Server::start_with(&["--require-auth", "--user", "alice:secret"]);
    let scenario = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sipp/uac_digest.xml");
    let target = format!("127.0.0.1:{}", server.port);
    for (password, room) in [("secret", "members"), ("guess", "intruders")] {
        let output = run_uac(&target, ["-sf", scenario], room, &["-au", "alice", "-ap", password]);
        assert_sipp_succeeded(&output, &format!("uac with password {password}"));
    }
    server.expect("left room=members", Duration::from_secs(2));
    assert!(server.seen.borrow().iter().all(|l| !l.contains("room=intruders")), "a wrong password joined");
    assert!(server.terminate().success());
}

/// `serve --config` with the commented example: its users (one given by
/// HA1 hashes) and rooms with their policy, the flags overriding its address.
#[test]
fn serve_reads_the_example_config() {
    if !sipp_available() {
        return;
    }
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/sipbridge.toml");
    let mut server = Server::start_with(&["--config", example]);
    let scenario = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sipp/uac_digest.xml");
    let target = format!("127.0.0.1:{}", server.port);
    let output = run_uac(&target, ["-sf", scenario], "board", &["-au", "bob", "-ap", "secret"]);
    assert_sipp_succeeded(&output, "uac into board as bob");
    server.expect("left room=board", Duration::from_secs(2));
    // A room a caller creates takes [room_policy]: its callers join muted.
    let output = run_uac(&target, ["-sn", "uac"], "hallway", &["-d", "200"]);
    assert_sipp_succeeded(&output, "uac into a room it creates");
    server.expect("joined room=hallway", Duration::from_secs(2));
    server.expect("Muted { conference: \"hallway\"", Duration::from_secs(2));
    server.expect("left room=hallway", Duration::from_secs(2));
    assert!(server.terminate().success());
}

#[test]
fn serve_hangs_up_every_leg_on_sigterm() {
    if !sipp_available() {
        return;
    }
    let dir = pcap_dir();
    let mut server = Server::start();
    let port = server.port;
    // A uac that would stay 8 s in the call: the server's BYE ends it first.
    let sipp = std::thread::spawn(move || {
        run_sipp(
            &[
                "-sn",
                "uac_pcap",
                &format!("127.0.0.1:{port}"),
                "-s",
                "room",
                "-m",
                "1",
                "-i",
                "127.0.0.1",
                "-p",
                &free_udp_port().to_string(),
                "-mp",
                &free_udp_port().to_string(),
                "-timeout",
                "30s",
                "-nostdin",
            ],
            &dir,
        )
    });
    server.expect("joined room=room", Duration::from_secs(5));
    let status = server.terminate();
    assert!(status.success(), "serve exits 0: {status:?}");
    let left = server.expect("left room=room", Duration::from_secs(1));
    assert!(left.contains("reason=EndpointStopped"), "{left}");
    let output = sipp.join().unwrap();
    // The built-in uac scenario does not expect a BYE from the far end: it counts the call as failed
    // on the unexpected message. What matters is that the BYE reached it.
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("BYE") || stdout.contains("BYE"), "sipp saw no BYE:\n{stdout}\n{stderr}");
}

/// sipp as a callee that demands digest authentication: the bridge answers
/// the 401 with the right password (sipp's verifyauth checks it) and gets
/// the call; with a wrong one it gets 403 and reports the dial failed.
#[test]
fn sipp_uas_challenges_a_dial_out_with_digest() {
    if !sipp_available() {
        return;
    }
    for (password, answered) in [("secret", true), ("wrong", false)] {
        let (sipp, uas_port) = start_uas("uas_digest.xml");
        let bridge = endpoint();
        let room = bridge.create_conference("billing").unwrap();
        let credentials = Credentials { username: "alice".into(), password: password.into() };
        let leg = room.dial_with_credentials(&format!("sip:agent@127.0.0.1:{uas_port}"), credentials).unwrap();
        let outcome = wait_event(&bridge, Duration::from_secs(5), |e| match e {
            Event::Answered { .. } => Some(Ok(())),
            Event::DialFailed { status, .. } => Some(Err(*status)),
            _ => None,
        });
        if answered {
            assert_eq!(outcome, Ok(()), "the right password gets the call");
            leg.hangup().unwrap();
            wait_event(&bridge, Duration::from_secs(5), |e| matches!(e, Event::ParticipantLeft { .. }).then_some(()));
        } else {
            assert_eq!(outcome, Err(403), "a wrong password is refused, and not tried again");
        }
        assert_sipp_succeeded(&sipp.join().unwrap(), &format!("uas with password {password}"));
    }
}

/// A phone registers with the built-in registrar (digest, as the user it
/// registers; a wrong password is challenged again and binds nothing), and
/// the app reaches it by its address of record; unknown and unregistered
/// users fail with 404 and 480.
#[test]
fn a_registered_phone_is_dialled_by_its_address_of_record() {
    if !sipp_available() {
        return;
    }
    let bridge = endpoint();
    bridge.add_user("alice", "secret").unwrap();
    bridge.add_user("carol", "secret").unwrap();
    // The phone's answering side: sipp's built-in uas on the port it registers.
    let (phone, phone_port) = start_uas("uas");
    let (target, contact_port) = (bridge.local_addr().to_string(), phone_port.to_string());
    let wrong = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sipp/uac_register_wrong_password.xml");
    let extra = ["-au", "alice", "-ap", "guess", "-key", "contact_port", &contact_port];
    assert_sipp_succeeded(&run_uac(&target, ["-sf", wrong], "alice", &extra), "register with a wrong password");
    assert!(bridge.registrations("alice").is_empty(), "a wrong password bound a contact");
    let scenario = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sipp/uac_register.xml");
    let extra = ["-au", "alice", "-ap", "secret", "-key", "contact_port", &contact_port];
    assert_sipp_succeeded(&run_uac(&target, ["-sf", scenario], "alice", &extra), "register");
    let contacts = bridge.registrations("alice");
    assert_eq!(contacts.len(), 1);
    assert!(contacts[0].contains(&format!("alice@127.0.0.1:{phone_port}")), "{contacts:?}");
    let room = bridge.create_conference("team").unwrap();
    for (user, status) in [("bob", 404), ("carol", 480)] {
        room.dial(&format!("sip:{user}@sipbridge")).unwrap();
        let failed = wait_event(&bridge, Duration::from_secs(5), |e| match e {
            Event::DialFailed { status, .. } => Some(*status),
            _ => None,
        });
        assert_eq!(failed, status, "{user}");
    }
    let alice = room.dial("sip:alice@sipbridge").unwrap();
    wait_event(&bridge, Duration::from_secs(5), |e| matches!(e, Event::Answered { .. }).then_some(()));
    alice.hangup().unwrap();
    wait_event(&bridge, Duration::from_secs(5), |e| matches!(e, Event::ParticipantLeft { .. }).then_some(()));
    assert_sipp_succeeded(&phone.join().unwrap(), "uas answering alice's calls");
}

/// Registers a phone of alice's (password "secret") with sipp's
/// tests/sipp/`scenario`, its Contact at `contact_port`, with `extra` options.
fn register_alice(bridge: &Endpoint, scenario: &str, contact_port: u16, extra: &[&str]) {
    let scenario = format!("{}/tests/sipp/{scenario}", env!("CARGO_MANIFEST_DIR"));
    let port = contact_port.to_string();
    let mut options = vec!["-au", "alice", "-ap", "secret", "-key", "contact_port", &port];
    options.extend(extra);
    let output = run_uac(&bridge.local_addr().to_string(), ["-sf", &scenario], "alice", &options);
    assert_sipp_succeeded(&output, "register");
}

/// Dials alice into room "team" and waits for one of her phones to answer.
fn dial_alice(bridge: &Endpoint) -> sipbridge::Participant {
    let alice = bridge.create_conference("team").unwrap().dial("sip:alice@sipbridge").unwrap();
    let outcome = wait_event(bridge, Duration::from_secs(5), |e| match e {
        Event::Answered { .. } => Some(Ok(())),
        Event::DialFailed { status, .. } => Some(Err(*status)),
        _ => None,
    });
    assert_eq!(outcome, Ok(()), "alice answers");
    alice
}

/// Alice registers two phones (two sipp REGISTERs with their own
/// Contacts). Dialling her rings both at once: one rings on (sipp, 180)
/// and the other answers (sipp's uas); the ringing one gets CANCEL and
/// 487s it (sipp checks), and the call stands on the answered phone until
/// the app hangs up.
#[test]
fn dialling_a_user_with_two_phones_rings_both_and_cancels_the_one_not_answering() {
    if !sipp_available() {
        return;
    }
    let bridge = endpoint();
    bridge.add_user("alice", "secret").unwrap();
    let (ringing, ringing_port) = start_uas("uas_ringing.xml");
    let (answering, answering_port) = start_uas("uas");
    for port in [ringing_port, answering_port] {
        register_alice(&bridge, "uac_register.xml", port, &[]);
    }
    assert_eq!(bridge.registrations("alice").len(), 2);
    let alice = dial_alice(&bridge);
    assert_sipp_succeeded(&ringing.join().unwrap(), "the phone that rang and was cancelled");
    assert_eq!(alice.info().unwrap().state, sipbridge::ParticipantState::Connected);
    alice.hangup().unwrap();
    let reason = wait_event(&bridge, Duration::from_secs(5), |e| match e {
        Event::ParticipantLeft { reason, .. } => Some(*reason),
        Event::DialFailed { .. } => Some(LeaveReason::Cancelled),
        _ => None,
    });
    assert_eq!(reason, LeaveReason::LocalHangup);
    assert_sipp_succeeded(&answering.join().unwrap(), "the phone that answered");
}

/// Alice's phones registered with q-values (RFC 3261 §16.6): the desk
/// phone (q=1.0, sipp answering 503) rings first; only when it fails does
/// the next group ring, her softphone (q=0.5, sipp's uas), which answers;
/// her mobile (q=0.1, a socket of the test's) never gets an INVITE.
#[test]
fn a_user_s_phones_ring_by_q_value_the_next_only_when_the_first_fail() {
    if !sipp_available() {
        return;
    }
    let bridge = endpoint();
    bridge.add_user("alice", "secret").unwrap();
    let (desk, desk_port) = start_uas("uas_unavailable.xml");
    let (soft, soft_port) = start_uas("uas");
    let mobile = UdpSocket::bind("127.0.0.1:0").unwrap();
    mobile.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    for (port, q) in [(desk_port, "1.0"), (soft_port, "0.5"), (mobile.local_addr().unwrap().port(), "0.1")] {
        register_alice(&bridge, "uac_register_q.xml", port, &["-key", "q", q]);
    }
    let alice = dial_alice(&bridge);
    assert_sipp_succeeded(&desk.join().unwrap(), "the desk phone answering 503");
    assert!(mobile.recv(&mut [0u8; 2048]).is_err(), "the mobile was rung");
    alice.hangup().unwrap();
    wait_event(&bridge, Duration::from_secs(5), |e| matches!(e, Event::ParticipantLeft { .. }).then_some(()));
    assert_sipp_succeeded(&soft.join().unwrap(), "the softphone");
}

/// A registered phone that stops answering the bridge's OPTIONS pings loses
/// its registration (fast timers: T1 10 ms, a ping every 200 ms).
#[test]
fn a_registered_phone_that_does_not_answer_pings_is_dropped() {
    if !sipp_available() {
        return;
    }
    let bridge = Endpoint::start(EndpointConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        rtp_ports: rtp_range(),
        timers: sipbridge::sip::TimerConfig { t1: Duration::from_millis(10), ..Default::default() },
        keepalive_interval: Some(Duration::from_millis(200)),
        ..Default::default()
    })
    .unwrap();
    bridge.add_user("alice", "secret").unwrap();
    // Its Contact names a port nobody listens on.
    let silent_port = free_udp_port().to_string();
    let scenario = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sipp/uac_register.xml");
    let extra = ["-au", "alice", "-ap", "secret", "-key", "contact_port", &silent_port];
    let target = bridge.local_addr().to_string();
    assert_sipp_succeeded(&run_uac(&target, ["-sf", scenario], "alice", &extra), "register");
    assert_eq!(bridge.registrations("alice").len(), 1);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !bridge.registrations("alice").is_empty() {
        assert!(std::time::Instant::now() < deadline, "the silent phone kept its registration");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn sipp_uas_answers_a_dial_out() {
    if !sipp_available() {
        return;
    }
    let dir = pcap_dir();
    let uas_port = free_udp_port();
    let sipp = {
        let dir = dir.clone();
        std::thread::spawn(move || {
            run_sipp(
                &[
                    "-sn",
                    "uas",
                    "-i",
                    "127.0.0.1",
                    "-p",
                    &uas_port.to_string(),
                    "-m",
                    "1",
                    "-timeout",
                    "30s",
                    "-nostdin",
                ],
                &dir,
            )
        })
    };
    std::thread::sleep(Duration::from_millis(300)); // let sipp bind its port
    let bridge = endpoint();
    let room = bridge.create_conference("support").unwrap();
    let leg = room.dial(&format!("sip:agent@127.0.0.1:{uas_port}")).unwrap();
    wait_event(&bridge, Duration::from_secs(5), |e| matches!(e, Event::Ringing { .. }).then_some(()));
    wait_event(&bridge, Duration::from_secs(5), |e| matches!(e, Event::Answered { .. }).then_some(()));
    std::thread::sleep(Duration::from_millis(500));
    leg.hangup().unwrap();
    let reason = wait_event(&bridge, Duration::from_secs(5), |e| match e {
        Event::ParticipantLeft { reason, .. } => Some(*reason),
        _ => None,
    });
    assert_eq!(reason, LeaveReason::LocalHangup);
    assert_sipp_succeeded(&sipp.join().unwrap(), "uas");
}

/// Runs scenario `tests/sipp/NAME` as a caller into room `room` of an
/// in-process endpoint, holds the call through the API once the caller has
/// joined, and resumes it when `resume`; returns sipp's outcome and the
/// Hold events seen.
fn held_by_the_bridge(name: &str, room: &str, resume: bool) -> Option<(std::process::Output, Vec<bool>)> {
    if !sipp_available() {
        return None;
    }
    let bridge = endpoint();
    let target = bridge.local_addr().to_string();
    let scenario = format!("{}/tests/sipp/{name}", env!("CARGO_MANIFEST_DIR"));
    let room = room.to_string();
    let sipp = std::thread::spawn(move || run_uac(&target, ["-sf", &scenario], &room, &[]));
    let joined = |e: &Event| match e {
        Event::ParticipantJoined { participant, kind: sipbridge::ParticipantKind::Inbound, .. } => Some(*participant),
        _ => None,
    };
    let participant = wait_event(&bridge, Duration::from_secs(10), joined);
    let conference = bridge.conferences().pop().unwrap();
    let leg = bridge.conference(&conference).unwrap().participant(participant).unwrap();
    let hold = |e: &Event| match e {
        Event::Hold { held, .. } => Some(*held),
        _ => None,
    };
    let mut holds = Vec::new();
    leg.set_held(true).unwrap();
    holds.push(wait_event(&bridge, Duration::from_secs(10), hold));
    assert!(leg.info().unwrap().on_hold);
    if resume {
        leg.set_held(false).unwrap();
        holds.push(wait_event(&bridge, Duration::from_secs(10), hold));
    }
    let left = wait_event(&bridge, Duration::from_secs(10), |e| match e {
        Event::ParticipantLeft { reason, .. } => Some(*reason),
        _ => None,
    });
    assert_eq!(left, LeaveReason::RemoteHangup);
    Some((sipp.join().unwrap(), holds))
}

/// The bridge holds a caller (an inactive re-offer, the codec and payload
/// type kept) and resumes it (sendrecv); sipp checks both offers.
#[test]
fn sipp_caller_is_held_and_resumed_by_the_bridge() {
    let Some((output, holds)) = held_by_the_bridge("uac_held_by_bridge.xml", "held", true) else { return };
    assert_sipp_succeeded(&output, "uac held by the bridge");
    assert_eq!(holds, [true, false]);
}

/// Glare: the bridge's hold crosses the caller's own re-INVITE; each gets
/// 491, and the bridge's second try, within the 2 s the RFC gives the side
/// that did not make the call, goes through.
#[test]
fn sipp_glare_is_refused_with_491_and_retried() {
    let Some((output, holds)) = held_by_the_bridge("uac_glare.xml", "glare", false) else { return };
    assert_sipp_succeeded(&output, "uac glare");
    assert_eq!(holds, [true]);
}

/// sipp transfers the bridge (REFER, RFC 3515): the app accepts, the
/// target (another endpoint) is dialled into the caller's room, and sipp
/// gets 202 and NOTIFYs of 100 and 200 (it checks the sipfrags and the
/// subscription's end) before it hangs up.
#[test]
fn sipp_refer_is_offered_to_the_app_and_notified() {
    if !sipp_available() {
        return;
    }
    let (bridge, target) = (endpoint(), endpoint());
    let bridge_addr = bridge.local_addr().to_string();
    let target_uri = target.room_uri("sales");
    let scenario = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sipp/uac_refer.xml");
    let sipp =
        std::thread::spawn(move || run_uac(&bridge_addr, ["-sf", scenario], "lobby", &["-set", "target", &target_uri]));
    let (participant, asked) = wait_event(&bridge, Duration::from_secs(10), |e| match e {
        Event::TransferRequested { participant, target, .. } => Some((*participant, target.clone())),
        _ => None,
    });
    assert_eq!(asked, target.room_uri("sales"));
    bridge.conference("lobby").unwrap().participant(participant).unwrap().accept_transfer().unwrap();
    wait_event(&target, Duration::from_secs(5), |e| {
        matches!(e, Event::ParticipantJoined { kind: sipbridge::ParticipantKind::Inbound, .. }).then_some(())
    });
    assert_sipp_succeeded(&sipp.join().unwrap(), "uac refer");
    let lobby = bridge.conference("lobby").unwrap().participants().unwrap();
    assert!(lobby.iter().any(|p| p.remote.as_deref() == Some(target.room_uri("sales").as_str())), "{lobby:?}");
}

/// Ten calls with a fifth of all messages lost on the way (sipp's `-lost
/// 20`, both directions): lost INVITEs, ACKs, BYEs and answers are all
/// recovered by retransmission, ours (the 2xx until its ACK, the BYE's
/// answer again) and sipp's, and every call joins and leaves as hung up.
/// The scenario is sipp's built-in uac with each response tied to its
/// transaction (tests/sipp/uac_lossy.xml says why).
#[test]
fn sipp_calls_survive_lost_acks_byes_and_answers() {
    if !sipp_available() {
        return;
    }
    let mut server = Server::start();
    let (port, media_port) = (free_udp_port().to_string(), free_udp_port().to_string());
    let target = format!("127.0.0.1:{}", server.port);
    let scenario = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sipp/uac_lossy.xml");
    let args = ["-sf", scenario, &target, "-s", "lossy", "-m", "10", "-r", "5", "-l", "5", "-lost", "20"];
    let mut args = args.to_vec();
    args.extend(["-i", "127.0.0.1", "-p", &port, "-mp", &media_port, "-timeout", "90s", "-nostdin"]);
    let output = run_sipp(&args, &pcap_dir());
    assert_sipp_succeeded(&output, "uac with 20 % loss");
    for _ in 0..10 {
        let left = server.expect("left room=lossy", Duration::from_secs(40));
        assert!(left.contains("reason=RemoteHangup"), "{left}");
    }
    assert!(server.terminate().success());
}

/// A CANCEL that crosses the bridge's answer gets 200 and changes nothing:
/// the call stands until the caller's BYE (sipp checks the CSeqs).
#[test]
fn sipp_cancel_racing_the_answer_leaves_the_call_up() {
    let Some((mut server, _)) = scenario_call("uac_cancel_race.xml", "race") else { return };
    assert!(server.terminate().success());
}

/// A desk phone (sipp) watches a room's roster (RFC 4575 over RFC 6665):
/// it subscribes and gets the room as it is (the app's own participant),
/// hears of a guest the app dials in until the guest is connected, then
/// unsubscribes and gets the last NOTIFY; sipp checks the documents.
#[test]
fn sipp_watches_a_room_s_roster_by_conference_events() {
    if !sipp_available() {
        return;
    }
    let config = |port: u16, rtp: u16| EndpointConfig {
        listen: ([127, 0, 0, 1], port).into(),
        sample_rate: crate::common::RATE,
        rtp_ports: rtp..=rtp + 19,
        ..Default::default()
    };
    let (bridge, guest) =
        (Endpoint::start(config(47560, 47600)).unwrap(), Endpoint::start(config(47561, 47620)).unwrap());
    let room = bridge.create_conference("standup").unwrap();
    let _app = room.add_local().unwrap();
    let dir = std::env::temp_dir();
    let log = dir.join(format!("sipbridge-conference-events-{}.log", std::process::id()));
    let _ = std::fs::remove_file(&log);
    let scenario = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sipp/uac_subscribe_conference.xml");
    let args = [
        "-sf",
        scenario,
        "127.0.0.1:47560",
        "-s",
        "standup",
        "-m",
        "1",
        "-i",
        "127.0.0.1",
        "-p",
        "47570",
        "-mp",
        "47572",
        "-timeout",
        "30s",
        "-timeout_error",
        "-nostdin",
        "-trace_msg",
        "-message_file",
    ]
    .map(str::to_string)
    .into_iter()
    .chain([log.display().to_string()])
    .collect::<Vec<_>>();
    let sipp = std::thread::spawn(move || run_sipp(&args.iter().map(String::as_str).collect::<Vec<_>>(), &dir));
    // The guest is dialled once sipp has the first roster, which its message log shows.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(&log).unwrap_or_default().contains("<user-count>1</user-count>") {
        assert!(std::time::Instant::now() < deadline, "sipp never got the first NOTIFY");
        std::thread::sleep(Duration::from_millis(20));
    }
    room.dial(&guest.room_uri("guest")).unwrap();
    assert_sipp_succeeded(&sipp.join().unwrap(), "uac subscribing to conference events");
    let _ = std::fs::remove_file(&log);
}

/// A phone changes codec mid-call (re-INVITE offering only PCMA after a
/// PCMU call): the answer takes PCMA (sipp checks), and from then on the
/// bridge sends the room's audio as PCMA, still the app's tone, under the
/// same SSRC.
#[test]
fn sipp_changes_codec_by_re_invite() {
    codec_change_call("uac_codec_change.xml", |_| ());
}

/// The app changes a phone's codec: the bridge's re-INVITE offers PCMA
/// alone (sipp checks), sipp answers PCMA, and the bridge's audio follows
/// as above.
#[test]
fn the_app_changes_a_phone_s_codec_by_re_invite() {
    codec_change_call("uac_codec_changed_by_bridge.xml", |leg| leg.set_codec(sipbridge::CodecKind::Pcma).unwrap());
}

/// RFC 3263 §4.3 failover on 503: the first server SRV names for
/// `sip:agent@busy.test;transport=udp` (sipp) answers 503, and the call
/// goes to the second (another endpoint) and is answered.
#[test]
fn a_503_from_the_first_srv_target_sends_the_call_to_the_next() {
    use crate::transport::{endpoint_asking, loopback, record, srv_at, DnsServer};
    if !sipp_available() {
        return;
    }
    let (sipp, uas_port) = start_uas("uas_unavailable.xml");
    let callee = endpoint();
    callee.create_conference("agent").unwrap();
    let dns = DnsServer::start(vec![
        record("_sip._udp.busy.test.", srv_at(10, uas_port, "down.busy.test.")),
        record("_sip._udp.busy.test.", srv_at(20, callee.local_addr().port(), "up.busy.test.")),
        record("down.busy.test.", loopback()),
        record("up.busy.test.", loopback()),
    ]);
    let caller = endpoint_asking(&dns);
    let leg = caller.create_conference("out").unwrap().dial("sip:agent@busy.test;transport=udp").unwrap();
    let outcome = wait_event(&caller, Duration::from_secs(5), |e| match e {
        Event::Answered { .. } => Some(Ok(())),
        Event::DialFailed { status, .. } => Some(Err(*status)),
        _ => None,
    });
    assert_eq!(outcome, Ok(()), "the second server answers");
    assert_sipp_succeeded(&sipp.join().unwrap(), "uas answering 503");
    leg.hangup().unwrap();
    wait_event(&callee, Duration::from_secs(5), |e| matches!(e, Event::ParticipantLeft { .. }).then_some(()));
}

/// A dial answered twice, as a forking proxy delivers it (RFC 3261
/// §13.2.2.4; sipp plays both callees): the bridge ACKs both 2xx, ends the
/// second dialog with BYE at once and keeps the call on the first, which
/// its hangup ends (sipp checks each request's dialog).
#[test]
fn a_forked_dial_keeps_the_first_answer_and_ends_the_second() {
    if !sipp_available() {
        return;
    }
    let (sipp, uas_port) = start_uas("uas_forked.xml");
    let bridge = endpoint();
    let room = bridge.create_conference("forked").unwrap();
    let leg = room.dial(&format!("sip:agent@127.0.0.1:{uas_port}")).unwrap();
    wait_event(&bridge, Duration::from_secs(5), |e| matches!(e, Event::Answered { .. }).then_some(()));
    std::thread::sleep(Duration::from_millis(500));
    let info = leg.info().unwrap();
    assert_eq!(info.state, sipbridge::ParticipantState::Connected, "the call stands on the first answer");
    leg.hangup().unwrap();
    let reason = wait_event(&bridge, Duration::from_secs(5), |e| match e {
        Event::ParticipantLeft { reason, .. } => Some(*reason),
        _ => None,
    });
    assert_eq!(reason, LeaveReason::LocalHangup);
    assert_sipp_succeeded(&sipp.join().unwrap(), "uas answering twice");
}

/// Attended transfer into a room (RFC 3891): a second sipp call whose
/// INVITE carries Replaces with the first call's dialog takes its seat.
/// The room is locked and the first caller muted and made moderator; the
/// newcomer gets in all the same, muted and moderator, and the first call
/// gets the bridge's BYE and leaves with reason Replaced. A Replaces that
/// names no call gets 481.
#[test]
fn a_call_with_replaces_takes_the_seat_of_the_call_it_names() {
    if !sipp_available() {
        return;
    }
    let bridge = endpoint();
    let room = bridge.create_conference("seat").unwrap();
    let sink = UdpSocket::bind("127.0.0.1:0").unwrap();
    let (target, rtp) = (bridge.local_addr().to_string(), sink.local_addr().unwrap().port().to_string());
    let sf = |name: &str| format!("{}/tests/sipp/{name}", env!("CARGO_MANIFEST_DIR"));
    let (replaced, header) = call_to_be_replaced(&target, "seat", &rtp);
    let first = wait_event(&bridge, Duration::from_secs(5), |e| match e {
        Event::ParticipantJoined { participant, .. } => Some(*participant),
        _ => None,
    });
    let seat = room.participant(first).unwrap();
    seat.set_muted(true).unwrap();
    seat.set_moderator(true).unwrap();
    room.lock().unwrap();

    // A Replaces naming no call is refused with 481, and nobody leaves.
    let wrong = header.replacen(';', "x;", 1);
    let refused =
        run_uac(&target, ["-sf", &sf("uac_replaces.xml")], "seat", &["-set", "rtp", &rtp, "-set", "replaces", &wrong]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && stderr.contains("received 'SIP/2.0 481"), "{stderr}");
    assert_eq!(room.participants().unwrap().len(), 1);

    let replacing = {
        let (scenario, rtp) = (sf("uac_replaces.xml"), rtp.clone());
        std::thread::spawn(move || {
            run_uac(&target, ["-sf", &scenario], "seat", &["-set", "rtp", &rtp, "-set", "replaces", &header])
        })
    };
    // The newcomer is read while its call lasts (a second).
    let (mut joined, mut left) = (None, None);
    while joined.is_none() || left.is_none() {
        wait_event(&bridge, Duration::from_secs(5), |e| {
            match e {
                Event::ParticipantJoined { participant, conference, .. } if *participant != first => {
                    let info = room.participant(*participant).and_then(|p| p.info());
                    joined = Some((conference.clone(), info));
                }
                Event::ParticipantLeft { participant, reason, .. } if *participant == first => left = Some(*reason),
                _ => {}
            }
            Some(())
        });
    }
    assert_sipp_succeeded(&replacing.join().unwrap(), "uac with Replaces");
    assert_sipp_succeeded(&replaced.join().unwrap(), "uac replaced");
    let (conference, info) = joined.unwrap();
    assert_eq!(conference, "seat");
    let info = info.expect("the newcomer's info while it is in");
    assert!(info.muted && info.moderator, "muted {} moderator {}", info.muted, info.moderator);
    assert_eq!(info.admission, sipbridge::Admission::Admitted);
    assert_eq!(left, Some(LeaveReason::Replaced));
}

/// Starts a sipp call (uac_replaced.xml) into `room` at `target` that waits
/// to be replaced, and returns it with the Replaces header value naming
/// its dialog at the bridge, which sipp logs once the call is up.
fn call_to_be_replaced(target: &str, room: &str, rtp: &str) -> (std::thread::JoinHandle<std::process::Output>, String) {
    let log = std::env::temp_dir().join(format!("sipbridge-replaced-{}-{room}.log", std::process::id()));
    let _ = std::fs::remove_file(&log);
    let scenario = format!("{}/tests/sipp/uac_replaced.xml", env!("CARGO_MANIFEST_DIR"));
    let (target, room, rtp, log_file) =
        (target.to_string(), room.to_string(), rtp.to_string(), log.to_str().unwrap().to_string());
    let call = std::thread::spawn(move || {
        run_uac(&target, ["-sf", &scenario], &room, &["-set", "rtp", &rtp, "-trace_logs", "-log_file", &log_file])
    });
    let header = (0..100)
        .find_map(|_| {
            std::thread::sleep(Duration::from_millis(50));
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            text.lines().find_map(|l| l.trim().strip_prefix("replaces=").map(str::to_string))
        })
        .expect("sipp logs the dialog to replace");
    let _ = std::fs::remove_file(&log);
    (call, header)
}

/// Attended transfer across two bridges (RFC 3891 with RFC 3515): a phone
/// in room "sales" of one bridge (sipp, uac_replaced.xml) and in room
/// "lobby" of another (sipp, uac_refer.xml) transfers the lobby to its
/// sales call: its REFER's Refer-To names sales with the escaped Replaces
/// header of that call. The app lets the lobby bridge call it; the sales
/// bridge puts that call in the phone's seat and sends the phone BYE
/// (reason Replaced): one call now joins the two rooms.
#[test]
fn attended_transfer_joins_two_rooms_by_one_call_in_the_transferor_s_seat() {
    if !sipp_available() {
        return;
    }
    let (sales, lobby) = (endpoint(), endpoint());
    sales.create_conference("sales").unwrap();
    let sink = UdpSocket::bind("127.0.0.1:0").unwrap();
    let rtp = sink.local_addr().unwrap().port().to_string();
    let (phone_in_sales, header) = call_to_be_replaced(&sales.local_addr().to_string(), "sales", &rtp);
    let first = wait_event(&sales, Duration::from_secs(5), |e| match e {
        Event::ParticipantJoined { participant, .. } => Some(*participant),
        _ => None,
    });
    let escaped = header.replace('@', "%40").replace(';', "%3B").replace('=', "%3D");
    let refer_to = format!("{}?Replaces={escaped}", sales.room_uri("sales"));
    let scenario = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sipp/uac_refer.xml");
    let phone_in_lobby = {
        let (lobby_addr, refer_to) = (lobby.local_addr().to_string(), refer_to.clone());
        std::thread::spawn(move || run_uac(&lobby_addr, ["-sf", scenario], "lobby", &["-set", "target", &refer_to]))
    };
    let (participant, asked) = wait_event(&lobby, Duration::from_secs(10), |e| match e {
        Event::TransferRequested { participant, target, .. } => Some((*participant, target.clone())),
        _ => None,
    });
    assert_eq!(asked, refer_to);
    lobby.conference("lobby").unwrap().participant(participant).unwrap().accept_transfer().unwrap();
    let (mut joined, mut left) = (None, None);
    while joined.is_none() || left.is_none() {
        wait_event(&sales, Duration::from_secs(5), |e| {
            match e {
                Event::ParticipantJoined { participant, conference, remote, .. } if *participant != first => {
                    joined = Some((conference.clone(), remote.clone()))
                }
                Event::ParticipantLeft { participant, reason, .. } if *participant == first => left = Some(*reason),
                _ => {}
            }
            Some(())
        });
    }
    assert_eq!(left, Some(LeaveReason::Replaced));
    let (conference, remote) = joined.unwrap();
    assert_eq!(conference, "sales");
    assert_eq!(remote, format!("sip:lobby@{}", lobby.local_addr()), "the lobby bridge's call");
    assert_sipp_succeeded(&phone_in_sales.join().unwrap(), "uac replaced");
    assert_sipp_succeeded(&phone_in_lobby.join().unwrap(), "uac refer with Replaces");
}

/// A phone's re-INVITEs move its telephone-event and comfort-noise payload
/// types (96 and 13, then 101 and 118), then drop both. The bridge's digits
/// and comfort noise follow each answer, and once the session has no
/// telephone-event the app's digits are refused.
#[test]
fn re_invites_move_the_event_and_comfort_noise_payload_types() {
    if !sipp_available() {
        return;
    }
    let bridge = endpoint();
    let room = bridge.create_conference("events").unwrap();
    let phone_rtp = UdpSocket::bind("127.0.0.1:0").unwrap();
    phone_rtp.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
    let (target, rtp_port) = (bridge.local_addr().to_string(), phone_rtp.local_addr().unwrap().port().to_string());
    let scenario = format!("{}/tests/sipp/uac_event_types_change.xml", env!("CARGO_MANIFEST_DIR"));
    let sipp = std::thread::spawn(move || run_uac(&target, ["-sf", &scenario], "events", &["-set", "rtp", &rtp_port]));
    let (mut buf, mut payload_types) = ([0u8; 2048], Vec::new());
    let (mut sent, mut refused) = (Vec::new(), None);
    let sipp_leg = || room.participants().unwrap().into_iter().next().and_then(|p| room.participant(p.id).ok());
    while !sipp.is_finished() {
        let Ok(_) = phone_rtp.recv(&mut buf) else { continue };
        let payload_type = buf[1] & 0x7f;
        payload_types.push(payload_type);
        // A digit once each session's comfort noise shows it is in place;
        // after the last re-INVITE, the silence goes out as PCMU.
        let session = match payload_type {
            13 => 0,
            118 => 1,
            0 if payload_types.contains(&118) => 2,
            _ => continue,
        };
        if sent.len() == session && refused.is_none() {
            let digit = ["1", "2", "3"][session];
            match sipp_leg().expect("the sipp leg").send_dtmf(digit) {
                Ok(()) => sent.push(digit),
                Err(e) => refused = Some((session, e.to_string())),
            }
        }
    }
    assert_sipp_succeeded(&sipp.join().unwrap(), "uac event payload types");
    assert_eq!(sent, ["1", "2"], "digits sent; payload types seen: {payload_types:?}");
    let (session, error) = refused.expect("the digit after telephone-event was dropped is refused");
    assert_eq!(session, 2);
    assert!(error.contains("telephone-event"), "{error}");
    // Each type in its session only: events on 96 then 101, CN on 13 then 118.
    let first = |pt| payload_types.iter().position(|&p| p == pt);
    let last = |pt| payload_types.iter().rposition(|&p| p == pt);
    let (cn_first, cn_second) = (last(13).expect("CN on 13"), first(118).expect("CN on 118"));
    assert!(cn_first < cn_second);
    let (events_first, events_second) = (first(96).expect("events on 96"), first(101).expect("events on 101"));
    assert!(last(96).unwrap() < cn_second, "an event on 96 after the re-INVITE moved it");
    assert!(events_first < cn_second && cn_second < events_second);
    assert!(last(118).unwrap() < payload_types.len() - 20, "CN on 118 after the re-INVITE dropped it");
    assert!(
        payload_types.iter().all(|pt| [0, 13, 96, 101, 118].contains(pt)),
        "unexpected payload types: {payload_types:?}"
    );
}

/// A sipp call with `scenario` into a room where the app plays a 1 kHz
/// tone, sipp's RTP going to a socket of the test's. After 25 PCMU packets
/// `switch` is called with the sipp leg. Checks that the bridge's stream
/// went from PCMU to PCMA once, under one SSRC, that the leg's codec then
/// read PCMA, and that the PCMA carries the tone at its level.
fn codec_change_call(scenario: &str, mut switch: impl FnMut(&sipbridge::Participant)) {
    if !sipp_available() {
        return;
    }
    let bridge = endpoint();
    let room = bridge.create_conference("switch").unwrap();
    let mut app = room.add_local().unwrap();
    let phone_rtp = UdpSocket::bind("127.0.0.1:0").unwrap();
    phone_rtp.set_read_timeout(Some(Duration::from_millis(5))).unwrap();
    let (target, rtp_port) = (bridge.local_addr().to_string(), phone_rtp.local_addr().unwrap().port().to_string());
    let scenario = format!("{}/tests/sipp/{scenario}", env!("CARGO_MANIFEST_DIR"));
    let sipp = std::thread::spawn(move || run_uac(&target, ["-sf", &scenario], "switch", &["-set", "rtp", &rtp_port]));
    let (mut phase, mut buf) = (0, [0u8; 2048]);
    let mut packets: Vec<(u8, u32, Vec<u8>)> = Vec::new();
    let mut codec_after_switch = None;
    let sipp_leg = || {
        let id = room.participants().unwrap().into_iter().find(|p| p.remote.is_some()).map(|p| p.id);
        id.and_then(|id| room.participant(id).ok())
    };
    while !sipp.is_finished() {
        let _ = app.write_all(&crate::common::tone_frame(1000.0, 8000.0, &mut phase), Some(Duration::from_secs(1)));
        while let Ok(n) = phone_rtp.recv(&mut buf) {
            let (payload_type, ssrc) = (buf[1] & 0x7f, u32::from_be_bytes(buf[8..12].try_into().unwrap()));
            packets.push((payload_type, ssrc, buf[12..n].to_vec()));
            if packets.len() == 25 {
                switch(&sipp_leg().expect("the sipp leg"));
            }
            if payload_type == 8 && codec_after_switch.is_none() {
                codec_after_switch = sipp_leg().and_then(|leg| leg.info().ok()).and_then(|info| info.codec);
            }
        }
    }
    assert_sipp_succeeded(&sipp.join().unwrap(), "uac codec change");
    let switch = packets.iter().position(|(pt, _, _)| *pt == 8).expect("no PCMA packet");
    assert!(switch >= 25, "only {switch} PCMU packets before the switch");
    assert!(packets[..switch].iter().all(|(pt, _, _)| *pt == 0));
    assert!(packets[switch..].iter().all(|(pt, _, _)| *pt == 8), "PCMU after the switch");
    assert!(packets.len() - switch > 20, "{} PCMA packets", packets.len() - switch);
    assert!(packets.iter().all(|(_, ssrc, _)| *ssrc == packets[0].1));
    assert_eq!(codec_after_switch, Some(sipbridge::CodecKind::Pcma));
    // The PCMA is the tone: decode the last half second (G.711 A-law).
    let alaw_to_linear = |a: u8| {
        let a = a ^ 0x55;
        let (exponent, mantissa) = ((a >> 4) & 7, (a & 0x0f) as i32);
        let magnitude = if exponent == 0 { (mantissa << 4) + 8 } else { ((mantissa << 4) + 0x108) << (exponent - 1) };
        (if a & 0x80 != 0 { magnitude } else { -magnitude }) as i16
    };
    let tail: Vec<i16> =
        packets[packets.len() - 25..].iter().flat_map(|(_, _, p)| p.iter().map(|&a| alaw_to_linear(a))).collect();
    // The app's tone, at its level (a mis-coded stream, such as μ-law sent
    // as A-law, comes out 11 dB louder) and nearly pure: a tone's Goertzel
    // power is half its mean square and a quarter of its amplitude squared.
    let tone = crate::common::tone_power_at(&tail, 1000.0, 8000);
    let mean_square = tail.iter().map(|&x| (x as f64).powi(2)).sum::<f64>() / tail.len() as f64;
    let amplitude = 2.0 * tone.sqrt();
    assert!((7000.0..9000.0).contains(&amplitude), "the tone in PCMA at amplitude {amplitude}, not 8000");
    assert!(tone > 0.45 * mean_square, "the tone in PCMA: {tone} of {mean_square}");
}
