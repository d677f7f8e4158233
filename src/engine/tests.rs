use super::*;
use crate::policy::compile_file;
use serde_json::json;

const SEC: u64 = 1_000_000_000;

fn engine_with(v: Value, opts: EngineOptions) -> Engine {
    Engine::new(compile_file(&v).unwrap(), None, opts)
}

fn engine(v: Value) -> Engine {
    engine_with(v, EngineOptions::default())
}

fn call<'a>(tool: &'a str, args: &'a Value) -> Call<'a> {
    Call {
        tool,
        args,
        caller: "g1",
        grant: None,
        session: None,
        approved: false,
        cloak: None,
        seen: None,
    }
}

fn outcome(e: &Engine, tool: &str, args: Value) -> (Outcome, String, String) {
    let d = e.decide(&call(tool, &args), 0);
    (d.outcome, d.rule.to_owned(), d.reason.into_owned())
}

#[test]
fn decision_order_follows_the_design() {
    let e = engine(json!({"default": "deny", "hide": ["secret_*"], "tools": {
        "secret_tool": {},
        "off": {"action": "deny", "reason": "Disabled here"},
        "write_file": {
            "require": [{"path": "args.path", "op": "path_within", "value": "/workspace"}],
            "deny_if": [
                {"conditions": [{"path": "args.content", "op": "contains", "value": "rm -rf"}], "on_deny": "Destructive shell content"},
                {"conditions": [{"path": "args.content", "op": "contains", "value": "rm"}], "on_deny": "second entry"}
            ],
            "limits": [{"counter": "w", "window": "minute", "max": 1}]
        },
        "clear_session": {"deny_if": [{"conditions": [], "on_deny": "Blocked by default. Requires approval."}]}
    }}));
    assert_eq!(
        outcome(&e, "secret_tool", json!({})),
        (
            Outcome::Deny,
            "hide[0]".into(),
            "Unknown tool: secret_tool".into()
        )
    );
    assert_eq!(
        outcome(&e, "off", json!({})),
        (Outcome::Deny, "tools.off".into(), "Disabled here".into())
    );
    assert_eq!(outcome(&e, "nope", json!({})).1, "default");
    assert_eq!(
        outcome(&e, "clear_session", json!({})),
        (
            Outcome::Deny,
            "tools.clear_session.deny_if[0]".into(),
            "Blocked by default. Requires approval.".into()
        )
    );
    // require is checked before deny_if.
    let (o, rule, reason) = outcome(
        &e,
        "write_file",
        json!({"path": "/etc/x", "content": "rm -rf /"}),
    );
    assert_eq!(
        (o, rule.as_str()),
        (Outcome::Deny, "tools.write_file.require[0]")
    );
    assert_eq!(
        reason,
        "argument validation failed: args.path must be a path within /workspace"
    );
    // the first deny_if entry whose conditions all hold gives the reason.
    assert_eq!(
        outcome(
            &e,
            "write_file",
            json!({"path": "/workspace/a", "content": "rm -rf /"})
        )
        .1,
        "tools.write_file.deny_if[0]"
    );
    // Denied calls took no counter: the one allowed call is still available.
    let (o, rule, _) = outcome(
        &e,
        "write_file",
        json!({"path": "/workspace/a", "content": "hi"}),
    );
    assert_eq!((o, rule.as_str()), (Outcome::Allow, "tools.write_file"));
    let (o, rule, reason) = outcome(
        &e,
        "write_file",
        json!({"path": "/workspace/a", "content": "hi"}),
    );
    assert_eq!(
        (o, rule.as_str()),
        (Outcome::RateLimited, "tools.write_file.limits[0]")
    );
    assert!(
        reason.starts_with("Rate limit exceeded: w allows 1 calls per minute (policy)"),
        "{reason}"
    );
}

#[test]
fn default_allow_applies_all_tools_limits_to_unnamed_tools() {
    let e = engine(
        json!({"default": "allow", "all_tools": {"limits": [{"counter": "all", "window": "minute", "max": 2}]}}),
    );
    assert_eq!(outcome(&e, "x", json!({})).0, Outcome::Allow);
    assert_eq!(outcome(&e, "y", json!({})).1, "default");
    let d = e.decide(&call("z", &json!({})), 0);
    assert_eq!(
        (d.outcome, d.rule, d.tool_label),
        (Outcome::RateLimited, "all_tools.limits[0]", "_other")
    );
}

#[test]
fn deny_if_reads_arguments_like_a_lenient_server() {
    let e = engine(json!({"default": "allow", "tools": {"run": {"deny_if": [
        {"conditions": [{"path": "args.timeout", "op": "gt", "value": 60}], "on_deny": "too long"}]}}}));
    assert_eq!(
        outcome(&e, "run", json!({"timeout": 9000})).0,
        Outcome::Deny
    );
    assert_eq!(
        outcome(&e, "run", json!({"timeout": "9000"})).0,
        Outcome::Deny,
        "numeric string"
    );
    assert_eq!(
        outcome(&e, "run", json!({"timeout": {"v": 1}})).0,
        Outcome::Deny,
        "type confusion denies"
    );
    assert_eq!(
        outcome(&e, "run", json!({"timeout": "30"})).0,
        Outcome::Allow
    );
    assert_eq!(
        outcome(&e, "run", json!({})).0,
        Outcome::Allow,
        "a missing path is false"
    );
    assert_eq!(outcome(&e, "run", Value::Null).0, Outcome::Allow);
}

#[test]
fn require_fails_closed_on_type_confusion_and_missing_arguments() {
    let e = engine(
        json!({"tools": {"w": {"require": [{"path": "args.n", "op": "lte", "value": 10}]}}}),
    );
    assert_eq!(outcome(&e, "w", json!({"n": 3})).0, Outcome::Allow);
    assert_eq!(outcome(&e, "w", json!({"n": "3"})).0, Outcome::Allow);
    assert_eq!(outcome(&e, "w", json!({"n": [3]})).0, Outcome::Deny);
    assert_eq!(outcome(&e, "w", json!({"n": "three"})).0, Outcome::Deny);
    assert_eq!(outcome(&e, "w", json!({})).0, Outcome::Deny);
    let opt =
        engine(json!({"tools": {"w": {"require": [{"path": "args.n", "op": "not_exists"}]}}}));
    assert_eq!(outcome(&opt, "w", json!({})).0, Outcome::Allow);
    assert_eq!(
        outcome(&opt, "w", json!({"n": null})).0,
        Outcome::Allow,
        "null is absent"
    );
    assert_eq!(outcome(&opt, "w", json!({"n": 1})).0, Outcome::Deny);
}

#[test]
fn star_paths_are_any_for_deny_if_and_all_for_require() {
    let e = engine(json!({"tools": {
        "d": {"deny_if": [{"conditions": [{"path": "args.files[*]", "op": "prefix", "value": "/etc"}]}]},
        "r": {"require": [{"path": "args.files[*].path", "op": "path_within", "value": "/workspace"}]}
    }}));
    assert_eq!(
        outcome(&e, "d", json!({"files": ["/tmp/a", "/etc/passwd"]})).0,
        Outcome::Deny
    );
    assert_eq!(
        outcome(&e, "d", json!({"files": ["/tmp/a", "/tmp/b"]})).0,
        Outcome::Allow
    );
    let inside = json!({"files": [{"path": "/workspace/a"}, {"path": "/workspace/b/../c"}]});
    assert_eq!(outcome(&e, "r", inside).0, Outcome::Allow);
    let one_out = json!({"files": [{"path": "/workspace/a"}, {"path": "/workspace/../etc"}]});
    assert_eq!(outcome(&e, "r", one_out).0, Outcome::Deny);
    assert_eq!(
        outcome(&e, "r", json!({"files": []})).0,
        Outcome::Deny,
        "nothing reached is false"
    );
}

#[test]
fn json_text_in_a_string_is_read_as_a_lenient_server_parses_it() {
    let e = engine(json!({"default": "allow", "tools": {
        "shell": {
            "deny_if": [{"conditions": [{"path": "args.commands[*]", "op": "regex", "value": "^rm "}], "on_deny": "no rm"}],
        },
        "configure": {
            "deny_if": [{"conditions": [{"path": "args.options.mode", "op": "eq", "value": "dangerous"}], "on_deny": "no danger"}],
        },
        "copy": {
            "require": [{"path": "args.paths[*]", "op": "path_within", "value": "/workspace"}],
        }
    }}));
    let out = |tool: &str, args: Value| outcome(&e, tool, args).0;
    // FastMCP parses these strings into the list and object its parameters are typed as.
    assert_eq!(
        out("shell", json!({"commands": "[\"ls\", \"rm -rf /srv/x\"]"})),
        Outcome::Deny
    );
    assert_eq!(
        out("shell", json!({"commands": ["ls", "rm -rf /srv/x"]})),
        Outcome::Deny
    );
    assert_eq!(
        out("shell", json!({"commands": "[\"ls\", \"pwd\"]"})),
        Outcome::Allow
    );
    assert_eq!(
        out("configure", json!({"options": "{\"mode\": \"dangerous\"}"})),
        Outcome::Deny
    );
    assert_eq!(
        out("configure", json!({"options": "{\"mode\": \"safe\"}"})),
        Outcome::Allow
    );
    assert_eq!(
        out(
            "configure",
            json!({"options": "{\"mode\": \"safe\", \"mode\": \"dangerous\"}"})
        ),
        Outcome::Deny,
        "JSON text no reader agrees on is the unsafe outcome"
    );
    // `require`: both readings must satisfy it, and the plain one reaches nothing.
    assert_eq!(
        out("copy", json!({"paths": ["/workspace/a"]})),
        Outcome::Allow
    );
    assert_eq!(
        out("copy", json!({"paths": "[\"/workspace/a\"]"})),
        Outcome::Deny
    );
    assert_eq!(
        out("copy", json!({"paths": "[\"/etc/passwd\"]"})),
        Outcome::Deny
    );
}

#[test]
fn a_string_only_some_readers_take_for_a_number_is_the_unsafe_outcome() {
    let e = engine(json!({"default": "allow", "tools": {
        "t": {"require": [{"path": "args.n", "op": "neq", "value": 9}]},
        "u": {"deny_if": [{"conditions": [{"path": "args.n", "op": "eq", "value": 9}], "on_deny": "no 9"}]}
    }}));
    let out = |tool: &str, n: &str| outcome(&e, tool, json!({"n": n})).0;
    // Python's int() reads "٩" (Arabic-Indic nine) and "９" (fullwidth) as 9.
    for nine in ["٩", "９"] {
        assert_eq!(out("t", nine), Outcome::Deny, "require neq 9 with {nine}");
        assert_eq!(out("u", nine), Outcome::Deny, "deny_if eq 9 with {nine}");
    }
    assert_eq!(
        out("t", "abc"),
        Outcome::Allow,
        "no reader takes abc for a number"
    );
    assert_eq!(out("u", "abc"), Outcome::Allow);
    assert_eq!(out("t", "8"), Outcome::Allow);
}

#[test]
fn the_rolling_window_never_allows_a_boundary_burst() {
    // A fixed window would allow 3 calls at 9.9 s and 3 more at 10.1 s.
    let e =
        engine(json!({"tools": {"t": {"limits": [{"counter": "c", "window": "10s", "max": 3}]}}}));
    let args = json!({});
    let at = |t: u64| e.decide(&call("t", &args), t).outcome;
    for _ in 0..3 {
        assert_eq!(at(9_900_000_000), Outcome::Allow);
    }
    assert_eq!(at(10_100_000_000), Outcome::RateLimited);
    assert_eq!(
        at(19_800_000_000),
        Outcome::RateLimited,
        "still inside 10 s of the burst"
    );
    // The burst sits in bucket 19 (width 0.5 s); it stops counting at bucket 19+21 = 40, i.e. 20 s.
    assert_eq!(at(19_999_999_999), Outcome::RateLimited);
    assert_eq!(at(20_000_000_000), Outcome::Allow);
}

#[test]
fn retry_after_is_exactly_when_the_next_call_is_allowed() {
    let e = engine(
        json!({"tools": {"t": {"limits": [{"counter": "c", "window": "minute", "max": 2}]}}}),
    );
    let args = json!({});
    let c = call("t", &args);
    assert_eq!(e.decide(&c, 5 * SEC).outcome, Outcome::Allow);
    assert_eq!(e.decide(&c, 40 * SEC).outcome, Outcome::Allow);
    let d = e.decide(&c, 41 * SEC);
    assert_eq!(d.outcome, Outcome::RateLimited);
    let wait = d.limit.unwrap().retry_after.as_nanos() as u64;
    assert!(wait > 0);
    assert_eq!(
        e.decide(&c, 41 * SEC + wait - 1).outcome,
        Outcome::RateLimited
    );
    assert_eq!(e.decide(&c, 41 * SEC + wait).outcome, Outcome::Allow);
    // The first call left the window, not the second: never earlier than 60 s after it.
    assert!(41 * SEC + wait >= 65 * SEC);
}

/// Random call times against a brute-force check of every window: never more than `max`
/// allowed in any interval of the window's length, and never refused when the window (widened
/// by one sub-bucket) holds fewer than `max`.
#[test]
fn rolling_guarantee_holds_for_random_traffic() {
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    let mut rand = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for (max, window) in [(1u64, 1u64), (5, 10), (50, 60), (7, 3600)] {
        let e = engine(json!({"tools": {"t": {"limits": [
            {"counter": "c", "window": format!("{window}s"), "max": max}]}}}));
        let args = json!({});
        let w = window * SEC;
        let mut t = 0u64;
        let mut allowed: Vec<u64> = Vec::new();
        for _ in 0..20_000 {
            t += rand() % (3 * w / max.max(1) + 1);
            let in_window = allowed.iter().rev().take_while(|&&a| a + w > t).count() as u64;
            let in_widened = allowed
                .iter()
                .rev()
                .take_while(|&&a| a + w + w / 20 + 1 > t)
                .count() as u64;
            match e.decide(&call("t", &args), t).outcome {
                Outcome::Allow => {
                    assert!(
                        in_window < max,
                        "allowed a call with {in_window} already in the window"
                    );
                    allowed.push(t);
                }
                _ => assert!(
                    in_widened >= max,
                    "refused with only {in_widened} in the widened window"
                ),
            }
        }
        assert!(
            allowed.len() as u64 > max,
            "the test must exercise refusals and re-allowals"
        );
    }
}

#[test]
fn limits_of_one_call_are_taken_all_or_none() {
    let e = engine(
        json!({"all_tools": {"limits": [{"counter": "hourly", "window": "hour", "max": 5}]},
        "tools": {"t": {"limits": [{"counter": "burst", "window": "second", "max": 2}]}}}),
    );
    let args = json!({});
    let c = call("t", &args);
    assert_eq!(e.decide(&c, 0).outcome, Outcome::Allow);
    assert_eq!(e.decide(&c, 0).outcome, Outcome::Allow);
    for _ in 0..10 {
        let d = e.decide(&c, 0);
        assert_eq!(d.limit.unwrap().counter.name, "burst");
    }
    // The refused calls took nothing from `hourly`: three of its five remain.
    let later = 5 * SEC;
    assert_eq!(e.decide(&c, later).outcome, Outcome::Allow);
    assert_eq!(e.decide(&c, later).outcome, Outcome::Allow);
    assert_eq!(e.decide(&c, 10 * SEC).outcome, Outcome::Allow);
    let d = e.decide(&c, 20 * SEC);
    assert_eq!(d.limit.unwrap().counter.name, "hourly");
}

#[test]
fn concurrent_callers_never_overshoot() {
    let e = Arc::new(engine(json!({"tools": {"t": {"limits": [
        {"counter": "c", "window": "hour", "max": 1000, "scope": "grant"},
        {"counter": "d", "window": "minute", "max": 100000}]}}})));
    let allowed = std::sync::atomic::AtomicU32::new(0);
    std::thread::scope(|s| {
        for _ in 0..8 {
            s.spawn(|| {
                let args = json!({});
                for i in 0..1000u64 {
                    if e.decide(&call("t", &args), i).outcome == Outcome::Allow {
                        allowed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            });
        }
    });
    assert_eq!(allowed.into_inner(), 1000);
}

#[test]
fn scopes_pick_their_keys() {
    let e = engine(json!({"tools": {
        "p": {"limits": [{"counter": "p", "window": "minute", "max": 1, "scope": "pod"}]},
        "g": {"limits": [{"counter": "g", "window": "minute", "max": 1, "scope": "grant"}]},
        "s": {"limits": [{"counter": "s", "window": "minute", "max": 1, "scope": "session"}]}}}));
    let args = json!({});
    let who = |tool, grant, session| {
        e.decide(
            &Call {
                tool,
                args: &args,
                caller: grant,
                grant: None,
                session,
                approved: false,
                cloak: None,
                seen: None,
            },
            0,
        )
        .outcome
    };
    assert_eq!(who("p", "a", None), Outcome::Allow);
    assert_eq!(
        who("p", "b", None),
        Outcome::RateLimited,
        "pod scope is shared"
    );
    assert_eq!(who("g", "a", Some("s1")), Outcome::Allow);
    assert_eq!(
        who("g", "a", Some("s2")),
        Outcome::RateLimited,
        "grant ignores the session"
    );
    assert_eq!(who("g", "b", None), Outcome::Allow);
    assert_eq!(who("s", "a", Some("s1")), Outcome::Allow);
    assert_eq!(
        who("s", "a", Some("s2")),
        Outcome::Allow,
        "a new session, a new counter"
    );
    assert_eq!(
        who("s", "a", None),
        Outcome::Allow,
        "sessionless falls back to the grant key"
    );
    assert_eq!(who("s", "a", None), Outcome::RateLimited);
}

#[test]
fn a_million_identities_keep_memory_flat_and_escape_no_limit() {
    let cap = 1000;
    let e = engine_with(
        json!({"tools": {"t": {"limits": [{"counter": "c", "window": "hour", "max": 1, "scope": "grant"}]}}}),
        EngineOptions {
            max_keys_per_counter: cap,
        },
    );
    let args = json!({});
    let mut allowed = 0;
    let mut overflowed = 0;
    for i in 0..1_000_000u32 {
        let id = format!("id-{i}");
        let d = e.decide(
            &Call {
                tool: "t",
                args: &args,
                caller: &id,
                grant: None,
                session: None,
                approved: false,
                cloak: None,
                seen: None,
            },
            u64::from(i),
        );
        allowed += u32::from(d.outcome == Outcome::Allow);
        overflowed += u32::from(d.overflow);
        if i % 100_000 == 0 {
            assert!(e.counter_keys() <= cap);
        }
    }
    assert_eq!(e.counter_keys(), cap, "keys stay at the cap");
    // Each of the first `cap` identities got its one call; everyone after shares one overflow
    // allowance of `max` = 1.
    assert_eq!(allowed, cap as u32 + 1);
    assert_eq!(overflowed, 1_000_000 - cap as u32);
    // A live key is never evicted: id-0 is still limited.
    let d = e.decide(
        &Call {
            tool: "t",
            args: &args,
            caller: "id-0",
            grant: None,
            session: None,
            approved: false,
            cloak: None,
            seen: None,
        },
        2 * SEC,
    );
    assert_eq!(d.outcome, Outcome::RateLimited);
    assert!(!d.overflow);
    // Once windows are empty, keys are evicted and new callers get their own counters.
    let later = 3600 * SEC + 400 * SEC;
    let d = e.decide(
        &Call {
            tool: "t",
            args: &args,
            caller: "fresh",
            grant: None,
            session: None,
            approved: false,
            cloak: None,
            seen: None,
        },
        later,
    );
    assert_eq!((d.outcome, d.overflow), (Outcome::Allow, false));
    assert_eq!(e.counter_keys(), 1, "the sweep removed every empty key");
}

#[test]
fn leaving_the_overflow_does_not_reset_a_callers_count() {
    let e = engine_with(
        json!({"tools": {"t": {"limits": [{"counter": "c", "window": "minute", "max": 1, "scope": "grant"}]}}}),
        EngineOptions {
            max_keys_per_counter: 1,
        },
    );
    let args = json!({});
    let by = |grant, t| {
        e.decide(
            &Call {
                tool: "t",
                args: &args,
                caller: grant,
                grant: None,
                session: None,
                approved: false,
                cloak: None,
                seen: None,
            },
            t,
        )
    };
    assert_eq!(by("a", 0).outcome, Outcome::Allow);
    let d = by("b", 30 * SEC);
    assert_eq!((d.outcome, d.overflow), (Outcome::Allow, true));
    // At 64 s a's window is empty and its slot is free, but b's call at 30 s still counts.
    let d = by("b", 64 * SEC);
    assert_eq!((d.outcome, d.overflow), (Outcome::RateLimited, false));
    assert_eq!(by("b", 94 * SEC).outcome, Outcome::Allow);
}

#[test]
fn counters_survive_a_reload_when_name_window_and_scope_are_unchanged() {
    let v1 = json!({"tools": {"t": {"limits": [{"counter": "c", "window": "minute", "max": 3, "scope": "grant"}]}}});
    let e1 = engine(v1);
    let args = json!({});
    for _ in 0..3 {
        assert_eq!(e1.decide(&call("t", &args), 0).outcome, Outcome::Allow);
    }
    // A new max keeps the count: two more calls.
    let v2 = json!({"tools": {"t": {"limits": [{"counter": "c", "window": "60s", "max": 5, "scope": "identity"}]}},
                    "default": "allow"});
    let e2 = Engine::new(
        compile_file(&v2).unwrap(),
        Some(&e1),
        EngineOptions::default(),
    );
    let allowed = (0..10)
        .filter(|_| e2.decide(&call("t", &args), SEC).outcome == Outcome::Allow)
        .count();
    assert_eq!(allowed, 2);
    // A changed window is a different counter: it starts empty.
    let v3 = json!({"tools": {"t": {"limits": [{"counter": "c", "window": "hour", "max": 5, "scope": "grant"}]}}});
    let e3 = Engine::new(
        compile_file(&v3).unwrap(),
        Some(&e2),
        EngineOptions::default(),
    );
    let allowed = (0..10)
        .filter(|_| e3.decide(&call("t", &args), SEC).outcome == Outcome::Allow)
        .count();
    assert_eq!(allowed, 5);
    // The old engine, still serving calls in flight, shares the counts with the new one.
    assert_eq!(
        e1.decide(&call("t", &args), SEC).outcome,
        Outcome::RateLimited
    );
}

#[test]
fn a_grant_s_limits_count_per_caller_and_others_keep_the_base_limits() {
    let e = engine(json!({
        "identity": {"header": "x-agent"},
        "tools": {"write_file": {"limits": [
            {"counter": "writes", "window": "hour", "max": 2, "scope": "grant"}]}},
        "grants": [{"subjects": ["system:serviceaccount:ci:*"], "tools": {"write_file": {"limits": [
            {"counter": "ci_writes", "window": "hour", "max": 3, "scope": "grant"}]}}}]}));
    let args = json!({});
    let p = e.policy();
    let call = |caller: &str, now| {
        let d = e.decide(
            &Call {
                tool: "write_file",
                args: &args,
                caller,
                grant: p.grant_for(caller),
                session: None,
                approved: false,
                cloak: None,
                seen: None,
            },
            now,
        );
        (d.outcome, d.grant.map(str::to_owned))
    };
    let ci = "system:serviceaccount:ci:builder";
    for i in 0..3 {
        assert_eq!(call(ci, i), (Outcome::Allow, Some("grants[0]".into())));
    }
    assert_eq!(call(ci, 3).0, Outcome::RateLimited, "the grant's max is 3");
    // Another ServiceAccount of the same grant has a counter of its own.
    assert_eq!(call("system:serviceaccount:ci:other", 4).0, Outcome::Allow);
    // Callers no grant names get the base limit of 2, each their own.
    assert_eq!(call("someone", 5), (Outcome::Allow, None));
    assert_eq!(call("someone", 6).0, Outcome::Allow);
    assert_eq!(call("someone", 7).0, Outcome::RateLimited);
    assert_eq!(call("someone-else", 8).0, Outcome::Allow);
}

#[test]
fn a_call_needing_approval_runs_only_when_approved_and_after_every_other_check() {
    let e = engine(json!({"tools": {"clear": {
        "action": "require_approval",
        "deny_if": [{"conditions": [{"path": "args.all", "op": "eq", "value": true}], "on_deny": "never all"}],
        "limits": [{"counter": "c", "window": "minute", "max": 1}]}}}));
    let decide = |args: Value, approved: bool, now| {
        let d = e.decide(
            &Call {
                approved,
                ..call("clear", &args)
            },
            now,
        );
        (d.outcome, d.rule.to_owned())
    };
    let (o, rule) = decide(json!({}), false, 0);
    assert_eq!(
        (o, rule.as_str()),
        (Outcome::ApprovalRequired, "tools.clear")
    );
    assert_eq!(Outcome::ApprovalRequired.as_str(), "approval_required");
    assert_eq!(
        decide(json!({"all": true}), true, 0).0,
        Outcome::Deny,
        "an approval does not lift a deny_if"
    );
    assert_eq!(
        decide(json!({}), false, 0).0,
        Outcome::ApprovalRequired,
        "no counter taken"
    );
    assert_eq!(decide(json!({}), true, 0).0, Outcome::Allow);
    assert_eq!(
        decide(json!({}), true, 1).0,
        Outcome::RateLimited,
        "limits still apply to approved calls"
    );
}

fn seen_as<'a>(
    tool: &'a str,
    args: &'a Value,
    annotations: Value,
    hash: &'a str,
    first: &'a str,
) -> Call<'a> {
    Call {
        seen: Some(Seen {
            hints: crate::policy::Hints::of_tool(
                &json!({"name": tool, "annotations": annotations}),
            ),
            hash,
            first,
        }),
        ..call(tool, args)
    }
}

#[test]
fn categories_decide_tools_no_name_matches_in_order_name_glob_category_default() {
    let e = engine(json!({"default": "deny", "tools": {
            "drop_table": {},
            "read_*": {"action": "deny", "reason": "glob"}},
        "categories": {
            "destructive": {"action": "deny", "reason": "Destructive tools need a person"},
            "read_only": {"limits": [{"counter": "ro", "window": "minute", "max": 1}]},
            "open_world": {"require": [{"path": "args.url", "op": "prefix", "value": "https://"}]}}}));
    let args = json!({"url": "https://example.com"});
    let destructive = json!({"destructiveHint": true, "openWorldHint": false});
    let d = e.decide(
        &seen_as("drop_table", &args, destructive.clone(), "h", "h"),
        0,
    );
    assert_eq!(
        (d.outcome, d.rule),
        (Outcome::Allow, "tools.drop_table"),
        "a name beats a category"
    );
    let d = e.decide(
        &seen_as("read_x", &args, json!({"readOnlyHint": true}), "h", "h"),
        0,
    );
    assert_eq!(d.rule, "tools.read_*", "a glob beats a category");
    let d = e.decide(&seen_as("wipe", &args, destructive, "h", "h"), 0);
    assert_eq!(
        (d.outcome, d.rule),
        (Outcome::Deny, "categories.destructive")
    );
    assert_eq!(d.reason, "Destructive tools need a person");
    assert_eq!(d.tool_label, "categories.destructive");
    // Unannotated: destructive and open-world, so the deny of the strictest category wins.
    let d = e.decide(&seen_as("mystery", &args, json!(null), "h", "h"), 0);
    assert_eq!(d.outcome, Outcome::Deny);
    // Read-only and open-world: both rules apply (the require, then the limit).
    let ro = json!({"readOnlyHint": true});
    let bad = json!({"url": "http://plain"});
    let d = e.decide(&seen_as("fetch", &bad, ro.clone(), "h", "h"), 0);
    assert_eq!(
        (d.outcome, d.rule),
        (Outcome::Deny, "categories.open_world.require[0]")
    );
    let d = e.decide(&seen_as("fetch", &args, ro.clone(), "h", "h"), 0);
    assert_eq!(
        (d.outcome, d.tool_label),
        (Outcome::Allow, "categories.open_world+read_only")
    );
    let d = e.decide(&seen_as("fetch", &args, ro.clone(), "h", "h"), 0);
    assert_eq!(
        (d.outcome, d.rule),
        (Outcome::RateLimited, "categories.read_only.limits[0]")
    );
    // Idempotent only, which no category rule names: the default.
    let d = e.decide(
        &seen_as(
            "set",
            &args,
            json!({"destructiveHint": false, "openWorldHint": false, "idempotentHint": true}),
            "h",
            "h",
        ),
        0,
    );
    assert_eq!((d.outcome, d.rule), (Outcome::Deny, "default"));
}

#[test]
fn under_categories_a_tool_not_yet_listed_is_refused_until_it_is() {
    let e = engine(json!({"default": "allow", "tools": {"named": {}},
        "categories": {"destructive": {"action": "deny"}}}));
    let args = json!({});
    let d = e.decide(&call("unlisted", &args), 0);
    assert_eq!((d.outcome, d.rule), (Outcome::Unlisted, "categories"));
    assert!(d.reason.contains("retry"), "{}", d.reason);
    assert_eq!(
        e.decide(&call("named", &args), 0).outcome,
        Outcome::Allow,
        "a tool the policy names needs no listing"
    );
    let plain = engine(json!({"default": "allow"}));
    assert_eq!(
        plain.decide(&call("unlisted", &args), 0).outcome,
        Outcome::Allow,
        "without categories or pins nothing waits for the list"
    );
}

#[test]
fn a_pinned_tool_whose_definition_changed_is_denied() {
    let pin = format!("sha256:{}", "a".repeat(64));
    let other = format!("sha256:{}", "b".repeat(64));
    let e = engine(json!({"default": "allow", "pins": {"run": pin}}));
    let args = json!({});
    let d = e.decide(&seen_as("run", &args, json!(null), &pin, &pin), 0);
    assert_eq!(d.outcome, Outcome::Allow);
    let d = e.decide(&seen_as("run", &args, json!(null), &other, &pin), 0);
    assert_eq!((d.outcome, d.rule), (Outcome::Deny, "pins.run"));
    assert!(
        d.reason.contains("changed since it was pinned"),
        "{}",
        d.reason
    );
    let d = e.decide(&call("run", &args), 0);
    assert_eq!(
        (d.outcome, d.rule),
        (Outcome::Unlisted, "pins.run"),
        "not seen: cannot be checked"
    );
    assert_eq!(
        e.decide(&call("other", &args), 0).outcome,
        Outcome::Allow,
        "explicit pinning leaves other tools alone"
    );

    let first = engine(json!({"default": "allow", "pinning": "firstSeen"}));
    let d = first.decide(&seen_as("any", &args, json!(null), &pin, &pin), 0);
    assert_eq!(d.outcome, Outcome::Allow);
    let d = first.decide(&seen_as("any", &args, json!(null), &other, &pin), 0);
    assert_eq!((d.outcome, d.rule), (Outcome::Deny, "pinning"));
    assert_eq!(
        first.decide(&call("any", &args), 0).outcome,
        Outcome::Unlisted
    );
    // An explicit pin wins over the first-seen definition.
    let both = engine(json!({"default": "allow", "pinning": "firstSeen", "pins": {"any": other}}));
    let d = both.decide(&seen_as("any", &args, json!(null), &other, &pin), 0);
    assert_eq!(d.outcome, Outcome::Allow);
}
