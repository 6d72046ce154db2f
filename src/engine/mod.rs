//! The driver: owns the threads and sockets and feeds the sans-IO parts.
//!
//! - a tokio runtime runs the SIP task (one UDP socket, the [`UserAgent`])
//!   and one receive task per RTP leg;
//! - one mixer thread runs [`Mixer::run`];
//! - one reaper thread frees what the mixer lets go of;
//! - the control plane (conference and participant registry) sits behind a
//!   mutex that application threads and the SIP task take, never the mixer.
//!
//! [`UserAgent`]: crate::sip::UserAgent

mod accounts;
mod dns;
mod media_task;
mod policy;
mod ports;
mod recorder;
mod sip_driver;
mod transport;

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use parking_lot::Mutex;

use crate::api::{EndpointConfig, Event, LeaveReason, ParticipantKind, ParticipantState};
use crate::media::codec::{CodecKind, EncoderKey};
use crate::media::denoise::{NoiseSuppressor, DENOISE_SAMPLE_RATE};
use crate::media::mixer::{
    ConferenceControls, ConferenceId, ConferenceMix, Garbage, LegCodec, LegMedia, Mixer, MixerCommand, MixerStats,
    ParticipantControls, ParticipantId, ParticipantMix, PlaybackId, PromptMix, RecordSink, Routing, SharedEncoder,
    TalkerPolicy, TapFrame, TapSink, MAX_SHARED_ENCODERS,
};
use crate::policy::ConferencePolicy;
use crate::sip::auth::Authenticator;
use crate::sip::registrar::Registrar;
use crate::{Error, Result};
use transport::{Connections, TlsContext};

pub(crate) use accounts::account_settings;
use policy::PolicyAudio;
pub(crate) use policy::PolicyState;
pub(crate) use ports::PortPool;
use recorder::Recorder;
pub(crate) use sip_driver::SipCommand;

/// Events kept for an application that does not read them, before dropping.
const EVENT_QUEUE: usize = 10_000;
/// Commands in flight to the mixer.
const MIXER_QUEUE: usize = 4096;
/// A participant's tap holds one second, the conference mix feed's size.
const TAP_TICKS: usize = 50;
/// Tap and recording overruns are reported at most this often per ring, so
/// a stuck reader or a dead disk does not flood the events.
const OVERRUN_REPORT_EVERY: Duration = Duration::from_secs(1);
/// How long a move across mixer threads waits for the first thread to let
/// the participant go (it does at its next tick, within 20 ms).
const HANDOVER_TIMEOUT: Duration = Duration::from_secs(1);

/// Hands events to the application from any thread (the reaper reports
/// finished prompts); what the application's queue cannot take is counted.
#[derive(Clone)]
pub(crate) struct EventSink {
    events: Sender<Event>,
    pub dropped: Arc<AtomicU64>,
}

impl EventSink {
    pub fn emit(&self, event: Event) {
        // The app gets every event; the log shows them only when asked,
        // since formatting one per join and leave costs a busy server.
        tracing::debug!(?event, "event");
        if self.events.try_send(event).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A conference in the registry.
pub(crate) struct ConferenceEntry {
    pub id: ConferenceId,
    pub controls: Arc<ConferenceControls>,
    pub participants: BTreeSet<ParticipantId>,
    /// The rate the conference mixes at.
    pub sample_rate: u32,
    /// Whether participants who join get noise suppression.
    pub noise_suppression: bool,
    /// Whether callers must authenticate (digest) to join.
    pub require_authentication: bool,
    /// Created by a caller's INVITE rather than the app: it ends when its last
    /// participant leaves, so callers cannot pile up empty rooms.
    pub on_demand: bool,
    /// The recording running, if any.
    recording: Option<Recorder>,
    pub policy: ConferencePolicy,
    /// The policy's prompts at the conference's rate, once a policy is set
    /// (the default one plays none).
    policy_audio: Option<PolicyAudio>,
    /// It was ended and has participants still leaving.
    ending: bool,
}

impl ConferenceEntry {
    fn policy_audio(&self) -> Result<&PolicyAudio> {
        self.policy_audio.as_ref().ok_or_else(|| Error::NotFound("the policy's prompts".into()))
    }
}

/// Who creates a conference.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Creator {
    /// The application: the name must be new; the room lasts until destroyed.
    App,
    /// An INVITE to a room that may exist; a new room ends when it empties.
    Caller,
}

/// A participant in the registry.
pub(crate) struct ParticipantEntry {
    pub conference: String,
    /// The conference it belongs to, which may be gone and its name reused.
    pub conference_id: ConferenceId,
    pub kind: ParticipantKind,
    pub remote: Option<String>,
    pub state: ParticipantState,
    pub controls: Arc<ParticipantControls>,
    pub volume_db: f32,
    /// Whether the mixer has it (a dial in progress does not yet).
    pub in_mixer: bool,
    /// Digits for the mixer to send, on an RTP leg.
    pub dtmf: Option<DtmfQueue>,
    /// The negotiated codec, once media runs.
    pub codec: Option<CodecKind>,
    /// Whether its audio is cleaned of noise before it is mixed.
    pub noise_suppression: bool,
    /// The mixer's count of talking changes that events have been sent for.
    pub talk_changes_seen: u32,
    /// Its role and admission under the conference policy.
    pub policy: PolicyState,
    /// How its leg encodes, once it has one: a conference it moves to needs
    /// a shared encoder of that kind.
    pub encoder_key: Option<EncoderKey>,
    /// Who it hears and who hears it; kept here for a leg that joins the mixer later.
    pub routing: Routing,
    /// Its tap's overruns, while the app has one open.
    pub tap: Option<OverrunWatch>,
}

/// The frames the mixer could not put in a ring (a tap the app reads too
/// slowly, a recording the disk does not keep up with), as the control side
/// watches them to report overruns.
pub(crate) struct OverrunWatch {
    dropped: Arc<AtomicU64>,
    reported: u64,
    last_report: Option<Instant>,
}

impl OverrunWatch {
    pub fn new(dropped: Arc<AtomicU64>) -> Self {
        Self { dropped, reported: 0, last_report: None }
    }

    /// The frames dropped so far, when more were dropped since the last
    /// report and that report is old enough.
    pub fn report_due(&mut self, now: Instant) -> Option<u64> {
        let dropped = self.dropped.load(Ordering::Relaxed);
        let due = self.last_report.is_none_or(|at| now.duration_since(at) >= OVERRUN_REPORT_EVERY);
        if dropped <= self.reported || !due {
            return None;
        }
        self.reported = dropped;
        self.last_report = Some(now);
        Some(dropped)
    }
}

/// The app's end of a participant's tap.
pub(crate) struct TapEnds {
    pub samples: rtrb::Consumer<i16>,
    pub frames: rtrb::Consumer<TapFrame>,
    pub dropped: Arc<AtomicU64>,
    pub frame: usize,
}

impl ParticipantEntry {
    /// A new entry; `Shared::add_participant` fills in where it belongs.
    pub fn new(
        kind: ParticipantKind,
        remote: Option<String>,
        state: ParticipantState,
        controls: Arc<ParticipantControls>,
    ) -> Self {
        Self {
            conference: String::new(),
            conference_id: ConferenceId(0),
            kind,
            remote,
            state,
            controls,
            volume_db: 0.0,
            in_mixer: false,
            dtmf: None,
            codec: None,
            noise_suppression: false,
            talk_changes_seen: 0,
            policy: PolicyState::default(),
            encoder_key: None,
            routing: Routing::default(),
            tap: None,
        }
    }
}

#[derive(Default)]
pub(crate) struct Registry {
    pub conferences: HashMap<String, ConferenceEntry>,
    pub participants: HashMap<ParticipantId, ParticipantEntry>,
}

/// The control side of the mixer threads: places each conference on one
/// thread, routes commands to it, and makes sure every vector a mixer
/// pushes into has room, so no mixer ever grows one.
struct MixerControl {
    shards: Vec<MixerShard>,
    conferences: HashMap<ConferenceId, ConferenceSlot>,
}

/// One mixer thread, as the control side sees it.
struct MixerShard {
    commands: Sender<MixerCommand>,
    /// Conferences it has, and room for.
    conferences: (usize, usize),
    participants: usize,
}

/// Where a conference mixes, and what its vectors hold.
struct ConferenceSlot {
    shard: usize,
    /// Participants it has, and room for.
    participants: (usize, usize),
    /// The rate it mixes at, and the encoders it shares among listeners.
    sample_rate: u32,
    shared_encoders: Vec<EncoderKey>,
}

impl MixerShard {
    fn send(&self, command: MixerCommand) -> Result<()> {
        self.commands.send_timeout(command, Duration::from_secs(1)).map_err(|_| Error::Stopped)
    }
}

impl MixerControl {
    fn slot(&mut self, conference: ConferenceId) -> Result<&mut ConferenceSlot> {
        self.conferences.get_mut(&conference).ok_or_else(|| Error::NotFound("conference".into()))
    }

    /// Sends `command` to the thread that mixes `conference`.
    fn send(&self, conference: ConferenceId, command: MixerCommand) -> Result<()> {
        let slot = self.conferences.get(&conference).ok_or_else(|| Error::NotFound("conference".into()))?;
        self.shards[slot.shard].send(command)
    }

    fn stop(&self) {
        for shard in &self.shards {
            let _ = shard.send(MixerCommand::Stop);
        }
    }

    /// Puts a new conference on the thread with the fewest participants
    /// (then the fewest conferences): a conference never spans threads.
    fn add_conference(&mut self, conference: Box<ConferenceMix>, sample_rate: u32, capacity: usize) -> Result<()> {
        let index = (0..self.shards.len())
            .min_by_key(|&i| (self.shards[i].participants, self.shards[i].conferences.0))
            .ok_or(Error::Stopped)?;
        let shard = &mut self.shards[index];
        let (len, cap) = shard.conferences;
        if len == cap {
            shard.send(MixerCommand::ConferenceStorage(Vec::with_capacity(cap * 2)))?;
            shard.conferences.1 = cap * 2;
        }
        let id = conference.id;
        shard.send(MixerCommand::AddConference(conference))?;
        shard.conferences.0 += 1;
        let slot =
            ConferenceSlot { shard: index, participants: (0, capacity), sample_rate, shared_encoders: Vec::new() };
        self.conferences.insert(id, slot);
        Ok(())
    }

    fn remove_conference(&mut self, id: ConferenceId) -> Result<()> {
        let slot = self.conferences.remove(&id).ok_or_else(|| Error::NotFound("conference".into()))?;
        let shard = &mut self.shards[slot.shard];
        shard.conferences.0 -= 1;
        shard.participants -= slot.participants.0;
        shard.send(MixerCommand::RemoveConference(id))
    }

    fn add_participant(&mut self, conference: ConferenceId, participant: Box<ParticipantMix>) -> Result<()> {
        let index = self.make_room(conference, participant.encoder_key())?;
        self.shards[index].send(MixerCommand::AddParticipant(conference, participant))
    }

    /// Readies `conference` for one more participant, whose leg encodes as
    /// `key` says, and counts it; returns the conference's thread.
    fn make_room(&mut self, conference: ConferenceId, key: Option<EncoderKey>) -> Result<usize> {
        let index = self.share_encoder(conference, key)?;
        let slot = self.slot(conference)?;
        let (len, cap) = slot.participants;
        if len == cap {
            self.shards[index].send(MixerCommand::ParticipantStorage(conference, Vec::with_capacity(cap * 2)))?;
        }
        let slot = self.slot(conference)?;
        slot.participants = (len + 1, if len == cap { cap * 2 } else { cap });
        self.shards[index].participants += 1;
        Ok(index)
    }

    /// Gives `conference` an encoder for the listeners whose legs encode as
    /// `key` says, if it has none and room for one: the first leg of its
    /// kind brings it. Returns the conference's thread.
    fn share_encoder(&mut self, conference: ConferenceId, key: Option<EncoderKey>) -> Result<usize> {
        let slot = self.slot(conference)?;
        let (index, sample_rate) = (slot.shard, slot.sample_rate);
        let new_key =
            key.filter(|key| !slot.shared_encoders.contains(key) && slot.shared_encoders.len() < MAX_SHARED_ENCODERS);
        if let Some(key) = new_key {
            let codec = key.new_coder().map_err(|e| Error::InvalidArgument(e.to_string()))?;
            let shared = SharedEncoder::new(codec, sample_rate).map_err(|e| Error::InvalidArgument(e.to_string()))?;
            self.shards[index].send(MixerCommand::AddSharedEncoder(conference, Box::new(shared)))?;
            self.slot(conference)?.shared_encoders.push(key);
        }
        Ok(index)
    }

    /// Changes the codec of a participant's RTP leg, after giving the
    /// conference a shared encoder for it.
    fn set_leg_codec(&mut self, conference: ConferenceId, participant: ParticipantId, codec: LegCodec) -> Result<()> {
        let index = self.share_encoder(conference, Some(codec.encoder_key()))?;
        self.shards[index].send(MixerCommand::SetLegCodec(conference, participant, Box::new(codec)))
    }

    /// Stops counting a participant of `conference`; returns the conference's thread.
    fn forget_participant(&mut self, conference: ConferenceId) -> Result<usize> {
        let slot = self.slot(conference)?;
        let index = slot.shard;
        if slot.participants.0 > 0 {
            slot.participants.0 -= 1;
            self.shards[index].participants -= 1;
        }
        Ok(index)
    }

    fn remove_participant(&mut self, conference: ConferenceId, participant: ParticipantId) -> Result<()> {
        let index = self.forget_participant(conference)?;
        self.shards[index].send(MixerCommand::RemoveParticipant(conference, participant))
    }

    /// Moves a participant (whose leg encodes as `key` says) between two
    /// conferences. On one thread that is one command, between two ticks.
    /// Across threads the first thread hands the participant out through
    /// the mailbox returned, which the caller must pass to
    /// [`MixerControl::add_participant`]: the two threads tick on their own
    /// schedules, so no command could move it at once on both, and one
    /// tick of its audio (the first thread's) is skipped.
    fn move_participant(
        &mut self,
        from: ConferenceId,
        to: ConferenceId,
        participant: ParticipantId,
        key: Option<EncoderKey>,
    ) -> Result<Option<rtrb::Consumer<Box<ParticipantMix>>>> {
        let (from_shard, to_shard) = (self.slot(from)?.shard, self.slot(to)?.shard);
        if from_shard != to_shard {
            let (mailbox, arrival) = rtrb::RingBuffer::new(1);
            self.shards[from_shard].send(MixerCommand::DetachParticipant(from, participant, mailbox))?;
            self.forget_participant(from)?;
            return Ok(Some(arrival));
        }
        self.make_room(to, key)?;
        self.shards[to_shard].send(MixerCommand::MoveParticipant { from, to, participant })?;
        self.forget_participant(from)?;
        Ok(None)
    }
}

/// State shared by the API handles, the SIP task and the receive tasks.
pub(crate) struct Shared {
    pub config: EndpointConfig,
    /// The bound SIP address (UDP, and TCP when it listens).
    pub sip_addr: SocketAddr,
    /// Where SIP over TLS listens, if it does.
    pub tls_addr: Option<SocketAddr>,
    /// Looks up the host names of dialled URIs.
    pub resolver: hickory_resolver::TokioResolver,
    /// The prompts of `config.room_policy`, rendered once at the endpoint's rate.
    room_policy_audio: PolicyAudio,
    /// The address that goes into SDP and Contact.
    pub advertised_ip: IpAddr,
    pub registry: Mutex<Registry>,
    /// The users callers authenticate as, and the state of their challenges.
    pub authenticator: Mutex<Authenticator>,
    /// Where registered users can be reached.
    pub registrar: Mutex<Registrar>,
    mixer: Mutex<MixerControl>,
    /// One per mixer thread.
    pub mixer_stats: Vec<Arc<MixerStats>>,
    pub sip_commands: tokio::sync::mpsc::UnboundedSender<SipCommand>,
    pub event_sink: EventSink,
    pub events: Receiver<Event>,
    pub ports: PortPool,
    next_id: AtomicU64,
    pub stopped: AtomicBool,
    pub runtime: tokio::runtime::Handle,
}

impl Shared {
    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    pub fn codecs(&self) -> &[CodecKind] {
        &self.config.codecs
    }

    /// The rate room `name` mixes at, or will when a caller creates it.
    pub fn room_sample_rate(&self, name: &str) -> u32 {
        self.registry.lock().conferences.get(name).map_or(self.config.sample_rate, |c| c.sample_rate)
    }

    /// Reports that a participant joined conference `conference`, and then
    /// that it is muted if it starts so (the room mutes on join, or it took
    /// the seat of a muted call).
    pub fn emit_joined(&self, conference: String, participant: ParticipantId, kind: ParticipantKind, remote: String) {
        // Under the lock, so that a mute changed meanwhile is reported after these.
        let registry = self.registry.lock();
        let muted = registry.participants.get(&participant).is_some_and(|p| p.controls.muted.load(Ordering::Relaxed));
        self.emit(Event::ParticipantJoined { conference: conference.clone(), participant, kind, remote });
        if muted {
            self.emit(Event::Muted { conference, participant, muted: true });
        }
    }

    pub fn emit(&self, event: Event) {
        // What changes a room's roster reaches its subscribers (RFC 4575).
        if self.config.conference_events {
            for conference in sip_driver::rosters_changed(&event).into_iter().flatten() {
                let _ = self.sip_commands.send(SipCommand::RosterChanged { conference: conference.to_string() });
            }
        }
        self.event_sink.emit(event);
    }

    pub fn check_running(&self) -> Result<()> {
        if self.stopped.load(Ordering::Acquire) {
            Err(Error::Stopped)
        } else {
            Ok(())
        }
    }

    /// Creates a conference (see [`Creator`] for what an existing name means).
    pub fn create_conference(&self, name: &str, creator: Creator, sample_rate: u32) -> Result<ConferenceId> {
        let mut registry = self.registry.lock();
        let (id, created) = self.create_locked(&mut registry, name, creator, sample_rate)?;
        drop(registry);
        if created {
            self.emit(Event::ConferenceCreated { conference: name.into() });
        }
        Ok(id)
    }

    /// Creates a conference in a locked registry; says whether it is new.
    fn create_locked(
        &self,
        registry: &mut Registry,
        name: &str,
        creator: Creator,
        sample_rate: u32,
    ) -> Result<(ConferenceId, bool)> {
        self.check_running()?;
        if name.is_empty() || name.len() > 256 || name.chars().any(|c| c.is_control()) {
            return Err(Error::InvalidArgument(format!("bad conference name {name:?}")));
        }
        check_sample_rate(sample_rate)?;
        if let Some(existing) = registry.conferences.get(name) {
            return match creator {
                Creator::App => Err(Error::AlreadyExists(name.into())),
                Creator::Caller => Ok((existing.id, false)),
            };
        }
        let id = ConferenceId(self.next_id());
        let controls = Arc::new(ConferenceControls::default());
        const INITIAL_CAPACITY: usize = 8;
        let frame = sample_rate as usize / 50;
        let mix = Box::new(ConferenceMix::new(id, controls.clone(), frame, INITIAL_CAPACITY));
        self.mixer.lock().add_conference(mix, sample_rate, INITIAL_CAPACITY)?;
        let on_demand = creator == Creator::Caller;
        let entry = ConferenceEntry {
            id,
            controls,
            participants: BTreeSet::new(),
            sample_rate,
            noise_suppression: false,
            require_authentication: self.config.require_authentication,
            on_demand,
            recording: None,
            policy: if on_demand { self.config.room_policy.clone() } else { ConferencePolicy::default() },
            // Rooms callers create mix at the endpoint's rate, which their prompts were rendered at.
            policy_audio: if on_demand { Some(self.room_policy_audio.clone()) } else { None },
            ending: false,
        };
        registry.conferences.insert(name.into(), entry);
        Ok((id, true))
    }

    /// Adds a participant to conference `name` in the registry and, with `mix`, to the mixer.
    pub fn add_participant(
        &self,
        id: ParticipantId,
        name: &str,
        entry: ParticipantEntry,
        mix: Option<Box<ParticipantMix>>,
    ) -> Result<()> {
        let mut registry = self.registry.lock();
        self.add_locked(&mut registry, id, name, entry, mix)
    }

    /// Adds a caller to room `name`, creating the room if needed, in one step
    /// so an emptying room cannot end between the two.
    pub fn join_room(
        &self,
        id: ParticipantId,
        name: &str,
        entry: ParticipantEntry,
        mix: Option<Box<ParticipantMix>>,
    ) -> Result<()> {
        let mut registry = self.registry.lock();
        let (_, created) = self.create_locked(&mut registry, name, Creator::Caller, self.config.sample_rate)?;
        let added = self.add_locked(&mut registry, id, name, entry, mix);
        if created {
            if added.is_ok() {
                drop(registry);
                self.emit(Event::ConferenceCreated { conference: name.into() });
            } else if let Some(room) = registry.conferences.remove(name) {
                let _ = self.mixer.lock().remove_conference(room.id);
            }
        }
        added
    }

    fn add_locked(
        &self,
        registry: &mut Registry,
        id: ParticipantId,
        name: &str,
        mut entry: ParticipantEntry,
        mix: Option<Box<ParticipantMix>>,
    ) -> Result<()> {
        let Registry { conferences, participants } = registry;
        let conference = conferences.get_mut(name).ok_or_else(|| Error::NotFound(name.into()))?;
        if !entry.passes_room_checks() {
            policy::check_room_open(name, conference, participants)?;
        }
        entry.in_mixer = mix.is_some();
        entry.noise_suppression = conference.noise_suppression;
        if let Some(mut mix) = mix {
            // Built for another rate (the room was made between the leg's setup
            // and now): mixing it would misread its buffers.
            if mix.frame_samples() != conference.sample_rate as usize / 50 {
                return Err(Error::InvalidArgument(format!("participant not built for {} Hz", conference.sample_rate)));
            }
            let room_waits = policy::waits_for_moderator(conference, participants);
            policy::on_entry(conference, room_waits, &mut entry, Instant::now());
            prepare_mix(conference, id, &entry, &mut mix);
            entry.encoder_key = mix.encoder_key();
            let mut mixer = self.mixer.lock();
            mixer.add_participant(conference.id, mix)?;
            self.start_admission_audio(&mixer, conference, id, &mut entry);
        }
        entry.conference = name.into();
        entry.conference_id = conference.id;
        conference.participants.insert(id);
        participants.insert(id, entry);
        Ok(())
    }

    /// Puts a participant that was only registered (a dial in progress) into the mix.
    pub fn connect_participant(
        &self,
        id: ParticipantId,
        mut mix: Box<ParticipantMix>,
        dtmf: DtmfQueue,
        codec: CodecKind,
    ) -> Result<()> {
        let mut registry = self.registry.lock();
        let Registry { conferences, participants } = &mut *registry;
        let name =
            participants.get(&id).ok_or_else(|| Error::NotFound(format!("participant {}", id.0)))?.conference.clone();
        // The conference it dialled for must still be the same one, not a new room of the same name.
        let conference = conferences.get(&name).ok_or_else(|| Error::NotFound(name.clone()))?;
        let room_waits = policy::waits_for_moderator(conference, participants);
        let entry = participants.get_mut(&id).filter(|e| e.conference_id == conference.id);
        let entry = entry.ok_or_else(|| Error::NotFound(name.clone()))?;
        policy::on_entry(conference, room_waits, entry, Instant::now());
        prepare_mix(conference, id, entry, &mut mix);
        entry.encoder_key = mix.encoder_key();
        let mut mixer = self.mixer.lock();
        mixer.add_participant(entry.conference_id, mix)?;
        self.start_admission_audio(&mixer, conference, id, entry);
        drop(mixer);
        entry.in_mixer = true;
        entry.dtmf = Some(dtmf);
        entry.codec = Some(codec);
        entry.state = ParticipantState::Connected;
        Ok(())
    }

    /// Applies what a re-offer changed to a participant's leg, and reports
    /// when the call went on or off hold.
    pub fn set_leg_media(&self, id: ParticipantId, media: LegMedia, held: bool) -> Result<()> {
        let mut registry = self.registry.lock();
        let entry = registry.participants.get_mut(&id).ok_or_else(|| Error::NotFound("participant".into()))?;
        if let Some(dtmf) = &mut entry.dtmf {
            dtmf.negotiated = media.telephone_event.is_some();
        }
        let (conference_id, conference, controls) =
            (entry.conference_id, entry.conference.clone(), entry.controls.clone());
        let in_mixer = entry.in_mixer;
        drop(registry);
        if in_mixer {
            self.mixer.lock().send(conference_id, MixerCommand::SetLegMedia(conference_id, id, media))?;
        }
        if controls.held.swap(held, Ordering::Relaxed) != held {
            self.emit(Event::Hold { conference, participant: id, held });
        }
        Ok(())
    }

    /// Changes the codec a participant's RTP leg sends and receives with (a
    /// re-offer changed it).
    pub fn set_leg_codec(&self, id: ParticipantId, codec: LegCodec) -> Result<()> {
        let mut registry = self.registry.lock();
        let entry = registry.participants.get_mut(&id).ok_or_else(|| Error::NotFound("participant".into()))?;
        entry.codec = Some(codec.kind());
        entry.encoder_key = Some(codec.encoder_key());
        if entry.in_mixer {
            self.mixer.lock().set_leg_codec(entry.conference_id, id, codec)?;
        }
        Ok(())
    }

    /// The name of the conference a participant is in.
    pub fn conference_of(&self, participant: ParticipantId) -> Option<String> {
        self.registry.lock().participants.get(&participant).map(|p| p.conference.clone())
    }

    pub fn set_state(&self, id: ParticipantId, state: ParticipantState) {
        if let Some(entry) = self.registry.lock().participants.get_mut(&id) {
            entry.state = state;
        }
    }

    /// Takes a participant out of the registry and the mixer; returns its
    /// entry when it was there.
    pub fn remove_participant(&self, id: ParticipantId) -> Option<ParticipantEntry> {
        let mut registry = self.registry.lock();
        let entry = registry.participants.remove(&id)?;
        if let Some(conference) =
            registry.conferences.get_mut(&entry.conference).filter(|c| c.id == entry.conference_id)
        {
            conference.participants.remove(&id);
            if entry.in_mixer {
                let _ = self.mixer.lock().remove_participant(conference.id, id);
            }
        }
        Some(entry)
    }

    /// Removes a participant and reports that it left.
    pub fn participant_left(&self, id: ParticipantId, reason: LeaveReason) {
        self.participant_gone(id, |entry| {
            Some(Event::ParticipantLeft {
                conference: entry.conference.clone(),
                participant: id,
                reason,
                packets_received: entry.controls.packets_received.load(Ordering::Relaxed),
                packets_sent: entry.controls.packets_sent.load(Ordering::Relaxed),
            })
        });
    }

    /// Removes a participant, reports what `event` makes of it, then ends its
    /// room if a caller created it and nobody is left.
    pub fn participant_gone(&self, id: ParticipantId, event: impl FnOnce(&ParticipantEntry) -> Option<Event>) {
        if let Some(entry) = self.remove_participant(id) {
            if let Some(event) = event(&entry) {
                self.emit(event);
            }
            self.policy_after_leave(&entry.conference, entry.conference_id, entry.policy.present_moderator());
            self.end_if_empty_on_demand(&entry.conference, entry.conference_id);
        }
    }

    /// Ends room `name` if it is still conference `id`, a caller created it,
    /// and nobody is left in it; checked and removed under one lock.
    pub fn end_if_empty_on_demand(&self, name: &str, id: ConferenceId) {
        let mut registry = self.registry.lock();
        let empty =
            registry.conferences.get(name).is_some_and(|c| c.id == id && c.on_demand && c.participants.is_empty());
        if !empty {
            return;
        }
        let room = registry.conferences.remove(name);
        let _ = self.mixer.lock().remove_conference(id);
        drop(registry);
        if let Some(recorder) = room.and_then(|r| r.recording) {
            recorder.stop();
        }
        self.emit(Event::ConferenceDestroyed { conference: name.into() });
    }

    /// Hangs up every participant of a conference and removes it.
    pub fn destroy_conference(&self, name: &str) -> Result<()> {
        let entry = self.registry.lock().conferences.remove(name).ok_or_else(|| Error::NotFound(name.into()))?;
        for participant in &entry.participants {
            self.end_participant(*participant, LeaveReason::ConferenceDestroyed);
        }
        let removed = self.mixer.lock().remove_conference(entry.id);
        if let Some(recorder) = entry.recording {
            recorder.stop();
        }
        removed?;
        self.emit(Event::ConferenceDestroyed { conference: name.into() });
        Ok(())
    }

    /// Starts recording conference `name`'s mix to `path`, and with
    /// `per_participant` each participant's own audio to a file beside it.
    pub fn start_recording(&self, name: &str, path: &std::path::Path, per_participant: bool) -> Result<()> {
        let mut registry = self.registry.lock();
        let registry = &mut *registry;
        let conference = registry.conferences.get_mut(name).ok_or_else(|| Error::NotFound(name.into()))?;
        if conference.recording.is_some() {
            return Err(Error::AlreadyExists(format!("a recording of {name}")));
        }
        let (recorder, mix) =
            Recorder::start(name, path, per_participant, conference.sample_rate, self.event_sink.clone())?;
        let mixer = self.mixer.lock();
        let id = conference.id;
        let started = mixer.send(id, MixerCommand::SetRecording(id, Some(mix)));
        if per_participant && started.is_ok() {
            let in_mixer =
                conference.participants.iter().filter(|p| registry.participants.get(p).is_some_and(|e| e.in_mixer));
            for participant in in_mixer {
                match recorder.add_participant(*participant) {
                    Ok(sink) => mixer.send(id, MixerCommand::SetRecordSink(id, *participant, sink))?,
                    Err(e) => tracing::warn!(participant = participant.0, "not recorded: {e}"),
                }
            }
        }
        drop(mixer);
        match started {
            Ok(()) => conference.recording = Some(recorder),
            Err(_) => recorder.stop(),
        }
        started
    }

    /// Pauses or resumes conference `name`'s recording: paused time is left out of its files.
    pub fn pause_recording(&self, name: &str, paused: bool) -> Result<()> {
        let registry = self.registry.lock();
        let conference = registry.conferences.get(name).ok_or_else(|| Error::NotFound(name.into()))?;
        let recorder =
            conference.recording.as_ref().ok_or_else(|| Error::NotFound(format!("a recording of {name}")))?;
        recorder.set_paused(paused);
        Ok(())
    }

    /// Stops conference `name`'s recording; returns once its files are complete.
    pub fn stop_recording(&self, name: &str) -> Result<()> {
        let mut registry = self.registry.lock();
        let conference = registry.conferences.get_mut(name).ok_or_else(|| Error::NotFound(name.into()))?;
        let recorder = conference.recording.take().ok_or_else(|| Error::NotFound(format!("a recording of {name}")))?;
        let id = conference.id;
        // The writer stops whether or not the mixer heard: it is told to by the flag.
        let detached = self.mixer.lock().send(id, MixerCommand::SetRecording(id, None));
        drop(registry);
        recorder.stop();
        detached
    }

    /// Ends one participant however it is connected.
    pub fn end_participant(&self, id: ParticipantId, reason: LeaveReason) {
        let kind = self.registry.lock().participants.get(&id).map(|p| p.kind);
        match kind {
            Some(ParticipantKind::Local) => self.participant_left(id, reason),
            Some(_) => {
                let _ = self.sip_commands.send(SipCommand::Hangup { participant: id, reason });
            }
            None => {}
        }
    }

    pub fn set_talker_policy(&self, conference: ConferenceId, policy: TalkerPolicy) -> Result<()> {
        self.mixer.lock().send(conference, MixerCommand::SetTalkerPolicy(conference, policy))
    }

    /// Emits a `Talking` event for every talking start and stop the mixer
    /// recorded since the last look (a stop and a start in between give both).
    fn report_talking(&self) {
        let mut events = Vec::new();
        let mut registry = self.registry.lock();
        for (id, p) in registry.participants.iter_mut() {
            let changes = p.controls.talk_changes.load(Ordering::Relaxed);
            let new = changes.wrapping_sub(p.talk_changes_seen);
            if new == 0 {
                continue;
            }
            p.talk_changes_seen = changes;
            let talking = p.controls.talking.load(Ordering::Relaxed);
            // An even number of changes ended where it began: it stopped and started again, or the reverse.
            if new % 2 == 0 {
                events.push(Event::Talking { conference: p.conference.clone(), participant: *id, talking: !talking });
            }
            events.push(Event::Talking { conference: p.conference.clone(), participant: *id, talking });
        }
        drop(registry);
        for event in events {
            self.emit(event);
        }
    }

    /// Queues `samples` (at the conference's rate) for everyone in
    /// conference `name`, or for `participant` alone; reports
    /// [`Event::PlaybackFinished`] when it ends, however it ends.
    pub fn play(
        &self,
        conference: ConferenceId,
        name: &str,
        participant: Option<ParticipantId>,
        samples: Arc<[i16]>,
    ) -> Result<PlaybackId> {
        if let Some(id) = participant {
            let registry = self.registry.lock();
            match registry.participants.get(&id) {
                Some(p) if p.conference_id == conference && p.in_mixer => {}
                Some(p) if p.conference_id == conference => {
                    return Err(Error::InvalidArgument(format!("participant {} has no audio yet", id.0)))
                }
                _ => return Err(Error::NotFound(format!("participant {}", id.0))),
            }
        }
        let id = PlaybackId(self.next_id());
        let (sink, conference_name) = (self.event_sink.clone(), name.to_string());
        let done = Box::new(move |end| {
            sink.emit(Event::PlaybackFinished { conference: conference_name, participant, playback: id, end })
        });
        let prompt = Box::new(PromptMix::new(id, samples, done));
        self.mixer.lock().send(conference, MixerCommand::Play(conference, participant, prompt))?;
        Ok(id)
    }

    /// Stops prompt `id` of a conference, or with `None` all of them.
    pub fn stop_playback(&self, conference: ConferenceId, id: Option<PlaybackId>) -> Result<()> {
        self.mixer.lock().send(conference, MixerCommand::StopPlayback(conference, id))
    }

    pub fn set_tap(&self, conference: ConferenceId, tap: Option<rtrb::Producer<i16>>) -> Result<()> {
        self.mixer.lock().send(conference, MixerCommand::SetTap(conference, tap))
    }

    /// Opens participant `id`'s tap (one at a time): its own audio, frame
    /// by frame, for the app to read from the ends returned.
    pub fn open_tap(&self, id: ParticipantId) -> Result<TapEnds> {
        let mut registry = self.registry.lock();
        let entry =
            registry.participants.get_mut(&id).ok_or_else(|| Error::NotFound(format!("participant {}", id.0)))?;
        if !entry.in_mixer {
            return Err(Error::InvalidArgument(format!("participant {} has no audio yet", id.0)));
        }
        if entry.tap.is_some() {
            return Err(Error::AlreadyExists(format!("a tap of participant {}", id.0)));
        }
        let mut mixer = self.mixer.lock();
        let frame = crate::api::frame_samples(mixer.slot(entry.conference_id)?.sample_rate);
        let (samples_in, samples) = rtrb::RingBuffer::new(frame * TAP_TICKS);
        let (frames_in, frames) = rtrb::RingBuffer::new(TAP_TICKS);
        let dropped = Arc::new(AtomicU64::new(0));
        let sink = Box::new(TapSink::new(samples_in, frames_in, dropped.clone()));
        let conference = entry.conference_id;
        mixer.send(conference, MixerCommand::SetParticipantTap(conference, id, Some(sink)))?;
        entry.tap = Some(OverrunWatch::new(dropped.clone()));
        Ok(TapEnds { samples, frames, dropped, frame })
    }

    /// Closes participant `id`'s tap, if it has one open.
    pub fn close_tap(&self, id: ParticipantId) -> Result<()> {
        let mut registry = self.registry.lock();
        let Some(entry) = registry.participants.get_mut(&id).filter(|p| p.tap.is_some()) else { return Ok(()) };
        entry.tap = None;
        let conference = entry.conference_id;
        self.mixer.lock().send(conference, MixerCommand::SetParticipantTap(conference, id, None))
    }

    /// Reports taps that dropped frames since their last report, at most
    /// once a second each.
    /// Reports taps the app reads too slowly and recordings the disk does
    /// not keep up with. It runs here, not on a recording's writer thread,
    /// so that a write stuck on a dead disk cannot hold the report back.
    fn report_overruns(&self) {
        let now = Instant::now();
        let mut events = Vec::new();
        let mut registry = self.registry.lock();
        for (id, p) in registry.participants.iter_mut() {
            let Some(dropped) = p.tap.as_mut().and_then(|tap| tap.report_due(now)) else { continue };
            let conference = p.conference.clone();
            events.push(Event::TapOverrun { conference, participant: *id, frames_dropped: dropped });
        }
        for (name, conference) in &registry.conferences {
            if let Some(recorder) = &conference.recording {
                recorder.report_overruns(name, now, &mut events);
            }
        }
        // Under the lock, so that no overrun comes after its recording stopped.
        for event in events {
            self.emit(event);
        }
    }

    /// Changes who participant `id` hears and who hears it.
    pub fn set_routing(&self, id: ParticipantId, change: impl FnOnce(&mut Routing)) -> Result<()> {
        let mut registry = self.registry.lock();
        let entry =
            registry.participants.get_mut(&id).ok_or_else(|| Error::NotFound(format!("participant {}", id.0)))?;
        change(&mut entry.routing);
        if !entry.in_mixer {
            // It gets its routing when it joins the mixer.
            return Ok(());
        }
        let conference = entry.conference_id;
        self.mixer.lock().send(conference, MixerCommand::SetRouting(conference, id, boxed_routing(entry.routing)))
    }

    /// Moves participant `id` from conference `from` to conference `to`
    /// (called `to_name`): its leg, call and id stay; only what it hears
    /// and who hears it change. Both must mix at one rate: its leg's
    /// resamplers, buffers and noise suppressor were built for its rate,
    /// and rebuilding them would break its audio, which a move must not.
    pub fn move_participant(
        &self,
        id: ParticipantId,
        from: ConferenceId,
        to: ConferenceId,
        to_name: &str,
    ) -> Result<()> {
        let mut guard = self.registry.lock();
        let registry = &mut *guard;
        let not_found = || Error::NotFound(format!("participant {}", id.0));
        let entry = registry.participants.get_mut(&id).filter(|p| p.conference_id == from).ok_or_else(not_found)?;
        let from_name = entry.conference.clone();
        let moved_moderator = entry.policy.present_moderator();
        let source = registry.conferences.get(&from_name).filter(|c| c.id == from).ok_or_else(not_found)?;
        let destination =
            registry.conferences.get(to_name).filter(|c| c.id == to).ok_or_else(|| Error::NotFound(to_name.into()))?;
        if from == to {
            return Ok(());
        }
        if source.sample_rate != destination.sample_rate {
            return Err(Error::InvalidArgument(format!(
                "{from_name} mixes at {} Hz and {to_name} at {} Hz: participants move only between conferences of one rate",
                source.sample_rate, destination.sample_rate
            )));
        }
        if entry.in_mixer {
            let arrival = self.mixer.lock().move_participant(from, to, id, entry.encoder_key)?;
            if let Some(arrival) = arrival {
                // Not holding the mixers' lock while the first thread reaches its next tick.
                let handed_over = await_handover(arrival);
                // Lost to the mixer (it stopped, or never had it): still a
                // participant, but without audio.
                entry.in_mixer = handed_over.is_ok();
                self.mixer.lock().add_participant(to, handed_over?)?;
            }
            // Its file of the old conference's recording has ended; the new one may record it too.
            if let Some(sink) = record_alone(destination, id) {
                self.mixer.lock().send(to, MixerCommand::SetRecordSink(to, id, sink))?;
            }
        }
        entry.conference = to_name.into();
        entry.conference_id = to;
        if let Some(source) = registry.conferences.get_mut(&from_name) {
            source.participants.remove(&id);
        }
        if let Some(destination) = registry.conferences.get_mut(to_name) {
            destination.participants.insert(id);
        }
        // The destination's wait for a moderator now counts the newcomer:
        // it may let the room in, or put the newcomer on hold.
        self.refresh_waiting(registry, to_name);
        drop(guard);
        self.emit(Event::ParticipantMoved { participant: id, from: from_name.clone(), to: to_name.into() });
        if moved_moderator {
            self.emit(Event::ModeratorJoined { conference: to_name.into(), participant: id });
        }
        self.policy_after_leave(&from_name, from, moved_moderator);
        self.end_if_empty_on_demand(&from_name, from);
        Ok(())
    }

    /// Switches noise suppression for everyone in conference `name`, and for
    /// whoever joins it later.
    pub fn set_conference_noise_suppression(&self, name: &str, on: bool) -> Result<()> {
        let mut registry = self.registry.lock();
        let registry = &mut *registry;
        let conference = registry.conferences.get_mut(name).ok_or_else(|| Error::NotFound(name.into()))?;
        check_noise_suppression(conference, on)?;
        conference.noise_suppression = on;
        for id in &conference.participants {
            if let Some(entry) = registry.participants.get_mut(id) {
                self.switch_noise_suppression(conference, *id, entry, on)?;
            }
        }
        Ok(())
    }

    /// Switches noise suppression for one participant.
    pub fn set_participant_noise_suppression(&self, id: ParticipantId, on: bool) -> Result<()> {
        let mut registry = self.registry.lock();
        let registry = &mut *registry;
        let entry =
            registry.participants.get_mut(&id).ok_or_else(|| Error::NotFound(format!("participant {}", id.0)))?;
        let conference =
            registry.conferences.get(&entry.conference).ok_or_else(|| Error::NotFound(entry.conference.clone()))?;
        check_noise_suppression(conference, on)?;
        self.switch_noise_suppression(conference, id, entry, on)
    }

    fn switch_noise_suppression(
        &self,
        conference: &ConferenceEntry,
        id: ParticipantId,
        entry: &mut ParticipantEntry,
        on: bool,
    ) -> Result<()> {
        entry.noise_suppression = on;
        if !entry.in_mixer {
            // It gets one when it joins the mixer.
            return Ok(());
        }
        let suppressor =
            if on { NoiseSuppressor::new(conference.sample_rate, conference.sample_rate as usize / 50) } else { None };
        self.mixer.lock().send(conference.id, MixerCommand::SetNoiseSuppressor(conference.id, id, suppressor))
    }

    /// The id and mixing rate of conference `name`.
    pub fn conference_id(&self, name: &str) -> Result<(ConferenceId, u32)> {
        let registry = self.registry.lock();
        registry.conferences.get(name).map(|c| (c.id, c.sample_rate)).ok_or_else(|| Error::NotFound(name.into()))
    }
}

/// The app's side of an RTP leg's digit queue, and whether the leg's
/// session has a telephone-event payload type to send digits with now: a
/// re-offer can add or drop it.
pub struct DtmfQueue {
    pub digits: rtrb::Producer<u8>,
    pub negotiated: bool,
}

/// What an endpoint owns besides the shared state: threads and the runtime.
pub(crate) struct Engine {
    pub shared: Arc<Shared>,
    runtime: Option<tokio::runtime::Runtime>,
    mixer_threads: Vec<JoinHandle<()>>,
    reaper_thread: Option<JoinHandle<()>>,
}

impl Engine {
    pub fn start(config: EndpointConfig) -> Result<Self> {
        if config.codecs.is_empty() {
            return Err(Error::InvalidArgument("no codec configured".into()));
        }
        let ports = PortPool::new(config.rtp_ports.clone())?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("sipbridge-io")
            .enable_all()
            .build()?;
        let (std_socket, tcp_listener) = sip_sockets(config.listen, config.tcp)?;
        let sip_addr = std_socket.local_addr()?;
        let discovered = match (config.public_address, &config.stun_server) {
            (None, Some(server)) => Some(stun_public_address(&std_socket, server)?.ip()),
            _ => None,
        };
        let advertised_ip = config.public_address.or(discovered).unwrap_or_else(|| match sip_addr.ip() {
            ip if ip.is_unspecified() => {
                tracing::warn!("listening on an unspecified address with no public address set; advertising 127.0.0.1");
                IpAddr::from([127, 0, 0, 1])
            }
            ip => ip,
        });

        let (garbage_tx, garbage_rx) = crossbeam_channel::bounded::<Garbage>(MIXER_QUEUE);
        let threads = match config.mixer_threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let (mut shards, mut mixer_stats, mut mixer_threads) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..threads {
            let (commands, mixer_rx) = crossbeam_channel::bounded(MIXER_QUEUE);
            let stats = Arc::new(MixerStats::default());
            let mixer = Mixer::new(mixer_rx, garbage_tx.clone(), stats.clone(), 16);
            let name = format!("sipbridge-mixer-{i}");
            mixer_threads.push(std::thread::Builder::new().name(name).spawn(move || mixer.run())?);
            shards.push(MixerShard { commands, conferences: (0, 16), participants: 0 });
            mixer_stats.push(stats);
        }
        drop(garbage_tx);
        // Frees what the mixers let go of; ends when the last mixer drops its sender.
        let reaper_thread = std::thread::Builder::new().name("sipbridge-reaper".into()).spawn(move || {
            for garbage in garbage_rx {
                drop(garbage);
            }
        })?;

        let (events_tx, events) = crossbeam_channel::bounded(EVENT_QUEUE);
        let (sip_commands, sip_rx) = tokio::sync::mpsc::unbounded_channel();
        config.room_policy.validate()?;
        let room_policy_audio = PolicyAudio::render(&config.room_policy, config.sample_rate)?;
        let authenticator =
            Mutex::new(Authenticator::new(&config.realm, config.digest_sha256, std::time::Instant::now()));
        let (transports, resolver) = {
            let _guard = runtime.enter();
            (sip_transports(&config, std_socket, tcp_listener)?, dns::resolver(&config.dns_servers)?)
        };
        let shared = Arc::new(Shared {
            tls_addr: transports.tls_addr,
            resolver,
            room_policy_audio,
            config,
            sip_addr,
            advertised_ip,
            registry: Mutex::new(Registry::default()),
            authenticator,
            registrar: Mutex::new(Registrar::default()),
            mixer: Mutex::new(MixerControl { shards, conferences: HashMap::new() }),
            mixer_stats,
            sip_commands,
            event_sink: EventSink { events: events_tx, dropped: Arc::default() },
            events,
            ports,
            next_id: AtomicU64::new(1),
            stopped: AtomicBool::new(false),
            runtime: runtime.handle().clone(),
        });
        runtime.spawn(sip_driver::run(shared.clone(), transports, sip_rx));
        runtime.spawn(control_tick(Arc::downgrade(&shared)));
        tracing::info!(%sip_addr, %advertised_ip, "endpoint started");
        Ok(Self { shared, runtime: Some(runtime), mixer_threads, reaper_thread: Some(reaper_thread) })
    }

    /// Hangs up every call, stops the threads. Idempotent.
    pub fn stop(&mut self) {
        if self.shared.stopped.swap(true, Ordering::AcqRel) {
            return;
        }
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        if self.shared.sip_commands.send(SipCommand::Shutdown { done: done_tx }).is_ok() {
            let _ = done_rx.recv_timeout(Duration::from_secs(3));
        }
        self.shared.mixer.lock().stop();
        for t in self.mixer_threads.drain(..) {
            let _ = t.join();
        }
        // Their files are finished before stop returns.
        let recorders: Vec<Recorder> =
            self.shared.registry.lock().conferences.values_mut().filter_map(|c| c.recording.take()).collect();
        for recorder in recorders {
            recorder.stop();
        }
        if let Some(runtime) = self.runtime.take() {
            // Waiting for a runtime to wind down is not allowed from inside
            // another one (an async application dropping its endpoint).
            if tokio::runtime::Handle::try_current().is_ok() {
                runtime.shutdown_background();
            } else {
                runtime.shutdown_timeout(Duration::from_secs(1));
            }
        }
        // The mixer thread has ended, so the reaper's channel is closed once
        // the shared state's last sender goes; it drains and exits on its own.
        if let Some(t) = self.reaper_thread.take() {
            drop(t);
        }
        tracing::info!("endpoint stopped");
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Readies a participant's mixer side for its conference: noise suppression
/// and a recording of its own, when the conference has them on, and who it
/// hears and is heard by.
fn prepare_mix(conference: &ConferenceEntry, id: ParticipantId, entry: &ParticipantEntry, mix: &mut ParticipantMix) {
    if entry.noise_suppression {
        mix.set_noise_suppressor(NoiseSuppressor::new(conference.sample_rate, mix.frame_samples()));
    }
    mix.set_record_sink(record_alone(conference, id));
    mix.set_routing(boxed_routing(entry.routing));
}

/// Opens participant `id`'s own file when `conference` records each participant.
fn record_alone(conference: &ConferenceEntry, id: ParticipantId) -> Option<RecordSink> {
    let recorder = conference.recording.as_ref().filter(|r| r.per_participant)?;
    recorder.add_participant(id).inspect_err(|e| tracing::warn!(participant = id.0, "not recorded: {e}")).ok()
}

/// What the mixer keeps of a participant's routing: nothing when it is open,
/// so the tick's common case looks at no routing at all.
fn boxed_routing(routing: Routing) -> Option<Box<Routing>> {
    (!routing.is_open()).then(|| Box::new(routing))
}

/// Waits for a mixer thread to hand over a participant it let go of.
fn await_handover(mut arrival: rtrb::Consumer<Box<ParticipantMix>>) -> Result<Box<ParticipantMix>> {
    let deadline = Instant::now() + HANDOVER_TIMEOUT;
    loop {
        if let Ok(participant) = arrival.pop() {
            return Ok(participant);
        }
        // Let go of without it: the mixer did not have it.
        if arrival.is_abandoned() && arrival.is_empty() {
            return Err(Error::NotFound("participant in the mixer".into()));
        }
        if Instant::now() >= deadline {
            return Err(Error::Timeout);
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// The SIP socket's receive buffer: room for a burst of requests while the
/// SIP task is busy. The default (about 200 kB) dropped ACKs and BYEs at
/// 2,500 calls a second in the call-setup benchmark. The kernel may cap it
/// (net.core.rmem_max).
const SIP_RECEIVE_BUFFER: usize = 4 << 20;

/// Binds the SIP socket, non-blocking, with a large receive buffer.
/// The SIP UDP socket and, with `tcp`, the TCP listener on its port. A port
/// left to the system (0) must be free for both, and the UDP port the
/// system picks may be a TCP socket's: it is picked again a few times.
fn sip_sockets(listen: SocketAddr, tcp: bool) -> Result<(std::net::UdpSocket, Option<std::net::TcpListener>)> {
    let mut tries = 0;
    loop {
        let udp = sip_socket(listen)?;
        if !tcp {
            return Ok((udp, None));
        }
        match std::net::TcpListener::bind(udp.local_addr()?) {
            Ok(listener) => return Ok((udp, Some(listener))),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && listen.port() == 0 && tries < 16 => tries += 1,
            Err(e) => return Err(e.into()),
        }
    }
}

fn sip_socket(listen: SocketAddr) -> Result<std::net::UdpSocket> {
    let socket = socket2::Socket::new(socket2::Domain::for_address(listen), socket2::Type::DGRAM, None)?;
    // A smaller buffer than asked for still works; not worth failing over.
    let _ = socket.set_recv_buffer_size(SIP_RECEIVE_BUFFER);
    socket.bind(&listen.into())?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// How long a STUN binding request waits for its answer before it is sent
/// again; it doubles each time (RFC 5389 §7.2.1), over STUN_TRIES tries.
const STUN_RTO: Duration = Duration::from_millis(500);
const STUN_TRIES: u32 = 3;

/// Asks `server` ("host:port") where the SIP socket's packets come from: the
/// public address behind a NAT. It runs before the SIP task starts, so the
/// socket is read here directly; the answer keeps the NAT mapping SIP uses.
fn stun_public_address(socket: &std::net::UdpSocket, server: &str) -> Result<SocketAddr> {
    use std::net::ToSocketAddrs;
    let local = socket.local_addr()?;
    let server_addr = server
        .to_socket_addrs()
        .map_err(|e| Error::InvalidArgument(format!("STUN server {server:?}: {e}")))?
        .find(|a| a.is_ipv4() == local.is_ipv4())
        .ok_or_else(|| Error::InvalidArgument(format!("STUN server {server:?}: no address of our IP version")))?;
    let request = crate::sip::stun::BindingRequest::new()?;
    socket.set_nonblocking(false)?;
    let mut buf = [0u8; 1500];
    let mut wait = STUN_RTO;
    let mut mapped = None;
    'tries: for _ in 0..STUN_TRIES {
        socket.send_to(&request.data, server_addr)?;
        let deadline = std::time::Instant::now() + wait;
        while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()).filter(|l| !l.is_zero()) {
            socket.set_read_timeout(Some(left))?;
            match socket.recv_from(&mut buf) {
                Ok((n, from)) if from == server_addr => {
                    if let Some(address) = request.mapped_address(&buf[..n]) {
                        mapped = Some(address);
                        break 'tries;
                    }
                }
                // Something else on the SIP port this early: not ours to answer.
                Ok(_) => {}
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => break,
                Err(e) => return Err(e.into()),
            }
        }
        wait *= 2;
    }
    socket.set_read_timeout(None)?;
    socket.set_nonblocking(true)?;
    let Some(mapped) = mapped else {
        tracing::warn!(%server_addr, "the STUN server did not answer");
        return Err(Error::Timeout);
    };
    tracing::info!(%server_addr, %mapped, "STUN: our public address");
    Ok(mapped)
}

/// Binds TCP on the UDP socket's address and TLS where configured. Must
/// run inside the runtime.
fn sip_transports(
    config: &EndpointConfig,
    udp: std::net::UdpSocket,
    tcp: Option<std::net::TcpListener>,
) -> Result<sip_driver::SipTransports> {
    let tcp = tcp.map(tokio_listener).transpose()?;
    let certificate = match (&config.tls_certificate, &config.tls_private_key) {
        (Some(chain), Some(key)) => Some((chain.as_path(), key.as_path())),
        (None, None) => None,
        _ => return Err(Error::InvalidArgument("TLS needs both a certificate and a private key".into())),
    };
    let tls = Arc::new(TlsContext::new(certificate, config.tls_ca_file.as_deref())?);
    if config.tls_listen.is_some() && !tls.can_accept() {
        return Err(Error::InvalidArgument("TLS cannot listen without a certificate and key".into()));
    }
    let tls_listener =
        config.tls_listen.map(|listen| tokio_listener(std::net::TcpListener::bind(listen)?)).transpose()?;
    let tls_addr = tls_listener.as_ref().map(|listener| listener.local_addr()).transpose()?;
    let (connections, stream_events) = Connections::start(tcp, tls_listener, tls);
    Ok(sip_driver::SipTransports { udp: tokio::net::UdpSocket::from_std(udp)?, connections, stream_events, tls_addr })
}

fn tokio_listener(listener: std::net::TcpListener) -> Result<tokio::net::TcpListener> {
    listener.set_nonblocking(true)?;
    Ok(tokio::net::TcpListener::from_std(listener)?)
}

/// The next tick of `interval`, or never when there is none.
pub(crate) async fn next_tick(interval: Option<&mut tokio::time::Interval>) {
    match interval {
        Some(interval) => {
            interval.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// The control side's tick: turns the mixer's talking flags into events, a
/// tick's time after they change, and runs the conference policy's timers.
async fn control_tick(shared: std::sync::Weak<Shared>) {
    let mut interval = tokio::time::interval(crate::media::mixer::TICK);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        match shared.upgrade() {
            Some(shared) if !shared.stopped.load(Ordering::Relaxed) => {
                shared.report_talking();
                shared.policy_tick(Instant::now());
                shared.report_overruns();
            }
            _ => return,
        }
    }
}

/// RNNoise works at 48 kHz only; resampling every talker twice for it would
/// cost more than the suppression itself.
fn check_noise_suppression(conference: &ConferenceEntry, on: bool) -> Result<()> {
    if on && conference.sample_rate != DENOISE_SAMPLE_RATE {
        return Err(Error::InvalidArgument(format!(
            "noise suppression needs a {DENOISE_SAMPLE_RATE} Hz conference; this one mixes at {} Hz",
            conference.sample_rate
        )));
    }
    Ok(())
}

/// Conferences mix at 8, 16 or 48 kHz.
pub(crate) fn check_sample_rate(rate: u32) -> Result<()> {
    if crate::media::resample::SUPPORTED_RATES.contains(&rate) {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!("a conference mixes at 8000, 16000 or 48000 Hz, not {rate}")))
    }
}
