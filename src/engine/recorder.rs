//! Recording a conference to WAV files: the mixer pushes frames into a
//! bounded ring per file ([`RecordSink`]), and one writer thread per
//! recording drains them to disk, so a slow disk costs dropped frames
//! (counted and reported), never a late tick.

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use parking_lot::Mutex;

use super::{EventSink, OverrunWatch};
use crate::api::Event;
use crate::media::mixer::{ParticipantId, RecordSink, RecordingMix};
use crate::{Error, Result};

/// Each ring holds two seconds, which the disk may stall for without a loss.
const RING_TICKS: usize = 100;
/// How often the writer drains the rings.
const WRITE_EVERY: Duration = Duration::from_millis(20);

/// One file being written, and the ring it is fed from.
struct Stream {
    participant: Option<ParticipantId>,
    path: String,
    ring: rtrb::Consumer<i16>,
    /// `None` once writing failed: the rest of that file is lost, not the others.
    writer: Option<hound::WavWriter<BufWriter<File>>>,
    dropped: Arc<AtomicU64>,
}

/// A file's overruns, as the control tick reports them.
struct FileOverruns {
    participant: Option<ParticipantId>,
    path: String,
    watch: OverrunWatch,
}

/// Identifies where events about a recording belong.
#[derive(Clone)]
struct Reporter {
    conference: String,
    events: EventSink,
}

/// A running recording, as the control side holds it.
pub(crate) struct Recorder {
    paused: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    streams: Sender<Stream>,
    thread: JoinHandle<()>,
    /// The mix's file, and whether each participant gets a file too.
    path: PathBuf,
    pub per_participant: bool,
    sample_rate: u32,
    reporter: Reporter,
    /// One per file; the mix's first.
    overruns: Mutex<Vec<FileOverruns>>,
}

impl Recorder {
    /// Creates the mix's file at `path` and starts the writer thread;
    /// returns the recorder and what the mixer writes the mix into.
    pub fn start(
        conference: &str,
        path: &Path,
        per_participant: bool,
        sample_rate: u32,
        events: EventSink,
    ) -> Result<(Self, Box<RecordingMix>)> {
        let reporter = Reporter { conference: conference.into(), events };
        let (mix_stream, mix_sink) = open_stream(path, None, sample_rate)?;
        let (streams, new_streams) = crossbeam_channel::unbounded();
        let (paused, stop) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
        let writer_stop = stop.clone();
        let writer_reporter = reporter.clone();
        reporter.started(&mix_stream);
        let overruns = Mutex::new(vec![mix_stream.overruns()]);
        let thread = std::thread::Builder::new()
            .name("sipbridge-recorder".into())
            .spawn(move || write_streams(mix_stream, new_streams, writer_stop, writer_reporter))?;
        let recorder = Self {
            paused: paused.clone(),
            stop,
            streams,
            thread,
            path: path.to_path_buf(),
            per_participant,
            sample_rate,
            reporter,
            overruns,
        };
        Ok((recorder, Box::new(RecordingMix::new(paused, mix_sink))))
    }

    /// Opens participant `id`'s file (the mix's path with `-ID` before the
    /// extension) and returns what the mixer writes its audio into.
    pub fn add_participant(&self, id: ParticipantId) -> Result<RecordSink> {
        let stem = self.path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        let extension = self.path.extension().map(|e| e.to_string_lossy().into_owned()).unwrap_or("wav".into());
        let path = self.path.with_file_name(format!("{stem}-{}.{extension}", id.0));
        let (stream, sink) = open_stream(&path, Some(id), self.sample_rate)?;
        self.reporter.started(&stream);
        self.overruns.lock().push(stream.overruns());
        // The writer ends only in `stop`, which consumes the recorder.
        let _ = self.streams.send(stream);
        Ok(sink)
    }

    /// The overruns of recording `conference`'s files that are due for a report.
    pub fn report_overruns(&self, conference: &str, now: Instant, events: &mut Vec<Event>) {
        for file in self.overruns.lock().iter_mut() {
            if let Some(frames_dropped) = file.watch.report_due(now) {
                events.push(Event::RecordingOverrun {
                    conference: conference.into(),
                    participant: file.participant,
                    path: file.path.clone(),
                    frames_dropped,
                });
            }
        }
    }

    pub fn set_paused(&self, paused: bool) {
        self.paused.store(paused, Ordering::Relaxed);
    }

    /// Writes what the rings hold, finalises every file's header, and
    /// returns once they are complete on disk.
    pub fn stop(self) {
        self.stop.store(true, Ordering::Release);
        if self.thread.join().is_err() {
            tracing::error!(conference = %self.reporter.conference, "the recording writer panicked");
        }
    }
}

impl Reporter {
    fn started(&self, stream: &Stream) {
        self.events.emit(Event::RecordingStarted {
            conference: self.conference.clone(),
            participant: stream.participant,
            path: stream.path.clone(),
        });
    }
}

fn open_stream(path: &Path, participant: Option<ParticipantId>, sample_rate: u32) -> Result<(Stream, RecordSink)> {
    let spec =
        hound::WavSpec { channels: 1, sample_rate, bits_per_sample: 16, sample_format: hound::SampleFormat::Int };
    let writer = hound::WavWriter::create(path, spec).map_err(|e| match e {
        hound::Error::IoError(e) => Error::Io(e),
        e => Error::InvalidArgument(format!("cannot record to {}: {e}", path.display())),
    })?;
    let (producer, ring) = rtrb::RingBuffer::new(sample_rate as usize / 50 * RING_TICKS);
    let dropped = Arc::new(AtomicU64::new(0));
    let stream =
        Stream { participant, path: path.display().to_string(), ring, writer: Some(writer), dropped: dropped.clone() };
    Ok((stream, RecordSink::new(producer, dropped)))
}

/// The writer thread: drains every stream's ring to its file every 20 ms
/// until told to stop, then drains once more and finalises the files.
fn write_streams(mix: Stream, new_streams: Receiver<Stream>, stop: Arc<AtomicBool>, reporter: Reporter) {
    let mut streams = vec![mix];
    loop {
        let stopping = stop.load(Ordering::Acquire);
        streams.extend(new_streams.try_iter());
        for stream in streams.iter_mut() {
            stream.drain();
        }
        if stopping {
            break;
        }
        std::thread::sleep(WRITE_EVERY);
    }
    for stream in streams {
        let frames_dropped = stream.dropped.load(Ordering::Relaxed);
        if let Some(Err(e)) = stream.writer.map(|w| w.finalize()) {
            tracing::warn!(path = %stream.path, "cannot finish the recording: {e}");
        }
        reporter.events.emit(Event::RecordingStopped {
            conference: reporter.conference.clone(),
            participant: stream.participant,
            path: stream.path,
            frames_dropped,
        });
    }
}

impl Stream {
    fn overruns(&self) -> FileOverruns {
        FileOverruns {
            participant: self.participant,
            path: self.path.clone(),
            watch: OverrunWatch::new(self.dropped.clone()),
        }
    }

    fn drain(&mut self) {
        let Ok(chunk) = self.ring.read_chunk(self.ring.slots()) else { return };
        if let Some(writer) = self.writer.as_mut() {
            let (a, b) = chunk.as_slices();
            let mut samples = writer.get_i16_writer(chunk.len() as u32);
            for s in a.iter().chain(b) {
                samples.write_sample(*s);
            }
            if let Err(e) = samples.flush() {
                tracing::warn!(path = %self.path, "recording stopped, cannot write: {e}");
                self.writer = None;
            }
        }
        chunk.commit_all();
    }
}
