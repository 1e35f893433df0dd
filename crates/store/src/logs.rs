//! Function logs: one append-only file of JSON lines per function under `<data-dir>/logs/`.
//!
//! Every line an instance prints becomes one [`LogEntry`], written with a single `write` on an
//! `O_APPEND` file, so concurrent instances of one function never interleave inside a line and a
//! reader always sees whole lines. A file that grows past [`MAX_LOG_FILE_BYTES`] is rotated to
//! `<name>.log.1` (one generation kept) so a chatty function cannot fill the disk.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::StoreError;

/// A log file is rotated when it grows beyond this size.
pub const MAX_LOG_FILE_BYTES: u64 = 16 * 1024 * 1024;
/// A single printed line longer than this is cut (and marked) before it is stored.
pub const MAX_LINE_BYTES: usize = 16 * 1024;
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

struct LogFile {
    file: File,
    len: u64,
}

/// The per-function log files of one data directory.
pub struct LogStore {
    dir: PathBuf,
    open: Mutex<HashMap<String, Arc<Mutex<LogFile>>>>,
}

impl LogStore {
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::Log {
            path: dir.to_path_buf(),
            source,
        })?;
        Ok(LogStore {
            dir: dir.to_path_buf(),
            open: Mutex::new(HashMap::new()),
        })
    }

    fn path(&self, function: &str) -> PathBuf {
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
        self.dir.join(format!("{safe}.log"))
    }

    fn handle(&self, function: &str) -> Result<Arc<Mutex<LogFile>>, StoreError> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(h) = open.get(function) {
            return Ok(h.clone());
        }
        let path = self.path(function);
        let file = open_append(&path)?;
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        let h = Arc::new(Mutex::new(LogFile { file, len }));
        open.insert(function.to_string(), h.clone());
        Ok(h)
    }

    /// Appends one entry to the function's log.
    pub fn append(&self, function: &str, entry: &LogEntry) -> Result<(), StoreError> {
        let mut line = serde_json::to_vec(entry).expect("a log entry always serialises");
        line.push(b'\n');
        let h = self.handle(function)?;
        let mut f = h.lock().unwrap_or_else(|e| e.into_inner());
        if f.len + line.len() as u64 > MAX_LOG_FILE_BYTES {
            let path = self.path(function);
            let old = path.with_extension("log.1");
            std::fs::rename(&path, &old).map_err(|source| StoreError::Log {
                path: path.clone(),
                source,
            })?;
            f.file = open_append(&path)?;
            f.len = 0;
        }
        f.file.write_all(&line).map_err(|source| StoreError::Log {
            path: self.path(function),
            source,
        })?;
        f.len += line.len() as u64;
        Ok(())
    }

    /// The last `n` entries of the function's log, oldest first. Lines that do not parse (a
    /// torn write after a crash) are skipped.
    pub fn tail(&self, function: &str, n: usize) -> Result<Vec<LogEntry>, StoreError> {
        let path = self.path(function);
        let mut file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(StoreError::Log { path, source }),
        };
        let io = |source| StoreError::Log {
            path: path.clone(),
            source,
        };
        let len = file.metadata().map_err(io)?.len();
        let start = len.saturating_sub(MAX_TAIL_READ_BYTES);
        file.seek(SeekFrom::Start(start)).map_err(io)?;
        let mut buf = Vec::with_capacity((len - start) as usize);
        file.read_to_end(&mut buf).map_err(io)?;
        let mut text = buf.as_slice();
        if start > 0 {
            // Skip the partial first line.
            match text.iter().position(|&b| b == b'\n') {
                Some(i) => text = &text[i + 1..],
                None => return Ok(Vec::new()),
            }
        }
        let mut entries: Vec<LogEntry> = text
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .filter_map(|l| serde_json::from_slice(l).ok())
            .collect();
        if entries.len() > n {
            entries.drain(..entries.len() - n);
        }
        Ok(entries)
    }

    /// Deletes the function's logs (its rotated generation too).
    pub fn remove(&self, function: &str) -> Result<(), StoreError> {
        self.open
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(function);
        let path = self.path(function);
        for p in [path.with_extension("log.1"), path] {
            match std::fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => return Err(StoreError::Log { path: p, source }),
            }
        }
        Ok(())
    }
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
        for i in 0..5 {
            logs.append(
                "f",
                &LogEntry::now("i1", LogStream::Stdout, &format!("line {i}")),
            )
            .unwrap();
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
        logs.append("f", &LogEntry::now("i", LogStream::Stderr, "ok"))
            .unwrap();
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
    fn long_lines_are_cut_and_names_cannot_escape() {
        let dir = tempfile::tempdir().unwrap();
        let logs = LogStore::open(dir.path()).unwrap();
        let long = "é".repeat(MAX_LINE_BYTES);
        let e = LogEntry::now("i", LogStream::Stdout, &long);
        assert!(e.message.len() < MAX_LINE_BYTES + 64);
        assert!(e.message.ends_with("bytes]"));
        logs.append("../escape", &e).unwrap();
        assert!(dir.path().join("___escape.log").exists());
    }
}
