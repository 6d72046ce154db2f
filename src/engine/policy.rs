//! Applies conference policy on the control side: who may join, PIN entry
//! driven by DTMF, moderators, waiting for one with hold music, and the
//! actions (mute all, lock, end). The mixer only reads two flags per
//! participant (`admitted`, `deaf`); everything else happens here, under
//! the registry lock, and the events and hang-ups it leads to are carried
//! out after the lock is let go ([`Effects`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{ConferenceEntry, MixerControl, ParticipantEntry, Registry, Shared};
use crate::api::{Event, LeaveReason, ParticipantKind, ParticipantState};
use crate::media::mixer::{ConferenceId, MixerCommand, ParticipantId, PlaybackEnd, PlaybackId, PromptMix};
use crate::media::playback::Playback;
use crate::policy::{Admission, ConferencePolicy, PinEntry, PinStep};
use crate::{Error, Result};

/// Copies of the hold music queued at once: one plays while the next
/// waits, so the loop has no gap while the control side queues another.
const HOLD_QUEUED: u32 = 2;
/// Callers a full room announces itself to at once, each holding an RTP
/// port and a mixer slot for the announcement; more get 486.
const MAX_TURNED_AWAY: usize = 8;

/// The policy's own prompts, rendered at the conference's rate.
#[derive(Clone)]
pub(crate) struct PolicyAudio {
    pin_prompt: Arc<[i16]>,
    hold_music: Arc<[i16]>,
    full_prompt: Arc<[i16]>,
}

impl PolicyAudio {
    pub fn render(policy: &ConferencePolicy, rate: u32) -> Result<Self> {
        let pin_prompt = match &policy.pin_prompt {
            Some(prompt) => prompt.render(rate)?,
            // A short beep: "type your PIN".
            None => Playback::tone(&[700.0], Duration::from_millis(300), -16.0)?.render(rate)?,
        };
        let hold_music = match &policy.hold_music {
            Some(music) => music.render(rate)?,
            // A soft tone, a second on, a second off.
            None => tone_bursts(Duration::from_secs(1), -24.0, 1, rate)?,
        };
        let full_prompt = match &policy.full_prompt {
            Some(prompt) => prompt.render(rate)?,
            // Heard only by a caller turned away while the policy lost its
            // announcement (changed between the INVITE and the join): busy.
            None => tone_bursts(Duration::from_millis(350), -16.0, 3, rate)?,
        };
        if pin_prompt.is_empty() || hold_music.is_empty() || full_prompt.is_empty() {
            return Err(Error::InvalidArgument("a PIN prompt, hold music or full-room prompt without samples".into()));
        }
        Ok(Self { pin_prompt, hold_music, full_prompt })
    }
}

/// `bursts` bursts of 425 Hz (the ITU's ringing and busy tone), each
/// `length` long and followed by as long a silence.
fn tone_bursts(length: Duration, level_dbov: f32, bursts: usize, rate: u32) -> Result<Arc<[i16]>> {
    let tone = Playback::tone(&[425.0], length, level_dbov)?.render(rate)?;
    let mut samples = Vec::with_capacity(tone.len() * 2 * bursts);
    for _ in 0..bursts {
        samples.extend_from_slice(&tone);
        samples.resize(samples.len() + tone.len(), 0);
    }
    Ok(samples.into())
}

/// A participant's side of the policy.
pub(crate) struct PolicyState {
    pub moderator: bool,
    admission: Admission,
    /// It took the place of a participant that was let in (RFC 3891
    /// Replaces): it skips the PIN, the wait and the room's lock and cap.
    took_seat: bool,
    /// A caller the room was full for, let in apart to hear the policy's
    /// announcement and be hung up.
    turned_away: bool,
    /// Its PIN entry, while it types.
    pin: Option<PinEntry>,
    /// Prompts the policy queued for it (the PIN prompt, hold music), to
    /// stop when it is let in; stopping one that ended is harmless.
    playing: Vec<PlaybackId>,
    /// Hold music loops that played to their end, counted where they are
    /// freed; the control tick queues one more for each. For a caller
    /// turned away, its announcement's end (of any kind): it is hung up.
    holds_finished: Arc<AtomicU32>,
    holds_seen: u32,
}

impl Default for PolicyState {
    fn default() -> Self {
        Self {
            moderator: false,
            admission: Admission::Admitted,
            took_seat: false,
            turned_away: false,
            pin: None,
            playing: Vec::new(),
            holds_finished: Arc::default(),
            holds_seen: 0,
        }
    }
}

impl PolicyState {
    pub fn admission(&self) -> Admission {
        self.admission
    }

    /// A moderator that has got in (not one still typing its PIN, nor one
    /// being turned away).
    pub(super) fn present_moderator(&self) -> bool {
        self.moderator && self.admission() != Admission::EnteringPin && !self.turned_away
    }
}

/// What policy decisions lead to, carried out once the registry is unlocked:
/// events, and participants to hang up (which may re-enter the registry).
#[derive(Default)]
pub(crate) struct Effects {
    events: Vec<Event>,
    hangups: Vec<(ParticipantId, LeaveReason)>,
}

impl Effects {
    pub fn apply(self, shared: &Shared) {
        for event in self.events {
            shared.emit(event);
        }
        for (id, reason) in self.hangups {
            shared.end_participant(id, reason);
        }
    }
}

/// What a participant that replaces another (RFC 3891) takes over from it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Seat {
    pub moderator: bool,
    pub admitted: bool,
    pub muted: bool,
}

impl ParticipantEntry {
    /// Takes over `seat`: the role and the mute always; a seat that was let
    /// in lets this entry in at once.
    pub fn take_seat(&mut self, seat: Seat) {
        self.policy.moderator = seat.moderator;
        self.policy.took_seat = seat.admitted;
        self.controls.muted.store(seat.muted, Ordering::Relaxed);
    }

    /// Makes a caller the room is full for one that hears the policy's
    /// announcement apart and is hung up; from now on, also while a late
    /// offer keeps it out of the mixer.
    pub fn turn_away(&mut self) {
        self.policy.turned_away = true;
        set_admission(self, Admission::TurnedAway);
    }

    /// Whether it joins past the room's lock and cap.
    pub fn passes_room_checks(&self) -> bool {
        self.policy.took_seat || self.policy.turned_away
    }
}

/// Refuses a new participant of a locked or full conference. Callers
/// being turned away do not count.
pub(super) fn check_room_open(
    name: &str,
    conference: &ConferenceEntry,
    participants: &HashMap<ParticipantId, ParticipantEntry>,
) -> Result<()> {
    if conference.policy.locked {
        return Err(Error::Locked(name.into()));
    }
    let full = |max| conference.participants.len() - turned_away(conference, participants) >= max;
    if conference.policy.max_participants.is_some_and(full) {
        return Err(Error::Full(name.into()));
    }
    Ok(())
}

/// How many callers `conference` is turning away now.
fn turned_away(conference: &ConferenceEntry, participants: &HashMap<ParticipantId, ParticipantEntry>) -> usize {
    conference.participants.iter().filter(|id| participants.get(id).is_some_and(|p| p.policy.turned_away)).count()
}

fn set_admission(entry: &mut ParticipantEntry, admission: Admission) {
    entry.policy.admission = admission;
    entry.controls.admitted.store(admission == Admission::Admitted, Ordering::Relaxed);
}

/// Whether newcomers to `conference` who are not moderators wait for one:
/// its policy says so and none is in. The scan of the room is only made
/// when the policy asks, so a big room without that rule pays nothing per join.
pub(super) fn waits_for_moderator(
    conference: &ConferenceEntry,
    participants: &HashMap<ParticipantId, ParticipantEntry>,
) -> bool {
    conference.policy.wait_for_moderator && !moderator_present(conference, participants)
}

/// Whether `conference` has a moderator in it.
pub(super) fn moderator_present(
    conference: &ConferenceEntry,
    participants: &HashMap<ParticipantId, ParticipantEntry>,
) -> bool {
    conference.participants.iter().any(|id| participants.get(id).is_some_and(|p| p.policy.present_moderator()))
}

/// Sets how a participant starts out as it enters the mixer, before its mix
/// is sent there, so that not one tick of its audio leaks: a caller asked
/// for a PIN is kept out; anyone else gets the join rules.
pub(super) fn on_entry(conference: &ConferenceEntry, room_waits: bool, entry: &mut ParticipantEntry, now: Instant) {
    let policy = &conference.policy;
    if entry.policy.took_seat {
        return set_admission(entry, Admission::Admitted);
    }
    if entry.policy.turned_away {
        return set_admission(entry, Admission::TurnedAway);
    }
    if entry.kind == ParticipantKind::Inbound && policy.asks_pin() {
        entry.policy.pin = Some(PinEntry::new(policy, now));
        set_admission(entry, Admission::EnteringPin);
        return;
    }
    if !entry.policy.moderator && policy.mute_on_join {
        entry.controls.muted.store(true, Ordering::Relaxed);
    }
    let wait = room_waits && !entry.policy.moderator;
    set_admission(entry, if wait { Admission::WaitingForModerator } else { Admission::Admitted });
}

impl Shared {
    /// The seat of participant `id`, for a call that replaces it; `None`
    /// when it is gone.
    pub fn seat_of(&self, id: ParticipantId) -> Option<Seat> {
        let registry = self.registry.lock();
        let entry = registry.participants.get(&id)?;
        Some(Seat {
            moderator: entry.policy.moderator,
            // Let in by the policy while its media ran: a call whose media
            // never started (a late offer not yet answered) was never asked
            // for its PIN, whatever its admission reads.
            admitted: entry.policy.admission() == Admission::Admitted
                && entry.in_mixer
                && entry.state == ParticipantState::Connected,
            muted: entry.controls.muted.load(Ordering::Relaxed),
        })
    }

    /// Refuses a caller to a locked or full room `name` (one that does not
    /// exist yet is open). `Ok(true)`: the room is full, and its policy
    /// announces that to the caller instead of refusing it.
    pub fn check_room_open(&self, name: &str) -> Result<bool> {
        let registry = self.registry.lock();
        let Some(conference) = registry.conferences.get(name) else { return Ok(false) };
        let announces = conference.policy.full_prompt.is_some()
            && turned_away(conference, &registry.participants) < MAX_TURNED_AWAY;
        match check_room_open(name, conference, &registry.participants) {
            Err(Error::Full(_)) if announces => Ok(true),
            checked => checked.map(|()| false),
        }
    }

    /// Plays what a participant's admission calls for, once its mix is in
    /// the mixer: the PIN prompt, or hold music.
    pub(super) fn start_admission_audio(
        &self,
        mixer: &MixerControl,
        conference: &ConferenceEntry,
        id: ParticipantId,
        entry: &mut ParticipantEntry,
    ) {
        let queued = match entry.policy.admission() {
            Admission::Admitted => Ok(()),
            Admission::EnteringPin => self.play_pin_prompt(mixer, conference, id, entry),
            Admission::WaitingForModerator => {
                entry.policy.holds_seen = entry.policy.holds_finished.load(Ordering::Relaxed);
                (0..HOLD_QUEUED).try_for_each(|_| self.queue_hold_music(mixer, conference, id, entry))
            }
            Admission::TurnedAway => self.play_full_prompt(mixer, conference, id, entry),
        };
        if let Err(error) = queued {
            tracing::warn!(participant = id.0, %error, "cannot play the policy's prompt");
            if entry.policy.admission() == Admission::TurnedAway {
                // Nothing to hear out: the control tick hangs it up at once.
                entry.policy.holds_finished.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Queues a prompt of the policy's for one participant; unlike the
    /// app's prompts, it ends without an event.
    fn queue_policy_prompt(
        &self,
        mixer: &MixerControl,
        conference: ConferenceId,
        id: ParticipantId,
        samples: Arc<[i16]>,
        done: crate::media::mixer::PlaybackDone,
    ) -> Result<PlaybackId> {
        let playback = PlaybackId(self.next_id());
        let prompt = Box::new(PromptMix::new(playback, samples, done));
        mixer.send(conference, MixerCommand::Play(conference, Some(id), prompt))?;
        Ok(playback)
    }

    fn play_pin_prompt(
        &self,
        mixer: &MixerControl,
        conference: &ConferenceEntry,
        id: ParticipantId,
        entry: &mut ParticipantEntry,
    ) -> Result<()> {
        let samples = conference.policy_audio()?.pin_prompt.clone();
        let playback = self.queue_policy_prompt(mixer, conference.id, id, samples, Box::new(|_| ()))?;
        entry.policy.playing.push(playback);
        Ok(())
    }

    /// Plays the full room's announcement to a caller turned away; its end
    /// (heard out, or stopped) has the control tick hang the caller up.
    fn play_full_prompt(
        &self,
        mixer: &MixerControl,
        conference: &ConferenceEntry,
        id: ParticipantId,
        entry: &mut ParticipantEntry,
    ) -> Result<()> {
        let samples = conference.policy_audio()?.full_prompt.clone();
        entry.policy.holds_seen = entry.policy.holds_finished.load(Ordering::Relaxed);
        let ended = entry.policy.holds_finished.clone();
        let done = Box::new(move |_| {
            ended.fetch_add(1, Ordering::Relaxed);
        });
        let playback = self.queue_policy_prompt(mixer, conference.id, id, samples, done)?;
        entry.policy.playing.push(playback);
        Ok(())
    }

    fn queue_hold_music(
        &self,
        mixer: &MixerControl,
        conference: &ConferenceEntry,
        id: ParticipantId,
        entry: &mut ParticipantEntry,
    ) -> Result<()> {
        let finished = entry.policy.holds_finished.clone();
        let done = Box::new(move |end| {
            if end == PlaybackEnd::Completed {
                finished.fetch_add(1, Ordering::Relaxed);
            }
        });
        let samples = conference.policy_audio()?.hold_music.clone();
        let playback = self.queue_policy_prompt(mixer, conference.id, id, samples, done)?;
        let playing = &mut entry.policy.playing;
        // The loops that finished need no stopping: keep the last few.
        if playing.len() > HOLD_QUEUED as usize {
            playing.remove(0);
        }
        playing.push(playback);
        Ok(())
    }

    /// Stops the policy's prompts to a participant.
    fn stop_policy_prompts(&self, mixer: &MixerControl, conference: ConferenceId, entry: &mut ParticipantEntry) {
        for playback in entry.policy.playing.drain(..) {
            let _ = mixer.send(conference, MixerCommand::StopPlayback(conference, Some(playback)));
        }
    }

    /// Puts those who must wait for a moderator on hold, and lets in those
    /// who need not wait any more (a moderator came, or the rule changed).
    pub(super) fn refresh_waiting(&self, registry: &mut Registry, name: &str) {
        let Registry { conferences, participants } = registry;
        let Some(conference) = conferences.get(name) else { return };
        let present = moderator_present(conference, participants);
        let mixer = self.mixer.lock();
        for id in &conference.participants {
            let Some(entry) = participants.get_mut(id) else { continue };
            if !entry.in_mixer || entry.policy.admission() == Admission::EnteringPin {
                continue;
            }
            let wait = conference.policy.wait_for_moderator && !entry.policy.moderator && !present;
            match (entry.policy.admission(), wait) {
                (Admission::Admitted, true) => {
                    set_admission(entry, Admission::WaitingForModerator);
                    self.start_admission_audio(&mixer, conference, *id, entry);
                }
                (Admission::WaitingForModerator, false) => {
                    self.stop_policy_prompts(&mixer, conference.id, entry);
                    set_admission(entry, Admission::Admitted);
                }
                _ => {}
            }
        }
    }

    /// Feeds a participant's key press to its PIN entry. Returns false when
    /// it is not typing a PIN (the digit is then the app's, as an event).
    fn pin_digit(&self, id: ParticipantId, digit: char, effects: &mut Effects) -> bool {
        let mut registry = self.registry.lock();
        let Some(entry) = registry.participants.get_mut(&id) else { return false };
        let Some(pin) = entry.policy.pin.as_mut() else { return false };
        if let Some(step) = pin.handle_digit(digit, Instant::now()) {
            self.pin_step(&mut registry, id, step, effects);
        }
        true
    }

    /// Carries out what a caller's PIN entry came to.
    fn pin_step(&self, registry: &mut Registry, id: ParticipantId, step: PinStep, effects: &mut Effects) {
        let Registry { conferences, participants } = &mut *registry;
        let Some(entry) = participants.get_mut(&id) else { return };
        let name = entry.conference.clone();
        let Some(conference) = conferences.get(&name).filter(|c| c.id == entry.conference_id) else { return };
        let mixer = self.mixer.lock();
        self.stop_policy_prompts(&mixer, conference.id, entry);
        match step {
            PinStep::Accepted { moderator } => {
                effects.events.push(Event::PinAccepted { conference: name.clone(), participant: id, moderator });
                drop(mixer);
                self.let_in(registry, id, moderator, effects);
            }
            PinStep::Wrong { tries_left } => {
                effects.events.push(Event::PinRejected { conference: name, participant: id, tries_left });
                if let Err(error) = self.play_pin_prompt(&mixer, conference, id, entry) {
                    tracing::warn!(participant = id.0, %error, "cannot play the PIN prompt");
                }
            }
            PinStep::Rejected => {
                entry.policy.pin = None;
                effects.events.push(Event::PinRejected { conference: name, participant: id, tries_left: 0 });
                effects.hangups.push((id, LeaveReason::PinRejected));
            }
        }
    }

    /// Ends a participant's PIN entry and lets it in, as a moderator or
    /// not (then muted when the policy says so); it waits on hold if it must.
    fn let_in(&self, registry: &mut Registry, id: ParticipantId, moderator: bool, effects: &mut Effects) {
        let Registry { conferences, participants } = &mut *registry;
        let Some(entry) = participants.get_mut(&id) else { return };
        let name = entry.conference.clone();
        let Some(conference) = conferences.get(&name).filter(|c| c.id == entry.conference_id) else { return };
        self.stop_policy_prompts(&self.mixer.lock(), conference.id, entry);
        entry.policy.pin = None;
        entry.policy.moderator |= moderator;
        if !entry.policy.moderator && conference.policy.mute_on_join {
            effects.events.extend(apply_mute(id, entry, true));
        }
        set_admission(entry, Admission::Admitted);
        if entry.policy.moderator {
            effects.events.push(Event::ModeratorJoined { conference: name.clone(), participant: id });
        }
        self.refresh_waiting(registry, &name);
    }

    /// A participant pressed a key: PIN entry takes it while the participant
    /// types its PIN (those digits are kept out of events and logs);
    /// otherwise it is reported as [`Event::Dtmf`].
    pub fn dtmf(&self, participant: ParticipantId, digit: char, duration_ms: u32) {
        let mut effects = Effects::default();
        if !self.pin_digit(participant, digit, &mut effects) {
            let conference = self.conference_of(participant);
            if let Some(conference) = conference {
                effects.events.push(Event::Dtmf { conference, participant, digit, duration_ms });
            }
        }
        effects.apply(self);
    }

    /// The policy's timers, from the control tick: PIN entries that ran out
    /// of time, and hold music to queue again.
    pub(super) fn policy_tick(&self, now: Instant) {
        let mut effects = Effects::default();
        let mut registry = self.registry.lock();
        let mut due = Vec::new();
        for (id, entry) in registry.participants.iter_mut() {
            if let Some(step) = entry.policy.pin.as_mut().and_then(|pin| pin.handle_timeout(now)) {
                due.push((*id, step));
            }
        }
        for (id, step) in due {
            self.pin_step(&mut registry, id, step, &mut effects);
        }
        let Registry { conferences, participants } = &mut *registry;
        let mixer = self.mixer.lock();
        for (id, entry) in participants.iter_mut() {
            let finished = entry.policy.holds_finished.load(Ordering::Relaxed);
            if entry.policy.admission() == Admission::TurnedAway && entry.policy.holds_seen != finished {
                entry.policy.holds_seen = finished;
                effects.hangups.push((*id, LeaveReason::RoomFull));
            }
            if entry.policy.admission() != Admission::WaitingForModerator {
                continue;
            }
            let Some(conference) = conferences.get(&entry.conference).filter(|c| c.id == entry.conference_id) else {
                continue;
            };
            while entry.policy.holds_seen != finished {
                entry.policy.holds_seen = entry.policy.holds_seen.wrapping_add(1);
                if let Err(error) = self.queue_hold_music(&mixer, conference, *id, entry) {
                    tracing::warn!(participant = id.0, %error, "cannot play hold music");
                }
            }
        }
        drop(mixer);
        drop(registry);
        effects.apply(self);
    }

    /// After a participant left conference `name` (hung up, or moved to
    /// another): the conference ends when its last moderator left and the
    /// policy says so (else those who must wait for a moderator go back on
    /// hold), and an empty conference is reported.
    pub(super) fn policy_after_leave(&self, name: &str, id: ConferenceId, left_moderator: bool) {
        let mut effects = Effects::default();
        let mut registry = self.registry.lock();
        let Some(conference) = registry.conferences.get(name).filter(|c| c.id == id) else { return };
        if conference.participants.is_empty() {
            effects.events.push(Event::ConferenceEmpty { conference: name.into() });
            if let Some(conference) = registry.conferences.get_mut(name) {
                conference.ending = false;
            }
        } else if !conference.ending && left_moderator && !moderator_present(conference, &registry.participants) {
            if conference.policy.end_when_moderator_leaves {
                self.end_locked(&mut registry, name, &mut effects);
            } else {
                self.refresh_waiting(&mut registry, name);
            }
        }
        drop(registry);
        effects.apply(self);
    }

    /// Hangs up everyone in conference `name` and reports that it ended,
    /// once until it empties.
    fn end_locked(&self, registry: &mut Registry, name: &str, effects: &mut Effects) {
        let Some(conference) = registry.conferences.get_mut(name) else { return };
        // Until it empties, its moderators leaving must not end it again.
        conference.ending = !conference.participants.is_empty();
        effects.hangups.extend(conference.participants.iter().map(|id| (*id, LeaveReason::ConferenceEnded)));
        effects.events.push(Event::ConferenceEnded { conference: name.into() });
    }

    /// Runs `f` on conference `name` (if it is still `id`) under the
    /// registry lock, then carries out its effects.
    fn with_policy<T>(
        &self,
        name: &str,
        id: ConferenceId,
        f: impl FnOnce(&Self, &mut Registry, &mut Effects) -> Result<T>,
    ) -> Result<T> {
        let mut effects = Effects::default();
        let mut registry = self.registry.lock();
        if registry.conferences.get(name).is_none_or(|c| c.id != id) {
            return Err(Error::NotFound(format!("conference {name}")));
        }
        let result = f(self, &mut registry, &mut effects);
        drop(registry);
        effects.apply(self);
        result
    }

    pub fn end_conference(&self, name: &str, id: ConferenceId) -> Result<()> {
        self.with_policy(name, id, |shared, registry, effects| {
            shared.end_locked(registry, name, effects);
            Ok(())
        })
    }

    pub fn policy(&self, name: &str, id: ConferenceId) -> Result<ConferencePolicy> {
        self.with_policy(name, id, |_, registry, _| Ok(registry.conferences[name].policy.clone()))
    }

    /// Replaces conference `name`'s policy. It applies to who joins from now
    /// on; of those present, it changes who waits for a moderator.
    pub fn set_policy(&self, name: &str, id: ConferenceId, rate: u32, policy: ConferencePolicy) -> Result<()> {
        policy.validate()?;
        // Rendering (resampling a file) is work for the caller's thread, not under the lock.
        let audio = PolicyAudio::render(&policy, rate)?;
        self.with_policy(name, id, |shared, registry, effects| {
            let conference = registry.conferences.get_mut(name).expect("checked by with_policy");
            if conference.policy.locked != policy.locked {
                effects.events.push(Event::Locked { conference: name.into(), locked: policy.locked });
            }
            conference.policy = policy;
            conference.policy_audio = Some(audio);
            shared.refresh_waiting(registry, name);
            Ok(())
        })
    }

    pub fn set_locked(&self, name: &str, id: ConferenceId, locked: bool) -> Result<()> {
        self.with_policy(name, id, |_, registry, effects| {
            let conference = registry.conferences.get_mut(name).expect("checked by with_policy");
            if std::mem::replace(&mut conference.policy.locked, locked) != locked {
                effects.events.push(Event::Locked { conference: name.into(), locked });
            }
            Ok(())
        })
    }

    /// Mutes or unmutes everyone in conference `name` but its moderators.
    pub fn mute_all(&self, name: &str, id: ConferenceId, muted: bool) -> Result<()> {
        self.with_policy(name, id, |_, registry, effects| {
            let Registry { conferences, participants } = registry;
            for participant in &conferences[name].participants {
                if let Some(entry) = participants.get(participant).filter(|p| !p.policy.moderator) {
                    effects.events.extend(apply_mute(*participant, entry, muted));
                }
            }
            Ok(())
        })
    }

    /// Mutes or unmutes one participant; reports a change.
    pub fn set_muted(&self, id: ParticipantId, muted: bool) -> Result<()> {
        let event = {
            let registry = self.registry.lock();
            let entry =
                registry.participants.get(&id).ok_or_else(|| Error::NotFound(format!("participant {}", id.0)))?;
            apply_mute(id, entry, muted)
        };
        if let Some(event) = event {
            self.emit(event);
        }
        Ok(())
    }

    /// Makes a participant a moderator or an ordinary participant. A
    /// participant typing its PIN is let in by it (the app vouches for it).
    pub fn set_moderator(&self, id: ParticipantId, moderator: bool) -> Result<()> {
        let mut effects = Effects::default();
        let mut registry = self.registry.lock();
        let entry =
            registry.participants.get_mut(&id).ok_or_else(|| Error::NotFound(format!("participant {}", id.0)))?;
        let was_present = entry.policy.present_moderator();
        if moderator && entry.policy.pin.is_some() {
            self.let_in(&mut registry, id, true, &mut effects);
        } else {
            entry.policy.moderator = moderator;
            let (name, present) = (entry.conference.clone(), entry.policy.present_moderator());
            if present && !was_present {
                effects.events.push(Event::ModeratorJoined { conference: name.clone(), participant: id });
            }
            self.refresh_waiting(&mut registry, &name);
        }
        drop(registry);
        effects.apply(self);
        Ok(())
    }
}

/// Sets a participant's mute flag; the event when that changed it.
fn apply_mute(id: ParticipantId, entry: &ParticipantEntry, muted: bool) -> Option<Event> {
    (entry.controls.muted.swap(muted, Ordering::Relaxed) != muted).then(|| Event::Muted {
        conference: entry.conference.clone(),
        participant: id,
        muted,
    })
}
