//! Who may talk to a node: the cluster's own certificate authority, the
//! certificate of each member (the coordinator, every node), and reading
//! which member a caller is from the certificate it presented.
//!
//! Every coordinator-to-node and node-to-node connection is mutual TLS
//! against the cluster's CA: a process without a certificate that CA
//! signed cannot finish the handshake, so it reaches no RPC and no Flight
//! stream; one with another cluster's certificate neither (another CA). A
//! member's certificate names it, `coordinator.<cluster>.slicedb` or
//! `node-<id>.<cluster>.slicedb` (`<cluster>`: the 16-byte cluster id in
//! hex), so a node knows who calls, checks the cluster id of every call,
//! and a client knows it reached the node it meant (the map's address of
//! node 3 answers only with node 3's certificate). TLS also keeps the
//! traffic from being read, changed or replayed on the way.
//!
//! It owns the files of a cluster's credentials (docs/security.md: `ca.pem`,
//! `ca.key`, `<member>.pem`, `<member>.key` in one directory), issuing them,
//! and the TLS settings of both ends. It must never decide what a caller
//! may do: the node server does, from the [`Member`] found here.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig};

use crate::{EngineError, NodeId, Result};

/// The longest a TLS handshake may take on either end: a peer that stops
/// halfway (a hung process) holds no connection attempt for longer.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// A member of a cluster: who a certificate belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Member {
    Coordinator,
    Node(NodeId),
}

impl Member {
    /// The stem of its files in the credentials directory.
    pub fn stem(self) -> String {
        match self {
            Member::Coordinator => "coordinator".into(),
            Member::Node(id) => format!("node-{id}"),
        }
    }

    /// The DNS name its certificate carries in cluster `cluster`.
    fn name(self, cluster: &str) -> String {
        format!("{}.{cluster}.slicedb", self.stem())
    }

    /// The member a certificate name stands for, if it belongs to `cluster`.
    fn from_name(name: &str, cluster: &str) -> Option<Member> {
        let stem = name.strip_suffix(".slicedb")?.strip_suffix(cluster)?;
        match stem.strip_suffix('.')? {
            "coordinator" => Some(Member::Coordinator),
            n => n
                .strip_prefix("node-")?
                .parse()
                .ok()
                .filter(|id: &NodeId| n == format!("node-{id}"))
                .map(Member::Node),
        }
    }
}

impl std::fmt::Display for Member {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Member::Coordinator => f.write_str("the coordinator"),
            Member::Node(id) => write!(f, "node {id}"),
        }
    }
}

/// One member's credentials in one cluster: what its server presents and
/// its clients present, and the CA it trusts.
#[derive(Clone)]
pub struct ClusterTls {
    cluster: String,
    me: Member,
    ca: String,
    cert: String,
    key: String,
}

impl std::fmt::Debug for ClusterTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterTls")
            .field("cluster", &self.cluster)
            .field("me", &self.me)
            .finish_non_exhaustive()
    }
}

fn cred_err(what: impl std::fmt::Display) -> EngineError {
    EngineError::Credentials(what.to_string())
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| {
        cred_err(format!(
            "{}: {e} (create the cluster's credentials with `slicedb certs`)",
            path.display()
        ))
    })
}

/// The hex form of a cluster id, as certificate names carry it.
pub fn cluster_hex(cluster_id: &[u8; 16]) -> String {
    cluster_id.iter().map(|b| format!("{b:02x}")).collect()
}

/// The CA's parameters: the same every time for one cluster, so a CA key
/// found on disk issues certificates for members added later.
fn ca_params(cluster: &str) -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, format!("slicedb cluster {cluster} CA"));
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p
}

/// Write `text` to `path`, readable by its owner only when `secret`.
fn write_new(path: &Path, text: &str, secret: bool) -> Result<()> {
    use std::io::Write;
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(if secret { 0o600 } else { 0o644 });
    }
    let mut f = o
        .open(path)
        .map_err(|e| cred_err(format!("{}: {e}", path.display())))?;
    f.write_all(text.as_bytes())
        .and_then(|_| f.sync_all())
        .map_err(|e| cred_err(format!("{}: {e}", path.display())))
}

/// Create the credentials of cluster `cluster_id` in `dir`: the CA (once)
/// and each of `members`' certificate and key that is not there yet.
/// Returns the files written.
pub fn issue(dir: &Path, cluster_id: &[u8; 16], members: &[Member]) -> Result<Vec<PathBuf>> {
    let cluster = cluster_hex(cluster_id);
    std::fs::create_dir_all(dir).map_err(|e| cred_err(format!("{}: {e}", dir.display())))?;
    let mut written = Vec::new();
    let (ca_pem, ca_key) = (dir.join("ca.pem"), dir.join("ca.key"));
    let ca_key = if ca_key.exists() {
        KeyPair::from_pem(&read(&ca_key)?)
            .map_err(|e| cred_err(format!("{}: {e}", ca_key.display())))?
    } else {
        if ca_pem.exists() {
            return Err(cred_err(format!(
                "{} exists without ca.key: new members cannot be issued here",
                ca_pem.display()
            )));
        }
        let key = KeyPair::generate().map_err(cred_err)?;
        let cert = ca_params(&cluster).self_signed(&key).map_err(cred_err)?;
        write_new(&ca_key, &key.serialize_pem(), true)?;
        write_new(&ca_pem, &cert.pem(), false)?;
        written.extend([ca_key.clone(), ca_pem.clone()]);
        key
    };
    let issuer = Issuer::new(ca_params(&cluster), ca_key);
    for m in members {
        let (pem, key_path) = (
            dir.join(format!("{}.pem", m.stem())),
            dir.join(format!("{}.key", m.stem())),
        );
        if pem.exists() && key_path.exists() {
            continue;
        }
        let name = m.name(&cluster);
        let mut p = CertificateParams::new(vec![name.clone()]).map_err(cred_err)?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        p.distinguished_name = dn;
        p.is_ca = IsCa::NoCa;
        p.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = KeyPair::generate().map_err(cred_err)?;
        let cert = p.signed_by(&key, &issuer).map_err(cred_err)?;
        let _ = std::fs::remove_file(&pem);
        let _ = std::fs::remove_file(&key_path);
        write_new(&key_path, &key.serialize_pem(), true)?;
        write_new(&pem, &cert.pem(), false)?;
        written.extend([key_path, pem]);
    }
    Ok(written)
}

/// The member names of the first certificate of a PEM chain.
fn pem_members(pem: &str, cluster: &str) -> Result<Vec<Member>> {
    let der = rustls_pemfile_first(pem)?;
    let cert = webpki::EndEntityCert::try_from(&der).map_err(|e| cred_err(format!("{e:?}")))?;
    Ok(members_of(&cert, cluster))
}

fn members_of(cert: &webpki::EndEntityCert<'_>, cluster: &str) -> Vec<Member> {
    cert.valid_dns_names()
        .filter_map(|n| Member::from_name(n, cluster))
        .filter(|m| {
            // The name found must also pass webpki's own name check.
            rustls_pki_types::ServerName::try_from(m.name(cluster))
                .is_ok_and(|sn| cert.verify_is_valid_for_subject_name(&sn).is_ok())
        })
        .collect()
}

fn rustls_pemfile_first(pem: &str) -> Result<rustls_pki_types::CertificateDer<'static>> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::CertificateDer::pem_slice_iter(pem.as_bytes())
        .next()
        .ok_or_else(|| cred_err("no certificate in the PEM file"))?
        .map_err(|e| cred_err(format!("bad PEM certificate: {e:?}")))
}

impl ClusterTls {
    /// `me`'s credentials in cluster `cluster_id`, from `dir` (see
    /// [`issue`]): its certificate must name it in this cluster.
    pub fn load(dir: &Path, cluster_id: &[u8; 16], me: Member) -> Result<ClusterTls> {
        let cluster = cluster_hex(cluster_id);
        let ca = read(&dir.join("ca.pem"))?;
        let cert_path = dir.join(format!("{}.pem", me.stem()));
        let cert = read(&cert_path)?;
        let key = read(&dir.join(format!("{}.key", me.stem())))?;
        if !pem_members(&cert, &cluster)?.contains(&me) {
            return Err(cred_err(format!(
                "{} is not {me}'s certificate in this cluster (its names: {})",
                cert_path.display(),
                describe_names(&cert)
            )));
        }
        Ok(ClusterTls {
            cluster,
            me,
            ca,
            cert,
            key,
        })
    }

    /// Who these credentials belong to.
    pub fn me(&self) -> Member {
        self.me
    }

    /// The server side: present this member's certificate and require a
    /// client certificate the cluster's CA signed.
    pub fn server_config(&self) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(Identity::from_pem(&self.cert, &self.key))
            .client_ca_root(Certificate::from_pem(&self.ca))
            .timeout(HANDSHAKE_TIMEOUT)
    }

    /// `endpoint` (an `https://` URL) made to present this member's
    /// certificate and to accept only node `to`'s.
    pub fn client(&self, endpoint: Endpoint, to: NodeId) -> Result<Endpoint> {
        endpoint
            .tls_config(
                ClientTlsConfig::new()
                    .ca_certificate(Certificate::from_pem(&self.ca))
                    .identity(Identity::from_pem(&self.cert, &self.key))
                    .domain_name(Member::Node(to).name(&self.cluster))
                    .timeout(HANDSHAKE_TIMEOUT),
            )
            .map_err(|e| cred_err(format!("TLS settings for node {to}: {e}")))
    }

    /// The member that made `req`, from the certificate it presented (the
    /// handshake already checked it against the CA); `Unauthenticated` if
    /// it presented none or none of this cluster.
    pub fn caller<T>(&self, req: &tonic::Request<T>) -> std::result::Result<Member, tonic::Status> {
        let certs = req
            .peer_certs()
            .ok_or_else(|| tonic::Status::unauthenticated("no cluster certificate presented"))?;
        let first = certs
            .first()
            .ok_or_else(|| tonic::Status::unauthenticated("no cluster certificate presented"))?;
        let cert = webpki::EndEntityCert::try_from(first).map_err(|e| {
            tonic::Status::unauthenticated(format!("unreadable certificate: {e:?}"))
        })?;
        let found = members_of(&cert, &self.cluster);
        match found.as_slice() {
            [m] => Ok(*m),
            _ => Err(tonic::Status::unauthenticated(
                "the certificate names no single member of this cluster",
            )),
        }
    }
}

fn describe_names(pem: &str) -> String {
    let Ok(der) = rustls_pemfile_first(pem) else {
        return "unreadable".into();
    };
    let Ok(cert) = webpki::EndEntityCert::try_from(&der) else {
        return "unreadable".into();
    };
    let names: Vec<&str> = cert.valid_dns_names().collect();
    if names.is_empty() {
        "none".into()
    } else {
        names.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_back_only_in_their_own_cluster() {
        let c = cluster_hex(&[0xab; 16]);
        for m in [Member::Coordinator, Member::Node(0), Member::Node(41)] {
            assert_eq!(Member::from_name(&m.name(&c), &c), Some(m));
            assert_eq!(Member::from_name(&m.name(&c), &cluster_hex(&[1; 16])), None);
        }
        for bad in [
            format!("node-01.{c}.slicedb"),
            format!("node-.{c}.slicedb"),
            format!("node-1x.{c}.slicedb"),
            format!("x.node-1.{c}.slicedb"),
            format!("node-1{c}.slicedb"),
            format!("coordinator.{c}.slicedb.evil"),
        ] {
            assert_eq!(Member::from_name(&bad, &c), None, "{bad}");
        }
    }

    #[test]
    fn issued_credentials_load_as_their_member_only() {
        let dir = tempfile::tempdir().unwrap();
        let id = [7u8; 16];
        let files = issue(dir.path(), &id, &[Member::Coordinator, Member::Node(2)]).unwrap();
        assert_eq!(files.len(), 6);
        let t = ClusterTls::load(dir.path(), &id, Member::Node(2)).unwrap();
        assert_eq!(t.me(), Member::Node(2));
        ClusterTls::load(dir.path(), &id, Member::Coordinator).unwrap();
        // Another cluster's id: the same files are refused.
        let e = ClusterTls::load(dir.path(), &[8u8; 16], Member::Node(2)).unwrap_err();
        assert!(e.to_string().contains("not node 2's certificate"), "{e}");
        // Node 2's files copied as node 3's are refused.
        std::fs::copy(dir.path().join("node-2.pem"), dir.path().join("node-3.pem")).unwrap();
        std::fs::copy(dir.path().join("node-2.key"), dir.path().join("node-3.key")).unwrap();
        assert!(ClusterTls::load(dir.path(), &id, Member::Node(3)).is_err());
        // Issuing again adds only what is missing, with the same CA.
        let ca = std::fs::read(dir.path().join("ca.pem")).unwrap();
        std::fs::remove_file(dir.path().join("node-3.pem")).unwrap();
        let more = issue(dir.path(), &id, &[Member::Node(2), Member::Node(3)]).unwrap();
        assert_eq!(more.len(), 2, "{more:?}");
        assert_eq!(std::fs::read(dir.path().join("ca.pem")).unwrap(), ca);
        ClusterTls::load(dir.path(), &id, Member::Node(3)).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            for f in ["ca.key", "node-2.key", "coordinator.key"] {
                let mode = std::fs::metadata(dir.path().join(f))
                    .unwrap()
                    .permissions()
                    .mode();
                assert_eq!(mode & 0o077, 0, "{f} is readable by others: {mode:o}");
            }
        }
    }
}
