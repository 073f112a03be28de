//! The few words the renderers print around the template's content (table
//! of contents, page numbers, hash line), per language.

use super::format::Lang;

/// Renderer labels of one language.
#[derive(Debug, Clone, Copy)]
pub struct Labels {
    pub toc: &'static str,
    /// "Halaman {page} dari {pages}".
    pub page_of: &'static str,
    pub version: &'static str,
    pub content_hash: &'static str,
    pub signature: &'static str,
    /// Continuation note of a table broken across pages.
    pub continued: &'static str,
}

pub fn labels(lang: Lang) -> Labels {
    match lang {
        Lang::Id => Labels {
            toc: "DAFTAR ISI",
            page_of: "Halaman {page} dari {pages}",
            version: "Versi",
            content_hash: "Sidik isi (BLAKE3)",
            signature: "Tanda tangan",
            continued: "(lanjutan)",
        },
        Lang::En => Labels {
            toc: "TABLE OF CONTENTS",
            page_of: "Page {page} of {pages}",
            version: "Version",
            content_hash: "Content fingerprint (BLAKE3)",
            signature: "Signature",
            continued: "(continued)",
        },
    }
}
