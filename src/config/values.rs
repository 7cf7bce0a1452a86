//! Typed readers of single JSON values; each error names its key path.

use super::*;

pub(super) fn invalid(key: &KeyPath, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.clone(),
        message: message.into(),
    }
}

pub(super) fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a flag",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

pub(super) fn wrong_type(v: &Value, key: &KeyPath, expected: &str) -> ConfigError {
    invalid(key, format!("expected {expected}, found {}", type_name(v)))
}

/// A JSON object being read: remembers which keys were used, to warn about the rest.
pub(super) struct Obj<'a> {
    pub(super) path: KeyPath,
    map: &'a Map<String, Value>,
    used: Vec<&'static str>,
}

impl<'a> Obj<'a> {
    pub(super) fn new(v: &'a Value, path: KeyPath) -> Result<Obj<'a>, ConfigError> {
        match v {
            Value::Object(map) => Ok(Obj {
                path,
                map,
                used: Vec::new(),
            }),
            _ => Err(wrong_type(v, &path, "an object")),
        }
    }

    /// The value under `key`; `null` counts as absent, as in justbuild.
    pub(super) fn get(&mut self, key: &'static str) -> Option<(KeyPath, &'a Value)> {
        self.used.push(key);
        match self.map.get(key) {
            None | Some(Value::Null) => None,
            Some(v) => Some((self.path.child(key), v)),
        }
    }

    pub(super) fn location(
        &mut self,
        key: &'static str,
        env: &Environment,
    ) -> Result<Option<PathBuf>, ConfigError> {
        self.get(key).map(|(k, v)| location(v, &k, env)).transpose()
    }

    pub(super) fn finish(self, warnings: &mut Vec<String>) {
        for key in self.map.keys() {
            if !self.used.contains(&key.as_str()) {
                warnings.push(format!(
                    "unknown config key {} is ignored",
                    self.path.child(key.clone())
                ));
            }
        }
    }
}

pub(super) fn list<'a>(v: &'a Value, key: &KeyPath) -> Result<&'a Vec<Value>, ConfigError> {
    v.as_array().ok_or_else(|| wrong_type(v, key, "a list"))
}

pub(super) fn string(v: &Value, key: &KeyPath) -> Result<String, ConfigError> {
    v.as_str()
        .map(str::to_string)
        .ok_or_else(|| wrong_type(v, key, "a string"))
}

pub(super) fn flag(v: &Value, key: &KeyPath) -> Result<bool, ConfigError> {
    v.as_bool().ok_or_else(|| wrong_type(v, key, "a flag"))
}

pub(super) fn integer(v: &Value, key: &KeyPath, min: i64, max: i64) -> Result<i64, ConfigError> {
    let n = v.as_f64().ok_or_else(|| wrong_type(v, key, "a number"))?;
    if n.fract() != 0.0 {
        return Err(invalid(key, format!("expected a whole number, found {v}")));
    }
    if n < min as f64 || n > max as f64 {
        return Err(invalid(
            key,
            format!("{v} is out of range ({min} to {max})"),
        ));
    }
    Ok(n as i64)
}

pub(super) fn seconds(v: &Value, key: &KeyPath, zero_ok: bool) -> Result<Duration, ConfigError> {
    let n = v.as_f64().ok_or_else(|| wrong_type(v, key, "a number"))?;
    if !n.is_finite() || n < 0.0 || (!zero_ok && n == 0.0) || n > 1e9 {
        let what = if zero_ok {
            "zero or more"
        } else {
            "more than zero"
        };
        return Err(invalid(key, format!("expected {what} seconds, found {v}")));
    }
    Ok(Duration::from_secs_f64(n))
}

pub(super) fn log_level(v: &Value, key: &KeyPath) -> Result<u8, ConfigError> {
    let n = v.as_f64().ok_or_else(|| wrong_type(v, key, "a number"))?;
    Ok(n.round().clamp(0.0, 6.0) as u8)
}

pub(super) fn address(v: &Value, key: &KeyPath) -> Result<Address, ConfigError> {
    Address::parse(&string(v, key)?).map_err(|m| invalid(key, m))
}

/// Resolves a location object `{"root": "home"|"system", "path": P, "base"?: B}`.
pub(super) fn location(
    v: &Value,
    key: &KeyPath,
    env: &Environment,
) -> Result<PathBuf, ConfigError> {
    let mut o = Obj::new(v, key.clone())?;
    let root =
        match o.get("root") {
            Some((k, v)) => match string(v, &k)?.as_str() {
                "home" => env
                    .home
                    .clone()
                    .ok_or_else(|| invalid(&k, "root \"home\" needs HOME to be set"))?,
                "system" => PathBuf::from("/"),
                "workspace" => return Err(invalid(
                    &k,
                    "root \"workspace\" has no meaning for a server (use \"home\" or \"system\")",
                )),
                other => {
                    return Err(invalid(
                        &k,
                        format!("unknown root {other:?} (expected \"home\" or \"system\")"),
                    ))
                }
            },
            None => return Err(invalid(&key.child("root"), "missing")),
        };
    let path = match o.get("path") {
        Some((k, v)) => string(v, &k)?,
        None => return Err(invalid(&key.child("path"), "missing")),
    };
    // "base" only matters for config files with relative paths inside; accepted for compatibility.
    if let Some((k, v)) = o.get("base") {
        string(v, &k)?;
    }
    let mut ignored = Vec::new();
    o.finish(&mut ignored);
    Ok(normalize(&root.join(path)))
}

/// Lexically removes `.` and `..` components.
pub(super) fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}
