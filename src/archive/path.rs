//! Entry paths: archive names checked and reduced to plain relative components.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use super::UnpackError;

/// A checked entry path: relative, without `.`, `..` or empty components.
/// No components at all means the destination directory itself (`./`).
#[derive(Clone, Debug)]
pub(super) struct EntryPath {
    /// The name as stored in the archive, for messages.
    pub name: String,
    components: Vec<Vec<u8>>,
}

impl EntryPath {
    /// Checks the raw `name` of an entry.
    pub fn parse(raw: &[u8]) -> Result<EntryPath, UnpackError> {
        let name = String::from_utf8_lossy(raw).into_owned();
        let unsafe_path = |reason| UnpackError::UnsafePath {
            entry: name.clone(),
            reason,
        };
        if raw.contains(&0) {
            return Err(unsafe_path("the name contains a NUL byte"));
        }
        if raw.first() == Some(&b'/') {
            return Err(unsafe_path("absolute path"));
        }
        let mut components = Vec::new();
        for part in raw.split(|b| *b == b'/') {
            match part {
                b"" | b"." => {}
                b".." => return Err(unsafe_path("the path contains a '..' component")),
                _ => components.push(part.to_vec()),
            }
        }
        Ok(EntryPath { name, components })
    }

    /// Whether this is the destination directory itself.
    pub fn is_root(&self) -> bool {
        self.components.is_empty()
    }

    /// The relative paths of the parents, outermost first (without the root).
    pub fn parents(&self) -> impl Iterator<Item = PathBuf> + '_ {
        (1..self.components.len()).map(|n| self.prefix(n))
    }

    /// The whole relative path.
    pub fn relative(&self) -> PathBuf {
        self.prefix(self.components.len())
    }

    fn prefix(&self, n: usize) -> PathBuf {
        self.components[..n]
            .iter()
            .map(|c| OsStr::from_bytes(c))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rel(raw: &str) -> PathBuf {
        EntryPath::parse(raw.as_bytes()).unwrap().relative()
    }

    #[test]
    fn normalises_dots_and_slashes() {
        assert_eq!(rel("./a/./b//c/"), PathBuf::from("a/b/c"));
        assert_eq!(rel("a"), PathBuf::from("a"));
        assert!(EntryPath::parse(b"./").unwrap().is_root());
        assert!(EntryPath::parse(b".").unwrap().is_root());
        let p = EntryPath::parse(b"x/y/z").unwrap();
        let parents: Vec<_> = p.parents().collect();
        assert_eq!(parents, vec![PathBuf::from("x"), PathBuf::from("x/y")]);
    }

    #[test]
    fn rejects_unsafe_names() {
        for bad in ["/etc/passwd", "a/../../b", "..", "../x", "a/..", "a\0b"] {
            assert!(
                matches!(
                    EntryPath::parse(bad.as_bytes()),
                    Err(UnpackError::UnsafePath { .. })
                ),
                "{bad:?}"
            );
        }
        // A name that merely contains dots is fine.
        assert_eq!(rel("a/..b/c.."), PathBuf::from("a/..b/c.."));
    }
}
