//! `cdi-mover hold [--log FILE]`: the process of a holder pod. It keeps the pod (and so its
//! volumes) alive until SIGTERM or SIGINT; with `--log` it also prints what the node mover
//! appends to FILE (the import's story), so `kubectl logs` of the pod shows it.
//!
//! Following is a short poll, like `tail -F`: the file may not exist yet, and may be
//! replaced or truncated (then it is read again from its start).

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How often the log file is looked at: a log follower, not a synchronisation.
const POLL: Duration = Duration::from_millis(250);

#[derive(Debug, clap::Args)]
pub struct HoldArgs {
    /// Print what is appended to this file (created by the node mover) to stdout.
    #[arg(long, value_name = "FILE")]
    pub log: Option<PathBuf>,
}

pub fn run(args: &HoldArgs) -> i32 {
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            super::output::error_line(&e.to_string());
            return 1;
        }
    };
    rt.block_on(async {
        let Some(path) = &args.log else {
            super::serve::terminated().await;
            return 0;
        };
        let mut follower = Follower::new(path);
        let terminated = super::serve::terminated();
        tokio::pin!(terminated);
        loop {
            follower.pump(&mut std::io::stdout().lock());
            tokio::select! {
                () = &mut terminated => break,
                () = tokio::time::sleep(POLL) => {}
            }
        }
        // What came in since the last look.
        follower.pump(&mut std::io::stdout().lock());
        0
    })
}

/// Follows one file by path.
#[derive(Debug)]
struct Follower {
    path: PathBuf,
    /// Bytes of the current file already printed.
    offset: u64,
    /// The inode followed, to notice a replaced file.
    inode: Option<u64>,
}

impl Follower {
    fn new(path: &Path) -> Follower {
        Follower { path: path.to_path_buf(), offset: 0, inode: None }
    }

    /// Copies what was appended since the last call to `out`. Errors (no file yet, a read
    /// failing) are tried again at the next call.
    fn pump(&mut self, out: &mut impl Write) {
        use std::os::unix::fs::MetadataExt;
        let Ok(mut file) = std::fs::File::open(&self.path) else { return };
        let Ok(meta) = file.metadata() else { return };
        if self.inode != Some(meta.ino()) || meta.len() < self.offset {
            // A new file, or truncated: from its start.
            self.inode = Some(meta.ino());
            self.offset = 0;
        }
        if meta.len() == self.offset || file.seek(SeekFrom::Start(self.offset)).is_err() {
            return;
        }
        let mut buf = Vec::new();
        if let Ok(n) = file.take(meta.len() - self.offset).read_to_end(&mut buf) {
            self.offset += n as u64;
            let _ = out.write_all(&buf);
            let _ = out.flush();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follows_appends_truncation_and_replacement() {
        let dir = tempfile::tempdir().expect("test files");
        let path = dir.path().join("import.log");
        let mut f = Follower::new(&path);
        let mut out = Vec::new();
        f.pump(&mut out);
        assert!(out.is_empty(), "no file yet: nothing");
        std::fs::write(&path, "one\n").expect("test files");
        f.pump(&mut out);
        let mut file = std::fs::OpenOptions::new().append(true).open(&path).expect("test files");
        writeln!(file, "two").expect("test files");
        f.pump(&mut out);
        f.pump(&mut out);
        assert_eq!(String::from_utf8_lossy(&out), "one\ntwo\n");
        std::fs::write(&path, "3\n").expect("test files");
        f.pump(&mut out);
        assert_eq!(String::from_utf8_lossy(&out), "one\ntwo\n3\n", "a truncated file is read from its start");
        let other = dir.path().join("next.log");
        std::fs::write(&other, "four\n").expect("test files");
        std::fs::rename(&other, &path).expect("test files");
        f.pump(&mut out);
        assert_eq!(String::from_utf8_lossy(&out), "one\ntwo\n3\nfour\n", "a replaced file is read anew");
    }
}
