//! The catalog (`catalog.db`, SQLite in WAL mode): agents and their
//! certificates, enrollment tokens, which blobs are durable and which agent
//! owns them, datasets and snapshots.
//!
//! Invariants the server keeps:
//! * a row in `blobs` exists only after the blob file was synced;
//! * a row in `agent_blobs` means that agent uploaded (or re-uploaded) that
//!   blob and it was verified; deduplication answers only from these rows,
//!   so one agency cannot learn what another stores (F16);
//! * an owned tree's whole closure is owned (a tree is accepted only when
//!   every chunk and subtree it names is owned or came earlier in the same
//!   session), so committing a snapshot needs to check its root only;
//! * a snapshot row is written in the same transaction that makes the last
//!   of its blobs owned: listing never shows a partial snapshot.
//!
//! The schema version is `PRAGMA user_version`. Opening an older catalog
//! upgrades it in one transaction (see [`schema`]); a newer one is refused
//! with a clear message.

use std::path::Path;

use pulih_core::snapshot::SnapshotRecord;
use pulih_core::tls::{CertInfo, Fingerprint};
use pulih_core::{AgentName, SnapshotId};
use rusqlite::{params, Connection, OptionalExtension, Transaction};

use crate::store::{BlobKind, BlobRef};

mod audit;
mod blobstate;
mod drills;
mod drp;
mod lifecycle;
mod overview;
mod packs;
mod reports;
mod schema;
mod standby;
mod tokens;
pub use audit::{actor_local, AuditRow, AuditVerify, CatalogHead, NewAudit, AUDIT_GENESIS};
pub use blobstate::BlobState;
pub use drills::{DrillRow, DrillStepRow, DrillSystemRow, SnapshotUsed};
pub use drp::{DrpVersionRow, LatestSnapshot, NewDrpVersion};
pub use lifecycle::{DamageRow, GcRunRow, ScrubRunRow};
pub use overview::{AgentOverview, DatasetOverview, StoreTotals};
pub use packs::{Locator, PackUsage, PackedBlob};
pub use reports::DatasetTarget;
pub use schema::SCHEMA_VERSION;
pub use standby::{FailoverRow, JobRequest, JobRow, SystemStateRow};
pub use tokens::{check_token_name, hash_secret, random_secret, ApiTokenRow, Role, TokenAuth};

/// Catalog failures.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("catalog: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("catalog schema version {found} is not supported by this build (expects {SCHEMA_VERSION}); use a matching pulih-controller")]
    Version { found: i64 },
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Ambiguous(String),
    #[error("{0}")]
    Invalid(String),
}

/// Outcome of presenting an enrollment token.
#[derive(Debug, PartialEq, Eq)]
pub enum TokenCheck {
    Valid,
    Unknown,
    Used,
    Expired,
    WrongName { expected: String },
}

/// A listed snapshot.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct SnapshotRow {
    pub id: String,
    pub agent: String,
    pub dataset: String,
    pub host: String,
    /// RFC 3339 start time.
    pub time: String,
    pub started_ns: i64,
    pub finished_ns: i64,
    pub root_tree: String,
    pub parent: Option<String>,
    pub files: u64,
    pub bytes: u64,
    pub bytes_read: u64,
    pub bytes_sent: u64,
    pub bytes_new: u64,
    pub errors: u64,
    /// `ok`, or `damaged` when it reaches a blob scrub found damaged.
    pub state: String,
}

impl SnapshotRow {
    /// The human table `pulih-controller snapshots` and `pulihctl
    /// snapshots` print, with a count line at the end.
    pub fn table(rows: &[Self]) -> String {
        let mut out = format!(
            "{:<12} {:<16} {:<12} {:<21} {:>8} {:>10} {:>10} STATE\n",
            "ID", "AGENT", "DATASET", "TIME", "FILES", "SIZE", "NEW"
        );
        for r in rows {
            out.push_str(&format!(
                "{:<12} {:<16} {:<12} {:<21} {:>8} {:>10} {:>10} {}\n",
                &r.id[..12.min(r.id.len())],
                r.agent,
                r.dataset,
                format!("{}Z", &r.time[..r.time.len().min(19)]),
                r.files,
                crate::units::human_bytes(r.bytes),
                crate::units::human_bytes(r.bytes_new),
                r.state
            ));
        }
        out.push_str(&format!("{} snapshot(s)", rows.len()));
        out
    }
}

/// An agent as listed.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AgentRow {
    pub id: i64,
    pub name: String,
    pub status: String,
    pub last_seen_at: Option<i64>,
}

/// Current Unix time in seconds.
pub fn now_secs() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

/// RFC 3339 text of a Unix time in nanoseconds.
pub fn rfc3339_ns(ns: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ns))
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| format!("@{ns}ns"))
}

/// An open catalog.
pub struct Catalog {
    conn: Connection,
}

/// A blob an upload staged, as a checkpoint records it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StagedBlob {
    pub blob: BlobRef,
    pub raw_len: u64,
    pub stored_len: u64,
    /// Where this upload wrote it; `None` when it was already stored.
    pub at: Option<crate::pack::PackedAt>,
}

impl std::fmt::Debug for Catalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Catalog")
    }
}

fn configure(conn: &Connection) -> Result<(), CatalogError> {
    conn.pragma_update(None, "journal_mode", "WAL")?;
    // FULL: a committed snapshot survives power loss, not only a crash.
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    // Up to 32 MiB of pages per connection (SQLite's default is 2 MiB): a
    // session asks about every blob it receives, ids are random, and with
    // a million blobs the indexes outgrow the default cache, so most
    // lookups became a `pread` each (bench/RESULTS.md, "Scale"). The cache
    // grows only as pages are used.
    conn.pragma_update(None, "cache_size", -32768)?;
    conn.busy_timeout(std::time::Duration::from_secs(30))?;
    Ok(())
}

impl Catalog {
    /// Creates a new catalog file.
    pub fn create(path: &Path, controller_name: &str) -> Result<Self, CatalogError> {
        let conn = Connection::open(path)?;
        configure(&conn)?;
        schema::migrate(&conn, 0)?;
        conn.execute(
            "INSERT INTO meta (key, value) VALUES ('controller_name', ?1), ('created_at', ?2)",
            params![controller_name, now_secs().to_string()],
        )?;
        Ok(Self { conn })
    }

    /// Opens an existing catalog, checking its schema version.
    pub fn open(path: &Path) -> Result<Self, CatalogError> {
        if !path.exists() {
            return Err(CatalogError::NotFound(format!("no catalog at {}", path.display())));
        }
        let conn = Connection::open(path)?;
        configure(&conn)?;
        let found: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if !(1..=SCHEMA_VERSION).contains(&found) {
            return Err(CatalogError::Version { found });
        }
        schema::migrate(&conn, found)?;
        Ok(Self { conn })
    }

    /// Starts a transaction.
    pub fn transaction(&mut self) -> Result<Transaction<'_>, CatalogError> {
        Ok(self.conn.transaction()?)
    }

    // --- agents, certificates, tokens -------------------------------------

    /// Records an enrollment token (only its blake3 hash is stored).
    pub fn add_token(&self, token_hash: &str, agent: &AgentName, ttl_secs: i64) -> Result<i64, CatalogError> {
        let now = now_secs();
        self.conn.execute(
            "INSERT INTO enroll_tokens (token_hash, agent_name, created_at, expires_at) VALUES (?1, ?2, ?3, ?4)",
            params![token_hash, agent.as_str(), now, now + ttl_secs],
        )?;
        Ok(now + ttl_secs)
    }

    /// Checks a presented token for `name`, without consuming it.
    pub fn check_token(&self, token_hash: &str, name: &str) -> Result<TokenCheck, CatalogError> {
        let row: Option<(String, i64, Option<i64>)> = self
            .conn
            .query_row(
                "SELECT agent_name, expires_at, used_at FROM enroll_tokens WHERE token_hash = ?1",
                [token_hash],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        Ok(match row {
            None => TokenCheck::Unknown,
            Some((_, _, Some(_))) => TokenCheck::Used,
            Some((_, exp, None)) if exp <= now_secs() => TokenCheck::Expired,
            Some((n, _, None)) if n != name => TokenCheck::WrongName { expected: n },
            Some(_) => TokenCheck::Valid,
        })
    }

    /// Consumes a token and records the agent's new certificate, in one
    /// transaction. Fails if the token was consumed concurrently.
    pub fn complete_enrollment(
        &mut self,
        token_hash: &str,
        name: &AgentName,
        fingerprint: &Fingerprint,
        cert: &CertInfo,
    ) -> Result<(), CatalogError> {
        let now = now_secs();
        // A savepoint, not a transaction: this may run inside `audited`.
        let tx = self.conn.savepoint()?;
        let used = tx.execute(
            "UPDATE enroll_tokens SET used_at = ?1 WHERE token_hash = ?2 AND used_at IS NULL AND agent_name = ?3 AND expires_at > ?1",
            params![now, token_hash, name.as_str()],
        )?;
        if used != 1 {
            return Err(CatalogError::Invalid("enrollment token is no longer valid".into()));
        }
        tx.execute(
            "INSERT INTO agents (name, status, created_at) VALUES (?1, 'active', ?2)
             ON CONFLICT (name) DO UPDATE SET status = 'active', revoked_at = NULL",
            params![name.as_str(), now],
        )?;
        let agent_id: i64 = tx.query_row("SELECT id FROM agents WHERE name = ?1", [name.as_str()], |r| r.get(0))?;
        tx.execute(
            "INSERT INTO certificates (fingerprint, agent_id, serial, not_before, not_after, issued_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![fingerprint.to_string(), agent_id, cert.serial, cert.not_before, cert.not_after, now],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// The active agent a certificate belongs to, or why it is refused.
    pub fn agent_for_certificate(
        &self,
        fingerprint: &Fingerprint,
    ) -> Result<Result<(i64, String), String>, CatalogError> {
        let row: Option<(i64, String, String, Option<i64>)> = self
            .conn
            .query_row(
                "SELECT a.id, a.name, a.status, c.revoked_at FROM certificates c JOIN agents a ON a.id = c.agent_id WHERE c.fingerprint = ?1",
                [fingerprint.to_string()],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .optional()?;
        Ok(match row {
            None => Err(format!("certificate {fingerprint} was not issued to any agent")),
            Some((_, name, _, Some(_))) => Err(format!("certificate {fingerprint} of agent {name} is revoked")),
            Some((_, name, status, None)) if status != "active" => Err(format!("agent {name} is {status}")),
            Some((id, name, _, None)) => Ok((id, name)),
        })
    }

    /// The agent's name if it is active.
    pub fn agent_active(&self, agent_id: i64) -> Result<Option<String>, CatalogError> {
        Ok(self
            .conn
            .query_row("SELECT name FROM agents WHERE id = ?1 AND status = 'active'", [agent_id], |r| r.get(0))
            .optional()?)
    }

    /// Revokes an agent and all its certificates. Returns how many
    /// certificates were revoked.
    pub fn revoke_agent(&mut self, name: &AgentName) -> Result<usize, CatalogError> {
        let now = now_secs();
        // A savepoint, not a transaction: this may run inside `audited`.
        let tx = self.conn.savepoint()?;
        let n = tx.execute(
            "UPDATE agents SET status = 'revoked', revoked_at = ?1 WHERE name = ?2",
            params![now, name.as_str()],
        )?;
        if n == 0 {
            return Err(CatalogError::NotFound(format!("no agent named {name}")));
        }
        let certs = tx.execute(
            "UPDATE certificates SET revoked_at = ?1 WHERE revoked_at IS NULL AND agent_id = (SELECT id FROM agents WHERE name = ?2)",
            params![now, name.as_str()],
        )?;
        tx.commit()?;
        Ok(certs)
    }

    /// Notes that an agent connected.
    pub fn touch_agent(&self, agent_id: i64) -> Result<(), CatalogError> {
        self.conn.execute("UPDATE agents SET last_seen_at = ?1 WHERE id = ?2", params![now_secs(), agent_id])?;
        Ok(())
    }

    /// All agents.
    pub fn agents(&self) -> Result<Vec<AgentRow>, CatalogError> {
        let mut st = self.conn.prepare("SELECT id, name, status, last_seen_at FROM agents ORDER BY name")?;
        let rows = st.query_map([], |r| {
            Ok(AgentRow { id: r.get(0)?, name: r.get(1)?, status: r.get(2)?, last_seen_at: r.get(3)? })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    // --- blobs -------------------------------------------------------------

    /// Whether a blob is recorded as durable.
    pub fn blob_durable(&self, blob: &BlobRef) -> Result<bool, CatalogError> {
        let mut st = self.conn.prepare_cached("SELECT 1 FROM blobs WHERE kind = ?1 AND id = ?2")?;
        Ok(st.exists(params![blob.kind.code(), &blob.id[..]])?)
    }

    /// Whether `agent_id` owns a durable blob.
    pub fn agent_has(&self, agent_id: i64, blob: &BlobRef) -> Result<bool, CatalogError> {
        let mut st =
            self.conn.prepare_cached("SELECT 1 FROM agent_blobs WHERE agent_id = ?1 AND kind = ?2 AND id = ?3")?;
        Ok(st.exists(params![agent_id, blob.kind.code(), &blob.id[..]])?)
    }

    /// Records synced blobs, where they are (`None`: staged again but not
    /// written, the row keeps its location), and the agent's ownership.
    pub fn record_blobs(tx: &Transaction<'_>, agent_id: i64, blobs: &[StagedBlob]) -> Result<(), CatalogError> {
        let now = now_secs();
        let mut b = tx.prepare_cached(
            // A blob stored again counts as relied on now: garbage
            // collection keeps it for its grace period (see crate::gc). A
            // new copy (a repair, or two uploads of it at once) becomes the
            // one read.
            "INSERT INTO blobs (kind, id, raw_len, stored_len, stored_at, touched_at, pack, pack_offset)
             VALUES (?1, ?2, ?3, ?4, ?5, ?5, ?6, ?7)
             ON CONFLICT (kind, id) DO UPDATE SET touched_at = max(touched_at, excluded.touched_at),
                pack = coalesce(excluded.pack, pack),
                pack_offset = CASE WHEN excluded.pack IS NULL THEN pack_offset ELSE excluded.pack_offset END,
                stored_len = CASE WHEN excluded.pack IS NULL THEN stored_len ELSE excluded.stored_len END",
        )?;
        let mut a = tx.prepare_cached("INSERT OR IGNORE INTO agent_blobs (agent_id, kind, id) VALUES (?1, ?2, ?3)")?;
        for s in blobs {
            let (pack, offset) = match &s.at {
                Some(at) => (Some(at.pack.0.to_vec()), Some(at.offset as i64)),
                None => (None, None),
            };
            b.execute(params![
                s.blob.kind.code(),
                &s.blob.id[..],
                s.raw_len as i64,
                s.stored_len as i64,
                now,
                pack,
                offset
            ])?;
            a.execute(params![agent_id, s.blob.kind.code(), &s.blob.id[..]])?;
        }
        Ok(())
    }

    /// Forgets a blob whose file is gone, so no agent deduplicates against
    /// it any more and the next upload stores it again (F7, F15).
    pub fn forget_blob(&self, blob: &BlobRef) -> Result<(), CatalogError> {
        self.conn
            .execute("DELETE FROM agent_blobs WHERE kind = ?1 AND id = ?2", params![blob.kind.code(), &blob.id[..]])?;
        self.conn.execute("DELETE FROM blobs WHERE kind = ?1 AND id = ?2", params![blob.kind.code(), &blob.id[..]])?;
        Ok(())
    }

    /// Stored size of a durable blob.
    pub fn blob_stored_len(&self, blob: &BlobRef) -> Result<Option<u64>, CatalogError> {
        let mut st = self.conn.prepare_cached("SELECT stored_len FROM blobs WHERE kind = ?1 AND id = ?2")?;
        Ok(st.query_row(params![blob.kind.code(), &blob.id[..]], |r| r.get::<_, i64>(0)).optional()?.map(|v| v as u64))
    }

    // --- snapshots ----------------------------------------------------------

    /// Inserts a committed snapshot (in the caller's transaction).
    pub fn insert_snapshot(
        tx: &Transaction<'_>,
        agent_id: i64,
        id: &SnapshotId,
        record: &SnapshotRecord,
        encoded: &[u8],
        bytes_new: u64,
    ) -> Result<(), CatalogError> {
        tx.execute(
            "INSERT OR IGNORE INTO datasets (agent_id, name) VALUES (?1, ?2)",
            params![agent_id, record.dataset.as_str()],
        )?;
        let dataset_id: i64 = tx.query_row(
            "SELECT id FROM datasets WHERE agent_id = ?1 AND name = ?2",
            params![agent_id, record.dataset.as_str()],
            |r| r.get(0),
        )?;
        let s = &record.stats;
        let inserted = tx.execute(
            "INSERT OR IGNORE INTO snapshots (id, agent_id, dataset_id, host, started_ns, finished_ns, root_tree, parent,
                files, bytes, bytes_read, bytes_sent, bytes_new, errors, committed_at, record)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)",
            params![
                id.to_hex(),
                agent_id,
                dataset_id,
                record.host,
                record.started_ns,
                record.finished_ns,
                record.root.to_hex(),
                record.parent.map(|p| p.to_hex()),
                s.files as i64,
                s.bytes as i64,
                s.bytes_read as i64,
                s.bytes_sent as i64,
                bytes_new as i64,
                record.errors_total as i64,
                now_secs(),
                encoded,
            ],
        )?;
        if inserted > 0 {
            audit::count_commit(tx)?;
        }
        Ok(())
    }

    /// F18 when the whole data directory was put back from an older copy:
    /// catalog, store and witness then agree with each other, and only an
    /// agent can tell. Its snapshot names as parent the last one it
    /// committed for the dataset; if the catalog neither has nor forgot that
    /// snapshot but has older ones of the same dataset, the catalog is older
    /// than what the agent saw. Records it in the audit log, in the commit's
    /// transaction, and returns the newest snapshot the catalog has of the
    /// dataset. A dataset without snapshots here is no sign (an agent
    /// pointed at a new controller keeps its old records).
    pub fn note_unknown_parent(
        tx: &Transaction<'_>,
        agent_id: i64,
        id: &SnapshotId,
        record: &SnapshotRecord,
    ) -> Result<Option<String>, CatalogError> {
        let Some(parent) = record.parent else { return Ok(None) };
        let parent = parent.to_hex();
        let known: bool = tx.query_row(
            "SELECT EXISTS (SELECT 1 FROM snapshots WHERE id = ?1)
                 OR EXISTS (SELECT 1 FROM forgotten_snapshots WHERE id = ?1)",
            [&parent],
            |r| r.get(0),
        )?;
        if known {
            return Ok(None);
        }
        let target = format!("{}/{}", record.agent, record.dataset);
        // A retried commit (its answer lost) names the same parent: one row.
        let noted: bool = tx.query_row(
            "SELECT EXISTS (SELECT 1 FROM audit_log
                 WHERE action = 'rollback-detected' AND target = ?1 AND instr(detail, ?2) > 0)",
            params![target, parent],
            |r| r.get(0),
        )?;
        if noted {
            return Ok(None);
        }
        let newest: Option<(String, i64)> = tx
            .query_row(
                "SELECT s.id, s.committed_at FROM snapshots s JOIN datasets d ON d.id = s.dataset_id
                 WHERE s.agent_id = ?1 AND d.name = ?2 ORDER BY s.finished_ns DESC, s.id LIMIT 1",
                params![agent_id, record.dataset.as_str()],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let Some((newest, newest_at)) = newest else { return Ok(None) };
        let entry = NewAudit::new(
            &format!("agent:{}", record.agent),
            "rollback-detected",
            &target,
            serde_json::json!({
                "snapshot": id.to_hex(),
                "parent_unknown": parent,
                "newest_known": newest,
                "newest_known_committed_at": newest_at,
            }),
        );
        audit::append(tx, &entry, "detected")?;
        Ok(Some(newest))
    }

    /// Snapshots, oldest first, optionally of one agent and/or dataset.
    pub fn snapshots(&self, agent: Option<&str>, dataset: Option<&str>) -> Result<Vec<SnapshotRow>, CatalogError> {
        let mut st = self.conn.prepare(
            "SELECT s.id, a.name, d.name, s.host, s.started_ns, s.finished_ns, s.root_tree, s.parent,
                    s.files, s.bytes, s.bytes_read, s.bytes_sent, s.bytes_new, s.errors, s.state
             FROM snapshots s JOIN agents a ON a.id = s.agent_id JOIN datasets d ON d.id = s.dataset_id
             WHERE (?1 IS NULL OR a.name = ?1) AND (?2 IS NULL OR d.name = ?2)
             ORDER BY s.started_ns, s.id",
        )?;
        let rows = st.query_map(params![agent, dataset], |r| {
            let started_ns: i64 = r.get(4)?;
            Ok(SnapshotRow {
                id: r.get(0)?,
                agent: r.get(1)?,
                dataset: r.get(2)?,
                host: r.get(3)?,
                time: rfc3339_ns(started_ns),
                started_ns,
                finished_ns: r.get(5)?,
                root_tree: r.get(6)?,
                parent: r.get(7)?,
                files: r.get::<_, i64>(8)? as u64,
                bytes: r.get::<_, i64>(9)? as u64,
                bytes_read: r.get::<_, i64>(10)? as u64,
                bytes_sent: r.get::<_, i64>(11)? as u64,
                bytes_new: r.get::<_, i64>(12)? as u64,
                errors: r.get::<_, i64>(13)? as u64,
                state: r.get(14)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Resolves a full id, a unique prefix, or `latest` (optionally within
    /// an agent and dataset) to one snapshot.
    pub fn resolve_snapshot(
        &self,
        spec: &str,
        agent: Option<&str>,
        dataset: Option<&str>,
    ) -> Result<SnapshotRow, CatalogError> {
        let all = self.snapshots(agent, dataset)?;
        if spec == "latest" {
            let mut sets: Vec<(String, String)> = all.iter().map(|s| (s.agent.clone(), s.dataset.clone())).collect();
            sets.sort();
            sets.dedup();
            if sets.len() > 1 {
                let names: Vec<String> = sets.iter().take(5).map(|(a, d)| format!("{a}/{d}")).collect();
                return Err(CatalogError::Ambiguous(format!(
                    "'latest' is ambiguous: {} datasets have snapshots ({}{}); give --agent and --dataset",
                    sets.len(),
                    names.join(", "),
                    if sets.len() > 5 { ", ..." } else { "" }
                )));
            }
            return all.into_iter().last().ok_or_else(|| CatalogError::NotFound("no snapshot matches (latest)".into()));
        }
        if spec.len() < 4 || !spec.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(CatalogError::Invalid(format!(
                "{spec:?} is not a snapshot id: give 'latest', a full id or a prefix of at least 4 hex digits"
            )));
        }
        let spec = spec.to_ascii_lowercase();
        let mut hits: Vec<SnapshotRow> = all.into_iter().filter(|s| s.id.starts_with(&spec)).collect();
        match hits.len() {
            0 => Err(CatalogError::NotFound(format!("no snapshot with id {spec}"))),
            1 => Ok(hits.remove(0)),
            n => Err(CatalogError::Ambiguous(format!("{n} snapshots start with {spec}; give more digits"))),
        }
    }

    /// The stored record of a snapshot.
    pub fn snapshot_record(&self, id: &str) -> Result<SnapshotRecord, CatalogError> {
        let bytes: Vec<u8> = self
            .conn
            .query_row("SELECT record FROM snapshots WHERE id = ?1", [id], |r| r.get(0))
            .optional()?
            .ok_or_else(|| CatalogError::NotFound(format!("no snapshot with id {id}")))?;
        SnapshotRecord::decode(&bytes).map_err(|e| CatalogError::Invalid(format!("snapshot {id}: {e}")))
    }

    /// Number of blobs of each kind recorded as durable.
    pub fn blob_counts(&self) -> Result<(u64, u64), CatalogError> {
        let count = |k: BlobKind| -> Result<u64, CatalogError> {
            Ok(self.conn.query_row("SELECT count(*) FROM blobs WHERE kind = ?1", [k.code()], |r| r.get::<_, i64>(0))?
                as u64)
        };
        Ok((count(BlobKind::Chunk)?, count(BlobKind::Tree)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(serial: &str) -> CertInfo {
        CertInfo { common_name: "a".into(), serial: serial.into(), not_before: 0, not_after: i64::MAX / 2 }
    }

    #[test]
    fn tokens_are_single_use_and_bound_to_a_name() {
        let dir = tempfile::tempdir().unwrap();
        let mut cat = Catalog::create(&dir.path().join("c.db"), "drc").unwrap();
        let name = AgentName::new("web").unwrap();
        cat.add_token("h1", &name, 3600).unwrap();
        assert_eq!(cat.check_token("h1", "other").unwrap(), TokenCheck::WrongName { expected: "web".into() });
        assert_eq!(cat.check_token("nope", "web").unwrap(), TokenCheck::Unknown);
        assert_eq!(cat.check_token("h1", "web").unwrap(), TokenCheck::Valid);
        let fp = Fingerprint::of(b"cert1");
        cat.complete_enrollment("h1", &name, &fp, &cert("01")).unwrap();
        assert_eq!(cat.check_token("h1", "web").unwrap(), TokenCheck::Used);
        assert!(cat.complete_enrollment("h1", &name, &Fingerprint::of(b"c2"), &cert("02")).is_err());
        assert_eq!(cat.agent_for_certificate(&fp).unwrap().unwrap().1, "web");

        cat.add_token("h2", &name, -1).unwrap();
        assert_eq!(cat.check_token("h2", "web").unwrap(), TokenCheck::Expired);

        assert_eq!(cat.revoke_agent(&name).unwrap(), 1);
        assert!(cat.agent_for_certificate(&fp).unwrap().is_err());
        assert!(cat.agent_for_certificate(&Fingerprint::of(b"unknown")).unwrap().is_err());
    }

    #[test]
    fn latest_must_name_one_dataset() {
        use pulih_core::snapshot::{SnapshotRecord, SnapshotStats};
        let dir = tempfile::tempdir().unwrap();
        let mut cat = Catalog::create(&dir.path().join("c.db"), "drc").unwrap();
        let name = AgentName::new("web").unwrap();
        cat.add_token("h", &name, 3600).unwrap();
        cat.complete_enrollment("h", &name, &Fingerprint::of(b"c"), &cert("01")).unwrap();
        let id = cat.agents().unwrap()[0].id;
        for (ds, t) in [("a", 1), ("b", 2), ("a", 3)] {
            let rec = SnapshotRecord {
                agent: name.clone(),
                dataset: pulih_core::DatasetName::new(ds).unwrap(),
                host: "h".into(),
                paths: vec![],
                started_ns: t,
                finished_ns: t,
                root: pulih_core::TreeId::of(b"r"),
                parent: None,
                chunker_version: 1,
                stats: SnapshotStats::default(),
                errors_total: 0,
                errors: vec![],
            };
            let (sid, enc) = rec.encode();
            let tx = cat.transaction().unwrap();
            Catalog::insert_snapshot(&tx, id, &sid, &rec, &enc, 0).unwrap();
            tx.commit().unwrap();
        }
        let err = cat.resolve_snapshot("latest", None, None).unwrap_err();
        assert!(err.to_string().contains("ambiguous"), "{err}");
        assert_eq!(cat.resolve_snapshot("latest", Some("web"), Some("a")).unwrap().started_ns, 3);
        assert_eq!(cat.resolve_snapshot("latest", None, Some("b")).unwrap().started_ns, 2);
    }

    #[test]
    fn unknown_schema_version_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.db");
        drop(Catalog::create(&p, "drc").unwrap());
        Connection::open(&p).unwrap().pragma_update(None, "user_version", 99).unwrap();
        let err = Catalog::open(&p).unwrap_err();
        assert!(err.to_string().contains("version 99"), "{err}");
    }
}
