//! Prompts and recordings through the public API: what participants hear,
//! and what the files hold.

use std::time::Duration;

use sipbridge::{Event, LocalParticipant, Playback, PlaybackEnd, PlaybackId};

use crate::common::{endpoint, tone_power_at, wait_event};

const WIDE: u32 = 48000;

/// Reads `frames` frames of what `local` hears.
fn listen(local: &mut LocalParticipant, frames: usize) -> Vec<i16> {
    let mut frame = vec![0i16; local.frame_samples()];
    let mut heard = Vec::with_capacity(frames * frame.len());
    for _ in 0..frames {
        local.read_frame(&mut frame, Some(Duration::from_secs(1))).expect("a frame every 20 ms");
        heard.extend_from_slice(&frame);
    }
    heard
}

/// Level in dBov (0 dBov: a full-scale square wave).
fn dbov(samples: &[i16]) -> f64 {
    let power = samples.iter().map(|s| (*s as f64).powi(2)).sum::<f64>() / samples.len().max(1) as f64;
    10.0 * (power / (32768.0f64 * 32768.0)).log10()
}

/// The span of `samples` louder than -50 dBov sample by sample, as (start, length).
fn audible_span(samples: &[i16]) -> (usize, usize) {
    let loud = |s: &i16| s.unsigned_abs() > 100;
    let start = samples.iter().position(loud).expect("something is heard");
    let end = samples.iter().rposition(loud).unwrap();
    (start, end + 1 - start)
}

/// The share of `samples`' power at `freq` (Goertzel): 1 for a pure tone.
fn purity(samples: &[i16], freq: f64, rate: u32) -> f64 {
    let tone = 2.0 * tone_power_at(samples, freq, rate);
    let total = samples.iter().map(|s| (*s as f64).powi(2)).sum::<f64>() / samples.len() as f64;
    tone / total
}

fn finished(endpoint: &sipbridge::Endpoint, id: PlaybackId) -> (Option<sipbridge::ParticipantId>, PlaybackEnd) {
    wait_event(endpoint, Duration::from_secs(5), |e| match e {
        Event::PlaybackFinished { playback, participant, end, .. } if *playback == id => Some((*participant, *end)),
        _ => None,
    })
}

fn temp_path(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("sipbridge-it-{}-{name}", std::process::id()))
}

#[test]
fn a_wav_prompt_at_16_khz_is_heard_by_everyone_in_a_48_khz_room() {
    let ep = endpoint();
    let room = ep.create_conference_with_rate("prompt-wav", WIDE).unwrap();
    let mut a = room.add_local().unwrap();
    let mut b = room.add_local().unwrap();
    // 0.6 s of 440 Hz at 16 kHz, amplitude 8000 (-15.2 dBov).
    let path = temp_path("tone16k.wav");
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: 16000,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut writer = hound::WavWriter::create(&path, spec).unwrap();
    for n in 0..9600 {
        writer.write_sample((8000.0 * (2.0 * std::f64::consts::PI * 440.0 * n as f64 / 16000.0).sin()) as i16).unwrap();
    }
    writer.finalize().unwrap();

    let id = room.play(&Playback::wav_file(&path).unwrap()).unwrap();
    std::fs::remove_file(&path).unwrap();
    for heard in [listen(&mut a, 50), listen(&mut b, 50)] {
        let (start, len) = audible_span(&heard);
        assert!(len.abs_diff(28800) < 100, "heard {len} samples, not 0.6 s at 48 kHz");
        let middle = &heard[start + 4800..start + 24000];
        let level = dbov(middle);
        assert!((level + 15.24).abs() < 0.3, "heard at {level:.2} dBov");
        assert!(purity(middle, 440.0, WIDE) > 0.999, "not a clean 440 Hz tone");
    }
    assert_eq!(finished(&ep, id), (None, PlaybackEnd::Completed));
}

#[test]
fn a_prompt_to_one_participant_is_heard_by_it_alone_and_prompts_stop() {
    let ep = endpoint();
    let room = ep.create_conference_with_rate("prompt-one", WIDE).unwrap();
    let mut a = room.add_local().unwrap();
    let mut b = room.add_local().unwrap();
    let beep = Playback::tone(&[1000.0], Duration::from_millis(400), -20.0).unwrap();
    let id = room.play_to(a.id(), &beep).unwrap();
    let (to_a, to_b) = (listen(&mut a, 30), listen(&mut b, 30));
    assert!(to_b.iter().all(|s| *s == 0), "the other participant heard it");
    let (start, len) = audible_span(&to_a);
    assert!(len.abs_diff(19200) < 100, "heard {len} samples, not 0.4 s");
    let middle = &to_a[start + 2400..start + 16800];
    assert!((dbov(middle) + 20.0).abs() < 0.3, "heard at {:.2} dBov", dbov(middle));
    assert!(purity(middle, 1000.0, WIDE) > 0.999);
    assert_eq!(finished(&ep, id), (Some(a.id()), PlaybackEnd::Completed));

    // A long prompt, stopped: it ends at once and is reported stopped; one
    // queued behind another ends with its conference.
    let hold_music = Playback::tone(&[440.0, 480.0], Duration::from_secs(20), -25.0).unwrap();
    let long = room.play(&hold_music).unwrap();
    listen(&mut b, 5);
    room.stop_playback(long).unwrap();
    assert_eq!(finished(&ep, long), (None, PlaybackEnd::Stopped));
    listen(&mut b, 2);
    assert!(listen(&mut b, 5).iter().all(|s| *s == 0), "still heard after it stopped");
    let first = room.play_to(b.id(), &hold_music).unwrap();
    let second = room.play_to(b.id(), &beep).unwrap();
    room.destroy().unwrap();
    assert_eq!(finished(&ep, first).1, PlaybackEnd::Stopped);
    assert_eq!(finished(&ep, second).1, PlaybackEnd::Stopped);
}

#[test]
fn bad_prompts_are_refused() {
    let ep = endpoint();
    let room = ep.create_conference("prompt-bad").unwrap();
    assert!(matches!(Playback::wav_file("/nonexistent.wav"), Err(sipbridge::PlaybackError::Wav { .. })));
    let beep = Playback::tone(&[1000.0], Duration::from_millis(100), -20.0).unwrap();
    let err = room.play_to(sipbridge::ParticipantId(999_999), &beep).unwrap_err();
    assert!(matches!(err, sipbridge::Error::NotFound(_)), "{err}");
}

/// One frame of `freq` Hz (0: silence) at amplitude 8000, continuing from sample `n`.
fn frame_of(freq: f64, n: &mut usize, frame: usize) -> Vec<i16> {
    (0..frame)
        .map(|_| {
            *n += 1;
            (8000.0 * (2.0 * std::f64::consts::PI * freq * *n as f64 / WIDE as f64).sin()) as i16
        })
        .collect()
}

fn read_wav(path: &std::path::Path) -> (hound::WavSpec, Vec<i16>) {
    let mut reader = hound::WavReader::open(path).unwrap();
    let samples = reader.samples::<i16>().map(Result::unwrap).collect();
    (reader.spec(), samples)
}

#[test]
fn a_recording_holds_the_mix_and_each_participant_and_pause_leaves_a_span_out() {
    let ep = endpoint();
    let room = ep.create_conference_with_rate("recorded", WIDE).unwrap();
    let mut talker = room.add_local().unwrap();
    let mut listener = room.add_local().unwrap();
    let frame = talker.frame_samples();
    let path = temp_path("recorded.wav");
    room.start_recording(&path, true).unwrap();
    assert!(matches!(room.start_recording(&path, false), Err(sipbridge::Error::AlreadyExists(_))));
    // Paced by what the listener hears: 1 s of 440 Hz, a pause over 0.5 s
    // of 1000 Hz (with 100 ms of silence either side, as the talker's queue
    // runs ahead of the mixer), then 0.5 s of 440 Hz.
    let mut n = 0;
    let mut say = |freq: f64, frames: usize| {
        for _ in 0..frames {
            talker.write_all(&frame_of(freq, &mut n, frame), Some(Duration::from_secs(1))).unwrap();
            listen(&mut listener, 1);
        }
    };
    say(440.0, 50);
    say(0.0, 5);
    room.pause_recording().unwrap();
    say(1000.0, 25);
    say(0.0, 5);
    room.resume_recording().unwrap();
    say(440.0, 25);
    say(0.0, 5);
    room.stop_recording().unwrap();
    assert!(matches!(room.stop_recording(), Err(sipbridge::Error::NotFound(_))));

    let own_path =
        path.with_file_name(format!("{}-{}.wav", path.file_stem().unwrap().to_string_lossy(), talker.id().0));
    for (file, who) in [(&path, None), (&own_path, Some(talker.id()))] {
        let (spec, samples) = read_wav(file);
        assert_eq!((spec.sample_rate, spec.channels, spec.bits_per_sample), (WIDE, 1, 16));
        // 1.5 s of tone, give or take the silences' frames around the pause.
        let seconds = samples.len() as f64 / WIDE as f64;
        assert!((1.5..=1.75).contains(&seconds), "{who:?}: {seconds:.3} s recorded");
        let (start, len) = audible_span(&samples);
        // Before the pause and after it (the cut between them breaks the phase).
        let end = start + len;
        for section in [&samples[start + 4800..start + 43200], &samples[end - 19200..end - 4800]] {
            assert!(purity(section, 440.0, WIDE) > 0.999, "{who:?}: not 440 Hz");
        }
        let paused_tone = tone_power_at(&samples, 1000.0, WIDE) / tone_power_at(&samples, 440.0, WIDE);
        assert!(paused_tone < 1e-4, "{who:?}: the paused span was recorded ({paused_tone:e})");
        assert!((dbov(&samples[start + 4800..start + 43200]) + 15.24).abs() < 0.3, "{who:?}: level");
        let stopped = wait_event(&ep, Duration::from_secs(5), |e| match e {
            Event::RecordingStopped { participant, path, frames_dropped, .. } if *participant == who => {
                Some((path.clone(), *frames_dropped))
            }
            _ => None,
        });
        assert_eq!(stopped, (file.display().to_string(), 0));
        std::fs::remove_file(file).unwrap();
    }
    // The listener said nothing: its file is silence, as long as the others.
    let listener_path =
        path.with_file_name(format!("{}-{}.wav", path.file_stem().unwrap().to_string_lossy(), listener.id().0));
    let (_, silence) = read_wav(&listener_path);
    assert!(silence.len() > WIDE as usize && silence.iter().all(|s| *s == 0));
    std::fs::remove_file(&listener_path).unwrap();
}

#[test]
fn destroying_a_conference_finishes_its_recording() {
    let ep = endpoint();
    let room = ep.create_conference_with_rate("recorded-destroyed", WIDE).unwrap();
    let mut talker = room.add_local().unwrap();
    let path = temp_path("destroyed.wav");
    room.start_recording(&path, false).unwrap();
    let mut n = 0;
    for _ in 0..25 {
        talker.write_all(&frame_of(440.0, &mut n, talker.frame_samples()), Some(Duration::from_secs(1))).unwrap();
    }
    std::thread::sleep(Duration::from_millis(600));
    room.destroy().unwrap();
    // The header was finalised: the file says how long it is.
    let (_, samples) = read_wav(&path);
    assert!(samples.len() >= WIDE as usize / 2, "{} samples", samples.len());
    assert!(power_share_above(&samples, 440.0) > 0.9);
    std::fs::remove_file(&path).unwrap();
    let bad = ep.create_conference("recorded-bad").unwrap();
    assert!(matches!(bad.start_recording("/nonexistent/dir/x.wav", false), Err(sipbridge::Error::Io(_))));
}

/// The share of the power of `samples`' audible span at `freq`.
fn power_share_above(samples: &[i16], freq: f64) -> f64 {
    let (start, len) = audible_span(samples);
    purity(&samples[start..start + len], freq, WIDE)
}

/// A disk that stops taking data (a FIFO nobody reads) costs the recording
/// frames, reported as an overrun while the writer is stuck in its write,
/// and costs the conference's audio nothing.
#[test]
fn a_recording_the_disk_stops_taking_reports_an_overrun_and_the_audio_goes_on() {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;

    let ep = endpoint();
    let room = ep.create_conference_with_rate("stuck-disk", WIDE).unwrap();
    let mut listener = room.add_local().unwrap();
    let frame = listener.frame_samples();
    let fifo = temp_path("stuck.wav");
    let _ = std::fs::remove_file(&fifo);
    let path = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(path.as_ptr(), 0o600) }, 0, "mkfifo");
    // Opened, not read: the writer's open does not block, its writes do once the pipe is full.
    let mut reader = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(&fifo).unwrap();
    room.start_recording(&fifo, false).unwrap();

    // The ring holds 2 s and the pipe 64 KiB (a third of a second at 48 kHz).
    let (overrun, frames) = std::thread::scope(|s| {
        let heard = s.spawn(|| listen(&mut listener, 250));
        let overrun = wait_event(&ep, Duration::from_secs(6), |e| match e {
            Event::RecordingOverrun { path, frames_dropped, participant: None, .. } => {
                Some((path.clone(), *frames_dropped))
            }
            _ => None,
        });
        (overrun, heard.join().unwrap().len() / frame)
    });
    assert_eq!(overrun.0, fifo.display().to_string());
    assert!(overrun.1 > 0);
    assert_eq!(frames, 250, "every tick's frame reached the listener");

    // Unstick the writer: read until it closes its end, then stop.
    let drained = std::thread::spawn(move || {
        let mut buf = vec![0u8; 1 << 16];
        loop {
            match reader.read(&mut buf) {
                Ok(0) => return,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(5)),
                Err(e) => panic!("reading the FIFO: {e}"),
            }
        }
    });
    room.stop_recording().unwrap();
    drained.join().unwrap();
    let dropped = wait_event(&ep, Duration::from_secs(5), |e| match e {
        Event::RecordingStopped { frames_dropped, participant: None, .. } => Some(*frames_dropped),
        _ => None,
    });
    assert!(dropped >= overrun.1);
    std::fs::remove_file(&fifo).unwrap();
}
