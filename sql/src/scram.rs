//! SCRAM-SHA-256 (RFC 5802, RFC 7677) as PostgreSQL speaks it: the stored
//! verifier made from a password, and the server's side of the exchange.
//!
//! A verifier is PostgreSQL's text form,
//! `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>` (base64):
//! enough to check a client's proof and to prove the server knew it, not
//! enough to log in or to recover the password. The exchange keeps only
//! the verifier and the messages; the password itself never reaches the
//! server in any form.
//!
//! It owns the arithmetic and the message syntax; it never stores
//! anything and never talks to the network (`crate::auth` carries the
//! messages).

use std::num::NonZeroU32;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use ring::rand::SecureRandom;
use ring::{digest, hmac, pbkdf2};

/// PostgreSQL's default `scram_iterations`.
pub const ITERATIONS: u32 = 4096;

const PREFIX: &str = "SCRAM-SHA-256$";

/// A parsed verifier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verifier {
    pub iterations: u32,
    pub salt: Vec<u8>,
    stored_key: Vec<u8>,
    server_key: Vec<u8>,
}

fn hmac_sha256(key: &[u8], msg: &[u8]) -> Vec<u8> {
    hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), msg)
        .as_ref()
        .to_vec()
}

fn sha256(b: &[u8]) -> Vec<u8> {
    digest::digest(&digest::SHA256, b).as_ref().to_vec()
}

/// Equal, in time that does not depend on where they differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn random_bytes(n: usize) -> Vec<u8> {
    let mut b = vec![0u8; n];
    // The system's random source; failing it is no reason to weaken a
    // salt or nonce, so the exchange fails instead (see callers).
    if ring::rand::SystemRandom::new().fill(&mut b).is_err() {
        b.clear();
    }
    b
}

impl Verifier {
    /// The verifier of `password` with a fresh random salt.
    pub fn new(password: &str) -> Option<Verifier> {
        let salt = random_bytes(16);
        (salt.len() == 16).then(|| Verifier::with_salt(password, salt, ITERATIONS))
    }

    /// The verifier of `password` with this salt and iteration count.
    pub fn with_salt(password: &str, salt: Vec<u8>, iterations: u32) -> Verifier {
        // PostgreSQL: a password SASLprep cannot normalize is used as is.
        let normalized = stringprep::saslprep(password)
            .map(|c| c.into_owned())
            .unwrap_or_else(|_| password.to_string());
        let mut salted = [0u8; 32];
        pbkdf2::derive(
            pbkdf2::PBKDF2_HMAC_SHA256,
            NonZeroU32::new(iterations.max(1)).expect("at least 1"),
            &salt,
            normalized.as_bytes(),
            &mut salted,
        );
        let client_key = hmac_sha256(&salted, b"Client Key");
        Verifier {
            iterations,
            salt,
            stored_key: sha256(&client_key),
            server_key: hmac_sha256(&salted, b"Server Key"),
        }
    }

    /// Read PostgreSQL's text form (None if it is not one).
    pub fn parse(text: &str) -> Option<Verifier> {
        let rest = text.strip_prefix(PREFIX)?;
        let (params, keys) = rest.split_once('$')?;
        let (iterations, salt) = params.split_once(':')?;
        let (stored, server) = keys.split_once(':')?;
        let v = Verifier {
            iterations: iterations.parse().ok().filter(|i| *i > 0)?,
            salt: B64.decode(salt).ok()?,
            stored_key: B64.decode(stored).ok()?,
            server_key: B64.decode(server).ok()?,
        };
        (v.stored_key.len() == 32 && v.server_key.len() == 32).then_some(v)
    }

    /// A verifier that no proof matches, for a role that does not exist or
    /// has no password: the exchange looks the same to the client as with
    /// a real one (it learns nothing of which roles exist), then fails.
    pub fn mock(user: &str) -> Verifier {
        let salt = sha256(format!("slicedb mock salt {user}").as_bytes())[..16].to_vec();
        Verifier {
            iterations: ITERATIONS,
            salt,
            stored_key: random_bytes(32),
            server_key: random_bytes(32),
        }
    }
}

impl std::fmt::Display for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{PREFIX}{}:{}${}:{}",
            self.iterations,
            B64.encode(&self.salt),
            B64.encode(&self.stored_key),
            B64.encode(&self.server_key)
        )
    }
}

/// Why an exchange failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScramError {
    /// The client's message does not follow the protocol (08P01).
    Protocol(String),
    /// The proof does not match: a wrong password (28P01).
    WrongProof,
}

/// The server's side after its first message, waiting for the client's
/// final message.
#[derive(Debug)]
pub struct ServerFirst {
    verifier: Verifier,
    /// The gs2 header the client sent (`n,,` or `y,,`), echoed in `c=`.
    gs2_header: String,
    client_first_bare: String,
    server_first: String,
    nonce: String,
}

/// The client's first message: answers the server's first message.
pub fn server_first(client_first: &[u8], verifier: Verifier) -> Result<ServerFirst, ScramError> {
    let bad = |why: &str| ScramError::Protocol(format!("malformed SCRAM client-first: {why}"));
    let text = std::str::from_utf8(client_first).map_err(|_| bad("not UTF-8"))?;
    // gs2-header: cbind-flag "," [authzid] ","
    let (flag, rest) = text.split_once(',').ok_or_else(|| bad("no gs2 header"))?;
    match flag {
        "n" | "y" => {}
        f if f.starts_with("p=") => {
            return Err(ScramError::Protocol(
                "channel binding (SCRAM-SHA-256-PLUS) was not offered".into(),
            ))
        }
        _ => return Err(bad("bad channel-binding flag")),
    }
    let (authzid, bare) = rest.split_once(',').ok_or_else(|| bad("no gs2 header"))?;
    if !authzid.is_empty() {
        return Err(ScramError::Protocol(
            "an authorization identity is not supported".into(),
        ));
    }
    // The user name is the startup message's (PostgreSQL ignores n=).
    let mut parts = bare.split(',');
    let first = parts.next().unwrap_or_default();
    let user_part = if first.starts_with("m=") {
        return Err(bad("mandatory extensions are not supported"));
    } else {
        first
    };
    if !user_part.starts_with("n=") {
        return Err(bad("no user name attribute"));
    }
    let client_nonce = parts
        .next()
        .and_then(|p| p.strip_prefix("r="))
        .filter(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_graphic() && c != ','))
        .ok_or_else(|| bad("no nonce"))?;
    let own = random_bytes(18);
    if own.is_empty() {
        return Err(ScramError::Protocol("no random source for a nonce".into()));
    }
    let nonce = format!("{client_nonce}{}", B64.encode(own));
    let server_first = format!(
        "r={nonce},s={},i={}",
        B64.encode(&verifier.salt),
        verifier.iterations
    );
    Ok(ServerFirst {
        verifier,
        gs2_header: format!("{flag},{authzid},"),
        client_first_bare: bare.to_string(),
        server_first,
        nonce,
    })
}

impl ServerFirst {
    /// The server-first message to send.
    pub fn message(&self) -> &str {
        &self.server_first
    }

    /// The client's final message: the server-final message (`v=...`) if
    /// its proof matches the verifier.
    pub fn server_final(&self, client_final: &[u8]) -> Result<String, ScramError> {
        let bad = |why: &str| ScramError::Protocol(format!("malformed SCRAM client-final: {why}"));
        let text = std::str::from_utf8(client_final).map_err(|_| bad("not UTF-8"))?;
        let (without_proof, proof) = text.rsplit_once(",p=").ok_or_else(|| bad("no proof"))?;
        let mut parts = without_proof.split(',');
        let binding = parts
            .next()
            .and_then(|p| p.strip_prefix("c="))
            .ok_or_else(|| bad("no channel binding"))?;
        if B64.decode(binding).ok().as_deref() != Some(self.gs2_header.as_bytes()) {
            return Err(ScramError::Protocol(
                "SCRAM channel binding does not match".into(),
            ));
        }
        let nonce = parts
            .next()
            .and_then(|p| p.strip_prefix("r="))
            .ok_or_else(|| bad("no nonce"))?;
        if nonce != self.nonce {
            return Err(ScramError::Protocol("SCRAM nonce does not match".into()));
        }
        let proof = B64.decode(proof).map_err(|_| bad("proof is not base64"))?;
        let auth_message = format!(
            "{},{},{}",
            self.client_first_bare, self.server_first, without_proof
        );
        let v = &self.verifier;
        let client_signature = hmac_sha256(&v.stored_key, auth_message.as_bytes());
        if proof.len() != client_signature.len() {
            return Err(ScramError::WrongProof);
        }
        let client_key: Vec<u8> = proof
            .iter()
            .zip(&client_signature)
            .map(|(a, b)| a ^ b)
            .collect();
        if !same(&sha256(&client_key), &v.stored_key) {
            return Err(ScramError::WrongProof);
        }
        let server_signature = hmac_sha256(&v.server_key, auth_message.as_bytes());
        Ok(format!("v={}", B64.encode(server_signature)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The client's side, as libpq computes it.
    fn client_final(password: &str, client_first_bare: &str, server_first: &str) -> String {
        let mut parts = server_first.split(',');
        let nonce = parts.next().unwrap().strip_prefix("r=").unwrap();
        let salt = B64
            .decode(parts.next().unwrap().strip_prefix("s=").unwrap())
            .unwrap();
        let iters: u32 = parts.next().unwrap()[2..].parse().unwrap();
        let mut salted = [0u8; 32];
        pbkdf2::derive(
            pbkdf2::PBKDF2_HMAC_SHA256,
            NonZeroU32::new(iters).unwrap(),
            &salt,
            password.as_bytes(),
            &mut salted,
        );
        let client_key = hmac_sha256(&salted, b"Client Key");
        let stored = sha256(&client_key);
        let without_proof = format!("c={},r={nonce}", B64.encode("n,,"));
        let auth = format!("{client_first_bare},{server_first},{without_proof}");
        let sig = hmac_sha256(&stored, auth.as_bytes());
        let proof: Vec<u8> = client_key.iter().zip(&sig).map(|(a, b)| a ^ b).collect();
        format!("{without_proof},p={}", B64.encode(proof))
    }

    #[test]
    fn the_right_password_passes_and_a_wrong_one_does_not() {
        let v = Verifier::new("s3cret pass").unwrap();
        let text = v.to_string();
        assert!(text.starts_with("SCRAM-SHA-256$4096:"), "{text}");
        assert!(!text.contains("s3cret"));
        assert_eq!(Verifier::parse(&text), Some(v.clone()));
        for (password, ok) in [("s3cret pass", true), ("s3cret pas", false)] {
            let bare = "n=,r=abcdefghijklmnop";
            let sf = server_first(format!("n,,{bare}").as_bytes(), v.clone()).unwrap();
            let cf = client_final(password, bare, sf.message());
            let r = sf.server_final(cf.as_bytes());
            assert_eq!(r.is_ok(), ok, "{password}: {r:?}");
            if !ok {
                assert_eq!(r.unwrap_err(), ScramError::WrongProof);
            }
        }
        let mock = Verifier::mock("nobody");
        let bare = "n=,r=xyz";
        let sf = server_first(format!("n,,{bare}").as_bytes(), mock).unwrap();
        let cf = client_final("", bare, sf.message());
        assert_eq!(sf.server_final(cf.as_bytes()), Err(ScramError::WrongProof));
    }

    #[test]
    fn malformed_messages_are_protocol_errors_not_panics() {
        let v = Verifier::with_salt("x", b"salt".to_vec(), 4096);
        for m in [
            &b""[..],
            b"n",
            b"n,,",
            b"p=tls-server-end-point,,n=,r=a",
            b"n,a=x,n=,r=a",
            b"n,,n=,r=",
            b"\xff\xfe",
        ] {
            assert!(
                matches!(server_first(m, v.clone()), Err(ScramError::Protocol(_))),
                "{m:?}"
            );
        }
        let sf = server_first(b"n,,n=,r=abc", v).unwrap();
        for m in [&b""[..], b"c=biws", b"c=biws,r=zzz,p=AAAA", b"c=xx,r=a,p=b"] {
            assert!(sf.server_final(m).is_err(), "{m:?}");
        }
        assert_eq!(Verifier::parse("SCRAM-SHA-256$x"), None);
        assert_eq!(Verifier::parse("md5abc"), None);
    }
}
