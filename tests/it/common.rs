//! Helpers shared by the integration tests.

use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use sipbridge::{AccountId, Endpoint, EndpointConfig, Event, LocalParticipant, RegistrationState};

/// The tests' conferences mix at 8 kHz (legs between endpoints still
/// negotiate Opus, the first codec, so its resampling path runs too).
pub const RATE: u32 = 8000;
pub const FRAME: usize = sipbridge::frame_samples(RATE);

/// A distinct RTP range for each of the first 50 endpoints of a test run, below
/// the kernel's ephemeral ports (32768 and up) that port-0 sockets take, so a
/// test that needs its range to itself gets it.
pub fn rtp_range() -> std::ops::RangeInclusive<u16> {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let base = 10000 + (std::process::id() % 20) as u16 * 1000 + NEXT.fetch_add(1, Ordering::Relaxed) % 50 * 20;
    base..=base + 19
}

pub fn endpoint() -> Endpoint {
    Endpoint::start(EndpointConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        sample_rate: RATE,
        rtp_ports: rtp_range(),
        ..Default::default()
    })
    .expect("endpoint starts")
}

/// Waits for the first event that `matches` returns `Some` for, skipping others.
pub fn wait_event<T>(endpoint: &Endpoint, timeout: Duration, mut matches: impl FnMut(&Event) -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match endpoint.next_event(Some(left)) {
            Ok(event) => {
                if let Some(v) = matches(&event) {
                    return v;
                }
            }
            Err(e) => panic!("no matching event within {timeout:?}: {e}"),
        }
    }
}

/// For [`wait_event`]: the state of the next registration event of `account`.
pub fn registration(account: AccountId) -> impl FnMut(&Event) -> Option<RegistrationState> {
    move |e| match e {
        Event::Registration { account: a, state, .. } if *a == account => Some(state.clone()),
        _ => None,
    }
}

/// One frame of a sine tone at `freq` Hz, continuing from `phase` samples.
pub fn tone_frame(freq: f64, amplitude: f64, phase: &mut u64) -> Vec<i16> {
    (0..FRAME)
        .map(|_| {
            let t = *phase as f64 / RATE as f64;
            *phase += 1;
            (amplitude * (2.0 * std::f64::consts::PI * freq * t).sin()) as i16
        })
        .collect()
}

/// Power of `freq` in `samples` at the tests' rate (Goertzel), normalised by length.
pub fn tone_power(samples: &[i16], freq: f64) -> f64 {
    tone_power_at(samples, freq, RATE)
}

/// Power of `freq` in `samples` taken at `rate`, normalised by length.
pub fn tone_power_at(samples: &[i16], freq: f64, rate: u32) -> f64 {
    let w = 2.0 * std::f64::consts::PI * freq / rate as f64;
    let coeff = 2.0 * w.cos();
    let (mut s1, mut s2) = (0.0, 0.0);
    for &x in samples {
        let s0 = x as f64 + coeff * s1 - s2;
        s2 = s1;
        s1 = s0;
    }
    (s1 * s1 + s2 * s2 - coeff * s1 * s2) / (samples.len() as f64).powi(2)
}

/// Feeds `local` a tone and records what it hears, for `duration`, in real time.
pub fn play_and_listen(local: &mut LocalParticipant, freq: f64, duration: Duration) -> Vec<i16> {
    let mut phase = 0;
    let mut heard = Vec::new();
    let mut frame = vec![0i16; FRAME];
    // What it was sent before now has waited in its ring; a loaded machine
    // can leave more there than the tail a test looks at.
    while local.read_frame(&mut frame, Some(Duration::ZERO)).is_ok() {}
    // Prime two frames so the mixer never runs dry.
    for _ in 0..2 {
        local.write(&tone_frame(freq, 8000.0, &mut phase));
    }
    let end = Instant::now() + duration;
    while Instant::now() < end {
        local.write_all(&tone_frame(freq, 8000.0, &mut phase), Some(Duration::from_secs(1))).unwrap();
        if local.read_frame(&mut frame, Some(Duration::from_millis(200))).is_ok() {
            heard.extend_from_slice(&frame);
        }
    }
    heard
}

/// Plays a 500 Hz tone at `caller` and 1300 Hz at `callee` for 1.5 s, in
/// their two rooms joined by a call, and checks that each hears the other's
/// tone, loudly, and not its own.
pub fn assert_hear_each_other(mut caller: LocalParticipant, mut callee: LocalParticipant) {
    let listener = std::thread::spawn(move || play_and_listen(&mut callee, 1300.0, Duration::from_millis(1500)));
    let heard_by_caller = play_and_listen(&mut caller, 500.0, Duration::from_millis(1500));
    let heard_by_callee = listener.join().unwrap();
    // The last second: past the jitter buffer's start.
    let tail = |v: &Vec<i16>| v[v.len().saturating_sub(RATE as usize)..].to_vec();
    let (c, b) = (tail(&heard_by_caller), tail(&heard_by_callee));
    assert!(tone_power(&c, 1300.0) > 100.0 * tone_power(&c, 500.0), "the caller hears the callee's tone, not its own");
    assert!(tone_power(&b, 500.0) > 100.0 * tone_power(&b, 1300.0), "the callee hears the caller's tone, not its own");
    assert!(tone_power(&c, 1300.0) > 1e5, "and loudly: {}", tone_power(&c, 1300.0));
}
