//! API handlers of the DR plan document: generate (coordinator), list,
//! download and read content (auditor too), approve (admin).

use std::sync::Arc;

use axum::extract::{Extension, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::types::*;
use super::{ApiError, ApiJson, ApiPath, ApiState, Caller};
use crate::catalog::{now_secs, DrpVersionRow, NewAudit};
use crate::drp::{self, DrpError, DrpSettings, Format, Lang};

type St = State<Arc<ApiState>>;

impl From<DrpError> for ApiError {
    fn from(e: DrpError) -> Self {
        match e {
            DrpError::Catalog(c) => c.into(),
            DrpError::Template(_) | DrpError::Markup { .. } | DrpError::Organisation(_) | DrpError::Invalid(_) => {
                ApiError::invalid(e.to_string())
            }
            other => ApiError::internal(other.to_string()),
        }
    }
}

fn settings(st: &ApiState) -> Result<DrpSettings, ApiError> {
    st.drp.clone().ok_or_else(|| {
        ApiError::not_found("the DR plan is not configured on this controller ([drp] in controller.toml)")
    })
}

fn version_of(s: &str) -> Result<i64, ApiError> {
    s.parse::<i64>().ok().filter(|v| *v > 0).ok_or_else(|| {
        ApiError::bad_request(format!("{:?} is not a plan version (1, 2, ...)", s.chars().take(40).collect::<String>()))
    })
}

pub async fn generate(
    State(st): St,
    Extension(caller): Extension<Caller>,
    ApiJson(req): ApiJson<DrpGenerateRequest>,
) -> Result<Json<DrpVersionRow>, ApiError> {
    let lang = req.lang.as_deref().unwrap_or("id");
    let lang = Lang::parse(lang).ok_or_else(|| ApiError::invalid(format!("lang {lang:?}: use id or en")))?;
    let format = req.format.as_deref().unwrap_or("pdf");
    let format =
        Format::parse(format).ok_or_else(|| ApiError::invalid(format!("format {format:?}: use pdf, html or md")))?;
    let kind = drp::Kind::parse(req.kind.as_deref().unwrap_or("plan"), req.drill.as_deref())?;
    let settings = settings(&st)?;
    let backend = st.backend.clone();
    let actor = caller.actor();
    let row = tokio::task::spawn_blocking(move || {
        let lock = || backend.catalog.lock().unwrap_or_else(|e| e.into_inner());
        drp::generate_kind(lock, &settings, &kind, lang, format, &actor, now_secs())
    })
    .await
    .map_err(|e| ApiError::internal(format!("plan generation failed: {e}")))??
    .0;
    tracing::info!(version = row.version, by = %caller.name, "DR plan generated over the API");
    Ok(Json(row))
}

pub async fn versions(State(st): St) -> Result<Json<DrpVersionsResponse>, ApiError> {
    let (versions, in_force) = st.db(|c| Ok((c.drp_versions()?, c.drp_in_force()?))).await?;
    Ok(Json(DrpVersionsResponse { versions, in_force }))
}

pub async fn version(State(st): St, ApiPath(v): ApiPath) -> Result<Json<DrpVersionRow>, ApiError> {
    let v = version_of(&v)?;
    Ok(Json(st.db(move |c| Ok(c.drp_version(v)?)).await?))
}

async fn read_stored(st: &ApiState, v: &str, content: bool) -> Result<(DrpVersionRow, Vec<u8>), ApiError> {
    let settings = settings(st)?;
    let v = version_of(v)?;
    let row = st.db(move |c| Ok(c.drp_version(v)?)).await?;
    let rel = if content { &row.content_path } else { &row.file_path };
    let path = settings.data_dir.join(rel);
    let shown = path.display().to_string();
    let bytes = tokio::task::spawn_blocking(move || std::fs::read(&path))
        .await
        .map_err(|e| ApiError::internal(format!("reading {shown}: {e}")))?
        .map_err(|e| ApiError::internal(format!("reading {shown}: {e}")))?;
    Ok((row, bytes))
}

pub async fn file(State(st): St, ApiPath(v): ApiPath) -> Result<Response, ApiError> {
    let (row, bytes) = read_stored(&st, &v, false).await?;
    let format = Format::parse(&row.format).unwrap_or(Format::Pdf);
    let name = format!("rencana-pemulihan-bencana-v{}-{}.{}", row.version, row.lang, format.ext());
    Ok((
        [
            (header::CONTENT_TYPE, format.content_type().to_owned()),
            (header::CONTENT_DISPOSITION, format!("attachment; filename=\"{name}\"")),
        ],
        bytes,
    )
        .into_response())
}

pub async fn content(State(st): St, ApiPath(v): ApiPath) -> Result<Response, ApiError> {
    let (_, bytes) = read_stored(&st, &v, true).await?;
    Ok(([(header::CONTENT_TYPE, "application/json")], bytes).into_response())
}

pub async fn approve(
    State(st): St,
    Extension(caller): Extension<Caller>,
    ApiPath(v): ApiPath,
    ApiJson(req): ApiJson<DrpApproveRequest>,
) -> Result<Json<DrpVersionRow>, ApiError> {
    let v = version_of(&v)?;
    let (name, position) = (req.name.trim().to_owned(), req.position.trim().to_owned());
    if name.is_empty() || position.is_empty() || name.len() > 200 || position.len() > 200 {
        return Err(ApiError::invalid("name and position are required (at most 200 characters each)"));
    }
    let org = settings(&st)?.organisation()?;
    let now = now_secs();
    let next = now + org.document.review_period_secs;
    let entry = NewAudit::new(
        &caller.actor(),
        "drp-approve",
        &format!("version {v}"),
        json!({"name": name, "position": position, "next_review": next}),
    );
    let row = st.db(move |c| Ok(c.audited(&entry, |c| c.drp_approve(v, &name, &position, now, next))?)).await?;
    Ok(Json(row))
}
