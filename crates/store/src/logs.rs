//! Function logs: one append-only file of JSON lines per function under `<data-dir>/logs/`, and
//! beside it one of the function's invocation records (`<name>.invocations`), kept the same way.
//!
//! Why it looks like this:
//! - Lines arrive from every instance's output reader, on the async runtime. They are handed to
//!   one writer thread over a bounded channel and never wait for the disk: when the writer falls
//!   behind by [`QUEUE_LINES`] lines, further lines are dropped and counted (a function that
//!   prints without pause must not stall invocations of other functions).
//! - Each line is written with a single `write` on an `O_APPEND` file, so a reader always sees
//!   whole lines. A file that grows past [`MAX_LOG_FILE_BYTES`] is rotated to `<name>.log.1`
//!   (one generation kept) so a chatty function cannot fill the disk.
//! - Deleting a function's logs bumps its *generation*: lines still in flight from its old
//!   instances are dropped instead of re-creating the file, so a function deployed again under
//!   the same name starts with an empty log.
//! - Reads ([`LogStore::tail`]) first wait for the writer to catch up, so a line printed before
//!   the read is in the answer.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::StoreError;

/// A log file is rotated when it grows beyond this size.
pub const MAX_LOG_FILE_BYTES: u64 = 16 * 1024 * 1024;
/// A single printed line longer than this is cut (and marked) before it is stored.
pub const MAX_LINE_BYTES: usize = 16 * 1024;
/// Lines waiting for the writer thread at most; beyond, lines are dropped.
pub const QUEUE_LINES: usize = 16 * 1024;
/// `tail` reads at most this many bytes from the end of the file.
const MAX_TAIL_READ_BYTES: u64 = 4 * 1024 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogStream {
    Stdout,
    Stderr,
    /// Lines Wharf itself writes about the function's instances (start, exit, OOM).
    System,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogEntry {
    /// RFC 3339 with milliseconds, UTC.
    pub time: String,
    pub instance: String,
    pub stream: LogStream,
    pub message: String,
}

impl LogEntry {
    pub fn now(instance: &str, stream: LogStream, message: &str) -> Self {
        let message = if message.len() > MAX_LINE_BYTES {
            let mut cut = MAX_LINE_BYTES;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            format!("{}… [line cut at {MAX_LINE_BYTES} bytes]", &message[..cut])
        } else {
            message.to_string()
        };
        LogEntry {
            time: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            instance: instance.to_string(),
            stream,
            message,
        }
    }
}

/// The files a function has here.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LogFile {
    /// What its instances printed and Wharf's lines about them ([`LogEntry`]).
    Log,
    /// One record per invocation (any serialisable type; the pool's `InvocationRecord`).
    Invocations,
}

impl LogFile {
    const ALL: [LogFile; 2] = [LogFile::Log, LogFile::Invocations];

    fn extension(self) -> &'static str {
        match self {
            LogFile::Log => "log",
            LogFile::Invocations => "invocations",
        }
    }
}

enum Command {
    Append {
        function: Arc<str>,
        file: LogFile,
        generation: u64,
        line: Vec<u8>,
    },
    /// Delete the function's files; answer when done.
    Remove {
        function: String,
        done: SyncSender<Result<(), StoreError>>,
    },
    /// Answer when everything sent before has been written.
    Flush { done: SyncSender<()> },
}

type Generations = Arc<Mutex<HashMap<String, u64>>>;

/// The per-function log files of one data directory, and their writer thread.
pub struct LogStore {
    dir: PathBuf,
    tx: SyncSender<Command>,
    generations: Generations,
    dropped: Arc<AtomicU64>,
}

/// Appends to one function's log (or its invocation records). Cheap to clone; never blocks.
#[derive(Clone)]
pub struct LogWriter {
    function: Arc<str>,
    file: LogFile,
    generation: u64,
    tx: SyncSender<Command>,
    dropped: Arc<AtomicU64>,
}

fn file_name(function: &str, file: LogFile) -> String {
    // Function names are validated by the API (letters, digits, `_`, `-`); this is a second
    // line of defence so a bad name can never name a file outside the log directory.
    let safe: String = function
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{safe}.{}", file.extension())
}

impl LogStore {
    /// Opens `dir` (created private to its owner) and starts the writer thread, which ends when
    /// the store and all its writers are dropped.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let io = |source| StoreError::Log {
            path: dir.to_path_buf(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .map_err(io)?;
        let (tx, rx) = sync_channel(QUEUE_LINES);
        let generations = Generations::default();
        let writer = Writer {
            dir: dir.to_path_buf(),
            generations: generations.clone(),
            open: HashMap::new(),
        };
        std::thread::Builder::new()
            .name("wharf-logs".into())
            .spawn(move || writer.run(rx))
            .map_err(io)?;
        Ok(LogStore {
            dir: dir.to_path_buf(),
            tx,
            generations,
            dropped: Arc::new(AtomicU64::new(0)),
        })
    }

    /// A writer for the function's log as it is now; deleting the log ends what it writes.
    pub fn writer(&self, function: &str) -> LogWriter {
        self.writer_of(function, LogFile::Log)
    }

    /// A writer for `file` of the function, as [`writer`](Self::writer).
    pub fn writer_of(&self, function: &str, file: LogFile) -> LogWriter {
        let generation = *self
            .generations
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(function.to_string())
            .or_default();
        LogWriter {
            function: function.into(),
            file,
            generation,
            tx: self.tx.clone(),
            dropped: self.dropped.clone(),
        }
    }

    /// Lines dropped because the writer could not keep up, since start.
    pub fn dropped_lines(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Waits until every line sent before has been written. Blocking.
    pub fn flush(&self) {
        let (done, wait) = sync_channel(1);
        if self.tx.send(Command::Flush { done }).is_ok() {
            let _ = wait.recv();
        }
    }

    /// The last `n` entries of the function's log, oldest first. Lines that do not parse (a
    /// torn write after a crash) are skipped. Blocking.
    pub fn tail(&self, function: &str, n: usize) -> Result<Vec<LogEntry>, StoreError> {
        self.tail_of(function, LogFile::Log, n)
    }

    /// The last `n` entries of `file` of the function, oldest first, as [`tail`](Self::tail).
    pub fn tail_of<T: DeserializeOwned>(
        &self,
        function: &str,
        file: LogFile,
        n: usize,
    ) -> Result<Vec<T>, StoreError> {
        Ok(self
            .read_from(function, file, None)?
            .0
            .into_iter()
            .rev()
            .take(n)
            .rev()
            .collect())
    }

    /// The entries of the function's `file` from byte `offset` on (`None`: the last few MB),
    /// and the offset to read on from next time. An offset beyond the file's end (it was
    /// rotated or removed since) reads it from the start. Blocking.
    pub fn read_from<T: DeserializeOwned>(
        &self,
        function: &str,
        file: LogFile,
        offset: Option<u64>,
    ) -> Result<(Vec<T>, u64), StoreError> {
        self.flush();
        let path = self.dir.join(file_name(function, file));
        let mut f = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
            Err(source) => return Err(StoreError::Log { path, source }),
        };
        let io = |source| StoreError::Log {
            path: path.clone(),
            source,
        };
        let len = f.metadata().map_err(io)?.len();
        let start = match offset {
            Some(at) if at <= len => at,
            Some(_) => 0,
            None => len.saturating_sub(MAX_TAIL_READ_BYTES),
        };
        f.seek(SeekFrom::Start(start)).map_err(io)?;
        let mut buf = Vec::with_capacity((len - start) as usize);
        f.take(len - start).read_to_end(&mut buf).map_err(io)?;
        let mut text = buf.as_slice();
        if start > 0 && offset.is_none() {
            // Skip the partial first line.
            match text.iter().position(|&b| b == b'\n') {
                Some(i) => text = &text[i + 1..],
                None => return Ok((Vec::new(), len)),
            }
        }
        // A line still being written (no newline yet) is read next time.
        let complete = text.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        let next = len - (text.len() - complete) as u64;
        let entries = text[..complete]
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .filter_map(|l| serde_json::from_slice(l).ok())
            .collect();
        Ok((entries, next))
    }

    /// Deletes the function's logs (its rotated generation too); lines its writers send
    /// afterwards are dropped. Blocking.
    pub fn remove(&self, function: &str) -> Result<(), StoreError> {
        *self
            .generations
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(function.to_string())
            .or_default() += 1;
        let (done, wait) = sync_channel(1);
        let gone = || StoreError::Log {
            path: self.dir.clone(),
            source: std::io::Error::other("the log writer thread has stopped"),
        };
        self.tx
            .send(Command::Remove {
                function: function.to_string(),
                done,
            })
            .map_err(|_| gone())?;
        wait.recv().map_err(|_| gone())?
    }
}

impl LogWriter {
    /// Queues one entry; drops it (and counts it) if the writer is too far behind.
    pub fn append(&self, entry: &LogEntry) {
        self.append_json(entry);
    }

    /// Queues one record as a JSON line, as [`append`](Self::append).
    pub fn append_json<T: Serialize>(&self, record: &T) {
        let Ok(mut line) = serde_json::to_vec(record) else {
            tracing::warn!(function = %self.function, "a log record did not serialise");
            return;
        };
        line.push(b'\n');
        let command = Command::Append {
            function: self.function.clone(),
            file: self.file,
            generation: self.generation,
            line,
        };
        match self.tx.try_send(command) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                if self
                    .dropped
                    .fetch_add(1, Ordering::Relaxed)
                    .is_multiple_of(10_000)
                {
                    tracing::warn!(
                        function = %self.function,
                        "function logs are written slower than they are printed: lines dropped"
                    );
                }
            }
            Err(TrySendError::Disconnected(_)) => {}
        }
    }
}

struct OpenFile {
    file: File,
    /// Its length, with `pending`.
    len: u64,
    /// Lines not written yet.
    pending: Vec<u8>,
}

/// While lines come, the writer thread collects them this often and writes each file's at once:
/// a burst of lines (an invocation has four to six) becomes one write per file.
const LINGER: Duration = Duration::from_millis(2);
/// ...and it sleeps between collections rather than waiting on the queue, so that a thread that
/// logs never has to wake it (a wake-up is a system call and, on a VM, a cross-CPU interrupt, on
/// the request path). After this long without a line it waits on the queue again, costing
/// nothing while the daemon is idle.
const STAY_AWAKE: Duration = Duration::from_secs(1);
/// A file's lines are written at once when this many bytes are waiting.
const PENDING_MAX: usize = 64 * 1024;

/// The writer thread's state: the open files, by file name.
struct Writer {
    dir: PathBuf,
    generations: Generations,
    open: HashMap<String, OpenFile>,
}

impl Writer {
    fn run(mut self, rx: Receiver<Command>) {
        // Quiet: wait for a line.
        while let Ok(first) = rx.recv() {
            self.handle(first);
            // Busy: collect every LINGER until STAY_AWAKE passes without a line.
            let mut quiet = Duration::ZERO;
            while quiet < STAY_AWAKE {
                std::thread::sleep(LINGER);
                let mut got = false;
                loop {
                    match rx.try_recv() {
                        Ok(command) => {
                            got = true;
                            self.handle(command);
                        }
                        Err(TryRecvError::Empty) => break,
                        Err(TryRecvError::Disconnected) => {
                            self.write_pending();
                            return;
                        }
                    }
                }
                self.write_pending();
                quiet = if got { Duration::ZERO } else { quiet + LINGER };
            }
        }
        self.write_pending();
    }

    fn handle(&mut self, command: Command) {
        match command {
            Command::Append {
                function,
                file,
                generation,
                line,
            } => {
                let current = self
                    .generations
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(&*function)
                    .copied()
                    .unwrap_or_default();
                if generation != current {
                    return;
                }
                if let Err(e) = self.append(&file_name(&function, file), &line) {
                    tracing::warn!(function = %function, error = %e, "cannot write the function's log");
                }
            }
            Command::Remove { function, done } => {
                let _ = done.send(self.remove(&function));
            }
            Command::Flush { done } => {
                self.write_pending();
                let _ = done.send(());
            }
        }
    }

    /// Writes every file's waiting lines.
    fn write_pending(&mut self) {
        for (name, f) in &mut self.open {
            if let Err(e) = write_out(&self.dir, name, f) {
                tracing::warn!(file = %name, error = %e, "cannot write a function's log");
            }
        }
    }

    fn append(&mut self, name: &str, line: &[u8]) -> Result<(), StoreError> {
        if !self.open.contains_key(name) {
            let file = open_append(&self.dir.join(name))?;
            let len = file.metadata().map(|m| m.len()).unwrap_or(0);
            let pending = Vec::new();
            self.open
                .insert(name.to_string(), OpenFile { file, len, pending });
        }
        let f = self.open.get_mut(name).expect("just opened");
        if f.len + line.len() as u64 > MAX_LOG_FILE_BYTES {
            write_out(&self.dir, name, f)?;
            let path = self.dir.join(name);
            std::fs::rename(&path, rotated(&path)).map_err(|source| StoreError::Log {
                path: path.clone(),
                source,
            })?;
            f.file = open_append(&path)?;
            f.len = 0;
        }
        f.pending.extend_from_slice(line);
        f.len += line.len() as u64;
        if f.pending.len() >= PENDING_MAX {
            write_out(&self.dir, name, f)?;
        }
        Ok(())
    }

    fn remove(&mut self, function: &str) -> Result<(), StoreError> {
        for file in LogFile::ALL {
            let name = file_name(function, file);
            self.open.remove(&name);
            let path = self.dir.join(name);
            for p in [rotated(&path), path] {
                match std::fs::remove_file(&p) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(source) => return Err(StoreError::Log { path: p, source }),
                }
            }
        }
        Ok(())
    }
}

/// Writes `f`'s waiting lines (file `name` of `dir`). Lines that cannot be written are dropped.
fn write_out(dir: &Path, name: &str, f: &mut OpenFile) -> Result<(), StoreError> {
    if f.pending.is_empty() {
        return Ok(());
    }
    let written = f.file.write_all(&f.pending);
    f.pending.clear();
    written.map_err(|source| StoreError::Log {
        path: dir.join(name),
        source,
    })
}

/// The one older generation a rotated file keeps: `<name>.log.1`.
fn rotated(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".1");
    PathBuf::from(name)
}

fn open_append(path: &Path) -> Result<File, StoreError> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|source| StoreError::Log {
            path: path.to_path_buf(),
            source,
        })
}

/// Milliseconds since the Unix epoch, for records.
pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_millis() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn append_then_tail_returns_newest_last() {
        let dir = tempfile::tempdir().unwrap();
        let logs = LogStore::open(dir.path()).unwrap();
        let w = logs.writer("f");
        for i in 0..5 {
            w.append(&LogEntry::now(
                "i1",
                LogStream::Stdout,
                &format!("line {i}"),
            ));
        }
        let got: Vec<_> = logs
            .tail("f", 3)
            .unwrap()
            .into_iter()
            .map(|e| e.message)
            .collect();
        assert_eq!(got, ["line 2", "line 3", "line 4"]);
        assert!(logs.tail("other", 3).unwrap().is_empty());
    }

    #[test]
    fn torn_lines_are_skipped_and_remove_deletes() {
        let dir = tempfile::tempdir().unwrap();
        let logs = LogStore::open(dir.path()).unwrap();
        logs.writer("f")
            .append(&LogEntry::now("i", LogStream::Stderr, "ok"));
        logs.flush();
        std::fs::OpenOptions::new()
            .append(true)
            .open(dir.path().join("f.log"))
            .unwrap()
            .write_all(b"{\"time\":\"x\",\"inst")
            .unwrap();
        let got = logs.tail("f", 10).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].stream, LogStream::Stderr);
        logs.remove("f").unwrap();
        assert!(!dir.path().join("f.log").exists());
    }

    #[test]
    fn writers_of_a_removed_log_write_nothing_and_new_writers_start_afresh() {
        let dir = tempfile::tempdir().unwrap();
        let logs = LogStore::open(dir.path()).unwrap();
        let old = logs.writer("f");
        old.append(&LogEntry::now("i", LogStream::Stdout, "before"));
        logs.remove("f").unwrap();
        old.append(&LogEntry::now(
            "i",
            LogStream::Stdout,
            "late line of a deleted function",
        ));
        assert!(logs.tail("f", 10).unwrap().is_empty());
        assert!(!dir.path().join("f.log").exists());
        logs.writer("f")
            .append(&LogEntry::now("j", LogStream::Stdout, "redeployed"));
        let got = logs.tail("f", 10).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].message, "redeployed");
    }

    #[test]
    fn long_lines_are_cut_and_names_cannot_escape() {
        let dir = tempfile::tempdir().unwrap();
        let logs = LogStore::open(dir.path()).unwrap();
        let long = "é".repeat(MAX_LINE_BYTES);
        let e = LogEntry::now("i", LogStream::Stdout, &long);
        assert!(e.message.len() < MAX_LINE_BYTES + 64);
        assert!(e.message.ends_with("bytes]"));
        logs.writer("../escape").append(&e);
        logs.flush();
        assert!(dir.path().join("___escape.log").exists());
    }

    #[test]
    fn reading_on_from_an_offset_sees_only_new_complete_lines() {
        let dir = tempfile::tempdir().unwrap();
        let logs = LogStore::open(dir.path()).unwrap();
        let w = logs.writer("f");
        w.append(&LogEntry::now("i", LogStream::Stdout, "one"));
        let (first, at): (Vec<LogEntry>, u64) = logs.read_from("f", LogFile::Log, None).unwrap();
        assert_eq!(first.len(), 1);
        let (none, same): (Vec<LogEntry>, u64) =
            logs.read_from("f", LogFile::Log, Some(at)).unwrap();
        assert!(none.is_empty());
        assert_eq!(same, at);
        // A torn line is not read until it is complete.
        logs.flush();
        let path = dir.path().join("f.log");
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(b"{\"time\":\"t\",").unwrap();
        let (none, same): (Vec<LogEntry>, u64) =
            logs.read_from("f", LogFile::Log, Some(at)).unwrap();
        assert!(none.is_empty());
        assert_eq!(same, at);
        f.write_all(b"\"instance\":\"i\",\"stream\":\"stdout\",\"message\":\"two\"}\n")
            .unwrap();
        let (next, _): (Vec<LogEntry>, u64) = logs.read_from("f", LogFile::Log, Some(at)).unwrap();
        assert_eq!(
            next.iter().map(|e| e.message.as_str()).collect::<Vec<_>>(),
            ["two"]
        );
        // After a rotation (the offset is past the end), from the start.
        let (again, _): (Vec<LogEntry>, u64) =
            logs.read_from("f", LogFile::Log, Some(1 << 40)).unwrap();
        assert_eq!(again.len(), 2);
    }

    #[test]
    fn invocation_records_live_beside_the_log_and_go_with_it() {
        let dir = tempfile::tempdir().unwrap();
        let logs = LogStore::open(dir.path()).unwrap();
        let records = logs.writer_of("f", LogFile::Invocations);
        for i in 0..3 {
            records.append_json(&serde_json::json!({"request_id": i}));
        }
        logs.writer("f")
            .append(&LogEntry::now("i", LogStream::System, "a log line"));
        let got: Vec<serde_json::Value> = logs.tail_of("f", LogFile::Invocations, 2).unwrap();
        assert_eq!(
            got,
            [
                serde_json::json!({"request_id": 1}),
                serde_json::json!({"request_id": 2})
            ]
        );
        assert_eq!(logs.tail("f", 10).unwrap().len(), 1);
        logs.remove("f").unwrap();
        assert!(!dir.path().join("f.invocations").exists());
        assert!(!dir.path().join("f.log").exists());
    }
}
