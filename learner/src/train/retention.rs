//! Which checkpoints a learner keeps: the newest `train.keep_checkpoints`, and on top of them
//! every version no evaluator has finished yet, up to `train.keep_unevaluated` of them — so an
//! evaluator that falls behind still finds the files of the versions it has not reached. Older
//! unevaluated versions go (the registry records them as skipped); a version an evaluator holds a
//! claim on stays until that evaluation ends.

/// Where a version's evaluation stands, as far as the learner knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Evaluated {
    /// Evaluated or skipped: its files are no longer needed by anyone.
    Final,
    /// An evaluator is evaluating it now.
    Claimed,
    /// Not evaluated yet (or not yet in the registry).
    No,
}

/// What to do with one complete checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    Keep,
    /// Delete it: it is evaluated or superseded.
    Delete,
    /// Delete it, after recording it as skipped (it was never evaluated).
    Skip,
}

/// The fate of each of `steps` (complete checkpoints, oldest first).
pub fn fates(steps: &[u64], keep: usize, keep_unevaluated: usize, state: impl Fn(u64) -> Evaluated) -> Vec<Fate> {
    let n = steps.len();
    let newest = n.saturating_sub(keep.max(1));
    let mut fates = vec![Fate::Keep; n];
    let mut unevaluated_kept = 0;
    for i in (0..newest).rev() {
        fates[i] = match state(steps[i]) {
            Evaluated::Final => Fate::Delete,
            Evaluated::Claimed => Fate::Keep,
            Evaluated::No if unevaluated_kept < keep_unevaluated => {
                unevaluated_kept += 1;
                Fate::Keep
            }
            Evaluated::No => Fate::Skip,
        };
    }
    fates
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newest_kept_then_unevaluated_up_to_the_limit() {
        let steps: Vec<u64> = (1..=8).collect();
        // Without a registry (every version unevaluated, none extra kept): the newest 3.
        let f = fates(&steps, 3, 0, |_| Evaluated::No);
        assert_eq!(f.iter().filter(|f| **f == Fate::Keep).count(), 3);
        assert!(f[..5].iter().all(|f| *f == Fate::Skip));
        // 1–2 evaluated, 3 being evaluated, 4–5 not yet: keep 2 unevaluated (4, 5), skip none.
        let state = |s: u64| match s {
            1 | 2 => Evaluated::Final,
            3 => Evaluated::Claimed,
            _ => Evaluated::No,
        };
        assert_eq!(
            fates(&steps, 3, 2, state),
            [Fate::Delete, Fate::Delete, Fate::Keep, Fate::Keep, Fate::Keep, Fate::Keep, Fate::Keep, Fate::Keep]
        );
        // With room for one unevaluated version, the newest (5) stays and 4 is skipped.
        assert_eq!(fates(&steps, 3, 1, state)[3..5], [Fate::Skip, Fate::Keep]);
        // Fewer checkpoints than `keep`: all stay.
        assert_eq!(fates(&steps[..2], 3, 0, |_| Evaluated::Final), [Fate::Keep, Fate::Keep]);
    }
}
