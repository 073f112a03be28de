//! The TLS server: accepts agents and enrollments, moves frames, and hands
//! the work to [`crate::session`] on the blocking pool.
//!
//! The ALPN in the ClientHello picks the configuration before the handshake:
//! `pulih-enroll/1` gets a server that asks for no client certificate and
//! accepts only an enrollment request; everything else must present a
//! certificate issued by our CA that the catalog lists as active, or the
//! handshake fails. Connections are capped by a semaphore, handshakes and
//! idle reads by timeouts, frames by [`MAX_FRAME_LEN`]. Shutdown is a
//! [`CancellationToken`]; connection tasks are tracked and awaited.
//!
//! An agent's upload is pipelined over three threads: the connection task
//! reads frames and hands the session's work (has-chunks, put-chunk,
//! put-tree, commit, report) through a queue bounded by [`QUEUE_BYTES`] to
//! a blocking verifier (decompress and rehash every blob), which passes it
//! on to a blocking worker (catalog, store, checkpoints, commit). So TLS
//! and frame decoding, verifying, and writing earlier blobs overlap: with
//! small blobs, verifying and staging on one thread kept it busy while the
//! agent's cores waited. Both handle jobs in order and the worker answers
//! in order; the first error (a refusal by the verifier included) ends the
//! session as before, and a commit is answered only after every earlier
//! blob is verified, durable and recorded ([`crate::session`]).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use pulih_core::formats::PROTOCOL_VERSION;
use pulih_core::protocol::{DatasetReport, ErrorCode, Message, ALPN_ENROLL};
use pulih_core::tls::{self, ClientCheck, Fingerprint};
use pulih_core::{now_ns, AgentName, ChunkId, TreeId};
use rustls::pki_types::CertificateDer;
use rustls::server::Acceptor;
use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_rustls::LazyConfigAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn, Instrument};

use crate::catalog::{Catalog, NewAudit, TokenCheck};
use crate::framed::Framed;
use crate::pki::{Ca, AGENT_DAYS};
use crate::session::{Backend, SessionError, UploadSession, VerifiedChunk, VerifiedTree, Verifier};
use crate::standby::JobSession;

/// Most answer bytes queued for an agent that does not read them.
const MAX_PENDING_OUT: usize = 16 * 1024 * 1024;

/// Most frame bytes received and waiting for (or in) a session's worker;
/// a larger frame (up to `MAX_FRAME_LEN`) waits until the queue is empty.
/// Beyond it the connection stops reading and TCP slows the agent down, so
/// a session holds at most this much plus one frame (and the worker's one
/// blob being decoded). 8 MiB is half the agent's 16 MiB upload window, so
/// the agent still has answers coming while the queue is full.
pub const QUEUE_BYTES: usize = 8 * 1024 * 1024;

/// Work for a session's worker, in the order the frames arrived.
enum Job {
    Missing(Vec<ChunkId>),
    Chunk(ChunkId, u32, Vec<u8>),
    Tree(TreeId, u32, Vec<u8>),
    Commit(Vec<u8>),
    Report(Vec<DatasetReport>),
}

/// A job after verification on receipt, on its way to the staging worker.
enum Checked {
    Missing(Vec<ChunkId>),
    Chunk(VerifiedChunk),
    Tree(VerifiedTree),
    Commit(Vec<u8>),
    Report(Vec<DatasetReport>),
    /// Verification failed: the worker answers with this error in order.
    Refused(SessionError),
}

/// The worker's side of a session: answers (or the session's error) go back
/// in order; a job's permit returns its bytes to the queue when done.
type Reply = Result<Message, SessionError>;

/// Verifies a session's blobs in order ahead of its staging worker and
/// passes every job on with its permit; stops after the first refusal,
/// when `stop` is set or when either queue closes.
fn run_verifier(
    mut jobs: mpsc::UnboundedReceiver<(Job, OwnedSemaphorePermit)>,
    checked: std::sync::mpsc::Sender<(Checked, OwnedSemaphorePermit)>,
    stop: Arc<AtomicBool>,
) {
    let mut verifier = Verifier::default();
    while let Some((job, permit)) = jobs.blocking_recv() {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let job = match job {
            Job::Missing(ids) => Checked::Missing(ids),
            Job::Chunk(id, raw_len, data) => {
                verifier.chunk(id, raw_len, data).map_or_else(Checked::Refused, Checked::Chunk)
            }
            Job::Tree(id, raw_len, data) => {
                verifier.tree(id, raw_len, data).map_or_else(Checked::Refused, Checked::Tree)
            }
            Job::Commit(record) => Checked::Commit(record),
            Job::Report(datasets) => Checked::Report(datasets),
        };
        let refused = matches!(job, Checked::Refused(_));
        if checked.send((job, permit)).is_err() || refused {
            break;
        }
    }
}

/// Runs a session's verified jobs in order until the queue closes, `stop`
/// is set or a job fails (its error is the last reply).
fn run_worker(
    mut session: UploadSession,
    jobs: std::sync::mpsc::Receiver<(Checked, OwnedSemaphorePermit)>,
    replies: mpsc::UnboundedSender<Reply>,
    stop: Arc<AtomicBool>,
) {
    while let Ok((job, permit)) = jobs.recv() {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let res = match job {
            Checked::Missing(ids) => session.missing(&ids).map(|ids| Some(Message::Missing { ids })),
            Checked::Chunk(chunk) => session.put_chunk(chunk).map(|()| None),
            Checked::Tree(tree) => session.put_tree(tree).map(|()| None),
            Checked::Commit(record) => session
                .commit(&record)
                .map(|(id, bytes_new, blobs_new)| Some(Message::Committed { id, bytes_new, blobs_new })),
            Checked::Report(datasets) => session.report(&datasets).map(|repair| Some(Message::ReportOk { repair })),
            Checked::Refused(e) => Err(e),
        };
        let failed = res.is_err();
        // The answer is in the channel before the permit returns, so once
        // every permit is back, every answer can be read.
        match res {
            Ok(Some(m)) => {
                let _ = replies.send(Ok(m));
            }
            Ok(None) => {}
            Err(e) => {
                let _ = replies.send(Err(e));
            }
        }
        drop(permit);
        if failed {
            break;
        }
    }
    // Dropping the session waits for its checkpoint in flight.
}

/// The connection task's end of a session's worker.
struct Pipeline {
    jobs: mpsc::UnboundedSender<(Job, OwnedSemaphorePermit)>,
    replies: mpsc::UnboundedReceiver<Reply>,
    queue: Arc<Semaphore>,
}

impl Pipeline {
    /// Whether the worker has queued or running jobs.
    fn busy(&self) -> bool {
        self.queue.available_permits() < QUEUE_BYTES
    }
}

/// Limits of the server.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_connections: usize,
    pub handshake_timeout: Duration,
    pub idle_timeout: Duration,
}

/// Everything a connection needs.
pub struct Server {
    pub backend: Arc<Backend>,
    pub ca: Ca,
    pub name: String,
    pub limits: Limits,
    /// Where issued certificates are recorded for catalog rebuilds
    /// (`pki/issued/`); `None` records nothing (tests).
    pub pki: Option<crate::pki::PkiPaths>,
    agent_cfg: Arc<ServerConfig>,
    enroll_cfg: Arc<ServerConfig>,
    fatal: Mutex<Option<String>>,
}

/// Asks the catalog whether a certificate belongs to an active agent.
#[derive(Debug)]
struct CatalogCheck(Arc<Backend>);

impl ClientCheck for CatalogCheck {
    fn check(&self, end_entity: &CertificateDer<'_>) -> Result<(), String> {
        let cat = self.0.catalog.lock().unwrap_or_else(|e| e.into_inner());
        match cat.agent_for_certificate(&Fingerprint::of(end_entity)) {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(why)) => Err(why),
            Err(e) => Err(format!("catalog unavailable: {e}")),
        }
    }
}

impl Server {
    /// Builds the TLS configurations.
    pub fn new(
        backend: Arc<Backend>,
        ca: Ca,
        chain: Vec<CertificateDer<'static>>,
        key: rustls::pki_types::PrivateKeyDer<'static>,
        name: String,
        limits: Limits,
    ) -> Result<Self> {
        let check: Arc<dyn ClientCheck> = Arc::new(CatalogCheck(backend.clone()));
        let agent_cfg = tls::server_config(ca.cert_der.clone(), chain.clone(), key.clone_key(), check)?;
        let enroll_cfg = tls::enroll_server_config(chain, key)?;
        Ok(Self {
            backend,
            ca,
            name,
            limits,
            pki: None,
            agent_cfg: Arc::new(agent_cfg),
            enroll_cfg: Arc::new(enroll_cfg),
            fatal: Mutex::new(None),
        })
    }

    /// Accepts connections until `shutdown` is cancelled or a fatal store
    /// error occurs; then waits for connections to finish (bounded).
    pub async fn run(self: Arc<Self>, listener: TcpListener, shutdown: CancellationToken) -> Result<()> {
        info!(addr = %listener.local_addr()?, "listening");
        let token = shutdown.clone();
        crate::listen::accept_loop(listener, self.limits.max_connections, shutdown, DRAIN, "agents", |stream, peer| {
            let (this, token) = (self.clone(), token.clone());
            async move {
                if let Err(e) = this.clone().connection(stream, token.clone()).await {
                    debug!(error = %format!("{e:#}"), "connection closed with error");
                }
                if let Some(why) = this.fatal.lock().unwrap_or_else(|e| e.into_inner()).clone() {
                    error!(reason = %why, "fatal store error, stopping");
                    token.cancel();
                }
            }
            .instrument(tracing::info_span!("conn", %peer))
        })
        .await;
        if let Some(why) = self.fatal.lock().unwrap_or_else(|e| e.into_inner()).clone() {
            anyhow::bail!("stopped after a fatal store error: {why}");
        }
        info!("stopped");
        Ok(())
    }

    async fn connection(self: Arc<Self>, stream: TcpStream, shutdown: CancellationToken) -> Result<()> {
        let hs = self.limits.handshake_timeout;
        let start = tokio::time::timeout(hs, LazyConfigAcceptor::new(Acceptor::default(), stream))
            .await
            .context("TLS handshake timed out")?
            .context("reading TLS ClientHello")?;
        let enroll = start.client_hello().alpn().is_some_and(|mut a| a.any(|p| p == ALPN_ENROLL));
        let cfg = if enroll { self.enroll_cfg.clone() } else { self.agent_cfg.clone() };
        let tls = match tokio::time::timeout(hs, start.into_stream(cfg)).await {
            Err(_) => anyhow::bail!("TLS handshake timed out"),
            Ok(Err(e)) => {
                warn!(error = %e, "TLS handshake refused");
                return Err(e.into());
            }
            Ok(Ok(t)) => t,
        };
        if enroll {
            return self.enrollment(tls).await;
        }
        let cert =
            tls.get_ref().1.peer_certificates().and_then(|c| c.first()).cloned().context("no client certificate")?;
        let fp = Fingerprint::of(&cert);
        let (agent_id, agent) = {
            let cat = self.backend.catalog.lock().unwrap_or_else(|e| e.into_inner());
            let found = cat.agent_for_certificate(&fp)?;
            let found = found.map_err(anyhow::Error::msg)?;
            cat.touch_agent(found.0)?;
            found
        };
        self.agent_session(tls, agent_id, agent.clone(), shutdown)
            .instrument(tracing::info_span!("agent", name = %agent))
            .await
    }

    async fn enrollment<S: AsyncRead + AsyncWrite + Unpin>(&self, stream: S) -> Result<()> {
        let mut conn = Framed::new(stream);
        let msg = tokio::time::timeout(self.limits.handshake_timeout, conn.next())
            .await
            .context("enrollment request timed out")??;
        let reply = match msg {
            Some(Message::EnrollRequest { token, name, csr_der }) => match self.enroll(&token, &name, &csr_der).await {
                Ok(m) => m,
                Err(e) => {
                    warn!(agent = %name, reason = %e.message, "enrollment refused");
                    Message::Error { code: e.code, message: e.message }
                }
            },
            Some(other) => Message::Error {
                code: ErrorCode::Protocol,
                message: format!("expected an enrollment request, got {}", other.name()),
            },
            None => return Ok(()),
        };
        conn.queue(&reply);
        let _ = tokio::time::timeout(self.limits.handshake_timeout, conn.finish()).await;
        Ok(())
    }

    async fn enroll(&self, token: &str, name: &str, csr_der: &[u8]) -> Result<Message, SessionError> {
        let refuse = |why: String| SessionError::new(ErrorCode::BadToken, why);
        let agent = AgentName::new(name).map_err(|e| SessionError::new(ErrorCode::Protocol, e.to_string()))?;
        let hash = token_hash(token);
        let verdict = self.backend.catalog.lock().unwrap_or_else(|e| e.into_inner()).check_token(&hash, name)?;
        let bad = match verdict {
            TokenCheck::Valid => None,
            TokenCheck::Unknown => Some("unknown enrollment token".to_string()),
            TokenCheck::Used => Some("this enrollment token was already used; ask for a new one".into()),
            TokenCheck::Expired => Some("this enrollment token has expired; ask for a new one".into()),
            TokenCheck::WrongName { expected } => {
                Some(format!("this enrollment token is for agent {expected}, not {name}"))
            }
        };
        if let Some(why) = bad {
            // Slow down guessing (F38); per-source rate limits come with the API.
            tokio::time::sleep(Duration::from_millis(500)).await;
            return Err(refuse(why));
        }
        let cert = self
            .ca
            .sign_agent(csr_der, &agent, AGENT_DAYS)
            .map_err(|e| SessionError::new(ErrorCode::Protocol, format!("{e:#}")))?;
        let info = tls::cert_info(&cert).map_err(|e| SessionError::new(ErrorCode::Protocol, e.to_string()))?;
        if let Some(pki) = &self.pki {
            // Before the catalog: every certificate it lists has a file a
            // rebuilt catalog can restore it from.
            crate::pki::record_issued(pki, &cert)
                .map_err(|e| SessionError::new(ErrorCode::Storage, format!("recording the certificate: {e:#}")))?;
        }
        let fingerprint = Fingerprint::of(&cert);
        let entry = NewAudit::new(
            &format!("agent:{agent}"),
            "enroll",
            agent.as_str(),
            serde_json::json!({"serial": info.serial, "fingerprint": fingerprint.to_string(), "not_after": info.not_after}),
        );
        self.backend
            .catalog
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .audited(&entry, |c| c.complete_enrollment(&hash, &agent, &fingerprint, &info))
            .map_err(|e| refuse(e.to_string()))?;
        info!(agent = %agent, serial = %info.serial, "agent enrolled");
        Ok(Message::Enrolled { cert_der: cert.to_vec(), ca_der: self.ca.cert_der.to_vec() })
    }

    async fn agent_session<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
        &self,
        stream: S,
        agent_id: i64,
        agent: String,
        shutdown: CancellationToken,
    ) -> Result<()> {
        let mut conn = Framed::new(stream);
        let session = UploadSession::new(self.backend.clone(), agent_id, agent.clone());
        let jobs = Arc::new(Mutex::new(JobSession::new(self.backend.clone(), agent.clone())));
        let (job_tx, job_rx) = mpsc::unbounded_channel();
        let (checked_tx, checked_rx) = std::sync::mpsc::channel();
        let (reply_tx, reply_rx) = mpsc::unbounded_channel();
        let stop = Arc::new(AtomicBool::new(false));
        let verifier = {
            let stop = stop.clone();
            tokio::task::spawn_blocking(move || run_verifier(job_rx, checked_tx, stop))
        };
        let worker = {
            let stop = stop.clone();
            tokio::task::spawn_blocking(move || run_worker(session, checked_rx, reply_tx, stop))
        };
        let mut pipe = Pipeline { jobs: job_tx, replies: reply_rx, queue: Arc::new(Semaphore::new(QUEUE_BYTES)) };
        let result = self.session_loop(&mut conn, &mut pipe, jobs, shutdown, &agent, agent_id).await;
        // Whatever is still queued is abandoned (the agent resends it); the
        // job being handled and a checkpoint in flight finish first, so the
        // catalog is never left to a thread nobody waits for.
        stop.store(true, Ordering::Relaxed);
        drop(pipe);
        let _ = verifier.await;
        let _ = worker.await;
        if let Err(e) = &result {
            let (code, message) = match e.downcast_ref::<SessionError>() {
                Some(se) => (se.code, se.message.clone()),
                None => (ErrorCode::Protocol, format!("{e:#}")),
            };
            warn!(reason = %message, "session failed");
            conn.queue(&Message::Error { code, message });
            let _ = tokio::time::timeout(Duration::from_secs(5), conn.finish()).await;
            // Let the agent read the error before the connection is reset.
            let _ = tokio::time::timeout(Duration::from_secs(2), conn.drain(64 * 1024 * 1024)).await;
            return result;
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), conn.finish()).await;
        result
    }

    /// Handles one answer of the worker: queued for the agent, or the
    /// session's error (a fatal store error is remembered so the server
    /// stops, F4).
    fn on_reply<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        conn: &mut Framed<S>,
        reply: Option<Reply>,
    ) -> Result<(), SessionError> {
        match reply {
            Some(Ok(msg)) => {
                conn.queue(&msg);
                // An agent that never reads its answers cannot make us buffer
                // without bound.
                if conn.pending_out() > MAX_PENDING_OUT {
                    return Err(SessionError::new(ErrorCode::Protocol, "agent does not read its answers"));
                }
                Ok(())
            }
            Some(Err(e)) => {
                if e.fatal {
                    *self.fatal.lock().unwrap_or_else(|e| e.into_inner()) = Some(e.message.clone());
                }
                Err(e)
            }
            None => Err(SessionError::new(ErrorCode::Storage, "internal error: the session's worker stopped")),
        }
    }

    /// Queues a job for the worker once the queue has room for `bytes`;
    /// answers arriving meanwhile are sent as far as the socket takes them
    /// without waiting (the agent may be waiting for one of them).
    async fn submit<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        conn: &mut Framed<S>,
        pipe: &mut Pipeline,
        job: Job,
        bytes: usize,
    ) -> Result<(), SessionError> {
        let n = bytes.clamp(1, QUEUE_BYTES) as u32;
        let permit = loop {
            tokio::select! {
                biased;
                r = pipe.replies.recv() => {
                    self.on_reply(conn, r)?;
                    let _ = conn.write_some().await;
                }
                p = pipe.queue.clone().acquire_many_owned(n) => {
                    break p.map_err(|_| SessionError::new(ErrorCode::Storage, "internal error: queue closed"))?;
                }
            }
        };
        pipe.jobs
            .send((job, permit))
            .map_err(|_| SessionError::new(ErrorCode::Storage, "internal error: the session's worker stopped"))
    }

    /// Waits until the worker has handled every queued job and its answers
    /// are queued for the agent: frames handled outside the worker are
    /// answered after the ones before them.
    async fn settle<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        conn: &mut Framed<S>,
        pipe: &mut Pipeline,
    ) -> Result<(), SessionError> {
        loop {
            tokio::select! {
                biased;
                r = pipe.replies.recv() => self.on_reply(conn, r)?,
                p = pipe.queue.acquire_many(QUEUE_BYTES as u32) => {
                    drop(p);
                    break;
                }
            }
        }
        while let Ok(r) = pipe.replies.try_recv() {
            self.on_reply(conn, Some(r))?;
        }
        Ok(())
    }

    async fn session_loop<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        conn: &mut Framed<S>,
        pipe: &mut Pipeline,
        jobs: Arc<Mutex<JobSession>>,
        shutdown: CancellationToken,
        agent: &str,
        agent_id: i64,
    ) -> Result<()> {
        let mut greeted = false;
        loop {
            let msg = tokio::select! {
                biased;
                r = pipe.replies.recv() => {
                    self.on_reply(conn, r)?;
                    continue;
                }
                _ = shutdown.cancelled() => {
                    conn.queue(&Message::Error { code: ErrorCode::Unavailable, message: "controller is shutting down".into() });
                    return Ok(());
                }
                r = tokio::time::timeout(self.limits.idle_timeout, conn.next()) => match r {
                    Ok(r) => r?,
                    // The agent may be waiting for our answer.
                    Err(_) if pipe.busy() => continue,
                    Err(e) => return Err(anyhow::Error::new(e).context("agent idle too long")),
                },
            };
            // The agent hung up: what is still queued is abandoned, as an
            // upload cut before its commit always was (F11).
            let Some(msg) = msg else { return Ok(()) };
            let reply = match msg {
                Message::Hello { version, software } => {
                    if version != PROTOCOL_VERSION {
                        return Err(SessionError::new(
                            ErrorCode::Version,
                            format!("protocol version {version} is not supported (controller speaks {PROTOCOL_VERSION}); upgrade the older side"),
                        )
                        .into());
                    }
                    debug!(%software, "hello");
                    greeted = true;
                    Some(Message::HelloOk {
                        version: PROTOCOL_VERSION,
                        controller: self.name.clone(),
                        agent: agent.to_owned(),
                        server_time_ns: now_ns(),
                    })
                }
                _ if !greeted => {
                    return Err(SessionError::new(ErrorCode::Protocol, "expected hello first").into());
                }
                Message::HasChunks { ids } => {
                    let n = ids.len() * 32;
                    self.submit(conn, pipe, Job::Missing(ids), n).await?;
                    None
                }
                Message::PutChunk { id, raw_len, data } => {
                    let n = data.len();
                    self.submit(conn, pipe, Job::Chunk(id, raw_len, data), n).await?;
                    None
                }
                Message::PutTree { id, raw_len, data } => {
                    let n = data.len();
                    self.submit(conn, pipe, Job::Tree(id, raw_len, data), n).await?;
                    None
                }
                Message::Commit { record } => {
                    let n = record.len();
                    self.submit(conn, pipe, Job::Commit(record), n).await?;
                    None
                }
                Message::Report { datasets } => {
                    self.submit(conn, pipe, Job::Report(datasets), 1).await?;
                    None
                }
                // Frames handled here are answered after everything before them.
                Message::Renew { csr_der } => {
                    self.settle(conn, pipe).await?;
                    Some(self.renew(agent_id, agent, csr_der).await?)
                }
                Message::JobPoll => {
                    self.settle(conn, pipe).await?;
                    Some(job_work(&jobs, |j| j.poll()).await?)
                }
                Message::FetchTree { id } => {
                    self.settle(conn, pipe).await?;
                    Some(job_work(&jobs, move |j| j.fetch_tree(id)).await?)
                }
                Message::FetchChunks { ids } => {
                    self.settle(conn, pipe).await?;
                    for m in job_work(&jobs, move |j| j.fetch_chunks(&ids)).await? {
                        conn.queue(&m);
                        // Large answers go out in parts, so the buffer stays bounded.
                        if conn.pending_out() > MAX_PENDING_OUT / 4 {
                            conn.write_out().await.context("sending chunks to a standby agent")?;
                        }
                    }
                    None
                }
                Message::JobDone { id, ok, message, detail } => {
                    self.settle(conn, pipe).await?;
                    Some(job_work(&jobs, move |j| j.done(id, ok, &message, &detail)).await?)
                }
                other => {
                    return Err(SessionError::new(
                        ErrorCode::Protocol,
                        format!("unexpected {} frame from an agent", other.name()),
                    )
                    .into());
                }
            };
            if let Some(reply) = reply {
                conn.queue(&reply);
                // An agent that never reads its answers cannot make us buffer
                // without bound.
                if conn.pending_out() > MAX_PENDING_OUT {
                    return Err(SessionError::new(ErrorCode::Protocol, "agent does not read its answers").into());
                }
            }
        }
    }

    /// Signs a new certificate for the session's agent. The name comes from
    /// the authenticated session, never from the request.
    async fn renew(&self, agent_id: i64, agent: &str, csr_der: Vec<u8>) -> Result<Message, SessionError> {
        let name = AgentName::new(agent).map_err(|e| SessionError::new(ErrorCode::Protocol, e.to_string()))?;
        let since = crate::catalog::now_secs() - 86_400;
        let recent = self
            .backend
            .catalog
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .certificates_issued_since(agent_id, since)?;
        // A compromised or looping agent cannot mint certificates without
        // bound; a real renewal happens once a year.
        if recent >= MAX_CERTS_PER_DAY {
            return Err(SessionError::new(
                ErrorCode::Forbidden,
                format!("agent {agent} got {recent} certificates in the last 24 hours; renewal refused"),
            ));
        }
        let cert = self
            .ca
            .sign_agent(&csr_der, &name, AGENT_DAYS)
            .map_err(|e| SessionError::new(ErrorCode::Protocol, format!("{e:#}")))?;
        let info = tls::cert_info(&cert).map_err(|e| SessionError::new(ErrorCode::Protocol, e.to_string()))?;
        if let Some(pki) = &self.pki {
            // As at enrollment: a rebuilt catalog restores it from this file.
            crate::pki::record_issued(pki, &cert)
                .map_err(|e| SessionError::new(ErrorCode::Storage, format!("recording the certificate: {e:#}")))?;
        }
        self.backend.catalog.lock().unwrap_or_else(|e| e.into_inner()).add_certificate(
            agent_id,
            &Fingerprint::of(&cert),
            &info,
        )?;
        info!(agent = %name, serial = %info.serial, not_after = info.not_after, "agent certificate renewed");
        Ok(Message::Renewed { cert_der: cert.to_vec() })
    }
}

/// Runs standby-job work on the blocking pool (catalog and store reads).
async fn job_work<T: Send + 'static>(
    jobs: &Arc<Mutex<JobSession>>,
    f: impl FnOnce(&mut JobSession) -> Result<T, SessionError> + Send + 'static,
) -> Result<T, SessionError> {
    let j = jobs.clone();
    tokio::task::spawn_blocking(move || f(&mut j.lock().unwrap_or_else(|e| e.into_inner())))
        .await
        .map_err(|e| SessionError::new(ErrorCode::Storage, format!("internal error: {e}")))?
}

/// How long open connections may finish after shutdown.
const DRAIN: Duration = Duration::from_secs(10);

/// Most certificates (enrollment included) issued to one agent in 24 hours.
const MAX_CERTS_PER_DAY: u64 = 3;

/// blake3 of an enrollment token, as stored in the catalog.
pub fn token_hash(token: &str) -> String {
    blake3::hash(token.trim().as_bytes()).to_hex().to_string()
}

/// Opens the backend of a data directory.
pub fn open_backend(store: crate::store::Store, catalog: Catalog, checkpoint_bytes: u64) -> Arc<Backend> {
    Arc::new(Backend { store, catalog: Mutex::new(catalog), checkpoint_bytes, witnessed: Mutex::new((0, 0)) })
}

/// Binds the listen address with a clear error.
pub async fn bind(addr: &str) -> Result<TcpListener> {
    let sa: SocketAddr = addr.parse().with_context(|| format!("invalid listen address {addr:?} (expected IP:PORT)"))?;
    TcpListener::bind(sa).await.with_context(|| format!("cannot listen on {sa}"))
}
