//! The controller's data directory and its layout.
//!
//! ```text
//! DIR/controller.toml   configuration (commented)
//! DIR/catalog.db        SQLite catalog (WAL)
//! DIR/store/            content-addressed blobs, see crate::store
//! DIR/pki/              CA and server certificate, keys 0600
//! ```

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::catalog::Catalog;
use crate::config::{self, ControllerConfig};
use crate::pki::{self, PkiPaths};
use crate::store::Store;

/// A lock of the data directory is held by another process or thread
/// (e.g. a garbage collection is already running). Callers may downcast
/// to it to answer "busy" instead of "failed".
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct LockBusy(pub String);

/// A data directory.
#[derive(Debug, Clone)]
pub struct DataDir {
    pub root: PathBuf,
}

impl DataDir {
    pub fn new(root: &Path) -> Self {
        Self { root: root.to_owned() }
    }
    pub fn config_path(&self) -> PathBuf {
        self.root.join("controller.toml")
    }
    pub fn catalog_path(&self) -> PathBuf {
        self.root.join("catalog.db")
    }
    pub fn store_path(&self) -> PathBuf {
        self.root.join("store")
    }
    pub fn pki(&self) -> PkiPaths {
        PkiPaths::new(&self.root)
    }

    /// Creates a new data directory; refuses one that has content.
    pub fn init(&self, name: &str, listen: &str, api_listen: &str, names: &[String]) -> Result<()> {
        if let Ok(mut it) = std::fs::read_dir(&self.root) {
            if it.next().is_some() {
                bail!(
                    "{} already exists and is not empty; refusing to overwrite a data directory",
                    self.root.display()
                );
            }
        }
        std::fs::create_dir_all(&self.root).with_context(|| format!("creating {}", self.root.display()))?;
        // Backup data of every agency: readable by the controller's user only.
        std::fs::set_permissions(&self.root, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
        let cfg = config::template(name, listen, api_listen);
        let parsed: ControllerConfig = toml::from_str(&cfg)?;
        parsed.validate()?;
        pki::create(&self.pki(), name, names)?;
        Store::create(&self.store_path()).context("creating the store")?;
        let mut cat = Catalog::create(&self.catalog_path(), name).context("creating the catalog")?;
        std::fs::write(self.config_path(), &cfg)?;
        // The first configuration is the baseline `serve` compares with.
        cat.note_config(&crate::catalog::actor_local(), &blake3::hash(cfg.as_bytes()).to_hex(), "controller.toml")?;
        crate::witness::record_catalog(&cat, &self.store_path())?;
        Ok(())
    }

    /// Loads the configuration.
    pub fn config(&self) -> Result<ControllerConfig> {
        self.check_exists()?;
        ControllerConfig::load(&self.config_path())
    }

    /// The DR plan's inputs from `[drp]` of the configuration.
    pub fn drp_settings(&self, cfg: &ControllerConfig) -> Result<crate::drp::DrpSettings> {
        let abs = |p: &Path| if p.is_absolute() { p.to_owned() } else { self.root.join(p) };
        let templates = crate::drp::template::resolve_dir(cfg.drp.templates.as_deref().map(abs).as_deref())?;
        Ok(crate::drp::DrpSettings {
            data_dir: self.root.clone(),
            organisation: cfg.drp.organisation.as_deref().map_or_else(|| self.root.join("organisation.toml"), abs),
            templates,
            systems: cfg.drp.systems.as_deref().map(abs),
            systems_dir: cfg.systems_dir(&self.root),
        })
    }

    /// Opens the catalog.
    pub fn catalog(&self) -> Result<Catalog> {
        self.check_exists()?;
        Catalog::open(&self.catalog_path()).with_context(|| format!("opening {}", self.catalog_path().display()))
    }

    /// Opens the store, finding blobs through the catalog.
    pub fn store(&self) -> Result<Store> {
        self.check_exists()?;
        Ok(Store::open_with_catalog(&self.store_path(), &self.catalog_path())?)
    }

    /// Converts a layout-1 or layout-2 store to the current layout
    /// ([`crate::store::migrate`]); `None` when there was nothing to do.
    /// The caller holds the serve lock; the GC lock is taken here (only
    /// when there is work), so no GC, scrub or rebuild runs meanwhile.
    pub fn migrate_store(&self) -> Result<Option<u64>> {
        match Store::open(&self.store_path()) {
            Err(crate::store::StoreError::OldLayout { .. }) => {}
            _ => return Ok(None),
        }
        let _gc = self.lock_for_gc().context("converting the store to layout 3 needs the GC lock")?;
        crate::store::migrate(&self.store_path()).context("converting the store to layout 3")
    }

    /// Takes the data directory's server lock: one `serve` per directory.
    /// Held until the returned file is dropped.
    pub fn lock_for_serving(&self) -> Result<std::fs::File> {
        self.lock("serve.lock", "another pulih-controller is already serving")
    }

    /// Takes the data directory's GC lock: one garbage collection (or
    /// catalog rebuild) at a time, beside a running `serve`. Held until the
    /// returned file is dropped.
    pub fn lock_for_gc(&self) -> Result<std::fs::File> {
        self.lock("gc.lock", "another garbage collection is running in")
    }

    fn lock(&self, name: &str, busy: &str) -> Result<std::fs::File> {
        self.check_exists()?;
        let path = self.root.join(name);
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive)
            .map_err(|_| LockBusy(format!("{busy} {} (lock {})", self.root.display(), path.display())))?;
        Ok(f)
    }

    fn check_exists(&self) -> Result<()> {
        if let Err(e) = std::fs::metadata(&self.root) {
            if e.kind() == std::io::ErrorKind::PermissionDenied {
                bail!(
                    "cannot read {}: permission denied (run as the controller's user, e.g. `sudo -u pulih`)",
                    self.root.display()
                );
            }
        }
        if std::fs::metadata(self.config_path()).is_err_and(|e| e.kind() == std::io::ErrorKind::PermissionDenied) {
            bail!(
                "cannot read {}: permission denied (run as the controller's user, e.g. `sudo -u pulih`)",
                self.config_path().display()
            );
        }
        if !self.config_path().exists() {
            bail!(
                "{} is not a Pulih data directory (no controller.toml); create one with `pulih-controller init --data-dir {}`",
                self.root.display(),
                self.root.display()
            );
        }
        Ok(())
    }
}
