//! The API's handlers. Roles were checked before any of these runs (see
//! [`super::authorize`]); each validates its own input.

use std::sync::Arc;

use axum::extract::{Extension, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use pulih_core::{AgentName, DatasetName, TreeId};
use serde_json::json;

use super::types::*;
use super::{ApiError, ApiJson, ApiPath, ApiQuery, ApiState, Caller};
use crate::catalog::{now_secs, NewAudit};
use crate::restore::{open_confined, ConfineError, RestoreError};
use crate::verify::Verifier;

type Api<T> = Result<Json<T>, ApiError>;
type St = State<Arc<ApiState>>;

/// Most snapshots one verify request may name.
const MAX_VERIFY_IDS: usize = 1000;

pub(super) fn agent_name(s: &str) -> Result<AgentName, ApiError> {
    AgentName::new(s).map_err(|e| ApiError::bad_request(format!("agent name {s:?}: {e}")))
}

pub(super) fn dataset_name(s: &str) -> Result<DatasetName, ApiError> {
    DatasetName::new(s).map_err(|e| ApiError::bad_request(format!("dataset name {s:?}: {e}")))
}

/// A snapshot id or a unique prefix of it: 4 to 64 hex digits.
pub(super) fn snapshot_spec(s: &str) -> Result<String, ApiError> {
    if (4..=64).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(s.to_ascii_lowercase())
    } else {
        Err(ApiError::bad_request(format!(
            "{:?} is not a snapshot id: give the id or a prefix of 4 to 64 hex digits",
            s.chars().take(80).collect::<String>()
        )))
    }
}

pub async fn openapi() -> Response {
    super::json_text(super::OPENAPI)
}

pub async fn metrics(State(st): St) -> Result<Response, ApiError> {
    let m = st.metrics.clone();
    let text = st.db(move |c| m.render(c).map_err(|e| ApiError::internal(format!("metrics: {e}")))).await?;
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response())
}

pub async fn agents(State(st): St) -> Api<AgentsResponse> {
    let now = now_secs();
    let agents = st.db(move |c| Ok(c.agent_overview(now)?)).await?;
    Ok(Json(AgentsResponse { now, agents }))
}

pub async fn revoke_agent(
    State(st): St,
    Extension(caller): Extension<Caller>,
    ApiPath(name): ApiPath,
) -> Api<RevokeAgentResponse> {
    let agent = agent_name(&name)?;
    let entry = NewAudit::new(&caller.actor(), "revoke-agent", agent.as_str(), json!({}));
    let n = st.db(move |c| Ok(c.audited(&entry, |c| c.revoke_agent(&agent))?)).await?;
    tracing::info!(agent = %name, by = %caller.name, "agent revoked over the API");
    Ok(Json(RevokeAgentResponse { agent: name, certificates_revoked: n }))
}

pub async fn enroll_token(
    State(st): St,
    Extension(caller): Extension<Caller>,
    ApiJson(req): ApiJson<EnrollTokenRequest>,
) -> Api<EnrollTokenResponse> {
    let agent = agent_name(&req.agent)?;
    let hours = req.ttl_hours.map_or(st.enroll_ttl_hours, u64::from);
    if !(1..=24 * 30).contains(&hours) {
        return Err(ApiError::invalid("ttl_hours must be between 1 and 720"));
    }
    let actor = caller.actor();
    let (token, expires_at) = st.db(move |c| Ok(c.create_enroll_token(&agent, hours as i64 * 3600, &actor)?)).await?;
    Ok(Json(EnrollTokenResponse { agent: req.agent, token, fingerprint: st.ca_fingerprint.clone(), expires_at }))
}

pub async fn snapshots(State(st): St, ApiQuery(q): ApiQuery<SnapshotQuery>) -> Api<Vec<SnapshotRow>> {
    if let Some(a) = &q.agent {
        agent_name(a)?;
    }
    if let Some(d) = &q.dataset {
        dataset_name(d)?;
    }
    Ok(Json(st.db(move |c| Ok(c.snapshots(q.agent.as_deref(), q.dataset.as_deref())?)).await?))
}

pub async fn snapshot(State(st): St, ApiPath(id): ApiPath) -> Api<SnapshotDetail> {
    let spec = snapshot_spec(&id)?;
    let (row, record) = st
        .db(move |c| {
            let row = c.resolve_snapshot(&spec, None, None)?;
            let record = c.snapshot_record(&row.id)?;
            Ok((row, record))
        })
        .await?;
    Ok(Json(SnapshotDetail {
        snapshot: row,
        paths: record.paths.iter().map(|p| String::from_utf8_lossy(p).into_owned()).collect(),
        problems: record
            .errors
            .iter()
            .map(|e| SnapshotProblem {
                path: String::from_utf8_lossy(&e.path).into_owned(),
                message: e.message.clone(),
            })
            .collect(),
    }))
}

pub async fn verify(
    State(st): St,
    Extension(caller): Extension<Caller>,
    ApiJson(req): ApiJson<VerifyRequest>,
) -> Api<VerifyResult> {
    // Both or neither.
    if req.all != req.snapshots.is_empty() {
        return Err(ApiError::invalid("give either \"snapshots\": [ids] or \"all\": true"));
    }
    if req.snapshots.len() > MAX_VERIFY_IDS {
        return Err(ApiError::invalid(format!("at most {MAX_VERIFY_IDS} snapshots per request")));
    }
    let specs = req.snapshots.iter().map(|s| snapshot_spec(s)).collect::<Result<Vec<_>, _>>()?;
    let all = req.all;
    let targets = st
        .db(move |c| {
            if all {
                return Ok(c.snapshots(None, None)?);
            }
            Ok(specs.iter().map(|s| c.resolve_snapshot(s, None, None)).collect::<Result<Vec<_>, _>>()?)
        })
        .await?;
    let backend = st.backend.clone();
    // The catalog lock is not held: uploads go on while verify reads.
    let report = tokio::task::spawn_blocking(move || -> Result<VerifyResult, ApiError> {
        let mut v = Verifier::new(&backend.store);
        for s in &targets {
            let root: TreeId =
                s.root_tree.parse().map_err(|e| ApiError::internal(format!("snapshot {}: {e}", s.id)))?;
            v.snapshot(&s.id, &root).map_err(|e| ApiError::internal(format!("verifying snapshot {}: {e}", s.id)))?;
        }
        Ok(v.report.into())
    })
    .await
    .map_err(|e| ApiError::internal(format!("verify task failed: {e}")))?;
    let detail = match &report {
        Ok(r) => {
            json!({"all": all, "snapshots": r.snapshots, "damaged": r.damage.len(), "bytes_checked": r.bytes_checked})
        }
        Err(_) => json!({"all": all, "requested": req.snapshots}),
    };
    let entry = NewAudit::new(&caller.actor(), "verify", if all { "all" } else { "" }, detail);
    let outcome = report.as_ref().map(|_| ()).map_err(|e| e.message.clone());
    st.db(move |c| Ok(c.audit(&entry, &outcome)?)).await?;
    Ok(Json(report?))
}

/// Components of a path inside a snapshot; `..` is refused.
fn subpath(p: &str) -> Result<Vec<Vec<u8>>, ApiError> {
    let mut out = Vec::new();
    for c in p.split('/').filter(|c| !c.is_empty() && *c != ".") {
        if c == ".." {
            return Err(ApiError::bad_request(format!("path {p:?} may not contain '..'")));
        }
        out.push(c.as_bytes().to_vec());
    }
    Ok(out)
}

pub async fn restore(
    State(st): St,
    Extension(caller): Extension<Caller>,
    ApiJson(req): ApiJson<RestoreRequest>,
) -> Api<RestoreResponse> {
    let spec = snapshot_spec(&req.snapshot)?;
    if req.delete && !req.only_changed {
        return Err(ApiError::bad_request("delete needs only_changed (it removes what a delta restore does not have)"));
    }
    let sub = subpath(req.path.as_deref().unwrap_or(""))?;
    let snap = st.db(move |c| Ok(c.resolve_snapshot(&spec, None, None)?)).await?;
    let root: TreeId = snap.root_tree.parse().map_err(|e| ApiError::internal(format!("snapshot {}: {e}", snap.id)))?;
    let backend = st.backend.clone();
    let (restore_root, rel) = (st.restore_root.clone(), req.target.clone());
    let started = std::time::Instant::now();
    let opts = crate::restore::Options { only_changed: req.only_changed, delete: req.delete };
    // Confined below the restore root: the target is opened component by
    // component without following links, and restored into by descriptor.
    let result = tokio::task::spawn_blocking(move || {
        let (fd, path) = open_confined(&restore_root, &rel)?;
        let shown = path.display().to_string();
        Ok::<_, Refused>((crate::restore::restore_into(&backend.store, &root, &sub, fd, &shown, opts)?, path))
    })
    .await
    .map_err(|e| ApiError::internal(format!("restore task failed: {e}")))?;
    let seconds = started.elapsed().as_secs_f64();
    let detail = json!({"target": req.target, "path": req.path, "seconds": seconds,
        "only_changed": req.only_changed, "delete": req.delete,
        "restored_to": result.as_ref().ok().map(|r| &r.1), "stats": result.as_ref().ok().map(|r| &r.0)});
    let entry = NewAudit::new(&caller.actor(), "restore", &snap.id, detail);
    let outcome = result.as_ref().map(|_| ()).map_err(ToString::to_string);
    st.db(move |c| Ok(c.audit(&entry, &outcome)?)).await?;
    let (stats, path) = result.map_err(|e| match e {
        Refused::Target(ConfineError::Root { .. } | ConfineError::Io { .. }) => ApiError::internal(e.to_string()),
        Refused::Target(_) => ApiError::invalid(e.to_string()),
        Refused::Restore(RestoreError::DestNotEmpty(_)) => ApiError::conflict(e.to_string()),
        Refused::Restore(RestoreError::NoSuchPath(_)) => ApiError::not_found(e.to_string()),
        Refused::Restore(RestoreError::Io { .. }) => ApiError::invalid(e.to_string()),
        Refused::Restore(_) => ApiError::internal(e.to_string()),
    })?;
    tracing::info!(snapshot = %snap.id, target = %path.display(), by = %caller.name, "restored over the API");
    Ok(Json(RestoreResponse {
        snapshot: snap.id,
        target: req.target,
        path: path.display().to_string(),
        stats,
        seconds,
    }))
}

/// Why an API restore did not happen.
#[derive(Debug, thiserror::Error)]
enum Refused {
    #[error(transparent)]
    Target(#[from] ConfineError),
    #[error(transparent)]
    Restore(#[from] RestoreError),
}

pub async fn tokens(State(st): St) -> Api<Vec<ApiTokenRow>> {
    Ok(Json(st.db(|c| Ok(c.api_tokens()?)).await?))
}

pub async fn create_token(
    State(st): St,
    Extension(caller): Extension<Caller>,
    ApiJson(req): ApiJson<CreateTokenRequest>,
) -> Result<(StatusCode, Json<CreateTokenResponse>), ApiError> {
    if req.expires_days == Some(0) {
        return Err(ApiError::invalid("expires_days must be at least 1 (leave it out for no expiry)"));
    }
    let actor = caller.actor();
    let entry =
        NewAudit::new(&actor, "token-create", &req.name, json!({"role": req.role, "expires_days": req.expires_days}));
    let (token, info) = st
        .db(move |c| Ok(c.audited(&entry, |c| c.create_api_token(&req.name, req.role, req.expires_days, &actor))?))
        .await?;
    Ok((StatusCode::CREATED, Json(CreateTokenResponse { token, info })))
}

pub async fn revoke_token(
    State(st): St,
    Extension(caller): Extension<Caller>,
    ApiPath(name): ApiPath,
) -> Api<ApiTokenRow> {
    crate::catalog::check_token_name(&name)?;
    let entry = NewAudit::new(&caller.actor(), "token-revoke", &name, json!({}));
    let row = st
        .db(move |c| {
            c.audited(&entry, |c| c.revoke_api_token(&name))?;
            Ok(c.api_token(&name)?)
        })
        .await?
        .ok_or_else(|| ApiError::internal("revoked token vanished"))?;
    Ok(Json(row))
}

pub async fn audit(State(st): St, ApiQuery(q): ApiQuery<AuditQuery>) -> Api<Vec<AuditRow>> {
    let after = q.after_seq.unwrap_or(0);
    let limit = q.limit.unwrap_or(100);
    if after < 0 || !(1..=1000).contains(&limit) {
        return Err(ApiError::bad_request("after_seq must be >= 0 and limit between 1 and 1000"));
    }
    Ok(Json(st.db(move |c| Ok(c.audit_rows(after, limit)?)).await?))
}

pub async fn audit_verify(State(st): St) -> Api<AuditVerify> {
    Ok(Json(st.db(|c| Ok(c.audit_verify()?)).await?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inputs_are_validated() {
        assert!(snapshot_spec("abcd").is_ok());
        assert!(snapshot_spec("abc").is_err());
        assert!(snapshot_spec("zzzz").is_err());
        assert!(snapshot_spec(&"a".repeat(65)).is_err());
        assert_eq!(subpath("/etc//x/./y").unwrap().len(), 3);
        assert!(subpath("/etc/../x").is_err());
    }
}
