//! API handlers of failover, failback and the standby job queue. The work
//! is [`crate::failover`]; a request waits for the whole run (the agents
//! must poll) and returns its record, failed or not.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Extension, State};
use axum::Json;
use serde::{Deserialize, Serialize};

use super::{ApiError, ApiJson, ApiPath, ApiQuery, ApiState, Caller};
use crate::catalog::{FailoverRow, JobRow};
use crate::failover::{self, FailoverError, Waits};
use crate::systems::Systems;

type Api<T> = Result<Json<T>, ApiError>;
type St = State<Arc<ApiState>>;

/// `POST /api/v1/failover` and `POST /api/v1/failback`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailoverRequest {
    /// System name.
    pub system: String,
    /// Failover: the standby agent (default: the system's `[restore] standby`).
    /// Failback: the rebuilt primary's agent (required).
    #[serde(default)]
    pub to: Option<String>,
    /// An agent that does not ask for a job within this many seconds fails the run (default 120).
    #[serde(default)]
    pub pickup_timeout_secs: Option<u64>,
}

/// `GET /api/v1/standby-jobs?agent=`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobsQuery {
    #[serde(default)]
    pub agent: Option<String>,
    #[serde(default)]
    pub limit: Option<u32>,
}

impl From<FailoverError> for ApiError {
    fn from(e: FailoverError) -> Self {
        match e {
            FailoverError::NotFound(m) => ApiError::not_found(m),
            FailoverError::Invalid(m) => ApiError::invalid(m),
            FailoverError::Catalog(c) => c.into(),
            other => ApiError::internal(other.to_string()),
        }
    }
}

async fn run(st: Arc<ApiState>, caller: Caller, req: FailoverRequest, back: bool) -> Api<FailoverRow> {
    if back && req.to.is_none() {
        return Err(ApiError::bad_request("failback needs `to`: the rebuilt primary's agent"));
    }
    let dir = st.systems_dir.clone();
    let waits =
        Waits { pickup: Duration::from_secs(req.pickup_timeout_secs.unwrap_or(120).max(1)), ..Default::default() };
    let actor = caller.actor();
    let backend = st.backend.clone();
    let row = tokio::task::spawn_blocking(move || -> Result<FailoverRow, ApiError> {
        let systems = Systems::load(&dir).map_err(|e| ApiError::invalid(e.to_string()))?;
        let (cat, store) = (&backend.catalog, &backend.store);
        Ok(if back {
            failover::failback(cat, store, &systems, &req.system, req.to.as_deref().unwrap_or_default(), &actor, waits)?
        } else {
            failover::failover(cat, store, &systems, &req.system, req.to.as_deref(), &actor, waits)?
        })
    })
    .await
    .map_err(|e| ApiError::internal(format!("failover task failed: {e}")))??;
    Ok(Json(row))
}

pub async fn failover(
    State(st): St,
    Extension(caller): Extension<Caller>,
    ApiJson(req): ApiJson<FailoverRequest>,
) -> Api<FailoverRow> {
    run(st, caller, req, false).await
}

pub async fn failback(
    State(st): St,
    Extension(caller): Extension<Caller>,
    ApiJson(req): ApiJson<FailoverRequest>,
) -> Api<FailoverRow> {
    run(st, caller, req, true).await
}

pub async fn failovers(State(st): St) -> Api<Vec<FailoverRow>> {
    Ok(Json(st.db(|c| Ok(c.failovers(None)?)).await?))
}

pub async fn failover_one(State(st): St, ApiPath(id): ApiPath) -> Api<FailoverRow> {
    let id: i64 = id.parse().map_err(|_| ApiError::bad_request(format!("{id:?} is not a failover number")))?;
    st.db(move |c| Ok(c.failover(id)?))
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("no failover #{id}")))
}

pub async fn jobs(State(st): St, ApiQuery(q): ApiQuery<JobsQuery>) -> Api<Vec<JobRow>> {
    let limit = q.limit.unwrap_or(100).min(1000);
    Ok(Json(st.db(move |c| Ok(c.jobs(q.agent.as_deref(), limit)?)).await?))
}
