//! Keeps the database documents true: every table, column and index of a
//! freshly created catalog must be described in `docs/id/basis-data.md` and
//! `docs/en/database.md` (Perwali Blitar 3/2018, Pasal 10 ayat (3) huruf b).
//!
//! What the documents must hold, for each table of the schema:
//! * a Markdown heading that names the table in backticks
//!   (`` ### 2.3 Table `agents` ``); its section runs to the next heading of
//!   the same or a higher level;
//! * inside that section, one table row per column that starts with the
//!   column name in backticks and states its declared SQLite type
//!   (`` | `name` | TEXT | ... ``).
//!
//! Every index the schema creates must be named in backticks somewhere in
//! the document. Lines inside fenced code blocks are not read.

use std::path::{Path, PathBuf};

use pulih_controller::catalog::Catalog;
use rusqlite::Connection;

/// A column as SQLite reports it.
struct Column {
    name: String,
    decl_type: String,
}

/// A table and its columns, in schema order.
struct Table {
    name: String,
    columns: Vec<Column>,
}

/// The documents that must describe the catalog, relative to the workspace.
const DOCS: [&str; 2] = ["docs/id/basis-data.md", "docs/en/database.md"];

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("controller/ has a parent").to_owned()
}

/// Tables (with columns) and indexes of a catalog made by `Catalog::create`.
fn schema() -> (Vec<Table>, Vec<String>) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("catalog.db");
    drop(Catalog::create(&path, "docs-test").expect("creating a catalog"));
    let conn = Connection::open(&path).expect("opening the catalog");
    let names = |kind: &str| -> Vec<String> {
        let mut st = conn
            .prepare("SELECT name FROM sqlite_master WHERE type = ?1 AND name NOT LIKE 'sqlite_%' ORDER BY rowid")
            .expect("query sqlite_master");
        st.query_map([kind], |r| r.get(0)).expect("listing sqlite_master").collect::<Result<_, _>>().expect("names")
    };
    let tables = names("table")
        .into_iter()
        .map(|name| {
            // Table names come from sqlite_master itself, so quoting is enough.
            let mut st = conn.prepare(&format!("PRAGMA table_info(\"{name}\")")).expect("table_info");
            let columns = st
                .query_map([], |r| Ok(Column { name: r.get("name")?, decl_type: r.get("type")? }))
                .expect("columns")
                .collect::<Result<_, _>>()
                .expect("column rows");
            Table { name, columns }
        })
        .collect();
    (tables, names("index"))
}

/// The document's lines outside fenced code blocks.
fn prose_lines(text: &str) -> Vec<&str> {
    let mut fenced = false;
    let mut out = Vec::new();
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if !fenced {
            out.push(line);
        }
    }
    out
}

/// The level of a Markdown heading line (`## x` is 2).
fn heading_level(line: &str) -> Option<usize> {
    let n = line.bytes().take_while(|b| *b == b'#').count();
    ((1..=6).contains(&n) && line[n..].starts_with(' ')).then_some(n)
}

/// The lines of the section whose heading first names `table` in backticks.
fn section<'a>(lines: &[&'a str], table: &str) -> Option<Vec<&'a str>> {
    let needle = format!("`{table}`");
    let start = lines.iter().position(|l| heading_level(l).is_some() && l.contains(&needle))?;
    let level = heading_level(lines[start]).expect("a heading");
    Some(lines[start + 1..].iter().copied().take_while(|l| heading_level(l).is_none_or(|n| n > level)).collect())
}

/// The row of `section` that starts with the column name in backticks.
fn column_row<'a>(section: &[&'a str], column: &str) -> Option<&'a str> {
    let start = format!("| `{column}` |");
    section.iter().copied().find(|l| l.trim_start().starts_with(&start))
}

fn check(doc: &str, text: &str, tables: &[Table], indexes: &[String]) -> Vec<String> {
    let lines = prose_lines(text);
    let mut problems = Vec::new();
    for t in tables {
        let Some(sec) = section(&lines, &t.name) else {
            problems.push(format!("{doc}: table `{}` is not described: no heading names it in backticks", t.name));
            continue;
        };
        for c in &t.columns {
            match column_row(&sec, &c.name) {
                None => problems.push(format!(
                    "{doc}: column `{}`.`{}` ({}) is not described: the section of `{}` has no row starting with | `{}` |",
                    t.name, c.name, c.decl_type, t.name, c.name
                )),
                Some(row) if !row.split('|').any(|cell| cell.trim() == c.decl_type) => problems.push(format!(
                    "{doc}: column `{}`.`{}` is documented without its type {}: {row}",
                    t.name, c.name, c.decl_type
                )),
                Some(_) => {}
            }
        }
    }
    for i in indexes {
        if !lines.iter().any(|l| l.contains(&format!("`{i}`"))) {
            problems.push(format!("{doc}: index `{i}` is not named in backticks"));
        }
    }
    problems
}

#[test]
fn database_documents_describe_every_table_and_column() {
    let (tables, indexes) = schema();
    assert!(tables.len() >= 8, "the catalog has fewer tables than expected: the query is wrong");
    let mut problems = Vec::new();
    for doc in DOCS {
        let path = workspace().join(doc);
        match std::fs::read_to_string(&path) {
            Ok(text) => problems.extend(check(doc, &text, &tables, &indexes)),
            Err(e) => problems.push(format!("{doc}: cannot read {}: {e}", path.display())),
        }
    }
    assert!(
        problems.is_empty(),
        "the database documents do not match the catalog schema (controller/src/catalog.rs); \
         describe each table and column in both documents:\n  {}",
        problems.join("\n  ")
    );
}

#[test]
fn the_checker_notices_what_is_missing() {
    let tables = vec![Table {
        name: "agents".into(),
        columns: vec![
            Column { name: "id".into(), decl_type: "INTEGER".into() },
            Column { name: "name".into(), decl_type: "TEXT".into() },
            Column { name: "status".into(), decl_type: "TEXT".into() },
        ],
    }];
    let doc = "## 2. Tables\n\n### 2.1 Table `agents`\n\n| Column | Type |\n|---|---|\n\
               | `id` | INTEGER |\n| `name` | BLOB |\n\n### 2.2 Other\n\n| `status` | TEXT |\n\
               ```sql\n| `status` | TEXT |\n```\n";
    let problems = check("doc.md", doc, &tables, &["by_name".to_string()]);
    assert_eq!(problems.len(), 3, "{problems:#?}");
    assert!(problems[0].contains("`agents`.`name` is documented without its type TEXT"), "{}", problems[0]);
    assert!(problems[1].contains("`agents`.`status` (TEXT) is not described"), "{}", problems[1]);
    assert!(problems[2].contains("index `by_name`"), "{}", problems[2]);
    let none = check("doc.md", "# Nothing\n", &tables, &[]);
    assert!(none[0].contains("table `agents` is not described"), "{none:?}");
}
