"""``python -m ncjax.collapse``: the collapse metrics of features you already have.

    python -m ncjax.collapse features.npz          # arrays: features, labels[, weight, bias, ood_features]
    python -m ncjax.collapse features.safetensors  # the same names, e.g. from safetensors.torch.save_file
    python -m ncjax.collapse features.npy labels.npy --weight w.npy --bias=b.npy --ood-features ood.npy

``features`` are [N, D], or [L, N, D] for every layer (then the classifier
metrics use the last layer). Prints a table and writes JSON (``--json``;
default beside the first input, ``<name>.collapse.json``). Options take
``--name=VALUE`` or ``--name VALUE``. A bad file, array or option prints one
line and exits 2: non-finite values, labels out of range, shapes that do not fit.
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

from absl import flags

from ncjax import errors
from ncjax.collapse import files
from ncjax.collapse.conventions import CONVENTIONS
from ncjax.collapse.finalise import CLASSIFIER
from ncjax.collapse.streaming import measure

PROGRAM = "python -m ncjax.collapse"


def _flags() -> flags.FlagValues:
    """A fresh set of flags per run (so one call's values never leak into the next)."""
    values = flags.FlagValues()
    flags.DEFINE_boolean("help", False, "show this help and exit", short_name="h", flag_values=values)
    flags.DEFINE_string("weight", None, ".npy classifier weight [K, D] (rows are classes)", flag_values=values)
    flags.DEFINE_string("bias", None, ".npy classifier bias [K]", flag_values=values)
    flags.DEFINE_string("ood-features", None, ".npy out-of-distribution features [M, D] (for nc5)",
                        flag_values=values)
    flags.DEFINE_integer("num-classes", None, "K, at least 2 (default: max(label) + 1)", flag_values=values)
    flags.DEFINE_boolean("covariance", False, "also accumulate the D×D covariance (N·D² work) for "
                         "effective_rank_features", flag_values=values)
    flags.DEFINE_integer("chunk", 4096, "rows read at a time", flag_values=values)
    flags.DEFINE_enum("conventions", "ncjax", list(CONVENTIONS), "ncjax: global mean = sample mean, nc4 = "
                      "disagreement; rhubarbwu: global mean = mean of the class means, nc4 = agreement "
                      "(rhubarbwu/neural-collapse)", flag_values=values)
    flags.DEFINE_boolean("details", False, "also write per-class norms and variances and the K×K cosine grid "
                         "into the JSON", flag_values=values)
    flags.DEFINE_string("json", None, "where to write the JSON (default: <first input>.collapse.json)",
                        flag_values=values)
    return values


def _parse(argv: list[str]) -> tuple[flags.FlagValues, list[str]] | None:
    """The flags and the positional paths; None after printing the help."""
    values = _flags()
    try:
        paths = values([PROGRAM] + argv)[1:]
    except flags.Error as error:
        raise errors.UserError(f"{error} (see {PROGRAM} --help)") from error
    if values.help:
        listing = [line for line in values.get_help(include_special_flags=False).splitlines() if line.startswith(" ")]
        print(f"{__doc__}\nusage: {PROGRAM} FEATURES.npz|FEATURES.safetensors|FEATURES.npy LABELS.npy [options]\n\n"
              "options:\n" + "\n".join(listing))
        return None
    if not paths:
        raise errors.UserError(f"give FEATURES.npz, FEATURES.safetensors or FEATURES.npy LABELS.npy "
                               f"(see {PROGRAM} --help)")
    if values["num-classes"].value is not None and values["num-classes"].value < 2:
        raise errors.UserError(f"--num-classes must be at least 2; got {values['num-classes'].value}")
    if values.chunk < 1:
        raise errors.UserError(f"--chunk must be a positive number of rows; got {values.chunk}")
    return values, paths


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


def run(argv: list[str]) -> dict | None:
    parsed = _parse(argv)
    if parsed is None:
        return None
    args, paths = parsed
    arrays = files.load(paths, args.weight, args.bias, args["ood-features"].value)
    features, labels = arrays.features, arrays.labels
    if features.ndim not in (2, 3) or features.shape[-2] != labels.shape[0]:
        raise errors.DataError(f"features must be [N, D] or [L, N, D] with N = {labels.shape[0]} labels; "
                               f"got shape {list(features.shape)}")
    if labels.size == 0:
        raise errors.DataError("labels are empty: there is nothing to measure")
    num_classes = args["num-classes"].value or int(labels.max()) + 1
    if arrays.weight is not None and arrays.weight.shape != (num_classes, features.shape[-1]):
        raise errors.DataError(
            f"weight must be [num_classes, dim] = [{num_classes}, {features.shape[-1]}] (rows are classes; transpose "
            f"a Flax Dense kernel; pass --num-classes if the last classes have no samples); "
            f"got shape {list(arrays.weight.shape)}")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        values = measure(features, labels, num_classes, arrays.weight, arrays.bias, chunk=args.chunk,
                         ood_features=arrays.ood_features, covariance=args.covariance,
                         conventions=args.conventions, details=args.details)
    details = values.pop("details", None)
    notes = [str(w.message) for w in caught]
    notes += [f"ignored arrays {list(arrays.ignored)} (expected names: {', '.join(files.ARRAY_NAMES)})"] \
        if arrays.ignored else []
    layers = features.shape[0] if features.ndim == 3 else None
    report = dict(inputs=[str(Path(p)) for p in paths], num_samples=int(labels.shape[0]),
                  num_classes=num_classes, dim=int(features.shape[-1]), layers=layers,
                  conventions=args.conventions, metrics=values, notes=notes)
    if details is not None:
        report["details"] = details
    out = Path(args.json) if args.json else Path(paths[0]).with_suffix(".collapse.json")
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
