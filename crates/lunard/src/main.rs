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
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();

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

    let signal = rt.block_on(async {
        tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        }
    });
    tracing::info!("{signal}: shutting down");
    if let Some(c) = control {
        c.shutdown();
    }
    drop(metrics);
    daemon.shutdown();
    tracing::info!("stopped");
    ExitCode::SUCCESS
}
