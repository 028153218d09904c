//! Who may connect, and how they prove who they are: the startup handler
//! that applies the host-based rules (`crate::hba`), runs a SCRAM-SHA-256
//! exchange (`crate::scram`) against the role's verifier in the catalog,
//! and the server's TLS certificate.
//!
//! A connection is refused with 28000 when no rule matches, a `reject`
//! rule matches, or its role does not exist or may not log in; with 28P01
//! when its password proof is wrong. A role that does not exist goes
//! through the same exchange as one that does, so a client cannot tell
//! the two apart from the answers. Refusals are logged with the peer,
//! user and database; nothing of a password ever reaches this process in
//! clear.
//!
//! It owns the authentication state of each connection and the server's
//! rules and certificate; it never runs statements and never changes a
//! role (`crate::roles` does).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use async_trait::async_trait;
use futures::{Sink, SinkExt};
use pgwire::api::auth::StartupHandler;
use pgwire::api::{ClientInfo, PgWireConnectionState, METADATA_DATABASE, METADATA_USER};
use pgwire::error::{PgWireError, PgWireResult};
use pgwire::messages::startup::Authentication;
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};
use pgwire::tokio::tokio_rustls::rustls;
use pgwire::tokio::TlsAcceptor;
use slicedb_coordinator::roles::RoleDef;
use slicedb_coordinator::Coordinator;
use tracing::{info, warn};

use crate::errors::SqlError;
use crate::hba::{self, Method, Rule};
use crate::scram::{self, ScramError, Verifier};
use crate::sessions::{fatal, Startup};

/// The bootstrap superuser's name unless configured: the user of the URL
/// `slicedb local` prints.
pub const DEFAULT_SUPERUSER: &str = "slicedb";

const MECHANISM: &str = "SCRAM-SHA-256";

/// How the server authenticates, from the configuration.
#[derive(Debug, Clone, Default)]
pub struct AuthConfig {
    /// `pg_hba.conf` lines, first match wins; empty: loopback trusted,
    /// nothing else let in ([`hba::loopback_trust`]).
    pub rules: Vec<String>,
    /// PEM certificate chain and private key for TLS; None: no TLS (an
    /// SSLRequest is refused, `sslmode=require` cannot connect).
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// The superuser made when the catalog has no role yet (empty:
    /// [`DEFAULT_SUPERUSER`]). It has no password: it connects through a
    /// `trust` rule until `ALTER ROLE ... PASSWORD` gives it one.
    pub superuser: String,
}

impl AuthConfig {
    /// Whether rules were configured (not the loopback-only default).
    pub fn has_rules(&self) -> bool {
        !self.rules.iter().all(|r| r.trim().is_empty())
    }

    /// A line for a banner: what the server lets in.
    pub fn describe(&self) -> String {
        let tls = match &self.tls_cert {
            Some(c) => format!("TLS with {}", c.display()),
            None => "no TLS".into(),
        };
        if self.has_rules() {
            format!(
                "authentication: {} host-based rule(s), {tls}",
                self.rules.len()
            )
        } else {
            format!("authentication: loopback connections trusted without a password (no rules configured), others refused; {tls}")
        }
    }

    /// Refuses an address that is not loopback unless rules are
    /// configured: the default trusts whoever connects on loopback, and
    /// listening wider without rules is almost surely a mistake.
    pub fn check_listen(&self, listen: &SocketAddr) -> Result<(), SqlError> {
        if hba::is_loopback(listen) || self.has_rules() {
            return Ok(());
        }
        Err(SqlError::user(
            "F0000",
            format!("refusing to listen on {listen}, which is not a loopback address, without host-based rules; configure them (`--hba`, or `hba` in cluster.toml; see docs/security.md)"),
        ))
    }
}

/// The server's rules and certificate, shared by every connection.
pub struct AuthState {
    inner: RwLock<(Arc<Vec<Rule>>, Option<TlsAcceptor>)>,
}

impl Default for AuthState {
    fn default() -> Self {
        AuthState {
            inner: RwLock::new((Arc::new(hba::loopback_trust()), None)),
        }
    }
}

impl AuthState {
    /// Apply `cfg`: rules parsed, certificate loaded, the bootstrap
    /// superuser made if the catalog has no role.
    pub fn configure(&self, cfg: &AuthConfig, coord: &Coordinator) -> Result<(), SqlError> {
        let rules = match cfg.has_rules() {
            true => hba::parse_rules(cfg.rules.iter().map(String::as_str))?,
            false => hba::loopback_trust(),
        };
        let tls = match (&cfg.tls_cert, &cfg.tls_key) {
            (Some(c), Some(k)) => Some(load_tls(c, k)?),
            (None, None) => None,
            _ => {
                return Err(SqlError::user(
                    "F0000",
                    "TLS needs both a certificate and a key",
                ))
            }
        };
        let superuser = match cfg.superuser.as_str() {
            "" => DEFAULT_SUPERUSER,
            s => s,
        };
        {
            let mut cat = coord.cluster().catalog().lock();
            if cat.roles().is_empty() {
                cat.put_role(
                    RoleDef {
                        name: superuser.to_string(),
                        superuser: true,
                        login: true,
                        verifier: None,
                    },
                    true,
                )?;
                info!(role = superuser, "bootstrap superuser created");
            }
        }
        *self.inner.write().unwrap_or_else(|e| e.into_inner()) = (Arc::new(rules), tls);
        Ok(())
    }

    fn rules(&self) -> Arc<Vec<Rule>> {
        self.inner
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .0
            .clone()
    }

    /// The TLS acceptor, if a certificate is configured.
    pub fn tls(&self) -> Option<TlsAcceptor> {
        self.inner
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .1
            .clone()
    }
}

fn load_tls(cert: &Path, key: &Path) -> Result<TlsAcceptor, SqlError> {
    let bad = |what: &Path, e: &dyn std::fmt::Display| {
        SqlError::user("F0000", format!("TLS: {}: {e}", what.display()))
    };
    let read = |p: &Path| std::fs::read(p).map_err(|e| bad(p, &e));
    let certs = rustls_pemfile::certs(&mut &read(cert)?[..])
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(cert, &e))?;
    if certs.is_empty() {
        return Err(bad(cert, &"no PEM certificate in it"));
    }
    let key_der = rustls_pemfile::private_key(&mut &read(key)?[..])
        .map_err(|e| bad(key, &e))?
        .ok_or_else(|| bad(key, &"no PEM private key in it"))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(cert, &e))?
        .with_no_client_auth()
        .with_single_cert(certs, key_der)
        .map_err(|e| bad(cert, &e))?;
    // PostgreSQL 17 clients may ask for it (direct TLS negotiation).
    config.alpn_protocols = vec![b"postgresql".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// One connection's SCRAM exchange.
enum Exchange {
    /// AuthenticationSASL sent; waiting for the client's first message.
    Offered,
    /// server-first sent; `real`: the role exists and has a password.
    FirstSent(Box<scram::ServerFirst>, bool),
}

struct ConnAuth(Mutex<Option<Exchange>>);

/// The startup handler: rules, then trust or SCRAM, then the session.
pub struct Auth {
    coord: Arc<Coordinator>,
    state: Arc<AuthState>,
    startup: Startup,
}

impl Auth {
    pub fn new(coord: Arc<Coordinator>, state: Arc<AuthState>, startup: Startup) -> Self {
        Auth {
            coord,
            state,
            startup,
        }
    }

    /// The role `user`, if it exists and may log in (28000 if not).
    fn login_role(&self, user: &str) -> PgWireResult<RoleDef> {
        let role = self.coord.cluster().catalog().lock().role(user);
        match role {
            None => Err(fatal("28000", &format!("role \"{user}\" does not exist"))),
            Some(r) if !r.login => Err(fatal(
                "28000",
                &format!("role \"{user}\" is not permitted to log in"),
            )),
            Some(r) => Ok(r),
        }
    }

    /// The verifier to check `user`'s proof against, and whether it is
    /// real (the role exists and has a password).
    fn verifier_for(&self, user: &str) -> (Verifier, bool) {
        let role = self.coord.cluster().catalog().lock().role(user);
        match role
            .and_then(|r| r.verifier)
            .and_then(|v| Verifier::parse(&v))
        {
            Some(v) => (v, true),
            None => (Verifier::mock(user), false),
        }
    }
}

fn who<C: ClientInfo>(client: &C) -> (String, String) {
    let meta = client.metadata();
    let user = meta.get(METADATA_USER).cloned().unwrap_or_default();
    let database = meta
        .get(METADATA_DATABASE)
        .cloned()
        .unwrap_or_else(|| user.clone());
    (user, database)
}

fn wrong_password(user: &str, peer: SocketAddr, why: &str) -> PgWireError {
    warn!(%peer, user, reason = why, "password authentication failed");
    fatal(
        "28P01",
        &format!("password authentication failed for user \"{user}\""),
    )
}

#[async_trait]
impl StartupHandler for Auth {
    async fn on_startup<C>(
        &self,
        client: &mut C,
        message: PgWireFrontendMessage,
    ) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: std::fmt::Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let peer = client.socket_addr();
        match message {
            PgWireFrontendMessage::Startup(startup) => {
                pgwire::api::auth::protocol_negotiation(client, &startup).await?;
                pgwire::api::auth::save_startup_parameters_to_metadata(client, &startup);
                let (user, database) = who(client);
                let tls = client.is_secure();
                let rules = self.state.rules();
                let encryption = if tls {
                    "SSL encryption"
                } else {
                    "no encryption"
                };
                let host = peer.ip();
                match hba::decide(&rules, tls, host, &database, &user) {
                    None => {
                        warn!(%peer, user, database, tls, "connection refused: no host-based rule matches");
                        Err(fatal("28000", &format!("no pg_hba.conf entry for host \"{host}\", user \"{user}\", database \"{database}\", {encryption}")))
                    }
                    Some(Method::Reject) => {
                        warn!(%peer, user, database, tls, "connection refused by a reject rule");
                        Err(fatal("28000", &format!("pg_hba.conf rejects connection for host \"{host}\", user \"{user}\", database \"{database}\", {encryption}")))
                    }
                    Some(Method::Trust) => {
                        self.login_role(&user)?;
                        self.startup.finish(client).await
                    }
                    Some(Method::ScramSha256) => {
                        client.set_state(PgWireConnectionState::AuthenticationInProgress);
                        client
                            .session_extensions()
                            .insert(ConnAuth(Mutex::new(Some(Exchange::Offered))));
                        client
                            .send(PgWireBackendMessage::Authentication(Authentication::SASL(
                                vec![MECHANISM.to_string()],
                            )))
                            .await?;
                        Ok(())
                    }
                }
            }
            PgWireFrontendMessage::PasswordMessageFamily(msg) => {
                let (user, _) = who(client);
                let state = client
                    .session_extensions()
                    .get::<ConnAuth>()
                    .and_then(|c| c.0.lock().unwrap_or_else(|e| e.into_inner()).take());
                match state {
                    Some(Exchange::Offered) => {
                        let initial = msg.into_sasl_initial_response()?;
                        if initial.auth_method != MECHANISM {
                            return Err(fatal(
                                "28000",
                                &format!(
                                    "SASL mechanism {:?} is not supported; use SCRAM-SHA-256",
                                    initial.auth_method
                                ),
                            ));
                        }
                        let data = initial.data.unwrap_or_default();
                        let (verifier, real) = self.verifier_for(&user);
                        let first = scram::server_first(&data, verifier).map_err(|e| match e {
                            ScramError::Protocol(m) => fatal("08P01", &m),
                            ScramError::WrongProof => wrong_password(&user, peer, "proof"),
                        })?;
                        client
                            .send(PgWireBackendMessage::Authentication(
                                Authentication::SASLContinue(first.message().to_string().into()),
                            ))
                            .await?;
                        if let Some(c) = client.session_extensions().get::<ConnAuth>() {
                            *c.0.lock().unwrap_or_else(|e| e.into_inner()) =
                                Some(Exchange::FirstSent(Box::new(first), real));
                        }
                        Ok(())
                    }
                    Some(Exchange::FirstSent(first, real)) => {
                        let response = msg.into_sasl_response()?;
                        match first.server_final(&response.data) {
                            Ok(last) if real => {
                                self.login_role(&user)?;
                                client
                                    .send(PgWireBackendMessage::Authentication(
                                        Authentication::SASLFinal(last.into()),
                                    ))
                                    .await?;
                                self.startup.finish(client).await
                            }
                            Ok(_) => {
                                Err(wrong_password(&user, peer, "no such role or no password"))
                            }
                            Err(ScramError::WrongProof) => {
                                Err(wrong_password(&user, peer, "wrong password"))
                            }
                            Err(ScramError::Protocol(m)) => Err(fatal("08P01", &m)),
                        }
                    }
                    None => Err(fatal("08P01", "unexpected password message")),
                }
            }
            _ => Ok(()),
        }
    }
}
