//! What comes back: every `tools/list` result a client can receive is filtered, whatever stream it
//! arrives on (a POST reply, a GET stream, a `Last-Event-ID` replay, the legacy stream) and
//! whatever its id. A message that might carry a tool list but cannot be read with certainty is
//! replaced by an error, never passed.

use super::fold::is_variant_of;
use super::{scan, MAX_DEPTH};
use serde_json::{json, Value};

/// Why a message that might carry a tool list cannot be filtered with certainty.
#[derive(Debug, thiserror::Error)]
pub enum Unreadable {
    #[error("the server's message is unreadable: {0}")]
    Scan(#[from] scan::ScanError),
    #[error("the server's message is unreadable: {0}")]
    Json(#[from] serde_json::Error),
    #[error("a {0:?} key spelled in another case")]
    FoldedKey(&'static str),
    #[error("\"tools\" in a result is not a list")]
    ToolsNotAList,
}

/// Whether message data could hold a tool list: a key spelled `tools` in any case, an escape, or a
/// non-ASCII byte (which could fold to one of its letters). Data without any of these passes
/// unread, so the common stream of notifications and call results costs one byte scan.
pub fn might_carry_tools(data: &[u8]) -> bool {
    data.iter().any(|&b| b == b'\\' || b >= 0x80)
        || data.windows(5).any(|w| w.eq_ignore_ascii_case(b"tools"))
}

/// Filters the data of one message (or batch) with `listable` (given each tool's definition;
/// one without a string `name` is always removed): `Ok(None)` when nothing changes,
/// `Ok(Some(new))` with tools removed, `Err` when the data might carry a tool list but cannot be
/// read with certainty (invalid or duplicate-keyed JSON, a number no parser agrees on, a
/// case-folded `tools`/`result` key, a `tools` that is not a list).
pub fn filter_data(
    data: &[u8],
    listable: &dyn Fn(&Value) -> bool,
    per_caller: bool,
) -> Result<Option<Vec<u8>>, Unreadable> {
    if data.iter().all(u8::is_ascii_whitespace) || !might_carry_tools(data) {
        return Ok(None);
    }
    scan::validate(data, MAX_DEPTH)?;
    let mut v: Value = serde_json::from_slice(data)?;
    let changed = match &mut v {
        Value::Array(items) => {
            let mut any = false;
            for item in items {
                any |= filter_message(item, listable, per_caller)?;
            }
            any
        }
        item => filter_message(item, listable, per_caller)?,
    };
    if !changed {
        return Ok(None);
    }
    Ok(Some(
        serde_json::to_vec(&v).expect("a JSON value serialises"),
    ))
}

/// Filters one message if its result carries `tools`; `Ok(true)` when it changed: tools were
/// removed, or a list that differs by caller (`per_caller`) was marked `cacheScope: "private"`
/// (2026-07-28), so no shared cache hands one caller's list to another.
fn filter_message(
    msg: &mut Value,
    listable: &dyn Fn(&Value) -> bool,
    per_caller: bool,
) -> Result<bool, Unreadable> {
    let Some(obj) = msg.as_object_mut() else {
        return Ok(false);
    };
    if obj.keys().any(|k| is_variant_of(k, "result")) {
        return Err(Unreadable::FoldedKey("result"));
    }
    let Some(result) = obj.get_mut("result").and_then(Value::as_object_mut) else {
        return Ok(false);
    };
    if result.keys().any(|k| is_variant_of(k, "tools")) {
        return Err(Unreadable::FoldedKey("tools"));
    }
    let Some(tools) = result.get_mut("tools") else {
        return Ok(false);
    };
    let Some(tools) = tools.as_array_mut() else {
        return Err(Unreadable::ToolsNotAList);
    };
    let before = tools.len();
    tools.retain(|t| t.get("name").and_then(Value::as_str).is_some() && listable(t));
    let mut changed = tools.len() != before;
    if result.keys().any(|k| is_variant_of(k, "cacheScope")) {
        return Err(Unreadable::FoldedKey("cacheScope"));
    }
    if let Some(scope) = result.get_mut("cacheScope").filter(|_| per_caller) {
        if scope != "private" {
            *scope = Value::from("private");
            changed = true;
        }
    }
    Ok(changed)
}

/// The message that replaces one that could not be filtered with certainty.
pub fn list_error(id: Value, why: &str) -> Value {
    json!({
        "jsonrpc": "2.0",
        "id": id,
        "error": {
            "code": super::code::INTERNAL_ERROR,
            "message": format!("mcp-warden could not filter the server's tool list: {why}")
        }
    })
}

/// The answer sent in place of a server's message over the event size limit, to the request it
/// answered (`id`; `null` when that cannot be told).
pub fn oversized_answer(id: Value, limit: usize) -> Value {
    json!({
        "jsonrpc": "2.0",
        "id": id,
        "error": {
            "code": super::code::INTERNAL_ERROR,
            "message": format!(
                "the server's answer is over the {limit}-byte limit for one event through \
                 mcp-warden, so it was not passed on; ask for less (a smaller page, a shorter \
                 output)"
            )
        }
    })
}

/// The id of a JSON-RPC message read from only the start of its text: the value of the
/// top-level `id` member when it comes before the text runs out (servers write `jsonrpc` and
/// `id` first). Only a number or a string is taken; anything unclear gives `None`.
pub fn leading_id(start: &[u8]) -> Option<Value> {
    let mut r = PrefixReader { s: start, i: 0 };
    r.ws();
    r.eat(b'{')?;
    loop {
        r.ws();
        let key = r.string()?;
        r.ws();
        r.eat(b':')?;
        r.ws();
        if key == "id" {
            return r.scalar_id();
        }
        r.skip_value()?;
        r.ws();
        r.eat(b',')?;
    }
}

/// A cursor over the start of a JSON text; every step gives `None` when the text ends first.
struct PrefixReader<'a> {
    s: &'a [u8],
    i: usize,
}

impl PrefixReader<'_> {
    fn ws(&mut self) {
        while matches!(self.s.get(self.i), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }

    fn eat(&mut self, b: u8) -> Option<()> {
        (self.s.get(self.i) == Some(&b)).then(|| self.i += 1)
    }

    /// A whole string token, decoded.
    fn string(&mut self) -> Option<String> {
        let start = self.i;
        self.eat(b'"')?;
        loop {
            match self.s.get(self.i)? {
                b'\\' => self.i += 2,
                b'"' => {
                    self.i += 1;
                    return serde_json::from_slice(&self.s[start..self.i]).ok();
                }
                _ => self.i += 1,
            }
        }
    }

    fn scalar_id(&mut self) -> Option<Value> {
        if self.s.get(self.i) == Some(&b'"') {
            return self.string().map(Value::String);
        }
        let start = self.i;
        while matches!(
            self.s.get(self.i),
            Some(b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9')
        ) {
            self.i += 1;
        }
        // A number must be followed by what ends it, or it may have been cut.
        matches!(
            self.s.get(self.i),
            Some(b',' | b'}' | b' ' | b'\t' | b'\n' | b'\r')
        )
        .then(|| serde_json::from_slice::<serde_json::Number>(&self.s[start..self.i]).ok())
        .flatten()
        .map(Value::Number)
    }

    /// Skips one value: strings and nesting followed to their end.
    fn skip_value(&mut self) -> Option<()> {
        let mut depth = 0usize;
        loop {
            match *self.s.get(self.i)? {
                b'"' => {
                    self.string()?;
                }
                b'{' | b'[' => {
                    depth += 1;
                    self.i += 1;
                }
                b'}' | b']' if depth > 0 => {
                    depth -= 1;
                    self.i += 1;
                }
                b',' | b'}' if depth == 0 => return Some(()),
                _ => self.i += 1,
            }
            if depth == 0 && matches!(self.s.get(self.i), Some(b',' | b'}')) {
                return Some(());
            }
        }
    }
}

/// The id to answer an unfilterable message with: its own when it can be read, else the one
/// pending `tools/list` request of the stream, else `null`.
pub fn error_id(data: &[u8], pending: &[Value]) -> Value {
    #[derive(serde::Deserialize)]
    struct Id {
        id: Option<Value>,
    }
    match serde_json::from_slice::<Id>(data) {
        Ok(Id { id: Some(id) }) => id,
        _ if pending.len() == 1 => pending[0].clone(),
        _ => Value::Null,
    }
}

/// [`filter_data`] with its error turned into the replacement message.
pub fn filter_or_refuse(
    data: &[u8],
    pending: &[Value],
    listable: &dyn Fn(&Value) -> bool,
    per_caller: bool,
) -> Option<Vec<u8>> {
    match filter_data(data, listable, per_caller) {
        Ok(new) => new,
        Err(why) => {
            let err = list_error(error_id(data, pending), &why.to_string());
            Some(serde_json::to_vec(&err).expect("a JSON value serialises"))
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_id_is_read_from_the_start_of_a_message() {
        use super::leading_id;
        use serde_json::json;
        let cut = |s: &str| s.as_bytes()[..s.len() - 3].to_vec();
        assert_eq!(
            leading_id(&cut(
                r#"{"jsonrpc":"2.0","id":7,"result":{"content":"xxxxxx"}}"#
            )),
            Some(json!(7))
        );
        assert_eq!(
            leading_id(&cut(
                r#" { "jsonrpc" : "2.0" , "id" : "a\"b" , "result":"xxxxx"}"#
            )),
            Some(json!("a\"b"))
        );
        assert_eq!(
            leading_id(&cut(
                r#"{"result":{"x":[1,{"id":9}],"s":"}"},"id":12,"jsonrpc":"2.0"}"#
            )),
            Some(json!(12)),
            "an id nested in an earlier member is not the message's"
        );
        assert_eq!(
            leading_id(br#"{"jsonrpc":"2.0","id":12"#),
            None,
            "a number that may be cut"
        );
        assert_eq!(leading_id(br#"{"jsonrpc":"2.0","result":{"a":"#), None);
        assert_eq!(
            leading_id(br#"{"jsonrpc":"2.0","id":null,"result":1}"#),
            None
        );
        assert_eq!(leading_id(b"[1,2"), None);
    }

    use super::*;

    fn keep(t: &Value) -> bool {
        !t["name"].as_str().unwrap().starts_with("debug_")
    }

    fn filtered(data: &str) -> Result<Option<Value>, String> {
        filter_data(data.as_bytes(), &keep, false)
            .map_err(|e| e.to_string())
            .map(|o| o.map(|b| serde_json::from_slice(&b).expect("filtered output is JSON")))
    }

    #[test]
    fn every_tool_list_is_filtered_whatever_its_id() {
        for id in ["4", "0", "-0", "\"x\"", "null", "1e400"] {
            let body = format!(
                r#"{{"jsonrpc":"2.0","id":{id},"result":{{"tools":[{{"name":"a"}},{{"name":"debug_x"}}],"nextCursor":"c2"}}}}"#
            );
            match filtered(&body) {
                Ok(Some(v)) => {
                    assert_eq!(v["result"]["tools"], json!([{"name": "a"}]), "{id}");
                    assert_eq!(v["result"]["nextCursor"], "c2", "pagination is kept");
                }
                Err(e) if id == "1e400" => assert!(e.contains("unreadable"), "{e}"),
                other => panic!("id {id}: {other:?}"),
            }
        }
        let batch = r#"[{"jsonrpc":"2.0","id":1,"result":{}},{"jsonrpc":"2.0","id":2,"result":{"tools":[{"name":"debug_y"}]}}]"#;
        assert_eq!(
            filtered(batch).unwrap().unwrap()[1]["result"]["tools"],
            json!([])
        );
    }

    #[test]
    fn what_carries_no_tool_list_passes_unread() {
        for data in [
            r#"{"jsonrpc":"2.0","id":1,"result":{"content":[]}}"#,
            r#"{"jsonrpc":"2.0","method":"notifications/progress","params":{}}"#,
            "",
            "  ",
            "not json at all",
            r#"{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"a"}]}}"#,
        ] {
            assert_eq!(filtered(data), Ok(None), "{data}");
        }
    }

    #[test]
    fn what_might_carry_a_list_but_cannot_be_read_is_refused() {
        for (data, why) in [
            (
                r#"{"id":1,"result":{"tools":[{"name":"debug_x"}],"x":"\ud800"}}"#,
                "lone surrogate",
            ),
            (
                r#"{"id":1,"result":{"tools":[{"name":"debug_x"}],"n":1e400}}"#,
                "number out of range",
            ),
            (
                "\u{feff}{\"id\":1,\"result\":{\"tools\":[]}}",
                "byte-order mark",
            ),
            (
                r#"{"id":1,"result":{"tools":[],"tools":[{"name":"debug_x"}]}}"#,
                "duplicate key",
            ),
            (
                r#"{"id":1,"result":{"Tools":[{"name":"debug_x"}]}}"#,
                "case variant",
            ),
            (
                r#"{"id":1,"result":{"toolſ":[{"name":"debug_x"}]}}"#,
                "long s",
            ),
            (
                r#"{"id":1,"Result":{"tools":[{"name":"debug_x"}]}}"#,
                "result variant",
            ),
            (
                r#"{"id":1,"result":{"tools":{"name":"debug_x"}}}"#,
                "not a list",
            ),
            (
                r#"{"id":1,"result":{"tools":[{"name":"debug_x"}]"#,
                "cut off",
            ),
        ] {
            assert!(filtered(data).is_err(), "{why}: {data}");
        }
    }

    #[test]
    fn refusals_answer_the_message_id_or_the_pending_one() {
        let pending = [json!(7)];
        let out =
            filter_or_refuse(br#"{"id":3,"result":{"Tools":[]}}"#, &pending, &keep, false).unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            (v["id"].clone(), v["error"]["code"].clone()),
            (json!(3), json!(-32603))
        );
        let out =
            filter_or_refuse(br#"{"id":3,"result":{"tools":[]}"#, &pending, &keep, false).unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["id"], 7, "unreadable: the stream's one pending list");
        let out = filter_or_refuse(br#"{"result":{"tools":[]}"#, &[], &keep, false).unwrap();
        assert_eq!(
            serde_json::from_slice::<Value>(&out).unwrap()["id"],
            Value::Null
        );
    }
}
