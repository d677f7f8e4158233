//! Deciding a `tools/call` (rule, then hide/deny/default, require, deny_if, limits), with
//! counters that keep their promise.
//!
//! The engine never sees Kubernetes or HTTP types: a [`Call`] is a tool name, its arguments,
//! the caller's grant key and session, and `now` comes from the caller, so tests drive time.

pub mod counters;

use crate::policy::{Counter, DefaultDecision, Hints, Lookup, Pinning, Policy, Rule, Scope};
use counters::Family;
use serde_json::Value;
use std::borrow::Cow;
use std::num::NonZeroU32;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// Most counters one call can take: `all_tools.limits` plus the tool's own.
const MAX_COUNTERS_PER_CALL: usize = 2 * crate::policy::bounds::LIMITS;

/// Options that are not part of a policy.
#[derive(Debug, Clone, Copy)]
pub struct EngineOptions {
    /// Live keys kept per counter before new keys share the overflow counter.
    pub max_keys_per_counter: usize,
}

impl std::default::Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            max_keys_per_counter: 10_000,
        }
    }
}

/// One `tools/call` as the engine sees it.
#[derive(Debug, Clone, Copy)]
pub struct Call<'a> {
    pub tool: &'a str,
    /// `params.arguments`, or `Value::Null` when absent.
    pub args: &'a Value,
    /// The caller's identity: what `scope: grant` counters key on (a verified subject, a
    /// gateway's header value, a token hash, or `anonymous`).
    pub caller: &'a str,
    /// The grant that applies to the caller ([`Policy::grant_for`]), by index.
    pub grant: Option<usize>,
    /// `Mcp-Session-Id`, when the transport has one.
    pub session: Option<&'a str>,
    /// Whether a live approval of exactly this call is held for it (the caller reserved one use).
    pub approved: bool,
    /// What the server's tool list says of the tool; `None` when the sidecar has not seen it.
    pub seen: Option<Seen<'a>>,
    /// Whether its definitions disagree (only for policies that read definitions).
    pub cloak: Option<Cloak>,
}

/// What the sidecar knows of a tool from the server's tool list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen<'a> {
    pub hints: Hints,
    /// `sha256:…` of its definition as last listed.
    pub hash: &'a str,
    /// The hash of the definition it was first seen with (what `pinning: firstSeen` holds to).
    pub first: &'a str,
}

/// A tool whose definitions disagree: the server showed a client another definition than the
/// one the sidecar listed (see `tools::catalog`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Cloak {
    /// The sidecar is listing again to settle it; calls wait (a retryable refusal).
    Checking,
    /// A listing made after that still disagreed: calls are denied for good.
    Cloaked,
}

/// The kind of a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Allow,
    Deny,
    RateLimited,
    /// The rule needs a person's approval of this exact call, and none is held.
    ApprovalRequired,
    /// Only the server's description of the tool can decide (its categories, its pin), and the
    /// sidecar has not seen it listed yet: retry shortly.
    Unlisted,
}

impl Outcome {
    /// The metric label value (`decision` in `decisions_total`).
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Allow => "allow",
            Outcome::Deny => "deny",
            Outcome::RateLimited => "rate_limited",
            Outcome::ApprovalRequired => "approval_required",
            Outcome::Unlisted => "unlisted",
        }
    }
}

/// A full counter that refused a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitHit<'p> {
    pub counter: &'p Counter,
    /// Where the limit is declared, e.g. `tools.run_cell.limits[0]`.
    pub rule: &'p str,
    pub retry_after: Duration,
}

/// What the engine decided, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision<'p> {
    pub outcome: Outcome,
    /// The rule that decided: `tools.clear_session.deny_if[0]`, `hide[0]`, `default`, ….
    pub rule: &'p str,
    /// The text the agent sees on a denial; empty when allowed.
    pub reason: Cow<'p, str>,
    /// Bounded label for metrics: the rule key that matched, or `_other`.
    pub tool_label: &'p str,
    pub limit: Option<LimitHit<'p>>,
    /// The grant whose rules applied (`grants[0]`), if any.
    pub grant: Option<&'p str>,
    /// Whether any counter of this call was the shared overflow counter.
    pub overflow: bool,
    /// The counts an allowed call took: spent when the call runs, given back when it provably
    /// does not (see [`Taken`]).
    pub taken: Taken,
    /// Counts of an allowed call that other sidecars of the policy own: the call may run only
    /// once each owner has counted it ([`Placer`]).
    pub remote: Vec<Ask<'p>>,
}

/// Where the count of a key of a counter held across the policy's pods lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// This sidecar holds it: it owns the key, or it has no peers.
    Here,
    /// Another sidecar owns it (by index in the placer's peer set): ask it.
    Owner(u32),
    /// Its owner cannot be asked: count it here against `max / ways` (the fallback share).
    Share(NonZeroU32),
}

/// Tells the engine where each key of a counter held across pods is counted (the sidecar's
/// peer set); without one, every count is local.
pub trait Placer: Send + Sync + std::fmt::Debug {
    fn place(&self, counter: &Counter, key: &str) -> Place;
}

/// A count an allowed call needs from another sidecar, the owner of its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ask<'p> {
    /// The counter, by index in the policy.
    pub counter: usize,
    /// Where the limit is declared, for a refusal.
    pub declared: &'p str,
    pub key: String,
    pub owner: u32,
}

/// The counts one allowed call took. The engine counts a call when it decides it; the sidecar
/// gives the counts back when the call provably never ran upstream (the server answered with a
/// redirect, the connection was refused, or another call of its batch was denied), so a limit
/// counts calls that ran, not requests. Dropping it keeps the counts.
#[derive(Debug, Clone, Default)]
pub struct Taken(Vec<(Arc<Family>, counters::Spent)>);

impl Taken {
    /// Gives every count back.
    pub fn give_back(self) {
        for (family, spent) in self.0 {
            family.give_back(spent);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Adds the counts `other` took.
    pub fn extend(&mut self, other: Taken) {
        self.0.extend(other.0);
    }
}

impl PartialEq for Taken {
    fn eq(&self, other: &Taken) -> bool {
        self.0.len() == other.0.len()
            && self
                .0
                .iter()
                .zip(&other.0)
                .all(|((a, x), (b, y))| Arc::ptr_eq(a, b) && x == y)
    }
}

impl Eq for Taken {}

/// A compiled policy with its counters.
#[derive(Debug)]
pub struct Engine {
    policy: Policy,
    families: Vec<Arc<Family>>,
    /// Per counter, the fallback share's counts (kept apart: a share is a smaller budget).
    shares: Vec<Arc<Family>>,
    placer: Option<Arc<dyn Placer>>,
}

/// Nanoseconds on a process-wide monotonic clock: what the sidecar passes as `now`.
pub fn monotonic_now() -> u64 {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    ORIGIN.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

impl Engine {
    /// Builds an engine. Counters of `previous` whose name, window and scope are unchanged are
    /// shared, not copied, so a reload loses no counts even for calls in flight.
    pub fn new(policy: Policy, previous: Option<&Engine>, opts: EngineOptions) -> Engine {
        let carried = |c: &Counter, old: Option<&Vec<Arc<Family>>>| {
            old.and_then(|fams| {
                fams.iter()
                    .find(|f| f.name == c.name && f.window == c.window.length && f.scope == c.scope)
            })
            .cloned()
            .unwrap_or_else(|| {
                Arc::new(Family::new(
                    &c.name,
                    c.window.length,
                    c.scope,
                    opts.max_keys_per_counter,
                ))
            })
        };
        let families = policy
            .counters
            .iter()
            .map(|c| carried(c, previous.map(|p| &p.families)))
            .collect();
        let shares = policy
            .counters
            .iter()
            .map(|c| carried(c, previous.map(|p| &p.shares)))
            .collect();
        Engine {
            policy,
            families,
            shares,
            placer: previous.and_then(|p| p.placer.clone()),
        }
    }

    /// Counts of counters held across pods are placed by `placer` (the sidecar's peer set).
    pub fn with_placer(mut self, placer: Arc<dyn Placer>) -> Engine {
        self.placer = Some(placer);
        self
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Live counter keys across all counters (the `counter_keys` gauge).
    pub fn counter_keys(&self) -> usize {
        self.families.iter().map(|f| f.key_count()).sum()
    }

    /// Decides one call at `now` (nanoseconds on a monotonic clock), taking counters when it
    /// allows. The order: rule, hide/deny/default, require, deny_if, limits.
    pub fn decide(&self, call: &Call, now: u64) -> Decision<'_> {
        let lookup = self
            .policy
            .lookup(call.tool, call.grant, call.seen.map(|s| s.hints));
        self.decide_found(lookup, call, now)
    }

    /// [`Engine::decide`] with the rule already looked up (by [`Policy::lookup`] for this
    /// call's tool, grant and hints): the sidecar looks it up once to know which arguments to
    /// read and whether the call needs an approval, then decides.
    pub fn decide_found<'p>(&'p self, lookup: Lookup<'p>, call: &Call, now: u64) -> Decision<'p> {
        let p = &self.policy;
        let rule = lookup.rule();
        let grant = p.grant_path(call.grant);
        let tool_label = rule.map_or("_other", |r| r.key.as_str());
        if let Some((outcome, rule, reason)) = self.refusal(lookup, call) {
            return Decision {
                outcome,
                rule,
                reason,
                tool_label,
                limit: None,
                grant,
                overflow: false,
                taken: Taken::default(),
                remote: Vec::new(),
            };
        }
        let rule = rule.unwrap_or_else(|| p.default_rule_for(call.grant));
        let took = self.take(rule, call, now);
        let Some(hit) = took.hit else {
            return Decision {
                outcome: Outcome::Allow,
                rule: &rule.path,
                reason: Cow::Borrowed(""),
                tool_label,
                limit: None,
                grant,
                overflow: took.overflow,
                taken: took.taken,
                remote: took.remote,
            };
        };
        Decision {
            outcome: Outcome::RateLimited,
            rule: hit.rule,
            reason: limit_reason(&hit).into(),
            tool_label,
            limit: Some(hit),
            grant,
            overflow: took.overflow,
            taken: took.taken,
            remote: took.remote,
        }
    }

    /// Everything but the limits, in order: hidden, cloaked, pinned, unlisted, the default, the
    /// rule (`action: deny`, `require`, `deny_if`), the approval. `None`: on to the limits.
    fn refusal<'p>(
        &'p self,
        lookup: Lookup<'p>,
        call: &Call,
    ) -> Option<(Outcome, &'p str, Cow<'p, str>)> {
        let p = &self.policy;
        if let Some(hide) = p.hidden_by(call.tool) {
            return Some((
                Outcome::Deny,
                hide,
                format!("Unknown tool: {}", call.tool).into(),
            ));
        }
        if let Some(refused) = check_cloak(call) {
            return Some(refused);
        }
        if let Some(refused) = self.check_pin(call) {
            return Some(refused);
        }
        match lookup {
            Lookup::Unlisted => Some((Outcome::Unlisted, "categories", unlisted_reason(call.tool))),
            Lookup::Default if p.default_for(call.grant) == DefaultDecision::Deny => Some((
                Outcome::Deny,
                "default",
                format!("Tool {:?} is not allowed by this policy", call.tool).into(),
            )),
            Lookup::Default => None,
            Lookup::Rule(r) => self.check_rule(r, call.args).or_else(|| {
                (r.approval.is_some() && !call.approved).then(|| {
                    (
                        Outcome::ApprovalRequired,
                        r.path.as_str(),
                        format!(
                            "Tool {:?} needs a person's approval of this exact call (these \
                             arguments, this caller). The request is recorded; once it is \
                             approved, make the identical call again.",
                            call.tool
                        )
                        .into(),
                    )
                })
            }),
        }
    }

    /// A pinned tool (by `pins`, or every tool under `pinning: firstSeen`) whose definition is
    /// not the pinned one is denied; one the sidecar has not seen listed cannot be checked yet.
    fn check_pin<'p>(&'p self, call: &Call) -> Option<(Outcome, &'p str, Cow<'p, str>)> {
        let p = &self.policy;
        let (rule, pinned) = match (p.pins.get(call.tool), call.seen) {
            (Some(pin), seen) => (pin.rule.as_str(), seen.map(|_| pin.hash.as_str())),
            (None, seen) if p.pinning == Pinning::FirstSeen => ("pinning", seen.map(|s| s.first)),
            (None, _) => return None,
        };
        match (pinned, call.seen) {
            (Some(pinned), Some(seen)) if seen.hash == pinned => None,
            (Some(_), Some(_)) => Some((
                Outcome::Deny,
                rule,
                format!(
                    "The definition of tool {:?} has changed since it was pinned, so mcp-warden \
                     refuses it until the policy's pin is updated (the change could be a rug pull)",
                    call.tool
                )
                .into(),
            )),
            _ => Some((Outcome::Unlisted, rule, unlisted_reason(call.tool))),
        }
    }

    /// `action: deny`, `require`, `deny_if`, in that order.
    fn check_rule<'p>(
        &'p self,
        r: &'p Rule,
        args: &Value,
    ) -> Option<(Outcome, &'p str, Cow<'p, str>)> {
        if let Some(reason) = &r.deny {
            return Some((Outcome::Deny, &r.path, reason.as_str().into()));
        }
        for req in &r.require {
            if !req.condition.satisfied(args) {
                return Some((Outcome::Deny, &req.rule, req.reason.as_str().into()));
            }
        }
        for d in &r.deny_if {
            if d.conditions.iter().all(|c| c.holds_for_deny(args)) {
                return Some((Outcome::Deny, &d.rule, d.on_deny.as_str().into()));
            }
        }
        None
    }

    /// Takes the rule's counters: those held here (scope `pod`, keys this sidecar owns, or
    /// shares of an owner it cannot ask) all or none; those another sidecar owns are returned as
    /// asks, for the sidecar to put to their owners before the call may run.
    fn take<'p>(&'p self, rule: &'p Rule, call: &Call, now: u64) -> Took<'p> {
        let mut here: Vec<Entry> = Vec::with_capacity(rule.counter_order.len());
        let mut remote = Vec::new();
        for &ci in &rule.counter_order {
            let counter = &self.policy.counters[ci];
            let key = key_for(counter.scope, call);
            let place = match &self.placer {
                Some(p) if counter.scope.across_pods() => p.place(counter, key),
                _ => Place::Here,
            };
            match place {
                Place::Here => here.push(self.entry(ci, key, None)),
                Place::Share(ways) => here.push(self.entry(ci, key, Some(ways))),
                Place::Owner(owner) => remote.push(Ask {
                    counter: ci,
                    declared: declared_in(rule, ci),
                    key: key.to_owned(),
                    owner,
                }),
            }
        }
        let (taken, overflow) = self.take_all(&here, now);
        match taken {
            Ok(taken) => Took {
                hit: None,
                overflow,
                taken,
                remote,
            },
            Err((ci, retry_after)) => Took {
                hit: Some(LimitHit {
                    counter: &self.policy.counters[ci],
                    rule: declared_in(rule, ci),
                    retry_after,
                }),
                overflow,
                taken: Taken::default(),
                remote: Vec::new(),
            },
        }
    }

    /// Counter `ci` under `key`: its own table, or with `ways` its fallback share (max / ways).
    fn entry<'k>(&'k self, ci: usize, key: &'k str, ways: Option<NonZeroU32>) -> Entry<'k> {
        let max = self.policy.counters[ci].max.get();
        match ways {
            None => Entry {
                ci,
                family: &self.families[ci],
                max,
                key,
            },
            Some(w) => Entry {
                ci,
                family: &self.shares[ci],
                max: max / w.get(),
                key,
            },
        }
    }

    /// Takes one count of every entry, or none: all are locked (in counter order, so two calls
    /// never wait on each other in a cycle), checked, and only then counted. A full one refuses
    /// with the longest wait.
    /// Also says whether any was the shared overflow counter.
    fn take_all(&self, entries: &[Entry], now: u64) -> (Result<Taken, (usize, Duration)>, bool) {
        if entries.is_empty() {
            return (Ok(Taken::default()), false);
        }
        debug_assert!(entries.len() <= MAX_COUNTERS_PER_CALL);
        debug_assert!(entries.windows(2).all(|w| w[0].ci < w[1].ci));
        let mut guards: [Option<std::sync::MutexGuard<'_, counters::FamilyState>>;
            MAX_COUNTERS_PER_CALL] = std::default::Default::default();
        for (g, e) in guards.iter_mut().zip(entries) {
            *g = Some(e.family.lock());
        }
        let mut hit: Option<(usize, Duration)> = None;
        let mut added: [Option<counters::Spent>; MAX_COUNTERS_PER_CALL] =
            [None; MAX_COUNTERS_PER_CALL];
        let mut overflow = false;
        for (i, e) in entries.iter().enumerate() {
            let st = guards[i].as_mut().expect("locked above");
            let mut slot = e.family.slot(st, e.key, e.family.bucket(now));
            overflow |= slot.overflow;
            if slot.full(e.max) {
                let wait = slot.retry_after(e.max, e.family.width(), now);
                if hit.is_none_or(|(_, w)| wait > w) {
                    hit = Some((e.ci, wait));
                }
            } else if hit.is_none() {
                added[i] = Some(slot.add());
            }
        }
        let Some(hit) = hit else {
            let taken = entries
                .iter()
                .zip(added)
                .filter_map(|(e, s)| Some((e.family.clone(), s?)))
                .collect();
            return (Ok(Taken(taken)), overflow);
        };
        for (i, e) in entries.iter().enumerate() {
            if added[i].is_some() {
                let st = guards[i].as_mut().expect("locked above");
                e.family.slot(st, e.key, e.family.bucket(now)).remove();
            }
        }
        (Err(hit), overflow)
    }

    /// The counts another sidecar asks this one for, as the owner of their keys: all or none.
    /// `Err(None)`: a counter this policy does not hold across pods (the two sidecars run
    /// different policies); `Err(Some)`: the counter and wait of a full one.
    pub fn take_owned(
        &self,
        asks: &[(&str, &str)],
        now: u64,
    ) -> Result<Vec<counters::Spent>, Option<(&Counter, Duration)>> {
        let mut entries = Vec::with_capacity(asks.len());
        for &(name, key) in asks {
            let ci = self.owned_counter(name).ok_or(None)?;
            entries.push(self.entry(ci, key, None));
        }
        entries.sort_by_key(|e| e.ci);
        if entries.len() > MAX_COUNTERS_PER_CALL || entries.windows(2).any(|w| w[0].ci == w[1].ci) {
            return Err(None);
        }
        let taken = self
            .take_all(&entries, now)
            .0
            .map_err(|(ci, wait)| Some((&self.policy.counters[ci], wait)))?;
        // In the order asked.
        Ok(asks
            .iter()
            .filter_map(|&(name, _)| {
                let ci = self.owned_counter(name)?;
                let family = &self.families[ci];
                taken
                    .0
                    .iter()
                    .find(|(f, _)| Arc::ptr_eq(f, family))
                    .map(|(_, s)| *s)
            })
            .collect())
    }

    /// Up to `n` more counts of `key` of counter `counter` for another sidecar (a lease), as
    /// many as fit under max: how many, and where they were counted.
    pub fn take_extra(
        &self,
        counter: &str,
        key: &str,
        n: u32,
        now: u64,
    ) -> Option<(u32, counters::Spent)> {
        let ci = self.owned_counter(counter)?;
        let family = &self.families[ci];
        let max = self.policy.counters[ci].max.get();
        let mut st = family.lock();
        let mut slot = family.slot(&mut st, key, family.bucket(now));
        let mut got = 0;
        let mut spent = None;
        while got < n && !slot.full(max) {
            spent = Some(slot.add());
            got += 1;
        }
        Some((got, spent?))
    }

    /// Gives back `n` counts this sidecar took as owner for another, counted at `spent`
    /// ([`Engine::take_owned`], [`Engine::take_extra`]).
    pub fn give_back_owned(&self, counter: &str, spent: counters::Spent, n: u32) {
        if let Some(ci) = self.owned_counter(counter) {
            for _ in 0..n {
                self.families[ci].give_back(spent);
            }
        }
    }

    fn owned_counter(&self, name: &str) -> Option<usize> {
        self.policy
            .counters
            .iter()
            .position(|c| c.name == name && c.scope.across_pods())
    }

    /// Takes the asks of an owner that cannot be asked from their fallback shares here
    /// (max / `ways` each), all or none.
    pub fn take_shares(
        &self,
        asks: &[&Ask<'_>],
        ways: NonZeroU32,
        now: u64,
    ) -> Result<Taken, (usize, Duration)> {
        let entries: Vec<Entry> = asks
            .iter()
            .map(|a| self.entry(a.counter, &a.key, Some(ways)))
            .collect();
        self.take_all(&entries, now).0
    }

    /// `d`, an allowed call, refused instead by counter `ci` (declared at `declared`): an owner
    /// or a fallback share was full.
    pub fn limited<'p>(
        &'p self,
        d: Decision<'p>,
        ci: usize,
        declared: &'p str,
        retry_after: Duration,
    ) -> Decision<'p> {
        let hit = LimitHit {
            counter: &self.policy.counters[ci],
            rule: declared,
            retry_after,
        };
        Decision {
            outcome: Outcome::RateLimited,
            rule: hit.rule,
            reason: limit_reason(&hit).into(),
            limit: Some(hit),
            taken: Taken::default(),
            remote: Vec::new(),
            ..d
        }
    }
}

/// One counter a call takes here: its table, max and key.
struct Entry<'k> {
    ci: usize,
    family: &'k Arc<Family>,
    max: u32,
    key: &'k str,
}

/// What [`Engine::take`] took.
struct Took<'p> {
    hit: Option<LimitHit<'p>>,
    overflow: bool,
    taken: Taken,
    remote: Vec<Ask<'p>>,
}

/// Where a counter is declared in `rule` (e.g. `tools.run_cell.limits[0]`).
fn declared_in(rule: &Rule, ci: usize) -> &str {
    rule.limits
        .iter()
        .find(|l| l.counter == ci)
        .map_or("", |l| l.rule.as_str())
}

fn limit_reason(hit: &LimitHit) -> String {
    format!(
        "Rate limit exceeded: {} allows {} calls per {} ({}); retry in {} s",
        hit.counter.name,
        hit.counter.max,
        hit.counter.window.text,
        hit.counter.scope.as_str(),
        hit.retry_after.as_secs_f64().ceil() as u64
    )
}

/// A tool whose definitions disagree is never decided on either of them (only policies that
/// read definitions, by categories or pins, are told of it).
fn check_cloak(call: &Call) -> Option<(Outcome, &'static str, Cow<'static, str>)> {
    match call.cloak? {
        Cloak::Checking => Some((Outcome::Unlisted, "definitions", unlisted_reason(call.tool))),
        Cloak::Cloaked => Some((
            Outcome::Deny,
            "definitions",
            format!(
                "The server describes tool {:?} one way to mcp-warden and another way to its \
                 clients, so mcp-warden refuses it",
                call.tool
            )
            .into(),
        )),
    }
}

fn unlisted_reason(tool: &str) -> Cow<'static, str> {
    format!(
        "mcp-warden has not yet seen tool {tool:?} in the server's tool list, which decides how \
         the policy treats it; it is reading the list now, retry in a few seconds"
    )
    .into()
}

fn key_for<'a>(scope: Scope, call: &Call<'a>) -> &'a str {
    match scope {
        Scope::Policy | Scope::Pod => "",
        Scope::Grant => call.caller,
        Scope::Session => call.session.unwrap_or(call.caller),
    }
}

#[cfg(test)]
mod tests;
