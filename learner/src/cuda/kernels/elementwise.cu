// Element-wise and column-wise kernels of the networks and the optimiser: the CUDA forms of
// `fused::network`'s and `fused::adam`'s loops, operation for operation.

// Adam on one flat buffer; k = [β₁, 1−β₁, β₂, 1−β₂, c, ε·√(1−β₂ᵗ), lr] (see `fused::adam`).
DSM_KERNEL(adam_update)(uint32_t n, float* DSM_RESTRICT param, const float* DSM_RESTRICT grad,
                        float* DSM_RESTRICT m, float* DSM_RESTRICT v, float beta1, float f1, float beta2,
                        float f2, float c, float eps, float lr) {
    DSM_FOR(j, n) {
        float g = grad[j];
        float mj = m[j] * beta1 + g * f1;
        float vj = v[j] * beta2 + g * g * f2;
        m[j] = mj;
        v[j] = vj;
        param[j] -= (mj * c) / (sqrtf(vj) + eps) * lr;
    }
}

// target ← keep·target + take·online (Polyak, keep = 1 − τ, take = τ).
DSM_KERNEL(polyak_update)(uint32_t n, float keep, float take, float* DSM_RESTRICT target,
                          const float* DSM_RESTRICT online) {
    DSM_FOR(j, n) { target[j] = target[j] * keep + online[j] * take; }
}

// v[g][r][w] += bias[g][w] for `groups` groups of `rows` rows of `width`, then lrelu when `act`.
// (The generator's atoms are the groups; φ has one group.)
DSM_KERNEL(add_bias)(uint32_t groups, uint32_t rows, uint32_t width, float* DSM_RESTRICT v,
                     const float* DSM_RESTRICT bias, uint32_t act) {
    uint32_t per = rows * width;
    DSM_FOR(j, groups * per) {
        float y = v[j] + bias[(j / per) * width + j % width];
        v[j] = act ? dsm_lrelu(y) : y;
    }
}

// Row block k (`inner` consecutive rows) of v gets row k of `block_rows` added, then lrelu when
// `act`: the per-(row, atom) part s·W_s + b₀ of the generator's first layer, all atoms at once
// (v [O][N·I][W], block_rows [O][N][W]).
DSM_KERNEL(add_row_blocks)(uint32_t total_rows, uint32_t width, uint32_t inner, float* DSM_RESTRICT v,
                           const float* DSM_RESTRICT block_rows, uint32_t act) {
    DSM_FOR(j, total_rows * width) {
        uint32_t row = j / width;
        float y = v[j] + block_rows[(row / inner) * width + j % width];
        v[j] = act ? dsm_lrelu(y) : y;
    }
}

// dst ← lrelu(src).
DSM_KERNEL(copy_lrelu)(uint32_t n, const float* DSM_RESTRICT src, float* DSM_RESTRICT dst) {
    DSM_FOR(j, n) { dst[j] = dsm_lrelu(src[j]); }
}

// g ∘= lrelu′, given the activation's output a.
DSM_KERNEL(lrelu_backward)(uint32_t n, float* DSM_RESTRICT g, const float* DSM_RESTRICT a) {
    DSM_FOR(j, n) { g[j] *= dsm_lrelu_factor(a[j]); }
}

// dst += src.
DSM_KERNEL(add_into)(uint32_t n, float* DSM_RESTRICT dst, const float* DSM_RESTRICT src) {
    DSM_FOR(j, n) { dst[j] += src[j]; }
}

// out[g][w] (+)= Σ_r x[g][r][w] over the `rows` rows of each of `groups` groups, rows in order
// (the CPU engine's order, so a sum into zeros is bit-identical to `column_sums_into`). With
// `accumulate` 0 the sum overwrites out.
DSM_KERNEL(column_sums)(uint32_t groups, uint32_t rows, uint32_t width, const float* DSM_RESTRICT x,
                        float* DSM_RESTRICT out, uint32_t accumulate) {
    DSM_FOR(j, groups * width) {
        uint32_t g = j / width, w = j % width;
        const float* col = x + (uint64_t)g * rows * width + w;
        float s = accumulate ? out[j] : 0.0f;
        for (uint32_t r = 0; r < rows; ++r) s += col[(uint64_t)r * width];
        out[j] = s;
    }
}

// out[j] = Σ_k a[j][k]·b[j][k], a per-row dot product of two [rows][width] matrices.
DSM_KERNEL(row_dots)(uint32_t rows, uint32_t width, const float* DSM_RESTRICT a, const float* DSM_RESTRICT b,
                     float* DSM_RESTRICT out) {
    DSM_FOR(j, rows) {
        float s = 0.0f;
        for (uint32_t k = 0; k < width; ++k) s += a[(uint64_t)j * width + k] * b[(uint64_t)j * width + k];
        out[j] = s;
    }
}

// out[0] = Σ_j x[j], in order, by one thread (a small vector: per-row partial sums).
DSM_KERNEL(sum_vector)(uint32_t n, const float* DSM_RESTRICT x, float* DSM_RESTRICT out) {
    DSM_FOR(t, 1) {
        float s = 0.0f;
        for (uint32_t j = 0; j < n; ++j) s += x[j];
        out[0] = s;
    }
}
