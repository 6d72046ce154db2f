//! sipbridge: a SIP multi-party audio conferencing engine.
//!
//! A SIP stack (sans-IO, driven by tokio) and a lock-free mixer thread, with a
//! C ABI ([`ffi`]) and a Python module on top. Start with [`Endpoint`].
//!
//! ```no_run
//! use sipbridge::{Endpoint, EndpointConfig};
//! let endpoint = Endpoint::start(EndpointConfig { listen: "127.0.0.1:5060".parse().unwrap(), ..Default::default() })?;
//! let room = endpoint.create_conference("standup")?;
//! room.dial("sip:alice@127.0.0.1:5070")?;
//! while let Ok(event) = endpoint.next_event(None) {
//!     println!("{event:?}");
//! }
//! # Ok::<(), sipbridge::Error>(())
//! ```

pub mod api;
mod engine;
mod error;
pub mod ffi;
pub mod media;
pub mod policy;
#[cfg(feature = "python")]
mod python;
pub mod sdp;
pub mod sip;

pub use api::{
    frame_samples, Account, AccountId, Conference, Endpoint, EndpointConfig, Event, FrameReader, LeaveReason,
    LocalParticipant, MixerReport, Participant, ParticipantId, ParticipantInfo, ParticipantKind, ParticipantState,
    Playback, PlaybackEnd, PlaybackId, RegistrationState, TapFrame, TapReader, DEFAULT_SAMPLE_RATE,
    MAX_PARTICIPANT_SET,
};
pub use error::{Error, Result};
pub use media::codec::{CodecKind, OpusSettings};
pub use media::mixer::TalkerPolicy;
pub use media::playback::PlaybackError;
pub use policy::{Admission, ConferencePolicy};
pub use sip::Credentials;
