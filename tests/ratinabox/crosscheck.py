#!/usr/bin/env python3
"""Cross-check of our RatInABox port (`actor simulate`) against the real ratinabox 1.15.3.

Run it through `tests/ratinabox/crosscheck.sh`, which makes the venv and builds the actor; see the
header there for the flags. Not run in CI.

For every recipe (thigmotaxis 0, 0.2, 0.5, 1 in the unit box, and the thesis walls recipe) and
every seed, it simulates 20 minutes (24,000 steps at dt = 0.05 s) with both simulators:

- ours: `actor simulate --env ID --steps N --seed S --out X.npz [--set env.thigmotaxis=...]`,
  whose rows are the state after each update;
- RatInABox, in this process, with the thesis recipe exactly:
  `np.random.seed(s); Env = Environment(); [Env.add_wall(...)];
   Ag = Agent(Env, params={"thigmotaxis": th}); PC = PlaceCells(Ag, params={"n": 50})`,
  then `for i in range(N): Ag.update(); PC.update()`; it reads `Ag.history["pos"]` and
  `PC.history["firingrate"]`.

Both outputs go through the same code (RatInABox's are cast to float32 first, as ours are stored):
speed |Δp|/dt, measured rotational velocity (change of heading of consecutive Δp, wrapped to
(−π, π], over dt), time near the box edges, place-cell population rate and active fraction, and
the occupancy left of the wall. Per-seed summaries are compared with Welch's t-test and the
difference in units of the seed spread; the speed and rotational-velocity distributions also with
a two-sample KS test on samples pooled over seeds and thinned. Rows with p < --alpha are marked.

With --write FILE it (re)writes the generated part of FILE, between the markers
`<!-- crosscheck:begin -->` and `<!-- crosscheck:end -->`, and keeps everything outside them
(the hand-written explanation of any disagreement), so a rerun refreshes the numbers only.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import numpy as np
from scipy import stats

DT = 0.05
N_CELLS = 50
WALL = [[0.4, 0.0], [0.4, 0.9]]
ACTIVE_THRESHOLD = 0.1
BEGIN = "<!-- crosscheck:begin -->"
END = "<!-- crosscheck:end -->"


@dataclass(frozen=True)
class Recipe:
    name: str
    env_id: str
    thigmotaxis: float
    walls: bool
    sets: tuple[str, ...] = ()

    def ours_args(self) -> list[str]:
        args = ["--env", self.env_id]
        for s in self.sets:
            args += ["--set", s]
        return args


RECIPES = [
    Recipe("thig 0", "riab-lowth", 0.0, False),
    Recipe("thig 0.2", "riab-random", 0.2, False),
    Recipe("thig 0.5", "riab-random", 0.5, False, ("env.thigmotaxis=0.5",)),
    Recipe("thig 1", "riab-highth", 1.0, False),
    Recipe("walls", "riab-walls", 0.2, True),
]


DEFAULT_RECIPES = ",".join(r.name.replace(" ", "") for r in RECIPES)


def fail(msg: str) -> None:
    print(f"crosscheck: {msg}", file=sys.stderr)
    sys.exit(1)


# --------------------------------------------------------------------------------------------
# The two simulators


def run_ours(actor: Path, recipe: Recipe, seed: int, steps: int, workdir: Path):
    out = workdir / f"ours-{recipe.env_id}-{recipe.thigmotaxis}-{seed}-{steps}.npz"
    cmd = [str(actor), "simulate", *recipe.ours_args(), "--steps", str(steps), "--seed", str(seed), "--out", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        last = (r.stderr.strip().splitlines() or ["(no message)"])[-1]
        fail(f"`{' '.join(cmd)}` failed: {last}")
    with np.load(out) as z:
        meta = json.loads(str(z["meta"]))
        pos = z["positions"][0].astype(np.float32)
        rates = z["observations"][0].astype(np.float32)
    out.unlink()
    cfg = meta["env_config"]
    if abs(cfg["thigmotaxis"] - recipe.thigmotaxis) > 1e-12 or abs(meta["dt"] - DT) > 1e-12:
        fail(f"{recipe.env_id}: the actor ran thigmotaxis {cfg['thigmotaxis']}, dt {meta['dt']}; expected "
             f"{recipe.thigmotaxis}, {DT}")
    if rates.shape != (steps, N_CELLS) or pos.shape != (steps, 2):
        fail(f"{recipe.env_id}: unexpected array shapes {rates.shape}, {pos.shape}")
    return pos, rates, meta


def run_riab(recipe: Recipe, seed: int, steps: int, cache: Path | None):
    if cache is not None:
        f = cache / f"riab-{recipe.name.replace(' ', '')}-{seed}-{steps}.npz"
        if f.exists():
            with np.load(f) as z:
                return z["pos"], z["rates"], True
    from ratinabox.Environment import Environment
    from ratinabox.Agent import Agent
    from ratinabox.Neurons import PlaceCells

    np.random.seed(seed)
    env = Environment()
    if recipe.walls:
        env.add_wall(WALL)
    ag = Agent(env, params={"thigmotaxis": recipe.thigmotaxis})
    pc = PlaceCells(ag, params={"n": N_CELLS})
    assert abs(ag.dt - DT) < 1e-12, f"ratinabox Agent dt is {ag.dt}, expected {DT}"
    for _ in range(steps):
        ag.update()
        pc.update()
    pos = np.asarray(ag.history["pos"], dtype=np.float32)
    rates = np.asarray(pc.history["firingrate"], dtype=np.float32)
    if cache is not None:
        np.savez(f, pos=pos, rates=rates)
    return pos, rates, False


# --------------------------------------------------------------------------------------------
# Statistics, identical for both simulators


def wall_crossings(pos: np.ndarray) -> int:
    """Steps whose straight segment strictly crosses the thesis wall x = 0.4, 0 < y < 0.9."""
    p = pos.astype(np.float64)
    a, b = p[:-1], p[1:]
    side = (a[:, 0] - 0.4) * (b[:, 0] - 0.4) < 0
    with np.errstate(divide="ignore", invalid="ignore"):
        t = (0.4 - a[:, 0]) / (b[:, 0] - a[:, 0])
    y = a[:, 1] + t * (b[:, 1] - a[:, 1])
    return int(np.sum(side & (y > 0.0) & (y < 0.9)))


def summarise(pos: np.ndarray, rates: np.ndarray, thin: int) -> dict:
    p = pos.astype(np.float64)
    dp = np.diff(p, axis=0)
    speed = np.linalg.norm(dp, axis=1) / DT
    heading = np.arctan2(dp[:, 1], dp[:, 0])
    dtheta = np.diff(heading)
    dtheta = np.where(dtheta <= -np.pi, dtheta + 2 * np.pi, dtheta)  # wrap into (−π, π]
    dtheta = np.where(dtheta > np.pi, dtheta - 2 * np.pi, dtheta)
    rotvel = np.degrees(dtheta) / DT
    edge = np.minimum.reduce([p[:, 0], 1 - p[:, 0], p[:, 1], 1 - p[:, 1]])
    r = rates.astype(np.float64)
    return {
        "scalars": {
            "speed_mean": speed.mean(),
            "speed_sd": speed.std(),
            "rotvel_sd": rotvel.std(),
            "rotvel_absmean": np.abs(rotvel).mean(),
            "near05": np.mean(edge < 0.05),
            "near10": np.mean(edge < 0.10),
            "pop_rate": r.mean(),
            "active": np.mean(r > ACTIVE_THRESHOLD),
            "left04": np.mean(p[:, 0] < 0.4),
            "side_changes": int(np.sum(np.diff((p[:, 0] < 0.4).astype(np.int8)) != 0)),
            "outside": int(np.sum(edge <= 0.0)),
            "crossings": wall_crossings(pos),
            "max_rate": r.max(),
        },
        "speed": speed[::thin],
        "rotvel": rotvel[::thin],
    }


# --------------------------------------------------------------------------------------------
# Comparison rows

SCALARS = [
    # key, label, format, recipes it applies to (None = all)
    ("speed_mean", "mean speed (m/s)", "{:.4f}", None),
    ("speed_sd", "speed sd within a run (m/s)", "{:.4f}", None),
    ("rotvel_sd", "measured rot. vel. sd (°/s)", "{:.1f}", None),
    ("rotvel_absmean", "mean abs. measured rot. vel. (°/s)", "{:.1f}", None),
    ("near05", "time within 0.05 m of the box edge", "{:.4f}", None),
    ("near10", "time within 0.1 m of the box edge", "{:.4f}", None),
    ("pop_rate", "mean population rate", "{:.4f}", None),
    ("active", "active fraction (rate > 0.1)", "{:.4f}", None),
    ("left04", "occupancy x < 0.4", "{:.4f}", ("thig 0.2", "walls")),
    ("side_changes", "passes across x = 0.4 per run (through the gap)", "{:.2f}", ("walls",)),
]
DISTS = [("speed", "speed distribution", "{:.4f}"), ("rotvel", "measured rot. vel. distribution", "{:.1f}")]
COUNTS = [("outside", "rows on/outside the box edge (all seeds)", None), ("crossings", "steps crossing the wall (all seeds)", ("walls",))]


@dataclass
class Row:
    stat: str
    recipe: str
    ours: str
    riab: str
    diff: str
    spread: str
    test: str
    p: float | None
    flagged: bool = False
    extra: dict = field(default_factory=dict)


def welch(a: np.ndarray, b: np.ndarray) -> float:
    if np.ptp(a) == 0 and np.ptp(b) == 0:
        return 1.0 if a[0] == b[0] else 0.0
    return float(stats.ttest_ind(a, b, equal_var=False).pvalue)


def compare(results: dict, recipes: list[Recipe], alpha: float) -> list[Row]:
    rows: list[Row] = []
    for key, label, fmt, only in SCALARS:
        for rc in recipes:
            if only is not None and rc.name not in only:
                continue
            a = np.array([s["scalars"][key] for s in results[rc.name]["ours"]])
            b = np.array([s["scalars"][key] for s in results[rc.name]["riab"]])
            sa, sb = a.std(ddof=1), b.std(ddof=1)
            pooled = math.sqrt((sa**2 + sb**2) / 2)
            d = a.mean() - b.mean()
            p = welch(a, b)
            rows.append(Row(
                label, rc.name,
                f"{fmt.format(a.mean())} ± {fmt.format(sa)}",
                f"{fmt.format(b.mean())} ± {fmt.format(sb)}",
                f"{d:+.4g}",
                f"{d / pooled:+.2f}" if pooled > 0 else "—",
                "Welch t", p, p < alpha))
    for key, label, fmt in DISTS:
        for rc in recipes:
            a = np.concatenate([s[key] for s in results[rc.name]["ours"]])
            b = np.concatenate([s[key] for s in results[rc.name]["riab"]])
            ks = stats.ks_2samp(a, b)
            qa, qb = np.percentile(a, [25, 50, 75]), np.percentile(b, [25, 50, 75])
            q = lambda x: f"{fmt.format(x[1])} [{fmt.format(x[0])}, {fmt.format(x[2])}]"  # noqa: E731
            rows.append(Row(
                label + " (median [IQR])", rc.name, q(qa), q(qb), f"{qa[1] - qb[1]:+.4g}", "—",
                f"KS D={ks.statistic:.4f}, n={len(a)}/{len(b)}", float(ks.pvalue), ks.pvalue < alpha))
    for key, label, only in COUNTS:
        for rc in recipes:
            if only is not None and rc.name not in only:
                continue
            a = sum(s["scalars"][key] for s in results[rc.name]["ours"])
            b = sum(s["scalars"][key] for s in results[rc.name]["riab"])
            rows.append(Row(label, rc.name, str(a), str(b), f"{a - b:+d}", "—", "count (should be 0)", None,
                            bool(a or b)))
    return rows


def fmt_p(p: float | None) -> str:
    if p is None:
        return "—"
    if p < 1e-4:
        return f"{p:.1e}"
    return f"{p:.3f}"


def table(rows: list[Row]) -> str:
    out = ["| statistic | recipe | ours (mean ± seed sd) | RatInABox 1.15.3 | ours − RiaB | Δ / seed sd | test | p | |",
           "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        mark = "**DISAGREE**" if r.flagged else "ok"
        out.append(f"| {r.stat} | {r.recipe} | {r.ours} | {r.riab} | {r.diff} | {r.spread} | {r.test} | {fmt_p(r.p)} | {mark} |")
    return "\n".join(out)


# --------------------------------------------------------------------------------------------
# Output


def versions(actor_meta: dict) -> str:
    def v(pkg):
        try:
            return metadata.version(pkg)
        except metadata.PackageNotFoundError:
            return "not installed"

    return (f"ratinabox {v('ratinabox')}, numpy {v('numpy')}, scipy {v('scipy')}, shapely {v('shapely')}, "
            f"Python {platform.python_version()}; ours: `{actor_meta.get('producer', '?')}` "
            f"(npz format {actor_meta.get('format_version', '?')})")


def command_line(args) -> str:
    """The crosscheck.sh call that reproduces this table (flags that differ from the defaults)."""
    cmd = ["tests/ratinabox/crosscheck.sh"]
    for flag, value, default in [("--seeds", args.seeds, 5), ("--seed-base", args.seed_base, 0),
                                 ("--steps", args.steps, 24000), ("--thin", args.thin, 20),
                                 ("--alpha", args.alpha, 0.01), ("--recipes", args.recipes, DEFAULT_RECIPES)]:
        if value != default:
            cmd += [flag, str(value)]
    return " ".join(cmd)


def report(rows, args, recipes, actor_meta, elapsed, n_cached, n_riab) -> str:
    flagged = [r for r in rows if r.flagged]
    seeds = list(range(args.seed_base, args.seed_base + args.seeds))
    reuse = (f"; {n_cached} of the {n_riab} RatInABox runs were reused from `--cache`" if n_cached else "")
    lines = [
        f"_Generated by `{command_line(args)}` on {_dt.date.today().isoformat()} "
        f"({elapsed / 60:.1f} min{reuse})._",
        "",
        f"- Versions: {versions(actor_meta)}.",
        f"- Recipes: {', '.join(r.name for r in recipes)}; seeds {seeds[0]}–{seeds[-1]} "
        f"({len(seeds)} per simulator and recipe), {args.steps} steps of dt = {DT} s each "
        f"({args.steps * DT / 60:.0f} simulated minutes).",
        f"- Per-seed rows: mean ± sd over seeds; Welch's t-test (unequal variances) on the per-seed values; "
        f"Δ / seed sd is the difference in units of the pooled seed sd √((sd₁² + sd₂²)/2).",
        f"- Distribution rows: two-sample KS test on the samples of all seeds pooled, thinned to every "
        f"{args.thin}th step ({args.thin * DT:g} s) to reduce autocorrelation. The thinned samples are still "
        f"somewhat correlated (the latent speed decorrelates with τ = 0.7 s, so about "
        f"{(1 - DT / 0.7) ** args.thin:.2f} at this lag), and the KS p-value assumes independence, so it is "
        f"somewhat too small.",
        f"- A row is marked **DISAGREE** when p < {args.alpha}. There are {sum(r.p is not None for r in rows)} "
        f"tests, so about {sum(r.p is not None for r in rows) * args.alpha:.1f} would be marked by chance alone "
        f"if the two simulators were the same model.",
        "",
        table(rows),
        "",
        f"Rows marked by this run: {len(flagged)}"
        + (":" if flagged else "."),
    ]
    for r in flagged:
        lines.append(f"- {r.stat}, {r.recipe}: ours {r.ours}, RatInABox {r.riab}, {r.test}, p = {fmt_p(r.p)}.")
    return "\n".join(lines)


DOC_HEAD = """# Validation against RatInABox 1.15.3

Our simulator (`actor/src/envs/`: `motion.rs`, `place_cells.rs`, `arena.rs`) re-implements
RatInABox's 2-D random-foraging motion model and place cells (spec:
`ratinabox-spec.md` §2, §3, §7). This page compares the two on the thesis's dataset recipes:
the same 20-minute recipe run with both simulators, several seeds each, and the distributions of
what a scientist reads from the dataset compared row by row.

## How to run

```sh
tests/ratinabox/crosscheck.sh                      # 5 seeds per recipe: ~15 min (~8 with --jobs 2)
tests/ratinabox/crosscheck.sh --seeds 10 --jobs 2  # the run below: 10 seeds, ~15-20 min on 2 cores
```

It makes a throwaway venv (`${TMPDIR:-/tmp}/dsm-riab-venv`, or `RIAB_VENV=...`) with
`ratinabox==1.15.3 numpy scipy` from PyPI, builds `actor` in release mode, runs
`tests/ratinabox/crosscheck.py`, prints the table, and rewrites the generated section of this file
(between the `crosscheck` markers; the text outside them is kept). It is not run in CI.

What is measured, identically for both simulators, from the stored positions (float32) and rates:

- **speed**: |Δp|/dt between consecutive rows;
- **measured rotational velocity**: the change of heading between consecutive Δp vectors, wrapped
  to (−π, π], over dt, in °/s. This is the rotational velocity of the path actually taken, *not*
  the internal ω of the motion model: bounces off walls (which reverse the normal component) and
  the thigmotaxis conveyor shift make it much larger than ω's 144.7 °/s (spec §7.3), and more so
  the higher the thigmotaxis;
- **time near the walls**: the fraction of rows whose distance to the nearest of the four box edges
  is below 0.05 m and below 0.1 m;
- **population rate**: the mean rate over the 50 cells and all rows; **active fraction**: the
  fraction of (cell, row) samples with rate > 0.1;
- **occupancy x < 0.4**: the fraction of rows left of the wall line (walls recipe), and the same
  in the open box at thigmotaxis 0.2 for reference; and, for the walls recipe, the number of
  rows at which the agent changes side of x = 0.4 (it can only do so through the 0.1 m gap);
- sanity counts: rows on or outside the box edge, and steps whose segment crosses the wall.

Recipes: RatInABox's `Environment()` (1 m box), `Agent(Env, params={"thigmotaxis": th})` (dt 0.05),
`PlaceCells(Ag, params={"n": 50})`, `np.random.seed(s)` before building, then
`for i in range(24000): Ag.update(); PC.update()`; the walls recipe adds
`Env.add_wall([[0.4, 0], [0.4, 0.9]])`. Ours: `actor simulate --env riab-lowth | riab-random |
riab-highth | riab-walls` and `riab-random --set env.thigmotaxis=0.5`, `--steps 24000 --seed s`.
The two simulators use different random number generators, so only distributions can agree, not
trajectories.

## Latest output

"""

DOC_TAIL = """
## Disagreements

(Explain here any row the latest run marks; this section is kept when the script rewrites the
numbers above.)
"""


def write_doc(path: Path, generated: str) -> None:
    block = f"{BEGIN}\n{generated}\n{END}"
    if path.exists():
        text = path.read_text()
        if BEGIN in text and END in text:
            head, rest = text.split(BEGIN, 1)
            _, tail = rest.split(END, 1)
            path.write_text(head + block + tail)
            return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(DOC_HEAD + block + "\n" + DOC_TAIL)


# --------------------------------------------------------------------------------------------


def took(out) -> str:
    return "from the cache" if out[2] else f"{out[1]:.0f} s"


def riab_job(args):
    recipe, seed, steps, cache, thin = args
    t0 = time.time()
    pos, rates, cached = run_riab(recipe, seed, steps, cache)
    return summarise(pos, rates, thin), time.time() - t0, cached


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.error = lambda message: fail(f"{message} (see --help)")  # one line, not usage + error
    ap.add_argument("--actor", type=Path, default=None, help="actor binary (default: <repo>/target/release/actor)")
    ap.add_argument("--seeds", type=int, default=5, help="seeds per recipe and simulator (default 5)")
    ap.add_argument("--seed-base", type=int, default=0, help="first seed (default 0)")
    ap.add_argument("--steps", type=int, default=24000, help="steps per run (default 24000 = 20 min)")
    ap.add_argument("--thin", type=int, default=20, help="keep every k-th step for the KS tests (default 20)")
    ap.add_argument("--alpha", type=float, default=0.01, help="mark rows with p below this (default 0.01)")
    ap.add_argument("--recipes", default=DEFAULT_RECIPES,
                    help="comma-separated subset of: " + ", ".join(r.name.replace(" ", "") for r in RECIPES))
    ap.add_argument("--jobs", type=int, default=1, help="RatInABox runs in parallel (default 1)")
    ap.add_argument("--cache", type=Path, default=None,
                    help="directory to keep RatInABox runs in and reuse them from (default: none)")
    ap.add_argument("--write", type=Path, default=None, help="markdown file to (re)write the results into")
    args = ap.parse_args()

    if args.seeds < 2:
        fail("--seeds must be at least 2 (the tests need a seed spread)")
    if args.steps < 3 * args.thin:
        fail("--steps is too small for the thinning")
    repo = Path(__file__).resolve().parents[2]
    actor = args.actor or repo / "target" / "release" / "actor"
    if not os.access(actor, os.X_OK):
        fail(f"no actor binary at {actor}; run `cargo build --release -p actor`")
    wanted = [w.strip() for w in args.recipes.split(",") if w.strip()]
    by_key = {r.name.replace(" ", ""): r for r in RECIPES}
    for w in wanted:
        if w not in by_key:
            fail(f"--recipes: unknown recipe {w!r}; known: {', '.join(by_key)}")
    recipes = [by_key[w] for w in wanted]
    try:
        metadata.version("ratinabox")
    except metadata.PackageNotFoundError:
        fail("ratinabox is not installed in this Python; run crosscheck.sh")
    os.environ.setdefault("MPLBACKEND", "Agg")
    if args.cache:
        args.cache.mkdir(parents=True, exist_ok=True)

    t_start = time.time()
    seeds = list(range(args.seed_base, args.seed_base + args.seeds))
    results = {r.name: {"ours": [], "riab": []} for r in recipes}
    actor_meta: dict = {}
    with tempfile.TemporaryDirectory(prefix="dsm-crosscheck-") as tmp:
        for rc in recipes:
            for s in seeds:
                pos, rates, actor_meta = run_ours(actor, rc, s, args.steps, Path(tmp))
                results[rc.name]["ours"].append(summarise(pos, rates, args.thin))
        print(f"crosscheck: ours done ({len(recipes) * len(seeds)} runs, {time.time() - t_start:.0f} s)",
              file=sys.stderr)

    jobs = [(rc, s, args.steps, args.cache, args.thin) for rc in recipes for s in seeds]
    if args.jobs > 1:
        import multiprocessing as mp

        with mp.get_context("fork").Pool(args.jobs) as pool:
            outs = []
            for i, o in enumerate(pool.imap(riab_job, jobs)):
                outs.append(o)
                print(f"crosscheck: RatInABox {jobs[i][0].name} seed {jobs[i][1]} ({took(o)})", file=sys.stderr)
    else:
        outs = []
        for j in jobs:
            o = riab_job(j)
            outs.append(o)
            print(f"crosscheck: RatInABox {j[0].name} seed {j[1]} ({took(o)})", file=sys.stderr)
    for (rc, _s, *_), (summary, _t, _c) in zip(jobs, outs):
        results[rc.name]["riab"].append(summary)
    n_cached = sum(o[2] for o in outs)

    rows = compare(results, recipes, args.alpha)
    generated = report(rows, args, recipes, actor_meta, time.time() - t_start, n_cached, len(outs))
    print(generated)
    if args.write:
        write_doc(args.write, generated)
        print(f"crosscheck: wrote {args.write}", file=sys.stderr)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        fail("interrupted")
    except Exception as e:  # one readable line, not a traceback
        fail(f"{type(e).__name__}: {e}")
