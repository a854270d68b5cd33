//! Run-time CPU dispatch for the engine's element-wise loops.
//!
//! The crate is built for the baseline x86-64 target (SSE2), so that one binary runs on any x86-64
//! machine; the loops here are written so that the compiler vectorises them, and [`simd_fn!`]
//! compiles each one a second time for AVX2+FMA and picks that copy when the CPU has it (the
//! feature test is a cached atomic load). The matrix products dispatch inside the `gemm` crate, and
//! the row loss in `mmd` does the same at its own entry point.

/// Defines `fn $name(args) body` twice, for the baseline and for AVX2+FMA, and a public entry point
/// that calls the best one for this CPU. The body must be safe code.
macro_rules! simd_fn {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident : $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$meta])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn imp($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) $(-> $ret)? {
                    imp($($arg),*)
                }
                if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                    // SAFETY: the CPU has the features `avx2` is compiled for.
                    return unsafe { avx2($($arg),*) };
                }
            }
            imp($($arg),*)
        }
    };
}

pub(crate) use simd_fn;
