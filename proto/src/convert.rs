//! Wire messages to domain types, once, at the edge.
//!
//! Convention (as in influxdb3's `generated_types`): `TryFrom<pb message>` for the domain type,
//! with [`FieldViolation`] as the error, naming the offending field, so a malformed message fails
//! here and never reaches a role's logic. The domain types live in `common` and know nothing of
//! prost; clients (`client::coordinator`) call these conversions on every answer they receive.

use common::config::ConfigDoc;
use common::experiment::ExperimentSpec;
use common::shard::ShardAddresses;

use crate::{pb, FieldViolation};

impl TryFrom<pb::Experiment> for ExperimentSpec {
    type Error = FieldViolation;

    /// Refuses an empty env id and a config that is not valid TOML.
    fn try_from(e: pb::Experiment) -> Result<ExperimentSpec, FieldViolation> {
        if e.env_id.is_empty() {
            return Err(FieldViolation::new("env_id", "must not be empty"));
        }
        let config = ConfigDoc::parse(&e.config_toml, "the coordinator's experiment")
            .map_err(|err| FieldViolation::new("config_toml", err.to_string()))?;
        Ok(ExperimentSpec {
            env_id: e.env_id,
            seed: e.seed,
            config,
            window_steps: e.window_steps,
            chunk_steps: e.chunk_steps,
            max_in_flight_chunks: e.max_in_flight_chunks,
        })
    }
}

impl TryFrom<pb::ShardMap> for ShardAddresses {
    type Error = FieldViolation;

    /// Slot i must be shard i (the map is indexed by shard id); an empty address is an unserved
    /// slot.
    fn try_from(map: pb::ShardMap) -> Result<ShardAddresses, FieldViolation> {
        let slots = map
            .slots
            .into_iter()
            .enumerate()
            .map(|(i, s)| {
                if s.shard_id as usize != i {
                    return Err(FieldViolation::new(
                        format!("slots[{i}].shard_id"),
                        format!("slot {i} names shard {}", s.shard_id),
                    ));
                }
                Ok((!s.address.is_empty()).then_some(s.address))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(ShardAddresses { version: map.version, slots })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn experiment(env_id: &str, config_toml: &str) -> pb::Experiment {
        pb::Experiment {
            env_id: env_id.into(),
            seed: 7,
            config_toml: config_toml.into(),
            window_steps: 7,
            chunk_steps: 64,
            max_in_flight_chunks: 16,
        }
    }

    #[test]
    fn an_experiment_converts_with_its_config_parsed() {
        let e =
            ExperimentSpec::try_from(experiment("pendulum", "[experiment]\nenv = \"pendulum\"\nseed = 7\n")).unwrap();
        assert_eq!(
            (e.env_id.as_str(), e.seed, e.window_steps, e.chunk_steps, e.max_in_flight_chunks),
            ("pendulum", 7, 7, 64, 16)
        );
        assert_eq!(e.config.experiment().unwrap().env.as_deref(), Some("pendulum"));
    }

    #[test]
    fn a_bad_experiment_names_the_field() {
        assert_eq!(ExperimentSpec::try_from(experiment("", "")).unwrap_err().field, "env_id");
        assert_eq!(ExperimentSpec::try_from(experiment("pendulum", "[experiment")).unwrap_err().field, "config_toml");
    }

    #[test]
    fn a_shard_map_converts_with_unserved_slots_as_none() {
        let slot = |shard_id, address: &str| pb::ShardSlot { shard_id, address: address.into(), node_id: 0 };
        let map = pb::ShardMap { version: 3, slots: vec![slot(0, "127.0.0.1:1"), slot(1, "")] };
        let view = ShardAddresses::try_from(map).unwrap();
        assert_eq!(view.version, 3);
        assert_eq!(
            (view.num_slots(), view.address(0), view.address(1), view.address(2)),
            (2, Some("127.0.0.1:1"), None, None)
        );
        let shuffled = pb::ShardMap { version: 1, slots: vec![slot(1, "a:1"), slot(0, "b:1")] };
        assert_eq!(ShardAddresses::try_from(shuffled).unwrap_err().field, "slots[0].shard_id");
    }
}
