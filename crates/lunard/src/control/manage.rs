//! The methods that change what lunard serves beyond LUNs: targets, their
//! ACLs and CHAP, and the portals. Each is written back into the
//! `--config` file like the LUN changes ([`super::methods`]'s `change`:
//! the file first, then the daemon; a file that cannot take the change
//! fails it and nothing changes).
//!
//! How the iSCSI server sees a change: its table of targets (name, ACL,
//! authentication, core) is immutable and swapped whole
//! (`ServerHandle::add_target`, `update_target`, `remove_target`); logins
//! and discovery read it without a lock, the I/O path never does (a
//! session holds its target's entry). So:
//!
//! * `target.add`: a target without LUN, ACL or CHAP (add them next).
//! * `target.remove`: discovery and new logins stop seeing it at once; its
//!   sessions are asked to log out (Async Message, event 1) and closed
//!   after `LOGOUT_GRACE`, their commands complete or are aborted; its
//!   LUNs are flushed and removed. The last target cannot be removed, nor
//!   the first while vhost-user controllers serve it.
//! * `acl.add` / `acl.remove`: the initiator names allowed to log in
//!   (empty: every initiator). A session whose initiator the new list
//!   leaves out is asked to log out and closed. Removing the last name
//!   would open the target to everyone: it needs `open: true`. There is
//!   no per-initiator LUN masking: every allowed initiator sees every LUN
//!   of the target (give initiators that must see different LUNs
//!   different targets).
//! * `chap.set` / `chap.clear`: new logins authenticate with the new
//!   secret; sessions that logged in before go on. With `discovery`, the
//!   pair discovery sessions must use (not written back when it comes
//!   from `--discovery-chap-*`, which wins over the file). Secrets are never
//!   answered, shown by `status` or printed by `config.show` (which shows
//!   `<redacted>`); they live in the configuration file (mode 0600).
//! * `portal.add` / `portal.remove`: a listener started (bound before the
//!   file is written, so that port 0 is written as the port bound) or
//!   stopped; connections accepted through a removed portal go on. With
//!   `--listen` on the command line (which replaces the file's `listen`)
//!   portal changes are not written back, and their answer says so.

use std::net::SocketAddr;
use std::sync::Arc;

use lunar_core::{Target, TargetError};
use lunar_iscsi::server::{ServerError, TargetEntry};
use serde_json::{json, Value};

use super::methods::{change, MethodError};
use super::rpc::{Params, RpcError};
use super::Context;
use crate::config::persist;
use crate::config::{check_iscsi_name, Chap, TargetConfig, WriteBack};

/// The CHAP settings of a target as `status` and the answers show them:
/// whether it is on and the user names, never a secret.
pub(crate) fn chap_json(t: &TargetConfig) -> Value {
    json!({
        "enabled": t.chap.is_some(),
        "user": t.chap.as_ref().map(|c| c.user.clone()),
        "mutual": t.mutual_chap.is_some(),
        "mutual_user": t.mutual_chap.as_ref().map(|c| c.user.clone()),
    })
}

/// The configuration of target `name` as it runs now (LUNs left out).
pub(crate) fn live_target(ctx: &Context, name: &str) -> Option<TargetConfig> {
    ctx.live.lock().unwrap_or_else(|e| e.into_inner()).targets.iter().find(|t| t.name == name).cloned()
}

fn set_live_target(ctx: &Context, tc: &TargetConfig) {
    let mut live = ctx.live.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(t) = live.targets.iter_mut().find(|t| t.name == tc.name) {
        *t = tc.clone();
    }
}

fn server_error(e: ServerError) -> MethodError {
    match e {
        ServerError::NoSuchTarget(n) => MethodError::NoSuchTarget(n),
        ServerError::TargetExists(n) => MethodError::TargetExists(n),
        other => MethodError::Backend(other.to_string()),
    }
}

/// Runs `apply` like `change` does, but writes nothing: the answer says
/// `persistent: false` with `note`.
async fn unwritten(
    ctx: &Context,
    note: &str,
    apply: impl std::future::Future<Output = Result<Value, RpcError>>,
) -> Result<Value, RpcError> {
    let _serial = ctx.write_lock.lock().await;
    let mut v = apply.await?;
    if let Value::Object(o) = &mut v {
        o.insert("persistent".into(), json!(false));
        o.insert("note".into(), json!(note));
    }
    Ok(v)
}

/// Makes the iSCSI server follow `tc` (its ACL and CHAP), and the
/// running configuration too. Sessions the new ACL leaves out end.
async fn apply_access(ctx: &Context, tc: &TargetConfig) -> Result<(), MethodError> {
    let login = crate::daemon::login_target(tc);
    ctx.server.update_target(&tc.name, move |c| *c = login.clone()).await.map_err(server_error)?;
    set_live_target(ctx, tc);
    Ok(())
}

pub(super) async fn target_add(ctx: &Arc<Context>, name: &str) -> Result<Value, RpcError> {
    check_iscsi_name(name).map_err(|r| RpcError::invalid_params(format!("`name` {name:?}: {r}")))?;
    if ctx.targets().iter().any(|t| t.name() == name) {
        return Err(MethodError::TargetExists(name.into()).into());
    }
    let threads = ctx.thread_set.clone().ok_or_else(|| MethodError::Backend("the daemon is stopping".into()))?;
    let tc = TargetConfig::new(name);
    let apply = async {
        let core = Target::with_threads(name, threads);
        super::events::forward(ctx.clone(), name.to_string(), core.events());
        let entry = TargetEntry { config: crate::daemon::login_target(&tc), core: core.clone() };
        ctx.server.add_target(entry).map_err(server_error)?;
        ctx.targets.lock().unwrap_or_else(|e| e.into_inner()).push(core);
        ctx.live.lock().unwrap_or_else(|e| e.into_inner()).targets.push(tc.clone());
        super::events::publish(ctx, json!({ "event": "target.added", "target": name }));
        Ok(json!({ "target": name, "added": true }))
    };
    change(ctx, |doc| persist::add_target(doc, name), apply).await
}

pub(super) async fn target_remove(ctx: &Arc<Context>, name: &str) -> Result<Value, RpcError> {
    let targets = ctx.targets();
    let index = targets.iter().position(|t| t.name() == name).ok_or_else(|| MethodError::NoSuchTarget(name.into()))?;
    if targets.len() == 1 {
        return Err(MethodError::NotSupported(format!(
            "removing {name}, the only target: lunard serves at least one (add another target first)"
        ))
        .into());
    }
    if index == 0 && !ctx.vhost.is_empty() {
        return Err(MethodError::NotSupported(format!(
            "removing {name}: its LUNs are served over vhost-user too (the first target is), and \
             vhost-user controllers are not changed at run time"
        ))
        .into());
    }
    let core = targets[index].clone();
    let apply = async {
        let sessions = ctx.server.sessions().iter().filter(|s| s.target == name).count();
        ctx.server.remove_target(name).await.map_err(server_error)?;
        for dev in core.devices() {
            if let Err(e) = flush(ctx, &dev).await {
                tracing::error!(target = name, lun = dev.lun(), "flush before removal: {e}");
            }
            match core.remove_device(dev.lun()).await {
                Ok(()) | Err(TargetError::NoSuchLun(_)) => {}
                Err(e) => return Err(MethodError::from(e).into()),
            }
        }
        ctx.targets.lock().unwrap_or_else(|e| e.into_inner()).retain(|t| !Arc::ptr_eq(t, &core));
        ctx.luns.lock().unwrap_or_else(|e| e.into_inner()).retain(|(t, _), _| t != name);
        ctx.live.lock().unwrap_or_else(|e| e.into_inner()).targets.retain(|t| t.name != name);
        ctx.pauses.lock().unwrap_or_else(|e| e.into_inner()).remove(name);
        super::events::publish(ctx, json!({ "event": "target.removed", "target": name }));
        Ok(json!({ "target": name, "removed": true, "sessions_closed": sessions }))
    };
    change(ctx, |doc| persist::remove_target(doc, name), apply).await
}

/// Flushes a device's backend on I/O thread 1 (the backends submit from
/// the I/O threads).
async fn flush(ctx: &Context, dev: &Arc<lunar_core::Device>) -> Result<(), String> {
    let backend = dev.disk().backend().clone();
    let io = ctx.threads.get(1).ok_or("no I/O thread")?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    io.spawn(move || async move {
        let _ = tx.send(backend.flush().await);
    })
    .map_err(|e| e.to_string())?;
    match rx.await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(_) => Err("the I/O thread went away".into()),
    }
}

/// The target a change of access rules applies to: named, or the only one.
fn access_target(ctx: &Context, p: &Params<'_>) -> Result<TargetConfig, RpcError> {
    let t = super::methods::select_one(ctx, p.opt_str("target")?)?;
    live_target(ctx, t.name()).ok_or_else(|| MethodError::NoSuchTarget(t.name().into()).into())
}

pub(super) async fn acl(ctx: &Arc<Context>, add: bool, p: &Params<'_>) -> Result<Value, RpcError> {
    let initiator = p.str("initiator")?;
    check_iscsi_name(initiator).map_err(|r| RpcError::invalid_params(format!("`initiator` {initiator:?}: {r}")))?;
    let open = p.flag("open")?;
    let mut tc = access_target(ctx, p)?;
    let present = tc.allow_initiators.iter().any(|i| i.eq_ignore_ascii_case(initiator));
    if add {
        if present {
            return Err(RpcError::invalid_params(format!("{initiator} is already allowed on {}", tc.name)));
        }
        tc.allow_initiators.push(initiator.to_string());
    } else {
        if !present {
            let now = if tc.allow_initiators.is_empty() {
                "its ACL is empty: every initiator is allowed".to_string()
            } else {
                format!("it allows {}", tc.allow_initiators.join(", "))
            };
            return Err(RpcError::invalid_params(format!("{initiator} is not in the ACL of {}: {now}", tc.name)));
        }
        if tc.allow_initiators.len() == 1 && !open {
            return Err(RpcError::invalid_params(format!(
                "{initiator} is the last initiator allowed on {}: without it every initiator would be \
                 allowed; say so with `open` (lunarctl acl remove --open)",
                tc.name
            )));
        }
        tc.allow_initiators.retain(|i| !i.eq_ignore_ascii_case(initiator));
    }
    let apply = async {
        apply_access(ctx, &tc).await?;
        Ok(json!({ "target": tc.name, "acl": tc.allow_initiators }))
    };
    change(ctx, |doc| persist::set_acl(doc, &tc.name, &tc.allow_initiators), apply).await
}

/// The discovery CHAP pair: `chap.set`/`chap.clear` with `discovery`.
async fn discovery_chap(ctx: &Arc<Context>, set: bool, p: &Params<'_>) -> Result<Value, RpcError> {
    if p.flag("mutual")? || p.opt_str("target")?.is_some() {
        return Err(RpcError::invalid_params(
            "`discovery` takes neither `mutual` nor `target` (discovery sessions use one-way CHAP)",
        ));
    }
    let pair =
        if set { Some(Chap { user: p.str("user")?.to_string(), secret: p.str("secret")?.to_string() }) } else { None };
    if let Some(c) = &pair {
        crate::config::check_chap("discovery-chap", c).map_err(|e| RpcError::invalid_params(e.to_string()))?;
    }
    let apply = async {
        ctx.server.set_discovery_auth(Some(crate::daemon::auth(&pair, &None)));
        ctx.live.lock().unwrap_or_else(|e| e.into_inner()).discovery_chap = pair.clone();
        Ok(
            json!({ "discovery": true, "chap": { "enabled": pair.is_some(), "user": pair.as_ref().map(|c| c.user.clone()) } }),
        )
    };
    match (&ctx.config.write_back, ctx.config.discovery_chap_from_cli) {
        (WriteBack::File(f), true) => {
            let note = format!(
                "the discovery CHAP pair comes from --discovery-chap-*, which wins over {}: this change lasts until \
                 lunard stops",
                f.display()
            );
            unwritten(ctx, &note, apply).await
        }
        _ => change(ctx, |doc| persist::set_discovery_chap(doc, pair.as_ref()), apply).await,
    }
}

pub(super) async fn chap(ctx: &Arc<Context>, set: bool, p: &Params<'_>) -> Result<Value, RpcError> {
    if p.flag("discovery")? {
        return discovery_chap(ctx, set, p).await;
    }
    let mutual = p.flag("mutual")?;
    let mut tc = access_target(ctx, p)?;
    if set {
        let pair = Chap { user: p.str("user")?.to_string(), secret: p.str("secret")?.to_string() };
        if mutual {
            tc.mutual_chap = Some(pair);
        } else {
            tc.chap = Some(pair);
        }
    } else if mutual {
        tc.mutual_chap = None;
    } else {
        // Mutual CHAP needs the one-way pair: both go.
        tc.chap = None;
        tc.mutual_chap = None;
    }
    tc.check_access().map_err(|e| RpcError::invalid_params(e.to_string()))?;
    let edit = |doc: &mut toml_edit::DocumentMut| {
        persist::set_chap(doc, &tc.name, "chap", tc.chap.as_ref())?;
        persist::set_chap(doc, &tc.name, "mutual-chap", tc.mutual_chap.as_ref())
    };
    let apply = async {
        apply_access(ctx, &tc).await?;
        Ok(json!({ "target": tc.name, "chap": chap_json(&tc) }))
    };
    change(ctx, edit, apply).await
}

/// Why portal changes are not written back (`None`: they are).
fn portal_note(ctx: &Context) -> Option<String> {
    match &ctx.config.write_back {
        WriteBack::Off(why) => Some(why.clone()),
        WriteBack::File(f) if ctx.config.listen_from_cli => Some(format!(
            "the portals come from --listen, which replaces the `listen` of {}: portal changes last until \
             lunard stops",
            f.display()
        )),
        WriteBack::File(_) => None,
    }
}

fn set_portals(ctx: &Context, portals: Vec<(SocketAddr, SocketAddr)>) {
    ctx.live.lock().unwrap_or_else(|e| e.into_inner()).portals = portals.iter().map(|p| p.0).collect();
    *ctx.portals.lock().unwrap_or_else(|e| e.into_inner()) = portals;
}

fn parse_addr(p: &Params<'_>) -> Result<SocketAddr, RpcError> {
    let a = p.str("address")?;
    crate::config::parse_portal(a).map_err(|r| RpcError::invalid_params(format!("`address` {a:?}: {r}")))
}

pub(super) async fn portal_add(ctx: &Arc<Context>, p: &Params<'_>) -> Result<Value, RpcError> {
    let addr = parse_addr(p)?;
    let bound = ctx.server.add_portal(addr).map_err(|e| match e {
        ServerError::PortalExists(a) => MethodError::PortalExists(a),
        other => MethodError::Backend(other.to_string()),
    })?;
    // Written as bound: a restart listens on the same port. (Read under
    // the change's lock, in `edit` and `apply`.)
    let with_new = || {
        let mut portals = ctx.portals.lock().unwrap_or_else(|e| e.into_inner()).clone();
        portals.push((bound, bound));
        portals
    };
    let list = || with_new().iter().map(|p| p.0).collect::<Vec<SocketAddr>>();
    let apply = async {
        set_portals(ctx, with_new());
        super::events::publish(ctx, json!({ "event": "portal.added", "portal": bound.to_string() }));
        Ok(json!({ "portal": bound.to_string() }))
    };
    let result = match portal_note(ctx) {
        Some(note) => unwritten(ctx, &note, apply).await,
        None => change(ctx, |doc| persist::set_listen(doc, &list()), apply).await,
    };
    if result.is_err() {
        ctx.server.remove_portal(bound).await;
    }
    result
}

pub(super) async fn portal_remove(ctx: &Arc<Context>, p: &Params<'_>) -> Result<Value, RpcError> {
    let addr = parse_addr(p)?;
    let mut portals = ctx.portals.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let i = portals.iter().position(|(conf, bound)| *bound == addr || *conf == addr).ok_or_else(|| {
        let all: Vec<String> = portals.iter().map(|p| p.1.to_string()).collect();
        MethodError::NoSuchPortal(addr, all.join(", "))
    })?;
    if portals.len() == 1 {
        return Err(MethodError::NotSupported(format!(
            "removing {addr}, the only portal: lunard listens on at least one (add another first)"
        ))
        .into());
    }
    let (_, bound) = portals.remove(i);
    let list: Vec<SocketAddr> = portals.iter().map(|p| p.0).collect();
    let apply = async {
        ctx.server.remove_portal(bound).await;
        set_portals(ctx, portals.clone());
        super::events::publish(ctx, json!({ "event": "portal.removed", "portal": bound.to_string() }));
        Ok(json!({ "portal": bound.to_string(), "removed": true }))
    };
    match portal_note(ctx) {
        Some(note) => unwritten(ctx, &note, apply).await,
        None => change(ctx, |doc| persist::set_listen(doc, &list), apply).await,
    }
}
