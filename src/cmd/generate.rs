//! `mcp-warden generate`: every file generated from the code or the chart, rewritten (or, with
//! `--check`, compared) in one step. Each drift test names this command.
//!
//! - `crds/mcppolicy.yaml` and `charts/mcp-warden/crds/mcppolicy.yaml`: the CRD from the Rust
//!   types.
//! - `docs/reference.md`, between the reference markers: the McpPolicy field reference.
//! - `deploy/mcp-warden.yaml`: the chart rendered with default values (needs Helm).

use clap::Args;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The command a stale file's message names.
pub const COMMAND: &str = "cargo run -- generate";

const REFERENCE_START: &str = "<!-- reference:start -->\n";
const REFERENCE_END: &str = "<!-- reference:end -->";

/// Why a file could not be generated.
#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("docs/reference.md has no {REFERENCE_START:?} … {REFERENCE_END:?} markers")]
    NoMarkers,
    #[error("cannot run {helm}: {why} (install Helm, or pass --helm; `.ci/run` installs the version the checked-in file was rendered with)")]
    Helm { helm: String, why: String },
}

/// One generated file: where, and what it should hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generated {
    pub path: &'static str,
    pub content: String,
}

/// The reference page with its reference section replaced by the generated one.
pub fn readme_with_reference(readme: &str) -> Result<String, GenerateError> {
    let start = readme
        .find(REFERENCE_START)
        .ok_or(GenerateError::NoMarkers)?
        + REFERENCE_START.len();
    let end = readme[start..]
        .find(REFERENCE_END)
        .ok_or(GenerateError::NoMarkers)?
        + start;
    Ok(format!(
        "{}{}{}",
        &readme[..start],
        crate::crd::reference::markdown(),
        &readme[end..]
    ))
}

/// `deploy/mcp-warden.yaml`: the chart with default values, plus its namespace.
pub fn plain_manifests(root: &Path, helm: &Path) -> Result<String, GenerateError> {
    let failed = |why: String| GenerateError::Helm {
        helm: helm.display().to_string(),
        why,
    };
    let out = Command::new(helm)
        .args(["template", "mcp-warden"])
        .arg(root.join("charts/mcp-warden"))
        .args([
            "--namespace",
            "mcp-warden",
            "--kube-version",
            "1.33.0",
            // Offline, Helm knows only the APIs of its own client: say the cluster has
            // ValidatingAdmissionPolicy (1.30+), so the plain manifests carry the chart's.
            "--api-versions",
            "admissionregistration.k8s.io/v1/ValidatingAdmissionPolicy",
            "--include-crds",
        ])
        .output()
        .map_err(|e| failed(e.to_string()))?;
    if !out.status.success() {
        return Err(failed(String::from_utf8_lossy(&out.stderr).into_owned()));
    }
    let chart = String::from_utf8(out.stdout).map_err(|e| failed(e.to_string()))?;
    Ok(format!(
        "# mcp-warden for clusters without Helm: the chart with default values, rendered.\n\
         # Generated; do not edit. Regenerate: {COMMAND}\n\
         #   kubectl apply --server-side -f deploy/mcp-warden.yaml\n\
         apiVersion: v1\nkind: Namespace\nmetadata:\n  name: mcp-warden\n{chart}"
    ))
}

/// Every generated file under `root` that needs no Helm (`deploy/mcp-warden.yaml` is rendered
/// by [`run`]).
pub fn files(root: &Path) -> Result<Vec<Generated>, GenerateError> {
    let crd = crate::crd::crd_yaml();
    let readme_path = root.join("docs/reference.md");
    let readme = std::fs::read_to_string(&readme_path).map_err(|source| GenerateError::Io {
        path: readme_path.display().to_string(),
        source,
    })?;
    let out = vec![
        Generated {
            path: "crds/mcppolicy.yaml",
            content: crd.clone(),
        },
        Generated {
            path: "charts/mcp-warden/crds/mcppolicy.yaml",
            content: crd,
        },
        Generated {
            path: "crds/mcpapproval.yaml",
            content: crate::crd::approval::crd_yaml(),
        },
        Generated {
            path: "charts/mcp-warden/crds/mcpapproval.yaml",
            content: crate::crd::approval::crd_yaml(),
        },
        Generated {
            path: "docs/reference.md",
            content: readme_with_reference(&readme)?,
        },
    ];
    Ok(out)
}

/// The Helm to render with: `MCP_WARDEN_HELM`, else the one `.ci/run` installs, else `helm`.
pub fn default_helm(root: &Path) -> PathBuf {
    if let Some(h) = std::env::var_os("MCP_WARDEN_HELM") {
        return PathBuf::from(h);
    }
    let ci = root.join("target/tools/package/bin/helm");
    if ci.exists() {
        return ci;
    }
    PathBuf::from("helm")
}

/// Writes every generated file that differs (or with `check`, only reports them). Returns the
/// paths that differed. The chart is rendered from its CRD copy on disk, so that copy is written
/// before `deploy/mcp-warden.yaml` is rendered.
pub fn run(
    root: &Path,
    helm: Option<&Path>,
    check: bool,
) -> Result<Vec<&'static str>, GenerateError> {
    let mut changed = Vec::new();
    let mut write = |g: Generated| -> Result<(), GenerateError> {
        let path = root.join(g.path);
        if std::fs::read_to_string(&path).ok().as_deref() == Some(g.content.as_str()) {
            return Ok(());
        }
        changed.push(g.path);
        if !check {
            std::fs::write(&path, &g.content).map_err(|source| GenerateError::Io {
                path: path.display().to_string(),
                source,
            })?;
        }
        Ok(())
    };
    for g in files(root)? {
        write(g)?;
    }
    if let Some(helm) = helm {
        write(Generated {
            path: "deploy/mcp-warden.yaml",
            content: plain_manifests(root, helm)?,
        })?;
    }
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_checked_in_generated_files_are_current() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        for g in files(root).unwrap() {
            let on_disk = std::fs::read_to_string(root.join(g.path)).unwrap_or_default();
            assert!(
                on_disk == g.content,
                "{} is out of date: run `{COMMAND}`",
                g.path
            );
        }
    }

    #[test]
    fn the_reference_replaces_only_what_is_between_the_markers() {
        let readme = format!("# Title\n{REFERENCE_START}old text\n{REFERENCE_END}\nafter\n");
        let new = readme_with_reference(&readme).unwrap();
        assert!(new.starts_with(&format!("# Title\n{REFERENCE_START}")));
        assert!(new.ends_with(&format!("{REFERENCE_END}\nafter\n")));
        assert!(!new.contains("old text"));
        assert!(new.contains(&crate::crd::reference::markdown()));
        assert!(matches!(
            readme_with_reference("no markers"),
            Err(GenerateError::NoMarkers)
        ));
    }
}

#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// The checkout to write into.
    #[arg(long, value_name = "DIR", default_value = ".")]
    pub root: PathBuf,
    /// The Helm binary that renders deploy/mcp-warden.yaml (default: MCP_WARDEN_HELM, the one
    /// `.ci/run` installs, or `helm`).
    #[arg(long, value_name = "FILE")]
    pub helm: Option<PathBuf>,
    /// Only report stale files (exit 1 when any is), writing nothing.
    #[arg(long)]
    pub check: bool,
}

/// Regenerates (or checks) the generated files and says which changed.
pub fn run_generate(a: &GenerateArgs) -> anyhow::Result<bool> {
    let helm = a.helm.clone().unwrap_or_else(|| default_helm(&a.root));
    let changed = run(&a.root, Some(&helm), a.check)?;
    let verb = if a.check { "stale" } else { "regenerated" };
    for path in &changed {
        println!("{verb}: {path}");
    }
    if changed.is_empty() {
        println!("every generated file is current");
    }
    Ok(!a.check || changed.is_empty())
}
