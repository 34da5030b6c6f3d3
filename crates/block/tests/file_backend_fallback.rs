//! The blocking fallback used where io_uring is unavailable, forced with the
//! `LUNAR_FILE_NO_URING` environment variable. One test in this binary, so
//! that setting the variable races with nothing.

use std::path::Path;

use lunar_block::{ErrorKind, FileBackend, FileOptions};

#[test]
fn blocking_fallback_works() {
    std::env::set_var("LUNAR_FILE_NO_URING", "1");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let local = tokio::task::LocalSet::new();
    let f = tempfile::NamedTempFile::new_in("/var/tmp").unwrap();
    f.as_file().set_len(1 << 20).unwrap();
    let b = FileBackend::open(f.path(), &FileOptions::default()).unwrap();
    local.block_on(&rt, async {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7) as u8).collect();
        b.write(12_345, data.clone(), false).await.unwrap();
        b.write(200_000, data.clone(), true).await.unwrap();
        assert_eq!(b.read(12_345, data.len()).await.unwrap(), data);
        // Into lent memory, on the blocking pool too.
        let sg = lunar_block::SgBuf::zeroed(data.len(), 4);
        b.read_into(12_345, &sg, data.len()).await.unwrap();
        assert_eq!(sg.to_vec(data.len()), data);
        b.flush().await.unwrap();
        b.discard(204_800, 8192).await.unwrap();
        b.write_zeroes(12_345, 1000).await.unwrap();
        let got = b.read(0, 1 << 20).await.unwrap();
        assert!(got[12_345..13_345].iter().all(|&x| x == 0));
        assert_eq!(&got[13_345..112_345], &data[1000..]);
        assert!(got[204_800..212_992].iter().all(|&x| x == 0));
        assert_eq!(b.read(1 << 20, 1).await.unwrap_err().kind, ErrorKind::OutOfRange);
        // A cancelled read on the blocking pool is harmless too.
        drop(Box::pin(b.read(0, 1 << 20)));
        let full = FileBackend::open(Path::new("/dev/full"), &FileOptions::default()).unwrap();
        assert_eq!(full.write(0, vec![1; 512], false).await.unwrap_err().kind, ErrorKind::NoSpace);
    });
    // O_DIRECT through the fallback (skipped where O_DIRECT is refused).
    if let Ok(d) = FileBackend::open(f.path(), &FileOptions { direct: true, readonly: false }) {
        local.block_on(&rt, async {
            d.write(4096, vec![5; 8192], true).await.unwrap();
            assert_eq!(d.read(4096, 8192).await.unwrap(), vec![5; 8192]);
            assert_eq!(d.read(1, 512).await.unwrap_err().kind, ErrorKind::Unsupported);
        });
    }
}
