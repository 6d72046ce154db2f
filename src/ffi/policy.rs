//! Conference policy and moderator actions, for C.

use std::ffi::{c_char, CStr};
use std::time::Duration;

use super::{fail, from_result, sb_conference, sb_playback, sb_status, with_participant};
use crate::media::codec::CodecKind;
use crate::{Admission, ConferencePolicy};

/// Where a participant stands with the conference policy.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum sb_admission {
    /// In the mix.
    SB_ADMISSION_ADMITTED = 0,
    /// Typing its PIN: hears only the prompt, is not heard.
    SB_ADMISSION_ENTERING_PIN = 1,
    /// Waiting for a moderator: hears hold music, is not heard.
    SB_ADMISSION_WAITING_FOR_MODERATOR = 2,
    /// Turned away from a full room: hears `full_prompt`, is not heard, and
    /// is hung up when it ends (SB_LEAVE_ROOM_FULL).
    SB_ADMISSION_TURNED_AWAY = 3,
}

impl From<Admission> for sb_admission {
    fn from(admission: Admission) -> Self {
        match admission {
            Admission::Admitted => Self::SB_ADMISSION_ADMITTED,
            Admission::EnteringPin => Self::SB_ADMISSION_ENTERING_PIN,
            Admission::WaitingForModerator => Self::SB_ADMISSION_WAITING_FOR_MODERATOR,
            Admission::TurnedAway => Self::SB_ADMISSION_TURNED_AWAY,
        }
    }
}

/// A conference's rules. Fill it with `sb_conference_policy_init` (which
/// admits everyone at once), then change fields.
#[repr(C)]
pub struct sb_conference_policy {
    /// Participants at most, 0 for no limit: a caller beyond it gets 486
    /// (or hears `full_prompt`), the app's dial or local participant SB_FULL.
    pub max_participants: u32,
    /// The PIN callers type, then '#' (digits 0-9, A-D; NULL: none). While
    /// they type it they neither hear the conference nor are heard.
    pub pin: *const c_char,
    /// The PIN that makes a caller a moderator (NULL: none). With it and no
    /// `pin`, '#' alone lets a caller in as an ordinary participant.
    pub moderator_pin: *const c_char,
    /// No one new may join: callers get 403, the app SB_LOCKED.
    pub locked: bool,
    /// Non-moderators hear hold music, and are not heard, until a moderator is there.
    pub wait_for_moderator: bool,
    /// When the last moderator leaves, everyone is hung up.
    pub end_when_moderator_leaves: bool,
    /// Non-moderators join muted.
    pub mute_on_join: bool,
    /// How long a caller may take over its PIN, from the prompt or its last digit.
    pub pin_timeout_ms: u32,
    /// Played to a caller asked for its PIN (NULL: a beep); copied by
    /// `sb_conference_set_policy`, so it may be freed after.
    pub pin_prompt: *const sb_playback,
    /// Played over and over to those waiting for a moderator (NULL: a soft tone).
    pub hold_music: *const sb_playback,
    /// The conference's codecs in order of preference, comma-separated
    /// ("opus,G722,PCMU,PCMA"), or NULL for the endpoint's.
    pub codecs: *const c_char,
    /// Announced to a caller the room is too full for, which is answered,
    /// hears it apart from the room and is then hung up (NULL: 486 Busy
    /// Here); copied, as `pin_prompt` is.
    pub full_prompt: *const sb_playback,
}

/// Fills `policy` with the default: no limit, no PIN, unlocked, no moderator rules.
#[no_mangle]
pub extern "C" fn sb_conference_policy_init(policy: *mut sb_conference_policy) -> sb_status {
    ffi_guard!({
        let policy = try_mut!(policy);
        *policy = sb_conference_policy {
            max_participants: 0,
            pin: std::ptr::null(),
            moderator_pin: std::ptr::null(),
            locked: false,
            wait_for_moderator: false,
            end_when_moderator_leaves: false,
            mute_on_join: false,
            pin_timeout_ms: crate::policy::DEFAULT_PIN_TIMEOUT.as_millis() as u32,
            pin_prompt: std::ptr::null(),
            hold_music: std::ptr::null(),
            codecs: std::ptr::null(),
            full_prompt: std::ptr::null(),
        };
        sb_status::SB_OK
    })
}

/// A string field that may be NULL.
fn optional_str(ptr: *const c_char) -> Result<Option<String>, sb_status> {
    if ptr.is_null() {
        return Ok(None);
    }
    // SAFETY: non-null, and the caller promises a NUL-terminated string.
    match unsafe { CStr::from_ptr(ptr) }.to_str() {
        Ok(s) => Ok(Some(s.to_string())),
        Err(_) => Err(fail(sb_status::SB_INVALID_ARGUMENT, "a PIN or codec list is not UTF-8")),
    }
}

/// Sets the conference's policy: it applies to those who join from now on;
/// of those present, it changes who waits for a moderator.
/// SB_EVENT_LOCKED when it locks or unlocks the conference.
#[no_mangle]
pub extern "C" fn sb_conference_set_policy(
    conference: *const sb_conference,
    policy: *const sb_conference_policy,
) -> sb_status {
    ffi_guard!({
        let conference = try_ref!(conference);
        match policy_from_c(try_ref!(policy)) {
            Ok(policy) => from_result(conference.conference.set_policy(policy)),
            Err(status) => status,
        }
    })
}

/// The Rust policy a C one describes; a bad string field is the error status.
pub(super) fn policy_from_c(p: &sb_conference_policy) -> Result<ConferencePolicy, sb_status> {
    let codecs = match optional_str(p.codecs)? {
        None => None,
        Some(list) => match list.split(',').map(|n| CodecKind::from_encoding_name(n.trim())).collect() {
            Some(codecs) => Some(codecs),
            None => return Err(fail(sb_status::SB_INVALID_ARGUMENT, format!("unknown codec in {list:?}"))),
        },
    };
    // SAFETY: NULL or a live sb_playback (the caller's promise).
    let playback = |ptr: *const sb_playback| unsafe { ptr.as_ref() }.map(|p| p.playback.clone());
    Ok(ConferencePolicy {
        max_participants: (p.max_participants > 0).then_some(p.max_participants as usize),
        pin: optional_str(p.pin)?,
        moderator_pin: optional_str(p.moderator_pin)?,
        locked: p.locked,
        wait_for_moderator: p.wait_for_moderator,
        end_when_moderator_leaves: p.end_when_moderator_leaves,
        mute_on_join: p.mute_on_join,
        pin_prompt: playback(p.pin_prompt),
        hold_music: playback(p.hold_music),
        full_prompt: playback(p.full_prompt),
        pin_timeout: Duration::from_millis(p.pin_timeout_ms.into()),
        codecs,
    })
}

/// Locks (`locked` true) or unlocks the conference (SB_EVENT_LOCKED on a change).
#[no_mangle]
pub extern "C" fn sb_conference_lock(conference: *const sb_conference, locked: bool) -> sb_status {
    ffi_guard!({
        let conference = &try_ref!(conference).conference;
        from_result(if locked { conference.lock() } else { conference.unlock() })
    })
}

/// Mutes (or unmutes) everyone but the moderators (SB_EVENT_MUTED for each change).
#[no_mangle]
pub extern "C" fn sb_conference_mute_all(conference: *const sb_conference, muted: bool) -> sb_status {
    ffi_guard!({ from_result(try_ref!(conference).conference.mute_all(muted)) })
}

/// Hangs everyone up (SB_LEAVE_CONFERENCE_ENDED) and reports
/// SB_EVENT_CONFERENCE_ENDED; the conference stays, empty, until destroyed.
#[no_mangle]
pub extern "C" fn sb_conference_end(conference: *const sb_conference) -> sb_status {
    ffi_guard!({ from_result(try_ref!(conference).conference.end()) })
}

/// Makes a participant a moderator (SB_EVENT_MODERATOR_JOINED) or not; a
/// caller still typing its PIN is let in.
#[no_mangle]
pub extern "C" fn sb_conference_set_moderator(
    conference: *const sb_conference,
    participant: u64,
    moderator: bool,
) -> sb_status {
    with_participant(conference, participant, |p| p.set_moderator(moderator))
}

/// Deafens a participant (it hears nothing of the conference; the others
/// still hear it), or lets it hear again.
#[no_mangle]
pub extern "C" fn sb_conference_set_deaf(conference: *const sb_conference, participant: u64, deaf: bool) -> sb_status {
    with_participant(conference, participant, |p| p.set_deaf(deaf))
}

/// Hangs a participant up, reported as SB_LEAVE_KICKED.
#[no_mangle]
pub extern "C" fn sb_conference_kick(conference: *const sb_conference, participant: u64) -> sb_status {
    with_participant(conference, participant, |p| p.kick())
}
