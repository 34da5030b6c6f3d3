//! `lunard`: the Lunar SCSI target daemon.

use std::process::ExitCode;

use lunard::config::Config;
use lunard::daemon::{banner, Daemon};

/// mimalloc instead of glibc's allocator: every command allocates its
/// request, data buffer and response on one I/O thread and frees them on
/// it, the pattern thread-local free lists serve best (glibc spent about a
/// sixth of a vhost-user I/O thread's time in malloc/free and consolidation).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let config = match Config::from_args(std::env::args_os()) {
        Ok(c) => c,
        Err(e) if e.is_help_or_version() => {
            e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("lunard: {e}");
            return ExitCode::from(2);
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only for a person: not in a journal, a file or a pipe.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).with_writer(std::io::stderr).init();
    let notifier = lunard::notify::Notifier::from_env();

    let daemon = match Daemon::start(&config) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("lunard: {e}");
            return ExitCode::from(1);
        }
    };
    let vhost = daemon.vhost.iter().map(lunard::control::VhostProbe::of).collect();
    let control_ctx = lunard::control::Context::new(&config, daemon.targets.clone(), daemon.server.handle(), vhost);
    let metrics = match config.metrics {
        None => None,
        Some(addr) => match lunard::metrics::MetricsServer::start(addr, control_ctx.clone()) {
            Ok(m) => Some(m),
            Err(e) => {
                eprintln!("lunard: {e}");
                daemon.shutdown();
                return ExitCode::from(1);
            }
        },
    };
    let live = control_ctx.clone();
    let control = match lunard::control::ControlServer::start(control_ctx) {
        Ok(c) => Some(c),
        // Another daemon owns it (tests running several daemons on the
        // default path): serve without a control socket rather than fail.
        Err(e @ lunard::control::ControlError::InUse { .. }) => {
            tracing::warn!("{e}; running without a control socket (pass --control PATH)");
            None
        }
        Err(e) => {
            eprintln!("lunard: {e}");
            daemon.shutdown();
            return ExitCode::from(1);
        }
    };
    // SIGTERM and SIGINT are caught from here on, before the banner tells
    // anyone that the daemon is up (a signal sent in between would kill
    // it without a clean shutdown).
    use tokio::signal::unix::{signal, SignalKind};
    let caught = tokio::runtime::Builder::new_current_thread().enable_all().build().and_then(|rt| {
        let _inside = rt.enter();
        let term = signal(SignalKind::terminate())?;
        let int = signal(SignalKind::interrupt())?;
        drop(_inside);
        Ok((rt, term, int))
    });
    let (rt, mut term, mut int) = match caught {
        Ok(x) => x,
        Err(e) => {
            eprintln!("lunard: cannot wait for signals: {e}");
            daemon.shutdown();
            return ExitCode::from(1);
        }
    };
    print!("{}", banner(&config, &daemon));
    if let Some(m) = &metrics {
        println!("  metrics http://{}/metrics", m.local_addr());
    }
    if let Some(c) = &control {
        println!("  control {}", c.path().display());
    }
    use std::io::Write;
    let _ = std::io::stdout().flush();
    // Everything listens: tell systemd (Type=notify).
    notifier.send(&format!("READY=1\nSTATUS={}", ready_status(&config, &daemon)));
    let contexts = daemon.contexts();

    let signal = rt.block_on(async {
        // Keep-alives every half watchdog period, each once the core's threads answered.
        let mut tick = notifier.watchdog().map(|w| tokio::time::interval(w / 2));
        loop {
            let keep_alive = async {
                match &mut tick {
                    Some(t) => t.tick().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = term.recv() => return "SIGTERM",
                _ = int.recv() => return "SIGINT",
                _ = keep_alive => {
                    let within = notifier.watchdog().unwrap_or_default() / 2;
                    match core_answers(contexts.as_deref(), within).await {
                        Ok(()) => notifier.send("WATCHDOG=1"),
                        Err(thread) => tracing::warn!("watchdog: core thread {thread} did not answer within {within:?}"),
                    }
                }
            }
        }
    });
    tracing::info!("{signal}: shutting down");
    notifier.send(&format!("STOPPING=1\nSTATUS=stopping ({signal})"));
    if let Some(c) = control {
        c.shutdown();
    }
    drop(metrics);
    // The targets as they are now (some may have been added or removed at run time).
    let mut daemon = daemon;
    daemon.targets = live.targets();
    drop(live);
    daemon.shutdown();
    tracing::info!("stopped");
    ExitCode::SUCCESS
}

/// The `STATUS=` of `READY=1`: what is served, where.
fn ready_status(config: &lunard::config::Config, daemon: &Daemon) -> String {
    let luns: usize = daemon.targets.iter().map(|t| t.luns().len()).sum();
    let portals: Vec<String> = daemon.server.local_addrs().iter().map(|a| a.to_string()).collect();
    let mut s = format!("serving {luns} LUNs of {} targets on {}", daemon.targets.len(), portals.join(" "));
    if !daemon.vhost.is_empty() {
        s.push_str(&format!(", {} vhost-user controllers", daemon.vhost.len()));
    }
    if let lunard::config::WriteBack::File(f) = &config.write_back {
        s.push_str(&format!("; config {}", f.display()));
    }
    s
}

/// Waits until every thread of the core (main loop, I/O threads) has run
/// a bottom half, for at most `within`; `Err(index)` of one that did not.
async fn core_answers(
    contexts: Option<&lunar_core::threads::Contexts>,
    within: std::time::Duration,
) -> Result<(), usize> {
    let Some(c) = contexts else { return Ok(()) };
    let mut answers = Vec::new();
    for i in 0..=c.io_threads() {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let Some(ctx) = c.get(i) else { continue };
        ctx.schedule(move || {
            let _ = tx.send(());
        })
        .map_err(|_| i)?;
        answers.push((i, rx));
    }
    let deadline = tokio::time::Instant::now() + within;
    for (i, rx) in answers {
        match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(())) => {}
            _ => return Err(i),
        }
    }
    Ok(())
}
