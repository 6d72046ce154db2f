//! The conference event package's document (RFC 4575): who is in a room
//! and how, as `application/conference-info+xml`.
//!
//! Every document is a full state (`state="full"`), which §4.1 allows for
//! every notification; a subscriber replaces what it had. The XML is
//! written here by hand rather than with an XML crate: the document has one
//! fixed shape, and all that text from outside needs (user names and URIs,
//! which callers choose) is the escaping in [`escape`], tested below by
//! reading documents back with a real parser.

use std::fmt::Write;

/// The event package's name (the Event header).
pub const EVENT_PACKAGE: &str = "conference";
/// The document's media type (Content-Type, and what Accept must allow).
pub const CONTENT_TYPE: &str = "application/conference-info+xml";

/// Where a participant's call is (RFC 4575 §5.7.2's endpoint status).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndpointStatus {
    /// In the room but not yet let in (typing its PIN, waiting for a moderator).
    Pending,
    DialingOut,
    DialingIn,
    Alerting,
    OnHold,
    Connected,
    /// Connected, and muted by the conference.
    MutedViaFocus,
}

impl EndpointStatus {
    fn as_str(self) -> &'static str {
        match self {
            EndpointStatus::Pending => "pending",
            EndpointStatus::DialingOut => "dialing-out",
            EndpointStatus::DialingIn => "dialing-in",
            EndpointStatus::Alerting => "alerting",
            EndpointStatus::OnHold => "on-hold",
            EndpointStatus::Connected => "connected",
            EndpointStatus::MutedViaFocus => "muted-via-focus",
        }
    }
}

/// How a participant came in (§5.7.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoiningMethod {
    DialedIn,
    DialedOut,
    /// Audio of the application itself, which runs the conference.
    FocusOwner,
}

impl JoiningMethod {
    fn as_str(self) -> &'static str {
        match self {
            JoiningMethod::DialedIn => "dialed-in",
            JoiningMethod::DialedOut => "dialed-out",
            JoiningMethod::FocusOwner => "focus-owner",
        }
    }
}

/// Which way a participant's audio flows, from the participant's side
/// (§5.7.5): a muted participant only receives, a deafened one only sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaStatus {
    SendRecv,
    SendOnly,
    RecvOnly,
    Inactive,
}

impl MediaStatus {
    /// The status of a stream that carries the participant's audio to the
    /// room when `sends`, and the room's to it when `receives`.
    pub fn of(sends: bool, receives: bool) -> Self {
        match (sends, receives) {
            (true, true) => MediaStatus::SendRecv,
            (true, false) => MediaStatus::SendOnly,
            (false, true) => MediaStatus::RecvOnly,
            (false, false) => MediaStatus::Inactive,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            MediaStatus::SendRecv => "sendrecv",
            MediaStatus::SendOnly => "sendonly",
            MediaStatus::RecvOnly => "recvonly",
            MediaStatus::Inactive => "inactive",
        }
    }
}

/// One participant, as a `<user>` with one `<endpoint>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// Its URI: the caller's From, the dialled target.
    pub entity: String,
    pub display_text: Option<String>,
    pub moderator: bool,
    pub status: EndpointStatus,
    pub joining: JoiningMethod,
    pub media: MediaStatus,
}

/// A room's roster, without the per-subscription version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConferenceInfo {
    /// The conference's URI, `sip:room@host`.
    pub entity: String,
    /// The room's name.
    pub subject: String,
    pub locked: bool,
    pub users: Vec<User>,
}

impl ConferenceInfo {
    /// The document, numbered `version` (§4.1: one more for each
    /// notification of a subscription).
    pub fn to_xml(&self, version: u32) -> String {
        let mut xml = String::with_capacity(512 + 400 * self.users.len());
        xml.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
        xml.push_str("<conference-info xmlns=\"urn:ietf:params:xml:ns:conference-info\" entity=\"");
        escape(&self.entity, &mut xml);
        // Writing to a String cannot fail.
        let _ = writeln!(xml, "\" state=\"full\" version=\"{version}\">");
        xml.push_str(" <conference-description>\n  <subject>");
        escape(&self.subject, &mut xml);
        xml.push_str("</subject>\n");
        xml.push_str("  <available-media>\n   <entry label=\"1\"><type>audio</type></entry>\n  </available-media>\n");
        xml.push_str(" </conference-description>\n");
        let _ = writeln!(
            xml,
            " <conference-state>\n  <user-count>{}</user-count>\n  <active>true</active>\n  <locked>{}</locked>\n </conference-state>",
            self.users.len(),
            self.locked
        );
        xml.push_str(" <users>\n");
        for user in &self.users {
            xml.push_str("  <user entity=\"");
            escape(&user.entity, &mut xml);
            xml.push_str("\" state=\"full\">\n");
            if let Some(text) = &user.display_text {
                xml.push_str("   <display-text>");
                escape(text, &mut xml);
                xml.push_str("</display-text>\n");
            }
            let role = if user.moderator { "moderator" } else { "participant" };
            let _ = writeln!(xml, "   <roles><entry>{role}</entry></roles>");
            xml.push_str("   <endpoint entity=\"");
            escape(&user.entity, &mut xml);
            let _ = writeln!(
                xml,
                "\">\n    <status>{}</status>\n    <joining-method>{}</joining-method>",
                user.status.as_str(),
                user.joining.as_str()
            );
            let _ = writeln!(
                xml,
                "    <media id=\"1\"><type>audio</type><label>1</label><status>{}</status></media>",
                user.media.as_str()
            );
            xml.push_str("   </endpoint>\n  </user>\n");
        }
        xml.push_str(" </users>\n</conference-info>\n");
        xml
    }
}

/// Appends `text` escaped for XML 1.0 text and double- or single-quoted
/// attribute values. Characters XML 1.0 cannot carry at all, even as
/// references (most C0 controls, U+FFFE, U+FFFF), become U+FFFD, so no
/// caller's name can break the document; tab and line ends become
/// references, so attribute normalisation keeps them.
fn escape(text: &str, out: &mut String) {
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' => out.push_str("&#9;"),
            '\n' => out.push_str("&#10;"),
            '\r' => out.push_str("&#13;"),
            '\u{0}'..='\u{1f}' | '\u{fffe}' | '\u{ffff}' => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use quick_xml::events::Event;
    use quick_xml::{Reader, XmlVersion};

    use super::*;

    fn user(entity: &str, display_text: Option<&str>, status: EndpointStatus, media: MediaStatus) -> User {
        User {
            entity: entity.into(),
            display_text: display_text.map(str::to_string),
            moderator: false,
            status,
            joining: JoiningMethod::DialedIn,
            media,
        }
    }

    /// Every element's text and every attribute, as (path, value), read by
    /// quick-xml with its checks on: a document that is not well formed fails.
    fn read(xml: &str) -> Vec<(String, String)> {
        let mut reader = Reader::from_str(xml);
        reader.config_mut().check_end_names = true;
        let mut path: Vec<String> = Vec::new();
        let mut found = Vec::new();
        // An element's text comes in pieces: text, and each reference on its own.
        let mut text = String::new();
        let flush = |path: &[String], text: &mut String, found: &mut Vec<(String, String)>| {
            if !text.trim().is_empty() {
                found.push((path.join("/"), text.clone()));
            }
            text.clear();
        };
        loop {
            match reader.read_event().expect("well formed") {
                Event::Start(element) => {
                    flush(&path, &mut text, &mut found);
                    path.push(String::from_utf8(element.name().as_ref().to_vec()).unwrap());
                    for attribute in element.attributes() {
                        let attribute = attribute.expect("a well-formed attribute");
                        let name = String::from_utf8(attribute.key.as_ref().to_vec()).unwrap();
                        let value = attribute.normalized_value(XmlVersion::Explicit1_0).expect("escaped").to_string();
                        found.push((format!("{}@{name}", path.join("/")), value));
                    }
                }
                Event::End(_) => {
                    flush(&path, &mut text, &mut found);
                    path.pop();
                }
                Event::Text(piece) => text.push_str(&piece.decode().expect("UTF-8")),
                Event::GeneralRef(reference) => {
                    match reference.resolve_char_ref().expect("a valid character reference") {
                        Some(c) => text.push(c),
                        None => {
                            let name = reference.decode().expect("UTF-8");
                            text.push_str(&quick_xml::escape::unescape(&format!("&{name};")).expect("a known entity"));
                        }
                    }
                }
                Event::Eof => break,
                _ => {}
            }
        }
        assert!(path.is_empty(), "every element closed");
        found
    }

    fn value<'a>(found: &'a [(String, String)], path: &str) -> Vec<&'a str> {
        found.iter().filter(|(p, _)| p == path).map(|(_, v)| v.as_str()).collect()
    }

    #[test]
    fn a_roster_is_a_well_formed_full_document() {
        let info = ConferenceInfo {
            entity: "sip:room@192.0.2.1:5060".into(),
            subject: "room".into(),
            locked: false,
            users: vec![
                user("sip:alice@192.0.2.7", Some("alice"), EndpointStatus::Connected, MediaStatus::SendRecv),
                User {
                    moderator: true,
                    joining: JoiningMethod::DialedOut,
                    ..user("sip:bob@192.0.2.8", None, EndpointStatus::MutedViaFocus, MediaStatus::RecvOnly)
                },
            ],
        };
        let xml = info.to_xml(7);
        let found = read(&xml);
        assert_eq!(value(&found, "conference-info@xmlns"), ["urn:ietf:params:xml:ns:conference-info"]);
        assert_eq!(value(&found, "conference-info@entity"), ["sip:room@192.0.2.1:5060"]);
        assert_eq!(value(&found, "conference-info@state"), ["full"]);
        assert_eq!(value(&found, "conference-info@version"), ["7"]);
        assert_eq!(value(&found, "conference-info/conference-description/subject"), ["room"]);
        assert_eq!(value(&found, "conference-info/conference-state/user-count"), ["2"]);
        assert_eq!(value(&found, "conference-info/conference-state/active"), ["true"]);
        assert_eq!(value(&found, "conference-info/users/user@entity"), ["sip:alice@192.0.2.7", "sip:bob@192.0.2.8"]);
        assert_eq!(value(&found, "conference-info/users/user/display-text"), ["alice"]);
        assert_eq!(value(&found, "conference-info/users/user/roles/entry"), ["participant", "moderator"]);
        let endpoint = "conference-info/users/user/endpoint";
        assert_eq!(value(&found, &format!("{endpoint}/status")), ["connected", "muted-via-focus"]);
        assert_eq!(value(&found, &format!("{endpoint}/joining-method")), ["dialed-in", "dialed-out"]);
        assert_eq!(value(&found, &format!("{endpoint}/media/type")), ["audio", "audio"]);
        assert_eq!(value(&found, &format!("{endpoint}/media/status")), ["sendrecv", "recvonly"]);
    }

    #[test]
    fn names_and_uris_from_callers_are_escaped() {
        let hostile = "<b>\"Tom\" & 'Jerry'</b>\u{1}\r\n";
        let entity = "sip:a\"b'c<d>&e@192.0.2.7";
        let info = ConferenceInfo {
            entity: "sip:r&d@192.0.2.1".into(),
            subject: "r&d <lab>".into(),
            locked: true,
            users: vec![user(entity, Some(hostile), EndpointStatus::OnHold, MediaStatus::Inactive)],
        };
        let xml = info.to_xml(1);
        assert!(!xml.contains("<b>") && !xml.contains("\u{1}"), "{xml}");
        let found = read(&xml);
        assert_eq!(value(&found, "conference-info@entity"), ["sip:r&d@192.0.2.1"]);
        assert_eq!(value(&found, "conference-info/conference-description/subject"), ["r&d <lab>"]);
        assert_eq!(value(&found, "conference-info/conference-state/locked"), ["true"]);
        assert_eq!(value(&found, "conference-info/users/user@entity"), [entity]);
        assert_eq!(value(&found, "conference-info/users/user/endpoint@entity"), [entity]);
        assert_eq!(value(&found, "conference-info/users/user/display-text"), ["<b>\"Tom\" & 'Jerry'</b>\u{fffd}\r\n"]);
    }

    #[test]
    fn an_empty_room_counts_no_one() {
        let info = ConferenceInfo { entity: "sip:x@h".into(), subject: "x".into(), locked: false, users: Vec::new() };
        let found = read(&info.to_xml(3));
        assert_eq!(value(&found, "conference-info/conference-state/user-count"), ["0"]);
        assert!(value(&found, "conference-info/users/user@entity").is_empty());
    }
}
