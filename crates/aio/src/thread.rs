//! I/O threads and their handles.

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use thiserror::Error;
use tokio::sync::{mpsc, oneshot};

/// A one-shot piece of work sent to a thread (QEMU: a one-shot BH).
pub type BottomHalf = Box<dyn FnOnce() + Send + 'static>;

enum Msg {
    Run(BottomHalf),
    Exit,
}

#[derive(Debug, Error)]
pub enum ThreadError {
    #[error("cannot spawn I/O thread {name}: {source}")]
    Spawn { name: String, source: std::io::Error },
    #[error("cannot build the runtime of I/O thread {name}: {source}")]
    Runtime { name: String, source: std::io::Error },
    #[error("I/O thread {0} has exited")]
    Gone(String),
}

struct ThreadState {
    index: usize,
    name: String,
    main: bool,
    tx: mpsc::UnboundedSender<Msg>,
    exited: AtomicBool,
}

/// The `Send + Clone` handle of an I/O thread (or of the main loop).
#[derive(Clone)]
pub struct IoContext {
    shared: Arc<ThreadState>,
}

thread_local! {
    static CURRENT: RefCell<Option<IoContext>> = const { RefCell::new(None) };
}

impl std::fmt::Debug for IoContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "IoContext({}#{})", self.shared.name, self.shared.index)
    }
}

impl PartialEq for IoContext {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.shared, &other.shared)
    }
}
impl Eq for IoContext {}

impl IoContext {
    /// The index given at creation (unique within one set of threads).
    pub fn index(&self) -> usize {
        self.shared.index
    }

    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// Whether this is the main loop.
    pub fn is_main_loop(&self) -> bool {
        self.shared.main
    }

    /// Whether the calling code runs on this thread.
    pub fn is_current(&self) -> bool {
        CURRENT.with(|c| c.borrow().as_ref().is_some_and(|cur| cur == self))
    }

    /// The context of the calling thread, if it is an I/O thread or the main loop.
    pub fn current() -> Option<IoContext> {
        CURRENT.with(|c| c.borrow().clone())
    }

    /// Whether the calling thread is the main loop.
    pub fn in_main_loop() -> bool {
        CURRENT.with(|c| c.borrow().as_ref().is_some_and(|cur| cur.shared.main))
    }

    /// Runs `f` once on this thread, after the work already scheduled there
    /// (FIFO per thread). When the thread has exited this is an error and the
    /// closure is dropped, never run.
    pub fn schedule(&self, f: impl FnOnce() + Send + 'static) -> Result<(), ThreadError> {
        self.schedule_boxed(Box::new(f))
    }

    pub fn schedule_boxed(&self, f: BottomHalf) -> Result<(), ThreadError> {
        self.try_schedule(f).map_err(|_| ThreadError::Gone(self.shared.name.clone()))
    }

    /// Like [`IoContext::schedule_boxed`], but hands the closure back when the
    /// thread has exited, so that the caller can run it elsewhere.
    pub fn try_schedule(&self, f: BottomHalf) -> Result<(), BottomHalf> {
        if self.shared.exited.load(Ordering::Acquire) {
            return Err(f);
        }
        match self.shared.tx.send(Msg::Run(f)) {
            Ok(()) => Ok(()),
            Err(mpsc::error::SendError(Msg::Run(f))) => Err(f),
            Err(mpsc::error::SendError(Msg::Exit)) => unreachable!("sent a Run"),
        }
    }

    /// Runs `f` on this thread and waits (asynchronously) for its result.
    pub async fn run<R: Send + 'static>(&self, f: impl FnOnce() -> R + Send + 'static) -> Result<R, ThreadError> {
        let (tx, rx) = oneshot::channel();
        self.schedule(move || {
            let _ = tx.send(f());
        })?;
        rx.await.map_err(|_| ThreadError::Gone(self.shared.name.clone()))
    }

    /// Runs `f` on this thread and blocks the calling OS thread until it returns.
    /// Must not be called from an I/O thread (it would block its loop).
    pub fn run_blocking<R: Send + 'static>(&self, f: impl FnOnce() -> R + Send + 'static) -> Result<R, ThreadError> {
        debug_assert!(IoContext::current().is_none(), "run_blocking from an event loop thread");
        let (tx, rx) = std::sync::mpsc::channel();
        self.schedule(move || {
            let _ = tx.send(f());
        })?;
        rx.recv().map_err(|_| ThreadError::Gone(self.shared.name.clone()))
    }

    /// Spawns a future on this thread's `LocalSet` (it may be `!Send` once there:
    /// the factory runs on the thread and builds it).
    pub fn spawn<F, Fut>(&self, make: F) -> Result<(), ThreadError>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + 'static,
    {
        self.schedule(move || {
            tokio::task::spawn_local(make());
        })
    }
}

/// A named OS thread running a single-threaded async executor.
pub struct IoThread {
    ctx: IoContext,
    join: Option<JoinHandle<()>>,
}

impl IoThread {
    /// Starts an I/O thread named `name` with the given index.
    pub fn spawn(name: &str, index: usize) -> Result<IoThread, ThreadError> {
        Self::start(name, index, false)
    }

    /// Starts the main loop thread (index 0 by convention).
    pub fn main_loop() -> Result<IoThread, ThreadError> {
        Self::start("lunar-main", 0, true)
    }

    fn start(name: &str, index: usize, main: bool) -> Result<IoThread, ThreadError> {
        let (tx, mut rx) = mpsc::unbounded_channel::<Msg>();
        let ctx = IoContext {
            shared: Arc::new(ThreadState { index, name: name.to_string(), main, tx, exited: AtomicBool::new(false) }),
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|source| ThreadError::Runtime { name: name.to_string(), source })?;
        let thread_ctx = ctx.clone();
        let join = std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                CURRENT.with(|c| *c.borrow_mut() = Some(thread_ctx.clone()));
                let local = tokio::task::LocalSet::new();
                local.block_on(&runtime, async {
                    while let Some(msg) = rx.recv().await {
                        match msg {
                            Msg::Run(f) => f(),
                            Msg::Exit => break,
                        }
                        // Let spawned tasks (completions) interleave with bottom halves.
                        tokio::task::yield_now().await;
                    }
                });
                thread_ctx.shared.exited.store(true, Ordering::Release);
                drop(local);
                CURRENT.with(|c| *c.borrow_mut() = None);
            })
            .map_err(|source| ThreadError::Spawn { name: name.to_string(), source })?;
        Ok(IoThread { ctx, join: Some(join) })
    }

    pub fn context(&self) -> &IoContext {
        &self.ctx
    }

    /// Stops the loop after the work already scheduled and joins the thread.
    pub fn join(mut self) {
        self.stop_and_join();
    }

    fn stop_and_join(&mut self) {
        if let Some(join) = self.join.take() {
            let _ = self.ctx.shared.tx.send(Msg::Exit);
            let _ = join.join();
        }
    }
}

impl Drop for IoThread {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_runs_on_the_thread_in_order() {
        let t = IoThread::spawn("t0", 1).unwrap();
        let ctx = t.context().clone();
        assert!(!ctx.is_current());
        let (tx, rx) = std::sync::mpsc::channel();
        for i in 0..100 {
            let c = ctx.clone();
            let tx = tx.clone();
            ctx.schedule(move || tx.send((i, c.is_current(), IoContext::current().unwrap().index())).unwrap()).unwrap();
        }
        for i in 0..100 {
            assert_eq!(rx.recv().unwrap(), (i, true, 1));
        }
    }

    #[test]
    fn run_blocking_returns_value_and_spawn_runs_local_futures() {
        let t = IoThread::spawn("t1", 3).unwrap();
        assert_eq!(t.context().run_blocking(|| 6 * 7).unwrap(), 42);
        let (tx, rx) = std::sync::mpsc::channel();
        t.context()
            .spawn(move || async move {
                let rc = std::rc::Rc::new(5); // !Send state is fine on the thread
                tokio::task::yield_now().await;
                tx.send(*rc).unwrap();
            })
            .unwrap();
        assert_eq!(rx.recv().unwrap(), 5);
    }

    #[test]
    fn schedule_after_exit_is_an_error_not_a_hang() {
        let t = IoThread::spawn("t2", 2).unwrap();
        let ctx = t.context().clone();
        t.join();
        assert!(ctx.schedule(|| ()).is_err());
        assert!(ctx.run_blocking(|| 1).is_err());
    }
}
