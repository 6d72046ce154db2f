//! Interop with baresip (Debian package baresip-core), a softphone nobody here
//! wrote, through its opus and g722 modules; tests/baresip/README.md says how
//! it is driven without a sound card.
//!
//! `.ci/run` installs baresip. Without it these tests fail, unless
//! SIPBRIDGE_SKIP_BARESIP=1 says to skip them.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use sipbridge::{CodecKind, Endpoint, EndpointConfig, Event, ParticipantState};

use crate::common::{rtp_range, tone_power_at, wait_event};

fn baresip_available() -> bool {
    if Command::new("baresip").arg("-h").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok() {
        return true;
    }
    if std::env::var("SIPBRIDGE_SKIP_BARESIP").as_deref() == Ok("1") {
        eprintln!("baresip is not installed; skipping as SIPBRIDGE_SKIP_BARESIP=1 asks");
        return false;
    }
    panic!("baresip is not installed (apt-get install baresip-core); set SIPBRIDGE_SKIP_BARESIP=1 to skip");
}

/// A baresip instance in a directory of its own, playing a sine tone.
struct Baresip {
    child: Child,
    dir: PathBuf,
    sip_port: u16,
    ctrl_port: u16,
}

/// Ports for the n-th instance of this process: SIP on an even port (baresip
/// takes the next one for TLS), its control port, and 20 RTP ports.
fn ports() -> (u16, u16, u16) {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed) % 20;
    let base = 40000 + (std::process::id() % 100) as u16 * 200 + n * 10;
    let rtp = 34000 + (std::process::id() % 50) as u16 * 400 + n * 20;
    (base, base + 2, rtp)
}

impl Baresip {
    /// Starts baresip as `user`, offering and accepting only `codecs` (its
    /// names: `opus/48000/2`, `G722/16000/1`), sending a `tone_hz` sine.
    fn start(user: &str, codecs: &str, tone_hz: u32) -> Self {
        Self::start_with(user, codecs, tone_hz, None)
    }

    /// As `start`, registering with the registrar on `registrar` (its SIP
    /// port on loopback) with `password` when given, every minute.
    fn start_with(user: &str, codecs: &str, tone_hz: u32, registrar: Option<(u16, &str)>) -> Self {
        let (sip_port, ctrl_port, rtp_min) = ports();
        let dir = std::env::temp_dir().join(format!("sipbridge-baresip-{}-{user}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let recordings = dir.join("rec");
        std::fs::create_dir_all(&recordings).unwrap();
        let recipe = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/baresip");
        let fill = |template: &str, pairs: &[(&str, String)]| {
            let mut text = std::fs::read_to_string(recipe.join(template)).unwrap();
            for (key, value) in pairs {
                text = text.replace(key, value);
            }
            text
        };
        let config = fill(
            "config",
            &[
                ("@SIP_PORT@", sip_port.to_string()),
                ("@CTRL_PORT@", ctrl_port.to_string()),
                ("@RTP_MIN@", rtp_min.to_string()),
                ("@RTP_MAX@", (rtp_min + 19).to_string()),
                ("@AUDIO_SOURCE@", format!("ausine,{tone_hz}")),
                ("@REC_DIR@", recordings.display().to_string()),
            ],
        );
        let (aor_port, registration) = match registrar {
            Some((port, password)) => (port, format!("auth_pass={password};regint=60")),
            None => (sip_port, "regint=0".to_string()),
        };
        let accounts = fill(
            "accounts",
            &[
                ("@USER@", user.to_string()),
                ("@AOR_PORT@", aor_port.to_string()),
                ("@REGISTRATION@", registration),
                ("@ANSWERMODE@", "auto".to_string()),
                ("@CODECS@", codecs.to_string()),
            ],
        );
        std::fs::write(dir.join("config"), config).unwrap();
        std::fs::write(dir.join("accounts"), accounts).unwrap();
        let log = std::fs::File::create(dir.join("log")).unwrap();
        let child = Command::new("baresip")
            // -t: a safety net; it quits (with a BYE) on its own after two minutes.
            .args(["-f", &dir.display().to_string(), "-t", "120"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("baresip starts");
        let baresip = Self { child, dir, sip_port, ctrl_port };
        baresip.wait_log("baresip is ready", Duration::from_secs(5));
        baresip
    }

    fn log(&self) -> String {
        // Strip the status line it redraws with \r.
        std::fs::read_to_string(self.dir.join("log")).unwrap_or_default().replace('\r', "\n")
    }

    fn wait_log(&self, text: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.log().contains(text) {
            assert!(Instant::now() < deadline, "baresip never logged {text:?}:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends a command through ctrl_tcp (netstring-framed JSON) and waits for
    /// its response: closing the connection before then can lose the next one.
    fn command(&self, command: &str, params: &str) {
        use std::io::{Read, Write};
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut stream = loop {
            match std::net::TcpStream::connect(("127.0.0.1", self.ctrl_port)) {
                Ok(s) => break s,
                Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
                Err(e) => panic!("baresip's control port: {e}"),
            }
        };
        let json = format!(r#"{{"command":"{command}","params":"{params}","token":"t"}}"#);
        write!(stream, "{}:{},", json.len(), json).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        // Events come on the same connection; skip them.
        loop {
            let mut length = String::new();
            let mut byte = [0u8];
            while stream.read_exact(&mut byte).is_ok() && byte[0] != b':' {
                length.push(byte[0] as char);
            }
            let length: usize = length.parse().unwrap_or_else(|_| panic!("no response to {command}:\n{}", self.log()));
            let mut message = vec![0u8; length + 1];
            stream.read_exact(&mut message).unwrap();
            let message = String::from_utf8_lossy(&message[..length]).into_owned();
            if message.contains("\"response\":true") {
                assert!(message.contains("\"ok\":true"), "baresip refused {command}: {message}");
                return;
            }
        }
    }

    /// Ends its calls with a BYE and waits for it to exit; returns what it
    /// received, decoded, as mono samples and their rate.
    fn quit(mut self) -> (Vec<i16>, u32) {
        let sent = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().unwrap();
        assert!(sent.success());
        assert!(self.child.wait().unwrap().success(), "baresip failed:\n{}", self.log());
        let recording = std::fs::read_dir(self.dir.join("rec"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.to_string_lossy().ends_with("-dec.wav"))
            .unwrap_or_else(|| panic!("baresip recorded nothing:\n{}", self.log()));
        let mut reader = hound::WavReader::open(&recording).unwrap();
        let spec = reader.spec();
        let samples: Vec<i16> = reader.samples::<i16>().map(Result::unwrap).collect();
        // Opus decodes to stereo: keep the left channel.
        let mono = samples.iter().step_by(spec.channels as usize).copied().collect();
        (mono, spec.sample_rate)
    }
}

impl Drop for Baresip {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn baresip_with_opus_and_with_g722_hear_each_other_through_a_wideband_room() {
    if !baresip_available() {
        return;
    }
    let bridge = Endpoint::start(EndpointConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        rtp_ports: rtp_range(),
        sample_rate: 48000,
        ..Default::default()
    })
    .unwrap();
    let room = bridge.create_conference("room").unwrap();
    let mut app = room.add_local().unwrap();

    // Alice calls in with Opus; the bridge calls Bob, who answers with G.722.
    let alice = Baresip::start("alice", "opus/48000/2", 440);
    let bob = Baresip::start("bob", "G722/16000/1", 1000);
    alice.command("dial", &bridge.room_uri("room"));
    let bob_leg = room.dial(&format!("sip:bob@127.0.0.1:{}", bob.sip_port)).unwrap();
    let mut connected = 0;
    while connected < 2 {
        wait_event(&bridge, Duration::from_secs(10), |e| match e {
            Event::Answered { .. } | Event::ParticipantJoined { .. } => Some(()),
            _ => None,
        });
        connected = room
            .participants()
            .unwrap()
            .iter()
            .filter(|p| p.codec.is_some() && p.state == ParticipantState::Connected)
            .count();
    }
    let codecs: Vec<_> = room.participants().unwrap().iter().filter_map(|p| p.codec).collect();
    assert!(codecs.contains(&CodecKind::Opus) && codecs.contains(&CodecKind::G722), "{codecs:?}");
    assert_eq!(bob_leg.info().unwrap().codec, Some(CodecKind::G722));

    // The app hears both tones in the room's mix.
    let frame = app.frame_samples();
    let silence = vec![0i16; frame];
    let mut heard = Vec::new();
    let mut buf = vec![0i16; frame];
    let end = Instant::now() + Duration::from_secs(3);
    while Instant::now() < end {
        app.write_all(&silence, Some(Duration::from_secs(1))).unwrap();
        if app.read_frame(&mut buf, Some(Duration::from_millis(200))).is_ok() {
            heard.extend_from_slice(&buf);
        }
    }
    let last_second = &heard[heard.len() - 48000..];
    let (p440, p1000) = (tone_power_at(last_second, 440.0, 48000), tone_power_at(last_second, 1000.0, 48000));
    assert!(p440 > 1e4 && p1000 > 1e4, "the app heard 440 Hz at {p440:.0} and 1000 Hz at {p1000:.0}");
    for info in room.participants().unwrap().iter().filter(|p| p.codec.is_some()) {
        assert!(info.packets_received > 50 && info.packets_sent > 50, "{info:?}");
        assert!(info.loss_percent < 1.0, "{info:?}");
    }

    // Each phone heard the other one, and not itself.
    for (phone, own, other) in [(alice, 440.0, 1000.0), (bob, 1000.0, 440.0)] {
        let (received, rate) = phone.quit();
        assert!(received.len() > rate as usize * 2, "only {} samples received", received.len());
        let tail = &received[received.len() - rate as usize..];
        let (own_power, other_power) = (tone_power_at(tail, own, rate), tone_power_at(tail, other, rate));
        assert!(
            other_power > 1e4 && other_power > own_power * 100.0,
            "at {rate} Hz: the other's tone {other_power:.0}, its own {own_power:.0}"
        );
    }
    // Both hung up with a BYE.
    wait_event(&bridge, Duration::from_secs(5), |e| match e {
        Event::ParticipantLeft { .. } if room.participants().map(|p| p.len() == 1).unwrap_or(false) => Some(()),
        _ => None,
    });
}

/// baresip registers with the built-in registrar (digest, as its user),
/// the app dials it by its address of record, and the phone holds the call
/// and resumes it (re-INVITEs); after resuming, its tone is heard again.
#[test]
fn baresip_registers_is_dialled_by_its_address_and_holds_and_resumes() {
    if !baresip_available() {
        return;
    }
    let bridge = Endpoint::start(EndpointConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        rtp_ports: rtp_range(),
        sample_rate: 16000,
        ..Default::default()
    })
    .unwrap();
    bridge.add_user("carol", "secret").unwrap();
    let carol = Baresip::start_with("carol", "G722/16000/1", 700, Some((bridge.local_addr().port(), "secret")));
    let deadline = Instant::now() + Duration::from_secs(5);
    while bridge.registrations("carol").is_empty() {
        assert!(Instant::now() < deadline, "carol never registered:\n{}", carol.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    let room = bridge.create_conference("desk").unwrap();
    let mut app = room.add_local().unwrap();
    let leg = room.dial("sip:carol@sipbridge").unwrap();
    wait_event(&bridge, Duration::from_secs(10), |e| matches!(e, Event::Answered { .. }).then_some(()));
    assert_eq!(leg.info().unwrap().codec, Some(CodecKind::G722));
    let hold = |e: &Event| match e {
        Event::Hold { held, .. } => Some(*held),
        _ => None,
    };
    carol.command("hold", "");
    assert!(wait_event(&bridge, Duration::from_secs(5), hold), "held");
    assert!(leg.info().unwrap().on_hold);
    carol.command("resume", "");
    assert!(!wait_event(&bridge, Duration::from_secs(5), hold), "resumed");
    // Her tone is in the room again.
    let frame = app.frame_samples();
    let (silence, mut buf, mut heard) = (vec![0i16; frame], vec![0i16; frame], Vec::new());
    let end = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < end {
        app.write_all(&silence, Some(Duration::from_secs(1))).unwrap();
        if app.read_frame(&mut buf, Some(Duration::from_millis(200))).is_ok() {
            heard.extend_from_slice(&buf);
        }
    }
    let tail = &heard[heard.len().saturating_sub(16000)..];
    assert!(tone_power_at(tail, 700.0, 16000) > 1e4, "{}", tone_power_at(tail, 700.0, 16000));
    carol.quit();
}
