//! Detects a catalog replaced by an older copy of itself (F18).
//!
//! An older `catalog.db` is internally consistent: its audit chain is a
//! valid prefix of the newer one, so `audit verify` passes, and the
//! snapshots committed after the copy are simply absent. To notice, the
//! controller keeps a small witness *outside* the catalog, in the store
//! directory (`store/catalog-witness.json`): the catalog's count of
//! snapshot commits and the head of its audit chain, written after each
//! snapshot commit, at start and at shutdown. At start the catalog must be
//! at least as far as the witness and hold the same audit row the witness
//! names; otherwise `serve` refuses, and an operator either puts the newest
//! catalog back or accepts the older one on the record
//! (`pulih-controller accept-catalog`).
//!
//! The witness only ever lags the catalog (it is read from the catalog
//! after a commit), so a crash can never make a good catalog look rolled
//! back. What it cannot see: a rollback of the catalog *and* the store
//! together (a whole data directory restored from an old copy), and audit
//! rows written after the last snapshot commit by a controller that was
//! then killed. borg keeps the same kind of witness on the client side
//! (its "manifest timestamp" check).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::catalog::{Catalog, CatalogError, CatalogHead};

/// File name of the witness inside the store directory.
pub const FILE_NAME: &str = "catalog-witness.json";
/// Version of the witness file's format.
const FORMAT: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
struct WitnessFile {
    format: u32,
    snapshot_commits: u64,
    audit_seq: i64,
    audit_hash: String,
}

impl From<&CatalogHead> for WitnessFile {
    fn from(h: &CatalogHead) -> Self {
        Self {
            format: FORMAT,
            snapshot_commits: h.snapshot_commits,
            audit_seq: h.audit_seq,
            audit_hash: h.audit_hash.clone(),
        }
    }
}

/// What went wrong reading, checking or writing the witness.
#[derive(Debug, thiserror::Error)]
pub enum WitnessError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error(
        "{path}: not a catalog witness this build can read ({why}); if catalog.db is the one to keep, \
         accept it on the record with `pulih-controller accept-catalog --reason TEXT`"
    )]
    Invalid { path: PathBuf, why: String },
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// The catalog is behind the witness: it was replaced by an older copy.
    #[error(
        "catalog.db is older than this data directory (F18): {why}. It was probably restored from an \
         older copy; snapshots and audit rows recorded after that copy are missing from it. Put the \
         newest catalog.db back, or, if this older catalog is the best there is, accept it on the \
         record with `pulih-controller accept-catalog --reason TEXT` (agents then upload again what \
         it lacks)"
    )]
    RolledBack { why: String },
}

/// Outcome of a check that passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checked {
    /// The catalog is at or ahead of the witness.
    Matches,
    /// There was no witness yet (a data directory from before it existed).
    NoWitness,
}

fn path(store_root: &Path) -> PathBuf {
    store_root.join(FILE_NAME)
}

fn read(store_root: &Path) -> Result<Option<WitnessFile>, WitnessError> {
    let p = path(store_root);
    let bytes = match fs::read(&p) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(WitnessError::Io { path: p, source }),
    };
    let w: WitnessFile =
        serde_json::from_slice(&bytes).map_err(|e| WitnessError::Invalid { path: p.clone(), why: e.to_string() })?;
    if w.format != FORMAT {
        return Err(WitnessError::Invalid { path: p, why: format!("format {} (this build reads {FORMAT})", w.format) });
    }
    Ok(Some(w))
}

/// Why `head` is behind `witness`, if it is.
fn behind(cat: &Catalog, head: &CatalogHead, w: &WitnessFile) -> Result<Option<String>, CatalogError> {
    if head.snapshot_commits < w.snapshot_commits {
        return Ok(Some(format!(
            "it records {} snapshot commit(s), the data directory has seen {}",
            head.snapshot_commits, w.snapshot_commits
        )));
    }
    if head.audit_seq < w.audit_seq {
        return Ok(Some(format!(
            "its audit log ends at row {}, the data directory has seen row {}",
            head.audit_seq, w.audit_seq
        )));
    }
    // Same length or longer: it must be the same chain. At the head the
    // recorded head hash is compared (a deleted last row is `audit
    // verify`'s to report, not a rollback).
    let at =
        if head.audit_seq == w.audit_seq { Some(head.audit_hash.clone()) } else { cat.audit_hash_at(w.audit_seq)? };
    if w.audit_seq > 0 && at.as_deref() != Some(w.audit_hash.as_str()) {
        return Ok(Some(format!(
            "its audit row {} is not the one the data directory has seen (another or a rebuilt catalog)",
            w.audit_seq
        )));
    }
    Ok(None)
}

/// Checks the catalog against the store's witness. Fails with
/// [`WitnessError::RolledBack`] when the catalog is behind it.
pub fn check(cat: &Catalog, store_root: &Path) -> Result<Checked, WitnessError> {
    let Some(w) = read(store_root)? else { return Ok(Checked::NoWitness) };
    match behind(cat, &cat.head()?, &w)? {
        Some(why) => Err(WitnessError::RolledBack { why }),
        None => Ok(Checked::Matches),
    }
}

/// Writes `head` as the witness, durably (`store::write_durable`).
/// Several processes may write: each uses its own temporary name, and
/// each writes a head it read from the catalog.
pub fn record(store_root: &Path, head: &CatalogHead) -> Result<(), WitnessError> {
    let bytes = serde_json::to_vec_pretty(&WitnessFile::from(head)).expect("witness serializes");
    Ok(crate::store::write_durable(&path(store_root), &bytes)?)
}

/// Removes temporary files of witness writes interrupted by a crash
/// (`serve` calls this at start, holding the data directory's lock).
pub fn remove_leftovers(store_root: &Path) {
    let Ok(dir) = fs::read_dir(store_root) else { return };
    for e in dir.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(&format!(".{FILE_NAME}.")) && name.ends_with(".tmp") {
            let _ = fs::remove_file(e.path());
        }
    }
}

/// Writes the catalog's current head as the witness.
pub fn record_catalog(cat: &Catalog, store_root: &Path) -> Result<CatalogHead, WitnessError> {
    let head = cat.head()?;
    record(store_root, &head)?;
    Ok(head)
}

/// The witness and the catalog's head side by side (for the audit row of
/// an accepted rollback).
pub fn describe(cat: &Catalog, store_root: &Path) -> Result<serde_json::Value, WitnessError> {
    let head = cat.head()?;
    // An unreadable witness is described by its error (accept-catalog
    // accepts a catalog beside a damaged witness too).
    let witness = match read(store_root) {
        Ok(w) => serde_json::json!(w.map(|w| serde_json::json!({
            "snapshot_commits": w.snapshot_commits, "audit_seq": w.audit_seq, "audit_hash": w.audit_hash,
        }))),
        Err(e) => serde_json::json!({ "unreadable": e.to_string() }),
    };
    Ok(serde_json::json!({
        "witness": witness,
        "catalog": {
            "snapshot_commits": head.snapshot_commits, "audit_seq": head.audit_seq, "audit_hash": head.audit_hash,
        },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::NewAudit;

    fn audited(cat: &mut Catalog, what: &str) {
        let e = NewAudit::new("local:test", what, "x", serde_json::json!({}));
        cat.audit::<(), String>(&e, &Ok(())).unwrap();
    }

    fn setup() -> (tempfile::TempDir, Catalog, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let cat = Catalog::create(&dir.path().join("catalog.db"), "drc").unwrap();
        let store = dir.path().join("store");
        fs::create_dir_all(&store).unwrap();
        (dir, cat, store)
    }

    #[test]
    fn f18_an_older_copy_of_the_catalog_is_detected_and_a_newer_one_is_not() {
        let (dir, mut cat, store) = setup();
        assert_eq!(check(&cat, &store).unwrap(), Checked::NoWitness);
        audited(&mut cat, "one");
        record_catalog(&cat, &store).unwrap();
        assert_eq!(check(&cat, &store).unwrap(), Checked::Matches);

        // Keep a copy, go on, and remember the newer state.
        drop(cat);
        fs::copy(dir.path().join("catalog.db"), dir.path().join("old.db")).unwrap();
        let mut cat = Catalog::open(&dir.path().join("catalog.db")).unwrap();
        audited(&mut cat, "two");
        // A witness lagging behind the catalog (a crash before it was
        // written) is fine.
        assert_eq!(check(&cat, &store).unwrap(), Checked::Matches);
        record_catalog(&cat, &store).unwrap();
        audited(&mut cat, "three");
        assert_eq!(check(&cat, &store).unwrap(), Checked::Matches);
        drop(cat);

        // The older copy is behind the witness.
        let old = Catalog::open(&dir.path().join("old.db")).unwrap();
        let err = check(&old, &store).unwrap_err();
        assert!(matches!(err, WitnessError::RolledBack { .. }), "{err}");
        assert!(err.to_string().contains("audit log ends at row"), "{err}");
        assert!(err.to_string().contains("accept-catalog"), "{err}");
    }

    #[test]
    fn f18_a_different_catalog_of_the_same_length_is_detected() {
        let (dir, mut cat, store) = setup();
        audited(&mut cat, "one");
        record_catalog(&cat, &store).unwrap();
        let mut other = Catalog::create(&dir.path().join("other.db"), "drc").unwrap();
        audited(&mut other, "something else");
        audited(&mut other, "and more");
        let err = check(&other, &store).unwrap_err();
        assert!(err.to_string().contains("is not the one the data directory has seen"), "{err}");
    }

    #[test]
    fn f18_fewer_snapshot_commits_are_detected_even_with_the_same_audit_chain() {
        let (_dir, cat, store) = setup();
        let mut head = cat.head().unwrap();
        head.snapshot_commits += 1;
        record(&store, &head).unwrap();
        let err = check(&cat, &store).unwrap_err();
        assert!(err.to_string().contains("snapshot commit(s)"), "{err}");
    }

    #[test]
    fn a_damaged_witness_is_a_clear_error_naming_the_file() {
        let (_dir, cat, store) = setup();
        fs::write(store.join(FILE_NAME), b"{\"format\": 1").unwrap();
        let err = check(&cat, &store).unwrap_err();
        assert!(matches!(err, WitnessError::Invalid { .. }), "{err}");
        assert!(err.to_string().contains(FILE_NAME), "{err}");
        assert!(describe(&cat, &store).unwrap()["witness"]["unreadable"].as_str().unwrap().contains(FILE_NAME));
        fs::write(store.join(FILE_NAME), br#"{"format": 9, "snapshot_commits": 0, "audit_seq": 0, "audit_hash": ""}"#)
            .unwrap();
        assert!(check(&cat, &store).unwrap_err().to_string().contains("format 9"));
    }
}
