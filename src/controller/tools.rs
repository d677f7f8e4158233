//! The policy against the server's real tools, in the McpPolicy status. On the leader, every
//! tools poll interval, for each McpPolicy, the approval loop's [`Keeper`] reads `GET /tools`
//! from the admin API of the policy's injected pods (the same token, the same pods) and writes,
//! with a field manager of its own (`mcp-warden-tools`, so the reconciler's writes and these
//! never undo each other):
//!
//! - `observedTools` (the first 256 by name, each with its hash, categories and whether it
//!   changed), `observedToolCount`, `toolsObservedAt`, and `toolsAllowedByDefault`;
//! - conditions `UnknownTools` (rule keys, globs, `hide` entries and pins that match no offered
//!   tool), `UnknownArguments` (conditions on an argument a tool's input schema lacks) and
//!   `ToolDefinitionChanged` (a definition that changed since a sidecar first saw it, or that
//!   differs from its pin), each with a Warning Event when it becomes True.
//!
//! [`tools_status`] decides; the loop only reads and writes.

use super::approvals::Keeper;
use super::events::{PolicyEvent, Warnings};
use super::render::cond;
use crate::crd::{McpPolicy, McpPolicyStatus, ObservedTool};
use crate::policy::{Pinning, Policy};
use crate::tools::report::{report, Report};
use crate::tools::seen::{self, FirstSeen};
use crate::tools::ToolDef;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Api, Patch, PatchParams};
use kube::{Resource, ResourceExt};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};

/// The field manager of what this module writes.
pub const TOOLS_MANAGER: &str = "mcp-warden-tools";
/// Pods whose `GET /tools` is read at once.
const CONCURRENT_READS: usize = 16;
/// Most tools (and allowed-by-default names) written into a status.
pub const MAX_OBSERVED: usize = 256;
/// The status fields this module owns.
const FIELDS: [&str; 5] = [
    "observedTools",
    "observedToolCount",
    "toolsObservedAt",
    "toolsAllowedByDefault",
    "firstSeen",
];
/// The conditions this module owns.
pub const CONDITIONS: [&str; 3] = [
    cond::UNKNOWN_TOOLS,
    cond::UNKNOWN_ARGUMENTS,
    cond::TOOL_DEFINITION_CHANGED,
];

/// The status fields and conditions this module writes, and the Events to record.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolsStatus {
    pub observed: Vec<ObservedTool>,
    pub count: usize,
    pub observed_at: Time,
    pub allowed_by_default: Vec<String>,
    /// Under `pinning: firstSeen`, the policy's record of first-seen definitions.
    pub first_seen: Option<BTreeMap<String, String>>,
    pub conditions: Vec<Condition>,
    pub events: Vec<PolicyEvent>,
}

impl ToolsStatus {
    /// The status as this module applies it.
    pub fn body(&self) -> Value {
        let mut body = json!({
            "apiVersion": "mcpwarden.dev/v1alpha1",
            "kind": "McpPolicy",
            "status": {
                "observedTools": self.observed,
                "observedToolCount": self.count,
                "toolsObservedAt": self.observed_at,
                "toolsAllowedByDefault": self.allowed_by_default,
                "conditions": self.conditions,
            }
        });
        if let Some(seen) = &self.first_seen {
            body["status"]["firstSeen"] = json!(seen);
        }
        body
    }

    /// Whether `old` already says all this (times of observation aside).
    pub fn same_as(&self, old: &McpPolicyStatus) -> bool {
        let conds = |c: &[Condition]| -> Vec<(String, String, String, String)> {
            c.iter()
                .filter(|c| CONDITIONS.contains(&c.type_.as_str()))
                .map(|c| {
                    (
                        c.type_.clone(),
                        c.status.clone(),
                        c.reason.clone(),
                        c.message.clone(),
                    )
                })
                .collect()
        };
        old.observed_tools.as_deref() == Some(self.observed.as_slice())
            && old.observed_tool_count == Some(self.count as i32)
            && old.tools_allowed_by_default.as_deref() == Some(self.allowed_by_default.as_slice())
            && conds(&old.conditions) == conds(&self.conditions)
            && (self.first_seen.is_none() || old.first_seen == self.first_seen)
    }
}

/// What one sidecar's `GET /tools` said.
#[derive(Debug, Clone, Default)]
pub struct PodTools {
    pub listed_at: Option<u64>,
    pub tools: Vec<(ToolDef, bool)>,
    /// The hash each tool had when this sidecar first saw it (`firstHash`), well-formed ones.
    pub first: BTreeMap<String, String>,
}

impl PodTools {
    /// Reads a `GET /tools` answer; tools it cannot read are left out. The answer comes from a
    /// pod, where whoever runs the MCP server also runs code: only what fits the sidecar's own
    /// bounds is taken (at most [`crate::tools::MAX_TOOLS`] tools, names and argument names of
    /// visible ASCII up to 128 bytes, hashes of the form `sha256:` and 64 hex digits), and a
    /// listing time in the future counts as now, so no pod's report stays "newest" for ever.
    pub fn read(v: &Value) -> PodTools {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let reported = || {
            v["tools"]
                .as_array()
                .into_iter()
                .flatten()
                .take(crate::tools::MAX_TOOLS)
        };
        PodTools {
            listed_at: v["listedAt"].as_u64().map(|t| t.min(now)),
            tools: reported()
                .filter_map(|t| Some((ToolDef::from_reported(t)?, t["changed"] == true)))
                .filter(|(d, _)| fits(d))
                .collect(),
            first: reported()
                .filter_map(|t| Some((t["name"].as_str()?, t["firstHash"].as_str()?)))
                .filter(|(n, h)| seen::is_name(n) && crate::policy::is_pin_hash(h))
                .map(|(n, h)| (n.to_owned(), h.to_owned()))
                .collect(),
        }
    }
}

/// Whether a reported tool is within what a sidecar reports of a real one.
fn fits(d: &ToolDef) -> bool {
    seen::is_name(&d.name)
        && crate::policy::is_pin_hash(&d.hash)
        && d.arguments
            .as_ref()
            .is_none_or(|a| a.len() <= 256 && a.iter().all(|n| seen::is_name(n)))
}

/// The status a policy gets from what its sidecars see; `None` until one has listed.
pub fn tools_status(
    policy: &Policy,
    pods: &[PodTools],
    old: &McpPolicyStatus,
    generation: Option<i64>,
    now: Time,
) -> Option<ToolsStatus> {
    let newest = pods
        .iter()
        .filter(|p| p.listed_at.is_some())
        .max_by_key(|p| p.listed_at)?;
    let mut defs: Vec<ToolDef> = newest.tools.iter().map(|(d, _)| d.clone()).collect();
    defs.sort_by(|a, b| a.name.cmp(&b.name));
    let r = report(policy, &defs);
    let changed = changed_tools(pods, &r);
    let observed = defs
        .iter()
        .take(MAX_OBSERVED)
        .map(|d| ObservedTool {
            name: d.name.clone(),
            hash: d.hash.clone(),
            categories: d.categories.iter().map(|c| (*c).to_owned()).collect(),
            changed: changed.contains(&d.name),
        })
        .collect();
    let (conditions, events) = warnings(&r, defs.len(), &changed, old, generation, &now);
    let first_seen = (policy.pinning == Pinning::FirstSeen).then(|| {
        let recorded = FirstSeen {
            tools: old.first_seen.clone().unwrap_or_default(),
        };
        recorded.merged(pods.iter().map(|p| &p.first)).tools
    });
    Some(ToolsStatus {
        observed,
        count: defs.len(),
        observed_at: now,
        first_seen,
        allowed_by_default: r
            .allowed_by_default
            .into_iter()
            .take(MAX_OBSERVED)
            .collect(),
        conditions,
        events,
    })
}

/// The tools whose definition changed: as any sidecar saw it (pods first saw their tools at
/// different times), or against their pins.
fn changed_tools(pods: &[PodTools], r: &Report) -> BTreeSet<String> {
    let mut changed: BTreeSet<String> = pods
        .iter()
        .flat_map(|p| {
            p.tools
                .iter()
                .filter(|(_, c)| *c)
                .map(|(d, _)| d.name.clone())
        })
        .collect();
    changed.extend(r.changed_pins.iter().map(|p| p.tool.clone()));
    changed
}

/// The three warning conditions (`UnknownTools`, `UnknownArguments`, `ToolDefinitionChanged`)
/// from the report, and the Events of those that changed.
fn warnings(
    r: &Report,
    offered: usize,
    changed: &BTreeSet<String>,
    old: &McpPolicyStatus,
    generation: Option<i64>,
    now: &Time,
) -> (Vec<Condition>, Vec<super::events::PolicyEvent>) {
    let mut conditions: Vec<Condition> = old
        .conditions
        .iter()
        .filter(|c| CONDITIONS.contains(&c.type_.as_str()))
        .cloned()
        .collect();
    let mut events = Vec::new();
    let mut w = Warnings {
        old,
        conditions: &mut conditions,
        events: &mut events,
        generation,
    };
    w.set(
        cond::UNKNOWN_TOOLS,
        unknown_tools(r, offered),
        (
            cond::ALL_NAMES_OFFERED,
            "every rule, glob, hide entry and pin names a tool the server offers",
        ),
        now.clone(),
    );
    w.set(
        cond::UNKNOWN_ARGUMENTS,
        unknown_arguments(r),
        (
            cond::ARGUMENTS_MATCH,
            "every condition names an argument its tool takes",
        ),
        now.clone(),
    );
    w.set(
        cond::TOOL_DEFINITION_CHANGED,
        redefined(changed),
        (
            cond::DEFINITIONS_UNCHANGED,
            "no tool definition changed since the sidecars first saw it",
        ),
        now.clone(),
    );
    (conditions, events)
}

/// `UnknownTools`: names in the policy that match no tool the server offers.
fn unknown_tools(r: &Report, offered: usize) -> Option<(&'static str, String)> {
    if r.unknown_tools.is_empty() {
        return None;
    }
    let names: Vec<String> = r
        .unknown_tools
        .iter()
        .map(|u| format!("{} ({:?})", u.at, u.name))
        .collect();
    Some((
        cond::NAMES_NO_TOOL,
        format!(
            "{} match no tool the server offers ({offered} tools): a typo, or a tool the server \
             no longer has",
            names.join(", "),
        ),
    ))
}

/// `UnknownArguments`: conditions on arguments a tool does not take.
fn unknown_arguments(r: &Report) -> Option<(&'static str, String)> {
    if r.unknown_arguments.is_empty() {
        return None;
    }
    let lines: Vec<String> = r
        .unknown_arguments
        .iter()
        .map(|a| {
            format!(
                "{}: {} (tool {} takes {})",
                a.rule,
                a.path,
                a.tool,
                a.arguments.join(", ")
            )
        })
        .collect();
    Some((
        cond::ARGUMENT_NOT_IN_SCHEMA,
        format!(
            "conditions on arguments the tool does not take never match: {}",
            lines.join("; ")
        ),
    ))
}

/// `ToolDefinitionChanged`: tools the server redefined under the same name.
fn redefined(changed: &BTreeSet<String>) -> Option<(&'static str, String)> {
    (!changed.is_empty()).then(|| {
        (
            cond::DEFINITION_CHANGED,
            format!(
                "the server changed the definition of {} under the same name (pinned tools are \
                 refused; check the change, then update pins)",
                changed.iter().cloned().collect::<Vec<_>>().join(", ")
            ),
        )
    })
}

/// Removes what this module owns from a status the reconciler applies, so its writes never
/// take these fields over (or put back older values).
pub fn strip(status: &mut Value) {
    if let Some(s) = status.as_object_mut() {
        for f in FIELDS {
            s.remove(f);
        }
        if let Some(Value::Array(conds)) = s.get_mut("conditions") {
            conds.retain(|c| !CONDITIONS.contains(&c["type"].as_str().unwrap_or_default()));
        }
    }
}

impl Keeper {
    /// Reads the policy's sidecars' tools and writes the status when it changed.
    pub(super) async fn tools(
        &mut self,
        policy: &McpPolicy,
        compiled: &Policy,
    ) -> Result<(), kube::Error> {
        let ns = policy.namespace().unwrap_or_default();
        let name = policy.name_any();
        let pods = self.pods_of(policy);
        if pods.is_empty() {
            return Ok(());
        }
        let Some(token) = self.token() else {
            return Ok(());
        };
        // Several pods at once: an unreachable one costs its timeout, not everyone's.
        let mut seen = Vec::new();
        for chunk in pods.chunks(CONCURRENT_READS) {
            let mut reads = Vec::with_capacity(chunk.len());
            for (_, ip) in chunk {
                reads.push(Box::pin(self.admin_get(ip, &token, "/tools")));
            }
            for ((pod, _), read) in chunk
                .iter()
                .zip(futures_util::future::join_all(reads).await)
            {
                match read {
                    Ok(v) => seen.push(PodTools::read(&v)),
                    Err(why) => {
                        tracing::warn!(pod = %format!("{ns}/{pod}"), %why, "cannot read the sidecar's tools")
                    }
                }
            }
        }
        let old = policy.status.clone().unwrap_or_default();
        let now = Time(k8s_openapi::jiff::Timestamp::now());
        let api: Api<McpPolicy> = Api::namespaced(self.client.clone(), &ns);
        if compiled.pinning != Pinning::FirstSeen && old.first_seen.is_some() {
            // No record without firstSeen pinning. A plain patch: whoever else wrote the field
            // (a person editing the record) would keep it under a server-side apply.
            let drop = json!({"status": {"firstSeen": null}});
            api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&drop))
                .await?;
        }
        let Some(status) = tools_status(compiled, &seen, &old, policy.metadata.generation, now)
        else {
            return Ok(());
        };
        if status.same_as(&old) {
            return Ok(());
        }
        api.patch_status(
            &name,
            &PatchParams::apply(TOOLS_MANAGER).force(),
            &Patch::Apply(&status.body()),
        )
        .await?;
        let reference = policy.object_ref(&());
        for ev in &status.events {
            if let Err(e) = self
                .recorder
                .publish(&ev.event_for("ObserveTools"), &reference)
                .await
            {
                tracing::warn!(error = %e, "cannot record an Event");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::compile_file;

    fn policy(doc: Value) -> Policy {
        compile_file(&doc).unwrap()
    }

    fn pod(at: u64, tools: Value) -> PodTools {
        PodTools::read(&json!({"listedAt": at, "tools": tools}))
    }

    fn tool(name: &str, hash: char, changed: bool) -> Value {
        json!({"name": name, "hash": format!("sha256:{}", hash.to_string().repeat(64)),
               "categories": ["read_only"], "arguments": ["index"], "changed": changed})
    }

    fn now(s: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(s).unwrap())
    }

    #[test]
    fn a_pods_report_is_taken_only_within_the_sidecars_bounds() {
        let mut huge = tool("ok", 'a', false);
        huge["name"] = json!("x".repeat(129));
        let mut ctl = tool("ok", 'a', false);
        ctl["name"] = json!("bad\nname");
        let mut hash = tool("ok", 'a', false);
        hash["hash"] = json!("sha256:not-hex");
        let mut args = tool("ok", 'a', false);
        args["arguments"] = json!(["fine", "x".repeat(200)]);
        let p = pod(
            u64::MAX,
            json!([tool("ok", 'a', false), huge, ctl, hash, args]),
        );
        assert_eq!(
            p.tools
                .iter()
                .map(|(d, _)| d.name.as_str())
                .collect::<Vec<_>>(),
            ["ok"]
        );
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert!(
            p.listed_at.unwrap() <= now,
            "a listing time in the future counts as now"
        );
        let many: Vec<Value> = (0..crate::tools::MAX_TOOLS + 10)
            .map(|i| tool(&format!("t{i}"), 'b', false))
            .collect();
        assert_eq!(pod(1, json!(many)).tools.len(), crate::tools::MAX_TOOLS);
    }

    fn condition<'a>(s: &'a ToolsStatus, t: &str) -> &'a Condition {
        s.conditions.iter().find(|c| c.type_ == t).unwrap()
    }

    #[test]
    fn the_newest_list_is_recorded_with_what_the_policy_gets_wrong() {
        let p = policy(json!({"default": "allow", "tools": {
            "run_cel": {},
            "run_cell": {"deny_if": [{"conditions": [{"path": "args.cell_index", "op": "gt", "value": 5}]}]}}}));
        let pods = [
            pod(10, json!([tool("old_tool", 'a', false)])),
            pod(
                20,
                json!([tool("run_cell", 'b', false), tool("save", 'c', false)]),
            ),
            PodTools::default(),
        ];
        let s = tools_status(&p, &pods, &McpPolicyStatus::default(), Some(3), now(100)).unwrap();
        let names: Vec<&str> = s.observed.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["run_cell", "save"], "the newest list");
        assert_eq!(s.count, 2);
        assert_eq!(s.allowed_by_default, ["save"]);
        let u = condition(&s, cond::UNKNOWN_TOOLS);
        assert_eq!(
            (u.status.as_str(), u.reason.as_str()),
            ("True", cond::NAMES_NO_TOOL)
        );
        assert!(
            u.message.contains("tools.run_cel (\"run_cel\")"),
            "{}",
            u.message
        );
        let a = condition(&s, cond::UNKNOWN_ARGUMENTS);
        assert_eq!(a.status, "True");
        assert!(
            a.message
                .contains("args.cell_index (tool run_cell takes index)"),
            "{}",
            a.message
        );
        assert_eq!(condition(&s, cond::TOOL_DEFINITION_CHANGED).status, "False");
        let reasons: Vec<&str> = s.events.iter().map(|e| e.reason).collect();
        assert_eq!(reasons, [cond::UNKNOWN_TOOLS, cond::UNKNOWN_ARGUMENTS]);
        assert!(s.events.iter().all(|e| e.warning));
        assert_eq!(s.conditions[0].observed_generation, Some(3));
    }

    #[test]
    fn under_first_seen_pinning_the_policy_records_what_its_oldest_pod_first_saw() {
        let h = |c: char| format!("sha256:{}", c.to_string().repeat(64));
        let reported = |at: u64, first: &[(&str, char)]| {
            let tools: Vec<Value> = first
                .iter()
                .map(|(n, c)| {
                    let mut t = tool(n, 'z', false);
                    t["firstHash"] = json!(h(*c));
                    t
                })
                .collect();
            PodTools::read(&json!({"listedAt": at, "tools": tools}))
        };
        let p = policy(json!({"default": "allow", "pinning": "firstSeen"}));
        // Oldest pod first (as `pods_of` orders them), whatever their listing times.
        let pods = [
            reported(10, &[("run", 'a')]),
            reported(20, &[("run", 'b'), ("read", 'c')]),
        ];
        let s = tools_status(&p, &pods, &McpPolicyStatus::default(), None, now(1)).unwrap();
        let want: BTreeMap<String, String> =
            [("read".into(), h('c')), ("run".into(), h('a'))].into();
        assert_eq!(s.first_seen.as_ref(), Some(&want));
        assert_eq!(s.body()["status"]["firstSeen"], json!(want));
        // A recorded hash stays, whatever the pods say later; a new tool is added.
        let old = McpPolicyStatus {
            first_seen: Some(want.clone()),
            ..Default::default()
        };
        let later = [reported(30, &[("run", 'd'), ("write", 'e')])];
        let s = tools_status(&p, &later, &old, None, now(2)).unwrap();
        assert_eq!(s.first_seen.as_ref().unwrap()["run"], h('a'));
        assert_eq!(s.first_seen.as_ref().unwrap()["write"], h('e'));
        assert!(!s.same_as(&old), "a new tool recorded is a status to write");
        // Without firstSeen pinning nothing is recorded.
        let explicit = policy(json!({"default": "allow"}));
        let s = tools_status(&explicit, &pods, &McpPolicyStatus::default(), None, now(1)).unwrap();
        assert_eq!(s.first_seen, None);
        assert!(s.body()["status"].get("firstSeen").is_none());
    }

    #[test]
    fn a_change_any_sidecar_saw_raises_the_condition_once() {
        let p = policy(json!({"default": "allow", "pinning": "firstSeen"}));
        let pods = [
            pod(20, json!([tool("run", 'b', false)])),
            pod(10, json!([tool("run", 'c', true)])),
        ];
        let first = tools_status(&p, &pods, &McpPolicyStatus::default(), None, now(100)).unwrap();
        let c = condition(&first, cond::TOOL_DEFINITION_CHANGED);
        assert_eq!(c.status, "True");
        assert!(c.message.contains("definition of run"), "{}", c.message);
        assert!(first.observed[0].changed);
        assert_eq!(first.events.len(), 1);
        // Applied, then seen again later: nothing new to write, no second Event, and the
        // transition time stays.
        let old = McpPolicyStatus {
            observed_tools: Some(first.observed.clone()),
            observed_tool_count: Some(1),
            tools_allowed_by_default: Some(first.allowed_by_default.clone()),
            first_seen: first.first_seen.clone(),
            conditions: first.conditions.clone(),
            ..Default::default()
        };
        let again = tools_status(&p, &pods, &old, None, now(200)).unwrap();
        assert!(again.same_as(&old));
        assert!(again.events.is_empty());
        assert_eq!(
            condition(&again, cond::TOOL_DEFINITION_CHANGED).last_transition_time,
            now(100)
        );
        assert_eq!(
            tools_status(&p, &[PodTools::default()], &old, None, now(1)),
            None
        );
    }

    #[test]
    fn the_reconcilers_status_leaves_these_fields_alone() {
        let mut v = json!({"policyHash": "h", "observedTools": [], "toolsObservedAt": "t",
            "observedToolCount": 1, "toolsAllowedByDefault": [],
            "conditions": [{"type": "Ready"}, {"type": "UnknownTools"}, {"type": "ToolDefinitionChanged"}]});
        strip(&mut v);
        assert_eq!(
            v,
            json!({"policyHash": "h", "conditions": [{"type": "Ready"}]})
        );
    }
}
