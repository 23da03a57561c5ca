"""Read the tensors of a Hugging Face checkpoint directory by their FILE keys (not transformers' names).

Formats: one `model.safetensors`; a sharded `model.safetensors.index.json` + shards; several
`*.safetensors` without an index; an old `pytorch_model.bin` (or its sharded index), read with
`torch.load(weights_only=True)` when torch is installed. Every failure is a ConversionError naming the
file or key.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from circuits.errors import CircuitsError


class ConversionError(CircuitsError, ValueError):
  """A checkpoint cannot be converted; the message names the file or key and expected vs found."""


class Checkpoint:
  """Tensors of one checkpoint directory: `keys()`, `shape(key)`, `get(key)`, `file_of(key)`."""

  def __init__(self, path):
    self.path = Path(path)
    self.bytes_read = 0
    self._where: dict[str, Path] = {}  # key -> file
    self._handles: dict[Path, object] = {}
    self._bin: dict[str, np.ndarray] = {}
    self._unread: dict[Path, set] = {}  # file -> keys not yet read (the handle is released when empty)
    p = self.path
    if not p.is_dir():
      raise ConversionError(f"{p}: not a checkpoint directory (expected a folder with config.json and "
                            f"*.safetensors; found {'a file' if p.exists() else 'nothing'})")
    st_index, bin_index = p / "model.safetensors.index.json", p / "pytorch_model.bin.index.json"
    if st_index.exists():
      self._from_index(st_index, self._open_safetensors)
    elif sorted(p.glob("*.safetensors")):
      for f in sorted(p.glob("*.safetensors")):
        for k in self._open_safetensors(f).keys():
          self._where[k] = f
    elif bin_index.exists():
      self._from_index(bin_index, self._load_bin)
    elif (p / "pytorch_model.bin").exists():
      self._load_bin(p / "pytorch_model.bin")
    else:
      raise ConversionError(f"{p}: no weights (expected model.safetensors, model.safetensors.index.json or "
                            f"pytorch_model.bin; found {sorted(x.name for x in p.iterdir())})")

  def _from_index(self, index: Path, opener):
    try:
      weight_map = json.loads(index.read_text())["weight_map"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
      raise ConversionError(f"{index}: not a valid index (expected JSON with a 'weight_map'; {e})") from e
    for fname in sorted(set(weight_map.values())):
      f = self.path / fname
      if not f.exists():
        raise ConversionError(f"{index}: shard {fname} is listed in weight_map but missing from {self.path}")
      found = set(opener(f).keys())
      listed = {k for k, v in weight_map.items() if v == fname}
      if listed - found:
        raise ConversionError(f"{f}: index lists {sorted(listed - found)[:3]} in this shard, not found in it")
      for k in found:
        self._where[k] = f

  def _open_safetensors(self, f: Path):
    from safetensors import safe_open

    if f not in self._handles:
      try:
        self._handles[f] = safe_open(str(f), framework="numpy")
      except Exception as e:  # SafetensorError: truncated file, bad header
        raise ConversionError(f"{f}: unreadable safetensors file (truncated or corrupt? expected "
                              f"{_header_size_hint(f)}; found {f.stat().st_size} bytes): {e}") from e
    return self._handles[f]

  def _load_bin(self, f: Path):
    try:
      import torch
    except ImportError as e:
      raise ConversionError(
          f"{f}: a torch pickle checkpoint needs torch to read (pip install torch), or convert it once "
          f"elsewhere: `python -c \"import torch; from safetensors.torch import save_file; "
          f"save_file(torch.load('pytorch_model.bin', weights_only=True), 'model.safetensors')\"`") from e
    try:
      sd = torch.load(str(f), map_location="cpu", weights_only=True)
    except Exception as e:
      raise ConversionError(f"{f}: cannot torch.load(weights_only=True) it (truncated or corrupt?): {e}") from e
    handle = {}
    for k, v in sd.items():
      if v.dtype == torch.bfloat16:
        v = v.float()
      handle[k] = v.numpy()
      self._where[k] = f
    self._handles[f] = _BinHandle(handle)
    return self._handles[f]

  def keys(self):
    return sorted(self._where)

  def __contains__(self, key):
    return key in self._where

  def file_of(self, key) -> Path:
    return self._where[key]

  def _handle(self, f: Path):
    """The open handle of file f (reopened if it was released)."""
    if f not in self._handles:
      if f.suffix == ".bin":
        self._load_bin(f)
      else:
        self._open_safetensors(f)
    return self._handles[f]

  def shape(self, key) -> tuple:
    return tuple(self._handle(self._where[key]).get_slice(key).get_shape())

  def get(self, key) -> np.ndarray:
    """Tensor `key` as a numpy array (bfloat16 files give ml_dtypes.bfloat16 arrays). A file's handle (its
    memory map, or a torch pickle's tensors) is released once every tensor in it has been read, so a
    layer-ordered conversion keeps about one shard resident, not the whole checkpoint."""
    f = self._where[key]
    try:
      h = self._handle(f)
      sl = h.get_slice(key)
      if getattr(sl, "get_dtype", lambda: "")() == "BF16":  # numpy has no bfloat16: read through jax
        from safetensors import safe_open
        with safe_open(str(f), framework="flax") as fl:
          x = np.asarray(fl.get_tensor(key))
      else:
        x = h.get_tensor(key)
    except ConversionError:
      raise
    except Exception as e:
      raise ConversionError(f"{f}: cannot read tensor {key} (truncated file?): {e}") from e
    self.bytes_read += x.nbytes
    self._unread.setdefault(f, {k for k, v in self._where.items() if v == f}).discard(key)
    if not self._unread[f]:
      self._handles.pop(f, None)
      self._unread.pop(f)
    return x


class _BinHandle:
  """The safe_open-like view of a loaded torch state dict."""

  def __init__(self, tensors):
    self.tensors = tensors

  def keys(self):
    return list(self.tensors)

  def get_slice(self, key):
    return _Slice(self.tensors[key].shape)

  def get_tensor(self, key):
    return self.tensors[key]


class _Slice:
  def __init__(self, shape):
    self.shape = shape

  def get_shape(self):
    return list(self.shape)


def _header_size_hint(f: Path) -> str:
  """What the safetensors header says the file size should be (for the truncated-file message)."""
  try:
    with open(f, "rb") as fh:
      n = int.from_bytes(fh.read(8), "little")
      header = json.loads(fh.read(n))
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    return f"{8 + n + end} bytes per its header"
  except Exception:
    return "a valid safetensors header"
