//! Turns on the `rbd` backend (cfg `lunar_rbd`) when the `rbd` feature is on
//! and librbd/librados can be linked here: their C headers are installed
//! (Debian: `librbd-dev`, `librados-dev`). Without them the crate still
//! builds; `RbdBackend::open` then fails with `RbdError::NotBuilt`.
//! `LUNAR_NO_RBD=1` forces the backend off (to build and test that case).

use std::path::Path;

fn main() {
    println!("cargo::rustc-check-cfg=cfg(lunar_rbd)");
    println!("cargo::rerun-if-env-changed=LUNAR_NO_RBD");
    println!("cargo::rerun-if-env-changed=LUNAR_RBD_INCLUDE");
    let include = std::env::var("LUNAR_RBD_INCLUDE").unwrap_or_else(|_| "/usr/include".to_string());
    let headers = [format!("{include}/rbd/librbd.h"), format!("{include}/rados/librados.h")];
    for h in &headers {
        println!("cargo::rerun-if-changed={h}");
    }
    let wanted = std::env::var_os("CARGO_FEATURE_RBD").is_some();
    let forced_off = std::env::var("LUNAR_NO_RBD").is_ok_and(|v| !v.is_empty() && v != "0");
    let present = headers.iter().all(|h| Path::new(h).exists());
    if wanted && !forced_off && present {
        println!("cargo::rustc-cfg=lunar_rbd");
        println!("cargo::rustc-link-lib=dylib=rbd");
        println!("cargo::rustc-link-lib=dylib=rados");
    } else if wanted && !forced_off {
        println!("cargo::warning=librbd/librados headers not found under {include}: backend=rbd is disabled");
    }
}
