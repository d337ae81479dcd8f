"""Write the centre crops of a dataset's images to a folder (a cheaper evaluation set on a CPU).

    python scripts/make_crops.py set14 192 outputs/set14_c192
    cascade evaluate --config configs/eval/sr3_set14.yaml data=[outputs/set14_c192]

With ``--downscale S`` it writes the low-resolution inputs instead, ``D(crop)`` by the
evaluation protocol's MATLAB-bicubic operator (rounded to 8 bits), e.g. to run
``cascade upscale`` on them and compare with the crops at the same names.
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
    ap.add_argument("--downscale", type=float, default=0.0, metavar="S",
                    help="write D(crop) at 1/S of the crop's size (the LR input) instead")
    args = ap.parse_args()
    if args.downscale:
        from cascade.data.degrade import check_scale

        check_scale(args.downscale)
    ds = resolve_dataset(args.data)
    for i in range(len(ds)):
        img = ds[i]["image"]
        H, W = img.shape[-2:]
        ch, cw = min(args.size, H), min(args.size, W)
        top, left = (H - ch) // 2, (W - cw) // 2
        crop = img[:, top:top + ch, left:left + cw]
        if args.downscale:
            from cascade.data.degrade import degrade

            crop = degrade(crop, args.downscale)[1]
        save_image(crop, Path(args.out) / f"{ds.names[i]}.png")
    what = f", downscaled x{args.downscale:g}" if args.downscale else ""
    print(f"{len(ds)} crops of {args.size}x{args.size}{what} -> {args.out}")


if __name__ == "__main__":
    main()
