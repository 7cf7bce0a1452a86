//! Writing git objects as one packfile (version 2, no deltas) with its
//! version-2 index, instead of one loose file per object. Packing an
//! unpacked archive this way costs one file and one fsync, and hashing,
//! compression and writing stream in one pass.
//!
//! Formats: gitformat-pack(5). Object ids are SHA-1 (native git ids).

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use flate2::{Compress, Compression, FlushCompress, Status};
use git2::{Oid, Repository};
use sha1::{Digest as _, Sha1};

use super::GitError;

/// The object kinds a pack written here holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PackKind {
    Tree,
    Blob,
}

impl PackKind {
    fn type_code(self) -> u8 {
        match self {
            PackKind::Tree => 2,
            PackKind::Blob => 3,
        }
    }
    fn name(self) -> &'static str {
        match self {
            PackKind::Tree => "tree",
            PackKind::Blob => "blob",
        }
    }
}

/// The two files of a finished pack, named `pack-<checksum>.{pack,idx}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PackFiles {
    pub pack: PathBuf,
    pub idx: PathBuf,
}

/// One object's place in the pack, for the index.
struct Placed {
    id: [u8; 20],
    crc: u32,
    offset: u64,
}

/// An object being streamed in: its id and the pack bytes are computed as
/// the content arrives.
struct Open {
    start: u64,
    declared: u64,
    received: u64,
    hasher: Sha1,
    crc: crc32fast::Hasher,
}

/// Writes objects into a new pack file. Each object is stored once; an
/// object seen before is dropped (the pack is truncated back when it was
/// streamed).
pub struct PackWriter {
    path: PathBuf,
    out: BufWriter<File>,
    offset: u64,
    placed: Vec<Placed>,
    seen: HashSet<[u8; 20]>,
    /// The compressor at the pack's level, and one that only stores.
    compress: Compress,
    store: Compress,
    /// Whether objects are stored instead of compressed just now.
    storing: bool,
    scratch: Vec<u8>,
    open: Option<Open>,
}

const HEADER_LEN: u64 = 12;

fn io_err(path: &Path) -> impl Fn(io::Error) -> GitError + '_ {
    move |source| GitError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl PackWriter {
    /// Starts a pack at `path` (a new file). `level` is the zlib level of the
    /// objects: 0 stores them uncompressed (still valid zlib), which is what
    /// makes packing as fast as hashing.
    pub fn create(path: &Path, level: u32) -> Result<PackWriter, GitError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(io_err(path))?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        // The count is patched in when the pack is finished.
        out.write_all(b"PACK\0\0\0\x02\0\0\0\0")
            .map_err(io_err(path))?;
        let level = Compression::new(level.min(9));
        Ok(PackWriter {
            path: path.to_path_buf(),
            out,
            offset: HEADER_LEN,
            placed: Vec::new(),
            seen: HashSet::new(),
            compress: Compress::new(level, true),
            store: Compress::new(Compression::none(), true),
            storing: false,
            scratch: Vec::with_capacity(128 << 10),
            open: None,
        })
    }

    /// Whether the next objects are only stored (zlib level 0), to keep up
    /// with the producer; not while an object is open.
    pub fn set_storing(&mut self, storing: bool) {
        if self.open.is_none() {
            self.storing = storing;
        }
    }

    /// Number of distinct objects written so far.
    pub fn len(&self) -> usize {
        self.placed.len()
    }

    pub fn is_empty(&self) -> bool {
        self.placed.is_empty()
    }

    /// Adds a whole object; returns its id.
    pub fn add(&mut self, kind: PackKind, content: &[u8]) -> Result<Oid, GitError> {
        let mut hasher = Sha1::new();
        hasher.update(format!("{} {}\0", kind.name(), content.len()));
        hasher.update(content);
        let id: [u8; 20] = hasher.finalize().into();
        if self.seen.insert(id) {
            let start = self.offset;
            let mut crc = crc32fast::Hasher::new();
            self.object_header(kind, content.len() as u64, &mut crc)?;
            self.deflate(content, &mut crc, true)?;
            self.placed.push(Placed {
                id,
                crc: crc.finalize(),
                offset: start,
            });
        }
        Ok(Oid::from_bytes(&id)?)
    }

    /// Starts streaming a blob of exactly `size` bytes; follow with
    /// [`PackWriter::write_chunk`] and [`PackWriter::finish_object`].
    pub fn begin_blob(&mut self, size: u64) -> Result<(), GitError> {
        let mut hasher = Sha1::new();
        hasher.update(format!("blob {size}\0"));
        let mut crc = crc32fast::Hasher::new();
        let start = self.offset;
        self.object_header(PackKind::Blob, size, &mut crc)?;
        self.open = Some(Open {
            start,
            declared: size,
            received: 0,
            hasher,
            crc,
        });
        Ok(())
    }

    pub fn write_chunk(&mut self, data: &[u8]) -> Result<(), GitError> {
        let mut open = self
            .open
            .take()
            .ok_or_else(|| self.misuse("no open object"))?;
        if open.received + data.len() as u64 > open.declared {
            // Left open, so that the pack cannot be finished.
            self.open = Some(open);
            return Err(self.misuse("more content than announced"));
        }
        open.received += data.len() as u64;
        open.hasher.update(data);
        let written = self.deflate(data, &mut open.crc, false);
        self.open = Some(open);
        written
    }

    /// Ends the streamed object; returns its id.
    pub fn finish_object(&mut self) -> Result<Oid, GitError> {
        let mut open = self
            .open
            .take()
            .ok_or_else(|| self.misuse("no open object"))?;
        if open.received != open.declared {
            self.open = Some(open);
            return Err(self.misuse("less content than announced"));
        }
        self.deflate(&[], &mut open.crc, true)?;
        let id: [u8; 20] = open.hasher.finalize().into();
        if self.seen.insert(id) {
            self.placed.push(Placed {
                id,
                crc: open.crc.finalize(),
                offset: open.start,
            });
        } else {
            // Already in the pack: take the copy back out.
            self.out.flush().map_err(io_err(&self.path))?;
            let file = self.out.get_mut();
            file.set_len(open.start).map_err(io_err(&self.path))?;
            file.seek(SeekFrom::Start(open.start))
                .map_err(io_err(&self.path))?;
            self.offset = open.start;
        }
        Ok(Oid::from_bytes(&id)?)
    }

    fn misuse(&self, what: &str) -> GitError {
        GitError::Import {
            path: self.path.clone(),
            message: format!("pack writer: {what}"),
        }
    }

    fn emit(&mut self, bytes: &[u8], crc: &mut crc32fast::Hasher) -> Result<(), GitError> {
        crc.update(bytes);
        self.out.write_all(bytes).map_err(io_err(&self.path))?;
        self.offset += bytes.len() as u64;
        Ok(())
    }

    /// Type and size, 4 bits then 7 bits at a time, little end first.
    fn object_header(
        &mut self,
        kind: PackKind,
        size: u64,
        crc: &mut crc32fast::Hasher,
    ) -> Result<(), GitError> {
        let mut header = [0u8; 11];
        let mut n = 0;
        let mut byte = (kind.type_code() << 4) | (size & 0x0f) as u8;
        let mut rest = size >> 4;
        while rest != 0 {
            header[n] = byte | 0x80;
            n += 1;
            byte = (rest & 0x7f) as u8;
            rest >>= 7;
        }
        header[n] = byte;
        self.emit(&header[..=n], crc)
    }

    /// Feeds `input` to the object's zlib stream; `last` ends the stream
    /// and readies the compressor for the next object.
    fn deflate(
        &mut self,
        mut input: &[u8],
        crc: &mut crc32fast::Hasher,
        last: bool,
    ) -> Result<(), GitError> {
        let flush = if last {
            FlushCompress::Finish
        } else {
            FlushCompress::None
        };
        let mut scratch = std::mem::take(&mut self.scratch);
        loop {
            scratch.clear();
            let compress = match self.storing {
                true => &mut self.store,
                false => &mut self.compress,
            };
            let before = compress.total_in();
            let status = compress.compress_vec(input, &mut scratch, flush);
            let consumed = (compress.total_in() - before) as usize;
            let status = status.map_err(|e| self.misuse(&format!("zlib: {e}")))?;
            input = &input[consumed..];
            self.emit(&scratch, crc)?;
            match status {
                Status::StreamEnd => break,
                _ if !last && input.is_empty() => break,
                _ => {}
            }
        }
        self.scratch = scratch;
        if last {
            match self.storing {
                true => self.store.reset(),
                false => self.compress.reset(),
            }
        }
        Ok(())
    }

    /// Patches in the count, appends the checksum, writes the index next to
    /// the pack, syncs both and names them after the checksum. A pack
    /// without objects is removed instead (`None`).
    pub fn finish(mut self) -> Result<Option<PackFiles>, GitError> {
        if self.open.is_some() {
            return Err(self.misuse("an object is still open"));
        }
        let path = self.path.clone();
        let err = io_err(&path);
        if self.placed.is_empty() {
            drop(self.out);
            std::fs::remove_file(&path).map_err(&err)?;
            return Ok(None);
        }
        self.out.flush().map_err(&err)?;
        let file = self.out.into_inner().map_err(|e| err(e.into_error()))?;
        let count = u32::try_from(self.placed.len()).map_err(|_| GitError::Import {
            path: path.clone(),
            message: "more than 2^32 objects".to_string(),
        })?;
        file.write_all_at(&count.to_be_bytes(), 8).map_err(&err)?;

        // The trailer covers everything before it, the patched count too.
        let mut hasher = Sha1::new();
        let mut reader = &file;
        reader.seek(SeekFrom::Start(0)).map_err(&err)?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = reader.read(&mut buf).map_err(&err)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        let checksum: [u8; 20] = hasher.finalize().into();
        file.write_all_at(&checksum, self.offset).map_err(&err)?;
        file.sync_all().map_err(&err)?;

        let mut placed = self.placed;
        placed.sort_unstable_by_key(|p| p.id);
        let name = format!("pack-{}", hex::encode(checksum));
        let dir = path.parent().unwrap_or(Path::new("."));
        let idx_path = dir.join(format!("{name}.idx"));
        write_index(&idx_path, &placed, &checksum)?;
        let pack_path = dir.join(format!("{name}.pack"));
        std::fs::rename(&path, &pack_path).map_err(&err)?;
        Ok(Some(PackFiles {
            pack: pack_path,
            idx: idx_path,
        }))
    }
}

/// The version-2 index: fan-out, sorted ids, CRCs, offsets (large ones in a
/// second table), the pack's checksum and the index's own.
fn write_index(path: &Path, placed: &[Placed], pack_checksum: &[u8; 20]) -> Result<(), GitError> {
    let err = io_err(path);
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(&err)?;
    let mut out = HashingWriter {
        inner: BufWriter::with_capacity(1 << 20, file),
        hasher: Sha1::new(),
    };
    out.write_all(b"\xfftOc\0\0\0\x02").map_err(&err)?;
    let mut fanout = [0u32; 256];
    for p in placed {
        fanout[p.id[0] as usize] += 1;
    }
    let mut total = 0u32;
    for slot in fanout {
        total += slot;
        out.write_all(&total.to_be_bytes()).map_err(&err)?;
    }
    for p in placed {
        out.write_all(&p.id).map_err(&err)?;
    }
    for p in placed {
        out.write_all(&p.crc.to_be_bytes()).map_err(&err)?;
    }
    let mut large = Vec::new();
    for p in placed {
        let small = if p.offset < 0x8000_0000 {
            p.offset as u32
        } else {
            large.push(p.offset);
            0x8000_0000 | (large.len() as u32 - 1)
        };
        out.write_all(&small.to_be_bytes()).map_err(&err)?;
    }
    for offset in large {
        out.write_all(&offset.to_be_bytes()).map_err(&err)?;
    }
    out.write_all(pack_checksum).map_err(&err)?;
    let own: [u8; 20] = out.hasher.finalize_reset().into();
    out.inner.write_all(&own).map_err(&err)?;
    let file = out.inner.into_inner().map_err(|e| err(e.into_error()))?;
    file.sync_all().map_err(&err)
}

struct HashingWriter<W> {
    inner: W,
    hasher: Sha1,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Moves finished packs into `repo`'s object store (each pack first, then
/// its index, which is what makes readers see it) and tells the open
/// repository to look again.
pub fn install_packs(repo: &Repository, packs: &[PackFiles]) -> Result<(), GitError> {
    let dir = repo.path().join("objects").join("pack");
    std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
    for files in packs {
        for from in [&files.pack, &files.idx] {
            let name = from.file_name().unwrap_or_default();
            let to = dir.join(name);
            std::fs::rename(from, &to).map_err(io_err(&to))?;
        }
    }
    File::open(&dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(&dir))?;
    repo.odb()?.refresh()?;
    Ok(())
}
