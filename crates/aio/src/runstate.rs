//! Run state (running / stopped) with change handlers run on the main loop.

use std::sync::{Arc, Mutex};

use crate::thread::IoContext;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunState {
    Running,
    Stopped,
}

type Handler = Arc<dyn Fn(RunState) + Send + Sync>;

/// Holds the run state and its change handlers. Control plane only: the
/// mutex here is never taken on the I/O path.
pub struct RunStateHub {
    main: IoContext,
    inner: Mutex<(RunState, Vec<Handler>)>,
}

impl RunStateHub {
    pub fn new(main: IoContext) -> Arc<Self> {
        Arc::new(RunStateHub { main, inner: Mutex::new((RunState::Running, Vec::new())) })
    }

    pub fn get(&self) -> RunState {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).0
    }

    pub fn add_handler(&self, h: impl Fn(RunState) + Send + Sync + 'static) {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).1.push(Arc::new(h));
    }

    /// Sets the state and runs the handlers on the main loop (in order of
    /// registration, after the state is visible), if it changed.
    pub fn set(self: &Arc<Self>, state: RunState) {
        let handlers = {
            let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            if g.0 == state {
                return;
            }
            g.0 = state;
            g.1.clone()
        };
        let run = move || {
            for h in &handlers {
                h(state);
            }
        };
        if self.main.is_current() {
            run();
        } else if let Err(e) = self.main.schedule(run) {
            tracing::warn!("run state handlers not run: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::IoThread;

    #[test]
    fn handlers_run_on_main_loop_on_change_only() {
        let main = IoThread::main_loop().unwrap();
        let hub = RunStateHub::new(main.context().clone());
        let (tx, rx) = std::sync::mpsc::channel();
        hub.add_handler(move |s| tx.send((s, IoContext::in_main_loop())).unwrap());
        hub.set(RunState::Running); // no change
        hub.set(RunState::Stopped);
        hub.set(RunState::Running);
        assert_eq!(rx.recv().unwrap(), (RunState::Stopped, true));
        assert_eq!(rx.recv().unwrap(), (RunState::Running, true));
        assert!(rx.try_recv().is_err());
    }
}
