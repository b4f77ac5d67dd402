//! The batch route's query string: never a panic, a 400 with a one-line
//! message, or keys within the limits.
#![no_main]

use libfuzzer_sys::fuzz_target;
use read_api::routes::{decode_key, parse_batch_query, Limits};

fuzz_target!(|data: &[u8]| {
    let Some((&[keys, bytes], rest)) = data.split_first_chunk::<2>() else {
        return;
    };
    let Ok(query) = std::str::from_utf8(rest) else {
        return;
    };
    let limits = Limits {
        max_key_bytes: usize::from(bytes) + 1,
        max_batch_keys: usize::from(keys % 16) + 1,
    };
    match parse_batch_query(query, limits) {
        Ok(parsed) => {
            assert!((1..=limits.max_batch_keys).contains(&parsed.len()));
            for key in &parsed {
                assert!(!key.is_empty() && key.len() <= limits.max_key_bytes);
            }
            // Each key is the one its value decodes to, in order; the other
            // parameters the route accepts (as, the consistency ones) are no keys.
            let values: Vec<&str> = query
                .split('&')
                .filter(|p| !p.is_empty())
                .map(|p| p.split_once('=').unwrap_or((p, "")))
                .filter(|(name, _)| *name == "key")
                .map(|(_, value)| value)
                .collect();
            assert_eq!(values.len(), parsed.len());
            for (value, key) in values.iter().zip(&parsed) {
                assert_eq!(&decode_key(value, true, limits.max_key_bytes).unwrap(), key);
            }
        }
        Err(e) => {
            assert!(matches!(e.code(), "bad_key" | "bad_request"), "{e:?}");
            assert!(!e.to_string().contains(['\n', '\r']), "{e}");
        }
    }
});
