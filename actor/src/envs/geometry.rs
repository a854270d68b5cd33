//! Plane geometry: 2-vectors, segments, crossing tests and nearest-point vectors.
//!
//! These follow RatInABox's `utils.py` (v1.15.3): `vector_intercepts` (strict crossing),
//! `shortest_vectors_from_points_to_lines`, `wall_bounce`, `rotate`, `get_angle` and `pi_domain`.
//! RatInABox adds N(0, 1e-9) jitter to segments before the crossing test and N(0, 1e-6) to points
//! before the nearest-wall vectors, to dodge exact degeneracies. We drop both: they change no
//! statistic, and the degenerate cases are handled explicitly instead (parallel segments never
//! cross; a point exactly on a wall gets no repulsion from it).

use std::f64::consts::{PI, TAU};
use std::ops::{Add, AddAssign, Div, Mul, Neg, Sub, SubAssign};

/// A point or vector in the plane (metres, or metres per second).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Vec2 {
    pub x: f64,
    pub y: f64,
}

impl Vec2 {
    pub const ZERO: Vec2 = Vec2 { x: 0.0, y: 0.0 };

    pub const fn new(x: f64, y: f64) -> Self {
        Self { x, y }
    }

    pub fn dot(self, o: Vec2) -> f64 {
        self.x * o.x + self.y * o.y
    }

    /// The z component of the 3-D cross product.
    pub fn cross(self, o: Vec2) -> f64 {
        self.x * o.y - self.y * o.x
    }

    pub fn norm2(self) -> f64 {
        self.dot(self)
    }

    pub fn norm(self) -> f64 {
        self.norm2().sqrt()
    }

    /// Rotates anticlockwise by `theta` radians (`utils.rotate`).
    pub fn rotate(self, theta: f64) -> Vec2 {
        let (s, c) = theta.sin_cos();
        Vec2::new(c * self.x - s * self.y, s * self.x + c * self.y)
    }

    /// Heading in [0, 2π), as RatInABox's `get_angle`: `atan2(y, x + 1e-6) mod 2π`. The 1e-6 is
    /// the reference's own guard and is kept because measured rotational velocity is built on it.
    pub fn angle(self) -> f64 {
        self.y.atan2(self.x + 1e-6).rem_euclid(TAU)
    }

    /// A perpendicular (rotated by +90°).
    pub fn perp(self) -> Vec2 {
        Vec2::new(-self.y, self.x)
    }
}

impl Add for Vec2 {
    type Output = Vec2;
    fn add(self, o: Vec2) -> Vec2 {
        Vec2::new(self.x + o.x, self.y + o.y)
    }
}
impl AddAssign for Vec2 {
    fn add_assign(&mut self, o: Vec2) {
        self.x += o.x;
        self.y += o.y;
    }
}
impl Sub for Vec2 {
    type Output = Vec2;
    fn sub(self, o: Vec2) -> Vec2 {
        Vec2::new(self.x - o.x, self.y - o.y)
    }
}
impl SubAssign for Vec2 {
    fn sub_assign(&mut self, o: Vec2) {
        self.x -= o.x;
        self.y -= o.y;
    }
}
impl Mul<f64> for Vec2 {
    type Output = Vec2;
    fn mul(self, k: f64) -> Vec2 {
        Vec2::new(self.x * k, self.y * k)
    }
}
impl Div<f64> for Vec2 {
    type Output = Vec2;
    fn div(self, k: f64) -> Vec2 {
        Vec2::new(self.x / k, self.y / k)
    }
}
impl Neg for Vec2 {
    type Output = Vec2;
    fn neg(self) -> Vec2 {
        Vec2::new(-self.x, -self.y)
    }
}

/// A wall or a step: the straight segment from `a` to `b`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Segment {
    pub a: Vec2,
    pub b: Vec2,
}

impl Segment {
    pub const fn new(a: Vec2, b: Vec2) -> Self {
        Self { a, b }
    }

    /// Whether the two segments cross, with RatInABox's strict rule: the intersection parameters
    /// of the two infinite lines must both lie in the *open* interval (0, 1). Touching at an end
    /// point, or running parallel, is not a crossing.
    pub fn crosses(&self, other: &Segment) -> bool {
        let d1 = self.b - self.a;
        let d2 = other.b - other.a;
        let denom = d1.cross(d2);
        if denom == 0.0 {
            return false;
        }
        let w = other.a - self.a;
        let la = w.cross(d2) / denom;
        let lb = w.cross(d1) / denom;
        la > 0.0 && la < 1.0 && lb > 0.0 && lb < 1.0
    }

    /// The vector from the nearest point of the segment to `p` (the segment parameter is clamped
    /// to [0, 1]): it points away from the wall, and its length is the distance.
    pub fn vector_to(&self, p: Vec2) -> Vec2 {
        let d = self.b - self.a;
        let len2 = d.norm2();
        let t = if len2 > 0.0 { ((p - self.a).dot(d) / len2).clamp(0.0, 1.0) } else { 0.0 };
        p - (self.a + d * t)
    }

    /// Reflects `v` off this wall: the component along the wall is kept and the normal one flips
    /// (`utils.wall_bounce`).
    pub fn bounce(&self, v: Vec2) -> Vec2 {
        let par = self.b - self.a;
        let len = par.norm();
        let par = par / len;
        let perp = par.perp();
        par * v.dot(par) - perp * v.dot(perp)
    }
}

/// Wraps an angle difference into (−π, π] (`utils.pi_domain`).
pub fn pi_domain(x: f64) -> f64 {
    let y = (x + PI).rem_euclid(TAU) - PI;
    if y == -PI {
        PI
    } else {
        y
    }
}

/// Whether `p` is strictly inside the simple polygon `poly` (points on an edge are outside, as
/// with shapely's `contains`, which RatInABox uses).
pub fn polygon_contains_strictly(poly: &[Vec2], p: Vec2) -> bool {
    let n = poly.len();
    let mut inside = false;
    for i in 0..n {
        let a = poly[i];
        let b = poly[(i + 1) % n];
        // On the edge → outside.
        let ab = b - a;
        let ap = p - a;
        if ab.cross(ap) == 0.0 && ap.dot(ab) >= 0.0 && ap.dot(ab) <= ab.norm2() {
            return false;
        }
        if (a.y > p.y) != (b.y > p.y) {
            let x_at = a.x + (p.y - a.y) / (b.y - a.y) * (b.x - a.x);
            if p.x < x_at {
                inside = !inside;
            }
        }
    }
    inside
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(ax: f64, ay: f64, bx: f64, by: f64) -> Segment {
        Segment::new(Vec2::new(ax, ay), Vec2::new(bx, by))
    }

    #[test]
    fn crossing_is_strict() {
        let wall = seg(0.4, 0.0, 0.4, 0.9);
        assert!(wall.crosses(&seg(0.3, 0.5, 0.5, 0.5)));
        assert!(seg(0.3, 0.5, 0.5, 0.5).crosses(&wall));
        // Stops exactly on the wall, passes above its end, or runs parallel: no crossing.
        assert!(!wall.crosses(&seg(0.3, 0.5, 0.4, 0.5)));
        assert!(!wall.crosses(&seg(0.3, 0.95, 0.5, 0.95)));
        assert!(!wall.crosses(&seg(0.3, 0.0, 0.3, 0.9)));
        // Through the end point exactly: not strictly inside (0, 1).
        assert!(!wall.crosses(&seg(0.3, 0.9, 0.5, 0.9)));
    }

    #[test]
    fn vector_to_segment_clamps_to_the_ends() {
        let wall = seg(0.0, 0.0, 1.0, 0.0);
        assert_eq!(wall.vector_to(Vec2::new(0.5, 0.2)), Vec2::new(0.0, 0.2));
        let v = wall.vector_to(Vec2::new(1.3, 0.4));
        assert!((v.x - 0.3).abs() < 1e-12 && (v.y - 0.4).abs() < 1e-12);
        assert_eq!(wall.vector_to(Vec2::new(-1.0, 0.0)), Vec2::new(-1.0, 0.0));
    }

    #[test]
    fn bounce_flips_the_normal_component_only() {
        let wall = seg(0.0, 0.0, 0.0, 1.0);
        let v = wall.bounce(Vec2::new(0.3, -0.1));
        assert!((v.x + 0.3).abs() < 1e-15 && (v.y + 0.1).abs() < 1e-15);
        let diag = seg(0.0, 0.0, 1.0, 1.0);
        let v = diag.bounce(Vec2::new(1.0, 0.0));
        assert!(v.x.abs() < 1e-15 && (v.y - 1.0).abs() < 1e-15);
    }

    #[test]
    fn angles_and_pi_domain() {
        assert!((Vec2::new(0.0, 1.0).angle() - PI / 2.0).abs() < 1e-5);
        assert!((Vec2::new(0.0, -1.0).angle() - 3.0 * PI / 2.0).abs() < 1e-5);
        assert!((pi_domain(3.0 * PI / 2.0) + PI / 2.0).abs() < 1e-12);
        assert!((pi_domain(-3.0 * PI / 2.0) - PI / 2.0).abs() < 1e-12);
        assert_eq!(pi_domain(PI), PI);
        let r = Vec2::new(1.0, 0.0).rotate(PI / 2.0);
        assert!(r.x.abs() < 1e-15 && (r.y - 1.0).abs() < 1e-15);
    }

    #[test]
    fn polygon_containment_excludes_edges() {
        let sq = [Vec2::new(0.0, 0.0), Vec2::new(1.0, 0.0), Vec2::new(1.0, 1.0), Vec2::new(0.0, 1.0)];
        assert!(polygon_contains_strictly(&sq, Vec2::new(0.5, 0.5)));
        assert!(!polygon_contains_strictly(&sq, Vec2::new(0.4, 0.0)));
        assert!(!polygon_contains_strictly(&sq, Vec2::new(1.0, 0.3)));
        assert!(!polygon_contains_strictly(&sq, Vec2::new(1.2, 0.3)));
        let l = [
            Vec2::new(0.0, 0.0),
            Vec2::new(2.0, 0.0),
            Vec2::new(2.0, 1.0),
            Vec2::new(1.0, 1.0),
            Vec2::new(1.0, 2.0),
            Vec2::new(0.0, 2.0),
        ];
        assert!(polygon_contains_strictly(&l, Vec2::new(0.5, 1.5)));
        assert!(!polygon_contains_strictly(&l, Vec2::new(1.5, 1.5)));
    }
}
