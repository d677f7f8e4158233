//! Every example policy loads, and decides as its `# expect:` comments say.

use mcp_warden::engine::{Call, Engine, EngineOptions, Outcome};
use mcp_warden::policy;
use mcp_warden::tools::{report, ToolDef};
use serde_json::Value;
use std::path::Path;

struct Expect {
    tool: String,
    args: Value,
    calls: u32,
    /// `as IDENTITY`: the caller, whose grant applies (anonymous without it).
    identity: Option<String>,
    outcome: Outcome,
    detail: Option<String>,
}

fn parse_expect(line: &str) -> Expect {
    let (left, right) = line
        .rsplit_once(" -> ")
        .expect("`-> outcome` in an expect line");
    let (tool, mut rest) = left.split_once(' ').expect("tool and arguments");
    let mut identity = None;
    if let Some((r, id)) = rest.rsplit_once(" as ") {
        identity = Some(id.trim().to_owned());
        rest = r;
    }
    let mut calls = 1;
    if let Some((json, n)) = rest.rsplit_once(" x") {
        if let Ok(n) = n.parse() {
            calls = n;
            rest = json;
        }
    }
    let (outcome, detail) = match right.split_once(' ') {
        Some((o, d)) => (o, Some(d.trim_matches('"').to_owned())),
        None => (right, None),
    };
    let outcome = match outcome {
        "allow" => Outcome::Allow,
        "deny" => Outcome::Deny,
        "rate_limited" => Outcome::RateLimited,
        "approval_required" => Outcome::ApprovalRequired,
        other => panic!("unknown outcome {other:?}"),
    };
    Expect {
        tool: tool.into(),
        args: serde_json::from_str(rest).expect("arguments JSON"),
        calls,
        identity,
        outcome,
        detail,
    }
}

fn names(list: &str) -> impl Iterator<Item = &str> {
    list.split(',').map(str::trim).filter(|s| !s.is_empty())
}

fn check_example(path: &Path) -> usize {
    let text = std::fs::read_to_string(path).unwrap();
    let policy = policy::load_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut checked = 0;
    for line in text.lines() {
        if let Some(x) = line.strip_prefix("# expect: ") {
            let x = parse_expect(x);
            // A fresh engine per line: `xN` counts only this line's calls.
            let engine = Engine::new(policy.clone(), None, EngineOptions::default());
            let call = Call {
                tool: &x.tool,
                args: &x.args,
                caller: x.identity.as_deref().unwrap_or("anonymous"),
                grant: x.identity.as_deref().and_then(|id| policy.grant_for(id)),
                session: None,
                approved: false,
                cloak: None,
                seen: None,
            };
            for i in 1..x.calls {
                let d = engine.decide(&call, u64::from(i));
                assert_eq!(
                    d.outcome,
                    Outcome::Allow,
                    "{}: call {i} of `{line}`",
                    path.display()
                );
            }
            let d = engine.decide(&call, u64::from(x.calls));
            assert_eq!(
                d.outcome,
                x.outcome,
                "{}: `{line}` (rule {}, reason {})",
                path.display(),
                d.rule,
                d.reason
            );
            match (x.outcome, &x.detail) {
                (Outcome::Deny, Some(reason)) => assert_eq!(&d.reason, reason, "{line}"),
                (Outcome::RateLimited, Some(counter)) => {
                    assert_eq!(&d.limit.as_ref().unwrap().counter.name, counter, "{line}")
                }
                _ => {}
            }
            checked += 1;
        } else if let Some(list) = line.strip_prefix("# listed: ") {
            for t in names(list) {
                assert!(
                    policy.listable(t, None, None),
                    "{}: {t} should be listed",
                    path.display()
                );
                checked += 1;
            }
        } else if let Some(list) = line.strip_prefix("# not listed: ") {
            for t in names(list) {
                assert!(
                    !policy.listable(t, None, None),
                    "{}: {t} should not be listed",
                    path.display()
                );
                checked += 1;
            }
        }
    }
    checked
}

#[test]
fn example_policies_decide_as_their_comments_say() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/policies");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let seeds = [
        "claude-code-notebook-mcp.yaml",
        "jupyter-mcp.yaml",
        "mcp-python-interpreter.yaml",
    ];
    for s in seeds {
        assert!(files.iter().any(|f| f.ends_with(s)), "missing example {s}");
    }
    for f in &files {
        let n = check_example(f);
        assert!(
            n >= 5,
            "{}: only {n} expectations; every example documents its behaviour",
            f.display()
        );
    }
}

/// The tools a server offers, as `tests/fixtures/tools/NAME.json` records them.
fn server_tools(example: &Path) -> Vec<ToolDef> {
    let stem = example.file_stem().unwrap().to_str().unwrap();
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/tools")
        .join(format!("{stem}.json"));
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: every example names its server's tools: {e}",
            path.display()
        )
    }))
    .unwrap();
    v["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| ToolDef::read(t).unwrap())
        .collect()
}

/// Each example names only tools its server offers and only arguments those tools take — in
/// its rules and in its `# expect:` lines — so no rule silently never fires.
#[test]
fn example_policies_match_their_servers_tools() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/policies");
    for f in std::fs::read_dir(&dir).unwrap() {
        let path = f.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let policy = policy::load_str(&text).unwrap();
        let tools = server_tools(&path);
        let report = report::report(&policy, &tools);
        assert!(report.clean(), "{}:\n{report}", path.display());
        for line in text.lines() {
            let named: Vec<(String, Option<Value>)> =
                if let Some(x) = line.strip_prefix("# expect: ") {
                    let x = parse_expect(x);
                    vec![(x.tool, Some(x.args))]
                } else if let Some(list) = line
                    .strip_prefix("# listed: ")
                    .or_else(|| line.strip_prefix("# not listed: "))
                {
                    names(list).map(|t| (t.to_owned(), None)).collect()
                } else {
                    continue;
                };
            for (tool, args) in named {
                let t = tools.iter().find(|t| t.name == tool).unwrap_or_else(|| {
                    panic!(
                        "{}: `{line}`: the server has no tool {tool}",
                        path.display()
                    )
                });
                let declared = t.arguments.clone().unwrap_or_default();
                for key in args.iter().flat_map(|a| a.as_object().unwrap().keys()) {
                    assert!(
                        declared.contains(key),
                        "{}: `{line}`: {tool} takes no argument {key:?} (it takes {declared:?})",
                        path.display()
                    );
                }
            }
        }
    }
}
