//! An instance's stdout and stderr: two pipes whose write ends the container inherits from
//! `runtime create`, and two reader tasks that split lines, hand them to the
//! [`OutputSink`](crate::OutputSink) and keep the last few KB for `recent_output()` (what an
//! error report shows when a function dies at start-up).

use std::collections::VecDeque;
use std::io;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustix::pipe::PipeFlags;
use tokio::net::unix::pipe;
use tokio::task::JoinHandle;

use crate::{OutputSink, Stream};

/// Bytes of recent output kept per instance (both streams, interleaved as they arrive).
pub(crate) const RECENT_OUTPUT_BYTES: usize = 4096;

/// A line longer than this is handed to the sink in pieces (a hostile function could print
/// without ever writing a newline).
pub(crate) const MAX_LINE_BYTES: usize = 16 * 1024;

/// The read ends, before the reader tasks start, and the write ends for the runtime.
pub(crate) struct OutputPipes {
    pub stdout_read: OwnedFd,
    pub stderr_read: OwnedFd,
    pub stdout_write: OwnedFd,
    pub stderr_write: OwnedFd,
}

impl OutputPipes {
    /// Both pipes close-on-exec; the runtime's `dup2` onto 1 and 2 clears the flag there.
    pub fn new() -> io::Result<OutputPipes> {
        let (stdout_read, stdout_write) = rustix::pipe::pipe_with(PipeFlags::CLOEXEC)?;
        let (stderr_read, stderr_write) = rustix::pipe::pipe_with(PipeFlags::CLOEXEC)?;
        Ok(OutputPipes {
            stdout_read,
            stderr_read,
            stdout_write,
            stderr_write,
        })
    }
}

/// The reader tasks of one instance and its recent output.
pub(crate) struct OutputCapture {
    recent: Arc<Mutex<VecDeque<u8>>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    streams: Vec<Arc<ReaderState>>,
}

/// What [`OutputCapture::caught_up`] needs of one stream's reader: a second handle on the pipe's
/// read end (to ask the kernel how many bytes are unread) and whether the reader is between
/// reads, every line it read handed to the sink.
struct ReaderState {
    pipe: OwnedFd,
    /// Cleared by the reader before it reads, set once it has handed on all it read.
    idle: AtomicBool,
}

impl OutputCapture {
    /// Start reading. Must be called from within a tokio runtime.
    pub fn start(
        id: &str,
        stdout: OwnedFd,
        stderr: OwnedFd,
        sink: Arc<dyn OutputSink>,
    ) -> io::Result<OutputCapture> {
        // Allocated at the first output: most idle instances never print, and 1,000 of them
        // would hold 4 MiB for nothing (P12).
        let recent = Arc::new(Mutex::new(VecDeque::new()));
        let mut tasks = Vec::with_capacity(2);
        let mut streams = Vec::with_capacity(2);
        for (fd, stream) in [(stdout, Stream::Stdout), (stderr, Stream::Stderr)] {
            let state = Arc::new(ReaderState {
                pipe: fd.try_clone()?,
                idle: AtomicBool::new(true),
            });
            let receiver = pipe::Receiver::from_owned_fd(fd)?;
            tasks.push(tokio::spawn(read_lines(
                receiver,
                id.to_owned(),
                stream,
                sink.clone(),
                recent.clone(),
                state.clone(),
            )));
            streams.push(state);
        }
        Ok(OutputCapture {
            recent,
            tasks: Mutex::new(tasks),
            streams,
        })
    }

    /// Whether every complete line written to the pipes so far has reached the sink: nothing is
    /// left unread in either pipe and neither reader holds lines it has not handed on. (Reading
    /// the pipe first and the reader's flag second is what makes this safe: a reader clears its
    /// flag before it takes bytes out of the pipe.)
    pub fn caught_up(&self) -> bool {
        self.streams.iter().all(|s| {
            let unread = rustix::io::ioctl_fionread(&s.pipe).unwrap_or(0);
            unread == 0 && s.idle.load(Ordering::SeqCst)
        })
    }

    /// Waits, at most `patience`, until [`caught_up`](Self::caught_up): what a function
    /// printed before answering is then in its log before the line that ends the invocation.
    /// Returns at once when nothing was printed.
    pub async fn settle(&self, patience: Duration) {
        let t0 = Instant::now();
        let mut round = 0u32;
        while !self.caught_up() && t0.elapsed() < patience {
            // The reader has usually been woken already and needs only to run.
            if round < 8 {
                tokio::task::yield_now().await;
            } else {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            round += 1;
        }
    }

    pub fn recent(&self) -> String {
        let recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        let (a, b) = recent.as_slices();
        let mut bytes = Vec::with_capacity(a.len() + b.len());
        bytes.extend_from_slice(a);
        bytes.extend_from_slice(b);
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// Wait (at most `patience`) for the readers to reach end-of-file, so that the last lines
    /// of a stopped instance reach the sink before `stop` returns.
    pub async fn finish(&self, patience: Duration) {
        let tasks: Vec<_> =
            std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|e| e.into_inner()));
        for mut task in tasks {
            if tokio::time::timeout(patience, &mut task).await.is_err() {
                task.abort();
            }
        }
    }
}

impl Drop for OutputCapture {
    fn drop(&mut self) {
        for task in self
            .tasks
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            task.abort();
        }
    }
}

async fn read_lines(
    receiver: pipe::Receiver,
    id: String,
    stream: Stream,
    sink: Arc<dyn OutputSink>,
    recent: Arc<Mutex<VecDeque<u8>>>,
    state: Arc<ReaderState>,
) {
    let mut splitter = LineSplitter::default();
    // The read buffer exists only while the pipe has data: an instance that prints nothing
    // for hours (most of them, frozen ones all) holds no 8 KiB per stream.
    'open: loop {
        if let Err(e) = receiver.readable().await {
            tracing::debug!(instance = %id, ?stream, error = %e, "output pipe poll failed");
            break;
        }
        state.idle.store(false, Ordering::SeqCst);
        let mut buf = vec![0u8; READ_CHUNK_BYTES];
        loop {
            let n = match receiver.try_read(&mut buf) {
                Ok(0) => break 'open,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::debug!(instance = %id, ?stream, error = %e, "output pipe read failed");
                    break 'open;
                }
            };
            let chunk = &buf[..n];
            remember(&recent, chunk);
            splitter.push(chunk, |line| sink.write_line(&id, stream, line));
        }
        splitter.release();
        state.idle.store(true, Ordering::SeqCst);
    }
    splitter.finish(|line| sink.write_line(&id, stream, line));
    state.idle.store(true, Ordering::SeqCst);
}

/// What one read of an output pipe takes at most.
const READ_CHUNK_BYTES: usize = 8192;

fn remember(recent: &Mutex<VecDeque<u8>>, chunk: &[u8]) {
    let mut recent = recent.lock().unwrap_or_else(|e| e.into_inner());
    let chunk = &chunk[chunk.len().saturating_sub(RECENT_OUTPUT_BYTES)..];
    let overflow = (recent.len() + chunk.len()).saturating_sub(RECENT_OUTPUT_BYTES);
    recent.drain(..overflow);
    recent.extend(chunk);
}

/// Splits a byte stream into lines (without `\n` or `\r\n`), at most [`MAX_LINE_BYTES`] each.
#[derive(Default)]
pub(crate) struct LineSplitter {
    partial: Vec<u8>,
}

impl LineSplitter {
    pub fn push(&mut self, mut chunk: &[u8], mut emit: impl FnMut(&str)) {
        while let Some(pos) = chunk.iter().position(|&b| b == b'\n') {
            self.partial.extend_from_slice(&chunk[..pos]);
            self.emit_partial(&mut emit);
            chunk = &chunk[pos + 1..];
        }
        self.partial.extend_from_slice(chunk);
        while self.partial.len() >= MAX_LINE_BYTES {
            let rest = self.partial.split_off(MAX_LINE_BYTES);
            emit(&String::from_utf8_lossy(&self.partial));
            self.partial = rest;
        }
    }

    /// Gives back a large buffer left by a long line once nothing is pending.
    pub fn release(&mut self) {
        if self.partial.is_empty() && self.partial.capacity() > 1024 {
            self.partial = Vec::new();
        }
    }

    pub fn finish(&mut self, mut emit: impl FnMut(&str)) {
        if !self.partial.is_empty() {
            self.emit_partial(&mut emit);
        }
    }

    fn emit_partial(&mut self, emit: &mut impl FnMut(&str)) {
        if self.partial.last() == Some(&b'\r') {
            self.partial.pop();
        }
        emit(&String::from_utf8_lossy(&self.partial));
        self.partial.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(chunks: &[&[u8]]) -> Vec<String> {
        let mut lines = Vec::new();
        let mut s = LineSplitter::default();
        for c in chunks {
            s.push(c, |l| lines.push(l.to_owned()));
        }
        s.finish(|l| lines.push(l.to_owned()));
        lines
    }

    #[test]
    fn lines_across_chunks() {
        assert_eq!(split(&[b"a\nb", b"c\r\n\nd"]), ["a", "bc", "", "d"]);
        assert_eq!(split(&[b"x\n"]), ["x"]);
        assert!(split(&[]).is_empty());
        let long = vec![b'z'; MAX_LINE_BYTES + 10];
        let lines = split(&[&long, b"\n"]);
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].len(), MAX_LINE_BYTES);
        assert_eq!(lines[1].len(), 10);
    }

    #[test]
    fn recent_output_is_bounded() {
        let recent = Mutex::new(VecDeque::new());
        remember(&recent, &[b'a'; 3000]);
        remember(&recent, &[b'b'; 3000]);
        let r = recent.lock().unwrap();
        assert_eq!(r.len(), RECENT_OUTPUT_BYTES);
        assert_eq!(r.back(), Some(&b'b'));
        assert_eq!(r.front(), Some(&b'a'));
        drop(r);
        remember(&recent, &[b'c'; 10_000]);
        assert!(recent.lock().unwrap().iter().all(|&b| b == b'c'));
    }

    struct Collect(Mutex<Vec<(Stream, String)>>);
    impl OutputSink for Collect {
        fn write_line(&self, _id: &str, stream: Stream, line: &str) {
            self.0.lock().unwrap().push((stream, line.to_owned()));
        }
    }

    #[tokio::test]
    async fn pipes_reach_the_sink() {
        let pipes = OutputPipes::new().unwrap();
        let sink = Arc::new(Collect(Mutex::new(Vec::new())));
        let capture =
            OutputCapture::start("i1", pipes.stdout_read, pipes.stderr_read, sink.clone()).unwrap();
        rustix::io::write(&pipes.stdout_write, b"hello\nwor").unwrap();
        rustix::io::write(&pipes.stderr_write, b"oops\n").unwrap();
        rustix::io::write(&pipes.stdout_write, b"ld\n").unwrap();
        drop(pipes.stdout_write);
        drop(pipes.stderr_write);
        capture.finish(Duration::from_secs(5)).await;
        let mut got = sink.0.lock().unwrap().clone();
        got.sort_by_key(|(s, _)| *s == Stream::Stderr);
        assert_eq!(
            got,
            vec![
                (Stream::Stdout, "hello".into()),
                (Stream::Stdout, "world".into()),
                (Stream::Stderr, "oops".into())
            ]
        );
        assert!(capture.recent().contains("oops"));
    }

    #[tokio::test]
    async fn settle_waits_until_printed_lines_reached_the_sink() {
        let pipes = OutputPipes::new().unwrap();
        let sink = Arc::new(Collect(Mutex::new(Vec::new())));
        let capture =
            OutputCapture::start("i1", pipes.stdout_read, pipes.stderr_read, sink.clone()).unwrap();
        assert!(capture.caught_up(), "nothing printed yet");
        for round in 0..50 {
            let line = format!("line {round}\n");
            rustix::io::write(&pipes.stdout_write, line.as_bytes()).unwrap();
            rustix::io::write(&pipes.stderr_write, b"err\n").unwrap();
            assert!(!capture.caught_up(), "unread bytes in the pipes");
            capture.settle(Duration::from_secs(5)).await;
            assert!(capture.caught_up());
            let got = sink.0.lock().unwrap().clone();
            assert_eq!(got.len(), 2 * (round + 1), "{got:?}");
            assert!(got.contains(&(Stream::Stdout, format!("line {round}"))));
        }
    }
}
