//! The `zip` archive kind: zip files, and 7-Zip files recognised by magic.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::Path;

use zip::result::ZipError;
use zip::ZipArchive;

use super::extract::{corrupt, read_link_text, Extractor, MAX_LINK_TEXT};
use super::path::EntryPath;
use super::{open_archive, sevenzip, UnpackError};

const S_IFMT: u32 = 0o170000;
const S_IFSOCK: u32 = 0o140000;
const S_IFLNK: u32 = 0o120000;
const S_IFREG: u32 = 0o100000;
const S_IFBLK: u32 = 0o060000;
const S_IFDIR: u32 = 0o040000;
const S_IFCHR: u32 = 0o020000;
const S_IFIFO: u32 = 0o010000;

/// "Version made by" host systems whose attributes mean something to us.
const HOST_DOS: u8 = 0;
const HOST_UNIX: u8 = 3;

/// The file-type bits of a unix mode, as the entry kind they stand for.
pub(super) enum UnixKind {
    Regular,
    Directory,
    Symlink,
    Special(&'static str),
    Unknown,
}

pub(super) fn unix_kind(mode: u32) -> UnixKind {
    match mode & S_IFMT {
        0 | S_IFREG => UnixKind::Regular,
        S_IFDIR => UnixKind::Directory,
        S_IFLNK => UnixKind::Symlink,
        S_IFCHR => UnixKind::Special("character device"),
        S_IFBLK => UnixKind::Special("block device"),
        S_IFIFO => UnixKind::Special("FIFO"),
        S_IFSOCK => UnixKind::Special("socket"),
        _ => UnixKind::Unknown,
    }
}

pub(super) fn unpack(archive: &Path, out: &mut Extractor<'_>) -> Result<(), UnpackError> {
    let mut file = open_archive(archive)?;
    let mut magic = Vec::with_capacity(6);
    (&mut file)
        .take(6)
        .read_to_end(&mut magic)
        .map_err(|source| UnpackError::Open {
            path: archive.to_path_buf(),
            source,
        })?;
    if magic == sevenzip::MAGIC {
        return sevenzip::unpack(archive, file, out);
    }
    let clone = |file: &File| {
        file.try_clone().map_err(|source| UnpackError::Open {
            path: archive.to_path_buf(),
            source,
        })
    };
    let walk_file = clone(&file)?;
    let names_file = clone(&file)?;
    let mut zip = match ZipArchive::new(BufReader::new(file)) {
        Ok(zip) => zip,
        Err(err) if magic.starts_with(b"PK") => return Err(corrupt(None, &err)),
        Err(err) => {
            return Err(UnpackError::UnknownFormat {
                expected: "zip or 7z",
                reason: err.to_string(),
            })
        }
    };
    let records = central_directory(walk_file, zip.central_directory_start(), out)?;
    out.check_entry_count(zip.len() as u64)?;
    let mut headers_seen = HashSet::new();
    for index in 0..zip.len() {
        let name = zip.name_for_index(index).unwrap_or_default().to_string();
        let mut entry = zip.by_index(index).map_err(|err| entry_error(name, err))?;
        // Central directory entries that share a local header are one entry
        // to libarchive, and so to the reference: the first one counts.
        if !headers_seen.insert(entry.header_start()) {
            continue;
        }
        let raw_name = local_name(&names_file, entry.header_start())?;
        let path = EntryPath::parse(&raw_name)?;
        let Some(record) = records.get(entry.name_raw()) else {
            return Err(UnpackError::Corrupt {
                entry: Some(path.name.clone()),
                message: "entry missing from the central directory".to_string(),
            });
        };
        let declared = entry.size();
        match record.kind(&raw_name) {
            UnixKind::Directory => out.directory(&path)?,
            UnixKind::Regular => {
                let executable = record.unix_mode().is_some_and(|m| m & 0o111 != 0);
                out.file(&path, executable, Some(declared), &mut entry)?;
            }
            UnixKind::Symlink => {
                let text = read_link_text(&path.name, &mut entry, MAX_LINK_TEXT)?;
                if text.len() as u64 != declared {
                    return Err(UnpackError::Corrupt {
                        entry: Some(path.name.clone()),
                        message: "symlink text shorter than announced".to_string(),
                    });
                }
                out.symlink(&path, &text)?;
            }
            UnixKind::Special(kind) => {
                return Err(UnpackError::SpecialFile {
                    entry: path.name,
                    kind,
                })
            }
            UnixKind::Unknown => {
                return Err(UnpackError::Unsupported {
                    entry: Some(path.name),
                    what: "unknown file type in the unix mode".to_string(),
                })
            }
        }
    }
    Ok(())
}

/// The entry's name as libarchive, and so the reference, takes it: from the
/// local header (which may differ from the central directory's), with every
/// backslash made a slash.
fn local_name(file: &File, header_start: u64) -> Result<Vec<u8>, UnpackError> {
    use std::os::unix::fs::FileExt;
    let mut fixed = [0u8; 30];
    file.read_exact_at(&mut fixed, header_start)
        .map_err(|err| corrupt(None, &err))?;
    if fixed[..4] != *b"PK\x03\x04" {
        return Err(UnpackError::Corrupt {
            entry: None,
            message: format!("no local header at offset {header_start}"),
        });
    }
    let mut name = vec![0u8; usize::from(u16::from_le_bytes([fixed[26], fixed[27]]))];
    file.read_exact_at(&mut name, header_start + 30)
        .map_err(|err| corrupt(None, &err))?;
    for byte in &mut name {
        if *byte == b'\\' {
            *byte = b'/';
        }
    }
    Ok(name)
}

fn entry_error(name: String, err: ZipError) -> UnpackError {
    match err {
        ZipError::UnsupportedArchive(what) => UnpackError::Unsupported {
            entry: Some(name),
            what: what.to_string(),
        },
        other => corrupt(Some(&name), &other),
    }
}

/// What the central directory says about one entry, beyond what the zip
/// crate exposes: the host system and the external attributes, which
/// together give the file type and permissions as libarchive reads them.
struct Record {
    host: u8,
    external: u32,
}

impl Record {
    /// The unix mode, if the entry was written on a unix host.
    fn unix_mode(&self) -> Option<u32> {
        (self.host == HOST_UNIX).then_some(self.external >> 16)
    }

    fn kind(&self, raw_name: &[u8]) -> UnixKind {
        // A trailing slash makes a directory whatever the attributes say.
        if raw_name.ends_with(b"/") {
            return UnixKind::Directory;
        }
        match self.host {
            HOST_UNIX => unix_kind(self.external >> 16),
            HOST_DOS if self.external & 0x10 != 0 => UnixKind::Directory,
            _ => UnixKind::Regular,
        }
    }
}

/// Walks the central directory records (the zip crate merges entries of
/// the same name, so duplicates are looked for here), returning the record of
/// each name.
fn central_directory(
    file: File,
    start: u64,
    out: &Extractor<'_>,
) -> Result<HashMap<Vec<u8>, Record>, UnpackError> {
    const SIGNATURE: [u8; 4] = *b"PK\x01\x02";
    const FIXED: usize = 46;
    let mut reader = BufReader::new(file);
    reader
        .seek(SeekFrom::Start(start))
        .map_err(|err| corrupt(None, &err))?;
    let mut records = HashMap::new();
    let mut count = 0u64;
    loop {
        let mut fixed = [0u8; FIXED];
        if reader.read_exact(&mut fixed).is_err() || fixed[..4] != SIGNATURE {
            break;
        }
        count += 1;
        out.check_entry_count(count)?;
        let u16_at = |at: usize| u16::from_le_bytes([fixed[at], fixed[at + 1]]);
        let host = fixed[5];
        let external = u32::from_le_bytes([fixed[38], fixed[39], fixed[40], fixed[41]]);
        let mut name = vec![0u8; usize::from(u16_at(28))];
        reader
            .read_exact(&mut name)
            .map_err(|err| corrupt(None, &err))?;
        let skip = i64::from(u16_at(30)) + i64::from(u16_at(32));
        reader
            .seek_relative(skip)
            .map_err(|err| corrupt(None, &err))?;
        // A repeated directory entry is harmless; anything else repeated is not.
        let is_dir = name.ends_with(b"/");
        if records
            .insert(name.clone(), Record { host, external })
            .is_some()
            && !is_dir
        {
            return Err(UnpackError::Duplicate {
                entry: String::from_utf8_lossy(&name).into_owned(),
                existing: "file",
            });
        }
    }
    Ok(records)
}
