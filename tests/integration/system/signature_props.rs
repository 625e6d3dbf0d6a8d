//! Properties of signature parsing and validation that hold for every signature, checked
//! on generated ones: the canonical string form and the wire form both read back to the
//! same signature, the parser never panics and always points inside its input, and
//! values shaped like a signature's types pass its checks unchanged.

use dspex::signature::{Field, FieldType, LiteralValue, Signature};
use proptest::prelude::*;
use serde_json::{Map, Value};

fn literal() -> impl Strategy<Value = LiteralValue> {
    prop_oneof![
        any::<String>().prop_map(LiteralValue::Str),
        any::<i64>().prop_map(LiteralValue::Int),
        any::<bool>().prop_map(LiteralValue::Bool),
    ]
}

fn field_type() -> impl Strategy<Value = FieldType> {
    let leaf = prop_oneof![
        Just(FieldType::Str),
        Just(FieldType::Int),
        Just(FieldType::Float),
        Just(FieldType::Bool),
        prop::collection::vec(literal(), 1..4).prop_map(FieldType::Literal),
    ];
    leaf.prop_recursive(4, 16, 1, |inner| {
        prop_oneof![
            inner.clone().prop_map(FieldType::list),
            inner.clone().prop_map(FieldType::dict),
            inner.prop_map(FieldType::optional),
        ]
    })
}

/// Signatures with distinct, allowed names (the generator over-produces and `new`
/// filters, so the property also covers the name rules it keeps).
fn signature() -> impl Strategy<Value = Signature> {
    fn field() -> impl Strategy<Value = Field> {
        ("[a-zA-Z][a-zA-Z0-9_]{0,7}", field_type()).prop_map(|(n, t)| Field::new(n, t))
    }
    (
        prop::collection::vec(field(), 1..4),
        prop::collection::vec(field(), 1..4),
    )
        .prop_filter_map("names must be allowed and unique", |(inputs, outputs)| {
            Signature::new(inputs, outputs).ok()
        })
}

/// A JSON value that has type `ty`.
fn value_of(ty: &FieldType) -> BoxedStrategy<Value> {
    match ty {
        FieldType::Str => any::<String>().prop_map(Value::from).boxed(),
        FieldType::Int => any::<i64>().prop_map(Value::from).boxed(),
        FieldType::Float => (-1e12f64..1e12).prop_map(Value::from).boxed(),
        FieldType::Bool => any::<bool>().prop_map(Value::from).boxed(),
        FieldType::List(inner) => prop::collection::vec(value_of(inner), 0..3)
            .prop_map(Value::Array)
            .boxed(),
        FieldType::Dict(inner) => {
            prop::collection::btree_map(any::<String>(), value_of(inner), 0..3)
                .prop_map(|m| Value::Object(m.into_iter().collect()))
                .boxed()
        }
        FieldType::Optional(inner) => prop_oneof![Just(Value::Null), value_of(inner)].boxed(),
        FieldType::Literal(options) => prop::sample::select(options.clone())
            .prop_map(|o| o.to_json())
            .boxed(),
    }
}

fn object_for(fields: &[Field]) -> BoxedStrategy<Map<String, Value>> {
    let names: Vec<String> = fields.iter().map(|f| f.name.clone()).collect();
    let values: Vec<BoxedStrategy<Value>> = fields.iter().map(|f| value_of(&f.ty)).collect();
    values
        .prop_map(move |values| names.iter().cloned().zip(values).collect())
        .boxed()
}

proptest! {
    #[test]
    fn display_parses_back_to_an_equal_signature(sig in signature()) {
        let text = sig.to_string();
        prop_assert_eq!(Signature::parse(&text).unwrap(), sig, "{}", text);
    }

    #[test]
    fn wire_form_reads_back_to_an_equal_signature(
        sig in signature(),
        instructions in proptest::option::of(any::<String>()),
        description in proptest::option::of(any::<String>()),
    ) {
        let mut sig = sig;
        sig.instructions = instructions;
        sig.inputs[0].description = description;
        prop_assert_eq!(Signature::from_json(&sig.to_wire()).unwrap(), sig);
    }

    #[test]
    fn parse_errors_point_inside_the_input(source in "[a-z:,\\[\\]|\"' ->A-Z_0-9é]{0,30}") {
        if let Err(e) = Signature::parse(&source) {
            let position = e.position.expect("string-form errors have a position");
            prop_assert!(position <= source.len());
            prop_assert!(source.is_char_boundary(position));
            prop_assert_eq!(&e.source, &source);
            // Rendering must not panic and must end with the caret line.
            prop_assert!(e.to_string().ends_with('^'));
        }
    }

    #[test]
    fn values_of_the_declared_types_pass_and_decode_unchanged(
        (sig, inputs, outputs) in signature().prop_flat_map(|sig| {
            let inputs = object_for(&sig.inputs);
            let outputs = object_for(&sig.outputs);
            (Just(sig), inputs, outputs)
        })
    ) {
        prop_assert_eq!(sig.validate_inputs(&inputs), Ok(()));
        let decoded = sig.decode_outputs(&Value::Object(outputs.clone())).unwrap();
        prop_assert_eq!(decoded, outputs);
    }
}
