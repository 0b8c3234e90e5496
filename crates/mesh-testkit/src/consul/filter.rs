//! The part of Consul's filter language (`?filter=`, go-bexpr) that service
//! discovery uses, evaluated against a health entry's JSON:
//!
//! - `Selector == "v"`, `Selector != "v"`, `Selector contains "v"`,
//!   `Selector not contains "v"`, `"v" in Selector`, `"v" not in Selector`,
//!   `Selector is empty`, `Selector is not empty`;
//! - `and`, `or`, `not`, parentheses;
//! - selectors such as `Service.Tags`, `Service.Meta.version`, `Node.Node`,
//!   `Service.Port`; values quoted (`"v2"`) or bare (`v2`, `8080`).
//!
//! A selector must start with `Node`, `Service` or `Checks`; anything else is
//! a 400, as in Consul.

use serde_json::Value;

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Filter {
    Or(Box<Filter>, Box<Filter>),
    And(Box<Filter>, Box<Filter>),
    Not(Box<Filter>),
    Eq(Vec<String>, String),
    Contains(Vec<String>, String),
    Empty(Vec<String>),
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Word(String),
    Quoted(String),
    Op(&'static str),
    Open,
    Close,
}

fn lex(s: &str) -> Result<Vec<Tok>, String> {
    let mut out = Vec::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b' ' | b'\t' | b'\n' => i += 1,
            b'(' => {
                out.push(Tok::Open);
                i += 1;
            }
            b')' => {
                out.push(Tok::Close);
                i += 1;
            }
            b'=' if b.get(i + 1) == Some(&b'=') => {
                out.push(Tok::Op("=="));
                i += 2;
            }
            b'!' if b.get(i + 1) == Some(&b'=') => {
                out.push(Tok::Op("!="));
                i += 2;
            }
            q @ (b'"' | b'`') => {
                let end = s[i + 1..].find(q as char).ok_or("unterminated string")?;
                out.push(Tok::Quoted(s[i + 1..i + 1 + end].replace("\\\"", "\"")));
                i += end + 2;
            }
            _ => {
                let end = s[i..]
                    .find(|c: char| c.is_whitespace() || "()\"=!".contains(c))
                    .map_or(s.len(), |e| i + e);
                if end == i {
                    return Err(format!("unexpected character {:?}", b[i] as char));
                }
                out.push(Tok::Word(s[i..end].to_owned()));
                i = end;
            }
        }
    }
    Ok(out)
}

struct Parser {
    toks: Vec<Tok>,
    at: usize,
    /// The selectors' valid first parts.
    roots: &'static [&'static str],
}

impl Parser {
    fn peek_word(&self, w: &str) -> bool {
        matches!(self.toks.get(self.at), Some(Tok::Word(x)) if x == w)
    }

    fn peek_word_at(&self, off: usize, w: &str) -> bool {
        matches!(self.toks.get(self.at + off), Some(Tok::Word(x)) if x == w)
    }

    fn or(&mut self) -> Result<Filter, String> {
        let mut left = self.and()?;
        while self.peek_word("or") {
            self.at += 1;
            left = Filter::Or(Box::new(left), Box::new(self.and()?));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Filter, String> {
        let mut left = self.unary()?;
        while self.peek_word("and") {
            self.at += 1;
            left = Filter::And(Box::new(left), Box::new(self.unary()?));
        }
        Ok(left)
    }

    fn unary(&mut self) -> Result<Filter, String> {
        if self.peek_word("not") {
            self.at += 1;
            return Ok(Filter::Not(Box::new(self.unary()?)));
        }
        if self.toks.get(self.at) == Some(&Tok::Open) {
            self.at += 1;
            let f = self.or()?;
            if self.toks.get(self.at) != Some(&Tok::Close) {
                return Err("expected ')'".into());
            }
            self.at += 1;
            return Ok(f);
        }
        self.matcher()
    }

    fn value(&mut self) -> Result<String, String> {
        let v = match self.toks.get(self.at) {
            Some(Tok::Quoted(v) | Tok::Word(v)) => v.clone(),
            other => return Err(format!("expected a value, got {other:?}")),
        };
        self.at += 1;
        Ok(v)
    }

    fn matcher(&mut self) -> Result<Filter, String> {
        // `"v" in Selector` / `"v" not in Selector`
        let in_at = usize::from(self.peek_word_at(1, "not"));
        if self.peek_word_at(1 + in_at, "in") {
            let v = self.value()?;
            self.at += 1 + in_at;
            let sel = self.selector()?;
            let f = Filter::Contains(sel, v);
            return Ok(if in_at == 1 {
                Filter::Not(Box::new(f))
            } else {
                f
            });
        }
        let sel = self.selector()?;
        match self.toks.get(self.at).cloned() {
            Some(Tok::Op("==")) => {
                self.at += 1;
                Ok(Filter::Eq(sel, self.value()?))
            }
            Some(Tok::Op("!=")) => {
                self.at += 1;
                Ok(Filter::Not(Box::new(Filter::Eq(sel, self.value()?))))
            }
            Some(Tok::Word(w)) if w == "contains" => {
                self.at += 1;
                Ok(Filter::Contains(sel, self.value()?))
            }
            Some(Tok::Word(w)) if w == "not" && self.peek_word_at(1, "contains") => {
                self.at += 2;
                Ok(Filter::Not(Box::new(Filter::Contains(sel, self.value()?))))
            }
            Some(Tok::Word(w)) if w == "is" => {
                self.at += 1;
                let negate = self.peek_word("not");
                if negate {
                    self.at += 1;
                }
                if !self.peek_word("empty") {
                    return Err("expected 'empty'".into());
                }
                self.at += 1;
                let f = Filter::Empty(sel);
                Ok(if negate { Filter::Not(Box::new(f)) } else { f })
            }
            other => Err(format!("expected an operator, got {other:?}")),
        }
    }

    fn selector(&mut self) -> Result<Vec<String>, String> {
        let Some(Tok::Word(w)) = self.toks.get(self.at) else {
            return Err("expected a selector".into());
        };
        let path: Vec<String> = w.split('.').map(str::to_owned).collect();
        if !self.roots.contains(&path[0].as_str()) {
            return Err(format!("Selector {w:?} is not valid"));
        }
        self.at += 1;
        Ok(path)
    }
}

impl Filter {
    /// Parses a filter over health entries (`Node`, `Service`, `Checks`);
    /// the error is Consul's 400 message.
    pub(crate) fn parse(s: &str) -> Result<Self, String> {
        Self::parse_for(s, &["Node", "Service", "Checks"])
    }

    /// Parses a filter over checks (`/v1/health/state/:state`), whose
    /// selectors are a check's fields.
    pub(crate) fn parse_for_checks(s: &str) -> Result<Self, String> {
        Self::parse_for(
            s,
            &[
                "Node",
                "CheckID",
                "Name",
                "Status",
                "Notes",
                "Output",
                "ServiceID",
                "ServiceName",
                "ServiceTags",
                "Type",
                "Interval",
                "Timeout",
                "ExposedPort",
                "PeerName",
            ],
        )
    }

    fn parse_for(s: &str, roots: &'static [&'static str]) -> Result<Self, String> {
        let fail = |e: String| format!("Failed to create boolean expression evaluator: {e}");
        let mut p = Parser {
            toks: lex(s).map_err(fail)?,
            at: 0,
            roots,
        };
        let f = p.or().map_err(fail)?;
        if p.at != p.toks.len() {
            return Err(fail(format!("unexpected {:?}", p.toks[p.at])));
        }
        Ok(f)
    }

    pub(crate) fn matches(&self, entry: &Value) -> bool {
        match self {
            Filter::Or(a, b) => a.matches(entry) || b.matches(entry),
            Filter::And(a, b) => a.matches(entry) && b.matches(entry),
            Filter::Not(f) => !f.matches(entry),
            Filter::Eq(sel, v) => lookup(entry, sel).is_some_and(|x| scalar(x) == Some(v.clone())),
            Filter::Contains(sel, v) => match lookup(entry, sel) {
                Some(Value::Array(a)) => a.iter().any(|x| scalar(x).as_deref() == Some(v)),
                Some(Value::Object(m)) => m.contains_key(v),
                Some(Value::String(s)) => s.contains(v.as_str()),
                _ => false,
            },
            Filter::Empty(sel) => match lookup(entry, sel) {
                None | Some(Value::Null) => true,
                Some(Value::Array(a)) => a.is_empty(),
                Some(Value::Object(m)) => m.is_empty(),
                Some(Value::String(s)) => s.is_empty(),
                _ => false,
            },
        }
    }
}

fn lookup<'a>(v: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(v, |v, k| v.get(k))
}

fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn evaluates_the_discovery_subset() {
        let e = json!({"Node": {"Node": "n1"}, "Service": {"Tags": ["v2", "eu"], "Meta": {"zone": "a"}, "Port": 8080}});
        for (f, want) in [
            (r#"Service.Tags contains "v2""#, true),
            (r#"Service.Tags contains "v3""#, false),
            (r#""eu" in Service.Tags and Service.Meta.zone == "a""#, true),
            (r#"Service.Meta.zone != a or Node.Node == n1"#, true),
            (r#"not (Service.Tags contains "v2")"#, false),
            (r#"Service.Port == 8080"#, true),
            (r#"Service.Meta is not empty"#, true),
            (r#""v2" not in Service.Tags"#, false),
        ] {
            assert_eq!(Filter::parse(f).unwrap().matches(&e), want, "{f}");
        }
        for bad in [
            "Tags contains v2",
            r#"Service.Tags contains"#,
            "(",
            r#"Service.Tags === "x""#,
        ] {
            assert!(Filter::parse(bad).is_err(), "{bad}");
        }
    }
}
