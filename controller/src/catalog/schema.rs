//! Catalog schema and its migrations.
//!
//! `MIGRATIONS[i]` takes a catalog from version `i` to `i + 1`; a new
//! catalog runs them all. Each step runs in its own transaction together
//! with the `user_version` update, so a crash mid-upgrade leaves the old
//! version intact. Steps are never edited once released: a change to the
//! schema is a new step at the end (and a row in `docs/*/database.md`).

use rusqlite::Connection;

use super::CatalogError;

/// Schema version written by this build.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

const MIGRATIONS: &[&str] = &[V1, V2, LIFECYCLE, AUDIT, DRP, STANDBY, DRILLS, FORGOTTEN, PACKS];

/// Version 1: agents, certificates, enrollment tokens, blobs, datasets, snapshots.
const V1: &str = r#"
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE agents (
    id           INTEGER PRIMARY KEY,
    name         TEXT NOT NULL UNIQUE,
    status       TEXT NOT NULL CHECK (status IN ('active', 'revoked')),
    created_at   INTEGER NOT NULL,
    revoked_at   INTEGER,
    last_seen_at INTEGER
);
CREATE TABLE certificates (
    fingerprint TEXT PRIMARY KEY,
    agent_id    INTEGER NOT NULL REFERENCES agents(id),
    serial      TEXT NOT NULL,
    not_before  INTEGER NOT NULL,
    not_after   INTEGER NOT NULL,
    issued_at   INTEGER NOT NULL,
    revoked_at  INTEGER
);
CREATE TABLE enroll_tokens (
    token_hash TEXT PRIMARY KEY,
    agent_name TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    used_at    INTEGER
);
CREATE TABLE blobs (
    kind       INTEGER NOT NULL CHECK (kind IN (1, 2)),
    id         BLOB NOT NULL CHECK (length(id) = 32),
    raw_len    INTEGER NOT NULL,
    stored_len INTEGER NOT NULL,
    stored_at  INTEGER NOT NULL,
    PRIMARY KEY (kind, id)
) WITHOUT ROWID;
CREATE TABLE agent_blobs (
    agent_id INTEGER NOT NULL,
    kind     INTEGER NOT NULL,
    id       BLOB NOT NULL,
    PRIMARY KEY (agent_id, kind, id)
) WITHOUT ROWID;
CREATE TABLE datasets (
    id       INTEGER PRIMARY KEY,
    agent_id INTEGER NOT NULL REFERENCES agents(id),
    name     TEXT NOT NULL,
    UNIQUE (agent_id, name)
);
CREATE TABLE snapshots (
    id           TEXT PRIMARY KEY,
    agent_id     INTEGER NOT NULL REFERENCES agents(id),
    dataset_id   INTEGER NOT NULL REFERENCES datasets(id),
    host         TEXT NOT NULL,
    started_ns   INTEGER NOT NULL,
    finished_ns  INTEGER NOT NULL,
    root_tree    TEXT NOT NULL,
    parent       TEXT,
    files        INTEGER NOT NULL,
    bytes        INTEGER NOT NULL,
    bytes_read   INTEGER NOT NULL,
    bytes_sent   INTEGER NOT NULL,
    bytes_new    INTEGER NOT NULL,
    errors       INTEGER NOT NULL,
    committed_at INTEGER NOT NULL,
    record       BLOB NOT NULL
);
CREATE INDEX snapshots_by_dataset ON snapshots (dataset_id, started_ns);
"#;

/// Version 2: what running agents report about their datasets (issue 3).
const V2: &str = r#"
ALTER TABLE datasets ADD COLUMN rpo_target_secs INTEGER;
ALTER TABLE datasets ADD COLUMN schedule TEXT;
ALTER TABLE datasets ADD COLUMN reported_at INTEGER;
"#;

/// Storage lifecycle (issue 4): when a blob was last relied on (GC grace),
/// damage found by scrub, snapshot state, and the history of GC and scrub
/// runs. Existing blobs count as touched when they were stored.
const LIFECYCLE: &str = r#"
ALTER TABLE blobs ADD COLUMN touched_at INTEGER NOT NULL DEFAULT 0;
UPDATE blobs SET touched_at = stored_at;
CREATE INDEX blobs_by_touch ON blobs (kind, touched_at);
ALTER TABLE snapshots ADD COLUMN state TEXT NOT NULL DEFAULT 'ok' CHECK (state IN ('ok', 'damaged'));
CREATE TABLE blob_damage (
    kind        INTEGER NOT NULL CHECK (kind IN (1, 2)),
    id          BLOB NOT NULL CHECK (length(id) = 32),
    found_at    INTEGER NOT NULL,
    state       TEXT NOT NULL CHECK (state IN ('damaged', 'repaired', 'lost')),
    repaired_at INTEGER,
    detail      TEXT NOT NULL,
    PRIMARY KEY (kind, id)
) WITHOUT ROWID;
CREATE TABLE gc_runs (
    id             INTEGER PRIMARY KEY,
    started_at     INTEGER NOT NULL,
    cutoff         INTEGER NOT NULL,
    finished_at    INTEGER,
    outcome        TEXT NOT NULL CHECK (outcome IN ('running', 'ok', 'failed')),
    trees_removed  INTEGER NOT NULL DEFAULT 0,
    chunks_removed INTEGER NOT NULL DEFAULT 0,
    bytes_removed  INTEGER NOT NULL DEFAULT 0,
    detail         TEXT
);
CREATE TABLE scrub_runs (
    id            INTEGER PRIMARY KEY,
    started_at    INTEGER NOT NULL,
    finished_at   INTEGER,
    outcome       TEXT NOT NULL CHECK (outcome IN ('running', 'ok', 'damage', 'failed')),
    blobs_checked INTEGER NOT NULL DEFAULT 0,
    bytes_checked INTEGER NOT NULL DEFAULT 0,
    damaged_found INTEGER NOT NULL DEFAULT 0,
    detail        TEXT
);
"#;

/// Version 4: API tokens bound to roles and the hash-chained audit log
/// (issue 4). Only a token's blake3 hash is stored. The audit chain's head
/// (last seq and hash) is also kept in `meta`, updated in the same
/// transaction as each row, so deleting the newest rows is detected.
const AUDIT: &str = r#"
CREATE TABLE api_tokens (
    id           INTEGER PRIMARY KEY,
    name         TEXT NOT NULL UNIQUE,
    role         TEXT NOT NULL CHECK (role IN ('admin', 'coordinator', 'auditor')),
    token_hash   TEXT NOT NULL UNIQUE,
    created_at   INTEGER NOT NULL,
    created_by   TEXT NOT NULL,
    expires_at   INTEGER,
    revoked_at   INTEGER,
    last_used_at INTEGER
);
CREATE TABLE audit_log (
    seq       INTEGER PRIMARY KEY,
    at        INTEGER NOT NULL,
    actor     TEXT NOT NULL,
    action    TEXT NOT NULL,
    target    TEXT NOT NULL,
    detail    TEXT NOT NULL,
    result    TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash      TEXT NOT NULL
);
"#;

/// DR plan versions (issue 6): every generated plan document (and drill and
/// integrity report), the files and hashes that let `drp verify` recognise
/// it, and the approval of plans.
const DRP: &str = r#"
CREATE TABLE drp_versions (
    version           INTEGER PRIMARY KEY,
    kind              TEXT NOT NULL CHECK (kind IN ('plan', 'integrity', 'drill')),
    subject           TEXT,
    number            TEXT NOT NULL,
    lang              TEXT NOT NULL CHECK (lang IN ('id', 'en')),
    format            TEXT NOT NULL CHECK (format IN ('md', 'html', 'pdf')),
    generated_at      INTEGER NOT NULL,
    generated_by      TEXT NOT NULL,
    data_as_of        INTEGER NOT NULL,
    generator_version TEXT NOT NULL,
    content_blake3    TEXT NOT NULL,
    file_blake3       TEXT NOT NULL,
    file_path         TEXT NOT NULL,
    content_path      TEXT NOT NULL,
    approved_by       TEXT,
    approved_position TEXT,
    approved_at       INTEGER,
    next_review       INTEGER
);
CREATE INDEX drp_versions_by_file ON drp_versions (file_blake3);
"#;

/// Standby role, failover and failback: the job queue of standby agents,
/// the record of every failover and failback, and where each system runs.
const STANDBY: &str = r#"
CREATE TABLE standby_jobs (
    id           INTEGER PRIMARY KEY,
    agent        TEXT NOT NULL,
    kind         TEXT NOT NULL,
    spec         TEXT NOT NULL,
    state        TEXT NOT NULL CHECK (state IN ('queued', 'running', 'done', 'failed', 'expired')),
    created_at   INTEGER NOT NULL,
    expires_at   INTEGER NOT NULL,
    picked_at    INTEGER,
    finished_at  INTEGER,
    message      TEXT,
    result       TEXT,
    failover_id  INTEGER,
    created_by   TEXT NOT NULL
);
CREATE INDEX standby_jobs_by_agent ON standby_jobs (agent, state, id);
CREATE TABLE failovers (
    id                 INTEGER PRIMARY KEY,
    system             TEXT NOT NULL,
    kind               TEXT NOT NULL CHECK (kind IN ('failover', 'failback')),
    target_agent       TEXT NOT NULL,
    actor              TEXT NOT NULL,
    started_at         INTEGER NOT NULL,
    ended_at           INTEGER,
    outcome            TEXT NOT NULL CHECK (outcome IN ('running', 'succeeded', 'failed')),
    rto_achieved_secs  INTEGER,
    rpo_achieved_secs  INTEGER,
    snapshots          TEXT NOT NULL DEFAULT '[]',
    steps              TEXT NOT NULL DEFAULT '[]',
    error              TEXT
);
CREATE INDEX failovers_by_system ON failovers (system, id);
CREATE TABLE system_state (
    system            TEXT PRIMARY KEY,
    running_at        TEXT NOT NULL,
    since             INTEGER NOT NULL,
    last_failover_id  INTEGER
);
"#;

/// Failover drills (issue 5): one row per drill run, one per
/// system drilled in it, and the steps of each, in the order they ran.
/// Times are Unix nanoseconds. Texts written by checks are bounded by the
/// drill engine (see `crate::drill`).
const DRILLS: &str = r#"
CREATE TABLE drills (
    id          INTEGER PRIMARY KEY,
    trigger     TEXT NOT NULL CHECK (trigger IN ('manual', 'scheduled')),
    actor       TEXT NOT NULL,
    request     TEXT NOT NULL,
    started_ns  INTEGER NOT NULL,
    ended_ns    INTEGER,
    outcome     TEXT NOT NULL CHECK (outcome IN ('running', 'passed', 'partial', 'failed'))
);
CREATE TABLE drill_systems (
    drill_id          INTEGER NOT NULL REFERENCES drills(id),
    system            TEXT NOT NULL,
    title             TEXT NOT NULL,
    opd               TEXT NOT NULL,
    owner             TEXT,
    restore_place     TEXT NOT NULL,
    snapshots         TEXT NOT NULL,
    bytes_restored    INTEGER NOT NULL DEFAULT 0,
    files_restored    INTEGER NOT NULL DEFAULT 0,
    verify_result     TEXT,
    rto_achieved_secs REAL,
    rpo_achieved_secs REAL,
    rto_target_secs   INTEGER NOT NULL,
    rpo_target_secs   INTEGER NOT NULL,
    outcome           TEXT NOT NULL CHECK (outcome IN ('running', 'passed', 'partial', 'failed')),
    reasons           TEXT NOT NULL DEFAULT '[]',
    ended_ns          INTEGER,
    PRIMARY KEY (drill_id, system)
);
CREATE INDEX drill_systems_by_system ON drill_systems (system, drill_id);
CREATE TABLE drill_steps (
    drill_id   INTEGER NOT NULL REFERENCES drills(id),
    seq        INTEGER NOT NULL,
    system     TEXT NOT NULL,
    kind       TEXT NOT NULL CHECK (kind IN ('restore', 'verify', 'check', 'activation', 'teardown')),
    name       TEXT NOT NULL,
    started_ns INTEGER NOT NULL,
    ended_ns   INTEGER,
    outcome    TEXT NOT NULL CHECK (outcome IN ('running', 'passed', 'failed', 'skipped')),
    output     TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (drill_id, seq)
);
"#;

/// Version 8: the ids of forgotten snapshots, so a snapshot naming one as
/// its parent is not taken for a sign of a rolled-back catalog (F18).
const FORGOTTEN: &str = r#"
CREATE TABLE forgotten_snapshots (
    id           TEXT PRIMARY KEY,
    forgotten_at INTEGER NOT NULL
);
"#;

/// Version 9: pack files (store layout 3). A pack's row is written
/// (`writing`) before its file is created and becomes `sealed` in the
/// transaction that records its blobs, after the store was synced;
/// compaction marks a pack no row uses `dropped`, removes the file, then
/// the row. A blob's row says which pack holds it and where (`pack` NULL: a
/// loose file of layout 2).
const PACKS: &str = r#"
CREATE TABLE packs (
    id         BLOB PRIMARY KEY CHECK (length(id) = 16),
    state      TEXT NOT NULL CHECK (state IN ('writing', 'sealed', 'dropped')),
    size       INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL
) WITHOUT ROWID;
ALTER TABLE blobs ADD COLUMN pack BLOB;
ALTER TABLE blobs ADD COLUMN pack_offset INTEGER;
CREATE INDEX blobs_by_pack ON blobs (pack) WHERE pack IS NOT NULL;
"#;

/// Brings a catalog at version `from` up to [`SCHEMA_VERSION`].
pub(super) fn migrate(conn: &Connection, from: i64) -> Result<(), CatalogError> {
    for (i, step) in MIGRATIONS.iter().enumerate().skip(from as usize) {
        let tx = conn.unchecked_transaction()?;
        tx.execute_batch(step)?;
        tx.pragma_update(None, "user_version", i as i64 + 1)?;
        tx.commit()?;
        if from > 0 {
            tracing::info!(from = i, to = i + 1, "catalog schema upgraded");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upgrade_from_every_version_matches_a_fresh_catalog() {
        let dump = |conn: &Connection| -> Vec<String> {
            let mut st = conn.prepare("SELECT type, name, sql FROM sqlite_master ORDER BY type, name").unwrap();
            st.query_map([], |r| Ok(format!("{}:{}", r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
                .unwrap()
                .map(Result::unwrap)
                .collect()
        };
        let fresh = Connection::open_in_memory().unwrap();
        migrate(&fresh, 0).unwrap();
        for from in 1..SCHEMA_VERSION {
            let old = Connection::open_in_memory().unwrap();
            for (i, step) in MIGRATIONS.iter().take(from as usize).enumerate() {
                old.execute_batch(step).unwrap();
                old.pragma_update(None, "user_version", i as i64 + 1).unwrap();
            }
            migrate(&old, from).unwrap();
            assert_eq!(dump(&old), dump(&fresh), "upgrade from v{from}");
            let v: i64 = old.pragma_query_value(None, "user_version", |r| r.get(0)).unwrap();
            assert_eq!(v, SCHEMA_VERSION);
        }
    }
}
