//! Read-only summaries of the catalog for the API and the metrics: agents
//! with their datasets, replication lag and certificate expiry, and store
//! totals.

use std::collections::BTreeMap;

use rusqlite::params;

use super::{Catalog, CatalogError};

/// One dataset of an agent as the controller sees it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DatasetOverview {
    pub name: String,
    /// RPO target the agent reported, seconds.
    pub rpo_target_secs: Option<i64>,
    /// Schedule the agent reported.
    pub schedule: Option<String>,
    /// When the agent last reported this dataset, Unix seconds.
    pub reported_at: Option<i64>,
    pub snapshots: u64,
    /// Finish time of the newest snapshot, Unix nanoseconds.
    pub last_snapshot_ns: Option<i64>,
    /// Seconds from the newest snapshot's finish to now.
    pub lag_secs: Option<i64>,
}

/// An agent with its certificate and datasets.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AgentOverview {
    pub name: String,
    pub status: String,
    /// Last connection, Unix seconds.
    pub last_seen_at: Option<i64>,
    /// Latest expiry among the agent's unrevoked certificates, Unix seconds.
    pub cert_not_after: Option<i64>,
    pub datasets: Vec<DatasetOverview>,
}

/// Sizes of what the store holds.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct StoreTotals {
    pub chunks: u64,
    pub trees: u64,
    /// Uncompressed size of the distinct blobs.
    pub raw_bytes: u64,
    /// Bytes on disk (compressed).
    pub stored_bytes: u64,
    /// Sum of the sizes of all snapshots: what restoring all would produce.
    pub logical_bytes: u64,
    pub snapshots: u64,
}

impl Catalog {
    /// Every agent with its datasets; lag is measured against `now_secs`.
    pub fn agent_overview(&self, now_secs: i64) -> Result<Vec<AgentOverview>, CatalogError> {
        let mut st = self.conn.prepare(
            "SELECT a.id, a.name, a.status, a.last_seen_at,
                    (SELECT max(not_after) FROM certificates c WHERE c.agent_id = a.id AND c.revoked_at IS NULL)
             FROM agents a ORDER BY a.name",
        )?;
        let mut agents: BTreeMap<i64, AgentOverview> = BTreeMap::new();
        let mut order = Vec::new();
        for r in st.query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                AgentOverview {
                    name: r.get(1)?,
                    status: r.get(2)?,
                    last_seen_at: r.get(3)?,
                    cert_not_after: r.get(4)?,
                    datasets: Vec::new(),
                },
            ))
        })? {
            let (id, a) = r?;
            order.push(id);
            agents.insert(id, a);
        }
        let mut st = self.conn.prepare(
            "SELECT d.agent_id, d.name, d.rpo_target_secs, d.schedule, d.reported_at,
                    count(s.id), max(s.finished_ns)
             FROM datasets d LEFT JOIN snapshots s ON s.dataset_id = d.id
             GROUP BY d.id ORDER BY d.name",
        )?;
        for r in st.query_map(params![], |r| {
            let last: Option<i64> = r.get(6)?;
            Ok((
                r.get::<_, i64>(0)?,
                DatasetOverview {
                    name: r.get(1)?,
                    rpo_target_secs: r.get(2)?,
                    schedule: r.get(3)?,
                    reported_at: r.get(4)?,
                    snapshots: r.get::<_, i64>(5)? as u64,
                    last_snapshot_ns: last,
                    lag_secs: last.map(|ns| (now_secs - ns.div_euclid(1_000_000_000)).max(0)),
                },
            ))
        })? {
            let (agent_id, d) = r?;
            if let Some(a) = agents.get_mut(&agent_id) {
                a.datasets.push(d);
            }
        }
        Ok(order.into_iter().filter_map(|id| agents.remove(&id)).collect())
    }

    /// Totals of the store as recorded in the catalog.
    pub fn store_totals(&self) -> Result<StoreTotals, CatalogError> {
        let (chunks, trees) = self.blob_counts()?;
        let (raw, stored): (i64, i64) = self.conn.query_row(
            "SELECT coalesce(sum(raw_len), 0), coalesce(sum(stored_len), 0) FROM blobs",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        let (logical, snapshots): (i64, i64) =
            self.conn.query_row("SELECT coalesce(sum(bytes), 0), count(*) FROM snapshots", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })?;
        Ok(StoreTotals {
            chunks,
            trees,
            raw_bytes: raw as u64,
            stored_bytes: stored as u64,
            logical_bytes: logical as u64,
            snapshots: snapshots as u64,
        })
    }
}
