"""Discovery benchmarks: our pass vs the paper-style HF-eager reference, and seconds vs revisions and vs N,
on random tiny local fixtures (circuits.convert.fixtures; never downloaded)."""

from __future__ import annotations

from pathlib import Path

from circuits.bench.harness import Settings, _median, _now

def _fixture_model(tmp: Path, name: str, seq_len: int, seed: int = 0, **overrides):
  """(our converted model, the HF eager model) of a random tiny local HF fixture (circuits/convert/fixtures.py)."""
  from circuits.convert import from_hf
  from circuits.convert import fixtures as F

  tag = "".join(f"_{k}{v}" for k, v in sorted(overrides.items()))
  d = F.make_hf_dir(tmp / f"{name}_{seed}_{seq_len}{tag}", name, seed=seed, max_position_embeddings=max(64, seq_len),
                    **overrides)
  _, model = from_hf(d)
  return model, F.load_hf_model(d), d


def _time_discovery(st: Settings, tmp: Path, probe_ids: tuple, **overrides) -> dict:
  """time_pass_vs_reference on the converted neox_rot25 fixture: one warm-up call (compile), then the
  median of disc_repeats calls (each call times one pass of ours and one of the reference)."""
  from circuits.data.probes import synthetic_induction_batch
  from circuits.discovery.measure import time_pass_vs_reference

  model, hf_model, _ = _fixture_model(tmp, "neox_rot25", st.disc_seq_len, **overrides)
  probe = synthetic_induction_batch(n=st.disc_n, seq_len=st.disc_seq_len, lo=probe_ids[0], hi=probe_ids[1])
  first = time_pass_vs_reference(model, hf_model, probe)
  runs = [time_pass_vs_reference(model, hf_model, probe) for _ in range(st.disc_repeats)]
  ours, ref = _median([x["ours_s"] for x in runs]), _median([x["reference_s"] for x in runs])
  c = model.cfg
  return dict(model=f"circuits/convert/fixtures neox_rot25 (d_model {c.d_model}, {c.n_layers} layers, {c.n_heads} heads, "
                    f"vocab {c.vocab_size}), converted by from_hf", probe_ids=list(probe_ids),
              n=st.disc_n, seq_len=st.disc_seq_len, warmup=1, repeats=st.disc_repeats, ours_s=ours,
              reference_s=ref, compile_s=first["ours_compile_s"] - ours)


def bench_discovery(st: Settings, tmp: Path) -> dict:
  """Our pass vs the paper-style reference on the tiny fixture (vocab 128, probe ids 3..127) and, unless
  disc_real_vocab is 0, on the same fixture with the 1B models' vocabulary (probe ids 100..9999 as in the
  paper), where the reference's unembedding of every position counts and ours computes none."""
  from circuits.convert import fixtures as F

  out = _time_discovery(st, tmp, (3, F.VOCAB))
  out["ratios"] = dict(reference_over_ours=out["reference_s"] / out["ours_s"])
  if st.disc_real_vocab:
    rv = _time_discovery(st, tmp, (100, 10000), vocab_size=st.disc_real_vocab)
    out["real_vocab"] = rv
    out["ratios"]["reference_over_ours_real_vocab"] = rv["reference_s"] / rv["ours_s"]
  return out


def bench_discovery_scaling(st: Settings, tmp: Path) -> dict:
  """measure_revision (the full per-revision pass, detectors included) seconds vs revisions and vs N."""
  from circuits.data.probes import synthetic_induction_batch
  from circuits.discovery.measure import measure_revision
  from circuits.convert import fixtures as F

  t = st.disc_seq_len
  n_max = max(st.disc_ns + (st.disc_n,))
  probe_all = synthetic_induction_batch(n=n_max, seq_len=t, lo=3, hi=F.VOCAB)

  def sub(n):
    d = probe_all.as_dict()
    return {k: v[:n] for k, v in d.items()}

  models = [_fixture_model(tmp, "neox_rot25", t, seed=s)[0] for s in range(max(st.disc_revisions) + 1)]
  measure_revision(models[-1], sub(st.disc_n), revision="warm", step=0, tokens=0.0)  # compile
  rev_rows = []
  for k in st.disc_revisions:
    ts = []
    for _ in range(st.disc_repeats):
      t0 = _now()
      for i in range(k):
        measure_revision(models[i], sub(st.disc_n), revision=f"r{i}", step=i, tokens=float(i))
      ts.append(_now() - t0)
    rev_rows.append(dict(revisions=k, n=st.disc_n, total_s=_median(ts), per_revision_s=_median(ts) / k))
  n_rows = []
  for n in st.disc_ns:
    measure_revision(models[0], sub(n), revision="warm", step=0, tokens=0.0)
    ts = []
    for _ in range(st.disc_repeats):
      t0 = _now()
      measure_revision(models[0], sub(n), revision="r0", step=0, tokens=0.0)
      ts.append(_now() - t0)
    n_rows.append(dict(n=n, seconds=_median(ts), seconds_per_1000_examples=_median(ts) / n * 1000))
  for r in rev_rows:
    # per-revision seconds relative to one revision (1.0: linear in revisions)
    r["ratios"] = dict(per_revision_over_one=r["per_revision_s"] / rev_rows[0]["per_revision_s"])
  for r in n_rows:
    # seconds per example relative to the smallest N (1.0: linear in N; < 1: fixed costs amortised)
    r["ratios"] = dict(per_example_over_smallest=(r["seconds"] / r["n"]) / (n_rows[0]["seconds"] / n_rows[0]["n"]))
  return dict(seq_len=t, warmup=1, repeats=st.disc_repeats, vs_revisions=rev_rows, vs_n=n_rows)
