//! The fleet's certificate authority and the rustls configurations for mutual TLS.
//!
//! Agents only answer clients that present a certificate signed by the fleet CA; the
//! orchestrator only talks to agents whose certificate the same CA signed. Private keys are
//! written with mode 0600 and refused when others can read them.

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: {message}")]
    Bad { path: PathBuf, message: String },
    #[error("certificate generation failed: {0}")]
    Gen(#[from] rcgen::Error),
    #[error("TLS setup failed: {0}")]
    Tls(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PkiError + '_ {
    move |source| PkiError::Io { path: path.to_path_buf(), source }
}

/// Makes ring the process's default rustls provider (HTTP clients built without explicit TLS
/// settings need one). Calling it again does nothing.
pub fn install_default_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The ring-based crypto provider: one TLS stack for agent and orchestrator.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Writes `data` to `path` with mode 0600, replacing it atomically.
pub fn write_private(path: &Path, data: &[u8]) -> Result<(), PkiError> {
    let tmp = path.with_extension("tmp");
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io(&tmp))?;
    f.write_all(data).and_then(|_| f.sync_all()).map_err(io(&tmp))?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o600)).map_err(io(&tmp))?;
    fs::rename(&tmp, path).map_err(io(path))
}

/// File names inside a PKI directory.
pub fn ca_cert_path(dir: &Path) -> PathBuf {
    dir.join("ca.pem")
}
pub fn ca_key_path(dir: &Path) -> PathBuf {
    dir.join("ca.key")
}
pub fn cert_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.pem"))
}
pub fn key_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.key"))
}
/// The certificate revocation list `baton ca revoke` writes; agents and the orchestrator read
/// the one beside their `ca.pem`.
pub fn crl_path(dir: &Path) -> PathBuf {
    dir.join("crl.pem")
}
/// What has been revoked, a line each: serial (hex), when (Unix seconds), name.
fn revoked_path(dir: &Path) -> PathBuf {
    dir.join("revoked.txt")
}

/// `baton ca revoke NAME`: adds NAME's certificate to the fleet's revocation list and writes
/// the list again, signed by the CA, to `crl.pem`; moves NAME's certificate and key aside (to
/// `NAME.pem.revoked-SERIAL`), so that a new one can be issued. Returns the serial (hex).
pub fn revoke(dir: &Path, name: &str) -> Result<String, PkiError> {
    let cert = cert_path(dir, name);
    let der = CertificateDer::from_pem_file(&cert).map_err(|e| PkiError::Bad {
        path: cert.clone(),
        message: format!("no certificate to revoke: {e}"),
    })?;
    let serial = webpki::EndEntityCert::try_from(&der)
        .map_err(|e| PkiError::Bad { path: cert.clone(), message: format!("not a usable certificate: {e}") })?
        .serial()
        .to_vec();
    let hex: String = serial.iter().map(|b| format!("{b:02x}")).collect();
    let list_file = revoked_path(dir);
    let mut list = match fs::read_to_string(&list_file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(io(&list_file)(e)),
    };
    if list.lines().any(|l| l.split_whitespace().next() == Some(hex.as_str())) {
        return Err(PkiError::Bad { path: cert, message: format!("serial {hex} is revoked already") });
    }
    let now = time::OffsetDateTime::now_utc();
    list.push_str(&format!("{hex} {} {name}\n", now.unix_timestamp()));
    write_crl(dir, &list, now)?;
    write_private(&list_file, list.as_bytes())?;
    for from in [cert, key_path(dir, name)] {
        let mut to = from.clone().into_os_string();
        to.push(format!(".revoked-{hex}"));
        if from.exists() {
            fs::rename(&from, &to).map_err(io(&from))?;
        }
    }
    Ok(hex)
}

/// Signs the revocation list `list` (lines of [`revoked_path`]) with the CA in `dir`.
fn write_crl(dir: &Path, list: &str, now: time::OffsetDateTime) -> Result<(), PkiError> {
    let bad = |m: String| PkiError::Bad { path: revoked_path(dir), message: m };
    let mut revoked = Vec::new();
    for (i, line) in list.lines().enumerate() {
        let mut f = line.split_whitespace();
        let (Some(hex), Some(at)) = (f.next(), f.next()) else { continue };
        let bytes: Option<Vec<u8>> = (0..hex.len())
            .step_by(2)
            .map(|k| hex.get(k..k + 2).and_then(|b| u8::from_str_radix(b, 16).ok()))
            .collect();
        let at = at.parse::<i64>().ok().and_then(|t| time::OffsetDateTime::from_unix_timestamp(t).ok());
        let (Some(bytes), Some(at)) = (bytes, at) else {
            return Err(bad(format!("line {} is not `SERIAL SECONDS NAME`", i + 1)));
        };
        revoked.push(rcgen::RevokedCertParams {
            serial_number: rcgen::SerialNumber::from_slice(&bytes),
            revocation_time: at,
            reason_code: None,
            invalidity_date: None,
        });
    }
    let name_file = dir.join("ca.name");
    let cn = fs::read_to_string(&name_file).map_err(io(&name_file))?;
    let ca_key = KeyPair::from_pem(&read_key_file(&ca_key_path(dir))?)?;
    let issuer = Issuer::new(ca_params(cn.trim())?, ca_key);
    let params = rcgen::CertificateRevocationListParams {
        this_update: now - time::Duration::minutes(5),
        // Agents do not refuse a list past this date (it is a hint for when to fetch the next).
        next_update: now + time::Duration::days(i64::from(LEAF_DAYS)),
        crl_number: rcgen::SerialNumber::from(revoked.len() as u64),
        issuing_distribution_point: None,
        revoked_certs: revoked,
        key_identifier_method: rcgen::KeyIdMethod::Sha256,
    };
    let crl = params.signed_by(&issuer)?;
    write_private(&crl_path(dir), crl.pem()?.as_bytes())
}

/// How long a fleet CA is valid by default (`baton ca init --days`): ten years.
pub const CA_DAYS: u32 = 3650;
/// How long an agent's or the orchestrator's certificate is valid by default
/// (`baton ca issue --days`): one year.
pub const LEAF_DAYS: u32 = 365;

/// Valid from a little before now (clocks differ) for `days` days.
fn lifetime(p: &mut CertificateParams, days: u32) {
    let now = time::OffsetDateTime::now_utc();
    p.not_before = now - time::Duration::minutes(5);
    // At most a century: beyond that the date arithmetic overflows and nothing is gained.
    p.not_after = now + time::Duration::days(i64::from(days.clamp(1, 36_500)));
}

/// `baton ca init`: a new fleet CA in `dir` valid for [`CA_DAYS`] (refuses to overwrite one).
pub fn init_ca(dir: &Path, fleet: &str) -> Result<(), PkiError> {
    init_ca_days(dir, fleet, CA_DAYS)
}

/// As [`init_ca`], valid for `days` days.
pub fn init_ca_days(dir: &Path, fleet: &str, days: u32) -> Result<(), PkiError> {
    fs::create_dir_all(dir).map_err(io(dir))?;
    let cert = ca_cert_path(dir);
    if cert.exists() {
        return Err(PkiError::Bad {
            path: cert,
            message: "a CA exists here already; remove it first to replace it".into(),
        });
    }
    let key = KeyPair::generate()?;
    let cn = format!("baton fleet CA {fleet}");
    let mut params = ca_params(&cn)?;
    lifetime(&mut params, days);
    let c = params.self_signed(&key)?;
    write_private(&ca_key_path(dir), key.serialize_pem().as_bytes())?;
    write_private(&dir.join("ca.name"), cn.as_bytes())?;
    write_private(&cert, c.pem().as_bytes())
}

/// The CA's parameters, rebuilt from its name when issuing: the issuer of a certificate is the
/// CA's distinguished name and key, which is all a verifier checks.
fn ca_params(cn: &str) -> Result<CertificateParams, PkiError> {
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    p.distinguished_name.push(DnType::CommonName, cn);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages =
        vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    Ok(p)
}

/// What a certificate may be used for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A TLS server only: an agent's certificate cannot be used to command other agents.
    Agent,
    /// A TLS client only: the orchestrator commands agents and serves none.
    Orchestrator,
}

/// `baton ca issue NAME`: a certificate for an agent or the orchestrator, for `NAME` and any
/// `sans`, and nothing else. The orchestrator reaches an agent by its node's name (the TLS
/// server name), so the name is what pins it; `localhost` or a loopback address in every
/// certificate would pin nothing (every agent would have them).
pub fn issue(dir: &Path, name: &str, role: Role, sans: &[String]) -> Result<(), PkiError> {
    issue_days(dir, name, role, sans, LEAF_DAYS)
}

/// The name whose files are the orchestrator's; no agent may have it.
pub const ORCHESTRATOR: &str = "orchestrator";

/// As [`issue`], valid for `days` days. Refuses to overwrite an existing certificate or key
/// (rotation: move the old files aside first), and the names `ca` (the CA's own files) and,
/// for an agent, `orchestrator`.
pub fn issue_days(dir: &Path, name: &str, role: Role, sans: &[String], days: u32) -> Result<(), PkiError> {
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
        return Err(PkiError::Bad {
            path: dir.to_path_buf(),
            message: format!("`{name}` is not a usable name: use letters, digits, - _ ."),
        });
    }
    let reserved = name == "ca" || (role == Role::Agent && name == ORCHESTRATOR);
    if reserved {
        return Err(PkiError::Bad {
            path: dir.to_path_buf(),
            message: format!(
                "`{name}` is reserved for the {}: give the node another name",
                if name == "ca" { "CA's own files" } else { "orchestrator's certificate" }
            ),
        });
    }
    for existing in [cert_path(dir, name), key_path(dir, name)] {
        if existing.exists() {
            return Err(PkiError::Bad {
                path: existing,
                message: format!(
                    "a certificate for {name} exists already; to replace it (rotation), move {name}.pem and {name}.key aside first"
                ),
            });
        }
    }
    let name_file = dir.join("ca.name");
    let cn = fs::read_to_string(&name_file).map_err(io(&name_file))?;
    let ca_key = KeyPair::from_pem(&read_key_file(&ca_key_path(dir))?)?;
    let issuer = Issuer::new(ca_params(cn.trim())?, ca_key);
    let mut names = vec![name.to_string()];
    names.extend(sans.iter().cloned());
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    for n in names {
        p.subject_alt_names.push(match n.parse::<std::net::IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(n.try_into()?),
        });
    }
    p.distinguished_name.push(DnType::CommonName, name);
    lifetime(&mut p, days);
    p.extended_key_usages = vec![match role {
        Role::Agent => ExtendedKeyUsagePurpose::ServerAuth,
        Role::Orchestrator => ExtendedKeyUsagePurpose::ClientAuth,
    }];
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    let key = KeyPair::generate()?;
    let c = p.signed_by(&key, &issuer)?;
    write_private(&key_path(dir, name), key.serialize_pem().as_bytes())?;
    write_private(&cert_path(dir, name), c.pem().as_bytes())
}

/// Whether a certificate (DER) is issued for `name`: one of its subject alternative names is
/// that DNS name or address. Only the name is checked: the chain was checked by the TLS
/// handshake that received the certificate.
pub fn names(cert: &[u8], name: &str) -> bool {
    let Ok(name) = rustls::pki_types::ServerName::try_from(name) else { return false };
    let der = CertificateDer::from(cert);
    webpki::EndEntityCert::try_from(&der).is_ok_and(|c| c.verify_is_valid_for_subject_name(&name).is_ok())
}

/// Reads a private key, refusing one that group or others may read.
pub fn read_key_file(path: &Path) -> Result<String, PkiError> {
    let meta = fs::metadata(path).map_err(io(path))?;
    let mode = meta.permissions().mode();
    if mode & 0o077 != 0 {
        return Err(PkiError::Bad {
            path: path.to_path_buf(),
            message: format!(
                "the key is readable by others (mode {:o}): run chmod 600 {}",
                mode & 0o777,
                path.display()
            ),
        });
    }
    fs::read_to_string(path).map_err(io(path))
}

/// The files one party uses for mutual TLS.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The revocation list: certificates on it are refused. `None`: `crl.pem` beside `ca`,
    /// when there is one.
    pub crl: Option<PathBuf>,
}

impl TlsFiles {
    /// The files for `name` in a directory made by `baton ca`.
    pub fn in_dir(dir: &Path, name: &str) -> Self {
        TlsFiles { ca: ca_cert_path(dir), cert: cert_path(dir, name), key: key_path(dir, name), crl: None }
    }

    /// The revocation list file in force: the one named, else `crl.pem` beside the CA if
    /// there is one.
    pub fn crl_file(&self) -> Option<PathBuf> {
        self.crl.clone().or_else(|| Some(self.ca.with_file_name("crl.pem")).filter(|p| p.exists()))
    }

    /// The revocation lists in force (none when there is no file and none was named).
    fn crls(&self) -> Result<Vec<CertificateRevocationListDer<'static>>, PkiError> {
        let Some(path) = self.crl_file() else { return Ok(Vec::new()) };
        let pem = fs::read(&path).map_err(io(&path))?;
        let crls: Vec<_> =
            CertificateRevocationListDer::pem_slice_iter(&pem).collect::<Result<_, _>>().map_err(|e| {
                PkiError::Bad { path: path.clone(), message: format!("not a PEM revocation list: {e}") }
            })?;
        if crls.is_empty() {
            return Err(PkiError::Bad { path, message: "no revocation list in the file".into() });
        }
        Ok(crls)
    }

    fn load(
        &self,
    ) -> Result<(RootCertStore, Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), PkiError> {
        let bad = |p: &Path, m: String| PkiError::Bad { path: p.to_path_buf(), message: m };
        let mut roots = RootCertStore::empty();
        let ca_pem = fs::read(&self.ca).map_err(io(&self.ca))?;
        for c in CertificateDer::pem_slice_iter(&ca_pem) {
            let c = c.map_err(|e| bad(&self.ca, format!("not a PEM certificate: {e}")))?;
            roots.add(c).map_err(|e| bad(&self.ca, format!("not a usable CA certificate: {e}")))?;
        }
        if roots.is_empty() {
            return Err(bad(&self.ca, "no certificate in the CA file".into()));
        }
        let cert_pem = fs::read(&self.cert).map_err(io(&self.cert))?;
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
            .collect::<Result<_, _>>()
            .map_err(|e| bad(&self.cert, format!("not a PEM certificate: {e}")))?;
        if chain.is_empty() {
            return Err(bad(&self.cert, "no certificate in the file".into()));
        }
        let key_pem = read_key_file(&self.key)?;
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
            .map_err(|e| bad(&self.key, format!("not a PEM private key: {e}")))?;
        Ok((roots, chain, key))
    }

    /// A server that requires a client certificate signed by the CA.
    pub fn server_config(&self) -> Result<Arc<ServerConfig>, PkiError> {
        let (roots, chain, key) = self.load()?;
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
            .with_crls(self.crls()?)
            .build()
            .map_err(|e| PkiError::Tls(e.to_string()))?;
        let mut cfg = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| PkiError::Tls(e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .map_err(|e| PkiError::Tls(e.to_string()))?;
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(cfg))
    }

    /// A client that trusts only the CA and presents its own certificate.
    pub fn client_config(&self) -> Result<ClientConfig, PkiError> {
        let (roots, chain, key) = self.load()?;
        let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
            .with_crls(self.crls()?)
            .build()
            .map_err(|e| PkiError::Tls(e.to_string()))?;
        ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| PkiError::Tls(e.to_string()))?
            .with_webpki_verifier(verifier)
            .with_client_auth_cert(chain, key)
            .map_err(|e| PkiError::Tls(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revoking_lists_the_serial_signs_the_list_and_frees_the_name() {
        let dir = std::env::temp_dir().join(format!("baton-pki-revoke-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        init_ca(&dir, "test").unwrap();
        issue(&dir, "node1", Role::Agent, &[]).unwrap();
        issue(&dir, "node2", Role::Agent, &[]).unwrap();
        let der = CertificateDer::from_pem_file(cert_path(&dir, "node1")).unwrap();
        let serial = revoke(&dir, "node1").unwrap();
        let want: String = webpki::EndEntityCert::try_from(&der)
            .unwrap()
            .serial()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(serial, want);
        assert!(!cert_path(&dir, "node1").exists() && !key_path(&dir, "node1").exists(), "moved aside");
        assert!(dir.join(format!("node1.pem.revoked-{serial}")).exists());
        // The list is the CA's, names that serial, and is what webpki checks against.
        let pem = fs::read(crl_path(&dir)).unwrap();
        let crl_der = CertificateRevocationListDer::from_pem_slice(&pem).unwrap();
        let crl =
            webpki::CertRevocationList::from(webpki::OwnedCertRevocationList::from_der(&crl_der).unwrap());
        let ca = CertificateDer::from_pem_file(ca_cert_path(&dir)).unwrap();
        let anchors = [webpki::anchor_from_trusted_cert(&ca).unwrap().to_owned()];
        let check = |cert: &CertificateDer<'_>| {
            let crls = [&crl];
            let revocation = webpki::RevocationOptionsBuilder::new(&crls).unwrap().build();
            let now = rustls::pki_types::UnixTime::now();
            let algs = provider().signature_verification_algorithms.all;
            webpki::EndEntityCert::try_from(cert)
                .unwrap()
                .verify_for_usage(
                    algs,
                    &anchors,
                    &[],
                    now,
                    webpki::KeyUsage::server_auth(),
                    Some(revocation),
                    None,
                )
                .map(|_| ())
        };
        assert_eq!(check(&der), Err(webpki::Error::CertRevoked), "node1 is listed");
        let other = CertificateDer::from_pem_file(cert_path(&dir, "node2")).unwrap();
        assert_eq!(check(&other), Ok(()), "node2 is not");
        // A second revocation keeps the first on the list; the name can be issued again.
        issue(&dir, "node1", Role::Agent, &[]).unwrap();
        revoke(&dir, "node2").unwrap();
        let list = fs::read_to_string(dir.join("revoked.txt")).unwrap();
        assert_eq!(list.lines().count(), 2, "{list}");
        assert!(revoke(&dir, "node9").is_err(), "nothing to revoke");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_certificate_names_its_node_and_no_other() {
        let dir = std::env::temp_dir().join(format!("baton-pki-names-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        init_ca(&dir, "test").unwrap();
        issue(&dir, "node1", Role::Agent, &["10.0.0.7".into(), "node1.example".into()]).unwrap();
        let der = CertificateDer::from_pem_file(cert_path(&dir, "node1")).unwrap();
        for yes in ["node1", "node1.example", "10.0.0.7"] {
            assert!(names(&der, yes), "{yes}");
        }
        for no in ["node3", "node", "node11", "10.0.0.8", "", "not a name", "127.0.0.1", "localhost", "::1"] {
            assert!(!names(&der, no), "{no}");
        }
        fs::remove_dir_all(&dir).unwrap();
    }

    /// Whether `cert` (signed by the CA in `dir`) is valid as a server certificate at `at`,
    /// by the same verifier rustls uses.
    fn valid_at(dir: &Path, name: &str, at: std::time::SystemTime) -> Result<(), webpki::Error> {
        let ca = CertificateDer::from_pem_file(ca_cert_path(dir)).unwrap();
        let anchors = [webpki::anchor_from_trusted_cert(&ca).unwrap().to_owned()];
        let der = CertificateDer::from_pem_file(cert_path(dir, name)).unwrap();
        let cert = webpki::EndEntityCert::try_from(&der).unwrap();
        let time =
            rustls::pki_types::UnixTime::since_unix_epoch(at.duration_since(std::time::UNIX_EPOCH).unwrap());
        let algs = provider().signature_verification_algorithms.all;
        cert.verify_for_usage(algs, &anchors, &[], time, webpki::KeyUsage::server_auth(), None, None)
            .map(|_| ())
    }

    #[test]
    fn certificates_live_a_year_the_ca_ten_and_nothing_is_overwritten() {
        let dir = std::env::temp_dir().join(format!("baton-pki-life-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        init_ca(&dir, "test").unwrap();
        issue(&dir, "node1", Role::Agent, &[]).unwrap();
        let day = std::time::Duration::from_secs(86_400);
        let now = std::time::SystemTime::now();
        assert_eq!(valid_at(&dir, "node1", now), Ok(()));
        assert_eq!(valid_at(&dir, "node1", now + 364 * day), Ok(()));
        assert!(matches!(valid_at(&dir, "node1", now + 366 * day), Err(webpki::Error::CertExpired { .. })));
        assert!(matches!(valid_at(&dir, "node1", now - day), Err(webpki::Error::CertNotValidYet { .. })));
        // A shorter life on request; the CA outlives a leaf issued in its ninth year.
        issue_days(&dir, "node2", Role::Agent, &[], 30).unwrap();
        assert!(matches!(valid_at(&dir, "node2", now + 31 * day), Err(webpki::Error::CertExpired { .. })));
        // Nothing is overwritten, and the CA's and the orchestrator's names are not an agent's.
        let before = fs::read(key_path(&dir, "node1")).unwrap();
        let e = issue(&dir, "node1", Role::Agent, &[]).unwrap_err();
        assert!(e.to_string().contains("exists already"), "{e}");
        assert_eq!(fs::read(key_path(&dir, "node1")).unwrap(), before);
        let ca_key = fs::read(ca_key_path(&dir)).unwrap();
        for (name, role) in [("ca", Role::Agent), ("ca", Role::Orchestrator), ("orchestrator", Role::Agent)] {
            let e = issue(&dir, name, role, &[]).unwrap_err();
            assert!(e.to_string().contains("reserved"), "{e}");
        }
        assert_eq!(fs::read(ca_key_path(&dir)).unwrap(), ca_key);
        issue(&dir, "orchestrator", Role::Orchestrator, &[]).unwrap();
        assert!(init_ca(&dir, "again").is_err());
        fs::remove_dir_all(&dir).unwrap();
    }
}
