//! Dependency order for starting and stopping services: levels of a topological sort.

use std::collections::{BTreeMap, BTreeSet};

/// Groups `services` into levels: every service comes after the services it depends on.
/// Start level by level; stop in reverse. Dependencies outside `services` are ignored.
/// A cycle (compose refuses those, but a label may be stale) puts the rest in one last level.
pub fn start_levels(
    services: &BTreeSet<String>,
    deps: &BTreeMap<String, BTreeSet<String>>,
) -> Vec<Vec<String>> {
    let mut remaining: BTreeSet<String> = services.clone();
    let mut done: BTreeSet<String> = BTreeSet::new();
    let mut levels = Vec::new();
    while !remaining.is_empty() {
        let level: Vec<String> = remaining
            .iter()
            .filter(|s| {
                deps.get(*s)
                    .into_iter()
                    .flatten()
                    .all(|d| done.contains(d) || !services.contains(d) || d == *s)
            })
            .cloned()
            .collect();
        if level.is_empty() {
            tracing::warn!("dependency cycle among {remaining:?}; starting them together");
            levels.push(remaining.iter().cloned().collect());
            break;
        }
        for s in &level {
            remaining.remove(s);
            done.insert(s.clone());
        }
        levels.push(level);
    }
    levels
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(items: &[&str]) -> BTreeSet<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn dependencies_come_first() {
        let deps = BTreeMap::from([
            ("app".to_string(), set(&["db", "cache"])),
            ("worker".to_string(), set(&["app"])),
            ("cache".to_string(), set(&["db"])),
        ]);
        let levels = start_levels(&set(&["app", "cache", "db", "worker"]), &deps);
        assert_eq!(levels, vec![vec!["db"], vec!["cache"], vec!["app"], vec!["worker"]]);
    }

    #[test]
    fn missing_dependencies_and_cycles_do_not_hang() {
        let deps = BTreeMap::from([
            ("a".to_string(), set(&["b", "gone"])),
            ("b".to_string(), set(&["a"])),
            ("c".to_string(), set(&[])),
        ]);
        let levels = start_levels(&set(&["a", "b", "c"]), &deps);
        assert_eq!(levels, vec![vec!["c".to_string()], vec!["a".to_string(), "b".to_string()]]);
    }
}
