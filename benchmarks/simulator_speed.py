"""Simulated requests per second of the simulator on a large mixed scenario.

    python benchmarks/simulator_speed.py [--json] [--requests-per-second-target 20000]

The shipped ``mixed`` scenario (diurnal swing, length shift, GPUs joining, a spot
loss) scaled to a 32-GPU heterogeneous cluster (8 A100-80GB, 8 L40S, 16 A10G, of
which 8 join late and 8 are spot) and one simulated hour at about 15 requests/s on
average (over 50,000 requests), run with the default baselines on one core.
Also prints the engine's event count, to show events grow with requests, not tokens.
"""

from __future__ import annotations

import argparse
import json
import time
import tomllib

from autopoiesis.adapters.simulator import SimulatorAdapter, hardware, scenario as scenarios
from autopoiesis.adapters.simulator.costmodel import calibration
from autopoiesis.adapters.simulator.engine import Simulation
from autopoiesis.sandbox import compile_policy
from autopoiesis.cli import positive_float

SPEC = """
name = "mixed-32"
model = "Llama-2-7B"
duration_s = 3600
reschedule_interval_s = 60
slo = {{ ttft_s = 2.0, tpot_s = 0.1 }}

[[cluster.gpus]]
type = "A100-80GB"
count = 8

[[cluster.gpus]]
type = "L40S"
count = 8
leave_at = 2500
notice_s = 30

[[cluster.gpus]]
type = "A10G"
count = 8

[[cluster.gpus]]
type = "A10G"
count = 8
join_at = 900

[workload]
rate = {rate}
pattern = "diurnal"
amplitude = 0.5
period_s = 3600
long_share = 0.1
shifts = [[2000, 0.3]]
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=positive_float, default=15.0, help="mean arrival rate, requests/s")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    spec = tomllib.loads(SPEC.format(rate=args.rate))
    from pathlib import Path
    sc = scenarios._build(spec, Path("mixed-32.toml"), seed=0, limit=None, digest="")
    adapter = SimulatorAdapter("mixed")
    source = "\n\n".join(next(iter(slot.baselines.values())) for slot in adapter.slots())
    policy = compile_policy(source, adapter.slots())
    sim = Simulation(sc, policy, hardware.load_gpus(), hardware.model(sc.model), lambda g: calibration("default", g))
    start = time.perf_counter()
    result = sim.run()
    seconds = time.perf_counter() - start
    n = len(result.records)
    out = {"requests": n, "seconds": round(seconds, 3), "requests_per_second": round(n / seconds),
           "events": sim.seq, "events_per_request": round(sim.seq / n, 2),
           "output_tokens": sum(r.output_tokens for r in result.records), "simulated_seconds": round(result.end)}
    if args.json:
        print(json.dumps({k: out[k] for k in ("requests", "seconds", "requests_per_second")}))
    else:
        for key, value in out.items():
            print(f"{key:>20}: {value}")


if __name__ == "__main__":
    main()
