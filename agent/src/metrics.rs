//! Prometheus metrics of the agent, and the small HTTP server that serves
//! them at `/metrics`.
//!
//! The daemon calls the typed methods of [`AgentMetrics`] (one place per
//! event, so a log line and its count never disagree); [`serve`] answers
//! scrapes. Labels are bounded: `dataset` is a configured dataset name,
//! `outcome`, `kind` and `reason` come from short fixed lists chosen by the
//! daemon (never a path or an error message).
//!
//! The agent has no web framework: the endpoint is a minimal HTTP/1.1
//! server on one thread that reads a request head (at most
//! [`MAX_HEAD`] bytes within [`HEAD_TIMEOUT`]), answers and closes. One
//! connection at a time is enough for a scraper every few seconds, and a
//! slow or hostile client costs at most the timeout.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use prometheus::{
    Encoder, Gauge, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

/// Values of the `outcome` label of `pulih_agent_snapshots_total`.
pub mod outcome {
    /// Committed, every file read.
    pub const OK: &str = "ok";
    /// Committed, with files that could not be read (listed in the snapshot record).
    pub const PROBLEMS: &str = "problems";
    /// Nothing committed: the snapshot or its upload failed.
    pub const FAILED: &str = "failed";
    /// Not attempted: the pre-hook failed, or nothing had changed.
    pub const SKIPPED: &str = "skipped";
}

/// Longest request head the endpoint reads.
pub const MAX_HEAD: usize = 8 * 1024;
/// Time a client has to send its request head.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(5);

/// Buckets of the snapshot duration histogram: 100 ms to 4 h.
const DURATION_BUCKETS: [f64; 12] = [0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 14400.0];

/// Every series the agent exports, in one registry.
pub struct AgentMetrics {
    registry: Registry,
    /// `pulih_agent_last_success_timestamp_seconds{dataset}`: Unix time at
    /// which the last snapshot was committed (outcome ok or problems).
    last_success: GaugeVec,
    /// `pulih_agent_data_timestamp_seconds{dataset}`: start time of the
    /// newest committed snapshot, i.e. how old the data at the DRC is.
    data_timestamp: GaugeVec,
    /// `pulih_agent_replication_lag_seconds{dataset}`: now minus the data
    /// timestamp, computed at scrape time (so it grows while nothing commits).
    replication_lag: GaugeVec,
    /// `pulih_agent_rpo_target_seconds{dataset}`: the configured
    /// `rpo_target`; alert when the lag exceeds it.
    rpo_target: GaugeVec,
    /// `pulih_agent_bytes_read_total{dataset}`: bytes of file content read
    /// (changed files only; unchanged files are skipped via the cache).
    bytes_read: IntCounterVec,
    /// `pulih_agent_bytes_sent_total{dataset}`: bytes of chunk and tree
    /// data sent to the controller, after compression.
    bytes_sent: IntCounterVec,
    /// `pulih_agent_chunks_deduplicated_total{dataset}`: chunks the
    /// controller already had, so they were not sent.
    chunks_deduplicated: IntCounterVec,
    /// `pulih_agent_snapshot_duration_seconds{dataset}`: histogram of the
    /// wall time of snapshots that ran (not skipped ones).
    snapshot_duration: HistogramVec,
    /// `pulih_agent_snapshots_total{dataset,outcome}`: snapshots by
    /// [`outcome`] (ok, problems, failed, skipped).
    snapshots: IntCounterVec,
    /// `pulih_agent_errors_total{dataset,kind}`: errors by kind (for example
    /// connect, tls, upload, scan, hook); `dataset` is empty for errors of
    /// the agent as a whole.
    errors: IntCounterVec,
    /// `pulih_agent_watcher_fallbacks_total{dataset,reason}`: times the
    /// change watcher gave up and a full rescan ran instead (overflow,
    /// watch_lost, inotify_limit, ...).
    watcher_fallbacks: IntCounterVec,
    /// `pulih_agent_pending_changes{dataset}`: changes seen by the watcher
    /// and not yet in a committed snapshot.
    pending_changes: IntGaugeVec,
    /// `pulih_agent_next_run_timestamp_seconds{dataset}`: Unix time of the
    /// next scheduled snapshot.
    next_run: GaugeVec,
    /// `pulih_agent_certificate_expiry_timestamp_seconds`: Unix time at
    /// which the agent's certificate expires.
    cert_expiry: Gauge,
    /// `pulih_agent_up`: always 1 while the agent serves metrics.
    up: IntGauge,
    /// Data timestamps by dataset, for the lag at scrape time.
    data_times: Mutex<BTreeMap<String, f64>>,
}

fn now_secs() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

impl AgentMetrics {
    /// Creates and registers every series.
    pub fn new() -> Arc<Self> {
        let registry = Registry::new();
        fn reg<C: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: C) -> C {
            r.register(Box::new(c.clone())).expect("metric names are unique and valid");
            c
        }
        let gauge =
            |name: &str, help: &str| reg(&registry, GaugeVec::new(Opts::new(name, help), &["dataset"]).expect("valid"));
        let counter = |name: &str, help: &str, labels: &[&str]| {
            reg(&registry, IntCounterVec::new(Opts::new(name, help), labels).expect("valid"))
        };
        let m = Self {
            last_success: gauge(
                "pulih_agent_last_success_timestamp_seconds",
                "Unix time at which the last snapshot of the dataset was committed.",
            ),
            data_timestamp: gauge(
                "pulih_agent_data_timestamp_seconds",
                "Start time of the newest committed snapshot: how old the data at the DRC is.",
            ),
            replication_lag: gauge(
                "pulih_agent_replication_lag_seconds",
                "Seconds between now and the start of the newest committed snapshot.",
            ),
            rpo_target: gauge("pulih_agent_rpo_target_seconds", "Configured recovery point objective of the dataset."),
            bytes_read: counter("pulih_agent_bytes_read_total", "Bytes of file content read.", &["dataset"]),
            bytes_sent: counter(
                "pulih_agent_bytes_sent_total",
                "Bytes sent to the controller, after compression.",
                &["dataset"],
            ),
            chunks_deduplicated: counter(
                "pulih_agent_chunks_deduplicated_total",
                "Chunks the controller already had and that were not sent.",
                &["dataset"],
            ),
            snapshot_duration: reg(
                &registry,
                HistogramVec::new(
                    HistogramOpts::new("pulih_agent_snapshot_duration_seconds", "Wall time of snapshots that ran.")
                        .buckets(DURATION_BUCKETS.to_vec()),
                    &["dataset"],
                )
                .expect("valid"),
            ),
            snapshots: counter(
                "pulih_agent_snapshots_total",
                "Snapshots by outcome: ok, problems (committed with unreadable files), failed, skipped.",
                &["dataset", "outcome"],
            ),
            errors: counter("pulih_agent_errors_total", "Errors by kind.", &["dataset", "kind"]),
            watcher_fallbacks: counter(
                "pulih_agent_watcher_fallbacks_total",
                "Times the change watcher gave up and a full rescan ran instead.",
                &["dataset", "reason"],
            ),
            pending_changes: reg(
                &registry,
                IntGaugeVec::new(
                    Opts::new("pulih_agent_pending_changes", "Changes seen and not yet in a committed snapshot."),
                    &["dataset"],
                )
                .expect("valid"),
            ),
            next_run: gauge("pulih_agent_next_run_timestamp_seconds", "Unix time of the next scheduled snapshot."),
            cert_expiry: reg(
                &registry,
                Gauge::new(
                    "pulih_agent_certificate_expiry_timestamp_seconds",
                    "Unix time at which the agent's certificate expires.",
                )
                .expect("valid"),
            ),
            up: reg(&registry, IntGauge::new("pulih_agent_up", "1 while the agent runs.").expect("valid")),
            data_times: Mutex::new(BTreeMap::new()),
            registry,
        };
        m.up.set(1);
        Arc::new(m)
    }

    /// Records a finished snapshot attempt. `outcome` is one of [`outcome`];
    /// for ok and problems (committed) `data_time_ns` is the snapshot's
    /// start time in Unix nanoseconds and becomes the data timestamp.
    /// Skipped attempts do not enter the duration histogram.
    #[allow(clippy::too_many_arguments)]
    pub fn snapshot_finished(
        &self,
        dataset: &str,
        outcome: &str,
        duration: Duration,
        data_time_ns: i64,
        bytes_read: u64,
        bytes_sent: u64,
        chunks_deduplicated: u64,
    ) {
        self.snapshots.with_label_values(&[dataset, outcome]).inc();
        if outcome != outcome::SKIPPED {
            self.snapshot_duration.with_label_values(&[dataset]).observe(duration.as_secs_f64());
        }
        self.bytes_read.with_label_values(&[dataset]).inc_by(bytes_read);
        self.bytes_sent.with_label_values(&[dataset]).inc_by(bytes_sent);
        self.chunks_deduplicated.with_label_values(&[dataset]).inc_by(chunks_deduplicated);
        if outcome == outcome::OK || outcome == outcome::PROBLEMS {
            self.last_success.with_label_values(&[dataset]).set(now_secs());
            self.set_data_time(dataset, data_time_ns);
        }
    }

    /// Records a snapshot this process did not take (by hand, or before it
    /// started): its commit and data timestamps, not the counters.
    pub fn commit_seen(&self, dataset: &str, committed_at: i64, data_time_ns: i64) {
        self.last_success.with_label_values(&[dataset]).set(committed_at as f64);
        self.set_data_time(dataset, data_time_ns);
    }

    /// Sets the data timestamp without a snapshot.
    pub fn set_data_time(&self, dataset: &str, data_time_ns: i64) {
        let secs = data_time_ns as f64 / 1e9;
        self.data_timestamp.with_label_values(&[dataset]).set(secs);
        self.data_times.lock().unwrap_or_else(|e| e.into_inner()).insert(dataset.to_string(), secs);
    }

    /// Counts an error of `kind` (a short fixed word: connect, tls, upload, scan, hook, ...).
    pub fn error(&self, dataset: &str, kind: &str) {
        self.errors.with_label_values(&[dataset, kind]).inc();
    }

    /// Counts a fallback of the watcher to a full rescan.
    pub fn watcher_fallback(&self, dataset: &str, reason: &str) {
        self.watcher_fallbacks.with_label_values(&[dataset, reason]).inc();
    }

    pub fn set_pending(&self, dataset: &str, n: u64) {
        self.pending_changes.with_label_values(&[dataset]).set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    pub fn set_next_run(&self, dataset: &str, unix_secs: i64) {
        self.next_run.with_label_values(&[dataset]).set(unix_secs as f64);
    }

    pub fn set_rpo_target(&self, dataset: &str, secs: u64) {
        self.rpo_target.with_label_values(&[dataset]).set(secs as f64);
    }

    pub fn set_cert_expiry(&self, unix_secs: i64) {
        self.cert_expiry.set(unix_secs as f64);
    }

    /// Drops the per-dataset gauges of a dataset removed by a reload, so
    /// it stops showing (and alerting) with stale values. Counters stay
    /// until restart, as Prometheus expects of counters.
    pub fn forget_dataset(&self, dataset: &str) {
        for g in [&self.last_success, &self.data_timestamp, &self.replication_lag, &self.rpo_target, &self.next_run] {
            let _ = g.remove_label_values(&[dataset]);
        }
        let _ = self.pending_changes.remove_label_values(&[dataset]);
        self.data_times.lock().unwrap_or_else(|e| e.into_inner()).remove(dataset);
    }

    /// The text exposition format (version 0.0.4), with the lag computed now.
    pub fn render(&self) -> String {
        let now = now_secs();
        for (dataset, t) in self.data_times.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            self.replication_lag.with_label_values(&[dataset]).set((now - t).max(0.0));
        }
        let mut out = Vec::new();
        // Encoding into a Vec cannot fail for these metric types.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8_lossy(&out).into_owned()
    }
}

/// Serves `metrics` at `GET /metrics` on `listener` until `stop` is set
/// (checked at least every 200 ms).
pub fn serve(listener: TcpListener, metrics: Arc<AgentMetrics>, stop: Arc<AtomicBool>) -> JoinHandle<()> {
    serve_with(listener, metrics, stop, HEAD_TIMEOUT)
}

fn serve_with(
    listener: TcpListener,
    metrics: Arc<AgentMetrics>,
    stop: Arc<AtomicBool>,
    timeout: Duration,
) -> JoinHandle<()> {
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            // Non-blocking, so that a connection reset between poll and
            // accept cannot park the thread past a stop request.
            if let Err(e) = listener.set_nonblocking(true) {
                tracing::warn!(error = %e, "metrics listener");
            }
            while !stop.load(Ordering::Relaxed) {
                let ready = {
                    let mut fds =
                        [rustix::event::PollFd::from_borrowed_fd(listener.as_fd(), rustix::event::PollFlags::IN)];
                    let tick = rustix::event::Timespec { tv_sec: 0, tv_nsec: 200_000_000 };
                    rustix::event::poll(&mut fds, Some(&tick)).unwrap_or(0)
                };
                if ready == 0 {
                    continue;
                }
                match listener.accept() {
                    Ok((stream, peer)) => {
                        if let Err(e) = handle(stream, &metrics, timeout) {
                            tracing::debug!(%peer, error = %e, "metrics request");
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "accepting a metrics connection");
                        // EMFILE and friends: do not spin.
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            }
        })
        .expect("spawning the metrics thread")
}

/// Answers one request on `stream`.
fn handle(mut stream: TcpStream, metrics: &AgentMetrics, timeout: Duration) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_write_timeout(Some(timeout))?;
    let deadline = Instant::now() + timeout;
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    let end = loop {
        if let Some(i) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        if head.len() >= MAX_HEAD {
            return respond(
                &mut stream,
                "431 Request Header Fields Too Large",
                "text/plain",
                b"request head too large\n",
                true,
            );
        }
        let Some(left) = deadline.checked_duration_since(Instant::now()).filter(|d| !d.is_zero()) else {
            return respond(&mut stream, "408 Request Timeout", "text/plain", b"request timeout\n", true);
        };
        stream.set_read_timeout(Some(left))?;
        let want = (MAX_HEAD - head.len()).min(buf.len());
        match stream.read(&mut buf[..want]) {
            Ok(0) => return Ok(()),
            Ok(n) => head.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                return respond(&mut stream, "408 Request Timeout", "text/plain", b"request timeout\n", true);
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    };
    let request_line = std::str::from_utf8(&head[..end]).ok().and_then(|h| h.split("\r\n").next());
    let parts: Vec<&str> = request_line.map(|l| l.split(' ').collect()).unwrap_or_default();
    let [method, target, version] = parts[..] else {
        return respond(&mut stream, "400 Bad Request", "text/plain", b"bad request\n", true);
    };
    if !version.starts_with("HTTP/1.") || method.is_empty() || !target.starts_with('/') {
        return respond(&mut stream, "400 Bad Request", "text/plain", b"bad request\n", true);
    }
    let path = target.split('?').next().unwrap_or(target);
    let with_body = method != "HEAD";
    match (method, path) {
        ("GET" | "HEAD", "/metrics") => {
            let body = metrics.render();
            respond(&mut stream, "200 OK", "text/plain; version=0.0.4; charset=utf-8", body.as_bytes(), with_body)
        }
        ("GET" | "HEAD", _) => {
            respond(&mut stream, "404 Not Found", "text/plain", b"not found; try /metrics\n", with_body)
        }
        _ => respond(&mut stream, "405 Method Not Allowed", "text/plain", b"method not allowed\n", true),
    }
}

fn respond(
    stream: &mut TcpStream,
    status: &str,
    content_type: &str,
    body: &[u8],
    with_body: bool,
) -> std::io::Result<()> {
    let allow = if status.starts_with("405") { "Allow: GET, HEAD\r\n" } else { "" };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{allow}Connection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    if with_body {
        stream.write_all(body)?;
    }
    stream.flush()?;
    let _ = stream.shutdown(std::net::Shutdown::Write);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The metric names the daemon, the docs and the alert rules rely on.
    const DOCUMENTED: [&str; 15] = [
        "pulih_agent_last_success_timestamp_seconds",
        "pulih_agent_data_timestamp_seconds",
        "pulih_agent_replication_lag_seconds",
        "pulih_agent_rpo_target_seconds",
        "pulih_agent_bytes_read_total",
        "pulih_agent_bytes_sent_total",
        "pulih_agent_chunks_deduplicated_total",
        "pulih_agent_snapshot_duration_seconds",
        "pulih_agent_snapshots_total",
        "pulih_agent_errors_total",
        "pulih_agent_watcher_fallbacks_total",
        "pulih_agent_pending_changes",
        "pulih_agent_next_run_timestamp_seconds",
        "pulih_agent_certificate_expiry_timestamp_seconds",
        "pulih_agent_up",
    ];

    fn exercised() -> Arc<AgentMetrics> {
        let m = AgentMetrics::new();
        let data_ns = (now_secs() as i64 - 120) * 1_000_000_000;
        m.snapshot_finished("simpeg", outcome::OK, Duration::from_millis(1500), data_ns, 1000, 400, 7);
        m.snapshot_finished("simpeg", outcome::SKIPPED, Duration::ZERO, 0, 0, 0, 0);
        m.error("simpeg", "connect");
        m.watcher_fallback("simpeg", "overflow");
        m.set_pending("simpeg", 3);
        m.set_next_run("simpeg", 1_900_000_000);
        m.set_rpo_target("simpeg", 900);
        m.set_cert_expiry(1_900_000_001);
        m
    }

    /// The value of the series `line_start` (name and labels) in `text`.
    fn value(text: &str, line_start: &str) -> f64 {
        let line = text
            .lines()
            .find(|l| l.starts_with(line_start))
            .unwrap_or_else(|| panic!("{line_start} missing in\n{text}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    }

    #[test]
    fn render_has_every_documented_series_with_values() {
        let text = exercised().render();
        for name in DOCUMENTED {
            assert!(text.contains(&format!("# TYPE {name} ")), "{name} missing in\n{text}");
        }
        assert_eq!(value(&text, "pulih_agent_up "), 1.0);
        assert_eq!(value(&text, r#"pulih_agent_snapshots_total{dataset="simpeg",outcome="ok"}"#), 1.0);
        assert_eq!(value(&text, r#"pulih_agent_snapshots_total{dataset="simpeg",outcome="skipped"}"#), 1.0);
        assert_eq!(value(&text, r#"pulih_agent_snapshot_duration_seconds_count{dataset="simpeg"}"#), 1.0);
        assert_eq!(value(&text, r#"pulih_agent_bytes_read_total{dataset="simpeg"}"#), 1000.0);
        assert_eq!(value(&text, r#"pulih_agent_bytes_sent_total{dataset="simpeg"}"#), 400.0);
        assert_eq!(value(&text, r#"pulih_agent_chunks_deduplicated_total{dataset="simpeg"}"#), 7.0);
        assert_eq!(value(&text, r#"pulih_agent_pending_changes{dataset="simpeg"}"#), 3.0);
        assert_eq!(value(&text, r#"pulih_agent_rpo_target_seconds{dataset="simpeg"}"#), 900.0);
        assert_eq!(value(&text, "pulih_agent_certificate_expiry_timestamp_seconds "), 1_900_000_001.0);
        let lag = value(&text, r#"pulih_agent_replication_lag_seconds{dataset="simpeg"}"#);
        assert!((119.0..130.0).contains(&lag), "lag {lag}");
        let success = value(&text, r#"pulih_agent_last_success_timestamp_seconds{dataset="simpeg"}"#);
        assert!((now_secs() - success).abs() < 10.0);
    }

    #[test]
    fn lag_grows_between_scrapes_and_a_failure_keeps_the_data_time() {
        let m = AgentMetrics::new();
        let data_ns = (now_secs() as i64 - 10) * 1_000_000_000;
        m.snapshot_finished("d", outcome::OK, Duration::from_secs(1), data_ns, 0, 0, 0);
        m.snapshot_finished("d", outcome::FAILED, Duration::from_secs(1), i64::MAX, 0, 0, 0);
        let ts = value(&m.render(), r#"pulih_agent_data_timestamp_seconds{dataset="d"}"#);
        assert_eq!(ts, (data_ns / 1_000_000_000) as f64);
        let first = value(&m.render(), r#"pulih_agent_replication_lag_seconds{dataset="d"}"#);
        std::thread::sleep(Duration::from_millis(1100));
        let second = value(&m.render(), r#"pulih_agent_replication_lag_seconds{dataset="d"}"#);
        assert!(second >= first + 1.0, "{first} -> {second}");
        m.forget_dataset("d");
        assert!(!m.render().contains(r#"pulih_agent_replication_lag_seconds{dataset="d"}"#));
    }

    struct Server {
        addr: std::net::SocketAddr,
        stop: Arc<AtomicBool>,
        thread: Option<JoinHandle<()>>,
    }

    impl Server {
        fn start(timeout: Duration) -> Self {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            let stop = Arc::new(AtomicBool::new(false));
            let thread = Some(serve_with(listener, exercised(), stop.clone(), timeout));
            Self { addr, stop, thread }
        }

        /// Sends `request` and reads the whole answer.
        fn ask(&self, request: &[u8]) -> String {
            let mut s = TcpStream::connect(self.addr).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            s.write_all(request).unwrap();
            let mut out = Vec::new();
            s.read_to_end(&mut out).unwrap();
            String::from_utf8_lossy(&out).into_owned()
        }
    }

    impl Drop for Server {
        fn drop(&mut self) {
            self.stop.store(true, Ordering::Relaxed);
            self.thread.take().unwrap().join().unwrap();
        }
    }

    #[test]
    fn endpoint_serves_the_documented_series() {
        let server = Server::start(HEAD_TIMEOUT);
        let answer = server.ask(b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n");
        let (head, body) = answer.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert!(head.contains("Content-Type: text/plain; version=0.0.4"), "{head}");
        let len: usize = head.lines().find_map(|l| l.strip_prefix("Content-Length: ")).unwrap().parse().unwrap();
        assert_eq!(len, body.len());
        for name in DOCUMENTED {
            assert!(body.contains(&format!("# TYPE {name} ")), "{name} missing");
        }
        let head_only = server.ask(b"HEAD /metrics?x=1 HTTP/1.0\r\n\r\n");
        assert!(head_only.starts_with("HTTP/1.1 200 OK") && head_only.ends_with("\r\n\r\n"), "{head_only}");
    }

    #[test]
    fn endpoint_refuses_other_paths_methods_and_garbage() {
        let server = Server::start(HEAD_TIMEOUT);
        assert!(server.ask(b"GET / HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 404 "));
        assert!(server.ask(b"GET /metricsx HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 404 "));
        let post = server.ask(b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
        assert!(post.starts_with("HTTP/1.1 405 ") && post.contains("Allow: GET, HEAD"), "{post}");
        for garbage in [
            &b"\x00\x01\x02\xff\xfe\r\n\r\n"[..],
            b"GET\r\n\r\n",
            b"GET /metrics\r\n\r\n",
            b"GET /metrics SPDY/3\r\n\r\n",
            b"GET  /metrics HTTP/1.1\r\n\r\n",
            b"GET metrics HTTP/1.1\r\n\r\n",
            b"\r\n\r\n",
        ] {
            let a = server.ask(garbage);
            assert!(a.starts_with("HTTP/1.1 400 "), "{:?} -> {a}", String::from_utf8_lossy(garbage));
        }
        // Exactly the cap, so the server has read all of it when it answers
        // (unread data would turn its close into a reset).
        let mut huge = b"GET /metrics HTTP/1.1\r\n".to_vec();
        huge.resize(MAX_HEAD, b'a');
        assert!(server.ask(&huge).starts_with("HTTP/1.1 431 "));
        // A client that connects and leaves at once does not stop the server.
        drop(TcpStream::connect(server.addr).unwrap());
        assert!(server.ask(b"GET /metrics HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 200 "));
    }

    #[test]
    fn slow_client_times_out_and_the_next_one_is_served() {
        let server = Server::start(Duration::from_millis(300));
        let t0 = Instant::now();
        let mut slow = TcpStream::connect(server.addr).unwrap();
        slow.write_all(b"GET /metr").unwrap();
        slow.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut out = Vec::new();
        slow.read_to_end(&mut out).unwrap();
        let took = t0.elapsed();
        assert!(String::from_utf8_lossy(&out).starts_with("HTTP/1.1 408 "), "{}", String::from_utf8_lossy(&out));
        assert!(took >= Duration::from_millis(300) && took < Duration::from_secs(5), "{took:?}");
        assert!(server.ask(b"GET /metrics HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 200 "));
    }

    #[test]
    fn stop_ends_the_thread() {
        let server = Server::start(HEAD_TIMEOUT);
        let t0 = Instant::now();
        drop(server);
        assert!(t0.elapsed() < Duration::from_secs(2));
    }
}
