//! Configuration files through the demo proxy's loader (demo/src/config_file.rs, compiled
//! into this crate as a module: the demo is a binary crate, so its loader cannot be a
//! dependency; the module is the demo's file itself, unchanged). Properties: a loaded
//! configuration is a JSON object that the core then parses without panicking; neither the
//! loader's nor the core's errors show a secret, including one substituted from a decK
//! `${{ env "DECK_…" }}` reference; and a bare JSON configuration loads to the same
//! configuration as the core's own JSON parsing gives.
#![no_main]

#[allow(dead_code)]
#[path = "../../demo/src/config_file.rs"]
mod config_file;

use libfuzzer_sys::fuzz_target;
use mcp_oauth2::{Config, Validator};
use mcp_oauth2_fuzz::assert_no_secret;
use serde_json::Value;

/// The value of `DECK_SECRET` (and of any other `DECK_` variable but `DECK_UNSET`).
const ENV_SECRET: &str = "env-secret-Zq8vW3kP";

fn env(name: &str) -> Option<String> {
    (name != "DECK_UNSET").then(|| ENV_SECRET.to_owned())
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let found = match config_file::parse(text, &env) {
        Ok(found) => found,
        Err(e) => {
            if !text.contains(ENV_SECRET) {
                // A substituted value is the operator's secret: never in an error.
                assert!(!e.0.contains(ENV_SECRET), "a load error shows a substituted value");
            }
            return;
        }
    };
    assert!(found.config.is_object(), "the loader returned a config that is not an object");
    let config = Config::from_value(found.config.clone());
    match &config {
        Err(e) => assert_no_secret(&found.config, &e.to_string(), "a configuration error", |v| {
            Config::from_value(v.clone()).err().map(|e| e.to_string())
        }),
        Ok(c) => {
            if let Err(e) = Validator::new(c.clone()) {
                assert_no_secret(&found.config, &e.to_string(), "a validator error", |v| {
                    Validator::new(Config::from_value(v.clone()).ok()?).err().map(|e| e.to_string())
                });
            }
        }
    }
    // A bare configuration object written as JSON (JSON is YAML 1.2) means the same thing
    // to both readers.
    if found.location.is_empty() && !text.contains("${{") {
        if let Ok(json @ Value::Object(_)) = serde_json::from_str::<Value>(text) {
            let direct = Config::from_value(json);
            match (&config, &direct) {
                (Ok(a), Ok(b)) => assert_eq!(
                    serde_json::to_value(a).unwrap(),
                    serde_json::to_value(b).unwrap(),
                    "the YAML loader and the JSON parser read one configuration differently"
                ),
                (a, b) => assert_eq!(a.is_ok(), b.is_ok(), "the YAML loader and the JSON parser disagree"),
            }
        }
    }
});
