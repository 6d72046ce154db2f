#![no_main]
//! Any bytes as an SDP offer: parsing and answering never panic, and a parsed
//! description prints to something that parses to the same thing.
use libfuzzer_sys::fuzz_target;
use sipbridge::sdp::{self, LocalMedia, SessionDescription};
use sipbridge::CodecKind;

fuzz_target!(|data: &[u8]| {
    let Ok(offer) = SessionDescription::parse(data) else { return };
    let again = SessionDescription::parse(offer.print().as_bytes()).expect("printed SDP parses");
    assert_eq!(again.media.len(), offer.media.len());
    let local = LocalMedia {
        address: "127.0.0.1:30000".parse().unwrap(),
        codecs: vec![CodecKind::Pcmu, CodecKind::Pcma],
        session_id: 1,
        session_version: 1,
    };
    let _ = sdp::answer(&offer, &local);
    let _ = sdp::accept_answer(&offer, &local);
});
