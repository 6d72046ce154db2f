//! SIP over TCP and TLS: listeners and connections. Each connection is a
//! task that frames what it reads ([`StreamFramer`]) and hands whole messages
//! to the SIP task, and writes what the SIP task queues for it. The SIP task
//! owns the table of connections, so picking one for a message never races
//! with a connection opening or closing.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::sip::stream::{Frame, StreamFramer, KEEPALIVE_PONG};
use crate::sip::{Peer, Transport};
use crate::{Error, Result};

/// Messages a connection may have queued for writing; past this the SIP
/// task drops what it sends to it (the peer stopped reading).
const WRITE_QUEUE: usize = 256;
/// Messages connections may have waiting for the SIP task; a full queue
/// holds their reads back.
const INBOUND_QUEUE: usize = 1024;
/// A connection with no traffic either way for this long is closed. Phones
/// keep theirs open with CRLF pings or registration refreshes, and we ping
/// registered phones more often than this.
const IDLE_TIMEOUT: Duration = Duration::from_secs(600);
/// How long opening a connection may take, TLS handshake included.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Names one connection, so that the news of an old connection to a peer
/// closing does not remove a newer one to the same peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ConnectionId(u64);

/// What connections tell the SIP task.
pub(crate) enum StreamEvent {
    /// A peer connected to one of our listeners.
    Accepted {
        peer: Peer,
        id: ConnectionId,
        writer: mpsc::Sender<Vec<u8>>,
    },
    Message {
        peer: Peer,
        data: Vec<u8>,
    },
    /// The connection ended: closed by the peer, failed to open, broke, or idled out.
    Closed {
        peer: Peer,
        id: ConnectionId,
    },
}

/// The TLS side of an endpoint: what it presents and whom it trusts.
pub(crate) struct TlsContext {
    /// Present when a certificate is configured.
    acceptor: Option<TlsAcceptor>,
    connector: TlsConnector,
}

impl TlsContext {
    /// Loads the certificate chain and key (PEM) when given, and trusts the
    /// Mozilla roots plus the certificates in `ca_file`.
    pub fn new(certificate: Option<(&Path, &Path)>, ca_file: Option<&Path>) -> Result<Self> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls_error =
            |what: &str, error: &dyn std::fmt::Display| Error::InvalidArgument(format!("TLS {what}: {error}"));
        let acceptor = match certificate {
            Some((chain, key)) => {
                let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(chain)
                    .and_then(|certs| certs.collect())
                    .map_err(|e| tls_error(&format!("certificate {}", chain.display()), &e))?;
                let key = PrivateKeyDer::from_pem_file(key)
                    .map_err(|e| tls_error(&format!("private key {}", key.display()), &e))?;
                let config = rustls::ServerConfig::builder_with_provider(provider.clone())
                    .with_safe_default_protocol_versions()
                    .map_err(|e| tls_error("versions", &e))?
                    .with_no_client_auth()
                    .with_single_cert(chain, key)
                    .map_err(|e| tls_error("certificate and key", &e))?;
                Some(TlsAcceptor::from(Arc::new(config)))
            }
            None => None,
        };
        let mut roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
        if let Some(ca_file) = ca_file {
            let certs = CertificateDer::pem_file_iter(ca_file)
                .map_err(|e| tls_error(&format!("CA file {}", ca_file.display()), &e))?;
            for cert in certs {
                let cert = cert.map_err(|e| tls_error(&format!("CA file {}", ca_file.display()), &e))?;
                roots.add(cert).map_err(|e| tls_error(&format!("CA file {}", ca_file.display()), &e))?;
            }
        }
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| tls_error("versions", &e))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Self { acceptor, connector: TlsConnector::from(Arc::new(config)) })
    }

    pub fn can_accept(&self) -> bool {
        self.acceptor.is_some()
    }
}

/// The SIP task's table of open connections.
pub(crate) struct Connections {
    open: HashMap<Peer, (ConnectionId, mpsc::Sender<Vec<u8>>)>,
    events: mpsc::Sender<StreamEvent>,
    tls: Arc<TlsContext>,
    /// The host names that addresses were looked up for, which their TLS
    /// certificates must name (RFC 5922); an address without one must be in
    /// the certificate itself.
    tls_names: HashMap<SocketAddr, ServerName<'static>>,
    next_id: Arc<AtomicU64>,
}

impl Connections {
    /// Starts the listeners; what they accept and read comes out of the
    /// returned receiver. Must run inside the runtime.
    pub fn start(
        tcp: Option<TcpListener>,
        tls_listener: Option<TcpListener>,
        tls: Arc<TlsContext>,
    ) -> (Self, mpsc::Receiver<StreamEvent>) {
        let (events, receiver) = mpsc::channel(INBOUND_QUEUE);
        let connections =
            Self { open: HashMap::new(), events, tls: tls.clone(), tls_names: HashMap::new(), next_id: Arc::default() };
        if let Some(listener) = tcp {
            tokio::spawn(accept(listener, None, connections.events.clone(), connections.next_id.clone()));
        }
        if let Some(listener) = tls_listener {
            tokio::spawn(accept(listener, Some(tls), connections.events.clone(), connections.next_id.clone()));
        }
        (connections, receiver)
    }

    /// Notes that `addr` was looked up for `host`, the name a TLS server
    /// there must prove.
    pub fn resolved(&mut self, addr: SocketAddr, host: &str) {
        if let Ok(name) = ServerName::try_from(host.to_string()) {
            self.tls_names.insert(addr, name);
        }
    }

    /// Queues `data` on the connection to `peer`, opening one if there is none.
    pub fn send(&mut self, peer: Peer, data: Vec<u8>) {
        if let Some((_, writer)) = self.open.get(&peer) {
            if writer.try_send(data).is_err() {
                tracing::warn!(%peer, "connection not keeping up; dropping a SIP message");
            }
            return;
        }
        let tls = (peer.transport == Transport::Tls).then(|| {
            let name = self.tls_names.get(&peer.addr).cloned();
            (self.tls.connector.clone(), name.unwrap_or_else(|| ServerName::IpAddress(peer.addr.ip().into())))
        });
        let id = ConnectionId(self.next_id.fetch_add(1, Ordering::Relaxed));
        let (writer, queue) = mpsc::channel(WRITE_QUEUE);
        let _ = writer.try_send(data);
        self.open.insert(peer, (id, writer));
        tokio::spawn(connect(peer, id, tls, queue, self.events.clone()));
    }

    /// Whether a connection to `peer` is open (or opening).
    pub fn is_open(&self, peer: Peer) -> bool {
        self.open.contains_key(&peer)
    }

    pub fn accepted(&mut self, peer: Peer, id: ConnectionId, writer: mpsc::Sender<Vec<u8>>) {
        self.open.insert(peer, (id, writer));
    }

    /// Forgets a connection that ended; false when a newer one to the same
    /// peer has taken its place.
    pub fn closed(&mut self, peer: Peer, id: ConnectionId) -> bool {
        let current = self.open.get(&peer).is_some_and(|(open, _)| *open == id);
        if current {
            self.open.remove(&peer);
        }
        current
    }
}

/// A TCP or TLS stream, so one connection loop serves both.
trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<S: AsyncRead + AsyncWrite + Unpin + Send> Stream for S {}

async fn accept(
    listener: TcpListener,
    tls: Option<Arc<TlsContext>>,
    events: mpsc::Sender<StreamEvent>,
    next_id: Arc<AtomicU64>,
) {
    let transport = if tls.is_some() { Transport::Tls } else { Transport::Tcp };
    loop {
        let (stream, addr) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors and the like: try again shortly.
                tracing::warn!(%error, "cannot accept a SIP connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if events.is_closed() {
            return;
        }
        let _ = stream.set_nodelay(true);
        let peer = Peer { transport, addr };
        let id = ConnectionId(next_id.fetch_add(1, Ordering::Relaxed));
        let events = events.clone();
        let acceptor = tls.as_ref().and_then(|t| t.acceptor.clone());
        tokio::spawn(async move {
            let stream: Box<dyn Stream> = match acceptor {
                Some(acceptor) => match tokio::time::timeout(CONNECT_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(stream)) => Box::new(stream),
                    Ok(Err(error)) => return tracing::info!(%peer, %error, "TLS handshake failed"),
                    Err(_) => return tracing::info!(%peer, "TLS handshake timed out"),
                },
                None => Box::new(stream),
            };
            let (writer, queue) = mpsc::channel(WRITE_QUEUE);
            if events.send(StreamEvent::Accepted { peer, id, writer }).await.is_ok() {
                run_connection(stream, peer, id, queue, events).await
            }
        });
    }
}

async fn connect(
    peer: Peer,
    id: ConnectionId,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    queue: mpsc::Receiver<Vec<u8>>,
    events: mpsc::Sender<StreamEvent>,
) {
    match tokio::time::timeout(CONNECT_TIMEOUT, open(peer, tls)).await {
        Ok(Ok(stream)) => run_connection(stream, peer, id, queue, events).await,
        Ok(Err(error)) => {
            tracing::info!(%peer, %error, "cannot connect");
            let _ = events.send(StreamEvent::Closed { peer, id }).await;
        }
        Err(_) => {
            tracing::info!(%peer, "connecting timed out");
            let _ = events.send(StreamEvent::Closed { peer, id }).await;
        }
    }
}

async fn open(peer: Peer, tls: Option<(TlsConnector, ServerName<'static>)>) -> std::io::Result<Box<dyn Stream>> {
    let stream = TcpStream::connect(peer.addr).await?;
    let _ = stream.set_nodelay(true);
    match tls {
        Some((connector, name)) => Ok(Box::new(connector.connect(name, stream).await?)),
        None => Ok(Box::new(stream)),
    }
}

/// Reads and frames until the stream ends, writing what is queued meanwhile.
async fn run_connection(
    stream: Box<dyn Stream>,
    peer: Peer,
    id: ConnectionId,
    mut queue: mpsc::Receiver<Vec<u8>>,
    events: mpsc::Sender<StreamEvent>,
) {
    let (mut reader, mut writer) = tokio::io::split(stream);
    let mut framer = StreamFramer::new();
    let mut buf = vec![0u8; 16 * 1024];
    let ended = loop {
        tokio::select! {
            read = tokio::time::timeout(IDLE_TIMEOUT, reader.read(&mut buf)) => {
                let n = match read {
                    Ok(Ok(0)) => break "closed by the peer".to_string(),
                    Ok(Ok(n)) => n,
                    Ok(Err(error)) => break error.to_string(),
                    Err(_) => break "idle".to_string(),
                };
                framer.push(&buf[..n]);
                let mut pong = false;
                loop {
                    match framer.next_frame() {
                        Ok(Some(Frame::Message(data))) => {
                            if events.send(StreamEvent::Message { peer, data }).await.is_err() {
                                return;
                            }
                        }
                        Ok(Some(Frame::Ping)) => pong = true,
                        Ok(None) => break,
                        Err(error) => {
                            tracing::info!(%peer, %error, "cannot frame a SIP stream; closing it");
                            let _ = events.send(StreamEvent::Closed { peer, id }).await;
                            return;
                        }
                    }
                }
                if pong && writer.write_all(KEEPALIVE_PONG).await.is_err() {
                    break "write failed".to_string();
                }
            }
            data = queue.recv() => match data {
                Some(data) => {
                    if let Err(error) = writer.write_all(&data).await {
                        break error.to_string();
                    }
                }
                // The SIP task dropped the connection (it is stopping).
                None => break "dropped".to_string(),
            },
        }
    };
    tracing::debug!(%peer, %ended, "SIP connection ended");
    let _ = writer.shutdown().await;
    let _ = events.send(StreamEvent::Closed { peer, id }).await;
}
