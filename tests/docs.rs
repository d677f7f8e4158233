//! The README is checked against the code: metric names and sidecar flags cannot drift.

use std::collections::BTreeSet;
use std::process::Command;

fn readme() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap()
}

#[test]
fn the_readme_names_exactly_the_metrics_the_code_exports() {
    let text = readme();
    let mentioned: BTreeSet<&str> = text
        .match_indices("mcp_warden_")
        .map(|(i, _)| {
            let rest = &text[i..];
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            let name = &rest[..end];
            // A histogram's series: its buckets are named in queries.
            name.strip_suffix("_bucket").unwrap_or(name)
        })
        .filter(|name| !name.ends_with("_"))
        .collect();
    let exported: BTreeSet<&str> = mcp_warden::metrics::SIDECAR_METRICS
        .iter()
        .chain(mcp_warden::metrics::CONTROLLER_METRICS)
        .copied()
        .collect();
    let unknown: Vec<_> = mentioned.difference(&exported).collect();
    assert!(
        unknown.is_empty(),
        "README names metrics the code does not export: {unknown:?}"
    );
    let missing: Vec<_> = exported.difference(&mentioned).collect();
    assert!(missing.is_empty(), "README does not document: {missing:?}");
}

#[test]
fn the_readme_documents_every_sidecar_flag() {
    readme_documents_flags_of("sidecar");
}

#[test]
fn the_readme_documents_every_controller_flag() {
    readme_documents_flags_of("controller");
}

fn readme_documents_flags_of(command: &str) {
    let help = Command::new(env!("CARGO_BIN_EXE_mcp-warden"))
        .args([command, "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8(help.stdout).unwrap();
    let text = readme();
    let flags: Vec<&str> = help
        .split_whitespace()
        .filter(|w| w.starts_with("--") && *w != "--help")
        .map(|w| w.trim_end_matches(','))
        .collect();
    assert!(flags.len() >= 10, "{help}");
    for flag in flags {
        assert!(
            text.contains(&format!("`{flag}")),
            "README does not document {flag}"
        );
    }
}

#[test]
fn the_readme_field_reference_is_generated_from_the_crd() {
    let text = readme();
    assert!(
        mcp_warden::generate::readme_with_reference(&text).unwrap() == text,
        "the README's McpPolicy reference is stale: run `{}`",
        mcp_warden::generate::COMMAND
    );
    let missing = mcp_warden::crd::reference::missing_examples();
    assert!(
        missing.is_empty(),
        "fields without an example in src/crd/reference.rs: {missing:?}"
    );
}
