//! Decoding a place-cell vector to a position: the nearest neighbour, in rate space, among the
//! true (noise-free) population vectors on a fine grid of positions inside the arena.
//!
//! The thesis decoded with a small trained network (`dsm-algorithm.md` §8.4); a nearest
//! neighbour on the true rate maps needs no training, is exact on the grid, and its error on
//! true vectors is bounded by the grid (half a bin's diagonal when the rate maps are locally
//! monotone): the report states the error it measures. A predicted vector off the manifold of
//! true vectors decodes to the position whose true vector is closest to it.
//!
//! The search is a matrix product: `argmin_g ‖q − t_g‖² = argmin_g (‖t_g‖² − 2 q·t_g)`.

use anyhow::Result;

use actor::envs::arena::Arena;
use actor::envs::place_cells::PlaceCells;

use super::grid::Grid;
use crate::fused::matmul;

/// Queries per matrix product: bounds the score buffer (QUERY_CHUNK × positions floats).
const QUERY_CHUNK: usize = 256;

pub struct Decoder {
    cells: usize,
    /// Candidate positions.
    positions: Vec<[f64; 2]>,
    /// `[positions × cells]`, row-major.
    table: Vec<f32>,
    norms: Vec<f32>,
}

impl Decoder {
    /// The decoder over the centres of a `dx` grid inside `arena`.
    pub fn new(cells: &PlaceCells, arena: &Arena, dx: f64) -> Result<Decoder> {
        let grid = Grid::over(arena, dx)?;
        let n = cells.len();
        let positions: Vec<[f64; 2]> =
            grid.inside_bins().into_iter().map(|k| grid.centre(k)).map(|c| [c.x, c.y]).collect();
        let mut table = vec![0.0f32; positions.len() * n];
        let mut rates = vec![0.0; n];
        for (row, p) in table.chunks_mut(n).zip(&positions) {
            cells.rates_at(arena, actor::envs::geometry::Vec2::new(p[0], p[1]), &mut rates);
            for (t, r) in row.iter_mut().zip(&rates) {
                *t = *r as f32;
            }
        }
        let norms = table.chunks(n).map(|row| row.iter().map(|v| v * v).sum()).collect();
        Ok(Decoder { cells: n, positions, table, norms })
    }

    pub fn cells(&self) -> usize {
        self.cells
    }

    /// The decoded position of each of the vectors in `queries` (`[q × cells]`).
    pub fn decode(&self, queries: &[f32]) -> Vec<[f64; 2]> {
        let n = self.cells;
        assert_eq!(queries.len() % n, 0, "queries hold whole {n}-cell vectors");
        let q = queries.len() / n;
        let p = self.positions.len();
        let mut scores = vec![0.0f32; QUERY_CHUNK.min(q.max(1)) * p];
        let mut out = Vec::with_capacity(q);
        for chunk in queries.chunks(QUERY_CHUNK * n) {
            let m = chunk.len() / n;
            let s = &mut scores[..m * p];
            matmul::mm_nt(m, n, p, chunk, &self.table, s, false);
            for row in s.chunks(p) {
                let mut best = (f32::INFINITY, 0);
                for (g, (dot, norm)) in row.iter().zip(&self.norms).enumerate() {
                    let d = norm - 2.0 * dot;
                    if d < best.0 {
                        best = (d, g);
                    }
                }
                out.push(self.positions[best.1]);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actor::envs::config::{EnvConfig, EnvId};
    use actor::envs::geometry::Vec2;
    use actor::envs::riab::experiment_cells;
    use common::rng;

    /// True vectors at random positions decode to within the 1 cm grid's half diagonal (0.71 cm)
    /// on average and within 1.5 cm at worst, in the open box and beside the walls env's wall.
    #[test]
    fn true_vectors_decode_to_within_the_grid() {
        for id in [EnvId::RiabRandom, EnvId::RiabWalls] {
            let EnvConfig::Riab(c) = EnvConfig::defaults(id) else { unreachable!() };
            let arena = Arena::new(&c.arena);
            let cells = experiment_cells(&c, &arena, 0);
            let decoder = Decoder::new(&cells, &arena, 0.01).unwrap();
            let mut r = rng::stream(1, &["decode".into()]);
            let points: Vec<Vec2> = (0..500).map(|_| arena.sample_random(&mut r)).collect();
            let mut queries = Vec::new();
            let mut rates = vec![0.0; cells.len()];
            for p in &points {
                cells.rates_at(&arena, *p, &mut rates);
                queries.extend(rates.iter().map(|&v| v as f32));
            }
            let decoded = decoder.decode(&queries);
            let errors: Vec<f64> = points.iter().zip(&decoded).map(|(p, d)| (p.x - d[0]).hypot(p.y - d[1])).collect();
            let mean = errors.iter().sum::<f64>() / errors.len() as f64;
            let max = errors.iter().cloned().fold(0.0, f64::max);
            assert!(mean < 0.0071 && max < 0.015, "{}: mean {mean}, max {max}", id.as_str());
            // A grid point decodes to itself.
            let at = decoder.positions[123];
            cells.rates_at(&arena, Vec2::new(at[0], at[1]), &mut rates);
            let q: Vec<f32> = rates.iter().map(|&v| v as f32).collect();
            assert_eq!(decoder.decode(&q), vec![at]);
        }
    }
}
