//! Evaluation errors: the innermost message plus the trace of enclosing
//! expressions (most recent call last when rendered). User errors (`fail`,
//! `assert*`, `context`, conflicts reported with a user `msg`) carry no trace.

use std::fmt;

use super::env::Env;
use crate::build::value::Value;

/// How many characters of an expression or variable value a trace shows.
pub const EXPRESSION_LOG_LIMIT: usize = 320;

#[derive(Clone)]
enum Frame {
    /// Evaluating this expression in this environment.
    Expr(Value, Env),
    /// A note such as "Evaluating argument $1:".
    Note(String),
}

/// An error of expression evaluation.
#[derive(Clone, thiserror::Error)]
pub struct EvalError {
    /// The innermost message, with its `EvaluationError: ` / `UserError: `
    /// prefix.
    message: String,
    /// Enclosing frames, innermost first.
    frames: Vec<Frame>,
    user: bool,
    involved: Vec<Value>,
}

impl EvalError {
    /// A plain evaluation error.
    pub fn new(msg: impl fmt::Display) -> EvalError {
        EvalError {
            message: format!("EvaluationError: {msg}"),
            frames: Vec::new(),
            user: false,
            involved: Vec::new(),
        }
    }

    /// A user error (`fail`, `assert`, …): never gets a trace.
    pub fn user(msg: impl fmt::Display) -> EvalError {
        EvalError {
            message: format!("UserError: {msg}"),
            frames: Vec::new(),
            user: true,
            involved: Vec::new(),
        }
    }

    /// A user error whose text is taken as is (`context`).
    pub fn user_raw(msg: impl Into<String>) -> EvalError {
        EvalError {
            message: msg.into(),
            frames: Vec::new(),
            user: true,
            involved: Vec::new(),
        }
    }

    /// A value of the wrong kind.
    pub fn type_error(wanted: &str, got: &Value) -> EvalError {
        EvalError::type_error_msg(format!(
            "Expression is not of type '{wanted}' but '{}'.",
            got.type_name()
        ))
    }

    pub(crate) fn type_error_msg(msg: impl fmt::Display) -> EvalError {
        EvalError {
            message: format!("ExpressionTypeError: {msg}"),
            frames: Vec::new(),
            user: false,
            involved: Vec::new(),
        }
    }

    /// Adds objects the error is about (e.g. conflicting artifacts), for
    /// callers that annotate them.
    pub fn with_involved(mut self, objects: Vec<Value>) -> EvalError {
        self.involved.extend(objects);
        self
    }

    /// Records that the error happened while evaluating `expr` in `env`.
    pub fn in_expr(mut self, expr: &Value, env: &Env) -> EvalError {
        if !self.user {
            self.frames.push(Frame::Expr(expr.clone(), env.clone()));
        }
        self
    }

    /// Adds a note line ("Evaluating the body:") to the trace.
    pub fn with_note(mut self, note: impl Into<String>) -> EvalError {
        if !self.user {
            self.frames.push(Frame::Note(note.into()));
        }
        self
    }

    /// Whether this is a user error (no trace).
    pub fn is_user_error(&self) -> bool {
        self.user
    }

    /// The innermost message, with its prefix.
    pub fn message(&self) -> &str {
        &self.message
    }

    pub fn involved_objects(&self) -> &[Value] {
        &self.involved
    }

    /// The trace rendered as the reference does (without the leading
    /// "traceback" line).
    pub fn render_body(&self) -> String {
        let mut out = String::new();
        for frame in self.frames.iter().rev() {
            match frame {
                Frame::Note(n) => {
                    out.push_str(n);
                    out.push('\n');
                }
                Frame::Expr(expr, env) => {
                    out.push_str("* ");
                    if let Some(t) = expr.get("type").and_then(Value::as_str) {
                        out.push_str(&Value::string(t).to_json_string());
                        out.push_str("-expression ");
                    }
                    out.push_str(&expr.to_abbrev_string(EXPRESSION_LOG_LIMIT));
                    out.push_str("\n  environment \n");
                    out.push_str(&env.enumerate("  - ", EXPRESSION_LOG_LIMIT));
                    out.push('\n');
                }
            }
        }
        out.push_str(&self.message);
        out
    }
}

impl fmt::Display for EvalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.user && !self.frames.is_empty() {
            writeln!(
                f,
                "Expression evaluation traceback (most recent call last):"
            )?;
        }
        f.write_str(&self.render_body())
    }
}

impl fmt::Debug for EvalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}
