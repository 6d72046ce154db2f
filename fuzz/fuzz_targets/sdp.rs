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
        codecs: vec![CodecKind::Opus, CodecKind::G722, CodecKind::Pcmu, CodecKind::Pcma],
        opus_dtx: true,
        session_id: 1,
        session_version: 1,
    };
    if let Ok((_, negotiated)) = sdp::answer(&offer, &local) {
        // A re-offer of what was agreed, on hold and with each codec.
        for codec in &local.codecs {
            let _ = sdp::reoffer(&local, &negotiated, *codec, negotiated.direction).print();
        }
    }
    let _ = sdp::accept_answer(&offer, &local);
});
