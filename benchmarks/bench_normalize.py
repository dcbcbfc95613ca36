"""Normalize throughput on 10k-event batches of simulator events, in variants that take its
text check's fallback (backslash escapes, µ units) and its tag walk (big tags).

    python -m benchmarks.bench_normalize
    git show main:pipeline/stages/normalize.py > /tmp/normalize_main.py
    python -m benchmarks.bench_normalize --against /tmp/normalize_main.py   # ratio new/old

CPU time (``process_time``), best of 9, the two versions interleaved: on a shared machine only
the ratio within one run means something.
"""

from __future__ import annotations

import importlib.util
import sys
import time

import orjson

from pipeline.simulate import Simulator
from pipeline.stages import normalize as current

VARIANTS = ("plain", "no_event_id", "unit_micro", "backslash_1pct", "backslash_all", "big_tags")


def sim_events(n: int) -> list[bytes]:
    sim = Simulator(hosts=250, tenant="acme", seed=1, interval=10.0, start=time.time() - 3600)
    out: list[bytes] = []
    for evs in sim.events():
        out.extend(evs)
        if len(out) >= n:
            return out[:n]
    return out


def variant(evs: list[bytes], kind: str) -> list[bytes]:
    if kind == "plain":
        return evs
    out = []
    for i, r in enumerate(evs):
        d = orjson.loads(r)
        if kind == "no_event_id":
            d.pop("event_id")
        elif kind == "unit_micro":
            d["unit"] = "µs"
        elif kind == "backslash_all" or (kind == "backslash_1pct" and i % 100 == 0):
            d["tags"] = {**d["tags"], "path": "C:\\agent\\bin"}
        elif kind == "big_tags":
            d["tags"] = {f"k{j}": "v" * 40 for j in range(20)}
        out.append(orjson.dumps(d))
    return out


def cpu_seconds(mod, raws: list[bytes], batch: int = 10_000) -> float:
    n = mod.Normalizer(mod.NormalizeConfig(known_tenants=frozenset({"acme"}), max_past_age_s=1e9))
    t0 = time.process_time()
    for i in range(0, len(raws), batch):
        chunk = raws[i : i + batch]
        n(chunk, "raw", [0] * len(chunk), range(i, i + len(chunk)))
    return time.process_time() - t0


def load(path: str):
    spec = importlib.util.spec_from_file_location("normalize_against", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["normalize_against"] = mod
    spec.loader.exec_module(mod)
    return mod


def main(argv: list[str]) -> None:
    other = load(argv[argv.index("--against") + 1]) if "--against" in argv else None
    base = sim_events(100_000)
    for kind in VARIANTS:
        raws = variant(base, kind)
        new, old = [], []
        for _ in range(9):
            new.append(cpu_seconds(current, raws))
            if other is not None:
                old.append(cpu_seconds(other, raws))
        rate = len(raws) / min(new)
        line = f"{kind:<16} {rate:>12,.0f} events/s"
        if old:
            line += f"   against {len(raws) / min(old):>12,.0f}   ratio {min(old) / min(new):.2f}"
        print(line)


if __name__ == "__main__":
    main(sys.argv[1:])
