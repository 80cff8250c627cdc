"""A Hugging Face ``datasets`` dataset of canonical records, by hub name (online) or local path
(a ``save_to_disk`` directory, or a data file / directory that ``load_dataset`` reads)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from hybrid_dist.data.bad_records import BadRecords
from hybrid_dist.data.jsonl import records_from_rows
from hybrid_dist.data.records import DataError, ParallelRecord, clip


_FILE_FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}


def read_hf_dataset(
    name_or_path: str,
    split: str = "train",
    config_name: str | None = None,
    columns: Mapping[str, str] | None = None,
    bad: BadRecords | None = None,
    max_chars: int = 0,
) -> list[ParallelRecord]:
    """``columns`` maps canonical field -> dataset column where they differ,
    e.g. ``{"positive": "passage", "group_id": "id"}``. Rows are validated like JSONL lines."""
    try:
        import datasets
    except ImportError:
        raise ImportError("data.format: hf needs the datasets package: pip install 'hybrid-dist[data]'") from None

    source = f"dataset {name_or_path}[{split}]"
    path = Path(name_or_path)
    try:
        if path.is_dir() and any((path / f).exists() for f in ("dataset_info.json", "dataset_dict.json")):
            loaded = datasets.load_from_disk(str(path))
            ds = loaded[split] if isinstance(loaded, datasets.DatasetDict) else loaded
        elif path.is_file() and path.suffix in _FILE_FORMATS:
            ds = datasets.load_dataset(_FILE_FORMATS[path.suffix], data_files=str(path), split="train")
        else:
            ds = datasets.load_dataset(name_or_path, config_name, split=split)
    except KeyError:
        raise DataError(source, None, None, "no such split") from None
    except Exception as e:  # noqa: BLE001 - datasets/pyarrow raise many types for a damaged file
        raise DataError(source, None, None, f"cannot load: {_root_cause(e)}") from None
    rename = {v: k for k, v in (columns or {}).items()}
    missing = [c for c in rename if c not in ds.column_names]
    if missing:
        raise DataError(source, None, missing[0], f"no such column; columns are {ds.column_names}")
    rows = ({rename.get(k, k): v for k, v in row.items()} for row in ds)
    records = records_from_rows(rows, source, bad, max_chars)
    if not records:
        raise DataError(source, None, None, "no records" + (" left after skipping bad ones" if bad and bad.count else ""))
    return records


def _root_cause(error: BaseException) -> str:
    """The innermost cause, which names the real problem (datasets wraps it in a generic
    "An error occurred while generating the dataset")."""
    while error.__cause__ is not None:
        error = error.__cause__
    return clip(f"{type(error).__name__}: {error}")
