"""The generalization gate's table: each diffusion variant against LAINR, per set and scale.

Reads the ``results.jsonl`` of an evaluation (``cascade evaluate --config
configs/eval/unseen.yaml`` writes ``outputs/eval/unseen/results.jsonl``) and prints every
check of ``cascade.evaluation.gate`` (the targets of issue 13) with its value and PASS or
MISS, then how many passed. Also the spread of LAINR's own PSNR over the colour variants,
for comparison. Exit status 0 whether or not the checks pass (it reports, it does not gate
a build; ``tests/test_generalization.py`` is the test).

    python scripts/gate_report.py outputs/eval/unseen [more result folders ...]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cascade.evaluation.gate import COLOUR_SETS, gate
from cascade.evaluation.store import ResultsStore


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folders", nargs="+", help="evaluation output folders (results.jsonl)")
    args = ap.parse_args()
    rows = []
    for folder in args.folders:
        path = Path(folder) / "results.jsonl"
        if not path.is_file():
            print(f"gate_report: {path} does not exist; run cascade evaluate first",
                  file=sys.stderr)
            return 2
        rows += ResultsStore(path).merged()
    checks = gate(rows)
    if not checks:
        print("gate_report: no cascade/sr3 rows with LAINR rows on the same images",
              file=sys.stderr)
        return 2
    w = max(40, *(len(c.method) for c in checks))  # labels grow with the settings that differ
    print(f"{'dataset':<18} {'scale':>5}  {'method':<{w}} {'target':<36} {'value':>8}  result")
    for c in checks:
        print(f"{c.dataset:<18} {'x' + format(c.scale, 'g'):>5}  {c.method:<{w}} "
              f"{c.target:<36} {c.value:>8.3f}  {'PASS' if c.passed else 'MISS'}")
    for dataset in COLOUR_SETS:
        for scale in sorted({float(r["scale"]) for r in rows if r["dataset"] == dataset}):
            values = [r["psnr"] for r in rows if r["dataset"] == dataset
                      and float(r["scale"]) == scale and r["method"] == "lainr"]
            if len(values) > 1:
                print(f"(LAINR's own PSNR spread over {dataset} x{scale:g}: "
                      f"{max(values) - min(values):.3f} dB)")
    print(f"\n{sum(c.passed for c in checks)} of {len(checks)} checks pass")
    return 0


if __name__ == "__main__":
    sys.exit(main())
