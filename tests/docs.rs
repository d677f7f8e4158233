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

/// The README's image build commands are the ones CI runs (`tests/cluster/images.sh`), for the
/// tag the chart installs by default.
#[test]
fn the_readme_builds_the_image_the_way_ci_does() {
    let root = env!("CARGO_MANIFEST_DIR");
    let text = readme();
    let script = std::fs::read_to_string(format!("{root}/tests/cluster/images.sh")).unwrap();
    let chart = std::fs::read_to_string(format!("{root}/charts/mcp-warden/Chart.yaml")).unwrap();
    let version = chart
        .lines()
        .find_map(|l| l.strip_prefix("appVersion:"))
        .map(|v| v.trim().trim_matches('"'))
        .expect("appVersion in Chart.yaml");
    let cargo =
        "cargo build --locked --profile image --target x86_64-unknown-linux-musl --bin mcp-warden";
    assert!(text.contains(&format!("\n{cargo}\n")), "README: {cargo}");
    assert!(
        script.contains(&format!("    {cargo}\n")),
        "images.sh: {cargo}"
    );
    let image = format!("ghcr.io/mcp-warden/mcp-warden:{version}");
    assert!(
        text.contains(&format!("\nbuildah build -t {image} .\n")),
        "README: buildah build -t {image} ."
    );
    assert!(
        script.contains("img=\"ghcr.io/mcp-warden/mcp-warden:$version\"")
            && script.contains("    buildah build -t \"$img\" .\n"),
        "images.sh builds ghcr.io/mcp-warden/mcp-warden:<appVersion> from the Dockerfile"
    );
    let dockerfile = std::fs::read_to_string(format!("{root}/Dockerfile")).unwrap();
    assert!(
        dockerfile.contains("COPY target/x86_64-unknown-linux-musl/image/mcp-warden /mcp-warden"),
        "the Dockerfile copies what the cargo command builds"
    );
}
