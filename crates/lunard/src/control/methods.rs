//! The methods of the control socket.
//!
//! I/O threads are numbered from 0 (as `iothread=` in a LUN SPEC); the core
//! numbers them from 1 (0 is its main loop). Every method that acts on one
//! target takes an optional `target` (its name); it may be left out when the
//! daemon serves one target. `stop`/`cont` without `target` act on all.
//!
//! | method | params | result |
//! |---|---|---|
//! | `status` | `target?` | run state, I/O threads, targets and LUNs (each with `stats`: see `crate::metrics::stats_json`), sessions |
//! | `stop` / `cont` | `target?`, `lun?` | `{state}` (with `lun`: `{lun, state}`, that LUN only) |
//! | `lun.add` | `spec`, `lun?`, `target?` | the new LUN |
//! | `lun.remove` | `lun`, `target?` | `{}` |
//! | `lun.move` | `lun`, `iothread`, `target?` | `{lun, iothread}` |
//! | `lun.set_error_policy` | `lun`, `rerror?`, `werror?`, `target?` | `{lun, rerror, werror}` |
//! | `lun.resize` | `lun`, `size` (bytes or "2G"), `target?` | `{lun, size, blocks, block_size}` |
//! | `session.list` | | `[session]` |
//! | `session.kill` | `id` (the TSIH) | `{killed}` |
//! | `events` | | `{subscribed}`, then one `event` notification per line |

use std::collections::BTreeSet;
use std::sync::Arc;

use lunar_aio::RunState;
use lunar_target::{ErrorPolicies, ErrorPolicy, Target, TargetError, MAIN_LOOP};
use serde_json::{json, Value};

use super::events::{errno_name, session_json};
use super::rpc::{self, Call, Params, RpcError};
use super::Context;
use crate::config::{BackendSpec, LunConfig, MAX_LUNS_PER_TARGET, MAX_MEM_SIZE};

/// Application errors (JSON-RPC codes from -32000 down).
#[derive(Debug, thiserror::Error)]
pub enum MethodError {
    #[error("no target named {0:?}")]
    NoSuchTarget(String),
    #[error("the daemon serves several targets ({0}): name one with `target`")]
    TargetNeeded(String),
    #[error("no LUN {0}")]
    NoSuchLun(u64),
    #[error("LUN {0} already exists")]
    LunExists(u64),
    #[error("no I/O thread {0} (there are {1}: 0..{1})")]
    NoSuchThread(u64, usize),
    #[error("no session {0}")]
    NoSuchSession(u64),
    #[error("not supported: {0}")]
    NotSupported(String),
    #[error("{0}")]
    Backend(String),
    #[error("{0}")]
    Core(TargetError),
}

impl MethodError {
    pub fn code(&self) -> i64 {
        match self {
            MethodError::Core(_) => -32000,
            MethodError::NoSuchTarget(_) | MethodError::TargetNeeded(_) => -32001,
            MethodError::NoSuchLun(_) => -32002,
            MethodError::LunExists(_) => -32003,
            MethodError::NoSuchThread(..) => -32004,
            MethodError::NoSuchSession(_) => -32005,
            MethodError::Backend(_) => -32006,
            MethodError::NotSupported(_) => -32007,
        }
    }
}

impl From<TargetError> for MethodError {
    fn from(e: TargetError) -> Self {
        match e {
            TargetError::NoSuchLun(l) => MethodError::NoSuchLun(l),
            TargetError::LunExists(l) => MethodError::LunExists(l),
            other => MethodError::Core(other),
        }
    }
}

impl From<MethodError> for RpcError {
    fn from(e: MethodError) -> Self {
        RpcError::new(e.code(), e.to_string())
    }
}

/// Runs one parsed call; `None` for a notification (no answer).
pub async fn answer(ctx: &Arc<Context>, call: Result<Call, (Value, RpcError)>) -> Option<Value> {
    let call = match call {
        Ok(c) => c,
        Err((id, e)) => return Some(rpc::error_response(&id, &e)),
    };
    let result = dispatch(ctx, &call.method, &call.params).await;
    let id = call.id?;
    Some(match result {
        Ok(v) => rpc::response(&id, v),
        Err(e) => rpc::error_response(&id, &e),
    })
}

async fn dispatch(
    ctx: &Arc<Context>,
    method: &str,
    params: &serde_json::Map<String, Value>,
) -> Result<Value, RpcError> {
    match method {
        "status" => {
            let p = Params::new(params, &["target"])?;
            Ok(status(ctx, p.opt_str("target")?).await?)
        }
        "stop" | "cont" => {
            let p = Params::new(params, &["target", "lun"])?;
            if let Some(lun) = p.opt_u64("lun")? {
                // One LUN: its commands are held (stop) or resume (cont); the others go on.
                let t = select_one(ctx, p.opt_str("target")?)?;
                if method == "stop" {
                    t.stop_device(lun).await.map_err(MethodError::from)?;
                } else {
                    t.cont_device(lun).await.map_err(MethodError::from)?;
                }
                return Ok(json!({ "lun": lun, "state": if method == "stop" { "paused" } else { "running" } }));
            }
            let targets = select_all(ctx, p.opt_str("target")?)?;
            for t in &targets {
                if method == "stop" {
                    ctx.set_paused_by_operator(t.name());
                    t.stop().await.map_err(MethodError::from)?;
                } else {
                    t.cont().await.map_err(MethodError::from)?;
                }
            }
            Ok(json!({ "state": if method == "stop" { "stopped" } else { "running" } }))
        }
        "lun.add" => {
            let p = Params::new(params, &["spec", "lun", "target"])?;
            let t = select_one(ctx, p.opt_str("target")?)?;
            Ok(lun_add(ctx, &t, p.str("spec")?, p.opt_u64("lun")?).await?)
        }
        "lun.remove" => {
            let p = Params::new(params, &["lun", "target"])?;
            let t = select_one(ctx, p.opt_str("target")?)?;
            let lun = p.u64("lun")?;
            t.remove_device(lun).await.map_err(MethodError::from)?;
            ctx.luns.lock().unwrap_or_else(|e| e.into_inner()).remove(&(t.name().to_string(), lun));
            Ok(json!({ "lun": lun, "removed": true }))
        }
        "lun.move" => {
            let p = Params::new(params, &["lun", "iothread", "target"])?;
            let t = select_one(ctx, p.opt_str("target")?)?;
            let (lun, thread) = (p.u64("lun")?, p.u64("iothread")?);
            let core_thread = usize::try_from(thread)
                .ok()
                .filter(|&n| n < ctx.iothreads)
                .ok_or(MethodError::NoSuchThread(thread, ctx.iothreads))?;
            t.move_device(lun, core_thread + 1).await.map_err(MethodError::from)?;
            Ok(json!({ "lun": lun, "iothread": thread }))
        }
        "lun.set_error_policy" => {
            let p = Params::new(params, &["lun", "rerror", "werror", "target"])?;
            let t = select_one(ctx, p.opt_str("target")?)?;
            let lun = p.u64("lun")?;
            let parse = |key: &str| -> Result<Option<ErrorPolicy>, RpcError> {
                p.opt_str(key)?
                    .map(|s| s.parse::<ErrorPolicy>().map_err(|e| RpcError::invalid_params(format!("`{key}`: {e}"))))
                    .transpose()
            };
            let (r, w) = (parse("rerror")?, parse("werror")?);
            if r.is_none() && w.is_none() {
                return Err(RpcError::invalid_params("give `rerror`, `werror` or both"));
            }
            let dev = t.device(lun).ok_or(MethodError::NoSuchLun(lun))?;
            let old = dev.policies();
            let new = ErrorPolicies { read: r.unwrap_or(old.read), write: w.unwrap_or(old.write) };
            dev.set_policies(new);
            if let Some(c) = ctx.luns.lock().unwrap_or_else(|e| e.into_inner()).get_mut(&(t.name().to_string(), lun)) {
                c.rerror = new.read.name().parse().unwrap_or(c.rerror);
                c.werror = new.write.name().parse().unwrap_or(c.werror);
            }
            Ok(json!({ "lun": lun, "rerror": new.read.name(), "werror": new.write.name() }))
        }
        "lun.resize" => {
            let p = Params::new(params, &["lun", "size", "target"])?;
            let t = select_one(ctx, p.opt_str("target")?)?;
            let lun = p.u64("lun")?;
            let size = p.map_size()?;
            Ok(lun_resize(ctx, &t, lun, size).await?)
        }
        "session.list" => {
            Params::new(params, &[])?;
            Ok(Value::Array(ctx.server.sessions().iter().map(session_json).collect()))
        }
        "session.kill" => {
            let p = Params::new(params, &["id"])?;
            let id = p.u64("id")?;
            let killed = u16::try_from(id).is_ok_and(|tsih| ctx.server.kill_session(tsih));
            if !killed {
                return Err(MethodError::NoSuchSession(id).into());
            }
            Ok(json!({ "killed": id }))
        }
        "events" => Err(RpcError::new(rpc::INVALID_REQUEST, "`events` must be sent alone, with an id, not in a batch")),
        other => Err(RpcError::new(rpc::METHOD_NOT_FOUND, format!("method not found: {other:?}"))),
    }
}

impl Params<'_> {
    /// `size`: bytes as an integer, or a string with a suffix ("2G").
    fn map_size(&self) -> Result<u64, RpcError> {
        if let Ok(Some(n)) = self.opt_u64("size") {
            return Ok(n);
        }
        let s =
            self.opt_str("size").map_err(|_| RpcError::invalid_params("`size` must be bytes or a string like 2G"))?;
        let s = s.ok_or_else(|| RpcError::invalid_params("missing parameter `size`"))?;
        crate::config::parse_size(s).map_err(|e| RpcError::invalid_params(format!("`size`: {e}")))
    }
}

fn names(ctx: &Context) -> String {
    ctx.targets.iter().map(|t| t.name()).collect::<Vec<_>>().join(", ")
}

fn select_one(ctx: &Context, name: Option<&str>) -> Result<Arc<Target>, MethodError> {
    match name {
        Some(n) => {
            ctx.targets.iter().find(|t| t.name() == n).cloned().ok_or_else(|| MethodError::NoSuchTarget(n.into()))
        }
        None if ctx.targets.len() == 1 => Ok(ctx.targets[0].clone()),
        None => Err(MethodError::TargetNeeded(names(ctx))),
    }
}

fn select_all(ctx: &Context, name: Option<&str>) -> Result<Vec<Arc<Target>>, MethodError> {
    match name {
        Some(_) => Ok(vec![select_one(ctx, name)?]),
        None => Ok(ctx.targets.clone()),
    }
}

fn state_name(s: RunState) -> &'static str {
    match s {
        RunState::Running => "running",
        RunState::Stopped => "stopped",
    }
}

/// A core thread number as the control plane shows it.
fn thread_json(core: usize) -> Value {
    if core == MAIN_LOOP {
        json!("main")
    } else {
        json!(core - 1)
    }
}

async fn status(ctx: &Context, only: Option<&str>) -> Result<Value, MethodError> {
    let targets = select_all(ctx, only)?;
    let mut per_thread = vec![(0usize, BTreeSet::new()); ctx.iothreads];
    let mut out = Vec::new();
    for t in &targets {
        let state = t.run_state();
        let pause = ctx.pause_of(t.name());
        let mut luns = Vec::new();
        for dev in t.devices() {
            let queues = dev.queues();
            let mut threads = BTreeSet::new();
            for q in &queues {
                threads.insert(q.io_thread());
                if let Some(slot) = q.io_thread().checked_sub(1).and_then(|i| per_thread.get_mut(i)) {
                    slot.0 += 1;
                    slot.1.insert(format!("{}/{}", t.name(), dev.lun()));
                }
            }
            let in_flight = t.in_flight(&dev).await;
            let disk = dev.disk();
            let cfg =
                ctx.luns.lock().unwrap_or_else(|e| e.into_inner()).get(&(t.name().to_string(), dev.lun())).cloned();
            let path = cfg.as_ref().and_then(|c| match &c.backend {
                BackendSpec::File { path, .. } => Some(path.display().to_string()),
                _ => None,
            });
            let policies = dev.policies();
            // A LUN pauses on its own (operator, I/O error, resize) or with its target.
            let lun_pause = dev.paused();
            let errors: Vec<Value> = lun_pause
                .and_then(|p| p.io_error)
                .map(|e| {
                    json!({
                        "errno": e.errno, "errno_name": errno_name(e.errno),
                        "direction": if e.write { "write" } else { "read" }, "error": format!("{:?}", e.kind),
                    })
                })
                .into_iter()
                .collect();
            let paused_reason = match (lun_pause, state) {
                (Some(p), _) => {
                    let why = [(p.operator, "operator"), (p.io_error.is_some(), "io-error"), (p.resizing, "resizing")];
                    json!(why.iter().filter(|w| w.0).map(|w| w.1).collect::<Vec<_>>().join(","))
                }
                (None, RunState::Running) => Value::Null,
                (None, RunState::Stopped) => json!(pause.by.unwrap_or("operator")),
            };
            luns.push(json!({
                "lun": dev.lun(),
                "backend": disk.backend().kind_name(),
                "path": path,
                "description": cfg.as_ref().map(LunConfig::describe),
                "size": disk.num_blocks().saturating_mul(u64::from(disk.block_size())),
                "block_size": disk.block_size(),
                "blocks": disk.num_blocks(),
                "readonly": disk.config().readonly,
                "rerror": policies.read.name(),
                "werror": policies.write.name(),
                "queues": queues.iter().map(|q| json!({
                    "id": q.id(), "iothread": thread_json(q.io_thread()), "held_by": thread_json(q.holder()),
                })).collect::<Vec<_>>(),
                "iothreads": threads.into_iter().map(thread_json).collect::<Vec<_>>(),
                "in_flight": in_flight,
                "paused": state == RunState::Stopped || lun_pause.is_some(),
                "paused_reason": paused_reason,
                "errors": errors,
                "stats": crate::metrics::stats_json(&dev.stats().snapshot()),
            }));
        }
        out.push(json!({
            "name": t.name(),
            "state": state_name(state),
            "paused_by": if state == RunState::Stopped { json!(pause.by.unwrap_or("operator")) } else { Value::Null },
            "luns": luns,
        }));
    }
    let states: BTreeSet<&str> = targets.iter().map(|t| state_name(t.run_state())).collect();
    let state = match states.len() {
        1 => states.into_iter().next().unwrap_or("running"),
        0 => "running",
        _ => "mixed",
    };
    Ok(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "pid": std::process::id(),
        "control": ctx.socket.display().to_string(),
        "state": state,
        "iothreads": per_thread.into_iter().enumerate().map(|(i, (queues, luns))| json!({
            "iothread": i, "queues": queues, "luns": luns.into_iter().collect::<Vec<_>>(),
            "stats": crate::metrics::stats_json(&crate::metrics::thread_stats(ctx, i)),
        })).collect::<Vec<_>>(),
        "targets": out,
        "portals": ctx.server.portals().iter().map(|p| p.to_string()).collect::<Vec<_>>(),
        "connections": ctx.server.connections(),
        "sessions": ctx.server.sessions().iter().map(session_json).collect::<Vec<_>>(),
    }))
}

async fn lun_resize(ctx: &Context, t: &Arc<Target>, lun: u64, size: u64) -> Result<Value, RpcError> {
    let dev = t.device(lun).ok_or(MethodError::NoSuchLun(lun))?;
    let key = (t.name().to_string(), lun);
    let is_mem = ctx
        .luns
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&key)
        .is_some_and(|c| matches!(c.backend, BackendSpec::Mem { .. }));
    if is_mem && size > MAX_MEM_SIZE {
        return Err(RpcError::invalid_params(format!("`size`: a mem LUN is at most {MAX_MEM_SIZE} bytes")));
    }
    dev.disk().check_resize(size).map_err(|e| RpcError::invalid_params(format!("`size`: {e}")))?;
    let blocks = t.resize_device(lun, size).await.map_err(|e| match e {
        TargetError::Resize(lunar_scsi::ResizeError::Backend(b)) => MethodError::Backend(format!("resize: {b}")),
        other => MethodError::from(other),
    })?;
    if let Some(c) = ctx.luns.lock().unwrap_or_else(|e| e.into_inner()).get_mut(&key) {
        match &mut c.backend {
            BackendSpec::Mem { size: s } | BackendSpec::Null { size: s } => *s = size,
            BackendSpec::File { size: s, .. } => *s = s.map(|_| size),
        }
    }
    let block_size = dev.disk().block_size();
    Ok(json!({ "lun": lun, "size": size, "blocks": blocks, "block_size": block_size }))
}

async fn lun_add(ctx: &Context, t: &Arc<Target>, spec: &str, lun: Option<u64>) -> Result<Value, RpcError> {
    let cfg = LunConfig::parse_spec(spec).map_err(|e| RpcError::invalid_params(format!("bad LUN spec: {e}")))?;
    if cfg.controller.is_some() {
        return Err(MethodError::NotSupported(
            "`controller=` in lun.add: a hot-added LUN goes to every iSCSI portal, and to the vhost-user \
                 controller when lunard serves exactly one"
                .into(),
        )
        .into());
    }
    if let Some(n) = cfg.iothread.filter(|&n| n >= ctx.iothreads) {
        return Err(MethodError::NoSuchThread(n as u64, ctx.iothreads).into());
    }
    let existing = t.luns();
    let lun = match lun {
        Some(n) => n,
        None => (0u64..).find(|n| !existing.contains(n)).unwrap_or(0),
    };
    if lun >= MAX_LUNS_PER_TARGET as u64 {
        return Err(RpcError::invalid_params(format!("`lun` must be below {MAX_LUNS_PER_TARGET}")));
    }
    if existing.contains(&lun) {
        return Err(MethodError::LunExists(lun).into());
    }
    if let BackendSpec::File { path, .. } = &cfg.backend {
        let luns = ctx.luns.lock().unwrap_or_else(|e| e.into_inner());
        let clash = luns.iter().find(|(_, c)| {
            matches!(&c.backend, BackendSpec::File { path: p, .. } if p == path) && !(c.readonly && cfg.readonly)
        });
        if let Some(((tn, l), _)) = clash {
            return Err(MethodError::Backend(format!(
                "{} is already used by target {tn} LUN {l}; a file may back several LUNs only if all are readonly",
                path.display()
            ))
            .into());
        }
    }
    let backend = crate::daemon::open_backend(&cfg.backend, cfg.readonly).map_err(MethodError::Backend)?;
    let policies = ErrorPolicies { read: crate::daemon::policy(cfg.rerror), write: crate::daemon::policy(cfg.werror) };
    let dev = t
        .add_device(lun, crate::daemon::disk_config(t.name(), lun, &cfg), backend, policies)
        .await
        .map_err(MethodError::from)?;
    let size = dev.disk().num_blocks().saturating_mul(u64::from(dev.disk().block_size()));
    let description = cfg.describe();
    ctx.luns.lock().unwrap_or_else(|e| e.into_inner()).insert((t.name().to_string(), lun), cfg);
    Ok(json!({ "target": t.name(), "lun": lun, "size": size, "description": description }))
}
