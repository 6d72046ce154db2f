#![no_main]
//! Any bytes: parsing never panics, and whatever parses prints and parses again.
use libfuzzer_sys::fuzz_target;
use sipbridge::sip::message;

fuzz_target!(|data: &[u8]| {
    if let Ok(parsed) = message::parse(data) {
        let _ = message::parse(&message::print(parsed));
    }
    let _ = message::raw_error_response(data, 400, "Bad Request");
});
