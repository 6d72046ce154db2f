//! Mixer tick cost, measured on the real tick: RTP legs on loopback sockets
//! (decode, jitter buffer, N-1 mix, encode, non-blocking send) and local legs.
//!
//!     cargo bench --bench mixer
//!
//! Each received packet is pushed into its leg's ring before the tick, as the
//! receive task would; that push is not timed (it belongs to the I/O threads),
//! everything the mixer thread does is. Prints a Markdown table.

use std::net::UdpSocket;
use std::sync::Arc;
use std::time::Instant;

use sipbridge::media::codec::{linear_to_ulaw, CodecKind};
use sipbridge::media::mixer::{
    ConferenceId, ConferenceMix, Leg, LegCodec, LocalLeg, Mixer, MixerCommand, ParticipantId, ParticipantMix,
    ReceivedDatagram, RtpLeg, SharedEncoder, MAX_DATAGRAM,
};
use sipbridge::media::rtp;

const FRAME: usize = 160;
const TICKS: usize = 250;

struct RtpFeed {
    ring: rtrb::Producer<ReceivedDatagram>,
    source: std::net::SocketAddr,
    seq: u16,
}

fn datagram(feed: &mut RtpFeed, talking: bool) -> ReceivedDatagram {
    let mut d = ReceivedDatagram {
        source: feed.source,
        arrival: std::time::Instant::now(),
        len: (rtp::HEADER_LEN + FRAME) as u16,
        data: [0; MAX_DATAGRAM],
    };
    let header: &mut [u8; rtp::HEADER_LEN] = (&mut d.data[..rtp::HEADER_LEN]).try_into().unwrap();
    rtp::write_header(header, false, 0, feed.seq, feed.seq as u32 * FRAME as u32, 7);
    for (i, b) in d.data[rtp::HEADER_LEN..rtp::HEADER_LEN + FRAME].iter_mut().enumerate() {
        let v = if talking { ((i as f32 * 0.2).sin() * 3000.0) as i16 } else { 0 };
        *b = linear_to_ulaw(v);
    }
    feed.seq = feed.seq.wrapping_add(1);
    d
}

/// Runs `participants` RTP legs in conferences of `size`; returns ns per tick.
fn rtp_run(participants: usize, size: usize, sink: &UdpSocket) -> (f64, f64) {
    let (commands, rx) = crossbeam_channel::bounded(2 * participants + 64);
    let (garbage_tx, _garbage) = crossbeam_channel::bounded(2 * participants + 64);
    let conferences = participants.div_ceil(size);
    let mut mixer = Mixer::new(rx, garbage_tx, Arc::default(), conferences);
    let mut feeds = Vec::new();
    let mut sockets = Vec::new();
    for c in 0..conferences {
        let conf = ConferenceMix::new(ConferenceId(c as u64), Arc::default(), FRAME, size);
        commands.send(MixerCommand::AddConference(Box::new(conf))).unwrap();
        // As the engine does: one encoder for the listeners.
        let shared = SharedEncoder::new(CodecKind::Pcmu.new_coder(&Default::default()).unwrap(), 8000).unwrap();
        commands.send(MixerCommand::AddSharedEncoder(ConferenceId(c as u64), Box::new(shared))).unwrap();
        for p in 0..size.min(participants - c * size) {
            let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
            socket.set_nonblocking(true).unwrap();
            let source = socket.local_addr().unwrap();
            sockets.push(socket.try_clone().unwrap());
            let (ring, consumer) = rtrb::RingBuffer::new(8);
            let coder = CodecKind::Pcmu.new_coder(&Default::default()).unwrap();
            let codec = LegCodec::new(coder, 0, 8000).unwrap();
            let leg = RtpLeg::new(consumer, socket, sink.local_addr().unwrap(), codec, None);
            let id = ParticipantId((c * size + p) as u64);
            let mix = ParticipantMix::new(id, Arc::default(), Leg::Rtp(leg), FRAME);
            commands.send(MixerCommand::AddParticipant(ConferenceId(c as u64), Box::new(mix))).unwrap();
            feeds.push(RtpFeed { ring, source, seq: 0 });
        }
    }
    mixer.apply_commands();
    let mut samples = Vec::with_capacity(TICKS);
    let mut drain = [0u8; 2048];
    for tick in 0..TICKS {
        for (i, feed) in feeds.iter_mut().enumerate() {
            // One participant in ten talks.
            let d = datagram(feed, i % 10 == 0);
            let _ = feed.ring.push(d);
        }
        let start = Instant::now();
        mixer.tick();
        if tick >= 10 {
            samples.push(start.elapsed().as_nanos() as f64);
        }
        while sink.recv_from(&mut drain).is_ok() {}
    }
    drop(sockets);
    summarize(samples)
}

/// Local legs only: the mixing itself, without codecs or sockets.
fn local_run(participants: usize, size: usize) -> (f64, f64) {
    let (commands, rx) = crossbeam_channel::bounded(2 * participants + 64);
    let (garbage_tx, _garbage) = crossbeam_channel::bounded(2 * participants + 64);
    let conferences = participants.div_ceil(size);
    let mut mixer = Mixer::new(rx, garbage_tx, Arc::default(), conferences);
    let mut ends = Vec::new();
    for c in 0..conferences {
        let conf = ConferenceMix::new(ConferenceId(c as u64), Arc::default(), FRAME, size);
        commands.send(MixerCommand::AddConference(Box::new(conf))).unwrap();
        for p in 0..size.min(participants - c * size) {
            let (to_mixer, from_app) = rtrb::RingBuffer::new(FRAME * 4);
            let (to_app, from_mixer) = rtrb::RingBuffer::new(FRAME * 4);
            let mix = ParticipantMix::new(
                ParticipantId((c * size + p) as u64),
                Arc::default(),
                Leg::Local(LocalLeg { from_app, to_app }),
                FRAME,
            );
            commands.send(MixerCommand::AddParticipant(ConferenceId(c as u64), Box::new(mix))).unwrap();
            ends.push((to_mixer, from_mixer));
        }
    }
    mixer.apply_commands();
    let mut samples = Vec::with_capacity(TICKS);
    for tick in 0..TICKS {
        for (to_mixer, from_mixer) in ends.iter_mut() {
            if let Ok(chunk) = to_mixer.write_chunk(FRAME) {
                chunk.commit_all();
            }
            if let Ok(chunk) = from_mixer.read_chunk(from_mixer.slots()) {
                chunk.commit_all();
            }
        }
        let start = Instant::now();
        mixer.tick();
        if tick >= 10 {
            samples.push(start.elapsed().as_nanos() as f64);
        }
    }
    summarize(samples)
}

/// Median and 99th percentile of tick durations, in ns.
fn summarize(mut samples: Vec<f64>) -> (f64, f64) {
    samples.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (samples[samples.len() / 2], samples[samples.len() * 99 / 100])
}

fn main() {
    let sink = UdpSocket::bind("127.0.0.1:0").unwrap();
    sink.set_nonblocking(true).unwrap();
    sink.set_read_timeout(None).unwrap();
    println!("| legs | participants | conference size | tick p50 | tick p99 | µs CPU per participant per s of audio | participants per core (p50) |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: |");
    let cases: &[(&str, usize, usize)] = &[
        ("G.711 RTP", 100, 5),
        ("G.711 RTP", 1000, 5),
        ("G.711 RTP", 1000, 30),
        ("G.711 RTP", 1000, 1000),
        ("G.711 RTP", 3000, 30),
        ("local PCM", 1000, 10),
        ("local PCM", 1000, 1000),
    ];
    for &(kind, participants, size) in cases {
        let (p50, p99) =
            if kind == "local PCM" { local_run(participants, size) } else { rtp_run(participants, size, &sink) };
        let per_participant_us = p50 / participants as f64 / 1000.0 * 50.0;
        let per_core = 20_000_000.0 / (p50 / participants as f64);
        println!(
            "| {kind} | {participants} | {size} | {:.0} µs | {:.0} µs | {per_participant_us:.1} | {per_core:.0} |",
            p50 / 1000.0,
            p99 / 1000.0
        );
    }
}
