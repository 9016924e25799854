//! Values that record their own release, so tests can tell "freed under a guard" and
//! "freed twice" and "never freed" apart.

#![allow(dead_code)]

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

/// How many times each value was dropped, by id.
pub struct Book {
    drops: Vec<AtomicU32>,
}

impl Book {
    pub fn new(values: usize) -> Arc<Book> {
        Arc::new(Book {
            drops: (0..values).map(|_| AtomicU32::new(0)).collect(),
        })
    }

    pub fn value(self: &Arc<Book>, id: usize) -> Arc<Tracked> {
        Arc::new(Tracked {
            id,
            book: self.clone(),
        })
    }

    pub fn drops(&self, id: usize) -> u32 {
        self.drops[id].load(Ordering::SeqCst)
    }

    /// Ids in `0..n` not dropped exactly once.
    pub fn not_freed_once(&self, n: usize) -> Vec<(usize, u32)> {
        (0..n)
            .map(|id| (id, self.drops(id)))
            .filter(|&(_, d)| d != 1)
            .collect()
    }
}

/// A value that counts its drop in its book.
pub struct Tracked {
    pub id: usize,
    book: Arc<Book>,
}

impl Tracked {
    /// Panics if this value was already dropped: a use after free.
    pub fn check_alive(&self, book: &Book) {
        let id = self.id;
        assert_eq!(
            book.drops(id),
            0,
            "value {id} was freed while a guard held it"
        );
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.book.drops[self.id].fetch_add(1, Ordering::SeqCst);
    }
}

/// A small fast generator (xorshift64*), so a failing sequence can be replayed from its seed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Scales a loop count: `SWAPKIT_STRESS` multiplies it (the long form), Miri divides it.
pub fn scaled(n: usize) -> usize {
    let factor: usize = std::env::var("SWAPKIT_STRESS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    if cfg!(miri) {
        (n / 200).max(4)
    } else {
        n * factor
    }
}
