//! Configuration parsing from JSON: `Config::from_json`, `Config::from_slice`,
//! `Validator::from_json` and `Validator::new` agree with each other; a valid configuration
//! yields a metadata document naming exactly its resource and authorization servers; and
//! no error message or `Debug` rendering shows a secret (behaviour.md §1).
#![no_main]

use libfuzzer_sys::fuzz_target;
use mcp_oauth2::{Config, Validator};
use mcp_oauth2_fuzz::assert_no_secret;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let from_slice = Config::from_slice(data);
    let Ok(text) = std::str::from_utf8(data) else {
        assert!(from_slice.is_err(), "a configuration that is not UTF-8 was accepted");
        return;
    };
    let parsed = serde_json::from_str::<Value>(text).unwrap_or(Value::Null);
    let config = Config::from_json(text);
    assert_eq!(config.is_ok(), from_slice.is_ok(), "from_json and from_slice disagree");
    let validator = Validator::from_json(text);
    match config {
        Err(e) => {
            assert!(validator.is_err(), "Validator::from_json accepted what Config::from_json refused");
            assert!(!e.message().is_empty());
            assert_no_secret(&parsed, &e.to_string(), "a configuration error", |v| {
                Config::from_json(&v.to_string()).err().map(|e| e.to_string())
            });
        }
        Ok(config) => {
            assert_no_secret(&parsed, &format!("{config:?}"), "Config's Debug", |v| {
                Config::from_json(&v.to_string()).ok().map(|c| format!("{c:?}"))
            });
            let rebuilt = Validator::new(config.clone());
            assert_eq!(rebuilt.is_ok(), validator.is_ok(), "Validator::new and Validator::from_json disagree");
            match rebuilt {
                Err(e) => assert_no_secret(&parsed, &e.to_string(), "a validator error", |v| {
                    let c = Config::from_json(&v.to_string()).ok()?;
                    Validator::new(c).err().map(|e| e.to_string())
                }),
                Ok(v) => {
                    let doc: Value = serde_json::from_slice(v.metadata_document()).expect("the metadata is JSON");
                    assert_eq!(doc["resource"], Value::String(config.resource.clone()));
                    let servers: Vec<Value> =
                        config.authorization_servers.iter().map(|s| Value::String(s.clone())).collect();
                    assert_eq!(doc["authorization_servers"], Value::Array(servers));
                    for w in v.warnings() {
                        assert_no_secret(&parsed, w, "a construction warning", |v| {
                            Validator::from_json(&v.to_string()).ok().map(|v| v.warnings().join("\n"))
                        });
                    }
                }
            }
        }
    }
});
