//! Events recorded on an McpPolicy and the warning conditions that go with them: a warning
//! condition that turns True records a Warning Event once; messages are clipped to what the API
//! keeps.

use super::render;
use crate::crd::McpPolicyStatus;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::runtime::events::{Event, EventType};

/// An Event to record on the McpPolicy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyEvent {
    pub warning: bool,
    pub reason: &'static str,
    pub note: String,
}

impl PolicyEvent {
    pub fn normal(reason: &'static str, note: String) -> PolicyEvent {
        PolicyEvent {
            warning: false,
            reason,
            note,
        }
    }

    pub fn warning(reason: &'static str, note: String) -> PolicyEvent {
        PolicyEvent {
            warning: true,
            reason,
            note,
        }
    }

    /// The Event as kube-runtime publishes it.
    pub(super) fn event(&self) -> Event {
        self.event_for("Reconcile")
    }

    /// The Event, for an `action` of the controller's.
    pub(super) fn event_for(&self, action: &str) -> Event {
        Event {
            type_: if self.warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: self.reason.into(),
            note: Some(self.note.clone()),
            action: action.into(),
            secondary: None,
        }
    }
}

/// Longest condition message (the API's limit is 32768).
const MAX_MESSAGE: usize = 4096;

pub(super) fn clip(mut s: String) -> String {
    if s.len() > MAX_MESSAGE {
        let mut cut = MAX_MESSAGE - 3;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push_str("...");
    }
    s
}

/// Setting warning conditions: True with a Warning Event when the condition becomes True, False
/// with a reason otherwise.
pub(super) struct Warnings<'a> {
    pub old: &'a McpPolicyStatus,
    pub conditions: &'a mut Vec<Condition>,
    pub events: &'a mut Vec<PolicyEvent>,
    pub generation: Option<i64>,
}

impl Warnings<'_> {
    /// `found`: the reason and message when the warning holds.
    pub fn set(
        &mut self,
        type_: &'static str,
        found: Option<(&str, String)>,
        clear: (&str, &str),
        now: Time,
    ) {
        let Some((reason, message)) = found else {
            render::set_condition(
                self.conditions,
                type_,
                false,
                clear.0,
                clear.1.into(),
                self.generation,
                now,
            );
            return;
        };
        let message = clip(message);
        let was_true = self
            .old
            .conditions
            .iter()
            .any(|c| c.type_ == type_ && c.status == "True");
        if !was_true {
            self.events
                .push(PolicyEvent::warning(type_, message.clone()));
        }
        render::set_condition(
            self.conditions,
            type_,
            true,
            reason,
            message,
            self.generation,
            now,
        );
    }
}
