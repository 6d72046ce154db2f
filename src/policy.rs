//! Conference policy (the RFC 4353 conference policy role): who may join a
//! room, with which PIN, as what role, and what they hear meanwhile.
//!
//! The settings are plain data; [`PinEntry`] is the sans-IO state machine of
//! one caller typing a PIN, fed digits and the time by the engine, which
//! applies its verdicts (admit, prompt again, hang up).

use std::time::{Duration, Instant};

use crate::media::codec::CodecKind;
use crate::media::playback::Playback;
use crate::{Error, Result};

/// Wrong PINs a caller may enter before it is hung up.
pub const PIN_TRIES: u32 = 3;
/// How long a caller may take over a PIN, from the prompt or its last digit.
pub const DEFAULT_PIN_TIMEOUT: Duration = Duration::from_secs(20);
/// PINs are at most this many digits; what a caller types beyond it is not kept.
pub const MAX_PIN_DIGITS: usize = 32;

/// A conference's rules (see [`crate::Conference::set_policy`]). The
/// default admits everyone at once, as a room without policy does.
#[derive(Debug, Clone)]
pub struct ConferencePolicy {
    /// Participants at most (`None`: no limit): a caller beyond it gets
    /// 486 Busy Here, the app's dial or local participant an
    /// [`Error::Full`].
    pub max_participants: Option<usize>,
    /// The PIN callers type (then '#') to get in. While they type it they
    /// are in the conference, but neither hear it nor are heard. The app's
    /// own participants (dialled, local) need none.
    pub pin: Option<String>,
    /// The PIN that makes a caller a moderator. With a moderator PIN and no
    /// `pin`, callers are asked for a PIN too, and '#' alone lets them in as
    /// ordinary participants.
    pub moderator_pin: Option<String>,
    /// No one new may join: callers get 403, the app an [`Error::Locked`].
    pub locked: bool,
    /// Non-moderators hear hold music instead of the conference, and are
    /// not heard, until a moderator is there.
    pub wait_for_moderator: bool,
    /// When the last moderator leaves, everyone is hung up and the
    /// conference ends.
    pub end_when_moderator_leaves: bool,
    /// Non-moderators join muted.
    pub mute_on_join: bool,
    /// Played to a caller asked for its PIN, again after each wrong one
    /// (`None`: a short beep).
    pub pin_prompt: Option<Playback>,
    /// Played over and over to those waiting for a moderator (`None`: a
    /// soft tone, a second on and a second off).
    pub hold_music: Option<Playback>,
    /// Announced to a caller the room is too full for (`max_participants`):
    /// the call is answered, hears it apart from the room, and is hung up
    /// when it ends ([`LeaveReason::RoomFull`](crate::LeaveReason::RoomFull)).
    /// `None`: such callers get 486 Busy Here. The app's own dials and
    /// local participants get [`Error::Full`] either way.
    pub full_prompt: Option<Playback>,
    /// How long a caller may take over its PIN, from the prompt or its last
    /// digit; running out counts as a wrong PIN.
    pub pin_timeout: Duration,
    /// The codecs of this conference's calls, in order of preference, in
    /// place of the endpoint's (`None`): what its answers pick and its
    /// dials offer.
    pub codecs: Option<Vec<CodecKind>>,
}

impl Default for ConferencePolicy {
    fn default() -> Self {
        Self {
            max_participants: None,
            pin: None,
            moderator_pin: None,
            locked: false,
            wait_for_moderator: false,
            end_when_moderator_leaves: false,
            mute_on_join: false,
            pin_prompt: None,
            hold_music: None,
            full_prompt: None,
            pin_timeout: DEFAULT_PIN_TIMEOUT,
            codecs: None,
        }
    }
}

impl ConferencePolicy {
    /// Whether callers are asked for a PIN.
    pub fn asks_pin(&self) -> bool {
        self.pin.is_some() || self.moderator_pin.is_some()
    }

    /// Checks the PINs (1 to 32 of '0'-'9', 'A'-'D': '*' clears what was
    /// typed and '#' ends it) and the timeout.
    pub fn validate(&self) -> Result<()> {
        for pin in [&self.pin, &self.moderator_pin].into_iter().flatten() {
            let digit = |c: char| c.is_ascii_digit() || ('A'..='D').contains(&c);
            if pin.is_empty() || pin.len() > MAX_PIN_DIGITS || !pin.chars().all(digit) {
                return Err(Error::InvalidArgument(format!(
                    "a PIN is 1 to {MAX_PIN_DIGITS} of the digits 0-9 and A-D"
                )));
            }
        }
        if self.pin.is_some() && self.pin == self.moderator_pin {
            return Err(Error::InvalidArgument("the PIN and the moderator PIN must differ".into()));
        }
        if self.pin_timeout < Duration::from_secs(1) || self.pin_timeout > Duration::from_secs(300) {
            return Err(Error::InvalidArgument("the PIN timeout must be 1 s to 5 min".into()));
        }
        if self.codecs.as_ref().is_some_and(Vec::is_empty) {
            return Err(Error::InvalidArgument("a conference's codec list cannot be empty".into()));
        }
        if self.max_participants == Some(0) {
            return Err(Error::InvalidArgument("a conference needs room for one participant at least".into()));
        }
        Ok(())
    }
}

/// Where a participant stands with the conference policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// In the mix.
    Admitted,
    /// Typing its PIN: hears only the prompt, is not heard.
    EnteringPin,
    /// Waiting for a moderator: hears hold music, is not heard.
    WaitingForModerator,
    /// Turned away from a full room: hears the policy's `full_prompt`, is
    /// not heard, and is hung up when it ends. It does not count as one of
    /// the room's participants.
    TurnedAway,
}

/// What a caller's typing came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PinStep {
    /// The PIN, or the moderator PIN, was right.
    Accepted { moderator: bool },
    /// Wrong (or too slow); `tries_left` more may be made.
    Wrong { tries_left: u32 },
    /// Wrong for the last time: the caller is to be hung up.
    Rejected,
}

/// One caller typing a PIN: digits, then '#'; '*' starts over. Sans-IO:
/// the time comes with every input.
#[derive(Debug)]
pub struct PinEntry {
    pin: Option<String>,
    moderator_pin: Option<String>,
    typed: String,
    tries_left: u32,
    timeout: Duration,
    deadline: Instant,
}

impl PinEntry {
    /// A caller starts typing against `policy`'s PINs at `now`.
    pub fn new(policy: &ConferencePolicy, now: Instant) -> Self {
        Self {
            pin: policy.pin.clone(),
            moderator_pin: policy.moderator_pin.clone(),
            typed: String::with_capacity(MAX_PIN_DIGITS),
            tries_left: PIN_TRIES,
            timeout: policy.pin_timeout,
            deadline: now + policy.pin_timeout,
        }
    }

    /// A key pressed at `now`; a verdict when it was '#'.
    pub fn handle_digit(&mut self, digit: char, now: Instant) -> Option<PinStep> {
        self.deadline = now + self.timeout;
        match digit {
            '#' => {
                let typed = std::mem::take(&mut self.typed);
                if self.moderator_pin.as_deref() == Some(typed.as_str()) {
                    Some(PinStep::Accepted { moderator: true })
                } else if self.pin.as_deref() == Some(typed.as_str()) || (self.pin.is_none() && typed.is_empty()) {
                    Some(PinStep::Accepted { moderator: false })
                } else {
                    Some(self.wrong())
                }
            }
            '*' => {
                self.typed.clear();
                None
            }
            digit => {
                // One digit past the longest PIN is enough to be wrong.
                if self.typed.len() <= MAX_PIN_DIGITS {
                    self.typed.push(digit);
                }
                None
            }
        }
    }

    /// When [`PinEntry::handle_timeout`] is next due.
    pub fn poll_timeout(&self) -> Instant {
        self.deadline
    }

    /// Too slow counts as a wrong PIN: a verdict once the deadline passed.
    pub fn handle_timeout(&mut self, now: Instant) -> Option<PinStep> {
        if now < self.deadline {
            return None;
        }
        self.typed.clear();
        self.deadline = now + self.timeout;
        Some(self.wrong())
    }

    fn wrong(&mut self) -> PinStep {
        self.tries_left = self.tries_left.saturating_sub(1);
        match self.tries_left {
            0 => PinStep::Rejected,
            tries_left => PinStep::Wrong { tries_left },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(pin: Option<&str>, moderator_pin: Option<&str>) -> ConferencePolicy {
        ConferencePolicy {
            pin: pin.map(Into::into),
            moderator_pin: moderator_pin.map(Into::into),
            pin_timeout: Duration::from_secs(10),
            ..Default::default()
        }
    }

    fn type_in(entry: &mut PinEntry, keys: &str, now: Instant) -> Vec<PinStep> {
        keys.chars().filter_map(|c| entry.handle_digit(c, now)).collect()
    }

    #[test]
    fn the_pin_or_the_moderator_pin_lets_a_caller_in() {
        let now = Instant::now();
        let p = policy(Some("1234"), Some("9999"));
        assert_eq!(type_in(&mut PinEntry::new(&p, now), "1234#", now), vec![PinStep::Accepted { moderator: false }]);
        assert_eq!(type_in(&mut PinEntry::new(&p, now), "9999#", now), vec![PinStep::Accepted { moderator: true }]);
        // '*' starts over.
        assert_eq!(type_in(&mut PinEntry::new(&p, now), "77*1234#", now), vec![PinStep::Accepted { moderator: false }]);
    }

    #[test]
    fn three_wrong_pins_reject_and_a_right_one_between_still_counts() {
        let now = Instant::now();
        let p = policy(Some("1234"), None);
        let mut entry = PinEntry::new(&p, now);
        assert_eq!(
            type_in(&mut entry, "1#12345#", now),
            vec![PinStep::Wrong { tries_left: 2 }, PinStep::Wrong { tries_left: 1 }]
        );
        assert_eq!(type_in(&mut entry, "1234#", now), vec![PinStep::Accepted { moderator: false }]);
        let mut entry = PinEntry::new(&p, now);
        assert_eq!(
            type_in(&mut entry, "#0#00000000000000000000000000000000000000001234#", now),
            vec![PinStep::Wrong { tries_left: 2 }, PinStep::Wrong { tries_left: 1 }, PinStep::Rejected],
            "an over-long entry that ends in the PIN is wrong"
        );
    }

    #[test]
    fn with_only_a_moderator_pin_hash_alone_admits_an_ordinary_participant() {
        let now = Instant::now();
        let p = policy(None, Some("42"));
        assert!(p.asks_pin());
        assert_eq!(type_in(&mut PinEntry::new(&p, now), "#", now), vec![PinStep::Accepted { moderator: false }]);
        assert_eq!(type_in(&mut PinEntry::new(&p, now), "42#", now), vec![PinStep::Accepted { moderator: true }]);
        assert_eq!(type_in(&mut PinEntry::new(&p, now), "41#", now), vec![PinStep::Wrong { tries_left: 2 }]);
    }

    #[test]
    fn silence_times_out_as_a_wrong_pin_and_digits_restart_the_clock() {
        let start = Instant::now();
        let p = policy(Some("1"), None);
        let mut entry = PinEntry::new(&p, start);
        assert_eq!(entry.poll_timeout(), start + Duration::from_secs(10));
        assert_eq!(entry.handle_timeout(start + Duration::from_secs(9)), None);
        // A digit at 9 s gives another 10 s, and what was typed is dropped at the timeout.
        assert_eq!(entry.handle_digit('1', start + Duration::from_secs(9)), None);
        assert_eq!(entry.handle_timeout(start + Duration::from_secs(18)), None);
        let late = start + Duration::from_secs(19);
        assert_eq!(entry.handle_timeout(late), Some(PinStep::Wrong { tries_left: 2 }));
        assert_eq!(entry.handle_digit('#', late), Some(PinStep::Wrong { tries_left: 1 }), "the '1' was dropped");
        assert_eq!(entry.handle_timeout(late + Duration::from_secs(10)), Some(PinStep::Rejected));
    }

    #[test]
    fn bad_policies_are_refused() {
        for bad in [
            policy(Some(""), None),
            policy(Some("12#"), None),
            policy(Some(&"1".repeat(33)), None),
            policy(Some("5"), Some("5")),
            ConferencePolicy { max_participants: Some(0), ..Default::default() },
            ConferencePolicy { pin_timeout: Duration::ZERO, ..Default::default() },
        ] {
            assert!(matches!(bad.validate(), Err(Error::InvalidArgument(_))), "{bad:?}");
        }
        assert!(policy(Some("0123456789ABCD"), Some("1")).validate().is_ok());
        assert!(!ConferencePolicy::default().asks_pin());
    }
}
