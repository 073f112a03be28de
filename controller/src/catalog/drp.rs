//! Catalog side of the DR plan (issue 6): generated versions with the
//! hashes `drp verify` checks, their approval, and the per-dataset facts
//! the plan needs beyond [`super::AgentOverview`] (newest snapshot id and
//! size, damaged snapshots).

use rusqlite::{params, OptionalExtension};

use super::{Catalog, CatalogError};

/// A generated plan version as stored.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DrpVersionRow {
    pub version: i64,
    /// `plan`, `integrity` (report) or `drill` (report).
    pub kind: String,
    /// The drill a drill report is about.
    pub subject: Option<String>,
    pub number: String,
    pub lang: String,
    pub format: String,
    pub generated_at: i64,
    pub generated_by: String,
    pub data_as_of: i64,
    pub generator_version: String,
    /// blake3 of the canonical content (printed in the document).
    pub content_blake3: String,
    /// blake3 of the whole file as written.
    pub file_blake3: String,
    /// File, relative to the data directory.
    pub file_path: String,
    /// Canonical content (JSON document tree), relative to the data directory.
    pub content_path: String,
    pub approved_by: Option<String>,
    pub approved_position: Option<String>,
    pub approved_at: Option<i64>,
    pub next_review: Option<i64>,
}

/// What a new version records.
#[derive(Debug, Clone)]
pub struct NewDrpVersion {
    pub version: i64,
    pub kind: String,
    pub subject: Option<String>,
    pub number: String,
    pub lang: String,
    pub format: String,
    pub generated_at: i64,
    pub generated_by: String,
    pub data_as_of: i64,
    pub generator_version: String,
    pub content_blake3: String,
    pub file_blake3: String,
    pub file_path: String,
    pub content_path: String,
}

/// The newest snapshot of a dataset and its damaged snapshot count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LatestSnapshot {
    pub agent: String,
    pub dataset: String,
    pub id: String,
    pub bytes: u64,
    pub damaged: u64,
}

const COLS: &str =
    "version, kind, subject, number, lang, format, generated_at, generated_by, data_as_of, generator_version,
    content_blake3, file_blake3, file_path, content_path, approved_by, approved_position, approved_at, next_review";

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<DrpVersionRow> {
    Ok(DrpVersionRow {
        version: r.get(0)?,
        kind: r.get(1)?,
        subject: r.get(2)?,
        number: r.get(3)?,
        lang: r.get(4)?,
        format: r.get(5)?,
        generated_at: r.get(6)?,
        generated_by: r.get(7)?,
        data_as_of: r.get(8)?,
        generator_version: r.get(9)?,
        content_blake3: r.get(10)?,
        file_blake3: r.get(11)?,
        file_path: r.get(12)?,
        content_path: r.get(13)?,
        approved_by: r.get(14)?,
        approved_position: r.get(15)?,
        approved_at: r.get(16)?,
        next_review: r.get(17)?,
    })
}

impl Catalog {
    /// The version number the next generated plan gets.
    pub fn drp_next_version(&self) -> Result<i64, CatalogError> {
        Ok(self.conn.query_row("SELECT coalesce(max(version), 0) + 1 FROM drp_versions", [], |r| r.get(0))?)
    }

    /// Records a generated version (call inside [`Catalog::audited`]).
    /// Fails with `Ambiguous` when another generation took the number.
    pub fn drp_insert(&mut self, v: &NewDrpVersion) -> Result<(), CatalogError> {
        let n = self.conn.execute(
            "INSERT OR IGNORE INTO drp_versions (version, number, lang, format, generated_at, generated_by, data_as_of,
                generator_version, content_blake3, file_blake3, file_path, content_path, kind, subject)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
            params![
                v.version,
                v.number,
                v.lang,
                v.format,
                v.generated_at,
                v.generated_by,
                v.data_as_of,
                v.generator_version,
                v.content_blake3,
                v.file_blake3,
                v.file_path,
                v.content_path,
                v.kind,
                v.subject
            ],
        )?;
        if n == 0 {
            return Err(CatalogError::Ambiguous(format!("plan version {} was taken by another generation", v.version)));
        }
        Ok(())
    }

    /// Every version, newest first.
    pub fn drp_versions(&self) -> Result<Vec<DrpVersionRow>, CatalogError> {
        let mut st = self.conn.prepare(&format!("SELECT {COLS} FROM drp_versions ORDER BY version DESC"))?;
        let rows = st.query_map([], row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// One version.
    pub fn drp_version(&self, version: i64) -> Result<DrpVersionRow, CatalogError> {
        self.conn
            .query_row(&format!("SELECT {COLS} FROM drp_versions WHERE version = ?1"), [version], row)
            .optional()?
            .ok_or_else(|| CatalogError::NotFound(format!("no plan version {version}")))
    }

    /// The version whose file has this blake3, if any.
    pub fn drp_by_file(&self, file_blake3: &str) -> Result<Option<DrpVersionRow>, CatalogError> {
        Ok(self
            .conn
            .query_row(&format!("SELECT {COLS} FROM drp_versions WHERE file_blake3 = ?1"), [file_blake3], row)
            .optional()?)
    }

    /// The approved version in force: the latest approval.
    pub fn drp_in_force(&self) -> Result<Option<DrpVersionRow>, CatalogError> {
        Ok(self
            .conn
            .query_row(
                &format!(
                    "SELECT {COLS} FROM drp_versions WHERE kind = 'plan' AND approved_at IS NOT NULL ORDER BY approved_at DESC, version DESC LIMIT 1"
                ),
                [],
                row,
            )
            .optional()?)
    }

    /// Records an approval (call inside [`Catalog::audited`]). A version is
    /// approved once; approving again is refused so the record stays what
    /// was signed.
    pub fn drp_approve(
        &mut self,
        version: i64,
        name: &str,
        position: &str,
        at: i64,
        next_review: i64,
    ) -> Result<DrpVersionRow, CatalogError> {
        let v = self.drp_version(version)?;
        if v.kind != "plan" {
            return Err(CatalogError::Invalid(format!(
                "version {version} is a {} report; only plans are approved",
                v.kind
            )));
        }
        if let (Some(by), Some(when)) = (&v.approved_by, v.approved_at) {
            return Err(CatalogError::Invalid(format!(
                "plan version {version} was already approved by {by} at {}",
                super::rfc3339_ns(when * 1_000_000_000)
            )));
        }
        self.conn.execute(
            "UPDATE drp_versions SET approved_by = ?2, approved_position = ?3, approved_at = ?4, next_review = ?5 WHERE version = ?1",
            params![version, name, position, at, next_review],
        )?;
        self.drp_version(version)
    }

    /// The newest snapshot of every dataset, with its damaged snapshot count.
    pub fn latest_snapshots(&self) -> Result<Vec<LatestSnapshot>, CatalogError> {
        let mut st = self.conn.prepare(
            "SELECT a.name, d.name,
                    (SELECT s.id FROM snapshots s WHERE s.dataset_id = d.id ORDER BY s.finished_ns DESC, s.id DESC LIMIT 1),
                    (SELECT s.bytes FROM snapshots s WHERE s.dataset_id = d.id ORDER BY s.finished_ns DESC, s.id DESC LIMIT 1),
                    (SELECT count(*) FROM snapshots s WHERE s.dataset_id = d.id AND s.state = 'damaged')
             FROM datasets d JOIN agents a ON a.id = d.agent_id ORDER BY a.name, d.name",
        )?;
        let rows = st.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, Option<String>>(2)?,
                r.get::<_, Option<i64>>(3)?,
                r.get::<_, i64>(4)?,
            ))
        })?;
        let mut out = Vec::new();
        for r in rows {
            let (agent, dataset, id, bytes, damaged) = r?;
            if let Some(id) = id {
                out.push(LatestSnapshot {
                    agent,
                    dataset,
                    id,
                    bytes: bytes.unwrap_or(0) as u64,
                    damaged: damaged as u64,
                });
            }
        }
        Ok(out)
    }

    /// Counts of blob damage by state: (damaged, lost, repaired).
    pub fn damage_counts(&self) -> Result<(u64, u64, u64), CatalogError> {
        Ok(self.conn.query_row(
            "SELECT coalesce(sum(state = 'damaged'), 0), coalesce(sum(state = 'lost'), 0), coalesce(sum(state = 'repaired'), 0) FROM blob_damage",
            [],
            |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64, r.get::<_, i64>(2)? as u64)),
        )?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(version: i64, hash: &str) -> NewDrpVersion {
        NewDrpVersion {
            version,
            kind: "plan".into(),
            subject: None,
            number: format!("DRP/X/{version}/2026"),
            lang: "id".into(),
            format: "pdf".into(),
            generated_at: 100,
            generated_by: "local:t".into(),
            data_as_of: 100,
            generator_version: "pulih-controller 0".into(),
            content_blake3: "c".repeat(64),
            file_blake3: hash.into(),
            file_path: "drp/x.pdf".into(),
            content_path: "drp/x.json".into(),
        }
    }

    #[test]
    fn versions_are_unique_and_approved_once() {
        let dir = tempfile::tempdir().unwrap();
        let mut cat = Catalog::create(&dir.path().join("c.db"), "drc").unwrap();
        assert_eq!(cat.drp_next_version().unwrap(), 1);
        cat.drp_insert(&v(1, "aa")).unwrap();
        assert!(matches!(cat.drp_insert(&v(1, "bb")), Err(CatalogError::Ambiguous(_))));
        assert_eq!(cat.drp_next_version().unwrap(), 2);
        assert_eq!(cat.drp_by_file("aa").unwrap().unwrap().version, 1);
        assert!(cat.drp_in_force().unwrap().is_none());
        let r = cat.drp_approve(1, "Budi", "Kepala Dinas", 200, 300).unwrap();
        assert_eq!(r.next_review, Some(300));
        assert!(cat.drp_approve(1, "Other", "x", 201, 301).is_err());
        assert_eq!(cat.drp_in_force().unwrap().unwrap().approved_by.as_deref(), Some("Budi"));
        assert!(matches!(cat.drp_approve(9, "a", "b", 1, 2), Err(CatalogError::NotFound(_))));
    }
}
