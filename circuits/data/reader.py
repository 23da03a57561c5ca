"""Read the packed-token cache by index (imports only numpy, tensorstore and the standard library).

Cache layout (a directory written by `circuits.data.cache_builder` / `python -m launch.build_data`):
  <cache>/meta.json          metadata: format, task, vocab, vocab_size, vocab_sha256, seq_len, n_sequences,
                             seed, add_bos, pack, special ids, dtypes, build config
  <cache>/tokens             zarr3 array [N, T+1] (uint16 if the vocabulary fits, else int32)
  <cache>/segment_ids        zarr3 array [N, T+1] uint16: 1, 2, ... per document within the row; 0 = padding
  <cache>/positions          zarr3 array [N, T+1] uint16/int32: position within the document fragment

Global batch i is rows [i*B, (i+1)*B); process p of P reads rows [i*B + p*B/P, i*B + (p+1)*B/P). A row's
inputs are row[:-1], its targets row[1:]. Resuming needs only the step.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Mapping

import numpy as np
import tensorstore as ts

from circuits.errors import CircuitsError

FORMAT = "circuits.packed_tokens.v1"
ARRAYS = ("tokens", "segment_ids", "positions")
BUILD_HINT = "python -m launch.build_data --config configs/<name>.py"


class CacheError(CircuitsError, ValueError):
  """The cache is missing, incomplete or was built for another config; the message says what to run."""


def spec_for(path: str, name: str) -> dict:
  """Tensorstore spec of one cache array (zarr3 driver, local file kvstore)."""
  return {"driver": "zarr3", "kvstore": {"driver": "file", "path": os.path.join(os.path.abspath(path), name)}}


def file_sha256(path: str) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return h.hexdigest()


def vocab_fingerprint(vocab: str) -> str:
  """sha256 of the SentencePiece model file for "spm:<path>" vocabularies, "" otherwise (or if missing)."""
  if vocab.startswith("spm:") and os.path.exists(vocab[4:]):
    return file_sha256(vocab[4:])
  return ""


def read_meta(path: str) -> dict:
  meta_path = os.path.join(path, "meta.json")
  if not os.path.exists(meta_path):
    raise CacheError(f"no token cache at {path!r} (missing meta.json, or the build did not finish): build it "
                     f"with `{BUILD_HINT}`")
  with open(meta_path) as f:
    meta = json.load(f)
  if meta.get("format") != FORMAT:
    raise CacheError(f"{path!r} has format {meta.get('format')!r}, expected {FORMAT!r}: rebuild it with "
                     f"`{BUILD_HINT}`")
  return meta


def check_meta(meta: Mapping[str, Any], path: str, **expected) -> None:
  """Raise CacheError naming every field where the cache differs from what the config expects.

  Fields with value None are not checked. `vocab` is compared by spec string and, for SentencePiece
  models, by the sha256 of the model file.
  """
  wrong = []
  for key, want in expected.items():
    if want is None:
      continue
    have = meta.get(key)
    if key == "n_sequences":
      if have < want:
        wrong.append(f"n_sequences: cache has {have} rows, config needs at least {want}")
      continue
    if have != want:
      wrong.append(f"{key}: cache has {have!r}, config has {want!r}")
  vocab = expected.get("vocab")
  if vocab and meta.get("vocab") == vocab and meta.get("vocab_sha256"):
    now = vocab_fingerprint(vocab)
    if now and now != meta["vocab_sha256"]:
      wrong.append(f"vocab: the SentencePiece model {vocab[4:]!r} changed since the cache was built "
                   "(sha256 differs)")
  if wrong:
    raise CacheError(f"token cache {path!r} does not match the config:\n  " + "\n  ".join(wrong) +
                     f"\nRebuild it with `{BUILD_HINT}` (or point data.cache at a cache built for this config).")


class TokenCache:
  """Random access to cache rows. Cheap to construct; holds open tensorstore handles.

  >>> cache = TokenCache(path, seq_len=64, vocab="synthetic:384")
  >>> batch = cache.batch(step, batch_size=32)   # dict of int32 [B, T+1] arrays
  """

  def __init__(self, path: str, *, seq_len: int | None = None, vocab: str | None = None,
               task: str | None = None, add_bos: bool | None = None, pack: bool | None = None,
               min_sequences: int | None = None):
    self.path = path
    self.meta = read_meta(path)
    check_meta(self.meta, path, seq_len=seq_len, vocab=vocab, task=task, add_bos=add_bos, pack=pack,
               n_sequences=min_sequences)
    self._arrays = {}
    for name in ARRAYS:
      try:
        self._arrays[name] = ts.open(spec_for(path, name), open=True, read=True).result()
      except Exception as e:  # pylint: disable=broad-except
        raise CacheError(f"cache {path!r}: cannot open array {name!r} ({e}); rebuild it with "
                         f"`{BUILD_HINT}`") from e
    shape = tuple(self._arrays["tokens"].shape)
    if shape != (self.meta["n_sequences"], self.meta["seq_len"] + 1):
      raise CacheError(f"cache {path!r}: tokens shape {shape} disagrees with meta.json; rebuild it with "
                       f"`{BUILD_HINT}`")

  @classmethod
  def from_config(cls, data_cfg, batch_size: int | None = None, steps: int | None = None) -> "TokenCache":
    """Open `data_cfg.cache` and check it against the config's data section (and batch_size * steps rows)."""
    if not data_cfg.cache:
      raise CacheError(f"config data.cache is empty: set it, then build the cache with `{BUILD_HINT}`")
    need = batch_size * steps if batch_size and steps else None
    return cls(data_cfg.cache, seq_len=int(data_cfg.seq_len), vocab=str(data_cfg.vocab), task=str(data_cfg.task),
               add_bos=bool(data_cfg.add_bos), pack=bool(data_cfg.pack), min_sequences=need)

  @property
  def n_sequences(self) -> int:
    return int(self.meta["n_sequences"])

  @property
  def seq_len(self) -> int:
    return int(self.meta["seq_len"])

  @property
  def vocab_size(self) -> int:
    return int(self.meta["vocab_size"])

  def num_batches(self, batch_size: int) -> int:
    return self.n_sequences // batch_size

  def rows(self, start: int, stop: int, arrays=ARRAYS) -> dict[str, np.ndarray]:
    """Rows [start, stop) of each array, as int32 numpy arrays of shape [stop-start, T+1]."""
    if not 0 <= start <= stop <= self.n_sequences:
      raise IndexError(f"rows [{start}, {stop}) are outside the cache's {self.n_sequences} rows ({self.path!r}): "
                       f"build a larger cache (data.n_sequences) with `{BUILD_HINT}`")
    futures = {k: self._arrays[k][start:stop].read() for k in arrays}
    return {f"{k}_BxT1": np.asarray(f.result(), np.int32) for k, f in futures.items()}

  def batch(self, step: int, batch_size: int, process_index: int = 0, process_count: int = 1,
            arrays=ARRAYS) -> dict[str, np.ndarray]:
    """This process's slice of global batch `step`: keys tokens_BxT1, segment_ids_BxT1, positions_BxT1.

    Process p of P reads rows [step*B + p*B/P, step*B + (p+1)*B/P); B must be divisible by P.
    """
    start, stop = batch_rows(step, batch_size, process_index, process_count)
    return self.rows(start, stop, arrays)


def batch_rows(step: int, batch_size: int, process_index: int = 0, process_count: int = 1) -> tuple[int, int]:
  """[start, stop) of process `process_index`'s slice of global batch `step`."""
  if batch_size % process_count:
    raise ValueError(f"global batch {batch_size} is not divisible by {process_count} processes")
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index} is not in [0, {process_count})")
  per = batch_size // process_count
  start = step * batch_size + process_index * per
  return start, start + per


def inputs_targets(batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Split [B, T+1] rows into model inputs and next-token targets ([B, T] each).

  loss_mask_BxT is 1 where the target is a real token (segment id > 0); segment_ids_BxT/positions_BxT are
  the inputs' (use them when data.segment_mask is on; Pythia/OLMo-style training ignores them).
  """
  toks, seg, pos = batch["tokens_BxT1"], batch["segment_ids_BxT1"], batch["positions_BxT1"]
  return dict(tokens_BxT=toks[:, :-1], targets_BxT=toks[:, 1:], segment_ids_BxT=seg[:, :-1],
              positions_BxT=pos[:, :-1], loss_mask_BxT=(seg[:, 1:] > 0).astype(np.float32))
