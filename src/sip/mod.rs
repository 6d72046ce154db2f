//! The SIP core: message helpers, transactions and the user agent, all sans-IO.

pub mod auth;
pub mod digest;
pub mod message;
pub mod register_client;
pub mod registrar;
pub mod transaction;
pub mod ua;

use std::net::SocketAddr;

pub use digest::Credentials;
pub use transaction::TimerConfig;
pub use ua::{CallKey, EndReason, UaConfig, UaEvent, UserAgent};

/// What sipbridge calls itself in User-Agent and Server headers.
pub const USER_AGENT: &str = concat!("sipbridge/", env!("CARGO_PKG_VERSION"));

/// The methods sipbridge handles, for Allow headers and 405 answers.
pub const ALLOWED_METHODS: &str = "INVITE, ACK, BYE, CANCEL, OPTIONS, INFO, REGISTER, UPDATE";

/// Bytes the driver must send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    pub destination: SocketAddr,
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
