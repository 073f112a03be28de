//! Prometheus metrics of the controller, served at `GET /metrics` on the
//! API listener.
//!
//! Two kinds:
//! * counters the controller increments as things happen (API requests by
//!   route template and status);
//! * gauges computed from the catalog at each scrape ([`Metrics::render`]):
//!   nothing can drift out of step with the catalog, and an agent or
//!   dataset that disappears disappears from the output too (the gauge
//!   vectors are reset before they are filled).
//!
//! Labels are bounded: agent and dataset names (enrolled by an admin),
//! route templates (not paths), status codes. Never a path, id or token.
//!
//! To add a metric: add a constant name and a field, register it in
//! [`Metrics::new`], and fill it in [`Metrics::refresh`] (a catalog gauge)
//! or where the event happens (a counter). Tables added later (`gc_runs`,
//! `scrub_runs`, `blob_damage`) get their own `refresh_*` step.

use prometheus::{Encoder, GaugeVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder};

use crate::catalog::{now_secs, Catalog, CatalogError};

pub const DATASET_LAST_SNAPSHOT: &str = "pulih_dataset_last_snapshot_timestamp_seconds";
pub const DATASET_LAG: &str = "pulih_dataset_lag_seconds";
pub const DATASET_RPO_TARGET: &str = "pulih_dataset_rpo_target_seconds";
pub const DATASET_SNAPSHOTS: &str = "pulih_dataset_snapshots";
pub const AGENT_LAST_CONTACT: &str = "pulih_agent_last_contact_timestamp_seconds";
pub const AGENT_CERT_EXPIRY: &str = "pulih_agent_certificate_expiry_timestamp_seconds";
pub const AGENT_ACTIVE: &str = "pulih_agent_active";
pub const STORE_LOGICAL_BYTES: &str = "pulih_store_logical_bytes";
pub const STORE_RAW_BYTES: &str = "pulih_store_raw_bytes";
pub const STORE_STORED_BYTES: &str = "pulih_store_stored_bytes";
pub const STORE_DEDUP_RATIO: &str = "pulih_store_dedup_ratio";
pub const STORE_BLOBS: &str = "pulih_store_blobs";
pub const API_REQUESTS: &str = "pulih_api_requests_total";
pub const AUDIT_ROWS: &str = "pulih_audit_log_rows";
pub const STORE_DAMAGED_BLOBS: &str = "pulih_store_damaged_blobs";
pub const SNAPSHOTS_DAMAGED: &str = "pulih_snapshots_damaged";
pub const SCRUB_LAST_FINISHED: &str = "pulih_scrub_last_finished_timestamp_seconds";
pub const SCRUB_LAST_BYTES: &str = "pulih_scrub_last_bytes_checked";
pub const SCRUB_LAST_BLOBS: &str = "pulih_scrub_last_blobs_checked";
pub const GC_LAST_FINISHED: &str = "pulih_gc_last_finished_timestamp_seconds";
pub const GC_LAST_FREED: &str = "pulih_gc_last_freed_bytes";
pub const GC_FREED_TOTAL: &str = "pulih_gc_freed_bytes_total";
pub const PRUNE_LAST_FINISHED: &str = "pulih_prune_last_finished_timestamp_seconds";
pub const PRUNE_LAST_REMOVED: &str = "pulih_prune_last_removed_snapshots";
pub const DRILL_OVERDUE: &str = "pulih_drill_overdue";
pub const DRILL_LAST: &str = "pulih_drill_last_timestamp_seconds";
pub const DRILL_RTO: &str = "pulih_drill_rto_achieved_seconds";
pub const DRILL_RPO: &str = "pulih_drill_rpo_achieved_seconds";
pub const SYSTEM_RTO_TARGET: &str = "pulih_system_rto_target_seconds";
pub const SYSTEM_RPO_TARGET: &str = "pulih_system_rpo_target_seconds";

/// Metric failures.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error("encoding metrics: {0}")]
    Prometheus(#[from] prometheus::Error),
}

/// The controller's metrics.
pub struct Metrics {
    registry: Registry,
    dataset_last: GaugeVec,
    dataset_lag: GaugeVec,
    dataset_rpo: GaugeVec,
    dataset_snapshots: IntGaugeVec,
    agent_contact: GaugeVec,
    agent_cert: GaugeVec,
    agent_active: IntGaugeVec,
    store_logical: IntGauge,
    store_raw: IntGauge,
    store_stored: IntGauge,
    store_dedup: prometheus::Gauge,
    store_blobs: IntGaugeVec,
    audit_rows: IntGauge,
    damaged_blobs: IntGaugeVec,
    damaged_snapshots: IntGauge,
    scrub_finished: IntGauge,
    scrub_bytes: IntGauge,
    scrub_blobs: IntGauge,
    gc_finished: IntGauge,
    gc_freed: IntGauge,
    gc_freed_total: IntGauge,
    prune_finished: IntGauge,
    prune_removed: IntGauge,
    api_requests: IntCounterVec,
    drill_overdue: IntGaugeVec,
    drill_last: GaugeVec,
    drill_rto: GaugeVec,
    drill_rpo: GaugeVec,
    system_rto: GaugeVec,
    system_rpo: GaugeVec,
    /// Where the systems are defined (drill metrics need them).
    systems_dir: Option<std::path::PathBuf>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn reg<T: prometheus::core::Collector + Clone + 'static>(r: &Registry, m: T) -> T {
    // Names are constants and unique; registering cannot fail.
    r.register(Box::new(m.clone())).expect("metric names are unique");
    m
}

impl Metrics {
    pub fn new() -> Self {
        let r = Registry::new();
        let g = |name: &str, help: &str, labels: &[&str]| GaugeVec::new(Opts::new(name, help), labels).expect("valid");
        let ig =
            |name: &str, help: &str, labels: &[&str]| IntGaugeVec::new(Opts::new(name, help), labels).expect("valid");
        let one = |name: &str, help: &str| IntGauge::new(name, help).expect("valid");
        let ds = &["agent", "dataset"];
        Self {
            dataset_last: reg(&r, g(DATASET_LAST_SNAPSHOT, "Finish time of the newest snapshot (Unix seconds)", ds)),
            dataset_lag: reg(&r, g(DATASET_LAG, "Seconds since the newest snapshot finished", ds)),
            dataset_rpo: reg(&r, g(DATASET_RPO_TARGET, "RPO target the agent reported, seconds", ds)),
            dataset_snapshots: reg(&r, ig(DATASET_SNAPSHOTS, "Snapshots held", ds)),
            agent_contact: reg(&r, g(AGENT_LAST_CONTACT, "Last connection of the agent (Unix seconds)", &["agent"])),
            agent_cert: reg(
                &r,
                g(AGENT_CERT_EXPIRY, "Expiry of the agent's newest unrevoked certificate (Unix seconds)", &["agent"]),
            ),
            agent_active: reg(&r, ig(AGENT_ACTIVE, "1 when the agent is active, 0 when revoked", &["agent"])),
            store_logical: reg(&r, one(STORE_LOGICAL_BYTES, "Sum of the sizes of all snapshots (bytes)")),
            store_raw: reg(&r, one(STORE_RAW_BYTES, "Uncompressed size of the distinct stored blobs (bytes)")),
            store_stored: reg(&r, one(STORE_STORED_BYTES, "Bytes the blobs take in the store (compressed)")),
            store_dedup: reg(
                &r,
                prometheus::Gauge::new(STORE_DEDUP_RATIO, "Logical bytes per stored byte (dedup and compression)")
                    .expect("valid"),
            ),
            store_blobs: reg(&r, ig(STORE_BLOBS, "Blobs in the store", &["kind"])),
            audit_rows: reg(&r, one(AUDIT_ROWS, "Rows in the audit log (its head sequence number)")),
            damaged_blobs: reg(
                &r,
                ig(STORE_DAMAGED_BLOBS, "Blobs found damaged by scrub and not repaired, by state", &["state"]),
            ),
            damaged_snapshots: reg(&r, one(SNAPSHOTS_DAMAGED, "Snapshots that reach a damaged or lost blob")),
            scrub_finished: reg(&r, one(SCRUB_LAST_FINISHED, "End of the last finished scrub (Unix seconds)")),
            scrub_bytes: reg(&r, one(SCRUB_LAST_BYTES, "Bytes re-read and rehashed by the last finished scrub")),
            scrub_blobs: reg(&r, one(SCRUB_LAST_BLOBS, "Blobs verified by the last finished scrub")),
            gc_finished: reg(&r, one(GC_LAST_FINISHED, "End of the last successful garbage collection (Unix seconds)")),
            gc_freed: reg(&r, one(GC_LAST_FREED, "Bytes freed by the last successful garbage collection")),
            gc_freed_total: reg(&r, one(GC_FREED_TOTAL, "Bytes freed by all recorded garbage collections")),
            prune_finished: reg(
                &r,
                one(PRUNE_LAST_FINISHED, "End of the last prune (retention applied; Unix seconds)"),
            ),
            prune_removed: reg(&r, one(PRUNE_LAST_REMOVED, "Snapshots the last prune removed")),
            api_requests: reg(
                &r,
                IntCounterVec::new(
                    Opts::new(API_REQUESTS, "API requests by route template, method and status"),
                    &["route", "method", "status"],
                )
                .expect("valid"),
            ),
            drill_overdue: reg(
                &r,
                ig(DRILL_OVERDUE, "1 when the system's scheduled drill is overdue (drill_every passed)", &["system"]),
            ),
            drill_last: reg(
                &r,
                g(
                    DRILL_LAST,
                    "End of the system's last drill with this outcome (Unix seconds)",
                    &["system", "outcome"],
                ),
            ),
            drill_rto: reg(
                &r,
                g(DRILL_RTO, "RTO achieved by the system's last drill that measured it, seconds", &["system"]),
            ),
            drill_rpo: reg(
                &r,
                g(DRILL_RPO, "RPO achieved by the system's last drill that measured it, seconds", &["system"]),
            ),
            system_rto: reg(&r, g(SYSTEM_RTO_TARGET, "The system's RTO target, seconds", &["system"])),
            system_rpo: reg(&r, g(SYSTEM_RPO_TARGET, "The system's RPO target, seconds", &["system"])),
            systems_dir: None,
            registry: r,
        }
    }

    /// Also export drill metrics of the systems defined in `dir`.
    pub fn with_systems_dir(mut self, dir: &std::path::Path) -> Self {
        self.systems_dir = Some(dir.to_owned());
        self
    }

    /// Counts one API request.
    pub fn api_request(&self, route: &str, method: &str, status: u16) {
        self.api_requests.with_label_values(&[route, method, &status.to_string()]).inc();
    }

    /// Fills the catalog gauges.
    pub fn refresh(&self, cat: &Catalog) -> Result<(), MetricsError> {
        self.refresh_agents(cat)?;
        self.refresh_store(cat)?;
        self.refresh_lifecycle(cat)?;
        self.refresh_drills(cat)?;
        let head: i64 = cat.meta_get("audit_head_seq")?.and_then(|v| v.parse().ok()).unwrap_or(0);
        self.audit_rows.set(head);
        Ok(())
    }

    fn refresh_agents(&self, cat: &Catalog) -> Result<(), MetricsError> {
        for v in [&self.dataset_last, &self.dataset_lag, &self.dataset_rpo, &self.agent_contact, &self.agent_cert] {
            v.reset();
        }
        self.dataset_snapshots.reset();
        self.agent_active.reset();
        for a in cat.agent_overview(now_secs())? {
            self.agent_active.with_label_values(&[&a.name]).set(i64::from(a.status == "active"));
            if let Some(t) = a.last_seen_at {
                self.agent_contact.with_label_values(&[&a.name]).set(t as f64);
            }
            if let Some(t) = a.cert_not_after {
                self.agent_cert.with_label_values(&[&a.name]).set(t as f64);
            }
            for d in &a.datasets {
                let l = [a.name.as_str(), d.name.as_str()];
                self.dataset_snapshots.with_label_values(&l).set(d.snapshots as i64);
                if let Some(ns) = d.last_snapshot_ns {
                    self.dataset_last.with_label_values(&l).set(ns as f64 / 1e9);
                }
                if let Some(lag) = d.lag_secs {
                    self.dataset_lag.with_label_values(&l).set(lag as f64);
                }
                if let Some(rpo) = d.rpo_target_secs {
                    self.dataset_rpo.with_label_values(&l).set(rpo as f64);
                }
            }
        }
        Ok(())
    }

    fn refresh_store(&self, cat: &Catalog) -> Result<(), MetricsError> {
        let t = cat.store_totals()?;
        self.store_logical.set(t.logical_bytes as i64);
        self.store_raw.set(t.raw_bytes as i64);
        self.store_stored.set(t.stored_bytes as i64);
        self.store_dedup.set(if t.stored_bytes == 0 { 0.0 } else { t.logical_bytes as f64 / t.stored_bytes as f64 });
        self.store_blobs.with_label_values(&["chunk"]).set(t.chunks as i64);
        self.store_blobs.with_label_values(&["tree"]).set(t.trees as i64);
        Ok(())
    }

    fn refresh_lifecycle(&self, cat: &Catalog) -> Result<(), MetricsError> {
        self.damaged_blobs.reset();
        for state in ["damaged", "lost"] {
            self.damaged_blobs.with_label_values(&[state]).set(0);
        }
        for d in cat.damage()?.iter().filter(|d| d.state != "repaired") {
            self.damaged_blobs.with_label_values(&[&d.state]).inc();
        }
        self.damaged_snapshots.set(cat.damaged_snapshots()?.len() as i64);
        if let Some(s) = cat.scrub_runs(20)?.into_iter().find(|s| s.finished_at.is_some()) {
            self.scrub_finished.set(s.finished_at.unwrap_or(0));
            self.scrub_bytes.set(s.bytes_checked as i64);
            self.scrub_blobs.set(s.blobs_checked as i64);
        }
        let runs = cat.gc_runs(10_000)?;
        if let Some(g) = runs.iter().find(|g| g.outcome == "ok") {
            self.gc_finished.set(g.finished_at.unwrap_or(0));
            self.gc_freed.set(g.bytes_removed as i64);
        }
        self.gc_freed_total.set(runs.iter().map(|g| g.bytes_removed as i64).sum());
        let meta_int = |k: &str| -> Result<Option<i64>, CatalogError> { Ok(cat.meta(k)?.and_then(|v| v.parse().ok())) };
        if let Some(at) = meta_int(crate::lifecycle::META_PRUNE_AT)? {
            self.prune_finished.set(at);
            self.prune_removed.set(meta_int(crate::lifecycle::META_PRUNE_REMOVED)?.unwrap_or(0));
        }
        Ok(())
    }

    fn refresh_drills(&self, cat: &Catalog) -> Result<(), MetricsError> {
        let Some(dir) = &self.systems_dir else { return Ok(()) };
        let systems = match crate::systems::Systems::load(dir) {
            Ok(s) => s,
            Err(e) => {
                // Keep the last values: an edit in progress should not
                // make every system look drilled or not overdue.
                tracing::warn!(error = %e, "metrics: the systems definitions are invalid; drill metrics not refreshed");
                return Ok(());
            }
        };
        for v in [&self.drill_last, &self.drill_rto, &self.drill_rpo, &self.system_rto, &self.system_rpo] {
            v.reset();
        }
        self.drill_overdue.reset();
        let now = pulih_core::now_ns();
        for s in systems.iter() {
            let name = s.name.as_str();
            self.system_rto.with_label_values(&[name]).set(s.rto_target.as_secs_f64());
            self.system_rpo.with_label_values(&[name]).set(s.rpo_target.as_secs_f64());
            if let Some(o) = crate::drill::schedule::overdue(cat, s, now)? {
                self.drill_overdue.with_label_values(&[name]).set(i64::from(o));
            }
            for outcome in ["passed", "partial", "failed"] {
                if let Some(end) = cat.last_system_drill(name, &[outcome])?.and_then(|r| r.ended_ns) {
                    self.drill_last.with_label_values(&[name, outcome]).set(end as f64 / 1e9);
                }
            }
            if let Some(r) = cat.last_system_drill(name, &["passed", "partial"])? {
                if let Some(v) = r.rto_achieved_secs {
                    self.drill_rto.with_label_values(&[name]).set(v);
                }
                if let Some(v) = r.rpo_achieved_secs {
                    self.drill_rpo.with_label_values(&[name]).set(v);
                }
            }
        }
        Ok(())
    }

    /// Refreshes from the catalog and renders the text exposition format.
    pub fn render(&self, cat: &Catalog) -> Result<String, MetricsError> {
        self.refresh(cat)?;
        let mut buf = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut buf)?;
        Ok(String::from_utf8_lossy(&buf).into_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_store_and_request_metrics() {
        let dir = tempfile::tempdir().unwrap();
        let cat = Catalog::create(&dir.path().join("c.db"), "t").unwrap();
        let m = Metrics::new();
        m.api_request("/api/v1/agents", "GET", 200);
        m.api_request("/api/v1/agents", "GET", 200);
        let text = m.render(&cat).unwrap();
        assert!(
            text.contains(r#"pulih_api_requests_total{method="GET",route="/api/v1/agents",status="200"} 2"#),
            "{text}"
        );
        assert!(text.contains("pulih_store_stored_bytes 0"), "{text}");
        assert!(text.contains(r#"pulih_store_blobs{kind="chunk"} 0"#), "{text}");
    }
}
