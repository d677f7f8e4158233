//! The gate's part in approval by the user at the client (`approval: {by: user}`): reading the
//! user's answer a call carries, putting the question to them (an `input_required` answer, or
//! the call's stream), and the denial or approver flow when they declined or cannot be asked.

use super::super::caller::{unix_now, Caller};
use super::super::confirm::{self, continuation, stream, Answer, CanElicit};
use super::super::refusal::Refused;
use super::super::State;
use super::super::{peers, record};
use super::{Asked, Gate, StreamAsk, Told, Verdict};
use crate::engine::Decision;
use crate::mcp::{self, Kind};
use crate::policy::{sha256_hex, ApprovedBy};
use serde_json::value::RawValue;
use serde_json::Value;

/// What is known when a call that needs the user's confirmation is refused for want of it.
pub(super) struct Asking<'v> {
    /// The user's answer the call carried, if any.
    pub answer: Option<Answer>,
    /// The call carried the sidecar's own `requestState` (a retry after a question).
    pub retry: bool,
    pub version: &'v str,
}

/// How a call needing the user's confirmation goes on.
pub(super) enum UserAsk {
    /// Answered with this question (`true`: the page of `url`, where an approver approves).
    Asked(Value, bool),
    /// Denied with the decision's reason.
    Deny,
    /// The approver flow.
    Approver,
}

impl Gate<'_> {
    /// What a 2026-07-28 call's server question would be bound to.
    pub(super) fn bound(&self, call: &mcp::ToolCall) -> continuation::Call {
        continuation::Call {
            caller: self.caller.id.to_string(),
            tool: call.name.to_string(),
            arguments_sha256: sha256_hex(call.arguments.map_or("", |a| a.get()).as_bytes()),
            policy_hash: self.policy.hash.clone(),
        }
    }

    fn about<'b>(&'b self, call: &'b mcp::ToolCall, a: &'b Asked) -> confirm::About<'b> {
        confirm::About {
            caller: &self.caller.id,
            tool: &call.name,
            arguments: &a.arguments,
            arguments_sha256: &a.arguments_sha256,
            policy_hash: &self.policy.hash,
            approval_id: &a.id,
        }
    }

    /// The user's answer this call carries (its sealed state and `inputResponses`, or an
    /// answer on the call's stream), for a rule the user confirms in a form.
    pub(super) fn users_answer(
        &self,
        call: &mcp::ToolCall,
        a: &Asked,
        ours: bool,
        id: &RawValue,
    ) -> Result<Option<(Answer, Option<confirm::seal::Question>)>, Refused> {
        if !matches!(a.grants.by, ApprovedBy::User { url: None, .. }) {
            return Ok(None);
        }
        if let (true, Some(state)) = (ours, call.request_state.as_deref()) {
            let about = self.about(call, a);
            let sealer = &self.st.confirm.sealer;
            let (answer, q) =
                confirm::answer(sealer, &about, state, call.input_responses, id, unix_now())?;
            return Ok(Some((answer, Some(q))));
        }
        Ok(self
            .told
            .filter(|t| t.tool == call.name && t.arguments_sha256 == a.arguments_sha256)
            .map(|t| (t.answer, None)))
    }

    /// A call the user must confirm and has not: the question put to them (in an
    /// `input_required` answer, or on the call's stream), or the denial or approver flow when
    /// they declined or their client cannot be asked.
    pub(super) fn ask_user(
        &mut self,
        call: &mcp::ToolCall,
        a: &Asked,
        asking: Asking,
        id: &RawValue,
        d: &mut Decision,
    ) -> UserAsk {
        let Asking {
            answer,
            retry,
            version,
        } = asking;
        let label = self.policy.label.as_str();
        let ApprovedBy::User {
            url,
            deny_otherwise,
        } = &a.grants.by
        else {
            return UserAsk::Approver;
        };
        let said = match answer {
            Some(Answer::Declined) => Some(("user_declined", "declined this call")),
            Some(Answer::Cancelled) => Some((
                "user_cancelled",
                "dismissed the question about this call without deciding",
            )),
            // Accepted, and taken before: the reason says so; nothing is asked again.
            Some(Answer::Accepted) => {
                record::approval(self.st, label, d.tool_label, "user_replayed");
                return UserAsk::Deny;
            }
            _ => None,
        };
        if let Some((result, what)) = said {
            record::approval(self.st, label, d.tool_label, result);
            d.reason = format!(
                "The user {what} in their MCP client: it did not run. Do not repeat it unless \
                 the user asks for it."
            )
            .into();
            return UserAsk::Deny;
        }
        if url.is_some() && retry {
            // Back from the page of `url`, not approved there (yet): the approver flow says so.
            d.reason = format!(
                "{} The page the user was sent to has not approved it (yet).",
                d.reason
            )
            .into();
            return UserAsk::Approver;
        }
        let modern = mcp::version_at_least(version, mcp::RESULT_TYPE_SINCE);
        let can = match (modern, self.session) {
            (true, _) => CanElicit::read(call.client_capabilities),
            (false, Some(s)) if self.single => self.st.confirm.streams.session(s.as_bytes()),
            (false, _) => CanElicit::default(),
        };
        if !can.fits(&a.grants.by) {
            record::approval(self.st, label, d.tool_label, "user_unreachable");
            let why = format!(
                "Tool {:?} needs the user's confirmation in their MCP client, and this client \
                 cannot be asked (it declared no {} elicitation capability)",
                call.name,
                if url.is_some() { "URL" } else { "form" }
            );
            if *deny_otherwise {
                d.reason = format!("{why}: the call did not run.").into();
                return UserAsk::Deny;
            }
            d.reason = format!("{why}. {}", d.reason).into();
            return UserAsk::Approver;
        }
        record::approval(self.st, label, d.tool_label, "user_asked");
        let about = self.about(call, a);
        let ttl = a.grants.ttl;
        if modern {
            let result = confirm::input_required(
                &self.st.confirm.sealer,
                &about,
                &a.grants.by,
                ttl.as_secs(),
            );
            let answer = serde_json::json!({"jsonrpc": "2.0", "id": mcp::raw_to_value(id), "result": result});
            return UserAsk::Asked(answer, url.is_some());
        }
        self.stream_ask = Some(StreamAsk {
            params: confirm::elicitation(&about, &a.grants.by),
            ttl,
            told: Told {
                tool: call.name.to_string(),
                arguments_sha256: a.arguments_sha256.clone(),
                answer: Answer::Stale,
            },
        });
        // Replaced by the stream (the request is a single call).
        UserAsk::Asked(Value::Null, url.is_some())
    }
}

/// A client's reply to the sidecar's own question on a stream: taken here. `None` for any other
/// message (a reply to the server's requests is the server's).
pub(super) fn take_reply(
    st: &State,
    caller: &Caller,
    m: &mcp::Message,
) -> Result<Option<Verdict>, Refused> {
    #[derive(serde::Deserialize)]
    struct Reply {
        id: String,
        result: Option<Value>,
        error: Option<Value>,
    }
    if m.kind != Kind::Response
        || !m
            .id
            .is_some_and(|i| i.get().starts_with(&format!("\"{}", stream::ID_PREFIX)))
    {
        return Ok(None);
    }
    let refused = |why: &str| Refused::BadParams {
        why: why.to_owned(),
        id: m.id.expect("a response has an id").to_owned(),
    };
    let r: Reply =
        serde_json::from_str(m.raw.get()).map_err(|_| refused("not a JSON-RPC response"))?;
    let reply = match (r.result, r.error) {
        (Some(v), None) => Ok(v),
        (None, Some(e)) => Err(e),
        _ => return Err(refused("a response needs exactly one of result and error")),
    };
    st.confirm
        .streams
        .reply(&r.id, &caller.id, reply)
        .map_err(|_| refused("no question of this id is open for this caller (answered, expired, or never asked)"))?;
    Ok(Some(Verdict::Taken))
}

/// A request acting on a task (`tasks/get`, `tasks/update`, `tasks/cancel`): forwarded only for
/// a task created through the policy's sidecars by a call of this caller.
pub(super) async fn check_task(
    st: &State,
    label: &str,
    caller: &Caller,
    m: &mcp::Message<'_>,
) -> Result<(), Refused> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct TaskParams {
        task_id: String,
    }
    let refused = |why: String| Refused::BadParams {
        why,
        id: m.id.map_or_else(
            || RawValue::from_string("null".into()).expect("null"),
            ToOwned::to_owned,
        ),
    };
    let p = m
        .params
        .and_then(|p| serde_json::from_str::<TaskParams>(p.get()).ok())
        .ok_or_else(|| refused("a task request needs a string params.taskId".into()))?;
    let seen = continuation::Seen::Task {
        id: p.task_id.clone(),
        caller: caller.id.to_string(),
    };
    match peers::holds(st, label, seen).await {
        true => Ok(()),
        false => Err(refused(format!(
            "task {:?} was not created through this policy's mcp-warden sidecars by this caller \
             (or has expired): only a task whose call was decided for you can be acted on",
            p.task_id
        ))),
    }
}

/// What an `initialize` request declares the client can be asked.
pub(super) fn initialize_capabilities(m: &mcp::Message) -> CanElicit {
    #[derive(serde::Deserialize)]
    struct Init<'a> {
        #[serde(borrow)]
        capabilities: Option<&'a RawValue>,
    }
    m.params
        .and_then(|p| serde_json::from_str::<Init>(p.get()).ok())
        .map_or_else(CanElicit::default, |i| CanElicit::read(i.capabilities))
}
