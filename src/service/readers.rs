//! A few threads that read NAR frames for every download.
//!
//! Reads are short (a span of frames, mostly from the page cache) but blocking.
//! Doing them on tokio's blocking pool let 16 downloads spread over 30 and more
//! threads, each with its own glibc malloc arena holding freed read buffers: tens
//! of MiB of resident memory for nothing. A fixed set of reader threads keeps the
//! buffers in a few arenas and bounds how many reads run at once.

use crossbeam_channel::{Receiver, Sender};

type Job = Box<dyn FnOnce() + Send>;

/// The reader threads; they end when this is dropped and their queue is empty.
pub struct Readers {
    tx: Sender<Job>,
}

impl Readers {
    /// Start `n` reader threads (at least one).
    pub fn start(n: usize) -> std::io::Result<Self> {
        let (tx, rx) = crossbeam_channel::unbounded::<Job>();
        for i in 0..n.max(1) {
            let rx: Receiver<Job> = rx.clone();
            std::thread::Builder::new()
                .name(format!("nar-reader-{i}"))
                .spawn(move || {
                    while let Ok(job) = rx.recv() {
                        job();
                    }
                })?;
        }
        Ok(Self { tx })
    }

    /// Run `f` on a reader thread; the answer arrives on the returned receiver
    /// (closed without an answer only if the readers are gone).
    pub fn run<T, F>(&self, f: F) -> tokio::sync::oneshot::Receiver<T>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let (done, answer) = tokio::sync::oneshot::channel();
        let _ = self.tx.send(Box::new(move || {
            let _ = done.send(f());
        }));
        answer
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_work_and_stops() {
        let r = Readers::start(2).unwrap();
        let answers: Vec<_> = (0..10).map(|i| r.run(move || i * 2)).collect();
        let got: Vec<i32> = answers
            .into_iter()
            .map(|a| a.blocking_recv().unwrap())
            .collect();
        assert_eq!(got, (0..10).map(|i| i * 2).collect::<Vec<_>>());
        drop(r);
    }
}
