//! Property tests of the frame codec: whatever arrives, in whatever chunks, decoding
//! either yields the messages that were sent or a typed error, and never panics.

use bytes::BytesMut;
use dspex_actors::protocol::{FrameCodec, FrameError, Request, Response, WireError};
use proptest::prelude::*;
use serde_json::Value;
use tokio_util::codec::{Decoder, Encoder};

/// Floats that survive a JSON round trip exactly (finite, few significant digits), so
/// that equality after decoding tests the codec and not float formatting.
fn arb_float() -> impl Strategy<Value = f64> {
    (-1_000_000_000_000_000i64..1_000_000_000_000_000).prop_map(|ms| ms as f64 / 1000.0)
}

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        arb_float().prop_map(Value::from),
        any::<String>().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(any::<String>(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn arb_request() -> impl Strategy<Value = Request> {
    (any::<u64>(), any::<String>(), arb_json(), any::<String>()).prop_map(
        |(id, command, args, timestamp)| Request {
            id,
            command,
            args,
            timestamp,
        },
    )
}

fn arb_response() -> impl Strategy<Value = Response> {
    prop_oneof![
        (any::<u64>(), arb_json(), prop::option::of(arb_float())).prop_map(
            |(id, result, timestamp)| Response::Success {
                id,
                result,
                timestamp
            }
        ),
        (
            any::<u64>(),
            any::<String>(),
            any::<String>(),
            prop::option::of(any::<String>())
        )
            .prop_map(|(id, error_type, message, traceback)| Response::Failure {
                id,
                error: WireError {
                    traceback,
                    ..WireError::new(error_type, message)
                },
            }),
    ]
}

/// Cut points (sorted, deduplicated, inside `0..=len`) for feeding a buffer in chunks.
fn chunks(bytes: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
    points.push(0);
    points.push(bytes.len());
    points.sort_unstable();
    points.dedup();
    points
        .windows(2)
        .map(|w| bytes[w[0]..w[1]].to_vec())
        .collect()
}

/// Feeds `parts` one at a time, decoding all complete frames after each, then signals
/// EOF. Returns the items and the first error, like a `FramedRead` would see them.
fn decode_all<T: serde::de::DeserializeOwned>(
    codec: &mut FrameCodec<T, Request>,
    parts: &[Vec<u8>],
) -> (Vec<T>, Option<FrameError>) {
    let mut buf = BytesMut::new();
    let mut items = Vec::new();
    for part in parts {
        buf.extend_from_slice(part);
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(item)) => items.push(item),
                Ok(None) => break,
                Err(e) => return (items, Some(e)),
            }
        }
    }
    loop {
        match codec.decode_eof(&mut buf) {
            Ok(Some(item)) => items.push(item),
            Ok(None) => return (items, None),
            Err(e) => return (items, Some(e)),
        }
    }
}

fn frame(body: &[u8]) -> Vec<u8> {
    let mut out = (body.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(body);
    out
}

proptest! {
    #[test]
    fn requests_round_trip_in_any_chunking(
        reqs in prop::collection::vec(arb_request(), 1..5),
        cuts in prop::collection::vec(any::<usize>(), 0..12),
    ) {
        let mut host = FrameCodec::<Response, Request>::default();
        let mut buf = BytesMut::new();
        for req in &reqs {
            host.encode(req, &mut buf).unwrap();
        }
        let mut worker = FrameCodec::<Request, Request>::default();
        let (got, err) = decode_all(&mut worker, &chunks(&buf, &cuts));
        prop_assert_eq!(err, None);
        prop_assert_eq!(got, reqs);
    }

    #[test]
    fn responses_round_trip_in_any_chunking(
        resps in prop::collection::vec(arb_response(), 1..5),
        cuts in prop::collection::vec(any::<usize>(), 0..12),
    ) {
        let mut worker = FrameCodec::<Request, Response>::default();
        let mut buf = BytesMut::new();
        for resp in resps.clone() {
            worker.encode(resp, &mut buf).unwrap();
        }
        let mut host = FrameCodec::<Response, Request>::default();
        let (got, err) = decode_all(&mut host, &chunks(&buf, &cuts));
        prop_assert_eq!(err, None);
        prop_assert_eq!(got, resps);
    }

    #[test]
    fn a_frame_cut_short_is_truncated(resp in arb_response(), cut in any::<usize>()) {
        let mut buf = BytesMut::new();
        FrameCodec::<Request, Response>::default().encode(&resp, &mut buf).unwrap();
        let keep = 1 + cut % (buf.len() - 1);
        let mut host = FrameCodec::<Response, Request>::default();
        let (got, err) = decode_all(&mut host, &[buf[..keep].to_vec()]);
        prop_assert!(got.is_empty());
        let expected = if keep < 4 { 4 } else { buf.len() };
        prop_assert_eq!(err, Some(FrameError::Truncated { expected, got: keep }));
    }

    #[test]
    fn an_oversized_length_is_refused_from_the_header_alone(
        max in 0usize..4096,
        excess in 1u32..u32::MAX / 2,
        tail in prop::collection::vec(any::<u8>(), 0..16),
    ) {
        let len = max as u32 + excess;
        let mut bytes = len.to_be_bytes().to_vec();
        bytes.extend_from_slice(&tail);
        let mut host = FrameCodec::<Response, Request>::new(max);
        let (got, err) = decode_all(&mut host, &[bytes]);
        prop_assert!(got.is_empty());
        prop_assert_eq!(err, Some(FrameError::TooLarge { len: len as usize, max }));
    }

    #[test]
    fn encoding_an_oversized_message_is_refused(req in arb_request()) {
        let size = serde_json::to_vec(&req).unwrap().len();
        let mut codec = FrameCodec::<Response, Request>::new(size - 1);
        let mut buf = BytesMut::new();
        prop_assert_eq!(
            codec.encode(&req, &mut buf),
            Err(FrameError::TooLarge { len: size, max: size - 1 })
        );
        prop_assert!(buf.is_empty());
    }

    #[test]
    fn arbitrary_bytes_never_panic(
        bytes in prop::collection::vec(any::<u8>(), 0..256),
        cuts in prop::collection::vec(any::<usize>(), 0..8),
        max in 0usize..512,
    ) {
        let parts = chunks(&bytes, &cuts);
        decode_all(&mut FrameCodec::<Response, Request>::new(max), &parts);
        decode_all(&mut FrameCodec::<Request, Request>::new(max), &parts);
    }

    #[test]
    fn invalid_utf8_is_a_utf8_error(
        before in prop::collection::vec(any::<u8>(), 0..32),
        after in prop::collection::vec(any::<u8>(), 0..32),
    ) {
        // 0xFF never occurs in UTF-8.
        let body = [before, vec![0xFF], after].concat();
        let (_, err) = decode_all(&mut FrameCodec::<Response, Request>::default(), &[frame(&body)]);
        prop_assert!(matches!(err, Some(FrameError::Utf8(_))), "{:?}", err);
    }

    #[test]
    fn invalid_json_is_a_json_error(text in any::<String>()) {
        prop_assume!(serde_json::from_str::<serde::de::IgnoredAny>(&text).is_err());
        let parts = [frame(text.as_bytes())];
        let (_, err) = decode_all(&mut FrameCodec::<Response, Request>::default(), &parts);
        prop_assert!(matches!(err, Some(FrameError::Json(_))), "{:?}", err);
        let (_, err) = decode_all(&mut FrameCodec::<Request, Request>::default(), &parts);
        prop_assert!(matches!(err, Some(FrameError::Json(_))), "{:?}", err);
    }

    #[test]
    fn valid_json_that_is_not_a_response_is_a_shape_error(value in arb_json()) {
        let is_response_like = value.get("id").is_some_and(Value::is_u64)
            && value.get("success").is_some_and(Value::is_boolean);
        prop_assume!(!is_response_like);
        let body = serde_json::to_vec(&value).unwrap();
        let (_, err) = decode_all(&mut FrameCodec::<Response, Request>::default(), &[frame(&body)]);
        prop_assert!(matches!(err, Some(FrameError::Shape(_))), "{:?}", err);
    }
}
