//! Several SSE-C keys in one run: a bucket whose customer key was rotated
//! holds objects under each key it ever had. B2 does not say which key
//! encrypted an object (a listing says only `SSE-C`, and a wrong key is
//! refused with `403 access_denied`), so each object is asked for with the
//! key most likely to be its own and moves on to the next on a refusal:
//!
//! 1. the key that opened another object with the same `sse_c_key_id`: the
//!    key ID b2sdk and the b2 CLI store in fileInfo when given one;
//! 2. for an ID not seen yet, the first key no other ID has (another ID
//!    names another key);
//! 3. else the key that last opened any object (objects under one key come
//!    in runs: a prefix, a period of uploads);
//! 4. then the others, in the order given, wrapping around.
//!
//! Objects are downloaded many at a time, so a key change costs up to one
//! refused request per object in flight, not per object.
//!
//! I/O-free. Shared by every core: it is consulted once per object and per
//! refusal, never per byte.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use super::sse::CustomerKey;
use crate::config::{SSE_C_KEY_ID_MAX_BYTES, SSE_C_KEY_IDS_REMEMBERED_MAX, SSE_C_KEYS_MAX};

/// The keys of a run, in the order given, and what the run has learnt of
/// which objects they open.
#[derive(Debug)]
pub struct Keyring {
    keys: Vec<CustomerKey>,
    /// Index of the key that last opened an object.
    last_opened: AtomicUsize,
    /// `sse_c_key_id` → index of the key that opened an object carrying it.
    /// At most `SSE_C_KEY_IDS_REMEMBERED_MAX` entries.
    by_key_id: Mutex<HashMap<Box<str>, usize>>,
    /// Bit `i`: key `i` opened an object that carries an ID.
    keys_with_ids: AtomicU64,
}

impl Keyring {
    /// `keys` in the order given; a key given twice counts once. Errors say
    /// what is wrong with the set, never what a key holds.
    pub fn new(keys: Vec<CustomerKey>) -> Result<Keyring, String> {
        let mut unique: Vec<CustomerKey> = Vec::with_capacity(keys.len());
        for key in keys {
            if !unique.contains(&key) {
                unique.push(key);
            }
        }
        if unique.is_empty() {
            return Err("no SSE-C key".into());
        }
        if unique.len() > SSE_C_KEYS_MAX {
            return Err(format!(
                "{} different SSE-C keys; one run takes at most {SSE_C_KEYS_MAX}",
                unique.len()
            ));
        }
        Ok(Keyring {
            keys: unique,
            last_opened: AtomicUsize::new(0),
            by_key_id: Mutex::new(HashMap::new()),
            keys_with_ids: AtomicU64::new(0),
        })
    }

    pub fn keys(&self) -> &[CustomerKey] {
        &self.keys
    }

    /// The key with this MD5 (base64), as B2 echoes it, if given.
    pub fn by_md5(&self, md5_base64: &str) -> Option<usize> {
        self.keys
            .iter()
            .position(|key| key.md5_base64() == md5_base64)
    }

    /// The key an object carrying `key_id` (its `sse_c_key_id`) is first
    /// asked for with.
    pub fn first_guess(&self, key_id: Option<&str>) -> usize {
        let last_opened = self.last_opened.load(Ordering::Relaxed);
        let Some(id) = key_id else {
            return last_opened;
        };
        let known = self
            .by_key_id
            .lock()
            .expect("the key-ID map is never left half-updated")
            .get(id)
            .copied();
        if let Some(index) = known {
            return index;
        }
        let with_ids = self.keys_with_ids.load(Ordering::Relaxed);
        let count = self.keys.len();
        (0..count)
            .map(|step| (last_opened + step) % count)
            .find(|&index| with_ids & (1u64 << index) == 0)
            .unwrap_or(last_opened)
    }

    fn note_opened(&self, index: usize, key_id: Option<&str>) {
        self.last_opened.store(index, Ordering::Relaxed);
        let Some(id) = key_id else { return };
        self.keys_with_ids
            .fetch_or(1u64 << index, Ordering::Relaxed);
        let mut by_key_id = self
            .by_key_id
            .lock()
            .expect("the key-ID map is never left half-updated");
        if by_key_id.len() < SSE_C_KEY_IDS_REMEMBERED_MAX || by_key_id.contains_key(id) {
            by_key_id.insert(id.into(), index);
        }
    }

    /// Why an object is refused when every key was: its text names each key
    /// by its MD5 only.
    pub fn all_refused(&self) -> String {
        match self.keys.as_slice() {
            [key] => key.refused(),
            keys => format!(
                "B2 refuses each of the {} SSE-C keys given (key MD5s {}): the object was \
                 encrypted with another key",
                keys.len(),
                self.md5s()
            ),
        }
    }

    /// Each key's MD5 (base64), in the order given, joined by ", ": how
    /// messages name the keys, never by their bytes.
    pub fn md5s(&self) -> String {
        self.keys
            .iter()
            .map(CustomerKey::md5_base64)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Which key the requests for one object carry, shared by all of its
/// requests (the chunks of a large object run on every core at once).
#[derive(Debug)]
pub struct KeyChoice {
    ring: std::sync::Arc<Keyring>,
    /// The object's `sse_c_key_id`, if it has a usable one.
    key_id: Option<Box<str>>,
    /// Index of the key requests carry now; `UNCHOSEN` until the first
    /// request, so the guess uses what objects before it taught the ring
    /// (an object is queued well before its turn).
    current: AtomicUsize,
    /// Bit `i`: B2 refused key `i` for this object.
    refused: AtomicU64,
    /// Index of the key B2 answered with the object's bytes; `usize::MAX`
    /// until one did.
    opened_by: AtomicUsize,
}

/// What a refusal of one key leaves for an object.
#[derive(Debug, PartialEq, Eq)]
pub enum AfterRefusal {
    /// Another key is left: the request goes again, with `KeyChoice::current`.
    TryNext,
    /// Nothing left to try: the object fails with this reason.
    Fail(String),
}

const UNCHOSEN: usize = usize::MAX;

impl KeyChoice {
    /// The choice for an object carrying `key_id` (`sse_c_key_id` of its
    /// fileInfo), starting from the ring's best guess at its first request.
    pub fn new(ring: std::sync::Arc<Keyring>, key_id: Option<&str>) -> KeyChoice {
        let key_id = key_id.filter(|id| !id.is_empty() && id.len() <= SSE_C_KEY_ID_MAX_BYTES);
        KeyChoice {
            ring,
            key_id: key_id.map(Box::from),
            current: AtomicUsize::new(UNCHOSEN),
            refused: AtomicU64::new(0),
            opened_by: AtomicUsize::new(usize::MAX),
        }
    }

    /// A choice that starts from key `index` (one found to open the object
    /// already, e.g. by a `HEAD`).
    pub fn starting_at(ring: std::sync::Arc<Keyring>, index: usize) -> KeyChoice {
        assert!(index < ring.keys.len(), "a key of the ring");
        KeyChoice {
            ring,
            key_id: None,
            current: AtomicUsize::new(index),
            refused: AtomicU64::new(0),
            opened_by: AtomicUsize::new(usize::MAX),
        }
    }

    /// Every key of the ring as requests carry it (`http::redact`): an
    /// answer may quote any key a request for this object carried.
    pub fn secrets(&self) -> impl Iterator<Item = String> + '_ {
        self.ring.keys.iter().map(|key| key.secret().to_string())
    }

    /// The key the next request carries, with its index in the ring.
    pub fn current(&self) -> (usize, &CustomerKey) {
        let mut index = self.current.load(Ordering::Acquire);
        if index == UNCHOSEN {
            let guess = self.ring.first_guess(self.key_id.as_deref());
            index = match self.current.compare_exchange(
                UNCHOSEN,
                guess,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => guess,
                Err(chosen) => chosen,
            };
        }
        (index, &self.ring.keys[index])
    }

    /// B2 answered the object's bytes to a request that carried key `index`:
    /// every request from now on carries it (a refusal of another request
    /// that carried it may have moved the choice on meanwhile).
    pub fn opened(&self, index: usize) {
        self.current.store(index, Ordering::Release);
        if self.opened_by.swap(index, Ordering::AcqRel) != index {
            self.ring.note_opened(index, self.key_id.as_deref());
        }
    }

    /// B2 refused key `index` for this object (`403 access_denied`). Several
    /// requests may have carried it (chunks on other connections), and their
    /// refusals arrive in any order: each marks its key refused, and moves
    /// the choice on only if requests still carry that key.
    pub fn refused(&self, index: usize) -> AfterRefusal {
        let count = self.ring.keys.len();
        match self.opened_by.load(Ordering::Acquire) {
            usize::MAX => {}
            // A request sent with a key since left behind: again, with the
            // key that opened the object.
            opener if opener != index => {
                self.current.store(opener, Ordering::Release);
                return AfterRefusal::TryNext;
            }
            // The key that opened the object is refused later: not a
            // question of which key (a denial); nothing to try.
            _ => {
                return AfterRefusal::Fail(format!(
                    "B2 now refuses the SSE-C key (key MD5 {}) it sent this object's bytes for",
                    self.ring.keys[index].md5_base64()
                ));
            }
        }
        let bit = 1u64 << index;
        let refused = self.refused.fetch_or(bit, Ordering::AcqRel) | bit;
        let next = (1..count)
            .map(|step| (index + step) % count)
            .find(|&candidate| refused & (1u64 << candidate) == 0);
        let Some(next) = next else {
            return AfterRefusal::Fail(self.ring.all_refused());
        };
        // Fails when another refusal already moved it on: that is the key
        // to carry now.
        for from in [index, UNCHOSEN] {
            if self
                .current
                .compare_exchange(from, next, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                break;
            }
        }
        AfterRefusal::TryNext
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn key(byte: u8) -> CustomerKey {
        CustomerKey::from_bytes(&[byte; 32])
    }

    fn ring(count: u8) -> Arc<Keyring> {
        Arc::new(Keyring::new((1..=count).map(key).collect()).unwrap())
    }

    #[test]
    fn a_ring_takes_each_key_once_and_at_most_the_bound() {
        let ring = Keyring::new(vec![key(1), key(2), key(1)]).unwrap();
        assert_eq!(ring.keys(), &[key(1), key(2)]);
        assert_eq!(ring.by_md5(key(2).md5_base64()), Some(1));
        assert_eq!(ring.by_md5(key(3).md5_base64()), None);
        assert!(Keyring::new(Vec::new()).is_err());
        let too_many: Vec<CustomerKey> = (0..=SSE_C_KEYS_MAX as u8).map(key).collect();
        let refused = Keyring::new(too_many).unwrap_err();
        assert!(refused.contains("at most 64"), "{refused}");
    }

    #[test]
    fn refusals_walk_every_key_once_then_fail_naming_each_md5() {
        let ring = ring(3);
        let choice = KeyChoice::new(Arc::clone(&ring), None);
        assert_eq!(choice.current().0, 0);
        assert_eq!(choice.refused(0), AfterRefusal::TryNext);
        assert_eq!(choice.current().0, 1);
        assert_eq!(choice.refused(1), AfterRefusal::TryNext);
        assert_eq!(choice.current().0, 2);
        let AfterRefusal::Fail(why) = choice.refused(2) else {
            panic!("every key was refused")
        };
        assert!(why.contains("each of the 3 SSE-C keys"), "{why}");
        for key in ring.keys() {
            assert!(why.contains(key.md5_base64()), "{why}");
        }
    }

    #[test]
    fn one_key_refused_fails_as_before() {
        let ring = ring(1);
        let choice = KeyChoice::new(Arc::clone(&ring), None);
        assert_eq!(
            choice.refused(0),
            AfterRefusal::Fail(ring.keys()[0].refused())
        );
    }

    #[test]
    fn late_refusals_of_a_key_left_behind_do_not_skip_the_next() {
        // Four chunks went out with key 0; their refusals come in one by one.
        let ring = ring(3);
        let choice = KeyChoice::new(ring, None);
        assert_eq!(choice.refused(0), AfterRefusal::TryNext);
        for _ in 0..3 {
            assert_eq!(choice.refused(0), AfterRefusal::TryNext);
            assert_eq!(choice.current().0, 1);
        }
        choice.opened(1);
        assert_eq!(choice.current().0, 1);
    }

    #[test]
    fn the_next_object_starts_from_the_key_that_opened_the_last() {
        let ring = ring(3);
        let first = KeyChoice::new(Arc::clone(&ring), None);
        first.refused(0);
        first.refused(1);
        first.opened(2);
        let second = KeyChoice::new(Arc::clone(&ring), None);
        assert_eq!(second.current().0, 2);
        // It walks on from there, wrapping around.
        assert_eq!(second.refused(2), AfterRefusal::TryNext);
        assert_eq!(second.current().0, 0);
    }

    #[test]
    fn the_guess_is_made_at_the_first_request_not_when_queued() {
        let ring = ring(2);
        let queued = KeyChoice::new(Arc::clone(&ring), None);
        let earlier = KeyChoice::new(Arc::clone(&ring), None);
        earlier.refused(0);
        earlier.opened(1);
        assert_eq!(queued.current().0, 1);
    }

    #[test]
    fn a_key_id_seen_before_starts_with_its_key() {
        let ring = ring(3);
        let a = KeyChoice::new(Arc::clone(&ring), Some("key-a"));
        a.refused(0);
        a.opened(1);
        let b = KeyChoice::new(Arc::clone(&ring), Some("key-b"));
        b.refused(1);
        b.opened(2);
        assert_eq!(
            KeyChoice::new(Arc::clone(&ring), Some("key-a")).current().0,
            1
        );
        assert_eq!(
            KeyChoice::new(Arc::clone(&ring), Some("key-b")).current().0,
            2
        );
        // An ID not seen yet starts from the first key no other ID has;
        // no ID, from the key that last opened an object.
        assert_eq!(
            KeyChoice::new(Arc::clone(&ring), Some("key-c")).current().0,
            0
        );
        assert_eq!(KeyChoice::new(Arc::clone(&ring), None).current().0, 2);
        let d = KeyChoice::new(Arc::clone(&ring), Some("key-d"));
        d.opened(0);
        // Every key has an ID now: the last key that opened one.
        assert_eq!(
            KeyChoice::new(Arc::clone(&ring), Some("key-e")).current().0,
            0
        );
        // Empty and overlong IDs are no hint.
        let long = "x".repeat(SSE_C_KEY_ID_MAX_BYTES + 1);
        let c = KeyChoice::new(Arc::clone(&ring), Some(&long));
        c.opened(0);
        assert!(ring.by_key_id.lock().unwrap().len() == 3);
    }

    #[test]
    fn the_key_id_map_is_bounded() {
        let ring = ring(2);
        for n in 0..SSE_C_KEY_IDS_REMEMBERED_MAX + 10 {
            KeyChoice::new(Arc::clone(&ring), Some(&format!("id-{n}"))).opened(1);
        }
        assert_eq!(
            ring.by_key_id.lock().unwrap().len(),
            SSE_C_KEY_IDS_REMEMBERED_MAX
        );
    }

    #[test]
    fn a_refusal_of_the_key_that_opened_the_object_is_final() {
        let ring = ring(2);
        let choice = KeyChoice::new(Arc::clone(&ring), None);
        choice.opened(0);
        let AfterRefusal::Fail(why) = choice.refused(0) else {
            panic!("the key that opened it is refused")
        };
        assert!(why.contains(ring.keys()[0].md5_base64()), "{why}");
        assert!(why.contains("now refuses"), "{why}");
    }

    #[test]
    fn a_key_that_opened_the_object_after_a_refusal_moved_on_is_carried_again() {
        // Chunks A and B carried key 0. A's refusal moved the choice on to
        // key 1 before B's answer (B2 refusing the right key once) opened
        // the object: from then on requests carry key 0 again, and a refusal
        // of key 1 does not loop.
        let ring = ring(2);
        let choice = KeyChoice::new(ring, None);
        assert_eq!(choice.current().0, 0);
        assert_eq!(choice.refused(0), AfterRefusal::TryNext);
        assert_eq!(choice.current().0, 1);
        choice.opened(0);
        assert_eq!(choice.current().0, 0);
        assert_eq!(choice.refused(1), AfterRefusal::TryNext);
        assert_eq!(choice.current().0, 0);
        assert!(matches!(choice.refused(0), AfterRefusal::Fail(_)));
    }

    #[test]
    fn a_late_refusal_after_another_key_opened_the_object_tries_again() {
        // Chunks A and C carried key 0; A's refusal moved on to key 1, which
        // opened the object for chunk B; C's refusal arrives last.
        let ring = ring(3);
        let choice = KeyChoice::new(ring, None);
        assert_eq!(choice.refused(0), AfterRefusal::TryNext);
        choice.opened(1);
        assert_eq!(choice.refused(0), AfterRefusal::TryNext);
        assert_eq!(choice.current().0, 1);
    }

    #[test]
    fn starting_at_a_known_key() {
        let ring = ring(3);
        let choice = KeyChoice::starting_at(Arc::clone(&ring), 2);
        assert_eq!(choice.current().0, 2);
        assert_eq!(choice.refused(2), AfterRefusal::TryNext);
        assert_eq!(choice.current().0, 0);
    }

    proptest::proptest! {
        /// Refusals of any keys in any order, as concurrent requests deliver
        /// them: the choice never carries a refused key while it says to try
        /// another, and fails exactly when every key has been refused.
        #[test]
        fn any_order_of_refusals_is_consistent(
            count in 1u8..6,
            start in 0usize..6,
            order in proptest::collection::vec(0usize..6, 0..30),
        ) {
            let ring = ring(count);
            let count = count as usize;
            let choice = KeyChoice::starting_at(Arc::clone(&ring), start % count);
            let mut refused = std::collections::BTreeSet::new();
            for pick in order {
                // A refusal can only be of a key some request carried: the
                // current one or one refused before.
                let index = if pick % 2 == 0 || refused.is_empty() {
                    choice.current().0
                } else {
                    *refused.iter().nth(pick % refused.len()).unwrap()
                };
                refused.insert(index);
                match choice.refused(index) {
                    AfterRefusal::TryNext => {
                        proptest::prop_assert!(refused.len() < count);
                        proptest::prop_assert!(!refused.contains(&choice.current().0));
                    }
                    AfterRefusal::Fail(_) => {
                        proptest::prop_assert_eq!(refused.len(), count);
                        break;
                    }
                }
            }
        }
    }
}
