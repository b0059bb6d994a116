//! The dependency graph between images: who must be published before whom.

use petgraph::algo::tarjan_scc;
use petgraph::graph::{DiGraph, NodeIndex};
use petgraph::visit::EdgeRef;
use petgraph::Direction;

/// What the graph needs of an image: its name, the names it depends on, and a label for DOT.
/// (The manifest's images implement it; the graph knows nothing else of them.)
pub trait Node {
    fn name(&self) -> &str;
    fn dependencies(&self) -> Vec<String>;
    /// The node's label in `labctl graph` (its name, unless it says more).
    fn label(&self) -> String {
        self.name().to_string()
    }
}

/// Images as nodes (by their index in the manifest), an edge from each dependency to its
/// dependents.
#[derive(Debug)]
pub struct DependencyGraph {
    graph: DiGraph<String, ()>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("dependency cycle: {}", .0.join(" → "))]
pub struct CycleError(pub Vec<String>);

impl DependencyGraph {
    /// Builds the graph. Unknown dependency names are ignored here: validation reports them.
    pub fn build<N: Node>(images: &[N]) -> Result<DependencyGraph, CycleError> {
        let mut graph = DiGraph::new();
        let nodes: Vec<NodeIndex> = images
            .iter()
            .map(|i| graph.add_node(i.name().to_string()))
            .collect();
        for (i, image) in images.iter().enumerate() {
            for dep in image.dependencies() {
                if let Some(j) = images.iter().position(|o| o.name() == dep) {
                    graph.update_edge(nodes[j], nodes[i], ());
                }
            }
        }
        let g = DependencyGraph { graph };
        if let Some(cycle) = g.find_cycle() {
            return Err(CycleError(cycle));
        }
        Ok(g)
    }

    fn find_cycle(&self) -> Option<Vec<String>> {
        let mut sccs = tarjan_scc(&self.graph);
        // Report the cycle that starts earliest in the manifest, so the message is stable.
        sccs.iter_mut().for_each(|c| c.sort());
        sccs.sort();
        for scc in sccs {
            let start = scc[0];
            let self_loop = self.graph.contains_edge(start, start);
            if scc.len() < 2 && !self_loop {
                continue;
            }
            // Shortest way back to `start` within the component, by breadth-first search.
            let mut prev = vec![None; self.graph.node_count()];
            let mut queue = std::collections::VecDeque::from([start]);
            let mut seen = vec![false; self.graph.node_count()];
            let mut end = None;
            'bfs: while let Some(n) = queue.pop_front() {
                let mut next: Vec<NodeIndex> = self
                    .graph
                    .neighbors_directed(n, Direction::Outgoing)
                    .filter(|m| scc.contains(m))
                    .collect();
                next.sort();
                for m in next {
                    if m == start {
                        end = Some(n);
                        break 'bfs;
                    }
                    if !seen[m.index()] {
                        seen[m.index()] = true;
                        prev[m.index()] = Some(n);
                        queue.push_back(m);
                    }
                }
            }
            let mut path = vec![start];
            let mut cur = end?;
            let mut back = Vec::new();
            while cur != start {
                back.push(cur);
                cur = prev[cur.index()]?;
            }
            path.extend(back.into_iter().rev());
            path.push(start);
            return Some(path.iter().map(|n| self.graph[*n].clone()).collect());
        }
        None
    }

    /// Manifest indices in an order where every image comes after its dependencies; among images
    /// that are ready at the same time, manifest order wins, so plans read like the manifest.
    pub fn order(&self) -> Vec<usize> {
        let mut queue = self.ready_queue();
        let mut out = Vec::with_capacity(self.graph.node_count());
        while let Some(i) = queue.pop() {
            out.push(i);
            queue.settle(i);
        }
        out
    }

    /// A ready queue over the graph: what may start now, as what started settles.
    pub fn ready_queue(&self) -> ReadyQueue {
        let n = self.graph.node_count();
        let waiting: Vec<usize> = (0..n)
            .map(|i| {
                self.graph
                    .neighbors_directed(NodeIndex::new(i), Direction::Incoming)
                    .count()
            })
            .collect();
        let dependents = (0..n)
            .map(|i| {
                self.graph
                    .edges(NodeIndex::new(i))
                    .map(|e| e.target().index())
                    .collect()
            })
            .collect();
        ReadyQueue {
            ready: (0..n).filter(|i| waiting[*i] == 0).collect(),
            waiting,
            dependents,
            settled: vec![false; n],
        }
    }

    /// Direct dependencies of the image at `index`, in manifest order.
    pub fn dependencies(&self, index: usize) -> Vec<usize> {
        let mut v: Vec<usize> = self
            .graph
            .neighbors_directed(NodeIndex::new(index), Direction::Incoming)
            .map(|n| n.index())
            .collect();
        v.sort();
        v
    }

    /// The graph in Graphviz DOT, dependencies pointing at their dependents.
    pub fn to_dot<N: Node>(&self, images: &[N]) -> String {
        let mut out = String::from("digraph images {\n  rankdir=LR;\n  node [shape=box];\n");
        for (i, image) in images.iter().enumerate() {
            out.push_str(&format!(
                "  {} [label={}];\n",
                dot_id(image.name()),
                dot_id(&image.label()).replace("\\\\n", "\\n")
            ));
            for dep in self.dependencies(i) {
                out.push_str(&format!(
                    "  {} -> {};\n",
                    dot_id(images[dep].name()),
                    dot_id(image.name())
                ));
            }
        }
        out.push_str("}\n");
        out
    }
}

/// Nodes whose dependencies have all settled, lowest index (manifest or plan order) first.
/// Whoever runs the work pops a node, runs it, and settles it — whatever its outcome: a node
/// that failed still releases its dependents, who then decide to skip themselves.
#[derive(Debug, Clone)]
pub struct ReadyQueue {
    waiting: Vec<usize>,
    ready: std::collections::BTreeSet<usize>,
    dependents: Vec<Vec<usize>>,
    settled: Vec<bool>,
}

impl ReadyQueue {
    /// The next node that may start.
    pub fn pop(&mut self) -> Option<usize> {
        self.ready.pop_first()
    }

    /// `index` is done: its dependents wait for one node less. Settling twice changes nothing.
    pub fn settle(&mut self, index: usize) {
        if std::mem::replace(&mut self.settled[index], true) {
            return;
        }
        for &t in &self.dependents[index] {
            self.waiting[t] -= 1;
            if self.waiting[t] == 0 {
                self.ready.insert(t);
            }
        }
    }

    /// Every node settled.
    pub fn is_done(&self) -> bool {
        self.settled.iter().all(|s| *s)
    }
}

fn dot_id(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::model::*;

    pub(crate) fn img(name: &str, deps: &[&str]) -> Image {
        Image {
            name: name.into(),
            loc: Default::default(),
            source: Source::Packer(PackerSource {
                path: "p".into(),
                variables: Default::default(),
                artifact: "a".into(),
            }),
            destination: format!("d/{name}"),
            expected: None,
            depends_on: deps.iter().map(|s| s.to_string()).collect(),
            protect: false,
            history: 0,
            version: None,
            track: None,
        }
    }

    #[test]
    fn orders_dependencies_first_keeping_manifest_order() {
        let images = vec![img("gw", &["iso"]), img("talos", &[]), img("iso", &[])];
        let g = DependencyGraph::build(&images).unwrap();
        let names: Vec<&str> = g.order().iter().map(|i| images[*i].name.as_str()).collect();
        assert_eq!(names, ["talos", "iso", "gw"]);
    }

    #[test]
    fn the_ready_queue_releases_dependents_as_their_dependencies_settle() {
        let images = vec![
            img("iso", &[]),
            img("gw", &["iso"]),
            img("other", &[]),
            img("vm", &["gw", "other"]),
        ];
        let g = DependencyGraph::build(&images).unwrap();
        let mut q = g.ready_queue();
        assert_eq!((q.pop(), q.pop(), q.pop()), (Some(0), Some(2), None));
        q.settle(2);
        assert_eq!(q.pop(), None, "vm still waits for gw");
        q.settle(0);
        q.settle(0);
        assert_eq!((q.pop(), q.pop()), (Some(1), None));
        q.settle(1);
        assert_eq!(q.pop(), Some(3));
        assert!(!q.is_done());
        q.settle(3);
        assert!(q.is_done());
    }

    #[test]
    fn names_the_cycle() {
        let images = vec![
            img("a", &["c"]),
            img("b", &["a"]),
            img("c", &["b"]),
            img("d", &[]),
        ];
        let err = DependencyGraph::build(&images).unwrap_err();
        assert_eq!(err.0, ["a", "b", "c", "a"]);
        assert_eq!(err.to_string(), "dependency cycle: a → b → c → a");
    }

    #[test]
    fn references_create_edges() {
        let mut gw = img("gw", &[]);
        if let Source::Packer(p) = &mut gw.source {
            p.variables
                .insert("iso_url".into(), "{{ images.iso.url }}".into());
        }
        let images = vec![gw, img("iso", &[])];
        let g = DependencyGraph::build(&images).unwrap();
        assert_eq!(g.order(), [1, 0]);
        let dot = g.to_dot(&images);
        assert!(dot.contains("\"iso\" -> \"gw\";"), "{dot}");
    }
}
