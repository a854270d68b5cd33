//! The typed `[replay]` section: shard layout, table size, windows, chunks and the rate limiter.

use serde::{Deserialize, Serialize};

use common::config::{merge, to_table, typed, ConfigError};

use crate::rate_limiter::{ErrorBuffer, RateLimiter};

/// `[replay]`, with the Conventions' defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplayConfig {
    /// K shard slots, fixed per experiment (streams hash onto them).
    pub shards: u32,
    /// Steps a shard holds before FIFO eviction.
    pub max_size: u64,
    /// Steps per training window (H + 1).
    pub window_steps: u32,
    /// Steps per chunk an actor sends.
    pub chunk_steps: u32,
    /// Unacknowledged chunks an actor may have in flight per shard.
    pub max_in_flight_chunks: u32,
    /// Steps before sampling may start; defaults to one window.
    pub min_size_to_sample: Option<u64>,
    /// Opt-in samples-per-insert limiting: windows sampled per step inserted.
    pub samples_per_insert: Option<f64>,
    /// With `samples_per_insert`: Reverb's error buffer (a number, centred on
    /// spi × min_size), in windows.
    pub error_buffer: Option<f64>,
    /// Lease of a registered node (s); it must heartbeat within this.
    pub lease_seconds: f64,
    /// How often nodes heartbeat (s).
    pub heartbeat_seconds: f64,
    /// How often each shard writes a checkpoint (s); 0 = only on a `Checkpoint` request and at
    /// shutdown. A crash loses at most this much acknowledged data (counted as lost steps).
    pub checkpoint_seconds: f64,
}

impl Default for ReplayConfig {
    fn default() -> Self {
        ReplayConfig {
            shards: 2,
            max_size: 1_000_000,
            window_steps: 7,
            chunk_steps: 64,
            max_in_flight_chunks: 16,
            min_size_to_sample: None,
            samples_per_insert: None,
            error_buffer: None,
            lease_seconds: 10.0,
            heartbeat_seconds: 2.0,
            checkpoint_seconds: 60.0,
        }
    }
}

impl ReplayConfig {
    /// Lays a raw `[replay]` table over the defaults and validates it.
    pub fn resolve(table: &toml::Table) -> Result<ReplayConfig, ConfigError> {
        let mut base = to_table(&ReplayConfig::default());
        merge(&mut base, table);
        let config: ReplayConfig = typed("replay", base)?;
        config.limiter().map_err(|message| ConfigError::Invalid { section: "replay".into(), message })?;
        let bad = |message: String| Err(ConfigError::Invalid { section: "replay".into(), message });
        if config.shards == 0 {
            return bad("replay.shards must be at least 1".into());
        }
        if config.window_steps < 2 {
            return bad(format!("replay.window_steps must be at least 2, got {}", config.window_steps));
        }
        if config.chunk_steps == 0 || config.max_in_flight_chunks == 0 {
            return bad("replay.chunk_steps and replay.max_in_flight_chunks must be at least 1".into());
        }
        if config.max_size < u64::from(config.window_steps) + u64::from(config.chunk_steps) {
            return bad(format!(
                "replay.max_size = {} cannot hold a chunk and a window ({} + {} steps)",
                config.max_size, config.chunk_steps, config.window_steps
            ));
        }
        if !(config.lease_seconds > 0.0
            && config.heartbeat_seconds > 0.0
            && config.heartbeat_seconds < config.lease_seconds)
        {
            return bad("replay.heartbeat_seconds must be positive and shorter than replay.lease_seconds".into());
        }
        if !(config.checkpoint_seconds >= 0.0 && config.checkpoint_seconds.is_finite()) {
            return bad(format!(
                "replay.checkpoint_seconds must be 0 (off) or a positive number of seconds, got {}",
                config.checkpoint_seconds
            ));
        }
        Ok(config)
    }

    /// The rate limiter this config asks for: MinSize(window) by default, Reverb's
    /// SampleToInsertRatio when `samples_per_insert` is set.
    pub fn limiter(&self) -> Result<RateLimiter, String> {
        let min_size = self.min_size_to_sample.unwrap_or(u64::from(self.window_steps));
        match (self.samples_per_insert, self.error_buffer) {
            (None, None) => RateLimiter::min_size(min_size).map_err(|e| format!("replay.min_size_to_sample: {e}")),
            (None, Some(_)) => Err("replay.error_buffer needs replay.samples_per_insert".into()),
            (Some(spi), buffer) => {
                let buffer = buffer.unwrap_or((spi * min_size as f64 * 0.1).max(spi.max(1.0)));
                RateLimiter::sample_to_insert_ratio(spi, min_size, ErrorBuffer::Symmetric(buffer))
                    .map_err(|e| format!("replay.samples_per_insert / replay.error_buffer: {e}"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(text: &str) -> Result<ReplayConfig, ConfigError> {
        ReplayConfig::resolve(&text.parse::<toml::Table>().unwrap())
    }

    #[test]
    fn checkpoint_seconds_defaults_to_a_minute_and_zero_turns_it_off() {
        assert_eq!(resolve("").unwrap().checkpoint_seconds, 60.0);
        assert_eq!(resolve("checkpoint_seconds = 0").unwrap().checkpoint_seconds, 0.0);
        assert_eq!(resolve("checkpoint_seconds = 2.5").unwrap().checkpoint_seconds, 2.5);
        let err = resolve("checkpoint_seconds = -1").unwrap_err().to_string();
        assert!(err.contains("replay.checkpoint_seconds"), "{err}");
    }
}
