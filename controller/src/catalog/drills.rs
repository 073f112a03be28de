//! Catalog side of failover drills: the run (`drills`), each system drilled
//! in it (`drill_systems`) and every step (`drill_steps`). The drill engine
//! ([`crate::drill`]) writes these as it goes, so a drill interrupted by a
//! crash still shows how far it got (its rows stay `running`; the next
//! start of the engine closes them as failed, see [`Catalog::drills_close_stale`]).

use rusqlite::{params, OptionalExtension, Row};

use super::{Catalog, CatalogError};

/// One snapshot a drill restored.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SnapshotUsed {
    pub agent: String,
    pub dataset: String,
    pub subdir: String,
    pub snapshot: String,
    /// Start of the snapshot (its data time), Unix nanoseconds.
    pub started_ns: i64,
}

/// A drill run.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct DrillRow {
    pub id: i64,
    /// `manual` or `scheduled`.
    pub trigger: String,
    /// `token:NAME`, `local:USER` or `scheduler`.
    pub actor: String,
    /// What was asked (JSON text).
    pub request: String,
    pub started_ns: i64,
    pub ended_ns: Option<i64>,
    /// `running`, `passed`, `partial` or `failed`.
    pub outcome: String,
}

/// One system of a drill.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct DrillSystemRow {
    pub drill_id: i64,
    pub system: String,
    pub title: String,
    pub opd: String,
    pub owner: Option<String>,
    pub restore_place: String,
    pub snapshots: Vec<SnapshotUsed>,
    pub bytes_restored: u64,
    pub files_restored: u64,
    pub verify_result: Option<String>,
    pub rto_achieved_secs: Option<f64>,
    pub rpo_achieved_secs: Option<f64>,
    pub rto_target_secs: i64,
    pub rpo_target_secs: i64,
    pub outcome: String,
    pub reasons: Vec<String>,
    pub ended_ns: Option<i64>,
}

/// One step of a drill.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct DrillStepRow {
    pub seq: i64,
    pub system: String,
    /// `restore`, `verify`, `check`, `activation` or `teardown`.
    pub kind: String,
    pub name: String,
    pub started_ns: i64,
    pub ended_ns: Option<i64>,
    /// `running`, `passed`, `failed` or `skipped`.
    pub outcome: String,
    pub output: String,
}

fn drill_row(r: &Row<'_>) -> rusqlite::Result<DrillRow> {
    Ok(DrillRow {
        id: r.get(0)?,
        trigger: r.get(1)?,
        actor: r.get(2)?,
        request: r.get(3)?,
        started_ns: r.get(4)?,
        ended_ns: r.get(5)?,
        outcome: r.get(6)?,
    })
}

const DRILL_COLS: &str = "id, trigger, actor, request, started_ns, ended_ns, outcome";
const SYSTEM_COLS: &str =
    "drill_id, system, title, opd, owner, restore_place, snapshots, bytes_restored, files_restored,
    verify_result, rto_achieved_secs, rpo_achieved_secs, rto_target_secs, rpo_target_secs, outcome, reasons, ended_ns";

fn system_row(r: &Row<'_>) -> rusqlite::Result<DrillSystemRow> {
    let snaps: String = r.get(6)?;
    let reasons: String = r.get(15)?;
    Ok(DrillSystemRow {
        drill_id: r.get(0)?,
        system: r.get(1)?,
        title: r.get(2)?,
        opd: r.get(3)?,
        owner: r.get(4)?,
        restore_place: r.get(5)?,
        snapshots: serde_json::from_str(&snaps).unwrap_or_default(),
        bytes_restored: r.get::<_, i64>(7)? as u64,
        files_restored: r.get::<_, i64>(8)? as u64,
        verify_result: r.get(9)?,
        rto_achieved_secs: r.get(10)?,
        rpo_achieved_secs: r.get(11)?,
        rto_target_secs: r.get(12)?,
        rpo_target_secs: r.get(13)?,
        outcome: r.get(14)?,
        reasons: serde_json::from_str(&reasons).unwrap_or_default(),
        ended_ns: r.get(16)?,
    })
}

impl Catalog {
    /// Records the start of a drill; returns its id.
    pub fn drill_begin(
        &self,
        trigger: &str,
        actor: &str,
        request: &serde_json::Value,
        started_ns: i64,
    ) -> Result<i64, CatalogError> {
        self.conn.execute(
            "INSERT INTO drills (trigger, actor, request, started_ns, outcome) VALUES (?1, ?2, ?3, ?4, 'running')",
            params![trigger, actor, request.to_string(), started_ns],
        )?;
        Ok(self.conn.last_insert_rowid())
    }

    /// Records the end of a drill.
    pub fn drill_end(&self, id: i64, outcome: &str, ended_ns: i64) -> Result<(), CatalogError> {
        self.conn
            .execute("UPDATE drills SET outcome = ?2, ended_ns = ?3 WHERE id = ?1", params![id, outcome, ended_ns])?;
        Ok(())
    }

    /// Drills left `running` by a controller that stopped mid-drill are
    /// closed as failed (with a reason on each unfinished system).
    pub fn drills_close_stale(&self, now_ns: i64) -> Result<usize, CatalogError> {
        let why = serde_json::json!(["the controller stopped during the drill"]).to_string();
        self.conn.execute(
            "UPDATE drill_systems SET outcome = 'failed', reasons = ?1, ended_ns = ?2 WHERE outcome = 'running'",
            params![why, now_ns],
        )?;
        self.conn.execute(
            "UPDATE drill_steps SET outcome = 'failed', ended_ns = ?1 WHERE outcome = 'running'",
            params![now_ns],
        )?;
        Ok(self.conn.execute(
            "UPDATE drills SET outcome = 'failed', ended_ns = ?1 WHERE outcome = 'running'",
            params![now_ns],
        )?)
    }

    /// Writes (inserts or replaces) a system's row of a drill.
    pub fn drill_system_put(&self, row: &DrillSystemRow) -> Result<(), CatalogError> {
        self.conn.execute(
            &format!(
                "INSERT OR REPLACE INTO drill_systems ({SYSTEM_COLS})
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)"
            ),
            params![
                row.drill_id,
                row.system,
                row.title,
                row.opd,
                row.owner,
                row.restore_place,
                serde_json::to_string(&row.snapshots).unwrap_or_else(|_| "[]".into()),
                row.bytes_restored as i64,
                row.files_restored as i64,
                row.verify_result,
                row.rto_achieved_secs,
                row.rpo_achieved_secs,
                row.rto_target_secs,
                row.rpo_target_secs,
                row.outcome,
                serde_json::to_string(&row.reasons).unwrap_or_else(|_| "[]".into()),
                row.ended_ns,
            ],
        )?;
        Ok(())
    }

    /// Starts a step; returns its sequence number within the drill (steps
    /// of systems running in parallel interleave in the order they began).
    pub fn drill_step_begin(
        &self,
        drill_id: i64,
        system: &str,
        kind: &str,
        name: &str,
        started_ns: i64,
    ) -> Result<i64, CatalogError> {
        Ok(self.conn.query_row(
            "INSERT INTO drill_steps (drill_id, seq, system, kind, name, started_ns, outcome)
             VALUES (?1, (SELECT coalesce(max(seq), 0) + 1 FROM drill_steps WHERE drill_id = ?1), ?2, ?3, ?4, ?5, 'running')
             RETURNING seq",
            params![drill_id, system, kind, name, started_ns],
            |r| r.get(0),
        )?)
    }

    /// Ends a step.
    pub fn drill_step_end(
        &self,
        drill_id: i64,
        seq: i64,
        outcome: &str,
        output: &str,
        ended_ns: i64,
    ) -> Result<(), CatalogError> {
        self.conn.execute(
            "UPDATE drill_steps SET outcome = ?3, output = ?4, ended_ns = ?5 WHERE drill_id = ?1 AND seq = ?2",
            params![drill_id, seq, outcome, output, ended_ns],
        )?;
        Ok(())
    }

    /// Drills, newest first.
    pub fn drills(&self, limit: u32) -> Result<Vec<DrillRow>, CatalogError> {
        let mut st = self.conn.prepare(&format!("SELECT {DRILL_COLS} FROM drills ORDER BY id DESC LIMIT ?1"))?;
        let rows = st.query_map([limit], drill_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// One drill.
    pub fn drill(&self, id: i64) -> Result<DrillRow, CatalogError> {
        self.conn
            .query_row(&format!("SELECT {DRILL_COLS} FROM drills WHERE id = ?1"), [id], drill_row)
            .optional()?
            .ok_or_else(|| CatalogError::NotFound(format!("no drill with id {id}")))
    }

    /// The systems of a drill, in the order they were started.
    pub fn drill_systems(&self, drill_id: i64) -> Result<Vec<DrillSystemRow>, CatalogError> {
        let mut st = self
            .conn
            .prepare(&format!("SELECT {SYSTEM_COLS} FROM drill_systems WHERE drill_id = ?1 ORDER BY rowid"))?;
        let rows = st.query_map([drill_id], system_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The steps of a drill, in order.
    pub fn drill_steps(&self, drill_id: i64) -> Result<Vec<DrillStepRow>, CatalogError> {
        let mut st = self.conn.prepare(
            "SELECT seq, system, kind, name, started_ns, ended_ns, outcome, output FROM drill_steps
             WHERE drill_id = ?1 ORDER BY seq",
        )?;
        let rows = st.query_map([drill_id], |r| {
            Ok(DrillStepRow {
                seq: r.get(0)?,
                system: r.get(1)?,
                kind: r.get(2)?,
                name: r.get(3)?,
                started_ns: r.get(4)?,
                ended_ns: r.get(5)?,
                outcome: r.get(6)?,
                output: r.get(7)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The newest finished drill of `system` whose outcome is one of
    /// `outcomes` (all finished outcomes when empty).
    pub fn last_system_drill(&self, system: &str, outcomes: &[&str]) -> Result<Option<DrillSystemRow>, CatalogError> {
        let mut st = self.conn.prepare(&format!(
            "SELECT {SYSTEM_COLS} FROM drill_systems WHERE system = ?1 AND outcome != 'running'
             ORDER BY drill_id DESC"
        ))?;
        let mut rows = st.query_map([system], system_row)?;
        for r in rows.by_ref() {
            let r = r?;
            if outcomes.is_empty() || outcomes.contains(&r.outcome.as_str()) {
                return Ok(Some(r));
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_drill_records_systems_and_ordered_steps() {
        let dir = tempfile::tempdir().unwrap();
        let cat = Catalog::create(&dir.path().join("c.db"), "drc").unwrap();
        let id = cat.drill_begin("manual", "token:alice", &serde_json::json!({"all": true}), 1).unwrap();
        let mut row = DrillSystemRow {
            drill_id: id,
            system: "simpeg".into(),
            title: "SIMPEG".into(),
            opd: "BKPSDM".into(),
            owner: None,
            restore_place: "sandbox".into(),
            snapshots: vec![],
            bytes_restored: 0,
            files_restored: 0,
            verify_result: None,
            rto_achieved_secs: None,
            rpo_achieved_secs: None,
            rto_target_secs: 3600,
            rpo_target_secs: 900,
            outcome: "running".into(),
            reasons: vec![],
            ended_ns: None,
        };
        cat.drill_system_put(&row).unwrap();
        assert_eq!(cat.drill_step_begin(id, "simpeg", "restore", "restore", 2).unwrap(), 1);
        assert_eq!(cat.drill_step_begin(id, "simpeg", "verify", "verify", 3).unwrap(), 2);
        cat.drill_step_end(id, 1, "passed", "ok", 4).unwrap();
        row.outcome = "passed".into();
        row.rto_achieved_secs = Some(12.5);
        cat.drill_system_put(&row).unwrap();
        assert_eq!(cat.last_system_drill("simpeg", &["passed"]).unwrap().unwrap().rto_achieved_secs, Some(12.5));
        assert!(cat.last_system_drill("simpeg", &["failed"]).unwrap().is_none());
        // A controller that stopped mid-drill leaves rows running: closed as failed.
        assert_eq!(cat.drills_close_stale(9).unwrap(), 1);
        assert_eq!(cat.drill(id).unwrap().outcome, "failed");
        assert_eq!(cat.drill_steps(id).unwrap()[1].outcome, "failed");
        assert_eq!(cat.drills(10).unwrap().len(), 1);
    }
}
