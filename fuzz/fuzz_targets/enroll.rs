//! An enrollment request after the token check: the agent name and the CSR
//! the controller's CA signs (also what `Renew` sends), and the certificate
//! parsing both sides apply to what they receive. Input: name length byte,
//! name, CSR DER.
#![no_main]
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use pulih_controller::pki::{self, Ca, PkiPaths};
use pulih_core::AgentName;

fn ca() -> &'static Ca {
    static CA: OnceLock<(tempfile::TempDir, Ca)> = OnceLock::new();
    &CA.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temporary directory");
        let paths = PkiPaths::new(dir.path());
        pki::create(&paths, "fuzz-drc", &["localhost".into()]).expect("test CA");
        let ca = Ca::load(&paths).expect("load test CA");
        (dir, ca)
    })
    .1
}

fuzz_target!(|data: &[u8]| {
    let Some((&n, rest)) = data.split_first() else { return };
    let n = usize::from(n).min(rest.len());
    let (name, csr) = rest.split_at(n);
    // Whatever a peer sends as a certificate (Enrolled, Renewed, handshakes).
    let _ = pulih_core::tls::cert_info(csr);
    let Ok(name) = std::str::from_utf8(name) else { return };
    let name = AgentName::new(name).unwrap_or_else(|_| AgentName::new("web").expect("valid name"));
    if let Ok(cert) = ca().sign_agent(csr, &name, 30) {
        let info = pulih_core::tls::cert_info(&cert).expect("our own certificate parses");
        assert_eq!(info.common_name, name.as_str());
    }
});
