//! What running agents tell the controller about themselves: dataset
//! targets and schedules (for lag alerts and the DR plan), and renewed
//! certificates.

use pulih_core::protocol::DatasetReport;
use pulih_core::tls::{CertInfo, Fingerprint};
use pulih_core::DatasetName;
use rusqlite::params;

use super::{now_secs, Catalog, CatalogError};

/// A dataset's reported target and schedule.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DatasetTarget {
    pub name: String,
    pub rpo_target_secs: Option<i64>,
    pub schedule: Option<String>,
}

impl Catalog {
    /// Records an agent's report about its datasets. Datasets are created
    /// when first named, so a target is known before the first snapshot.
    pub fn record_report(&mut self, agent_id: i64, datasets: &[DatasetReport]) -> Result<(), CatalogError> {
        for d in datasets {
            DatasetName::new(&d.name).map_err(|e| CatalogError::Invalid(format!("reported dataset: {e}")))?;
        }
        let now = now_secs();
        let tx = self.conn.transaction()?;
        for d in datasets {
            tx.execute("INSERT OR IGNORE INTO datasets (agent_id, name) VALUES (?1, ?2)", params![agent_id, d.name])?;
            let rpo = (d.rpo_target_secs > 0).then(|| i64::try_from(d.rpo_target_secs).unwrap_or(i64::MAX));
            tx.execute(
                "UPDATE datasets SET rpo_target_secs = ?3, schedule = ?4, reported_at = ?5 WHERE agent_id = ?1 AND name = ?2",
                params![agent_id, d.name, rpo, d.schedule, now],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Records a certificate issued to an already enrolled, active agent
    /// (renewal). The previous certificates stay valid until they expire,
    /// so an agent that loses the answer can still connect and try again.
    pub fn add_certificate(
        &mut self,
        agent_id: i64,
        fingerprint: &Fingerprint,
        cert: &CertInfo,
    ) -> Result<(), CatalogError> {
        let tx = self.conn.transaction()?;
        let active: bool =
            tx.query_row("SELECT status = 'active' FROM agents WHERE id = ?1", [agent_id], |r| r.get(0))?;
        if !active {
            return Err(CatalogError::Invalid("agent is not active".into()));
        }
        tx.execute(
            "INSERT INTO certificates (fingerprint, agent_id, serial, not_before, not_after, issued_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![fingerprint.to_string(), agent_id, cert.serial, cert.not_before, cert.not_after, now_secs()],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// How many certificates were issued to the agent since `since` (Unix seconds).
    pub fn certificates_issued_since(&self, agent_id: i64, since: i64) -> Result<u64, CatalogError> {
        Ok(self.conn.query_row(
            "SELECT count(*) FROM certificates WHERE agent_id = ?1 AND issued_at >= ?2",
            params![agent_id, since],
            |r| r.get(0),
        )?)
    }

    /// Reported targets of an agent's datasets.
    pub fn dataset_targets(&self, agent_id: i64) -> Result<Vec<DatasetTarget>, CatalogError> {
        let mut st = self
            .conn
            .prepare("SELECT name, rpo_target_secs, schedule FROM datasets WHERE agent_id = ?1 ORDER BY name")?;
        let rows = st.query_map([agent_id], |r| {
            Ok(DatasetTarget { name: r.get(0)?, rpo_target_secs: r.get(1)?, schedule: r.get(2)? })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_creates_datasets_and_updates_targets() {
        let dir = tempfile::tempdir().unwrap();
        let mut cat = Catalog::create(&dir.path().join("c.db"), "drc").unwrap();
        cat.conn.execute("INSERT INTO agents (name, status, created_at) VALUES ('a', 'active', 0)", []).unwrap();
        let r = |rpo, s: &str| DatasetReport { name: "www".into(), rpo_target_secs: rpo, schedule: s.into() };
        cat.record_report(1, &[r(300, "continuous")]).unwrap();
        let t = |rpo, s: &str| DatasetTarget { name: "www".into(), rpo_target_secs: rpo, schedule: Some(s.into()) };
        assert_eq!(cat.dataset_targets(1).unwrap(), vec![t(Some(300), "continuous")]);
        cat.record_report(1, &[r(0, "daily 01:30")]).unwrap();
        assert_eq!(cat.dataset_targets(1).unwrap(), vec![t(None, "daily 01:30")]);
        let bad = DatasetReport { name: "../x".into(), rpo_target_secs: 1, schedule: String::new() };
        assert!(cat.record_report(1, &[bad]).is_err());
    }
}
