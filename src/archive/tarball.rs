//! Tar archives, plain or behind compression layers recognised by content.

use std::io::{self, BufReader, Cursor, Read};
use std::path::Path;

use tar::EntryType;

use super::extract::{corrupt, Extractor};
use super::path::EntryPath;
use super::tar_headers::HeaderGuard;
use super::{open_archive, UnpackError};

const BLOCK: usize = 512;
/// How many compression layers are peeled off at most (libarchive allows
/// stacking too; real archives have one).
const MAX_LAYERS: usize = 4;
/// Memory a legacy .lzma stream may ask for (its dictionary), in KiB.
const LZMA_MEM_LIMIT_KIB: u32 = 1 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Compression {
    Gzip,
    Bzip2,
    Xz,
    Lzip,
    Lzma,
}

type Stream = Box<dyn Read>;

pub(super) fn unpack(archive: &Path, out: &mut Extractor<'_>) -> Result<(), UnpackError> {
    let file = open_archive(archive)?;
    let mut stream: Stream = Box::new(BufReader::with_capacity(64 * 1024, file));
    let mut layers = 0;
    loop {
        let head = peek(&mut stream, BLOCK)?;
        if looks_like_tar(&head) {
            stream = Box::new(Cursor::new(head).chain(stream));
            break;
        }
        let Some(compression) = detect_compression(&head) else {
            let reason = if head.len() < BLOCK && layers == 0 {
                "too short for a tar archive"
            } else if layers == 0 {
                "no tar header and no known compression"
            } else {
                // Damaged compressed data may decode to garbage before the
                // decoder notices (bzip2 checks a block's CRC at its end).
                probe_decoder(&mut stream)?;
                "the decompressed content is not a tar archive"
            };
            return Err(UnpackError::UnknownFormat {
                expected: "tar",
                reason: reason.to_string(),
            });
        };
        if layers == MAX_LAYERS {
            return Err(UnpackError::Unsupported {
                entry: None,
                what: format!("more than {MAX_LAYERS} nested compression layers"),
            });
        }
        layers += 1;
        let stream_with_head: Stream = Box::new(Cursor::new(head).chain(stream));
        stream = decompress(compression, stream_with_head)?;
    }
    unpack_tar(stream, out)
}

/// Reads up to `n` bytes from the start of `stream` (fewer only at its end).
fn peek(stream: &mut Stream, n: usize) -> Result<Vec<u8>, UnpackError> {
    let mut head = Vec::with_capacity(n);
    stream
        .take(n as u64)
        .read_to_end(&mut head)
        .map_err(|err| corrupt(None, &err))?;
    Ok(head)
}

/// Decodes a little further (at most 1 MiB, more than a bzip2 block), to
/// report a damaged stream as such rather than as an unknown format.
fn probe_decoder(stream: &mut Stream) -> Result<(), UnpackError> {
    io::copy(&mut stream.take(1 << 20), &mut io::sink())
        .map(drop)
        .map_err(|err| corrupt(None, &err))
}

/// Whether `block` is a tar header with a valid checksum, or the all-zero
/// block that ends (here: makes up) an empty archive.
fn looks_like_tar(block: &[u8]) -> bool {
    if block.len() < BLOCK {
        return false;
    }
    if block.iter().all(|b| *b == 0) {
        return true;
    }
    let Some(stored) = parse_octal(&block[148..156]) else {
        return false;
    };
    // The checksum is the sum of all bytes with the checksum field counted
    // as spaces; old writers summed signed chars.
    let (mut unsigned, mut signed) = (0u64, 0i64);
    for (i, b) in block[..BLOCK].iter().enumerate() {
        let b = if (148..156).contains(&i) { b' ' } else { *b };
        unsigned += u64::from(b);
        signed += i64::from(b as i8);
    }
    stored == unsigned || i64::try_from(stored).is_ok_and(|s| s == signed)
}

/// An octal number field: optional leading spaces, digits, then NUL/space.
fn parse_octal(field: &[u8]) -> Option<u64> {
    let field = match field.iter().position(|b| *b != b' ') {
        Some(start) => &field[start..],
        None => return None,
    };
    let end = field
        .iter()
        .position(|b| *b == 0 || *b == b' ')
        .unwrap_or(field.len());
    let digits = &field[..end];
    if digits.is_empty() || !digits.iter().all(|b| (b'0'..=b'7').contains(b)) {
        return None;
    }
    digits.iter().try_fold(0u64, |acc, d| {
        acc.checked_mul(8)?.checked_add(u64::from(d - b'0'))
    })
}

fn detect_compression(head: &[u8]) -> Option<Compression> {
    const BZIP2_BLOCK: [u8; 6] = [0x31, 0x41, 0x59, 0x26, 0x53, 0x59];
    const BZIP2_EMPTY: [u8; 6] = [0x17, 0x72, 0x45, 0x38, 0x50, 0x90];
    if head.starts_with(&[0x1f, 0x8b, 0x08]) {
        return Some(Compression::Gzip);
    }
    if head.len() >= 10
        && head.starts_with(b"BZh")
        && (b'1'..=b'9').contains(&head[3])
        && (head[4..10] == BZIP2_BLOCK || head[4..10] == BZIP2_EMPTY)
    {
        return Some(Compression::Bzip2);
    }
    if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0x00]) {
        return Some(Compression::Xz);
    }
    if head.starts_with(b"LZIP") {
        return Some(Compression::Lzip);
    }
    if looks_like_lzma(head) {
        return Some(Compression::Lzma);
    }
    None
}

/// The legacy .lzma format has no magic number; its 13-byte header is
/// recognised by plausible values, as libarchive does: a valid properties
/// byte, a dictionary size of 2^n or 2^n + 2^(n-1), an unknown or sane
/// uncompressed size, and a zero first byte of the range coder.
fn looks_like_lzma(head: &[u8]) -> bool {
    if head.len() < 14 {
        return false;
    }
    let props = head[0];
    if props >= 9 * 5 * 5 {
        return false;
    }
    let dict = u32::from_le_bytes([head[1], head[2], head[3], head[4]]);
    let dict_ok = (12..=30).any(|n| dict == 1 << n || dict == (1 << n) + (1 << (n - 1)));
    if !dict_ok {
        return false;
    }
    let mut size = [0u8; 8];
    size.copy_from_slice(&head[5..13]);
    let size = u64::from_le_bytes(size);
    (size == u64::MAX || size < 1 << 48) && head[13] == 0
}

fn decompress(compression: Compression, input: Stream) -> Result<Stream, UnpackError> {
    Ok(match compression {
        // Multi-member gzip (bgzip, concatenated files) and multi-stream
        // bzip2 (pbzip2) are one logical stream, as for libarchive.
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(input)),
        Compression::Bzip2 => Box::new(bzip2::read::MultiBzDecoder::new(input)),
        Compression::Xz => Box::new(lzma_rust2::XzReader::new(input, true)),
        Compression::Lzip => Box::new(lzma_rust2::LzipReader::new(input)),
        Compression::Lzma => Box::new(
            lzma_rust2::LzmaReader::new_mem_limit(input, LZMA_MEM_LIMIT_KIB, None)
                .map_err(|err| corrupt(None, &err))?,
        ),
    })
}

fn unpack_tar(stream: Stream, out: &mut Extractor<'_>) -> Result<(), UnpackError> {
    let (guarded, refusal) = HeaderGuard::new(stream);
    let mut archive = tar::Archive::new(guarded);
    let entries = archive.entries().map_err(|err| corrupt(None, &err))?;
    let mut last_name: Option<String> = None;
    for entry in entries {
        // A failure to read the next header is reported after the last good entry.
        let mut entry = entry.map_err(|err| {
            refusal
                .borrow_mut()
                .take()
                .unwrap_or_else(|| UnpackError::Corrupt {
                    entry: None,
                    message: match &last_name {
                        Some(name) => format!("{err} (after entry {name:?})"),
                        None => err.to_string(),
                    },
                })
        })?;
        let raw_name = entry.path_bytes().into_owned();
        let name = String::from_utf8_lossy(&raw_name).into_owned();
        last_name = Some(name.clone());
        let kind = entry.header().entry_type();
        let size = entry.size();
        // A global pax header carries no member, a GNU volume label names
        // the tape.
        if kind == EntryType::XGlobalHeader || kind.as_byte() == b'V' {
            continue;
        }
        let path = EntryPath::parse(&raw_name)?;
        match kind {
            EntryType::Directory => out.directory(&path)?,
            // A GNU incremental dump directory: its data is a listing.
            _ if kind.as_byte() == b'D' => out.directory(&path)?,
            EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .map(|t| t.into_owned())
                    .unwrap_or_default();
                out.symlink(&path, &target)?;
            }
            EntryType::Link => {
                let target = entry
                    .link_name_bytes()
                    .map(|t| t.into_owned())
                    .unwrap_or_default();
                out.hard_link(&path, &target)?;
            }
            EntryType::Char => return Err(special(&name, "character device")),
            EntryType::Block => return Err(special(&name, "block device")),
            EntryType::Fifo => return Err(special(&name, "FIFO")),
            EntryType::GNULongName | EntryType::GNULongLink | EntryType::XHeader => {
                return Err(UnpackError::Unsupported {
                    entry: Some(name),
                    what: "an extension header in a non-POSIX tar header".to_string(),
                })
            }
            // Old (v7) archives mark directories only by a trailing slash.
            EntryType::Regular if raw_name.ends_with(b"/") => out.directory(&path)?,
            // Regular files, contiguous files, GNU sparse files, and (as
            // libarchive does) any unknown type letter.
            _ => {
                let mode = entry
                    .header()
                    .mode()
                    .map_err(|err| corrupt(Some(&name), &err))?;
                // A sparse file expands beyond its stored size.
                let declared = (kind != EntryType::GNUSparse).then_some(size);
                out.file(&path, mode & 0o111 != 0, declared, &mut entry)?;
            }
        }
    }
    drain(archive.into_inner().into_inner(), out)
}

/// After the end-of-archive marker: reads what is left of the stream, so that
/// a damaged or truncated compression trailer is noticed. What follows counts
/// against the byte limit, like everything else the archive expands to.
fn drain(rest: Stream, out: &Extractor<'_>) -> Result<(), UnpackError> {
    let allowance = out
        .limits()
        .max_total_bytes
        .saturating_sub(out.stats().bytes);
    let trailing =
        io::copy(&mut rest.take(allowance.saturating_add(1)), &mut io::sink()).map_err(|err| {
            UnpackError::Corrupt {
                entry: None,
                message: format!("after the end-of-archive marker: {err}"),
            }
        })?;
    if trailing > allowance {
        return Err(UnpackError::TooLarge {
            entry: "(data after the end-of-archive marker)".to_string(),
            limit: out.limits().max_total_bytes,
        });
    }
    Ok(())
}

fn special(name: &str, kind: &'static str) -> UnpackError {
    UnpackError::SpecialFile {
        entry: name.to_string(),
        kind,
    }
}
