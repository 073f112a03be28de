//! The HTML rendering: one self-contained file (inline CSS, no scripts, no
//! external resources) that reads on screen and prints on A4.

use super::doc::{inline, marker, Block, Document, Style};
use super::labels::Labels;

fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            _ => o.push(c),
        }
    }
    o
}

fn spans(s: &str) -> String {
    inline(s)
        .into_iter()
        .map(|(st, t)| match st {
            Style::Plain => esc(&t),
            Style::Bold => format!("<strong>{}</strong>", esc(&t)),
            Style::Code => format!("<code>{}</code>", esc(&t)),
        })
        .collect()
}

const CSS: &str = r#"
@page { size: A4; margin: 20mm 18mm 22mm 18mm; }
body { font-family: "DejaVu Sans", "Liberation Sans", Arial, sans-serif; font-size: 10.5pt; line-height: 1.45; color: #111; max-width: 180mm; margin: 0 auto; padding: 8mm; }
h1 { font-size: 15pt; margin: 1.4em 0 .6em; border-bottom: 1.5px solid #333; padding-bottom: .2em; }
h2 { font-size: 12.5pt; margin: 1.2em 0 .5em; }
h3 { font-size: 11pt; margin: 1em 0 .4em; }
h1, h2, h3 { break-after: avoid; }
table { border-collapse: collapse; width: 100%; margin: .6em 0 1em; font-size: 9pt; }
thead { display: table-header-group; }
tr { break-inside: avoid; }
th, td { border: 1px solid #777; padding: 3px 5px; vertical-align: top; text-align: left; overflow-wrap: anywhere; }
th { background: #e8e8e8; }
code { font-family: "DejaVu Sans Mono", monospace; font-size: 8.8pt; overflow-wrap: anywhere; }
pre { background: #f4f4f4; border: 1px solid #ccc; padding: 6px 8px; white-space: pre-wrap; font-size: 8.8pt; break-inside: avoid; }
blockquote { border-left: 4px solid #b00; background: #fbeeee; margin: .6em 0; padding: .4em .8em; }
.cover { text-align: center; padding-top: 30mm; min-height: 230mm; }
.cover .inst { font-size: 13pt; font-weight: bold; text-transform: uppercase; }
.cover h1 { border: none; font-size: 22pt; margin-top: 25mm; }
.cover .sub { font-size: 12pt; margin: 0 10mm 15mm; }
.cover table { width: 75%; margin: 0 auto; font-size: 10pt; }
.cover td:first-child { font-weight: bold; width: 35%; }
.class { font-weight: bold; letter-spacing: .15em; }
.toc ol { list-style: none; padding-left: 0; }
.toc li.l2 { padding-left: 1.5em; }
.toc li.l3 { padding-left: 3em; font-size: 9.5pt; }
.toc a { color: inherit; text-decoration: none; }
.sign { display: flex; flex-wrap: wrap; gap: 6mm; margin: 1em 0; }
.sign div { flex: 1 1 45%; border: 1px solid #999; padding: 3mm; min-height: 42mm; break-inside: avoid; }
.sign .role { font-weight: bold; }
.sign .space { height: 20mm; }
.sign .name { font-weight: bold; text-decoration: underline; }
.pb { break-after: page; }
footer { border-top: 1px solid #999; margin-top: 2em; font-size: 8.5pt; color: #444; }
@media print { body { padding: 0; max-width: none; } .cover { break-after: page; } .toc { break-after: page; } }
"#;

/// The HTML file.
pub fn render(doc: &Document, l: &Labels) -> String {
    let m = &doc.meta;
    let mut o = String::new();
    o.push_str(&format!(
        "<!DOCTYPE html>\n<html lang=\"{}\">\n<head>\n<meta charset=\"utf-8\">\n<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n<meta name=\"generator\" content=\"{}\">\n<meta name=\"pulih-drp\" content=\"{}\">\n<title>{} {}</title>\n<style>{CSS}</style>\n</head>\n<body>\n",
        esc(&m.lang),
        esc("Pulih"),
        esc(&marker(m)),
        esc(&m.title),
        esc(&m.number)
    ));
    let mut toc_done = false;
    for b in &doc.blocks {
        if !toc_done && !matches!(b, Block::Cover { .. }) {
            toc_done = true;
            o.push_str(&format!("<nav class=\"toc\">\n<h1>{}</h1>\n<ol>\n", esc(l.toc)));
            for (level, text, anchor) in doc.headings() {
                o.push_str(&format!("<li class=\"l{level}\"><a href=\"#{anchor}\">{}</a></li>\n", esc(text)));
            }
            o.push_str("</ol>\n</nav>\n");
        }
        match b {
            Block::Cover { title, subtitle, fields } => {
                o.push_str(&format!(
                    "<section class=\"cover\">\n<div class=\"class\">{}</div>\n<p class=\"inst\">{}</p>\n<h1>{}</h1>\n<p class=\"sub\">{}</p>\n<table>\n",
                    esc(&m.classification),
                    esc(&m.institution),
                    esc(title),
                    spans(subtitle)
                ));
                for (k, v) in fields {
                    o.push_str(&format!("<tr><td>{}</td><td>{}</td></tr>\n", esc(k), spans(v)));
                }
                o.push_str(&format!(
                    "<tr><td>{}</td><td><code>{}</code></td></tr>\n</table>\n</section>\n",
                    esc(l.content_hash),
                    esc(&m.content_blake3)
                ));
            }
            Block::Heading { level, text, anchor } => {
                o.push_str(&format!("<h{level} id=\"{anchor}\">{}</h{level}>\n", esc(text)));
            }
            Block::Para { text } => o.push_str(&format!("<p>{}</p>\n", spans(text))),
            Block::List { ordered, items } => {
                let tag = if *ordered { "ol" } else { "ul" };
                o.push_str(&format!("<{tag}>\n"));
                for it in items {
                    o.push_str(&format!("<li>{}</li>\n", spans(it)));
                }
                o.push_str(&format!("</{tag}>\n"));
            }
            Block::Table { header, rows } => {
                o.push_str("<table>\n<thead><tr>");
                for h in header {
                    o.push_str(&format!("<th>{}</th>", spans(h)));
                }
                o.push_str("</tr></thead>\n<tbody>\n");
                for r in rows {
                    o.push_str("<tr>");
                    for c in r {
                        o.push_str(&format!("<td>{}</td>", spans(c)));
                    }
                    o.push_str("</tr>\n");
                }
                o.push_str("</tbody>\n</table>\n");
            }
            Block::Code { text } => o.push_str(&format!("<pre><code>{}</code></pre>\n", esc(text))),
            Block::Note { text } => o.push_str(&format!("<blockquote>{}</blockquote>\n", spans(text))),
            Block::Signature { lines } => {
                o.push_str("<div class=\"sign\">\n");
                for s in lines {
                    o.push_str(&format!(
                        "<div><p class=\"role\">{}</p><div class=\"space\"></div><p class=\"name\">{}</p><p>{}</p><p>{}</p></div>\n",
                        esc(&s.role),
                        esc(&s.name),
                        esc(&s.position),
                        if s.nip.is_empty() { String::new() } else { format!("NIP {}", esc(&s.nip)) }
                    ));
                }
                o.push_str("</div>\n");
            }
            Block::PageBreak => o.push_str("<div class=\"pb\"></div>\n"),
        }
    }
    o.push_str(&format!(
        "<footer>{} · {} {} · {} {} · {}: <code>{}</code></footer>\n</body>\n</html>\n<!-- {} -->\n",
        esc(&m.number),
        esc(l.version),
        m.version,
        esc(&m.classification),
        esc(&m.institution),
        esc(l.content_hash),
        esc(&m.content_blake3),
        esc(&marker(m))
    ));
    o
}
