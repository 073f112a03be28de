//! Handlers of the storage lifecycle over the API: prune, forget, garbage
//! collection, scrub and damage. They call the same functions as the local
//! CLI ([`crate::lifecycle`]), so the API takes the same locks (the GC lock
//! of the data directory) and records the same audit rows, with the caller
//! as actor. Long work runs on the blocking pool on its own catalog
//! connection, never under the server's catalog mutex (uploads go on).

use std::sync::Arc;

use anyhow::Context;
use axum::extract::{Extension, State};
use axum::http::StatusCode;
use axum::Json;
use serde_json::json;

use super::handlers::{agent_name, dataset_name, snapshot_spec};
use super::types::*;
use super::{ApiError, ApiJson, ApiPath, ApiState, Caller};
use crate::catalog::NewAudit;
use crate::datadir::LockBusy;
use crate::lifecycle;

type Api<T> = Result<Json<T>, ApiError>;
type St = State<Arc<ApiState>>;

/// Scrub runs listed by `GET /api/v1/scrub`.
const SCRUB_RUNS_SHOWN: usize = 10;

/// An error of a lifecycle operation: 409 when a lock is busy, else 500.
fn failed(what: &str, e: &anyhow::Error) -> ApiError {
    if let Some(busy) = e.chain().find_map(|c| c.downcast_ref::<LockBusy>()) {
        return ApiError::conflict(format!("{what}: {busy}"));
    }
    ApiError::internal(format!("{what}: {}", pulih_core::report::chain(e.as_ref())))
}

async fn blocking<T: Send + 'static>(
    what: &'static str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| ApiError::internal(format!("{what} task failed: {e}")))
}

/// `POST /api/v1/prune`: the retention plan with the reasons per snapshot;
/// forgets the removed snapshots unless `dry_run`.
pub async fn prune(
    State(st): St,
    Extension(caller): Extension<Caller>,
    ApiJson(req): ApiJson<PruneRequest>,
) -> Api<PruneOutcome> {
    if let Some(a) = &req.agent {
        agent_name(a)?;
    }
    if let Some(d) = &req.dataset {
        dataset_name(d)?;
    }
    if req.dry_run && req.gc {
        return Err(ApiError::invalid("a dry run collects no garbage: give \"dry_run\" or \"gc\", not both"));
    }
    let dd = st.datadir.clone();
    let r = req.clone();
    let outcome = blocking("prune", move || {
        let mut o = lifecycle::prune(&dd, r.dry_run, r.agent.as_deref(), r.dataset.as_deref(), false)?;
        if r.gc {
            // Separate, so a busy GC lock says the snapshots were forgotten all the same.
            let report = lifecycle::collect(&dd, None, false).with_context(|| {
                format!("{} snapshot(s) were forgotten, but garbage collection did not run", o.removed.len())
            })?;
            o.gc = Some(report);
        }
        Ok::<_, anyhow::Error>(o)
    })
    .await?;
    if !req.dry_run {
        let removed = outcome.as_ref().map(|o| o.removed.clone()).unwrap_or_default();
        let detail = json!({ "agent": req.agent, "dataset": req.dataset, "removed": removed, "gc": req.gc });
        let entry = NewAudit::new(&caller.actor(), "prune", req.agent.as_deref().unwrap_or("*"), detail);
        let result = outcome.as_ref().map(|_| ()).map_err(|e| format!("{e:#}"));
        st.db(move |c| Ok(c.audit(&entry, &result)?)).await?;
        tracing::info!(by = %caller.name, removed = outcome.as_ref().map_or(0, |o| o.removed.len()), "pruned over the API");
    }
    Ok(Json(outcome.map_err(|e| failed("prune", &e))?))
}

/// `POST /api/v1/snapshots/{id}/forget`.
pub async fn forget(State(st): St, Extension(caller): Extension<Caller>, ApiPath(id): ApiPath) -> Api<ForgetResponse> {
    let spec = snapshot_spec(&id)?;
    let backend = st.backend.clone();
    let actor = caller.actor();
    // Quick catalog work (a row and a record file), done under the mutex;
    // then audited like the CLI's forget (an attempt on an unknown id too).
    let rows = st
        .db(move |c| {
            let res = c
                .resolve_snapshot(&spec, None, None)
                .and_then(|row| crate::retention::forget(c, &backend.store, &[row.id]));
            let ids: Vec<&str> = res.as_ref().map(|r| r.iter().map(|s| s.id.as_str()).collect()).unwrap_or_default();
            let entry = NewAudit::new(&actor, "forget", &spec, json!({ "snapshots": [spec], "forgotten": ids }));
            c.audit(&entry, &res)?;
            Ok(res?)
        })
        .await?;
    tracing::info!(by = %caller.name, snapshot = %id, "snapshot forgotten over the API");
    Ok(Json(ForgetResponse { forgotten: rows }))
}

/// `POST /api/v1/gc`: garbage collection with `[gc] grace`.
pub async fn gc(State(st): St, Extension(caller): Extension<Caller>) -> Api<GcReport> {
    let dd = st.datadir.clone();
    let report = blocking("garbage collection", move || lifecycle::collect(&dd, None, false)).await?;
    let entry = NewAudit::new(&caller.actor(), "gc", "store", lifecycle::gc_detail(&report));
    let result = report.as_ref().map(|_| ()).map_err(|e| format!("{e:#}"));
    st.db(move |c| Ok(c.audit(&entry, &result)?)).await?;
    Ok(Json(report.map_err(|e| failed("garbage collection", &e))?))
}

/// `POST /api/v1/scrub`: starts a scrub in the background (409 while one
/// runs in this controller); its end is audited with the caller as actor.
pub async fn scrub_start(
    State(st): St,
    Extension(caller): Extension<Caller>,
    ApiJson(req): ApiJson<ScrubRequest>,
) -> Result<(StatusCode, Json<ScrubStatus>), ApiError> {
    let rate = match &req.rate {
        Some(r) => crate::units::parse_size(r).map_err(|e| ApiError::invalid(format!("rate: {e}")))?,
        None => st.scrub_rate,
    };
    let rate = (rate > 0).then_some(rate);
    let actor = caller.actor();
    let slot = st
        .scrub
        .try_start(&actor, rate)
        .ok_or_else(|| ApiError::conflict("a scrub is already running; see GET /api/v1/scrub for its progress"))?;
    let (dd, tracker) = (st.datadir.clone(), st.scrub.clone());
    // Not awaited: the caller gets 202 at once. The task ends on its own or
    // at shutdown (the tracker's stop flag, polled between blobs); the
    // runtime waits for blocking tasks before the process exits.
    tokio::task::spawn_blocking(move || {
        let res = (|| -> anyhow::Result<crate::scrub::ScrubReport> {
            let store = dd.store()?;
            let mut cat = dd.catalog()?;
            Ok(crate::scrub::scrub_tracked(&store, &mut cat, rate, &|| tracker.stopping(), &slot.progress)?)
        })();
        drop(slot);
        let detail = res.as_ref().map_or(
            json!({}),
            |r| json!({ "damaged": r.damage.len(), "blobs_checked": r.blobs_checked, "run_id": r.run_id }),
        );
        let outcome = res.as_ref().map(|_| ()).map_err(|e| format!("{e:#}"));
        if let Err(e) = lifecycle::record(&dd, &actor, "scrub", "store", detail, &outcome) {
            tracing::warn!(error = %format!("{e:#}"), "a scrub started over the API could not be audited");
        }
        match res {
            Ok(r) => tracing::info!(by = %actor, damaged = r.damage.len(), "scrub started over the API finished"),
            Err(e) => tracing::warn!(by = %actor, error = %format!("{e:#}"), "scrub started over the API failed"),
        }
    });
    tracing::info!(by = %caller.name, "scrub started over the API");
    let current = st.scrub.now();
    let runs = st.db(|c| Ok(c.scrub_runs(SCRUB_RUNS_SHOWN)?)).await?;
    Ok((StatusCode::ACCEPTED, Json(ScrubStatus { current, runs })))
}

/// `GET /api/v1/scrub`: the running scrub's progress and the last runs.
pub async fn scrub_status(State(st): St) -> Api<ScrubStatus> {
    let current = st.scrub.now();
    let runs = st.db(|c| Ok(c.scrub_runs(SCRUB_RUNS_SHOWN)?)).await?;
    Ok(Json(ScrubStatus { current, runs }))
}

/// `GET /api/v1/damage`: damaged blobs (with their repair state) and the
/// snapshots marked damaged.
pub async fn damage(State(st): St) -> Api<DamageResponse> {
    Ok(Json(
        st.db(|c| {
            let blobs = c.damage()?;
            let snapshots = c.snapshots(None, None)?.into_iter().filter(|s| s.state == "damaged").collect();
            Ok(DamageResponse { blobs, snapshots })
        })
        .await?,
    ))
}
