//! Logs and audit lines on stderr, batched.
//!
//! The sidecar writes one JSON audit line per decision. Written one `write` call each, those lines
//! cost more than the decision itself, so lines are collected in a buffer that a background thread
//! flushes every 50 ms, as soon as it holds 64 KiB (the writer wakes it), and at exit; a request
//! never waits on stderr unless the buffer reaches 8 MiB (a stalled log reader), when writers
//! flush it themselves rather than grow it further. A process killed without warning (SIGKILL,
//! OOM) can lose the last 50 ms of lines; SIGTERM flushes them.

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

const FLUSH_EVERY: Duration = Duration::from_millis(50);
const FLUSH_AT: usize = 64 << 10;
/// Past this, writers flush themselves: back-pressure instead of unbounded memory.
const WRITER_FLUSHES_AT: usize = 8 << 20;

/// The shared buffer in front of stderr.
#[derive(Clone)]
pub struct BatchedStderr {
    buf: Arc<Mutex<Vec<u8>>>,
    /// The flusher thread, woken when the buffer fills.
    flusher: Arc<OnceLock<std::thread::Thread>>,
    /// Where flushed bytes go: stderr (tests capture them instead).
    sink: Sink,
}

/// Where a flush writes.
type Sink = Arc<dyn Fn(&[u8]) + Send + Sync>;

impl Default for BatchedStderr {
    fn default() -> Self {
        BatchedStderr {
            buf: Arc::default(),
            flusher: Arc::default(),
            sink: Arc::new(|bytes: &[u8]| {
                let mut err = std::io::stderr().lock();
                let _ = err.write_all(bytes);
                let _ = err.flush();
            }),
        }
    }
}

static GLOBAL: OnceLock<BatchedStderr> = OnceLock::new();

impl BatchedStderr {
    /// The process-wide writer; its flusher thread starts on first use.
    pub fn global() -> BatchedStderr {
        GLOBAL
            .get_or_init(|| {
                let w = BatchedStderr::default();
                let flusher = w.clone();
                let handle = std::thread::Builder::new()
                    .name("log-flush".into())
                    .spawn(move || loop {
                        std::thread::park_timeout(FLUSH_EVERY);
                        flusher.flush_now();
                    })
                    .expect("log flusher thread");
                let _ = w.flusher.set(handle.thread().clone());
                w
            })
            .clone()
    }

    /// Writes what is buffered to stderr.
    pub fn flush_now(&self) {
        let pending = std::mem::take(&mut *self.buf.lock().unwrap_or_else(|e| e.into_inner()));
        if !pending.is_empty() {
            (self.sink)(&pending);
        }
    }
}

/// Flushes the global writer, if logging was set up (call before exit).
pub fn flush() {
    if let Some(w) = GLOBAL.get() {
        w.flush_now();
    }
}

impl Write for BatchedStderr {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let held = {
            let mut buf = self.buf.lock().unwrap_or_else(|e| e.into_inner());
            buf.extend_from_slice(data);
            buf.len()
        };
        match self.flusher.get() {
            Some(t) if (FLUSH_AT..WRITER_FLUSHES_AT).contains(&held) => t.unpark(),
            Some(_) if held < WRITER_FLUSHES_AT => {}
            // No flusher (a writer made in a test), or one that cannot keep up.
            _ if held >= FLUSH_AT => self.flush_now(),
            _ => {}
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for BatchedStderr {
    type Writer = BatchedStderr;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// Sets up tracing: `filter` in EnvFilter syntax, `json` for one JSON object per line.
pub fn init(filter: &str, json: bool) {
    let logs = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(BatchedStderr::global());
    if json {
        logs.json()
            .flatten_event(true)
            .with_current_span(false)
            .init();
    } else {
        logs.init();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer whose flushes land in the returned buffer instead of the terminal.
    fn captured() -> (BatchedStderr, Arc<Mutex<usize>>) {
        let written = Arc::new(Mutex::new(0));
        let count = written.clone();
        let w = BatchedStderr {
            sink: Arc::new(move |b: &[u8]| *count.lock().unwrap() += b.len()),
            ..BatchedStderr::default()
        };
        (w, written)
    }

    #[test]
    fn lines_are_held_until_flushed_or_the_buffer_fills() {
        let (mut w, written) = captured();
        w.write_all(b"one line\n").unwrap();
        assert_eq!(w.buf.lock().unwrap().len(), 9, "buffered, not written");
        w.flush_now();
        assert!(w.buf.lock().unwrap().is_empty());
        assert_eq!(*written.lock().unwrap(), 9);
        w.write_all(&vec![b'x'; FLUSH_AT]).unwrap();
        assert!(
            w.buf.lock().unwrap().is_empty(),
            "without a flusher thread, a full buffer is written at once"
        );
    }

    #[test]
    fn with_a_flusher_a_full_buffer_wakes_it_and_the_writer_does_not_wait() {
        let (mut w, written) = captured();
        // A flusher that is never scheduled: the writer must not write itself.
        let idle = std::thread::spawn(|| std::thread::park_timeout(Duration::from_secs(5)));
        let _ = w.flusher.set(idle.thread().clone());
        w.write_all(&vec![b'x'; FLUSH_AT]).unwrap();
        assert_eq!(
            w.buf.lock().unwrap().len(),
            FLUSH_AT,
            "left for the flusher"
        );
        w.write_all(&vec![b'y'; WRITER_FLUSHES_AT]).unwrap();
        assert!(
            w.buf.lock().unwrap().is_empty(),
            "a flusher that cannot keep up makes writers flush (bounded memory)"
        );
        assert_eq!(*written.lock().unwrap(), FLUSH_AT + WRITER_FLUSHES_AT);
        idle.thread().unpark();
        let _ = idle.join();
    }
}
