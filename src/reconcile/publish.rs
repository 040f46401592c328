//! Publishing in proportion to what changed: the loop marks the projects an event touched
//! ([`Touched`]), and [`Statuses`] patches those alone into the map the next snapshot carries.
//! Rebuilding every project's status after every event was 40 % of the manager's CPU in a bulk
//! start of 1,000 (BENCHMARKS.md, "Scale"): O(projects) per event, O(n²) over the bulk.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use super::snapshot::{ProjectStatus, Readiness};
use super::table::Table;
use crate::runtime::ContainerInfo;
use crate::spec::ProjectId;

/// Which projects may have changed since some moment: some by id, or all of them.
#[derive(Debug, Default)]
pub(super) struct Touched {
    all: bool,
    ids: BTreeSet<ProjectId>,
}

impl Touched {
    pub fn project(&mut self, id: &ProjectId) {
        if !self.all && !self.ids.contains(id) {
            self.ids.insert(id.clone());
        }
    }

    pub fn all(&mut self) {
        self.all = true;
        self.ids.clear();
    }

    pub fn everything() -> Touched {
        Touched {
            all: true,
            ids: BTreeSet::new(),
        }
    }

    pub fn is_empty(&self) -> bool {
        !self.all && self.ids.is_empty()
    }

    /// The projects named, when not all.
    pub fn ids(&self) -> Option<&BTreeSet<ProjectId>> {
        (!self.all).then_some(&self.ids)
    }

    /// Adds what `other` names.
    pub fn extend(&mut self, other: &Touched) {
        match other.ids() {
            None => self.all(),
            Some(ids) => ids.iter().for_each(|id| self.project(id)),
        }
    }
}

type Map = BTreeMap<ProjectId, ProjectStatus>;

/// The published statuses, in two maps taken in turn: `front` is the one the last snapshot
/// holds, `back` the one before it. Readers let go of a snapshot within a request, so by the
/// next publication `back` is the loop's alone again and is patched in place, with what
/// touched `front` since it was `back` and what touched the loop since; only when a reader
/// still holds it is `front` copied (O(projects), as every publication was before).
#[derive(Debug, Default)]
pub(super) struct Statuses {
    front: Arc<Map>,
    back: Arc<Map>,
    /// Where `back` is behind `front`.
    behind: Touched,
}

impl Statuses {
    /// The statuses for the next snapshot: `front` with the projects `touched` names built
    /// again, or `front` itself when it names none.
    pub fn publish(
        &mut self,
        touched: Touched,
        table: &Table,
        listing: &[ContainerInfo],
        readiness: &HashMap<String, Readiness>,
    ) -> Arc<Map> {
        if touched.is_empty() {
            return self.front.clone();
        }
        let mut back = std::mem::take(&mut self.back);
        let mut behind = std::mem::take(&mut self.behind);
        behind.extend(&touched);
        let next = match (Arc::get_mut(&mut back), behind.ids()) {
            (Some(map), Some(ids)) => {
                table.patch(map, ids, listing, readiness);
                back
            }
            _ => match touched.ids() {
                Some(ids) => {
                    let mut map = Map::clone(&self.front);
                    table.patch(&mut map, ids, listing, readiness);
                    Arc::new(map)
                }
                None => Arc::new(table.snapshot(listing, readiness)),
            },
        };
        self.back = std::mem::replace(&mut self.front, next.clone());
        self.behind = touched;
        next
    }
}

/// Debug builds (every test) check each publication against the statuses built from scratch:
/// a change that marks no project touched shows here, at the publication that missed it.
#[cfg(debug_assertions)]
pub(super) fn check(
    published: &Map,
    table: &Table,
    listing: &[ContainerInfo],
    readiness: &HashMap<String, Readiness>,
) {
    let built = table.snapshot(listing, readiness);
    if *published == built {
        return;
    }
    let ids: BTreeSet<&ProjectId> = published.keys().chain(built.keys()).collect();
    for id in ids {
        let (was, is) = (published.get(id), built.get(id));
        assert!(
            was == is,
            "project {id} was published without its change: published {was:#?}, built {is:#?}"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::super::apply::ActionError;
    use super::*;

    fn pid(id: &str) -> ProjectId {
        ProjectId::parse(id).unwrap()
    }

    fn fail(table: &mut Table, id: &str, why: &str) {
        table.record_error(&pid(id), &ActionError::ReloadRefused(why.to_owned()));
    }

    fn error(map: &Map, id: &str) -> Option<String> {
        map.get(&pid(id))?.last_error.clone()
    }

    fn touched(ids: &[&str]) -> Touched {
        let mut touched = Touched::default();
        ids.iter().for_each(|id| touched.project(&pid(id)));
        touched
    }

    /// A publication builds again what it is told was touched, and nothing else: a change
    /// to an untouched project stays unpublished (which is why every change must mark its
    /// project, and why debug builds check each publication against a full build).
    #[test]
    fn only_the_touched_projects_are_built_again() {
        let (mut table, mut statuses) = (Table::default(), Statuses::default());
        let publish = |statuses: &mut Statuses, table: &Table, touched| {
            statuses.publish(touched, table, &[], &HashMap::new())
        };
        fail(&mut table, "p1", "one");
        fail(&mut table, "p2", "one");
        let first = publish(&mut statuses, &table, Touched::everything());
        assert_eq!(
            error(&first, "p2").as_deref(),
            Some("PostgREST refused the new config and keeps the old one in force: one")
        );

        fail(&mut table, "p1", "two");
        fail(&mut table, "p2", "two");
        drop(first);
        let second = publish(&mut statuses, &table, touched(&["p1"]));
        assert!(error(&second, "p1").unwrap().ends_with("two"));
        assert!(
            error(&second, "p2").unwrap().ends_with("one"),
            "an untouched project was built again"
        );

        // The map of two publications ago is patched in place with what it missed: p1's
        // change as well as p3's.
        fail(&mut table, "p3", "three");
        drop(second);
        let third = publish(&mut statuses, &table, touched(&["p3"]));
        assert!(error(&third, "p1").unwrap().ends_with("two"));
        assert!(error(&third, "p3").unwrap().ends_with("three"));
        assert!(error(&third, "p2").unwrap().ends_with("one"));

        let nothing = publish(&mut statuses, &table, Touched::default());
        assert!(
            Arc::ptr_eq(&nothing, &third),
            "nothing touched, the same map"
        );
    }

    /// A reader that holds on to an old snapshot costs a copy, never a wrong status: the map
    /// it holds is left alone, and the next one is the last one patched.
    #[test]
    fn a_snapshot_held_by_a_reader_is_not_patched() {
        let (mut table, mut statuses) = (Table::default(), Statuses::default());
        fail(&mut table, "p1", "one");
        let first = statuses.publish(Touched::everything(), &table, &[], &HashMap::new());
        fail(&mut table, "p1", "two");
        let second = statuses.publish(touched(&["p1"]), &table, &[], &HashMap::new());
        fail(&mut table, "p1", "three");
        let third = statuses.publish(touched(&["p1"]), &table, &[], &HashMap::new());
        assert!(
            error(&first, "p1").unwrap().ends_with("one"),
            "a held map was patched"
        );
        assert!(error(&second, "p1").unwrap().ends_with("two"));
        assert!(error(&third, "p1").unwrap().ends_with("three"));
        assert!(!Arc::ptr_eq(&first, &third));
    }
}
