#![no_main]
//! Any bytes as RTP: parsing never panics and the payload lies inside the packet.
use libfuzzer_sys::fuzz_target;
use sipbridge::media::rtp::RtpPacket;

fuzz_target!(|data: &[u8]| {
    if let Ok(packet) = RtpPacket::parse(data) {
        let start = packet.payload.as_ptr() as usize - data.as_ptr() as usize;
        assert!(start + packet.payload.len() <= data.len());
    }
});
