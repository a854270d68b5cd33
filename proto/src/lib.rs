//! Wire types: the `.proto` files under `proto/` and their generated prost/tonic code, plus the
//! checks that turn wire bytes into validated values at the edge. Domain code never sees a prost
//! type; services and clients convert here ([`convert`]).

#[allow(clippy::all, clippy::pedantic)]
pub mod pb {
    tonic::include_proto!("dsm.v1");
}

pub mod convert;
pub mod health;

/// gRPC message limit, both directions, on every channel and server of the `Coordinator` and
/// `Replay` services. Chunks are a few hundred KiB; a 4096-window sample of 50-float observations
/// is about 6 MiB. Set explicitly (tonic's default decoding limit is 4 MiB, which a large sample
/// would exceed), and never near what we send. It belongs to the protocol, not to either end, so
/// servers and clients take it from here.
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// A field that failed validation, named so that a refusal can say exactly what was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {description}")]
pub struct FieldViolation {
    pub field: String,
    pub description: String,
}

impl FieldViolation {
    pub fn new(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self { field: field.into(), description: description.into() }
    }
}

/// Packs f32 values as little-endian bytes (the wire form of observations, actions, rewards).
pub fn pack_f32(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// Unpacks `expected` little-endian f32 values from `field`, refusing a wrong length or a
/// non-finite value (NaN must never reach the replay store).
pub fn unpack_f32(field: &str, bytes: &[u8], expected: usize) -> Result<Vec<f32>, FieldViolation> {
    if bytes.len() != expected * 4 {
        return Err(FieldViolation::new(
            field,
            format!("expected {expected} f32 values ({} bytes), got {} bytes", expected * 4, bytes.len()),
        ));
    }
    let values: Vec<f32> = bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        return Err(FieldViolation::new(field, format!("value {i} is not finite ({})", values[i])));
    }
    Ok(values)
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn chunk_round_trips_through_prost() {
        let obs = [0.5f32, 1.0, -2.0, 3.5];
        let chunk = pb::Chunk {
            stream: Some(pb::StreamId { actor_id: 1, incarnation: 42, env_index: 3 }),
            seq: 7,
            steps: 2,
            observations: pack_f32(&obs),
            step_types: vec![0, 1],
            actions: vec![],
            rewards: vec![],
        };
        let bytes = chunk.encode_to_vec();
        let back = pb::Chunk::decode(bytes.as_slice()).unwrap();
        assert_eq!(back, chunk);
        assert_eq!(unpack_f32("observations", &back.observations, 4).unwrap(), obs);
    }

    #[test]
    fn bad_payloads_name_the_field() {
        let err = unpack_f32("observations", &[0u8; 7], 2).unwrap_err();
        assert_eq!(err.field, "observations");
        assert!(err.description.contains("8 bytes"), "{err}");
        let err = unpack_f32("rewards", &pack_f32(&[1.0, f32::NAN]), 2).unwrap_err();
        assert_eq!(err.field, "rewards");
        assert!(err.description.contains("value 1"), "{err}");
    }
}
