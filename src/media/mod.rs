//! Media: RTP, codecs, jitter buffering, the mixer and prompts.

pub mod codec;
pub mod denoise;
pub mod dtmf;
pub mod g722;
pub mod jitter;
pub mod mixer;
pub mod playback;
pub mod plc;
pub mod resample;
pub mod rtcp;
pub mod rtp;
