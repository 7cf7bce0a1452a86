//! Hostile archives against the real daemon (`jserve serve`, native mode, its
//! own endpoint): uploaded through the CAS on the serve port, then named in
//! ServeArchiveTree. Each must answer UNPACK_ERROR while the daemon stays up
//! and small: archives are unpacked in a child process with a memory bound
//! (src/archive/isolated.rs), since some parsers size allocations from
//! header fields and an allocation failure aborts a process.

mod common;

use common::clients::SourceTree;
use common::endpoints::JserveServe;
use jserve::digest::{HashFunction, ObjectKind};
use jserve::proto::serve_archive_tree_request::{ArchiveType, SymlinksResolve};
use jserve::proto::serve_archive_tree_response::ServeArchiveTreeStatus as S;
use serde_json::json;

/// A 7z whose plain header says NumFiles = 2^33 (sevenz-rust2 0.20 then
/// asks for 800 GB at once).
const SEVENZ_FILE_COUNT: &str =
    "377abcaf271c0004ba48d628000000000000000009000000000000007925734a0105f2000000000000";

/// The daemon's peak resident memory, from /proc.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc status")
}

/// A tar archive holding one regular file.
fn one_file_tar(name: &str, content: &[u8]) -> Vec<u8> {
    let mut tar = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(content.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    tar.append_data(&mut header, name, content).unwrap();
    tar.into_inner().unwrap()
}

/// A valid .tar.xz of one small file whose LZMA2 dictionary byte is then
/// set to 40 (4 GiB), the block header's CRC32 fixed up.
fn xz_with_huge_dictionary() -> Vec<u8> {
    let tar = one_file_tar("hello.txt", b"hello\n");
    let mut xz = Vec::new();
    {
        use std::io::Write;
        let mut w = lzma_rust2::XzWriter::new(&mut xz, lzma_rust2::XzOptions::default()).unwrap();
        w.write_all(&tar).unwrap();
        w.finish().unwrap();
    }
    // Stream header (12 bytes), then the block header: size byte, flags,
    // optional sizes, filter flags (id 0x21 LZMA2, props size 1, props).
    let start = 12;
    let header_len = (usize::from(xz[start]) + 1) * 4;
    let flags = xz[start + 1];
    let mut at = start + 2;
    let skip_varint = |at: &mut usize, xz: &[u8]| {
        while xz[*at] & 0x80 != 0 {
            *at += 1;
        }
        *at += 1;
    };
    if flags & 0x40 != 0 {
        skip_varint(&mut at, &xz);
    }
    if flags & 0x80 != 0 {
        skip_varint(&mut at, &xz);
    }
    assert_eq!(xz[at], 0x21, "first filter is LZMA2");
    assert_eq!(xz[at + 1], 1, "LZMA2 has one property byte");
    xz[at + 2] = 40;
    let crc_at = start + header_len - 4;
    let mut crc = flate2::Crc::new();
    crc.update(&xz[start..crc_at]);
    xz[crc_at..crc_at + 4].copy_from_slice(&crc.sum().to_le_bytes());
    xz
}

async fn upload(port: u16, data: &[u8]) -> String {
    let hf = HashFunction::GitSha1;
    let digest = hf.digest_bytes(ObjectKind::File, data);
    common::reapi::batch_upload(common::channel(port).await, &[(&digest.to_wire(hf), data)]).await;
    digest.hash
}

async fn serve_archive(port: u16, content: &str, kind: ArchiveType) -> (S, String) {
    let r = SourceTree::new(common::channel(port).await)
        .archive_tree(content, kind, ".", SymlinksResolve::None, false)
        .await;
    (S::try_from(r.status).unwrap(), r.tree)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_archives_answer_unpack_error_and_the_daemon_stays_small() {
    let dir = tempfile::tempdir().unwrap();
    let serve = JserveServe::start_in(dir.path(), json!({}), None);
    let port = serve.port;
    let sevenz = hex::decode(SEVENZ_FILE_COUNT).unwrap();
    let cases: [(&str, Vec<u8>, ArchiveType); 2] = [
        ("7z claiming 2^33 files", sevenz, ArchiveType::Zip),
        (
            "tar.xz with a 4 GiB dictionary",
            xz_with_huge_dictionary(),
            ArchiveType::Tar,
        ),
    ];
    // Several at once, as an attacker would send them.
    let mut asks = Vec::new();
    for (name, bytes, kind) in cases {
        let id = upload(port, &bytes).await;
        for _ in 0..4 {
            let id = id.clone();
            asks.push(tokio::spawn(async move {
                (name, serve_archive(port, &id, kind).await)
            }));
        }
    }
    for ask in asks {
        let (name, (status, tree)) = ask.await.unwrap();
        assert_eq!(status, S::UnpackError, "{name}: {tree:?}\n{}", serve.log());
    }
    // Still serving, and a good archive still unpacks.
    let good = one_file_tar("ok.txt", b"ok\n");
    let id = upload(port, &good).await;
    let (status, tree) = serve_archive(port, &id, ArchiveType::Tar).await;
    assert_eq!(status, S::Ok, "{}", serve.log());
    assert_eq!(tree.len(), 40);
    let peak = peak_rss_kib(serve.group.pid());
    assert!(peak < 200 << 10, "the daemon peaked at {peak} KiB");
    assert!(
        serve.log().contains("needed more than 2048 MiB of memory"),
        "{}",
        serve.log()
    );
}

/// gzip members concatenated: one logical stream (as gzip(1) and libarchive
/// read them), so 512 MiB of the same byte cost 512 small members.
fn gzip_members(parts: &[&[u8]], filler: &[u8], repeat: usize) -> Vec<u8> {
    use std::io::Write;
    let gz = |data: &[u8]| {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        enc.write_all(data).unwrap();
        enc.finish().unwrap()
    };
    let filler = gz(filler);
    let mut out = gz(parts[0]);
    for _ in 0..repeat {
        out.extend_from_slice(&filler);
    }
    for part in &parts[1..] {
        out.extend_from_slice(&gz(part));
    }
    out
}

fn tar_header(name: &[u8], kind: tar::EntryType, size: u64) -> Vec<u8> {
    let mut header = tar::Header::new_gnu();
    header.as_gnu_mut().unwrap().name[..name.len()].copy_from_slice(name);
    header.set_entry_type(kind);
    header.set_size(size);
    header.set_mode(0o644);
    header.set_cksum();
    header.as_bytes().to_vec()
}

/// The layouts: a 512 MiB GNU long name, and a 512 MiB pax header
/// (one `comment` record), each in a ~500 KB tar.gz followed by a good file.
fn oversized_extension_headers() -> [(&'static str, Vec<u8>); 2] {
    const MIB: usize = 1 << 20;
    let mut tail = tar_header(b"ok.txt", tar::EntryType::Regular, 3);
    tail.extend_from_slice(b"ok\n");
    tail.resize(1024, 0);
    tail.extend_from_slice(&[0u8; 1024]);
    let long_name = gzip_members(
        &[
            &tar_header(b"././@LongLink", tar::EntryType::GNULongName, 512 << 20),
            &tail,
        ],
        &vec![b'n'; MIB],
        512,
    );
    let prefix = b"536870912 comment=";
    let mut first = tar_header(b"PaxHeaders/x", tar::EntryType::XHeader, 512 << 20);
    first.extend_from_slice(prefix);
    first.extend(std::iter::repeat_n(b'c', MIB - prefix.len()));
    let mut last = vec![b'c'; MIB - 1];
    last.push(b'\n');
    last.extend_from_slice(&tail);
    let pax = gzip_members(&[&first, &last], &vec![b'c'; MIB], 510);
    [
        ("512 MiB GNU long name", long_name),
        ("512 MiB pax header", pax),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_tar_extension_headers_are_refused_before_reading() {
    let dir = tempfile::tempdir().unwrap();
    let serve = JserveServe::start_in(dir.path(), json!({}), None);
    let port = serve.port;
    for (name, bytes) in oversized_extension_headers() {
        assert!(bytes.len() < 1 << 20, "{name}: {} bytes", bytes.len());
        let id = upload(port, &bytes).await;
        let (status, tree) = serve_archive(port, &id, ArchiveType::Tar).await;
        assert_eq!(status, S::UnpackError, "{name}: {tree:?}\n{}", serve.log());
    }
    let log = serve.log();
    for words in [
        "a GNU long name of 536870912 bytes (the limit is 65536)",
        "a pax header of 536870912 bytes (the limit is 1048576)",
    ] {
        assert!(log.contains(words), "{words}:\n{log}");
    }
    // The names are not echoed: the whole log stays small.
    assert!(log.len() < 64 << 10, "{} bytes of log", log.len());
    let peak = peak_rss_kib(serve.group.pid());
    assert!(peak < 200 << 10, "the daemon peaked at {peak} KiB");
}
