//! Search spaces: named dimensions with candidate values (comptime values, launch shape),
//! and constraints that prune points before anything is compiled.

use std::collections::BTreeMap;

/// One candidate: a value for every dimension, by name.
#[derive(
    Clone,
    Debug,
    Default,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    serde::Serialize,
    serde::Deserialize,
)]
pub struct Point(pub BTreeMap<String, i64>);

impl Point {
    /// The value of dimension `name` (0 when absent).
    pub fn get(&self, name: &str) -> i64 {
        self.0.get(name).copied().unwrap_or(0)
    }

    /// `name=value` pairs joined by commas.
    pub fn describe(&self) -> String {
        self.0
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",")
    }
}

type Constraint = (String, Box<dyn Fn(&Point) -> bool + Send + Sync>);

/// The dimensions and constraints of a search.
#[derive(Default)]
pub struct Space {
    dims: Vec<(String, Vec<i64>)>,
    constraints: Vec<Constraint>,
}

impl Space {
    /// An empty space (one point with no dimension).
    pub fn new() -> Space {
        Space::default()
    }

    /// Adds a dimension with its candidate values.
    pub fn dim(mut self, name: &str, values: &[i64]) -> Space {
        self.dims.push((name.to_string(), values.to_vec()));
        self
    }

    /// Adds a constraint; points for which it is false are pruned, with `why` as the reason.
    pub fn constraint(
        mut self,
        why: &str,
        keep: impl Fn(&Point) -> bool + Send + Sync + 'static,
    ) -> Space {
        self.constraints.push((why.to_string(), Box::new(keep)));
        self
    }

    /// Every point of the cartesian product, in a fixed order, split into the points that
    /// satisfy all constraints and the pruned ones with the first constraint they break.
    pub fn points(&self) -> (Vec<Point>, Vec<(Point, String)>) {
        let mut all = vec![Point::default()];
        for (name, values) in &self.dims {
            all = all
                .into_iter()
                .flat_map(|p| {
                    values.iter().map(move |v| {
                        let mut q = p.clone();
                        q.0.insert(name.clone(), *v);
                        q
                    })
                })
                .collect();
        }
        let mut kept = Vec::new();
        let mut pruned = Vec::new();
        for p in all {
            match self.constraints.iter().find(|(_, keep)| !keep(&p)) {
                Some((why, _)) => pruned.push((p, why.clone())),
                None => kept.push(p),
            }
        }
        (kept, pruned)
    }
}
