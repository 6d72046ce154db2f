//! RFC 4733 telephone-event receive: one digit per key press, however many
//! packets (and retransmitted end packets) carry it.

/// A key press received from a participant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DtmfDigit {
    /// '0'–'9', '*', '#', 'A'–'D'.
    pub digit: char,
    pub duration_ms: u32,
}

/// The digit of an RFC 4733 §3.2 DTMF event code.
fn digit(event: u8) -> Option<char> {
    match event {
        0..=9 => Some((b'0' + event) as char),
        10 => Some('*'),
        11 => Some('#'),
        12..=15 => Some((b'A' + event - 12) as char),
        _ => None,
    }
}

/// Turns a leg's telephone-event packets into digits. An event is named by
/// its RTP timestamp (§2.5.1.2): every packet of one key press, end-packet
/// retransmissions included, carries the same one.
#[derive(Debug)]
pub struct DtmfReceiver {
    clock_rate: u32,
    /// The event in progress: (timestamp, event code, longest duration seen).
    current: Option<(u32, u8, u16)>,
    /// The timestamp of the last event reported, to ignore its retransmissions.
    last_reported: Option<u32>,
}

impl DtmfReceiver {
    pub fn new(clock_rate: u32) -> Self {
        Self { clock_rate, current: None, last_reported: None }
    }

    /// Feeds one telephone-event payload; returns the digits it completes
    /// (at most two: an earlier one whose end packets were all lost, and this one).
    pub fn handle(&mut self, timestamp: u32, payload: &[u8]) -> Vec<DtmfDigit> {
        let mut done = Vec::new();
        let [event, flags, d0, d1, ..] = *payload else { return done };
        if self.last_reported == Some(timestamp) {
            return done;
        }
        let (end, duration) = (flags & 0x80 != 0, u16::from_be_bytes([d0, d1]));
        match self.current {
            Some((ts, code, longest)) if ts == timestamp => self.current = Some((ts, code, longest.max(duration))),
            previous => {
                // A new key press while the previous one never saw its end.
                if let Some((ts, code, longest)) = previous {
                    done.extend(self.report(ts, code, longest));
                }
                self.current = Some((timestamp, event, duration));
            }
        }
        if end {
            if let Some((ts, code, longest)) = self.current.take() {
                done.extend(self.report(ts, code, longest));
            }
        }
        done
    }

    fn report(&mut self, timestamp: u32, code: u8, duration: u16) -> Option<DtmfDigit> {
        self.last_reported = Some(timestamp);
        let duration_ms = (duration as u64 * 1000 / self.clock_rate.max(1) as u64) as u32;
        digit(code).map(|digit| DtmfDigit { digit, duration_ms })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(event: u8, end: bool, duration: u16) -> [u8; 4] {
        let d = duration.to_be_bytes();
        [event, if end { 0x80 | 10 } else { 10 }, d[0], d[1]]
    }

    /// The packets of sip-tester's dtmf_2833_1.pcap: digit 1, 280 ms, three end packets.
    #[test]
    fn one_key_press_from_the_sipp_capture_is_one_digit() {
        let mut rx = DtmfReceiver::new(8000);
        let mut digits = Vec::new();
        for duration in [0, 320, 640, 960, 1280, 1600, 1920] {
            digits.extend(rx.handle(13280, &payload(1, false, duration)));
        }
        assert!(digits.is_empty(), "nothing before the end");
        for _ in 0..3 {
            digits.extend(rx.handle(13280, &payload(1, true, 2240)));
        }
        assert_eq!(digits, vec![DtmfDigit { digit: '1', duration_ms: 280 }]);
    }

    #[test]
    fn a_press_whose_end_was_lost_is_reported_when_the_next_starts() {
        let mut rx = DtmfReceiver::new(8000);
        assert!(rx.handle(1000, &payload(11, false, 800)).is_empty());
        let digits = rx.handle(5000, &payload(10, false, 160));
        assert_eq!(digits, vec![DtmfDigit { digit: '#', duration_ms: 100 }]);
        let digits = rx.handle(5000, &payload(10, true, 480));
        assert_eq!(digits, vec![DtmfDigit { digit: '*', duration_ms: 60 }]);
    }

    #[test]
    fn the_same_digit_twice_is_two_presses_and_junk_is_ignored() {
        let mut rx = DtmfReceiver::new(8000);
        let mut digits = rx.handle(100, &payload(5, true, 400));
        digits.extend(rx.handle(100, &payload(5, true, 400)));
        digits.extend(rx.handle(900, &payload(5, true, 400)));
        digits.extend(rx.handle(2000, &[1, 2]));
        digits.extend(rx.handle(3000, &payload(16, true, 400))); // flash: not a digit
        digits.extend(rx.handle(4000, &payload(15, true, 80)));
        let keys: String = digits.iter().map(|d| d.digit).collect();
        assert_eq!(keys, "55D");
    }
}

/// The RFC 4733 event code of a digit.
pub fn event_code(digit: char) -> Option<u8> {
    match digit.to_ascii_uppercase() {
        c @ '0'..='9' => Some(c as u8 - b'0'),
        '*' => Some(10),
        '#' => Some(11),
        c @ 'A'..='D' => Some(c as u8 - b'A' + 12),
        _ => None,
    }
}

/// Ticks (of 20 ms) a sent digit lasts, and the audio ticks left between digits.
const TONE_TICKS: u32 = 5;
const GAP_TICKS: u32 = 3;
/// End packets are sent three times (RFC 4733 §2.5.1.4).
const END_COPIES: u8 = 3;

/// What a leg sends in one tick while digits are queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DtmfTick {
    /// Ordinary audio.
    Audio,
    /// A telephone-event packet, `copies` times; `start` on the first of an event.
    Event { event: u8, duration: u16, end: bool, start: bool, copies: u8 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SendState {
    Idle,
    Tone { event: u8, ticks: u32 },
    Gap(u32),
}

/// Paces queued digits onto a leg: 100 ms events in 20 ms packets, the end
/// packet three times, 60 ms of audio between digits. Runs in the mixer tick,
/// so it only counts.
#[derive(Debug)]
pub struct DtmfSender {
    state: SendState,
}

impl Default for DtmfSender {
    fn default() -> Self {
        Self { state: SendState::Idle }
    }
}

impl DtmfSender {
    /// What to send this tick of `frame` samples; `next_digit` is asked for an
    /// event code only when nothing is being sent.
    pub fn tick(&mut self, frame: u32, next_digit: impl FnOnce() -> Option<u8>) -> DtmfTick {
        self.state = match self.state {
            SendState::Idle => match next_digit() {
                Some(event) => SendState::Tone { event, ticks: 0 },
                None => return DtmfTick::Audio,
            },
            SendState::Gap(0) => {
                self.state = SendState::Idle;
                return self.tick(frame, next_digit);
            }
            other => other,
        };
        match self.state {
            SendState::Tone { event, ticks } => {
                let ticks = ticks + 1;
                let end = ticks == TONE_TICKS;
                let duration = (ticks * frame).min(u16::MAX as u32) as u16;
                self.state = if end { SendState::Gap(GAP_TICKS) } else { SendState::Tone { event, ticks } };
                DtmfTick::Event { event, duration, end, start: ticks == 1, copies: if end { END_COPIES } else { 1 } }
            }
            SendState::Gap(left) => {
                self.state = SendState::Gap(left - 1);
                DtmfTick::Audio
            }
            SendState::Idle => DtmfTick::Audio,
        }
    }
}

#[cfg(test)]
mod sender_tests {
    use super::*;

    #[test]
    fn digits_are_paced_and_end_three_times_and_a_receiver_reads_them_back() {
        let mut queue: std::collections::VecDeque<u8> = "1#".chars().filter_map(event_code).collect();
        let mut sender = DtmfSender::default();
        let mut receiver = DtmfReceiver::new(8000);
        let (mut timestamp, mut event_start) = (1000u32, 0u32);
        let mut ticks = Vec::new();
        let mut heard = Vec::new();
        for _ in 0..20 {
            let tick = sender.tick(160, || queue.pop_front());
            if let DtmfTick::Event { event, duration, end, start, copies } = tick {
                if start {
                    event_start = timestamp;
                }
                let d = duration.to_be_bytes();
                for _ in 0..copies {
                    heard.extend(receiver.handle(event_start, &[event, if end { 0x80 } else { 0 }, d[0], d[1]]));
                }
            }
            ticks.push(tick);
            timestamp += 160;
        }
        let events: Vec<(u16, bool, u8)> = ticks
            .iter()
            .filter_map(|t| match t {
                DtmfTick::Event { duration, end, copies, .. } => Some((*duration, *end, *copies)),
                DtmfTick::Audio => None,
            })
            .take(5)
            .collect();
        assert_eq!(events, vec![(160, false, 1), (320, false, 1), (480, false, 1), (640, false, 1), (800, true, 3)]);
        assert_eq!(&ticks[5..8], &[DtmfTick::Audio; 3], "a gap between digits");
        assert_eq!(heard, vec![DtmfDigit { digit: '1', duration_ms: 100 }, DtmfDigit { digit: '#', duration_ms: 100 }]);
        assert!(ticks[16..].iter().all(|t| *t == DtmfTick::Audio));
    }

    #[test]
    fn digit_codes() {
        let codes: Vec<u8> = "09*#aD".chars().filter_map(event_code).collect();
        assert_eq!(codes, vec![0, 9, 10, 11, 12, 15]);
        assert_eq!(event_code('x'), None);
    }
}
