//! Shared fixtures: deterministic disk images, qemu-img as the oracle, loop devices, nginx
//! (from `peers.rs`), and a runner for the real `cdi-mover` binary.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

pub use crate::peers::{Nginx, ensure_tool};

pub const MIB: u64 = 1 << 20;

/// The binary under test.
pub fn mover_bin() -> &'static str {
    env!("CARGO_BIN_EXE_cdi-mover")
}

/// Runs a command, panicking with its output when it fails.
pub fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

pub fn qemu_img(args: &[&str]) -> Output {
    run(Command::new("qemu-img").args(args))
}

pub fn qemu_io(image: &str, cmds: &[&str]) {
    qemu_io_fmt("qcow2", image, cmds);
}

/// [`qemu_io`] on an image of another format (`vhdx`, ...).
pub fn qemu_io_fmt(format: &str, image: &str, cmds: &[&str]) {
    let mut c = Command::new("qemu-io");
    c.arg("-f").arg(format);
    for cmd in cmds {
        c.arg("-c").arg(cmd);
    }
    c.arg(image);
    run(&mut c);
}

/// `qemu-img compare` of an image (any format qemu reads) with a raw target: the oracle.
pub fn assert_same(image: &Path, image_fmt: &str, target: &Path) {
    let out = Command::new("qemu-img")
        .args(["compare", "-f", image_fmt, "-F", "raw"])
        .arg(image)
        .arg(target)
        .output()
        .expect("run qemu-img compare");
    assert!(
        out.status.success(),
        "qemu-img compare {} {} differs: {}{}",
        image.display(),
        target.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Like [`assert_same`], for a raw target larger than the image: only its first `size`
/// bytes are compared.
pub fn assert_same_prefix(image: &Path, image_fmt: &str, target: &Path, size: u64) {
    let a = format!("driver={image_fmt},file.filename={}", image.display());
    let b = format!("driver=raw,size={size},file.filename={}", target.display());
    let out =
        Command::new("qemu-img").args(["compare", "--image-opts", &a, &b]).output().expect("run qemu-img compare");
    assert!(
        out.status.success(),
        "qemu-img compare {a} {b} differs: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A deterministic pseudo-random generator (xorshift), so fixtures need no crate.
#[derive(Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// Writes a sparse raw disk of `size` bytes shaped like a real one: random extents, text-like
/// extents, zero-filled extents written as data, holes, and data in the last bytes.
pub fn make_raw(path: &Path, size: u64, seed: u64) {
    let mut rng = Rng::new(seed);
    let f = std::fs::File::create(path).unwrap();
    f.set_len(size).unwrap();
    let write = |off: u64, data: &[u8]| std::os::unix::fs::FileExt::write_all_at(&f, data, off).unwrap();
    let mut off = 0u64;
    while off < size {
        let kind = rng.next() % 5;
        let len = ((rng.next() % 96) + 1) * 16 * 1024; // 16 KiB .. 1.5 MiB
        let len = len.min(size - off);
        let mut buf = vec![0u8; len as usize];
        match kind {
            0 | 1 => rng.fill(&mut buf),
            2 => {
                let words: [&[u8]; 6] = [b"kernel ", b"image ", b"the ", b"disk\n", b"42 ", b"volume "];
                let mut i = 0;
                while i < buf.len() {
                    let w = words[(rng.next() % 6) as usize];
                    let n = w.len().min(buf.len() - i);
                    buf[i..i + n].copy_from_slice(&w[..n]);
                    i += n;
                }
            }
            3 => {} // zeros written as data: must become holes / zeroed ranges
            _ => {
                off += len; // a hole
                continue;
            }
        }
        if kind != 3 || rng.next().is_multiple_of(2) {
            write(off, &buf);
        }
        off += len;
    }
    // Data right at the end, so truncation at the image's tail shows.
    let tail = 4096.min(size) as usize;
    let mut buf = vec![0u8; tail];
    rng.fill(&mut buf);
    write(size - tail as u64, &buf);
    f.sync_all().unwrap();
}

/// Bytes allocated on disk for a file.
pub fn allocated(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).unwrap().blocks() * 512
}

/// Runs `cdi-mover import` with extra args; returns the output.
pub fn import(source: &str, target: &Path, extra: &[&str]) -> Output {
    let mut cmd = Command::new(mover_bin());
    cmd.arg("import").arg(source).arg(target).args(extra);
    if !extra.contains(&"--progress") {
        cmd.args(["--progress", "none"]);
    }
    cmd.env("RUST_LOG", "warn");
    with_timeout(cmd, Duration::from_secs(120))
}

/// Runs a command with a deadline, so a hang fails the test with a message instead of
/// stalling the suite.
pub fn with_timeout(mut cmd: Command, limit: Duration) -> Output {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    let start = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!("{cmd:?} still running after {limit:?} (hung?): {}", String::from_utf8_lossy(&out.stderr));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn assert_ok(out: &Output) {
    assert!(
        out.status.success(),
        "cdi-mover failed ({:?}): {}{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Asserts a clean refusal: non-zero exit (not a panic's 101), one line on stderr that
/// contains every `needle`.
pub fn assert_refused(out: &Output, needles: &[&str]) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let code = out.status.code();
    assert!(code.is_some() && code != Some(0) && code != Some(101), "expected a clean failure, got {code:?}: {stderr}");
    assert!(!stderr.contains("panicked"), "panic: {stderr}");
    let line = stderr
        .lines()
        .find(|l| l.starts_with("cdi-mover: error:"))
        .unwrap_or_else(|| panic!("no error line in {stderr:?}"));
    for n in needles {
        assert!(line.to_lowercase().contains(&n.to_lowercase()), "error line {line:?} lacks {n:?}");
    }
    line.to_string()
}

/// A loop device over a sparse backing file, pre-filled with random bytes (old data that
/// must not survive where the image has zeros). Detached on drop.
pub struct LoopDev {
    pub path: PathBuf,
    _backing: PathBuf,
}

impl LoopDev {
    pub fn new(dir: &Path, size: u64, seed: u64) -> LoopDev {
        let backing = dir.join(format!("loop-{seed}.img"));
        let mut f = std::fs::File::create(&backing).unwrap();
        let mut rng = Rng::new(seed ^ 0xdead_beef);
        let mut buf = vec![0u8; MIB as usize];
        let mut left = size;
        while left > 0 {
            let n = left.min(MIB) as usize;
            rng.fill(&mut buf[..n]);
            f.write_all(&buf[..n]).unwrap();
            left -= n as u64;
        }
        f.sync_all().unwrap();
        LoopDev::over(backing, &[])
    }

    /// A loop device over an existing `backing` file, with `losetup` options (`--offset`).
    pub fn over(backing: PathBuf, options: &[&str]) -> LoopDev {
        let out = run(Command::new("losetup").args(["-f", "--show"]).args(options).arg(&backing));
        let path = PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
        LoopDev { path, _backing: backing }
    }

    /// The file behind the device: its allocation shows what was written and what punched.
    pub fn backing(&self) -> &Path {
        &self._backing
    }
}

impl Drop for LoopDev {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.path).status();
    }
}

/// A test CA and a server certificate for 127.0.0.1, as PEM files in `dir`.
pub struct TestCa {
    pub ca_pem: PathBuf,
    pub cert_pem: PathBuf,
    pub key_pem: PathBuf,
}

pub fn make_ca(dir: &Path) -> TestCa {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, SanType};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, "cdi-rs test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    params.subject_alt_names.push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let cert = params.signed_by(&key, &issuer).unwrap();
    let t = TestCa { ca_pem: dir.join("ca.pem"), cert_pem: dir.join("server.pem"), key_pem: dir.join("server.key") };
    std::fs::write(&t.ca_pem, ca.pem()).unwrap();
    std::fs::write(&t.cert_pem, cert.pem()).unwrap();
    std::fs::write(&t.key_pem, key.serialize_pem()).unwrap();
    t
}

pub fn tempdir() -> tempfile::TempDir {
    // On the real disk (not tmpfs): direct I/O and sparse files behave as on a volume.
    let base = Path::new(env!("CARGO_TARGET_TMPDIR"));
    std::fs::create_dir_all(base).unwrap();
    // CDI_KEEP_TEST_FILES=1 keeps them for a post-mortem.
    tempfile::Builder::new()
        .prefix("it-")
        .disable_cleanup(std::env::var_os("CDI_KEEP_TEST_FILES").is_some())
        .tempdir_in(base)
        .unwrap()
}

pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `SRC.gz`, made with `gzip -1`: the same image as a one-pass stream.
pub fn gzip(src: &Path) -> PathBuf {
    let gz = PathBuf::from(format!("{}.gz", s(src)));
    run(Command::new("sh").arg("-c").arg(format!("gzip -1 -c {} > {}", s(src), s(&gz))));
    gz
}

/// Imports `source` into `out` in-process, on the library: the outcome must be a complete
/// image or a clean error that leaves nothing behind. Returns whether it succeeded.
pub fn import_in_process(rt: &tokio::runtime::Runtime, source: &Path, out: &Path, label: &str) -> bool {
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;
    let _ = std::fs::remove_file(out);
    let req =
        cdi_mover::ImportRequest::new(cdi_mover::source::SourceSpec::File(source.to_path_buf()), out.to_path_buf());
    let progress = cdi_mover::progress::Progress::new();
    match cdi_mover::import(&req, rt.handle(), &progress, Arc::new(AtomicBool::new(false))) {
        Ok(_) => true,
        Err(e) => {
            assert!(!e.to_string().is_empty(), "{label}: empty error");
            assert!(!out.exists(), "{label}: a failed import left {}", out.display());
            false
        }
    }
}

/// Runs a shell script, panicking with its output when it fails.
pub fn sh(script: &str) {
    run(Command::new("sh").arg("-c").arg(script));
}

/// Overwrites bytes of a file in place (to damage a fixture).
pub fn poke(f: &Path, at: u64, bytes: &[u8]) {
    use std::os::unix::fs::FileExt;
    std::fs::OpenOptions::new().write(true).open(f).unwrap().write_all_at(bytes, at).unwrap();
}

/// Reads `len` bytes of a file at `at`.
pub fn peek(f: &Path, at: u64, len: usize) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let mut b = vec![0u8; len];
    std::fs::File::open(f).unwrap().read_exact_at(&mut b, at).unwrap();
    b
}

/// Asserts the import of `src` into a file in `dir` is refused with `needles` and leaves
/// nothing behind (no image, no `.partial`). Returns the error line.
pub fn refused(dir: &Path, src: &Path, needles: &[&str]) -> String {
    let out = dir.join("refused.raw");
    let line = assert_refused(&import(s(src), &out, &[]), needles);
    assert!(!out.exists() && !dir.join("refused.raw.partial").exists(), "{}: an image was left behind", s(src));
    line
}
