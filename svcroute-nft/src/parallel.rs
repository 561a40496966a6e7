//! Work spread over the cores: pieces of a slice, taken by whichever thread is free, so that
//! a core busy with something else holds back no more than one piece.

use std::sync::atomic::{AtomicUsize, Ordering};

/// The number of threads worth starting for `pieces` pieces of work.
pub(crate) fn threads_for(pieces: usize) -> usize {
    std::thread::available_parallelism()
        .map_or(1, usize::from)
        .min(pieces)
        .max(1)
}

/// Folds `items`, cut in pieces of `piece` items, on up to [`threads_for`] threads: each
/// thread starts from `init()`, folds the pieces it takes into it and returns
/// `finish(accumulator)`. Which thread folds which pieces is up to timing: `fold` must not
/// depend on their order. This thread works too.
pub(crate) fn fold_pieces<T, A, R>(
    items: &[T],
    piece: usize,
    init: impl Fn() -> A + Sync,
    fold: impl Fn(&mut A, &[T]) + Sync,
    finish: impl Fn(A) -> R + Sync,
) -> Vec<R>
where
    T: Sync,
    R: Send,
{
    let pieces: Vec<&[T]> = items.chunks(piece.max(1)).collect();
    let next = AtomicUsize::new(0);
    let work = || {
        let mut acc = init();
        while let Some(piece) = pieces.get(next.fetch_add(1, Ordering::Relaxed)) {
            fold(&mut acc, piece);
        }
        finish(acc)
    };
    let threads = threads_for(pieces.len());
    if threads == 1 {
        return vec![work()];
    }
    std::thread::scope(|scope| {
        let handles: Vec<_> = (1..threads).map(|_| scope.spawn(work)).collect();
        let mut done = vec![work()];
        // A panic on another thread is a bug; re-raise it rather than lose its work.
        done.extend(
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e))),
        );
        done
    })
}

/// Runs `a` and `b`, on two threads when `parallel`.
pub(crate) fn join<A: Send, B>(
    parallel: bool,
    a: impl FnOnce() -> A + Send,
    b: impl FnOnce() -> B,
) -> (A, B) {
    if !parallel {
        return (a(), b());
    }
    std::thread::scope(|scope| {
        let a = scope.spawn(a);
        let b = b();
        // A panic on the other thread is a bug; re-raise it here.
        (a.join().unwrap_or_else(|e| std::panic::resume_unwind(e)), b)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_piece_is_folded_once() {
        let items: Vec<u64> = (1..=10_000).collect();
        for piece in [1, 7, 1000, 20_000] {
            let sums = fold_pieces(
                &items,
                piece,
                || 0,
                |s, p| *s += p.iter().sum::<u64>(),
                |s| s,
            );
            assert!(sums.len() <= threads_for(items.len().div_ceil(piece)));
            assert_eq!(sums.iter().sum::<u64>(), 10_000 * 10_001 / 2);
        }
        let none: Vec<u64> = fold_pieces(&[], 10, || 0, |s, p: &[u64]| *s += p.len() as u64, |s| s);
        assert_eq!(none, [0]);
    }

    #[test]
    fn join_runs_both() {
        for parallel in [false, true] {
            assert_eq!(join(parallel, || 1, || 2), (1, 2));
        }
    }
}
