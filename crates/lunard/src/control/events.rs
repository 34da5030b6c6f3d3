//! The event hub: core events of every target and iSCSI session events,
//! turned into JSON, written to the log, remembered where `status` needs
//! them (why a target is paused), and fanned out to `events` subscribers.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use lunar_core::{Event, Target};
use lunar_iscsi::server::{LoginFailureInfo, SessionEvent, SessionInfo};
use serde_json::{json, Value};
use tokio::sync::broadcast;

use super::Context;

/// Seconds since the epoch, with microseconds.
pub fn timestamp(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_micros() as f64 / 1e6).unwrap_or(0.0)
}

/// The symbolic name of a few errnos events carry.
pub fn errno_name(errno: i32) -> Option<&'static str> {
    Some(match errno {
        1 => "EPERM",
        5 => "EIO",
        13 => "EACCES",
        22 => "EINVAL",
        28 => "ENOSPC",
        30 => "EROFS",
        95 => "EOPNOTSUPP",
        108 => "ESHUTDOWN",
        110 => "ETIMEDOUT",
        122 => "EDQUOT",
        _ => return None,
    })
}

/// A core event as JSON (I/O threads numbered from 0, as in the config).
pub fn core_event(target: &str, e: &Event) -> Value {
    let mut v = match e {
        Event::PausedOnIoError { lun, errno, kind, write } => json!({
            "event": "lun.paused", "lun": lun, "reason": "io-error", "errno": errno, "errno_name": errno_name(*errno),
            "error": format!("{kind:?}"), "direction": if *write { "write" } else { "read" },
        }),
        Event::Stopped => json!({ "event": "target.stopped" }),
        Event::Resumed => json!({ "event": "target.resumed" }),
        Event::DeviceAdded { lun } => json!({ "event": "lun.added", "lun": lun }),
        Event::DeviceRemoved { lun } => json!({ "event": "lun.removed", "lun": lun }),
        Event::DeviceMoved { lun, io_thread } => {
            json!({ "event": "lun.moved", "lun": lun, "iothread": io_thread.saturating_sub(1) })
        }
        Event::DeviceReset { lun } => json!({ "event": "lun.reset", "lun": lun }),
        Event::DevicePaused { lun } => json!({ "event": "lun.paused", "lun": lun, "reason": "operator" }),
        Event::DeviceResumed { lun } => json!({ "event": "lun.resumed", "lun": lun }),
        Event::DeviceResized { lun, blocks, block_size } => json!({
            "event": "lun.resized", "lun": lun, "blocks": blocks, "block_size": block_size,
            "size": blocks.saturating_mul(u64::from(*block_size)),
        }),
        Event::AluaStateChanged { lun, changes, local_group, local_state, explicit } => json!({
            "event": "alua.changed", "lun": lun,
            "changes": changes.iter().map(|(g, from, to)| json!({
                "group": g, "from": from.name(), "to": to.name(),
            })).collect::<Vec<_>>(),
            "local_group": local_group, "local_state": local_state.name(),
            "cause": if *explicit { "set-target-port-groups" } else { "implicit" },
        }),
        Event::DeviceOffline { lun, errno } => json!({
            "event": "lun.offline", "lun": lun, "errno": errno, "errno_name": errno_name(*errno),
        }),
        Event::DeviceOnline { lun } => json!({ "event": "lun.online", "lun": lun }),
        Event::Fenced { lun, reason, clients } => json!({
            "event": "gateway.fenced", "lun": lun, "reason": reason, "clients": clients,
        }),
    };
    if let Some(o) = v.as_object_mut() {
        o.insert("target".into(), json!(target));
    }
    v
}

pub fn session_json(s: &SessionInfo) -> Value {
    json!({
        "id": s.tsih, "tsih": s.tsih, "initiator": s.initiator, "isid": s.isid, "target": s.target,
        "since": timestamp(s.since),
    })
}

fn session_event(e: &SessionEvent) -> Value {
    let (name, s) = match e {
        SessionEvent::Login(s) => ("session.login", s),
        SessionEvent::Logout(s) => ("session.logout", s),
        SessionEvent::LoginFailed(f) => return login_failed_json(f),
    };
    let mut v = session_json(s);
    if let Some(o) = v.as_object_mut() {
        o.insert("event".into(), json!(name));
    }
    v
}

/// A refused login: `{"event":"session.login_failed","reason":"chap",...}`.
pub fn login_failed_json(f: &LoginFailureInfo) -> Value {
    json!({
        "event": "session.login_failed",
        "reason": f.reason,
        "initiator": f.initiator,
        "target": f.target,
        "chap_user": f.chap_user,
        "peer": f.peer.to_string(),
        "status": format!("{:#06x}", f.status),
        "detail": f.detail,
    })
}

/// Starts the hub's tasks on the current (control) runtime. The receivers
/// are taken by the caller before the socket serves, so nothing is missed.
pub fn spawn(
    ctx: Arc<Context>,
    sources: Vec<(Arc<Target>, broadcast::Receiver<Event>)>,
    sessions: broadcast::Receiver<SessionEvent>,
) {
    for (t, rx) in sources {
        forward(ctx.clone(), t.name().to_string(), rx);
    }
    let mut sessions = sessions;
    tokio::task::spawn_local(async move {
        loop {
            match sessions.recv().await {
                Ok(e) => publish(&ctx, session_event(&e)),
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    publish(&ctx, json!({ "event": "events.lost", "count": n }));
                }
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    });
}

/// Forwards the core events of target `name` until the target is gone
/// (holding its name only, so that a removed target can go).
pub(super) fn forward(ctx: Arc<Context>, name: String, mut rx: broadcast::Receiver<Event>) {
    tokio::spawn(async move {
        loop {
            match rx.recv().await {
                Ok(e) => {
                    ctx.note_core_event(&name, &e);
                    publish(&ctx, core_event(&name, &e));
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(target = name, "control plane missed {n} core events");
                    publish(&ctx, json!({ "event": "events.lost", "count": n, "target": name }));
                }
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    });
}

/// Logs an event and hands it to the subscribers as one notification line.
pub fn publish(ctx: &Context, mut event: Value) {
    if let Some(o) = event.as_object_mut() {
        o.insert("timestamp".into(), json!(timestamp(SystemTime::now())));
    }
    tracing::info!(event = %event, "event");
    let line = super::rpc::notification("event", event).to_string();
    let _ = ctx.events.send(Arc::from(line));
}
