//! ByteStream resource names of the Remote Execution API:
//! `{instance}/blobs/{hash}/{size}` for reads and
//! `{instance}/uploads/{uuid}/blobs/{hash}/{size}` for writes, each optionally
//! followed by more segments, and the `compressed-blobs/{compressor}` variants.

/// A parsed resource name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resource {
    pub instance: String,
    /// Upload id, for write resources.
    pub upload_id: Option<String>,
    /// Set for `compressed-blobs/{compressor}/...` names.
    pub compressor: Option<String>,
    pub hash: String,
    pub size: i64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("malformed resource name {name:?}: {reason}")]
pub struct ResourceError {
    pub name: String,
    pub reason: &'static str,
}

/// Segments that mark the end of the instance name.
const RESERVED: [&str; 6] = [
    "blobs",
    "uploads",
    "compressed-blobs",
    "actions",
    "actionResults",
    "operations",
];

fn err(name: &str, reason: &'static str) -> ResourceError {
    ResourceError {
        name: name.to_string(),
        reason,
    }
}

/// Parses a resource name; `write` selects the upload form.
pub fn parse(name: &str, write: bool) -> Result<Resource, ResourceError> {
    let parts: Vec<&str> = name.split('/').collect();
    let start = parts
        .iter()
        .position(|p| RESERVED.contains(p))
        .ok_or_else(|| err(name, "no blobs segment"))?;
    let instance = parts[..start].join("/");
    let mut rest = &parts[start..];
    let upload_id = if write {
        if rest.first() != Some(&"uploads") || rest.len() < 2 || rest[1].is_empty() {
            return Err(err(name, "writes need uploads/{uuid}/blobs/{hash}/{size}"));
        }
        let id = rest[1].to_string();
        rest = &rest[2..];
        Some(id)
    } else {
        None
    };
    let compressor = match rest.first() {
        Some(&"blobs") => {
            rest = &rest[1..];
            None
        }
        Some(&"compressed-blobs") if rest.len() >= 2 => {
            let c = rest[1].to_string();
            rest = &rest[2..];
            Some(c)
        }
        _ => return Err(err(name, "expected blobs/{hash}/{size}")),
    };
    if rest.len() < 2 {
        return Err(err(name, "expected blobs/{hash}/{size}"));
    }
    let hash = rest[0].to_string();
    if hash.is_empty() {
        return Err(err(name, "empty hash"));
    }
    let size: i64 = rest[1]
        .parse()
        .map_err(|_| err(name, "size is not a number"))?;
    if size < 0 {
        return Err(err(name, "negative size"));
    }
    Ok(Resource {
        instance,
        upload_id,
        compressor,
        hash,
        size,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads() {
        let r = parse("blobs/abc/12", false).unwrap();
        assert_eq!(
            (r.instance.as_str(), r.hash.as_str(), r.size),
            ("", "abc", 12)
        );
        let r = parse("main/sub/blobs/abc/12/extra/meta", false).unwrap();
        assert_eq!(r.instance, "main/sub");
        let r = parse("i/compressed-blobs/zstd/abc/3", false).unwrap();
        assert_eq!(r.compressor.as_deref(), Some("zstd"));
    }

    #[test]
    fn empty_instance_with_leading_slash() {
        // How jserve and justbuild 1.6 clients name blobs of the empty instance.
        let r = parse("/blobs/ab/3", false).unwrap();
        assert_eq!(
            (r.instance.as_str(), r.hash.as_str(), r.size),
            ("", "ab", 3)
        );
        let w = parse("/uploads/u/blobs/ab/3", true).unwrap();
        assert_eq!(
            (w.instance.as_str(), w.upload_id.as_deref()),
            ("", Some("u"))
        );
    }

    #[test]
    fn writes() {
        let r = parse("inst/uploads/1234-uuid/blobs/abc/7", true).unwrap();
        assert_eq!(r.upload_id.as_deref(), Some("1234-uuid"));
        assert_eq!(r.instance, "inst");
        assert_eq!(r.size, 7);
        let r = parse("uploads/u/compressed-blobs/zstd/abc/7", true).unwrap();
        assert_eq!(r.compressor.as_deref(), Some("zstd"));
    }

    #[test]
    fn malformed() {
        for (name, write) in [
            ("", false),
            ("blobs", false),
            ("blobs/abc", false),
            ("blobs/abc/-1", false),
            ("blobs/abc/x", false),
            ("blobs//3", false),
            ("blobs/abc/3", true),
            ("uploads//blobs/abc/3", true),
            ("uploads/u/abc/3", true),
            ("nothing/here", false),
        ] {
            assert!(parse(name, write).is_err(), "{name:?} accepted");
        }
    }
}
