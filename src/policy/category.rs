//! Tool categories from MCP's tool annotations (`destructiveHint`, `readOnlyHint`,
//! `openWorldHint`, `idempotentHint`), and the rules a policy gives them.
//!
//! A hint the server does not set counts as the MCP specification's default: an unannotated tool
//! is destructive and open-world, neither read-only nor idempotent. `destructiveHint` and
//! `idempotentHint` mean something only for a tool that is not read-only, as the specification
//! says. A hint that is not a boolean is read the unsafe way (not read-only, destructive,
//! open-world, not idempotent), so a malformed annotation never earns a tool a milder rule.

use super::Rule;
use serde_json::Value;

/// One category, as policies name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Category {
    Destructive,
    ReadOnly,
    OpenWorld,
    Idempotent,
}

impl Category {
    /// Every category, strictest-sounding first: the order merged rules take denials in.
    pub const ALL: [Category; 4] = [
        Category::Destructive,
        Category::OpenWorld,
        Category::Idempotent,
        Category::ReadOnly,
    ];

    /// The canonical name, as a policy file spells it (`read_only`; an McpPolicy says `readOnly`).
    pub fn name(self) -> &'static str {
        match self {
            Category::Destructive => "destructive",
            Category::ReadOnly => "read_only",
            Category::OpenWorld => "open_world",
            Category::Idempotent => "idempotent",
        }
    }

    fn bit(self) -> u8 {
        match self {
            Category::Destructive => 1,
            Category::ReadOnly => 2,
            Category::OpenWorld => 4,
            Category::Idempotent => 8,
        }
    }
}

/// The categories one tool is in: a set of [`Category`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Hints(u8);

impl Hints {
    /// The categories of a tool definition (a `tools/list` entry), by its `annotations`.
    pub fn of_tool(tool: &Value) -> Hints {
        let ann = tool.get("annotations");
        // `Some(b)` for a boolean hint, `None` when unset, `Some(unsafe)` for anything else.
        let hint = |key: &str, unsafe_reading: bool| match ann.and_then(|a| a.get(key)) {
            None | Some(Value::Null) => None,
            Some(Value::Bool(b)) => Some(*b),
            Some(_) => Some(unsafe_reading),
        };
        let read_only = hint("readOnlyHint", false).unwrap_or(false);
        let destructive = !read_only && hint("destructiveHint", true).unwrap_or(true);
        let idempotent = !read_only && hint("idempotentHint", false).unwrap_or(false);
        let open_world = hint("openWorldHint", true).unwrap_or(true);
        let mut h = Hints(0);
        for (c, on) in [
            (Category::Destructive, destructive),
            (Category::ReadOnly, read_only),
            (Category::OpenWorld, open_world),
            (Category::Idempotent, idempotent),
        ] {
            if on {
                h.0 |= c.bit();
            }
        }
        h
    }

    /// The set named by canonical names (`read_only`, …), as [`Hints::names`] writes them;
    /// unknown names are ignored.
    pub fn from_names<'a>(names: impl IntoIterator<Item = &'a str>) -> Hints {
        let mut h = Hints(0);
        for n in names {
            if let Some(c) = Category::ALL.into_iter().find(|c| c.name() == n) {
                h.0 |= c.bit();
            }
        }
        h
    }

    pub fn contains(self, c: Category) -> bool {
        self.0 & c.bit() != 0
    }

    /// The categories, in [`Category::ALL`] order.
    pub fn iter(self) -> impl Iterator<Item = Category> {
        Category::ALL.into_iter().filter(move |c| self.contains(*c))
    }

    /// Canonical names (`destructive`, `read_only`, …) of the categories.
    pub fn names(self) -> Vec<&'static str> {
        self.iter().map(|c| c.name()).collect()
    }
}

/// The `categories` rules of a policy: one per category it names, and for every combination of
/// categories a tool can be in, the rule that applies — all the matching categories' rules
/// together, so the strictest wins (any denial denies; every `require`, `deny_if` and limit
/// applies; an approval is needed if any asks for one).
#[derive(Debug, Clone, Default)]
pub struct Categories {
    /// Index: the [`Hints`] bits.
    merged: Vec<Option<Rule>>,
    named: Vec<Category>,
}

impl Categories {
    pub(super) fn new(rules: Vec<(Category, Rule)>) -> Categories {
        if rules.is_empty() {
            return Categories::default();
        }
        let merged = (0u8..16)
            .map(|bits| {
                let matching: Vec<&Rule> = Category::ALL
                    .iter()
                    .filter(|c| bits & c.bit() != 0)
                    .filter_map(|c| rules.iter().find(|(rc, _)| rc == c).map(|(_, r)| r))
                    .collect();
                Rule::merged(&matching)
            })
            .collect();
        Categories {
            merged,
            named: rules.iter().map(|(c, _)| *c).collect(),
        }
    }

    /// Whether the policy has any `categories` rule: tools no name or glob matches are then
    /// decided by what the server says of them.
    pub fn in_use(&self) -> bool {
        !self.named.is_empty()
    }

    /// The categories the policy names.
    pub fn named(&self) -> &[Category] {
        &self.named
    }

    /// The rule for a tool in these categories, if any category rule matches.
    pub fn rule(&self, hints: Hints) -> Option<&Rule> {
        self.merged.get(usize::from(hints.0))?.as_ref()
    }

    /// Every distinct rule a tool can get (for labels and seeding metrics).
    pub fn rules(&self) -> impl Iterator<Item = &Rule> {
        self.merged.iter().flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn names(tool: Value) -> Vec<&'static str> {
        Hints::of_tool(&tool).names()
    }

    #[test]
    fn unset_hints_take_the_specifications_defaults() {
        assert_eq!(
            names(json!({"name": "t"})),
            ["destructive", "open_world"],
            "an unannotated tool is destructive and open-world"
        );
        assert_eq!(
            names(json!({"name": "t", "annotations": {"readOnlyHint": true,
                "destructiveHint": true, "idempotentHint": true}})),
            ["open_world", "read_only"],
            "destructive and idempotent mean nothing for a read-only tool"
        );
        assert_eq!(
            names(
                json!({"name": "t", "annotations": {"destructiveHint": false,
                "idempotentHint": true, "openWorldHint": false}})
            ),
            ["idempotent"]
        );
        assert_eq!(
            names(
                json!({"name": "t", "annotations": {"readOnlyHint": true, "openWorldHint": false}})
            ),
            ["read_only"]
        );
    }

    #[test]
    fn names_read_back_into_the_same_set() {
        for tool in [
            json!({"name": "t"}),
            json!({"name": "t", "annotations": {"readOnlyHint": true}}),
        ] {
            let h = Hints::of_tool(&tool);
            assert_eq!(Hints::from_names(h.names()), h);
        }
    }

    #[test]
    fn malformed_hints_read_the_unsafe_way() {
        assert_eq!(
            names(json!({"name": "t", "annotations": {"readOnlyHint": "true",
                "destructiveHint": 0, "openWorldHint": "no", "idempotentHint": "yes"}})),
            ["destructive", "open_world"]
        );
        assert_eq!(
            names(json!({"name": "t", "annotations": "read-only"})),
            ["destructive", "open_world"]
        );
    }
}
