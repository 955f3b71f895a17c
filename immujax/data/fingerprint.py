"""What data a run consumed: fingerprints of files and arrays, and the paper's known files.

A run records (``immujax.runner.provenance``) the files it read, each with its size and
sha256, and one sha256 over the arrays it computed from (after loading and preprocessing,
:func:`arrays_sha256`). Two runs computed from equal arrays are interchangeable; a resume
on other arrays is refused by the run machinery.

The paper's files have known checksums (``../shared/data/*/README.md``): the authors' D1/D2
split and Kaggle's train/test.csv, and the four MNIST IDX files (their decompressed content
is compared, so any gzip of the canonical files matches). A file with a known name and other
bytes is reported by :func:`known_file_note`, e.g. ``D1.csv differs from the paper's split:
1 row fewer (308, not 309)`` — a note, not an error: users run on their own data.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import pathlib
from typing import Iterable, Optional

import numpy as np


@dataclasses.dataclass(frozen=True)
class KnownFile:
  """A file of the paper's data with a known checksum.

  Attributes:
    what: how to name it in a note (``"the paper's split"``).
    sha256: of the file as distributed (for ``.gz``: of the gzip stream stored in shared/).
    content_sha256: of the decompressed content (MNIST), else None.
    items: rows (CSV, header excluded) or images/labels (IDX).
    unit: ``"row"``, ``"image"`` or ``"label"``.
  """
  what: str
  sha256: str
  items: int
  unit: str
  content_sha256: Optional[str] = None


KNOWN_FILES = {
    "D1.csv": KnownFile("the paper's split (the authors' D1.csv)",
                        "3ca4cd2207dc5321266228639a4a55ea6870c45fb637b46fc7783b4bb484da34",
                        309, "row"),
    "D2.csv": KnownFile("the paper's split (the authors' D2.csv)",
                        "c2026a8ea44c8e4a7f32b1f604c4c4ff596759352303b091c7d0c73bedbfed45",
                        1151, "row"),
    "train.csv": KnownFile("Kaggle's train.csv",
                           "1e18addf81e5e4d347cc17ee6075bbe4a42b7fa26b9e5b063e8f692a5f929d41",
                           1460, "row"),
    "test.csv": KnownFile("Kaggle's test.csv",
                          "8fdd3d829d4d986b58f845c9553b225e67dd8383624d90fb6ca1d4bed5798c1e",
                          1459, "row"),
    "train-images-idx3-ubyte": KnownFile(
        "the MNIST training images",
        "0b367032e93c5d0cea0925647cfdb18614af8ee15f83e6f2fc2ad904a6835971", 60000, "image",
        "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db"),
    "train-labels-idx1-ubyte": KnownFile(
        "the MNIST training labels",
        "1787548bbe0bff1ec2ecdc0ef292b02df999e2d1a6002d27500982c652b17203", 60000, "label",
        "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5"),
    "t10k-images-idx3-ubyte": KnownFile(
        "the MNIST test images",
        "1a1a05eab793c14bb050b398624a11b0ffd1a2953baed553b1b9bd079e2a20be", 10000, "image",
        "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7"),
    "t10k-labels-idx1-ubyte": KnownFile(
        "the MNIST test labels",
        "b91679a0acfe4ba0e50a2437a903084cba1f5f92592b016a25a7dfd00455798b", 10000, "label",
        "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2"),
}
"""By file name (``.gz`` stripped); checksums from ``../shared/data/*/README.md``."""


def sha256_file(path) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return h.hexdigest()


def arrays_sha256(*arrays) -> str:
  """One sha256 over arrays' dtypes, shapes and bytes (in order; None is skipped).

  Example:
    >>> a = np.arange(3.0)
    >>> arrays_sha256(a) == arrays_sha256(a.copy()) != arrays_sha256(a[:2])
    True
  """
  h = hashlib.sha256()
  for a in arrays:
    if a is None:
      continue
    a = np.ascontiguousarray(np.asarray(a))
    h.update(f"{a.dtype.str}{a.shape}".encode())
    h.update(a.tobytes())
  return h.hexdigest()


def file_record(path) -> dict:
  """``{"name", "path", "bytes", "sha256"}`` of one file."""
  path = pathlib.Path(path)
  return {"name": path.name, "path": str(path.resolve()), "bytes": path.stat().st_size,
          "sha256": sha256_file(path)}


def _known(name: str) -> Optional[KnownFile]:
  return KNOWN_FILES.get(name[:-3] if name.endswith(".gz") else name)


def _count_items(path: pathlib.Path, known: KnownFile) -> Optional[int]:
  try:
    if known.unit == "row":
      with open(path, "rb") as f:
        return max(sum(1 for line in f if line.strip()) - 1, 0)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
      head = f.read(8)
    return int.from_bytes(head[4:8], "big") if len(head) == 8 else None
  except (OSError, EOFError):
    return None


def _content_sha256(path: pathlib.Path) -> Optional[str]:
  try:
    if path.suffix != ".gz":
      return sha256_file(path)
    h = hashlib.sha256()
    with gzip.open(path, "rb") as f:
      for block in iter(lambda: f.read(1 << 20), b""):
        h.update(block)
    return h.hexdigest()
  except (OSError, EOFError):
    return None


def known_file_note(record: dict) -> Optional[str]:
  """A note when a file named like one of the paper's has other content, else None.

  Args:
    record: :func:`file_record` of the file.

  Returns:
    e.g. ``"D1.csv differs from the paper's split (the authors' D1.csv): 1 row fewer (308,
    not 309)"``; None for an unknown name or the known content.
  """
  known = _known(record["name"])
  if known is None or record["sha256"] == known.sha256:
    return None
  path = pathlib.Path(record["path"])
  if known.content_sha256 is not None and _content_sha256(path) == known.content_sha256:
    return None   # the canonical content, compressed differently
  n = _count_items(path, known)
  what = f"{record['name']} differs from {known.what}"
  if n is None or n == known.items:
    return (f"{what}: the same {known.items} {known.unit}s, other content "
            f"(sha256 {record['sha256'][:12]}…, expected {known.sha256[:12]}…)")
  diff = n - known.items
  plural = "s" if abs(diff) != 1 else ""
  return (f"{what}: {abs(diff)} {known.unit}{plural} {'more' if diff > 0 else 'fewer'} "
          f"({n}, not {known.items})")


def data_record(source: str, files: Iterable = (), arrays: Iterable = ()) -> dict:
  """The data part of a run's provenance.

  Args:
    source: what the data are, e.g. ``"house prices: D1/D2 in ../shared/data/house_price"``.
    files: the files read (paths).
    arrays: the arrays the run computes from, after loading (fingerprinted together).

  Returns:
    ``{"source", "files": [file_record...], "arrays_sha256", "notes": [known-file notes]}``.
  """
  records = [file_record(p) for p in files]
  notes = [n for n in (known_file_note(r) for r in records) if n]
  return {"source": source, "files": records, "arrays_sha256": arrays_sha256(*arrays),
          "notes": notes}


def describe_change(old: dict, new: dict) -> str:
  """What differs between two :func:`data_record` s, in a few words (for one error line).

  Example:
    >>> a = {"source": "x", "files": [{"name": "D1.csv", "bytes": 10, "sha256": "ab" * 32}],
    ...      "arrays_sha256": "0"}
    >>> b = {"source": "x", "files": [{"name": "D1.csv", "bytes": 12, "sha256": "cd" * 32}],
    ...      "arrays_sha256": "1"}
    >>> describe_change(a, b)
    'D1.csv changed (10 → 12 bytes, sha256 abababab → cdcdcdcd)'
  """
  parts = []
  before = {f["name"]: f for f in old.get("files", [])}
  after = {f["name"]: f for f in new.get("files", [])}
  for name in sorted(set(before) | set(after)):
    a, b = before.get(name), after.get(name)
    if a is None:
      parts.append(f"{name} is new")
    elif b is None:
      parts.append(f"{name} is no longer read")
    elif a["sha256"] != b["sha256"]:
      parts.append(f"{name} changed ({a['bytes']} → {b['bytes']} bytes, sha256 "
                   f"{a['sha256'][:8]} → {b['sha256'][:8]})")
  if not parts and old.get("source") != new.get("source"):
    parts.append(f"the source changed ({old.get('source')!r} → {new.get('source')!r})")
  if not parts:
    parts.append("the loaded arrays differ although the files are the same (the loader or "
                 "its settings changed)")
  return "; ".join(parts)
