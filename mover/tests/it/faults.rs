//! The data path's fault matrix: `cdi-mover import` killed with SIGKILL mid-write into a
//! file, a volume (`disk.img`) and a loop device, and an HTTP source that drops connections
//! at random offsets.
//!
//! What must hold after every fault: nothing looks complete that is not (no final file, no
//! `disk.img`; a `.partial` may remain after SIGKILL, which no cleanup can prevent), a re-run
//! replaces what the killed run left and ends identical to the image (`qemu-img compare`),
//! and a download that resumes never fetches again what it already had.
//!
//! The source is a small HTTP server of our own ([`Flaky`]): nginx cannot stall at a byte
//! count or cut a response at an offset we choose.

use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, mpsc};
use std::time::{Duration, Instant};

use crate::support::*;

/// Longest wait for anything a test awaits here; a hang fails with a message before
/// nextest's own timeout.
const WAIT: Duration = Duration::from_secs(60);

/// One response the server gave: the byte range asked for, the body bytes written, and
/// whether it was cut short on purpose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Served {
    head: bool,
    /// A 206 to a range request (else a 200 with the whole file).
    ranged: bool,
    start: u64,
    end: u64,
    sent: u64,
    cut: bool,
}

/// Which GET responses the server cuts: each with a chance of one in `one_in`, until `left`
/// cuts were made; one cut in four drops the connection before the headers, the others at a
/// random offset of the body.
#[derive(Debug)]
struct Cuts {
    rng: Rng,
    one_in: u64,
    left: usize,
}

#[derive(Debug)]
struct Budget {
    /// Body bytes served so far, all responses together.
    served: u64,
    /// Responses stall once `served` reaches this (`u64::MAX`: never).
    gate: u64,
}

#[derive(Debug)]
struct Shared {
    data: Vec<u8>,
    ranges: bool,
    budget: Mutex<Budget>,
    moved: Condvar,
    cuts: Mutex<Option<Cuts>>,
    /// HEAD requests still to drop before answering.
    drop_heads: Mutex<usize>,
    log: Mutex<Vec<Served>>,
    stop: AtomicBool,
}

/// An HTTP/1.1 server of one file at `/image`, one response per connection: HEAD, GET, and
/// single `Range: bytes=a-b` requests when `ranges` is on. It can stall every response once
/// a number of body bytes went out ([`Flaky::gate`]), and cut responses at random offsets
/// ([`Flaky::cut_randomly`]). It logs what each response sent.
#[derive(Debug)]
struct Flaky {
    port: u16,
    shared: Arc<Shared>,
}

impl Flaky {
    fn start(data: Vec<u8>, ranges: bool) -> Flaky {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let shared = Arc::new(Shared {
            data,
            ranges,
            budget: Mutex::new(Budget { served: 0, gate: u64::MAX }),
            moved: Condvar::new(),
            cuts: Mutex::new(None),
            drop_heads: Mutex::new(0),
            log: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
        });
        let sh = shared.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if sh.stop.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(conn) = conn else { continue };
                let sh = sh.clone();
                std::thread::spawn(move || respond(conn, &sh));
            }
        });
        Flaky { port, shared }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/image", self.port)
    }

    /// Responses stall once `bytes` of body went out in total (`u64::MAX` opens the gate).
    fn gate(&self, bytes: u64) {
        self.shared.budget.lock().unwrap().gate = bytes;
        self.shared.moved.notify_all();
    }

    fn cut_randomly(&self, seed: u64, one_in: u64, max_cuts: usize) {
        *self.shared.cuts.lock().unwrap() = Some(Cuts { rng: Rng::new(seed), one_in, left: max_cuts });
    }

    /// Drops the next `n` HEAD requests without an answer.
    fn drop_heads(&self, n: usize) {
        *self.shared.drop_heads.lock().unwrap() = n;
    }

    fn log(&self) -> Vec<Served> {
        self.shared.log.lock().unwrap().clone()
    }

    fn forget(&self) {
        self.shared.log.lock().unwrap().clear();
        self.shared.budget.lock().unwrap().served = 0;
    }
}

impl Drop for Flaky {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.moved.notify_all();
        // Wakes the accept loop so that it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn respond(mut conn: TcpStream, sh: &Shared) {
    let Some((method, path, range)) = read_request(&mut conn) else { return };
    let len = sh.data.len() as u64;
    let head = method == "HEAD";
    if path != "/image" || !(head || method == "GET") {
        let _ = conn.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        return;
    }
    let (status, start, end) = match range.filter(|_| sh.ranges && !head) {
        Some((a, b)) if a < len => ("206 Partial Content", a, b.map_or(len, |b| (b + 1).min(len))),
        Some(_) => {
            let _ = write!(
                conn,
                "HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */{len}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
            return;
        }
        None => ("200 OK", 0, len),
    };
    let mut record = Served { head, ranged: status.starts_with("206"), start, end, sent: 0, cut: false };
    if head {
        let mut drops = sh.drop_heads.lock().unwrap();
        if *drops > 0 {
            *drops -= 1;
            record.cut = true;
            sh.log.lock().unwrap().push(record);
            let _ = conn.shutdown(Shutdown::Both);
            return;
        }
    }
    // `Some(None)`: cut before the headers; `Some(Some(n))`: after n body bytes.
    let cut_at = if head {
        None
    } else {
        let mut cuts = sh.cuts.lock().unwrap();
        cuts.as_mut().and_then(|c| {
            if c.left == 0 || !c.rng.next().is_multiple_of(c.one_in) {
                return None;
            }
            c.left -= 1;
            Some(if c.rng.next().is_multiple_of(4) { None } else { Some(c.rng.next() % (end - start).max(1)) })
        })
    };
    if cut_at == Some(None) {
        record.cut = true;
        sh.log.lock().unwrap().push(record);
        let _ = conn.shutdown(Shutdown::Both);
        return;
    }
    let cut_at = cut_at.flatten();
    let accept = if sh.ranges { "Accept-Ranges: bytes\r\n" } else { "" };
    let content_range =
        if record.ranged { format!("Content-Range: bytes {start}-{}/{len}\r\n", end - 1) } else { String::new() };
    let header = format!(
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\n{accept}{content_range}Content-Type: application/octet-stream\r\nConnection: close\r\n\r\n",
        end - start
    );
    if conn.write_all(header.as_bytes()).is_err() || head {
        sh.log.lock().unwrap().push(record);
        return;
    }
    let limit = cut_at.map_or(end, |c| start + c);
    let mut at = start;
    while at < limit {
        let Some(n) = take_budget(sh, (limit - at).min(64 << 10)) else { break };
        if conn.write_all(&sh.data[at as usize..(at + n) as usize]).is_err() {
            break;
        }
        at += n;
        record.sent += n;
    }
    record.cut = cut_at.is_some() && at == limit;
    sh.log.lock().unwrap().push(record);
    // A graceful close (FIN): every byte written arrives, so "sent" is what the client got.
    let _ = conn.shutdown(Shutdown::Both);
}

/// Reserves up to `want` body bytes under the gate, waiting while it is shut; `None` once
/// the server stops.
fn take_budget(sh: &Shared, want: u64) -> Option<u64> {
    let mut b = sh.budget.lock().unwrap();
    loop {
        if sh.stop.load(Ordering::SeqCst) {
            return None;
        }
        if b.served < b.gate {
            let n = want.min(b.gate - b.served);
            b.served += n;
            return Some(n);
        }
        b = sh.moved.wait_timeout(b, Duration::from_millis(200)).unwrap().0;
    }
}

/// A `Range: bytes=FIRST-[LAST]` header.
type Range = (u64, Option<u64>);

/// `(method, path, range)` of a request; the body (there is none) is ignored.
fn read_request(conn: &mut TcpStream) -> Option<(String, String, Option<Range>)> {
    let mut reader = BufReader::new(conn.try_clone().ok()?);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next()?.to_string(), parts.next()?.to_string());
    let mut range = None;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).ok()? == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = h.split_once(':')
            && name.eq_ignore_ascii_case("range")
        {
            let spec = value.trim().strip_prefix("bytes=")?;
            let (a, b) = spec.split_once('-')?;
            range = Some((a.parse().ok()?, b.parse().ok()));
        }
    }
    Some((method, path, range))
}

/// Bytes of `log`'s GET bodies that were served more than once.
fn served_twice(log: &[Served]) -> u64 {
    let mut spans: Vec<(u64, u64)> =
        log.iter().filter(|s| !s.head && s.sent > 0).map(|s| (s.start, s.start + s.sent)).collect();
    let total: u64 = spans.iter().map(|(a, b)| b - a).sum();
    spans.sort_unstable();
    let mut union = 0;
    let mut cur: Option<(u64, u64)> = None;
    for (a, b) in spans {
        match cur {
            Some((s, e)) if a <= e => cur = Some((s, e.max(b))),
            Some((s, e)) => {
                union += e - s;
                cur = Some((a, b));
            }
            None => cur = Some((a, b)),
        }
    }
    union += cur.map_or(0, |(s, e)| e - s);
    total - union
}

/// Polls `cond` (a counter: a file's allocation) until it holds, or fails naming `what`.
fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < WAIT, "timed out after {WAIT:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A `cdi-mover import --progress json` in flight, its progress lines read as they come.
struct Running {
    child: Child,
    bytes_done: mpsc::Receiver<u64>,
}

impl Running {
    fn start(source: &str, target: &Path, extra: &[&str]) -> Running {
        let mut child = Command::new(mover_bin())
            .arg("import")
            .arg(source)
            .arg(target)
            .args(["--progress", "json"])
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start cdi-mover import");
        let (tx, bytes_done) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
                if tx.send(v["bytes_done"].as_u64().unwrap_or(0)).is_err() {
                    return;
                }
            }
        });
        Running { child, bytes_done }
    }

    /// Waits for a progress line that shows at least `bytes` done.
    fn wait_progress(&self, bytes: u64) {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.bytes_done.recv_timeout(left) {
                Ok(done) if done >= bytes => return,
                Ok(_) => {}
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    panic!("no progress line showing {bytes} bytes done within {WAIT:?} (is the source stalled early?)")
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    panic!("the import ended before {bytes} bytes were done")
                }
            }
        }
    }

    /// SIGKILL, as the OOM killer or a node crash would: no cleanup runs.
    fn sigkill(mut self) {
        self.child.kill().unwrap();
        let status = self.child.wait().unwrap();
        assert_eq!(status.signal(), Some(9), "the import was not killed mid-write but ended: {status:?}");
    }
}

/// A test that fails mid-way must not leave the import running (it holds its target busy).
impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A raw disk of `size` bytes as `disk.raw` in `dir`, and the same disk as `disk.qcow2` and
/// `disk.raw.gz`; returns the raw one (the oracle's reference).
fn image(dir: &Path, size: u64, seed: u64) -> PathBuf {
    let raw = dir.join("disk.raw");
    make_raw(&raw, size, seed);
    qemu_img(&["convert", "-O", "qcow2", s(&raw), s(&dir.join("disk.qcow2"))]);
    run(Command::new("sh").arg("-c").arg(format!("gzip -1 -c {0}/disk.raw > {0}/disk.raw.gz", s(dir))));
    raw
}

fn bytes(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap()
}

/// Everything in a directory, by name.
fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    names
}

#[test]
fn sigkill_mid_write_into_a_file_leaves_no_final_file_and_a_rerun_replaces_the_partial() {
    let dir = tempdir();
    let raw = image(dir.path(), 32 * MIB, 21);
    let server = Flaky::start(bytes(&dir.path().join("disk.qcow2")), true);
    server.gate(12 * MIB);
    let out = dir.path().join("out.raw");
    let partial = dir.path().join("out.raw.partial");

    let killed = Running::start(&server.url(), &out, &[]);
    killed.wait_progress(4 * MIB);
    wait_until("data in the partial file", || partial.exists() && allocated(&partial) >= 2 * MIB);
    killed.sigkill();
    assert!(!out.exists(), "a killed import left a complete-looking {}", out.display());

    server.gate(u64::MAX);
    assert_ok(&import(&server.url(), &out, &[]));
    assert_same(&raw, "raw", &out);
    assert!(!partial.exists(), "the re-run left the killed run's partial file");
}

#[test]
fn sigkill_mid_write_into_a_block_device_and_a_rerun_leaves_it_identical() {
    let dir = tempdir();
    let raw = image(dir.path(), 32 * MIB, 22);
    let dev = LoopDev::new(dir.path(), 40 * MIB, 22);
    for (name, format) in [("disk.qcow2", "qcow2"), ("disk.raw.gz", "gz stream")] {
        let server = Flaky::start(bytes(&dir.path().join(name)), true);
        server.gate(12 * MIB);
        let killed = Running::start(&server.url(), &dev.path, &[]);
        killed.wait_progress(4 * MIB);
        killed.sigkill();
        server.gate(u64::MAX);
        let res = import(&server.url(), &dev.path, &[]);
        assert!(res.status.success(), "{format}: re-run failed: {}", String::from_utf8_lossy(&res.stderr));
        assert_same_prefix(&raw, "raw", &dev.path, 32 * MIB);
    }
}

/// A small ext4 filesystem on a loop device, mounted: a volume whose free space is what
/// CDI sizes `disk.img` by. Unmounted on drop (before the device goes).
struct SmallFs {
    mount: PathBuf,
    _dev: LoopDev,
}

impl SmallFs {
    fn new(dir: &Path, size: u64) -> SmallFs {
        ensure_tool("mkfs.ext4", "e2fsprogs");
        let dev = LoopDev::new(dir, size, 30);
        run(Command::new("mkfs.ext4").args(["-q", "-F", "-m", "0"]).arg(&dev.path));
        let mount = dir.join("vol");
        std::fs::create_dir_all(&mount).unwrap();
        run(Command::new("mount").arg(&dev.path).arg(&mount));
        std::fs::remove_dir(mount.join("lost+found")).unwrap();
        SmallFs { mount, _dev: dev }
    }

    fn free(&self) -> u64 {
        let st = nix::sys::statvfs::statvfs(&self.mount).unwrap();
        st.blocks_available() as u64 * st.fragment_size() as u64
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.mount).status();
    }
}

/// CDI's usable space for `free` bytes with the default overhead.
fn cdi_usable(free: u64) -> u64 {
    (free as f64 / 1.06).ceil() as u64 / MIB * MIB
}

#[test]
fn sigkill_mid_write_into_a_volume_leaves_no_disk_img_and_a_rerun_gets_the_whole_volume() {
    let dir = tempdir();
    // Most of the volume, all data: what the killed run wrote must not count as taken.
    let raw = dir.path().join("dense.raw");
    let mut data = vec![0u8; (40 * MIB) as usize];
    Rng::new(23).fill(&mut data);
    std::fs::write(&raw, &data).unwrap();
    let vol = SmallFs::new(dir.path(), 64 * MIB);
    let usable = cdi_usable(vol.free());
    assert!(usable > 40 * MIB, "the test volume is too small: {usable}");
    let server = Flaky::start(data, true);
    server.gate(32 * MIB);
    let partial = vol.mount.join("disk.img.partial");

    let killed = Running::start(&server.url(), &vol.mount, &[]);
    killed.wait_progress(16 * MIB);
    wait_until("most of the image in disk.img.partial", || partial.exists() && allocated(&partial) >= 24 * MIB);
    killed.sigkill();
    assert!(!vol.mount.join("disk.img").exists(), "a killed import left a complete-looking disk.img");

    server.gate(u64::MAX);
    let res = import(&server.url(), &vol.mount, &[]);
    assert!(
        res.status.success(),
        "the re-run after a crash failed (the crashed run's partial counted as used space?): {}",
        String::from_utf8_lossy(&res.stderr)
    );
    let disk = vol.mount.join("disk.img");
    assert_same_prefix(&raw, "raw", &disk, 40 * MIB);
    let len = std::fs::metadata(&disk).unwrap().len();
    // The partial's blocks are the re-run's to reuse: disk.img is as large as on a fresh
    // volume (give or take a MiB of the file's own metadata).
    assert!(len + MIB >= usable && len <= usable, "disk.img of {len} bytes; a fresh volume gets {usable}");
    assert_eq!(listing(&vol.mount), ["disk.img"], "the re-run left the killed run's partial file");
}

/// The images a ranged download reads three ways: qcow2 (metadata first, then data
/// clusters in parallel), raw (random access in parallel) and raw.gz (a stream over
/// ranged requests in order).
const OVER_RANGES: [(&str, &str); 3] = [("disk.qcow2", "qcow2"), ("disk.raw", "raw"), ("disk.raw.gz", "gz")];

#[test]
fn connections_dropped_at_random_offsets_resume_without_fetching_anything_twice() {
    let dir = tempdir();
    let raw = image(dir.path(), 24 * MIB, 24);
    let out = dir.path().join("out.raw");
    // CDI_FAULT_SEED explores other cut patterns; the default ones run in CI.
    let seeds: Vec<u64> = match std::env::var("CDI_FAULT_SEED") {
        Ok(s) => vec![s.parse().expect("CDI_FAULT_SEED is a number")],
        Err(_) => vec![1, 2, 3],
    };
    for (name, format) in OVER_RANGES {
        let server = Flaky::start(bytes(&dir.path().join(name)), true);
        let size = server.shared.data.len() as u64;
        // What an undisturbed download fetches twice (the format probe, tables read again).
        assert_ok(&import(&server.url(), &out, &[]));
        let baseline = served_twice(&server.log());
        std::fs::remove_file(&out).unwrap();
        for seed in &seeds {
            server.forget();
            server.cut_randomly(*seed, 2, 12);
            let res = import(&server.url(), &out, &[]);
            let log = server.log();
            let what = format!("{format}, seed {seed}");
            assert!(
                res.status.success(),
                "{what}: the download failed: {}\nserved: {log:?}",
                String::from_utf8_lossy(&res.stderr)
            );
            assert_same(&raw, "raw", &out);
            std::fs::remove_file(&out).unwrap();

            let cuts: Vec<&Served> = log.iter().filter(|s| s.cut && !s.head).collect();
            assert!(!cuts.is_empty(), "{what}: nothing was cut, the run proves nothing");
            // Each cut body resumes where it stopped, not where its range began.
            for c in &cuts {
                let stopped = c.start + c.sent;
                assert!(
                    log.iter().any(|s| !s.head && s.start == stopped && s.end == c.end),
                    "{what}: no request resumed the range {}..{} cut at {stopped}: {log:?}",
                    c.start,
                    c.end
                );
            }
            let total: u64 = log.iter().map(|s| s.sent).sum();
            let twice = served_twice(&log);
            assert!(twice <= baseline, "{what}: {twice} bytes fetched twice, {baseline} without cuts: {log:?}");
            assert!(total <= size + baseline, "{what}: {total} bytes served for a {size}-byte image");
        }
    }
}

#[test]
fn without_ranges_a_connection_dropped_at_a_random_offset_fails_clearly_and_leaves_nothing() {
    let dir = tempdir();
    image(dir.path(), 24 * MIB, 25);
    for name in ["disk.qcow2", "disk.raw.gz", "disk.raw"] {
        let server = Flaky::start(bytes(&dir.path().join(name)), false);
        server.cut_randomly(7, 1, 1);
        let out = dir.path().join("out.raw");
        let res = import(&server.url(), &out, &[]);
        assert_eq!(
            res.status.code(),
            Some(75),
            "{name}: a drop is worth retrying: {}",
            String::from_utf8_lossy(&res.stderr)
        );
        assert_refused(&res, &["cannot resume"]);
        assert!(!out.exists() && !dir.path().join("out.raw.partial").exists(), "{name}: an image was left behind");
        let gets = server.log().iter().filter(|s| !s.head).count();
        assert_eq!(gets, 1, "{name}: without ranges a download cannot resume, and is not restarted in-process");
    }
}

#[test]
fn a_dropped_head_request_does_not_cost_the_download_its_ranges() {
    let dir = tempdir();
    let raw = image(dir.path(), 24 * MIB, 26);
    let server = Flaky::start(bytes(&dir.path().join("disk.qcow2")), true);
    server.drop_heads(1);
    server.cut_randomly(9, 3, 6);
    let out = dir.path().join("out.raw");
    let res = import(&server.url(), &out, &[]);
    let log = server.log();
    assert!(
        res.status.success(),
        "a dropped HEAD cost the download: {}\nserved: {log:?}",
        String::from_utf8_lossy(&res.stderr)
    );
    assert_same(&raw, "raw", &out);
    assert!(log.iter().any(|s| s.head && s.cut), "no HEAD was dropped: {log:?}");
    assert!(log.iter().any(|s| !s.head && s.cut), "no body was cut: {log:?}");
    assert!(log.iter().all(|s| s.head || s.ranged), "a whole-file GET after the HEAD dropped: {log:?}");
}
