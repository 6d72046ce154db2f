//! Media: RTP, codecs, jitter buffering and the mixer.

pub mod codec;
pub mod denoise;
pub mod dtmf;
pub mod g722;
pub mod jitter;
pub mod mixer;
pub mod plc;
pub mod resample;
pub mod rtcp;
pub mod rtp;
