//! The document tree every format is rendered from, and the small markup
//! templates write it in.
//!
//! Templates (MiniJinja) produce a restricted Markdown: `#`..`###`
//! headings, paragraphs, `- ` and `1. ` lists, pipe tables (header row,
//! `|---|` separator, rows), ```` ``` ```` code blocks, `> ` notes, and
//! three blocks of our own: `::: cover` (title, subtitle, `key: value`
//! fields), `::: signature` (`role | name | position | NIP` lines) and
//! `::: pagebreak`. Inline, `**bold**` and `` `code` `` only. [`parse`]
//! turns that into [`Block`]s; the Markdown, HTML and PDF renderers all
//! read the same tree, so the three formats say exactly the same thing.
//!
//! The content hash: blake3 over a domain tag and the JSON of the
//! [`Document`] with `meta.content_blake3` empty ([`Document::content_hash`]).
//! It does not depend on the output format; it is printed in every format
//! and recorded in the catalog with the file's own blake3.

use serde::{Deserialize, Serialize};

/// Domain tag of the content hash; change it with the tree's shape.
const DOMAIN: &[u8] = b"pulih-drp-content-v1";

/// What the renderers print around the content (cover, headers, footers).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DocMeta {
    pub title: String,
    pub institution: String,
    pub number: String,
    pub version: i64,
    pub lang: String,
    pub classification: String,
    /// Set after hashing; empty inside the hash.
    pub content_blake3: String,
}

/// A signatory line of a `::: signature` block.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SignLine {
    pub role: String,
    pub name: String,
    pub position: String,
    pub nip: String,
}

/// One block of the document.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum Block {
    Cover { title: String, subtitle: String, fields: Vec<(String, String)> },
    Heading { level: u8, text: String, anchor: String },
    Para { text: String },
    List { ordered: bool, items: Vec<String> },
    Table { header: Vec<String>, rows: Vec<Vec<String>> },
    Code { text: String },
    Note { text: String },
    Signature { lines: Vec<SignLine> },
    PageBreak,
}

/// A whole document.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Document {
    pub meta: DocMeta,
    pub blocks: Vec<Block>,
}

/// Markup that cannot be read, with its line in the template output.
#[derive(Debug, thiserror::Error)]
#[error("line {line} of the rendered template: {message}")]
pub struct MarkupError {
    pub line: usize,
    pub message: String,
}

impl Document {
    /// The canonical bytes: the JSON of the tree with an empty content hash.
    pub fn canonical(&self) -> Vec<u8> {
        let mut d = self.clone();
        d.meta.content_blake3.clear();
        serde_json::to_vec(&d).unwrap_or_default()
    }

    /// blake3 of the domain tag and [`Self::canonical`], hex.
    pub fn content_hash(&self) -> String {
        let mut h = blake3::Hasher::new();
        h.update(DOMAIN);
        h.update(&self.canonical());
        h.finalize().to_hex().to_string()
    }

    /// Headings, for tables of contents.
    pub fn headings(&self) -> impl Iterator<Item = (u8, &str, &str)> {
        self.blocks.iter().filter_map(|b| match b {
            Block::Heading { level, text, anchor } => Some((*level, text.as_str(), anchor.as_str())),
            _ => None,
        })
    }

    /// Sections keyed by their level-1/2 heading, for `drp diff`.
    pub fn sections(&self) -> Vec<(String, Vec<&Block>)> {
        let mut out: Vec<(String, Vec<&Block>)> = vec![(String::from("(sampul / cover)"), Vec::new())];
        for b in &self.blocks {
            match b {
                Block::Heading { level, text, .. } if *level <= 2 => out.push((text.clone(), vec![b])),
                _ => out.last_mut().map(|s| s.1.push(b)).unwrap_or(()),
            }
        }
        out
    }
}

/// An anchor from a heading: lowercase ASCII letters and digits joined by `-`.
pub fn slug(text: &str) -> String {
    let mut s = String::new();
    for c in text.chars() {
        if c.is_ascii_alphanumeric() {
            s.push(c.to_ascii_lowercase());
        } else if !s.ends_with('-') && !s.is_empty() {
            s.push('-');
        }
    }
    s.trim_end_matches('-').to_owned()
}

fn split_row(line: &str) -> Vec<String> {
    let inner = line.trim().trim_start_matches('|');
    let inner = inner.strip_suffix('|').unwrap_or(inner);
    let mut cells = Vec::new();
    let mut cur = String::new();
    let mut chars = inner.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&'|') => {
                cur.push('|');
                chars.next();
            }
            '|' => cells.push(std::mem::take(&mut cur).trim().to_owned()),
            _ => cur.push(c),
        }
    }
    cells.push(cur.trim().to_owned());
    cells
}

fn is_separator(line: &str) -> bool {
    let t = line.trim();
    t.starts_with('|') && t.chars().all(|c| matches!(c, '|' | '-' | ':' | ' '))
}

fn ordered_item(line: &str) -> Option<&str> {
    let digits = line.bytes().take_while(u8::is_ascii_digit).count();
    (digits > 0 && line[digits..].starts_with(". ")).then(|| &line[digits + 2..])
}

/// Parses template output into blocks.
pub fn parse(text: &str) -> Result<Vec<Block>, MarkupError> {
    let lines: Vec<&str> = text.lines().collect();
    let mut blocks = Vec::new();
    let mut i = 0;
    let err = |line: usize, m: &str| MarkupError { line: line + 1, message: m.into() };
    while i < lines.len() {
        let line = lines[i].trim_end();
        let t = line.trim_start();
        if t.is_empty() {
            i += 1;
        } else if t.starts_with("```") {
            // The closing fence is at least as long as the opening one, so
            // a block can hold shorter backtick runs (command output).
            let n = t.chars().take_while(|&c| c == '`').count();
            let closes = |l: &str| {
                let l = l.trim();
                l.len() >= n && l.chars().all(|c| c == '`')
            };
            let start = i;
            i += 1;
            let mut body = Vec::new();
            while i < lines.len() && !closes(lines[i]) {
                body.push(lines[i].trim_end());
                i += 1;
            }
            if i == lines.len() {
                return Err(err(start, "code block is not closed with ```"));
            }
            i += 1;
            blocks.push(Block::Code { text: body.join("\n") });
        } else if let Some(kind) = t.strip_prefix(":::") {
            let kind = kind.trim();
            if kind == "pagebreak" {
                blocks.push(Block::PageBreak);
                i += 1;
                continue;
            }
            let start = i;
            i += 1;
            let mut body = Vec::new();
            while i < lines.len() && lines[i].trim() != ":::" {
                if !lines[i].trim().is_empty() {
                    body.push(lines[i].trim());
                }
                i += 1;
            }
            if i == lines.len() {
                return Err(err(start, &format!("::: {kind} block is not closed with :::")));
            }
            i += 1;
            match kind {
                "cover" => {
                    let (mut title, mut subtitle, mut fields) = (String::new(), String::new(), Vec::new());
                    for l in body {
                        let (k, v) = l.split_once(':').ok_or_else(|| err(start, "cover lines are `key: value`"))?;
                        match k.trim() {
                            "title" => title = v.trim().into(),
                            "subtitle" => subtitle = v.trim().into(),
                            k => fields.push((k.to_owned(), v.trim().to_owned())),
                        }
                    }
                    blocks.push(Block::Cover { title, subtitle, fields });
                }
                "signature" => {
                    let mut out = Vec::new();
                    for l in body {
                        let c = split_row(l);
                        if !(3..=4).contains(&c.len()) {
                            return Err(err(
                                start,
                                "signature lines are `role | name | position | NIP` (NIP may be left out)",
                            ));
                        }
                        out.push(SignLine {
                            role: c[0].clone(),
                            name: c[1].clone(),
                            position: c[2].clone(),
                            nip: c.get(3).cloned().unwrap_or_default(),
                        });
                    }
                    blocks.push(Block::Signature { lines: out });
                }
                other => return Err(err(start, &format!("unknown block ::: {other} (cover, signature, pagebreak)"))),
            }
        } else if t.starts_with('#') {
            let level = t.bytes().take_while(|&b| b == b'#').count();
            if level > 3 || !t[level..].starts_with(' ') {
                return Err(err(i, "headings are #, ## or ### followed by a space"));
            }
            let text = t[level..].trim().to_owned();
            blocks.push(Block::Heading { level: level as u8, anchor: slug(&text), text });
            i += 1;
        } else if t.starts_with('|') {
            let start = i;
            let header = split_row(t);
            if i + 1 >= lines.len() || !is_separator(lines[i + 1]) {
                return Err(err(start, "a table needs a |---| line under its header"));
            }
            i += 2;
            let mut rows = Vec::new();
            while i < lines.len() && lines[i].trim_start().starts_with('|') {
                let mut r = split_row(lines[i]);
                if r.len() > header.len() {
                    return Err(err(i, &format!("row has {} cells, the header {}", r.len(), header.len())));
                }
                r.resize(header.len(), String::new());
                rows.push(r);
                i += 1;
            }
            blocks.push(Block::Table { header, rows });
        } else if t.starts_with("- ") || ordered_item(t).is_some() {
            let ordered = !t.starts_with("- ");
            let mut items: Vec<String> = Vec::new();
            while i < lines.len() {
                let l = lines[i].trim_end();
                let lt = l.trim_start();
                let item = if ordered { ordered_item(lt) } else { lt.strip_prefix("- ") };
                if let Some(item) = item {
                    items.push(item.trim().to_owned());
                } else if !lt.is_empty() && l.starts_with("  ") && !items.is_empty() {
                    let last = items.last_mut().expect("not empty");
                    last.push(' ');
                    last.push_str(lt);
                } else {
                    break;
                }
                i += 1;
            }
            blocks.push(Block::List { ordered, items });
        } else if let Some(rest) = t.strip_prefix('>') {
            let mut text = rest.trim().to_owned();
            i += 1;
            while i < lines.len() {
                match lines[i].trim_start().strip_prefix('>') {
                    Some(r) => {
                        text.push(' ');
                        text.push_str(r.trim());
                    }
                    None => break,
                }
                i += 1;
            }
            blocks.push(Block::Note { text: text.trim().to_owned() });
        } else {
            let mut text = t.to_owned();
            i += 1;
            while i < lines.len() {
                let lt = lines[i].trim();
                if lt.is_empty()
                    || lt.starts_with(['#', '|', '>', ':'])
                    || lt.starts_with("- ")
                    || lt.starts_with("```")
                    || ordered_item(lt).is_some()
                {
                    break;
                }
                text.push(' ');
                text.push_str(lt);
                i += 1;
            }
            blocks.push(Block::Para { text });
        }
    }
    Ok(blocks)
}

/// Inline spans of a paragraph or cell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    Plain,
    Bold,
    Code,
}

/// Splits `**bold**` and `` `code` `` spans (unclosed markers stay text).
pub fn inline(text: &str) -> Vec<(Style, String)> {
    let mut out: Vec<(Style, String)> = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        let b = rest.find("**");
        let c = rest.find('`');
        let (pos, marker, style) = match (b, c) {
            (Some(b), Some(c)) if c < b => (c, "`", Style::Code),
            (Some(b), _) => (b, "**", Style::Bold),
            (None, Some(c)) => (c, "`", Style::Code),
            (None, None) => (rest.len(), "", Style::Plain),
        };
        if marker.is_empty() {
            out.push((Style::Plain, rest.to_owned()));
            break;
        }
        let after = &rest[pos + marker.len()..];
        match after.find(marker) {
            Some(end) => {
                if pos > 0 {
                    out.push((Style::Plain, rest[..pos].to_owned()));
                }
                out.push((style, after[..end].to_owned()));
                rest = &after[end + marker.len()..];
            }
            None => {
                out.push((Style::Plain, rest.to_owned()));
                break;
            }
        }
    }
    out
}

fn md_cell(s: &str) -> String {
    s.replace('|', "\\|")
}

/// The Markdown file: the tree written back as ordinary Markdown, ending
/// with a comment that names the version and content hash.
pub fn to_markdown(doc: &Document) -> String {
    let mut o = String::new();
    for b in &doc.blocks {
        match b {
            Block::Cover { title, subtitle, fields } => {
                o.push_str(&format!("# {title}\n\n**{subtitle}**\n\n| | |\n|---|---|\n"));
                for (k, v) in fields {
                    o.push_str(&format!("| {} | {} |\n", md_cell(k), md_cell(v)));
                }
                o.push('\n');
            }
            Block::Heading { level, text, .. } => {
                o.push_str(&format!("{} {text}\n\n", "#".repeat(usize::from(*level) + 1)));
            }
            Block::Para { text } => o.push_str(&format!("{text}\n\n")),
            Block::List { ordered, items } => {
                for (n, it) in items.iter().enumerate() {
                    if *ordered {
                        o.push_str(&format!("{}. {it}\n", n + 1));
                    } else {
                        o.push_str(&format!("- {it}\n"));
                    }
                }
                o.push('\n');
            }
            Block::Table { header, rows } => {
                let cells = |r: &[String]| r.iter().map(|c| md_cell(c)).collect::<Vec<_>>().join(" | ");
                o.push_str(&format!("| {} |\n|{}|\n", cells(header), vec!["---"; header.len()].join("|")));
                for r in rows {
                    o.push_str(&format!("| {} |\n", cells(r)));
                }
                o.push('\n');
            }
            Block::Code { text } => o.push_str(&format!("{}\n\n", fenced(text))),
            Block::Note { text } => o.push_str(&format!("> {text}\n\n")),
            Block::Signature { lines } => {
                o.push_str("| | | | |\n|---|---|---|---|\n");
                for l in lines {
                    o.push_str(&format!(
                        "| {} | {} | {} | {} |\n",
                        md_cell(&l.role),
                        md_cell(&l.name),
                        md_cell(&l.position),
                        md_cell(&l.nip)
                    ));
                }
                o.push('\n');
            }
            Block::PageBreak => o.push_str("---\n\n"),
        }
    }
    o.push_str(&marker_comment(&doc.meta, "md"));
    o.push('\n');
    o
}

/// The identification every format carries: in a Markdown or HTML comment,
/// and in the PDF's metadata keywords.
pub fn marker(meta: &DocMeta) -> String {
    format!(
        "pulih-drp number={} version={} lang={} content-blake3={}",
        meta.number.replace(' ', "_"),
        meta.version,
        meta.lang,
        meta.content_blake3
    )
}

fn marker_comment(meta: &DocMeta, _format: &str) -> String {
    format!("<!-- {} -->", marker(meta))
}

/// What a file says about itself (its marker).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claimed {
    pub number: String,
    pub version: i64,
    pub lang: String,
    pub content_blake3: String,
}

/// Finds the marker in a file's bytes (any format).
pub fn find_marker(bytes: &[u8]) -> Option<Claimed> {
    let needle = b"pulih-drp number=";
    let pos = bytes.windows(needle.len()).rposition(|w| w == needle)?;
    let tail = &bytes[pos..bytes.len().min(pos + 400)];
    let text = String::from_utf8_lossy(tail);
    let mut c = Claimed { number: String::new(), version: 0, lang: String::new(), content_blake3: String::new() };
    for word in text.split(|ch: char| ch.is_whitespace() || ch == '<' || ch == '"' || ch == ',').take(8) {
        if let Some((k, v)) = word.split_once('=') {
            match k {
                "number" => c.number = v.to_owned(),
                "version" => c.version = v.parse().ok()?,
                "lang" => c.lang = v.to_owned(),
                "content-blake3" => c.content_blake3 = v.chars().take(64).collect(),
                _ => {}
            }
        }
    }
    (c.version > 0 && c.content_blake3.len() == 64).then_some(c)
}

/// `text` as a fenced code block, the fence longer than any backtick run in it.
pub fn fenced(text: &str) -> String {
    let longest = text.split(|c| c != '`').map(str::len).max().unwrap_or(0);
    let fence = "`".repeat(longest.max(2) + 1);
    format!("{fence}\n{}\n{fence}", text.trim_end())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_block_kind() {
        let text = "::: cover\ntitle: T\nsubtitle: S\nNomor: 1\n:::\n# Satu\n\nPara one\ncontinues.\n\n- a\n- b\n  more\n\n1. x\n2. y\n\n| A | B |\n|---|---|\n| 1 | 2 \\| 3 |\n\n```\ncmd --x\n```\n> note\n::: signature\nDisusun | N | P | 1\n:::\n::: pagebreak\n";
        let b = parse(text).unwrap();
        assert_eq!(b.len(), 10, "{b:#?}");
        assert!(matches!(&b[2], Block::Para { text } if text == "Para one continues."));
        assert!(matches!(&b[3], Block::List { ordered: false, items } if items[1] == "b more"));
        assert!(matches!(&b[5], Block::Table { rows, .. } if rows[0][1] == "2 | 3"));
        assert!(matches!(&b[9], Block::PageBreak));
    }

    #[test]
    fn errors_name_the_line() {
        let e = parse("# ok\n\n| A |\n| 1 |\n").unwrap_err();
        assert_eq!(e.line, 3);
        let e = parse("x\n\n```\nopen").unwrap_err();
        assert_eq!(e.line, 3);
    }

    #[test]
    fn inline_spans() {
        assert_eq!(
            inline("a **b** `c` d"),
            vec![
                (Style::Plain, "a ".into()),
                (Style::Bold, "b".into()),
                (Style::Plain, " ".into()),
                (Style::Code, "c".into()),
                (Style::Plain, " d".into())
            ]
        );
        assert_eq!(inline("a ** b"), vec![(Style::Plain, "a ** b".into())]);
    }

    #[test]
    fn marker_round_trips_and_hash_ignores_itself() {
        let meta = DocMeta {
            title: "t".into(),
            institution: "i".into(),
            number: "DRP/X/3/2026".into(),
            version: 3,
            lang: "id".into(),
            classification: "TERBATAS".into(),
            content_blake3: String::new(),
        };
        let mut doc = Document { meta, blocks: vec![Block::Para { text: "x".into() }] };
        let h = doc.content_hash();
        doc.meta.content_blake3 = h.clone();
        assert_eq!(doc.content_hash(), h);
        let md = to_markdown(&doc);
        let c = find_marker(md.as_bytes()).unwrap();
        assert_eq!((c.version, c.content_blake3.as_str(), c.number.as_str()), (3, h.as_str(), "DRP/X/3/2026"));
        doc.blocks.push(Block::PageBreak);
        assert_ne!(doc.content_hash(), h);
    }
}
