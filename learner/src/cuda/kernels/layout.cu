// Moving a step's data between the layouts of the iteration (see `fused::engine`'s `rows`):
// batch-major [B][O][…] for the loss, atom-major [O][B][…] for the per-atom generator MLPs.

// dst[j1][j0][l] = src[j0][j1][l] for src [d0][d1][len]: swaps the two leading axes.
DSM_KERNEL(swap_axes)(uint32_t d0, uint32_t d1, uint32_t len, const float* DSM_RESTRICT src,
                      float* DSM_RESTRICT dst) {
    DSM_FOR(t, d0 * d1 * len) {
        uint32_t l = t % len, j1 = (t / len) % d1, j0 = t / (len * d1);
        dst[((uint64_t)j1 * d0 + j0) * len + l] = src[t];
    }
}

// The source states s₀ and s_H of every window: obs [B][H+1][S] → s0, sh [B][S].
DSM_KERNEL(window_ends)(uint32_t rows, uint32_t steps, uint32_t state, const float* DSM_RESTRICT obs,
                        float* DSM_RESTRICT s0, float* DSM_RESTRICT sh) {
    DSM_FOR(t, rows * state) {
        uint32_t r = t / state, k = t % state;
        s0[t] = obs[((uint64_t)r * steps) * state + k];
        sh[t] = obs[((uint64_t)r * steps + steps - 1) * state + k];
    }
}

// The Bellman target Y [B][O][I][S]: the window's state at the drawn horizon j, or, when j = H and
// the window bootstraps (`bootstrap` and no LAST step in it), the target generator's sample at s_H
// (boot [O][B][I][S], atom-major).
DSM_KERNEL(bellman_targets)(uint32_t rows, uint32_t o, uint32_t inner, uint32_t state, uint32_t horizon,
                            uint32_t bootstrap, const float* DSM_RESTRICT obs,
                            const unsigned char* DSM_RESTRICT step_types, const uint32_t* DSM_RESTRICT horizons,
                            const float* DSM_RESTRICT boot, float* DSM_RESTRICT y) {
    uint32_t steps = horizon + 1;
    DSM_FOR(t, rows * o * inner * state) {
        uint32_t s = t % state, sample = t / state;  // sample = (r·O + a)·I + k
        uint32_t k = sample % inner, a = (sample / inner) % o, r = sample / (inner * o);
        uint32_t j = horizons[sample];
        int bootstraps = bootstrap != 0;
        for (uint32_t step = 0; step < steps; ++step) {
            if (step_types[r * steps + step] == DSM_STEP_LAST) bootstraps = 0;
        }
        if (bootstraps && j == horizon) {
            y[t] = boot[(((uint64_t)a * rows + r) * inner + k) * state + s];
        } else {
            y[t] = obs[((uint64_t)r * steps + j) * state + s];
        }
    }
}
