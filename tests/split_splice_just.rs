//! Blob splitting with both justbuild client generations against `jserve
//! execute`, in native and compatible mode: 1.5.x speaks justbuild's
//! pre-standard Split/Splice messages and probes support with trial
//! requests, 1.6.x the upstream ones and goes by Capabilities.
//!
//! * `just add-to-cas` uploads a large blob; a second client with an empty
//!   local build root fetches it with `just install-cas --remember`, which
//!   splits at jserve and splices in its own CAS. (No client splits uploads
//!   from its local CAS, so add-to-cas is a plain upload in both versions.)
//! * `just install` with a dispatch endpoint syncs an action's inputs from
//!   one jserve to another, splitting at the first and splicing at the second
//!   (what the reference's own split-splice end-to-end test does).
//!
//! Whether splitting happened is read off the daemons' debug log. Without a
//! client the test says so and passes, except under CI (CI set).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::endpoints::Execute;
use common::reference::{reference_just, reference_just_16};
use jserve::digest::{HashFunction, ObjectKind};

/// A `jserve execute` subprocess logging at debug level to a file of its own.
struct Daemon {
    execute: Execute,
    log: PathBuf,
}

impl Daemon {
    fn start(dir: &Path, compatible: bool) -> Daemon {
        let log = dir.join("jserve.log");
        let args = [
            "--log-file",
            log.to_str().unwrap(),
            "--log-limit",
            "5",
            "-J",
            "2",
        ];
        let jserve = Path::new(env!("CARGO_BIN_EXE_jserve"));
        let execute = Execute::start_with(jserve, dir, compatible, &args);
        Daemon { execute, log }
    }

    fn address(&self) -> String {
        self.execute.address()
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Chunk counts of the log lines `<what> blob <hash> <word> <n> chunks`.
    fn chunk_counts(&self, what: &str, hash: &str) -> Vec<usize> {
        let marker = format!("{what} blob {hash} ");
        self.log_text()
            .lines()
            .filter_map(|line| {
                let rest = &line[line.find(&marker)? + marker.len()..];
                rest.split_whitespace().nth(1)?.parse().ok()
            })
            .collect()
    }

    /// The field 3 values logged with the splits of `hash`.
    fn split_field3(&self, hash: &str) -> Vec<i32> {
        let marker = format!("split blob {hash} ");
        self.log_text()
            .lines()
            .filter(|line| line.contains(&marker))
            .filter_map(|line| line.split("field3=").nth(1)?.trim().parse().ok())
            .collect()
    }
}

/// Deterministic incompressible bytes (xorshift), so content-defined chunking
/// finds many cut points.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Large enough for ByteStream transfers and dozens of chunks.
const BIG: usize = 6 << 20;

/// Runs `just SUBCOMMAND ARGS` with a plain log; returns (stdout, stderr).
fn just(bin: &Path, compatible: bool, args: &[&str]) -> (String, String) {
    let mut cmd = Command::new(bin);
    cmd.args(args).arg("--plain-log");
    if compatible {
        cmd.arg("--compatible");
    }
    let out = cmd.output().expect("just runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "{} {args:?} failed:\n{stderr}",
        bin.display()
    );
    (stdout, stderr)
}

/// The reference clients present, by label. Each missing one is reported
/// (or, under CI, fails) by its finder.
fn clients() -> Vec<(&'static str, PathBuf)> {
    let mut found = Vec::new();
    if let Some(bin) = reference_just() {
        found.push(("1.5", bin));
    }
    if let Some(bin) = reference_just_16() {
        found.push(("1.6", bin));
    }
    found
}

const MODES: [(HashFunction, bool, &str); 2] = [
    (HashFunction::GitSha1, false, "native"),
    (HashFunction::Sha256, true, "compatible"),
];

/// A failed split or splice makes the client log the RPC by name and fall back.
fn assert_no_fallback(client_log: &str, context: &str) {
    assert!(
        !client_log.contains("SplitBlob") && !client_log.contains("SpliceBlob"),
        "{context}: the client reported a split/splice failure:\n{client_log}"
    );
}

#[test]
fn install_cas_round_trips_a_large_blob_split_at_jserve() {
    let clients = clients();
    let tmp = tempfile::tempdir().unwrap();
    for (seed, ((label, bin), (hash, compatible, mode))) in clients
        .iter()
        .flat_map(|c| MODES.iter().map(move |m| (c, m)))
        .enumerate()
    {
        let context = format!("just {label}, {mode} mode");
        let dir = tmp.path().join(format!("{label}-{mode}"));
        let daemon = Daemon::start(&dir.join("jserve"), *compatible);
        let remote = daemon.address();
        let data = noise(BIG, seed as u64 + 1);
        let file = dir.join("big.bin");
        std::fs::write(&file, &data).unwrap();
        let expected = hash.digest_bytes(ObjectKind::File, &data).hash;

        let (stdout, log) = just(
            bin,
            *compatible,
            &[
                "add-to-cas",
                "--local-build-root",
                dir.join("uploader").to_str().unwrap(),
                "-r",
                &remote,
                file.to_str().unwrap(),
            ],
        );
        assert_eq!(stdout.trim(), expected, "{context}: add-to-cas id\n{log}");

        // An empty local root: --remember copies the blob into it, split at jserve.
        let id = format!("[{expected}:{BIG}:f]");
        let downloader = dir.join("downloader");
        let out = dir.join("out.bin");
        let (_, log) = just(
            bin,
            *compatible,
            &[
                "install-cas",
                "--local-build-root",
                downloader.to_str().unwrap(),
                "-r",
                &remote,
                "--remember",
                "-o",
                out.to_str().unwrap(),
                &id,
            ],
        );
        assert_no_fallback(&log, &context);
        assert!(
            std::fs::read(&out).unwrap() == data,
            "{context}: bytes differ"
        );
        let splits = daemon.chunk_counts("split", &expected);
        assert!(
            splits.iter().any(|&n| n > 10),
            "{context}: no SplitBlob of the blob into many chunks ({splits:?}):\n{}",
            daemon.log_text()
        );
        // What the generation puts in field 3: 1.5.x its FASTCDC (2, which
        // upstream would read as SHA1, also in compatible mode), 1.6.x nothing.
        let field3 = if *label == "1.5" { 2 } else { 0 };
        assert!(
            daemon.split_field3(&expected).contains(&field3),
            "{context}: expected SplitBlob field 3 = {field3}:\n{}",
            daemon.log_text()
        );

        // The copy the client assembled from the chunks, read without the remote.
        let local = dir.join("local.bin");
        just(
            bin,
            *compatible,
            &[
                "install-cas",
                "--local-build-root",
                downloader.to_str().unwrap(),
                "-o",
                local.to_str().unwrap(),
                &id,
            ],
        );
        assert!(
            std::fs::read(&local).unwrap() == data,
            "{context}: the spliced local copy differs"
        );
    }
}

#[test]
fn dispatch_splits_at_one_jserve_and_splices_at_the_other() {
    let clients = clients();
    let tmp = tempfile::tempdir().unwrap();
    for (seed, ((label, bin), (hash, compatible, mode))) in clients
        .iter()
        .flat_map(|c| MODES.iter().map(move |m| (c, m)))
        .enumerate()
    {
        let context = format!("just {label}, {mode} mode");
        let dir = tmp.path().join(format!("{label}-{mode}"));
        let main = Daemon::start(&dir.join("main"), *compatible);
        let special = Daemon::start(&dir.join("special"), *compatible);

        let project = dir.join("project");
        std::fs::create_dir_all(&project).unwrap();
        std::fs::write(project.join("ROOT"), "").unwrap();
        let data = noise(BIG, 100 + seed as u64);
        std::fs::write(project.join("big.bin"), &data).unwrap();
        std::fs::write(
            project.join("TARGETS"),
            r#"{ "copy":
  { "type": "generic"
  , "cmds": ["cat big.bin > copy.bin"]
  , "outs": ["copy.bin"]
  , "deps": ["big.bin"]
  , "execution properties":
    {"type": "singleton_map", "key": "server", "value": "special"}
  }
}"#,
        )
        .unwrap();
        let dispatch = dir.join("dispatch.json");
        std::fs::write(
            &dispatch,
            format!(r#"[[{{"server": "special"}}, "{}"]]"#, special.address()),
        )
        .unwrap();

        let out = dir.join("out");
        let (_, log) = just(
            bin,
            *compatible,
            &[
                "install",
                "--workspace-root",
                project.to_str().unwrap(),
                "--local-build-root",
                dir.join("client").to_str().unwrap(),
                "-r",
                &main.address(),
                "--endpoint-configuration",
                dispatch.to_str().unwrap(),
                "-o",
                out.to_str().unwrap(),
                "copy",
            ],
        );
        assert_no_fallback(&log, &context);
        assert!(
            std::fs::read(out.join("copy.bin")).unwrap() == data,
            "{context}: bytes differ"
        );

        let expected = hash.digest_bytes(ObjectKind::File, &data).hash;
        let splits = main.chunk_counts("split", &expected);
        let splices = special.chunk_counts("spliced", &expected);
        assert!(
            splits.iter().any(|&n| n > 10),
            "{context}: the input was not split at the main endpoint ({splits:?}):\n{}",
            main.log_text()
        );
        assert!(
            splices.iter().any(|&n| n > 10),
            "{context}: the input was not spliced at the dispatch endpoint ({splices:?}):\n{}",
            special.log_text()
        );
    }
}
