//! The systemd notification protocol (`sd_notify(3)`), spoken directly:
//! one datagram of `KEY=VALUE` lines to the unix socket named by
//! `$NOTIFY_SOCKET` (a path, or `@name` in the abstract namespace). No
//! libsystemd. Without `$NOTIFY_SOCKET` every call does nothing.
//!
//! `lunard` sends `READY=1` (with a `STATUS=` line) once its portals, its
//! vhost-user sockets and its control socket listen, `STOPPING=1` when it
//! begins to shut down, and, when `$WATCHDOG_USEC` is set (and
//! `$WATCHDOG_PID`, if set, is its pid), `WATCHDOG=1` every half of that
//! period from its main thread, each after every thread of the core (the
//! main loop and the I/O threads) has run a bottom half: a wedged thread
//! stops the keep-alives and systemd restarts the service.

use std::io;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

/// Where notifications go; `None` inside when not under systemd.
pub struct Notifier {
    target: Option<(UnixDatagram, SocketAddr)>,
    watchdog: Option<Duration>,
}

impl Notifier {
    /// From the environment (`NOTIFY_SOCKET`, `WATCHDOG_USEC`, `WATCHDOG_PID`).
    pub fn from_env() -> Notifier {
        let get = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        Notifier::new(get("NOTIFY_SOCKET").as_deref(), get("WATCHDOG_USEC").as_deref(), get("WATCHDOG_PID").as_deref())
    }

    fn new(socket: Option<&str>, usec: Option<&str>, pid: Option<&str>) -> Notifier {
        let target = socket.and_then(|s| match open(s) {
            Ok(t) => Some(t),
            Err(e) => {
                tracing::warn!("NOTIFY_SOCKET={s}: {e}; not notifying systemd");
                None
            }
        });
        let for_us = pid.is_none_or(|p| p.parse::<u32>().ok() == Some(std::process::id()));
        let watchdog = usec
            .and_then(|u| u.parse::<u64>().ok())
            .filter(|&u| u > 0 && for_us && target.is_some())
            .map(Duration::from_micros);
        Notifier { target, watchdog }
    }

    /// Whether there is a socket to notify.
    pub fn enabled(&self) -> bool {
        self.target.is_some()
    }

    /// The watchdog period systemd asked for (`WATCHDOG_USEC`); keep-alives
    /// go every half of it.
    pub fn watchdog(&self) -> Option<Duration> {
        self.watchdog
    }

    /// Sends `state` (newline-separated `KEY=VALUE` lines) in one datagram.
    pub fn notify(&self, state: &str) -> io::Result<()> {
        match &self.target {
            None => Ok(()),
            Some((sock, addr)) => sock.send_to_addr(state.as_bytes(), addr).map(|_| ()),
        }
    }

    /// `notify`, with a failure logged rather than returned.
    pub fn send(&self, state: &str) {
        if let Err(e) = self.notify(state) {
            tracing::warn!("sd_notify {:?}: {e}", state.lines().next().unwrap_or(""));
        }
    }
}

fn open(name: &str) -> io::Result<(UnixDatagram, SocketAddr)> {
    let addr = if let Some(abs) = name.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        SocketAddr::from_abstract_name(abs.as_bytes())?
    } else if name.starts_with('/') {
        SocketAddr::from_pathname(name)?
    } else {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "neither an absolute path nor @abstract"));
    };
    Ok((UnixDatagram::unbound()?, addr))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datagrams_reach_a_path_socket_and_an_abstract_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let rx = UnixDatagram::bind(&path).unwrap();
        let n = Notifier::new(path.to_str(), Some("2000000"), None);
        assert_eq!(n.watchdog(), Some(Duration::from_secs(2)));
        n.notify("READY=1\nSTATUS=serving").unwrap();
        let mut buf = [0u8; 128];
        let len = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"READY=1\nSTATUS=serving");

        use std::os::linux::net::SocketAddrExt;
        let name = format!("lunar-notify-test-{}", std::process::id());
        let rx = UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap()).unwrap();
        Notifier::new(Some(&format!("@{name}")), None, None).notify("WATCHDOG=1").unwrap();
        let len = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"WATCHDOG=1");
    }

    #[test]
    fn no_socket_no_watchdog() {
        let n = Notifier::new(None, Some("1000"), None);
        assert!(!n.enabled() && n.watchdog().is_none());
        n.notify("READY=1").unwrap();
        // WATCHDOG_PID names another process: not ours to keep alive.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("n");
        let _rx = UnixDatagram::bind(&path).unwrap();
        assert_eq!(Notifier::new(path.to_str(), Some("1000"), Some("1")).watchdog(), None);
        assert!(Notifier::new(path.to_str(), Some("1000"), Some(&std::process::id().to_string())).watchdog().is_some());
        assert!(!Notifier::new(Some("relative"), None, None).enabled());
    }
}
