//! Statistics for the control plane: the `stats` objects of `status`, and
//! the Prometheus endpoint (`lunard --metrics ADDR:PORT`, off by default).
//!
//! The counters are the core's ([`lunar_core::stats`]): written on the I/O
//! path by the thread that completes each command, without a lock; here
//! they are only read and summed. The endpoint is a minimal HTTP/1.1 server
//! on the main loop: one request per connection, `GET /metrics` answers the
//! text exposition format (version 0.0.4), any other path 404. A slow or
//! silent client is cut off after [`CLIENT_TIMEOUT`]; at most
//! [`MAX_CLIENTS`] are served at once.

use std::cell::Cell;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use lunar_aio::RunState;
use lunar_core::stats::{bucket_upper_us, Kind, Snapshot, LATENCY_BUCKETS};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

use crate::control::Context;

/// Longest request head accepted (bytes).
pub const MAX_REQUEST: usize = 8192;
/// Connections served at once; more are closed at once.
pub const MAX_CLIENTS: usize = 16;
/// How long a client may take to send its request and read the answer.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("cannot listen for metrics on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("cannot start the metrics endpoint on the main loop: {0}")]
    MainLoop(#[from] lunar_aio::ThreadError),
}

/// The `stats` object of a LUN or an I/O thread in `status`.
pub fn stats_json(s: &Snapshot) -> Value {
    let round = |v: Option<f64>| v.map(|x| (x * 10.0).round() / 10.0);
    json!({
        "commands": {
            "read": s.commands_of(Kind::Read),
            "write": s.commands_of(Kind::Write),
            "other": s.commands_of(Kind::Other),
            "total": s.total(),
        },
        "bytes": { "read": s.bytes_read, "written": s.bytes_written },
        "errors": s.errors,
        "io_errors": s.io_errors,
        "aborted": s.aborted,
        "latency": {
            "count": s.latency_count(),
            "sum_us": s.latency_ns / 1000,
            "p50_us": round(s.quantile_us(0.5)),
            "p99_us": round(s.quantile_us(0.99)),
            "buckets": s.buckets.to_vec(),
            "bucket_le_us": (0..LATENCY_BUCKETS).map(bucket_upper_us).collect::<Vec<_>>(),
        },
    })
}

/// The counters of I/O thread `i` (numbered from 0, as the control plane
/// shows them); zero if there is no such thread.
pub(crate) fn thread_stats(ctx: &Context, i: usize) -> Snapshot {
    ctx.threads.stats().snapshot(i + 1).unwrap_or_default()
}

/// One LUN's numbers for the exposition.
#[derive(Debug, Clone, PartialEq)]
pub struct LunSample {
    pub target: String,
    pub lun: u64,
    pub stats: Snapshot,
    pub in_flight: usize,
    pub paused: bool,
}

/// One I/O thread's numbers for the exposition (numbered from 0).
#[derive(Debug, Clone, PartialEq)]
pub struct ThreadSample {
    pub iothread: usize,
    pub stats: Snapshot,
    pub queues: usize,
}

/// Everything one scrape shows.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sample {
    pub luns: Vec<LunSample>,
    pub threads: Vec<ThreadSample>,
    pub sessions: usize,
    pub connections: usize,
    /// How often each resource limit was met: (front-end, limit, count).
    pub limit_hits: Vec<(&'static str, &'static str, u64)>,
    /// iSCSI task management functions received, by function.
    pub tmf_received: Vec<(&'static str, u64)>,
    /// iSCSI task management responses sent, by response.
    pub tmf_answered: Vec<(&'static str, u64)>,
}

/// Reads the counters of every LUN and I/O thread (from any thread that
/// is not an I/O thread: it waits for the in-flight counts).
pub async fn collect(ctx: &Context) -> Sample {
    let mut queues = vec![0usize; ctx.iothreads];
    let mut luns = Vec::new();
    for t in &ctx.targets() {
        let stopped = t.run_state() == RunState::Stopped;
        for dev in t.devices() {
            for q in dev.queues() {
                if let Some(n) = q.io_thread().checked_sub(1).and_then(|i| queues.get_mut(i)) {
                    *n += 1;
                }
            }
            luns.push(LunSample {
                target: t.name().to_string(),
                lun: dev.lun(),
                stats: dev.stats().snapshot(),
                in_flight: t.in_flight(&dev).await,
                paused: stopped || dev.is_paused(),
            });
        }
    }
    let threads = queues
        .into_iter()
        .enumerate()
        .map(|(i, queues)| ThreadSample { iothread: i, stats: thread_stats(ctx, i), queues })
        .collect();
    let mut limit_hits: Vec<_> = ctx.server.limit_hits().named().iter().map(|(k, v)| ("iscsi", *k, *v)).collect();
    for v in &ctx.vhost {
        for (k, n) in (v.hits)().named() {
            match limit_hits.iter_mut().find(|(f, l, _)| *f == "vhost" && *l == k) {
                Some(slot) => slot.2 += n,
                None => limit_hits.push(("vhost", k, n)),
            }
        }
    }
    let tmf = ctx.server.tmf_counts();
    Sample {
        luns,
        threads,
        sessions: ctx.server.sessions().len(),
        connections: ctx.server.connections(),
        limit_hits,
        tmf_received: tmf.received(),
        tmf_answered: tmf.answered(),
    }
}

/// A label value, escaped as the exposition format wants (`\\`, `\"`, `\n`).
fn escape(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// Seconds as the exposition format writes a float.
fn seconds(us: u64) -> String {
    format!("{}", us as f64 / 1e6)
}

struct Family<'a> {
    out: &'a mut String,
}

impl Family<'_> {
    fn head(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    fn line(&mut self, name: &str, labels: &str, value: impl std::fmt::Display) {
        if labels.is_empty() {
            let _ = writeln!(self.out, "{name} {value}");
        } else {
            let _ = writeln!(self.out, "{name}{{{labels}}} {value}");
        }
    }

    fn histogram(&mut self, name: &str, labels: &str, s: &Snapshot) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0;
        for (i, n) in s.buckets.iter().enumerate() {
            cumulative += n;
            let le = bucket_upper_us(i).map_or_else(|| "+Inf".to_string(), seconds);
            let _ = writeln!(self.out, "{name}_bucket{{{labels}{sep}le=\"{le}\"}} {cumulative}");
        }
        self.line(&format!("{name}_sum"), labels, s.latency_ns as f64 / 1e9);
        self.line(&format!("{name}_count"), labels, cumulative);
    }
}

/// The text exposition format (version 0.0.4) of a sample.
pub fn render(sample: &Sample) -> String {
    let mut out = String::new();
    let mut f = Family { out: &mut out };
    let lun_labels: Vec<String> =
        sample.luns.iter().map(|l| format!("target=\"{}\",lun=\"{}\"", escape(&l.target), l.lun)).collect();
    let thread_labels: Vec<String> = sample.threads.iter().map(|t| format!("iothread=\"{}\"", t.iothread)).collect();
    // The counters shared by LUNs and threads, one family each.
    type Get = fn(&Snapshot) -> u64;
    let scalars: [(&str, &str, Get); 3] = [
        ("errors_total", "Commands completed with a status other than GOOD or TASK ABORTED.", |s| s.errors),
        ("io_errors_total", "Backend I/O errors, whatever the error policy did with them.", |s| s.io_errors),
        ("aborted_total", "Commands completed with TASK ABORTED.", |s| s.aborted),
    ];
    for (scope, labels, stats) in [
        ("lun", &lun_labels, sample.luns.iter().map(|l| &l.stats).collect::<Vec<_>>()),
        ("iothread", &thread_labels, sample.threads.iter().map(|t| &t.stats).collect::<Vec<_>>()),
    ] {
        let who = if scope == "lun" { "per LUN" } else { "per I/O thread" };
        let name = format!("lunar_{scope}_commands_total");
        f.head(&name, "counter", &format!("SCSI commands completed, by kind (read, write, other), {who}."));
        for (l, s) in labels.iter().zip(&stats) {
            for k in Kind::ALL {
                f.line(&name, &format!("{l},kind=\"{}\"", k.name()), s.commands_of(k));
            }
        }
        let name = format!("lunar_{scope}_bytes_total");
        f.head(
            &name,
            "counter",
            &format!("Data bytes of READ (read) and write (write) commands that succeeded, {who}."),
        );
        for (l, s) in labels.iter().zip(&stats) {
            f.line(&name, &format!("{l},direction=\"read\""), s.bytes_read);
            f.line(&name, &format!("{l},direction=\"write\""), s.bytes_written);
        }
        for (suffix, help, get) in scalars {
            let name = format!("lunar_{scope}_{suffix}");
            f.head(&name, "counter", &format!("{}, {who}.", help.trim_end_matches('.')));
            for (l, s) in labels.iter().zip(&stats) {
                f.line(&name, l, get(s));
            }
        }
        let name = format!("lunar_{scope}_latency_seconds");
        f.head(&name, "histogram", &format!("Command latency, from arrival in the target core to completion, {who}."));
        for (l, s) in labels.iter().zip(&stats) {
            f.histogram(&name, l, s);
        }
    }
    f.head("lunar_lun_in_flight", "gauge", "Commands in the LUN's request lists now.");
    for (l, s) in lun_labels.iter().zip(&sample.luns) {
        f.line("lunar_lun_in_flight", l, s.in_flight);
    }
    f.head("lunar_lun_paused", "gauge", "1 if the LUN is paused (by the operator, an I/O error or a stopped target).");
    for (l, s) in lun_labels.iter().zip(&sample.luns) {
        f.line("lunar_lun_paused", l, u8::from(s.paused));
    }
    f.head("lunar_iothread_queues", "gauge", "Queues (one per LUN per front-end queue) served by the I/O thread.");
    for (l, t) in thread_labels.iter().zip(&sample.threads) {
        f.line("lunar_iothread_queues", l, t.queues);
    }
    f.head("lunar_iscsi_sessions", "gauge", "iSCSI sessions logged in.");
    f.line("lunar_iscsi_sessions", "", sample.sessions);
    f.head("lunar_iscsi_connections", "gauge", "iSCSI connections open.");
    f.line("lunar_iscsi_connections", "", sample.connections);
    f.head(
        "lunar_limit_hits_total",
        "counter",
        "Times a resource limit was met (connection refused, window held, command refused before its data...).",
    );
    for (frontend, limit, n) in &sample.limit_hits {
        f.line("lunar_limit_hits_total", &format!("frontend=\"{frontend}\",limit=\"{limit}\""), n);
    }
    f.head("lunar_iscsi_tmf_total", "counter", "iSCSI task management functions received, by function.");
    for (function, n) in &sample.tmf_received {
        f.line("lunar_iscsi_tmf_total", &format!("function=\"{function}\""), n);
    }
    f.head("lunar_iscsi_tmf_responses_total", "counter", "iSCSI task management responses sent, by response.");
    for (response, n) in &sample.tmf_answered {
        f.line("lunar_iscsi_tmf_responses_total", &format!("response=\"{response}\""), n);
    }
    out
}

/// The running metrics endpoint; dropping it stops serving.
pub struct MetricsServer {
    addr: SocketAddr,
    shutdown: watch::Sender<bool>,
}

impl MetricsServer {
    /// Binds `addr` now (so that a busy port is an error at start) and
    /// serves it on the daemon's main loop.
    pub fn start(addr: SocketAddr, ctx: Arc<Context>) -> Result<MetricsServer, MetricsError> {
        let bind_err = |source| MetricsError::Bind { addr, source };
        let listener = std::net::TcpListener::bind(addr).map_err(bind_err)?;
        listener.set_nonblocking(true).map_err(bind_err)?;
        let local = listener.local_addr().map_err(bind_err)?;
        let main = ctx.threads.main_loop().clone();
        let (shutdown, rx) = watch::channel(false);
        main.spawn(move || serve(listener, ctx, rx))?;
        tracing::info!(%local, "metrics endpoint listening");
        Ok(MetricsServer { addr: local, shutdown })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
    }
}

async fn serve(listener: std::net::TcpListener, ctx: Arc<Context>, mut shutdown: watch::Receiver<bool>) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!("metrics endpoint: {e}");
            return;
        }
    };
    let clients = Rc::new(Cell::new(0usize));
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.changed() => return,
        };
        let stream = match accepted {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!("metrics accept: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        if clients.get() >= MAX_CLIENTS {
            continue; // dropped: closed at once
        }
        clients.set(clients.get() + 1);
        let (ctx, clients, mut shutdown) = (ctx.clone(), clients.clone(), shutdown.clone());
        tokio::task::spawn_local(async move {
            tokio::select! {
                r = tokio::time::timeout(CLIENT_TIMEOUT, serve_client(stream, &ctx)) => {
                    if r.is_err() {
                        tracing::debug!("metrics client timed out");
                    }
                }
                _ = shutdown.changed() => {}
            }
            clients.set(clients.get() - 1);
        });
    }
}

/// What a request asks for.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Route {
    Metrics { head: bool },
    NotFound,
    MethodNotAllowed,
    BadRequest,
}

/// Routes a request head (its first line decides).
pub(crate) fn route(head: &[u8]) -> Route {
    let Some(line) = head.split(|&b| b == b'\n').next() else { return Route::BadRequest };
    let Ok(line) = std::str::from_utf8(line) else { return Route::BadRequest };
    let mut parts = line.trim_end_matches('\r').split(' ');
    let (Some(method), Some(target), Some(version), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Route::BadRequest;
    };
    if !version.starts_with("HTTP/1.") {
        return Route::BadRequest;
    }
    let head = match method {
        "GET" => false,
        "HEAD" => true,
        _ => return Route::MethodNotAllowed,
    };
    let path = target.split('?').next().unwrap_or(target);
    if path == "/metrics" {
        Route::Metrics { head }
    } else {
        Route::NotFound
    }
}

async fn serve_client(mut stream: tokio::net::TcpStream, ctx: &Context) {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let complete = loop {
        if buf.windows(4).any(|w| w == b"\r\n\r\n") || buf.windows(2).any(|w| w == b"\n\n") {
            break true;
        }
        if buf.len() > MAX_REQUEST {
            break false;
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let route = if complete { route(&buf) } else { Route::BadRequest };
    let (status, body, head) = match route {
        Route::Metrics { head } => ("200 OK", render(&collect(ctx).await), head),
        Route::NotFound => ("404 Not Found", "not found: the metrics are at /metrics\n".to_string(), false),
        Route::MethodNotAllowed => ("405 Method Not Allowed", "only GET and HEAD\n".to_string(), false),
        Route::BadRequest => ("400 Bad Request", "bad request\n".to_string(), false),
    };
    let content_type = if status.starts_with("200") {
        "text/plain; version=0.0.4; charset=utf-8"
    } else {
        "text/plain; charset=utf-8"
    };
    let allow = if status.starts_with("405") { "Allow: GET, HEAD\r\n" } else { "" };
    let mut answer = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{allow}Connection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if !head {
        answer.extend_from_slice(body.as_bytes());
    }
    let _ = stream.write_all(&answer).await;
    let _ = stream.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Sample {
        let mut a = Snapshot {
            commands: [3, 2, 1],
            bytes_read: 3 * 4096,
            bytes_written: 2 * 512,
            errors: 1,
            io_errors: 2,
            aborted: 0,
            latency_ns: 6 * 3_000,
            ..Snapshot::default()
        };
        a.buckets[2] = 6; // 6 commands in (2, 4] us
        let mut t = Snapshot { commands: [3, 2, 1], ..Snapshot::default() };
        t.buckets[2] = 5;
        t.buckets[LATENCY_BUCKETS - 1] = 1;
        Sample {
            luns: vec![
                LunSample { target: "iqn.x:\"q\"\\".into(), lun: 0, stats: a, in_flight: 4, paused: false },
                LunSample { target: "iqn.y".into(), lun: 7, stats: Snapshot::default(), in_flight: 0, paused: true },
            ],
            threads: vec![ThreadSample { iothread: 0, stats: t, queues: 2 }],
            sessions: 1,
            connections: 2,
            limit_hits: vec![("iscsi", "window_held", 5), ("iscsi", "connections_refused", 0)],
            tmf_received: vec![("abort_task", 3), ("lu_reset", 1)],
            tmf_answered: vec![("function_complete", 4)],
        }
    }

    /// The value of the one line that starts with `prefix` followed by a space.
    fn value(text: &str, prefix: &str) -> String {
        let hits: Vec<&str> =
            text.lines().filter(|l| l.starts_with(prefix) && l[prefix.len()..].starts_with(' ')).collect();
        assert_eq!(hits.len(), 1, "{prefix}: {hits:?}");
        hits[0][prefix.len() + 1..].to_string()
    }

    #[test]
    fn exposition_has_every_family_with_help_and_type() {
        let text = render(&sample());
        println!("{text}");
        let l0 = "target=\"iqn.x:\\\"q\\\"\\\\\",lun=\"0\"";
        assert_eq!(value(&text, &format!("lunar_lun_commands_total{{{l0},kind=\"read\"}}")), "3");
        assert_eq!(value(&text, &format!("lunar_lun_commands_total{{{l0},kind=\"write\"}}")), "2");
        assert_eq!(value(&text, &format!("lunar_lun_commands_total{{{l0},kind=\"other\"}}")), "1");
        assert_eq!(value(&text, &format!("lunar_lun_bytes_total{{{l0},direction=\"read\"}}")), "12288");
        assert_eq!(value(&text, &format!("lunar_lun_bytes_total{{{l0},direction=\"write\"}}")), "1024");
        assert_eq!(value(&text, &format!("lunar_lun_errors_total{{{l0}}}")), "1");
        assert_eq!(value(&text, &format!("lunar_lun_io_errors_total{{{l0}}}")), "2");
        assert_eq!(value(&text, &format!("lunar_lun_in_flight{{{l0}}}")), "4");
        assert_eq!(value(&text, "lunar_lun_paused{target=\"iqn.y\",lun=\"7\"}"), "1");
        assert_eq!(value(&text, "lunar_iothread_queues{iothread=\"0\"}"), "2");
        assert_eq!(value(&text, "lunar_iothread_commands_total{iothread=\"0\",kind=\"read\"}"), "3");
        assert_eq!(value(&text, "lunar_iscsi_sessions"), "1");
        assert_eq!(value(&text, "lunar_limit_hits_total{frontend=\"iscsi\",limit=\"window_held\"}"), "5");
        assert_eq!(value(&text, "lunar_iscsi_tmf_total{function=\"abort_task\"}"), "3");
        assert_eq!(value(&text, "lunar_iscsi_tmf_responses_total{response=\"function_complete\"}"), "4");
        // Every sample line belongs to a family declared just before with HELP and TYPE.
        let mut declared = std::collections::HashSet::new();
        let mut current = String::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
                assert!(declared.insert(name.to_string()), "family {name} declared twice");
                assert!(text.contains(&format!("# HELP {name} ")), "no HELP for {name}");
                current = name.to_string();
            } else if !line.starts_with('#') {
                let name = line.split(['{', ' ']).next().unwrap();
                let base = name.trim_end_matches("_bucket").trim_end_matches("_sum").trim_end_matches("_count");
                assert!(name == current || base == current, "{line} outside its family {current}");
                let v = line.rsplit(' ').next().unwrap();
                assert!(v.parse::<f64>().is_ok(), "not a number: {line}");
            }
        }
        assert!(text.ends_with('\n'));
    }

    #[test]
    fn histogram_buckets_are_cumulative_and_end_with_inf() {
        let text = render(&sample());
        let l0 = "target=\"iqn.x:\\\"q\\\"\\\\\",lun=\"0\"";
        let buckets: Vec<(String, u64)> = text
            .lines()
            .filter(|l| l.starts_with(&format!("lunar_lun_latency_seconds_bucket{{{l0},")))
            .map(|l| {
                let le = l.split("le=\"").nth(1).unwrap().split('"').next().unwrap().to_string();
                (le, l.rsplit(' ').next().unwrap().parse().unwrap())
            })
            .collect();
        assert_eq!(buckets.len(), LATENCY_BUCKETS);
        assert_eq!(buckets[0], ("0.000001".to_string(), 0));
        assert_eq!(buckets[1], ("0.000002".to_string(), 0));
        assert_eq!(buckets[2], ("0.000004".to_string(), 6));
        assert_eq!(buckets.last().unwrap(), &("+Inf".to_string(), 6));
        assert!(buckets.windows(2).all(|w| w[0].1 <= w[1].1), "not cumulative");
        let les: Vec<f64> = buckets[..LATENCY_BUCKETS - 1].iter().map(|b| b.0.parse().unwrap()).collect();
        assert!(les.windows(2).all(|w| w[0] < w[1]), "bounds not increasing");
        assert_eq!(value(&text, &format!("lunar_lun_latency_seconds_count{{{l0}}}")), "6");
        assert_eq!(value(&text, &format!("lunar_lun_latency_seconds_sum{{{l0}}}")), "0.000018");
        // The thread's slow command lands only in +Inf.
        assert_eq!(value(&text, "lunar_iothread_latency_seconds_bucket{iothread=\"0\",le=\"33.554432\"}"), "5");
        assert_eq!(value(&text, "lunar_iothread_latency_seconds_bucket{iothread=\"0\",le=\"+Inf\"}"), "6");
    }

    #[test]
    fn routes() {
        assert_eq!(route(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"), Route::Metrics { head: false });
        assert_eq!(route(b"GET /metrics?x=1 HTTP/1.0\r\n\r\n"), Route::Metrics { head: false });
        assert_eq!(route(b"HEAD /metrics HTTP/1.1\r\n\r\n"), Route::Metrics { head: true });
        assert_eq!(route(b"GET / HTTP/1.1\r\n\r\n"), Route::NotFound);
        assert_eq!(route(b"GET /metricsx HTTP/1.1\r\n\r\n"), Route::NotFound);
        assert_eq!(route(b"POST /metrics HTTP/1.1\r\n\r\n"), Route::MethodNotAllowed);
        assert_eq!(route(b"GET /metrics\r\n\r\n"), Route::BadRequest);
        assert_eq!(route(b"GET /metrics SPDY/3\r\n\r\n"), Route::BadRequest);
        assert_eq!(route(b"\xff\xfe\r\n\r\n"), Route::BadRequest);
    }

    #[test]
    fn stats_json_has_raw_numbers_and_quantiles() {
        let s = sample().luns[0].stats;
        let v = stats_json(&s);
        assert_eq!(v["commands"]["total"], 6);
        assert_eq!(v["bytes"]["read"], 12288);
        assert_eq!(v["latency"]["count"], 6);
        assert_eq!(v["latency"]["buckets"].as_array().unwrap().len(), LATENCY_BUCKETS);
        assert_eq!(v["latency"]["bucket_le_us"][3], 8);
        assert!(v["latency"]["bucket_le_us"][LATENCY_BUCKETS - 1].is_null());
        let p50 = v["latency"]["p50_us"].as_f64().unwrap();
        assert!((2.0..=4.0).contains(&p50), "{p50}");
        assert!(stats_json(&Snapshot::default())["latency"]["p99_us"].is_null());
    }
}
