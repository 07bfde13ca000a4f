"""SIMS retrieval at scale: seconds per layout in both modes on a bank replicated to N segments,
the index's memory, and the process's peak RSS.

    python benchmarks/retrieval.py --segments 106000 1000000
    python benchmarks/retrieval.py --bank BANK --segments 1000000
    python benchmarks/retrieval.py --smoke            # tiny sizes, for CI (no timing judged)

Without --bank, a bank of ../shared/data/cityscapes_sequences (180 frames; --smoke: 3 images of
../shared/data/cityscapes) is built once into --cache and reused. The queries are the Cityscapes
validation label maps of ../shared/data/cityscapes (not in the bank). The replicated index has
every row of the bank once per copy, each copy with its own image ids (`benchmark_retrieval`);
the mask runs are read from the source rows, as a real bank of that size would read its own.
"""

import argparse
import json
import resource
import sys
import tempfile
from pathlib import Path

import numpy as np

from semsynth.data import open_dataset
from semsynth.labels import get_space
from semsynth.sims.bank import Bank, build_bank_from_paths
from semsynth.sims.retrieval import benchmark_retrieval
from semsynth.utils import shared_dir


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bank", help="an existing bank (default: build one from --data)")
    ap.add_argument(
        "--data",
        help="dataset the bank is built from (default ../shared/data/"
        "cityscapes_sequences; --smoke: ../shared/data/cityscapes, 3 images)",
    )
    ap.add_argument(
        "--queries",
        help="Cityscapes-layout folder whose val label maps are the queries "
        "(default ../shared/data/cityscapes; --smoke: --data if given)",
    )
    ap.add_argument("--segments", type=int, nargs="+", default=[106_000, 1_000_000])
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=1, help="passes over the query layouts")
    ap.add_argument(
        "--cache",
        default=str(Path(tempfile.gettempdir()) / "semsynth-bench-retrieval"),
        help="where the default bank is built (reused)",
    )
    ap.add_argument("--smoke", action="store_true", help="tiny bank and sizes: checks that it runs")
    ap.add_argument("--json", help="also write the results here")
    a = ap.parse_args(argv)
    shared = shared_dir()
    cs = Path(a.queries or (a.data if a.smoke and a.data else shared / "data" / "cityscapes"))
    if not (cs / "gtFine").is_dir():
        sys.exit(
            f"benchmarks/retrieval.py: no Cityscapes-layout query folder at {cs} (set SEMSYNTH_SHARED or --queries)"
        )
    space = get_space("cityscapes")
    if a.bank:
        bank = Bank.open(a.bank)
    else:
        data = Path(a.data) if a.data else (cs if a.smoke else shared / "data" / "cityscapes_sequences")
        limit = 3 if a.smoke else None
        out = Path(a.cache) / ("smoke" if a.smoke else data.name)
        bank = build_bank_from_paths([data], out, space=space, limit=limit, progress=False, workers=None)
    val = open_dataset(cs, split="val", space=space, size=bank.size, require_images=False, cache=False)
    n_lay = 2 if a.smoke else len(val)
    layouts = [np.asarray(val.arrays(i)[0]) for i in range(n_lay)]
    sizes = [2000] if a.smoke else a.segments
    print(f"bank {bank.path}: {len(bank)} indexed segments, {bank.num_images} images; {n_lay} query layouts, k={a.k}")
    print(
        f"{'mode':8s} {'segments':>9s} {'mean s':>8s} {'median s':>9s} {'max s':>7s} "
        f"{'index MB':>9s} {'B/segment':>10s} {'runs B/seg':>11s}"
    )
    results = []
    for n in sizes:
        r = benchmark_retrieval(bank, layouts, n_segments=n, k=a.k, repeat=a.repeat)
        r["maxrss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3
        results.append(r)
        for mode in ("iou", "context"):
            m = r[mode]
            print(
                f"{mode:8s} {r['segments']:9d} {m['mean_s']:8.3f} {m['median_s']:9.3f} {m['max_s']:7.3f} "
                f"{r['index_mb']:9.1f} {r['index_bytes_per_segment']:10.0f} {r['runs_bytes_per_segment']:11.0f}"
            )
        print(f"  (warm-up {r['warm_seconds']:.1f} s, peak RSS so far {r['maxrss_mb']:.0f} MB)")
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
