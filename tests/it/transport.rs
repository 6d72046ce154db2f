//! SIP over TCP and TLS between real sockets: two endpoints in one process,
//! and openssl's TLS client as a peer nobody here wrote; and RFC 3263
//! server location through a DNS server on loopback.

use std::io::Write;
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::rdata::{A, NAPTR, SRV};
use hickory_proto::rr::{Name, RData, Record};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use sipbridge::{Endpoint, EndpointConfig, Event, LeaveReason, ParticipantKind};

use crate::common::{assert_hear_each_other, endpoint, rtp_range, wait_event, RATE};

const WAIT: Duration = Duration::from_secs(5);

/// PEM files of a test CA and a certificate it signed for 127.0.0.1.
struct TestPki {
    dir: PathBuf,
}

impl TestPki {
    fn new(name: &str) -> Self {
        Self::for_names(name, "127.0.0.1")
    }

    /// A certificate for `subject` (an IP address or a DNS name).
    fn for_names(name: &str, subject: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("sipbridge-tls-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        // Names of their own: a leaf named like its issuer looks self-signed.
        ca_params.distinguished_name.push(DnType::CommonName, "sipbridge test CA");
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec![subject.to_string()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, subject);
        let cert = params.signed_by(&key, &issuer).unwrap();
        std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
        std::fs::write(dir.join("cert.pem"), cert.pem()).unwrap();
        std::fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();
        Self { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

impl Drop for TestPki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn tls_endpoint(pki: &TestPki, ca_file: Option<&Path>) -> Endpoint {
    tls_endpoint_with_dns(pki, ca_file, Vec::new())
}

fn tls_endpoint_with_dns(pki: &TestPki, ca_file: Option<&Path>, dns_servers: Vec<SocketAddr>) -> Endpoint {
    Endpoint::start(EndpointConfig {
        dns_servers,
        listen: "127.0.0.1:0".parse().unwrap(),
        tls_listen: Some("127.0.0.1:0".parse().unwrap()),
        tls_certificate: Some(pki.path("cert.pem")),
        tls_private_key: Some(pki.path("key.pem")),
        tls_ca_file: ca_file.map(Path::to_path_buf),
        sample_rate: RATE,
        rtp_ports: rtp_range(),
        ..Default::default()
    })
    .expect("endpoint with TLS starts")
}

fn joined(e: &Event) -> Option<ParticipantKind> {
    match e {
        Event::ParticipantJoined { kind, .. } if *kind != ParticipantKind::Local => Some(*kind),
        _ => None,
    }
}

fn left(e: &Event) -> Option<LeaveReason> {
    match e {
        Event::ParticipantLeft { reason, .. } => Some(*reason),
        _ => None,
    }
}

/// A call over `transport` from one endpoint's room into another's: both
/// sides hear each other, and the caller's hangup reaches the callee.
fn call_and_hang_up(caller: &Endpoint, callee: &Endpoint, uri: &str) {
    let room = callee.create_conference("room").unwrap();
    let at_callee = room.add_local().unwrap();
    let out = caller.create_conference("out").unwrap();
    let at_caller = out.add_local().unwrap();
    let leg = out.dial(uri).unwrap();
    assert_eq!(wait_event(caller, WAIT, joined), ParticipantKind::Outbound);
    assert_eq!(wait_event(callee, WAIT, joined), ParticipantKind::Inbound);
    assert_hear_each_other(at_caller, at_callee);
    leg.hangup().unwrap();
    assert_eq!(wait_event(callee, WAIT, left), LeaveReason::RemoteHangup, "the BYE came over {uri}");
}

#[test]
fn calls_over_tcp() {
    let (caller, callee) = (endpoint(), endpoint());
    call_and_hang_up(&caller, &callee, &format!("sip:room@{};transport=tcp", callee.local_addr()));
}

#[test]
fn calls_over_tls_to_a_sips_uri() {
    let pki = TestPki::new("call");
    let callee = tls_endpoint(&pki, None);
    let caller = tls_endpoint(&pki, Some(&pki.path("ca.pem")));
    let tls = callee.tls_addr().expect("TLS listens");
    call_and_hang_up(&caller, &callee, &format!("sips:room@{tls}"));
}

#[test]
fn a_tls_server_it_does_not_trust_fails_the_call_at_once() {
    let pki = TestPki::new("untrusted");
    let callee = tls_endpoint(&pki, None);
    let caller = endpoint(); // trusts only the public roots
    let out = caller.create_conference("out").unwrap();
    out.dial(&format!("sips:room@{}", callee.tls_addr().unwrap())).unwrap();
    let status = wait_event(&caller, WAIT, |e| match e {
        Event::DialFailed { status, .. } => Some(*status),
        _ => None,
    });
    assert_eq!(status, 503, "the handshake failed: a transport error, not Timer B's 408 after 32 s");
}

/// openssl's TLS client sends OPTIONS over a TLS connection and reads our
/// 200 on it, then a CRLF keep-alive ping and our pong.
#[test]
fn openssl_s_client_gets_an_answer_over_tls() {
    let pki = TestPki::new("openssl");
    let server = tls_endpoint(&pki, None);
    let tls = server.tls_addr().unwrap();
    let mut client = Command::new("openssl")
        .args(["s_client", "-quiet", "-verify_return_error", "-connect", &tls.to_string()])
        .arg("-CAfile")
        .arg(pki.path("ca.pem"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("openssl runs");
    let options = format!(
        "OPTIONS sip:room@{tls} SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.1:1;branch=z9hG4bKssl1\r\nFrom: <sip:probe@127.0.0.1>;tag=1\r\nTo: <sip:room@{tls}>\r\nCall-ID: ssl-1\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n\r\n\r\n"
    );
    let mut stdin = client.stdin.take().unwrap();
    stdin.write_all(options.as_bytes()).unwrap();
    stdin.flush().unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    drop(stdin);
    let _ = client.kill();
    let output = client.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    // The pong comes straight from the connection, the 200 through the SIP
    // task: either may be written first.
    let response = text.strip_prefix("\r\n").or_else(|| text.strip_suffix("\r\n"));
    let response = response.unwrap_or_else(|| panic!("no pong: {text:?} {stderr}"));
    assert!(response.starts_with("SIP/2.0 200 OK\r\n"), "{text:?} {stderr}");
    assert!(response.contains("Call-ID: ssl-1\r\n") && response.ends_with("\r\n\r\n"), "{text:?}");
}

/// An authoritative DNS server on loopback answering from `records` (which
/// a test may change), and the questions it was asked ("TYPE name"), in order.
pub(crate) struct DnsServer {
    pub addr: SocketAddr,
    asked: Arc<Mutex<Vec<String>>>,
    records: Arc<Mutex<Vec<Record>>>,
    stop: Arc<AtomicBool>,
}

impl DnsServer {
    pub fn start(records: Vec<Record>) -> Self {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        let asked: Arc<Mutex<Vec<String>>> = Arc::default();
        let records = Arc::new(Mutex::new(records));
        let (addr, stop) = (socket.local_addr().unwrap(), Arc::<AtomicBool>::default());
        let (log, done, answers) = (Arc::clone(&asked), Arc::clone(&stop), Arc::clone(&records));
        std::thread::spawn(move || {
            let mut buf = [0u8; 1500];
            while !done.load(Ordering::Relaxed) {
                let Ok((n, from)) = socket.recv_from(&mut buf) else { continue };
                let Ok(query) = Message::from_vec(&buf[..n]) else { continue };
                let mut response = Message::new();
                response.set_id(query.id()).set_message_type(MessageType::Response).set_authoritative(true);
                response.set_recursion_desired(query.recursion_desired()).set_recursion_available(true);
                for question in query.queries() {
                    log.lock().unwrap().push(format!("{} {}", question.query_type(), question.name()));
                    let records = answers.lock().unwrap();
                    let found: Vec<Record> = records
                        .iter()
                        .filter(|r| r.name() == question.name() && r.record_type() == question.query_type())
                        .cloned()
                        .collect();
                    if found.is_empty() && !records.iter().any(|r| r.name() == question.name()) {
                        response.set_response_code(ResponseCode::NXDomain);
                    }
                    response.add_query(question.clone());
                    response.add_answers(found);
                }
                let _ = socket.send_to(&response.to_vec().unwrap(), from);
            }
        });
        Self { addr, asked, records, stop }
    }

    fn set_records(&self, records: Vec<Record>) {
        *self.records.lock().unwrap() = records;
    }

    fn asked(&self) -> Vec<String> {
        self.asked.lock().unwrap().clone()
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn name(text: &str) -> Name {
    Name::from_ascii(text).unwrap()
}

/// An endpoint that looks host names up at `dns`.
pub(crate) fn endpoint_asking(dns: &DnsServer) -> Endpoint {
    endpoint_asking_with_t1(dns, sipbridge::sip::TimerConfig::default().t1)
}

/// The same with SIP's T1 at `t1`: a request nothing answers times out
/// after 64 × T1 (Timers B and F).
fn endpoint_asking_with_t1(dns: &DnsServer, t1: Duration) -> Endpoint {
    Endpoint::start(EndpointConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        dns_servers: vec![dns.addr],
        sample_rate: RATE,
        rtp_ports: rtp_range(),
        timers: sipbridge::sip::TimerConfig { t1, ..Default::default() },
        ..Default::default()
    })
    .unwrap()
}

/// A TCP server on loopback that takes connections and never answers; its port.
fn silent_tcp_server() -> u16 {
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let held: Vec<_> = silent.incoming().take(4).collect();
        std::thread::sleep(Duration::from_secs(20));
        drop(held);
    });
    port
}

/// A record with no time to live: resolvers do not keep it, so a test
/// that changes the answers is heard at once.
pub(crate) fn record(owner: &str, data: RData) -> Record {
    Record::from_rdata(name(owner), 0, data)
}

fn naptr(order: u16, services: &str, replacement: &str) -> RData {
    RData::NAPTR(NAPTR::new(
        order,
        10,
        b"S".to_vec().into(),
        services.as_bytes().into(),
        Box::new([]),
        name(replacement),
    ))
}

fn srv(port: u16, target: &str) -> RData {
    srv_at(10, port, target)
}

pub(crate) fn srv_at(priority: u16, port: u16, target: &str) -> RData {
    RData::SRV(SRV::new(priority, 0, port, name(target)))
}

pub(crate) fn loopback() -> RData {
    RData::A(A::new(127, 0, 0, 1))
}

/// `sip:room@example.test`: NAPTR prefers TCP, its SRV names the port and
/// host, and the call reaches the bridge over TCP on that port (nothing
/// listens on 5060, where the address fallback would go).
#[test]
fn naptr_and_srv_lead_a_sip_uri_to_the_server() {
    let callee = endpoint();
    let port = callee.local_addr().port();
    let dns = DnsServer::start(vec![
        record("example.test.", naptr(20, "SIP+D2U", "_sip._udp.example.test.")),
        record("example.test.", naptr(10, "SIP+D2T", "_sip._tcp.example.test.")),
        record("_sip._tcp.example.test.", srv(port, "bridge.example.test.")),
        record("bridge.example.test.", loopback()),
    ]);
    let caller = endpoint_asking(&dns);
    call_and_hang_up(&caller, &callee, "sip:room@example.test");
    let asked = dns.asked();
    let first = |prefix: &str| asked.iter().position(|q| q.starts_with(prefix)).unwrap_or(usize::MAX);
    assert!(first("NAPTR example.test") < first("SRV _sip._tcp.example.test"), "{asked:?}");
    assert!(first("SRV _sip._tcp.example.test") < first("A bridge.example.test"), "{asked:?}");
    assert!(!asked.iter().any(|q| q.contains("_sip._udp")), "TCP came first in NAPTR order: {asked:?}");
}

/// `sips:room@secure.test` with no NAPTR: the SRV of _sips._tcp gives the
/// TLS port on another host name, and the certificate must name the
/// domain of the URI (RFC 5922), which it does.
#[test]
fn a_sips_uri_finds_tls_by_srv_and_checks_the_domain_s_certificate() {
    let pki = TestPki::for_names("srv", "secure.test");
    let callee = tls_endpoint(&pki, None);
    let tls_port = callee.tls_addr().unwrap().port();
    let dns = DnsServer::start(vec![
        record("_sips._tcp.secure.test.", srv(tls_port, "host1.secure.test.")),
        record("host1.secure.test.", loopback()),
    ]);
    let caller = tls_endpoint_with_dns(&pki, Some(&pki.path("ca.pem")), vec![dns.addr]);
    call_and_hang_up(&caller, &callee, "sips:room@secure.test");
    assert!(dns.asked().iter().any(|q| q.starts_with("SRV _sips._tcp.secure.test")), "{:?}", dns.asked());
}

/// RFC 3263 §4.3 failover: the first server SRV names for
/// `sip:room@failover.test;transport=tcp` refuses the connection, and the
/// call goes to the second one instead of failing.
#[test]
fn a_server_that_refuses_the_connection_is_skipped_for_the_next_srv_target() {
    let callee = endpoint();
    let refused = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_port = refused.local_addr().unwrap().port();
    drop(refused);
    let dns = DnsServer::start(vec![
        record("_sip._tcp.failover.test.", srv_at(10, dead_port, "down.failover.test.")),
        record("_sip._tcp.failover.test.", srv_at(20, callee.local_addr().port(), "up.failover.test.")),
        record("down.failover.test.", loopback()),
        record("up.failover.test.", loopback()),
    ]);
    let caller = endpoint_asking(&dns);
    call_and_hang_up(&caller, &callee, "sip:room@failover.test;transport=tcp");
    let asked = dns.asked();
    assert!(asked.iter().any(|q| q.starts_with("A down.failover.test")), "{asked:?}");
}

/// An account's registrar named by SRV (`sip:pbx.test;transport=tcp`): the
/// first server refuses the connection, and the REGISTER goes to the
/// second, another endpoint's registrar, with no failure reported.
#[test]
fn an_account_registers_with_the_next_srv_target_when_the_first_is_down() {
    let registrar = endpoint();
    registrar.add_user("alice", "secret").unwrap();
    let refused = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_port = refused.local_addr().unwrap().port();
    drop(refused);
    let dns = DnsServer::start(vec![
        record("_sip._tcp.pbx.test.", srv_at(10, dead_port, "down.pbx.test.")),
        record("_sip._tcp.pbx.test.", srv_at(20, registrar.local_addr().port(), "up.pbx.test.")),
        record("down.pbx.test.", loopback()),
        record("up.pbx.test.", loopback()),
    ]);
    let member = endpoint_asking(&dns);
    let account = sipbridge::Account {
        aor: "sip:alice@sipbridge".into(),
        registrar: Some("sip:pbx.test;transport=tcp".into()),
        password: Some("secret".into()),
        room: "desk".into(),
        ..Default::default()
    };
    let id = member.register_account(account).unwrap();
    let state = wait_event(&member, WAIT, |e| match e {
        Event::Registration { account, state, .. } if *account == id => Some(state.clone()),
        _ => None,
    });
    assert_eq!(state, sipbridge::RegistrationState::Registered { expires: 3600 });
    let contact = format!("sip:alice@127.0.0.1:{};transport=tcp", member.local_addr().port());
    assert_eq!(registrar.registrations("alice"), [contact]);
    assert!(dns.asked().iter().any(|q| q.starts_with("A down.pbx.test")), "{:?}", dns.asked());
}

/// A dial hung up while its first server (found by SRV) says nothing is
/// not sent to the next one when that server's INVITE times out: the app
/// hung up, so there is no call to fail over.
#[test]
fn a_dial_hung_up_during_failover_does_not_call_the_next_server() {
    let callee = endpoint();
    callee.create_conference("room").unwrap();
    let silent_port = silent_tcp_server();
    let dns = DnsServer::start(vec![
        record("_sip._tcp.slow.test.", srv_at(10, silent_port, "silent.slow.test.")),
        record("_sip._tcp.slow.test.", srv_at(20, callee.local_addr().port(), "up.slow.test.")),
        record("silent.slow.test.", loopback()),
        record("up.slow.test.", loopback()),
    ]);
    let caller = endpoint_asking_with_t1(&dns, Duration::from_millis(10));
    let leg = caller.create_conference("out").unwrap().dial("sip:room@slow.test;transport=tcp").unwrap();
    std::thread::sleep(Duration::from_millis(100));
    leg.hangup().unwrap();
    // Nothing answered the INVITE, so the dial ends as failed when Timer B fires.
    let ended = wait_event(&caller, WAIT, |e| match e {
        Event::DialFailed { status, .. } => Some(*status),
        _ => None,
    });
    assert_eq!(ended, 408);
    std::thread::sleep(Duration::from_millis(1000));
    assert!(callee.conference("room").unwrap().participants().unwrap().is_empty());
    assert!(
        callee.try_next_event().is_none_or(|e| !matches!(e, Event::ParticipantJoined { .. })),
        "the next server was called"
    );
}

/// An account whose registrar's only server (by SRV) stops answering: once
/// that fails, the name is looked up again, and the retry goes to where
/// DNS now points, another endpoint's registrar.
#[test]
fn a_registrar_whose_servers_fail_is_looked_up_again_for_the_retry() {
    let registrar = endpoint();
    registrar.add_user("alice", "secret").unwrap();
    let silent_port = silent_tcp_server();
    let dns = DnsServer::start(vec![
        record("_sip._tcp.moving.test.", srv_at(10, silent_port, "old.moving.test.")),
        record("old.moving.test.", loopback()),
    ]);
    let member = endpoint_asking_with_t1(&dns, Duration::from_millis(10));
    let account = sipbridge::Account {
        aor: "sip:alice@sipbridge".into(),
        registrar: Some("sip:moving.test;transport=tcp".into()),
        password: Some("secret".into()),
        room: "desk".into(),
        ..Default::default()
    };
    let id = member.register_account(account).unwrap();
    // The registrar moves while the first REGISTER waits for an answer.
    dns.set_records(vec![
        record("_sip._tcp.moving.test.", srv_at(10, registrar.local_addr().port(), "new.moving.test.")),
        record("new.moving.test.", loopback()),
    ]);
    let mut states = Vec::new();
    while !matches!(states.last(), Some(sipbridge::RegistrationState::Registered { .. })) {
        let state = wait_event(&member, Duration::from_secs(10), |e| match e {
            Event::Registration { account, state, .. } if *account == id => Some(state.clone()),
            _ => None,
        });
        states.push(state);
    }
    assert!(matches!(states[0], sipbridge::RegistrationState::Failed { status: 408, .. }), "{states:?}");
    assert_eq!(states.len(), 2, "registered on the first retry: {states:?}");
    let asked = dns.asked();
    assert!(asked.iter().filter(|q| q.starts_with("SRV _sip._tcp.moving.test")).count() >= 2, "{asked:?}");
}
