//! `scripts/ensure-build-deps.sh`, the first thing `make run` and `make
//! test` execute on a new machine, against fake trees of library files:
//! it must see the libclang that bindgen loads, and only that one.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/ensure-build-deps.sh")
}

/// A directory tree standing for `/`, holding empty files at `files`.
fn sysroot(files: &[&str]) -> tempfile::TempDir {
    let root = tempfile::tempdir().expect("tempdir");
    for f in files {
        let path = root.path().join(f);
        std::fs::create_dir_all(path.parent().expect("a parent")).expect("mkdir");
        std::fs::write(&path, b"").expect("touch");
    }
    root
}

fn run(root: &Path, libclang_path: Option<&Path>, args: &[&str]) -> Output {
    let mut cmd = Command::new("bash");
    cmd.arg(script())
        .args(args)
        .env("HEARTBEATER_SYSROOT", root)
        .env_remove("LIBCLANG_PATH");
    if let Some(p) = libclang_path {
        cmd.env("LIBCLANG_PATH", p);
    }
    cmd.output().expect("bash runs")
}

fn check(root: &Path, libclang_path: Option<&Path>) -> (bool, String) {
    let out = run(root, libclang_path, &["--check-libclang"]);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_owned(),
    )
}

#[test]
fn the_cpp_library_alone_is_not_libclang() {
    // Debian's libclang-cpp14 without libclang-14: bindgen finds nothing.
    let root = sysroot(&["usr/lib/llvm-14/lib/libclang-cpp.so.14"]);
    assert_eq!(check(root.path(), None), (false, String::new()));
}

#[test]
fn a_versioned_libclang_is_enough() {
    let root = sysroot(&[
        "usr/lib/llvm-14/lib/libclang-cpp.so.14",
        "usr/lib/llvm-14/lib/libclang-14.so.1",
    ]);
    let (found, path) = check(root.path(), None);
    assert!(found);
    assert!(
        path.ends_with("usr/lib/llvm-14/lib/libclang-14.so.1"),
        "{path}"
    );

    let root = sysroot(&["usr/lib/x86_64-linux-gnu/libclang.so.1"]);
    assert!(check(root.path(), None).0);
}

#[test]
fn libclang_path_is_the_only_place_looked_at_when_set() {
    let elsewhere = sysroot(&["opt/llvm/lib/libclang.so"]);
    let system = sysroot(&["usr/lib/llvm-14/lib/libclang-14.so.1"]);
    let empty = sysroot(&[]);

    let (found, path) = check(empty.path(), Some(&elsewhere.path().join("opt/llvm/lib")));
    assert!(found, "LIBCLANG_PATH's libclang is used");
    assert!(path.ends_with("opt/llvm/lib/libclang.so"), "{path}");

    // bindgen would not look in the system directories either.
    let (found, _) = check(system.path(), Some(&empty.path().join("nothing")));
    assert!(!found, "a LIBCLANG_PATH without libclang is a failure");
}

#[test]
fn a_first_build_is_announced_and_a_later_one_is_not() {
    // A libclang in the fake tree: nothing gets installed.
    let root = sysroot(&["usr/lib/llvm-14/lib/libclang-14.so.1"]);
    let profile = tempfile::tempdir().expect("tempdir");
    let announce = |root: &Path| {
        let out = run(
            root,
            None,
            &["--announce", profile.path().to_str().expect("utf-8")],
        );
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let first = announce(root.path());
    assert!(first.contains("compiling RocksDB"), "{first}");
    assert!(first.contains("once"), "{first}");

    let lib = profile
        .path()
        .join("build/librocksdb-sys-0123456789abcdef/out/librocksdb.a");
    std::fs::create_dir_all(lib.parent().expect("a parent")).expect("mkdir");
    std::fs::write(&lib, b"").expect("touch");
    assert_eq!(announce(root.path()), "");
}
