//! Builds the eBPF programs (bpf/oncache-ebpf) into `$OUT_DIR/oncache.bpf.o`, which the binary
//! embeds with `include_bytes!(concat!(env!("OUT_DIR"), "/oncache.bpf.o"))`.
//!
//! The eBPF crate is its own workspace, built by a nested cargo for `bpfel-unknown-none` with
//! `-Z build-std=core` on the stable toolchain (`RUSTC_BOOTSTRAP=1`) and linked by bpf-linker.
//! Needs the `rust-src` component and bpf-linker 0.10.3: `packaging/deps.sh` installs both.

use std::{
    env, fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

const TARGET: &str = "bpfel-unknown-none";
const CRATE_BIN: &str = "oncache-ebpf";
const OBJECT: &str = "oncache.bpf.o";

fn main() {
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));
    let bpf_dir = manifest_dir.join("../bpf");
    let ebpf_dir = bpf_dir.join("oncache-ebpf");

    // Exactly the inputs of the object (not the whole folder: a manual build's target/ inside it
    // would make every build rerun this script).
    for input in [
        "oncache-ebpf/Cargo.toml",
        "oncache-ebpf/Cargo.lock",
        "oncache-ebpf/build.rs",
        "oncache-ebpf/src",
        "oncache-common/Cargo.toml",
        "oncache-common/src",
    ] {
        println!("cargo:rerun-if-changed={}", bpf_dir.join(input).display());
    }

    let target_dir = out_dir.join("ebpf-target");
    let mut cargo = Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cargo
        .current_dir(&ebpf_dir)
        .args(["build", "--locked", "--release", "--target", TARGET])
        .args(["-Z", "build-std=core"])
        .arg("--target-dir")
        .arg(&target_dir)
        // -Z on the stable toolchain.
        .env("RUSTC_BOOTSTRAP", "1")
        // cargo's status lines to our stderr: shown when this script fails, never parsed as
        // build-script directives.
        .stdout(Stdio::from(std::io::stderr()))
        .stderr(Stdio::inherit());
    clean_env(&mut cargo);
    if let Some(path) = path_with_cargo_bin() {
        cargo.env("PATH", path);
    }

    let status = cargo.status().unwrap_or_else(|e| {
        fail(&format!(
            "could not run cargo for {}: {e}",
            ebpf_dir.display()
        ))
    });
    if !status.success() {
        fail(&format!(
            "building the eBPF programs in {} failed ({status}); the error is above. They need the \
             rust-src component and bpf-linker 0.10.3 in PATH: run packaging/deps.sh",
            ebpf_dir.display()
        ));
    }

    let built = target_dir.join(TARGET).join("release").join(CRATE_BIN);
    let object = out_dir.join(OBJECT);
    fs::copy(&built, &object).unwrap_or_else(|e| {
        fail(&format!(
            "copying {} to {}: {e}",
            built.display(),
            object.display()
        ))
    });
}

/// The environment cargo gives a build script describes *this* package and the host target;
/// none of it may leak into the nested build for another target. `RUSTC` stays: the programs are
/// built by the same compiler as the binary.
fn clean_env(cmd: &mut Command) {
    const EXACT: [&str; 16] = [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_BUILD_TARGET",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET_DIR",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTC_LINKER",
        "RUSTDOC",
        "TARGET",
        "HOST",
        "OUT_DIR",
        "PROFILE",
        "OPT_LEVEL",
        "DEBUG",
    ];
    const PREFIXES: [&str; 5] = [
        "CARGO_CFG_",
        "CARGO_FEATURE_",
        "CARGO_PKG_",
        "CARGO_MANIFEST_",
        "CARGO_PRIMARY_",
    ];
    for (key, _) in env::vars_os() {
        let Some(key) = key.to_str() else { continue };
        if EXACT.contains(&key) || PREFIXES.iter().any(|p| key.starts_with(p)) {
            cmd.env_remove(key);
        }
    }
}

/// bpf-linker is installed by `cargo install`: make sure its folder is in PATH even when cargo
/// itself was found elsewhere.
fn path_with_cargo_bin() -> Option<std::ffi::OsString> {
    let cargo_home = env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")))?;
    let bin = cargo_home.join("bin");
    let mut paths: Vec<PathBuf> =
        env::split_paths(&env::var_os("PATH").unwrap_or_default()).collect();
    if !paths.contains(&bin) {
        paths.push(bin);
    }
    env::join_paths(paths).ok()
}

fn fail(msg: &str) -> ! {
    eprintln!("error: {msg}");
    std::process::exit(1);
}
