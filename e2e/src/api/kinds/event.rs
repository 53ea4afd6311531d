//! Events: core/v1 and events.k8s.io/v1 share one bucket, kept in core form; these convert
//! between the two.

use serde_json::{Value, json};

/// core/v1 field → events.k8s.io/v1 field.
const FIELDS: [(&str, &str); 14] = [
    ("involvedObject", "regarding"),
    ("message", "note"),
    ("reason", "reason"),
    ("type", "type"),
    ("action", "action"),
    ("related", "related"),
    ("eventTime", "eventTime"),
    ("series", "series"),
    ("reportingComponent", "reportingController"),
    ("reportingInstance", "reportingInstance"),
    ("source", "deprecatedSource"),
    ("count", "deprecatedCount"),
    ("firstTimestamp", "deprecatedFirstTimestamp"),
    ("lastTimestamp", "deprecatedLastTimestamp"),
];

/// core/v1 Event → events.k8s.io/v1 Event.
pub fn event_to_events_v1(core: &Value) -> Value {
    let mut e = json!({"apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": core["metadata"]});
    for (from, to) in FIELDS {
        if !core[from].is_null() {
            e[to] = core[from].clone();
        }
    }
    e
}

/// events.k8s.io/v1 Event → core/v1 Event.
pub fn event_from_events_v1(new: &Value) -> Value {
    let mut e = json!({"apiVersion": "v1", "kind": "Event", "metadata": new["metadata"]});
    for (to, from) in FIELDS {
        if !new[from].is_null() {
            e[to] = new[from].clone();
        }
    }
    // core readers (kubectl describe) show source.component when it is set.
    if e["source"].is_null() && !new["reportingController"].is_null() {
        e["source"] = json!({"component": new["reportingController"]});
    }
    e
}
