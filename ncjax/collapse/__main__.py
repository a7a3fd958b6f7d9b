"""``python -m ncjax.collapse``: the collapse metrics of features you already have.

    python -m ncjax.collapse features.npz                # arrays: features, labels[, weight, bias, ood_features]
    python -m ncjax.collapse features.npy labels.npy --weight=w.npy --bias=b.npy --ood-features=ood.npy

``features`` are [N, D], or [L, N, D] for every layer (then the classifier
metrics use the last layer). Prints a table and writes JSON (``--json``;
default beside the first input, ``<name>.collapse.json``). A bad file or
argument prints one line and exits 2.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path


from ncjax import errors
from ncjax.collapse import files
from ncjax.collapse.finalise import CLASSIFIER
from ncjax.collapse.streaming import measure


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line and exit 2 (through errors.run_guarded), not argparse's usage block
        raise errors.UserError(f"{message} (see python -m ncjax.collapse --help)")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m ncjax.collapse", description=__doc__.splitlines()[0],
                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog="\n".join(__doc__.splitlines()[2:]))
    parser.add_argument("paths", nargs="+", help="FEATURES.npz, or FEATURES.npy LABELS.npy")
    parser.add_argument("--weight", help=".npy classifier weight [K, D] (rows are classes)")
    parser.add_argument("--bias", help=".npy classifier bias [K]")
    parser.add_argument("--ood-features", help=".npy out-of-distribution features [M, D] (for nc5)")
    parser.add_argument("--num-classes", type=int, help="K (default: max(label) + 1)")
    parser.add_argument("--covariance", action="store_true",
                        help="also accumulate the D×D covariance (N·D² work) for effective_rank_features")
    parser.add_argument("--chunk", type=int, default=4096, help="rows read at a time (default 4096)")
    parser.add_argument("--json", help="where to write the JSON (default: <first input>.collapse.json)")
    return parser


def _table(values: dict, layers: int | None) -> str:
    if layers is None:
        return "\n".join(f"{name:<24} {value:.6g}" for name, value in values.items())
    per_layer = [name for name, value in values.items() if isinstance(value, list)]
    widths = [max(10, len(name)) for name in per_layer]
    lines = ["layer " + " ".join(f"{name:>{w}}" for name, w in zip(per_layer, widths))]
    lines += [f"{layer:>5} " + " ".join(f"{values[name][layer]:>{w}.4g}" for name, w in zip(per_layer, widths))
              for layer in range(layers)]
    lines += [f"{name:<24} {values[name]:.6g}   (last layer)" for name in CLASSIFIER if name in values]
    return "\n".join(lines)


def run(argv: list[str]) -> dict:
    args = _parser().parse_args(argv)
    arrays = files.load(args.paths, args.weight, args.bias, args.ood_features)
    features, labels = arrays.features, arrays.labels
    if features.ndim not in (2, 3) or features.shape[-2] != labels.shape[0]:
        raise errors.DataError(f"features must be [N, D] or [L, N, D] with N = {labels.shape[0]} labels; "
                               f"got shape {list(features.shape)}")
    if labels.size == 0:
        raise errors.DataError("labels are empty: there is nothing to measure")
    num_classes = args.num_classes or int(labels.max()) + 1
    if arrays.weight is not None and arrays.weight.shape != (num_classes, features.shape[-1]):
        raise errors.DataError(
            f"weight must be [num_classes, dim] = [{num_classes}, {features.shape[-1]}] (rows are classes; transpose "
            f"a Flax Dense kernel; pass --num-classes if the last classes have no samples); "
            f"got shape {list(arrays.weight.shape)}")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        values = measure(features, labels, num_classes, arrays.weight, arrays.bias, chunk=args.chunk,
                         ood_features=arrays.ood_features, covariance=args.covariance)
    notes = [str(w.message) for w in caught]
    notes += [f"ignored arrays {list(arrays.ignored)} (expected names: {', '.join(files.ARRAY_NAMES)})"] \
        if arrays.ignored else []
    layers = features.shape[0] if features.ndim == 3 else None
    report = dict(inputs=[str(Path(p)) for p in args.paths], num_samples=int(labels.shape[0]),
                  num_classes=num_classes, dim=int(features.shape[-1]), layers=layers, metrics=values, notes=notes)
    out = Path(args.json) if args.json else Path(args.paths[0]).with_suffix(".collapse.json")
    try:
        out.write_text(json.dumps(report, indent=1) + "\n")
    except OSError as error:
        raise errors.DataError(f"cannot write {out}: {error.strerror or error}") from error
    print(_table(values, layers))
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    print(f"wrote {out}")
    return report


def main(argv: list[str] | None = None) -> int:
    return errors.run_guarded(lambda: run(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    sys.exit(main())
