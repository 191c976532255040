"""Redraw the loss curve from a train_result.json (e.g. on this machine when the GPU machine had
no matplotlib): python3 -m tools.eagle.plot_loss train_result.json loss_curve.png"""
from __future__ import annotations

import json
import sys

from tools.eagle.train import plot_curve


def main(argv=None) -> None:
    src, png = (argv if argv is not None else sys.argv[1:])[:2]
    curve = json.load(open(src))["loss_curve"]
    if not plot_curve(curve["steps"], curve["loss"], png):
        raise SystemExit("matplotlib is not installed")
    print(f"wrote {png}")


if __name__ == "__main__":
    main()
