//! Logs and audit lines on stderr, batched.
//!
//! The sidecar writes one JSON audit line per decision. Written one `write` call each, those lines
//! cost more than the decision itself, so lines are collected in a buffer that is flushed every
//! 50 ms, whenever it holds 64 KiB, and at exit. A process killed without warning (SIGKILL, OOM)
//! can lose the last 50 ms of lines; SIGTERM flushes them.

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

const FLUSH_EVERY: Duration = Duration::from_millis(50);
const FLUSH_AT: usize = 64 << 10;

/// The shared buffer in front of stderr.
#[derive(Clone, Default)]
pub struct BatchedStderr {
    buf: Arc<Mutex<Vec<u8>>>,
}

static GLOBAL: OnceLock<BatchedStderr> = OnceLock::new();

impl BatchedStderr {
    /// The process-wide writer; its flusher thread starts on first use.
    pub fn global() -> BatchedStderr {
        GLOBAL
            .get_or_init(|| {
                let w = BatchedStderr::default();
                let flusher = w.clone();
                std::thread::Builder::new()
                    .name("log-flush".into())
                    .spawn(move || loop {
                        std::thread::sleep(FLUSH_EVERY);
                        flusher.flush_now();
                    })
                    .expect("log flusher thread");
                w
            })
            .clone()
    }

    /// Writes what is buffered to stderr.
    pub fn flush_now(&self) {
        let pending = std::mem::take(&mut *self.buf.lock().unwrap_or_else(|e| e.into_inner()));
        if !pending.is_empty() {
            let mut err = std::io::stderr().lock();
            let _ = err.write_all(&pending);
            let _ = err.flush();
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
        let full = {
            let mut buf = self.buf.lock().unwrap_or_else(|e| e.into_inner());
            buf.extend_from_slice(data);
            buf.len() >= FLUSH_AT
        };
        if full {
            self.flush_now();
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

    #[test]
    fn lines_are_held_until_flushed_or_the_buffer_fills() {
        let mut w = BatchedStderr::default();
        w.write_all(b"one line\n").unwrap();
        assert_eq!(w.buf.lock().unwrap().len(), 9, "buffered, not written");
        w.flush_now();
        assert!(w.buf.lock().unwrap().is_empty());
        w.write_all(&vec![b'x'; FLUSH_AT]).unwrap();
        assert!(
            w.buf.lock().unwrap().is_empty(),
            "a full buffer is written at once"
        );
    }
}
