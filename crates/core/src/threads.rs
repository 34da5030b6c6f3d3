//! The threads of one target: the main loop (index 0) and the I/O threads
//! (1..=N), and the [`Executor`] that sends jobs to them by index.

use lunar_aio::{IoContext, IoThread, ThreadError};

use crate::follow::{Executor, Job};
use crate::stats::ThreadStats;

/// Index of the main loop in a [`Contexts`].
pub const MAIN_LOOP: usize = 0;

/// The handles of every thread, by index; immutable once started.
pub struct Contexts {
    contexts: Vec<IoContext>,
    /// The statistics of each thread, by index.
    stats: ThreadStats,
}

impl Contexts {
    pub fn get(&self, index: usize) -> Option<&IoContext> {
        self.contexts.get(index)
    }

    pub fn main_loop(&self) -> &IoContext {
        &self.contexts[MAIN_LOOP]
    }

    /// Number of I/O threads (the main loop not counted).
    pub fn io_threads(&self) -> usize {
        self.contexts.len() - 1
    }

    /// The statistics of every thread (I/O threads from index 1).
    pub fn stats(&self) -> &ThreadStats {
        &self.stats
    }

    /// Index of the calling thread, if it is one of ours.
    pub fn current(&self) -> Option<usize> {
        IoContext::current().and_then(|c| self.contexts.iter().position(|x| *x == c))
    }
}

impl Executor for Contexts {
    fn schedule(&self, thread: usize, job: Job) -> Result<(), Job> {
        match self.contexts.get(thread) {
            Some(ctx) => ctx.try_schedule(job),
            None => Err(job),
        }
    }
}

/// Owns the threads; joins them when dropped (I/O threads first).
pub struct ThreadSet {
    threads: Vec<IoThread>,
    contexts: std::sync::Arc<Contexts>,
}

impl ThreadSet {
    pub fn start(io_threads: usize) -> Result<ThreadSet, ThreadError> {
        let mut threads = vec![IoThread::main_loop()?];
        for i in 1..=io_threads.max(1) {
            threads.push(IoThread::spawn(&format!("lunar-io{}", i - 1), i)?);
        }
        let contexts = std::sync::Arc::new(Contexts {
            contexts: threads.iter().map(|t| t.context().clone()).collect(),
            stats: ThreadStats::new(threads.len()),
        });
        Ok(ThreadSet { threads, contexts })
    }

    pub fn contexts(&self) -> &std::sync::Arc<Contexts> {
        &self.contexts
    }
}

impl Drop for ThreadSet {
    fn drop(&mut self) {
        while let Some(t) = self.threads.pop() {
            t.join();
        }
    }
}
