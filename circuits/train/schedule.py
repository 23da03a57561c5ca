"""The checkpoint schedule as data (Pythia-style): log-spaced permanent steps plus frequent resume steps.

Pythia keeps steps 0, 1, 2, 4, ..., 512, then every 1000 up to the end (154 checkpoints at 143k steps).
`permanent_steps` reproduces that list for any run length; `resume_steps` are the frequent checkpoints of
which the manager keeps only the latest few. Checkpoint step s holds the parameters after s updates.
"""

from __future__ import annotations


def log_spaced_steps(total_steps: int, log_until: int = 512) -> list[int]:
  """0 and the powers of two up to min(log_until, total_steps)."""
  out, p = [0], 1
  while p <= min(log_until, total_steps):
    out.append(p)
    p *= 2
  return out


def permanent_steps(total_steps: int, *, log_spaced: bool = True, log_until: int = 512,
                    every: int = 1000) -> list[int]:
  """Steps kept forever: log-spaced ones (if `log_spaced`), every `every` (if > 0), and the last step.

  >>> permanent_steps(143000)[:12]
  [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1000]
  >>> len(permanent_steps(143000))
  154
  """
  if total_steps < 0:
    raise ValueError(f"total_steps must be >= 0 (got {total_steps})")
  steps = set(log_spaced_steps(total_steps, log_until)) if log_spaced else {0}
  if every > 0:
    steps.update(range(every, total_steps + 1, every))
  steps.add(total_steps)
  return sorted(steps)


def resume_steps(total_steps: int, resume_every: int) -> list[int]:
  """The frequent resume checkpoints (multiples of `resume_every`; none if it is 0)."""
  return list(range(resume_every, total_steps + 1, resume_every)) if resume_every > 0 else []


def from_config(train_cfg, ckpt_cfg) -> tuple[list[int], list[int]]:
  """(permanent, resume) step lists of a run config's train and checkpoint sections."""
  total = int(train_cfg.steps)
  perm = permanent_steps(total, log_spaced=bool(ckpt_cfg.log_spaced), log_until=int(ckpt_cfg.log_until),
                         every=int(ckpt_cfg.every))
  return perm, resume_steps(total, int(ckpt_cfg.resume_every))
