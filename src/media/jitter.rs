//! An adaptive jitter buffer that holds packets and decodes them when they are due.
//!
//! Packets wait in fixed slots keyed by RTP timestamp, so reordered,
//! duplicated and odd-sized packets need no special cases. At each tick the
//! buffer decodes, in timestamp order, what the next frame needs: a missing
//! packet is rebuilt from the next packet's in-band FEC (Opus) or concealed
//! (the codec's own PLC, else waveform repetition in the style of G.711
//! Appendix I), so loss is handled where the codec state is in order.
//!
//! The delay adapts: a peak estimate of the arrival jitter sets a target
//! between one frame and the configured maximum; when the buffer runs dry, or
//! a packet comes after its time while less than the target is buffered, it
//! stretches by one concealed frame, and when it held
//! more than a frame to spare for a whole second it skips one. A long gap
//! (DTX, hold, a stopped sender) ends playout; the next packet starts it again
//! at the target delay, so nothing drifts. All storage is allocated in `new`:
//! `push` and `pop` run in the mixer tick and never allocate.

use super::codec::AudioCodec;
use super::plc::WaveformPlc;

/// What `pop` produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Playout {
    /// Received audio (possibly partly concealed).
    Audio,
    /// Nothing arrived for this frame; it was concealed.
    Concealed,
    /// Not playing: nothing received yet, or the stream went quiet.
    Silence,
}

/// Counters a jitter buffer keeps.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JitterStats {
    /// Packets that arrived after their audio was played.
    pub late: u64,
    /// Frames played without any received audio in them.
    pub concealed: u64,
    /// Lost packets rebuilt from the next packet's FEC.
    pub recovered: u64,
    /// Restarts on a new SSRC or a timestamp jump.
    pub resyncs: u64,
    /// Frames inserted to grow the delay, and skipped to shrink it.
    pub stretched: u64,
    pub skipped: u64,
    /// Packets that did not fit (too big, or no free slot).
    pub overflow: u64,
}

#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    used: bool,
    timestamp: u32,
    len: u16,
}

/// See the module docs.
pub struct JitterBuffer {
    /// RTP timestamp units per tick, and audio samples per timestamp unit
    /// (2 for G.722, whose 16 kHz audio runs on an 8 kHz RTP clock).
    frame_ts: u32,
    samples_per_ts: u32,
    max_delay_ts: u32,
    slots: Box<[Slot]>,
    payloads: Box<[u8]>,
    slot_size: usize,
    /// Decoded audio from the play position on.
    pcm: Box<[i16]>,
    pcm_len: usize,
    /// Timestamp of the next sample to play, once playing.
    play_ts: Option<u32>,
    /// Timestamp just past the newest packet received.
    newest_end: u32,
    ssrc: Option<u32>,
    /// The delay the buffer aims for, from the jitter estimate.
    target_ts: u32,
    /// Transit time (arrival minus timestamp) of the fastest recent packet,
    /// and a decaying peak of how much later than that packets come.
    min_transit: Option<i64>,
    jitter_peak: f64,
    /// Smallest amount buffered before a pop in the current window, and the window's age.
    low_water: u32,
    window_ticks: u32,
    /// Ticks in a row without any received audio, and how many of them stretched the delay.
    missing_run: u32,
    stretch_run: u32,
    /// Ticks of silence still to play before the first packet after a (re)start.
    hold_ticks: u32,
    /// A packet came too late while the buffer held less than the target:
    /// the next pop grows the delay by a frame.
    grow: bool,
    plc: Option<WaveformPlc>,
    stats: JitterStats,
}

/// Ticks of silence after which playout stops until the next packet.
const IDLE_AFTER_FRAMES: u32 = 10;
/// Ticks of loss that are concealed; after them the leg plays silence.
const CONCEAL_FRAMES: u32 = 3;
/// Ticks in a window over which spare delay is measured before a skip (1 s).
const SHRINK_WINDOW_TICKS: u32 = 50;
/// Slots for waiting packets: 200 ms of 10 ms packets, with room to spare.
const SLOTS: usize = 32;
/// How fast the jitter peak decays, per packet (about 3 s half-life at 50 packets/s).
const JITTER_DECAY: f64 = 0.995;

impl JitterBuffer {
    /// `frame_ts` timestamp units per tick; `samples_per_ts` audio samples per
    /// unit; delay at most `max_delay_ts`; packets up to `max_payload` bytes;
    /// `waveform_plc` when the codec has no concealment of its own.
    pub fn new(frame_ts: u32, samples_per_ts: u32, max_delay_ts: u32, max_payload: usize, waveform_plc: bool) -> Self {
        let frame_samples = (frame_ts * samples_per_ts) as usize;
        // Enough for the longest packet (120 ms of Opus, at most 6 frames) plus a frame.
        let pcm_capacity = frame_samples * 8;
        Self {
            frame_ts,
            samples_per_ts,
            max_delay_ts: max_delay_ts.max(frame_ts),
            slots: vec![Slot::default(); SLOTS].into_boxed_slice(),
            payloads: vec![0; SLOTS * max_payload].into_boxed_slice(),
            slot_size: max_payload,
            pcm: vec![0; pcm_capacity].into_boxed_slice(),
            pcm_len: 0,
            play_ts: None,
            newest_end: 0,
            ssrc: None,
            target_ts: frame_ts,
            min_transit: None,
            jitter_peak: 0.0,
            low_water: u32::MAX,
            window_ticks: 0,
            missing_run: 0,
            stretch_run: 0,
            hold_ticks: 0,
            grow: false,
            plc: waveform_plc.then(|| WaveformPlc::new(frame_ts * samples_per_ts * 50)),
            stats: JitterStats::default(),
        }
    }

    pub fn stats(&self) -> JitterStats {
        self.stats
    }

    /// The delay the buffer aims for, in timestamp units.
    pub fn target_delay(&self) -> u32 {
        self.target_ts
    }

    /// Timestamp span of the audio held ahead of the play position.
    pub fn depth(&self) -> u32 {
        self.play_ts.map(|p| self.newest_end.wrapping_sub(p)).filter(|d| (*d as i32) > 0).unwrap_or(0)
    }

    fn restart(&mut self, timestamp: u32) {
        self.slots.fill(Slot::default());
        self.pcm_len = 0;
        // Playout starts at this packet, after the target delay of silence.
        self.play_ts = Some(timestamp);
        self.hold_ticks = self.target_ts.div_ceil(self.frame_ts);
        self.newest_end = timestamp;
        self.missing_run = 0;
        self.stretch_run = 0;
        self.low_water = u32::MAX;
        self.window_ticks = 0;
        self.grow = false;
    }

    /// Stores a packet that starts at RTP `timestamp`, received at `arrival`
    /// (in timestamp units of any fixed origin).
    pub fn push(&mut self, ssrc: u32, timestamp: u32, arrival: u32, payload: &[u8]) {
        let new_source = self.ssrc != Some(ssrc);
        if new_source {
            if self.ssrc.is_some() {
                self.stats.resyncs += 1;
            }
            self.ssrc = Some(ssrc);
        }
        let ahead = self.play_ts.map(|play| {
            let decoded_until = play.wrapping_add(self.pcm_len as u32 / self.samples_per_ts);
            timestamp.wrapping_sub(decoded_until) as i32
        });
        match ahead {
            Some(offset) if !new_source && offset < 0 => {
                self.observe_transit(timestamp, arrival);
                self.stats.late += 1;
                // Running dry is not the only sign of too little delay: with
                // reordering, a packet is late while the ones after it wait.
                self.grow |= self.depth() < self.target_ts;
                return;
            }
            Some(offset) if !new_source && offset as u32 <= self.max_delay_ts + 4 * self.frame_ts => {
                self.observe_transit(timestamp, arrival);
            }
            _ => {
                // A new source, the first packet after a pause, or one far
                // ahead (a timestamp jump, a restarted sender): start over at
                // it, with transit times measured afresh after a jump.
                if ahead.is_some() {
                    if !new_source {
                        self.stats.resyncs += 1;
                    }
                    self.min_transit = None;
                }
                self.observe_transit(timestamp, arrival);
                self.restart(timestamp);
            }
        }
        if payload.len() > self.slot_size {
            self.stats.overflow += 1;
            return;
        }
        if self.slots.iter().any(|s| s.used && s.timestamp == timestamp) {
            return; // a duplicate
        }
        let Some(i) = self.slots.iter().position(|s| !s.used) else {
            self.stats.overflow += 1;
            return;
        };
        self.slots[i] = Slot { used: true, timestamp, len: payload.len() as u16 };
        self.payloads[i * self.slot_size..][..payload.len()].copy_from_slice(payload);
        // A packet's length in time is known only once decoded; a frame is the usual.
        let end = timestamp.wrapping_add(self.frame_ts);
        if end.wrapping_sub(self.newest_end) as i32 > 0 {
            self.newest_end = end;
        }
    }

    /// Updates the jitter estimate and the target delay from one packet.
    fn observe_transit(&mut self, timestamp: u32, arrival: u32) {
        // Transit against an unwrapped timestamp is what matters: differences only.
        let transit = arrival.wrapping_sub(timestamp) as i32 as i64;
        let min = match self.min_transit {
            // The minimum creeps up (about 6 ms a second), so a path that got
            // slower for good is followed.
            Some(m) if transit >= m => m + (self.frame_ts as i64 / 160).max(1),
            _ => transit,
        };
        self.min_transit = Some(min.min(transit));
        let late_by = (transit - min).max(0) as f64;
        self.jitter_peak = (self.jitter_peak * JITTER_DECAY).max(late_by);
        // One frame because the mixer reads once per tick, plus the peak lateness.
        let target = self.frame_ts as f64 + self.jitter_peak;
        self.target_ts = (target as u32).clamp(self.frame_ts, self.max_delay_ts);
    }

    fn slot_at(&self, timestamp: u32) -> Option<usize> {
        self.slots.iter().position(|s| s.used && s.timestamp == timestamp)
    }

    /// The waiting packet that comes first after `timestamp`.
    fn next_after(&self, timestamp: u32) -> Option<usize> {
        (0..self.slots.len())
            .filter(|i| self.slots[*i].used && (self.slots[*i].timestamp.wrapping_sub(timestamp) as i32) > 0)
            .min_by_key(|i| self.slots[*i].timestamp.wrapping_sub(timestamp))
    }

    /// Frees the slots of packets that start before `timestamp`.
    fn drop_before(&mut self, timestamp: u32) {
        for s in self.slots.iter_mut() {
            if s.used && (s.timestamp.wrapping_sub(timestamp) as i32) < 0 {
                s.used = false;
                self.stats.late += 1;
            }
        }
    }

    /// Decodes until at least `need` samples are ready; returns whether any
    /// received audio was decoded.
    fn fill(&mut self, codec: &mut dyn AudioCodec, play: u32, need: usize) -> bool {
        let mut received = false;
        while self.pcm_len < need {
            let at = play.wrapping_add(self.pcm_len as u32 / self.samples_per_ts);
            self.drop_before(at);
            if let Some(slot) = self.slot_at(at) {
                self.slots[slot].used = false;
                let (start, len) = (slot * self.slot_size, self.slots[slot].len as usize);
                let n = codec.decode(&self.payloads[start..start + len], &mut self.pcm[self.pcm_len..]);
                if n > 0 {
                    if let Some(plc) = self.plc.as_mut() {
                        plc.good_frame(&mut self.pcm[self.pcm_len..self.pcm_len + n]);
                    }
                    self.pcm_len += n;
                    received = true;
                    let end = at.wrapping_add(n as u32 / self.samples_per_ts);
                    if end.wrapping_sub(self.newest_end) as i32 > 0 {
                        self.newest_end = end;
                    }
                    continue;
                }
            }
            // Missing (or undecodable): conceal up to the next packet or the frame's end.
            let next = self.next_after(at);
            let gap =
                next.map_or(usize::MAX, |i| (self.slots[i].timestamp.wrapping_sub(at) * self.samples_per_ts) as usize);
            let len = gap.min(need - self.pcm_len);
            let range = self.pcm_len..self.pcm_len + len;
            let recovered = match next {
                // The next packet's FEC describes exactly the audio just before it.
                Some(i) if len == gap => {
                    let (start, plen) = (i * self.slot_size, self.slots[i].len as usize);
                    codec.recover(&self.payloads[start..start + plen], &mut self.pcm[range.clone()])
                }
                _ => false,
            };
            if recovered {
                self.stats.recovered += 1;
                received = true;
            } else {
                conceal(codec, &mut self.plc, &mut self.pcm[range]);
            }
            self.pcm_len += len;
        }
        received
    }

    /// Takes the next frame into `out` (one tick of audio at the codec's rate).
    pub fn pop(&mut self, codec: &mut dyn AudioCodec, out: &mut [i16]) -> Playout {
        let Some(play) = self.play_ts else {
            out.fill(0);
            return Playout::Silence;
        };
        if self.hold_ticks > 0 {
            self.hold_ticks -= 1;
            out.fill(0);
            return Playout::Silence;
        }
        let need = out.len().min(self.pcm.len() / 2);
        let buffered = self.depth();
        self.low_water = self.low_water.min(buffered);
        self.window_ticks += 1;

        let dry = self.pcm_len == 0 && self.next_after(play.wrapping_sub(1)).is_none();
        // Running dry on a path without jitter is loss, not lateness: growing
        // the delay then would only cost a skipped frame a second later.
        let room_to_grow = (self.stretch_run + 1) * self.frame_ts + self.frame_ts / 2 <= self.target_ts;
        let stretch = (dry && room_to_grow) || self.grow;
        if stretch && self.missing_run < CONCEAL_FRAMES {
            self.grow = false;
            // Ran dry while the stream is live, or a packet came too late:
            // packets come later than the delay allows. Insert a concealed
            // frame without moving the play position, which grows the delay
            // by a frame.
            self.stats.stretched += 1;
            self.stats.concealed += 1;
            self.stretch_run += 1;
            self.missing_run += 1;
            conceal(codec, &mut self.plc, &mut out[..need]);
            return Playout::Concealed;
        }

        let received = self.fill(codec, play, need);
        out[..need].copy_from_slice(&self.pcm[..need]);
        self.consume(need);

        if self.window_ticks >= SHRINK_WINDOW_TICKS {
            // A whole window with more than a frame beyond the target to spare:
            // the delay is higher than the jitter needs. Skip one frame.
            if self.low_water != u32::MAX && self.low_water > self.target_ts + 2 * self.frame_ts && received {
                self.stats.skipped += 1;
                let play = self.play_ts.expect("playing");
                self.fill(codec, play, need);
                self.consume(need);
            }
            self.low_water = u32::MAX;
            self.window_ticks = 0;
        }

        if received {
            self.missing_run = 0;
            self.stretch_run = 0;
            return Playout::Audio;
        }
        self.missing_run += 1;
        if self.missing_run >= IDLE_AFTER_FRAMES {
            self.play_ts = None;
            self.pcm_len = 0;
            out.fill(0);
            return Playout::Silence;
        }
        if self.missing_run > CONCEAL_FRAMES {
            out.fill(0);
            return Playout::Silence;
        }
        self.stats.concealed += 1;
        Playout::Concealed
    }

    /// Drops `n` played samples from the front and moves the play position on.
    fn consume(&mut self, n: usize) {
        self.pcm.copy_within(n..self.pcm_len, 0);
        self.pcm_len -= n;
        self.play_ts = self.play_ts.map(|p| p.wrapping_add(n as u32 / self.samples_per_ts));
    }
}

/// Conceals `out` with the codec's own PLC, else the waveform PLC, else silence.
fn conceal(codec: &mut dyn AudioCodec, plc: &mut Option<WaveformPlc>, out: &mut [i16]) {
    if !codec.conceal(out) {
        match plc {
            Some(plc) => plc.conceal(out),
            None => out.fill(0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::codec::{CodecKind, OpusSettings};

    /// A "codec" whose payload is one byte per sample, value = sample / 100:
    /// lets the tests see which packet each sample came from.
    struct Bytes;

    impl AudioCodec for Bytes {
        fn kind(&self) -> CodecKind {
            CodecKind::Pcmu
        }
        fn decode(&mut self, payload: &[u8], out: &mut [i16]) -> usize {
            for (o, b) in out.iter_mut().zip(payload) {
                *o = *b as i16 * 100;
            }
            payload.len().min(out.len())
        }
        fn encode(&mut self, _: &[i16], _: &mut [u8]) -> usize {
            0
        }
        fn continue_encoding_from(&mut self, _: &dyn AudioCodec) -> bool {
            false
        }
        fn as_any(&self) -> &dyn std::any::Any {
            self
        }
    }

    const F: u32 = 8;

    fn buffer() -> JitterBuffer {
        JitterBuffer::new(F, 1, 20 * F, 64, false)
    }

    fn packet(value: u8) -> [u8; F as usize] {
        [value; F as usize]
    }

    /// Pops `n` frames, returning each frame's playout and first sample.
    fn play(jb: &mut JitterBuffer, n: usize) -> Vec<(Playout, i16)> {
        (0..n)
            .map(|_| {
                let mut out = [0; F as usize];
                let p = jb.pop(&mut Bytes, &mut out);
                (p, out[0])
            })
            .collect()
    }

    fn audio_values(frames: &[(Playout, i16)]) -> Vec<i16> {
        frames.iter().filter(|(p, _)| *p == Playout::Audio).map(|(_, v)| *v / 100).collect()
    }

    #[test]
    fn a_steady_stream_plays_in_order_after_one_frame() {
        let mut jb = buffer();
        let mut heard = Vec::new();
        for i in 0..20u32 {
            jb.push(1, 1000 + i * F, i * F, &packet(i as u8 + 1));
            heard.extend(play(&mut jb, 1));
        }
        assert_eq!(jb.target_delay(), F, "no jitter, one frame of delay");
        assert_eq!(audio_values(&heard), (1..=19).collect::<Vec<_>>());
    }

    #[test]
    fn reordering_and_duplicates_are_absorbed() {
        let mut jb = JitterBuffer::new(F, 1, 20 * F, 64, false);
        for i in [0u32, 2, 1, 1, 3] {
            jb.push(1, i * F, 0, &packet(i as u8 + 10));
        }
        let out = play(&mut jb, 6);
        assert_eq!(audio_values(&out), vec![10, 11, 12, 13]);
    }

    #[test]
    fn loss_is_concealed_then_silenced_then_idle() {
        let mut jb = JitterBuffer::new(F, 1, 20 * F, 64, true);
        jb.push(1, 0, 0, &packet(10));
        jb.push(1, F, 0, &packet(10));
        let out = play(&mut jb, 20);
        assert_eq!(out[1].0, Playout::Audio);
        assert!(out[3..3 + CONCEAL_FRAMES as usize - 1].iter().all(|(p, _)| *p == Playout::Concealed), "{out:?}");
        assert!(out[12..].iter().all(|f| *f == (Playout::Silence, 0)));
        assert_eq!(jb.depth(), 0);
    }

    #[test]
    fn a_lost_packet_between_two_is_concealed_and_playout_goes_on() {
        let mut jb = buffer();
        for i in [0u32, 1, 3, 4] {
            jb.push(1, i * F, 0, &packet(i as u8 + 1));
        }
        let out = play(&mut jb, 6);
        assert_eq!(out[2].1, 200);
        assert_eq!(out[3].0, Playout::Concealed);
        assert_eq!((out[4].1, out[5].1), (400, 500));
    }

    #[test]
    fn late_packets_are_dropped() {
        let mut jb = buffer();
        jb.push(1, 100, 0, &packet(1));
        jb.push(1, 100 + F, 0, &packet(1));
        play(&mut jb, 3);
        jb.push(1, 100, 0, &packet(2));
        assert_eq!(jb.stats().late, 1);
    }

    #[test]
    fn timestamp_jump_and_new_ssrc_resync() {
        let mut jb = buffer();
        jb.push(1, 0, 0, &packet(1));
        jb.push(1, 1_000_000, 0, &packet(2));
        assert_eq!(jb.stats().resyncs, 1);
        assert_eq!(play(&mut jb, 2)[1], (Playout::Audio, 200));
        jb.push(2, 5, 0, &packet(3));
        assert_eq!(jb.stats().resyncs, 2);
        assert_eq!(play(&mut jb, 2)[1], (Playout::Audio, 300));
    }

    #[test]
    fn the_timestamp_wrapping_around_changes_nothing() {
        let mut jb = buffer();
        let start = u32::MAX - F * 3 + 1;
        let mut heard = Vec::new();
        for i in 0..8u32 {
            jb.push(1, start.wrapping_add(i * F), i * F, &packet(i as u8 + 1));
            heard.extend(play(&mut jb, 1));
        }
        assert_eq!(audio_values(&heard), vec![1, 2, 3, 4, 5, 6, 7]);
        assert_eq!(jb.stats().resyncs, 0);
    }

    #[test]
    fn packets_of_three_frames_and_half_frames_play_whole() {
        let mut jb = JitterBuffer::new(F, 1, 20 * F, 64, false);
        jb.push(1, 0, 0, &[1; 3 * F as usize]);
        jb.push(1, 3 * F, 0, &[2; F as usize / 2]);
        jb.push(1, 3 * F + F / 2, 0, &[3; F as usize / 2]);
        let mut samples = Vec::new();
        for _ in 0..5 {
            let mut out = [0; F as usize];
            jb.pop(&mut Bytes, &mut out);
            samples.extend_from_slice(&out);
        }
        let expected: Vec<i16> = [vec![0; F as usize], vec![100; 3 * F as usize], vec![200; 4], vec![300; 4]].concat();
        assert_eq!(samples, expected);
    }

    /// Packets every frame, each delayed by a pseudo-random 0..jitter.
    fn jittered_stream(jb: &mut JitterBuffer, ticks: u32, jitter: u32) -> Vec<(Playout, i16)> {
        let mut seed = 12345u32;
        let mut due: Vec<(u32, u32)> = Vec::new(); // (arrival tick*F + offset, seq)
        for i in 0..ticks {
            seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
            due.push((i * F + (seed >> 8) % (jitter + 1), i));
        }
        let mut heard = Vec::new();
        for tick in 0..ticks + 30 {
            let now = tick * F;
            let mut arrived: Vec<_> = due.iter().filter(|(a, _)| *a <= now && *a + F > now).copied().collect();
            arrived.sort();
            for (a, i) in arrived {
                jb.push(1, 5000 + i * F, a, &packet((i % 200) as u8 + 1));
            }
            heard.extend(play(jb, 1));
        }
        heard
    }

    #[test]
    fn bursts_of_loss_on_a_steady_path_do_not_move_the_delay() {
        // Four packets in a row lost every 25: the buffer runs dry, but the
        // packets after the gap come on time, so growing the delay would only
        // mean skipping a frame of speech later.
        let mut jb = buffer();
        for tick in 0..500u32 {
            if tick % 25 >= 4 {
                jb.push(1, 3000 + tick * F, tick * F, &packet(1));
            }
            play(&mut jb, 1);
        }
        let stats = jb.stats();
        assert_eq!((stats.stretched, stats.skipped), (0, 0), "{stats:?}");
        assert!(stats.concealed >= 19 * 3, "{stats:?}");
    }

    #[test]
    fn a_late_packet_grows_the_delay_even_when_later_ones_are_waiting() {
        // Every tenth packet comes two frames late; the rest are on time, so
        // the buffer never runs dry: only the late packets say it is too short.
        let mut jb = buffer();
        let mut due: Vec<(u32, u32)> = (0..300).map(|i| (i * F + if i % 10 == 5 { 2 * F } else { 0 }, i)).collect();
        due.sort();
        let mut next = 0;
        for tick in 0..330 {
            while next < due.len() && due[next].0 <= tick * F {
                let (arrival, i) = due[next];
                jb.push(1, 7000 + i * F, arrival, &packet(1));
                next += 1;
            }
            play(&mut jb, 1);
        }
        let stats = jb.stats();
        assert!(stats.stretched >= 1, "{stats:?}");
        // The first late packet or two teach it; the other 28 arrive in time.
        assert!(stats.late <= 2, "{stats:?}");
    }

    #[test]
    fn under_jitter_the_delay_grows_to_cover_it_and_loses_little() {
        let mut jb = buffer();
        let heard = jittered_stream(&mut jb, 500, 3 * F);
        let stats = jb.stats();
        assert!(jb.target_delay() >= 3 * F && jb.target_delay() <= 5 * F, "target {}", jb.target_delay());
        // After the first second the buffer has adapted: almost nothing is late.
        assert!(stats.late <= 15, "{stats:?}");
        let played = audio_values(&heard);
        assert!(played.len() >= 480, "played {} of 500", played.len());
    }

    #[test]
    fn when_jitter_stops_the_delay_comes_back_down() {
        let mut jb = buffer();
        jittered_stream(&mut jb, 200, 4 * F);
        let high = jb.depth();
        let mut i = 0;
        while i < 1000 {
            jb.push(2, 900_000 + i * F, i * F, &packet(1));
            play(&mut jb, 1);
            i += 1;
        }
        assert!(jb.stats().skipped > 0 || high <= 2 * F);
        assert!(jb.depth() <= 2 * F, "depth {} (was {high})", jb.depth());
    }

    #[test]
    fn a_fast_sender_does_not_grow_the_delay() {
        let mut jb = buffer();
        let mut ts = 0u32;
        for t in 0..400u32 {
            // 21 ms of audio every 20 ms tick: the sender's clock runs 5% fast.
            for _ in 0..2 {
                if ts < (t + 1) * F * 21 / 20 {
                    jb.push(1, ts, t * F, &packet(1));
                    ts += F;
                }
            }
            play(&mut jb, 1);
            assert!(jb.depth() <= 20 * F + F);
        }
        assert!(jb.stats().skipped > 0);
    }

    #[test]
    fn opus_loss_is_recovered_from_the_next_packets_fec() {
        let settings = OpusSettings { fec: true, expected_loss_percent: 20, ..Default::default() };
        let mut coder = CodecKind::Opus.new_coder(&settings).unwrap();
        let mut jb = JitterBuffer::new(960, 1, 9600, 1275, false);
        let mut encoded = Vec::new();
        for i in 0..50 {
            let pcm: Vec<i16> = (0..960).map(|n| ((((i * 960 + n) as f32) * 0.02).sin() * 8000.0) as i16).collect();
            let mut buf = [0u8; 1275];
            let len = coder.encode(&pcm, &mut buf);
            encoded.push(buf[..len].to_vec());
        }
        for (i, packet) in encoded.iter().enumerate() {
            if i != 20 {
                jb.push(7, i as u32 * 960, i as u32 * 960, packet);
            }
            let mut out = [0i16; 960];
            jb.pop(coder.as_mut(), &mut out);
        }
        assert_eq!(jb.stats().recovered, 1, "{:?}", jb.stats());
    }

    #[test]
    fn g722_loss_is_concealed_by_the_codec() {
        let kind = CodecKind::G722;
        let mut coder = kind.new_coder(&OpusSettings::default()).unwrap();
        // As a mixer leg sets it up: G.722 conceals in its sub-bands, so no waveform PLC here.
        let mut jb = JitterBuffer::new(160, 2, 1600, 480, !kind.has_native_plc());
        assert!(jb.plc.is_none());
        let mut concealed = None;
        for i in 0..20u32 {
            let pcm: Vec<i16> = (0..320).map(|n| ((((i * 320 + n) as f32) * 0.09).sin() * 8000.0) as i16).collect();
            let mut packet = [0u8; 160];
            let len = coder.encode(&pcm, &mut packet);
            if i != 10 {
                jb.push(9, i * 160, i * 160, &packet[..len]);
            }
            let mut out = [0i16; 320];
            if jb.pop(coder.as_mut(), &mut out) == Playout::Concealed {
                concealed = Some(out);
            }
        }
        assert_eq!(jb.stats().concealed, 1, "{:?}", jb.stats());
        let energy: f64 = concealed.unwrap().iter().map(|&s| f64::from(s).powi(2)).sum::<f64>() / 320.0;
        assert!(energy.sqrt() > 3000.0, "the lost frame went quiet: RMS {}", energy.sqrt());
    }
}
