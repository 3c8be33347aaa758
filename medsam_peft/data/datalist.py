"""Reading MONAI datalists (``{"training": [...], "validation": [...]}``) with errors that name the file and entry.

``monai.data.load_decathlon_datalist`` reports an invalid JSON file as a bare ``JSONDecodeError`` and a missing list
as ``KeyError``; an empty list only surfaces later as ``num_samples=0`` inside the DataLoader, and a missing image as
one failed sample minutes into training. ``load_datalist`` checks all of it before any model is built.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from monai.data import CacheDataset

from medsam_peft.errors import DataError, MissingFileError

PATH_KEYS = ("image", "label")
_EMPTY_LIST_CONSEQUENCE = {
    "training": "there is nothing to train on",
    "validation": "a run without validation keeps no best checkpoint and cannot stop early",
}
_SHOWN = 3


def _read_json(path: Path, what: str, fix: str) -> Any:
    """The JSON content of ``path``; a missing, unreadable or invalid file raises naming it as ``what``."""
    if not path.is_file():
        raise MissingFileError(f"{what} {path} does not exist")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DataError(f"{what} {path} is not valid JSON (line {err.lineno}, column {err.colno}: {err.msg}); "
                        f"{fix}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"{what} {path} cannot be read ({err}); fix its permissions or write it again") from None


def read_datalist(path: str | os.PathLike) -> dict[str, Any]:
    """The datalist file as a dict; a missing, unreadable or non-object file raises naming it."""
    path = Path(path)
    data = _read_json(path, "datalist", "fix it or write it again with medsam-peft prepare")
    if not isinstance(data, dict):
        raise DataError(f"datalist {path} must be a JSON object with 'training'/'validation' lists, got a "
                        f"{type(data).__name__}")
    return data


def load_datalist(
    path: str | os.PathLike,
    key: str = "training",
    base_dir: str | os.PathLike | None = None,
    required_keys: Sequence[str] = PATH_KEYS,
    allow_empty: bool = False,
) -> list[dict[str, Any]]:
    """The ``key`` list of the datalist at ``path`` with image/label paths joined to ``base_dir`` (default: the
    file's folder), as ``monai.data.load_decathlon_datalist`` returns it, after checking that the list exists, is
    not empty (unless ``allow_empty``), that every entry has ``required_keys`` and that every file exists.

    Raises:
        DataError: naming the datalist, the list, the entry index and what to do.
    """
    from monai.data import load_decathlon_datalist

    path = Path(path)
    data = read_datalist(path)
    lists = sorted(k for k, v in data.items() if isinstance(v, list))
    if key not in data:
        raise DataError(f"datalist {path} has no {key!r} list (it has: {', '.join(lists) or 'none'}); add one or "
                        "write the file again with medsam-peft prepare")
    entries = data[key]
    if not isinstance(entries, list):
        raise DataError(f"datalist {path}: {key!r} must be a list of {{'image': ..., 'label': ...}} entries")
    if not entries:
        if allow_empty:
            return []
        why = _EMPTY_LIST_CONSEQUENCE.get(key, "there is nothing to run on")
        raise DataError(f"datalist {path}: the {key!r} list is empty ({why}); add {key} entries or write the "
                        "datalist again with medsam-peft prepare")
    for index, entry in enumerate(entries):
        missing = [k for k in required_keys if not isinstance(entry, dict) or k not in entry]
        if missing:
            shown = json.dumps(entry)[:120] if isinstance(entry, (dict, list, str)) else repr(entry)
            raise DataError(f"datalist {path}: {key}[{index}] has no {missing[0]!r} key ({shown}); every entry needs "
                            + " and ".join(repr(k) for k in required_keys))
    base = Path(base_dir) if base_dir is not None else path.parent
    resolved = load_decathlon_datalist(path, data_list_key=key, base_dir=base)
    absent = [(i, k, item[k]) for i, item in enumerate(resolved) for k in PATH_KEYS
              if isinstance(item.get(k), str) and not os.path.exists(item[k])]
    if absent:
        index, field, file = absent[0]
        more = f" and {len(absent) - 1} more" if len(absent) > 1 else ""
        raise DataError(f"datalist {path}: {key}[{index}][{field!r}] {file} does not exist{more}; paths are relative "
                        f"to dataset_dir ({base}): check it, or write the datalist again with medsam-peft prepare")
    return resolved


def _box_problem(box: Any) -> str | None:
    if not isinstance(box, (list, tuple)) or len(box) != 4 or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in box):
        return f"'box' must be [x0, y0, x1, y1] (4 numbers, image pixels), got {json.dumps(box)[:80]}"
    if box[2] <= box[0] or box[3] <= box[1]:
        return f"'box' {list(box)} has zero or negative area (x1 > x0 and y1 > y0 are needed)"
    return None


def load_requests(path: str | os.PathLike | None, prompt_keys: Sequence[str] = (),
                  option: str = "--infer_datalist") -> list[dict[str, Any]]:
    """An inference request list (``[{"image": path[, "box": [x0, y0, x1, y1]][, "name": stem]}, ...]``, paths
    relative to the file's folder), checked as a whole before the first prediction: every entry has an existing
    image, the ``prompt_keys`` the model needs (``"box"`` for box-prompted models) with valid values, and a distinct
    output name.

    Raises:
        DataError: naming the file and the first offending entry's index.
    """
    if path is None:
        raise MissingFileError(f'inference needs {option} FILE.json: a list of {{"image": path, "box": [x0, y0, '
                               'x1, y1]}')
    path = Path(path)
    entries = _read_json(path, "request list", "fix it")
    if not isinstance(entries, list) or not entries:
        raise DataError(f"request list {path} must be a non-empty JSON list of {{\"image\": path, ...}} entries")
    resolved, names = [], {}
    for index, entry in enumerate(entries):
        where = f"request list {path}: entry [{index}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("image"), str):
            raise DataError(f"{where} needs an 'image' path, got {json.dumps(entry)[:120]}")
        image = path.parent / entry["image"]
        if not image.exists():
            raise DataError(f"{where}: image {image} does not exist (paths are relative to the list's folder)")
        for key in prompt_keys:
            if key not in entry:
                raise DataError(f"{where} has no {key!r}: this model is prompted with a box, give "
                                f"\"{key}\": [x0, y0, x1, y1] in image pixels for every entry")
        if "box" in entry and (problem := _box_problem(entry["box"])):
            raise DataError(f"{where}: {problem}")
        name = str(entry.get("name") or Path(entry["image"]).name.split(".")[0])
        if name in names:
            raise DataError(f"{where} writes the same output name {name!r} as entry [{names[name]}]; give each entry "
                            "a distinct \"name\"")
        names[name] = index
        resolved.append({**entry, "image": str(image)})
    return resolved


def ensure_datalist(datalist_file: str | os.PathLike, dataset: str, dataset_dir: str | os.PathLike,
                    prepare: Callable[[], Any] | None = None) -> Path:
    """Make sure the run's datalist exists: call ``prepare`` (offline datasets such as the demo's) or stop with the
    command that prepares ``dataset``."""
    path = Path(datalist_file)
    if path.is_file():
        return path
    if prepare is not None:
        prepare()
        if path.is_file():
            return path
    raise MissingFileError(
        f"no prepared {dataset} data: {path} does not exist; prepare it with `medsam-peft prepare {dataset} --root "
        f"{dataset_dir}`, or point the bundle at a prepared copy with --dataset_dir DIR")


class CheckedCacheDataset(CacheDataset):
    """MONAI's ``CacheDataset`` that loads every sample before reporting a failure, as one ``DataError`` listing the
    unreadable ones.

    The stock class stops its caching thread pool at the first exception while other samples are still being read;
    the interpreter then exits with worker threads inside native code (``terminate called without an active
    exception``, SIGABRT), and the user learns about one bad file per attempt.
    """

    def __init__(self, *args: Any, kind: str = "samples", **kwargs: Any) -> None:
        self._load_errors: list[tuple[int, BaseException]] = []
        self.kind = kind
        super().__init__(*args, **kwargs)

    def _load_cache_item(self, idx: int):
        try:
            return super()._load_cache_item(idx)
        except Exception as err:  # collected, reported together once the pool is done
            self._load_errors.append((idx, err))
            return None

    def _fill_cache(self, indices=None) -> list:
        self._load_errors = []
        cache = super()._fill_cache(indices)
        if self._load_errors:
            from medsam_peft.utils.user_errors import user_error

            errors = sorted(self._load_errors, key=lambda pair: pair[0])
            messages = [user_error(err) for _, err in errors]
            if any(m is None for m in messages):  # not a data problem: a bug, shown with its traceback
                raise next(err for (_, err), m in zip(errors, messages) if m is None)
            # the first message in full; the others by what they name first (the file, for reading errors)
            others = [m[0].split(": ", 1)[0] for m in messages[1:]]
            listed = ", ".join(others[:_SHOWN]) + (f" and {len(others) - _SHOWN} more" if len(others) > _SHOWN else "")
            raise DataError(f"{len(errors)} of {len(cache)} {self.kind} cannot be loaded: {messages[0][0]}"
                            + (f" (also failing: {listed})" if others else ""))
        return cache


__all__ = ["CheckedCacheDataset", "ensure_datalist", "load_datalist", "load_requests", "read_datalist"]
