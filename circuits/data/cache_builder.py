"""Run the seqio pipeline once and write packed rows [N, T+1] to a tensorstore cache (see reader.py).

Packing (data.pack=True) follows Pythia/OLMo: documents (each ending in EOS for natural text) are
concatenated and cut into rows; a document may continue on the next row. With data.add_bos every row starts
with BOS (rows then carry T tokens of the stream). segment_ids number the document fragments in a row from 1
(0 = padding) and positions restart at 0 at each fragment (BOS takes position 0 of the first one); models
use them only with data.segment_mask. Unpacked (pack=False): one document per row, cut to fit, padded with 0.
Only this module (and tasks.py) import seqio/TensorFlow.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any, Iterator, Mapping

import numpy as np
import tensorstore as ts

from circuits.data import reader, synthetic

ROWS_PER_WRITE = 4096


def _tasks_module():
  from circuits.data import tasks
  return tasks


def _to_plain(x):
  if hasattr(x, "to_dict"):
    x = x.to_dict()
  if isinstance(x, Mapping):
    return {k: _to_plain(v) for k, v in x.items()}
  return x


def check_inputs(data_cfg) -> None:
  """Clear errors, before anything runs, for a missing corpus / vocabulary / unknown task."""
  tasks = _tasks_module()
  task, vocab = str(data_cfg.task), str(data_cfg.vocab)
  name = task[len(tasks.PREFIX):] if task.startswith(tasks.PREFIX) else task
  known = tasks.NATURAL + tasks.SYNTHETIC + tasks.MIXTURES
  if name not in known:
    raise ValueError(f"data.task={task!r} is not a circuits task; choose one of "
                     f"{[tasks.PREFIX + k for k in known]}")
  if name in tasks.NATURAL or name == "natural":
    corpora_dir = str(data_cfg.get("corpora", "data/corpora"))
    if not os.path.exists(os.path.join(corpora_dir, ".done")):
      raise FileNotFoundError(f"the corpora are missing ({corpora_dir}/.done not found): run `make corpora` "
                              f"(python -m launch.get_corpora --out {corpora_dir})")
    if not vocab.startswith("spm:") and vocab != "byte":
      raise ValueError(f"data.vocab={vocab!r}: natural-text task {task!r} needs 'spm:<path>' or 'byte'")
    tasks.make_vocabulary(vocab)  # raises FileNotFoundError naming the command for a missing model
  else:
    if not vocab.startswith("synthetic:"):
      raise ValueError(f"data.vocab={vocab!r}: synthetic task {task!r} needs 'synthetic:<size>'")
    need = tasks.task_vocab_size(task, data_cfg.get("synthetic"))
    have = int(vocab.split(":", 1)[1])
    if have < need:
      raise ValueError(f"data.vocab={vocab!r} is too small for {task!r}, which uses {need} ids: set "
                       f"data.vocab='synthetic:{need}' (or larger) and model.vocab_size >= {need}")
    # one row of each generator at the cache's row length: its own checks (e.g. two copies of span_max
    # must fit) fail here, not inside the tf.data pipeline, where they surface as a TensorFlow traceback
    specs = tasks.synthetic_specs(data_cfg.get("synthetic"))
    length = int(data_cfg.seq_len) + 1 - int(bool(data_cfg.add_bos))
    for kind in ((name,) if name in specs else ("repeat_span", "bigram_backcopy") if name == "repeat_bb_mix" else ()):
      try:
        synthetic.KINDS[kind][0](np.random.default_rng(0), 1, length, specs[kind])
      except ValueError as e:
        raise ValueError(f"data.synthetic / data.seq_len={int(data_cfg.seq_len)} (rows of {length} tokens) do not "
                         f"fit task {task!r}: {e}") from e


def examples(data_cfg, seed: int) -> tuple[Iterator[np.ndarray], Any, str]:
  """(iterator over the task's token arrays, seqio vocabulary, full task name) for `data_cfg`."""
  import seqio

  tasks = _tasks_module()
  check_inputs(data_cfg)
  task = str(data_cfg.task)
  if not task.startswith(tasks.PREFIX):
    task = tasks.PREFIX + task
  vocab = str(data_cfg.vocab)
  corpora_dir = str(data_cfg.get("corpora", "data/corpora"))
  syn = data_cfg.get("synthetic")
  if vocab.startswith("synthetic:"):
    tasks.register(corpora_dir=corpora_dir, synthetic_vocab=vocab, synthetic_params=syn)
  else:
    tasks.register(vocab=vocab, corpora_dir=corpora_dir, synthetic_params=syn)
  provider = seqio.get_mixture_or_task(task)
  split = str(data_cfg.get("split", "train"))
  length = int(data_cfg.seq_len) + 1 - int(bool(data_cfg.add_bos))
  ds = provider.get_dataset(sequence_length={"targets": length}, split=split, shuffle=False, seed=int(seed),
                            num_epochs=1, trim_output_features=False)
  vocabulary = provider.output_features["targets"].vocabulary
  if vocab.startswith("synthetic:"):
    # synthetic rows all have exactly `length` tokens: move them in blocks ([k, length] arrays), not one by one
    ds = ds.batch(tasks.CHUNK)
  return (ex["targets"] for ex in ds.as_numpy_iterator()), vocabulary, task


def pack_rows(docs: Iterator[np.ndarray], n_rows: int, seq_len: int, add_bos: bool, bos_id: int,
              pack: bool = True) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
  """Yield (tokens, segment_ids, positions), each int32 [T+1], for n_rows rows (see the module docstring)."""
  width = seq_len + 1
  body = width - int(add_bos)
  made = 0
  buf_t: list[np.ndarray] = []
  buf_d: list[np.ndarray] = []
  have, doc_idx = 0, 0
  j = np.arange(width)
  for doc in docs:
    doc = np.asarray(doc, np.int32)
    if doc.ndim == 2:  # a block of fixed-length documents, each exactly one row (synthetic tasks)
      if doc.shape[1] != body:
        raise ValueError(f"fixed-length block of width {doc.shape[1]} does not fill rows of {body} tokens")
      k = min(doc.shape[0], n_rows - made)
      ones = np.ones(width, np.int32)
      for r in range(k):
        yield (np.concatenate([[bos_id], doc[r]]).astype(np.int32) if add_bos else doc[r]), ones, j.astype(np.int32)
      made += k
      if made == n_rows:
        return
      continue
    if doc.size == 0:
      continue
    if not pack:
      toks = np.zeros(width, np.int32)
      seg = np.zeros(width, np.int32)
      piece = doc[:body]
      start = int(add_bos)
      if add_bos:
        toks[0] = bos_id
      toks[start:start + piece.size] = piece
      seg[:start + piece.size] = 1
      pos = np.where(seg > 0, j, 0).astype(np.int32)
      yield toks, seg, pos
      made += 1
      if made == n_rows:
        return
      continue
    buf_t.append(doc)
    buf_d.append(np.full(doc.size, doc_idx, np.int64))
    doc_idx += 1
    have += doc.size
    while have >= body:
      flat_t, flat_d = np.concatenate(buf_t), np.concatenate(buf_d)
      t, d = flat_t[:body], flat_d[:body]
      buf_t, buf_d = [flat_t[body:]], [flat_d[body:]]
      have -= body
      if add_bos:
        t, d = np.concatenate([[bos_id], t]).astype(np.int32), np.concatenate([d[:1], d])
      seg = (d - d[0] + 1).astype(np.int32)
      new = np.concatenate([[True], seg[1:] != seg[:-1]])
      start = np.maximum.accumulate(np.where(new, j, 0))
      yield t.astype(np.int32), seg, (j - start).astype(np.int32)
      made += 1
      if made == n_rows:
        return
  if made < n_rows:
    raise ValueError(f"the task ran out of data after {made} of {n_rows} rows: lower data.n_sequences "
                     f"(or use the train split, which repeats)")


def _create(path: str, name: str, dtype: str, shape: tuple[int, int], chunk_rows: int):
  spec = reader.spec_for(path, name)
  spec.update(create=True, delete_existing=True, dtype=dtype,
              metadata={"shape": list(shape),
                        "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [chunk_rows, shape[1]]}},
                        "codecs": [{"name": "bytes", "configuration": {"endian": "little"}},
                                   {"name": "zstd", "configuration": {"level": 3}}]})
  return ts.open(spec).result()


def n_rows_for(cfg) -> int:
  """data.n_sequences, or (0) train.steps * train.batch_size."""
  n = int(cfg.data.n_sequences)
  if n <= 0:
    n = int(cfg.train.steps) * int(cfg.train.batch_size)
  return n


def build_cache(data_cfg, seed: int, n_rows: int, path: str | None = None, progress: bool = False,
                overwrite: bool = True) -> dict:
  """Build the cache at `path` (default data_cfg.cache); returns its metadata.

  Written into <path>.tmp and renamed at the end, so an interrupted build leaves no half cache.
  """
  path = path or str(data_cfg.cache)
  if not path:
    raise ValueError("data.cache is empty: set the folder the cache is written to")
  if os.path.exists(path) and not overwrite:
    raise FileExistsError(f"{path} exists (pass overwrite=True to rebuild)")
  docs, vocabulary, task = examples(data_cfg, seed)
  seq_len, add_bos, pack = int(data_cfg.seq_len), bool(data_cfg.add_bos), bool(data_cfg.pack)
  vocab = str(data_cfg.vocab)
  if vocab.startswith("synthetic:"):
    bos_id, pad_id, eos_id = synthetic.BOS_ID, synthetic.PAD_ID, synthetic.EOS_ID
  elif vocab.startswith("spm:"):
    bos_id, pad_id, eos_id = int(vocabulary.bos_id), int(vocabulary.pad_id), int(vocabulary.eos_id)
  else:
    bos_id, pad_id, eos_id = int(vocabulary.eos_id), 0, int(vocabulary.eos_id)  # byte: no BOS of its own
  vocab_size = int(vocabulary.vocab_size)
  width = seq_len + 1
  tok_dtype = "uint16" if vocab_size <= 65535 else "int32"
  pos_dtype = "uint16" if width <= 65535 else "int32"
  tmp = path.rstrip("/") + ".tmp"
  shutil.rmtree(tmp, ignore_errors=True)
  os.makedirs(tmp)
  chunk_rows = max(1, min(n_rows, (1 << 20) // (2 * width)))
  arrays = {"tokens": _create(tmp, "tokens", tok_dtype, (n_rows, width), chunk_rows),
            "segment_ids": _create(tmp, "segment_ids", "uint16", (n_rows, width), chunk_rows),
            "positions": _create(tmp, "positions", pos_dtype, (n_rows, width), chunk_rows)}
  bar = None
  if progress:
    from tqdm import tqdm
    bar = tqdm(total=n_rows, unit="rows", desc=f"{task} -> {path}")
  block = max(chunk_rows, (ROWS_PER_WRITE // chunk_rows) * chunk_rows)
  rows = {k: [] for k in arrays}
  written = 0
  pending = []

  def flush():
    nonlocal written
    if not rows["tokens"]:
      return
    k = len(rows["tokens"])
    for name, arr in arrays.items():
      pending.append(arr[written:written + k].write(np.stack(rows[name]).astype(arr.dtype.numpy_dtype)))
      rows[name] = []
    written += k
    if bar is not None:
      bar.update(k)

  for t, s, p in pack_rows(docs, n_rows, seq_len, add_bos, bos_id, pack):
    rows["tokens"].append(t)
    rows["segment_ids"].append(s)
    rows["positions"].append(p)
    if len(rows["tokens"]) >= block:
      flush()
      for f in pending:
        f.result()
      pending.clear()
  flush()
  for f in pending:
    f.result()
  if bar is not None:
    bar.close()
  meta = dict(format=reader.FORMAT, task=task, vocab=vocab, vocab_size=vocab_size,
              vocab_sha256=reader.vocab_fingerprint(vocab), seq_len=seq_len, n_sequences=n_rows, seed=int(seed),
              add_bos=add_bos, pack=pack, split=str(data_cfg.get("split", "train")),
              pad_id=pad_id, eos_id=eos_id, bos_id=bos_id,
              dtypes={"tokens": tok_dtype, "segment_ids": "uint16", "positions": pos_dtype},
              data_config=_to_plain(data_cfg))
  meta["data_config"].pop("cache", None)  # the same config gives the same bytes wherever it is written
  with open(os.path.join(tmp, "meta.json"), "w") as f:
    json.dump(meta, f, indent=1, sort_keys=True)
  shutil.rmtree(path, ignore_errors=True)
  os.replace(tmp, path)
  return meta
