//! End-to-end tests of the statistics (`status`, `lunarctl status`, the
//! Prometheus endpoint of `lunard --metrics`) and of the `session.login_failed`
//! event, against the real `lunard` binary with libiscsi's tools as
//! initiators (Debian's libiscsi-bin; `scripts/test-all.sh` installs it).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const BLOCK: u64 = 512;

mod common;
use common::{free_port, tool, Daemon, IQN};

/// lunard with its Prometheus endpoint on a free port.
struct Metrics {
    d: Daemon,
    metrics: SocketAddr,
}

impl std::ops::Deref for Metrics {
    type Target = Daemon;
    fn deref(&self) -> &Daemon {
        &self.d
    }
}

impl Metrics {
    fn start(args: &[&str]) -> Metrics {
        let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let endpoint = metrics.to_string();
        let mut a = vec!["--iothreads", "2", "--log", "info", "--metrics", &endpoint];
        a.extend_from_slice(args);
        let d = Daemon::start(&a);
        let announced = d.banner.iter().find(|l| l.contains("metrics http://"));
        let announced =
            announced.unwrap_or_else(|| panic!("the banner does not name the metrics endpoint: {:?}", d.banner));
        assert!(announced.contains(&format!("http://{metrics}/metrics")), "{announced}");
        Metrics { d, metrics }
    }

    fn call(&self, method: &str, params: Value) -> Value {
        self.d.call(method, params).unwrap()
    }

    fn url(&self, auth: &str, target: &str) -> String {
        self.d.url_as(auth, target, 0)
    }

    fn ctl(&self, args: &[&str]) -> String {
        self.d.ctl_ok(args)
    }

    /// One HTTP/1.1 request; (status code, body).
    fn http(&self, request: &str) -> (u16, String) {
        let mut s = TcpStream::connect(self.metrics).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s.write_all(request.as_bytes()).unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).unwrap();
        let (head, body) = answer.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no HTTP head: {answer:?}"));
        let code = head.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or_else(|| panic!("{head}"));
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("Content-Length: "))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no Content-Length: {head}"));
        assert_eq!(body.len(), length, "Content-Length");
        (code, body.to_string())
    }

    fn scrape(&self) -> String {
        let (code, body) = self.http("GET /metrics HTTP/1.1\r\nHost: lunar\r\n\r\n");
        assert_eq!(code, 200, "{body}");
        body
    }

    /// Waits until no session is left: every command of the workload completed and was counted.
    fn quiesce(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.call("session.list", json!({})).as_array().unwrap().is_empty() {
            assert!(Instant::now() < deadline, "sessions did not end");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The value of the sample `name{labels}` in an exposition.
fn sample(text: &str, series: &str) -> f64 {
    let hits: Vec<&str> =
        text.lines().filter(|l| l.strip_prefix(series).is_some_and(|rest| rest.starts_with(' '))).collect();
    assert_eq!(hits.len(), 1, "series {series}: {hits:?}");
    hits[0][series.len() + 1..].parse().unwrap()
}

/// Runs one libiscsi conformance test with its verbose log; returns the
/// (commands, blocks) of the `opcode` CDBs it says it sent.
fn test_cu(d: &Metrics, test: &str, opcode: &str, extra: &[&str]) -> (u64, u64) {
    let o = tool("iscsi-test-cu").args(extra).args(["-V", "-t", test]).arg(d.url("", IQN)).output().unwrap();
    let log = String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "iscsi-test-cu {test}: {log}");
    let mut n = 0;
    let mut blocks = 0;
    for l in log.lines().filter(|l| l.trim_start().starts_with(&format!("Send {opcode} "))) {
        n += 1;
        let b = l.split_whitespace().find_map(|w| w.strip_prefix("blocks:")).unwrap_or_else(|| panic!("{l}"));
        blocks += b.parse::<u64>().unwrap();
    }
    assert!(n > 0, "{test} sent no {opcode}: {log}");
    (n, blocks)
}

fn lun_stats(status: &Value) -> Value {
    status["targets"][0]["luns"][0]["stats"].clone()
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a count: {v}"))
}

#[test]
fn status_and_metrics_count_a_known_workload() {
    let d = Metrics::start(&["--lun", "backend=mem,size=64M"]);
    let zero = lun_stats(&d.call("status", json!({})));
    assert_eq!(zero["commands"]["total"], 0, "{zero}");
    assert!(zero["latency"]["p50_us"].is_null());

    // Exact reads and writes: libiscsi's own log says what it sent.
    let (reads, read_blocks) = test_cu(&d, "ALL.Read16.Simple", "READ16", &[]);
    let (writes, write_blocks) = test_cu(&d, "ALL.Write16.Simple", "WRITE16", &["--dataloss"]);
    d.quiesce();
    let s = lun_stats(&d.call("status", json!({})));
    println!("after iscsi-test-cu: {reads} reads of {read_blocks} blocks, {writes} writes of {write_blocks} blocks");
    println!("{s}");
    assert_eq!(u(&s["commands"]["read"]), reads);
    assert_eq!(u(&s["bytes"]["read"]), read_blocks * BLOCK);
    assert_eq!(u(&s["commands"]["write"]), writes);
    assert_eq!(u(&s["bytes"]["written"]), write_blocks * BLOCK);
    assert!(u(&s["commands"]["other"]) > 0, "INQUIRY, READ CAPACITY... count as other");
    assert_eq!(u(&s["errors"]), 0, "{s}");

    // Bulk load: 8-block reads for 2 seconds.
    let perf = tool("iscsi-perf").args(["-t", "2", "-b", "8", "-m", "4"]).arg(d.url("", IQN)).output().unwrap();
    assert!(perf.status.success(), "iscsi-perf: {}", String::from_utf8_lossy(&perf.stderr));
    d.quiesce();
    let status = d.call("status", json!({}));
    let s = lun_stats(&status);
    let perf_reads = u(&s["commands"]["read"]) - reads;
    println!("iscsi-perf: {perf_reads} reads");
    assert!(perf_reads > 0);
    assert_eq!(u(&s["bytes"]["read"]), read_blocks * BLOCK + perf_reads * 8 * BLOCK, "read bytes = commands x size");
    assert_eq!(u(&s["commands"]["write"]), writes);
    assert_eq!(u(&s["errors"]) + u(&s["aborted"]) + u(&s["io_errors"]), 0, "{s}");
    let total = u(&s["commands"]["total"]);
    assert_eq!(total, u(&s["commands"]["read"]) + u(&s["commands"]["write"]) + u(&s["commands"]["other"]));
    assert_eq!(u(&s["latency"]["count"]), total, "histogram count = commands");
    let buckets: u64 = s["latency"]["buckets"].as_array().unwrap().iter().map(u).sum();
    assert_eq!(buckets, total);
    let (p50, p99) = (s["latency"]["p50_us"].as_f64().unwrap(), s["latency"]["p99_us"].as_f64().unwrap());
    assert!(0.0 < p50 && p50 <= p99, "p50 {p50} p99 {p99}");
    // The I/O threads did it all between them.
    let threads = status["iothreads"].as_array().unwrap();
    assert_eq!(threads.len(), 2);
    let per_thread: u64 = threads.iter().map(|t| u(&t["stats"]["commands"]["total"])).sum();
    assert_eq!(per_thread, total, "per-thread totals add up to the LUN's");
    let thread_read_bytes: u64 = threads.iter().map(|t| u(&t["stats"]["bytes"]["read"])).sum();
    assert_eq!(thread_read_bytes, u(&s["bytes"]["read"]));

    // The Prometheus endpoint shows the same numbers.
    let text = d.scrape();
    let l = format!("target=\"{IQN}\",lun=\"0\"");
    for (kind, n) in
        [("read", &s["commands"]["read"]), ("write", &s["commands"]["write"]), ("other", &s["commands"]["other"])]
    {
        assert_eq!(sample(&text, &format!("lunar_lun_commands_total{{{l},kind=\"{kind}\"}}")), u(n) as f64, "{kind}");
    }
    assert_eq!(
        sample(&text, &format!("lunar_lun_bytes_total{{{l},direction=\"read\"}}")),
        u(&s["bytes"]["read"]) as f64
    );
    assert_eq!(
        sample(&text, &format!("lunar_lun_bytes_total{{{l},direction=\"write\"}}")),
        u(&s["bytes"]["written"]) as f64
    );
    assert_eq!(sample(&text, &format!("lunar_lun_errors_total{{{l}}}")), 0.0);
    assert_eq!(sample(&text, &format!("lunar_lun_latency_seconds_count{{{l}}}")), total as f64);
    assert_eq!(sample(&text, &format!("lunar_lun_latency_seconds_bucket{{{l},le=\"+Inf\"}}")), total as f64);
    let sum = sample(&text, &format!("lunar_lun_latency_seconds_sum{{{l}}}"));
    assert!((sum - u(&s["latency"]["sum_us"]) as f64 / 1e6).abs() < 1e-5, "sum {sum}");
    assert_eq!(sample(&text, &format!("lunar_lun_in_flight{{{l}}}")), 0.0);
    assert_eq!(sample(&text, &format!("lunar_lun_paused{{{l}}}")), 0.0);
    let thread_total: f64 = (0..2)
        .flat_map(|t| ["read", "write", "other"].map(|k| (t, k)))
        .map(|(t, k)| sample(&text, &format!("lunar_iothread_commands_total{{iothread=\"{t}\",kind=\"{k}\"}}")))
        .sum();
    assert_eq!(thread_total, total as f64);
    assert!(text.contains("# TYPE lunar_lun_latency_seconds histogram"));
    assert!(text.contains("# HELP lunar_lun_commands_total "));

    // Paused shows as a gauge.
    d.call("stop", json!({}));
    assert_eq!(sample(&d.scrape(), &format!("lunar_lun_paused{{{l}}}")), 1.0);
    d.call("cont", json!({}));

    // Other paths and methods.
    let (code, _) = d.http("GET /nope HTTP/1.1\r\nHost: lunar\r\n\r\n");
    assert_eq!(code, 404);
    let (code, _) = d.http("POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(code, 405);
    let (code, _) = d.http("garbage\r\n\r\n");
    assert_eq!(code, 400);

    // lunarctl: the tables have the numbers, --json the raw ones.
    let human = d.ctl(&["status"]);
    println!("{human}");
    assert!(human.contains("MB RD") && human.contains("P99"), "{human}");
    // The tables (indented lines) fit 80 columns.
    for l in human.lines().filter(|l| l.starts_with("  ")) {
        assert!(l.chars().count() <= 80, "wider than 80 columns: {l:?}");
    }
    assert!(human.contains(&total.to_string()), "{human}");
    let raw: Value = serde_json::from_str(&d.ctl(&["--json", "status"])).unwrap();
    assert_eq!(lun_stats(&raw)["commands"]["total"], total);
}

/// Subscribes to `events` on a raw connection (bounded reads).
fn subscribe(d: &Metrics) -> BufReader<UnixStream> {
    let mut s = UnixStream::connect(&d.socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"events\"}\n").unwrap();
    let mut r = BufReader::new(s);
    let mut ack = String::new();
    r.read_line(&mut ack).unwrap();
    let ack: Value = serde_json::from_str(&ack).unwrap();
    assert_eq!(ack["result"]["subscribed"], true, "{ack}");
    r
}

/// The next event named `name`, within 20 s.
fn next_event(r: &mut BufReader<UnixStream>, name: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        assert!(Instant::now() < deadline, "no {name} event");
        let mut line = String::new();
        let n = r.read_line(&mut line).unwrap_or_else(|e| panic!("waiting for {name}: {e}"));
        assert!(n > 0, "event stream closed while waiting for {name}");
        let v: Value = serde_json::from_str(&line).unwrap();
        if v["params"]["event"] == name {
            return v["params"].clone();
        }
    }
}

#[test]
fn refused_logins_are_events() {
    let d = Metrics::start(&["--chap-user", "alice", "--chap-secret", "correct-horse-battery"]);
    let mut events = subscribe(&d);

    let wrong = tool("iscsi-inq").arg(d.url("alice%wrong-secret-123@", IQN)).output().unwrap();
    assert!(!wrong.status.success(), "a wrong CHAP secret was accepted");
    let e = next_event(&mut events, "session.login_failed");
    println!("wrong secret: {e}");
    assert_eq!(e["reason"], "chap");
    assert_eq!(e["target"], IQN);
    assert_eq!(e["chap_user"], "alice");
    assert_eq!(e["status"], "0x0201", "authentication failure");
    assert!(e["initiator"].as_str().unwrap().starts_with("iqn."), "{e}");
    assert!(e["peer"].as_str().unwrap().starts_with("127.0.0.1:"), "{e}");
    assert!(e["timestamp"].as_f64().unwrap() > 0.0);

    // The right secret logs in: a login, no failure.
    let ok = tool("iscsi-inq").arg(d.url("alice%correct-horse-battery@", IQN)).output().unwrap();
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    let login = next_event(&mut events, "session.login");
    assert_eq!(login["target"], IQN);

    // No such target: another reason.
    let bad =
        tool("iscsi-inq").arg(d.url("alice%correct-horse-battery@", "iqn.2026-11.dev.lunar:nope")).output().unwrap();
    assert!(!bad.status.success());
    let e = next_event(&mut events, "session.login_failed");
    println!("unknown target: {e}");
    assert_eq!(e["reason"], "not-found");
    assert_eq!(e["target"], "iqn.2026-11.dev.lunar:nope");

    // Written to the log too.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let log = std::fs::read_to_string(&d.log).unwrap();
        if log.matches("session.login_failed").count() >= 2 {
            break;
        }
        assert!(Instant::now() < deadline, "login failures not in the log: {log}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
