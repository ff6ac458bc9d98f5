//! The hit/miss totals the admin route reports.

use serde::Serialize;

/// Hit and miss totals, shared by every instance.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct CacheMetrics {
    /// Reads answered with a cached profile or document.
    pub hits: u64,
    /// Every other read (including not-found answers, tombstoned or not).
    pub misses: u64,
    /// `hits + misses`.
    pub total: u64,
    /// Percent of reads that were hits, 2 decimals; 0.0 when there were none.
    pub hit_rate: f64,
}

impl CacheMetrics {
    /// Totals from counts.
    pub fn from_counts(hits: u64, misses: u64) -> Self {
        let total = hits + misses;
        let hit_rate = if total == 0 {
            0.0
        } else {
            (hits as f64 * 10_000.0 / total as f64).round() / 100.0
        };
        Self {
            hits,
            misses,
            total,
            hit_rate,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hit_rate_has_two_decimals() {
        assert_eq!(CacheMetrics::from_counts(7, 1).hit_rate, 87.5);
        assert_eq!(CacheMetrics::from_counts(1, 2).hit_rate, 33.33);
        assert_eq!(CacheMetrics::from_counts(0, 0).hit_rate, 0.0);
    }
}
