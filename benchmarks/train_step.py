"""Time (and optionally profile) training steps of a preset on one real batch, several variants
side by side in one run (so a ratio means something on a shared machine).

    python benchmarks/train_step.py default-cityscapes --variant base= --variant fast=amp=bf16,channels_last=true
    python benchmarks/train_step.py sims-cityscapes --profile fast

A variant is `name=` followed by comma-separated config overrides (`--set` syntax). Each step is
what `semsynth train` does: the critic's update (adversarial presets), then the task loss,
backward, optimiser step; rounds interleave the variants.
"""

import argparse
import statistics
import time

import torch

from semsynth.labels import get_space
from semsynth.tasks import build_task
from semsynth.train import TrainStep, load_config, parse_overrides


def _batch(task, cfg):
    ex = task.dataset(cfg, "/tmp/semsynth-bench")[0]
    return {k: v.unsqueeze(0) if torch.is_tensor(v) else v for k, v in ex.items()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("preset")
    ap.add_argument("--variant", action="append", default=[], help="name=key=value,key=value")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--profile", default=None, help="variant to profile (2 steps)")
    a = ap.parse_args()
    variants = {}
    for v in a.variant or ["base="]:
        name, _, sets = v.partition("=")
        variants[name] = [s for s in sets.split(",") if s]
    base_cfg = load_config(a.preset)
    space = get_space(base_cfg.get("label_space", "cityscapes"))

    runs, batch = {}, None
    for name, sets in variants.items():
        cfg = load_config(a.preset, parse_overrides(sets))
        torch.manual_seed(0)
        task = build_task(cfg, space, torch.device("cpu"))
        if batch is None:
            batch = _batch(task, cfg)
        train_step = TrainStep(task, cfg, torch.device("cpu"))

        def step(b, s=train_step, critic=task.critic is not None):
            if critic:
                s.discriminator(b)
            return float(s.generator(b)[0].detach())

        t = time.perf_counter()
        loss = step(dict(batch))
        print(f"{name}: first step {time.perf_counter() - t:.2f} s (includes compilation), loss {loss:.4f}", flush=True)
        runs[name] = (step, [])
    for _ in range(a.rounds):
        for name, (step, times) in runs.items():
            t = time.perf_counter()
            step(dict(batch))
            times.append(time.perf_counter() - t)
    base = None
    for name, (step, times) in runs.items():
        med = statistics.median(times)
        base = base or med
        print(f"{name:12s} median {med:.3f} s/step  min {min(times):.3f}  speed-up x{base / med:.2f}")
    if a.profile:
        from torch.profiler import ProfilerActivity, profile

        step = runs[a.profile][0]
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(2):
                step(dict(batch))
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20))


if __name__ == "__main__":
    main()
