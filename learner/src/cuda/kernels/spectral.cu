// Spectral normalisation of φ's kernels (flax's `SpectralNorm`, one power iteration; see
// `fused::network::Spectral`), as a chain of small launches per layer:
// spectral_v → l2_normalize → spectral_u → l2_normalize → spectral_rows → spectral_sigma →
// spectral_wbar. Every sum runs in the CPU engine's order.

// v[j] = Σ_k u[k]·W[j][k]  (W [d_in][d_out]).
DSM_KERNEL(spectral_v)(uint32_t d_in, uint32_t d_out, const float* DSM_RESTRICT w, const float* DSM_RESTRICT u,
                       float* DSM_RESTRICT v) {
    DSM_FOR(j, d_in) {
        float s = 0.0f;
        for (uint32_t k = 0; k < d_out; ++k) s += u[k] * w[(uint64_t)j * d_out + k];
        v[j] = s;
    }
}

// x ← x / √(Σx² + ε), by one thread (vectors of a layer's width).
DSM_KERNEL(l2_normalize)(uint32_t n, float* DSM_RESTRICT x) {
    DSM_FOR(t, 1) {
        float norm = 0.0f;
        for (uint32_t j = 0; j < n; ++j) norm += x[j] * x[j];
        float inv = 1.0f / sqrtf(norm + DSM_L2_EPS);
        for (uint32_t j = 0; j < n; ++j) x[j] *= inv;
    }
}

// u′[k] = Σ_j v[j]·W[j][k].
DSM_KERNEL(spectral_u)(uint32_t d_in, uint32_t d_out, const float* DSM_RESTRICT w, const float* DSM_RESTRICT v,
                       float* DSM_RESTRICT u_new) {
    DSM_FOR(k, d_out) {
        float s = 0.0f;
        for (uint32_t j = 0; j < d_in; ++j) s += v[j] * w[(uint64_t)j * d_out + k];
        u_new[k] = s;
    }
}

// rows[j] = Σ_k W[j][k]·u′[k].
DSM_KERNEL(spectral_rows)(uint32_t d_in, uint32_t d_out, const float* DSM_RESTRICT w,
                          const float* DSM_RESTRICT u_new, float* DSM_RESTRICT rows) {
    DSM_FOR(j, d_in) {
        float s = 0.0f;
        for (uint32_t k = 0; k < d_out; ++k) s += w[(uint64_t)j * d_out + k] * u_new[k];
        rows[j] = s;
    }
}

// σ = Σ_j v[j]·rows[j], by one thread.
DSM_KERNEL(spectral_sigma)(uint32_t d_in, const float* DSM_RESTRICT v, const float* DSM_RESTRICT rows,
                           float* DSM_RESTRICT sigma) {
    DSM_FOR(t, 1) {
        float s = 0.0f;
        for (uint32_t j = 0; j < d_in; ++j) s += v[j] * rows[j];
        sigma[0] = s;
    }
}

// W̄ = W/σ (W when σ = 0).
DSM_KERNEL(spectral_wbar)(uint32_t n, const float* DSM_RESTRICT w, const float* DSM_RESTRICT sigma,
                          float* DSM_RESTRICT w_bar) {
    DSM_FOR(j, n) {
        float s = sigma[0];
        float div = s == 0.0f ? 1.0f : s;
        w_bar[j] = w[j] / div;
    }
}

// ∂L/∂W += g/σ − (Σ g∘W̄)/σ · v u′ᵀ (g = ∂L/∂W̄; `dot` = Σ g∘W̄, from row_dots and sum_vector);
// += g when σ = 0.
DSM_KERNEL(sigma_backward)(uint32_t d_in, uint32_t d_out, const float* DSM_RESTRICT g, const float* DSM_RESTRICT v,
                           const float* DSM_RESTRICT u_new, const float* DSM_RESTRICT sigma,
                           const float* DSM_RESTRICT dot, float* DSM_RESTRICT out) {
    DSM_FOR(idx, d_in * d_out) {
        float s = sigma[0];
        if (s == 0.0f) {
            out[idx] += g[idx];
        } else {
            uint32_t j = idx / d_out, k = idx % d_out;
            float inv = 1.0f / s;
            float c = dot[0] * inv;
            float cv = c * v[j];
            out[idx] += g[idx] * inv - cv * u_new[k];
        }
    }
}
