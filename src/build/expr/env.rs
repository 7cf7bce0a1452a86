//! Evaluation environments: persistent maps from variable names to values.
//! Updates share the environment they extend, so binding a variable is O(1).

use std::sync::Arc;

use crate::build::value::{Map, Value};

enum Layer {
    Empty,
    Vars(Map, Env),
}

/// A variable environment (the reference's `Configuration`).
#[derive(Clone)]
pub struct Env(Arc<Layer>);

impl Default for Env {
    fn default() -> Env {
        Env::new()
    }
}

impl Env {
    pub fn new() -> Env {
        Env(Arc::new(Layer::Empty))
    }

    /// An environment holding the entries of `map`.
    pub fn from_map(map: Map) -> Env {
        Env::new().update_map(map)
    }

    /// From a map value (anything else gives the empty environment).
    pub fn from_value(v: &Value) -> Env {
        match v.as_map() {
            Some(m) => Env::from_map(m.clone()),
            None => Env::new(),
        }
    }

    /// The value bound to `name` (may be an explicit `null`).
    pub fn get(&self, name: &str) -> Option<&Value> {
        let mut env = self;
        loop {
            match &*env.0 {
                Layer::Empty => return None,
                Layer::Vars(map, next) => {
                    if let Some(v) = map.get(name) {
                        return Some(v);
                    }
                    env = next;
                }
            }
        }
    }

    /// Whether `name` is bound (even to `null`).
    pub fn contains(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// This environment with `name` bound to `value`.
    pub fn update(&self, name: impl Into<String>, value: Value) -> Env {
        let mut m = Map::new();
        m.insert(name.into(), value);
        self.update_map(m)
    }

    /// This environment overlaid with `map` (entries of `map` win).
    pub fn update_map(&self, map: Map) -> Env {
        if map.is_empty() {
            return self.clone();
        }
        Env(Arc::new(Layer::Vars(map, self.clone())))
    }

    /// All bindings, as a map.
    pub fn to_map(&self) -> Map {
        let mut layers = Vec::new();
        let mut env = self;
        while let Layer::Vars(map, next) = &*env.0 {
            layers.push(map);
            env = next;
        }
        let mut out = Map::new();
        for map in layers.into_iter().rev() {
            for (k, v) in map {
                out.insert(k.clone(), v.clone());
            }
        }
        out
    }

    /// All bindings, as a map value.
    pub fn to_value(&self) -> Value {
        Value::map(self.to_map())
    }

    /// The environment restricted to `vars`; unset ones are bound to `null`.
    pub fn prune<S: AsRef<str>>(&self, vars: impl IntoIterator<Item = S>) -> Env {
        let mut m = Map::new();
        for var in vars {
            let var = var.as_ref();
            let v = self.get(var).cloned().unwrap_or_else(Value::null);
            m.insert(var.to_string(), v);
        }
        Env::from_map(m)
    }

    /// One line per variable, `prefix` first, abbreviated to `width`.
    pub fn enumerate(&self, prefix: &str, width: usize) -> String {
        let mut out = String::new();
        if width <= prefix.len() {
            return out;
        }
        let actual = width - prefix.len();
        for (k, v) in self.to_map() {
            let key = Value::string(k).to_json_string();
            out.push_str(prefix);
            if actual > key.len() + 3 {
                out.push_str(&key);
                out.push_str(" : ");
                let remain = actual - key.len() - 3;
                let val = v.to_abbrev_string(remain);
                if val.len() >= remain {
                    out.push_str(truncate_bytes(&val, remain.saturating_sub(3)));
                    out.push_str("...");
                } else {
                    out.push_str(&val);
                }
            } else {
                out.push_str(truncate_bytes(&key, actual));
            }
            out.push('\n');
        }
        out
    }
}

fn truncate_bytes(s: &str, n: usize) -> &str {
    if s.len() <= n {
        return s;
    }
    let mut i = n;
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    &s[..i]
}

impl std::fmt::Debug for Env {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_value().to_json_string())
    }
}
