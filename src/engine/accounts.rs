//! Accounts with upstream registrars: what the application gives, checked
//! and resolved into what the registration client needs, and what the SIP
//! task needs to route the calls that come for them.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use super::{dns, Shared};
use crate::api::Account;
use crate::sip::register_client::{AccountConfig, Secret};
use crate::sip::{locate, message, Peer, Transport};
use crate::{Error, Result};

/// How long adding an account waits for its registrar's name to resolve.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(10);

/// Where calls for an account go.
#[derive(Debug, Clone)]
pub(crate) struct AccountRoute {
    pub aor: String,
    /// The AOR's user, unescaped: the Request-URI user of its calls.
    pub user: String,
    pub room: String,
    /// The registrar's servers, each with the name a TLS server there must
    /// prove. Calls from their addresses were authenticated by the
    /// registrar, not by us.
    pub servers: Vec<(Peer, String)>,
    /// What to look up again when none of the servers can be reached: the
    /// registrar's host name (none for an IP address), and whether a
    /// lookup is under way.
    pub lookup: Option<locate::Plan>,
    pub looking_up: bool,
}

impl AccountRoute {
    /// Whether `ip` is one of the registrar's servers.
    pub fn is_registrar(&self, ip: IpAddr) -> bool {
        self.servers.iter().any(|(peer, _)| peer.addr.ip() == ip)
    }
}

/// Checks `account` and resolves its registrar as RFC 3263 says (NAPTR,
/// SRV, addresses, with the endpoint's DNS servers), on the endpoint's
/// runtime while the caller's thread waits, not the SIP task.
pub(crate) fn account_settings(shared: &Shared, account: Account) -> Result<(AccountConfig, AccountRoute)> {
    let bad = |why: String| Error::InvalidArgument(why);
    let aor_parts = parse_uri(&account.aor)?;
    let escaped_user = aor_parts.user.clone().ok_or_else(|| bad(format!("the AOR {:?} has no user", account.aor)))?;
    let user = message::unescape_user(&escaped_user).ok_or_else(|| bad(format!("bad user in {:?}", account.aor)))?;
    if account.room.is_empty() || account.room.chars().any(|c| c.is_control()) {
        return Err(bad(format!("bad room name {:?}", account.room)));
    }
    if account.expires == 0 {
        return Err(bad("an account's expiry must be at least a second".into()));
    }
    let hex = |h: &str| (h.len() == 32 || h.len() == 64) && h.bytes().all(|b| b.is_ascii_hexdigit());
    let secret = match (account.password, account.ha1) {
        (Some(password), None) => Secret::Password(password),
        (None, Some(ha1)) if hex(&ha1) => Secret::Ha1(ha1),
        _ => return Err(bad("an account needs a password or an HA1 hash (32 or 64 hex digits), not both".into())),
    };
    let registrar = account.registrar.unwrap_or_else(|| match aor_parts.host.contains(':') {
        true => format!("sip:[{}]", aor_parts.host),
        false => format!("sip:{}", aor_parts.host),
    });
    parse_uri(&registrar)?;
    let plan = locate::plan(&registrar).ok_or_else(|| bad(format!("bad registrar URI {registrar:?}")))?;
    let lookup = (!matches!(plan, locate::Plan::Direct(_))).then(|| plan.clone());
    let servers = locate_and_wait(shared, plan)?;
    let transport = servers[0].0.transport;
    let advertised = SocketAddr::new(shared.advertised_ip, shared.sip_addr.port());
    // The Contact names the transport the registration goes over, so that
    // calls come back on it.
    let contact = match (transport, shared.tls_addr) {
        (Transport::Tcp, _) => format!("<sip:{escaped_user}@{advertised};transport=tcp>"),
        (Transport::Tls, Some(tls)) => {
            format!("<sips:{escaped_user}@{}>", SocketAddr::new(shared.advertised_ip, tls.port()))
        }
        _ => format!("<sip:{escaped_user}@{advertised}>"),
    };
    let config = AccountConfig {
        aor: account.aor.clone(),
        registrar,
        servers: servers.iter().map(|(peer, _)| *peer).collect(),
        username: account.username.unwrap_or_else(|| user.clone()),
        secret,
        expires: account.expires,
        contact,
    };
    let route = AccountRoute { aor: account.aor, user, room: account.room, servers, lookup, looking_up: false };
    Ok((config, route))
}

/// Runs an RFC 3263 lookup on the endpoint's runtime and waits for it; at
/// least one server, or an error. (The SIP task looks up again without
/// waiting: `Driver::look_up_registrar`.)
fn locate_and_wait(shared: &Shared, plan: locate::Plan) -> Result<Vec<(Peer, String)>> {
    let (found, result) = std::sync::mpsc::channel();
    let resolver = shared.resolver.clone();
    shared.runtime.spawn(async move {
        let _ = found.send(dns::locate(&resolver, plan).await);
    });
    let servers =
        result.recv_timeout(LOOKUP_TIMEOUT).map_err(|_| Error::NotFound("the registrar's address".into()))??;
    match servers.is_empty() {
        true => Err(Error::NotFound("the registrar's address".into())),
        false => Ok(servers),
    }
}

fn parse_uri(uri: &str) -> Result<message::UriParts> {
    rsip::Uri::try_from(uri).map_err(|e| Error::InvalidArgument(format!("bad SIP URI {uri:?}: {e}")))?;
    message::uri_parts(uri)
        .ok_or_else(|| Error::InvalidArgument(format!("bad SIP URI {uri:?}: no host, or a bad port")))
}
