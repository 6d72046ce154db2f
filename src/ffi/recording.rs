//! Recording a conference, for C.

use std::ffi::{c_char, CStr};

use super::{fail, from_result, sb_conference, sb_status};

/// Records the conference's mix to a WAV file at `path` (mono 16-bit at the
/// conference's rate) and, with `per_participant`, each participant's own
/// audio to `NAME-ID.wav` beside it. One recording at a time
/// (SB_ALREADY_EXISTS); SB_EVENT_RECORDING_STARTED for each file. A slow
/// disk drops frames (SB_EVENT_RECORDING_OVERRUN), never holding up the audio.
#[no_mangle]
pub extern "C" fn sb_conference_start_recording(
    conference: *const sb_conference,
    path: *const c_char,
    per_participant: bool,
) -> sb_status {
    ffi_guard!({
        let conference = try_ref!(conference);
        let path = try_str!(path);
        from_result(conference.conference.start_recording(path, per_participant))
    })
}

/// Pauses (`paused` true) or resumes the recording: paused time is left out of its files.
#[no_mangle]
pub extern "C" fn sb_conference_pause_recording(conference: *const sb_conference, paused: bool) -> sb_status {
    ffi_guard!({
        let conference = &try_ref!(conference).conference;
        from_result(if paused { conference.pause_recording() } else { conference.resume_recording() })
    })
}

/// Stops the recording; returns once its files are complete
/// (SB_EVENT_RECORDING_STOPPED for each). SB_NOT_FOUND when none runs.
#[no_mangle]
pub extern "C" fn sb_conference_stop_recording(conference: *const sb_conference) -> sb_status {
    ffi_guard!({ from_result(try_ref!(conference).conference.stop_recording()) })
}
