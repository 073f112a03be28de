//! `agent.toml`: what the agent protects and where it sends it.
//!
//! Parsed with unknown keys refused, then validated as a whole (every
//! problem reported at once) and resolved into a [`Settings`] the rest of
//! the agent uses.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use pulih_core::{AgentName, DatasetName};
use serde::Deserialize;

/// The file as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub agent: AgentSection,
    pub controller: ControllerSection,
    #[serde(default)]
    pub upload: UploadSection,
    #[serde(default)]
    pub dataset: Vec<DatasetSection>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentSection {
    /// Name this agent is enrolled under.
    pub name: String,
    /// Directory for the key, certificates and the change cache.
    pub state_dir: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControllerSection {
    /// HOST:PORT of the controller.
    pub address: String,
    /// Name in the controller's certificate; defaults to the host of `address`.
    pub server_name: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UploadSection {
    /// zstd level, 1 (fastest) to 19.
    pub compression_level: i32,
    /// Threads that read, chunk, hash and compress; 0 = one per core.
    pub threads: usize,
}

impl Default for UploadSection {
    fn default() -> Self {
        Self { compression_level: 1, threads: 0 }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetSection {
    /// Dataset name (a-z, 0-9, '-', '_', '.').
    pub name: String,
    /// Absolute paths to protect.
    pub paths: Vec<PathBuf>,
    /// Glob patterns to leave out. A pattern without `/` matches an entry's
    /// name at any depth (`*.tmp`); a trailing `/` means directories only
    /// (`cache/`, `var/cache/`); a pattern starting with `/` matches the
    /// absolute path (`/srv/x/tmp`); any other pattern containing `/` matches
    /// the path relative to the dataset path the entry is under (`logs/*.gz`
    /// matches `<dataset path>/logs/a.gz` only, not deeper). `*` and `?`
    /// never match `/`; `**` matches any number of directories.
    #[serde(default)]
    pub exclude: Vec<String>,
}

/// A dataset ready to snapshot.
#[derive(Debug, Clone)]
pub struct Dataset {
    pub name: DatasetName,
    pub paths: Vec<PathBuf>,
    pub exclude: Exclude,
}

/// Compiled exclusion patterns.
#[derive(Debug, Clone, Default)]
pub struct Exclude {
    names: Sets,
    absolute: Sets,
    relative: Sets,
}

/// Patterns of one kind: for every entry, and for directories only.
#[derive(Debug, Clone, Default)]
struct Sets {
    any: GlobSet,
    dirs: GlobSet,
}

impl Sets {
    fn is_match(&self, p: impl AsRef<Path>, is_dir: bool) -> bool {
        let p = p.as_ref();
        self.any.is_match(p) || (is_dir && self.dirs.is_match(p))
    }
}

impl Exclude {
    fn compile(patterns: &[String]) -> Result<Self, String> {
        struct Builders {
            any: GlobSetBuilder,
            dirs: GlobSetBuilder,
        }
        let new = || Builders { any: GlobSetBuilder::new(), dirs: GlobSetBuilder::new() };
        let (mut names, mut absolute, mut relative) = (new(), new(), new());
        for p in patterns {
            let (body, dirs_only) = match p.strip_suffix('/') {
                Some(b) => (b, true),
                None => (p.as_str(), false),
            };
            if body.is_empty() || body == "/" {
                return Err(format!("exclude pattern {p:?}: matches nothing"));
            }
            let kind = if body.starts_with('/') {
                &mut absolute
            } else if body.contains('/') {
                &mut relative
            } else {
                &mut names
            };
            let glob = GlobBuilder::new(body)
                .literal_separator(true)
                .build()
                .map_err(|e| format!("exclude pattern {p:?}: {e}"))?;
            if dirs_only {
                kind.dirs.add(glob);
            } else {
                kind.any.add(glob);
            }
        }
        let b = |g: Builders| -> Result<Sets, String> {
            let f = |s: GlobSetBuilder| s.build().map_err(|e| e.to_string());
            Ok(Sets { any: f(g.any)?, dirs: f(g.dirs)? })
        };
        Ok(Self { names: b(names)?, absolute: b(absolute)?, relative: b(relative)? })
    }

    /// Whether the entry at the absolute `path` is excluded; `relative` is
    /// its path relative to the dataset path it is under (never empty: the
    /// dataset paths themselves are not subject to exclusion).
    pub fn excludes(&self, path: &Path, relative: &Path, is_dir: bool) -> bool {
        let name = path.file_name().unwrap_or(path.as_os_str());
        self.names.is_match(name, is_dir)
            || self.absolute.is_match(path, is_dir)
            || self.relative.is_match(relative, is_dir)
    }
}

/// The resolved configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    pub agent: AgentName,
    pub state_dir: PathBuf,
    pub address: String,
    pub server_name: String,
    pub compression_level: i32,
    pub threads: usize,
    pub datasets: Vec<Dataset>,
}

impl Settings {
    /// Reads, validates and resolves a configuration file.
    pub fn load(path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading configuration {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("invalid configuration {}", path.display()))
    }

    /// Parses and validates configuration text.
    pub fn parse(text: &str) -> Result<Self> {
        let raw: RawConfig = toml::from_str(text)?;
        let mut problems = Vec::new();
        let agent = AgentName::new(&raw.agent.name).map_err(|e| problems.push(format!("agent.name: {e}"))).ok();
        if !raw.agent.state_dir.is_absolute() {
            problems.push(format!("agent.state_dir {:?} must be an absolute path", raw.agent.state_dir));
        }
        let host = raw
            .controller
            .address
            .rsplit_once(':')
            .map(|(h, p)| (h.trim_matches(['[', ']']).to_string(), p.parse::<u16>()));
        let server_name = match (&host, &raw.controller.server_name) {
            (Some((_, Err(_))), _) | (None, _) => {
                problems.push(format!("controller.address {:?} must be HOST:PORT", raw.controller.address));
                String::new()
            }
            (_, Some(n)) => n.clone(),
            (Some((h, Ok(_))), None) => h.clone(),
        };
        if !(1..=19).contains(&raw.upload.compression_level) {
            problems.push(format!("upload.compression_level {} must be 1 to 19", raw.upload.compression_level));
        }
        let mut datasets = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for (i, d) in raw.dataset.iter().enumerate() {
            let at = format!("dataset[{i}] ({})", d.name);
            let name = DatasetName::new(&d.name).map_err(|e| problems.push(format!("{at}: {e}"))).ok();
            if !seen.insert(d.name.clone()) {
                problems.push(format!("{at}: duplicate dataset name"));
            }
            if d.paths.is_empty() {
                problems.push(format!("{at}: paths is empty"));
            }
            for p in &d.paths {
                if !p.is_absolute() {
                    problems.push(format!("{at}: path {p:?} must be absolute"));
                }
            }
            for (a, pa) in d.paths.iter().enumerate() {
                for pb in d.paths.iter().skip(a + 1) {
                    if pa.starts_with(pb) || pb.starts_with(pa) {
                        problems.push(format!("{at}: paths {pa:?} and {pb:?} overlap"));
                    }
                }
            }
            let exclude = Exclude::compile(&d.exclude).map_err(|e| problems.push(format!("{at}: {e}"))).ok();
            if let (Some(name), Some(exclude)) = (name, exclude) {
                datasets.push(Dataset { name, paths: d.paths.clone(), exclude });
            }
        }
        if !problems.is_empty() {
            bail!("{}", problems.join("\n  "));
        }
        let threads = if raw.upload.threads == 0 {
            std::thread::available_parallelism().map_or(2, |n| n.get())
        } else {
            raw.upload.threads
        };
        Ok(Self {
            agent: agent.expect("validated"),
            state_dir: raw.agent.state_dir,
            address: raw.controller.address,
            server_name,
            compression_level: raw.upload.compression_level,
            threads,
            datasets,
        })
    }

    pub fn key_path(&self) -> PathBuf {
        self.state_dir.join("agent.key")
    }
    pub fn cert_path(&self) -> PathBuf {
        self.state_dir.join("agent.pem")
    }
    pub fn ca_path(&self) -> PathBuf {
        self.state_dir.join("ca.pem")
    }
    pub fn cache_dir(&self) -> PathBuf {
        self.state_dir.join("cache")
    }
}

/// The commented file `enroll` writes.
pub fn template(name: &str, state_dir: &Path, address: &str) -> String {
    format!(
        r#"# Konfigurasi agen Pulih / Pulih agent configuration.
# Kunci yang tidak dikenal ditolak / unknown keys are rejected.

[agent]
# Nama agen, sesuai sertifikatnya / the name this agent is enrolled under.
name = "{name}"
# Kunci, sertifikat dan cache perubahan / key, certificates and change cache.
state_dir = "{state}"

[controller]
# Alamat pengendali DRC (HOST:PORT) / address of the DRC controller.
address = "{address}"
# Nama di sertifikat pengendali; bawaan: HOST dari address
# Name in the controller's certificate; default: HOST of address.
# server_name = "drc.example.go.id"

[upload]
# Tingkat kompresi zstd 1-19 (1 tercepat) / zstd level 1-19 (1 is fastest).
compression_level = 1
# Thread baca/hash/kompresi; 0 = satu per inti / worker threads; 0 = one per core.
threads = 0

# Dataset yang dilindungi; tambahkan sesuai kebutuhan.
# Datasets to protect; add as many as needed.
#
# Pola exclude: tanpa "/" cocok dengan nama entri di kedalaman mana pun ("*.tmp").
# Exclude patterns: one without "/" matches an entry's name at any depth ("*.tmp").
# Akhiran "/" berarti hanya direktori ("cache/", "var/cache/").
# A trailing "/" means directories only ("cache/", "var/cache/").
# Pola berawalan "/" cocok dengan path absolut ("/srv/simpeg/data/tmp").
# A pattern starting with "/" matches the absolute path ("/srv/simpeg/data/tmp").
# Pola lain yang memuat "/" relatif terhadap path dataset tempat entri berada:
# "logs/*.gz" hanya cocok dengan <path dataset>/logs/a.gz, tidak lebih dalam.
# Any other pattern containing "/" is relative to the dataset path the entry is
# under: "logs/*.gz" matches <dataset path>/logs/a.gz only, not deeper.
# "*" dan "?" tidak pernah cocok dengan "/"; "**" cocok dengan direktori berapa pun.
# "*" and "?" never match "/"; "**" matches any number of directories.
#
# [[dataset]]
# name = "simpeg"
# paths = ["/srv/simpeg/data", "/etc/simpeg"]
# exclude = ["*.tmp", "cache/", "logs/*.gz", "/srv/simpeg/data/tmp"]
"#,
        state = state_dir.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_parses_with_a_dataset_appended() {
        let mut t = template("web", Path::new("/var/lib/pulih-agent"), "drc.example:7443");
        t.push_str("\n[[dataset]]\nname = \"simpeg\"\npaths = [\"/srv/simpeg\"]\nexclude = [\"*.tmp\", \"cache/\"]\n");
        let s = Settings::parse(&t).unwrap();
        assert_eq!(s.server_name, "drc.example");
        assert_eq!(s.datasets.len(), 1);
        let ex = &s.datasets[0].exclude;
        assert!(ex.excludes(Path::new("/srv/simpeg/a.tmp"), Path::new("a.tmp"), false));
        assert!(ex.excludes(Path::new("/srv/simpeg/cache"), Path::new("cache"), true));
        assert!(!ex.excludes(Path::new("/srv/simpeg/cache"), Path::new("cache"), false));
        assert!(!ex.excludes(Path::new("/srv/simpeg/a.txt"), Path::new("a.txt"), false));
    }

    /// Compiles `patterns` and asks about an entry of the dataset path
    /// `base`, at `rel` inside it.
    fn excluded(patterns: &[&str], base: &str, rel: &str, is_dir: bool) -> bool {
        let ex = Exclude::compile(&patterns.iter().map(|p| p.to_string()).collect::<Vec<_>>()).unwrap();
        ex.excludes(&Path::new(base).join(rel), Path::new(rel), is_dir)
    }

    #[test]
    fn exclude_without_slash_matches_a_name_at_any_depth() {
        for rel in ["a.tmp", "x/a.tmp", "x/y/z/.b.tmp"] {
            assert!(excluded(&["*.tmp"], "/srv/d", rel, false), "{rel}");
            assert!(excluded(&["*.tmp"], "/srv/d", rel, true), "{rel}");
        }
        assert!(!excluded(&["*.tmp"], "/srv/d", "a.tmp/b", false));
        assert!(!excluded(&["*.tmp"], "/srv/d", "A.TMP", false));
        assert!(excluded(&["build"], "/srv/d", "x/build", false));
        assert!(excluded(&["?.log"], "/srv/d", "x/a.log", false));
        // The dataset path's own components are not names of entries.
        assert!(!excluded(&["d"], "/srv/d", "a", false));
    }

    #[test]
    fn exclude_trailing_slash_means_directories_only() {
        assert!(excluded(&["cache/"], "/srv/d", "cache", true));
        assert!(excluded(&["cache/"], "/srv/d", "x/y/cache", true));
        assert!(!excluded(&["cache/"], "/srv/d", "cache", false));
        assert!(!excluded(&["cache/"], "/srv/d", "x/cache", false));
        // With a "/" inside, too (relative and absolute).
        assert!(excluded(&["var/cache/"], "/srv/d", "var/cache", true));
        assert!(!excluded(&["var/cache/"], "/srv/d", "var/cache", false));
        assert!(excluded(&["/srv/d/var/cache/"], "/srv/d", "var/cache", true));
        assert!(!excluded(&["/srv/d/var/cache/"], "/srv/d", "var/cache", false));
    }

    #[test]
    fn exclude_leading_slash_matches_the_absolute_path() {
        assert!(excluded(&["/srv/x/tmp"], "/srv/x", "tmp", true));
        assert!(excluded(&["/srv/x/tmp"], "/srv/x", "tmp", false));
        assert!(!excluded(&["/srv/x/tmp"], "/srv/x", "a/tmp", true));
        assert!(!excluded(&["/srv/x/tmp"], "/srv/y", "tmp", true));
        // The dataset path can be a prefix of the pattern or not.
        assert!(excluded(&["/srv/x/a/tmp"], "/srv/x/a", "tmp", false));
        assert!(excluded(&["/srv/*/tmp"], "/srv/x", "tmp", false));
    }

    #[test]
    fn exclude_relative_pattern_with_slash_is_anchored_at_the_dataset_path() {
        assert!(excluded(&["logs/*.gz"], "/srv/d", "logs/a.gz", false));
        assert!(excluded(&["logs/*.gz"], "/etc/other", "logs/a.gz", false));
        assert!(!excluded(&["logs/*.gz"], "/srv/d", "logs/old/a.gz", false));
        assert!(!excluded(&["logs/*.gz"], "/srv/d", "x/logs/a.gz", false));
        assert!(!excluded(&["logs/*.gz"], "/srv/d", "logs/a.txt", false));
        // Not matched against the absolute path.
        assert!(!excluded(&["d/logs/*.gz"], "/srv/d", "logs/a.gz", false));
    }

    #[test]
    fn exclude_star_and_question_mark_never_match_slash() {
        assert!(!excluded(&["/srv/app/*.log"], "/srv/app", "2024/x.log", false));
        assert!(excluded(&["/srv/app/*.log"], "/srv/app", "x.log", false));
        assert!(!excluded(&["a?b/c"], "/srv/d", "a/b/c", false));
        assert!(excluded(&["a?b/c"], "/srv/d", "a-b/c", false));
        assert!(!excluded(&["x/*"], "/srv/d", "x/y/z", false));
    }

    #[test]
    fn exclude_double_star_matches_any_number_of_directories() {
        for rel in ["logs/a.gz", "x/logs/a.gz", "x/y/logs/a.gz"] {
            assert!(excluded(&["**/logs/*.gz"], "/srv/d", rel, false), "{rel}");
        }
        for rel in ["build/a.o", "build/x/a.o", "build/x/y/a.o"] {
            assert!(excluded(&["build/**/*.o"], "/srv/d", rel, false), "{rel}");
        }
        assert!(!excluded(&["build/**/*.o"], "/srv/d", "src/build/a.o", false));
        assert!(excluded(&["/srv/**/tmp"], "/srv/d", "a/b/tmp", true));
        assert!(excluded(&["build/**"], "/srv/d", "build/x/y", false));
    }

    #[test]
    fn exclude_patterns_that_match_nothing_are_refused() {
        for p in ["", "/", "//"] {
            assert!(Exclude::compile(&[p.to_string()]).is_err(), "{p:?}");
        }
    }

    #[test]
    fn all_problems_are_reported_at_once() {
        let t = r#"
[agent]
name = "Bad Name"
state_dir = "relative"
[controller]
address = "nohost"
[upload]
compression_level = 99
[[dataset]]
name = "d"
paths = ["rel", "/a", "/a/b"]
exclude = ["[bad"]
"#;
        let err = format!("{:#}", Settings::parse(t).unwrap_err());
        for needle in [
            "agent.name",
            "state_dir",
            "HOST:PORT",
            "compression_level",
            "must be absolute",
            "overlap",
            "exclude pattern",
        ] {
            assert!(err.contains(needle), "missing {needle}: {err}");
        }
    }

    #[test]
    fn unknown_keys_are_named() {
        let t = template("web", Path::new("/s"), "h:1").replace("threads", "thread");
        let err = format!("{:#}", Settings::parse(&t).unwrap_err());
        assert!(err.contains("thread"), "{err}");
    }
}
