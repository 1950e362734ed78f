//! The test image: a busybox + iperf3 + sockperf rootfs built by tests/image/build-rootfs.sh,
//! once per test binary, and imported into each host's dockerd with `docker import`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use super::process::run_ok;

/// Name the image gets in every host's dockerd.
pub const IMAGE: &str = "oncache-test:latest";

/// The script that builds the rootfs tarball.
pub fn build_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/image/build-rootfs.sh")
}

/// Per-process folder holding the tarball (removed at process exit, or by the stale sweep of a
/// later run if this process was killed).
pub fn image_dir() -> PathBuf {
    PathBuf::from(format!("/tmp/oncache-lab-image-{}", std::process::id()))
}

static TARBALL: OnceLock<Result<PathBuf, String>> = OnceLock::new();

extern "C" fn remove_image_dir() {
    let _ = std::fs::remove_dir_all(image_dir());
}

/// Path of the rootfs tarball, building it on first use (thread-safe; panics with the script's
/// output if the build fails).
pub fn rootfs_tar() -> &'static Path {
    let r = TARBALL.get_or_init(|| {
        let dir = image_dir();
        std::fs::create_dir_all(&dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
        // Runs at process exit (libtest ends with exit(), which runs atexit handlers).
        unsafe {
            libc::atexit(remove_image_dir);
        }
        let out = dir.join("rootfs.tar");
        run_ok(
            Command::new("sh").arg(build_script()).arg(&out),
            Duration::from_secs(120),
        )?;
        Ok(out)
    });
    match r {
        Ok(p) => p,
        Err(e) => panic!("building the test image failed: {e}"),
    }
}
