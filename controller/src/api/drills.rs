//! API of protected systems and failover drills (see [`crate::drill`]).
//! Drills run in the background: `POST /api/v1/drills` answers with the
//! drill id at once; `GET /api/v1/drills/{id}` shows its progress.

use std::sync::Arc;

use axum::extract::{Extension, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};

use super::{ApiError, ApiJson, ApiPath, ApiQuery, ApiState, Caller};
use crate::catalog::{DrillRow, DrillStepRow, DrillSystemRow};
use crate::drill::{schedule, DrillError, DrillRequest, Engine, Selection, Trigger};
use crate::drp::{self, Format, Lang};
use crate::systems::{DataClass, Owner, RestorePlace};

type St = State<Arc<ApiState>>;

/// A dataset of a system.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SystemDataset {
    pub agent: String,
    pub dataset: String,
    pub subdir: String,
}

/// A protected system as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SystemInfo {
    pub name: String,
    pub title: String,
    pub opd: String,
    pub owner: Option<Owner>,
    pub data_class: DataClass,
    pub tier: u8,
    pub depends_on: Vec<String>,
    pub rpo_target_secs: u64,
    pub rto_target_secs: u64,
    pub drill_every_secs: Option<u64>,
    pub datasets: Vec<SystemDataset>,
    /// `sandbox` or `standby AGENT:PATH`.
    pub restore: String,
    pub health_checks: usize,
    pub teardown_steps: usize,
    /// The newest finished drill of the system.
    pub last_drill: Option<DrillSystemRow>,
    /// Whether a scheduled drill is overdue; `null` without `drill_every`.
    pub overdue: Option<bool>,
}

/// `POST /api/v1/drills`: exactly one of `systems`, `opd`, `all`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrillStartRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub systems: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub opd: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub all: Option<bool>,
    /// Snapshot id or unique prefix of one of the drilled datasets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
    /// RFC 3339 time: restore the newest snapshot at or before it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub as_of: Option<String>,
}

/// The answer to a drill start.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DrillStarted {
    pub id: i64,
}

/// A drill with its systems and steps.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DrillDetail {
    pub drill: DrillRow,
    pub systems: Vec<DrillSystemRow>,
    pub steps: Vec<DrillStepRow>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrillsQuery {
    pub limit: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportQuery {
    pub format: Option<String>,
    pub lang: Option<String>,
}

fn engine(st: &ApiState) -> Result<Arc<Engine>, ApiError> {
    st.drills.clone().ok_or_else(|| {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "drills are not available on this controller")
    })
}

impl From<DrillError> for ApiError {
    fn from(e: DrillError) -> Self {
        match e {
            DrillError::Busy(_) => ApiError::conflict(e.to_string()),
            DrillError::Systems(_) | DrillError::Selection(_) => ApiError::invalid(e.to_string()),
            DrillError::Catalog(c) => c.into(),
            other => ApiError::internal(other.to_string()),
        }
    }
}

fn drill_id(s: &str) -> Result<i64, ApiError> {
    s.parse::<i64>().ok().filter(|n| *n > 0).ok_or_else(|| {
        ApiError::bad_request(format!(
            "{:?} is not a drill id (a positive number)",
            s.chars().take(40).collect::<String>()
        ))
    })
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, ApiError> + Send + 'static) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| ApiError::internal(format!("drill task failed: {e}")))?
}

pub async fn systems(State(st): St) -> Result<Json<Vec<SystemInfo>>, ApiError> {
    let engine = engine(&st)?;
    let out = blocking(move || {
        let systems =
            engine.systems().map_err(|e| ApiError::invalid(format!("the systems definitions are invalid: {e}")))?;
        let cat = crate::catalog::Catalog::open(&engine.catalog_path)?;
        let now = pulih_core::now_ns();
        let mut out = Vec::new();
        for s in systems.in_order() {
            out.push(SystemInfo {
                name: s.name.to_string(),
                title: s.title.clone(),
                opd: s.opd.clone(),
                owner: s.owner.clone(),
                data_class: s.data_class,
                tier: s.tier,
                depends_on: s.depends_on.iter().map(|d| d.to_string()).collect(),
                rpo_target_secs: s.rpo_target.as_secs(),
                rto_target_secs: s.rto_target.as_secs(),
                drill_every_secs: s.drill_every.map(|d| d.as_secs()),
                datasets: s
                    .datasets
                    .iter()
                    .map(|d| SystemDataset {
                        agent: d.agent.to_string(),
                        dataset: d.dataset.to_string(),
                        subdir: d.subdir.clone(),
                    })
                    .collect(),
                restore: match &s.restore {
                    RestorePlace::Sandbox => "sandbox".into(),
                    RestorePlace::Standby { agent, path } => format!("standby {agent}:{}", path.display()),
                },
                health_checks: s.health_checks.len(),
                teardown_steps: s.teardown.len(),
                last_drill: cat.last_system_drill(s.name.as_str(), &[])?,
                overdue: schedule::overdue(&cat, s, now)?,
            });
        }
        Ok(out)
    })
    .await?;
    Ok(Json(out))
}

pub async fn start(
    State(st): St,
    Extension(caller): Extension<Caller>,
    ApiJson(req): ApiJson<DrillStartRequest>,
) -> Result<(StatusCode, Json<DrillStarted>), ApiError> {
    let engine = engine(&st)?;
    let given = usize::from(req.systems.is_some()) + usize::from(req.opd.is_some()) + usize::from(req.all.is_some());
    let selection = match (&req.systems, &req.opd, req.all) {
        _ if given != 1 => {
            return Err(ApiError::invalid("give exactly one of \"systems\": [names], \"opd\": NAME or \"all\": true"))
        }
        (Some(s), _, _) if s.is_empty() || s.len() > 1000 => {
            return Err(ApiError::invalid("\"systems\" must name 1 to 1000 systems"))
        }
        (Some(s), _, _) => Selection::Systems(s.clone()),
        (_, Some(o), _) => Selection::Opd(o.clone()),
        (_, _, Some(true)) => Selection::All,
        _ => return Err(ApiError::invalid("\"all\" must be true when given")),
    };
    if req.snapshot.is_some() && req.as_of.is_some() {
        return Err(ApiError::invalid("give \"snapshot\" or \"as_of\", not both"));
    }
    if let Some(s) = &req.snapshot {
        if !(4..=64).contains(&s.len()) || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ApiError::bad_request("snapshot must be an id or a prefix of 4 to 64 hex digits"));
        }
    }
    let as_of_ns = match &req.as_of {
        None => None,
        Some(t) => Some(parse_time(t).map_err(ApiError::invalid)?),
    };
    let request = DrillRequest { selection, snapshot: req.snapshot.clone(), as_of_ns };
    let actor = caller.actor();
    let id = blocking(move || Ok(engine.start(&request, Trigger::Manual, &actor)?)).await?;
    tracing::info!(drill = id, by = %caller.name, "drill started over the API");
    Ok((StatusCode::ACCEPTED, Json(DrillStarted { id })))
}

/// RFC 3339 time to Unix nanoseconds.
pub fn parse_time(t: &str) -> Result<i64, String> {
    time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
        .map(|d| d.unix_timestamp_nanos() as i64)
        .map_err(|e| format!("as_of {t:?} is not an RFC 3339 time (e.g. 2025-06-01T08:00:00+07:00): {e}"))
}

pub async fn list(State(st): St, ApiQuery(q): ApiQuery<DrillsQuery>) -> Result<Json<Vec<DrillRow>>, ApiError> {
    let limit = q.limit.unwrap_or(50);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::bad_request("limit must be between 1 and 1000"));
    }
    Ok(Json(st.db(move |c| Ok(c.drills(limit)?)).await?))
}

async fn detail(st: &ApiState, id: i64) -> Result<DrillDetail, ApiError> {
    st.db(move |c| Ok(DrillDetail { drill: c.drill(id)?, systems: c.drill_systems(id)?, steps: c.drill_steps(id)? }))
        .await
}

pub async fn show(State(st): St, ApiPath(id): ApiPath) -> Result<Json<DrillDetail>, ApiError> {
    Ok(Json(detail(&st, drill_id(&id)?).await?))
}

/// The drill report through the DR plan's drill template (`drill.md.j2`),
/// rendered on request and not recorded: Markdown (default), HTML or PDF.
pub async fn report(
    State(st): St,
    Extension(caller): Extension<Caller>,
    ApiPath(id): ApiPath,
    ApiQuery(q): ApiQuery<ReportQuery>,
) -> Result<Response, ApiError> {
    let id = drill_id(&id)?;
    let format = match q.format.as_deref().unwrap_or("md") {
        "md" | "markdown" => Format::Md,
        "html" => Format::Html,
        "pdf" => Format::Pdf,
        other => return Err(ApiError::bad_request(format!("format {other:?}: use md, html or pdf"))),
    };
    let lang = q.lang.as_deref().unwrap_or("id");
    let lang = Lang::parse(lang).ok_or_else(|| ApiError::bad_request(format!("lang {lang:?}: use id or en")))?;
    let settings = st.drp.clone().ok_or_else(|| {
        ApiError::not_found("drill reports need the DR plan settings ([drp] in controller.toml), which did not resolve")
    })?;
    let backend = st.backend.clone();
    let actor = caller.actor();
    let bytes = tokio::task::spawn_blocking(move || {
        let lock = || backend.catalog.lock().unwrap_or_else(|e| e.into_inner());
        drp::drill_report(lock, &settings, id, lang, format, &actor, crate::catalog::now_secs())
    })
    .await
    .map_err(|e| ApiError::internal(format!("drill report failed: {e}")))??;
    Ok(([(header::CONTENT_TYPE, format.content_type())], bytes).into_response())
}
