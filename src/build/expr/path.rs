//! Lexical path operations with the semantics of C++ `std::filesystem::path`
//! on POSIX (as the reference uses them): `lexically_normal`, `/`,
//! `filename`, `parent_path`, `stem`, `lexically_relative`.

/// The elements of a path as `std::filesystem::path` iterates them: a
/// leading `/` (root directory), then the file names; a trailing separator
/// yields a final empty element.
fn elements(p: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = p;
    if rest.starts_with('/') {
        out.push("/");
        rest = rest.trim_start_matches('/');
    }
    if rest.is_empty() {
        return out;
    }
    let trailing = rest.ends_with('/');
    for part in rest.split('/').filter(|s| !s.is_empty()) {
        out.push(part);
    }
    if trailing {
        out.push("");
    }
    out
}

/// `std::filesystem::path::lexically_normal`.
pub fn lexically_normal(p: &str) -> String {
    if p.is_empty() {
        return String::new();
    }
    if p.bytes().all(|b| b == b'/') {
        // libstdc++ keeps a root made of several separators as is
        return p.to_string();
    }
    let root = p.starts_with('/');
    let mut stack: Vec<&str> = Vec::new();
    let mut trailing = false;
    for part in p.split('/').filter(|s| !s.is_empty()) {
        match part {
            "." => trailing = true,
            ".." => {
                if matches!(stack.last(), Some(top) if *top != "..") {
                    stack.pop();
                    trailing = true;
                } else if root && stack.is_empty() {
                    trailing = false;
                } else {
                    stack.push("..");
                    trailing = false;
                }
            }
            name => {
                stack.push(name);
                trailing = false;
            }
        }
    }
    if p.ends_with('/') && !stack.is_empty() {
        trailing = true;
    }
    if stack.last() == Some(&"..") {
        trailing = false;
    }
    let mut out = String::new();
    if root {
        out.push('/');
    }
    out.push_str(&stack.join("/"));
    if trailing && !stack.is_empty() {
        out.push('/');
    }
    if out.is_empty() {
        out.push('.');
    }
    out
}

/// The reference's `ToNormalPath`: lexically normal, without a trailing
/// separator, `"."` for the empty path.
pub fn to_normal_path(p: &str) -> String {
    let n = lexically_normal(p);
    let n = if has_filename(&n) {
        n
    } else {
        parent_path(&n).to_string()
    };
    if n.is_empty() {
        ".".to_string()
    } else {
        n
    }
}

/// `std::filesystem::path::operator/`.
pub fn join(base: &str, rel: &str) -> String {
    if rel.starts_with('/') {
        return rel.to_string();
    }
    if base.is_empty() {
        return rel.to_string();
    }
    if has_filename(base) {
        format!("{base}/{rel}")
    } else {
        format!("{base}{rel}")
    }
}

fn has_filename(p: &str) -> bool {
    !p.is_empty() && !p.ends_with('/')
}

/// `std::filesystem::path::filename`.
pub fn filename(p: &str) -> &str {
    if !has_filename(p) {
        return "";
    }
    match p.rfind('/') {
        Some(i) => &p[i + 1..],
        None => p,
    }
}

/// `std::filesystem::path::parent_path`.
pub fn parent_path(p: &str) -> &str {
    let rel = p.trim_start_matches('/');
    if rel.is_empty() {
        // no relative part: the path itself
        return p;
    }
    let root_len = p.len() - rel.len();
    // position of the last element
    let last_start = if p.ends_with('/') {
        p.len()
    } else {
        p.rfind('/').map(|i| i + 1).unwrap_or(0)
    };
    if last_start <= root_len {
        // the last element is the first one after the root
        return &p[..root_len.min(1)];
    }
    // the previous element ends before the separators preceding the last
    let before = p[..last_start].trim_end_matches('/');
    if before.len() < root_len {
        &p[..1]
    } else {
        before
    }
}

/// `std::filesystem::path::stem`.
pub fn stem(p: &str) -> &str {
    let f = filename(p);
    if f == "." || f == ".." {
        return f;
    }
    match f.rfind('.') {
        Some(0) | None => f,
        Some(i) => &f[..i],
    }
}

/// `std::filesystem::path::lexically_relative`.
pub fn lexically_relative(p: &str, base: &str) -> String {
    let p_abs = p.starts_with('/');
    let b_abs = base.starts_with('/');
    if p_abs != b_abs {
        return String::new();
    }
    let pe = elements(p);
    let be = elements(base);
    let mut i = 0;
    while i < pe.len() && i < be.len() && pe[i] == be[i] {
        i += 1;
    }
    if i == pe.len() && i == be.len() {
        return ".".to_string();
    }
    let mut n: i64 = 0;
    for e in &be[i..] {
        match *e {
            ".." => n -= 1,
            "." | "" => {}
            _ => n += 1,
        }
    }
    if n < 0 {
        return String::new();
    }
    if n == 0 && (i == pe.len() || pe[i].is_empty()) {
        return ".".to_string();
    }
    let mut out = String::new();
    for _ in 0..n {
        out = join(&out, "..");
    }
    for e in &pe[i..] {
        out = join(&out, e);
    }
    out
}

/// Relative, and its normal form does not start with `..`.
pub fn is_non_upwards(p: &str) -> bool {
    if p.starts_with('/') {
        return false;
    }
    let n = lexically_normal(p);
    n.split('/').next() != Some("..")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal() {
        for (p, want) in [
            ("", ""),
            (".", "."),
            ("./", "."),
            ("a/", "a/"),
            ("a/.", "a/"),
            ("a/..", "."),
            ("a/b/..", "a/"),
            ("../a", "../a"),
            ("a/../../b", "../b"),
            ("../", ".."),
            ("/..", "/"),
            ("/../a", "/a"),
            ("a//b", "a/b"),
            ("./a/./b/", "a/b/"),
        ] {
            assert_eq!(lexically_normal(p), want, "{p:?}");
        }
        assert_eq!(to_normal_path("a/b/.."), "a");
        assert_eq!(to_normal_path(""), ".");
        assert_eq!(to_normal_path("/"), "/");
    }

    #[test]
    fn parts() {
        assert_eq!(parent_path("a/b.c"), "a");
        assert_eq!(parent_path("b.c"), "");
        assert_eq!(parent_path("/b.c"), "/");
        assert_eq!(parent_path("a/b/"), "a/b");
        assert_eq!(parent_path("a//b"), "a");
        assert_eq!(parent_path("/"), "/");
        assert_eq!(stem("a/x.tar.gz"), "x.tar");
        assert_eq!(stem(".rc"), ".rc");
        assert_eq!(stem("foo."), "foo");
        assert_eq!(filename("a/b/"), "");
        assert_eq!(join("a/b", ""), "a/b/");
        assert_eq!(join("", ""), "");
    }

    #[test]
    fn relative() {
        assert_eq!(lexically_relative("sub/a", "sub"), "a");
        assert_eq!(lexically_relative("sub", "sub"), ".");
        assert_eq!(lexically_relative("a", "sub"), "../a");
        assert_eq!(lexically_relative("a", ".."), "");
        assert_eq!(lexically_relative("/a", "."), "");
        assert_eq!(lexically_relative("sub/a", "sub/"), "a");
    }

    /// Expected values printed by libstdc++'s std::filesystem.
    #[test]
    fn matches_libstdcxx() {
        check_n("", "", ".", "", "", "");
        check_n(".", ".", ".", "", ".", ".");
        check_n(" ./", " ./", " .", " .", "", "");
        check_n("a/", "a/", "a", "a", "", "");
        check_n("a/.", "a/", "a", "a", ".", ".");
        check_n("a/..", ".", ".", "a", "..", "..");
        check_n("a/b/..", "a/", "a", "a/b", "..", "..");
        check_n("../a", "../a", "../a", "..", "a", "a");
        check_n("a/../../b", "../b", "../b", "a/../..", "b", "b");
        check_n("../", "..", "..", "..", "", "");
        check_n("/..", "/", "/", "/", "..", "..");
        check_n("/../a", "/a", "/a", "/..", "a", "a");
        check_n("a//b", "a/b", "a/b", "a", "b", "b");
        check_n("./a/./b/", "a/b/", "a/b", "./a/./b", "", "");
        check_n("/", "/", "/", "/", "", "");
        check_n("//", "//", "//", "//", "", "");
        check_n("a/b/../.", "a/", "a", "a/b/..", ".", ".");
        check_n("..", "..", "..", "", "..", "..");
        check_n("../..", "../..", "../..", "..", "..", "..");
        check_n("a/./", "a/", "a", "a/.", "", "");
        check_n("x/../", ".", ".", "x/..", "", "");
        check_n("/a/b/", "/a/b/", "/a/b", "/a/b", "", "");
        check_n("a//", "a/", "a", "a", "", "");
        check_n("a/b.c", "a/b.c", "a/b.c", "a", "b", "b.c");
        check_n("b.c", "b.c", "b.c", "", "b", "b.c");
        check_n("/b.c", "/b.c", "/b.c", "/", "b", "b.c");
        check_n("a/b/", "a/b/", "a/b", "a/b", "", "");
        check_n("a//b.c", "a/b.c", "a/b.c", "a", "b", "b.c");
        check_n("foo.", "foo.", "foo.", "", "foo", "foo.");
        check_n(".rc", ".rc", ".rc", "", ".rc", ".rc");
        check_n("a.tar.gz", "a.tar.gz", "a.tar.gz", "", "a.tar", "a.tar.gz");
        check_n("..", "..", "..", "", "..", "..");
        check_n(".", ".", ".", "", ".", ".");
        check_n("/x", "/x", "/x", "/", "x", "x");
        assert_eq!(lexically_relative("sub/a", "sub"), "a", "rel sub/a sub");
        assert_eq!(lexically_relative("sub", "sub"), ".", "rel sub sub");
        assert_eq!(lexically_relative("a", "sub"), "../a", "rel a sub");
        assert_eq!(lexically_relative("a", ".."), "", "rel a ..");
        assert_eq!(lexically_relative("/a", "."), "", "rel /a .");
        assert_eq!(lexically_relative("sub/a", "sub/"), "a", "rel sub/a sub/");
        assert_eq!(lexically_relative("a", "."), "a", "rel a .");
        assert_eq!(lexically_relative("./a", "."), "a", "rel ./a .");
        assert_eq!(lexically_relative("a", "../b"), "a", "rel a ../b");
        assert_eq!(lexically_relative("s/./a", "s"), "./a", "rel s/./a s");
        assert_eq!(lexically_relative("sub/", "sub"), ".", "rel sub/ sub");
        assert_eq!(lexically_relative("a/b", "a/b/c"), "..", "rel a/b a/b/c");
        assert_eq!(lexically_relative("x", "./"), "x", "rel x ./");
        assert_eq!(lexically_relative("", "."), ".", "rel  .");
        assert_eq!(lexically_relative(".", "."), ".", "rel . .");
        assert_eq!(lexically_relative("a/b", "./a"), "../a/b", "rel a/b ./a");
        assert_eq!(lexically_relative("sub//a", "sub"), "a", "rel sub//a sub");
        assert_eq!(join("a/b", ""), "a/b/");
        assert_eq!(join("", ""), "");
        assert_eq!(join("", "a"), "a");
        assert_eq!(join("a/", "b"), "a/b");
        assert_eq!(join("a", "/b"), "/b");
        assert_eq!(join("/", ""), "/");
        assert_eq!(join(".", "a"), "./a");
    }

    fn check_n(p: &str, normal: &str, to_normal: &str, parent: &str, st: &str, file: &str) {
        assert_eq!(lexically_normal(p), normal, "normal {p:?}");
        assert_eq!(to_normal_path(p), to_normal, "to_normal {p:?}");
        assert_eq!(parent_path(p), parent, "parent {p:?}");
        assert_eq!(stem(p), st, "stem {p:?}");
        assert_eq!(filename(p), file, "filename {p:?}");
    }
}
