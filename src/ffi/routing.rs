//! Per-participant taps, the listen/talk matrix, and moving participants
//! between conferences (breakout rooms), for C.

use super::{fail, from_result, sb_conference, sb_status, timeout, with_participant};
use crate::{Participant, ParticipantId, TapReader};

/// The most participants a hears-only or heard-only-by list holds.
pub const SB_MAX_PARTICIPANT_SET: usize = 16;
const _: () = assert!(SB_MAX_PARTICIPANT_SET == crate::MAX_PARTICIPANT_SET);

/// A tap on one participant's own audio.
pub struct sb_tap {
    reader: TapReader,
}

/// What `sb_tap_read` says about the frame it read.
#[repr(C)]
pub struct sb_tap_frame {
    /// Where the frame starts, in samples at the conference's rate; a jump
    /// of more than one frame means frames were dropped.
    pub timestamp: u64,
    /// Whether the participant was talking.
    pub talking: bool,
}

/// Opens a tap on a participant's own audio (decoded, after noise
/// suppression, before its volume; 20 ms frames at the conference's rate,
/// buffered one second). One tap per participant (SB_ALREADY_EXISTS);
/// frames not read in time are dropped (SB_EVENT_TAP_OVERRUN). It follows
/// the participant to another conference; `sb_tap_free` closes it.
#[no_mangle]
pub extern "C" fn sb_conference_tap(
    conference: *const sb_conference,
    participant: u64,
    out: *mut *mut sb_tap,
) -> sb_status {
    ffi_guard!({
        let out = try_mut!(out);
        let mut tap = None;
        let status = with_participant(conference, participant, |p| {
            tap = Some(p.tap()?);
            Ok(())
        });
        if let Some(reader) = tap {
            *out = Box::into_raw(Box::new(sb_tap { reader }));
        }
        status
    })
}

/// Reads the participant's next frame into `out` (`len` must be a frame),
/// waiting up to `timeout_ms`, and describes it in `frame` (which may be
/// NULL). SB_NOT_FOUND once the participant has left and all was read.
#[no_mangle]
pub extern "C" fn sb_tap_read(
    tap: *mut sb_tap,
    out: *mut i16,
    len: usize,
    timeout_ms: u32,
    frame: *mut sb_tap_frame,
) -> sb_status {
    ffi_guard!({
        let tap = try_mut!(tap);
        let samples = try_mut!(out);
        // SAFETY: the caller gives `len` writable samples at `out`.
        let samples = unsafe { std::slice::from_raw_parts_mut(samples as *mut i16, len) };
        let info = try_call!(tap.reader.read_frame(samples, timeout(timeout_ms)));
        if !frame.is_null() {
            // SAFETY: non-null, and the caller gives a writable sb_tap_frame.
            unsafe { *frame = sb_tap_frame { timestamp: info.timestamp, talking: info.talking } };
        }
        sb_status::SB_OK
    })
}

/// Frames the tap dropped because they were not read in time.
#[no_mangle]
pub extern "C" fn sb_tap_frames_dropped(tap: *const sb_tap, out: *mut u64) -> sb_status {
    ffi_guard!({
        let tap = try_ref!(tap);
        *try_mut!(out) = tap.reader.frames_dropped();
        sb_status::SB_OK
    })
}

/// Closes and frees a tap. NULL is allowed.
#[no_mangle]
pub extern "C" fn sb_tap_free(tap: *mut sb_tap) {
    let _ = ffi_guard!({
        if !tap.is_null() {
            // SAFETY: from sb_conference_tap, not freed before.
            drop(unsafe { Box::from_raw(tap) });
        }
        sb_status::SB_OK
    });
}

/// Applies `set` to a participant with the `count` ids at `ids`, or with
/// `everyone` `None`.
fn set_routing(
    conference: *const sb_conference,
    participant: u64,
    (everyone, ids, count): (bool, *const u64, usize),
    set: impl FnOnce(&Participant, Option<&[ParticipantId]>) -> crate::Result<()>,
) -> sb_status {
    ffi_guard!({
        let ids: Option<Vec<ParticipantId>> = match (everyone, count) {
            (true, _) => None,
            (false, 0) => Some(Vec::new()),
            (false, _) => {
                let ids = try_ref!(ids);
                // SAFETY: the caller gives `count` readable ids at `ids`.
                let ids = unsafe { std::slice::from_raw_parts(ids as *const u64, count) };
                Some(ids.iter().map(|id| ParticipantId(*id)).collect())
            }
        };
        with_participant(conference, participant, |p| set(p, ids.as_deref()))
    })
}

/// Makes a participant hear only the `count` participants at `ids` (none
/// when `count` is 0; at most SB_MAX_PARTICIPANT_SET), or with `everyone`
/// everyone (`ids` is then ignored). Prompts still reach it.
#[no_mangle]
pub extern "C" fn sb_conference_set_hears_only(
    conference: *const sb_conference,
    participant: u64,
    everyone: bool,
    ids: *const u64,
    count: usize,
) -> sb_status {
    set_routing(conference, participant, (everyone, ids, count), Participant::set_hears_only)
}

/// Lets only the `count` participants at `ids` hear a participant, or with
/// `everyone` everyone. A supervisor listening in: `count` 0; whispering to
/// an agent: the agent's id; barging in: `everyone`.
#[no_mangle]
pub extern "C" fn sb_conference_set_heard_only_by(
    conference: *const sb_conference,
    participant: u64,
    everyone: bool,
    ids: *const u64,
    count: usize,
) -> sb_status {
    set_routing(conference, participant, (everyone, ids, count), Participant::set_heard_only_by)
}

/// Moves a participant of `from` to conference `to` (a breakout room, or
/// back) without a new call; both must mix at the same rate
/// (SB_INVALID_ARGUMENT). SB_EVENT_PARTICIPANT_MOVED follows.
#[no_mangle]
pub extern "C" fn sb_conference_move_participant(
    from: *const sb_conference,
    participant: u64,
    to: *const sb_conference,
) -> sb_status {
    ffi_guard!({
        let (from, to) = (try_ref!(from), try_ref!(to));
        from_result(from.conference.move_participant(ParticipantId(participant), &to.conference))
    })
}

/// Moves everyone in `from` to `to` (bringing a breakout room back).
#[no_mangle]
pub extern "C" fn sb_conference_move_all(from: *const sb_conference, to: *const sb_conference) -> sb_status {
    ffi_guard!({
        let (from, to) = (try_ref!(from), try_ref!(to));
        from_result(from.conference.move_all_to(&to.conference).map(|_| ()))
    })
}
