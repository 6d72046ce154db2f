//! SDP (RFC 8866) for audio sessions and the offer/answer rules of RFC 3264.
//!
//! Written by hand: sipbridge needs the session line set and audio `m=`
//! sections with their attributes, parsed without allocation surprises and
//! printed back canonically. The SDP crates on crates.io either pull in a
//! WebRTC stack (webrtc-sdp) or their own string types (sdp-types); this is the
//! few hundred lines we need, with round-trip tests.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};

use crate::media::codec::CodecKind;

/// Errors of the SDP layer.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum SdpError {
    #[error("line {line}: {reason}")]
    Syntax { line: usize, reason: String },
    #[error("missing {0}")]
    Missing(&'static str),
    #[error("no audio stream in the offer")]
    NoAudio,
    #[error("no codec in common")]
    NoCommonCodec,
}

/// A parsed session description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionDescription {
    pub origin: Origin,
    pub session_name: String,
    pub connection: Option<IpAddr>,
    /// Session-level attributes, in order.
    pub attributes: Vec<Attribute>,
    pub media: Vec<MediaDescription>,
}

/// The `o=` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub username: String,
    pub session_id: u64,
    pub session_version: u64,
    pub address: IpAddr,
}

/// One `m=` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaDescription {
    pub kind: String,
    pub port: u16,
    pub protocol: String,
    pub formats: Vec<String>,
    pub connection: Option<IpAddr>,
    pub attributes: Vec<Attribute>,
}

/// An `a=` line: `name` or `name:value`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attribute {
    pub name: String,
    pub value: Option<String>,
}

impl Attribute {
    pub fn flag(name: &str) -> Self {
        Self { name: name.into(), value: None }
    }

    pub fn new(name: &str, value: impl Into<String>) -> Self {
        Self { name: name.into(), value: Some(value.into()) }
    }
}

/// Media direction (RFC 3264 §5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    SendRecv,
    SendOnly,
    RecvOnly,
    Inactive,
}

impl Direction {
    fn name(self) -> &'static str {
        match self {
            Direction::SendRecv => "sendrecv",
            Direction::SendOnly => "sendonly",
            Direction::RecvOnly => "recvonly",
            Direction::Inactive => "inactive",
        }
    }

    fn from_attributes(attributes: &[Attribute]) -> Option<Self> {
        attributes.iter().find_map(|a| match a.name.as_str() {
            "sendrecv" => Some(Direction::SendRecv),
            "sendonly" => Some(Direction::SendOnly),
            "recvonly" => Some(Direction::RecvOnly),
            "inactive" => Some(Direction::Inactive),
            _ => None,
        })
    }

    /// The direction an answerer takes for an offer in this direction.
    fn answer(self) -> Self {
        match self {
            Direction::SendOnly => Direction::RecvOnly,
            Direction::RecvOnly => Direction::SendOnly,
            other => other,
        }
    }
}

impl MediaDescription {
    fn attribute<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> {
        self.attributes.iter().filter(move |a| a.name == name).filter_map(|a| a.value.as_deref())
    }

    /// The `a=rtpmap` encoding name and clock rate of a payload type, with the
    /// static assignments of RFC 3551 as the fallback.
    pub fn rtpmap(&self, payload_type: u8) -> Option<(String, u32)> {
        let prefix = format!("{payload_type} ");
        let mapped = self.attribute("rtpmap").find_map(|v| v.strip_prefix(&prefix)).and_then(|enc| {
            let mut parts = enc.trim().split('/');
            let name = parts.next()?.to_string();
            let rate = parts.next()?.parse().ok()?;
            Some((name, rate))
        });
        mapped.or_else(|| match payload_type {
            13 => Some(("CN".into(), 8000)),
            pt => CodecKind::from_static_payload_type(pt).map(|c| (c.encoding_name().into(), c.clock_rate())),
        })
    }

    fn direction(&self, session: &[Attribute]) -> Direction {
        Direction::from_attributes(&self.attributes)
            .or_else(|| Direction::from_attributes(session))
            .unwrap_or(Direction::SendRecv)
    }
}

impl SessionDescription {
    /// Parses SDP text (CRLF or bare LF line ends).
    pub fn parse(text: &[u8]) -> Result<Self, SdpError> {
        let text = std::str::from_utf8(text).map_err(|_| SdpError::Syntax { line: 0, reason: "not UTF-8".into() })?;
        let mut origin = None;
        let mut session_name = String::new();
        let mut connection = None;
        let mut attributes = Vec::new();
        let mut media: Vec<MediaDescription> = Vec::new();
        for (index, raw) in text.lines().enumerate() {
            let line = index + 1;
            let raw = raw.trim_end_matches('\r');
            if raw.is_empty() {
                continue;
            }
            let syntax = |reason: &str| SdpError::Syntax { line, reason: reason.into() };
            let (kind, value) = raw.split_once('=').ok_or_else(|| syntax("expected <type>=<value>"))?;
            match kind {
                "v" if value != "0" => return Err(syntax("unsupported version")),
                "o" => origin = Some(parse_origin(value).ok_or_else(|| syntax("bad o= line"))?),
                "s" => session_name = value.to_string(),
                "c" => {
                    let address = parse_connection(value).ok_or_else(|| syntax("bad c= line"))?;
                    match media.last_mut() {
                        Some(m) => m.connection = Some(address),
                        None => connection = Some(address),
                    }
                }
                "m" => media.push(parse_media(value).ok_or_else(|| syntax("bad m= line"))?),
                "a" => {
                    let attribute = match value.split_once(':') {
                        Some((name, v)) => Attribute::new(name, v),
                        None => Attribute::flag(value),
                    };
                    match media.last_mut() {
                        Some(m) => m.attributes.push(attribute),
                        None => attributes.push(attribute),
                    }
                }
                _ => {} // b=, t=, i=, u=, e=, p=, k=, r=, z=: not needed for audio negotiation.
            }
        }
        Ok(Self { origin: origin.ok_or(SdpError::Missing("o= line"))?, session_name, connection, attributes, media })
    }

    /// Prints the description with CRLF line ends.
    pub fn print(&self) -> String {
        let mut out = String::new();
        let o = &self.origin;
        let _ = write!(
            out,
            "v=0\r\no={} {} {} IN {} {}\r\n",
            o.username,
            o.session_id,
            o.session_version,
            ip_kind(o.address),
            o.address
        );
        let _ = write!(out, "s={}\r\n", if self.session_name.is_empty() { "-" } else { &self.session_name });
        if let Some(c) = self.connection {
            let _ = write!(out, "c=IN {} {}\r\n", ip_kind(c), c);
        }
        out.push_str("t=0 0\r\n");
        write_attributes(&mut out, &self.attributes);
        for m in &self.media {
            let _ = write!(out, "m={} {} {} {}\r\n", m.kind, m.port, m.protocol, m.formats.join(" "));
            if let Some(c) = m.connection {
                let _ = write!(out, "c=IN {} {}\r\n", ip_kind(c), c);
            }
            write_attributes(&mut out, &m.attributes);
        }
        out
    }
}

fn write_attributes(out: &mut String, attributes: &[Attribute]) {
    for a in attributes {
        let _ = match &a.value {
            Some(v) => write!(out, "a={}:{}\r\n", a.name, v),
            None => write!(out, "a={}\r\n", a.name),
        };
    }
}

fn ip_kind(ip: IpAddr) -> &'static str {
    if ip.is_ipv4() {
        "IP4"
    } else {
        "IP6"
    }
}

fn parse_origin(value: &str) -> Option<Origin> {
    let parts: Vec<&str> = value.split_whitespace().collect();
    let [username, id, version, "IN", _kind, address] = parts.as_slice() else { return None };
    Some(Origin {
        username: username.to_string(),
        session_id: id.parse().ok()?,
        session_version: version.parse().ok()?,
        // An FQDN origin is legal; it only names the session, so map it to unspecified.
        address: address.parse().unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)),
    })
}

fn parse_connection(value: &str) -> Option<IpAddr> {
    let parts: Vec<&str> = value.split_whitespace().collect();
    let ["IN", _kind, address] = parts.as_slice() else { return None };
    // Multicast forms carry /ttl; sipbridge is unicast only, but parse the address.
    address.split('/').next()?.parse().ok()
}

fn parse_media(value: &str) -> Option<MediaDescription> {
    let mut parts = value.split_whitespace();
    let kind = parts.next()?.to_string();
    let port = parts.next()?.split('/').next()?.parse().ok()?;
    let protocol = parts.next()?.to_string();
    let formats = parts.map(String::from).collect();
    Some(MediaDescription { kind, port, protocol, formats, connection: None, attributes: Vec::new() })
}

/// What this side can do, for building offers and answers.
#[derive(Debug, Clone)]
pub struct LocalMedia {
    /// Address and port RTP is received on (the public one when behind NAT).
    pub address: SocketAddr,
    /// Codecs in order of preference.
    pub codecs: Vec<CodecKind>,
    /// Whether we ask Opus peers for DTX (our usedtx).
    pub opus_dtx: bool,
    /// Origin session id, stable for the life of a call.
    pub session_id: u64,
    pub session_version: u64,
}

/// What the peer's Opus fmtp asks of our encoder (RFC 7587 §6.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpusPeer {
    /// The peer can use in-band FEC (useinbandfec=1).
    pub fec: bool,
    /// The peer prefers DTX (usedtx=1).
    pub dtx: bool,
    /// The highest audio rate the peer wants to receive (maxplaybackrate).
    pub max_playback_rate: u32,
}

impl Default for OpusPeer {
    fn default() -> Self {
        // RFC 7587 §6.1 defaults.
        Self { fec: false, dtx: false, max_playback_rate: 48000 }
    }
}

/// The media both sides agreed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NegotiatedMedia {
    pub codec: CodecKind,
    /// The payload type to send and expect for the codec.
    pub payload_type: u8,
    /// The payload type of telephone-event (RFC 4733) at the codec's clock rate, when both sides have it.
    pub telephone_event: Option<u8>,
    /// The payload type of comfort noise (RFC 3389) at the codec's clock rate, when both sides have it.
    pub comfort_noise: Option<u8>,
    /// The peer's Opus parameters (defaults for other codecs).
    pub opus: OpusPeer,
    /// RTCP shares the RTP port (RFC 5761), else it goes to the port above.
    pub rtcp_mux: bool,
    /// Where to send RTP, from the peer's description (0.0.0.0 or port 0 means hold).
    pub remote: SocketAddr,
    /// Our direction.
    pub direction: Direction,
    /// The header extension id of the client-to-mixer audio level (RFC 6464),
    /// when both sides have it.
    pub audio_level: Option<u8>,
}

/// The payload types we offer telephone-event with, at 8 and 48 kHz: the
/// events share the RTP clock of the audio they go with (RFC 4733 §2.1).
pub const TELEPHONE_EVENT_PT: u8 = 101;
pub const TELEPHONE_EVENT_48K_PT: u8 = 110;
/// The static payload type of comfort noise at 8 kHz (RFC 3551).
pub const COMFORT_NOISE_PT: u8 = 13;
/// The client-to-mixer audio level header extension (RFC 6464), and the id we offer it with.
pub const AUDIO_LEVEL_URI: &str = "urn:ietf:params:rtp-hdrext:ssrc-audio-level";
pub const AUDIO_LEVEL_ID: u8 = 1;

/// One payload type of a description we build.
#[derive(Debug, Clone, Copy)]
enum Format {
    Audio(CodecKind, u8),
    TelephoneEvent(u32, u8),
    ComfortNoise(u8),
}

/// Builds an offer for `local` (RFC 3264 §5): every codec, telephone-event at
/// each clock rate used, and comfort noise for the 8 kHz clock.
pub fn offer(local: &LocalMedia) -> SessionDescription {
    let formats = offered_formats(&local.codecs);
    description(local, &formats, Direction::SendRecv, true, Some(AUDIO_LEVEL_ID))
}

/// `codecs` with their usual payload types, and telephone-event (and for
/// 8 kHz comfort noise) at each clock rate among them.
fn offered_formats(codecs: &[CodecKind]) -> Vec<Format> {
    let mut formats: Vec<Format> = codecs.iter().map(|c| Format::Audio(*c, c.default_payload_type())).collect();
    if codecs.iter().any(|c| c.clock_rate() == 8000) {
        formats.push(Format::TelephoneEvent(8000, TELEPHONE_EVENT_PT));
        formats.push(Format::ComfortNoise(COMFORT_NOISE_PT));
    }
    if codecs.iter().any(|c| c.clock_rate() == 48000) {
        formats.push(Format::TelephoneEvent(48000, TELEPHONE_EVENT_48K_PT));
    }
    formats
}

/// A new offer in an established session (§8 of RFC 3264), in `direction`
/// (inactive to hold, sendrecv to resume): the codec and payload types in
/// use, or to change codec, `codec` alone with its usual payload types.
pub fn reoffer(
    local: &LocalMedia,
    media: &NegotiatedMedia,
    codec: CodecKind,
    direction: Direction,
) -> SessionDescription {
    let formats = if codec == media.codec {
        let mut formats = vec![Format::Audio(media.codec, media.payload_type)];
        if let Some(pt) = media.telephone_event {
            formats.push(Format::TelephoneEvent(media.codec.clock_rate(), pt));
        }
        if let Some(pt) = media.comfort_noise {
            formats.push(Format::ComfortNoise(pt));
        }
        formats
    } else {
        offered_formats(&[codec])
    };
    description(local, &formats, direction, media.rtcp_mux, media.audio_level)
}

fn description(
    local: &LocalMedia,
    formats: &[Format],
    direction: Direction,
    rtcp_mux: bool,
    audio_level: Option<u8>,
) -> SessionDescription {
    let ip = local.address.ip();
    let mut attributes = Vec::new();
    let mut numbers = Vec::new();
    for format in formats {
        match *format {
            Format::Audio(codec, pt) => {
                numbers.push(pt.to_string());
                let channels = codec.rtpmap_channels().map(|c| format!("/{c}")).unwrap_or_default();
                let rtpmap = format!("{pt} {}/{}{channels}", codec.encoding_name(), codec.clock_rate());
                attributes.push(Attribute::new("rtpmap", rtpmap));
                if codec == CodecKind::Opus {
                    // What we receive: mono, full band, FEC welcome (RFC 7587 §6.1).
                    let dtx = u8::from(local.opus_dtx);
                    let fmtp = format!(
                        "{pt} minptime=10;useinbandfec=1;usedtx={dtx};stereo=0;sprop-stereo=0;\
                         maxplaybackrate=48000;sprop-maxcapturerate=48000"
                    );
                    attributes.push(Attribute::new("fmtp", fmtp));
                }
            }
            Format::TelephoneEvent(rate, pt) => {
                numbers.push(pt.to_string());
                attributes.push(Attribute::new("rtpmap", format!("{pt} telephone-event/{rate}")));
                attributes.push(Attribute::new("fmtp", format!("{pt} 0-16")));
            }
            Format::ComfortNoise(pt) => {
                numbers.push(pt.to_string());
                attributes.push(Attribute::new("rtpmap", format!("{pt} CN/8000")));
            }
        }
    }
    let formats = numbers;
    attributes.push(Attribute::new("ptime", "20"));
    if rtcp_mux {
        attributes.push(Attribute::flag("rtcp-mux"));
    }
    if let Some(id) = audio_level {
        attributes.push(Attribute::new("extmap", format!("{id} {AUDIO_LEVEL_URI}")));
    }
    attributes.push(Attribute::flag(direction.name()));
    SessionDescription {
        origin: Origin {
            username: "sipbridge".into(),
            session_id: local.session_id,
            session_version: local.session_version,
            address: ip,
        },
        session_name: "sipbridge".into(),
        connection: Some(ip),
        attributes: Vec::new(),
        media: vec![MediaDescription {
            kind: "audio".into(),
            port: local.address.port(),
            protocol: "RTP/AVP".into(),
            formats,
            connection: None,
            attributes,
        }],
    }
}

/// Answers `offer` (RFC 3264 §6): the first audio stream, our most preferred
/// codec the offer also has, one codec in the answer; other streams rejected
/// with port 0.
pub fn answer(
    offer: &SessionDescription,
    local: &LocalMedia,
) -> Result<(SessionDescription, NegotiatedMedia), SdpError> {
    let (index, stream) = offer
        .media
        .iter()
        .enumerate()
        .find(|(_, m)| m.kind == "audio" && m.port != 0 && m.protocol.starts_with("RTP/AVP"))
        .ok_or(SdpError::NoAudio)?;
    let negotiated = negotiate(offer, stream, &local.codecs)?;
    let direction = stream.direction(&offer.attributes).answer();
    let mut formats = vec![Format::Audio(negotiated.codec, negotiated.payload_type)];
    let rate = negotiated.codec.clock_rate();
    formats.extend(negotiated.telephone_event.map(|pt| Format::TelephoneEvent(rate, pt)));
    formats.extend(negotiated.comfort_noise.map(Format::ComfortNoise));
    let mut answer = description(local, &formats, direction, negotiated.rtcp_mux, negotiated.audio_level);
    // Keep the offer's order of m= lines (§6): refuse the others with port 0.
    let ours = answer.media.remove(0);
    answer.media = offer
        .media
        .iter()
        .enumerate()
        .map(|(i, m)| {
            if i == index {
                ours.clone()
            } else {
                MediaDescription { port: 0, connection: None, attributes: Vec::new(), ..m.clone() }
            }
        })
        .collect();
    Ok((answer, NegotiatedMedia { direction, ..negotiated }))
}

/// Reads the answer to an offer we made (RFC 3264 §7).
pub fn accept_answer(answer: &SessionDescription, local: &LocalMedia) -> Result<NegotiatedMedia, SdpError> {
    let stream = answer.media.iter().find(|m| m.kind == "audio" && m.port != 0).ok_or(SdpError::NoAudio)?;
    let negotiated = negotiate(answer, stream, &local.codecs)?;
    Ok(NegotiatedMedia { direction: stream.direction(&answer.attributes).answer(), ..negotiated })
}

/// Reads the Opus fmtp parameters of `payload_type` in `stream`.
fn opus_peer(stream: &MediaDescription, payload_type: u8) -> OpusPeer {
    let prefix = format!("{payload_type} ");
    let mut peer = OpusPeer::default();
    let Some(params) = stream.attribute("fmtp").find_map(|v| v.strip_prefix(&prefix)) else { return peer };
    for param in params.split(';') {
        let (key, value) = param.trim().split_once('=').unwrap_or((param.trim(), ""));
        match key.to_ascii_lowercase().as_str() {
            "useinbandfec" => peer.fec = value.trim() == "1",
            "usedtx" => peer.dtx = value.trim() == "1",
            "maxplaybackrate" => {
                if let Ok(rate) = value.trim().parse::<u32>() {
                    peer.max_playback_rate = rate.clamp(8000, 48000);
                }
            }
            _ => {}
        }
    }
    peer
}

/// Picks our most preferred codec that `stream` lists, with its payload type
/// there, and the peer's RTP address.
fn negotiate(
    session: &SessionDescription,
    stream: &MediaDescription,
    preferences: &[CodecKind],
) -> Result<NegotiatedMedia, SdpError> {
    let offered: Vec<(u8, String, u32)> = stream
        .formats
        .iter()
        .filter_map(|f| f.parse::<u8>().ok())
        .filter_map(|pt| stream.rtpmap(pt).map(|(name, rate)| (pt, name, rate)))
        .collect();
    let (codec, payload_type) = preferences
        .iter()
        .find_map(|codec| {
            offered
                .iter()
                .find(|(_, name, rate)| name.eq_ignore_ascii_case(codec.encoding_name()) && *rate == codec.clock_rate())
                .map(|(pt, _, _)| (*codec, *pt))
        })
        .ok_or(SdpError::NoCommonCodec)?;
    let with_codec_clock = |wanted: &str| {
        offered
            .iter()
            .find(|(_, name, rate)| name.eq_ignore_ascii_case(wanted) && *rate == codec.clock_rate())
            .map(|(pt, _, _)| *pt)
    };
    let opus = match codec {
        CodecKind::Opus => opus_peer(stream, payload_type),
        _ => OpusPeer::default(),
    };
    let ip = stream.connection.or(session.connection).ok_or(SdpError::Missing("c= line"))?;
    Ok(NegotiatedMedia {
        codec,
        payload_type,
        telephone_event: with_codec_clock("telephone-event"),
        // Opus has DTX for silence; CN goes with the 8 kHz codecs.
        comfort_noise: if codec.clock_rate() == 8000 { with_codec_clock("CN") } else { None },
        opus,
        rtcp_mux: stream.attributes.iter().any(|a| a.name == "rtcp-mux"),
        remote: SocketAddr::new(ip, stream.port),
        direction: Direction::SendRecv,
        audio_level: audio_level_id(stream),
    })
}

/// The id `stream` maps the audio level extension to: `a=extmap:<id>[/<direction>] <uri> [attributes]`,
/// an id the one-byte header can carry (1–14, RFC 8285 §4.2).
fn audio_level_id(stream: &MediaDescription) -> Option<u8> {
    stream.attribute("extmap").find_map(|value| {
        let mut words = value.split_whitespace();
        let id = words.next()?.split('/').next()?.parse::<u8>().ok()?;
        (words.next()? == AUDIO_LEVEL_URI && (1..=14).contains(&id)).then_some(id)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An offer as sipp's uac_pcap scenario sends it (LF line ends, PCMA and telephone-event).
    const SIPP_OFFER: &str = "v=0\no=user1 53655765 2353687637 IN IP4 127.0.0.1\ns=-\nc=IN IP4 127.0.0.1\nt=0 0\nm=audio 6000 RTP/AVP 8 101\na=rtpmap:8 PCMA/8000\na=rtpmap:101 telephone-event/8000\na=fmtp:101 0-11,16\n";

    fn local() -> LocalMedia {
        LocalMedia {
            address: "127.0.0.1:30000".parse().unwrap(),
            codecs: vec![CodecKind::Pcmu, CodecKind::Pcma],
            opus_dtx: false,
            session_id: 7,
            session_version: 1,
        }
    }

    #[test]
    fn the_audio_level_extension_is_offered_and_echoed_with_the_offers_id() {
        assert!(offer(&local()).print().contains("a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level"));
        let with_level = SIPP_OFFER.replace(
            "a=rtpmap:8 PCMA/8000\n",
            "a=rtpmap:8 PCMA/8000\na=extmap:3/sendonly urn:ietf:params:rtp-hdrext:ssrc-audio-level vad=on\n",
        );
        let (answer_sdp, negotiated) =
            answer(&SessionDescription::parse(with_level.as_bytes()).unwrap(), &local()).unwrap();
        assert_eq!(negotiated.audio_level, Some(3));
        assert!(answer_sdp.print().contains("a=extmap:3 urn:ietf:params:rtp-hdrext:ssrc-audio-level"));
        // Not offered, not answered; an id the one-byte header cannot carry is not used.
        let (answer_sdp, negotiated) =
            answer(&SessionDescription::parse(SIPP_OFFER.as_bytes()).unwrap(), &local()).unwrap();
        assert_eq!(negotiated.audio_level, None);
        assert!(!answer_sdp.print().contains("extmap"));
        let two_byte_id = SIPP_OFFER.replace(
            "a=rtpmap:8 PCMA/8000\n",
            "a=rtpmap:8 PCMA/8000\na=extmap:20 urn:ietf:params:rtp-hdrext:ssrc-audio-level\n",
        );
        let (_, negotiated) = answer(&SessionDescription::parse(two_byte_id.as_bytes()).unwrap(), &local()).unwrap();
        assert_eq!(negotiated.audio_level, None);
    }

    #[test]
    fn parse_print_round_trip() {
        let parsed = SessionDescription::parse(SIPP_OFFER.as_bytes()).unwrap();
        assert_eq!(parsed.media[0].port, 6000);
        assert_eq!(parsed.media[0].formats, vec!["8", "101"]);
        let printed = parsed.print();
        assert_eq!(SessionDescription::parse(printed.as_bytes()).unwrap(), parsed);
        assert!(printed.contains("m=audio 6000 RTP/AVP 8 101\r\n"));
    }

    #[test]
    fn answer_picks_the_common_codec_and_keeps_its_payload_type() {
        let offer = SessionDescription::parse(SIPP_OFFER.as_bytes()).unwrap();
        let (answer, media) = answer(&offer, &local()).unwrap();
        assert_eq!(media.codec, CodecKind::Pcma);
        assert_eq!(media.payload_type, 8);
        assert_eq!(media.telephone_event, Some(101));
        assert_eq!(media.remote, "127.0.0.1:6000".parse().unwrap());
        let text = answer.print();
        assert!(text.contains("m=audio 30000 RTP/AVP 8 101\r\n"), "{text}");
        assert!(text.contains("a=sendrecv"));
    }

    #[test]
    fn dynamic_payload_type_is_matched_by_name() {
        let offer =
            SIPP_OFFER.replace("RTP/AVP 8 101", "RTP/AVP 96").replace("a=rtpmap:8 PCMA/8000", "a=rtpmap:96 PCMU/8000");
        let (_, media) = answer(&SessionDescription::parse(offer.as_bytes()).unwrap(), &local()).unwrap();
        assert_eq!((media.codec, media.payload_type), (CodecKind::Pcmu, 96));
    }

    #[test]
    fn no_common_codec_is_an_error() {
        let offer =
            SIPP_OFFER.replace("RTP/AVP 8 101", "RTP/AVP 18").replace("a=rtpmap:8 PCMA/8000", "a=rtpmap:18 G729/8000");
        let offer = SessionDescription::parse(offer.as_bytes()).unwrap();
        assert_eq!(answer(&offer, &local()).unwrap_err(), SdpError::NoCommonCodec);
    }

    #[test]
    fn sendonly_offer_gets_recvonly_answer_and_extra_streams_are_refused() {
        let offer = format!("{SIPP_OFFER}a=sendonly\nm=video 7000 RTP/AVP 96\na=rtpmap:96 H264/90000\n");
        let (answer, media) = answer(&SessionDescription::parse(offer.as_bytes()).unwrap(), &local()).unwrap();
        assert_eq!(media.direction, Direction::RecvOnly);
        assert_eq!(answer.media.len(), 2);
        assert_eq!(answer.media[1].port, 0);
    }

    #[test]
    fn offer_then_answer_agree() {
        let ours = offer(&local());
        let theirs = LocalMedia {
            address: "127.0.0.1:40000".parse().unwrap(),
            codecs: vec![CodecKind::Pcma],
            opus_dtx: false,
            session_id: 9,
            session_version: 1,
        };
        let (reply, their_view) =
            answer(&SessionDescription::parse(ours.print().as_bytes()).unwrap(), &theirs).unwrap();
        let our_view = accept_answer(&SessionDescription::parse(reply.print().as_bytes()).unwrap(), &local()).unwrap();
        assert_eq!(their_view.codec, CodecKind::Pcma);
        assert_eq!(our_view.codec, CodecKind::Pcma);
        assert_eq!(our_view.remote, "127.0.0.1:40000".parse().unwrap());
        assert_eq!(their_view.remote, "127.0.0.1:30000".parse().unwrap());
    }

    #[test]
    fn broken_sdp_is_an_error() {
        for bad in ["", "v=1\n", "o=x\n", "garbage", "v=0\no=a 1 2 IN IP4 1.2.3.4\nm=audio notaport RTP/AVP 0\n"] {
            assert!(SessionDescription::parse(bad.as_bytes()).is_err(), "{bad:?}");
        }
    }

    /// An offer as baresip makes it with its opus, G722 and G.711 modules.
    const WIDEBAND_OFFER: &str = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
        m=audio 7000 RTP/AVP 96 9 0 8 101\r\na=rtpmap:96 opus/48000/2\r\n\
        a=fmtp:96 stereo=1;sprop-stereo=1;useinbandfec=1;maxplaybackrate=16000\r\n\
        a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\na=ptime:20\r\n";

    #[test]
    fn the_preferred_codec_wins_and_opus_fmtp_is_read() {
        let offer = SessionDescription::parse(WIDEBAND_OFFER.as_bytes()).unwrap();
        let mut ours = local();
        ours.codecs = vec![CodecKind::Opus, CodecKind::G722, CodecKind::Pcmu];
        let (reply, media) = answer(&offer, &ours).unwrap();
        assert_eq!((media.codec, media.payload_type), (CodecKind::Opus, 96));
        assert_eq!(media.opus, OpusPeer { fec: true, dtx: false, max_playback_rate: 16000 });
        // The events in this offer run on an 8 kHz clock: not usable beside 48 kHz Opus.
        assert_eq!(media.telephone_event, None);
        let text = reply.print();
        assert!(text.contains("m=audio 30000 RTP/AVP 96\r\n"), "{text}");
        assert!(text.contains("a=rtpmap:96 opus/48000/2\r\n"), "{text}");
        assert!(text.contains("a=fmtp:96 minptime=10;useinbandfec=1;usedtx=0;stereo=0"), "{text}");

        ours.codecs = vec![CodecKind::G722, CodecKind::Opus];
        let (reply, media) = answer(&offer, &ours).unwrap();
        assert_eq!((media.codec, media.payload_type, media.telephone_event), (CodecKind::G722, 9, Some(101)));
        assert!(reply.print().contains("a=rtpmap:9 G722/8000\r\n"));
    }

    #[test]
    fn our_offer_lists_every_codec_with_events_and_comfort_noise_per_clock() {
        let mut ours = local();
        ours.codecs = vec![CodecKind::Opus, CodecKind::G722, CodecKind::Pcmu];
        let text = offer(&ours).print();
        assert!(text.contains("m=audio 30000 RTP/AVP 111 9 0 101 13 110\r\n"), "{text}");
        assert!(text.contains("a=rtpmap:110 telephone-event/48000\r\n"));
        assert!(text.contains("a=rtpmap:13 CN/8000\r\n"));
        let theirs = SessionDescription::parse(text.as_bytes()).unwrap();
        let (_, media) = answer(&theirs, &local()).unwrap();
        assert_eq!((media.codec, media.telephone_event, media.comfort_noise), (CodecKind::Pcmu, Some(101), Some(13)));
    }
}
