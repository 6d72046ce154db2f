//! A fixed-delay jitter buffer indexed by RTP timestamp.
//!
//! Decoded samples are written where their timestamp says, so reordered,
//! duplicated and odd-sized packets need no special cases; the mixer reads one
//! frame per tick. All storage is allocated in `new`: `push` and `pop` run in
//! the mixer tick and never allocate.

/// What `pop` produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Playout {
    /// Received audio (possibly partly concealed).
    Audio,
    /// Nothing arrived for this frame; the last frame was repeated, fading out.
    Concealed,
    /// Not playing: nothing received yet, or the stream went quiet.
    Silence,
}

/// Counters a jitter buffer keeps.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JitterStats {
    pub late: u64,
    pub concealed: u64,
    pub resyncs: u64,
}

/// See the module docs.
#[derive(Debug)]
pub struct JitterBuffer {
    frame: usize,
    /// Frames held back before the first frame plays.
    prefill: u32,
    samples: Box<[i16]>,
    present: Box<[bool]>,
    last: Box<[i16]>,
    /// Timestamp of the next sample to play, once playing.
    play_ts: Option<u32>,
    /// Timestamp just past the newest sample received.
    newest_end: u32,
    ssrc: Option<u32>,
    /// Consecutive frames played with nothing received.
    missing_run: u32,
    stats: JitterStats,
}

/// Frames of consecutive loss after which the buffer stops and re-primes on the
/// next packet (DTX, hold, a restarted sender).
const IDLE_AFTER_FRAMES: u32 = 10;

impl JitterBuffer {
    /// `frame` samples per tick, `prefill` frames of delay, room for `capacity` frames.
    pub fn new(frame: usize, prefill: u32, capacity: usize) -> Self {
        assert!(capacity as u32 > prefill + 1, "the buffer must hold more than its delay");
        Self {
            frame,
            prefill,
            // A power of two divides 2^32, so the ring index stays continuous when
            // the 32-bit RTP timestamp wraps.
            samples: vec![0; (frame * capacity).next_power_of_two()].into_boxed_slice(),
            present: vec![false; (frame * capacity).next_power_of_two()].into_boxed_slice(),
            last: vec![0; frame].into_boxed_slice(),
            play_ts: None,
            newest_end: 0,
            ssrc: None,
            missing_run: 0,
            stats: JitterStats::default(),
        }
    }

    pub fn stats(&self) -> JitterStats {
        self.stats
    }

    /// Timestamp span of the buffered audio ahead of the play position.
    pub fn depth(&self) -> u32 {
        self.play_ts.map(|p| self.newest_end.wrapping_sub(p)).filter(|d| (*d as i32) > 0).unwrap_or(0)
    }

    fn capacity(&self) -> usize {
        self.samples.len()
    }

    fn restart(&mut self, timestamp: u32) {
        self.present.fill(false);
        self.play_ts = Some(timestamp.wrapping_sub(self.prefill * self.frame as u32));
        self.newest_end = timestamp;
        self.missing_run = 0;
    }

    /// Stores decoded samples that start at RTP `timestamp`.
    pub fn push(&mut self, ssrc: u32, timestamp: u32, pcm: &[i16]) {
        if self.ssrc != Some(ssrc) || self.play_ts.is_none() {
            if self.ssrc.is_some() {
                self.stats.resyncs += 1;
            }
            self.ssrc = Some(ssrc);
            self.restart(timestamp);
        }
        let play = self.play_ts.unwrap_or(timestamp);
        let offset = timestamp.wrapping_sub(play) as i32;
        if offset < 0 {
            self.stats.late += 1;
            return;
        }
        if offset as usize + pcm.len() > self.capacity() {
            // Too far ahead: a timestamp jump or a sender running fast. Start over at it.
            self.stats.resyncs += 1;
            self.restart(timestamp);
            return self.push(ssrc, timestamp, pcm);
        }
        let cap = self.capacity();
        let base = play as usize % cap;
        for (i, s) in pcm.iter().enumerate() {
            let at = (base + offset as usize + i) % cap;
            self.samples[at] = *s;
            self.present[at] = true;
        }
        let end = timestamp.wrapping_add(pcm.len() as u32);
        if end.wrapping_sub(self.newest_end) as i32 > 0 {
            self.newest_end = end;
        }
    }

    /// Takes the next frame into `out` (which must be `frame` long).
    pub fn pop(&mut self, out: &mut [i16]) -> Playout {
        let Some(play) = self.play_ts else {
            out.fill(0);
            return Playout::Silence;
        };
        let cap = self.capacity();
        let base = play as usize % cap;
        let mut received = 0;
        for (i, o) in out.iter_mut().enumerate() {
            let at = (base + i) % cap;
            if self.present[at] {
                *o = self.samples[at];
                received += 1;
            } else {
                *o = 0;
            }
            self.present[at] = false;
        }
        self.play_ts = Some(play.wrapping_add(self.frame as u32));
        if received > 0 {
            self.missing_run = 0;
            self.last.copy_from_slice(out);
            // A buffer that filled beyond its delay (the sender's clock runs fast,
            // or a burst arrived) drops one frame to come back to its target.
            if self.depth() > (self.prefill + 2) * self.frame as u32 {
                self.play_ts = Some(play.wrapping_add(2 * self.frame as u32));
                for i in 0..self.frame {
                    self.present[(base + self.frame + i) % cap] = false;
                }
            }
            return Playout::Audio;
        }
        self.missing_run += 1;
        if self.missing_run >= IDLE_AFTER_FRAMES {
            self.play_ts = None;
            return Playout::Silence;
        }
        if self.missing_run > 3 {
            return Playout::Silence;
        }
        // Repeat the last frame at half the level each time: a short gap is
        // bridged, a long one fades to silence.
        self.stats.concealed += 1;
        for (o, l) in out.iter_mut().zip(self.last.iter_mut()) {
            *l /= 2;
            *o = *l;
        }
        Playout::Concealed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const F: usize = 4;

    fn frame(value: i16) -> [i16; F] {
        [value; F]
    }

    fn play(jb: &mut JitterBuffer, n: usize) -> Vec<(Playout, i16)> {
        (0..n)
            .map(|_| {
                let mut out = [0; F];
                let p = jb.pop(&mut out);
                (p, out[0])
            })
            .collect()
    }

    #[test]
    fn in_order_stream_plays_after_the_prefill_delay() {
        let mut jb = JitterBuffer::new(F, 2, 16);
        for i in 0..3 {
            jb.push(1, 1000 + (i * F) as u32, &frame(i as i16 + 1));
        }
        let out = play(&mut jb, 5);
        assert_eq!(out[0].0, Playout::Concealed, "delay frame, nothing to repeat yet");
        assert_eq!(&out[2..5], &[(Playout::Audio, 1), (Playout::Audio, 2), (Playout::Audio, 3)]);
    }

    #[test]
    fn reordering_and_duplicates_are_absorbed() {
        let mut jb = JitterBuffer::new(F, 2, 16);
        for i in [0u32, 2, 1, 1, 3] {
            jb.push(1, i * F as u32, &frame(i as i16 + 10));
        }
        let out = play(&mut jb, 6);
        let audio: Vec<i16> = out.iter().filter(|(p, _)| *p == Playout::Audio).map(|(_, v)| *v).collect();
        assert_eq!(audio, vec![10, 11, 12, 13]);
    }

    #[test]
    fn loss_is_concealed_then_silenced() {
        let mut jb = JitterBuffer::new(F, 0, 16);
        jb.push(1, 0, &frame(1000));
        let out = play(&mut jb, 6);
        assert_eq!(out[0], (Playout::Audio, 1000));
        assert_eq!(out[1], (Playout::Concealed, 500));
        assert_eq!(out[2], (Playout::Concealed, 250));
        assert_eq!(out[4].0, Playout::Silence);
    }

    #[test]
    fn late_packets_are_dropped() {
        let mut jb = JitterBuffer::new(F, 0, 16);
        jb.push(1, 100, &frame(1));
        play(&mut jb, 2);
        jb.push(1, 100, &frame(2));
        assert_eq!(jb.stats().late, 1);
    }

    #[test]
    fn timestamp_jump_and_new_ssrc_resync() {
        let mut jb = JitterBuffer::new(F, 1, 8);
        jb.push(1, 0, &frame(1));
        jb.push(1, 1_000_000, &frame(2));
        assert_eq!(jb.stats().resyncs, 1);
        assert_eq!(play(&mut jb, 2)[1], (Playout::Audio, 2));
        jb.push(2, 5, &frame(3));
        assert_eq!(jb.stats().resyncs, 2);
        assert_eq!(play(&mut jb, 2)[1], (Playout::Audio, 3));
    }

    #[test]
    fn long_silence_stops_and_the_next_packet_re_primes() {
        let mut jb = JitterBuffer::new(F, 1, 8);
        jb.push(1, 0, &frame(1));
        play(&mut jb, 20);
        jb.push(1, 90_000, &frame(7));
        assert_eq!(play(&mut jb, 2)[1], (Playout::Audio, 7));
    }

    #[test]
    fn the_timestamp_wrapping_around_changes_nothing() {
        let mut jb = JitterBuffer::new(160, 2, 16);
        let start = u32::MAX - 160 * 3 + 1;
        let mut played = Vec::new();
        for i in 0..8u32 {
            let frame = [i as i16 + 1; 160];
            jb.push(1, start.wrapping_add(i * 160), &frame);
            let mut out = [0i16; 160];
            if jb.pop(&mut out) == Playout::Audio {
                assert!(out.iter().all(|s| *s == out[0]), "a frame never mixes two packets");
                played.push(out[0]);
            }
        }
        assert_eq!(played, vec![1, 2, 3, 4, 5, 6]);
        assert_eq!(jb.stats().resyncs, 0);
    }

    #[test]
    fn a_fast_sender_does_not_grow_the_delay() {
        let mut jb = JitterBuffer::new(F, 2, 16);
        let mut ts = 0u32;
        for _ in 0..200 {
            // Two frames per tick, as a sender whose clock runs double speed.
            for _ in 0..2 {
                jb.push(1, ts, &frame(1));
                ts += F as u32;
            }
            play(&mut jb, 1);
            assert!(jb.depth() <= 16 * F as u32);
        }
    }
}
