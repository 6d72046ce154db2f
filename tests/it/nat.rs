//! STUN behind a NAT. The test builds its own two network namespaces joined
//! by a veth pair: "outside" runs coturn's STUN server (Debian package
//! coturn), "inside" runs `sipbridge serve`, and nftables there rewrites
//! the source of what leaves (source NAT) to a second address. serve must
//! learn that address from STUN and advertise it, not the one it listens on.
//!
//! `.ci/run` installs coturn and nftables; the test needs root (network
//! namespaces). Without them it fails, unless SIPBRIDGE_SKIP_NAT=1 says to
//! skip it. No traffic leaves the two namespaces.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A /24 of the test's own, inside its namespaces only.
const NET: &str = "10.213.77";

fn run(args: &[&str]) {
    let status = Command::new(args[0]).args(&args[1..]).status().unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(status.success(), "{args:?} failed: {status}");
}

fn tools_available() -> bool {
    let found = |program: &str| Command::new(program).arg("--version").output().is_ok();
    if found("turnserver") && (found("nft") || found("/usr/sbin/nft")) && found("ip") {
        return true;
    }
    if std::env::var("SIPBRIDGE_SKIP_NAT").as_deref() == Ok("1") {
        eprintln!("coturn or nftables is missing; skipping as SIPBRIDGE_SKIP_NAT=1 asks");
        return false;
    }
    panic!("coturn or nftables is missing (apt-get install coturn nftables); set SIPBRIDGE_SKIP_NAT=1 to skip");
}

/// The two namespaces and the programs in them; all gone when dropped.
struct NatLab {
    outside: String,
    inside: String,
    children: Vec<Child>,
}

impl NatLab {
    fn new() -> Self {
        let id = std::process::id() % 100_000;
        let (outside, inside) = (format!("sbout{id}"), format!("sbin{id}"));
        let lab = Self { outside: outside.clone(), inside: inside.clone(), children: Vec::new() };
        let (veth_out, veth_in) = (format!("sbvo{id}"), format!("sbvi{id}"));
        run(&["ip", "netns", "add", &outside]);
        run(&["ip", "netns", "add", &inside]);
        run(&[
            "ip", "link", "add", &veth_out, "netns", &outside, "type", "veth", "peer", "name", &veth_in, "netns",
            &inside,
        ]);
        let in_ns = |ns: &str, args: &[&str]| {
            let mut all = vec!["ip", "netns", "exec", ns];
            all.extend(args);
            run(&all);
        };
        in_ns(&outside, &["ip", "addr", "add", &format!("{NET}.1/24"), "dev", &veth_out]);
        in_ns(&outside, &["ip", "link", "set", &veth_out, "up"]);
        in_ns(&outside, &["ip", "link", "set", "lo", "up"]);
        in_ns(&inside, &["ip", "addr", "add", &format!("{NET}.2/24"), "dev", &veth_in]);
        in_ns(&inside, &["ip", "addr", "add", &format!("{NET}.3/24"), "dev", &veth_in]);
        in_ns(&inside, &["ip", "link", "set", &veth_in, "up"]);
        in_ns(&inside, &["ip", "link", "set", "lo", "up"]);
        // The NAT: what .2 sends out leaves as .3; conntrack maps the answers back.
        let rules = format!(
            "table ip sbnat {{\n  chain postrouting {{\n    type nat hook postrouting priority 100;\n    \
             oifname \"{veth_in}\" ip saddr {NET}.2 snat to {NET}.3\n  }}\n}}\n"
        );
        let file = std::env::temp_dir().join(format!("sipbridge-nat-{id}.nft"));
        std::fs::write(&file, rules).unwrap();
        in_ns(&inside, &["nft", "-f", &file.display().to_string()]);
        let _ = std::fs::remove_file(file);
        lab
    }

    /// Starts `program` in namespace `ns`, its stdout piped.
    fn spawn(&mut self, ns: &str, program: &str, args: &[&str]) -> &mut Child {
        let child = Command::new("ip")
            .args(["netns", "exec", ns, program])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{program}: {e}"));
        self.children.push(child);
        self.children.last_mut().unwrap()
    }
}

impl Drop for NatLab {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        // Deleting a namespace deletes its end of the veth pair, and with it the other.
        for ns in [&self.outside, &self.inside] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

#[test]
fn serve_behind_a_nat_advertises_the_address_stun_finds() {
    if !tools_available() {
        return;
    }
    let mut lab = NatLab::new();
    let (outside, inside) = (lab.outside.clone(), lab.inside.clone());
    let pidfile = std::env::temp_dir().join(format!("sipbridge-turnserver-{}.pid", std::process::id()));
    let stun = format!("{NET}.1");
    let pidfile_arg = pidfile.display().to_string();
    lab.spawn(
        &outside,
        "turnserver",
        &[
            "-n",
            "--stun-only",
            "-L",
            &stun,
            "-p",
            "3478",
            "--no-cli",
            "--no-tls",
            "--no-dtls",
            "--pidfile",
            &pidfile_arg,
        ],
    );
    // coturn takes a moment to listen; serve retries its request for 3.5 s anyway.
    std::thread::sleep(Duration::from_millis(300));
    let serve = lab.spawn(
        &inside,
        env!("CARGO_BIN_EXE_sipbridge"),
        &[
            "serve",
            "--listen",
            &format!("{NET}.2:5060"),
            "--stun-server",
            &format!("{stun}:3478"),
            "--rtp-ports",
            "48000-48019",
        ],
    );
    let stdout = serve.stdout.take().unwrap();
    let (tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    let listening = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) if line.contains("listening on") => break line,
            Ok(_) => {}
            Err(_) => panic!("sipbridge serve did not start (no STUN answer?)"),
        }
    };
    assert!(listening.contains(&format!("udp:{NET}.2:5060")), "{listening}");
    assert!(listening.ends_with(&format!("public:{NET}.3")), "the NAT's address, from STUN: {listening}");
    let _ = std::fs::remove_file(pidfile);
}
