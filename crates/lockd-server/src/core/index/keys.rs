//! The index of one namespace: its searchable keys in byte order, each
//! with a small integer id, and the postings of every term (the ids of the
//! documents carrying it). Pure data, no I/O: `mod.rs` keeps it current.

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

use lockd_lql::Plan;
use roaring::RoaringBitmap;
use serde_json::Value;

/// Documents larger than this are not parsed for terms; every query
/// reads them (they are admitted by every plan).
const MAX_FILED_BYTES: usize = 4 << 20;

/// The terms a document is filed under, or `Unfiled` when it is too large
/// to parse here (every query then reads it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Filed {
    Terms(Box<[u64]>),
    Unfiled,
}

impl Filed {
    /// The terms of a committed (or staged) JSON document.
    pub fn of(doc: &[u8]) -> Filed {
        if doc.len() > MAX_FILED_BYTES {
            return Filed::Unfiled;
        }
        match serde_json::from_slice::<Value>(doc) {
            Ok(v) => {
                let mut terms = Vec::new();
                lockd_lql::document_terms(&v, &mut terms);
                Filed::Terms(terms.into_boxed_slice())
            }
            Err(_) => Filed::Unfiled,
        }
    }

    pub(super) fn none() -> Filed {
        Filed::Terms(Box::new([]))
    }
}

/// Term hashes are already uniform: use them as their own hash.
#[derive(Default)]
struct Identity(u64);

impl Hasher for Identity {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8) | u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// The documents carrying one term.
enum Posting {
    One(u32),
    Many(RoaringBitmap),
}

struct Slot {
    key: Option<Arc<str>>,
    filed: Filed,
}

/// The index of one namespace.
#[derive(Default)]
pub(super) struct KeyIndex {
    pub(super) ids: BTreeMap<Arc<str>, u32>,
    slots: Vec<Slot>,
    free: Vec<u32>,
    postings: HashMap<u64, Posting, BuildHasherDefault<Identity>>,
    unfiled: RoaringBitmap,
}

impl KeyIndex {
    pub(super) fn set(&mut self, key: &str, filed: Filed) {
        let id = match self.ids.get(key) {
            Some(&id) => {
                if self.slots[id as usize].filed == filed {
                    return;
                }
                self.unfile(id);
                id
            }
            None => {
                let key: Arc<str> = Arc::from(key);
                let id = match self.free.pop() {
                    Some(id) => {
                        self.slots[id as usize].key = Some(key.clone());
                        id
                    }
                    None => {
                        let Ok(id) = u32::try_from(self.slots.len()) else {
                            // Four billion keys in one namespace: stop
                            // filing rather than wrap around.
                            return;
                        };
                        self.slots.push(Slot {
                            key: Some(key.clone()),
                            filed: Filed::none(),
                        });
                        id
                    }
                };
                self.ids.insert(key, id);
                id
            }
        };
        match &filed {
            Filed::Unfiled => {
                self.unfiled.insert(id);
            }
            Filed::Terms(terms) => {
                for t in terms.iter() {
                    match self.postings.get_mut(t) {
                        None => {
                            self.postings.insert(*t, Posting::One(id));
                        }
                        Some(Posting::One(other)) => {
                            let mut bm = RoaringBitmap::new();
                            bm.insert(*other);
                            bm.insert(id);
                            self.postings.insert(*t, Posting::Many(bm));
                        }
                        Some(Posting::Many(bm)) => {
                            bm.insert(id);
                        }
                    }
                }
            }
        }
        self.slots[id as usize].filed = filed;
    }

    /// Takes a document's terms out of the postings.
    fn unfile(&mut self, id: u32) {
        let filed = std::mem::replace(&mut self.slots[id as usize].filed, Filed::none());
        match filed {
            Filed::Unfiled => {
                self.unfiled.remove(id);
            }
            Filed::Terms(terms) => {
                for t in terms.iter() {
                    let gone = match self.postings.get_mut(t) {
                        Some(Posting::One(other)) => *other == id,
                        Some(Posting::Many(bm)) => {
                            bm.remove(id);
                            if bm.len() == 1 {
                                if let Some(last) = bm.min() {
                                    self.postings.insert(*t, Posting::One(last));
                                }
                            }
                            false
                        }
                        None => false,
                    };
                    if gone {
                        self.postings.remove(t);
                    }
                }
            }
        }
    }

    pub(super) fn remove(&mut self, key: &str) {
        let Some(id) = self.ids.remove(key) else {
            return;
        };
        self.unfile(id);
        self.slots[id as usize].key = None;
        self.free.push(id);
    }

    /// The ids a plan admits (`None`: every key).
    pub(super) fn candidates(&self, plan: &Plan) -> Option<RoaringBitmap> {
        let mut set = self.narrow(plan)?;
        set |= &self.unfiled;
        Some(set)
    }

    fn narrow(&self, plan: &Plan) -> Option<RoaringBitmap> {
        match plan {
            Plan::All => None,
            Plan::AnyOf(terms) => {
                let mut set = RoaringBitmap::new();
                for t in terms {
                    match self.postings.get(t) {
                        None => {}
                        Some(Posting::One(id)) => {
                            set.insert(*id);
                        }
                        Some(Posting::Many(bm)) => set |= bm,
                    }
                }
                Some(set)
            }
            Plan::And(parts) => {
                let mut sets: Vec<RoaringBitmap> =
                    parts.iter().filter_map(|p| self.narrow(p)).collect();
                sets.sort_by_key(RoaringBitmap::len);
                let mut it = sets.into_iter();
                let mut acc = it.next()?;
                for s in it {
                    if acc.is_empty() {
                        break;
                    }
                    acc &= s;
                }
                Some(acc)
            }
            Plan::Or(parts) => {
                let mut acc = RoaringBitmap::new();
                for p in parts {
                    acc |= self.narrow(p)?;
                }
                Some(acc)
            }
        }
    }

    pub(super) fn key_of(&self, id: u32) -> Option<&Arc<str>> {
        self.slots.get(id as usize)?.key.as_ref()
    }

    pub(super) fn memory_estimate(&self) -> usize {
        let key_bytes: usize = self.ids.keys().map(|k| k.len() + 16).sum();
        let term_bytes: usize = self
            .slots
            .iter()
            .map(|s| match &s.filed {
                Filed::Terms(t) => t.len() * 8,
                Filed::Unfiled => 0,
            })
            .sum();
        let postings: usize = self
            .postings
            .values()
            .map(|p| match p {
                Posting::One(_) => 0,
                Posting::Many(bm) => bm.serialized_size(),
            })
            .sum();
        // Map and slot overheads, roughly.
        key_bytes * 2
            + self.ids.len() * 24
            + self.slots.len() * 40
            + term_bytes
            + self.postings.len() * 40
            + postings
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filed(doc: &str) -> Filed {
        Filed::of(doc.as_bytes())
    }

    fn plan(text: &str) -> Plan {
        lockd_lql::compile(&lockd_lql::parse(text).unwrap())
            .unwrap()
            .plan()
    }

    fn keys(idx: &KeyIndex, p: &Plan) -> Vec<String> {
        let mut out: Vec<String> = match idx.candidates(p) {
            None => idx.ids.keys().map(|k| k.to_string()).collect(),
            Some(s) => s
                .iter()
                .filter_map(|id| idx.key_of(id).map(|k| k.to_string()))
                .collect(),
        };
        out.sort();
        out
    }

    #[test]
    fn set_replace_remove_keep_postings_exact() {
        let mut idx = KeyIndex::default();
        idx.set("a", filed(r#"{"s":"open","n":1}"#));
        idx.set("b", filed(r#"{"s":"open","n":2}"#));
        idx.set("c", filed(r#"{"s":"done","n":1}"#));
        assert_eq!(keys(&idx, &plan("/s=open")), ["a", "b"]);
        assert_eq!(keys(&idx, &plan("/s=open, /n=1")), ["a"]);
        assert_eq!(
            keys(&idx, &plan("or.eq{f=/s,v=done}, or.eq{f=/n,v=2}")),
            ["b", "c"]
        );
        // Replace: old terms go.
        idx.set("a", filed(r#"{"s":"done","n":3}"#));
        assert_eq!(keys(&idx, &plan("/s=open")), ["b"]);
        assert_eq!(keys(&idx, &plan("/s=done")), ["a", "c"]);
        // Remove, then a new key reuses the id.
        idx.remove("b");
        assert!(keys(&idx, &plan("/s=open")).is_empty());
        idx.set("d", filed(r#"{"s":"open"}"#));
        assert_eq!(keys(&idx, &plan("/s=open")), ["d"]);
        assert_eq!(idx.slots.len(), 3, "the freed id was reused");
        // Unfiled documents are candidates for everything.
        idx.set("e", Filed::Unfiled);
        assert_eq!(keys(&idx, &plan("/s=nothing")), ["e"]);
        assert_eq!(keys(&idx, &plan("contains{f=/s,v=o}")).len(), 4);
        // Postings shrink back to single ids and vanish.
        idx.remove("a");
        idx.remove("c");
        idx.remove("d");
        idx.remove("e");
        assert!(idx.postings.is_empty(), "every posting went");
        assert!(idx.unfiled.is_empty());
    }
}
