//! Speech quality through the bridge on an impaired network, and the delay the
//! bridge adds.
//!
//!     bash benches/quality.sh        # makes the speech, runs this, scores it with PESQ
//!     cargo bench --bench quality -- DIR [FILTER]   # FILTER: part of the cases' file names
//!
//! DIR holds the reference speech that benches/quality/speech.py writes. For
//! every case a talker and a listener call into a room of their own in a
//! bridge (an `Endpoint` mixing at 48 kHz) over real SIP and RTP on loopback.
//! The talker sends the speech, encoded with the case's codec, through an
//! impairment stage in front of its socket (random loss, Gilbert–Elliott
//! burst loss, or per-packet delay that reorders packets); the listener's leg
//! is clean. What the listener receives is decoded and written to DIR for
//! PESQ (benches/quality/score.py), with results.json describing each case.
//!
//! Lossy cases run three times, each with its own (fixed) loss pattern.
//! Cases without loss also run with clicks instead of speech, at four phases
//! of the mixer's 20 ms cycle; the time from a click's arrival at the bridge
//! (as it would arrive on a jitter-free network) to its departure towards the
//! listener, less one codec pass outside the bridge (the talker's encoder and
//! the listener's decoder), is the delay the bridge adds: jitter buffer,
//! decoding, resampling, the wait for the mixing tick, encoding.

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sipbridge::media::codec::{CodecKind, OpusSettings};
use sipbridge::media::denoise::NoiseSuppressor;
use sipbridge::media::rtcp::{self, ReportBlock};
use sipbridge::media::rtp::{self, RtpPacket};
use sipbridge::sdp::SessionDescription;
use sipbridge::{Endpoint, EndpointConfig};

const PACKET: Duration = Duration::from_millis(20);
/// How long the listener keeps receiving after the talker's last packet.
const TAIL: Duration = Duration::from_millis(800);

#[derive(Clone, Copy, Debug)]
enum Impairment {
    None,
    /// Independent random loss, in percent.
    Loss(u32),
    /// Gilbert–Elliott: from good to bad with 2.5%, back with 25% per
    /// packet, everything lost while bad: bursts of 4 packets (80 ms) on
    /// average, about 9% of packets lost.
    Burst,
    /// Each packet delayed by a uniform 0–60 ms (30 ms ± 30 ms), independently,
    /// so packets overtake each other.
    Jitter,
}

impl Impairment {
    const ALL: [Impairment; 6] = [
        Impairment::None,
        Impairment::Loss(3),
        Impairment::Loss(10),
        Impairment::Loss(20),
        Impairment::Burst,
        Impairment::Jitter,
    ];

    fn label(self) -> String {
        match self {
            Impairment::None => "none".into(),
            Impairment::Loss(p) => format!("{p}% loss"),
            Impairment::Burst => "burst loss (~9%, 80 ms bursts)".into(),
            Impairment::Jitter => "jitter 30±30 ms, reordering".into(),
        }
    }

    fn slug(self) -> String {
        match self {
            Impairment::None => "clean".into(),
            Impairment::Loss(p) => format!("loss{p}"),
            Impairment::Burst => "burst".into(),
            Impairment::Jitter => "jitter".into(),
        }
    }

    /// The loss an adaptive sender would learn from RTCP and plan FEC for.
    fn expected_loss_percent(self) -> u8 {
        match self {
            Impairment::None | Impairment::Jitter => 0,
            Impairment::Loss(p) => p as u8,
            Impairment::Burst => 9,
        }
    }

    /// For each of `packets`, the extra delay the network adds, or `None` when it loses it.
    fn schedule(self, packets: usize, rng: &mut StdRng) -> Vec<Option<Duration>> {
        let mut bad = false;
        (0..packets)
            .map(|_| match self {
                Impairment::None => Some(Duration::ZERO),
                Impairment::Loss(p) => (rng.random_range(0..100) >= p).then_some(Duration::ZERO),
                Impairment::Burst => {
                    bad = if bad { rng.random::<f64>() >= 0.25 } else { rng.random::<f64>() < 0.025 };
                    (!bad).then_some(Duration::ZERO)
                }
                Impairment::Jitter => Some(Duration::from_micros(rng.random_range(0..60_000))),
            })
            .collect()
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Input {
    Speech,
    Noisy,
    Clicks,
}

#[derive(Clone, Debug)]
struct Case {
    codec: CodecKind,
    impairment: Impairment,
    input: Input,
    noise_suppression: bool,
    /// The conference's mixing rate.
    room_rate: u32,
    /// The bit rate the bridge encodes Opus at (the talker sends 32 kbit/s).
    bridge_bitrate: u32,
    /// Where the talker's packets fall in the mixer's 20 ms cycle, in ms
    /// after a tick: click runs try several, as the delay depends on it.
    phase_ms: u32,
    /// Which of several runs with their own loss pattern this is.
    run: u32,
}

/// The bit rate of Opus talkers, and of the bridge unless a case says otherwise.
const DEFAULT_BITRATE: u32 = 32000;

/// Speech runs per lossy case: PESQ depends on which packets a pattern hits.
const LOSS_RUNS: u32 = 3;

/// The phases click runs are made at: the delay averaged over them is what a
/// caller at a random phase gets on average.
const CLICK_PHASES_MS: [u32; 4] = [0, 5, 10, 15];

impl Case {
    fn slug(&self) -> String {
        let input = match self.input {
            Input::Speech => "speech",
            Input::Noisy if self.noise_suppression => "noisy-ns",
            Input::Noisy => "noisy",
            Input::Clicks => "clicks",
        };
        let room = if self.room_rate == 48000 { String::new() } else { format!("-room{}k", self.room_rate / 1000) };
        let room = match self.bridge_bitrate {
            DEFAULT_BITRATE => room,
            rate => format!("{room}-bridge{}k", rate / 1000),
        };
        let run = if self.run == 0 { String::new() } else { format!("-run{}", self.run) };
        format!("{}-{}-{input}{room}{run}", self.codec.encoding_name().to_lowercase(), self.impairment.slug())
    }

    /// The seed of the network's randomness (FNV-1a of the codec, impairment,
    /// input and run): the same in every run of the benchmark, and across
    /// room rates and bridge settings, so those compare on the same losses.
    fn seed(&self) -> u64 {
        let name = format!("{:?}-{}-{:?}-{}", self.codec, self.impairment.slug(), self.input, self.run);
        name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3))
    }
}

/// What one call brought back.
struct Outcome {
    case: Case,
    /// The listener's decoded audio from the talker's first packet on, at the codec's rate.
    heard: Vec<i16>,
    /// For each received packet: when it arrived, and where its audio starts in `heard`.
    arrivals: Vec<(Instant, i64)>,
    start: Instant,
    talker: Option<sipbridge::ParticipantInfo>,
    /// The talker's jitter-buffer target, averaged over the call.
    mean_jitter_buffer_ms: f64,
    lost_by_network: usize,
    /// The talker's packets after the network, decoded straight by a receiver
    /// that knows which are lost (FEC, else the codec's concealment), with no
    /// bridge: what the codec alone makes of the same losses.
    codec_alone: Option<Vec<i16>>,
}

/// A minimal SIP user agent over UDP: enough to set up a call with one codec,
/// and to hang it up.
struct SipCall {
    sip: UdpSocket,
    rtp: UdpSocket,
    bridge: SocketAddr,
    call_id: String,
    from: String,
    to: String,
    target: String,
    remote_rtp: SocketAddr,
}

fn header<'a>(message: &'a str, name: &str) -> Option<&'a str> {
    message.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.trim().eq_ignore_ascii_case(name).then(|| value.trim())
    })
}

impl SipCall {
    fn dial(bridge: SocketAddr, room_uri: &str, user: &str, codec: CodecKind) -> SipCall {
        let sip = UdpSocket::bind("127.0.0.1:0").unwrap();
        let rtp = UdpSocket::bind("127.0.0.1:0").unwrap();
        sip.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let local = sip.local_addr().unwrap();
        let pt = codec.default_payload_type();
        let channels = codec.rtpmap_channels().map_or(String::new(), |c| format!("/{c}"));
        let fmtp =
            if codec == CodecKind::Opus { format!("a=fmtp:{pt} useinbandfec=1; stereo=0\r\n") } else { String::new() };
        let sdp = format!(
            "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=quality\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
             m=audio {} RTP/AVP {pt}\r\na=rtpmap:{pt} {}/{}{channels}\r\n{fmtp}a=ptime:20\r\na=rtcp-mux\r\na=sendrecv\r\n",
            rtp.local_addr().unwrap().port(),
            codec.encoding_name(),
            codec.clock_rate(),
        );
        let call_id = format!("{user}-{}", rand::random::<u32>());
        let from = format!("<sip:{user}@{local}>;tag={}", rand::random::<u32>());
        let invite = format!(
            "INVITE {room_uri} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bK{};rport\r\nMax-Forwards: 70\r\n\
             From: {from}\r\nTo: <{room_uri}>\r\nCall-ID: {call_id}\r\nCSeq: 1 INVITE\r\nContact: <sip:{user}@{local}>\r\n\
             Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
            rand::random::<u32>(),
            sdp.len(),
        );
        sip.send_to(invite.as_bytes(), bridge).unwrap();
        let mut buf = [0u8; 4096];
        let ok = loop {
            let (n, _) = sip.recv_from(&mut buf).expect("the bridge answers");
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            let status: u16 = text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
            match status {
                100..=199 => continue,
                200 => break text,
                _ => panic!("the bridge refused the call: {}", text.lines().next().unwrap_or("")),
            }
        };
        let to = header(&ok, "To").expect("To").to_string();
        let contact = header(&ok, "Contact").expect("Contact");
        let target = contact.trim_start_matches('<').split('>').next().unwrap().to_string();
        let body = &ok[ok.find("\r\n\r\n").expect("a body") + 4..];
        let answer = SessionDescription::parse(body.as_bytes()).expect("an SDP answer");
        let media = &answer.media[0];
        let address = media.connection.or(answer.connection).expect("c=");
        let mut call =
            SipCall { sip, rtp, bridge, call_id, from, to, target, remote_rtp: SocketAddr::new(address, media.port) };
        call.request("ACK", 1);
        call
    }

    fn request(&mut self, method: &str, cseq: u32) {
        let local = self.sip.local_addr().unwrap();
        let message = format!(
            "{method} {} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bK{};rport\r\nMax-Forwards: 70\r\n\
             From: {}\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: {cseq} {method}\r\nContent-Length: 0\r\n\r\n",
            self.target,
            rand::random::<u32>(),
            self.from,
            self.to,
            self.call_id,
        );
        self.sip.send_to(message.as_bytes(), self.bridge).unwrap();
    }

    fn hang_up(mut self) {
        self.request("BYE", 2);
    }
}

fn read_wav(path: &Path) -> (Vec<i16>, u32) {
    let mut reader = hound::WavReader::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let rate = reader.spec().sample_rate;
    (reader.samples::<i16>().map(Result::unwrap).collect(), rate)
}

fn write_wav(path: &Path, samples: &[i16], rate: u32) {
    let spec =
        hound::WavSpec { channels: 1, sample_rate: rate, bits_per_sample: 16, sample_format: hound::SampleFormat::Int };
    let mut writer = hound::WavWriter::create(path, spec).unwrap();
    for s in samples {
        writer.write_sample(*s).unwrap();
    }
    writer.finalize().unwrap();
}

fn rate_suffix(rate: u32) -> &'static str {
    match rate {
        48000 => "48k",
        16000 => "16k",
        _ => "8k",
    }
}

const CLICK_EVERY: f64 = 0.5;
const CLICK_AMPLITUDE: f64 = 20000.0;

/// 6 s of silence with a 4 ms 2 kHz click every half second.
fn clicks(rate: u32) -> Vec<i16> {
    let every = (rate as f64 * CLICK_EVERY) as usize;
    let length = (rate as f64 * 0.004) as usize;
    (0..rate as usize * 6)
        .map(|n| {
            let k = n % every;
            if n >= every / 2 && k >= every / 2 && k < every / 2 + length {
                let t = (k - every / 2) as f64 / rate as f64;
                (CLICK_AMPLITUDE * (2.0 * std::f64::consts::PI * 2000.0 * t).sin()) as i16
            } else {
                0
            }
        })
        .collect()
}

/// Sample positions where a click starts: loud after at least 200 ms of quiet.
fn click_onsets(samples: &[i16], rate: u32) -> Vec<usize> {
    let threshold = (CLICK_AMPLITUDE * 0.25) as i32;
    let quiet_needed = rate as usize / 5;
    let mut quiet = quiet_needed;
    let mut onsets = Vec::new();
    for (n, s) in samples.iter().enumerate() {
        if (*s as i32).abs() >= threshold {
            if quiet >= quiet_needed {
                onsets.push(n);
            }
            quiet = 0;
        } else {
            quiet += 1;
        }
    }
    onsets
}

fn run_call(bridge: &Endpoint, epoch: Instant, room: &str, case: Case, dir: &Path) -> Outcome {
    let conference = bridge.create_conference_with_rate(room, case.room_rate).unwrap();
    if case.noise_suppression {
        conference.set_noise_suppression(true).unwrap();
    }
    let rate = case.codec.sample_rate();
    let pcm = match case.input {
        Input::Speech => read_wav(&dir.join(format!("speech_{}.wav", rate_suffix(rate)))).0,
        Input::Noisy => read_wav(&dir.join(format!("noisy_{}.wav", rate_suffix(rate)))).0,
        Input::Clicks => clicks(rate),
    };
    let room_uri = bridge.room_uri(room);
    let listener = SipCall::dial(bridge.local_addr(), &room_uri, "listener", case.codec);
    let talker = SipCall::dial(bridge.local_addr(), &room_uri, "talker", case.codec);

    // The talker's packets, encoded ahead of time, and when the network
    // delivers them. The talker is a good softphone: libopus's best complexity,
    // FEC planned for the loss it would learn from RTCP.
    let settings = OpusSettings {
        bitrate: DEFAULT_BITRATE,
        complexity: 10,
        expected_loss_percent: case.impairment.expected_loss_percent(),
        ..Default::default()
    };
    let mut encoder = case.codec.new_coder(&settings).unwrap();
    let frame = case.codec.frame_samples();
    let clock_per_frame = case.codec.clock_rate() / 50;
    let ssrc = rand::random::<u32>();
    let packets: Vec<Vec<u8>> = pcm
        .chunks(frame)
        .enumerate()
        .map(|(i, chunk)| {
            let mut samples = chunk.to_vec();
            samples.resize(frame, 0);
            let mut packet = vec![0u8; 1500];
            let header: &mut [u8; rtp::HEADER_LEN] = (&mut packet[..rtp::HEADER_LEN]).try_into().unwrap();
            rtp::write_header(
                header,
                i == 0,
                case.codec.default_payload_type(),
                i as u16,
                i as u32 * clock_per_frame,
                ssrc,
            );
            let n = encoder.encode(&samples, &mut packet[rtp::HEADER_LEN..]);
            packet.truncate(rtp::HEADER_LEN + n);
            packet
        })
        .collect();
    let mut rng = StdRng::seed_from_u64(case.seed());
    let schedule = case.impairment.schedule(packets.len(), &mut rng);
    let lost_by_network = schedule.iter().filter(|s| s.is_none()).count();
    let codec_alone = (case.input == Input::Speech && case.codec.has_native_plc()).then(|| {
        let mut decoder = case.codec.new_coder(&OpusSettings::default()).unwrap();
        let mut out = vec![0i16; frame];
        let mut decoded = Vec::with_capacity(packets.len() * frame);
        for (i, packet) in packets.iter().enumerate() {
            let payload = &packet[rtp::HEADER_LEN..];
            let next = packets.get(i + 1).filter(|_| schedule.get(i + 1).is_some_and(Option::is_some));
            match (schedule[i], next) {
                (Some(_), _) => decoder.decode(payload, &mut out),
                (None, Some(next)) => usize::from(decoder.recover(&next[rtp::HEADER_LEN..], &mut out)),
                (None, None) => usize::from(decoder.conceal(&mut out)),
            };
            decoded.extend_from_slice(&out);
        }
        decoded
    });
    // The mixer ticks every 20 ms from about when the bridge started (`epoch`);
    // the talker starts at a chosen point of that cycle.
    let soon = (Instant::now() + Duration::from_millis(300)).duration_since(epoch).as_millis() as u32;
    let start = epoch + Duration::from_millis(((soon / 20 + 1) * 20 + case.phase_ms) as u64);
    let mut sends: Vec<(Instant, usize)> = schedule
        .iter()
        .enumerate()
        .filter_map(|(i, delay)| delay.map(|d| (start + PACKET * i as u32 + d, i)))
        .collect();
    sends.sort();
    let end = start + PACKET * packets.len() as u32 + TAIL;

    // The listener records what the bridge sends it until the end and, as a
    // phone does, reports its reception in RTCP (lossless here): one second
    // in, then every 2.5 s.
    let listening = Arc::new(AtomicBool::new(true));
    let receiver = {
        let socket = listener.rtp.try_clone().unwrap();
        let bridge_rtp = listener.remote_rtp;
        let listening = listening.clone();
        socket.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        thread::spawn(move || {
            let mut received = Vec::new();
            let mut buf = [0u8; 1500];
            let mut next_report = Instant::now() + Duration::from_secs(1);
            let mut last = None;
            while listening.load(Ordering::Relaxed) {
                if let Ok(n) = socket.recv(&mut buf) {
                    // RTCP shares the port (rtcp-mux): types 200–204.
                    if (200..=204).contains(&buf[1]) {
                        continue;
                    }
                    if let Ok(packet) = RtpPacket::parse(&buf[..n]) {
                        last = Some((packet.ssrc, packet.sequence));
                    }
                    received.push((Instant::now(), buf[..n].to_vec()));
                }
                if let Some((ssrc, sequence)) = last.filter(|_| Instant::now() >= next_report) {
                    let block = ReportBlock { ssrc, highest_sequence: sequence as u32, ..Default::default() };
                    let mut report = [0u8; 256];
                    let n =
                        rtcp::write_report(&mut report, 0x4c15_7e4e, None, Some(block), "listener@quality").unwrap();
                    socket.send_to(&report[..n], bridge_rtp).unwrap();
                    next_report += Duration::from_millis(2500);
                }
            }
            received
        })
    };
    let talker_info = || {
        conference
            .participants()
            .unwrap()
            .into_iter()
            .find(|p| p.remote.as_deref().is_some_and(|r| r.contains("talker")))
    };
    // The jitter buffer's target moves with the jitter: sample it through the call.
    let jitter_buffer = thread::scope(|scope| {
        let sampler = scope.spawn(|| {
            let mut samples = Vec::new();
            while Instant::now() < end {
                thread::sleep(Duration::from_millis(100));
                if Instant::now() > start {
                    samples.extend(talker_info().map(|t| t.jitter_buffer_ms as f64));
                }
            }
            samples.iter().sum::<f64>() / samples.len().max(1) as f64
        });
        for (when, i) in sends {
            if let Some(wait) = when.checked_duration_since(Instant::now()) {
                thread::sleep(wait);
            }
            talker.rtp.send_to(&packets[i], talker.remote_rtp).unwrap();
        }
        sampler.join().unwrap()
    });
    let talker_info = talker_info();
    listening.store(false, Ordering::Relaxed);
    let received = receiver.join().unwrap();
    talker.hang_up();
    listener.hang_up();

    // Decode in RTP timestamp order into a timeline that starts one packet
    // before the first packet that left the bridge after the talker started.
    let mut decoder = case.codec.new_coder(&OpusSettings::default()).unwrap();
    let samples_per_clock = rate / case.codec.clock_rate();
    let first = received.iter().position(|(at, _)| *at >= start).expect("the bridge sent audio");
    let base = RtpPacket::parse(&received[first].1).unwrap().timestamp.wrapping_sub(clock_per_frame);
    let mut heard = vec![0i16; ((end - start).as_secs_f64() * rate as f64) as usize + frame];
    let mut arrivals = Vec::new();
    let mut buf = vec![0i16; frame * 6];
    for (at, data) in &received {
        let Ok(packet) = RtpPacket::parse(data) else { continue };
        let position = packet.timestamp.wrapping_sub(base) as i32 as i64 * samples_per_clock as i64;
        let n = decoder.decode(packet.payload, &mut buf);
        arrivals.push((*at, position));
        if position < 0 || position as usize + n > heard.len() {
            continue;
        }
        heard[position as usize..position as usize + n].copy_from_slice(&buf[..n]);
    }
    let _ = conference.destroy();
    Outcome {
        case,
        heard,
        arrivals,
        start,
        talker: talker_info,
        mean_jitter_buffer_ms: jitter_buffer,
        lost_by_network,
        codec_alone,
    }
}

/// Median and largest delay from a click's arrival at the bridge to its
/// departure, in milliseconds, and how many clicks were found.
fn click_delays(outcome: &Outcome) -> Option<(f64, f64, usize)> {
    let codec = outcome.case.codec;
    let rate = codec.sample_rate() as f64;
    // The talker's encoder and the listener's decoder delay the click by one
    // codec pass outside the bridge (Opus: its 6.5 ms look-ahead): measured
    // here by a pass of the clicks through a fresh encoder and decoder.
    let sent = clicks(codec.sample_rate());
    let (mut encoder, mut decoder) =
        (codec.new_coder(&OpusSettings::default()).unwrap(), codec.new_coder(&OpusSettings::default()).unwrap());
    let mut passed = Vec::new();
    for frame in sent.chunks_exact(codec.frame_samples()) {
        let mut packet = [0u8; 1500];
        let n = encoder.encode(frame, &mut packet);
        let mut out = vec![0i16; frame.len()];
        decoder.decode(&packet[..n], &mut out);
        passed.extend(out);
    }
    let codec_delay =
        (click_onsets(&passed, codec.sample_rate())[0] - click_onsets(&sent, codec.sample_rate())[0]) as f64 / rate;
    let frame = outcome.case.codec.frame_samples() as i64;
    // When a sample went out: its packet's arrival, less the samples after it in the packet.
    let departure = |sample: usize| -> Option<f64> {
        let (at, position) =
            outcome.arrivals.iter().find(|(_, p)| *p <= sample as i64 && (sample as i64) < p + frame)?;
        let after = (position + frame - sample as i64) as f64 / rate;
        Some(at.duration_since(outcome.start).as_secs_f64() - after)
    };
    let expected = click_onsets(&sent, outcome.case.codec.sample_rate());
    let mut delays: Vec<f64> = Vec::new();
    for onset in click_onsets(&outcome.heard, outcome.case.codec.sample_rate()) {
        let Some(out_time) = departure(onset) else { continue };
        // The click it is: the latest sent before it came out. Packet i leaves
        // the talker at i × 20 ms, carrying the 20 ms of audio before that
        // instant, so on a jitter-free network sample n reaches the bridge
        // as if at n / rate − 20 ms: the same reckoning as `departure`.
        let Some(arrival) = expected.iter().map(|n| *n as f64 / rate - PACKET.as_secs_f64()).rfind(|t| *t <= out_time)
        else {
            continue;
        };
        delays.push((out_time - arrival - codec_delay) * 1000.0);
    }
    if delays.is_empty() {
        return None;
    }
    delays.sort_by(f64::total_cmp);
    Some((delays[delays.len() / 2], *delays.last().unwrap(), delays.len()))
}

fn main() {
    // cargo bench passes --bench; the rest is DIR and an optional filter on case names.
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let dir: PathBuf = args.first().expect("usage: quality DIR [FILTER]").into();
    let filter = args.get(1).cloned().unwrap_or_default();
    let epoch = Instant::now();
    // Two bridges: the library's defaults, and one that encodes Opus at a
    // higher bit rate, to see what the second encoding costs.
    let bridges: Arc<Vec<(u32, Endpoint)>> = Arc::new(
        [(DEFAULT_BITRATE, 30000), (48000, 31000)]
            .into_iter()
            .map(|(bitrate, ports)| {
                let config = EndpointConfig {
                    listen: "127.0.0.1:0".parse().unwrap(),
                    rtp_ports: ports..=ports + 999,
                    opus: OpusSettings { bitrate, ..Default::default() },
                    ..Default::default()
                };
                (bitrate, Endpoint::start(config).unwrap())
            })
            .collect(),
    );

    // Each codec and impairment: one speech call (its packets mid-way between
    // ticks) and click calls at every phase of the mixer's cycle.
    let mut cases = Vec::new();
    let mut add = |codec: CodecKind, impairment: Impairment, room_rate: u32, bridge_bitrate: u32| {
        let case = Case {
            codec,
            impairment,
            input: Input::Speech,
            noise_suppression: false,
            room_rate,
            bridge_bitrate,
            phase_ms: 10,
            run: 0,
        };
        // Delay is measured without loss: a lost click would be concealed
        // rather than delayed.
        let (clicks, runs) = match impairment {
            Impairment::Loss(_) | Impairment::Burst => (&[][..], LOSS_RUNS),
            Impairment::None | Impairment::Jitter => (&CLICK_PHASES_MS[..], 1),
        };
        for &phase_ms in clicks {
            cases.push(Case { input: Input::Clicks, phase_ms, ..case.clone() });
        }
        for run in 0..runs {
            cases.push(Case { run, ..case.clone() });
        }
    };
    for codec in [CodecKind::Pcmu, CodecKind::G722, CodecKind::Opus] {
        for impairment in Impairment::ALL {
            add(codec, impairment, 48000, DEFAULT_BITRATE);
        }
    }
    // G.711 and G.722 again in rooms at their own rate, where nothing is resampled.
    for codec in [CodecKind::Pcmu, CodecKind::G722] {
        for impairment in [Impairment::None, Impairment::Jitter] {
            add(codec, impairment, codec.sample_rate(), DEFAULT_BITRATE);
        }
    }
    for impairment in [Impairment::None, Impairment::Loss(10)] {
        add(CodecKind::Opus, impairment, 48000, 48000);
    }
    for noise_suppression in [false, true] {
        cases.push(Case {
            codec: CodecKind::Opus,
            impairment: Impairment::None,
            input: Input::Noisy,
            noise_suppression,
            room_rate: 48000,
            bridge_bitrate: DEFAULT_BITRATE,
            phase_ms: 10,
            run: 0,
        });
    }

    cases.retain(|c| c.slug().contains(&filter));
    // Calls run side by side, eight at a time, each in its own room: more
    // load this 2-core machine enough to disturb the calls' timing.
    let mut outcomes = Vec::new();
    for (batch, chunk) in cases.chunks(8).enumerate() {
        let handles: Vec<_> = chunk
            .iter()
            .enumerate()
            .map(|(i, case)| {
                let (bridges, case, dir) = (bridges.clone(), case.clone(), dir.clone());
                thread::spawn(move || {
                    let bridge = &bridges.iter().find(|(rate, _)| *rate == case.bridge_bitrate).unwrap().1;
                    run_call(bridge, epoch, &format!("q{batch}-{i}"), case, &dir)
                })
            })
            .collect();
        outcomes.extend(handles.into_iter().map(|h| h.join().unwrap()));
        eprintln!("{} of {} calls done", outcomes.len(), cases.len());
    }

    let mut records = Vec::new();
    for outcome in outcomes.iter().filter(|o| o.case.input != Input::Clicks) {
        let case = &outcome.case;
        let rate = case.codec.sample_rate();
        let degraded = format!("{}.wav", case.slug());
        write_wav(&dir.join(&degraded), &outcome.heard, rate);
        // The click runs of this case: delay and jitter-buffer target averaged over their phases.
        let click_runs: Vec<&Outcome> = outcomes
            .iter()
            .filter(|o| {
                o.case.input == Input::Clicks
                    && o.case.codec == case.codec
                    && o.case.impairment.slug() == case.impairment.slug()
                    && o.case.room_rate == case.room_rate
                    && o.case.bridge_bitrate == case.bridge_bitrate
            })
            .collect();
        let delays: Vec<(f64, f64, usize)> = click_runs.iter().filter_map(|o| click_delays(o)).collect();
        let delay = (!delays.is_empty()).then(|| {
            let runs = delays.len() as f64;
            let mean = delays.iter().map(|d| d.0).sum::<f64>() / runs;
            let max = delays.iter().map(|d| d.1).fold(0.0, f64::max);
            (mean, max, delays.iter().map(|d| d.2).sum::<usize>())
        });
        let by_phase = delays.iter().map(|d| format!("{:.1}", d.0)).collect::<Vec<_>>().join(", ");
        // The target the delay is held against: over the click runs when there
        // are some, else over this speech run.
        let jitter_buffer = if click_runs.is_empty() {
            outcome.mean_jitter_buffer_ms
        } else {
            click_runs.iter().map(|o| o.mean_jitter_buffer_ms).sum::<f64>() / click_runs.len() as f64
        };
        let (mode, reference) =
            if case.codec == CodecKind::Pcmu { ("nb", "speech_8k.wav") } else { ("wb", "speech_16k.wav") };
        let name = match case.input {
            Input::Noisy if case.noise_suppression => {
                format!("{} noisy speech, noise suppression on", case.codec.encoding_name())
            }
            Input::Noisy => format!("{} noisy speech, noise suppression off", case.codec.encoding_name()),
            _ if case.bridge_bitrate != DEFAULT_BITRATE => format!(
                "{} {} (bridge encodes at {} kbit/s)",
                case.codec.encoding_name(),
                case.impairment.label(),
                case.bridge_bitrate / 1000
            ),
            _ if case.room_rate != 48000 => format!(
                "{} {} ({} kHz room)",
                case.codec.encoding_name(),
                case.impairment.label(),
                case.room_rate / 1000
            ),
            _ => format!("{} {}", case.codec.encoding_name(), case.impairment.label()),
        };
        let talker = outcome.talker.as_ref();
        let field = |v: Option<String>| v.unwrap_or_else(|| "null".into());
        records.push(format!(
            "  {{\"case\": \"{name}\", \"codec\": \"{}\", \"impairment\": \"{}\", \"mode\": \"{mode}\", \
             \"reference\": \"{reference}\", \"degraded\": \"{degraded}\", \"delay_ms\": {}, \"delay_max_ms\": {}, \"delay_by_phase_ms\": [{by_phase}], \
             \"clicks\": {}, \"jitter_buffer_ms\": {jitter_buffer:.1}, \"lost\": {}, \"concealed\": {}, \"recovered\": {}}}",
            case.codec.encoding_name(),
            case.impairment.label(),
            field(delay.map(|d| format!("{:.1}", d.0))),
            field(delay.map(|d| format!("{:.1}", d.1))),
            field(delay.map(|d| d.2.to_string())),
            outcome.lost_by_network,
            field(talker.map(|t| t.concealed_frames.to_string())),
            field(talker.map(|t| t.fec_recovered.to_string())),
        ));
        // The same losses without the bridge, once per lossy case (the
        // default bridge's runs).
        let lossy = matches!(case.impairment, Impairment::Loss(_) | Impairment::Burst);
        if let Some(alone) = outcome.codec_alone.as_ref().filter(|_| lossy && case.bridge_bitrate == DEFAULT_BITRATE) {
            let file = format!("{}-codec-alone.wav", case.slug());
            write_wav(&dir.join(&file), alone, rate);
            records.push(format!(
                "  {{\"case\": \"{name}, codec alone (no bridge)\", \"mode\": \"{mode}\", \"reference\": \"{reference}\", \
                 \"degraded\": \"{file}\", \"lost\": {}}}",
                outcome.lost_by_network
            ));
        }
    }
    std::fs::write(dir.join("results.json"), format!("[\n{}\n]\n", records.join(",\n"))).unwrap();

    // The suppressor's cost per talker, on the noisy speech, in the mixer's 20 ms frames.
    let (noisy, _) = read_wav(&dir.join("noisy_48k.wav"));
    let mut suppressor = NoiseSuppressor::new(48000, 960).unwrap();
    let mut frames: Vec<Vec<i16>> = noisy.chunks_exact(960).map(<[i16]>::to_vec).collect();
    let began = Instant::now();
    for frame in frames.iter_mut() {
        suppressor.process(frame);
    }
    let audio_seconds = frames.len() as f64 * 0.02;
    let cpu_us_per_second = began.elapsed().as_secs_f64() * 1e6 / audio_seconds;
    std::fs::write(
        dir.join("noise_suppression.json"),
        format!(
            "{{\"cpu_us_per_audio_second\": {cpu_us_per_second:.0}, \"core_percent_per_talker\": {:.2}}}\n",
            cpu_us_per_second / 1e4
        ),
    )
    .unwrap();
    eprintln!("noise suppression: {cpu_us_per_second:.0} µs of CPU per second of a talker's audio");
}
