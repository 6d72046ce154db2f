//! Accounts with upstream registrars: what the application gives, checked
//! and resolved into what the registration client needs, and what the SIP
//! task needs to route the calls that come for them.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};

use super::Shared;
use crate::api::Account;
use crate::sip::message;
use crate::sip::register_client::{AccountConfig, Secret};
use crate::sip::{Peer, Transport};
use crate::{Error, Result};

/// Where calls for an account go.
#[derive(Debug, Clone)]
pub(crate) struct AccountRoute {
    pub aor: String,
    /// The AOR's user, unescaped: the Request-URI user of its calls.
    pub user: String,
    pub room: String,
    /// Calls from here were authenticated by the registrar, not by us.
    pub registrar_ip: IpAddr,
}

/// Checks `account` and resolves its registrar. Host names go through the
/// system resolver on the caller's thread, not the SIP task's.
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
    let parts = parse_uri(&registrar)?;
    let destination = match message::uri_socket_addr(&registrar) {
        Some(address) => address,
        None => (parts.host.as_str(), parts.port.unwrap_or(5060))
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| Error::NotFound(format!("no address for {}", parts.host)))?,
    };
    let transport = Transport::of_uri(&registrar).unwrap_or(Transport::Udp);
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
        destination: Peer { transport, addr: destination },
        username: account.username.unwrap_or_else(|| user.clone()),
        secret,
        expires: account.expires,
        contact,
    };
    let route = AccountRoute { aor: account.aor, user, room: account.room, registrar_ip: destination.ip() };
    Ok((config, route))
}

fn parse_uri(uri: &str) -> Result<message::UriParts> {
    rsip::Uri::try_from(uri).map_err(|e| Error::InvalidArgument(format!("bad SIP URI {uri:?}: {e}")))?;
    message::uri_parts(uri)
        .ok_or_else(|| Error::InvalidArgument(format!("bad SIP URI {uri:?}: no host, or a bad port")))
}
