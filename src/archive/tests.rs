//! Tests of the unpacker. Archives are built here: tar headers byte by byte
//! (so that hostile ones are possible), compressed with the crates' encoders,
//! zips with the zip crate's writer or byte by byte, 7z with sevenz-rust2's
//! writer; the system `tar`, `zip`, `xz`, ... are used where present.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Cursor, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use tar::EntryType;
use tempfile::TempDir;

use super::extract::Extractor;
use super::path::EntryPath;
use super::*;

// ---------------------------------------------------------------- helpers

/// A tar archive written header by header.
#[derive(Default)]
struct Tar {
    bytes: Vec<u8>,
}

impl Tar {
    fn entry(mut self, name: &[u8], kind: EntryType, mode: u32, link: &[u8], data: &[u8]) -> Self {
        let mut header = tar::Header::new_ustar();
        {
            let old = header.as_old_mut();
            old.name[..name.len()].copy_from_slice(name);
            old.linkname[..link.len()].copy_from_slice(link);
        }
        header.set_mode(mode);
        header.set_size(data.len() as u64);
        header.set_entry_type(kind);
        header.set_mtime(0);
        header.set_cksum();
        self.bytes.extend_from_slice(header.as_bytes());
        self.bytes.extend_from_slice(data);
        let pad = (512 - data.len() % 512) % 512;
        self.bytes.extend(std::iter::repeat_n(0u8, pad));
        self
    }
    fn file(self, name: &str, mode: u32, data: &[u8]) -> Self {
        self.entry(name.as_bytes(), EntryType::Regular, mode, b"", data)
    }
    fn dir(self, name: &str) -> Self {
        self.entry(name.as_bytes(), EntryType::Directory, 0o755, b"", b"")
    }
    fn symlink(self, name: &str, target: &str) -> Self {
        self.entry(
            name.as_bytes(),
            EntryType::Symlink,
            0o777,
            target.as_bytes(),
            b"",
        )
    }
    fn hard_link(self, name: &str, target: &str) -> Self {
        self.entry(
            name.as_bytes(),
            EntryType::Link,
            0o644,
            target.as_bytes(),
            b"",
        )
    }
    fn special(self, name: &str, kind: EntryType) -> Self {
        self.entry(name.as_bytes(), kind, 0o644, b"", b"")
    }
    fn finish(mut self) -> Vec<u8> {
        self.bytes.extend_from_slice(&[0u8; 1024]);
        self.bytes
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Comp {
    None,
    Gzip,
    Bzip2,
    Xz,
    Lzip,
    Lzma,
}

const ALL_COMPRESSIONS: [Comp; 6] = [
    Comp::None,
    Comp::Gzip,
    Comp::Bzip2,
    Comp::Xz,
    Comp::Lzip,
    Comp::Lzma,
];

fn compress(comp: Comp, data: &[u8]) -> Vec<u8> {
    match comp {
        Comp::None => data.to_vec(),
        Comp::Gzip => {
            let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            enc.write_all(data).unwrap();
            enc.finish().unwrap()
        }
        Comp::Bzip2 => {
            let mut enc = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::default());
            enc.write_all(data).unwrap();
            enc.finish().unwrap()
        }
        Comp::Xz => {
            let mut enc =
                lzma_rust2::XzWriter::new(Vec::new(), lzma_rust2::XzOptions::with_preset(6))
                    .unwrap();
            enc.write_all(data).unwrap();
            enc.finish().unwrap()
        }
        Comp::Lzip => {
            let mut enc =
                lzma_rust2::LzipWriter::new(Vec::new(), lzma_rust2::LzipOptions::with_preset(6));
            enc.write_all(data).unwrap();
            enc.finish().unwrap()
        }
        Comp::Lzma => {
            let options = lzma_rust2::LzmaOptions::with_preset(6);
            let mut enc =
                lzma_rust2::LzmaWriter::new_use_header(Vec::new(), &options, None).unwrap();
            enc.write_all(data).unwrap();
            enc.finish().unwrap()
        }
    }
}

/// A scratch area with the archive at `archive`. An unpack writes its pack
/// into `pack_dir`; on success the pack is installed into the repository
/// `repo` and the root tree checked out into `dest`, so tests look at files.
struct Scratch {
    tmp: TempDir,
    archive: PathBuf,
    pack_dir: PathBuf,
    dest: PathBuf,
    root: std::cell::Cell<Option<git2::Oid>>,
}

impl Scratch {
    fn new(bytes: &[u8]) -> Scratch {
        let tmp = tempfile::tempdir().unwrap();
        let archive = tmp.path().join("archive");
        fs::write(&archive, bytes).unwrap();
        let dest = tmp.path().join("dest");
        fs::create_dir(&dest).unwrap();
        let pack_dir = tmp.path().join("pack");
        fs::create_dir(&pack_dir).unwrap();
        Scratch {
            tmp,
            archive,
            pack_dir,
            dest,
            root: Default::default(),
        }
    }

    fn unpack(&self, format: ArchiveFormat) -> Result<UnpackStats, UnpackError> {
        self.unpack_limited(format, &Limits::default())
    }

    fn unpack_limited(
        &self,
        format: ArchiveFormat,
        limits: &Limits,
    ) -> Result<UnpackStats, UnpackError> {
        let done = unpack(&self.archive, format, &self.pack_dir, limits, 1)?;
        let repo = self.repo();
        crate::git::install_packs(&repo, &done.packs).unwrap();
        checkout(&repo, done.root, &self.dest);
        self.root.set(Some(done.root));
        Ok(done.stats)
    }

    fn repo(&self) -> git2::Repository {
        let path = self.tmp.path().join("repo");
        git2::Repository::open_bare(&path)
            .or_else(|_| git2::Repository::init_bare(&path))
            .unwrap()
    }

    /// Everything in the scratch area but the archive, the checkout, the
    /// repository and the pack directory.
    fn outside(&self) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(self.tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| !["archive", "dest", "pack", "repo"].contains(&n.as_str()))
            .collect();
        names.sort();
        names
    }
}

/// Writes the git tree `tree` of `repo` below `dir`: every object is read
/// back, so a damaged pack fails here.
fn checkout(repo: &git2::Repository, tree: git2::Oid, dir: &Path) {
    let tree = repo.find_tree(tree).unwrap();
    for entry in tree.iter() {
        let name = std::ffi::OsStr::from_bytes(entry.name_bytes());
        let path = dir.join(name);
        match entry.filemode() {
            0o040000 => {
                fs::create_dir(&path).unwrap();
                checkout(repo, entry.id(), &path);
            }
            0o120000 => {
                let blob = repo.find_blob(entry.id()).unwrap();
                std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(blob.content()), &path)
                    .unwrap();
            }
            mode => {
                let blob = repo.find_blob(entry.id()).unwrap();
                fs::write(&path, blob.content()).unwrap();
                let perm = if mode == 0o100755 { 0o755 } else { 0o644 };
                fs::set_permissions(&path, fs::Permissions::from_mode(perm)).unwrap();
            }
        }
    }
}

fn unpack_bytes(
    bytes: &[u8],
    format: ArchiveFormat,
) -> (Scratch, Result<UnpackStats, UnpackError>) {
    let scratch = Scratch::new(bytes);
    let result = scratch.unpack(format);
    (scratch, result)
}

/// The tree below `dir`: path -> "dir", "file <content>", "exec <content>",
/// or "link -> <target>".
fn tree(dir: &Path) -> BTreeMap<String, String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let rel = path
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            let meta = fs::symlink_metadata(&path).unwrap();
            let ty = meta.file_type();
            if ty.is_symlink() {
                let target = fs::read_link(&path).unwrap();
                out.insert(rel, format!("link -> {}", target.to_string_lossy()));
            } else if ty.is_dir() {
                out.insert(rel, "dir".to_string());
                walk(root, &path, out);
            } else {
                let content = String::from_utf8_lossy(&fs::read(&path).unwrap()).into_owned();
                let kind = if meta.permissions().mode() & 0o111 != 0 {
                    "exec"
                } else {
                    "file"
                };
                out.insert(rel, format!("{kind} {content}"));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

fn expect(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A named hostile archive and the error it must produce.
type HostileCase = (&'static str, Vec<u8>, fn(&UnpackError) -> bool);

fn have_tool(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(tool).is_file()))
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The sample content most tests use, as a tar.
fn sample_tar() -> Vec<u8> {
    Tar::default()
        .dir("./")
        .dir("./src/")
        .file("./src/main.c", 0o644, b"int main() {}\n")
        .file("./run.sh", 0o755, b"#!/bin/sh\n")
        .file("./group-x", 0o610, b"g")
        .dir("./empty/")
        .file("deep/er/file.txt", 0o444, b"implicit parents")
        .symlink("./src/inside", "main.c")
        .symlink("up", "../../etc/passwd")
        .symlink("abs", "/etc/passwd")
        .hard_link("./copy.c", "./src/main.c")
        .dir("src")
        .finish()
}

fn sample_tree() -> BTreeMap<String, String> {
    expect(&[
        ("src", "dir"),
        ("src/main.c", "file int main() {}\n"),
        ("src/inside", "link -> main.c"),
        ("run.sh", "exec #!/bin/sh\n"),
        ("group-x", "exec g"),
        ("empty", "dir"),
        ("deep", "dir"),
        ("deep/er", "dir"),
        ("deep/er/file.txt", "file implicit parents"),
        ("up", "link -> ../../etc/passwd"),
        ("abs", "link -> /etc/passwd"),
        ("copy.c", "file int main() {}\n"),
    ])
}

// ---------------------------------------------------------------- tar: valid content

#[test]
fn tar_every_compression_unpacks_the_same_tree() {
    let plain = sample_tar();
    for comp in ALL_COMPRESSIONS {
        let (scratch, result) = unpack_bytes(&compress(comp, &plain), ArchiveFormat::Tar);
        let stats = result.unwrap_or_else(|e| panic!("{comp:?}: {e}"));
        assert_eq!(tree(&scratch.dest), sample_tree(), "{comp:?}");
        assert_eq!(stats.entries, 12, "{comp:?}");
        assert_eq!(stats.bytes, 14 + 10 + 1 + 16, "{comp:?}");
    }
}

#[test]
fn tar_hard_link_shares_the_file() {
    let (scratch, result) = unpack_bytes(&sample_tar(), ArchiveFormat::Tar);
    result.unwrap();
    let repo = scratch.repo();
    let root = repo.find_tree(scratch.root.get().unwrap()).unwrap();
    let id = |p: &str| root.get_path(Path::new(p)).unwrap();
    let (a, b) = (id("src/main.c"), id("copy.c"));
    assert_eq!((a.id(), a.filemode()), (b.id(), b.filemode()));
}

#[test]
fn tar_compressed_by_system_tools() {
    let plain = sample_tar();
    let mut tried = 0;
    for (tool, args) in [
        ("gzip", &["-c"][..]),
        ("bzip2", &["-c"][..]),
        ("xz", &["-c"][..]),
        ("xz", &["-c", "--format=lzma"][..]),
        ("lzip", &["-c"][..]),
    ] {
        if !have_tool(tool) {
            eprintln!("skipping {tool}: not installed");
            continue;
        }
        tried += 1;
        let mut child = Command::new(tool)
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let input = plain.clone();
        let writer = std::thread::spawn(move || stdin.write_all(&input).unwrap());
        let out = child.wait_with_output().unwrap();
        writer.join().unwrap();
        assert!(out.status.success(), "{tool} {args:?}");
        let (scratch, result) = unpack_bytes(&out.stdout, ArchiveFormat::Tar);
        result.unwrap_or_else(|e| panic!("{tool} {args:?}: {e}"));
        assert_eq!(tree(&scratch.dest), sample_tree(), "{tool} {args:?}");
    }
    eprintln!("{tried} system compressors tried");
}

#[test]
fn tar_nested_compression_layers() {
    let bytes = compress(Comp::Xz, &compress(Comp::Gzip, &sample_tar()));
    let (scratch, result) = unpack_bytes(&bytes, ArchiveFormat::Tar);
    result.unwrap();
    assert_eq!(tree(&scratch.dest), sample_tree());
}

#[test]
fn tar_multi_member_gzip() {
    // A tar split across two gzip members is one stream (bgzip, cat a.gz b.gz).
    let plain = sample_tar();
    let (a, b) = plain.split_at(700);
    let mut bytes = compress(Comp::Gzip, a);
    bytes.extend(compress(Comp::Gzip, b));
    let (scratch, result) = unpack_bytes(&bytes, ArchiveFormat::Tar);
    result.unwrap();
    assert_eq!(tree(&scratch.dest), sample_tree());
}

#[test]
fn tar_long_names_via_gnu_and_pax_headers() {
    let long_dir = "d".repeat(120);
    let long_file = format!("{long_dir}/{}", "f".repeat(150));
    let long_target = format!("../{}", "t".repeat(200));
    let mut gnu = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(5);
    header.set_mode(0o755);
    gnu.append_data(&mut header, &long_file, &b"hello"[..])
        .unwrap();
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(EntryType::Symlink);
    header.set_size(0);
    gnu.append_link(&mut header, "link", &long_target).unwrap();
    let gnu = gnu.into_inner().unwrap();

    // The same with pax "path" and "linkpath" records.
    let mut pax = tar::Builder::new(Vec::new());
    pax.append_pax_extensions([("path", long_file.as_bytes())])
        .unwrap();
    let mut header = tar::Header::new_ustar();
    header.set_path("short-name").unwrap();
    header.set_size(5);
    header.set_mode(0o755);
    header.set_cksum();
    pax.append(&header, &b"hello"[..]).unwrap();
    pax.append_pax_extensions([("linkpath", long_target.as_bytes())])
        .unwrap();
    let mut header = tar::Header::new_ustar();
    header.set_path("link").unwrap();
    header.set_entry_type(EntryType::Symlink);
    header.set_size(0);
    header.set_cksum();
    pax.append(&header, &[][..]).unwrap();
    let pax = pax.into_inner().unwrap();

    for bytes in [gnu, pax] {
        let (scratch, result) = unpack_bytes(&bytes, ArchiveFormat::Tar);
        result.unwrap();
        assert_eq!(
            tree(&scratch.dest),
            expect(&[
                (long_dir.as_str(), "dir"),
                (long_file.as_str(), "exec hello"),
                ("link", &format!("link -> {long_target}")),
            ])
        );
    }
}

/// A header announcing `size` bytes of the given kind (GNU magic), with none
/// of the data after it: what the guard sees before anything is read.
fn announcing(kind: EntryType, size: u64) -> Vec<u8> {
    let mut header = tar::Header::new_gnu();
    header.as_gnu_mut().unwrap().name[..13].copy_from_slice(b"././@LongLink");
    header.set_entry_type(kind);
    header.set_size(size);
    header.set_mode(0o644);
    header.set_cksum();
    header.as_bytes().to_vec()
}

#[test]
fn tar_oversized_extension_headers_are_refused_before_reading() {
    let cases = [
        (
            EntryType::GNULongName,
            512 << 20,
            "GNU long name of 536870912 bytes",
        ),
        (
            EntryType::GNULongLink,
            64 << 10 | 1,
            "GNU long link of 65537 bytes",
        ),
        (
            EntryType::XHeader,
            512 << 20,
            "pax header of 536870912 bytes",
        ),
        (
            EntryType::XGlobalHeader,
            2 << 20,
            "global pax header of 2097152 bytes",
        ),
    ];
    for (kind, size, words) in cases {
        // Only the header is there: reading the announced data would report
        // a truncated archive instead.
        let (scratch, result) = unpack_bytes(&announcing(kind, size), ArchiveFormat::Tar);
        match result {
            Err(err @ UnpackError::Unsupported { .. }) => {
                assert!(err.to_string().contains(words), "{kind:?}: {err}")
            }
            other => panic!("{kind:?}: {other:?}"),
        }
        assert!(scratch.outside().is_empty());
    }
    // At the limits, names and pax records are fine.
    let name = format!("{}/{}", "d".repeat(200), "f".repeat(200));
    let mut gnu = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(2);
    header.set_mode(0o644);
    gnu.append_data(&mut header, &name, &b"ok"[..]).unwrap();
    let (_scratch, result) = unpack_bytes(&gnu.into_inner().unwrap(), ArchiveFormat::Tar);
    result.unwrap();
}

fn without_end_marker(builder: tar::Builder<Vec<u8>>) -> Vec<u8> {
    let mut bytes = builder.into_inner().unwrap();
    bytes.truncate(bytes.len() - 1024);
    bytes
}

#[test]
fn tar_header_guard_follows_pax_sizes_and_sparse_blocks() {
    // Data that looks like an oversized long-name header, inside a file whose
    // real size comes from a pax record (the ustar field says 0): it is data,
    // not a header, so the archive unpacks.
    let fake = announcing(EntryType::GNULongName, 512 << 20);
    let mut pax = tar::Builder::new(Vec::new());
    pax.append_pax_extensions([("size", fake.len().to_string().as_bytes())])
        .unwrap();
    let mut header = tar::Header::new_ustar();
    header.set_path("looks-like-a-header").unwrap();
    header.set_size(0);
    header.set_mode(0o644);
    header.set_cksum();
    let mut bytes = without_end_marker(pax);
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend_from_slice(&fake);
    let mut bytes = Tar { bytes }.file("after", 0o644, b"x").finish();
    let (scratch, result) = unpack_bytes(&bytes, ArchiveFormat::Tar);
    result.unwrap();
    assert_eq!(
        fs::read(scratch.dest.join("looks-like-a-header")).unwrap(),
        fake
    );

    // The other way round: the ustar field claims data, the pax record says
    // none, so the oversized header right after is a header and is refused.
    let mut pax = tar::Builder::new(Vec::new());
    pax.append_pax_extensions([("size", &b"0"[..])]).unwrap();
    let mut header = tar::Header::new_ustar();
    header.set_path("empty").unwrap();
    header.set_size(1024);
    header.set_mode(0o644);
    header.set_cksum();
    bytes = without_end_marker(pax);
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend_from_slice(&announcing(EntryType::GNULongName, 512 << 20));
    bytes.extend_from_slice(&[0u8; 2048]);
    let (_scratch, result) = unpack_bytes(&bytes, ArchiveFormat::Tar);
    assert!(
        matches!(&result, Err(UnpackError::Unsupported { what, .. }) if what.contains("long name")),
        "{result:?}"
    );

    // A GNU sparse file with an extension block: the guard skips the block
    // and the file's data, and checks the oversized header after them.
    let mut header = tar::Header::new_gnu();
    header.set_path("sparse").unwrap();
    header.set_entry_type(EntryType::GNUSparse);
    header.set_mode(0o644);
    header.set_size(1024);
    {
        let gnu = header.as_gnu_mut().unwrap();
        gnu.sparse[0].offset = *b"00000000000\0";
        gnu.sparse[0].numbytes = *b"00000001000\0";
        gnu.isextended[0] = 1;
        gnu.realsize = *b"00000011000\0";
    }
    header.set_cksum();
    let mut ext = tar::GnuExtSparseHeader::new();
    ext.sparse[0].offset = *b"00000010000\0";
    ext.sparse[0].numbytes = *b"00000001000\0";
    let mut archive = header.as_bytes().to_vec();
    archive.extend_from_slice(ext.as_bytes());
    // The two blocks' data, as many bytes as the header's size.
    archive.extend_from_slice(&[b'a'; 1024]);
    let good = Tar {
        bytes: archive.clone(),
    }
    .finish();
    let (scratch, result) = unpack_bytes(&good, ArchiveFormat::Tar);
    result.unwrap();
    assert_eq!(
        fs::metadata(scratch.dest.join("sparse")).unwrap().len(),
        0o11000
    );
    archive.extend_from_slice(&announcing(EntryType::GNULongName, 512 << 20));
    archive.extend_from_slice(&[0u8; 1024]);
    let (_scratch, result) = unpack_bytes(&archive, ArchiveFormat::Tar);
    assert!(
        matches!(&result, Err(UnpackError::Unsupported { what, .. }) if what.contains("long name")),
        "{result:?}"
    );
}

#[test]
fn tar_old_and_unknown_entry_kinds() {
    let bytes = Tar::default()
        // v7 style: a directory is a "regular" entry ending in a slash.
        .entry(b"olddir/", EntryType::Regular, 0o755, b"", b"")
        // Unknown type letters are regular files, as for libarchive.
        .entry(b"olddir/odd", EntryType::new(b'Z'), 0o644, b"", b"zz")
        .entry(b"cont", EntryType::Continuous, 0o644, b"", b"c")
        // A global pax header is no member.
        .entry(
            b"pax_global_header",
            EntryType::XGlobalHeader,
            0o644,
            b"",
            b"18 comment=hello\n",
        )
        .finish();
    let (scratch, result) = unpack_bytes(&bytes, ArchiveFormat::Tar);
    assert_eq!(result.unwrap().entries, 3);
    assert_eq!(
        tree(&scratch.dest),
        expect(&[
            ("olddir", "dir"),
            ("olddir/odd", "file zz"),
            ("cont", "file c")
        ])
    );
}

#[test]
fn tar_empty_archive() {
    let (scratch, result) = unpack_bytes(&[0u8; 10240], ArchiveFormat::Tar);
    assert_eq!(result.unwrap(), UnpackStats::default());
    assert!(tree(&scratch.dest).is_empty());
}

#[test]
fn tar_without_end_marker_is_accepted_like_libarchive() {
    let mut bytes = Tar::default().file("a", 0o644, b"x").finish();
    bytes.truncate(1024);
    let (scratch, result) = unpack_bytes(&bytes, ArchiveFormat::Tar);
    result.unwrap();
    assert_eq!(tree(&scratch.dest), expect(&[("a", "file x")]));
}

#[test]
fn git_tree_matches_system_tar_and_git() {
    if !have_tool("tar") || !have_tool("git") {
        eprintln!("skipping: needs tar and git");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir_all(src.join("lib/nested")).unwrap();
    fs::write(src.join("README"), "read me\n").unwrap();
    fs::write(src.join("lib/a.c"), "int a;\n").unwrap();
    fs::write(src.join("lib/nested/b.h"), "#pragma once\n").unwrap();
    fs::write(src.join("build.sh"), "#!/bin/sh\necho hi\n").unwrap();
    fs::set_permissions(src.join("build.sh"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::hard_link(src.join("lib/a.c"), src.join("lib/a-link.c")).unwrap();
    std::os::unix::fs::symlink("lib/a.c", src.join("alias")).unwrap();
    std::os::unix::fs::symlink("../outside", src.join("lib/dangling")).unwrap();
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    fs::write(src.join("lib/big.bin"), &big).unwrap();

    // The system git in `dir`, without system or user configuration.
    let git_in = |dir: &Path, args: &[&str]| {
        let out = Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(args)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("HOME", tmp.path())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "git {args:?}: {err}");
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    let mut archives = 0;
    for (flag, name) in [("-cf", "a.tar"), ("-czf", "a.tar.gz"), ("-cJf", "a.tar.xz")] {
        let archive = tmp.path().join(name);
        if flag == "-cJf" && !have_tool("xz") {
            continue;
        }
        run(Command::new("tar")
            .arg("-C")
            .arg(&src)
            .arg(flag)
            .arg(&archive)
            .arg("."));

        // Ours: unpack into a pack (stored, fast and best compression in
        // turn), which git itself must accept.
        let level = [0, 1, 9][archives % 3];
        archives += 1;
        let dest = tmp.path().join(format!("dest-{name}"));
        fs::create_dir(&dest).unwrap();
        let done = unpack(
            &archive,
            ArchiveFormat::Tar,
            &dest,
            &Limits::default(),
            level,
        )
        .unwrap();
        let repo_path = tmp.path().join(format!("repo-{name}"));
        let repo = git2::Repository::init_bare(&repo_path).unwrap();
        crate::git::install_packs(&repo, &done.packs).unwrap();
        let ours = done.root.to_string();
        git_in(&repo_path, &["fsck", "--strict", "--no-dangling"]);

        // Reference: the system tar extracts, git computes the tree.
        let reference = tmp.path().join(format!("ref-{name}"));
        fs::create_dir(&reference).unwrap();
        run(Command::new("tar")
            .arg("-C")
            .arg(&reference)
            .arg("-xf")
            .arg(&archive));
        git_in(&reference, &["init", "-q"]);
        git_in(&reference, &["add", "-A"]);
        let expected = git_in(&reference, &["write-tree"]);
        assert_eq!(ours, expected, "{name}");
    }
}

// ---------------------------------------------------------------- tar: hostile content

#[test]
fn tar_absolute_path_is_rejected() {
    let scratch_root = tempfile::tempdir().unwrap();
    let victim = scratch_root.path().join("victim");
    let bytes = Tar::default()
        .file(victim.to_str().unwrap(), 0o644, b"pwned")
        .finish();
    let (_scratch, result) = unpack_bytes(&bytes, ArchiveFormat::Tar);
    assert!(
        matches!(result, Err(UnpackError::UnsafePath { .. })),
        "{result:?}"
    );
    assert!(!victim.exists());
}

#[test]
fn tar_dotdot_paths_are_rejected() {
    for name in ["../evil", "a/../../evil", "./a/b/../../../evil", ".."] {
        let bytes = Tar::default()
            .dir("a/")
            .file(name, 0o644, b"pwned")
            .finish();
        let (scratch, result) = unpack_bytes(&bytes, ArchiveFormat::Tar);
        let err = result.unwrap_err();
        assert!(
            matches!(err, UnpackError::UnsafePath { .. }),
            "{name}: {err}"
        );
        assert!(err.to_string().contains(name), "{err}");
        assert!(scratch.outside().is_empty(), "{:?}", scratch.outside());
    }
    // The same for a directory and a symlink entry.
    for bytes in [
        Tar::default().dir("../evil/").finish(),
        Tar::default().symlink("../evil", "x").finish(),
    ] {
        let (scratch, result) = unpack_bytes(&bytes, ArchiveFormat::Tar);
        assert!(matches!(result, Err(UnpackError::UnsafePath { .. })));
        assert!(scratch.outside().is_empty());
    }
}

#[test]
fn tar_path_through_an_extracted_symlink_is_rejected() {
    let victim_dir = tempfile::tempdir().unwrap();
    let target = victim_dir.path().to_str().unwrap().to_string();
    let cases = [
        // link to an absolute directory outside, then a file below it
        Tar::default()
            .symlink("link", &target)
            .file("link/passwd", 0o644, b"pwned")
            .finish(),
        // the same with "./" spelling and a directory entry
        Tar::default()
            .symlink("./link", &target)
            .dir("link/sub/")
            .finish(),
        // a relative link leaving the destination
        Tar::default()
            .dir("a/")
            .symlink("a/up", "../..")
            .file("a/up/evil", 0o644, b"pwned")
            .finish(),
        // even a link that stays inside is not followed
        Tar::default()
            .dir("d/")
            .symlink("here", "d")
            .file("here/x", 0o644, b"x")
            .finish(),
        // nor by a symlink or hard link entry below it
        Tar::default()
            .symlink("link", &target)
            .symlink("link/l2", "x")
            .finish(),
        Tar::default()
            .file("f", 0o644, b"x")
            .symlink("link", &target)
            .hard_link("link/f", "f")
            .finish(),
    ];
    for bytes in cases {
        let (scratch, result) = unpack_bytes(&bytes, ArchiveFormat::Tar);
        let err = result.unwrap_err();
        assert!(matches!(err, UnpackError::ThroughSymlink { .. }), "{err}");
        assert!(scratch.outside().is_empty());
        assert_eq!(fs::read_dir(victim_dir.path()).unwrap().count(), 0);
    }
}

#[test]
fn tar_hostile_hard_links_are_rejected() {
    let cases: [(Tar, &str); 7] = [
        (Tar::default(), "/etc/passwd"),
        (Tar::default().dir("a/"), "a/../../etc/passwd"),
        (Tar::default().file("f", 0o644, b"x"), "../f"),
        (Tar::default(), "missing"),
        (Tar::default().dir("d/"), "d"),
        (Tar::default().symlink("s", "/etc/passwd"), "s"),
        (Tar::default(), "."),
    ];
    for (tar, target) in cases {
        let bytes = tar.hard_link("h", target).finish();
        let (scratch, result) = unpack_bytes(&bytes, ArchiveFormat::Tar);
        let err = result.unwrap_err();
        assert!(
            matches!(&err, UnpackError::HardLink { entry, .. } if entry == "h"),
            "{target}: {err}"
        );
        assert!(!scratch.dest.join("h").exists());
    }
    // A hard link to a file extracted later is just as bad.
    let bytes = Tar::default()
        .hard_link("h", "f")
        .file("f", 0o644, b"x")
        .finish();
    let (_scratch, result) = unpack_bytes(&bytes, ArchiveFormat::Tar);
    assert!(matches!(result, Err(UnpackError::HardLink { .. })));
}

#[test]
fn tar_special_files_are_rejected() {
    for (kind, word) in [
        (EntryType::Char, "character device"),
        (EntryType::Block, "block device"),
        (EntryType::Fifo, "FIFO"),
    ] {
        let bytes = Tar::default().special("dev/null", kind).finish();
        let (scratch, result) = unpack_bytes(&bytes, ArchiveFormat::Tar);
        let err = result.unwrap_err();
        assert!(
            matches!(&err, UnpackError::SpecialFile { entry, .. } if entry == "dev/null"),
            "{err}"
        );
        assert!(err.to_string().contains(word), "{err}");
        assert!(!scratch.dest.join("dev/null").exists());
    }
}

#[test]
fn tar_duplicates() {
    let dup = |tar: Tar| {
        let (_scratch, result) = unpack_bytes(&tar.finish(), ArchiveFormat::Tar);
        result
    };
    for (case, tar) in [
        (
            "file twice",
            Tar::default().file("a", 0o644, b"1").file("a", 0o644, b"2"),
        ),
        (
            "file, ./file",
            Tar::default()
                .file("a", 0o644, b"1")
                .file("./a", 0o644, b"2"),
        ),
        (
            "symlink twice",
            Tar::default().symlink("l", "x").symlink("l", "y"),
        ),
        (
            "file then symlink",
            Tar::default().file("a", 0o644, b"1").symlink("a", "y"),
        ),
        (
            "file then dir",
            Tar::default().file("a", 0o644, b"1").dir("a/"),
        ),
        (
            "dir then file",
            Tar::default().dir("a/").file("a", 0o644, b"1"),
        ),
        (
            "implicit dir then file",
            Tar::default()
                .file("a/b", 0o644, b"1")
                .file("a", 0o644, b"1"),
        ),
        (
            "file then hard link",
            Tar::default()
                .file("a", 0o644, b"1")
                .file("b", 0o644, b"2")
                .hard_link("a", "b"),
        ),
    ] {
        let result = dup(tar);
        assert!(
            matches!(result, Err(UnpackError::Duplicate { .. })),
            "{case}: {result:?}"
        );
    }
    // Repeated directories are fine, also when implied first.
    let result = dup(Tar::default()
        .dir("a/")
        .dir("./a")
        .file("b/c", 0o644, b"1")
        .dir("b/"));
    assert_eq!(result.unwrap().entries, 4);
}

#[test]
fn tar_path_below_a_file_is_rejected() {
    let bytes = Tar::default()
        .file("a", 0o644, b"1")
        .file("a/b", 0o644, b"2")
        .finish();
    let (_scratch, result) = unpack_bytes(&bytes, ArchiveFormat::Tar);
    assert!(
        matches!(result, Err(UnpackError::NotADirectory { .. })),
        "{result:?}"
    );
}

#[test]
fn tar_root_as_a_file_is_rejected() {
    let bytes = Tar::default().file("./", 0o644, b"").finish();
    let (_s, result) = unpack_bytes(&bytes, ArchiveFormat::Tar);
    // "./" as a regular entry is an old-style directory: fine.
    result.unwrap();
    let bytes = Tar::default().file(".", 0o644, b"x").finish();
    let (_s, result) = unpack_bytes(&bytes, ArchiveFormat::Tar);
    assert!(matches!(result, Err(UnpackError::UnsafePath { .. })));
}

// ---------------------------------------------------------------- tar: broken input

#[test]
fn tar_truncated_or_corrupt_is_an_error() {
    let big: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 256) as u8).collect();
    let plain = Tar::default()
        .file("a", 0o644, b"hello")
        .file("big", 0o644, &big)
        .finish();
    for comp in ALL_COMPRESSIONS {
        let full = compress(comp, &plain);
        // cut in the middle, and just before the end
        for cut in [full.len() / 2, full.len() - 4] {
            if comp == Comp::None && cut == full.len() - 4 {
                continue; // plain tar: the cut falls into the end marker
            }
            let (_s, result) = unpack_bytes(&full[..cut], ArchiveFormat::Tar);
            assert!(
                matches!(result, Err(UnpackError::Corrupt { .. })),
                "{comp:?} cut at {cut}/{}: {result:?}",
                full.len()
            );
        }
        // flip bytes in the middle
        let mut damaged = full.clone();
        let mid = damaged.len() / 2;
        for b in &mut damaged[mid..mid + 16] {
            *b ^= 0x55;
        }
        let (_s, result) = unpack_bytes(&damaged, ArchiveFormat::Tar);
        if comp != Comp::None {
            assert!(
                matches!(result, Err(UnpackError::Corrupt { .. })),
                "{comp:?} damaged: {result:?}"
            );
        }
    }
    // A damaged header checksum after the first entry.
    let mut bytes = plain.clone();
    bytes[1024 + 10] ^= 1;
    let (_s, result) = unpack_bytes(&bytes, ArchiveFormat::Tar);
    let err = result.unwrap_err();
    assert!(matches!(err, UnpackError::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains("after entry \"a\""), "{err}");
}

#[test]
fn tar_unknown_formats() {
    let text = "This is just a text file, not a tar archive at all.\n".repeat(40);
    let zip = {
        let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
        w.start_file("a", zip::write::SimpleFileOptions::default())
            .unwrap();
        w.write_all(b"x").unwrap();
        w.finish().unwrap().into_inner()
    };
    for (case, bytes) in [
        ("text", text.into_bytes()),
        ("short text", b"hello\n".to_vec()),
        ("empty", Vec::new()),
        ("zip", zip),
        ("gzip of text", compress(Comp::Gzip, &[b'x'; 2000])),
    ] {
        let (scratch, result) = unpack_bytes(&bytes, ArchiveFormat::Tar);
        assert!(
            matches!(result, Err(UnpackError::UnknownFormat { .. })),
            "{case}: {result:?}"
        );
        assert!(tree(&scratch.dest).is_empty());
    }
}

// ---------------------------------------------------------------- limits

#[test]
fn byte_limit_stops_large_archives() {
    let limits = Limits {
        max_total_bytes: 1000,
        max_entries: 100,
    };
    let bytes = Tar::default()
        .file("a", 0o644, &[1u8; 600])
        .file("b", 0o644, &[2u8; 600])
        .finish();
    let scratch = Scratch::new(&bytes);
    let err = scratch
        .unpack_limited(ArchiveFormat::Tar, &limits)
        .unwrap_err();
    assert!(
        matches!(&err, UnpackError::TooLarge { entry, limit: 1000 } if entry == "b"),
        "{err}"
    );
    assert!(!scratch.dest.join("b").exists());
}

#[test]
fn decompression_bomb_stops_early() {
    // 16 MiB of zeros compress to a few KiB; the limit is 1 MiB.
    let zeros = vec![0u8; 16 << 20];
    let plain = Tar::default().file("bomb", 0o644, &zeros).finish();
    let bytes = compress(Comp::Gzip, &plain);
    assert!(bytes.len() < 1 << 20);
    let limits = Limits {
        max_total_bytes: 1 << 20,
        max_entries: 10,
    };
    let scratch = Scratch::new(&bytes);
    let err = scratch
        .unpack_limited(ArchiveFormat::Tar, &limits)
        .unwrap_err();
    assert!(matches!(err, UnpackError::TooLarge { .. }), "{err}");
    // Stopped before writing: the size is announced in the header.
    assert!(!scratch.dest.join("bomb").exists());
}

#[test]
fn byte_limit_counts_while_writing() {
    // Data without an announced size is counted as it is written.
    let tmp = tempfile::tempdir().unwrap();
    let limits = Limits {
        max_total_bytes: 100_000,
        max_entries: 10,
    };
    let err = std::thread::scope(|scope| {
        let writer = crate::git::PackWriter::create(&tmp.path().join("p.pack"), 1).unwrap();
        let packer = packer::Packer::spawn(scope, vec![writer]);
        let mut out = Extractor::new(tmp.path(), &limits, packer);
        let path = EntryPath::parse(b"endless").unwrap();
        let mut endless = std::io::repeat(7);
        out.file(&path, false, None, &mut endless).unwrap_err()
    });
    assert!(matches!(err, UnpackError::TooLarge { .. }), "{err}");
    // The spool is gone, and the pack never got the content.
    let names: Vec<_> = fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("p.pack")]);
    let written = fs::metadata(tmp.path().join("p.pack")).unwrap().len();
    assert!(written < 1000, "{written}");
}

#[test]
fn trailing_data_counts_against_the_limit() {
    let mut plain = Tar::default().file("a", 0o644, b"x").finish();
    plain.extend(vec![0u8; 100_000]);
    let bytes = compress(Comp::Gzip, &plain);
    let limits = Limits {
        max_total_bytes: 50_000,
        max_entries: 10,
    };
    let scratch = Scratch::new(&bytes);
    let err = scratch
        .unpack_limited(ArchiveFormat::Tar, &limits)
        .unwrap_err();
    assert!(matches!(err, UnpackError::TooLarge { .. }), "{err}");
    // With room for it, the padding is fine.
    let scratch = Scratch::new(&bytes);
    scratch.unpack(ArchiveFormat::Tar).unwrap();
}

#[test]
fn entry_limit() {
    let limits = Limits {
        max_total_bytes: 1 << 20,
        max_entries: 5,
    };
    let mut tar = Tar::default();
    for i in 0..6 {
        tar = tar.file(&format!("f{i}"), 0o644, b"x");
    }
    let scratch = Scratch::new(&tar.finish());
    let err = scratch
        .unpack_limited(ArchiveFormat::Tar, &limits)
        .unwrap_err();
    assert!(
        matches!(err, UnpackError::TooManyEntries { limit: 5 }),
        "{err}"
    );

    let mut zip = zip::ZipWriter::new(Cursor::new(Vec::new()));
    for i in 0..6 {
        zip.start_file(format!("f{i}"), zip::write::SimpleFileOptions::default())
            .unwrap();
    }
    let scratch = Scratch::new(&zip.finish().unwrap().into_inner());
    let err = scratch
        .unpack_limited(ArchiveFormat::Zip, &limits)
        .unwrap_err();
    assert!(
        matches!(err, UnpackError::TooManyEntries { limit: 5 }),
        "{err}"
    );
    // Nothing extracted: the count is known up front.
    assert!(tree(&scratch.dest).is_empty());
}

#[test]
fn destination_must_be_a_directory() {
    let scratch = Scratch::new(&sample_tar());
    let err = unpack(
        &scratch.archive,
        ArchiveFormat::Tar,
        &scratch.archive,
        &Limits::default(),
        1,
    )
    .unwrap_err();
    assert!(matches!(err, UnpackError::Destination { .. }), "{err}");
    let err = unpack(
        &scratch.tmp.path().join("nope"),
        ArchiveFormat::Tar,
        &scratch.pack_dir,
        &Limits::default(),
        1,
    )
    .unwrap_err();
    assert!(matches!(err, UnpackError::Open { .. }), "{err}");
}

// ---------------------------------------------------------------- zip

fn zip_options(mode: u32) -> zip::write::SimpleFileOptions {
    zip::write::SimpleFileOptions::default().unix_permissions(mode)
}

fn sample_zip() -> Vec<u8> {
    let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
    w.add_directory("src/", zip_options(0o755)).unwrap();
    w.start_file("src/main.c", zip_options(0o644)).unwrap();
    w.write_all(b"int main() {}\n").unwrap();
    w.start_file("run.sh", zip_options(0o755)).unwrap();
    w.write_all(b"#!/bin/sh\n").unwrap();
    w.start_file("group-x", zip_options(0o610)).unwrap();
    w.write_all(b"g").unwrap();
    w.add_directory("empty/", zip_options(0o755)).unwrap();
    w.start_file(
        "deep/er/file.txt",
        zip_options(0o444).compression_method(zip::CompressionMethod::Bzip2),
    )
    .unwrap();
    w.write_all(b"implicit parents").unwrap();
    w.add_symlink("src/inside", "main.c", zip_options(0o777))
        .unwrap();
    w.add_symlink("up", "../../etc/passwd", zip_options(0o777))
        .unwrap();
    w.add_symlink("abs", "/etc/passwd", zip_options(0o777))
        .unwrap();
    w.start_file("copy.c", zip_options(0o644)).unwrap();
    w.write_all(b"int main() {}\n").unwrap();
    w.finish().unwrap().into_inner()
}

#[test]
fn zip_unpacks() {
    let (scratch, result) = unpack_bytes(&sample_zip(), ArchiveFormat::Zip);
    let stats = result.unwrap();
    assert_eq!(tree(&scratch.dest), sample_tree());
    assert_eq!(stats.entries, 10);
}

#[test]
fn zip_made_by_the_system_zip_tool() {
    if !have_tool("zip") {
        eprintln!("skipping: zip not installed");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir_all(src.join("empty")).unwrap();
    fs::create_dir_all(src.join("lib")).unwrap();
    fs::write(src.join("lib/a.c"), "int a;\n").unwrap();
    fs::write(src.join("run.sh"), "#!/bin/sh\n").unwrap();
    fs::set_permissions(src.join("run.sh"), fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::symlink("lib/a.c", src.join("alias")).unwrap();
    let archive = tmp.path().join("a.zip");
    run(Command::new("zip")
        .current_dir(&src)
        .args(["-q", "-r", "-y"])
        .arg(&archive)
        .arg("."));
    let scratch = Scratch::new(&fs::read(&archive).unwrap());
    scratch.unpack(ArchiveFormat::Zip).unwrap();
    assert_eq!(tree(&scratch.dest), tree(&src));
}

/// A zip written byte by byte: (name, host system, external attributes, data), stored.
fn raw_zip(entries: &[(&[u8], u8, u32, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut central = Vec::new();
    for (name, host, external, data) in entries {
        let mut crc = flate2::Crc::new();
        crc.update(data);
        let offset = out.len() as u32;
        let name_len = name.len() as u16;
        let size = data.len() as u32;
        // local file header
        out.extend_from_slice(b"PK\x03\x04");
        out.extend_from_slice(&10u16.to_le_bytes()); // version needed
        out.extend_from_slice(&0u16.to_le_bytes()); // flags
        out.extend_from_slice(&0u16.to_le_bytes()); // stored
        out.extend_from_slice(&0u32.to_le_bytes()); // time, date
        out.extend_from_slice(&crc.sum().to_le_bytes());
        out.extend_from_slice(&size.to_le_bytes());
        out.extend_from_slice(&size.to_le_bytes());
        out.extend_from_slice(&name_len.to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes());
        out.extend_from_slice(name);
        out.extend_from_slice(data);
        // central directory record
        central.extend_from_slice(b"PK\x01\x02");
        central.extend_from_slice(&[20, *host]); // version made by
        central.extend_from_slice(&10u16.to_le_bytes());
        central.extend_from_slice(&0u16.to_le_bytes());
        central.extend_from_slice(&0u16.to_le_bytes());
        central.extend_from_slice(&0u32.to_le_bytes());
        central.extend_from_slice(&crc.sum().to_le_bytes());
        central.extend_from_slice(&size.to_le_bytes());
        central.extend_from_slice(&size.to_le_bytes());
        central.extend_from_slice(&name_len.to_le_bytes());
        central.extend_from_slice(&[0; 8]); // extra, comment, disk, internal attributes
        central.extend_from_slice(&external.to_le_bytes());
        central.extend_from_slice(&offset.to_le_bytes());
        central.extend_from_slice(name);
    }
    let cd_offset = out.len() as u32;
    out.extend_from_slice(&central);
    out.extend_from_slice(b"PK\x05\x06");
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&(entries.len() as u16).to_le_bytes());
    out.extend_from_slice(&(entries.len() as u16).to_le_bytes());
    out.extend_from_slice(&(central.len() as u32).to_le_bytes());
    out.extend_from_slice(&cd_offset.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out
}

const UNIX: u8 = 3;
const DOS: u8 = 0;

fn unix(mode: u32) -> u32 {
    mode << 16
}

#[test]
fn zip_attributes_by_host_system() {
    let bytes = raw_zip(&[
        (b"unix-exec", UNIX, unix(0o100755), b"1"),
        (b"unix-plain", UNIX, unix(0o100644), b"2"),
        (b"unix-nomode", UNIX, 0, b"3"),
        // DOS hosts: no exec bit, even if the upper bits look like one.
        (b"dos-file", DOS, unix(0o100755) | 0x20, b"4"),
        (b"dos-dir", DOS, 0x10, b""),
        (b"dos-link-looking", DOS, unix(0o120777), b"target"),
        (b"trailing/", UNIX, unix(0o100644), b""),
    ]);
    let (scratch, result) = unpack_bytes(&bytes, ArchiveFormat::Zip);
    result.unwrap();
    assert_eq!(
        tree(&scratch.dest),
        expect(&[
            ("unix-exec", "exec 1"),
            ("unix-plain", "file 2"),
            ("unix-nomode", "file 3"),
            ("dos-file", "file 4"),
            ("dos-dir", "dir"),
            ("dos-link-looking", "file target"),
            ("trailing", "dir"),
        ])
    );
}

#[test]
fn zip_hostile_entries() {
    let victim_dir = tempfile::tempdir().unwrap();
    let outside = victim_dir.path().to_str().unwrap().to_string();
    let evil_abs = format!("{outside}/evil");
    let cases: Vec<HostileCase> = vec![
        (
            "absolute",
            raw_zip(&[(evil_abs.as_bytes(), UNIX, unix(0o100644), b"x")]),
            |e| matches!(e, UnpackError::UnsafePath { .. }),
        ),
        (
            "dotdot",
            raw_zip(&[(b"a/../../evil", UNIX, unix(0o100644), b"x")]),
            |e| matches!(e, UnpackError::UnsafePath { .. }),
        ),
        (
            "through symlink",
            raw_zip(&[
                (b"link", UNIX, unix(0o120777), outside.as_bytes()),
                (b"link/evil", UNIX, unix(0o100644), b"x"),
            ]),
            |e| matches!(e, UnpackError::ThroughSymlink { .. }),
        ),
        (
            "duplicate file",
            raw_zip(&[
                (b"a", UNIX, unix(0o100644), b"1"),
                (b"a", UNIX, unix(0o100644), b"2"),
            ]),
            |e| matches!(e, UnpackError::Duplicate { .. }),
        ),
        (
            "file and ./file",
            raw_zip(&[
                (b"a", UNIX, unix(0o100644), b"1"),
                (b"./a", UNIX, unix(0o100644), b"2"),
            ]),
            |e| matches!(e, UnpackError::Duplicate { .. }),
        ),
        (
            "fifo",
            raw_zip(&[(b"fifo", UNIX, unix(0o010644), b"")]),
            |e| matches!(e, UnpackError::SpecialFile { kind: "FIFO", .. }),
        ),
        (
            "socket",
            raw_zip(&[(b"sock", UNIX, unix(0o140644), b"")]),
            |e| matches!(e, UnpackError::SpecialFile { kind: "socket", .. }),
        ),
        (
            "char device",
            raw_zip(&[(b"tty", UNIX, unix(0o020644), b"")]),
            |e| matches!(e, UnpackError::SpecialFile { .. }),
        ),
    ];
    for (case, bytes, check) in cases {
        let (scratch, result) = unpack_bytes(&bytes, ArchiveFormat::Zip);
        let err = result.unwrap_err();
        assert!(check(&err), "{case}: {err}");
        assert!(scratch.outside().is_empty());
        assert_eq!(fs::read_dir(victim_dir.path()).unwrap().count(), 0);
    }
    // Repeated directories are fine.
    let bytes = raw_zip(&[
        (b"d/", UNIX, unix(0o040755), b""),
        (b"d/", UNIX, unix(0o040755), b""),
        (b"d/f", UNIX, unix(0o100644), b"x"),
    ]);
    let (scratch, result) = unpack_bytes(&bytes, ArchiveFormat::Zip);
    result.unwrap();
    assert_eq!(
        tree(&scratch.dest),
        expect(&[("d", "dir"), ("d/f", "file x")])
    );
}

#[test]
fn zip_broken_input() {
    let good = sample_zip();
    // truncated: the central directory is gone
    let (_s, result) = unpack_bytes(&good[..good.len() / 2], ArchiveFormat::Zip);
    assert!(
        matches!(result, Err(UnpackError::Corrupt { .. })),
        "{result:?}"
    );
    // damaged data: the CRC does not match
    let bytes = raw_zip(&[(b"f", UNIX, unix(0o100644), b"hello world")]);
    let mut damaged = bytes.clone();
    let at = 30 + 1 + 3; // in "hello world"
    damaged[at] ^= 0x20;
    let (_s, result) = unpack_bytes(&damaged, ArchiveFormat::Zip);
    assert!(
        matches!(&result, Err(UnpackError::Corrupt { entry: Some(e), .. }) if e == "f"),
        "{result:?}"
    );
    // not a zip at all
    for (case, bytes) in [
        ("tar", sample_tar()),
        ("text", b"just some text\n".repeat(100)),
        ("empty", Vec::new()),
    ] {
        let (_s, result) = unpack_bytes(&bytes, ArchiveFormat::Zip);
        assert!(
            matches!(result, Err(UnpackError::UnknownFormat { .. })),
            "{case}: {result:?}"
        );
    }
}

// ---------------------------------------------------------------- 7z

fn sevenz_entry(name: &str, mode: Option<u32>) -> sevenz_rust2::ArchiveEntry {
    let mut entry = sevenz_rust2::ArchiveEntry::new_file(name);
    if let Some(mode) = mode {
        entry.has_windows_attributes = true;
        entry.windows_attributes = 0x8000 | (mode << 16);
    }
    entry
}

fn sevenz(entries: Vec<(sevenz_rust2::ArchiveEntry, Option<&[u8]>)>) -> Vec<u8> {
    let mut w = sevenz_rust2::ArchiveWriter::new(Cursor::new(Vec::new())).unwrap();
    for (entry, data) in entries {
        w.push_archive_entry(entry, data).unwrap();
    }
    w.finish().unwrap().into_inner()
}

fn sample_7z() -> Vec<u8> {
    sevenz(vec![
        (sevenz_rust2::ArchiveEntry::new_directory("src"), None),
        (
            sevenz_entry("src/main.c", Some(0o100644)),
            Some(b"int main() {}\n"),
        ),
        (sevenz_entry("run.sh", Some(0o100755)), Some(b"#!/bin/sh\n")),
        (sevenz_entry("group-x", Some(0o100610)), Some(b"g")),
        (sevenz_rust2::ArchiveEntry::new_directory("empty"), None),
        // no unix attributes at all: a plain file
        (
            sevenz_entry("deep/er/file.txt", None),
            Some(b"implicit parents"),
        ),
        (sevenz_entry("src/inside", Some(0o120777)), Some(b"main.c")),
        (
            sevenz_entry("up", Some(0o120777)),
            Some(b"../../etc/passwd"),
        ),
        (sevenz_entry("abs", Some(0o120777)), Some(b"/etc/passwd")),
        (
            sevenz_entry("copy.c", Some(0o100644)),
            Some(b"int main() {}\n"),
        ),
        (sevenz_entry("empty-file", Some(0o100644)), Some(b"")),
    ])
}

#[test]
fn sevenz_unpacks() {
    let (scratch, result) = unpack_bytes(&sample_7z(), ArchiveFormat::Zip);
    let stats = result.unwrap();
    let mut expected = sample_tree();
    expected.insert("empty-file".to_string(), "file ".to_string());
    assert_eq!(tree(&scratch.dest), expected);
    assert_eq!(stats.entries, 11);
}

#[test]
fn sevenz_hostile_and_broken() {
    let cases: Vec<HostileCase> = vec![
        (
            "dotdot",
            sevenz(vec![(sevenz_entry("../evil", Some(0o100644)), Some(b"x"))]),
            |e| matches!(e, UnpackError::UnsafePath { .. }),
        ),
        (
            "socket",
            sevenz(vec![(sevenz_entry("sock", Some(0o140755)), Some(b""))]),
            |e| matches!(e, UnpackError::SpecialFile { kind: "socket", .. }),
        ),
        (
            "through symlink",
            sevenz(vec![
                (sevenz_entry("link", Some(0o120777)), Some(b"/tmp")),
                (sevenz_entry("link/evil", Some(0o100644)), Some(b"x")),
            ]),
            |e| matches!(e, UnpackError::ThroughSymlink { .. }),
        ),
    ];
    for (case, bytes, check) in cases {
        let (scratch, result) = unpack_bytes(&bytes, ArchiveFormat::Zip);
        let err = result.unwrap_err();
        assert!(check(&err), "{case}: {err}");
        assert!(scratch.outside().is_empty());
    }

    let good = sample_7z();
    for cut in [10, 40, good.len() / 2, good.len() - 3] {
        let (_s, result) = unpack_bytes(&good[..cut], ArchiveFormat::Zip);
        assert!(
            matches!(result, Err(UnpackError::Corrupt { .. })),
            "cut at {cut}: {result:?}"
        );
    }
    // damaged packed data (after the 32-byte signature header)
    let mut damaged = good.clone();
    for b in &mut damaged[40..48] {
        *b ^= 0xff;
    }
    let (_s, result) = unpack_bytes(&damaged, ArchiveFormat::Zip);
    assert!(
        matches!(result, Err(UnpackError::Corrupt { .. })),
        "{result:?}"
    );
    // a huge header size in the signature header is refused before allocating
    let mut huge = good.clone();
    huge[20..28].copy_from_slice(&(1u64 << 60).to_le_bytes());
    let (_s, result) = unpack_bytes(&huge, ArchiveFormat::Zip);
    assert!(
        matches!(result, Err(UnpackError::Corrupt { .. })),
        "{result:?}"
    );
}

// ---------------------------------------------------------------- detection details

#[test]
fn plain_tar_whose_first_name_looks_like_a_magic_number() {
    for name in ["LZIP-notes", "BZh91AY&SY", "\u{1f}\u{8b}\u{8}x"] {
        let bytes = Tar::default().file(name, 0o644, b"x").finish();
        let (scratch, result) = unpack_bytes(&bytes, ArchiveFormat::Tar);
        result.unwrap_or_else(|e| panic!("{name:?}: {e}"));
        assert!(scratch.dest.join(name).is_file());
    }
}

#[test]
fn error_messages_name_the_entry() {
    let bytes = Tar::default()
        .symlink("lnk", "/etc")
        .file("lnk/passwd", 0o644, b"x")
        .finish();
    let (_s, result) = unpack_bytes(&bytes, ArchiveFormat::Tar);
    let message = result.unwrap_err().to_string();
    assert!(message.contains("\"lnk/passwd\""), "{message}");
    assert!(message.contains("\"lnk\""), "{message}");
}

#[test]
fn encrypted_zip_entries_are_unsupported() {
    let data = b"0123456789abcdef";
    let mut bytes = raw_zip(&[(b"secret", UNIX, unix(0o100644), data)]);
    let central = 30 + 6 + data.len();
    bytes[6] |= 1; // "encrypted" in the local header
    bytes[central + 8] |= 1; // and in the central directory
    let (scratch, result) = unpack_bytes(&bytes, ArchiveFormat::Zip);
    assert!(
        matches!(&result, Err(UnpackError::Unsupported { entry: Some(e), .. }) if e == "secret"),
        "{result:?}"
    );
    assert!(tree(&scratch.dest).is_empty());
}

#[test]
fn all_formats_import_to_the_same_git_tree() {
    // jserve's import records a file as executable by its owner x bit; the
    // unpacker turns any x bit into 0755, so "group-x" (0610) is executable
    // in every format, as it is for justbuild.
    let import = |bytes: &[u8], format| {
        let (scratch, result) = unpack_bytes(bytes, format);
        result.unwrap();
        let _ = fs::remove_file(scratch.dest.join("empty-file"));
        let repo = git2::Repository::init_bare(scratch.tmp.path().join("repo")).unwrap();
        crate::git::import_directory(&repo, &scratch.dest)
            .unwrap()
            .to_string()
    };
    let tar = import(&sample_tar(), ArchiveFormat::Tar);
    let tar_gz = import(&compress(Comp::Gzip, &sample_tar()), ArchiveFormat::Tar);
    let zip = import(&sample_zip(), ArchiveFormat::Zip);
    let sevenz = import(&sample_7z(), ArchiveFormat::Zip);
    assert_eq!(tar, tar_gz);
    assert_eq!(tar, zip);
    assert_eq!(tar, sevenz);
}
