//! Digest authentication, the client's side (RFC 2617, and RFC 7616 with
//! RFC 8760's SHA-256 for SIP): reading a 401/407 challenge and answering
//! it. The parameters are read here rather than with rsip's typed auth
//! headers, which name SHA-256 "SHA256" and reject the qop lists
//! ("auth,auth-int") that servers send; the hashes are md-5's and sha2's.

use md5::Md5;
use sha2::{Digest, Sha256};

/// The hash a challenge asks for. The "-sess" variants and SHA-512-256 are
/// not offered by SIP servers in practice and are not answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DigestAlgorithm {
    Md5,
    Sha256,
}

impl DigestAlgorithm {
    fn name(self) -> &'static str {
        match self {
            DigestAlgorithm::Md5 => "MD5",
            DigestAlgorithm::Sha256 => "SHA-256",
        }
    }

    pub(crate) fn hash(self, data: &str) -> String {
        match self {
            DigestAlgorithm::Md5 => hex(&Md5::digest(data.as_bytes())),
            DigestAlgorithm::Sha256 => hex(&Sha256::digest(data.as_bytes())),
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A user name and password to answer challenges with.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    // Passwords stay out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials").field("username", &self.username).finish_non_exhaustive()
    }
}

/// One `Digest` challenge of a WWW-Authenticate or Proxy-Authenticate header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    pub realm: String,
    pub nonce: String,
    pub opaque: Option<String>,
    pub algorithm: DigestAlgorithm,
    /// The server offered qop=auth (else the RFC 2069 form is used).
    pub qop_auth: bool,
    /// The nonce expired, but the credentials were right (RFC 7616 §3.3).
    pub stale: bool,
}

impl Challenge {
    /// Reads a header value such as `Digest realm="x", nonce="y", qop="auth"`;
    /// None when it is not a digest challenge this module can answer.
    pub fn parse(value: &str) -> Option<Challenge> {
        let (scheme, params) = value.trim().split_once(char::is_whitespace)?;
        if !scheme.eq_ignore_ascii_case("digest") {
            return None;
        }
        let params = auth_params(params);
        let param = |name: &str| params.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.clone());
        let algorithm = match param("algorithm") {
            None => DigestAlgorithm::Md5,
            Some(a) if a.eq_ignore_ascii_case("md5") => DigestAlgorithm::Md5,
            Some(a) if a.eq_ignore_ascii_case("sha-256") => DigestAlgorithm::Sha256,
            Some(_) => return None,
        };
        let qop = param("qop");
        let qop_auth = qop.as_deref().is_some_and(|q| q.split(',').any(|o| o.trim().eq_ignore_ascii_case("auth")));
        if qop.is_some() && !qop_auth {
            // Only auth-int offered: that would sign the body; not supported.
            return None;
        }
        Some(Challenge {
            realm: param("realm")?,
            nonce: param("nonce")?,
            opaque: param("opaque"),
            algorithm,
            qop_auth,
            stale: param("stale").is_some_and(|s| s.eq_ignore_ascii_case("true")),
        })
    }

    /// The best of several challenges (one per header): SHA-256 over MD5.
    pub fn choose<'a>(values: impl IntoIterator<Item = &'a str>) -> Option<Challenge> {
        Challenge::choose_among(values, |_| true)
    }

    /// As [`Challenge::choose`], among the challenges whose algorithm
    /// `usable` accepts (a stored HA1 hash answers only its own).
    pub fn choose_among<'a>(
        values: impl IntoIterator<Item = &'a str>,
        usable: impl Fn(DigestAlgorithm) -> bool,
    ) -> Option<Challenge> {
        values
            .into_iter()
            .filter_map(Challenge::parse)
            .filter(|c| usable(c.algorithm))
            .max_by_key(|c| c.algorithm == DigestAlgorithm::Sha256)
    }

    /// The Authorization (or Proxy-Authorization) header value answering
    /// this challenge for a `method` request to `uri`; `cnonce` and the
    /// nonce count `nc` matter only with qop=auth.
    pub fn answer(&self, credentials: &Credentials, method: &str, uri: &str, cnonce: &str, nc: u32) -> String {
        let ha1 = self.algorithm.hash(&format!("{}:{}:{}", credentials.username, self.realm, credentials.password));
        self.answer_with_ha1(&credentials.username, &ha1, method, uri, cnonce, nc)
    }

    /// As [`Challenge::answer`], from the HA1 hash (hex, of
    /// `username:realm:password` in the challenge's algorithm) instead of
    /// the password, for accounts configured without one.
    pub fn answer_with_ha1(&self, username: &str, ha1: &str, method: &str, uri: &str, cnonce: &str, nc: u32) -> String {
        let response = self.response(ha1, method, uri, cnonce, nc);
        let mut value = format!(
            "Digest username=\"{}\", realm=\"{}\", nonce=\"{}\", uri=\"{uri}\", response=\"{response}\", algorithm={}",
            quote(username),
            quote(&self.realm),
            quote(&self.nonce),
            self.algorithm.name()
        );
        if let Some(opaque) = &self.opaque {
            value.push_str(&format!(", opaque=\"{}\"", quote(opaque)));
        }
        if self.qop_auth {
            value.push_str(&format!(", qop=auth, nc={nc:08x}, cnonce=\"{}\"", quote(cnonce)));
        }
        value
    }

    fn response(&self, ha1: &str, method: &str, uri: &str, cnonce: &str, nc: u32) -> String {
        let h = |data: &str| self.algorithm.hash(data);
        let ha2 = h(&format!("{method}:{uri}"));
        if self.qop_auth {
            h(&format!("{ha1}:{}:{nc:08x}:{cnonce}:auth:{ha2}", self.nonce))
        } else {
            h(&format!("{ha1}:{}:{ha2}", self.nonce))
        }
    }
}

/// Escapes a value for a quoted-string.
fn quote(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"")
}

/// Splits `a=1, b="x, y", c=token` into name and (unquoted) value pairs.
pub(crate) fn auth_params(params: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut chars = params.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace() || *c == ',').is_some() {}
        let name: String = std::iter::from_fn(|| chars.next_if(|c| *c != '=' && *c != ',')).collect();
        if name.trim().is_empty() {
            return out;
        }
        let mut value = String::new();
        if chars.next_if_eq(&'=').is_some() {
            while chars.next_if(|c| c.is_whitespace()).is_some() {}
            if chars.next_if_eq(&'"').is_some() {
                while let Some(c) = chars.next() {
                    match c {
                        '"' => break,
                        '\\' => value.extend(chars.next()),
                        c => value.push(c),
                    }
                }
            } else {
                value = std::iter::from_fn(|| chars.next_if(|c| *c != ',')).collect::<String>().trim().to_string();
            }
        }
        out.push((name.trim().to_string(), value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mufasa(password: &str) -> Credentials {
        Credentials { username: "Mufasa".into(), password: password.into() }
    }

    #[test]
    fn answers_the_rfc_2617_example() {
        let challenge = Challenge::parse(
            "Digest realm=\"testrealm@host.com\", qop=\"auth,auth-int\", \
             nonce=\"dcd98b7102dd2f0e8b11d0f600bfb0c093\", opaque=\"5ccc069c403ebaf9f0171e9517f40e41\"",
        )
        .unwrap();
        assert_eq!(challenge.algorithm, DigestAlgorithm::Md5);
        assert!(challenge.qop_auth);
        let answer = challenge.answer(&mufasa("Circle Of Life"), "GET", "/dir/index.html", "0a4f113b", 1);
        assert!(answer.contains("response=\"6629fae49393a05397450978507c4ef1\""), "{answer}");
        assert!(answer.contains("nc=00000001, cnonce=\"0a4f113b\""), "{answer}");
        assert!(answer.contains("opaque=\"5ccc069c403ebaf9f0171e9517f40e41\""), "{answer}");
    }

    #[test]
    fn answers_the_rfc_7616_examples_and_prefers_sha_256() {
        let nonce = "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v";
        let md5 = format!("Digest realm=\"http-auth@example.org\", qop=\"auth, auth-int\", algorithm=MD5, nonce=\"{nonce}\", opaque=\"FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS\"");
        let sha = md5.replace("algorithm=MD5", "algorithm=SHA-256");
        let chosen = Challenge::choose([md5.as_str(), sha.as_str()]).unwrap();
        assert_eq!(chosen.algorithm, DigestAlgorithm::Sha256);
        let cnonce = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ";
        let answer = chosen.answer(&mufasa("Circle of Life"), "GET", "/dir/index.html", cnonce, 1);
        assert!(answer.contains("753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"), "{answer}");
        assert!(answer.contains("algorithm=SHA-256"));
        let md5 = Challenge::parse(&md5).unwrap();
        let answer = md5.answer(&mufasa("Circle of Life"), "GET", "/dir/index.html", cnonce, 1);
        assert!(answer.contains("8ca523f5e9506fed4657c9700eebdbec"), "{answer}");
    }

    #[test]
    fn without_qop_the_rfc_2069_form_is_used() {
        let challenge = Challenge::parse("Digest realm=\"r\", nonce=\"n\"").unwrap();
        let answer = challenge.answer(&mufasa("p"), "INVITE", "sip:a@b", "c", 1);
        let ha1 = DigestAlgorithm::Md5.hash("Mufasa:r:p");
        let ha2 = DigestAlgorithm::Md5.hash("INVITE:sip:a@b");
        let expected = DigestAlgorithm::Md5.hash(&format!("{ha1}:n:{ha2}"));
        assert!(answer.contains(&format!("response=\"{expected}\"")), "{answer}");
        assert!(!answer.contains("qop"), "{answer}");
    }

    #[test]
    fn unusable_challenges_are_refused() {
        for value in [
            "Basic realm=\"r\"",
            "Digest nonce=\"n\"",
            "Digest realm=\"r\"",
            "Digest realm=\"r\", nonce=\"n\", algorithm=MD5-sess",
            "Digest realm=\"r\", nonce=\"n\", qop=\"auth-int\"",
            "Digest",
            "",
        ] {
            assert_eq!(Challenge::parse(value), None, "{value}");
        }
        let stale = Challenge::parse("Digest realm=\"a, \\\"b\\\"\", nonce=n2, stale=TRUE").unwrap();
        assert!(stale.stale);
        assert_eq!(stale.realm, "a, \"b\"");
        assert_eq!(stale.nonce, "n2");
    }
}
