//! RFC 3261 §17 transactions as sans-IO state machines.
//!
//! A transaction owns the bytes it may have to send again and the instants its
//! timers fire at. It never reads a clock: every call takes `now`, and
//! [`ClientTransaction::poll_timeout`] / [`ServerTransaction::poll_timeout`]
//! say when the driver must call `handle_timeout` next. What a transaction sends
//! goes into an `out` vector the caller drains.

use std::time::{Duration, Instant};

use super::{Peer, Transmit};

/// The timer base values of §17.1.1.1, adjustable for tests and for networks
/// with long round trips.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimerConfig {
    /// RTT estimate (500 ms by default).
    pub t1: Duration,
    /// Cap on retransmit intervals of non-INVITE requests and INVITE responses (4 s).
    pub t2: Duration,
    /// Longest a message stays in the network (5 s).
    pub t4: Duration,
}

impl Default for TimerConfig {
    fn default() -> Self {
        Self { t1: Duration::from_millis(500), t2: Duration::from_secs(4), t4: Duration::from_secs(5) }
    }
}

impl TimerConfig {
    fn timeout(&self) -> Duration {
        self.t1 * 64
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientState {
    /// INVITE sent, nothing heard (the non-INVITE "Trying" state shares it).
    Calling,
    Proceeding,
    Completed,
    Terminated,
}

/// What a response means for the transaction user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseDisposition {
    /// Pass the response up.
    Deliver,
    /// A retransmission the transaction absorbed.
    Absorb,
}

/// A client transaction, INVITE (§17.1.1) or non-INVITE (§17.1.2).
#[derive(Debug)]
pub struct ClientTransaction {
    invite: bool,
    state: ClientState,
    request: Vec<u8>,
    destination: Peer,
    timers: TimerConfig,
    /// Timer A or E.
    retransmit_at: Option<Instant>,
    retransmit_interval: Duration,
    /// Timer B or F.
    timeout_at: Option<Instant>,
    /// Timer D or K.
    linger_until: Option<Instant>,
    /// ACK for a non-2xx final response, sent again for each retransmission of it.
    ack: Option<Vec<u8>>,
}

/// A timer that ended a client transaction without a final response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientTimeout {
    /// Timer B or F: no final response; the TU treats it as 408.
    NoResponse,
}

impl ClientTransaction {
    /// Starts a transaction; the request goes into `out` at once.
    pub fn start(
        invite: bool,
        request: Vec<u8>,
        destination: Peer,
        timers: TimerConfig,
        now: Instant,
        out: &mut Vec<Transmit>,
    ) -> Self {
        out.push(Transmit { destination, data: request.clone() });
        let retransmit_at = (!destination.transport.is_reliable()).then(|| now + timers.t1);
        Self {
            invite,
            state: ClientState::Calling,
            request,
            destination,
            timers,
            retransmit_at,
            retransmit_interval: timers.t1,
            timeout_at: Some(now + timers.timeout()),
            linger_until: None,
            ack: None,
        }
    }

    pub fn state(&self) -> ClientState {
        self.state
    }

    pub fn is_terminated(&self) -> bool {
        self.state == ClientState::Terminated
    }

    pub fn destination(&self) -> Peer {
        self.destination
    }

    /// The transport could not deliver the request (§17.1.4): the
    /// transaction ends, and the TU treats it as a 503.
    pub fn handle_transport_error(&mut self) {
        self.state = ClientState::Terminated;
        self.retransmit_at = None;
        self.timeout_at = None;
        self.linger_until = None;
    }

    /// Feeds a response that matched this transaction. `make_ack` builds the
    /// ACK for a non-2xx final response to an INVITE (§17.1.1.3); it is called
    /// at most once.
    pub fn handle_response(
        &mut self,
        status: u16,
        make_ack: impl FnOnce() -> Option<Vec<u8>>,
        now: Instant,
        out: &mut Vec<Transmit>,
    ) -> ResponseDisposition {
        let provisional = status < 200;
        match (self.state, provisional) {
            (ClientState::Calling | ClientState::Proceeding, true) => {
                self.state = ClientState::Proceeding;
                if self.invite {
                    // Timers A and B only run in Calling (§17.1.1.2): once the callee
                    // rings, how long to wait is the TU's choice (it may CANCEL).
                    self.retransmit_at = None;
                    self.timeout_at = None;
                } else if let Some(at) = self.retransmit_at.as_mut() {
                    // Non-INVITE retransmits at T2 once proceeding (§17.1.2.2).
                    self.retransmit_interval = self.timers.t2;
                    *at = now + self.timers.t2;
                }
                ResponseDisposition::Deliver
            }
            (ClientState::Calling | ClientState::Proceeding, false) => {
                self.retransmit_at = None;
                self.timeout_at = None;
                if self.invite && status < 300 {
                    // The 2xx goes to the TU, which ACKs it; the transaction ends.
                    self.state = ClientState::Terminated;
                } else {
                    if let Some(ack) = make_ack().filter(|_| self.invite) {
                        out.push(Transmit { destination: self.destination, data: ack.clone() });
                        self.ack = Some(ack);
                    }
                    self.enter_completed(now);
                }
                ResponseDisposition::Deliver
            }
            (ClientState::Completed, false) => {
                if let Some(ack) = &self.ack {
                    out.push(Transmit { destination: self.destination, data: ack.clone() });
                }
                ResponseDisposition::Absorb
            }
            _ => ResponseDisposition::Absorb,
        }
    }

    fn enter_completed(&mut self, now: Instant) {
        let linger = match (self.destination.transport.is_reliable(), self.invite) {
            (true, _) => Duration::ZERO,
            // Timer D: at least 32 s for unreliable transports.
            (false, true) => Duration::from_secs(32).max(self.timers.timeout()),
            // Timer K.
            (false, false) => self.timers.t4,
        };
        self.state = ClientState::Completed;
        self.linger_until = Some(now + linger);
    }

    /// When `handle_timeout` must next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        [self.retransmit_at, self.timeout_at, self.linger_until].into_iter().flatten().min()
    }

    /// Fires the timers due at `now`.
    pub fn handle_timeout(&mut self, now: Instant, out: &mut Vec<Transmit>) -> Option<ClientTimeout> {
        if self.linger_until.is_some_and(|t| now >= t) {
            self.linger_until = None;
            self.state = ClientState::Terminated;
            return None;
        }
        if self.timeout_at.is_some_and(|t| now >= t) {
            self.timeout_at = None;
            self.retransmit_at = None;
            self.state = ClientState::Terminated;
            return Some(ClientTimeout::NoResponse);
        }
        if let Some(at) = self.retransmit_at.filter(|t| now >= *t) {
            out.push(Transmit { destination: self.destination, data: self.request.clone() });
            self.retransmit_interval = if self.invite {
                self.retransmit_interval * 2
            } else {
                (self.retransmit_interval * 2).min(self.timers.t2)
            };
            self.retransmit_at = Some(at.max(now) + self.retransmit_interval);
        }
        None
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerState {
    /// Non-INVITE request received, no response yet.
    Trying,
    Proceeding,
    /// Final response sent; for INVITE a non-2xx waiting for its ACK.
    Completed,
    /// INVITE: ACK received for the non-2xx.
    Confirmed,
    /// INVITE: 2xx sent, waiting for the ACK (RFC 6026 §7.1).
    Accepted,
    Terminated,
}

/// A timer that ended a server transaction without the ACK it waited for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerTimeout {
    /// Timer H (non-2xx) or the 64*T1 limit on 2xx retransmissions (§13.3.1.4).
    NoAck,
}

/// A server transaction, INVITE (§17.2.1) or non-INVITE (§17.2.2).
///
/// Unlike the letter of RFC 3261, the INVITE server transaction also keeps
/// sending its 2xx until the ACK arrives (the UAS core's job in §13.3.1.4):
/// the retransmission schedule is the same as Timer G's, and keeping both in
/// one place means one set of timers to test.
#[derive(Debug)]
pub struct ServerTransaction {
    invite: bool,
    state: ServerState,
    destination: Peer,
    timers: TimerConfig,
    last_response: Option<Vec<u8>>,
    /// Timer G (non-2xx) or the 2xx retransmission timer.
    retransmit_at: Option<Instant>,
    retransmit_interval: Duration,
    /// Timer H, or the 64*T1 bound on 2xx retransmission.
    ack_deadline: Option<Instant>,
    /// Timer I, J or L.
    linger_until: Option<Instant>,
}

impl ServerTransaction {
    pub fn new(invite: bool, destination: Peer, timers: TimerConfig) -> Self {
        Self {
            invite,
            state: if invite { ServerState::Proceeding } else { ServerState::Trying },
            destination,
            timers,
            last_response: None,
            retransmit_at: None,
            retransmit_interval: timers.t1,
            ack_deadline: None,
            linger_until: None,
        }
    }

    pub fn state(&self) -> ServerState {
        self.state
    }

    pub fn is_terminated(&self) -> bool {
        self.state == ServerState::Terminated
    }

    /// Whether a final response has been sent.
    pub fn is_final(&self) -> bool {
        !matches!(self.state, ServerState::Trying | ServerState::Proceeding)
    }

    /// The request came again: send the last response again, if any (§17.2.1, §17.2.2).
    pub fn handle_retransmission(&self, out: &mut Vec<Transmit>) {
        let resend = match self.state {
            ServerState::Proceeding | ServerState::Completed => true,
            // A retransmitted INVITE after the 2xx: the 2xx timer covers it.
            ServerState::Accepted => true,
            _ => false,
        };
        if let (true, Some(response)) = (resend, &self.last_response) {
            out.push(Transmit { destination: self.destination, data: response.clone() });
        }
    }

    /// The TU sends a response through the transaction.
    pub fn send_response(&mut self, status: u16, response: Vec<u8>, now: Instant, out: &mut Vec<Transmit>) {
        if self.is_final() {
            return;
        }
        out.push(Transmit { destination: self.destination, data: response.clone() });
        self.last_response = Some(response);
        let unreliable = !self.destination.transport.is_reliable();
        match (self.invite, status) {
            (_, 100..=199) => self.state = ServerState::Proceeding,
            (true, _) => {
                self.state = if status < 300 { ServerState::Accepted } else { ServerState::Completed };
                // 2xx is retransmitted even over reliable transports (§13.3.1.4).
                if unreliable || status < 300 {
                    self.retransmit_interval = self.timers.t1;
                    self.retransmit_at = Some(now + self.timers.t1);
                }
                self.ack_deadline = Some(now + self.timers.timeout());
            }
            (false, _) => {
                self.state = ServerState::Completed;
                // Timer J.
                let linger = if unreliable { self.timers.timeout() } else { Duration::ZERO };
                self.linger_until = Some(now + linger);
            }
        }
    }

    /// An ACK for the final response arrived (matched by branch for non-2xx,
    /// by dialog for 2xx).
    pub fn handle_ack(&mut self, now: Instant) {
        match self.state {
            ServerState::Completed if self.invite => {
                self.state = ServerState::Confirmed;
                self.retransmit_at = None;
                self.ack_deadline = None;
                // Timer I.
                let linger = if self.destination.transport.is_reliable() { Duration::ZERO } else { self.timers.t4 };
                self.linger_until = Some(now + linger);
            }
            ServerState::Accepted => {
                self.retransmit_at = None;
                self.ack_deadline = None;
                // Timer L absorbs INVITE retransmissions still in flight.
                self.linger_until = Some(now + self.timers.timeout());
                self.state = ServerState::Confirmed;
            }
            _ => {}
        }
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        [self.retransmit_at, self.ack_deadline, self.linger_until].into_iter().flatten().min()
    }

    pub fn handle_timeout(&mut self, now: Instant, out: &mut Vec<Transmit>) -> Option<ServerTimeout> {
        if self.linger_until.is_some_and(|t| now >= t) {
            self.linger_until = None;
            self.state = ServerState::Terminated;
            return None;
        }
        if self.ack_deadline.is_some_and(|t| now >= t) {
            self.ack_deadline = None;
            self.retransmit_at = None;
            self.state = ServerState::Terminated;
            return Some(ServerTimeout::NoAck);
        }
        if let Some(at) = self.retransmit_at.filter(|t| now >= *t) {
            if let Some(response) = &self.last_response {
                out.push(Transmit { destination: self.destination, data: response.clone() });
            }
            self.retransmit_interval = (self.retransmit_interval * 2).min(self.timers.t2);
            self.retransmit_at = Some(at.max(now) + self.retransmit_interval);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::Transport;

    fn addr() -> Peer {
        Peer::udp("127.0.0.1:5060".parse().unwrap())
    }

    /// A client transaction (INVITE or BYE) to `addr()` with the default timers.
    fn client(invite: bool, transport: Transport, now: Instant, out: &mut Vec<Transmit>) -> ClientTransaction {
        let request = if invite { b"INVITE".to_vec() } else { b"BYE".to_vec() };
        let destination = Peer { transport, ..addr() };
        ClientTransaction::start(invite, request, destination, TimerConfig::default(), now, out)
    }

    /// Runs the timers of `tx` until `until`, returning the offsets (ms from
    /// `start`) at which something was sent and the timeout result, if any.
    fn run_client(tx: &mut ClientTransaction, start: Instant, until: Duration) -> (Vec<u128>, Option<ClientTimeout>) {
        let mut sent = Vec::new();
        let mut result = None;
        while let Some(at) = tx.poll_timeout() {
            if at > start + until {
                break;
            }
            let mut out = Vec::new();
            if let Some(t) = tx.handle_timeout(at, &mut out) {
                result = Some(t);
            }
            sent.extend(out.iter().map(|_| (at - start).as_millis()));
        }
        (sent, result)
    }

    #[test]
    fn invite_client_timer_a_doubles_and_timer_b_fires() {
        let now = Instant::now();
        let mut out = Vec::new();
        let mut tx = client(true, Transport::Udp, now, &mut out);
        assert_eq!(out.len(), 1);
        let (sent, result) = run_client(&mut tx, now, Duration::from_secs(40));
        assert_eq!(sent, vec![500, 1500, 3500, 7500, 15500, 31500]);
        assert_eq!(result, Some(ClientTimeout::NoResponse));
        assert!(tx.is_terminated());
    }

    #[test]
    fn non_invite_client_timer_e_caps_at_t2() {
        let now = Instant::now();
        let mut out = Vec::new();
        let mut tx = client(false, Transport::Udp, now, &mut out);
        let (sent, result) = run_client(&mut tx, now, Duration::from_secs(40));
        assert_eq!(&sent[..6], &[500, 1500, 3500, 7500, 11500, 15500]);
        assert_eq!(*sent.last().unwrap(), 31500);
        assert_eq!(result, Some(ClientTimeout::NoResponse));
    }

    #[test]
    fn provisional_stops_timers_a_and_b() {
        let now = Instant::now();
        let mut out = Vec::new();
        let mut tx = client(true, Transport::Udp, now, &mut out);
        let d = tx.handle_response(180, || unreachable!("no ACK for 1xx"), now + Duration::from_millis(100), &mut out);
        assert_eq!(d, ResponseDisposition::Deliver);
        assert_eq!(tx.poll_timeout(), None, "a ringing callee may take as long as it likes");
        assert_eq!(tx.state(), ClientState::Proceeding);
    }

    #[test]
    fn non_invite_keeps_timer_f_after_a_provisional() {
        let now = Instant::now();
        let mut out = Vec::new();
        let mut tx = client(false, Transport::Udp, now, &mut out);
        tx.handle_response(100, || None, now, &mut out);
        let (_, result) = run_client(&mut tx, now, Duration::from_secs(40));
        assert_eq!(result, Some(ClientTimeout::NoResponse));
    }

    #[test]
    fn invite_error_response_is_acked_once_per_retransmission() {
        let now = Instant::now();
        let mut out = Vec::new();
        let mut tx = client(true, Transport::Udp, now, &mut out);
        out.clear();
        assert_eq!(tx.handle_response(486, || Some(b"ACK".to_vec()), now, &mut out), ResponseDisposition::Deliver);
        assert_eq!(out.len(), 1);
        assert_eq!(tx.handle_response(486, || unreachable!(), now, &mut out), ResponseDisposition::Absorb);
        assert_eq!(out.len(), 2);
        assert_eq!(out[1].data, b"ACK");
        assert_eq!(tx.state(), ClientState::Completed);
        // Timer D ends it after 32 s, with no retransmission.
        let (sent, result) = run_client(&mut tx, now, Duration::from_secs(33));
        assert!(sent.is_empty());
        assert_eq!(result, None);
        assert!(tx.is_terminated());
    }

    #[test]
    fn invite_2xx_terminates_client_transaction() {
        let now = Instant::now();
        let mut out = Vec::new();
        let mut tx = client(true, Transport::Udp, now, &mut out);
        tx.handle_response(200, || unreachable!("2xx is ACKed by the TU"), now, &mut out);
        assert!(tx.is_terminated());
        assert_eq!(tx.poll_timeout(), None);
    }

    #[test]
    fn reliable_transport_never_retransmits() {
        let now = Instant::now();
        let mut out = Vec::new();
        let mut tx = client(false, Transport::Tcp, now, &mut out);
        let (sent, result) = run_client(&mut tx, now, Duration::from_secs(40));
        assert!(sent.is_empty());
        assert_eq!(result, Some(ClientTimeout::NoResponse));
    }

    #[test]
    fn non_invite_server_resends_final_until_timer_j() {
        let now = Instant::now();
        let mut out = Vec::new();
        let mut tx = ServerTransaction::new(false, addr(), TimerConfig::default());
        tx.handle_retransmission(&mut out);
        assert!(out.is_empty(), "nothing to resend before a response");
        tx.send_response(200, b"200".to_vec(), now, &mut out);
        tx.handle_retransmission(&mut out);
        assert_eq!(out.len(), 2);
        assert_eq!(tx.poll_timeout(), Some(now + Duration::from_secs(32)));
        assert_eq!(tx.handle_timeout(now + Duration::from_secs(32), &mut out), None);
        assert!(tx.is_terminated());
    }

    #[test]
    fn invite_server_retransmits_2xx_until_ack() {
        let now = Instant::now();
        let mut out = Vec::new();
        let mut tx = ServerTransaction::new(true, addr(), TimerConfig::default());
        tx.send_response(200, b"200".to_vec(), now, &mut out);
        let mut at = now;
        for expected in [500, 1000, 2000, 4000, 4000] {
            let next = tx.poll_timeout().unwrap();
            assert_eq!((next - at).as_millis(), expected);
            at = next;
            tx.handle_timeout(at, &mut out);
        }
        assert_eq!(out.len(), 6);
        tx.handle_ack(at);
        assert_eq!(tx.state(), ServerState::Confirmed);
        out.clear();
        // After the ACK: no more 2xx, only Timer L until the end.
        while let Some(next) = tx.poll_timeout() {
            tx.handle_timeout(next, &mut out);
        }
        assert!(out.is_empty());
        assert!(tx.is_terminated());
    }

    #[test]
    fn invite_server_gives_up_when_ack_never_comes() {
        let now = Instant::now();
        let mut out = Vec::new();
        let mut tx = ServerTransaction::new(true, addr(), TimerConfig::default());
        tx.send_response(486, b"486".to_vec(), now, &mut out);
        let mut result = None;
        while let Some(next) = tx.poll_timeout() {
            if let Some(r) = tx.handle_timeout(next, &mut out) {
                result = Some((r, next - now));
            }
        }
        assert_eq!(result, Some((ServerTimeout::NoAck, Duration::from_secs(32))));
        // 1 + retransmissions at 0.5, 1.5, 3.5, 7.5, 11.5, ... 31.5 s.
        assert_eq!(out.len(), 1 + 10);
    }

    #[test]
    fn invite_server_ack_for_error_confirms_then_timer_i() {
        let now = Instant::now();
        let mut out = Vec::new();
        let mut tx = ServerTransaction::new(true, addr(), TimerConfig::default());
        tx.send_response(100, b"100".to_vec(), now, &mut out);
        tx.handle_retransmission(&mut out);
        assert_eq!(out.len(), 2, "a retransmitted INVITE gets the last provisional again");
        tx.send_response(487, b"487".to_vec(), now, &mut out);
        tx.handle_ack(now + Duration::from_millis(10));
        assert_eq!(tx.state(), ServerState::Confirmed);
        assert_eq!(tx.poll_timeout(), Some(now + Duration::from_millis(10) + Duration::from_secs(5)));
    }
}
