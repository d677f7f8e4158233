use super::*;

fn kind_of(s: &str) -> Result<Kind, i64> {
    match parse(s.as_bytes()).map_err(|r| r.code)? {
        Body::Single(m) => Ok(m.kind),
        Body::Batch(_) => panic!("batch"),
    }
}

#[test]
fn messages_are_classified() {
    assert_eq!(
        kind_of(r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#),
        Ok(Kind::Request)
    );
    assert_eq!(
        kind_of(r#"{"jsonrpc":"2.0","id":"a","method":"ping"}"#),
        Ok(Kind::Request)
    );
    assert_eq!(
        kind_of(r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#),
        Ok(Kind::Notification)
    );
    assert_eq!(
        kind_of(r#"{"jsonrpc":"2.0","id":3,"result":{}}"#),
        Ok(Kind::Response)
    );
    assert_eq!(
        kind_of(r#"{"jsonrpc":"2.0","id":3,"error":{"code":1,"message":"x"}}"#),
        Ok(Kind::Response)
    );
    // `id: null` is no id: a tools/call carrying it is caught by the proxy as id-less.
    assert_eq!(
        kind_of(r#"{"jsonrpc":"2.0","id":null,"method":"tools/call"}"#),
        Ok(Kind::Notification)
    );
}

#[test]
fn ambiguous_or_malformed_messages_are_refused() {
    let cases = [
        (
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","result":{}}"#,
            code::INVALID_REQUEST,
        ),
        (
            r#"{"jsonrpc":"2.0","id":1,"result":{},"error":{}}"#,
            code::INVALID_REQUEST,
        ),
        (r#"{"jsonrpc":"2.0","id":1}"#, code::INVALID_REQUEST),
        (
            r#"{"jsonrpc":"1.0","id":1,"method":"x"}"#,
            code::INVALID_REQUEST,
        ),
        (r#"{"id":1,"method":"x"}"#, code::INVALID_REQUEST),
        (
            r#"{"jsonrpc":"2.0","id":1.5,"method":"x"}"#,
            code::INVALID_REQUEST,
        ),
        (
            r#"{"jsonrpc":"2.0","id":{},"method":"x"}"#,
            code::INVALID_REQUEST,
        ),
        (
            r#"{"jsonrpc":"2.0","id":1,"method":7}"#,
            code::INVALID_REQUEST,
        ),
        (r#"[]"#, code::INVALID_REQUEST),
        (r#"[1]"#, code::INVALID_REQUEST),
        (r#""x""#, code::INVALID_REQUEST),
        (
            r#"{"jsonrpc":"2.0","id":1,"method":"x","Method":"y"}"#,
            code::PARSE_ERROR,
        ),
        (
            r#"{"jsonrpc":"2.0","id":1,"method":"x",}"#,
            code::PARSE_ERROR,
        ),
    ];
    for (body, want) in cases {
        let r = parse(body.as_bytes()).unwrap_err();
        assert_eq!(r.code, want, "{body}: {}", r.message);
    }
}

#[test]
fn tool_calls_read_name_and_arguments() {
    let body = br#"{"jsonrpc":"2.0","id":9,"method":"tools/call","params":{"name":"run_cell","arguments":{"code":"1"},"_meta":{}}}"#;
    let b = parse(body).unwrap();
    let m = &b.messages()[0];
    let c = m.tool_call().unwrap();
    assert_eq!(c.name, "run_cell");
    assert_eq!(c.arguments.unwrap().get(), r#"{"code":"1"}"#);
    assert_eq!(c.protocol_version, None);
    let modern = br#"{"jsonrpc":"2.0","id":9,"method":"tools/call","params":{"name":"a","_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28"}}}"#;
    let b = parse(modern).unwrap();
    assert_eq!(
        b.messages()[0]
            .tool_call()
            .unwrap()
            .protocol_version
            .as_deref(),
        Some("2026-07-28")
    );
    let bad = [
        r#"{"jsonrpc":"2.0","id":9,"method":"tools/call"}"#,
        r#"{"jsonrpc":"2.0","id":9,"method":"tools/call","params":{"name":5}}"#,
        r#"{"jsonrpc":"2.0","id":9,"method":"tools/call","params":{"name":"a","arguments":[1]}}"#,
    ];
    for s in bad {
        let b = parse(s.as_bytes()).unwrap();
        let r = b.messages()[0].tool_call().unwrap_err();
        assert_eq!(r.code, code::INVALID_PARAMS, "{s}");
        assert_eq!(r.id.as_deref().map(RawValue::get), Some("9"));
    }
}

#[test]
fn batches_hold_each_message() {
    let b = parse(br#"[{"jsonrpc":"2.0","id":1,"method":"a"},{"jsonrpc":"2.0","method":"b"}]"#)
        .unwrap();
    let kinds: Vec<Kind> = b.messages().iter().map(|m| m.kind).collect();
    assert_eq!(kinds, vec![Kind::Request, Kind::Notification]);
    assert_eq!(
        b.messages()[1].raw.get(),
        r#"{"jsonrpc":"2.0","method":"b"}"#
    );
}

#[test]
fn ids_must_be_echoed_as_sent() {
    for ok in [
        "0",
        "-1",
        "9007199254740991",
        "-9007199254740991",
        "\"-0\"",
        "\"a\"",
    ] {
        let body = format!(r#"{{"jsonrpc":"2.0","id":{ok},"method":"tools/list"}}"#);
        assert_eq!(kind_of(&body), Ok(Kind::Request), "{ok}");
    }
    for bad in [
        "-0",
        "9007199254740992",
        "123456789012345678901234",
        "1.0",
        "1e3",
        "true",
        "{}",
    ] {
        let body = format!(r#"{{"jsonrpc":"2.0","id":{bad},"method":"tools/list"}}"#);
        assert_eq!(kind_of(&body), Err(code::INVALID_REQUEST), "{bad}");
    }
}

#[test]
fn envelope_keys_in_another_case_are_refused() {
    for body in [
        r#"{"jsonrpc":"2.0","id":1,"Method":"tools/call","params":{"name":"x"}}"#,
        r#"{"jsonrpc":"2.0","ID":1,"method":"tools/list"}"#,
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/list","Params":{}}"#,
        r#"{"jsonrpc":"2.0","id":1,"method":"ping","paramſ":{}}"#,
        r#"{"jsonrpc":"2.0","id":1,"method":"ping","\u0050arams":{}}"#,
        r#"[{"jsonrpc":"2.0","id":1,"method":"ping"},{"jsonrpc":"2.0","id":2,"METHOD":"tools/call"}]"#,
    ] {
        let r = parse(body.as_bytes()).unwrap_err();
        assert_eq!(r.code, code::INVALID_REQUEST, "{body}");
        assert!(r.message.contains("ignoring case"), "{body}: {}", r.message);
    }
    let call = |params: &str| {
        let body = format!(r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{params}}}"#);
        let Body::Single(m) = parse(body.as_bytes()).map_err(|r| r.code).unwrap() else {
            panic!("batch")
        };
        m.tool_call()
            .map(|c| c.name.into_owned())
            .map_err(|r| (r.code, r.message))
    };
    for params in [
        r#"{"name":"x","Arguments":{"cmd":"rm"}}"#,
        r#"{"name":"x","argumentſ":{"cmd":"rm"}}"#,
        r#"{"NAME":"x"}"#,
        r#"{"name":"x","_META":{}}"#,
        r#"{"name":"x","_meta":{"io.modelcontextprotocol/protocolversion":"2025-06-18"}}"#,
    ] {
        let (code, message) = call(params).unwrap_err();
        assert_eq!(code, code::INVALID_PARAMS, "{params}");
        assert!(message.contains("ignoring case"), "{params}: {message}");
    }
    assert_eq!(
        call(r#"{"name":"x","arguments":{"Arguments":1,"ID":2},"other":1}"#),
        Ok("x".into()),
        "keys inside arguments and keys that fold to nothing read are the server's business"
    );
}

#[test]
fn versions_compare_as_dates() {
    assert!(version_at_least("2026-07-28", RESULT_TYPE_SINCE));
    assert!(version_at_least("2027-01-01", RESULT_TYPE_SINCE));
    assert!(!version_at_least("2025-11-25", RESULT_TYPE_SINCE));
    assert!(!version_at_least("draft", RESULT_TYPE_SINCE));
}

#[test]
fn method_labels_are_bounded() {
    assert_eq!(method_label("tools/call"), "tools/call");
    assert_eq!(method_label("x/y/z"), "_other");
}
