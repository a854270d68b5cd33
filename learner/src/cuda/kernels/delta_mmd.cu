// The δ-model loss of every batch row, forward and backward (the CUDA form of `fused::mmd::
// delta_row`; dsm-algorithm.md §3.5), in three launches:
//
// 1. delta_pair_sums: one thread per (row, matrix, atom a, atom c) sums the inner kernel over the
//    I×I sample pairs of the block (the x–x and y–y matrices above the diagonal only, as the CPU
//    engine does);
// 2. delta_outer: one thread per row turns the block sums into the clipped inner MMD²_U, takes the
//    median bandwidth by selection, evaluates the outer V-statistic L_b and writes the per-block
//    gradient weights;
// 3. delta_pull: one thread per (row, side, point) pulls its point by every pair it is in, the
//    kernel's derivative recomputed rather than stored (storing k′ of every pair would take
//    B·2P² floats, over a GB at the Pendulum size).
//
// Layouts: xe, ye [B][P][E] (P = O·I, atom-major within a row); sums and weights [B][3][O][O]
// (xx, yy, xy; the xx and yy blocks hold a ≤ c only); scratch [B][3·O²] and [B][2·O(O−1)+O²].

DSM_DEV float dsm_sq_dist(const float* DSM_RESTRICT a, const float* DSM_RESTRICT b) {
    float d = 0.0f;
    for (uint32_t k = 0; k < DSM_EMBED; ++k) {
        float t = a[k] - b[k];
        d += t * t;
    }
    return d;
}

// k[j], dk[j] = the inner (or outer) kernel and its derivative at d[j]: for checking the generated
// kernels against `FusedKernel::eval`.
DSM_KERNEL(eval_inner_kernel)(uint32_t n, const float* DSM_RESTRICT d, float* DSM_RESTRICT k, float* DSM_RESTRICT dk) {
    DSM_FOR(j, n) { inner_kernel(d[j], &k[j], &dk[j]); }
}

DSM_KERNEL(eval_outer_kernel)(uint32_t n, const float* DSM_RESTRICT d, float* DSM_RESTRICT k, float* DSM_RESTRICT dk) {
    DSM_FOR(j, n) { outer_kernel(d[j], &k[j], &dk[j]); }
}

DSM_KERNEL(delta_pair_sums)(uint32_t rows, uint32_t o, uint32_t inner, const float* DSM_RESTRICT xe,
                            const float* DSM_RESTRICT ye, float* DSM_RESTRICT sums) {
    uint32_t oo = o * o;
    DSM_FOR(t, rows * 3 * oo) {
        uint32_t b = t / (3 * oo), rem = t % (3 * oo);
        uint32_t m = rem / oo, a = (rem % oo) / o, c = rem % o;
        if (m < 2 && c < a) {
            sums[t] = 0.0f;
            continue;
        }
        uint64_t row = (uint64_t)b * o * inner;
        const float* lhs = (m == 1 ? ye : xe) + (row + (uint64_t)a * inner) * DSM_EMBED;
        const float* rhs = (m == 0 ? xe : ye) + (row + (uint64_t)c * inner) * DSM_EMBED;
        int triangle = m < 2 && a == c;
        float total = 0.0f;
        for (uint32_t p = 0; p < inner; ++p) {
            float part = 0.0f;
            for (uint32_t q = triangle ? p + 1 : 0; q < inner; ++q) {
                float k, dk;
                inner_kernel(dsm_sq_dist(lhs + p * DSM_EMBED, rhs + q * DSM_EMBED), &k, &dk);
                part += k;
            }
            total += part;
        }
        sums[t] = total;
    }
}

DSM_DEV void dsm_swap(float* v, int a, int b) {
    float t = v[a];
    v[a] = v[b];
    v[b] = t;
}

// Reorders v[0..n) so that v[k] holds the k-th smallest, nothing before it larger and nothing
// after it smaller (Wirth's quickselect; the values are finite, or the loss is NaN anyway).
DSM_DEV void dsm_select(float* v, int n, int k) {
    int lo = 0, hi = n - 1;
    while (lo < hi) {
        float pivot = v[lo + (hi - lo) / 2];
        int i = lo, j = hi;
        do {
            while (v[i] < pivot) ++i;
            while (pivot < v[j]) --j;
            if (i <= j) {
                dsm_swap(v, i, j);
                ++i;
                --j;
            }
        } while (i <= j);
        if (j < k) lo = i;
        if (k < i) hi = j;
    }
}

// The median of v[0..n) (reordered), the mean of the two middle values for an even n.
DSM_DEV float dsm_median(float* v, uint32_t n) {
    uint32_t mid = n / 2;
    dsm_select(v, (int)n, (int)mid);
    float upper = v[mid];
    if (n % 2 == 1) return upper;
    float lower = v[0];
    for (uint32_t j = 1; j < mid; ++j) lower = v[j] > lower ? v[j] : lower;
    return (lower + upper) / 2.0f;
}

DSM_DEV float dsm_self_term(const float* s, uint32_t o, uint32_t a, float upairs) {
    return 2.0f * s[a * o + a] / upairs;
}

// `median` 1: the outer bandwidth is the row's median inner distance (floored at DSM_MIN_BANDWIDTH);
// 0: `fixed_h`. `scale` multiplies the gradient (1/B, or −1/B in the discriminator step).
DSM_KERNEL(delta_outer)(uint32_t rows, uint32_t o, uint32_t inner, float scale, uint32_t median, float fixed_h,
                        const float* DSM_RESTRICT sums, float* DSM_RESTRICT dist, float* DSM_RESTRICT values,
                        float* DSM_RESTRICT weights, float* DSM_RESTRICT loss) {
    uint32_t oo = o * o;
    DSM_FOR(b, rows) {
        const float* sxx = sums + (uint64_t)b * 3 * oo;
        const float* syy = sxx + oo;
        const float* sxy = sxx + 2 * oo;
        float* d = dist + (uint64_t)b * 3 * oo;
        float ii = (float)(inner * inner), upairs = (float)(inner * (inner - 1));
        float k0 = DSM_INNER_K0;
        // The inner MMD²_U of every pair of atoms, clipped at 0 (NaN passes through).
        for (uint32_t a = 0; a < o; ++a) {
            for (uint32_t c = 0; c < o; ++c) {
                for (uint32_t m = 0; m < 2; ++m) {
                    const float* s = m == 0 ? sxx : syy;
                    float raw;
                    if (a == c) {
                        float sa = dsm_self_term(s, o, a, upairs);
                        raw = -2.0f * (k0 - sa) / (float)inner;
                    } else {
                        uint32_t lo = a < c ? a : c, hi = a < c ? c : a;
                        float mean = s[lo * o + hi] / ii;
                        raw = dsm_self_term(s, o, a, upairs) + dsm_self_term(s, o, c, upairs) - 2.0f * mean;
                    }
                    d[m * oo + a * o + c] = raw < 0.0f ? 0.0f : raw;
                }
                float dxy = dsm_self_term(sxx, o, a, upairs) + dsm_self_term(syy, o, c, upairs) -
                            2.0f * sxy[a * o + c] / ii;
                d[2 * oo + a * o + c] = dxy < 0.0f ? 0.0f : dxy;
            }
        }
        // The outer bandwidth.
        float h = fixed_h;
        if (median) {
            float* v = values + (uint64_t)b * (2 * o * (o - 1) + oo);
            uint32_t n = 0;
            for (uint32_t a = 0; a < o; ++a) {
                for (uint32_t c = 0; c < o; ++c) {
                    if (a != c) {
                        v[n++] = d[a * o + c];
                        v[n++] = d[oo + a * o + c];
                    }
                }
            }
            for (uint32_t ab = 0; ab < oo; ++ab) v[n++] = d[2 * oo + ab];
            float med = dsm_median(v, n);
            h = med < DSM_MIN_BANDWIDTH ? DSM_MIN_BANDWIDTH : med;
        }
        // The outer V-statistic, and ∂L_b/∂D (0 where D was clipped) in place of the unused dist.
        float inv_h = 1.0f / h, inv_oo = 1.0f / (float)oo;
        float terms[3] = {0.0f, 0.0f, 0.0f};
        float* g = weights + (uint64_t)b * 3 * oo;  // ∂L/∂D first; the block weights below
        for (uint32_t m = 0; m < 3; ++m) {
            float sign = m == 2 ? -2.0f : 1.0f;
            float coef = scale * sign * inv_oo * inv_h;
            for (uint32_t ab = m * oo; ab < (m + 1) * oo; ++ab) {
                float ko, dko;
                outer_kernel(d[ab] / h, &ko, &dko);
                terms[m] += ko;
                g[ab] = d[ab] > 0.0f ? coef * dko : 0.0f;
            }
        }
        loss[b] = (terms[0] + terms[1] - 2.0f * terms[2]) * inv_oo;
        // Back to the block sums: w[a][c] is ∂L/∂k of one unordered pair of block (a, c). The
        // gradients go to `d` (now free), then replace g.
        const float* gxy = g + 2 * oo;
        for (uint32_t side = 0; side < 2; ++side) {
            const float* gm = g + side * oo;
            float* w = d + side * oo;
            for (uint32_t a = 0; a < o; ++a) {
                float gs = 2.0f * gm[a * o + a] / (float)inner;
                for (uint32_t c = 0; c < o; ++c) {
                    if (c != a) gs += gm[a * o + c] + gm[c * o + a];
                    gs += side == 0 ? gxy[a * o + c] : gxy[c * o + a];
                }
                w[a * o + a] = gs * 2.0f / upairs;
                for (uint32_t c = 0; c < o; ++c) {
                    if (c > a) w[a * o + c] = -2.0f * (gm[a * o + c] + gm[c * o + a]) / ii;
                    if (c < a) w[a * o + c] = 0.0f;
                }
            }
        }
        for (uint32_t ab = 0; ab < oo; ++ab) d[2 * oo + ab] = -2.0f * gxy[ab] / ii;
        for (uint32_t ab = 0; ab < 3 * oo; ++ab) g[ab] = d[ab];
    }
}

// g[b][p] = Σ_q W_pq (a_p − b_q) over every pair of point p of side `side` (0: x, 1: y), with
// W_pq = 2·w[block]·k′(‖a_p − b_q‖²): the pull of the loss on the point. `sides` is 1 for the
// generator step (x only) and 2 for the discriminator step.
DSM_KERNEL(delta_pull)(uint32_t rows, uint32_t o, uint32_t inner, uint32_t sides, const float* DSM_RESTRICT xe,
                       const float* DSM_RESTRICT ye, const float* DSM_RESTRICT weights, float* DSM_RESTRICT gx,
                       float* DSM_RESTRICT gy) {
    uint32_t oo = o * o, np = o * inner;
    DSM_FOR(t, rows * sides * np) {
        uint32_t b = t / (sides * np), side = (t / np) % sides, p = t % np;
        uint64_t row = (uint64_t)b * np * DSM_EMBED;
        const float* own = (side == 0 ? xe : ye) + row;
        const float* other = (side == 0 ? ye : xe) + row;
        const float* wself = weights + (uint64_t)b * 3 * oo + side * oo;
        const float* wxy = weights + (uint64_t)b * 3 * oo + 2 * oo;
        uint32_t ap = p / inner;
        float pt[DSM_EMBED], acc[DSM_EMBED];
        for (uint32_t k = 0; k < DSM_EMBED; ++k) {
            pt[k] = own[p * DSM_EMBED + k];
            acc[k] = 0.0f;
        }
        for (uint32_t q = 0; q < np; ++q) {
            if (q == p) continue;
            uint32_t aq = q / inner;
            float wb = ap <= aq ? wself[ap * o + aq] : wself[aq * o + ap];
            const float* pq = own + q * DSM_EMBED;
            float k, dk;
            inner_kernel(dsm_sq_dist(pt, pq), &k, &dk);
            float wv = 2.0f * wb * dk;
            for (uint32_t e = 0; e < DSM_EMBED; ++e) acc[e] += wv * (pt[e] - pq[e]);
        }
        for (uint32_t q = 0; q < np; ++q) {
            uint32_t aq = q / inner;
            float wb = side == 0 ? wxy[ap * o + aq] : wxy[aq * o + ap];
            const float* pq = other + q * DSM_EMBED;
            float k, dk;
            inner_kernel(dsm_sq_dist(pt, pq), &k, &dk);
            float wv = 2.0f * wb * dk;
            for (uint32_t e = 0; e < DSM_EMBED; ++e) acc[e] += wv * (pt[e] - pq[e]);
        }
        float* out = (side == 0 ? gx : gy) + row + p * DSM_EMBED;
        for (uint32_t e = 0; e < DSM_EMBED; ++e) out[e] = acc[e];
    }
}

// The loss of the step: Σ_b loss[b] in f64, by blocks of `block_rows` rows summed in order and the
// blocks by the CPU engine's pairwise tree (`fused::engine::tree_sum`), so that it is the CPU
// engine's sum given the same row losses. `partial` holds one f64 per block.
DSM_KERNEL(sum_row_losses)(uint32_t rows, uint32_t block_rows, const float* DSM_RESTRICT loss,
                           double* DSM_RESTRICT partial, double* DSM_RESTRICT out) {
    DSM_FOR(t, 1) {
        uint32_t blocks = (rows + block_rows - 1) / block_rows;
        for (uint32_t k = 0; k < blocks; ++k) {
            double s = 0.0;
            for (uint32_t r = k * block_rows; r < rows && r < (k + 1) * block_rows; ++r) s += (double)loss[r];
            partial[k] = s;
        }
        for (uint32_t stride = 1; stride < blocks; stride *= 2) {
            for (uint32_t k = 0; k + stride < blocks; k += 2 * stride) partial[k] += partial[k + stride];
        }
        out[0] = blocks > 0 ? partial[0] : 0.0;
    }
}
