//! Man pages and shell completions generated from a binary's clap
//! definition, so they cannot drift from `--help`. Each binary exposes this
//! as a hidden `generate` subcommand (as ripgrep's `--generate` does);
//! `deploy/install.sh` runs it and installs the files.

use std::io;
use std::path::{Path, PathBuf};

/// What `generate` writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum DocKind {
    /// Section 1 man pages: one for the command and one per subcommand.
    Man,
    Bash,
    Zsh,
    Fish,
}

/// Writes the `kind` files for `cmd` into `dir` (created if missing) and
/// returns their paths. Man pages are named `NAME.1` and `NAME-SUB.1`
/// (hidden subcommands get none); completions `NAME.bash`, `_NAME` (zsh)
/// and `NAME.fish`. clap_complete offers hidden subcommands too: harmless.
pub fn generate(cmd: clap::Command, kind: DocKind, dir: &Path) -> io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    // Building names nested subcommands "parent-sub" (the man page names).
    let mut cmd = cmd.disable_help_subcommand(true);
    cmd.build();
    let name = cmd.get_name().to_string();
    let shell = match kind {
        DocKind::Man => {
            let mut written = Vec::new();
            man_pages(cmd, dir, &mut written)?;
            written.sort();
            return Ok(written);
        }
        DocKind::Bash => clap_complete::Shell::Bash,
        DocKind::Zsh => clap_complete::Shell::Zsh,
        DocKind::Fish => clap_complete::Shell::Fish,
    };
    Ok(vec![clap_complete::generate_to(shell, &mut cmd, name, dir)?])
}

/// One page for `cmd` and one for each visible subcommand, recursively (as
/// `clap_mangen::generate_to`, but returning the paths).
fn man_pages(cmd: clap::Command, dir: &Path, written: &mut Vec<PathBuf>) -> io::Result<()> {
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()).cloned() {
        man_pages(sub, dir, written)?;
    }
    written.push(clap_mangen::Man::new(cmd).generate_to(dir)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(clap::Parser)]
    #[command(name = "demo", version, about = "Demo tool")]
    struct Demo {
        #[command(subcommand)]
        cmd: Sub,
    }
    #[derive(clap::Subcommand)]
    enum Sub {
        /// Takes a snapshot.
        Snapshot {
            /// Dataset name.
            #[arg(long)]
            dataset: String,
        },
        #[command(hide = true)]
        Generate,
    }

    #[test]
    fn pages_cover_visible_subcommands_and_completions_know_the_options() {
        use clap::CommandFactory;
        let dir = tempfile::tempdir().unwrap();
        let pages = generate(Demo::command(), DocKind::Man, dir.path()).unwrap();
        let names: Vec<_> = pages.iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
        assert_eq!(names, ["demo-snapshot.1", "demo.1"]);
        let page = std::fs::read_to_string(dir.path().join("demo-snapshot.1")).unwrap();
        assert!(page.contains("Takes a snapshot") && page.contains("dataset"), "{page}");
        for (kind, file) in [(DocKind::Bash, "demo.bash"), (DocKind::Zsh, "_demo"), (DocKind::Fish, "demo.fish")] {
            let out = generate(Demo::command(), kind, dir.path()).unwrap();
            assert_eq!(out, [dir.path().join(file)]);
            let text = std::fs::read_to_string(&out[0]).unwrap();
            assert!(text.contains("snapshot") && text.contains("dataset"), "{kind:?}: {text}");
        }
    }
}
