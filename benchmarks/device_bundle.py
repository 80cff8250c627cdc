"""Build what a device check needs beyond the repository, small enough to travel with it in one
call of the device tool (64 MiB for the whole working tree):

* ``model/``: multilingual-e5-small with only the vocabulary the study's texts use
  (hybrid_dist.models.e5_bundle: the same 4-bit weights, about 29 MB instead of 72 MB, plus its
  tokenizer.json);
* ``xquad-r.tar.gz``: the XQuAD-R files (read from ../shared, never committed).

    python benchmarks/device_bundle.py [--out .device-bundle] [--data ../shared/data/xquad-r]

``.device-bundle/`` is ignored by git; name it in the device tool's ``carry``.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tarfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hybrid_dist.atomic import write_bytes  # noqa: E402 - after the path insert

DATA_ARCHIVE = "xquad-r.tar.gz"
DEFAULT_OUT = REPO / ".device-bundle"


def pack_data(data: Path, archive: Path) -> int:
    """``data``'s files under the folder name ``xquad-r``, with fixed metadata (same bytes each time)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=9) as tar:
        for path in sorted(p for p in data.iterdir() if p.is_file()):
            info = tarfile.TarInfo(f"xquad-r/{path.name}")
            payload = path.read_bytes()
            info.size, info.mtime, info.mode = len(payload), 0, 0o644
            tar.addfile(info, io.BytesIO(payload))
    write_bytes(archive, buf.getvalue())
    return archive.stat().st_size


def main(argv: list[str] | None = None) -> int:
    from hybrid_dist.models.e5_bundle import build_bundle
    from hybrid_dist.models.import_e5 import MissingPackageError

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "xquad-r")
    args = p.parse_args(argv)
    if not (args.data / "en.json").is_file():
        print(f"error: {args.data}: no XQuAD-R files (en.json missing)", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        manifest = build_bundle(args.out / "model", args.data)
    except MissingPackageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    data_bytes = pack_data(args.data, args.out / DATA_ARCHIVE)
    sizes = {str(p.relative_to(args.out)): p.stat().st_size for p in sorted(args.out.rglob("*")) if p.is_file()}
    write_bytes(args.out / "sizes.json", (json.dumps(sizes, indent=1) + "\n").encode("utf-8"))
    total = sum(sizes.values())
    print(f"{args.out}: {total / 2**20:.1f} MiB in {time.perf_counter() - t0:.0f}s; vocabulary "
          f"{manifest['vocab_size']:,} of {manifest['original_vocab_size']:,} pieces; data {data_bytes / 2**20:.1f} MiB")
    for name, size in sizes.items():
        print(f"  {name}: {size / 2**20:.2f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
