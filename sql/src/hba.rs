//! Host-based rules: who may connect from where, and how they prove who
//! they are, in the form of PostgreSQL's `pg_hba.conf` lines:
//!
//! ```text
//! TYPE       DATABASE  USER   ADDRESS         METHOD
//! host       all       all    127.0.0.1/32    trust
//! hostssl    all       all    0.0.0.0/0       scram-sha-256
//! hostnossl  all       all    0.0.0.0/0       reject
//! ```
//!
//! `host` matches any TCP connection, `hostssl` one that negotiated TLS,
//! `hostnossl` one that did not (slicedb has no Unix socket, so no
//! `local`). DATABASE and USER are `all` or comma-separated names;
//! ADDRESS is a CIDR range, a bare address, or `all`. METHOD is `trust`,
//! `reject` or `scram-sha-256` (`md5` and `password` are read as
//! `scram-sha-256`, as PostgreSQL does for a role with a SCRAM verifier).
//! The first rule that matches decides; none matching refuses the
//! connection (28000).
//!
//! It owns parsing and matching; it never reads files or sockets.

use std::net::IpAddr;

use crate::errors::SqlError;

/// Which connections a rule is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnType {
    Host,
    HostSsl,
    HostNoSsl,
}

/// What a matching rule asks of the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Trust,
    Reject,
    ScramSha256,
}

/// `all`, or these names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Names {
    All,
    List(Vec<String>),
}

impl Names {
    fn parse(s: &str) -> Names {
        if s == "all" {
            return Names::All;
        }
        Names::List(
            s.split(',')
                .map(|n| n.trim_matches('"').to_string())
                .collect(),
        )
    }

    fn matches(&self, name: &str) -> bool {
        match self {
            Names::All => true,
            Names::List(l) => l.iter().any(|n| n == name),
        }
    }
}

/// One rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub conn: ConnType,
    pub databases: Names,
    pub users: Names,
    /// (network, prefix length); None: any address.
    pub address: Option<(IpAddr, u8)>,
    pub method: Method,
}

fn bad(line: &str, why: &str) -> SqlError {
    SqlError::user("F0000", format!("host-based rule {line:?}: {why}"))
}

impl Rule {
    /// One `pg_hba.conf` line.
    pub fn parse(line: &str) -> Result<Rule, SqlError> {
        let words: Vec<&str> = line.split_whitespace().collect();
        let (conn, database, user, address, method) = match words.as_slice() {
            [c, d, u, a, m] => (*c, *d, *u, *a, *m),
            [c, d, u, a, mask, m] if mask.contains('.') || mask.contains(':') => {
                // PostgreSQL's address and netmask in two fields.
                let bits = mask_bits(mask).ok_or_else(|| bad(line, "bad netmask"))?;
                let cidr = format!("{a}/{bits}");
                return Rule::parse(&format!("{c} {d} {u} {cidr} {m}"));
            }
            _ => {
                return Err(bad(
                    line,
                    "expected TYPE DATABASE USER ADDRESS METHOD, e.g. `host all all 10.0.0.0/8 scram-sha-256`",
                ))
            }
        };
        let conn = match conn {
            "host" => ConnType::Host,
            "hostssl" => ConnType::HostSsl,
            "hostnossl" => ConnType::HostNoSsl,
            "local" => {
                return Err(bad(
                    line,
                    "slicedb has no Unix socket; use host rules for 127.0.0.1/32",
                ))
            }
            other => return Err(bad(line, &format!("unknown connection type {other:?}"))),
        };
        let method = match method {
            "trust" => Method::Trust,
            "reject" => Method::Reject,
            "scram-sha-256" | "md5" | "password" => Method::ScramSha256,
            other => {
                return Err(bad(
                    line,
                    &format!("unknown method {other:?} (trust, reject or scram-sha-256)"),
                ))
            }
        };
        let address = match address {
            "all" => None,
            a => Some(parse_cidr(a).ok_or_else(|| bad(line, &format!("bad address {a:?}")))?),
        };
        Ok(Rule {
            conn,
            databases: Names::parse(database),
            users: Names::parse(user),
            address,
            method,
        })
    }

    fn matches(&self, tls: bool, peer: IpAddr, database: &str, user: &str) -> bool {
        let conn = match self.conn {
            ConnType::Host => true,
            ConnType::HostSsl => tls,
            ConnType::HostNoSsl => !tls,
        };
        conn && self.databases.matches(database)
            && self.users.matches(user)
            && self
                .address
                .is_none_or(|(net, bits)| in_range(peer, net, bits))
    }
}

/// The rules in order, as given: several lines, `#` comments and blank
/// lines skipped.
pub fn parse_rules<'a>(lines: impl IntoIterator<Item = &'a str>) -> Result<Vec<Rule>, SqlError> {
    lines
        .into_iter()
        .flat_map(|l| l.lines())
        .map(|l| l.split('#').next().unwrap_or_default().trim())
        .filter(|l| !l.is_empty())
        .map(Rule::parse)
        .collect()
}

/// The rules a server uses when none are configured: every loopback
/// connection is trusted, nothing else is let in.
pub fn loopback_trust() -> Vec<Rule> {
    parse_rules([
        "host all all 127.0.0.1/32 trust",
        "host all all ::1/128 trust",
    ])
    .expect("literal rules parse")
}

/// The method of the first rule matching this connection; None: no rule
/// matches (the connection is refused).
pub fn decide(
    rules: &[Rule],
    tls: bool,
    peer: IpAddr,
    database: &str,
    user: &str,
) -> Option<Method> {
    let peer = match peer {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(peer),
        v4 => v4,
    };
    rules
        .iter()
        .find(|r| r.matches(tls, peer, database, user))
        .map(|r| r.method)
}

fn parse_cidr(s: &str) -> Option<(IpAddr, u8)> {
    let (addr, bits) = match s.split_once('/') {
        Some((a, b)) => (a.parse::<IpAddr>().ok()?, Some(b.parse::<u8>().ok()?)),
        None => (s.parse::<IpAddr>().ok()?, None),
    };
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let bits = bits.unwrap_or(max);
    (bits <= max).then_some((addr, bits))
}

fn mask_bits(mask: &str) -> Option<u8> {
    let bits: u128 = match mask.parse::<IpAddr>().ok()? {
        IpAddr::V4(m) => u128::from(u32::from(m)) << 96,
        IpAddr::V6(m) => u128::from(m),
    };
    let ones = bits.leading_ones();
    (bits.checked_shl(ones).unwrap_or(0) == 0).then_some(ones as u8)
}

fn in_range(peer: IpAddr, net: IpAddr, bits: u8) -> bool {
    match (peer, net) {
        (IpAddr::V4(p), IpAddr::V4(n)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(bits)).unwrap_or(0);
            u32::from(p) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(p), IpAddr::V6(n)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(bits)).unwrap_or(0);
            u128::from(p) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

/// Whether every address `listen` could accept from is loopback.
pub fn is_loopback(listen: &std::net::SocketAddr) -> bool {
    listen.ip().is_loopback()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn first_match_wins_and_no_match_is_none() {
        let rules = parse_rules([
            "# comment\nhost all slicedb 127.0.0.1/32 trust",
            "hostssl all all 10.0.0.0/8 scram-sha-256",
            "hostnossl all all 10.1.0.0 255.255.0.0 reject",
            "host app,other bob all md5",
        ])
        .unwrap();
        assert_eq!(rules.len(), 4);
        let d = |tls, peer, db, user| decide(&rules, tls, ip(peer), db, user);
        assert_eq!(
            d(false, "127.0.0.1", "slicedb", "slicedb"),
            Some(Method::Trust)
        );
        assert_eq!(
            d(false, "::ffff:127.0.0.1", "x", "slicedb"),
            Some(Method::Trust)
        );
        assert_eq!(d(false, "127.0.0.1", "slicedb", "alice"), None);
        assert_eq!(d(true, "10.2.3.4", "x", "alice"), Some(Method::ScramSha256));
        assert_eq!(
            d(false, "10.2.3.4", "x", "alice"),
            None,
            "hostssl needs TLS"
        );
        assert_eq!(d(false, "10.1.3.4", "x", "alice"), Some(Method::Reject));
        assert_eq!(
            d(false, "192.168.1.1", "app", "bob"),
            Some(Method::ScramSha256)
        );
        assert_eq!(d(false, "192.168.1.1", "nope", "bob"), None);
        assert_eq!(d(false, "::1", "app", "slicedb"), None);
        let lo = loopback_trust();
        assert_eq!(decide(&lo, false, ip("::1"), "a", "b"), Some(Method::Trust));
        assert_eq!(decide(&lo, true, ip("10.0.0.1"), "a", "b"), None);
    }

    #[test]
    fn bad_rules_are_refused_with_the_reason() {
        for (line, why) in [
            ("host all all", "expected TYPE"),
            ("local all all trust x", "no Unix socket"),
            ("host all all 10.0.0.0/33 trust", "bad address"),
            ("host all all 10.0.0.0/8 ident", "unknown method"),
            ("hostgss all all all trust", "unknown connection type"),
            ("host all all 10.0.0.0 255.0.255.0 trust", "bad netmask"),
        ] {
            let e = Rule::parse(line).unwrap_err().to_string();
            assert!(e.contains(why), "{line}: {e}");
        }
    }
}
