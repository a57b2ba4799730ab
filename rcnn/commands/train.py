"""`rcnn train DATASET --out MODEL.pt`: fit the detector the config names (R-CNN, Fast R-CNN) and save it."""

from __future__ import annotations

import json


def add_device_option(parser) -> None:
    parser.add_argument(
        "--device",
        choices=["auto", "cpu", "cuda"],
        help="where the networks run (default: the config's device, auto: CUDA when torch sees a GPU)",
    )


def add_dask_option(parser) -> None:
    parser.add_argument(
        "--dask",
        metavar="ADDRESS",
        help="run the per-image stages on this Dask scheduler (needs rcnn[dask] and cache_dir on storage "
        "every worker sees): R-CNN proposals and CNN features, Fast R-CNN proposals",
    )


# what `--dask` sends to the cluster, per detector kind; the rest runs here
DASK_STAGES = {
    "rcnn": "proposals and CNN features run on the Dask workers, the rest (fine-tuning, the heads) here",
    "fast_rcnn": "proposals run on the Dask workers; the CNN (once per image, inside training and detection) "
    "runs here: Fast R-CNN has no per-image feature cache",
    "faster_rcnn": "nothing runs on the Dask workers: Faster R-CNN proposes with its own RPN and caches no "
    "per-image stage (detect --dask still sends each image's detection there)",
}


def use_dask(model, address) -> None:
    """Send `model`'s per-image stages to the Dask scheduler at `address` (None: none), and
    say which stages go there."""
    import logging

    if not address:
        return
    model.dask = address
    stages = DASK_STAGES.get(model.kind, f"a {model.kind} has no per-image cached stage: nothing runs on the cluster")
    logging.getLogger(__name__).info(f"--dask {address}: {stages}")


def add_config_options(parser) -> None:
    parser.add_argument("--config", help="experiment TOML file (default: the built-in defaults)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="TABLE.KEY=VALUE",
        help="override one setting, value in TOML syntax, e.g. --set features.crop_size=128 (repeatable)",
    )


def config_from_args(args):
    """The detector config of `--config` with every `--set` applied. The options together are
    one change, merged into the file by `rcnn.config.merge` (a different ``proposals.method``
    drops the file's other proposal settings); every value is checked here, before any work."""
    import tomllib

    from rcnn.detectors import load_config
    from rcnn.errors import ConfigError

    overrides: dict = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        *tables, name = key.strip().split(".")
        if not sep or not name or not all(tables):
            raise ConfigError(f"--set {item!r}: expected TABLE.KEY=VALUE")
        if "\n" in value or "\r" in value:  # TOML would read a second line as another key, unseen
            raise ConfigError(f"--set {item!r}: the value holds a line break; give one value per --set")
        try:
            parsed = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            parsed = value  # a bare word: a string
        target = overrides
        for t in tables:
            if not isinstance(target.setdefault(t, {}), dict):
                raise ConfigError(f"--set {item}: {t} was set to a value, not a table, by an earlier --set")
            target = target[t]
        target[name] = parsed
    if getattr(args, "device", None):
        overrides["device"] = args.device
    return load_config(args.config, overrides)


def add_skip_bad_option(parser) -> None:
    parser.add_argument(
        "--skip-bad",
        action="store_true",
        help="leave out bad samples (each named with its reason, and counted) instead of failing; "
        "every image is decoded when the dataset loads",
    )


def load_for_command(args, path, classes=None):
    """The dataset `path` with the command's ``--split``, ``--images`` and ``--skip-bad``
    (which decodes every image now, so a truncated or corrupt one is skipped here, not met
    and fatal minutes later); the skipped samples are printed."""
    from rcnn.datasets import load_dataset

    skip_bad = getattr(args, "skip_bad", False)
    dataset = load_dataset(
        path,
        args.split,
        args.images,
        skip_bad,
        classes=classes,
        **({"check_images": True, "decode": True} if skip_bad else {}),
    )
    report_skipped(dataset)
    return dataset


def report_skipped(dataset) -> None:
    """Print how many samples `--skip-bad` left out, and each one with its reason."""
    if dataset.skipped:
        print(f"skipped {len(dataset.skipped)} bad sample(s):")
        for path, reason in dataset.skipped:
            print(f"  {path}: {reason}")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "train", help="train a detector (the config's `detector`: rcnn by default) on a dataset"
    )
    parser.add_argument("dataset", help="VOC root, folder of images + .xml, COCO .json, YOLO root or .csv")
    parser.add_argument("--split", help="VOC split (ImageSets/Main/SPLIT.txt) or YOLO split, e.g. train")
    parser.add_argument("--images", help="image folder (COCO)")
    add_skip_bad_option(parser)
    parser.add_argument("--out", required=True, help="model file to write (.pt)")
    add_config_options(parser)
    add_device_option(parser)
    add_dask_option(parser)
    parser.set_defaults(func=run)


def run(args) -> int:
    from rcnn.commands.checks import output_file, output_folder
    from rcnn.detectors import build_detector, check_trainable

    output_file(args.out)
    config = config_from_args(args)
    output_folder(config.cache_dir, "cache_dir")
    dataset = load_for_command(args, args.dataset)
    check_trainable(dataset, args.dataset)
    model = build_detector(config)
    use_dask(model, args.dask)
    model.fit(dataset)
    model.save(args.out)
    print(json.dumps({"model": args.out, **model.fit_stats_}, indent=2))
    return 0
