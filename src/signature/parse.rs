//! The hand-written parser for the string form. It tracks byte offsets so every error
//! can point at the character that made it fail, which is the whole reason not to
//! hand signatures to Python's `ast` module and relay its errors.

use super::{Field, FieldType, LiteralValue, SignatureError, MAX_TYPE_DEPTH, TOO_DEEP};

/// Names DSPy's `Signature` class or pydantic use for themselves; a field with one of
/// these names makes DSPy fail while building the class (checked against dspy 3.4).
const RESERVED: &[&str] = &[
    "fields",
    "input_fields",
    "instructions",
    "model_config",
    "model_dump",
    "model_dump_json",
    "model_validate",
    "model_validate_json",
    "model_validate_strings",
    "output_fields",
    "signature",
];

/// Keyword arguments DSPy's `Predict` takes for itself: an input field with one of these
/// names would be swallowed by the call instead of reaching the prompt. The bridge refuses
/// the same names (`RESERVED_INPUT_NAMES` in `dspex_bridge/definitions.py`; a test reads
/// both). Outputs may use them.
pub const RESERVED_INPUT_NAMES: &[&str] = &["config", "demos", "lm", "prediction", "signature"];

/// Python keywords: DSPy parses the string form with `ast`, where they are syntax errors.
const PYTHON_KEYWORDS: &[&str] = &[
    "False", "None", "True", "and", "as", "assert", "async", "await", "break", "class", "continue",
    "def", "del", "elif", "else", "except", "finally", "for", "from", "global", "if", "import",
    "in", "is", "lambda", "nonlocal", "not", "or", "pass", "raise", "return", "try", "while",
    "with", "yield",
];

/// The list of types offered in "unknown type" errors.
const KNOWN_TYPES: &str =
    "str, int, float, bool, list[T], dict[str, T], Optional[T], T | None or Literal[...]";

/// Parses `inputs -> outputs`.
pub(super) fn parse_signature(source: &str) -> Result<(Vec<Field>, Vec<Field>), SignatureError> {
    let mut p = Parser::new(source);
    p.skip_ws();
    if p.at_end() {
        return Err(p.error_here("the signature is empty; write it like \"question -> answer\""));
    }
    let inputs = p.field_list(Side::Inputs)?;
    if !p.eat_str("->") {
        // `field_list` stops only at `->` or the end.
        return Err(p.error_here(
            "expected '->' between the inputs and the outputs, as in \"question -> answer\"",
        ));
    }
    let outputs = p.field_list(Side::Outputs)?;
    if p.rest().starts_with("->") {
        return Err(p.error_here("a signature has exactly one '->'"));
    }

    let mut seen: Vec<&str> = Vec::new();
    for (field, start) in inputs.iter().chain(&outputs) {
        if seen.contains(&field.name.as_str()) {
            return Err(SignatureError::at(
                format!(
                    "field name `{}` is used twice; names must be unique across inputs and outputs",
                    field.name
                ),
                source,
                *start,
            ));
        }
        seen.push(&field.name);
    }
    for (field, start) in &inputs {
        check_input_name(&field.name)
            .map_err(|message| SignatureError::at(message, source, *start))?;
    }
    let strip = |fields: Vec<(Field, usize)>| fields.into_iter().map(|(f, _)| f).collect();
    Ok((strip(inputs), strip(outputs)))
}

/// Parses a bare field list, `answer, confidence: float`: the outputs-only signature a
/// python program may declare.
pub(super) fn parse_field_list(source: &str) -> Result<Vec<Field>, SignatureError> {
    let mut p = Parser::new(source);
    p.skip_ws();
    if p.at_end() {
        return Err(p.error_here("no fields; write the outputs like \"answer, confidence: float\""));
    }
    let fields = p.field_list(Side::Outputs)?;
    if p.rest().starts_with("->") {
        return Err(p.error_here(
            "a list of output fields has no '->'; write either the outputs alone or a whole signature \"inputs -> outputs\"",
        ));
    }
    let mut seen: Vec<&str> = Vec::new();
    for (field, start) in &fields {
        if seen.contains(&field.name.as_str()) {
            return Err(SignatureError::at(
                format!("field name `{}` is used twice", field.name),
                source,
                *start,
            ));
        }
        seen.push(&field.name);
    }
    Ok(fields.into_iter().map(|(f, _)| f).collect())
}

/// Parses a whole string as one type (a structured field's `"type"`).
pub(super) fn parse_type(source: &str) -> Result<FieldType, SignatureError> {
    let mut p = Parser::new(source);
    p.skip_ws();
    if p.at_end() {
        return Err(p.error_here(format!("expected a type: {KNOWN_TYPES}")));
    }
    let ty = p.type_expr()?;
    p.skip_ws();
    if !p.at_end() {
        return Err(p.error_here("unexpected text after the type"));
    }
    Ok(ty)
}

/// Checks that `name` can be a DSPy field name. The error says why not.
pub(super) fn check_field_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let valid = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !valid {
        return Err(format!(
            "`{name}` is not a valid field name; use letters, digits and '_', not starting with a digit"
        ));
    }
    if name.starts_with('_') {
        return Err(format!(
            "field name `{name}` cannot start with '_' (DSPy rejects such fields)"
        ));
    }
    if PYTHON_KEYWORDS.contains(&name) {
        return Err(format!(
            "`{name}` is a Python keyword and cannot be a field name"
        ));
    }
    if RESERVED.contains(&name) {
        return Err(format!(
            "`{name}` is reserved by DSPy signatures; choose another field name"
        ));
    }
    Ok(())
}

/// Checks that `name` can be an input field: not one of DSPy's own call arguments.
pub(super) fn check_input_name(name: &str) -> Result<(), String> {
    if RESERVED_INPUT_NAMES.contains(&name) {
        return Err(format!(
            "`{name}` cannot be an input field: DSPy's Predict takes `{name}=` as its own argument ({}); rename the field",
            RESERVED_INPUT_NAMES.join(", ")
        ));
    }
    Ok(())
}

#[derive(Clone, Copy, PartialEq)]
enum Side {
    Inputs,
    Outputs,
}

/// A parsed type, or the bare `None` that may only appear in `T | None`.
enum Atom {
    Type(FieldType),
    None,
}

struct Parser<'a> {
    source: &'a str,
    /// Byte offset of the next unread character.
    pos: usize,
    /// Containers open around the type being read. The parser recurses once per level,
    /// so refusing the level past [`MAX_TYPE_DEPTH`] as it opens bounds the recursion
    /// whatever the input.
    depth: usize,
}

impl<'a> Parser<'a> {
    fn new(source: &'a str) -> Parser<'a> {
        Parser {
            source,
            pos: 0,
            depth: 0,
        }
    }

    /// Opens one level of nesting for the container written at `start`.
    fn enter(&mut self, start: usize) -> Result<(), SignatureError> {
        self.depth += 1;
        if self.depth > MAX_TYPE_DEPTH {
            return Err(self.error_at(TOO_DEEP, start));
        }
        Ok(())
    }

    fn leave(&mut self) {
        self.depth -= 1;
    }

    fn rest(&self) -> &'a str {
        &self.source[self.pos..]
    }

    fn peek(&self) -> Option<char> {
        self.rest().chars().next()
    }

    fn at_end(&self) -> bool {
        self.pos == self.source.len()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += c.len_utf8();
        Some(c)
    }

    fn skip_ws(&mut self) {
        while self.peek().is_some_and(char::is_whitespace) {
            self.bump();
        }
    }

    fn eat(&mut self, c: char) -> bool {
        if self.peek() == Some(c) {
            self.pos += c.len_utf8();
            true
        } else {
            false
        }
    }

    fn eat_str(&mut self, s: &str) -> bool {
        if self.rest().starts_with(s) {
            self.pos += s.len();
            true
        } else {
            false
        }
    }

    fn error_at(&self, message: impl Into<String>, position: usize) -> SignatureError {
        SignatureError::at(message, self.source, position)
    }

    fn error_here(&self, message: impl Into<String>) -> SignatureError {
        self.error_at(message, self.pos)
    }

    /// Reads `[A-Za-z0-9_]+` (the caller decides whether a leading digit is allowed).
    fn word(&mut self) -> Option<&'a str> {
        let start = self.pos;
        while self
            .peek()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            self.bump();
        }
        (self.pos > start).then(|| &self.source[start..self.pos])
    }

    /// True where a side of the signature ends.
    fn at_side_end(&self) -> bool {
        self.at_end() || self.rest().starts_with("->")
    }

    /// `field (',' field)*`, stopping before `->` or at the end.
    fn field_list(&mut self, side: Side) -> Result<Vec<(Field, usize)>, SignatureError> {
        self.skip_ws();
        if self.at_side_end() {
            return Err(self.error_here(match side {
                Side::Inputs => "expected at least one input field before '->'",
                Side::Outputs => "expected at least one output field after '->'",
            }));
        }
        let mut fields = Vec::new();
        loop {
            fields.push(self.field()?);
            self.skip_ws();
            if self.eat(',') {
                self.skip_ws();
                if self.at_side_end() {
                    return Err(self.error_here("expected a field name after ','"));
                }
                continue;
            }
            if self.at_side_end() {
                return Ok(fields);
            }
            return Err(self.error_here(match side {
                Side::Inputs => "expected ',' or '->' after the field",
                Side::Outputs => "expected ',' or the end of the signature after the field",
            }));
        }
    }

    /// `name (':' type)?`, returning the field and where its name starts.
    fn field(&mut self) -> Result<(Field, usize), SignatureError> {
        let start = self.pos;
        let Some(name) = self.word() else {
            return Err(self.error_here("expected a field name"));
        };
        // A name glued to a non-ASCII letter (`réponse`) would otherwise be reported
        // at the next token; point at the letter instead.
        if self.peek().is_some_and(char::is_alphanumeric) {
            return Err(
                self.error_here("field names must be ASCII: use letters a-z, A-Z, digits and '_'")
            );
        }
        check_field_name(name).map_err(|message| self.error_at(message, start))?;
        self.skip_ws();
        let ty = if self.eat(':') {
            self.skip_ws();
            let starts_type = self
                .peek()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
            if !starts_type {
                return Err(self.error_here("expected a type after ':'"));
            }
            self.type_expr()?
        } else {
            FieldType::Str
        };
        Ok((Field::new(name, ty), start))
    }

    /// `atom ('|' atom)*` where every union is `T | None` or `None | T`.
    fn type_expr(&mut self) -> Result<FieldType, SignatureError> {
        let start = self.pos;
        let mut current = self.atom()?;
        loop {
            self.skip_ws();
            let bar = self.pos;
            if !self.eat('|') {
                break;
            }
            self.skip_ws();
            let next = self.atom()?;
            current = match (current, next) {
                (Atom::Type(ty), Atom::None) | (Atom::None, Atom::Type(ty)) => {
                    // `T | None` wraps without recursing, so its level is counted here.
                    if self.depth + ty.depth() >= MAX_TYPE_DEPTH {
                        return Err(self.error_at(TOO_DEEP, bar));
                    }
                    Atom::Type(FieldType::optional(ty))
                }
                (Atom::None, Atom::None) => {
                    return Err(self.error_at("`None | None` is not a type", start));
                }
                (Atom::Type(_), Atom::Type(_)) => {
                    return Err(self.error_at(
                        "only `T | None` unions are supported; a field has one type",
                        bar,
                    ));
                }
            };
        }
        match current {
            Atom::Type(ty) => Ok(ty),
            Atom::None => Err(self.error_at(
                "`None` alone is not a field type; use Optional[T] or T | None",
                start,
            )),
        }
    }

    /// A type name with its bracketed parameters, or `None`.
    fn atom(&mut self) -> Result<Atom, SignatureError> {
        let start = self.pos;
        let Some(mut name) = self.word() else {
            return Err(self.error_here(format!("expected a type: {KNOWN_TYPES}")));
        };
        if name == "typing" && self.eat('.') {
            let Some(after) = self.word() else {
                return Err(self.error_here("expected a type name after `typing.`"));
            };
            name = after;
            if !matches!(
                name,
                "List" | "Dict" | "Optional" | "Literal" | "Union" | "Any"
            ) {
                return Err(self.error_at(
                    format!("`typing.{name}` is not supported; expected {KNOWN_TYPES}"),
                    start,
                ));
            }
        }
        let scalar = match name {
            "str" => Some(FieldType::Str),
            "int" => Some(FieldType::Int),
            "float" => Some(FieldType::Float),
            "bool" => Some(FieldType::Bool),
            _ => None,
        };
        if let Some(ty) = scalar {
            self.no_parameters(name)?;
            return Ok(Atom::Type(ty));
        }
        let ty = match name {
            "None" => {
                self.no_parameters(name)?;
                return Ok(Atom::None);
            }
            "list" | "List" => {
                self.enter(start)?;
                self.open(name)?;
                let inner = self.type_expr()?;
                self.close(name)?;
                self.leave();
                FieldType::list(inner)
            }
            "dict" | "Dict" => {
                self.enter(start)?;
                self.open(name)?;
                let key_start = self.pos;
                let key = self.type_expr()?;
                if key != FieldType::Str {
                    return Err(self.error_at(
                        "dictionary keys must be `str`: JSON object keys are strings",
                        key_start,
                    ));
                }
                self.skip_ws();
                if !self.eat(',') {
                    return Err(self.error_here(format!(
                        "expected ',' and a value type, as in `{name}[str, int]`"
                    )));
                }
                self.skip_ws();
                let value = self.type_expr()?;
                self.close(name)?;
                self.leave();
                FieldType::dict(value)
            }
            "Optional" => {
                self.enter(start)?;
                self.open(name)?;
                let inner = self.type_expr()?;
                self.close(name)?;
                self.leave();
                FieldType::optional(inner)
            }
            "Literal" => {
                self.open(name)?;
                let mut values = vec![self.literal()?];
                loop {
                    self.skip_ws();
                    if !self.eat(',') {
                        break;
                    }
                    self.skip_ws();
                    values.push(self.literal()?);
                }
                self.close(name)?;
                FieldType::Literal(values)
            }
            "Union" => {
                return Err(self.error_at(
                    "`Union` is not supported; write Optional[T] or T | None",
                    start,
                ));
            }
            other => {
                let hint = match other {
                    "string" | "String" | "text" | "Str" => " (did you mean `str`?)",
                    "integer" | "Integer" | "Int" | "i64" => " (did you mean `int`?)",
                    "number" | "Number" | "Float" | "double" | "f64" => " (did you mean `float`?)",
                    "boolean" | "Boolean" | "Bool" => " (did you mean `bool`?)",
                    "array" | "Array" | "Vec" => " (did you mean `list[T]`?)",
                    "object" | "map" | "Map" | "HashMap" => " (did you mean `dict[str, T]`?)",
                    _ => "",
                };
                return Err(self.error_at(
                    format!("unknown type `{other}`{hint}; expected {KNOWN_TYPES}"),
                    start,
                ));
            }
        };
        Ok(Atom::Type(ty))
    }

    fn no_parameters(&mut self, name: &str) -> Result<(), SignatureError> {
        let save = self.pos;
        self.skip_ws();
        if self.peek() == Some('[') {
            return Err(self.error_here(format!("`{name}` takes no type parameters")));
        }
        self.pos = save;
        Ok(())
    }

    fn open(&mut self, name: &str) -> Result<(), SignatureError> {
        self.skip_ws();
        if self.eat('[') {
            self.skip_ws();
            return Ok(());
        }
        let example = match name {
            "list" | "List" => format!("`{name}[str]`"),
            "dict" | "Dict" => format!("`{name}[str, int]`"),
            "Literal" => "`Literal[\"yes\", \"no\"]`".to_owned(),
            _ => format!("`{name}[str]`"),
        };
        Err(self.error_here(format!("`{name}` needs '[' and a type, as in {example}")))
    }

    fn close(&mut self, name: &str) -> Result<(), SignatureError> {
        self.skip_ws();
        if self.eat(']') {
            return Ok(());
        }
        if self.at_end() {
            Err(self.error_here(format!(
                "expected ']' to close `{name}[`, but the signature ended"
            )))
        } else {
            Err(self.error_here(format!("expected ']' to close `{name}[`")))
        }
    }

    /// A quoted string, an integer, `True` or `False`.
    fn literal(&mut self) -> Result<LiteralValue, SignatureError> {
        let start = self.pos;
        match self.peek() {
            Some(quote @ ('"' | '\'')) => {
                self.bump();
                self.string_body(quote, start).map(LiteralValue::Str)
            }
            Some(c) if c == '-' || c.is_ascii_digit() => {
                self.bump();
                while self.peek().is_some_and(|c| c.is_ascii_digit()) {
                    self.bump();
                }
                if self.peek().is_some_and(|c| matches!(c, '.' | 'e' | 'E')) {
                    return Err(self.error_at(
                        "only string, integer and boolean literals are supported",
                        start,
                    ));
                }
                let text = &self.source[start..self.pos];
                if text == "-" {
                    return Err(self.error_here("expected digits after '-'"));
                }
                text.parse::<i64>().map(LiteralValue::Int).map_err(|_| {
                    self.error_at(
                        format!("`{text}` is not an integer that fits in 64 bits"),
                        start,
                    )
                })
            }
            _ => match self.word() {
                Some("True") => Ok(LiteralValue::Bool(true)),
                Some("False") => Ok(LiteralValue::Bool(false)),
                Some(word @ ("true" | "false")) => Err(self.error_at(
                    format!(
                        "write booleans the Python way: `{}`",
                        if word == "true" { "True" } else { "False" }
                    ),
                    start,
                )),
                _ => Err(self.error_at(
                    "expected a literal value: a quoted string, an integer, True or False",
                    start,
                )),
            },
        }
    }

    /// The rest of a string literal after its opening quote, with escapes resolved.
    fn string_body(&mut self, quote: char, start: usize) -> Result<String, SignatureError> {
        let mut out = String::new();
        loop {
            let escape_start = self.pos;
            match self.bump() {
                None => {
                    return Err(self.error_at("this string literal is never closed", start));
                }
                Some(c) if c == quote => return Ok(out),
                Some('\\') => {
                    let c = match self.bump() {
                        Some('n') => '\n',
                        Some('t') => '\t',
                        Some('r') => '\r',
                        Some('b') => '\u{8}',
                        Some('f') => '\u{c}',
                        Some('0') => '\0',
                        Some('/') => '/',
                        Some(c @ ('\\' | '"' | '\'')) => c,
                        Some('u') => self.hex_escape(4, escape_start)?,
                        Some('U') => self.hex_escape(8, escape_start)?,
                        _ => {
                            return Err(self.error_at(
                                "unknown escape; use \\\\, \\\", \\', \\n, \\t, \\r, \\uXXXX or \\UXXXXXXXX",
                                escape_start,
                            ));
                        }
                    };
                    out.push(c);
                }
                Some(c) => out.push(c),
            }
        }
    }

    fn hex_escape(&mut self, digits: usize, escape_start: usize) -> Result<char, SignatureError> {
        let hex = self.rest().get(..digits).unwrap_or("");
        let code = (hex.len() == digits && hex.chars().all(|c| c.is_ascii_hexdigit()))
            .then(|| u32::from_str_radix(hex, 16).ok())
            .flatten()
            .and_then(char::from_u32);
        match code {
            Some(c) => {
                self.pos += digits;
                Ok(c)
            }
            None => Err(self.error_at(
                format!("expected {digits} hex digits naming a Unicode scalar value"),
                escape_start,
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::Signature;
    use super::*;

    fn types(source: &str) -> Vec<(String, FieldType)> {
        let sig = Signature::parse(source).unwrap();
        sig.inputs
            .into_iter()
            .chain(sig.outputs)
            .map(|f| (f.name, f.ty))
            .collect()
    }

    fn err(source: &str) -> SignatureError {
        Signature::parse(source).unwrap_err()
    }

    /// The error's message and the text starting at its position.
    fn err_at(source: &str) -> (String, String) {
        let e = err(source);
        let at = source[e.position.expect("error has a position")..].to_owned();
        (e.message, at)
    }

    #[test]
    fn untyped_fields_are_str() {
        let sig = Signature::parse("question -> answer").unwrap();
        assert_eq!(sig.inputs, vec![Field::new("question", FieldType::Str)]);
        assert_eq!(sig.outputs, vec![Field::new("answer", FieldType::Str)]);
        assert_eq!(sig.name, None);
        assert_eq!(sig.instructions, None);
    }

    #[test]
    fn typed_fields_keep_order_and_sides() {
        let sig =
            Signature::parse("context: list[str], question: str -> answer: str, confidence: float")
                .unwrap();
        let names = |fs: &[Field]| fs.iter().map(|f| f.name.clone()).collect::<Vec<_>>();
        assert_eq!(names(&sig.inputs), ["context", "question"]);
        assert_eq!(names(&sig.outputs), ["answer", "confidence"]);
        assert_eq!(sig.inputs[0].ty, FieldType::list(FieldType::Str));
        assert_eq!(sig.outputs[1].ty, FieldType::Float);
    }

    #[test]
    fn every_scalar_type_parses() {
        assert_eq!(
            types("a: str, b: int, c: float -> d: bool"),
            [
                ("a".into(), FieldType::Str),
                ("b".into(), FieldType::Int),
                ("c".into(), FieldType::Float),
                ("d".into(), FieldType::Bool),
            ]
        );
    }

    #[test]
    fn generic_spellings_are_equivalent() {
        let list = FieldType::list(FieldType::Int);
        let dict = FieldType::dict(FieldType::Float);
        let opt = FieldType::optional(FieldType::Str);
        for (written, expected) in [
            ("list[int]", &list),
            ("List[int]", &list),
            ("typing.List[int]", &list),
            ("dict[str, float]", &dict),
            ("Dict[str,float]", &dict),
            ("typing.Dict[ str , float ]", &dict),
            ("Optional[str]", &opt),
            ("typing.Optional[str]", &opt),
            ("str | None", &opt),
            ("None | str", &opt),
            ("str|None", &opt),
        ] {
            let sig = Signature::parse(&format!("x: {written} -> y")).unwrap();
            assert_eq!(&sig.inputs[0].ty, expected, "{written}");
        }
    }

    #[test]
    fn nested_types_parse() {
        assert_eq!(
            types("x: dict[str, list[Optional[int]]] -> y: list[list[str]] | None")[..],
            [
                (
                    "x".into(),
                    FieldType::dict(FieldType::list(FieldType::optional(FieldType::Int)))
                ),
                (
                    "y".into(),
                    FieldType::optional(FieldType::list(FieldType::list(FieldType::Str)))
                ),
            ]
        );
    }

    #[test]
    fn literals_accept_strings_integers_and_booleans() {
        let sig = Signature::parse(
            r#"x: Literal["a", 'b', "say \"hi\"", 'it\'s', "\u00e9\n", -7, 42, True, False] -> y"#,
        )
        .unwrap();
        assert_eq!(
            sig.inputs[0].ty,
            FieldType::Literal(vec![
                LiteralValue::Str("a".into()),
                LiteralValue::Str("b".into()),
                LiteralValue::Str("say \"hi\"".into()),
                LiteralValue::Str("it's".into()),
                LiteralValue::Str("é\n".into()),
                LiteralValue::Int(-7),
                LiteralValue::Int(42),
                LiteralValue::Bool(true),
                LiteralValue::Bool(false),
            ])
        );
    }

    #[test]
    fn whitespace_is_free_between_tokens() {
        let a = Signature::parse("a:list[str],b->c:Optional[int]").unwrap();
        let b =
            Signature::parse("\n  a :  list [ str ] ,\n b\t->  c : Optional [ int ]  \n").unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn empty_signature_is_rejected() {
        let e = err("   ");
        assert!(e.message.contains("empty"), "{e}");
    }

    #[test]
    fn missing_arrow_points_at_the_end() {
        let (message, at) = err_at("question, context");
        assert!(message.contains("expected '->'"), "{message}");
        assert_eq!(at, "");
    }

    #[test]
    fn missing_side_is_reported_at_the_arrow_or_end() {
        let (message, at) = err_at("  -> answer");
        assert_eq!(message, "expected at least one input field before '->'");
        assert_eq!(at, "-> answer");
        let (message, at) = err_at("question ->  ");
        assert_eq!(message, "expected at least one output field after '->'");
        assert_eq!(at, "");
    }

    #[test]
    fn second_arrow_is_rejected() {
        let (message, at) = err_at("a -> b -> c");
        assert!(message.contains("exactly one '->'"), "{message}");
        assert_eq!(at, "-> c");
    }

    #[test]
    fn trailing_comma_is_rejected_where_the_name_is_missing() {
        let (message, at) = err_at("a, -> b");
        assert_eq!(message, "expected a field name after ','");
        assert_eq!(at, "-> b");
    }

    #[test]
    fn missing_type_after_colon_is_reported_at_the_next_token() {
        let (message, at) = err_at("question: -> answer");
        assert_eq!(message, "expected a type after ':'");
        assert_eq!(at, "-> answer");
        let (message, at) = err_at("q -> a:");
        assert_eq!(message, "expected a type after ':'");
        assert_eq!(at, "");
    }

    #[test]
    fn invalid_field_names_are_reported_at_the_name() {
        for (source, expected, at) in [
            ("1abc -> b", "not a valid field name", "1abc -> b"),
            ("a -> _b", "cannot start with '_'", "_b"),
            ("q, class -> a", "Python keyword", "class -> a"),
            ("instructions -> a", "reserved by DSPy", "instructions -> a"),
            ("q, lm -> a", "DSPy's Predict takes `lm=`", "lm -> a"),
            ("demos -> a", "cannot be an input field", "demos -> a"),
            ("q -> réponse", "must be ASCII", "éponse"),
            ("q -> $", "expected a field name", "$"),
        ] {
            let (message, rest) = err_at(source);
            assert!(message.contains(expected), "{source}: {message}");
            assert_eq!(rest, at, "{source}");
        }
    }

    #[test]
    fn field_names_may_shadow_harmless_pydantic_attributes() {
        // DSPy only warns about these; rejecting them would refuse working programs.
        assert!(Signature::parse("json, schema -> copy").is_ok());
    }

    #[test]
    fn duplicate_names_are_reported_at_the_second_use() {
        let (message, at) = err_at("a, b -> c, b");
        assert!(message.contains("`b` is used twice"), "{message}");
        assert_eq!(at, "b");
    }

    #[test]
    fn junk_between_fields_is_reported() {
        let (message, at) = err_at("a b -> c");
        assert_eq!(message, "expected ',' or '->' after the field");
        assert_eq!(at, "b -> c");
        let (message, at) = err_at("a -> c d");
        assert!(message.contains("end of the signature"), "{message}");
        assert_eq!(at, "d");
    }

    #[test]
    fn unknown_types_name_the_type_and_suggest_one() {
        let (message, at) = err_at("a: string -> b");
        assert!(
            message.starts_with("unknown type `string` (did you mean `str`?)"),
            "{message}"
        );
        assert_eq!(at, "string -> b");
        let (message, at) = err_at("a: list[Foo] -> b");
        assert!(message.starts_with("unknown type `Foo`;"), "{message}");
        assert_eq!(at, "Foo] -> b");
        let (message, _) = err_at("a: typing.Any -> b");
        assert!(message.contains("`Any`"), "{message}");
        let (message, at) = err_at("a: typing.Tuple[int] -> b");
        assert!(
            message.contains("`typing.Tuple` is not supported"),
            "{message}"
        );
        assert_eq!(at, "typing.Tuple[int] -> b");
    }

    #[test]
    fn unsupported_unions_are_rejected() {
        let (message, at) = err_at("a: int | str -> b");
        assert!(message.contains("only `T | None`"), "{message}");
        assert_eq!(at, "| str -> b");
        let (message, _) = err_at("a: Union[int, None] -> b");
        assert!(message.contains("`Union` is not supported"), "{message}");
        let (message, _) = err_at("a: None -> b");
        assert!(message.contains("`None` alone"), "{message}");
    }

    #[test]
    fn brackets_are_checked() {
        let (message, at) = err_at("a: list -> b");
        assert_eq!(message, "`list` needs '[' and a type, as in `list[str]`");
        assert_eq!(at, "-> b");
        let (message, at) = err_at("a: list[str -> b");
        assert_eq!(message, "expected ']' to close `list[`");
        assert_eq!(at, "-> b");
        let (message, at) = err_at("q -> a: Optional[int");
        assert!(message.ends_with("but the signature ended"), "{message}");
        assert_eq!(at, "");
        let (message, at) = err_at("a: str[int] -> b");
        assert_eq!(message, "`str` takes no type parameters");
        assert_eq!(at, "[int] -> b");
    }

    #[test]
    fn dict_keys_must_be_str() {
        let (message, at) = err_at("a: dict[int, str] -> b");
        assert!(message.contains("keys must be `str`"), "{message}");
        assert_eq!(at, "int, str] -> b");
        let (message, at) = err_at("a: dict[str] -> b");
        assert!(
            message.contains("expected ',' and a value type"),
            "{message}"
        );
        assert_eq!(at, "] -> b");
    }

    #[test]
    fn bad_literals_are_reported_at_the_value() {
        for (source, expected, at) in [
            ("a: Literal[] -> b", "expected a literal value", "] -> b"),
            ("a: Literal[x] -> b", "expected a literal value", "x] -> b"),
            (
                "a: Literal[1.5] -> b",
                "only string, integer and boolean",
                "1.5] -> b",
            ),
            ("a: Literal[true] -> b", "`True`", "true] -> b"),
            ("a: Literal[\"abc] -> b", "never closed", "\"abc] -> b"),
            ("a: Literal['\\q'] -> b", "unknown escape", "\\q'] -> b"),
            ("a: Literal['\\u12'] -> b", "4 hex digits", "\\u12'] -> b"),
            (
                "a: Literal['\\ud800'] -> b",
                "4 hex digits",
                "\\ud800'] -> b",
            ),
            (
                "a: Literal[99999999999999999999] -> b",
                "fits in 64 bits",
                "99999999999999999999] -> b",
            ),
        ] {
            let (message, rest) = err_at(source);
            assert!(message.contains(expected), "{source}: {message}");
            assert_eq!(rest, at, "{source}");
        }
    }

    #[test]
    fn parse_type_reads_one_whole_type() {
        assert_eq!(
            parse_type(" list[int] ").unwrap(),
            FieldType::list(FieldType::Int)
        );
        let e = parse_type("int int").unwrap_err();
        assert_eq!(e.message, "unexpected text after the type");
        assert_eq!(e.position, Some(4));
        assert_eq!(e.source, "int int");
        assert!(parse_type("")
            .unwrap_err()
            .message
            .starts_with("expected a type"));
    }
}
