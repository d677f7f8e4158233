//! Where an McpPolicy applies: `podSelector`, `upstream`, `isolation`. Not part of the policy
//! the engine enforces; checked here so the API server's schema, the webhook and `check` agree.

use super::bounds;
use super::reader::{self, bounded_string, choice, list, Errors, Field, FieldPath, Obj};
use serde_json::Value;

pub(super) const F_POD_SELECTOR: Field = Field::new(&["podSelector"]);
pub(super) const F_UPSTREAM: Field = Field::new(&["upstream"]);
pub(super) const F_ISOLATION: Field = Field::new(&["isolation"]);

/// The spec-only fields, allowed beside the policy's own in an McpPolicy `spec`.
pub(super) const SPEC_ONLY_FIELDS: &[Field] = &[F_POD_SELECTOR, F_UPSTREAM, F_ISOLATION];

/// `podSelector`, `upstream` and `isolation`: where an McpPolicy applies. Read with the policy so
/// that `check` and the admission webhook report them with the rest.
pub(super) fn check_placement(top: &Obj, errs: &mut Errors) {
    if let Some((v, p)) = top.require(F_POD_SELECTOR, errs) {
        check_label_selector(v, &p, errs);
    }
    if let Some((v, p)) = top.require(F_UPSTREAM, errs) {
        const PORT: Field = Field::new(&["port"]);
        const UPATH: Field = Field::new(&["path"]);
        if let Some(o) = Obj::new(v, p, &[PORT, UPATH], errs) {
            if let Some((pv, pp)) = o.require(PORT, errs) {
                if !pv.as_u64().is_some_and(|n| (1..=65535).contains(&n)) {
                    errs.push(&pp, format!("port must be 1 to 65535, found {pv}"));
                }
            }
            if let Some((pv, pp)) = o.get(UPATH, errs) {
                if let Some(s) = bounded_string(pv, &pp, bounds::PATH, errs) {
                    if !s.starts_with('/') {
                        errs.push(&pp, "path must start with '/'");
                    }
                }
            }
        }
    }
    if let Some((v, p)) = top.get(F_ISOLATION, errs) {
        choice(v, &p, &["NetworkPolicy", "None"], errs);
    }
}

/// A standard Kubernetes LabelSelector: `matchLabels` and `matchExpressions`.
fn check_label_selector(v: &Value, p: &FieldPath, errs: &mut Errors) {
    const ML: Field = Field::new(&["matchLabels"]);
    const ME: Field = Field::new(&["matchExpressions"]);
    const KEY: Field = Field::new(&["key"]);
    const OPERATOR: Field = Field::new(&["operator"]);
    const VALUES: Field = Field::new(&["values"]);
    let Some(o) = Obj::new(v, p.clone(), &[ML, ME], errs) else {
        return;
    };
    if let Some((mv, mp)) = o.get(ML, errs) {
        match mv {
            Value::Object(m) => {
                for (k, val) in m {
                    reader::string(val, &mp.key(k), errs);
                }
            }
            other => errs.push(
                &mp,
                format!("expected a mapping, found {}", reader::kind(other)),
            ),
        }
    }
    if let Some((ev, ep)) = o.get(ME, errs) {
        for (i, e) in list(ev, &ep, 64, errs)
            .unwrap_or_default()
            .iter()
            .enumerate()
        {
            let Some(eo) = Obj::new(e, ep.index(i), &[KEY, OPERATOR, VALUES], errs) else {
                continue;
            };
            if let Some((kv, kp)) = eo.require(KEY, errs) {
                reader::string(kv, &kp, errs);
            }
            let op = eo.require(OPERATOR, errs).and_then(|(ov, op)| {
                choice(ov, &op, &["In", "NotIn", "Exists", "DoesNotExist"], errs)
            });
            let values = eo.get(VALUES, errs);
            let count = match &values {
                Some((vv, vp)) => list(vv, vp, 256, errs).map_or(0, |l| {
                    for (j, x) in l.iter().enumerate() {
                        reader::string(x, &vp.index(j), errs);
                    }
                    l.len()
                }),
                None => 0,
            };
            match op {
                Some("In" | "NotIn") if count == 0 => errs.push(
                    &ep.index(i).key("values"),
                    format!("{} needs values", op.unwrap_or_default()),
                ),
                Some("Exists" | "DoesNotExist") if count > 0 => errs.push(
                    &ep.index(i).key("values"),
                    "must be empty for this operator",
                ),
                _ => {}
            }
        }
    }
}
