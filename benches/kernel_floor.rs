//! What the kernel alone charges a call of the call-setup benchmark
//! (benches/call_setup.sh) on this machine: the system calls any server
//! must make for sipp's `uac` call with a 0.5 s RTP leg, with none of
//! sipbridge's code around them. It bounds from below what the server's
//! CPU per call can come to, so a target can be checked against it.
//!
//!     cargo bench --bench kernel_floor
//!
//! Per call: 25 RTP packets (172 bytes, one every 20 ms for 0.5 s), each
//! from the leg's own socket to a peer socket that reads nothing, as sipp's
//! media port does; the leg's RTP and RTCP sockets bound, registered with
//! epoll and closed; 3 SIP datagrams received (INVITE, ACK, BYE) and 3 sent
//! (100, 200, 200), 600 bytes each. CPU time is the process's (getrusage),
//! so a loopback send includes the delivery into the receiving socket, as
//! it does for the server.

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;

const LEGS: usize = 800;
const RTP_ROUNDS: usize = 500;
const RTP_PER_CALL: f64 = 25.0;
const SOCKET_CALLS: usize = 20_000;
const SIP_BATCH: usize = 100;
const SIP_BATCHES: usize = 500;
const SIP_PER_CALL: f64 = 3.0;

/// CPU seconds this process has used, user and system.
fn cpu() -> f64 {
    let mut usage = unsafe { std::mem::zeroed::<libc::rusage>() };
    assert_eq!(unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) }, 0);
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}

fn loopback() -> UdpSocket {
    UdpSocket::bind("127.0.0.1:0").expect("bind a loopback UDP socket")
}

/// Microseconds of CPU per repetition of `f`, run `times` times.
fn per_op(times: usize, mut f: impl FnMut()) -> f64 {
    let start = cpu();
    for _ in 0..times {
        f();
    }
    (cpu() - start) / times as f64 * 1e6
}

fn main() {
    // The RTP legs: 800 sockets, each sending to a peer that never reads.
    let sink = loopback();
    let sink_addr = sink.local_addr().unwrap();
    let legs: Vec<UdpSocket> = (0..LEGS).map(|_| loopback()).collect();
    let packet = [0x80u8; 172];
    let rtp_send = per_op(RTP_ROUNDS, || {
        for leg in &legs {
            let _ = leg.send_to(&packet, sink_addr);
        }
    }) / LEGS as f64;

    // A leg's sockets: RTP and RTCP bound, registered with epoll, closed.
    let epoll = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    assert!(epoll >= 0, "epoll_create1");
    let leg_sockets = per_op(SOCKET_CALLS, || {
        for socket in [loopback(), loopback()] {
            let mut interest = libc::epoll_event { events: libc::EPOLLIN as u32, u64: 0 };
            let added = unsafe { libc::epoll_ctl(epoll, libc::EPOLL_CTL_ADD, socket.as_raw_fd(), &mut interest) };
            assert_eq!(added, 0, "epoll_ctl");
        }
    });
    unsafe { libc::close(epoll) };

    // SIP: 600-byte datagrams, sent in batches then received, timed apart.
    let (ours, theirs) = (loopback(), loopback());
    let their_addr: SocketAddr = theirs.local_addr().unwrap();
    let message = [b'x'; 600];
    let mut buf = [0u8; 2048];
    let (mut send, mut receive) = (0.0, 0.0);
    for _ in 0..SIP_BATCHES {
        send += per_op(SIP_BATCH, || {
            ours.send_to(&message, their_addr).unwrap();
        });
        receive += per_op(SIP_BATCH, || {
            theirs.recv(&mut buf).unwrap();
        });
    }
    let (sip_send, sip_receive) = (send / SIP_BATCHES as f64, receive / SIP_BATCHES as f64);

    let rtp = rtp_send * RTP_PER_CALL;
    let sip = (sip_send + sip_receive) * SIP_PER_CALL;
    let floor = rtp + leg_sockets + sip;
    println!("kernel floor of one call (CPU µs, this machine):");
    println!("  RTP send_to, one per leg socket:     {rtp_send:6.2} µs each, x25 = {rtp:6.1} µs");
    println!("  RTP + RTCP bind, epoll add, close:   {leg_sockets:6.1} µs");
    println!("  SIP datagram send / receive:         {sip_send:6.2} / {sip_receive:.2} µs each, 3 + 3 = {sip:6.1} µs");
    println!(
        "  total:                               {floor:6.1} µs = {:.0} % of a 200 µs call, leaving {:.0} µs for everything else",
        floor / 2.0,
        200.0 - floor
    );
}
