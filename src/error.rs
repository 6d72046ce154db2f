//! The crate error: one enum per module, rolled up here.

use crate::media::playback::PlaybackError;
use crate::media::rtp::RtpError;
use crate::sdp::SdpError;
use crate::sip::SipError;

/// Everything that can go wrong in sipbridge.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("SIP: {0}")]
    Sip(#[from] SipError),
    #[error("SDP: {0}")]
    Sdp(#[from] SdpError),
    #[error("RTP: {0}")]
    Rtp(#[from] RtpError),
    #[error("playback: {0}")]
    Playback(#[from] PlaybackError),
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("not found: {0}")]
    NotFound(String),
    #[error("already exists: {0}")]
    AlreadyExists(String),
    /// The conference's policy has it locked: no one new may join.
    #[error("conference {0} is locked")]
    Locked(String),
    /// The conference has its policy's maximum of participants.
    #[error("conference {0} is full")]
    Full(String),
    #[error("no free RTP port in the configured range")]
    NoRtpPort,
    #[error("the endpoint has stopped")]
    Stopped,
    #[error("timed out")]
    Timeout,
    #[error("interrupted")]
    Interrupted,
}

/// `Result` with the crate error as its default.
pub type Result<T, E = Error> = std::result::Result<T, E>;
