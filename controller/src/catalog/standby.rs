//! The standby job queue, the failover/failback record and where each
//! system runs (tables `standby_jobs`, `failovers`, `system_state`).
//!
//! A job is `queued` until its agent asks for work (`JobPoll`), then
//! `running` until the agent reports `JobDone` (`done` or `failed`). A job
//! not picked up before `expires_at` becomes `expired`, with a message that
//! names the agent: the usual cause is an agent without `[standby] enabled`.
//! The queue lives in the catalog, so a local `pulih-controller failover`
//! and the running `serve` (which talks to the agents) share it.

use pulih_core::protocol::{Destination, JobSpec};
use rusqlite::{params, OptionalExtension};
use serde::{Deserialize, Serialize};

use super::{now_secs, Catalog, CatalogError};

/// A job as queued (JSON in `standby_jobs.spec`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum JobRequest {
    /// Restore a snapshot: below the standby root (`below_root`) or onto
    /// the agent's own dataset path (`dataset`).
    Restore {
        snapshot: String,
        root: String,
        #[serde(default)]
        below_root: Option<String>,
        #[serde(default)]
        dataset: Option<String>,
        only_changed: bool,
        delete: bool,
    },
    RunAction {
        name: String,
        #[serde(default)]
        env: Vec<(String, String)>,
    },
    SnapshotNow {
        dataset: String,
    },
    Protect {
        dataset: String,
        relative_path: String,
        mode: String,
    },
    Unprotect {
        dataset: String,
    },
    /// Re-read a restored copy below the standby root (`below_root`) or at
    /// the agent's own dataset path (`dataset`) and compare it with the snapshot.
    Verify {
        snapshot: String,
        root: String,
        #[serde(default)]
        below_root: Option<String>,
        #[serde(default)]
        dataset: Option<String>,
    },
}

impl JobRequest {
    pub fn kind(&self) -> &'static str {
        match self {
            JobRequest::Restore { .. } => "restore",
            JobRequest::RunAction { .. } => "run-action",
            JobRequest::SnapshotNow { .. } => "snapshot-now",
            JobRequest::Protect { .. } => "protect",
            JobRequest::Unprotect { .. } => "unprotect",
            JobRequest::Verify { .. } => "verify",
        }
    }

    /// The wire form.
    pub fn to_spec(&self) -> Result<JobSpec, CatalogError> {
        let bad = |e: String| CatalogError::Invalid(e);
        let destination = |below_root: Option<String>, dataset: Option<String>| match (below_root, dataset) {
            (Some(p), None) => Ok(Destination::BelowRoot(p)),
            (None, Some(d)) => Ok(Destination::DatasetPath(d)),
            _ => Err(bad(format!("a {} job needs exactly one of below_root and dataset", self.kind()))),
        };
        Ok(match self.clone() {
            JobRequest::Restore { snapshot, root, below_root, dataset, only_changed, delete } => JobSpec::Restore {
                snapshot: snapshot.parse().map_err(|e| bad(format!("snapshot {snapshot}: {e}")))?,
                root: root.parse().map_err(|e| bad(format!("tree {root}: {e}")))?,
                destination: destination(below_root, dataset)?,
                only_changed,
                delete,
            },
            JobRequest::Verify { snapshot, root, below_root, dataset } => JobSpec::Verify {
                snapshot: snapshot.parse().map_err(|e| bad(format!("snapshot {snapshot}: {e}")))?,
                root: root.parse().map_err(|e| bad(format!("tree {root}: {e}")))?,
                destination: destination(below_root, dataset)?,
            },
            JobRequest::RunAction { name, env } => JobSpec::RunAction { name, env },
            JobRequest::SnapshotNow { dataset } => JobSpec::SnapshotNow { dataset },
            JobRequest::Protect { dataset, relative_path, mode } => JobSpec::Protect { dataset, relative_path, mode },
            JobRequest::Unprotect { dataset } => JobSpec::Unprotect { dataset },
        })
    }
}

/// A job as listed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobRow {
    pub id: i64,
    pub agent: String,
    pub kind: String,
    pub spec: JobRequest,
    /// `queued`, `running`, `done`, `failed` or `expired`.
    pub state: String,
    pub created_at: i64,
    pub expires_at: i64,
    pub picked_at: Option<i64>,
    pub finished_at: Option<i64>,
    pub message: Option<String>,
    /// JSON the agent reported (restore statistics, snapshot id).
    pub result: Option<serde_json::Value>,
    pub failover_id: Option<i64>,
    pub created_by: String,
}

/// A failover or failback as recorded.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FailoverRow {
    pub id: i64,
    pub system: String,
    /// `failover` or `failback`.
    pub kind: String,
    pub target_agent: String,
    pub actor: String,
    pub started_at: i64,
    pub ended_at: Option<i64>,
    /// `running`, `succeeded` or `failed`.
    pub outcome: String,
    pub rto_achieved_secs: Option<i64>,
    pub rpo_achieved_secs: Option<i64>,
    pub snapshots: serde_json::Value,
    pub steps: serde_json::Value,
    pub error: Option<String>,
}

/// Where a system runs now.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SystemStateRow {
    pub system: String,
    pub running_at: String,
    pub since: i64,
    pub last_failover_id: Option<i64>,
}

const JOB_COLS: &str =
    "id, agent, kind, spec, state, created_at, expires_at, picked_at, finished_at, message, result, failover_id, created_by";

fn job_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<JobRow> {
    let spec: String = r.get(3)?;
    let result: Option<String> = r.get(10)?;
    Ok(JobRow {
        id: r.get(0)?,
        agent: r.get(1)?,
        kind: r.get(2)?,
        spec: serde_json::from_str(&spec)
            .map_err(|e| rusqlite::Error::FromSqlConversionFailure(3, rusqlite::types::Type::Text, Box::new(e)))?,
        state: r.get(4)?,
        created_at: r.get(5)?,
        expires_at: r.get(6)?,
        picked_at: r.get(7)?,
        finished_at: r.get(8)?,
        message: r.get(9)?,
        result: result.and_then(|t| serde_json::from_str(&t).ok()),
        failover_id: r.get(11)?,
        created_by: r.get(12)?,
    })
}

const FAILOVER_COLS: &str = "id, system, kind, target_agent, actor, started_at, ended_at, outcome, \
     rto_achieved_secs, rpo_achieved_secs, snapshots, steps, error";

fn failover_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<FailoverRow> {
    let json = |i: usize| -> rusqlite::Result<serde_json::Value> {
        let t: String = r.get(i)?;
        Ok(serde_json::from_str(&t).unwrap_or(serde_json::Value::Null))
    };
    Ok(FailoverRow {
        id: r.get(0)?,
        system: r.get(1)?,
        kind: r.get(2)?,
        target_agent: r.get(3)?,
        actor: r.get(4)?,
        started_at: r.get(5)?,
        ended_at: r.get(6)?,
        outcome: r.get(7)?,
        rto_achieved_secs: r.get(8)?,
        rpo_achieved_secs: r.get(9)?,
        snapshots: json(10)?,
        steps: json(11)?,
        error: r.get(12)?,
    })
}

impl Catalog {
    /// Queues a job for `agent`; it expires `ttl_secs` from now if the agent
    /// does not ask for it.
    pub fn queue_job(
        &self,
        agent: &str,
        job: &JobRequest,
        ttl_secs: i64,
        failover_id: Option<i64>,
        created_by: &str,
    ) -> Result<i64, CatalogError> {
        job.to_spec()?;
        let now = now_secs();
        let spec = serde_json::to_string(job).map_err(|e| CatalogError::Invalid(e.to_string()))?;
        self.conn.execute(
            "INSERT INTO standby_jobs (agent, kind, spec, state, created_at, expires_at, failover_id, created_by)
             VALUES (?1, ?2, ?3, 'queued', ?4, ?5, ?6, ?7)",
            params![agent, job.kind(), spec, now, now + ttl_secs, failover_id, created_by],
        )?;
        Ok(self.conn.last_insert_rowid())
    }

    /// Marks queued jobs past their deadline as expired; returns how many.
    pub fn expire_jobs(&self) -> Result<usize, CatalogError> {
        let now = now_secs();
        Ok(self.conn.execute(
            "UPDATE standby_jobs SET state = 'expired', finished_at = ?1,
                 message = 'agent ' || agent || ' has not asked for work for ' || (?1 - created_at)
                    || ' s: is pulih-agent run active with [standby] enabled?'
             WHERE state = 'queued' AND expires_at <= ?1",
            params![now],
        )?)
    }

    /// Hands the oldest queued job of `agent` out (it becomes `running`).
    pub fn take_job(&self, agent: &str) -> Result<Option<JobRow>, CatalogError> {
        self.expire_jobs()?;
        let id: Option<i64> = self
            .conn
            .query_row(
                "SELECT id FROM standby_jobs WHERE agent = ?1 AND state = 'queued' ORDER BY id LIMIT 1",
                params![agent],
                |r| r.get(0),
            )
            .optional()?;
        let Some(id) = id else { return Ok(None) };
        self.conn.execute(
            "UPDATE standby_jobs SET state = 'running', picked_at = ?2 WHERE id = ?1 AND state = 'queued'",
            params![id, now_secs()],
        )?;
        self.job(id)
    }

    /// Records the end of a job `agent` was running. A job of another agent,
    /// or not running, is refused.
    pub fn finish_job(
        &self,
        agent: &str,
        id: i64,
        ok: bool,
        message: &str,
        result: Option<&serde_json::Value>,
    ) -> Result<(), CatalogError> {
        let n = self.conn.execute(
            "UPDATE standby_jobs SET state = ?3, finished_at = ?4, message = ?5, result = ?6
             WHERE id = ?1 AND agent = ?2 AND state = 'running'",
            params![id, agent, if ok { "done" } else { "failed" }, now_secs(), message, result.map(|v| v.to_string())],
        )?;
        if n == 0 {
            return Err(CatalogError::Invalid(format!("job {id} is not a running job of agent {agent}")));
        }
        Ok(())
    }

    /// Marks a running job failed from the controller's side (the agent's
    /// session ended before it reported).
    pub fn abandon_job(&self, id: i64, why: &str) -> Result<(), CatalogError> {
        self.conn.execute(
            "UPDATE standby_jobs SET state = 'failed', finished_at = ?2, message = ?3 WHERE id = ?1 AND state = 'running'",
            params![id, now_secs(), why],
        )?;
        Ok(())
    }

    pub fn job(&self, id: i64) -> Result<Option<JobRow>, CatalogError> {
        Ok(self
            .conn
            .query_row(&format!("SELECT {JOB_COLS} FROM standby_jobs WHERE id = ?1"), params![id], job_row)
            .optional()?)
    }

    /// Jobs, newest first, optionally of one agent.
    pub fn jobs(&self, agent: Option<&str>, limit: u32) -> Result<Vec<JobRow>, CatalogError> {
        let mut st = self.conn.prepare(&format!(
            "SELECT {JOB_COLS} FROM standby_jobs WHERE (?1 IS NULL OR agent = ?1) ORDER BY id DESC LIMIT ?2"
        ))?;
        let rows = st.query_map(params![agent, limit], job_row)?.collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    // --- failovers -----------------------------------------------------------

    /// Starts the record of a failover or failback.
    pub fn begin_failover(&self, system: &str, kind: &str, target: &str, actor: &str) -> Result<i64, CatalogError> {
        self.conn.execute(
            "INSERT INTO failovers (system, kind, target_agent, actor, started_at, outcome) VALUES (?1, ?2, ?3, ?4, ?5, 'running')",
            params![system, kind, target, actor, now_secs()],
        )?;
        Ok(self.conn.last_insert_rowid())
    }

    /// Saves the steps and snapshots so far (so a crash leaves a record).
    pub fn update_failover(
        &self,
        id: i64,
        steps: &serde_json::Value,
        snapshots: &serde_json::Value,
    ) -> Result<(), CatalogError> {
        self.conn.execute(
            "UPDATE failovers SET steps = ?2, snapshots = ?3 WHERE id = ?1",
            params![id, steps.to_string(), snapshots.to_string()],
        )?;
        Ok(())
    }

    /// Ends the record.
    pub fn end_failover(
        &self,
        id: i64,
        ok: bool,
        rto: Option<i64>,
        rpo: Option<i64>,
        error: Option<&str>,
    ) -> Result<(), CatalogError> {
        self.conn.execute(
            "UPDATE failovers SET ended_at = ?2, outcome = ?3, rto_achieved_secs = ?4, rpo_achieved_secs = ?5, error = ?6
             WHERE id = ?1",
            params![id, now_secs(), if ok { "succeeded" } else { "failed" }, rto, rpo, error],
        )?;
        Ok(())
    }

    pub fn failover(&self, id: i64) -> Result<Option<FailoverRow>, CatalogError> {
        Ok(self
            .conn
            .query_row(&format!("SELECT {FAILOVER_COLS} FROM failovers WHERE id = ?1"), params![id], failover_row)
            .optional()?)
    }

    /// Failovers and failbacks, newest first.
    pub fn failovers(&self, system: Option<&str>) -> Result<Vec<FailoverRow>, CatalogError> {
        let mut st = self.conn.prepare(&format!(
            "SELECT {FAILOVER_COLS} FROM failovers WHERE (?1 IS NULL OR system = ?1) ORDER BY id DESC"
        ))?;
        let rows = st.query_map(params![system], failover_row)?.collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// Records that `system` now runs at `agent`.
    pub fn set_system_running(&self, system: &str, agent: &str, failover_id: i64) -> Result<(), CatalogError> {
        self.conn.execute(
            "INSERT INTO system_state (system, running_at, since, last_failover_id) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (system) DO UPDATE SET running_at = ?2, since = ?3, last_failover_id = ?4",
            params![system, agent, now_secs(), failover_id],
        )?;
        Ok(())
    }

    pub fn system_state(&self, system: &str) -> Result<Option<SystemStateRow>, CatalogError> {
        Ok(self
            .conn
            .query_row(
                "SELECT system, running_at, since, last_failover_id FROM system_state WHERE system = ?1",
                params![system],
                |r| {
                    Ok(SystemStateRow {
                        system: r.get(0)?,
                        running_at: r.get(1)?,
                        since: r.get(2)?,
                        last_failover_id: r.get(3)?,
                    })
                },
            )
            .optional()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_are_handed_to_their_agent_once_and_expire_with_a_clear_message() {
        let dir = tempfile::tempdir().unwrap();
        let cat = Catalog::create(&dir.path().join("c.db"), "drc").unwrap();
        let job = JobRequest::RunAction { name: "start".into(), env: vec![] };
        let id = cat.queue_job("standby", &job, 3600, None, "local:test").unwrap();
        assert!(cat.take_job("other").unwrap().is_none());
        let got = cat.take_job("standby").unwrap().unwrap();
        assert_eq!((got.id, got.state.as_str(), &got.spec), (id, "running", &job));
        assert!(cat.take_job("standby").unwrap().is_none());
        assert!(cat.finish_job("other", id, true, "", None).is_err());
        cat.finish_job("standby", id, true, "ok", Some(&serde_json::json!({"a": 1}))).unwrap();
        assert_eq!(cat.job(id).unwrap().unwrap().state, "done");
        let late = cat.queue_job("standby", &job, 0, None, "local:test").unwrap();
        assert_eq!(cat.expire_jobs().unwrap(), 1);
        let row = cat.job(late).unwrap().unwrap();
        assert_eq!(row.state, "expired");
        let msg = row.message.unwrap();
        assert!(msg.contains("agent standby has not asked for work") && msg.contains("[standby] enabled"), "{msg}");
    }
}
