//! The Python module `sipbridge._native` (pyo3). `python/sipbridge/` wraps it.
//!
//! Every call that can wait goes through [`blocking`], which releases the GIL,
//! looks for Ctrl-C every 50 ms, and converts errors into the exception
//! hierarchy below (after polars' `enter_polars`).

use std::time::{Duration, Instant};

use numpy::{PyArray1, PyReadonlyArray1};
use parking_lot::Mutex;
use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;

use crate::{
    CodecKind, EndpointConfig, Error, LeaveReason, OpusSettings, ParticipantKind, ParticipantState, RegistrationState,
    DEFAULT_SAMPLE_RATE,
};

create_exception!(_native, SipBridgeError, PyException, "Base class of sipbridge's errors.");
create_exception!(_native, InvalidArgumentError, SipBridgeError, "An argument was not acceptable.");
create_exception!(_native, NotFoundError, SipBridgeError, "The conference or participant does not exist (any more).");
create_exception!(_native, AlreadyExistsError, SipBridgeError, "A conference of that name exists.");
create_exception!(_native, StoppedError, SipBridgeError, "The endpoint has stopped.");
create_exception!(_native, TimeoutError, SipBridgeError, "Nothing arrived within the timeout.");
create_exception!(_native, SipError, SipBridgeError, "A SIP message or state problem.");
create_exception!(_native, SdpError, SipBridgeError, "A session description problem.");
create_exception!(_native, NetworkError, SipBridgeError, "A socket or name resolution failure, or no free RTP port.");
create_exception!(_native, LockedError, SipBridgeError, "The conference is locked: no one new may join.");
create_exception!(_native, FullError, SipBridgeError, "The conference has its policy's maximum of participants.");

fn to_py(error: Error) -> PyErr {
    let message = error.to_string();
    match error {
        Error::InvalidArgument(_) => InvalidArgumentError::new_err(message),
        Error::NotFound(_) => NotFoundError::new_err(message),
        Error::AlreadyExists(_) => AlreadyExistsError::new_err(message),
        Error::Locked(_) => LockedError::new_err(message),
        Error::Full(_) => FullError::new_err(message),
        Error::Stopped => StoppedError::new_err(message),
        Error::Timeout => TimeoutError::new_err(message),
        Error::Sip(_) => SipError::new_err(message),
        Error::Sdp(_) => SdpError::new_err(message),
        Error::Playback(_) => InvalidArgumentError::new_err(message),
        Error::Io(_) | Error::NoRtpPort => NetworkError::new_err(message),
        Error::Rtp(_) | Error::Interrupted => SipBridgeError::new_err(message),
    }
}

/// Runs `f` without the GIL. `f` gets an interrupt check that reports a
/// pending signal (Ctrl-C) at most every 50 ms; the signal's exception is
/// raised when `f` gives up with `Error::Interrupted`.
fn blocking<T: Send>(
    py: Python<'_>,
    f: impl FnOnce(&mut dyn FnMut() -> bool) -> crate::Result<T> + Send,
) -> PyResult<T> {
    let mut signal: Option<PyErr> = None;
    let result = py.detach(|| {
        let mut last_check = Instant::now();
        let mut interrupt = || {
            if last_check.elapsed() < Duration::from_millis(50) {
                return false;
            }
            last_check = Instant::now();
            match Python::attach(|py| py.check_signals()) {
                Ok(()) => false,
                Err(e) => {
                    signal = Some(e);
                    true
                }
            }
        };
        f(&mut interrupt)
    });
    match (result, signal) {
        (Ok(v), _) => Ok(v),
        (Err(Error::Interrupted), Some(signal)) => Err(signal),
        (Err(e), _) => Err(to_py(e)),
    }
}

/// Reads one frame through `read` without the GIL, as a numpy array, with
/// what `read` says about it.
fn read_frame<'py, T: Send>(
    py: Python<'py>,
    timeout: Option<f64>,
    frame_samples: usize,
    read: impl FnOnce(&mut [i16], Option<Duration>, &mut dyn FnMut() -> bool) -> crate::Result<T> + Send,
) -> PyResult<(Bound<'py, PyArray1<i16>>, T)> {
    let timeout = seconds(timeout)?;
    let mut frame = vec![0i16; frame_samples];
    let about = blocking(py, |interrupt| read(&mut frame, timeout, interrupt))?;
    Ok((PyArray1::from_vec(py, frame), about))
}

fn seconds(timeout: Option<f64>) -> PyResult<Option<Duration>> {
    match timeout {
        None => Ok(None),
        Some(t) if t.is_finite() && t >= 0.0 => Ok(Some(Duration::from_secs_f64(t))),
        Some(t) => {
            Err(InvalidArgumentError::new_err(format!("timeout must be a non-negative number of seconds, not {t}")))
        }
    }
}

fn kind_name(kind: ParticipantKind) -> &'static str {
    match kind {
        ParticipantKind::Inbound => "inbound",
        ParticipantKind::Outbound => "outbound",
        ParticipantKind::Local => "local",
    }
}

fn reason_name(reason: LeaveReason) -> &'static str {
    match reason {
        LeaveReason::RemoteHangup => "remote_hangup",
        LeaveReason::LocalHangup => "local_hangup",
        LeaveReason::Cancelled => "cancelled",
        LeaveReason::Timeout => "timeout",
        LeaveReason::ConferenceDestroyed => "conference_destroyed",
        LeaveReason::EndpointStopped => "endpoint_stopped",
        LeaveReason::Kicked => "kicked",
        LeaveReason::ConferenceEnded => "conference_ended",
        LeaveReason::PinRejected => "pin_rejected",
        LeaveReason::RoomFull => "room_full",
        LeaveReason::Transferred => "transferred",
        LeaveReason::Replaced => "replaced",
    }
}

fn admission_name(admission: crate::Admission) -> &'static str {
    match admission {
        crate::Admission::Admitted => "admitted",
        crate::Admission::EnteringPin => "entering_pin",
        crate::Admission::WaitingForModerator => "waiting_for_moderator",
        crate::Admission::TurnedAway => "turned_away",
    }
}

/// A SIP endpoint: the SIP stack, the mixer and the conferences.
// The keyword default below spells the rate out, for Python to show.
const _: () = assert!(DEFAULT_SAMPLE_RATE == 48000);

#[pyclass(frozen, module = "sipbridge._native")]
struct Endpoint {
    inner: crate::Endpoint,
}

/// Codecs by their SDP encoding names.
fn codec_list(names: &[String]) -> PyResult<Vec<CodecKind>> {
    names
        .iter()
        .map(|n| {
            CodecKind::from_encoding_name(n)
                .ok_or_else(|| InvalidArgumentError::new_err(format!("unknown codec {n:?} (opus, G722, PCMU or PCMA)")))
        })
        .collect()
}

#[pymethods]
impl Endpoint {
    #[new]
    // Python keyword arguments, one per EndpointConfig field.
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (listen = "127.0.0.1:5060", *, public_address = None, rtp_ports = (30000, 30999), create_rooms_on_demand = true, codecs = None, sample_rate = 48000, opus_bitrate = 32000, opus_complexity = 5, opus_fec = true, opus_dtx = false, media_timeout = Some(30.0), hang_up_on_media_timeout = false, mixer_threads = 0, require_authentication = false, realm = "sipbridge", tcp = true, tls_listen = None, tls_certificate = None, tls_private_key = None, tls_ca_file = None, dns_servers = None, stun_server = None, digest_sha256 = false, keepalive_interval = Some(30.0), room_policy = None))]
    fn new(
        py: Python<'_>,
        listen: &str,
        public_address: Option<&str>,
        rtp_ports: (u16, u16),
        create_rooms_on_demand: bool,
        codecs: Option<Vec<String>>,
        sample_rate: u32,
        opus_bitrate: u32,
        opus_complexity: u8,
        opus_fec: bool,
        opus_dtx: bool,
        media_timeout: Option<f64>,
        hang_up_on_media_timeout: bool,
        mixer_threads: usize,
        require_authentication: bool,
        realm: &str,
        tcp: bool,
        tls_listen: Option<&str>,
        tls_certificate: Option<std::path::PathBuf>,
        tls_private_key: Option<std::path::PathBuf>,
        tls_ca_file: Option<std::path::PathBuf>,
        dns_servers: Option<Vec<String>>,
        stun_server: Option<String>,
        digest_sha256: bool,
        keepalive_interval: Option<f64>,
        room_policy: Option<&ConferencePolicy>,
    ) -> PyResult<Self> {
        let media_timeout = seconds(media_timeout)?;
        let listen = listen.parse().map_err(|e| InvalidArgumentError::new_err(format!("listen {listen:?}: {e}")))?;
        let public_address = public_address
            .map(|a| a.parse().map_err(|e| InvalidArgumentError::new_err(format!("public_address {a:?}: {e}"))))
            .transpose()?;
        let tls_listen = tls_listen
            .map(|a| a.parse().map_err(|e| InvalidArgumentError::new_err(format!("tls_listen {a:?}: {e}"))))
            .transpose()?;
        let dns_servers = dns_servers
            .unwrap_or_default()
            .iter()
            .map(|a| a.parse().map_err(|e| InvalidArgumentError::new_err(format!("dns server {a:?}: {e}"))))
            .collect::<PyResult<Vec<_>>>()?;
        if rtp_ports.0 > rtp_ports.1 {
            return Err(InvalidArgumentError::new_err("rtp_ports must be (first, last) with first <= last"));
        }
        let codecs = match codecs {
            None => EndpointConfig::default().codecs,
            Some(names) => codec_list(&names)?,
        };
        let config = EndpointConfig {
            listen,
            public_address,
            rtp_ports: rtp_ports.0..=rtp_ports.1,
            create_rooms_on_demand,
            codecs,
            sample_rate,
            opus: OpusSettings {
                bitrate: opus_bitrate,
                complexity: opus_complexity,
                fec: opus_fec,
                dtx: opus_dtx,
                ..Default::default()
            },
            media_timeout,
            hang_up_on_media_timeout,
            mixer_threads,
            require_authentication,
            realm: realm.into(),
            tcp,
            tls_listen,
            tls_certificate,
            tls_private_key,
            tls_ca_file,
            dns_servers,
            stun_server,
            digest_sha256,
            keepalive_interval: seconds(keepalive_interval)?,
            room_policy: room_policy.map(|p| p.inner.clone()).unwrap_or_default(),
            ..Default::default()
        };
        let inner = blocking(py, |_| crate::Endpoint::start(config))?;
        Ok(Self { inner })
    }

    /// The bound SIP address as (host, port).
    #[getter]
    fn local_address(&self) -> (String, u16) {
        let a = self.inner.local_addr();
        (a.ip().to_string(), a.port())
    }

    /// Where SIP over TLS listens as (host, port), or None.
    #[getter]
    fn tls_address(&self) -> Option<(String, u16)> {
        self.inner.tls_addr().map(|a| (a.ip().to_string(), a.port()))
    }

    /// The SIP URI that calls into `room` here.
    fn room_uri(&self, room: &str) -> String {
        self.inner.room_uri(room)
    }

    /// Adds (or changes the password of) a user callers can authenticate as;
    /// only hashes are kept.
    fn add_user(&self, name: &str, password: &str) -> PyResult<()> {
        self.inner.add_user(name, password).map_err(to_py)
    }

    /// The contacts registered user `name` can be reached at, most recent first.
    fn registrations(&self, name: &str) -> Vec<String> {
        self.inner.registrations(name)
    }

    /// Registers an account with an upstream registrar (`registrar`, else
    /// the AOR's domain) and keeps it registered; calls it routes to the
    /// account join `room`. Returns the account's id; the outcome arrives as
    /// "registration" events. The registrar's name is looked up without the GIL.
    // Python keyword arguments, one per Account field.
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (aor, room, *, registrar = None, username = None, password = None, ha1 = None, expires = 3600))]
    fn register_account(
        &self,
        py: Python<'_>,
        aor: String,
        room: String,
        registrar: Option<String>,
        username: Option<String>,
        password: Option<String>,
        ha1: Option<String>,
        expires: u32,
    ) -> PyResult<u64> {
        let account = crate::Account { aor, registrar, username, password, ha1, expires, room };
        Ok(blocking(py, |_| self.inner.register_account(account))?.0)
    }

    /// Un-registers account `account` (Expires: 0) and forgets it
    /// (NotFoundError for an unknown id); an "unregistered" event follows.
    fn unregister_account(&self, py: Python<'_>, account: u64) -> PyResult<()> {
        blocking(py, |_| self.inner.unregister_account(crate::AccountId(account)))
    }

    /// Removes a user (NotFoundError if there is none by that name).
    fn remove_user(&self, name: &str) -> PyResult<()> {
        self.inner.remove_user(name).map_err(to_py)
    }

    /// Creates a conference mixing at `sample_rate` (8000, 16000 or 48000;
    /// None: the endpoint's rate).
    #[pyo3(signature = (name, sample_rate = None))]
    fn create_conference(&self, name: &str, sample_rate: Option<u32>) -> PyResult<Conference> {
        let created = match sample_rate {
            Some(rate) => self.inner.create_conference_with_rate(name, rate),
            None => self.inner.create_conference(name),
        };
        Ok(Conference { inner: created.map_err(to_py)? })
    }

    fn conference(&self, name: &str) -> PyResult<Conference> {
        Ok(Conference { inner: self.inner.conference(name).map_err(to_py)? })
    }

    fn conferences(&self) -> Vec<String> {
        self.inner.conferences()
    }

    /// The next event, waiting up to `timeout` seconds (None: forever); None on timeout.
    #[pyo3(signature = (timeout = None))]
    fn next_event(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<Option<Event>> {
        let timeout = seconds(timeout)?;
        match blocking(py, |interrupt| self.inner.next_event_interruptible(timeout, interrupt)) {
            Ok(event) => Ok(Some(Event::from(event))),
            Err(e) if e.is_instance_of::<TimeoutError>(py) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Hangs up every leg and stops. Idempotent.
    fn stop(&self, py: Python<'_>) {
        py.detach(|| self.inner.stop());
    }

    #[getter]
    fn stopped(&self) -> bool {
        self.inner.is_stopped()
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (*_args))]
    fn __exit__(&self, py: Python<'_>, _args: &Bound<'_, pyo3::types::PyTuple>) -> bool {
        self.stop(py);
        false
    }
}

/// A conference room.
#[pyclass(frozen, module = "sipbridge._native")]
struct Conference {
    inner: crate::Conference,
}

#[pymethods]
impl Conference {
    #[getter]
    fn name(&self) -> &str {
        self.inner.name()
    }

    /// The rate the conference mixes at; its application audio is at this rate.
    #[getter]
    fn sample_rate(&self) -> u32 {
        self.inner.sample_rate()
    }

    /// Samples in one 20 ms frame of the conference's audio.
    #[getter]
    fn frame_samples(&self) -> usize {
        self.inner.frame_samples()
    }

    /// Calls `uri` into the conference. Returns when the INVITE is sent;
    /// ringing, answer or failure arrive as events. With `username` and
    /// `password`, digest challenges (401/407) are answered with them.
    #[pyo3(signature = (uri, *, username = None, password = None))]
    fn dial(
        &self,
        py: Python<'_>,
        uri: &str,
        username: Option<String>,
        password: Option<String>,
    ) -> PyResult<Participant> {
        let inner = match (username, password) {
            (None, None) => blocking(py, |_| self.inner.dial(uri))?,
            (Some(username), Some(password)) => {
                let credentials = crate::Credentials { username, password };
                blocking(py, |_| self.inner.dial_with_credentials(uri, credentials))?
            }
            _ => return Err(InvalidArgumentError::new_err("give both username and password, or neither")),
        };
        Ok(Participant { inner })
    }

    /// Adds a participant the application feeds with PCM and listens to.
    fn add_local(&self) -> PyResult<LocalParticipant> {
        let local = self.inner.add_local().map_err(to_py)?;
        Ok(LocalParticipant { participant: local.participant().clone(), inner: Mutex::new(local) })
    }

    /// A feed of the conference mix, 20 ms frames at the conference's rate.
    fn mixed_audio(&self) -> PyResult<FrameReader> {
        Ok(FrameReader { inner: Mutex::new(self.inner.mixed_audio().map_err(to_py)?) })
    }

    fn participants(&self) -> PyResult<Vec<Participant>> {
        let infos = self.inner.participants().map_err(to_py)?;
        infos.iter().map(|i| Ok(Participant { inner: self.inner.participant(i.id).map_err(to_py)? })).collect()
    }

    fn participant(&self, id: u64) -> PyResult<Participant> {
        Ok(Participant { inner: self.inner.participant(crate::ParticipantId(id)).map_err(to_py)? })
    }

    /// Moves participant `id` to conference `to` (a breakout room, or back)
    /// without a new call; both must mix at the same rate.
    fn move_participant(&self, py: Python<'_>, id: u64, to: &Conference) -> PyResult<()> {
        blocking(py, |_| self.inner.move_participant(crate::ParticipantId(id), &to.inner))
    }

    /// Moves everyone to conference `to`; returns who moved.
    fn move_all_to(&self, py: Python<'_>, to: &Conference) -> PyResult<Vec<u64>> {
        let moved = blocking(py, |_| self.inner.move_all_to(&to.inner))?;
        Ok(moved.into_iter().map(|id| id.0).collect())
    }

    /// Noise suppression (RNNoise) for everyone now and whoever joins later;
    /// needs a 48 kHz conference.
    #[pyo3(signature = (on = true))]
    fn set_noise_suppression(&self, on: bool) -> PyResult<()> {
        self.inner.set_noise_suppression(on).map_err(to_py)
    }

    /// Whether callers must authenticate as a user of the endpoint to join.
    #[pyo3(signature = (on = true))]
    fn set_require_authentication(&self, on: bool) -> PyResult<()> {
        self.inner.set_require_authentication(on).map_err(to_py)
    }

    /// How talkers are detected and how many are mixed, talkers first (0 = all).
    #[pyo3(signature = (*, start_dbov = -40.0, stop_dbov = -50.0, hang_ms = 400, max_talkers = 4))]
    fn set_talker_policy(&self, start_dbov: f32, stop_dbov: f32, hang_ms: u64, max_talkers: usize) -> PyResult<()> {
        let policy = crate::TalkerPolicy { start_dbov, stop_dbov, hang: Duration::from_millis(hang_ms), max_talkers };
        self.inner.set_talker_policy(policy).map_err(to_py)
    }

    /// Sets the conference's policy: a `ConferencePolicy`, or the keywords
    /// that make one. It applies to who joins from now on.
    #[pyo3(signature = (policy = None, /, **keywords))]
    fn set_policy(
        &self,
        py: Python<'_>,
        policy: Option<&ConferencePolicy>,
        keywords: Option<&Bound<'_, pyo3::types::PyDict>>,
    ) -> PyResult<()> {
        let policy = match (policy, keywords) {
            (Some(policy), None) => policy.inner.clone(),
            // The type's own constructor checks the keywords.
            (None, keywords) => {
                py.get_type::<ConferencePolicy>().call((), keywords)?.cast::<ConferencePolicy>()?.get().inner.clone()
            }
            (Some(_), Some(_)) => {
                return Err(InvalidArgumentError::new_err("set_policy takes a ConferencePolicy or keywords, not both"))
            }
        };
        // Prompts are resampled here: not with the GIL held.
        blocking(py, |_| self.inner.set_policy(policy))
    }

    /// The conference's policy.
    #[getter]
    fn policy(&self) -> PyResult<ConferencePolicy> {
        Ok(ConferencePolicy { inner: self.inner.policy().map_err(to_py)? })
    }

    /// No one new may join: callers get 403, the app a LockedError.
    fn lock(&self) -> PyResult<()> {
        self.inner.lock().map_err(to_py)
    }

    fn unlock(&self) -> PyResult<()> {
        self.inner.unlock().map_err(to_py)
    }

    /// Mutes (or unmutes) everyone but the moderators.
    #[pyo3(signature = (muted = true))]
    fn mute_all(&self, muted: bool) -> PyResult<()> {
        self.inner.mute_all(muted).map_err(to_py)
    }

    /// Hangs everyone up ("conference_ended"); the conference stays, empty, until destroyed.
    fn end(&self) -> PyResult<()> {
        self.inner.end().map_err(to_py)
    }

    /// Hangs up every leg and removes the conference.
    /// Plays `playback` to everyone, or to `participant` alone, after the
    /// prompts queued for them; returns its id. A "playback_finished" event
    /// says when it ends.
    #[pyo3(signature = (playback, participant = None))]
    fn play(&self, py: Python<'_>, playback: &Playback, participant: Option<u64>) -> PyResult<u64> {
        // Resampling a long file takes a while: not with the GIL held.
        let played = blocking(py, |_| match participant {
            None => self.inner.play(&playback.inner),
            Some(p) => self.inner.play_to(crate::ParticipantId(p), &playback.inner),
        })?;
        Ok(played.0)
    }

    /// Stops prompt `id` (playing or queued), or with None every prompt of the conference.
    #[pyo3(signature = (id = None))]
    fn stop_playback(&self, id: Option<u64>) -> PyResult<()> {
        match id {
            None => self.inner.stop_all_playback(),
            Some(id) => self.inner.stop_playback(crate::PlaybackId(id)),
        }
        .map_err(to_py)
    }

    /// Records the conference's mix to a WAV file at `path` (mono 16-bit at
    /// the conference's rate) and, with `per_participant`, each
    /// participant's own audio to `NAME-ID.wav` beside it. A slow disk drops
    /// frames ("recording_overrun" events) rather than hold up the audio.
    #[pyo3(signature = (path, per_participant = false))]
    fn start_recording(&self, py: Python<'_>, path: std::path::PathBuf, per_participant: bool) -> PyResult<()> {
        blocking(py, |_| self.inner.start_recording(&path, per_participant))
    }

    /// Leaves what follows out of the recording until `resume_recording`.
    fn pause_recording(&self) -> PyResult<()> {
        self.inner.pause_recording().map_err(to_py)
    }

    fn resume_recording(&self) -> PyResult<()> {
        self.inner.resume_recording().map_err(to_py)
    }

    /// Stops the recording; returns once its files are complete.
    fn stop_recording(&self, py: Python<'_>) -> PyResult<()> {
        blocking(py, |_| self.inner.stop_recording())
    }

    fn destroy(&self) -> PyResult<()> {
        self.inner.destroy().map_err(to_py)
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (*_args))]
    fn __exit__(&self, _args: &Bound<'_, pyo3::types::PyTuple>) -> bool {
        // Already gone (destroyed, or the endpoint stopped) is fine on exit.
        let _ = self.inner.destroy();
        false
    }

    fn __repr__(&self) -> String {
        format!("Conference({:?})", self.inner.name())
    }
}

/// A participant of a conference.
#[pyclass(frozen, module = "sipbridge._native")]
struct Participant {
    inner: crate::Participant,
}

#[pymethods]
impl Participant {
    #[getter]
    fn id(&self) -> u64 {
        self.inner.id().0
    }

    fn info(&self) -> PyResult<ParticipantInfo> {
        let i = self.inner.info().map_err(to_py)?;
        Ok(ParticipantInfo {
            id: i.id.0,
            conference: i.conference,
            kind: kind_name(i.kind),
            state: match i.state {
                ParticipantState::Calling => "calling",
                ParticipantState::Ringing => "ringing",
                ParticipantState::Connected => "connected",
            },
            remote: i.remote,
            muted: i.muted,
            volume_db: i.volume_db,
            noise_suppression: i.noise_suppression,
            talking: i.talking,
            on_hold: i.on_hold,
            moderator: i.moderator,
            admission: admission_name(i.admission),
            deaf: i.deaf,
            packets_received: i.packets_received,
            packets_sent: i.packets_sent,
            dropped: i.dropped,
            codec: i.codec.map(|c| c.encoding_name()),
            bytes_received: i.bytes_received,
            bytes_sent: i.bytes_sent,
            concealed_frames: i.concealed_frames,
            fec_recovered: i.fec_recovered,
            jitter_buffer_ms: i.jitter_buffer_ms,
            packets_lost: i.packets_lost,
            loss_percent: i.loss_percent,
            jitter_ms: i.jitter_ms,
            round_trip_ms: i.round_trip_ms,
            mos: i.mos,
        })
    }

    #[pyo3(signature = (muted = true))]
    fn mute(&self, muted: bool) -> PyResult<()> {
        self.inner.set_muted(muted).map_err(to_py)
    }

    fn unmute(&self) -> PyResult<()> {
        self.inner.set_muted(false).map_err(to_py)
    }

    /// Puts a SIP participant's call on hold (re-INVITE, inactive) or takes
    /// it off hold; a "hold" event comes when the phone answers.
    #[pyo3(signature = (held = true))]
    fn hold(&self, held: bool) -> PyResult<()> {
        self.inner.set_held(held).map_err(to_py)
    }

    /// Asks a SIP participant's phone to change codec ("PCMU", "PCMA",
    /// "G722" or "opus", one of its room's): a re-INVITE offering it alone.
    /// The leg switches when the phone answers (`info().codec` says so).
    fn set_codec(&self, codec: String) -> PyResult<()> {
        let codec = codec_list(&[codec])?[0];
        self.inner.set_codec(codec).map_err(to_py)
    }

    /// Transfers a SIP participant to `uri` (REFER): its phone calls `uri`,
    /// and once that is answered we hang up; "transfer_progress" events.
    fn transfer(&self, uri: &str) -> PyResult<()> {
        self.inner.transfer(uri).map_err(to_py)
    }

    /// Accepts the participant's "transfer_requested": its target is dialled
    /// into the participant's conference.
    fn accept_transfer(&self) -> PyResult<()> {
        self.inner.accept_transfer().map_err(to_py)
    }

    /// Refuses the participant's "transfer_requested" (603 Decline).
    fn reject_transfer(&self) -> PyResult<()> {
        self.inner.reject_transfer().map_err(to_py)
    }

    /// How loud the participant is in the mix, in dB (0 = as received).
    fn set_volume(&self, db: f32) -> PyResult<()> {
        self.inner.set_volume_db(db).map_err(to_py)
    }

    /// Noise suppression (RNNoise) of what this participant says; needs a 48 kHz conference.
    #[pyo3(signature = (on = true))]
    fn set_noise_suppression(&self, on: bool) -> PyResult<()> {
        self.inner.set_noise_suppression(on).map_err(to_py)
    }

    /// Sends key presses ('0'-'9', '*', '#', 'A'-'D') as RFC 4733 telephone-events.
    fn send_dtmf(&self, digits: &str) -> PyResult<()> {
        self.inner.send_dtmf(digits).map_err(to_py)
    }

    fn hangup(&self) -> PyResult<()> {
        self.inner.hangup().map_err(to_py)
    }

    /// Makes the participant a moderator (spared by mute_all; see the
    /// policy), or an ordinary participant. A caller typing its PIN is let in.
    #[pyo3(signature = (moderator = true))]
    fn set_moderator(&self, moderator: bool) -> PyResult<()> {
        self.inner.set_moderator(moderator).map_err(to_py)
    }

    /// Deafens the participant (it hears nothing of the conference; the others still hear it).
    #[pyo3(signature = (deaf = true))]
    fn set_deaf(&self, deaf: bool) -> PyResult<()> {
        self.inner.set_deaf(deaf).map_err(to_py)
    }

    /// Hangs the participant up; it leaves with reason "kicked".
    fn kick(&self) -> PyResult<()> {
        self.inner.kick().map_err(to_py)
    }

    /// Opens a tap on this participant's own audio (before mixing).
    fn tap(&self) -> PyResult<Tap> {
        let reader = self.inner.tap().map_err(to_py)?;
        Ok(Tap {
            frame_samples: reader.frame_samples(),
            participant: reader.participant().id().0,
            inner: Mutex::new(Some(reader)),
        })
    }

    /// Hears only these participants (an empty list: nobody), or with None everyone.
    fn set_hears_only(&self, participants: Option<Vec<u64>>) -> PyResult<()> {
        let ids = participants.map(|ids| ids.into_iter().map(crate::ParticipantId).collect::<Vec<_>>());
        self.inner.set_hears_only(ids.as_deref()).map_err(to_py)
    }

    /// Heard only by these participants (an empty list: nobody), or with None by everyone.
    fn set_heard_only_by(&self, participants: Option<Vec<u64>>) -> PyResult<()> {
        let ids = participants.map(|ids| ids.into_iter().map(crate::ParticipantId).collect::<Vec<_>>());
        self.inner.set_heard_only_by(ids.as_deref()).map_err(to_py)
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (*_args))]
    fn __exit__(&self, _args: &Bound<'_, pyo3::types::PyTuple>) -> bool {
        let _ = self.inner.hangup();
        false
    }

    fn __repr__(&self) -> String {
        format!("Participant({})", self.inner.id().0)
    }
}

/// A tap on one participant's own audio: 20 ms frames with a timestamp (in
/// samples) and whether it was talking. `close()` or leaving a `with` block closes it.
#[pyclass(frozen, module = "sipbridge._native")]
struct Tap {
    participant: u64,
    frame_samples: usize,
    inner: Mutex<Option<crate::TapReader>>,
}

#[pymethods]
impl Tap {
    #[getter]
    fn participant(&self) -> u64 {
        self.participant
    }

    #[getter]
    fn frame_samples(&self) -> usize {
        self.frame_samples
    }

    /// Frames dropped because they were not read in time.
    #[getter]
    fn frames_dropped(&self) -> u64 {
        self.inner.lock().as_ref().map_or(0, |reader| reader.frames_dropped())
    }

    /// The next frame: (int16 samples, timestamp in samples, talking).
    #[pyo3(signature = (timeout = 1.0))]
    fn read_frame<'py>(
        &self,
        py: Python<'py>,
        timeout: Option<f64>,
    ) -> PyResult<(Bound<'py, PyArray1<i16>>, u64, bool)> {
        let (frame, info) = read_frame(py, timeout, self.frame_samples, |frame, timeout, interrupt| {
            match self.inner.lock().as_mut() {
                Some(reader) => reader.read_frame_interruptible(frame, timeout, interrupt),
                None => Err(Error::InvalidArgument("the tap is closed".into())),
            }
        })?;
        Ok((frame, info.timestamp, info.talking))
    }

    fn close(&self) {
        self.inner.lock().take();
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (*_args))]
    fn __exit__(&self, _args: &Bound<'_, pyo3::types::PyTuple>) -> bool {
        self.close();
        false
    }
}

/// A snapshot of a participant.
#[pyclass(frozen, get_all, module = "sipbridge._native")]
struct ParticipantInfo {
    id: u64,
    conference: String,
    kind: &'static str,
    state: &'static str,
    remote: Option<String>,
    muted: bool,
    volume_db: f32,
    noise_suppression: bool,
    talking: bool,
    on_hold: bool,
    moderator: bool,
    /// "admitted", "entering_pin" or "waiting_for_moderator".
    admission: &'static str,
    deaf: bool,
    packets_received: u64,
    packets_sent: u64,
    dropped: u64,
    codec: Option<&'static str>,
    bytes_received: u64,
    bytes_sent: u64,
    concealed_frames: u64,
    fec_recovered: u64,
    jitter_buffer_ms: u32,
    packets_lost: u64,
    loss_percent: f32,
    jitter_ms: f32,
    round_trip_ms: Option<f32>,
    mos: Option<f32>,
}

#[pymethods]
impl ParticipantInfo {
    fn __repr__(&self) -> String {
        format!(
            "ParticipantInfo(id={}, conference={:?}, kind={:?}, state={:?}, remote={:?}, codec={:?}, muted={}, volume_db={}, packets_received={}, packets_sent={}, loss_percent={}, mos={:?})",
            self.id, self.conference, self.kind, self.state, self.remote, self.codec, self.muted, self.volume_db, self.packets_received, self.packets_sent, self.loss_percent, self.mos
        )
    }
}

/// A conference's rules (see the Rust `ConferencePolicy`): what
/// `Conference.set_policy` takes and `Conference.policy` reads, and what
/// `Endpoint(room_policy=...)` gives the rooms callers create.
#[pyclass(frozen, module = "sipbridge._native")]
struct ConferencePolicy {
    inner: crate::ConferencePolicy,
}

#[pymethods]
impl ConferencePolicy {
    /// `max_participants` (callers beyond get 486), `pin` and
    /// `moderator_pin` (typed by callers, then '#'; three tries), `locked`
    /// (callers get 403), `wait_for_moderator` (others hear `hold_music`
    /// until one is there), `end_when_moderator_leaves`, `mute_on_join`,
    /// `pin_prompt`, `pin_timeout` in seconds, `codecs` (names in order
    /// of preference, in place of the endpoint's), and `full_prompt`
    /// (announced to callers the room is full for, then hung up, instead
    /// of 486).
    #[new]
    #[pyo3(signature = (
        *, max_participants = None, pin = None, moderator_pin = None, locked = false, wait_for_moderator = false,
        end_when_moderator_leaves = false, mute_on_join = false, pin_prompt = None, hold_music = None,
        pin_timeout = 20.0, codecs = None, full_prompt = None
    ))]
    #[allow(clippy::too_many_arguments)] // Python keywords, one per policy field
    fn new(
        max_participants: Option<usize>,
        pin: Option<String>,
        moderator_pin: Option<String>,
        locked: bool,
        wait_for_moderator: bool,
        end_when_moderator_leaves: bool,
        mute_on_join: bool,
        pin_prompt: Option<&Playback>,
        hold_music: Option<&Playback>,
        pin_timeout: f64,
        codecs: Option<Vec<String>>,
        full_prompt: Option<&Playback>,
    ) -> PyResult<Self> {
        let inner = crate::ConferencePolicy {
            max_participants,
            pin,
            moderator_pin,
            locked,
            wait_for_moderator,
            end_when_moderator_leaves,
            mute_on_join,
            pin_prompt: pin_prompt.map(|p| p.inner.clone()),
            hold_music: hold_music.map(|p| p.inner.clone()),
            full_prompt: full_prompt.map(|p| p.inner.clone()),
            pin_timeout: seconds(Some(pin_timeout))?.unwrap_or_default(),
            codecs: codecs.as_deref().map(codec_list).transpose()?,
        };
        inner.validate().map_err(to_py)?;
        Ok(Self { inner })
    }

    #[getter]
    fn max_participants(&self) -> Option<usize> {
        self.inner.max_participants
    }

    #[getter]
    fn pin(&self) -> Option<&str> {
        self.inner.pin.as_deref()
    }

    #[getter]
    fn moderator_pin(&self) -> Option<&str> {
        self.inner.moderator_pin.as_deref()
    }

    #[getter]
    fn locked(&self) -> bool {
        self.inner.locked
    }

    #[getter]
    fn wait_for_moderator(&self) -> bool {
        self.inner.wait_for_moderator
    }

    #[getter]
    fn end_when_moderator_leaves(&self) -> bool {
        self.inner.end_when_moderator_leaves
    }

    #[getter]
    fn mute_on_join(&self) -> bool {
        self.inner.mute_on_join
    }

    #[getter]
    fn pin_timeout(&self) -> f64 {
        self.inner.pin_timeout.as_secs_f64()
    }

    /// The room's codecs by name, or None for the endpoint's.
    #[getter]
    fn codecs(&self) -> Option<Vec<&'static str>> {
        self.inner.codecs.as_ref().map(|codecs| codecs.iter().map(|c| c.encoding_name()).collect())
    }

    fn __repr__(&self) -> String {
        // The PINs are secrets: only whether there are any.
        let yes = |b: bool| if b { "True" } else { "False" };
        let p = &self.inner;
        format!(
            "ConferencePolicy(max_participants={:?}, pin={}, moderator_pin={}, locked={}, wait_for_moderator={}, end_when_moderator_leaves={}, mute_on_join={}, pin_timeout={}, codecs={:?})",
            p.max_participants,
            yes(p.pin.is_some()),
            yes(p.moderator_pin.is_some()),
            yes(p.locked),
            yes(p.wait_for_moderator),
            yes(p.end_when_moderator_leaves),
            yes(p.mute_on_join),
            p.pin_timeout.as_secs_f64(),
            self.codecs()
        )
    }
}

/// Samples to send: a 1-D int16 numpy array, or a sequence of ints.
#[derive(FromPyObject)]
enum Samples<'py> {
    Array(PyReadonlyArray1<'py, i16>),
    Sequence(Vec<i16>),
}

impl Samples<'_> {
    fn to_vec(&self) -> Vec<i16> {
        match self {
            Samples::Array(a) => match a.as_slice() {
                Ok(s) => s.to_vec(),
                Err(_) => a.as_array().iter().copied().collect(),
            },
            Samples::Sequence(v) => v.clone(),
        }
    }
}

/// A prompt to play into a conference: a WAV file, PCM, or a tone, decoded
/// once and played as often as wanted.
#[pyclass(frozen, module = "sipbridge._native")]
struct Playback {
    inner: crate::Playback,
}

#[pymethods]
impl Playback {
    /// Decodes a WAV file (8/16/24/32-bit integer or 32-bit float PCM, any
    /// rate, mono or several channels, mixed down).
    #[staticmethod]
    fn wav_file(py: Python<'_>, path: std::path::PathBuf) -> PyResult<Self> {
        let inner = blocking(py, |_| Ok(crate::Playback::wav_file(path)?))?;
        Ok(Self { inner })
    }

    /// Mono int16 samples at the rate of the conference the prompt is played in.
    #[staticmethod]
    fn pcm(samples: Samples<'_>) -> Self {
        Self { inner: crate::Playback::pcm(samples.to_vec()) }
    }

    /// The sum of sines at `frequencies` (1 to 4, Hz), each at `level_dbov`
    /// (-60 to -3), lasting `duration` seconds (at most 60).
    #[staticmethod]
    #[pyo3(signature = (frequencies, duration, level_dbov = -20.0))]
    fn tone(frequencies: Vec<f32>, duration: f64, level_dbov: f32) -> PyResult<Self> {
        let duration = seconds(Some(duration))?.unwrap_or_default();
        let inner = crate::Playback::tone(&frequencies, duration, level_dbov).map_err(|e| to_py(Error::from(e)))?;
        Ok(Self { inner })
    }
}

/// A participant the application feeds with PCM and listens to.
#[pyclass(frozen, module = "sipbridge._native")]
struct LocalParticipant {
    participant: crate::Participant,
    inner: Mutex<crate::LocalParticipant>,
}

#[pymethods]
impl LocalParticipant {
    #[getter]
    fn id(&self) -> u64 {
        self.participant.id().0
    }

    #[getter]
    fn participant(&self) -> Participant {
        Participant { inner: self.participant.clone() }
    }

    /// Samples in one 20 ms frame (the conference's rate / 50).
    #[getter]
    fn frame_samples(&self) -> usize {
        self.inner.lock().frame_samples()
    }

    /// Queues samples (mono int16 at the conference's rate) for the mixer, waiting for room as it
    /// plays them in real time (the queue holds one second).
    #[pyo3(signature = (samples, timeout = None))]
    fn write(&self, py: Python<'_>, samples: Samples<'_>, timeout: Option<f64>) -> PyResult<()> {
        let timeout = seconds(timeout)?;
        let owned = samples.to_vec();
        blocking(py, |interrupt| self.inner.lock().write_all_interruptible(&owned, timeout, interrupt))
    }

    /// The next 20 ms frame of what this participant hears, as int16 numpy array.
    #[pyo3(signature = (timeout = 1.0))]
    fn read_frame<'py>(&self, py: Python<'py>, timeout: Option<f64>) -> PyResult<Bound<'py, PyArray1<i16>>> {
        let frame_samples = self.inner.lock().frame_samples();
        read_frame(py, timeout, frame_samples, |frame, timeout, interrupt| {
            self.inner.lock().read_frame_interruptible(frame, timeout, interrupt)
        })
        .map(|(frame, ())| frame)
    }

    fn hangup(&self) -> PyResult<()> {
        self.participant.hangup().map_err(to_py)
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (*_args))]
    fn __exit__(&self, _args: &Bound<'_, pyo3::types::PyTuple>) -> bool {
        let _ = self.participant.hangup();
        false
    }
}

/// A feed of a conference's mix.
#[pyclass(frozen, module = "sipbridge._native")]
struct FrameReader {
    inner: Mutex<crate::FrameReader>,
}

#[pymethods]
impl FrameReader {
    /// Samples in one 20 ms frame (the conference's rate / 50).
    #[getter]
    fn frame_samples(&self) -> usize {
        self.inner.lock().frame_samples()
    }

    /// The next 20 ms frame of the mix, as an int16 numpy array.
    #[pyo3(signature = (timeout = 1.0))]
    fn read_frame<'py>(&self, py: Python<'py>, timeout: Option<f64>) -> PyResult<Bound<'py, PyArray1<i16>>> {
        let frame_samples = self.inner.lock().frame_samples();
        read_frame(py, timeout, frame_samples, |frame, timeout, interrupt| {
            self.inner.lock().read_frame_interruptible(frame, timeout, interrupt)
        })
        .map(|(frame, ())| frame)
    }
}

/// Something that happened. `kind` says what; fields that do not apply are None.
#[pyclass(frozen, get_all, module = "sipbridge._native")]
struct Event {
    kind: &'static str,
    conference: String,
    participant: Option<u64>,
    participant_kind: Option<&'static str>,
    remote: Option<String>,
    reason: Option<&'static str>,
    status: Option<u16>,
    status_reason: Option<String>,
    packets_received: Option<u64>,
    packets_sent: Option<u64>,
    digit: Option<char>,
    duration_ms: Option<u32>,
    talking: Option<bool>,
    held: Option<bool>,
    /// For "registration": the account, its AOR, and where it stands
    /// ("registered", "failed" or "unregistered"); `expires` when registered,
    /// `status` and `status_reason` when failed.
    account: Option<u64>,
    aor: Option<String>,
    registration: Option<&'static str>,
    expires: Option<u32>,
    playback: Option<u64>,
    completed: Option<bool>,
    path: Option<String>,
    frames_dropped: Option<u64>,
    /// For "locked": whether the conference is locked now; for "muted":
    /// whether the participant is; for "pin_accepted": whether the PIN made
    /// it a moderator; for "pin_rejected": tries left (0: it is hung up).
    locked: Option<bool>,
    muted: Option<bool>,
    moderator: Option<bool>,
    tries_left: Option<u32>,
    /// For "transfer_requested": where the phone asks to be transferred;
    /// for "transfer_progress": `status`, and `done` once it is over.
    target: Option<String>,
    done: Option<bool>,
    /// For "participant_moved": the conference it left (`conference` is where it went).
    moved_from: Option<String>,
}

impl Event {
    fn new(kind: &'static str, conference: String, participant: Option<crate::ParticipantId>) -> Self {
        Self {
            kind,
            conference,
            participant: participant.map(|p| p.0),
            participant_kind: None,
            remote: None,
            reason: None,
            status: None,
            status_reason: None,
            packets_received: None,
            packets_sent: None,
            digit: None,
            duration_ms: None,
            talking: None,
            held: None,
            account: None,
            aor: None,
            registration: None,
            expires: None,
            playback: None,
            completed: None,
            path: None,
            frames_dropped: None,
            locked: None,
            muted: None,
            moderator: None,
            tries_left: None,
            target: None,
            done: None,
            moved_from: None,
        }
    }
}

impl From<crate::Event> for Event {
    fn from(event: crate::Event) -> Self {
        use crate::Event as E;
        match event {
            E::ConferenceCreated { conference } => Event::new("conference_created", conference, None),
            E::ConferenceDestroyed { conference } => Event::new("conference_destroyed", conference, None),
            E::ParticipantJoined { conference, participant, kind, remote } => Event {
                participant_kind: Some(kind_name(kind)),
                remote: Some(remote),
                ..Event::new("participant_joined", conference, Some(participant))
            },
            E::ParticipantLeft { conference, participant, reason, packets_received, packets_sent } => Event {
                reason: Some(reason_name(reason)),
                packets_received: Some(packets_received),
                packets_sent: Some(packets_sent),
                ..Event::new("participant_left", conference, Some(participant))
            },
            E::Ringing { conference, participant } => Event::new("ringing", conference, Some(participant)),
            E::Answered { conference, participant } => Event::new("answered", conference, Some(participant)),
            E::MediaTimeout { conference, participant } => Event::new("media_timeout", conference, Some(participant)),
            E::Talking { conference, participant, talking } => {
                Event { talking: Some(talking), ..Event::new("talking", conference, Some(participant)) }
            }
            E::TransferRequested { conference, participant, target } => {
                Event { target: Some(target), ..Event::new("transfer_requested", conference, Some(participant)) }
            }
            E::TransferProgress { conference, participant, status, done } => Event {
                status: Some(status),
                done: Some(done),
                ..Event::new("transfer_progress", conference, Some(participant))
            },
            E::Hold { conference, participant, held } => {
                Event { held: Some(held), ..Event::new("hold", conference, Some(participant)) }
            }
            E::Dtmf { conference, participant, digit, duration_ms } => Event {
                digit: Some(digit),
                duration_ms: Some(duration_ms),
                ..Event::new("dtmf", conference, Some(participant))
            },
            E::Registration { account, aor, state } => {
                let (registration, expires, status, status_reason) = match state {
                    RegistrationState::Registered { expires } => ("registered", Some(expires), None, None),
                    RegistrationState::Failed { status, reason } => ("failed", None, Some(status), Some(reason)),
                    RegistrationState::Unregistered => ("unregistered", None, None, None),
                };
                Event {
                    account: Some(account.0),
                    aor: Some(aor),
                    registration: Some(registration),
                    expires,
                    status,
                    status_reason,
                    ..Event::new("registration", String::new(), None)
                }
            }
            E::PlaybackFinished { conference, participant, playback, end } => Event {
                playback: Some(playback.0),
                completed: Some(end == crate::PlaybackEnd::Completed),
                ..Event::new("playback_finished", conference, participant)
            },
            E::RecordingStarted { conference, participant, path } => {
                Event { path: Some(path), ..Event::new("recording_started", conference, participant) }
            }
            E::RecordingStopped { conference, participant, path, frames_dropped } => Event {
                path: Some(path),
                frames_dropped: Some(frames_dropped),
                ..Event::new("recording_stopped", conference, participant)
            },
            E::RecordingOverrun { conference, participant, path, frames_dropped } => Event {
                path: Some(path),
                frames_dropped: Some(frames_dropped),
                ..Event::new("recording_overrun", conference, participant)
            },
            E::ModeratorJoined { conference, participant } => {
                Event::new("moderator_joined", conference, Some(participant))
            }
            E::Locked { conference, locked } => {
                Event { locked: Some(locked), ..Event::new("locked", conference, None) }
            }
            E::Muted { conference, participant, muted } => {
                Event { muted: Some(muted), ..Event::new("muted", conference, Some(participant)) }
            }
            E::PinAccepted { conference, participant, moderator } => {
                Event { moderator: Some(moderator), ..Event::new("pin_accepted", conference, Some(participant)) }
            }
            E::PinRejected { conference, participant, tries_left } => {
                Event { tries_left: Some(tries_left), ..Event::new("pin_rejected", conference, Some(participant)) }
            }
            E::ConferenceEmpty { conference } => Event::new("conference_empty", conference, None),
            E::ConferenceEnded { conference } => Event::new("conference_ended", conference, None),
            E::TapOverrun { conference, participant, frames_dropped } => Event {
                frames_dropped: Some(frames_dropped),
                ..Event::new("tap_overrun", conference, Some(participant))
            },
            E::ParticipantMoved { participant, from, to } => {
                Event { moved_from: Some(from), ..Event::new("participant_moved", to, Some(participant)) }
            }
            E::DialFailed { conference, participant, status, reason } => Event {
                status: Some(status),
                status_reason: Some(reason),
                ..Event::new("dial_failed", conference, Some(participant))
            },
        }
    }
}

#[pymethods]
impl Event {
    fn __repr__(&self) -> String {
        let mut parts = vec![format!("kind={:?}", self.kind), format!("conference={:?}", self.conference)];
        if let Some(p) = self.participant {
            parts.push(format!("participant={p}"));
        }
        for (name, value) in [("participant_kind", self.participant_kind), ("reason", self.reason)] {
            if let Some(v) = value {
                parts.push(format!("{name}={v:?}"));
            }
        }
        if let Some(r) = &self.remote {
            parts.push(format!("remote={r:?}"));
        }
        if let (Some(d), Some(ms)) = (self.digit, self.duration_ms) {
            parts.push(format!("digit={d:?}, duration_ms={ms}"));
        }
        if let Some(p) = self.playback {
            parts.push(format!("playback={p}"));
        }
        if let Some(p) = &self.path {
            parts.push(format!("path={p:?}"));
        }
        if let Some(from) = &self.moved_from {
            parts.push(format!("moved_from={from:?}"));
        }
        if let Some(n) = self.frames_dropped {
            parts.push(format!("frames_dropped={n}"));
        }
        if let Some(n) = self.tries_left {
            parts.push(format!("tries_left={n}"));
        }
        for (name, value) in [
            ("talking", self.talking),
            ("held", self.held),
            ("completed", self.completed),
            ("locked", self.locked),
            ("muted", self.muted),
            ("moderator", self.moderator),
        ] {
            if let Some(v) = value {
                parts.push(format!("{name}={}", if v { "True" } else { "False" }));
            }
        }
        if let (Some(account), Some(aor), Some(state)) = (self.account, &self.aor, self.registration) {
            parts.push(format!("account={account}, aor={aor:?}, registration={state:?}"));
        }
        if let Some(expires) = self.expires {
            parts.push(format!("expires={expires}"));
        }
        if let (Some(s), Some(r)) = (self.status, &self.status_reason) {
            parts.push(format!("status={s}, status_reason={r:?}"));
        }
        format!("Event({})", parts.join(", "))
    }
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add_class::<Endpoint>()?;
    m.add_class::<Conference>()?;
    m.add_class::<Participant>()?;
    m.add_class::<ParticipantInfo>()?;
    m.add_class::<LocalParticipant>()?;
    m.add_class::<FrameReader>()?;
    m.add_class::<Tap>()?;
    m.add_class::<Event>()?;
    m.add_class::<Playback>()?;
    m.add_class::<ConferencePolicy>()?;
    for (name, class) in [
        ("SipBridgeError", py.get_type::<SipBridgeError>()),
        ("InvalidArgumentError", py.get_type::<InvalidArgumentError>()),
        ("NotFoundError", py.get_type::<NotFoundError>()),
        ("AlreadyExistsError", py.get_type::<AlreadyExistsError>()),
        ("StoppedError", py.get_type::<StoppedError>()),
        ("TimeoutError", py.get_type::<TimeoutError>()),
        ("SipError", py.get_type::<SipError>()),
        ("SdpError", py.get_type::<SdpError>()),
        ("NetworkError", py.get_type::<NetworkError>()),
        ("LockedError", py.get_type::<LockedError>()),
        ("FullError", py.get_type::<FullError>()),
    ] {
        m.add(name, class)?;
    }
    m.add("DEFAULT_SAMPLE_RATE", DEFAULT_SAMPLE_RATE)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
