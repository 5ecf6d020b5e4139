//! Writing directory trees: sorting nodes into the canonical order and storing the tree blob;
//! and an in-memory tree for sources that deliver entries in any order (tar streams).

use std::collections::BTreeMap;

use hoard_core::format::tree::{Node, NodeKind, Tree};
use hoard_core::format::BlobType;
use hoard_core::Id;

use crate::error::{RepoError, Result};
use crate::packer::Packer;

/// Sorts the nodes by name and stores the tree; returns its id.
pub fn store_tree(packer: &Packer, mut nodes: Vec<Node>) -> Result<Id> {
    nodes.sort_by(|a, b| a.name.cmp(&b.name));
    nodes.dedup_by(|a, b| a.name == b.name);
    let bytes = Tree { nodes }.encode();
    if bytes.len() > hoard_core::format::MAX_BLOB {
        return Err(RepoError::Invalid(format!(
            "a directory with {} bytes of entries exceeds the format's limit for one directory",
            bytes.len()
        )));
    }
    Ok(packer.add(BlobType::Tree, &bytes)?.0)
}

/// A directory under construction in memory.
#[derive(Default)]
pub struct MemDir {
    /// The directory's own metadata, once its entry has been seen.
    pub node: Option<Node>,
    pub children: BTreeMap<Vec<u8>, MemEntry>,
}

pub enum MemEntry {
    Dir(MemDir),
    Leaf(Node),
}

impl MemDir {
    /// The directory at `components`, created (with default metadata) where missing.
    pub fn dir_mut(&mut self, components: &[Vec<u8>]) -> &mut MemDir {
        let mut d = self;
        for c in components {
            let e = d.children.entry(c.clone()).or_insert_with(|| MemEntry::Dir(MemDir::default()));
            if let MemEntry::Leaf(_) = e {
                *e = MemEntry::Dir(MemDir::default());
            }
            d = match e {
                MemEntry::Dir(d) => d,
                MemEntry::Leaf(_) => unreachable!(),
            };
        }
        d
    }

    /// Finds a leaf by path (hard-link targets in tar streams).
    pub fn leaf(&self, components: &[Vec<u8>]) -> Option<&Node> {
        let (last, dirs) = components.split_last()?;
        let mut d = self;
        for c in dirs {
            d = match d.children.get(c)? {
                MemEntry::Dir(d) => d,
                MemEntry::Leaf(_) => return None,
            };
        }
        match d.children.get(last)? {
            MemEntry::Leaf(n) => Some(n),
            MemEntry::Dir(_) => None,
        }
    }

    pub fn leaf_mut(&mut self, components: &[Vec<u8>]) -> Option<&mut Node> {
        let (last, dirs) = components.split_last()?;
        let mut d = self;
        for c in dirs {
            d = match d.children.get_mut(c)? {
                MemEntry::Dir(d) => d,
                MemEntry::Leaf(_) => return None,
            };
        }
        match d.children.get_mut(last)? {
            MemEntry::Leaf(n) => Some(n),
            MemEntry::Dir(_) => None,
        }
    }

    /// Stores every directory bottom-up and returns the root tree's id. Directories whose own
    /// entry never appeared get mode 0755 and no times.
    pub fn store(self, packer: &Packer) -> Result<Id> {
        let mut nodes = Vec::with_capacity(self.children.len());
        for (name, e) in self.children {
            match e {
                MemEntry::Leaf(n) => nodes.push(n),
                MemEntry::Dir(d) => {
                    let mut node = d.node.clone().unwrap_or(Node { mode: 0o755, ..Default::default() });
                    node.name = name;
                    node.kind = Some(NodeKind::Dir);
                    node.content = Default::default();
                    node.subtree = Some(d.store(packer)?);
                    nodes.push(node);
                }
            }
        }
        store_tree(packer, nodes)
    }
}
