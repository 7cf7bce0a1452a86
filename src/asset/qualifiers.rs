//! The qualifiers of a Remote Asset request: the lexicon's names jserve
//! understands (remote-apis build/bazel/remote/asset/v1/qualifiers.md), its
//! own `jserve.git-blob-id`, and the canonical form pushed assets are keyed by.

use base64::Engine as _;
use bazel_remote_apis::build::bazel::remote::asset::v1::Qualifier;
use sha2::Digest as _;

use super::AssetError;

/// The qualifier naming a blob by its git blob id (jserve's own name).
pub const GIT_BLOB_ID: &str = "jserve.git-blob-id";

/// The most qualifiers and URIs a request may carry.
pub const MAX_QUALIFIERS: usize = 64;
pub const MAX_URIS: usize = 256;

/// A `checksum.sri` hash: the algorithm and the expected digest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sri {
    pub algorithm: SriAlgorithm,
    pub digest: Vec<u8>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SriAlgorithm {
    Sha256,
    Sha384,
    Sha512,
}

impl Sri {
    /// Hex of a SHA-256 checksum (how compatible mode names blobs).
    pub fn sha256_hex(&self) -> Option<String> {
        (self.algorithm == SriAlgorithm::Sha256).then(|| hex::encode(&self.digest))
    }
}

/// Incremental hashing for every algorithm a request's checksums use.
pub struct SriHasher {
    sha256: Option<sha2::Sha256>,
    sha384: Option<sha2::Sha384>,
    sha512: Option<sha2::Sha512>,
}

impl SriHasher {
    pub fn new(checksums: &[Sri]) -> SriHasher {
        let wants = |a| checksums.iter().any(|c| c.algorithm == a);
        SriHasher {
            sha256: wants(SriAlgorithm::Sha256).then(sha2::Sha256::new),
            sha384: wants(SriAlgorithm::Sha384).then(sha2::Sha384::new),
            sha512: wants(SriAlgorithm::Sha512).then(sha2::Sha512::new),
        }
    }

    pub fn update(&mut self, data: &[u8]) {
        if let Some(h) = &mut self.sha256 {
            h.update(data);
        }
        if let Some(h) = &mut self.sha384 {
            h.update(data);
        }
        if let Some(h) = &mut self.sha512 {
            h.update(data);
        }
    }

    /// Whether at least one checksum matches (as the lexicon asks).
    pub fn matches(self, checksums: &[Sri]) -> bool {
        let sha256 = self.sha256.map(|h| h.finalize().to_vec());
        let sha384 = self.sha384.map(|h| h.finalize().to_vec());
        let sha512 = self.sha512.map(|h| h.finalize().to_vec());
        checksums.iter().any(|c| {
            let got = match c.algorithm {
                SriAlgorithm::Sha256 => &sha256,
                SriAlgorithm::Sha384 => &sha384,
                SriAlgorithm::Sha512 => &sha512,
            };
            got.as_deref() == Some(c.digest.as_slice())
        })
    }
}

/// A request's qualifiers, parsed.
#[derive(Clone, Debug, Default)]
pub struct Qualifiers {
    pub resource_type: Option<String>,
    pub commit: Option<String>,
    pub directory: Option<String>,
    pub checksums: Vec<Sri>,
    pub git_blob: Option<String>,
    /// Names jserve does not understand (answerable only from a push).
    pub unsupported: Vec<String>,
    /// Every qualifier, sorted by name: the canonical form.
    pub all: Vec<(String, String)>,
}

impl Qualifiers {
    pub fn parse(qualifiers: &[Qualifier]) -> Result<Qualifiers, AssetError> {
        if qualifiers.len() > MAX_QUALIFIERS {
            return Err(AssetError::invalid(format!(
                "{} qualifiers, more than {MAX_QUALIFIERS}",
                qualifiers.len()
            )));
        }
        let mut q = Qualifiers::default();
        let mut seen: Vec<&str> = Vec::new();
        for Qualifier { name, value } in qualifiers {
            if seen.contains(&name.as_str()) {
                return Err(AssetError::invalid(format!(
                    "qualifier {name:?} given twice (names must be unique)"
                )));
            }
            seen.push(name);
            if is_credential(name) {
                // Headers for fetching the URIs: jserve never fetches, and
                // credentials are neither stored nor echoed.
                continue;
            }
            q.all.push((name.clone(), value.clone()));
            match name.as_str() {
                "resource_type" => q.resource_type = Some(value.clone()),
                "vcs.commit" => {
                    if !is_git_id(value) {
                        return Err(AssetError::invalid(format!(
                            "vcs.commit {value:?}: jserve resolves full git commit ids only"
                        )));
                    }
                    q.commit = Some(value.clone());
                }
                "directory" => q.directory = Some(normal_directory(value)?),
                "checksum.sri" => {
                    for part in value.split_whitespace() {
                        q.checksums.push(parse_sri(part)?);
                    }
                    if q.checksums.is_empty() {
                        return Err(AssetError::invalid("checksum.sri without a checksum"));
                    }
                }
                GIT_BLOB_ID => {
                    if !is_git_id(value) {
                        return Err(AssetError::invalid(format!(
                            "{GIT_BLOB_ID} {value:?} is not a git object id"
                        )));
                    }
                    q.git_blob = Some(value.clone());
                }
                // Bazel's name for the content beside its checksum: part of
                // a pushed asset's key, no constraint on what is found.
                "bazel.canonical_id" => {}
                _ => q.unsupported.push(name.clone()),
            }
        }
        q.all.sort();
        Ok(q)
    }

    /// The qualifiers as a message names them: `name=value, …`.
    pub fn describe(&self) -> String {
        if self.all.is_empty() {
            return "no qualifiers".into();
        }
        self.all
            .iter()
            .map(|(n, v)| format!("{n}={v}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Qualifiers carrying HTTP headers (Bazel's `bazel.auth_headers`, the
/// lexicon's `http_header:NAME` and `http_header_url:N:NAME`).
fn is_credential(name: &str) -> bool {
    name == "bazel.auth_headers"
        || name.starts_with("http_header:")
        || name.starts_with("http_header_url:")
}

fn is_git_id(s: &str) -> bool {
    s.len() == 40
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A relative path without `.`/`..` parts or trailing slashes; "" for the root.
fn normal_directory(value: &str) -> Result<String, AssetError> {
    let mut parts = Vec::new();
    for part in value.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                return Err(AssetError::invalid(format!(
                    "directory {value:?} leaves the resource"
                )))
            }
            p => parts.push(p),
        }
    }
    if value.starts_with('/') {
        return Err(AssetError::invalid(format!(
            "directory {value:?} is not relative"
        )));
    }
    Ok(parts.join("/"))
}

fn parse_sri(text: &str) -> Result<Sri, AssetError> {
    let bad = || AssetError::invalid(format!("checksum.sri {text:?} is not ALGORITHM-BASE64"));
    let (algorithm, encoded) = text.split_once('-').ok_or_else(bad)?;
    // Options after a '?' are allowed by SRI and carry nothing here.
    let encoded = encoded.split('?').next().unwrap_or_default();
    let (algorithm, len) = match algorithm {
        "sha256" => (SriAlgorithm::Sha256, 32),
        "sha384" => (SriAlgorithm::Sha384, 48),
        "sha512" => (SriAlgorithm::Sha512, 64),
        other => {
            return Err(AssetError::invalid(format!(
                "checksum.sri algorithm {other:?} is not supported (sha256, sha384, sha512)"
            )))
        }
    };
    let digest = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .map_err(|_| bad())?;
    if digest.len() != len {
        return Err(bad());
    }
    Ok(Sri { algorithm, digest })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(pairs: &[(&str, &str)]) -> Result<Qualifiers, AssetError> {
        let list: Vec<Qualifier> = pairs
            .iter()
            .map(|(n, v)| Qualifier {
                name: n.to_string(),
                value: v.to_string(),
            })
            .collect();
        Qualifiers::parse(&list)
    }

    #[test]
    fn the_lexicon_is_understood() {
        let sha = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
        let sri = format!(
            "sha256-{sha} sha512-{}",
            base64::engine::general_purpose::STANDARD.encode([1u8; 64])
        );
        let parsed = q(&[
            ("vcs.commit", &"a".repeat(40)),
            ("resource_type", "application/x-git"),
            ("directory", "./src//lib/"),
            ("checksum.sri", &sri),
            ("bazel.canonical_id", "x"),
            (
                "bazel.auth_headers",
                r#"{"https://a":{"Authorization":"secret"}}"#,
            ),
            ("http_header:Authorization", "Bearer secret"),
            ("x.other", "y"),
        ])
        .unwrap();
        assert_eq!(parsed.directory.as_deref(), Some("src/lib"));
        assert_eq!(parsed.checksums.len(), 2);
        assert_eq!(
            parsed.checksums[0].sha256_hex(),
            Some(hex::encode([7u8; 32]))
        );
        assert_eq!(parsed.unsupported, ["x.other"]);
        assert_eq!(parsed.all[0].0, "bazel.canonical_id", "sorted by name");
        assert!(
            !parsed.describe().contains("secret"),
            "headers are never kept: {}",
            parsed.describe()
        );
    }

    #[test]
    fn malformed_qualifiers_are_invalid_arguments() {
        for bad in [
            vec![("vcs.commit", "main")],
            vec![("directory", "../up")],
            vec![("directory", "/abs")],
            vec![("checksum.sri", "md5-AAAA")],
            vec![("checksum.sri", "sha256-AAAA")],
            vec![("checksum.sri", " ")],
            vec![(GIT_BLOB_ID, "xyz")],
            vec![("resource_type", "a"), ("resource_type", "b")],
        ] {
            assert!(
                matches!(q(&bad), Err(AssetError::InvalidArgument(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn checksums_match_when_one_does() {
        let data = b"content";
        let good = Sri {
            algorithm: SriAlgorithm::Sha256,
            digest: sha2::Sha256::digest(data).to_vec(),
        };
        let bad = Sri {
            algorithm: SriAlgorithm::Sha512,
            digest: vec![0; 64],
        };
        let both = [bad.clone(), good];
        let mut h = SriHasher::new(&both);
        h.update(data);
        assert!(h.matches(&both));
        let mut h = SriHasher::new(std::slice::from_ref(&bad));
        h.update(data);
        assert!(!h.matches(&[bad]));
    }
}
