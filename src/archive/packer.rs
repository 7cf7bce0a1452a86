//! The packer threads: file contents arrive over bounded channels while the
//! parser thread keeps decompressing, and are hashed, compressed and
//! appended to a pack there. Each packer thread writes its own pack, so
//! compression uses every core; batches and large files go to them in turn.
//! Small files travel in batches (one wake-up for many files); buffers
//! travel back for reuse, so memory is a few chunks per thread whatever the
//! archive's size, and no buffer is cleared twice.

use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::thread::{Scope, ScopedJoinHandle};

use git2::Oid;

use super::UnpackError;
use crate::git::{GitError, PackKind, PackWriter};

/// Content is read and handed over in chunks of this size; files smaller
/// than that travel whole, several to a batch.
pub(super) const CHUNK: usize = 256 << 10;

/// Messages in flight between the threads.
const IN_FLIGHT: usize = 16;

/// A blob's place: which packer thread has it and in what order it got
/// it; its id is known once the packers are finished.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct BlobRef {
    worker: u16,
    index: u32,
}

/// Messages carry whether to only store the objects: the producer asks for
/// that when a packer falls behind, so compression uses only the CPU that
/// decompression leaves over and never makes the import slower than it.
enum Message {
    /// Whole blobs one after the other in the buffer, of these lengths.
    Batch(Vec<u8>, Vec<usize>, bool),
    Begin(u64, bool),
    /// The first `.1` bytes of the buffer continue the open blob.
    Chunk(Vec<u8>, usize),
    End,
}

impl Message {
    fn stored(self) -> Message {
        match self {
            Message::Batch(buf, lens, _) => Message::Batch(buf, lens, true),
            Message::Begin(size, _) => Message::Begin(size, true),
            other => other,
        }
    }
}

type Outcome = Result<(PackWriter, Vec<Oid>), GitError>;

/// The batch being filled: a buffer, how much of it is used, the lengths
/// of the blobs in it.
struct Batch {
    buf: Vec<u8>,
    used: usize,
    lens: Vec<usize>,
    worker: usize,
}

struct Worker<'scope> {
    to: Option<SyncSender<Message>>,
    handle: Option<ScopedJoinHandle<'scope, Outcome>>,
    blobs: u32,
}

pub(super) struct Packer<'scope> {
    workers: Vec<Worker<'scope>>,
    /// The worker that gets the next batch or large file.
    turn: usize,
    recycled: Receiver<Vec<u8>>,
    batch: Option<Batch>,
}

/// What the packers produced: a writer per thread (to finish) and the
/// blob ids by [`BlobRef`].
pub(super) struct Packed {
    pub writers: Vec<PackWriter>,
    ids: Vec<Vec<Oid>>,
}

impl Packed {
    pub fn id(&self, blob: BlobRef) -> Oid {
        self.ids[blob.worker as usize][blob.index as usize]
    }
}

fn run_worker(
    inbox: Receiver<Message>,
    give_back: SyncSender<Vec<u8>>,
    mut writer: PackWriter,
) -> Outcome {
    let mut ids = Vec::new();
    // A full return queue just drops the buffer.
    let recycle = |buf: Vec<u8>| drop(give_back.try_send(buf));
    for message in inbox {
        match message {
            Message::Batch(buf, lens, store) => {
                writer.set_storing(store);
                let mut at = 0;
                for len in lens {
                    ids.push(writer.add(PackKind::Blob, &buf[at..at + len])?);
                    at += len;
                }
                recycle(buf);
            }
            Message::Begin(size, store) => {
                writer.set_storing(store);
                writer.begin_blob(size)?
            }
            Message::Chunk(buf, len) => {
                writer.write_chunk(&buf[..len])?;
                recycle(buf);
            }
            Message::End => ids.push(writer.finish_object()?),
        }
    }
    Ok((writer, ids))
}

impl<'scope> Packer<'scope> {
    /// Starts a packer thread per writer.
    pub fn spawn<'env>(scope: &'scope Scope<'scope, 'env>, writers: Vec<PackWriter>) -> Self {
        let (give_back, recycled) = sync_channel::<Vec<u8>>(writers.len() * (IN_FLIGHT + 2));
        let workers = writers
            .into_iter()
            .map(|writer| {
                let (to, inbox) = sync_channel::<Message>(IN_FLIGHT);
                let give_back = give_back.clone();
                Worker {
                    to: Some(to),
                    handle: Some(scope.spawn(move || run_worker(inbox, give_back, writer))),
                    blobs: 0,
                }
            })
            .collect();
        Packer {
            workers,
            turn: 0,
            recycled,
            batch: None,
        }
    }

    /// A buffer of `CHUNK` bytes, reused when one came back (its old
    /// content is overwritten, never cleared).
    pub fn buffer(&self) -> Vec<u8> {
        self.recycled.try_recv().unwrap_or_else(|_| vec![0; CHUNK])
    }

    fn send(&mut self, worker: usize, message: Message) -> Result<(), UnpackError> {
        let sent = match &self.workers[worker].to {
            Some(tx) => match tx.try_send(message) {
                Ok(()) => true,
                // Behind: what follows is stored, which catches up.
                Err(TrySendError::Full(message)) => tx.send(message.stored()).is_ok(),
                Err(TrySendError::Disconnected(_)) => false,
            },
            None => false,
        };
        if sent {
            return Ok(());
        }
        // A worker only hangs up when it failed: its error says why.
        Err(match self.join_all() {
            Err(e) => e,
            Ok(_) => UnpackError::Internal("a packer stopped early".to_string()),
        })
    }

    fn next_ref(&mut self, worker: usize) -> BlobRef {
        let w = &mut self.workers[worker];
        w.blobs += 1;
        BlobRef {
            worker: worker as u16,
            index: w.blobs - 1,
        }
    }

    /// The worker whose turn it is; the turn passes on.
    fn take_turn(&mut self) -> usize {
        let w = self.turn;
        self.turn = (self.turn + 1) % self.workers.len();
        w
    }

    fn flush_batch(&mut self) -> Result<(), UnpackError> {
        match self.batch.take() {
            Some(b) if !b.lens.is_empty() => {
                self.send(b.worker, Message::Batch(b.buf, b.lens, false))
            }
            _ => Ok(()),
        }
    }

    /// Room for a small blob of at most `max` (<= `CHUNK`) bytes in the
    /// current batch; fill it, then [`Packer::add_to_batch`] the length.
    pub fn batch_space(&mut self, max: usize) -> Result<&mut [u8], UnpackError> {
        if self.batch.as_ref().is_some_and(|b| b.used + max > CHUNK) {
            self.flush_batch()?;
        }
        if self.batch.is_none() {
            self.batch = Some(Batch {
                buf: self.buffer(),
                used: 0,
                lens: Vec::new(),
                worker: self.take_turn(),
            });
        }
        let batch = self.batch.as_mut().expect("a batch was just started");
        Ok(&mut batch.buf[batch.used..batch.used + max])
    }

    /// The blob of `len` bytes just written into the batch space.
    pub fn add_to_batch(&mut self, len: usize) -> BlobRef {
        let batch = self.batch.as_mut().expect("batch_space comes first");
        batch.used += len;
        batch.lens.push(len);
        let worker = batch.worker;
        self.next_ref(worker)
    }

    pub fn whole(&mut self, content: &[u8]) -> Result<BlobRef, UnpackError> {
        self.batch_space(content.len())?.copy_from_slice(content);
        Ok(self.add_to_batch(content.len()))
    }

    /// Starts a large blob; its chunks and end go to the same worker.
    pub fn begin(&mut self, size: u64) -> Result<LargeBlob, UnpackError> {
        let worker = self.take_turn();
        self.send(worker, Message::Begin(size, false))?;
        Ok(LargeBlob(worker))
    }

    pub fn chunk(&mut self, blob: &LargeBlob, buf: Vec<u8>, len: usize) -> Result<(), UnpackError> {
        self.send(blob.0, Message::Chunk(buf, len))
    }

    pub fn end(&mut self, blob: LargeBlob) -> Result<BlobRef, UnpackError> {
        self.send(blob.0, Message::End)?;
        Ok(self.next_ref(blob.0))
    }

    /// Joins every worker (hanging up first); the first error wins.
    fn join_all(&mut self) -> Result<Packed, UnpackError> {
        let mut writers = Vec::new();
        let mut ids = Vec::new();
        let mut first_error = None;
        for w in &mut self.workers {
            w.to = None;
        }
        for w in &mut self.workers {
            let outcome = match w.handle.take() {
                Some(handle) => match handle.join() {
                    Ok(outcome) => outcome.map_err(UnpackError::Store),
                    Err(_) => Err(UnpackError::Internal(
                        "a packer thread panicked".to_string(),
                    )),
                },
                None => Err(UnpackError::Internal(
                    "a packer was joined twice".to_string(),
                )),
            };
            match outcome {
                Ok((writer, got)) if got.len() == w.blobs as usize => {
                    writers.push(writer);
                    ids.push(got);
                }
                Ok((_, got)) => {
                    first_error.get_or_insert(UnpackError::Internal(format!(
                        "{} blobs sent, {} packed",
                        w.blobs,
                        got.len()
                    )));
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(Packed { writers, ids }),
        }
    }

    /// Waits for every blob to be written; returns the writers (the first
    /// one takes the trees) and the blob ids.
    pub fn finish(mut self) -> Result<Packed, UnpackError> {
        self.flush_batch()?;
        self.join_all()
    }
}

/// A large blob being streamed to one worker.
pub(super) struct LargeBlob(usize);
