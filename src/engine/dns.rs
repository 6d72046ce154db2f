//! Finding the server a dialled URI names: NAPTR, SRV and address records
//! (RFC 3263) through hickory's resolver, following the plan
//! [`crate::sip::locate`] makes.

use std::net::SocketAddr;

use hickory_resolver::config::{NameServerConfigGroup, ResolverConfig};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::rr::{RData, RecordType};
use hickory_resolver::TokioResolver;

use crate::sip::locate::{self, Naptr, Plan, Srv};
use crate::sip::{Peer, Transport};
use crate::{Error, Result};

/// A resolver asking `servers`, or the system's name servers (resolv.conf)
/// when there are none.
pub(crate) fn resolver(servers: &[SocketAddr]) -> Result<TokioResolver> {
    let provider = TokioConnectionProvider::default();
    let builder = if servers.is_empty() {
        TokioResolver::builder(provider)
            .map_err(|e| Error::InvalidArgument(format!("cannot read the system's DNS configuration: {e}")))?
    } else {
        let mut group = NameServerConfigGroup::new();
        for server in servers {
            group.merge(NameServerConfigGroup::from_ips_clear(&[server.ip()], server.port(), true));
        }
        TokioResolver::builder_with_config(ResolverConfig::from_parts(None, Vec::new(), group), provider)
    };
    Ok(builder.build())
}

/// At most this many servers are tried for one request.
const MAX_TARGETS: usize = 8;

/// Where to send a request for a URI with a host name, in the order to try
/// them (RFC 3263 §4.3: the next after a timeout, a transport error or a
/// 503), each with the host name its TLS certificate must prove (RFC 5922:
/// the URI's domain, not the SRV target's).
pub(crate) async fn locate(resolver: &TokioResolver, plan: Plan) -> Result<Vec<(Peer, String)>> {
    let (host, srv_names, fallback) = match plan {
        Plan::Direct(peer) => return Ok(vec![(peer, peer.addr.ip().to_string())]),
        Plan::Addresses { host, port, transport } => {
            let peers = addresses(resolver, &host, port, transport).await?;
            return Ok(peers.into_iter().map(|peer| (peer, host.clone())).collect());
        }
        Plan::Srv { host, transport } => {
            let srv_names = vec![(transport, locate::srv_name(&host, transport))];
            (host, srv_names, transport)
        }
        Plan::Naptr { host, secure } => {
            let mut srv_names = naptr(resolver, &host, secure).await;
            if srv_names.is_empty() {
                srv_names = locate::srv_fallback(secure).iter().map(|t| (*t, locate::srv_name(&host, *t))).collect();
            }
            (host, srv_names, if secure { Transport::Tls } else { Transport::Udp })
        }
    };
    // The servers of the first transport whose SRV records resolve: its
    // targets are the alternatives, and other transports are not asked.
    let mut targets = Vec::new();
    for (transport, name) in srv_names {
        // The targets' addresses are asked for at once, so a slow one holds
        // up the dial no longer than the slowest, not the sum; kept in SRV order.
        let mut lookups = tokio::task::JoinSet::new();
        for (rank, (target, port)) in srv(resolver, &name).await.into_iter().take(MAX_TARGETS).enumerate() {
            let resolver = resolver.clone();
            lookups.spawn(async move { (rank, addresses(&resolver, &target, port, transport).await) });
        }
        let mut found: Vec<(usize, Vec<Peer>)> = Vec::new();
        while let Some(done) = lookups.join_next().await {
            if let Ok((rank, Ok(peers))) = done {
                found.push((rank, peers));
            }
        }
        found.sort_by_key(|(rank, _)| *rank);
        targets.extend(found.into_iter().flat_map(|(_, peers)| peers).map(|peer| (peer, host.clone())));
        if !targets.is_empty() {
            break;
        }
    }
    if targets.is_empty() {
        let peers = addresses(resolver, &host, locate::default_port(fallback), fallback).await?;
        targets.extend(peers.into_iter().map(|peer| (peer, host.clone())));
    }
    targets.truncate(MAX_TARGETS);
    Ok(targets)
}

async fn addresses(resolver: &TokioResolver, host: &str, port: u16, transport: Transport) -> Result<Vec<Peer>> {
    let found = resolver.lookup_ip(host).await.map_err(|e| Error::NotFound(format!("{host}: {e}")))?;
    let peers: Vec<Peer> = found.iter().map(|ip| Peer { transport, addr: SocketAddr::new(ip, port) }).collect();
    if peers.is_empty() {
        return Err(Error::NotFound(format!("no address for {host}")));
    }
    Ok(peers)
}

async fn naptr(resolver: &TokioResolver, host: &str, secure: bool) -> Vec<(Transport, String)> {
    let Ok(found) = resolver.lookup(host, RecordType::NAPTR).await else { return Vec::new() };
    let records = found
        .iter()
        .filter_map(|data| match data {
            RData::NAPTR(n) => Some(Naptr {
                order: n.order(),
                preference: n.preference(),
                flags: String::from_utf8_lossy(n.flags()).into_owned(),
                services: String::from_utf8_lossy(n.services()).into_owned(),
                replacement: n.replacement().to_utf8(),
            }),
            _ => None,
        })
        .collect();
    locate::naptr_targets(records, secure)
}

async fn srv(resolver: &TokioResolver, name: &str) -> Vec<(String, u16)> {
    let Ok(found) = resolver.srv_lookup(name).await else { return Vec::new() };
    let records = found
        .iter()
        .map(|s| Srv { priority: s.priority(), weight: s.weight(), port: s.port(), target: s.target().to_utf8() })
        .collect();
    locate::order_srv(records, |total| rand::random_range(0..=total))
}
