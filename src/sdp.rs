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
            0 => Some(("PCMU".into(), 8000)),
            8 => Some(("PCMA".into(), 8000)),
            _ => None,
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
    /// Origin session id, stable for the life of a call.
    pub session_id: u64,
    pub session_version: u64,
}

/// The media both sides agreed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NegotiatedMedia {
    pub codec: CodecKind,
    /// The payload type to send and expect for the codec.
    pub payload_type: u8,
    /// The payload type of telephone-event (RFC 4733), when both sides have it.
    pub telephone_event: Option<u8>,
    /// Where to send RTP, from the peer's description (0.0.0.0 or port 0 means hold).
    pub remote: SocketAddr,
    /// Our direction.
    pub direction: Direction,
}

/// The payload type advertised for telephone-event.
pub const TELEPHONE_EVENT_PT: u8 = 101;

/// Builds an offer for `local` (RFC 3264 §5).
pub fn offer(local: &LocalMedia) -> SessionDescription {
    let formats: Vec<u8> = local.codecs.iter().map(|c| c.static_payload_type()).collect();
    description(local, &formats, Some(TELEPHONE_EVENT_PT), Direction::SendRecv)
}

fn description(
    local: &LocalMedia,
    payload_types: &[u8],
    telephone_event: Option<u8>,
    direction: Direction,
) -> SessionDescription {
    let ip = local.address.ip();
    let mut attributes = Vec::new();
    let mut formats = Vec::new();
    for (&pt, codec) in payload_types.iter().zip(local.codecs.iter().cycle()) {
        let codec = CodecKind::from_static_payload_type(pt).unwrap_or(*codec);
        formats.push(pt.to_string());
        attributes.push(Attribute::new("rtpmap", format!("{pt} {}/{}", codec.encoding_name(), codec.clock_rate())));
    }
    if let Some(pt) = telephone_event {
        formats.push(pt.to_string());
        attributes.push(Attribute::new("rtpmap", format!("{pt} telephone-event/8000")));
        attributes.push(Attribute::new("fmtp", format!("{pt} 0-16")));
    }
    attributes.push(Attribute::new("ptime", "20"));
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
    let mut answer = description(local, &[negotiated.payload_type], negotiated.telephone_event, direction);
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
    let telephone_event = offered
        .iter()
        .find(|(_, name, rate)| name.eq_ignore_ascii_case("telephone-event") && *rate == 8000)
        .map(|(pt, _, _)| *pt);
    let ip = stream.connection.or(session.connection).ok_or(SdpError::Missing("c= line"))?;
    Ok(NegotiatedMedia {
        codec,
        payload_type,
        telephone_event,
        remote: SocketAddr::new(ip, stream.port),
        direction: Direction::SendRecv,
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
            session_id: 7,
            session_version: 1,
        }
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
}
