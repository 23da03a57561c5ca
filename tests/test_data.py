"""Data layer: cache determinism, resumable/sliced reads, BOS/packing options, clear errors, segment masking.

No downloads: natural-text tests use a small generated corpus and a SentencePiece model trained on it.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from circuits.data import cache_builder, corpora, reader, synthetic

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _data_cfg(**kw):
  from configs.base import base_config
  d = base_config().data
  d.update(dict(task="circuits.combined", vocab="synthetic:384", seq_len=48, n_sequences=96, add_bos=True,
                pack=True))
  d.update(kw)
  return d


def _read_all(path):
  c = reader.TokenCache(path)
  return c.rows(0, c.n_sequences), c.meta


@pytest.fixture(scope="module")
def caches(tmp_path_factory):
  base = tmp_path_factory.mktemp("caches")
  out = {}
  for name, kw in {"a": {}, "a_again": {}, "no_bos": dict(add_bos=False)}.items():
    d = _data_cfg(**kw)
    out[name] = str(base / name)
    cache_builder.build_cache(d, seed=0, n_rows=96, path=out[name])
  return out


def test_reader_does_not_import_tensorflow_or_seqio():
  code = ("import sys; import circuits.data.reader, circuits.data.probes, circuits.data.synthetic; "
          "bad = [m for m in ('tensorflow', 'seqio') if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)")
  res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False)
  assert res.returncode == 0, res.stdout + res.stderr


def test_same_config_identical_cache(caches):
  (a, meta_a), (b, meta_b) = _read_all(caches["a"]), _read_all(caches["a_again"])
  for k in a:
    np.testing.assert_array_equal(a[k], b[k])
  assert meta_a == meta_b
  assert meta_a["seq_len"] == 48 and meta_a["vocab"] == "synthetic:384" and meta_a["seed"] == 0
  assert a["tokens_BxT1"].shape == (96, 49) and a["tokens_BxT1"].dtype == np.int32


def test_batch_after_restart_equals_unbroken_read(caches):
  first = reader.TokenCache(caches["a"])
  unbroken = [first.batch(i, 8) for i in range(6)]
  resumed = reader.TokenCache(caches["a"])  # a new reader, as after a restart at step 4
  for i in (4, 5):
    got = resumed.batch(i, 8)
    for k in got:
      np.testing.assert_array_equal(got[k], unbroken[i][k])


@pytest.mark.parametrize("procs", [1, 2, 4])
def test_process_slices_disjoint_and_cover(caches, procs):
  c = reader.TokenCache(caches["a"])
  step, bsz = 3, 16
  ranges = [reader.batch_rows(step, bsz, p, procs) for p in range(procs)]
  assert ranges[0][0] == step * bsz and ranges[-1][1] == (step + 1) * bsz
  assert all(ranges[p][1] == ranges[p + 1][0] for p in range(procs - 1))
  parts = [c.batch(step, bsz, p, procs)["tokens_BxT1"] for p in range(procs)]
  np.testing.assert_array_equal(np.concatenate(parts), c.batch(step, bsz)["tokens_BxT1"])
  with pytest.raises(ValueError, match="divisible"):
    reader.batch_rows(0, 10, 0, 4)


def test_bos_option(caches):
  with_bos, _ = _read_all(caches["a"])
  no_bos, _ = _read_all(caches["no_bos"])
  assert (with_bos["tokens_BxT1"][:, 0] == synthetic.BOS_ID).all()
  assert (with_bos["tokens_BxT1"][:, 1:] != synthetic.BOS_ID).all()
  assert (no_bos["tokens_BxT1"] != synthetic.BOS_ID).all()


def test_combined_rows_hold_a_repeated_span(caches):
  toks = _read_all(caches["a"])[0]["tokens_BxT1"][:, 1:]
  spec = synthetic.CombinedSpec()
  for row in toks[:20]:
    idx = np.flatnonzero(row >= spec.span_first_id)
    m = idx.size // 2
    assert spec.span_min <= m <= spec.span_max and idx[-1] - idx[0] == 2 * m - 1  # one contiguous block
    np.testing.assert_array_equal(row[idx[:m]], row[idx[m:]])


def test_metadata_mismatch_is_a_clear_error(caches, tmp_path):
  with pytest.raises(reader.CacheError, match=r"seq_len: cache has 48, config has 64[\s\S]*launch.build_data"):
    reader.TokenCache(caches["a"], seq_len=64)
  with pytest.raises(reader.CacheError, match="vocab: cache has 'synthetic:384'"):
    reader.TokenCache(caches["a"], vocab="spm:data/spm/spm_8192.model")
  with pytest.raises(reader.CacheError, match="n_sequences"):
    reader.TokenCache.from_config(_data_cfg(cache=caches["a"]), batch_size=32, steps=10)
  reader.TokenCache.from_config(_data_cfg(cache=caches["a"]), batch_size=32, steps=3)
  with pytest.raises(reader.CacheError, match="no token cache.*launch.build_data"):
    reader.TokenCache(str(tmp_path / "nowhere"))
  with pytest.raises(IndexError, match="outside"):
    reader.TokenCache(caches["a"]).batch(100, 8)


def test_missing_corpus_and_small_vocab_are_clear_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="make corpora"):
    cache_builder.check_inputs(_data_cfg(task="circuits.natural", vocab="spm:x.model", corpora=str(tmp_path)))
  with pytest.raises(ValueError, match="synthetic:323"):
    cache_builder.check_inputs(_data_cfg(vocab="synthetic:100"))


def _fake_corpora(root):
  rng = np.random.default_rng(0)
  words = ["".join(rng.choice(list("abcdefghij"), size=int(rng.integers(2, 6)))) for _ in range(60)]
  for corpus in corpora.CORPORA:
    for split, n in (("train", 30), ("heldout", 3)):
      os.makedirs(root / corpus, exist_ok=True)
      with open(root / corpus / f"{split}.jsonl", "w") as f:
        for k in range(n):
          text = "\n".join(" ".join(rng.choice(words, size=12)) for _ in range(int(rng.integers(2, 8))))
          f.write(json.dumps({"id": f"{k}", "text": text}) + "\n")
  (root / ".done").write_text("ok\n")
  return corpora.train_spm(str(root), str(root / "spm"), vocab_size=64)


@pytest.mark.parametrize("pack", [True, False])
def test_natural_text_packing(tmp_path, pack):
  spm_model = _fake_corpora(tmp_path)
  d = _data_cfg(task="circuits.natural", vocab=f"spm:{spm_model}", corpora=str(tmp_path), seq_len=32,
                pack=pack)
  meta = cache_builder.build_cache(d, seed=1, n_rows=40, path=str(tmp_path / "cache"))
  c = reader.TokenCache(str(tmp_path / "cache"), seq_len=32, vocab=f"spm:{spm_model}", pack=pack)
  rows = c.rows(0, 40)
  toks, seg, pos = rows["tokens_BxT1"], rows["segment_ids_BxT1"], rows["positions_BxT1"]
  assert (toks[:, 0] == meta["bos_id"]).all()
  if pack:  # no padding; a new segment starts right after each EOS; positions restart there
    assert (seg > 0).all() and (toks == meta["eos_id"]).any()
    for r in range(40):
      starts = np.flatnonzero(np.diff(seg[r]) != 0) + 1
      assert (toks[r, starts - 1] == meta["eos_id"]).all() and (pos[r, starts] == 0).all()
      assert (np.diff(seg[r]) >= 0).all()
  else:  # one document per row, padded with 0 after its EOS
    assert ((seg == 0) == (toks == meta["pad_id"])).all() and (seg <= 1).all()
    short = (seg == 0).any(axis=1)
    assert short.any()
    last = (seg > 0).sum(axis=1) - 1
    assert (toks[short, last[short]] == meta["eos_id"]).all()
  with pytest.raises(reader.CacheError, match="sha256"):  # the vocabulary changed after the build
    with open(spm_model, "ab") as f:
      f.write(b"\0")
    reader.TokenCache(str(tmp_path / "cache"), vocab=f"spm:{spm_model}")


@pytest.mark.parametrize("family", ["pythia", "olmo"])
def test_segment_mask_matches_documents_run_alone(family):
  """With segment masking, a packed sequence gives the same per-document logits as the documents alone."""
  from flax import nnx
  from circuits.models import ModelConfig, build_model

  rng = np.random.default_rng(0)
  docs = [np.append(rng.integers(3, 100, size=n), synthetic.EOS_ID) for n in (9, 13, 30)]
  packed = list(cache_builder.pack_rows(iter(docs), 1, seq_len=31, add_bos=False, bos_id=synthetic.BOS_ID))
  toks, seg, pos = packed[0]  # 32 tokens: doc 0 (10), doc 1 (14), the first 8 of doc 2
  model = build_model(ModelConfig(family=family, vocab_size=128, d_model=32, n_layers=2, n_heads=2, d_ff=64),
                      rngs=nnx.Rngs(0))
  # one call (one shape): row 0 packed and masked; rows 1.. each document alone at the start of a row (the
  # tokens after it cannot change its logits: causal); last row packed without masking (Pythia/OLMo default)
  t = toks.size
  alone = np.zeros((len(np.unique(seg)), t), np.int32)
  for r, s in enumerate(np.unique(seg)):
    alone[r, :(seg == s).sum()] = toks[seg == s]
  tokens = np.concatenate([toks[None], alone, toks[None]])
  ones, arange = np.ones((1, t), np.int32), np.arange(t, dtype=np.int32)[None]
  segs = np.concatenate([seg[None]] + [ones] * (len(alone) + 1))
  poss = np.concatenate([pos[None]] + [arange] * (len(alone) + 1))
  out = np.asarray(model(tokens, segment_ids_BxT=segs, positions_BxT=poss).logits_BxTxV)
  for r, s in enumerate(np.unique(seg)):
    idx = np.flatnonzero(seg == s)
    np.testing.assert_allclose(out[0, idx], out[1 + r, :idx.size], atol=2e-5, rtol=1e-4)
  assert not np.allclose(out[-1, seg == 2], out[0, seg == 2], atol=1e-4)
