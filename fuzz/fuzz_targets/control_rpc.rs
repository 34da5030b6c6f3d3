//! The control socket's JSON-RPC requests, parsed and dispatched against a
//! running daemon.
//!
//! One daemon is started in the fuzzing process (2 I/O threads, an iSCSI
//! portal on 127.0.0.1 with an ephemeral port, LUN 0 = 16 MiB `mem`, LUN 1 =
//! 1 GiB `null`); its control plane `Context` is what the socket serves.
//! Input: lines, as a client writes them on the socket. Each line goes
//! through `rpc::parse_line` and then `methods::answer` (parameter decoding
//! and the method itself: status, stop/cont of the target or a LUN,
//! lun.add/remove/move/resize/set_error_policy, session.list/kill), exactly
//! as `serve_client` does (`events` excepted: it streams until the client
//! goes away). Every answer must serialise to one JSON line that parses
//! back, carry the request's id, and be a result or an error object.
//!
//! Kept out: `lun.add` of a spec whose backend is not `mem` or `null` (the
//! fuzzer would create and write files). After an input that changed the
//! daemon, it is put back as it started (running, LUNs 0 and 1 only, their
//! sizes and error policies) so that inputs do not depend on each other.
#![no_main]

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use lunard::config::{Config, LunConfig};
use lunard::control::methods::answer;
use lunard::control::rpc::{parse_line, Call, Incoming, RpcError};
use lunard::control::Context;
use lunard::daemon::Daemon;
use serde_json::{json, Value};

const MEM_SIZE: u64 = 16 << 20;
const NULL_SIZE: u64 = 1 << 30;

struct World {
    /// Kept (never dropped) so that the daemon runs, and so that the leak
    /// checker sees its memory as reachable.
    _daemon: std::sync::Mutex<Daemon>,
    ctx: Arc<Context>,
    targets: Vec<Arc<lunar_core::Target>>,
    rt: tokio::runtime::Runtime,
}

fn world() -> &'static World {
    static W: OnceLock<World> = OnceLock::new();
    W.get_or_init(|| {
        let sock = std::env::temp_dir().join(format!("lunar-fuzz-{}.sock", std::process::id()));
        let args = [
            "lunard".to_string(),
            "--iothreads".into(),
            "2".into(),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--lun".into(),
            format!("backend=mem,size={MEM_SIZE}"),
            "--lun".into(),
            format!("backend=null,size={NULL_SIZE}"),
            "--control".into(),
            sock.display().to_string(),
        ];
        let config = Config::from_args(args).expect("fuzz daemon configuration");
        let daemon = Daemon::start(&config).expect("fuzz daemon");
        let ctx = Context::new(&config, daemon.targets.clone(), daemon.server.handle(), Vec::new());
        let targets = daemon.targets.clone();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        World { _daemon: std::sync::Mutex::new(daemon), ctx, targets, rt }
    })
}

/// Whether the call may run here: a `lun.add` only of RAM or null LUNs;
/// not the changes of targets, ACLs, CHAP and portals, which `restore`
/// does not undo (a second target would make every later LUN call need
/// `target`; a portal could be bound beyond loopback). tests/service.rs
/// drives those.
fn allowed(call: &Call) -> bool {
    if ["target.", "acl.", "chap.", "portal."].iter().any(|p| call.method.starts_with(p)) {
        return false;
    }
    if call.method != "lun.add" {
        return true;
    }
    match call.params.get("spec").and_then(Value::as_str).map(LunConfig::parse_spec) {
        Some(Ok(cfg)) => matches!(cfg.backend.kind(), "mem" | "null"),
        // Refused by the method itself: let it refuse.
        _ => true,
    }
}

const MUTATING: &[&str] =
    &["stop", "cont", "lun.add", "lun.remove", "lun.move", "lun.resize", "lun.set_error_policy", "session.kill"];

/// `a` and `b` equal, numbers that are not integers up to the last
/// digits (serde_json's float parsing is not correctly rounded: an id of
/// 4.4444444444440004e39 reads back as 4.444444444444e39).
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) if x.is_f64() || y.is_f64() => {
            let (x, y) = (x.as_f64().unwrap_or(f64::NAN), y.as_f64().unwrap_or(f64::NAN));
            x == y || (x - y).abs() <= x.abs().max(y.abs()) * 1e-15
        }
        (Value::Array(x), Value::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same(x, y)),
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        _ => a == b,
    }
}

/// Checks one answer as `serve_client` would write it.
fn check_answer(call_id: Option<&Value>, v: &Value) {
    let line = v.to_string();
    assert!(!line.contains('\n'), "an answer is one line: {line}");
    let back: Value = serde_json::from_str(&line).expect("an answer parses back");
    assert!(same(&back, v), "{line} parses back as {back}");
    assert_eq!(v["jsonrpc"], "2.0");
    let (has_result, has_error) = (v.get("result").is_some(), v.get("error").is_some());
    assert!(has_result != has_error, "result xor error: {line}");
    if has_error {
        assert!(v["error"]["code"].is_i64() && v["error"]["message"].is_string(), "{line}");
    }
    if let Some(id) = call_id {
        assert_eq!(&v["id"], id);
    }
}

async fn run(ctx: &Arc<Context>, call: Result<Call, (Value, RpcError)>, mutated: &mut bool) {
    let (id, method) = match &call {
        Ok(c) => {
            if c.method == "events" || !allowed(c) {
                return;
            }
            (c.id.clone(), Some(c.method.clone()))
        }
        Err(_) => (None, None),
    };
    let is_call = method.is_some();
    let answered = answer(ctx, call).await;
    if let Some(m) = &method {
        *mutated |= MUTATING.contains(&m.as_str());
    }
    match answered {
        Some(v) => check_answer(id.as_ref(), &v),
        None => assert!(is_call && id.is_none(), "only notifications go unanswered"),
    }
}

async fn call(ctx: &Arc<Context>, method: &str, params: Value) {
    let v = json!({ "jsonrpc": "2.0", "id": 0, "method": method, "params": params });
    let Incoming::Single(c) = parse_line(v.to_string().as_bytes()) else { unreachable!() };
    let _ = answer(ctx, c).await;
}

/// Puts the daemon back as it started.
async fn restore(w: &World) {
    let ctx = &w.ctx;
    call(ctx, "cont", json!({})).await;
    for lun in w.targets[0].luns().into_iter().filter(|&l| l > 1) {
        call(ctx, "lun.remove", json!({ "lun": lun })).await;
    }
    call(ctx, "lun.add", json!({ "lun": 0, "spec": format!("backend=mem,size={MEM_SIZE}") })).await;
    call(ctx, "lun.add", json!({ "lun": 1, "spec": format!("backend=null,size={NULL_SIZE}") })).await;
    for (lun, size) in [(0u64, MEM_SIZE), (1, NULL_SIZE)] {
        call(ctx, "cont", json!({ "lun": lun })).await;
        call(ctx, "lun.resize", json!({ "lun": lun, "size": size })).await;
        call(ctx, "lun.set_error_policy", json!({ "lun": lun, "rerror": "report", "werror": "enospc" })).await;
    }
}

fuzz_target!(|data: &[u8]| {
    let w = world();
    let local = tokio::task::LocalSet::new();
    local.block_on(&w.rt, async {
        let mut mutated = false;
        for line in data.split(|&b| b == b'\n').take(16) {
            match parse_line(line) {
                Incoming::Invalid(e) => {
                    let v = lunard::control::rpc::error_response(&Value::Null, &e);
                    check_answer(None, &v);
                }
                Incoming::Single(c) => run(&w.ctx, c, &mut mutated).await,
                Incoming::Batch(calls) => {
                    for c in calls.into_iter().take(64) {
                        run(&w.ctx, c, &mut mutated).await;
                    }
                }
            }
        }
        if mutated {
            restore(w).await;
        }
    });
});
