//! Digest authentication, the server's side: challenges callers, checks
//! their answers against stored hashes, and slows down sources that keep
//! failing. Sans-IO: every check is given `now`.
//!
//! - Users are stored as HA1 hashes (MD5 and SHA-256), never passwords.
//! - Nonces carry their issue time and a keyed hash of it, so they are
//!   bound to this server and need no table; one older than
//!   `NONCE_LIFETIME` is answered with a fresh challenge marked stale.
//! - A source with `MAX_FAILURES` wrong answers within `FAILURE_WINDOW`
//!   gets 403 without a challenge until the window has passed since its last
//!   failure; other sources are not affected.

use std::collections::HashMap;
use std::net::IpAddr;
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
    users: HashMap<String, UserHashes>,
    failures: HashMap<IpAddr, Failures>,
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
            users: HashMap::new(),
            failures: HashMap::new(),
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
            Ok(user) => {
                self.failures.remove(&source);
                Verdict::Accept { user }
            }
            Err(Stale) => self.challenge(now, true),
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
        let nonce = self.nonce(now.saturating_duration_since(self.epoch).as_millis() as u64);
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

    /// `issued` (ms since the epoch) in hex, then a keyed hash of it.
    fn nonce(&self, issued: u64) -> String {
        let key: String = self.secret.iter().map(|b| format!("{b:02x}")).collect();
        let tag = DigestAlgorithm::Sha256.hash(&format!("{key}:{issued:x}"));
        format!("{issued:x}.{}", &tag[..32])
    }

    fn verify(&self, now: Instant, method: &str, authorization: &str) -> Result<String, Failure> {
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
        let issued = nonce.split_once('.').and_then(|(t, _)| u64::from_str_radix(t, 16).ok()).ok_or(Wrong)?;
        if self.nonce(issued) != nonce {
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
        let expected = match param("qop") {
            Some(q) if q.eq_ignore_ascii_case("auth") => {
                let (nc, cnonce) = (param("nc").ok_or(Wrong)?, param("cnonce").ok_or(Wrong)?);
                algorithm.hash(&format!("{ha1}:{nonce}:{nc}:{cnonce}:auth:{ha2}"))
            }
            None => algorithm.hash(&format!("{ha1}:{nonce}:{ha2}")),
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
        Ok(user.to_string())
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
        let md5 = Challenge::parse(&values[0]).unwrap().answer(&alice(), "INVITE", "sip:room@example", "c0ffee", 1);
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
        assert_eq!(auth.check(later, guesser, "INVITE", Some(&right)), Verdict::Accept { user: "alice".into() });
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
