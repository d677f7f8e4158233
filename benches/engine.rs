//! Decision and counter benchmark: `cargo bench --bench engine`.
//!
//! A 100-tool policy (90 exact names, 10 globs; every tool with a `require`, a two-condition
//! `deny_if` and two limits) decides a mix of calls on one thread. Latency is timed in batches
//! (the clock costs about as much as a decision), and each figure is printed beside its budget.

use mcp_warden::engine::{Call, Engine, EngineOptions, Outcome, Seen};
use mcp_warden::policy::compile_file;
use serde_json::{json, Map, Value};
use std::hint::black_box;
use std::time::Instant;

const BATCH: u64 = 100;

fn policy_100() -> Value {
    let mut tools = Map::new();
    let rule = |name: &str| {
        json!({
            "require": [{"path": "args.path", "op": "path_within", "value": "/workspace"}],
            "deny_if": [{"conditions": [
                {"path": "args.content", "op": "contains", "value": "rm -rf"},
                {"path": "args.size", "op": "gt", "value": 1_000_000}
            ], "on_deny": "too big and destructive"}],
            "limits": [
                {"counter": format!("{name}_burst"), "window": "minute", "max": 1_000_000_000u32, "scope": "grant"},
                {"counter": format!("{name}_hourly"), "window": "hour", "max": 1_000_000_000u32, "scope": "pod"}
            ]
        })
    };
    for i in 0..90 {
        let name = format!("tool_{i:03}");
        tools.insert(name.clone(), rule(&name));
    }
    for i in 0..10 {
        tools.insert(format!("group_{i:02}_*"), rule(&format!("group_{i:02}")));
    }
    json!({"version": "1", "default": "deny", "hide": ["debug_*", "internal_*"], "tools": tools})
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Per-decision nanoseconds, from `batches` timed batches of `BATCH` decisions each.
fn time_decisions(engine: &Engine, calls: &[Call], batches: usize, mut now: u64) -> Vec<f64> {
    let mut per_call = Vec::with_capacity(batches);
    let mut i = 0;
    for _ in 0..batches {
        let start = Instant::now();
        for _ in 0..BATCH {
            let c = &calls[i % calls.len()];
            black_box(engine.decide(black_box(c), now));
            i += 1;
            now += 1_000;
        }
        per_call.push(start.elapsed().as_nanos() as f64 / BATCH as f64);
    }
    per_call.sort_by(|a, b| a.partial_cmp(b).unwrap());
    per_call
}

fn row(name: &str, measured: String, budget: &str, ok: Option<bool>) {
    let verdict = match ok {
        Some(true) => "ok",
        Some(false) => "OVER BUDGET",
        None => "",
    };
    println!("{name:<46} {measured:>16}   {budget:<14} {verdict}");
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let batches = if quick { 2_000 } else { 20_000 };
    let engine = Engine::new(
        compile_file(&policy_100()).unwrap(),
        None,
        EngineOptions::default(),
    );
    let allowed_args = json!({"path": "/workspace/notes/a.txt", "content": "hello", "size": 12});
    let denied_args = json!({"path": "/workspace/a", "content": "rm -rf /", "size": "2000000"});
    let grants: Vec<String> = (0..64).map(|i| format!("{:064x}", i * 7919)).collect();
    let mut exact = Vec::new();
    let mut globbed = Vec::new();
    let names: Vec<String> = (0..90).map(|i| format!("tool_{i:03}")).collect();
    let gnames: Vec<String> = (0..10).map(|i| format!("group_{i:02}_write")).collect();
    for (i, n) in names.iter().enumerate() {
        exact.push(Call {
            tool: n,
            args: &allowed_args,
            caller: &grants[i % 64],
            grant: None,
            session: None,
            approved: false,
            cloak: None,
            seen: None,
        });
    }
    for (i, n) in gnames.iter().enumerate() {
        globbed.push(Call {
            tool: n,
            args: &allowed_args,
            caller: &grants[i % 64],
            grant: None,
            session: None,
            approved: false,
            cloak: None,
            seen: None,
        });
    }
    let denied: Vec<Call> = names
        .iter()
        .map(|n| Call {
            tool: n,
            args: &denied_args,
            caller: &grants[0],
            grant: None,
            session: None,
            approved: false,
            cloak: None,
            seen: None,
        })
        .collect();
    let unknown = [Call {
        tool: "unlisted_tool",
        args: &allowed_args,
        caller: &grants[0],
        grant: None,
        session: None,
        approved: false,
        cloak: None,
        seen: None,
    }];

    // The same policy knowing the server's tools: read-only tools no name matches are allowed
    // by category (one limit), and tool_000's definition is pinned.
    let pin = format!("sha256:{}", "5".repeat(64));
    let mut knowing_doc = policy_100();
    knowing_doc["categories"] = json!({"read_only": {"limits": [
        {"counter": "read_only_burst", "window": "minute", "max": 1_000_000_000u32, "scope": "grant"}]}});
    knowing_doc["pins"] = json!({"tool_000": pin});
    let knowing = Engine::new(
        compile_file(&knowing_doc).unwrap(),
        None,
        EngineOptions::default(),
    );
    let read_only =
        mcp_warden::policy::Hints::of_tool(&json!({"annotations": {"readOnlyHint": true}}));
    let seen = Seen {
        hints: read_only,
        hash: &pin,
        first: &pin,
    };
    let rnames: Vec<String> = (0..10).map(|i| format!("read_thing_{i}")).collect();
    let by_category: Vec<Call> = rnames
        .iter()
        .enumerate()
        .map(|(i, n)| Call {
            tool: n,
            args: &allowed_args,
            caller: &grants[i % 64],
            grant: None,
            session: None,
            approved: false,
            cloak: None,
            seen: Some(seen),
        })
        .collect();
    let pinned = [Call {
        seen: Some(seen),
        ..exact[0]
    }];

    // Sanity: the mix decides as intended, so the timings are of the real paths.
    assert_eq!(
        knowing.decide(&by_category[0], 0).rule,
        "categories.read_only"
    );
    assert_eq!(knowing.decide(&pinned[0], 0).outcome, Outcome::Allow);
    assert_eq!(engine.decide(&exact[0], 0).outcome, Outcome::Allow);
    assert_eq!(engine.decide(&globbed[0], 0).outcome, Outcome::Allow);
    assert_eq!(engine.decide(&denied[0], 0).outcome, Outcome::Deny);
    assert_eq!(engine.decide(&unknown[0], 0).outcome, Outcome::Deny);

    println!("mcp-warden engine benchmark: 100-tool policy (90 exact, 10 globs), 2 limits + require + deny_if per tool");
    println!("{:<46} {:>16}   {:<14}", "figure", "measured", "budget");
    time_decisions(&engine, &exact, batches / 10, 0); // warm-up
    let mut all_ok = true;
    for (label, calls, budgeted, engine) in [
        (
            "decide(): allowed, exact name, 2 counters",
            &exact[..],
            true,
        ),
        (
            "decide(): allowed, glob match, 2 counters",
            &globbed[..],
            true,
        ),
        ("decide(): denied by deny_if", &denied[..], false),
        (
            "decide(): denied by default (unknown tool)",
            &unknown[..],
            false,
        ),
    ]
    .into_iter()
    .map(|(l, c, b)| (l, c, b, &engine))
    .chain([
        (
            "decide(): by category (read-only), 1 counter",
            &by_category[..],
            true,
            &knowing,
        ),
        (
            "decide(): pinned tool, exact name, 2 counters",
            &pinned[..],
            true,
            &knowing,
        ),
    ]) {
        let t = time_decisions(engine, calls, batches, 1_000_000_000);
        let (p50, p99) = (percentile(&t, 0.5), percentile(&t, 0.99));
        let ok = budgeted.then_some(p50 <= 1000.0);
        all_ok &= ok.unwrap_or(true);
        row(
            &format!("{label} p50"),
            format!("{p50:.0} ns"),
            if budgeted { "<= 1000 ns" } else { "-" },
            ok,
        );
        row(&format!("{label} p99"), format!("{p99:.0} ns"), "-", None);
    }

    // Counter throughput: a limit-only rule, one thread, one key and many keys.
    let counters = Engine::new(
        compile_file(
            &json!({"tools": {"t": {"limits": [{"counter": "c", "window": "minute", "max": 1_000_000_000u32, "scope": "grant"}]}}}),
        )
        .unwrap(),
        None,
        EngineOptions::default(),
    );
    let n: u64 = if quick { 200_000 } else { 2_000_000 };
    let keys: Vec<String> = (0..5000).map(|i| format!("{i:064x}")).collect();
    let one = vec!["one".to_string()];
    let rate = |threads: u64, grants: &[String]| {
        let args = Value::Null;
        let start = Instant::now();
        std::thread::scope(|s| {
            for _ in 0..threads {
                s.spawn(|| {
                    for i in 0..n / threads {
                        let call = Call {
                            tool: "t",
                            args: &args,
                            caller: &grants[i as usize % grants.len()],
                            grant: None,
                            session: None,
                            approved: false,
                            cloak: None,
                            seen: None,
                        };
                        black_box(counters.decide(&call, i));
                    }
                });
            }
        });
        format!("{:.1} M/s", n as f64 / start.elapsed().as_secs_f64() / 1e6)
    };
    row(
        "counter throughput, 1 thread, 1 key",
        rate(1, &one),
        "-",
        None,
    );
    row(
        "counter throughput, 1 thread, 5000 keys",
        rate(1, &keys),
        "-",
        None,
    );
    row(
        "counter throughput, 2 threads, 1 shared key",
        rate(2, &one),
        "-",
        None,
    );
    println!(
        "{}",
        if all_ok {
            "all budgets met"
        } else {
            "SOME BUDGETS MISSED"
        }
    );
}
