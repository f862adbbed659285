//! The guest serial console's host file, with a size cap the guest cannot
//! break.
//!
//! The hypervisor writes the console to a pipe; a thread of ours copies it
//! into the file. The file keeps the boot (the first half of the cap) and the
//! latest output (the rest): once the tail part is full, its older half is
//! dropped and a one-line marker `[... N bytes dropped ...]` takes its place
//! after the head. The file is never longer than the cap, and the copy uses two
//! fixed buffers whatever the cap or the guest writes. The hypervisor's end of
//! the pipe is non-blocking: a full pipe stalls (QEMU) or drops (skerry-vmm)
//! console output, never the hypervisor.

use std::fs::File;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::oneshot;

/// Bytes copied per read, and per step when the tail is moved.
const CHUNK: usize = 64 * 1024;

/// How long [`ConsoleLog::finish`] waits for the copy to end.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// Smallest cap honoured; smaller ones are raised to it.
const MIN_CONSOLE_LOG_MAX: u64 = 4096;

/// Failure to set up the console log.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleLogError {
    /// The file could not be created.
    #[error("cannot create the console log {0}")]
    Create(PathBuf, #[source] std::io::Error),
    /// The pipe could not be made.
    #[error("cannot make the console pipe")]
    Pipe(#[source] std::io::Error),
    /// The copying thread could not be started.
    #[error("cannot start the console log thread")]
    Thread(#[source] std::io::Error),
}

/// The marker written between the head and the tail once `dropped` bytes are gone.
fn marker(dropped: u64) -> String {
    format!("\n[... {dropped} bytes dropped ...]\n")
}

/// The longest marker.
fn marker_max() -> u64 {
    marker(u64::MAX).len() as u64
}

/// A file written as head + (marker) + tail, never longer than `max`.
struct CappedFile {
    file: File,
    /// Bytes the head keeps: the first half of the cap.
    head_cap: u64,
    /// Bytes the tail may hold: what the head and the longest marker leave.
    tail_cap: u64,
    /// Current file length.
    len: u64,
    /// Where the tail starts: after the head and the marker, if any.
    tail_start: u64,
    /// Bytes dropped so far.
    dropped: u64,
    /// Buffer for moving the kept tail.
    scratch: Box<[u8]>,
}

impl CappedFile {
    fn new(file: File, max: u64) -> Self {
        let max = max.max(MIN_CONSOLE_LOG_MAX);
        let head_cap = max / 2;
        CappedFile {
            file,
            head_cap,
            tail_cap: max - head_cap - marker_max(),
            len: 0,
            tail_start: head_cap,
            dropped: 0,
            scratch: vec![0; CHUNK].into_boxed_slice(),
        }
    }

    /// Appends `data`, dropping the older half of the tail when it is full.
    fn write(&mut self, mut data: &[u8]) -> std::io::Result<()> {
        if self.len < self.head_cap {
            let n = data.len().min((self.head_cap - self.len) as usize);
            self.file.write_all_at(&data[..n], self.len)?;
            self.len += n as u64;
            data = &data[n..];
        }
        if data.is_empty() {
            return Ok(());
        }
        let tail_len = self.len - self.tail_start;
        if tail_len + data.len() as u64 <= self.tail_cap {
            self.file.write_all_at(data, self.len)?;
            self.len += data.len() as u64;
            return Ok(());
        }
        // Keep the newest half of the tail: the end of the old tail, then `data`.
        let keep = self.tail_cap / 2;
        let from_data = (data.len() as u64).min(keep);
        let from_tail = keep - from_data;
        self.dropped += (tail_len - from_tail) + (data.len() as u64 - from_data);
        let marker = marker(self.dropped);
        let new_start = self.head_cap + marker.len() as u64;
        // new_start <= the kept bytes' offset (the marker is shorter than the
        // dropped half), so a forward copy never overwrites unread bytes.
        self.move_down(self.len - from_tail, new_start, from_tail)?;
        self.file.write_all_at(marker.as_bytes(), self.head_cap)?;
        let data_at = new_start + from_tail;
        self.file
            .write_all_at(&data[data.len() - from_data as usize..], data_at)?;
        self.tail_start = new_start;
        self.len = data_at + from_data;
        self.file.set_len(self.len)
    }

    /// Copies `n` bytes from `src` to `dst <= src` within the file.
    fn move_down(&mut self, src: u64, dst: u64, n: u64) -> std::io::Result<()> {
        if src == dst {
            return Ok(());
        }
        let mut done = 0;
        while done < n {
            let step = (n - done).min(CHUNK as u64) as usize;
            let buf = &mut self.scratch[..step];
            self.file.read_exact_at(buf, src + done)?;
            self.file.write_all_at(buf, dst + done)?;
            done += step as u64;
        }
        Ok(())
    }
}

/// Creates (truncates) `path` for reading and writing (the tail is moved within it).
fn open(path: &Path) -> std::io::Result<File> {
    File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
}

/// The copy of one VM's console into its log file; it ends when every writer
/// has closed the pipe.
pub(crate) struct ConsoleLog {
    path: PathBuf,
    done: Option<oneshot::Receiver<()>>,
}

impl ConsoleLog {
    /// Creates (truncates) `path` and starts copying into it, capped at `max`
    /// bytes, what is written to the returned pipe end (the hypervisor's stdout).
    pub(crate) fn create(path: &Path, max: u64) -> Result<(ConsoleLog, File), ConsoleLogError> {
        let file = open(path).map_err(|e| ConsoleLogError::Create(path.to_path_buf(), e))?;
        let (reader, writer) = std::io::pipe().map_err(ConsoleLogError::Pipe)?;
        nix::fcntl::fcntl(
            writer.as_raw_fd(),
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        )
        .map_err(|e| ConsoleLogError::Pipe(e.into()))?;
        let (done_tx, done) = oneshot::channel();
        let capped = CappedFile::new(file, max);
        let name = path.display().to_string();
        std::thread::Builder::new()
            .name("console-log".into())
            .spawn(move || {
                copy(reader, capped, &name);
                let _ = done_tx.send(());
            })
            .map_err(ConsoleLogError::Thread)?;
        Ok((
            ConsoleLog {
                path: path.to_path_buf(),
                done: Some(done),
            },
            File::from(std::os::fd::OwnedFd::from(writer)),
        ))
    }

    /// Waits (a bounded time) for the copy to end once the hypervisor has
    /// exited, so that the file is complete. Idempotent.
    pub(crate) async fn finish(&mut self) {
        if let Some(done) = self.done.take() {
            if tokio::time::timeout(DRAIN_TIMEOUT, done).await.is_err() {
                tracing::warn!(console = %self.path.display(), "the console log is still being written");
            }
        }
    }
}

/// Copies `reader` into `out` until end of file. After a write error the rest
/// is read and discarded, so the writer never stalls on a full pipe.
fn copy(mut reader: impl Read, mut out: CappedFile, name: &str) {
    let mut buf = vec![0; CHUNK];
    let mut failed = false;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::warn!(console = name, error = %e, "reading the guest console");
                break;
            }
        };
        if !failed {
            if let Err(e) = out.write(&buf[..n]) {
                tracing::warn!(console = name, error = %e, "writing the console log; discarding the rest");
                failed = true;
            }
        }
    }
    if out.dropped > 0 {
        tracing::info!(console = name, dropped = out.dropped, "console log capped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// Lines `from..from + count`, 14 bytes each, so that every byte shows where it came from.
    fn lines(from: usize, count: usize) -> Vec<u8> {
        (from..from + count)
            .flat_map(|i| format!("line {i:08}\n").into_bytes())
            .collect()
    }

    /// Writes `data` through a real pipe and sink in `chunk`-sized writes, checking the
    /// file size after every write; returns the final file.
    fn run(max: u64, data: &[u8], chunk: usize) -> Vec<u8> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.log");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let (mut log, mut writer) = ConsoleLog::create(&path, max).unwrap();
        // The hypervisor's end never blocks it.
        let flags = nix::fcntl::fcntl(writer.as_raw_fd(), nix::fcntl::FcntlArg::F_GETFL).unwrap();
        assert!(
            nix::fcntl::OFlag::from_bits_truncate(flags).contains(nix::fcntl::OFlag::O_NONBLOCK)
        );
        for piece in data.chunks(chunk) {
            let mut piece = piece;
            while !piece.is_empty() {
                match writer.write(piece) {
                    Ok(n) => piece = &piece[n..],
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_micros(50))
                    }
                    Err(e) => panic!("{e}"),
                }
                let len = std::fs::metadata(&path).unwrap().len();
                assert!(len <= max.max(MIN_CONSOLE_LOG_MAX), "file grew to {len}");
            }
        }
        drop(writer);
        rt.block_on(log.finish());
        assert!(log.done.is_none());
        std::fs::read(&path).unwrap()
    }

    fn dropped_count(text: &str) -> u64 {
        let start = text.find("[... ").expect("marker") + 5;
        let end = text[start..].find(" bytes dropped ...]").unwrap() + start;
        text[start..end].parse().unwrap()
    }

    #[test]
    fn short_output_is_kept_whole() {
        let data = lines(0, 100);
        assert_eq!(run(64 * 1024, &data, 7), data);
    }

    #[test]
    fn flood_keeps_head_and_latest_tail_under_the_cap() {
        let max = 64 * 1024;
        let data = lines(0, 400_000); // 5.2 MB
        let file = run(max, &data, 4093);
        assert!(file.len() as u64 <= max, "{}", file.len());
        let text = String::from_utf8(file.clone()).unwrap();
        // The head: exactly the first half of the cap.
        assert_eq!(&file[..max as usize / 2], &data[..max as usize / 2]);
        // One marker, right after the head.
        assert_eq!(text.matches("bytes dropped").count(), 1);
        assert!(
            text[max as usize / 2..].starts_with("\n[... "),
            "marker after head"
        );
        // The tail: the newest bytes, ending at the last line.
        let tail = &text[text.find(" bytes dropped ...]\n").unwrap() + 20..];
        assert!(tail.len() >= (max as usize / 2 - 64) / 2, "{}", tail.len());
        assert!(data.ends_with(tail.as_bytes()));
        assert!(tail.ends_with("line 00399999\n"));
        // Nothing lost unaccounted: head + dropped + tail = everything.
        let dropped = dropped_count(&text);
        assert_eq!(max / 2 + dropped + tail.len() as u64, data.len() as u64);
    }

    #[test]
    fn one_write_larger_than_the_cap_keeps_its_end() {
        let max = 8192;
        let mut data = lines(0, 1000);
        data.extend(lines(1000, 1)); // one 14 kB write below
        let file = run(max, &data, data.len());
        let text = String::from_utf8(file).unwrap();
        assert!(text.len() as u64 <= max);
        assert!(text.starts_with("line 00000000\n"));
        assert!(text.ends_with("line 00001000\n"));
        let tail = &text[text.find(" bytes dropped ...]\n").unwrap() + 20..];
        assert_eq!(
            max / 2 + dropped_count(&text) + tail.len() as u64,
            data.len() as u64
        );
    }

    #[test]
    fn tiny_caps_are_raised_to_the_minimum() {
        let data = lines(0, 2000);
        let file = run(10, &data, 100);
        assert!(file.len() as u64 <= MIN_CONSOLE_LOG_MAX);
        assert!(file.starts_with(b"line 00000000\n"));
        assert!(file.ends_with(b"line 00001999\n"));
    }

    /// Resident set size of this process in KiB.
    fn rss_kib() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    #[test]
    fn memory_does_not_grow_with_the_cap_or_the_flood() {
        // nextest runs each test in its own process, so RSS is this test's.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.log");
        let max = 32 << 20;
        let before = rss_kib();
        let mut capped = CappedFile::new(open(&path).unwrap(), max);
        let chunk = lines(0, 4000);
        let mut total = 0u64;
        while total < 48 << 20 {
            capped.write(&chunk).unwrap();
            total += chunk.len() as u64;
        }
        assert!(capped.dropped > 0);
        assert!(std::fs::metadata(&path).unwrap().len() <= max);
        assert_eq!(capped.scratch.len(), CHUNK);
        let grown = rss_kib().saturating_sub(before);
        assert!(grown < 4096, "RSS grew by {grown} KiB for a {max}-byte cap");
    }
}
