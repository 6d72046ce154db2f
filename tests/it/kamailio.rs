//! Kamailio (Debian package kamailio) as the upstream registrar: sipbridge
//! registers an account there with digest auth, and a call that sipp
//! places to the account's address through Kamailio reaches the account's
//! room, with its audio; the registration is refreshed and removed.
//!
//! `.ci/run` installs kamailio and sipp. Without them this test fails,
//! unless SIPBRIDGE_SKIP_KAMAILIO=1 says to skip it. It uses UDP ports
//! 5390-5392 and 42500, and RTP ports 42000-42019.

use std::net::UdpSocket;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sipbridge::{Account, Endpoint, EndpointConfig, Event, LeaveReason, ParticipantKind, RegistrationState};

use crate::common::{registration, wait_event};

const KAMAILIO: &str = "127.0.0.1:5390";
const SIPBRIDGE: &str = "127.0.0.1:5391";
const SIPP_PORT: &str = "5392";
const SIPP_MEDIA_PORT: &str = "42500";
const WAIT: Duration = Duration::from_secs(10);

fn kamailio_available() -> bool {
    let found = |program: &str| Command::new(program).arg("-v").output().is_ok();
    // Debian puts kamailio in /usr/sbin, which is not always on PATH.
    if (found("kamailio") || found("/usr/sbin/kamailio")) && found("sipp") {
        return true;
    }
    if std::env::var("SIPBRIDGE_SKIP_KAMAILIO").as_deref() == Ok("1") {
        eprintln!("kamailio or sipp is not installed; skipping as SIPBRIDGE_SKIP_KAMAILIO=1 asks");
        return false;
    }
    panic!("kamailio or sipp is not installed (apt-get install kamailio sip-tester); set SIPBRIDGE_SKIP_KAMAILIO=1 to skip");
}

/// Kamailio in the foreground with the config of tests/kamailio/, in a
/// process group of its own, which is ended (by its id) when dropped.
struct Kamailio {
    child: Child,
    dir: PathBuf,
}

impl Kamailio {
    fn start(dir: &Path) -> Self {
        let template = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/kamailio/kamailio.cfg");
        let config = std::fs::read_to_string(template).unwrap().replace("LISTEN", KAMAILIO);
        let runtime = dir.join("run");
        std::fs::create_dir_all(&runtime).unwrap();
        std::fs::write(dir.join("kamailio.cfg"), config).unwrap();
        let log = std::fs::File::create(dir.join("kamailio.log")).unwrap();
        let program =
            if Command::new("kamailio").arg("-v").output().is_ok() { "kamailio" } else { "/usr/sbin/kamailio" };
        let child = Command::new(program)
            .arg("-f")
            .arg(dir.join("kamailio.cfg"))
            .arg("-P")
            .arg(dir.join("kamailio.pid"))
            .arg("-Y")
            .arg(&runtime)
            // In the foreground (its children forked as usual), logging to stderr.
            .args(["-DD", "-E"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .process_group(0)
            .spawn()
            .expect("kamailio starts");
        let kamailio = Self { child, dir: dir.to_path_buf() };
        // Up once it answers; before any registration, alice is unknown.
        let deadline = Instant::now() + Duration::from_secs(10);
        while probe_alice().is_none() {
            assert!(Instant::now() < deadline, "kamailio did not come up:\n{}", kamailio.log());
        }
        kamailio
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("kamailio.log")).unwrap_or_default()
    }
}

impl Drop for Kamailio {
    fn drop(&mut self) {
        // The main process and the children it forked share the group.
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill").args(["-TERM", "--", &group]).status();
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.child.wait();
    }
}

/// Sends Kamailio an INVITE for alice that no one will accept (no SDP, a
/// dead Contact) and returns its status line, if one came within 500 ms:
/// "404 Not Found" says alice has no registration.
fn probe_alice() -> Option<String> {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    let local = socket.local_addr().unwrap();
    let request = format!(
        "INVITE sip:alice@{KAMAILIO} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bK-probe{}\r\n\
         From: <sip:probe@{local}>;tag=probe\r\nTo: <sip:alice@{KAMAILIO}>\r\nCall-ID: probe-{}@{local}\r\n\
         CSeq: 1 INVITE\r\nContact: <sip:probe@{local}>\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n",
        local.port(),
        local.port()
    );
    socket.send_to(request.as_bytes(), KAMAILIO).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        let n = socket.recv(&mut buf).ok()?;
        let text = String::from_utf8_lossy(&buf[..n]).to_string();
        let status = text.lines().next()?.strip_prefix("SIP/2.0 ")?.to_string();
        if !status.starts_with('1') {
            return Some(status);
        }
    }
}

#[test]
fn kamailio_registers_the_account_and_routes_a_call_to_its_room() {
    if !kamailio_available() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("sipbridge-kamailio-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("pcap")).unwrap();
    std::fs::copy("/usr/share/sip-tester/g711a.pcap", dir.join("pcap/g711a.pcap")).expect("sip-tester's pcap");
    let kamailio = Kamailio::start(&dir);
    assert_eq!(probe_alice().as_deref(), Some("404 Not Found"));

    let endpoint = Endpoint::start(EndpointConfig {
        listen: SIPBRIDGE.parse().unwrap(),
        rtp_ports: 42000..=42019,
        ..Default::default()
    })
    .expect("endpoint starts");
    let account = Account {
        aor: "sip:alice@sipbridge.test".into(),
        registrar: Some(format!("sip:{KAMAILIO}")),
        password: Some("wrong".into()),
        // Under Kamailio's min_expires: its 423 raises it to 60.
        expires: 30,
        room: "upstream".into(),
        ..Default::default()
    };

    // A wrong password: challenged, answered once, challenged again: failed.
    let wrong = endpoint.register_account(account.clone()).unwrap();
    let state = wait_event(&endpoint, WAIT, registration(wrong));
    assert!(matches!(state, RegistrationState::Failed { status: 401, .. }), "{state:?}\n{}", kamailio.log());
    endpoint.unregister_account(wrong).unwrap();
    assert_eq!(wait_event(&endpoint, WAIT, registration(wrong)), RegistrationState::Unregistered);
    assert_eq!(probe_alice().as_deref(), Some("404 Not Found"));

    // The right one: 401, answer, 423, again with Expires 60, 200.
    let started = Instant::now();
    let id = endpoint.register_account(Account { password: Some("secret".into()), ..account }).unwrap();
    let state = wait_event(&endpoint, WAIT, registration(id));
    let registered_at = Instant::now();
    let took = registered_at - started;
    assert_eq!(state, RegistrationState::Registered { expires: 60 }, "{}", kamailio.log());
    eprintln!("registered with kamailio in {took:?}");

    // sipp calls alice through Kamailio, which finds our Contact.
    let scenario = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sipp/uac_via_proxy.xml");
    let output = Command::new("sipp")
        .arg("-sf")
        .arg(&scenario)
        .args([KAMAILIO, "-s", "alice", "-m", "1", "-i", "127.0.0.1", "-p", SIPP_PORT, "-mp", SIPP_MEDIA_PORT])
        .args(["-timeout", "30s", "-timeout_error", "-nostdin"])
        .current_dir(&dir)
        .stdin(Stdio::null())
        .output()
        .expect("sipp runs");
    assert!(
        output.status.success(),
        "sipp failed: {}\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
        kamailio.log()
    );
    let (room, remote) = wait_event(&endpoint, WAIT, |e| match e {
        Event::ParticipantJoined { conference, kind: ParticipantKind::Inbound, remote, .. } => {
            Some((conference.clone(), remote.clone()))
        }
        _ => None,
    });
    assert_eq!(room, "upstream");
    assert!(remote.starts_with("sip:sipp@"), "{remote}");
    let (reason, received) = wait_event(&endpoint, WAIT, |e| match e {
        Event::ParticipantLeft { reason, packets_received, .. } => Some((*reason, *packets_received)),
        _ => None,
    });
    assert_eq!(reason, LeaveReason::RemoteHangup);
    // The capture holds 236 packets of 30 ms A-law; on loopback all arrive.
    assert!(received >= 236, "only {received} RTP packets arrived");

    // The refresh, at half the 60 s granted: it carries the answer to the
    // challenge Kamailio made before (the next nonce count), which Kamailio
    // takes without challenging again.
    let challenges = |log: &str| log.matches("challenged").count();
    let before = challenges(&kamailio.log());
    std::thread::sleep((registered_at + Duration::from_secs(31)).saturating_duration_since(Instant::now()));
    let log = kamailio.log();
    assert_eq!(log.matches(", Expires 60,").count(), 2, "{log}");
    assert_eq!(challenges(&log), before, "{log}");

    // Un-registered: Kamailio no longer knows alice.
    endpoint.unregister_account(id).unwrap();
    assert_eq!(wait_event(&endpoint, WAIT, registration(id)), RegistrationState::Unregistered);
    assert_eq!(probe_alice().as_deref(), Some("404 Not Found"), "{}", kamailio.log());
    endpoint.stop();
    drop(kamailio);
    let _ = std::fs::remove_dir_all(&dir);
}
