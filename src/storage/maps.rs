//! Small persistent maps from a hex id to a short text value (one file per
//! key), such as "archive blob -> unpacked tree". Values are written atomically.

use std::fs;
use std::io;
use std::path::PathBuf;

use super::atomic::write_atomic;

/// A directory of `<key>` files holding values.
#[derive(Clone, Debug)]
pub struct IdMap {
    dir: PathBuf,
    tmp: PathBuf,
    /// The map's directories in older generations, youngest first.
    older: Vec<PathBuf>,
}

fn valid_key(key: &str) -> bool {
    !key.is_empty() && key.len() <= 128 && key.bytes().all(|b| b.is_ascii_hexdigit())
}

impl IdMap {
    pub fn new(dir: PathBuf, tmp: PathBuf) -> IdMap {
        IdMap {
            dir,
            tmp,
            older: Vec::new(),
        }
    }

    /// This map, also reading the older generations at `older`; what is
    /// read there is written into the current one.
    pub fn with_older(mut self, older: Vec<PathBuf>) -> IdMap {
        self.older = older;
        self
    }

    /// The value stored for `key`, if any. Keys must be hex ids.
    pub fn get(&self, key: &str) -> io::Result<Option<String>> {
        self.get_kept(key, |_| true)
    }

    /// Like [`IdMap::get`]; a value found in an older generation is copied
    /// forward only once `keep` (given the trimmed value) has made sure
    /// that what it names is in the current generation too, and is
    /// ignored if `keep` says it is gone.
    pub fn get_kept(
        &self,
        key: &str,
        keep: impl FnOnce(&str) -> bool,
    ) -> io::Result<Option<String>> {
        if !valid_key(key) {
            return Ok(None);
        }
        match fs::read_to_string(self.dir.join(key)) {
            Ok(v) => Ok(Some(v)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                for dir in &self.older {
                    match fs::read_to_string(dir.join(key)) {
                        Ok(v) => {
                            if !keep(v.trim()) {
                                return Ok(None);
                            }
                            self.set(key, &v)?;
                            return Ok(Some(v));
                        }
                        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                        Err(e) => return Err(e),
                    }
                }
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Stores `value` for `key` (last writer wins).
    pub fn set(&self, key: &str, value: &str) -> io::Result<()> {
        if !valid_key(key) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("map key {key:?} is not a hex id"),
            ));
        }
        write_atomic(&self.tmp, &self.dir.join(key), value.as_bytes(), 0o644)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_get_and_bad_keys() {
        let dir = tempfile::tempdir().unwrap();
        let m = IdMap::new(dir.path().join("m"), dir.path().join("tmp"));
        let key = "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391";
        assert_eq!(m.get(key).unwrap(), None);
        m.set(key, "4b825dc642cb6eb9a060e54bf8d69288fbee4904")
            .unwrap();
        assert_eq!(
            m.get(key).unwrap().as_deref(),
            Some("4b825dc642cb6eb9a060e54bf8d69288fbee4904")
        );
        assert!(m.set("../escape", "x").is_err());
        assert_eq!(m.get("../escape").unwrap(), None);
    }

    #[test]
    fn older_generations_are_read_and_copied_forward() {
        let dir = tempfile::tempdir().unwrap();
        let (gen0, gen1, gen2) = (
            dir.path().join("g0"),
            dir.path().join("g1"),
            dir.path().join("g2"),
        );
        let tmp = dir.path().join("tmp");
        let key = "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391";
        let value = "4b825dc642cb6eb9a060e54bf8d69288fbee4904";
        IdMap::new(gen2.clone(), tmp.clone())
            .set(key, value)
            .unwrap();
        let m = IdMap::new(gen0.clone(), tmp.clone()).with_older(vec![gen1, gen2]);
        assert_eq!(m.get(key).unwrap().as_deref(), Some(value));
        // Now in the current generation itself.
        let current = IdMap::new(gen0, tmp);
        assert_eq!(current.get(key).unwrap().as_deref(), Some(value));
        assert_eq!(m.get(&key.replace('e', "f")).unwrap(), None);
    }
}
