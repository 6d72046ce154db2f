//! The application's view: endpoints, conferences, participants, events and
//! audio. The C ABI and the Python module are thin layers over this.

use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::engine::{Creator, Engine, ParticipantEntry, Shared, SipCommand};
use crate::media::codec::{CodecKind, OpusSettings};
use crate::media::mixer::{
    gain_q16_from_db, Leg, LocalLeg, ParticipantControls, ParticipantMix, ParticipantSet, TalkerPolicy,
    TICK_HISTOGRAM_STEP,
};
use crate::policy::{Admission, ConferencePolicy};
use crate::sip::{Credentials, TimerConfig};
use crate::{Error, Result};

pub use crate::media::mixer::{ParticipantId, PlaybackEnd, PlaybackId, TapFrame, MAX_PARTICIPANT_SET};
pub use crate::media::playback::Playback;
pub use crate::sip::register_client::{AccountId, RegistrationState};

/// The rate conferences mix at unless the app picks another (8000, 16000
/// or 48000); application audio of a conference is at its rate.
pub const DEFAULT_SAMPLE_RATE: u32 = 48000;

/// Samples in one 20 ms frame at `sample_rate`.
pub const fn frame_samples(sample_rate: u32) -> usize {
    sample_rate as usize / 50
}

/// How an endpoint listens and behaves.
#[derive(Debug, Clone)]
pub struct EndpointConfig {
    /// SIP over UDP listens here; port 0 picks a free one.
    pub listen: SocketAddr,
    /// Whether SIP over TCP listens too, on the same address and port.
    pub tcp: bool,
    /// SIP over TLS listens here (5061 is the usual port); it needs
    /// `tls_certificate` and `tls_private_key`.
    pub tls_listen: Option<SocketAddr>,
    /// PEM files: the certificate chain TLS presents, and its private key.
    pub tls_certificate: Option<PathBuf>,
    pub tls_private_key: Option<PathBuf>,
    /// A PEM file of certificates to trust when calling `sips:` URIs, on top
    /// of the public roots (Mozilla's list, built in).
    pub tls_ca_file: Option<PathBuf>,
    /// DNS servers for dialled host names (NAPTR, SRV and addresses, RFC
    /// 3263); empty: the system's (resolv.conf).
    pub dns_servers: Vec<SocketAddr>,
    /// The address put in SDP and Contact; defaults to the listen address.
    pub public_address: Option<IpAddr>,
    /// A STUN server ("host:port") asked at start for our public address,
    /// when `public_address` is not set: behind a NAT, what the server sees
    /// goes into SDP and Contact. Starting fails when it does not answer.
    pub stun_server: Option<String>,
    /// RTP ports (even ones are used).
    pub rtp_ports: RangeInclusive<u16>,
    /// Whether an INVITE to an unknown room creates it (else 404).
    pub create_rooms_on_demand: bool,
    /// Codecs in order of preference; an answer carries the first one the offer also has.
    pub codecs: Vec<CodecKind>,
    /// How Opus legs encode.
    pub opus: OpusSettings,
    /// The rate conferences mix at: rooms callers create, and
    /// [`Endpoint::create_conference`]'s.
    pub sample_rate: u32,
    pub timers: TimerConfig,
    /// No RTP from a leg for this long (while it should be sending, not on
    /// hold) raises [`Event::MediaTimeout`]; `None` turns the check off.
    pub media_timeout: Option<Duration>,
    /// Whether a media timeout also hangs the leg up (BYE).
    pub hang_up_on_media_timeout: bool,
    /// Mixer threads; each conference mixes on one of them. 0: one per core.
    pub mixer_threads: usize,
    /// The policy of the rooms callers' INVITEs create (PIN, moderators,
    /// limits; see [`ConferencePolicy`]), so that the first caller of a new
    /// room already types a PIN. Rooms the app creates start with the
    /// default policy; [`Conference::set_policy`] changes either.
    pub room_policy: ConferencePolicy,
    /// Whether callers must authenticate (digest, as a user added with
    /// [`Endpoint::add_user`]) to join a room: the default of every new
    /// room, which [`Conference::set_require_authentication`] changes.
    pub require_authentication: bool,
    /// The realm of the endpoint's digest challenges.
    pub realm: String,
    /// Whether digest challenges offer SHA-256 (RFC 8760) beside MD5. Off
    /// by default, as in Asterisk and FreeSWITCH: some clients (libre 1.x,
    /// so baresip 1.0) fail on a challenge they cannot answer rather than
    /// pick the one they can.
    pub digest_sha256: bool,
    /// How often registered phones get an OPTIONS ping; one that does not
    /// answer loses its registration. `None`: no pings.
    pub keepalive_interval: Option<Duration>,
    /// Whether SIP phones may SUBSCRIBE to a room's conference events (RFC
    /// 4575, `Event: conference`) and be sent its roster when it changes.
    pub conference_events: bool,
    /// The most such subscriptions to one room; more are refused (403).
    pub max_subscriptions_per_room: usize,
}

impl Default for EndpointConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 5060)),
            tcp: true,
            tls_listen: None,
            tls_certificate: None,
            tls_private_key: None,
            tls_ca_file: None,
            dns_servers: Vec::new(),
            public_address: None,
            stun_server: None,
            rtp_ports: 30000..=30999,
            create_rooms_on_demand: true,
            codecs: vec![CodecKind::Opus, CodecKind::G722, CodecKind::Pcmu, CodecKind::Pcma],
            opus: OpusSettings::default(),
            sample_rate: DEFAULT_SAMPLE_RATE,
            timers: TimerConfig::default(),
            media_timeout: Some(Duration::from_secs(30)),
            hang_up_on_media_timeout: false,
            mixer_threads: 0,
            require_authentication: false,
            realm: "sipbridge".into(),
            digest_sha256: false,
            room_policy: ConferencePolicy::default(),
            keepalive_interval: Some(Duration::from_secs(30)),
            conference_events: true,
            max_subscriptions_per_room: 64,
        }
    }
}

/// User names go into digest headers and AORs: no quotes, colons or controls.
fn check_user_name(name: &str) -> Result<()> {
    if name.is_empty() || name.chars().any(|c| c.is_control() || c == '"' || c == ':') {
        return Err(Error::InvalidArgument(format!("bad user name {name:?}")));
    }
    Ok(())
}

/// An account with an upstream registrar or PBX that the endpoint keeps
/// registered (see [`Endpoint::register_account`]); calls the registrar
/// routes to it join `room`.
#[derive(Clone, PartialEq, Eq)]
pub struct Account {
    /// The address of record, `sip:USER@DOMAIN`.
    pub aor: String,
    /// Where REGISTERs go, and their Request-URI: `sip:HOST[:PORT]`
    /// (`None`: the AOR's domain, port 5060).
    pub registrar: Option<String>,
    /// The digest user name (`None`: the AOR's user).
    pub username: Option<String>,
    /// The password, or else `ha1`.
    pub password: Option<String>,
    /// The HA1 hash (hex) of `username:realm:password`: 32 digits for MD5
    /// challenges, 64 for SHA-256 ones. Only challenges of its algorithm
    /// can be answered.
    pub ha1: Option<String>,
    /// The registration interval to ask for, in seconds (the registrar may
    /// grant another; default 3600).
    pub expires: u32,
    /// The room an INVITE for the account joins: one whose Request-URI user
    /// is the AOR's user (registrars forward to the registered Contact,
    /// which carries it). Such a call comes in without local digest
    /// authentication when it comes from the registrar's address.
    pub room: String,
}

impl Default for Account {
    fn default() -> Self {
        Self {
            aor: String::new(),
            registrar: None,
            username: None,
            password: None,
            ha1: None,
            expires: 3600,
            room: String::new(),
        }
    }
}

impl std::fmt::Debug for Account {
    // Secrets stay out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Account")
            .field("aor", &self.aor)
            .field("registrar", &self.registrar)
            .field("username", &self.username)
            .field("expires", &self.expires)
            .field("room", &self.room)
            .finish_non_exhaustive()
    }
}

/// One mixer thread's counters (see [`Endpoint::mixer_reports`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MixerReport {
    pub ticks: u64,
    /// Ticks that started more than a tick late.
    pub late_ticks: u64,
    /// How many ticks took each multiple of [`TICK_HISTOGRAM_STEP`]; the
    /// last bucket holds everything longer.
    pub tick_histogram: Vec<u64>,
}

impl MixerReport {
    /// What happened between `earlier` and this report.
    pub fn since(&self, earlier: &MixerReport) -> MixerReport {
        MixerReport {
            ticks: self.ticks - earlier.ticks.min(self.ticks),
            late_ticks: self.late_ticks - earlier.late_ticks.min(self.late_ticks),
            tick_histogram: self
                .tick_histogram
                .iter()
                .zip(earlier.tick_histogram.iter().chain(std::iter::repeat(&0)))
                .map(|(now, then)| now - then.min(now))
                .collect(),
        }
    }

    /// The tick duration that fraction `q` (0..=1) of the ticks took at most,
    /// to the histogram's step; 1.0 gives the longest.
    pub fn tick_quantile(&self, q: f64) -> Duration {
        let total: u64 = self.tick_histogram.iter().sum();
        let wanted = ((total as f64 * q.clamp(0.0, 1.0)).ceil() as u64).max(1);
        let mut seen = 0;
        for (bucket, count) in self.tick_histogram.iter().enumerate() {
            seen += count;
            if seen >= wanted {
                return TICK_HISTOGRAM_STEP * (bucket as u32 + 1);
            }
        }
        Duration::ZERO
    }
}

/// How a participant is connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParticipantKind {
    /// Called in.
    Inbound,
    /// Dialled out by the app.
    Outbound,
    /// Fed and read by the app.
    Local,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParticipantState {
    Calling,
    Ringing,
    Connected,
}

/// Why a participant left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaveReason {
    RemoteHangup,
    LocalHangup,
    Cancelled,
    Timeout,
    ConferenceDestroyed,
    EndpointStopped,
    /// The app kicked it ([`Participant::kick`]).
    Kicked,
    /// The conference was ended ([`Conference::end`], or its last
    /// moderator left a conference whose policy ends it then).
    ConferenceEnded,
    /// It entered a wrong PIN too often.
    PinRejected,
    /// The participant's phone took a transfer we asked for (REFER) and
    /// called the target; we hung up our leg.
    Transferred,
    /// Another call took its place (a Replaces header, RFC 3891, as in an
    /// attended transfer); we hung up its leg.
    Replaced,
    /// The room was full: the caller heard the policy's `full_prompt` and
    /// was hung up.
    RoomFull,
}

/// What happened, in order, for the application.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    ConferenceCreated {
        conference: String,
    },
    ConferenceDestroyed {
        conference: String,
    },
    ParticipantJoined {
        conference: String,
        participant: ParticipantId,
        kind: ParticipantKind,
        remote: String,
    },
    /// A participant left; the counters are its totals for the call.
    ParticipantLeft {
        conference: String,
        participant: ParticipantId,
        reason: LeaveReason,
        packets_received: u64,
        packets_sent: u64,
    },
    Ringing {
        conference: String,
        participant: ParticipantId,
    },
    Answered {
        conference: String,
        participant: ParticipantId,
    },
    DialFailed {
        conference: String,
        participant: ParticipantId,
        status: u16,
        reason: String,
    },
    /// No RTP arrived from a participant for the configured media timeout
    /// (reported once per silence; the leg is hung up if the endpoint says so).
    MediaTimeout {
        conference: String,
        participant: ParticipantId,
    },
    /// A participant started or stopped talking (see [`TalkerPolicy`]).
    Talking {
        conference: String,
        participant: ParticipantId,
        talking: bool,
    },
    /// A participant's phone asks us to call `target` (REFER, a blind
    /// transfer): the app answers with [`Participant::accept_transfer`],
    /// which dials `target` into the participant's conference, or
    /// [`Participant::reject_transfer`]. Answer promptly: the phone waits.
    TransferRequested {
        conference: String,
        participant: ParticipantId,
        target: String,
    },
    /// How a transfer asked with [`Participant::transfer`] goes: the status
    /// of the phone's call to the target (or of its refusal of the REFER);
    /// `done` when it is over. A 2xx when done means the participant left
    /// ([`LeaveReason::Transferred`]).
    TransferProgress {
        conference: String,
        participant: ParticipantId,
        status: u16,
        done: bool,
    },
    /// A participant's phone put the call on hold (a re-INVITE offering
    /// sendonly or inactive, or address 0.0.0.0), or took it off hold. A held
    /// participant is neither mixed in nor sent audio.
    Hold {
        conference: String,
        participant: ParticipantId,
        held: bool,
    },
    /// A participant pressed a key (RFC 4733 telephone-event): '0'–'9', '*', '#', 'A'–'D'.
    Dtmf {
        conference: String,
        participant: ParticipantId,
        digit: char,
        duration_ms: u32,
    },
    /// An account's registration changed (see [`Endpoint::register_account`]).
    Registration {
        account: AccountId,
        aor: String,
        state: RegistrationState,
    },
    /// A prompt ended: it played to its end, or was stopped (also when its
    /// conference or its participant went away first).
    PlaybackFinished {
        conference: String,
        /// The participant it played to, or `None` for everyone.
        participant: Option<ParticipantId>,
        playback: PlaybackId,
        end: PlaybackEnd,
    },
    /// A file of a conference's recording was opened: the mix's
    /// (`participant` `None`), or one participant's own audio.
    RecordingStarted {
        conference: String,
        participant: Option<ParticipantId>,
        path: String,
    },
    /// A recording's file is finished (its WAV header written): the
    /// recording was stopped, or its conference or the endpoint was.
    /// `frames_dropped` counts 20 ms frames lost because the disk fell behind.
    RecordingStopped {
        conference: String,
        participant: Option<ParticipantId>,
        path: String,
        frames_dropped: u64,
    },
    /// A moderator got in: by its PIN, made one by the app, or moved in
    /// from another conference.
    ModeratorJoined {
        conference: String,
        participant: ParticipantId,
    },
    /// The conference was locked (no one new may join) or unlocked.
    Locked {
        conference: String,
        locked: bool,
    },
    /// A participant was muted or unmuted (by the app, or by mute all), or
    /// joined muted (mute on join, or the seat of a muted call it replaced),
    /// reported after its [`Event::ParticipantJoined`].
    Muted {
        conference: String,
        participant: ParticipantId,
        muted: bool,
    },
    /// A caller typed the right PIN (`moderator`: the moderator PIN) and is let in.
    PinAccepted {
        conference: String,
        participant: ParticipantId,
        moderator: bool,
    },
    /// A caller typed a wrong PIN or took too long; with no `tries_left`
    /// it is hung up ([`LeaveReason::PinRejected`]).
    PinRejected {
        conference: String,
        participant: ParticipantId,
        tries_left: u32,
    },
    /// The last participant left, or moved out (a room a caller created is
    /// then destroyed). A caller being turned away from a full room counts
    /// as in it until it is hung up.
    ConferenceEmpty {
        conference: String,
    },
    /// The conference was ended: everyone in it is being hung up
    /// ([`LeaveReason::ConferenceEnded`]).
    ConferenceEnded {
        conference: String,
    },
    /// The disk does not keep up with a recording: frames were dropped
    /// (`frames_dropped` so far) rather than hold up the audio. Reported at
    /// most once a second per file.
    RecordingOverrun {
        conference: String,
        participant: Option<ParticipantId>,
        path: String,
        frames_dropped: u64,
    },
    /// The app does not read a participant's tap in time: frames were
    /// dropped (`frames_dropped` so far) rather than hold up the audio.
    /// Reported at most once a second per tap.
    TapOverrun {
        conference: String,
        participant: ParticipantId,
        frames_dropped: u64,
    },
    /// A participant moved to another conference (a breakout room, and
    /// back): one event rather than a leave and a join, since its call and
    /// its id go on. Events about it name `to` from now on.
    ParticipantMoved {
        participant: ParticipantId,
        from: String,
        to: String,
    },
}

/// A snapshot of one participant.
#[derive(Debug, Clone, PartialEq)]
pub struct ParticipantInfo {
    pub id: ParticipantId,
    pub conference: String,
    pub kind: ParticipantKind,
    pub state: ParticipantState,
    pub remote: Option<String>,
    pub muted: bool,
    pub volume_db: f32,
    /// Whether its audio is cleaned of noise before it is mixed.
    pub noise_suppression: bool,
    /// Whether it is talking now (see [`TalkerPolicy`]).
    pub talking: bool,
    /// Whether its phone has put the call on hold (see [`Event::Hold`]).
    pub on_hold: bool,
    /// Whether it is a moderator (see [`ConferencePolicy`]).
    pub moderator: bool,
    /// Whether it is in the mix, typing its PIN, or waiting for a moderator.
    pub admission: Admission,
    /// Whether it is deafened (hears nothing of the conference).
    pub deaf: bool,
    pub packets_received: u64,
    pub packets_sent: u64,
    pub dropped: u64,
    /// The negotiated codec, once media runs.
    pub codec: Option<CodecKind>,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    /// Frames played without received audio (concealed, or stretching the jitter buffer).
    pub concealed_frames: u64,
    /// Lost packets rebuilt from Opus in-band FEC.
    pub fec_recovered: u64,
    /// The jitter buffer's target delay.
    pub jitter_buffer_ms: u32,
    /// Packets the peer sent that never arrived (RTCP receiver statistics), and that as a percentage.
    pub packets_lost: u64,
    pub loss_percent: f32,
    /// Interarrival jitter of the peer's RTP (RFC 3550 §6.4.1).
    pub jitter_ms: f32,
    /// Round-trip time from the peer's RTCP reports, once measured.
    pub round_trip_ms: Option<f32>,
    /// Estimated listening quality (E-model R-factor as MOS, ITU-T G.107)
    /// from the codec, loss and delay, once media runs.
    pub mos: Option<f32>,
}

/// Lets a blocking call give up early, e.g. when Python has a pending Ctrl-C.
pub type Interrupt<'a> = &'a mut dyn FnMut() -> bool;

/// How long a blocking call sleeps between looks at its queue and its interrupt.
const POLL_SLICE: Duration = Duration::from_millis(2);

/// Waits until `ready` returns something, the deadline passes, or `interrupt` says stop.
fn wait_for<T>(timeout: Option<Duration>, interrupt: Interrupt<'_>, mut ready: impl FnMut() -> Option<T>) -> Result<T> {
    let deadline = timeout.map(|t| Instant::now() + t);
    loop {
        if let Some(v) = ready() {
            return Ok(v);
        }
        if interrupt() {
            return Err(Error::Interrupted);
        }
        match deadline {
            Some(d) if Instant::now() >= d => return Err(Error::Timeout),
            _ => std::thread::sleep(POLL_SLICE),
        }
    }
}

fn never() -> bool {
    false
}

/// A running SIP endpoint: the SIP stack, the mixer and the conferences.
/// Dropping it stops it (as [`Endpoint::stop`]).
pub struct Endpoint {
    engine: parking_lot::Mutex<Engine>,
    shared: Arc<Shared>,
}

impl Endpoint {
    /// Binds the SIP socket and starts the threads.
    pub fn start(config: EndpointConfig) -> Result<Self> {
        let engine = Engine::start(config)?;
        let shared = engine.shared.clone();
        Ok(Self { engine: parking_lot::Mutex::new(engine), shared })
    }

    /// The bound SIP address.
    pub fn local_addr(&self) -> SocketAddr {
        self.shared.sip_addr
    }

    /// Where SIP over TLS listens, when it does.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.shared.tls_addr
    }

    /// The address put in SDP and Contact: the configured public address,
    /// the one STUN found, or the listen address.
    pub fn public_address(&self) -> IpAddr {
        self.shared.advertised_ip
    }

    /// A SIP URI that calls into `room` on this endpoint.
    pub fn room_uri(&self, room: &str) -> String {
        let addr = SocketAddr::new(self.shared.advertised_ip, self.shared.sip_addr.port());
        format!("sip:{}@{addr}", crate::sip::message::escape_user(room))
    }

    /// Creates a conference mixing at the endpoint's sample rate; an existing name is an error.
    pub fn create_conference(&self, name: &str) -> Result<Conference> {
        self.create_conference_with_rate(name, self.shared.config.sample_rate)
    }

    /// Creates a conference mixing at `sample_rate` (8000, 16000 or 48000 Hz).
    pub fn create_conference_with_rate(&self, name: &str, sample_rate: u32) -> Result<Conference> {
        let id = self.shared.create_conference(name, Creator::App, sample_rate)?;
        Ok(Conference { shared: self.shared.clone(), name: name.into(), id, sample_rate })
    }

    /// Adds (or changes the password of) a user callers can authenticate
    /// as, in rooms that require it. Only the digest hashes are kept.
    pub fn add_user(&self, name: &str, password: &str) -> Result<()> {
        self.shared.check_running()?;
        check_user_name(name)?;
        self.shared.authenticator.lock().add_user(name, password);
        Ok(())
    }

    /// Adds a user by its digest HA1 hashes instead of a password: hex
    /// MD5 and SHA-256 of `name:realm:password`.
    pub fn add_user_hashes(&self, name: &str, ha1_md5: &str, ha1_sha256: &str) -> Result<()> {
        self.shared.check_running()?;
        check_user_name(name)?;
        if !self.shared.authenticator.lock().add_user_hashes(name, ha1_md5, ha1_sha256) {
            return Err(Error::InvalidArgument("HA1 hashes must be 32 (MD5) and 64 (SHA-256) hex digits".into()));
        }
        Ok(())
    }

    /// Where registered user `name` can be reached: the contacts of its live
    /// registrations, the most recent first (dialling `sip:NAME@REALM` calls
    /// the first).
    pub fn registrations(&self, name: &str) -> Vec<String> {
        self.shared.registrar.lock().lookup(Instant::now(), name)
    }

    /// Registers `account` with its registrar, and keeps it registered
    /// (refreshed before it expires, retried with backoff after failures)
    /// until [`Endpoint::unregister_account`] or [`Endpoint::stop`].
    /// Looks the registrar's host name up (system resolver) before it
    /// returns; the outcome arrives as [`Event::Registration`].
    pub fn register_account(&self, account: Account) -> Result<AccountId> {
        self.shared.check_running()?;
        let (config, route) = crate::engine::account_settings(&self.shared, account)?;
        let (reply, result) = std::sync::mpsc::channel();
        self.shared
            .sip_commands
            .send(SipCommand::RegisterAccount { config, route, reply })
            .map_err(|_| Error::Stopped)?;
        result.recv().map_err(|_| Error::Stopped)?
    }

    /// Un-registers an account (Expires: 0) and forgets it;
    /// [`RegistrationState::Unregistered`] follows.
    pub fn unregister_account(&self, account: AccountId) -> Result<()> {
        self.shared.check_running()?;
        let (reply, result) = std::sync::mpsc::channel();
        self.shared.sip_commands.send(SipCommand::UnregisterAccount { account, reply }).map_err(|_| Error::Stopped)?;
        result.recv().map_err(|_| Error::Stopped)?
    }

    /// Removes a user; calls it already authenticated stay.
    pub fn remove_user(&self, name: &str) -> Result<()> {
        self.shared.check_running()?;
        match self.shared.authenticator.lock().remove_user(name) {
            true => Ok(()),
            false => Err(Error::NotFound(format!("user {name:?}"))),
        }
    }

    /// The conference called `name`, if it exists.
    pub fn conference(&self, name: &str) -> Result<Conference> {
        let (id, sample_rate) = self.shared.conference_id(name)?;
        Ok(Conference { shared: self.shared.clone(), name: name.into(), id, sample_rate })
    }

    /// Names of all conferences, sorted.
    pub fn conferences(&self) -> Vec<String> {
        let mut names: Vec<String> = self.shared.registry.lock().conferences.keys().cloned().collect();
        names.sort();
        names
    }

    /// The next event, waiting up to `timeout` (`None`: forever).
    pub fn next_event(&self, timeout: Option<Duration>) -> Result<Event> {
        self.next_event_interruptible(timeout, &mut never)
    }

    /// As [`Endpoint::next_event`], giving up with [`Error::Interrupted`] when `interrupt` returns true.
    pub fn next_event_interruptible(&self, timeout: Option<Duration>, interrupt: Interrupt<'_>) -> Result<Event> {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            let slice = match deadline {
                Some(d) => d.saturating_duration_since(Instant::now()).min(Duration::from_millis(50)),
                None => Duration::from_millis(50),
            };
            match self.shared.events.recv_timeout(slice) {
                Ok(event) => return Ok(event),
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return Err(Error::Stopped),
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
            }
            if interrupt() {
                return Err(Error::Interrupted);
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(Error::Timeout);
            }
        }
    }

    /// The next event if one is waiting.
    pub fn try_next_event(&self) -> Option<Event> {
        self.shared.events.try_recv().ok()
    }

    /// Events dropped because the application did not read them.
    pub fn events_dropped(&self) -> u64 {
        self.shared.event_sink.dropped.load(Ordering::Relaxed)
    }

    /// Mixer ticks so far and ticks that started late, over all mixer threads.
    pub fn mixer_ticks(&self) -> (u64, u64) {
        self.shared.mixer_stats.iter().fold((0, 0), |(ticks, late), stats| {
            (ticks + stats.ticks.load(Ordering::Relaxed), late + stats.late_ticks.load(Ordering::Relaxed))
        })
    }

    /// What each mixer thread has done so far.
    pub fn mixer_reports(&self) -> Vec<MixerReport> {
        self.shared
            .mixer_stats
            .iter()
            .map(|stats| MixerReport {
                ticks: stats.ticks.load(Ordering::Relaxed),
                late_ticks: stats.late_ticks.load(Ordering::Relaxed),
                tick_histogram: stats.tick_histogram.iter().map(|n| n.load(Ordering::Relaxed)).collect(),
            })
            .collect()
    }

    /// Hangs up every leg with BYE (CANCEL when still ringing) and stops.
    /// Further calls on this endpoint or its conferences fail with [`Error::Stopped`].
    pub fn stop(&self) {
        self.engine.lock().stop();
    }

    /// Whether [`Endpoint::stop`] has run.
    pub fn is_stopped(&self) -> bool {
        self.shared.check_running().is_err()
    }
}

/// A conference room. Cheap to clone; all clones name the same room.
#[derive(Clone)]
pub struct Conference {
    shared: Arc<Shared>,
    name: String,
    id: crate::media::mixer::ConferenceId,
    sample_rate: u32,
}

impl std::fmt::Debug for Conference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conference").field("name", &self.name).finish()
    }
}

impl Conference {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The rate the conference mixes at; its application audio is at this rate.
    pub fn sample_rate(&self) -> u32 {
        self.sample_rate
    }

    /// Samples in one 20 ms frame of the conference's audio.
    pub fn frame_samples(&self) -> usize {
        frame_samples(self.sample_rate)
    }

    fn check(&self) -> Result<()> {
        self.shared.check_running()?;
        match self.shared.registry.lock().conferences.get(&self.name) {
            Some(c) if c.id == self.id => Ok(()),
            _ => Err(Error::NotFound(format!("conference {}", self.name))),
        }
    }

    /// Calls `uri` into this conference. Returns once the INVITE is sent;
    /// ringing, answer and failure arrive as events.
    pub fn dial(&self, uri: &str) -> Result<Participant> {
        self.dial_with(uri, None)
    }

    /// Like [`Conference::dial`], answering digest challenges (401/407, MD5
    /// or SHA-256) with `credentials`; the From header then names their user.
    pub fn dial_with_credentials(&self, uri: &str, credentials: Credentials) -> Result<Participant> {
        if credentials.username.is_empty() {
            return Err(Error::InvalidArgument("an empty user name".into()));
        }
        self.dial_with(uri, Some(credentials))
    }

    fn dial_with(&self, uri: &str, credentials: Option<Credentials>) -> Result<Participant> {
        self.check()?;
        validate_sip_uri(uri)?;
        let id = ParticipantId(self.shared.next_id());
        let controls = Arc::new(ParticipantControls::default());
        let entry = ParticipantEntry::new(
            ParticipantKind::Outbound,
            Some(uri.to_string()),
            ParticipantState::Calling,
            controls,
        );
        self.shared.add_participant(id, &self.name, entry, None)?;
        // A std channel: this may be called from inside an async runtime.
        let (reply, result) = std::sync::mpsc::channel();
        self.shared
            .sip_commands
            .send(SipCommand::Dial { participant: id, target: uri.to_string(), credentials, reply })
            .map_err(|_| Error::Stopped)?;
        result.recv().map_err(|_| Error::Stopped)??;
        Ok(Participant { shared: self.shared.clone(), id })
    }

    /// Adds a participant that the application feeds with PCM and that reads
    /// its own N-1 mix: a bot, a prompt player, a teacher's microphone.
    pub fn add_local(&self) -> Result<LocalParticipant> {
        self.check()?;
        // One second of audio each way.
        let frame = self.frame_samples();
        let (to_mixer, from_app) = rtrb::RingBuffer::new(frame * 50);
        let (to_app, from_mixer) = rtrb::RingBuffer::new(frame * 50);
        let id = ParticipantId(self.shared.next_id());
        let controls = Arc::new(ParticipantControls::default());
        let mix = ParticipantMix::new(id, controls.clone(), Leg::Local(LocalLeg { from_app, to_app }), frame);
        let entry = ParticipantEntry::new(ParticipantKind::Local, None, ParticipantState::Connected, controls);
        self.shared.add_participant(id, &self.name, entry, Some(Box::new(mix)))?;
        self.shared.emit_joined(self.name.clone(), id, ParticipantKind::Local, String::new());
        Ok(LocalParticipant {
            participant: Participant { shared: self.shared.clone(), id },
            to_mixer,
            from_mixer: FrameReader { ring: from_mixer, frame },
        })
    }

    /// Plays `playback` to everyone in the conference, after the prompts
    /// already queued for everyone. Returns at once; the prompt is decoded
    /// and resampled to the conference's rate here, off the mixer, and
    /// [`Event::PlaybackFinished`] says when it ends.
    pub fn play(&self, playback: &Playback) -> Result<PlaybackId> {
        self.play_prompt(None, playback)
    }

    /// Plays `playback` to one participant only (the others do not hear
    /// it), after the prompts already queued for it; as [`Conference::play`].
    pub fn play_to(&self, participant: ParticipantId, playback: &Playback) -> Result<PlaybackId> {
        self.play_prompt(Some(participant), playback)
    }

    fn play_prompt(&self, participant: Option<ParticipantId>, playback: &Playback) -> Result<PlaybackId> {
        self.check()?;
        let samples = playback.render(self.sample_rate)?;
        self.shared.play(self.id, &self.name, participant, samples)
    }

    /// Stops a prompt, playing or queued; one that has ended already is no error.
    pub fn stop_playback(&self, id: PlaybackId) -> Result<()> {
        self.check()?;
        self.shared.stop_playback(self.id, Some(id))
    }

    /// Stops every prompt of the conference, to everyone and to participants.
    pub fn stop_all_playback(&self) -> Result<()> {
        self.check()?;
        self.shared.stop_playback(self.id, None)
    }

    /// Records the conference to a WAV file at `path` (mono, 16-bit, at the
    /// conference's rate): the mix, as a silent listener hears it, with
    /// the prompts played to everyone. With `per_participant`, each
    /// participant's own audio (decoded, before its volume; silence while
    /// it is muted) also goes to a file beside it, `NAME-ID.wav`, from the
    /// time it joins. One recording at a time; files are written by a
    /// thread of their own, so a slow disk drops frames
    /// ([`Event::RecordingOverrun`]) instead of holding up the audio.
    pub fn start_recording(&self, path: impl AsRef<std::path::Path>, per_participant: bool) -> Result<()> {
        self.check()?;
        self.shared.start_recording(&self.name, path.as_ref(), per_participant)
    }

    /// Pauses the recording: what happens meanwhile is left out of its files.
    pub fn pause_recording(&self) -> Result<()> {
        self.check()?;
        self.shared.pause_recording(&self.name, true)
    }

    pub fn resume_recording(&self) -> Result<()> {
        self.check()?;
        self.shared.pause_recording(&self.name, false)
    }

    /// Stops the recording; returns once its files are complete
    /// ([`Event::RecordingStopped`] for each). Destroying the conference or
    /// stopping the endpoint finishes them too.
    pub fn stop_recording(&self) -> Result<()> {
        self.check()?;
        self.shared.stop_recording(&self.name)
    }

    /// Starts a feed of the conference mix (everyone, 20 ms frames at the
    /// conference's rate), buffered for one second. A new feed replaces the previous one.
    pub fn mixed_audio(&self) -> Result<FrameReader> {
        self.check()?;
        let frame = self.frame_samples();
        let (producer, ring) = rtrb::RingBuffer::new(frame * 50);
        self.shared.set_tap(self.id, Some(producer))?;
        Ok(FrameReader { ring, frame })
    }

    /// Frames of the mix dropped because the feed was not read in time.
    pub fn mixed_audio_dropped(&self) -> u64 {
        self.shared
            .registry
            .lock()
            .conferences
            .get(&self.name)
            .map(|c| c.controls.tap_dropped.load(Ordering::Relaxed))
            .unwrap_or(0)
    }

    /// The participants, in the order they were added.
    pub fn participants(&self) -> Result<Vec<ParticipantInfo>> {
        self.check()?;
        let registry = self.shared.registry.lock();
        let ids = registry.conferences.get(&self.name).map(|c| c.participants.clone()).unwrap_or_default();
        Ok(ids.iter().filter_map(|id| registry.participants.get(id).map(|p| info(*id, p))).collect())
    }

    /// A handle on participant `id` of this conference.
    pub fn participant(&self, id: ParticipantId) -> Result<Participant> {
        let registry = self.shared.registry.lock();
        match registry.participants.get(&id) {
            Some(p) if p.conference_id == self.id => Ok(Participant { shared: self.shared.clone(), id }),
            _ => Err(Error::NotFound(format!("participant {}", id.0))),
        }
    }

    /// Switches noise suppression (RNNoise) on or off for everyone in the
    /// conference now and for whoever joins later; a participant's own
    /// setting then overrides it. Needs a 48 kHz conference.
    pub fn set_noise_suppression(&self, on: bool) -> Result<()> {
        self.check()?;
        self.shared.set_conference_noise_suppression(&self.name, on)
    }

    /// Whether callers must authenticate as a user of the endpoint (digest,
    /// [`Endpoint::add_user`]) to join: a caller without credentials gets a
    /// 401 challenge, one that fails five times in a minute 403 for a minute.
    pub fn set_require_authentication(&self, on: bool) -> Result<()> {
        self.check()?;
        let mut registry = self.shared.registry.lock();
        let conference = registry.conferences.get_mut(&self.name).filter(|c| c.id == self.id);
        conference.ok_or_else(|| Error::NotFound(self.name.clone()))?.require_authentication = on;
        Ok(())
    }

    /// Sets the conference's policy (PINs, moderators, locking, the most
    /// participants; see [`ConferencePolicy`]). It applies to those who join
    /// from now on; of those present, it changes who waits for a
    /// moderator. Prompts are rendered here, off the mixer.
    pub fn set_policy(&self, policy: ConferencePolicy) -> Result<()> {
        self.check()?;
        self.shared.set_policy(&self.name, self.id, self.sample_rate, policy)
    }

    /// The conference's policy.
    pub fn policy(&self) -> Result<ConferencePolicy> {
        self.shared.check_running()?;
        self.shared.policy(&self.name, self.id)
    }

    /// Locks the conference: callers get 403, the app's dials and local
    /// participants [`Error::Locked`] ([`Event::Locked`]).
    pub fn lock(&self) -> Result<()> {
        self.shared.check_running()?;
        self.shared.set_locked(&self.name, self.id, true)
    }

    pub fn unlock(&self) -> Result<()> {
        self.shared.check_running()?;
        self.shared.set_locked(&self.name, self.id, false)
    }

    /// Mutes (or unmutes) everyone but the moderators ([`Event::Muted`] for each change).
    pub fn mute_all(&self, muted: bool) -> Result<()> {
        self.shared.check_running()?;
        self.shared.mute_all(&self.name, self.id, muted)
    }

    /// Ends the conference: hangs everyone up ([`LeaveReason::ConferenceEnded`])
    /// and reports [`Event::ConferenceEnded`]. A conference the app created
    /// stays, empty, until it is destroyed.
    pub fn end(&self) -> Result<()> {
        self.shared.check_running()?;
        self.shared.end_conference(&self.name, self.id)
    }

    /// Sets how talkers are detected and how many participants are mixed
    /// (by default -40 dBov to start, -50 dBov for 400 ms to stop, at most 4
    /// mixed: talkers first, the loudest first). Talking starts and stops
    /// arrive as [`Event::Talking`].
    pub fn set_talker_policy(&self, policy: TalkerPolicy) -> Result<()> {
        self.check()?;
        let sane = |db: f32| db.is_finite() && (-100.0..=0.0).contains(&db);
        if !sane(policy.start_dbov) || !sane(policy.stop_dbov) || policy.stop_dbov > policy.start_dbov {
            return Err(Error::InvalidArgument(
                "talker levels must be dBov in -100..=0, the stop level at most the start level".into(),
            ));
        }
        if policy.hang > Duration::from_secs(10) {
            return Err(Error::InvalidArgument("talker hang time must be at most 10 s".into()));
        }
        self.shared.set_talker_policy(self.id, policy)
    }

    /// Moves participant `id` to conference `to` (a breakout room, or back
    /// to the main room) without a new call: its leg, id and taps stay, and
    /// it hears `to` from the next tick on, without a gap when the two
    /// conferences mix on one thread (at most one frame's gap otherwise).
    /// Both must mix at the same rate ([`Error::InvalidArgument`]).
    /// Reported as [`Event::ParticipantMoved`]. For the policy the move is
    /// a leave and a join: `to` lets in those waiting if a moderator moves
    /// in ([`Event::ModeratorJoined`]), or puts a newcomer on hold if it
    /// waits for one; this conference ends if its policy ends it with its
    /// last moderator, and reports [`Event::ConferenceEmpty`] when emptied.
    /// `to`'s lock and size do not refuse the app's move, and the mover
    /// keeps its mute and its role. A room a caller created ends when its
    /// last participant moves out.
    pub fn move_participant(&self, id: ParticipantId, to: &Conference) -> Result<()> {
        self.check()?;
        self.shared.move_participant(id, self.id, to.id, &to.name)
    }

    /// Moves everyone in this conference to `to` (bringing a breakout room
    /// back); returns who moved.
    pub fn move_all_to(&self, to: &Conference) -> Result<Vec<ParticipantId>> {
        self.check()?;
        let ids = self.shared.registry.lock().conferences.get(&self.name).map(|c| c.participants.clone());
        let ids: Vec<ParticipantId> = ids.unwrap_or_default().into_iter().collect();
        for id in &ids {
            self.move_participant(*id, to)?;
        }
        Ok(ids)
    }

    /// Hangs up every leg and removes the conference.
    pub fn destroy(&self) -> Result<()> {
        self.check()?;
        self.shared.destroy_conference(&self.name)
    }
}

/// Accepts `sip:` and `sips:` URIs that rsip parses and that name a host.
fn validate_sip_uri(uri: &str) -> Result<()> {
    let bad = |why: &str| Error::InvalidArgument(format!("bad SIP URI {uri:?}: {why}"));
    let scheme = uri.split(':').next().unwrap_or("");
    if !scheme.eq_ignore_ascii_case("sip") && !scheme.eq_ignore_ascii_case("sips") {
        return Err(bad("it must start with sip: or sips:"));
    }
    if uri.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad("it contains spaces or control characters"));
    }
    rsip::Uri::try_from(uri).map_err(|e| bad(&e.to_string()))?;
    crate::sip::message::uri_parts(uri).ok_or_else(|| bad("no host, or a bad port"))?;
    Ok(())
}

fn info(id: ParticipantId, p: &ParticipantEntry) -> ParticipantInfo {
    let c = &p.controls;
    let expected = c.packets_expected.load(Ordering::Relaxed);
    let lost = c.packets_lost.load(Ordering::Relaxed);
    let loss_percent = if expected > 0 { (lost as f64 * 100.0 / expected as f64).min(100.0) } else { 0.0 };
    let jitter_ms = c.jitter_us.load(Ordering::Relaxed) as f64 / 1000.0;
    let round_trip_ms = match c.round_trip_us.load(Ordering::Relaxed) {
        0 => None,
        us => Some(us as f64 / 1000.0),
    };
    let jitter_buffer_ms = c.jitter_delay_ms.load(Ordering::Relaxed);
    let mos = p.codec.and_then(|codec| crate::media::rtcp::codec_impairment(codec.encoding_name())).map(|codec| {
        // One-way delay: half the round trip (or a LAN's 20 ms before it is
        // known), plus what the jitter buffer and a packet add here.
        let one_way = round_trip_ms.map_or(20.0, |rtt| rtt / 2.0) + jitter_buffer_ms as f64 + 20.0;
        crate::media::rtcp::estimated_mos(codec.ie, codec.bpl, loss_percent, one_way) as f32
    });
    ParticipantInfo {
        id,
        conference: p.conference.clone(),
        kind: p.kind,
        state: p.state,
        remote: p.remote.clone(),
        muted: c.muted.load(Ordering::Relaxed),
        volume_db: p.volume_db,
        noise_suppression: p.noise_suppression,
        talking: c.talking.load(Ordering::Relaxed),
        on_hold: c.held.load(Ordering::Relaxed),
        moderator: p.policy.moderator,
        admission: p.policy.admission(),
        deaf: c.deaf.load(Ordering::Relaxed),
        packets_received: c.packets_received.load(Ordering::Relaxed),
        packets_sent: c.packets_sent.load(Ordering::Relaxed),
        dropped: c.dropped.load(Ordering::Relaxed),
        codec: p.codec,
        bytes_received: c.bytes_received.load(Ordering::Relaxed),
        bytes_sent: c.bytes_sent.load(Ordering::Relaxed),
        concealed_frames: c.concealed_frames.load(Ordering::Relaxed),
        fec_recovered: c.fec_recovered.load(Ordering::Relaxed),
        jitter_buffer_ms,
        packets_lost: lost,
        loss_percent: loss_percent as f32,
        jitter_ms: jitter_ms as f32,
        round_trip_ms: round_trip_ms.map(|r| r as f32),
        mos,
    }
}

/// A participant of a conference. Calls on one that has left fail with
/// [`Error::NotFound`].
#[derive(Clone)]
pub struct Participant {
    shared: Arc<Shared>,
    id: ParticipantId,
}

impl std::fmt::Debug for Participant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Participant").field("id", &self.id.0).finish()
    }
}

impl Participant {
    pub fn id(&self) -> ParticipantId {
        self.id
    }

    fn with_entry<T>(&self, f: impl FnOnce(&mut ParticipantEntry) -> T) -> Result<T> {
        self.shared.check_running()?;
        let mut registry = self.shared.registry.lock();
        registry
            .participants
            .get_mut(&self.id)
            .map(f)
            .ok_or_else(|| Error::NotFound(format!("participant {}", self.id.0)))
    }

    pub fn info(&self) -> Result<ParticipantInfo> {
        self.with_entry(|p| info(self.id, p))
    }

    /// Mutes or unmutes what this participant contributes to the mix
    /// ([`Event::Muted`] when that changes it).
    pub fn set_muted(&self, muted: bool) -> Result<()> {
        self.shared.check_running()?;
        self.shared.set_muted(self.id, muted)
    }

    /// Deafens the participant (it hears nothing of the conference, only
    /// prompts played to it alone; others still hear it), or lets it hear again.
    pub fn set_deaf(&self, deaf: bool) -> Result<()> {
        self.with_entry(|p| p.controls.deaf.store(deaf, Ordering::Relaxed))
    }

    /// Makes the participant a moderator ([`Event::ModeratorJoined`]) or an
    /// ordinary participant. Moderators are spared by
    /// [`Conference::mute_all`]; what they change under the conference's
    /// policy is described at [`ConferencePolicy`]. A caller still typing
    /// its PIN is let in.
    pub fn set_moderator(&self, moderator: bool) -> Result<()> {
        self.shared.check_running()?;
        self.shared.set_moderator(self.id, moderator)
    }

    /// Hangs the participant up, reported as [`LeaveReason::Kicked`].
    pub fn kick(&self) -> Result<()> {
        self.with_entry(|_| ())?;
        self.shared.end_participant(self.id, LeaveReason::Kicked);
        Ok(())
    }

    /// Sets how loud this participant is in the mix, in dB (0 = as received; ±40 at most).
    pub fn set_volume_db(&self, db: f32) -> Result<()> {
        if !db.is_finite() {
            return Err(Error::InvalidArgument("volume must be a finite number of dB".into()));
        }
        self.with_entry(|p| {
            p.volume_db = db.clamp(-40.0, 40.0);
            p.controls.gain_q16.store(gain_q16_from_db(db), Ordering::Relaxed)
        })
    }

    /// Switches noise suppression (RNNoise) of what this participant says
    /// before it is mixed. Needs a 48 kHz conference.
    pub fn set_noise_suppression(&self, on: bool) -> Result<()> {
        self.shared.check_running()?;
        self.shared.set_participant_noise_suppression(self.id, on)
    }

    /// Sends key presses to the participant as RFC 4733 telephone-events
    /// ('0'–'9', '*', '#', 'A'–'D'; 100 ms each, 60 ms apart), after any
    /// digits already queued. Fails when the peer did not offer telephone-event.
    pub fn send_dtmf(&self, digits: &str) -> Result<()> {
        let codes: Vec<u8> = digits
            .chars()
            .map(|c| {
                crate::media::dtmf::event_code(c)
                    .ok_or_else(|| Error::InvalidArgument(format!("{c:?} is not a DTMF digit")))
            })
            .collect::<Result<_>>()?;
        self.with_entry(|p| {
            let queue = &mut p
                .dtmf
                .as_mut()
                .filter(|dtmf| dtmf.negotiated)
                .ok_or_else(|| {
                    Error::InvalidArgument("this participant has no telephone-event to send digits with".into())
                })?
                .digits;
            if queue.slots() < codes.len() {
                return Err(Error::InvalidArgument(format!(
                    "{} digits are queued already",
                    queue.buffer().capacity() - queue.slots()
                )));
            }
            for code in codes {
                // Room was checked above, and only this lock's holder pushes.
                let _ = queue.push(code);
            }
            Ok(())
        })?
    }

    /// Opens a tap on this participant's own audio, as the mixer has it
    /// before mixing: decoded, after noise suppression, before its volume,
    /// at the conference's rate, in 20 ms frames with a timestamp and the
    /// talking flag; silence while it is muted, on hold or heard by nobody.
    /// It holds one second; frames the app does not read in time are
    /// dropped ([`Event::TapOverrun`]), never waited for. One tap per
    /// participant at a time ([`Error::AlreadyExists`]); it follows the
    /// participant to another conference. Taps cost the mixer nothing
    /// while none is open.
    pub fn tap(&self) -> Result<TapReader> {
        self.shared.check_running()?;
        let ends = self.shared.open_tap(self.id)?;
        Ok(TapReader {
            participant: self.clone(),
            samples: ends.samples,
            frames: ends.frames,
            dropped: ends.dropped,
            frame: ends.frame,
        })
    }

    /// Makes this participant hear only `participants` of its conference
    /// (at most [`MAX_PARTICIPANT_SET`]; empty: nobody), or with `None`
    /// everyone. Prompts still reach it.
    pub fn set_hears_only(&self, participants: Option<&[ParticipantId]>) -> Result<()> {
        let set = participant_set(participants)?;
        self.shared.check_running()?;
        self.shared.set_routing(self.id, |routing| routing.hears_only = set)
    }

    /// Lets only `participants` hear this one (at most
    /// [`MAX_PARTICIPANT_SET`]), or with `None` everyone. A supervisor
    /// listening in is heard by nobody (`Some(&[])`), and takes no mixing
    /// slot; whispering to an agent, by the agent (`Some(&[agent])`);
    /// barging in, by everyone (`None`).
    pub fn set_heard_only_by(&self, participants: Option<&[ParticipantId]>) -> Result<()> {
        let set = participant_set(participants)?;
        self.shared.check_running()?;
        self.shared.set_routing(self.id, |routing| routing.heard_only_by = set)
    }

    /// Ends the participant: BYE when connected, CANCEL when ringing.
    pub fn hangup(&self) -> Result<()> {
        self.with_entry(|_| ())?;
        self.shared.end_participant(self.id, LeaveReason::LocalHangup);
        Ok(())
    }

    /// Puts the participant's call on hold (a re-INVITE offering
    /// `inactive`: nothing is sent to it or mixed from it) or takes it off
    /// hold (`sendrecv`). The change takes effect, and [`Event::Hold`]
    /// comes, when the phone answers; a refusal leaves the call as it was.
    /// Only SIP participants can be held.
    pub fn set_held(&self, held: bool) -> Result<()> {
        self.sip_command(|participant, reply| SipCommand::Hold { participant, held, reply })
    }

    /// Asks the participant's phone to change codec: a re-INVITE offering
    /// `codec` alone (one of its room's codecs). When the phone answers, the
    /// leg sends and receives with it (its info's `codec` says so); a
    /// refusal leaves the call as it was. Only SIP participants.
    pub fn set_codec(&self, codec: CodecKind) -> Result<()> {
        self.sip_command(|participant, reply| SipCommand::ChangeCodec { participant, codec, reply })
    }

    /// Transfers the participant to `uri` (a blind transfer: REFER, RFC
    /// 3515): its phone calls `uri`, and once that call is answered we hang
    /// up ours. Progress comes as [`Event::TransferProgress`].
    pub fn transfer(&self, uri: &str) -> Result<()> {
        validate_sip_uri(uri)?;
        let target = uri.to_string();
        self.sip_command(|participant, reply| SipCommand::Transfer { participant, target, reply })
    }

    /// Accepts the participant's transfer request ([`Event::TransferRequested`]):
    /// its target is dialled into this participant's conference, and the
    /// phone hears how the call goes.
    pub fn accept_transfer(&self) -> Result<()> {
        self.sip_command(|participant, reply| SipCommand::AnswerTransfer { participant, accept: true, reply })
    }

    /// Refuses the participant's transfer request (603 Decline).
    pub fn reject_transfer(&self) -> Result<()> {
        self.sip_command(|participant, reply| SipCommand::AnswerTransfer { participant, accept: false, reply })
    }

    /// Hands the SIP task a command about this participant's call and waits for its answer.
    fn sip_command(
        &self,
        make: impl FnOnce(ParticipantId, std::sync::mpsc::Sender<Result<()>>) -> SipCommand,
    ) -> Result<()> {
        self.with_entry(|_| ())?;
        let (reply, result) = std::sync::mpsc::channel();
        self.shared.sip_commands.send(make(self.id, reply)).map_err(|_| Error::Stopped)?;
        result.recv().map_err(|_| Error::Stopped)?
    }
}

/// The listen/talk matrix's set of `participants`, checked for size.
fn participant_set(participants: Option<&[ParticipantId]>) -> Result<Option<ParticipantSet>> {
    participants
        .map(|ids| {
            ParticipantSet::new(ids).ok_or_else(|| {
                Error::InvalidArgument(format!("at most {MAX_PARTICIPANT_SET} participants, not {}", ids.len()))
            })
        })
        .transpose()
}

/// Reads 20 ms frames from a sample ring the mixer fills.
pub struct FrameReader {
    ring: rtrb::Consumer<i16>,
    frame: usize,
}

impl FrameReader {
    /// Samples in one frame (20 ms at the conference's rate).
    pub fn frame_samples(&self) -> usize {
        self.frame
    }

    /// Fills `out` (one frame, [`FrameReader::frame_samples`] long) with the next frame,
    /// waiting up to `timeout`.
    pub fn read_frame(&mut self, out: &mut [i16], timeout: Option<Duration>) -> Result<()> {
        self.read_frame_interruptible(out, timeout, &mut never)
    }

    pub fn read_frame_interruptible(
        &mut self,
        out: &mut [i16],
        timeout: Option<Duration>,
        interrupt: Interrupt<'_>,
    ) -> Result<()> {
        let frame = self.frame;
        check_frame(out, frame)?;
        let ring = &self.ring;
        wait_for(timeout, interrupt, || (ring.slots() >= frame).then_some(()))?;
        pop_samples(&mut self.ring, out)
    }

    /// Frames ready to read without waiting.
    pub fn frames_available(&self) -> usize {
        self.ring.slots() / self.frame
    }
}

/// Checks that `out` holds one frame of `frame` samples.
fn check_frame(out: &[i16], frame: usize) -> Result<()> {
    if out.len() != frame {
        return Err(Error::InvalidArgument(format!("a frame is {frame} samples, not {}", out.len())));
    }
    Ok(())
}

/// Fills `out` with the next `out.len()` samples of a ring they are known to be in.
fn pop_samples(ring: &mut rtrb::Consumer<i16>, out: &mut [i16]) -> Result<()> {
    // Only this reader consumes, so samples that were there still are.
    let chunk = ring.read_chunk(out.len()).map_err(|_| Error::Timeout)?;
    let (a, b) = chunk.as_slices();
    out[..a.len()].copy_from_slice(a);
    out[a.len()..].copy_from_slice(b);
    chunk.commit_all();
    Ok(())
}

/// Reads one participant's own audio (see [`Participant::tap`]). Dropping
/// it (or [`TapReader::close`]) closes the tap.
#[derive(Debug)]
pub struct TapReader {
    participant: Participant,
    samples: rtrb::Consumer<i16>,
    frames: rtrb::Consumer<TapFrame>,
    dropped: Arc<std::sync::atomic::AtomicU64>,
    frame: usize,
}

impl TapReader {
    /// The participant tapped.
    pub fn participant(&self) -> &Participant {
        &self.participant
    }

    /// Samples in one frame (20 ms at the conference's rate).
    pub fn frame_samples(&self) -> usize {
        self.frame
    }

    /// Fills `out` (one frame) with the participant's next frame, waiting
    /// up to `timeout`, and says when it starts and whether the participant
    /// talked. [`Error::NotFound`] once the participant has left and every
    /// frame was read.
    pub fn read_frame(&mut self, out: &mut [i16], timeout: Option<Duration>) -> Result<TapFrame> {
        self.read_frame_interruptible(out, timeout, &mut never)
    }

    pub fn read_frame_interruptible(
        &mut self,
        out: &mut [i16],
        timeout: Option<Duration>,
        interrupt: Interrupt<'_>,
    ) -> Result<TapFrame> {
        check_frame(out, self.frame)?;
        let frames = &mut self.frames;
        let (participant, samples) = (self.participant.id, &mut self.samples);
        wait_for(timeout, interrupt, || match frames.pop() {
            // The mixer pushes a frame's samples before its header.
            Ok(info) => Some(pop_samples(samples, out).map(|()| info)),
            Err(_) if frames.is_abandoned() => Some(Err(Error::NotFound(format!("participant {}", participant.0)))),
            Err(_) => None,
        })?
    }

    /// Frames ready to read without waiting.
    pub fn frames_available(&self) -> usize {
        self.frames.slots()
    }

    /// Frames dropped because they were not read in time (see [`Event::TapOverrun`]).
    pub fn frames_dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Closes the tap, as dropping the reader does.
    pub fn close(self) {}
}

impl Drop for TapReader {
    fn drop(&mut self) {
        // Gone with its participant, or with the endpoint, is closed already.
        let _ = self.participant.shared.close_tap(self.participant.id);
    }
}

/// A participant the application feeds and listens to.
pub struct LocalParticipant {
    participant: Participant,
    to_mixer: rtrb::Producer<i16>,
    from_mixer: FrameReader,
}

impl LocalParticipant {
    pub fn participant(&self) -> &Participant {
        &self.participant
    }

    pub fn id(&self) -> ParticipantId {
        self.participant.id
    }

    /// Samples in one frame (20 ms at the conference's rate).
    pub fn frame_samples(&self) -> usize {
        self.from_mixer.frame
    }

    /// Queues PCM (mono, at the conference's rate) for the mixer without waiting; returns how
    /// many samples fitted (the queue holds one second).
    pub fn write(&mut self, pcm: &[i16]) -> usize {
        let n = pcm.len().min(self.to_mixer.slots());
        if let Ok(mut chunk) = self.to_mixer.write_chunk(n) {
            let (a, b) = chunk.as_mut_slices();
            let split = a.len();
            a.copy_from_slice(&pcm[..split]);
            b.copy_from_slice(&pcm[split..n]);
            chunk.commit_all();
        }
        n
    }

    /// Queues all of `pcm`, waiting for room as the mixer plays it (real time).
    pub fn write_all(&mut self, pcm: &[i16], timeout: Option<Duration>) -> Result<()> {
        self.write_all_interruptible(pcm, timeout, &mut never)
    }

    pub fn write_all_interruptible(
        &mut self,
        mut pcm: &[i16],
        timeout: Option<Duration>,
        interrupt: Interrupt<'_>,
    ) -> Result<()> {
        self.participant.info()?;
        let deadline = timeout.map(|t| Instant::now() + t);
        while !pcm.is_empty() {
            let n = self.write(pcm);
            pcm = &pcm[n..];
            if pcm.is_empty() {
                break;
            }
            self.participant.info()?;
            let remaining = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            let to_mixer = &self.to_mixer;
            let frame = self.from_mixer.frame;
            wait_for(remaining, interrupt, || (to_mixer.slots() >= frame.min(pcm.len())).then_some(()))?;
        }
        Ok(())
    }

    /// Reads the next frame of what this participant hears (everyone else).
    pub fn read_frame(&mut self, out: &mut [i16], timeout: Option<Duration>) -> Result<()> {
        self.from_mixer.read_frame(out, timeout)
    }

    pub fn read_frame_interruptible(
        &mut self,
        out: &mut [i16],
        timeout: Option<Duration>,
        interrupt: Interrupt<'_>,
    ) -> Result<()> {
        self.from_mixer.read_frame_interruptible(out, timeout, interrupt)
    }

    /// Leaves the conference.
    pub fn hangup(&self) -> Result<()> {
        self.participant.hangup()
    }
}
