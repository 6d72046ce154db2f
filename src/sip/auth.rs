//! Digest authentication, the server's side: challenges callers, checks
//! their answers against stored hashes, and slows down sources that keep
//! failing. Sans-IO: every check is given `now`.
//!
//! - Users are stored as HA1 hashes (MD5 and SHA-256), never passwords.
//! - Nonces carry their issue time and a keyed hash of it, so they are
//!   bound to this server; one older than `NONCE_LIFETIME` is answered with
//!   a fresh challenge marked stale.
//! - Each nonce's highest nonce count (nc) is remembered while the nonce
//!   lives: an answer whose count is not higher is a replay (RFC 7616
//!   §3.4.5), answered with a fresh challenge marked stale, which a real
//!   client takes up at once and a replayer cannot answer.
//! - A source with `MAX_FAILURES` wrong answers within `FAILURE_WINDOW`
//!   gets 403 without a challenge until the window has passed since its last
//!   failure; other sources are not affected.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::digest::{auth_params, DigestAlgorithm};

/// How long a nonce is accepted.
pub const NONCE_LIFETIME: Duration = Duration::from_secs(300);
/// Wrong answers from one address before it is refused outright.
pub const MAX_FAILURES: u32 = 5;
/// How long failures are remembered, and the refusal lasts.
pub const FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// Addresses whose failures are remembered at most, so a flood of sources
/// cannot grow the table without bound (the oldest entries go first).
const MAX_TRACKED_SOURCES: usize = 10_000;
/// Live nonces whose counts are remembered at most; past it, the oldest
/// quarter is forgotten (only answers with the right password get here).
const MAX_TRACKED_NONCES: usize = 100_000;

/// What to do with a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The answer is right: the request comes from `user`.
    Accept { user: String },
    /// Answer 401 with these WWW-Authenticate values: MD5, then SHA-256 when
    /// the authenticator offers it. MD5 comes first although SHA-256 is
    /// stronger: clients that read only the first challenge (sipp 3.6, many
    /// older phones) know only MD5, and clients that know both pick SHA-256
    /// wherever it is.
    Challenge(Vec<String>),
    /// Answer 403: too many wrong answers from this address.
    Forbidden,
}

struct UserHashes {
    md5: String,
    sha256: String,
}

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    last: Instant,
}

pub struct Authenticator {
    realm: String,
    /// Whether challenges offer SHA-256 beside MD5 (RFC 8760). Off by
    /// default in the engine: libre 1.x (baresip 1.0) fails on a challenge
    /// whose algorithm it does not know rather than skipping it.
    offer_sha256: bool,
    secret: [u8; 16],
    epoch: Instant,
    /// Numbers the nonces, so two issued in the same millisecond differ
    /// (their counts are kept apart).
    nonces_issued: AtomicU64,
    users: HashMap<String, UserHashes>,
    failures: HashMap<IpAddr, Failures>,
    /// The highest nonce count accepted per nonce, with the nonce's issue time.
    nonce_counts: HashMap<String, NonceUse>,
}

#[derive(Debug, Clone, Copy)]
struct NonceUse {
    highest: u32,
    issued: u64,
}

/// A right answer: who gave it, and the nonce and count it used.
struct Answer {
    user: String,
    nonce: String,
    count: u32,
    issued: u64,
}

impl Authenticator {
    /// An authenticator for `realm`, with a fresh secret for its nonces;
    /// its challenges offer SHA-256 too when `offer_sha256`.
    pub fn new(realm: &str, offer_sha256: bool, now: Instant) -> Self {
        Self {
            realm: realm.into(),
            offer_sha256,
            secret: rand::random(),
            epoch: now,
            nonces_issued: AtomicU64::new(0),
            users: HashMap::new(),
            failures: HashMap::new(),
            nonce_counts: HashMap::new(),
        }
    }

    pub fn realm(&self) -> &str {
        &self.realm
    }

    /// Adds or replaces a user; only the hashes are kept.
    pub fn add_user(&mut self, name: &str, password: &str) {
        let ha1 = |algorithm: DigestAlgorithm| algorithm.hash(&format!("{name}:{}:{password}", self.realm));
        let hashes = UserHashes { md5: ha1(DigestAlgorithm::Md5), sha256: ha1(DigestAlgorithm::Sha256) };
        self.users.insert(name.into(), hashes);
    }

    /// Adds or replaces a user given by its HA1 hashes (hex), MD5 and
    /// SHA-256 of `name:realm:password`, so that no password is stored anywhere.
    pub fn add_user_hashes(&mut self, name: &str, md5: &str, sha256: &str) -> bool {
        let hex = |h: &str, len: usize| h.len() == len && h.bytes().all(|b| b.is_ascii_hexdigit());
        if !hex(md5, 32) || !hex(sha256, 64) {
            return false;
        }
        let hashes = UserHashes { md5: md5.to_ascii_lowercase(), sha256: sha256.to_ascii_lowercase() };
        self.users.insert(name.into(), hashes);
        true
    }

    pub fn has_user(&self, name: &str) -> bool {
        self.users.contains_key(name)
    }

    pub fn remove_user(&mut self, name: &str) -> bool {
        self.users.remove(name).is_some()
    }

    /// Checks a `method` request from `source` that carried `authorization`
    /// (the Authorization header's value, if any).
    pub fn check(&mut self, now: Instant, source: IpAddr, method: &str, authorization: Option<&str>) -> Verdict {
        if self.refused(now, source) {
            return Verdict::Forbidden;
        }
        let Some(authorization) = authorization else { return self.challenge(now, false) };
        match self.verify(now, method, authorization) {
            Ok(answer) if self.first_use(now, &answer) => {
                self.failures.remove(&source);
                Verdict::Accept { user: answer.user }
            }
            Ok(_) | Err(Stale) => self.challenge(now, true),
            Err(Wrong) => {
                self.note_failure(now, source);
                if self.refused(now, source) {
                    Verdict::Forbidden
                } else {
                    self.challenge(now, false)
                }
            }
        }
    }

    /// Notes a right answer's nonce count; false when the nonce was already
    /// used with that count or a higher one (a replay).
    fn first_use(&mut self, now: Instant, answer: &Answer) -> bool {
        if let Some(used) = self.nonce_counts.get_mut(&answer.nonce) {
            if answer.count <= used.highest {
                return false;
            }
            used.highest = answer.count;
            return true;
        }
        if self.nonce_counts.len() >= MAX_TRACKED_NONCES {
            let now_ms = now.saturating_duration_since(self.epoch).as_millis() as u64;
            let lifetime = NONCE_LIFETIME.as_millis() as u64;
            self.nonce_counts.retain(|_, used| now_ms.saturating_sub(used.issued) <= lifetime);
            if self.nonce_counts.len() >= MAX_TRACKED_NONCES {
                let mut issued: Vec<u64> = self.nonce_counts.values().map(|used| used.issued).collect();
                issued.sort_unstable();
                let cutoff = issued[issued.len() / 4];
                self.nonce_counts.retain(|_, used| used.issued > cutoff);
            }
        }
        self.nonce_counts.insert(answer.nonce.clone(), NonceUse { highest: answer.count, issued: answer.issued });
        true
    }

    fn refused(&mut self, now: Instant, source: IpAddr) -> bool {
        match self.failures.get(&source) {
            Some(f) if now.saturating_duration_since(f.last) >= FAILURE_WINDOW => {
                self.failures.remove(&source);
                false
            }
            Some(f) => f.count >= MAX_FAILURES,
            None => false,
        }
    }

    fn note_failure(&mut self, now: Instant, source: IpAddr) {
        if self.failures.len() >= MAX_TRACKED_SOURCES && !self.failures.contains_key(&source) {
            self.failures.retain(|_, f| now.saturating_duration_since(f.last) < FAILURE_WINDOW);
            if self.failures.len() >= MAX_TRACKED_SOURCES {
                let oldest = self.failures.iter().min_by_key(|(_, f)| f.last).map(|(ip, _)| *ip);
                oldest.map(|ip| self.failures.remove(&ip));
            }
        }
        let entry = self.failures.entry(source).or_insert(Failures { count: 0, last: now });
        entry.count += 1;
        entry.last = now;
    }

    fn challenge(&self, now: Instant, stale: bool) -> Verdict {
        let serial = self.nonces_issued.fetch_add(1, Ordering::Relaxed);
        let nonce = self.nonce(now.saturating_duration_since(self.epoch).as_millis() as u64, serial);
        let stale = if stale { ", stale=true" } else { "" };
        let value = |algorithm: &str| {
            format!("Digest realm=\"{}\", nonce=\"{nonce}\", algorithm={algorithm}, qop=\"auth\"{stale}", self.realm)
        };
        let mut values = vec![value("MD5")];
        if self.offer_sha256 {
            values.push(value("SHA-256"));
        }
        Verdict::Challenge(values)
    }

    /// `issued` (ms since the epoch) and `serial` in hex, then a keyed hash of them.
    fn nonce(&self, issued: u64, serial: u64) -> String {
        let key: String = self.secret.iter().map(|b| format!("{b:02x}")).collect();
        let tag = DigestAlgorithm::Sha256.hash(&format!("{key}:{issued:x}-{serial:x}"));
        format!("{issued:x}-{serial:x}.{}", &tag[..32])
    }

    fn verify(&self, now: Instant, method: &str, authorization: &str) -> Result<Answer, Failure> {
        let (scheme, params) = authorization.trim().split_once(char::is_whitespace).ok_or(Wrong)?;
        if !scheme.eq_ignore_ascii_case("digest") {
            return Err(Wrong);
        }
        let params = auth_params(params);
        let param = |name: &str| params.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str());
        let (user, nonce, uri, response) = (param("username"), param("nonce"), param("uri"), param("response"));
        let (Some(user), Some(nonce), Some(uri), Some(response)) = (user, nonce, uri, response) else {
            return Err(Wrong);
        };
        if param("realm") != Some(self.realm.as_str()) {
            return Err(Wrong);
        }
        let stamp = nonce.split_once('.').and_then(|(stamp, _)| stamp.split_once('-')).ok_or(Wrong)?;
        let hex = |text: &str| u64::from_str_radix(text, 16).map_err(|_| Wrong);
        let (issued, serial) = (hex(stamp.0)?, hex(stamp.1)?);
        if self.nonce(issued, serial) != nonce {
            // Not one of ours.
            return Err(Wrong);
        }
        let hashes = self.users.get(user).ok_or(Wrong)?;
        let (algorithm, ha1) = match param("algorithm") {
            None => (DigestAlgorithm::Md5, &hashes.md5),
            Some(a) if a.eq_ignore_ascii_case("md5") => (DigestAlgorithm::Md5, &hashes.md5),
            Some(a) if a.eq_ignore_ascii_case("sha-256") => (DigestAlgorithm::Sha256, &hashes.sha256),
            Some(_) => return Err(Wrong),
        };
        let ha2 = algorithm.hash(&format!("{method}:{uri}"));
        // Without qop (RFC 2069) there is no count: a nonce serves once.
        let (expected, count) = match param("qop") {
            Some(q) if q.eq_ignore_ascii_case("auth") => {
                let (nc, cnonce) = (param("nc").ok_or(Wrong)?, param("cnonce").ok_or(Wrong)?);
                let count = u32::from_str_radix(nc, 16).map_err(|_| Wrong)?;
                (algorithm.hash(&format!("{ha1}:{nonce}:{nc}:{cnonce}:auth:{ha2}")), count)
            }
            None => (algorithm.hash(&format!("{ha1}:{nonce}:{ha2}")), 1),
            Some(_) => return Err(Wrong),
        };
        if !expected.eq_ignore_ascii_case(response) {
            return Err(Wrong);
        }
        // Right, but on an old nonce: the client only needs a fresh one.
        let age = (now.saturating_duration_since(self.epoch).as_millis() as u64).saturating_sub(issued);
        if Duration::from_millis(age) > NONCE_LIFETIME {
            return Err(Stale);
        }
        Ok(Answer { user: user.to_string(), nonce: nonce.to_string(), count, issued })
    }
}

/// Why an answer was not accepted.
enum Failure {
    Wrong,
    Stale,
}
use Failure::{Stale, Wrong};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::digest::{Challenge, Credentials};

    fn alice() -> Credentials {
        Credentials { username: "alice".into(), password: "secret".into() }
    }

    /// An authenticator with user alice (password "secret"), and a caller's address.
    fn server_with_alice() -> (Instant, Authenticator, IpAddr) {
        let now = Instant::now();
        let mut auth = Authenticator::new("sipbridge", true, now);
        auth.add_user("alice", "secret");
        (now, auth, [10, 0, 0, 1].into())
    }

    /// Answers the challenge in `verdict` as a client would (SHA-256 preferred).
    fn answer(verdict: &Verdict, credentials: &Credentials) -> String {
        let Verdict::Challenge(values) = verdict else { panic!("no challenge: {verdict:?}") };
        Challenge::choose(values.iter().map(String::as_str)).unwrap().answer(
            credentials,
            "INVITE",
            "sip:room@example",
            "c0ffee",
            1,
        )
    }

    #[test]
    fn a_right_answer_is_accepted_in_both_algorithms() {
        let (now, mut auth, source) = server_with_alice();
        let challenge = auth.check(now, source, "INVITE", None);
        let Verdict::Challenge(values) = &challenge else { panic!() };
        assert!(values[0].contains("algorithm=MD5") && values[1].contains("algorithm=SHA-256"));
        assert_eq!(
            auth.check(now, source, "INVITE", Some(&answer(&challenge, &alice()))),
            Verdict::Accept { user: "alice".into() }
        );
        let Verdict::Challenge(fresh) = auth.check(now, source, "INVITE", None) else { panic!() };
        let md5 = Challenge::parse(&fresh[0]).unwrap().answer(&alice(), "INVITE", "sip:room@example", "c0ffee", 1);
        assert_eq!(auth.check(now, source, "INVITE", Some(&md5)), Verdict::Accept { user: "alice".into() });
        // The answer is bound to the method and the server's nonces.
        assert!(matches!(auth.check(now, source, "BYE", Some(&md5)), Verdict::Challenge(_)));
        let other = Authenticator::new("sipbridge", true, now);
        let foreign = answer(&other.challenge(now, false), &alice());
        assert!(matches!(auth.check(now, source, "INVITE", Some(&foreign)), Verdict::Challenge(_)));
    }

    #[test]
    fn a_user_given_by_its_hashes_authenticates_with_its_password() {
        let (now, mut auth, source) = server_with_alice();
        let md5 = DigestAlgorithm::Md5.hash("bob:sipbridge:secret");
        let sha256 = DigestAlgorithm::Sha256.hash("bob:sipbridge:secret");
        assert!(!auth.add_user_hashes("bob", &sha256, &md5), "swapped");
        assert!(auth.add_user_hashes("bob", &md5.to_uppercase(), &sha256));
        let bob = Credentials { username: "bob".into(), password: "secret".into() };
        let reply = answer(&auth.check(now, source, "INVITE", None), &bob);
        assert_eq!(auth.check(now, source, "INVITE", Some(&reply)), Verdict::Accept { user: "bob".into() });
    }

    #[test]
    fn an_old_nonce_gets_a_stale_challenge() {
        let (now, mut auth, source) = server_with_alice();
        let reply = answer(&auth.check(now, source, "INVITE", None), &alice());
        let later = now + NONCE_LIFETIME + Duration::from_secs(1);
        let Verdict::Challenge(values) = auth.check(later, source, "INVITE", Some(&reply)) else { panic!() };
        assert!(values.iter().all(|v| v.contains("stale=true")), "{values:?}");
        // A stale answer is not a failure.
        for _ in 0..MAX_FAILURES + 1 {
            assert_ne!(auth.check(later, source, "INVITE", Some(&reply)), Verdict::Forbidden);
        }
    }

    #[test]
    fn repeated_failures_are_refused_for_a_while_and_only_for_that_source() {
        let (now, mut auth, other) = server_with_alice();
        let guesser: IpAddr = [10, 0, 0, 66].into();
        let wrong = Credentials { username: "alice".into(), password: "guess".into() };
        let mut verdicts = Vec::new();
        for _ in 0..MAX_FAILURES {
            let challenge = auth.check(now, guesser, "INVITE", None);
            verdicts.push(auth.check(now, guesser, "INVITE", Some(&answer(&challenge, &wrong))));
        }
        assert!(verdicts[..MAX_FAILURES as usize - 1].iter().all(|v| matches!(v, Verdict::Challenge(_))));
        assert_eq!(verdicts.last(), Some(&Verdict::Forbidden));
        // Even the right password is refused from there until the window passes.
        let challenge = auth.challenge(now, false);
        let right = answer(&challenge, &alice());
        assert_eq!(auth.check(now, guesser, "INVITE", Some(&right)), Verdict::Forbidden);
        assert_eq!(auth.check(now, other, "INVITE", Some(&right)), Verdict::Accept { user: "alice".into() });
        let later = now + FAILURE_WINDOW;
        let right = answer(&auth.challenge(later, false), &alice());
        assert_eq!(auth.check(later, guesser, "INVITE", Some(&right)), Verdict::Accept { user: "alice".into() });
    }

    #[test]
    fn a_replayed_answer_gets_a_stale_challenge_and_a_higher_count_is_accepted() {
        let (now, mut auth, source) = server_with_alice();
        let challenge = auth.check(now, source, "INVITE", None);
        let Verdict::Challenge(values) = &challenge else { panic!() };
        let Verdict::Challenge(same_instant) = auth.check(now, source, "INVITE", None) else { panic!() };
        assert_ne!(values[0], same_instant[0], "two nonces of one millisecond");
        let parsed = Challenge::parse(&values[0]).unwrap();
        let with_count = |nc| parsed.answer(&alice(), "INVITE", "sip:room@example", "c0ffee", nc);
        let accepted = Verdict::Accept { user: "alice".into() };
        assert_eq!(auth.check(now, source, "INVITE", Some(&with_count(1))), accepted);
        // The same answer again (a replay), or an older count: a fresh challenge, stale.
        for replay in [with_count(1), with_count(0)] {
            let Verdict::Challenge(again) = auth.check(now, source, "INVITE", Some(&replay)) else { panic!() };
            assert!(again.iter().all(|v| v.contains("stale=true")), "{again:?}");
        }
        // The client's next request on the same nonce counts on.
        assert_eq!(auth.check(now, source, "INVITE", Some(&with_count(3))), accepted);
        assert!(matches!(auth.check(now, source, "INVITE", Some(&with_count(2))), Verdict::Challenge(_)));
        // Replays are not failures: the source is not refused.
        for _ in 0..MAX_FAILURES + 1 {
            assert_ne!(auth.check(now, source, "INVITE", Some(&with_count(3))), Verdict::Forbidden);
        }
    }

    #[test]
    fn garbage_and_unknown_users_are_challenged_not_accepted() {
        let (now, mut auth, source) = server_with_alice();
        let challenge = auth.check(now, source, "INVITE", None);
        let mallory = Credentials { username: "mallory".into(), password: "secret".into() };
        for header in [
            String::new(),
            "Basic YWxpY2U6c2VjcmV0".into(),
            "Digest".into(),
            "Digest username=\"alice\"".into(),
            answer(&challenge, &mallory),
            answer(&challenge, &alice()).replace("nonce=\"", "nonce=\"x"),
            answer(&challenge, &alice()).replace("realm=\"sipbridge\"", "realm=\"other\""),
        ] {
            assert!(matches!(auth.check(now, source, "INVITE", Some(&header)), Verdict::Challenge(_)), "{header}");
            auth.failures.clear();
        }
        assert!(auth.remove_user("alice"));
        let right = answer(&challenge, &alice());
        assert!(matches!(auth.check(now, source, "INVITE", Some(&right)), Verdict::Challenge(_)));
    }
}
