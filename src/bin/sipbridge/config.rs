//! The TOML file of `sipbridge serve --config FILE` (docs/config.md;
//! examples/sipbridge.toml is a commented example). Every setting is
//! optional; a command-line flag overrides the file, the file the defaults.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use std::time::Duration;

use serde::Deserialize;
use sipbridge::{CodecKind, ConferencePolicy, Playback};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeConfig {
    #[serde(default)]
    pub sip: SipSection,
    #[serde(default)]
    pub media: MediaSection,
    #[serde(default)]
    pub users: Vec<UserEntry>,
    #[serde(default)]
    pub rooms: Vec<RoomEntry>,
    /// The policy of the rooms callers create: a room's policy keys only.
    pub room_policy: Option<RoomEntry>,
    #[serde(default)]
    pub accounts: Vec<AccountEntry>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SipSection {
    pub listen: Option<SocketAddr>,
    pub tcp: Option<bool>,
    pub tls_listen: Option<SocketAddr>,
    pub tls_certificate: Option<PathBuf>,
    pub tls_private_key: Option<PathBuf>,
    pub tls_ca_file: Option<PathBuf>,
    pub dns_servers: Option<Vec<SocketAddr>>,
    pub public_address: Option<IpAddr>,
    pub stun_server: Option<String>,
    pub realm: Option<String>,
    pub digest_sha256: Option<bool>,
    pub create_rooms_on_demand: Option<bool>,
    pub require_authentication: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MediaSection {
    /// "FIRST-LAST".
    pub rtp_ports: Option<String>,
    pub sample_rate: Option<u32>,
    pub mixer_threads: Option<usize>,
    /// Seconds; 0 turns the check off.
    pub media_timeout: Option<u64>,
    pub hang_up_silent: Option<bool>,
}

/// A user callers and phones authenticate as: a password, or the two HA1
/// hashes of `name:realm:password` so that the file holds no password.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserEntry {
    pub name: String,
    pub password: Option<String>,
    pub ha1_md5: Option<String>,
    pub ha1_sha256: Option<String>,
}

/// A room created at start, with its policy.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoomEntry {
    /// Required in `[[rooms]]`; `[room_policy]` has none.
    #[serde(default)]
    pub name: String,
    pub sample_rate: Option<u32>,
    pub require_authentication: Option<bool>,
    pub noise_suppression: Option<bool>,
    /// The conference policy (sipbridge::ConferencePolicy); prompts are WAV
    /// files, the PIN timeout is in seconds.
    pub max_participants: Option<usize>,
    pub pin: Option<String>,
    pub moderator_pin: Option<String>,
    pub locked: Option<bool>,
    pub wait_for_moderator: Option<bool>,
    pub end_when_moderator_leaves: Option<bool>,
    pub mute_on_join: Option<bool>,
    pub pin_prompt: Option<PathBuf>,
    pub hold_music: Option<PathBuf>,
    pub full_prompt: Option<PathBuf>,
    pub pin_timeout: Option<u64>,
    /// Codec names in order of preference ("opus", "G722", "PCMU", "PCMA").
    pub codecs: Option<Vec<String>>,
}

impl RoomEntry {
    /// The room's conference policy: the defaults, changed by what the entry sets.
    pub fn policy(&self) -> Result<ConferencePolicy, sipbridge::Error> {
        let wav = |path: &Option<PathBuf>| path.as_ref().map(Playback::wav_file).transpose();
        let default = ConferencePolicy::default();
        Ok(ConferencePolicy {
            max_participants: self.max_participants,
            pin: self.pin.clone(),
            moderator_pin: self.moderator_pin.clone(),
            locked: self.locked.unwrap_or(default.locked),
            wait_for_moderator: self.wait_for_moderator.unwrap_or(default.wait_for_moderator),
            end_when_moderator_leaves: self.end_when_moderator_leaves.unwrap_or(default.end_when_moderator_leaves),
            mute_on_join: self.mute_on_join.unwrap_or(default.mute_on_join),
            pin_prompt: wav(&self.pin_prompt)?,
            hold_music: wav(&self.hold_music)?,
            full_prompt: wav(&self.full_prompt)?,
            pin_timeout: self.pin_timeout.map_or(default.pin_timeout, Duration::from_secs),
            codecs: self
                .codecs
                .as_ref()
                .map(|names| {
                    names
                        .iter()
                        .map(|n| {
                            CodecKind::from_encoding_name(n)
                                .ok_or_else(|| sipbridge::Error::InvalidArgument(format!("unknown codec {n:?}")))
                        })
                        .collect()
                })
                .transpose()?,
        })
    }
}

/// An account to keep registered with an upstream registrar or PBX; calls
/// it routes to the account join `room`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccountEntry {
    pub aor: String,
    pub registrar: Option<String>,
    pub username: Option<String>,
    pub password: Option<String>,
    pub ha1: Option<String>,
    pub expires: Option<u32>,
    pub room: String,
}

impl ServeConfig {
    pub fn read(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let config: ServeConfig = toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        for user in &config.users {
            let hashes = (&user.ha1_md5, &user.ha1_sha256);
            match (&user.password, hashes) {
                (Some(_), (None, None)) | (None, (Some(_), Some(_))) => {}
                _ => {
                    return Err(format!(
                        "{}: user {:?} needs a password, or both ha1_md5 and ha1_sha256",
                        path.display(),
                        user.name
                    ))
                }
            }
        }
        if config.rooms.iter().any(|room| room.name.is_empty()) {
            return Err(format!("{}: every [[rooms]] entry needs a name", path.display()));
        }
        if let Some(p) = &config.room_policy {
            if !p.name.is_empty()
                || p.sample_rate.is_some()
                || p.require_authentication.is_some()
                || p.noise_suppression.is_some()
            {
                return Err(format!(
                    "{}: [room_policy] takes a room's policy keys only (the rate and authentication of rooms callers create are [media] sample_rate and [sip] require_authentication)",
                    path.display()
                ));
            }
        }
        for account in &config.accounts {
            if account.password.is_some() == account.ha1.is_some() {
                return Err(format!(
                    "{}: account {:?} needs a password or an ha1, not both",
                    path.display(),
                    account.aor
                ));
            }
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_file_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/sipbridge.toml");
        let config = ServeConfig::read(&path).unwrap();
        assert!(!config.users.is_empty() && !config.rooms.is_empty());
        let room_policy = config.room_policy.as_ref().unwrap().policy().unwrap();
        assert!(room_policy.mute_on_join && room_policy.max_participants == Some(50));
        assert_eq!(config.media.rtp_ports.as_deref(), Some("30000-30999"));
    }

    #[test]
    fn mistakes_are_reported_with_the_file_name() {
        let dir = std::env::temp_dir().join(format!("sipbridge-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for (text, expected) in [
            ("[sip]\nlisen = \"0.0.0.0:5060\"\n", "unknown field"),
            ("[[users]]\nname = \"a\"\n", "needs a password"),
            ("[[users]]\nname = \"a\"\npassword = \"p\"\nha1_md5 = \"x\"\n", "needs a password"),
            ("[media]\nsample_rate = \"fast\"\n", "invalid type"),
            ("[[accounts]]\naor = \"sip:a@b\"\nroom = \"r\"\n", "needs a password or an ha1"),
            ("[[accounts]]\naor = \"sip:a@b\"\npassword = \"p\"\n", "missing field `room`"),
            ("[[rooms]]\npin = \"1\"\n", "needs a name"),
            ("[room_policy]\nname = \"x\"\n", "policy keys only"),
            ("[room_policy]\nsample_rate = 8000\n", "policy keys only"),
        ] {
            let path = dir.join("bad.toml");
            std::fs::write(&path, text).unwrap();
            let error = ServeConfig::read(&path).unwrap_err();
            assert!(error.contains("bad.toml") && error.contains(expected), "{error}");
        }
        assert!(ServeConfig::read(&dir.join("missing.toml")).unwrap_err().contains("missing.toml"));
    }

    #[test]
    fn accounts_are_read() {
        let dir = std::env::temp_dir().join(format!("sipbridge-accounts-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("accounts.toml");
        let text = "[[accounts]]\naor = \"sip:conf@pbx.example.com\"\nregistrar = \"sip:10.0.0.1:5070\"\n\
                    password = \"p\"\nexpires = 600\nroom = \"lobby\"\n\n\
                    [[accounts]]\naor = \"sip:other@pbx.example.com\"\nha1 = \"0123456789abcdef0123456789abcdef\"\nroom = \"r\"\n";
        std::fs::write(&path, text).unwrap();
        let config = ServeConfig::read(&path).unwrap();
        assert_eq!(config.accounts.len(), 2);
        let first = &config.accounts[0];
        assert_eq!(
            (first.registrar.as_deref(), first.expires, first.room.as_str()),
            (Some("sip:10.0.0.1:5070"), Some(600), "lobby")
        );
        assert!(config.accounts[1].ha1.is_some() && config.accounts[1].registrar.is_none());
    }

    #[test]
    fn room_policies_are_read() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/sipbridge.toml");
        let config = ServeConfig::read(&path).unwrap();
        let room = config.rooms.iter().find(|r| r.name == "standup").expect("the example's PIN room");
        let policy = room.policy().unwrap();
        assert_eq!((policy.pin.as_deref(), policy.moderator_pin.as_deref()), (Some("4321"), Some("9999")));
        assert_eq!(policy.max_participants, Some(20));
        assert!(policy.wait_for_moderator && policy.mute_on_join && !policy.locked);
        assert_eq!(policy.pin_timeout, Duration::from_secs(30));
        policy.validate().unwrap();
        let lobby = config.rooms.iter().find(|r| r.name == "lobby").unwrap().policy().unwrap();
        assert!(!lobby.asks_pin() && lobby.max_participants.is_none());
        let missing = RoomEntry { hold_music: Some("/nonexistent.wav".into()), ..Default::default() };
        assert!(missing.policy().is_err());
    }
}
