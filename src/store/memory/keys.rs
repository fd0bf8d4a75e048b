//! Users keyed by a keyed 128-bit hash of their session id, not by the string (see the
//! store's module documentation for why).

use std::hash::{BuildHasher, BuildHasherDefault, Hasher, RandomState};

/// A user as the cache knows it: two independent keyed SipHashes of the session id.
pub(super) type UserKey = u128;

/// Maps session ids to [`UserKey`]s with keys drawn at random for this process.
pub(super) struct UserKeys(RandomState, RandomState);

impl UserKeys {
    pub(super) fn new() -> Self {
        Self(RandomState::new(), RandomState::new())
    }

    pub(super) fn of(&self, user: &str) -> UserKey {
        (u128::from(self.0.hash_one(user)) << 64) | u128::from(self.1.hash_one(user))
    }
}

/// Hashes a [`UserKey`] for moka's table and the held set by folding its two halves.
/// The key already is a keyed hash (secret keys drawn per process), so its bits are uniform
/// and cannot be steered by clients; hashing it again with SipHash only cost time, most of
/// all when moka rehashes its whole table after many users expired.
#[derive(Default)]
pub(super) struct FoldHasher(u64);

impl Hasher for FoldHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write_u128(&mut self, n: u128) {
        self.0 ^= (n as u64) ^ ((n >> 64) as u64);
    }

    /// Not reached for a `UserKey` (a `u128` hashes through `write_u128`); kept correct
    /// for any other input by mixing each 8-byte word in.
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 = (self.0.rotate_left(5) ^ u64::from_le_bytes(word))
                .wrapping_mul(0x517c_c1b7_2722_0a95);
        }
    }
}

pub(super) type UserKeyHash = BuildHasherDefault<FoldHasher>;
