//! Integration tests of the io_uring file backend. Every test builds its own
//! current-thread runtime and `LocalSet`, like a Lunar I/O thread.

use std::future::Future;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::pin::pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::Poll;

use lunar_block::{ErrorKind, FileBackend, FileOptions};
use tempfile::NamedTempFile;

fn run<F: Future>(f: F) -> F::Output {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, f)
}

/// A small xorshift generator: deterministic test data without extra deps.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
}

fn image_in(dir: &Path, size: u64) -> NamedTempFile {
    let f = NamedTempFile::new_in(dir).unwrap();
    f.as_file().set_len(size).unwrap();
    f
}

fn image(size: u64) -> NamedTempFile {
    image_in(&std::env::temp_dir(), size)
}

fn open(f: &NamedTempFile) -> FileBackend {
    FileBackend::open(f.path(), &FileOptions::default()).unwrap()
}

fn read_back(f: &NamedTempFile) -> Vec<u8> {
    let mut file = std::fs::File::open(f.path()).unwrap();
    let mut v = Vec::new();
    file.read_to_end(&mut v).unwrap();
    v
}

#[test]
fn size_of_a_file() {
    let f = image(3 << 20);
    assert_eq!(open(&f).size(), 3 << 20);
}

#[test]
fn random_round_trips() {
    const SIZE: u64 = 4 << 20;
    let f = image(SIZE);
    let b = open(&f);
    let mut model = vec![0u8; SIZE as usize];
    let mut rng = Rng(0x9e3779b97f4a7c15);
    run(async {
        for _ in 0..300 {
            let len = 1 + rng.below(256 * 1024) as usize;
            let offset = rng.below(SIZE - len as u64);
            let data = rng.bytes(len);
            b.write(offset, data.clone(), rng.below(8) == 0).await.unwrap();
            model[offset as usize..offset as usize + len].copy_from_slice(&data);
            let rlen = 1 + rng.below(256 * 1024) as usize;
            let roff = rng.below(SIZE - rlen as u64);
            let got = b.read(roff, rlen).await.unwrap();
            assert_eq!(got, &model[roff as usize..roff as usize + rlen], "read {roff}+{rlen}");
        }
        assert_eq!(b.read(0, SIZE as usize).await.unwrap(), model);
    });
    assert_eq!(read_back(&f), model);
}

#[test]
fn empty_and_out_of_range() {
    let f = image(8192);
    let b = open(&f);
    run(async {
        assert!(b.read(100, 0).await.unwrap().is_empty());
        b.write(100, Vec::new(), false).await.unwrap();
        assert_eq!(b.read(4096, 8192).await.unwrap_err().kind, ErrorKind::OutOfRange);
        assert_eq!(b.write(8000, vec![1; 200], false).await.unwrap_err().kind, ErrorKind::OutOfRange);
        assert_eq!(b.read(u64::MAX - 10, 100).await.unwrap_err().kind, ErrorKind::OutOfRange);
        assert_eq!(b.discard(8192, 1).await.unwrap_err().kind, ErrorKind::OutOfRange);
        assert_eq!(b.write_zeroes(0, 8193).await.unwrap_err().kind, ErrorKind::OutOfRange);
        assert_eq!(b.is_allocated(0, 8193).unwrap_err().kind, ErrorKind::OutOfRange);
    });
}

#[test]
fn short_read_past_eof_is_out_of_range() {
    let f = image(64 * 1024);
    let b = open(&f);
    // The file shrinks under the backend: the read hits EOF before it is full.
    f.as_file().set_len(4096).unwrap();
    run(async {
        let e = b.read(0, 64 * 1024).await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::OutOfRange);
        assert_eq!(b.read(0, 4096).await.unwrap(), vec![0u8; 4096]);
    });
}

#[test]
fn sixty_four_concurrent_ops() {
    const BLOCK: usize = 16 * 1024;
    let f = image(64 * BLOCK as u64);
    let b = Rc::new(open(&f));
    run(async {
        let mut tasks = Vec::new();
        for i in 0..64u64 {
            let b = b.clone();
            tasks.push(tokio::task::spawn_local(async move {
                let data = Rng(i + 1).bytes(BLOCK);
                b.write(i * BLOCK as u64, data.clone(), i % 4 == 0).await.unwrap();
                let got = b.read(i * BLOCK as u64, BLOCK).await.unwrap();
                assert_eq!(got, data, "block {i}");
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        // And 64 concurrent reads of what they wrote.
        let mut reads = Vec::new();
        for i in 0..64u64 {
            let b = b.clone();
            reads.push(tokio::task::spawn_local(async move { (i, b.read(i * BLOCK as u64, BLOCK).await.unwrap()) }));
        }
        for r in reads {
            let (i, got) = r.await.unwrap();
            assert_eq!(got, Rng(i + 1).bytes(BLOCK));
        }
    });
}

#[test]
fn more_ops_in_flight_than_the_ring_holds() {
    // 2000 concurrent ops against a ring of 256 SQEs / 512 CQEs: submitters
    // wait for room and all complete.
    const BLOCK: usize = 4096;
    const N: u64 = 2000;
    let f = image(N * BLOCK as u64);
    let b = Rc::new(open(&f));
    run(async {
        let mut tasks = Vec::new();
        for i in 0..N {
            let b = b.clone();
            tasks.push(tokio::task::spawn_local(async move {
                b.write(i * BLOCK as u64, vec![(i % 251) as u8; BLOCK], false).await.unwrap();
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let all = b.read(0, (N as usize) * BLOCK).await.unwrap();
        for i in 0..N as usize {
            assert!(all[i * BLOCK..(i + 1) * BLOCK].iter().all(|&x| x == (i % 251) as u8), "block {i}");
        }
    });
}

#[test]
fn o_direct() {
    const SIZE: u64 = 1 << 20;
    // tmpfs may refuse O_DIRECT: use /var/tmp.
    let f = image_in(Path::new("/var/tmp"), SIZE);
    let b = match FileBackend::open(f.path(), &FileOptions { direct: true, readonly: false }) {
        Ok(b) => b,
        Err(e) if e.errno == libc::EINVAL => {
            println!("skipping o_direct: /var/tmp refuses O_DIRECT ({e})");
            return;
        }
        Err(e) => panic!("open O_DIRECT: {e}"),
    };
    let mut model = vec![0u8; SIZE as usize];
    let mut rng = Rng(42);
    run(async {
        for i in 0..100 {
            let len = 4096 * (1 + rng.below(16)) as usize;
            let offset = 512 * rng.below((SIZE - len as u64) / 512);
            let data = rng.bytes(len);
            b.write(offset, data.clone(), i % 10 == 0).await.unwrap();
            model[offset as usize..offset as usize + len].copy_from_slice(&data);
            let roff = 4096 * rng.below(SIZE / 4096 - 16);
            let rlen = 4096 * (1 + rng.below(16)) as usize;
            assert_eq!(b.read(roff, rlen).await.unwrap(), &model[roff as usize..roff as usize + rlen]);
        }
        assert_eq!(b.read(0, SIZE as usize).await.unwrap(), model);
        // Unaligned offsets and lengths are refused with an EINVAL-kind error.
        for e in [
            b.read(100, 4096).await.unwrap_err(),
            b.read(4096, 1000).await.unwrap_err(),
            b.write(7, vec![0; 4096], false).await.unwrap_err(),
            b.write(0, vec![0; 4095], false).await.unwrap_err(),
        ] {
            assert_eq!((e.kind, e.errno), (ErrorKind::Unsupported, libc::EINVAL));
        }
        b.write_zeroes(8192, 8192).await.unwrap();
        model[8192..16384].fill(0);
        b.discard(65536, 65536).await.unwrap();
        model[65536..131072].fill(0);
        b.flush().await.unwrap();
        assert_eq!(b.read(0, SIZE as usize).await.unwrap(), model);
    });
    assert_eq!(read_back(&f), model);
}

#[test]
fn discard_punches_a_hole() {
    const SIZE: u64 = 1 << 20;
    let f = image(SIZE);
    let b = open(&f);
    run(async {
        assert_eq!(b.is_allocated(0, SIZE).unwrap(), vec![(0, SIZE, false)]);
        b.write(0, vec![0xab; SIZE as usize], false).await.unwrap();
        b.flush().await.unwrap();
        assert_eq!(b.is_allocated(0, SIZE).unwrap(), vec![(0, SIZE, true)]);
        b.discard(256 * 1024, 128 * 1024).await.unwrap();
        let got = b.read(0, SIZE as usize).await.unwrap();
        assert!(got[..256 * 1024].iter().all(|&x| x == 0xab));
        assert!(got[256 * 1024..384 * 1024].iter().all(|&x| x == 0));
        assert!(got[384 * 1024..].iter().all(|&x| x == 0xab));
        assert_eq!(
            b.is_allocated(0, SIZE).unwrap(),
            vec![(0, 256 * 1024, true), (256 * 1024, 128 * 1024, false), (384 * 1024, SIZE - 384 * 1024, true)]
        );
        // A sub-range starting inside the hole.
        assert_eq!(
            b.is_allocated(300 * 1024, 100 * 1024).unwrap(),
            vec![(300 * 1024, 84 * 1024, false), (384 * 1024, 16 * 1024, true)]
        );
    });
    assert_eq!(std::fs::metadata(f.path()).unwrap().len(), SIZE, "KEEP_SIZE");
}

#[test]
fn write_zeroes_zeroes() {
    const SIZE: u64 = 1 << 20;
    let f = image(SIZE);
    let b = open(&f);
    run(async {
        b.write(0, vec![0x5a; SIZE as usize], false).await.unwrap();
        b.write_zeroes(4096, 64 * 1024).await.unwrap();
        // Not block aligned either.
        b.write_zeroes(200_001, 3333).await.unwrap();
        let got = b.read(0, SIZE as usize).await.unwrap();
        for (i, &x) in got.iter().enumerate() {
            let zero = (4096..4096 + 64 * 1024).contains(&i) || (200_001..200_001 + 3333).contains(&i);
            assert_eq!(x, if zero { 0 } else { 0x5a }, "byte {i}");
        }
    });
    assert_eq!(std::fs::metadata(f.path()).unwrap().len(), SIZE);
}

#[test]
fn flush_and_fua() {
    let f = image(1 << 20);
    let b = open(&f);
    run(async {
        b.write(0, vec![1; 4096], false).await.unwrap();
        b.flush().await.unwrap();
        b.write(4096, vec![2; 4096], true).await.unwrap();
    });
    let back = read_back(&f);
    assert!(back[..4096].iter().all(|&x| x == 1));
    assert!(back[4096..8192].iter().all(|&x| x == 2));
}

#[test]
fn enospc_keeps_its_kind() {
    // Writing to /dev/full fails with ENOSPC.
    let b = FileBackend::open(Path::new("/dev/full"), &FileOptions::default()).unwrap();
    run(async {
        for fua in [false, true] {
            let e = b.write(0, vec![7; 4096], fua).await.unwrap_err();
            assert_eq!((e.kind, e.errno, e.op), (ErrorKind::NoSpace, libc::ENOSPC, "write"));
        }
        // Reads of /dev/full return zeros.
        assert_eq!(b.read(0, 1000).await.unwrap(), vec![0; 1000]);
    });
}

#[test]
fn eio_maps_to_io_kind() {
    let e = lunar_block::BlockError::from_errno(libc::EIO, "read", 512, 4096);
    assert_eq!((e.kind, e.errno, e.offset, e.len), (ErrorKind::Io, libc::EIO, 512, 4096));
    let e = lunar_block::BlockError::from_errno(libc::ENOSPC, "write", 0, 1);
    assert_eq!(e.kind, ErrorKind::NoSpace);
}

#[test]
fn readonly_refuses_writes() {
    let f = image(1 << 16);
    let b = FileBackend::open(f.path(), &FileOptions { direct: false, readonly: true }).unwrap();
    run(async {
        assert_eq!(b.write(0, vec![1; 512], false).await.unwrap_err().kind, ErrorKind::ReadOnly);
        assert_eq!(b.discard(0, 512).await.unwrap_err().kind, ErrorKind::ReadOnly);
        assert_eq!(b.write_zeroes(0, 512).await.unwrap_err().kind, ErrorKind::ReadOnly);
        assert_eq!(b.read(0, 512).await.unwrap(), vec![0; 512]);
    });
}

#[test]
fn open_errors_keep_their_errno() {
    let e = FileBackend::open(Path::new("/nonexistent/lunar.img"), &FileOptions::default()).err().unwrap();
    assert_eq!(e.errno, libc::ENOENT);
}

#[test]
fn two_threads_share_one_backend() {
    const HALF: u64 = 2 << 20;
    let f = image(2 * HALF);
    let b = Arc::new(open(&f));
    let threads: Vec<_> = (0..2u64)
        .map(|t| {
            let b = b.clone();
            std::thread::spawn(move || {
                run(async move {
                    let base = t * HALF;
                    let mut rng = Rng(t + 100);
                    let mut model = vec![0u8; HALF as usize];
                    for round in 0..20 {
                        let mut tasks = Vec::new();
                        for _ in 0..16 {
                            let len = 512 * (1 + rng.below(64)) as usize;
                            let off = rng.below(HALF - len as u64);
                            let data = rng.bytes(len);
                            model[off as usize..off as usize + len].copy_from_slice(&data);
                            // Sequential within a round so overlapping writes keep their order.
                            b.write(base + off, data, round % 5 == 0).await.unwrap();
                            let b = b.clone();
                            let expect = model[off as usize..off as usize + len].to_vec();
                            tasks.push(tokio::task::spawn_local(async move {
                                let got = b.read(base + off, len).await.unwrap();
                                (got, expect)
                            }));
                        }
                        for task in tasks {
                            let (got, expect) = task.await.unwrap();
                            // Later writes of the round may overlap: only check
                            // the reads against the final model below.
                            assert_eq!(got.len(), expect.len());
                        }
                    }
                    assert_eq!(b.read(base, HALF as usize).await.unwrap(), model);
                    model
                })
            })
        })
        .collect();
    let models: Vec<Vec<u8>> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert_eq!(read_back(&f), models.concat());
}

#[test]
fn cancelled_read_is_harmless() {
    const SIZE: u64 = 8 << 20;
    let f = image(SIZE);
    let b = open(&f);
    run(async {
        b.write(0, vec![9; SIZE as usize], false).await.unwrap();
        for _ in 0..50 {
            let mut fut = Box::pin(b.read(0, SIZE as usize));
            // Pending (cancelled in flight) or already complete (the read
            // finished inside its submit): either way dropping it is harmless.
            let _ = std::future::poll_fn(|cx| Poll::Ready(fut.as_mut().poll(cx))).await;
            drop(fut);
        }
        // A cancelled write too (its buffer must outlive the future).
        {
            let mut fut = pin!(b.write(0, vec![9; 1 << 20], false));
            let _ = std::future::poll_fn(|cx| Poll::Ready(fut.as_mut().poll(cx))).await;
        }
        // Other I/O completes, and sees the data.
        let got = b.read(4096, 65536).await.unwrap();
        assert!(got.iter().all(|&x| x == 9));
        b.write(0, vec![3; 4096], true).await.unwrap();
        assert_eq!(b.read(0, 4096).await.unwrap(), vec![3; 4096]);
    });
}

#[test]
fn consecutive_runtimes_on_one_thread() {
    // The thread's ring outlives a runtime and its LocalSet (and their reaper
    // task); the next runtime on the thread starts a new reaper.
    let f = image(1 << 20);
    let b = open(&f);
    for i in 0..3u8 {
        run(async {
            b.write(u64::from(i) * 4096, vec![i + 1; 4096], false).await.unwrap();
            assert_eq!(b.read(u64::from(i) * 4096, 4096).await.unwrap(), vec![i + 1; 4096]);
        });
    }
    // A runtime dropped with a read still in flight.
    {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let local = tokio::task::LocalSet::new();
        let b = Rc::new(open(&f));
        let b2 = b.clone();
        local.spawn_local(async move {
            let _ = b2.read(0, 1 << 20).await;
        });
        local.block_on(&rt, tokio::task::yield_now());
    }
    run(async {
        assert_eq!(b.read(8192, 4096).await.unwrap(), vec![3; 4096]);
    });
    let mut file = std::fs::File::open(f.path()).unwrap();
    file.seek(SeekFrom::Start(4096)).unwrap();
    let mut v = [0u8; 1];
    file.read_exact(&mut v).unwrap();
    assert_eq!(v[0], 2);
    let _ = file.flush();
}

#[test]
fn memory_file_systems_work_in_place() {
    // /dev/shm is tmpfs: reads and writes are done in place, not on the ring.
    let Ok(f) = tempfile::NamedTempFile::new_in("/dev/shm") else {
        panic!("/dev/shm is needed for this test");
    };
    f.as_file().set_len(1 << 20).unwrap();
    let b = open(&f);
    run(async {
        let data: Vec<u8> = (0..65536u32).map(|i| (i * 7) as u8).collect();
        b.write(4096, data.clone(), true).await.unwrap();
        assert_eq!(b.read(4096, data.len()).await.unwrap(), data);
        assert_eq!(b.read(0, 4096).await.unwrap(), vec![0; 4096]);
        assert!(b.read(1 << 20, 512).await.is_err());
    });
}

/// Lent memory aligned for O_DIRECT: `pieces` segments of `each` bytes
/// from one allocation, each starting on a 4096-byte boundary.
fn aligned_sg(pieces: usize, each: usize) -> lunar_block::SgBuf {
    let mut backing = vec![0u8; pieces * each + 4096];
    let start = backing.as_ptr().align_offset(4096);
    let base = backing[start..].as_mut_ptr();
    let segs: Vec<(*mut u8, usize)> = (0..pieces).map(|i| (base.wrapping_add(i * each), each)).collect();
    // SAFETY: the segments lie inside `backing` (moved into the keeper: its
    // heap memory does not move), which nothing else touches afterwards.
    unsafe { lunar_block::SgBuf::from_raw_parts(segs, Arc::new(std::sync::Mutex::new(backing))) }
}

#[test]
fn reads_land_in_lent_memory_by_every_path() {
    const SIZE: u64 = 1 << 20;
    let mut rng = Rng(0x5eed);
    let content = rng.bytes(SIZE as usize);
    let dirs = [std::path::PathBuf::from("/var/tmp"), std::path::PathBuf::from("/dev/shm")];
    for dir in dirs.iter().filter(|d| d.is_dir()) {
        let f = image_in(dir, SIZE);
        std::fs::write(f.path(), &content).unwrap();
        let buffered = open(&f);
        let direct = FileBackend::open(f.path(), &FileOptions { direct: true, readonly: false }).ok();
        run(async {
            // Buffered (page-cache hits: one preadv2; on tmpfs: preadv),
            // unaligned segments of odd sizes.
            for (offset, len, pieces) in [(0u64, 4096usize, 1usize), (512, 65536, 7), (4096 * 3, 12288, 3)] {
                let sg = lunar_block::SgBuf::zeroed(len + 100, pieces);
                buffered.read_into(offset, &sg, len).await.unwrap();
                assert_eq!(sg.filled(), len);
                let got = sg.to_vec(len + 100);
                assert_eq!(&got[..len], &content[offset as usize..offset as usize + len], "{dir:?} {offset}+{len}");
                assert!(got[len..].iter().all(|&b| b == 0), "nothing past len");
            }
            let sg = lunar_block::SgBuf::zeroed(100, 1);
            assert_eq!(buffered.read_into(0, &sg, 200).await.unwrap_err().kind, ErrorKind::OutOfRange);
            assert_eq!(buffered.read_into(SIZE - 50, &sg, 100).await.unwrap_err().kind, ErrorKind::OutOfRange);
            let Some(direct) = &direct else { return };
            // O_DIRECT into aligned lent memory (io_uring readv: the page
            // cache is bypassed), and into unaligned memory (bounce + copy).
            let sg = aligned_sg(4, 4096);
            direct.read_into(8192, &sg, 16384).await.unwrap();
            assert_eq!(sg.to_vec(16384), &content[8192..8192 + 16384]);
            let sg = lunar_block::SgBuf::zeroed(4096 + 3, 3);
            direct.read_into(4096, &sg, 4096).await.unwrap();
            assert_eq!(sg.to_vec(4096), &content[4096..8192]);
            // Written through O_DIRECT: not in the page cache, so a buffered
            // read into lent memory cannot be served without waiting and goes
            // to io_uring (readv).
            let fresh = rng.bytes(65536);
            direct.write(131072, fresh.clone(), true).await.unwrap();
            let sg = lunar_block::SgBuf::zeroed(65536, 5);
            buffered.read_into(131072, &sg, 65536).await.unwrap();
            assert_eq!(sg.to_vec(65536), fresh);
        });
    }
}
