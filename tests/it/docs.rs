//! The README and the manual in `docs/` are checked against the code: metric names, flags, the
//! field reference and the image commands cannot drift, and every link between them resolves.

use std::collections::BTreeSet;
use std::process::Command;

fn read(path: &str) -> String {
    std::fs::read_to_string(format!("{}/{path}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

fn readme() -> String {
    read("README.md")
}

/// The pages of the manual (`docs/*.md`), by file name.
fn pages() -> Vec<(String, String)> {
    let dir = format!("{}/docs", env!("CARGO_MANIFEST_DIR"));
    let mut v: Vec<(String, String)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .map(|p| {
            let name = p.file_name().unwrap().to_str().unwrap().to_owned();
            (name, std::fs::read_to_string(&p).unwrap())
        })
        .collect();
    v.sort();
    v
}

/// The README and every page of the manual, as one text.
fn manual() -> String {
    let mut all = readme();
    for (_, text) in pages() {
        all.push_str(&text);
    }
    all
}

/// GitHub's anchor for a heading.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == '-' || *c == '_' || *c == ' ')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

#[test]
fn every_link_between_the_readme_and_the_manual_resolves() {
    let mut files = vec![("README.md".to_owned(), readme())];
    files.extend(pages().into_iter().map(|(n, t)| (format!("docs/{n}"), t)));
    let anchors = |text: &str| -> Vec<String> {
        text.lines()
            .filter_map(|l| {
                l.trim_start_matches('#')
                    .strip_prefix(' ')
                    .filter(|_| l.starts_with('#'))
            })
            .map(anchor)
            .collect()
    };
    let mut broken = Vec::new();
    for (name, text) in &files {
        let dir = std::path::Path::new(name).parent().unwrap();
        for (i, _) in text.match_indices("](") {
            let target: String = text[i + 2..].chars().take_while(|c| *c != ')').collect();
            if target.starts_with("http") || target.is_empty() {
                continue;
            }
            let (path, frag) = target.split_once('#').unwrap_or((&target, ""));
            let file = match path {
                "" => name.clone(),
                p => {
                    let joined = dir.join(p);
                    let mut parts: Vec<&str> = Vec::new();
                    for c in joined.to_str().unwrap().split('/') {
                        match c {
                            ".." => {
                                parts.pop();
                            }
                            "." | "" => {}
                            c => parts.push(c),
                        }
                    }
                    parts.join("/")
                }
            };
            let full = format!("{}/{file}", env!("CARGO_MANIFEST_DIR"));
            if !std::path::Path::new(&full).exists() {
                broken.push(format!("{name}: {target} (no {file})"));
                continue;
            }
            if !frag.is_empty()
                && file.ends_with(".md")
                && !anchors(&read(&file)).contains(&frag.to_owned())
            {
                broken.push(format!("{name}: {target} (no heading #{frag} in {file})"));
            }
        }
    }
    assert!(broken.is_empty(), "broken links: {broken:#?}");
    assert!(
        readme().lines().count() <= 300,
        "the README stays a door; the manual is docs/"
    );
}

#[test]
fn the_readme_names_exactly_the_metrics_the_code_exports() {
    let text = manual();
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
        "README or docs/ name metrics the code does not export: {unknown:?}"
    );
    let missing: Vec<_> = exported.difference(&mentioned).collect();
    assert!(
        missing.is_empty(),
        "README and docs/ do not document: {missing:?}"
    );
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
    let text = manual();
    let flags: Vec<&str> = help
        .split_whitespace()
        .filter(|w| w.starts_with("--") && *w != "--help")
        .map(|w| w.trim_end_matches(','))
        .collect();
    assert!(flags.len() >= 10, "{help}");
    for flag in flags {
        assert!(
            text.contains(&format!("`{flag}")),
            "README and docs/ do not document {flag}"
        );
    }
}

#[test]
fn the_field_reference_is_generated_from_the_crd() {
    let text = read("docs/reference.md");
    assert!(
        mcp_warden::cmd::generate::readme_with_reference(&text).unwrap() == text,
        "docs/reference.md is stale: run `{}`",
        mcp_warden::cmd::generate::COMMAND
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
