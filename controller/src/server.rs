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

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use pulih_core::formats::PROTOCOL_VERSION;
use pulih_core::protocol::{ErrorCode, Message, ALPN_ENROLL};
use pulih_core::tls::{self, ClientCheck, Fingerprint};
use pulih_core::{now_ns, AgentName};
use rustls::pki_types::CertificateDer;
use rustls::server::Acceptor;
use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::LazyConfigAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn, Instrument};

use crate::catalog::{Catalog, NewAudit, TokenCheck};
use crate::framed::Framed;
use crate::pki::{Ca, AGENT_DAYS};
use crate::session::{Backend, SessionError, UploadSession};
use crate::standby::JobSession;

/// Most answer bytes queued for an agent that does not read them.
const MAX_PENDING_OUT: usize = 16 * 1024 * 1024;

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
        let session = Arc::new(Mutex::new(UploadSession::new(self.backend.clone(), agent_id, agent.clone())));
        let jobs = Arc::new(Mutex::new(JobSession::new(self.backend.clone(), agent.clone())));
        let result = self.session_loop(&mut conn, session, jobs, shutdown, &agent).await;
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

    async fn session_loop<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        conn: &mut Framed<S>,
        session: Arc<Mutex<UploadSession>>,
        jobs: Arc<Mutex<JobSession>>,
        shutdown: CancellationToken,
        agent: &str,
    ) -> Result<()> {
        let mut greeted = false;
        loop {
            let msg = tokio::select! {
                _ = shutdown.cancelled() => {
                    conn.queue(&Message::Error { code: ErrorCode::Unavailable, message: "controller is shutting down".into() });
                    return Ok(());
                }
                r = tokio::time::timeout(self.limits.idle_timeout, conn.next()) => r.context("agent idle too long")??,
            };
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
                    let missing = self.blocking(&session, move |s| s.missing(&ids)).await?;
                    Some(Message::Missing { ids: missing })
                }
                Message::PutChunk { id, raw_len, data } => {
                    self.blocking(&session, move |s| s.put_chunk(id, raw_len, data)).await?;
                    None
                }
                Message::PutTree { id, raw_len, data } => {
                    self.blocking(&session, move |s| s.put_tree(id, raw_len, data)).await?;
                    None
                }
                Message::Commit { record } => {
                    let (id, bytes_new, blobs_new) = self.blocking(&session, move |s| s.commit(&record)).await?;
                    Some(Message::Committed { id, bytes_new, blobs_new })
                }
                Message::Report { datasets } => {
                    let repair = self.blocking(&session, move |s| s.report(&datasets)).await?;
                    Some(Message::ReportOk { repair })
                }
                Message::Renew { csr_der } => Some(self.renew(&session, agent, csr_der).await?),
                Message::JobPoll => Some(job_work(&jobs, |j| j.poll()).await?),
                Message::FetchTree { id } => Some(job_work(&jobs, move |j| j.fetch_tree(id)).await?),
                Message::FetchChunks { ids } => {
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
    async fn renew(
        &self,
        session: &Arc<Mutex<UploadSession>>,
        agent: &str,
        csr_der: Vec<u8>,
    ) -> Result<Message, SessionError> {
        let name = AgentName::new(agent).map_err(|e| SessionError::new(ErrorCode::Protocol, e.to_string()))?;
        let agent_id = session.lock().unwrap_or_else(|e| e.into_inner()).agent_id;
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

    /// Runs session work on the blocking pool; a fatal store error is
    /// remembered so the server stops (F4).
    async fn blocking<T: Send + 'static>(
        &self,
        session: &Arc<Mutex<UploadSession>>,
        f: impl FnOnce(&mut UploadSession) -> Result<T, SessionError> + Send + 'static,
    ) -> Result<T, SessionError> {
        let s = session.clone();
        let res = tokio::task::spawn_blocking(move || {
            let mut guard = s.lock().unwrap_or_else(|e| e.into_inner());
            f(&mut guard)
        })
        .await
        .map_err(|e| SessionError::new(ErrorCode::Storage, format!("internal error: {e}")))?;
        if let Err(e) = &res {
            if e.fatal {
                *self.fatal.lock().unwrap_or_else(|e| e.into_inner()) = Some(e.message.clone());
            }
        }
        res
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
    Arc::new(Backend { store, catalog: Mutex::new(catalog), checkpoint_bytes })
}

/// Binds the listen address with a clear error.
pub async fn bind(addr: &str) -> Result<TcpListener> {
    let sa: SocketAddr = addr.parse().with_context(|| format!("invalid listen address {addr:?} (expected IP:PORT)"))?;
    TcpListener::bind(sa).await.with_context(|| format!("cannot listen on {sa}"))
}
