//! DSPy signatures, parsed and checked on the Rust side.
//!
//! A signature says which named, typed inputs a program takes and which outputs it
//! produces (`"context: list[str], question -> answer: str, confidence: float"`). dspex
//! parses it here rather than in Python so that a bad signature or a malformed input row
//! is reported before any worker is involved, with a position or a field path the user
//! can act on, and so that outputs coming back from Python are checked against the
//! declared types before the caller sees them.
//!
//! # The string form
//!
//! `inputs -> outputs`, each side a comma-separated list of `name` or `name: type`.
//! Whitespace between tokens is free. An untyped field is a `str`. Types:
//!
//! | written                                   | means                          |
//! |-------------------------------------------|--------------------------------|
//! | `str`, `int`, `float`, `bool`             | the JSON scalar                |
//! | `list[T]`, `List[T]`                      | a JSON array of `T`            |
//! | `dict[str, T]`, `Dict[str, T]`            | a JSON object with `T` values  |
//! | `Optional[T]`, `T \| None`, `None \| T`   | `T` or `null`                  |
//! | `Literal["a", 'b', 3, True]`              | exactly one of the values      |
//!
//! Any of the capitalised forms may be written with a `typing.` prefix. Dictionary keys
//! must be `str` because JSON object keys are strings. Other unions, `Any`, tuples and
//! user classes are rejected: the Rust side could not validate them. Field names are
//! ASCII identifiers, unique across inputs and outputs, and may not be names that DSPy
//! itself rejects (Python keywords, a leading `_`, or attributes DSPy signatures use
//! such as `instructions`).
//!
//! [`Signature`]'s `Display` writes the canonical compact form (`: str` omitted, one
//! space after commas, ` -> ` between the sides), which parses back to an equal
//! signature. Names, instructions and descriptions are not part of the string form.
//!
//! # The structured form
//!
//! See [`Signature::from_json`]; [`Signature::to_wire`] is what the Python bridge
//! receives.

mod json;
mod parse;
mod validate;

use std::fmt;
use std::str::FromStr;

pub use parse::RESERVED_INPUT_NAMES;
pub use validate::ValidationError;

/// How deeply types may nest: `list[list[str]]` is 2 deep, and `Optional`/`T | None`
/// count like any container. The bridge refuses the same depth
/// (`MAX_TYPE_DEPTH` in `dspex_bridge/definitions.py`). Without a bound, a hostile
/// signature thousands of levels deep would overflow the stack of whoever walks it (an
/// abort no embedding host can catch) and make the `dummy` LM build exponential output.
pub const MAX_TYPE_DEPTH: usize = 32;

/// The type of one signature field.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum FieldType {
    /// A JSON string (`str`).
    Str,
    /// A JSON integer (`int`).
    Int,
    /// Any JSON number (`float`).
    Float,
    /// `true` or `false` (`bool`).
    Bool,
    /// A JSON array whose elements all have the inner type (`list[T]`).
    List(Box<FieldType>),
    /// A JSON object with string keys whose values all have the inner type
    /// (`dict[str, T]`).
    Dict(Box<FieldType>),
    /// The inner type or `null` (`Optional[T]`). An optional input may be left out.
    Optional(Box<FieldType>),
    /// Exactly one of the listed values (`Literal[...]`). Never empty.
    Literal(Vec<LiteralValue>),
}

impl FieldType {
    /// `list[inner]`.
    pub fn list(inner: FieldType) -> FieldType {
        FieldType::List(Box::new(inner))
    }

    /// `dict[str, inner]`.
    pub fn dict(inner: FieldType) -> FieldType {
        FieldType::Dict(Box::new(inner))
    }

    /// `Optional[inner]`.
    pub fn optional(inner: FieldType) -> FieldType {
        FieldType::Optional(Box::new(inner))
    }

    /// Whether a field of this type may be absent or `null`.
    pub fn is_optional(&self) -> bool {
        matches!(self, FieldType::Optional(_))
    }

    /// How many containers (`list`, `dict`, `Optional`) wrap the innermost type: 0 for
    /// `str`, 2 for `list[Optional[int]]`. A type is a chain, so this is a loop, safe on
    /// a type of any depth.
    pub fn depth(&self) -> usize {
        let mut depth = 0;
        let mut ty = self;
        while let FieldType::List(inner) | FieldType::Dict(inner) | FieldType::Optional(inner) = ty
        {
            depth += 1;
            ty = inner;
        }
        depth
    }

    /// The innermost type (`int` for `list[Optional[int]]`).
    fn innermost(&self) -> &FieldType {
        let mut ty = self;
        while let FieldType::List(inner) | FieldType::Dict(inner) | FieldType::Optional(inner) = ty
        {
            ty = inner;
        }
        ty
    }
}

impl fmt::Display for FieldType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FieldType::Str => f.write_str("str"),
            FieldType::Int => f.write_str("int"),
            FieldType::Float => f.write_str("float"),
            FieldType::Bool => f.write_str("bool"),
            FieldType::List(inner) => write!(f, "list[{inner}]"),
            FieldType::Dict(inner) => write!(f, "dict[str, {inner}]"),
            FieldType::Optional(inner) => write!(f, "Optional[{inner}]"),
            FieldType::Literal(values) => {
                f.write_str("Literal[")?;
                for (i, value) in values.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{value}")?;
                }
                f.write_str("]")
            }
        }
    }
}

/// One allowed value of a `Literal[...]` type.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum LiteralValue {
    /// A quoted string, `"a"` or `'a'`.
    Str(String),
    /// An integer, `3` or `-1`.
    Int(i64),
    /// `True` or `False` (Python spelling, as DSPy writes them).
    Bool(bool),
}

impl LiteralValue {
    /// The JSON value this literal stands for.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            LiteralValue::Str(s) => serde_json::Value::from(s.as_str()),
            LiteralValue::Int(i) => serde_json::Value::from(*i),
            LiteralValue::Bool(b) => serde_json::Value::from(*b),
        }
    }
}

impl fmt::Display for LiteralValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // JSON string syntax is a subset of what the parser accepts, so this is the
            // escaping that round-trips.
            LiteralValue::Str(s) => f.write_str(&serde_json::Value::from(s.as_str()).to_string()),
            LiteralValue::Int(i) => write!(f, "{i}"),
            LiteralValue::Bool(true) => f.write_str("True"),
            LiteralValue::Bool(false) => f.write_str("False"),
        }
    }
}

/// One named, typed input or output of a signature.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Field {
    /// An ASCII identifier, unique within the signature.
    pub name: String,
    /// What values the field holds.
    pub ty: FieldType,
    /// Shown to the LM by DSPy as the field's description.
    pub description: Option<String>,
}

impl Field {
    /// A field without a description.
    pub fn new(name: impl Into<String>, ty: FieldType) -> Field {
        Field {
            name: name.into(),
            ty,
            description: None,
        }
    }

    /// The same field with a description.
    pub fn with_description(mut self, description: impl Into<String>) -> Field {
        self.description = Some(description.into());
        self
    }
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.ty {
            // Untyped means `str`, so the compact form leaves it out.
            FieldType::Str => f.write_str(&self.name),
            ref ty => write!(f, "{}: {ty}", self.name),
        }
    }
}

/// A DSPy signature: what a program takes and what it produces.
///
/// # Examples
///
/// ```
/// use dspex::signature::{FieldType, Signature};
///
/// let sig: Signature = "context: list[str], question -> answer, confidence: float".parse()?;
/// assert_eq!(sig.inputs[0].ty, FieldType::list(FieldType::Str));
/// assert_eq!(sig.outputs[1].ty, FieldType::Float);
/// assert_eq!(sig.to_string(), "context: list[str], question -> answer, confidence: float");
/// # Ok::<(), dspex::signature::SignatureError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Signature {
    /// A class name for the signature on the Python side, if any.
    pub name: Option<String>,
    /// The task description DSPy puts in front of the prompt.
    pub instructions: Option<String>,
    /// At least one field.
    pub inputs: Vec<Field>,
    /// At least one field; names never repeat an input's.
    pub outputs: Vec<Field>,
}

impl Signature {
    /// Parses the string form (see the [module docs](self)).
    ///
    /// # Errors
    ///
    /// A [`SignatureError`] whose `position` points at the offending character.
    pub fn parse(source: &str) -> Result<Signature, SignatureError> {
        let (inputs, outputs) = parse::parse_signature(source)?;
        Ok(Signature {
            name: None,
            instructions: None,
            inputs,
            outputs,
        })
    }

    /// Parses the outputs alone, `answer, confidence: float`: what a `python` program
    /// declares when its inputs are whatever its `forward` takes. The result has no input
    /// fields (the one kind of signature that may not).
    ///
    /// ```
    /// let sig = dspex::Signature::parse_outputs("answer, confidence: float")?;
    /// assert!(sig.inputs.is_empty());
    /// assert_eq!(sig.outputs.len(), 2);
    /// # Ok::<(), dspex::signature::SignatureError>(())
    /// ```
    ///
    /// # Errors
    ///
    /// A [`SignatureError`] pointing at the offending character.
    pub fn parse_outputs(source: &str) -> Result<Signature, SignatureError> {
        Ok(Signature {
            name: None,
            instructions: None,
            inputs: Vec::new(),
            outputs: parse::parse_field_list(source)?,
        })
    }

    /// Builds a signature from fields, applying the same checks as the parser.
    ///
    /// # Errors
    ///
    /// An empty side, a field name that is not an allowed identifier, or a name used
    /// twice.
    pub fn new(inputs: Vec<Field>, outputs: Vec<Field>) -> Result<Signature, SignatureError> {
        let signature = Signature {
            name: None,
            instructions: None,
            inputs,
            outputs,
        };
        signature.check_fields()?;
        Ok(signature)
    }

    /// Parses the structured JSON form, or a JSON string holding the string form.
    ///
    /// ```json
    /// {"name": "QA", "instructions": "Answer briefly.",
    ///  "inputs": [{"name": "question", "type": "str", "description": "..."}],
    ///  "outputs": [{"name": "answer"}]}
    /// ```
    ///
    /// `name`, `instructions`, a field's `type` (default `str`) and `description` are
    /// optional; other keys are rejected so that a typo does not go unnoticed. `type` is
    /// either the string syntax (`"list[str]"`) or the wire form [`to_wire`] writes
    /// (`{"list": "str"}`), so `from_json(&sig.to_wire())` gives `sig` back.
    ///
    /// [`to_wire`]: Signature::to_wire
    ///
    /// # Errors
    ///
    /// A [`SignatureError`] naming the offending JSON location (`inputs[1].type`).
    pub fn from_json(value: &serde_json::Value) -> Result<Signature, SignatureError> {
        json::from_json(value)
    }

    /// The same signature with these instructions.
    pub fn with_instructions(mut self, instructions: impl Into<String>) -> Signature {
        self.instructions = Some(instructions.into());
        self
    }

    /// The same signature with this name.
    pub fn with_name(mut self, name: impl Into<String>) -> Signature {
        self.name = Some(name.into());
        self
    }

    /// The input field called `name`.
    pub fn input(&self, name: &str) -> Option<&Field> {
        self.inputs.iter().find(|f| f.name == name)
    }

    /// The output field called `name`.
    pub fn output(&self, name: &str) -> Option<&Field> {
        self.outputs.iter().find(|f| f.name == name)
    }

    /// The JSON the Python bridge builds the DSPy signature from:
    /// `{"name", "instructions", "inputs": [{"name", "type", "description"}], "outputs"}`
    /// with absent values as `null` and types as `"str" | "int" | "float" | "bool" |
    /// {"list": T} | {"dict": T} | {"optional": T} | {"literal": [...]}`.
    pub fn to_wire(&self) -> serde_json::Value {
        json::to_wire(self)
    }

    /// A JSON Schema (draft 2020-12) for the inputs object.
    pub fn input_schema(&self) -> serde_json::Value {
        json::object_schema(self, &self.inputs, "inputs")
    }

    /// A JSON Schema (draft 2020-12) for the outputs object.
    pub fn output_schema(&self) -> serde_json::Value {
        json::object_schema(self, &self.outputs, "outputs")
    }

    /// Checks an inputs object against the declared inputs: every non-optional input is
    /// present, every value has its field's type, and nothing undeclared is passed.
    ///
    /// `int` accepts JSON integers only (`3`, not `3.0`); `float` accepts any number;
    /// an optional input may be absent or `null`. Nothing is converted: what passes is
    /// sent to Python as it is.
    ///
    /// # Errors
    ///
    /// The first problem found, as a [`ValidationError`] whose `field` is a path such as
    /// `context[2]` or `meta.source`. Undeclared fields are reported before missing
    /// ones, because a misspelt name shows up as both and the former is the real cause.
    pub fn validate_inputs(
        &self,
        inputs: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<(), ValidationError> {
        validate::validate_inputs(self, inputs)
    }

    /// Checks the outputs a worker returned and converts them to the declared types.
    ///
    /// Every declared output must be present, except optional ones, which become `null`
    /// when absent. Only lossless conversions are made: an integral float or a string
    /// holding an integer becomes an `int`; any number or a string holding a finite
    /// number becomes a `float` (always written as a float); `"true"`/`"false"` (also
    /// Python's `"True"`/`"False"`) become a `bool`; a number or boolean becomes the
    /// text of a `str`. Undeclared outputs are dropped.
    ///
    /// # Errors
    ///
    /// A [`ValidationError`] for a missing output or a value that cannot be converted.
    pub fn decode_outputs(
        &self,
        outputs: &serde_json::Value,
    ) -> Result<serde_json::Map<String, serde_json::Value>, ValidationError> {
        validate::decode_outputs(self, outputs)
    }

    /// Applies the field rules the parser applies, to hand-built or JSON signatures.
    fn check_fields(&self) -> Result<(), SignatureError> {
        if self.inputs.is_empty() {
            return Err(SignatureError::new(
                "a signature needs at least one input field",
            ));
        }
        if self.outputs.is_empty() {
            return Err(SignatureError::new(
                "a signature needs at least one output field",
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for field in self.inputs.iter().chain(&self.outputs) {
            if let Err(message) = parse::check_field_name(&field.name) {
                return Err(SignatureError::new(message));
            }
            if self.input(&field.name).is_some() {
                parse::check_input_name(&field.name).map_err(SignatureError::new)?;
            }
            if !seen.insert(field.name.as_str()) {
                return Err(SignatureError::new(format!(
                    "field name `{}` is used twice; names must be unique across inputs and outputs",
                    field.name
                )));
            }
            if let Err(message) = check_type(&field.ty) {
                return Err(SignatureError::new(format!(
                    "field `{}`: {message}",
                    field.name
                )));
            }
        }
        Ok(())
    }
}

/// Rejects what the type enum allows but the string form cannot express: an empty
/// `Literal`, and nesting deeper than [`MAX_TYPE_DEPTH`]. Iterative, like
/// [`FieldType::depth`], so a hand-built type of any depth is refused, not overflowed on.
fn check_type(ty: &FieldType) -> Result<(), String> {
    if ty.depth() > MAX_TYPE_DEPTH {
        return Err(TOO_DEEP.to_owned());
    }
    match ty.innermost() {
        FieldType::Literal(values) if values.is_empty() => {
            Err("a Literal needs at least one value".to_owned())
        }
        _ => Ok(()),
    }
}

/// Why a type nested past [`MAX_TYPE_DEPTH`] is refused, and what to do instead.
pub(crate) const TOO_DEEP: &str = "the type nests more than 32 levels deep (each list, dict and Optional is a level); flatten it, or pass the deep part as JSON text in a `str` field";

impl FromStr for Signature {
    type Err = SignatureError;

    fn from_str(s: &str) -> Result<Signature, SignatureError> {
        Signature::parse(s)
    }
}

impl fmt::Display for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn side(f: &mut fmt::Formatter<'_>, fields: &[Field]) -> fmt::Result {
            for (i, field) in fields.iter().enumerate() {
                if i > 0 {
                    f.write_str(", ")?;
                }
                write!(f, "{field}")?;
            }
            Ok(())
        }
        side(f, &self.inputs)?;
        f.write_str(" -> ")?;
        side(f, &self.outputs)
    }
}

/// A signature that could not be parsed or built.
///
/// `Display` shows the message, then the source with a caret under `position`:
///
/// ```text
/// invalid signature: expected a type after ':' at column 11
///   question: -> answer
///             ^
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SignatureError {
    /// What is wrong and, where it helps, what to write instead.
    pub message: String,
    /// Byte offset into `source` of the offending character, when there is one.
    pub position: Option<usize>,
    /// The text that was being parsed (the whole signature, or a structured field's
    /// `type` string); empty when the error is not about a piece of text.
    pub source: String,
}

impl SignatureError {
    /// An error about no particular piece of text.
    pub(crate) fn new(message: impl Into<String>) -> SignatureError {
        SignatureError {
            message: message.into(),
            position: None,
            source: String::new(),
        }
    }

    /// An error at byte `position` of `source`.
    pub(crate) fn at(message: impl Into<String>, source: &str, position: usize) -> SignatureError {
        SignatureError {
            message: message.into(),
            position: Some(position.min(source.len())),
            source: source.to_owned(),
        }
    }

    /// The 1-based column (in characters) of `position` within its line.
    pub fn column(&self) -> Option<usize> {
        let position = self.position?;
        let line_start = self.source[..position]
            .rfind('\n')
            .map_or(0, |newline| newline + 1);
        Some(self.source[line_start..position].chars().count() + 1)
    }
}

impl fmt::Display for SignatureError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid signature: {}", self.message)?;
        let (Some(position), Some(column)) = (self.position, self.column()) else {
            if !self.source.is_empty() && !self.source.contains('\n') {
                write!(f, "\n  {}", self.source)?;
            }
            return Ok(());
        };
        // Only the line holding the position is shown, so the caret lines up even when
        // the source spans lines (a type string inside pretty-printed JSON).
        let line_start = self.source[..position]
            .rfind('\n')
            .map_or(0, |newline| newline + 1);
        let line_end = self.source[position..]
            .find('\n')
            .map_or(self.source.len(), |newline| position + newline);
        let line = &self.source[line_start..line_end];
        write!(
            f,
            " at column {column}\n  {line}\n  {:width$}^",
            "",
            width = column - 1
        )
    }
}

impl std::error::Error for SignatureError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_writes_canonical_compact_form() {
        let sig =
            Signature::parse("  context :list[ str ],question:str->answer : str,confidence:float ")
                .unwrap();
        assert_eq!(
            sig.to_string(),
            "context: list[str], question -> answer, confidence: float"
        );
    }

    #[test]
    fn display_writes_every_type_in_parseable_syntax() {
        let ty = FieldType::dict(FieldType::optional(FieldType::list(FieldType::Literal(
            vec![
                LiteralValue::Str("a \"q\" \\ \n".into()),
                LiteralValue::Int(-3),
                LiteralValue::Bool(true),
            ],
        ))));
        assert_eq!(
            ty.to_string(),
            r#"dict[str, Optional[list[Literal["a \"q\" \\ \n", -3, True]]]]"#
        );
        let sig = Signature::new(
            vec![Field::new("x", ty.clone())],
            vec![Field::new("y", FieldType::Bool)],
        )
        .unwrap();
        assert_eq!(Signature::parse(&sig.to_string()).unwrap(), sig);
    }

    #[test]
    fn error_display_puts_caret_under_the_offending_character() {
        let err = Signature::parse("question: -> answer").unwrap_err();
        assert_eq!(err.position, Some(10));
        assert_eq!(err.column(), Some(11));
        assert_eq!(
            err.to_string(),
            "invalid signature: expected a type after ':' at column 11\n  question: -> answer\n            ^"
        );
    }

    #[test]
    fn error_column_counts_characters_not_bytes() {
        let err = Signature::parse("é -> b").unwrap_err();
        assert_eq!(err.position, Some(0));
        let err = Signature::parse("a: Literal[\"é\"] -> b: strr").unwrap_err();
        assert_eq!(&err.source[err.position.unwrap()..], "strr");
        assert_eq!(err.column(), Some(23));
        assert!(err
            .to_string()
            .ends_with(&format!("\n  {}^", " ".repeat(22))));
    }

    #[test]
    fn error_display_shows_only_the_line_with_the_position() {
        let err = SignatureError::at("bad", "first\nsecond line", 9);
        assert_eq!(
            err.to_string(),
            "invalid signature: bad at column 4\n  second line\n     ^"
        );
    }

    #[test]
    fn error_without_position_has_no_caret() {
        let err = SignatureError::new("a signature needs at least one input field");
        assert_eq!(
            err.to_string(),
            "invalid signature: a signature needs at least one input field"
        );
    }

    #[test]
    fn new_rejects_empty_sides_duplicates_bad_names_and_empty_literals() {
        let f = |name: &str| Field::new(name, FieldType::Str);
        let cases = [
            (vec![], vec![f("b")], "at least one input"),
            (vec![f("a")], vec![], "at least one output"),
            (vec![f("a")], vec![f("a")], "`a` is used twice"),
            (vec![f("a b")], vec![f("c")], "not a valid field name"),
            (vec![f("_a")], vec![f("c")], "cannot start with '_'"),
            (
                vec![Field::new(
                    "a",
                    FieldType::optional(FieldType::Literal(vec![])),
                )],
                vec![f("c")],
                "field `a`: a Literal needs at least one value",
            ),
        ];
        for (inputs, outputs, expected) in cases {
            let err = Signature::new(inputs, outputs).unwrap_err();
            assert!(err.message.contains(expected), "{err}");
        }
    }

    #[test]
    fn with_instructions_and_name_keep_fields() {
        let sig = Signature::parse("q -> a")
            .unwrap()
            .with_instructions("Answer briefly.")
            .with_name("QA");
        assert_eq!(sig.instructions.as_deref(), Some("Answer briefly."));
        assert_eq!(sig.name.as_deref(), Some("QA"));
        assert_eq!(sig.input("q").unwrap().ty, FieldType::Str);
        assert!(sig.output("q").is_none());
        assert_eq!(sig.output("a").unwrap().name, "a");
    }

    /// Runs `f` on a thread with a small stack: a parser that recursed once per level of
    /// an 8000-deep type would overflow it (and abort the whole test binary).
    fn on_small_stack<T: Send>(f: impl FnOnce() -> T + Send) -> T {
        std::thread::scope(|scope| {
            std::thread::Builder::new()
                .stack_size(1024 * 1024)
                .spawn_scoped(scope, f)
                .unwrap()
                .join()
                .unwrap()
        })
    }

    fn nested(levels: usize) -> String {
        format!(
            "q: {}str{} -> a",
            "list[".repeat(levels),
            "]".repeat(levels)
        )
    }

    #[test]
    fn a_type_nested_8000_deep_is_a_signature_error_not_a_stack_overflow() {
        let source = nested(8000);
        let err = on_small_stack(|| Signature::parse(&source)).unwrap_err();
        assert!(
            err.message.contains("more than 32 levels"),
            "{}",
            err.message
        );
        // It points at the container that went one level too far.
        assert_eq!(err.position, Some(3 + 32 * "list[".len()));
        let unclosed = format!("q: {} -> a", "list[".repeat(8000));
        let err = on_small_stack(|| Signature::parse(&unclosed)).unwrap_err();
        assert!(
            err.message.contains("more than 32 levels"),
            "{}",
            err.message
        );
    }

    #[test]
    fn thirty_two_levels_parse_and_thirty_three_do_not() {
        let sig = Signature::parse(&nested(32)).unwrap();
        assert_eq!(sig.inputs[0].ty.depth(), MAX_TYPE_DEPTH);
        assert_eq!(Signature::parse(&sig.to_string()).unwrap(), sig);
        assert_eq!(Signature::from_json(&sig.to_wire()).unwrap(), sig);
        let err = Signature::parse(&nested(33)).unwrap_err();
        assert_eq!(err.message, TOO_DEEP);
        // Every container counts, whichever way it is written.
        let mixed = format!(
            "q: {}str{} | None -> a",
            "Optional[dict[str, ".repeat(16),
            "]]".repeat(16)
        );
        let err = Signature::parse(&mixed).unwrap_err();
        assert_eq!(err.message, TOO_DEEP, "{err}");
        let chained = format!("q: str{} -> a", " | None".repeat(8000));
        let err = on_small_stack(|| Signature::parse(&chained)).unwrap_err();
        assert_eq!(err.message, TOO_DEEP);
        assert!(Signature::parse(&format!("q: str{} -> a", " | None".repeat(32))).is_ok());
        assert!(TOO_DEEP.contains(&MAX_TYPE_DEPTH.to_string()));
    }

    #[test]
    fn deep_types_in_the_json_form_are_refused_without_deep_recursion() {
        use serde_json::json;
        let deep = |levels: usize, leaf: serde_json::Value| {
            let mut ty = leaf;
            for _ in 0..levels {
                // Moved in, not serialised again as `json!` would (quadratic).
                let mut wrapper = serde_json::Map::new();
                wrapper.insert("list".into(), ty);
                ty = serde_json::Value::Object(wrapper);
            }
            json!({"inputs": [{"name": "q", "type": ty}], "outputs": [{"name": "a"}]})
        };
        // Built and dropped on a big stack (serde_json drops values recursively); only
        // the parse runs on the small one.
        std::thread::Builder::new()
            .stack_size(64 * 1024 * 1024)
            .spawn(move || {
                let value = deep(8000, json!("str"));
                let err = on_small_stack(|| Signature::from_json(&value)).unwrap_err();
                assert!(err.message.contains("more than 32 levels"), "{err}");
                let value = deep(33, json!("str"));
                assert!(Signature::from_json(&value).is_err());
                assert!(Signature::from_json(&deep(32, json!("str"))).is_ok());
                // A string type inside the JSON form counts from where it sits.
                let value = deep(30, json!("list[list[list[int]]]"));
                let err = Signature::from_json(&value).unwrap_err();
                assert!(err.message.contains("more than 32 levels"), "{err}");
                assert!(Signature::from_json(&deep(30, json!("list[list[int]]"))).is_ok());
            })
            .unwrap()
            .join()
            .unwrap();
    }

    #[test]
    fn hand_built_types_past_the_limit_are_refused() {
        let mut ty = FieldType::Int;
        for _ in 0..33 {
            ty = FieldType::optional(ty);
        }
        let err = Signature::new(
            vec![Field::new("q", ty)],
            vec![Field::new("a", FieldType::Str)],
        )
        .unwrap_err();
        assert!(err.message.contains(TOO_DEEP), "{err}");
    }

    #[test]
    fn from_str_is_parse() {
        let a: Signature = "q: int -> a".parse().unwrap();
        assert_eq!(a, Signature::parse("q: int -> a").unwrap());
    }
}
