//! systemd service notifications (`Type=notify`): readiness, reload,
//! stop, a status line for `systemctl status`, and watchdog pings.
//!
//! The protocol is one datagram of `KEY=VALUE` lines to the socket named
//! by `$NOTIFY_SOCKET` (a path, or `@name` for an abstract socket); written
//! here with std's `UnixDatagram` rather than a crate, since it is a dozen
//! lines. Outside systemd (`NOTIFY_SOCKET` unset) every call does nothing,
//! so the daemon calls them unconditionally. A failed send is logged and
//! otherwise ignored: a notification must never stop replication.
//!
//! Order the daemon follows: [`ready`] once the configuration is loaded
//! and the metrics endpoint bound; [`reloading`] on SIGHUP, then [`ready`]
//! again when the new configuration is in force (or rejected); [`status`]
//! after each snapshot; [`watchdog`] at least every [`watchdog_interval`]
//! from the main loop (not from a helper thread, so a hung loop is caught);
//! [`stopping`] on SIGTERM.

use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

/// Sends `state` (newline-separated `KEY=VALUE` assignments) to the
/// notification socket `socket`: a file system path, or `@name` for an
/// abstract socket.
pub fn notify_to(socket: &str, state: &str) -> io::Result<()> {
    let sock = UnixDatagram::unbound()?;
    let addr = match socket.strip_prefix('@') {
        Some(name) => SocketAddr::from_abstract_name(name.as_bytes())?,
        None => SocketAddr::from_pathname(socket)?,
    };
    let sent = sock.send_to_addr(state.as_bytes(), &addr)?;
    if sent != state.len() {
        return Err(io::Error::other(format!("sent {sent} of {} bytes", state.len())));
    }
    Ok(())
}

/// Sends `state` to `$NOTIFY_SOCKET`; does nothing when it is unset.
pub fn notify(state: &str) {
    let Some(socket) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let socket = socket.to_string_lossy();
    if let Err(e) = notify_to(&socket, state) {
        tracing::warn!(socket = %socket, error = %e, "cannot notify systemd");
    }
}

/// Startup finished (or a reload finished): systemd considers the service started.
pub fn ready() {
    notify("READY=1");
}

/// A reload (SIGHUP) began; call [`ready`] when it is over. Carries the
/// monotonic timestamp systemd 253+ uses to match the reload.
pub fn reloading() {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    let usec = now.tv_sec as u128 * 1_000_000 + now.tv_nsec as u128 / 1_000;
    notify(&format!("RELOADING=1\nMONOTONIC_USEC={usec}"));
}

/// The service is shutting down.
pub fn stopping() {
    notify("STOPPING=1");
}

/// One line for `systemctl status` (newlines become spaces: they would end the assignment).
pub fn status(text: &str) {
    notify(&format!("STATUS={}", text.replace(['\n', '\r'], " ")));
}

/// Watchdog keep-alive.
pub fn watchdog() {
    notify("WATCHDOG=1");
}

/// How often to call [`watchdog`]: half of `$WATCHDOG_USEC`, or None when
/// the watchdog is off or meant for another process (`$WATCHDOG_PID`).
pub fn watchdog_interval() -> Option<Duration> {
    let var = |k| std::env::var(k).ok();
    watchdog_interval_from(var("WATCHDOG_USEC").as_deref(), var("WATCHDOG_PID").as_deref(), std::process::id())
}

/// [`watchdog_interval`] with the environment passed in.
pub fn watchdog_interval_from(usec: Option<&str>, pid: Option<&str>, own_pid: u32) -> Option<Duration> {
    if let Some(pid) = pid {
        if pid.trim().parse::<u32>().ok() != Some(own_pid) {
            return None;
        }
    }
    let usec: u64 = usec?.trim().parse().ok().filter(|u| *u > 0)?;
    Some(Duration::from_micros(usec) / 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recv(sock: &UnixDatagram) -> String {
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 4096];
        let n = sock.recv(&mut buf).unwrap();
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    #[test]
    fn notifies_a_path_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let sock = UnixDatagram::bind(&path).unwrap();
        let p = path.to_str().unwrap();
        notify_to(p, "READY=1").unwrap();
        assert_eq!(recv(&sock), "READY=1");
        notify_to(p, "STATUS=simpeg: 5 min behind\nWATCHDOG=1").unwrap();
        assert_eq!(recv(&sock), "STATUS=simpeg: 5 min behind\nWATCHDOG=1");
    }

    #[test]
    fn notifies_an_abstract_socket() {
        let name = format!("pulih-test-notify-{}", std::process::id());
        let sock = UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap()).unwrap();
        notify_to(&format!("@{name}"), "STOPPING=1").unwrap();
        assert_eq!(recv(&sock), "STOPPING=1");
    }

    #[test]
    fn a_missing_socket_is_an_error_not_a_panic() {
        assert!(notify_to("/nonexistent/pulih/notify", "READY=1").is_err());
        assert!(notify_to("@pulih-test-nobody-listens-here", "READY=1").is_err());
    }

    #[test]
    fn watchdog_interval_is_half_and_respects_the_pid() {
        let i = watchdog_interval_from;
        assert_eq!(i(Some("60000000"), None, 7), Some(Duration::from_secs(30)));
        assert_eq!(i(Some("60000000"), Some("7"), 7), Some(Duration::from_secs(30)));
        assert_eq!(i(Some("60000000"), Some("8"), 7), None);
        assert_eq!(i(Some("60000000"), Some("junk"), 7), None);
        assert_eq!(i(None, Some("7"), 7), None);
        assert_eq!(i(Some("0"), None, 7), None);
        assert_eq!(i(Some("-5"), None, 7), None);
    }
}
