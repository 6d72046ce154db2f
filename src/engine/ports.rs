//! RTP ports from the configured range, given back when a leg ends.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::ops::RangeInclusive;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::{Error, Result};

/// Even ports of a range (RTP takes even ports, RFC 3550 §11), handed out
/// least recently used first so a port is not reused while stray packets for
/// its last call may still arrive.
#[derive(Debug, Clone)]
pub struct PortPool {
    free: Arc<Mutex<VecDeque<u16>>>,
}

/// A port taken from the pool; dropping it gives it back.
#[derive(Debug)]
pub struct PortLease {
    port: u16,
    free: Arc<Mutex<VecDeque<u16>>>,
}

impl Drop for PortLease {
    fn drop(&mut self) {
        self.free.lock().push_back(self.port);
    }
}

impl PortPool {
    pub fn new(range: RangeInclusive<u16>) -> Result<Self> {
        let free: VecDeque<u16> = range.filter(|p| p % 2 == 0 && *p != 0).collect();
        if free.is_empty() {
            return Err(Error::InvalidArgument("the RTP port range holds no even port".into()));
        }
        Ok(Self { free: Arc::new(Mutex::new(free)) })
    }

    /// Binds a free even port on `ip` for RTP and the odd port above it for
    /// RTCP (RFC 3550 §11), both non-blocking.
    pub fn bind(&self, ip: IpAddr) -> Result<(UdpSocket, UdpSocket, PortLease)> {
        let tries = self.free.lock().len();
        for _ in 0..tries {
            let Some(port) = self.free.lock().pop_front() else { break };
            let lease = PortLease { port, free: self.free.clone() };
            let bound = (UdpSocket::bind(SocketAddr::new(ip, port)), UdpSocket::bind(SocketAddr::new(ip, port + 1)));
            let (rtp, rtcp) = match bound {
                (Ok(rtp), Ok(rtcp)) => (rtp, rtcp),
                // Taken by another program: it goes back to the end of the queue.
                (Err(e), _) | (_, Err(e)) if e.kind() == std::io::ErrorKind::AddrInUse => continue,
                // Anything else (out of file descriptors) fails every port
                // alike: say so at once rather than trying them all.
                (Err(e), _) | (_, Err(e)) => return Err(e.into()),
            };
            rtp.set_nonblocking(true)?;
            rtcp.set_nonblocking(true)?;
            return Ok((rtp, rtcp, lease));
        }
        Err(Error::NoRtpPort)
    }

    #[cfg(test)]
    pub fn free_count(&self) -> usize {
        self.free.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_even_reused_and_exhaustible() {
        let base = 31000 + (std::process::id() % 500) as u16 * 4;
        let pool = PortPool::new(base..=base + 3).unwrap();
        assert_eq!(pool.free_count(), 2);
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let (a, _, la) = pool.bind(ip).unwrap();
        let (b, _, lb) = pool.bind(ip).unwrap();
        assert_eq!(a.local_addr().unwrap().port() % 2, 0);
        assert_ne!(a.local_addr().unwrap().port(), b.local_addr().unwrap().port());
        assert!(matches!(pool.bind(ip), Err(Error::NoRtpPort)));
        drop((a, la));
        assert_eq!(pool.free_count(), 1);
        assert!(pool.bind(ip).is_ok());
        drop((b, lb));
    }

    #[test]
    fn odd_only_range_is_refused() {
        assert!(PortPool::new(31001..=31001).is_err());
    }
}
