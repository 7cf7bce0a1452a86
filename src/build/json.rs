//! JSON text exactly as justbuild writes it (nlohmann::json's `dump()` and
//! `dump(2)`): sorted keys, numbers as doubles in nlohmann's style (`3` prints
//! `3.0`, `1e15` prints `1e+15`), only the necessary string escapes. Target-cache
//! keys, repository keys and cache entries are hashed from this text, so it
//! must match byte for byte.

use serde_json::Value;

/// How numbers print. Numbers of the build language are doubles (nlohmann
/// prints `3.0`); JSON justbuild builds itself, like artifact descriptions,
/// holds integers (printed `3`). `AsStored` prints serde_json integers as
/// integers and floats as doubles, so each kind keeps its own style.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Numbers {
    Doubles,
    AsStored,
}

/// Compact form, like nlohmann's `dump()`, every number as a double.
pub fn dump_compact(v: &Value) -> String {
    let mut out = String::new();
    write_value(&mut out, v, None, 0, Numbers::Doubles);
    out
}

/// Pretty form with two-space indent, like nlohmann's `dump(2)`, every number as a double.
pub fn dump_pretty(v: &Value) -> String {
    let mut out = String::new();
    write_value(&mut out, v, Some(2), 0, Numbers::Doubles);
    out
}

/// Compact form where serde_json integers stay integers (floats print as doubles).
pub fn dump_compact_as_stored(v: &Value) -> String {
    let mut out = String::new();
    write_value(&mut out, v, None, 0, Numbers::AsStored);
    out
}

/// Pretty form (two-space indent) where serde_json integers stay integers.
pub fn dump_pretty_as_stored(v: &Value) -> String {
    let mut out = String::new();
    write_value(&mut out, v, Some(2), 0, Numbers::AsStored);
    out
}

fn write_value(out: &mut String, v: &Value, indent: Option<usize>, level: usize, numbers: Numbers) {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) if numbers == Numbers::AsStored && (n.is_i64() || n.is_u64()) => {
            out.push_str(&n.to_string())
        }
        Value::Number(n) => out.push_str(&format_double(n.as_f64().unwrap_or(f64::NAN))),
        Value::String(s) => write_string(out, s),
        Value::Array(items) => {
            if items.is_empty() {
                out.push_str("[]");
                return;
            }
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                newline(out, indent, level + 1);
                write_value(out, item, indent, level + 1, numbers);
            }
            newline(out, indent, level);
            out.push(']');
        }
        Value::Object(map) => {
            if map.is_empty() {
                out.push_str("{}");
                return;
            }
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
            out.push('{');
            for (i, key) in keys.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                newline(out, indent, level + 1);
                write_string(out, key);
                out.push_str(if indent.is_some() { ": " } else { ":" });
                write_value(out, &map[key.as_str()], indent, level + 1, numbers);
            }
            newline(out, indent, level);
            out.push('}');
        }
    }
}

fn newline(out: &mut String, indent: Option<usize>, level: usize) {
    if let Some(width) = indent {
        out.push('\n');
        out.extend(std::iter::repeat_n(' ', width * level));
    }
}

/// Strings: `"` and `\` escaped, control characters as `\b \f \n \r \t` or
/// `\u00xx`; everything else, UTF-8 included, as is.
pub fn write_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// A double the way nlohmann prints it: shortest round-trip digits, fixed
/// notation for decimal exponents in (-4, 15], `.0` on integral values,
/// otherwise `d.ddde±XX`; non-finite values print `null`.
pub fn format_double(x: f64) -> String {
    if !x.is_finite() {
        return "null".to_string();
    }
    if x == 0.0 {
        return if x.is_sign_negative() { "-0.0" } else { "0.0" }.to_string();
    }
    // Rust's `{:e}` gives the shortest round-trip digits: "d.ddde<exp>".
    let sci = format!("{:e}", x.abs());
    let (mantissa, exp) = sci.split_once('e').expect("scientific notation");
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let exp: i32 = exp.parse().expect("exponent");
    let k = digits.len() as i32;
    // value = 0.d1..dk * 10^n
    let n = exp + 1;
    let mut out = String::new();
    if x.is_sign_negative() {
        out.push('-');
    }
    if k <= n && n <= 15 {
        out.push_str(&digits);
        out.extend(std::iter::repeat_n('0', (n - k) as usize));
        out.push_str(".0");
    } else if 0 < n && n <= 15 {
        out.push_str(&digits[..n as usize]);
        out.push('.');
        out.push_str(&digits[n as usize..]);
    } else if -4 < n && n <= 0 {
        out.push_str("0.");
        out.extend(std::iter::repeat_n('0', (-n) as usize));
        out.push_str(&digits);
    } else {
        out.push_str(&digits[..1]);
        if k > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        let e = n - 1;
        out.push('e');
        out.push(if e < 0 { '-' } else { '+' });
        out.push_str(&format!("{:02}", e.abs()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn doubles_print_like_nlohmann() {
        let cases = [
            (3.0, "3.0"),
            (-0.0, "-0.0"),
            (0.0, "0.0"),
            (1.5, "1.5"),
            (0.1, "0.1"),
            (100.0, "100.0"),
            (123456789012345.0, "123456789012345.0"),
            (1e15, "1e+15"),
            (1.5e15, "1.5e+15"),
            (1e16, "1e+16"),
            (0.001, "0.001"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (1.25e-7, "1.25e-07"),
            (-2.5, "-2.5"),
            (1e100, "1e+100"),
            (123.456, "123.456"),
            (f64::NAN, "null"),
        ];
        for (x, want) in cases {
            assert_eq!(format_double(x), want, "{x}");
        }
    }

    #[test]
    fn compact_and_pretty() {
        let v = json!({"b": [1, "x", {}], "a": {"z": null, "y": true}, "c": []});
        assert_eq!(
            dump_compact(&v),
            r#"{"a":{"y":true,"z":null},"b":[1.0,"x",{}],"c":[]}"#
        );
        assert_eq!(
            dump_pretty(&v),
            "{\n  \"a\": {\n    \"y\": true,\n    \"z\": null\n  },\n  \"b\": [\n    1.0,\n    \"x\",\n    {}\n  ],\n  \"c\": []\n}"
        );
    }

    #[test]
    fn strings_escape_only_what_json_needs() {
        let v = json!("quote\" back\\ nl\n tab\t bell\u{7} ü / é");
        assert_eq!(
            dump_compact(&v),
            "\"quote\\\" back\\\\ nl\\n tab\\t bell\\u0007 ü / é\""
        );
    }

    #[test]
    fn stored_integers_stay_integers() {
        let v = json!({"size": 3, "x": 0.5, "d": serde_json::Number::from_f64(3.0)});
        assert_eq!(dump_compact_as_stored(&v), r#"{"d":3.0,"size":3,"x":0.5}"#);
        assert_eq!(dump_compact(&v), r#"{"d":3.0,"size":3.0,"x":0.5}"#);
    }

    #[test]
    fn keys_sort_bytewise() {
        let v = json!({"b": 1, "B": 2, "a": 3, "_": 4});
        assert_eq!(dump_compact(&v), r#"{"B":2.0,"_":4.0,"a":3.0,"b":1.0}"#);
    }
}
