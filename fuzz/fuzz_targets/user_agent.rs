#![no_main]
//! Any sequence of datagrams into a user agent: it never panics, and whatever
//! it wants to send or report can be drained.
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use sipbridge::sip::{Peer, TimerConfig, UaConfig, UserAgent};

fuzz_target!(|data: &[u8]| {
    let advertised = "127.0.0.1:5060".parse().unwrap();
    let mut ua = UserAgent::new(UaConfig { advertised, tls_port: None, timers: TimerConfig::default() });
    let source = "127.0.0.1:5070".parse().unwrap();
    let mut now = Instant::now();
    // Datagrams separated by 0xff bytes, with a second passing between them.
    for datagram in data.split(|b| *b == 0xff) {
        ua.handle_message(now, Peer::udp(source), datagram);
        while let Some(event) = ua.poll_event() {
            if let sipbridge::sip::UaEvent::IncomingCall { call, .. } = event {
                let _ = ua.answer(call, b"v=0\r\n".to_vec(), now);
            }
        }
        while ua.poll_transmit().is_some() {}
        now += Duration::from_secs(1);
        ua.handle_timeout(now);
    }
});
