//! containerd's filter language, used by `walk` and `ls` everywhere:
//!
//! ```text
//! name==foo,labels."containerd.io/gc.root"     (comma: all must hold)
//! kind!=committed                              (several strings: any may hold)
//! labels.k~=^v[0-9]+$                          (regular expression)
//! parent!=""                                   (quoted values)
//! ```
//!
//! A selector without an operator tests that the field is present. Objects
//! expose their fields through [`Filterable`].

use std::fmt;

/// What an object offers to filters: the value of a field path such as
/// `["labels", "containerd.io/gc.root"]`, or `None` when absent.
pub trait Filterable {
    /// The value at `path`, if the object has that field.
    fn field(&self, path: &[String]) -> Option<String>;
}

/// A filter string that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid filter {input:?} at byte {at}: {reason}")]
pub struct FilterError {
    input: String,
    at: usize,
    reason: String,
}

impl crate::Classify for FilterError {
    fn kind(&self) -> crate::ErrorKind {
        crate::ErrorKind::Invalid
    }
}

#[derive(Clone, Debug)]
enum Op {
    Present,
    Equal(String),
    NotEqual(String),
    Matches(regex_lite::Regex),
}

#[derive(Clone, Debug)]
struct Selector {
    path: Vec<String>,
    op: Op,
}

impl Selector {
    fn matches(&self, obj: &dyn Filterable) -> bool {
        let value = obj.field(&self.path);
        match (&self.op, value) {
            (Op::Present, v) => v.is_some(),
            (Op::Equal(want), Some(v)) => *want == v,
            // containerd treats an absent field as the empty string for `!=`.
            (Op::NotEqual(want), v) => *want != v.unwrap_or_default(),
            (Op::Matches(re), Some(v)) => re.is_match(&v),
            (_, None) => false,
        }
    }
}

/// A parsed set of filter strings: matches when any string's selectors all
/// match. No strings at all match everything.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    any: Vec<Vec<Selector>>,
}

impl Filter {
    /// Parses filter strings (an empty slice matches everything).
    pub fn parse<S: AsRef<str>>(inputs: &[S]) -> Result<Self, FilterError> {
        let any = inputs
            .iter()
            .map(|s| Parser::new(s.as_ref()).conjunction())
            .collect::<Result<_, _>>()?;
        Ok(Filter { any })
    }

    /// True when `obj` passes.
    pub fn matches(&self, obj: &dyn Filterable) -> bool {
        self.any.is_empty()
            || self
                .any
                .iter()
                .any(|all| all.iter().all(|s| s.matches(obj)))
    }
}

impl Filter {
    /// The value `V` when every alternative requires `field == V` for the
    /// same `V` (so a store can look it up in an index before matching).
    pub fn required_equal(&self, field: &str) -> Option<&str> {
        let mut value: Option<&str> = None;
        for all in &self.any {
            let found = all.iter().find_map(|s| match &s.op {
                Op::Equal(v) if s.path.len() == 1 && s.path[0] == field => Some(v.as_str()),
                _ => None,
            })?;
            match value {
                Some(v) if v != found => return None,
                _ => value = Some(found),
            }
        }
        value
    }
}

impl fmt::Display for Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} filter(s)", self.any.len())
    }
}

struct Parser<'a> {
    input: &'a str,
    pos: usize,
}

impl<'a> Parser<'a> {
    fn new(input: &'a str) -> Self {
        Parser { input, pos: 0 }
    }

    fn error(&self, reason: impl Into<String>) -> FilterError {
        FilterError {
            input: self.input.to_owned(),
            at: self.pos,
            reason: reason.into(),
        }
    }

    fn rest(&self) -> &'a str {
        &self.input[self.pos..]
    }

    fn skip_spaces(&mut self) {
        let trimmed = self.rest().trim_start();
        self.pos = self.input.len() - trimmed.len();
    }

    fn conjunction(mut self) -> Result<Vec<Selector>, FilterError> {
        let mut out = vec![self.selector()?];
        loop {
            self.skip_spaces();
            if self.rest().is_empty() {
                return Ok(out);
            }
            if !self.rest().starts_with(',') {
                return Err(self.error("expected ',' between selectors"));
            }
            self.pos += 1;
            out.push(self.selector()?);
        }
    }

    fn selector(&mut self) -> Result<Selector, FilterError> {
        let mut path = vec![self.field()?];
        while self.rest().starts_with('.') {
            self.pos += 1;
            path.push(self.field()?);
        }
        self.skip_spaces();
        let rest = self.rest();
        let op = if rest.is_empty() || rest.starts_with(',') {
            Op::Present
        } else if let Some(op) = ["==", "!=", "~="]
            .into_iter()
            .find(|op| rest.starts_with(op))
        {
            self.pos += 2;
            let value = self.value()?;
            match op {
                "==" => Op::Equal(value),
                "!=" => Op::NotEqual(value),
                _ => Op::Matches(
                    regex_lite::Regex::new(&value)
                        .map_err(|e| self.error(format!("bad regular expression: {e}")))?,
                ),
            }
        } else {
            return Err(self.error("expected an operator (==, != or ~=) or ','"));
        };
        Ok(Selector { path, op })
    }

    fn field(&mut self) -> Result<String, FilterError> {
        self.skip_spaces();
        if self.rest().starts_with('"') {
            return self.quoted();
        }
        let len = self
            .rest()
            .find(|c: char| matches!(c, '.' | ',' | '=' | '!' | '~' | '"') || c.is_whitespace())
            .unwrap_or(self.rest().len());
        if len == 0 {
            return Err(self.error("expected a field name"));
        }
        let field = self.rest()[..len].to_owned();
        self.pos += len;
        Ok(field)
    }

    fn value(&mut self) -> Result<String, FilterError> {
        self.skip_spaces();
        if self.rest().starts_with('"') {
            return self.quoted();
        }
        let len = self.rest().find(',').unwrap_or(self.rest().len());
        let value = self.rest()[..len].trim_end().to_owned();
        self.pos += len;
        Ok(value)
    }

    fn quoted(&mut self) -> Result<String, FilterError> {
        // Positioned on the opening quote.
        self.pos += 1;
        let mut out = String::new();
        let mut chars = self.rest().char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                '"' => {
                    self.pos += i + 1;
                    return Ok(out);
                }
                '\\' => match chars.next() {
                    Some((_, 'n')) => out.push('\n'),
                    Some((_, 't')) => out.push('\t'),
                    Some((_, other)) => out.push(other),
                    None => break,
                },
                other => out.push(other),
            }
        }
        self.pos = self.input.len();
        Err(self.error("unterminated quoted string"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    struct Obj {
        name: &'static str,
        parent: &'static str,
        labels: BTreeMap<String, String>,
    }

    impl Filterable for Obj {
        fn field(&self, path: &[String]) -> Option<String> {
            match path {
                [f] if f == "name" => Some(self.name.into()),
                [f] if f == "parent" => Some(self.parent.into()),
                [f, k] if f == "labels" => self.labels.get(k).cloned(),
                _ => None,
            }
        }
    }

    fn obj() -> Obj {
        Obj {
            name: "a",
            parent: "",
            labels: [
                ("containerd.io/gc.root".to_string(), "2020".to_string()),
                ("k".to_string(), "v1".to_string()),
            ]
            .into(),
        }
    }

    fn check(filters: &[&str], expected: bool) {
        let f = Filter::parse(filters).unwrap();
        assert_eq!(f.matches(&obj()), expected, "{filters:?}");
    }

    #[test]
    fn required_equality_is_found_only_when_every_alternative_has_it() {
        let f = Filter::parse(&["parent==a,kind==committed"]).unwrap();
        assert_eq!(f.required_equal("parent"), Some("a"));
        let f = Filter::parse(&["parent==a", "parent==a,name~=x"]).unwrap();
        assert_eq!(f.required_equal("parent"), Some("a"));
        assert_eq!(
            Filter::parse(&["parent==a", "parent==b"])
                .unwrap()
                .required_equal("parent"),
            None
        );
        assert_eq!(
            Filter::parse(&["parent==a", "kind==view"])
                .unwrap()
                .required_equal("parent"),
            None
        );
        assert_eq!(Filter::default().required_equal("parent"), None);
    }

    #[test]
    fn selectors() {
        check(&[], true);
        check(&["name==a"], true);
        check(&["name==b"], false);
        check(&["name!=b"], true);
        check(&[r#"parent!="""#], false);
        check(&[r#"parent=="""#], true);
        check(&[r#"labels."containerd.io/gc.root""#], true);
        check(&["labels.k"], true);
        check(&["labels.missing"], false);
        check(&["labels.k==v1,name==a"], true);
        check(&["labels.k==v1,name==b"], false);
        check(&["name==b", "labels.k==v1"], true);
        check(&["labels.k~=^v[0-9]$"], true);
        check(&["labels.k~=^x"], false);
        check(&[r#"name=="a""#], true);
    }

    #[test]
    fn errors_name_the_input() {
        for bad in ["", "name=a", "name==\"a", "labels.k~=(", ",name==a"] {
            let err = Filter::parse(&[bad]).unwrap_err();
            assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
        }
    }
}
