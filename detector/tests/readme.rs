//! The README's YAML examples are real: the rules snippet passes `rules check`, and every
//! configuration snippet parses and validates as the daemon's configuration.

use std::path::Path;

use detector::{config::Config, rules::RuleSet};

const README: &str = include_str!("../../README.md");

/// The YAML fenced blocks of the section that starts with `heading`.
fn yaml_blocks(heading: &str) -> Vec<&'static str> {
    let start = README
        .find(heading)
        .unwrap_or_else(|| panic!("README has no {heading}"));
    let section = &README[start + heading.len()..];
    let section = &section[..section.find("\n## ").unwrap_or(section.len())];
    section
        .split("```yaml\n")
        .skip(1)
        .map(|block| &block[..block.find("```").expect("closed block")])
        .collect()
}

#[test]
fn the_rules_example_is_a_valid_rules_file() {
    let blocks = yaml_blocks("## Rules");
    assert_eq!(blocks.len(), 1);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("example.yaml"), blocks[0]).unwrap();
    let rules = RuleSet::load(Some(dir.path())).unwrap();
    drop(rules);
}

#[test]
fn the_configuration_examples_are_valid_configurations() {
    for heading in ["## Configuration", "## SIEM export"] {
        let blocks = yaml_blocks(heading);
        assert!(!blocks.is_empty(), "{heading} has no example");
        for block in blocks {
            Config::parse(block, Path::new(heading)).unwrap_or_else(|err| panic!("{err}"));
        }
    }
}
