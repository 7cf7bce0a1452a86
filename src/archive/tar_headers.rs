//! A size check on tar extension headers, made on the raw stream before the
//! `tar` crate reads them.
//!
//! The `tar` crate reads a GNU long name or long link (typeflag `L`, `K`) and
//! a pax header (`x`) into memory whole, whatever size the header claims: a
//! 500 KB tar.gz can name a 512 MiB path. [`HeaderGuard`] sits between the
//! decompressor and the crate, follows the same block framing as the crate
//! (pax `size` overrides, GNU sparse extension blocks, end at the first zero
//! block) and fails the read that would deliver an oversized extension header.
//! Should the two ever disagree on framing, the unpacker's memory limit still
//! holds; this check makes the refusal early, cheap and clearly worded.

use std::cell::RefCell;
use std::io::{self, Read};
use std::rc::Rc;

use super::UnpackError;

const BLOCK: u64 = 512;

/// The longest GNU long name or long link accepted. No file system takes a
/// path this long in one call, so nothing that could be unpacked is refused.
pub(super) const MAX_LONG_NAME: u64 = 64 << 10;
/// The largest pax header accepted (Go's archive/tar draws the line at 1 MiB
/// as well); real ones hold a few names and times.
pub(super) const MAX_PAX_HEADER: u64 = 1 << 20;

enum Phase {
    /// Passing entry data (and padding) until the next header.
    Data,
    /// Collecting a header block.
    Header,
    /// Collecting a GNU sparse extension block, with data of this size after it.
    SparseExtension { size: u64 },
    /// Collecting a pax header's records (to learn a `size` override).
    Pax { records: Vec<u8>, size: u64 },
    /// Past the end marker or a header the crate rejects: nothing to check.
    Done,
}

/// Where a refusal is left for the caller, who sees only the crate's error.
pub(super) type Refusal = Rc<RefCell<Option<UnpackError>>>;

/// A reader that passes a tar stream through unchanged and fails on an
/// extension header larger than [`MAX_LONG_NAME`] or [`MAX_PAX_HEADER`].
pub(super) struct HeaderGuard<R> {
    inner: R,
    /// Bytes passed through so far.
    pos: u64,
    /// Where the current phase ends.
    until: u64,
    phase: Phase,
    block: Vec<u8>,
    /// A pax `size` waiting for the entry it describes.
    pending_size: Option<u64>,
    refusal: Refusal,
}

impl<R: Read> HeaderGuard<R> {
    pub(super) fn new(inner: R) -> (Self, Refusal) {
        let refusal = Refusal::default();
        let guard = HeaderGuard {
            inner,
            pos: 0,
            until: BLOCK,
            phase: Phase::Header,
            block: Vec::with_capacity(BLOCK as usize),
            pending_size: None,
            refusal: refusal.clone(),
        };
        (guard, refusal)
    }

    pub(super) fn into_inner(self) -> R {
        self.inner
    }

    fn inspect(&mut self, mut data: &[u8]) -> Result<(), UnpackError> {
        while !data.is_empty() {
            if matches!(self.phase, Phase::Done) {
                return Ok(());
            }
            let take = usize::try_from(self.until - self.pos)
                .unwrap_or(usize::MAX)
                .min(data.len());
            let (now, rest) = data.split_at(take);
            data = rest;
            self.pos += take as u64;
            match &mut self.phase {
                Phase::Header | Phase::SparseExtension { .. } => self.block.extend_from_slice(now),
                Phase::Pax { records, .. } => records.extend_from_slice(now),
                Phase::Data | Phase::Done => {}
            }
            if self.pos == self.until {
                self.phase_done()?;
            }
        }
        Ok(())
    }

    /// The current phase has all its bytes: decide what comes next.
    fn phase_done(&mut self) -> Result<(), UnpackError> {
        match std::mem::replace(&mut self.phase, Phase::Done) {
            Phase::Data => self.expect_header(),
            Phase::Header => {
                let block = std::mem::take(&mut self.block);
                self.header(&block)?;
            }
            Phase::SparseExtension { size } => {
                let block = std::mem::take(&mut self.block);
                if block[504] == 1 {
                    self.expect(Phase::SparseExtension { size }, BLOCK);
                } else {
                    self.skip_data(size);
                }
            }
            Phase::Pax { records, size } => {
                self.pending_size = pax_size(&records);
                self.skip_exact(padded(size) - size);
            }
            Phase::Done => {}
        }
        Ok(())
    }

    fn header(&mut self, block: &[u8]) -> Result<(), UnpackError> {
        if block.iter().all(|b| *b == 0) || !checksum_ok(block) {
            // The end of the archive, or an error the crate reports itself.
            return Ok(());
        }
        let Some(declared) = size_field(&block[124..136]) else {
            return Ok(());
        };
        let kind = block[156];
        let magic = &block[257..265];
        let recognised = magic == b"ustar\x0000" || magic == b"ustar  \0";
        let (what, limit) = match kind {
            b'L' => ("GNU long name", MAX_LONG_NAME),
            b'K' => ("GNU long link", MAX_LONG_NAME),
            b'x' => ("pax header", MAX_PAX_HEADER),
            b'g' => ("global pax header", MAX_PAX_HEADER),
            _ => ("", u64::MAX),
        };
        if declared > limit {
            let refusal = || UnpackError::Unsupported {
                entry: None,
                what: format!("a {what} of {declared} bytes (the limit is {limit})"),
            };
            *self.refusal.borrow_mut() = Some(refusal());
            return Err(refusal());
        }
        let extension = matches!(kind, b'L' | b'K' | b'x' | b'g');
        // As in the crate: a pax size applies to the next entry that is not
        // itself an extension header, and any entry handed out consumes it.
        let size = match (extension, self.pending_size) {
            (false, Some(size)) => size,
            _ => declared,
        };
        if !(recognised && matches!(kind, b'L' | b'K' | b'x')) {
            self.pending_size = None;
        }
        if recognised && kind == b'x' {
            self.expect(
                Phase::Pax {
                    records: Vec::new(),
                    size,
                },
                size,
            );
            if size == 0 {
                self.phase_done()?;
            }
        } else if kind == b'S' && magic == b"ustar  \0" && block[482] == 1 {
            self.expect(Phase::SparseExtension { size }, BLOCK);
        } else {
            self.skip_data(size);
        }
        Ok(())
    }

    fn expect(&mut self, phase: Phase, len: u64) {
        self.phase = phase;
        self.until = self.pos.saturating_add(len);
    }

    fn expect_header(&mut self) {
        self.expect(Phase::Header, BLOCK);
    }

    /// Skips an entry's data and the padding after it.
    fn skip_data(&mut self, size: u64) {
        self.skip_exact(padded(size));
    }

    fn skip_exact(&mut self, len: u64) {
        if len == 0 {
            self.expect_header();
        } else {
            self.expect(Phase::Data, len);
        }
    }
}

impl<R: Read> Read for HeaderGuard<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.inspect(&buf[..n])
            .map_err(|refusal| io::Error::new(io::ErrorKind::InvalidData, refusal.to_string()))?;
        Ok(n)
    }
}

/// `size` rounded up to whole blocks.
fn padded(size: u64) -> u64 {
    size.div_ceil(BLOCK).saturating_mul(BLOCK)
}

fn checksum_ok(block: &[u8]) -> bool {
    let sum: u64 = block
        .iter()
        .enumerate()
        .map(|(i, b)| {
            if (148..156).contains(&i) {
                32
            } else {
                u64::from(*b)
            }
        })
        .sum();
    octal(&block[148..156]) == Some(sum)
}

/// A numeric field as the crate reads it: base-256 when the high bit is set
/// (its last eight bytes), else octal text up to the first NUL, trimmed.
fn size_field(field: &[u8]) -> Option<u64> {
    if field[0] & 0x80 != 0 {
        let tail = &field[field.len() - 8..];
        return Some(tail.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b)));
    }
    octal(field)
}

fn octal(field: &[u8]) -> Option<u64> {
    let end = field.iter().position(|b| *b == 0).unwrap_or(field.len());
    let text = std::str::from_utf8(&field[..end]).ok()?;
    u64::from_str_radix(text.trim(), 8).ok()
}

/// The first `size` record of a pax header, as the crate reads it.
fn pax_size(records: &[u8]) -> Option<u64> {
    for record in tar::PaxExtensions::new(records) {
        let record = record.ok()?;
        if record.key() == Ok("size") {
            return record.value().ok()?.parse().ok();
        }
    }
    None
}
