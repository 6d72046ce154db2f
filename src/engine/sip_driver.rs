//! The SIP task: pumps the sans-IO [`UserAgent`] with datagrams, timers and
//! application commands, and turns its events into conference membership and
//! RTP legs.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tokio::sync::mpsc::{Receiver, UnboundedReceiver};
use tokio::task::JoinHandle;

use super::accounts::AccountRoute;
use super::dns;
use super::media_task::{receive_media, LegSockets, ReceiveContext, ReceiveFormat};
use super::ports::PortLease;
use super::transport::{Connections, StreamEvent};
use super::{DtmfQueue, ParticipantEntry, Shared};
use crate::api::{Event, LeaveReason, ParticipantKind, ParticipantState};
use crate::media::codec::{CodecKind, OpusSettings};
use crate::media::mixer::{Leg, LegCodec, LegMedia, ParticipantControls, ParticipantId, ParticipantMix, RtpLeg};
use crate::policy::Admission;
use crate::sdp::{self, Direction, LocalMedia, NegotiatedMedia, SessionDescription};
use crate::sip::auth::Verdict;
use crate::sip::conference_info::{ConferenceInfo, EndpointStatus, JoiningMethod, MediaStatus, User};
use crate::sip::locate::{self, Plan};
use crate::sip::register_client::{AccountConfig, AccountId, RegistrationClient, RegistrationState};
use crate::sip::registrar::{self, RegisterError, Registration};
use crate::sip::stream::KEEPALIVE_PING;
use crate::sip::ua::{RegisterRequest, RequestKey};
use crate::sip::{message, CallKey, Credentials, EndReason, Peer, Transport, UaConfig, UaEvent, UserAgent};
use crate::{Error, Result};

/// Datagrams a leg may have waiting for the mixer: 320 ms of 20 ms packets,
/// which the mixer drains every tick. Each slot holds a whole datagram
/// (1.5 kB), so this is most of a leg's memory.
const RTP_RING: usize = 16;
/// Digits the app may queue for one leg ahead of the mixer sending them.
const DTMF_QUEUE: usize = 64;
/// Roster changes of a room within this long go to its subscribers in one
/// NOTIFY each, so a room filling up does not send one per join.
const ROSTER_COALESCE: Duration = Duration::from_millis(150);

/// What the application asks of the SIP task.
pub(crate) enum SipCommand {
    Dial {
        participant: ParticipantId,
        target: String,
        credentials: Option<Credentials>,
        reply: std::sync::mpsc::Sender<Result<()>>,
    },
    /// A dial whose host name was looked up off the SIP task.
    Resolved {
        participant: ParticipantId,
        target: String,
        credentials: Option<Credentials>,
        /// Where to send, in the order to try, each with the host name a TLS
        /// server there must prove.
        destination: Result<Vec<(Peer, String)>>,
        reply: std::sync::mpsc::Sender<Result<()>>,
    },
    Hangup {
        participant: ParticipantId,
        reason: LeaveReason,
    },
    /// Asks a participant's phone to call `target` instead (REFER).
    Transfer {
        participant: ParticipantId,
        target: String,
        reply: std::sync::mpsc::Sender<Result<()>>,
    },
    /// Accepts or refuses a participant's REFER.
    AnswerTransfer {
        participant: ParticipantId,
        accept: bool,
        reply: std::sync::mpsc::Sender<Result<()>>,
    },
    /// Puts a participant's call on hold (a re-INVITE with an inactive
    /// offer) or takes it off hold.
    Hold {
        participant: ParticipantId,
        held: bool,
        reply: std::sync::mpsc::Sender<Result<()>>,
    },
    /// Re-offer a participant's call with another codec.
    ChangeCodec {
        participant: ParticipantId,
        codec: CodecKind,
        reply: std::sync::mpsc::Sender<Result<()>>,
    },
    /// Register an account (see `Endpoint::register_account`).
    RegisterAccount {
        config: AccountConfig,
        route: AccountRoute,
        reply: std::sync::mpsc::Sender<Result<AccountId>>,
    },
    UnregisterAccount {
        account: AccountId,
        reply: std::sync::mpsc::Sender<Result<()>>,
    },
    /// An account's registrar looked up again after its servers failed.
    RegistrarFound {
        account: AccountId,
        servers: Result<Vec<(Peer, String)>>,
    },
    /// Something changed a room's roster: its subscribers hear of it
    /// (RFC 4575), with the changes that follow within `ROSTER_COALESCE`.
    RosterChanged {
        conference: String,
    },
    /// Hang up everything, send what is queued, then stop.
    Shutdown {
        done: std::sync::mpsc::Sender<()>,
    },
}

/// An RTP port bound for a call, before its leg joins the mixer.
struct MediaPort {
    socket: std::net::UdpSocket,
    rtcp_socket: std::net::UdpSocket,
    lease: PortLease,
    local: LocalMedia,
}

/// A leg's receive task, and what it reads packets as.
struct ReceiveTask {
    handle: JoinHandle<()>,
    format: Arc<ReceiveFormat>,
}

struct CallLeg {
    participant: ParticipantId,
    media: Option<MediaPort>,
    receive_task: Option<ReceiveTask>,
    /// Why the app hung up, reported when the call ends.
    hangup_reason: Option<LeaveReason>,
    /// Once media runs: our side of the session and what was negotiated, to
    /// answer re-offers and make our own with.
    session: Option<(LocalMedia, NegotiatedMedia)>,
    /// The peer's REFER waiting for the app's answer, and its target.
    transfer_request: Option<(RequestKey, String)>,
}

/// A registered user's contacts of one q-value: URI and where to send to it.
type ContactGroup = Vec<(String, Peer)>;

/// A dial to a registered user's contacts (RFC 3261 §16.6): the calls of
/// the group ringing now, not yet failed, and the groups of lower q-value
/// to ring if they all fail.
struct Fork {
    calls: Vec<CallKey>,
    later: Vec<ContactGroup>,
    credentials: Option<Credentials>,
}

/// A dial's target, credentials and the servers not tried yet, last first.
struct Failover {
    target: String,
    credentials: Option<Credentials>,
    servers: Vec<(Peer, String)>,
}

struct Driver {
    shared: Arc<Shared>,
    ua: UserAgent,
    socket: UdpSocket,
    connections: Connections,
    calls: HashMap<CallKey, CallLeg>,
    by_participant: HashMap<ParticipantId, CallKey>,
    /// Dials whose URI named several servers (RFC 3263): what to dial the
    /// next with if the current one does not answer, by participant, until
    /// a call is answered or ends.
    failovers: HashMap<ParticipantId, Failover>,
    /// Dials to a user with several contacts, by participant, until one
    /// is answered.
    forks: HashMap<ParticipantId, Fork>,
    /// Calls placed for a peer's REFER, by their participant: the referrer's
    /// call, which hears of their progress in NOTIFYs.
    transfers: HashMap<ParticipantId, CallKey>,
    /// Keep-alive pings in flight: the user and contact each one checks.
    pings: HashMap<RequestKey, (String, String)>,
    /// Our accounts with upstream registrars, and where their calls go.
    registrations: RegistrationClient,
    accounts: HashMap<AccountId, AccountRoute>,
    /// Rooms with watched rosters that changed, and when their subscribers
    /// are sent the new one.
    roster_due: HashMap<String, Instant>,
}

/// The SIP task's sockets: UDP, and the connections of TCP and TLS.
pub(crate) struct SipTransports {
    pub udp: UdpSocket,
    pub connections: Connections,
    pub stream_events: Receiver<StreamEvent>,
    /// Where TLS listens, if it does.
    pub tls_addr: Option<SocketAddr>,
}

pub(crate) async fn run(shared: Arc<Shared>, transports: SipTransports, mut commands: UnboundedReceiver<SipCommand>) {
    let SipTransports { udp: socket, connections, mut stream_events, tls_addr } = transports;
    let ua = UserAgent::new(UaConfig {
        advertised: SocketAddr::new(shared.advertised_ip, shared.sip_addr.port()),
        tls_port: tls_addr.map(|a| a.port()),
        timers: shared.config.timers,
    });
    let keepalive_every = shared.config.keepalive_interval;
    let mut driver = Driver {
        shared,
        ua,
        socket,
        connections,
        calls: HashMap::new(),
        by_participant: HashMap::new(),
        failovers: HashMap::new(),
        forks: HashMap::new(),
        pings: HashMap::new(),
        transfers: HashMap::new(),
        registrations: RegistrationClient::default(),
        accounts: HashMap::new(),
        roster_due: HashMap::new(),
    };
    let mut buf = vec![0u8; 65_535];
    let mut keepalive =
        keepalive_every.map(|every| tokio::time::interval_at(tokio::time::Instant::now() + every, every));
    // One timer for the life of the task, moved only when the next wake-up
    // moves: a new one per message would be registered and dropped each time.
    let epoch = tokio::time::Instant::now();
    let timer = tokio::time::sleep_until(epoch);
    tokio::pin!(timer);
    let mut armed: Option<tokio::time::Instant> = None;
    loop {
        let roster_due = driver.roster_due.values().min().copied();
        let wake =
            driver.ua.poll_timeout().into_iter().chain(driver.registrations.poll_timeout()).chain(roster_due).min();
        let wake = wake.map(|at| on_wake_grid(epoch, tokio::time::Instant::from_std(at)));
        if wake != armed {
            if let Some(at) = wake {
                timer.as_mut().reset(at);
            }
            armed = wake;
        }
        tokio::select! {
            received = driver.socket.recv_from(&mut buf) => {
                driver.received(received, &buf);
                // Under load more datagrams wait: take them without going
                // round the select, each answered before the next is read.
                for _ in 0..UDP_BATCH {
                    driver.pump().await;
                    let Ok(received) = driver.socket.try_recv_from(&mut buf) else { break };
                    driver.received(Ok(received), &buf);
                }
            }
            Some(event) = stream_events.recv() => driver.stream_event(event),
            command = commands.recv() => match command {
                Some(SipCommand::Shutdown { done }) => {
                    driver.shutdown(&mut buf, &mut stream_events).await;
                    let _ = done.send(());
                    return;
                }
                Some(command) => driver.handle_command(command),
                None => return,
            },
            _ = &mut timer, if armed.is_some() => {
                armed = None;
                driver.handle_timeout(Instant::now());
            }
            _ = super::next_tick(keepalive.as_mut()) => driver.ping_registrations(),
        }
        driver.pump().await;
    }
}

/// Datagrams read in one go after the one that woke the SIP task.
const UDP_BATCH: usize = 32;

/// Granularity of the SIP task's timer wake-ups. SIP's timers run in
/// hundreds of milliseconds (T1 is 500 ms); rounding each wake-up up to this
/// grid lets the many timers of a busy server that fall due close together
/// (2xx retransmissions, the 100 Trying check, stale entries of finished
/// transactions) share one wake-up.
const WAKE_GRID: Duration = Duration::from_millis(10);

fn on_wake_grid(epoch: tokio::time::Instant, at: tokio::time::Instant) -> tokio::time::Instant {
    let grid = WAKE_GRID.as_nanos();
    let since = at.saturating_duration_since(epoch).as_nanos().div_ceil(grid) * grid;
    epoch + Duration::from_nanos(since as u64)
}

impl Driver {
    fn received(&mut self, received: std::io::Result<(usize, SocketAddr)>, buf: &[u8]) {
        match received {
            Ok((n, source)) => self.ua.handle_message(Instant::now(), Peer::udp(source), &buf[..n]),
            // ICMP port unreachable surfaces here on some systems; it is not fatal.
            Err(error) => tracing::debug!(%error, "SIP socket receive error"),
        }
    }

    fn stream_event(&mut self, event: StreamEvent) {
        match event {
            StreamEvent::Accepted { peer, id, writer } => self.connections.accepted(peer, id, writer),
            StreamEvent::Message { peer, data } => self.ua.handle_message(Instant::now(), peer, &data),
            StreamEvent::Closed { peer, id } => {
                if self.connections.closed(peer, id) {
                    self.ua.handle_transport_error(peer);
                }
            }
        }
    }

    fn handle_timeout(&mut self, now: Instant) {
        self.ua.handle_timeout(now);
        self.registrations.handle_timeout(&mut self.ua, now);
        self.send_rosters(now);
    }

    /// Sends the rosters that are due to their rooms' subscribers; a room
    /// that is gone ends its subscriptions.
    fn send_rosters(&mut self, now: Instant) {
        let due: Vec<String> = self.roster_due.iter().filter(|(_, at)| **at <= now).map(|(r, _)| r.clone()).collect();
        for room in due {
            self.roster_due.remove(&room);
            match self.roster(&room) {
                Some(info) => self.ua.notify_room(&room, info, now),
                None => self.ua.end_subscriptions(Some(&room), now),
            }
        }
    }

    /// Room `room`'s roster as conference-info (RFC 4575), if the room exists.
    fn roster(&self, room: &str) -> Option<ConferenceInfo> {
        let host = SocketAddr::new(self.shared.advertised_ip, self.shared.sip_addr.port());
        let registry = self.shared.registry.lock();
        let conference = registry.conferences.get(room)?;
        let users = conference
            .participants
            .iter()
            .filter_map(|id| registry.participants.get(id).map(|entry| roster_user(*id, entry, host)))
            .collect();
        Some(ConferenceInfo {
            entity: format!("sip:{}@{host}", message::escape_user(room)),
            subject: room.to_string(),
            locked: conference.policy.locked,
            users,
        })
    }

    /// A SUBSCRIBE to a room's conference events: refused when the
    /// endpoint does not offer them (489), the room does not exist (404; a
    /// subscription creates no room), the room takes authenticated callers
    /// only and this one is not (401, 403), or it has its fill of
    /// subscriptions (403). Else the subscriber gets the roster at once.
    fn handle_subscribe(
        &mut self,
        key: RequestKey,
        request_uri: &str,
        source: Peer,
        authorization: Option<&str>,
        now: Instant,
    ) -> crate::Result<()> {
        if !self.shared.config.conference_events {
            return Ok(self.ua.reject_subscription(key, 489, Vec::new(), now)?);
        }
        let (room, via_registrar) = self.room_for(request_uri, source);
        let Some(info) = self.roster(&room) else {
            return Ok(self.ua.reject_subscription(key, 404, Vec::new(), now)?);
        };
        // The roster names everyone in the room: it is as private as the room.
        let verdict = match via_registrar {
            true => Verdict::Accept { user: String::new() },
            false => self.admit(&room, source, "SUBSCRIBE", authorization, now),
        };
        match verdict {
            Verdict::Accept { .. } => {}
            Verdict::Challenge(values) => return Ok(self.ua.reject_subscription(key, 401, values, now)?),
            Verdict::Forbidden => return Ok(self.ua.reject_subscription(key, 403, Vec::new(), now)?),
        }
        if self.ua.subscription_count(&room) >= self.shared.config.max_subscriptions_per_room {
            tracing::info!(%room, source = %source.addr, "refusing a subscription beyond the room's limit");
            return Ok(self.ua.reject_subscription(key, 403, Vec::new(), now)?);
        }
        tracing::info!(%room, source = %source.addr, "conference events subscribed");
        Ok(self.ua.accept_subscription(key, &room, info, now)?)
    }

    /// Sends what the agent queued and acts on its events, until both are empty.
    async fn pump(&mut self) {
        loop {
            while let Some(transmit) = self.ua.poll_transmit() {
                let destination = transmit.destination;
                if destination.transport != Transport::Udp {
                    self.connections.send(destination, transmit.data);
                } else if let Err(error) = self.socket.send_to(&transmit.data, destination.addr).await {
                    tracing::warn!(%error, %destination, "SIP send failed");
                }
            }
            self.report_registrations();
            let Some(event) = self.ua.poll_event() else { break };
            self.handle_event(event);
        }
    }

    /// Turns the registration client's news into events for the app. When
    /// no server of an account's registrar could be reached, its name is
    /// looked up again for the retry: the servers may have moved.
    fn report_registrations(&mut self) {
        while let Some(event) = self.registrations.poll_event() {
            if let RegistrationState::Failed { status: 408 | 503, .. } = event.state {
                self.look_up_registrar(event.account);
            }
            let aor = match event.state {
                RegistrationState::Unregistered => self.accounts.remove(&event.account).map(|route| route.aor),
                _ => self.accounts.get(&event.account).map(|route| route.aor.clone()),
            };
            tracing::info!(aor, state = ?event.state, "registration");
            let aor = aor.unwrap_or_default();
            self.shared.emit(Event::Registration { account: event.account, aor, state: event.state });
        }
    }

    /// Looks an account's registrar up again in a task of its own; the
    /// answer comes back as `SipCommand::RegistrarFound`.
    fn look_up_registrar(&mut self, account: AccountId) {
        let Some(route) = self.accounts.get_mut(&account).filter(|route| !route.looking_up) else { return };
        let Some(plan) = route.lookup.clone() else { return };
        route.looking_up = true;
        let (commands, resolver) = (self.shared.sip_commands.clone(), self.shared.resolver.clone());
        self.shared.runtime.spawn(async move {
            let servers = dns::locate(&resolver, plan).await;
            let _ = commands.send(SipCommand::RegistrarFound { account, servers });
        });
    }

    fn handle_event(&mut self, event: UaEvent) {
        let now = Instant::now();
        match event {
            UaEvent::IncomingCall { call, request_uri, from, offer, source, authorization, replaces } => {
                // A call that takes another's place (RFC 3891) joins its room.
                let replaced = replaces.and_then(|old| self.calls.get(&old)).map(|leg| leg.participant);
                let (room, via_registrar) = match replaced.and_then(|old| self.shared.conference_of(old)) {
                    Some(room) => (room, false),
                    None if replaces.is_some() => return self.ua.reject(call, 481, now),
                    None => self.room_for(&request_uri, source),
                };
                let verdict = match via_registrar {
                    true => Verdict::Accept { user: String::new() },
                    false => self.admit(&room, source, "INVITE", authorization.as_deref(), now),
                };
                match verdict {
                    Verdict::Accept { .. } => {}
                    Verdict::Challenge(values) => return self.ua.challenge(call, values, now),
                    Verdict::Forbidden => {
                        tracing::info!(source = %source.addr, "refusing a caller that failed to authenticate too often");
                        return self.ua.reject(call, 403, now);
                    }
                }
                match self.accept_incoming(call, &room, &from, &offer, replaced, now) {
                    Ok(()) => {
                        if let Some(old) = replaced {
                            self.handle_command(SipCommand::Hangup { participant: old, reason: LeaveReason::Replaced });
                        }
                    }
                    Err((status, error)) => {
                        tracing::info!(source = %source.addr, %request_uri, status, %error, "refusing call");
                        self.ua.reject(call, status, now);
                    }
                }
            }
            UaEvent::Dtmf { call, digit, duration_ms } => {
                if let Some(leg) = self.calls.get(&call) {
                    self.shared.dtmf(leg.participant, digit, duration_ms);
                }
            }
            UaEvent::Ringing { call } => {
                if let Some(participant) = self.calls.get(&call).map(|leg| leg.participant) {
                    // The server is there: a later 408 or 503 is its callee's, not a reason to try another.
                    self.failovers.remove(&participant);
                    let state = self.shared.registry.lock().participants.get(&participant).map(|p| p.state);
                    if state == Some(ParticipantState::Ringing) {
                        return; // another of a forked dial's phones
                    }
                    self.shared.set_state(participant, ParticipantState::Ringing);
                    self.emit_for(participant, |conference, participant| Event::Ringing { conference, participant });
                    self.report_transfer(participant, 180, now);
                }
            }
            UaEvent::Answered { call, answer } | UaEvent::Acknowledged { call, answer } => {
                if let Some(participant) = self.calls.get(&call).map(|leg| leg.participant) {
                    self.failovers.remove(&participant);
                    if self.forks.contains_key(&participant) {
                        self.settle_fork(participant, call, now);
                    }
                }
                let awaiting_answer = self.calls.get(&call).is_some_and(|leg| leg.media.is_some());
                if awaiting_answer {
                    match self.offer_answered(call, &answer) {
                        Ok(participant) => self.report_transfer(participant, 200, now),
                        Err(error) => {
                            tracing::warn!(%error, "cannot use the answer; hanging up");
                            let _ = self.ua.hangup(call, now);
                        }
                    }
                }
            }
            UaEvent::TransferRequested { call, key, target } => {
                if let Some(leg) = self.calls.get_mut(&call) {
                    leg.transfer_request = Some((key, target.clone()));
                    let participant = leg.participant;
                    self.emit_for(participant, |conference, participant| Event::TransferRequested {
                        conference,
                        participant,
                        target,
                    });
                }
            }
            UaEvent::TransferProgress { call, status, done } => {
                let Some(leg) = self.calls.get_mut(&call) else { return };
                let participant = leg.participant;
                if done && (200..300).contains(&status) {
                    // Transferred: our part in the call is over (RFC 5589 §6.1).
                    leg.hangup_reason = Some(LeaveReason::Transferred);
                    let _ = self.ua.hangup(call, now);
                }
                self.emit_for(participant, |conference, participant| Event::TransferProgress {
                    conference,
                    participant,
                    status,
                    done,
                });
            }
            UaEvent::Register(register) => self.handle_register(register, now),
            UaEvent::Subscribe { key, request_uri, source, authorization } => {
                if let Err(error) = self.handle_subscribe(key, &request_uri, source, authorization.as_deref(), now) {
                    tracing::warn!(%error, "SUBSCRIBE went unanswered");
                }
            }
            UaEvent::PingAnswered { key, status } => {
                let Some((user, contact)) = self.pings.remove(&key) else { return };
                // Any answer, even an error, says the phone is there.
                if status == 408 {
                    tracing::info!(%user, %contact, "a registered phone stopped answering; dropping its registration");
                    self.shared.registrar.lock().remove(&user, &contact);
                }
            }
            UaEvent::Reoffer { call, offer } => {
                let answered = match self.answer_reoffer(call, &offer) {
                    Ok(answer) => self.ua.answer_reoffer(call, answer, now),
                    Err(error) => {
                        tracing::info!(%error, "refusing a re-offer; the session stays as it was");
                        self.ua.reject_reoffer(call, 488, now)
                    }
                };
                if let Err(error) = answered {
                    tracing::warn!(%error, "re-offer went unanswered");
                }
            }
            // Answers to our REGISTERs; the registration client sends no other requests.
            UaEvent::RequestAnswered { key, status, reason, headers } => {
                self.registrations.handle_response(&mut self.ua, key, status, &reason, &headers, now);
            }
            UaEvent::ReofferAnswered { call, answer } => {
                if let Err(error) = self.reoffer_answered(call, &answer) {
                    tracing::warn!(%error, "cannot use the answer to our re-offer; hanging up");
                    let _ = self.ua.hangup(call, now);
                }
            }
            UaEvent::ReofferFailed { call, status } => {
                tracing::info!(call = call.0, status, "the peer refused our re-offer; the session stays as it was");
            }
            UaEvent::Failed { call, status, reason } => {
                // RFC 3263 §4.3: no answer, no connection or 503 from one
                // server of the name's, and the next is tried.
                let failover = self.calls.get(&call).and_then(|leg| self.failovers.remove(&leg.participant));
                if let Some(participant) = self.calls.get(&call).map(|leg| leg.participant) {
                    if self.fork_failed(participant, call, status, now) {
                        self.forget(call);
                        return;
                    }
                }
                if let Some(leg) = self.forget(call) {
                    let participant = leg.participant;
                    let hung_up = leg.hangup_reason.is_some();
                    if let Some(failover) = failover.filter(|_| matches!(status, 408 | 503) && !hung_up) {
                        tracing::info!(participant = participant.0, status, "trying the next server");
                        match self.dial_next_server(participant, failover) {
                            Some(Ok(())) => return,
                            Some(Err(error)) => tracing::info!(%error, "the next server cannot be called"),
                            None => {}
                        }
                    }
                    self.report_transfer(participant, status, now);
                    self.shared.participant_gone(participant, |entry| {
                        Some(Event::DialFailed { conference: entry.conference.clone(), participant, status, reason })
                    });
                }
            }
            UaEvent::Ended { call, reason } => {
                if let Some(leg) = self.forget(call) {
                    let reason = leg.hangup_reason.unwrap_or(match reason {
                        EndReason::RemoteHangup => LeaveReason::RemoteHangup,
                        EndReason::LocalHangup => LeaveReason::LocalHangup,
                        EndReason::Cancelled => LeaveReason::Cancelled,
                        EndReason::AckTimeout | EndReason::SessionExpired | EndReason::PeerGone => LeaveReason::Timeout,
                    });
                    if leg.media.is_none() {
                        self.shared.participant_left(leg.participant, reason);
                    } else {
                        // A late-offer call whose media never started never joined,
                        // so it does not leave either.
                        tracing::info!(participant = leg.participant.0, ?reason, "call ended before its media started");
                        self.shared.participant_gone(leg.participant, |_| None);
                    }
                }
            }
        }
    }

    /// Tells the referrer how a call placed for its REFER goes.
    fn report_transfer(&mut self, participant: ParticipantId, status: u16, now: Instant) {
        let Some(referrer) = self.transfers.get(&participant).copied() else { return };
        if status >= 200 {
            self.transfers.remove(&participant);
        }
        if let Err(error) = self.ua.notify_transfer(referrer, status, now) {
            tracing::debug!(%error, "the referrer is gone; no NOTIFY");
        }
    }

    /// Answers a participant's REFER: accepted, the target is dialled into
    /// the participant's conference and the participant hears how it goes;
    /// refused, 603.
    fn answer_transfer(&mut self, participant: ParticipantId, accept: bool, now: Instant) -> Result<()> {
        let call = *self.by_participant.get(&participant).ok_or(Error::NotFound("a call".into()))?;
        let leg = self.calls.get_mut(&call).ok_or(Error::NotFound("a call".into()))?;
        let (key, target) = leg.transfer_request.take().ok_or(Error::NotFound("a transfer request".into()))?;
        if !accept {
            return Ok(self.ua.reject_transfer(key, 603, now)?);
        }
        self.ua.accept_transfer(key, now)?;
        let conference = self.shared.conference_of(participant).ok_or(Error::NotFound("participant".into()))?;
        let id = ParticipantId(self.shared.next_id());
        let controls = Arc::new(ParticipantControls::default());
        let entry =
            ParticipantEntry::new(ParticipantKind::Outbound, Some(target.clone()), ParticipantState::Calling, controls);
        self.shared.add_participant(id, &conference, entry, None)?;
        self.transfers.insert(id, call);
        let (reply, _) = std::sync::mpsc::channel();
        self.handle_command(SipCommand::Dial { participant: id, target, credentials: None, reply });
        Ok(())
    }

    fn emit_for(&self, participant: ParticipantId, make: impl FnOnce(String, ParticipantId) -> Event) {
        let conference = self.shared.conference_of(participant);
        if let Some(conference) = conference {
            self.shared.emit(make(conference, participant));
        }
    }

    fn forget(&mut self, call: CallKey) -> Option<CallLeg> {
        let leg = self.calls.remove(&call)?;
        if self.by_participant.get(&leg.participant) == Some(&call) {
            self.by_participant.remove(&leg.participant);
        }
        self.failovers.remove(&leg.participant);
        if let Some(task) = &leg.receive_task {
            task.handle.abort();
        }
        Some(leg)
    }

    /// An RTP port and our side of a session for a call of room `room`,
    /// with the room's codec preference (its policy's, or the endpoint's).
    fn local_media(&self, room: &str) -> Result<MediaPort> {
        let bind_ip = self.shared.sip_addr.ip();
        let (socket, rtcp_socket, lease) = self.shared.ports.bind(bind_ip)?;
        let port = socket.local_addr()?.port();
        // A room a caller's INVITE is about to create will have the endpoint's room policy.
        let room_codecs = match self.shared.registry.lock().conferences.get(room) {
            Some(conference) => conference.policy.codecs.clone(),
            None => self.shared.config.room_policy.codecs.clone(),
        };
        let local = LocalMedia {
            address: SocketAddr::new(self.shared.advertised_ip, port),
            codecs: room_codecs.unwrap_or_else(|| self.shared.codecs().to_vec()),
            opus_dtx: self.shared.config.opus.dtx,
            session_id: rand::random::<u32>() as u64,
            session_version: 1,
        };
        Ok(MediaPort { socket, rtcp_socket, lease, local })
    }

    /// Where registered user `user` can be called now (its most recent
    /// contact, and the address to send to), or why not: 480 when the user exists but has no live
    /// registration, 404 when there is no such user.
    /// A user's live contacts in groups of equal q-value, the highest
    /// first, each with where to send to it.
    fn registered_contacts(&self, user: &str, now: Instant) -> Result<Vec<ContactGroup>, (u16, &'static str)> {
        let routes = self.shared.registrar.lock().routes(now, user);
        if routes.is_empty() {
            return Err(match self.shared.authenticator.lock().has_user(user) {
                true => (480, "Temporarily Unavailable"),
                false => (404, "Not Found"),
            });
        }
        let group = |group: Vec<(String, Peer)>| {
            let contacts = group.into_iter().map(|(contact, source)| {
                let contact = contact.trim_matches(|c| c == '<' || c == '>').to_string();
                let destination = destination(&contact, source);
                (contact, destination)
            });
            contacts.collect()
        };
        Ok(routes.into_iter().map(group).collect())
    }

    /// Pings every registered phone, which also keeps NAT mappings open:
    /// OPTIONS over UDP, a CRLF ping on the phone's TCP or TLS connection
    /// (RFC 5626 §3.5.1). A phone whose connection is gone cannot be
    /// reached, so its registration goes.
    fn ping_registrations(&mut self) {
        let now = Instant::now();
        let bindings = self.shared.registrar.lock().bindings(now);
        for (user, contact, source) in bindings {
            if source.transport.is_reliable() {
                if self.connections.is_open(source) {
                    self.connections.send(source, KEEPALIVE_PING.to_vec());
                } else {
                    tracing::info!(%user, %contact, "a registered phone's connection closed; dropping its registration");
                    self.shared.registrar.lock().remove(&user, &contact);
                }
                continue;
            }
            let contact_uri = contact.trim_matches(|c| c == '<' || c == '>');
            match self.ua.ping(contact_uri, destination(contact_uri, source), now) {
                Ok(key) => {
                    self.pings.insert(key, (user, contact));
                }
                Err(error) => tracing::debug!(%error, %contact, "cannot ping a registered contact"),
            }
        }
    }

    /// Applies a REGISTER to the location service. A user registers only
    /// after authenticating as itself: an open registrar would let anyone
    /// take a user's calls.
    fn handle_register(&mut self, register: RegisterRequest, now: Instant) {
        let RegisterRequest { key, user, change, expires, call_id, cseq, source, authorization } = register;
        let verdict =
            self.shared.authenticator.lock().check(now, source.addr.ip(), "REGISTER", authorization.as_deref());
        let answer = match verdict {
            Verdict::Accept { user: authenticated } if authenticated == user => {
                let registration = Registration { user: &user, change, expires, call_id: &call_id, cseq, source };
                match self.shared.registrar.lock().register(now, registration) {
                    Ok(bindings) => {
                        tracing::info!(%user, %source, contacts = bindings.len(), "registered");
                        self.ua.answer_register(key, 200, &bindings, Vec::new(), now)
                    }
                    Err(RegisterError::IntervalTooBrief) => {
                        let min = vec![("Min-Expires", registrar::MIN_EXPIRES.to_string())];
                        self.ua.answer_register(key, 423, &[], min, now)
                    }
                    Err(error) => self.ua.answer_register(key, error.status(), &[], Vec::new(), now),
                }
            }
            Verdict::Accept { .. } | Verdict::Forbidden => self.ua.answer_register(key, 403, &[], Vec::new(), now),
            Verdict::Challenge(values) => {
                let headers = values.into_iter().map(|v| ("WWW-Authenticate", v)).collect();
                self.ua.answer_register(key, 401, &[], headers, now)
            }
        };
        if let Err(error) = answer {
            tracing::warn!(%error, "REGISTER went unanswered");
        }
    }

    /// The room an incoming call joins, and whether it came through the
    /// registrar of one of our accounts: a Request-URI whose user is an
    /// account's (its registered Contact, or its AOR) goes to the account's
    /// room; any other to the room its user names.
    fn room_for(&self, request_uri: &str, source: Peer) -> (String, bool) {
        let user = room_of(request_uri);
        match self.accounts.values().find(|route| route.user == user) {
            Some(route) => (route.room.clone(), route.is_registrar(source.addr.ip())),
            None => (user, false),
        }
    }

    /// Whether a caller may join `room` (or a subscriber watch it, `method`
    /// being the request's): anyone, when the room (or, for a room it would
    /// create, the endpoint) does not require authentication; else the
    /// authenticator decides.
    fn admit(&self, room: &str, source: Peer, method: &str, authorization: Option<&str>, now: Instant) -> Verdict {
        let required = match self.shared.registry.lock().conferences.get(room) {
            Some(conference) => conference.require_authentication,
            None => self.shared.config.require_authentication,
        };
        if !required {
            return Verdict::Accept { user: String::new() };
        }
        let verdict = self.shared.authenticator.lock().check(now, source.addr.ip(), method, authorization);
        if let Verdict::Accept { user } = &verdict {
            tracing::info!(%user, %room, "caller authenticated");
        }
        verdict
    }

    /// Joins an inbound call to `room`, in the seat of participant
    /// `replaced` if it replaces one, or says which status to refuse it with.
    fn accept_incoming(
        &mut self,
        call: CallKey,
        room: &str,
        from: &str,
        offer: &[u8],
        replaced: Option<ParticipantId>,
        now: Instant,
    ) -> Result<(), (u16, Error)> {
        if self.shared.check_running().is_err() {
            return Err((503, Error::Stopped));
        }
        let room = room.to_string();
        if room.is_empty() {
            return Err((404, Error::NotFound("no room in the Request-URI".into())));
        }
        let exists = self.shared.registry.lock().conferences.contains_key(&room);
        if !exists && !self.shared.config.create_rooms_on_demand {
            return Err((404, Error::NotFound(room)));
        }
        let seat = replaced.and_then(|old| self.shared.seat_of(old));
        // The conference policy: a locked room gets 403, a full one 486 (or
        // its announcement), before a port is taken; joining checks again
        // under the registry's lock.
        let turned_away = match seat {
            Some(seat) if seat.admitted => false,
            // Checked as a newcomer, but never turned away: the old call
            // would be hung up for an announcement, and both lost.
            Some(_) if self.shared.check_room_open(&room).map_err(refusal)? => {
                return Err(refusal(Error::Full(room)));
            }
            Some(_) => false,
            None => self.shared.check_room_open(&room).map_err(refusal)?,
        };
        let new_entry = |state| {
            let controls = Arc::new(ParticipantControls::default());
            let mut entry = ParticipantEntry::new(ParticipantKind::Inbound, Some(from.to_string()), state, controls);
            if let Some(seat) = seat {
                entry.take_seat(seat);
            }
            if turned_away {
                entry.turn_away();
            }
            entry
        };
        let media = self.local_media(&room).map_err(|e| (503, e))?;
        let participant = ParticipantId(self.shared.next_id());
        // With an offer, answer it and start the media now. Without one (late
        // offer, RFC 3264 §4), put our offer in the 2xx and start the media when
        // the answer comes in the ACK.
        let (sdp, joined, session) = if offer.is_empty() {
            let sdp = sdp::offer(&media.local);
            let entry = new_entry(ParticipantState::Calling);
            let joined = self.shared.join_room(participant, &room, entry, None);
            (sdp, joined.map(|()| (Some(media), None)), None)
        } else {
            let offer = SessionDescription::parse(offer).map_err(|e| (488, e.into()))?;
            let (sdp, negotiated) = sdp::answer(&offer, &media.local).map_err(|e| (488, e.into()))?;
            let session = Some((media.local.clone(), negotiated));
            let mix_rate = self.shared.room_sample_rate(&room);
            let mut entry = new_entry(ParticipantState::Connected);
            let (mix, task, dtmf) =
                self.rtp_leg(participant, entry.controls.clone(), media, negotiated, mix_rate).map_err(|e| (500, e))?;
            entry.dtmf = Some(dtmf);
            entry.codec = Some(negotiated.codec);
            let joined = self.shared.join_room(participant, &room, entry, Some(mix));
            if joined.is_err() {
                task.handle.abort();
            }
            (sdp, joined.map(|()| (None, Some(task))), session)
        };
        let (media, receive_task) = joined.map_err(refusal)?;
        let _ = self.ua.answer(call, sdp.print().into_bytes(), now);
        let started = receive_task.is_some();
        let leg = CallLeg { participant, media, receive_task, hangup_reason: None, session, transfer_request: None };
        self.calls.insert(call, leg);
        self.by_participant.insert(participant, call);
        if started {
            self.shared.emit_joined(room, participant, ParticipantKind::Inbound, from.to_string());
        }
        Ok(())
    }

    /// Answers an in-dialog offer: the codec in use if it is offered, else
    /// the first of ours that is (the leg switches to it); the direction it
    /// asks for (sendonly, inactive or address 0.0.0.0 put the call on
    /// hold); a new remote address if it names one. Returns the answer's bytes.
    fn answer_reoffer(&mut self, call: CallKey, offer: &[u8]) -> Result<Vec<u8>> {
        let leg = self.calls.get(&call).ok_or(Error::NotFound("call".into()))?;
        let (local, current) = leg.session.as_ref().ok_or(Error::NotFound("a running session".into()))?;
        let mut codecs = vec![current.codec];
        codecs.extend(local.codecs.iter().filter(|&&codec| codec != current.codec));
        let preferring_current = LocalMedia { codecs, session_version: local.session_version + 1, ..local.clone() };
        let (answer, negotiated) = sdp::answer(&SessionDescription::parse(offer)?, &preferring_current)?;
        self.adopt_session(call, negotiated)?;
        if let Some((local, _)) = self.calls.get_mut(&call).and_then(|leg| leg.session.as_mut()) {
            local.session_version += 1;
        }
        Ok(answer.print().into_bytes())
    }

    /// Sends our own re-offer: inactive to hold a participant, sendrecv to
    /// resume it. The change takes effect when the peer answers.
    fn hold(&mut self, participant: ParticipantId, held: bool, now: Instant) -> Result<()> {
        let direction = if held { Direction::Inactive } else { Direction::SendRecv };
        self.send_reoffer(participant, None, Some(direction), now)
    }

    /// Sends our own re-offer of `codec` alone, in the direction in use. The
    /// leg switches when the peer answers; a refusal leaves it as it was.
    fn change_codec(&mut self, participant: ParticipantId, codec: CodecKind, now: Instant) -> Result<()> {
        self.send_reoffer(participant, Some(codec), None, now)
    }

    /// Sends a re-offer of `codec` (default: the one in use) in `direction`
    /// (default: the one in use).
    fn send_reoffer(
        &mut self,
        participant: ParticipantId,
        codec: Option<CodecKind>,
        direction: Option<Direction>,
        now: Instant,
    ) -> Result<()> {
        let call = *self.by_participant.get(&participant).ok_or(Error::NotFound("a call".into()))?;
        let leg = self.calls.get_mut(&call).ok_or(Error::NotFound("a call".into()))?;
        let (local, current) = leg.session.as_mut().ok_or(Error::NotFound("a running session".into()))?;
        let codec = codec.unwrap_or(current.codec);
        if !local.codecs.contains(&codec) {
            return Err(Error::InvalidArgument(format!("{} is not one of the room's codecs", codec.encoding_name())));
        }
        local.session_version += 1;
        let offer = sdp::reoffer(local, current, codec, direction.unwrap_or(current.direction));
        self.ua.reoffer(call, offer.print().into_bytes(), now)?;
        Ok(())
    }

    /// The peer answered our re-offer: its answer becomes the leg's media.
    fn reoffer_answered(&mut self, call: CallKey, answer: &[u8]) -> Result<()> {
        let leg = self.calls.get(&call).ok_or(Error::NotFound("call".into()))?;
        let (local, _) = leg.session.as_ref().ok_or(Error::NotFound("a running session".into()))?;
        let negotiated = sdp::accept_answer(&SessionDescription::parse(answer)?, local)?;
        self.adopt_session(call, negotiated)
    }

    /// Makes a new offer/answer outcome the call's session: a new codec
    /// gives the leg a new coder (built here, swapped in by the mixer) and
    /// its receive task a new clock rate; then the direction and address.
    fn adopt_session(&mut self, call: CallKey, negotiated: NegotiatedMedia) -> Result<()> {
        let leg = self.calls.get(&call).ok_or(Error::NotFound("call".into()))?;
        let participant = leg.participant;
        let (_, current) = leg.session.as_ref().ok_or(Error::NotFound("a running session".into()))?;
        if negotiated.codec != current.codec {
            let mix_rate = self.shared.room_sample_rate(&self.shared.conference_of(participant).unwrap_or_default());
            let codec = self.leg_codec(&negotiated, mix_rate)?;
            self.shared.set_leg_codec(participant, codec)?;
        }
        let leg = self.calls.get_mut(&call).ok_or(Error::NotFound("call".into()))?;
        if let Some(task) = &leg.receive_task {
            task.format.set(negotiated.codec.clock_rate(), negotiated.telephone_event);
        }
        if let Some((_, current)) = leg.session.as_mut() {
            *current = negotiated;
        }
        self.apply_session(participant, &negotiated)
    }

    /// Points a leg's sending and receiving at a new offer/answer outcome:
    /// inactive, receive-only or address 0.0.0.0 means the call is on hold.
    fn apply_session(&self, participant: ParticipantId, negotiated: &NegotiatedMedia) -> Result<()> {
        let held = matches!(negotiated.direction, Direction::RecvOnly | Direction::Inactive)
            || negotiated.remote.ip().is_unspecified();
        let media = LegMedia {
            send: !held && matches!(negotiated.direction, Direction::SendRecv | Direction::SendOnly),
            receive: !held && negotiated.direction == Direction::SendRecv,
            remote: negotiated.remote,
            payload_type: negotiated.payload_type,
            telephone_event: negotiated.telephone_event,
            comfort_noise: negotiated.comfort_noise,
        };
        self.shared.set_leg_media(participant, media, held)
    }

    /// The coder for a negotiated codec, with the app's Opus settings
    /// narrowed by what the peer's fmtp asks for.
    fn leg_codec(&self, negotiated: &NegotiatedMedia, mix_rate: u32) -> Result<LegCodec> {
        let app = self.shared.config.opus;
        let opus = OpusSettings {
            fec: app.fec && negotiated.opus.fec,
            dtx: app.dtx && negotiated.opus.dtx,
            max_playback_rate: negotiated.opus.max_playback_rate,
            ..app
        };
        let codec = negotiated.codec.new_coder(&opus).map_err(|e| Error::InvalidArgument(e.to_string()))?;
        LegCodec::new(codec, negotiated.payload_type, mix_rate).map_err(|e| Error::InvalidArgument(e.to_string()))
    }

    /// Builds the mixer's side of an RTP leg and starts its receive task.
    #[allow(clippy::type_complexity)] // three parts that go three ways; a struct would only name them again
    fn rtp_leg(
        &self,
        participant: ParticipantId,
        controls: Arc<ParticipantControls>,
        media: MediaPort,
        negotiated: NegotiatedMedia,
        mix_rate: u32,
    ) -> Result<(Box<ParticipantMix>, ReceiveTask, DtmfQueue)> {
        let codec = self.leg_codec(&negotiated, mix_rate)?;
        let (producer, consumer) = rtrb::RingBuffer::new(RTP_RING);
        let (receive_socket, rtcp_socket) = {
            let _guard = self.shared.runtime.enter();
            // With RTCP on the RTP port, the RTCP port stays bound (so nobody
            // else takes it) but unread.
            let rtcp = if negotiated.rtcp_mux { None } else { Some(UdpSocket::from_std(media.rtcp_socket)?) };
            (UdpSocket::from_std(media.socket.try_clone()?)?, rtcp)
        };
        // A peer on hold (we only send, or nothing flows) is not expected to send.
        let peer_sends = matches!(negotiated.direction, Direction::SendRecv | Direction::RecvOnly);
        let ssrc = rand::random();
        let format = Arc::new(ReceiveFormat::new(negotiated.codec.clock_rate(), negotiated.telephone_event));
        let context = ReceiveContext {
            participant,
            shared: self.shared.clone(),
            controls: controls.clone(),
            format: format.clone(),
            media_timeout: self.shared.config.media_timeout.filter(|_| peer_sends),
            ssrc,
            remote: negotiated.remote,
        };
        let sockets = LegSockets { rtp: receive_socket, rtcp: rtcp_socket };
        let task = ReceiveTask { handle: self.shared.runtime.spawn(receive_media(sockets, producer, context)), format };
        let mut leg = RtpLeg::new(consumer, media.socket, negotiated.remote, codec, Some(Box::new(media.lease)));
        leg.ssrc = ssrc;
        if let Some(pt) = negotiated.comfort_noise {
            leg = leg.with_comfort_noise(pt);
        }
        if let Some(id) = negotiated.audio_level {
            leg = leg.with_audio_level(id);
        }
        // Every leg gets a digit queue: a re-offer may bring telephone-event.
        let (digits, queue) = rtrb::RingBuffer::new(DTMF_QUEUE);
        leg = leg.with_dtmf(negotiated.telephone_event, queue);
        let dtmf = DtmfQueue { digits, negotiated: negotiated.telephone_event.is_some() };
        leg.send = matches!(negotiated.direction, Direction::SendRecv | Direction::SendOnly)
            && !negotiated.remote.ip().is_unspecified();
        leg.receive = matches!(negotiated.direction, Direction::SendRecv | Direction::RecvOnly);
        let frame = mix_rate as usize / 50;
        Ok((Box::new(ParticipantMix::new(participant, controls, Leg::Rtp(leg), frame)), task, dtmf))
    }

    /// The peer answered our offer (in a 2xx, or in the ACK of a late-offer
    /// call): start the media and report the participant as joined.
    fn offer_answered(&mut self, call: CallKey, answer: &[u8]) -> Result<ParticipantId> {
        let leg = self.calls.get_mut(&call).ok_or(Error::NotFound("call".into()))?;
        let media = leg.media.take().ok_or(Error::NotFound("media".into()))?;
        let participant = leg.participant;
        let negotiated = sdp::accept_answer(&SessionDescription::parse(answer)?, &media.local)?;
        let (controls, kind, remote, conference) = self
            .shared
            .registry
            .lock()
            .participants
            .get(&participant)
            .map(|p| (p.controls.clone(), p.kind, p.remote.clone().unwrap_or_default(), p.conference.clone()))
            .ok_or(Error::NotFound("participant".into()))?;
        let mix_rate = self.shared.room_sample_rate(&conference);
        let session = (media.local.clone(), negotiated);
        let (mix, task, dtmf) = self.rtp_leg(participant, controls, media, negotiated, mix_rate)?;
        if let Some(leg) = self.calls.get_mut(&call) {
            leg.receive_task = Some(task);
            leg.session = Some(session);
        }
        self.shared.connect_participant(participant, mix, dtmf, negotiated.codec)?;
        if kind == ParticipantKind::Outbound {
            self.emit_for(participant, |conference, participant| Event::Answered { conference, participant });
        }
        if let Some(conference) = self.shared.conference_of(participant) {
            self.shared.emit_joined(conference, participant, kind, remote);
        }
        Ok(participant)
    }

    fn handle_command(&mut self, command: SipCommand) {
        let now = Instant::now();
        match command {
            SipCommand::Dial { participant, target, credentials, reply } => {
                let Some(parts) = message::uri_parts(&target) else {
                    let error = Error::InvalidArgument(format!("bad SIP URI {target:?}"));
                    return self.dial_result(participant, Err(error), reply);
                };
                // A user of our own domain (the realm): dial its contacts,
                // each sent to where its REGISTER came from.
                if let (true, Some(user)) = (parts.host.eq_ignore_ascii_case(&self.shared.config.realm), &parts.user) {
                    match self.registered_contacts(user, now) {
                        Ok(contacts) => {
                            // The target's URI headers (an attended transfer's Replaces) go with each.
                            let headers = &target[message::split_uri_headers(&target).0.len()..];
                            let with_headers = |group: ContactGroup| {
                                group.into_iter().map(|(c, peer)| (format!("{c}{headers}"), peer)).collect()
                            };
                            let groups = contacts.into_iter().map(with_headers).collect();
                            let result = self.dial_contacts(participant, groups, credentials);
                            self.dial_result(participant, result, reply);
                        }
                        Err((status, reason)) => {
                            self.shared.participant_gone(participant, |entry| {
                                let conference = entry.conference.clone();
                                Some(Event::DialFailed { conference, participant, status, reason: reason.into() })
                            });
                            let _ = reply.send(Ok(()));
                        }
                    }
                    return;
                }
                match locate::plan(&target) {
                    Some(Plan::Direct(peer)) => {
                        let result = self.dial(participant, &target, credentials, peer).map(|_| ());
                        self.dial_result(participant, result, reply);
                    }
                    // Look the name up without holding up every other call's signalling.
                    Some(plan) => {
                        let commands = self.shared.sip_commands.clone();
                        let shared = self.shared.clone();
                        self.shared.runtime.spawn(async move {
                            let destination = dns::locate(&shared.resolver, plan).await;
                            let resolved =
                                SipCommand::Resolved { participant, target, credentials, destination, reply };
                            let _ = commands.send(resolved);
                        });
                    }
                    None => {
                        let error = Error::InvalidArgument(format!("bad SIP URI {target:?}"));
                        self.dial_result(participant, Err(error), reply);
                    }
                }
            }
            SipCommand::Resolved { participant, target, credentials, destination, reply } => {
                let result = destination.and_then(|mut servers| {
                    // Tried from the end: the first server is popped first.
                    servers.reverse();
                    let failover = Failover { target, credentials, servers };
                    self.dial_next_server(participant, failover)
                        .unwrap_or_else(|| Err(Error::NotFound("no server to call".into())))
                });
                self.dial_result(participant, result, reply);
            }
            SipCommand::Hangup { participant, reason } => match self.by_participant.get(&participant).copied() {
                Some(call) => {
                    self.failovers.remove(&participant);
                    if self.forks.contains_key(&participant) {
                        self.settle_fork(participant, call, now);
                    }
                    if let Some(leg) = self.calls.get_mut(&call) {
                        leg.hangup_reason = Some(reason);
                    }
                    let _ = self.ua.hangup(call, now);
                }
                // A dial still looking up its host name: it ends here, and the
                // lookup's result finds it gone.
                None => self.shared.participant_left(participant, reason),
            },
            SipCommand::RegisterAccount { config, route, reply } => {
                let added = self.registrations.add(&mut self.ua, config, now).map_err(Error::from);
                if let Ok(account) = added {
                    tracing::info!(aor = route.aor, room = route.room, "registering");
                    for (peer, host) in &route.servers {
                        self.connections.resolved(peer.addr, host);
                    }
                    self.accounts.insert(account, route);
                }
                let _ = reply.send(added);
            }
            SipCommand::RegistrarFound { account, servers } => {
                let Some(route) = self.accounts.get_mut(&account) else { return };
                route.looking_up = false;
                match servers {
                    Ok(servers) if !servers.is_empty() => {
                        for (peer, host) in &servers {
                            self.connections.resolved(peer.addr, host);
                        }
                        self.registrations.set_servers(account, servers.iter().map(|(peer, _)| *peer).collect());
                        route.servers = servers;
                    }
                    Ok(_) => {}
                    Err(error) => tracing::info!(aor = route.aor, %error, "the registrar's name did not resolve"),
                }
            }
            SipCommand::UnregisterAccount { account, reply } => {
                let removed = self.registrations.remove(&mut self.ua, account, now);
                let _ = reply.send(removed.map_err(|_| Error::NotFound(format!("account {}", account.0))));
            }
            SipCommand::Hold { participant, held, reply } => {
                let _ = reply.send(self.hold(participant, held, now));
            }
            SipCommand::ChangeCodec { participant, codec, reply } => {
                let _ = reply.send(self.change_codec(participant, codec, now));
            }
            SipCommand::Transfer { participant, target, reply } => {
                let result = match self.by_participant.get(&participant) {
                    Some(call) => self.ua.refer(*call, &target, now).map_err(Error::from),
                    None => Err(Error::NotFound("a call".into())),
                };
                let _ = reply.send(result);
            }
            SipCommand::AnswerTransfer { participant, accept, reply } => {
                let _ = reply.send(self.answer_transfer(participant, accept, now));
            }
            SipCommand::RosterChanged { conference } => {
                if self.ua.subscription_count(&conference) > 0 {
                    self.roster_due.entry(conference).or_insert(now + ROSTER_COALESCE);
                }
            }
            SipCommand::Shutdown { .. } => unreachable!("handled by the task loop"),
        }
    }

    fn dial_result(
        &mut self,
        participant: ParticipantId,
        result: Result<()>,
        reply: std::sync::mpsc::Sender<Result<()>>,
    ) {
        if result.is_err() {
            self.report_transfer(participant, 503, Instant::now());
            self.shared.participant_gone(participant, |_| None);
        }
        let _ = reply.send(result);
    }

    /// Dials the next of a dial's servers (`None` when none is left); the
    /// rest are kept for the next failure.
    fn dial_next_server(&mut self, participant: ParticipantId, mut failover: Failover) -> Option<Result<()>> {
        let (peer, host) = failover.servers.pop()?;
        self.connections.resolved(peer.addr, &host);
        let dialled = self.dial(participant, &failover.target, failover.credentials.clone(), peer);
        if dialled.is_ok() && !failover.servers.is_empty() {
            self.failovers.insert(participant, failover);
        }
        Some(dialled.map(|_| ()))
    }

    /// One of a participant's forked calls failed: true when the dial goes
    /// on, with others of its group still trying or the next group rung. A
    /// 6xx (a global refusal, §16.7.9) ends the rest, and the last failure
    /// of the last group ends the dial.
    fn fork_failed(&mut self, participant: ParticipantId, call: CallKey, status: u16, now: Instant) -> bool {
        let Some(fork) = self.forks.get_mut(&participant) else { return false };
        fork.calls.retain(|c| *c != call);
        if status >= 600 {
            self.settle_fork(participant, call, now);
            return false;
        }
        if let Some(other) = fork.calls.first().copied() {
            self.by_participant.insert(participant, other);
            return true;
        }
        let Some(Fork { later, credentials, .. }) = self.forks.remove(&participant) else { return false };
        !later.is_empty() && self.dial_contacts(participant, later, credentials).is_ok()
    }

    /// Calls a registered user's contacts (RFC 3261 §16.6, as a forking
    /// proxy would): each group of equal q-value at once, the highest first,
    /// the next when all of one fail (`fork_failed`); the first to answer
    /// gets the call and the others are cancelled (`settle_fork`).
    fn dial_contacts(
        &mut self,
        participant: ParticipantId,
        mut groups: Vec<ContactGroup>,
        credentials: Option<Credentials>,
    ) -> Result<()> {
        let mut last_error = None;
        while !groups.is_empty() {
            let mut calls = Vec::new();
            for (contact, destination) in groups.remove(0) {
                match self.dial(participant, &contact, credentials.clone(), destination) {
                    Ok(call) => calls.push(call),
                    Err(error) => last_error = Some(error),
                }
            }
            if !calls.is_empty() {
                if calls.len() > 1 || !groups.is_empty() {
                    self.forks.insert(participant, Fork { calls, later: groups, credentials });
                }
                return Ok(());
            }
        }
        Err(last_error.unwrap_or_else(|| Error::NotFound("a contact".into())))
    }

    /// One of a participant's forked calls was answered, or failed for
    /// good (a 6xx): the others are cancelled (or, if they answer anyway,
    /// ACKed and ended by the agent) and forgotten.
    fn settle_fork(&mut self, participant: ParticipantId, kept: CallKey, now: Instant) {
        for call in self.forks.remove(&participant).map(|fork| fork.calls).unwrap_or_default() {
            if call != kept && self.calls.remove(&call).is_some() {
                let _ = self.ua.hangup(call, now);
            }
        }
        self.by_participant.insert(participant, kept);
    }

    /// Sends the INVITE; `now` is read here, after any name lookup, so the
    /// transaction's timers start when the request really leaves.
    fn dial(
        &mut self,
        participant: ParticipantId,
        target: &str,
        credentials: Option<Credentials>,
        destination: Peer,
    ) -> Result<CallKey> {
        self.shared.check_running()?;
        if !self.shared.registry.lock().participants.contains_key(&participant) {
            // Hung up, or its conference destroyed, while the name was looked up.
            return Err(Error::NotFound(format!("participant {}", participant.0)));
        }
        let room = self.shared.conference_of(participant).unwrap_or_default();
        let media = self.local_media(&room)?;
        let offer = sdp::offer(&media.local).print().into_bytes();
        // Calls as the account when it has one (servers check From against
        // it), else as the conference.
        let from_user = match &credentials {
            Some(credentials) => credentials.username.clone(),
            None => self.shared.conference_of(participant).unwrap_or_else(|| "sipbridge".into()),
        };
        let call = self.ua.dial(target, destination, &from_user, offer, credentials, Instant::now())?;
        let leg = CallLeg {
            participant,
            media: Some(media),
            receive_task: None,
            hangup_reason: None,
            session: None,
            transfer_request: None,
        };
        self.calls.insert(call, leg);
        self.by_participant.insert(participant, call);
        Ok(call)
    }

    /// Hangs up every call and un-registers every account, then keeps the
    /// agent running until the calls and accounts are gone or
    /// `SHUTDOWN_GRACE` passes: a dial still waiting for its first response
    /// can only be cancelled once one arrives, an answer that crossed the
    /// hangup must be ACKed and then ended with BYE, and an un-REGISTER may
    /// be challenged.
    async fn shutdown(&mut self, buf: &mut [u8], stream_events: &mut Receiver<StreamEvent>) {
        const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(2);
        let now = Instant::now();
        let calls: Vec<CallKey> = self.calls.keys().copied().collect();
        for call in calls {
            if let Some(leg) = self.calls.get_mut(&call) {
                leg.hangup_reason = Some(LeaveReason::EndpointStopped);
            }
            let _ = self.ua.hangup(call, now);
        }
        // Our bindings at upstream registrars go too, rather than linger
        // until they expire with calls routed to nobody.
        self.registrations.remove_all(&mut self.ua, now);
        self.ua.end_subscriptions(None, now);
        self.pump().await;
        let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
        let busy = |driver: &Self| driver.ua.call_count() > 0 || driver.registrations.account_count() > 0;
        while busy(self) && tokio::time::Instant::now() < deadline {
            let wake = self.ua.poll_timeout().map(tokio::time::Instant::from_std).unwrap_or(deadline).min(deadline);
            tokio::select! {
                received = self.socket.recv_from(buf) => self.received(received, buf),
                Some(event) = stream_events.recv() => self.stream_event(event),
                _ = tokio::time::sleep_until(wake) => self.ua.handle_timeout(Instant::now()),
            }
            self.pump().await;
        }
        // Whatever is left ends with the endpoint.
        let remaining: Vec<CallKey> = self.calls.keys().copied().collect();
        for call in remaining {
            if let Some(leg) = self.forget(call) {
                self.shared.participant_left(leg.participant, LeaveReason::EndpointStopped);
            }
        }
    }
}

/// The status that refuses a caller the room would not take.
fn refusal(error: Error) -> (u16, Error) {
    let status = match error {
        Error::Locked(_) => 403,
        Error::Full(_) => 486,
        _ => 500,
    };
    (status, error)
}

/// The room a Request-URI names: its user part, percent-unescaped; empty when it has none.
fn room_of(request_uri: &str) -> String {
    message::uri_parts(request_uri).and_then(|u| u.user).and_then(|u| message::unescape_user(&u)).unwrap_or_default()
}

/// Where to send to a registered `contact` whose REGISTER came from `source`:
/// over TCP or TLS, on the phone's connection; over UDP, a Contact on the
/// source's address is reachable as it says, one on another (a private
/// address behind NAT) only through the source, where the NAT keeps a mapping.
fn destination(contact: &str, source: Peer) -> Peer {
    if source.transport.is_reliable() {
        return source;
    }
    let addr = message::uri_socket_addr(contact).filter(|c| c.ip() == source.addr.ip()).unwrap_or(source.addr);
    Peer::udp(addr)
}

/// The rooms whose roster (RFC 4575) an event changes.
pub(crate) fn rosters_changed(event: &Event) -> [Option<&str>; 2] {
    match event {
        Event::ParticipantJoined { conference, .. }
        | Event::ParticipantLeft { conference, .. }
        | Event::Ringing { conference, .. }
        | Event::Answered { conference, .. }
        | Event::DialFailed { conference, .. }
        | Event::Hold { conference, .. }
        | Event::Muted { conference, .. }
        | Event::ModeratorJoined { conference, .. }
        | Event::PinAccepted { conference, .. }
        | Event::Locked { conference, .. }
        | Event::ConferenceDestroyed { conference } => [Some(conference), None],
        Event::ParticipantMoved { from, to, .. } => [Some(from), Some(to)],
        _ => [None, None],
    }
}

/// One participant as a conference-info user: its URI (or, for the app's
/// own audio, one we name it by), how far its call got, and which way its
/// audio flows.
fn roster_user(id: ParticipantId, entry: &ParticipantEntry, host: SocketAddr) -> User {
    let controls = &entry.controls;
    let muted = controls.muted.load(std::sync::atomic::Ordering::Relaxed);
    let held = controls.held.load(std::sync::atomic::Ordering::Relaxed);
    let deaf = controls.deaf.load(std::sync::atomic::Ordering::Relaxed);
    let admitted = entry.policy.admission() == Admission::Admitted;
    let status = match entry.state {
        ParticipantState::Calling if entry.kind == ParticipantKind::Outbound => EndpointStatus::DialingOut,
        ParticipantState::Calling => EndpointStatus::DialingIn,
        ParticipantState::Ringing => EndpointStatus::Alerting,
        ParticipantState::Connected if held => EndpointStatus::OnHold,
        ParticipantState::Connected if !admitted => EndpointStatus::Pending,
        ParticipantState::Connected if muted => EndpointStatus::MutedViaFocus,
        ParticipantState::Connected => EndpointStatus::Connected,
    };
    let joining = match entry.kind {
        ParticipantKind::Inbound => JoiningMethod::DialedIn,
        ParticipantKind::Outbound => JoiningMethod::DialedOut,
        ParticipantKind::Local => JoiningMethod::FocusOwner,
    };
    let in_mix = entry.state == ParticipantState::Connected && admitted && !held;
    let entity = entry.remote.clone().unwrap_or_else(|| format!("sip:participant-{}@{host}", id.0));
    let display_text = message::uri_parts(&entity).and_then(|u| u.user).and_then(|u| message::unescape_user(&u));
    User {
        entity,
        display_text,
        moderator: entry.policy.moderator,
        status,
        joining,
        media: MediaStatus::of(in_mix && !muted, in_mix && !deaf),
    }
}
