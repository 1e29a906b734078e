//! aws-lambda-stream's field compression: a value whose estimated size is over the threshold
//! (10 KB by default, `COMPRESSION_THRESHOLD`) is published as the string `COMPRESSED` followed
//! by the base64 of its JSON, gzipped. Sources restore such values before pipelines see them.
//!
//! ```
//! use lambda_stream::compression::{compress_value, decompress_value};
//! use serde_json::json;
//!
//! let mut event = json!({"id": "1", "type": "t", "thing": {"notes": "n".repeat(20_000)}});
//! compress_value(&mut event, 10 * 1024);
//! assert!(event["thing"].as_str().unwrap().starts_with("COMPRESSED"));
//! decompress_value(&mut event).unwrap();
//! assert_eq!(event["thing"]["notes"].as_str().unwrap().len(), 20_000);
//! ```

use std::io::{Read, Write};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use flate2::Compression;
use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use serde_json::Value;

/// What marks a compressed value.
pub const COMPRESSION_PREFIX: &str = "COMPRESSED";

/// aws-lambda-stream's default threshold, in its size estimate.
pub const DEFAULT_THRESHOLD: usize = 10 * 1024;

/// True when `bytes` (an event's JSON) may hold a compressed value: the cheap test that keeps
/// the usual decode path free of a second pass.
pub fn may_hold_compressed(bytes: &[u8]) -> bool {
    let marker = b"\"COMPRESSED";
    bytes.windows(marker.len()).any(|w| w == marker)
}

/// Restores every compressed value in `value`, at any depth (a compressed value may itself be
/// a compressed string). An error names what did not unzip or parse.
pub fn decompress_value(value: &mut Value) -> Result<(), String> {
    match value {
        Value::String(s) if s.starts_with(COMPRESSION_PREFIX) => {
            let mut restored = unzip(&s[COMPRESSION_PREFIX.len()..])?;
            decompress_value(&mut restored)?;
            *value = restored;
            Ok(())
        }
        Value::Array(items) => items.iter_mut().try_for_each(decompress_value),
        Value::Object(map) => map.values_mut().try_for_each(decompress_value),
        _ => Ok(()),
    }
}

fn unzip(b64: &str) -> Result<Value, String> {
    let zipped = STANDARD
        .decode(b64)
        .map_err(|e| format!("compressed value is not base64: {e}"))?;
    let mut json = Vec::new();
    GzDecoder::new(zipped.as_slice())
        .read_to_end(&mut json)
        .map_err(|e| format!("compressed value does not gunzip: {e}"))?;
    serde_json::from_slice(&json).map_err(|e| format!("compressed value is not JSON: {e}"))
}

/// Compresses, top down as aws-lambda-stream's replacer does, every field whose estimated size
/// is over `threshold`: the top-level object and array elements never, a value already
/// compressed never again.
pub fn compress_value(value: &mut Value, threshold: usize) {
    compress_fields(value, threshold, &[]);
}

/// [`compress_value`], never compressing the fields named in `ignore` (at any depth) as a
/// whole, though what they hold may be.
pub fn compress_fields(value: &mut Value, threshold: usize, ignore: &[&str]) {
    match value {
        Value::Object(map) => {
            for (key, v) in map.iter_mut() {
                // an ignored field is not compressed itself, but what it holds may be
                if ignore.contains(&key.as_str()) {
                    compress_fields(v, threshold, ignore);
                    continue;
                }
                let already = v
                    .as_str()
                    .is_some_and(|s| s.starts_with(COMPRESSION_PREFIX));
                if !already && sizeof(v) > threshold {
                    if let Some(zipped) = zip(v) {
                        *v = Value::String(zipped);
                    }
                } else {
                    compress_fields(v, threshold, ignore);
                }
            }
        }
        // array elements are not compressed themselves, but their fields are
        Value::Array(items) => items
            .iter_mut()
            .for_each(|i| compress_fields(i, threshold, ignore)),
        _ => {}
    }
}

fn zip(value: &Value) -> Option<String> {
    let json = serde_json::to_vec(value).ok()?;
    let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
    encoder.write_all(&json).ok()?;
    let zipped = encoder.finish().ok()?;
    Some(format!("{COMPRESSION_PREFIX}{}", STANDARD.encode(zipped)))
}

/// The size estimate of object-sizeof, which aws-lambda-stream compares with the threshold:
/// strings 2 bytes a UTF-16 unit, numbers 8, booleans 4, keys counted as strings.
pub fn sizeof(value: &Value) -> usize {
    match value {
        Value::Null => 0,
        Value::Bool(_) => 4,
        Value::Number(_) => 8,
        Value::String(s) => 2 * s.encode_utf16().count(),
        Value::Array(items) => items.iter().map(sizeof).sum(),
        Value::Object(map) => map
            .iter()
            .map(|(k, v)| 2 * k.encode_utf16().count() + sizeof(v))
            .sum(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn small_fields_stay_and_big_ones_round_trip() {
        let original = json!({"id": "1", "type": "t", "small": {"a": 1},
            "items": [{"big": "x".repeat(6_000)}], "tags": {"source": "s"}});
        let mut v = original.clone();
        compress_value(&mut v, DEFAULT_THRESHOLD);
        assert_eq!(v["small"], json!({"a": 1}));
        // 6,000 characters are 12,000 bytes in the estimate: the field holding them is
        // compressed whole, top down
        assert!(v["items"].as_str().unwrap().starts_with(COMPRESSION_PREFIX));
        // under an ignored field, array elements are not compressed, their big fields are
        let mut ignored = original.clone();
        compress_fields(&mut ignored, DEFAULT_THRESHOLD, &["items"]);
        assert!(
            ignored["items"][0]["big"]
                .as_str()
                .unwrap()
                .starts_with(COMPRESSION_PREFIX)
        );
        assert!(may_hold_compressed(v.to_string().as_bytes()));
        decompress_value(&mut v).unwrap();
        assert_eq!(v, original);
    }

    #[test]
    fn a_malformed_compressed_value_is_an_error_naming_why() {
        let mut v = json!({"thing": "COMPRESSED***"});
        assert!(decompress_value(&mut v).unwrap_err().contains("not base64"));
    }
}
