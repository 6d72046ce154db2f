//! Load: what one `sipbridge serve` process costs per participant, driven
//! from another process over real SIP and RTP on loopback.
//!
//!     cargo bench --bench load                       # the default matrix (about 5 minutes)
//!     cargo bench --bench load -- --matrix quick     # a smoke test (about 10 s)
//!     cargo bench --bench load -- --codec pcmu --legs 1000 --size 30 \
//!         [--talkers 0.1] [--seconds 10] [--warmup 3] [--mixer-threads 1]
//!
//! Each run starts a fresh `sipbridge serve` and calls N legs into rooms of
//! S participants (INVITE with an SDP offer of one codec, 200, ACK), paced at
//! a few hundred calls a second. Every leg sends a 20 ms RTP packet every
//! 20 ms from one shared UDP socket (sendmmsg, in four slices 5 ms apart on an
//! absolute schedule) and the packets coming back are counted per leg by the
//! bridge port they come from (recvmmsg). The first `talkers × S` legs of a
//! room send speech-like audio, the others the background noise of an open
//! microphone in a quiet room; both are encoded once per run. Opus legs carry
//! the client-to-mixer audio level (RFC 6464) as WebRTC clients do. After the
//! warm-up the run measures, over the window:
//! - the bridge's CPU (utime + stime of /proc/PID/stat) and its mixer and I/O
//!   threads' (/proc/PID/task/TID/schedstat, in nanoseconds: a mixer may use
//!   only a few clock ticks' worth in a short window);
//! - the mixer threads' own tick statistics, from the `mixer` lines `serve
//!   --stats-every 1` prints whose whole period lies in the window: ticks and
//!   late ticks summed, p50 the median of the lines' p50s, p99 and max the
//!   largest of the lines' (quantiles are to the mixer histogram's 10 µs);
//! - the resident memory added by the legs (VmRSS at the window's start less
//!   VmRSS before the first call), per participant;
//! - RTP packets sent and received by the generator, against 50 per leg per
//!   second, and the generator's own CPU (getrusage), which on a small machine
//!   competes with the bridge for the same cores (loopback delivery is charged
//!   to whichever process sends);
//! - datagrams the kernel dropped (UDP receive-buffer overruns, system wide
//!   and on the generator's socket, and loopback backlog drops).
//!
//! Prints a Markdown table on stdout, one row per run (runs where the bridge
//! fell behind are marked), and progress and diagnostics on stderr. A bridge
//! leg takes two RTP ports of RTP_PORTS, which bounds the legs of a run.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, ErrorKind};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sipbridge::media::codec::{linear_to_ulaw, CodecKind, OpusSettings};
use sipbridge::media::{rtcp, rtp};
use sipbridge::sdp::SessionDescription;

/// The packet time of every leg, and the mixer's tick.
const PACKET_INTERVAL: Duration = Duration::from_millis(20);
/// The legs' sends are spread over the packet interval in this many slices.
const SLICES: usize = 4;
/// Socket buffers asked for (the kernel may cap them; see `enlarge_buffers`).
const SOCKET_BUFFER: usize = 8 << 20;
/// Datagrams per sendmmsg / recvmmsg call.
const BATCH: usize = 256;
/// The largest datagram the generator receives.
const MAX_DATAGRAM: usize = 1500;
/// INVITEs without a final response at any time, and new INVITEs a second.
const MAX_INVITES_IN_FLIGHT: usize = 200;
const INVITES_PER_SECOND: f64 = 400.0;
const BYES_PER_SECOND: f64 = 1000.0;
/// How long a call may go without a final response before it counts as failed (RFC 3261 Timer B).
const INVITE_TIMEOUT: Duration = Duration::from_secs(32);
/// The first INVITE retransmission interval when nothing came back (RFC 3261 Timer A, T1).
const RETRANSMIT_FIRST: Duration = Duration::from_millis(500);
/// How long to wait for the 200s to our BYEs after the last one went out.
const BYE_WAIT: Duration = Duration::from_secs(3);
/// The bridge's RTP ports: each leg takes an even port and the odd one above.
const RTP_PORTS: (u16, u16) = (20000, 29999);
/// Length of the pre-encoded signal loops.
const LOOP_SECONDS: usize = 6;
/// The talkers' peak level, and the level of the background noise every leg sends.
const SPEECH_PEAK_DBFS: f64 = -12.0;
const NOISE_DBOV: f64 = -65.0;
/// Frames at least this loud (in -dBov) carry the RFC 6464 voice-activity flag.
const VOICE_LEVEL: u8 = 45;
/// The one-byte header extension id of the audio level (RFC 8285), as offered.
const AUDIO_LEVEL_ID: u8 = 1;
/// Largest RTP header the generator writes: 12 bytes, then the 8-byte audio-level extension.
const HEADER_MAX: usize = rtp::HEADER_LEN + 8;
/// Port → leg table entry for a port that is no leg's.
const NO_LEG: u32 = u32::MAX;

// ---------------------------------------------------------------------------
// What to run

#[derive(Debug, Clone, PartialEq)]
struct RunConfig {
    codec: CodecKind,
    legs: usize,
    /// Participants per room.
    size: usize,
    /// The fraction of each room that talks.
    talkers: f64,
    window: Duration,
    warmup: Duration,
    mixer_threads: usize,
}

impl RunConfig {
    fn new(codec: CodecKind, legs: usize, size: usize) -> Self {
        Self {
            codec,
            legs,
            size,
            talkers: 0.1,
            window: Duration::from_secs(10),
            warmup: Duration::from_secs(3),
            mixer_threads: 1,
        }
    }

    fn rooms(&self) -> usize {
        self.legs.div_ceil(self.size)
    }

    /// The rate `serve` mixes at: the codec's own, so nothing is resampled.
    fn sample_rate(&self) -> u32 {
        self.codec.sample_rate()
    }

    /// Talkers in a full room: `talkers × size` rounded, at least one when any talk.
    fn talkers_per_room(&self) -> usize {
        let talkers = (self.talkers * self.size as f64).round() as usize;
        if self.talkers > 0.0 {
            talkers.clamp(1, self.size)
        } else {
            0
        }
    }

    fn talkers(&self) -> usize {
        (0..self.legs).filter(|&i| self.is_talker(i)).count()
    }

    /// Whether leg `index` talks: the first legs of each room do.
    fn is_talker(&self, index: usize) -> bool {
        index % self.size < self.talkers_per_room()
    }
}

/// The codecs a run can use, by their `--codec` names.
fn codec_named(name: &str) -> Option<CodecKind> {
    match name {
        "pcmu" => Some(CodecKind::Pcmu),
        "opus" => Some(CodecKind::Opus),
        _ => None,
    }
}

fn codec_label(codec: CodecKind) -> &'static str {
    match codec {
        CodecKind::Opus => "Opus",
        _ => "G.711 μ",
    }
}

/// The default matrix: room sizes at two loads, then how the cost scales with
/// the number of legs in rooms of 30 (configurations already run are not repeated).
fn default_matrix() -> Vec<RunConfig> {
    let mut runs = Vec::new();
    for legs in [1000, 3000] {
        for size in [5, 30, 1000] {
            runs.push(RunConfig::new(CodecKind::Pcmu, legs, size));
        }
    }
    for size in [5, 30, 500] {
        runs.push(RunConfig::new(CodecKind::Opus, 500, size));
    }
    let scaling = [250, 500, 1000, 2000, 3000].map(|legs| RunConfig::new(CodecKind::Pcmu, legs, 30));
    let opus_scaling = [100, 250, 500, 1000].map(|legs| RunConfig::new(CodecKind::Opus, legs, 30));
    for run in scaling.into_iter().chain(opus_scaling) {
        if !runs.contains(&run) {
            runs.push(run);
        }
    }
    // Sharding: the same loads on two mixer threads (the machine's cores,
    // which the generator also needs).
    for (codec, legs) in [(CodecKind::Pcmu, 2000), (CodecKind::Opus, 500)] {
        runs.push(RunConfig { mixer_threads: 2, ..RunConfig::new(codec, legs, 30) });
    }
    runs
}

/// A smoke test: one small run of each codec.
fn quick_matrix() -> Vec<RunConfig> {
    [RunConfig::new(CodecKind::Pcmu, 100, 10), RunConfig::new(CodecKind::Opus, 50, 10)]
        .map(|run| RunConfig { window: Duration::from_secs(3), warmup: Duration::from_secs(1), ..run })
        .into()
}

/// Reads the command line (after cargo's own `--bench`) into the runs to make.
fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Vec<RunConfig>, String> {
    let mut options: HashMap<String, String> = HashMap::new();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--codec" | "--legs" | "--size" | "--talkers" | "--seconds" | "--warmup" | "--mixer-threads"
            | "--matrix" => {
                let value = args.next().ok_or_else(|| format!("{arg} needs a value"))?;
                options.insert(arg, value);
            }
            // Cargo passes --bench to benchmarks without the libtest harness.
            "--bench" => {}
            other => eprintln!("load: ignoring the argument {other:?}"),
        }
    }
    fn number<T: std::str::FromStr>(options: &HashMap<String, String>, name: &str) -> Result<Option<T>, String> {
        options.get(name).map(|v| v.parse().map_err(|_| format!("{name}: cannot read {v:?}"))).transpose()
    }
    let mut runs = match (number::<usize>(&options, "--legs")?, options.get("--matrix").map(String::as_str)) {
        (Some(legs), _) => {
            let codec = options.get("--codec").map_or("pcmu", String::as_str);
            let codec = codec_named(codec).ok_or_else(|| format!("--codec: {codec:?} is neither pcmu nor opus"))?;
            let size = number(&options, "--size")?.unwrap_or(30);
            vec![RunConfig::new(codec, legs, size)]
        }
        (None, None | Some("default")) => default_matrix(),
        (None, Some("quick")) => quick_matrix(),
        (None, Some(other)) => return Err(format!("--matrix: {other:?} is neither default nor quick")),
    };
    let talkers = number::<f64>(&options, "--talkers")?;
    let window = number::<f64>(&options, "--seconds")?;
    let warmup = number::<f64>(&options, "--warmup")?;
    let mixer_threads = number::<usize>(&options, "--mixer-threads")?;
    for run in &mut runs {
        run.talkers = talkers.unwrap_or(run.talkers).clamp(0.0, 1.0);
        run.window = window.map_or(run.window, Duration::from_secs_f64);
        run.warmup = warmup.map_or(run.warmup, Duration::from_secs_f64);
        run.mixer_threads = mixer_threads.unwrap_or(run.mixer_threads);
        if run.legs == 0 || run.size == 0 || run.window.is_zero() {
            return Err("--legs, --size and --seconds must be positive".into());
        }
        if run.legs > usize::from((RTP_PORTS.1 - RTP_PORTS.0) / 2) {
            return Err(format!("at most {} legs fit the RTP port range", (RTP_PORTS.1 - RTP_PORTS.0) / 2));
        }
    }
    Ok(runs)
}

// ---------------------------------------------------------------------------
// The signals

/// 20 ms packets of a signal loop, encoded once, with each frame's RFC 6464
/// level byte (voice-activity flag and level in -dBov).
struct EncodedLoop {
    payloads: Vec<Vec<u8>>,
    levels: Vec<u8>,
}

/// Formant frequencies and bandwidths (Hz) of five vowels (Peterson & Barney
/// averages), the vocal tract of the synthetic talker.
const VOWELS: [[(f64, f64); 3]; 5] = [
    [(730.0, 90.0), (1090.0, 110.0), (2440.0, 170.0)],
    [(270.0, 60.0), (2290.0, 100.0), (3010.0, 170.0)],
    [(300.0, 60.0), (870.0, 90.0), (2240.0, 170.0)],
    [(530.0, 70.0), (1840.0, 100.0), (2480.0, 160.0)],
    [(570.0, 70.0), (840.0, 90.0), (2410.0, 160.0)],
];

/// A two-pole resonator with unity gain at DC.
#[derive(Default, Clone, Copy)]
struct Resonator {
    a1: f64,
    a2: f64,
    gain: f64,
    y1: f64,
    y2: f64,
}

impl Resonator {
    fn tune(&mut self, frequency: f64, bandwidth: f64, rate: f64) {
        let r = (-std::f64::consts::PI * bandwidth / rate).exp();
        self.a1 = 2.0 * r * (2.0 * std::f64::consts::PI * frequency / rate).cos();
        self.a2 = -r * r;
        self.gain = 1.0 - self.a1 - self.a2;
    }

    fn process(&mut self, x: f64) -> f64 {
        let y = self.gain * x + self.a1 * self.y1 + self.a2 * self.y2;
        (self.y2, self.y1) = (self.y1, y);
        y
    }
}

/// A Gaussian sample (Box–Muller) with standard deviation `sigma`.
fn gaussian(rng: &mut StdRng, sigma: f64) -> f64 {
    let u: f64 = 1.0 - rng.random::<f64>();
    let v: f64 = rng.random();
    sigma * (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
}

/// The background noise of an open microphone in a quiet room.
fn background_noise(rate: u32, rng: &mut StdRng) -> Vec<f64> {
    let sigma = 32768.0 * 10f64.powf(NOISE_DBOV / 20.0);
    (0..LOOP_SECONDS * rate as usize).map(|_| gaussian(rng, sigma)).collect()
}

/// Speech-like audio: syllables of 150–400 ms, each a vowel (a glottal pulse
/// train at a gliding pitch of 100–200 Hz through three formant resonators)
/// with a smooth onset and decay, between short pauses and now and then a
/// longer one, peaking at `SPEECH_PEAK_DBFS`, over the background noise.
fn speech(rate: u32, rng: &mut StdRng) -> Vec<f64> {
    let fs = rate as f64;
    let total = LOOP_SECONDS * rate as usize;
    let mut voice = Vec::with_capacity(total + rate as usize);
    let mut tract = [Resonator::default(); 3];
    // The glottal pulse's spectral tilt: two one-pole low-passes at 200 Hz,
    // then the lips' radiation (a differentiator), which also removes DC.
    let tilt = (-2.0 * std::f64::consts::PI * 200.0 / fs).exp();
    let (mut phase, mut low1, mut low2, mut previous) = (0.0, 0.0, 0.0, 0.0);
    let (attack, release) = (0.03 * fs, 0.05 * fs);
    while voice.len() < total {
        let length = (rng.random_range(0.15..0.40) * fs) as usize;
        let vowel = VOWELS[rng.random_range(0..VOWELS.len())];
        for (resonator, (frequency, bandwidth)) in tract.iter_mut().zip(vowel) {
            resonator.tune(frequency, bandwidth, fs);
        }
        let pitch_start: f64 = rng.random_range(100.0..200.0);
        let pitch_end = (pitch_start * rng.random_range(0.8..1.05)).max(100.0);
        for n in 0..length {
            let progress = n as f64 / length as f64;
            phase += (pitch_start + (pitch_end - pitch_start) * progress) / fs;
            let pulse = if phase >= 1.0 {
                phase -= 1.0;
                1.0
            } else {
                0.0
            };
            low1 = (1.0 - tilt) * pulse + tilt * low1;
            low2 = (1.0 - tilt) * low1 + tilt * low2;
            let radiated = low2 - previous;
            previous = low2;
            let shaped = tract.iter_mut().fold(radiated, |x, resonator| resonator.process(x));
            let from_end = (length - n) as f64;
            let envelope = if (n as f64) < attack {
                0.5 - 0.5 * (std::f64::consts::PI * n as f64 / attack).cos()
            } else if from_end < release {
                0.5 - 0.5 * (std::f64::consts::PI * from_end / release).cos()
            } else {
                1.0
            };
            voice.push(shaped * envelope);
        }
        let pause = if rng.random_bool(0.25) { rng.random_range(0.25..0.6) } else { rng.random_range(0.04..0.12) };
        voice.extend(std::iter::repeat_n(0.0, (pause * fs) as usize));
    }
    voice.truncate(total);
    let peak = voice.iter().fold(0.0f64, |m, s| m.max(s.abs()));
    let scale = 32767.0 * 10f64.powf(SPEECH_PEAK_DBFS / 20.0) / peak;
    voice.iter().zip(background_noise(rate, rng)).map(|(s, noise)| s * scale + noise).collect()
}

/// The RFC 6464 level byte of a frame: 20·log10(rms / 32768) as -dBov in
/// 0..=127, with the voice-activity flag on loud frames.
fn level_byte(frame: &[i16]) -> u8 {
    let power = frame.iter().map(|&s| (s as f64).powi(2)).sum::<f64>() / frame.len() as f64;
    let dbov = 10.0 * (power / (32768.0 * 32768.0)).max(1e-13).log10();
    let level = (-dbov).round().clamp(0.0, 127.0) as u8;
    if level <= VOICE_LEVEL {
        0x80 | level
    } else {
        level
    }
}

/// Encodes `signal` into 20 ms packets of `codec`.
fn encode_loop(codec: CodecKind, signal: &[f64]) -> EncodedLoop {
    let pcm: Vec<i16> = signal.iter().map(|s| s.round().clamp(-32768.0, 32767.0) as i16).collect();
    let frames: Vec<&[i16]> = pcm.chunks_exact(codec.frame_samples()).collect();
    let levels = frames.iter().map(|frame| level_byte(frame)).collect();
    let payloads = match codec {
        CodecKind::Pcmu => frames.iter().map(|frame| frame.iter().map(|&s| linear_to_ulaw(s)).collect()).collect(),
        _ => {
            let mut encoder = codec.new_coder(&OpusSettings::default()).expect("an Opus encoder");
            let mut out = [0u8; 1500];
            // Twice round the loop, keeping the second pass: its first packet
            // continues the encoder state of the last, so the loop has no seam.
            for frame in &frames {
                encoder.encode(frame, &mut out);
            }
            frames
                .iter()
                .map(|frame| {
                    let n = encoder.encode(frame, &mut out);
                    out[..n].to_vec()
                })
                .collect()
        }
    };
    EncodedLoop { payloads, levels }
}

// ---------------------------------------------------------------------------
// The bridge process

/// `sipbridge serve` as a child process: its stdout lines, with the time each
/// was read, arrive on `lines`; warnings on its stderr are passed on.
struct Server {
    child: Child,
    address: SocketAddr,
    lines: mpsc::Receiver<(Instant, String)>,
}

impl Server {
    fn start(config: &RunConfig) -> Server {
        let port = UdpSocket::bind("127.0.0.1:0").and_then(|s| s.local_addr()).expect("a free UDP port").port();
        let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let mut child = Command::new(env!("CARGO_BIN_EXE_sipbridge"))
            .args(["serve", "--listen", &address.to_string()])
            .args(["--rtp-ports", &format!("{}-{}", RTP_PORTS.0, RTP_PORTS.1)])
            .args(["--sample-rate", &config.sample_rate().to_string()])
            .args(["--mixer-threads", &config.mixer_threads.to_string()])
            .args(["--stats-every", "1", "--media-timeout", "0"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("sipbridge serve starts");
        let (tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().expect("piped stdout");
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send((Instant::now(), line));
            }
        });
        let stderr = child.stderr.take().expect("piped stderr");
        thread::spawn(move || {
            // Enough to see what went wrong without flooding the progress output.
            let mut shown = 0;
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if (line.contains("WARN") || line.contains("ERROR")) && shown < 10 {
                    eprintln!("  bridge: {line}");
                    shown += 1;
                }
            }
        });
        let server = Server { child, address, lines };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match server.lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok((_, line)) if line.contains("listening on") => return server,
                Ok(_) => {}
                Err(_) => panic!("sipbridge serve did not start listening within 10 s"),
            }
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops the bridge with SIGTERM (SIGKILL if it takes over 20 s) and
    /// returns every stdout line not read yet.
    fn terminate(mut self) -> Vec<(Instant, String)> {
        // SAFETY: kill(2) on our own child's pid, which wait() has not reaped.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.child.try_wait().ok().flatten().is_none() {
            if Instant::now() > deadline {
                eprintln!("  the bridge ignored SIGTERM for 20 s; killing it");
                let _ = self.child.kill();
                let _ = self.child.wait();
                break;
            }
            thread::sleep(Duration::from_millis(20));
        }
        // The reader ends at the pipe's end, when the process is gone.
        self.lines.iter().collect()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// One `mixer thread=… ticks=… late=… p50_us=… p99_us=… max_us=…` line.
#[derive(Debug, Default, Clone, Copy)]
struct TickLine {
    ticks: u64,
    late: u64,
    p50_us: u64,
    p99_us: u64,
    max_us: u64,
}

fn parse_tick_line(line: &str) -> Option<TickLine> {
    let fields = line.strip_prefix("mixer ")?;
    let mut tick = TickLine::default();
    for field in fields.split_whitespace() {
        let (key, value) = field.split_once('=')?;
        let value: u64 = value.parse().ok()?;
        match key {
            "ticks" => tick.ticks = value,
            "late" => tick.late = value,
            "p50_us" => tick.p50_us = value,
            "p99_us" => tick.p99_us = value,
            "max_us" => tick.max_us = value,
            _ => {}
        }
    }
    Some(tick)
}

/// The value of `name=` in an event line of the bridge.
fn event_field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    line.split_whitespace().find_map(|field| field.strip_prefix(name)?.strip_prefix('='))
}

/// What the bridge's event lines say about a run: who joined and left, the
/// RTP it counted from the legs, and whom its talker detection heard.
#[derive(Debug, Default)]
struct BridgeLog {
    joined: usize,
    left: usize,
    received: u64,
    talkers_heard: usize,
    listeners_heard: usize,
}

impl BridgeLog {
    fn read(lines: &[(Instant, String)], config: &RunConfig) -> Self {
        let mut log = BridgeLog::default();
        // The bridge numbers participants itself; their From header names our leg.
        let mut leg_of_participant = HashMap::new();
        let mut heard = std::collections::HashSet::new();
        for (_, line) in lines {
            let participant = event_field(line, "participant");
            if line.starts_with("joined ") {
                log.joined += 1;
                let leg = event_field(line, "remote").and_then(|r| {
                    r.trim_start_matches('<').strip_prefix("sip:leg")?.split('@').next()?.parse::<usize>().ok()
                });
                if let (Some(participant), Some(leg)) = (participant, leg) {
                    leg_of_participant.insert(participant.to_string(), leg);
                }
            } else if line.starts_with("left ") {
                log.left += 1;
                log.received += event_field(line, "received").and_then(|r| r.parse::<u64>().ok()).unwrap_or(0);
            } else if line.starts_with("talking ") && line.ends_with("talking=true") {
                heard.extend(participant.and_then(|p| leg_of_participant.get(p)).copied());
            }
        }
        log.talkers_heard = heard.iter().filter(|&&leg| config.is_talker(leg)).count();
        log.listeners_heard = heard.len() - log.talkers_heard;
        log
    }
}

// ---------------------------------------------------------------------------
// Reading /proc

fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        100.0
    }
}

/// The process's user and system CPU time so far, all threads, live and exited.
fn process_cpu(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start at the third; utime and stime are the 14th and 15th.
    let fields: Vec<&str> = stat.rsplit_once(')').map_or("", |(_, rest)| rest).split_whitespace().collect();
    let ticks: u64 = fields.get(11..13).map_or(0, |f| f.iter().filter_map(|v| v.parse::<u64>().ok()).sum());
    Duration::from_secs_f64(ticks as f64 / clock_ticks_per_second())
}

/// CPU time so far of each thread whose name starts with `prefix`, by
/// thread id (the kernel keeps 15 characters of a name: `sipbridge-mixer`).
fn threads_cpu(pid: u32, prefix: &str) -> HashMap<u32, Duration> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return HashMap::new() };
    tasks
        .filter_map(|task| {
            let task = task.ok()?;
            let tid = task.file_name().to_str()?.parse().ok()?;
            let name = std::fs::read_to_string(task.path().join("comm")).ok()?;
            if !name.starts_with(prefix) {
                return None;
            }
            let schedstat = std::fs::read_to_string(task.path().join("schedstat")).ok()?;
            let nanoseconds = schedstat.split_whitespace().next()?.parse().ok()?;
            Some((tid, Duration::from_nanos(nanoseconds)))
        })
        .collect()
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let line = status.lines().find_map(|l| l.strip_prefix("VmRSS:"));
    line.and_then(|l| l.split_whitespace().next()?.parse().ok()).unwrap_or(0)
}

fn own_cpu() -> Duration {
    // SAFETY: getrusage fills the zeroed struct it is given.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let time = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    time(usage.ru_utime) + time(usage.ru_stime)
}

/// Datagrams the kernel dropped so far.
#[derive(Debug, Default, Clone, Copy)]
struct KernelDrops {
    /// UDP receive-buffer overruns on every socket of the machine (/proc/net/snmp).
    udp_receive_buffer: u64,
    /// Of those, on the generator's RTP socket (/proc/net/udp).
    generator_socket: u64,
    /// Packets the per-CPU backlog (loopback's receive queue) turned away (/proc/net/softnet_stat).
    backlog: u64,
}

impl KernelDrops {
    fn read(generator_port: u16) -> Self {
        let snmp = std::fs::read_to_string("/proc/net/snmp").unwrap_or_default();
        let mut udp = snmp.lines().filter(|l| l.starts_with("Udp:"));
        let (names, values) = (udp.next().unwrap_or(""), udp.next().unwrap_or(""));
        let udp_receive_buffer = names
            .split_whitespace()
            .zip(values.split_whitespace())
            .find_map(|(name, value)| (name == "RcvbufErrors").then(|| value.parse().ok()).flatten())
            .unwrap_or(0);
        let sockets = std::fs::read_to_string("/proc/net/udp").unwrap_or_default();
        let local = format!(":{generator_port:04X}");
        let generator_socket = sockets
            .lines()
            .skip(1)
            .filter(|l| l.split_whitespace().nth(1).is_some_and(|a| a.ends_with(&local)))
            .filter_map(|l| l.split_whitespace().last()?.parse::<u64>().ok())
            .sum();
        let softnet = std::fs::read_to_string("/proc/net/softnet_stat").unwrap_or_default();
        let backlog = softnet.lines().filter_map(|l| u64::from_str_radix(l.split_whitespace().nth(1)?, 16).ok()).sum();
        Self { udp_receive_buffer, generator_socket, backlog }
    }
}

// ---------------------------------------------------------------------------
// RTP

/// What the generator's threads count, shared with the main thread.
struct Counters {
    /// Which leg a bridge port belongs to, by port.
    leg_of_port: Vec<AtomicU32>,
    /// RTP packets received for each leg.
    received: Vec<AtomicU64>,
    /// RTCP from the bridge, and datagrams from ports that are no leg's.
    rtcp: AtomicU64,
    stray: AtomicU64,
    /// RTP with a payload type other than the negotiated one.
    wrong_payload_type: AtomicU64,
    sent: AtomicU64,
    send_errors: AtomicU64,
    /// Send slices that went out more than a slice late.
    late_slices: AtomicU64,
}

impl Counters {
    fn new(legs: usize) -> Self {
        Self {
            leg_of_port: (0..=u16::MAX).map(|_| AtomicU32::new(NO_LEG)).collect(),
            received: (0..legs).map(|_| AtomicU64::new(0)).collect(),
            rtcp: AtomicU64::new(0),
            stray: AtomicU64::new(0),
            wrong_payload_type: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            send_errors: AtomicU64::new(0),
            late_slices: AtomicU64::new(0),
        }
    }

    fn received_per_leg(&self) -> Vec<u64> {
        self.received.iter().map(|r| r.load(Ordering::Relaxed)).collect()
    }
}

fn sockaddr(address: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: address.port().to_be(),
        sin_addr: libc::in_addr { s_addr: u32::from(*address.ip()).to_be() },
        sin_zero: [0; 8],
    }
}

/// Asks for `SOCKET_BUFFER` bytes of send and receive buffer, beyond
/// net.core.[rw]mem_max when allowed (CAP_NET_ADMIN); returns what the kernel
/// granted (it doubles the request for its bookkeeping).
fn enlarge_buffers(socket: &UdpSocket) -> (usize, usize) {
    let fd = socket.as_raw_fd();
    let size = SOCKET_BUFFER as libc::c_int;
    let set = |option: libc::c_int| {
        // SAFETY: a c_int option value of the right length on an open socket.
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                option,
                (&size as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        }
    };
    let get = |option: libc::c_int| {
        let mut value: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: the value and its length are ours to write.
        unsafe { libc::getsockopt(fd, libc::SOL_SOCKET, option, (&mut value as *mut libc::c_int).cast(), &mut len) };
        value as usize
    };
    for (forced, capped) in [(libc::SO_RCVBUFFORCE, libc::SO_RCVBUF), (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF)] {
        if set(forced) != 0 {
            set(capped);
        }
    }
    (get(libc::SO_RCVBUF), get(libc::SO_SNDBUF))
}

/// One leg's outgoing RTP stream.
struct Stream {
    destination: libc::sockaddr_in,
    ssrc: u32,
    sequence: u16,
    timestamp: u32,
    /// Packets sent so far; the next carries frame `(first_frame + sent)` of its loop.
    sent: u64,
    first_frame: usize,
    talker: bool,
}

/// The sending thread's signals and its scratch space for sendmmsg.
struct Sender {
    socket: Arc<UdpSocket>,
    talk: EncodedLoop,
    listen: EncodedLoop,
    payload_type: u8,
    /// RTP clock units per packet.
    timestamp_step: u32,
    /// Whether packets carry the RFC 6464 audio level.
    audio_level: bool,
    headers: Vec<[u8; HEADER_MAX]>,
    iovecs: Vec<[libc::iovec; 2]>,
    messages: Vec<libc::mmsghdr>,
}

// SAFETY: the raw pointers in `iovecs` and `messages` are scratch space, set
// anew before each sendmmsg; nothing reads them across threads.
unsafe impl Send for Sender {}

impl Sender {
    fn new(socket: Arc<UdpSocket>, codec: CodecKind, talk: EncodedLoop, listen: EncodedLoop) -> Self {
        let empty = libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 };
        Self {
            socket,
            talk,
            listen,
            payload_type: codec.default_payload_type(),
            timestamp_step: codec.clock_rate() / 50,
            audio_level: codec == CodecKind::Opus,
            headers: vec![[0; HEADER_MAX]; BATCH],
            iovecs: vec![[empty; 2]; BATCH],
            // SAFETY: mmsghdr is plain data; all zeros is a valid (empty) value.
            messages: (0..BATCH).map(|_| unsafe { std::mem::zeroed() }).collect(),
        }
    }

    /// Sends the next packet of every stream in `streams`.
    fn send(&mut self, streams: &mut [Stream], counters: &Counters) {
        for batch in streams.chunks_mut(BATCH) {
            for (i, stream) in batch.iter_mut().enumerate() {
                let signal = if stream.talker { &self.talk } else { &self.listen };
                let frame = (stream.first_frame + stream.sent as usize) % signal.payloads.len();
                let header = &mut self.headers[i];
                let fixed: &mut [u8; rtp::HEADER_LEN] = (&mut header[..rtp::HEADER_LEN]).try_into().expect("12 bytes");
                rtp::write_header(
                    fixed,
                    stream.sent == 0,
                    self.payload_type,
                    stream.sequence,
                    stream.timestamp,
                    stream.ssrc,
                );
                let header_len = if self.audio_level {
                    // The X bit, then one RFC 8285 one-byte element (id 1, one
                    // byte: the level) padded to a 32-bit word.
                    header[0] |= 0x10;
                    let element = [0xbe, 0xde, 0, 1, AUDIO_LEVEL_ID << 4, signal.levels[frame], 0, 0];
                    header[rtp::HEADER_LEN..HEADER_MAX].copy_from_slice(&element);
                    HEADER_MAX
                } else {
                    rtp::HEADER_LEN
                };
                let payload = &signal.payloads[frame];
                self.iovecs[i] = [
                    libc::iovec { iov_base: header.as_mut_ptr().cast(), iov_len: header_len },
                    libc::iovec { iov_base: payload.as_ptr() as *mut libc::c_void, iov_len: payload.len() },
                ];
                let message = &mut self.messages[i].msg_hdr;
                message.msg_name = (&mut stream.destination as *mut libc::sockaddr_in).cast();
                message.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
                message.msg_iov = self.iovecs[i].as_mut_ptr();
                message.msg_iovlen = 2;
                stream.sent += 1;
                stream.sequence = stream.sequence.wrapping_add(1);
                stream.timestamp = stream.timestamp.wrapping_add(self.timestamp_step);
            }
            let errors = send_all(&self.socket, &mut self.messages[..batch.len()]);
            counters.sent.fetch_add((batch.len() - errors) as u64, Ordering::Relaxed);
            counters.send_errors.fetch_add(errors as u64, Ordering::Relaxed);
        }
    }
}

/// Sends every message, skipping one whenever the kernel refuses it; returns how many it refused.
fn send_all(socket: &UdpSocket, messages: &mut [libc::mmsghdr]) -> usize {
    let (mut done, mut errors) = (0, 0);
    while done < messages.len() {
        let rest = &mut messages[done..];
        // SAFETY: each message points at a destination, a header and a payload
        // that outlive this call (see `Sender::send`).
        let sent = unsafe { libc::sendmmsg(socket.as_raw_fd(), rest.as_mut_ptr(), rest.len() as libc::c_uint, 0) };
        if sent >= 0 {
            done += sent as usize;
        } else if std::io::Error::last_os_error().kind() != ErrorKind::Interrupted {
            // The first message failed (for example ECONNREFUSED left by an
            // ICMP error from a port that closed): skip it.
            done += 1;
            errors += 1;
        }
    }
    errors
}

/// The sending thread: every slice of the packet interval, on an absolute
/// schedule, one packet for each stream of that slice. New streams join the
/// slice with the fewest.
fn send_media(mut sender: Sender, new_streams: mpsc::Receiver<Stream>, counters: Arc<Counters>, stop: Arc<AtomicBool>) {
    let mut slices: Vec<Vec<Stream>> = (0..SLICES).map(|_| Vec::new()).collect();
    let slice_interval = PACKET_INTERVAL / SLICES as u32;
    let start = Instant::now();
    for slice in 0u32.. {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        for stream in new_streams.try_iter() {
            slices.iter_mut().min_by_key(|s| s.len()).expect("slices").push(stream);
        }
        let deadline = start + slice_interval * slice;
        let now = Instant::now();
        if deadline > now {
            thread::sleep(deadline - now);
        } else if now - deadline > slice_interval {
            counters.late_slices.fetch_add(1, Ordering::Relaxed);
        }
        sender.send(&mut slices[slice as usize % SLICES], &counters);
    }
}

/// The receiving thread: counts the RTP that comes back, per leg, until `stop`.
fn receive_media(socket: Arc<UdpSocket>, payload_type: u8, counters: Arc<Counters>, stop: Arc<AtomicBool>) {
    let mut buffers = vec![[0u8; MAX_DATAGRAM]; BATCH];
    // SAFETY: sockaddr_in and mmsghdr are plain data; zeros are valid values.
    let mut sources: Vec<libc::sockaddr_in> = (0..BATCH).map(|_| unsafe { std::mem::zeroed() }).collect();
    let mut iovecs: Vec<libc::iovec> =
        buffers.iter_mut().map(|b| libc::iovec { iov_base: b.as_mut_ptr().cast(), iov_len: MAX_DATAGRAM }).collect();
    let mut messages: Vec<libc::mmsghdr> = (0..BATCH).map(|_| unsafe { std::mem::zeroed() }).collect();
    for ((message, source), iovec) in messages.iter_mut().zip(&mut sources).zip(&mut iovecs) {
        message.msg_hdr.msg_name = (source as *mut libc::sockaddr_in).cast();
        message.msg_hdr.msg_iov = iovec as *mut libc::iovec;
        message.msg_hdr.msg_iovlen = 1;
    }
    while !stop.load(Ordering::Relaxed) {
        for message in &mut messages {
            message.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        }
        // SAFETY: every message points at its own live source address and buffer.
        // Takes what is queued without waiting: a thread blocked on the
        // socket would be woken by the bridge's sends, and on loopback the
        // sender pays for that wake-up, which a phone across a network
        // does not cost the bridge. Polling every 2 ms instead keeps it out.
        let received = unsafe {
            libc::recvmmsg(
                socket.as_raw_fd(),
                messages.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if received < BATCH as i32 {
            thread::sleep(Duration::from_millis(2));
        }
        for i in 0..received.max(0) as usize {
            let datagram = &buffers[i][..messages[i].msg_len as usize];
            let leg = counters.leg_of_port[u16::from_be(sources[i].sin_port) as usize].load(Ordering::Relaxed);
            if leg == NO_LEG {
                counters.stray.fetch_add(1, Ordering::Relaxed);
            } else if rtcp::is_rtcp(datagram) {
                counters.rtcp.fetch_add(1, Ordering::Relaxed);
            } else if datagram.get(1).map(|b| b & 0x7f) != Some(payload_type) {
                counters.wrong_payload_type.fetch_add(1, Ordering::Relaxed);
            } else {
                counters.received[leg as usize].fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

// ---------------------------------------------------------------------------
// SIP

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CallState {
    NotStarted,
    /// INVITE sent, nothing back yet.
    Calling,
    /// A provisional response came.
    Proceeding,
    Established,
    Failed,
}

/// The dialog a 200 set up.
struct Dialog {
    /// The To header with the bridge's tag.
    to: String,
    /// The Request-URI of in-dialog requests: the 200's Contact.
    target: String,
    /// The ACK, kept to answer retransmitted 200s with.
    ack: Vec<u8>,
    bye_answered: bool,
}

struct Call {
    room: usize,
    talker: bool,
    call_id: String,
    from: String,
    branch: String,
    invite: Vec<u8>,
    state: CallState,
    sent_at: Instant,
    /// When to resend the INVITE if nothing came back, and the interval after that (RFC 3261 Timer A).
    retransmit_at: Instant,
    retransmit_interval: Duration,
    dialog: Option<Dialog>,
}

/// The value of the first header `name` of a SIP message.
fn header<'a>(message: &'a str, name: &str) -> Option<&'a str> {
    let head = message.split("\r\n\r\n").next()?;
    head.lines().skip(1).find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.trim().eq_ignore_ascii_case(name).then(|| value.trim())
    })
}

/// Where the bridge wants this leg's RTP: the answer's c= and m= port.
fn answer_address(response: &str) -> Result<SocketAddrV4, String> {
    let body = response.split_once("\r\n\r\n").map(|(_, body)| body).ok_or("no body")?;
    let answer = SessionDescription::parse(body.as_bytes()).map_err(|e| format!("bad SDP answer: {e}"))?;
    let media = answer.media.first().ok_or("no m= line")?;
    match media.connection.or(answer.connection) {
        Some(std::net::IpAddr::V4(ip)) if media.port != 0 => Ok(SocketAddrV4::new(ip, media.port)),
        _ => Err("the answer has no IPv4 address and port".into()),
    }
}

/// The generator's SIP user agent: one socket for every call.
struct SipClient {
    socket: UdpSocket,
    local: SocketAddr,
    bridge: SocketAddr,
    /// Distinguishes this run's Call-IDs from earlier runs'.
    run_tag: u32,
    calls: Vec<Call>,
    /// Calls that failed, by reason.
    failures: BTreeMap<String, usize>,
    /// Established calls' media goes to the sending thread, their ports into the counters.
    new_streams: mpsc::Sender<Stream>,
    counters: Arc<Counters>,
    loop_frames: usize,
    rng: StdRng,
}

impl SipClient {
    fn new(
        bridge: SocketAddr,
        config: &RunConfig,
        rtp_port: u16,
        new_streams: mpsc::Sender<Stream>,
        counters: Arc<Counters>,
        loop_frames: usize,
    ) -> Self {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("a SIP socket");
        enlarge_buffers(&socket);
        socket.set_read_timeout(Some(Duration::from_millis(2))).expect("a read timeout");
        let local = socket.local_addr().expect("the SIP socket's address");
        let mut rng = StdRng::from_os_rng();
        let run_tag = rng.random();
        let now = Instant::now();
        let calls = (0..config.legs)
            .map(|index| {
                let room = index / config.size;
                let call_id = format!("load-{run_tag:08x}-{index}");
                let from = format!("<sip:leg{index}@{local}>;tag={:08x}", rng.random::<u32>());
                let branch = format!("z9hG4bK{run_tag:08x}i{index}");
                let sdp = offer(config.codec, rtp_port, index);
                let uri = format!("sip:room{room}@{bridge}");
                let invite = format!(
                    "INVITE {uri} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch={branch};rport\r\nMax-Forwards: 70\r\n\
                     From: {from}\r\nTo: <{uri}>\r\nCall-ID: {call_id}\r\nCSeq: 1 INVITE\r\n\
                     Contact: <sip:leg{index}@{local}>\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
                    sdp.len()
                );
                Call {
                    room,
                    talker: config.is_talker(index),
                    call_id,
                    from,
                    branch,
                    invite: invite.into_bytes(),
                    state: CallState::NotStarted,
                    sent_at: now,
                    retransmit_at: now,
                    retransmit_interval: RETRANSMIT_FIRST,
                    dialog: None,
                }
            })
            .collect();
        Self {
            socket,
            local,
            bridge,
            run_tag,
            calls,
            failures: BTreeMap::new(),
            new_streams,
            counters,
            loop_frames,
            rng,
        }
    }

    fn send(&self, message: &[u8]) {
        if let Err(error) = self.socket.send_to(message, self.bridge) {
            eprintln!("  SIP send failed: {error}");
        }
    }

    fn count(&self, state: CallState) -> usize {
        self.calls.iter().filter(|c| c.state == state).count()
    }

    fn fail(&mut self, index: usize, reason: String) {
        self.calls[index].state = CallState::Failed;
        *self.failures.entry(reason).or_default() += 1;
    }

    /// Calls every leg, at most `MAX_INVITES_IN_FLIGHT` unanswered and
    /// `INVITES_PER_SECOND` new a second, until each call is set up or failed.
    fn set_up(&mut self) {
        let interval = Duration::from_secs_f64(1.0 / INVITES_PER_SECOND);
        let mut next_invite = Instant::now();
        let mut next = 0;
        let mut in_flight = 0;
        let mut last_progress = Instant::now();
        while next < self.calls.len() || in_flight > 0 {
            let now = Instant::now();
            while next < self.calls.len() && in_flight < MAX_INVITES_IN_FLIGHT && next_invite <= now {
                let call = &mut self.calls[next];
                call.state = CallState::Calling;
                (call.sent_at, call.retransmit_at) = (now, now + RETRANSMIT_FIRST);
                self.send(&self.calls[next].invite);
                (next, in_flight, next_invite) = (next + 1, in_flight + 1, next_invite + interval);
            }
            for index in 0..next {
                let call = &mut self.calls[index];
                if !matches!(call.state, CallState::Calling | CallState::Proceeding) {
                    continue;
                }
                if now - call.sent_at > INVITE_TIMEOUT {
                    self.fail(index, "no final response".into());
                } else if call.state == CallState::Calling && now >= call.retransmit_at {
                    call.retransmit_interval *= 2;
                    call.retransmit_at = now + call.retransmit_interval;
                    self.send(&self.calls[index].invite);
                }
            }
            self.receive_one();
            in_flight = self.calls[..next]
                .iter()
                .filter(|c| matches!(c.state, CallState::Calling | CallState::Proceeding))
                .count();
            if last_progress.elapsed() >= Duration::from_secs(2) {
                let established = self.count(CallState::Established);
                eprintln!("  {established}/{} legs set up, {in_flight} in flight", self.calls.len());
                last_progress = Instant::now();
            }
        }
    }

    /// Handles what the bridge sends until `deadline` (retransmitted 200s want their ACK again).
    fn serve_until(&mut self, deadline: Instant) {
        while Instant::now() < deadline {
            self.receive_one();
        }
    }

    /// Sends a BYE on every established call, paced, and waits a little for the 200s.
    fn hang_up(&mut self) -> usize {
        let interval = Duration::from_secs_f64(1.0 / BYES_PER_SECOND);
        let mut next_bye = Instant::now();
        for index in 0..self.calls.len() {
            let Some(dialog) = &self.calls[index].dialog else { continue };
            let bye = self.request("BYE", 2, &self.calls[index], dialog);
            self.send(&bye);
            next_bye += interval;
            self.serve_until(next_bye);
        }
        let answered =
            |calls: &[Call]| calls.iter().filter(|c| c.dialog.as_ref().is_some_and(|d| d.bye_answered)).count();
        let wanted = self.calls.iter().filter(|c| c.dialog.is_some()).count();
        let deadline = Instant::now() + BYE_WAIT;
        while Instant::now() < deadline && answered(&self.calls) < wanted {
            self.serve_until(Instant::now() + Duration::from_millis(50));
        }
        answered(&self.calls)
    }

    /// An in-dialog request with a fresh branch.
    fn request(&self, method: &str, cseq: u32, call: &Call, dialog: &Dialog) -> Vec<u8> {
        format!(
            "{method} {} SIP/2.0\r\nVia: SIP/2.0/UDP {};branch=z9hG4bK{:08x}r{}{}\r\nMax-Forwards: 70\r\n\
             From: {}\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: {cseq} {method}\r\nContent-Length: 0\r\n\r\n",
            dialog.target,
            self.local,
            self.run_tag,
            call.call_id.rsplit('-').next().unwrap_or(""),
            method.to_lowercase(),
            call.from,
            dialog.to,
            call.call_id,
        )
        .into_bytes()
    }

    /// Reads and handles one datagram, if one comes within the socket's read timeout.
    fn receive_one(&mut self) {
        let mut buf = [0u8; 65_535];
        let Ok((n, _)) = self.socket.recv_from(&mut buf) else { return };
        let Ok(text) = std::str::from_utf8(&buf[..n]) else { return };
        // Requests from the bridge (a BYE when it shuts down) need no answer here.
        let Some(status) = text.strip_prefix("SIP/2.0 ").and_then(|s| s.get(..3)?.parse::<u16>().ok()) else {
            return;
        };
        let prefix = format!("load-{:08x}-", self.run_tag);
        let Some(index) = header(text, "Call-ID")
            .and_then(|id| id.strip_prefix(prefix.as_str())?.parse::<usize>().ok())
            .filter(|&i| i < self.calls.len())
        else {
            return;
        };
        let method = header(text, "CSeq").and_then(|c| c.split_whitespace().nth(1)).unwrap_or("");
        match (method, status) {
            ("INVITE", 100..=199) if self.calls[index].state == CallState::Calling => {
                self.calls[index].state = CallState::Proceeding;
            }
            ("INVITE", 100..=199) => {}
            ("INVITE", 200..=299) => self.on_answer(index, text),
            ("INVITE", _) => self.on_refusal(index, status, text),
            ("BYE", 200..=299) => {
                if let Some(dialog) = self.calls[index].dialog.as_mut() {
                    dialog.bye_answered = true;
                }
            }
            _ => {}
        }
    }

    fn on_answer(&mut self, index: usize, response: &str) {
        if let Some(dialog) = &self.calls[index].dialog {
            self.send(&dialog.ack);
            return;
        }
        if self.calls[index].state == CallState::Failed {
            return;
        }
        let parsed = (|| {
            let to = header(response, "To").ok_or("no To")?.to_string();
            let contact = header(response, "Contact").ok_or("no Contact")?;
            let target = contact.trim_start_matches('<').split('>').next().unwrap_or(contact).to_string();
            Ok::<_, String>((to, target, answer_address(response)?))
        })();
        let (to, target, remote) = match parsed {
            Ok(parsed) => parsed,
            Err(reason) => return self.fail(index, format!("unusable 200: {reason}")),
        };
        let mut dialog = Dialog { to, target, ack: Vec::new(), bye_answered: false };
        dialog.ack = self.request("ACK", 1, &self.calls[index], &dialog);
        self.send(&dialog.ack);
        self.counters.leg_of_port[remote.port() as usize].store(index as u32, Ordering::Relaxed);
        let call = &mut self.calls[index];
        call.state = CallState::Established;
        let stream = Stream {
            destination: sockaddr(remote),
            ssrc: self.rng.random(),
            sequence: self.rng.random(),
            timestamp: self.rng.random(),
            sent: 0,
            first_frame: self.rng.random_range(0..self.loop_frames),
            talker: call.talker,
        };
        call.dialog = Some(dialog);
        // The sending thread outlives the calls' setup; if it is gone there is nothing to send anyway.
        let _ = self.new_streams.send(stream);
    }

    /// A final error response: ACK it on the INVITE's transaction (RFC 3261 §17.1.1.3).
    fn on_refusal(&mut self, index: usize, status: u16, response: &str) {
        let call = &self.calls[index];
        let uri = format!("sip:room{}@{}", call.room, self.bridge);
        let ack = format!(
            "ACK {uri} SIP/2.0\r\nVia: SIP/2.0/UDP {};branch={};rport\r\nMax-Forwards: 70\r\nFrom: {}\r\nTo: {}\r\n\
             Call-ID: {}\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n",
            self.local,
            call.branch,
            call.from,
            header(response, "To").unwrap_or(""),
            call.call_id,
        );
        self.send(ack.as_bytes());
        if matches!(call.state, CallState::Calling | CallState::Proceeding) {
            let reason = response.lines().next().and_then(|l| l.strip_prefix("SIP/2.0 ")).unwrap_or("?").to_string();
            self.fail(index, format!("{status}: {reason}"));
        }
    }
}

/// The SDP offer of one leg: only the run's codec, RTCP multiplexed, the
/// audio level extension with Opus (as WebRTC clients offer).
fn offer(codec: CodecKind, rtp_port: u16, index: usize) -> String {
    let media = match codec {
        CodecKind::Opus => {
            "m=audio {port} RTP/AVP 111\r\na=rtpmap:111 opus/48000/2\r\na=fmtp:111 minptime=10;useinbandfec=1\r\n\
             a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level\r\n"
        }
        _ => "m=audio {port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n",
    }
    .replace("{port}", &rtp_port.to_string());
    format!(
        "v=0\r\no=- {index} 1 IN IP4 127.0.0.1\r\ns=load\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n{media}\
         a=ptime:20\r\na=rtcp-mux\r\na=sendrecv\r\n"
    )
}

// ---------------------------------------------------------------------------
// A run

/// Everything measured at one instant.
struct Snapshot {
    at: Instant,
    bridge_cpu: Duration,
    mixer_cpu: HashMap<u32, Duration>,
    /// The bridge's tokio threads: SIP and the legs' receive tasks.
    io_cpu: HashMap<u32, Duration>,
    generator_cpu: Duration,
    rss_kib: u64,
    received: Vec<u64>,
    sent: u64,
    send_errors: u64,
    late_slices: u64,
    rtcp: u64,
    stray: u64,
    wrong_payload_type: u64,
    drops: KernelDrops,
}

impl Snapshot {
    fn take(pid: u32, counters: &Counters, generator_port: u16) -> Self {
        Self {
            at: Instant::now(),
            bridge_cpu: process_cpu(pid),
            mixer_cpu: threads_cpu(pid, "sipbridge-mixer"),
            io_cpu: threads_cpu(pid, "sipbridge-io"),
            generator_cpu: own_cpu(),
            rss_kib: rss_kib(pid),
            received: counters.received_per_leg(),
            sent: counters.sent.load(Ordering::Relaxed),
            send_errors: counters.send_errors.load(Ordering::Relaxed),
            late_slices: counters.late_slices.load(Ordering::Relaxed),
            rtcp: counters.rtcp.load(Ordering::Relaxed),
            stray: counters.stray.load(Ordering::Relaxed),
            wrong_payload_type: counters.wrong_payload_type.load(Ordering::Relaxed),
            drops: KernelDrops::read(generator_port),
        }
    }
}

/// One run's results.
struct Report {
    config: RunConfig,
    established: usize,
    sip_failures: usize,
    bridge_cpu_fraction: f64,
    mixer_cpu_fraction: f64,
    busiest_mixer_fraction: f64,
    io_cpu_fraction: f64,
    ticks: TickLine,
    rss_kib_per_leg: f64,
    received_ratio: f64,
    sent_ratio: f64,
    generator_cpu_fraction: f64,
}

impl Report {
    /// Printed once after the table.
    const NOTES: &'static str = "\n`*`: overloaded (over 1% of ticks late, or under 95% of the packets back): the \
         per-leg CPU figures then understate what the whole load would cost, as the bridge skipped work. \
         Tick times are wall-clock durations of the mixer's tick (to 10 µs; 50000 means 50 ms or more), so they \
         include time the mixer thread was runnable but not running. The generator shares the machine's cores with \
         the bridge, and loopback delivery is charged to the sender.";

    fn late_per_mille(&self) -> f64 {
        if self.ticks.ticks > 0 {
            self.ticks.late as f64 * 1000.0 / self.ticks.ticks as f64
        } else {
            0.0
        }
    }

    fn overloaded(&self) -> bool {
        self.late_per_mille() > 10.0 || self.received_ratio < 0.95
    }

    const HEADER: &'static str =
        "| codec | mixer threads | legs | room size | rooms | talkers | bridge CPU % | bridge µs/leg·s | mixer µs/leg·s \
         | legs per mixer core | tick p50 / p99 / max µs | late ticks ‰ | RSS KiB/leg | received / expected \
         | sent / expected | generator CPU % | SIP failures |\n\
         |---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|";

    fn row(&self) -> String {
        let c = &self.config;
        let per_leg_us = |fraction: f64| fraction / c.legs as f64 * 1e6;
        let legs_per_core = if self.mixer_cpu_fraction > 0.0 {
            format!("{:.0}", c.legs as f64 / self.mixer_cpu_fraction)
        } else {
            "–".into()
        };
        let late = self.late_per_mille();
        let talkers = c.talkers();
        let overloaded = if self.overloaded() { "*" } else { "" };
        format!(
            "| {} | {} | {}{overloaded} | {} | {} | {talkers} | {:.1} | {:.2} | {:.2} | {legs_per_core} | {} / {} / {} | {late:.1} | {:.1} \
             | {:.3} | {:.3} | {:.1} | {} |",
            codec_label(c.codec),
            c.mixer_threads,
            c.legs,
            c.size,
            c.rooms(),
            self.bridge_cpu_fraction * 100.0,
            per_leg_us(self.bridge_cpu_fraction),
            per_leg_us(self.mixer_cpu_fraction),
            self.ticks.p50_us,
            self.ticks.p99_us,
            self.ticks.max_us,
            self.rss_kib_per_leg,
            self.received_ratio,
            self.sent_ratio,
            self.generator_cpu_fraction * 100.0,
            self.sip_failures,
        )
    }
}

/// Sums the `mixer` lines whose whole period (the second before the line) lies in the window.
fn tick_summary(lines: &[(Instant, String)], start: Instant, end: Instant) -> TickLine {
    let period = Duration::from_millis(1100);
    let inside: Vec<TickLine> = lines
        .iter()
        .filter(|(at, _)| *at >= start + period && *at <= end)
        .filter_map(|(_, l)| parse_tick_line(l))
        .collect();
    let mut p50s: Vec<u64> = inside.iter().map(|t| t.p50_us).collect();
    p50s.sort_unstable();
    TickLine {
        ticks: inside.iter().map(|t| t.ticks).sum(),
        late: inside.iter().map(|t| t.late).sum(),
        p50_us: p50s.get(p50s.len() / 2).copied().unwrap_or(0),
        p99_us: inside.iter().map(|t| t.p99_us).max().unwrap_or(0),
        max_us: inside.iter().map(|t| t.max_us).max().unwrap_or(0),
    }
}

/// Each thread's CPU time between two readings.
fn cpu_per_thread_since(now: &HashMap<u32, Duration>, then: &HashMap<u32, Duration>) -> Vec<Duration> {
    now.iter().map(|(tid, cpu)| cpu.saturating_sub(then.get(tid).copied().unwrap_or_default())).collect()
}

fn run(config: &RunConfig) -> Report {
    let mut rng = StdRng::seed_from_u64(0x5eed);
    let rate = config.codec.sample_rate();
    let talk = encode_loop(config.codec, &speech(rate, &mut rng));
    let listen = encode_loop(config.codec, &background_noise(rate, &mut rng));
    let loop_frames = talk.payloads.len().min(listen.payloads.len());

    let server = Server::start(config);
    let pid = server.pid();
    let rss_before = rss_kib(pid);

    let socket = Arc::new(UdpSocket::bind("127.0.0.1:0").expect("the generator's RTP socket"));
    let (receive_buffer, send_buffer) = enlarge_buffers(&socket);
    if receive_buffer < SOCKET_BUFFER {
        eprintln!("  the RTP socket's receive buffer is {} KiB (net.core.rmem_max caps it)", receive_buffer >> 10);
    }
    if send_buffer < SOCKET_BUFFER {
        eprintln!("  the RTP socket's send buffer is {} KiB (net.core.wmem_max caps it)", send_buffer >> 10);
    }
    socket.set_read_timeout(Some(Duration::from_millis(100))).expect("a read timeout");
    let rtp_port = socket.local_addr().expect("the RTP socket's address").port();
    let counters = Arc::new(Counters::new(config.legs));
    let stop_sending = Arc::new(AtomicBool::new(false));
    let stop_receiving = Arc::new(AtomicBool::new(false));
    let (new_streams, streams) = mpsc::channel();
    let sender = Sender::new(socket.clone(), config.codec, talk, listen);
    let sending = {
        let (counters, stop) = (counters.clone(), stop_sending.clone());
        thread::Builder::new()
            .name("load-send".into())
            .spawn(move || send_media(sender, streams, counters, stop))
            .expect("the sending thread")
    };
    let receiving = {
        let (socket, counters, stop) = (socket.clone(), counters.clone(), stop_receiving.clone());
        let payload_type = config.codec.default_payload_type();
        thread::Builder::new()
            .name("load-receive".into())
            .spawn(move || receive_media(socket, payload_type, counters, stop))
            .expect("the receiving thread")
    };

    let mut sip = SipClient::new(server.address, config, rtp_port, new_streams, counters.clone(), loop_frames);
    let setup_started = Instant::now();
    sip.set_up();
    let established = sip.count(CallState::Established);
    let sip_failures = sip.count(CallState::Failed);
    eprintln!(
        "  {established} legs set up in {:.1} s, {sip_failures} failed {:?}",
        setup_started.elapsed().as_secs_f64(),
        sip.failures
    );

    sip.serve_until(Instant::now() + config.warmup);
    let before = Snapshot::take(pid, &counters, rtp_port);
    sip.serve_until(before.at + config.window);
    let after = Snapshot::take(pid, &counters, rtp_port);

    stop_sending.store(true, Ordering::Relaxed);
    sending.join().expect("the sending thread");
    let byes_answered = sip.hang_up();
    stop_receiving.store(true, Ordering::Relaxed);
    receiving.join().expect("the receiving thread");
    let lines = server.terminate();

    let window = (after.at - before.at).as_secs_f64();
    let fraction = |d: Duration| d.as_secs_f64() / window;
    let mixer_deltas = cpu_per_thread_since(&after.mixer_cpu, &before.mixer_cpu);
    let expected = config.legs as f64 * window / PACKET_INTERVAL.as_secs_f64();
    let received_per_leg: Vec<u64> = after.received.iter().zip(&before.received).map(|(a, b)| a - b).collect();
    let received: u64 = received_per_leg.iter().sum();
    let starved = received_per_leg.iter().filter(|&&r| (r as f64) < 0.5 * window * 50.0).count();
    let log = BridgeLog::read(&lines, config);
    let talkers = config.talkers();
    let ticks = tick_summary(&lines, before.at, after.at);
    let drops = |f: fn(&KernelDrops) -> u64| f(&after.drops) - f(&before.drops);
    eprintln!(
        "  window {window:.2} s: received {received} RTP ({} RTCP, {} stray, {} wrong payload type), {starved} legs \
         under half their packets; sent {} ({} refused), {} send slices over 5 ms late; \
         kernel drops: {} UDP receive-buffer (system-wide), {} on the generator's socket, {} backlog; \
         {byes_answered}/{established} BYEs answered; the bridge logged {} joins and {} leaves, counted {} of the {} \
         RTP packets sent in all, and heard {}/{talkers} talkers and {} listeners talk",
        after.rtcp - before.rtcp,
        after.stray - before.stray,
        after.wrong_payload_type - before.wrong_payload_type,
        after.sent - before.sent,
        after.send_errors - before.send_errors,
        after.late_slices - before.late_slices,
        drops(|d| d.udp_receive_buffer),
        drops(|d| d.generator_socket),
        drops(|d| d.backlog),
        log.joined,
        log.left,
        log.received,
        counters.sent.load(Ordering::Relaxed),
        log.talkers_heard,
        log.listeners_heard,
    );
    Report {
        config: config.clone(),
        established,
        sip_failures,
        bridge_cpu_fraction: fraction(after.bridge_cpu.saturating_sub(before.bridge_cpu)),
        mixer_cpu_fraction: fraction(mixer_deltas.iter().sum()),
        busiest_mixer_fraction: mixer_deltas.iter().map(|d| fraction(*d)).fold(0.0, f64::max),
        io_cpu_fraction: fraction(cpu_per_thread_since(&after.io_cpu, &before.io_cpu).iter().sum()),
        ticks,
        rss_kib_per_leg: after.rss_kib.saturating_sub(rss_before) as f64 / config.legs as f64,
        received_ratio: received as f64 / expected,
        sent_ratio: (after.sent - before.sent) as f64 / expected,
        generator_cpu_fraction: fraction(after.generator_cpu.saturating_sub(before.generator_cpu)),
    }
}

/// Lets the bridge open two sockets per leg: raises the soft open-file limit,
/// which the child inherits, to the hard one.
fn raise_file_limit() {
    // SAFETY: getrlimit/setrlimit on a struct we own.
    unsafe {
        let mut limit: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

fn main() {
    let runs = match parse_args(std::env::args().skip(1)) {
        Ok(runs) => runs,
        Err(error) => {
            eprintln!("load: {error}");
            std::process::exit(2);
        }
    };
    raise_file_limit();
    println!("{}", Report::HEADER);
    let mut broken = 0;
    for (i, config) in runs.iter().enumerate() {
        eprintln!(
            "run {}/{}: {} legs {}, rooms of {}, {:.0}% talking, {} mixer thread(s), {:.0} s warm-up, {:.0} s window",
            i + 1,
            runs.len(),
            codec_label(config.codec),
            config.legs,
            config.size,
            config.talkers * 100.0,
            config.mixer_threads,
            config.warmup.as_secs_f64(),
            config.window.as_secs_f64(),
        );
        let report = run(config);
        eprintln!(
            "  bridge {:.1}% of a core: mixer threads {:.1}% (busiest {:.1}%), I/O threads {:.1}%; generator {:.1}%; \
             {}/{} legs up",
            report.bridge_cpu_fraction * 100.0,
            report.mixer_cpu_fraction * 100.0,
            report.busiest_mixer_fraction * 100.0,
            report.io_cpu_fraction * 100.0,
            report.generator_cpu_fraction * 100.0,
            report.established,
            config.legs,
        );
        println!("{}", report.row());
        // Slow is a number to report; calls that fail or audio that does not
        // come back is a broken bridge (CI runs the quick matrix for this).
        if report.sip_failures > 0 || report.established < config.legs || report.received_ratio < 0.5 {
            eprintln!("  BROKEN: calls failed or the bridge sent back under half the audio");
            broken += 1;
        }
    }
    println!("{}", Report::NOTES);
    if broken > 0 {
        std::process::exit(1);
    }
}
