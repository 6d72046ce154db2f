//! Parsing and printing SIP messages with rsip, plus the few header look-ups the
//! transaction and dialog layers need.
//!
//! rsip does the grammar. What this module adds: compact header names (RFC 3261
//! §7.3.3, which rsip leaves as `Other`), comma-joined Via values split into one
//! header each, a Content-Length check, and panic containment around the parser.

use std::net::SocketAddr;

use rsip::headers::{ToTypedHeader, UntypedHeader};
use rsip::prelude::HeadersExt;
use rsip::{Header, Method, Request, Response, SipMessage};

use super::registrar::{ContactChange, RequestedContact};
use super::SipError;

/// The magic cookie every RFC 3261 branch starts with (§8.1.1.7).
pub const BRANCH_COOKIE: &str = "z9hG4bK";

/// Parses one datagram (or one framed stream message) into a SIP message.
pub fn parse(data: &[u8]) -> Result<SipMessage, SipError> {
    // A keep-alive (RFC 5626 §3.5.1) is not a message; callers skip it before parsing.
    let data = trim_leading_crlf(data);
    // rsip is a third-party nom parser fed with whatever a peer sends: contain a
    // panic in it as a parse error rather than trusting it never to happen.
    let parsed = std::panic::catch_unwind(|| SipMessage::try_from(data))
        .map_err(|_| SipError::Parse("parser panicked".into()))?;
    let mut message = parsed.map_err(|e| SipError::Parse(e.to_string()))?;
    normalize_headers(headers_mut(&mut message));
    check_content_length(&message)?;
    Ok(message)
}

/// Whether a datagram is only a CRLF keep-alive.
pub fn is_keepalive(data: &[u8]) -> bool {
    data.iter().all(|b| matches!(b, b'\r' | b'\n' | b' ' | b'\t'))
}

fn trim_leading_crlf(data: &[u8]) -> &[u8] {
    let start = data.iter().position(|b| !matches!(b, b'\r' | b'\n')).unwrap_or(data.len());
    &data[start..]
}

fn headers_mut(message: &mut SipMessage) -> &mut rsip::Headers {
    match message {
        SipMessage::Request(r) => &mut r.headers,
        SipMessage::Response(r) => &mut r.headers,
    }
}

/// Expands compact header names and splits comma-joined Via values.
fn normalize_headers(headers: &mut rsip::Headers) {
    let old: Vec<Header> = std::mem::take(headers).into_iter().collect();
    for header in old {
        let header = match header {
            Header::Other(name, value) => expand_compact(name, value),
            other => other,
        };
        match header {
            Header::Via(via) if via.value().contains(',') => {
                for part in split_top_level_commas(via.value()) {
                    headers.push(Header::Via(rsip::headers::Via::new(part)));
                }
            }
            other => headers.push(other),
        }
    }
}

fn expand_compact(name: String, value: String) -> Header {
    use rsip::headers as h;
    match name.as_str() {
        "v" | "V" => Header::Via(h::Via::new(value)),
        "f" | "F" => Header::From(h::From::new(value)),
        "t" | "T" => Header::To(h::To::new(value)),
        "i" | "I" => Header::CallId(h::CallId::new(value)),
        "m" | "M" => Header::Contact(h::Contact::new(value)),
        "l" | "L" => Header::ContentLength(h::ContentLength::new(value)),
        "c" | "C" => Header::ContentType(h::ContentType::new(value)),
        "k" | "K" => Header::Supported(h::Supported::new(value)),
        _ => Header::Other(name, value),
    }
}

/// Splits a header value on commas that are not inside quotes or angle brackets.
fn split_top_level_commas(value: &str) -> Vec<String> {
    let mut parts = Vec::new();
    let (mut quoted, mut angled, mut start) = (false, false, 0);
    for (i, c) in value.char_indices() {
        match c {
            '"' => quoted = !quoted,
            '<' if !quoted => angled = true,
            '>' if !quoted => angled = false,
            ',' if !quoted && !angled => {
                parts.push(value[start..i].trim().to_string());
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(value[start..].trim().to_string());
    parts.retain(|p| !p.is_empty());
    parts
}

fn check_content_length(message: &SipMessage) -> Result<(), SipError> {
    let declared = message.headers().iter().find_map(|h| match h {
        Header::ContentLength(l) => Some(l.value().trim().parse::<usize>()),
        _ => None,
    });
    match declared {
        Some(Ok(len)) if len > message.body().len() => {
            Err(SipError::Parse(format!("Content-Length {len} exceeds the {} body bytes", message.body().len())))
        }
        Some(Err(_)) => Err(SipError::Parse("Content-Length is not a number".into())),
        _ => Ok(()),
    }
}

trait HeadersOf {
    fn headers(&self) -> &rsip::Headers;
}

impl HeadersOf for SipMessage {
    fn headers(&self) -> &rsip::Headers {
        match self {
            SipMessage::Request(r) => &r.headers,
            SipMessage::Response(r) => &r.headers,
        }
    }
}

/// Serializes a message, setting Content-Length from the body.
pub fn print(message: impl Into<SipMessage>) -> Vec<u8> {
    let mut message = message.into();
    let len = message.body().len();
    let headers = headers_mut(&mut message);
    headers.retain(|h| !matches!(h, Header::ContentLength(_)));
    headers.push(Header::ContentLength(rsip::headers::ContentLength::new(len.to_string())));
    message.to_string().into_bytes()
}

/// The branch of the topmost Via, which names the transaction (§17.2.3).
pub fn top_branch(headers: &rsip::Headers) -> Result<String, SipError> {
    let via = first_via(headers)?;
    let typed = via.typed().map_err(|e| SipError::BadHeader("Via", e.to_string()))?;
    typed.branch().map(|b| b.to_string()).ok_or(SipError::BadHeader("Via", "no branch parameter".into()))
}

fn first_via(headers: &rsip::Headers) -> Result<&rsip::headers::Via, SipError> {
    headers
        .iter()
        .find_map(|h| match h {
            Header::Via(v) => Some(v),
            _ => None,
        })
        .ok_or(SipError::MissingHeader("Via"))
}

/// Notes where a request really came from in its top Via (RFC 3261 §18.2.1,
/// RFC 3581): `received` when the sent-by host is not the source address, and
/// `rport` filled with the source port when the client asked for it. The
/// responses built from the request then carry both.
pub fn stamp_top_via(headers: &mut rsip::Headers, source: SocketAddr) {
    let Some(via) = headers.iter_mut().find_map(|h| match h {
        Header::Via(v) => Some(v),
        _ => None,
    }) else {
        return;
    };
    let value = via.value().to_string();
    let (sent_by, params) = value.split_once(';').unwrap_or((value.as_str(), ""));
    let host = sent_by.split_whitespace().nth(1).unwrap_or("");
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.split(']').next())
        .unwrap_or_else(|| host.split(':').next().unwrap_or(""));
    let wants_rport = params.split(';').any(|p| p.trim().eq_ignore_ascii_case("rport"));
    let mut stamped: Vec<String> = params
        .split(';')
        .filter(|p| !p.is_empty() && !p.trim().to_ascii_lowercase().starts_with("received="))
        .map(
            |p| if p.trim().eq_ignore_ascii_case("rport") { format!("rport={}", source.port()) } else { p.to_string() },
        )
        .collect();
    if wants_rport || host.parse::<std::net::IpAddr>().ok() != Some(source.ip()) {
        stamped.push(format!("received={}", source.ip()));
    }
    via.replace(format!("{};{}", sent_by.trim_end(), stamped.join(";")));
}

/// CSeq number and method.
pub fn cseq(headers: &impl HeadersExt) -> Result<(u32, Method), SipError> {
    let cseq = headers.cseq_header().map_err(|_| SipError::MissingHeader("CSeq"))?;
    let typed = cseq.typed().map_err(|e| SipError::BadHeader("CSeq", e.to_string()))?;
    Ok((typed.seq, typed.method))
}

pub fn call_id(headers: &impl HeadersExt) -> Result<String, SipError> {
    Ok(headers.call_id_header().map_err(|_| SipError::MissingHeader("Call-ID"))?.value().to_string())
}

pub fn from_tag(headers: &impl HeadersExt) -> Result<Option<String>, SipError> {
    let from = headers.from_header().map_err(|_| SipError::MissingHeader("From"))?;
    Ok(from.tag().map_err(|e| SipError::BadHeader("From", e.to_string()))?.map(|t| t.to_string()))
}

pub fn to_tag(headers: &impl HeadersExt) -> Result<Option<String>, SipError> {
    let to = headers.to_header().map_err(|_| SipError::MissingHeader("To"))?;
    Ok(to.tag().map_err(|e| SipError::BadHeader("To", e.to_string()))?.map(|t| t.to_string()))
}

/// The URI of the first Contact, if any.
pub fn contact_uri(headers: &impl HeadersExt) -> Option<rsip::Uri> {
    headers.contact_header().ok().and_then(|c| c.uri().ok())
}

/// Record-Route values in order, as the route set of a dialog (§12.1).
pub fn record_routes(headers: &rsip::Headers) -> Vec<String> {
    headers
        .iter()
        .filter_map(|h| match h {
            Header::RecordRoute(r) => Some(split_top_level_commas(r.value())),
            _ => None,
        })
        .flatten()
        .collect()
}

/// Max-Forwards, when present and numeric.
pub fn max_forwards(headers: &rsip::Headers) -> Option<u32> {
    headers.iter().find_map(|h| match h {
        Header::MaxForwards(m) => m.value().trim().parse().ok(),
        _ => None,
    })
}

/// Builds a response to `request` (§8.2.6): Via, From, To, Call-ID and CSeq
/// copied, a To tag added when given and absent.
pub fn response_to(request: &Request, code: u16, to_tag: Option<&str>) -> Response {
    let mut headers = rsip::Headers::default();
    for header in request.headers.iter() {
        match header {
            Header::Via(_) | Header::From(_) | Header::CallId(_) | Header::CSeq(_) => headers.push(header.clone()),
            Header::RecordRoute(_) if (101..300).contains(&code) => headers.push(header.clone()),
            Header::To(to) => {
                let has_tag = to.value().contains(";tag=");
                let value = match to_tag {
                    Some(tag) if !has_tag => format!("{};tag={}", to.value(), tag),
                    _ => to.value().to_string(),
                };
                headers.push(Header::To(rsip::headers::To::new(value)));
            }
            _ => {}
        }
    }
    headers.push(Header::Server(rsip::headers::Server::new(super::USER_AGENT)));
    Response { status_code: status_code(code), version: rsip::Version::V2, headers, body: Vec::new() }
}

/// A status code that prints with its RFC reason phrase (rsip prints the
/// Rust variant name, "BusyHere", for the codes it knows).
pub fn status_code(code: u16) -> rsip::StatusCode {
    rsip::StatusCode::Other(code, reason_phrase(code).into())
}

/// The reason phrases of RFC 3261 §21 (and RFC 3311 / 4028 / 6665 for the few after it).
pub fn reason_phrase(code: u16) -> &'static str {
    match code {
        100 => "Trying",
        180 => "Ringing",
        181 => "Call Is Being Forwarded",
        182 => "Queued",
        183 => "Session Progress",
        200 => "OK",
        202 => "Accepted",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        407 => "Proxy Authentication Required",
        408 => "Request Timeout",
        415 => "Unsupported Media Type",
        420 => "Bad Extension",
        423 => "Interval Too Brief",
        480 => "Temporarily Unavailable",
        481 => "Call/Transaction Does Not Exist",
        482 => "Loop Detected",
        483 => "Too Many Hops",
        486 => "Busy Here",
        487 => "Request Terminated",
        488 => "Not Acceptable Here",
        489 => "Bad Event",
        491 => "Request Pending",
        500 => "Server Internal Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        600 => "Busy Everywhere",
        603 => "Decline",
        _ => match code / 100 {
            1 => "Progress",
            2 => "Success",
            3 => "Redirection",
            4 => "Client Error",
            5 => "Server Error",
            _ => "Global Failure",
        },
    }
}

/// The reason phrase of a response's status line as the peer wrote it.
pub fn raw_reason_phrase(data: &[u8]) -> Option<String> {
    let line = data.split(|b| *b == b'\r' || *b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.splitn(3, ' ');
    let (_version, _code) = (parts.next()?, parts.next()?);
    Some(parts.next().unwrap_or("").trim().to_string())
}

/// Answers a request that rsip could not parse, when its raw text still shows
/// the headers a response must echo (§8.2.6); `None` when it does not.
pub fn raw_error_response(data: &[u8], code: u16, reason: &str) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(data).ok()?;
    let mut lines = text.split("\r\n");
    let request_line = lines.next()?;
    // Responses and ACKs are never answered.
    if request_line.starts_with("SIP/") || request_line.starts_with("ACK ") {
        return None;
    }
    let mut echoed = Vec::new();
    let mut found = [false; 5];
    for line in lines.take_while(|l| !l.is_empty()) {
        let Some((name, value)) = line.split_once(':') else { continue };
        let name = name.trim();
        let Some(index) = ["via|v", "from|f", "to|t", "call-id|i", "cseq"]
            .iter()
            .position(|names| names.split('|').any(|n| n.eq_ignore_ascii_case(name)))
        else {
            continue;
        };
        found[index] = true;
        echoed.push(format!("{}: {}", ["Via", "From", "To", "Call-ID", "CSeq"][index], value.trim()));
    }
    if !found.iter().all(|f| *f) {
        return None;
    }
    let mut out = format!("SIP/2.0 {code} {reason}\r\n");
    for line in echoed {
        out.push_str(&line);
        out.push_str("\r\n");
    }
    out.push_str(&format!("Server: {}\r\nContent-Length: 0\r\n\r\n", super::USER_AGENT));
    Some(out.into_bytes())
}

/// The user, host and port of a `sip:`/`sips:` URI.
///
/// Read by hand because rsip 0.4 stops a URI's user part at the first '.', so
/// `sip:john.doe@pbx` comes back with no user and the host `john.doe@pbx`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UriParts {
    /// As written (still %-escaped); without any `:password`.
    pub user: Option<String>,
    pub host: String,
    pub port: Option<u16>,
}

pub fn uri_parts(uri: &str) -> Option<UriParts> {
    let uri = uri.trim();
    let uri = uri.strip_prefix('<').and_then(|u| u.split('>').next()).unwrap_or(uri);
    let (scheme, rest) = uri.split_once(':')?;
    if !scheme.eq_ignore_ascii_case("sip") && !scheme.eq_ignore_ascii_case("sips") {
        return None;
    }
    // The host part holds no '@', so the last one ends the user part (which may hold ';' and '?').
    let (user, hostport) = match rest.rfind('@') {
        Some(at) => (Some(rest[..at].split(':').next().unwrap_or("").to_string()), &rest[at + 1..]),
        None => (None, rest),
    };
    let hostport = hostport.split([';', '?']).next().unwrap_or("");
    let (host, port) = match hostport.strip_prefix('[') {
        Some(v6) => {
            let (host, after) = v6.split_once(']')?;
            (host, after.strip_prefix(':'))
        }
        None => match hostport.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (hostport, None),
        },
    };
    let port = match port {
        Some(p) => Some(p.parse().ok()?),
        None => None,
    };
    if host.is_empty() {
        return None;
    }
    Some(UriParts { user: user.filter(|u| !u.is_empty()), host: host.to_string(), port })
}

/// The address a request to `uri` goes to, when the URI holds an IP literal or
/// `localhost`. Host names are resolved by the driver before it calls the core.
pub fn uri_socket_addr(uri: &str) -> Option<SocketAddr> {
    let parts = uri_parts(uri)?;
    let port = parts.port.unwrap_or(5060);
    if parts.host.eq_ignore_ascii_case("localhost") {
        return Some(SocketAddr::new([127, 0, 0, 1].into(), port));
    }
    parts.host.parse().ok().map(|ip| SocketAddr::new(ip, port))
}

/// Escapes text for the user part of a SIP URI (RFC 3261 §25.1 `user`):
/// unreserved and user-unreserved characters stay, the rest become %XX.
pub fn escape_user(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.!~*'()&=+$,;?/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Undoes `%XX` escapes in a URI's user part; `None` when the result is not UTF-8.
pub fn unescape_user(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// The values of the headers called `name` (or its compact form), however
/// rsip filed them.
pub fn header_values(headers: &rsip::Headers, name: &str, compact: &str) -> Vec<String> {
    headers
        .iter()
        .filter_map(|h| {
            let text = h.to_string();
            let (n, v) = text.split_once(':')?;
            let n = n.trim();
            (n.eq_ignore_ascii_case(name) || n.eq_ignore_ascii_case(compact)).then(|| v.trim().to_string())
        })
        .collect()
}

/// The Session-Expires delta-seconds of a request (RFC 4028 §4), if any.
pub fn session_expires(headers: &rsip::Headers) -> Option<u32> {
    let value = header_values(headers, "Session-Expires", "x").into_iter().next()?;
    value.split(';').next()?.trim().parse().ok()
}

/// Whether the Session-Expires header names the UAC as the refresher
/// (`refresher=uac`); `None` when it names neither.
pub fn uac_refreshes(headers: &rsip::Headers) -> Option<bool> {
    let value = header_values(headers, "Session-Expires", "x").into_iter().next()?;
    let refresher = value.split(';').skip(1).find_map(|p| {
        let (name, value) = p.split_once('=')?;
        name.trim().eq_ignore_ascii_case("refresher").then(|| value.trim().to_ascii_lowercase())
    })?;
    Some(refresher == "uac")
}

/// The status code of a message/sipfrag body holding a status line
/// (RFC 3420), as a REFER's NOTIFYs carry (RFC 3515 §2.4.5).
pub fn sipfrag_status(body: &[u8]) -> Option<u16> {
    let line = std::str::from_utf8(body).ok()?.lines().next()?;
    let mut parts = line.split_whitespace();
    let version = parts.next()?;
    let status: u16 = parts.next()?.parse().ok()?;
    (version.eq_ignore_ascii_case("SIP/2.0") && (100..700).contains(&status)).then_some(status)
}

/// Whether the Allow headers list `method`.
pub fn allows(headers: &rsip::Headers, method: &str) -> bool {
    headers.iter().any(|h| match h {
        rsip::Header::Allow(a) => a.value().split(',').any(|m| m.trim().eq_ignore_ascii_case(method)),
        _ => false,
    })
}

/// The dialog a Replaces header names (RFC 3891 §6.1): its Call-ID, the
/// tag of the side receiving the INVITE (`to-tag`) and of the other side
/// (`from-tag`), and whether only an early dialog may be replaced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replaces {
    pub call_id: String,
    pub to_tag: String,
    pub from_tag: String,
    pub early_only: bool,
}

/// The request's Replaces header: `None` without one, `Some(Err(()))` when
/// there are several or one lacks its Call-ID or tags (§3: 400).
pub fn replaces(headers: &rsip::Headers) -> Option<Result<Replaces, ()>> {
    let values = header_values(headers, "Replaces", "Replaces");
    let value = values.first()?;
    if values.len() > 1 {
        return Some(Err(()));
    }
    let mut parts = value.split(';');
    let call_id = parts.next().map(str::trim).filter(|id| !id.is_empty()).ok_or(());
    let (mut to_tag, mut from_tag, mut early_only) = (None, None, false);
    for param in parts {
        let (name, value) = param.split_once('=').unwrap_or((param, ""));
        match name.trim().to_ascii_lowercase().as_str() {
            "to-tag" => to_tag = Some(value.trim().to_string()),
            "from-tag" => from_tag = Some(value.trim().to_string()),
            "early-only" => early_only = true,
            _ => {}
        }
    }
    Some(match (call_id, to_tag, from_tag) {
        (Ok(call_id), Some(to_tag), Some(from_tag)) => {
            Ok(Replaces { call_id: call_id.to_string(), to_tag, from_tag, early_only })
        }
        _ => Err(()),
    })
}

/// Splits the headers off a URI (`sip:bob@b?Replaces=...`, RFC 3261
/// §19.1.1): the URI without them, and its Replaces header's value,
/// unescaped. A Refer-To of an attended transfer carries one (RFC 3891 §4);
/// other headers are dropped, as §19.1.5 allows for ones that are not safe.
pub fn split_uri_headers(uri: &str) -> (&str, Option<String>) {
    // A '?' in the user part is the user's; headers follow the host.
    let host_start = uri.rfind('@').map_or(0, |at| at + 1);
    let Some(question) = uri[host_start..].find('?').map(|i| host_start + i) else { return (uri, None) };
    let replaces = uri[question + 1..].split('&').find_map(|header| {
        let (name, value) = header.split_once('=')?;
        name.eq_ignore_ascii_case("Replaces").then(|| unescape_user(value)).flatten()
    });
    (&uri[..question], replaces)
}

/// The `tag` parameter of a From or To header value (`name <uri>;tag=x`).
pub fn tag_param(party: &str) -> Option<&str> {
    // Parameters follow the URI; a URI in brackets may have its own.
    let params = party.rfind('>').map_or(party, |end| &party[end..]);
    params.split(';').skip(1).find_map(|p| {
        let (name, value) = p.split_once('=')?;
        name.trim().eq_ignore_ascii_case("tag").then(|| value.trim())
    })
}

/// Whether the Supported headers list `option`.
pub fn supports(headers: &rsip::Headers, option: &str) -> bool {
    header_values(headers, "Supported", "k").iter().any(|v| v.split(',').any(|o| o.trim().eq_ignore_ascii_case(option)))
}

/// Reads a REGISTER's Contact header values (RFC 3261 §10.2): `*` alone, or
/// contacts, each `name <uri>;expires=N`, `<uri>` or a bare URI, several per
/// header separated by commas. None when `*` comes with other contacts.
pub fn contact_change(values: &[String]) -> Option<ContactChange> {
    let mut contacts = Vec::new();
    let mut all = false;
    for value in values {
        for element in split_outside_brackets(value, ',') {
            let element = element.trim();
            if element == "*" {
                all = true;
                continue;
            }
            let (uri, params) = match (element.find('<'), element.find('>')) {
                (Some(open), Some(close)) if open < close => (&element[open + 1..close], &element[close + 1..]),
                _ => element.split_once(';').map_or((element, ""), |(u, p)| (u, p)),
            };
            if uri.trim().is_empty() {
                return None;
            }
            let param = |wanted: &str| {
                params.split(';').find_map(|p| {
                    let (name, value) = p.trim().split_once('=')?;
                    name.trim().eq_ignore_ascii_case(wanted).then(|| value.trim())
                })
            };
            let expires = param("expires").and_then(|v| v.parse().ok());
            // A qvalue is 0 to 1 with at most three decimals (§25.1); kept in thousandths.
            let q = param("q").and_then(|v| v.parse::<f32>().ok()).filter(|q| (0.0..=1.0).contains(q));
            let q = q.map(|q| (q * 1000.0).round() as u16);
            contacts.push(RequestedContact { uri: uri.trim().to_string(), expires, q });
        }
    }
    match (all, contacts.is_empty()) {
        (true, true) => Some(ContactChange::RemoveAll),
        (true, false) => None,
        (false, _) => Some(ContactChange::Contacts(contacts)),
    }
}

/// Splits `text` at `separator` where it is not inside `<...>` or quotes.
fn split_outside_brackets(text: &str, separator: char) -> Vec<&str> {
    let (mut parts, mut start, mut depth, mut quoted) = (Vec::new(), 0, 0i32, false);
    for (i, c) in text.char_indices() {
        match c {
            '"' => quoted = !quoted,
            '<' if !quoted => depth += 1,
            '>' if !quoted => depth -= 1,
            c if c == separator && depth == 0 && !quoted => {
                parts.push(&text[start..i]);
                start = i + c.len_utf8();
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts
}

/// Reads an application/dtmf-relay body (`Signal=5`, `Duration=160` lines,
/// duration in ms): the digit and its duration (250 ms when not given).
pub fn dtmf_relay(body: &str) -> Option<(char, u32)> {
    let mut signal = None;
    let mut duration = 250;
    for line in body.lines() {
        let Some((name, value)) = line.split_once('=') else { continue };
        match name.trim().to_ascii_lowercase().as_str() {
            "signal" => signal = value.trim().chars().next().map(|c| c.to_ascii_uppercase()),
            "duration" => duration = value.trim().parse().unwrap_or(duration),
            _ => {}
        }
    }
    signal.filter(|c| c.is_ascii_digit() || matches!(c, '*' | '#' | 'A'..='D')).map(|c| (c, duration))
}

/// A fresh random token for tags, branches and Call-IDs.
pub fn random_token() -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    (0..16).map(|_| char::from(b"0123456789abcdefghijklmnopqrstuv"[rng.random_range(0..32)])).collect()
}

pub fn new_branch() -> String {
    format!("{BRANCH_COOKIE}{}", random_token())
}

#[cfg(test)]
mod tests {
    use super::*;

    const INVITE: &str = "INVITE sip:room1@127.0.0.1:5060 SIP/2.0\r\n\
v: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-1, SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK-0\r\n\
f: <sip:alice@127.0.0.1>;tag=abc\r\n\
t: <sip:room1@127.0.0.1>\r\n\
i: call-1@127.0.0.1\r\n\
CSeq: 1 INVITE\r\n\
m: <sip:alice@127.0.0.1:5061>\r\n\
Max-Forwards: 70\r\n\
c: application/sdp\r\n\
l: 4\r\n\r\nv=0\n";

    #[test]
    fn compact_headers_expand_and_via_splits() {
        let SipMessage::Request(req) = parse(INVITE.as_bytes()).unwrap() else { panic!("not a request") };
        assert_eq!(req.method, Method::Invite);
        assert_eq!(top_branch(&req.headers).unwrap(), "z9hG4bK-1");
        assert_eq!(req.headers.iter().filter(|h| matches!(h, Header::Via(_))).count(), 2);
        assert_eq!(call_id(&req).unwrap(), "call-1@127.0.0.1");
        assert_eq!(cseq(&req).unwrap(), (1, Method::Invite));
        assert_eq!(from_tag(&req).unwrap().as_deref(), Some("abc"));
        assert_eq!(to_tag(&req).unwrap(), None);
        assert_eq!(max_forwards(&req.headers), Some(70));
        assert_eq!(contact_uri(&req).unwrap().to_string(), "sip:alice@127.0.0.1:5061");
    }

    #[test]
    fn print_then_parse_round_trips() {
        let SipMessage::Request(req) = parse(INVITE.as_bytes()).unwrap() else { panic!() };
        let printed = print(req.clone());
        let SipMessage::Request(again) = parse(&printed).unwrap() else { panic!() };
        assert_eq!(again, req_with_length(req, 4));
        assert!(String::from_utf8(printed).unwrap().contains("Content-Length: 4\r\n"));
    }

    fn req_with_length(mut req: Request, len: usize) -> Request {
        req.headers.retain(|h| !matches!(h, Header::ContentLength(_)));
        req.headers.push(Header::ContentLength(rsip::headers::ContentLength::new(len.to_string())));
        req
    }

    #[test]
    fn response_echoes_and_tags() {
        let SipMessage::Request(req) = parse(INVITE.as_bytes()).unwrap() else { panic!() };
        let resp = response_to(&req, 180, Some("xyz"));
        let text = String::from_utf8(print(resp)).unwrap();
        assert!(text.starts_with("SIP/2.0 180 Ringing\r\n"), "{text}");
        assert!(text.contains("tag=xyz"));
        let SipMessage::Response(back) = parse(text.as_bytes()).unwrap() else { panic!() };
        assert_eq!(to_tag(&back).unwrap().as_deref(), Some("xyz"));
        assert_eq!(top_branch(&back.headers).unwrap(), "z9hG4bK-1");
    }

    #[test]
    fn user_parts_escape_and_unescape() {
        assert_eq!(escape_user("room 1 <a@b>"), "room%201%20%3Ca%40b%3E");
        assert_eq!(escape_user("team-7.a"), "team-7.a");
        assert_eq!(unescape_user("room%201%20%3Ca%40b%3E").as_deref(), Some("room 1 <a@b>"));
        assert_eq!(unescape_user("caf%C3%A9").as_deref(), Some("café"));
        assert_eq!(unescape_user("100%").as_deref(), Some("100%"));
        assert_eq!(unescape_user("%FF"), None);
        let uri = format!("<sip:{}@127.0.0.1>", escape_user("a room; with <stuff>"));
        assert!(rsip::Uri::try_from(&uri[1..uri.len() - 1]).is_ok(), "{uri}");
    }

    #[test]
    fn uri_parts_keep_dotted_users_and_ipv6_hosts() {
        let parts = uri_parts("sip:john.doe@pbx.example.com:5070;transport=udp").unwrap();
        assert_eq!(parts, UriParts { user: Some("john.doe".into()), host: "pbx.example.com".into(), port: Some(5070) });
        let parts = uri_parts("<sips:sales.eu%20team:secret@[::1]:5061>").unwrap();
        assert_eq!(parts, UriParts { user: Some("sales.eu%20team".into()), host: "::1".into(), port: Some(5061) });
        assert_eq!(uri_parts("sip:127.0.0.1").unwrap().user, None);
        assert_eq!(uri_socket_addr("sip:a.b@127.0.0.1:5080"), Some("127.0.0.1:5080".parse().unwrap()));
        assert_eq!(uri_socket_addr("sip:x@localhost"), Some("127.0.0.1:5060".parse().unwrap()));
        assert_eq!(uri_socket_addr("sip:x@example.com"), None);
        for bad in ["", "tel:+123", "sip:", "sip:user@", "sip:host:notaport"] {
            assert!(uri_parts(bad).is_none() || uri_socket_addr(bad).is_none(), "{bad}");
        }
        // rsip still prints such a URI back as it was written.
        assert_eq!(
            rsip::Uri::try_from("sip:john.doe@127.0.0.1:5070").unwrap().to_string(),
            "sip:john.doe@127.0.0.1:5070"
        );
    }

    #[test]
    fn dtmf_relay_bodies() {
        assert_eq!(dtmf_relay("Signal=5\r\nDuration=160\r\n"), Some(('5', 160)));
        assert_eq!(dtmf_relay("signal= #\nduration = 90"), Some(('#', 90)));
        assert_eq!(dtmf_relay("Signal=a"), Some(('A', 250)));
        assert_eq!(dtmf_relay("Signal=x"), None);
        assert_eq!(dtmf_relay("Duration=100"), None);
    }

    #[test]
    fn top_via_is_stamped_with_received_and_rport() {
        let via = |value: &str| {
            let mut headers = rsip::Headers::default();
            headers.push(Header::Via(rsip::headers::Via::new(value)));
            headers.push(Header::Via(rsip::headers::Via::new("SIP/2.0/UDP 10.9.9.9;branch=z9hG4bKdeep")));
            stamp_top_via(&mut headers, "203.0.113.7:40123".parse().unwrap());
            let top = first_via(&headers).unwrap().value().to_string();
            (top, top_branch(&headers).unwrap())
        };
        let (top, branch) = via("SIP/2.0/UDP 192.168.1.20:5060;branch=z9hG4bKnat;rport");
        assert_eq!(top, "SIP/2.0/UDP 192.168.1.20:5060;branch=z9hG4bKnat;rport=40123;received=203.0.113.7");
        assert_eq!(branch, "z9hG4bKnat");
        let (top, _) = via("SIP/2.0/UDP 203.0.113.7:40123;branch=z9hG4bKdirect");
        assert_eq!(top, "SIP/2.0/UDP 203.0.113.7:40123;branch=z9hG4bKdirect", "nothing to note");
        let (top, _) = via("SIP/2.0/UDP phone.example.com;branch=z9hG4bKname");
        assert!(top.ends_with(";received=203.0.113.7"), "{top}");
    }

    #[test]
    fn short_body_is_an_error() {
        let bad = INVITE.replace("l: 4", "l: 400");
        assert!(matches!(parse(bad.as_bytes()), Err(SipError::Parse(_))));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for input in [&b""[..], b"\0\0\0", b"INVITE", b"SIP/2.0 abc\r\n\r\n", b"INVITE sip: SIP/2.0\r\nVia: \r\n\r\n"] {
            assert!(parse(input).is_err());
        }
    }

    #[test]
    fn unparsable_request_still_gets_400() {
        let raw = "FOO sip:x@y SIP/2.0\r\nVia: SIP/2.0/UDP 1.2.3.4;branch=z9hG4bKx\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:x@y>\r\nCall-ID: c\r\nCSeq: 1 FOO\r\n\r\n";
        let out = String::from_utf8(raw_error_response(raw.as_bytes(), 501, "Not Implemented").unwrap()).unwrap();
        assert!(out.starts_with("SIP/2.0 501 Not Implemented\r\n"));
        assert!(out.contains("Call-ID: c\r\n"));
        assert!(raw_error_response(b"FOO sip:x SIP/2.0\r\n\r\n", 400, "Bad Request").is_none());
    }

    #[test]
    fn tags_are_read_after_the_uri() {
        assert_eq!(tag_param("\"A\" <sip:a@b;tag=uri>;x=1;TAG=outer"), Some("outer"));
        assert_eq!(tag_param("sip:a@b;tag=bare"), Some("bare"));
        assert_eq!(tag_param("<sip:a@b;tag=uri>"), None);
    }

    #[test]
    fn uri_headers_are_split_off_and_replaces_unescaped() {
        let (uri, replaces) =
            split_uri_headers("sip:a?b@host:5060;transport=udp?Subject=x&replaces=c%40h%3Bto-tag%3D1");
        assert_eq!((uri, replaces.as_deref()), ("sip:a?b@host:5060;transport=udp", Some("c@h;to-tag=1")));
        assert_eq!(split_uri_headers("sip:a?b@host"), ("sip:a?b@host", None));
        assert_eq!(split_uri_headers("sip:host?Subject=x"), ("sip:host", None));
    }

    #[test]
    fn odd_replaces_headers_and_uri_headers_are_refused_or_ignored_without_panic() {
        let headers = |value: &str| {
            let mut headers = rsip::Headers::default();
            headers.push(rsip::Header::Other("Replaces".into(), value.into()));
            headers
        };
        for value in ["", ";", ";;;", "id;to-tag", "id;to-tag=a", ";to-tag=a;from-tag=b", "\u{0}"] {
            assert_eq!(replaces(&headers(value)), Some(Err(())), "{value:?}");
        }
        let empty_tags = replaces(&headers("id;to-tag=;from-tag=")).unwrap().unwrap();
        assert_eq!((empty_tags.to_tag.as_str(), empty_tags.from_tag.as_str()), ("", ""));
        let mut two = headers("a;to-tag=1;from-tag=2");
        two.push(rsip::Header::Other("Replaces".into(), "b;to-tag=1;from-tag=2".into()));
        assert_eq!(replaces(&two), Some(Err(())), "two Replaces headers");
        for uri in ["", "?", "sip:", "sip:@?", "sip:x@y?&=&", "@@??", "sip:x@y?Replaces"] {
            let (rest, replaces) = split_uri_headers(uri);
            assert!(uri.starts_with(rest));
            assert!(replaces.is_none(), "{uri:?}");
        }
        // A bad escape is passed on as it is; the callee refuses the header.
        assert_eq!(split_uri_headers("sip:x@y?Replaces=%zz").1.as_deref(), Some("%zz"));
        for party in ["", ";", ";tag", ">;tag=", "<sip:a@b", "a>b<;tag=x"] {
            let _ = tag_param(party);
        }
    }
}
