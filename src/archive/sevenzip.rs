//! 7-Zip archives (part of the `zip` archive kind).

use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::Path;

use sevenz_rust2::{Archive, ArchiveEntry, BlockDecoder, Password};

use super::extract::{corrupt, read_link_text, Extractor, MAX_LINK_TEXT};
use super::path::EntryPath;
use super::zipfile::{unix_kind, UnixKind};
use super::UnpackError;

pub(super) const MAGIC: [u8; 6] = [b'7', b'z', 0xbc, 0xaf, 0x27, 0x1c];

const SIGNATURE_HEADER: u64 = 32;
const ATTRIBUTE_DIRECTORY: u32 = 0x10;
/// p7zip and 7-Zip on unix keep the unix mode in the upper 16 bits.
const ATTRIBUTE_UNIX_EXTENSION: u32 = 0x8000;

pub(super) fn unpack(
    archive: &Path,
    mut file: File,
    out: &mut Extractor<'_>,
) -> Result<(), UnpackError> {
    check_signature_header(archive, &mut file)?;
    let password = Password::empty();
    let mut reader = BufReader::new(file);
    let parsed = Archive::read(&mut reader, &password).map_err(library_error)?;
    out.check_entry_count(parsed.files.len() as u64)?;

    let mut failure: Option<UnpackError> = None;
    {
        let mut each =
            |entry: &ArchiveEntry, data: &mut dyn Read| -> Result<bool, sevenz_rust2::Error> {
                match extract_entry(out, entry, data) {
                    Ok(()) => Ok(true),
                    Err(err) => {
                        failure = Some(err);
                        Ok(false)
                    }
                }
            };
        for block in 0..parsed.blocks.len() {
            let decoder = BlockDecoder::new(1, block, &parsed, &password, &mut reader);
            match decoder.for_each_entries(&mut each) {
                Ok(true) => {}
                Ok(false) => break,
                Err(err) => {
                    // The entry callback may already have recorded the cause.
                    failure.get_or_insert(library_error(err));
                    break;
                }
            }
        }
    }
    if let Some(err) = failure {
        return Err(err);
    }
    // Entries without data (empty files, directories) live in no block.
    for (index, entry) in parsed.files.iter().enumerate() {
        if parsed
            .stream_map
            .file_block_index
            .get(index)
            .copied()
            .flatten()
            .is_none()
        {
            extract_entry(out, entry, &mut std::io::empty())?;
        }
    }
    Ok(())
}

/// Checks that the header the signature header points to lies inside the
/// file, before the library allocates a buffer of the size it names.
fn check_signature_header(archive: &Path, file: &mut File) -> Result<(), UnpackError> {
    let open_err = |source| UnpackError::Open {
        path: archive.to_path_buf(),
        source,
    };
    let len = file.metadata().map_err(open_err)?.len();
    let mut header = [0u8; SIGNATURE_HEADER as usize];
    file.seek(SeekFrom::Start(0)).map_err(open_err)?;
    if file.read_exact(&mut header).is_err() {
        return Err(UnpackError::Corrupt {
            entry: None,
            message: "7z signature header is truncated".to_string(),
        });
    }
    let u64_at = |at: usize| {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(&header[at..at + 8]);
        u64::from_le_bytes(bytes)
    };
    let (offset, size) = (u64_at(12), u64_at(20));
    let end = SIGNATURE_HEADER
        .checked_add(offset)
        .and_then(|e| e.checked_add(size));
    if end.is_none_or(|end| end > len) {
        return Err(UnpackError::Corrupt {
            entry: None,
            message: "7z header lies beyond the end of the file (truncated?)".to_string(),
        });
    }
    file.seek(SeekFrom::Start(0)).map_err(open_err)?;
    Ok(())
}

fn library_error(err: sevenz_rust2::Error) -> UnpackError {
    use sevenz_rust2::Error as E;
    match err {
        E::UnsupportedCompressionMethod(_)
        | E::Unsupported(_)
        | E::ExternalUnsupported
        | E::PasswordRequired
        | E::MaybeBadPassword(_) => UnpackError::Unsupported {
            entry: None,
            what: err.to_string(),
        },
        other => corrupt(None, &other),
    }
}

fn extract_entry(
    out: &mut Extractor<'_>,
    entry: &ArchiveEntry,
    data: &mut dyn Read,
) -> Result<(), UnpackError> {
    // The "anti" flag (an update archive's deletion marker) is not looked
    // at, as libarchive does not; 7-Zip writes it only for update archives.
    let path = EntryPath::parse(entry.name.as_bytes())?;
    let attributes = entry
        .has_windows_attributes
        .then_some(entry.windows_attributes);
    let unix_mode = attributes
        .filter(|a| a & ATTRIBUTE_UNIX_EXTENSION != 0)
        .map(|a| a >> 16);
    let is_dir = entry.is_directory
        || attributes.is_some_and(|a| a & ATTRIBUTE_DIRECTORY != 0)
        || unix_mode.is_some_and(|m| matches!(unix_kind(m), UnixKind::Directory));
    if is_dir {
        return out.directory(&path);
    }
    let declared = if entry.has_stream { entry.size } else { 0 };
    match unix_mode.map_or(UnixKind::Regular, unix_kind) {
        UnixKind::Regular | UnixKind::Directory => {
            let executable = unix_mode.is_some_and(|m| m & 0o111 != 0);
            out.file(&path, executable, Some(declared), data)
        }
        UnixKind::Symlink => {
            let text = read_link_text(&path.name, data, MAX_LINK_TEXT)?;
            if text.len() as u64 != declared {
                return Err(UnpackError::Corrupt {
                    entry: Some(path.name.clone()),
                    message: "symlink text shorter than announced".to_string(),
                });
            }
            out.symlink(&path, &text)
        }
        UnixKind::Special(kind) => Err(UnpackError::SpecialFile {
            entry: path.name,
            kind,
        }),
        UnixKind::Unknown => Err(UnpackError::Unsupported {
            entry: Some(path.name),
            what: "unknown file type in the unix mode".to_string(),
        }),
    }
}
