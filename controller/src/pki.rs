//! The controller's small certificate authority.
//!
//! `pki/ca.pem` + `pki/ca.key` sign the server certificate
//! (`pki/server.pem`, `pki/server.key`) and every agent certificate. Agents
//! generate their keys themselves and send a CSR at enrollment, so no private
//! key ever leaves the host it was made on. Private keys are written 0600.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use pulih_core::tls::Fingerprint;
use pulih_core::AgentName;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateSigningRequestDer, PrivateKeyDer};
use time::{Duration, OffsetDateTime};

/// Validity of the CA certificate.
pub const CA_DAYS: i64 = 3650;
/// Validity of the server certificate.
pub const SERVER_DAYS: i64 = 825;
/// Validity of agent certificates.
pub const AGENT_DAYS: i64 = 365;

/// Paths of the PKI files under a data directory.
#[derive(Debug, Clone)]
pub struct PkiPaths {
    pub dir: PathBuf,
}

impl PkiPaths {
    pub fn new(data_dir: &Path) -> Self {
        Self { dir: data_dir.join("pki") }
    }
    pub fn ca_cert(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }
    pub fn ca_key(&self) -> PathBuf {
        self.dir.join("ca.key")
    }
    pub fn server_cert(&self) -> PathBuf {
        self.dir.join("server.pem")
    }
    pub fn server_key(&self) -> PathBuf {
        self.dir.join("server.key")
    }
}

/// Writes `data` to a new file readable only by its owner (F38).
pub fn write_secret(path: &Path, data: &[u8]) -> Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(data)?;
    f.sync_all()?;
    Ok(())
}

fn random_serial() -> Result<SerialNumber> {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).map_err(|e| anyhow::anyhow!("random serial: {e}"))?;
    b[0] &= 0x7f; // positive INTEGER
    Ok(SerialNumber::from_slice(&b))
}

fn dn(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Pulih");
    dn.push(DnType::CommonName, cn);
    dn
}

/// Creates the CA and a server certificate valid for `names` and 127.0.0.1.
pub fn create(paths: &PkiPaths, controller_name: &str, names: &[String]) -> Result<()> {
    fs::create_dir_all(&paths.dir)?;
    let now = OffsetDateTime::now_utc();

    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::default();
    ca.distinguished_name = dn(&format!("Pulih CA {controller_name}"));
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    ca.not_before = now - Duration::minutes(5);
    ca.not_after = now + Duration::days(CA_DAYS);
    ca.serial_number = Some(random_serial()?);
    let ca_cert = ca.self_signed(&ca_key)?;

    let server_key = KeyPair::generate()?;
    let mut sp = CertificateParams::default();
    sp.distinguished_name = dn(controller_name);
    let mut sans = vec![SanType::IpAddress(IpAddr::from([127, 0, 0, 1]))];
    for n in names {
        match n.parse::<IpAddr>() {
            Ok(ip) => sans.push(SanType::IpAddress(ip)),
            Err(_) => {
                sans.push(SanType::DnsName(n.clone().try_into().with_context(|| format!("invalid DNS name {n:?}"))?))
            }
        }
    }
    if !names.iter().any(|n| n == "localhost") {
        sans.push(SanType::DnsName("localhost".try_into()?));
    }
    sp.subject_alt_names = sans;
    sp.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    sp.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    sp.not_before = now - Duration::minutes(5);
    sp.not_after = now + Duration::days(SERVER_DAYS);
    sp.serial_number = Some(random_serial()?);
    let issuer = Issuer::from_params(&ca, &ca_key);
    let server_cert = sp.signed_by(&server_key, &issuer)?;

    fs::write(paths.ca_cert(), ca_cert.pem())?;
    write_secret(&paths.ca_key(), ca_key.serialize_pem().as_bytes())?;
    fs::write(paths.server_cert(), server_cert.pem())?;
    write_secret(&paths.server_key(), server_key.serialize_pem().as_bytes())?;
    Ok(())
}

/// The loaded CA.
pub struct Ca {
    pub cert_der: CertificateDer<'static>,
    key: KeyPair,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Ca({})", self.fingerprint())
    }
}

impl Ca {
    /// Loads the CA certificate and key.
    pub fn load(paths: &PkiPaths) -> Result<Self> {
        let cert_der = CertificateDer::from_pem_file(paths.ca_cert())
            .with_context(|| format!("reading CA certificate {}", paths.ca_cert().display()))?;
        let key_pem = fs::read_to_string(paths.ca_key())
            .with_context(|| format!("reading CA key {}", paths.ca_key().display()))?;
        let key = KeyPair::from_pem(&key_pem).context("parsing CA key")?;
        Ok(Self { cert_der, key })
    }

    /// The fingerprint agents pin at enrollment.
    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint::of(&self.cert_der)
    }

    /// Issues an agent certificate for the public key in `csr_der`. The
    /// CSR's requested subject and extensions are ignored: the certificate
    /// names exactly `name` and allows client authentication only.
    pub fn sign_agent(&self, csr_der: &[u8], name: &AgentName, days: i64) -> Result<CertificateDer<'static>> {
        let csr = CertificateSigningRequestParams::from_der(&CertificateSigningRequestDer::from(csr_der))
            .map_err(|e| anyhow::anyhow!("invalid certificate signing request: {e}"))?;
        let now = OffsetDateTime::now_utc();
        self.issue(&csr.public_key, name, now - Duration::minutes(5), now + Duration::days(days))
    }

    /// Issues an agent certificate with explicit validity (tests, renewal).
    pub fn issue(
        &self,
        public_key: &impl rcgen::PublicKeyData,
        name: &AgentName,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> Result<CertificateDer<'static>> {
        if not_after <= not_before {
            bail!("certificate validity ends before it starts");
        }
        let issuer = Issuer::from_ca_cert_der(&self.cert_der, &self.key)?;
        let mut p = CertificateParams::default();
        p.distinguished_name = dn(name.as_str());
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.not_before = not_before;
        p.not_after = not_after;
        p.serial_number = Some(random_serial()?);
        Ok(p.signed_by(public_key, &issuer)?.der().clone())
    }
}

/// The server's certificate chain (server, CA) and key.
pub fn load_server(paths: &PkiPaths) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
    let server = CertificateDer::from_pem_file(paths.server_cert())
        .with_context(|| format!("reading {}", paths.server_cert().display()))?;
    let ca = CertificateDer::from_pem_file(paths.ca_cert())
        .with_context(|| format!("reading {}", paths.ca_cert().display()))?;
    let key = PrivateKeyDer::from_pem_file(paths.server_key())
        .with_context(|| format!("reading {}", paths.server_key().display()))?;
    Ok((vec![server, ca], key))
}

/// Directory of every agent certificate issued, `<fingerprint>.pem`: the
/// catalog's `certificates` table can be rebuilt from it (F7).
pub fn issued_dir(paths: &PkiPaths) -> PathBuf {
    paths.dir.join("issued")
}

/// Directory of revocation markers, one empty file `<fingerprint>` per
/// revoked certificate, so a rebuilt catalog keeps them revoked.
pub fn revoked_dir(paths: &PkiPaths) -> PathBuf {
    paths.dir.join("revoked")
}

fn write_synced(dir: &Path, name: &str, data: &[u8]) -> Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut f = fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(data)?;
    f.sync_all()?;
    drop(f);
    fs::rename(&tmp, dir.join(name))?;
    fs::File::open(dir)?.sync_all()?;
    Ok(())
}

/// Records an issued agent certificate (PEM) under `pki/issued/`. Called
/// before the catalog records it, so every certificate the catalog knows
/// has a file.
pub fn record_issued(paths: &PkiPaths, cert: &CertificateDer<'_>) -> Result<()> {
    let pem = pem::encode(&pem::Pem::new("CERTIFICATE", cert.to_vec()));
    write_synced(&issued_dir(paths), &format!("{}.pem", Fingerprint::of(cert)), pem.as_bytes())
}

/// Records that certificates were revoked (markers under `pki/revoked/`).
pub fn record_revoked(paths: &PkiPaths, fingerprints: &[String]) -> Result<()> {
    for fp in fingerprints {
        Fingerprint::parse(fp).map_err(|e| anyhow::anyhow!("{fp}: {e}"))?;
        write_synced(&revoked_dir(paths), fp, b"")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn ca_signs_agent_csr_and_keys_are_private() {
        let dir = tempfile::tempdir().unwrap();
        let paths = PkiPaths::new(dir.path());
        create(&paths, "drc", &["drc.example.go.id".into()]).unwrap();
        for key in [paths.ca_key(), paths.server_key()] {
            assert_eq!(fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600, "{}", key.display());
        }
        let ca = Ca::load(&paths).unwrap();
        let agent_key = KeyPair::generate().unwrap();
        let mut req = CertificateParams::default();
        req.distinguished_name = dn("something-else");
        let csr = req.serialize_request(&agent_key).unwrap();
        let name = AgentName::new("web").unwrap();
        let cert = ca.sign_agent(csr.der(), &name, 30).unwrap();
        let info = pulih_core::tls::cert_info(&cert).unwrap();
        assert_eq!(info.common_name, "web");
        assert!(ca.sign_agent(b"garbage", &name, 30).is_err());
        // Loading the chain works.
        let (chain, _) = load_server(&paths).unwrap();
        assert_eq!(chain.len(), 2);
    }
}
