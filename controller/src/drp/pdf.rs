//! The PDF rendering, in-process: a small layout engine over the document
//! tree, drawn with krilla as PDF/A-2b (archival) with DejaVu fonts
//! embedded (subset) for full Latin coverage.
//!
//! Layout: A4; a cover page; a table of contents with page numbers (its
//! page count is known before the body is laid out, so numbers are filled
//! in afterwards, one pass); chapters (level-1 headings) start a new page;
//! running header (institution, classification, title, number) and footer
//! (version, page X of Y, content hash) on every page but the cover;
//! tables break between rows and repeat their header row; a heading is
//! never left alone at the bottom of a page; signature boxes are kept
//! whole. Text is measured with the fonts' advance widths (ttf-parser).
//!
//! The PDF carries its marker (number, version, content hash) in the
//! metadata keywords, and a fixed document id and creation date derived
//! from the content, so the same content gives the same bytes.

use std::collections::HashMap;

use krilla::color::rgb;
use krilla::configure::{Configuration, Validator};
use krilla::destination::XyzDestination;
use krilla::geom::{PathBuilder, Point, Rect};
use krilla::metadata::{DateTime, Metadata};
use krilla::num::NormalizedF32;
use krilla::outline::{Outline, OutlineNode};
use krilla::page::PageSettings;
use krilla::paint::{Fill, Stroke};
use krilla::text::{Font, TextDirection};
use krilla::{Document as PdfDocument, SerializeSettings};

use super::doc::{inline, marker, Block, Document, SignLine, Style};
use super::labels::Labels;

const REGULAR: &[u8] = include_bytes!("../../../drp-templates/fonts/DejaVuSans.ttf");
const BOLD: &[u8] = include_bytes!("../../../drp-templates/fonts/DejaVuSans-Bold.ttf");
const MONO: &[u8] = include_bytes!("../../../drp-templates/fonts/DejaVuSansMono.ttf");

const W: f32 = 595.28;
const H: f32 = 841.89;
const LEFT: f32 = 56.7;
const RIGHT: f32 = W - 51.0;
const TOP: f32 = 78.0;
const BOTTOM: f32 = H - 66.0;
const CW: f32 = RIGHT - LEFT;
const BODY: f32 = 10.0;
const TABLE: f32 = 8.3;
const CODE: f32 = 7.8;

/// Rendering failed (a font or PDF/A validation problem: a bug, not input).
#[derive(Debug, thiserror::Error)]
#[error("PDF: {0}")]
pub struct PdfError(String);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum F {
    R,
    B,
    M,
}

struct Metrics {
    faces: [ttf_parser::Face<'static>; 3],
    cache: HashMap<(F, char), f32>,
}

impl Metrics {
    fn new() -> Result<Self, PdfError> {
        let p = |b: &'static [u8]| ttf_parser::Face::parse(b, 0).map_err(|e| PdfError(format!("font: {e}")));
        Ok(Self { faces: [p(REGULAR)?, p(BOLD)?, p(MONO)?], cache: HashMap::new() })
    }
    fn width(&mut self, f: F, size: f32, s: &str) -> f32 {
        let mut w = 0.0;
        for c in s.chars() {
            let face = &self.faces[f as usize];
            w += *self.cache.entry((f, c)).or_insert_with(|| {
                let adv = face.glyph_index(c).and_then(|g| face.glyph_hor_advance(g)).unwrap_or(0);
                f32::from(adv) / f32::from(face.units_per_em())
            });
        }
        w * size
    }
}

#[derive(Debug, Clone)]
enum Op {
    Text { x: f32, y: f32, f: F, size: f32, text: String, gray: u8 },
    Rect { x: f32, y: f32, w: f32, h: f32, fill: (u8, u8, u8) },
    Line { x1: f32, y1: f32, x2: f32, y2: f32, width: f32 },
}

#[derive(Default)]
struct Page {
    ops: Vec<Op>,
}

/// A laid-out line: pieces (font, text, x offset).
type Line = Vec<(F, String, f32)>;

struct Layout<'a> {
    m: Metrics,
    pages: Vec<Page>,
    y: f32,
    labels: &'a Labels,
    /// Headings: (level, text, page, y).
    marks: Vec<(u8, String, usize, f32)>,
}

fn tokens(spans: &[(Style, String)], base: F) -> Vec<(F, String, bool)> {
    let mut out = Vec::new();
    for (st, text) in spans {
        let f = match st {
            Style::Plain => base,
            Style::Bold => F::B,
            Style::Code => F::M,
        };
        let mut words = text.split(' ').peekable();
        while let Some(w) = words.next() {
            let space = words.peek().is_some();
            if !w.is_empty() {
                out.push((f, w.to_owned(), space));
            } else if let Some(last) = out.last_mut() {
                last.2 = true;
            }
        }
    }
    out
}

impl<'a> Layout<'a> {
    fn page(&mut self) -> &mut Page {
        self.pages.last_mut().expect("a page exists")
    }
    fn new_page(&mut self) {
        self.pages.push(Page::default());
        self.y = TOP;
    }
    fn ensure(&mut self, h: f32) {
        if self.y + h > BOTTOM && self.y > TOP + 1.0 {
            self.new_page();
        }
    }
    fn text(&mut self, x: f32, y: f32, f: F, size: f32, text: &str) {
        self.page().ops.push(Op::Text { x, y, f, size, text: text.to_owned(), gray: 0 });
    }

    /// Wraps inline text into lines of at most `width`.
    fn wrap(&mut self, text: &str, base: F, size: f32, width: f32) -> Vec<Line> {
        let toks = tokens(&inline(text), base);
        let mut lines: Vec<Line> = vec![Vec::new()];
        let mut x = 0.0f32;
        let mut pending_space = false;
        for (f, word, space) in toks {
            let sp = if pending_space { self.m.width(f, size, " ") } else { 0.0 };
            let w = self.m.width(f, size, &word);
            if x > 0.0 && x + sp + w > width {
                lines.push(Vec::new());
                x = 0.0;
            }
            let sp = if x > 0.0 { sp } else { 0.0 };
            if w > width {
                // A word longer than the line (hashes, paths): break it anywhere.
                let mut chunk = String::new();
                for c in word.chars() {
                    let cw = self.m.width(f, size, &c.to_string());
                    if x + self.m.width(f, size, &chunk) + cw > width && !chunk.is_empty() {
                        lines.last_mut().expect("line").push((f, std::mem::take(&mut chunk), x));
                        lines.push(Vec::new());
                        x = 0.0;
                    }
                    chunk.push(c);
                }
                let cw = self.m.width(f, size, &chunk);
                lines.last_mut().expect("line").push((f, chunk, x));
                x += cw;
            } else {
                let line = lines.last_mut().expect("line");
                match line.last_mut() {
                    Some((lf, lt, _)) if *lf == f && sp > 0.0 => {
                        lt.push(' ');
                        lt.push_str(&word);
                    }
                    _ => line.push((f, word, x + sp)),
                }
                x += sp + w;
            }
            pending_space = space;
        }
        lines
    }

    fn draw_lines(&mut self, lines: &[Line], x: f32, size: f32, lh: f32) {
        for l in lines {
            self.ensure(lh);
            let y = self.y + size;
            for (f, t, dx) in l {
                self.text(x + dx, y, *f, size, t);
            }
            self.y += lh;
        }
    }

    fn para(&mut self, text: &str) {
        let lines = self.wrap(text, F::R, BODY, CW);
        self.draw_lines(&lines, LEFT, BODY, BODY * 1.4);
        self.y += 5.0;
    }

    fn heading(&mut self, level: u8, text: &str) {
        let (size, before) = match level {
            1 => (14.0, 0.0),
            2 => (12.0, 8.0),
            _ => (10.5, 6.0),
        };
        if level == 1 && self.y > TOP + 1.0 {
            self.new_page();
        }
        let lines = self.wrap(&format!("**{}**", text.replace("**", "")), F::B, size, CW);
        let h = lines.len() as f32 * size * 1.3;
        // Keep the heading with at least three lines of what follows.
        self.ensure(before + h + 3.0 * BODY * 1.4);
        if self.y > TOP + 1.0 {
            self.y += before;
        }
        self.marks.push((level, text.to_owned(), self.pages.len() - 1, self.y));
        self.draw_lines(&lines, LEFT, size, size * 1.3);
        if level == 1 {
            let y = self.y + 1.0;
            self.page().ops.push(Op::Line { x1: LEFT, y1: y, x2: RIGHT, y2: y, width: 1.0 });
            self.y += 6.0;
        }
        self.y += 4.0;
    }

    fn list(&mut self, ordered: bool, items: &[String]) {
        for (i, it) in items.iter().enumerate() {
            let marker = if ordered { format!("{}.", i + 1) } else { "•".into() };
            let lines = self.wrap(it, F::R, BODY, CW - 18.0);
            self.ensure(BODY * 1.4);
            let y = self.y + BODY;
            self.text(LEFT + 2.0, y, F::R, BODY, &marker);
            self.draw_lines(&lines, LEFT + 18.0, BODY, BODY * 1.4);
            self.y += 1.5;
        }
        self.y += 4.0;
    }

    fn boxed(&mut self, text: &str, f: F, size: f32, fill: (u8, u8, u8), bar: bool) {
        let lh = size * 1.35;
        let lines: Vec<Line> = if f == F::M {
            let mut v = Vec::new();
            for raw in text.split('\n') {
                // A line that fits keeps its spaces (text diagrams, aligned
                // output); a longer one wraps at spaces.
                if !raw.is_empty() && self.m.width(F::M, size, raw) <= CW - 12.0 {
                    v.push(vec![(F::M, raw.to_owned(), 0.0)]);
                    continue;
                }
                v.extend(self.wrap(&format!("`{}`", raw.replace('`', "'")), F::M, size, CW - 12.0));
                if raw.is_empty() {
                    v.push(Vec::new());
                }
            }
            v
        } else {
            self.wrap(text, f, size, CW - 16.0)
        };
        self.y += 2.0;
        for l in &lines {
            self.ensure(lh);
            let y0 = self.y;
            self.page().ops.push(Op::Rect { x: LEFT, y: y0, w: CW, h: lh, fill });
            if bar {
                self.page().ops.push(Op::Rect { x: LEFT, y: y0, w: 3.0, h: lh, fill: (170, 30, 30) });
            }
            for (ff, t, dx) in l {
                self.text(LEFT + 8.0 + dx, y0 + size + 1.5, *ff, size, t);
            }
            self.y += lh;
        }
        self.y += 7.0;
    }

    fn table(&mut self, header: &[String], rows: &[Vec<String>]) {
        let n = header.len().max(1);
        let pad = 3.0;
        // Natural (one-line) and minimum (longest word) widths per column.
        let mut nat = vec![0.0f32; n];
        let mut min = vec![0.0f32; n];
        for (ri, r) in std::iter::once(header).chain(rows.iter().map(Vec::as_slice)).enumerate() {
            // The header row is set in bold: measure it so.
            let f = if ri == 0 { F::B } else { F::R };
            for (i, c) in r.iter().enumerate().take(n) {
                let text: String = inline(c).into_iter().map(|s| s.1).collect();
                nat[i] = nat[i].max(self.m.width(f, TABLE, &text) + 2.0 * pad);
                let longest = text.split(' ').map(|w| self.m.width(f, TABLE, w)).fold(0.0, f32::max);
                min[i] = min[i].max((longest + 2.0 * pad).min(CW / n as f32 * 1.6));
            }
        }
        let total_nat: f32 = nat.iter().sum();
        let widths: Vec<f32> = if total_nat <= CW {
            nat.iter().map(|w| w * CW / total_nat.max(1.0)).collect()
        } else {
            let total_min: f32 = min.iter().sum();
            if total_min >= CW {
                min.iter().map(|w| w * CW / total_min).collect()
            } else {
                let extra: f32 = nat.iter().zip(&min).map(|(a, b)| (a - b).max(0.0)).sum();
                nat.iter().zip(&min).map(|(a, b)| b + (a - b).max(0.0) / extra.max(1.0) * (CW - total_min)).collect()
            }
        };
        let lh = TABLE * 1.3;
        let layout_row = |me: &mut Self, r: &[String], bold: bool| -> (Vec<Vec<Line>>, f32) {
            let cells: Vec<Vec<Line>> = (0..n)
                .map(|i| {
                    let t = r.get(i).cloned().unwrap_or_default();
                    me.wrap(&t, if bold { F::B } else { F::R }, TABLE, widths[i] - 2.0 * pad)
                })
                .collect();
            let h = cells.iter().map(Vec::len).max().unwrap_or(1) as f32 * lh + 2.0 * pad;
            (cells, h)
        };
        let has_head = header.iter().any(|h| !h.is_empty());
        let (hcells, hh) = layout_row(self, header, true);
        let draw_row = |me: &mut Self, cells: &[Vec<Line>], h: f32, head: bool| {
            let y0 = me.y;
            if head {
                me.page().ops.push(Op::Rect { x: LEFT, y: y0, w: CW, h, fill: (228, 228, 228) });
            }
            let mut x = LEFT;
            for (i, c) in cells.iter().enumerate() {
                for (li, l) in c.iter().enumerate() {
                    for (f, t, dx) in l {
                        let y = y0 + pad + TABLE + li as f32 * lh;
                        me.text(x + pad + dx, y, *f, TABLE, t);
                    }
                }
                x += widths[i];
            }
            let mut x = LEFT;
            me.page().ops.push(Op::Line { x1: LEFT, y1: y0, x2: RIGHT, y2: y0, width: 0.5 });
            me.page().ops.push(Op::Line { x1: LEFT, y1: y0 + h, x2: RIGHT, y2: y0 + h, width: 0.5 });
            for w in widths.iter().chain(std::iter::once(&0.0)) {
                me.page().ops.push(Op::Line { x1: x, y1: y0, x2: x, y2: y0 + h, width: 0.5 });
                x += w;
            }
            me.y += h;
        };
        self.y += 2.0;
        self.ensure(hh + lh * 2.0 + 2.0 * pad);
        if has_head {
            draw_row(self, &hcells, hh, true);
        }
        for r in rows {
            let (cells, h) = layout_row(self, r, false);
            if self.y + h > BOTTOM {
                self.new_page();
                // The header row is repeated on every page the table spans.
                if has_head {
                    draw_row(self, &hcells, hh, true);
                }
            }
            draw_row(self, &cells, h, false);
        }
        self.y += 8.0;
    }

    fn signature(&mut self, lines: &[SignLine]) {
        let bw = (CW - 14.0) / 2.0;
        let bh = 118.0;
        for pair in lines.chunks(2) {
            self.ensure(bh + 8.0);
            let y0 = self.y;
            for (i, s) in pair.iter().enumerate() {
                let x = LEFT + i as f32 * (bw + 14.0);
                for (x1, y1, x2, y2) in [
                    (x, y0, x + bw, y0),
                    (x, y0 + bh, x + bw, y0 + bh),
                    (x, y0, x, y0 + bh),
                    (x + bw, y0, x + bw, y0 + bh),
                ] {
                    self.page().ops.push(Op::Line { x1, y1, x2, y2, width: 0.6 });
                }
                self.text(x + 8.0, y0 + 16.0, F::B, BODY, &s.role);
                let name_y = y0 + 76.0;
                let name = self.wrap(&s.name, F::B, BODY, bw - 16.0);
                let mut y = name_y;
                for l in name.iter().take(2) {
                    for (f, t, dx) in l {
                        self.text(x + 8.0 + dx, y, *f, BODY, t);
                    }
                    y += BODY * 1.3;
                }
                self.page().ops.push(Op::Line {
                    x1: x + 8.0,
                    y1: name_y + 2.5,
                    x2: x + bw - 8.0,
                    y2: name_y + 2.5,
                    width: 0.4,
                });
                let pos = self.wrap(&s.position, F::R, TABLE, bw - 16.0);
                for l in pos.iter().take(2) {
                    for (f, t, dx) in l {
                        self.text(x + 8.0 + dx, y, *f, TABLE, t);
                    }
                    y += TABLE * 1.3;
                }
                if !s.nip.is_empty() {
                    self.text(x + 8.0, y, F::R, TABLE, &format!("NIP {}", s.nip));
                }
                self.text(x + 8.0, y0 + 30.0, F::R, 7.0, self.labels.signature);
            }
            self.y += bh + 10.0;
        }
    }

    fn cover(&mut self, doc: &Document, title: &str, subtitle: &str, fields: &[(String, String)]) {
        let m = &doc.meta;
        let center = |me: &mut Self, f: F, size: f32, y: f32, t: &str| {
            let w = me.m.width(f, size, t);
            me.text((W - w) / 2.0, y, f, size, t);
        };
        center(self, F::B, 11.0, 70.0, &m.classification);
        center(self, F::B, 13.0, 150.0, &m.institution.to_uppercase());
        center(self, F::B, 24.0, 250.0, title);
        let sub = self.wrap(subtitle, F::R, 12.0, CW - 60.0);
        let mut y = 290.0;
        for l in &sub {
            let t: String = l.iter().map(|p| p.1.clone()).collect::<Vec<_>>().join(" ");
            center(self, F::R, 12.0, y, &t);
            y += 17.0;
        }
        self.y = y + 40.0;
        let mut all: Vec<Vec<String>> = fields.iter().map(|(k, v)| vec![format!("**{k}**"), v.clone()]).collect();
        all.push(vec![format!("**{}**", self.labels.content_hash), format!("`{}`", m.content_blake3)]);
        self.table(&[String::new(), String::new()], &all);
    }

    fn chrome(&mut self, doc: &Document) {
        let m = &doc.meta;
        let total = self.pages.len();
        for i in 1..total {
            let page_no =
                self.labels.page_of.replace("{page}", &(i + 1).to_string()).replace("{pages}", &total.to_string());
            let cls_w = self.m.width(F::B, 8.0, &m.classification);
            let pw = self.m.width(F::R, 8.0, &page_no);
            let title = format!("{} · {}", m.title, m.number);
            let ops = vec![
                Op::Text { x: LEFT, y: 40.0, f: F::R, size: 8.0, text: m.institution.clone(), gray: 70 },
                Op::Text { x: RIGHT - cls_w, y: 40.0, f: F::B, size: 8.0, text: m.classification.clone(), gray: 0 },
                Op::Text { x: LEFT, y: 51.0, f: F::R, size: 8.0, text: title, gray: 70 },
                Op::Line { x1: LEFT, y1: 56.0, x2: RIGHT, y2: 56.0, width: 0.5 },
                Op::Line { x1: LEFT, y1: H - 52.0, x2: RIGHT, y2: H - 52.0, width: 0.5 },
                Op::Text {
                    x: LEFT,
                    y: H - 41.0,
                    f: F::R,
                    size: 8.0,
                    text: format!("{} {} · {}", self.labels.version, m.version, m.number),
                    gray: 70,
                },
                Op::Text { x: RIGHT - pw, y: H - 41.0, f: F::R, size: 8.0, text: page_no, gray: 0 },
                Op::Text {
                    x: LEFT,
                    y: H - 31.0,
                    f: F::M,
                    size: 6.5,
                    text: format!("{}: {}", self.labels.content_hash, m.content_blake3),
                    gray: 70,
                },
            ];
            self.pages[i].ops.extend(ops);
        }
    }
}

const TOC_LINE: f32 = 14.5;
const TOC_TITLE: f32 = 40.0;

/// Renders the document as PDF/A-2b.
pub fn render(doc: &Document, labels: &Labels, generated_at: i64) -> Result<Vec<u8>, PdfError> {
    let mut l = Layout { m: Metrics::new()?, pages: Vec::new(), y: TOP, labels, marks: Vec::new() };
    let mut blocks = doc.blocks.as_slice();
    l.new_page();
    if let Some((Block::Cover { title, subtitle, fields }, rest)) = blocks.split_first() {
        l.cover(doc, title, subtitle, fields);
        blocks = rest;
    }
    // Table of contents: its size is known now, its page numbers later.
    let entries: Vec<(u8, String)> = doc.headings().map(|(lv, t, _)| (lv, t.to_owned())).collect();
    let per_page = ((BOTTOM - TOP - TOC_TITLE) / TOC_LINE).floor().max(1.0) as usize;
    let toc_pages = entries.len().div_ceil(per_page).max(1);
    let toc_first = l.pages.len();
    for _ in 0..toc_pages {
        l.new_page();
    }
    l.new_page();
    for b in blocks {
        match b {
            Block::Cover { title, subtitle, fields } => {
                l.new_page();
                l.cover(doc, title, subtitle, fields);
            }
            Block::Heading { level, text, .. } => l.heading(*level, text),
            Block::Para { text } => l.para(text),
            Block::List { ordered, items } => l.list(*ordered, items),
            Block::Table { header, rows } => l.table(header, rows),
            Block::Code { text } => l.boxed(text, F::M, CODE, (243, 243, 243), false),
            Block::Note { text } => l.boxed(text, F::R, 9.5, (251, 236, 236), true),
            Block::Signature { lines } => l.signature(lines),
            Block::PageBreak => {
                if l.y > TOP + 1.0 {
                    l.new_page();
                }
            }
        }
    }
    // Fill in the table of contents.
    let marks = l.marks.clone();
    for (i, (level, text, page, _)) in marks.iter().enumerate() {
        let p = toc_first + i / per_page;
        let row = i % per_page;
        let y = TOP + TOC_TITLE + row as f32 * TOC_LINE;
        let indent = f32::from(level.saturating_sub(1)) * 14.0;
        let (f, size) = if *level == 1 { (F::B, 9.5) } else { (F::R, 9.0) };
        let num = (page + 1).to_string();
        let nw = l.m.width(F::R, size, &num);
        let max = CW - indent - nw - 24.0;
        let mut t = text.clone();
        if l.m.width(f, size, &t) > max {
            while !t.is_empty() && l.m.width(f, size, &format!("{t}…")) > max {
                t.pop();
            }
            t.push('…');
        }
        let tw = l.m.width(f, size, &t);
        let dots_w = l.m.width(F::R, size, " .");
        let n_dots = ((CW - indent - tw - nw - 8.0) / dots_w).max(0.0) as usize;
        let page_ops = &mut l.pages[p].ops;
        page_ops.push(Op::Text { x: LEFT + indent, y, f, size, text: t, gray: 0 });
        page_ops.push(Op::Text { x: LEFT + indent + tw + 2.0, y, f: F::R, size, text: " .".repeat(n_dots), gray: 150 });
        page_ops.push(Op::Text { x: RIGHT - nw, y, f: F::R, size, text: num, gray: 0 });
    }
    for (i, p) in (toc_first..toc_first + toc_pages).enumerate() {
        let title = if i == 0 { labels.toc.to_owned() } else { format!("{} {}", labels.toc, labels.continued) };
        l.pages[p].ops.push(Op::Text { x: LEFT, y: TOP + 14.0, f: F::B, size: 14.0, text: title, gray: 0 });
    }
    l.chrome(doc);
    emit(doc, &l, generated_at)
}

fn emit(doc: &Document, l: &Layout<'_>, generated_at: i64) -> Result<Vec<u8>, PdfError> {
    let fonts = [REGULAR, BOLD, MONO]
        .map(|b| Font::new(krilla::Data::from(b), 0).ok_or_else(|| PdfError("cannot load an embedded font".into())));
    let [r, b, m] = fonts;
    let fonts = [r?, b?, m?];
    let settings = SerializeSettings {
        configuration: Configuration::new_with_validator(Validator::A2_B),
        ..SerializeSettings::default()
    };
    let mut pdf = PdfDocument::new_with(settings);
    for page in &l.pages {
        let mut p = pdf.start_page_with(PageSettings::from_wh(W, H).ok_or_else(|| PdfError("page size".into()))?);
        let mut s = p.surface();
        for op in &page.ops {
            match op {
                Op::Text { x, y, f, size, text, gray } => {
                    s.set_fill(Some(Fill {
                        paint: rgb::Color::new(*gray, *gray, *gray).into(),
                        opacity: NormalizedF32::ONE,
                        rule: Default::default(),
                    }));
                    s.set_stroke(None);
                    s.draw_text(
                        Point::from_xy(*x, *y),
                        fonts[*f as usize].clone(),
                        *size,
                        text,
                        false,
                        TextDirection::Auto,
                    );
                }
                Op::Rect { x, y, w, h, fill } => {
                    let mut pb = PathBuilder::new();
                    if let Some(rect) = Rect::from_xywh(*x, *y, *w, *h) {
                        pb.push_rect(rect);
                    }
                    if let Some(path) = pb.finish() {
                        s.set_fill(Some(Fill {
                            paint: rgb::Color::new(fill.0, fill.1, fill.2).into(),
                            opacity: NormalizedF32::ONE,
                            rule: Default::default(),
                        }));
                        s.set_stroke(None);
                        s.draw_path(&path);
                    }
                }
                Op::Line { x1, y1, x2, y2, width } => {
                    let mut pb = PathBuilder::new();
                    pb.move_to(*x1, *y1);
                    pb.line_to(*x2, *y2);
                    if let Some(path) = pb.finish() {
                        s.set_fill(None);
                        s.set_stroke(Some(Stroke {
                            paint: rgb::Color::new(90, 90, 90).into(),
                            width: *width,
                            ..Stroke::default()
                        }));
                        s.draw_path(&path);
                    }
                }
            }
        }
        s.finish();
        p.finish();
    }
    let mut outline = Outline::new();
    let mut current: Option<OutlineNode> = None;
    for (level, text, page, y) in &l.marks {
        let node = OutlineNode::new(text.clone(), XyzDestination::new(*page, Point::from_xy(LEFT, *y)));
        if *level == 1 {
            if let Some(c) = current.take() {
                outline.push_child(c);
            }
            current = Some(node);
        } else if let Some(c) = current.as_mut() {
            c.push_child(node);
        } else {
            outline.push_child(node);
        }
    }
    if let Some(c) = current {
        outline.push_child(c);
    }
    pdf.set_outline(outline);
    let m = &doc.meta;
    let t = time::OffsetDateTime::from_unix_timestamp(generated_at).unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    pdf.set_metadata(
        Metadata::new()
            .title(format!("{} {}", m.title, m.number))
            .language(m.lang.clone())
            .creator("Pulih".into())
            .keywords(vec![marker(m)])
            .document_id(m.content_blake3.clone())
            .creation_date(
                DateTime::new(t.year() as u16)
                    .month(t.month() as u8)
                    .day(t.day())
                    .hour(t.hour())
                    .minute(t.minute())
                    .second(t.second())
                    .utc_offset_hour(0)
                    .utc_offset_minute(0),
            ),
    );
    pdf.finish().map_err(|e| PdfError(format!("{e:?}")))
}
