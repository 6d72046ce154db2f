//! A leg's receive task: moves RTP from the socket into the mixer's ring,
//! and, off the mixer thread, turns telephone-events into DTMF events, a
//! silent peer into a media timeout, and runs the leg's RTCP (RFC 3550 §6):
//! receiver statistics, sender and receiver reports every few seconds, and
//! the round-trip time from the peer's reports.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::net::UdpSocket;

use super::{Shared, SipCommand};
use crate::api::{Event, LeaveReason};
use crate::media::dtmf::{DtmfDigit, DtmfReceiver};
use crate::media::mixer::{ParticipantControls, ParticipantId, ReceivedDatagram, MAX_DATAGRAM};
use crate::media::rtcp::{self, ReceiverStats, RtcpPacket, RttEstimator, SenderInfo};
use crate::media::rtp::RtpPacket;

/// Seconds between our RTCP reports (RFC 3550 §6.2's minimum), before the
/// random spread of ±50% that keeps legs from reporting in step.
const REPORT_INTERVAL: Duration = Duration::from_secs(5);
/// How often the task looks at the media timeout.
const TIMEOUT_CHECK: Duration = Duration::from_millis(500);

/// The negotiated RTP clock rate and telephone-event payload type (if
/// any), which a re-offer that changes the codec changes while the task runs.
pub(crate) struct ReceiveFormat {
    clock_rate: AtomicU32,
    /// `NO_TELEPHONE_EVENT` when none was negotiated.
    telephone_event: AtomicU16,
}

const NO_TELEPHONE_EVENT: u16 = u16::MAX;

impl ReceiveFormat {
    pub fn new(clock_rate: u32, telephone_event: Option<u8>) -> Self {
        let format = Self { clock_rate: AtomicU32::new(0), telephone_event: AtomicU16::new(NO_TELEPHONE_EVENT) };
        format.set(clock_rate, telephone_event);
        format
    }

    pub fn set(&self, clock_rate: u32, telephone_event: Option<u8>) {
        self.clock_rate.store(clock_rate, Ordering::Relaxed);
        self.telephone_event.store(telephone_event.map_or(NO_TELEPHONE_EVENT, u16::from), Ordering::Relaxed);
    }

    fn clock_rate(&self) -> u32 {
        self.clock_rate.load(Ordering::Relaxed)
    }

    fn is_telephone_event(&self, payload_type: u8) -> bool {
        self.telephone_event.load(Ordering::Relaxed) == u16::from(payload_type)
    }
}

/// What a leg's receive task needs to know besides its sockets and ring.
pub(crate) struct ReceiveContext {
    pub participant: ParticipantId,
    pub shared: Arc<Shared>,
    pub controls: Arc<ParticipantControls>,
    pub format: Arc<ReceiveFormat>,
    /// How long the peer may stay silent, when it is expected to send.
    pub media_timeout: Option<Duration>,
    /// Our SSRC, the mixer's for the RTP it sends.
    pub ssrc: u32,
    /// Where the peer's SDP says its RTP goes.
    pub remote: SocketAddr,
}

/// The leg's RTP socket (which also carries RTCP when multiplexed) and its
/// RTCP socket otherwise.
pub(crate) struct LegSockets {
    pub rtp: UdpSocket,
    pub rtcp: Option<UdpSocket>,
}

impl ReceiveContext {
    fn emit(&self, make: impl FnOnce(String) -> Event) {
        let conference = self.shared.conference_of(self.participant);
        if let Some(conference) = conference {
            self.shared.emit(make(conference));
        }
    }
}

/// The leg's RTCP state.
struct RtcpState {
    stats: Option<ReceiverStats>,
    rtt: RttEstimator,
    cname: String,
    /// Where reports go: the RTCP source the peer uses, else the RTP source
    /// (multiplexed) or the port above it.
    peer: SocketAddr,
    peer_latched: bool,
    epoch: Instant,
}

impl RtcpState {
    fn on_rtp(&mut self, packet: &RtpPacket<'_>, arrival: Instant, clock_rate: u32, controls: &ParticipantControls) {
        let stats = self.stats.get_or_insert_with(|| ReceiverStats::new(packet.ssrc));
        let units = arrival.saturating_duration_since(self.epoch).as_micros() as u64 * clock_rate as u64 / 1_000_000;
        stats.on_packet(packet.sequence, packet.timestamp, units as u32);
        controls.packets_expected.store(stats.packets_expected(), Ordering::Relaxed);
        controls.packets_lost.store(stats.cumulative_lost().max(0) as u64, Ordering::Relaxed);
        controls.jitter_us.store((stats.jitter_ms(clock_rate) * 1000.0) as u32, Ordering::Relaxed);
    }

    fn on_rtcp(&mut self, datagram: &[u8], controls: &ParticipantControls) {
        let now_ntp = rtcp::ntp_from_system_time(SystemTime::now());
        for packet in rtcp::RtcpPackets::new(datagram) {
            let Ok(packet) = packet else { break };
            let blocks = match packet {
                RtcpPacket::SenderReport(sr) => {
                    if let Some(stats) = self.stats.as_mut() {
                        stats.on_sender_report(sr.ntp_timestamp, now_ntp);
                    }
                    Some(sr.reports)
                }
                RtcpPacket::ReceiverReport(rr) => Some(rr.reports),
                _ => None,
            };
            for block in blocks.into_iter().flatten() {
                if self.rtt.is_about_us(&block) {
                    // The loss the peer saw since its last report: the encoder plans its FEC for it.
                    let percent = (block.fraction_lost as u32 * 100 + 128) / 256;
                    controls.remote_loss_percent.store(percent, Ordering::Relaxed);
                }
                if let Some(rtt) = self.rtt.on_report_block(&block, now_ntp) {
                    controls.round_trip_us.store(rtt.as_micros().min(u32::MAX as u128) as u32, Ordering::Relaxed);
                    controls.remote_packets_lost.store(block.cumulative_lost.max(0) as u64, Ordering::Relaxed);
                }
            }
        }
    }

    /// Builds our next compound report: an SR when we have sent RTP, else an RR.
    fn report(&mut self, ssrc: u32, controls: &ParticipantControls, buf: &mut [u8]) -> Option<usize> {
        let now_ntp = rtcp::ntp_from_system_time(SystemTime::now());
        let packets = controls.packets_sent.load(Ordering::Relaxed);
        let sender = (packets > 0).then(|| SenderInfo {
            ntp_timestamp: now_ntp,
            rtp_timestamp: controls.last_sent_timestamp.load(Ordering::Relaxed),
            // The counts wrap (RFC 3550 §6.4.1).
            packet_count: packets as u32,
            octet_count: controls.bytes_sent.load(Ordering::Relaxed) as u32,
        });
        if sender.is_some() {
            self.rtt.on_sender_report_sent(now_ntp);
        }
        let block = self.stats.as_mut().and_then(|s| s.report_block(now_ntp));
        rtcp::write_report(buf, ssrc, sender, block, &self.cname).ok()
    }
}

/// The receive task of one leg; runs until the leg ends and the task is aborted.
pub(crate) async fn receive_media(
    sockets: LegSockets,
    mut ring: rtrb::Producer<ReceivedDatagram>,
    leg: ReceiveContext,
) {
    let mut buf = [0u8; MAX_DATAGRAM];
    let mut rtcp_buf = [0u8; MAX_DATAGRAM];
    let mut digits_rate = leg.format.clock_rate();
    let mut digits = DtmfReceiver::new(digits_rate);
    let participant = leg.participant;
    let mut last_heard = Instant::now();
    let mut timed_out = false;
    let mux = sockets.rtcp.is_none();
    let rtcp_peer =
        if mux { leg.remote } else { SocketAddr::new(leg.remote.ip(), leg.remote.port().saturating_add(1)) };
    let mut state = RtcpState {
        stats: None,
        rtt: RttEstimator::new(leg.ssrc),
        cname: format!("sipbridge-{:016x}", rand::random::<u64>()),
        peer: rtcp_peer,
        peer_latched: false,
        epoch: Instant::now(),
    };
    // One timer for the life of the task, reset when it fires: a sleep made
    // in the loop would be registered and dropped again for every packet.
    let report_timer = tokio::time::sleep(spread(REPORT_INTERVAL) / 2);
    tokio::pin!(report_timer);
    // Armed only when the check is on: a timer per idle leg costs wake-ups.
    let mut timeout_check = leg.media_timeout.map(|_| tokio::time::interval(TIMEOUT_CHECK));
    loop {
        tokio::select! {
            received = sockets.rtp.recv_from(&mut buf) => {
                let Ok((n, source)) = received else { continue };
                let arrival = Instant::now();
                let data = &buf[..n];
                if rtcp::is_rtcp(data) {
                    if !state.peer_latched {
                        state.peer = source;
                        state.peer_latched = true;
                    }
                    state.on_rtcp(data, &leg.controls);
                    continue;
                }
                let Ok(packet) = RtpPacket::parse(data) else { continue };
                last_heard = arrival;
                timed_out = false;
                if mux && !state.peer_latched {
                    state.peer = source;
                }
                let clock_rate = leg.format.clock_rate();
                state.on_rtp(&packet, arrival, clock_rate, &leg.controls);
                if leg.format.is_telephone_event(packet.payload_type) {
                    if clock_rate != digits_rate {
                        (digits, digits_rate) = (DtmfReceiver::new(clock_rate), clock_rate);
                    }
                    for DtmfDigit { digit, duration_ms } in digits.handle(packet.timestamp, packet.payload) {
                        leg.shared.dtmf(participant, digit, duration_ms);
                    }
                    continue;
                }
                let mut datagram = ReceivedDatagram { source, arrival, len: n as u16, data: [0; MAX_DATAGRAM] };
                datagram.data[..n].copy_from_slice(data);
                if ring.push(datagram).is_err() {
                    leg.controls.dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
            received = recv_rtcp(sockets.rtcp.as_ref(), &mut rtcp_buf) => {
                let Ok((n, source)) = received else { continue };
                state.peer = source;
                state.peer_latched = true;
                state.on_rtcp(&rtcp_buf[..n], &leg.controls);
            }
            _ = &mut report_timer => {
                let next = report_timer.deadline() + spread(REPORT_INTERVAL);
                report_timer.as_mut().reset(next);
                if let Some(n) = state.report(leg.ssrc, &leg.controls, &mut rtcp_buf) {
                    let socket = sockets.rtcp.as_ref().unwrap_or(&sockets.rtp);
                    let _ = socket.send_to(&rtcp_buf[..n], state.peer).await;
                }
            }
            _ = super::next_tick(timeout_check.as_mut()) => {
                let Some(limit) = leg.media_timeout else { continue };
                if leg.controls.held.load(Ordering::Relaxed) {
                    // A held phone need not send; the clock starts again when it resumes.
                    last_heard = Instant::now();
                    continue;
                }
                if !timed_out && last_heard.elapsed() >= limit {
                    timed_out = true;
                    tracing::info!(participant = participant.0, "no RTP for the media timeout");
                    leg.emit(|conference| Event::MediaTimeout { conference, participant });
                    if leg.shared.config.hang_up_on_media_timeout {
                        let hangup = SipCommand::Hangup { participant, reason: LeaveReason::Timeout };
                        let _ = leg.shared.sip_commands.send(hangup);
                    }
                }
            }
        }
    }
}

/// Receives on the RTCP socket, or never when RTCP is multiplexed.
async fn recv_rtcp(socket: Option<&UdpSocket>, buf: &mut [u8]) -> std::io::Result<(usize, SocketAddr)> {
    match socket {
        Some(socket) => socket.recv_from(buf).await,
        None => std::future::pending().await,
    }
}

/// `interval` times a random factor in 0.5..1.5 (RFC 3550 §6.3.1).
fn spread(interval: Duration) -> Duration {
    interval.mul_f64(0.5 + rand::random::<f64>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_spread_around_the_interval() {
        for _ in 0..100 {
            let d = spread(REPORT_INTERVAL);
            assert!(d >= REPORT_INTERVAL / 2 && d <= REPORT_INTERVAL * 3 / 2);
        }
    }
}
