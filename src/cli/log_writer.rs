//! Where `larder serve`'s log lines go: stderr. Access-log lines (target
//! `larder::access`) gather in a shared buffer that a thread of its own writes
//! out every [`FLUSH_EVERY`] (and at the end); every other line is written at
//! once, after what is buffered, so warnings and errors are never late and the
//! order of lines is kept.
//!
//! With one access-log line per request, writing each line as it comes costs a
//! system call per request, and handing each to a writer thread costs a thread
//! wake-up per request; either costs more than a narinfo lookup. Appending to a
//! buffer costs a short lock and a copy. A line reaches stderr at most
//! [`FLUSH_EVERY`] after it was logged; lines not yet written when the process
//! is killed with SIGKILL are lost (a clean stop writes them all). When the
//! buffer holds more than [`MAX_BUFFERED`] (stderr cannot keep up), the thread
//! that logs writes the buffer out itself, so memory stays bounded and no line
//! is dropped.

use std::io::Write;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

const FLUSH_EVERY: Duration = Duration::from_millis(50);
const MAX_BUFFERED: usize = 4 << 20;

#[derive(Default)]
struct State {
    buf: Vec<u8>,
    /// The buffer last written out, kept for the next swap so that neither
    /// buffer grows from nothing (and is freed) every [`FLUSH_EVERY`].
    spare: Vec<u8>,
    closing: bool,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    wake: Condvar,
}

impl Shared {
    /// Write out whatever is buffered (swapped out under the lock, written
    /// without it).
    fn drain(&self) {
        let mut out = match self.state.lock() {
            Ok(mut s) => {
                let spare = std::mem::take(&mut s.spare);
                std::mem::replace(&mut s.buf, spare)
            }
            Err(_) => return,
        };
        if !out.is_empty() {
            let mut err = std::io::stderr().lock();
            let _ = err.write_all(&out);
            let _ = err.flush();
            out.clear();
        }
        if out.capacity() <= MAX_BUFFERED {
            if let Ok(mut s) = self.state.lock() {
                s.spare = out;
            }
        }
    }
}

/// The `MakeWriter` for the fmt layer.
#[derive(Clone)]
pub struct BufferedStderr(Arc<Shared>);

impl BufferedStderr {
    /// Append one whole line to the batch (written out within [`FLUSH_EVERY`]).
    pub fn write_batched(&self, line: &[u8]) {
        let _ = LineWriter {
            shared: &self.0,
            batched: true,
        }
        .write(line);
    }
}

/// Writes out what is left when dropped: keep it until the end of `serve`.
pub struct FlushGuard {
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for FlushGuard {
    fn drop(&mut self) {
        if let Ok(mut s) = self.shared.state.lock() {
            s.closing = true;
        }
        self.shared.wake.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.shared.drain();
    }
}

/// A buffered stderr and the guard that ends its flushing thread.
pub fn buffered_stderr() -> (BufferedStderr, FlushGuard) {
    let shared = Arc::new(Shared::default());
    let flusher = shared.clone();
    let thread = std::thread::Builder::new()
        .name("larder-log".into())
        .spawn(move || loop {
            let closing = match flusher.state.lock() {
                Ok(s) => match flusher.wake.wait_timeout(s, FLUSH_EVERY) {
                    Ok((s, _)) => s.closing,
                    Err(_) => true,
                },
                Err(_) => true,
            };
            flusher.drain();
            if closing {
                return;
            }
        })
        .ok();
    (
        BufferedStderr(shared.clone()),
        FlushGuard { shared, thread },
    )
}

/// One log line's way into the buffer (and, unless `batched`, straight on out).
pub struct LineWriter<'a> {
    shared: &'a Shared,
    batched: bool,
}

impl Write for LineWriter<'_> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let full = match self.shared.state.lock() {
            Ok(mut s) => {
                s.buf.extend_from_slice(data);
                s.buf.len() > MAX_BUFFERED
            }
            Err(_) => {
                // A thread panicked while logging: write straight through.
                return std::io::stderr().write(data);
            }
        };
        if full || !self.batched {
            self.shared.drain();
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for BufferedStderr {
    type Writer = LineWriter<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        LineWriter {
            shared: &self.0,
            batched: false,
        }
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> Self::Writer {
        LineWriter {
            shared: &self.0,
            batched: meta.target() == "larder::access",
        }
    }
}
