//! The mixer thread: every 20 ms it takes one frame from each participant,
//! sums each conference in 32 bits, and gives every participant the sum of the
//! others (N-1), saturated to 16 bits.
//!
//! The tick never locks, allocates or blocks (a test checks the allocation
//! part with a counting allocator):
//! - everything a participant needs (buffers, codec, jitter buffer, sockets)
//!   is built by the control side and handed over in a `Box` through a bounded
//!   command channel; what the mixer lets go of goes back through a bounded
//!   channel to a reaper thread, which frees it;
//! - received RTP arrives through a bounded SPSC ring per leg, application
//!   audio through SPSC sample rings (rtrb);
//! - RTP is sent with a non-blocking `send_to` on the leg's own socket;
//! - mute and volume are atomics the control side writes;
//! - prompts arrive decoded and resampled (`Arc<[i16]>`): the tick copies
//!   samples out of them and hands each finished one to the reaper, whose
//!   drop reports how it ended;
//! - recordings leave through a bounded SPSC ring per file, which a writer
//!   thread drains to disk; when one is full the frame is dropped and counted.
//!
//! Participants and conferences stay boxed inside their vectors (clippy's
//! `vec_box`): the box is what crosses threads, built and freed off the mixer.
#![allow(clippy::vec_box)]

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TryRecvError};

use super::codec::{AudioCodec, EncoderKey};
use super::denoise::{self, NoiseSuppressor};
use super::dtmf::{DtmfSender, DtmfTick};
use super::jitter::{JitterBuffer, Playout};
use super::plc::{self, ComfortNoiseGenerator};
use super::resample::{FrameResampler, ResampleError};
use super::rtp::{self, RtpPacket};

/// The mixer's tick, and the packet time of every leg.
pub const TICK: Duration = Duration::from_millis(20);

/// Largest datagram a leg's receive ring carries.
pub const MAX_DATAGRAM: usize = 1500;

/// Ticks (200 ms) the latched RTP source must be quiet before another may take over.
const RELATCH_AFTER_TICKS: u32 = 10;

/// The most delay a leg's jitter buffer may add.
pub const MAX_JITTER_DELAY: Duration = Duration::from_millis(200);

/// While a leg hears only silence and its peer negotiated comfort noise, a
/// CN packet goes out every this many ticks (200 ms) instead of audio.
const COMFORT_NOISE_EVERY_TICKS: u32 = 10;

/// The largest packet a leg's jitter buffer keeps: a whole Opus packet
/// (RFC 6716 §3.4), or 60 ms of the 64 kbit/s codecs.
fn max_payload(codec: &dyn AudioCodec) -> usize {
    match codec.kind() {
        super::codec::CodecKind::Opus => 1275,
        _ => 480,
    }
}

/// A leg that stops being mixed keeps its own encoder this many ticks
/// (100 ms), encoding what the listeners hear, before it takes the shared
/// payload: its encoder's state converges on the shared one's meanwhile,
/// so the peer's decoder sees no seam.
const OWN_ENCODER_LINGER_TICKS: u32 = 5;

/// A participant who stopped talking may fill a free mixing slot for this
/// long (2 s, in ticks), so the pauses in its speech are heard as they are;
/// others only with frames at most this far under the stop level.
const FILLER_AFTER_TALKING_TICKS: u32 = 100;
const FILLER_BELOW_STOP_DB: f32 = 10.0;

/// How often (in ticks: 1 s) shared encoders look at the loss their members' peers report.
const LOSS_CHECK_TICKS: u32 = 50;

/// Shared encoders a conference keeps (distinct codecs and settings among
/// its legs); legs beyond that encode for themselves.
pub const MAX_SHARED_ENCODERS: usize = 8;

/// Identifies a conference for the life of an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConferenceId(pub u64);

/// Identifies a participant for the life of an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ParticipantId(pub u64);

/// Identifies a prompt played into a conference, for the life of an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PlaybackId(pub u64);

/// How a prompt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlaybackEnd {
    /// It played to its end.
    Completed,
    /// It was stopped, or its conference or participant went away, first.
    Stopped,
}

/// Called once with how a prompt ended.
pub type PlaybackDone = Box<dyn FnOnce(PlaybackEnd) + Send>;

/// A prompt in the mixer, and the ones queued after it (a list of boxes, so
/// that queueing one more never grows a vector in the mixer).
pub struct PromptMix {
    pub id: PlaybackId,
    samples: Arc<[i16]>,
    position: usize,
    next: Option<Box<PromptMix>>,
    /// Runs where the prompt is freed, which is never the mixer thread: it
    /// hands everything it lets go of to the reaper.
    done: Option<PlaybackDone>,
}

impl PromptMix {
    pub fn new(id: PlaybackId, samples: Arc<[i16]>, done: PlaybackDone) -> Self {
        Self { id, samples, position: 0, next: None, done: Some(done) }
    }
}

impl Drop for PromptMix {
    fn drop(&mut self) {
        let end = if self.position >= self.samples.len() { PlaybackEnd::Completed } else { PlaybackEnd::Stopped };
        if let Some(done) = self.done.take() {
            done(end);
        }
    }
}

/// Queues `prompt` after the prompts in `queue`.
fn enqueue(queue: &mut Option<Box<PromptMix>>, prompt: Box<PromptMix>) {
    let mut tail = queue;
    while let Some(queued) = tail {
        tail = &mut queued.next;
    }
    *tail = Some(prompt);
}

/// Takes prompt `id` (or, with `None`, the first) out of `queue`, keeping the ones after it queued.
fn unqueue(queue: &mut Option<Box<PromptMix>>, id: Option<PlaybackId>) -> Option<Box<PromptMix>> {
    let mut cursor = queue;
    loop {
        match cursor {
            Some(prompt) if id.is_none_or(|id| prompt.id == id) => {
                let mut found = cursor.take()?;
                *cursor = found.next.take();
                return Some(found);
            }
            Some(prompt) => cursor = &mut prompt.next,
            None => return None,
        }
    }
}

/// Adds the next frame of the queued prompts to `out`, one prompt after the
/// other without a gap, and hands each that finishes to `finished`.
fn play_prompts(queue: &mut Option<Box<PromptMix>>, out: &mut [i32], finished: &mut impl FnMut(Garbage)) {
    let mut filled = 0;
    while let Some(prompt) = queue.as_mut() {
        let n = (prompt.samples.len() - prompt.position).min(out.len() - filled);
        for (out, s) in out[filled..filled + n].iter_mut().zip(&prompt.samples[prompt.position..]) {
            *out = out.wrapping_add(*s as i32);
        }
        prompt.position += n;
        filled += n;
        if prompt.position < prompt.samples.len() {
            return;
        }
        if let Some(done) = unqueue(queue, None) {
            finished(Garbage::Prompt(done));
        }
    }
}

/// A datagram received on a leg's RTP port, as the receive task hands it over.
pub struct ReceivedDatagram {
    pub source: SocketAddr,
    /// When it arrived, for the jitter estimate.
    pub arrival: Instant,
    pub len: u16,
    pub data: [u8; MAX_DATAGRAM],
}

/// What the control side and the mixer share about one participant.
#[derive(Debug)]
pub struct ParticipantControls {
    pub muted: AtomicBool,
    /// Gain on the participant's contribution, in 1/65536 units (65536 = 0 dB).
    pub gain_q16: AtomicI32,
    pub packets_received: AtomicU64,
    pub packets_sent: AtomicU64,
    /// Datagrams dropped because the mixer's ring was full, or sends that failed.
    pub dropped: AtomicU64,
    pub concealed_frames: AtomicU64,
    pub fec_recovered: AtomicU64,
    /// Frames received but not decoded: the participant was silent by its own report.
    pub frames_not_decoded: AtomicU64,
    pub bytes_received: AtomicU64,
    pub bytes_sent: AtomicU64,
    /// RTP timestamp of the last packet sent, for RTCP sender reports.
    pub last_sent_timestamp: AtomicU32,
    /// The jitter buffer's current target delay, in milliseconds.
    pub jitter_delay_ms: AtomicU32,
    /// From the receive task's RTCP statistics (RFC 3550 A.1–A.8): packets
    /// the peer sent that never arrived, packets expected, interarrival
    /// jitter, round-trip time (0 until measured), and the loss the peer
    /// reports for what we send.
    pub packets_lost: AtomicU64,
    pub packets_expected: AtomicU64,
    pub jitter_us: AtomicU32,
    pub round_trip_us: AtomicU32,
    pub remote_packets_lost: AtomicU64,
    /// The loss the peer reported in its last RTCP report block, in percent;
    /// `u32::MAX` until it reports.
    pub remote_loss_percent: AtomicU32,
    /// Whether the participant is talking (see [`TalkerPolicy`]), and how
    /// many times that changed, so a watcher that looks now and then misses
    /// no change.
    pub talking: AtomicBool,
    pub talk_changes: AtomicU32,
    /// The peer has put the call on hold (so silence from it is expected).
    pub held: AtomicBool,
    /// The app deafened it: it hears nothing of the conference (silence,
    /// or only the prompts played to it alone).
    pub deaf: AtomicBool,
    /// The conference policy lets it into the mix; false while it enters
    /// its PIN or waits for a moderator: then it is neither heard nor hears
    /// the others, only the prompts played to it alone.
    pub admitted: AtomicBool,
}

impl Default for ParticipantControls {
    fn default() -> Self {
        Self {
            muted: AtomicBool::new(false),
            gain_q16: AtomicI32::new(1 << 16),
            packets_received: AtomicU64::new(0),
            packets_sent: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            concealed_frames: AtomicU64::new(0),
            fec_recovered: AtomicU64::new(0),
            frames_not_decoded: AtomicU64::new(0),
            bytes_received: AtomicU64::new(0),
            bytes_sent: AtomicU64::new(0),
            last_sent_timestamp: AtomicU32::new(0),
            jitter_delay_ms: AtomicU32::new(0),
            packets_lost: AtomicU64::new(0),
            packets_expected: AtomicU64::new(0),
            jitter_us: AtomicU32::new(0),
            round_trip_us: AtomicU32::new(0),
            remote_packets_lost: AtomicU64::new(0),
            remote_loss_percent: AtomicU32::new(u32::MAX),
            talking: AtomicBool::new(false),
            talk_changes: AtomicU32::new(0),
            held: AtomicBool::new(false),
            deaf: AtomicBool::new(false),
            admitted: AtomicBool::new(true),
        }
    }
}

/// Converts a gain in dB to the Q16 factor the mixer applies, limited to ±40 dB.
pub fn gain_q16_from_db(db: f32) -> i32 {
    let db = if db.is_finite() { db.clamp(-40.0, 40.0) } else { 0.0 };
    (10f32.powf(db / 20.0) * 65536.0).round() as i32
}

/// What the mixer does with one RTP leg.
/// How a conference tells talkers from silence, and how many it mixes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TalkerPolicy {
    /// A participant starts talking with a frame at this level or louder (dBov)...
    pub start_dbov: f32,
    /// ...and stops once its frames have stayed below this level for `hang`.
    pub stop_dbov: f32,
    pub hang: Duration,
    /// At most this many are mixed, talkers first and the loudest first, so
    /// that the noise of many open microphones does not add up; 0 mixes
    /// everyone heard.
    pub max_talkers: usize,
}

impl Default for TalkerPolicy {
    fn default() -> Self {
        Self { start_dbov: -40.0, stop_dbov: -50.0, hang: Duration::from_millis(400), max_talkers: 4 }
    }
}

/// The level of a frame in dBov (0 dBov: a full-scale square wave); -100 for silence.
fn level_dbov(samples: &[i32]) -> f32 {
    let power = samples.iter().map(|s| (*s as f64) * (*s as f64)).sum::<f64>() / samples.len().max(1) as f64;
    if power < 1.0 {
        return -100.0;
    }
    (10.0 * (power / (32768.0 * 32768.0)).log10()) as f32
}

pub struct RtpLeg {
    pub datagrams: rtrb::Consumer<ReceivedDatagram>,
    /// Non-blocking; shares the port with the receive task's socket.
    pub socket: UdpSocket,
    /// Where to send: from the SDP at first, then where the peer's first
    /// packet came from (symmetric RTP).
    pub remote: SocketAddr,
    latched: bool,
    /// Ticks since the latched source last sent.
    quiet_ticks: u32,
    pub send: bool,
    pub receive: bool,
    pub codec: Box<dyn AudioCodec>,
    pub payload_type: u8,
    pub ssrc: u32,
    pub sequence: u16,
    pub timestamp: u32,
    /// RTP timestamp units per tick, and the RTP clock rate.
    frame_ts: u32,
    clock_rate: u32,
    /// Arrival times are counted in RTP clock units from here.
    epoch: Instant,
    pub jitter: JitterBuffer,
    /// One tick of audio at the codec's rate, and converters to and from the
    /// conference's rate when the two differ.
    codec_frame: Box<[i16]>,
    to_mix: Option<FrameResampler>,
    from_mix: Option<FrameResampler>,
    packet: Box<[u8]>,
    /// Comfort noise (RFC 3389) when negotiated: its payload type, the noise
    /// the peer described last, whether the peer is in a silence period, and
    /// ticks since we last sent a CN packet.
    comfort_noise: Option<u8>,
    noise: ComfortNoiseGenerator,
    peer_silent: bool,
    /// This tick's frame is comfort noise.
    comfort_noise_frame: bool,
    /// The RFC 6464 header extension id the peer sends its audio level in,
    /// the last level it sent (dBov) and the ticks since.
    audio_level_id: Option<u8>,
    reported_level: Option<f32>,
    ticks_since_level: u32,
    /// Ticks since a packet reported a level a listener could be mixed at.
    ticks_since_audible_level: u32,
    ticks_since_cn: u32,
    /// Digits the app queued (event codes), and the telephone-event payload
    /// type to send them with while the session has one.
    dtmf_digits: Option<rtrb::Consumer<u8>>,
    telephone_event: Option<u8>,
    dtmf_sender: DtmfSender,
    /// RTP timestamp of the event being sent: all its packets carry it.
    event_timestamp: u32,
    /// The next packet starts a talkspurt (RFC 3551 §4.1 marker bit).
    marker: bool,
    /// The peer's loss the encoder last planned for (`u32::MAX`: its initial setting).
    planned_loss: u32,
    /// What the encoder turns audio into, the conference's shared encoder
    /// for it (an index, once the conference has one), whether the leg
    /// sends that encoder's payload this tick, and the ticks since the leg
    /// was last mixed in.
    encoder_key: EncoderKey,
    shared_encoder: Option<usize>,
    on_shared: bool,
    ticks_since_mixed: u32,
    /// Held until the leg is dropped, which gives the port back.
    pub _port: Option<Box<dyn Send>>,
}

/// What an RTP leg needs for one codec: the coder, its jitter buffer and
/// the converters to and from the mixing rate. Built off the mixer thread,
/// for a new leg or for one whose codec a re-offer changes.
pub struct LegCodec {
    codec: Box<dyn AudioCodec>,
    payload_type: u8,
    encoder_key: EncoderKey,
    frame_ts: u32,
    clock_rate: u32,
    jitter: JitterBuffer,
    codec_frame: Box<[i16]>,
    to_mix: Option<FrameResampler>,
    from_mix: Option<FrameResampler>,
}

impl LegCodec {
    pub fn kind(&self) -> super::codec::CodecKind {
        self.codec.kind()
    }

    pub fn encoder_key(&self) -> EncoderKey {
        self.encoder_key
    }

    /// `codec` sent and received with `payload_type`, in a conference that
    /// mixes at `mix_rate`.
    pub fn new(codec: Box<dyn AudioCodec>, payload_type: u8, mix_rate: u32) -> Result<Self, ResampleError> {
        let kind = codec.kind();
        let (rate, clock_rate) = (kind.sample_rate(), kind.clock_rate());
        let frame_ts = clock_rate / 50;
        let (to_mix, from_mix) = if rate == mix_rate {
            (None, None)
        } else {
            (Some(FrameResampler::new(rate, mix_rate)?), Some(FrameResampler::new(mix_rate, rate)?))
        };
        let max_delay_ts = (MAX_JITTER_DELAY.as_millis() as u32) * clock_rate / 1000;
        let jitter = JitterBuffer::new(
            frame_ts,
            rate / clock_rate,
            max_delay_ts,
            max_payload(codec.as_ref()),
            !kind.has_native_plc(),
        );
        Ok(Self {
            encoder_key: codec.encoder_key(),
            codec,
            payload_type,
            frame_ts,
            clock_rate,
            jitter,
            codec_frame: vec![0; kind.frame_samples()].into_boxed_slice(),
            to_mix,
            from_mix,
        })
    }
}

/// Ticks a new leg of `kind` starts with since it was last mixed: a G.711
/// leg can take the shared encoding at once; others start on their own
/// encoder, as fresh as the peer's decoder, and move to it once their
/// states have converged.
fn initial_ticks_since_mixed(kind: super::codec::CodecKind) -> u32 {
    if kind.frames_are_independent() {
        OWN_ENCODER_LINGER_TICKS
    } else {
        0
    }
}

impl RtpLeg {
    /// A leg sending and receiving with `codec`.
    pub fn new(
        datagrams: rtrb::Consumer<ReceivedDatagram>,
        socket: UdpSocket,
        remote: SocketAddr,
        codec: LegCodec,
        port: Option<Box<dyn Send>>,
    ) -> Self {
        let LegCodec { codec, payload_type, encoder_key, frame_ts, clock_rate, jitter, codec_frame, to_mix, from_mix } =
            codec;
        let ticks_since_mixed = initial_ticks_since_mixed(codec.kind());
        Self {
            datagrams,
            socket,
            remote,
            latched: false,
            quiet_ticks: 0,
            send: true,
            receive: true,
            codec,
            payload_type,
            ssrc: rand::random(),
            sequence: rand::random(),
            timestamp: rand::random(),
            frame_ts,
            clock_rate,
            epoch: Instant::now(),
            jitter,
            codec_frame,
            to_mix,
            from_mix,
            packet: vec![0; rtp::HEADER_LEN + MAX_DATAGRAM].into_boxed_slice(),
            comfort_noise: None,
            noise: ComfortNoiseGenerator::new(rand::random()),
            peer_silent: false,
            comfort_noise_frame: false,
            audio_level_id: None,
            reported_level: None,
            ticks_since_level: 0,
            ticks_since_audible_level: 0,
            ticks_since_cn: 0,
            planned_loss: u32::MAX,
            encoder_key,
            shared_encoder: None,
            on_shared: false,
            ticks_since_mixed,
            dtmf_digits: None,
            telephone_event: None,
            dtmf_sender: DtmfSender::default(),
            event_timestamp: 0,
            marker: true,
            _port: port,
        }
    }

    /// Takes `new`'s codec and gives it the old one, to be freed off the
    /// mixer thread. The leg leaves its shared encoder; the caller points it
    /// at the one for its new codec. Sequence numbers and timestamps go on
    /// (RFC 3550 lets the payload type change within a stream), and the
    /// marker bit flags the change.
    fn swap_codec(&mut self, new: &mut LegCodec) {
        std::mem::swap(&mut self.codec, &mut new.codec);
        std::mem::swap(&mut self.payload_type, &mut new.payload_type);
        std::mem::swap(&mut self.encoder_key, &mut new.encoder_key);
        std::mem::swap(&mut self.frame_ts, &mut new.frame_ts);
        std::mem::swap(&mut self.clock_rate, &mut new.clock_rate);
        std::mem::swap(&mut self.jitter, &mut new.jitter);
        std::mem::swap(&mut self.codec_frame, &mut new.codec_frame);
        std::mem::swap(&mut self.to_mix, &mut new.to_mix);
        std::mem::swap(&mut self.from_mix, &mut new.from_mix);
        self.shared_encoder = None;
        self.on_shared = false;
        self.ticks_since_mixed = initial_ticks_since_mixed(self.codec.kind());
        self.planned_loss = u32::MAX;
        self.marker = true;
    }

    /// Lets the leg send digits from `digits` as RFC 4733 events, with
    /// `telephone_event` as payload type when the session has one.
    pub fn with_dtmf(mut self, telephone_event: Option<u8>, digits: rtrb::Consumer<u8>) -> Self {
        (self.telephone_event, self.dtmf_digits) = (telephone_event, Some(digits));
        self
    }

    /// Lets the leg receive and send comfort noise (RFC 3389) with `payload_type`.
    /// Reads the client-to-mixer audio level (RFC 6464) from header extension `id`.
    pub fn with_audio_level(mut self, id: u8) -> Self {
        self.audio_level_id = Some(id);
        self
    }

    fn set_media(&mut self, media: LegMedia) {
        self.send = media.send;
        self.receive = media.receive;
        self.payload_type = media.payload_type;
        self.comfort_noise = media.comfort_noise;
        self.telephone_event = media.telephone_event;
        if media.telephone_event.is_none() {
            // Digits queued for a session that no longer takes them are not sent later.
            self.dtmf_sender = DtmfSender::default();
            while let Some(Ok(_)) = self.dtmf_digits.as_mut().map(|digits| digits.pop()) {}
        }
        if media.remote != self.remote && !media.remote.ip().is_unspecified() {
            self.remote = media.remote;
            self.latched = false;
        }
    }

    /// The level the peer reported for the audio of the last few ticks, if it does.
    fn reported_level(&self) -> Option<f32> {
        // A report covers its packet; older than a few ticks it says nothing of now.
        self.reported_level.filter(|_| self.ticks_since_level <= 3)
    }

    pub fn with_comfort_noise(mut self, payload_type: u8) -> Self {
        self.comfort_noise = Some(payload_type);
        self
    }

    /// Moves received datagrams into the jitter buffer, latching on the
    /// peer's address and noting the levels it reports.
    fn drain_datagrams(&mut self, controls: &ParticipantControls, quiet_below: f32) {
        // Read in place: each slot holds a whole 1.5 kB datagram, which
        // popping would copy once more for every packet.
        let Ok(received) = self.datagrams.read_chunk(self.datagrams.slots()) else { return };
        let (first, second) = received.as_slices();
        for datagram in first.iter().chain(second) {
            let data = &datagram.data[..datagram.len as usize];
            let Ok(packet) = RtpPacket::parse(data) else { continue };
            let comfort_noise = self.comfort_noise == Some(packet.payload_type);
            if packet.payload_type != self.payload_type && !comfort_noise {
                // telephone-event is the receive task's.
                continue;
            }
            // Symmetric RTP: latch on the first packet's source and accept only
            // that source while it keeps sending, so nobody else can take over a
            // live leg; a peer whose NAT mapping changed re-latches once the old
            // source has been quiet for RELATCH_AFTER_TICKS.
            if !self.latched || (datagram.source != self.remote && self.quiet_ticks >= RELATCH_AFTER_TICKS) {
                self.remote = datagram.source;
                self.latched = true;
            } else if datagram.source != self.remote {
                controls.dropped.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            self.quiet_ticks = 0;
            if let Some((_, level)) = self.audio_level_id.and_then(|id| packet.audio_level(id)) {
                self.reported_level = Some(-(level as f32));
                self.ticks_since_level = 0;
                if -(level as f32) >= quiet_below {
                    self.ticks_since_audible_level = 0;
                }
            }
            controls.packets_received.fetch_add(1, Ordering::Relaxed);
            controls.bytes_received.fetch_add(packet.payload.len() as u64, Ordering::Relaxed);
            if comfort_noise {
                if let Some(params) = plc::parse_cn(packet.payload) {
                    self.noise.set(params);
                    self.peer_silent = true;
                }
                continue;
            }
            self.peer_silent = false;
            let elapsed = datagram.arrival.saturating_duration_since(self.epoch);
            let arrival = (elapsed.as_micros() as u64 * self.clock_rate as u64 / 1_000_000) as u32;
            self.jitter.push(packet.ssrc, packet.timestamp, arrival, packet.payload);
        }
        received.commit_all();
    }

    /// Drains received datagrams into the jitter buffer, then plays one frame
    /// into `out`, at the conference's rate. A leg whose peer reports its
    /// level (RFC 6464) and that has reported nothing at `quiet_below` or
    /// louder for longer than the jitter buffer holds is not decoded, when
    /// `may_skip` (it neither talks nor talked lately) and its codec can skip audio: it would
    /// not be mixed, and its first louder packet is decoded again in time.
    fn read_frame(
        &mut self,
        controls: &ParticipantControls,
        out: &mut [i16],
        quiet_below: f32,
        may_skip: bool,
    ) -> bool {
        self.quiet_ticks = self.quiet_ticks.saturating_add(1);
        self.comfort_noise_frame = false;
        self.ticks_since_level = self.ticks_since_level.saturating_add(1);
        self.ticks_since_audible_level = self.ticks_since_audible_level.saturating_add(1);
        self.drain_datagrams(controls, quiet_below);
        let buffered_ticks = self.jitter.target_delay() / self.frame_ts + 1;
        // Only while the peer does report levels: negotiating the extension
        // is no promise to send it.
        let skip = may_skip && self.reported_level().is_some() && self.ticks_since_audible_level > buffered_ticks;
        let playout = if skip && self.codec.kind().can_skip_decoding() {
            match self.jitter.pop(&mut Undecoded(self.codec.as_mut()), &mut self.codec_frame) {
                // Kept in time, but nothing to hear.
                Playout::Audio | Playout::Concealed => {
                    controls.frames_not_decoded.fetch_add(1, Ordering::Relaxed);
                    Playout::Silence
                }
                silence => silence,
            }
        } else {
            self.jitter.pop(self.codec.as_mut(), &mut self.codec_frame)
        };
        let stats = self.jitter.stats();
        controls.concealed_frames.store(stats.concealed, Ordering::Relaxed);
        controls.fec_recovered.store(stats.recovered, Ordering::Relaxed);
        controls.jitter_delay_ms.store(self.jitter.target_delay() * 1000 / self.clock_rate, Ordering::Relaxed);
        let heard = match playout {
            Playout::Audio | Playout::Concealed => true,
            Playout::Silence if self.peer_silent => {
                // Comfort noise is played, but it is not talking.
                self.comfort_noise_frame = true;
                self.noise.generate(&mut self.codec_frame);
                true
            }
            Playout::Silence => false,
        };
        if heard {
            match self.to_mix.as_mut() {
                Some(converter) => converter.process(&self.codec_frame, out),
                None => out.copy_from_slice(&self.codec_frame),
            }
        }
        heard
    }

    /// Sends this tick's audio (or DTMF); true when it ran the leg's own encoder.
    fn write_frame(&mut self, controls: &ParticipantControls, outgoing: Outgoing) -> bool {
        let frame = self.frame_ts;
        let tick = match (&mut self.dtmf_digits, self.telephone_event) {
            (Some(digits), Some(_)) => self.dtmf_sender.tick(frame, || digits.pop().ok()),
            _ => DtmfTick::Audio,
        };
        let mut encoded = false;
        if self.send {
            match tick {
                DtmfTick::Audio => encoded = self.send_audio(controls, outgoing),
                DtmfTick::Event { event, duration, end, start, copies } => {
                    if start {
                        self.event_timestamp = self.timestamp;
                    }
                    let payload_type = self.telephone_event.unwrap_or(self.payload_type);
                    let d = duration.to_be_bytes();
                    // Volume 10 (-10 dBm0); the E bit on the end packets.
                    let body = [event, if end { 0x80 | 10 } else { 10 }, d[0], d[1]];
                    for _ in 0..copies {
                        self.packet[rtp::HEADER_LEN..rtp::HEADER_LEN + 4].copy_from_slice(&body);
                        self.send_packet(controls, start, payload_type, self.event_timestamp, 4);
                    }
                }
            }
        }
        self.timestamp = self.timestamp.wrapping_add(frame);
        encoded
    }

    fn send_audio(&mut self, controls: &ParticipantControls, outgoing: Outgoing) -> bool {
        let (codec_pcm, silent): (&[i16], bool) = match outgoing {
            Outgoing::Mix(pcm) => {
                let pcm: &[i16] = match self.from_mix.as_mut() {
                    Some(converter) => {
                        converter.process(pcm, &mut self.codec_frame);
                        &self.codec_frame
                    }
                    None => pcm,
                };
                (pcm, pcm.iter().all(|s| *s == 0))
            }
            Outgoing::Shared(shared) => (&shared.codec_frame, shared.silent),
        };
        if let (Some(cn), true) = (self.comfort_noise, silent) {
            // Silence to a peer that takes comfort noise: a CN packet now
            // and then instead of a stream of zeros.
            if self.ticks_since_cn % COMFORT_NOISE_EVERY_TICKS == 0 {
                let n = plc::write_cn(codec_pcm, &mut self.packet[rtp::HEADER_LEN..]);
                self.send_packet(controls, false, cn, self.timestamp, n);
            }
            self.ticks_since_cn += 1;
            self.marker = true;
            return false;
        }
        self.ticks_since_cn = 0;
        let (n, encoded) = match outgoing {
            Outgoing::Mix(_) => {
                let loss = controls.remote_loss_percent.load(Ordering::Relaxed);
                if loss != self.planned_loss && loss <= 100 {
                    self.codec.plan_for_loss(loss as u8);
                    self.planned_loss = loss;
                }
                (self.codec.encode(codec_pcm, &mut self.packet[rtp::HEADER_LEN..]), true)
            }
            Outgoing::Shared(shared) => {
                let payload = &shared.payload[..shared.len];
                self.packet[rtp::HEADER_LEN..rtp::HEADER_LEN + payload.len()].copy_from_slice(payload);
                (payload.len(), false)
            }
        };
        if n > 0 {
            let marker = std::mem::take(&mut self.marker);
            self.send_packet(controls, marker, self.payload_type, self.timestamp, n);
        } else {
            // Opus DTX: nothing sent; the next packet starts a talkspurt.
            self.marker = true;
        }
        encoded
    }

    /// Moves the leg from its conference's shared encoder back to its own:
    /// the own encoder and resampler take over the shared ones' state, so
    /// the peer's decoder goes on with one unbroken stream.
    fn leave_shared_encoder(&mut self, shared: &SharedEncoder) {
        if self.codec.continue_encoding_from(shared.codec.as_ref()) {
            self.planned_loss = shared.planned_loss;
        }
        if let (Some(own), Some(theirs)) = (self.from_mix.as_mut(), shared.from_mix.as_ref()) {
            own.continue_from(theirs);
        }
    }

    /// Sends the packet buffer's first `payload` bytes after a fresh header.
    fn send_packet(
        &mut self,
        controls: &ParticipantControls,
        marker: bool,
        payload_type: u8,
        timestamp: u32,
        payload: usize,
    ) {
        // The buffer is longer than a header, so this slice has exactly HEADER_LEN bytes.
        let header: &mut [u8; rtp::HEADER_LEN] =
            (&mut self.packet[..rtp::HEADER_LEN]).try_into().expect("header length");
        rtp::write_header(header, marker, payload_type, self.sequence, timestamp, self.ssrc);
        match self.socket.send_to(&self.packet[..rtp::HEADER_LEN + payload], self.remote) {
            Ok(_) => {
                controls.packets_sent.fetch_add(1, Ordering::Relaxed);
                controls.bytes_sent.fetch_add(payload as u64, Ordering::Relaxed);
                controls.last_sent_timestamp.store(timestamp, Ordering::Relaxed);
            }
            Err(_) => {
                controls.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.sequence = self.sequence.wrapping_add(1);
    }
}

/// A codec as the jitter buffer sees it while a silent listener is not
/// decoded: packets keep their time but play as silence, and gaps are not
/// concealed.
struct Undecoded<'a>(&'a mut dyn AudioCodec);

impl AudioCodec for Undecoded<'_> {
    fn kind(&self) -> super::codec::CodecKind {
        self.0.kind()
    }

    fn decode(&mut self, payload: &[u8], out: &mut [i16]) -> usize {
        let n = self.0.samples_without_decoding(payload).unwrap_or(0).min(out.len());
        out[..n].fill(0);
        n
    }

    fn conceal(&mut self, out: &mut [i16]) -> bool {
        out.fill(0);
        true
    }

    fn encode(&mut self, _pcm: &[i16], _out: &mut [u8]) -> usize {
        0
    }

    fn continue_encoding_from(&mut self, _other: &dyn AudioCodec) -> bool {
        false
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self.0.as_any()
    }
}

/// What a leg sends in a tick: its own encoding of a mix, or the payload of
/// the conference's shared encoder.
enum Outgoing<'a> {
    Mix(&'a [i16]),
    Shared(&'a SharedEncoder),
}

/// One encoder for every listener whose leg encodes alike (same
/// [`EncoderKey`]): listeners all hear the same mix, so it is encoded once
/// per tick and each leg sends the payload under its own RTP header.
pub struct SharedEncoder {
    key: EncoderKey,
    codec: Box<dyn AudioCodec>,
    from_mix: Option<FrameResampler>,
    /// This tick's audio at the codec's rate, whether it is all zeros, and
    /// its encoding (`len` 0: DTX, nothing to send).
    codec_frame: Box<[i16]>,
    silent: bool,
    payload: Box<[u8]>,
    len: usize,
    /// Some leg sends the payload this tick, or is about to move to it.
    wanted: bool,
    /// The loss the encoder plans for, and the worst any member's peer
    /// reported this tick (the next encode plans for that).
    planned_loss: u32,
    worst_loss: Option<u32>,
}

impl SharedEncoder {
    /// Shares `codec`'s encodings among the listeners of a conference that mixes at `mix_rate`.
    pub fn new(codec: Box<dyn AudioCodec>, mix_rate: u32) -> Result<Self, ResampleError> {
        let kind = codec.kind();
        let from_mix = if kind.sample_rate() == mix_rate {
            None
        } else {
            Some(FrameResampler::new(mix_rate, kind.sample_rate())?)
        };
        Ok(Self {
            key: codec.encoder_key(),
            from_mix,
            codec_frame: vec![0; kind.frame_samples()].into_boxed_slice(),
            silent: true,
            payload: vec![0; MAX_DATAGRAM].into_boxed_slice(),
            len: 0,
            wanted: false,
            planned_loss: u32::MAX,
            worst_loss: None,
            codec,
        })
    }

    pub fn key(&self) -> EncoderKey {
        self.key
    }

    fn encode(&mut self, mix: &[i16]) {
        match self.from_mix.as_mut() {
            Some(converter) => converter.process(mix, &mut self.codec_frame),
            None => self.codec_frame.copy_from_slice(mix),
        }
        self.silent = self.codec_frame.iter().all(|s| *s == 0);
        if let Some(loss) = self.worst_loss.take() {
            if loss != self.planned_loss {
                // Planned for the worst member's path: FEC the others do not need
                // costs them a little quality, none costs that member much more.
                self.codec.plan_for_loss(loss as u8);
                self.planned_loss = loss;
            }
        }
        self.len = self.codec.encode(&self.codec_frame, &mut self.payload);
    }
}

/// An application-fed participant: the app writes PCM, reads its N-1 mix.
pub struct LocalLeg {
    pub from_app: rtrb::Consumer<i16>,
    pub to_app: rtrb::Producer<i16>,
}

impl LocalLeg {
    fn read_frame(&mut self, out: &mut [i16]) -> bool {
        let Ok(chunk) = self.from_app.read_chunk(out.len()) else { return false };
        let (a, b) = chunk.as_slices();
        out[..a.len()].copy_from_slice(a);
        out[a.len()..].copy_from_slice(b);
        chunk.commit_all();
        true
    }
}

/// A ring the mixer writes one recorded stream into (a conference's mix, or
/// one participant's audio), and the frames it dropped because the ring was
/// full: the writer on the other end fell behind the disk.
pub struct RecordSink {
    ring: rtrb::Producer<i16>,
    dropped: Arc<AtomicU64>,
}

impl RecordSink {
    pub fn new(ring: rtrb::Producer<i16>, dropped: Arc<AtomicU64>) -> Self {
        Self { ring, dropped }
    }

    fn push(&mut self, frame: &[i16]) {
        if !push_frame(&mut self.ring, frame) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A conference's recording, as the mixer sees it: the mix goes to `mix`,
/// and participants recorded alone have a sink of their own.
pub struct RecordingMix {
    /// Written by the control side: while set, nothing is recorded.
    paused: Arc<AtomicBool>,
    mix: RecordSink,
}

impl RecordingMix {
    pub fn new(paused: Arc<AtomicBool>, mix: RecordSink) -> Self {
        Self { paused, mix }
    }
}

/// Writes a whole frame into a sample ring, or nothing when it has no room.
fn push_frame(ring: &mut rtrb::Producer<i16>, frame: &[i16]) -> bool {
    let Ok(mut chunk) = ring.write_chunk(frame.len()) else { return false };
    let (a, b) = chunk.as_mut_slices();
    let split = a.len();
    a.copy_from_slice(&frame[..split]);
    b.copy_from_slice(&frame[split..]);
    chunk.commit_all();
    true
}

/// One frame of a participant's tap, as the app reads it with the frame's samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TapFrame {
    /// Where the frame starts on the tap's media clock, in samples at the
    /// conference's rate: the conference's clock when the tap opened, then
    /// one frame more every tick, delivered or dropped (so a gap is a drop).
    pub timestamp: u64,
    /// Whether the participant was talking in this frame.
    pub talking: bool,
}

/// Where the mixer hands one participant's own audio (decoded, after noise
/// suppression, before its volume) to the app: a sample ring and a ring of
/// frame headers, both bounded; when either is full the frame is dropped
/// and counted, never waited for.
pub struct TapSink {
    samples: rtrb::Producer<i16>,
    frames: rtrb::Producer<TapFrame>,
    clock: u64,
    dropped: Arc<AtomicU64>,
}

impl TapSink {
    pub fn new(samples: rtrb::Producer<i16>, frames: rtrb::Producer<TapFrame>, dropped: Arc<AtomicU64>) -> Self {
        Self { samples, frames, clock: 0, dropped }
    }

    fn push(&mut self, frame: &[i16], talking: bool) {
        let timestamp = self.clock;
        self.clock = self.clock.wrapping_add(frame.len() as u64);
        // Samples first: a reader that finds a header finds its samples.
        if self.frames.slots() == 0 || !push_frame(&mut self.samples, frame) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        // Room was checked above, and only the mixer pushes.
        let _ = self.frames.push(TapFrame { timestamp, talking });
    }
}

/// How many participants a [`ParticipantSet`] holds: enough for a
/// supervisor's team or a small group, and small enough to live inline, so
/// the tick looks sets up without a pointer chase or an allocation.
pub const MAX_PARTICIPANT_SET: usize = 16;

/// A few participant ids, stored inline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParticipantSet {
    len: usize,
    ids: [ParticipantId; MAX_PARTICIPANT_SET],
}

impl ParticipantSet {
    /// The set of `ids`, or `None` when they are more than [`MAX_PARTICIPANT_SET`].
    pub fn new(ids: &[ParticipantId]) -> Option<Self> {
        let mut set = Self { len: ids.len(), ids: [ParticipantId(0); MAX_PARTICIPANT_SET] };
        set.ids.get_mut(..ids.len())?.copy_from_slice(ids);
        Some(set)
    }

    pub fn ids(&self) -> &[ParticipantId] {
        &self.ids[..self.len]
    }

    fn contains(&self, id: ParticipantId) -> bool {
        self.ids().contains(&id)
    }
}

/// Who a participant hears and who hears it, when that is not everyone (the
/// listen/talk matrix): `None` means everyone. A supervisor listening in
/// is heard only by nobody; whispering to an agent, heard only by the
/// agent; barging in, heard by everyone again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Routing {
    pub hears_only: Option<ParticipantSet>,
    pub heard_only_by: Option<ParticipantSet>,
}

impl Routing {
    /// Whether it changes nothing: everyone hears it and it hears everyone.
    pub fn is_open(&self) -> bool {
        self.hears_only.is_none() && self.heard_only_by.is_none()
    }
}

// The RTP variant is the big one, and the usual one; the whole leg lives in a
// Box<ParticipantMix> already, so boxing it again would only add a hop.
#[allow(clippy::large_enum_variant)]
pub enum Leg {
    Rtp(RtpLeg),
    Local(LocalLeg),
}

/// The mixer's side of one participant.
pub struct ParticipantMix {
    pub id: ParticipantId,
    pub controls: Arc<ParticipantControls>,
    pub leg: Leg,
    /// This tick's contribution, after mute and gain.
    input: Box<[i32]>,
    output: Box<[i16]>,
    contributes: bool,
    /// Cleans the participant's audio before it is mixed, when the app asked.
    noise_suppressor: Option<Box<NoiseSuppressor>>,
    /// Talker detection: this tick's audio could be mixed (heard, not muted,
    /// not comfort noise), its level smoothed over a few ticks, and the
    /// ticks it has been below the stop level while talking.
    audible: bool,
    level_dbov: f32,
    quiet_ticks: u32,
    /// Whether it talks: the mixer's copy of `controls.talking`, which the
    /// ranking reads many times a tick (and a big room would miss in cache).
    talking: bool,
    /// This tick's level, unsmoothed, and the ticks since it last talked.
    frame_dbov: f32,
    ticks_since_talking: u32,
    /// Prompts played to this participant alone, the first one playing.
    prompts: Option<Box<PromptMix>>,
    /// What it hears differs from the listeners' mix this tick: it is mixed
    /// in (and must not hear itself), a prompt plays to it, or it hears
    /// nothing of the conference.
    own_mix: bool,
    /// It hears the conference this tick: admitted and not deaf.
    hears_conference: bool,
    /// Where its own audio is recorded, while its conference records each participant.
    record: Option<RecordSink>,
    /// Where the app reads its own audio, when it asked.
    tap: Option<Box<TapSink>>,
    /// Who it hears and who hears it, when not everyone.
    routing: Option<Box<Routing>>,
}

impl ParticipantMix {
    pub fn new(id: ParticipantId, controls: Arc<ParticipantControls>, leg: Leg, frame: usize) -> Self {
        Self {
            id,
            controls,
            leg,
            input: vec![0; frame].into_boxed_slice(),
            output: vec![0; frame].into_boxed_slice(),
            contributes: false,
            noise_suppressor: None,
            audible: false,
            level_dbov: -100.0,
            quiet_ticks: 0,
            talking: false,
            frame_dbov: -100.0,
            ticks_since_talking: u32::MAX,
            prompts: None,
            own_mix: false,
            hears_conference: true,
            record: None,
            tap: None,
            routing: None,
        }
    }

    /// Sets who it hears and who hears it (`None`: everyone both ways).
    pub fn set_routing(&mut self, routing: Option<Box<Routing>>) {
        self.routing = routing;
    }

    /// Whether everyone hears it (it is part of the listeners' sum).
    fn heard_by_everyone(&self) -> bool {
        self.routing.as_ref().is_none_or(|r| r.heard_only_by.is_none())
    }

    /// Whether nobody hears it: then it is as good as muted.
    fn heard_by_nobody(&self) -> bool {
        self.routing.as_ref().and_then(|r| r.heard_only_by).is_some_and(|set| set.len == 0)
    }

    /// Whether it hears `talker`, as far as the listen/talk matrix goes.
    fn hears(&self, talker: &ParticipantMix) -> bool {
        let hears_only = self.routing.as_ref().and_then(|r| r.hears_only.as_ref());
        let heard_only_by = talker.routing.as_ref().and_then(|r| r.heard_only_by.as_ref());
        self.id != talker.id
            && hears_only.is_none_or(|set| set.contains(talker.id))
            && heard_only_by.is_none_or(|set| set.contains(self.id))
    }

    /// Records the participant's own audio into `sink`.
    pub fn set_record_sink(&mut self, sink: Option<RecordSink>) {
        self.record = sink;
    }

    /// Updates talker detection with this tick's level.
    fn detect_talking(&mut self, policy: &TalkerPolicy, level: f32) {
        // Smoothed in dB over about three ticks, for ranking talkers.
        self.level_dbov = if self.audible { self.level_dbov * 0.6 + level * 0.4 } else { -100.0 };
        self.frame_dbov = if self.audible { level } else { -100.0 };
        let was_talking = self.talking;
        // Above the start level, or above the stop level while talking: talking.
        let threshold = if was_talking { policy.stop_dbov } else { policy.start_dbov };
        let talking = if self.audible && level >= threshold {
            self.quiet_ticks = 0;
            true
        } else if was_talking {
            self.quiet_ticks += 1;
            self.quiet_ticks * (TICK.as_millis() as u32) <= policy.hang.as_millis() as u32
        } else {
            false
        };
        self.ticks_since_talking = if talking { 0 } else { self.ticks_since_talking.saturating_add(1) };
        if talking != was_talking {
            self.talking = talking;
            self.controls.talking.store(talking, Ordering::Relaxed);
            self.controls.talk_changes.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Suppresses noise in what this participant says (before it joins the mixer).
    pub fn set_noise_suppressor(&mut self, suppressor: Option<Box<NoiseSuppressor>>) {
        self.noise_suppressor = suppressor;
    }

    /// How the participant's leg encodes, when it is an RTP leg.
    pub fn encoder_key(&self) -> Option<EncoderKey> {
        match &self.leg {
            Leg::Rtp(leg) => Some(leg.encoder_key),
            Leg::Local(_) => None,
        }
    }

    /// Samples per tick this participant mixes.
    pub fn frame_samples(&self) -> usize {
        self.output.len()
    }
}

/// What the control side and the mixer share about one conference.
#[derive(Debug, Default)]
pub struct ConferenceControls {
    /// Frames of the mix the app did not read in time.
    pub tap_dropped: AtomicU64,
    /// Frames encoded for the conference's legs, by their own encoders and
    /// by the shared ones.
    pub encodes: AtomicU64,
}

/// The mixer's side of one conference.
pub struct ConferenceMix {
    pub id: ConferenceId,
    pub controls: Arc<ConferenceControls>,
    participants: Vec<Box<ParticipantMix>>,
    /// Encoders shared by listeners, at most [`MAX_SHARED_ENCODERS`].
    shared: Vec<Box<SharedEncoder>>,
    sum: Box<[i32]>,
    /// What everyone not mixed in hears: the sum, saturated.
    listener_mix: Box<[i16]>,
    scratch: Box<[i16]>,
    /// The conference mix for the app, when it asked for it.
    tap: Option<rtrb::Producer<i16>>,
    /// Prompts everyone hears, the first one playing.
    prompts: Option<Box<PromptMix>>,
    recording: Option<Box<RecordingMix>>,
    policy: TalkerPolicy,
    ticks: u32,
    /// Samples mixed so far: where participants' taps start their clocks.
    clock: u64,
    /// One participant's mix, in 32 bits, while the listen/talk matrix makes it differ.
    routed_sum: Box<[i32]>,
}

impl ConferenceMix {
    /// `capacity` participants fit before the control side must send more storage.
    pub fn new(id: ConferenceId, controls: Arc<ConferenceControls>, frame: usize, capacity: usize) -> Self {
        Self {
            id,
            controls,
            participants: Vec::with_capacity(capacity),
            shared: Vec::with_capacity(MAX_SHARED_ENCODERS),
            sum: vec![0; frame].into_boxed_slice(),
            listener_mix: vec![0; frame].into_boxed_slice(),
            scratch: vec![0; frame].into_boxed_slice(),
            tap: None,
            prompts: None,
            recording: None,
            policy: TalkerPolicy::default(),
            ticks: 0,
            clock: 0,
            routed_sum: vec![0; frame].into_boxed_slice(),
        }
    }

    /// Samples per tick the conference mixes.
    pub fn frame_samples(&self) -> usize {
        self.sum.len()
    }

    /// Mixes one tick; what it lets go of (finished prompts) goes to `discard`.
    fn mix(&mut self, discard: &mut impl FnMut(Garbage)) {
        let frame = self.sum.len();
        self.sum.fill(0);
        let policy = self.policy;
        let recording = self.recording.as_ref().is_some_and(|r| !r.paused.load(Ordering::Relaxed));
        // Whether anyone hears or is heard by fewer than everyone: the
        // common case, nobody, keeps to `sum - own` and the listeners' mix.
        let mut routed = false;
        // Each participant's frame, after noise suppression and gain, and its talker state.
        for p in self.participants.iter_mut() {
            routed |= p.routing.is_some();
            let scratch = &mut self.scratch[..frame];
            let (heard, comfort_noise) = match &mut p.leg {
                Leg::Rtp(leg) => {
                    // Not decoded only when it could not fill a slot either.
                    let may_skip = !p.talking && p.ticks_since_talking >= FILLER_AFTER_TALKING_TICKS;
                    let floor = policy.stop_dbov - FILLER_BELOW_STOP_DB;
                    let heard = leg.receive && leg.read_frame(&p.controls, scratch, floor, may_skip);
                    (heard, leg.comfort_noise_frame)
                }
                Leg::Local(leg) => (leg.read_frame(scratch), false),
            };
            let admitted = p.controls.admitted.load(Ordering::Relaxed);
            p.hears_conference = admitted && !p.controls.deaf.load(Ordering::Relaxed);
            // Its frame was still read above: the jitter buffer keeps its time.
            // Nobody to hear it is as good as muted: it takes no mixing slot.
            let silenced = !admitted || p.controls.muted.load(Ordering::Relaxed) || p.heard_by_nobody();
            p.audible = heard && !comfort_noise && !silenced;
            p.contributes = heard && !silenced;
            let mut level = -100.0;
            if p.contributes {
                // Cleaned only when it could be mixed, and not quieter than
                // talking stops at (muted or silent legs cost nothing).
                if let Some(suppressor) = p.noise_suppressor.as_mut() {
                    let loud = scratch.iter().any(|s| s.unsigned_abs() > 32);
                    if p.audible && loud {
                        suppressor.process(scratch);
                    }
                }
                if recording {
                    if let Some(sink) = p.record.as_mut() {
                        // What it says, cleaned, before its volume applies.
                        sink.push(scratch);
                    }
                }
                let gain = p.controls.gain_q16.load(Ordering::Relaxed) as i64;
                for (input, s) in p.input.iter_mut().zip(scratch.iter()) {
                    // Clamped to 16 bits after gain, so 65,536 loud participants fit the
                    // 32-bit sum; wrapping arithmetic keeps even more from panicking.
                    *input = ((*s as i64 * gain) >> 16).clamp(i16::MIN as i64, i16::MAX as i64) as i32;
                }
                // The peer's own measure of its microphone, when it sends one
                // (RFC 6464), before any codec or concealment touched it.
                let reported = match &p.leg {
                    Leg::Rtp(leg) => leg.reported_level(),
                    Leg::Local(_) => None,
                };
                level = reported.unwrap_or_else(|| level_dbov(&p.input));
            } else if let Some(sink) = p.record.as_mut().filter(|_| recording) {
                // Silent, muted or without audio: silence, so that its file keeps time with the mix.
                scratch.fill(0);
                sink.push(scratch);
            }
            p.detect_talking(&policy, level);
            if let Some(tap) = p.tap.as_mut() {
                // As its recording: silence while it is not heard, so the tap keeps time.
                if !p.contributes {
                    scratch.fill(0);
                }
                tap.push(scratch, p.talking);
            }
        }
        if policy.max_talkers > 0 {
            // At most `max_talkers` are mixed. When everyone heard fits, all
            // are: a small call is never gated (cutting soft onsets, pauses and
            // the noise floor around speech cost 0.1-0.3 PESQ in a two-party
            // call). Otherwise the loudest talkers go first, then, while slots
            // are left, the loudest of those that talked in the last two
            // seconds or whose frame is within 10 dB under the stop level:
            // that keeps the noise bounded by K microphones, and leaves the
            // open microphones of a quiet room out, so that their legs share
            // the listeners' encoding. Picked one by one: K passes, no
            // sorting storage in the tick.
            let everyone_fits = self.participants.iter().filter(|p| p.audible).count() <= policy.max_talkers;
            for p in self.participants.iter_mut() {
                p.contributes = false;
            }
            let floor = policy.stop_dbov - FILLER_BELOW_STOP_DB;
            let candidate = |p: &ParticipantMix| {
                p.audible
                    && (everyone_fits
                        || p.talking
                        || p.ticks_since_talking < FILLER_AFTER_TALKING_TICKS
                        || p.frame_dbov >= floor)
            };
            for _ in 0..policy.max_talkers {
                let loudest = self.participants.iter_mut().filter(|p| !p.contributes && candidate(p)).max_by(|a, b| {
                    (a.talking, a.level_dbov)
                        .partial_cmp(&(b.talking, b.level_dbov))
                        .unwrap_or(std::cmp::Ordering::Equal)
                });
                match loudest {
                    Some(p) => p.contributes = true,
                    None => break,
                }
            }
        }
        // Those heard by only some are added to their listeners' mixes instead.
        for p in self.participants.iter().filter(|p| p.contributes && p.heard_by_everyone()) {
            for (sum, input) in self.sum.iter_mut().zip(p.input.iter()) {
                *sum = sum.wrapping_add(*input);
            }
        }
        // A prompt to everyone is part of the sum, which nobody subtracts:
        // the listeners' mix and every `sum - own` carry it.
        play_prompts(&mut self.prompts, &mut self.sum, discard);
        if routed {
            for i in 0..self.participants.len() {
                let listener = &self.participants[i];
                // Its mix differs when some talker is in the sum and not
                // heard by it (itself, or one it does not hear), or heard
                // by it and not in the sum (a whisper).
                let differs =
                    self.participants.iter().any(|t| t.contributes && t.heard_by_everyone() != listener.hears(t));
                let p = &mut self.participants[i];
                p.own_mix = differs || p.prompts.is_some() || !p.hears_conference;
            }
        } else {
            for p in self.participants.iter_mut() {
                p.own_mix = p.contributes || p.prompts.is_some() || !p.hears_conference;
            }
        }
        for (out, sum) in self.listener_mix.iter_mut().zip(self.sum.iter()) {
            *out = (*sum).clamp(i16::MIN as i32, i16::MAX as i32) as i16;
        }
        self.choose_encoders();
        let mut encodes = 0;
        for shared in self.shared.iter_mut().filter(|s| s.wanted) {
            shared.encode(&self.listener_mix);
            encodes += 1;
        }
        if routed {
            self.mix_routed(discard);
        }
        for p in self.participants.iter_mut() {
            // Those mixed in hear the sum less themselves (or, with a
            // listen/talk matrix, what `mix_routed` made them), those with a
            // prompt of their own hear it too, and those that hear nothing
            // of the conference hear silence or their own prompts only (a
            // leg of theirs encodes that itself, like any own mix, so the
            // shared encoder's hand-overs stay as they are); everyone else
            // hears the listeners' mix.
            let mix: &[i16] = if p.own_mix && routed && p.hears_conference {
                &p.output
            } else if p.own_mix {
                // `input` is done with for this tick: it holds the own mix, in 32 bits.
                if p.hears_conference {
                    for (input, sum) in p.input.iter_mut().zip(self.sum.iter()) {
                        *input = if p.contributes { sum.wrapping_sub(*input) } else { *sum };
                    }
                } else {
                    p.input.fill(0);
                }
                play_prompts(&mut p.prompts, &mut p.input, discard);
                for (out, own) in p.output.iter_mut().zip(p.input.iter()) {
                    *out = (*own).clamp(i16::MIN as i32, i16::MAX as i32) as i16;
                }
                &p.output
            } else {
                &self.listener_mix
            };
            match &mut p.leg {
                Leg::Rtp(leg) => {
                    let outgoing = match leg.shared_encoder.and_then(|i| self.shared.get(i)) {
                        Some(shared) if leg.on_shared => Outgoing::Shared(shared),
                        _ => Outgoing::Mix(mix),
                    };
                    encodes += leg.write_frame(&p.controls, outgoing) as u64;
                }
                Leg::Local(leg) => {
                    if !push_frame(&mut leg.to_app, mix) {
                        p.controls.dropped.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
        self.controls.encodes.fetch_add(encodes, Ordering::Relaxed);
        if let Some(tap) = self.tap.as_mut() {
            if !push_frame(tap, &self.listener_mix) {
                self.controls.tap_dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
        // What a silent listener hears: everyone, and the prompts to everyone.
        if let Some(r) = self.recording.as_mut().filter(|_| recording) {
            r.mix.push(&self.listener_mix);
        }
        self.clock = self.clock.wrapping_add(frame as u64);
    }

    /// Writes the mix of everyone whose mix differs from the listeners'
    /// while the listen/talk matrix is in use: the sum, less the talkers in
    /// it that the participant does not hear, plus those outside it that it
    /// does (whispers), plus its own prompts. Inputs stay as they are, since
    /// every listener reads them.
    fn mix_routed(&mut self, discard: &mut impl FnMut(Garbage)) {
        for i in 0..self.participants.len() {
            let listener = &self.participants[i];
            // One that hears nothing of the conference gets silence and its
            // prompts in the tick's own-mix pass.
            if !listener.own_mix || !listener.hears_conference {
                continue;
            }
            self.routed_sum.copy_from_slice(&self.sum);
            for talker in self.participants.iter().filter(|t| t.contributes) {
                let sign = match (talker.heard_by_everyone(), listener.hears(talker)) {
                    (true, false) => -1,
                    (false, true) => 1,
                    _ => continue,
                };
                for (own, input) in self.routed_sum.iter_mut().zip(talker.input.iter()) {
                    *own = own.wrapping_add(sign * input);
                }
            }
            let p = &mut self.participants[i];
            play_prompts(&mut p.prompts, &mut self.routed_sum, discard);
            for (out, own) in p.output.iter_mut().zip(self.routed_sum.iter()) {
                *out = (*own).clamp(i16::MIN as i32, i16::MAX as i32) as i16;
            }
        }
    }

    /// Takes in a participant, if it has room (the control side made sure),
    /// and points its leg at the shared encoder for its kind.
    fn admit(&mut self, mut p: Box<ParticipantMix>) -> Result<(), Box<ParticipantMix>> {
        if self.participants.len() == self.participants.capacity() {
            return Err(p);
        }
        if let Leg::Rtp(leg) = &mut p.leg {
            leg.shared_encoder = self.shared.iter().position(|shared| shared.key == leg.encoder_key);
        }
        self.participants.push(p);
        Ok(())
    }

    /// Takes participant `id` out to mix in another conference. Its leg
    /// leaves this conference's shared encoder for its own, taking over its
    /// state as when it starts talking, so its peer decodes no seam; it
    /// lingers on it in the next conference until it converged on that
    /// one's shared encoder. Its recording here ends.
    fn release(&mut self, id: ParticipantId) -> Option<(Box<ParticipantMix>, Option<RecordSink>)> {
        let i = self.participants.iter().position(|p| p.id == id)?;
        let mut p = self.participants.swap_remove(i);
        if let Leg::Rtp(leg) = &mut p.leg {
            if let Some(shared) = leg.shared_encoder.take().and_then(|i| self.shared.get(i)) {
                if leg.on_shared {
                    leg.leave_shared_encoder(shared);
                }
            }
            leg.on_shared = false;
            leg.ticks_since_mixed = 0;
        }
        let record = p.record.take();
        Some((p, record))
    }

    /// Decides, before any shared encoder runs this tick, which legs send a
    /// shared payload and which their own encoding, and which shared
    /// encoders must run.
    fn choose_encoders(&mut self) {
        self.ticks = self.ticks.wrapping_add(1);
        for shared in self.shared.iter_mut() {
            shared.wanted = false;
        }
        for p in self.participants.iter_mut() {
            let Leg::Rtp(leg) = &mut p.leg else { continue };
            let Some(shared) = leg.shared_encoder.and_then(|i| self.shared.get_mut(i)) else { continue };
            // A leg hearing a mix of its own (it is mixed in, or a prompt
            // plays to it alone) cannot send the listeners' encoding.
            leg.ticks_since_mixed = if p.own_mix { 0 } else { leg.ticks_since_mixed.saturating_add(1) };
            let on_shared = leg.ticks_since_mixed > OWN_ENCODER_LINGER_TICKS;
            if leg.on_shared && !on_shared {
                // The shared encoder has not run yet this tick: its state is
                // the one the peer decoded last.
                leg.leave_shared_encoder(shared);
            }
            leg.on_shared = on_shared;
            // It also runs while legs linger on their own encoders, so its
            // state follows the mix they are about to take.
            if leg.send && leg.ticks_since_mixed > 0 {
                shared.wanted = true;
                // Peers report loss every few seconds; looking once a second
                // spares a big room a cache miss per leg per tick.
                if self.ticks % LOSS_CHECK_TICKS == 0 {
                    let loss = p.controls.remote_loss_percent.load(Ordering::Relaxed);
                    if loss <= 100 {
                        shared.worst_loss = Some(shared.worst_loss.map_or(loss, |worst| worst.max(loss)));
                    }
                }
            }
        }
    }

    /// Points the legs that encode like `self.shared[index]` at it.
    fn assign_shared_encoder(&mut self, index: usize) {
        let key = self.shared[index].key;
        for p in self.participants.iter_mut() {
            if let Leg::Rtp(leg) = &mut p.leg {
                if leg.shared_encoder.is_none() && leg.encoder_key == key {
                    leg.shared_encoder = Some(index);
                }
            }
        }
    }
}

/// What a re-offer changed in an RTP leg: hold and resume, a new address,
/// new payload types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LegMedia {
    /// Whether the leg sends audio, and whether what it receives is mixed.
    pub send: bool,
    pub receive: bool,
    /// Where to send: a new address drops the latched source.
    pub remote: SocketAddr,
    pub payload_type: u8,
    pub telephone_event: Option<u8>,
    pub comfort_noise: Option<u8>,
}

/// Instructions from the control side. Anything that needs memory arrives
/// already allocated.
pub enum MixerCommand {
    AddConference(Box<ConferenceMix>),
    RemoveConference(ConferenceId),
    AddParticipant(ConferenceId, Box<ParticipantMix>),
    RemoveParticipant(ConferenceId, ParticipantId),
    /// Replaces the conference list's storage with a larger, empty vector.
    ConferenceStorage(Vec<Box<ConferenceMix>>),
    /// Replaces a conference's participant storage with a larger, empty vector.
    ParticipantStorage(ConferenceId, Vec<Box<ParticipantMix>>),
    /// Starts (or with `None` stops) the conference mix feed to the app.
    SetTap(ConferenceId, Option<rtrb::Producer<i16>>),
    /// Sets how a conference detects talkers and how many it mixes.
    SetTalkerPolicy(ConferenceId, TalkerPolicy),
    /// Starts (or with `None` stops) suppressing noise in a participant's audio.
    SetNoiseSuppressor(ConferenceId, ParticipantId, Option<Box<NoiseSuppressor>>),
    /// Changes what an RTP leg sends and receives, after a re-offer.
    SetLegMedia(ConferenceId, ParticipantId, LegMedia),
    /// Changes an RTP leg's codec (a re-offer changed it); the control side
    /// gave the conference a shared encoder for it first, when it could.
    SetLegCodec(ConferenceId, ParticipantId, Box<LegCodec>),
    /// Queues a prompt for everyone, or for one participant; one that cannot
    /// be played (its conference or participant is gone) is stopped.
    Play(ConferenceId, Option<ParticipantId>, Box<PromptMix>),
    /// Stops a prompt, playing or queued, or with `None` every prompt of the conference.
    StopPlayback(ConferenceId, Option<PlaybackId>),
    /// Starts recording a conference's mix, or with `None` stops, which
    /// also stops recording each of its participants.
    SetRecording(ConferenceId, Option<Box<RecordingMix>>),
    /// Records one participant's own audio (while its conference records).
    SetRecordSink(ConferenceId, ParticipantId, RecordSink),
    /// Gives a conference an encoder for the listeners whose legs encode as
    /// it does; ignored when it has one for them or [`MAX_SHARED_ENCODERS`].
    AddSharedEncoder(ConferenceId, Box<SharedEncoder>),
    /// Starts (or with `None` stops) handing a participant's own audio to the app.
    SetParticipantTap(ConferenceId, ParticipantId, Option<Box<TapSink>>),
    /// Sets who a participant hears and who hears it (`None`: everyone).
    SetRouting(ConferenceId, ParticipantId, Option<Box<Routing>>),
    /// Moves a participant to another conference of this mixer between two
    /// ticks, so its audio goes on without a gap; the control side has made
    /// room for it there.
    MoveParticipant {
        from: ConferenceId,
        to: ConferenceId,
        participant: ParticipantId,
    },
    /// Takes a participant out of its conference into `mailbox`, from where
    /// the control side hands it to another mixer thread.
    DetachParticipant(ConferenceId, ParticipantId, rtrb::Producer<Box<ParticipantMix>>),
    Stop,
}

/// What the mixer hands back to be freed off its thread.
pub enum Garbage {
    Conference(Box<ConferenceMix>),
    Participant(Box<ParticipantMix>),
    Conferences(Vec<Box<ConferenceMix>>),
    Participants(Vec<Box<ParticipantMix>>),
    Tap(rtrb::Producer<i16>),
    NoiseSuppressor(Box<NoiseSuppressor>),
    SharedEncoder(Box<SharedEncoder>),
    LegCodec(Box<LegCodec>),
    Prompt(Box<PromptMix>),
    Recording(Box<RecordingMix>),
    RecordSink(RecordSink),
    ParticipantTap(Box<TapSink>),
    Routing(Box<Routing>),
    /// A detached participant's way out, whose consumer may be gone already.
    Mailbox(rtrb::Producer<Box<ParticipantMix>>),
}

/// Width of a bucket of [`MixerStats::tick_histogram`].
pub const TICK_HISTOGRAM_STEP: Duration = Duration::from_micros(10);
/// Buckets of [`MixerStats::tick_histogram`]: up to 50 ms, the last holding anything longer.
const TICK_HISTOGRAM_BUCKETS: usize = 5000;

/// Timing counters of a mixer thread.
#[derive(Debug)]
pub struct MixerStats {
    pub ticks: AtomicU64,
    /// Ticks that started more than one tick late.
    pub late_ticks: AtomicU64,
    /// Things the reaper could not take (its queue was full); leaked rather than freed in the tick.
    pub leaked: AtomicU64,
    /// How long ticks took (commands and mixing): a count per
    /// [`TICK_HISTOGRAM_STEP`], so that readers can take percentiles over
    /// any window by subtracting two copies.
    pub tick_histogram: Box<[AtomicU64]>,
}

impl Default for MixerStats {
    fn default() -> Self {
        Self {
            ticks: AtomicU64::new(0),
            late_ticks: AtomicU64::new(0),
            leaked: AtomicU64::new(0),
            tick_histogram: (0..TICK_HISTOGRAM_BUCKETS).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

impl MixerStats {
    fn record_tick(&self, took: Duration) {
        let bucket = (took.as_nanos() / TICK_HISTOGRAM_STEP.as_nanos()).min(TICK_HISTOGRAM_BUCKETS as u128 - 1);
        self.tick_histogram[bucket as usize].fetch_add(1, Ordering::Relaxed);
    }
}

/// The mixer's schedule: ticks on absolute 20 ms deadlines of the monotonic
/// clock, so a late tick is caught up by running the next ones at once instead
/// of shifting every later tick (no drift). After a stall of more than
/// `MAX_CATCH_UP` ticks the schedule restarts from now rather than bursting.
#[derive(Debug, Clone, Copy)]
pub struct TickClock {
    deadline: Instant,
}

/// What the mixer does after a tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TickWait {
    /// Early: sleep this long.
    Sleep(Duration),
    /// Behind: tick again now. `late` when this tick ended more than a tick past its deadline.
    CatchUp { late: bool },
}

const MAX_CATCH_UP: u32 = 5;

impl TickClock {
    pub fn new(start: Instant) -> Self {
        Self { deadline: start + TICK }
    }

    /// Called after each tick with the current time.
    pub fn after_tick(&mut self, now: Instant) -> TickWait {
        let deadline = self.deadline;
        self.deadline += TICK;
        if now < deadline {
            return TickWait::Sleep(deadline - now);
        }
        let behind = now - deadline;
        if behind > TICK * MAX_CATCH_UP {
            self.deadline = now + TICK;
        }
        TickWait::CatchUp { late: behind > TICK }
    }
}

/// Hands `garbage` to the reaper, or leaks it when the reaper's queue is full:
/// freeing it here could take a lock or make a system call in the tick.
fn discard(reaper: &Sender<Garbage>, stats: &MixerStats, garbage: Garbage) {
    if let Err(e) = reaper.try_send(garbage) {
        stats.leaked.fetch_add(1, Ordering::Relaxed);
        std::mem::forget(e.into_inner());
    }
}

/// The mixer's state; [`Mixer::run`] is the thread body.
pub struct Mixer {
    conferences: Vec<Box<ConferenceMix>>,
    commands: Receiver<MixerCommand>,
    garbage: Sender<Garbage>,
    stats: Arc<MixerStats>,
}

impl Mixer {
    pub fn new(
        commands: Receiver<MixerCommand>,
        garbage: Sender<Garbage>,
        stats: Arc<MixerStats>,
        capacity: usize,
    ) -> Self {
        Self { conferences: Vec::with_capacity(capacity), commands, garbage, stats }
    }

    fn discard(&self, garbage: Garbage) {
        discard(&self.garbage, &self.stats, garbage);
    }

    fn conference(&mut self, id: ConferenceId) -> Option<&mut Box<ConferenceMix>> {
        self.conferences.iter_mut().find(|c| c.id == id)
    }

    /// Applies queued commands; false once told to stop.
    pub fn apply_commands(&mut self) -> bool {
        loop {
            let command = match self.commands.try_recv() {
                Ok(c) => c,
                Err(TryRecvError::Empty) => return true,
                Err(TryRecvError::Disconnected) => return false,
            };
            match command {
                MixerCommand::Stop => return false,
                MixerCommand::AddConference(c) => {
                    if self.conferences.len() < self.conferences.capacity() {
                        self.conferences.push(c);
                    } else {
                        // The control side sends storage first; reaching this is its bug.
                        self.discard(Garbage::Conference(c));
                    }
                }
                MixerCommand::RemoveConference(id) => {
                    if let Some(i) = self.conferences.iter().position(|c| c.id == id) {
                        let c = self.conferences.swap_remove(i);
                        self.discard(Garbage::Conference(c));
                    }
                }
                MixerCommand::AddParticipant(conference, p) => {
                    let admitted = match self.conference(conference) {
                        Some(c) => c.admit(p),
                        None => Err(p),
                    };
                    if let Err(p) = admitted {
                        self.discard(Garbage::Participant(p));
                    }
                }
                MixerCommand::MoveParticipant { from, to, participant } => {
                    let Some((p, record)) = self.conference(from).and_then(|c| c.release(participant)) else {
                        continue;
                    };
                    record.into_iter().for_each(|sink| self.discard(Garbage::RecordSink(sink)));
                    // Not there (the control side's bug): it stays where it was, which has room.
                    let admitted = match self.conference(to) {
                        Some(c) => c.admit(p),
                        None => Err(p),
                    };
                    let back = admitted.err().map(|p| match self.conference(from) {
                        Some(c) => c.admit(p),
                        None => Err(p),
                    });
                    if let Some(Err(p)) = back {
                        self.discard(Garbage::Participant(p));
                    }
                }
                MixerCommand::DetachParticipant(conference, participant, mut mailbox) => {
                    if let Some((p, record)) = self.conference(conference).and_then(|c| c.release(participant)) {
                        record.into_iter().for_each(|sink| self.discard(Garbage::RecordSink(sink)));
                        // The mailbox holds one, and it is new.
                        if let Err(rtrb::PushError::Full(p)) = mailbox.push(p) {
                            self.discard(Garbage::Participant(p));
                        }
                    }
                    self.discard(Garbage::Mailbox(mailbox));
                }
                MixerCommand::SetParticipantTap(conference, id, tap) => {
                    let Some(c) = self.conferences.iter_mut().find(|c| c.id == conference) else {
                        tap.into_iter().for_each(|t| self.discard(Garbage::ParticipantTap(t)));
                        continue;
                    };
                    let clock = c.clock;
                    let old = match c.participants.iter_mut().find(|p| p.id == id) {
                        Some(p) => std::mem::replace(
                            &mut p.tap,
                            tap.map(|mut tap| {
                                tap.clock = clock;
                                tap
                            }),
                        ),
                        None => tap,
                    };
                    old.into_iter().for_each(|t| self.discard(Garbage::ParticipantTap(t)));
                }
                MixerCommand::SetRouting(conference, id, routing) => {
                    let participant =
                        self.conference(conference).and_then(|c| c.participants.iter_mut().find(|p| p.id == id));
                    let old = match participant {
                        Some(p) => std::mem::replace(&mut p.routing, routing),
                        None => routing,
                    };
                    old.into_iter().for_each(|r| self.discard(Garbage::Routing(r)));
                }
                MixerCommand::RemoveParticipant(conference, id) => {
                    let removed = self.conference(conference).and_then(|c| {
                        let i = c.participants.iter().position(|p| p.id == id)?;
                        Some(c.participants.swap_remove(i))
                    });
                    if let Some(p) = removed {
                        self.discard(Garbage::Participant(p));
                    }
                }
                MixerCommand::ConferenceStorage(mut storage) => {
                    storage.append(&mut self.conferences);
                    let old = std::mem::replace(&mut self.conferences, storage);
                    self.discard(Garbage::Conferences(old));
                }
                MixerCommand::ParticipantStorage(conference, mut storage) => {
                    let old = self.conference(conference).map(|c| {
                        storage.append(&mut c.participants);
                        std::mem::replace(&mut c.participants, storage)
                    });
                    if let Some(old) = old {
                        self.discard(Garbage::Participants(old));
                    }
                }
                MixerCommand::SetTap(conference, tap) => {
                    let old = match self.conference(conference) {
                        Some(c) => std::mem::replace(&mut c.tap, tap),
                        None => tap,
                    };
                    if let Some(old) = old {
                        self.discard(Garbage::Tap(old));
                    }
                }
                MixerCommand::SetTalkerPolicy(conference, policy) => {
                    if let Some(c) = self.conference(conference) {
                        c.policy = policy;
                    }
                }
                MixerCommand::SetLegMedia(conference, id, media) => {
                    let participant =
                        self.conference(conference).and_then(|c| c.participants.iter_mut().find(|p| p.id == id));
                    if let Some(Leg::Rtp(leg)) = participant.map(|p| &mut p.leg) {
                        leg.set_media(media);
                    }
                }
                MixerCommand::SetLegCodec(conference, id, mut codec) => {
                    if let Some(c) = self.conference(conference) {
                        if let Some(p) = c.participants.iter_mut().find(|p| p.id == id) {
                            if let Leg::Rtp(leg) = &mut p.leg {
                                leg.swap_codec(&mut codec);
                                leg.shared_encoder = c.shared.iter().position(|shared| shared.key == leg.encoder_key);
                            }
                        }
                    }
                    self.discard(Garbage::LegCodec(codec));
                }
                MixerCommand::AddSharedEncoder(conference, shared) => {
                    let rejected = match self.conference(conference) {
                        Some(c)
                            if c.shared.len() < c.shared.capacity() && c.shared.iter().all(|s| s.key != shared.key) =>
                        {
                            c.shared.push(shared);
                            c.assign_shared_encoder(c.shared.len() - 1);
                            None
                        }
                        _ => Some(shared),
                    };
                    if let Some(shared) = rejected {
                        self.discard(Garbage::SharedEncoder(shared));
                    }
                }
                MixerCommand::Play(conference, participant, prompt) => {
                    let queue = self.conference(conference).and_then(|c| match participant {
                        None => Some(&mut c.prompts),
                        Some(id) => c.participants.iter_mut().find(|p| p.id == id).map(|p| &mut p.prompts),
                    });
                    match queue {
                        Some(queue) => enqueue(queue, prompt),
                        None => self.discard(Garbage::Prompt(prompt)),
                    }
                }
                MixerCommand::StopPlayback(conference, id) => {
                    let (reaper, stats) = (&self.garbage, &self.stats);
                    let Some(c) = self.conferences.iter_mut().find(|c| c.id == conference) else { continue };
                    let queues =
                        std::iter::once(&mut c.prompts).chain(c.participants.iter_mut().map(|p| &mut p.prompts));
                    for queue in queues {
                        match id {
                            // Dropping the head drops the prompts queued after it.
                            None => queue.take().into_iter().for_each(|p| discard(reaper, stats, Garbage::Prompt(p))),
                            Some(_) => {
                                if let Some(p) = unqueue(queue, id) {
                                    discard(reaper, stats, Garbage::Prompt(p));
                                    break;
                                }
                            }
                        }
                    }
                }
                MixerCommand::SetRecording(conference, recording) => {
                    let (reaper, stats) = (&self.garbage, &self.stats);
                    let Some(c) = self.conferences.iter_mut().find(|c| c.id == conference) else {
                        recording.into_iter().for_each(|r| discard(reaper, stats, Garbage::Recording(r)));
                        continue;
                    };
                    if recording.is_none() {
                        for sink in c.participants.iter_mut().filter_map(|p| p.record.take()) {
                            discard(reaper, stats, Garbage::RecordSink(sink));
                        }
                    }
                    if let Some(old) = std::mem::replace(&mut c.recording, recording) {
                        discard(reaper, stats, Garbage::Recording(old));
                    }
                }
                MixerCommand::SetRecordSink(conference, id, sink) => {
                    let participant =
                        self.conference(conference).and_then(|c| c.participants.iter_mut().find(|p| p.id == id));
                    let old = match participant {
                        Some(p) => p.record.replace(sink),
                        None => Some(sink),
                    };
                    if let Some(old) = old {
                        self.discard(Garbage::RecordSink(old));
                    }
                }
                MixerCommand::SetNoiseSuppressor(conference, id, suppressor) => {
                    let participant =
                        self.conference(conference).and_then(|c| c.participants.iter_mut().find(|p| p.id == id));
                    let old = match participant {
                        Some(p) => std::mem::replace(&mut p.noise_suppressor, suppressor),
                        None => suppressor,
                    };
                    if let Some(old) = old {
                        self.discard(Garbage::NoiseSuppressor(old));
                    }
                }
            }
        }
    }

    /// Mixes one frame of every conference.
    pub fn tick(&mut self) {
        let (reaper, stats) = (&self.garbage, &self.stats);
        for conference in self.conferences.iter_mut() {
            conference.mix(&mut |garbage| discard(reaper, stats, garbage));
        }
        self.stats.ticks.fetch_add(1, Ordering::Relaxed);
    }

    /// The thread body: ticks on the schedule of [`TickClock`].
    pub fn run(mut self) {
        denoise::prepare_thread();
        let mut clock = TickClock::new(Instant::now());
        loop {
            let started = Instant::now();
            if !self.apply_commands() {
                break;
            }
            self.tick();
            let now = Instant::now();
            self.stats.record_tick(now - started);
            match clock.after_tick(now) {
                TickWait::Sleep(d) => std::thread::sleep(d),
                TickWait::CatchUp { late } => {
                    if late {
                        self.stats.late_ticks.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
        // Hand everything back so it is freed off this thread too.
        for c in self.conferences.drain(..) {
            if let Err(e) = self.garbage.try_send(Garbage::Conference(c)) {
                drop(e.into_inner());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::codec::CodecKind;
    use std::cell::Cell;

    /// Counts allocations made on a thread while it is being watched.
    struct CountingAllocator;

    thread_local! {
        static WATCHING: Cell<bool> = const { Cell::new(false) };
        static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
    }

    unsafe impl std::alloc::GlobalAlloc for CountingAllocator {
        unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
            note_allocation();
            unsafe { std::alloc::System.alloc(layout) }
        }
        unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
            note_allocation();
            unsafe { std::alloc::System.dealloc(ptr, layout) }
        }
        unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
            note_allocation();
            unsafe { std::alloc::System.realloc(ptr, layout, new_size) }
        }
    }

    fn note_allocation() {
        // try_with: thread-locals may be gone while a thread exits.
        let _ = WATCHING.try_with(|w| {
            if w.get() {
                let _ = ALLOCATIONS.try_with(|a| a.set(a.get() + 1));
            }
        });
    }

    #[global_allocator]
    static ALLOCATOR: CountingAllocator = CountingAllocator;

    /// Runs `f` and returns how many allocations and frees it made on this thread.
    fn allocations_in(f: impl FnOnce()) -> usize {
        ALLOCATIONS.with(|a| a.set(0));
        WATCHING.with(|w| w.set(true));
        f();
        WATCHING.with(|w| w.set(false));
        ALLOCATIONS.with(|a| a.get())
    }

    const FRAME: usize = 160;

    struct Harness {
        mixer: Mixer,
        commands: Sender<MixerCommand>,
        garbage: Receiver<Garbage>,
    }

    fn harness() -> Harness {
        let (commands, rx) = crossbeam_channel::bounded(64);
        let (garbage_tx, garbage) = crossbeam_channel::bounded(64);
        Harness { mixer: Mixer::new(rx, garbage_tx, Arc::default(), 4), commands, garbage }
    }

    struct LocalEnds {
        to_mixer: rtrb::Producer<i16>,
        from_mixer: rtrb::Consumer<i16>,
    }

    fn local(id: u64) -> (Box<ParticipantMix>, LocalEnds) {
        let (to_mixer, from_app) = rtrb::RingBuffer::new(FRAME * 10);
        let (to_app, from_mixer) = rtrb::RingBuffer::new(FRAME * 10);
        let p =
            ParticipantMix::new(ParticipantId(id), Arc::default(), Leg::Local(LocalLeg { from_app, to_app }), FRAME);
        (Box::new(p), LocalEnds { to_mixer, from_mixer })
    }

    /// Adds local participants 0 to `n - 1` to conference `id`.
    fn add_locals(h: &Harness, id: u64, n: u64) -> Vec<LocalEnds> {
        let mut ends = Vec::new();
        for i in 0..n {
            let (p, e) = local(i);
            h.commands.send(MixerCommand::AddParticipant(ConferenceId(id), p)).unwrap();
            ends.push(e);
        }
        ends
    }

    fn feed(ends: &mut LocalEnds, value: i16) {
        for _ in 0..FRAME {
            ends.to_mixer.push(value).unwrap();
        }
    }

    fn take(ends: &mut LocalEnds) -> Vec<i16> {
        let chunk = ends.from_mixer.read_chunk(FRAME).unwrap();
        let v: Vec<i16> = chunk.into_iter().collect();
        v
    }

    /// A conference that mixes everyone heard, talking or not.
    fn conference(h: &Harness, id: u64) {
        conference_with(h, id, TalkerPolicy { max_talkers: 0, ..Default::default() });
    }

    fn conference_with(h: &Harness, id: u64, policy: TalkerPolicy) {
        let c = ConferenceMix::new(ConferenceId(id), Arc::default(), FRAME, 8);
        h.commands.send(MixerCommand::AddConference(Box::new(c))).unwrap();
        h.commands.send(MixerCommand::SetTalkerPolicy(ConferenceId(id), policy)).unwrap();
    }

    #[test]
    fn at_most_k_are_mixed_talkers_first() {
        let mut h = harness();
        conference_with(&h, 1, TalkerPolicy { max_talkers: 2, ..Default::default() });
        let mut ends = Vec::new();
        let mut controls = Vec::new();
        for i in 0..5 {
            let (p, e) = local(i);
            controls.push(p.controls.clone());
            h.commands.send(MixerCommand::AddParticipant(ConferenceId(1), p)).unwrap();
            ends.push(e);
        }
        h.mixer.apply_commands();
        // Feeds each participant its level for `ticks` ticks; what each heard last.
        let mut run = |h: &mut Harness, levels: [i16; 5], ticks: usize| {
            let mut heard = Vec::new();
            for _ in 0..ticks {
                for (e, level) in ends.iter_mut().zip(levels) {
                    feed(e, level);
                }
                h.mixer.tick();
                heard = ends.iter_mut().map(|e| take(e)[0]).collect();
            }
            heard
        };
        let talking = || controls.iter().map(|c| c.talking.load(Ordering::Relaxed)).collect::<Vec<_>>();
        // Four talkers (-12 to -30 dBov) and a silent listener. The two
        // loudest are mixed: each hears the other; everyone else hears both.
        assert_eq!(run(&mut h, [8000, 4000, 2000, 1000, 0], 5), vec![4000, 8000, 12000, 12000, 12000]);
        assert_eq!(talking(), vec![true, true, true, true, false]);

        // Once only the softest talks (and the others stopped over 2 s ago),
        // it is mixed first, and free slots go to the loudest of the rest
        // down to 10 dB under the stop level: -44 dBov fills one, an open
        // microphone at -65 dBov does not fill the third.
        h.commands
            .send(MixerCommand::SetTalkerPolicy(ConferenceId(1), TalkerPolicy { max_talkers: 3, ..Default::default() }))
            .unwrap();
        h.mixer.apply_commands();
        run(&mut h, [0, 0, 0, 1000, 0], 130);
        assert_eq!(run(&mut h, [200, 18, 0, 1000, 0], 130), vec![1000, 1200, 1200, 200, 1200]);
        assert_eq!(talking(), vec![false, false, false, true, false]);
    }

    #[test]
    fn a_reported_audio_level_decides_talking() {
        let mut h = harness();
        conference_with(&h, 1, TalkerPolicy::default());
        h.mixer.apply_commands();
        let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
        let source = peer.local_addr().unwrap();
        let (leg, mut ring) = level_reporting_participant(1, source);
        let controls = leg.controls.clone();
        h.commands.send(MixerCommand::AddParticipant(ConferenceId(1), leg)).unwrap();
        h.mixer.apply_commands();
        // Loud audio (-12 dBov measured) that the client says is -127 dBov, then -20 dBov.
        let with_level = |seq: u16, level: u8| datagram_with_level(source, seq, 8000, level);
        for seq in 0..5 {
            ring.push(with_level(seq, 127)).ok().unwrap();
            h.mixer.tick();
        }
        assert!(!controls.talking.load(Ordering::Relaxed), "the client said silence");
        for seq in 5..10 {
            ring.push(with_level(seq, 20)).ok().unwrap();
            h.mixer.tick();
        }
        assert!(controls.talking.load(Ordering::Relaxed), "the client said -20 dBov");
    }

    #[test]
    fn talking_starts_at_once_and_stops_after_the_hang_time() {
        let mut h = harness();
        let policy = TalkerPolicy { hang: Duration::from_millis(100), ..Default::default() };
        conference_with(&h, 1, policy);
        let (talker, mut talker_end) = local(1);
        let (listener, mut listener_end) = local(2);
        let controls = talker.controls.clone();
        h.commands.send(MixerCommand::AddParticipant(ConferenceId(1), talker)).unwrap();
        h.commands.send(MixerCommand::AddParticipant(ConferenceId(1), listener)).unwrap();
        h.mixer.apply_commands();
        let mut tick = |value: i16| {
            feed(&mut talker_end, value);
            feed(&mut listener_end, 0);
            h.mixer.tick();
            take(&mut talker_end);
            take(&mut listener_end);
            controls.talking.load(Ordering::Relaxed)
        };
        // Below the start level: not talking.
        assert!(!tick(200));
        // The first loud frame is talking.
        assert!(tick(3000));
        // Between the stop and start levels it goes on talking...
        assert!(tick(200));
        // ...and under the stop level for the hang time (5 ticks) too.
        for _ in 0..5 {
            assert!(tick(10));
        }
        assert!(!tick(10));
        assert_eq!(controls.talk_changes.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn each_participant_hears_the_others_but_not_itself() {
        let mut h = harness();
        conference(&h, 1);
        let mut ends = add_locals(&h, 1, 3);
        h.mixer.apply_commands();
        for (i, e) in ends.iter_mut().enumerate() {
            feed(e, [100, 20, 3][i]);
        }
        h.mixer.tick();
        let heard: Vec<i16> = ends.iter_mut().map(|e| take(e)[0]).collect();
        assert_eq!(heard, vec![23, 103, 120]);
    }

    #[test]
    fn sums_saturate_and_mute_and_gain_apply() {
        let mut h = harness();
        conference(&h, 1);
        let (a, mut ea) = local(1);
        let (b, mut eb) = local(2);
        let (c, mut ec) = local(3);
        let (a_controls, b_controls) = (a.controls.clone(), b.controls.clone());
        for p in [a, b, c] {
            h.commands.send(MixerCommand::AddParticipant(ConferenceId(1), p)).unwrap();
        }
        h.mixer.apply_commands();
        feed(&mut ea, 30000);
        feed(&mut eb, 30000);
        feed(&mut ec, 0);
        h.mixer.tick();
        assert_eq!(take(&mut ec)[0], i16::MAX, "30000 + 30000 saturates");
        assert_eq!(take(&mut ea)[0], 30000);
        take(&mut eb);

        a_controls.muted.store(true, Ordering::Relaxed);
        b_controls.gain_q16.store(gain_q16_from_db(-6.0206), Ordering::Relaxed);
        feed(&mut ea, 30000);
        feed(&mut eb, 1000);
        feed(&mut ec, 0);
        h.mixer.tick();
        assert_eq!(take(&mut ec)[0], 500, "a muted, b at -6 dB");
        assert_eq!(take(&mut ea)[0], 500);
        assert_eq!(take(&mut eb)[0], 0, "b does not hear itself");
    }

    #[test]
    fn loud_gain_is_clamped_per_participant() {
        let mut h = harness();
        conference(&h, 1);
        let (a, mut ea) = local(1);
        let (b, mut eb) = local(2);
        a.controls.gain_q16.store(gain_q16_from_db(40.0), Ordering::Relaxed);
        h.commands.send(MixerCommand::AddParticipant(ConferenceId(1), a)).unwrap();
        h.commands.send(MixerCommand::AddParticipant(ConferenceId(1), b)).unwrap();
        h.mixer.apply_commands();
        feed(&mut ea, -30000);
        feed(&mut eb, 0);
        h.mixer.tick();
        assert_eq!(take(&mut eb)[0], i16::MIN);
        assert_eq!(take(&mut ea)[0], 0, "a's clamped contribution cancels out of its own mix");
    }

    #[test]
    fn a_participant_without_audio_hears_everyone() {
        let mut h = harness();
        conference(&h, 1);
        let (a, mut ea) = local(1);
        let (b, mut eb) = local(2);
        h.commands.send(MixerCommand::AddParticipant(ConferenceId(1), a)).unwrap();
        h.commands.send(MixerCommand::AddParticipant(ConferenceId(1), b)).unwrap();
        h.mixer.apply_commands();
        feed(&mut ea, 7);
        h.mixer.tick();
        assert_eq!(take(&mut eb)[0], 7);
        assert_eq!(take(&mut ea)[0], 0);
    }

    #[test]
    fn a_deaf_participant_hears_silence_and_one_not_admitted_neither_hears_nor_is_heard() {
        let mut h = harness();
        conference(&h, 1);
        let mut ends = add_locals(&h, 1, 3);
        h.mixer.apply_commands();
        let controls: Vec<Arc<ParticipantControls>> =
            h.mixer.conferences[0].participants.iter().map(|p| p.controls.clone()).collect();
        let tick = |h: &mut Harness, ends: &mut Vec<LocalEnds>| {
            for (e, value) in ends.iter_mut().zip([100, 20, 3]) {
                feed(e, value);
            }
            h.mixer.tick();
            ends.iter_mut().map(|e| take(e)[0]).collect::<Vec<i16>>()
        };
        controls[0].deaf.store(true, Ordering::Relaxed);
        assert_eq!(tick(&mut h, &mut ends), vec![0, 103, 120], "0 hears nothing but is still heard");
        controls[0].deaf.store(false, Ordering::Relaxed);
        controls[1].admitted.store(false, Ordering::Relaxed);
        assert_eq!(tick(&mut h, &mut ends), vec![3, 0, 100], "1 neither hears nor is heard");
        // A prompt to the one waiting outside is all it hears.
        let (done, ended) = crossbeam_channel::unbounded();
        h.commands
            .send(MixerCommand::Play(ConferenceId(1), Some(ParticipantId(1)), prompt(7, &[900; FRAME], &done)))
            .unwrap();
        h.mixer.apply_commands();
        assert_eq!(tick(&mut h, &mut ends), vec![3, 900, 100]);
        controls[1].admitted.store(true, Ordering::Relaxed);
        assert_eq!(tick(&mut h, &mut ends), vec![23, 103, 120]);
        reap(&h);
        assert_eq!(ended.try_recv(), Ok((7, PlaybackEnd::Completed)));
    }

    fn rtp_participant(
        id: u64,
        peer: SocketAddr,
    ) -> (Box<ParticipantMix>, rtrb::Producer<ReceivedDatagram>, rtrb::Producer<u8>) {
        codec_participant(id, peer, CodecKind::Pcmu)
    }

    /// A leg with `codec` (its default payload type) in an 8 kHz conference.
    fn codec_participant(
        id: u64,
        peer: SocketAddr,
        codec: CodecKind,
    ) -> (Box<ParticipantMix>, rtrb::Producer<ReceivedDatagram>, rtrb::Producer<u8>) {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket.set_nonblocking(true).unwrap();
        let (tx, rx) = rtrb::RingBuffer::new(16);
        let (digits, queue) = rtrb::RingBuffer::new(8);
        let coder = codec.new_coder(&Default::default()).unwrap();
        let pt = codec.default_payload_type();
        let leg =
            RtpLeg::new(rx, socket, peer, LegCodec::new(coder, pt, 8000).unwrap(), None).with_dtmf(Some(101), queue);
        (Box::new(ParticipantMix::new(ParticipantId(id), Arc::default(), Leg::Rtp(leg), FRAME)), tx, digits)
    }

    fn datagram(source: SocketAddr, seq: u16, value: i16) -> ReceivedDatagram {
        let len = (rtp::HEADER_LEN + FRAME) as u16;
        let mut d = ReceivedDatagram { source, arrival: Instant::now(), len, data: [0; MAX_DATAGRAM] };
        let header: &mut [u8; rtp::HEADER_LEN] = (&mut d.data[..rtp::HEADER_LEN]).try_into().unwrap();
        rtp::write_header(header, false, 0, seq, seq as u32 * FRAME as u32, 99);
        d.data[rtp::HEADER_LEN..rtp::HEADER_LEN + FRAME].fill(crate::media::codec::linear_to_ulaw(value));
        d
    }

    /// A PCMU leg whose peer sends its audio level (RFC 6464) as extension 1.
    fn level_reporting_participant(
        id: u64,
        peer: SocketAddr,
    ) -> (Box<ParticipantMix>, rtrb::Producer<ReceivedDatagram>) {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket.set_nonblocking(true).unwrap();
        let (ring, rx) = rtrb::RingBuffer::new(16);
        let coder = CodecKind::Pcmu.new_coder(&Default::default()).unwrap();
        let leg = RtpLeg::new(rx, socket, peer, LegCodec::new(coder, 0, 8000).unwrap(), None).with_audio_level(1);
        (Box::new(ParticipantMix::new(ParticipantId(id), Arc::default(), Leg::Rtp(leg), FRAME)), ring)
    }

    /// [`datagram`] with the one-byte header extension 1 saying `level` (-dBov).
    fn datagram_with_level(source: SocketAddr, seq: u16, value: i16, level: u8) -> ReceivedDatagram {
        let mut d = datagram(source, seq, value);
        let payload = d.data[rtp::HEADER_LEN..d.len as usize].to_vec();
        d.data[0] |= 0x10;
        d.data[rtp::HEADER_LEN..rtp::HEADER_LEN + 8].copy_from_slice(&[0xbe, 0xde, 0, 1, 0x10, level, 0, 0]);
        d.data[rtp::HEADER_LEN + 8..rtp::HEADER_LEN + 8 + payload.len()].copy_from_slice(&payload);
        d.len += 8;
        d
    }

    /// A packet of a 1 kHz tone in `codec`, number `seq` of its stream.
    fn encoded_datagram(source: SocketAddr, codec: CodecKind, seq: u16) -> ReceivedDatagram {
        let mut coder = codec.new_coder(&Default::default()).unwrap();
        let rate = codec.sample_rate() as f32;
        let pcm: Vec<i16> =
            (0..codec.frame_samples()).map(|n| ((n as f32 * 6283.2 / rate).sin() * 8000.0) as i16).collect();
        let mut d = ReceivedDatagram { source, arrival: Instant::now(), len: 0, data: [0; MAX_DATAGRAM] };
        let n = coder.encode(&pcm, &mut d.data[rtp::HEADER_LEN..]);
        let header: &mut [u8; rtp::HEADER_LEN] = (&mut d.data[..rtp::HEADER_LEN]).try_into().unwrap();
        let timestamp = seq as u32 * codec.clock_rate() / 50;
        rtp::write_header(header, false, codec.default_payload_type(), seq, timestamp, 7);
        d.len = (rtp::HEADER_LEN + n) as u16;
        d
    }

    #[test]
    fn the_allocation_counter_counts() {
        assert!(allocations_in(|| drop(std::hint::black_box(vec![1u8; 10]))) >= 2);
    }

    #[test]
    fn the_tick_does_not_allocate() {
        let mut h = harness();
        conference(&h, 1);
        conference(&h, 2);
        h.mixer.apply_commands();

        let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
        peer.set_nonblocking(true).unwrap();
        let (rtp_a, mut ring_a, mut digits_a) = rtp_participant(10, peer.local_addr().unwrap());
        let (rtp_b, mut ring_b, _) = rtp_participant(11, peer.local_addr().unwrap());
        // Wideband legs: their codecs, concealment and resampling run in the tick too.
        let (opus, mut opus_ring, _) = codec_participant(13, peer.local_addr().unwrap(), CodecKind::Opus);
        let (g722, mut g722_ring, _) = codec_participant(14, peer.local_addr().unwrap(), CodecKind::G722);
        let (loc, mut ends) = local(12);
        // Deafened and kept out of the mix (PIN entry) halfway through.
        let (deafened, outside) = (rtp_a.controls.clone(), loc.controls.clone());
        // A 48 kHz room whose talker has noise suppression, switched on by command.
        const WIDE: usize = 960;
        h.commands
            .send(MixerCommand::AddConference(Box::new(ConferenceMix::new(ConferenceId(3), Arc::default(), WIDE, 8))))
            .unwrap();
        let (to_wide, from_app) = rtrb::RingBuffer::new(WIDE * 10);
        let (to_app, _from_wide) = rtrb::RingBuffer::new(WIDE * 10);
        let mut wide_talker = to_wide;
        let noisy = Box::new(ParticipantMix::new(
            ParticipantId(15),
            Arc::default(),
            Leg::Local(LocalLeg { from_app, to_app }),
            WIDE,
        ));
        let suppressor = NoiseSuppressor::new(48_000, WIDE);
        let noise: Vec<i16> = (0..WIDE * 4).map(|n| ((n * 7919) % 4001) as i16 - 2000).collect();
        let (tap_tx, mut tap_rx) = rtrb::RingBuffer::new(FRAME * 4);
        let (participant_tap, mut tap_ends) = tap(2);
        let (mailbox, mut arrival) = rtrb::RingBuffer::new(1);
        let bigger: Vec<Box<ParticipantMix>> = Vec::with_capacity(32);
        // Prepared off the "mixer thread": everything the commands carry.
        let prepared = [
            MixerCommand::AddParticipant(ConferenceId(1), rtp_a),
            MixerCommand::AddParticipant(ConferenceId(1), rtp_b),
            MixerCommand::AddParticipant(ConferenceId(1), loc),
            MixerCommand::AddParticipant(ConferenceId(1), opus),
            MixerCommand::AddParticipant(ConferenceId(1), g722),
            MixerCommand::ParticipantStorage(ConferenceId(1), bigger),
            MixerCommand::SetTap(ConferenceId(1), Some(tap_tx)),
            // The local participant whispers to leg 10, whose own audio the app taps.
            MixerCommand::SetRouting(ConferenceId(1), ParticipantId(12), routing(None, Some(&[10]))),
            MixerCommand::SetParticipantTap(ConferenceId(1), ParticipantId(10), Some(participant_tap)),
            MixerCommand::AddParticipant(ConferenceId(3), noisy),
            MixerCommand::SetNoiseSuppressor(ConferenceId(3), ParticipantId(15), suppressor),
        ];
        for c in prepared {
            h.commands.send(c).unwrap();
        }
        let source = peer.local_addr().unwrap();
        let mut packets: Vec<ReceivedDatagram> = (0..8).map(|i| datagram(source, i, 1000)).collect();
        // Every other wideband packet is lost, so concealment and FEC run too.
        let mut opus_packets: Vec<ReceivedDatagram> =
            (0..4).map(|i| encoded_datagram(source, CodecKind::Opus, i * 2)).collect();
        let mut g722_packets: Vec<ReceivedDatagram> =
            (0..4).map(|i| encoded_datagram(source, CodecKind::G722, i * 2)).collect();
        // As Mixer::run does before its first tick.
        denoise::prepare_thread();
        let count = allocations_in(|| {
            h.mixer.apply_commands();
            // A digit goes out as telephone-events in the ticks below.
            let _ = digits_a.push(5);
            for seq in 0..4u16 {
                // Pushing into the rings is the receive task's work, but it does not allocate either.
                let _ = ring_a.push(packets.remove(0));
                let _ = ring_b.push(datagram(source, seq, 2000));
                let _ = opus_ring.push(opus_packets.remove(0));
                let _ = g722_ring.push(g722_packets.remove(0));
                let _ = ends.to_mixer.write_chunk(FRAME).map(|c| c.commit_all());
                for s in &noise[seq as usize * WIDE..][..WIDE] {
                    let _ = wide_talker.push(*s);
                }
                deafened.deaf.store(seq >= 2, Ordering::Relaxed);
                outside.admitted.store(seq < 2, Ordering::Relaxed);
                h.mixer.tick();
            }
            h.commands.try_send(MixerCommand::RemoveParticipant(ConferenceId(1), ParticipantId(11))).ok();
            // Into a breakout room and out to another thread.
            let to_breakout = MixerCommand::MoveParticipant {
                from: ConferenceId(1),
                to: ConferenceId(2),
                participant: ParticipantId(13),
            };
            h.commands.try_send(to_breakout).ok();
            h.commands.try_send(MixerCommand::DetachParticipant(ConferenceId(1), ParticipantId(14), mailbox)).ok();
            h.mixer.apply_commands();
            h.mixer.tick();
        });
        assert_eq!(count, 0, "the tick allocated");
        assert!(tap_ends.frames.pop().is_ok(), "the tap got frames");
        assert_eq!(arrival.pop().map(|p| p.id).ok(), Some(ParticipantId(14)));
        assert_eq!(h.mixer.conferences[1].participants[0].id, ParticipantId(13));
        // And it did real work: RTP went out and the app got frames.
        let mut buf = [0u8; 2048];
        assert!(peer.recv_from(&mut buf).is_ok());
        assert!(tap_rx.read_chunk(FRAME).is_ok());
        assert!(ends.from_mixer.read_chunk(FRAME).is_ok());
    }

    #[test]
    fn tick_clock_keeps_absolute_deadlines() {
        let start = Instant::now();
        let ms = |n: u64| Duration::from_millis(n);
        let mut clock = TickClock::new(start);
        // On time: sleep to the 20 ms marks.
        assert_eq!(clock.after_tick(start + ms(3)), TickWait::Sleep(ms(17)));
        assert_eq!(clock.after_tick(start + ms(21)), TickWait::Sleep(ms(19)));
        // One tick runs 50 ms long (ends at 95 ms, due at 60): two catch-up ticks at once...
        assert_eq!(clock.after_tick(start + ms(95)), TickWait::CatchUp { late: true });
        assert_eq!(clock.after_tick(start + ms(96)), TickWait::CatchUp { late: false });
        // ...then back on the original 20 ms grid: no drift.
        assert_eq!(clock.after_tick(start + ms(97)), TickWait::Sleep(ms(3)));
        assert_eq!(clock.after_tick(start + ms(100)), TickWait::Sleep(ms(20)));
    }

    #[test]
    fn tick_clock_restarts_after_a_long_stall() {
        let start = Instant::now();
        let ms = |n: u64| Duration::from_millis(n);
        let mut clock = TickClock::new(start);
        // A one-second stall: one late tick, then a fresh schedule from there, not 50 ticks in a burst.
        assert_eq!(clock.after_tick(start + ms(1000)), TickWait::CatchUp { late: true });
        assert_eq!(clock.after_tick(start + ms(1001)), TickWait::Sleep(ms(19)));
    }

    #[test]
    fn rtp_latches_on_the_first_source_and_ignores_others() {
        let mut h = harness();
        conference(&h, 1);
        let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
        let intruder = UdpSocket::bind("127.0.0.1:0").unwrap();
        intruder.set_nonblocking(true).unwrap();
        let (p, mut ring, _) = rtp_participant(1, "127.0.0.1:9".parse().unwrap());
        let controls = p.controls.clone();
        let (listener, mut ears) = local(2);
        h.commands.send(MixerCommand::AddParticipant(ConferenceId(1), p)).unwrap();
        h.commands.send(MixerCommand::AddParticipant(ConferenceId(1), listener)).unwrap();
        h.mixer.apply_commands();
        let mut buf = [0u8; 2048];
        for seq in 0..6 {
            ring.push(datagram(peer.local_addr().unwrap(), seq, 1000)).unwrap();
            ring.push(datagram(intruder.local_addr().unwrap(), seq + 100, 30000)).unwrap();
            h.mixer.tick();
            let heard = take(&mut ears);
            assert!(heard.iter().all(|s| s.abs() < 2000), "the intruder's audio is never mixed");
        }
        assert_eq!(controls.packets_received.load(Ordering::Relaxed), 6);
        assert_eq!(controls.dropped.load(Ordering::Relaxed), 6);
        peer.set_nonblocking(true).unwrap();
        assert!(peer.recv_from(&mut buf).is_ok(), "audio goes to the latched peer");
        assert!(intruder.recv_from(&mut buf).is_err(), "and never to the intruder");

        // The peer falls silent (its NAT mapping moved): after 200 ms a new source takes over.
        for _ in 0..RELATCH_AFTER_TICKS {
            h.mixer.tick();
        }
        let moved = UdpSocket::bind("127.0.0.1:0").unwrap();
        moved.set_nonblocking(true).unwrap();
        ring.push(datagram(moved.local_addr().unwrap(), 50, 1000)).unwrap();
        h.mixer.tick();
        assert_eq!(controls.packets_received.load(Ordering::Relaxed), 7);
        assert!(moved.recv_from(&mut buf).is_ok(), "audio follows the re-latched source");
    }

    #[test]
    fn gain_conversion() {
        assert_eq!(gain_q16_from_db(0.0), 65536);
        assert_eq!(gain_q16_from_db(f32::NAN), 65536);
        assert!((gain_q16_from_db(6.0206) - 131072).abs() < 10);
        assert_eq!(gain_q16_from_db(1000.0), gain_q16_from_db(40.0));
    }

    /// Gives conference `id` a shared encoder for legs of `codec` (default settings).
    fn share_encoder(h: &Harness, id: u64, codec: CodecKind) {
        let shared = SharedEncoder::new(codec.new_coder(&Default::default()).unwrap(), 8000).unwrap();
        h.commands.send(MixerCommand::AddSharedEncoder(ConferenceId(id), Box::new(shared))).unwrap();
    }

    /// A peer's socket, and the payloads (with their SSRC) it has received.
    fn received(peer: &UdpSocket) -> Vec<(u32, Vec<u8>)> {
        let mut buf = [0u8; 2048];
        let mut packets = Vec::new();
        while let Ok(n) = peer.recv(&mut buf) {
            let packet = RtpPacket::parse(&buf[..n]).unwrap();
            packets.push((packet.ssrc, packet.payload.to_vec()));
        }
        packets
    }

    /// Feeds the talker a frame of `audio`, ticks, and returns how many encodes the tick ran.
    fn talk_and_tick(h: &mut Harness, talker: &mut LocalEnds, audio: &[i16], controls: &ConferenceControls) -> u64 {
        let _ = talker.to_mixer.write_chunk_uninit(FRAME).map(|c| c.fill_from_iter(audio.iter().copied()));
        let before = controls.encodes.load(Ordering::Relaxed);
        h.mixer.tick();
        let _ = talker.from_mixer.read_chunk(FRAME).map(|c| c.commit_all());
        controls.encodes.load(Ordering::Relaxed) - before
    }

    fn listening_peer() -> UdpSocket {
        let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
        peer.set_nonblocking(true).unwrap();
        peer
    }

    #[test]
    fn listeners_of_a_codec_get_one_encoding_and_the_tick_does_not_allocate() {
        let mut h = harness();
        conference_with(&h, 1, TalkerPolicy::default());
        h.mixer.apply_commands();
        share_encoder(&h, 1, CodecKind::Pcmu);
        share_encoder(&h, 1, CodecKind::Opus);
        let (talker, mut talker_ends) = local(1);
        h.commands.send(MixerCommand::AddParticipant(ConferenceId(1), talker)).unwrap();
        let mut peers = Vec::new();
        for (i, codec) in [CodecKind::Pcmu, CodecKind::Pcmu, CodecKind::Pcmu, CodecKind::Opus, CodecKind::Opus]
            .into_iter()
            .enumerate()
        {
            let peer = listening_peer();
            let (p, _, _) = codec_participant(10 + i as u64, peer.local_addr().unwrap(), codec);
            h.commands.send(MixerCommand::AddParticipant(ConferenceId(1), p)).unwrap();
            peers.push(peer);
        }
        let conference_controls = h.mixer.conferences[0].controls.clone();
        let tone: Vec<i16> = (0..FRAME * 20).map(|n| ((n as f32 * 0.3).sin() * 6000.0) as i16).collect();
        let mut encodes_per_tick = Vec::with_capacity(20);
        let count = allocations_in(|| {
            h.mixer.apply_commands();
            for tick in 0..20 {
                let encodes = talk_and_tick(&mut h, &mut talker_ends, &tone[tick * FRAME..], &conference_controls);
                if tick < encodes_per_tick.capacity() {
                    encodes_per_tick.push(encodes);
                }
            }
        });
        assert_eq!(count, 0, "the tick allocated");
        // A new Opus leg starts on its own encoder (2 legs), while the
        // shared ones warm up on the same mix, and new G.711 legs take the
        // shared payload at once; then the Opus listeners move to theirs:
        // one encode per codec per tick.
        assert_eq!(encodes_per_tick.first(), Some(&4));
        assert_eq!(encodes_per_tick.last(), Some(&2));
        let streams: Vec<Vec<(u32, Vec<u8>)>> = peers.iter().map(received).collect();
        for same_codec in [&streams[..3], &streams[3..]] {
            let (first, others) = same_codec.split_first().unwrap();
            assert_eq!(first.len(), 20);
            for other in others {
                assert_eq!(other.len(), 20);
                assert_ne!(first[0].0, other[0].0, "each leg has its own SSRC");
                // The last ten ticks' payloads are byte for byte the same.
                let payloads = |s: &[(u32, Vec<u8>)]| s[10..].iter().map(|(_, p)| p.clone()).collect::<Vec<_>>();
                assert_eq!(payloads(first), payloads(other));
            }
        }
        assert_ne!(streams[0][19].1, vec![crate::media::codec::linear_to_ulaw(0); FRAME], "they hear the talker");
    }

    /// A prompt of `samples`, whose end is sent to `ends` when it is freed.
    fn prompt(id: u64, samples: &[i16], ends: &crossbeam_channel::Sender<(u64, PlaybackEnd)>) -> Box<PromptMix> {
        let ends = ends.clone();
        let done = Box::new(move |end| ends.send((id, end)).unwrap());
        Box::new(PromptMix::new(PlaybackId(id), samples.into(), done))
    }

    /// Frees what the mixer let go of, as the reaper does.
    fn reap(h: &Harness) {
        while let Ok(garbage) = h.garbage.try_recv() {
            drop(garbage);
        }
    }

    #[test]
    fn prompts_play_in_turn_to_everyone_or_to_one_participant() {
        let mut h = harness();
        conference(&h, 1);
        let mut ends = add_locals(&h, 1, 3);
        let (done_tx, done) = crossbeam_channel::unbounded();
        // Two prompts for everyone, queued: 1.5 frames of 1000, then half a
        // frame of 3000; and one frame of 500 to participant 2 alone.
        let half = FRAME / 2;
        h.commands
            .send(MixerCommand::Play(ConferenceId(1), None, prompt(7, &[1000; FRAME + FRAME / 2], &done_tx)))
            .unwrap();
        h.commands.send(MixerCommand::Play(ConferenceId(1), None, prompt(8, &[3000; FRAME / 2], &done_tx))).unwrap();
        h.commands
            .send(MixerCommand::Play(ConferenceId(1), Some(ParticipantId(2)), prompt(9, &[500; FRAME], &done_tx)))
            .unwrap();
        // To a participant who is not there: stopped at once.
        h.commands
            .send(MixerCommand::Play(ConferenceId(1), Some(ParticipantId(5)), prompt(10, &[1; 10], &done_tx)))
            .unwrap();
        h.mixer.apply_commands();
        let mut heard = |h: &mut Harness, talker: i16| {
            feed(&mut ends[0], talker);
            h.mixer.tick();
            ends.iter_mut().map(take).collect::<Vec<_>>()
        };
        // Participant 0 talks at 100: the others hear it, it hears only the prompts.
        let first = heard(&mut h, 100);
        assert_eq!(first[0], vec![1000; FRAME]);
        assert_eq!(first[1], vec![1100; FRAME]);
        assert_eq!(first[2], vec![1600; FRAME], "its own prompt on top");
        let second = heard(&mut h, 100);
        // The second prompt follows the first within the frame, without a gap.
        assert_eq!(second[1][..half], vec![1100; half]);
        assert_eq!(second[1][half..], vec![3100; half]);
        assert_eq!(second[2], second[1], "its prompt has ended");
        assert_eq!(heard(&mut h, 100)[1], vec![100; FRAME], "all prompts have ended");
        reap(&h);
        let mut finished: Vec<_> = done.try_iter().collect();
        finished.sort_by_key(|(id, _)| *id);
        assert_eq!(
            finished,
            vec![
                (7, PlaybackEnd::Completed),
                (8, PlaybackEnd::Completed),
                (9, PlaybackEnd::Completed),
                (10, PlaybackEnd::Stopped)
            ]
        );

        // Stopping one prompt of a queue keeps the others; stopping all ends the rest.
        for (id, target) in [(11, None), (12, None), (13, Some(ParticipantId(1)))] {
            h.commands
                .send(MixerCommand::Play(ConferenceId(1), target, prompt(id, &[2000; FRAME * 10], &done_tx)))
                .unwrap();
        }
        h.mixer.apply_commands();
        assert_eq!(heard(&mut h, 0)[0], vec![2000; FRAME]);
        h.commands.send(MixerCommand::StopPlayback(ConferenceId(1), Some(PlaybackId(11)))).unwrap();
        h.mixer.apply_commands();
        let after_stop = heard(&mut h, 0);
        assert_eq!(after_stop[0], vec![2000; FRAME], "the next in the queue plays");
        assert_eq!(after_stop[1], vec![4000; FRAME]);
        h.commands.send(MixerCommand::StopPlayback(ConferenceId(1), None)).unwrap();
        h.mixer.apply_commands();
        assert_eq!(heard(&mut h, 0), vec![vec![0; FRAME]; 3]);
        reap(&h);
        let mut stopped: Vec<_> = done.try_iter().collect();
        stopped.sort_by_key(|(id, _)| *id);
        assert_eq!(stopped, vec![(11, PlaybackEnd::Stopped), (12, PlaybackEnd::Stopped), (13, PlaybackEnd::Stopped)]);
    }

    #[test]
    fn a_prompt_to_one_listener_takes_it_off_the_shared_encoder_and_the_tick_does_not_allocate() {
        let mut h = harness();
        conference_with(&h, 1, TalkerPolicy::default());
        h.mixer.apply_commands();
        share_encoder(&h, 1, CodecKind::Pcmu);
        let (talker, mut talker_ends) = local(1);
        h.commands.send(MixerCommand::AddParticipant(ConferenceId(1), talker)).unwrap();
        let mut peers = Vec::new();
        for i in 0..3 {
            let peer = listening_peer();
            let (p, _, _) = codec_participant(10 + i, peer.local_addr().unwrap(), CodecKind::Pcmu);
            h.commands.send(MixerCommand::AddParticipant(ConferenceId(1), p)).unwrap();
            peers.push(peer);
        }
        let conference_controls = h.mixer.conferences[0].controls.clone();
        let tone: Vec<i16> = (0..FRAME * 40).map(|n| ((n as f32 * 0.3).sin() * 6000.0) as i16).collect();
        let (done_tx, done) = crossbeam_channel::unbounded();
        // Built off the mixer thread: ten frames for listener 10 alone, and
        // one frame for everyone, both from tick 10.
        let mut prompts = Some([
            MixerCommand::Play(ConferenceId(1), Some(ParticipantId(10)), prompt(1, &[4000; FRAME * 10], &done_tx)),
            MixerCommand::Play(ConferenceId(1), None, prompt(2, &[4000; FRAME], &done_tx)),
        ]);
        let mut encodes_per_tick = Vec::with_capacity(40);
        let count = allocations_in(|| {
            h.mixer.apply_commands();
            for tick in 0..40 {
                if tick == 10 {
                    for command in prompts.take().into_iter().flatten() {
                        let _ = h.commands.try_send(command);
                    }
                    h.mixer.apply_commands();
                }
                encodes_per_tick.push(talk_and_tick(
                    &mut h,
                    &mut talker_ends,
                    &tone[tick * FRAME..],
                    &conference_controls,
                ));
            }
        });
        assert_eq!(count, 0, "the tick allocated");
        // Listeners share one encoding; the one hearing a prompt encodes for
        // itself while it plays and five ticks after; then it shares again.
        assert_eq!(encodes_per_tick[9], 1);
        assert!(encodes_per_tick[10..20].iter().all(|n| *n == 2), "{encodes_per_tick:?}");
        assert_eq!(encodes_per_tick[20..25], [2; 5]);
        assert_eq!(encodes_per_tick[26..], [1; 14]);
        let streams: Vec<Vec<Vec<u8>>> =
            peers.iter().map(|p| received(p).into_iter().map(|(_, payload)| payload).collect()).collect();
        assert!(streams.iter().all(|s| s.len() == 40));
        // The others heard the same, the talker and the prompt to everyone;
        // listener 10 heard something else while its prompt played.
        assert_eq!(streams[1], streams[2]);
        assert_eq!(streams[0][..10], streams[1][..10]);
        assert!((10..20).all(|t| streams[0][t] != streams[1][t]));
        assert_eq!(streams[0][26..], streams[1][26..]);
        reap(&h);
        let mut finished: Vec<_> = done.try_iter().collect();
        finished.sort_by_key(|(id, _)| *id);
        assert_eq!(finished, vec![(1, PlaybackEnd::Completed), (2, PlaybackEnd::Completed)]);
    }

    #[test]
    fn recording_drops_and_counts_when_its_writer_falls_behind_and_the_tick_does_not_allocate() {
        let mut h = harness();
        conference(&h, 1);
        let mut ends = add_locals(&h, 1, 2);
        // Rings with room for three frames, which nobody drains: a writer
        // stuck on the disk.
        let (mix_ring, mut mix_written) = rtrb::RingBuffer::new(FRAME * 3);
        let (own_ring, mut own_written) = rtrb::RingBuffer::new(FRAME * 3);
        let (mix_dropped, own_dropped) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let paused = Arc::new(AtomicBool::new(false));
        let recording = RecordingMix::new(paused.clone(), RecordSink::new(mix_ring, mix_dropped.clone()));
        let commands = [
            MixerCommand::SetRecording(ConferenceId(1), Some(Box::new(recording))),
            MixerCommand::SetRecordSink(
                ConferenceId(1),
                ParticipantId(0),
                RecordSink::new(own_ring, own_dropped.clone()),
            ),
        ];
        let count = allocations_in(|| {
            for command in commands {
                let _ = h.commands.try_send(command);
            }
            h.mixer.apply_commands();
            for tick in 0..10 {
                feed(&mut ends[0], 100 + tick);
                feed(&mut ends[1], 1000);
                h.mixer.tick();
                for e in ends.iter_mut() {
                    let _ = e.from_mixer.read_chunk(FRAME).map(|c| c.commit_all());
                }
            }
            // Paused: nothing is pushed, so nothing more is dropped.
            paused.store(true, Ordering::Relaxed);
            h.mixer.tick();
            let _ = h.commands.try_send(MixerCommand::SetRecording(ConferenceId(1), None));
            h.mixer.apply_commands();
        });
        assert_eq!(count, 0, "the tick allocated");
        // Every tick ran; the first three frames are kept, the other seven dropped and counted.
        assert_eq!(h.mixer.stats.ticks.load(Ordering::Relaxed), 11);
        assert_eq!((mix_dropped.load(Ordering::Relaxed), own_dropped.load(Ordering::Relaxed)), (7, 7));
        let kept = |ring: &mut rtrb::Consumer<i16>| ring.read_chunk(FRAME * 3).unwrap().into_iter().collect::<Vec<_>>();
        let (mix, own) = (kept(&mut mix_written), kept(&mut own_written));
        // The mix holds everyone; participant 0's file only what it said.
        assert_eq!(mix[..FRAME], [1100; FRAME]);
        assert_eq!(own[..FRAME], [100; FRAME]);
        assert_eq!(own[FRAME * 2..], [102; FRAME]);
        // Stopping handed the rings back, so the writer sees them abandoned.
        reap(&h);
        assert!(mix_written.is_abandoned() && own_written.is_abandoned());
    }

    /// Decoded audio of a 440 Hz tone, fitted to one sinusoid of fixed
    /// amplitude and phase: the worst 5 ms window's signal-to-error ratio, in dB.
    fn worst_tone_snr(pcm: &[i16], rate: f64) -> f64 {
        let w = 2.0 * std::f64::consts::PI * 440.0 / rate;
        let (mut ss, mut cc, mut sc, mut xs, mut xc) = (0.0, 0.0, 0.0, 0.0, 0.0);
        for (n, x) in pcm.iter().enumerate() {
            let (s, c, x) = ((w * n as f64).sin(), (w * n as f64).cos(), *x as f64);
            (ss, cc, sc, xs, xc) = (ss + s * s, cc + c * c, sc + s * c, xs + x * s, xc + x * c);
        }
        let det = ss * cc - sc * sc;
        let (a, b) = ((xs * cc - xc * sc) / det, (xc * ss - xs * sc) / det);
        let window = rate as usize / 200;
        pcm.chunks_exact(window)
            .enumerate()
            .map(|(i, chunk)| {
                let (mut signal, mut error) = (0.0, 0.0);
                for (k, x) in chunk.iter().enumerate() {
                    let n = (i * window + k) as f64;
                    let fit = a * (w * n).sin() + b * (w * n).cos();
                    signal += fit * fit;
                    error += (*x as f64 - fit).powi(2);
                }
                10.0 * (signal / error.max(1.0)).log10()
            })
            .fold(f64::INFINITY, f64::min)
    }

    #[test]
    fn moving_between_own_and_shared_encoders_leaves_no_seam() {
        for codec in [CodecKind::G722, CodecKind::Opus, CodecKind::Pcmu] {
            let mut h = harness();
            conference_with(&h, 1, TalkerPolicy::default());
            h.mixer.apply_commands();
            share_encoder(&h, 1, codec);
            // A steady 440 Hz tone from the app, heard by a leg that talks
            // for a while (own encoder: the mix less itself, still the tone)
            // and listens before and after (the shared encoder).
            let (tone_source, mut tone_ends) = local(1);
            h.commands.send(MixerCommand::AddParticipant(ConferenceId(1), tone_source)).unwrap();
            let phone = listening_peer();
            let (leg, mut leg_ring, _) = codec_participant(2, phone.local_addr().unwrap(), codec);
            h.commands.send(MixerCommand::AddParticipant(ConferenceId(1), leg)).unwrap();
            let other = listening_peer();
            let (listener, _, _) = codec_participant(3, other.local_addr().unwrap(), codec);
            h.commands.send(MixerCommand::AddParticipant(ConferenceId(1), listener)).unwrap();
            h.mixer.apply_commands();
            let conference_controls = h.mixer.conferences[0].controls.clone();
            let source = phone.local_addr().unwrap();
            let mut own_encoder_ticks = 0;
            for tick in 0..120u16 {
                let tone: Vec<i16> = (0..FRAME)
                    .map(|n| {
                        let t = (tick as usize * FRAME + n) as f64 / 8000.0;
                        ((2.0 * std::f64::consts::PI * 440.0 * t).sin() * 8000.0) as i16
                    })
                    .collect();
                tone_ends.to_mixer.write_chunk_uninit(FRAME).unwrap().fill_from_iter(tone);
                if (30..60).contains(&tick) {
                    leg_ring.push(encoded_datagram(source, codec, tick)).ok().unwrap();
                }
                let before = conference_controls.encodes.load(Ordering::Relaxed);
                h.mixer.tick();
                tone_ends.from_mixer.read_chunk(FRAME).unwrap().commit_all();
                own_encoder_ticks += (conference_controls.encodes.load(Ordering::Relaxed) - before == 2) as u32;
            }
            // It moved: its own encoder ran for its first ticks and while it
            // talked (and lingered), the shared one otherwise.
            assert!((30..50).contains(&own_encoder_ticks), "{codec:?}: {own_encoder_ticks} ticks on its own encoder");
            let mut decoder = codec.new_coder(&Default::default()).unwrap();
            let mut pcm = Vec::new();
            let mut frame = vec![0i16; codec.frame_samples()];
            for (_, payload) in received(&phone) {
                let n = decoder.decode(&payload, &mut frame);
                pcm.extend_from_slice(&frame[..n]);
            }
            let rate = codec.sample_rate() as f64;
            assert_eq!(pcm.len(), 120 * codec.frame_samples(), "{codec:?}: a gap");
            // From 100 ms on (the codecs settle), every 5 ms fits the tone.
            let snr = worst_tone_snr(&pcm[codec.frame_samples() * 5..], rate);
            assert!(snr > 15.0, "{codec:?}: a window only {snr:.1} dB above its error");
        }
    }

    #[test]
    fn silent_listeners_are_not_decoded_and_their_first_words_are_heard() {
        let mut h = harness();
        conference_with(&h, 1, TalkerPolicy::default());
        h.mixer.apply_commands();
        let (app, mut app_ends) = local(1);
        h.commands.send(MixerCommand::AddParticipant(ConferenceId(1), app)).unwrap();
        let phone = listening_peer();
        let source = phone.local_addr().unwrap();
        let (leg, mut ring) = level_reporting_participant(2, source);
        let controls = leg.controls.clone();
        h.commands.send(MixerCommand::AddParticipant(ConferenceId(1), leg)).unwrap();
        h.mixer.apply_commands();
        // The phone sends quiet noise it reports as -90 dBov, then ten
        // packets of speech it reports as -20 dBov, then silence again.
        let packet = |seq: u16, value: i16, level: u8| datagram_with_level(source, seq, value, level);
        let mut loud_frames_heard = 0;
        for seq in 0..80u16 {
            let (value, level) = if (40..50).contains(&seq) { (8000, 20) } else { (3, 90) };
            ring.push(packet(seq, value, level)).ok().unwrap();
            feed(&mut app_ends, 0);
            h.mixer.tick();
            if seq == 39 {
                assert!(controls.frames_not_decoded.load(Ordering::Relaxed) >= 30, "the silent phone was decoded");
            }
            loud_frames_heard += take(&mut app_ends).iter().all(|s| *s > 7000) as u32;
        }
        assert_eq!(loud_frames_heard, 10, "every frame of speech is heard, from the first");
    }

    /// The app's ends of a tap.
    struct TapEnds {
        frames: rtrb::Consumer<TapFrame>,
        samples: rtrb::Consumer<i16>,
        dropped: Arc<AtomicU64>,
    }

    /// A tap's sink for the mixer and the app's ends: `frames` frames fit.
    fn tap(frames: usize) -> (Box<TapSink>, TapEnds) {
        let (samples_in, samples) = rtrb::RingBuffer::new(FRAME * frames);
        let (frames_in, frames) = rtrb::RingBuffer::new(frames);
        let dropped = Arc::new(AtomicU64::new(0));
        (Box::new(TapSink::new(samples_in, frames_in, dropped.clone())), TapEnds { frames, samples, dropped })
    }

    /// Routing with these sets of participant ids, as the control side boxes it.
    fn routing(hears_only: Option<&[u64]>, heard_only_by: Option<&[u64]>) -> Option<Box<Routing>> {
        let set = |ids: &[u64]| {
            let ids: Vec<ParticipantId> = ids.iter().map(|id| ParticipantId(*id)).collect();
            ParticipantSet::new(&ids).unwrap()
        };
        let routing = Routing { hears_only: hears_only.map(set), heard_only_by: heard_only_by.map(set) };
        (!routing.is_open()).then(|| Box::new(routing))
    }

    #[test]
    fn a_tap_hands_over_a_participants_frames_and_drops_what_is_not_read() {
        let mut h = harness();
        conference(&h, 1);
        let mut ends = add_locals(&h, 1, 2);
        h.mixer.apply_commands();
        // A tick before the tap opens: the tap's clock starts at the conference's.
        let mut tick = |h: &mut Harness, value: i16| {
            feed(&mut ends[0], value);
            feed(&mut ends[1], 1);
            h.mixer.tick();
            take(&mut ends[0]);
            take(&mut ends[1])[0]
        };
        tick(&mut h, 0);
        let (sink, TapEnds { mut frames, mut samples, dropped }) = tap(2);
        h.commands.send(MixerCommand::SetParticipantTap(ConferenceId(1), ParticipantId(0), Some(sink))).unwrap();
        h.mixer.apply_commands();
        // Three frames into a tap that holds two: the third is dropped, the mix goes on.
        for value in [5000, 6000, 7000] {
            assert_eq!(tick(&mut h, value), value);
        }
        assert_eq!(dropped.load(Ordering::Relaxed), 1);
        for (timestamp, value) in [(FRAME as u64, 5000), (2 * FRAME as u64, 6000)] {
            assert_eq!(frames.pop().unwrap(), TapFrame { timestamp, talking: true });
            assert_eq!(samples.read_chunk(FRAME).unwrap().into_iter().collect::<Vec<_>>(), vec![value; FRAME]);
        }
        // Read in time again: the clock shows the dropped frame as a gap.
        tick(&mut h, 4000);
        assert_eq!(frames.pop().unwrap().timestamp, 4 * FRAME as u64);
        h.commands.send(MixerCommand::SetParticipantTap(ConferenceId(1), ParticipantId(0), None)).unwrap();
        h.mixer.apply_commands();
        reap(&h);
        assert!(frames.is_abandoned(), "closing the tap hands its sink to the reaper");
    }

    #[test]
    fn the_listen_talk_matrix_lets_a_supervisor_listen_whisper_and_barge() {
        let mut h = harness();
        conference(&h, 1);
        // A customer (0), the agent (1), their supervisor (2), and a listener (3).
        let mut ends = add_locals(&h, 1, 4);
        h.mixer.apply_commands();
        let mut heard = |h: &mut Harness, id: u64, routing: Option<Box<Routing>>| {
            h.commands.send(MixerCommand::SetRouting(ConferenceId(1), ParticipantId(id), routing)).unwrap();
            h.mixer.apply_commands();
            for (e, level) in ends.iter_mut().zip([1000, 100, 10, 0]) {
                feed(e, level);
            }
            h.mixer.tick();
            ends.iter_mut().map(|e| take(e)[0]).collect::<Vec<_>>()
        };
        assert_eq!(heard(&mut h, 2, None), vec![110, 1010, 1100, 1110]);
        // Listening in: the supervisor hears everyone, nobody hears it.
        assert_eq!(heard(&mut h, 2, routing(None, Some(&[]))), vec![100, 1000, 1100, 1100]);
        // Whispering: only the agent hears it.
        assert_eq!(heard(&mut h, 2, routing(None, Some(&[1]))), vec![100, 1010, 1100, 1100]);
        // Barging in: everyone does.
        assert_eq!(heard(&mut h, 2, None), vec![110, 1010, 1100, 1110]);
        // The listener hears only the agent.
        assert_eq!(heard(&mut h, 3, routing(Some(&[1]), None)), vec![110, 1010, 1100, 100]);
    }

    #[test]
    fn a_listening_supervisor_takes_no_mixing_slot() {
        let mut h = harness();
        conference_with(&h, 1, TalkerPolicy { max_talkers: 2, ..Default::default() });
        let mut ends = add_locals(&h, 1, 3);
        h.commands.send(MixerCommand::SetRouting(ConferenceId(1), ParticipantId(2), routing(None, Some(&[])))).unwrap();
        h.mixer.apply_commands();
        let mut heard = Vec::new();
        for _ in 0..5 {
            // The supervisor is the loudest, but nobody hears it: both others are mixed.
            for (e, level) in ends.iter_mut().zip([1000, 2000, 8000]) {
                feed(e, level);
            }
            h.mixer.tick();
            heard = ends.iter_mut().map(|e| take(e)[0]).collect();
        }
        assert_eq!(heard, vec![2000, 1000, 3000]);
    }

    #[test]
    fn a_whisper_takes_only_its_listener_off_the_shared_encoder_and_the_tick_does_not_allocate() {
        let mut h = harness();
        conference_with(&h, 1, TalkerPolicy::default());
        h.mixer.apply_commands();
        share_encoder(&h, 1, CodecKind::Pcmu);
        // A talking customer (1), a supervisor (2) whispering to agent leg 10;
        // legs 11 and 12 listen.
        let (customer, mut customer_ends) = local(1);
        let (supervisor, mut supervisor_ends) = local(2);
        h.commands.send(MixerCommand::AddParticipant(ConferenceId(1), customer)).unwrap();
        h.commands.send(MixerCommand::AddParticipant(ConferenceId(1), supervisor)).unwrap();
        let peers: Vec<UdpSocket> = (0..3).map(|_| listening_peer()).collect();
        for (i, peer) in peers.iter().enumerate() {
            let (p, _, _) = codec_participant(10 + i as u64, peer.local_addr().unwrap(), CodecKind::Pcmu);
            h.commands.send(MixerCommand::AddParticipant(ConferenceId(1), p)).unwrap();
        }
        let whisper = MixerCommand::SetRouting(ConferenceId(1), ParticipantId(2), routing(None, Some(&[10])));
        h.commands.send(whisper).unwrap();
        let controls = h.mixer.conferences[0].controls.clone();
        let tone: Vec<i16> = (0..FRAME * 20).map(|n| ((n as f32 * 0.3).sin() * 6000.0) as i16).collect();
        let whispered: Vec<i16> = (0..FRAME * 20).map(|n| ((n as f32 * 0.7).sin() * 6000.0) as i16).collect();
        let mut encodes_per_tick = Vec::with_capacity(20);
        let count = allocations_in(|| {
            h.mixer.apply_commands();
            for tick in 0..20 {
                let frame = &whispered[tick * FRAME..][..FRAME];
                let _ =
                    supervisor_ends.to_mixer.write_chunk_uninit(FRAME).map(|c| c.fill_from_iter(frame.iter().copied()));
                let encodes = talk_and_tick(&mut h, &mut customer_ends, &tone[tick * FRAME..], &controls);
                let _ = supervisor_ends.from_mixer.read_chunk(FRAME).map(|c| c.commit_all());
                if tick < encodes_per_tick.capacity() {
                    encodes_per_tick.push(encodes);
                }
            }
        });
        assert_eq!(count, 0, "the tick allocated");
        // The agent's leg encodes its own mix; the other two share one encoding.
        assert_eq!(encodes_per_tick.last(), Some(&2));
        let streams: Vec<Vec<(u32, Vec<u8>)>> = peers.iter().map(received).collect();
        let payloads = |s: &[(u32, Vec<u8>)]| s[10..].iter().map(|(_, p)| p.clone()).collect::<Vec<_>>();
        assert_eq!(payloads(&streams[1]), payloads(&streams[2]));
        assert_ne!(payloads(&streams[0]), payloads(&streams[1]), "the agent hears the whisper too");
    }

    #[test]
    fn a_participant_moves_between_conferences_of_one_thread_without_a_gap() {
        let mut h = harness();
        conference(&h, 1);
        conference(&h, 2);
        // Room 1: a talker (0) and the one who moves (1); room 2: a talker (2).
        let (talker, mut talker_ends) = local(0);
        let (mover, mut mover_ends) = local(1);
        let (other, mut other_ends) = local(2);
        h.commands.send(MixerCommand::AddParticipant(ConferenceId(1), talker)).unwrap();
        h.commands.send(MixerCommand::AddParticipant(ConferenceId(1), mover)).unwrap();
        h.commands.send(MixerCommand::AddParticipant(ConferenceId(2), other)).unwrap();
        h.mixer.apply_commands();
        let mut tick = |h: &mut Harness, command: Option<MixerCommand>| {
            if let Some(command) = command {
                h.commands.send(command).unwrap();
                h.mixer.apply_commands();
            }
            feed(&mut talker_ends, 100);
            feed(&mut mover_ends, 7);
            feed(&mut other_ends, 1000);
            h.mixer.tick();
            // Exactly one frame a tick, before and after the move.
            assert_eq!(mover_ends.from_mixer.slots(), FRAME);
            [take(&mut talker_ends)[0], take(&mut mover_ends)[0], take(&mut other_ends)[0]]
        };
        let move_to = |from, to| MixerCommand::MoveParticipant {
            from: ConferenceId(from),
            to: ConferenceId(to),
            participant: ParticipantId(1),
        };
        assert_eq!(tick(&mut h, None), [7, 100, 0]);
        assert_eq!(tick(&mut h, Some(move_to(1, 2))), [0, 1000, 7]);
        assert_eq!(tick(&mut h, Some(move_to(2, 1))), [7, 100, 0]);
        // To a conference that is not there: it stays.
        assert_eq!(tick(&mut h, Some(move_to(1, 9))), [7, 100, 0]);
    }
}
