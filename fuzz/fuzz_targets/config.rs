//! Configuration: any YAML text (and `DETECTOR_` variables) loads into a valid configuration or
//! an error, never a panic. A configuration that loads writes out as YAML that loads into the
//! same configuration (`detector config default` and the docs print configurations this way).
//!
//! The input is the file's text, then optionally a NUL byte and `NAME=VALUE` lines: the
//! environment.
#![no_main]

use std::path::Path;

use detector::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(data) = std::str::from_utf8(data) else {
        return;
    };
    let (text, env) = data.split_once('\0').unwrap_or((data, ""));
    let path = Path::new("fuzz.yaml");
    if let Ok(config) = Config::parse(text, path) {
        round_trip(&config);
    }
    if !env.is_empty() {
        let vars: Vec<(String, String)> = env
            .lines()
            .filter_map(|line| line.split_once('='))
            .map(|(name, value)| (name.to_owned(), value.to_owned()))
            .collect();
        match Config::parse_with_env(text, path, vars) {
            Ok(config) => {
                assert!(config.validate().is_empty(), "{config:?} loaded invalid");
                round_trip(&config);
            }
            Err(err) => {
                let _ = err.to_string();
            }
        }
    }
});

/// The configuration written as YAML loads back into itself.
fn round_trip(config: &Config) {
    let yaml = serde_yaml_ng::to_string(config)
        .unwrap_or_else(|err| panic!("{config:?} does not write as YAML: {err}"));
    let back = Config::parse(&yaml, Path::new("written.yaml"))
        .unwrap_or_else(|err| panic!("the written configuration does not load: {err}\n{yaml}"));
    assert_eq!(
        &back, config,
        "the written configuration loads differently:\n{yaml}"
    );
}
