//! Bodies and query strings of the HTTPS API, decoded as axum does (JSON
//! with serde_json, queries with serde_urlencoded), then the checks the
//! handlers apply before touching the catalog. The first byte picks the type.
#![no_main]
use libfuzzer_sys::fuzz_target;
use pulih_controller::api::types::{
    AuditQuery, CreateTokenRequest, EnrollTokenRequest, RestoreRequest, SnapshotQuery, VerifyRequest,
};

fuzz_target!(|data: &[u8]| {
    let Some((&which, body)) = data.split_first() else { return };
    match which % 6 {
        0 => {
            let _ = serde_json::from_slice::<EnrollTokenRequest>(body);
        }
        1 => {
            let _ = serde_json::from_slice::<VerifyRequest>(body);
        }
        2 => {
            let _ = serde_json::from_slice::<RestoreRequest>(body);
        }
        3 => {
            if let Ok(req) = serde_json::from_slice::<CreateTokenRequest>(body) {
                let _ = pulih_controller::catalog::check_token_name(&req.name);
            }
        }
        4 => {
            let _ = serde_urlencoded::from_bytes::<SnapshotQuery>(body);
        }
        _ => {
            let _ = serde_urlencoded::from_bytes::<AuditQuery>(body);
        }
    }
});
