//! `hoard check`: is every snapshot restorable? The structural check authenticates every index
//! segment, snapshot and tree straight from storage and confirms every referenced blob is
//! indexed and every indexed pack exists at its recorded size. `--read-data` also downloads
//! packs and opens every blob, naming damaged packs and the snapshots they affect.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use hoard_core::format::pack::{self, PackEntry};
use hoard_core::format::tree::NodeKind;
use hoard_core::format::ObjectKind;
use hoard_core::Id;
use hoard_storage::read_tail;

use crate::error::Result;
use crate::repo::Repository;

/// Which packs `--read-data` reads.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Subset {
    All,
    /// A random share, in percent.
    Percent(f64),
    /// Part n of t (1-based): packs whose first id byte modulo t is n-1, so t runs cover all.
    Part(u32, u32),
}

impl Subset {
    pub fn parse(s: &str) -> std::result::Result<Subset, String> {
        if let Some(p) = s.strip_suffix('%') {
            let v: f64 = p.trim().parse().map_err(|_| format!("{s:?}: expected N% or n/t"))?;
            if !(0.0..=100.0).contains(&v) || v == 0.0 {
                return Err(format!("{s:?}: the percentage must be above 0 and at most 100"));
            }
            return Ok(Subset::Percent(v));
        }
        if let Some((n, t)) = s.split_once('/') {
            let n: u32 = n.trim().parse().map_err(|_| format!("{s:?}: expected n/t"))?;
            let t: u32 = t.trim().parse().map_err(|_| format!("{s:?}: expected n/t"))?;
            if t == 0 || n == 0 || n > t || t > 256 {
                return Err(format!("{s:?}: need 1 <= n <= t <= 256"));
            }
            return Ok(Subset::Part(n, t));
        }
        Err(format!("{s:?}: expected N% or n/t"))
    }

    fn includes(&self, pack: &Id) -> bool {
        match *self {
            Subset::All => true,
            Subset::Percent(p) => (hoard_core::id::random_u64() % 1_000_000) as f64 / 10_000.0 < p,
            Subset::Part(n, t) => u32::from(pack.0[0]) % t == n - 1,
        }
    }
}

/// What `check` found. Errors mean data is missing or damaged; warnings mean space is wasted or
/// the index is incomplete, nothing is lost.
#[derive(Debug, Default)]
pub struct CheckReport {
    pub errors: Vec<String>,
    pub warnings: Vec<String>,
    pub snapshots: usize,
    pub trees: usize,
    pub packs: usize,
    pub packs_read: usize,
    pub bytes_read: u64,
    /// Damaged or missing packs, with what is wrong.
    pub damaged_packs: BTreeMap<String, String>,
    /// Snapshots that reference missing or damaged data.
    pub affected_snapshots: Vec<String>,
    /// Packs in storage that no index segment lists (left by an interrupted backup).
    pub unindexed_packs: usize,
    pub unindexed_bytes: u64,
    /// Packs that hold nothing any snapshot uses (not yet condemned).
    pub unused_packs: u64,
    /// Packs condemned by a prune and not yet swept.
    pub condemned_packs: u64,
    /// Blob bytes no snapshot references.
    pub unreferenced_bytes: u64,
    /// About what `hoard prune` (default threshold) would free.
    pub reclaimable_bytes: u64,
}

impl CheckReport {
    pub fn ok(&self) -> bool {
        self.errors.is_empty()
    }
}

/// Runs the check.
pub fn check(repo: &Repository, read_data: Option<Subset>) -> Result<CheckReport> {
    let mut report = CheckReport::default();
    let storage = repo.storage();

    // 1. Index segments, authenticated from storage.
    let mut indexed: HashMap<Id, (u64, Vec<PackEntry>)> = HashMap::new();
    let mut superseded = HashSet::new();
    let mut segments = Vec::new();
    for o in storage.list(ObjectKind::Index)? {
        match repo.read_segment(&o.name) {
            Ok(seg) => segments.push((o.name, seg)),
            Err(e) => report.errors.push(format!("index segment {}: {e}", o.name)),
        }
    }
    for (_, seg) in &segments {
        superseded.extend(seg.superseded.iter().map(|i| i.to_hex()));
    }
    for (name, seg) in segments {
        if superseded.contains(&name) {
            continue;
        }
        for p in seg.packs {
            indexed.insert(p.id, (p.len, p.entries));
        }
    }
    let mut blob_packs: HashMap<Id, Vec<Id>> = HashMap::new();
    for (pack, (_, entries)) in &indexed {
        for e in entries {
            blob_packs.entry(e.id).or_default().push(*pack);
        }
    }

    // 2. Packs: every indexed pack exists at its size; packs nobody indexes are noted.
    let stored: HashMap<Id, u64> = storage
        .list(ObjectKind::Pack)?
        .into_iter()
        .filter_map(|o| Id::from_hex(&o.name).ok().map(|id| (id, o.size)))
        .collect();
    report.packs = stored.len();
    let mut bad_blobs: HashSet<Id> = HashSet::new();
    for (id, (len, entries)) in &indexed {
        match stored.get(id) {
            None => {
                report.damaged_packs.insert(id.to_hex(), "missing".into());
                report.errors.push(format!("pack {id} is listed in the index but missing from storage"));
                bad_blobs.extend(entries.iter().map(|e| e.id));
            }
            Some(size) if size != len => {
                report.damaged_packs.insert(id.to_hex(), format!("{size} bytes, expected {len}"));
                report.errors.push(format!("pack {id} has {size} bytes, the index says {len}"));
                bad_blobs.extend(entries.iter().map(|e| e.id));
            }
            Some(_) => {}
        }
    }
    for (id, size) in &stored {
        if !indexed.contains_key(id) {
            report.unindexed_packs += 1;
            report.unindexed_bytes += size;
        }
    }
    if report.unindexed_packs > 0 {
        report.warnings.push(format!(
            "{} packs ({} bytes) are not in any index segment: left by an interrupted backup; \
             nothing references them (`hoard repair index` indexes them again)",
            report.unindexed_packs, report.unindexed_bytes
        ));
    }

    // 3. Read data: open every blob of the chosen packs.
    if let Some(subset) = read_data {
        let chosen: Vec<(&Id, &(u64, Vec<PackEntry>))> =
            indexed.iter().filter(|(id, _)| stored.contains_key(id) && subset.includes(id)).collect();
        let results: Mutex<Vec<PackVerdict>> = Mutex::new(Vec::new());
        let next = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..2 {
                s.spawn(|| loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some((id, (len, entries))) = chosen.get(i) else {
                        break;
                    };
                    let r = read_pack(repo, id, *len, entries);
                    results.lock().unwrap().push((**id, *len, r.0, r.1));
                });
            }
        });
        for (id, len, problem, bad) in results.into_inner().unwrap() {
            report.packs_read += 1;
            report.bytes_read += len;
            if let Some(p) = problem {
                report.errors.push(format!("pack {id}: {p}"));
                report.damaged_packs.insert(id.to_hex(), p);
                bad_blobs.extend(bad);
            }
        }
    }
    // A blob is lost only if no good copy exists.
    let lost: HashSet<Id> = bad_blobs
        .into_iter()
        .filter(|b| {
            blob_packs.get(b).is_none_or(|packs| packs.iter().all(|p| report.damaged_packs.contains_key(&p.to_hex())))
        })
        .collect();

    // 4. Snapshots and trees, from storage.
    let mut verdict: HashMap<Id, bool> = HashMap::new(); // tree id -> everything below is fine
    let mut names: Vec<String> = storage.list(ObjectKind::Snapshot)?.into_iter().map(|o| o.name).collect();
    names.sort();
    for name in names {
        report.snapshots += 1;
        let snap = match Id::from_hex(&name)
            .map_err(|e| e.to_string())
            .and_then(|id| repo.read_snapshot_uncached(&id).map_err(|e| e.to_string()))
        {
            Ok(s) => s,
            Err(e) => {
                report.errors.push(format!("snapshot {name}: {e}"));
                report.affected_snapshots.push(name);
                continue;
            }
        };
        let mut problems = Vec::new();
        let fine = check_tree(repo, &snap.tree, &blob_packs, &lost, &mut verdict, &mut problems, "/");
        report.trees = verdict.len();
        if !fine {
            for p in problems.into_iter().take(20) {
                report.errors.push(format!("snapshot {}: {p}", &name[..8]));
            }
            report.affected_snapshots.push(name);
        }
    }
    if report.ok() {
        // What prune would reclaim (at its default threshold): only meaningful when every
        // snapshot could be walked.
        // Packs of any age count: this is what no snapshot uses, which a prune reclaims once
        // the packs are older than its grace period.
        match crate::prune::plan(repo, crate::prune::PruneOptions::default().max_unused, Duration::ZERO) {
            Ok(p) => {
                report.unused_packs = p.unused_packs;
                report.condemned_packs = p.condemned_packs;
                report.unreferenced_bytes = p.unreferenced_bytes;
                report.reclaimable_bytes = p.frees_bytes;
                if p.frees_bytes > 0 {
                    report.warnings.push(format!(
                        "{} packs hold nothing any snapshot uses, {} packs are condemned by an earlier prune, and \
                         {} bytes of blobs are unreferenced in all: `hoard prune` would reclaim about {} bytes",
                        p.unused_packs, p.condemned_packs, p.unreferenced_bytes, p.frees_bytes
                    ));
                }
            }
            Err(e) => report.warnings.push(format!("could not work out what prune would reclaim: {e}")),
        }
    }
    Ok(report)
}

/// A pack read by `--read-data`: its id, length, what is wrong with it, and its bad blobs.
type PackVerdict = (Id, u64, Option<String>, Vec<Id>);

fn read_pack(repo: &Repository, id: &Id, len: u64, entries: &[PackEntry]) -> (Option<String>, Vec<Id>) {
    let all = || entries.iter().map(|e| e.id).collect::<Vec<_>>();
    let bytes = match repo.storage().read(ObjectKind::Pack, &id.to_hex()) {
        Ok(b) => b,
        Err(e) => return (Some(format!("unreadable: {e}")), all()),
    };
    if bytes.len() as u64 != len {
        return (Some(format!("{} bytes, expected {len}", bytes.len())), all());
    }
    let header = match pack::decode_header(repo.keys(), id, &bytes, len) {
        Ok(h) => h,
        Err(e) => return (Some(format!("header: {e}")), all()),
    };
    let mut problems = Vec::new();
    let mut bad = Vec::new();
    let in_header: HashMap<(Id, u64), &PackEntry> = header.iter().map(|e| ((e.id, e.offset), e)).collect();
    for e in entries {
        // The index is only as trustworthy as the segment it came from: compare it with the
        // authenticated header and slice by bounds that were checked, never by its lengths.
        let Some(&h) = in_header.get(&(e.id, e.offset)) else {
            problems.push(format!("blob {} is in the index but not in the pack header", e.id.short()));
            bad.push(e.id);
            continue;
        };
        if h != e {
            problems.push(format!("blob {}: the index entry differs from the pack header", e.id.short()));
            bad.push(e.id);
            continue;
        }
        let Some(stored) = usize::try_from(h.offset).ok().and_then(|o| bytes.get(o..)?.get(..h.length as usize)) else {
            problems.push(format!("blob {} lies outside the pack", e.id.short()));
            bad.push(e.id);
            continue;
        };
        if let Err(err) = pack::open_blob(repo.keys(), id, h, stored) {
            problems.push(format!("blob {}: {err}", e.id.short()));
            bad.push(e.id);
        }
    }
    if problems.is_empty() {
        (None, bad)
    } else {
        let n = problems.len();
        (Some(format!("{n} of {} blobs damaged ({})", entries.len(), problems[0])), bad)
    }
}

/// Checks one tree and everything below it once; returns whether all of it is restorable.
fn check_tree(
    repo: &Repository,
    id: &Id,
    blob_packs: &HashMap<Id, Vec<Id>>,
    lost: &HashSet<Id>,
    verdict: &mut HashMap<Id, bool>,
    problems: &mut Vec<String>,
    path: &str,
) -> bool {
    if let Some(&v) = verdict.get(id) {
        if !v {
            problems.push(format!("{path}: damaged data below (see above)"));
        }
        return v;
    }
    let available = |b: &Id| blob_packs.contains_key(b) && !lost.contains(b);
    if !available(id) {
        problems.push(format!("{path}: tree {} is missing or damaged", id.short()));
        verdict.insert(*id, false);
        return false;
    }
    let tree = match repo.load_tree(id) {
        Ok(t) => t,
        Err(e) => {
            problems.push(format!("{path}: tree {}: {e}", id.short()));
            verdict.insert(*id, false);
            return false;
        }
    };
    let mut fine = true;
    for n in &tree.nodes {
        let p = format!("{}{}{}", path, if path.ends_with('/') { "" } else { "/" }, String::from_utf8_lossy(&n.name));
        match n.kind() {
            NodeKind::Dir => {
                fine &= check_tree(repo, &n.subtree.unwrap(), blob_packs, lost, verdict, problems, &p);
            }
            NodeKind::File => {
                let lists = match &n.content {
                    hoard_core::format::tree::Content::Lists(l) => l.clone(),
                    _ => vec![],
                };
                if let Some(l) = lists.iter().find(|l| !available(l)) {
                    problems.push(format!("{p}: chunk list {} missing or damaged", l.short()));
                    fine = false;
                    continue;
                }
                match repo.content_chunks(&n.content) {
                    Ok(chunks) => {
                        if let Some(c) = chunks.iter().find(|c| !available(c)) {
                            problems.push(format!("{p}: chunk {} missing or damaged", c.short()));
                            fine = false;
                        }
                    }
                    Err(e) => {
                        problems.push(format!("{p}: {e}"));
                        fine = false;
                    }
                }
            }
            _ => {}
        }
    }
    verdict.insert(*id, fine);
    fine
}

/// Reads a pack's header straight from storage (for `repair index`).
pub fn pack_header(repo: &Repository, id: &Id, len: u64) -> Result<Vec<PackEntry>> {
    let name = id.to_hex();
    let tail = read_tail(&**repo.storage(), ObjectKind::Pack, &name, len, pack::TAIL_GUESS as u64)?;
    let span = pack::header_span(&tail, len).map_err(|e| crate::error::RepoError::core(format!("pack {name}"), e))?;
    let tail =
        if span > tail.len() { read_tail(&**repo.storage(), ObjectKind::Pack, &name, len, span as u64)? } else { tail };
    pack::decode_header(repo.keys(), id, &tail, len)
        .map_err(|e| crate::error::RepoError::core(format!("pack {name}"), e))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use hoard_core::KdfParams;
    use hoard_storage::MemoryStorage;

    use super::*;
    use crate::backup::stream::{backup_stream, StreamSource};
    use crate::backup::BackupOptions;
    use crate::InitOptions;

    #[test]
    fn an_index_entry_that_disagrees_with_the_pack_is_reported_not_sliced() {
        // Regression: read_pack sliced the pack by the index's length, so an index entry longer
        // than the pack panicked `check --read-data` instead of reporting it.
        let tmp = tempfile::tempdir().unwrap();
        let opts =
            InitOptions { kdf: KdfParams { memory_kib: 64, iterations: 1, parallelism: 1 }, ..Default::default() };
        let repo = Repository::init(Arc::new(MemoryStorage::new()), b"pw", opts, tmp.path()).unwrap();
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        let src = StreamSource { kind: "stdin", name: "x" };
        backup_stream(&repo, &mut data.as_slice(), &src, &BackupOptions::default(), &mut || Ok(())).unwrap();
        let (pack, len) = repo.cache().packs().unwrap()[0];
        let good = repo.cache().pack_entries(&pack).unwrap();
        assert_eq!(read_pack(&repo, &pack, len, &good), (None, vec![]));
        let mut bad = good.clone();
        bad[0].length = u32::MAX;
        let (problem, damaged) = read_pack(&repo, &pack, len, &bad);
        assert!(problem.unwrap().contains("differs from the pack header"));
        assert_eq!(damaged, vec![bad[0].id]);
    }
}
