//! The member table: records indexed by small integers, a name index, the probe order and the
//! bookkeeping for dead members (reconnect candidates, forgetting).
//!
//! Sized for 10,000 nodes each knowing 10,000 members in one simulator process: a record is
//! 32 bytes and points at a shared [`Ident`], and the name index is a flat `Vec<u32>`.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::RngExt;
use rand::rngs::SmallRng;
use rand::seq::SliceRandom;

use super::message::{Ident, State};
use crate::name::NodeName;

/// A member's index in the table; stable until the member is forgotten.
pub(crate) type Slot = u32;

/// One member as this node sees it.
#[derive(Clone, Debug)]
pub(crate) struct Member {
    pub id: Ident,
    pub incarnation: u64,
    /// Milliseconds after the owning node's epoch when `state` last changed.
    pub changed_ms: u64,
    pub state: State,
}

impl Member {
    /// The precedence key: a higher key replaces a lower one (SWIM's rules, generation first).
    pub fn key(&self) -> (u64, u64, State) {
        (self.id.generation, self.incarnation, self.state)
    }
}

/// A member, read-only, as the driver and the CLI see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberView<'a> {
    pub name: &'a NodeName,
    pub addr: SocketAddr,
    pub state: State,
    pub incarnation: u64,
    pub generation: u64,
    pub last_change: Instant,
}

/// A converged member list built once and cloned into many simulated nodes, so a 10,000-node
/// run starts with full membership instead of spending its time joining.
#[derive(Clone)]
pub struct Roster(pub(crate) Members);

impl Roster {
    /// Every identity alive at incarnation 0.
    pub fn new(ids: impl IntoIterator<Item = Ident>) -> Self {
        let mut members = Members::default();
        // Only the probe order uses randomness here, and a fresh roster has none yet.
        let mut rng = <SmallRng as rand::SeedableRng>::seed_from_u64(0);
        for id in ids {
            if members.find(&id.name).is_none() {
                members.insert(
                    Member {
                        id,
                        incarnation: 0,
                        changed_ms: 0,
                        state: State::Alive,
                    },
                    &mut rng,
                );
            }
        }
        Roster(members)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.len() == 0
    }
}

/// An empty index entry (no member has slot `u32::MAX`).
const EMPTY: u64 = u64::MAX;

/// Open addressing with linear probing. Each entry is the top 32 bits of the name's hash
/// (which also give its home position) above the slot number, so a lookup skips colliding
/// entries without touching their records: in a 10,000-member table those are cache misses.
#[derive(Clone, Default)]
struct NameIndex {
    table: Vec<u64>,
    len: usize,
}

fn tag(name: &str) -> u64 {
    // The high bits are the well-mixed ones after the multiply.
    hash(name) >> 32
}

fn entry(tag: u64, slot: Slot) -> u64 {
    tag << 32 | u64::from(slot)
}

fn slot_of(entry: u64) -> Slot {
    entry as u32
}

/// FxHash over the name's bytes: fast, and deterministic so simulations replay exactly.
fn hash(name: &str) -> u64 {
    let mut h = FxHasher::default();
    h.write(name.as_bytes());
    h.finish()
}

/// The Fx hash (rustc's): a multiply and a rotate per word. Not DoS-resistant, which is fine
/// for maps keyed by our own small integers and for names from authenticated peers (a
/// collision costs a longer probe, never a wrong answer).
#[derive(Clone, Copy, Default)]
pub(crate) struct FxHasher(u64);

const FX_K: u64 = 0x517c_c1b7_2722_0a95;

impl FxHasher {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(FX_K);
    }
}

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            self.add(u64::from_le_bytes(c.try_into().unwrap_or_default()));
        }
        for &b in chunks.remainder() {
            self.add(u64::from(b));
        }
    }

    fn write_u32(&mut self, n: u32) {
        self.add(u64::from(n));
    }

    fn write_u64(&mut self, n: u64) {
        self.add(n);
    }

    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }

    fn write_isize(&mut self, n: isize) {
        self.add(n as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// A `HashMap` over small integer keys with the Fx hash.
pub(crate) type FxMap<K, V> = HashMap<K, V, BuildHasherDefault<FxHasher>>;

impl NameIndex {
    fn mask(&self) -> usize {
        self.table.len() - 1
    }

    fn home(&self, tag: u64) -> usize {
        tag as usize & self.mask()
    }

    /// The slot whose record `matches`, among entries tagged like `name`.
    fn find(&self, name: &str, matches: impl Fn(Slot) -> bool) -> Option<Slot> {
        if self.len == 0 {
            return None;
        }
        let tag = tag(name);
        let mut i = self.home(tag);
        loop {
            let e = self.table[i];
            if e == EMPTY {
                return None;
            }
            if e >> 32 == tag && matches(slot_of(e)) {
                return Some(slot_of(e));
            }
            i = (i + 1) & self.mask();
        }
    }

    fn insert(&mut self, name: &str, slot: Slot) {
        if (self.len + 1) * 4 > self.table.len() * 3 {
            self.grow();
        }
        let tag = tag(name);
        let mut i = self.home(tag);
        while self.table[i] != EMPTY {
            i = (i + 1) & self.mask();
        }
        self.table[i] = entry(tag, slot);
        self.len += 1;
    }

    fn grow(&mut self) {
        let size = (self.table.len() * 2).max(16);
        let old = std::mem::replace(&mut self.table, vec![EMPTY; size]);
        for e in old.into_iter().filter(|&e| e != EMPTY) {
            let mut i = self.home(e >> 32);
            while self.table[i] != EMPTY {
                i = (i + 1) & self.mask();
            }
            self.table[i] = e;
        }
    }

    /// Removes `slot` (indexed under `name`) with backward-shift deletion, so no tombstones
    /// accumulate as members come and go.
    fn remove(&mut self, name: &str, slot: Slot) {
        let Some(_) = self.find(name, |s| s == slot) else {
            return;
        };
        let mut hole = self.home(tag(name));
        while slot_of(self.table[hole]) != slot {
            hole = (hole + 1) & self.mask();
        }
        let mut i = hole;
        loop {
            i = (i + 1) & self.mask();
            let e = self.table[i];
            if e == EMPTY {
                break;
            }
            let home = self.home(e >> 32);
            // `e` may move into the hole unless its home lies cyclically in (hole, i].
            let stays = if hole <= i {
                hole < home && home <= i
            } else {
                hole < home || home <= i
            };
            if !stays {
                self.table[hole] = e;
                hole = i;
            }
        }
        self.table[hole] = EMPTY;
        self.len -= 1;
    }
}

/// All members this node knows, itself included.
/// Dead or left: not probed, but worth a reconnect attempt now and then.
fn is_down(state: State) -> bool {
    matches!(state, State::Dead | State::Left)
}

#[derive(Clone, Default)]
pub(crate) struct Members {
    records: Vec<Option<Member>>,
    free: Vec<Slot>,
    /// Shared between the clones of one roster until a member comes or goes (copy on write):
    /// 10,000 simulated nodes would otherwise hold 10,000 copies of the same 128 KiB index.
    index: Arc<NameIndex>,
    counts: [usize; 4],
    /// Round-robin probe order, reshuffled each pass.
    probe_order: Vec<Slot>,
    probe_pos: usize,
    /// Members that went dead or left: reconnect candidates, cleaned lazily. A member that
    /// left may come back at its address without knowing whom to join (a restart that lost
    /// or never had a seed): a ping now and then finds it again (issue 22, point 10).
    down: Vec<Slot>,
    /// (due ms, slot, changed_ms) of dead and left members, in the order they went down.
    forget: VecDeque<(u64, Slot, u64)>,
}

impl Members {
    pub fn len(&self) -> usize {
        self.index.len
    }

    pub fn count(&self, state: State) -> usize {
        self.counts[state as usize]
    }

    pub fn get(&self, slot: Slot) -> Option<&Member> {
        self.records.get(slot as usize)?.as_ref()
    }

    pub fn find(&self, name: &(impl AsRef<str> + ?Sized)) -> Option<Slot> {
        let name = name.as_ref();
        self.index
            .find(name, |s| self.get(s).is_some_and(|m| m.id.name.as_str() == name))
    }

    /// The member named like `id`; when the record shares `id` (the common case once a member
    /// is known) the names are not even compared.
    pub fn find_ident(&self, id: &Ident) -> Option<Slot> {
        self.index.find(id.name.as_str(), |s| {
            self.get(s).is_some_and(|m| m.id.ptr_eq(id) || m.id.name == id.name)
        })
    }

    pub fn iter(&self) -> impl Iterator<Item = (Slot, &Member)> {
        self.records
            .iter()
            .enumerate()
            .filter_map(|(i, m)| Some((i as Slot, m.as_ref()?)))
    }

    /// Adds a member (whose name must not be present) at a random place in the probe order.
    pub fn insert(&mut self, member: Member, rng: &mut SmallRng) -> Slot {
        self.counts[member.state as usize] += 1;
        let down = is_down(member.state);
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None => {
                self.records.push(None);
                (self.records.len() - 1) as Slot
            }
        };
        let id = member.id.clone();
        self.records[slot as usize] = Some(member);
        Arc::make_mut(&mut self.index).insert(id.name.as_str(), slot);
        if down {
            self.down.push(slot);
        }
        // Like memberlist: a newcomer lands at a random place in the rest of this pass.
        if self.probe_pos < self.probe_order.len() {
            self.probe_order.push(slot);
            let last = self.probe_order.len() - 1;
            let j = rng.random_range(self.probe_pos..=last);
            self.probe_order.swap(j, last);
        }
        slot
    }

    /// Changes a member's state and incarnation (and identity, for a new generation).
    pub fn update(&mut self, slot: Slot, id: Option<Ident>, incarnation: u64, state: State, now_ms: u64) {
        let Some(m) = self.records.get_mut(slot as usize).and_then(Option::as_mut) else {
            return;
        };
        self.counts[m.state as usize] -= 1;
        self.counts[state as usize] += 1;
        if let Some(id) = id {
            m.id = id;
        }
        let changed = m.state != state;
        m.incarnation = incarnation;
        m.state = state;
        if changed {
            m.changed_ms = now_ms;
        }
        if changed && is_down(state) {
            self.down.push(slot);
            if self.down.len() > 2 * self.records.len() + 16 {
                self.compact_down();
            }
        }
    }

    /// Schedules a dead or left member to be forgotten after `retention`.
    pub fn schedule_forget(&mut self, slot: Slot, retention: Duration) {
        if let Some(m) = self.get(slot) {
            let due = m.changed_ms.saturating_add(retention.as_millis() as u64);
            self.forget.push_back((due, slot, m.changed_ms));
        }
    }

    /// When the next member is due to be forgotten.
    pub fn next_forget_ms(&self) -> Option<u64> {
        self.forget.front().map(|f| f.0)
    }

    /// Forgets dead and left members whose retention ran out; returns their slots.
    pub fn forget_due(&mut self, now_ms: u64, out: &mut Vec<Slot>) {
        while let Some(&(due, slot, changed)) = self.forget.front() {
            if due > now_ms {
                break;
            }
            self.forget.pop_front();
            let gone = self
                .get(slot)
                .is_some_and(|m| m.changed_ms == changed && matches!(m.state, State::Dead | State::Left));
            if gone {
                self.remove(slot);
                out.push(slot);
            }
        }
    }

    fn remove(&mut self, slot: Slot) {
        let Some(id) = self.get(slot).map(|m| m.id.clone()) else {
            return;
        };
        Arc::make_mut(&mut self.index).remove(id.name.as_str(), slot);
        if let Some(m) = self.records[slot as usize].take() {
            self.counts[m.state as usize] -= 1;
        }
        self.free.push(slot);
        // A stale probe-order entry for a freed or reused slot only costs a skipped probe turn.
    }

    fn compact_down(&mut self) {
        let records = &self.records;
        self.down
            .retain(|&s| records[s as usize].as_ref().is_some_and(|m| is_down(m.state)));
        self.down.sort_unstable();
        self.down.dedup();
    }

    /// The next member to probe: alive or suspect, never `me`; `None` if there is none.
    pub fn next_probe_target(&mut self, me: Slot, rng: &mut SmallRng) -> Option<Slot> {
        let probeable = |m: &Member| matches!(m.state, State::Alive | State::Suspect);
        if self.count(State::Alive) + self.count(State::Suspect) <= 1 {
            return None;
        }
        // Bounded: at most one full reshuffled pass after the current one.
        let mut reshuffled = false;
        loop {
            if self.probe_pos >= self.probe_order.len() {
                if reshuffled {
                    return None;
                }
                reshuffled = true;
                let records = &self.records;
                self.probe_order.clear();
                self.probe_order
                    .extend((0..records.len() as Slot).filter(|&s| records[s as usize].is_some()));
                self.probe_order.shuffle(rng);
                self.probe_pos = 0;
            }
            let slot = self.probe_order[self.probe_pos];
            self.probe_pos += 1;
            if slot != me && self.get(slot).is_some_and(probeable) {
                return Some(slot);
            }
        }
    }

    /// Up to `k` distinct random members in a state `want` accepts, none of them in `exclude`.
    pub fn sample(
        &self,
        k: usize,
        exclude: &[Slot],
        want: impl Fn(State) -> bool,
        rng: &mut SmallRng,
        out: &mut Vec<Slot>,
    ) {
        out.clear();
        if k == 0 || self.records.is_empty() {
            return;
        }
        let ok = |s: Slot| !exclude.contains(&s) && self.get(s).is_some_and(|m| want(m.state));
        // Rejection sampling is O(k) when most members qualify (the common case); with few
        // qualifying members it gives up and falls back to a scan.
        for _ in 0..3 * k + 8 {
            let s = rng.random_range(0..self.records.len()) as Slot;
            if ok(s) && !out.contains(&s) {
                out.push(s);
                if out.len() == k {
                    return;
                }
            }
        }
        let mut all: Vec<Slot> = self.iter().map(|(s, _)| s).filter(|&s| ok(s)).collect();
        all.shuffle(rng);
        for s in all {
            if out.len() == k {
                break;
            }
            if !out.contains(&s) {
                out.push(s);
            }
        }
    }

    /// A random dead or left member, for the periodic reconnect attempt.
    pub fn random_down(&mut self, rng: &mut SmallRng) -> Option<Slot> {
        while !self.down.is_empty() {
            let i = rng.random_range(0..self.down.len());
            let slot = self.down[i];
            if self.get(slot).is_some_and(|m| is_down(m.state)) {
                return Some(slot);
            }
            self.down.swap_remove(i);
        }
        None
    }

    pub fn view(&self, slot: Slot, epoch: Instant) -> Option<MemberView<'_>> {
        let m = self.get(slot)?;
        Some(MemberView {
            name: &m.id.name,
            addr: m.id.addr,
            state: m.state,
            incarnation: m.incarnation,
            generation: m.id.generation,
            last_change: epoch + Duration::from_millis(m.changed_ms),
        })
    }

    /// Restamps every record's last change (a roster adopted by a node with its own epoch).
    pub fn restamp(&mut self, now_ms: u64) {
        for m in self.records.iter_mut().flatten() {
            m.changed_ms = now_ms;
        }
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    fn member(name: &str, state: State) -> Member {
        Member {
            id: Ident::new(NodeName::new(name).unwrap(), "127.0.0.1:1".parse().unwrap(), 1),
            incarnation: 0,
            changed_ms: 0,
            state,
        }
    }

    #[test]
    fn the_name_index_survives_heavy_churn() {
        let mut rng = SmallRng::seed_from_u64(1);
        let mut members = Members::default();
        let mut present = std::collections::BTreeMap::new();
        for round in 0..5_000u32 {
            let name = format!("n{}", rng.random_range(0..700u32));
            match present.get(&name) {
                Some(&slot) if round % 3 != 0 => {
                    members.update(slot, None, 0, State::Dead, u64::from(round));
                    members.schedule_forget(slot, Duration::ZERO);
                    let mut gone = Vec::new();
                    members.forget_due(u64::from(round), &mut gone);
                    assert_eq!(gone, vec![slot]);
                    present.remove(&name);
                }
                Some(_) => {}
                None => {
                    let slot = members.insert(member(&name, State::Alive), &mut rng);
                    present.insert(name, slot);
                }
            }
            if round % 500 == 0 {
                assert_eq!(members.len(), present.len());
                for (name, &slot) in &present {
                    assert_eq!(members.find(name), Some(slot), "{name}");
                }
                assert_eq!(members.find("absent"), None);
            }
        }
    }

    #[test]
    fn probing_visits_every_live_member_once_per_pass_and_skips_the_dead() {
        let mut rng = SmallRng::seed_from_u64(2);
        let mut members = Members::default();
        let me = members.insert(member("me", State::Alive), &mut rng);
        for i in 0..10 {
            let state = if i < 3 { State::Dead } else { State::Alive };
            members.insert(member(&format!("m{i}"), state), &mut rng);
        }
        let mut seen: Vec<Slot> = (0..7)
            .map(|_| members.next_probe_target(me, &mut rng).unwrap())
            .collect();
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), 7);
        assert!(
            seen.iter()
                .all(|&s| members.get(s).unwrap().state == State::Alive && s != me)
        );
    }

    #[test]
    fn sampling_returns_distinct_members_in_the_wanted_state() {
        let mut rng = SmallRng::seed_from_u64(3);
        let mut members = Members::default();
        for i in 0..50 {
            let state = if i % 10 == 0 { State::Alive } else { State::Dead };
            members.insert(member(&format!("m{i}"), state), &mut rng);
        }
        let mut out = Vec::new();
        members.sample(3, &[0], |s| s == State::Alive, &mut rng, &mut out);
        assert_eq!(out.len(), 3);
        let mut d = out.clone();
        d.sort();
        d.dedup();
        assert_eq!(d.len(), 3);
        assert!(
            out.iter()
                .all(|&s| s != 0 && members.get(s).unwrap().state == State::Alive)
        );
        members.sample(10, &[], |s| s == State::Alive, &mut rng, &mut out);
        assert_eq!(out.len(), 5, "only five members are alive");
    }
}
