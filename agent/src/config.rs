//! `agent.toml`: what the agent protects and where it sends it.
//!
//! Parsed with unknown keys refused, then validated as a whole (every
//! problem reported at once) and resolved into a [`Settings`] the rest of
//! the agent uses.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use globset::{Glob, GlobSet, GlobSetBuilder};
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
    /// Glob patterns to leave out: `*.tmp` matches a name anywhere,
    /// `cache/` matches directories named cache, `/srv/x/tmp` an absolute path.
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
    names: GlobSet,
    dir_names: GlobSet,
    paths: GlobSet,
}

impl Exclude {
    fn compile(patterns: &[String]) -> Result<Self, String> {
        let (mut names, mut dirs, mut paths) = (GlobSetBuilder::new(), GlobSetBuilder::new(), GlobSetBuilder::new());
        for p in patterns {
            let glob = |s: &str| Glob::new(s).map_err(|e| format!("exclude pattern {p:?}: {e}"));
            if let Some(d) = p.strip_suffix('/') {
                if d.contains('/') {
                    paths.add(glob(d)?);
                } else {
                    dirs.add(glob(d)?);
                }
            } else if p.contains('/') {
                paths.add(glob(p)?);
            } else {
                names.add(glob(p)?);
            }
        }
        let b = |g: GlobSetBuilder| g.build().map_err(|e| e.to_string());
        Ok(Self { names: b(names)?, dir_names: b(dirs)?, paths: b(paths)? })
    }

    /// Whether the entry at `path` (named `name`) is excluded.
    pub fn excludes(&self, path: &Path, name: &std::ffi::OsStr, is_dir: bool) -> bool {
        self.names.is_match(name) || (is_dir && self.dir_names.is_match(name)) || self.paths.is_match(path)
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
# [[dataset]]
# name = "simpeg"
# paths = ["/srv/simpeg/data", "/etc/simpeg"]
# exclude = ["*.tmp", "cache/"]
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
        assert!(ex.excludes(Path::new("/srv/simpeg/a.tmp"), "a.tmp".as_ref(), false));
        assert!(ex.excludes(Path::new("/srv/simpeg/cache"), "cache".as_ref(), true));
        assert!(!ex.excludes(Path::new("/srv/simpeg/cache"), "cache".as_ref(), false));
        assert!(!ex.excludes(Path::new("/srv/simpeg/a.txt"), "a.txt".as_ref(), false));
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
