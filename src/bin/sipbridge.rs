//! `sipbridge serve`: a standalone conference server.

use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use sipbridge::{Endpoint, EndpointConfig, Error, Event, MixerReport};

#[derive(Parser)]
#[command(name = "sipbridge", version, about = "SIP multi-party audio conferencing")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a conference server: INVITE sip:ROOM@host joins conference ROOM.
    Serve {
        /// SIP/UDP listen address.
        #[arg(long, default_value = "0.0.0.0:5060")]
        listen: SocketAddr,
        /// Address to advertise in SDP and Contact (default: the listen address;
        /// 127.0.0.1 when listening on 0.0.0.0, so set it for phones on other hosts).
        #[arg(long)]
        public_address: Option<IpAddr>,
        /// RTP port range, FIRST-LAST.
        #[arg(long, default_value = "30000-30999", value_parser = parse_range)]
        rtp_ports: (u16, u16),
        /// Refuse INVITEs to rooms that do not exist (404) instead of creating them.
        #[arg(long)]
        no_create_rooms: bool,
        /// Rooms to create at start (comma-separated).
        #[arg(long, value_delimiter = ',')]
        rooms: Vec<String>,
        /// Seconds without RTP from a leg before it is reported (0: never).
        #[arg(long, default_value_t = 30)]
        media_timeout: u64,
        /// Hang up legs that hit the media timeout, so dead calls leave their rooms.
        #[arg(long)]
        hang_up_silent: bool,
        /// The rate rooms mix at: 8000, 16000 or 48000.
        #[arg(long, default_value_t = sipbridge::DEFAULT_SAMPLE_RATE)]
        sample_rate: u32,
        /// Mixer threads (0: one per core); each room mixes on one of them.
        #[arg(long, default_value_t = 0)]
        mixer_threads: usize,
        /// Print each mixer thread's tick statistics every this many seconds (0: never).
        #[arg(long, default_value_t = 0)]
        stats_every: u64,
        /// A user callers can authenticate as, NAME:PASSWORD (repeatable).
        #[arg(long = "user", value_parser = parse_user)]
        users: Vec<(String, String)>,
        /// Callers must authenticate as one of the users (digest) to join any room.
        #[arg(long)]
        require_auth: bool,
    },
}

fn parse_user(s: &str) -> Result<(String, String), String> {
    let (name, password) = s.split_once(':').ok_or("expected NAME:PASSWORD")?;
    Ok((name.into(), password.into()))
}

fn parse_range(s: &str) -> Result<(u16, u16), String> {
    let (a, b) = s.split_once('-').ok_or("expected FIRST-LAST")?;
    let (a, b) = (a.parse().map_err(|e| format!("{e}"))?, b.parse().map_err(|e| format!("{e}"))?);
    if a > b {
        return Err("FIRST must not exceed LAST".into());
    }
    Ok((a, b))
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "sipbridge=info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let Command::Serve {
        listen,
        public_address,
        rtp_ports,
        no_create_rooms,
        rooms,
        media_timeout,
        hang_up_silent,
        sample_rate,
        mixer_threads,
        stats_every,
        users,
        require_auth,
    } = Cli::parse().command;
    let config = EndpointConfig {
        listen,
        public_address,
        rtp_ports: rtp_ports.0..=rtp_ports.1,
        create_rooms_on_demand: !no_create_rooms,
        media_timeout: (media_timeout > 0).then(|| std::time::Duration::from_secs(media_timeout)),
        hang_up_on_media_timeout: hang_up_silent,
        sample_rate,
        mixer_threads,
        require_authentication: require_auth,
        ..Default::default()
    };
    let stats_every = (stats_every > 0).then(|| Duration::from_secs(stats_every));
    match serve(config, &rooms, &users, stats_every) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("sipbridge: {error}");
            ExitCode::FAILURE
        }
    }
}

fn serve(
    config: EndpointConfig,
    rooms: &[String],
    users: &[(String, String)],
    stats_every: Option<Duration>,
) -> Result<(), Error> {
    let endpoint = Endpoint::start(config)?;
    for (name, password) in users {
        endpoint.add_user(name, password)?;
    }
    for room in rooms {
        endpoint.create_conference(room)?;
    }
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, stop.clone())?;
    }
    println!("sipbridge listening on udp:{}", endpoint.local_addr());
    let mut last_reports = endpoint.mixer_reports();
    let mut last_print = Instant::now();
    while !stop.load(Ordering::SeqCst) {
        if stats_every.is_some_and(|every| last_print.elapsed() >= every) {
            let reports = endpoint.mixer_reports();
            for (thread, (now, then)) in reports.iter().zip(&last_reports).enumerate() {
                print_mixer_stats(thread, &now.since(then));
            }
            (last_reports, last_print) = (reports, Instant::now());
        }
        match endpoint.next_event(Some(Duration::from_millis(100))) {
            Ok(event) => log_event(&event),
            Err(Error::Timeout) => {}
            Err(e) => return Err(e),
        }
    }
    println!("sipbridge: shutting down, hanging up every leg");
    endpoint.stop();
    while let Some(event) = endpoint.try_next_event() {
        log_event(&event);
    }
    Ok(())
}

/// One line a benchmark can parse: a mixer thread's ticks over the last period.
fn print_mixer_stats(thread: usize, report: &MixerReport) {
    let us = |q: f64| report.tick_quantile(q).as_micros();
    println!(
        "mixer thread={thread} ticks={} late={} p50_us={} p99_us={} max_us={}",
        report.ticks,
        report.late_ticks,
        us(0.5),
        us(0.99),
        us(1.0)
    );
}

fn log_event(event: &Event) {
    match event {
        Event::ParticipantJoined { conference, participant, remote, kind } => {
            println!("joined room={conference} participant={} kind={kind:?} remote={remote}", participant.0)
        }
        Event::ParticipantLeft { conference, participant, reason, packets_received, packets_sent } => println!(
            "left room={conference} participant={} reason={reason:?} received={packets_received} sent={packets_sent}",
            participant.0
        ),
        Event::MediaTimeout { conference, participant } => {
            println!("media-timeout room={conference} participant={}", participant.0)
        }
        Event::Dtmf { conference, participant, digit, duration_ms } => {
            println!("dtmf room={conference} participant={} digit={digit} duration_ms={duration_ms}", participant.0)
        }
        Event::Talking { conference, participant, talking } => {
            println!("talking room={conference} participant={} talking={talking}", participant.0)
        }
        Event::Hold { conference, participant, held } => {
            println!("hold room={conference} participant={} held={held}", participant.0)
        }
        other => println!("{other:?}"),
    }
}
