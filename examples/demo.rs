//! A self-contained demo: a conference bridge and three callers on loopback.
//!
//!     cargo run --release --example demo
//!
//! Each caller is a separate SIP endpoint that dials `sip:demo@127.0.0.1:PORT`
//! over real SIP and RTP (G.711) and plays its own tone. After a few seconds the
//! demo reports what each caller heard: the other two tones, not its own.

use std::time::{Duration, Instant};

use sipbridge::{frame_samples, Endpoint, EndpointConfig, Event, ParticipantKind, DEFAULT_SAMPLE_RATE};

/// The demo's conferences mix at the default rate (48 kHz); calls between
/// its endpoints negotiate Opus.
const SAMPLE_RATE: u32 = DEFAULT_SAMPLE_RATE;
const FRAME_SAMPLES: usize = frame_samples(SAMPLE_RATE);

const TONES: [f64; 3] = [440.0, 1000.0, 1780.0];

fn endpoint(rtp_base: u16) -> Endpoint {
    let config = EndpointConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        rtp_ports: rtp_base..=rtp_base + 19,
        ..Default::default()
    };
    Endpoint::start(config).expect("start an endpoint")
}

/// Level of `freq` in `samples`, in dB relative to a full-scale sine (Goertzel).
fn level_db(samples: &[i16], freq: f64) -> f64 {
    let coeff = 2.0 * (2.0 * std::f64::consts::PI * freq / SAMPLE_RATE as f64).cos();
    let (mut s1, mut s2) = (0.0, 0.0);
    for &x in samples {
        let s0 = x as f64 / 32768.0 + coeff * s1 - s2;
        s2 = s1;
        s1 = s0;
    }
    let amplitude = 2.0 * (s1 * s1 + s2 * s2 - coeff * s1 * s2).max(0.0).sqrt() / samples.len() as f64;
    20.0 * amplitude.max(1e-9).log10()
}

fn main() -> Result<(), sipbridge::Error> {
    let bridge = endpoint(35000);
    bridge.create_conference("demo")?;
    let uri = bridge.room_uri("demo");
    println!("bridge: {uri}");

    let mut callers = Vec::new();
    for (i, freq) in TONES.iter().enumerate() {
        let phone = endpoint(35100 + 100 * i as u16);
        let handset = phone.create_conference(&format!("caller{}", i + 1))?;
        let local = handset.add_local()?;
        handset.dial(&uri)?;
        callers.push((phone, handset, local, *freq));
    }
    let mut joined = 0;
    let deadline = Instant::now() + Duration::from_secs(5);
    while joined < TONES.len() && Instant::now() < deadline {
        if let Ok(Event::ParticipantJoined { kind: ParticipantKind::Inbound, remote, .. }) =
            bridge.next_event(Some(Duration::from_millis(100)))
        {
            println!("bridge: {remote} joined");
            joined += 1;
        }
    }

    let threads: Vec<_> = callers
        .into_iter()
        .map(|(phone, handset, mut local, freq)| {
            std::thread::spawn(move || {
                let mut heard = Vec::new();
                let mut frame = vec![0i16; FRAME_SAMPLES];
                let mut n = 0u64;
                let end = Instant::now() + Duration::from_secs(3);
                while Instant::now() < end {
                    let tone: Vec<i16> = (0..FRAME_SAMPLES)
                        .map(|_| {
                            n += 1;
                            let t = n as f64 / SAMPLE_RATE as f64;
                            (6000.0 * (2.0 * std::f64::consts::PI * freq * t).sin()) as i16
                        })
                        .collect();
                    local.write_all(&tone, Some(Duration::from_secs(1))).expect("feed the caller");
                    if local.read_frame(&mut frame, Some(Duration::from_millis(100))).is_ok() {
                        heard.extend_from_slice(&frame);
                    }
                }
                (handset.name().to_string(), freq, heard, phone)
            })
        })
        .collect();

    let mut everyone_ok = true;
    for thread in threads {
        let (name, own, heard, phone) = thread.join().expect("caller thread");
        let tail = &heard[heard.len().saturating_sub(SAMPLE_RATE as usize)..];
        let levels: Vec<String> = TONES.iter().map(|f| format!("{f:.0} Hz {:6.1} dB", level_db(tail, *f))).collect();
        let own_db = level_db(tail, own);
        let others_ok = TONES.iter().filter(|f| **f != own).all(|f| level_db(tail, *f) > -30.0);
        let ok = others_ok && own_db < -60.0;
        everyone_ok &= ok;
        println!("{name} (plays {own:.0} Hz) heard: {} -> {}", levels.join(", "), if ok { "ok" } else { "WRONG" });
        phone.stop();
    }
    while let Ok(event) = bridge.next_event(Some(Duration::from_millis(300))) {
        if let Event::ParticipantLeft { participant, reason, packets_received, packets_sent, .. } = event {
            println!(
                "bridge: participant {} left ({reason:?}), RTP packets in {packets_received}, out {packets_sent}",
                participant.0
            );
        }
    }
    println!("{}", if everyone_ok { "every caller heard the other two and not itself" } else { "mixing went wrong" });
    std::process::exit(if everyone_ok { 0 } else { 1 });
}
