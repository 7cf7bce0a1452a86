//! Generated inputs for benchmarks: archives of source-like files and
//! TARGETS files of many small actions.

use std::path::Path;

use serde_json::{json, Map, Value};

/// What the files of a generated archive hold.
#[derive(Clone, Copy, Debug)]
pub enum Corpus {
    /// Random letters from a 16-letter alphabet: compresses about 2:1, and
    /// inflating it is slow (few repeats), the hard case for decompression.
    Letters,
    /// Lines of words from a skewed vocabulary: compresses about 5:1, like
    /// source code.
    Words,
}

/// Writes a tar.gz of `files` files of about `size` bytes each, spread over
/// 600 directories, every tenth executable; the content differs per file.
pub fn make_tar_gz(path: &Path, files: usize, size: usize, corpus: Corpus) {
    let file = std::fs::File::create(path).unwrap();
    let gz = flate2::write::GzEncoder::new(file, flate2::Compression::new(6));
    let mut tar = tar::Builder::new(gz);
    let mut state = 0x2545F4914F6CDD1Du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let vocabulary: Vec<String> = (0..4000)
        .map(|i| {
            (0..2 + (i % 9))
                .map(|_| (b'a' + (next() % 26) as u8) as char)
                .collect()
        })
        .collect();
    let mut content = Vec::with_capacity(size + 100);
    for i in 0..files {
        content.clear();
        match corpus {
            Corpus::Letters => {
                while content.len() < size {
                    let r = next();
                    for j in 0..8 {
                        content.push(b'a' + ((r >> (j * 8)) as u8 % 16));
                    }
                }
                content.truncate(size);
            }
            Corpus::Words => {
                while content.len() < size {
                    // Squaring skews towards the first words, as identifiers are.
                    let r = (next() % 4000) as f64 / 4000.0;
                    content.extend_from_slice(vocabulary[(r * r * 4000.0) as usize].as_bytes());
                    content.push(if next() % 8 == 0 { b'\n' } else { b' ' });
                }
            }
        }
        let mut header = tar::Header::new_gnu();
        header.set_size(content.len() as u64);
        header.set_mode(if i % 10 == 0 { 0o755 } else { 0o644 });
        header.set_cksum();
        tar.append_data(
            &mut header,
            format!("pkg/dir{:03}/sub{}/file{i:05}.txt", i % 200, i % 3),
            &content[..],
        )
        .unwrap();
    }
    tar.into_inner().unwrap().finish().unwrap();
}

/// Targets of one action each: `"many"`, an export target over `actions`
/// independent one-line actions; `"load"`, an export target over an export
/// chain `depth` deep (each link's action reads the previous link's
/// output) and `width` export targets of one action each.
pub fn load_targets(actions: usize, depth: usize, width: usize) -> Value {
    let mut t = Map::new();
    let mut all = Vec::new();
    for i in 0..actions {
        t.insert(
            format!("a{i}"),
            json!({"type": "generic", "outs": [format!("a{i}.txt")],
                   "cmds": [format!("echo {i} > a{i}.txt")]}),
        );
        all.push(json!([format!("a{i}"), "."]));
    }
    // An install's "dirs" stage their targets' artifacts ("deps" only the
    // runfiles, which generic targets have none of).
    export(&mut t, "many", json!({"type": "install", "dirs": all}));
    for i in 0..depth {
        let (deps, cmd) = match i {
            0 => (json!([]), "echo 0 > c0.txt".to_string()),
            _ => (
                json!([format!("c{}", i - 1)]),
                format!("cat c{}.txt > c{i}.txt && echo {i} >> c{i}.txt", i - 1),
            ),
        };
        export(
            &mut t,
            &format!("c{i}"),
            json!({"type": "generic", "outs": [format!("c{i}.txt")], "deps": deps, "cmds": [cmd]}),
        );
    }
    let mut wide = Vec::new();
    for i in 0..width {
        export(
            &mut t,
            &format!("w{i}"),
            json!({"type": "generic", "outs": [format!("w{i}.txt")],
                   "cmds": [format!("echo wide {i} > w{i}.txt")]}),
        );
        wide.push(json!([format!("w{i}"), "."]));
    }
    if depth > 0 {
        wide.push(json!([format!("c{}", depth - 1), "."]));
    }
    export(&mut t, "load", json!({"type": "install", "dirs": wide}));
    Value::Object(t)
}

/// Target `name`, an export of `NAME-impl` defined as `definition`.
fn export(targets: &mut Map<String, Value>, name: &str, definition: Value) {
    targets.insert(format!("{name}-impl"), definition);
    targets.insert(
        name.to_string(),
        json!({"type": "export", "target": format!("{name}-impl")}),
    );
}
