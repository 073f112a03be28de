//! Enrollment: generate the key here, have the controller sign a CSR.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use pulih_core::protocol::Message;
use pulih_core::tls::{self, Fingerprint};
use pulih_core::AgentName;
use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::{self, Settings};
use crate::conn::Conn;

/// Enrolls this host and writes its state and configuration.
pub fn enroll(
    controller: &str,
    token: &str,
    fingerprint: &str,
    name: &str,
    state_dir: &Path,
    config_path: &Path,
) -> Result<()> {
    let agent = AgentName::new(name)?;
    let fp = Fingerprint::parse(fingerprint)?;
    if config_path.exists() {
        bail!(
            "{} already exists; refusing to overwrite a configuration (move it away to enroll again)",
            config_path.display()
        );
    }
    if !state_dir.is_absolute() {
        bail!("--state-dir must be an absolute path");
    }
    let key_path = state_dir.join("agent.key");
    if key_path.exists() {
        bail!("{} already exists; this state directory belongs to an enrolled agent", key_path.display());
    }
    let text = config::template(agent.as_str(), state_dir, controller);
    let settings = Settings::parse(&text).context("the controller address is not usable")?;

    fs::create_dir_all(state_dir).with_context(|| format!("creating {}", state_dir.display()))?;
    fs::set_permissions(state_dir, fs::Permissions::from_mode(0o700))?;
    let (key, csr) = key_and_csr(&agent)?;

    let cfg = Arc::new(tls::enroll_client_config(fp)?);
    let mut conn = Conn::connect(controller, &settings.server_name, cfg)?;
    conn.send(&Message::EnrollRequest { token: token.trim().to_owned(), name: agent.to_string(), csr_der: csr })?;
    let (cert_der, ca_der) = match conn.recv()? {
        Message::Enrolled { cert_der, ca_der } => (cert_der, ca_der),
        other => bail!("unexpected answer to enrollment: {}", other.name()),
    };
    conn.close();
    if Fingerprint::of(&ca_der) != fp {
        bail!("the controller returned a CA certificate that does not match the fingerprint");
    }
    let info = tls::cert_info(&cert_der)?;
    if info.common_name != agent.as_str() {
        bail!("the controller issued a certificate for {:?}, not {agent}", info.common_name);
    }
    write_private(&key_path, key.serialize_pem().as_bytes())?;
    fs::write(settings.cert_path(), pem("CERTIFICATE", &cert_der))?;
    fs::write(settings.ca_path(), pem("CERTIFICATE", &ca_der))?;
    if let Some(parent) = config_path.parent() {
        fs::create_dir_all(parent)?;
    }
    fs::write(config_path, text).with_context(|| format!("writing {}", config_path.display()))?;
    Ok(())
}

/// A new key pair, made here, and a certificate request for `agent`.
fn key_and_csr(agent: &AgentName) -> Result<(KeyPair, Vec<u8>)> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, agent.as_str());
    params.distinguished_name = dn;
    let csr = params.serialize_request(&key)?;
    Ok((key, csr.der().to_vec()))
}

/// Expiry (Unix seconds) of this agent's current certificate.
pub fn certificate_expiry(settings: &Settings) -> Result<i64> {
    let p = settings.cert_path();
    let cert = CertificateDer::from_pem_file(&p).with_context(|| format!("reading {}", p.display()))?;
    Ok(tls::cert_info(&cert)?.not_after)
}

/// Renews the agent's certificate over its current, still valid one: a new
/// key is made here and only its CSR travels. The new pair replaces the old
/// one so that a crash at any point leaves a usable pair (see
/// [`finish_renewal`]). Returns the new expiry (Unix seconds).
pub fn renew(settings: &Settings) -> Result<i64> {
    finish_renewal(settings)?;
    let (key, csr_der) = key_and_csr(&settings.agent)?;
    let mut conn = Conn::connect(&settings.address, &settings.server_name, Arc::new(client_config(settings)?))?;
    conn.hello()?;
    conn.send(&Message::Renew { csr_der })?;
    let cert_der = match conn.recv()? {
        Message::Renewed { cert_der } => cert_der,
        other => bail!("unexpected answer to renewal: {}", other.name()),
    };
    conn.close();
    let info = tls::cert_info(&cert_der)?;
    if info.common_name != settings.agent.as_str() {
        bail!("the controller issued a certificate for {:?}, not {}", info.common_name, settings.agent);
    }
    let (_, parsed) = x509_parser::parse_x509_certificate(&cert_der).context("parsing the renewed certificate")?;
    if parsed.public_key().raw != rcgen::PublicKeyData::subject_public_key_info(&key).as_slice() {
        bail!("the renewed certificate is not for the key this agent just made");
    }
    let (key_new, cert_new) = pending_paths(settings);
    let _ = fs::remove_file(&key_new);
    write_private(&key_new, key.serialize_pem().as_bytes())?;
    let mut f = OpenOptions::new().write(true).create(true).truncate(true).mode(0o644).open(&cert_new)?;
    f.write_all(pem("CERTIFICATE", &cert_der).as_bytes())?;
    f.sync_all()?;
    // From here the new certificate is complete on disk: renaming the key
    // first commits the renewal, and finish_renewal completes it after a
    // crash.
    fs::rename(&key_new, settings.key_path())?;
    fs::rename(&cert_new, settings.cert_path())?;
    fs::File::open(&settings.state_dir)?.sync_all()?;
    Ok(info.not_after)
}

fn pending_paths(settings: &Settings) -> (std::path::PathBuf, std::path::PathBuf) {
    (settings.state_dir.join("agent.key.new"), settings.state_dir.join("agent.pem.new"))
}

/// Completes or rolls back a renewal a crash interrupted: while
/// `agent.key.new` exists nothing was renamed yet and the old pair is
/// intact (drop the new files); once only `agent.pem.new` is left the new
/// key is in place and its certificate must follow.
pub fn finish_renewal(settings: &Settings) -> Result<()> {
    let (key_new, cert_new) = pending_paths(settings);
    if key_new.exists() {
        fs::remove_file(&key_new).with_context(|| format!("removing {}", key_new.display()))?;
        let _ = fs::remove_file(&cert_new);
    } else if cert_new.exists() {
        fs::rename(&cert_new, settings.cert_path()).with_context(|| format!("completing {}", cert_new.display()))?;
    }
    Ok(())
}

fn pem(label: &str, der: &[u8]) -> String {
    pem::encode(&pem::Pem::new(label, der))
}

fn write_private(path: &Path, data: &[u8]) -> Result<()> {
    let mut f = OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    f.write_all(data)?;
    f.sync_all()?;
    Ok(())
}

/// The TLS client configuration of an enrolled agent.
pub fn client_config(settings: &Settings) -> Result<rustls::ClientConfig> {
    finish_renewal(settings)?;
    let read_cert = |p: &Path| {
        CertificateDer::from_pem_file(p).with_context(|| format!("reading {} (is this agent enrolled?)", p.display()))
    };
    let ca = read_cert(&settings.ca_path())?;
    let cert = read_cert(&settings.cert_path())?;
    let key = PrivateKeyDer::from_pem_file(settings.key_path())
        .with_context(|| format!("reading {}", settings.key_path().display()))?;
    Ok(tls::client_config(ca, vec![cert], key)?)
}

#[cfg(test)]
mod tests {
    #[test]
    fn pem_round_trips() {
        use rustls::pki_types::pem::PemObject;
        for len in [1usize, 2, 3, 47, 48, 49, 500] {
            let der: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            let text = super::pem("CERTIFICATE", &der);
            let back = rustls::pki_types::CertificateDer::from_pem_slice(text.as_bytes()).unwrap();
            assert_eq!(back.as_ref(), &der[..], "len {len}");
        }
    }
}
