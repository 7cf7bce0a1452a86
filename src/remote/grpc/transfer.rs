//! What moving objects to and from an endpoint needs besides the calls:
//! failures and whether they are worth retrying, progress of streams,
//! producing ByteStream writes, verifying downloads as they arrive.

use super::*;

/// A failed attempt: the error to report, and whether another attempt may help.
pub(super) struct Failed {
    pub(super) error: RemoteError,
    pub(super) retry: bool,
    /// The endpoint could not be reached at all (rather than answering with an error).
    pub(super) unreachable: bool,
}

impl Failed {
    pub(super) fn status(call: &'static str, status: Status) -> Failed {
        let code = status.code();
        let unreachable = matches!(code, Code::Unavailable | Code::DeadlineExceeded)
            || std::error::Error::source(&status).is_some();
        Failed {
            error: RemoteError::Status {
                call,
                status: clarify(status),
            },
            retry: is_retryable(code),
            unreachable,
        }
    }

    pub(super) fn fatal(error: RemoteError) -> Failed {
        Failed {
            error,
            retry: false,
            unreachable: false,
        }
    }
}

impl From<RemoteError> for Failed {
    fn from(error: RemoteError) -> Failed {
        Failed::fatal(error)
    }
}

/// Folds the causes of a transport-level status (connection refused, TLS
/// errors, ...) into its message, so that they show where the status is printed.
pub(super) fn clarify(status: Status) -> Status {
    let mut causes: Vec<String> = Vec::new();
    let mut source = std::error::Error::source(&status);
    while let Some(cause) = source {
        let text = cause.to_string();
        if !text.is_empty() && !status.message().contains(&text) && !causes.contains(&text) {
            causes.push(text);
        }
        source = cause.source();
    }
    if causes.is_empty() {
        return status;
    }
    let message = if status.message().is_empty() {
        causes.join(": ")
    } else {
        format!("{}: {}", status.message(), causes.join(": "))
    };
    Status::new(status.code(), message)
}

/// The error's own text and its causes, for connect errors.
pub(super) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let more = cause.to_string();
        if !text.contains(&more) {
            text = format!("{text}: {more}");
        }
        source = cause.source();
    }
    text
}

pub(super) fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> RemoteError + '_ {
    move |source| RemoteError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Time of the last progress of a stream, for stall detection.
#[derive(Clone)]
pub(super) struct Progress {
    pub(super) start: Instant,
    pub(super) last_ms: Arc<AtomicU64>,
}

impl Progress {
    pub(super) fn new() -> Progress {
        Progress {
            start: Instant::now(),
            last_ms: Arc::new(AtomicU64::new(0)),
        }
    }

    pub(super) fn touch(&self) {
        self.last_ms
            .store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// Completes once nothing happened for `limit`.
    pub(super) async fn stalled(&self, limit: Duration) {
        loop {
            let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            let idle = self.start.elapsed().saturating_sub(last);
            if idle >= limit {
                return;
            }
            tokio::time::sleep(limit - idle).await;
        }
    }
}

/// Where the content of a ByteStream upload comes from.
#[derive(Clone)]
pub(super) enum Source {
    Memory(Arc<Vec<u8>>),
    File(PathBuf),
}

/// Feeds one ByteStream write: `size` bytes of `source` in chunks.
/// Stops quietly when the call is over (the receiver is gone).
pub(super) async fn produce(
    source: Source,
    resource_name: String,
    size: u64,
    tx: tokio::sync::mpsc::Sender<WriteRequest>,
) -> Result<(), RemoteError> {
    let mut file = match &source {
        Source::File(path) => Some(tokio::fs::File::open(path).await.map_err(io_error(path))?),
        Source::Memory(_) => None,
    };
    let mut offset = 0u64;
    loop {
        let want = (size - offset).min(CHUNK_BYTES as u64) as usize;
        let data = match (&source, file.as_mut()) {
            (Source::Memory(data), _) => data[offset as usize..offset as usize + want].to_vec(),
            (Source::File(path), Some(file)) => {
                let mut buf = vec![0u8; want];
                file.read_exact(&mut buf).await.map_err(|e| {
                    let source = if e.kind() == std::io::ErrorKind::UnexpectedEof {
                        std::io::Error::new(
                            e.kind(),
                            format!("the file got shorter than {size} bytes while uploading"),
                        )
                    } else {
                        e
                    };
                    RemoteError::Io {
                        path: path.clone(),
                        source,
                    }
                })?;
                buf
            }
            (Source::File(_), None) => unreachable!("files are opened above"),
        };
        let finish_write = offset + want as u64 == size;
        let request = WriteRequest {
            resource_name: if offset == 0 {
                resource_name.clone()
            } else {
                String::new()
            },
            write_offset: offset as i64,
            finish_write,
            data,
        };
        if tx.send(request).await.is_err() || finish_write {
            return Ok(());
        }
        offset += want as u64;
    }
}

/// Where a ByteStream download goes.
pub(super) enum Target {
    Memory(Vec<u8>),
    File(tokio::fs::File, PathBuf),
}

/// A download in progress: its target, and the hash so far when the size is
/// known (native objects of unknown size are hashed at the end).
pub(super) struct Download {
    pub(super) hash: String,
    pub(super) target: Target,
    pub(super) len: u64,
    pub(super) expected: Option<u64>,
    pub(super) hasher: Option<ObjectHasher>,
    /// A memory download goes on in this file once it is longer than the
    /// given number of bytes.
    pub(super) spill: Option<(u64, PathBuf)>,
    /// More bytes than this are refused.
    pub(super) max: Option<u64>,
}

impl Download {
    pub(super) fn new(hf: HashFunction, digest: &Digest, target: Target) -> Download {
        let known = digest.size_known(hf);
        Download {
            hash: digest.hash.clone(),
            target,
            len: 0,
            expected: known.then_some(digest.size),
            hasher: known.then(|| hf.hasher(digest.framing(), digest.size)),
            spill: None,
            max: None,
        }
    }

    pub(super) async fn put(&mut self, data: &[u8]) -> Result<(), RemoteError> {
        if self
            .expected
            .is_some_and(|size| self.len + data.len() as u64 > size)
        {
            return Err(RemoteError::Corrupt {
                hash: self.hash.clone(),
            });
        }
        let len = self.len + data.len() as u64;
        if let Some(max) = self.max.filter(|&max| len > max) {
            return Err(RemoteError::TooLarge {
                hash: self.hash.clone(),
                limit: max,
            });
        }
        if let (Target::Memory(buf), Some((at, path))) = (&self.target, &self.spill) {
            if len > *at {
                let mut file = tokio::fs::File::create(path)
                    .await
                    .map_err(io_error(path))?;
                file.write_all(buf).await.map_err(io_error(path))?;
                self.target = Target::File(file, path.clone());
            }
        }
        match &mut self.target {
            Target::Memory(buf) => buf.extend_from_slice(data),
            Target::File(file, path) => file.write_all(data).await.map_err(io_error(path))?,
        }
        if let Some(h) = &mut self.hasher {
            h.update(data);
        }
        self.len += data.len() as u64;
        Ok(())
    }
}

/// Checks downloaded bytes against their digest.
pub(super) fn verify(hf: HashFunction, digest: &Digest, data: &[u8]) -> Result<(), RemoteError> {
    let size_ok = !digest.size_known(hf) || data.len() as u64 == digest.size;
    if size_ok && hf.hash_bytes(digest.framing(), data) == digest.hash {
        Ok(())
    } else {
        Err(RemoteError::Corrupt {
            hash: digest.hash.clone(),
        })
    }
}

/// Removes a temporary file unless disarmed.
pub(super) struct TempFile(pub(super) Option<PathBuf>);

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}
