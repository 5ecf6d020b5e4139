//! Fuzzes `Tree::decode` and `tree::decode_list`: never panic, and whatever decodes re-encodes to
//! bytes that decode to an equal value. The input also drives a generator of valid trees, each
//! of which must survive encode then decode.
#![no_main]

use hoard_core::format::tree::{decode_list, encode_list, Content, Node, NodeKind, Tree};
use hoard_core::Id;
use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;

const KINDS: [NodeKind; 7] = [
    NodeKind::File,
    NodeKind::Dir,
    NodeKind::Symlink,
    NodeKind::Fifo,
    NodeKind::Socket,
    NodeKind::CharDevice,
    NodeKind::BlockDevice,
];

fn ids(u: &mut Unstructured) -> Result<Vec<Id>> {
    (0..u.int_in_range(0..=3)?).map(|_| Ok(Id(u.arbitrary()?))).collect()
}

fn node(u: &mut Unstructured) -> Result<Node> {
    let mut name: Vec<u8> = u.arbitrary()?;
    name.retain(|&b| b != b'/' && b != 0);
    if name.is_empty() || name == b"." || name == b".." {
        name.insert(0, b'n');
    }
    let kind = *u.choose(&KINDS)?;
    let content = match (kind, u.int_in_range(0..=2)?) {
        (NodeKind::File, 1) => Content::Chunks(ids(u)?),
        (NodeKind::File, 2) => Content::Lists(ids(u)?),
        _ => Content::None,
    };
    let subtree = if kind == NodeKind::Dir { Some(Id(u.arbitrary()?)) } else { None };
    let mut xattrs = Vec::new();
    for _ in 0..u.int_in_range(0..=2)? {
        xattrs.push((u.arbitrary()?, u.arbitrary()?));
    }
    Ok(Node {
        name,
        kind: Some(kind),
        mode: u.arbitrary()?,
        uid: u.arbitrary()?,
        gid: u.arbitrary()?,
        user: u.arbitrary()?,
        group: u.arbitrary()?,
        mtime_ns: u.arbitrary()?,
        ctime_ns: u.arbitrary()?,
        inode: u.arbitrary()?,
        device: u.arbitrary()?,
        links: u.arbitrary()?,
        size: u.arbitrary()?,
        rdev: u.arbitrary()?,
        link_target: u.arbitrary()?,
        sparse: u.arbitrary()?,
        xattrs,
        content,
        subtree,
    })
}

fn tree(u: &mut Unstructured) -> Result<Tree> {
    let mut nodes = Vec::new();
    for _ in 0..u.int_in_range(0..=6)? {
        nodes.push(node(u)?);
    }
    nodes.sort_by(|a, b| a.name.cmp(&b.name));
    nodes.dedup_by(|a, b| a.name == b.name);
    Ok(Tree { nodes })
}

fuzz_target!(|data: &[u8]| {
    if let Ok(t) = Tree::decode(data) {
        let again = Tree::decode(&t.encode()).expect("a re-encoded tree must decode");
        assert_eq!(again, t);
    }
    if let Ok(ids) = decode_list(data) {
        let bytes = encode_list(&ids);
        assert_eq!(bytes, data, "a chunk list has one encoding");
        assert_eq!(decode_list(&bytes).unwrap(), ids);
    }
    if let Ok(t) = tree(&mut Unstructured::new(data)) {
        let decoded = Tree::decode(&t.encode());
        assert_eq!(decoded.as_ref(), Ok(&t), "an encoded valid tree must decode to itself");
    }
});
