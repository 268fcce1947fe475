//! The dice behind injected faults, seeded so that a run can be repeated.
//!
//! Faults hit writes only (PutRecords, PutRecord). ListShards and the Describe calls always
//! answer, so a client can learn the shard map however hostile the run: the point is to
//! exercise the write path's retries, not to stop a producer from starting.

use std::sync::Mutex;
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::FaultConfig;
use super::api::ApiError;

/// What happens to one write request before it is processed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestFault {
    /// Process it normally.
    None,
    /// Answer with this error and write nothing.
    Fail(ApiError),
    /// Wait this long, then process it (and write it, whether or not the client still
    /// waits for the answer).
    Delay(Duration),
}

pub struct Faults {
    config: FaultConfig,
    /// Request-level dice. Record-level dice live with the stream, under its lock.
    rng: Mutex<SmallRng>,
}

impl Faults {
    pub fn new(config: &FaultConfig) -> Self {
        Self { config: config.clone(), rng: Mutex::new(SmallRng::seed_from_u64(config.seed)) }
    }

    pub fn config(&self) -> &FaultConfig {
        &self.config
    }

    /// Rolls for one write request: an error, a delay, or nothing.
    pub fn roll_request(&self) -> RequestFault {
        let c = &self.config;
        if c.error_rate == 0.0 && c.slow_rate == 0.0 {
            return RequestFault::None;
        }
        let mut rng = super::lock(&self.rng);
        if rng.random::<f64>() < c.error_rate {
            // Half and half, as an overloaded service answers either way.
            return RequestFault::Fail(if rng.random::<bool>() {
                ApiError::InternalFailure("Internal service failure (injected).".into())
            } else {
                ApiError::ServiceUnavailable("Service unavailable (injected).".into())
            });
        }
        if rng.random::<f64>() < c.slow_rate {
            return RequestFault::Delay(c.slow_delay);
        }
        RequestFault::None
    }

    /// Whether a record fails with `InternalFailure`, on the stream's dice.
    pub fn roll_record(&self, rng: &mut SmallRng) -> bool {
        self.config.fail_rate > 0.0 && rng.random::<f64>() < self.config.fail_rate
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn faults(error_rate: f64, slow_rate: f64) -> Faults {
        Faults::new(&FaultConfig { error_rate, slow_rate, seed: 42, ..FaultConfig::default() })
    }

    #[test]
    fn no_rates_no_faults() {
        let f = faults(0.0, 0.0);
        assert!((0..1000).all(|_| f.roll_request() == RequestFault::None));
        let mut rng = SmallRng::seed_from_u64(1);
        assert!((0..1000).all(|_| !f.roll_record(&mut rng)));
    }

    #[test]
    fn rates_are_roughly_honoured() {
        let f = faults(0.2, 0.5);
        let rolls: Vec<_> = (0..10_000).map(|_| f.roll_request()).collect();
        let failed = rolls.iter().filter(|r| matches!(r, RequestFault::Fail(_))).count();
        let delayed = rolls.iter().filter(|r| matches!(r, RequestFault::Delay(_))).count();
        // 20% fail; half of the other 80% are delayed.
        assert!((1800..2200).contains(&failed), "{failed}");
        assert!((3700..4300).contains(&delayed), "{delayed}");
        let statuses: std::collections::HashSet<u16> = rolls
            .iter()
            .filter_map(|r| match r {
                RequestFault::Fail(e) => Some(e.status().as_u16()),
                _ => None,
            })
            .collect();
        assert_eq!(statuses, [500, 503].into());
    }

    #[test]
    fn the_same_seed_rolls_the_same() {
        let a: Vec<_> = {
            let f = faults(0.3, 0.3);
            (0..100).map(|_| f.roll_request()).collect()
        };
        let f = faults(0.3, 0.3);
        let b: Vec<_> = (0..100).map(|_| f.roll_request()).collect();
        assert_eq!(a, b);
    }
}
