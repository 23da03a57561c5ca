"""seqio Tasks and Mixtures (imports seqio and TensorFlow: only the cache builder imports this module).

Registered at import with the default parameters (`register()` re-registers them for a config):
  circuits.shakespeare, circuits.bible      natural text (SentencePiece), splits train / heldout; EOS per document
  circuits.natural                          mixture of the two, rates proportional to training characters
  circuits.repeat_span                      random tokens with one span repeated (induction, PILOTS.md)
  circuits.bigram_backcopy                  Bigram-Backcopy chains (first-token sinks, PILOTS.md)
  circuits.combined                         both circuits in one sequence (PILOTS.md) -- the laptop study
  circuits.repeat_bb_mix                    half repeat_span / half bigram_backcopy (separate sequences)
Synthetic tasks yield rows of exactly sequence_length["targets"] tokens (no EOS; the builder adds BOS),
generated in numpy chunks of CHUNK rows seeded by (seed, split, chunk): deterministic and fast.
"""

from __future__ import annotations

import functools
import os
from typing import Any, Mapping

import numpy as np
import seqio
import tensorflow as tf

from circuits.data import corpora, synthetic

PREFIX = "circuits."
CHUNK = 1024
NATURAL = ("shakespeare", "bible")
SYNTHETIC = ("repeat_span", "bigram_backcopy", "combined")
MIXTURES = ("natural", "repeat_bb_mix")


def make_vocabulary(spec: str) -> seqio.Vocabulary:
  """"spm:<path>" -> SentencePieceVocabulary; "synthetic:<size>" -> PassThroughVocabulary; "byte"."""
  if spec.startswith("spm:"):
    path = spec[4:]
    if not os.path.exists(path):
      raise FileNotFoundError(f"SentencePiece model {path!r} (data.vocab={spec!r}) is missing: run `make corpora` "
                              "(python -m launch.get_corpora --out data/corpora --vocab_sizes <size>)")
    return seqio.SentencePieceVocabulary(path)
  if spec.startswith("synthetic:"):
    return seqio.PassThroughVocabulary(int(spec.split(":", 1)[1]), eos_id=synthetic.EOS_ID)
  if spec == "byte":
    return seqio.ByteVocabulary()
  raise ValueError(f"data.vocab={spec!r}: expected 'spm:<path>', 'synthetic:<size>' or 'byte'")


def synthetic_specs(params: Mapping[str, Any] | None = None) -> dict[str, Any]:
  """The generator specs of the synthetic tasks from a config's `data.synthetic` section."""
  p = dict(params or {})
  bb = synthetic.BigramBackcopySpec(
      n_bb=int(p.get("n_bb", 64)), n_triggers=int(p.get("n_triggers", 3)),
      trigger_prob=float(p.get("trigger_prob", 0.1)), bigram_k=int(p.get("bigram_k", 8)),
      table_seed=int(p.get("table_seed", 0)))
  return dict(
      bigram_backcopy=bb,
      combined=synthetic.CombinedSpec(bb=bb, n_span=int(p.get("n_span", 256)),
                                      span_min=int(p.get("span_min", 8)), span_max=int(p.get("span_max", 16))),
      repeat_span=synthetic.RepeatSpanSpec(n_ids=int(p.get("repeat_n_ids", 256)),
                                           span_min=int(p.get("repeat_span_min", 16)),
                                           span_max=int(p.get("repeat_span_max", 32))))


# ---------------------------------------------------------------------------------------------- natural text


def _natural_dataset_fn(split, shuffle_files, seed=None, *, corpus, corpora_dir):
  """Documents of one corpus as {"targets": text}. Train: endless epochs, each a fresh seeded permutation."""
  del shuffle_files
  docs = corpora.read_docs(corpora_dir, corpus, split)
  seed = 0 if seed is None else int(seed)

  def gen():
    if split != "train":
      yield from docs
      return
    epoch = 0
    while True:
      for i in np.random.default_rng([seed, epoch]).permutation(len(docs)):
        yield docs[i]
      epoch += 1

  ds = tf.data.Dataset.from_generator(gen, output_signature=tf.TensorSpec([], tf.string))
  return ds.map(lambda t: {"targets": t})


# ------------------------------------------------------------------------------------------------- synthetic


def _synthetic_dataset_fn(split, shuffle_files, seed=None):
  """Chunk indices (endless) with the seed and split code the generator is seeded from."""
  del shuffle_files
  seed = 0 if seed is None else int(seed)
  code = 0 if split == "train" else 1
  return tf.data.Dataset.range(2**40).map(
      lambda c: {"chunk": c, "seed": tf.constant(seed, tf.int64), "split": tf.constant(code, tf.int64)})


def _generate(dataset, sequence_length, output_features, *, kind, spec):
  """Map chunk indices to CHUNK generated rows of sequence_length["targets"] tokens, then unbatch."""
  del output_features
  length = (sequence_length or {}).get("targets")
  if not length:
    raise ValueError(f"synthetic task {kind!r} needs sequence_length['targets'] (the row length)")
  fn = synthetic.KINDS[kind][0]

  def np_gen(chunk, seed, split):
    rng = synthetic.chunk_rng(int(seed), "train" if int(split) == 0 else "validation", int(chunk))
    return fn(rng, CHUNK, int(length), spec).astype(np.int32)

  def tf_gen(ex):
    rows = tf.numpy_function(np_gen, [ex["chunk"], ex["seed"], ex["split"]], tf.int32, stateful=False)
    rows.set_shape([CHUNK, length])
    return {"targets": rows}

  return dataset.map(tf_gen).unbatch()


# ------------------------------------------------------------------------------------------------ registration


def _add(name, **kw):
  if name in seqio.TaskRegistry.names():
    seqio.TaskRegistry.remove(name)
  return seqio.TaskRegistry.add(name, **kw)


def _add_mixture(name, tasks):
  if name in seqio.MixtureRegistry.names():
    seqio.MixtureRegistry.remove(name)
  return seqio.MixtureRegistry.add(name, tasks)


def register(vocab: str = "spm:data/spm/spm_8192.model", corpora_dir: str = "data/corpora",
             synthetic_vocab: str | None = None, synthetic_params: Mapping[str, Any] | None = None) -> None:
  """(Re-)register every task and mixture: natural tasks with `vocab`, synthetic ones with `synthetic_vocab`.

  `synthetic_vocab` defaults to "synthetic:<n>" with n the largest synthetic task's vocabulary size. The
  vocabularies load lazily, so registering does not need the corpora or the SentencePiece model.
  """
  if vocab.startswith("spm:"):
    nat_vocab = seqio.SentencePieceVocabulary(vocab[4:])  # lazy: the file is read on first use
  else:
    nat_vocab = make_vocabulary(vocab)
  for corpus in NATURAL:
    _add(PREFIX + corpus,
         source=seqio.FunctionDataSource(
             functools.partial(_natural_dataset_fn, corpus=corpus, corpora_dir=corpora_dir),
             splits=corpora.SPLITS),
         preprocessors=[seqio.preprocessors.tokenize, seqio.preprocessors.append_eos],
         output_features={"targets": seqio.Feature(nat_vocab, add_eos=True, dtype=tf.int32)})
  # rates proportional to the training characters (shakespeare 5.1 MB, bible 4.0 MB)
  _add_mixture(PREFIX + "natural", [(PREFIX + "shakespeare", 5.1), (PREFIX + "bible", 4.0)])

  specs = synthetic_specs(synthetic_params)
  need = max(s.vocab_size for s in specs.values())
  syn_vocab = make_vocabulary(synthetic_vocab or f"synthetic:{need}")
  for kind in SYNTHETIC:
    if syn_vocab.vocab_size < specs[kind].vocab_size:
      continue  # this vocabulary cannot hold the task (the builder reports it if the task is asked for)
    _add(PREFIX + kind,
         source=seqio.FunctionDataSource(_synthetic_dataset_fn, splits=("train", "validation")),
         preprocessors=[functools.partial(_generate, kind=kind, spec=specs[kind])],
         output_features={"targets": seqio.Feature(syn_vocab, add_eos=False, dtype=tf.int32)})
  if all(PREFIX + k in seqio.TaskRegistry.names() for k in ("repeat_span", "bigram_backcopy")):
    _add_mixture(PREFIX + "repeat_bb_mix", [(PREFIX + "repeat_span", 1.0), (PREFIX + "bigram_backcopy", 1.0)])


def task_vocab_size(task: str, synthetic_params: Mapping[str, Any] | None = None) -> int:
  """The smallest vocabulary a synthetic task needs (0 for natural tasks)."""
  specs = synthetic_specs(synthetic_params)
  name = task[len(PREFIX):] if task.startswith(PREFIX) else task
  if name in specs:
    return specs[name].vocab_size
  if name == "repeat_bb_mix":
    return max(specs["repeat_span"].vocab_size, specs["bigram_backcopy"].vocab_size)
  return 0


register()
