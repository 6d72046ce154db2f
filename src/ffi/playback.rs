//! Prompts for C: made once (`sb_playback_*`), played as often as wanted.

use std::ffi::{c_char, CStr};
use std::time::Duration;

use super::{fail, from_result, sb_conference, sb_status};
use crate::{Error, ParticipantId, Playback, PlaybackId};

/// A prompt, decoded: a WAV file, PCM, or a tone. Freed by `sb_playback_free`;
/// playing it does not consume it.
pub struct sb_playback {
    pub(super) playback: Playback,
}

fn new_playback(playback: Playback, out: *mut *mut sb_playback) -> sb_status {
    let out = try_mut!(out);
    *out = Box::into_raw(Box::new(sb_playback { playback }));
    sb_status::SB_OK
}

/// Decodes a WAV file (8/16/24/32-bit integer or 32-bit float PCM, any
/// rate, mono or several channels, mixed down) into `out`.
#[no_mangle]
pub extern "C" fn sb_playback_wav_file(path: *const c_char, out: *mut *mut sb_playback) -> sb_status {
    ffi_guard!({
        let path = try_str!(path);
        new_playback(try_call!(Playback::wav_file(path).map_err(Error::from)), out)
    })
}

/// A prompt of `len` mono samples at the rate of the conference it is
/// played in (they are copied).
#[no_mangle]
pub extern "C" fn sb_playback_pcm(pcm: *const i16, len: usize, out: *mut *mut sb_playback) -> sb_status {
    ffi_guard!({
        let samples: &[i16] = if len == 0 {
            &[]
        } else {
            let pcm = try_ref!(pcm);
            // SAFETY: the caller gives `len` readable samples at `pcm`.
            unsafe { std::slice::from_raw_parts(pcm as *const i16, len) }
        };
        new_playback(Playback::pcm(samples), out)
    })
}

/// A tone: the sum of sines at `count` (1 to 4) `frequencies` in Hz, each at
/// `level_dbov` (-60 to -3), lasting `duration_ms` (at most 60 s).
#[no_mangle]
pub extern "C" fn sb_playback_tone(
    frequencies: *const f32,
    count: usize,
    duration_ms: u32,
    level_dbov: f32,
    out: *mut *mut sb_playback,
) -> sb_status {
    ffi_guard!({
        let first = try_ref!(frequencies);
        if count == 0 || count > 4 {
            return fail(sb_status::SB_INVALID_ARGUMENT, format!("{count} frequencies; give one to four"));
        }
        // SAFETY: the caller gives `count` readable floats at `frequencies`.
        let frequencies = unsafe { std::slice::from_raw_parts(first as *const f32, count) };
        let duration = Duration::from_millis(duration_ms.into());
        new_playback(try_call!(Playback::tone(frequencies, duration, level_dbov).map_err(Error::from)), out)
    })
}

/// Frees a prompt; prompts already playing go on. NULL is allowed.
#[no_mangle]
pub extern "C" fn sb_playback_free(playback: *mut sb_playback) {
    let _ = ffi_guard!({
        if !playback.is_null() {
            // SAFETY: from an sb_playback_ function, not freed before.
            drop(unsafe { Box::from_raw(playback) });
        }
        sb_status::SB_OK
    });
}

/// Plays `playback` to everyone (`participant` 0) or to one participant,
/// after the prompts queued for them, and writes its id to `id`.
/// SB_EVENT_PLAYBACK_FINISHED reports when it ends.
#[no_mangle]
pub extern "C" fn sb_conference_play(
    conference: *const sb_conference,
    playback: *const sb_playback,
    participant: u64,
    id: *mut u64,
) -> sb_status {
    ffi_guard!({
        let conference = &try_ref!(conference).conference;
        let playback = &try_ref!(playback).playback;
        let out = try_mut!(id);
        let played = match participant {
            0 => conference.play(playback),
            p => conference.play_to(ParticipantId(p), playback),
        };
        *out = try_call!(played).0;
        sb_status::SB_OK
    })
}

/// Stops prompt `id` (playing or queued), or with `id` 0 every prompt of the
/// conference. A prompt that has ended already is no error.
#[no_mangle]
pub extern "C" fn sb_conference_stop_playback(conference: *const sb_conference, id: u64) -> sb_status {
    ffi_guard!({
        let conference = &try_ref!(conference).conference;
        from_result(match id {
            0 => conference.stop_all_playback(),
            id => conference.stop_playback(PlaybackId(id)),
        })
    })
}
