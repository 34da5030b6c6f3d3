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
//! | `lun.reopen` | `lun`, `target?` | `{lun, was_offline}`: the backend opened again (an rbd image as a new client); an offline LUN comes back |
//! | `lun.fault` | `lun`, `delay_ms?`, `read_errno?`, `write_errno?` (0 clears), `target?` | `{lun, fault}`: a `fault=on` LUN's injected delay and errors, at run time only (tests) |
//! | `config.show` | | `{toml, file, persistent, note?}`: the running configuration, CHAP secrets redacted |
//! | `config.save` | `path?` (absolute; default the `--config` file) | `{path}`: the running configuration written there |
//! | `target.add` | `name` | `{target, added}`: a target without LUN, ACL or CHAP |
//! | `target.remove` | `name` | `{target, removed, sessions_closed}`: its sessions asked to log out, then closed; its LUNs flushed and removed |
//! | `acl.add` / `acl.remove` | `initiator`, `target?`, `open?` (remove the last name) | `{target, acl}` |
//! | `chap.set` | `user`, `secret`, `mutual?`, `target?` or `discovery?` | `{target, chap}` (no secret) |
//! | `chap.clear` | `mutual?` (only the mutual pair), `target?` or `discovery?` | `{target, chap}` |
//! | `portal.add` / `portal.remove` | `address` | `{portal}` (the address bound) |
//! | `session.list` | | `[session]` |
//! | `alua.show` | `target?` (default: all) | `{gateway, gateways, luns: [{target, lun, local_group, local_state, groups: [{group, gateway, state, status, preferred, relative_ports}]}]}` |
//! | `alua.set` | `lun`, `group` (number or gateway name), `state`, `target?` | `{target, lun, group, gateway, state, changed, persistent: false}`: an implicit transition in this process (not written to the file) |
//!
//! The answer of a change (`lun.add`, `lun.remove`, `lun.resize`,
//! `lun.set_error_policy`, `lun.move`, and the methods of
//! [`super::manage`]: targets, ACLs, CHAP, portals) says whether it outlives the daemon:
//! `persistent: true` and `config: FILE` when it was written into the
//! `--config` file (before it was made: a change the file cannot take
//! fails with the reason and changes nothing), else `persistent: false`
//! and a `note` saying why. `lun.move` is never written: it places the
//! LUN's open queues, and queues opened later go on their connection's
//! thread.
//! | `session.kill` | `id` (the TSIH) | `{killed}` |
//! | `events` | | `{subscribed}`, then one `event` notification per line |

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use lunar_aio::RunState;
use lunar_core::{ErrorPolicies, ErrorPolicy, Target, TargetError, MAIN_LOOP};
use serde_json::{json, Value};

use super::events::{errno_name, session_json};
use super::rpc::{self, Call, Params, RpcError};
use super::Context;
use crate::config::persist::{self, LunValue};
use crate::config::{BackendSpec, LunConfig, WriteBack, MAX_LUNS_PER_TARGET, MAX_MEM_SIZE};

/// Longest delay `lun.fault` injects (10 minutes).
const MAX_FAULT_DELAY_MS: u64 = 600_000;

/// The environment variable that enables the test hooks (`debug.stall`).
pub const TEST_HOOKS: &str = "LUNARD_TEST_HOOKS";

/// Whether changes outlive the daemon, for `status` and the answers.
fn persistence_json(ctx: &Context) -> Value {
    match &ctx.config.write_back {
        WriteBack::File(p) => json!({ "persistent": true, "file": p.display().to_string() }),
        WriteBack::Off(why) => json!({ "persistent": false, "file": null, "note": why }),
    }
}

fn annotate(ctx: &Context, v: &mut Value) {
    if let (Value::Object(o), Value::Object(p)) = (v, persistence_json(ctx)) {
        for (k, x) in p {
            if !x.is_null() {
                o.insert(if k == "file" { "config".into() } else { k }, x);
            }
        }
    }
}

/// Makes a change that the configuration file follows: with a `--config`
/// file, `edit` is applied to the file as it is on disk now and the file
/// replaced (atomically, previous as `.bak`) *before* `apply` runs; a file
/// that cannot be read, edited or written fails the change with the
/// reason, and nothing changes. If `apply` then fails, the file is put
/// back. Without a file, `apply` alone. Changes are serialised.
pub(super) async fn change(
    ctx: &Context,
    edit: impl FnOnce(&mut toml_edit::DocumentMut) -> Result<(), String>,
    apply: impl std::future::Future<Output = Result<Value, RpcError>>,
) -> Result<Value, RpcError> {
    let _serial = ctx.write_lock.lock().await;
    let written = match &ctx.config.write_back {
        WriteBack::File(path) => {
            let fail = |why: String| MethodError::Config(format!("{why}; nothing was changed"));
            let old = std::fs::read_to_string(path)
                .map_err(|e| fail(format!("cannot read the configuration file {}: {e}", path.display())))?;
            let mut doc: toml_edit::DocumentMut = old
                .parse()
                .map_err(|e| fail(format!("cannot parse the configuration file {}: {e}", path.display())))?;
            edit(&mut doc).map_err(|e| fail(format!("cannot edit the configuration file {}: {e}", path.display())))?;
            let new = doc.to_string();
            persist::check_text(&new, path)
                .map_err(|e| fail(format!("the configuration file would not load after this change: {e}")))?;
            persist::write_atomic(path, &new, true).map_err(fail)?;
            Some((path, old))
        }
        WriteBack::Off(_) => None,
    };
    match apply.await {
        Ok(mut v) => {
            annotate(ctx, &mut v);
            Ok(v)
        }
        Err(mut e) => {
            if let Some((path, old)) = written {
                if let Err(w) = persist::write_atomic(path, &old, false) {
                    tracing::error!("putting the configuration file back after a failed change: {w}");
                    e.message = format!("{}; and the configuration file could not be put back: {w}", e.message);
                }
            }
            Err(e)
        }
    }
}

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
    #[error("a target named {0} already exists")]
    TargetExists(String),
    #[error("already listening on {0}")]
    PortalExists(std::net::SocketAddr),
    #[error("no portal {0} (the portals: {1})")]
    NoSuchPortal(std::net::SocketAddr, String),
    #[error("not supported: {0}")]
    NotSupported(String),
    #[error("{0}")]
    Backend(String),
    #[error("{0}")]
    Core(TargetError),
    /// The configuration file could not take the change (nothing changed).
    #[error("{0}")]
    Config(String),
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
            MethodError::Config(_) => -32008,
            MethodError::TargetExists(_) => -32009,
            MethodError::PortalExists(_) | MethodError::NoSuchPortal(..) => -32010,
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
            t.device(lun).ok_or(MethodError::NoSuchLun(lun))?;
            let apply = async {
                t.remove_device(lun).await.map_err(MethodError::from)?;
                ctx.luns.lock().unwrap_or_else(|e| e.into_inner()).remove(&(t.name().to_string(), lun));
                Ok(json!({ "lun": lun, "removed": true }))
            };
            change(ctx, |doc| persist::remove_lun(doc, t.name(), lun), apply).await
        }
        "lun.move" => {
            let p = Params::new(params, &["lun", "iothread", "target"])?;
            let t = select_one(ctx, p.opt_str("target")?)?;
            let (lun, thread) = (p.u64("lun")?, p.u64("iothread")?);
            let core_thread = usize::try_from(thread)
                .ok()
                .filter(|&n| n < ctx.iothreads)
                .ok_or(MethodError::NoSuchThread(thread, ctx.iothreads))?;
            t.device(lun).ok_or(MethodError::NoSuchLun(lun))?;
            // Written as the LUN's `iothread`: at the next start its queues
            // go there again (`Target::move_device` pins the LUN).
            let edit = |doc: &mut toml_edit::DocumentMut| {
                persist::set_lun_key(doc, t.name(), lun, "iothread", LunValue::Thread(thread), false)
            };
            let apply = async {
                t.move_device(lun, core_thread + 1).await.map_err(MethodError::from)?;
                if let Some(c) =
                    ctx.luns.lock().unwrap_or_else(|e| e.into_inner()).get_mut(&(t.name().to_string(), lun))
                {
                    c.iothread = Some(core_thread);
                }
                Ok(json!({ "lun": lun, "iothread": thread }))
            };
            change(ctx, edit, apply).await
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
            let edits: Vec<(&'static str, LunValue)> = [("rerror", r), ("werror", w)]
                .into_iter()
                .filter_map(|(k, p)| Some((k, LunValue::Policy(p?.name().parse().ok()?))))
                .collect();
            let edit = |doc: &mut toml_edit::DocumentMut| {
                for (k, v) in &edits {
                    persist::set_lun_key(doc, t.name(), lun, k, *v, false)?;
                }
                Ok(())
            };
            let apply = async {
                let old = dev.policies();
                let new = ErrorPolicies { read: r.unwrap_or(old.read), write: w.unwrap_or(old.write) };
                dev.set_policies(new);
                let mut luns = ctx.luns.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(c) = luns.get_mut(&(t.name().to_string(), lun)) {
                    c.rerror = new.read.name().parse().unwrap_or(c.rerror);
                    c.werror = new.write.name().parse().unwrap_or(c.werror);
                }
                Ok(json!({ "lun": lun, "rerror": new.read.name(), "werror": new.write.name() }))
            };
            change(ctx, edit, apply).await
        }
        "lun.fault" => {
            let p = Params::new(params, &["lun", "delay_ms", "read_errno", "write_errno", "target"])?;
            let t = select_one(ctx, p.opt_str("target")?)?;
            let lun = p.u64("lun")?;
            let errno = |key: &str| -> Result<Option<i32>, RpcError> {
                p.opt_u64(key)?
                    .map(|n| {
                        i32::try_from(n).ok().filter(|e| *e < 4096).ok_or_else(|| {
                            RpcError::invalid_params(format!("`{key}`: an errno below 4096, 0 for none"))
                        })
                    })
                    .transpose()
            };
            let (read, write) = (errno("read_errno")?, errno("write_errno")?);
            let delay = p.opt_u64("delay_ms")?;
            if delay.is_some_and(|d| d > MAX_FAULT_DELAY_MS) {
                return Err(RpcError::invalid_params(format!("`delay_ms`: at most {MAX_FAULT_DELAY_MS}")));
            }
            if delay.is_none() && read.is_none() && write.is_none() {
                return Err(RpcError::invalid_params("give `delay_ms`, `read_errno`, `write_errno` or several"));
            }
            let dev = t.device(lun).ok_or(MethodError::NoSuchLun(lun))?;
            let lunar_block::Backend::Fault(f) = dev.disk().backend() else {
                return Err(MethodError::NotSupported(format!(
                    "LUN {lun} has no fault injection: add it with `fault=on` in its spec"
                ))
                .into());
            };
            if let Some(ms) = delay {
                f.set_delay(Duration::from_millis(ms));
            }
            if let Some(e) = read {
                f.fail_reads(e);
            }
            if let Some(e) = write {
                f.fail_writes(e);
            }
            tracing::info!(target = %t.name(), lun, ?delay, ?read, ?write, "fault injection changed");
            Ok(json!({ "lun": lun, "fault": fault_json(dev.disk().backend()) }))
        }
        "lun.reopen" => {
            let p = Params::new(params, &["lun", "target"])?;
            let t = select_one(ctx, p.opt_str("target")?)?;
            let lun = p.u64("lun")?;
            let dev = t.device(lun).ok_or(MethodError::NoSuchLun(lun))?;
            let was_offline = dev.offline().is_some();
            t.reopen_device(lun).await.map_err(|e| match e {
                TargetError::Reopen(why) => MethodError::Backend(format!("reopen: {why}")),
                other => MethodError::from(other),
            })?;
            Ok(json!({ "lun": lun, "was_offline": was_offline }))
        }
        "lun.resize" => {
            let p = Params::new(params, &["lun", "size", "target"])?;
            let t = select_one(ctx, p.opt_str("target")?)?;
            let lun = p.u64("lun")?;
            let size = p.map_size()?;
            Ok(lun_resize(ctx, &t, lun, size).await?)
        }
        "config.show" => {
            Params::new(params, &[])?;
            let text = persist::to_toml(&ctx.running_config(), true).map_err(MethodError::Config)?;
            let mut v = json!({ "toml": text });
            annotate(ctx, &mut v);
            Ok(v)
        }
        "config.save" => {
            let p = Params::new(params, &["path"])?;
            let path = match (p.opt_str("path")?, &ctx.config.write_back) {
                (Some(path), _) => {
                    let path = std::path::PathBuf::from(path);
                    if !path.is_absolute() {
                        return Err(RpcError::invalid_params(
                            "`path` must be absolute (lunard's directory is not yours)",
                        ));
                    }
                    path
                }
                (None, WriteBack::File(f)) => f.clone(),
                (None, WriteBack::Off(_)) => {
                    return Err(RpcError::invalid_params("lunard runs without --config: give the `path` to save to"))
                }
            };
            let _serial = ctx.write_lock.lock().await;
            let text = persist::to_toml(&ctx.running_config(), false).map_err(MethodError::Config)?;
            persist::write_atomic(&path, &text, true).map_err(MethodError::Config)?;
            Ok(json!({ "path": path.display().to_string() }))
        }
        "target.add" => {
            let p = Params::new(params, &["name"])?;
            super::manage::target_add(ctx, p.str("name")?).await
        }
        "target.remove" => {
            let p = Params::new(params, &["name"])?;
            super::manage::target_remove(ctx, p.str("name")?).await
        }
        "acl.add" | "acl.remove" => {
            let p = Params::new(params, &["initiator", "target", "open"])?;
            super::manage::acl(ctx, method == "acl.add", &p).await
        }
        "chap.set" => {
            let p = Params::new(params, &["user", "secret", "mutual", "target", "discovery"])?;
            super::manage::chap(ctx, true, &p).await
        }
        "chap.clear" => {
            let p = Params::new(params, &["mutual", "target", "discovery"])?;
            super::manage::chap(ctx, false, &p).await
        }
        "alua.show" => super::alua::show(ctx, &Params::new(params, &["target"])?),
        "alua.set" => super::alua::set(ctx, &Params::new(params, &["lun", "group", "state", "target"])?).await,
        "portal.add" => super::manage::portal_add(ctx, &Params::new(params, &["address"])?).await,
        "portal.remove" => super::manage::portal_remove(ctx, &Params::new(params, &["address"])?).await,
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
        "debug.stall" if std::env::var_os(TEST_HOOKS).is_some() => {
            // Test hook (only with LUNARD_TEST_HOOKS set): blocks a core
            // thread, as a bug would, so that tests can see the watchdog
            // keep-alives stop.
            let p = Params::new(params, &["iothread", "ms"])?;
            let ms = p.u64("ms")?.min(60_000);
            let core = match p.opt_u64("iothread")? {
                None => MAIN_LOOP,
                Some(n) => usize::try_from(n)
                    .ok()
                    .filter(|&n| n < ctx.iothreads)
                    .map(|n| n + 1)
                    .ok_or(MethodError::NoSuchThread(n, ctx.iothreads))?,
            };
            let thread = ctx.threads.get(core).ok_or(MethodError::NoSuchThread(core as u64, ctx.iothreads))?;
            thread
                .schedule(move || std::thread::sleep(std::time::Duration::from_millis(ms)))
                .map_err(|e| MethodError::Backend(e.to_string()))?;
            Ok(json!({ "stalled": thread_json(core), "ms": ms }))
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

fn names(targets: &[Arc<Target>]) -> String {
    targets.iter().map(|t| t.name()).collect::<Vec<_>>().join(", ")
}

pub(super) fn select_one(ctx: &Context, name: Option<&str>) -> Result<Arc<Target>, MethodError> {
    let targets = ctx.targets();
    match name {
        Some(n) => targets.iter().find(|t| t.name() == n).cloned().ok_or_else(|| MethodError::NoSuchTarget(n.into())),
        None if targets.len() == 1 => Ok(targets[0].clone()),
        None => Err(MethodError::TargetNeeded(names(&targets))),
    }
}

fn select_all(ctx: &Context, name: Option<&str>) -> Result<Vec<Arc<Target>>, MethodError> {
    match name {
        Some(_) => Ok(vec![select_one(ctx, name)?]),
        None => Ok(ctx.targets()),
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
                    let why = [
                        (p.operator, "operator"),
                        (p.io_error.is_some(), "io-error"),
                        (p.resizing, "resizing"),
                        (p.reopening, "reopening"),
                    ];
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
                "offline": dev.offline().map(|errno| json!({ "errno": errno, "errno_name": errno_name(errno) })),
                "errors": errors,
                "fault": fault_json(disk.backend()),
                // This gateway's target port group and its state (`alua show` has them all).
                "alua": disk.alua().map(|a| json!({ "group": a.local_group(), "state": a.local_state().name() })),
                "stats": crate::metrics::stats_json(&dev.stats().snapshot()),
            }));
        }
        let access = super::manage::live_target(ctx, t.name());
        out.push(json!({
            "name": t.name(),
            "acl": access.as_ref().map(|a| a.allow_initiators.clone()).unwrap_or_default(),
            "chap": access.as_ref().map(super::manage::chap_json),
            "state": state_name(state),
            "paused_by": if state == RunState::Stopped { json!(pause.by.unwrap_or("operator")) } else { Value::Null },
            "luns": luns,
        }));
    }
    let discovery = ctx.live.lock().unwrap_or_else(|e| e.into_inner()).discovery_chap.clone();
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
        "limits": limits_json(ctx),
        "task_management": tmf_json(ctx),
        "config": persistence_json(ctx),
        "discovery_chap": {
            "enabled": discovery.is_some(),
            "user": discovery.as_ref().map(|c| c.user.clone()),
        },
    }))
}

/// What the fault injection of a `fault=on` LUN does now; null for others.
fn fault_json(b: &lunar_block::Backend) -> Value {
    match b {
        lunar_block::Backend::Fault(f) => json!({
            "delay_ms": f.delay().as_millis() as u64,
            "read_errno": f.read_errno(),
            "write_errno": f.write_errno(),
        }),
        _ => Value::Null,
    }
}

/// The iSCSI task management functions received and the responses sent.
fn tmf_json(ctx: &Context) -> Value {
    let c = ctx.server.tmf_counts();
    let map = |v: Vec<(&'static str, u64)>| -> serde_json::Map<String, Value> {
        v.into_iter().map(|(k, n)| (k.to_string(), json!(n))).collect()
    };
    json!({ "received": map(c.received()), "answered": map(c.answered()) })
}

/// The iSCSI resource limits in force and how often each was met.
fn limits_json(ctx: &Context) -> Value {
    let l = ctx.server.resource_limits();
    let hits: serde_json::Map<String, Value> =
        ctx.server.limit_hits().named().iter().map(|(k, v)| ((*k).to_string(), json!(v))).collect();
    json!({
        "iscsi": {
            "sessions_per_target": l.max_sessions_per_target,
            "connections_per_portal": l.max_connections_per_portal,
            "connections_per_address": l.max_connections_per_address,
            "cmd_window": l.cmd_window,
            "unsolicited_bytes": l.max_unsolicited_bytes,
            "buffered_bytes": l.max_buffered_bytes,
            "negotiation_timeout_s": l.negotiation_timeout.as_secs(),
            "poll_us": l.poll.as_micros() as u64,
            "polls_caught": ctx.server.polls_caught(),
            "hits": hits,
        },
        "vhost": ctx.vhost.iter().map(|v| {
            let hits: serde_json::Map<String, Value> =
                (v.hits)().named().iter().map(|(k, n)| ((*k).to_string(), json!(n))).collect();
            json!({
                "socket": v.socket.display().to_string(),
                "max_chain": v.limits.max_chain_descriptors,
                "max_request_bytes": v.limits.max_request_bytes,
                "max_inflight": v.limits.max_inflight_per_queue,
                "hits": hits,
            })
        }).collect::<Vec<_>>(),
    })
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
    // A file LUN given without `size` has the size of its file: nothing to
    // write; an rbd LUN has its image's size, kept by the cluster.
    let is_rbd = matches!(dev.disk().backend(), lunar_block::Backend::Rbd(_));
    let edit = |doc: &mut toml_edit::DocumentMut| {
        if is_rbd {
            return Ok(());
        }
        persist::set_lun_key(doc, t.name(), lun, "size", LunValue::Size(size), true)
    };
    let apply = async {
        let blocks = t.resize_device(lun, size).await.map_err(|e| match e {
            TargetError::Resize(lunar_scsi::ResizeError::Backend(b)) => MethodError::Backend(format!("resize: {b}")),
            other => MethodError::from(other),
        })?;
        if let Some(c) = ctx.luns.lock().unwrap_or_else(|e| e.into_inner()).get_mut(&key) {
            match &mut c.backend {
                BackendSpec::Mem { size: s } | BackendSpec::Null { size: s } => *s = size,
                BackendSpec::File { size: s, .. } => *s = s.map(|_| size),
                BackendSpec::Rbd(_) => {}
            }
        }
        let block_size = dev.disk().block_size();
        Ok(json!({ "lun": lun, "size": size, "blocks": blocks, "block_size": block_size }))
    };
    change(ctx, edit, apply).await
}

async fn lun_add(ctx: &Context, t: &Arc<Target>, spec: &str, lun: Option<u64>) -> Result<Value, RpcError> {
    let mut cfg = LunConfig::parse_spec(spec).map_err(|e| RpcError::invalid_params(format!("bad LUN spec: {e}")))?;
    // The file is named as lunard sees it, and so written to the configuration.
    if let BackendSpec::File { path, .. } = &mut cfg.backend {
        *path = std::path::absolute(&*path).map_err(|e| MethodError::Backend(format!("{}: {e}", path.display())))?;
    }
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
    if let Some(n) = cfg.iothread.filter(|&n| n >= ctx.iothreads) {
        return Err(MethodError::NoSuchThread(n as u64, ctx.iothreads).into());
    }
    let backend = crate::daemon::open_lun_backend(&cfg).map_err(MethodError::Backend)?;
    let policies = ErrorPolicies { read: crate::daemon::policy(cfg.rerror), write: crate::daemon::policy(cfg.werror) };
    let edit = |doc: &mut toml_edit::DocumentMut| persist::add_lun(doc, t.name(), lun, &cfg);
    let apply = async {
        let dev = t
            .add_device(lun, crate::daemon::disk_config(t.name(), lun, &cfg, ctx.config.alua()), backend, policies)
            .await
            .map_err(MethodError::from)?;
        if let Err(e) = crate::daemon::share_reservations(&dev, &cfg) {
            let _ = t.remove_device(lun).await;
            return Err(MethodError::Backend(e).into());
        }
        if let Some(n) = cfg.iothread {
            // Before any queue opens: every one goes to that thread.
            t.move_device(lun, n + 1).await.map_err(MethodError::from)?;
        }
        if let Some(g) = crate::ownership::Gateways::of(&ctx.config) {
            let d = dev.clone();
            // Cluster round trips: off the main loop.
            let _ = tokio::task::spawn_blocking(move || crate::ownership::attach(&d, &g)).await;
        }
        let size = dev.disk().num_blocks().saturating_mul(u64::from(dev.disk().block_size()));
        let description = cfg.describe();
        ctx.luns.lock().unwrap_or_else(|e| e.into_inner()).insert((t.name().to_string(), lun), cfg.clone());
        Ok(json!({ "target": t.name(), "lun": lun, "size": size, "description": description }))
    };
    change(ctx, edit, apply).await
}
