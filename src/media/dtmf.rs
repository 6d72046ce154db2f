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
