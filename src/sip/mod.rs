//! The SIP core: message helpers, transactions and the user agent, all sans-IO.

pub mod auth;
pub mod conference_info;
pub mod digest;
pub mod locate;
pub mod message;
pub mod register_client;
pub mod registrar;
pub mod stream;
pub mod stun;
pub mod transaction;
pub mod ua;

use std::net::SocketAddr;

pub use digest::Credentials;
pub use transaction::TimerConfig;
pub use ua::{CallKey, EndReason, UaConfig, UaEvent, UserAgent};

/// What sipbridge calls itself in User-Agent and Server headers.
pub const USER_AGENT: &str = concat!("sipbridge/", env!("CARGO_PKG_VERSION"));

/// The methods sipbridge handles, for Allow headers and 405 answers.
pub const ALLOWED_METHODS: &str = "INVITE, ACK, BYE, CANCEL, OPTIONS, INFO, REGISTER, UPDATE, REFER, NOTIFY, SUBSCRIBE";

/// The event packages sipbridge notifies (RFC 6665 §8.2.2): the
/// conference package to subscribers, refer to a peer whose REFER it took.
pub const ALLOWED_EVENTS: &str = "conference, refer";

/// The transport a SIP message travels on (RFC 3261 §18).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Transport {
    Udp,
    Tcp,
    Tls,
}

impl Transport {
    /// Whether the transport delivers by itself, which turns off the
    /// transactions' retransmissions (§17.1.1.2, §17.1.2.2).
    pub fn is_reliable(self) -> bool {
        self != Transport::Udp
    }

    /// Its name in a Via header.
    pub fn via_name(self) -> &'static str {
        match self {
            Transport::Udp => "UDP",
            Transport::Tcp => "TCP",
            Transport::Tls => "TLS",
        }
    }

    /// The transport a URI names: `sips:` means TLS, else its `transport`
    /// parameter (§19.1.4); `None` when it names none.
    pub fn of_uri(uri: &str) -> Option<Transport> {
        if is_sips(uri) {
            return Some(Transport::Tls);
        }
        Transport::of_parameter(uri)
    }

    /// The transport a URI's `transport` parameter names, if any.
    pub fn of_parameter(uri: &str) -> Option<Transport> {
        let param = uri
            .split(['>', '?'])
            .next()
            .unwrap_or("")
            .split(';')
            .skip(1)
            .find_map(|p| p.split_once('=').filter(|(k, _)| k.trim().eq_ignore_ascii_case("transport")))
            .map(|(_, v)| v.trim().to_ascii_lowercase());
        match param?.as_str() {
            "udp" => Some(Transport::Udp),
            "tcp" => Some(Transport::Tcp),
            "tls" => Some(Transport::Tls),
            _ => None,
        }
    }
}

/// Whether a URI has the `sips:` scheme.
pub fn is_sips(uri: &str) -> bool {
    uri.trim_start_matches('<').get(..5).is_some_and(|s| s.eq_ignore_ascii_case("sips:"))
}

/// The other end of one hop: an address and the transport to reach it on.
/// Over TCP and TLS, messages to it go on the connection with that address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Peer {
    pub transport: Transport,
    pub addr: SocketAddr,
}

impl Peer {
    pub fn udp(addr: SocketAddr) -> Self {
        Self { transport: Transport::Udp, addr }
    }
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} over {}", self.addr, self.transport.via_name())
    }
}

/// Bytes the driver must send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    pub destination: Peer,
    pub data: Vec<u8>,
}

/// Errors of the SIP layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SipError {
    #[error("malformed message: {0}")]
    Parse(String),
    #[error("missing {0} header")]
    MissingHeader(&'static str),
    #[error("bad {0} header: {1}")]
    BadHeader(&'static str, String),
    #[error("invalid URI {0:?}: {1}")]
    InvalidUri(String, String),
    #[error("no such call")]
    UnknownCall,
    #[error("the call is in the wrong state for this")]
    WrongState,
}

#[cfg(test)]
mod tests;
