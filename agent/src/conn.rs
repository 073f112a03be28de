//! A blocking TLS connection to the controller, carrying protocol frames.

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use pulih_core::formats::PROTOCOL_VERSION;
use pulih_core::protocol::{self, ErrorCode, Message};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, StreamOwned};

/// Connection failures, classified for the retry loop.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    #[error("cannot reach the controller at {addr}: {source}")]
    Connect { addr: String, source: io::Error },
    #[error("connection to the controller failed: {0}")]
    Io(#[from] io::Error),
    #[error("the controller refused: {message} ({code:?})")]
    Refused { code: ErrorCode, message: String },
    #[error("protocol error: {0}")]
    Protocol(String),
}

impl ConnError {
    /// Whether trying again later may help.
    pub fn is_temporary(&self) -> bool {
        match self {
            ConnError::Connect { .. } | ConnError::Io(_) => true,
            ConnError::Refused { code, .. } => code.is_temporary(),
            ConnError::Protocol(_) => false,
        }
    }
}

/// Network timeouts: a dead link is noticed, a slow one is not cut.
const IO_TIMEOUT: Duration = Duration::from_secs(300);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// A framed TLS connection.
pub struct Conn {
    stream: StreamOwned<ClientConnection, TcpStream>,
    rbuf: Vec<u8>,
    wbuf: Vec<u8>,
    /// Bytes written to the socket (frames), for statistics.
    pub bytes_sent: u64,
    throttle: Option<Arc<crate::throttle::Throttle>>,
}

impl Conn {
    /// Connects and completes the TLS handshake.
    pub fn connect(address: &str, server_name: &str, cfg: Arc<ClientConfig>) -> Result<Self, ConnError> {
        let connect_err = |source| ConnError::Connect { addr: address.to_owned(), source };
        let addrs: Vec<_> = address.to_socket_addrs().map_err(connect_err)?.collect();
        let mut last = io::Error::new(io::ErrorKind::NotFound, "address resolved to nothing");
        let mut tcp = None;
        for a in addrs {
            match TcpStream::connect_timeout(&a, CONNECT_TIMEOUT) {
                Ok(s) => {
                    tcp = Some(s);
                    break;
                }
                Err(e) => last = e,
            }
        }
        let tcp = tcp.ok_or_else(|| connect_err(last))?;
        tcp.set_nodelay(true)?;
        tcp.set_read_timeout(Some(IO_TIMEOUT))?;
        tcp.set_write_timeout(Some(IO_TIMEOUT))?;
        let name = ServerName::try_from(server_name.to_owned())
            .map_err(|e| ConnError::Protocol(format!("invalid server name {server_name:?}: {e}")))?;
        let tls = ClientConnection::new(cfg, name).map_err(|e| ConnError::Protocol(e.to_string()))?;
        let mut stream = StreamOwned::new(tls, tcp);
        // Drive the handshake now so certificate problems surface here.
        while stream.conn.is_handshaking() {
            stream.conn.complete_io(&mut stream.sock).map_err(|e| {
                if e.kind() == io::ErrorKind::InvalidData {
                    ConnError::Protocol(format!("TLS handshake with {address} failed: {e}"))
                } else {
                    ConnError::Io(e)
                }
            })?;
        }
        Ok(Self {
            stream,
            rbuf: Vec::with_capacity(64 * 1024),
            wbuf: Vec::with_capacity(1024 * 1024),
            bytes_sent: 0,
            throttle: None,
        })
    }

    /// Limits what this connection sends (bytes per second, shared).
    pub fn set_throttle(&mut self, throttle: Option<Arc<crate::throttle::Throttle>>) {
        self.throttle = throttle;
    }

    /// Queues a message; sent at the next [`Conn::flush`] or when the
    /// buffer is large.
    pub fn send(&mut self, msg: &Message) -> Result<(), ConnError> {
        protocol::encode(msg, &mut self.wbuf);
        if self.wbuf.len() >= 512 * 1024 {
            self.flush()?;
        }
        Ok(())
    }

    /// Writes everything queued.
    pub fn flush(&mut self) -> Result<(), ConnError> {
        if !self.wbuf.is_empty() {
            if let Some(t) = &self.throttle {
                t.take(self.wbuf.len());
            }
            let r = self.stream.write_all(&self.wbuf).and_then(|_| self.stream.flush());
            self.bytes_sent += self.wbuf.len() as u64;
            self.wbuf.clear();
            if let Err(e) = r {
                // The controller may have said why it closed: prefer that.
                return Err(self.error_after_write_failure(e));
            }
        }
        Ok(())
    }

    fn error_after_write_failure(&mut self, e: io::Error) -> ConnError {
        match self.recv_inner() {
            Ok(Message::Error { code, message }) => ConnError::Refused { code, message },
            _ => ConnError::Io(e),
        }
    }

    /// Flushes, then reads the next message. An `Error` frame becomes
    /// [`ConnError::Refused`].
    pub fn recv(&mut self) -> Result<Message, ConnError> {
        self.flush()?;
        match self.recv_inner()? {
            Message::Error { code, message } => Err(ConnError::Refused { code, message }),
            m => Ok(m),
        }
    }

    fn recv_inner(&mut self) -> Result<Message, ConnError> {
        loop {
            match protocol::decode(&self.rbuf) {
                Ok(Some((msg, used))) => {
                    self.rbuf.drain(..used);
                    return Ok(msg);
                }
                Ok(None) => {}
                Err(e) => return Err(ConnError::Protocol(e.to_string())),
            }
            let mut tmp = [0u8; 16 * 1024];
            let n = self.stream.read(&mut tmp)?;
            if n == 0 {
                return Err(ConnError::Io(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the controller closed the connection",
                )));
            }
            self.rbuf.extend_from_slice(&tmp[..n]);
        }
    }

    /// Exchanges hellos; returns the controller's name and its clock.
    pub fn hello(&mut self) -> Result<(String, i64), ConnError> {
        use std::io;
        self.send(&Message::Hello {
            version: PROTOCOL_VERSION,
            software: format!("pulih-agent {}", env!("CARGO_PKG_VERSION")),
        })?;
        // In TLS 1.3 the server judges our certificate after the client
        // finished its handshake: a refusal arrives as an alert here.
        let answer = self.recv().map_err(|e| match e {
            ConnError::Io(io) if io.kind() == io::ErrorKind::InvalidData => ConnError::Protocol(format!(
                "the controller refused this agent's certificate ({io}); it may be revoked, expired or not issued by this controller: ask the DR coordinator"
            )),
            other => other,
        })?;
        match answer {
            Message::HelloOk { controller, server_time_ns, .. } => Ok((controller, server_time_ns)),
            other => Err(ConnError::Protocol(format!("expected hello-ok, got {}", other.name()))),
        }
    }

    /// Closes the TLS session cleanly.
    pub fn close(mut self) {
        let _ = self.flush();
        self.stream.conn.send_close_notify();
        let _ = self.stream.flush();
    }
}
