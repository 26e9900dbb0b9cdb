//! The JSON shapes `strata CMD --help` documents, parsed and checked
//! against what a command prints, so documented field names cannot drift
//! from the output.
//!
//! `{a, b: SHAPE}` is an object with exactly the fields a and b (b's value
//! of that shape), `[SHAPE]` a list whose every item has that shape, and any
//! other word (`string`, `map`, ...) any value.

use serde_json::Value;

/// A parsed shape.
#[derive(Debug, Clone, PartialEq)]
pub enum Shape {
    Any,
    List(Box<Shape>),
    Object(Vec<(String, Shape)>),
}

/// Parses a documented shape.
pub fn parse(text: &str) -> Result<Shape, String> {
    let tokens = tokenize(text);
    let mut at = 0;
    let shape = shape(&tokens, &mut at)?;
    if at != tokens.len() {
        return Err(format!(
            "{text:?}: unexpected {:?} after the shape",
            tokens[at]
        ));
    }
    Ok(shape)
}

fn tokenize(text: &str) -> Vec<String> {
    let mut tokens = Vec::new();
    let mut word = String::new();
    for c in text.chars() {
        if "{}[],:".contains(c) || c.is_whitespace() {
            if !word.is_empty() {
                tokens.push(std::mem::take(&mut word));
            }
            if !c.is_whitespace() {
                tokens.push(c.to_string());
            }
        } else {
            word.push(c);
        }
    }
    if !word.is_empty() {
        tokens.push(word);
    }
    tokens
}

fn shape(tokens: &[String], at: &mut usize) -> Result<Shape, String> {
    let token = tokens.get(*at).ok_or("the shape ends early")?;
    *at += 1;
    match token.as_str() {
        "[" => {
            let item = shape(tokens, at)?;
            expect(tokens, at, "]")?;
            Ok(Shape::List(Box::new(item)))
        }
        "{" => {
            let mut fields = Vec::new();
            loop {
                let name = tokens.get(*at).ok_or("an object does not close")?.clone();
                if "{}[],:".contains(name.as_str()) {
                    return Err(format!("expected a field name, found {name:?}"));
                }
                *at += 1;
                let value = if tokens.get(*at).map(String::as_str) == Some(":") {
                    *at += 1;
                    shape(tokens, at)?
                } else {
                    Shape::Any
                };
                fields.push((name, value));
                match tokens.get(*at).map(String::as_str) {
                    Some(",") => *at += 1,
                    Some("}") => {
                        *at += 1;
                        return Ok(Shape::Object(fields));
                    }
                    other => return Err(format!("expected , or }} in an object, found {other:?}")),
                }
            }
        }
        "]" | "}" | "," | ":" => Err(format!("unexpected {token:?}")),
        _ => Ok(Shape::Any),
    }
}

fn expect(tokens: &[String], at: &mut usize, want: &str) -> Result<(), String> {
    match tokens.get(*at) {
        Some(t) if t == want => {
            *at += 1;
            Ok(())
        }
        other => Err(format!("expected {want:?}, found {other:?}")),
    }
}

impl Shape {
    /// Checks `value` against the shape; the error names the JSON path.
    pub fn check(&self, value: &Value) -> Result<(), String> {
        self.check_at(value, "$")
    }

    fn check_at(&self, value: &Value, path: &str) -> Result<(), String> {
        match (self, value) {
            (Shape::Any, _) => Ok(()),
            (Shape::List(item), Value::Array(items)) => items
                .iter()
                .enumerate()
                .try_for_each(|(i, v)| item.check_at(v, &format!("{path}[{i}]"))),
            (Shape::Object(fields), Value::Object(map)) => {
                let documented: Vec<&str> = fields.iter().map(|(k, _)| k.as_str()).collect();
                let mut printed: Vec<&str> = map.keys().map(String::as_str).collect();
                let mut want = documented.clone();
                want.sort_unstable();
                printed.sort_unstable();
                if want != printed {
                    return Err(format!(
                        "{path}: documented fields {want:?}, printed {printed:?}"
                    ));
                }
                fields
                    .iter()
                    .try_for_each(|(k, s)| s.check_at(&map[k], &format!("{path}.{k}")))
            }
            (shape, value) => Err(format!("{path}: expected {shape:?}, printed {value}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn shapes_parse_and_check() {
        let s = parse("{a, b: [{c, d}], e: map}").unwrap();
        s.check(&json!({"a": 1, "b": [{"c": 1, "d": null}], "e": {"x": "y"}}))
            .unwrap();
        s.check(&json!({"a": 1, "b": [], "e": {}})).unwrap();
        let missing = s.check(&json!({"a": 1, "e": {}})).unwrap_err();
        assert!(missing.contains("documented fields"), "{missing}");
        let extra = s
            .check(&json!({"a": 1, "b": [{"c": 1, "d": 2, "z": 3}], "e": 1}))
            .unwrap_err();
        assert!(extra.starts_with("$.b[0]:"), "{extra}");
        assert!(parse("[string]").unwrap().check(&json!({"a": 1})).is_err());
        assert!(parse("{a,").is_err());
        assert!(parse("{a} b").is_err());
        assert!(parse("[a").is_err());
    }
}
