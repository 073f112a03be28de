//! TLS setup shared by agent and controller: TLS 1.3 only, mutual
//! authentication against the controller's own CA, ALPN separating agent
//! sessions from enrollment.
//!
//! * Agent sessions ([`client_config`] / [`server_config`]): the controller
//!   requires a client certificate signed by its CA and then asks a
//!   [`ClientCheck`] (the catalog) whether that exact certificate belongs to
//!   an active agent, so a revoked agent is refused during the handshake.
//! * Enrollment ([`enroll_client_config`] / [`enroll_server_config`]): the agent has no
//!   certificate yet and does not know the CA; it pins the CA by the SHA-256
//!   fingerprint the coordinator gave it out of band.

use std::fmt;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{
    client::WebPkiServerVerifier, ClientConfig, DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig,
    SignatureScheme,
};
use sha2::{Digest, Sha256};

use crate::protocol::{ALPN_AGENT, ALPN_ENROLL};

/// Errors setting up TLS.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("certificate verifier: {0}")]
    Verifier(String),
    #[error("invalid fingerprint {0:?}: expected 64 hex digits (colons and a 'sha256:' prefix are allowed)")]
    Fingerprint(String),
    #[error("certificate: {0}")]
    Certificate(String),
}

/// The crypto provider used everywhere (ring: builds without cmake).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// SHA-256 of a certificate's DER, the form `openssl x509 -fingerprint -sha256` shows.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    /// Fingerprint of a DER certificate.
    pub fn of(der: &[u8]) -> Self {
        Self(Sha256::digest(der).into())
    }
    /// Parses 64 hex digits, optionally colon-separated and prefixed by `sha256:`.
    pub fn parse(text: &str) -> Result<Self, TlsSetupError> {
        let t = text.trim();
        let t = t.strip_prefix("sha256:").or_else(|| t.strip_prefix("SHA256:")).unwrap_or(t);
        let digits: String = t.chars().filter(|c| *c != ':').collect::<String>().to_ascii_lowercase();
        let mut out = [0u8; 32];
        if digits.len() != 64 || hex::decode_to_slice(&digits, &mut out).is_err() {
            return Err(TlsSetupError::Fingerprint(text.chars().take(100).collect()));
        }
        Ok(Self(out))
    }
    /// Raw digest bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", hex::encode(self.0))
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// What the controller needs to know of a certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertInfo {
    /// Subject common name (the agent name for agent certificates).
    pub common_name: String,
    /// Serial number, hex.
    pub serial: String,
    /// Validity start and end, Unix seconds.
    pub not_before: i64,
    pub not_after: i64,
}

/// Reads subject, serial and validity of a DER certificate.
pub fn cert_info(der: &[u8]) -> Result<CertInfo, TlsSetupError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| TlsSetupError::Certificate(e.to_string()))?;
    let common_name =
        cert.subject().iter_common_name().next().and_then(|cn| cn.as_str().ok()).unwrap_or_default().to_owned();
    Ok(CertInfo {
        common_name,
        serial: cert.raw_serial_as_string().replace(':', ""),
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
    })
}

/// Decides whether an (already chain-verified) client certificate belongs to
/// an active agent. Called during every agent handshake.
pub trait ClientCheck: Send + Sync + fmt::Debug {
    /// `Err(reason)` refuses the handshake.
    fn check(&self, end_entity: &CertificateDer<'_>) -> Result<(), String>;
}

fn roots(ca_der: &CertificateDer<'static>) -> Result<Arc<RootCertStore>, TlsSetupError> {
    let mut roots = RootCertStore::empty();
    roots.add(ca_der.clone())?;
    Ok(Arc::new(roots))
}

/// The agent's client configuration for agent sessions.
pub fn client_config(
    ca_der: CertificateDer<'static>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<ClientConfig, TlsSetupError> {
    let mut cfg = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots(&ca_der)?)
        .with_client_auth_cert(chain, key)?;
    cfg.alpn_protocols = vec![ALPN_AGENT.to_vec()];
    Ok(cfg)
}

/// The agent's client configuration for enrollment: trusts the server when
/// its chain contains a CA certificate with fingerprint `ca`, and the server
/// certificate verifies against that CA for the name dialled.
pub fn enroll_client_config(ca: Fingerprint) -> Result<ClientConfig, TlsSetupError> {
    let verifier = Arc::new(PinnedCaVerifier { ca, provider: provider() });
    let mut cfg = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![ALPN_ENROLL.to_vec()];
    Ok(cfg)
}

/// The controller's configuration for agent sessions.
pub fn server_config(
    ca_der: CertificateDer<'static>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    check: Arc<dyn ClientCheck>,
) -> Result<ServerConfig, TlsSetupError> {
    let inner = WebPkiClientVerifier::builder_with_provider(roots(&ca_der)?, provider())
        .build()
        .map_err(|e| TlsSetupError::Verifier(e.to_string()))?;
    let verifier = Arc::new(CheckedClientVerifier { inner, check });
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    cfg.alpn_protocols = vec![ALPN_AGENT.to_vec()];
    Ok(cfg)
}

/// The controller's configuration for enrollment sessions (no client certificate).
pub fn enroll_server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<ServerConfig, TlsSetupError> {
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    cfg.alpn_protocols = vec![ALPN_ENROLL.to_vec()];
    Ok(cfg)
}

/// Chain verification by webpki, then the catalog's verdict.
#[derive(Debug)]
struct CheckedClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    check: Arc<dyn ClientCheck>,
}

impl ClientCertVerifier for CheckedClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }
    fn client_auth_mandatory(&self) -> bool {
        true
    }
    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let ok = self.inner.verify_client_cert(end_entity, intermediates, now)?;
        self.check.check(end_entity).map_err(|why| {
            rustls::Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(Arc::new(Refused(
                why,
            )))))
        })?;
        Ok(ok)
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[derive(Debug)]
struct Refused(String);
impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for Refused {}

/// Trusts a server whose chain carries the CA with the pinned fingerprint.
#[derive(Debug)]
struct PinnedCaVerifier {
    ca: Fingerprint,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedCaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let ca = intermediates.iter().find(|c| Fingerprint::of(c) == self.ca).ok_or_else(|| {
            rustls::Error::General(format!(
                "the controller did not present the CA with fingerprint {}; check the fingerprint and the address",
                self.ca
            ))
        })?;
        let roots = roots(&ca.clone().into_owned()).map_err(|e| rustls::Error::General(e.to_string()))?;
        let inner = WebPkiServerVerifier::builder_with_provider(roots, self.provider.clone())
            .build()
            .map_err(|e| rustls::Error::General(e.to_string()))?;
        inner.verify_server_cert(end_entity, &[], server_name, ocsp, now)
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_parses_common_spellings() {
        let fp = Fingerprint::of(b"cert");
        let plain = hex::encode(fp.as_bytes());
        let colons = plain
            .as_bytes()
            .chunks(2)
            .map(|c| std::str::from_utf8(c).unwrap().to_uppercase())
            .collect::<Vec<_>>()
            .join(":");
        for text in [fp.to_string(), plain.clone(), colons, format!("  {plain}\n")] {
            assert_eq!(Fingerprint::parse(&text).unwrap(), fp, "{text}");
        }
        assert!(Fingerprint::parse("abc").is_err());
        assert!(Fingerprint::parse(&"g".repeat(64)).is_err());
    }
}
