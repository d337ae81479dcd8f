"""Write the centre crops of a dataset's images to a folder (a cheaper evaluation set on a CPU).

    python scripts/make_crops.py set14 192 outputs/set14_c192
    cascade evaluate --config configs/eval/sr3_set14.yaml data=[outputs/set14_c192]
"""

from __future__ import annotations

import argparse
from pathlib import Path


def main() -> None:
    from cascade.data.datasets import resolve_dataset
    from cascade.data.io import save_image

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", help="set5, set14, bsd68, builtin or a folder")
    ap.add_argument("size", type=int, help="crop side in pixels (smaller images keep their side)")
    ap.add_argument("out", help="output folder")
    args = ap.parse_args()
    ds = resolve_dataset(args.data)
    for i in range(len(ds)):
        img = ds[i]["image"]
        H, W = img.shape[-2:]
        ch, cw = min(args.size, H), min(args.size, W)
        top, left = (H - ch) // 2, (W - cw) // 2
        save_image(img[:, top:top + ch, left:left + cw], Path(args.out) / f"{ds.names[i]}.png")
    print(f"{len(ds)} crops of {args.size}x{args.size} -> {args.out}")


if __name__ == "__main__":
    main()
