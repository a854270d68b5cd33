#!/usr/bin/env python3
"""Times RatInABox (the Python reference, v1.15.3) on the configurations of `sim_bench`.

`sim_bench --python PY` runs this script as `PY riab_python.py --steps N` and reads the one JSON
object it prints on stdout; it can also be run by hand. Progress goes to stderr.

Configurations, each at dt = 0.05 and 0.01 (the thesis recipe, `ratinabox-spec.md` §4.2):
- `agent`: `Agent(Env, {"dt": dt, "thigmotaxis": 0.2})` in the default 1 m box, `Ag.update()` only;
- `cells`: the same plus `PlaceCells(Ag, {"n": 50})` (gaussian, w = 0.2, uniform_jitter, geodesic),
  `Ag.update(); PCs.update()`;
- `wall`: `cells` with `Env.add_wall([[0.4, 0], [0.4, 0.9]])` (the thesis "walls" dataset).

Everything else is RatInABox's default, including `save_history=True`: the thesis scripts kept the
history (its rows are the dataset), as the Rust env writes a row per step. Python RatInABox steps
one agent at a time (it has no vectorised agents), so there is no E > 1 case here.

A reference venv: `python3 -m venv V && V/bin/pip install ratinabox==1.15.3`.
"""

import argparse
import contextlib
import importlib.metadata
import json
import os
import platform
import sys
import time

# One core, as the Rust bench: keep numpy's BLAS from spreading (it is not used for these small
# arrays anyway). Set before numpy is imported.
for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(var, "1")

import numpy as np  # noqa: E402

CONFIGS = ("agent", "cells", "wall")
WALL = [[0.4, 0.0], [0.4, 0.9]]


def build(config, dt):
    from ratinabox.Agent import Agent
    from ratinabox.Environment import Environment
    from ratinabox.Neurons import PlaceCells

    env = Environment(params={"scale": 1.0, "aspect": 1.0})
    if config == "wall":
        env.add_wall(WALL)
    agent = Agent(env, params={"dt": dt, "thigmotaxis": 0.2})
    cells = PlaceCells(agent, params={"n": 50}) if config != "agent" else None
    return agent, cells


def run(agent, cells, steps):
    if cells is None:
        for _ in range(steps):
            agent.update()
    else:
        for _ in range(steps):
            agent.update()
            cells.update()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=3000, help="timed steps per configuration and dt (default 3000)")
    ap.add_argument("--warmup", type=int, default=200, help="untimed steps first (default 200)")
    ap.add_argument("--dt", type=float, nargs="+", default=[0.05, 0.01], help="time steps (default 0.05 0.01)")
    ap.add_argument("--configs", nargs="+", choices=CONFIGS, default=list(CONFIGS))
    ap.add_argument("--seed", type=int, default=0, help="numpy's global seed (default 0)")
    args = ap.parse_args()
    if args.steps < 1:
        ap.error("--steps must be at least 1")

    np.random.seed(args.seed)
    results = []
    for config in args.configs:
        for dt in args.dt:
            # RatInABox prints notices on stdout; stdout carries only the JSON.
            with contextlib.redirect_stdout(sys.stderr):
                agent, cells = build(config, dt)
                run(agent, cells, args.warmup)
                cpu0, t0 = time.process_time(), time.perf_counter()
                run(agent, cells, args.steps)
                wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
            rate = args.steps / wall
            results.append(
                {"config": config, "dt": dt, "steps": args.steps, "seconds": wall, "cpu_seconds": cpu,
                 "steps_per_s": rate}
            )
            print(f"python {config} dt={dt}: {rate:,.0f} steps/s ({1e6 / rate:.0f} µs/step)", file=sys.stderr)

    print(json.dumps({
        "ratinabox": importlib.metadata.version("ratinabox"),
        "numpy": np.__version__,
        "python": platform.python_version(),
        "results": results,
    }))


if __name__ == "__main__":
    main()
