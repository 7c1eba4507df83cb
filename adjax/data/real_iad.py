"""Real-IAD (Wang et al., CVPR 2024) as published: images under `<root>/realiad_1024/<category>/`
and the splits in JSON files (`<root>/realiad_jsons/<category>.json`; anomalib's unpacking
nests them one folder deeper, `realiad_jsons/realiad_jsons/`, which is read too).

A split file holds `meta` (`prefix`: the category's image folder, `normal_class`: "OK") and the
lists `train` and `test` of samples {category, anomaly_class, image_path, mask_path}. Every
sample is one image of one of the five camera views (C1-C5), kept as a separate image. As the
official code reads them: every training sample is normal; a test sample is anomalous when its
class is not the normal class and it has a mask (an NG view whose defect is not visible has no
mask and counts as normal). This gives the MVTec-style splits the seed-004 thesis trained and
tested on: train = the JSON's train list, test = its test list with masks.
"""

import collections
import json
import pathlib

from adjax.data.layouts import DataError, Sample


def split_file(root: pathlib.Path, json_dir: str, category: str) -> pathlib.Path:
    """The category's JSON split file in `json_dir` (e.g. realiad_jsons, realiad_jsons_sv)."""
    for candidate in (root / json_dir / f"{category}.json",
                      root / "realiad_jsons" / json_dir / f"{category}.json"):
        if candidate.is_file():
            return candidate
    raise DataError(f"Real-IAD split file {root / json_dir / f'{category}.json'} does not exist")


def _entries(path: pathlib.Path, split: str) -> tuple[dict, list[dict]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"Real-IAD split file {path} cannot be read as JSON ({err})") from err
    entries = data.get(split) if isinstance(data, dict) else None
    if not isinstance(entries, list) or not all(isinstance(e, dict) and e.get("image_path")
                                                for e in entries):
        raise DataError(f"Real-IAD split file {path} has no list of samples with an "
                        f"image_path under {split!r}")
    return data.get("meta") or {}, entries


def list_samples(root: str | pathlib.Path, category: str, split: str,
                 json_dir: str = "realiad_jsons",
                 images: str = "realiad_1024") -> list[Sample]:
    """The samples of `split` ("train" or "test") of one Real-IAD category, in the JSON's order;
    a file the JSON names that does not exist stops with one sentence naming it."""
    root = pathlib.Path(root)
    if not category:
        raise DataError(f"the 'real_iad' layout needs a category (e.g. plastic_nut) in {root}")
    if split not in ("train", "test"):
        raise DataError(f"unknown split {split!r} for layout 'real_iad'; expected train or test")
    path = split_file(root, json_dir, category)
    meta, entries = _entries(path, split)
    folder = root / images / meta.get("prefix", category)
    normal_class = meta.get("normal_class", "OK")
    samples = []
    for entry in entries:
        image = folder / entry["image_path"]
        anomalous = (split == "test" and entry.get("anomaly_class") != normal_class
                     and bool(entry.get("mask_path")))
        mask = folder / entry["mask_path"] if anomalous else None
        for file in (image, mask):
            if file is not None and not file.is_file():
                raise DataError(f"Real-IAD file {file} named in {path} does not exist")
        samples.append(Sample(image, mask, int(anomalous),
                              entry["anomaly_class"] if anomalous else "good"))
    if not samples:
        raise DataError(f"Real-IAD split file {path} lists no {split} samples")
    return samples


def counts(samples: list[Sample]) -> str:
    """'N normal, M anomalous (defect: count, ...)' for a log line."""
    defects = collections.Counter(s.defect for s in samples if s.label)
    normal = sum(1 for s in samples if not s.label)
    detail = ", ".join(f"{d} {n}" for d, n in sorted(defects.items()))
    return f"{normal} normal, {sum(defects.values())} anomalous" + (f" ({detail})" if detail
                                                                     else "")
