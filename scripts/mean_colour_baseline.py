"""Paint each class of a layout its mean colour over a set of training photos: the simplest
"synthesis", a baseline that a model should beat (`semsynth evaluate` puts it side by side).

    python scripts/mean_colour_baseline.py --data ../shared/data/cityscapes_sequences \
        --exclude 'seq0005*' LABELS/ -o baseline/
writes baseline/<stem>.png at --size (default 128 256) for every layout in LABELS/."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from semsynth.data import list_label_files, open_dataset, save_image
from semsynth.labels import get_space


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("labels", help="folder of the layouts to paint")
    p.add_argument("--data", required=True, help="dataset whose photos give the class colours")
    p.add_argument("--exclude", action="append", default=[], help="sample name or glob left out of --data (repeatable)")
    p.add_argument("--size", type=int, nargs=2, default=(128, 256), metavar=("H", "W"))
    p.add_argument("-o", "--out", required=True)
    args = p.parse_args(argv)
    space = get_space("cityscapes")
    ds = open_dataset(args.data, space, size=tuple(args.size), exclude=args.exclude, cache=False)
    total = np.zeros((space.channels, 3))
    count = np.zeros(space.channels)
    for i in range(len(ds)):
        ids, rgb = ds.arrays(i)
        ids = np.asarray(ids).reshape(-1)
        np.add.at(total, ids, np.asarray(rgb, np.float64).reshape(-1, 3))
        count += np.bincount(ids, minlength=space.channels)
    mean = total / np.maximum(count, 1)[:, None]
    mean[count == 0] = total.sum(0) / count.sum()  # classes never seen: the overall mean colour
    for f in list_label_files(args.labels):
        ids = open_dataset([f], space, size=tuple(args.size), require_images=False, cache=False).arrays(0)[0]
        save_image(Path(args.out) / f"{f.stem}.png", mean[np.asarray(ids)] / 255)
    print(f"painted {len(list_label_files(args.labels))} layouts with the class colours of {len(ds)} photos")


if __name__ == "__main__":
    main()
