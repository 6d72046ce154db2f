//! Events for C: polled, or pushed to a callback on a thread of their own
//! (never the mixer thread).

use std::ffi::{c_char, c_void};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use super::{copy_str, fail, sb_endpoint, sb_participant_kind, sb_status, timeout};
use crate::{Endpoint, Error, Event, LeaveReason, PlaybackEnd, RegistrationState};

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum sb_event_kind {
    SB_EVENT_CONFERENCE_CREATED = 0,
    SB_EVENT_CONFERENCE_DESTROYED = 1,
    SB_EVENT_PARTICIPANT_JOINED = 2,
    SB_EVENT_PARTICIPANT_LEFT = 3,
    SB_EVENT_RINGING = 4,
    SB_EVENT_ANSWERED = 5,
    SB_EVENT_DIAL_FAILED = 6,
    /// A participant pressed a key: `digit`, `duration_ms`.
    SB_EVENT_DTMF = 7,
    /// No RTP from a participant for the media timeout.
    SB_EVENT_MEDIA_TIMEOUT = 8,
    /// A participant started (`talking` true) or stopped talking.
    SB_EVENT_TALKING = 9,
    /// A participant's phone put the call on hold (`held` true) or took it off.
    SB_EVENT_HOLD = 10,
    /// An account's registration changed: `account`, `registration`;
    /// `expires` when registered, `status` and `detail` (the reason) when failed.
    SB_EVENT_REGISTRATION = 11,
    /// A prompt ended: `playback`, `completed` (false: stopped); `participant`
    /// is the one it played to, 0 for everyone.
    SB_EVENT_PLAYBACK_FINISHED = 12,
    /// A recording's file was opened: `detail` is its path; `participant` is
    /// the one recorded alone, 0 for the mix.
    SB_EVENT_RECORDING_STARTED = 13,
    /// A recording's file is complete: `detail`, `participant`, `frames_dropped`.
    SB_EVENT_RECORDING_STOPPED = 14,
    /// The disk does not keep up: `frames_dropped` so far for the file in `detail`.
    SB_EVENT_RECORDING_OVERRUN = 15,
    /// A moderator got in (by its PIN, or made one by the app): `participant`.
    SB_EVENT_MODERATOR_JOINED = 16,
    /// The conference was locked (`locked` true) or unlocked.
    SB_EVENT_LOCKED = 17,
    /// A participant was muted (`muted` true) or unmuted.
    SB_EVENT_MUTED = 18,
    /// A caller typed the right PIN; `moderator` when it was the moderator PIN.
    SB_EVENT_PIN_ACCEPTED = 19,
    /// A caller typed a wrong PIN or took too long; `tries_left` 0: it is hung up.
    SB_EVENT_PIN_REJECTED = 20,
    /// The last participant left.
    SB_EVENT_CONFERENCE_EMPTY = 21,
    /// The conference was ended: everyone in it is being hung up.
    SB_EVENT_CONFERENCE_ENDED = 22,
    /// A participant's phone asks to transfer: `detail` is the target. Answer
    /// with `sb_conference_answer_transfer`.
    SB_EVENT_TRANSFER_REQUESTED = 23,
    /// How a transfer asked with `sb_conference_transfer` goes: `status`,
    /// and `done` once it is over.
    SB_EVENT_TRANSFER_PROGRESS = 24,
    /// The app does not read a participant's tap in time: `frames_dropped` so far.
    SB_EVENT_TAP_OVERRUN = 25,
    /// `participant` moved to `conference` from the conference named in `detail`.
    SB_EVENT_PARTICIPANT_MOVED = 26,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum sb_registration_state {
    SB_REGISTRATION_NONE = 0,
    SB_REGISTRATION_REGISTERED = 1,
    /// A REGISTER failed (408 when unanswered, 401/407 for refused
    /// credentials); it is retried after a backoff.
    SB_REGISTRATION_FAILED = 2,
    SB_REGISTRATION_UNREGISTERED = 3,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum sb_leave_reason {
    SB_LEAVE_NONE = 0,
    SB_LEAVE_REMOTE_HANGUP = 1,
    SB_LEAVE_LOCAL_HANGUP = 2,
    SB_LEAVE_CANCELLED = 3,
    SB_LEAVE_TIMEOUT = 4,
    SB_LEAVE_CONFERENCE_DESTROYED = 5,
    SB_LEAVE_ENDPOINT_STOPPED = 6,
    SB_LEAVE_KICKED = 7,
    SB_LEAVE_CONFERENCE_ENDED = 8,
    /// Wrong PINs, too many.
    SB_LEAVE_PIN_REJECTED = 9,
    /// Its phone took the transfer we asked for.
    SB_LEAVE_TRANSFERRED = 10,
    /// Another call took its place (Replaces, as in an attended transfer).
    SB_LEAVE_REPLACED = 11,
    /// The room was full: it heard the policy's `full_prompt` and was hung up.
    SB_LEAVE_ROOM_FULL = 12,
}

/// One event. Strings are NUL-terminated and cut to fit.
#[repr(C)]
pub struct sb_event {
    pub kind: sb_event_kind,
    pub conference: [c_char; 257],
    /// The participant, or 0 for conference events.
    pub participant: u64,
    /// For PARTICIPANT_JOINED.
    pub participant_kind: sb_participant_kind,
    /// For PARTICIPANT_LEFT.
    pub reason: sb_leave_reason,
    /// For DIAL_FAILED and a failed REGISTRATION: the SIP status (408 when nothing answered).
    pub status: u16,
    /// DIAL_FAILED and a failed REGISTRATION: the reason phrase; PARTICIPANT_JOINED: the remote URI;
    /// RECORDING_*: the file's path; PARTICIPANT_MOVED: the conference it left.
    pub detail: [c_char; 256],
    /// For PARTICIPANT_LEFT: the call's RTP packet totals.
    pub packets_received: u64,
    pub packets_sent: u64,
    /// For DTMF: '0'–'9', '*', '#', 'A'–'D'.
    pub digit: c_char,
    /// For DTMF: how long the key was held.
    pub duration_ms: u32,
    /// For TALKING: whether the participant talks now.
    pub talking: bool,
    /// For HOLD: whether the call is on hold now.
    pub held: bool,
    /// For REGISTRATION: the account, as `sb_endpoint_register_account` gave it.
    pub account: u64,
    /// For REGISTRATION: where the account stands now.
    pub registration: sb_registration_state,
    /// For REGISTRATION (registered): the seconds the registrar granted.
    pub expires: u32,
    /// For PLAYBACK_FINISHED: the prompt, and whether it played to its end.
    pub playback: u64,
    pub completed: bool,
    /// For RECORDING_STOPPED and RECORDING_OVERRUN: 20 ms frames lost because
    /// the disk fell behind; for TAP_OVERRUN, because the app did not read.
    pub frames_dropped: u64,
    /// For TRANSFER_PROGRESS: whether the transfer is over.
    pub done: bool,
    /// For LOCKED: whether the conference is locked now.
    pub locked: bool,
    /// For MUTED: whether the participant is muted now.
    pub muted: bool,
    /// For PIN_ACCEPTED: whether the PIN was the moderator PIN.
    pub moderator: bool,
    /// For PIN_REJECTED: tries left; 0 means the caller is hung up.
    pub tries_left: u32,
}

fn to_c(event: &Event) -> sb_event {
    let mut out = sb_event {
        kind: sb_event_kind::SB_EVENT_CONFERENCE_CREATED,
        conference: [0; 257],
        participant: 0,
        participant_kind: sb_participant_kind::SB_PARTICIPANT_INBOUND,
        reason: sb_leave_reason::SB_LEAVE_NONE,
        status: 0,
        detail: [0; 256],
        packets_received: 0,
        packets_sent: 0,
        digit: 0,
        duration_ms: 0,
        talking: false,
        held: false,
        account: 0,
        registration: sb_registration_state::SB_REGISTRATION_NONE,
        expires: 0,
        playback: 0,
        completed: false,
        frames_dropped: 0,
        done: false,
        locked: false,
        muted: false,
        moderator: false,
        tries_left: 0,
    };
    let conference = match event {
        Event::ConferenceCreated { conference } => conference,
        Event::ConferenceDestroyed { conference } => {
            out.kind = sb_event_kind::SB_EVENT_CONFERENCE_DESTROYED;
            conference
        }
        Event::ParticipantJoined { conference, participant, kind, remote } => {
            out.kind = sb_event_kind::SB_EVENT_PARTICIPANT_JOINED;
            out.participant = participant.0;
            out.participant_kind = (*kind).into();
            copy_str(remote, &mut out.detail);
            conference
        }
        Event::ParticipantLeft { conference, participant, reason, packets_received, packets_sent } => {
            out.kind = sb_event_kind::SB_EVENT_PARTICIPANT_LEFT;
            out.participant = participant.0;
            out.reason = match reason {
                LeaveReason::RemoteHangup => sb_leave_reason::SB_LEAVE_REMOTE_HANGUP,
                LeaveReason::LocalHangup => sb_leave_reason::SB_LEAVE_LOCAL_HANGUP,
                LeaveReason::Cancelled => sb_leave_reason::SB_LEAVE_CANCELLED,
                LeaveReason::Timeout => sb_leave_reason::SB_LEAVE_TIMEOUT,
                LeaveReason::ConferenceDestroyed => sb_leave_reason::SB_LEAVE_CONFERENCE_DESTROYED,
                LeaveReason::EndpointStopped => sb_leave_reason::SB_LEAVE_ENDPOINT_STOPPED,
                LeaveReason::Kicked => sb_leave_reason::SB_LEAVE_KICKED,
                LeaveReason::ConferenceEnded => sb_leave_reason::SB_LEAVE_CONFERENCE_ENDED,
                LeaveReason::PinRejected => sb_leave_reason::SB_LEAVE_PIN_REJECTED,
                LeaveReason::Transferred => sb_leave_reason::SB_LEAVE_TRANSFERRED,
                LeaveReason::Replaced => sb_leave_reason::SB_LEAVE_REPLACED,
                LeaveReason::RoomFull => sb_leave_reason::SB_LEAVE_ROOM_FULL,
            };
            out.packets_received = *packets_received;
            out.packets_sent = *packets_sent;
            conference
        }
        Event::Ringing { conference, participant } => {
            out.kind = sb_event_kind::SB_EVENT_RINGING;
            out.participant = participant.0;
            conference
        }
        Event::Answered { conference, participant } => {
            out.kind = sb_event_kind::SB_EVENT_ANSWERED;
            out.participant = participant.0;
            conference
        }
        Event::MediaTimeout { conference, participant } => {
            out.kind = sb_event_kind::SB_EVENT_MEDIA_TIMEOUT;
            out.participant = participant.0;
            conference
        }
        Event::Talking { conference, participant, talking } => {
            out.kind = sb_event_kind::SB_EVENT_TALKING;
            out.participant = participant.0;
            out.talking = *talking;
            conference
        }
        Event::Hold { conference, participant, held } => {
            out.kind = sb_event_kind::SB_EVENT_HOLD;
            out.participant = participant.0;
            out.held = *held;
            conference
        }
        Event::Dtmf { conference, participant, digit, duration_ms } => {
            out.kind = sb_event_kind::SB_EVENT_DTMF;
            out.participant = participant.0;
            // Digits are ASCII by construction.
            out.digit = *digit as u8 as c_char;
            out.duration_ms = *duration_ms;
            conference
        }
        Event::Registration { account, aor: _, state } => {
            out.kind = sb_event_kind::SB_EVENT_REGISTRATION;
            out.account = account.0;
            out.registration = match state {
                RegistrationState::Registered { expires } => {
                    out.expires = *expires;
                    sb_registration_state::SB_REGISTRATION_REGISTERED
                }
                RegistrationState::Failed { status, reason } => {
                    out.status = *status;
                    copy_str(reason, &mut out.detail);
                    sb_registration_state::SB_REGISTRATION_FAILED
                }
                RegistrationState::Unregistered => sb_registration_state::SB_REGISTRATION_UNREGISTERED,
            };
            return out;
        }
        Event::PlaybackFinished { conference, participant, playback, end } => {
            out.kind = sb_event_kind::SB_EVENT_PLAYBACK_FINISHED;
            out.participant = participant.map_or(0, |p| p.0);
            out.playback = playback.0;
            out.completed = *end == PlaybackEnd::Completed;
            conference
        }
        Event::RecordingStarted { conference, participant, path } => {
            out.kind = sb_event_kind::SB_EVENT_RECORDING_STARTED;
            out.participant = participant.map_or(0, |p| p.0);
            copy_str(path, &mut out.detail);
            conference
        }
        Event::RecordingStopped { conference, participant, path, frames_dropped }
        | Event::RecordingOverrun { conference, participant, path, frames_dropped } => {
            out.kind = match event {
                Event::RecordingStopped { .. } => sb_event_kind::SB_EVENT_RECORDING_STOPPED,
                _ => sb_event_kind::SB_EVENT_RECORDING_OVERRUN,
            };
            out.participant = participant.map_or(0, |p| p.0);
            out.frames_dropped = *frames_dropped;
            copy_str(path, &mut out.detail);
            conference
        }
        Event::ModeratorJoined { conference, participant } => {
            out.kind = sb_event_kind::SB_EVENT_MODERATOR_JOINED;
            out.participant = participant.0;
            conference
        }
        Event::Locked { conference, locked } => {
            out.kind = sb_event_kind::SB_EVENT_LOCKED;
            out.locked = *locked;
            conference
        }
        Event::Muted { conference, participant, muted } => {
            out.kind = sb_event_kind::SB_EVENT_MUTED;
            out.participant = participant.0;
            out.muted = *muted;
            conference
        }
        Event::PinAccepted { conference, participant, moderator } => {
            out.kind = sb_event_kind::SB_EVENT_PIN_ACCEPTED;
            out.participant = participant.0;
            out.moderator = *moderator;
            conference
        }
        Event::PinRejected { conference, participant, tries_left } => {
            out.kind = sb_event_kind::SB_EVENT_PIN_REJECTED;
            out.participant = participant.0;
            out.tries_left = *tries_left;
            conference
        }
        Event::ConferenceEmpty { conference } => {
            out.kind = sb_event_kind::SB_EVENT_CONFERENCE_EMPTY;
            conference
        }
        Event::ConferenceEnded { conference } => {
            out.kind = sb_event_kind::SB_EVENT_CONFERENCE_ENDED;
            conference
        }
        Event::TransferRequested { conference, participant, target } => {
            out.kind = sb_event_kind::SB_EVENT_TRANSFER_REQUESTED;
            out.participant = participant.0;
            copy_str(target, &mut out.detail);
            conference
        }
        Event::TransferProgress { conference, participant, status, done } => {
            out.kind = sb_event_kind::SB_EVENT_TRANSFER_PROGRESS;
            out.participant = participant.0;
            out.status = *status;
            out.done = *done;
            conference
        }
        Event::TapOverrun { conference, participant, frames_dropped } => {
            out.kind = sb_event_kind::SB_EVENT_TAP_OVERRUN;
            out.participant = participant.0;
            out.frames_dropped = *frames_dropped;
            conference
        }
        Event::ParticipantMoved { participant, from, to } => {
            out.kind = sb_event_kind::SB_EVENT_PARTICIPANT_MOVED;
            out.participant = participant.0;
            copy_str(from, &mut out.detail);
            to
        }
        Event::DialFailed { conference, participant, status, reason } => {
            out.kind = sb_event_kind::SB_EVENT_DIAL_FAILED;
            out.participant = participant.0;
            out.status = *status;
            copy_str(reason, &mut out.detail);
            conference
        }
    };
    copy_str(conference, &mut out.conference);
    out
}

/// Waits up to `timeout_ms` for the next event and writes it to `out`;
/// SB_TIMEOUT when none came. Do not mix with `sb_endpoint_set_event_callback`.
#[no_mangle]
pub extern "C" fn sb_endpoint_poll_event(
    endpoint: *const sb_endpoint,
    timeout_ms: u32,
    out: *mut sb_event,
) -> sb_status {
    ffi_guard!({
        let endpoint = try_ref!(endpoint);
        let out = try_mut!(out);
        let event = try_call!(endpoint.endpoint.next_event(timeout(timeout_ms)));
        *out = to_c(&event);
        sb_status::SB_OK
    })
}

/// Called with each event on sipbridge's event thread. `event` is valid only
/// during the call.
pub type sb_event_callback = Option<unsafe extern "C" fn(userdata: *mut c_void, event: *const sb_event)>;

pub(super) struct CallbackThread {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

impl CallbackThread {
    pub(super) fn stop(self) {
        self.stop.store(true, Ordering::Release);
        // A callback may stop the endpoint itself; do not join our own thread.
        if self.thread.thread().id() != std::thread::current().id() {
            let _ = self.thread.join();
        }
    }
}

/// The user's pointer, handed to the callback thread; the user promises it
/// may be used from there.
struct UserData(*mut c_void);
// SAFETY: see above; sipbridge never dereferences it.
unsafe impl Send for UserData {}

/// Delivers every event to `callback` on a dedicated thread (never the mixer
/// thread), replacing any earlier callback. NULL `callback` turns delivery off.
#[no_mangle]
pub extern "C" fn sb_endpoint_set_event_callback(
    endpoint: *const sb_endpoint,
    callback: sb_event_callback,
    userdata: *mut c_void,
) -> sb_status {
    ffi_guard!({
        let endpoint = try_ref!(endpoint);
        let mut slot = endpoint.callback.lock();
        if let Some(old) = slot.take() {
            old.stop();
        }
        let Some(callback) = callback else { return sb_status::SB_OK };
        let stop = Arc::new(AtomicBool::new(false));
        let userdata = UserData(userdata);
        // The thread needs the endpoint; it lives as long as the sb_endpoint,
        // whose free stops and joins this thread first.
        let endpoint_ptr = EndpointRef(&endpoint.endpoint as *const Endpoint);
        let thread_stop = stop.clone();
        let thread = std::thread::Builder::new().name("sipbridge-events".into()).spawn(move || {
            let userdata = userdata;
            let endpoint_ptr = endpoint_ptr;
            // SAFETY: sb_endpoint_free stops and joins this thread before freeing.
            let endpoint = unsafe { &*endpoint_ptr.0 };
            while !thread_stop.load(Ordering::Acquire) {
                match endpoint.next_event(Some(Duration::from_millis(50))) {
                    Ok(event) => {
                        let event = to_c(&event);
                        // SAFETY: the caller's function, called as its signature says.
                        unsafe { callback(userdata.0, &event) };
                    }
                    Err(Error::Timeout) => {}
                    Err(_) => break,
                }
            }
        });
        match thread {
            Ok(thread) => {
                *slot = Some(CallbackThread { stop, thread });
                sb_status::SB_OK
            }
            Err(e) => fail(sb_status::SB_IO, format!("cannot start the event thread: {e}")),
        }
    })
}

struct EndpointRef(*const Endpoint);
// SAFETY: Endpoint is Sync; the pointer outlives the thread (see above).
unsafe impl Send for EndpointRef {}
