//! The location service of the built-in registrar (RFC 3261 §10.3):
//! bindings from a user's address of record to the contacts it registered,
//! each with its own expiry. Sans-IO: every call is given `now`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::Peer;

/// Registrations last this long when the request names no expiry.
pub const DEFAULT_EXPIRES: u32 = 3600;
/// Shorter registrations get 423 Interval Too Brief.
pub const MIN_EXPIRES: u32 = 60;
/// Longer ones are cut to this.
pub const MAX_EXPIRES: u32 = 86_400;
/// Contacts one user may have at once.
pub const MAX_CONTACTS: usize = 10;

/// What a REGISTER asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContactChange {
    /// `Contact: *` with `Expires: 0`: remove every binding.
    RemoveAll,
    /// These contacts.
    Contacts(Vec<RequestedContact>),
}

/// A contact a REGISTER names, with its own expiry and q-value if it gives them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestedContact {
    pub uri: String,
    pub expires: Option<u32>,
    /// Its preference, in thousandths (`q=0.5` is 500); none counts as 1.
    pub q: Option<u16>,
}

/// One REGISTER request, as the location service needs it.
#[derive(Debug, Clone)]
pub struct Registration<'a> {
    /// The user part of the address of record.
    pub user: &'a str,
    pub change: ContactChange,
    /// The Expires header, for contacts without their own.
    pub expires: Option<u32>,
    pub call_id: &'a str,
    pub cseq: u32,
    /// Where the request came from.
    pub source: Peer,
}

/// Why a REGISTER is refused, with its SIP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegisterError {
    /// 423: shorter than [`MIN_EXPIRES`] (answer with Min-Expires).
    IntervalTooBrief,
    /// 400: `*` with a non-zero expiry, or mixed with contacts.
    BadRequest,
    /// 500: an older request of the same registration arrived late (§10.3 step 7).
    OutOfOrder,
    /// 403: more than [`MAX_CONTACTS`] contacts.
    TooManyContacts,
}

impl RegisterError {
    pub fn status(self) -> u16 {
        match self {
            RegisterError::IntervalTooBrief => 423,
            RegisterError::BadRequest => 400,
            RegisterError::OutOfOrder => 500,
            RegisterError::TooManyContacts => 403,
        }
    }
}

#[derive(Debug, Clone)]
struct Binding {
    contact: String,
    /// Preference in thousandths: higher q-values are called first (§16.6).
    q: u16,
    /// Where the REGISTER came from: behind NAT, the only address that
    /// reaches the phone (its Contact names its private address).
    source: Peer,
    expires_at: Instant,
    call_id: String,
    cseq: u32,
}

/// Bindings by user (the user part of the address of record).
#[derive(Debug, Default)]
pub struct Registrar {
    bindings: HashMap<String, Vec<Binding>>,
}

impl Registrar {
    /// Applies a REGISTER from `user` and returns the bindings it now has,
    /// with their seconds left (for the 200's Contact headers).
    pub fn register(&mut self, now: Instant, registration: Registration) -> Result<Vec<(String, u32)>, RegisterError> {
        let Registration { user, change, expires, call_id, cseq, source } = registration;
        let bindings = self.bindings.entry(user.to_string()).or_default();
        bindings.retain(|b| b.expires_at > now);
        match change {
            ContactChange::RemoveAll => {
                if expires != Some(0) {
                    return Err(RegisterError::BadRequest);
                }
                if bindings.iter().any(|b| b.call_id == call_id && b.cseq >= cseq) {
                    return Err(RegisterError::OutOfOrder);
                }
                bindings.clear();
            }
            ContactChange::Contacts(contacts) => {
                let seconds: Vec<u32> =
                    contacts.iter().map(|c| c.expires.or(expires).unwrap_or(DEFAULT_EXPIRES)).collect();
                if seconds.iter().any(|s| *s != 0 && *s < MIN_EXPIRES) {
                    return Err(RegisterError::IntervalTooBrief);
                }
                let same = |b: &Binding, contact: &str| same_contact(&b.contact, contact);
                for contact in &contacts {
                    let contact = &contact.uri;
                    let stale = bindings.iter().any(|b| same(b, contact) && b.call_id == call_id && b.cseq >= cseq);
                    if stale {
                        return Err(RegisterError::OutOfOrder);
                    }
                }
                let added = contacts.iter().filter(|c| !bindings.iter().any(|b| same(b, &c.uri))).count();
                if bindings.len() + added > MAX_CONTACTS {
                    return Err(RegisterError::TooManyContacts);
                }
                for (RequestedContact { uri: contact, q, .. }, seconds) in contacts.into_iter().zip(seconds) {
                    bindings.retain(|b| !same(b, &contact));
                    if seconds > 0 {
                        let expires_at = now + Duration::from_secs(seconds.min(MAX_EXPIRES) as u64);
                        let q = q.unwrap_or(1000);
                        bindings.push(Binding { contact, q, source, expires_at, call_id: call_id.into(), cseq });
                    }
                }
            }
        }
        let current = bindings
            .iter()
            .map(|b| (b.contact.clone(), b.expires_at.saturating_duration_since(now).as_secs() as u32))
            .collect();
        if bindings.is_empty() {
            self.bindings.remove(user);
        }
        Ok(current)
    }

    /// The contacts `user` has registered and that have not expired, the
    /// most recent first.
    pub fn lookup(&self, now: Instant, user: &str) -> Vec<String> {
        self.live(now, user).into_iter().map(|b| b.contact.clone()).collect()
    }

    /// Where to call `user`: its live contacts in groups of equal q-value,
    /// the highest first (each group is rung at once, the next only when
    /// all of one fail, §16.6), newest first within a group; each with the
    /// address its REGISTER came from, which is where requests to it go.
    pub fn routes(&self, now: Instant, user: &str) -> Vec<Vec<(String, Peer)>> {
        let mut live = self.live(now, user);
        live.sort_by_key(|b| std::cmp::Reverse(b.q)); // stable: newest first within a q
        let mut groups: Vec<Vec<(String, Peer)>> = Vec::new();
        for (i, binding) in live.iter().enumerate() {
            if i == 0 || live[i - 1].q != binding.q {
                groups.push(Vec::new());
            }
            if let Some(group) = groups.last_mut() {
                group.push((binding.contact.clone(), binding.source));
            }
        }
        groups
    }

    /// Every live binding: user, contact, and where its REGISTER came from.
    pub fn bindings(&self, now: Instant) -> Vec<(String, String, Peer)> {
        let live = self.bindings.iter().flat_map(|(user, b)| b.iter().map(move |b| (user, b)));
        live.filter(|(_, b)| b.expires_at > now).map(|(u, b)| (u.clone(), b.contact.clone(), b.source)).collect()
    }

    /// Drops one binding (a phone that stopped answering).
    pub fn remove(&mut self, user: &str, contact: &str) {
        if let Some(bindings) = self.bindings.get_mut(user) {
            bindings.retain(|b| !same_contact(&b.contact, contact));
            if bindings.is_empty() {
                self.bindings.remove(user);
            }
        }
    }

    fn live(&self, now: Instant, user: &str) -> Vec<&Binding> {
        let mut live: Vec<&Binding> =
            self.bindings.get(user).map(|b| b.iter().filter(|b| b.expires_at > now).collect()).unwrap_or_default();
        live.sort_by_key(|b| std::cmp::Reverse(b.expires_at));
        live
    }
}

/// Contacts are the same binding when their URIs match, ignoring case of
/// the scheme and host and any parameters after the URI (a simplification of
/// §19.1.4 that phones' refreshes satisfy).
fn same_contact(a: &str, b: &str) -> bool {
    let key = |c: &str| c.split(';').next().unwrap_or(c).trim_matches(|ch| ch == '<' || ch == '>').to_ascii_lowercase();
    key(a) == key(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The public address a NAT gave the phone.
    fn nat() -> Peer {
        Peer::udp("198.51.100.7:40123".parse().unwrap())
    }

    fn reg<'a>(
        user: &'a str,
        change: ContactChange,
        expires: Option<u32>,
        call_id: &'a str,
        cseq: u32,
    ) -> Registration<'a> {
        Registration { user, change, expires, call_id, cseq, source: nat() }
    }

    fn contacts(list: &[(&str, Option<u32>)]) -> ContactChange {
        let contact = |(uri, expires): &(&str, Option<u32>)| RequestedContact {
            uri: uri.to_string(),
            expires: *expires,
            q: None,
        };
        ContactChange::Contacts(list.iter().map(contact).collect())
    }

    #[test]
    fn bindings_expire_refresh_and_go() {
        let now = Instant::now();
        let mut r = Registrar::default();
        let phone = "sip:alice@10.0.0.5:5060";
        let bound = r.register(now, reg("alice", contacts(&[(phone, None)]), Some(120), "c1", 1)).unwrap();
        assert_eq!(bound, vec![(phone.to_string(), 120)]);
        assert_eq!(r.lookup(now + Duration::from_secs(119), "alice"), vec![phone.to_string()]);
        assert!(r.lookup(now + Duration::from_secs(120), "alice").is_empty(), "expired");
        // A refresh extends it; a second device adds a binding; the newest comes first.
        r.register(now, reg("alice", contacts(&[(phone, None)]), Some(120), "c1", 2)).unwrap();
        let later = now + Duration::from_secs(60);
        let laptop = "sip:alice@10.0.0.9:5070";
        let bound = r.register(later, reg("alice", contacts(&[(laptop, Some(3600))]), None, "c2", 1)).unwrap();
        assert_eq!(bound.len(), 2);
        assert_eq!(r.lookup(later, "alice"), vec![laptop.to_string(), phone.to_string()]);
        let routes = r.routes(later, "alice");
        assert_eq!(
            routes,
            [vec![(laptop.to_string(), nat()), (phone.to_string(), nat())]],
            "newest first, from where it registered"
        );
        // Expires 0 on one contact removes it; `*` removes all.
        r.register(later, reg("alice", contacts(&[(laptop, Some(0))]), None, "c2", 2)).unwrap();
        assert_eq!(r.lookup(later, "alice"), vec![phone.to_string()]);
        assert_eq!(r.register(later, reg("alice", ContactChange::RemoveAll, Some(0), "c3", 1)), Ok(vec![]));
        assert!(r.lookup(later, "alice").is_empty());
    }

    #[test]
    fn bad_and_late_registrations_are_refused() {
        let now = Instant::now();
        let mut r = Registrar::default();
        let phone = "<sip:bob@10.0.0.6>";
        assert_eq!(
            r.register(now, reg("bob", contacts(&[(phone, Some(30))]), None, "c", 1)),
            Err(RegisterError::IntervalTooBrief)
        );
        assert_eq!(
            r.register(now, reg("bob", ContactChange::RemoveAll, Some(60), "c", 1)),
            Err(RegisterError::BadRequest)
        );
        r.register(now, reg("bob", contacts(&[(phone, None)]), None, "c", 5)).unwrap();
        assert_eq!(
            r.register(now, reg("bob", contacts(&[("sip:bob@10.0.0.6;transport=udp", None)]), None, "c", 4)),
            Err(RegisterError::OutOfOrder),
            "the same contact, an older CSeq"
        );
        let many: Vec<String> = (0..MAX_CONTACTS).map(|i| format!("sip:bob@10.0.1.{i}")).collect();
        let many: Vec<(&str, Option<u32>)> = many.iter().map(|c| (c.as_str(), None)).collect();
        assert_eq!(r.register(now, reg("bob", contacts(&many), None, "d", 1)), Err(RegisterError::TooManyContacts));
        let bound = r.register(now, reg("bob", contacts(&[(phone, Some(999_999))]), None, "c", 6)).unwrap();
        assert_eq!(bound, vec![(phone.to_string(), MAX_EXPIRES)], "cut to the most");
    }

    #[test]
    fn routes_come_in_groups_of_equal_q_value_the_highest_first() {
        let now = Instant::now();
        let mut r = Registrar::default();
        let contact = |uri: &str, q| RequestedContact { uri: uri.into(), expires: None, q };
        let list = vec![
            contact("sip:a@10.0.0.1", Some(500)),
            contact("sip:a@10.0.0.2", None),
            contact("sip:a@10.0.0.3", Some(500)),
            contact("sip:a@10.0.0.4", Some(1000)),
        ];
        r.register(now, reg("alice", ContactChange::Contacts(list), Some(120), "c1", 1)).unwrap();
        let uris = |group: &Vec<(String, Peer)>| group.iter().map(|(c, _)| c.clone()).collect::<Vec<_>>();
        let groups: Vec<Vec<String>> = r.routes(now, "alice").iter().map(uris).collect();
        assert_eq!(groups.len(), 2, "{groups:?}");
        assert_eq!(groups[0].len(), 2, "no q counts as 1.0: {groups:?}");
        assert!(groups[0].contains(&"sip:a@10.0.0.2".to_string()) && groups[0].contains(&"sip:a@10.0.0.4".to_string()));
        assert!(groups[1].contains(&"sip:a@10.0.0.1".to_string()) && groups[1].contains(&"sip:a@10.0.0.3".to_string()));
    }
}
