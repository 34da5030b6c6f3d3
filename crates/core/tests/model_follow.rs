//! Model-checked tests (shuttle) of the races around async iteration: a job
//! sent to a queue's list while the list moves to another thread, is
//! destroyed (hot-remove), or goes to the main loop (stop).
//!
//! They drive the production protocol of `lunar_core::follow` (`dispatch`,
//! `Home::transfer`, `Home::close`) on shuttle threads, and check:
//! - the callback runs exactly once per request, on the thread that holds
//!   the list at the time it runs (or not at all once the list is destroyed);
//! - the job is never lost (it runs, or it is dropped only with the threads);
//! - the device the job holds is dropped exactly once, after the last callback;
//! - once a move is done, the owner names the thread that holds the list.
//!
//! Run: `cargo test -p lunar-core --features shuttle --test model_follow`.
//! With `--features shuttle,broken-follow` (a job that must follow is
//! dropped instead) these same tests fail: `.ci/run` checks that too.
#![cfg(feature = "shuttle")]

use std::cell::RefCell;
use std::collections::HashMap;

use lunar_core::follow::{dispatch, Arrival, Executor, Home, Job};
use shuttle::sync::atomic::{AtomicUsize, Ordering};
use shuttle::sync::mpsc::{channel, Receiver, Sender};
use shuttle::sync::{Arc, Mutex};

enum Msg {
    Run(Job),
    Exit,
}

struct ModelExec {
    senders: Vec<Mutex<Sender<Msg>>>,
}

impl Executor for ModelExec {
    fn schedule(&self, thread: usize, job: Job) -> Result<(), Job> {
        let tx = self.senders[thread].lock().unwrap();
        tx.send(Msg::Run(job)).map_err(|e| match e.0 {
            Msg::Run(j) => j,
            Msg::Exit => unreachable!(),
        })
    }
}

shuttle::thread_local! {
    static INDEX: RefCell<usize> = const { RefCell::new(usize::MAX) };
    /// This thread's registry: home id -> request ids of the list it holds.
    static LISTS: RefCell<HashMap<u64, Vec<u32>>> = RefCell::new(HashMap::new());
}

fn holds(home: &Home) -> bool {
    LISTS.with(|l| l.borrow().contains_key(&home.id()))
}

fn current() -> usize {
    INDEX.with(|i| *i.borrow())
}

/// The device a job keeps alive; counts its drops and checks none happens
/// before the last callback.
struct Device {
    callbacks: Arc<AtomicUsize>,
    expected_callbacks: Arc<AtomicUsize>,
    drops: Arc<AtomicUsize>,
}

impl Drop for Device {
    fn drop(&mut self) {
        self.drops.fetch_add(1, Ordering::SeqCst);
        // Dropped after the last callback: none may follow, and every one
        // that was due has run.
        assert_eq!(
            self.callbacks.load(Ordering::SeqCst),
            self.expected_callbacks.load(Ordering::SeqCst),
            "device dropped before its last callback"
        );
    }
}

/// Reports whether the job ran, also when it is dropped unrun.
struct Outcome {
    tx: Option<Sender<bool>>,
}

impl Outcome {
    fn ran(mut self) {
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(true);
        }
    }
}

impl Drop for Outcome {
    fn drop(&mut self) {
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(false);
        }
    }
}

const THREADS: usize = 3; // 0 = main loop, 1 and 2 = I/O threads
const HOME: u64 = 7;
const REQUESTS: [u32; 3] = [10, 11, 12];

#[derive(Clone, Copy, Debug)]
enum Race {
    /// The list moves from thread 1 to thread 2.
    Move,
    /// The list moves 1 -> 2 -> 1.
    MoveTwice,
    /// The list is destroyed (hot-remove).
    Remove,
    /// The list goes to the main loop (the target stops).
    Stop,
}

fn start_threads(exec_rx: Vec<Receiver<Msg>>) -> Vec<shuttle::thread::JoinHandle<()>> {
    exec_rx
        .into_iter()
        .enumerate()
        .map(|(i, rx)| {
            shuttle::thread::spawn(move || {
                INDEX.with(|x| *x.borrow_mut() = i);
                if i == 1 {
                    LISTS.with(|l| l.borrow_mut().insert(HOME, REQUESTS.to_vec()));
                }
                while let Ok(Msg::Run(job)) = rx.recv() {
                    job();
                }
            })
        })
        .collect()
}

/// Moves the list from its holder to `to` (production protocol: take it out
/// of the holder's registry, schedule the arrival, publish the owner).
fn depart(exec: &Arc<ModelExec>, home: &Arc<Home>, to: usize, done: Sender<()>) {
    let e2 = exec.clone();
    let h2 = home.clone();
    dispatch(
        exec,
        home,
        holds,
        Box::new(move |arrival| {
            assert_eq!(arrival, Arrival::Here, "departure found no list");
            let list = LISTS.with(|l| l.borrow_mut().remove(&HOME)).expect("held");
            let h3 = h2.clone();
            let arrive: Job = Box::new(move || {
                LISTS.with(|l| l.borrow_mut().insert(HOME, list));
                h3.arrived(to);
                let _ = done.send(());
            });
            if h2.transfer(&*e2, to, arrive).is_err() {
                panic!("destination gone");
            }
        }),
    );
}

fn remove(exec: &Arc<ModelExec>, home: &Arc<Home>, done: Sender<()>) {
    let h2 = home.clone();
    dispatch(
        exec,
        home,
        holds,
        Box::new(move |arrival| {
            assert_eq!(arrival, Arrival::Here);
            LISTS.with(|l| l.borrow_mut().remove(&HOME));
            h2.close();
            let _ = done.send(());
        }),
    );
}

fn scenario(race: Race) {
    let mut senders = Vec::new();
    let mut receivers = Vec::new();
    for _ in 0..THREADS {
        let (tx, rx) = channel();
        senders.push(Mutex::new(tx));
        receivers.push(rx);
    }
    let exec = Arc::new(ModelExec { senders });
    let handles = start_threads(receivers);
    let home = Arc::new(Home::new(HOME, 1));

    let callbacks = Arc::new(AtomicUsize::new(0));
    let expected = Arc::new(AtomicUsize::new(usize::MAX));
    let drops = Arc::new(AtomicUsize::new(0));
    let seen: Arc<Mutex<Vec<(u32, usize)>>> = Arc::new(Mutex::new(Vec::new()));

    // The iteration (from the main loop): a callback per request, holding the device.
    let device = Device { callbacks: callbacks.clone(), expected_callbacks: expected.clone(), drops: drops.clone() };
    let (out_tx, out_rx) = channel();
    let outcome = Outcome { tx: Some(out_tx) };
    {
        let seen = seen.clone();
        let callbacks = callbacks.clone();
        let expected = expected.clone();
        let exec = exec.clone();
        let home = home.clone();
        // Dispatched from its own thread, so that it races with the move.
        shuttle::thread::spawn(move || {
            dispatch(
                &exec,
                &home,
                holds,
                Box::new(move |arrival| {
                    let _device = device; // held until the callbacks are done
                    let mut n = 0;
                    if arrival == Arrival::Here {
                        let list = LISTS.with(|l| l.borrow().get(&HOME).cloned()).expect("Here means held");
                        for r in list {
                            // The callback: on the thread that holds the list, right now.
                            assert!(LISTS.with(|l| l.borrow().contains_key(&HOME)));
                            seen.lock().unwrap().push((r, current()));
                            callbacks.fetch_add(1, Ordering::SeqCst);
                            n += 1;
                        }
                    }
                    expected.store(n, Ordering::SeqCst);
                    outcome.ran();
                }),
            )
        });
    }

    // The race, concurrently from another thread of the control plane.
    let (done_tx, done_rx) = channel();
    {
        let exec = exec.clone();
        let home = home.clone();
        shuttle::thread::spawn(move || match race {
            Race::Move => depart(&exec, &home, 2, done_tx),
            Race::MoveTwice => {
                let (tx1, rx1) = channel();
                depart(&exec, &home, 2, tx1);
                rx1.recv().unwrap();
                depart(&exec, &home, 1, done_tx);
            }
            Race::Remove => remove(&exec, &home, done_tx),
            Race::Stop => depart(&exec, &home, 0, done_tx),
        });
    }

    done_rx.recv().expect("the race finished (a departure job was lost)");
    // Once a move is reported done, the owner names the thread that holds
    // the list: a late publish of an earlier move (on the thread the list
    // left) must not win (it did: the list sat on its thread while every job
    // for it chased the stale owner).
    let final_holder = match race {
        Race::Move => Some(2),
        Race::MoveTwice => Some(1),
        Race::Stop => Some(0),
        Race::Remove => None,
    };
    if let Some(t) = final_holder {
        assert_eq!(home.owner(), t, "{race:?}: the owner once the move is done");
    }
    let ran = out_rx.recv().expect("the iteration reported");
    assert!(ran, "{race:?}: the iteration's job was lost (dropped without running)");

    for tx in &exec.senders {
        let _ = tx.lock().unwrap().send(Msg::Exit);
    }
    for h in handles {
        h.join().unwrap();
    }

    let seen = seen.lock().unwrap().clone();
    match race {
        Race::Remove => {
            // Either all before removal, or none after it.
            assert!(seen.is_empty() || seen.len() == REQUESTS.len(), "{race:?}: partial iteration {seen:?}");
        }
        _ => {
            let mut ids: Vec<u32> = seen.iter().map(|(r, _)| *r).collect();
            ids.sort();
            assert_eq!(ids, REQUESTS.to_vec(), "{race:?}: each request exactly once");
            let threads: Vec<usize> = seen.iter().map(|(_, t)| *t).collect();
            assert!(threads.windows(2).all(|w| w[0] == w[1]), "{race:?}: one holder per run");
        }
    }
    assert_eq!(drops.load(Ordering::SeqCst), 1, "{race:?}: device dropped exactly once");
}

const ITERATIONS: usize = 2000;

#[test]
fn iteration_follows_the_list_when_it_moves() {
    shuttle::check_random(|| scenario(Race::Move), ITERATIONS);
    shuttle::check_pct(|| scenario(Race::Move), ITERATIONS, 3);
}

#[test]
fn iteration_follows_the_list_when_it_moves_twice() {
    shuttle::check_random(|| scenario(Race::MoveTwice), ITERATIONS);
    shuttle::check_pct(|| scenario(Race::MoveTwice), ITERATIONS, 3);
}

#[test]
fn iteration_survives_hot_remove() {
    shuttle::check_random(|| scenario(Race::Remove), ITERATIONS);
    shuttle::check_pct(|| scenario(Race::Remove), ITERATIONS, 3);
}

#[test]
fn iteration_follows_the_list_to_the_main_loop_on_stop() {
    shuttle::check_random(|| scenario(Race::Stop), ITERATIONS);
    shuttle::check_pct(|| scenario(Race::Stop), ITERATIONS, 3);
}
