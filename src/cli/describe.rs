//! `status --api`: the running manager's view, which holds what files and Docker cannot show
//! (readiness from the manager's own `/ready` probe beside Docker's health, and each
//! project's last events), rendered like `kubectl describe`.

use serde_json::Value;

use super::remote;
use super::CliError;
use crate::args::ApiArgs;
use crate::spec::ProjectId;

/// The manager's view of one project, or of all, as text or as the API's JSON.
pub(super) fn remote_status(
    api: &ApiArgs,
    id: Option<&ProjectId>,
    json: bool,
) -> Result<String, CliError> {
    let body = match id {
        Some(id) => remote::get(api, &format!("/internal/postgrest/{id}"))?,
        None => remote::get(api, "/internal/postgrest")?,
    };
    if json {
        return Ok(serde_json::to_string_pretty(&body).unwrap_or_default());
    }
    Ok(match id {
        Some(_) => describe(&body),
        None => table(body["containers"].as_array().map_or(&[][..], Vec::as_slice)),
    })
}

fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => "-".to_owned(),
        other => other.to_string(),
    }
}

/// `yes`, `no`, or `-` before the first probe.
/// A Swarm service's tasks in one line: `1/1 running (node abc); last task error: ...`.
fn tasks(view: &Value) -> Option<String> {
    let tasks = view.get("tasks").filter(|t| t.is_object())?;
    let mut line = format!(
        "{}/{} running",
        tasks["running"].as_u64().unwrap_or(0),
        tasks["desired"].as_u64().unwrap_or(0)
    );
    let nodes: Vec<&str> = tasks["nodes"]
        .as_array()
        .map(|n| n.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if !nodes.is_empty() {
        line.push_str(&format!(" (node {})", nodes.join(", ")));
    }
    if let Some(error) = tasks["lastError"].as_str() {
        line.push_str(&format!("; last task error: {error}"));
    }
    Some(line)
}

fn ready(view: &Value) -> &'static str {
    match view["ready"].as_bool() {
        Some(true) => "yes",
        Some(false) => "no",
        None => "-",
    }
}

fn table(views: &[Value]) -> String {
    let header = ["PROJECT", "DESIRED", "ACTUAL", "READY", "HEALTH", "REASON"].map(String::from);
    let mut rows = vec![header];
    for view in views {
        rows.push([
            text(&view["projectId"]),
            text(&view["desired"]),
            text(&view["status"]),
            ready(view).to_owned(),
            text(&view["health"]),
            text(&view["reason"]),
        ]);
    }
    let mut widths = [0usize; 6];
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    rows.iter()
        .map(|row| {
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate() {
                if i + 1 == row.len() {
                    line.push_str(cell);
                } else {
                    line.push_str(&format!("{cell:<width$}  ", width = widths[i]));
                }
            }
            line
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn describe(view: &Value) -> String {
    let converged = if view["converged"].as_bool() == Some(true) {
        "converged"
    } else {
        "not converged"
    };
    let mut lines = vec![
        format!("project:     {}", text(&view["projectId"])),
        format!("desired:     {}", text(&view["desired"])),
        format!("actual:      {} ({converged})", text(&view["status"])),
        format!(
            "ready:       {} (the manager's probe of /ready)",
            ready(view)
        ),
        format!(
            "health:      {} (Docker's healthcheck)",
            text(&view["health"])
        ),
    ];
    for (label, key) in [
        ("container:", "dockerId"),
        ("route:", "route"),
        ("reason:", "reason"),
        ("file error:", "fileError"),
        ("last error:", "lastError"),
        ("last reload:", "lastReload"),
    ] {
        if !view[key].is_null() {
            lines.push(format!("{label:<12} {}", text(&view[key])));
        }
    }
    if let Some(tasks) = tasks(view) {
        lines.push(format!("{:<12} {tasks}", "tasks:"));
    }
    lines.push("events:".to_owned());
    match view["events"].as_array() {
        Some(events) if !events.is_empty() => {
            for event in events {
                lines.push(format!(
                    "  {}  {:<12}  {}",
                    text(&event["at"]),
                    text(&event["kind"]),
                    text(&event["reason"])
                ));
            }
        }
        _ => lines.push("  (none since the manager started)".to_owned()),
    }
    lines.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describe_shows_readiness_beside_health_and_the_events() {
        let view = serde_json::json!({
            "projectId": "p1", "desired": "enabled", "status": "running", "converged": true,
            "ready": true, "health": "starting", "dockerId": "abc",
            "events": [{"at": "2026-11-29T09:00:00Z", "kind": "created", "reason": "container created and started"}]
        });
        let text = describe(&view);
        assert!(
            text.contains("ready:       yes (the manager's probe of /ready)"),
            "{text}"
        );
        assert!(
            text.contains("health:      starting (Docker's healthcheck)"),
            "{text}"
        );
        assert!(
            text.ends_with("  2026-11-29T09:00:00Z  created       container created and started"),
            "{text}"
        );
        let table = table(&[view]);
        assert!(
            table.starts_with("PROJECT  DESIRED  ACTUAL   READY  HEALTH"),
            "{table}"
        );
    }

    #[test]
    fn describe_shows_a_services_tasks() {
        let view = serde_json::json!({
            "projectId": "p1", "desired": "enabled", "status": "running", "converged": true,
            "tasks": {"desired": 1, "running": 1, "nodes": ["n2"],
                      "lastError": "task: non-zero exit (1) (failed)"}
        });
        let text = describe(&view);
        assert!(
            text.contains(
                "tasks:       1/1 running (node n2); last task error: task: non-zero exit (1) (failed)"
            ),
            "{text}"
        );
        let container = serde_json::json!({"projectId": "p1", "status": "running"});
        assert!(!describe(&container).contains("tasks:"));
    }
}
