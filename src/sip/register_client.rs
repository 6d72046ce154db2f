//! The registration client (RFC 3261 §10.2): keeps accounts registered with
//! upstream registrars or PBXs, so that calls to their addresses of record
//! reach this endpoint. Sans-IO, like the rest of the SIP core: every input
//! carries `now`, and REGISTERs go out through the [`UserAgent`]'s client
//! non-INVITE transactions (retransmitted by Timer E, 408 after Timer F).
//!
//! Drive it next to the agent: after [`RegistrationClient::add`],
//! [`RegistrationClient::remove`] or [`RegistrationClient::handle_timeout`],
//! and for every [`UaEvent::RequestAnswered`](super::UaEvent::RequestAnswered)
//! (passed to [`RegistrationClient::handle_response`]), drain
//! [`RegistrationClient::poll_event`]; wake up at
//! [`RegistrationClient::poll_timeout`] as well as the agent's.
//!
//! Per account:
//! - one Call-ID for its whole life and a CSeq that goes up by one with every
//!   REGISTER (§10.2), so the registrar can order them;
//! - a 401/407 is answered with digest (MD5 or SHA-256, qop=auth). The
//!   challenge is kept and later REGISTERs carry its answer up front, with
//!   the nonce count going up, which saves a round trip per refresh while
//!   the nonce lives. A challenge that answers our answer to the same realm
//!   is a wrong password unless it says `stale=true` (RFC 7616 §3.3: only
//!   then were the credentials right); the nonce itself is no guide, as
//!   registrars (Kamailio) hand out a new one with every challenge;
//! - 423 Interval Too Brief: asked again at once with the Min-Expires;
//! - the expiry the registrar grants (our Contact's `expires`, else the
//!   Expires header) sets the refresh, at [`refresh_after`];
//! - any other failure, and no answer at all (408), is reported and retried
//!   after [`backoff`]: 5 s doubling to 5 minutes, with jitter;
//! - removal sends Expires: 0 and reports `Unregistered` when answered
//!   (or failed: the binding then lapses at the registrar on its own).

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use rsip::headers::UntypedHeader;
use rsip::{Header, Method};

use super::digest::{Challenge, DigestAlgorithm};
use super::message::{self, random_token};
use super::registrar::ContactChange;
use super::ua::{OutgoingRequest, RequestKey};
use super::{Peer, SipError, UserAgent};

/// The first retry after a failure; each further failure doubles it.
pub const FIRST_RETRY: Duration = Duration::from_secs(5);
/// The longest wait between retries.
pub const MAX_RETRY: Duration = Duration::from_secs(300);
/// Challenges answered in one attempt at most: a registrar that keeps
/// saying `stale` must not keep us in a loop.
const MAX_CHALLENGES: u8 = 3;

/// Names an account for the life of the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AccountId(pub u64);

/// What answers digest challenges for an account.
#[derive(Clone, PartialEq, Eq)]
pub enum Secret {
    Password(String),
    /// The HA1 hash (hex) of `username:realm:password`: 32 digits answer
    /// MD5 challenges, 64 digits SHA-256 ones.
    Ha1(String),
}

impl std::fmt::Debug for Secret {
    // Secrets stay out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Secret::Password(_) => "Password(..)",
            Secret::Ha1(_) => "Ha1(..)",
        })
    }
}

impl Secret {
    fn answers(&self, algorithm: DigestAlgorithm) -> bool {
        match self {
            Secret::Password(_) => true,
            Secret::Ha1(ha1) => ha1.len() == if algorithm == DigestAlgorithm::Md5 { 32 } else { 64 },
        }
    }

    fn ha1(&self, username: &str, challenge: &Challenge) -> String {
        match self {
            Secret::Password(password) => {
                challenge.algorithm.hash(&format!("{username}:{}:{password}", challenge.realm))
            }
            Secret::Ha1(ha1) => ha1.to_ascii_lowercase(),
        }
    }
}

/// One account to keep registered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountConfig {
    /// The address of record, `sip:user@domain`: From and To of every REGISTER.
    pub aor: String,
    /// The REGISTER's Request-URI, naming the registrar's domain (`sip:domain`).
    pub registrar: String,
    /// Where REGISTERs are sent: the registrar's (or outbound proxy's)
    /// servers, in the order to try them (RFC 3263); at least one.
    pub servers: Vec<Peer>,
    /// The digest user name.
    pub username: String,
    pub secret: Secret,
    /// The registration interval to ask for, in seconds.
    pub expires: u32,
    /// The Contact to bind to the AOR: where calls to it should come.
    pub contact: String,
}

/// Where an account's registration stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegistrationState {
    /// The registrar accepted the binding for `expires` seconds. Reported
    /// when the account becomes registered, and when a refresh is granted a
    /// different expiry.
    Registered { expires: u32 },
    /// A REGISTER failed with `status` (408 when nothing answered; 401 or
    /// 407 for credentials the registrar did not take); it is retried
    /// after a backoff.
    Failed { status: u16, reason: String },
    /// The account was removed (after its un-REGISTER).
    Unregistered,
}

/// A change of an account's registration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistrationEvent {
    pub account: AccountId,
    pub state: RegistrationState,
}

/// A challenge answered before, whose nonce later REGISTERs keep using.
#[derive(Debug)]
struct KnownChallenge {
    /// A 407 (Proxy-Authorization) rather than a 401.
    proxy: bool,
    challenge: Challenge,
    cnonce: String,
    /// The nonce count of the last answer sent.
    nc: u32,
}

#[derive(Debug)]
struct Account {
    config: AccountConfig,
    call_id: String,
    cseq: u32,
    /// The expiry asked for: the configured one, raised by a 423's Min-Expires.
    expires: u32,
    /// The REGISTER in flight, and the expiry it asked for.
    in_flight: Option<(RequestKey, u32)>,
    /// When the next REGISTER goes out (a refresh or a retry).
    wake: Option<Instant>,
    challenges: Vec<KnownChallenge>,
    /// Challenges answered in this attempt (a first REGISTER, a refresh, a
    /// retry, or the un-REGISTER, with the resends they lead to), by 407-ness
    /// and realm.
    answered: Vec<(bool, String)>,
    /// Failures in a row, for the backoff.
    failures: u32,
    /// The server REGISTERs go to (an index into the config's), and how
    /// many others this attempt has moved on from.
    server: usize,
    servers_tried: usize,
    /// The expiry granted, while registered.
    registered: Option<u32>,
    removing: bool,
}

/// The registration client of one endpoint. See the module docs.
#[derive(Debug, Default)]
pub struct RegistrationClient {
    accounts: HashMap<AccountId, Account>,
    /// REGISTERs in flight -> their account.
    requests: HashMap<RequestKey, AccountId>,
    events: VecDeque<RegistrationEvent>,
    next_id: u64,
}

impl RegistrationClient {
    /// Adds an account and sends its first REGISTER at once.
    pub fn add(&mut self, ua: &mut UserAgent, config: AccountConfig, now: Instant) -> Result<AccountId, SipError> {
        for uri in [&config.aor, &config.registrar] {
            rsip::Uri::try_from(uri.as_str()).map_err(|e| SipError::InvalidUri(uri.clone(), e.to_string()))?;
        }
        let first =
            config.servers.first().ok_or_else(|| SipError::InvalidUri(config.registrar.clone(), "no server".into()))?;
        self.next_id += 1;
        let id = AccountId(self.next_id);
        let account = Account {
            call_id: format!("{}@{}", random_token(), first.addr.ip()),
            cseq: 0,
            expires: config.expires,
            config,
            in_flight: None,
            wake: None,
            challenges: Vec::new(),
            answered: Vec::new(),
            failures: 0,
            server: 0,
            servers_tried: 0,
            registered: None,
            removing: false,
        };
        self.accounts.insert(id, account);
        self.start_attempt(ua, id, now);
        Ok(id)
    }

    /// Un-registers an account (Expires: 0) and forgets it once answered;
    /// [`RegistrationState::Unregistered`] follows.
    pub fn remove(&mut self, ua: &mut UserAgent, id: AccountId, now: Instant) -> Result<(), SipError> {
        let account = self.accounts.get_mut(&id).ok_or(SipError::UnknownCall)?;
        if !std::mem::replace(&mut account.removing, true) {
            self.start_attempt(ua, id, now);
        }
        Ok(())
    }

    /// Un-registers every account (at shutdown).
    pub fn remove_all(&mut self, ua: &mut UserAgent, now: Instant) {
        let ids: Vec<AccountId> = self.accounts.keys().copied().collect();
        for id in ids {
            // Every id was just taken from the map.
            let _ = self.remove(ua, id, now);
        }
    }

    /// Gives an account a new list of servers (its registrar's name looked
    /// up again): its next REGISTER goes to the first of them.
    pub fn set_servers(&mut self, id: AccountId, servers: Vec<Peer>) {
        if let (Some(account), false) = (self.accounts.get_mut(&id), servers.is_empty()) {
            account.config.servers = servers;
            (account.server, account.servers_tried) = (0, 0);
        }
    }

    /// Accounts kept, including those whose un-REGISTER is in flight.
    pub fn account_count(&self) -> usize {
        self.accounts.len()
    }

    pub fn poll_event(&mut self) -> Option<RegistrationEvent> {
        self.events.pop_front()
    }

    /// When [`RegistrationClient::handle_timeout`] must next be called.
    /// Accounts are few (a handful of trunks), so a scan beats a heap.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.accounts.values().filter_map(|a| a.wake).min()
    }

    /// Sends the refreshes and retries due at `now`.
    pub fn handle_timeout(&mut self, ua: &mut UserAgent, now: Instant) {
        let due: Vec<AccountId> =
            self.accounts.iter().filter(|(_, a)| a.wake.is_some_and(|at| at <= now)).map(|(id, _)| *id).collect();
        for id in due {
            self.start_attempt(ua, id, now);
        }
    }

    /// Takes the final answer to request `key`; false when it was not one
    /// of ours (the agent's other requests, or a REGISTER superseded by a
    /// later one of its account).
    pub fn handle_response(
        &mut self,
        ua: &mut UserAgent,
        key: RequestKey,
        status: u16,
        reason: &str,
        headers: &rsip::Headers,
        now: Instant,
    ) -> bool {
        let Some(id) = self.requests.remove(&key) else { return false };
        let Some(account) = self.accounts.get_mut(&id) else { return true };
        let Some((_, asked)) = account.in_flight.take() else { return true };
        let removing = account.removing;
        match status {
            200..=299 => self.registered(id, asked, headers, now),
            401 | 407 if self.answer_challenge(ua, id, status == 407, headers, now) => {}
            423 => {
                let min = message::header_values(headers, "Min-Expires", "Min-Expires")
                    .first()
                    .and_then(|v| v.trim().parse::<u32>().ok());
                match min.filter(|min| *min > asked && !removing) {
                    Some(min) => {
                        if let Some(account) = self.accounts.get_mut(&id) {
                            account.expires = min;
                        }
                        self.send(ua, id, now);
                    }
                    None => self.failed(id, status, reason, headers, now),
                }
            }
            _ => self.failed(id, status, reason, headers, now),
        }
        true
    }

    /// Starts a new attempt: the first REGISTER, a refresh, a retry or the
    /// un-REGISTER. Challenges answered in earlier attempts may be answered
    /// again (their nonce may have expired without `stale` being said).
    fn start_attempt(&mut self, ua: &mut UserAgent, id: AccountId, now: Instant) {
        if let Some(account) = self.accounts.get_mut(&id) {
            account.wake = None;
            account.answered.clear();
        }
        self.send(ua, id, now);
    }

    fn send(&mut self, ua: &mut UserAgent, id: AccountId, now: Instant) {
        let Some(account) = self.accounts.get_mut(&id) else { return };
        account.cseq += 1;
        let expires = if account.removing { 0 } else { account.expires };
        let config = &account.config;
        let mut headers = vec![
            Header::Contact(rsip::headers::Contact::new(config.contact.clone())),
            Header::Expires(rsip::headers::Expires::new(expires.to_string())),
        ];
        for known in &mut account.challenges {
            known.nc += 1;
            let ha1 = config.secret.ha1(&config.username, &known.challenge);
            let answer = known.challenge.answer_with_ha1(
                &config.username,
                &ha1,
                "REGISTER",
                &config.registrar,
                &known.cnonce,
                known.nc,
            );
            headers.push(match known.proxy {
                true => Header::ProxyAuthorization(rsip::headers::ProxyAuthorization::new(answer)),
                false => Header::Authorization(rsip::headers::Authorization::new(answer)),
            });
        }
        let request = OutgoingRequest {
            method: Method::Register,
            uri: config.registrar.clone(),
            from: format!("<{}>;tag={}", config.aor, random_token()),
            to: format!("<{}>", config.aor),
            call_id: account.call_id.clone(),
            cseq: account.cseq,
            headers,
        };
        match ua.send_request(request, config.servers[account.server], now) {
            Ok(key) => {
                if let Some((old, _)) = account.in_flight.replace((key, expires)) {
                    self.requests.remove(&old);
                }
                self.requests.insert(key, id);
            }
            // The URIs were checked when the account was added, so this
            // does not happen; were it to, the account retries later.
            Err(error) => self.failed(id, 400, &error.to_string(), &rsip::Headers::default(), now),
        }
    }

    /// Answers a 401/407 on the account's behalf; false when it cannot (no
    /// challenge its secret answers) or must not (our answer was refused).
    fn answer_challenge(
        &mut self,
        ua: &mut UserAgent,
        id: AccountId,
        proxy: bool,
        headers: &rsip::Headers,
        now: Instant,
    ) -> bool {
        let Some(account) = self.accounts.get_mut(&id) else { return false };
        let values = headers.iter().filter_map(|h| match h {
            Header::WwwAuthenticate(v) if !proxy => Some(v.value()),
            Header::ProxyAuthenticate(v) if proxy => Some(v.value()),
            _ => None,
        });
        let secret = &account.config.secret;
        let Some(challenge) = Challenge::choose_among(values, |algorithm| secret.answers(algorithm)) else {
            return false;
        };
        let realm = (proxy, challenge.realm.clone());
        let refused = account.answered.contains(&realm) && !challenge.stale;
        if refused || account.answered.len() >= MAX_CHALLENGES as usize {
            // The next attempt starts from a fresh challenge.
            account.challenges.clear();
            return false;
        }
        account.answered.push(realm);
        account.challenges.retain(|c| c.proxy != proxy || c.challenge.realm != challenge.realm);
        account.challenges.push(KnownChallenge { proxy, challenge, cnonce: random_token(), nc: 0 });
        self.send(ua, id, now);
        true
    }

    fn registered(&mut self, id: AccountId, asked: u32, headers: &rsip::Headers, now: Instant) {
        let Some(account) = self.accounts.get_mut(&id) else { return };
        if account.removing {
            return self.forget(id);
        }
        let granted = granted_expiry(headers, &account.config.contact).unwrap_or(asked);
        if granted == 0 {
            // Refreshing at once would flood the registrar; treat it as a failure.
            return self.failed(id, 200, "the registrar kept no binding", headers, now);
        }
        account.failures = 0;
        account.servers_tried = 0;
        account.wake = Some(now + refresh_after(granted));
        if account.registered.replace(granted) != Some(granted) {
            let state = RegistrationState::Registered { expires: granted };
            self.events.push_back(RegistrationEvent { account: id, state });
        }
    }

    fn failed(&mut self, id: AccountId, status: u16, reason: &str, headers: &rsip::Headers, now: Instant) {
        let Some(account) = self.accounts.get_mut(&id) else { return };
        if account.removing {
            return self.forget(id);
        }
        // RFC 3263 §4.3: no answer, no connection or 503 from one of the
        // registrar's servers, and the next is tried at once; the account
        // fails when every one has been, and the next round starts again
        // from the first.
        let servers = account.config.servers.len();
        if matches!(status, 408 | 503) && account.servers_tried + 1 < servers {
            account.servers_tried += 1;
            account.server = (account.server + 1) % servers;
            account.wake = Some(now);
            return;
        }
        (account.server, account.servers_tried) = (0, 0);
        account.failures += 1;
        account.registered = None;
        let mut delay = backoff(account.failures);
        // A registrar that names its own wait (503 with Retry-After) gets at least that.
        if let Some(seconds) = retry_after(headers) {
            delay = delay.max(Duration::from_secs(seconds as u64).min(MAX_RETRY));
        }
        account.wake = Some(now + delay);
        let state = RegistrationState::Failed { status, reason: reason.to_string() };
        self.events.push_back(RegistrationEvent { account: id, state });
    }

    fn forget(&mut self, id: AccountId) {
        if let Some(account) = self.accounts.remove(&id) {
            if let Some((key, _)) = account.in_flight {
                self.requests.remove(&key);
            }
            self.events.push_back(RegistrationEvent { account: id, state: RegistrationState::Unregistered });
        }
    }
}

/// When to refresh a registration granted for `expires` seconds: at half
/// its life, or 5 s before its end when that is sooner (under 10 s).
///
/// Half rather than just before the end: a refresh that gets no answer is
/// given up only after Timer F (32 s), and its retries must still land
/// before the binding lapses; at half, a registration rides out a registrar
/// outage of up to half its life, for one extra REGISTER per period.
pub fn refresh_after(expires: u32) -> Duration {
    let expires = Duration::from_secs(expires as u64);
    let half = expires / 2;
    let before_end = expires.saturating_sub(Duration::from_secs(5));
    half.min(before_end).max(Duration::from_secs(1))
}

/// The wait before retrying after the `failures`-th failure in a row:
/// [`FIRST_RETRY`] doubling up to [`MAX_RETRY`], less up to 20 % at random,
/// so accounts that failed together (a registrar restarting) do not all
/// come back in the same instant.
pub fn backoff(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    let base = FIRST_RETRY.saturating_mul(1 << doublings).min(MAX_RETRY);
    base.mul_f64(1.0 - rand::random::<f64>() * 0.2)
}

/// The expiry a 2xx grants our `contact`: its `expires` parameter there,
/// else the Expires header.
fn granted_expiry(headers: &rsip::Headers, contact: &str) -> Option<u32> {
    let ours = message::uri_parts(contact);
    let contacts = match message::contact_change(&message::header_values(headers, "Contact", "m")) {
        Some(ContactChange::Contacts(contacts)) => contacts,
        _ => Vec::new(),
    };
    let own = contacts.into_iter().find(|c| ours.is_some() && message::uri_parts(&c.uri) == ours);
    own.and_then(|c| c.expires).or_else(|| {
        headers.iter().find_map(|h| match h {
            Header::Expires(e) => e.value().trim().parse().ok(),
            _ => None,
        })
    })
}

/// The seconds of a Retry-After header (its comment and parameters aside).
fn retry_after(headers: &rsip::Headers) -> Option<u32> {
    let value = message::header_values(headers, "Retry-After", "Retry-After").into_iter().next()?;
    value.split([' ', ';', '(']).next()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::auth::{Authenticator, Verdict};
    use crate::sip::registrar::{self, RegisterError, Registrar, Registration};
    use crate::sip::ua::RegisterRequest;
    use crate::sip::{TimerConfig, UaConfig, UaEvent};
    use std::net::SocketAddr;

    const LATENCY: Duration = Duration::from_millis(10);
    const REALM: &str = "example.com";

    /// How the simulated registrar answers one REGISTER: status, bindings, headers.
    type Answer = (u16, Vec<(String, u32)>, Vec<(&'static str, String)>);
    /// Overrides the registrar's answer to a REGISTER when it returns one.
    type Responder = Box<dyn FnMut(&RegisterRequest) -> Option<Answer>>;

    /// Our agent and client against a registrar made of another agent, the
    /// built-in location service and authenticator, on a simulated clock and
    /// network; `answer` may override the registrar's answers.
    struct Net {
        now: Instant,
        ua: UserAgent,
        client: RegistrationClient,
        server: UserAgent,
        auth: Authenticator,
        registrar: Registrar,
        flight: Vec<(Instant, SocketAddr, Vec<u8>)>,
        /// Whether a datagram (as text) is lost.
        lose: Box<dyn FnMut(&str) -> bool>,
        answer: Responder,
        /// Every REGISTER the client sent, with when.
        sent: Vec<(Instant, String)>,
        events: Vec<(Instant, RegistrationEvent)>,
    }

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn agent(port: u16) -> UserAgent {
        UserAgent::new(UaConfig { advertised: addr(port), tls_port: None, timers: TimerConfig::default() })
    }

    fn account(password: &str, expires: u32) -> AccountConfig {
        AccountConfig {
            aor: format!("sip:alice@{REALM}"),
            registrar: format!("sip:{REALM}"),
            servers: vec![Peer::udp(addr(5390))],
            username: "alice".into(),
            secret: Secret::Password(password.into()),
            expires,
            contact: "<sip:alice@127.0.0.1:5391>".into(),
        }
    }

    impl Net {
        fn new() -> Self {
            let now = Instant::now();
            let mut auth = Authenticator::new(REALM, true, now);
            auth.add_user("alice", "secret");
            Self {
                now,
                ua: agent(5391),
                client: RegistrationClient::default(),
                server: agent(5390),
                auth,
                registrar: Registrar::default(),
                flight: Vec::new(),
                lose: Box::new(|_| false),
                answer: Box::new(|_| None),
                sent: Vec::new(),
                events: Vec::new(),
            }
        }

        fn add(&mut self, config: AccountConfig) -> AccountId {
            let id = self.client.add(&mut self.ua, config, self.now).unwrap();
            self.pump();
            id
        }

        /// What the built-in registrar answers: authenticate, then bind.
        fn registrar_answer(&mut self, register: RegisterRequest) -> Answer {
            let verdict =
                self.auth.check(self.now, register.source.addr.ip(), "REGISTER", register.authorization.as_deref());
            match verdict {
                Verdict::Accept { user } if user == register.user => {
                    let RegisterRequest { user, change, expires, call_id, cseq, source, .. } = register;
                    let registration = Registration { user: &user, change, expires, call_id: &call_id, cseq, source };
                    match self.registrar.register(self.now, registration) {
                        Ok(bindings) => (200, bindings, Vec::new()),
                        Err(RegisterError::IntervalTooBrief) => {
                            (423, Vec::new(), vec![("Min-Expires", registrar::MIN_EXPIRES.to_string())])
                        }
                        Err(error) => (error.status(), Vec::new(), Vec::new()),
                    }
                }
                Verdict::Challenge(values) => {
                    (401, Vec::new(), values.into_iter().map(|v| ("WWW-Authenticate", v)).collect())
                }
                _ => (403, Vec::new(), Vec::new()),
            }
        }

        /// Moves datagrams into the network and events where they go.
        fn pump(&mut self) {
            let now = self.now;
            loop {
                let mut progressed = false;
                for from_client in [true, false] {
                    let agent = if from_client { &mut self.ua } else { &mut self.server };
                    while let Some(t) = agent.poll_transmit() {
                        progressed = true;
                        let text = String::from_utf8_lossy(&t.data).to_string();
                        if from_client && text.starts_with("REGISTER") {
                            self.sent.push((now, text.clone()));
                        }
                        if !(self.lose)(&text) {
                            self.flight.push((now + LATENCY, t.destination.addr, t.data));
                        }
                    }
                }
                while let Some(event) = self.ua.poll_event() {
                    progressed = true;
                    if let UaEvent::RequestAnswered { key, status, reason, headers } = event {
                        assert!(self.client.handle_response(&mut self.ua, key, status, &reason, &headers, now));
                    }
                }
                while let Some(event) = self.server.poll_event() {
                    progressed = true;
                    if let UaEvent::Register(register) = event {
                        let key = register.key;
                        let (status, bindings, extra) = match (self.answer)(&register) {
                            Some(answer) => answer,
                            None => self.registrar_answer(register),
                        };
                        self.server.answer_register(key, status, &bindings, extra, now).unwrap();
                    }
                }
                while let Some(event) = self.client.poll_event() {
                    progressed = true;
                    self.events.push((now, event));
                }
                if !progressed {
                    return;
                }
            }
        }

        /// Runs the simulation until `end` (simulated time).
        fn run_until(&mut self, end: Instant) {
            loop {
                let next = [
                    self.flight.iter().map(|f| f.0).min(),
                    self.ua.poll_timeout(),
                    self.server.poll_timeout(),
                    self.client.poll_timeout(),
                ]
                .into_iter()
                .flatten()
                .min();
                let Some(at) = next.filter(|at| *at <= end) else {
                    self.now = self.now.max(end);
                    return;
                };
                self.now = self.now.max(at);
                let now = self.now;
                let (due, rest): (Vec<_>, Vec<_>) =
                    std::mem::take(&mut self.flight).into_iter().partition(|f| f.0 <= now);
                self.flight = rest;
                for (_, to, data) in due {
                    if to == addr(5390) {
                        self.server.handle_message(now, Peer::udp(addr(5391)), &data);
                    } else if to == addr(5391) {
                        self.ua.handle_message(now, Peer::udp(addr(5390)), &data);
                    }
                }
                self.ua.handle_timeout(now);
                self.server.handle_timeout(now);
                self.client.handle_timeout(&mut self.ua, now);
                self.pump();
            }
        }

        fn run_for(&mut self, duration: Duration) {
            self.run_until(self.now + duration);
        }

        fn states(&self) -> Vec<RegistrationState> {
            self.events.iter().map(|(_, e)| e.state.clone()).collect()
        }

        fn bound(&self) -> Vec<String> {
            self.registrar.lookup(self.now, "alice")
        }
    }

    fn header<'a>(message: &'a str, name: &str) -> Option<&'a str> {
        message.lines().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    fn failed(status: u16) -> impl Fn(&RegistrationState) -> bool {
        move |s| matches!(s, RegistrationState::Failed { status: got, .. } if *got == status)
    }

    #[test]
    fn registers_with_digest_and_refreshes_at_half_the_expiry_with_one_call_id() {
        let mut net = Net::new();
        let start = net.now;
        net.add(account("secret", 3600));
        net.run_for(Duration::from_secs(1));
        assert_eq!(net.states(), [RegistrationState::Registered { expires: 3600 }]);
        assert_eq!(net.bound(), ["sip:alice@127.0.0.1:5391"]);
        // Challenged once, answered once, with SHA-256 over the MD5 offered first.
        assert_eq!(net.sent.len(), 2);
        assert!(header(&net.sent[0].1, "Authorization").is_none());
        let answer = header(&net.sent[1].1, "Authorization").unwrap();
        assert!(answer.contains("algorithm=SHA-256") && answer.contains("nc=00000001"), "{answer}");
        assert!(net.sent[0].1.starts_with("REGISTER sip:example.com SIP/2.0"));
        assert_eq!(header(&net.sent[0].1, "Expires"), Some("3600"));

        // Nothing until half the expiry; then a refresh that carries the
        // known answer with the next nonce count. The nonce is 30 minutes
        // old by then, so the registrar calls it stale, and that is answered
        // again without any failure reported.
        net.run_until(start + Duration::from_secs(1799));
        assert_eq!(net.sent.len(), 2);
        net.run_until(start + Duration::from_secs(1802));
        assert_eq!(net.sent.len(), 4, "{:?}", net.sent);
        assert!(net.sent[2].0 >= start + Duration::from_secs(1800));
        assert!(header(&net.sent[2].1, "Authorization").unwrap().contains("nc=00000002"));
        assert_eq!(net.states(), [RegistrationState::Registered { expires: 3600 }]);

        net.run_until(start + Duration::from_secs(3603));
        assert_eq!(net.sent.len(), 6, "{:?}", net.sent);
        assert_eq!(net.states(), [RegistrationState::Registered { expires: 3600 }]);
        assert_eq!(net.bound(), ["sip:alice@127.0.0.1:5391"]);

        // §10.2: one Call-ID, CSeq up by one each time.
        let call_ids: Vec<_> = net.sent.iter().map(|(_, m)| header(m, "Call-ID").unwrap()).collect();
        assert!(call_ids.windows(2).all(|w| w[0] == w[1]), "{call_ids:?}");
        let cseqs: Vec<_> = net.sent.iter().map(|(_, m)| header(m, "CSeq").unwrap()).collect();
        assert_eq!(cseqs, ["1 REGISTER", "2 REGISTER", "3 REGISTER", "4 REGISTER", "5 REGISTER", "6 REGISTER"]);
    }

    #[test]
    fn the_expiry_the_registrar_grants_sets_the_refresh() {
        let mut net = Net::new();
        let start = net.now;
        // A registrar that grants 120 s of the 3600 asked, in our Contact
        // (another phone's binding listed first).
        net.answer = Box::new(|register| {
            let bindings = vec![("sip:alice@10.0.0.9".into(), 3000), ("sip:alice@127.0.0.1:5391".into(), 120)];
            Some((200, bindings, vec![("Expires", "3000".into())])).filter(|_| register.expires != Some(0))
        });
        net.add(account("secret", 3600));
        net.run_for(Duration::from_secs(1));
        assert_eq!(net.states(), [RegistrationState::Registered { expires: 120 }]);
        net.run_until(start + Duration::from_secs(59));
        assert_eq!(net.sent.len(), 1);
        net.run_until(start + Duration::from_secs(61));
        assert_eq!(net.sent.len(), 2);
        assert!(net.sent[1].0 >= start + Duration::from_secs(60));
    }

    #[test]
    fn a_wrong_password_fails_after_one_answer_and_is_retried_with_backoff() {
        let mut net = Net::new();
        let start = net.now;
        net.add(account("wrong", 3600));
        net.run_for(Duration::from_secs(1));
        // REGISTER, 401, REGISTER with our answer, 401 again (not stale): failed.
        assert_eq!(net.sent.len(), 2);
        assert!(net.states().iter().all(failed(401)), "{:?}", net.states());
        assert_eq!(net.states().len(), 1);
        // Retried after 5 s, then 10 s, less up to 20 % of jitter, each
        // attempt starting from a fresh challenge. By 25 s the third try
        // (15 s at the latest) is over and the fourth (28 s at the earliest) not due.
        net.run_until(start + Duration::from_secs(25));
        let failures: Vec<Duration> = net.events.iter().map(|(at, _)| *at - start).collect();
        assert_eq!(failures.len(), 3, "{failures:?}");
        let gaps: Vec<Duration> = failures.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(gaps[0] >= Duration::from_secs(4) && gaps[0] <= Duration::from_millis(5100), "{gaps:?}");
        assert!(gaps[1] >= Duration::from_secs(8) && gaps[1] <= Duration::from_millis(10_100), "{gaps:?}");
        assert_eq!(net.sent.len(), 6);
        assert!(header(&net.sent[2].1, "Authorization").is_none());
        assert!(net.bound().is_empty());
    }

    #[test]
    fn lost_answers_time_out_as_408_and_back_off_until_the_registrar_is_back() {
        let mut net = Net::new();
        let start = net.now;
        let down = std::rc::Rc::new(std::cell::Cell::new(true));
        let registrar_down = down.clone();
        net.lose = Box::new(move |text| registrar_down.get() && text.starts_with("SIP/2.0"));
        net.add(account("secret", 3600));
        // Timer F: 64 × T1 after the REGISTER, with Timer E's retransmissions.
        net.run_until(start + Duration::from_millis(31_900));
        assert!(net.events.is_empty());
        net.run_until(start + Duration::from_millis(32_100));
        assert!(net.states().iter().all(failed(408)) && net.states().len() == 1, "{:?}", net.states());
        let retransmissions = net.sent.len();
        assert!(retransmissions >= 10, "{retransmissions}");
        // Retried 4–5 s later; that one times out too.
        net.run_until(start + Duration::from_secs(37) + Duration::from_millis(32_100));
        assert_eq!(net.states().len(), 2, "{:?}", net.states());
        let second = net.sent[retransmissions].0 - start;
        assert!(second >= Duration::from_secs(36) && second <= Duration::from_millis(37_100), "{second:?}");
        // The registrar comes back: the next retry (8–10 s on) registers.
        down.set(false);
        net.run_for(Duration::from_secs(11));
        assert_eq!(net.states().last(), Some(&RegistrationState::Registered { expires: 3600 }));
        assert_eq!(net.bound().len(), 1);
    }

    #[test]
    fn a_registrar_server_that_does_not_answer_is_skipped_for_the_next() {
        let mut net = Net::new();
        let start = net.now;
        // The first server (nothing there) never answers; the second is the registrar.
        let config =
            AccountConfig { servers: vec![Peer::udp(addr(5388)), Peer::udp(addr(5390))], ..account("secret", 3600) };
        net.add(config);
        net.run_until(start + Duration::from_millis(32_100));
        assert_eq!(net.states(), [RegistrationState::Registered { expires: 3600 }], "no failure reported");
        assert!(
            net.sent.iter().any(|(at, _)| *at < start + Duration::from_secs(1)),
            "the first server was tried first"
        );
        // Refreshes stay with the server that answered.
        let before = net.sent.len();
        net.run_until(start + Duration::from_secs(32 + 1802));
        assert!(net.sent.len() > before);
        assert_eq!(net.states(), [RegistrationState::Registered { expires: 3600 }]);
        // With both servers silent, one failure is reported per round.
        net.lose = Box::new(|text| text.starts_with("SIP/2.0"));
        net.run_for(Duration::from_secs(1800 + 65));
        assert_eq!(net.states().iter().filter(|s| failed(408)(s)).count(), 1, "{:?}", net.states());
    }

    #[test]
    fn interval_too_brief_is_asked_again_with_min_expires() {
        let mut net = Net::new();
        let start = net.now;
        net.add(account("secret", 30));
        net.run_for(Duration::from_secs(1));
        // 401, then 423 (60 s at least), then 200 for 60.
        let expires: Vec<_> = net.sent.iter().map(|(_, m)| header(m, "Expires").unwrap()).collect();
        assert_eq!(expires, ["30", "30", "60"]);
        assert_eq!(net.states(), [RegistrationState::Registered { expires: 60 }]);
        // Refreshed at 30 s, asking for 60 again; within the nonce's life
        // the answer sent up front is taken at once. (The 423's resend
        // used nonce count 2.)
        net.run_until(start + Duration::from_secs(31));
        assert_eq!(net.sent.len(), 4);
        assert_eq!(header(&net.sent[3].1, "Expires"), Some("60"));
        assert!(header(&net.sent[3].1, "Authorization").unwrap().contains("nc=00000003"));
        assert_eq!(net.states().len(), 1);
        // A 423 that does not raise the expiry is a failure, not a loop.
        net.answer = Box::new(|_| Some((423, Vec::new(), vec![("Min-Expires", "60".into())])));
        net.run_until(start + Duration::from_secs(62));
        assert!(failed(423)(net.states().last().unwrap()), "{:?}", net.states());
    }

    #[test]
    fn removal_sends_expires_zero_and_reports_unregistered() {
        let mut net = Net::new();
        let id = net.add(account("secret", 3600));
        net.run_for(Duration::from_secs(1));
        assert_eq!(net.bound().len(), 1);
        net.client.remove(&mut net.ua, id, net.now).unwrap();
        net.pump();
        net.run_for(Duration::from_secs(1));
        let last = &net.sent.last().unwrap().1;
        assert_eq!(header(last, "Expires"), Some("0"));
        assert!(header(last, "Authorization").is_some(), "the known challenge is answered up front");
        assert_eq!(net.states().last(), Some(&RegistrationState::Unregistered));
        assert!(net.bound().is_empty());
        assert_eq!(net.client.account_count(), 0);
        assert_eq!(net.client.poll_timeout(), None);
        assert!(net.client.remove(&mut net.ua, id, net.now).is_err());
        // An un-REGISTER nobody answers still ends with Unregistered.
        let id = net.add(account("secret", 3600));
        net.run_for(Duration::from_secs(1));
        net.lose = Box::new(|text| text.starts_with("SIP/2.0"));
        net.client.remove_all(&mut net.ua, net.now);
        net.pump();
        net.run_for(Duration::from_secs(33));
        assert_eq!(
            net.events.last().unwrap().1,
            RegistrationEvent { account: id, state: RegistrationState::Unregistered }
        );
        assert_eq!(net.client.account_count(), 0);
    }

    #[test]
    fn an_ha1_answers_only_challenges_of_its_algorithm() {
        let mut net = Net::new();
        let md5 = DigestAlgorithm::Md5.hash(&format!("alice:{REALM}:secret"));
        net.add(AccountConfig { secret: Secret::Ha1(md5), ..account("", 3600) });
        net.run_for(Duration::from_secs(1));
        assert_eq!(net.states(), [RegistrationState::Registered { expires: 3600 }]);
        assert!(header(&net.sent[1].1, "Authorization").unwrap().contains("algorithm=MD5"));
        // A SHA-256 hash against a registrar that offers only MD5: nothing to answer with.
        let mut net = Net::new();
        net.answer = Box::new(|register| {
            let md5_only = "Digest realm=\"example.com\", nonce=\"n\", qop=\"auth\", algorithm=MD5".to_string();
            register.authorization.is_none().then(|| (401, Vec::new(), vec![("WWW-Authenticate", md5_only)]))
        });
        let sha = DigestAlgorithm::Sha256.hash(&format!("alice:{REALM}:secret"));
        net.add(AccountConfig { secret: Secret::Ha1(sha), ..account("", 3600) });
        net.run_for(Duration::from_secs(1));
        assert_eq!(net.sent.len(), 1);
        assert!(failed(401)(&net.states()[0]));
    }

    #[test]
    fn retry_after_is_honoured_and_backoff_is_capped() {
        let mut net = Net::new();
        let start = net.now;
        net.answer = Box::new(|_| Some((503, Vec::new(), vec![("Retry-After", "120 (maintenance)".into())])));
        net.add(account("secret", 3600));
        net.run_until(start + Duration::from_secs(119));
        assert_eq!(net.sent.len(), 1);
        net.run_until(start + Duration::from_secs(121));
        assert_eq!(net.sent.len(), 2);
        assert!(failed(503)(&net.states()[0]));
        for failures in 1..40 {
            let wait = backoff(failures);
            let full = (FIRST_RETRY * 2u32.pow(failures.min(10) - 1)).min(MAX_RETRY);
            assert!(wait <= full && wait >= full.mul_f64(0.8), "{failures}: {wait:?}");
        }
        assert_eq!(refresh_after(3600), Duration::from_secs(1800));
        assert_eq!(refresh_after(8), Duration::from_secs(3));
        assert_eq!(refresh_after(1), Duration::from_secs(1));
    }
}
