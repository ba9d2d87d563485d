//! The configuration as an operator meets it: the documented example, `detector config check`
//! with environment overrides.

use std::{path::Path, process::Command};

use detector::config::Config;

fn detector() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_detector"));
    // Overrides of the environment running the tests must not leak into these runs.
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("DETECTOR_") {
            command.env_remove(name);
        }
    }
    command
}

fn example_path() -> &'static Path {
    Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/detector.example.yaml"
    ))
}

#[test]
fn the_example_states_exactly_the_defaults() {
    let example = Config::load(example_path()).unwrap();
    assert_eq!(example, Config::default());
}

#[test]
fn the_example_lists_every_key() {
    // Equal as YAML trees: a key added to the configuration but not documented in the example
    // (or documented but gone) fails here, even where its default would make the configs equal.
    let text = std::fs::read_to_string(example_path()).unwrap();
    let documented: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).unwrap();
    let defaults = serde_yaml_ng::to_value(Config::default()).unwrap();
    assert_eq!(
        documented,
        defaults,
        "deploy/detector.example.yaml differs from `detector config default`:\n{}",
        serde_yaml_ng::to_string(&defaults).unwrap()
    );
}

#[test]
fn config_check_applies_and_names_environment_overrides() {
    let out = detector()
        .args(["config", "check"])
        .arg(example_path())
        .env("DETECTOR_WATCH", "containers")
        .env("DETECTOR_METRICS__LISTEN", "127.0.0.1:9100")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("ok"), "{stdout}");
    assert!(
        stdout.contains("DETECTOR_WATCH (sensors.watch)"),
        "{stdout}"
    );

    let out = detector()
        .args(["config", "check"])
        .env("DETECTOR_SENSORS__RING_BUFFER_BYTES", "1000")
        .env("DETECTOR_SENSORS__WACTH", "all")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("DETECTOR_SENSORS__WACTH"), "{stderr}");

    let out = detector()
        .args(["config", "check"])
        .env("DETECTOR_SENSORS__RING_BUFFER_BYTES", "1000")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("sensors.ring_buffer_bytes")
            && stderr.contains("set by DETECTOR_SENSORS__RING_BUFFER_BYTES"),
        "{stderr}"
    );
}

#[test]
fn config_check_takes_the_file_from_detector_config() {
    let out = detector()
        .args(["config", "check"])
        .env("DETECTOR_CONFIG", example_path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("detector.example.yaml: ok"));
}
