//! The `lunard` daemon as the end-to-end tests of this crate start it: a
//! real process on a free loopback port, with its control socket and log
//! in a temporary directory, and `lunarctl` pointed at it. Each test file
//! uses the part it needs.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use lunard::control::client::{Client, ClientError};
use serde_json::Value;

/// The target name `lunard` serves with no configuration.
pub const IQN: &str = "iqn.2026-11.dev.lunar:disk0";

/// The configuration file of gateway `me` ("gw1" or "gw2", listening on
/// its own of `ports` on 127.0.0.1) of the two gateways of target `iqn`,
/// whose one LUN is the body `lun` of a `[[target.lun]]` table.
pub fn two_gateway_config(dir: &std::path::Path, me: &str, ports: [u16; 2], iqn: &str, lun: &str) -> PathBuf {
    let port = if me == "gw1" { ports[0] } else { ports[1] };
    let text = format!(
        r#"listen = ["127.0.0.1:{port}"]
local-gateway = "{me}"

[[gateway]]
name = "gw1"
portal = "127.0.0.1:{}"

[[gateway]]
name = "gw2"
portal = "127.0.0.1:{}"

[[target]]
name = "{iqn}"

[[target.lun]]
{lun}
"#,
        ports[0], ports[1]
    );
    let path = dir.join(format!("{me}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Whether `tool` is on PATH.
pub fn have(tool: &str) -> bool {
    Command::new("sh").arg("-c").arg(format!("command -v {tool}")).output().is_ok_and(|o| o.status.success())
}

/// A command for a libiscsi tool; fails the test, saying what to install, if it is missing.
pub fn tool(name: &str) -> Command {
    assert!(have(name), "{name} is missing: install libiscsi-bin (scripts/test-all.sh does)");
    Command::new(name)
}

/// A running `lunard`, killed when dropped.
pub struct Daemon {
    pub child: Child,
    pub port: u16,
    /// The control socket (in a directory lunard creates).
    pub socket: PathBuf,
    /// Its standard error: the log.
    pub log: PathBuf,
    /// What it printed on standard output up to the control socket line
    /// (the last line of the banner: everything listens by then).
    pub banner: Vec<String>,
    dir: tempfile::TempDir,
}

impl Daemon {
    /// Starts `lunard --listen 127.0.0.1:PORT --control SOCKET ARGS...` and
    /// waits for its banner. A port taken between the probe and lunard's
    /// bind (by another test) is retried with another one.
    pub fn start(args: &[&str]) -> Daemon {
        for _ in 0..5 {
            match Daemon::try_start(args) {
                Ok(d) => return d,
                Err(e) if e.contains("Address already in use") => continue,
                Err(e) => panic!("{e}"),
            }
        }
        panic!("no free port for lunard after 5 tries");
    }

    /// Like [`Daemon::start`], but a daemon that exits (or stays silent)
    /// before its banner is an error naming why, with its log.
    pub fn try_start(args: &[&str]) -> Result<Daemon, String> {
        Daemon::try_start_with_env(args, &[])
    }

    /// Like [`Daemon::try_start`], with these variables added to its environment.
    pub fn try_start_with_env(args: &[&str], env: &[(&str, &str)]) -> Result<Daemon, String> {
        Daemon::spawn(args, env, None)
    }

    /// Starts `lunard --control SOCKET ARGS...` without `--listen`: the
    /// portals are those of the configuration file in ARGS, and `port` is
    /// the one [`Daemon::addr`] and the URLs name (127.0.0.1:`port`).
    pub fn start_on_file_portal(args: &[&str], port: u16) -> Daemon {
        Daemon::spawn(args, &[], Some(port)).unwrap_or_else(|e| panic!("{e}"))
    }

    fn spawn(args: &[&str], env: &[(&str, &str)], file_port: Option<u16>) -> Result<Daemon, String> {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("run").join("lunard.sock");
        let log = dir.path().join("lunard.log");
        let port = file_port.unwrap_or_else(free_port);
        let listen = match file_port {
            None => vec!["--listen".to_string(), format!("127.0.0.1:{port}")],
            Some(_) => Vec::new(),
        };
        let mut child = Command::new(env!("CARGO_BIN_EXE_lunard"))
            .args(&listen)
            .arg("--control")
            .arg(&socket)
            .args(args)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        // Read the banner on a thread, so a daemon that prints nothing cannot hang the test.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut banner = Vec::new();
            let mut lines = BufReader::new(stdout).lines();
            for l in lines.by_ref() {
                let Ok(l) = l else { break };
                let last = l.contains("control ");
                banner.push(l);
                if last {
                    let _ = tx.send(std::mem::take(&mut banner));
                    break;
                }
            }
            for _ in lines {}
        });
        let mut d = Daemon { child, port, socket, log, banner: Vec::new(), dir };
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(banner) => {
                d.banner = banner;
                Ok(d)
            }
            Err(_) => {
                let status = d.child.try_wait();
                let log = std::fs::read_to_string(&d.log).unwrap_or_default();
                Err(format!("lunard did not start ({status:?}): {log}"))
            }
        }
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// The iSCSI URL of `lun` of the default target.
    pub fn url(&self, lun: u32) -> String {
        self.url_as("", IQN, lun)
    }

    /// The iSCSI URL of `lun` of `target`, with libiscsi's `user%secret@` in `auth`.
    pub fn url_as(&self, auth: &str, target: &str, lun: u32) -> String {
        format!("iscsi://{auth}127.0.0.1:{}/{target}/{lun}", self.port)
    }

    /// The portal's URL (for discovery).
    pub fn portal(&self) -> String {
        format!("iscsi://127.0.0.1:{}", self.port)
    }

    pub fn client(&self) -> Client {
        Client::connect(&self.socket).unwrap()
    }

    pub fn call(&self, method: &str, params: Value) -> Result<Value, ClientError> {
        self.client().call(method, params)
    }

    pub fn ctl(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_lunarctl")).arg("--control").arg(&self.socket).args(args).output().unwrap()
    }

    /// `lunarctl ARGS` with `input` on its standard input.
    pub fn ctl_stdin(&self, args: &[&str], input: &str) -> Output {
        use std::io::Write;
        let mut c = Command::new(env!("CARGO_BIN_EXE_lunarctl"))
            .arg("--control")
            .arg(&self.socket)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        c.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
        c.wait_with_output().unwrap()
    }

    /// `lunarctl ARGS` that must succeed: its standard output.
    pub fn ctl_ok(&self, args: &[&str]) -> String {
        let o = self.ctl(args);
        assert!(o.status.success(), "lunarctl {args:?}: {}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8(o.stdout).unwrap()
    }

    pub fn ctl_json(&self, args: &[&str]) -> Value {
        let mut a = vec!["--json"];
        a.extend_from_slice(args);
        serde_json::from_str(&self.ctl_ok(&a)).unwrap()
    }

    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        format!("--- lunard log (last lines) ---\n{}", lines[lines.len().saturating_sub(30)..].join("\n"))
    }

    /// A path in the daemon's temporary directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// SIGTERM, and its exit status (bounded wait).
    pub fn stop(mut self) -> ExitStatus {
        Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status().unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(Instant::now() < deadline, "lunard did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How long [`Events::wait_for`] waits for an event.
pub const EVENT_WAIT: Duration = Duration::from_secs(60);

/// A subscription to the daemon's `events` stream, read with a deadline.
pub struct Events {
    reader: BufReader<UnixStream>,
    line: String,
    /// The names of the events read so far.
    pub seen: Vec<String>,
}

impl Events {
    pub fn subscribe(d: &Daemon) -> Events {
        let mut s = UnixStream::connect(&d.socket).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        s.write_all(b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"events\"}\n").unwrap();
        let mut e = Events { reader: BufReader::new(s), line: String::new(), seen: Vec::new() };
        let answer = e.next(Instant::now() + EVENT_WAIT).expect("answer to `events`");
        assert_eq!(answer["result"]["subscribed"], true, "{answer}");
        e
    }

    /// The next line, or `None` at the deadline.
    pub fn next(&mut self, deadline: Instant) -> Option<Value> {
        loop {
            match self.reader.read_line(&mut self.line) {
                Ok(0) => return None,
                Ok(_) if self.line.ends_with('\n') => {
                    let v = serde_json::from_str(&self.line).unwrap_or_else(|e| panic!("{e}: {}", self.line));
                    self.line.clear();
                    return Some(v);
                }
                Ok(_) => {}
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                Err(e) => panic!("events: {e}"),
            }
            if Instant::now() >= deadline {
                return None;
            }
        }
    }

    /// Waits for the event `name` and returns it.
    pub fn wait_for(&mut self, name: &str) -> Value {
        let deadline = Instant::now() + EVENT_WAIT;
        while let Some(v) = self.next(deadline) {
            let event = v["params"]["event"].as_str().unwrap_or("").to_string();
            self.seen.push(event.clone());
            if event == name {
                return v["params"].clone();
            }
        }
        panic!("no {name} event within {EVENT_WAIT:?}; saw {:?}", self.seen);
    }
}
