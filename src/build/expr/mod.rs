//! The expression evaluator of justbuild's build language.
//!
//! [`Evaluator::eval`] evaluates an expression (a [`Value`]) in an [`Env`].
//! Atoms evaluate to themselves, lists element-wise, and maps are function
//! calls selected by their `"type"`. The 51 general built-ins live in
//! `builtins`; callers add context-specific functions (`FIELD`, `ACTION`, …)
//! through the [`Functions`] trait, which is consulted before the built-ins
//! and so shadows them.

mod builtins;
mod env;
mod error;
pub mod path;

pub use builtins::BUILTIN_NAMES;
pub use env::Env;
pub use error::EvalError;

use crate::build::value::{Kind, Value};

/// Context-specific functions. `call` returns `None` when `name` is not one
/// of them (then the built-ins are tried).
pub trait Functions {
    fn call(
        &self,
        name: &str,
        ev: &Evaluator<'_>,
        expr: &Value,
        env: &Env,
    ) -> Option<Result<Value, EvalError>>;
}

/// Two sets of functions, `first` shadowing `second` (e.g. an imported
/// expression's own `CALL_EXPRESSION` over its caller's rule functions).
#[derive(Clone, Copy)]
pub struct Layered<'a> {
    pub first: &'a dyn Functions,
    pub second: Option<&'a dyn Functions>,
}

impl Functions for Layered<'_> {
    fn call(
        &self,
        name: &str,
        ev: &Evaluator<'_>,
        expr: &Value,
        env: &Env,
    ) -> Option<Result<Value, EvalError>> {
        self.first
            .call(name, ev, expr, env)
            .or_else(|| self.second.and_then(|s| s.call(name, ev, expr, env)))
    }
}

/// A function that can be registered in a [`FunctionMap`].
pub type Function =
    std::sync::Arc<dyn Fn(&Evaluator<'_>, &Value, &Env) -> Result<Value, EvalError> + Send + Sync>;

/// A simple table of extra functions.
#[derive(Default, Clone)]
pub struct FunctionMap(std::collections::HashMap<String, Function>);

impl FunctionMap {
    pub fn new() -> FunctionMap {
        FunctionMap::default()
    }
    pub fn insert(
        &mut self,
        name: impl Into<String>,
        f: impl Fn(&Evaluator<'_>, &Value, &Env) -> Result<Value, EvalError> + Send + Sync + 'static,
    ) {
        self.0.insert(name.into(), std::sync::Arc::new(f));
    }
}

impl Functions for FunctionMap {
    fn call(
        &self,
        name: &str,
        ev: &Evaluator<'_>,
        expr: &Value,
        env: &Env,
    ) -> Option<Result<Value, EvalError>> {
        self.0.get(name).map(|f| f(ev, expr, env))
    }
}

/// Evaluates expressions with the built-ins plus optional extra functions.
#[derive(Clone, Copy, Default)]
pub struct Evaluator<'a> {
    extra: Option<&'a dyn Functions>,
}

impl<'a> Evaluator<'a> {
    /// Only the 51 general built-ins.
    pub fn new() -> Evaluator<'static> {
        Evaluator { extra: None }
    }

    /// Built-ins plus `extra` (which shadows built-ins of the same name).
    pub fn with_functions(extra: &'a dyn Functions) -> Evaluator<'a> {
        Evaluator { extra: Some(extra) }
    }

    /// The extra functions, e.g. to delegate to from a wrapping [`Functions`].
    pub fn functions(&self) -> Option<&'a dyn Functions> {
        self.extra
    }

    /// Evaluates `expr` in `env`. Errors carry the trace of enclosing
    /// expressions unless they are user errors.
    pub fn eval(&self, expr: &Value, env: &Env) -> Result<Value, EvalError> {
        match expr.kind() {
            Kind::List(items) => {
                if items.is_empty() {
                    return Ok(expr.clone());
                }
                let mut out = Vec::with_capacity(items.len());
                for item in items {
                    out.push(self.eval(item, env).map_err(|e| e.in_expr(expr, env))?);
                }
                Ok(Value::list(out))
            }
            Kind::Map(map) => {
                let result = match map.get("type") {
                    None => Err(EvalError::new(format!(
                        "Object without keyword 'type': {}",
                        expr.to_json_string()
                    ))),
                    Some(t) => match t.as_str() {
                        None => Err(EvalError::type_error("string", t)),
                        Some(name) => self.call(name, expr, env),
                    },
                };
                result.map_err(|e| e.in_expr(expr, env))
            }
            _ => Ok(expr.clone()),
        }
    }

    fn call(&self, name: &str, expr: &Value, env: &Env) -> Result<Value, EvalError> {
        if let Some(extra) = self.extra {
            if let Some(result) = extra.call(name, self, expr, env) {
                return result;
            }
        }
        match builtins::lookup(name) {
            Some(f) => f(self, expr, env),
            None => Err(EvalError::new(format!(
                "Unknown syntactical construct {name}"
            ))),
        }
    }

    /// Evaluates the argument `key` of the call `expr`; a missing argument
    /// is an error. Failures note the argument's name.
    pub fn eval_arg(&self, expr: &Value, key: &str, env: &Env) -> Result<Value, EvalError> {
        required(expr, key)
            .and_then(|arg| self.eval(arg, env))
            .map_err(|e| e.with_note(format!("Evaluating argument {key}:")))
    }

    /// Evaluates the argument `key` if present, else `default` (an
    /// expression, evaluated too).
    pub fn eval_or(
        &self,
        expr: &Value,
        key: &str,
        default: Value,
        env: &Env,
    ) -> Result<Value, EvalError> {
        match expr.get(key) {
            Some(arg) => self.eval(arg, env),
            None => self.eval(&default, env),
        }
    }
}

/// The argument `key` of a call, unevaluated; missing is an error.
pub fn required<'v>(expr: &'v Value, key: &str) -> Result<&'v Value, EvalError> {
    expr.get(key)
        .ok_or_else(|| EvalError::type_error_msg(format!("Map does not contain key '{key}'.")))
}

/// Converts a value to a string or fails with a type error.
pub fn expect_str(v: &Value) -> Result<&str, EvalError> {
    v.as_str().ok_or_else(|| EvalError::type_error("string", v))
}

/// Converts a value to a list or fails with a type error.
pub fn expect_list(v: &Value) -> Result<&[Value], EvalError> {
    v.as_list().ok_or_else(|| EvalError::type_error("list", v))
}

/// Converts a value to a map or fails with a type error.
pub fn expect_map(v: &Value) -> Result<&crate::build::value::Map, EvalError> {
    v.as_map().ok_or_else(|| EvalError::type_error("map", v))
}

/// Whether `name` is one of the 51 general built-ins.
pub fn is_builtin(name: &str) -> bool {
    builtins::lookup(name).is_some()
}

/// Convenience: evaluate `expr` with only the built-ins in `env`.
pub fn evaluate(expr: &Value, env: &Env) -> Result<Value, EvalError> {
    Evaluator::new().eval(expr, env)
}
