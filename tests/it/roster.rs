//! The conference event package end to end: a subscriber on a plain UDP
//! socket watches a room of an endpoint fill up, a participant muted and
//! the room destroyed.

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use sipbridge::{Endpoint, EndpointConfig};

use crate::common::RATE;

/// A desk phone reduced to a socket: it sends SUBSCRIBEs and answers NOTIFYs.
struct Desk {
    socket: UdpSocket,
    bridge: SocketAddr,
}

impl Desk {
    fn new(port: u16, bridge: SocketAddr) -> Self {
        let socket = UdpSocket::bind(("127.0.0.1", port)).unwrap();
        Self { socket, bridge }
    }

    fn subscribe(&self, room: &str, cseq: u32) {
        let local = self.socket.local_addr().unwrap();
        let request = format!(
            "SUBSCRIBE sip:{room}@{bridge} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bK{room}{cseq}\r\nFrom: <sip:desk@{local}>;tag=desk\r\nTo: <sip:{room}@{bridge}>\r\nCall-ID: {room}-desk\r\nCSeq: {cseq} SUBSCRIBE\r\nContact: <sip:desk@{local}>\r\nEvent: conference\r\nAccept: application/conference-info+xml\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n",
            bridge = self.bridge
        );
        self.socket.send_to(request.as_bytes(), self.bridge).unwrap();
    }

    /// The next message within `timeout`; a NOTIFY is answered 200.
    fn next(&self, timeout: Duration) -> Option<String> {
        self.socket.set_read_timeout(Some(timeout)).unwrap();
        let mut buf = [0u8; 65_535];
        let (n, _) = self.socket.recv_from(&mut buf).ok()?;
        let message = String::from_utf8_lossy(&buf[..n]).to_string();
        if message.starts_with("NOTIFY ") {
            let line = |name: &str| {
                let value = message.split("\r\n").find_map(|l| l.strip_prefix(&format!("{name}: "))).unwrap();
                format!("{name}: {value}\r\n")
            };
            let ok = format!(
                "SIP/2.0 200 OK\r\n{}{}{}{}{}Content-Length: 0\r\n\r\n",
                line("Via"),
                line("From"),
                line("To"),
                line("Call-ID"),
                line("CSeq")
            );
            self.socket.send_to(ok.as_bytes(), self.bridge).unwrap();
        }
        Some(message)
    }

    /// The NOTIFYs that arrive until `quiet` passes without one.
    fn notifies_until_quiet(&self, quiet: Duration) -> Vec<String> {
        std::iter::from_fn(|| self.next(quiet)).filter(|m| m.starts_with("NOTIFY ")).collect()
    }
}

/// A room filling up reaches its subscriber as a few documents, not one
/// per join (changes within 150 ms go together); a muted participant shows
/// as muted by the conference and only receiving; a destroyed room ends
/// the subscription; an unknown room is refused.
#[test]
fn a_subscriber_sees_a_room_fill_up_in_a_few_documents_and_its_end() {
    let bridge = Endpoint::start(EndpointConfig {
        listen: "127.0.0.1:47580".parse().unwrap(),
        sample_rate: RATE,
        rtp_ports: 47640..=47659,
        ..Default::default()
    })
    .unwrap();
    let desk = Desk::new(47590, bridge.local_addr());
    desk.subscribe("nowhere", 1);
    let refused = desk.next(Duration::from_secs(2)).expect("an answer");
    assert!(refused.starts_with("SIP/2.0 404"), "{refused}");

    let room = bridge.create_conference("townhall").unwrap();
    desk.subscribe("townhall", 1);
    let ok = desk.next(Duration::from_secs(2)).expect("an answer");
    assert!(ok.starts_with("SIP/2.0 200") && ok.contains("Expires: 3600"), "{ok}");
    let first = desk.next(Duration::from_secs(2)).expect("the roster at once");
    assert!(first.contains("version=\"1\"") && first.contains("<user-count>0</user-count>"), "{first}");

    let started = Instant::now();
    let people: Vec<_> = (0..30).map(|_| room.add_local().unwrap()).collect();
    let joined = started.elapsed();
    let notifies = desk.notifies_until_quiet(Duration::from_millis(600));
    let last = notifies.last().expect("the joins are notified");
    assert!(last.contains("<user-count>30</user-count>"), "{last}");
    let most = 2 + (joined.as_millis() / 150) as usize;
    assert!(notifies.len() <= most, "{} NOTIFYs for 30 joins in {joined:?}", notifies.len());

    people[0].participant().set_muted(true).unwrap();
    let muted = desk.notifies_until_quiet(Duration::from_millis(600));
    assert_eq!(muted.len(), 1);
    assert!(muted[0].contains("<status>muted-via-focus</status>"), "{}", muted[0]);
    assert!(muted[0].contains("<status>recvonly</status>"), "{}", muted[0]);

    room.destroy().unwrap();
    let ended = desk.notifies_until_quiet(Duration::from_millis(600));
    let last = ended.last().expect("a last NOTIFY");
    assert!(last.contains("Subscription-State: terminated;reason=noresource"), "{last}");
}
