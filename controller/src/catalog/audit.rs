//! The audit log: every state-changing action, who did it, when, on what,
//! and how it ended, in a hash chain so that an edit or a deletion shows.
//!
//! Each row's `hash` is blake3 over a canonical encoding of the row (see
//! [`row_hash`]): a domain tag, then `seq` and `at` as 8-byte little-endian
//! integers, then `actor`, `action`, `target`, `detail`, `result` and
//! `prev_hash`, each as an 8-byte little-endian length followed by its UTF-8
//! bytes. Length prefixes make the encoding unambiguous (no two different
//! rows encode to the same bytes). `prev_hash` is the previous row's `hash`;
//! the first row's is [`AUDIT_GENESIS`] (64 zeros).
//!
//! The chain's head (last `seq` and `hash`) is kept in `meta` too and is
//! updated in the same transaction as each append. New rows take their `seq`
//! and `prev_hash` from `meta`, not from the table, so deleting the newest
//! rows is detected (the head no longer matches) and is not papered over by
//! the next append (which would leave a gap).
//!
//! Limit: the chain has no secret. Someone who can write `catalog.db` and
//! recomputes every later hash and the head can rewrite history; the chain
//! detects accidental or careless tampering, and copies of the head taken
//! elsewhere (e.g. in reports) pin it.

use rusqlite::{params, Connection, OptionalExtension};

use super::{Catalog, CatalogError};

/// `prev_hash` of the first row.
pub const AUDIT_GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
const DOMAIN: &[u8] = b"pulih-audit-v1";
const META_SEQ: &str = "audit_head_seq";
const META_HASH: &str = "audit_head_hash";
/// How many snapshot commits this catalog has recorded (never decreases;
/// forgetting a snapshot does not lower it). Read by `crate::witness`.
const META_COMMITS: &str = "snapshot_commits";

/// How far a catalog has got: its count of snapshot commits and the head of
/// its audit chain. A newer catalog is ahead of an older copy of itself in
/// both (F18, see `crate::witness`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogHead {
    pub snapshot_commits: u64,
    pub audit_seq: i64,
    pub audit_hash: String,
}

/// Counts one snapshot commit, in the caller's transaction.
pub(super) fn count_commit(conn: &Connection) -> Result<(), CatalogError> {
    conn.execute(
        "INSERT INTO meta (key, value) VALUES (?1, '1')
         ON CONFLICT (key) DO UPDATE SET value = CAST(CAST(value AS INTEGER) + 1 AS TEXT)",
        [META_COMMITS],
    )?;
    Ok(())
}

/// An action to record.
#[derive(Debug, Clone)]
pub struct NewAudit {
    /// Who: `token:NAME`, `local:USER`, `agent:NAME`.
    pub actor: String,
    /// What: `enroll-token`, `enroll`, `revoke-agent`, `restore`, ...
    pub action: String,
    /// On what: an agent, token or snapshot name; may be empty.
    pub target: String,
    /// Parameters, as JSON.
    pub detail: serde_json::Value,
}

impl NewAudit {
    pub fn new(actor: &str, action: &str, target: &str, detail: serde_json::Value) -> Self {
        Self { actor: actor.into(), action: action.into(), target: target.into(), detail }
    }
}

/// A stored row.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AuditRow {
    pub seq: i64,
    /// Unix time in nanoseconds.
    pub at: i64,
    pub actor: String,
    pub action: String,
    pub target: String,
    /// JSON text.
    pub detail: String,
    /// `ok` or `error: ...`.
    pub result: String,
    pub prev_hash: String,
    pub hash: String,
}

/// The outcome of walking the chain.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AuditVerify {
    pub ok: bool,
    /// Rows read.
    pub rows: u64,
    /// The head recorded in `meta` (0 when the log is empty).
    pub head_seq: i64,
    /// First row that is wrong or missing.
    pub first_bad_seq: Option<i64>,
    /// What is wrong, for a person.
    pub problem: Option<String>,
}

impl AuditRow {
    /// The table `pulih-controller audit list` and `pulihctl audit list`
    /// print; `color` marks failed actions red.
    pub fn table(rows: &[Self], color: bool) -> String {
        let mut out = format!("{:>6} {:<21} {:<22} {:<14} {:<24} RESULT", "SEQ", "TIME", "ACTOR", "ACTION", "TARGET");
        for r in rows {
            let result =
                if color && r.result != "ok" { format!("\x1b[31m{}\x1b[0m", r.result) } else { r.result.clone() };
            let t = super::rfc3339_ns(r.at);
            out.push_str(&format!(
                "\n{:>6} {:<21} {:<22} {:<14} {:<24} {result}",
                r.seq,
                format!("{}Z", &t[..t.len().min(19)]),
                r.actor,
                r.action,
                r.target.chars().take(24).collect::<String>()
            ));
        }
        out
    }
}

impl AuditVerify {
    /// One line for people.
    pub fn summary(&self) -> String {
        if self.ok {
            format!("Audit log intact: {} row(s), head seq {}.", self.rows, self.head_seq)
        } else {
            format!(
                "AUDIT LOG BROKEN at row {}: {}",
                self.first_bad_seq.map_or("?".into(), |s| s.to_string()),
                self.problem.as_deref().unwrap_or("unknown problem")
            )
        }
    }
}

fn put(h: &mut blake3::Hasher, s: &str) {
    h.update(&(s.len() as u64).to_le_bytes());
    h.update(s.as_bytes());
}

/// The hash of a row, from its fields (its own `hash` is not read).
pub fn row_hash(r: &AuditRow) -> String {
    let mut h = blake3::Hasher::new();
    h.update(&(DOMAIN.len() as u64).to_le_bytes());
    h.update(DOMAIN);
    h.update(&r.seq.to_le_bytes());
    h.update(&r.at.to_le_bytes());
    for f in [&r.actor, &r.action, &r.target, &r.detail, &r.result, &r.prev_hash] {
        put(&mut h, f);
    }
    h.finalize().to_hex().to_string()
}

fn meta(conn: &Connection, key: &str) -> Result<Option<String>, CatalogError> {
    Ok(conn.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0)).optional()?)
}

fn set_meta(conn: &Connection, key: &str, value: &str) -> Result<(), CatalogError> {
    conn.execute(
        "INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        params![key, value],
    )?;
    Ok(())
}

/// Appends a row on `conn`, which must be inside the caller's transaction
/// (the row and the head move together). Returns the new row's `seq`.
pub(super) fn append(conn: &Connection, e: &NewAudit, result: &str) -> Result<i64, CatalogError> {
    let head_seq: i64 = meta(conn, META_SEQ)?.and_then(|v| v.parse().ok()).unwrap_or(0);
    let prev_hash = meta(conn, META_HASH)?.unwrap_or_else(|| AUDIT_GENESIS.to_owned());
    let mut row = AuditRow {
        seq: head_seq + 1,
        at: pulih_core::now_ns(),
        actor: e.actor.clone(),
        action: e.action.clone(),
        target: e.target.clone(),
        detail: e.detail.to_string(),
        result: result.to_owned(),
        prev_hash,
        hash: String::new(),
    };
    row.hash = row_hash(&row);
    conn.execute(
        "INSERT INTO audit_log (seq, at, actor, action, target, detail, result, prev_hash, hash)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        params![row.seq, row.at, row.actor, row.action, row.target, row.detail, row.result, row.prev_hash, row.hash],
    )?;
    set_meta(conn, META_SEQ, &row.seq.to_string())?;
    set_meta(conn, META_HASH, &row.hash)?;
    Ok(row.seq)
}

/// The result text of an outcome.
fn result_text<T, E: std::fmt::Display>(r: &Result<T, E>) -> String {
    match r {
        Ok(_) => "ok".into(),
        Err(e) => format!("error: {e}"),
    }
}

impl Catalog {
    /// Runs a catalog change and records it in the audit log in the same
    /// transaction. When the change fails it is rolled back and the failure
    /// is recorded instead (an attempt is accountable too). `f` may use
    /// savepoints, not transactions.
    pub fn audited<T, E>(&mut self, entry: &NewAudit, f: impl FnOnce(&mut Catalog) -> Result<T, E>) -> Result<T, E>
    where
        E: std::fmt::Display + From<CatalogError>,
    {
        // Take the write lock up front when this is the outermost
        // transaction: two processes (serve and a local command) appending
        // at once then wait for each other instead of failing on upgrade.
        let outer = self.conn.is_autocommit();
        let sql = |c: &Catalog, q: &str| c.conn.execute_batch(q).map_err(CatalogError::from);
        sql(self, if outer { "BEGIN IMMEDIATE; SAVEPOINT pulih_audited" } else { "SAVEPOINT pulih_audited" })?;
        let out = f(self);
        if out.is_err() {
            sql(self, "ROLLBACK TO pulih_audited")?;
        }
        if let Err(e) = append(&self.conn, entry, &result_text(&out)) {
            // Without its audit row the change must not stay.
            sql(self, if outer { "ROLLBACK" } else { "ROLLBACK TO pulih_audited; RELEASE pulih_audited" })?;
            return Err(e.into());
        }
        sql(self, if outer { "RELEASE pulih_audited; COMMIT" } else { "RELEASE pulih_audited" })?;
        out
    }

    /// Records an action that is not a catalog change (a restore, a verify)
    /// with its outcome.
    pub fn audit<T, E: std::fmt::Display>(
        &mut self,
        entry: &NewAudit,
        outcome: &Result<T, E>,
    ) -> Result<i64, CatalogError> {
        let tx = self.conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let seq = append(&tx, entry, &result_text(outcome))?;
        tx.commit()?;
        Ok(seq)
    }

    /// Rows after `after_seq`, oldest first, at most `limit`.
    pub fn audit_rows(&self, after_seq: i64, limit: u32) -> Result<Vec<AuditRow>, CatalogError> {
        let mut st = self.conn.prepare(
            "SELECT seq, at, actor, action, target, detail, result, prev_hash, hash FROM audit_log
             WHERE seq > ?1 ORDER BY seq LIMIT ?2",
        )?;
        let rows = st.query_map(params![after_seq, limit], |r| {
            Ok(AuditRow {
                seq: r.get(0)?,
                at: r.get(1)?,
                actor: r.get(2)?,
                action: r.get(3)?,
                target: r.get(4)?,
                detail: r.get(5)?,
                result: r.get(6)?,
                prev_hash: r.get(7)?,
                hash: r.get(8)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Walks the whole chain and reports the first row that was edited,
    /// deleted or is missing from the end.
    pub fn audit_verify(&self) -> Result<AuditVerify, CatalogError> {
        let head_seq: i64 = meta(&self.conn, META_SEQ)?.and_then(|v| v.parse().ok()).unwrap_or(0);
        let head_hash = meta(&self.conn, META_HASH)?.unwrap_or_else(|| AUDIT_GENESIS.to_owned());
        let bad = |rows: u64, seq: i64, why: String| AuditVerify {
            ok: false,
            rows,
            head_seq,
            first_bad_seq: Some(seq),
            problem: Some(why),
        };
        let mut expected_seq = 1;
        let mut prev = AUDIT_GENESIS.to_owned();
        let mut rows = 0u64;
        loop {
            // Pages keep memory flat for a log that runs for years.
            let page = self.audit_rows(expected_seq - 1, 1000)?;
            if page.is_empty() {
                break;
            }
            for r in page {
                rows += 1;
                if r.seq != expected_seq {
                    return Ok(bad(
                        rows,
                        expected_seq,
                        format!("row {expected_seq} is missing (deleted): the next row is {}", r.seq),
                    ));
                }
                if r.prev_hash != prev {
                    return Ok(bad(
                        rows,
                        r.seq,
                        format!("row {} does not link to the row before it (a row was deleted or edited)", r.seq),
                    ));
                }
                if row_hash(&r) != r.hash {
                    return Ok(bad(
                        rows,
                        r.seq,
                        format!("row {} was edited: its content does not match its hash", r.seq),
                    ));
                }
                prev = r.hash;
                expected_seq += 1;
            }
        }
        let last = expected_seq - 1;
        if last < head_seq {
            return Ok(bad(
                rows,
                last + 1,
                format!("rows {} to {head_seq} are missing (the newest rows were deleted)", last + 1),
            ));
        }
        if last > head_seq || prev != head_hash {
            return Ok(bad(
                rows,
                last.max(1),
                format!("the last row {last} does not match the recorded head (seq {head_seq})"),
            ));
        }
        Ok(AuditVerify { ok: true, rows, head_seq, first_bad_seq: None, problem: None })
    }

    /// The catalog's head, read in one statement (so consistently).
    pub fn head(&self) -> Result<CatalogHead, CatalogError> {
        let (commits, seq, hash): (Option<String>, Option<String>, Option<String>) = self.conn.query_row(
            "SELECT (SELECT value FROM meta WHERE key = ?1), (SELECT value FROM meta WHERE key = ?2),
                    (SELECT value FROM meta WHERE key = ?3)",
            [META_COMMITS, META_SEQ, META_HASH],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )?;
        Ok(CatalogHead {
            snapshot_commits: commits.and_then(|v| v.parse().ok()).unwrap_or(0),
            audit_seq: seq.and_then(|v| v.parse().ok()).unwrap_or(0),
            audit_hash: hash.unwrap_or_else(|| AUDIT_GENESIS.to_owned()),
        })
    }

    /// The recorded hash of audit row `seq`, if the row exists.
    pub fn audit_hash_at(&self, seq: i64) -> Result<Option<String>, CatalogError> {
        Ok(self.conn.query_row("SELECT hash FROM audit_log WHERE seq = ?1", [seq], |r| r.get(0)).optional()?)
    }

    /// A value of the `meta` table.
    pub fn meta_get(&self, key: &str) -> Result<Option<String>, CatalogError> {
        meta(&self.conn, key)
    }

    /// Records the configuration's blake3; when it differs from the last one
    /// recorded, audits a `config-change` in the same transaction. Returns
    /// whether it changed.
    pub fn note_config(&mut self, actor: &str, blake3_hex: &str, path: &str) -> Result<bool, CatalogError> {
        let tx = self.conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let previous = meta(&tx, "config_blake3")?;
        if previous.as_deref() == Some(blake3_hex) {
            return Ok(false);
        }
        set_meta(&tx, "config_blake3", blake3_hex)?;
        let entry = NewAudit::new(
            actor,
            "config-change",
            path,
            serde_json::json!({"blake3": blake3_hex, "previous": previous}),
        );
        append(&tx, &entry, "ok")?;
        tx.commit()?;
        Ok(true)
    }
}

/// `local:USER` for the user running this process (from /etc/passwd; the
/// numeric id when the name is unknown).
pub fn actor_local() -> String {
    let uid = rustix::process::geteuid().as_raw();
    let name = std::fs::read_to_string("/etc/passwd").ok().and_then(|text| {
        text.lines().find_map(|l| {
            let mut f = l.split(':');
            let name = f.next()?;
            (f.nth(1)?.parse::<u32>().ok()? == uid).then(|| name.to_owned())
        })
    });
    format!("local:{}", name.unwrap_or_else(|| format!("uid{uid}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn catalog() -> (tempfile::TempDir, Catalog) {
        let dir = tempfile::tempdir().unwrap();
        let cat = Catalog::create(&dir.path().join("c.db"), "drc").unwrap();
        (dir, cat)
    }

    fn add(cat: &mut Catalog, n: usize) {
        for i in 0..n {
            let e = NewAudit::new("local:test", "test", &format!("t{i}"), serde_json::json!({"i": i}));
            cat.audit::<(), String>(&e, &Ok(())).unwrap();
        }
    }

    #[test]
    fn intact_chain_verifies_and_links() {
        let (_d, mut cat) = catalog();
        assert!(cat.audit_verify().unwrap().ok);
        add(&mut cat, 5);
        let v = cat.audit_verify().unwrap();
        assert!(v.ok, "{v:?}");
        assert_eq!((v.rows, v.head_seq), (5, 5));
        let rows = cat.audit_rows(0, 100).unwrap();
        assert_eq!(rows[0].prev_hash, AUDIT_GENESIS);
        assert_eq!(rows[1].prev_hash, rows[0].hash);
        assert_eq!(cat.audit_rows(3, 1).unwrap()[0].seq, 4);
    }

    #[test]
    fn edit_delete_and_truncation_are_found() {
        for (sql, first_bad) in [
            ("UPDATE audit_log SET target = 'x' WHERE seq = 3", 3),
            ("UPDATE audit_log SET result = 'ok ' WHERE seq = 1", 1),
            ("DELETE FROM audit_log WHERE seq = 2", 2),
            ("DELETE FROM audit_log WHERE seq = 5", 5),
            ("DELETE FROM audit_log WHERE seq >= 4", 4),
            ("DELETE FROM audit_log WHERE seq = 1", 1),
        ] {
            let (_d, mut cat) = catalog();
            add(&mut cat, 5);
            cat.conn.execute_batch(sql).unwrap();
            let v = cat.audit_verify().unwrap();
            assert!(!v.ok, "{sql}");
            assert_eq!(v.first_bad_seq, Some(first_bad), "{sql}: {v:?}");
            // Appending after a deleted tail does not heal the chain.
            add(&mut cat, 1);
            assert!(!cat.audit_verify().unwrap().ok, "{sql} then append");
        }
    }

    #[test]
    fn hash_is_length_prefixed() {
        let base = AuditRow {
            seq: 1,
            at: 2,
            actor: "ab".into(),
            action: "c".into(),
            target: String::new(),
            detail: "{}".into(),
            result: "ok".into(),
            prev_hash: AUDIT_GENESIS.into(),
            hash: String::new(),
        };
        let shifted = AuditRow { actor: "a".into(), action: "bc".into(), ..base.clone() };
        assert_ne!(row_hash(&base), row_hash(&shifted));
    }

    #[test]
    fn failed_change_is_rolled_back_and_recorded() {
        let (_d, mut cat) = catalog();
        let name = pulih_core::AgentName::new("ghost").unwrap();
        let e = NewAudit::new("local:test", "revoke-agent", "ghost", serde_json::json!({}));
        let r = cat.audited(&e, |c| c.revoke_agent(&name));
        assert!(r.is_err());
        let rows = cat.audit_rows(0, 10).unwrap();
        assert_eq!(rows.len(), 1);
        assert!(rows[0].result.starts_with("error: no agent named ghost"), "{}", rows[0].result);
        assert!(cat.audit_verify().unwrap().ok);
    }

    #[test]
    fn config_change_recorded_once_per_content() {
        let (_d, mut cat) = catalog();
        assert!(cat.note_config("local:t", "aa", "c.toml").unwrap());
        assert!(!cat.note_config("local:t", "aa", "c.toml").unwrap());
        assert!(cat.note_config("local:t", "bb", "c.toml").unwrap());
        assert_eq!(cat.audit_rows(0, 10).unwrap().len(), 2);
    }
}
