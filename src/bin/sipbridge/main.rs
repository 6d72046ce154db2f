//! `sipbridge serve`: a standalone conference server.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use sipbridge::{Account, Endpoint, EndpointConfig, Error, Event, MixerReport, RegistrationState};

mod config;
use config::{AccountEntry, RoomEntry, ServeConfig, UserEntry};

#[derive(Parser)]
#[command(name = "sipbridge", version, about = "SIP multi-party audio conferencing")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a conference server: INVITE sip:ROOM@host joins conference ROOM.
    /// Settings come from the flags, then the --config file, then the defaults.
    Serve(ServeArgs),
}

#[derive(Args)]
struct ServeArgs {
    /// A TOML file with the settings below and users and rooms (docs/config.md).
    #[arg(long)]
    config: Option<PathBuf>,
    /// SIP listen address, UDP and TCP [default: 0.0.0.0:5060].
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Listen on UDP only, not TCP.
    #[arg(long)]
    no_tcp: bool,
    /// SIP over TLS listen address [default: port 5061 of the listen address,
    /// when a certificate is given].
    #[arg(long)]
    tls_listen: Option<SocketAddr>,
    /// PEM file with the certificate chain TLS presents.
    #[arg(long)]
    tls_certificate: Option<PathBuf>,
    /// PEM file with the certificate's private key.
    #[arg(long)]
    tls_private_key: Option<PathBuf>,
    /// PEM file of CA certificates to trust when calling sips: URIs, besides the public roots.
    #[arg(long)]
    tls_ca_file: Option<PathBuf>,
    /// DNS servers (IP:PORT, comma-separated) for dialled host names [default: the system's].
    #[arg(long, value_delimiter = ',')]
    dns_servers: Vec<SocketAddr>,
    /// Address to advertise in SDP and Contact (default: the listen address;
    /// 127.0.0.1 when listening on 0.0.0.0, so set it for phones on other hosts).
    #[arg(long)]
    public_address: Option<IpAddr>,
    /// A STUN server (HOST:PORT) to ask for the public address at start, when none is given.
    #[arg(long)]
    stun_server: Option<String>,
    /// RTP port range, FIRST-LAST [default: 30000-30999].
    #[arg(long, value_parser = parse_range)]
    rtp_ports: Option<(u16, u16)>,
    /// Refuse INVITEs to rooms that do not exist (404) instead of creating them.
    #[arg(long)]
    no_create_rooms: bool,
    /// Rooms to create at start (comma-separated).
    #[arg(long, value_delimiter = ',')]
    rooms: Vec<String>,
    /// Seconds without RTP from a leg before it is reported (0: never) [default: 30].
    #[arg(long)]
    media_timeout: Option<u64>,
    /// Hang up legs that hit the media timeout, so dead calls leave their rooms.
    #[arg(long)]
    hang_up_silent: bool,
    /// The rate rooms mix at: 8000, 16000 or 48000 [default: 48000].
    #[arg(long)]
    sample_rate: Option<u32>,
    /// Mixer threads (0: one per core); each room mixes on one of them [default: 0].
    #[arg(long)]
    mixer_threads: Option<usize>,
    /// Print each mixer thread's tick statistics every this many seconds (0: never).
    #[arg(long, default_value_t = 0)]
    stats_every: u64,
    /// A user callers can authenticate as, NAME:PASSWORD (repeatable).
    #[arg(long = "user", value_parser = parse_user)]
    users: Vec<(String, String)>,
    /// Callers must authenticate as one of the users (digest) to join any room.
    #[arg(long)]
    require_auth: bool,
    /// The realm of digest challenges, and the domain of registered users [default: sipbridge].
    #[arg(long)]
    realm: Option<String>,
    /// Offer SHA-256 digest challenges (RFC 8760) beside MD5.
    #[arg(long)]
    digest_sha256: bool,
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
    let Command::Serve(args) = Cli::parse().command;
    let result = match args.config.as_deref().map(ServeConfig::read).transpose() {
        Ok(file) => settings(args, file.unwrap_or_default()),
        Err(error) => Err(error),
    };
    let settings = match result {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("sipbridge: {error}");
            return ExitCode::from(2);
        }
    };
    match serve(settings) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("sipbridge: {error}");
            ExitCode::FAILURE
        }
    }
}

/// What serve runs with: the endpoint's settings, and what to set up on it.
struct Settings {
    endpoint: EndpointConfig,
    users: Vec<UserEntry>,
    rooms: Vec<RoomEntry>,
    accounts: Vec<AccountEntry>,
    stats_every: Option<Duration>,
}

/// Merges the flags over the file over the defaults.
fn settings(args: ServeArgs, file: ServeConfig) -> Result<Settings, String> {
    let defaults = EndpointConfig::default();
    let rtp_ports = match (args.rtp_ports, file.media.rtp_ports.as_deref()) {
        (Some(range), _) => range,
        (None, Some(text)) => parse_range(text).map_err(|e| format!("rtp_ports {text:?}: {e}"))?,
        (None, None) => (*defaults.rtp_ports.start(), *defaults.rtp_ports.end()),
    };
    let media_timeout = args.media_timeout.or(file.media.media_timeout).unwrap_or(30);
    let listen = args.listen.or(file.sip.listen).unwrap_or(defaults.listen);
    let tls_certificate = args.tls_certificate.or(file.sip.tls_certificate);
    // With a certificate, TLS listens on 5061 unless told where.
    let tls_listen = args
        .tls_listen
        .or(file.sip.tls_listen)
        .or_else(|| tls_certificate.as_ref().map(|_| SocketAddr::new(listen.ip(), 5061)));
    let room_policy = match &file.room_policy {
        Some(entry) => entry.policy().map_err(|e| format!("[room_policy]: {e}"))?,
        None => defaults.room_policy.clone(),
    };
    let endpoint = EndpointConfig {
        listen,
        tcp: !args.no_tcp && file.sip.tcp.unwrap_or(true),
        tls_listen,
        tls_certificate,
        tls_private_key: args.tls_private_key.or(file.sip.tls_private_key),
        tls_ca_file: args.tls_ca_file.or(file.sip.tls_ca_file),
        dns_servers: if args.dns_servers.is_empty() {
            file.sip.dns_servers.unwrap_or_default()
        } else {
            args.dns_servers
        },
        public_address: args.public_address.or(file.sip.public_address),
        stun_server: args.stun_server.or(file.sip.stun_server),
        rtp_ports: rtp_ports.0..=rtp_ports.1,
        create_rooms_on_demand: !args.no_create_rooms && file.sip.create_rooms_on_demand.unwrap_or(true),
        media_timeout: (media_timeout > 0).then(|| Duration::from_secs(media_timeout)),
        hang_up_on_media_timeout: args.hang_up_silent || file.media.hang_up_silent.unwrap_or(false),
        sample_rate: args.sample_rate.or(file.media.sample_rate).unwrap_or(defaults.sample_rate),
        mixer_threads: args.mixer_threads.or(file.media.mixer_threads).unwrap_or(defaults.mixer_threads),
        require_authentication: args.require_auth || file.sip.require_authentication.unwrap_or(false),
        realm: args.realm.or(file.sip.realm).unwrap_or(defaults.realm.clone()),
        digest_sha256: args.digest_sha256 || file.sip.digest_sha256.unwrap_or(false),
        room_policy,
        ..defaults
    };
    let mut users = file.users;
    users.extend(args.users.into_iter().map(|(name, password)| UserEntry {
        name,
        password: Some(password),
        ha1_md5: None,
        ha1_sha256: None,
    }));
    let mut rooms = file.rooms;
    rooms.extend(args.rooms.into_iter().map(|name| RoomEntry { name, ..Default::default() }));
    let stats_every = (args.stats_every > 0).then(|| Duration::from_secs(args.stats_every));
    Ok(Settings { endpoint, users, rooms, accounts: file.accounts, stats_every })
}

fn serve(settings: Settings) -> Result<(), Error> {
    let Settings { endpoint: config, users, rooms, accounts, stats_every } = settings;
    let tcp = config.tcp;
    let endpoint = Endpoint::start(config)?;
    for user in &users {
        match (&user.password, &user.ha1_md5, &user.ha1_sha256) {
            (Some(password), _, _) => endpoint.add_user(&user.name, password)?,
            (None, Some(md5), Some(sha256)) => endpoint.add_user_hashes(&user.name, md5, sha256)?,
            // ServeConfig::read checked that each user has one or the other.
            _ => return Err(Error::InvalidArgument(format!("user {:?} has no password", user.name))),
        }
    }
    for room in &rooms {
        let conference = match room.sample_rate {
            Some(rate) => endpoint.create_conference_with_rate(&room.name, rate)?,
            None => endpoint.create_conference(&room.name)?,
        };
        if let Some(on) = room.require_authentication {
            conference.set_require_authentication(on)?;
        }
        if let Some(on) = room.noise_suppression {
            conference.set_noise_suppression(on)?;
        }
        conference.set_policy(room.policy()?)?;
    }
    for entry in accounts {
        let AccountEntry { aor, registrar, username, password, ha1, expires, room } = entry;
        let expires = expires.unwrap_or(Account::default().expires);
        let id = endpoint.register_account(Account {
            aor: aor.clone(),
            registrar,
            username,
            password,
            ha1,
            expires,
            room,
        })?;
        println!("registering account={} aor={aor}", id.0);
    }
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, stop.clone())?;
    }
    let mut listening = format!("udp:{}", endpoint.local_addr());
    if tcp {
        listening += &format!(" tcp:{}", endpoint.local_addr());
    }
    if let Some(tls) = endpoint.tls_addr() {
        listening += &format!(" tls:{tls}");
    }
    println!("sipbridge listening on {listening} public:{}", endpoint.public_address());
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
        Event::Registration { account, aor, state } => match state {
            RegistrationState::Registered { expires } => {
                println!("registered account={} aor={aor} expires={expires}", account.0)
            }
            RegistrationState::Failed { status, reason } => {
                println!("registration-failed account={} aor={aor} status={status} reason={reason}", account.0)
            }
            RegistrationState::Unregistered => println!("unregistered account={} aor={aor}", account.0),
        },
        other => println!("{other:?}"),
    }
}
