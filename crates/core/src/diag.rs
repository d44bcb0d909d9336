//! Diagnostics that point at a place in an input file.
//!
//! Parsing and validation never panic: every problem becomes a [`Diagnostic`] naming the file,
//! the line and column, what is wrong and what to do about it.

use std::fmt;
use std::ops::Range;

/// One step of a path into a structured document (`service[2].nodes[0]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seg {
    Key(String),
    Idx(usize),
}

/// A path into a fleet or campaign document, used to locate semantic errors.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DocPath(pub Vec<Seg>);

impl DocPath {
    pub fn root() -> Self {
        DocPath(Vec::new())
    }
    pub fn key(mut self, k: &str) -> Self {
        self.0.push(Seg::Key(k.to_string()));
        self
    }
    pub fn idx(mut self, i: usize) -> Self {
        self.0.push(Seg::Idx(i));
        self
    }
}

impl fmt::Display for DocPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for s in &self.0 {
            match s {
                Seg::Key(k) if first => write!(f, "{k}")?,
                Seg::Key(k) => write!(f, ".{k}")?,
                Seg::Idx(i) => write!(f, "[{i}]")?,
            }
            first = false;
        }
        Ok(())
    }
}

/// The format of a document, chosen by the file's extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Toml,
    Json,
}

impl Format {
    /// `.json` is JSON; everything else is TOML.
    pub fn from_path(path: &str) -> Format {
        if path.to_ascii_lowercase().ends_with(".json") {
            Format::Json
        } else {
            Format::Toml
        }
    }
}

/// An input error located in a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: String,
    /// 1-based line; 0 when the error concerns the whole file.
    pub line: usize,
    /// 1-based column in characters.
    pub col: usize,
    /// Byte range in the source, when known.
    pub span: Option<Range<usize>>,
    pub message: String,
    pub help: Option<String>,
}

impl Diagnostic {
    pub fn at(file: &str, src: &str, span: Option<Range<usize>>, message: impl Into<String>) -> Self {
        let (line, col) = match &span {
            Some(r) => line_col(src, r.start),
            None => (0, 0),
        };
        Diagnostic { file: file.to_string(), line, col, span, message: message.into(), help: None }
    }

    pub fn with_help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    /// `file:line:col`, or just `file` when no place is known.
    pub fn location(&self) -> String {
        if self.line == 0 {
            self.file.clone()
        } else {
            format!("{}:{}:{}", self.file, self.line, self.col)
        }
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.location(), self.message)?;
        if let Some(h) = &self.help {
            write!(f, " (help: {h})")?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostic {}

/// 1-based line and character column of a byte offset.
pub fn line_col(src: &str, offset: usize) -> (usize, usize) {
    let offset = floor_char_boundary(src, offset.min(src.len()));
    let before = &src[..offset];
    let line = before.bytes().filter(|&b| b == b'\n').count() + 1;
    let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
    let col = src[line_start..offset].chars().count() + 1;
    (line, col)
}

/// Byte offset of a 1-based line and column (as serde_json reports them).
pub fn offset_of(src: &str, line: usize, col: usize) -> usize {
    let mut off = 0;
    for (i, l) in src.split_inclusive('\n').enumerate() {
        if i + 1 == line {
            let c = col.saturating_sub(1);
            return off + l.char_indices().nth(c).map(|(b, _)| b).unwrap_or(l.len());
        }
        off += l.len();
    }
    src.len()
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// Byte range of the value at `path` in a document, if it can be found.
pub fn locate(src: &str, format: Format, path: &DocPath) -> Option<Range<usize>> {
    match format {
        Format::Toml => locate_toml(src, path),
        Format::Json => json::locate(src, &path.0),
    }
}

fn locate_toml(src: &str, path: &DocPath) -> Option<Range<usize>> {
    let doc = toml::de::DeTable::parse(src).ok()?;
    let mut span = doc.span();
    let root = doc.into_inner();
    let mut table: Option<&toml::de::DeTable> = Some(&root);
    let mut value: Option<&toml::de::DeValue> = None;
    for seg in &path.0 {
        let next = match (seg, table, value) {
            (Seg::Key(k), Some(t), _) => t.get(k.as_str()),
            (Seg::Key(k), None, Some(v)) => v.get(k.as_str()),
            (Seg::Idx(i), _, Some(v)) => v.get(*i),
            _ => None,
        }?;
        span = next.span();
        table = None;
        value = Some(next.get_ref());
    }
    Some(span)
}

/// A minimal JSON walker that finds the byte range of the value at a path. It is used only to
/// point at semantic errors after serde_json has accepted the document, so it may assume the
/// document is well formed.
mod json {
    use super::Seg;
    use std::ops::Range;

    struct W<'a> {
        b: &'a [u8],
        i: usize,
    }

    impl W<'_> {
        fn ws(&mut self) {
            while self.i < self.b.len() && matches!(self.b[self.i], b' ' | b'\t' | b'\n' | b'\r') {
                self.i += 1;
            }
        }
        fn eat(&mut self, c: u8) -> bool {
            self.ws();
            if self.b.get(self.i) == Some(&c) {
                self.i += 1;
                true
            } else {
                false
            }
        }
        fn string(&mut self) -> Option<String> {
            self.ws();
            if self.b.get(self.i) != Some(&b'"') {
                return None;
            }
            let start = self.i;
            self.i += 1;
            while self.i < self.b.len() {
                match self.b[self.i] {
                    b'\\' => self.i += 2,
                    b'"' => {
                        self.i += 1;
                        let raw = std::str::from_utf8(&self.b[start..self.i]).ok()?;
                        return serde_json::from_str(raw).ok();
                    }
                    _ => self.i += 1,
                }
            }
            None
        }
        /// Skips one value; returns its range.
        fn skip(&mut self) -> Option<Range<usize>> {
            self.ws();
            let start = self.i;
            match *self.b.get(self.i)? {
                b'"' => {
                    self.string()?;
                }
                b'{' | b'[' => {
                    let mut depth = 0usize;
                    while self.i < self.b.len() {
                        match self.b[self.i] {
                            b'"' => {
                                self.string()?;
                                continue;
                            }
                            b'{' | b'[' => depth += 1,
                            b'}' | b']' => {
                                depth -= 1;
                                if depth == 0 {
                                    self.i += 1;
                                    break;
                                }
                            }
                            _ => {}
                        }
                        self.i += 1;
                    }
                }
                _ => {
                    while self.i < self.b.len()
                        && !matches!(self.b[self.i], b',' | b'}' | b']' | b' ' | b'\n' | b'\r' | b'\t')
                    {
                        self.i += 1;
                    }
                }
            }
            Some(start..self.i)
        }
    }

    pub fn locate(src: &str, path: &[Seg]) -> Option<Range<usize>> {
        let mut w = W { b: src.as_bytes(), i: 0 };
        for seg in path {
            match seg {
                Seg::Key(k) => {
                    if !w.eat(b'{') {
                        return None;
                    }
                    loop {
                        let key = w.string()?;
                        if !w.eat(b':') {
                            return None;
                        }
                        if &key == k {
                            break;
                        }
                        w.skip()?;
                        if !w.eat(b',') {
                            return None;
                        }
                    }
                }
                Seg::Idx(n) => {
                    if !w.eat(b'[') {
                        return None;
                    }
                    for _ in 0..*n {
                        w.skip()?;
                        if !w.eat(b',') {
                            return None;
                        }
                    }
                }
            }
        }
        w.skip()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_and_column() {
        let s = "a\nbcd\néf";
        assert_eq!(line_col(s, 0), (1, 1));
        assert_eq!(line_col(s, 4), (2, 3));
        assert_eq!(line_col(s, s.find('f').unwrap()), (3, 2));
        assert_eq!(offset_of(s, 2, 3), 4);
    }

    #[test]
    fn locates_json_values() {
        let s = r#"{"name": "x", "node": [{"name": "a"}, {"name": "b", "x": [1, 2]}]}"#;
        let p = DocPath::root().key("node").idx(1).key("name");
        let r = locate(s, Format::Json, &p).unwrap();
        assert_eq!(&s[r], "\"b\"");
        let p = DocPath::root().key("node").idx(1).key("x").idx(1);
        let r = locate(s, Format::Json, &p).unwrap();
        assert_eq!(&s[r], "2");
        assert!(locate(s, Format::Json, &DocPath::root().key("nope")).is_none());
    }

    #[test]
    fn locates_toml_values() {
        let s = "name = \"x\"\n[[node]]\nname = \"a\"\n[[node]]\nname = \"b\"\nlabels = { role = \"web\" }\n";
        let p = DocPath::root().key("node").idx(1).key("name");
        let r = locate(s, Format::Toml, &p).unwrap();
        assert_eq!(&s[r.clone()], "\"b\"");
        assert_eq!(line_col(s, r.start), (5, 8));
        let p = DocPath::root().key("node").idx(1).key("labels").key("role");
        assert_eq!(&s[locate(s, Format::Toml, &p).unwrap()], "\"web\"");
    }
}
