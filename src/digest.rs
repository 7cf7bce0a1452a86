//! Object identities: the two hash modes of justbuild, object kinds, git
//! object framing and the wire form of digests.
//!
//! Native mode names every object by its git id (SHA-1 over a git header and
//! the content) and keeps trees as git tree objects. Compatible mode is the
//! plain Remote Execution API: SHA-256 of the bytes, trees as `Directory`
//! messages that are ordinary blobs.

use sha1::Digest as _;
use std::fmt;
use std::io::{self, Read};

use bazel_remote_apis::build::bazel::remote::execution::v2 as reapi;

/// The hash function of one process, chosen at start.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HashFunction {
    /// Native mode: git object ids.
    GitSha1,
    /// Compatible mode: plain SHA-256.
    Sha256,
}

/// Kinds of objects a tree can name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ObjectKind {
    File,
    Executable,
    Tree,
    Symlink,
}

impl ObjectKind {
    /// The kind of a blob with or without the executable bit.
    pub fn blob(executable: bool) -> ObjectKind {
        if executable {
            ObjectKind::Executable
        } else {
            ObjectKind::File
        }
    }

    /// Git tree-entry mode of this kind.
    pub fn git_mode(self) -> &'static str {
        match self {
            ObjectKind::File => "100644",
            ObjectKind::Executable => "100755",
            ObjectKind::Tree => "40000",
            ObjectKind::Symlink => "120000",
        }
    }

    /// Kind of a git tree-entry mode; gitlinks (submodules) and odd modes are `None`.
    pub fn from_git_mode(mode: u32) -> Option<ObjectKind> {
        match mode {
            0o100644 | 0o100664 => Some(ObjectKind::File),
            0o100755 => Some(ObjectKind::Executable),
            0o040000 => Some(ObjectKind::Tree),
            0o120000 => Some(ObjectKind::Symlink),
            _ => None,
        }
    }

    /// One-letter code used in object-info strings (`[hash:size:f]`).
    pub fn type_char(self) -> char {
        match self {
            ObjectKind::File => 'f',
            ObjectKind::Executable => 'x',
            ObjectKind::Tree => 't',
            ObjectKind::Symlink => 'l',
        }
    }

    pub fn is_tree(self) -> bool {
        self == ObjectKind::Tree
    }
}

/// Errors in digests coming from outside (requests, files, configs).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DigestError {
    #[error("invalid hash {hash:?}: expected {expected} lowercase hex characters")]
    BadHash { hash: String, expected: String },
    #[error("invalid digest size {0}: sizes cannot be negative")]
    NegativeSize(i64),
    #[error("a tree digest is not valid in compatible (SHA-256) mode: {0}")]
    TreeInCompatibleMode(String),
}

/// Wire prefix marking a native blob id (ASCII `b`).
const NATIVE_BLOB_PREFIX: &str = "62";
/// Wire prefix marking a native tree id (ASCII `t`).
const NATIVE_TREE_PREFIX: &str = "74";

impl HashFunction {
    /// The REAPI `DigestFunction.Value` of this mode: native git ids travel
    /// as SHA1, as justbuild announces them.
    pub fn reapi_digest_function(self) -> i32 {
        use bazel_remote_apis::build::bazel::remote::execution::v2::digest_function;
        match self {
            HashFunction::GitSha1 => digest_function::Value::Sha1 as i32,
            HashFunction::Sha256 => digest_function::Value::Sha256 as i32,
        }
    }

    /// Length of a hash in raw bytes.
    pub fn raw_len(self) -> usize {
        match self {
            HashFunction::GitSha1 => 20,
            HashFunction::Sha256 => 32,
        }
    }

    /// Length of a hash in hex characters.
    pub fn hex_len(self) -> usize {
        2 * self.raw_len()
    }

    pub fn is_native(self) -> bool {
        self == HashFunction::GitSha1
    }

    /// Directory name of this mode's storage inside a generation.
    pub fn storage_dir_name(self) -> &'static str {
        match self {
            HashFunction::GitSha1 => "git-sha1",
            HashFunction::Sha256 => "compatible-sha256",
        }
    }

    /// Starts hashing an object of `kind` and `len` bytes; native mode frames
    /// it as a git object (a tree or a blob), compatible mode hashes it plain.
    pub fn hasher(self, kind: ObjectKind, len: u64) -> ObjectHasher {
        match self {
            HashFunction::GitSha1 => {
                let mut h = sha1::Sha1::new();
                h.update(git_header(kind.is_tree(), len));
                ObjectHasher::Sha1(h)
            }
            HashFunction::Sha256 => ObjectHasher::Sha256(sha2::Sha256::new()),
        }
    }

    /// Hex id of an in-memory object.
    pub fn hash_bytes(self, kind: ObjectKind, data: &[u8]) -> String {
        let mut h = self.hasher(kind, data.len() as u64);
        h.update(data);
        h.finish_hex()
    }

    /// Whether objects of `kind` are hashed and named as git trees: trees in
    /// native mode only (compatible mode hashes a Directory like any blob).
    pub fn hashes_as_tree(self, kind: ObjectKind) -> bool {
        kind.is_tree() && self.is_native()
    }

    /// The digest of an object of `kind` known by its id and size.
    pub fn digest(self, kind: ObjectKind, hash: impl Into<String>, size: u64) -> Digest {
        Digest {
            hash: hash.into(),
            size,
            is_tree: self.hashes_as_tree(kind),
        }
    }

    /// Digest of an in-memory object of the given kind.
    pub fn digest_bytes(self, kind: ObjectKind, data: &[u8]) -> Digest {
        Digest {
            hash: self.hash_bytes(kind, data),
            size: data.len() as u64,
            is_tree: self.hashes_as_tree(kind),
        }
    }

    /// Hex id of `len` bytes read from `reader` (streams; never holds the content).
    pub fn hash_reader(self, kind: ObjectKind, len: u64, reader: impl Read) -> io::Result<String> {
        let mut h = self.hasher(kind, len);
        let copied = io::copy(&mut reader.take(len), &mut h)?;
        if copied != len {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("expected {len} bytes, read {copied}"),
            ));
        }
        Ok(h.finish_hex())
    }

    /// Id of the empty blob in this mode.
    pub fn empty_blob(self) -> Digest {
        self.digest_bytes(ObjectKind::File, b"")
    }

    /// Checks that `hash` is a well-formed hex id for this mode.
    pub fn check_hex(self, hash: &str) -> Result<(), DigestError> {
        if hash.len() == self.hex_len() && is_lower_hex(hash) {
            Ok(())
        } else {
            Err(DigestError::BadHash {
                hash: hash.to_string(),
                expected: self.hex_len().to_string(),
            })
        }
    }

    /// Parses a digest received over the Remote Execution API.
    ///
    /// Native ids may carry the two-character blob/tree prefix; an unprefixed
    /// id is a blob.
    pub fn digest_from_wire(self, d: &reapi::Digest) -> Result<Digest, DigestError> {
        if d.size_bytes < 0 {
            return Err(DigestError::NegativeSize(d.size_bytes));
        }
        let size = d.size_bytes as u64;
        let bad = || DigestError::BadHash {
            hash: d.hash.clone(),
            expected: match self {
                HashFunction::GitSha1 => format!("{} or {}", self.hex_len(), self.hex_len() + 2),
                HashFunction::Sha256 => self.hex_len().to_string(),
            },
        };
        if !is_lower_hex(&d.hash) {
            return Err(bad());
        }
        match self {
            HashFunction::Sha256 if d.hash.len() == self.hex_len() => Ok(Digest {
                hash: d.hash.clone(),
                size,
                is_tree: false,
            }),
            HashFunction::GitSha1 if d.hash.len() == self.hex_len() => Ok(Digest {
                hash: d.hash.clone(),
                size,
                is_tree: false,
            }),
            HashFunction::GitSha1 if d.hash.len() == self.hex_len() + 2 => {
                let (prefix, hash) = d.hash.split_at(2);
                let is_tree = match prefix {
                    NATIVE_TREE_PREFIX => true,
                    NATIVE_BLOB_PREFIX => false,
                    _ => return Err(bad()),
                };
                Ok(Digest {
                    hash: hash.to_string(),
                    size,
                    is_tree,
                })
            }
            _ => Err(bad()),
        }
    }
}

fn is_lower_hex(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The git object header `"<type> <len>\0"`.
fn git_header(is_tree: bool, len: u64) -> Vec<u8> {
    let kind = if is_tree { "tree" } else { "blob" };
    format!("{kind} {len}\0").into_bytes()
}

/// Incremental hasher for one object, framed as the mode requires.
pub enum ObjectHasher {
    Sha1(sha1::Sha1),
    Sha256(sha2::Sha256),
}

impl ObjectHasher {
    pub fn update(&mut self, data: &[u8]) {
        match self {
            ObjectHasher::Sha1(h) => h.update(data),
            ObjectHasher::Sha256(h) => h.update(data),
        }
    }

    pub fn finish_hex(self) -> String {
        match self {
            ObjectHasher::Sha1(h) => hex::encode(h.finalize()),
            ObjectHasher::Sha256(h) => hex::encode(h.finalize()),
        }
    }
}

impl io::Write for ObjectHasher {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// An object's identity: hex hash, size, and (native mode) whether it is a tree.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Digest {
    /// Lowercase hex hash without any wire prefix.
    pub hash: String,
    /// Content size in bytes; 0 may mean "unknown" for native ids from git.
    pub size: u64,
    /// Native mode only: the hash is a git tree id.
    pub is_tree: bool,
}

impl Digest {
    /// The kind its id frames in native mode: a tree for git tree ids, else
    /// a blob (compatible ids frame nothing).
    pub fn framing(&self) -> ObjectKind {
        if self.is_tree {
            ObjectKind::Tree
        } else {
            ObjectKind::File
        }
    }

    /// Whether `size` is the content's real size. Only the empty object has
    /// size 0, so 0 with any other hash means "unknown": git ids come without
    /// sizes, and clients before justbuild 1.6.2 name a repository
    /// description by its hash alone, in either mode.
    pub fn size_known(&self, hf: HashFunction) -> bool {
        self.size != 0 || self.hash == hf.hash_bytes(self.framing(), b"")
    }

    /// The Remote Execution API form: native ids get their blob/tree prefix.
    pub fn to_wire(&self, hf: HashFunction) -> reapi::Digest {
        let hash = match hf {
            HashFunction::GitSha1 if self.is_tree => format!("{NATIVE_TREE_PREFIX}{}", self.hash),
            HashFunction::GitSha1 => format!("{NATIVE_BLOB_PREFIX}{}", self.hash),
            HashFunction::Sha256 => self.hash.clone(),
        };
        reapi::Digest {
            hash,
            size_bytes: self.size as i64,
        }
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.hash, self.size)
    }
}

/// How deep a tree may nest before walks over it refuse it. Source trees are
/// far shallower (git itself stops at 4,096 by default; justbuild's own tests
/// use 900); every tree walk is bounded by this, so a hostile tree gets an
/// error instead of exhausting a stack.
pub const MAX_TREE_DEPTH: usize = 16_384;

/// One entry of a git tree object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GitTreeEntry {
    /// Raw entry name (git names are bytes, not necessarily UTF-8).
    pub name: Vec<u8>,
    pub kind: ObjectKind,
    /// Raw 20-byte git id.
    pub id: [u8; 20],
}

/// Errors in git tree objects.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TreeError {
    #[error("malformed git tree object: {0}")]
    Malformed(&'static str),
    #[error("unsupported git tree-entry mode {0:o}")]
    UnsupportedMode(u32),
    #[error("invalid tree-entry name {0:?}")]
    BadName(String),
    #[error("duplicate tree-entry name {0:?}")]
    Duplicate(String),
}

/// Git's canonical order: names compare bytewise, with trees as if followed by `/`.
fn git_sort_key(e: &GitTreeEntry) -> impl Iterator<Item = u8> + '_ {
    let slash = if e.kind.is_tree() { Some(b'/') } else { None };
    e.name.iter().copied().chain(slash)
}

/// Checks an entry name: non-empty, no `/` or NUL, not `.` or `..`.
pub fn check_entry_name(name: &[u8]) -> Result<(), TreeError> {
    if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') || name.contains(&0)
    {
        return Err(TreeError::BadName(
            String::from_utf8_lossy(name).into_owned(),
        ));
    }
    Ok(())
}

/// Serialises entries as a git tree object, in git's canonical order.
pub fn serialize_git_tree(mut entries: Vec<GitTreeEntry>) -> Result<Vec<u8>, TreeError> {
    for e in &entries {
        check_entry_name(&e.name)?;
    }
    entries.sort_by(|a, b| git_sort_key(a).cmp(git_sort_key(b)));
    if let Some(w) = entries.windows(2).find(|w| w[0].name == w[1].name) {
        return Err(TreeError::Duplicate(
            String::from_utf8_lossy(&w[0].name).into_owned(),
        ));
    }
    let mut out = Vec::with_capacity(entries.len() * 40);
    for e in &entries {
        out.extend_from_slice(e.kind.git_mode().as_bytes());
        out.push(b' ');
        out.extend_from_slice(&e.name);
        out.push(0);
        out.extend_from_slice(&e.id);
    }
    Ok(out)
}

/// Parses a git tree object's content (without header).
pub fn parse_git_tree(mut data: &[u8]) -> Result<Vec<GitTreeEntry>, TreeError> {
    let mut entries = Vec::new();
    while !data.is_empty() {
        let space = data
            .iter()
            .position(|&b| b == b' ')
            .ok_or(TreeError::Malformed("missing space after mode"))?;
        let mode_text = std::str::from_utf8(&data[..space])
            .map_err(|_| TreeError::Malformed("mode is not text"))?;
        let mode = u32::from_str_radix(mode_text, 8)
            .map_err(|_| TreeError::Malformed("mode is not octal"))?;
        let kind = ObjectKind::from_git_mode(mode).ok_or(TreeError::UnsupportedMode(mode))?;
        let rest = &data[space + 1..];
        let nul = rest
            .iter()
            .position(|&b| b == 0)
            .ok_or(TreeError::Malformed("missing NUL after name"))?;
        let name = rest[..nul].to_vec();
        check_entry_name(&name)?;
        let id_bytes = rest
            .get(nul + 1..nul + 21)
            .ok_or(TreeError::Malformed("truncated object id"))?;
        let mut id = [0u8; 20];
        id.copy_from_slice(id_bytes);
        entries.push(GitTreeEntry { name, kind, id });
        data = &rest[nul + 21..];
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(hex_id: &str) -> [u8; 20] {
        hex::decode(hex_id).unwrap().try_into().unwrap()
    }

    #[test]
    fn empty_blob_and_tree_vectors() {
        // `git hash-object -t blob /dev/null` and `git mktree </dev/null`
        let hf = HashFunction::GitSha1;
        assert_eq!(
            hf.hash_bytes(ObjectKind::File, b""),
            "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391"
        );
        assert_eq!(
            hf.hash_bytes(ObjectKind::Tree, b""),
            "4b825dc642cb6eb9a060e54bf8d69288fbee4904"
        );
        // `sha256sum /dev/null`
        assert_eq!(
            HashFunction::Sha256.hash_bytes(ObjectKind::File, b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn size_zero_is_unknown_except_for_the_empty_object() {
        for hf in [HashFunction::GitSha1, HashFunction::Sha256] {
            let empty = hf.empty_blob();
            assert!(empty.size_known(hf), "{hf:?}");
            let hello = hf.digest_bytes(ObjectKind::File, b"hello\n");
            assert!(hello.size_known(hf), "{hf:?}");
            let no_size = Digest { size: 0, ..hello };
            assert!(!no_size.size_known(hf), "{hf:?}");
        }
        let empty_tree = Digest {
            hash: "4b825dc642cb6eb9a060e54bf8d69288fbee4904".into(),
            size: 0,
            is_tree: true,
        };
        assert!(empty_tree.size_known(HashFunction::GitSha1));
    }

    #[test]
    fn blob_vectors() {
        // `printf 'hello\n' | git hash-object --stdin` and `printf 'hello\n' | sha256sum`
        assert_eq!(
            HashFunction::GitSha1.hash_bytes(ObjectKind::File, b"hello\n"),
            "ce013625030ba8dba906f756967f9e9ca394464a"
        );
        assert_eq!(
            HashFunction::Sha256.hash_bytes(ObjectKind::File, b"hello\n"),
            "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03"
        );
    }

    #[test]
    fn tree_with_file_executable_and_symlink() {
        // Checked with:
        //   printf '100644 blob ce0136...\thello\n100755 blob ce0136...\trun\n
        //           120000 blob <id of "hello">\tlink\n' | git mktree
        let hello = "ce013625030ba8dba906f756967f9e9ca394464a";
        let link_target = HashFunction::GitSha1.hash_bytes(ObjectKind::File, b"hello");
        assert_eq!(link_target, "b6fc4c620b67d95f953a5c1c1230aaab5db5a1b0");
        let entries = vec![
            GitTreeEntry {
                name: b"run".to_vec(),
                kind: ObjectKind::Executable,
                id: raw(hello),
            },
            GitTreeEntry {
                name: b"link".to_vec(),
                kind: ObjectKind::Symlink,
                id: raw(&link_target),
            },
            GitTreeEntry {
                name: b"hello".to_vec(),
                kind: ObjectKind::File,
                id: raw(hello),
            },
        ];
        let bytes = serialize_git_tree(entries.clone()).unwrap();
        assert_eq!(
            HashFunction::GitSha1.hash_bytes(ObjectKind::Tree, &bytes),
            "48f00e45b213a0d753774d3579d58d4c31cacda9"
        );
        let parsed = parse_git_tree(&bytes).unwrap();
        assert_eq!(parsed.len(), 3);
        assert_eq!(parsed[0].name, b"hello");
        assert_eq!(parsed[1].kind, ObjectKind::Symlink);
    }

    #[test]
    fn git_order_puts_trees_after_longer_names() {
        // "a" tree sorts as "a/", after "a.c" ('.' < '/') but before "a0".
        let id = [0u8; 20];
        let e = |n: &str, kind| GitTreeEntry {
            name: n.as_bytes().to_vec(),
            kind,
            id,
        };
        let bytes = serialize_git_tree(vec![
            e("a0", ObjectKind::File),
            e("a", ObjectKind::Tree),
            e("a.c", ObjectKind::File),
        ])
        .unwrap();
        let names: Vec<_> = parse_git_tree(&bytes)
            .unwrap()
            .into_iter()
            .map(|e| e.name)
            .collect();
        assert_eq!(names, vec![b"a.c".to_vec(), b"a".to_vec(), b"a0".to_vec()]);
    }

    #[test]
    fn bad_names_and_duplicates_rejected() {
        let id = [0u8; 20];
        for bad in ["", ".", "..", "a/b"] {
            let e = GitTreeEntry {
                name: bad.as_bytes().to_vec(),
                kind: ObjectKind::File,
                id,
            };
            assert!(serialize_git_tree(vec![e]).is_err(), "{bad:?} accepted");
        }
        let e = GitTreeEntry {
            name: b"x".to_vec(),
            kind: ObjectKind::File,
            id,
        };
        assert!(matches!(
            serialize_git_tree(vec![e.clone(), e]),
            Err(TreeError::Duplicate(_))
        ));
        assert!(parse_git_tree(b"100644 x\0short").is_err());
        assert!(matches!(
            parse_git_tree(b"160000 sub\0aaaaaaaaaaaaaaaaaaaa"),
            Err(TreeError::UnsupportedMode(0o160000))
        ));
    }

    #[test]
    fn wire_digests() {
        let hf = HashFunction::GitSha1;
        let tree = Digest {
            hash: "4b825dc642cb6eb9a060e54bf8d69288fbee4904".into(),
            size: 0,
            is_tree: true,
        };
        let wire = tree.to_wire(hf);
        assert_eq!(wire.hash, "744b825dc642cb6eb9a060e54bf8d69288fbee4904");
        assert_eq!(hf.digest_from_wire(&wire).unwrap(), tree);
        let blob = hf.empty_blob();
        assert_eq!(
            blob.to_wire(hf).hash,
            "62e69de29bb2d1d6434b8b29ae775ad8c2e48c5391"
        );
        // An unprefixed native id is a blob.
        let plain = reapi::Digest {
            hash: blob.hash.clone(),
            size_bytes: 0,
        };
        assert_eq!(hf.digest_from_wire(&plain).unwrap(), blob);
        for bad in [
            "",
            "xyz",
            "63e69de29bb2d1d6434b8b29ae775ad8c2e48c5391",
            "E69DE29BB2D1D6434B8B29AE775AD8C2E48C5391",
        ] {
            let d = reapi::Digest {
                hash: bad.into(),
                size_bytes: 0,
            };
            assert!(hf.digest_from_wire(&d).is_err(), "{bad:?} accepted");
        }
        let neg = reapi::Digest {
            hash: blob.hash,
            size_bytes: -1,
        };
        assert_eq!(
            hf.digest_from_wire(&neg),
            Err(DigestError::NegativeSize(-1))
        );
        // Compatible mode has no prefixes.
        let c = HashFunction::Sha256.empty_blob();
        assert_eq!(c.to_wire(HashFunction::Sha256).hash, c.hash);
        let prefixed = reapi::Digest {
            hash: format!("62{}", c.hash),
            size_bytes: 0,
        };
        assert!(HashFunction::Sha256.digest_from_wire(&prefixed).is_err());
    }

    #[test]
    fn streaming_hash_matches_and_detects_short_input() {
        let data = vec![7u8; 100_000];
        for hf in [HashFunction::GitSha1, HashFunction::Sha256] {
            let streamed = hf
                .hash_reader(ObjectKind::File, data.len() as u64, &data[..])
                .unwrap();
            assert_eq!(streamed, hf.hash_bytes(ObjectKind::File, &data));
            assert!(hf
                .hash_reader(ObjectKind::File, 100_001, &data[..])
                .is_err());
        }
    }
}
