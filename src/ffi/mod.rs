//! The C ABI. `include/sipbridge.h` is generated from this module by cbindgen.
//!
//! Conventions (after rustls-ffi):
//! - opaque handles, created by `_start`/`_create`/`_add`, released by `_free`;
//!   a `const` handle argument means the call does not change it;
//! - every call returns an [`sb_status`]; outputs go through pointer
//!   parameters and are written only on `SB_OK`; `sb_last_error` gives the
//!   message of the last failure on the calling thread;
//! - every function body runs inside [`ffi_guard!`], so a Rust panic becomes
//!   `SB_PANIC` instead of unwinding into C;
//! - conferences and participants are looked up on every call, so a handle
//!   or id whose conference or participant is gone yields `SB_NOT_FOUND`,
//!   never undefined behaviour; only freeing a handle twice, or using it after
//!   `_free`, is the caller's error.
#![allow(non_camel_case_types)]
// Exported functions take raw pointers from C and check them for NULL before
// use; marking them `unsafe` would mean nothing to a C caller (as rustls-ffi).
#![allow(clippy::not_unsafe_ptr_arg_deref)]

use std::cell::RefCell;
use std::ffi::{c_char, CStr};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use crate::media::playback::PlaybackError;
use crate::{
    CodecKind, Conference, Endpoint, EndpointConfig, Error, FrameReader, LocalParticipant, OpusSettings, ParticipantId,
    ParticipantKind, ParticipantState,
};

pub use events::*;
pub use playback::*;
pub use policy::*;
pub use recording::*;
pub use routing::*;

/// The result of every call.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum sb_status {
    SB_OK = 0,
    /// A required pointer argument was NULL.
    SB_NULL_PARAMETER = 1,
    SB_INVALID_ARGUMENT = 2,
    SB_NOT_FOUND = 3,
    SB_ALREADY_EXISTS = 4,
    /// Nothing arrived within the timeout.
    SB_TIMEOUT = 5,
    /// The endpoint has stopped.
    SB_STOPPED = 6,
    SB_IO = 7,
    SB_SIP = 8,
    SB_SDP = 9,
    SB_NO_RTP_PORT = 10,
    SB_INTERRUPTED = 11,
    /// An output buffer is too small; the needed size was written where the call says.
    SB_BUFFER_TOO_SMALL = 12,
    /// A bug in sipbridge: the call panicked. The message says where.
    SB_PANIC = 13,
    SB_INTERNAL = 14,
    /// The conference is locked: no one new may join.
    SB_LOCKED = 15,
    /// The conference has its policy's maximum of participants.
    SB_FULL = 16,
}

/// Wait without a time limit, where a call takes `timeout_ms`.
pub const SB_WAIT_FOREVER: u32 = u32::MAX;
/// The rate conferences mix at unless configured (application audio of a
/// conference is at its rate, in 20 ms frames of rate / 50 samples).
pub const SB_DEFAULT_SAMPLE_RATE: u32 = 48000;

const _: () = assert!(SB_DEFAULT_SAMPLE_RATE == crate::DEFAULT_SAMPLE_RATE);

thread_local! {
    static LAST_ERROR: RefCell<String> = const { RefCell::new(String::new()) };
}

fn set_last_error(message: String) {
    LAST_ERROR.with(|e| *e.borrow_mut() = message);
}

fn fail(status: sb_status, message: impl Into<String>) -> sb_status {
    set_last_error(message.into());
    status
}

impl From<&Error> for sb_status {
    fn from(error: &Error) -> Self {
        match error {
            Error::Sip(_) => sb_status::SB_SIP,
            Error::Sdp(_) => sb_status::SB_SDP,
            Error::Rtp(_) => sb_status::SB_INTERNAL,
            Error::Io(_) => sb_status::SB_IO,
            Error::Playback(PlaybackError::Wav { source: hound::Error::IoError(_), .. }) => sb_status::SB_IO,
            Error::Playback(_) => sb_status::SB_INVALID_ARGUMENT,
            Error::InvalidArgument(_) => sb_status::SB_INVALID_ARGUMENT,
            Error::NotFound(_) => sb_status::SB_NOT_FOUND,
            Error::AlreadyExists(_) => sb_status::SB_ALREADY_EXISTS,
            Error::Locked(_) => sb_status::SB_LOCKED,
            Error::Full(_) => sb_status::SB_FULL,
            Error::NoRtpPort => sb_status::SB_NO_RTP_PORT,
            Error::Stopped => sb_status::SB_STOPPED,
            Error::Timeout => sb_status::SB_TIMEOUT,
            Error::Interrupted => sb_status::SB_INTERRUPTED,
        }
    }
}

fn from_result(result: crate::Result<()>) -> sb_status {
    match result {
        Ok(()) => sb_status::SB_OK,
        Err(error) => fail((&error).into(), error.to_string()),
    }
}

/// Runs an exported function's body, turning a panic into `SB_PANIC` (or, for
/// functions without a status, into nothing) with the panic message kept.
macro_rules! ffi_guard {
    ($body:block) => {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| -> sb_status { $body })) {
            Ok(status) => status,
            Err(payload) => {
                let message = payload
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".into());
                fail(sb_status::SB_PANIC, format!("panic: {message}"))
            }
        }
    };
}

/// Turns a possibly-NULL pointer into a reference, or returns `SB_NULL_PARAMETER`.
macro_rules! try_ref {
    ($ptr:expr) => {{
        let ptr = $ptr;
        if ptr.is_null() {
            return fail(sb_status::SB_NULL_PARAMETER, concat!(stringify!($ptr), " is NULL"));
        }
        // SAFETY: non-null, and the caller promises it came from this library and is live.
        unsafe { &*ptr }
    }};
}

macro_rules! try_mut {
    ($ptr:expr) => {{
        let ptr = $ptr;
        if ptr.is_null() {
            return fail(sb_status::SB_NULL_PARAMETER, concat!(stringify!($ptr), " is NULL"));
        }
        // SAFETY: non-null, and the caller promises it is live and not shared during the call.
        unsafe { &mut *ptr }
    }};
}

/// Reads a NUL-terminated UTF-8 string argument.
/// A C string that may be NULL (`None`).
macro_rules! try_optional_str {
    ($ptr:expr) => {{
        let ptr: *const c_char = $ptr;
        if ptr.is_null() {
            None
        } else {
            Some(try_str!(ptr))
        }
    }};
}

macro_rules! try_str {
    ($ptr:expr) => {{
        let ptr: *const c_char = $ptr;
        if ptr.is_null() {
            return fail(sb_status::SB_NULL_PARAMETER, concat!(stringify!($ptr), " is NULL"));
        }
        // SAFETY: the caller promises a NUL-terminated string.
        match unsafe { CStr::from_ptr(ptr) }.to_str() {
            Ok(s) => s,
            Err(_) => return fail(sb_status::SB_INVALID_ARGUMENT, concat!(stringify!($ptr), " is not UTF-8")),
        }
    }};
}

/// Reads an optional NUL-terminated UTF-8 string argument: NULL is `None`.
macro_rules! try_opt_str {
    ($ptr:expr) => {{
        let ptr: *const c_char = $ptr;
        if ptr.is_null() {
            None
        } else {
            // SAFETY: the caller promises a NUL-terminated string.
            match unsafe { CStr::from_ptr(ptr) }.to_str() {
                Ok(s) => Some(s.to_string()),
                Err(_) => return fail(sb_status::SB_INVALID_ARGUMENT, concat!(stringify!($ptr), " is not UTF-8")),
            }
        }
    }};
}

/// Propagates an error from a crate call as its status.
macro_rules! try_call {
    ($result:expr) => {
        match $result {
            Ok(v) => v,
            Err(error) => return fail((&error).into(), error.to_string()),
        }
    };
}

// Declared after the macros above, which they use.
mod events;
mod playback;
mod policy;
mod recording;
mod routing;

fn timeout(ms: u32) -> Option<Duration> {
    (ms != SB_WAIT_FOREVER).then(|| Duration::from_millis(ms as u64))
}

/// Copies `text` into a C buffer of `len` bytes, always NUL-terminated, cut if needed.
fn copy_str(text: &str, out: &mut [c_char]) {
    let Some(room) = out.len().checked_sub(1) else { return };
    let n = text.len().min(room);
    for (o, b) in out.iter_mut().zip(text.as_bytes()[..n].iter()) {
        *o = *b as c_char;
    }
    out[n] = 0;
}

/// The message of the last failed call on this thread, copied into `buf`
/// (NUL-terminated, cut to `len`). Returns the message length without NUL.
#[no_mangle]
pub extern "C" fn sb_last_error(buf: *mut c_char, len: usize) -> usize {
    std::panic::catch_unwind(|| {
        LAST_ERROR.with(|e| {
            let e = e.borrow();
            if !buf.is_null() && len > 0 {
                // SAFETY: the caller gives `len` writable bytes at `buf`.
                let out = unsafe { std::slice::from_raw_parts_mut(buf, len) };
                copy_str(&e, out);
            }
            e.len()
        })
    })
    .unwrap_or(0)
}

/// A static name for a status, such as "SB_NOT_FOUND"; "SB_UNKNOWN" for a
/// number that is no status. Takes a plain integer: a C caller may pass any.
#[no_mangle]
pub extern "C" fn sb_status_name(status: std::ffi::c_int) -> *const c_char {
    const NAMES: [&CStr; 17] = [
        c"SB_OK",
        c"SB_NULL_PARAMETER",
        c"SB_INVALID_ARGUMENT",
        c"SB_NOT_FOUND",
        c"SB_ALREADY_EXISTS",
        c"SB_TIMEOUT",
        c"SB_STOPPED",
        c"SB_IO",
        c"SB_SIP",
        c"SB_SDP",
        c"SB_NO_RTP_PORT",
        c"SB_INTERRUPTED",
        c"SB_BUFFER_TOO_SMALL",
        c"SB_PANIC",
        c"SB_INTERNAL",
        c"SB_LOCKED",
        c"SB_FULL",
    ];
    const _: () = assert!(sb_status::SB_FULL as usize == NAMES.len() - 1);
    let name = usize::try_from(status).ok().and_then(|i| NAMES.get(i)).copied().unwrap_or(c"SB_UNKNOWN");
    name.as_ptr()
}

/// How to start an endpoint. Fill it with `sb_endpoint_config_init`, then change fields.
#[repr(C)]
pub struct sb_endpoint_config {
    /// SIP listen address, "IP:PORT" (port 0 picks one). Default "0.0.0.0:5060".
    pub listen: *const c_char,
    /// Whether SIP over TCP listens too, on the same address. Default true.
    pub tcp: bool,
    /// SIP over TLS listen address, "IP:PORT", or NULL for none. It needs
    /// `tls_certificate` and `tls_private_key`.
    pub tls_listen: *const c_char,
    /// PEM files: the certificate chain TLS presents and its private key, or NULL.
    pub tls_certificate: *const c_char,
    pub tls_private_key: *const c_char,
    /// A PEM file of CA certificates to trust when calling sips: URIs,
    /// besides the public roots; or NULL.
    pub tls_ca_file: *const c_char,
    /// DNS servers for dialled host names, "IP:PORT" separated by commas,
    /// or NULL for the system's.
    pub dns_servers: *const c_char,
    /// Address for SDP and Contact, or NULL for the listen address.
    pub public_address: *const c_char,
    /// "host:port" of a STUN server asked at start for the public address
    /// when `public_address` is NULL; or NULL.
    pub stun_server: *const c_char,
    pub rtp_port_min: u16,
    pub rtp_port_max: u16,
    /// Whether INVITEs to unknown rooms create them (else they get 404).
    pub create_rooms_on_demand: bool,
    /// No RTP from a leg for this many ms raises SB_EVENT_MEDIA_TIMEOUT; 0 turns it off. Default 30000.
    pub media_timeout_ms: u32,
    /// Whether a media timeout also hangs the leg up.
    pub hang_up_on_media_timeout: bool,
    /// The rate conferences mix at: 8000, 16000 or 48000. Default SB_DEFAULT_SAMPLE_RATE.
    pub sample_rate: u32,
    /// Opus encoding: bit rate in bit/s, complexity 0-10, in-band FEC, DTX.
    pub opus_bitrate: u32,
    pub opus_complexity: u8,
    pub opus_fec: bool,
    pub opus_dtx: bool,
    /// Mixer threads; each conference mixes on one of them. Default 0: one per core.
    pub mixer_threads: u32,
    /// Whether new rooms require callers to authenticate (see
    /// `sb_endpoint_add_user`, `sb_conference_set_require_authentication`).
    pub require_authentication: bool,
    /// Whether digest challenges offer SHA-256 beside MD5 (some older
    /// clients fail on it). Default false.
    pub digest_sha256: bool,
    /// The realm of digest challenges and the domain of registered users
    /// (`sip:alice@REALM` dials alice's phone), or NULL for "sipbridge".
    pub realm: *const c_char,
    /// Registered phones get a keep-alive (OPTIONS, or a CRLF ping on TCP
    /// and TLS) this often; one that does not answer loses its
    /// registration. 0 turns it off. Default 30000.
    pub keepalive_interval_ms: u32,
    /// The policy of rooms callers' INVITEs create (a PIN, moderators,
    /// limits), so their first caller already types the PIN; NULL: open
    /// rooms. Copied at start.
    pub room_policy: *const policy::sb_conference_policy,
}

/// Sets `config` to the defaults.
#[no_mangle]
pub extern "C" fn sb_endpoint_config_init(config: *mut sb_endpoint_config) -> sb_status {
    ffi_guard!({
        let config = try_mut!(config);
        let defaults = EndpointConfig::default();
        *config = sb_endpoint_config {
            listen: c"0.0.0.0:5060".as_ptr(),
            tcp: defaults.tcp,
            tls_listen: std::ptr::null(),
            tls_certificate: std::ptr::null(),
            tls_private_key: std::ptr::null(),
            tls_ca_file: std::ptr::null(),
            dns_servers: std::ptr::null(),
            public_address: std::ptr::null(),
            stun_server: std::ptr::null(),
            rtp_port_min: *defaults.rtp_ports.start(),
            rtp_port_max: *defaults.rtp_ports.end(),
            create_rooms_on_demand: defaults.create_rooms_on_demand,
            media_timeout_ms: defaults.media_timeout.map_or(0, |t| t.as_millis() as u32),
            hang_up_on_media_timeout: defaults.hang_up_on_media_timeout,
            sample_rate: defaults.sample_rate,
            opus_bitrate: defaults.opus.bitrate,
            opus_complexity: defaults.opus.complexity,
            opus_fec: defaults.opus.fec,
            opus_dtx: defaults.opus.dtx,
            mixer_threads: defaults.mixer_threads as u32,
            require_authentication: defaults.require_authentication,
            digest_sha256: defaults.digest_sha256,
            realm: std::ptr::null(),
            keepalive_interval_ms: defaults.keepalive_interval.map_or(0, |t| t.as_millis() as u32),
            room_policy: std::ptr::null(),
        };
        sb_status::SB_OK
    })
}

/// A running endpoint. Free with `sb_endpoint_free`.
pub struct sb_endpoint {
    endpoint: Endpoint,
    callback: parking_lot::Mutex<Option<events::CallbackThread>>,
}

/// Starts an endpoint: binds the SIP socket and starts the SIP and mixer threads.
#[no_mangle]
pub extern "C" fn sb_endpoint_start(config: *const sb_endpoint_config, out: *mut *mut sb_endpoint) -> sb_status {
    ffi_guard!({
        let config = try_ref!(config);
        let out = try_mut!(out);
        let listen: SocketAddr = match try_str!(config.listen).parse() {
            Ok(a) => a,
            Err(e) => return fail(sb_status::SB_INVALID_ARGUMENT, format!("listen: {e}")),
        };
        let public_address: Option<IpAddr> = match try_optional_str!(config.public_address).map(str::parse) {
            None => None,
            Some(Ok(a)) => Some(a),
            Some(Err(e)) => return fail(sb_status::SB_INVALID_ARGUMENT, format!("public_address: {e}")),
        };
        if config.rtp_port_min > config.rtp_port_max {
            return fail(sb_status::SB_INVALID_ARGUMENT, "rtp_port_min exceeds rtp_port_max");
        }
        let tls_listen: Option<SocketAddr> = match try_optional_str!(config.tls_listen).map(str::parse) {
            None => None,
            Some(Ok(a)) => Some(a),
            Some(Err(e)) => return fail(sb_status::SB_INVALID_ARGUMENT, format!("tls_listen: {e}")),
        };
        let dns_servers = match try_optional_str!(config.dns_servers)
            .map(|list| list.split(',').map(|s| s.trim().parse::<SocketAddr>()).collect::<Result<Vec<_>, _>>())
        {
            None => Vec::new(),
            Some(Ok(servers)) => servers,
            Some(Err(e)) => return fail(sb_status::SB_INVALID_ARGUMENT, format!("dns_servers: {e}")),
        };
        // SAFETY: NULL or a live policy (the caller's promise).
        let room_policy = match unsafe { config.room_policy.as_ref() }.map(policy::policy_from_c) {
            None => Default::default(),
            Some(Ok(room_policy)) => room_policy,
            Some(Err(status)) => return status,
        };
        let endpoint = try_call!(Endpoint::start(EndpointConfig {
            listen,
            room_policy,
            dns_servers,
            stun_server: try_optional_str!(config.stun_server).map(str::to_string),
            tcp: config.tcp,
            tls_listen,
            tls_certificate: try_optional_str!(config.tls_certificate).map(PathBuf::from),
            tls_private_key: try_optional_str!(config.tls_private_key).map(PathBuf::from),
            tls_ca_file: try_optional_str!(config.tls_ca_file).map(PathBuf::from),
            public_address,
            rtp_ports: config.rtp_port_min..=config.rtp_port_max,
            create_rooms_on_demand: config.create_rooms_on_demand,
            media_timeout: (config.media_timeout_ms > 0).then(|| Duration::from_millis(config.media_timeout_ms as u64)),
            hang_up_on_media_timeout: config.hang_up_on_media_timeout,
            sample_rate: config.sample_rate,
            opus: OpusSettings {
                bitrate: config.opus_bitrate,
                complexity: config.opus_complexity,
                fec: config.opus_fec,
                dtx: config.opus_dtx,
                ..Default::default()
            },
            mixer_threads: config.mixer_threads as usize,
            require_authentication: config.require_authentication,
            digest_sha256: config.digest_sha256,
            realm: try_optional_str!(config.realm).map_or_else(|| EndpointConfig::default().realm, str::to_string),
            keepalive_interval: (config.keepalive_interval_ms > 0)
                .then(|| Duration::from_millis(config.keepalive_interval_ms.into())),
            ..Default::default()
        }));
        *out = Box::into_raw(Box::new(sb_endpoint { endpoint, callback: parking_lot::Mutex::new(None) }));
        sb_status::SB_OK
    })
}

/// Hangs up every leg and stops the endpoint; handles stay valid and return SB_STOPPED.
#[no_mangle]
pub extern "C" fn sb_endpoint_stop(endpoint: *const sb_endpoint) -> sb_status {
    ffi_guard!({
        let endpoint = try_ref!(endpoint);
        endpoint.endpoint.stop();
        if let Some(callback) = endpoint.callback.lock().take() {
            callback.stop();
        }
        sb_status::SB_OK
    })
}

/// Stops (as `sb_endpoint_stop`) and frees the endpoint. NULL is allowed.
#[no_mangle]
pub extern "C" fn sb_endpoint_free(endpoint: *mut sb_endpoint) {
    let _ = ffi_guard!({
        if !endpoint.is_null() {
            // SAFETY: from sb_endpoint_start, not freed before (the caller's promise).
            let endpoint = unsafe { Box::from_raw(endpoint) };
            if let Some(callback) = endpoint.callback.lock().take() {
                callback.stop();
            }
            endpoint.endpoint.stop();
        }
        sb_status::SB_OK
    });
}

/// The bound SIP port.
#[no_mangle]
pub extern "C" fn sb_endpoint_local_port(endpoint: *const sb_endpoint, out: *mut u16) -> sb_status {
    ffi_guard!({
        let endpoint = try_ref!(endpoint);
        *try_mut!(out) = endpoint.endpoint.local_addr().port();
        sb_status::SB_OK
    })
}

/// The port SIP over TLS listens on; SB_NOT_FOUND when it does not.
#[no_mangle]
pub extern "C" fn sb_endpoint_tls_port(endpoint: *const sb_endpoint, out: *mut u16) -> sb_status {
    ffi_guard!({
        let endpoint = try_ref!(endpoint);
        let out = try_mut!(out);
        match endpoint.endpoint.tls_addr() {
            Some(addr) => {
                *out = addr.port();
                sb_status::SB_OK
            }
            None => fail(sb_status::SB_NOT_FOUND, "TLS does not listen"),
        }
    })
}

/// A conference handle. Free with `sb_conference_free` (which does not end the conference).
pub struct sb_conference {
    conference: Conference,
}

fn new_conference(conference: Conference, out: &mut *mut sb_conference) -> sb_status {
    *out = Box::into_raw(Box::new(sb_conference { conference }));
    sb_status::SB_OK
}

/// Adds (or changes the password of) a user callers can authenticate as
/// (digest) in rooms that require it; only hashes are kept.
#[no_mangle]
pub extern "C" fn sb_endpoint_add_user(
    endpoint: *const sb_endpoint,
    name: *const c_char,
    password: *const c_char,
) -> sb_status {
    ffi_guard!({
        let endpoint = try_ref!(endpoint);
        from_result(endpoint.endpoint.add_user(try_str!(name), try_str!(password)))
    })
}

/// An account at an upstream registrar or PBX (see
/// `sb_endpoint_register_account`). Strings marked optional may be NULL.
#[repr(C)]
pub struct sb_account {
    /// The address of record, "sip:USER@DOMAIN".
    pub aor: *const c_char,
    /// Optional: where REGISTERs go, "sip:HOST[:PORT]" (NULL: the AOR's domain).
    pub registrar: *const c_char,
    /// Optional: the digest user name (NULL: the AOR's user).
    pub username: *const c_char,
    /// The password; NULL when `ha1` is given instead.
    pub password: *const c_char,
    /// Optional: the HA1 hash, hex of MD5 (32 digits) or SHA-256 (64) of
    /// "username:realm:password", instead of the password.
    pub ha1: *const c_char,
    /// Seconds to ask the registrar for; 0 for the default, 3600.
    pub expires: u32,
    /// The room that calls to the account join.
    pub room: *const c_char,
}

/// Registers `account` with its registrar and keeps it registered
/// (refreshes, retries with backoff) until `sb_endpoint_unregister_account`
/// or the endpoint stops; `id` receives the account's id. Looks the
/// registrar's host name up before returning; SB_EVENT_REGISTRATION reports
/// the outcome.
#[no_mangle]
pub extern "C" fn sb_endpoint_register_account(
    endpoint: *const sb_endpoint,
    account: *const sb_account,
    id: *mut u64,
) -> sb_status {
    ffi_guard!({
        let endpoint = try_ref!(endpoint);
        let account = try_ref!(account);
        let out = try_mut!(id);
        let defaults = crate::Account::default();
        let account = crate::Account {
            aor: try_str!(account.aor).into(),
            registrar: try_opt_str!(account.registrar),
            username: try_opt_str!(account.username),
            password: try_opt_str!(account.password),
            ha1: try_opt_str!(account.ha1),
            expires: if account.expires == 0 { defaults.expires } else { account.expires },
            room: try_str!(account.room).into(),
        };
        *out = try_call!(endpoint.endpoint.register_account(account)).0;
        sb_status::SB_OK
    })
}

/// Un-registers account `id` (Expires: 0) and forgets it; an
/// SB_EVENT_REGISTRATION with SB_REGISTRATION_UNREGISTERED follows.
/// SB_NOT_FOUND for an unknown id.
#[no_mangle]
pub extern "C" fn sb_endpoint_unregister_account(endpoint: *const sb_endpoint, id: u64) -> sb_status {
    ffi_guard!({ from_result(try_ref!(endpoint).endpoint.unregister_account(crate::AccountId(id))) })
}

/// Removes a user; SB_NOT_FOUND if there is none by that name.
#[no_mangle]
pub extern "C" fn sb_endpoint_remove_user(endpoint: *const sb_endpoint, name: *const c_char) -> sb_status {
    ffi_guard!({ from_result(try_ref!(endpoint).endpoint.remove_user(try_str!(name))) })
}

/// Creates a conference called `name`; SB_ALREADY_EXISTS if there is one.
#[no_mangle]
pub extern "C" fn sb_endpoint_create_conference(
    endpoint: *const sb_endpoint,
    name: *const c_char,
    out: *mut *mut sb_conference,
) -> sb_status {
    ffi_guard!({
        let endpoint = try_ref!(endpoint);
        let name = try_str!(name);
        let out = try_mut!(out);
        new_conference(try_call!(endpoint.endpoint.create_conference(name)), out)
    })
}

/// Creates a conference called `name` that mixes at `sample_rate` (8000, 16000 or 48000).
#[no_mangle]
pub extern "C" fn sb_endpoint_create_conference_with_rate(
    endpoint: *const sb_endpoint,
    name: *const c_char,
    sample_rate: u32,
    out: *mut *mut sb_conference,
) -> sb_status {
    ffi_guard!({
        let endpoint = try_ref!(endpoint);
        let name = try_str!(name);
        let out = try_mut!(out);
        new_conference(try_call!(endpoint.endpoint.create_conference_with_rate(name, sample_rate)), out)
    })
}

/// The rate `conference` mixes at; its application audio is at this rate.
#[no_mangle]
pub extern "C" fn sb_conference_sample_rate(conference: *const sb_conference, out: *mut u32) -> sb_status {
    ffi_guard!({
        let conference = try_ref!(conference);
        *try_mut!(out) = conference.conference.sample_rate();
        sb_status::SB_OK
    })
}

/// A handle on the existing conference `name` (rooms created by callers included).
#[no_mangle]
pub extern "C" fn sb_endpoint_get_conference(
    endpoint: *const sb_endpoint,
    name: *const c_char,
    out: *mut *mut sb_conference,
) -> sb_status {
    ffi_guard!({
        let endpoint = try_ref!(endpoint);
        let name = try_str!(name);
        let out = try_mut!(out);
        new_conference(try_call!(endpoint.endpoint.conference(name)), out)
    })
}

/// Writes the conference names, one per line, NUL-terminated, into `buf`.
/// `needed` (optional) receives the size required including the NUL; when
/// `len` is less, the call returns SB_BUFFER_TOO_SMALL and writes nothing.
#[no_mangle]
pub extern "C" fn sb_endpoint_conference_names(
    endpoint: *const sb_endpoint,
    buf: *mut c_char,
    len: usize,
    needed: *mut usize,
) -> sb_status {
    ffi_guard!({
        let endpoint = try_ref!(endpoint);
        write_lines(&endpoint.endpoint.conferences(), buf, len, needed)
    })
}

/// Writes the contacts `user`'s phones registered with (newest first), one
/// per line, NUL-terminated, into `buf`; `needed` and `len` as for
/// `sb_endpoint_conference_names`. No registration writes an empty string.
#[no_mangle]
pub extern "C" fn sb_endpoint_registrations(
    endpoint: *const sb_endpoint,
    user: *const c_char,
    buf: *mut c_char,
    len: usize,
    needed: *mut usize,
) -> sb_status {
    ffi_guard!({
        let endpoint = try_ref!(endpoint);
        let user = try_str!(user);
        write_lines(&endpoint.endpoint.registrations(user), buf, len, needed)
    })
}

/// Writes `lines` joined by newlines, NUL-terminated, into the caller's
/// `buf` of `len` bytes, and the size it takes into `needed` (optional).
fn write_lines(lines: &[String], buf: *mut c_char, len: usize, needed: *mut usize) -> sb_status {
    {
        let text = lines.join("\n");
        if !needed.is_null() {
            // SAFETY: non-null, the caller's writable size_t.
            unsafe { *needed = text.len() + 1 };
        }
        if len < text.len() + 1 {
            return fail(sb_status::SB_BUFFER_TOO_SMALL, format!("{} bytes needed", text.len() + 1));
        }
        let buf = try_mut!(buf as *mut c_char);
        // SAFETY: the caller gives `len` writable bytes at `buf`.
        copy_str(&text, unsafe { std::slice::from_raw_parts_mut(buf, len) });
        sb_status::SB_OK
    }
}

/// Frees a conference handle; the conference goes on.
#[no_mangle]
pub extern "C" fn sb_conference_free(conference: *mut sb_conference) {
    let _ = ffi_guard!({
        if !conference.is_null() {
            // SAFETY: from this library, not freed before (the caller's promise).
            drop(unsafe { Box::from_raw(conference) });
        }
        sb_status::SB_OK
    });
}

/// Hangs up every leg and ends the conference. The handle must still be freed.
#[no_mangle]
pub extern "C" fn sb_conference_destroy(conference: *const sb_conference) -> sb_status {
    ffi_guard!({ from_result(try_ref!(conference).conference.destroy()) })
}

/// Dials `uri` into the conference; `participant` receives the new
/// participant's id. Ringing, answer and failure arrive as events.
#[no_mangle]
pub extern "C" fn sb_conference_dial(
    conference: *const sb_conference,
    uri: *const c_char,
    participant: *mut u64,
) -> sb_status {
    ffi_guard!({
        let uri = try_str!(uri);
        dial_out(conference, participant, |conference| conference.dial(uri))
    })
}

/// Like `sb_conference_dial`, answering digest challenges (401/407, MD5 or
/// SHA-256) as `username` with `password`; From names `username`.
#[no_mangle]
pub extern "C" fn sb_conference_dial_with_credentials(
    conference: *const sb_conference,
    uri: *const c_char,
    username: *const c_char,
    password: *const c_char,
    participant: *mut u64,
) -> sb_status {
    ffi_guard!({
        let uri = try_str!(uri);
        let credentials =
            crate::Credentials { username: try_str!(username).into(), password: try_str!(password).into() };
        dial_out(conference, participant, |conference| conference.dial_with_credentials(uri, credentials))
    })
}

/// Dials with `dial` and writes the new participant's id to `participant`.
fn dial_out(
    conference: *const sb_conference,
    participant: *mut u64,
    dial: impl FnOnce(&crate::Conference) -> crate::Result<crate::Participant>,
) -> sb_status {
    let conference = try_ref!(conference);
    let out = try_mut!(participant);
    *out = try_call!(dial(&conference.conference)).id().0;
    sb_status::SB_OK
}

/// Looks up participant `id` of `conference` and applies `action` to it.
fn with_participant(
    conference: *const sb_conference,
    id: u64,
    action: impl FnOnce(&crate::Participant) -> crate::Result<()>,
) -> sb_status {
    ffi_guard!({
        let conference = try_ref!(conference);
        from_result(conference.conference.participant(ParticipantId(id)).and_then(|p| action(&p)))
    })
}

/// Hangs up a participant (BYE, or CANCEL while ringing).
#[no_mangle]
pub extern "C" fn sb_conference_hangup(conference: *const sb_conference, participant: u64) -> sb_status {
    with_participant(conference, participant, |p| p.hangup())
}

/// Sends key presses ('0'-'9', '*', '#', 'A'-'D') to a participant as RFC 4733
/// telephone-events, 100 ms each; SB_INVALID_ARGUMENT when the peer did not
/// offer telephone-event or a character is no digit.
#[no_mangle]
pub extern "C" fn sb_conference_send_dtmf(
    conference: *const sb_conference,
    participant: u64,
    digits: *const c_char,
) -> sb_status {
    ffi_guard!({
        let digits = try_str!(digits);
        with_participant(conference, participant, |p| p.send_dtmf(digits))
    })
}

/// Mutes or unmutes what a participant contributes to the mix.
#[no_mangle]
pub extern "C" fn sb_conference_set_muted(
    conference: *const sb_conference,
    participant: u64,
    muted: bool,
) -> sb_status {
    with_participant(conference, participant, |p| p.set_muted(muted))
}

/// Puts a SIP participant's call on hold (a re-INVITE offering inactive:
/// nothing sent to it or mixed from it) or takes it off hold. SB_EVENT_HOLD
/// comes when the phone answers; a refusal leaves the call as it was.
#[no_mangle]
pub extern "C" fn sb_conference_set_held(conference: *const sb_conference, participant: u64, held: bool) -> sb_status {
    with_participant(conference, participant, |p| p.set_held(held))
}

/// Asks a SIP participant's phone to change codec (`"PCMU"`, `"PCMA"`,
/// `"G722"` or `"opus"`, one of its room's codecs): a re-INVITE offering it
/// alone. The leg switches when the phone answers (the participant info's
/// codec says so); a refusal leaves the call as it was.
#[no_mangle]
pub extern "C" fn sb_conference_set_codec(
    conference: *const sb_conference,
    participant: u64,
    codec: *const c_char,
) -> sb_status {
    ffi_guard!({
        let name = try_str!(codec);
        match CodecKind::from_encoding_name(name) {
            Some(codec) => with_participant(conference, participant, |p| p.set_codec(codec)),
            None => fail(sb_status::SB_INVALID_ARGUMENT, format!("unknown codec {name:?}")),
        }
    })
}

/// Transfers a SIP participant to `uri` (REFER, a blind transfer): its phone
/// calls `uri`, and once that is answered we hang up; SB_EVENT_TRANSFER_PROGRESS
/// reports how it goes.
#[no_mangle]
pub extern "C" fn sb_conference_transfer(
    conference: *const sb_conference,
    participant: u64,
    uri: *const c_char,
) -> sb_status {
    ffi_guard!({
        let uri = try_str!(uri);
        with_participant(conference, participant, |p| p.transfer(uri))
    })
}

/// Answers a participant's SB_EVENT_TRANSFER_REQUESTED: `accept` dials its
/// target into the participant's conference; otherwise 603 Decline.
#[no_mangle]
pub extern "C" fn sb_conference_answer_transfer(
    conference: *const sb_conference,
    participant: u64,
    accept: bool,
) -> sb_status {
    with_participant(conference, participant, |p| if accept { p.accept_transfer() } else { p.reject_transfer() })
}

/// Sets how loud a participant is in the mix, in dB (0 = as received; ±40 at most).
#[no_mangle]
pub extern "C" fn sb_conference_set_volume_db(
    conference: *const sb_conference,
    participant: u64,
    db: f32,
) -> sb_status {
    with_participant(conference, participant, |p| p.set_volume_db(db))
}

/// Sets how talkers are detected and how many are mixed: talking starts at
/// `start_dbov` (default -40), stops after `hang_ms` (400) below `stop_dbov`
/// (-50); at most `max_talkers` (4) are mixed, talkers first and the loudest
/// first, 0 = all.
/// Changes arrive as SB_EVENT_TALKING.
#[no_mangle]
pub extern "C" fn sb_conference_set_talker_policy(
    conference: *const sb_conference,
    start_dbov: f32,
    stop_dbov: f32,
    hang_ms: u32,
    max_talkers: u32,
) -> sb_status {
    ffi_guard!({
        let policy = crate::TalkerPolicy {
            start_dbov,
            stop_dbov,
            hang: std::time::Duration::from_millis(hang_ms.into()),
            max_talkers: max_talkers as usize,
        };
        from_result(try_ref!(conference).conference.set_talker_policy(policy))
    })
}

/// Switches noise suppression (RNNoise) for everyone in the conference now
/// and for whoever joins later. Needs a 48 kHz conference
/// (`SB_ERR_INVALID_ARGUMENT` otherwise).
#[no_mangle]
pub extern "C" fn sb_conference_set_noise_suppression(conference: *const sb_conference, on: bool) -> sb_status {
    ffi_guard!({ from_result(try_ref!(conference).conference.set_noise_suppression(on)) })
}

/// Whether callers must authenticate as a user of the endpoint to join: a
/// caller without credentials gets 401, one that fails five times in a
/// minute 403 for a minute.
#[no_mangle]
pub extern "C" fn sb_conference_set_require_authentication(conference: *const sb_conference, on: bool) -> sb_status {
    ffi_guard!({ from_result(try_ref!(conference).conference.set_require_authentication(on)) })
}

/// Switches noise suppression of what one participant says, before it is
/// mixed. Needs a 48 kHz conference.
#[no_mangle]
pub extern "C" fn sb_participant_set_noise_suppression(
    conference: *const sb_conference,
    participant: u64,
    on: bool,
) -> sb_status {
    with_participant(conference, participant, |p| p.set_noise_suppression(on))
}

/// How a participant is connected.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum sb_participant_kind {
    SB_PARTICIPANT_INBOUND = 0,
    SB_PARTICIPANT_OUTBOUND = 1,
    SB_PARTICIPANT_LOCAL = 2,
}

impl From<ParticipantKind> for sb_participant_kind {
    fn from(kind: ParticipantKind) -> Self {
        match kind {
            ParticipantKind::Inbound => Self::SB_PARTICIPANT_INBOUND,
            ParticipantKind::Outbound => Self::SB_PARTICIPANT_OUTBOUND,
            ParticipantKind::Local => Self::SB_PARTICIPANT_LOCAL,
        }
    }
}

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum sb_participant_state {
    SB_STATE_CALLING = 0,
    SB_STATE_RINGING = 1,
    SB_STATE_CONNECTED = 2,
}

/// A snapshot of one participant.
#[repr(C)]
pub struct sb_participant_info {
    pub id: u64,
    pub kind: sb_participant_kind,
    pub state: sb_participant_state,
    pub muted: bool,
    pub volume_db: f32,
    pub noise_suppression: bool,
    pub talking: bool,
    /// Whether the participant's phone has put the call on hold.
    pub on_hold: bool,
    pub packets_received: u64,
    pub packets_sent: u64,
    pub dropped: u64,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    pub concealed_frames: u64,
    pub fec_recovered: u64,
    /// Packets the peer sent that never arrived, and that as a percentage.
    pub packets_lost: u64,
    pub loss_percent: f32,
    /// Interarrival jitter (RFC 3550) and the jitter buffer's target delay.
    pub jitter_ms: f32,
    pub jitter_buffer_ms: u32,
    /// Round-trip time from RTCP, or -1 until measured.
    pub round_trip_ms: f32,
    /// Estimated MOS (E-model, G.107), or 0 when there is no media.
    pub mos: f32,
    /// The codec's SDP name ("" before media runs).
    pub codec: [c_char; 16],
    /// The remote party's SIP URI ("" for local participants), cut to fit.
    pub remote: [c_char; 256],
    /// Whether it is a moderator.
    pub moderator: bool,
    /// In the mix, typing its PIN, or waiting for a moderator.
    pub admission: sb_admission,
    /// Whether it is deafened: it hears nothing of the conference.
    pub deaf: bool,
}

/// Fills `out` (room for `capacity`) with the participants; `count` receives
/// how many there are. With too little room, as many as fit are written and
/// the call returns SB_BUFFER_TOO_SMALL.
#[no_mangle]
pub extern "C" fn sb_conference_participants(
    conference: *const sb_conference,
    out: *mut sb_participant_info,
    capacity: usize,
    count: *mut usize,
) -> sb_status {
    ffi_guard!({
        let conference = try_ref!(conference);
        let count = try_mut!(count);
        let participants = try_call!(conference.conference.participants());
        *count = participants.len();
        if capacity > 0 {
            let out = try_mut!(out);
            // SAFETY: the caller gives room for `capacity` entries at `out`.
            let out = unsafe { std::slice::from_raw_parts_mut(out as *mut sb_participant_info, capacity) };
            for (slot, p) in out.iter_mut().zip(participants.iter()) {
                let mut remote = [0; 256];
                copy_str(p.remote.as_deref().unwrap_or(""), &mut remote);
                let mut codec = [0; 16];
                copy_str(p.codec.map_or("", |c| c.encoding_name()), &mut codec);
                *slot = sb_participant_info {
                    id: p.id.0,
                    kind: p.kind.into(),
                    state: match p.state {
                        ParticipantState::Calling => sb_participant_state::SB_STATE_CALLING,
                        ParticipantState::Ringing => sb_participant_state::SB_STATE_RINGING,
                        ParticipantState::Connected => sb_participant_state::SB_STATE_CONNECTED,
                    },
                    muted: p.muted,
                    volume_db: p.volume_db,
                    noise_suppression: p.noise_suppression,
                    talking: p.talking,
                    on_hold: p.on_hold,
                    packets_received: p.packets_received,
                    packets_sent: p.packets_sent,
                    dropped: p.dropped,
                    bytes_received: p.bytes_received,
                    bytes_sent: p.bytes_sent,
                    concealed_frames: p.concealed_frames,
                    fec_recovered: p.fec_recovered,
                    packets_lost: p.packets_lost,
                    loss_percent: p.loss_percent,
                    jitter_ms: p.jitter_ms,
                    jitter_buffer_ms: p.jitter_buffer_ms,
                    round_trip_ms: p.round_trip_ms.unwrap_or(-1.0),
                    mos: p.mos.unwrap_or(0.0),
                    codec,
                    remote,
                    moderator: p.moderator,
                    admission: p.admission.into(),
                    deaf: p.deaf,
                };
            }
        }
        if capacity < participants.len() {
            return fail(sb_status::SB_BUFFER_TOO_SMALL, format!("{} participants", participants.len()));
        }
        sb_status::SB_OK
    })
}

/// A participant the application feeds with PCM and listens to.
/// `sb_local_free` makes it leave and frees it.
pub struct sb_local {
    local: LocalParticipant,
}

/// Adds a local participant (mono PCM both ways at the conference's rate, 20 ms frames).
#[no_mangle]
pub extern "C" fn sb_conference_add_local(conference: *const sb_conference, out: *mut *mut sb_local) -> sb_status {
    ffi_guard!({
        let conference = try_ref!(conference);
        let out = try_mut!(out);
        let local = try_call!(conference.conference.add_local());
        *out = Box::into_raw(Box::new(sb_local { local }));
        sb_status::SB_OK
    })
}

/// The local participant's id, as events report it.
#[no_mangle]
pub extern "C" fn sb_local_id(local: *const sb_local, out: *mut u64) -> sb_status {
    ffi_guard!({
        let local = try_ref!(local);
        *try_mut!(out) = local.local.id().0;
        sb_status::SB_OK
    })
}

/// Queues `len` samples for the mixer, waiting up to `timeout_ms` for room
/// (the queue holds one second; the mixer takes a frame, rate / 50 samples, every 20 ms).
#[no_mangle]
pub extern "C" fn sb_local_write(local: *mut sb_local, pcm: *const i16, len: usize, timeout_ms: u32) -> sb_status {
    ffi_guard!({
        let local = try_mut!(local);
        if len == 0 {
            return sb_status::SB_OK;
        }
        let pcm = try_ref!(pcm);
        // SAFETY: the caller gives `len` readable samples at `pcm`.
        let pcm = unsafe { std::slice::from_raw_parts(pcm as *const i16, len) };
        from_result(local.local.write_all(pcm, timeout(timeout_ms)))
    })
}

/// Reads the next 20 ms frame of what the participant hears into `out`
/// (`len` must be a frame: the conference's rate / 50 samples, 960 at
/// 48 kHz), waiting up to `timeout_ms`.
#[no_mangle]
pub extern "C" fn sb_local_read_frame(local: *mut sb_local, out: *mut i16, len: usize, timeout_ms: u32) -> sb_status {
    ffi_guard!({
        let local = try_mut!(local);
        let out = try_mut!(out);
        // SAFETY: the caller gives `len` writable samples at `out`.
        let out = unsafe { std::slice::from_raw_parts_mut(out as *mut i16, len) };
        from_result(local.local.read_frame(out, timeout(timeout_ms)))
    })
}

/// Makes the local participant leave (if it has not) and frees it. NULL is allowed.
#[no_mangle]
pub extern "C" fn sb_local_free(local: *mut sb_local) {
    let _ = ffi_guard!({
        if !local.is_null() {
            // SAFETY: from sb_conference_add_local, not freed before.
            let local = unsafe { Box::from_raw(local) };
            let _ = local.local.hangup();
        }
        sb_status::SB_OK
    });
}

/// A feed of a conference's mix.
pub struct sb_frame_reader {
    reader: FrameReader,
}

/// Starts a feed of the conference mix (everyone, 8 kHz, 20 ms frames,
/// buffered one second). A new feed replaces an older one.
#[no_mangle]
pub extern "C" fn sb_conference_mixed_audio(
    conference: *const sb_conference,
    out: *mut *mut sb_frame_reader,
) -> sb_status {
    ffi_guard!({
        let conference = try_ref!(conference);
        let out = try_mut!(out);
        let reader = try_call!(conference.conference.mixed_audio());
        *out = Box::into_raw(Box::new(sb_frame_reader { reader }));
        sb_status::SB_OK
    })
}

/// Reads the next frame (`len` must be a frame: the conference's rate / 50
/// samples), waiting up to `timeout_ms`.
#[no_mangle]
pub extern "C" fn sb_frame_reader_read(
    reader: *mut sb_frame_reader,
    out: *mut i16,
    len: usize,
    timeout_ms: u32,
) -> sb_status {
    ffi_guard!({
        let reader = try_mut!(reader);
        let out = try_mut!(out);
        // SAFETY: the caller gives `len` writable samples at `out`.
        let out = unsafe { std::slice::from_raw_parts_mut(out as *mut i16, len) };
        from_result(reader.reader.read_frame(out, timeout(timeout_ms)))
    })
}

/// Frees a mix feed. NULL is allowed.
#[no_mangle]
pub extern "C" fn sb_frame_reader_free(reader: *mut sb_frame_reader) {
    let _ = ffi_guard!({
        if !reader.is_null() {
            // SAFETY: from sb_conference_mixed_audio, not freed before.
            drop(unsafe { Box::from_raw(reader) });
        }
        sb_status::SB_OK
    });
}
