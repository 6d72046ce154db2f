//! The user agent: transactions, dialogs and calls on top of them (RFC 3261
//! §8, §12–§17), as one sans-IO state machine.
//!
//! Drive it like quinn-proto's `Connection`: feed datagrams with
//! [`UserAgent::handle_datagram`] and expired timers with
//! [`UserAgent::handle_timeout`], issue commands ([`UserAgent::dial`],
//! [`UserAgent::answer`], [`UserAgent::hangup`], ...), and after each call
//! drain [`UserAgent::poll_transmit`] and [`UserAgent::poll_event`], then sleep
//! until [`UserAgent::poll_timeout`].

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rsip::headers::UntypedHeader;
use rsip::prelude::HeadersExt;
use rsip::{Header, Method, Request, Response, SipMessage};

use super::conference_info::{self, ConferenceInfo};
use super::digest::{Challenge, Credentials};
use super::message::{self, new_branch, random_token};
use super::registrar::ContactChange;
use super::transaction::{
    ClientTimeout, ClientTransaction, ResponseDisposition, ServerState, ServerTimeout, ServerTransaction, TimerConfig,
};
use super::{Peer, SipError, Transmit, Transport, ALLOWED_EVENTS, ALLOWED_METHODS, USER_AGENT};

/// Names one call (one dialog, or the attempt at one) for the life of the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CallKey(pub u64);

/// Why a call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    /// The peer sent BYE.
    RemoteHangup,
    /// This side hung up.
    LocalHangup,
    /// The caller sent CANCEL before the answer.
    Cancelled,
    /// The 2xx was never acknowledged (§13.3.1.4).
    AckTimeout,
    /// The caller stopped refreshing its session timer (RFC 4028): we sent BYE.
    SessionExpired,
    /// The peer stopped answering requests in the dialog (408, or 481 for a
    /// dialog it no longer knows, §12.2.1.2): we sent BYE.
    PeerGone,
}

/// What the agent tells its user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UaEvent {
    /// An INVITE outside any dialog. The user answers with `ring`, `answer` or `reject`.
    /// `authorization` is its Authorization header, for a user that checks
    /// callers (see [`UserAgent::challenge`]).
    IncomingCall {
        call: CallKey,
        request_uri: String,
        from: String,
        offer: Vec<u8>,
        source: Peer,
        authorization: Option<String>,
        /// The call this one takes the place of (a Replaces header, RFC
        /// 3891, as in an attended transfer): established, or early and
        /// ours; the user ends it once the new one is answered.
        replaces: Option<CallKey>,
    },
    /// The callee is ringing (180 or 183).
    Ringing { call: CallKey },
    /// The callee answered; `answer` is the SDP body of the 2xx.
    Answered { call: CallKey, answer: Vec<u8> },
    /// The ACK for our 2xx to an incoming call arrived; `answer` is its body,
    /// the SDP answer when the INVITE had no offer (RFC 3264 §4), else empty.
    Acknowledged { call: CallKey, answer: Vec<u8> },
    /// The INVITE failed with a final response, or timed out (408).
    Failed { call: CallKey, status: u16, reason: String },
    /// The peer sent a key press in a SIP INFO (application/dtmf-relay).
    Dtmf { call: CallKey, digit: char, duration_ms: u32 },
    /// An established or incoming call is over.
    Ended { call: CallKey, reason: EndReason },
    /// The final answer to a `ping` (OPTIONS): its status, 408 when none came.
    PingAnswered { key: RequestKey, status: u16 },
    /// A REGISTER: the user applies it to its location service and answers
    /// with `answer_register` (or `challenge_register`).
    Register(RegisterRequest),
    /// An in-dialog INVITE with a new offer (hold, resume, a new address).
    /// The user answers with `answer_reoffer` or refuses with `reject_reoffer`,
    /// which leaves the session as it was.
    Reoffer { call: CallKey, offer: Vec<u8> },
    /// The peer answered our re-INVITE ([`UserAgent::reoffer`]): `answer` is
    /// the new session description.
    ReofferAnswered { call: CallKey, answer: Vec<u8> },
    /// The peer refused our re-INVITE; the session stays as it was.
    ReofferFailed { call: CallKey, status: u16 },
    /// The peer asks us to call `target` (REFER, RFC 3515). The user answers
    /// with [`UserAgent::accept_transfer`] (202, then progress by
    /// [`UserAgent::notify_transfer`]) or [`UserAgent::reject_transfer`].
    TransferRequested { call: CallKey, key: RequestKey, target: String },
    /// How a transfer we asked for ([`UserAgent::refer`]) goes: the status
    /// the REFER was refused with, or that of the call the peer makes (its
    /// NOTIFYs); `done` once it is over.
    TransferProgress { call: CallKey, status: u16, done: bool },
    /// The final response to a request sent with
    /// [`UserAgent::send_request`]: its status, reason phrase and headers;
    /// 408 with no headers when none came before Timer F.
    RequestAnswered { key: RequestKey, status: u16, reason: String, headers: rsip::Headers },
    /// A SUBSCRIBE to the conference event package (RFC 4575) of the room
    /// `request_uri` names; its package, interval and Accept are already
    /// checked. The user answers with [`UserAgent::accept_subscription`]
    /// and the room's roster, or [`UserAgent::reject_subscription`] (404
    /// for no such room, 401 with challenges, 403).
    Subscribe { key: RequestKey, request_uri: String, source: Peer, authorization: Option<String> },
}

/// The largest request sent over UDP when the path MTU is unknown (§18.1.1).
const UDP_REQUEST_LIMIT: usize = 1300;

/// The shortest session interval accepted (RFC 4028 §4: at least 90 s).
pub const MIN_SESSION_EXPIRES: u32 = 90;
/// The session interval our INVITEs ask for (RFC 4028's recommendation).
const OUR_SESSION_EXPIRES: u32 = 1800;

/// Subscription intervals (RFC 6665 §4.2.1.1): a SUBSCRIBE asking for less
/// (but not 0, which ends one) gets 423 with this as Min-Expires.
const MIN_SUBSCRIPTION_EXPIRES: u32 = 60;
/// The longest interval granted, and the one granted when a SUBSCRIBE
/// names none (RFC 4575's default), so a subscriber that vanishes is gone
/// within the hour.
const MAX_SUBSCRIPTION_EXPIRES: u32 = 3600;

/// Names a request waiting for the user's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RequestKey(u64);

/// A request outside any dialog that the user composes (a REGISTER of the
/// registration client); the agent adds Via, Max-Forwards and User-Agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutgoingRequest {
    pub method: Method,
    pub uri: String,
    /// The From header's value, with its tag.
    pub from: String,
    pub to: String,
    pub call_id: String,
    pub cseq: u32,
    /// Further headers (Contact, Expires, Authorization, ...).
    pub headers: Vec<Header>,
}

/// What a REGISTER asks (RFC 3261 §10.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegisterRequest {
    pub key: RequestKey,
    /// The user part of the address of record (the To URI).
    pub user: String,
    pub change: ContactChange,
    /// The Expires header, for contacts without their own.
    pub expires: Option<u32>,
    pub call_id: String,
    pub cseq: u32,
    pub source: Peer,
    pub authorization: Option<String>,
}

/// Settings of a user agent.
#[derive(Debug, Clone)]
pub struct UaConfig {
    /// The address that goes into Via and Contact: the public one when behind
    /// NAT. UDP and TCP listen on its port.
    pub advertised: SocketAddr,
    /// The port TLS listens on, when it does.
    pub tls_port: Option<u16>,
    pub timers: TimerConfig,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CallState {
    /// Inbound INVITE not answered yet.
    Incoming,
    /// Outbound INVITE sent, no provisional response yet.
    Calling,
    /// Outbound INVITE with a provisional response.
    Early,
    Confirmed,
}

#[derive(Debug)]
struct Call {
    state: CallState,
    call_id: String,
    local_tag: String,
    /// Our party (From in requests we send, To in requests we receive), with our tag.
    local_party: String,
    /// The peer's party, with its tag once known.
    remote_party: String,
    remote_target: String,
    route_set: Vec<String>,
    destination: Peer,
    local_cseq: u32,
    remote_cseq: u32,
    /// The INVITE transaction of the call (server for inbound, client for outbound).
    invite_tx: TxId,
    /// Inbound: the INVITE (to build responses). Outbound: the INVITE sent (for CANCEL and ACK).
    invite: Request,
    /// Outbound: the ACK sent for the 2xx, sent again for each 2xx retransmission.
    ack: Option<Vec<u8>>,
    /// The session description we gave, for answering re-INVITEs.
    local_sdp: Vec<u8>,
    /// A re-INVITE or UPDATE with an offer that the user has not answered
    /// yet, and its transaction.
    pending_reoffer: Option<(TxId, Request)>,
    /// Inbound: the session timer the caller asked for and refreshes
    /// (RFC 4028, refresher=uac), and when we give up on it.
    session_interval: Option<u32>,
    session_deadline: Option<Instant>,
    /// Outbound: what to answer 401/407 challenges with, and how many
    /// challenges were answered (a second one means a wrong password,
    /// unless it only says the nonce went stale).
    credentials: Option<Credentials>,
    challenges_answered: u8,
    /// Outbound: the app hung up before the answer. A CANCEL goes out once a
    /// provisional response allows it (§9.1); an answer that comes anyway is
    /// ACKed and ended with BYE.
    hangup_requested: bool,
    cancel_sent: bool,
    /// Inbound: the app hung up before our 2xx was ACKed; BYE goes out with the ACK.
    bye_after_ack: bool,
    ringing_reported: bool,
    /// Whether we sent the INVITE that made the dialog (we own its Call-ID,
    /// which sets how long to wait after glare, §14.1).
    we_called: bool,
    /// Our own re-INVITE: in flight, or waiting out glare.
    local_reoffer: Option<LocalReoffer>,
    /// When we refresh the session timer, as its refresher (RFC 4028).
    refresh_at: Option<Instant>,
    /// Whether the peer takes UPDATE (its Allow), the cheaper refresh.
    peer_allows_update: bool,
    /// The REFER of the peer's we accepted, by its CSeq (the `id` of the
    /// implicit subscription our NOTIFYs report to, RFC 3515 §2.4.6).
    transfer_subscription: Option<u32>,
    /// Outbound: the To tags of other branches' 2xx, whose dialogs we ended
    /// (§13.2.2.4); their retransmissions get an ACK, not another BYE.
    forked_tags: Vec<String>,
}

/// A re-INVITE of ours (§14.1).
#[derive(Debug)]
struct LocalReoffer {
    sdp: Vec<u8>,
    /// The request and its transaction, once sent.
    sent: Option<(TxId, Request)>,
    /// After a 491, when to send it again.
    retry_at: Option<Instant>,
    /// A session refresh with the offer we gave before: its answer changes
    /// nothing and is not reported.
    refresh: bool,
}

/// A request in a dialog that a 401/407 makes us send again with
/// credentials (§22.2), and how many challenges it met.
#[derive(Debug)]
struct Resendable {
    request: Request,
    destination: Peer,
    credentials: Credentials,
    call: Option<CallKey>,
    challenges: u8,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct TxId(u64);

/// Names one subscription to a room's conference events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct SubscriptionKey(u64);

/// A subscription to a room's conference events (RFC 6665 as notifier,
/// RFC 4575): a dialog of its own, which is not a call, so the user never
/// sees it as one.
#[derive(Debug)]
struct Subscription {
    room: String,
    call_id: String,
    local_tag: String,
    /// Our party (To of the SUBSCRIBE, with our tag), the From of our NOTIFYs.
    local_party: String,
    remote_party: String,
    remote_target: rsip::Uri,
    route_set: Vec<String>,
    destination: Peer,
    local_cseq: u32,
    remote_cseq: u32,
    /// Our Contact: the room's URI at our address.
    contact: String,
    /// The Event header's `id`, which our NOTIFYs repeat (RFC 6665 §8.2.1).
    event_id: Option<String>,
    expires_at: Instant,
    /// The wake-up filed in `subscription_timers` for it; others are stale.
    filed_at: Instant,
    /// The version of the last document sent (RFC 4575 §4.1).
    version: u32,
    /// Our NOTIFY still unanswered. One at a time, so documents arrive in
    /// order and a subscriber that is slow or losing packets is sent only
    /// the latest roster once it answers, not every change in between.
    in_flight: Option<TxId>,
    /// The roster changed while a NOTIFY was in flight.
    outdated: bool,
}

/// A room with subscriptions: its latest roster, which every NOTIFY
/// carries, and who subscribes.
#[derive(Debug)]
struct WatchedRoom {
    info: ConferenceInfo,
    subscriptions: BTreeSet<SubscriptionKey>,
}

/// From tag, Call-ID, CSeq number and method of a request.
type MergeKey = (String, String, u32, u8);

fn merge_key(request: &Request) -> Option<MergeKey> {
    let from_tag = message::from_tag(request).ok()??;
    let (cseq, method) = message::cseq(request).ok()?;
    Some((from_tag, message::call_id(request).ok()?, cseq, method as u8))
}

/// A transaction's Via branch and its method (rsip's `Method` is not `Hash`,
/// but it is a plain enum, so its discriminant stands in).
type BranchKey = (String, u8);

#[derive(Debug)]
enum Transaction {
    Client { tx: ClientTransaction, method: Method, call: Option<CallKey> },
    Server { tx: ServerTransaction, call: Option<CallKey> },
}

impl Transaction {
    fn poll_timeout(&self) -> Option<Instant> {
        match self {
            Transaction::Client { tx, .. } => tx.poll_timeout(),
            Transaction::Server { tx, .. } => tx.poll_timeout(),
        }
    }
}

/// The SIP user agent state machine. See the module docs for how to drive it.
#[derive(Debug)]
pub struct UserAgent {
    config: UaConfig,
    transactions: HashMap<TxId, Transaction>,
    /// (branch, method) -> transaction; ACK is filed under INVITE (§17.2.3).
    by_branch: HashMap<BranchKey, TxId>,
    /// The inverse of `by_branch`, to forget a transaction in O(1).
    branch_of: HashMap<TxId, BranchKey>,
    /// Live out-of-dialog server transactions by (From tag, Call-ID, CSeq), to
    /// spot a request that arrives twice on different branches (§8.2.2.2).
    merged: HashMap<MergeKey, TxId>,
    merge_key_of: HashMap<TxId, MergeKey>,
    calls: HashMap<CallKey, Call>,
    /// (Call-ID, local tag) -> call.
    dialogs: HashMap<(String, String), CallKey>,
    /// Instants at which some transaction wants `handle_timeout`. An entry that
    /// is not the transaction's current one in `scheduled` is stale and skipped.
    timers: BinaryHeap<Reverse<(Instant, TxId)>>,
    /// Each transaction's pending wake-up, so a timer is filed once, not on every step.
    scheduled: HashMap<TxId, Instant>,
    next_id: u64,
    transmits: VecDeque<Transmit>,
    events: VecDeque<UaEvent>,
    /// REGISTERs waiting for the user's answer, by their server transaction.
    registers: HashMap<TxId, Request>,
    /// Instants at which some call has something due: its session-timer
    /// deadline or refresh, or a re-INVITE to send again after glare. An
    /// entry with nothing due when it fires is stale and skipped.
    call_timers: BinaryHeap<Reverse<(Instant, CallKey)>>,
    /// In-dialog requests sent with credentials to answer challenges with.
    resendable: HashMap<TxId, Resendable>,
    /// Session refreshes sent as UPDATE, by their transaction.
    refreshes: HashMap<TxId, CallKey>,
    /// Our REFERs waiting for their answer.
    refers: HashMap<TxId, CallKey>,
    /// The peers' REFERs waiting for the user's answer.
    transfer_requests: HashMap<TxId, (CallKey, Request)>,
    /// OPTIONS pings waiting for their final answer.
    pings: HashSet<TxId>,
    /// Requests of `send_request` waiting for their final answer.
    requests: HashSet<TxId>,
    /// SUBSCRIBEs waiting for the user's answer: where each came from, and
    /// the interval it will be granted.
    subscribe_requests: HashMap<TxId, (Peer, u32, Request)>,
    subscriptions: HashMap<SubscriptionKey, Subscription>,
    /// (Call-ID, local tag) -> subscription, beside `dialogs` for calls.
    subscription_dialogs: HashMap<(String, String), SubscriptionKey>,
    watched_rooms: HashMap<String, WatchedRoom>,
    /// When subscriptions expire, in the manner of `call_timers`.
    subscription_timers: BinaryHeap<Reverse<(Instant, SubscriptionKey)>>,
    /// Our NOTIFYs of subscriptions waiting for their answer.
    notifies: HashMap<TxId, SubscriptionKey>,
}

impl UserAgent {
    pub fn new(config: UaConfig) -> Self {
        Self {
            config,
            transactions: HashMap::new(),
            by_branch: HashMap::new(),
            branch_of: HashMap::new(),
            merged: HashMap::new(),
            merge_key_of: HashMap::new(),
            calls: HashMap::new(),
            dialogs: HashMap::new(),
            timers: BinaryHeap::new(),
            scheduled: HashMap::new(),
            next_id: 1,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            registers: HashMap::new(),
            call_timers: BinaryHeap::new(),
            resendable: HashMap::new(),
            refreshes: HashMap::new(),
            refers: HashMap::new(),
            transfer_requests: HashMap::new(),
            pings: HashSet::new(),
            requests: HashSet::new(),
            subscribe_requests: HashMap::new(),
            subscriptions: HashMap::new(),
            subscription_dialogs: HashMap::new(),
            watched_rooms: HashMap::new(),
            subscription_timers: BinaryHeap::new(),
            notifies: HashMap::new(),
        }
    }

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<UaEvent> {
        self.events.pop_front()
    }

    /// When [`UserAgent::handle_timeout`] must next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let transactions = self.timers.peek().map(|Reverse((at, _))| *at);
        let sessions = self.call_timers.peek().map(|Reverse((at, _))| *at);
        let subscriptions = self.subscription_timers.peek().map(|Reverse((at, _))| *at);
        transactions.into_iter().chain(sessions).chain(subscriptions).min()
    }

    /// Number of live calls (any state).
    pub fn call_count(&self) -> usize {
        self.calls.len()
    }

    /// Number of live subscriptions to `room`'s conference events.
    pub fn subscription_count(&self, room: &str) -> usize {
        self.watched_rooms.get(room).map_or(0, |r| r.subscriptions.len())
    }

    /// Number of live transactions, for tests and statistics.
    pub fn transaction_count(&self) -> usize {
        self.transactions.len()
    }

    /// Number of filed timer wake-ups, stale ones included, for tests.
    pub fn filed_timer_count(&self) -> usize {
        self.timers.len()
    }

    fn next_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// Our host and port as `transport` reaches us (Via sent-by, Contact).
    fn advertised_host(&self, transport: Transport) -> String {
        let port = match transport {
            Transport::Tls => self.config.tls_port.unwrap_or(5061),
            Transport::Udp | Transport::Tcp => self.config.advertised.port(),
        };
        SocketAddr::new(self.config.advertised.ip(), port).to_string()
    }

    /// The top Via of a request we send on `transport`, with a new branch.
    fn via(&self, transport: Transport) -> Header {
        let sent_by = self.advertised_host(transport);
        Header::Via(rsip::headers::Via::new(format!(
            "SIP/2.0/{} {sent_by};branch={};rport",
            transport.via_name(),
            new_branch()
        )))
    }

    /// Our Contact URI for `user` as reached on `transport`.
    fn contact(&self, user: &str, transport: Transport) -> String {
        let host = self.advertised_host(transport);
        match transport {
            Transport::Udp => format!("<sip:{user}@{host}>"),
            Transport::Tcp => format!("<sip:{user}@{host};transport=tcp>"),
            Transport::Tls => format!("<sips:{user}@{host}>"),
        }
    }

    // ----- input -----

    /// Feeds one message received from `source`: a UDP datagram, or a message
    /// framed off a TCP or TLS stream (see [`super::stream::StreamFramer`]).
    pub fn handle_message(&mut self, now: Instant, source: Peer, data: &[u8]) {
        if message::is_keepalive(data) {
            return;
        }
        match message::parse(data) {
            Ok(SipMessage::Request(request)) => self.handle_request(now, source, request),
            Ok(SipMessage::Response(response)) => {
                let reason = message::raw_reason_phrase(data).unwrap_or_default();
                self.handle_response(now, response, reason)
            }
            Err(error) => {
                tracing::warn!(source = %source.addr, %error, "dropping a SIP message that does not parse");
                let (code, reason) = if unknown_method(data) { (501, "Not Implemented") } else { (400, "Bad Request") };
                if let Some(response) = message::raw_error_response(data, code, reason) {
                    self.transmits.push_back(Transmit { destination: source, data: response });
                }
            }
        }
    }

    /// Fires every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.handle_call_timers(now);
        self.handle_subscription_timers(now);
        while let Some(Reverse((at, id))) = self.timers.peek().copied() {
            if at > now {
                break;
            }
            self.timers.pop();
            if self.scheduled.get(&id) != Some(&at) {
                continue;
            }
            self.scheduled.remove(&id);
            let mut out = Vec::new();
            let outcome = match self.transactions.get_mut(&id) {
                Some(Transaction::Client { tx, method, call }) if tx.poll_timeout().is_some_and(|t| t <= now) => {
                    tx.handle_timeout(now, &mut out).map(|t| (Some((t, *method)), None, *call))
                }
                Some(Transaction::Server { tx, call }) if tx.poll_timeout().is_some_and(|t| t <= now) => {
                    tx.handle_timeout(now, &mut out).map(|t| (None, Some(t), *call))
                }
                _ => None,
            };
            self.transmits.extend(out);
            self.after_transaction_step(id);
            self.resendable.remove(&id);
            match outcome {
                Some((Some((ClientTimeout::NoResponse, Method::Invite)), _, Some(call)))
                    if self.is_reoffer(call, id) =>
                {
                    self.reoffer_failed(call, 408, now);
                }
                Some((Some((ClientTimeout::NoResponse, Method::Invite)), _, Some(call))) => {
                    self.finish_outbound(call, 408, message::reason_phrase(408).into());
                }
                Some((Some((ClientTimeout::NoResponse, Method::Update)), _, None))
                    if self.refreshes.contains_key(&id) =>
                {
                    self.refresh_answered(id, 408, now);
                }
                Some((Some((ClientTimeout::NoResponse, Method::Refer)), _, None)) if self.refers.contains_key(&id) => {
                    if let Some(call) = self.refers.remove(&id) {
                        self.events.push_back(UaEvent::TransferProgress { call, status: 408, done: true });
                    }
                }
                Some((Some((ClientTimeout::NoResponse, Method::Notify)), _, None))
                    if self.notifies.contains_key(&id) =>
                {
                    self.notify_answered(id, 408, now);
                }
                Some((Some((ClientTimeout::NoResponse, Method::Options)), _, None)) if self.pings.remove(&id) => {
                    self.events.push_back(UaEvent::PingAnswered { key: RequestKey(id.0), status: 408 });
                }
                Some((Some((ClientTimeout::NoResponse, _)), _, None)) if self.requests.remove(&id) => {
                    self.events.push_back(UaEvent::RequestAnswered {
                        key: RequestKey(id.0),
                        status: 408,
                        reason: message::reason_phrase(408).into(),
                        headers: rsip::Headers::default(),
                    });
                }
                // §13.3.1.4: the session is confirmed but unacknowledged; end it with BYE.
                Some((_, Some(ServerTimeout::NoAck), Some(call)))
                    if self.calls.get(&call).is_some_and(|c| c.state == CallState::Confirmed && c.invite_tx == id) =>
                {
                    // Already reported when the app hung up and the BYE waited for this.
                    let reported = self.calls.get(&call).is_some_and(|c| c.bye_after_ack);
                    self.send_bye(call, now);
                    if !reported {
                        self.events.push_back(UaEvent::Ended { call, reason: EndReason::AckTimeout });
                    }
                }
                _ => {}
            }
        }
    }

    /// The connection to `peer` failed, or could not be opened: the client
    /// transactions waiting on it end as if answered 503 (§8.1.3.1), so a
    /// call to a peer that cannot be reached fails at once, not at Timer B.
    pub fn handle_transport_error(&mut self, peer: Peer) {
        let failed: Vec<(TxId, Method, Option<CallKey>)> = self
            .transactions
            .iter_mut()
            .filter_map(|(id, transaction)| match transaction {
                Transaction::Client { tx, method, call } if tx.destination() == peer && !tx.is_terminated() => {
                    tx.handle_transport_error();
                    Some((*id, *method, *call))
                }
                _ => None,
            })
            .collect();
        for (id, method, call) in failed {
            self.after_transaction_step(id);
            match (method, call) {
                (Method::Invite, Some(call)) => self.finish_outbound(call, 503, "Transport Failed".into()),
                (Method::Options, None) if self.pings.remove(&id) => {
                    self.events.push_back(UaEvent::PingAnswered { key: RequestKey(id.0), status: 503 })
                }
                // The subscriber cannot be reached (RFC 6665 §4.2.2).
                (Method::Notify, None) => {
                    if let Some(key) = self.notifies.remove(&id) {
                        self.forget_subscription(key);
                    }
                }
                // A REGISTER of the registration client, which may try another server.
                (_, None) if self.requests.remove(&id) => self.events.push_back(UaEvent::RequestAnswered {
                    key: RequestKey(id.0),
                    status: 503,
                    reason: "Transport Failed".into(),
                    headers: rsip::Headers::default(),
                }),
                _ => {}
            }
        }
    }

    fn file_transaction(&mut self, id: TxId, (branch, method): (String, Method)) {
        let key = (branch, method as u8);
        self.by_branch.insert(key.clone(), id);
        self.branch_of.insert(id, key);
    }

    /// Re-files a transaction's next timer, or forgets it once terminated.
    fn after_transaction_step(&mut self, id: TxId) {
        let Some(transaction) = self.transactions.get(&id) else { return };
        match transaction.poll_timeout() {
            Some(at) => {
                if self.scheduled.insert(id, at) != Some(at) {
                    self.timers.push(Reverse((at, id)));
                }
            }
            None => {
                self.scheduled.remove(&id);
                let terminated = match transaction {
                    Transaction::Client { tx, .. } => tx.is_terminated(),
                    Transaction::Server { tx, .. } => tx.is_terminated(),
                };
                if terminated {
                    self.transactions.remove(&id);
                    if let Some(key) = self.branch_of.remove(&id) {
                        self.by_branch.remove(&key);
                    }
                    if let Some(key) = self.merge_key_of.remove(&id) {
                        self.merged.remove(&key);
                    }
                }
            }
        }
    }

    fn handle_request(&mut self, now: Instant, source: Peer, mut request: Request) {
        message::stamp_top_via(&mut request.headers, source.addr);
        let (branch, (_, cseq_method)) = match (message::top_branch(&request.headers), message::cseq(&request)) {
            (Ok(b), Ok(c)) => (b, c),
            (Err(error), _) | (_, Err(error)) => {
                tracing::warn!(source = %source.addr, %error, "bad request");
                return self.reply_stateless(&request, source, 400, None);
            }
        };
        if message::call_id(&request).is_err()
            || message::from_tag(&request).is_err()
            || message::to_tag(&request).is_err()
        {
            return self.reply_stateless(&request, source, 400, None);
        }
        if cseq_method != request.method && request.method != Method::Ack && request.method != Method::Cancel {
            return self.reply_stateless(&request, source, 400, None);
        }
        match request.method {
            Method::Ack => return self.handle_ack(now, &branch, &request),
            Method::Cancel => return self.handle_cancel(now, source, &branch, &request),
            _ => {}
        }
        // A retransmission of a request that already has a transaction.
        if let Some(id) = self.by_branch.get(&(branch.clone(), request.method as u8)).copied() {
            if let Some(Transaction::Server { tx, .. }) = self.transactions.get(&id) {
                let mut out = Vec::new();
                tx.handle_retransmission(&mut out);
                self.transmits.extend(out);
            }
            return;
        }
        if message::max_forwards(&request.headers) == Some(0) {
            return self.reply_stateless(&request, source, 483, None);
        }
        let id = TxId(self.next_id());
        let invite = request.method == Method::Invite;
        let tx = ServerTransaction::new(invite, source, self.config.timers);
        self.transactions.insert(id, Transaction::Server { tx, call: None });
        self.file_transaction(id, (branch, request.method));

        match message::to_tag(&request) {
            Ok(Some(tag)) => self.handle_in_dialog(now, id, tag, request),
            _ => {
                // §8.2.2.2: the same request (From tag, Call-ID, CSeq) on another
                // branch is a copy that reached us by a second path (a forking
                // proxy, a loop): answer it 482, not with a second call.
                let key = merge_key(&request);
                if key.as_ref().is_some_and(|k| self.merged.contains_key(k)) {
                    return self.respond(id, &request, 482, None, Vec::new(), now);
                }
                if let Some(key) = key {
                    self.merged.insert(key.clone(), id);
                    self.merge_key_of.insert(id, key);
                }
                self.handle_out_of_dialog(now, id, source, request)
            }
        }
    }

    /// The call a Replaces header names, or the status to refuse the INVITE
    /// with (RFC 3891 §3): its to-tag is our tag, its from-tag the peer's.
    /// A dialog we have not answered yet is not ours to replace (481), nor
    /// an established one when only early ones may be (486).
    fn replaceable(&self, wanted: &message::Replaces) -> Result<CallKey, u16> {
        let call = self.dialogs.get(&(wanted.call_id.clone(), wanted.to_tag.clone())).copied().ok_or(481u16)?;
        let entry = self.calls.get(&call).ok_or(481u16)?;
        if message::tag_param(&entry.remote_party) != Some(wanted.from_tag.as_str()) {
            return Err(481);
        }
        let awaiting_ack = matches!(
            self.transactions.get(&entry.invite_tx),
            Some(Transaction::Server { tx, .. }) if tx.state() == ServerState::Accepted
        );
        match entry.state {
            // Not established until our 2xx is ACKed.
            CallState::Incoming | CallState::Calling => Err(481),
            CallState::Confirmed if awaiting_ack => Err(481),
            CallState::Confirmed if wanted.early_only => Err(486),
            CallState::Early | CallState::Confirmed => Ok(call),
        }
    }

    fn handle_out_of_dialog(&mut self, now: Instant, id: TxId, source: Peer, request: Request) {
        match request.method {
            Method::Invite => {
                // RFC 4028: a caller that supports session timers refreshes
                // the session; too short an interval gets 422 and Min-SE.
                let session_expires = message::session_expires(&request.headers);
                if session_expires.is_some_and(|se| se < MIN_SESSION_EXPIRES) {
                    let min_se = Header::Other("Min-SE".into(), MIN_SESSION_EXPIRES.to_string());
                    return self.respond_with_headers(id, &request, 422, now, vec![min_se]);
                }
                let session_interval = session_expires.filter(|_| message::supports(&request.headers, "timer"));
                let replaces = match message::replaces(&request.headers).map(|r| r.map_err(|()| 400)) {
                    None => None,
                    Some(wanted) => match wanted.and_then(|wanted| self.replaceable(&wanted)) {
                        Ok(call) => Some(call),
                        Err(status) => return self.respond(id, &request, status, None, Vec::new(), now),
                    },
                };
                // At once, though the answer usually follows at once too: a
                // UDP caller stops sending the INVITE again on a 100, so a
                // lost 200 draws no extra copies. Sent only after 200 ms
                // (§17.2.1), sipp's calls at 20 % loss ended by our ACK
                // timeout in about half the runs of ten, against one in eight.
                self.respond(id, &request, 100, None, Vec::new(), now);
                let call = CallKey(self.next_id());
                let local_tag = random_token();
                let to = request.to_header().map(|h| h.value().to_string()).unwrap_or_default();
                let from = request.from_header().map(|h| h.value().to_string()).unwrap_or_default();
                let remote_target = message::contact_uri(&request).map(|u| u.to_string());
                let mut route_set = message::record_routes(&request.headers);
                let destination = dialog_destination(source, remote_target.as_deref(), &route_set);
                route_set.shrink_to_fit();
                let entry = Call {
                    state: CallState::Incoming,
                    call_id: message::call_id(&request).unwrap_or_default(),
                    local_party: format!("{to};tag={local_tag}"),
                    local_tag,
                    remote_party: from.clone(),
                    remote_target: remote_target.unwrap_or_else(|| request.uri.to_string()),
                    route_set,
                    destination,
                    local_cseq: rand::random::<u16>() as u32,
                    remote_cseq: message::cseq(&request).map(|c| c.0).unwrap_or(0),
                    invite_tx: id,
                    invite: request.clone(),
                    ack: None,
                    local_sdp: Vec::new(),
                    pending_reoffer: None,
                    session_interval,
                    session_deadline: None,
                    credentials: None,
                    challenges_answered: 0,
                    hangup_requested: false,
                    cancel_sent: false,
                    bye_after_ack: false,
                    ringing_reported: false,
                    we_called: false,
                    local_reoffer: None,
                    refresh_at: None,
                    peer_allows_update: message::allows(&request.headers, "UPDATE"),
                    transfer_subscription: None,
                    forked_tags: Vec::new(),
                };
                self.dialogs.insert((entry.call_id.clone(), entry.local_tag.clone()), call);
                self.calls.insert(call, entry);
                if let Some(Transaction::Server { call: c, .. }) = self.transactions.get_mut(&id) {
                    *c = Some(call);
                }
                let from_uri = request.from_header().ok().and_then(|f| f.uri().ok()).map(|u| u.to_string());
                let authorization = request.headers.iter().find_map(|h| match h {
                    Header::Authorization(a) => Some(a.value().to_string()),
                    _ => None,
                });
                self.events.push_back(UaEvent::IncomingCall {
                    authorization,
                    call,
                    request_uri: request.uri.to_string(),
                    from: from_uri.unwrap_or(from),
                    offer: request.body.clone(),
                    source,
                    replaces,
                });
            }
            Method::Options => self.respond_with_capabilities(id, &request, now),
            Method::Bye => self.respond(id, &request, 481, None, Vec::new(), now),
            Method::Register => self.handle_register(now, id, source, request),
            Method::Subscribe => self.handle_subscribe(now, id, source, request),
            _ => self.respond_not_allowed(id, &request, now),
        }
    }

    fn handle_register(&mut self, now: Instant, id: TxId, source: Peer, request: Request) {
        let user = request.to_header().ok().and_then(|t| t.uri().ok()).and_then(|u| u.user().map(str::to_string));
        let contacts: Vec<String> = request
            .headers
            .iter()
            .filter_map(|h| match h {
                Header::Contact(c) => Some(c.value().to_string()),
                _ => None,
            })
            .collect();
        let (Some(user), Some(change)) = (user, message::contact_change(&contacts)) else {
            return self.respond(id, &request, 400, None, Vec::new(), now);
        };
        let expires = request.headers.iter().find_map(|h| match h {
            Header::Expires(e) => e.value().trim().parse().ok(),
            _ => None,
        });
        let authorization = request.headers.iter().find_map(|h| match h {
            Header::Authorization(a) => Some(a.value().to_string()),
            _ => None,
        });
        let register = RegisterRequest {
            key: RequestKey(id.0),
            user,
            change,
            expires,
            call_id: message::call_id(&request).unwrap_or_default(),
            cseq: message::cseq(&request).map(|c| c.0).unwrap_or(0),
            source,
            authorization,
        };
        self.registers.insert(id, request);
        self.events.push_back(UaEvent::Register(register));
    }

    /// Answers a REGISTER: 200 listing the user's current `bindings`
    /// (contact, seconds left), or another status with `extra` headers
    /// (WWW-Authenticate for 401, Min-Expires for 423).
    pub fn answer_register(
        &mut self,
        key: RequestKey,
        status: u16,
        bindings: &[(String, u32)],
        extra: Vec<(&'static str, String)>,
        now: Instant,
    ) -> Result<(), SipError> {
        let id = TxId(key.0);
        let request = self.registers.remove(&id).ok_or(SipError::UnknownCall)?;
        let mut headers: Vec<Header> = bindings
            .iter()
            .map(|(contact, seconds)| {
                let uri = if contact.starts_with('<') { contact.clone() } else { format!("<{contact}>") };
                Header::Contact(rsip::headers::Contact::new(format!("{uri};expires={seconds}")))
            })
            .collect();
        headers.extend(extra.into_iter().map(|(name, value)| match name {
            "WWW-Authenticate" => Header::WwwAuthenticate(rsip::headers::WwwAuthenticate::new(value)),
            _ => Header::Other(name.into(), value),
        }));
        self.respond_with_headers(id, &request, status, now, headers);
        Ok(())
    }

    fn handle_in_dialog(&mut self, now: Instant, id: TxId, to_tag: String, request: Request) {
        let call_id = message::call_id(&request).unwrap_or_default();
        let dialog = (call_id, to_tag);
        if let Some(subscription) = self.subscription_dialogs.get(&dialog).copied() {
            return self.handle_in_subscription(now, id, subscription, request);
        }
        let Some(call) = self.dialogs.get(&dialog).copied() else {
            return self.respond(id, &request, 481, None, Vec::new(), now);
        };
        let Some(entry) = self.calls.get_mut(&call) else {
            return self.respond(id, &request, 481, None, Vec::new(), now);
        };
        if !in_order(&mut entry.remote_cseq, &request) {
            return self.respond(id, &request, 500, None, Vec::new(), now);
        }
        match request.method {
            Method::Bye => {
                let (state, invite_tx) = (entry.state, entry.invite_tx);
                self.respond(id, &request, 200, None, Vec::new(), now);
                match state {
                    CallState::Confirmed => {
                        // A BYE implies the peer has the 2xx: stop sending it, even if its ACK was lost.
                        if let Some(Transaction::Server { tx, .. }) = self.transactions.get_mut(&invite_tx) {
                            tx.handle_ack(now);
                        }
                        self.after_transaction_step(invite_tx);
                        self.forget_call(call);
                        self.events.push_back(UaEvent::Ended { call, reason: EndReason::RemoteHangup });
                    }
                    // The caller ended the early dialog (§15): the INVITE ends with 487.
                    CallState::Incoming => {
                        self.reject(call, 487, now);
                        self.events.push_back(UaEvent::Ended { call, reason: EndReason::RemoteHangup });
                    }
                    // A callee may not BYE before its 2xx; end our INVITE cleanly
                    // with CANCEL, and report when its final response comes.
                    CallState::Calling | CallState::Early => {
                        if let Some(entry) = self.calls.get_mut(&call) {
                            entry.hangup_requested = true;
                        }
                        // In Calling, the CANCEL waits for a provisional response (§9.1).
                        if state == CallState::Early {
                            self.send_cancel(call, now);
                        }
                    }
                }
            }
            Method::Invite => {
                // A session refresh or re-offer: answer with the description we
                // already gave. Hold and codec change come with in-dialog
                // offer/answer support. Its ACK is matched by dialog, so the
                // call now points at this transaction.
                let previous_unacked = matches!(
                    self.transactions.get(&entry.invite_tx),
                    Some(Transaction::Server { tx, .. }) if tx.state() == ServerState::Accepted
                );
                if entry.local_reoffer.as_ref().is_some_and(|r| r.sent.is_some()) && !request.body.is_empty() {
                    // Glare: our own re-INVITE is in flight (§14.2).
                    return self.respond(id, &request, 491, None, Vec::new(), now);
                }
                if previous_unacked || entry.pending_reoffer.is_some() {
                    // §14.2: the last INVITE's 2xx is not ACKed yet; ask for a retry.
                    let seconds = (rand::random::<u8>() % 10 + 1).to_string();
                    let retry = Header::RetryAfter(rsip::headers::RetryAfter::new(seconds));
                    return self.respond_with_headers(id, &request, 500, now, vec![retry]);
                }
                let sdp = entry.local_sdp.clone();
                entry.invite_tx = id;
                if let Some(Transaction::Server { call: owner, .. }) = self.transactions.get_mut(&id) {
                    *owner = Some(call);
                }
                self.session_refreshed(call, now);
                if !request.body.is_empty() {
                    return self.offered(call, id, request);
                }
                // No offer (a session refresh): ours again, unchanged.
                let contact = self.contact_for(call);
                self.respond(id, &request, 200, contact, sdp, now);
            }
            // RFC 3311: a refresh, or an offer to answer like a re-INVITE's.
            Method::Update => {
                if entry.local_reoffer.as_ref().is_some_and(|r| r.sent.is_some()) && !request.body.is_empty() {
                    return self.respond(id, &request, 491, None, Vec::new(), now);
                }
                if entry.pending_reoffer.is_some() {
                    let seconds = (rand::random::<u8>() % 10 + 1).to_string();
                    let retry = Header::RetryAfter(rsip::headers::RetryAfter::new(seconds));
                    return self.respond_with_headers(id, &request, 500, now, vec![retry]);
                }
                // Owned by the call, so its 2xx restates the session timer.
                if let Some(Transaction::Server { call: owner, .. }) = self.transactions.get_mut(&id) {
                    *owner = Some(call);
                }
                self.session_refreshed(call, now);
                if request.body.is_empty() {
                    let contact = self.contact_for(call);
                    self.respond(id, &request, 200, contact, Vec::new(), now);
                } else {
                    self.offered(call, id, request);
                }
            }
            Method::Info => self.handle_info(id, call, &request, now),
            Method::Refer => self.handle_refer(id, call, request, now),
            Method::Notify => self.handle_notify(id, call, &request, now),
            Method::Options => self.respond_with_capabilities(id, &request, now),
            _ => self.respond_not_allowed(id, &request, now),
        }
    }

    /// Acts on what calls have due: ends those whose peer stopped
    /// refreshing the session timer, refreshes those we refresh, and sends
    /// re-INVITEs again after glare.
    fn handle_call_timers(&mut self, now: Instant) {
        while let Some(Reverse((at, call))) = self.call_timers.peek().copied() {
            if at > now {
                break;
            }
            self.call_timers.pop();
            let Some(entry) = self.calls.get_mut(&call) else { continue };
            let due = |t: Option<Instant>| t.is_some_and(|t| t <= now);
            if due(entry.session_deadline) {
                self.send_bye(call, now);
                self.events.push_back(UaEvent::Ended { call, reason: EndReason::SessionExpired });
                continue;
            }
            if let Some(reoffer) = entry.local_reoffer.as_mut().filter(|r| due(r.retry_at)) {
                reoffer.retry_at = None;
                self.send_reoffer(call, now);
            }
            if self.calls.get(&call).is_some_and(|c| due(c.refresh_at)) {
                self.refresh_session(call, now);
            }
        }
    }

    fn file_call_timer(&mut self, call: CallKey, at: Instant) {
        self.call_timers.push(Reverse((at, call)));
    }

    /// Hands an in-dialog offer (re-INVITE or UPDATE) to the user.
    fn offered(&mut self, call: CallKey, id: TxId, request: Request) {
        let offer = request.body.clone();
        if let Some(entry) = self.calls.get_mut(&call) {
            entry.pending_reoffer = Some((id, request));
            self.events.push_back(UaEvent::Reoffer { call, offer });
        }
    }

    /// A session refresh arrived (or the call was answered): the session
    /// timer, if any, starts again. BYE goes out min(32 s, interval / 3)
    /// before the session would expire (RFC 4028 §10).
    fn session_refreshed(&mut self, call: CallKey, now: Instant) {
        let Some(entry) = self.calls.get_mut(&call) else { return };
        let Some(interval) = entry.session_interval else { return };
        if entry.refresh_at.is_some() {
            // We refresh this session; a refresh from the peer is just early.
            return;
        }
        let deadline = now + Duration::from_secs((interval - (interval / 3).min(32)) as u64);
        entry.session_deadline = Some(deadline);
        self.file_call_timer(call, deadline);
    }

    /// A REFER in a dialog (RFC 3515): handed to the user, who accepts or refuses it.
    fn handle_refer(&mut self, id: TxId, call: CallKey, request: Request, now: Instant) {
        let targets = message::header_values(&request.headers, "Refer-To", "r");
        let target = match targets.as_slice() {
            [one] => one.trim().trim_start_matches('<').split('>').next().unwrap_or("").to_string(),
            // §2.4.1: exactly one Refer-To.
            _ => return self.respond(id, &request, 400, None, Vec::new(), now),
        };
        if message::uri_parts(&target).is_none() {
            return self.respond(id, &request, 400, None, Vec::new(), now);
        }
        self.transfer_requests.insert(id, (call, request));
        self.events.push_back(UaEvent::TransferRequested { call, key: RequestKey(id.0), target });
    }

    /// A NOTIFY in a dialog: the progress of a transfer we asked for, as a
    /// sipfrag of the status line of the peer's call (RFC 3515 §2.4.5).
    fn handle_notify(&mut self, id: TxId, call: CallKey, request: &Request, now: Instant) {
        let event = message::header_values(&request.headers, "Event", "o");
        if !event.iter().any(|e| e.split(';').next().is_some_and(|name| name.trim().eq_ignore_ascii_case("refer"))) {
            return self.respond(id, request, 489, None, Vec::new(), now);
        }
        let Some(status) = message::sipfrag_status(&request.body) else {
            return self.respond(id, request, 400, None, Vec::new(), now);
        };
        let terminated = message::header_values(&request.headers, "Subscription-State", "")
            .iter()
            .any(|state| state.trim().to_ascii_lowercase().starts_with("terminated"));
        self.respond(id, request, 200, None, Vec::new(), now);
        self.events.push_back(UaEvent::TransferProgress { call, status, done: terminated || status >= 200 });
    }

    /// INFO in a dialog: DTMF relayed in SIP (application/dtmf-relay, or
    /// application/dtmf) becomes a `Dtmf` event; an empty INFO is a keep-alive.
    fn handle_info(&mut self, id: TxId, call: CallKey, request: &Request, now: Instant) {
        let content_type = request.headers.iter().find_map(|h| match h {
            Header::ContentType(c) => Some(c.value().split(';').next().unwrap_or("").trim().to_ascii_lowercase()),
            _ => None,
        });
        let body = String::from_utf8_lossy(&request.body);
        let digit = match content_type.as_deref() {
            _ if request.body.is_empty() => None,
            Some("application/dtmf-relay") => message::dtmf_relay(&body),
            Some("application/dtmf") => message::dtmf_relay(&format!("Signal={}", body.trim())),
            _ => return self.respond(id, request, 415, None, Vec::new(), now),
        };
        self.respond(id, request, 200, None, Vec::new(), now);
        if let Some((digit, duration_ms)) = digit {
            self.events.push_back(UaEvent::Dtmf { call, digit, duration_ms });
        }
    }

    fn handle_ack(&mut self, now: Instant, branch: &str, request: &Request) {
        // ACK for a non-2xx: same branch as the INVITE (§17.2.3).
        if let Some(id) = self.by_branch.get(&(branch.to_string(), Method::Invite as u8)).copied() {
            if let Some(Transaction::Server { tx, .. }) = self.transactions.get_mut(&id) {
                if tx.state() == ServerState::Completed {
                    tx.handle_ack(now);
                    self.after_transaction_step(id);
                    return;
                }
            }
        }
        // ACK for a 2xx: its own transaction, matched by dialog.
        let key = (
            message::call_id(request).unwrap_or_default(),
            message::to_tag(request).ok().flatten().unwrap_or_default(),
        );
        let Some(call) = self.dialogs.get(&key).copied() else { return };
        let Some((id, bye_after_ack)) = self.calls.get(&call).map(|c| (c.invite_tx, c.bye_after_ack)) else { return };
        if let Some(Transaction::Server { tx, .. }) = self.transactions.get_mut(&id) {
            let first = tx.state() == ServerState::Accepted;
            tx.handle_ack(now);
            self.after_transaction_step(id);
            if first && !bye_after_ack {
                self.events.push_back(UaEvent::Acknowledged { call, answer: request.body.clone() });
                // A re-offer the user made before the ACK goes out now (§14.1).
                let waiting = self.calls.get(&call).and_then(|c| c.local_reoffer.as_ref());
                if waiting.is_some_and(|r| r.sent.is_none() && r.retry_at.is_none()) {
                    self.send_reoffer(call, now);
                }
            }
        }
        if bye_after_ack {
            self.send_bye(call, now);
        }
    }

    fn handle_cancel(&mut self, now: Instant, source: Peer, branch: &str, request: &Request) {
        let invite_tx = self.by_branch.get(&(branch.to_string(), Method::Invite as u8)).copied();
        // The CANCEL gets its own non-INVITE server transaction (§9.2).
        let cancel_key = (branch.to_string(), Method::Cancel);
        if let Some(id) = self.by_branch.get(&(cancel_key.0.clone(), Method::Cancel as u8)).copied() {
            if let Some(Transaction::Server { tx, .. }) = self.transactions.get(&id) {
                let mut out = Vec::new();
                tx.handle_retransmission(&mut out);
                self.transmits.extend(out);
            }
            return;
        }
        let id = TxId(self.next_id());
        let tx = ServerTransaction::new(false, source, self.config.timers);
        self.transactions.insert(id, Transaction::Server { tx, call: None });
        self.file_transaction(id, cancel_key);
        let pending = invite_tx.and_then(|invite_id| match self.transactions.get(&invite_id) {
            Some(Transaction::Server { tx, call: Some(call) }) => Some((tx.is_final(), *call)),
            _ => None,
        });
        match pending {
            None => self.respond(id, request, 481, None, Vec::new(), now),
            Some((answered, call)) => {
                self.respond(id, request, 200, None, Vec::new(), now);
                if !answered {
                    self.reject(call, 487, now);
                    self.events.push_back(UaEvent::Ended { call, reason: EndReason::Cancelled });
                }
            }
        }
    }

    fn handle_response(&mut self, now: Instant, response: Response, reason: String) {
        let (Ok(branch), Ok((_, method))) = (message::top_branch(&response.headers), message::cseq(&response)) else {
            return tracing::debug!("dropping a response without a usable Via branch or CSeq");
        };
        let status = response.status_code.code();
        let Some(id) = self.by_branch.get(&(branch, method as u8)).copied() else {
            // A 2xx retransmission after the client transaction ended: ACK it again (§13.2.2.4).
            if method == Method::Invite && (200..300).contains(&status) {
                self.resend_ack(&response, now);
            }
            return;
        };
        let Some(Transaction::Client { call, .. }) = self.transactions.get(&id) else { return };
        let call = *call;
        let reoffer = call.filter(|c| self.is_reoffer(*c, id));
        // The INVITE a non-2xx final response is ACKed after: ours of this transaction.
        let invite = call.and_then(|c| self.calls.get(&c)).map(|c| match (&c.local_reoffer, reoffer) {
            (Some(LocalReoffer { sent: Some((_, request)), .. }), Some(_)) => request.clone(),
            _ => c.invite.clone(),
        });
        let Some(Transaction::Client { tx, .. }) = self.transactions.get_mut(&id) else { return };
        let mut out = Vec::new();
        let disposition =
            tx.handle_response(status, || invite.map(|i| message::print(non_2xx_ack(&i, &response))), now, &mut out);
        self.transmits.extend(out);
        self.after_transaction_step(id);
        if disposition == ResponseDisposition::Deliver && status >= 200 {
            if (status == 401 || status == 407) && self.resend_with_credentials(id, &response, now) {
                return;
            }
            self.resendable.remove(&id);
        }
        if method == Method::Update && status >= 200 && self.refreshes.contains_key(&id) {
            return self.refresh_answered(id, status, now);
        }
        if method == Method::Refer && status >= 200 {
            // Accepted: its progress comes in NOTIFYs. Refused: that is the outcome.
            if let (Some(call), true) = (self.refers.remove(&id), status >= 300) {
                self.events.push_back(UaEvent::TransferProgress { call, status, done: true });
            }
            return;
        }
        if method == Method::Notify && status >= 200 && self.notifies.contains_key(&id) {
            return self.notify_answered(id, status, now);
        }
        if method == Method::Options && status >= 200 && self.pings.remove(&id) {
            self.events.push_back(UaEvent::PingAnswered { key: RequestKey(id.0), status });
        }
        if status >= 200 && self.requests.remove(&id) {
            let key = RequestKey(id.0);
            self.events.push_back(UaEvent::RequestAnswered { key, status, reason, headers: response.headers });
            return;
        }
        if disposition == ResponseDisposition::Absorb || method != Method::Invite {
            return;
        }
        if let Some(call) = reoffer {
            return self.on_reoffer_response(call, &response, now);
        }
        let Some(call) = call else { return };
        match status {
            100..=199 => self.on_provisional(call, &response, now),
            200..=299 => self.on_invite_success(call, &response, now),
            401 | 407 if self.answer_challenge(call, &response, now) => {}
            _ => self.finish_outbound(call, status, reason),
        }
    }

    /// Sends the INVITE again with credentials for the 401/407 `response`
    /// challenged it with; false when there is nothing to answer with (no
    /// credentials, no usable challenge, or a repeated challenge after
    /// ours, which means they were wrong).
    fn answer_challenge(&mut self, call: CallKey, response: &Response, now: Instant) -> bool {
        let Some(transport) = self.calls.get(&call).map(|c| c.destination.transport) else { return false };
        let via = self.via(transport);
        let Some(entry) = self.calls.get_mut(&call) else { return false };
        let Some(credentials) = entry.credentials.clone() else { return false };
        if entry.hangup_requested || entry.state == CallState::Confirmed {
            return false;
        }
        entry.local_cseq += 1;
        let Some((invite, stale)) = authorized(&entry.invite, response, &credentials, entry.local_cseq, via) else {
            return false;
        };
        if entry.challenges_answered > 0 && !stale || entry.challenges_answered >= 3 {
            return false;
        }
        entry.challenges_answered += 1;
        let destination = entry.destination;
        let Ok(id) = self.start_client_transaction(invite.clone(), destination, Some(call), now) else { return false };
        if let Some(entry) = self.calls.get_mut(&call) {
            entry.invite = invite;
            entry.invite_tx = id;
            entry.state = CallState::Calling;
        }
        true
    }

    /// Sends an in-dialog request again with credentials after a 401/407,
    /// once per challenge (a second one means the credentials are wrong,
    /// unless it only says the nonce went stale). False when the request
    /// cannot be answered for.
    fn resend_with_credentials(&mut self, id: TxId, response: &Response, now: Instant) -> bool {
        let Some(mut resend) = self.resendable.remove(&id) else { return false };
        let via = self.via(resend.destination.transport);
        let cseq = message::cseq(&resend.request).map(|c| c.0).unwrap_or(1) + 1;
        let Some((request, stale)) = authorized(&resend.request, response, &resend.credentials, cseq, via) else {
            return false;
        };
        if resend.challenges > 0 && !stale || resend.challenges >= 3 {
            return false;
        }
        if let Some(entry) = resend.call.and_then(|c| self.calls.get_mut(&c)) {
            entry.local_cseq = entry.local_cseq.max(cseq);
        }
        let Ok(new_id) = self.start_client_transaction(request.clone(), resend.destination, resend.call, now) else {
            return false;
        };
        // A re-INVITE follows its new transaction.
        if let Some(entry) = resend.call.and_then(|c| self.calls.get_mut(&c)) {
            if let Some(LocalReoffer { sent: Some((tx, sent)), .. }) = entry.local_reoffer.as_mut() {
                if *tx == id {
                    (*tx, *sent) = (new_id, request.clone());
                }
            }
        }
        if let Some(call) = self.refreshes.remove(&id) {
            self.refreshes.insert(new_id, call);
        }
        resend.challenges += 1;
        resend.request = request;
        self.resendable.insert(new_id, resend);
        true
    }

    /// Starts a client transaction for an in-dialog request of `call`,
    /// answering a challenge to it with the call's credentials, if it has any.
    fn send_in_dialog(&mut self, call: CallKey, request: Request, owned: bool, now: Instant) -> Option<TxId> {
        let entry = self.calls.get(&call)?;
        let (destination, credentials) = (entry.destination, entry.credentials.clone());
        let id = self.start_client_transaction(request.clone(), destination, owned.then_some(call), now).ok()?;
        if let Some(credentials) = credentials {
            let call = owned.then_some(call);
            self.resendable.insert(id, Resendable { request, destination, credentials, call, challenges: 0 });
        }
        Some(id)
    }

    fn is_reoffer(&self, call: CallKey, id: TxId) -> bool {
        self.calls
            .get(&call)
            .and_then(|c| c.local_reoffer.as_ref())
            .and_then(|r| r.sent.as_ref())
            .is_some_and(|(tx, _)| *tx == id)
    }

    /// Sends (again) the re-INVITE the call has waiting.
    fn send_reoffer(&mut self, call: CallKey, now: Instant) {
        let Some(transport) = self.calls.get(&call).map(|c| c.destination.transport) else { return };
        let via = self.via(transport);
        let contact = self.contact_for(call);
        let Some(entry) = self.calls.get_mut(&call) else { return };
        let Some(sdp) = entry.local_reoffer.as_ref().map(|r| r.sdp.clone()) else { return };
        entry.local_cseq += 1;
        let mut invite = in_dialog_request(entry, Method::Invite, entry.local_cseq, via);
        if let Some(contact) = contact {
            invite.headers.push(Header::Contact(rsip::headers::Contact::new(contact)));
        }
        if let Some(interval) = entry.session_interval.filter(|_| entry.refresh_at.is_some()) {
            invite.headers.push(Header::Other("Session-Expires".into(), format!("{interval};refresher=uac")));
            invite.headers.push(Header::Supported(rsip::headers::Supported::new("timer")));
        }
        invite.headers.push(Header::Allow(rsip::headers::Allow::new(ALLOWED_METHODS)));
        invite.headers.push(Header::ContentType(rsip::headers::ContentType::new("application/sdp")));
        invite.body = sdp;
        match self.send_in_dialog(call, invite.clone(), true, now) {
            Some(id) => {
                if let Some(reoffer) = self.calls.get_mut(&call).and_then(|c| c.local_reoffer.as_mut()) {
                    reoffer.sent = Some((id, invite));
                }
            }
            None => self.reoffer_failed(call, 500, now),
        }
    }

    fn on_reoffer_response(&mut self, call: CallKey, response: &Response, now: Instant) {
        let status = response.status_code.code();
        match status {
            100..=199 => {}
            200..=299 => {
                let Some(transport) = self.calls.get(&call).map(|c| c.destination.transport) else { return };
                let via = self.via(transport);
                let Some(entry) = self.calls.get_mut(&call) else { return };
                let Some(reoffer) = entry.local_reoffer.take() else { return };
                let cseq = message::cseq(response).map(|c| c.0).unwrap_or(entry.local_cseq);
                let ack = message::print(in_dialog_request(entry, Method::Ack, cseq, via));
                self.transmits.push_back(Transmit { destination: entry.destination, data: ack.clone() });
                entry.ack = Some(ack);
                entry.local_sdp = reoffer.sdp;
                if reoffer.refresh {
                    self.session_refresh_done(call, now);
                } else {
                    self.events.push_back(UaEvent::ReofferAnswered { call, answer: response.body.clone() });
                }
            }
            // Glare (§14.1): try again after a random wait, longer for the
            // side that owns the Call-ID, so the two sides do not collide again.
            491 => {
                let Some(entry) = self.calls.get_mut(&call) else { return };
                let millis =
                    if entry.we_called { rand::random_range(2100..=4000) } else { rand::random_range(0..=2000) };
                let at = now + Duration::from_millis(millis);
                if let Some(reoffer) = entry.local_reoffer.as_mut() {
                    (reoffer.sent, reoffer.retry_at) = (None, Some(at));
                }
                self.file_call_timer(call, at);
            }
            _ => self.reoffer_failed(call, status, now),
        }
    }

    /// Our re-INVITE failed: the session stays as it was, unless the peer is
    /// gone (408, 481), which ends the call (§14.1).
    fn reoffer_failed(&mut self, call: CallKey, status: u16, now: Instant) {
        let Some(reoffer) = self.calls.get_mut(&call).and_then(|c| c.local_reoffer.take()) else { return };
        if matches!(status, 408 | 481) {
            self.send_bye(call, now);
            self.events.push_back(UaEvent::Ended { call, reason: EndReason::PeerGone });
        } else if !reoffer.refresh {
            self.events.push_back(UaEvent::ReofferFailed { call, status });
        }
    }

    /// We refresh the session now (RFC 4028 §9): by UPDATE when the peer
    /// takes it, else by re-INVITE with the offer we gave before.
    fn refresh_session(&mut self, call: CallKey, now: Instant) {
        let Some(transport) = self.calls.get(&call).map(|c| c.destination.transport) else { return };
        let via = self.via(transport);
        let Some(entry) = self.calls.get_mut(&call) else { return };
        entry.refresh_at = None;
        if entry.local_reoffer.is_some() || entry.pending_reoffer.is_some() {
            // An offer exchange is under way; it refreshes the session itself.
            return self.session_refresh_done(call, now);
        }
        let interval = entry.session_interval.unwrap_or(MIN_SESSION_EXPIRES);
        if entry.peer_allows_update {
            entry.local_cseq += 1;
            let mut update = in_dialog_request(entry, Method::Update, entry.local_cseq, via);
            update.headers.push(Header::Other("Session-Expires".into(), format!("{interval};refresher=uac")));
            update.headers.push(Header::Supported(rsip::headers::Supported::new("timer")));
            if let Some(id) = self.send_in_dialog(call, update, false, now) {
                self.refreshes.insert(id, call);
            }
        } else {
            let sdp = entry.local_sdp.clone();
            entry.local_reoffer = Some(LocalReoffer { sdp, sent: None, retry_at: None, refresh: true });
            self.send_reoffer(call, now);
        }
    }

    fn refresh_answered(&mut self, id: TxId, status: u16, now: Instant) {
        let Some(call) = self.refreshes.remove(&id) else { return };
        match status {
            200..=299 => self.session_refresh_done(call, now),
            // The peer is gone: the session ends (RFC 4028 §10).
            408 | 481 => {
                self.send_bye(call, now);
                self.events.push_back(UaEvent::Ended { call, reason: EndReason::PeerGone });
            }
            // It cannot take UPDATE after all: re-INVITE from now on.
            405 | 501 => {
                if let Some(entry) = self.calls.get_mut(&call) {
                    entry.peer_allows_update = false;
                }
                self.refresh_session(call, now);
            }
            // Anything else: the session goes on; try again at the next half interval.
            _ => self.session_refresh_done(call, now),
        }
    }

    /// Files the next refresh, half an interval away.
    fn session_refresh_done(&mut self, call: CallKey, now: Instant) {
        let Some(entry) = self.calls.get_mut(&call) else { return };
        let Some(interval) = entry.session_interval else { return };
        let at = now + Duration::from_secs(interval as u64 / 2);
        entry.refresh_at = Some(at);
        self.file_call_timer(call, at);
    }

    fn on_provisional(&mut self, call: CallKey, response: &Response, now: Instant) {
        let Some(entry) = self.calls.get_mut(&call) else { return };
        if entry.state == CallState::Calling {
            entry.state = CallState::Early;
        }
        let status = response.status_code.code();
        if entry.hangup_requested {
            return self.send_cancel(call, now);
        }
        if (status == 180 || status == 183) && !entry.ringing_reported {
            entry.ringing_reported = true;
            self.events.push_back(UaEvent::Ringing { call });
        }
    }

    fn on_invite_success(&mut self, call: CallKey, response: &Response, now: Instant) {
        let Some(transport) = self.calls.get(&call).map(|c| c.destination.transport) else { return };
        let via = self.via(transport);
        let Some(entry) = self.calls.get_mut(&call) else { return };
        if entry.state == CallState::Confirmed {
            return;
        }
        entry.remote_party = response.to_header().map(|t| t.value().to_string()).unwrap_or_default();
        if let Some(target) = message::contact_uri(response) {
            entry.remote_target = target.to_string();
            // Over TCP and TLS the dialog stays on the connection we opened.
            if !transport.is_reliable() {
                if let Some(peer) = uri_peer(&entry.remote_target, transport) {
                    entry.destination = peer;
                }
            }
        }
        let mut routes = message::record_routes(&response.headers);
        routes.reverse();
        if let Some(peer) = route_destination(&routes, transport).filter(|_| !transport.is_reliable()) {
            entry.destination = peer;
        }
        entry.route_set = routes;
        entry.state = CallState::Confirmed;
        entry.peer_allows_update = message::allows(&response.headers, "UPDATE");
        // RFC 4028 §7.2: a 2xx with Session-Expires names who refreshes; one without has no timer.
        let session = message::session_expires(&response.headers)
            .map(|se| (se.max(MIN_SESSION_EXPIRES), message::uac_refreshes(&response.headers).unwrap_or(true)));
        entry.session_interval = session.map(|(se, _)| se);
        let (cseq, _) = message::cseq(&entry.invite).unwrap_or((1, Method::Invite));
        let ack = in_dialog_request(entry, Method::Ack, cseq, via);
        let ack = message::print(ack);
        self.transmits.push_back(Transmit { destination: entry.destination, data: ack.clone() });
        entry.ack = Some(ack);
        if entry.hangup_requested {
            // Hung up while the INVITE was in flight: the answer came anyway.
            self.send_bye(call, now);
            self.events.push_back(UaEvent::Failed { call, status: 487, reason: "Request Terminated".into() });
            return;
        }
        match session {
            Some((_, true)) => self.session_refresh_done(call, now),
            Some((_, false)) => self.session_refreshed(call, now),
            None => {}
        }
        self.events.push_back(UaEvent::Answered { call, answer: response.body.clone() });
    }

    /// A 2xx to our INVITE after its transaction ended: a retransmission,
    /// whose ACK goes again, or the answer of another branch the INVITE was
    /// forked to (another To tag).
    fn resend_ack(&mut self, response: &Response, now: Instant) {
        let key = (
            message::call_id(response).unwrap_or_default(),
            message::from_tag(response).ok().flatten().unwrap_or_default(),
        );
        let Some(call) = self.dialogs.get(&key).copied() else { return };
        let Some(entry) = self.calls.get(&call) else { return };
        let to_tag = message::to_tag(response).ok().flatten();
        if to_tag.as_deref() != message::tag_param(&entry.remote_party) {
            return self.end_forked_dialog(call, response, now);
        }
        if let Some(ack) = &entry.ack {
            self.transmits.push_back(Transmit { destination: entry.destination, data: ack.clone() });
        }
    }

    /// A second callee answered a forked INVITE (§13.2.2.4): every 2xx is
    /// ACKed, and as a call has one dialog, this one is ended with BYE at
    /// once. Retransmissions of that 2xx get an ACK again.
    fn end_forked_dialog(&mut self, call: CallKey, response: &Response, now: Instant) {
        let Some(entry) = self.calls.get(&call) else { return };
        let transport = entry.destination.transport;
        let remote_party = response.to_header().map(|t| t.value().to_string()).unwrap_or_default();
        let target = message::contact_uri(response).map(|u| u.to_string());
        let Some(uri) = target.as_deref().and_then(|t| rsip::Uri::try_from(t).ok()) else {
            return tracing::debug!("a forked 2xx without a usable Contact: not answered");
        };
        let mut routes = message::record_routes(&response.headers);
        routes.reverse();
        // As for the call's own dialog: over TCP and TLS, the connection we opened.
        let destination = match transport.is_reliable() {
            true => entry.destination,
            false => route_destination(&routes, transport)
                .or_else(|| target.as_deref().and_then(|t| uri_peer(t, transport)))
                .unwrap_or(entry.destination),
        };
        let parties = (entry.local_party.clone(), remote_party);
        let parties = (parties.0.as_str(), parties.1.as_str());
        let (cseq, _) = message::cseq(&entry.invite).unwrap_or((1, Method::Invite));
        let call_id = entry.call_id.clone();
        let ack = new_request(Method::Ack, uri.clone(), parties, &call_id, cseq, &routes, self.via(transport));
        self.transmits.push_back(Transmit { destination, data: message::print(ack) });
        let tag = message::tag_param(parties.1).unwrap_or_default().to_string();
        let Some(entry) = self.calls.get_mut(&call) else { return };
        if entry.forked_tags.contains(&tag) {
            return; // a retransmission: its dialog is being ended already
        }
        entry.forked_tags.push(tag);
        let bye = new_request(Method::Bye, uri, parties, &call_id, cseq + 1, &routes, self.via(transport));
        if let Err(error) = self.start_client_transaction(bye, destination, None, now) {
            tracing::debug!(%error, "cannot end a forked dialog");
        }
    }

    fn finish_outbound(&mut self, call: CallKey, status: u16, reason: String) {
        if self.calls.get(&call).is_some_and(|c| c.state != CallState::Confirmed) {
            self.forget_call(call);
            self.events.push_back(UaEvent::Failed { call, status, reason });
        }
    }

    fn forget_call(&mut self, call: CallKey) {
        if let Some(entry) = self.calls.remove(&call) {
            self.dialogs.remove(&(entry.call_id, entry.local_tag));
        }
    }

    // ----- commands -----

    /// Sends 180 Ringing for an incoming call.
    pub fn ring(&mut self, call: CallKey, now: Instant) -> Result<(), SipError> {
        let entry = self.calls.get(&call).ok_or(SipError::UnknownCall)?;
        if entry.state != CallState::Incoming {
            return Err(SipError::WrongState);
        }
        let (id, invite) = (entry.invite_tx, entry.invite.clone());
        self.respond(id, &invite, 180, None, Vec::new(), now);
        Ok(())
    }

    /// Answers an incoming call with 200 OK carrying `sdp`.
    pub fn answer(&mut self, call: CallKey, sdp: Vec<u8>, now: Instant) -> Result<(), SipError> {
        let entry = self.calls.get_mut(&call).ok_or(SipError::UnknownCall)?;
        if entry.state != CallState::Incoming {
            return Err(SipError::WrongState);
        }
        entry.state = CallState::Confirmed;
        self.session_refreshed(call, now);
        let Some(entry) = self.calls.get_mut(&call) else { return Err(SipError::UnknownCall) };
        entry.local_sdp = sdp.clone();
        let (id, invite) = (entry.invite_tx, entry.invite.clone());
        let contact = self.contact_for(call);
        self.respond(id, &invite, 200, contact, sdp, now);
        Ok(())
    }

    /// Answers the offer of a re-INVITE (see [`UaEvent::Reoffer`]) with `sdp`,
    /// which becomes the session description of the call.
    pub fn answer_reoffer(&mut self, call: CallKey, sdp: Vec<u8>, now: Instant) -> Result<(), SipError> {
        let entry = self.calls.get_mut(&call).ok_or(SipError::UnknownCall)?;
        let (id, request) = entry.pending_reoffer.take().ok_or(SipError::WrongState)?;
        entry.local_sdp = sdp.clone();
        let contact = self.contact_for(call);
        self.respond(id, &request, 200, contact, sdp, now);
        Ok(())
    }

    /// Refuses the offer of a re-INVITE with `status` (488 when it cannot be
    /// accepted); the call goes on with the session it had.
    pub fn reject_reoffer(&mut self, call: CallKey, status: u16, now: Instant) -> Result<(), SipError> {
        let entry = self.calls.get_mut(&call).ok_or(SipError::UnknownCall)?;
        let (id, request) = entry.pending_reoffer.take().ok_or(SipError::WrongState)?;
        self.respond(id, &request, status, None, Vec::new(), now);
        Ok(())
    }

    /// Asks the peer to call `target` instead (REFER, RFC 3515: a blind
    /// transfer). Its progress comes as [`UaEvent::TransferProgress`].
    pub fn refer(&mut self, call: CallKey, target: &str, now: Instant) -> Result<(), SipError> {
        rsip::Uri::try_from(target).map_err(|e| SipError::InvalidUri(target.into(), e.to_string()))?;
        let entry = self.calls.get(&call).ok_or(SipError::UnknownCall)?;
        if entry.state != CallState::Confirmed {
            return Err(SipError::WrongState);
        }
        let via = self.via(entry.destination.transport);
        let referred_by = entry.local_party.split(";tag=").next().unwrap_or("").to_string();
        let Some(entry) = self.calls.get_mut(&call) else { return Err(SipError::UnknownCall) };
        entry.local_cseq += 1;
        let mut refer = in_dialog_request(entry, Method::Refer, entry.local_cseq, via);
        refer.headers.push(Header::Other("Refer-To".into(), format!("<{target}>")));
        refer.headers.push(Header::Other("Referred-By".into(), referred_by));
        let id = self.send_in_dialog(call, refer, false, now).ok_or(SipError::UnknownCall)?;
        self.refers.insert(id, call);
        Ok(())
    }

    /// Accepts a peer's REFER: 202, and a first NOTIFY saying the call it
    /// asks for is being tried. Report how it goes with `notify_transfer`.
    pub fn accept_transfer(&mut self, key: RequestKey, now: Instant) -> Result<(), SipError> {
        let id = TxId(key.0);
        let (call, request) = self.transfer_requests.remove(&id).ok_or(SipError::UnknownCall)?;
        self.respond(id, &request, 202, None, Vec::new(), now);
        let cseq = message::cseq(&request).map(|c| c.0).unwrap_or(0);
        let entry = self.calls.get_mut(&call).ok_or(SipError::UnknownCall)?;
        entry.transfer_subscription = Some(cseq);
        self.notify_transfer(call, 100, now)
    }

    /// Refuses a peer's REFER with `status` (603 Decline, 403 Forbidden).
    pub fn reject_transfer(&mut self, key: RequestKey, status: u16, now: Instant) -> Result<(), SipError> {
        let id = TxId(key.0);
        let (_, request) = self.transfer_requests.remove(&id).ok_or(SipError::UnknownCall)?;
        self.respond(id, &request, status, None, Vec::new(), now);
        Ok(())
    }

    /// Tells the peer how the call its REFER asked for goes (a NOTIFY with
    /// that call's status line); a final status ends the subscription.
    pub fn notify_transfer(&mut self, call: CallKey, status: u16, now: Instant) -> Result<(), SipError> {
        let entry = self.calls.get(&call).ok_or(SipError::UnknownCall)?;
        let id = entry.transfer_subscription.ok_or(SipError::WrongState)?;
        let via = self.via(entry.destination.transport);
        let Some(entry) = self.calls.get_mut(&call) else { return Err(SipError::UnknownCall) };
        let state = if status >= 200 {
            entry.transfer_subscription = None;
            "terminated;reason=noresource".to_string()
        } else {
            "active;expires=60".to_string()
        };
        entry.local_cseq += 1;
        let mut notify = in_dialog_request(entry, Method::Notify, entry.local_cseq, via);
        notify.headers.push(Header::Event(rsip::headers::Event::new(format!("refer;id={id}"))));
        notify.headers.push(Header::Other("Subscription-State".into(), state));
        notify.headers.push(Header::ContentType(rsip::headers::ContentType::new("message/sipfrag;version=2.0")));
        notify.body = format!("SIP/2.0 {status} {}\r\n", message::reason_phrase(status)).into_bytes();
        self.send_in_dialog(call, notify, false, now).ok_or(SipError::UnknownCall)?;
        Ok(())
    }

    /// Sends a new offer in a re-INVITE (hold, resume, a new codec). The
    /// answer comes as [`UaEvent::ReofferAnswered`], a refusal as
    /// [`UaEvent::ReofferFailed`]. Glare (491) is retried after §14.1's
    /// random wait. Made before the ACK of our 2xx, it waits for it. Only
    /// one offer exchange at a time: `WrongState` while one is under way.
    pub fn reoffer(&mut self, call: CallKey, sdp: Vec<u8>, now: Instant) -> Result<(), SipError> {
        let entry = self.calls.get(&call).ok_or(SipError::UnknownCall)?;
        let unacked = matches!(
            self.transactions.get(&entry.invite_tx),
            Some(Transaction::Server { tx, .. }) if tx.state() == ServerState::Accepted
        );
        if entry.state != CallState::Confirmed
            || entry.pending_reoffer.is_some()
            || entry.local_reoffer.as_ref().is_some_and(|r| !r.refresh)
        {
            return Err(SipError::WrongState);
        }
        if let Some(entry) = self.calls.get_mut(&call) {
            // A refresh in flight gives way: the new offer refreshes too.
            entry.local_reoffer = Some(LocalReoffer { sdp, sent: None, retry_at: None, refresh: false });
        }
        if !unacked {
            self.send_reoffer(call, now);
        }
        Ok(())
    }

    /// Refuses an incoming call with 401 and `www_authenticate` challenges
    /// (header values); the caller may call again with credentials.
    pub fn challenge(&mut self, call: CallKey, www_authenticate: Vec<String>, now: Instant) {
        let Some(entry) = self.calls.get(&call) else { return };
        if entry.state == CallState::Incoming {
            let (id, invite) = (entry.invite_tx, entry.invite.clone());
            let headers = www_authenticate
                .into_iter()
                .map(|v| Header::WwwAuthenticate(rsip::headers::WwwAuthenticate::new(v)))
                .collect();
            self.respond_with_headers(id, &invite, 401, now, headers);
        }
        self.forget_call(call);
    }

    /// Refuses an incoming call with a final error status.
    pub fn reject(&mut self, call: CallKey, status: u16, now: Instant) {
        let Some(entry) = self.calls.get(&call) else { return };
        if entry.state == CallState::Incoming {
            let (id, invite) = (entry.invite_tx, entry.invite.clone());
            self.respond(id, &invite, status, None, Vec::new(), now);
        }
        self.forget_call(call);
    }

    /// Starts an outbound call: INVITE `target` (sent to `destination`) as
    /// `from_user`, offering `sdp`; `credentials` answer digest challenges.
    pub fn dial(
        &mut self,
        target: &str,
        destination: Peer,
        from_user: &str,
        sdp: Vec<u8>,
        credentials: Option<Credentials>,
        now: Instant,
    ) -> Result<CallKey, SipError> {
        let (target, replaces) = message::split_uri_headers(target);
        let uri = rsip::Uri::try_from(target).map_err(|e| SipError::InvalidUri(target.into(), e.to_string()))?;
        let call = CallKey(self.next_id());
        let local_tag = random_token();
        let host = self.advertised_host(Transport::Udp);
        let from_user = message::escape_user(from_user);
        let local_party = format!("<sip:{from_user}@{host}>;tag={local_tag}");
        let remote_party = format!("<{uri}>");
        let mut entry = Call {
            state: CallState::Calling,
            call_id: format!("{}@{}", random_token(), self.config.advertised.ip()),
            local_tag,
            local_party,
            remote_party,
            remote_target: uri.to_string(),
            route_set: Vec::new(),
            destination,
            local_cseq: 1,
            remote_cseq: 0,
            invite_tx: TxId(0),
            invite: Request {
                method: Method::Invite,
                uri,
                version: rsip::Version::V2,
                headers: Default::default(),
                body: vec![],
            },
            ack: None,
            local_sdp: sdp.clone(),
            pending_reoffer: None,
            session_interval: None,
            session_deadline: None,
            credentials,
            challenges_answered: 0,
            hangup_requested: false,
            cancel_sent: false,
            bye_after_ack: false,
            ringing_reported: false,
            we_called: true,
            local_reoffer: None,
            refresh_at: None,
            peer_allows_update: false,
            transfer_subscription: None,
            forked_tags: Vec::new(),
        };
        let initial_invite = |entry: &Call, sdp| {
            let mut invite = self.initial_invite(entry, &from_user, sdp);
            if let Some(replaces) = &replaces {
                invite.headers.push(Header::Other("Replaces".into(), replaces.clone()));
            }
            invite
        };
        let mut invite = initial_invite(&entry, sdp.clone());
        // §18.1.1: a request over UDP_REQUEST_LIMIT goes over TCP instead.
        if destination.transport == Transport::Udp && message::print(invite.clone()).len() > UDP_REQUEST_LIMIT {
            entry.destination.transport = Transport::Tcp;
            invite = initial_invite(&entry, sdp);
        }
        let id = self.start_client_transaction(invite.clone(), entry.destination, Some(call), now)?;
        let entry = Call { invite_tx: id, invite, ..entry };
        self.dialogs.insert((entry.call_id.clone(), entry.local_tag.clone()), call);
        self.calls.insert(call, entry);
        Ok(call)
    }

    /// The INVITE that starts an outbound call, for its destination's transport.
    fn initial_invite(&self, entry: &Call, from_user: &str, sdp: Vec<u8>) -> Request {
        let transport = entry.destination.transport;
        let mut invite = in_dialog_request(entry, Method::Invite, 1, self.via(transport));
        invite.headers.push(Header::Contact(rsip::headers::Contact::new(self.contact(from_user, transport))));
        invite.headers.push(Header::Allow(rsip::headers::Allow::new(ALLOWED_METHODS)));
        // A session timer (RFC 4028), so that a peer that vanishes does not
        // leave its leg in the room: we refresh unless the callee wants to.
        invite.headers.push(Header::Supported(rsip::headers::Supported::new("timer")));
        invite.headers.push(Header::Other("Session-Expires".into(), OUR_SESSION_EXPIRES.to_string()));
        invite.headers.push(Header::ContentType(rsip::headers::ContentType::new("application/sdp")));
        invite.body = sdp;
        invite
    }

    /// Ends a call however far it got: BYE when established, CANCEL when
    /// ringing, 480 when incoming and unanswered. Ending an established call
    /// reports [`UaEvent::Ended`] at once; an unanswered outbound call reports
    /// [`UaEvent::Failed`] when its INVITE transaction ends.
    pub fn hangup(&mut self, call: CallKey, now: Instant) -> Result<(), SipError> {
        let entry = self.calls.get_mut(&call).ok_or(SipError::UnknownCall)?;
        match entry.state {
            CallState::Incoming => {
                self.reject(call, 480, now);
                self.events.push_back(UaEvent::Ended { call, reason: EndReason::LocalHangup });
            }
            CallState::Calling => entry.hangup_requested = true,
            CallState::Early => {
                entry.hangup_requested = true;
                self.send_cancel(call, now);
            }
            CallState::Confirmed => {
                let awaiting_ack = matches!(
                    self.transactions.get(&entry.invite_tx),
                    Some(Transaction::Server { tx, .. }) if tx.state() == ServerState::Accepted
                );
                if awaiting_ack {
                    // §15: no BYE before the ACK (or its timeout) for our 2xx.
                    entry.bye_after_ack = true;
                } else {
                    self.send_bye(call, now);
                }
                self.events.push_back(UaEvent::Ended { call, reason: EndReason::LocalHangup });
            }
        }
        Ok(())
    }

    /// Sends OPTIONS to `target` at `destination` to see that it is still
    /// there (a keep-alive for a registered phone, and its NAT mapping); the
    /// answer comes as [`UaEvent::PingAnswered`].
    pub fn ping(&mut self, target: &str, destination: Peer, now: Instant) -> Result<RequestKey, SipError> {
        let uri = rsip::Uri::try_from(target).map_err(|e| SipError::InvalidUri(target.into(), e.to_string()))?;
        let host = self.advertised_host(destination.transport);
        let from = format!("<sip:sipbridge@{host}>;tag={}", random_token());
        let call_id = format!("{}@{}", random_token(), self.config.advertised.ip());
        let to = format!("<{uri}>");
        let via = self.via(destination.transport);
        let mut options = new_request(Method::Options, uri, (&from, &to), &call_id, 1, &[], via);
        options.headers.extend(capability_headers());
        let id = self.start_client_transaction(options, destination, None, now)?;
        self.pings.insert(id);
        Ok(RequestKey(id.0))
    }

    /// Sends `request` to `destination` in a client non-INVITE transaction
    /// (retransmitted until answered, 408 after Timer F); its final answer
    /// comes as [`UaEvent::RequestAnswered`].
    pub fn send_request(
        &mut self,
        request: OutgoingRequest,
        destination: Peer,
        now: Instant,
    ) -> Result<RequestKey, SipError> {
        let OutgoingRequest { method, uri, from, to, call_id, cseq, headers } = request;
        if method == Method::Invite || method == Method::Ack {
            return Err(SipError::WrongState);
        }
        let uri = rsip::Uri::try_from(uri.as_str()).map_err(|e| SipError::InvalidUri(uri.clone(), e.to_string()))?;
        let via = self.via(destination.transport);
        let mut request = new_request(method, uri, (&from, &to), &call_id, cseq, &[], via);
        request.headers.extend(headers);
        let id = self.start_client_transaction(request, destination, None, now)?;
        self.requests.insert(id);
        Ok(RequestKey(id.0))
    }

    fn send_bye(&mut self, call: CallKey, now: Instant) {
        let Some(transport) = self.calls.get(&call).map(|c| c.destination.transport) else { return };
        let via = self.via(transport);
        let Some(entry) = self.calls.get_mut(&call) else { return };
        entry.local_cseq += 1;
        let bye = in_dialog_request(entry, Method::Bye, entry.local_cseq, via);
        // The call is over for us now; the BYE goes on alone, answering a challenge if it meets one.
        self.send_in_dialog(call, bye, false, now);
        self.forget_call(call);
    }

    fn send_cancel(&mut self, call: CallKey, now: Instant) {
        let Some(entry) = self.calls.get_mut(&call) else { return };
        if std::mem::replace(&mut entry.cancel_sent, true) {
            return;
        }
        // §9.1: same Request-URI, Call-ID, From, To, CSeq number and top Via as the INVITE.
        let cancel = same_transaction_request(&entry.invite, Method::Cancel, None);
        let destination = entry.destination;
        // The branch comes from our own INVITE, so this cannot fail.
        let _ = self.start_client_transaction(cancel, destination, Some(call), now);
    }

    fn start_client_transaction(
        &mut self,
        request: Request,
        destination: Peer,
        call: Option<CallKey>,
        now: Instant,
    ) -> Result<TxId, SipError> {
        let branch = message::top_branch(&request.headers)?;
        let method = request.method;
        let id = TxId(self.next_id());
        let mut out = Vec::new();
        let tx = ClientTransaction::start(
            method == Method::Invite,
            message::print(request),
            destination,
            self.config.timers,
            now,
            &mut out,
        );
        self.transmits.extend(out);
        self.transactions.insert(id, Transaction::Client { tx, method, call });
        self.file_transaction(id, (branch, method));
        self.after_transaction_step(id);
        Ok(id)
    }

    // ----- subscriptions to rooms' conference events (RFC 6665, RFC 4575) -----

    /// A SUBSCRIBE outside any dialog: checked here, then handed to the
    /// user, who knows the rooms.
    fn handle_subscribe(&mut self, now: Instant, id: TxId, source: Peer, request: Request) {
        let expires = match check_subscribe(&request) {
            Ok(expires) => expires,
            Err((status, headers)) => return self.respond_with_headers(id, &request, status, now, headers),
        };
        let authorization = request.headers.iter().find_map(|h| match h {
            Header::Authorization(a) => Some(a.value().to_string()),
            _ => None,
        });
        let request_uri = request.uri.to_string();
        self.subscribe_requests.insert(id, (source, expires, request));
        self.events.push_back(UaEvent::Subscribe { key: RequestKey(id.0), request_uri, source, authorization });
    }

    /// Accepts a SUBSCRIBE to `room`, whose roster is `info` now: 200 with
    /// the granted Expires, then at once a NOTIFY with the full state (RFC
    /// 6665 §4.2.1.2); one that asked for 0 s gets that one NOTIFY, as the
    /// last (a fetch). Later changes go out by [`UserAgent::notify_room`].
    pub fn accept_subscription(
        &mut self,
        key: RequestKey,
        room: &str,
        info: ConferenceInfo,
        now: Instant,
    ) -> Result<(), SipError> {
        let id = TxId(key.0);
        let (source, expires, request) = self.subscribe_requests.remove(&id).ok_or(SipError::UnknownCall)?;
        let subscription = SubscriptionKey(self.next_id());
        let local_tag = random_token();
        let to = request.to_header().map(|h| h.value().to_string()).unwrap_or_default();
        let remote_target = message::contact_uri(&request).unwrap_or_else(|| request.uri.clone());
        let route_set = message::record_routes(&request.headers);
        let destination = dialog_destination(source, Some(&remote_target.to_string()), &route_set);
        let user = message::uri_parts(&request.uri.to_string()).and_then(|p| p.user);
        let contact = self.contact(user.as_deref().unwrap_or("sipbridge"), destination.transport);
        let expires_at = now + Duration::from_secs(expires as u64);
        let entry = Subscription {
            room: room.to_string(),
            call_id: message::call_id(&request).unwrap_or_default(),
            local_party: format!("{to};tag={local_tag}"),
            local_tag: local_tag.clone(),
            remote_party: request.from_header().map(|h| h.value().to_string()).unwrap_or_default(),
            remote_target,
            route_set,
            destination,
            local_cseq: rand::random::<u16>() as u32,
            remote_cseq: message::cseq(&request).map(|c| c.0).unwrap_or(0),
            contact: contact.clone(),
            event_id: event_package(&request).and_then(|(_, id)| id),
            expires_at,
            filed_at: expires_at,
            version: 0,
            in_flight: None,
            outdated: false,
        };
        let headers = vec![
            Header::Expires(rsip::headers::Expires::new(expires.to_string())),
            Header::Contact(rsip::headers::Contact::new(contact)),
        ];
        self.respond_tagged(id, &request, 200, &local_tag, now, headers);
        self.subscription_dialogs.insert((entry.call_id.clone(), local_tag), subscription);
        self.subscriptions.insert(subscription, entry);
        let watched = self
            .watched_rooms
            .entry(room.to_string())
            .or_insert_with(|| WatchedRoom { info: info.clone(), subscriptions: BTreeSet::new() });
        watched.info = info;
        watched.subscriptions.insert(subscription);
        if expires == 0 {
            self.end_subscription(subscription, Some("timeout"), now);
        } else {
            self.subscription_timers.push(Reverse((expires_at, subscription)));
            self.notify_subscriber(subscription, now);
        }
        Ok(())
    }

    /// Refuses a SUBSCRIBE with `status`; a 401 carries `www_authenticate`
    /// challenges (header values).
    pub fn reject_subscription(
        &mut self,
        key: RequestKey,
        status: u16,
        www_authenticate: Vec<String>,
        now: Instant,
    ) -> Result<(), SipError> {
        let id = TxId(key.0);
        let (_, _, request) = self.subscribe_requests.remove(&id).ok_or(SipError::UnknownCall)?;
        let headers = www_authenticate
            .into_iter()
            .map(|v| Header::WwwAuthenticate(rsip::headers::WwwAuthenticate::new(v)))
            .collect();
        self.respond_with_headers(id, &request, status, now, headers);
        Ok(())
    }

    /// Room `room`'s roster is now `info`: every subscription to it gets it
    /// as its next version, at once, or when its NOTIFY in flight is answered.
    pub fn notify_room(&mut self, room: &str, info: ConferenceInfo, now: Instant) {
        let Some(watched) = self.watched_rooms.get_mut(room) else { return };
        watched.info = info;
        let keys: Vec<SubscriptionKey> = watched.subscriptions.iter().copied().collect();
        for key in keys {
            self.notify_subscriber(key, now);
        }
    }

    /// Ends the subscriptions to `room`, or to every room: the room is gone,
    /// or the endpoint stops. Their last NOTIFY says `noresource`.
    pub fn end_subscriptions(&mut self, room: Option<&str>, now: Instant) {
        let keys: Vec<SubscriptionKey> =
            self.subscriptions.iter().filter(|(_, s)| room.is_none_or(|r| s.room == r)).map(|(k, _)| *k).collect();
        for key in keys {
            self.end_subscription(key, Some("noresource"), now);
        }
    }

    /// A request in a subscription's dialog: SUBSCRIBE refreshes it, or
    /// with Expires: 0 ends it (RFC 6665 §4.1.2.2, §4.1.2.3).
    fn handle_in_subscription(&mut self, now: Instant, id: TxId, key: SubscriptionKey, request: Request) {
        let Some(entry) = self.subscriptions.get_mut(&key) else {
            return self.respond(id, &request, 481, None, Vec::new(), now);
        };
        if !in_order(&mut entry.remote_cseq, &request) {
            return self.respond(id, &request, 500, None, Vec::new(), now);
        }
        if request.method != Method::Subscribe {
            return self.respond_not_allowed(id, &request, now);
        }
        let expires = match check_subscribe(&request) {
            Ok(expires) => expires,
            Err((status, headers)) => return self.respond_with_headers(id, &request, status, now, headers),
        };
        // SUBSCRIBE refreshes the target too (RFC 6665 §4.1.2.2).
        if let Some(target) = message::contact_uri(&request) {
            entry.remote_target = target;
        }
        let (tag, contact) = (entry.local_tag.clone(), entry.contact.clone());
        let headers = vec![
            Header::Expires(rsip::headers::Expires::new(expires.to_string())),
            Header::Contact(rsip::headers::Contact::new(contact)),
        ];
        self.respond_tagged(id, &request, 200, &tag, now, headers);
        if expires == 0 {
            return self.end_subscription(key, None, now);
        }
        let Some(entry) = self.subscriptions.get_mut(&key) else { return };
        entry.expires_at = now + Duration::from_secs(expires as u64);
        // A later expiry is found when the filed one fires; only an earlier one needs filing.
        if entry.expires_at < entry.filed_at {
            entry.filed_at = entry.expires_at;
            self.subscription_timers.push(Reverse((entry.expires_at, key)));
        }
        self.notify_subscriber(key, now);
    }

    /// Ends the subscriptions whose time is up, with a last NOTIFY saying
    /// `timeout`; files the new expiry of those refreshed meanwhile.
    fn handle_subscription_timers(&mut self, now: Instant) {
        while let Some(Reverse((at, key))) = self.subscription_timers.peek().copied() {
            if at > now {
                break;
            }
            self.subscription_timers.pop();
            let Some(entry) = self.subscriptions.get_mut(&key).filter(|s| s.filed_at == at) else { continue };
            if entry.expires_at <= now {
                self.end_subscription(key, Some("timeout"), now);
            } else {
                entry.filed_at = entry.expires_at;
                self.subscription_timers.push(Reverse((entry.expires_at, key)));
            }
        }
    }

    /// Sends a subscription the room's roster, unless a NOTIFY of its own
    /// is unanswered: then the roster goes once that one is answered.
    fn notify_subscriber(&mut self, key: SubscriptionKey, now: Instant) {
        let Some(entry) = self.subscriptions.get_mut(&key) else { return };
        if entry.in_flight.is_some() {
            entry.outdated = true;
            return;
        }
        entry.outdated = false;
        let state = format!("active;expires={}", entry.expires_at.saturating_duration_since(now).as_secs());
        let Some((notify, destination)) = self.next_notify(key, state, true) else { return };
        // Our own Via has a branch, so this cannot fail.
        let Ok(id) = self.start_client_transaction(notify, destination, None, now) else { return };
        self.notifies.insert(id, key);
        if let Some(entry) = self.subscriptions.get_mut(&key) {
            entry.in_flight = Some(id);
        }
    }

    /// Ends a subscription with a last NOTIFY saying so (`reason` in its
    /// Subscription-State; with the roster, unless the room is gone) and
    /// forgets it. That NOTIFY is retransmitted until answered, and its
    /// answer changes nothing.
    fn end_subscription(&mut self, key: SubscriptionKey, reason: Option<&str>, now: Instant) {
        let state = match reason {
            Some(reason) => format!("terminated;reason={reason}"),
            None => "terminated".to_string(),
        };
        if let Some((notify, destination)) = self.next_notify(key, state, reason != Some("noresource")) {
            let _ = self.start_client_transaction(notify, destination, None, now);
        }
        self.forget_subscription(key);
    }

    /// The next NOTIFY of a subscription, and where it goes: `state` for
    /// its Subscription-State and, `with_roster`, the room's roster as the
    /// next version.
    fn next_notify(&mut self, key: SubscriptionKey, state: String, with_roster: bool) -> Option<(Request, Peer)> {
        let via = self.via(self.subscriptions.get(&key)?.destination.transport);
        let entry = self.subscriptions.get_mut(&key)?;
        entry.local_cseq += 1;
        let parties = (entry.local_party.as_str(), entry.remote_party.as_str());
        let uri = entry.remote_target.clone();
        let mut notify =
            new_request(Method::Notify, uri, parties, &entry.call_id, entry.local_cseq, &entry.route_set, via);
        let event = match &entry.event_id {
            Some(id) => format!("{};id={id}", conference_info::EVENT_PACKAGE),
            None => conference_info::EVENT_PACKAGE.to_string(),
        };
        notify.headers.push(Header::Event(rsip::headers::Event::new(event)));
        notify.headers.push(Header::Other("Subscription-State".into(), state));
        notify.headers.push(Header::Contact(rsip::headers::Contact::new(entry.contact.clone())));
        if with_roster {
            let room = self.watched_rooms.get(&entry.room)?;
            entry.version += 1;
            notify.headers.push(Header::ContentType(rsip::headers::ContentType::new(conference_info::CONTENT_TYPE)));
            notify.body = room.info.to_xml(entry.version).into_bytes();
        }
        Some((notify, entry.destination))
    }

    /// The answer to a NOTIFY in flight: a 2xx lets the latest roster go,
    /// if it changed meanwhile. Anything else ends the subscription: RFC
    /// 6665 §4.2.2 says so for 481, 408 and no answer (the subscriber is
    /// gone), and other refusals are not retried (the subscriber may
    /// subscribe again).
    fn notify_answered(&mut self, id: TxId, status: u16, now: Instant) {
        let Some(key) = self.notifies.remove(&id) else { return };
        let Some(entry) = self.subscriptions.get_mut(&key) else { return };
        entry.in_flight = None;
        if !(200..300).contains(&status) {
            return self.forget_subscription(key);
        }
        if entry.outdated {
            self.notify_subscriber(key, now);
        }
    }

    fn forget_subscription(&mut self, key: SubscriptionKey) {
        let Some(entry) = self.subscriptions.remove(&key) else { return };
        self.subscription_dialogs.remove(&(entry.call_id, entry.local_tag));
        if let Some(id) = entry.in_flight {
            self.notifies.remove(&id);
        }
        if let Some(watched) = self.watched_rooms.get_mut(&entry.room) {
            watched.subscriptions.remove(&key);
            if watched.subscriptions.is_empty() {
                self.watched_rooms.remove(&entry.room);
            }
        }
    }

    // ----- responses -----

    fn contact_for(&self, call: CallKey) -> Option<String> {
        let entry = self.calls.get(&call)?;
        let user = message::uri_parts(&entry.invite.uri.to_string())
            .and_then(|p| p.user)
            .unwrap_or_else(|| "sipbridge".into());
        Some(self.contact(&user, entry.destination.transport))
    }

    /// Sends a response through server transaction `id`.
    fn respond(
        &mut self,
        id: TxId,
        request: &Request,
        status: u16,
        contact: Option<String>,
        body: Vec<u8>,
        now: Instant,
    ) {
        let call = match self.transactions.get(&id) {
            Some(Transaction::Server { call, .. }) => *call,
            _ => None,
        };
        let tag = call.and_then(|c| self.calls.get(&c)).map(|c| c.local_tag.clone());
        let tag = if status == 100 { None } else { tag.or_else(|| (status >= 200).then(random_token)) };
        let mut response = message::response_to(request, status, tag.as_deref());
        if let Some(value) = contact {
            response.headers.push(Header::Contact(rsip::headers::Contact::new(value)));
        }
        // A 2xx to an INVITE or UPDATE of a call with a session timer restates it.
        let interval = call.and_then(|c| self.calls.get(&c)).and_then(|c| c.session_interval);
        if let (Some(interval), true) = (interval, (200..300).contains(&status)) {
            if matches!(request.method, Method::Invite | Method::Update) {
                response.headers.push(Header::Other("Session-Expires".into(), format!("{interval};refresher=uac")));
                response.headers.push(Header::Require(rsip::headers::Require::new("timer")));
            }
        }
        // What we take, so the peer knows it may refresh or re-offer by UPDATE.
        if (200..300).contains(&status) && request.method == Method::Invite {
            response.headers.push(Header::Allow(rsip::headers::Allow::new(ALLOWED_METHODS)));
        }
        if !body.is_empty() {
            response.headers.push(Header::ContentType(rsip::headers::ContentType::new("application/sdp")));
            response.body = body;
        }
        let Some(Transaction::Server { tx, .. }) = self.transactions.get_mut(&id) else { return };
        let mut out = Vec::new();
        tx.send_response(status, message::print(response), now, &mut out);
        self.transmits.extend(out);
        self.after_transaction_step(id);
    }

    fn respond_with_capabilities(&mut self, id: TxId, request: &Request, now: Instant) {
        self.respond_with_headers(id, request, 200, now, capability_headers());
    }

    fn respond_not_allowed(&mut self, id: TxId, request: &Request, now: Instant) {
        self.respond_with_headers(
            id,
            request,
            405,
            now,
            vec![Header::Allow(rsip::headers::Allow::new(ALLOWED_METHODS))],
        );
    }

    fn respond_with_headers(&mut self, id: TxId, request: &Request, status: u16, now: Instant, extra: Vec<Header>) {
        self.respond_tagged(id, request, status, &random_token(), now, extra);
    }

    /// Sends a response with `extra` headers through server transaction
    /// `id`, with `tag` as the To tag when the request has none.
    fn respond_tagged(
        &mut self,
        id: TxId,
        request: &Request,
        status: u16,
        tag: &str,
        now: Instant,
        extra: Vec<Header>,
    ) {
        let mut response = message::response_to(request, status, Some(tag));
        for header in extra {
            response.headers.push(header);
        }
        let Some(Transaction::Server { tx, .. }) = self.transactions.get_mut(&id) else { return };
        let mut out = Vec::new();
        tx.send_response(status, message::print(response), now, &mut out);
        self.transmits.extend(out);
        self.after_transaction_step(id);
    }

    /// Answers without a transaction: for requests too broken to have one.
    /// An ACK is never answered (§17.1.1.3), broken or not.
    fn reply_stateless(&mut self, request: &Request, destination: Peer, status: u16, tag: Option<&str>) {
        if request.method == Method::Ack {
            return;
        }
        let response = message::response_to(request, status, tag);
        self.transmits.push_back(Transmit { destination, data: message::print(response) });
    }
}

fn capability_headers() -> Vec<Header> {
    vec![
        Header::Allow(rsip::headers::Allow::new(ALLOWED_METHODS)),
        Header::Supported(rsip::headers::Supported::new("replaces, timer")),
        Header::Other("Allow-Events".into(), ALLOWED_EVENTS.into()),
        Header::Accept(rsip::headers::Accept::new("application/sdp")),
        Header::Other("Accept-Encoding".into(), "identity".into()),
    ]
}

/// Builds a request inside (or, for the first INVITE, founding) a dialog (§12.2.1.1).
fn in_dialog_request(call: &Call, method: Method, cseq: u32, via: Header) -> Request {
    let uri = rsip::Uri::try_from(call.remote_target.as_str()).unwrap_or_else(|_| call.invite.uri.clone());
    let parties = (call.local_party.as_str(), call.remote_party.as_str());
    new_request(method, uri, parties, &call.call_id, cseq, &call.route_set, via)
}

/// A request in a new client transaction: `parties` are its From and To.
fn new_request(
    method: Method,
    uri: rsip::Uri,
    (from, to): (&str, &str),
    call_id: &str,
    cseq: u32,
    routes: &[String],
    via: Header,
) -> Request {
    let mut headers = rsip::Headers::default();
    headers.push(via);
    headers.push(Header::MaxForwards(rsip::headers::MaxForwards::new("70")));
    for route in routes {
        headers.push(Header::Route(rsip::headers::Route::new(route.clone())));
    }
    headers.push(Header::From(rsip::headers::From::new(from)));
    headers.push(Header::To(rsip::headers::To::new(to)));
    headers.push(Header::CallId(rsip::headers::CallId::new(call_id)));
    headers.push(Header::CSeq(rsip::headers::CSeq::new(format!("{cseq} {method}"))));
    headers.push(Header::UserAgent(rsip::headers::UserAgent::new(USER_AGENT)));
    Request { method, uri, version: rsip::Version::V2, headers, body: Vec::new() }
}

/// `request` again with an answer to the challenge of `response` (401 or
/// 407), as a new transaction: a new Via branch, CSeq `cseq` (§22.2). Also
/// whether the challenge only said the nonce went stale. `None` when no
/// challenge there can be answered.
fn authorized(
    request: &Request,
    response: &Response,
    credentials: &Credentials,
    cseq: u32,
    via: Header,
) -> Option<(Request, bool)> {
    let proxy = response.status_code.code() == 407;
    let values = response.headers.iter().filter_map(|h| match h {
        Header::WwwAuthenticate(v) if !proxy => Some(v.value()),
        Header::ProxyAuthenticate(v) if proxy => Some(v.value()),
        _ => None,
    });
    let challenge = Challenge::choose(values)?;
    let method = request.method.to_string();
    let answer = challenge.answer(credentials, &method, &request.uri.to_string(), &random_token(), 1);
    let header = if proxy {
        Header::ProxyAuthorization(rsip::headers::ProxyAuthorization::new(answer))
    } else {
        Header::Authorization(rsip::headers::Authorization::new(answer))
    };
    let mut again = request.clone();
    let headers = std::mem::take(&mut again.headers);
    for h in headers.into_iter() {
        match h {
            Header::Via(_) => again.headers.push(via.clone()),
            Header::CSeq(_) => again.headers.push(Header::CSeq(rsip::headers::CSeq::new(format!("{cseq} {method}")))),
            Header::Authorization(_) | Header::ProxyAuthorization(_) => {}
            other => again.headers.push(other),
        }
    }
    again.headers.push(header);
    Some((again, challenge.stale))
}

/// The ACK for a non-2xx final response (§17.1.1.3).
fn non_2xx_ack(invite: &Request, response: &Response) -> Request {
    same_transaction_request(invite, Method::Ack, response.to_header().ok())
}

/// A request in the INVITE's own transaction (CANCEL, or the ACK for a
/// non-2xx): the INVITE's Request-URI, top Via, From, Call-ID, Max-Forwards,
/// Route and CSeq number, with `method`; its To, or `to` when given.
fn same_transaction_request(invite: &Request, method: Method, to: Option<&rsip::headers::To>) -> Request {
    let mut headers = rsip::Headers::default();
    for header in invite.headers.iter() {
        match header {
            Header::Via(_) if !headers.iter().any(|h| matches!(h, Header::Via(_))) => headers.push(header.clone()),
            Header::From(_) | Header::CallId(_) | Header::MaxForwards(_) | Header::Route(_) => {
                headers.push(header.clone())
            }
            Header::To(_) if to.is_none() => headers.push(header.clone()),
            Header::CSeq(c) => {
                let seq = c.value().split_whitespace().next().unwrap_or("1");
                headers.push(Header::CSeq(rsip::headers::CSeq::new(format!("{seq} {method}"))));
            }
            _ => {}
        }
    }
    if let Some(to) = to {
        headers.push(Header::To(to.clone()));
    }
    Request { method, uri: invite.uri.clone(), version: rsip::Version::V2, headers, body: vec![] }
}

/// Where requests in a dialog a peer's request (from `source`) founded go:
/// over TCP and TLS back on its connection (RFC 5923's reuse), which also
/// works behind NAT; over UDP to the first route, else the remote target.
fn dialog_destination(source: Peer, remote_target: Option<&str>, route_set: &[String]) -> Peer {
    if source.transport.is_reliable() {
        return source;
    }
    let target = remote_target.and_then(|t| uri_peer(t, source.transport));
    route_destination(route_set, source.transport).or(target).unwrap_or(source)
}

/// Whether a request in a dialog whose last request from the peer had CSeq
/// `remote_cseq` comes in order (§12.2.2); if so its CSeq becomes the last.
fn in_order(remote_cseq: &mut u32, request: &Request) -> bool {
    let cseq = message::cseq(request).map(|c| c.0).unwrap_or(0);
    if cseq < *remote_cseq {
        return false;
    }
    *remote_cseq = cseq;
    true
}

/// The event package a SUBSCRIBE names (lower case), and its `id` parameter.
fn event_package(request: &Request) -> Option<(String, Option<String>)> {
    let values = message::header_values(&request.headers, "Event", "o");
    let mut parts = values.first()?.split(';');
    let package = parts.next()?.trim().to_ascii_lowercase();
    let id = parts
        .filter_map(|p| p.split_once('='))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("id"))
        .map(|(_, value)| value.trim().to_string());
    Some((package, id))
}

/// Checks a SUBSCRIBE, new or a refresh: the conference package (else 489
/// with Allow-Events), an interval we take (423 with Min-Expires below
/// the minimum), a document the subscriber reads (else 406). Gives the
/// interval to grant: the one asked, at most the maximum, which is also
/// the default; 0 ends the subscription.
fn check_subscribe(request: &Request) -> Result<u32, (u16, Vec<Header>)> {
    let package = event_package(request).map(|(package, _)| package);
    if package.as_deref() != Some(conference_info::EVENT_PACKAGE) {
        return Err((489, vec![Header::Other("Allow-Events".into(), ALLOWED_EVENTS.into())]));
    }
    let accepts = message::header_values(&request.headers, "Accept", "");
    let readable = accepts.is_empty()
        || accepts.iter().flat_map(|v| v.split(',')).any(|t| {
            let t = t.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
            t == conference_info::CONTENT_TYPE || t == "application/*" || t == "*/*"
        });
    if !readable {
        return Err((406, Vec::new()));
    }
    let expires = request.headers.iter().find_map(|h| match h {
        Header::Expires(e) => Some(e.value().trim().parse::<u32>()),
        _ => None,
    });
    match expires {
        None => Ok(MAX_SUBSCRIPTION_EXPIRES),
        Some(Err(_)) => Err((400, Vec::new())),
        Some(Ok(0)) => Ok(0),
        Some(Ok(seconds)) if seconds < MIN_SUBSCRIPTION_EXPIRES => {
            Err((423, vec![Header::Other("Min-Expires".into(), MIN_SUBSCRIPTION_EXPIRES.to_string())]))
        }
        Some(Ok(seconds)) => Ok(seconds.min(MAX_SUBSCRIPTION_EXPIRES)),
    }
}

/// Where requests go when a route set exists: its first entry (loose routing).
fn route_destination(route_set: &[String], current: Transport) -> Option<Peer> {
    uri_peer(route_set.first()?, current)
}

/// The address and transport a URI with a numeric host names; a URI that
/// names no transport keeps `current` (many phones leave `transport=tcp`
/// out of a Contact they send over TCP).
fn uri_peer(uri: &str, current: Transport) -> Option<Peer> {
    let addr = message::uri_socket_addr(uri)?;
    Some(Peer { transport: Transport::of_uri(uri).unwrap_or(current), addr })
}

/// Whether a request that rsip rejected has a well-formed but unknown method,
/// which earns 501 rather than 400 (§8.2.1).
fn unknown_method(data: &[u8]) -> bool {
    let Some(line) = data.split(|b| *b == b'\r').next().and_then(|l| std::str::from_utf8(l).ok()) else { return false };
    let mut parts = line.split(' ');
    let (Some(method), Some(_uri), Some("SIP/2.0")) = (parts.next(), parts.next(), parts.next()) else { return false };
    !method.is_empty()
        && method.bytes().all(|b| b.is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(&b))
        && method.parse::<Method>().is_err()
}
