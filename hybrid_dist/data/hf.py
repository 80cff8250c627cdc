"""A Hugging Face ``datasets`` dataset of canonical records, by hub name (online) or local path
(a ``save_to_disk`` directory, or a data file / directory that ``load_dataset`` reads)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from hybrid_dist.data.jsonl import iter_rows
from hybrid_dist.data.records import DataError, ParallelRecord


_FILE_FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}


def read_hf_dataset(
    name_or_path: str,
    split: str = "train",
    config_name: str | None = None,
    columns: Mapping[str, str] | None = None,
) -> list[ParallelRecord]:
    """``columns`` maps canonical field -> dataset column where they differ,
    e.g. ``{"positive": "passage", "group_id": "id"}``."""
    import datasets

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
    except (FileNotFoundError, ValueError, ConnectionError) as e:
        raise DataError(source, None, None, f"cannot load: {e}") from None
    rename = {v: k for k, v in (columns or {}).items()}
    missing = [c for c in rename if c not in ds.column_names]
    if missing:
        raise DataError(source, None, missing[0], f"no such column; columns are {ds.column_names}")
    rows = ({rename.get(k, k): v for k, v in row.items()} for row in ds)
    records = list(iter_rows(rows, source))
    if not records:
        raise DataError(source, None, None, "no records")
    return records
